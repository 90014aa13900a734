//! A result is never dropped (issue 25, item 7).
//!
//! The center has no time-out for agent jobs: once a run is answered 200 the job stays
//! Processing until its result is in the store's `_agent_result_` set (yuzd/Hangfire.HttpJob
//! `Server/Hangfire.HttpJob/Server/HttpJob.cs`; PROTOCOL.md sections 1 and 2). So a
//! result the store refuses is retried until the store takes it (at most
//! `JOBAGENT_RESULT_RETRY_MS`, default the store's `ExpireAtDays`), and the run's in-flight
//! record (`jobagent:runs:<instance>`) stays until the result is written: past the bound, a
//! next process of the instance reports the run.
//!
//! The agent used to give a result up after 10 minutes and remove the record; the tests cut
//! the store for longer than a bound configured small, which stands for that.

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::{Value, json};
use tests::center::{Center, ConsoleInfo};
use tests::logs::Logs;
use tests::on_every_store;
use tests::service::TestService;
use tests::stores::AnyStore;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

on_every_store! {
    a_result_refused_for_long_lands_once => refused_for_long;
    past_its_bound_a_result_is_left_to_the_next_process => past_the_bound;
    a_run_answered_while_the_store_is_away_is_recorded_once_it_is_back => recorded_once_back;
    a_run_answered_while_the_store_is_black_holed_is_recorded_once_it_is_back => recorded_once_out_of_the_hole;
}

/// The in-flight records of `instance`, as the next process of the instance reads them.
async fn records(db: &AnyStore, instance: &str) -> Vec<String> {
    db.hash_rows(&format!("jobagent:runs:{instance}"))
        .await
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// Waits until `instance`'s in-flight records do (`present`) or do not list `job_id`.
async fn until_recorded(db: &AnyStore, instance: &str, job_id: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = records(db, instance).await;
        if ids.iter().any(|id| id == job_id) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the in-flight record of {job_id} {} within 30 s: {ids:?}",
            db.kind(),
            if present { "never appeared" } else { "stayed" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A service writing to `db` through a proxy (its own store), as instance `instance`.
async fn service_behind_proxy(
    db: &AnyStore,
    instance: &str,
    retry: Duration,
) -> (tests::proxy::Proxy, TestService) {
    // Before any service installs its own log subscriber (every service of this file starts
    // here): the logs are captured for the whole test binary.
    Logs::global();
    let (proxy, via) = db.behind_proxy().await;
    let (_, kind, prefix) = db.local();
    let service = TestService::start_with(
        AgentOptions::new()
            .store(via.hangfire_db, prefix, 7.0)
            .store_type(kind)
            .instance(instance)
            .result_retry(retry),
    )
    .await;
    (proxy, service)
}

/// Runs a short job and waits for its result (the store is reached, the lease held).
async fn warm_up(db: &AnyStore, center: &Center) {
    center
        .run(TRANSIENT, "warm")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("warm", Duration::from_secs(30)).await["R"],
        "ok"
    );
}

/// The store refuses connections for 12 s, starting while the run is running, which is
/// longer than the bound that stands for the old give-up (configured at 5 s here: the
/// result's retry bound is 60 s). No result while the store is away, the run's in-flight
/// record stays all along; once the store is back every line lands and exactly one result,
/// then the record goes.
async fn refused_for_long(db: AnyStore) {
    const OLD_GIVE_UP: Duration = Duration::from_secs(5);
    let instance = format!("rr-long-{}", db.kind());
    let (proxy, service) = service_behind_proxy(&db, &instance, Duration::from_secs(60)).await;
    let center = service.center();
    warm_up(&db, &center).await;

    let console = ConsoleInfo::for_job("rr-long");
    center
        .run(TRANSIENT, "rr-long")
        .param(json!({"lines": 3, "sleep_ms": 1500}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    until_recorded(&db, &instance, "rr-long", true).await;
    proxy.cut();
    let cut_at = Instant::now();
    // The run ends within 1.5 s; its result is refused from then on.
    let away = OLD_GIVE_UP * 2 + Duration::from_secs(2);
    while cut_at.elapsed() < away {
        assert!(db.result("rr-long").await.is_none(), "no result while away");
        assert!(
            records(&db, &instance)
                .await
                .iter()
                .any(|id| id == "rr-long"),
            "the in-flight record stays while the result is unwritten ({:?} into the outage)",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        service.agent().running(),
        0,
        "the run ended during the outage"
    );
    proxy.restore();
    let r: Value = db.wait_result("rr-long", Duration::from_secs(60)).await;
    assert_eq!(r["R"], "ok", "{r}");
    assert_eq!(db.result_fields("rr-long").await.len(), 1, "exactly once");
    let ids = db
        .result_ids_listing("rr-long", Duration::from_secs(5))
        .await;
    assert_eq!(ids.iter().filter(|id| *id == "rr-long").count(), 1);
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    let texts: Vec<&str> = lines.iter().filter_map(|l| l["s"].as_str()).collect();
    for n in 1..=3 {
        assert!(
            texts.iter().any(|t| t.ends_with(&format!("line {n}"))),
            "line {n}: {texts:?}"
        );
    }
    until_recorded(&db, &instance, "rr-long", false).await;
}

/// With a result retry bound of 2 s and a store away for longer, the process stops retrying
/// but keeps the run's in-flight record: the next process of the instance (after this one
/// shut down) reports the run, exactly once, and the record goes.
async fn past_the_bound(db: AnyStore) {
    const BOUND: Duration = Duration::from_secs(2);
    let instance = format!("rr-bound-{}", db.kind());
    let (proxy, service) = service_behind_proxy(&db, &instance, BOUND).await;
    let center = service.center();
    warm_up(&db, &center).await;
    center
        .run(TRANSIENT, "rr-bound")
        .param(json!({"lines": 2, "sleep_ms": 1000}))
        .console(ConsoleInfo::for_job("rr-bound"))
        .send()
        .await
        .assert_status(200);
    until_recorded(&db, &instance, "rr-bound", true).await;
    proxy.cut();
    // The run ends after 1 s; the console waits at most the bound, the result retries for the
    // bound: past that and a margin, this process has given the result up.
    tokio::time::sleep(Duration::from_secs(1) + BOUND * 2 + Duration::from_secs(3)).await;
    assert_eq!(service.agent().running(), 0);
    proxy.restore();
    // Time for a retry that should not happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        db.result("rr-bound").await.is_none(),
        "the process retried past its bound"
    );
    assert!(
        records(&db, &instance)
            .await
            .iter()
            .any(|id| id == "rr-bound"),
        "the in-flight record of the unwritten result stays"
    );
    service.shutdown(Duration::from_secs(30)).await;

    // The next process of the instance, on the store directly.
    let (connection, kind, prefix) = db.local();
    let next = TestService::start_with(
        AgentOptions::new()
            .store(connection, prefix, 7.0)
            .store_type(kind)
            .instance(&instance),
    )
    .await;
    let r = db
        .wait_failure("rr-bound", Duration::from_secs(60), "agent restarted")
        .await;
    println!("{}: reported by the next process: {r}", db.kind());
    assert_eq!(db.result_fields("rr-bound").await.len(), 1, "exactly once");
    until_recorded(&db, &instance, "rr-bound", false).await;
    drop(next);
}

/// The store refuses connections when a run is dispatched: the run is answered 200 (after a
/// first success an outage is buffered: `store_first_reach.rs`) and its in-flight record
/// cannot be written. Once the store is back the record lands while the run still runs, so
/// a process killed from then on still has the run reported by the next process of its
/// instance; it goes once the one result is written. Found by the soak (`--replicas 2`): a
/// replica SIGKILLed just after a PostgreSQL restart left three runs answered during the
/// restart that no process ever reported, because their records had been tried once.
async fn recorded_once_back(db: AnyStore) {
    recorded_after(db, Away::Refused).await;
}

/// As [`recorded_once_back`], with the store black-holed instead: the first attempt at the
/// record hangs (no reset, no answer) until its deadline, and when the store is back only new
/// connections work, every link opened before staying silent for good (a partition that
/// outlived the links it broke). The record still lands while the run runs.
async fn recorded_once_out_of_the_hole(db: AnyStore) {
    recorded_after(db, Away::BlackHoled).await;
}

/// How the store is away while a run is dispatched.
#[derive(Clone, Copy, Debug)]
enum Away {
    /// Connections are refused; when back, everything works.
    Refused,
    /// Nothing answers; when back, only new connections work.
    BlackHoled,
}

async fn recorded_after(db: AnyStore, away: Away) {
    let tag = match away {
        Away::Refused => "back",
        Away::BlackHoled => "hole",
    };
    let instance = format!("rr-{tag}-{}", db.kind());
    let job = format!("rr-{tag}-{}", db.kind());
    let (proxy, service) = service_behind_proxy(&db, &instance, Duration::from_secs(60)).await;
    let logs = Logs::global();
    let center = service.center();
    warm_up(&db, &center).await;

    match away {
        Away::Refused => proxy.cut(),
        Away::BlackHoled => proxy.black_hole(),
    }
    let console = ConsoleInfo::for_job(&job);
    // Long enough to outlast a failed attempt at the record (a black-holed one lasts until
    // its deadline) and the retry after it.
    let sleep_ms = match away {
        Away::Refused => 15_000,
        Away::BlackHoled => 45_000,
    };
    center
        .run(TRANSIENT, &job)
        .param(json!({"lines": 3, "sleep_ms": sleep_ms}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    // The store is back only after the first attempt at the record has failed.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !logs
        .text()
        .lines()
        .any(|l| l.contains("the run in flight") && l.contains(job.as_str()))
    {
        assert!(
            Instant::now() < deadline,
            "{}: no failed attempt at the record of {job} within 40 s",
            db.kind()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(records(&db, &instance).await.iter().all(|id| *id != job));
    match away {
        Away::Refused => proxy.restore(),
        Away::BlackHoled => proxy.restore_new(),
    }
    until_recorded(&db, &instance, &job, true).await;
    assert_eq!(service.agent().running(), 1, "recorded while it runs");

    let r: Value = db.wait_result(&job, Duration::from_secs(90)).await;
    assert_eq!(r["R"], "ok", "{r}");
    assert_eq!(db.result_fields(&job).await.len(), 1, "exactly once");
    until_recorded(&db, &instance, &job, false).await;
}
