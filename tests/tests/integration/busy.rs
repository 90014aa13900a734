//! Busy policies (`#[job_agent(on_busy = "...")]`), on one agent and across two agents
//! sharing a store.

use std::time::Duration;

use jobagent::{AgentOptions, JobAgent, JobContext, JobError, job_agent};
use serde_json::json;
use tests::center::ConsoleInfo;
use tests::pg::TestDb;
use tests::service::TestService;
use tests::wait;

/// Sleeps `ms` (parameter), honouring cancellation.
async fn nap(cx: &JobContext) -> Result<(), JobError> {
    let ms: u64 = cx.param("ms")?.unwrap_or(0);
    cx.console().info(format!("run {} started", cx.job_id()));
    cx.sleep(Duration::from_millis(ms)).await
}

#[job_agent(on_busy = "discard")]
#[derive(Default)]
struct DiscardJob;
impl JobAgent for DiscardJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        nap(&cx).await
    }
}

#[job_agent(on_busy = "replace")]
#[derive(Default)]
struct ReplaceJob;
impl JobAgent for ReplaceJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        nap(&cx).await
    }
}

#[job_agent(on_busy = "queue")]
#[derive(Default)]
struct QueueJob;
impl JobAgent for QueueJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        nap(&cx).await
    }
}

const DISCARD: &str = "integration::busy::DiscardJob";
const REPLACE: &str = "integration::busy::ReplaceJob";
const QUEUE: &str = "integration::busy::QueueJob";

async fn two_agents(db: &TestDb) -> (TestService, TestService) {
    let options = |name: &str| {
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .instance(name)
    };
    (
        TestService::start_with(options("busy-a")).await,
        TestService::start_with(options("busy-b")).await,
    )
}

#[tokio::test]
async fn discard_answers_200_and_reports_the_run_skipped() {
    let db = TestDb::new().await;
    let (a, b) = two_agents(&db).await;
    a.center()
        .run(DISCARD, "d1")
        .param(json!({"ms": 2000}))
        .send()
        .await
        .assert_status(200);
    for (service, id) in [(&a, "d2"), (&b, "d3")] {
        let console = ConsoleInfo::for_job(id);
        let reply = service
            .center()
            .run(DISCARD, id)
            .console(console.clone())
            .send()
            .await;
        reply.assert_status(200);
        assert!(
            reply.body.contains("discarded") && reply.body.contains("JobId:d1"),
            "{}",
            reply.body
        );
        let result = wait::result(&db, id, Duration::from_secs(5)).await;
        assert_eq!(result["R"], "ok", "{result}");
        let lines = db.console_lines(&console.set_key, &console.hash_key).await;
        assert!(
            lines
                .iter()
                .any(|l| l["s"].as_str().unwrap_or("").contains("run discarded")),
            "{lines:?}"
        );
    }
    assert!(db.result("d1").await.is_none(), "the running one goes on");
    assert_eq!(
        wait::result(&db, "d1", Duration::from_secs(5)).await["R"],
        "ok"
    );
}

#[tokio::test]
async fn replace_stops_the_running_instance_and_starts_the_new_run() {
    let db = TestDb::new().await;
    let (a, b) = two_agents(&db).await;
    a.center()
        .run(REPLACE, "p1")
        .param(json!({"ms": 30000}))
        .send()
        .await
        .assert_status(200);
    // Replaced from the other replica.
    let reply = b
        .center()
        .run(REPLACE, "p2")
        .param(json!({"ms": 30000}))
        .send()
        .await;
    reply.assert_status(200);
    assert!(
        reply.body.contains("replacing") && reply.body.contains("JobId:p1"),
        "{}",
        reply.body
    );
    assert_eq!(
        wait::result(&db, "p1", Duration::from_secs(5)).await["R"],
        "ok",
        "stopped on request"
    );
    b.center()
        .wait_detail(REPLACE, Duration::from_secs(10), |r| {
            r.body.contains("JobId: p2") && r.body.contains("Status: Running")
        })
        .await;
    // Replaced on the same replica.
    b.center()
        .run(REPLACE, "p3")
        .param(json!({"ms": 100}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "p2", Duration::from_secs(5)).await["R"],
        "ok"
    );
    assert_eq!(
        wait::result(&db, "p3", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

#[tokio::test]
async fn queue_runs_them_one_after_another_in_order() {
    let db = TestDb::new().await;
    let (a, b) = two_agents(&db).await;
    a.center()
        .run(QUEUE, "q1")
        .param(json!({"ms": 600}))
        .send()
        .await
        .assert_status(200);
    let reply = a
        .center()
        .run(QUEUE, "q2")
        .param(json!({"ms": 300}))
        .send()
        .await;
    reply.assert_status(200);
    assert!(
        reply.body.contains("queued behind JobId:q1"),
        "{}",
        reply.body
    );
    a.center()
        .run(QUEUE, "q3")
        .param(json!({"ms": 100}))
        .send()
        .await
        .assert_status(200);
    // Queued at the other replica while it runs here.
    b.center()
        .run(QUEUE, "q4")
        .param(json!({"ms": 10}))
        .send()
        .await
        .assert_status(200);
    for id in ["q1", "q2", "q3", "q4"] {
        let r = wait::result(&db, id, Duration::from_secs(20)).await;
        assert_eq!(r["R"], "ok", "{id}: {r}");
    }
    // Results land in the order the runs ended: q1 first, and this replica's queue in order.
    let q = "SELECT key FROM hangfire.hash WHERE key LIKE '\\_agent\\_result\\_q%' ORDER BY id";
    let order: Vec<String> = db
        .client()
        .query(q, &[])
        .await
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pos = |id: &str| {
        order
            .iter()
            .position(|k| k == &format!("_agent_result_{id}"))
            .unwrap_or(usize::MAX)
    };
    assert_eq!(order.len(), 4, "{order:?}");
    assert!(pos("q1") == 0 && pos("q2") < pos("q3"), "{order:?}");
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let service = TestService::start().await;
    let center = service.center();
    center
        .run(QUEUE, "b0")
        .param(json!({"ms": 3000}))
        .send()
        .await
        .assert_status(200);
    for i in 1..=16 {
        center
            .run(QUEUE, &format!("b{i}"))
            .param(json!({"ms": 1}))
            .send()
            .await
            .assert_status(200);
    }
    let reply = center.run(QUEUE, "b17").send().await;
    reply.assert_err(500);
    assert!(reply.body.contains("16"), "{}", reply.body);
    center.stop(QUEUE, "bstop").send().await.assert_status(200);
}
