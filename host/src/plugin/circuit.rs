//! Whether a plugin version may be called right now: its circuit (stop feeding a version that
//! keeps failing, probe it again after a backoff) and its CPU budget (guest time per second).
//!
//! The decisions are pure — [`Circuit`] and [`CpuBudget`] take the time as an argument and
//! are unit-tested here; [`Guard`] puts them behind a lock for one version's worker thread,
//! counts them in metrics, and reports a version whose circuit opened to the plugin set, the
//! one owner of versions, which decides about rolling it back.
//!
//! Failures are charged to the version that made them (each version has its own guard). A
//! failure caused by a client request is charged at most once per socket per window, so one
//! client cannot open a circuit — or roll a version back — on its own; and a circuit opens only
//! when failures are both numerous (`failures`) and a large share of the calls
//! (`failure_ratio`), so rare failures amid healthy traffic never open it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use super::worker::CallFailure;
use crate::config::CircuitConfig;
use crate::metrics::{self, Counter, Gauge, Metrics, PluginRefusalLabels};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The value of `flux_plugin_circuit_state`.
    fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Who made a call, for charging its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Bus records, timers, the canary: the version's own doing.
    Version,
    /// A client request from this socket (any stable id).
    Socket(u64),
}

/// What the circuit lets the next call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// The one call that tests a half-open circuit.
    Probe,
    Refused,
}

/// What a call's outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

/// Calls and failures over the window, in ten buckets: memory does not grow with traffic.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    started: Option<Instant>,
    calls: u32,
    failures: u32,
}

const BUCKETS: usize = 10;
/// Most sockets remembered as charged in one window; beyond it their failures count again.
const MAX_CHARGED_SOCKETS: usize = 4_096;

/// One version's circuit.
#[derive(Debug)]
pub struct Circuit {
    config: CircuitConfig,
    state: CircuitState,
    buckets: [Bucket; BUCKETS],
    /// Where bucket spans are counted from: the first recorded call.
    origin: Option<Instant>,
    /// Sockets whose failure was charged in the current window, and when.
    charged: HashMap<u64, Instant>,
    /// Until when the circuit stays open, and how long it opens next time.
    open_until: Option<Instant>,
    backoff: Duration,
    /// When a probe last closed it: a version that trips again soon after is not forgiven
    /// (its backoff keeps growing), so a fault that probes cannot see does not oscillate.
    closed_at: Option<Instant>,
    opened: u64,
}

impl Circuit {
    pub fn new(config: CircuitConfig) -> Self {
        let backoff = config.open_for();
        Self {
            config,
            state: CircuitState::Closed,
            buckets: [Bucket::default(); BUCKETS],
            origin: None,
            charged: HashMap::new(),
            open_until: None,
            backoff,
            closed_at: None,
            opened: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Whether a call may run now. Calls are made one at a time per version (its worker), so
    /// a probe's outcome is always recorded before the next admission.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            CircuitState::Closed => Admission::Run,
            CircuitState::HalfOpen => Admission::Probe,
            CircuitState::Open if self.open_until.is_some_and(|until| now >= until) => {
                self.state = CircuitState::HalfOpen;
                Admission::Probe
            }
            CircuitState::Open => Admission::Refused,
        }
    }

    /// How long until a refused call could be probed.
    pub fn retry_in(&self, now: Instant) -> Duration {
        match (self.state, self.open_until) {
            (CircuitState::Open, Some(until)) => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Records an admitted call's outcome.
    pub fn record(&mut self, now: Instant, failed: bool, blame: Blame) -> Transition {
        if self.state == CircuitState::HalfOpen {
            return if failed {
                self.backoff = (self.backoff * 2).min(self.config.max_open_for());
                self.open(now);
                Transition::Opened
            } else {
                self.close(now);
                Transition::Closed
            };
        }
        // A socket's repeated failures are neither failures nor healthy calls of the version.
        if failed && !self.charge(now, blame) {
            return Transition::None;
        }
        let bucket = self.bucket(now);
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        if failed && self.state == CircuitState::Closed && self.tripped(now) {
            let window = self.config.window();
            self.backoff = if self
                .closed_at
                .is_some_and(|at| now.saturating_duration_since(at) < window)
            {
                (self.backoff * 2).min(self.config.max_open_for())
            } else {
                self.config.open_for()
            };
            self.open(now);
            return Transition::Opened;
        }
        Transition::None
    }

    /// Whether a failure counts: always for the version's own calls, once per window for a
    /// socket.
    fn charge(&mut self, now: Instant, blame: Blame) -> bool {
        let Blame::Socket(socket) = blame else {
            return true;
        };
        let window = self.config.window();
        self.charged
            .retain(|_, at| now.saturating_duration_since(*at) < window);
        if self.charged.contains_key(&socket) {
            return false;
        }
        if self.charged.len() < MAX_CHARGED_SOCKETS {
            self.charged.insert(socket, now);
        }
        true
    }

    /// The bucket `now` falls in, emptied if it last held an older span.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let span = self.config.window() / BUCKETS as u32;
        let first = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(first);
        let index = (elapsed.as_nanos() / span.as_nanos().max(1)) as usize;
        let slot = &mut self.buckets[index % BUCKETS];
        let starts = first + span * u32::try_from(index).unwrap_or(u32::MAX);
        if slot.started != Some(starts) {
            *slot = Bucket {
                started: Some(starts),
                ..Bucket::default()
            };
        }
        slot
    }

    fn tripped(&self, now: Instant) -> bool {
        let (calls, failures) = self.window_counts(now);
        failures >= self.config.failures.max(1)
            && f64::from(failures) >= self.config.failure_ratio * f64::from(calls)
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open;
        self.open_until = Some(now + self.backoff);
        self.opened += 1;
    }

    fn close(&mut self, now: Instant) {
        self.state = CircuitState::Closed;
        self.open_until = None;
        self.closed_at = Some(now);
        self.buckets = [Bucket::default(); BUCKETS];
        self.charged.clear();
    }

    /// Calls and failures charged within the window.
    fn window_counts(&self, now: Instant) -> (u32, u32) {
        let window = self.config.window();
        self.buckets
            .iter()
            .filter(|b| {
                b.started
                    .is_some_and(|s| now.saturating_duration_since(s) < window)
            })
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }
}

/// Guest time a version may use per second: a bucket of nanoseconds refilled at the budget's
/// rate, holding at most one second's worth. Calls are charged after they ran, so the balance
/// can go negative; while it is, the version waits (records, timers) or is refused (requests).
#[derive(Debug)]
pub struct CpuBudget {
    per_sec: Duration,
    balance_ns: i128,
    refilled: Instant,
    /// Guest time used in the current and the previous whole second.
    second_started: Instant,
    used_this_second: Duration,
    used_last_second: Duration,
}

impl CpuBudget {
    /// `per_sec` zero: unlimited.
    pub fn new(per_sec: Duration, now: Instant) -> Self {
        Self {
            per_sec,
            balance_ns: per_sec.as_nanos() as i128,
            refilled: now,
            second_started: now,
            used_this_second: Duration::ZERO,
            used_last_second: Duration::ZERO,
        }
    }

    pub fn charge(&mut self, now: Instant, used: Duration) {
        self.refill(now);
        self.balance_ns -= used.as_nanos() as i128;
        self.used_this_second += used;
    }

    /// How long until the balance is no longer negative.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.per_sec.is_zero() || self.balance_ns >= 0 {
            return Duration::ZERO;
        }
        let deficit = (-self.balance_ns) as f64 / self.per_sec.as_nanos() as f64;
        Duration::from_secs_f64(deficit)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        let full = self.per_sec.as_nanos() as i128;
        let earned = (elapsed.as_secs_f64() * self.per_sec.as_nanos() as f64) as i128;
        self.balance_ns = (self.balance_ns + earned).min(full);
        let since = now.saturating_duration_since(self.second_started);
        if since >= Duration::from_secs(1) {
            self.used_last_second = if since >= Duration::from_secs(2) {
                Duration::ZERO
            } else {
                self.used_this_second
            };
            self.used_this_second = Duration::ZERO;
            self.second_started = now;
        }
    }

    /// Guest time used over the last whole second.
    pub fn used_per_sec(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.used_last_second
    }
}

/// Tells the plugin set that a version's circuit opened.
#[derive(Debug, Clone)]
pub struct Tripped {
    pub plugin: String,
    /// [`super::PluginHandle::id`] of the version.
    pub version_id: u64,
    pub version: String,
    pub cause: CallFailure,
}

/// What `GET /admin/plugins` shows of a version's circuit and budget.
#[derive(Debug, Clone, Serialize)]
pub struct GuardView {
    pub circuit: CircuitState,
    pub calls_in_window: u32,
    pub failures_in_window: u32,
    pub opened_total: u64,
    pub retry_in_ms: u64,
    pub cpu_budget_ms_per_sec: u64,
    pub cpu_used_ms_per_sec: u64,
}

/// Why a call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    CircuitOpen,
    CpuBudget,
}

impl Refusal {
    /// The `reason` label of `flux_plugin_calls_refused_total`.
    fn label(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::CpuBudget => "cpu_budget",
        }
    }
}

struct Guarded {
    circuit: Circuit,
    budget: CpuBudget,
}

/// Metric handles, looked up once per version.
struct Probes {
    state: Gauge,
    opened: Counter,
    refused: [Counter; 2],
    throttled: Counter,
    slow: Counter,
}

/// One version's circuit and CPU budget, shared by its worker (which admits and records
/// calls) and its callers (which wait out the budget).
pub struct Guard {
    guarded: Mutex<Guarded>,
    probes: Probes,
    /// Calls slower than this are counted as slow (half the call deadline).
    slow_after: Duration,
    trips: Option<mpsc::UnboundedSender<Tripped>>,
    plugin: String,
    version: String,
    version_id: u64,
}

/// Which version a guard belongs to.
pub struct GuardIdentity<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub version_id: u64,
}

impl Guard {
    pub fn new(
        identity: GuardIdentity<'_>,
        circuit: CircuitConfig,
        cpu_per_sec: Duration,
        call_timeout: Duration,
        metrics: &Metrics,
        trips: Option<mpsc::UnboundedSender<Tripped>>,
    ) -> Self {
        let plugin = identity.plugin;
        let labels = metrics::plugin(plugin);
        let refused = |reason: Refusal| {
            metrics
                .plugin_calls_refused
                .get_or_create_owned(&PluginRefusalLabels {
                    plugin: plugin.to_owned(),
                    reason: reason.label(),
                })
        };
        let probes = Probes {
            state: metrics.plugin_circuit_state.get_or_create_owned(&labels),
            opened: metrics.plugin_circuit_opened.get_or_create_owned(&labels),
            refused: [refused(Refusal::CircuitOpen), refused(Refusal::CpuBudget)],
            throttled: metrics.plugin_cpu_throttled.get_or_create_owned(&labels),
            slow: metrics.plugin_slow_calls.get_or_create_owned(&labels),
        };
        Self {
            guarded: Mutex::new(Guarded {
                circuit: Circuit::new(circuit),
                budget: CpuBudget::new(cpu_per_sec, Instant::now()),
            }),
            probes,
            slow_after: call_timeout / 2,
            trips,
            plugin: plugin.to_owned(),
            version: identity.version.to_owned(),
            version_id: identity.version_id,
        }
    }

    /// Whether the worker may make the next call; requests are also refused while the
    /// version is over its CPU budget (records and timers wait for it instead).
    pub fn admit(&self, request: bool) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let mut guarded = self.guarded.lock();
        let refusal = match guarded.circuit.admit(now) {
            Admission::Refused => Refusal::CircuitOpen,
            _ if request && !guarded.budget.wait(now).is_zero() => Refusal::CpuBudget,
            admission => {
                if admission == Admission::Probe {
                    self.probes.state.set(CircuitState::HalfOpen.gauge_value());
                }
                return Ok(admission);
            }
        };
        self.probes.refused[refusal as usize].inc();
        Err(refusal)
    }

    /// Records a call the worker made: its guest time, and its failure if it failed.
    pub fn record(&self, used: Duration, failure: Option<&CallFailure>, blame: Blame) {
        if used > self.slow_after {
            self.probes.slow.inc();
        }
        let now = Instant::now();
        let transition = {
            let mut guarded = self.guarded.lock();
            guarded.budget.charge(now, used);
            guarded.circuit.record(now, failure.is_some(), blame)
        };
        match transition {
            Transition::None => {}
            Transition::Closed => {
                self.probes.state.set(CircuitState::Closed.gauge_value());
                tracing::info!(plugin = %self.plugin, version = %self.version, "circuit closed: the probe succeeded");
            }
            Transition::Opened => {
                self.probes.state.set(CircuitState::Open.gauge_value());
                self.probes.opened.inc();
                let cause = failure.cloned().unwrap_or(CallFailure::Unavailable);
                tracing::warn!(plugin = %self.plugin, version = %self.version, %cause, "circuit opened: calls are refused until a probe succeeds");
                if let Some(trips) = &self.trips {
                    let _ = trips.send(Tripped {
                        plugin: self.plugin.clone(),
                        version_id: self.version_id,
                        version: self.version.clone(),
                        cause,
                    });
                }
            }
        }
    }

    /// Sets `flux_plugin_circuit_state` to this version's state: called when it goes live
    /// (a candidate that is canaried and rejected never touches it).
    pub fn report_state(&self) {
        let state = self.guarded.lock().circuit.state();
        self.probes.state.set(state.gauge_value());
    }

    /// How long the caller of a record batch or timer should wait for the CPU budget.
    pub fn budget_wait(&self) -> Duration {
        let wait = self.guarded.lock().budget.wait(Instant::now());
        if !wait.is_zero() {
            self.probes.throttled.inc();
        }
        wait
    }

    pub fn view(&self) -> GuardView {
        let now = Instant::now();
        let mut guarded = self.guarded.lock();
        let (calls, failures) = guarded.circuit.window_counts(now);
        GuardView {
            circuit: guarded.circuit.state(),
            calls_in_window: calls,
            failures_in_window: failures,
            opened_total: guarded.circuit.opened,
            retry_in_ms: guarded.circuit.retry_in(now).as_millis() as u64,
            cpu_budget_ms_per_sec: guarded.budget.per_sec.as_millis() as u64,
            cpu_used_ms_per_sec: guarded.budget.used_per_sec(now).as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig {
            failures: 3,
            failure_ratio: 0.5,
            window_ms: 10_000,
            open_ms: 1_000,
            max_open_ms: 4_000,
            rollback_within_ms: 60_000,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn opens_after_enough_failures_and_refuses_until_the_backoff_ends() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for i in 0..2 {
            assert_eq!(circuit.admit(start + MS * i), Admission::Run);
            assert_eq!(
                circuit.record(start + MS * i, true, Blame::Version),
                Transition::None
            );
        }
        assert_eq!(
            circuit.record(start + MS * 2, true, Blame::Version),
            Transition::Opened
        );
        assert_eq!(circuit.state(), CircuitState::Open);
        assert_eq!(circuit.admit(start + MS * 500), Admission::Refused);
        assert_eq!(circuit.retry_in(start + MS * 502), MS * 500);
        assert_eq!(circuit.admit(start + MS * 1_002), Admission::Probe);
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_its_maximum_and_a_good_one_closes() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for i in 0..3 {
            circuit.record(start + MS * i, true, Blame::Version);
        }
        let mut now = start;
        for expected in [2_000, 4_000, 4_000] {
            now += Duration::from_secs(5);
            assert_eq!(circuit.admit(now), Admission::Probe);
            assert_eq!(
                circuit.record(now, true, Blame::Version),
                Transition::Opened
            );
            assert_eq!(circuit.retry_in(now), MS * expected);
        }
        now += Duration::from_secs(5);
        assert_eq!(circuit.admit(now), Admission::Probe);
        assert_eq!(
            circuit.record(now, false, Blame::Version),
            Transition::Closed
        );
        assert_eq!(circuit.admit(now), Admission::Run);
        // Closed afresh: the old failures are forgotten, but tripping again soon after keeps
        // the grown backoff...
        for i in 0..2 {
            assert_eq!(
                circuit.record(now + MS * i, true, Blame::Version),
                Transition::None
            );
        }
        assert_eq!(
            circuit.record(now + MS * 3, true, Blame::Version),
            Transition::Opened
        );
        assert_eq!(circuit.retry_in(now + MS * 3), MS * 4_000);
        // ...while a version that stayed closed for a whole window starts over.
        now += Duration::from_secs(5);
        assert_eq!(circuit.admit(now), Admission::Probe);
        circuit.record(now, false, Blame::Version);
        now += Duration::from_secs(11);
        for i in 0..3 {
            circuit.record(now + MS * i, true, Blame::Version);
        }
        assert_eq!(circuit.retry_in(now + MS * 2), MS * 1_000);
    }

    #[test]
    fn rare_failures_amid_healthy_calls_never_open_it() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for i in 0..1_000 {
            let failed = i % 3 == 0;
            let now = start + MS * i;
            assert_eq!(
                circuit.record(now, failed, Blame::Version),
                Transition::None
            );
        }
        assert_eq!(circuit.state(), CircuitState::Closed);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        circuit.record(start, true, Blame::Version);
        circuit.record(start + MS, true, Blame::Version);
        let later = start + Duration::from_secs(11);
        assert_eq!(
            circuit.record(later, true, Blame::Version),
            Transition::None
        );
        assert_eq!(circuit.window_counts(later), (1, 1));
    }

    #[test]
    fn one_socket_is_charged_once_per_window_however_often_it_makes_the_plugin_fail() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for i in 0..100 {
            let now = start + MS * i;
            assert_eq!(
                circuit.record(now, true, Blame::Socket(7)),
                Transition::None
            );
        }
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert_eq!(circuit.window_counts(start + MS * 100).1, 1);
        // Three different sockets failing do open it, and so does the same one a window later.
        circuit.record(start + MS * 101, true, Blame::Socket(8));
        assert_eq!(
            circuit.record(start + MS * 102, true, Blame::Socket(9)),
            Transition::Opened
        );
    }

    #[test]
    fn the_cpu_budget_refills_at_its_rate_and_holds_one_second_at_most() {
        let start = Instant::now();
        let mut budget = CpuBudget::new(MS * 100, start);
        assert_eq!(budget.wait(start), Duration::ZERO);
        budget.charge(start, MS * 300);
        // 200 ms in debt at 100 ms per second: two seconds.
        assert_eq!(budget.wait(start), Duration::from_secs(2));
        assert_eq!(
            budget.wait(start + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(budget.wait(start + Duration::from_secs(2)), Duration::ZERO);
        // Idle for a minute: still only one second's worth in hand.
        let later = start + Duration::from_secs(60);
        budget.charge(later, MS * 150);
        assert_eq!(budget.wait(later), MS * 500);
    }

    #[test]
    fn a_zero_budget_never_throttles() {
        let start = Instant::now();
        let mut budget = CpuBudget::new(Duration::ZERO, start);
        budget.charge(start, Duration::from_secs(10));
        assert_eq!(budget.wait(start), Duration::ZERO);
    }
}
