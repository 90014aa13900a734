//! The run's task: start the job, bound it by its AgentTimeout, classify how it ended,
//! report it.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::build::panic_message;
use super::claim::keep_claim;
use super::run::{Run, Status};
use super::stall::stall_watch;
use crate::cluster::RunRecord;
use crate::error::{JobError, JobErrorKind};
use crate::job::JobKind;
use crate::metrics::Outcome;
use crate::registry::JobRegistration;
use crate::sync::lock;
use crate::timefmt::fmt_duration;

impl Runtime {
    /// Spawns the run's task and, with a store, the write of its in-flight record; the
    /// receiver says when the record has landed.
    pub(super) fn spawn_drive(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        run: Arc<Run>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let recorded = run.store.clone().map(|store| {
            let (done, recorded) = tokio::sync::oneshot::channel();
            let (member, spool) = (self.member.clone(), self.spool.clone());
            let job_id = run.cx.job_id().to_owned();
            let record = RunRecord {
                class: reg.class().to_owned(),
                server_id: member.server_id.clone(),
                started: crate::cluster::now_ms(),
                action: "run".to_owned(),
                run_id: String::new(),
            };
            let this_run = Arc::downgrade(&run);
            let needed = move || {
                this_run
                    .upgrade()
                    .is_some_and(|run| !run.result_written.load(Ordering::Acquire))
            };
            *lock(&run.record) = Some(self.tracker.spawn(async move {
                let in_flight = InFlight {
                    store: &store,
                    member: &member,
                    spool: spool.as_deref(),
                };
                in_flight.record(&job_id, &record, needed, done).await;
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
    pub(super) async fn until_recorded(recorded: Option<tokio::sync::oneshot::Receiver<()>>) {
        if let Some(recorded) = recorded {
            let _ = tokio::time::timeout(RECORD_BEFORE_ANSWER, recorded).await;
        }
    }

    /// The task of one run: start, wait, classify, report.
    pub(super) async fn drive(self: Arc<Self>, reg: &'static JobRegistration, run: Arc<Run>) {
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
        let timeout = run_limit(cx.agent_timeout());
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
}

/// Where a run's or a stop's in-flight record goes: its store, under this process's
/// instance, and meanwhile this machine's spool.
pub(super) struct InFlight<'a> {
    pub(super) store: &'a crate::store::Store,
    pub(super) member: &'a crate::cluster::Member,
    pub(super) spool: Option<&'a crate::spool::Spool>,
}

impl InFlight<'_> {
    /// Writes the in-flight record, retrying with backoff while the store is away, until it
    /// lands (`done` is then sent) or is no longer `needed` (its result is written). A
    /// dispatch answered while the store was unreachable is so recorded once the store is
    /// back: a process killed after that still has it reported by the next process of its
    /// instance. Until then the record is in the spool, so that a process killed while the
    /// store is away still has it reported (by the next process of its instance on this
    /// machine). An answer that will not change (another process holds the instance name, a
    /// configuration error) ends it.
    pub(super) async fn record(
        &self,
        job_id: &str,
        record: &RunRecord,
        needed: impl Fn() -> bool,
        done: tokio::sync::oneshot::Sender<()>,
    ) {
        use crate::store::StoreErrorKind;
        let mut backoff = RECORD_FIRST_BACKOFF;
        let mut failures = 0u32;
        let mut kept = None;
        loop {
            let write = crate::metrics::store_op(
                "record",
                self.store.record_run(self.member, job_id, record),
            );
            let error = match tokio::time::timeout(RECORD_WITHIN, write).await {
                Ok(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(
                            job_id,
                            failures,
                            "the run's in-flight record is in the store now"
                        );
                    }
                    let _ = done.send(());
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    crate::store::StoreError::timed_out("the store (a run's record)", RECORD_WITHIN)
                }
            };
            if !matches!(
                error.kind(),
                StoreErrorKind::Unavailable | StoreErrorKind::TimedOut
            ) {
                tracing::debug!(job_id, error = %error, "the run is not recorded in flight");
                break;
            }
            failures += 1;
            if failures == 1 {
                kept = self.spool(job_id, record, &error).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECORD_MAX_BACKOFF);
            if !needed() {
                break;
            }
        }
        if let Some(kept) = kept {
            kept.forget().await;
        }
    }

    /// Keeps the record in the spool (when there is one), saying so with the store's error.
    async fn spool(
        &self,
        job_id: &str,
        record: &RunRecord,
        error: &crate::store::StoreError,
    ) -> Option<crate::spool::Kept> {
        let Some(spool) = self.spool else {
            tracing::warn!(job_id, error = %error, "could not record the run in flight; retrying until the store takes it (no spool: a process killed before then leaves the run unreported)");
            return None;
        };
        let entry = crate::spool::Entry::new(
            &self.member.instance,
            crate::spool::store_key(self.store),
            job_id,
            record,
        );
        match spool.keep(entry).await {
            Ok(kept) => {
                tracing::warn!(job_id, error = %error, spool = %spool.dir().display(), "could not record the run in flight; retrying until the store takes it, and kept in the spool meanwhile (a process killed before then has the run reported by the next process of this instance on this machine)");
                Some(kept)
            }
            Err(e) => {
                tracing::warn!(job_id, error = %error, spool = %spool.dir().display(), spool_error = %e, "could not record the run in flight, nor keep it in the spool; retrying until the store takes it (a process killed before then leaves the run unreported)");
                None
            }
        }
    }
}

/// How long a run's answer waits for its in-flight record.
const RECORD_BEFORE_ANSWER: Duration = Duration::from_secs(1);
/// How long one attempt at writing the in-flight record may take before it is retried.
const RECORD_WITHIN: Duration = Duration::from_secs(30);
/// The first wait before the in-flight record is written again, doubled up to
/// [`RECORD_MAX_BACKOFF`].
const RECORD_FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two attempts at the in-flight record.
const RECORD_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a run may take, from its job item's `AgentTimeout` (ms): 0, a negative value or
/// none means no limit.
fn run_limit(agent_timeout: Option<i64>) -> Option<Duration> {
    agent_timeout
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64))
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testkit::{
        PANICS, QUICK, SLEEP, SLEEPS, STUBBORN, dispatch, limited, result, runtime,
    };

    #[test]
    fn agent_timeout_zero_negative_or_none_means_no_limit() {
        assert_eq!(run_limit(None), None);
        assert_eq!(run_limit(Some(0)), None);
        assert_eq!(run_limit(Some(-1)), None);
        assert_eq!(run_limit(Some(1)), Some(Duration::from_millis(1)));
        assert_eq!(run_limit(Some(1_500)), Some(Duration::from_millis(1_500)));
        assert_eq!(
            run_limit(Some(i64::MAX)),
            Some(Duration::from_millis(i64::MAX as u64))
        );
    }

    /// `AgentTimeout` 0 lets a run take an hour (of paused time): read as a limit of 0 ms,
    /// the run would fail at once as a timeout.
    #[tokio::test(start_paused = true)]
    async fn a_run_with_agent_timeout_zero_runs_as_long_as_it_takes() {
        let (rt, outlet, memory) = runtime(&[&SLEEPS], limited(10, 10));
        let began = tokio::time::Instant::now();
        let d = dispatch(&SLEEPS, "z", r#"{"AgentTimeout":0}"#);
        rt.run(&SLEEPS, d, outlet).await.expect("accepted");
        let ended = memory
            .result_within("z", SLEEP * 2)
            .await
            .expect("a result");
        assert!(ended.is_ok(), "{ended:?}");
        assert!(began.elapsed() >= SLEEP, "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_past_its_agent_timeout_is_cancelled_and_reported_as_a_timeout() {
        let (rt, outlet, memory) = runtime(&[&SLEEPS, &STUBBORN], limited(10, 10));
        let began = tokio::time::Instant::now();
        let d = dispatch(&SLEEPS, "t", r#"{"AgentTimeout":1500}"#);
        rt.run(&SLEEPS, d, outlet.clone()).await.expect("accepted");
        let timed_out = result(&memory, "t").await;
        assert_eq!(
            timed_out.e,
            "timeout: the job ran longer than its AgentTimeout of 1500 ms"
        );
        assert_eq!(began.elapsed(), Duration::from_millis(1_500));

        // A job that ignores its cancellation is given the grace (500 ms), then reported.
        let began = tokio::time::Instant::now();
        let d = dispatch(&STUBBORN, "s", r#"{"AgentTimeout":1000}"#);
        rt.run(&STUBBORN, d, outlet).await.expect("accepted");
        let stubborn = result(&memory, "s").await;
        assert_eq!(
            stubborn.e,
            "timeout: the job ran longer than its AgentTimeout of 1000 ms and did not stop within 500 ms of cancellation"
        );
        assert_eq!(began.elapsed(), Duration::from_millis(1_500));
        assert_eq!(rt.running(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_job_fails_with_its_panic_and_a_finished_one_says_so_on_its_console() {
        let (rt, outlet, memory) = runtime(&[&PANICS, &QUICK], limited(10, 10));
        rt.run(&PANICS, dispatch(&PANICS, "p", "{}"), outlet.clone())
            .await
            .expect("accepted");
        let panicked = result(&memory, "p").await;
        assert_eq!(panicked.r, "err");
        assert_eq!(panicked.e, "the job panicked: index out of bounds");
        let lines = memory.lines_of("p");
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("job failed: the job panicked: index out of bounds")),
            "{lines:?}"
        );

        rt.run(&QUICK, dispatch(&QUICK, "q", "{}"), outlet)
            .await
            .expect("accepted");
        assert!(result(&memory, "q").await.is_ok());
        let lines = memory.lines_of("q");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("job unit::Quick started, job id q")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("job finished after")),
            "{lines:?}"
        );
    }
}
