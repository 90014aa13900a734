//! One run: its status machine and the report of its result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::task::JoinHandle;

use crate::context::JobContext;
use crate::job::DynJob;
use crate::request::Action;
use crate::result::{DispatchResult, Results};
use crate::store::Store;
use crate::sync::lock;

/// The status of a job instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
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
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Default => "Default",
            Status::Running => "Running",
            Status::Stopping => "Stopping",
            Status::Stopped => "Stopped",
        }
    }
}

/// One running instance.
pub(super) struct Run {
    pub(super) seq: u64,
    pub(super) cx: JobContext,
    pub(super) instance: Arc<dyn DynJob>,
    pub(super) status: Mutex<Status>,
    pub(super) started: SystemTime,
    pub(super) results: Results,
    pub(super) reported: AtomicBool,
    /// Set once the run's result is written.
    pub(super) result_written: AtomicBool,
    /// Set when the run is taken out of its class (counted once).
    pub(super) finished: AtomicBool,
    /// The store shared with other replicas, when there is one.
    pub(super) store: Option<Arc<Store>>,
    /// Whether this run holds the class's cluster-wide claim.
    pub(super) claimed: AtomicBool,
    /// Writing the in-flight record (awaited before the record is removed).
    pub(super) record: Mutex<Option<JoinHandle<()>>>,
    /// Set when the stall watchdog cancelled the run.
    pub(super) stalled: AtomicBool,
    /// The run's `job_run` span (see [`crate::trace`]).
    pub(super) span: tracing::Span,
    /// Its parameter's share of `JOBAGENT_MAX_PARAM_BYTES_RUNNING`, given back when the run
    /// is dropped.
    pub(super) _param_charge: Option<crate::budget::ParamCharge>,
}

impl Run {
    pub(super) fn status(&self) -> Status {
        *lock(&self.status)
    }

    pub(super) fn set_status(&self, status: Status) {
        *lock(&self.status) = status;
    }

    /// Moves a running run to Stopping; false when it is already stopping or has ended (its
    /// `on_stop` must not be called again).
    pub(super) fn mark_stopping(&self) -> bool {
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
    pub(super) async fn report(&self, error: Option<String>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testkit::{WAITS, dispatch, limited, runtime};

    #[test]
    fn a_run_moves_to_stopping_once_and_never_back_from_stopped() {
        let (rt, outlet, _) = runtime(&[&WAITS], limited(10, 10));
        let run = rt.new_run(
            &WAITS,
            dispatch(&WAITS, "a", "{}"),
            &outlet,
            SystemTime::now(),
        );
        assert_eq!(run.status(), Status::Running);
        assert!(run.mark_stopping());
        assert_eq!(run.status(), Status::Stopping);
        assert!(!run.mark_stopping(), "on_stop is called once");
        run.set_status(Status::Stopped);
        assert!(!run.mark_stopping(), "an ended run is not stopped");
        assert_eq!(run.status(), Status::Stopped);
        assert_eq!(
            [
                Status::Default,
                Status::Running,
                Status::Stopping,
                Status::Stopped
            ]
            .map(Status::as_str),
            ["Default", "Running", "Stopping", "Stopped"]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_is_reported_once_with_its_error() {
        let (rt, outlet, memory) = runtime(&[&WAITS], limited(10, 10));
        let run = rt.new_run(
            &WAITS,
            dispatch(&WAITS, "r", "{}"),
            &outlet,
            SystemTime::now(),
        );
        assert!(run.report(Some("the disk is full".to_owned())).await);
        assert!(run.report(None).await, "reported already: written");
        assert_eq!(memory.results_of("r"), 1);
        let written = memory
            .result_within("r", std::time::Duration::ZERO)
            .await
            .expect("written");
        assert_eq!((written.r, written.e.as_str()), ("err", "the disk is full"));
        assert_eq!(written.action, "run");
        assert_eq!(written.run_id, "r");
    }
}
