//! Loading plugins: one wasmtime [`Engine`] per process (and its epoch ticker), one compiled
//! [`Component`] and pre-linked template per plugin version, validated — a component, a
//! compatible WIT, a sane `describe`, declarations within its allowlists — before its worker
//! ([`super::worker`]) starts.
//!
//! Every guest call gets an epoch deadline and runs under a memory limit. A call that traps
//! poisons its instance, so the worker drops it and instantiates a fresh one for the next call;
//! the other plugins never notice. Guest code only ever runs on the workers, never on the async
//! runtime's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::{Plugin, PluginPre};
use super::circuit::{Guard, GuardIdentity, Tripped};
use super::instance::{GuestState, PluginInstance};
use super::precompiled::{Cached, PrecompiledCache, content_digest};
use super::worker::PluginHandle;
use super::{Manifest, WIT_PACKAGE, WIT_VERSION};
use crate::cache::SnapshotCache;
use crate::config::{PluginLimits, Policies};
use crate::metrics::{CompileLabels, Metrics};
use crate::telemetry::{InternalEvent, PrecompiledRefused};

/// How often the epoch advances; call deadlines are measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Set (to anything) to have guest code named in `perf` profiles: each compiled function is
/// listed in `/tmp/perf-PID.map`, which `perf report` reads.
pub const PERFMAP_ENV: &str = "FLUX_WASM_PERFMAP";
/// A component (not a core module) starts with this: magic, then layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Why a plugin could not be loaded. Shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build with --target wasm32-wasip2")]
    CoreModule,
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("built against {WIT_PACKAGE}@{plugin}, but this host implements {WIT_PACKAGE}@{host}")]
    IncompatibleWit { plugin: String, host: String },
    #[error("does not link against this host: {0}")]
    Link(String),
    #[error("failed while describing itself: {0}")]
    Describe(String),
    #[error("invalid description: {0}")]
    InvalidDescription(String),
    #[error("not permitted by the gateway's configuration: {0}")]
    NotPermitted(String),
}

/// Compiles, links and starts plugins. Cheap to share; owns the epoch ticker.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<GuestState>,
    policies: Policies,
    /// Compiled components, keyed by content and engine and authenticated: a restart or a
    /// reload of bytes seen before does not compile again.
    precompiled: Option<PrecompiledCache>,
    cache: Arc<SnapshotCache>,
    metrics: Arc<Metrics>,
    ticker_stop: Arc<AtomicBool>,
    /// Versions whose circuit opened, for the plugin set (taken once).
    trips: mpsc::UnboundedSender<Tripped>,
    tripped: Mutex<Option<mpsc::UnboundedReceiver<Tripped>>>,
    next_version_id: AtomicU64,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    pub fn new(
        policies: Policies,
        precompiled: Option<PrecompiledCache>,
        cache: Arc<SnapshotCache>,
        metrics: Arc<Metrics>,
    ) -> wasmtime::Result<Self> {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .max_wasm_stack(512 * 1024);
        if std::env::var_os(PERFMAP_ENV).is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |state| state)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticking) = (ticker_stop.clone(), engine.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })?;
        let (trips, tripped) = mpsc::unbounded_channel();
        Ok(Self {
            engine,
            linker,
            policies,
            precompiled,
            cache,
            metrics,
            ticker_stop,
            trips,
            tripped: Mutex::new(Some(tripped)),
            next_version_id: AtomicU64::new(1),
        })
    }

    /// The versions whose circuit opens, as they do: for the one owner of plugin versions.
    /// `None` after the first call.
    pub fn take_trips(&self) -> Option<mpsc::UnboundedReceiver<Tripped>> {
        self.tripped.lock().take()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles and validates `wasm`, asks it to describe itself, and starts its worker.
    /// Blocking (compilation takes milliseconds to seconds): call it off the async runtime.
    pub fn load(&self, wasm: &[u8]) -> Result<PluginHandle, LoadError> {
        self.load_digested(wasm, &content_digest(wasm))
    }

    /// [`load`](Self::load) for a caller that already has the bytes' [`content_digest`].
    pub fn load_digested(&self, wasm: &[u8], digest: &str) -> Result<PluginHandle, LoadError> {
        let (instance, manifest, limits) = self.prepare(wasm, digest)?;
        let id = self.next_version_id.fetch_add(1, Ordering::Relaxed);
        let guard = Arc::new(Guard::new(
            GuardIdentity {
                plugin: &manifest.name,
                version: &manifest.version,
                version_id: id,
            },
            self.policies.circuit.clone(),
            limits.cpu_per_sec(),
            limits.call_timeout(),
            &self.metrics,
            Some(self.trips.clone()),
        ));
        PluginHandle::start(id, manifest, limits, guard, instance)
            .map_err(|e| LoadError::Link(format!("cannot start its worker thread: {e}")))
    }

    /// What [`load`](Self::load) validates, as an instance called on the current thread
    /// instead of by a worker: for benchmarks and embedders with threads of their own.
    pub fn instance(&self, wasm: &[u8]) -> Result<PluginInstance, LoadError> {
        self.prepare(wasm, &content_digest(wasm))
            .map(|(instance, _, _)| instance)
    }

    fn prepare(
        &self,
        wasm: &[u8],
        digest: &str,
    ) -> Result<(PluginInstance, Arc<Manifest>, Arc<PluginLimits>), LoadError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        if !wasm.starts_with(&COMPONENT_HEADER) {
            return Err(LoadError::CoreModule);
        }
        let component = self.compile(wasm, digest)?;
        self.check_wit_version(&component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;

        // Until the plugin has named itself, the defaults apply.
        let defaults = self.policies.defaults.clone();
        let ticks = deadline_ticks(defaults.call_timeout());
        let mut instance = PluginInstance::new(
            pre,
            self.engine.clone(),
            self.cache.clone(),
            defaults,
            ticks,
        );
        let info = instance
            .describe()
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        let manifest = Arc::new(Manifest::from_info(info).map_err(LoadError::InvalidDescription)?);
        let topics: Vec<&String> = manifest
            .consumes
            .iter()
            .chain(&manifest.publishes)
            .collect();
        self.policies
            .permits(&manifest.name, &manifest.declared_rooms, &topics)
            .map_err(LoadError::NotPermitted)?;
        let limits = Arc::new(self.policies.for_plugin(&manifest.name));
        let ticks = deadline_ticks(limits.call_timeout());
        instance.identify(&manifest, (*limits).clone(), ticks, &self.metrics);
        Ok((instance, manifest, limits))
    }

    /// `source`: `compiled`, or `cache`.
    fn count_compile(&self, source: &'static str) {
        self.metrics
            .plugin_compiles
            .get_or_create(&CompileLabels { source })
            .inc();
    }

    /// Compiles `wasm`, or loads what an earlier compilation of the same bytes by a compatible
    /// engine left in the precompiled cache (once it has authenticated it).
    fn compile(&self, wasm: &[u8], digest: &str) -> Result<Component, LoadError> {
        if let Some(precompiled) = &self.precompiled {
            match precompiled.load(&self.engine, digest) {
                Cached::Hit(component) => {
                    self.count_compile("cache");
                    return Ok(component);
                }
                Cached::Miss => {}
                Cached::Refused(why) => {
                    PrecompiledRefused { why: &why }.emit(&self.metrics);
                }
            }
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.count_compile("compiled");
        if let Some(precompiled) = &self.precompiled
            && let Err(e) = precompiled.store(&self.engine, digest, &component)
        {
            tracing::warn!("cannot keep the precompiled plugin: {e}");
        }
        Ok(component)
    }

    /// Rejects a plugin built against an incompatible `flux:gateway` version with both
    /// versions named, before the linker's less helpful "no matching implementation".
    fn check_wit_version(&self, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        let prefix = format!("{WIT_PACKAGE}/");
        for (name, _) in ty.imports(&self.engine) {
            let Some(versioned) = name.strip_prefix(&prefix) else {
                continue;
            };
            let plugin = versioned
                .split_once('@')
                .map(|(_, v)| v)
                .unwrap_or("unversioned");
            if !semver_compatible(plugin, WIT_VERSION) {
                return Err(LoadError::IncompatibleWit {
                    plugin: plugin.to_owned(),
                    host: WIT_VERSION.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Cargo's rule: same major, or for `0.x` the same minor.
fn semver_compatible(plugin: &str, host: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(plugin), parts(host)) {
        (Some((0, p_minor)), Some((0, h_minor))) => p_minor == h_minor,
        (Some((p_major, _)), Some((h_major, _))) => p_major == h_major,
        _ => false,
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    // +1: the epoch may advance right after the deadline is set.
    timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_follow_cargo_semver() {
        assert!(semver_compatible("0.1.0", "0.1.0"));
        assert!(semver_compatible("0.1.7", "0.1.0"));
        assert!(!semver_compatible("0.2.0", "0.1.0"));
        assert!(semver_compatible("1.4.0", "1.0.0"));
        assert!(!semver_compatible("2.0.0", "1.9.0"));
        assert!(!semver_compatible("unversioned", "0.1.0"));
    }

    #[test]
    fn deadlines_cover_the_timeout() {
        assert_eq!(deadline_ticks(Duration::from_millis(250)), 51);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
    }
}
