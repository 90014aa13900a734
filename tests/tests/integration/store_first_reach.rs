//! A store this process has never reached does not swallow runs (issue 25, item 6).
//!
//! The center counts an agent's 200 as a job that started and then waits for its result in
//! the store, with no time-out for agent jobs; a 500 fails the dispatch, shows the body, and
//! lets the job's retries apply (yuzd/Hangfire.HttpJob `Server/Hangfire.HttpJob/Server/HttpJob.cs`,
//! `Run` / `AgentJob`). So a run whose store never answered (connection refused, no answer)
//! is answered 500 with the store's reason; once a store has answered, a later outage is
//! buffered: the run is answered 200 and its lines and result land when the store is back.
//! The center waits `Timeout` ms for the answer, 5 s when the job's `Timeout` is below 1
//! (same file, `PrepareHttpRequestMessage`): a black-holed first store is answered sooner.

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::json;
use tests::center::ConsoleInfo;
use tests::on_every_store;
use tests::service::TestService;
use tests::stores::{AnyStore, demo_numbers};

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// The center's default HTTP timeout (the job's `Timeout` below 1) is 5 s; every answer
/// must come well within it.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// Waits until `job_id` has a result, then says how many result fields it has (the center
/// reads one).
async fn result_count(db: &AnyStore, job_id: &str, within: Duration) -> usize {
    db.wait_result(job_id, within).await;
    db.result_fields(job_id).await.len()
}

on_every_store! {
    refused_first_store => refused_first_store;
    black_holed_first_store => black_holed_first_store;
    outage_after_first_success => outage_after_first_success;
}

/// The center sends a store that this process never reached and whose server refuses
/// connections: a port nothing listens on (the kernel refuses), then a proxy that closes every
/// connection it accepts. Each run is answered 500 with the store's own reason, without the
/// connection string; once the store answers, the next run is taken and lands, and the
/// refused ones never have a result.
async fn refused_first_store(db: AnyStore) {
    let (proxy, via) = db.behind_proxy().await;
    let service = TestService::start_with(AgentOptions::new()).await;
    let center = service.center();

    let closed = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("cannot bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no address: {e}"))
            .port()
    };
    let nowhere = tests::Storage {
        hangfire_db: via
            .hangfire_db
            .replace(&proxy.port().to_string(), &closed.to_string()),
        ..via.clone()
    };
    assert_ne!(nowhere.hangfire_db, via.hangfire_db);
    proxy.cut();
    for (storage, id, reason) in [
        (&nowhere, "fr-closed", Some("refused")),
        (&via, "fr-cut", None),
    ] {
        let (reply, took) = center
            .run(TRANSIENT, id)
            .param(json!({"lines": 2}))
            .console(ConsoleInfo::for_job(id))
            .storage(storage)
            .send_timed()
            .await;
        println!(
            "{}: first run into a refusing store: {} in {took:?}: {}",
            db.kind(),
            reply.status,
            reply.body
        );
        reply.assert_err(500);
        assert!(took < ANSWER_WITHIN, "answered after {took:?}");
        assert!(reply.body.contains("has not answered"), "{}", reply.body);
        if let Some(reason) = reason {
            assert!(
                reply.body.to_ascii_lowercase().contains(reason),
                "the store's own reason: {}",
                reply.body
            );
        }
        assert!(!reply.body.contains(&storage.hangfire_db), "{}", reply.body);
        assert_eq!(service.agent().running(), 0, "no run was started");
    }

    proxy.restore();
    center
        .run(TRANSIENT, "fr-next")
        .param(json!({"lines": 2}))
        .console(ConsoleInfo::for_job("fr-next"))
        .storage(&via)
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        result_count(&db, "fr-next", Duration::from_secs(30)).await,
        1
    );
    assert!(db.result("fr-closed").await.is_none());
    assert!(db.result("fr-cut").await.is_none());
}

/// The agent's own store is black-holed before the first run (connections accepted, never
/// answered): the run is answered 500 within the bound, saying the store did not answer;
/// once the store is back the next run is taken and lands exactly once.
async fn black_holed_first_store(db: AnyStore) {
    let (proxy, via) = db.behind_proxy().await;
    proxy.black_hole();
    let (_, kind, prefix) = db.local();
    let service = TestService::start_with(
        AgentOptions::new()
            .store(via.hangfire_db, prefix, 7.0)
            .store_type(kind),
    )
    .await;
    let center = service.center();
    let (reply, took) = center
        .run(TRANSIENT, "bh-first")
        .param(json!({"lines": 2}))
        .console(ConsoleInfo::for_job("bh-first"))
        .send_timed()
        .await;
    println!(
        "{}: first run into a black-holed store: {} in {took:?}: {}",
        db.kind(),
        reply.status,
        reply.body
    );
    reply.assert_err(500);
    assert!(took < ANSWER_WITHIN, "answered after {took:?}");
    assert!(reply.body.contains("has not answered"), "{}", reply.body);
    assert!(
        reply.body.contains("within") || reply.body.contains("timed out"),
        "a timeout: {}",
        reply.body
    );

    proxy.restore();
    // The black-holed connections are closed at the restore; the next run reaches the store.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = center
            .run(TRANSIENT, "bh-next")
            .param(json!({"lines": 2}))
            .console(ConsoleInfo::for_job("bh-next"))
            .send()
            .await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store is back but runs are still refused: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        result_count(&db, "bh-next", Duration::from_secs(30)).await,
        1
    );
    assert!(db.result("bh-first").await.is_none());
}

/// Once the store has answered, an outage no longer refuses runs: a run dispatched while the
/// store refuses connections is answered 200, and once the store is back every line lands,
/// in order, with exactly one result.
async fn outage_after_first_success(db: AnyStore) {
    let (proxy, via) = db.behind_proxy().await;
    let service = TestService::start_with(AgentOptions::new()).await;
    let center = service.center().with_storage(&via);
    center
        .run(TRANSIENT, "os-warm")
        .param(json!({"lines": 1}))
        .console(ConsoleInfo::for_job("os-warm"))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("os-warm", Duration::from_secs(20)).await["R"],
        "ok"
    );

    proxy.cut();
    let console = ConsoleInfo::for_job("os-during");
    let (reply, took) = center
        .run(TRANSIENT, "os-during")
        .param(json!({"lines": 50, "sleep_ms": 500}))
        .console(console.clone())
        .send_timed()
        .await;
    println!(
        "{}: run during an outage after a first success: {} in {took:?}",
        db.kind(),
        reply.status
    );
    reply.assert_status(200);
    assert!(took < ANSWER_WITHIN, "answered after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        db.result("os-during").await.is_none(),
        "no result while down"
    );
    proxy.restore();
    let r = db.wait_result("os-during", Duration::from_secs(60)).await;
    assert_eq!(r["R"], "ok", "{r}");
    assert_eq!(db.result_fields("os-during").await.len(), 1);
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert_eq!(
        demo_numbers(&lines),
        (1..=50).collect::<Vec<u64>>(),
        "every line, once, in order"
    );
}
