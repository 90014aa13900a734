//! How a run ends: taken out of its class (its counts given back), its claim released,
//! its result written and its in-flight record forgotten; or given up when it ignores a stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::Runtime;
use super::run::{Run, Status};
use crate::metrics::Outcome;
use crate::registry::JobRegistration;
use crate::sync::lock;

impl Runtime {
    /// Releases the run's claim, writes its result after its console, forgets its record.
    pub(super) async fn conclude(
        &self,
        reg: &'static JobRegistration,
        run: &Arc<Run>,
        error: Option<String>,
    ) {
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
    pub(super) async fn ends_within(
        &self,
        reg: &'static JobRegistration,
        run: &Run,
        grace: Duration,
    ) -> bool {
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
    pub(super) async fn abandon(&self, reg: &'static JobRegistration, run: &Arc<Run>, why: String) {
        tracing::warn!(class = reg.class(), job_id = run.cx.job_id(), "{why}");
        run.cx
            .console()
            .error(format!("job reported as stuck: {why}"));
        self.finish(reg, run, Outcome::Err);
        self.conclude(reg, run, Some(why)).await;
    }

    /// Removes a run's in-flight record once its result is written.
    pub(super) async fn forget(&self, run: &Run) {
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
    pub(super) fn finish(&self, reg: &'static JobRegistration, run: &Arc<Run>, outcome: Outcome) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testkit::{
        STUBBORN, WAITS, counts, dispatch, limited, result, running, runtime, start, until,
    };

    /// A run given up (its stop ignored) is taken out of its class then; when its task ends
    /// later, that second finish counts nothing again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_finished_twice_gives_its_counts_back_once() {
        let (rt, outlet, memory) = runtime(&[&WAITS], limited(10, 10));
        start(&rt, &outlet, &WAITS, "keep").await.expect("keep");
        start(&rt, &outlet, &WAITS, "a").await.expect("a");
        assert_eq!(counts(&rt, &WAITS), (2, 2));
        let run = lock(&rt.state(&WAITS).slot)
            .runs
            .values()
            .find(|run| run.cx.job_id() == "a")
            .cloned()
            .expect("in flight");
        rt.finish(&WAITS, &run, Outcome::Err);
        assert_eq!(counts(&rt, &WAITS), (1, 1));
        assert_eq!(run.status(), Status::Stopped);
        rt.finish(&WAITS, &run, Outcome::Err);
        assert_eq!(counts(&rt, &WAITS), (1, 1), "counted once");
        // Its task ends now, and finishes it a third time.
        run.cx.cancel();
        result(&memory, "a").await;
        until("the task has ended", || Arc::strong_count(&run) == 1).await;
        assert_eq!(counts(&rt, &WAITS), (1, 1));
        assert_eq!(rt.running(), 1);
        running(&rt, &WAITS, "keep").cancel();
        until("keep has ended", || counts(&rt, &WAITS) == (0, 0)).await;
    }

    /// A stop the job ignores: `on_stop` is called, the grace passes, the run is reported
    /// stuck and its class freed, and what the task does afterwards is not reported.
    #[tokio::test(start_paused = true)]
    async fn a_run_that_ignores_its_stop_is_given_up_after_the_grace_and_reported_once() {
        let (rt, outlet, memory) = runtime(&[&STUBBORN], limited(10, 10));
        start(&rt, &outlet, &STUBBORN, "s").await.expect("s");
        let began = tokio::time::Instant::now();
        let mut stop = dispatch(&STUBBORN, "stop-1", "{}");
        stop.action = crate::request::Action::Stop;
        let answer = rt.stop(&STUBBORN, stop, outlet.clone()).await;
        assert_eq!(
            answer.map_err(|e| e.to_string()),
            Ok("JobClass:unit::Stubborn stop success! 1 running instance(s) stopped".to_owned())
        );
        let stuck = result(&memory, "s").await;
        assert_eq!(
            stuck.e,
            "the job ignored cancellation for 500 ms after it was asked to stop; it is reported as stuck and no longer counted as running"
        );
        assert_eq!(began.elapsed(), Duration::from_millis(500));
        assert_eq!(counts(&rt, &STUBBORN), (0, 0));
        let stop = result(&memory, "stop-1").await;
        assert_eq!(stop.r, "err");
        assert!(
            stop.e.starts_with("job s: the job ignored cancellation"),
            "{}",
            stop.e
        );
        // The job's hour passes: its late end is not reported again.
        tokio::time::sleep(crate::runtime::testkit::SLEEP).await;
        until("the task has ended", || rt.tracker.is_empty()).await;
        assert_eq!(memory.results_of("s"), 1);
        assert_eq!(counts(&rt, &STUBBORN), (0, 0));
    }
}
