//! Drain and shutdown: refusing new runs, waiting for running ones within a bound, and
//! reporting those that did not stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Runtime;
use super::run::Run;
use crate::sync::lock;

impl Runtime {
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
}

/// How long shutdown gives the results of runs that did not stop, after the shutdown bound.
const SHUTDOWN_REPORT_WITHIN: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DispatchError;
    use crate::runtime::testkit::{
        HANG, SLEEPS, WAITS, counts, limited, result, running, runtime, start,
    };

    #[tokio::test(start_paused = true)]
    async fn a_drain_refuses_new_runs_waits_for_finishing_ones_and_not_for_hang_jobs() {
        let (rt, outlet, memory) = runtime(&[&WAITS, &HANG], limited(10, 10));
        start(&rt, &outlet, &HANG, "h").await.expect("h");
        start(&rt, &outlet, &WAITS, "w").await.expect("w");
        let ender = rt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            running(&ender, &WAITS, "w").cancel();
        });
        let began = tokio::time::Instant::now();
        assert!(rt.drain(Duration::from_secs(10)).await, "drained");
        assert_eq!(began.elapsed(), Duration::from_secs(3));
        assert!(result(&memory, "w").await.is_ok());
        assert_eq!(rt.not_accepting(), Some("the agent is draining"));
        let refused = start(&rt, &outlet, &WAITS, "late").await;
        assert!(
            matches!(refused, Err(DispatchError::Draining)),
            "{refused:?}"
        );
        assert_eq!(rt.running(), 1, "the hang job runs until shutdown");
        // A run that does not end within the bound: the drain says so.
        let began = tokio::time::Instant::now();
        assert!(rt.drain(Duration::ZERO).await, "only the hang job is left");
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_bound_passing_with_runs_left_says_so() {
        let (rt, outlet, _) = runtime(&[&WAITS], limited(10, 10));
        start(&rt, &outlet, &WAITS, "w").await.expect("w");
        let began = tokio::time::Instant::now();
        assert!(!rt.drain(Duration::from_secs(2)).await);
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        assert_eq!(rt.running(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_cancels_running_jobs_reports_them_shut_down_and_refuses_new_runs() {
        let (rt, outlet, memory) = runtime(&[&SLEEPS, &HANG], limited(10, 10));
        start(&rt, &outlet, &SLEEPS, "s").await.expect("s");
        start(&rt, &outlet, &HANG, "h").await.expect("h");
        rt.shutdown().await;
        let sleeper = result(&memory, "s").await;
        assert_eq!(sleeper.e, "the agent shut down before the job finished");
        let hang = result(&memory, "h").await;
        assert_eq!(hang.e, "the agent shut down before the job finished");
        assert_eq!(rt.running(), 0);
        assert_eq!(counts(&rt, &SLEEPS), (0, 0));
        assert_eq!(rt.not_accepting(), Some("the agent is shutting down"));
        let refused = start(&rt, &outlet, &SLEEPS, "late").await;
        assert!(
            matches!(refused, Err(DispatchError::ShuttingDown)),
            "{refused:?}"
        );
    }
}
