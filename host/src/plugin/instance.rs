//! A plugin's instance, called on the current thread — what a worker owns: the store with its
//! epoch deadline and memory limit, a fresh instance after every failed call, and the host
//! side of the WIT imports (`host`, `caller`) the guest calls.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::flux::gateway::caller::Principal as WitPrincipal;
use super::bindings::flux::gateway::host::LogLevel;
use super::bindings::{Plugin, PluginPre};
use super::worker::{Answer, CallFailure, RecordOutcome};
use super::{Action, ClientRequest, Manifest, WitRecord};
use crate::auth::Principal;
use crate::cache::SnapshotCache;
use crate::config::PluginLimits;
use crate::logs::Throttle;
use crate::metrics::{self, Counter, Histogram, Metrics, PluginErrorLabels};

/// Longest guest log line kept; a plugin cannot flood the log.
const MAX_LOG_LINE: usize = 2_048;
/// Most `leave-rooms` calls kept from one request.
const MAX_LEAVES: usize = 16;

/// What the guest sees of the request being answered.
struct RequestScope {
    caller: Option<Arc<Principal>>,
    leave: Vec<String>,
}

/// Who a worker runs, for logs.
struct Identity {
    name: Arc<str>,
    version: Arc<str>,
}

impl Identity {
    fn unnamed() -> Self {
        Self {
            name: "(loading)".into(),
            version: "?".into(),
        }
    }
    fn of(manifest: &Manifest) -> Self {
        Self {
            name: manifest.name.as_str().into(),
            version: manifest.version.as_str().into(),
        }
    }
}

/// Metric handles a worker updates on every call, looked up once.
struct Probes {
    calls: Counter,
    latency: Histogram,
    replaced: Counter,
    errors: [Counter; 4],
}

impl Probes {
    fn new(metrics: &Metrics, plugin: &str) -> Self {
        let labels = metrics::plugin(plugin);
        // The `kind` label of `flux_plugin_errors_total`.
        let error = |kind| {
            metrics
                .plugin_errors
                .get_or_create_owned(&PluginErrorLabels {
                    plugin: plugin.to_owned(),
                    kind,
                })
        };
        Self {
            calls: metrics.plugin_calls.get_or_create_owned(&labels),
            latency: metrics.plugin_call_seconds.get_or_create_owned(&labels),
            replaced: metrics
                .plugin_instances_replaced
                .get_or_create_owned(&labels),
            errors: [
                error("timeout"),
                error("memory"),
                error("trap"),
                error("unavailable"),
            ],
        }
    }

    fn error(&self, failure: &CallFailure) -> &Counter {
        match failure {
            CallFailure::Timeout => &self.errors[0],
            CallFailure::OutOfMemory => &self.errors[1],
            CallFailure::Trap(_) => &self.errors[2],
            CallFailure::Unavailable | CallFailure::CircuitOpen | CallFailure::OverBudget => {
                &self.errors[3]
            }
        }
    }
}

/// A plugin's instance, its limits and probes, called on the current thread: what each
/// plugin's worker thread owns. A failed call discards the instance; the next call
/// instantiates a fresh one from the pre-linked template.
pub struct PluginInstance {
    pre: PluginPre<GuestState>,
    instance: Option<(Store<GuestState>, Plugin)>,
    engine: Engine,
    limits: PluginLimits,
    cache: Arc<SnapshotCache>,
    identity: Identity,
    deadline_ticks: u64,
    probes: Option<Probes>,
}

impl PluginInstance {
    /// An instance of `pre` that has not named itself yet: the default limits apply.
    pub(super) fn new(
        pre: PluginPre<GuestState>,
        engine: Engine,
        cache: Arc<SnapshotCache>,
        limits: PluginLimits,
        deadline_ticks: u64,
    ) -> Self {
        Self {
            pre,
            instance: None,
            engine,
            limits,
            cache,
            identity: Identity::unnamed(),
            deadline_ticks,
            probes: None,
        }
    }

    pub(super) fn describe(&mut self) -> Result<super::PluginInfo, CallFailure> {
        self.call(None, |plugin, store| plugin.call_describe(store))
    }

    /// Gives the instance the plugin's identity — which scopes its cache reads, tags its logs
    /// and metrics — and its own limits; the instance that described the plugin serves on.
    pub(super) fn identify(
        &mut self,
        manifest: &Manifest,
        limits: PluginLimits,
        deadline_ticks: u64,
        metrics: &Metrics,
    ) {
        self.identity = Identity::of(manifest);
        self.deadline_ticks = deadline_ticks;
        if let Some((store, _)) = self.instance.as_mut() {
            let state = store.data_mut();
            state.plugin = self.identity.name.clone();
            state.version = self.identity.version.clone();
            state.limiter.max_bytes = limits.memory_bytes();
        }
        self.limits = limits;
        self.probes = Some(Probes::new(metrics, &manifest.name));
    }

    pub fn on_records(&mut self, records: &[WitRecord]) -> Result<Vec<RecordOutcome>, CallFailure> {
        self.call(None, |p, s| p.call_on_records(s, records))
    }

    pub fn on_request(
        &mut self,
        request: &ClientRequest,
        caller: Option<Arc<Principal>>,
    ) -> Result<Answer, CallFailure> {
        let scope = RequestScope {
            caller,
            leave: Vec::new(),
        };
        let result = self.call(Some(scope), |p, s| p.call_on_request(s, request))?;
        let leave = self
            .instance
            .as_mut()
            .and_then(|(store, _)| store.data_mut().request.take())
            .map(|scope| scope.leave)
            .unwrap_or_default();
        Ok(Answer { result, leave })
    }

    pub fn on_timer(&mut self, name: &str) -> Result<Vec<Action>, CallFailure> {
        self.call(None, |p, s| p.call_on_timer(s, name))
    }

    /// Calls the guest; `request` is what it sees of the request it answers, if any.
    fn call<R>(
        &mut self,
        request: Option<RequestScope>,
        guest: impl FnOnce(&Plugin, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        if self.instance.is_none() {
            let fresh = self.instantiate().map_err(|e| self.fail(&e))?;
            self.instance = Some(fresh);
        }
        let Some((store, plugin)) = self.instance.as_mut() else {
            unreachable!("instantiated just above");
        };
        store.set_epoch_deadline(self.deadline_ticks);
        store.data_mut().limiter.denied = false;
        store.data_mut().request = request;
        let started = Instant::now();
        let result = guest(plugin, store);
        if let Some(probes) = &self.probes {
            probes.calls.inc();
            probes.latency.observe(started.elapsed().as_secs_f64());
        }
        result.map_err(|e| self.fail(&e))
    }

    /// Classifies a failed call, logs it, and discards the (now poisoned) instance.
    fn fail(&mut self, error: &wasmtime::Error) -> CallFailure {
        let memory_denied = self
            .instance
            .as_ref()
            .is_some_and(|(store, _)| store.data().limiter.denied);
        let failure = if memory_denied {
            CallFailure::OutOfMemory
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => CallFailure::Timeout,
                Some(trap) => CallFailure::Trap(trap.to_string()),
                None => CallFailure::Trap(format!("{error:#}")),
            }
        };
        static FAILED: Throttle = Throttle::new();
        if let Some(held_back) = FAILED.admit(&self.identity.name) {
            tracing::warn!(
                plugin = %self.identity.name,
                version = %self.identity.version,
                cause = %failure,
                detail = %format!("{error:#}"),
                held_back,
                "plugin call failed; its instance is replaced"
            );
        }
        if let Some(probes) = &self.probes {
            probes.error(&failure).inc();
            if self.instance.is_some() {
                probes.replaced.inc();
            }
        }
        self.instance = None;
        failure
    }

    fn instantiate(&self) -> wasmtime::Result<(Store<GuestState>, Plugin)> {
        let state = GuestState {
            // No preopened directories, environment, arguments or network: a plugin sees
            // nothing of the host beyond the `host` interface.
            wasi: WasiCtxBuilder::new()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: self.limits.memory_bytes(),
                denied: false,
            },
            plugin: self.identity.name.clone(),
            version: self.identity.version.clone(),
            cache: self.cache.clone(),
            request: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        let plugin = self.pre.instantiate(&mut store)?;
        Ok((store, plugin))
    }
}

/// Caps linear memory, and remembers a refused growth: a Rust guest whose allocation fails
/// aborts with `unreachable`, which would otherwise look like a panic.
struct MemoryLimiter {
    max_bytes: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// What a plugin's store holds: a locked-down WASI context and its view of the host.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    version: Arc<str>,
    cache: Arc<SnapshotCache>,
    /// The request being answered, while an `on-request` call runs.
    request: Option<RequestScope>,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl super::bindings::flux::gateway::types::Host for GuestState {}

impl super::bindings::flux::gateway::caller::Host for GuestState {
    fn current(&mut self) -> Option<WitPrincipal> {
        let caller = self.request.as_ref()?.caller.as_deref()?;
        Some(WitPrincipal {
            subject: caller.subject.clone(),
            scopes: caller.scopes.clone(),
            claims: caller.claims.clone(),
        })
    }

    fn leave_rooms(&mut self, pattern: String) {
        if let Some(request) = self.request.as_mut()
            && request.leave.len() < MAX_LEAVES
        {
            request.leave.push(pattern);
        }
    }
}

impl super::bindings::flux::gateway::host::Host for GuestState {
    fn cache_get(&mut self, key: String) -> Option<String> {
        self.cache
            .get(&(self.plugin.clone(), key.into()))
            .map(|entry| entry.payload.get().to_owned())
    }

    fn log(&mut self, level: LogLevel, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let cut = (0..=MAX_LOG_LINE)
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0);
            message.truncate(cut);
        }
        static GUEST_LINES: Throttle = Throttle::new();
        let (plugin, version) = (&*self.plugin, &*self.version);
        let Some(held_back) = GUEST_LINES.admit(plugin) else {
            return;
        };
        if held_back > 0 {
            tracing::warn!(plugin, version, held_back, "plugin log lines held back");
        }
        match level {
            LogLevel::Debug => tracing::debug!(plugin, version, "{message}"),
            LogLevel::Info => tracing::info!(plugin, version, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, version, "{message}"),
            LogLevel::Error => tracing::error!(plugin, version, "{message}"),
        }
    }
}
