//! Console lines mirrored to the log (`JOBAGENT_CONSOLE_LOG`) carry the run's `trace_id`
//! wherever they are written from (issue 25, item 9): docs/operations.md promises that every
//! log line of a run does. Lines the runtime writes into a run's console from outside the
//! run's task (a stop's "stop requested") were emitted outside the run's span.
//!
//! The trace id is the caller's, from a W3C `traceparent` among the job's headers, which the
//! center passes through `x-job-agent-header` (yuzd/Hangfire.HttpJob
//! `Server/Hangfire.HttpJob/Server/HttpJob.cs`, `PrepareHttpRequestMessage`).

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use tests::center::ConsoleInfo;
use tests::logs::Logs;
use tests::service::TestService;
use tests::stores::AnyStore;

const HANG: &str = "example_agent::jobs::TestHangJob";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The captured log lines of target `jobagent::console` for job `job_id` (by the event's
/// own `job_id` field, which the mirror writes whatever span it is in).
fn console_lines(logs: &Logs, job_id: &str) -> Vec<String> {
    let field = format!("job_id=\"{job_id}\"");
    logs.text()
        .lines()
        .filter(|l| l.contains("jobagent::console:"))
        .filter(|l| l.contains(&field))
        .map(str::to_owned)
        .collect()
}

/// Waits until a mirrored line of `job_id` contains `text`; returns the lines.
async fn until_mirrored(logs: &Logs, job_id: &str, text: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = console_lines(logs, job_id);
        if lines.iter().any(|l| l.contains(text)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no mirrored line of {job_id} with {text:?} within 20 s: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// A hang job started and stopped with a `traceparent`: every mirrored line of the run, the
// job's own and the "stop requested" line the stop writes into the run's console from the
// stop's task, carries the run's trace id.
#[tokio::test(flavor = "multi_thread")]
async fn mirrored_console_lines_carry_the_runs_trace_id() {
    let logs = Logs::global();
    let db = AnyStore::postgresql().await;
    let service = TestService::start_with(AgentOptions::new().console_log(true)).await;
    let center = service.center().with_storage(&db.storage());
    center
        .run(HANG, "ct-run")
        .header("traceparent", TRACEPARENT)
        .console(ConsoleInfo::for_job("ct-run"))
        .send()
        .await
        .assert_status(200);
    until_mirrored(&logs, "ct-run", "running until stopped").await;
    center
        .stop(HANG, "ct-stop")
        .header("traceparent", TRACEPARENT)
        .console(ConsoleInfo::for_job("ct-stop"))
        .send()
        .await
        .assert_status(200);
    let lines = until_mirrored(&logs, "ct-run", "stop requested").await;
    db.wait_result("ct-run", Duration::from_secs(20)).await;
    let lines = console_lines(&logs, "ct-run").into_iter().chain(lines);
    let mut checked = 0;
    for line in lines {
        assert!(
            line.contains(&format!("trace_id={TRACE}")),
            "a mirrored line of the run without its trace id: {line}"
        );
        checked += 1;
    }
    assert!(checked >= 2, "{checked}");
    // The stop's own console lines are mirrored in the stop dispatch's span.
    for line in until_mirrored(&logs, "ct-stop", "stop done").await {
        assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");
    }
}
