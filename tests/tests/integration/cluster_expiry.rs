//! Cluster mode while Hangfire expires rows: Hangfire.PostgreSql's ExpirationManager
//! (`src/Hangfire.PostgreSql/ExpirationManager.cs`) deletes every `hash` and `set` row whose
//! `expireat` has passed, at moments the agent does not choose. Here a pass runs every second
//! ([`ExpirationPass`]); the replicas' bookkeeping must not notice.

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::hangfire::ExpirationPass;
use tests::pg::{Generation, SCHEMA, TestDb};
use tests::replica::Replica;
use tests::service::TestService;
use tests::wait;

const SINGLETON: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const EVERY: Duration = Duration::from_secs(1);

fn store_env(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![("JOBAGENT_STORE", db.connection_string())]
}

async fn two_agents(db: &TestDb, prefix: &str) -> (TestService, TestService) {
    let options = |name: String| {
        AgentOptions::new()
            .store(db.connection_string(), SCHEMA, 7.0)
            .instance(name)
    };
    (
        TestService::start_with(options(format!("{prefix}-a"))).await,
        TestService::start_with(options(format!("{prefix}-b"))).await,
    )
}

/// A running singleton keeps its claim through expiration passes (it is neither deleted nor
/// cancelled), a run elsewhere is refused naming it, and once it ended its last run is still
/// known to the other replica.
async fn singleton_through_expiration(generation: Generation, prefix: &str) {
    let db = TestDb::with(generation, SCHEMA).await;
    let pass = ExpirationPass::start(&db, EVERY).await;
    let (a, b) = two_agents(&db, prefix).await;
    let console = ConsoleInfo::for_job("s1");
    a.center()
        .run(SINGLETON, "s1")
        .param(json!({"sleep_ms": 9000}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let claim_key = format!("jobagent:claim:{SINGLETON}");
    // Several passes while it runs (the claim is renewed every 3 s): the claim stays.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        pass.wait_passes(1, Duration::from_secs(5)).await;
        let claim = db.hash_value(&claim_key, "claim").await;
        assert!(
            claim.as_deref().is_some_and(|c| c.contains("\"s1\"")),
            "the live claim was deleted after {:?}: {claim:?}",
            started.elapsed()
        );
        let refused = b.center().run(SINGLETON, "s2").send().await;
        if db.result("s1").await.is_none() {
            refused.assert_err(501);
            assert_eq!(refused.busy_job_id(), Some("s1"), "{}", refused.body);
        }
    }
    let result = wait::result(&db, "s1", Duration::from_secs(20)).await;
    assert_eq!(
        result["R"], "ok",
        "the singleton was not left to finish: {result}"
    );
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert!(
        !lines.iter().any(|l| l["s"]
            .as_str()
            .unwrap_or("")
            .contains("lost its cluster-wide claim")),
        "{lines:?}"
    );
    // More passes after it ended: the other replica still names it as the last run.
    pass.wait_passes(3, Duration::from_secs(10)).await;
    let stop = b.center().stop(SINGLETON, "stop-late").send().await;
    stop.assert_err(501);
    assert_eq!(stop.busy_job_id(), Some("s1"), "{}", stop.body);
    // And it may run again, anywhere.
    b.center()
        .run(SINGLETON, "s3")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "s3", Duration::from_secs(10)).await["R"],
        "ok"
    );
    assert!(pass.passes() >= 10 && pass.errors() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_keeps_its_claim_and_last_run_while_hangfire_expires_rows() {
    singleton_through_expiration(Generation::Current, "xs").await;
}

/// On Install.v3's tables, in a database west of UTC: rows written in the session's zone
/// would be 7 or 8 hours expired to Hangfire (naive UTC, ExpirationManager.cs of 1.9.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_keeps_its_claim_and_last_run_while_hangfire_expires_rows_oldest_tables() {
    singleton_through_expiration(Generation::Oldest, "xo").await;
}

/// Starts two replicas; the first runs a long singleton and a long transient job, which
/// the second sees; then the first is SIGKILLed. Returns the survivor and when the kill was.
async fn kill_one_mid_run(db: &TestDb, prefix: &str) -> (Replica, Instant) {
    let mut a = Replica::start(&format!("{prefix}-a"), &store_env(db)).await;
    let b = Replica::start(&format!("{prefix}-b"), &store_env(db)).await;
    a.center()
        .run(SINGLETON, "k1")
        .param(json!({"sleep_ms": 120000}))
        .send()
        .await
        .assert_status(200);
    a.run_long_seen_by(&b, TRANSIENT, "k2").await;
    a.kill();
    (b, Instant::now())
}

/// Waits (with a deadline from the kill) until the survivor may run the singleton.
async fn claim_lapses(b: &Replica, killed: Instant, within: Duration) {
    loop {
        let reply = b
            .center()
            .run(SINGLETON, "k4")
            .param(json!({"lines": 1}))
            .send()
            .await;
        if reply.status == 200 {
            return;
        }
        reply.assert_err(501);
        assert!(
            killed.elapsed() < within,
            "claim still held after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_runs_are_reported_lost_while_hangfire_expires_rows() {
    let db = TestDb::new().await;
    let pass = ExpirationPass::start(&db, EVERY).await;
    let (b, killed) = kill_one_mid_run(&db, "xk").await;
    claim_lapses(&b, killed, Duration::from_secs(30)).await;
    for id in ["k1", "k2"] {
        let left = Duration::from_secs(60).saturating_sub(killed.elapsed());
        wait::failure(&db, id, left, "agent replica lost: xk-a").await;
    }
    assert_eq!(
        wait::result(&db, "k4", Duration::from_secs(10)).await["R"],
        "ok"
    );
    // Hangfire's pass ran all along (once a second) and never failed.
    assert!(
        pass.passes() >= 5 && pass.errors() == 0,
        "{} passes, {} errors",
        pass.passes(),
        pass.errors()
    );
}

/// The lease row of the dead replica is gone (deleted by hand here; an earlier agent
/// version's lease, kept in `expireat`, was deleted by Hangfire's expiration): its runs are
/// still reported lost, after a survivor's next scan and the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_runs_are_reported_lost_when_its_lease_row_is_gone() {
    let db = TestDb::oldest().await;
    let pass = ExpirationPass::start(&db, EVERY).await;
    let (b, killed) = kill_one_mid_run(&db, "xg").await;
    let deleted = db
        .client()
        .execute(
            &format!(
                "DELETE FROM {} WHERE key = 'jobagent:replicas' AND field = 'xg-a'",
                db.table("hash")
            ),
            &[],
        )
        .await
        .expect("delete the lease row");
    assert_eq!(deleted, 1, "the dead replica had a lease row");
    let runs = db.hash_rows("jobagent:runs:xg-a").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    claim_lapses(&b, killed, Duration::from_secs(30)).await;
    // A scan every 30 s, then the 10 s grace, then the next 5 s reap.
    for id in ["k1", "k2"] {
        let left = Duration::from_secs(90).saturating_sub(killed.elapsed());
        let r: Value = wait::failure(&db, id, left, "agent replica lost: xg-a").await;
        assert_eq!(r["RunId"], id);
    }
    assert!(db.hash_rows("jobagent:runs:xg-a").await.is_empty());
    assert!(pass.errors() == 0);
}
