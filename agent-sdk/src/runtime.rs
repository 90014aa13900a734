//! The runtime: job instances, their status machine, tasks, stop, detail and shutdown.

use std::any::Any;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crossbeam_utils::CachePadded;
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::task::JoinHandle;

use crate::cluster::{
    CLAIM_LEASE, CLAIM_SAFETY, Claimed, Member, RENEW_EVERY, RENEW_WITHIN, RunRecord,
};
use crate::console::{Console, LogMirror, Prefix};
use crate::context::{Cancel, ContextInner, JobContext};
use crate::error::{DispatchError, JobError, JobErrorKind};
use crate::job::{DynJob, JobKind};
use crate::metrics::{ClassMetrics, Outcome};
use crate::options::AgentOptions;
use crate::outcome::Outlet;
use crate::registry::{BusyPolicy, JobRegistration, Registry};
use crate::request::{Action, Dispatch};
use crate::result::{DispatchResult, Results};
use crate::store::Store;
use crate::sync::{Signal, lock};
use crate::timefmt::fmt_duration;

mod busy;
mod detail;
mod stop;

pub(crate) use stop::answer_deadline;

/// The status of a job instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Never ran.
    Default,
    /// Running.
    Running,
    /// A stop was requested; the instance is winding down.
    Stopping,
    /// Ended.
    Stopped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Default => "Default",
            Status::Running => "Running",
            Status::Stopping => "Stopping",
            Status::Stopped => "Stopped",
        }
    }
}

/// One running instance.
pub(crate) struct Run {
    seq: u64,
    pub(crate) cx: JobContext,
    instance: Arc<dyn DynJob>,
    status: Mutex<Status>,
    started: SystemTime,
    results: Results,
    reported: AtomicBool,
    /// Set once the run's result is written.
    result_written: AtomicBool,
    /// Set when the run is taken out of its class (counted once).
    finished: AtomicBool,
    /// The store shared with other replicas, when there is one.
    store: Option<Arc<Store>>,
    /// Whether this run holds the class's cluster-wide claim.
    claimed: AtomicBool,
    /// Writing the in-flight record (awaited before the record is removed).
    record: Mutex<Option<JoinHandle<()>>>,
    /// Set when the stall watchdog cancelled the run.
    stalled: AtomicBool,
    /// The run's `job_run` span (see [`crate::trace`]).
    span: tracing::Span,
    /// Its parameter's share of `JOBAGENT_MAX_PARAM_BYTES_RUNNING`, given back when the run
    /// is dropped.
    _param_charge: Option<crate::budget::ParamCharge>,
}

impl Run {
    fn status(&self) -> Status {
        *lock(&self.status)
    }

    fn set_status(&self, status: Status) {
        *lock(&self.status) = status;
    }

    /// Moves a running run to Stopping; false when it is already stopping or has ended (its
    /// `on_stop` must not be called again).
    fn mark_stopping(&self) -> bool {
        let mut status = lock(&self.status);
        if matches!(*status, Status::Stopped | Status::Stopping) {
            return false;
        }
        *status = Status::Stopping;
        true
    }

    /// Flushes the console and writes the run's result, once. True when the result is
    /// written (or was reported by an earlier call); false when the store never took it
    /// within its retry bound, or an earlier call is still writing it: the run's in-flight
    /// record must then stay, so that a next process of the instance reports the run.
    async fn report(&self, error: Option<String>) -> bool {
        if self.reported.swap(true, Ordering::AcqRel) {
            return self.result_written.load(Ordering::Acquire);
        }
        // The result follows the console's last lines, but does not wait on them past its own
        // retry bound: a console that cannot be written (and gives up after its own bound)
        // must not hold the result back, nor lose it.
        match self.results.retry_bound() {
            Some(bound) => {
                if tokio::time::timeout(bound, self.cx.console().close())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        job_id = self.cx.job_id(),
                        "the console's last lines were not written within the result's retry bound; the result is written without waiting for them"
                    );
                }
            }
            None => self.cx.console().close().await,
        }
        let dropped = self.cx.console().dropped();
        let error = match (error, dropped) {
            (Some(e), 0) => Some(e),
            (Some(e), n) => Some(format!("{e} ({n} console lines were dropped)")),
            (None, _) => None,
        };
        if !self.results.wants(error.is_none()) {
            self.result_written.store(true, Ordering::Release);
            return true;
        }
        let id = self.cx.job_id();
        let result = DispatchResult::new(id, Action::Run, id, error, self.started);
        let written = self.results.write(result).await;
        self.result_written.store(written, Ordering::Release);
        written
    }
}

/// A class's runs in flight, by [`Run::seq`]: taking one out when it ends costs a lookup,
/// not a pass over all of them. A hash table keeps its memory when it empties (a B-tree frees
/// its root node, so every run of a mostly idle class allocated and freed one under the class
/// lock); the few readers that need start order sort.
#[derive(Default)]
struct Runs(foldhash::HashMap<u64, Arc<Run>>);

impl Runs {
    fn insert(&mut self, run: Arc<Run>) {
        self.0.insert(run.seq, run);
    }

    fn remove(&mut self, seq: u64) -> Option<Arc<Run>> {
        self.0.remove(&seq)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The earliest started run: a singleton's current one.
    fn oldest(&self) -> Option<&Arc<Run>> {
        self.0.values().min_by_key(|run| run.seq)
    }

    /// Every run, in no particular order.
    fn values(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.0.values()
    }

    /// Every run, in start order.
    fn in_order(&self) -> Vec<&Arc<Run>> {
        let mut runs: Vec<&Arc<Run>> = self.0.values().collect();
        runs.sort_unstable_by_key(|run| run.seq);
        runs
    }
}

#[derive(Default)]
struct ClassSlot {
    runs: Runs,
    last: Option<LastRun>,
    /// A singleton run being claimed cluster-wide (its job id).
    claiming: Option<String>,
}

/// Whether a run started.
enum Start {
    Started,
    /// The singleton is busy; the dispatch comes back for the busy policy.
    Busy(Busy, Box<Dispatch>),
}

/// The class's latest run, for `detail` and `stop` once it ended. It keeps the run's context
/// (one reference) rather than copies of its id and parameter: every run replaces it.
#[derive(Clone)]
struct LastRun {
    cx: JobContext,
    started: SystemTime,
    ended: Option<SystemTime>,
}

struct ClassState {
    /// The singleton's instance, kept across runs like the .NET agent's.
    singleton: Mutex<Option<Arc<dyn DynJob>>>,
    /// Padded, as `admitted`: every run writes them, from both worker threads, and what every
    /// run only reads must not share their cache line.
    slot: CachePadded<Mutex<ClassSlot>>,
    /// Runs of a class that may run many at once, counted when admitted and until they end:
    /// the per-class limit is checked on it before the run is built, outside the slot's lock.
    admitted: CachePadded<AtomicUsize>,
    /// Signalled whenever a run of the class ends.
    ended: Signal,
    /// Queued runs (busy policy `queue`) start in arrival order.
    queue: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
    /// The class's metric handles, taken at its first run.
    metrics: OnceLock<ClassMetrics>,
}

/// Who holds a busy singleton.
pub(crate) struct Busy {
    job_id: String,
    status: Status,
    replica: Option<String>,
}

impl Busy {
    fn describe(&self) -> String {
        match &self.replica {
            Some(replica) => format!("{} on replica {replica}", self.status.as_str()),
            None => self.status.as_str().to_owned(),
        }
    }

    fn into_error(self, reg: &'static JobRegistration) -> DispatchError {
        DispatchError::Busy {
            class: reg.class().to_owned(),
            status: self.describe(),
            job_id: self.job_id,
        }
    }
}

/// The state of every registered class, found by its registration's address: a binary
/// search over a few entries instead of hashing the class name on every dispatch.
struct Classes(Vec<(usize, ClassState)>);

impl Classes {
    fn new(registry: &Registry) -> Self {
        let mut classes: Vec<(usize, ClassState)> = registry
            .iter()
            .map(|reg| {
                let state = ClassState {
                    singleton: Mutex::new(None),
                    slot: CachePadded::new(Mutex::new(ClassSlot::default())),
                    admitted: CachePadded::new(AtomicUsize::new(0)),
                    ended: Signal::new(),
                    queue: tokio::sync::Mutex::new(()),
                    waiting: AtomicUsize::new(0),
                    metrics: OnceLock::new(),
                };
                (Self::key(reg), state)
            })
            .collect();
        classes.sort_unstable_by_key(|(key, _)| *key);
        Self(classes)
    }

    fn key(reg: &'static JobRegistration) -> usize {
        std::ptr::from_ref(reg).addr()
    }

    fn get(&self, reg: &'static JobRegistration) -> Option<&ClassState> {
        let key = Self::key(reg);
        self.0
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn values(&self) -> impl Iterator<Item = &ClassState> {
        self.0.iter().map(|(_, state)| state)
    }
}

/// Most runs waiting behind a busy singleton (busy policy `queue`).
const MAX_QUEUED: usize = 16;

/// Run ids and the runs in flight agent-wide.
struct Counters {
    seq: AtomicU64,
    in_flight: AtomicUsize,
}

/// The runtime shared by the router and the shutdown future.
///
/// Aligned to a cache line pair: behind an `Arc` whose count every run updates from both
/// worker threads, its fields, which every run reads, then start on a line of their own.
#[repr(align(128))]
pub(crate) struct Runtime {
    pub(crate) registry: Registry,
    classes: Classes,
    pub(crate) options: AgentOptions,
    /// `options.console_prefix`, shared by every run's console.
    console_prefix: Prefix,
    root: CancellationToken,
    /// Set just before `root` is cancelled. Every run reads it (a token's `is_cancelled`
    /// takes the token's lock, which both worker threads would contend for).
    root_cancelled: AtomicBool,
    tracker: TaskTracker,
    /// What lives as long as the agent rather than a run (coordinators, heartbeats, the
    /// reports of lost runs, remote stops): closed and waited for, with a bound, after the
    /// runs at shutdown.
    background: TaskTracker,
    accepting: AtomicBool,
    /// Set by a drain: new runs are refused, running ones may finish.
    draining: AtomicBool,
    /// Signalled whenever a run ends (a drain waits on it).
    idle: Signal,
    /// Written by every run: on a cache line of their own.
    counters: CachePadded<Counters>,
    pub(crate) member: Member,
    /// Whether this process holds its instance name (the coordinator finds out).
    name: tokio::sync::watch::Sender<NameState>,
}

/// What this process knows of its instance name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NameState {
    /// The store has not answered yet.
    Unknown,
    /// This process holds it.
    Held,
    /// Another process holds it (a live duplicate, or a predecessor whose lease has not
    /// lapsed yet): why runs are refused.
    HeldElsewhere(String),
}

impl Runtime {
    pub(crate) fn new(registry: Registry, options: AgentOptions, member: Member) -> Self {
        let classes = Classes::new(&registry);
        Self {
            registry,
            classes,
            console_prefix: Prefix::new(&options.console_prefix),
            options,
            root: CancellationToken::new(),
            root_cancelled: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            background: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            idle: Signal::new(),
            counters: CachePadded::new(Counters {
                seq: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            }),
            member,
            name: tokio::sync::watch::Sender::new(NameState::Unknown),
        }
    }

    /// The tracker of what lives as long as the agent (see [`Runtime::background`]'s field).
    pub(crate) fn background(&self) -> &TaskTracker {
        &self.background
    }

    /// Closes the background tracker and waits for its tasks (the coordinators release the
    /// instance name, reports of lost runs put back what they could not write) for at most
    /// `within`. Called once the runs are over and the background's stop token cancelled.
    pub(crate) async fn stop_background(&self, within: Duration) {
        self.background.close();
        if tokio::time::timeout(within, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending_tasks = self.background.len(),
                "shutdown: background tasks (instance-name release, lost-run reports) did not end within {} ms",
                within.as_millis()
            );
        }
    }

    /// Records what the coordinator found of this instance name. While another process holds
    /// it (a live duplicate, or a predecessor whose lease has not lapsed), runs are refused:
    /// they could be neither recorded under the name nor reported if this process died.
    pub(crate) fn set_name(&self, state: NameState) {
        self.name.send_if_modified(|now| {
            let changed = *now != state;
            *now = state;
            changed
        });
    }

    /// Refuses a run while another process holds this instance name. Before the store has
    /// first answered, waits for that answer until `by` (at most [`NAME_WITHIN`]): a run
    /// accepted under a name another process holds would belong to no one. A store that does
    /// not answer in time lets the run go, as before (its writes are retried).
    async fn check_name(&self, by: tokio::time::Instant) -> Result<(), DispatchError> {
        if *self.name.borrow() == NameState::Unknown {
            let by = by.min(tokio::time::Instant::now() + NAME_WITHIN);
            let mut rx = self.name.subscribe();
            let _ = tokio::time::timeout_at(by, rx.wait_for(|s| *s != NameState::Unknown)).await;
        }
        match &*self.name.borrow() {
            NameState::HeldElsewhere(why) => Err(DispatchError::DuplicateInstance(why.clone())),
            NameState::Held | NameState::Unknown => Ok(()),
        }
    }

    pub(crate) fn class(&self, name: &str) -> Result<&'static JobRegistration, DispatchError> {
        self.registry
            .find(name)
            .ok_or_else(|| self.registry.unknown_class(name))
    }

    fn state(&self, reg: &'static JobRegistration) -> &ClassState {
        match self.classes.get(reg) {
            Some(state) => state,
            // Every registration of the registry has a state; this cannot happen.
            None => unreachable!("class state missing for {}", reg.class()),
        }
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Why new runs are refused, if they are.
    pub(crate) fn not_accepting(&self) -> Option<&'static str> {
        if !self.is_accepting() {
            Some("the agent is shutting down")
        } else if self.is_draining() {
            Some("the agent is draining")
        } else {
            None
        }
    }

    fn class_metrics(&self, reg: &'static JobRegistration) -> &ClassMetrics {
        ClassMetrics::of(&self.state(reg).metrics, reg.class())
    }

    /// The store used for cluster coordination, when cluster mode is on.
    fn shared<'a>(&self, outlet: &'a Outlet) -> Option<&'a Arc<Store>> {
        outlet.store.as_ref().filter(|_| self.options.cluster)
    }

    /// Starts a run; answers at once. A busy singleton follows the class's busy policy.
    pub(crate) async fn run(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        if !self.is_accepting() {
            return Err(DispatchError::ShuttingDown);
        }
        if self.is_draining() {
            return Err(DispatchError::Draining);
        }
        if outlet.store.is_some() {
            self.check_name(stop::answer_deadline(&d)).await?;
        }
        let (busy, d) = match self.try_start(reg, d, &outlet).await? {
            Start::Started => {
                // The most frequent answer: built without the formatting machinery.
                const TAIL: &str = " run success!";
                let mut answer =
                    String::with_capacity("JobClass:".len() + reg.class().len() + TAIL.len());
                answer.push_str("JobClass:");
                answer.push_str(reg.class());
                answer.push_str(TAIL);
                return Ok(answer);
            }
            Start::Busy(busy, d) => (busy, *d),
        };
        match reg.on_busy() {
            BusyPolicy::Reject => Err(busy.into_error(reg)),
            BusyPolicy::Discard => {
                let answer = format!(
                    "JobClass:{} is busy ({}, JobId:{}); this run was discarded",
                    reg.class(),
                    busy.describe(),
                    busy.job_id
                );
                self.discard(reg, d, outlet, busy);
                Ok(answer)
            }
            BusyPolicy::Replace => {
                let answer = format!(
                    "JobClass:{} run accepted: replacing the running instance (JobId:{})",
                    reg.class(),
                    busy.job_id
                );
                Box::pin(self.replace(reg, d, outlet, busy)).await;
                Ok(answer)
            }
            BusyPolicy::Queue => {
                let state = self.state(reg);
                let position = state.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                if position > MAX_QUEUED {
                    state.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(DispatchError::Limit(format!(
                        "job {} is busy and {MAX_QUEUED} runs already wait behind it, the most allowed",
                        reg.class()
                    )));
                }
                let answer = format!(
                    "JobClass:{} run accepted: queued behind JobId:{} (position {position})",
                    reg.class(),
                    busy.job_id
                );
                self.enqueue(reg, d, outlet);
                Ok(answer)
            }
        }
    }

    /// Reserves the class locally, claims it cluster-wide for a singleton, and spawns the run.
    /// A busy singleton gives the dispatch back.
    async fn try_start(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Result<Start, DispatchError> {
        if !reg.kind().is_singleton() {
            return self.start_concurrent(reg, d, outlet).await;
        }
        let state = self.state(reg);
        let claim_in = self.shared(outlet).cloned();
        /// What the reservation leads to: a started run, or a claim to make first.
        enum Next {
            Started(Option<tokio::sync::oneshot::Receiver<()>>),
            Claim(Arc<Store>, Box<Dispatch>),
        }
        let next = {
            let mut slot = lock(&state.slot);
            if let Some(current) = slot.runs.oldest() {
                let busy = Busy {
                    job_id: current.cx.job_id().to_owned(),
                    status: current.status(),
                    replica: None,
                };
                return Ok(Start::Busy(busy, Box::new(d)));
            }
            if let Some(claimer) = &slot.claiming {
                let busy = Busy {
                    job_id: claimer.clone(),
                    status: Status::Running,
                    replica: None,
                };
                return Ok(Start::Busy(busy, Box::new(d)));
            }
            self.reserve_slot()?;
            let admission = Admission::new(&self.counters.in_flight, None);
            match claim_in {
                None => {
                    let run = self.admit(reg, &mut slot, d, outlet);
                    admission.entered();
                    drop(slot);
                    Next::Started(self.spawn_drive(reg, run))
                }
                Some(store) => {
                    slot.claiming = Some(d.job_id.clone());
                    // The claim's guard (below) gives the count back from here.
                    admission.entered();
                    Next::Claim(store, Box::new(d))
                }
            }
        };
        let (store, d) = match next {
            Next::Claim(store, d) => (store, *d),
            Next::Started(recorded) => {
                Self::until_recorded(recorded).await;
                return Ok(Start::Started);
            }
        };
        // A singleton with a shared store: claim it cluster-wide first, within the center's
        // HTTP timeout. Until the claim is decided the guard owns the reservation: whether the
        // claim fails, times out or the request is dropped, the class is freed and a claim
        // that may have been written is released.
        let mut guard = Claiming {
            rt: self,
            state,
            store: store.clone(),
            class: reg.class(),
            job_id: d.job_id.clone(),
            armed: true,
        };
        let deadline = stop::answer_deadline(&d);
        // Boxed: a store round trip is a large future, and the common path must not carry it.
        let claimed = stop::within(
            deadline,
            Box::pin(crate::metrics::store_op(
                "claim",
                store.claim(&self.member, reg.class(), &d.job_id),
            )),
        )
        .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                drop(guard);
                return Err(DispatchError::Undecided(format!(
                    "cannot decide whether singleton {} may start: the shared store did not settle its cluster-wide claim ({e}); the run is refused and the class left free: retry, or turn cluster mode off (JOBAGENT_CLUSTER=off)",
                    reg.class()
                )));
            }
        };
        guard.armed = false;
        let recorded = {
            let mut slot = lock(&state.slot);
            slot.claiming = None;
            match claimed {
                Claimed::Yes(fence) => {
                    let admission = Admission::new(&self.counters.in_flight, None);
                    let run = self.admit(reg, &mut slot, d, outlet);
                    admission.entered();
                    drop(slot);
                    let _ = run.cx.fence_cell().set(fence);
                    run.claimed.store(true, Ordering::Release);
                    crate::metrics::claims_held(1.0);
                    self.spawn_drive(reg, run)
                }
                Claimed::Busy(holder) => {
                    drop(slot);
                    self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let busy = Busy {
                        job_id: holder.job_id,
                        status: Status::Running,
                        replica: Some(holder.instance),
                    };
                    return Ok(Start::Busy(busy, Box::new(d)));
                }
            }
        };
        Self::until_recorded(recorded).await;
        Ok(Start::Started)
    }

    /// Starts a run of a class that may run many at once. The limits are counted on atomics
    /// and the run is built before the class's lock is taken, which is then held only to
    /// enter the run: every run of the class, on every worker thread, takes that lock.
    async fn start_concurrent(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Result<Start, DispatchError> {
        let state = self.state(reg);
        let admitted = state.admitted.fetch_add(1, Ordering::AcqRel);
        if admitted >= self.options.limits.max_running_per_class {
            state.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(DispatchError::Limit(format!(
                "job {} already runs {admitted} instances, the most allowed per class (JOBAGENT_MAX_RUNNING_PER_CLASS)",
                reg.class(),
            )));
        }
        if let Err(e) = self.reserve_slot() {
            state.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        // Whatever unwinds or returns before the run is entered gives both counts back.
        let admission = Admission::new(&self.counters.in_flight, Some(&state.admitted));
        let started = SystemTime::now();
        let run = self.new_run(reg, d, outlet, started);
        let last = LastRun {
            cx: run.cx.clone(),
            started,
            ended: None,
        };
        let previous = {
            let mut slot = lock(&state.slot);
            slot.runs.insert(run.clone());
            // Entered: the run gives its counts back when it ends.
            admission.entered();
            // Shutdown sets the flag, then cancels each run entered before it takes this lock.
            if self.root_cancelled.load(Ordering::Acquire) {
                run.cx.cancel();
            }
            slot.last.replace(last)
        };
        drop(previous);
        Self::until_recorded(self.spawn_drive(reg, run)).await;
        Ok(Start::Started)
    }

    /// Counts a run against the agent-wide limit, or says why it may not start.
    fn reserve_slot(&self) -> Result<(), DispatchError> {
        let limit = self.options.limits.max_running;
        if self.counters.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(DispatchError::Limit(format!(
                "the agent already runs {limit} jobs, the most allowed (JOBAGENT_MAX_RUNNING)"
            )));
        }
        Ok(())
    }

    /// Spawns the run's task and, with a store, the write of its in-flight record; the
    /// receiver says when the record has landed.
    fn spawn_drive(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        run: Arc<Run>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let recorded = run.store.clone().map(|store| {
            let (done, recorded) = tokio::sync::oneshot::channel();
            let member = self.member.clone();
            let job_id = run.cx.job_id().to_owned();
            let record = RunRecord {
                class: reg.class().to_owned(),
                server_id: member.server_id.clone(),
                started: crate::cluster::now_ms(),
                action: "run".to_owned(),
            };
            *lock(&run.record) = Some(self.tracker.spawn(async move {
                let write =
                    crate::metrics::store_op("record", store.record_run(&member, &job_id, &record));
                match tokio::time::timeout(RECORD_WITHIN, write).await {
                    Ok(Ok(())) => {
                        let _ = done.send(());
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(job_id, error = %e, "could not record the run in flight")
                    }
                    Err(_) => tracing::debug!(job_id, "recording the run in flight timed out"),
                }
            }));
            recorded
        });
        let span = run.span.clone();
        self.class_metrics(reg).started();
        if let Some(after) = reg.stall_after() {
            let stop = CancellationToken::new();
            let watch = stall_watch(reg, run.clone(), after, stop.clone());
            self.tracker
                .spawn(tracing::Instrument::instrument(watch, span.clone()));
            let rt = self.clone();
            let drive = async move {
                rt.drive(reg, run).await;
                stop.cancel();
            };
            self.tracker
                .spawn(tracing::Instrument::instrument(drive, span));
        } else {
            let rt = self.clone();
            let drive = async move { rt.drive(reg, run).await };
            self.tracker
                .spawn(tracing::Instrument::instrument(drive, span));
        }
        recorded
    }

    /// Waits (briefly) until a run's in-flight record has landed before the run is answered,
    /// so a crash right after the answer still leaves the record that reports the run lost.
    async fn until_recorded(recorded: Option<tokio::sync::oneshot::Receiver<()>>) {
        if let Some(recorded) = recorded {
            let _ = tokio::time::timeout(RECORD_BEFORE_ANSWER, recorded).await;
        }
    }

    /// Builds a run from the dispatch and enters it into its class.
    fn admit(
        &self,
        reg: &'static JobRegistration,
        slot: &mut ClassSlot,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Arc<Run> {
        let started = SystemTime::now();
        let run = self.new_run(reg, d, outlet, started);
        let previous = slot.last.replace(LastRun {
            cx: run.cx.clone(),
            started,
            ended: None,
        });
        // The previous run's context may end here: not worth a second lock to drop it later.
        drop(previous);
        slot.runs.insert(run.clone());
        run
    }

    fn new_run(
        &self,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
        started: SystemTime,
    ) -> Arc<Run> {
        let state = self.state(reg);
        let instance = if reg.kind().is_singleton() {
            let mut singleton = lock(&state.singleton);
            match &*singleton {
                Some(instance) => instance.clone(),
                None => match construct(reg, &self.options.states) {
                    Ok(instance) => singleton.insert(instance).clone(),
                    // Not kept: the next run tries the constructor again.
                    Err(failed) => failed,
                },
            }
        } else {
            construct(reg, &self.options.states).unwrap_or_else(|failed| failed)
        };
        let span = self.span_of(reg, &d);
        let console = self.console(reg, &d, outlet, &span);
        let cx = JobContext::new(ContextInner {
            class: reg.class(),
            job_id: d.job_id,
            server_id: d.server_id,
            job_url: d.job_url,
            param: d.body,
            item: d.item,
            headers: d.headers,
            // Not a child of the root token: a child takes the root's lock when made and when
            // dropped, which every run on every worker thread would contend for. Shutdown sets
            // the flag read here, then cancels each run in its class slot.
            token: Cancel::new(self.root_cancelled.load(Ordering::Acquire)),
            console,
            started_at: started,
            fence: OnceLock::new(),
            states: self.options.states.clone(),
            store: outlet.store.clone(),
        });
        Arc::new(Run {
            seq: self.counters.seq.fetch_add(1, Ordering::Relaxed),
            cx,
            instance,
            status: Mutex::new(Status::Running),
            started,
            results: outlet.results(self.options.result_retry),
            reported: AtomicBool::new(false),
            result_written: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            // In-flight records: what a restarted process or a survivor reports lost.
            store: outlet.store.clone(),
            claimed: AtomicBool::new(false),
            record: Mutex::new(None),
            stalled: AtomicBool::new(false),
            span,
            _param_charge: d.param_charge,
        })
    }

    /// The `job_run` span of dispatch `d` (see [`crate::trace`]).
    fn span_of(&self, reg: &'static JobRegistration, d: &Dispatch) -> tracing::Span {
        crate::trace::run_span(
            reg.class(),
            &d.job_id,
            d.server_id.as_deref(),
            &self.member.instance,
            &d.headers,
        )
    }

    /// The console of a run whose span is `span` (lines mirrored to the log are emitted in
    /// it, wherever the job writes them from).
    fn console(
        &self,
        reg: &'static JobRegistration,
        d: &Dispatch,
        outlet: &Outlet,
        span: &tracing::Span,
    ) -> Console {
        let sink = outlet.console(
            &self.tracker,
            &d.job_id,
            d.console.as_ref(),
            self.options.console_budget,
            &self.options.console_prefix,
        );
        let mirror = self.options.console_log.then(|| LogMirror {
            class: reg.class(),
            job_id: d.job_id.clone(),
            span: span.clone(),
        });
        Console::mirrored(
            self.console_prefix.clone(),
            d.console.as_ref().map(|c| c.progress_bar_id).unwrap_or(0),
            sink,
            mirror,
        )
    }

    /// The task of one run: start, wait, classify, report.
    async fn drive(self: Arc<Self>, reg: &'static JobRegistration, run: Arc<Run>) {
        let cx = run.cx.clone();
        cx.console().lifecycle(|| {
            format!(
                "job {} started, job id {}, kind {}",
                reg.class(),
                cx.job_id(),
                reg.kind()
            )
        });
        // Only a claimed singleton renews its claim.
        let mut renewal = None;
        if run.claimed.load(Ordering::Acquire)
            && let Some(store) = run.store.clone()
        {
            let stop = renewal.insert(CancellationToken::new()).clone();
            let keep = keep_claim(store, self.member.clone(), reg.class(), cx.clone(), stop);
            self.tracker.spawn(keep);
        }
        let timeout = cx
            .agent_timeout()
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        // AgentTimeout bounds the whole run, a hang job's wait for its stop included.
        let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit);
        let job = AssertUnwindSafe(run.instance.clone().start(cx.clone())).catch_unwind();
        let mut job = std::pin::pin!(job);
        let mut timed_out = false;
        let mut outcome = tokio::select! {
            res = job.as_mut() => Some(res),
            _ = sleep_until(deadline) => None,
        };
        if outcome.is_none() {
            timed_out = true;
            cx.cancel();
            outcome = tokio::time::timeout(self.options.timeout_grace, job.as_mut())
                .await
                .ok();
        }
        // A hang job stays Running after on_start returns Ok, until it is cancelled.
        if reg.kind() == JobKind::Hang && matches!(outcome, Some(Ok(Ok(())))) && !timed_out {
            tokio::select! {
                _ = cx.cancelled() => {}
                _ = sleep_until(deadline) => {
                    timed_out = true;
                    cx.cancel();
                }
            }
        }
        let stopped = run.status() == Status::Stopping;
        // A run stopped on request is reported stopped even when its AgentTimeout passed
        // while it wound down (.NET reports it as a timeout).
        let error = if stopped {
            None
        } else if run.stalled.load(Ordering::Acquire) {
            let after = reg.stall_after().unwrap_or_default();
            Some(JobError::new(
                JobErrorKind::Stalled,
                format!(
                    "stalled: no console line or progress change for {}; cancelled (on_stall = \"cancel\")",
                    fmt_duration(after)
                ),
            ))
        } else if timed_out {
            let limit = timeout.unwrap_or_default();
            let mut e = format!(
                "timeout: the job ran longer than its AgentTimeout of {} ms",
                limit.as_millis()
            );
            if outcome.is_none() {
                let _ = write!(
                    e,
                    " and did not stop within {} ms of cancellation",
                    self.options.timeout_grace.as_millis()
                );
            }
            Some(JobError::new(JobErrorKind::Timeout, e))
        } else {
            match outcome {
                Some(Ok(Ok(()))) if self.root_cancelled.load(Ordering::Acquire) => {
                    Some(JobError::new(
                        JobErrorKind::Shutdown,
                        "the agent shut down before the job finished".to_owned(),
                    ))
                }
                Some(Ok(Ok(()))) => None,
                Some(Ok(Err(e)))
                    if self.root_cancelled.load(Ordering::Acquire)
                        && e.kind() == JobErrorKind::Cancelled =>
                {
                    Some(JobError::new(
                        JobErrorKind::Shutdown,
                        "the agent shut down before the job finished".to_owned(),
                    ))
                }
                Some(Ok(Err(e))) => Some(e),
                Some(Err(panic)) => Some(JobError::new(
                    JobErrorKind::Panic,
                    format!("the job panicked: {}", panic_message(&*panic)),
                )),
                None => None,
            }
        };
        if let Some(err) = &error {
            // The panic hook's own message names no job: this line does.
            match err.kind() {
                JobErrorKind::Panic => {
                    tracing::error!(class = reg.class(), job_id = cx.job_id(), "{err}")
                }
                JobErrorKind::Failed | JobErrorKind::Timeout | JobErrorKind::Stalled => {
                    tracing::warn!(
                        class = reg.class(),
                        job_id = cx.job_id(),
                        "job failed: {err}"
                    )
                }
                _ => {}
            }
            let hook = AssertUnwindSafe(|| run.instance.exception(&cx, err));
            if std::panic::catch_unwind(hook).is_err() {
                tracing::warn!(
                    class = reg.class(),
                    job_id = cx.job_id(),
                    "on_exception panicked"
                );
            }
            cx.console().error(format!("job failed: {err}"));
        }
        cx.console().lifecycle(|| {
            let elapsed = SystemTime::now()
                .duration_since(run.started)
                .unwrap_or_default();
            match (&error, stopped) {
                (None, true) => format!("job stopped on request after {}", fmt_duration(elapsed)),
                (None, false) => format!("job finished after {}", fmt_duration(elapsed)),
                (Some(_), _) => {
                    format!("job ended with an error after {}", fmt_duration(elapsed))
                }
            }
        });
        if let Some(renewal) = renewal {
            renewal.cancel();
        }
        let outcome = match error.as_ref().map(JobError::kind) {
            None if stopped => Outcome::Stopped,
            None => Outcome::Ok,
            Some(JobErrorKind::Timeout) => Outcome::Timeout,
            Some(_) => Outcome::Err,
        };
        self.finish(reg, &run, outcome);
        let error = error.map(|e| e.message().to_owned());
        if run.store.is_none() {
            // No store: no claim to release, no in-flight record to forget (`conclude` would
            // only report). The report's futures are small, so they need no box.
            run.report(error).await;
        } else {
            // Boxed: the store's futures would otherwise enlarge every sleeping run's task.
            Box::pin(self.conclude(reg, &run, error)).await;
        }
    }

    /// Releases the run's claim, writes its result after its console, forgets its record.
    async fn conclude(&self, reg: &'static JobRegistration, run: &Arc<Run>, error: Option<String>) {
        // Released once, whether the run ends or is given up first.
        if run.claimed.swap(false, Ordering::AcqRel) {
            crate::metrics::claims_held(-1.0);
            if let Some(store) = &run.store
                && let Err(e) = crate::metrics::store_op(
                    "release",
                    store.release_claim(&self.member, reg.class(), run.cx.job_id()),
                )
                .await
            {
                tracing::debug!(class = reg.class(), error = %e, "could not release the claim; it lapses by itself");
            }
        }
        if run.report(error).await {
            self.forget(run).await;
        }
    }

    /// Waits up to `grace` for a run to end: woken by the class's `ended` signal, which
    /// [`finish`](Self::finish) sends after marking the run stopped.
    async fn ends_within(&self, reg: &'static JobRegistration, run: &Run, grace: Duration) -> bool {
        let ended = &self.state(reg).ended;
        let wait = async {
            let watch = ended.watch();
            loop {
                // Registered before the check, so a finish between the two is not missed.
                let signal = watch.notified();
                tokio::pin!(signal);
                signal.as_mut().enable();
                if run.status() == Status::Stopped {
                    return;
                }
                signal.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }

    /// Gives up on a run that does not end: frees its class, releases its claim and reports
    /// it failed. Its task goes on unobserved; whatever it returns later is not reported.
    async fn abandon(&self, reg: &'static JobRegistration, run: &Arc<Run>, why: String) {
        tracing::warn!(class = reg.class(), job_id = run.cx.job_id(), "{why}");
        run.cx
            .console()
            .error(format!("job reported as stuck: {why}"));
        self.finish(reg, run, Outcome::Err);
        self.conclude(reg, run, Some(why)).await;
    }

    /// Removes a run's in-flight record once its result is written.
    async fn forget(&self, run: &Run) {
        let Some(store) = &run.store else { return };
        let pending = lock(&run.record).take();
        if let Some(handle) = pending {
            let _ = handle.await;
        }
        if let Err(e) =
            crate::metrics::store_op("forget", store.forget_run(&self.member, run.cx.job_id()))
                .await
        {
            tracing::debug!(job_id = run.cx.job_id(), error = %e, "could not remove the in-flight record");
        }
    }

    /// Takes an ended run out of its class (counting it once, as `outcome`).
    /// Counted before the run leaves the class, so whoever sees it gone sees it counted; the
    /// class's lock is held only to take it out.
    fn finish(&self, reg: &'static JobRegistration, run: &Arc<Run>, outcome: Outcome) {
        run.set_status(Status::Stopped);
        let now = SystemTime::now();
        let first = !run.finished.swap(true, Ordering::AcqRel);
        if first {
            let took = now.duration_since(run.started).unwrap_or_default();
            self.class_metrics(reg).ended(outcome, took);
        }
        let state = self.state(reg);
        let removed = {
            let mut slot = lock(&state.slot);
            if let Some(last) = slot.last.as_mut()
                && last.cx.job_id() == run.cx.job_id()
            {
                last.ended = Some(now);
            }
            if first {
                slot.runs.remove(run.seq)
            } else {
                None
            }
        };
        if removed.is_some() {
            self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
            if !reg.kind().is_singleton() {
                state.admitted.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(removed);
        state.ended.notify_waiters();
        self.idle.notify_waiters();
    }

    /// Drains: refuses new runs from now on, releases runs queued behind a busy singleton
    /// (each is reported failed, saying why), and waits up to `within` for running jobs to
    /// finish on their own (hang jobs excepted: they run until stopped, and shutdown stops
    /// them). True when none is left to wait for.
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        if !self.draining.swap(true, Ordering::AcqRel) {
            let running = self.running();
            tracing::info!(
                drain_timeout_ms = within.as_millis() as u64,
                running,
                "job agent draining: new runs are refused (500), queued runs are released with an error, and {running} running job(s) may finish within the drain bound"
            );
        }
        // Queued runs notice within their 100 ms poll; wake them at once.
        for state in self.classes.values() {
            state.ended.notify_waiters();
        }
        let wait = async {
            let watch = self.idle.watch();
            loop {
                let signal = watch.notified();
                tokio::pin!(signal);
                signal.as_mut().enable();
                if self.finishing() == 0 {
                    return;
                }
                signal.await;
            }
        };
        let drained = tokio::time::timeout(within, wait).await.is_ok();
        if drained {
            tracing::info!("job agent drained: no job is left to finish");
        } else {
            tracing::warn!(
                running = self.running(),
                "job agent: the drain bound passed with jobs still running; shutdown cancels them"
            );
        }
        drained
    }

    /// Stops taking runs, cancels every running job, waits up to the shutdown bound, and
    /// reports whatever is still running as ended by shutdown.
    pub(crate) async fn shutdown(&self) {
        if self.accepting.swap(false, Ordering::AcqRel) {
            // Say what shutdown waits for: with an unreachable store, the writes are what
            // keeps it waiting up to its bound.
            let running = self.running();
            let tasks = self.tracker.len();
            tracing::info!(
                timeout_ms = self.options.shutdown_timeout.as_millis() as u64,
                running,
                pending_tasks = tasks,
                "job agent shutting down: cancelling {running} running job(s), then waiting up to the shutdown bound for them and for {tasks} task(s) writing console lines and results to the store"
            );
        }
        self.root_cancelled.store(true, Ordering::Release);
        self.root.cancel();
        for state in self.classes.values() {
            for run in lock(&state.slot).runs.values() {
                run.cx.cancel();
            }
        }
        self.tracker.close();
        if tokio::time::timeout(self.options.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let stuck: Vec<Arc<Run>> = self
                .classes
                .values()
                .flat_map(|s| lock(&s.slot).runs.values().cloned().collect::<Vec<_>>())
                .collect();
            let why = format!(
                "the agent shut down and the job did not stop within {} ms",
                self.options.shutdown_timeout.as_millis()
            );
            // All at once, within one bound: a slow or unreachable store must not stretch
            // shutdown by a give-up per run.
            let reports = stuck.iter().map(|run| {
                tracing::warn!(
                    class = run.cx.class(),
                    job_id = run.cx.job_id(),
                    "job did not stop within the shutdown bound"
                );
                run.report(Some(why.clone()))
            });
            let reported = tokio::time::timeout(
                SHUTDOWN_REPORT_WITHIN,
                futures_util::future::join_all(reports),
            )
            .await
            .is_ok();
            // Result and console writes of runs that did end are tracked tasks too.
            let pending = self.tracker.len();
            if !reported || pending > 0 {
                tracing::error!(
                    stuck_runs = stuck.len(),
                    unfinished_writes = pending,
                    instance = %self.member.instance,
                    "shutdown bound reached before the store took every console line and result; runs without a result keep their in-flight record, and the next process of this instance reports them"
                );
            }
        }
    }

    /// Runs in flight that end by themselves: all but hang jobs, which run until stopped (a
    /// drain does not wait for them).
    fn finishing(&self) -> usize {
        self.registry
            .iter()
            .filter(|reg| reg.kind() != JobKind::Hang)
            .map(|reg| lock(&self.state(reg).slot).runs.len())
            .sum()
    }

    /// Number of runs in flight, across classes.
    pub(crate) fn running(&self) -> usize {
        self.classes
            .values()
            .map(|s| lock(&s.slot).runs.len())
            .sum()
    }

    /// The context of the class's latest run, for [`testing`](crate::testing).
    pub(crate) fn latest_context(&self, reg: &'static JobRegistration) -> Option<JobContext> {
        let slot = lock(&self.state(reg).slot);
        slot.last.as_ref().map(|last| last.cx.clone())
    }
}

/// The counts a run takes when it is admitted (the agent's runs in flight and, for a class
/// that may run many at once, the class's): given back when dropped, unless the run was
/// entered into its class, whose end gives them back. So a constructor, a console or anything
/// else that fails or unwinds between the two cannot leak them.
#[must_use]
struct Admission<'a> {
    in_flight: &'a AtomicUsize,
    class: Option<&'a AtomicUsize>,
    armed: bool,
}

impl<'a> Admission<'a> {
    fn new(in_flight: &'a AtomicUsize, class: Option<&'a AtomicUsize>) -> Self {
        Self {
            in_flight,
            class,
            armed: true,
        }
    }

    /// The run holds the counts now.
    fn entered(mut self) {
        self.armed = false;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if let Some(class) = self.class {
                class.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A singleton's reservation while its cluster-wide claim is being decided. Dropped armed
/// (the claim failed, timed out, or the request was dropped), it frees the class and
/// releases in the background a claim the store may have written.
struct Claiming<'a> {
    rt: &'a Runtime,
    state: &'a ClassState,
    store: Arc<Store>,
    class: &'static str,
    job_id: String,
    armed: bool,
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut slot = lock(&self.state.slot);
            if slot.claiming.as_deref() == Some(self.job_id.as_str()) {
                slot.claiming = None;
            }
        }
        self.rt.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.state.ended.notify_waiters();
        let (store, member) = (self.store.clone(), self.rt.member.clone());
        let (class, job_id) = (self.class, std::mem::take(&mut self.job_id));
        if tokio::runtime::Handle::try_current().is_ok() {
            self.rt.tracker.spawn(async move {
                let release = store.release_claim(&member, class, &job_id);
                match tokio::time::timeout(RELEASE_WITHIN, release).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(class, error = %e, "could not release an undecided claim; it lapses by itself"),
                    Err(_) => tracing::debug!(class, "releasing an undecided claim timed out; it lapses by itself"),
                }
            });
        }
    }
}

/// How long shutdown gives the results of runs that did not stop, after the shutdown bound.
const SHUTDOWN_REPORT_WITHIN: Duration = Duration::from_secs(2);

/// How long a run waits, at most, for the store's first answer about this process's
/// instance name.
const NAME_WITHIN: Duration = Duration::from_secs(2);

/// How long a run's answer waits for its in-flight record.
const RECORD_BEFORE_ANSWER: Duration = Duration::from_secs(1);
/// How long writing the in-flight record may take before it is given up.
const RECORD_WITHIN: Duration = Duration::from_secs(30);

/// How long releasing an undecided claim may take before it is left to lapse.
const RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// Renews a running singleton's cluster-wide claim every [`RENEW_EVERY`] until `stop`, and
/// cancels the run when the claim is lost: taken by another replica, or not renewed for
/// `CLAIM_LEASE - CLAIM_SAFETY` (the store is unreachable or silent). Time is measured on
/// this process's monotonic clock from the moment each successful renewal was *sent*: the
/// database set the claim's `Until` to its own now, later than that, plus `CLAIM_LEASE`, so
/// the run is cancelled (and its fencing token stops being current) before the claim can
/// lapse and another replica take it.
async fn keep_claim(
    store: Arc<Store>,
    member: Member,
    class: &'static str,
    cx: JobContext,
    stop: CancellationToken,
) {
    let job_id = cx.job_id().to_owned();
    // The claim was written just before the run started, and is renewed at once.
    let mut renewed = tokio::time::Instant::now();
    let mut next = renewed;
    loop {
        let cancel_at = renewed + (CLAIM_LEASE - CLAIM_SAFETY);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(cancel_at) => {
                let silent = renewed.elapsed();
                tracing::warn!(
                    class,
                    job_id,
                    silent_ms = silent.as_millis() as u64,
                    claim_lease_ms = CLAIM_LEASE.as_millis() as u64,
                    "the singleton claim could not be renewed; cancelling the run before the claim can lapse and another replica take it"
                );
                cx.console().warning(format!(
                    "this run could not renew its cluster-wide claim for {} ms (store unreachable) and was cancelled before another replica could take it",
                    silent.as_millis()
                ));
                crate::metrics::claim_lost(class);
                cx.cancel();
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = tokio::time::Instant::now();
        next = sent + RENEW_EVERY;
        let attempt = crate::metrics::store_op("renew", store.renew_claim(&member, class, &job_id));
        let bound = (sent + RENEW_WITHIN).min(cancel_at);
        tokio::select! {
            _ = stop.cancelled() => return,
            res = tokio::time::timeout_at(bound, attempt) => match res {
                Ok(Ok(true)) => renewed = sent,
                Ok(Ok(false)) => {
                    tracing::warn!(class, job_id, "the singleton claim was lost; cancelling the run");
                    cx.console()
                        .warning("this run lost its cluster-wide claim and was cancelled");
                    crate::metrics::claim_lost(class);
                    cx.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::debug!(class, error = %e, "claim renewal failed; retrying"),
                Err(_) => tracing::debug!(class, "claim renewal got no answer in time; retrying"),
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
/// The stall watchdog of one run: when the job has written no console line and moved no
/// progress bar for `after`, writes a warning line (once per silence), counts it and, when
/// the job asks for it (`on_stall = "cancel"`), cancels the run. Ends with `stop`.
async fn stall_watch(
    reg: &'static JobRegistration,
    run: Arc<Run>,
    after: Duration,
    stop: CancellationToken,
) {
    let console = run.cx.console().clone();
    console.watch();
    let mut warned = false;
    loop {
        let silent = console.silent_for();
        let wait = if silent >= after {
            if !warned {
                warned = true;
                let cancel = reg.cancels_on_stall();
                let action = if cancel { "cancelled" } else { "warned" };
                crate::metrics::stalled(reg.class(), action);
                tracing::warn!(
                    class = reg.class(),
                    job_id = run.cx.job_id(),
                    silent_ms = silent.as_millis() as u64,
                    "job stalled: no console line or progress change for {}",
                    fmt_duration(silent)
                );
                console.runtime_warning(format!(
                    "no console line or progress change for {}{}",
                    fmt_duration(silent),
                    if cancel {
                        "; cancelling the job (on_stall = \"cancel\")"
                    } else {
                        ""
                    }
                ));
                if cancel {
                    run.stalled.store(true, Ordering::Release);
                    run.cx.cancel();
                    return;
                }
            }
            // Silent still: look again a stall period later.
            after
        } else {
            // The job spoke: a later silence is a new stall.
            warned = false;
            after - silent
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Builds an instance of `reg`'s job. A constructor (or `Default`) that panics does not
/// unwind through the dispatch (which holds the class's counts and, for a singleton, its
/// lock): the run gets, as `Err`, an instance whose every run fails saying so.
fn construct(
    reg: &JobRegistration,
    states: &crate::state::States,
) -> Result<Arc<dyn DynJob>, Arc<dyn DynJob>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| reg.instantiate(states))) {
        Ok(instance) => Ok(instance),
        Err(payload) => {
            let why = format!(
                "the constructor of job {} panicked: {}",
                reg.class(),
                panic_message(&*payload)
            );
            tracing::error!(class = reg.class(), error = %why, "a job could not be built; this run fails");
            Err(Arc::new(Unconstructed(why)))
        }
    }
}

/// A job whose constructor panicked: its run fails with why.
struct Unconstructed(String);

impl crate::job::JobAgent for Unconstructed {
    async fn on_start(&self, _: JobContext) -> Result<(), JobError> {
        Err(JobError::msg(&self.0))
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}
