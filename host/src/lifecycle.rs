//! The live plugins: loading, hot swapping, unloading and rolling back, without losing or
//! repeating a record and without touching a connection.
//!
//! Each plugin name is a [`Slot`] whose active version can change. The slot's consumer reads
//! the active version once per batch, so a batch in flight finishes on the version it started
//! with and every later batch goes to the new one. A new version is compiled off the async
//! runtime, validated, and canaried (recent records of its topics replayed through it under its
//! limits) before it is swapped in.
//!
//! This is the one owner of versions: loading, swapping, rolling back and unloading all
//! happen here, one at a time under one lock, and every change of the active version goes
//! through [`PluginSet::install`], which moves consumption to the version's declared topics and
//! timers. The data path only reports: a version's guard tells [`PluginSet::supervise`] when
//! its circuit opens, and a version that trips within `circuit.rollback_within_ms` of going
//! live is rolled back to the one it replaced; one with nothing to go back to stays loaded
//! with its circuit open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bus::now_ms;
use crate::cache::SnapshotCache;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::plugin::precompiled::content_digest;
use crate::plugin::{
    CallFailure, GuardView, LoadError, PluginHandle, PluginRuntime, Tripped, WIT_VERSION,
};
use crate::telemetry::{InternalEvent, PluginReload};

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file in the plugin directory (development, single nodes).
    File(PathBuf),
    /// The fleet's plugin topic, at a rollout stage.
    Fleet { plugin: String, stage: String },
}

impl Source {
    /// What identifies the source across versions: a file's path, a published plugin's name.
    fn key(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Fleet { plugin, .. } => format!("topic:{plugin}"),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Fleet { .. } => "topic",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Fleet { stage, .. } => write!(f, "the fleet topic (stage {stage})"),
        }
    }
}

/// One loaded version of a plugin.
#[derive(Clone)]
pub struct Version {
    pub handle: PluginHandle,
    pub source: Source,
    pub digest: String,
    /// When it was loaded, in unix milliseconds.
    pub loaded_at_ms: u64,
    /// When it last became the active version.
    live_since: Instant,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    #[default]
    Active,
    RolledBack,
}

/// How a slot came to run its active version.
#[derive(Debug, Default)]
struct Standing {
    state: SlotState,
    last_error: Option<String>,
    /// The digest rolled back from: the same bytes are not loaded again.
    refused_digest: Option<String>,
}

/// A plugin name and its active version.
struct Slot {
    active: RwLock<Version>,
    /// The active version's handle, for the data path: read once per batch, tick or request.
    live: watch::Sender<PluginHandle>,
    previous: Mutex<Option<Version>>,
    standing: Mutex<Standing>,
    /// Stops the slot's current consumer and timers (between batches): sent when the slot's
    /// topics change (a new generation starts) or it is unloaded.
    stop: Mutex<watch::Sender<bool>>,
}

impl Slot {
    fn active(&self) -> PluginHandle {
        self.live.borrow().clone()
    }

    fn name(&self) -> String {
        self.active.read().handle.manifest.name.clone()
    }

    fn stop_workers(&self) {
        let _ = self.stop.lock().send(true);
    }

    fn handles(&self, event: &str) -> bool {
        self.live
            .borrow()
            .manifest
            .handles
            .iter()
            .any(|e| e == event)
    }
}

/// A file or release that did not load, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// The file, or the fleet topic and stage.
    pub source: String,
    /// The plugin, when it got as far as naming one.
    pub plugin: Option<String>,
    pub reason: String,
    pub at_ms: u64,
    /// The rejected bytes: the same bytes are not tried (nor logged) again.
    #[serde(skip)]
    digest: Option<String>,
}

/// What `GET /admin/plugins` shows of a slot.
#[derive(Debug, Serialize)]
pub struct SlotView {
    pub name: String,
    pub version: String,
    pub wit_version: &'static str,
    pub digest: String,
    /// `file` or `topic`.
    pub source: &'static str,
    /// The file it was loaded from, or the fleet topic and its stage.
    pub origin: String,
    pub state: SlotState,
    /// The digest rolled back from, when the state is `rolled_back`.
    pub rolled_back_from: Option<String>,
    pub loaded_at_ms: u64,
    pub last_error: Option<String>,
    pub consumes: Vec<String>,
    pub handles: Vec<String>,
    #[serde(flatten)]
    pub guard: GuardView,
}

/// What happened to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    Added(String),
    Replaced {
        name: String,
        from: String,
        to: String,
    },
    Unchanged(String),
}

/// Why a file was not loaded. Shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("cannot read: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("the loader crashed: {0}")]
    LoaderCrashed(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("a plugin named {name:?} is already loaded from {loaded_from}")]
    NameTaken { name: String, loaded_from: String },
    #[error("published as {published:?}, but the component names itself {named:?}")]
    Misnamed { published: String, named: String },
    #[error("canary: {failure} on {records} recent records")]
    Canary {
        failure: CallFailure,
        records: usize,
    },
    #[error("this build was rolled back; fix it and save again")]
    RolledBack,
}

/// A rejection, and the plugin's name when the file got as far as naming one.
struct FailedLoad {
    plugin: Option<String>,
    why: Rejection,
}

impl<E: Into<Rejection>> From<E> for FailedLoad {
    fn from(why: E) -> Self {
        Self {
            plugin: None,
            why: why.into(),
        }
    }
}

pub struct PluginSet {
    runtime: Arc<PluginRuntime>,
    pipeline: Pipeline,
    cache: Arc<SnapshotCache>,
    metrics: Arc<Metrics>,
    /// A version whose circuit opens this soon after going live is rolled back.
    rollback_within: Duration,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    /// The slots in name order, for the request path: cloned, never locked across a call.
    snapshot: RwLock<Arc<Vec<Arc<Slot>>>>,
    /// By source key (see [`Source`]).
    rejected: Mutex<BTreeMap<String, Rejected>>,
    workers: Mutex<JoinSet<()>>,
    /// Loads and unloads happen one at a time (the watcher and `load_dir` may overlap).
    changing: tokio::sync::Mutex<()>,
}

impl PluginSet {
    pub fn new(
        runtime: Arc<PluginRuntime>,
        pipeline: Pipeline,
        cache: Arc<SnapshotCache>,
        metrics: Arc<Metrics>,
        rollback_within: Duration,
    ) -> Self {
        Self {
            runtime,
            pipeline,
            cache,
            metrics,
            rollback_within,
            slots: Mutex::default(),
            snapshot: RwLock::default(),
            rejected: Mutex::default(),
            workers: Mutex::new(JoinSet::new()),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The active versions of the plugins that handle client `event`, in name order.
    pub fn handlers(&self, event: &str) -> Vec<PluginHandle> {
        self.snapshot
            .read()
            .iter()
            .filter(|slot| slot.handles(event))
            .map(|slot| slot.active())
            .collect()
    }

    /// Acts on versions whose circuit opened, one at a time under the lock every other
    /// version change takes, until the runtime is gone. Without it, circuits still open and
    /// close but nothing is ever rolled back.
    pub async fn supervise(self: Arc<Self>) {
        let Some(mut trips) = self.runtime.take_trips() else {
            return;
        };
        while let Some(trip) = trips.recv().await {
            self.tripped(trip).await;
        }
    }

    /// Rolls back a version that tripped soon after going live, if it is still the active
    /// one and replaced another.
    async fn tripped(&self, trip: Tripped) {
        let _one_at_a_time = self.changing.lock().await;
        let Some(slot) = self.slots.lock().get(&trip.plugin).cloned() else {
            return;
        };
        let live_for = {
            let active = slot.active.read();
            if active.handle.id != trip.version_id {
                return;
            }
            active.live_since.elapsed()
        };
        let previous = if live_for <= self.rollback_within {
            slot.previous.lock().take()
        } else {
            None
        };
        let Some(previous) = previous else {
            let message = format!(
                "version {} opened its circuit ({}); nothing to roll back to, it stays loaded and is probed",
                trip.version, trip.cause
            );
            tracing::warn!(plugin = %trip.plugin, "{message}");
            slot.standing.lock().last_error = Some(message);
            return;
        };
        let good = previous.handle.manifest.version.clone();
        let bad = self.install(&slot, previous);
        let message = format!(
            "version {} ({}) opened its circuit {:?} after going live ({}); rolled back to {good}",
            trip.version,
            short(&bad.digest),
            live_for,
            trip.cause,
        );
        PluginReload::RolledBack {
            plugin: &trip.plugin,
            message: &message,
        }
        .emit(&self.metrics);
        *slot.standing.lock() = Standing {
            state: SlotState::RolledBack,
            last_error: Some(message),
            refused_digest: Some(bad.digest),
        };
    }

    pub fn len(&self) -> usize {
        self.snapshot.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads every `*.wasm` in `dir`, sorted by name.
    pub async fn load_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_plugin_file(path))
            .collect();
        files.sort();
        for file in files {
            self.load_file(&file).await;
        }
        Ok(())
    }

    /// Loads, validates and canaries `file`, then adds it or swaps it in. On any failure the
    /// running version (if any) keeps serving, and the reason is logged and kept for
    /// `/admin/plugins`.
    pub async fn load_file(&self, file: &Path) -> Option<LoadOutcome> {
        let _one_at_a_time = self.changing.lock().await;
        let source = Source::File(file.to_owned());
        match tokio::fs::read(file).await {
            Ok(bytes) => self.load(source, bytes).await.ok(),
            Err(e) => {
                self.reject(&source, None, None, &e.into());
                None
            }
        }
    }

    /// Loads a release of the fleet topic through the same path as a file. A published plugin
    /// replaces a file-loaded one of the same name (the fleet wins). The error is the reason,
    /// as `/admin/plugins` shows it.
    pub async fn load_published(
        &self,
        plugin: &str,
        stage: String,
        component: Vec<u8>,
    ) -> Result<LoadOutcome, String> {
        let _one_at_a_time = self.changing.lock().await;
        let source = Source::Fleet {
            plugin: plugin.to_owned(),
            stage,
        };
        self.load(source, component).await
    }

    async fn load(&self, source: Source, bytes: Vec<u8>) -> Result<LoadOutcome, String> {
        let started = Instant::now();
        let digest = content_digest(&bytes);
        if let Some(rejected) = self.rejected.lock().get(&source.key())
            && rejected.digest.as_ref() == Some(&digest)
        {
            return Err(rejected.reason.clone());
        }
        match self.try_load(&source, bytes, digest.clone()).await {
            Ok(outcome) => {
                self.rejected.lock().remove(&source.key());
                let took = started.elapsed();
                let reload = match &outcome {
                    LoadOutcome::Added(name) => Some(PluginReload::Added {
                        plugin: name,
                        source: &source,
                        took,
                    }),
                    LoadOutcome::Replaced { name, from, to } => Some(PluginReload::Swapped {
                        plugin: name,
                        from,
                        to,
                        took,
                    }),
                    LoadOutcome::Unchanged(_) => None,
                };
                if let Some(reload) = reload {
                    reload.emit(&self.metrics);
                }
                Ok(outcome)
            }
            Err(FailedLoad { plugin, why }) => {
                self.reject(&source, plugin.as_deref(), Some(digest), &why);
                Err(why.to_string())
            }
        }
    }

    /// Logs, counts and keeps (for `/admin/plugins`) why `source` was not loaded.
    fn reject(
        &self,
        source: &Source,
        plugin: Option<&str>,
        digest: Option<String>,
        why: &Rejection,
    ) {
        PluginReload::Rejected {
            plugin,
            source,
            why,
        }
        .emit(&self.metrics);
        let rejected = Rejected {
            source: source.to_string(),
            plugin: plugin.map(str::to_owned),
            reason: why.to_string(),
            at_ms: now_ms(),
            digest,
        };
        self.rejected.lock().insert(source.key(), rejected);
    }

    async fn try_load(
        &self,
        source: &Source,
        bytes: Vec<u8>,
        digest: String,
    ) -> Result<LoadOutcome, FailedLoad> {
        let owner = self.slot_of(source);
        if let Some(slot) = &owner {
            let name = slot.name();
            if slot.active.read().digest == digest {
                return Ok(LoadOutcome::Unchanged(name));
            }
            if slot.standing.lock().refused_digest.as_deref() == Some(digest.as_str()) {
                return Err(FailedLoad {
                    plugin: Some(name),
                    why: Rejection::RolledBack,
                });
            }
        }
        let runtime = self.runtime.clone();
        let loading = digest.clone();
        let handle =
            tokio::task::spawn_blocking(move || runtime.load_digested(&bytes, &loading)).await??;
        let name = handle.manifest.name.clone();
        let fail = |why: Rejection| FailedLoad {
            plugin: Some(name.clone()),
            why,
        };

        if let Source::Fleet { plugin, .. } = source
            && *plugin != name
        {
            return Err(fail(Rejection::Misnamed {
                published: plugin.clone(),
                named: name.clone(),
            }));
        }
        let existing = self.slots.lock().get(&name).cloned();
        if let Some(slot) = &existing {
            let loaded_from = slot.active.read().source.clone();
            // The fleet wins: a release replaces a file's version, a file never a release's.
            let replaceable = loaded_from.key() == source.key()
                || matches!(
                    (&loaded_from, source),
                    (Source::File(_), Source::Fleet { .. })
                );
            if !replaceable {
                return Err(fail(Rejection::NameTaken {
                    name: name.clone(),
                    loaded_from: loaded_from.to_string(),
                }));
            }
        }
        self.canary(&handle).await.map_err(fail)?;
        // The file used to hold a plugin with another name: that one goes away.
        if let Some(previous_owner) = owner
            && previous_owner.name() != name
        {
            let unloaded = self.unload(&previous_owner);
            PluginReload::Unloaded {
                plugin: &unloaded,
                source,
            }
            .emit(&self.metrics);
        }

        let version = Version {
            handle,
            source: source.clone(),
            digest,
            loaded_at_ms: now_ms(),
            live_since: Instant::now(),
        };
        let outcome = match existing {
            Some(slot) => self.swap(&slot, version),
            None => self.add(version),
        };
        Ok(outcome)
    }

    /// Replays recent records of the plugin's topics through it: a version that traps on what
    /// production is sending right now never goes live.
    async fn canary(&self, handle: &PluginHandle) -> Result<(), Rejection> {
        let records = self.pipeline.recent_records(&handle.manifest.consumes);
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        handle
            .on_records(records)
            .await
            .map(|_| ())
            .map_err(|failure| Rejection::Canary {
                failure,
                records: count,
            })
    }

    fn add(&self, version: Version) -> LoadOutcome {
        let name = version.handle.manifest.name.clone();
        version.handle.guard.report_state();
        let slot = Arc::new(Slot {
            live: watch::channel(version.handle.clone()).0,
            active: RwLock::new(version),
            previous: Mutex::new(None),
            standing: Mutex::default(),
            stop: Mutex::new(watch::channel(false).0),
        });
        self.start_workers(&slot);
        self.slots.lock().insert(name.clone(), slot);
        self.publish_snapshot();
        LoadOutcome::Added(name)
    }

    fn swap(&self, slot: &Slot, version: Version) -> LoadOutcome {
        let name = version.handle.manifest.name.clone();
        let to = version.handle.manifest.version.clone();
        let old = self.install(slot, version);
        let from = old.handle.manifest.version.clone();
        *slot.previous.lock() = Some(old);
        *slot.standing.lock() = Standing::default();
        LoadOutcome::Replaced { name, from, to }
    }

    /// Makes `version` the slot's active version — the one place that does — and returns the
    /// version it replaced. Consumption follows the declared topics and timers: when they
    /// differ, the old workers stop between batches and a new generation subscribes.
    fn install(&self, slot: &Slot, mut version: Version) -> Version {
        version.live_since = Instant::now();
        let handle = version.handle.clone();
        let old = std::mem::replace(&mut *slot.active.write(), version);
        slot.live.send_replace(handle.clone());
        handle.guard.report_state();
        let (before, after) = (&old.handle.manifest, &handle.manifest);
        if before.consumes != after.consumes || before.timers != after.timers {
            tracing::info!(plugin = %after.name, "declared topics or timers changed; consumption follows");
            slot.stop_workers();
            *slot.stop.lock() = watch::channel(false).0;
            self.start_workers(slot);
        }
        old
    }

    fn start_workers(&self, slot: &Slot) {
        let stopped = slot.stop.lock().subscribe();
        let mut workers = self.workers.lock();
        // Workers of stopped generations are reaped here.
        while workers.try_join_next().is_some() {}
        self.pipeline
            .start(&slot.live.subscribe(), &stopped, &mut workers);
    }

    /// Unloads the plugin loaded from `file`: its rooms stop getting events, its cache is
    /// dropped.
    pub async fn unload_file(&self, file: &Path) -> Option<String> {
        self.unload_source(&Source::File(file.to_owned())).await
    }

    /// Unloads a plugin the fleet topic removed.
    pub async fn unload_published(&self, plugin: &str) -> Option<String> {
        let source = Source::Fleet {
            plugin: plugin.to_owned(),
            stage: String::new(),
        };
        self.unload_source(&source).await
    }

    async fn unload_source(&self, source: &Source) -> Option<String> {
        let _one_at_a_time = self.changing.lock().await;
        self.rejected.lock().remove(&source.key());
        let slot = self.slot_of(source)?;
        let name = self.unload(&slot);
        PluginReload::Unloaded {
            plugin: &name,
            source,
        }
        .emit(&self.metrics);
        Some(name)
    }

    fn unload(&self, slot: &Slot) -> String {
        let name = slot.name();
        self.slots.lock().remove(&name);
        slot.stop_workers();
        self.cache.invalidate_plugin(&name);
        self.publish_snapshot();
        name
    }

    /// The slot whose active version came from `source`.
    fn slot_of(&self, source: &Source) -> Option<Arc<Slot>> {
        let key = source.key();
        self.slots
            .lock()
            .values()
            .find(|slot| slot.active.read().source.key() == key)
            .cloned()
    }

    fn publish_snapshot(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        *self.snapshot.write() = Arc::new(slots);
    }

    pub fn views(&self) -> (Vec<SlotView>, Vec<Rejected>) {
        let views = self
            .snapshot
            .read()
            .iter()
            .map(|slot| {
                let active = slot.active.read();
                let standing = slot.standing.lock();
                let m = &active.handle.manifest;
                SlotView {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    wit_version: WIT_VERSION,
                    digest: active.digest.clone(),
                    source: active.source.kind(),
                    origin: active.source.to_string(),
                    state: standing.state,
                    rolled_back_from: standing.refused_digest.clone(),
                    loaded_at_ms: active.loaded_at_ms,
                    last_error: standing.last_error.clone(),
                    consumes: m.consumes.clone(),
                    handles: m.handles.clone(),
                    guard: active.handle.guard.view(),
                }
            })
            .collect();
        (views, self.rejected.lock().values().cloned().collect())
    }

    /// Stops every consumer and timer.
    pub async fn shutdown(&self) {
        let mut workers = std::mem::take(&mut *self.workers.lock());
        workers.shutdown().await;
    }
}

/// Plugin files: `*.wasm`, not hidden (editors and `build-plugins.sh` write `.name.tmp` first).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
