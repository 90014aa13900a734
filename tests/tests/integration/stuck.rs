//! A job that never honours cancellation cannot wedge the agent: stop, timeout and shutdown
//! have bounded waits, and the stuck run is reported as such.

use std::time::{Duration, Instant};

use jobagent::{AgentOptions, JobAgent, JobContext, JobError, job_agent};
use serde_json::json;
use tests::pg::TestDb;
use tests::service::TestService;
use tests::wait;

/// Ignores its cancellation token for `ms` milliseconds.
#[job_agent]
#[derive(Default)]
struct StubbornJob;

impl JobAgent for StubbornJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let ms: u64 = cx.param("ms")?.unwrap_or(60_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

const STUBBORN: &str = "integration::stuck::StubbornJob";

fn options(db: &TestDb) -> AgentOptions {
    AgentOptions::new()
        .store(db.connection_string(), "hangfire", 7.0)
        .timeout_grace(Duration::from_millis(300))
        .shutdown_timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn a_stop_the_job_ignores_is_reported_stuck_and_frees_the_singleton() {
    let db = TestDb::new().await;
    let service = TestService::start_with(options(&db)).await;
    let center = service.center();
    center.run(STUBBORN, "s1").send().await.assert_status(200);
    center
        .stop(STUBBORN, "s1-stop")
        .send()
        .await
        .assert_status(200);
    wait::failure(&db, "s1", Duration::from_secs(5), "stuck").await;
    let stop = wait::result(&db, "s1-stop", Duration::from_secs(5)).await;
    assert_eq!(stop["R"], "err", "{stop}");
    // The singleton is free again.
    center
        .run(STUBBORN, "s2")
        .param(json!({"ms": 10}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "s2", Duration::from_secs(5)).await["R"],
        "ok"
    );
}

#[tokio::test]
async fn a_timeout_the_job_ignores_is_bounded() {
    let db = TestDb::new().await;
    let service = TestService::start_with(options(&db)).await;
    let sent = Instant::now();
    service
        .center()
        .run(STUBBORN, "t1")
        .timeout_ms(100)
        .send()
        .await
        .assert_status(200);
    wait::failure(
        &db,
        "t1",
        Duration::from_secs(5),
        "did not stop within 300 ms",
    )
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "reported after {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn shutdown_is_bounded_and_reports_the_stuck_run() {
    let db = TestDb::new().await;
    let service = TestService::start_with(options(&db)).await;
    service
        .center()
        .run(STUBBORN, "u1")
        .send()
        .await
        .assert_status(200);
    let took = service.shutdown(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    wait::failure(
        &db,
        "u1",
        Duration::from_secs(5),
        "did not stop within 500 ms",
    )
    .await;
}
