//! The runtime: job instances, their status machine, tasks, stop, detail and shutdown.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::{CLAIM_LEASE, Claimed, ClusterRun, Command, Member, RENEW_EVERY, RunRecord};
use crate::console::Console;
use crate::context::{ContextInner, JobContext};
use crate::error::{DispatchError, JobError, JobErrorKind};
use crate::job::{DynJob, JobKind};
use crate::options::AgentOptions;
use crate::outcome::{DispatchResult, Outlet, ResultSink};
use crate::registry::{BusyPolicy, JobRegistration, Registry};
use crate::request::{Action, Dispatch};
use crate::store::Store;
use crate::timefmt::{fmt_duration, fmt_utc};

/// The status of a job instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
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
    results: Arc<dyn ResultSink>,
    reported: AtomicBool,
    /// The store shared with other replicas, when there is one.
    store: Option<Arc<Store>>,
    /// Whether this run holds the class's cluster-wide claim.
    claimed: AtomicBool,
    /// Writing the in-flight record (awaited before the record is removed).
    record: Mutex<Option<JoinHandle<()>>>,
}

impl Run {
    fn status(&self) -> Status {
        *lock(&self.status)
    }

    fn set_status(&self, status: Status) {
        *lock(&self.status) = status;
    }

    /// Flushes the console and writes the run's result, once.
    async fn report(&self, error: Option<String>) {
        if self.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        self.cx.console().close().await;
        let dropped = self.cx.console().dropped();
        let error = match (error, dropped) {
            (Some(e), 0) => Some(e),
            (Some(e), n) => Some(format!("{e} ({n} console lines were dropped)")),
            (None, _) => None,
        };
        let id = self.cx.job_id();
        let result = DispatchResult::new(id, Action::Run, id, error, self.started);
        self.results.write(result).await;
    }
}

#[derive(Default)]
struct ClassSlot {
    runs: Vec<Arc<Run>>,
    last: Option<LastRun>,
}

#[derive(Clone)]
struct LastRun {
    job_id: String,
    param: String,
    started: SystemTime,
    ended: Option<SystemTime>,
}

struct ClassState {
    /// The singleton's instance, kept across runs like the .NET agent's.
    singleton: Mutex<Option<Arc<dyn DynJob>>>,
    slot: Mutex<ClassSlot>,
    /// Signalled whenever a run of the class ends.
    ended: Notify,
    /// Queued runs (busy policy `queue`) start in arrival order.
    queue: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
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

/// Most runs waiting behind a busy singleton (busy policy `queue`).
const MAX_QUEUED: usize = 16;

/// The runtime shared by the router and the shutdown future.
pub(crate) struct Runtime {
    pub(crate) registry: Registry,
    classes: HashMap<&'static str, ClassState>,
    pub(crate) options: AgentOptions,
    root: CancellationToken,
    tracker: TaskTracker,
    accepting: AtomicBool,
    seq: AtomicU64,
    in_flight: AtomicUsize,
    pub(crate) member: Member,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Runtime {
    pub(crate) fn new(registry: Registry, options: AgentOptions, member: Member) -> Self {
        let classes = registry
            .iter()
            .map(|reg| {
                (
                    reg.class(),
                    ClassState {
                        singleton: Mutex::new(None),
                        slot: Mutex::new(ClassSlot::default()),
                        ended: Notify::new(),
                        queue: tokio::sync::Mutex::new(()),
                        waiting: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        Self {
            registry,
            classes,
            options,
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            member,
        }
    }

    pub(crate) fn class(&self, name: &str) -> Result<&'static JobRegistration, DispatchError> {
        self.registry
            .find(name)
            .ok_or_else(|| DispatchError::UnknownClass {
                class: name.chars().take(200).collect(),
                known: self.registry.class_list(),
            })
    }

    fn state(&self, reg: &'static JobRegistration) -> &ClassState {
        match self.classes.get(reg.class()) {
            Some(state) => state,
            // Every registration of the registry has a state; this cannot happen.
            None => unreachable!("class state missing for {}", reg.class()),
        }
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
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
        let busy = match self.try_start(reg, &d, &outlet).await? {
            Ok(()) => return Ok(format!("JobClass:{} run success!", reg.class())),
            Err(busy) => busy,
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
                self.replace(reg, d, outlet, busy).await;
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
    async fn try_start(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: &Dispatch,
        outlet: &Outlet,
    ) -> Result<Result<(), Busy>, DispatchError> {
        let state = self.state(reg);
        let (run, previous) = {
            let mut slot = lock(&state.slot);
            if reg.kind().is_singleton()
                && let Some(current) = slot.runs.first()
            {
                return Ok(Err(Busy {
                    job_id: current.cx.job_id().to_owned(),
                    status: current.status(),
                    replica: None,
                }));
            }
            let limits = &self.options.limits;
            if !reg.kind().is_singleton() && slot.runs.len() >= limits.max_running_per_class {
                return Err(DispatchError::Limit(format!(
                    "job {} already runs {} instances, the most allowed per class (JOBAGENT_MAX_RUNNING_PER_CLASS)",
                    reg.class(),
                    slot.runs.len()
                )));
            }
            if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limits.max_running {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(DispatchError::Limit(format!(
                    "the agent already runs {} jobs, the most allowed (JOBAGENT_MAX_RUNNING)",
                    limits.max_running
                )));
            }
            let run = self.new_run(reg, d, outlet);
            slot.runs.push(run.clone());
            let previous = slot.last.replace(LastRun {
                job_id: d.job_id.clone(),
                param: d.body.clone(),
                started: run.started,
                ended: None,
            });
            (run, previous)
        };
        if reg.kind().is_singleton()
            && let Some(store) = self.shared(outlet)
        {
            match store.claim(&self.member, reg.class(), &d.job_id).await {
                Ok(Claimed::Yes(fence)) => {
                    let _ = run.cx.fence_cell().set(fence);
                    run.claimed.store(true, Ordering::Release);
                }
                Ok(Claimed::Busy(holder)) => {
                    self.unreserve(reg, &run, previous);
                    return Ok(Err(Busy {
                        job_id: holder.job_id,
                        status: Status::Running,
                        replica: Some(holder.instance),
                    }));
                }
                Err(e) => {
                    self.unreserve(reg, &run, previous);
                    return Err(DispatchError::Storage(format!(
                        "cannot claim the singleton in the shared store ({e}); retry, or turn cluster mode off (JOBAGENT_CLUSTER=off)"
                    )));
                }
            }
        }
        let rt = self.clone();
        self.tracker.spawn(async move { rt.drive(reg, run).await });
        Ok(Ok(()))
    }

    fn new_run(&self, reg: &'static JobRegistration, d: &Dispatch, outlet: &Outlet) -> Arc<Run> {
        let state = self.state(reg);
        let instance = if reg.kind().is_singleton() {
            lock(&state.singleton)
                .get_or_insert_with(|| reg.instantiate())
                .clone()
        } else {
            reg.instantiate()
        };
        let console = self.console(d, outlet);
        let started = SystemTime::now();
        let cx = JobContext::new(ContextInner {
            class: reg.class(),
            job_id: d.job_id.clone(),
            server_id: d.server_id.clone(),
            job_url: d.job_url.clone(),
            param: d.body.clone(),
            item: d.item.clone(),
            headers: d.headers.clone(),
            token: self.root.child_token(),
            console,
            started_at: started,
            fence: OnceLock::new(),
        });
        Arc::new(Run {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            cx,
            instance,
            status: Mutex::new(Status::Running),
            started,
            results: outlet.results(),
            reported: AtomicBool::new(false),
            store: outlet.store.clone(),
            claimed: AtomicBool::new(false),
            record: Mutex::new(None),
        })
    }

    fn console(&self, d: &Dispatch, outlet: &Outlet) -> Console {
        let sink = outlet.console(
            &d.job_id,
            d.console.as_ref(),
            self.options.console_budget,
            &self.options.console_prefix,
        );
        Console::new(
            self.options.console_prefix.clone(),
            d.console.as_ref().map(|c| c.progress_bar_id).unwrap_or(0),
            sink,
        )
    }

    /// Undoes a reservation whose cluster claim failed.
    fn unreserve(&self, reg: &'static JobRegistration, run: &Arc<Run>, previous: Option<LastRun>) {
        {
            let mut slot = lock(&self.state(reg).slot);
            slot.runs.retain(|r| r.seq != run.seq);
            slot.last = previous;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        run.reported.store(true, Ordering::Release);
        let console = run.cx.console().clone();
        tokio::spawn(async move { console.close().await });
    }

    /// The task of one run: start, wait, classify, report.
    async fn drive(self: Arc<Self>, reg: &'static JobRegistration, run: Arc<Run>) {
        let cx = run.cx.clone();
        cx.console().lifecycle(format!(
            "job {} started, job id {}, kind {}",
            reg.class(),
            cx.job_id(),
            reg.kind()
        ));
        if let Some(store) = &run.store {
            let (store, member) = (store.clone(), self.member.clone());
            let job_id = cx.job_id().to_owned();
            let record = RunRecord {
                class: reg.class().to_owned(),
                server_id: member.server_id.clone(),
                started: crate::cluster::now_ms(),
                action: "run".to_owned(),
            };
            *lock(&run.record) = Some(tokio::spawn(async move {
                if let Err(e) = store.record_run(&member, &job_id, &record).await {
                    tracing::debug!(job_id, error = %e, "could not record the run in flight");
                }
            }));
        }
        let renewal = CancellationToken::new();
        if run.claimed.load(Ordering::Acquire)
            && let Some(store) = run.store.clone()
        {
            let (member, class, job_id) =
                (self.member.clone(), reg.class(), cx.job_id().to_owned());
            let (stop, cx2) = (renewal.clone(), cx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RENEW_EVERY) => {}
                    }
                    match store.renew_claim(&member, class, &job_id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                class,
                                job_id,
                                "the singleton claim was lost; cancelling the run"
                            );
                            cx2.console()
                                .warning("this run lost its cluster-wide claim and was cancelled");
                            cx2.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(class, error = %e, "claim renewal failed; retrying")
                        }
                    }
                }
            });
        }
        let timeout = cx
            .item()
            .agent_timeout
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        let job = AssertUnwindSafe(run.instance.clone().start(cx.clone())).catch_unwind();
        let mut job = std::pin::pin!(job);
        let mut timed_out = false;
        let mut outcome = match timeout {
            None => Some(job.as_mut().await),
            Some(limit) => tokio::select! {
                res = job.as_mut() => Some(res),
                _ = tokio::time::sleep(limit) => None,
            },
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
            cx.cancelled().await;
        }
        let stopped = run.status() == Status::Stopping;
        let error = if timed_out {
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
        } else if stopped {
            None
        } else {
            match outcome {
                Some(Ok(Ok(()))) if self.root.is_cancelled() => Some(JobError::new(
                    JobErrorKind::Shutdown,
                    "the agent shut down before the job finished".to_owned(),
                )),
                Some(Ok(Ok(()))) => None,
                Some(Ok(Err(e)))
                    if self.root.is_cancelled() && e.kind() == JobErrorKind::Cancelled =>
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
        let elapsed = SystemTime::now()
            .duration_since(run.started)
            .unwrap_or_default();
        cx.console().lifecycle(match (&error, stopped) {
            (None, true) => format!("job stopped on request after {}", fmt_duration(elapsed)),
            (None, false) => format!("job finished after {}", fmt_duration(elapsed)),
            (Some(_), _) => format!("job ended with an error after {}", fmt_duration(elapsed)),
        });
        renewal.cancel();
        self.finish(reg, &run);
        if run.claimed.load(Ordering::Acquire)
            && let Some(store) = &run.store
            && let Err(e) = store
                .release_claim(&self.member, reg.class(), cx.job_id())
                .await
        {
            tracing::debug!(class = reg.class(), error = %e, "could not release the claim; it lapses by itself");
        }
        run.report(error.map(|e| e.message().to_owned())).await;
        self.forget(&run).await;
    }

    /// Waits up to `grace` for a run to end.
    async fn ends_within(&self, run: &Run, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        while run.status() != Status::Stopped {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Gives up on a run that does not end: frees its class, releases its claim and reports
    /// it failed. Its task goes on unobserved; whatever it returns later is not reported.
    async fn abandon(&self, reg: &'static JobRegistration, run: &Arc<Run>, why: String) {
        tracing::warn!(class = reg.class(), job_id = run.cx.job_id(), "{why}");
        run.cx
            .console()
            .error(format!("job reported as stuck: {why}"));
        self.finish(reg, run);
        if run.claimed.load(Ordering::Acquire)
            && let Some(store) = &run.store
        {
            let _ = store
                .release_claim(&self.member, reg.class(), run.cx.job_id())
                .await;
        }
        run.report(Some(why)).await;
        self.forget(run).await;
    }

    /// Removes a run's in-flight record once its result is written.
    async fn forget(&self, run: &Run) {
        let Some(store) = &run.store else { return };
        let pending = lock(&run.record).take();
        if let Some(handle) = pending {
            let _ = handle.await;
        }
        if let Err(e) = store.forget_run(&self.member, run.cx.job_id()).await {
            tracing::debug!(job_id = run.cx.job_id(), error = %e, "could not remove the in-flight record");
        }
    }

    /// Takes an ended run out of its class.
    fn finish(&self, reg: &'static JobRegistration, run: &Arc<Run>) {
        run.set_status(Status::Stopped);
        let mut slot = lock(&self.state(reg).slot);
        let before = slot.runs.len();
        slot.runs.retain(|r| r.seq != run.seq);
        if slot.runs.len() < before {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(last) = slot.last.as_mut()
            && last.job_id == run.cx.job_id()
        {
            last.ended = Some(SystemTime::now());
        }
        drop(slot);
        self.state(reg).ended.notify_waiters();
    }

    /// Stops the running instance(s), here and on other replicas; answers at once, reports
    /// when their `on_stop` is done.
    pub(crate) async fn stop(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        let state = self.state(reg);
        let (local, last) = {
            let slot = lock(&state.slot);
            (slot.runs.clone(), slot.last.clone())
        };
        let mut remote: Vec<(String, String, u64)> = Vec::new();
        let mut cluster_last = None;
        if let Some(store) = self.shared(&outlet) {
            if reg.kind().is_singleton() {
                if local.is_empty() {
                    match store.claim_of(reg.class()).await {
                        Ok(Some((holder, true))) if holder.server_id != self.member.server_id => {
                            remote.push((holder.instance, holder.job_id, 0));
                        }
                        Ok(Some((holder, _))) => cluster_last = Some(holder.job_id),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(class = reg.class(), error = %e, "cannot read the cluster-wide claim; stopping locally only")
                        }
                    }
                }
            } else {
                match store.remote_runs(&self.member, reg.class()).await {
                    Ok(runs) => remote.extend(
                        runs.into_iter()
                            .map(|r| (r.instance, r.job_id, r.record.started)),
                    ),
                    Err(e) => {
                        tracing::warn!(class = reg.class(), error = %e, "cannot read other replicas' runs; stopping locally only")
                    }
                }
            }
        }
        if local.is_empty() && remote.is_empty() {
            if reg.kind().is_singleton() {
                if let Some(job_id) = last.map(|l| l.job_id).or(cluster_last) {
                    return Err(DispatchError::AlreadyStopped {
                        class: reg.class().to_owned(),
                        job_id,
                    });
                }
            } else {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
        }
        for run in &local {
            run.set_status(Status::Stopping);
        }
        let stop_id = d.job_id.clone();
        let local_newest = local
            .iter()
            .max_by_key(|r| r.started)
            .map(|r| (r.started, r.cx.job_id().to_owned()));
        let remote_newest = remote
            .iter()
            .max_by_key(|r| r.2)
            .map(|r| (r.2, r.1.clone()));
        let run_id = match (local_newest, remote_newest) {
            (Some((at, id)), Some((ms, rid))) => {
                let at_ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                if ms > at_ms { rid } else { id }
            }
            (Some((_, id)), None) | (None, Some((_, id))) => id,
            (None, None) => String::new(),
        };
        let store = self.shared(&outlet).cloned();
        if let Some(store) = &store {
            for (instance, job_id, _) in &remote {
                let command = Command {
                    action: "stop".to_owned(),
                    class: reg.class().to_owned(),
                    job_id: job_id.clone(),
                    stop_id: stop_id.clone(),
                };
                if let Err(e) = store.send_command(instance, &command).await {
                    tracing::warn!(instance, job_id, error = %e, "could not send the stop to the replica");
                }
            }
        }
        let (count, replicas) = (
            local.len() + remote.len(),
            remote
                .iter()
                .map(|r| r.0.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        );
        let grace = self.options.timeout_grace;
        let started = SystemTime::now();
        let remote_ids: Vec<String> = remote.iter().map(|r| r.1.clone()).collect();
        let rt = self.clone();
        self.tracker.spawn(async move {
            let mut failures = Vec::new();
            for run in &local {
                run.cx
                    .console()
                    .lifecycle(format!("stop requested (stop job id {stop_id})"));
                if let Some(e) = call_on_stop(run, grace).await {
                    failures.push(e);
                }
            }
            for run in &local {
                if !rt.ends_within(run, grace).await {
                    let why = format!(
                        "the job ignored cancellation for {} ms after it was asked to stop; it is reported as stuck and no longer counted as running",
                        grace.as_millis()
                    );
                    failures.push(format!("job {}: {why}", run.cx.job_id()));
                    rt.abandon(reg, run, why).await;
                }
            }
            if let (Some(store), false) = (&store, remote_ids.is_empty()) {
                failures.extend(
                    wait_for_acks(store, &stop_id, &remote_ids, grace + Duration::from_secs(2))
                        .await,
                );
            }
            let error = (!failures.is_empty()).then(|| failures.join("; "));
            let result = DispatchResult::new(&stop_id, Action::Stop, &run_id, error, started);
            outlet.results().write(result).await;
        });
        let elsewhere = if replicas > 0 {
            format!(" ({} on {replicas} other replica(s))", remote.len())
        } else {
            String::new()
        };
        Ok(if reg.kind().is_singleton() {
            if count == 0 {
                format!(
                    "JobClass:{} stop success! (it was not running)",
                    reg.class()
                )
            } else {
                format!("JobClass:{} stop success!{elsewhere}", reg.class())
            }
        } else {
            format!(
                "JobClass:{} stop success! {count} running instance(s) stopped{elsewhere}",
                reg.class()
            )
        })
    }

    /// Executes a stop sent by another replica, then acknowledges it.
    pub(crate) async fn remote_stop(&self, store: &Store, command: Command) {
        let run = self.registry.find(&command.class).and_then(|reg| {
            lock(&self.state(reg).slot)
                .runs
                .iter()
                .find(|r| r.cx.job_id() == command.job_id)
                .cloned()
        });
        let mut error = String::new();
        if let Some(run) = run {
            run.set_status(Status::Stopping);
            run.cx.console().lifecycle(format!(
                "stop requested through another replica (stop job id {})",
                command.stop_id
            ));
            if let Some(e) = call_on_stop(&run, self.options.timeout_grace).await {
                error = e;
            }
        }
        if let Err(e) = store.ack(&command.stop_id, &command.job_id, &error).await {
            tracing::warn!(stop_id = %command.stop_id, error = %e, "could not acknowledge a remote stop");
        }
    }

    /// The human-readable status of a class, across replicas when a store is shared.
    pub(crate) async fn detail(
        &self,
        reg: &'static JobRegistration,
        outlet: &Outlet,
    ) -> Result<String, DispatchError> {
        let mut remote: Vec<ClusterRun> = Vec::new();
        let mut holder = None;
        if let Some(store) = self.shared(outlet) {
            if reg.kind().is_singleton() {
                if let Ok(Some((claim, true))) = store.claim_of(reg.class()).await
                    && claim.server_id != self.member.server_id
                {
                    holder = Some(claim);
                }
            } else if let Ok(runs) = store.remote_runs(&self.member, reg.class()).await {
                remote = runs;
            }
        }
        let slot = lock(&self.state(reg).slot);
        let now = SystemTime::now();
        let mut out = String::new();
        let _ = writeln!(out, "JobClass: {}", reg.class());
        let _ = writeln!(out, "Kind: {}", reg.kind());
        let _ = writeln!(out, "Replica: {}", self.member.instance);
        if reg.kind().is_singleton() {
            let _ = writeln!(out, "BusyPolicy: {}", reg.on_busy().as_str());
            if let (None, Some(claim)) = (slot.runs.first(), &holder) {
                let _ = writeln!(out, "Status: Running");
                let _ = writeln!(out, "RunningOn: {}", claim.instance);
                let _ = writeln!(out, "JobId: {}", claim.job_id);
                return Ok(out);
            }
            let status = match (slot.runs.first(), &slot.last) {
                (Some(run), _) => run.status(),
                (None, Some(_)) => Status::Stopped,
                (None, None) => Status::Default,
            };
            let _ = writeln!(out, "Status: {}", status.as_str());
            if !slot.runs.is_empty() {
                let _ = writeln!(out, "RunningOn: {}", self.member.instance);
            }
            if let Some(last) = &slot.last {
                let _ = writeln!(out, "JobId: {}", last.job_id);
                let _ = writeln!(out, "Param: {}", last.param);
                let _ = writeln!(out, "StartTime: {}", fmt_utc(last.started));
                if let Some(end) = last.ended {
                    let _ = writeln!(out, "LastEndTime: {}", fmt_utc(end));
                }
                let ran = last
                    .ended
                    .unwrap_or(now)
                    .duration_since(last.started)
                    .unwrap_or_default();
                let _ = writeln!(out, "RunningTime: {}", fmt_duration(ran));
            }
        } else {
            if slot.runs.is_empty() && remote.is_empty() {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
            let _ = writeln!(out, "Running instances: {}", slot.runs.len() + remote.len());
            let mut i = 0;
            for run in slot.runs.iter() {
                i += 1;
                let ran = now.duration_since(run.started).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: {} StartTime: {} RunningTime: {} Param: {}",
                    self.member.instance,
                    run.cx.job_id(),
                    run.status().as_str(),
                    fmt_utc(run.started),
                    fmt_duration(ran),
                    run.cx.param_text()
                );
            }
            for run in &remote {
                i += 1;
                let started = std::time::UNIX_EPOCH + Duration::from_millis(run.record.started);
                let ran = now.duration_since(started).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{i} Replica: {} JobId: {} Status: Running StartTime: {} RunningTime: {}",
                    run.instance,
                    run.job_id,
                    fmt_utc(started),
                    fmt_duration(ran)
                );
            }
        }
        Ok(out)
    }

    /// Busy policy `discard`: report the run as done, with a console line saying why.
    fn discard(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
        busy: Busy,
    ) {
        let console = self.console(&d, &outlet);
        let started = SystemTime::now();
        self.tracker.spawn(async move {
            console.lifecycle(format!(
                "run discarded: job {} is busy ({}, job id {})",
                reg.class(),
                busy.describe(),
                busy.job_id
            ));
            console.close().await;
            let result = DispatchResult::new(&d.job_id, Action::Run, &d.job_id, None, started);
            outlet.results().write(result).await;
        });
    }

    /// Busy policy `replace`: stop the running instance, then start this run.
    async fn replace(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
        busy: Busy,
    ) {
        let local = lock(&self.state(reg).slot).runs.first().cloned();
        match (local, &busy.replica, self.shared(&outlet)) {
            (Some(run), _, _) => {
                run.set_status(Status::Stopping);
                run.cx
                    .console()
                    .lifecycle(format!("stopped to make way for run {}", d.job_id));
                let grace = self.options.timeout_grace;
                tokio::spawn(async move { call_on_stop(&run, grace).await });
            }
            (None, Some(instance), Some(store)) => {
                let command = Command {
                    action: "stop".to_owned(),
                    class: reg.class().to_owned(),
                    job_id: busy.job_id.clone(),
                    stop_id: format!("replace-{}", d.job_id),
                };
                if let Err(e) = store.send_command(instance, &command).await {
                    tracing::warn!(error = %e, "could not ask the replica to stop the running instance");
                }
            }
            _ => {}
        }
        let deadline = tokio::time::Instant::now()
            + self.options.timeout_grace
            + CLAIM_LEASE
            + Duration::from_secs(5);
        self.start_when_free(reg, d, outlet, Some(deadline));
    }

    /// Busy policy `queue`: start this run when the running instance ends.
    fn enqueue(self: &Arc<Self>, reg: &'static JobRegistration, d: Dispatch, outlet: Outlet) {
        self.start_when_free(reg, d, outlet, None);
    }

    /// Starts a run as soon as the singleton is free (in arrival order), or reports why not.
    fn start_when_free(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
        deadline: Option<tokio::time::Instant>,
    ) {
        let rt = self.clone();
        let queued = deadline.is_none();
        self.tracker.spawn(async move {
            let state = rt.state(reg);
            let started = SystemTime::now();
            let _turn = state.queue.lock().await;
            let failure = loop {
                if !rt.is_accepting() {
                    break Some("the agent shut down before the run could start".to_owned());
                }
                match rt.try_start(reg, &d, &outlet).await {
                    Ok(Ok(())) => break None,
                    Ok(Err(_busy)) => {}
                    Err(e) => break Some(e.to_string()),
                }
                if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    break Some(
                        "the running instance did not stop in time; this run did not start"
                            .to_owned(),
                    );
                }
                tokio::select! {
                    _ = state.ended.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = rt.root.cancelled() => {}
                }
            };
            if queued {
                state.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(error) = failure {
                let result =
                    DispatchResult::new(&d.job_id, Action::Run, &d.job_id, Some(error), started);
                outlet.results().write(result).await;
            }
        });
    }

    /// Stops taking runs, cancels every running job, waits up to the shutdown bound, and
    /// reports whatever is still running as ended by shutdown.
    pub(crate) async fn shutdown(&self) {
        if self.accepting.swap(false, Ordering::AcqRel) {
            tracing::info!(
                timeout_ms = self.options.shutdown_timeout.as_millis() as u64,
                "job agent shutting down: cancelling running jobs"
            );
        }
        self.root.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.options.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let stuck: Vec<Arc<Run>> = self
                .classes
                .values()
                .flat_map(|s| lock(&s.slot).runs.clone())
                .collect();
            for run in stuck {
                tracing::warn!(
                    class = run.cx.class(),
                    job_id = run.cx.job_id(),
                    "job did not stop within the shutdown bound"
                );
                run.report(Some(format!(
                    "the agent shut down and the job did not stop within {} ms",
                    self.options.shutdown_timeout.as_millis()
                )))
                .await;
            }
        }
    }

    /// Number of runs in flight, across classes.
    pub(crate) fn running(&self) -> usize {
        self.classes
            .values()
            .map(|s| lock(&s.slot).runs.len())
            .sum()
    }
}

/// Calls a run's `on_stop` within `grace`; the error text when it failed.
async fn call_on_stop(run: &Run, grace: Duration) -> Option<String> {
    let stop = AssertUnwindSafe(run.instance.clone().stop(run.cx.clone())).catch_unwind();
    let id = run.cx.job_id();
    match tokio::time::timeout(grace, stop).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!("job {id}: on_stop failed: {e}")),
        Ok(Err(p)) => {
            run.cx.cancel();
            Some(format!(
                "job {id}: on_stop panicked: {}",
                panic_message(&*p)
            ))
        }
        Err(_) => {
            run.cx.cancel();
            Some(format!(
                "job {id}: on_stop did not return within {} ms; the run was cancelled",
                grace.as_millis()
            ))
        }
    }
}

/// Waits until the replicas acknowledged a stop of `job_ids`; the errors they reported.
async fn wait_for_acks(
    store: &Store,
    stop_id: &str,
    job_ids: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match store.acks(stop_id).await {
            Ok(acks) => {
                let done = job_ids.iter().all(|id| acks.iter().any(|(a, _)| a == id));
                if done || tokio::time::Instant::now() >= deadline {
                    let mut errors: Vec<String> = acks
                        .into_iter()
                        .map(|(_, e)| e)
                        .filter(|e| !e.is_empty())
                        .collect();
                    if !done {
                        errors.push(format!(
                            "not every replica confirmed the stop within {} ms",
                            within.as_millis()
                        ));
                    }
                    return errors;
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return vec![format!("cannot read the replicas' confirmations: {e}")];
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
