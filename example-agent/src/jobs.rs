//! The service's jobs: its business jobs and the demo jobs the docs, tests and benchmarks use.

use std::sync::Arc;
use std::time::Duration;

use agent_sdk::{JobAgent, JobContext, JobError, job_agent};
use serde::Deserialize;

use crate::outbox::{Outbox, now_secs};

/// Sends every message that is due. Transient: overlapping runs each take what is due.
/// Built with the service's outbox, given to the agent as state (`AgentOptions::state`).
#[job_agent(
    transient,
    constructor = "SendDueMessagesJob::new",
    register_id = "outbox-send",
    register_name = "Send due messages",
    register_cron = "*/5 * * * *"
)]
pub struct SendDueMessagesJob {
    outbox: Arc<Outbox>,
}

impl SendDueMessagesJob {
    /// The job on the service's outbox.
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self { outbox }
    }
}

impl JobAgent for SendDueMessagesJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let due = self.outbox.due(now_secs());
        cx.console().info(format!("{} message(s) due", due.len()));
        for message in due {
            if cx.is_cancelled() {
                return Err(JobError::cancelled());
            }
            // A real service calls its SMS or mail gateway here.
            cx.console()
                .info(format!("sent message {} to {}", message.id, message.to));
            self.outbox.mark_sent(message.id, now_secs());
        }
        Ok(())
    }
}

/// Removes sent messages older than `Hour` hours (default 48). It reads the outbox from its
/// context (`JobContext::state`), the other way to reach state.
#[job_agent(
    class = "MsgDevOps.Job.CleanupJob,MsgDevOps",
    register_id = "outbox-cleanup",
    register_name = "Clean up sent messages",
    register_cron = "0 3 * * *"
)]
#[derive(Default)]
pub struct CleanupSentJob;

impl JobAgent for CleanupSentJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let hours: u64 = cx.param("Hour")?.unwrap_or(48);
        let before = now_secs().saturating_sub(hours * 3600);
        let removed = cx.state::<Arc<Outbox>>()?.remove_sent_before(before);
        cx.console().info(format!(
            "removed {removed} message(s) sent more than {hours} h ago"
        ));
        Ok(())
    }
}

/// The demo jobs' parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TestParams {
    /// How many console lines to write.
    pub lines: u64,
    /// Pad each line to this many characters.
    pub line_len: usize,
    /// Pad line number `long_line` (from 1; 0: none) to `long_len` characters instead.
    pub long_line: u64,
    /// See `long_line`.
    pub long_len: usize,
    /// Total time to spend, spread evenly between the lines.
    pub sleep_ms: u64,
    /// Also drive a progress bar from 0 to 100.
    pub progress: bool,
    /// End with an error.
    pub fail: bool,
    /// Panic (to show that a panicking job does not take the agent down).
    pub panic: bool,
}

/// Writes `line <n>` padded with `.` to `len` characters.
pub fn demo_line(n: u64, len: usize) -> String {
    let mut line = format!("line {n}");
    while line.len() < len {
        line.push('.');
    }
    line
}

async fn run_demo(cx: &JobContext) -> Result<(), JobError> {
    let p: TestParams = cx.params()?;
    // The job's own log line (at debug: the benchmarks dispatch it by the hundred thousand):
    // it belongs to the run's span (class, job id, trace id).
    tracing::debug!(lines = p.lines, sleep_ms = p.sleep_ms, "demo job starting");
    let bar = if p.progress {
        Some(cx.console().progress_bar("progress")?)
    } else {
        None
    };
    if let Some(token) = cx.fencing_token() {
        cx.console().info(format!("fencing token {token}"));
    }
    let start = tokio::time::Instant::now();
    let total = Duration::from_millis(p.sleep_ms);
    if p.lines == 0 && !total.is_zero() {
        cx.sleep(total).await?;
    }
    for n in 1..=p.lines {
        if !total.is_zero() {
            let at = start + total.mul_f64(n as f64 / p.lines as f64);
            tokio::select! {
                _ = cx.cancelled() => return Err(JobError::cancelled()),
                _ = tokio::time::sleep_until(at) => {}
            }
        } else if cx.is_cancelled() {
            return Err(JobError::cancelled());
        }
        let len = if n == p.long_line {
            p.long_len
        } else {
            p.line_len
        };
        cx.console().info(demo_line(n, len));
        if let Some(bar) = &bar {
            bar.set_ratio(n, p.lines);
        }
    }
    if let Some(bar) = &bar {
        bar.set(100.0);
    }
    if p.panic {
        panic!("panic requested by the parameter");
    }
    if p.fail {
        return Err(JobError::msg("failed on request (fail=true)"));
    }
    Ok(())
}

/// Demo singleton job. Parameters: see [`TestParams`].
#[job_agent]
#[derive(Default)]
pub struct TestJob;

impl JobAgent for TestJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        run_demo(&cx).await
    }
}

/// Demo transient job: a new instance per run. Parameters: see [`TestParams`].
#[job_agent(transient)]
#[derive(Default)]
pub struct TestTransientJob;

impl JobAgent for TestTransientJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        run_demo(&cx).await
    }
}

/// Demo hang job: writes a line, returns, and stays Running until stopped.
#[job_agent(hang)]
#[derive(Default)]
pub struct TestHangJob;

impl JobAgent for TestHangJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        cx.console().info("consumer started; running until stopped");
        Ok(())
    }
}

/// Demo job under the stall watchdog: a run silent for 1 s (no console line, no progress
/// change) is warned about and cancelled. Parameters: see [`TestParams`] (`lines: 2,
/// sleep_ms: 5000` goes silent 2.5 s).
#[job_agent(transient, stall_after = "1s", on_stall = "cancel")]
#[derive(Default)]
pub struct TestWatchedJob;

impl JobAgent for TestWatchedJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        run_demo(&cx).await
    }
}

/// Demo job under a warn-only stall watchdog (1 s): a silent run is warned about, then goes
/// on. Parameters: see [`TestParams`].
#[job_agent(transient, stall_after = "1s")]
#[derive(Default)]
pub struct TestWarnedJob;

impl JobAgent for TestWarnedJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        run_demo(&cx).await
    }
}

/// Demo singleton whose runs queue behind a running one (busy policy `queue`). Parameters:
/// see [`TestParams`].
#[job_agent(on_busy = "queue")]
#[derive(Default)]
pub struct TestQueuedJob;

impl JobAgent for TestQueuedJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        run_demo(&cx).await
    }
}
