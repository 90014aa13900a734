//! Cluster faults: a replica partitioned from the store with its singleton running, a
//! SIGKILLed replica, and two live processes with one instance name. Example-service
//! processes sharing one store; a replica's store behind a proxy to cut it off. The
//! partition and the SIGKILL run on PostgreSQL, MySQL and Redis.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::pg::TestDb;
use tests::replica::Replica;
use tests::stores::AnyStore;
use tests::wait;

const SINGLETON: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
/// What a replica logs when it cancels a singleton whose claim it could not renew.
const CANCELLED_UNRENEWED: &str = "cancelling the run before the claim can lapse";

fn store_env(connection: String) -> Vec<(&'static str, String)> {
    vec![("JOBAGENT_STORE", connection)]
}

/// The fencing token a run printed on its console.
async fn fencing_token(db: &AnyStore, console: &ConsoleInfo) -> Option<u64> {
    db.console_lines(&console.set_key, &console.hash_key)
        .await
        .iter()
        .filter_map(|l| l["s"].as_str())
        .find_map(|s| {
            let at = s.find("fencing token ")?;
            s[at + "fencing token ".len()..].trim().parse().ok()
        })
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `within`.
async fn until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Issue 12, partition-safe singletons: the replica running the singleton is cut off from the
// store (black hole: nothing answers, nothing is reset); it cancels its run before its claim
// can lapse, the other replica takes over after the lease, and the run gets one result.
async fn partition(db: AnyStore) {
    // Short bounds, so the cut-off replica notices soon.
    let (proxy, via_proxy) = db.env_behind_proxy().await;
    let a = Replica::start_logged("pa", &via_proxy).await;
    let b = Replica::start("pb", &db.env()).await;
    let console1 = ConsoleInfo::for_job("p1");
    a.center()
        .run(SINGLETON, "p1")
        .param(json!({"sleep_ms": 120000}))
        .console(console1.clone())
        .send()
        .await
        .assert_status(200);
    b.center()
        .wait_detail(SINGLETON, Duration::from_secs(5), |r| {
            r.body.contains("RunningOn: pa")
        })
        .await;
    until(
        Duration::from_secs(5),
        "p1's fencing token line",
        async || fencing_token(&db, &console1).await.is_some(),
    )
    .await;
    proxy.black_hole();
    let cut = Instant::now();
    // Until the other replica may take it: each attempt is sent only after looking at the
    // partitioned replica's log, so a cancellation seen before the winning attempt happened
    // before the claim was taken.
    let console2 = ConsoleInfo::for_job("p2");
    let mut cancelled_at = None;
    let taken_at = loop {
        if cancelled_at.is_none() && a.log_text().contains(CANCELLED_UNRENEWED) {
            cancelled_at = Some(cut.elapsed());
        }
        let reply = b
            .center()
            .run(SINGLETON, "p2")
            .param(json!({"lines": 1}))
            .console(console2.clone())
            .send()
            .await;
        if reply.status == 200 {
            break cut.elapsed();
        }
        reply.assert_err(501);
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "the other replica could not take the singleton within {:?}",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "partition: the cut-off replica cancelled its singleton {cancelled_at:?} after the cut; the other replica claimed it {taken_at:?} after the cut"
    );
    let cancelled_at = cancelled_at.unwrap_or_else(|| {
        panic!(
            "the claim was taken {taken_at:?} after the cut, before the cut-off replica cancelled its run:\n{}",
            a.log_text()
        )
    });
    assert!(cancelled_at < taken_at);
    assert!(
        taken_at < Duration::from_secs(15),
        "the singleton was free again only after {taken_at:?}"
    );
    assert_eq!(
        db.wait_result("p2", Duration::from_secs(10)).await["R"],
        "ok"
    );
    let (t1, t2) = (
        fencing_token(&db, &console1).await,
        fencing_token(&db, &console2).await,
    );
    assert!(
        matches!((t1, t2), (Some(t1), Some(t2)) if t2 > t1),
        "fencing tokens {t1:?} then {t2:?}"
    );
    // The cut-off replica's runs are reported lost by the other one.
    let left = Duration::from_secs(30).saturating_sub(cut.elapsed());
    db.wait_failure("p1", left, "agent replica lost: pa").await;
    eprintln!(
        "partition: p1 reported lost {:?} after the cut",
        cut.elapsed()
    );
    // The store comes back: the cut-off replica's own result of p1 is dropped, not added.
    proxy.restore();
    until(
        Duration::from_secs(60),
        "the cut-off replica's own result of p1 was never dropped",
        async || a.log_text().contains("already reported"),
    )
    .await;
    let fields = db.result_fields("p1").await;
    assert_eq!(fields.len(), 1, "p1 has exactly one result: {fields:?}");
    // And its console shows why it stopped.
    until(
        Duration::from_secs(20),
        "the cancellation line never reached p1's console",
        async || {
            db.console_lines(&console1.set_key, &console1.hash_key)
                .await
                .iter()
                .any(|l| {
                    l["s"]
                        .as_str()
                        .is_some_and(|s| s.contains("could not renew its cluster-wide claim"))
                })
        },
    )
    .await;
}

/// Sends `signal` (`STOP`, `CONT`) to a replica's process.
fn signal(replica: &Replica, signal: &str) {
    let pid = replica
        .pid()
        .unwrap_or_else(|| panic!("{} has exited", replica.name()));
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// A stop answered 200 and SIGKILLed before its result is written still gets one result.
/// The stop's result waits for the replica that runs the job to acknowledge it (up to two
/// graces and 2 s): that replica is frozen (SIGSTOP) so the stop is still waiting when the
/// replica that took it is SIGKILLed, right after its 200. The center waits for the stop's
/// result with no time-out (PROTOCOL.md section 2, yuzd/Hangfire.HttpJob
/// `Server/Hangfire.HttpJob/Server/HttpJob.cs`): before stops were recorded in flight like
/// runs, this one never got a result. Its restarted process reports it failed, as a stop of
/// the run it named; the run itself, once its replica thaws, is stopped and reported once.
async fn stop_killed(db: AnyStore) {
    let a = Replica::start("sa", &db.env()).await;
    let mut b = Replica::start("sb", &db.env()).await;
    a.run_long_seen_by(&b, TRANSIENT, "sk-run").await;
    signal(&a, "STOP");
    b.center()
        .stop(TRANSIENT, "sk-stop")
        .send()
        .await
        .assert_status(200);
    b.kill();
    signal(&a, "CONT");
    let b = Replica::start("sb", &db.env()).await;
    let r = db
        .wait_failure(
            "sk-stop",
            Duration::from_secs(30),
            "agent restarted before the job finished",
        )
        .await;
    assert_eq!(
        (&r["Action"], &r["RunId"]),
        (&json!("stop"), &json!("sk-run")),
        "{r}"
    );
    let run = db.wait_result("sk-run", Duration::from_secs(30)).await;
    eprintln!("stop killed: the stop's result {r}; the run's {run}");
    for id in ["sk-stop", "sk-run"] {
        assert_eq!(db.result_fields(id).await.len(), 1, "{id}");
    }
    drop((a, b));
}

// Issue 12: a SIGKILLed replica's runs are reported within 15 s, while the live replica's
// own run (same load, same store) is not.
async fn killed(db: AnyStore) {
    let mut a = Replica::start("ka", &db.env()).await;
    let b = Replica::start("kb", &db.env()).await;
    a.center()
        .run(SINGLETON, "k1")
        .param(json!({"sleep_ms": 120000}))
        .send()
        .await
        .assert_status(200);
    b.center()
        .run(TRANSIENT, "k3")
        .param(json!({"sleep_ms": 25000, "lines": 50}))
        .send()
        .await
        .assert_status(200);
    a.run_long_seen_by(&b, TRANSIENT, "k2").await;
    let killed = Instant::now();
    a.kill();
    let mut reported = Vec::new();
    for id in ["k1", "k2"] {
        let left = Duration::from_secs(15).saturating_sub(killed.elapsed());
        let r: Value = db.wait_failure(id, left, "agent replica lost: ka").await;
        assert_eq!(r["RunId"], id);
        reported.push(killed.elapsed());
    }
    eprintln!("killed replica: runs reported {reported:?} after the SIGKILL (bound 15 s)");
    // The live replica's run is left alone: it ends as it would have.
    let live = db.wait_result("k3", Duration::from_secs(40)).await;
    assert_eq!(live["R"], "ok", "{live}");
    for id in ["k1", "k2", "k3"] {
        assert_eq!(db.result_fields(id).await.len(), 1, "{id}");
    }
}

/// Two live processes with one instance name: the second says so, takes neither the
/// first's claims nor its runs, and takes the name over only once the first died.
async fn one_instance_name_twice(cluster: bool, prefix: &str) {
    let db = TestDb::new().await;
    let mut env = store_env(db.connection_string());
    if !cluster {
        env.push(("JOBAGENT_CLUSTER", "off".to_owned()));
    }
    let name = format!("{prefix}-same");
    let (s1, t1) = (format!("{prefix}1"), format!("{prefix}2"));
    let mut first = Replica::start_logged(&name, &env).await;
    for (class, id) in [(SINGLETON, &s1), (TRANSIENT, &t1)] {
        first
            .center()
            .run(class, id)
            .param(json!({"sleep_ms": 120000}))
            .send()
            .await
            .assert_status(200);
    }
    let second = Replica::start_logged(&name, &env).await;
    until(
        Duration::from_secs(10),
        "the second process never said its instance name is in use",
        async || {
            let log = second.log_text();
            log.lines().any(|l| {
                l.contains("ERROR") && l.contains("JOBAGENT_INSTANCE") && l.contains(&name)
            })
        },
    )
    .await;
    // It refuses runs, naming the duplicate instance, instead of taking the first one's
    // claim (singleton) or running what it could neither record under the name nor have
    // reported if it died (transient).
    for (class, id) in [(SINGLETON, "dup-run"), (TRANSIENT, "dup-run-t")] {
        let refused = second.center().run(class, id).send().await;
        refused.assert_err(500);
        assert!(
            refused.body.contains(&name) && refused.body.contains("JOBAGENT_INSTANCE"),
            "{}",
            refused.body
        );
    }
    // For a few lease periods, nobody reports the first one's live runs.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        for id in [&s1, &t1] {
            assert!(
                db.result(id).await.is_none(),
                "{id} was reported while it runs: {:?}\n{}",
                db.result(id).await,
                second.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    first
        .center()
        .wait_detail(TRANSIENT, Duration::from_secs(2), |r| {
            r.body.contains(&format!("JobId: {t1}"))
        })
        .await;
    assert!(
        first.log_text().lines().all(|l| !l.contains("ERROR")),
        "the first process has nothing to complain about:\n{}",
        first.log_text()
    );
    // The first one dies: the second takes the name over and reports what it left.
    let killed = Instant::now();
    first.kill();
    for id in [&s1, &t1] {
        let left = Duration::from_secs(15).saturating_sub(killed.elapsed());
        wait::failure(&db, id, left, "agent restarted before the job finished").await;
    }
    eprintln!(
        "duplicate name: the survivor reported the dead process's runs {:?} after the SIGKILL",
        killed.elapsed()
    );
    second
        .center()
        .run(SINGLETON, &format!("{prefix}3"))
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, &format!("{prefix}3"), Duration::from_secs(10)).await["R"],
        "ok"
    );
    for id in [&s1, &t1] {
        assert_eq!(db.result_fields(id).await.len(), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_live_processes_with_one_instance_name_leave_each_other_alone() {
    one_instance_name_twice(true, "dn").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_live_processes_with_one_instance_name_leave_each_other_alone_cluster_off() {
    one_instance_name_twice(false, "df").await;
}

// A singleton run reported lost frees its class at once: a stop then says it has already
// stopped (501 naming the run, as a center tolerant of busy singletons reads it) instead of
// "stopping" a run that no longer exists, and a new run is accepted (found by the soak).
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_singleton_frees_its_class_when_it_is_reported() {
    let db = TestDb::new().await;
    let mut a = Replica::start("lost-a", &store_env(db.connection_string())).await;
    let b = Replica::start("lost-b", &store_env(db.connection_string())).await;
    a.center()
        .run(SINGLETON, "ls1")
        .param(json!({"sleep_ms": 120000}))
        .send()
        .await
        .assert_status(200);
    a.kill();
    wait::failure(&db, "ls1", Duration::from_secs(20), "").await;
    let stop = b.center().stop(SINGLETON, "ls1-stop").send().await;
    stop.assert_err(501);
    assert_eq!(stop.busy_job_id(), Some("ls1"), "{}", stop.body);
    b.center()
        .run(SINGLETON, "ls2")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "ls2", Duration::from_secs(10)).await["R"],
        "ok"
    );
    assert_eq!(db.result("ls1-stop").await, None);
}

/// A run answered while its store is away (after a first success the outage is buffered, a
/// 200: `store_first_reach.rs`) whose process is SIGKILLed before the store is back. The
/// center waits for an agent job's result with no time-out (PROTOCOL.md section 2,
/// yuzd/Hangfire.HttpJob `Server/Hangfire.HttpJob/Server/HttpJob.cs`); the store never had
/// the run's in-flight record, so before the spool no process ever reported the run (the
/// soak found three such runs with `--replicas 2` across a PostgreSQL restart). The record
/// waits in this machine's spool (`JOBAGENT_SPOOL_DIR`), and the next process of the
/// instance reports the run failed, once, and empties the spool; a next process SIGKILLed as
/// it reports leaves that to the one after it.
async fn killed_while_the_store_is_away(db: AnyStore) {
    let spool = std::env::temp_dir().join(format!(
        "jobagent-test-spool-{}-{}",
        db.kind(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&spool);
    let (proxy, mut env) = db.env_behind_proxy().await;
    env.push(("JOBAGENT_SPOOL_DIR", spool.display().to_string()));
    let mut a = Replica::start_logged("oa", &env).await;
    a.center()
        .run(TRANSIENT, "ow")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("ow", Duration::from_secs(30)).await["R"],
        "ok"
    );

    proxy.cut();
    a.center()
        .run(TRANSIENT, "ok1")
        .param(json!({"sleep_ms": 120000}))
        .send()
        .await
        .assert_status(200);
    until(
        Duration::from_secs(30),
        "the run kept in the spool",
        async || {
            a.log_text()
                .lines()
                .any(|l| l.contains("kept in the spool") && l.contains("ok1"))
        },
    )
    .await;
    a.kill();
    proxy.restore();
    // The next process is SIGKILLed at the worst moment: as it sets out to report the spooled
    // run (its result written or not, its spool file not yet removed).
    let mut b = Replica::start_logged("oa", &env).await;
    until(
        Duration::from_secs(30),
        "the next process reporting the spooled run",
        async || {
            b.log_text().lines().any(|l| {
                l.contains("reporting a run the previous process of this instance left in flight")
                    && l.contains("ok1")
            })
        },
    )
    .await;
    b.kill();
    // And the one after it reports the run, unless the killed one did: one result either way.
    let a = Replica::start("oa", &env).await;
    let r = db
        .wait_failure(
            "ok1",
            Duration::from_secs(30),
            "agent restarted before the job finished",
        )
        .await;
    assert_eq!(
        (&r["Action"], &r["RunId"]),
        (&json!("run"), &json!("ok1")),
        "{r}"
    );
    assert_eq!(db.result_fields("ok1").await.len(), 1, "exactly one result");
    let entries = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|instance| {
                std::fs::read_dir(instance.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect()
    };
    until(
        Duration::from_secs(10),
        "the spool emptied once the run is reported",
        async || entries(&spool).is_empty(),
    )
    .await;
    drop(a);
    let _ = std::fs::remove_dir_all(&spool);
}

tests::on_every_store! {
    a_run_answered_while_the_store_is_away_and_killed_is_reported_by_the_next_process => killed_while_the_store_is_away;
    a_partitioned_replica_cancels_its_singleton_before_another_can_claim_it => partition;
    a_killed_replicas_runs_are_reported_within_15_s_and_a_live_ones_are_not => killed;
    a_stop_killed_before_its_result_is_reported_as_a_stop => stop_killed;
}
