//! A plugin version's worker: a thread that owns its instance and takes one job at a time,
//! each admitted by the version's guard and its outcome recorded there; and the handle the
//! async side calls it through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::circuit::{Blame, Guard, Refusal};
use super::instance::PluginInstance;
use super::{Action, ClientRequest, Manifest, RequestError, WitRecord};
use crate::auth::Principal;
use crate::config::PluginLimits;

/// Jobs queued for one plugin before callers wait (backpressure towards the bus and sockets).
const JOB_QUEUE: usize = 1_024;

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

impl PluginHandle {
    /// Starts the worker thread that owns `instance`, and returns the handle to it.
    pub(super) fn start(
        id: u64,
        manifest: Arc<Manifest>,
        limits: Arc<PluginLimits>,
        guard: Arc<Guard>,
        instance: PluginInstance,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let worker_guard = guard.clone();
        let spin = limits.worker_spin();
        std::thread::Builder::new()
            .name(format!("plugin-{}", manifest.name))
            .spawn(move || serve(instance, &worker_guard, queue, spin))?;
        Ok(Self {
            id,
            manifest,
            limits,
            guard,
            jobs,
        })
    }
}

/// One record's outcome: its actions, or why the plugin found it malformed.
pub type RecordOutcome = Result<Vec<Action>, String>;

/// A plugin's answer to a client request.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Vec<Action>, RequestError>,
    /// Room patterns the requesting socket leaves (`caller.leave-rooms`), before the actions.
    pub leave: Vec<String>,
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
    /// Nothing to run: answered at once, so the round trip is the hop alone.
    RoundTrip(oneshot::Sender<Result<(), CallFailure>>),
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

    /// A job that does nothing: the hop to the worker and back, without the guest (what the
    /// benchmarks measure the hop with).
    pub async fn round_trip(&self) -> Result<(), CallFailure> {
        self.ask(Job::RoundTrip).await
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
        let (reply, mut answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| CallFailure::Unavailable)?;
        // Stay runnable for a short call's answer rather than let this runtime thread sleep
        // and be woken for it; yielding lets every other task on the thread run meanwhile.
        let until = Instant::now() + self.limits.worker_spin();
        loop {
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                Err(oneshot::error::TryRecvError::Closed) => return Err(CallFailure::Unavailable),
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                    tokio::task::yield_now().await;
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
            }
        }
        answer.await.map_err(|_| CallFailure::Unavailable)?
    }
}

/// A worker thread's loop: one job at a time, on the plugin's own instance, each admitted
/// by the version's guard and its outcome recorded there.
fn serve(
    mut instance: PluginInstance,
    guard: &Guard,
    mut queue: mpsc::Receiver<Job>,
    spin: Duration,
) {
    while let Some(job) = next_job(&mut queue, spin) {
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
            Job::RoundTrip(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// The next job, watched for `spin` before the thread sleeps on the queue: a job that comes
/// within it is taken without a wake-up. `None` once every handle is gone.
fn next_job(queue: &mut mpsc::Receiver<Job>, spin: Duration) -> Option<Job> {
    let until = Instant::now() + spin;
    loop {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < until => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return queue.blocking_recv(),
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
