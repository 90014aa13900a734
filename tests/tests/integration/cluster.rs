//! Replicas behind one URL act as one agent: example-service processes sharing one store,
//! each test on PostgreSQL, MySQL and Redis.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::replica::Replica;
use tests::stores::AnyStore;
use tests::wait;

const SINGLETON: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

fn store_env(db: &AnyStore) -> Vec<(&'static str, String)> {
    db.env()
}

async fn a_singleton_runs_once_across_replicas_and_stops_from_anywhere(db: AnyStore) {
    let a = Replica::start("replica-a", &store_env(&db)).await;
    let b = Replica::start("replica-b", &store_env(&db)).await;
    let console1 = ConsoleInfo::for_job("one");
    a.center()
        .run(SINGLETON, "one")
        .param(json!({"sleep_ms": 30000}))
        .console(console1.clone())
        .send()
        .await
        .assert_status(200);
    // A run arriving at the other replica is refused, naming the running job.
    let refused = b.center().run(SINGLETON, "two").send().await;
    refused.assert_err(501);
    assert_eq!(refused.busy_job_id(), Some("one"), "{}", refused.body);
    assert!(refused.body.contains("replica-a"), "{}", refused.body);
    // Detail at either replica names where it runs.
    for r in [&a, &b] {
        let detail = r.center().detail(SINGLETON).send().await;
        detail.assert_status(200);
        assert!(
            detail.body.contains("Status: Running") && detail.body.contains("RunningOn: replica-a"),
            "{}",
            detail.body
        );
        assert!(detail.body.contains("JobId: one"), "{}", detail.body);
    }
    // A stop sent to the other replica stops it within 2 s.
    let asked = Instant::now();
    b.center()
        .stop(SINGLETON, "stop-one")
        .send()
        .await
        .assert_status(200);
    let run = db.wait_result("one", Duration::from_secs(5)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        asked.elapsed()
    );
    assert_eq!(run["R"], "ok", "stopped on request: {run}");
    let stop = db.wait_result("stop-one", Duration::from_secs(10)).await;
    assert_eq!(
        (
            stop["Action"].as_str(),
            stop["RunId"].as_str(),
            stop["R"].as_str()
        ),
        (Some("stop"), Some("one"), Some("ok")),
        "{stop}"
    );
    // Now the other replica may run it; its fencing token is higher.
    let console3 = ConsoleInfo::for_job("three");
    b.center()
        .run(SINGLETON, "three")
        .param(json!({"lines": 1}))
        .console(console3.clone())
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("three", Duration::from_secs(10)).await["R"],
        "ok"
    );
    let token = |lines: Vec<Value>| -> u64 {
        lines
            .iter()
            .filter_map(|l| {
                l["s"]
                    .as_str()?
                    .strip_prefix("【JobAgent】fencing token ")?
                    .parse()
                    .ok()
            })
            .next()
            .unwrap_or(0)
    };
    let t1 = token(
        db.console_lines(&console1.set_key, &console1.hash_key)
            .await,
    );
    let t3 = token(
        db.console_lines(&console3.set_key, &console3.hash_key)
            .await,
    );
    assert!(t1 >= 1 && t3 > t1, "fencing tokens grow: {t1} then {t3}");
    // A stop of the stopped singleton at either replica is the 501 with the last run's id.
    let again = a.center().stop(SINGLETON, "stop-again").send().await;
    again.assert_err(501);
    assert!(again.busy_job_id().is_some(), "{}", again.body);
}

async fn a_transient_stop_counts_every_replica(db: AnyStore) {
    let a = Replica::start("t-a", &store_env(&db)).await;
    let b = Replica::start("t-b", &store_env(&db)).await;
    let c = Replica::start("t-c", &store_env(&db)).await;
    for (r, id) in [(&a, "ta1"), (&a, "ta2"), (&b, "tb1")] {
        r.center()
            .run(TRANSIENT, id)
            .param(json!({"sleep_ms": 30000}))
            .send()
            .await
            .assert_status(200);
    }
    // The records are written in the background: wait until the third replica sees all.
    let detail = c
        .center()
        .wait_detail(TRANSIENT, Duration::from_secs(5), |r| {
            r.body.contains("Running instances: 3")
        })
        .await;
    for (replica, id) in [("t-a", "ta1"), ("t-a", "ta2"), ("t-b", "tb1")] {
        assert!(
            detail
                .body
                .contains(&format!("Replica: {replica} JobId: {id}")),
            "{}",
            detail.body
        );
    }
    let stop = c.center().stop(TRANSIENT, "tstop").send().await;
    stop.assert_status(200);
    assert!(
        stop.body.contains("3 running instance(s) stopped"),
        "{}",
        stop.body
    );
    for id in ["ta1", "ta2", "tb1"] {
        assert_eq!(
            db.wait_result(id, Duration::from_secs(5)).await["R"],
            "ok",
            "{id}"
        );
    }
    let result = db.wait_result("tstop", Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert!(
        ["ta1", "ta2", "tb1"].contains(&result["RunId"].as_str().unwrap_or("")),
        "{result}"
    );
    // Nothing runs anywhere any more.
    c.center()
        .wait_detail(TRANSIENT, Duration::from_secs(5), |r| r.status == 500)
        .await;
}

async fn a_killed_replica_releases_its_claim_and_its_runs_are_reported_lost(db: AnyStore) {
    let mut a = Replica::start("k-a", &store_env(&db)).await;
    let b = Replica::start("k-b", &store_env(&db)).await;
    a.center()
        .run(SINGLETON, "k1")
        .param(json!({"sleep_ms": 120000}))
        .send()
        .await
        .assert_status(200);
    a.run_long_seen_by(&b, TRANSIENT, "k2").await;
    let killed = Instant::now();
    a.kill();
    b.center().run(SINGLETON, "k3").send().await.assert_err(501);
    // The claim lapses within 30 s.
    loop {
        let reply = b
            .center()
            .run(SINGLETON, "k4")
            .param(json!({"lines": 1}))
            .send()
            .await;
        if reply.status == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "claim still held after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let freed = killed.elapsed();
    // The lost replica's runs are reported within 60 s.
    for id in ["k1", "k2"] {
        let left = Duration::from_secs(60).saturating_sub(killed.elapsed());
        db.wait_failure(id, left, "agent replica lost").await;
    }
    eprintln!(
        "claim freed after {freed:?}, runs reported after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        db.wait_result("k4", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

async fn a_restarted_agent_reports_what_its_predecessor_left_in_flight(db: AnyStore) {
    let mut first = Replica::start("same-name", &store_env(&db)).await;
    first
        .center()
        .run(TRANSIENT, "r1")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await
        .assert_status(200);
    first
        .center()
        .run(SINGLETON, "r2")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await
        .assert_status(200);
    // Once both in-flight records have landed, crash (behind a relay the instance is stored as
    // `<service>:<name>`, the relay token's service being `test`).
    wait::until(
        Duration::from_secs(10),
        "the in-flight records",
        async || {
            let mut ids = Vec::new();
            for key in ["jobagent:runs:same-name", "jobagent:runs:test:same-name"] {
                ids.extend(db.hash_rows(key).await.into_iter().map(|(id, _)| id));
            }
            ["r1", "r2"].iter().all(|id| ids.iter().any(|i| i == id))
        },
    )
    .await;
    first.kill();
    let restarted = Instant::now();
    let second = Replica::start("same-name", &store_env(&db)).await;
    for id in ["r1", "r2"] {
        let left = Duration::from_secs(10).saturating_sub(restarted.elapsed());
        db.wait_failure(id, left, "agent restarted before the job finished")
            .await;
    }
    // Its predecessor's singleton claim does not block it.
    second
        .center()
        .run(SINGLETON, "r3")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("r3", Duration::from_secs(10)).await["R"],
        "ok"
    );
    // Reported once: a further restart (after a crash) finds nothing left to report. The
    // second process crashes once its bookkeeping is done (a run's record goes right after
    // its result is written; a crash between the two has the next process report the run
    // again, whose result the first-report mark drops, as `faults_cluster.rs` shows).
    // Checked once the third process holds the name and has reconciled it (its predecessor's
    // lease must lapse first, about 6 s): before that, nothing could be re-reported.
    wait::until(
        Duration::from_secs(10),
        "no run left in flight by the second process",
        async || {
            for key in ["jobagent:runs:same-name", "jobagent:runs:test:same-name"] {
                if !db.hash_rows(key).await.is_empty() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    drop(second);
    let mut env = store_env(&db);
    env.push(("RUST_LOG", "warn,jobagent::coordinator=info".to_owned()));
    let third = Replica::start_logged("same-name", &env).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let reconciled = loop {
        let log = third.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("reconciled it:")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the third process never held the name:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reconciled.contains("reconciled it: 0 run(s)"),
        "{reconciled}\n{}",
        third.log_text()
    );
    for id in ["r1", "r2"] {
        assert_eq!(db.result_fields(id).await.len(), 1, "{id} reported once");
    }
}

async fn replicas_coordinate_through_the_store_the_center_sends(db: AnyStore) {
    let a = Replica::start("h-a", &[]).await;
    let b = Replica::start("h-b", &[]).await;
    let storage = db.storage();
    a.center()
        .with_storage(&storage)
        .run(SINGLETON, "h1")
        .param(json!({"sleep_ms": 30000}))
        .send()
        .await
        .assert_status(200);
    let refused = b
        .center()
        .with_storage(&storage)
        .run(SINGLETON, "h2")
        .send()
        .await;
    refused.assert_err(501);
    assert_eq!(refused.busy_job_id(), Some("h1"));
    b.center()
        .with_storage(&storage)
        .stop(SINGLETON, "h-stop")
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("h1", Duration::from_secs(5)).await["R"],
        "ok"
    );
}

async fn with_cluster_mode_off_each_replica_is_on_its_own(db: AnyStore) {
    let mut env = store_env(&db);
    env.push(("JOBAGENT_CLUSTER", "off".to_owned()));
    let a = Replica::start("o-a", &env).await;
    let b = Replica::start("o-b", &env).await;
    a.center()
        .run(SINGLETON, "o1")
        .param(json!({"sleep_ms": 300}))
        .send()
        .await
        .assert_status(200);
    b.center()
        .run(SINGLETON, "o2")
        .param(json!({"sleep_ms": 300}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("o1", Duration::from_secs(10)).await["R"],
        "ok"
    );
    assert_eq!(
        db.wait_result("o2", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

tests::on_every_store! {
    a_singleton_runs_once_across_replicas_and_stops_from_anywhere => a_singleton_runs_once_across_replicas_and_stops_from_anywhere;
    a_transient_stop_counts_every_replica => a_transient_stop_counts_every_replica;
    a_killed_replica_releases_its_claim_and_its_runs_are_reported_lost => a_killed_replica_releases_its_claim_and_its_runs_are_reported_lost;
    a_restarted_agent_reports_what_its_predecessor_left_in_flight => a_restarted_agent_reports_what_its_predecessor_left_in_flight;
    replicas_coordinate_through_the_store_the_center_sends => replicas_coordinate_through_the_store_the_center_sends;
    with_cluster_mode_off_each_replica_is_on_its_own => with_cluster_mode_off_each_replica_is_on_its_own;
}

// The same, with the replicas writing through two relays behind one address (issue 17).
tests::on_every_store_via_relays! { 2;
    relayed_a_singleton_runs_once_across_replicas_and_stops_from_anywhere => a_singleton_runs_once_across_replicas_and_stops_from_anywhere;
    relayed_a_transient_stop_counts_every_replica => a_transient_stop_counts_every_replica;
    relayed_a_killed_replica_releases_its_claim_and_its_runs_are_reported_lost => a_killed_replica_releases_its_claim_and_its_runs_are_reported_lost;
    relayed_a_restarted_agent_reports_what_its_predecessor_left_in_flight => a_restarted_agent_reports_what_its_predecessor_left_in_flight;
    relayed_with_cluster_mode_off_each_replica_is_on_its_own => with_cluster_mode_off_each_replica_is_on_its_own;
}
