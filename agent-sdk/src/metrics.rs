//! What the agent counts, through the [`metrics`] facade: the service installs the recorder
//! (and with it the exporter) it already uses, Prometheus or other; without one, every call
//! here is a no-op. Install the recorder before [`Agent::new`](crate::Agent::new).
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `jobagent_runs_started_total` | counter | `class` | runs started on this process |
//! | `jobagent_runs_ended_total` | counter | `class`, `outcome` | runs ended: `ok`, `err`, `timeout`, `stopped`, `lost` |
//! | `jobagent_run_duration_seconds` | histogram | `class`, `outcome` | from start to end |
//! | `jobagent_runs_in_progress` | gauge | `class` | runs running now |
//! | `jobagent_dispatches_refused_total` | counter | `action`, `reason` | requests answered with 500/501 |
//! | `jobagent_console_lines_written_total` | counter | | lines that reached the store |
//! | `jobagent_console_lines_dropped_total` | counter | `why` | `budget` (past a run's console budget) or `buffer` (store slow or down) |
//! | `jobagent_console_buffered_lines` | gauge | | lines waiting for the store |
//! | `jobagent_console_buffered_bytes` | gauge | | bytes they hold |
//! | `jobagent_store_op_duration_seconds` | histogram | `op` | one store round trip |
//! | `jobagent_store_errors_total` | counter | `op` | store operations that failed |
//! | `jobagent_cluster_claims_held` | gauge | | singleton claims this process holds |
//! | `jobagent_cluster_claims_lost_total` | counter | `class` | claims lost (the run was cancelled) |
//! | `jobagent_cluster_takeovers_total` | counter | | runs of lost replicas this process reported |
//! | `jobagent_stalls_total` | counter | `class`, `action` | runs past their `stall_after`: `warned` or `cancelled` |

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, Histogram, Unit};

pub(crate) const RUNS_STARTED: &str = "jobagent_runs_started_total";
pub(crate) const RUNS_ENDED: &str = "jobagent_runs_ended_total";
pub(crate) const RUN_DURATION: &str = "jobagent_run_duration_seconds";
pub(crate) const RUNS_IN_PROGRESS: &str = "jobagent_runs_in_progress";
pub(crate) const REFUSED: &str = "jobagent_dispatches_refused_total";
pub(crate) const CONSOLE_WRITTEN: &str = "jobagent_console_lines_written_total";
pub(crate) const CONSOLE_DROPPED: &str = "jobagent_console_lines_dropped_total";
pub(crate) const CONSOLE_BUFFERED_LINES: &str = "jobagent_console_buffered_lines";
pub(crate) const CONSOLE_BUFFERED_BYTES: &str = "jobagent_console_buffered_bytes";
pub(crate) const STORE_DURATION: &str = "jobagent_store_op_duration_seconds";
pub(crate) const STORE_ERRORS: &str = "jobagent_store_errors_total";
pub(crate) const CLAIMS_HELD: &str = "jobagent_cluster_claims_held";
pub(crate) const CLAIMS_LOST: &str = "jobagent_cluster_claims_lost_total";
pub(crate) const TAKEOVERS: &str = "jobagent_cluster_takeovers_total";
pub(crate) const STALLS: &str = "jobagent_stalls_total";

/// Describes every metric to the installed recorder (its help text and unit), once.
pub(crate) fn describe() {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    DESCRIBED.get_or_init(|| {
        ::metrics::describe_counter!(RUNS_STARTED, "Job runs started on this process");
        ::metrics::describe_counter!(
            RUNS_ENDED,
            "Job runs ended, by outcome (ok, err, timeout, stopped, lost)"
        );
        ::metrics::describe_histogram!(RUN_DURATION, Unit::Seconds, "Job run duration, by outcome");
        ::metrics::describe_gauge!(RUNS_IN_PROGRESS, "Job runs running now");
        ::metrics::describe_counter!(
            REFUSED,
            "Center requests refused (answered 500 or 501), by action and reason"
        );
        ::metrics::describe_counter!(CONSOLE_WRITTEN, "Console lines written to the store");
        ::metrics::describe_counter!(
            CONSOLE_DROPPED,
            "Console lines dropped: past a run's console budget, or with the buffer full"
        );
        ::metrics::describe_gauge!(
            CONSOLE_BUFFERED_LINES,
            "Console lines waiting to be written to the store"
        );
        ::metrics::describe_gauge!(
            CONSOLE_BUFFERED_BYTES,
            Unit::Bytes,
            "Bytes of the console lines waiting to be written"
        );
        ::metrics::describe_histogram!(
            STORE_DURATION,
            Unit::Seconds,
            "Store round trips, by operation"
        );
        ::metrics::describe_counter!(STORE_ERRORS, "Store operations that failed, by operation");
        ::metrics::describe_gauge!(CLAIMS_HELD, "Cluster-wide singleton claims held");
        ::metrics::describe_counter!(
            CLAIMS_LOST,
            "Cluster-wide singleton claims lost while the run went on (the run is cancelled)"
        );
        ::metrics::describe_counter!(
            TAKEOVERS,
            "Runs of lost replicas (or of this instance's predecessor) reported by this process"
        );
        ::metrics::describe_counter!(
            STALLS,
            "Runs silent past their stall_after (no console line, no progress)"
        );
    });
}

/// How a run ended, as the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Err,
    Timeout,
    Stopped,
    Lost,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Err,
        Outcome::Timeout,
        Outcome::Stopped,
        Outcome::Lost,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Err => "err",
            Outcome::Timeout => "timeout",
            Outcome::Stopped => "stopped",
            Outcome::Lost => "lost",
        }
    }
}

/// One class's run metrics: handles taken once, at its first run, so a run costs a few atomic
/// operations and no key lookup.
pub(crate) struct ClassMetrics {
    started: Counter,
    in_progress: Gauge,
    ended: [(Counter, Histogram); 5],
}

impl ClassMetrics {
    /// The handles of `class`, taken from the recorder installed now.
    pub(crate) fn of<'a>(
        cell: &'a OnceLock<ClassMetrics>,
        class: &'static str,
    ) -> &'a ClassMetrics {
        cell.get_or_init(|| ClassMetrics {
            started: ::metrics::counter!(RUNS_STARTED, "class" => class),
            in_progress: ::metrics::gauge!(RUNS_IN_PROGRESS, "class" => class),
            ended: Outcome::ALL.map(|o| {
                (
                    ::metrics::counter!(RUNS_ENDED, "class" => class, "outcome" => o.as_str()),
                    ::metrics::histogram!(RUN_DURATION, "class" => class, "outcome" => o.as_str()),
                )
            }),
        })
    }

    pub(crate) fn started(&self) {
        self.started.increment(1);
        self.in_progress.increment(1.0);
    }

    pub(crate) fn ended(&self, outcome: Outcome, took: Duration) {
        self.in_progress.decrement(1.0);
        let (count, duration) = &self.ended[outcome as usize];
        count.increment(1);
        duration.record(took.as_secs_f64());
    }
}

/// A run of another process (a lost replica's, a predecessor's) reported by this one.
pub(crate) fn lost_run_reported(class: &str, took: Duration) {
    let class = class.to_owned();
    ::metrics::counter!(RUNS_ENDED, "class" => class.clone(), "outcome" => Outcome::Lost.as_str())
        .increment(1);
    ::metrics::histogram!(RUN_DURATION, "class" => class, "outcome" => Outcome::Lost.as_str())
        .record(took.as_secs_f64());
    ::metrics::counter!(TAKEOVERS).increment(1);
}

/// A request refused with `reason` (a short, fixed label).
pub(crate) fn refused(action: &'static str, reason: &'static str) {
    ::metrics::counter!(REFUSED, "action" => action, "reason" => reason).increment(1);
}

/// Times one store operation and counts it when it fails.
pub(crate) async fn store_op<T, E>(
    op: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let began = Instant::now();
    let outcome = fut.await;
    ::metrics::histogram!(STORE_DURATION, "op" => op).record(began.elapsed().as_secs_f64());
    if outcome.is_err() {
        ::metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
    }
    outcome
}

/// Console lines that reached the store.
pub(crate) fn console_written(lines: usize) {
    ::metrics::counter!(CONSOLE_WRITTEN).increment(lines as u64);
}

/// A console line dropped: `budget`, `buffer` or `refused`.
pub(crate) fn console_dropped(why: &'static str) {
    ::metrics::counter!(CONSOLE_DROPPED, "why" => why).increment(1);
}

/// Lines buffered across all consoles, kept here so the gauge can be set from a batch's
/// writer without a pass over the consoles.
static BUFFERED_LINES: AtomicI64 = AtomicI64::new(0);

/// Lines entered (positive) or left (negative) the console buffers (one atomic operation:
/// this is on every console line's path).
pub(crate) fn console_queued(delta: i64) {
    BUFFERED_LINES.fetch_add(delta, Ordering::Relaxed);
}

/// Sets the buffer gauges: the lines counted by [`console_queued`], and `bytes`, what all
/// consoles hold now. Called by the writers after each batch.
pub(crate) fn console_gauges(bytes: u64) {
    let lines = BUFFERED_LINES.load(Ordering::Relaxed);
    ::metrics::gauge!(CONSOLE_BUFFERED_LINES).set(lines.max(0) as f64);
    ::metrics::gauge!(CONSOLE_BUFFERED_BYTES).set(bytes as f64);
}

/// A singleton claim taken (`1.0`) or given up (`-1.0`).
pub(crate) fn claims_held(delta: f64) {
    ::metrics::gauge!(CLAIMS_HELD).increment(delta);
}

/// A claim lost while its run went on.
pub(crate) fn claim_lost(class: &'static str) {
    ::metrics::counter!(CLAIMS_LOST, "class" => class).increment(1);
}

/// A run silent past its `stall_after`: `warned` or `cancelled`.
pub(crate) fn stalled(class: &'static str, action: &'static str) {
    ::metrics::counter!(STALLS, "class" => class, "action" => action).increment(1);
}
