//! Store outages that give no error (issue 12): the agent's own store black-holed (the
//! connection stays open, nothing is forwarded, nothing is reset) in the middle of a job and
//! during shutdown, and file paths in a store the center sends.
//!
//! The center waits `Timeout` ms for an answer, 5 s when the job's `Timeout` is below 1
//! (yuzd/Hangfire.HttpJob `Server/Hangfire.HttpJob/Server/HttpJob.cs`,
//! `PrepareHttpRequestMessage` / `GetAgentJobDetail`): every answer during an outage must
//! come sooner, or the center fails the dispatch while the agent runs it.

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::json;
use tests::center::{ConsoleInfo, Storage};
use tests::pg::TestDb;
use tests::proxy::Proxy;
use tests::service::TestService;
use tests::stores::{AnyStore, demo_numbers};

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const HANG: &str = "example_agent::jobs::TestHangJob";

/// The center's default HTTP timeout (the job's `Timeout` below 1), and the margin under it
/// that each answer during an outage must keep.
const CENTER_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// Polls until `job_id` has a result field, then says how many it has.
async fn result_count(db: &AnyStore, job_id: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let fields = db.result_fields(job_id).await;
        if !fields.is_empty() {
            return fields.len();
        }
        assert!(
            Instant::now() < deadline,
            "no result for {job_id} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// A store black-holed for 20 s in the middle of a 25 s job: run, detail, heartbeat and stop
// are answered within the center's timeout all along; once the store is back every line
// lands, in order, and every accepted dispatch has exactly one result.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_black_holed_mid_job_delays_lines_and_results_but_no_answer() {
    black_holed_mid_job(AnyStore::postgresql().await).await;
}

/// The same on MySQL (Hangfire.MySqlStorage) and Redis (Hangfire.Redis.StackExchange).
#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_store_black_holed_mid_job_delays_lines_and_results_but_no_answer() {
    black_holed_mid_job(AnyStore::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_store_black_holed_mid_job_delays_lines_and_results_but_no_answer() {
    black_holed_mid_job(AnyStore::redis().await).await;
}

async fn black_holed_mid_job(db: AnyStore) {
    let (proxy, via) = db.behind_proxy().await;
    let (_, kind, prefix) = db.local();
    let service = TestService::start_with(
        AgentOptions::new()
            .store(via.hangfire_db, prefix, 7.0)
            .store_type(kind),
    )
    .await;
    let center = service.center();

    let long = ConsoleInfo::for_job("bh-long");
    center
        .run(TRANSIENT, "bh-long")
        .param(json!({"lines": 500, "sleep_ms": 25000}))
        .console(long.clone())
        .send()
        .await
        .assert_status(200);
    center
        .run(HANG, "bh-hang")
        .console(ConsoleInfo::for_job("bh-hang"))
        .send()
        .await
        .assert_status(200);
    // Mid-job: some lines have landed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while demo_numbers(&db.console_lines(&long.set_key, &long.hash_key).await).len() < 20 {
        assert!(
            Instant::now() < deadline,
            "the job's first lines never landed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.black_hole();
    let holed_at = Instant::now();
    let mut accepted = vec!["bh-long", "bh-hang"];
    let mut worst = Duration::ZERO;

    let (reply, took) = center
        .run(TRANSIENT, "bh-new")
        .param(json!({"lines": 5, "sleep_ms": 0}))
        .console(ConsoleInfo::for_job("bh-new"))
        .send_timed()
        .await;
    println!("run during the black hole: {} in {took:?}", reply.status);
    assert!(took < ANSWER_WITHIN, "run answered after {took:?}");
    reply.assert_status(200);
    accepted.push("bh-new");
    worst = worst.max(took);

    let (reply, took) = center.detail(TRANSIENT).send_timed().await;
    println!("detail during the black hole: {} in {took:?}", reply.status);
    assert!(took < ANSWER_WITHIN, "detail answered after {took:?}");
    reply.assert_status(200);
    worst = worst.max(took);

    let (reply, took) = center.heartbeat().send_timed().await;
    println!(
        "heartbeat during the black hole: {} in {took:?}",
        reply.status
    );
    assert!(took < ANSWER_WITHIN, "heartbeat answered after {took:?}");
    reply.assert_status(200);
    worst = worst.max(took);

    let (reply, took) = center
        .stop(HANG, "bh-stop")
        .console(ConsoleInfo::for_job("bh-stop"))
        .send_timed()
        .await;
    println!(
        "stop during the black hole: {} in {took:?}: {}",
        reply.status, reply.body
    );
    assert!(took < ANSWER_WITHIN, "stop answered after {took:?}");
    assert!(
        reply.status == 200 || (reply.status == 500 && reply.is_err_body()),
        "{} {}",
        reply.status,
        reply.body
    );
    if reply.status == 200 {
        accepted.push("bh-stop");
    }
    worst = worst.max(took);
    assert!(worst < CENTER_TIMEOUT);

    // The outage lasts 20 s, whatever the requests above took.
    tokio::time::sleep_until((holed_at + Duration::from_secs(20)).into()).await;
    proxy.restore();
    let restored_at = Instant::now();

    let r = db.wait_result("bh-long", Duration::from_secs(90)).await;
    assert_eq!(r["R"], "ok", "{r}");
    let lines = db.console_lines(&long.set_key, &long.hash_key).await;
    let numbers = demo_numbers(&lines);
    assert_eq!(
        numbers,
        (1..=500).collect::<Vec<u64>>(),
        "every line, once, in order"
    );
    for id in &accepted {
        assert_eq!(
            result_count(&db, id, Duration::from_secs(60)).await,
            1,
            "{id} is reported exactly once"
        );
    }
    println!(
        "{}: worst answer during the outage {worst:?}; results complete {:?} after restore",
        db.kind(),
        restored_at.elapsed()
    );
    assert_eq!(service.agent().running(), 0);
}

// A store black-holed before the first run: see store_first_reach.rs (the run is refused
// with a 500 within the center's timeout, and the next run, once the store answers, lands).

// Shutdown with the store black-holed ends within `shutdown_timeout` plus a small margin:
// no result or console flush may hold it (Agent::shutdown, as SIGTERM runs it).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_a_black_holed_store_ends_within_its_timeout() {
    const SHUTDOWN: Duration = Duration::from_secs(3);
    // The 2 s given to the results of stuck runs and the 3 s given to the background tasks
    // (instance-name release, lost runs' reports; both wait on the black-holed store):
    // docs/operations.md's "shutdown + 5 s".
    const MARGIN: Duration = Duration::from_secs(5);
    let db = TestDb::new().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let service = TestService::start_with(
        AgentOptions::new()
            .store(via_proxy, "hangfire", 7.0)
            .shutdown_timeout(SHUTDOWN),
    )
    .await;
    let center = service.center();
    let console = ConsoleInfo::for_job("sd-long");
    center
        .run(TRANSIENT, "sd-long")
        .param(json!({"lines": 600, "sleep_ms": 60000}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    center
        .run(HANG, "sd-hang")
        .console(ConsoleInfo::for_job("sd-hang"))
        .send()
        .await
        .assert_status(200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while demo_numbers(&db.console_lines(&console.set_key, &console.hash_key).await).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the job's first lines never landed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.black_hole();
    assert_eq!(service.agent().running(), 2);
    let took = service.shutdown(SHUTDOWN + Duration::from_secs(60)).await;
    println!("shutdown with a black-holed store took {took:?} (timeout {SHUTDOWN:?})");
    assert!(
        took <= SHUTDOWN + MARGIN,
        "shutdown took {took:?}, more than {SHUTDOWN:?} + {MARGIN:?}"
    );
    proxy.restore();
}

// A store sent by the center may not name a file on the agent's machine: the run is refused
// with a 500 naming the setting, and the answer is the same whether the file exists or not
// (no probing of the agent's files through the error text), and never shows the path.
#[tokio::test(flavor = "multi_thread")]
async fn a_center_sent_file_path_is_refused_without_saying_anything_about_the_file() {
    let service = TestService::start_with(AgentOptions::new()).await;
    let center = service.center();
    let base = "Host=127.0.0.1;Port=1;Database=hf;Username=u;Password=p;SSL Mode=VerifyFull";
    let mut bodies = Vec::new();
    for (n, (setting, path)) in [
        ("Root Certificate", "/etc/passwd"),
        ("Root Certificate", "/nonexistent/secret-ca.pem"),
        ("SSL Key", "/etc/hostname"),
        ("SSL Certificate", "/nonexistent/client.crt"),
        ("Passfile", "/etc/passwd"),
    ]
    .into_iter()
    .enumerate()
    {
        let storage = Storage::postgresql(format!("{base};{setting}={path}"));
        let (reply, took) = center
            .run(TRANSIENT, &format!("file-{n}"))
            .param(json!({"lines": 1, "sleep_ms": 0}))
            .storage(&storage)
            .send_timed()
            .await;
        reply.assert_err(500);
        assert!(took < ANSWER_WITHIN, "{took:?}");
        assert!(reply.body.contains(setting), "{}", reply.body);
        assert!(!reply.body.contains(path), "{}", reply.body);
        for leak in [
            "root:",
            "No such file",
            "not found",
            "exist",
            "cannot be read",
        ] {
            assert!(!reply.body.contains(leak), "{leak}: {}", reply.body);
        }
        bodies.push((setting, reply.body.clone()));
    }
    // The answer for an existing and for a missing file is the same.
    assert_eq!(bodies[0].1, bodies[1].1);
    // A store without file paths is taken: it is refused only for want of a server (this
    // process never reached it; see store_first_reach.rs), not for a file.
    let storage = Storage::postgresql(base);
    let reply = center
        .run(TRANSIENT, "file-none")
        .param(json!({"lines": 1, "sleep_ms": 0}))
        .storage(&storage)
        .send()
        .await;
    reply.assert_err(500);
    assert!(reply.body.contains("has not answered"), "{}", reply.body);
    assert!(!reply.body.contains("names a file"), "{}", reply.body);
}
