//! The runtime: job instances, their status machine, tasks, stop, detail and shutdown.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::console::Console;
use crate::context::{ContextInner, JobContext};
use crate::error::{DispatchError, JobError, JobErrorKind};
use crate::job::{DynJob, JobKind};
use crate::options::AgentOptions;
use crate::outcome::{DispatchResult, Outlet, ResultSink};
use crate::registry::{JobRegistration, Registry};
use crate::request::{Action, Dispatch};
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
    cx: JobContext,
    instance: Arc<dyn DynJob>,
    status: Mutex<Status>,
    started: SystemTime,
    results: Arc<dyn ResultSink>,
    reported: AtomicBool,
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
}

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Runtime {
    pub(crate) fn new(registry: Registry, options: AgentOptions) -> Self {
        let classes = registry
            .iter()
            .map(|reg| {
                (
                    reg.class(),
                    ClassState {
                        singleton: Mutex::new(None),
                        slot: Mutex::new(ClassSlot::default()),
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

    /// Starts a run; answers at once.
    pub(crate) fn run(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        if !self.is_accepting() {
            return Err(DispatchError::ShuttingDown);
        }
        let state = self.state(reg);
        let run = {
            let mut slot = lock(&state.slot);
            if reg.kind().is_singleton()
                && let Some(current) = slot.runs.first()
            {
                return Err(DispatchError::Busy {
                    class: reg.class().to_owned(),
                    status: current.status().as_str(),
                    job_id: current.cx.job_id().to_owned(),
                });
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
            let instance = if reg.kind().is_singleton() {
                lock(&state.singleton)
                    .get_or_insert_with(|| reg.instantiate())
                    .clone()
            } else {
                reg.instantiate()
            };
            let sink = outlet.console(
                &d.job_id,
                d.console.as_ref(),
                self.options.console_budget,
                &self.options.console_prefix,
            );
            let console = Console::new(
                self.options.console_prefix.clone(),
                d.console.as_ref().map(|c| c.progress_bar_id).unwrap_or(0),
                sink,
            );
            let started = SystemTime::now();
            let cx = JobContext::new(ContextInner {
                class: reg.class(),
                job_id: d.job_id.clone(),
                server_id: d.server_id.clone(),
                job_url: d.job_url.clone(),
                param: d.body,
                item: d.item,
                headers: d.headers,
                token: self.root.child_token(),
                console,
                started_at: started,
            });
            let run = Arc::new(Run {
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                cx,
                instance,
                status: Mutex::new(Status::Running),
                started,
                results: outlet.results(),
                reported: AtomicBool::new(false),
            });
            slot.runs.push(run.clone());
            slot.last = Some(LastRun {
                job_id: run.cx.job_id().to_owned(),
                param: run.cx.param_text().to_owned(),
                started,
                ended: None,
            });
            run
        };
        let rt = self.clone();
        self.tracker.spawn(async move { rt.drive(reg, run).await });
        Ok(format!("JobClass:{} run success!", reg.class()))
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
        self.finish(reg, &run);
        run.report(error.map(|e| e.message().to_owned())).await;
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
    }

    /// Stops the running instance(s); answers at once, reports when `on_stop` is done.
    pub(crate) fn stop(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        let state = self.state(reg);
        let runs: Vec<Arc<Run>> = {
            let slot = lock(&state.slot);
            if slot.runs.is_empty() {
                match (&slot.last, reg.kind().is_singleton()) {
                    (Some(last), true) => {
                        return Err(DispatchError::AlreadyStopped {
                            class: reg.class().to_owned(),
                            job_id: last.job_id.clone(),
                        });
                    }
                    (None, true) => {}
                    (_, false) => {
                        return Err(DispatchError::NothingRunning {
                            class: reg.class().to_owned(),
                        });
                    }
                }
            }
            slot.runs.clone()
        };
        for run in &runs {
            run.set_status(Status::Stopping);
        }
        let count = runs.len();
        let stop_id = d.job_id;
        let run_id = runs
            .iter()
            .max_by_key(|r| r.seq)
            .map(|r| r.cx.job_id().to_owned())
            .unwrap_or_default();
        let started = SystemTime::now();
        self.tracker.spawn(async move {
            let mut failures = Vec::new();
            for run in &runs {
                run.cx
                    .console()
                    .lifecycle(format!("stop requested (stop job id {stop_id})"));
                let stop =
                    AssertUnwindSafe(run.instance.clone().stop(run.cx.clone())).catch_unwind();
                match stop.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failures.push(format!("job {}: on_stop failed: {e}", run.cx.job_id()))
                    }
                    Err(p) => {
                        run.cx.cancel();
                        failures.push(format!(
                            "job {}: on_stop panicked: {}",
                            run.cx.job_id(),
                            panic_message(&*p)
                        ))
                    }
                }
            }
            let error = (!failures.is_empty()).then(|| failures.join("; "));
            let result = DispatchResult::new(&stop_id, Action::Stop, &run_id, error, started);
            outlet.results().write(result).await;
        });
        Ok(if reg.kind().is_singleton() {
            if count == 0 {
                format!(
                    "JobClass:{} stop success! (it was not running)",
                    reg.class()
                )
            } else {
                format!("JobClass:{} stop success!", reg.class())
            }
        } else {
            format!(
                "JobClass:{} stop success! {count} running instance(s) stopped",
                reg.class()
            )
        })
    }

    /// The human-readable status of a class.
    pub(crate) fn detail(&self, reg: &'static JobRegistration) -> Result<String, DispatchError> {
        let slot = lock(&self.state(reg).slot);
        let now = SystemTime::now();
        let mut out = String::new();
        let _ = writeln!(out, "JobClass: {}", reg.class());
        let _ = writeln!(out, "Kind: {}", reg.kind());
        if reg.kind().is_singleton() {
            let status = match (slot.runs.first(), &slot.last) {
                (Some(run), _) => run.status(),
                (None, Some(_)) => Status::Stopped,
                (None, None) => Status::Default,
            };
            let _ = writeln!(out, "Status: {}", status.as_str());
            if let Some(last) = &slot.last {
                let _ = writeln!(out, "JobId: {}", last.job_id);
                let _ = writeln!(out, "Param: {}", last.param);
                let _ = writeln!(out, "StartTime: {}", fmt_utc(last.started));
                match last.ended {
                    Some(end) => {
                        let _ = writeln!(out, "LastEndTime: {}", fmt_utc(end));
                        let ran = end.duration_since(last.started).unwrap_or_default();
                        let _ = writeln!(out, "RunningTime: {}", fmt_duration(ran));
                    }
                    None => {
                        let ran = now.duration_since(last.started).unwrap_or_default();
                        let _ = writeln!(out, "RunningTime: {}", fmt_duration(ran));
                    }
                }
            }
        } else {
            if slot.runs.is_empty() {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
            let _ = writeln!(out, "Running instances: {}", slot.runs.len());
            for (i, run) in slot.runs.iter().enumerate() {
                let ran = now.duration_since(run.started).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{} JobId: {} Status: {} StartTime: {} RunningTime: {} Param: {}",
                    i + 1,
                    run.cx.job_id(),
                    run.status().as_str(),
                    fmt_utc(run.started),
                    fmt_duration(ran),
                    run.cx.param_text()
                );
            }
        }
        Ok(out)
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

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}
