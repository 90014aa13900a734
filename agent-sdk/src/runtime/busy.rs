//! Busy policies: what a singleton run does when the singleton already runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::Runtime;
use super::run::Status;
use super::start::Start;
use crate::cluster::{CLAIM_LEASE, Command};
use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::registry::JobRegistration;
use crate::request::{Action, Dispatch};
use crate::result::DispatchResult;
use crate::sync::lock;

/// Who holds a busy singleton.
pub(super) struct Busy {
    pub(super) job_id: String,
    pub(super) status: Status,
    pub(super) replica: Option<String>,
}

impl Busy {
    pub(super) fn describe(&self) -> String {
        match &self.replica {
            Some(replica) => format!("{} on replica {replica}", self.status.as_str()),
            None => self.status.as_str().to_owned(),
        }
    }

    pub(super) fn into_error(self, reg: &'static JobRegistration) -> DispatchError {
        DispatchError::Busy {
            class: reg.class().to_owned(),
            status: self.describe(),
            job_id: self.job_id,
        }
    }
}

/// Most runs waiting behind a busy singleton (busy policy `queue`).
pub(super) const MAX_QUEUED: usize = 16;

impl Runtime {
    /// Busy policy `discard`: report the run as done, with a console line saying why.
    pub(super) fn discard(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
        busy: Busy,
    ) {
        let console = self.console(reg, &d, &outlet, &self.span_of(reg, &d));
        let started = SystemTime::now();
        let retry_for = self.options.result_retry;
        self.tracker.spawn(async move {
            console.lifecycle(|| {
                format!(
                    "run discarded: job {} is busy ({}, job id {})",
                    reg.class(),
                    busy.describe(),
                    busy.job_id
                )
            });
            console.close().await;
            let result = DispatchResult::new(&d.job_id, Action::Run, &d.job_id, None, started);
            outlet.results(retry_for).write(result).await;
        });
    }

    /// Busy policy `replace`: stop the running instance, then start this run.
    pub(super) async fn replace(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
        busy: Busy,
    ) {
        let local = lock(&self.state(reg).slot).runs.oldest().cloned();
        match (local, &busy.replica, self.shared(&outlet)) {
            (Some(run), _, _) if run.mark_stopping() => {
                run.cx
                    .console()
                    .lifecycle(|| format!("stopped to make way for run {}", d.job_id));
                let grace = self.options.timeout_grace;
                let rt = self.clone();
                self.tracker.spawn(async move {
                    // A run that ignores its stop is given up as a local stop does, so the
                    // replacing run can start.
                    let cx = run.cx.clone();
                    rt.stop_run(reg, &run, cx, grace).await;
                });
            }
            (None, Some(instance), Some(store)) => {
                let command = Command {
                    action: "stop".to_owned(),
                    class: reg.class().to_owned(),
                    job_id: busy.job_id.clone(),
                    stop_id: format!("replace-{}", d.job_id),
                    console: None,
                    param: String::new(),
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
    pub(super) fn enqueue(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) {
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
            let job_id = d.job_id.clone();
            let mut pending = Some(d);
            let watch = state.ended.watch();
            let failure = loop {
                if !rt.is_accepting() {
                    break Some("the agent shut down before the run could start".to_owned());
                }
                if rt.is_draining() {
                    break Some(
                        "the agent began draining (it is shutting down) before the run could start; retry it: another replica, or this service once restarted, takes it"
                            .to_owned(),
                    );
                }
                let Some(d) = pending.take() else { break None };
                // Enabled before the attempt, so a run ending during it is not missed.
                let ended = watch.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                match rt.try_start(reg, d, &outlet).await {
                    Ok(Start::Started) => break None,
                    Ok(Start::Busy(_, d)) => pending = Some(*d),
                    Err(e) => break Some(e.to_string()),
                }
                if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    break Some(
                        "the running instance did not stop in time; this run did not start"
                            .to_owned(),
                    );
                }
                let claim_freed = async {
                    match &outlet.store {
                        Some(store) => store.wakeups.claims.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = ended => {}
                    // Another replica released a claim (NOTIFY): look now, not at the poll.
                    _ = claim_freed => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = rt.root.cancelled() => {}
                }
            };
            if queued {
                state.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(error) = failure {
                let result =
                    DispatchResult::new(&job_id, Action::Run, &job_id, Some(error), started);
                outlet.results(rt.options.result_retry).write(result).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testkit::{QUEUED, limited, result, running, runtime, start, until};

    #[test]
    fn who_holds_a_busy_singleton_is_said_with_its_status_and_replica() {
        let here = Busy {
            job_id: "7".to_owned(),
            status: Status::Stopping,
            replica: None,
        };
        assert_eq!(here.describe(), "Stopping");
        let elsewhere = Busy {
            job_id: "8".to_owned(),
            status: Status::Running,
            replica: Some("billing-2".to_owned()),
        };
        assert_eq!(elsewhere.describe(), "Running on replica billing-2");
        match elsewhere.into_error(&QUEUED) {
            DispatchError::Busy {
                class,
                status,
                job_id,
            } => assert_eq!(
                (class.as_str(), status.as_str(), job_id.as_str()),
                ("unit::Queued", "Running on replica billing-2", "8")
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Busy policy `queue`: runs wait in arrival order behind the running one, at most
    /// `MAX_QUEUED` of them; each starts when the one before ends. On one thread, as the
    /// queued tasks reach the queue's lock in the order they were spawned there.
    #[tokio::test(start_paused = true)]
    async fn queued_runs_wait_in_order_at_most_max_queued_and_start_when_the_singleton_ends() {
        let (rt, outlet, memory) = runtime(&[&QUEUED], limited(100, 100));
        start(&rt, &outlet, &QUEUED, "0")
            .await
            .expect("the first runs");
        for i in 1..=MAX_QUEUED {
            let answer = start(&rt, &outlet, &QUEUED, &i.to_string()).await;
            assert_eq!(
                answer.map_err(|e| e.to_string()),
                Ok(format!(
                    "JobClass:unit::Queued run accepted: queued behind JobId:0 (position {i})"
                ))
            );
        }
        let refused = start(&rt, &outlet, &QUEUED, "late")
            .await
            .expect_err("full");
        assert_eq!(
            refused.to_string(),
            format!(
                "job unit::Queued is busy and {MAX_QUEUED} runs already wait behind it, the most allowed"
            )
        );
        let state = rt.state(&QUEUED);
        assert_eq!(state.waiting.load(Ordering::Acquire), MAX_QUEUED);
        // Each ends in turn; the next starts in arrival order.
        for i in 0..=MAX_QUEUED {
            let id = i.to_string();
            until("the next queued run starts", || {
                rt.latest_context(&QUEUED)
                    .is_some_and(|cx| cx.job_id() == id)
            })
            .await;
            running(&rt, &QUEUED, &id).cancel();
            assert!(result(&memory, &id).await.is_ok(), "run {id}");
        }
        until("no run waits", || {
            state.waiting.load(Ordering::Acquire) == 0
        })
        .await;
        assert_eq!(rt.running(), 0);
        assert_eq!(memory.results_of("late"), 0);
    }
}
