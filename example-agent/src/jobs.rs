//! The service's jobs: its business jobs and the demo jobs the docs, tests and benchmarks use.

use std::sync::Arc;
use std::time::Duration;

use jobagent::{JobAgent, JobContext, JobError, job_agent};
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

/// The jobs tested in-process with `jobagent::testing`: no center, no store, no database.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use jobagent::ConsoleColor;
    use jobagent::testing::TestRun;
    use serde_json::json;

    use super::*;
    use crate::outbox::{NewMessage, Outbox};

    fn queue(outbox: &Outbox, to: &str, delay_secs: u64) -> u64 {
        let new = NewMessage {
            to: to.to_owned(),
            text: "hello".to_owned(),
            delay_secs,
        };
        outbox.queue(new).id
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn send_due_messages_sends_what_is_due_and_leaves_the_rest() {
        let outbox = Arc::new(Outbox::default());
        let first = queue(&outbox, "+31 6 1111 1111", 0);
        let second = queue(&outbox, "ada@example.org", 0);
        let later = queue(&outbox, "+31 6 2222 2222", 3600);
        let out = TestRun::new::<SendDueMessagesJob>()
            .state(outbox.clone())
            .run()
            .await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(
            out.texts(),
            [
                "2 message(s) due".to_owned(),
                format!("sent message {first} to +31 6 1111 1111"),
                format!("sent message {second} to ada@example.org"),
            ]
        );
        let sent: Vec<(u64, bool)> = outbox
            .list()
            .iter()
            .map(|m| (m.id, m.sent_at.is_some()))
            .collect();
        assert_eq!(sent, [(first, true), (second, true), (later, false)]);

        // A second run finds nothing due.
        let out = TestRun::new::<SendDueMessagesJob>()
            .state(outbox)
            .run()
            .await;
        assert_eq!(out.texts(), ["0 message(s) due"]);
    }

    /// The agent refuses to start without the outbox its constructor takes; so does a test run.
    #[tokio::test(flavor = "multi_thread")]
    #[should_panic(
        expected = "takes state of type `alloc::sync::Arc<example_agent::outbox::Outbox>`"
    )]
    async fn send_due_messages_needs_the_outbox() {
        let _ = TestRun::new::<SendDueMessagesJob>().run().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cleanup_removes_messages_sent_more_than_hour_hours_ago() {
        let outbox = Arc::new(Outbox::default());
        let old = queue(&outbox, "old", 0);
        let recent = queue(&outbox, "recent", 0);
        let unsent = queue(&outbox, "unsent", 0);
        outbox.mark_sent(old, now_secs() - 5 * 3600);
        outbox.mark_sent(recent, now_secs() - 3600);
        // A number sent as a string, as centers often do.
        let out = TestRun::new::<CleanupSentJob>()
            .param(json!({ "Hour": "2" }))
            .state(outbox.clone())
            .run()
            .await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(out.texts(), ["removed 1 message(s) sent more than 2 h ago"]);
        let left: Vec<u64> = outbox.list().iter().map(|m| m.id).collect();
        assert_eq!(left, [recent, unsent]);
    }

    /// It reads the outbox during its run: without one, the run fails saying what to add.
    #[tokio::test(flavor = "multi_thread")]
    async fn cleanup_without_the_outbox_fails_the_run_saying_what_to_add() {
        let out = TestRun::new::<CleanupSentJob>().run().await;
        let err = out.result().expect_err("no outbox");
        assert!(
            err.contains("add it with `AgentOptions::state(value)`"),
            "{err}"
        );
        let last = out.console_lines().pop().expect("a line");
        assert_eq!(last.color, Some(ConsoleColor::ERROR));
        assert_eq!(last.text, format!("job failed: {err}"));

        let out = TestRun::new::<CleanupSentJob>()
            .param(json!({ "Hour": "soon" }))
            .state(Arc::new(Outbox::default()))
            .run()
            .await;
        let err = out.result().expect_err("not a number");
        assert!(err.starts_with("parameter `Hour`: invalid type"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_demo_job_writes_its_lines_and_progress_or_fails_on_request() {
        let out = TestRun::new::<TestJob>()
            .param(json!({ "lines": 3, "line_len": 8, "progress": true }))
            .run()
            .await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(out.texts(), ["line 1..", "line 2..", "line 3.."]);
        let [bar] = out.progress() else {
            panic!("one bar: {:?}", out.progress())
        };
        assert_eq!((bar.name.as_deref(), bar.value), (Some("progress"), 100.0));

        let out = TestRun::new::<TestJob>()
            .param(json!({ "lines": 1, "fail": true }))
            .run()
            .await;
        assert_eq!(out.result(), Err("failed on request (fail=true)"));

        let out = TestRun::new::<TestTransientJob>()
            .param(json!({ "panic": true }))
            .run()
            .await;
        assert_eq!(
            out.result(),
            Err("the job panicked: panic requested by the parameter")
        );
    }

    /// Paused clock: the minute the job would sleep takes no time.
    #[tokio::test(start_paused = true)]
    async fn a_demo_run_longer_than_its_agent_timeout_is_reported_as_a_timeout() {
        let out = TestRun::new::<TestTransientJob>()
            .param(json!({ "lines": 2, "sleep_ms": 60_000 }))
            .timeout(Duration::from_secs(45))
            .run()
            .await;
        assert_eq!(
            out.result(),
            Err("timeout: the job ran longer than its AgentTimeout of 45000 ms")
        );
        // The first line was due at 30 s, the second at 60 s.
        assert_eq!(
            out.texts(),
            [
                "line 1",
                "job failed: timeout: the job ran longer than its AgentTimeout of 45000 ms"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_hang_job_runs_until_stopped_and_is_reported_stopped() {
        let run = TestRun::new::<TestHangJob>().start().await;
        let started = run
            .wait_for_line(|l| l.text == "consumer started; running until stopped")
            .await;
        assert!(started.is_some());
        let answer = run.stop().await.expect("a running job is stopped");
        assert_eq!(
            answer,
            "JobClass:example_agent::jobs::TestHangJob stop success!"
        );
        let out = run.finish().await;
        assert_eq!(out.result(), Ok(()));
        let [stop] = out.stops() else {
            panic!("one stop: {:?}", out.stops())
        };
        assert_eq!(stop.result(), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stop_ends_a_long_demo_run_which_is_reported_stopped() {
        let run = TestRun::new::<TestJob>()
            .param(json!({ "lines": 2, "sleep_ms": 600_000 }))
            .start()
            .await;
        run.stop().await.expect("stopped");
        let out = run.finish().await;
        assert_eq!(out.result(), Ok(()));
        assert!(out.texts().is_empty(), "{:?}", out.texts());
    }
}
