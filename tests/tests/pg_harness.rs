//! The PostgreSQL harness itself: fresh, separate databases with the Hangfire tables, and
//! the dashboard-style readers.

use serde_json::json;
use tests::pg::{DATABASE_URL_VAR, SCHEMA, TestDb};

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
        assert_eq!(tables(db).await, ["hash", "set"], "{}", db.name());
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
