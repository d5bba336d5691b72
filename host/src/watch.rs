//! Watches the plugin directory and turns file changes into loads and unloads.
//!
//! Editors and build tools write in several steps (truncate and write, or write a temporary
//! file and rename it over the old one), so a path is handled only once it has been quiet for
//! the debounce time, and hidden files (`.name.wasm.tmp`) are ignored until renamed. A write
//! that says it is complete — a file renamed into place, or closed by its writer — is handled
//! at once: waiting longer would only delay a file that cannot change any more. A file
//! caught half-written still fails validation and is rejected while the old version serves;
//! the write that completes it triggers another load. The directory watch is re-added if the
//! directory is removed and created again. Only writes, creations, renames and removals count:
//! the gateway's own reads of a file (opening it to load it) must not trigger another load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::lifecycle::{PluginSet, is_plugin_file};

/// How often a lost directory watch is retried.
const REWATCH_EVERY: Duration = Duration::from_secs(1);

enum Signal {
    /// `settled`: the event says the write is complete (renamed into place, or closed).
    Changed { path: PathBuf, settled: bool },
    /// The directory itself went away, or the watcher failed: watch it again.
    Lost,
}

/// Runs until the task is dropped.
pub async fn watch_plugins(dir: PathBuf, debounce: Duration, plugins: Arc<PluginSet>) {
    let (signals, mut received) = mpsc::unbounded_channel();
    let watched = dir.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let signal = match event {
            Ok(event)
                if matches!(event.kind, EventKind::Remove(_))
                    && event.paths.iter().any(|p| p == &watched) =>
            {
                Signal::Lost
            }
            Ok(event) if !changes_content(&event.kind) => return,
            Ok(event) => {
                let settled = is_settled(&event.kind);
                for path in event.paths {
                    let _ = signals.send(Signal::Changed { path, settled });
                }
                return;
            }
            Err(e) => {
                tracing::warn!("plugin directory watcher: {e}");
                Signal::Lost
            }
        };
        let _ = signals.send(signal);
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => return tracing::error!("cannot watch plugins: {e}; hot reload is off"),
    };
    let mut watching = start_watching(&mut watcher, &dir);

    // When each changed path is due to be handled.
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut rewatch = tokio::time::interval(REWATCH_EVERY);
    loop {
        let due = pending.values().min().copied();
        tokio::select! {
            signal = received.recv() => match signal {
                Some(Signal::Changed { path, settled }) if is_plugin_file(&path) => {
                    let wait = if settled { Duration::ZERO } else { debounce };
                    pending.insert(path, Instant::now() + wait);
                }
                Some(Signal::Changed { .. }) => {}
                Some(Signal::Lost) => watching = false,
                None => return,
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                let ready: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, due)| now >= **due)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in ready {
                    pending.remove(&path);
                    apply(&plugins, &path).await;
                }
            }
            _ = rewatch.tick(), if !watching => {
                watching = start_watching(&mut watcher, &dir);
                if watching {
                    // Whatever happened while the directory was away: load what is there now.
                    if let Err(e) = plugins.load_dir(&dir).await {
                        tracing::warn!("cannot read {}: {e}", dir.display());
                    }
                }
            }
        }
    }
}

/// Writes, creations, renames and removals; not opens, reads or metadata changes.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// A file renamed into place (rename is atomic) or closed by the process that wrote it.
fn is_settled(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

fn start_watching(watcher: &mut RecommendedWatcher, dir: &Path) -> bool {
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "watching plugins for changes");
            true
        }
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "cannot watch yet: {e}");
            false
        }
    }
}

async fn apply(plugins: &PluginSet, path: &Path) {
    if path.exists() {
        plugins.load_file(path).await;
    } else {
        plugins.unload_file(path).await;
    }
}
