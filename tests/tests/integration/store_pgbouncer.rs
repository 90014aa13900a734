//! The agent through PgBouncer, the usual front of a center's PostgreSQL, configured as a
//! center's is (`ignore_startup_parameters = extra_float_digits`: Npgsql sends that one; it
//! sends no `options`, and keeps no named prepared statement unless asked), in session and
//! in transaction pooling, in front of the current tables and of the oldest ones (`expireat
//! timestamp` holding naive UTC, Hangfire.PostgreSql's `Scripts/Install.v3.sql` until
//! `Install.v19.sql`), on a database whose default time zone is not UTC.
//!
//! What the center sees is read straight from PostgreSQL, as its dashboard reads it: the
//! console (Hangfire.Console's `ConsoleStorage` reads the `console:<id>` set by id), the
//! result the agent reports, and when Hangfire's ExpirationManager would delete each row
//! (`src/Hangfire.PostgreSql/ExpirationManager.cs`: `expireat < NOW()`, or
//! `NOW() AT TIME ZONE 'UTC'` on the naive columns before 1.9.10).

use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::ConsoleInfo;
use tests::pg::{Generation, SCHEMA, TestDb};
use tests::pgbouncer::{PgBouncer, PoolMode};
use tests::replica::Replica;
use tests::service::TestService;
use tests::wait;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
/// East of UTC: a time converted in the session's zone lands 8 hours late.
const ZONE: &str = "Asia/Shanghai";

/// A fresh database of `generation` whose default time zone is [`ZONE`] (for every session
/// opened from now on: PgBouncer's server sessions included).
async fn database(generation: Generation) -> TestDb {
    let db = TestDb::with(generation, SCHEMA).await;
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET timezone TO '{ZONE}'",
            db.name()
        ))
        .await
        .expect("the database's time zone");
    db
}

/// Asserts that every row of `table` under `key` (`rows` of them, or at least one) expires
/// `secs` (± `slack`) from now as Hangfire's ExpirationManager of the tables' generation reads
/// it, whatever the session's zone.
async fn expires_in(
    db: &TestDb,
    table: &str,
    key: &str,
    rows: Option<usize>,
    secs: f64,
    slack: f64,
) {
    let ahead = db.expiry_ahead(table, key).await;
    let count_ok = rows.map_or(!ahead.is_empty(), |n| ahead.len() == n);
    assert!(
        count_ok
            && ahead
                .iter()
                .all(|e| e.is_some_and(|e| (e - secs).abs() < slack)),
        "{:?} {table} {key}: expires in {ahead:?} s, not {secs} s (as Hangfire reads it)",
        db.generation()
    );
}

/// Three runs at once (so transaction pooling spreads them over server sessions) and a
/// heartbeat, dispatched as the center does with its PgBouncer string in `x-job-storage`:
/// each is answered 200, and the center finds the result, the console and the expiries it
/// expects.
async fn runs_land_through(mode: PoolMode, generation: Generation, tag: &str) {
    let db = database(generation).await;
    let bouncer = PgBouncer::start(&db, mode).await;
    // The test's premise: through PgBouncer a session runs in the database's zone.
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            bouncer.port(),
            db.name()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("a session through PgBouncer");
    tokio::spawn(connection);
    let zone = client
        .simple_query("SHOW TimeZone")
        .await
        .expect("its zone")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
    assert_eq!(zone.as_deref(), Some(ZONE));
    drop(client);

    let service = TestService::start().await;
    let center = service.center().with_storage(&bouncer.storage(&db));
    center.heartbeat().send().await.assert_status(200);
    let ids: Vec<String> = (1..=3).map(|i| format!("{tag}-{i}")).collect();
    let consoles: Vec<ConsoleInfo> = ids.iter().map(|id| ConsoleInfo::for_job(id)).collect();
    let send = |i: usize| {
        center
            .run(TRANSIENT, &ids[i])
            .param(json!({"lines": 3, "line_len": 300}))
            .console(consoles[i].clone())
            .send()
    };
    let (a, b, c) = tokio::join!(send(0), send(1), send(2));
    for reply in [a, b, c] {
        reply.assert_status(200);
    }
    let week = 7.0 * 86_400.0;
    for (id, console) in ids.iter().zip(&consoles) {
        let result = wait::result(&db, id, Duration::from_secs(15)).await;
        assert_eq!(result["R"], "ok", "{mode:?} {generation:?}: {result}");
        let lines = db.console_lines(&console.set_key, &console.hash_key).await;
        assert_eq!(
            lines.len(),
            5,
            "{mode:?} {generation:?}: started + 3 + finished: {lines:?}"
        );
        for (table, key) in [
            ("set", console.set_key.clone()),
            ("hash", console.hash_key.clone()),
            ("hash", format!("_agent_result_{id}")),
        ] {
            expires_in(&db, table, &key, None, week, 120.0).await;
        }
    }
    let mut listed = Vec::new();
    for id in &ids {
        listed = db.result_ids_listing(id, Duration::from_secs(5)).await;
    }
    listed.sort();
    assert_eq!(listed, ids, "{mode:?} {generation:?}");
    expires_in(&db, "set", "_agent_result_", Some(3), week, 120.0).await;
    let heart = format!("AgentHeart:{}", center.server_id());
    expires_in(&db, "hash", &heart, Some(1), 600.0, 30.0).await;
    let log = bouncer.log_text();
    assert!(
        !log.contains("unsupported startup parameter") && !log.contains("prepared statement"),
        "{mode:?} {generation:?}: PgBouncer refused something: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_current_tables() {
    runs_land_through(PoolMode::Session, Generation::Current, "pb-sc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_oldest_tables() {
    runs_land_through(PoolMode::Session, Generation::Oldest, "pb-so").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_current_tables() {
    runs_land_through(PoolMode::Transaction, Generation::Current, "pb-tc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_oldest_tables() {
    runs_land_through(PoolMode::Transaction, Generation::Oldest, "pb-to").await;
}

/// A replica in cluster mode whose own store is behind PgBouncer: its runs land either way;
/// in session pooling it listens for cluster notifications (its `LISTEN` is on a server
/// session), in transaction pooling it says once that it polls instead.
async fn cluster_through(mode: PoolMode, tag: &str) {
    let db = database(Generation::Current).await;
    let bouncer = PgBouncer::start(&db, mode).await;
    let replica = Replica::start_logged(
        tag,
        &[
            ("JOBAGENT_STORE", bouncer.connection_string()),
            ("JOBAGENT_STORE_SCHEMA", db.schema().to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ],
    )
    .await;
    const UNHEARD: &str = "cluster notifications do not arrive";
    let deadline = Instant::now() + Duration::from_secs(20);
    match mode {
        PoolMode::Transaction => {
            while !replica.log_text().contains(UNHEARD) {
                assert!(
                    Instant::now() < deadline,
                    "no line saying that notifications do not arrive: {}",
                    replica.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        PoolMode::Session => loop {
            let listening = db
                .client()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND query LIKE 'LISTEN jobagent_cmd%'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get::<_, i64>(0);
            if listening > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no session listening: {}",
                replica.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    }
    for i in 1..=2 {
        let id = format!("{tag}-{i}");
        replica
            .center()
            .run(TRANSIENT, &id)
            .send()
            .await
            .assert_status(200);
        assert_eq!(
            wait::result(&db, &id, Duration::from_secs(15)).await["R"],
            "ok"
        );
    }
    let said = replica.log_text().matches(UNHEARD).count();
    let expected = usize::from(mode == PoolMode::Transaction);
    assert_eq!(said, expected, "{mode:?}: {}", replica.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_in_session_pooling_listens() {
    cluster_through(PoolMode::Session, "pb-cluster-s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_in_transaction_pooling_polls_and_says_so_once() {
    cluster_through(PoolMode::Transaction, "pb-cluster-t").await;
}
