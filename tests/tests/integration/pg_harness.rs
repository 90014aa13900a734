//! The PostgreSQL harness itself: fresh, separate databases with the Hangfire tables, and
//! the dashboard-style readers.

use serde_json::json;
use tests::hangfire::ExpirationPass;
use tests::pg::{DATABASE_URL_VAR, Generation, SCHEMA, TestDb};

async fn tables(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
            &[&SCHEMA],
        )
        .await
        .expect("list tables");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn two_databases_have_the_tables_and_are_distinct() {
    let (a, b) = tokio::join!(TestDb::new(), TestDb::new());
    eprintln!(
        "server: {} ({DATABASE_URL_VAR} {})",
        a.origin(),
        if std::env::var(DATABASE_URL_VAR).is_ok() {
            "set"
        } else {
            "unset"
        }
    );
    assert_ne!(a.name(), b.name());
    for db in [&a, &b] {
        assert_eq!(tables(db).await, ["hash", "lock", "set"], "{}", db.name());
        let current: String = db
            .client()
            .query_one("SELECT current_database()::text", &[])
            .await
            .expect("current_database")
            .get(0);
        assert_eq!(current, db.name());
    }

    // A row written in one database is not seen in the other.
    a.client()
        .execute(
            "INSERT INTO hangfire.set (key, score, value) VALUES ('k', 1, 'v')",
            &[],
        )
        .await
        .expect("insert");
    assert_eq!(a.set_rows("k").await, [("v".to_owned(), 1.0)]);
    assert!(b.set_rows("k").await.is_empty());

    // Unique constraints and defaults are as Hangfire.PostgreSql has them.
    let dup = a
        .client()
        .execute(
            "INSERT INTO hangfire.set (key, score, value) VALUES ('k', 2, 'v')",
            &[],
        )
        .await;
    assert!(dup.is_err(), "set must be unique on (key, value)");
    a.client()
        .execute(
            "INSERT INTO hangfire.hash (key, field, value) VALUES ('h', 'f', 'x')",
            &[],
        )
        .await
        .expect("insert hash");
    let dup = a
        .client()
        .execute(
            "INSERT INTO hangfire.hash (key, field, value) VALUES ('h', 'f', 'y')",
            &[],
        )
        .await;
    assert!(dup.is_err(), "hash must be unique on (key, field)");
    let count: i32 = a
        .client()
        .query_one("SELECT updatecount FROM hangfire.hash WHERE key = 'h'", &[])
        .await
        .expect("updatecount")
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn connection_string_and_url_reach_the_same_database() {
    let db = TestDb::new().await;
    let cs = db.connection_string();
    for key in ["Host=", "Port=", "Database=", "Username=", "Password="] {
        assert!(cs.contains(key), "{cs}");
    }
    assert!(cs.contains(&format!("Database={}", db.name())), "{cs}");
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect by URL");
    tokio::spawn(connection);
    let name: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(name, db.name());
    let storage: serde_json::Value =
        serde_json::from_str(&db.storage().to_json()).expect("storage JSON");
    assert_eq!(storage["Type"], "postgresql");
    assert_eq!(storage["TablePrefix"], "hangfire");
    assert_eq!(storage["HangfireDb"], cs.as_str());
}

#[tokio::test]
async fn readers_read_the_dashboard_way() {
    let db = TestDb::new().await;
    let c = db.client();
    let long = "x".repeat(300);
    // Inserted out of score order: the dashboard reads in insertion order.
    c.batch_execute(&format!(
        r##"INSERT INTO hangfire.set (key, score, value) VALUES
             ('console:1', 0.5, '{{"t":0.5,"s":"second written first","c":"#ffffff"}}'),
             ('console:1', 0.1, '{{"t":0.1,"r":true,"s":"0123456789abcdef0123456789abcdef"}}'),
             ('console:1', 0.9, '{{"t":0.9,"s":"1","p":50.0,"n":"bar"}}'),
             ('console:other', 0.1, '{{"t":0.1,"s":"elsewhere"}}');
           INSERT INTO hangfire.hash (key, field, value) VALUES
             ('console:refs:1', '0123456789abcdef0123456789abcdef', '{long}'),
             ('_agent_result_42', '123', '{{"Id":"42","Action":"run","RunId":"42","R":"ok","E":""}}');
           INSERT INTO hangfire.set (key, score, value) VALUES ('_agent_result_', 1, '42');"##
    ))
    .await
    .expect("seed");
    let lines = db.console_lines("console:1", "console:refs:1").await;
    assert_eq!(
        lines,
        [
            json!({"t":0.5,"s":"second written first","c":"#ffffff"}),
            json!({"t":0.1,"s":long}),
            json!({"t":0.9,"s":"1","p":50.0,"n":"bar"}),
        ]
    );
    assert_eq!(
        db.result("42").await,
        Some(json!({"Id":"42","Action":"run","RunId":"42","R":"ok","E":""}))
    );
    assert_eq!(db.result("43").await, None);
    assert_eq!(db.result_ids().await, ["42"]);
}

/// The column types of `table`, by name, in order.
async fn columns(db: &TestDb, table: &str) -> Vec<(String, String)> {
    let rows = db
        .client()
        .query(
            "SELECT column_name::text, format_type(atttypid, atttypmod) FROM information_schema.columns c \
             JOIN pg_attribute a ON a.attrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
             AND a.attname = c.column_name \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&db.schema(), &table],
        )
        .await
        .expect("list columns");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The oldest generation has Install.v3.sql's shapes (Hangfire.PostgreSql's
/// `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`) in a database west of UTC; the current
/// one has `bigint` ids, `text` keys, `updatecount` and `timestamptz` (Install.v11, v12, v4,
/// v19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_have_their_table_shapes() {
    let old = TestDb::oldest().await;
    let cols = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        columns(&old, "hash").await,
        cols(&[
            ("id", "integer"),
            ("key", "character varying(100)"),
            ("field", "character varying(100)"),
            ("value", "text"),
            ("expireat", "timestamp without time zone"),
        ])
    );
    assert_eq!(
        columns(&old, "set").await,
        cols(&[
            ("id", "integer"),
            ("key", "character varying(100)"),
            ("score", "double precision"),
            ("value", "text"),
            ("expireat", "timestamp without time zone"),
        ])
    );
    let zone: String = old
        .connect()
        .await
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .expect("zone")
        .get(0);
    assert_eq!(zone, "America/Los_Angeles");
    let new = TestDb::with(Generation::Current, "hangfire-prod").await;
    assert_eq!(new.schema(), "hangfire-prod");
    assert_eq!(
        columns(&new, "hash").await,
        cols(&[
            ("id", "bigint"),
            ("key", "text"),
            ("field", "text"),
            ("value", "text"),
            ("expireat", "timestamp with time zone"),
            ("updatecount", "integer"),
        ])
    );
}

/// The expiration pass deletes what Hangfire deletes, per generation: naive UTC in the past
/// goes, naive UTC an hour ahead stays, however far west the session is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiration_pass_compares_as_hangfire_does() {
    let old = TestDb::oldest().await;
    old.client()
        .batch_execute(&format!(
            "INSERT INTO {h} (key, field, value, expireat) VALUES \
             ('gone', 'f', 'v', (now() at time zone 'utc') - interval '1 minute'), \
             ('kept', 'f', 'v', (now() at time zone 'utc') + interval '1 hour'), \
             ('forever', 'f', 'v', NULL)",
            h = old.table("hash")
        ))
        .await
        .expect("insert");
    let pass = ExpirationPass::start(&old, std::time::Duration::from_millis(100)).await;
    pass.wait_passes(2, std::time::Duration::from_secs(10))
        .await;
    assert!(old.hash_rows("gone").await.is_empty());
    assert_eq!(old.hash_rows("kept").await.len(), 1);
    assert_eq!(old.hash_rows("forever").await.len(), 1);
    assert_eq!((pass.deleted(), pass.errors()), (1, 0));
    let ahead = old.expiry_ahead("hash", "kept").await;
    assert!(
        ahead.len() == 1 && ahead[0].is_some_and(|e| (e - 3600.0).abs() < 60.0),
        "{ahead:?}"
    );
}
