//! The generations and names of Hangfire.PostgreSql schemas the agent writes into.
//!
//! Deployed centers run every table generation since Install.v3 (Hangfire.PostgreSql's
//! `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`: `serial` ids, `varchar(100)` keys,
//! `expireat timestamp` holding naive UTC until Install.v19), in databases whose default time
//! zone is anything, under any schema name (`PostgreSqlStorageOptions.SchemaName`, always
//! quoted by Hangfire.PostgreSql, e.g. in `src/Hangfire.PostgreSql/ExpirationManager.cs`).

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::json;
use tests::center::ConsoleInfo;
use tests::pg::{Generation, SCHEMA, TestDb};
use tests::service::TestService;
use tests::wait;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// Runs a transient job with three lines through `center` and checks what the dashboard
/// reads and when Hangfire would expire it.
async fn run_and_read(db: &TestDb, center: &tests::Center, job_id: &str) {
    let console = ConsoleInfo::for_job(job_id);
    center
        .run(TRANSIENT, job_id)
        .param(json!({"lines": 3, "line_len": 300}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = wait::result(db, job_id, Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert_eq!(
        db.result_ids_listing(job_id, Duration::from_secs(5)).await,
        vec![job_id.to_owned()]
    );
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert_eq!(lines.len(), 5, "started + 3 + finished: {lines:?}");
    let week = 7.0 * 86_400.0;
    for (table, key) in [
        ("set", console.set_key.clone()),
        ("hash", console.hash_key.clone()),
        ("hash", format!("_agent_result_{job_id}")),
        ("set", "_agent_result_".to_owned()),
    ] {
        let ahead = db.expiry_ahead(table, &key).await;
        assert!(
            !ahead.is_empty()
                && ahead
                    .iter()
                    .all(|e| e.is_some_and(|e| (e - week).abs() < 120.0)),
            "{table} {key}: expires in {ahead:?} s, not 7 days (as Hangfire reads it)"
        );
    }
}

/// A schema named as many deployments name it, `hangfire-prod`, sent by the center.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_hangfire_prod_is_written_through_the_header() {
    let db = TestDb::with(Generation::Current, "hangfire-prod").await;
    let service = TestService::start().await;
    let center = service.center().with_storage(&db.storage());
    run_and_read(&db, &center, "hp1").await;
}

/// A schema whose name holds a `"` and SQL: quoted as an identifier, never injected; both
/// as the agent's own store and on the oldest tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_name_with_a_quote_is_quoted_not_injected() {
    let schema = r#"hf"; DROP TABLE public.canary; --"#;
    let db = TestDb::with(Generation::Oldest, schema).await;
    db.client()
        .batch_execute("CREATE TABLE public.canary (x int)")
        .await
        .expect("canary table");
    let service = TestService::start_with(
        AgentOptions::new()
            .store(db.connection_string(), schema, 7.0)
            .instance("quoted"),
    )
    .await;
    run_and_read(&db, &service.center(), "q1").await;
    let canary = db
        .client()
        .query_one("SELECT count(*) FROM public.canary", &[])
        .await;
    assert!(canary.is_ok(), "the canary table is gone: {canary:?}");
    // The same name sent by a center.
    let center = TestService::start().await;
    let center = center.center().with_storage(&db.storage());
    center.run(TRANSIENT, "q2").send().await.assert_status(200);
    assert_eq!(
        wait::result(&db, "q2", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

/// The agent keeps no session state of its own (a pooler in transaction mode would not keep
/// it: see store_pgbouncer.rs): its sessions run in the database's zone, or the one the
/// string's own `Options` name, and its times are still the naive UTC Hangfire compares with
/// `NOW() AT TIME ZONE 'UTC'` (ExpirationManager.cs before 1.9.10): the runs above and the
/// heartbeat below are written on a database in America/Los_Angeles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sessions_keep_the_database_zone_and_the_strings_options() {
    let db = TestDb::oldest().await;
    for (conn, expected) in [
        (db.connection_string(), "America/Los_Angeles"),
        (
            format!("{};Options=-c TimeZone=Asia/Tokyo", db.connection_string()),
            "Asia/Tokyo",
        ),
    ] {
        let (_, zone) = jobagent::__dev::probe_store(&conn, "SELECT current_setting('TimeZone')")
            .await
            .expect("probe");
        assert_eq!(zone, expected, "{conn}");
    }
    // Other options of the string apply too.
    let (_, timeout) = jobagent::__dev::probe_store(
        &format!(
            "{};Options=-c statement_timeout=4321",
            db.connection_string()
        ),
        "SELECT current_setting('statement_timeout')",
    )
    .await
    .expect("probe");
    assert_eq!(timeout, "4321ms");
}

/// Heartbeat rows (10 minutes) on the oldest tables expire when Hangfire expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_expire_in_ten_minutes_on_the_oldest_tables() {
    let db = TestDb::oldest().await;
    assert_eq!(db.schema(), SCHEMA);
    let service = TestService::start().await;
    let center = service.center().with_storage(&db.storage());
    center.heartbeat().send().await.assert_status(200);
    let key = format!("AgentHeart:{}", center.server_id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let ahead = loop {
        let ahead = db.expiry_ahead("hash", &key).await;
        if !ahead.is_empty() {
            break ahead;
        }
        assert!(Instant::now() < deadline, "no heartbeat row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ahead.len() == 1 && ahead[0].is_some_and(|e| (e - 600.0).abs() < 30.0),
        "heartbeat expires in {ahead:?} s"
    );
}
