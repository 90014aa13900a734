//! The stop-latency probe job: a transient job that waits for cancellation and records the
//! instant it observes it. It runs in an in-process agent (the example service's router and
//! this job), so the bench reads that instant on the same clock as the stop answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobagent::{JobAgent, JobContext, JobError, job_agent};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the probe job reports.
#[derive(Debug)]
pub(crate) enum Seen {
    /// The run `job_id` started and is about to wait for cancellation.
    Started(String),
    /// The run `job_id` observed its cancellation at this instant.
    Cancelled(String, Instant),
}

static EVENTS: Mutex<Option<UnboundedSender<Seen>>> = Mutex::new(None);

/// Routes the probe job's reports to the returned receiver (replacing any earlier one).
pub(crate) fn listen() -> UnboundedReceiver<Seen> {
    let (tx, rx) = unbounded_channel();
    match EVENTS.lock() {
        Ok(mut g) => *g = Some(tx),
        Err(p) => *p.into_inner() = Some(tx),
    }
    rx
}

fn emit(seen: Seen) {
    if let Ok(g) = EVENTS.lock()
        && let Some(tx) = g.as_ref()
    {
        let _ = tx.send(seen);
    }
}

/// Waits (at most a minute) for cancellation and reports when it saw it.
#[job_agent(transient)]
#[derive(Default)]
struct BenchStopJob;

/// The probe job's class name.
pub(crate) const CLASS: &str = concat!(module_path!(), "::BenchStopJob");

impl JobAgent for BenchStopJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        emit(Seen::Started(cx.job_id().to_owned()));
        tokio::select! {
            _ = cx.cancelled() => {
                let at = Instant::now();
                emit(Seen::Cancelled(cx.job_id().to_owned(), at));
                Err(JobError::cancelled())
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }
}
