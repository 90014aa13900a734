//! Faults on the dispatch path (issue 12): requests dropped while a singleton is being
//! claimed, stops of runs that ignore cancellation (in parallel, through another replica, by
//! the `replace` policy), and shutdown with the store black-holed.

use std::time::{Duration, Instant};

use jobagent::{AgentOptions, JobAgent, JobContext, JobError, job_agent};
use serde_json::json;
use tests::pg::TestDb;
use tests::proxy::Proxy;
use tests::service::TestService;
use tests::wait;

const SINGLETON: &str = "example_agent::jobs::TestJob";
const STUBBORN: &str = "integration::faults_dispatch::StubbornTransientJob";
const STUBBORN_SINGLETON: &str = "integration::faults_dispatch::StubbornJob";
const STUBBORN_REPLACE: &str = "integration::faults_dispatch::StubbornReplaceJob";

/// Ignores its cancellation token for `ms` milliseconds (default a minute).
async fn ignore_cancellation(cx: &JobContext) -> Result<(), JobError> {
    let ms: u64 = cx.param("ms")?.unwrap_or(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(())
}

#[job_agent(transient)]
#[derive(Default)]
struct StubbornTransientJob;

impl JobAgent for StubbornTransientJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        ignore_cancellation(&cx).await
    }
}

#[job_agent]
#[derive(Default)]
struct StubbornJob;

impl JobAgent for StubbornJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        ignore_cancellation(&cx).await
    }
}

#[job_agent(on_busy = "replace")]
#[derive(Default)]
struct StubbornReplaceJob;

impl JobAgent for StubbornReplaceJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        ignore_cancellation(&cx).await
    }
}

/// A request the client gives up on while the agent waits for the store is dropped by the
/// server; whichever `.await` it was at, it leaves no claim, no count and no run behind.
#[tokio::test(flavor = "multi_thread")]
async fn fifteen_requests_dropped_mid_claim_leave_nothing_behind() {
    let db = TestDb::new().await;
    let (proxy, conn) = Proxy::in_front_of(&db).await;
    // One run at a time in the whole agent: a leaked count would refuse every later run.
    let options = AgentOptions::from_lookup(|k| match k {
        "JOBAGENT_STORE" => Some(conn.clone()),
        "JOBAGENT_MAX_RUNNING" => Some("1".to_owned()),
        _ => None,
    })
    .expect("valid options");
    let service = TestService::start_with(options).await;
    let center = service.center();
    center
        .run(SINGLETON, "warm")
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "warm", Duration::from_secs(10)).await["R"],
        "ok"
    );
    proxy.black_hole();
    let mut dropped = 0;
    for i in 1..=15 {
        // The center would wait a minute (Timeout 60000, so the claim's own deadline is
        // 45 s): the client gives up after 300 ms. A request that arrives while the server
        // is still tearing down the previous one may be refused as busy (501); none starts.
        let request = center
            .run(SINGLETON, &format!("d{i}"))
            .item_field("Timeout", json!(60_000))
            .try_send();
        match tokio::time::timeout(Duration::from_millis(300), request).await {
            Err(_) => dropped += 1,
            Ok(Ok(reply)) => {
                reply.assert_err(501);
            }
            Ok(Err(e)) => panic!("request d{i} failed: {e}"),
        }
    }
    println!("{dropped} of 15 requests were dropped mid-claim");
    assert!(dropped >= 8, "only {dropped} requests reached the claim");
    assert_eq!(service.agent().running(), 0, "a dropped request left a run");
    proxy.restore();
    // Well before the 45 s claim deadline: only the drops can have freed the class.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = center
            .run(SINGLETON, "after")
            .item_field("Timeout", json!(60_000))
            .send()
            .await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dropped request left the class claimed or counted: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        wait::result(&db, "after", Duration::from_secs(10)).await["R"],
        "ok"
    );
    for i in 1..=15 {
        assert_eq!(db.result(&format!("d{i}")).await, None, "d{i} ran");
    }
}

/// A stop of many transient instances that all ignore it takes about two graces, not two
/// graces per instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_of_many_stubborn_instances_is_bounded_as_a_whole() {
    let db = TestDb::new().await;
    let grace = Duration::from_millis(1000);
    let service = TestService::start_with(
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .timeout_grace(grace),
    )
    .await;
    let center = service.center();
    for i in 1..=5 {
        center
            .run(STUBBORN, &format!("t{i}"))
            .send()
            .await
            .assert_status(200);
    }
    let asked = Instant::now();
    center
        .stop(STUBBORN, "t-stop")
        .send()
        .await
        .assert_status(200);
    let stop = wait::result(&db, "t-stop", Duration::from_secs(30)).await;
    let took = asked.elapsed();
    println!("stop of 5 stubborn instances with a {grace:?} grace took {took:?}");
    assert_eq!(stop["R"], "err", "{stop}");
    // Serially this is 5 × 2 × grace = 10 s.
    assert!(took < grace * 5, "the stop took {took:?}");
    for i in 1..=5 {
        wait::failure(&db, &format!("t{i}"), Duration::from_secs(5), "stuck").await;
    }
    assert_eq!(service.agent().running(), 0);
}

/// A stop that reaches the run through another replica gives up on a run that ignores it,
/// as a local stop does: reported stuck, the class freed on its replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_stop_gives_up_on_a_run_that_ignores_it() {
    let db = TestDb::new().await;
    let grace = Duration::from_millis(300);
    let options = |name: &str| {
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .instance(name)
            .timeout_grace(grace)
    };
    let a = TestService::start_with(options("replica-a")).await;
    let b = TestService::start_with(options("replica-b")).await;
    a.center()
        .run(STUBBORN_SINGLETON, "r1")
        .send()
        .await
        .assert_status(200);
    b.center()
        .stop(STUBBORN_SINGLETON, "r1-stop")
        .send()
        .await
        .assert_status(200);
    let stop = wait::result(&db, "r1-stop", Duration::from_secs(15)).await;
    assert_eq!(stop["R"], "err", "{stop}");
    assert!(
        stop["E"].as_str().unwrap_or_default().contains("ignored"),
        "{stop}"
    );
    wait::failure(&db, "r1", Duration::from_secs(5), "stuck").await;
    assert_eq!(a.agent().running(), 0);
    // The class is free again on both replicas.
    a.center()
        .run(STUBBORN_SINGLETON, "r2")
        .param(json!({"ms": 10}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "r2", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

/// `replace` gives up on the running instance that ignores its stop, and starts the new run.
#[tokio::test(flavor = "multi_thread")]
async fn replace_gives_up_on_an_instance_that_ignores_its_stop() {
    let db = TestDb::new().await;
    let service = TestService::start_with(
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .timeout_grace(Duration::from_millis(300)),
    )
    .await;
    let center = service.center();
    center
        .run(STUBBORN_REPLACE, "p1")
        .send()
        .await
        .assert_status(200);
    center
        .run(STUBBORN_REPLACE, "p2")
        .param(json!({"ms": 10}))
        .send()
        .await
        .assert_status(200);
    wait::failure(&db, "p1", Duration::from_secs(10), "stuck").await;
    assert_eq!(
        wait::result(&db, "p2", Duration::from_secs(15)).await["R"],
        "ok"
    );
}

/// With the store black-holed, shutdown still ends within its bound plus the reporting
/// margin, and says what it could not write.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_a_black_holed_store_is_bounded() {
    let db = TestDb::new().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let bound = Duration::from_millis(1000);
    let service = TestService::start_with(
        AgentOptions::new()
            .store(via_proxy, "hangfire", 7.0)
            .shutdown_timeout(bound)
            .timeout_grace(Duration::from_millis(200)),
    )
    .await;
    let center = service.center();
    for i in 1..=3 {
        center
            .run(STUBBORN, &format!("s{i}"))
            .send()
            .await
            .assert_status(200);
    }
    proxy.black_hole();
    // The shutdown bound, the 2 s given to the results of stuck runs, the 3 s given to the
    // background tasks (releasing the instance name, lost runs' reports; both wait on the
    // black-holed store), and a margin: docs/operations.md's "shutdown + 5 s".
    let took = service.shutdown(Duration::from_secs(12)).await;
    println!("shutdown with a black-holed store took {took:?} (bound {bound:?})");
    assert!(took < bound + Duration::from_millis(5500), "{took:?}");
}
