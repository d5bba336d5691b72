//! Running plugins: one wasmtime [`Engine`] per process, one compiled [`Component`] and
//! pre-linked template per plugin version, and per plugin a worker thread that owns a reusable
//! instance.
//!
//! Every guest call gets an epoch deadline and runs under a memory limit. A call that traps
//! poisons its instance, so the worker drops it and instantiates a fresh one for the next call;
//! the other plugins never notice. Guest code only ever runs on the workers, never on the async
//! runtime's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::flux::gateway::caller::Principal as WitPrincipal;
use super::bindings::flux::gateway::host::LogLevel;
use super::bindings::{Plugin, PluginPre};
use super::circuit::{Blame, Guard, GuardIdentity, Refusal, Tripped};
use super::precompiled::{Cached, PrecompiledCache, content_digest};
use super::{Action, ClientRequest, Manifest, RequestError, WIT_PACKAGE, WIT_VERSION, WitRecord};
use crate::auth::Principal;
use crate::cache::SnapshotCache;
use crate::config::{PluginLimits, Policies};
use crate::logs::Throttle;
use crate::metrics::{self, Counter, Histogram, Metrics};

/// How often the epoch advances; call deadlines are measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Jobs queued for one plugin before callers wait (backpressure towards the bus and sockets).
const JOB_QUEUE: usize = 1_024;
/// Longest guest log line kept; a plugin cannot flood the log.
const MAX_LOG_LINE: usize = 2_048;
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

/// Why a guest call failed. The instance that failed has been discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("exceeded its call deadline")]
    Timeout,
    #[error("exceeded its memory limit")]
    OutOfMemory,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("is not running")]
    Unavailable,
    /// Not called: its circuit is open.
    #[error("is temporarily unavailable (its circuit is open)")]
    CircuitOpen,
    /// Not called: it used up its CPU budget.
    #[error("is over its CPU budget")]
    OverBudget,
}

impl From<Refusal> for CallFailure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::CircuitOpen => Self::CircuitOpen,
            Refusal::CpuBudget => Self::OverBudget,
        }
    }
}

impl CallFailure {
    /// Whether the guest was not called at all (and so did nothing wrong this time).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::CircuitOpen | Self::OverBudget)
    }
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
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let worker_guard = guard.clone();
        std::thread::Builder::new()
            .name(format!("plugin-{}", manifest.name))
            .spawn(move || serve(instance, &worker_guard, queue))
            .map_err(|e| LoadError::Link(format!("cannot start its worker thread: {e}")))?;
        Ok(PluginHandle {
            id,
            manifest,
            limits,
            guard,
            jobs,
        })
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
        let mut instance = PluginInstance {
            pre,
            instance: None,
            engine: self.engine.clone(),
            deadline_ticks: deadline_ticks(defaults.call_timeout()),
            limits: defaults,
            cache: self.cache.clone(),
            identity: Identity::unnamed(),
            probes: None,
        };
        let info = instance
            .call(None, |plugin, store| plugin.call_describe(store))
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
        instance.identity = Identity::of(&manifest);
        let limits = Arc::new(self.policies.for_plugin(&manifest.name));
        instance.limits = (*limits).clone();
        instance.deadline_ticks = deadline_ticks(limits.call_timeout());
        if let Some((store, _)) = instance.instance.as_mut() {
            // The instance that described the plugin serves on: give it the plugin's identity
            // (which scopes its cache reads and tags its logs) and its own memory quota.
            let state = store.data_mut();
            state.plugin = instance.identity.name.clone();
            state.version = instance.identity.version.clone();
            state.limiter.max_bytes = limits.memory_bytes();
        }
        instance.probes = Some(Probes::new(&self.metrics, &manifest.name));
        Ok((instance, manifest, limits))
    }

    /// Compiles `wasm`, or loads what an earlier compilation of the same bytes by a compatible
    /// engine left in the precompiled cache (once it has authenticated it).
    fn compile(&self, wasm: &[u8], digest: &str) -> Result<Component, LoadError> {
        if let Some(precompiled) = &self.precompiled {
            match precompiled.load(&self.engine, digest) {
                Cached::Hit(component) => {
                    self.metrics
                        .counter(metrics::PLUGIN_COMPILES, &[("source", "cache")])
                        .inc();
                    return Ok(component);
                }
                Cached::Miss => {}
                Cached::Refused(why) => {
                    self.metrics
                        .counter(metrics::PRECOMPILED_REFUSED, &[])
                        .inc();
                    tracing::warn!("not loading a precompiled plugin, compiling instead: {why}");
                }
            }
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.metrics
            .counter(metrics::PLUGIN_COMPILES, &[("source", "compiled")])
            .inc();
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

/// A loaded plugin version: its manifest, its guard and the queue to its worker. Clones share
/// the worker, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct PluginHandle {
    /// Unique per loaded version in this process.
    pub id: u64,
    pub manifest: Arc<Manifest>,
    /// This plugin's limits and policies (`[limits]` with its `[plugins.NAME]` overrides).
    pub limits: Arc<PluginLimits>,
    /// This version's circuit and CPU budget.
    pub guard: Arc<Guard>,
    jobs: mpsc::Sender<Job>,
}

/// One record's outcome: its actions, or why the plugin found it malformed.
pub type RecordOutcome = Result<Vec<Action>, String>;

/// Most `leave-rooms` calls kept from one request.
const MAX_LEAVES: usize = 16;

/// A plugin's answer to a client request.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Vec<Action>, RequestError>,
    /// Room patterns the requesting socket leaves (`caller.leave-rooms`), before the actions.
    pub leave: Vec<String>,
}

/// What the guest sees of the request being answered.
struct RequestScope {
    caller: Option<Arc<Principal>>,
    leave: Vec<String>,
}

enum Job {
    Records(
        Vec<WitRecord>,
        oneshot::Sender<Result<Vec<RecordOutcome>, CallFailure>>,
    ),
    Request(
        Arc<ClientRequest>,
        Caller,
        oneshot::Sender<Result<Answer, CallFailure>>,
    ),
    Timer(String, oneshot::Sender<Result<Vec<Action>, CallFailure>>),
}

/// Who sent a client request: the principal the guest's `caller.current()` returns, and the
/// socket its failures are charged to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Option<Arc<Principal>>,
    pub socket: u64,
}

impl PluginHandle {
    /// Runs records through the plugin, once it is within its CPU budget.
    pub async fn on_records(
        &self,
        records: Vec<WitRecord>,
    ) -> Result<Vec<RecordOutcome>, CallFailure> {
        self.within_budget().await;
        self.ask(|reply| Job::Records(records, reply)).await
    }

    /// Answers a client request, or refuses at once when the plugin's circuit is open or it
    /// is over its CPU budget. Shared: an event several plugins handle is not copied for each.
    pub async fn on_request(
        &self,
        request: Arc<ClientRequest>,
        caller: Caller,
    ) -> Result<Answer, CallFailure> {
        self.ask(|reply| Job::Request(request, caller, reply)).await
    }

    pub async fn on_timer(&self, name: String) -> Result<Vec<Action>, CallFailure> {
        self.within_budget().await;
        self.ask(|reply| Job::Timer(name, reply)).await
    }

    /// Waits while the version is over its CPU budget: a plugin that burns CPU is slowed
    /// down, not allowed to starve the others.
    async fn within_budget(&self) {
        let wait = self.guard.budget_wait();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, CallFailure>>) -> Job,
    ) -> Result<T, CallFailure> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| CallFailure::Unavailable)?;
        answer.await.map_err(|_| CallFailure::Unavailable)?
    }
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
        let labels = [("plugin", plugin)];
        let error = |kind| {
            metrics.counter(
                metrics::PLUGIN_ERRORS,
                &[("plugin", plugin), ("kind", kind)],
            )
        };
        // The `kind` label of `flux_plugin_errors_total`.
        Self {
            calls: metrics.counter(metrics::PLUGIN_CALLS, &labels),
            latency: metrics.histogram(metrics::PLUGIN_CALL_SECONDS, &labels),
            replaced: metrics.counter(metrics::PLUGIN_INSTANCES_REPLACED, &labels),
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

/// A worker thread's loop: one job at a time, on the plugin's own instance, each admitted
/// by the version's guard and its outcome recorded there.
fn serve(mut instance: PluginInstance, guard: &Guard, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        // A caller that gave up has dropped its receiver; nothing to report then.
        match job {
            Job::Records(records, reply) => {
                let outcome = guarded(guard, false, Blame::Version, || {
                    instance.on_records(&records)
                });
                let _ = reply.send(outcome);
            }
            Job::Request(request, caller, reply) => {
                let blame = Blame::Socket(caller.socket);
                let outcome = guarded(guard, true, blame, || {
                    instance.on_request(&request, caller.principal)
                });
                let _ = reply.send(outcome);
            }
            Job::Timer(name, reply) => {
                let outcome = guarded(guard, false, Blame::Version, || instance.on_timer(&name));
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Makes one call if the guard admits it, and records its guest time and outcome there.
fn guarded<T>(
    guard: &Guard,
    request: bool,
    blame: Blame,
    call: impl FnOnce() -> Result<T, CallFailure>,
) -> Result<T, CallFailure> {
    guard.admit(request)?;
    let started = Instant::now();
    let outcome = call();
    guard.record(started.elapsed(), outcome.as_ref().err(), blame);
    outcome
}

impl PluginInstance {
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
            probes.latency.observe(started.elapsed());
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
