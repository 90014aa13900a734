//! The [`Driver`] contract, checked once per group of primitives and run against every store:
//! the in-memory one, and real PostgreSQL, MariaDB and Redis servers (each test fails, never
//! skips, when its server does not answer: see [`pg`], [`mysql`], [`redis`] for how to point
//! them elsewhere).

use std::time::Duration;

use super::driver::Driver;

const DAY: Option<Duration> = Some(Duration::from_secs(86_400));

/// The clock, and plain hash reads and writes.
async fn clock_and_hash<D: Driver>(d: &D) {
    let a = d.now_ms().await.expect("the clock");
    assert!(a > 1_600_000_000_000, "ms since the epoch: {a}");
    let b = d.now_ms().await.expect("the clock");
    assert!(b >= a, "the store's clock does not go back: {a} then {b}");

    assert_eq!(d.get("c:h", "f").await.expect("get"), None);
    d.put("c:h", "f", "1", DAY).await.expect("put");
    d.put("c:h", "g", "2", DAY).await.expect("put");
    d.put("c:h", "f", "3", DAY).await.expect("put again");
    assert_eq!(d.get("c:h", "f").await.expect("get").as_deref(), Some("3"));
    let mut all = d.get_all("c:h").await.expect("get all");
    all.sort();
    assert_eq!(all, [("f".into(), "3".into()), ("g".into(), "2".into())]);
    assert!(d.delete("c:h", "g").await.expect("delete"));
    assert!(!d.delete("c:h", "g").await.expect("delete again"));
    assert_eq!(
        d.take_all("c:h").await.expect("take"),
        [("f".to_owned(), "3".to_owned())]
    );
    assert!(d.take_all("c:h").await.expect("take again").is_empty());
    assert!(d.get_all("c:h").await.expect("get all").is_empty());

    // Names longer than MySQL's columns (100 and 40 characters) read back under the same names.
    let (key, field) = (format!("c:{}", "k".repeat(120)), "f".repeat(60));
    d.put(&key, &field, "long", DAY).await.expect("put long");
    assert_eq!(
        d.get(&key, &field).await.expect("get long").as_deref(),
        Some("long")
    );
    assert_eq!(d.get_all(&key).await.expect("all long").len(), 1);
    assert!(d.delete(&key, &field).await.expect("delete long"));
}

/// The conditional write: each outcome, and that it compares the whole value.
async fn conditional_write<D: Driver>(d: &D) {
    let k = "c:cas";
    assert!(d.cas(k, "f", None, Some("a"), DAY).await.expect("create"));
    assert!(
        !d.cas(k, "f", None, Some("b"), DAY)
            .await
            .expect("create again"),
        "an existing field is not created over"
    );
    assert!(
        !d.cas(k, "f", Some("A"), Some("b"), DAY)
            .await
            .expect("case")
    );
    assert!(
        !d.cas(k, "f", Some("a "), Some("b"), DAY)
            .await
            .expect("pad")
    );
    assert_eq!(d.get(k, "f").await.expect("get").as_deref(), Some("a"));
    assert!(
        d.cas(k, "f", Some("a"), Some("b"), None)
            .await
            .expect("swap")
    );
    assert!(
        !d.cas(k, "f", Some("a"), Some("c"), DAY)
            .await
            .expect("stale")
    );
    assert!(
        d.cas(k, "f", Some("b"), Some("b"), DAY)
            .await
            .expect("same")
    );
    assert!(
        !d.cas(k, "f", Some("x"), None, DAY)
            .await
            .expect("stale delete")
    );
    assert!(!d.cas(k, "f", None, None, DAY).await.expect("absent?"));
    assert!(d.cas(k, "f", Some("b"), None, DAY).await.expect("delete"));
    assert!(d.cas(k, "f", None, None, DAY).await.expect("absent"));
    assert!(
        !d.cas(k, "g", Some("b"), Some("c"), DAY)
            .await
            .expect("none")
    );
    assert_eq!(d.get(k, "g").await.expect("get"), None);
    let json = r#"{"Instance":"é","Until":1}"#;
    assert!(d.cas(k, "j", None, Some(json), DAY).await.expect("json"));
    assert!(
        d.cas(k, "j", Some(json), Some("{}"), DAY)
            .await
            .expect("json swap")
    );
}

/// Expiry and the fencing counter.
async fn expiry_and_fence<D: Driver>(d: &D) {
    d.put("c:e", "f", "1", Some(Duration::from_secs(60)))
        .await
        .expect("put");
    d.expire("c:e", Duration::from_secs(86_400))
        .await
        .expect("expire");
    assert_eq!(d.get("c:e", "f").await.expect("get").as_deref(), Some("1"));
    let a = d.fence("c::Class").await.expect("fence");
    let b = d.fence("c::Class").await.expect("fence");
    let c = d.fence("c::Other").await.expect("fence");
    assert!(b > a, "tokens grow: {a} then {b}");
    assert!(c >= 1);
}

async fn all<D: Driver>(d: &D) {
    clock_and_hash(d).await;
    conditional_write(d).await;
    expiry_and_fence(d).await;
}

#[tokio::test(start_paused = true)]
async fn memory() {
    let d = super::memory::MemoryStore::new();
    all(&d).await;
    // The TTL is kept per key.
    d.put("c:t", "f", "1", Some(Duration::from_secs(5)))
        .await
        .expect("put");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(d.get("c:t", "f").await.expect("get"), None);
}

/// PostgreSQL: `JOBAGENT_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`;
/// a fresh schema with Hangfire.PostgreSql's `hash` table (unique on `key, field`), dropped
/// at the end.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn pg() {
    let url = std::env::var("JOBAGENT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let spec = super::pg_connstr::parse(&url).expect("JOBAGENT_TEST_DATABASE_URL parses");
    let schema = format!("jobagent_c_{:016x}", rand::random::<u64>());
    let store =
        super::postgres::PgStore::open(&spec, &schema, super::pool::Load::Now).expect("opens");
    let conn = store.conn().await.unwrap_or_else(|e| {
        panic!("no PostgreSQL answers ({e}): start one, or set JOBAGENT_TEST_DATABASE_URL")
    });
    conn.batch_execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.hash (id bigserial PRIMARY KEY, \
         \"key\" text NOT NULL, field text NOT NULL, \"value\" text, expireat timestamp, \
         updatecount integer NOT NULL DEFAULT 0, UNIQUE (\"key\", field))"
    ))
    .await
    .expect("the test schema");
    drop(conn);
    all(&store).await;
    let conn = store.conn().await.expect("a connection");
    let _ = conn
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
}

/// MariaDB/MySQL: `JOBAGENT_TEST_MYSQL_URL`, else root without a password at 127.0.0.1:3306;
/// a fresh database with Hangfire.MySqlStorage's `Hash` table, dropped at the end.
#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn mysql() {
    use mysql_async::prelude::Queryable;
    let url = std::env::var("JOBAGENT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".to_owned());
    let mut admin =
        tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::from_url(&url))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())
            .and_then(|c| c.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                panic!("no MySQL/MariaDB answers ({e}): start one, or set JOBAGENT_TEST_MYSQL_URL")
            });
    let db = format!("jobagent_c_{:016x}", rand::random::<u64>());
    admin
        .query_drop(format!(
            "CREATE DATABASE `{db}` CHARACTER SET utf8 COLLATE utf8_general_ci; \
             CREATE TABLE `{db}`.`HangfireHash` (`Id` int(11) NOT NULL AUTO_INCREMENT, \
             `Key` nvarchar(100) NOT NULL, `Field` nvarchar(40) NOT NULL, `Value` longtext, \
             `ExpireAt` datetime(6) DEFAULT NULL, PRIMARY KEY (`Id`), \
             UNIQUE KEY `IX_HangfireHash_Key_Field` (`Key`,`Field`)) ENGINE=InnoDB"
        ))
        .await
        .expect("the test database");
    let base = url.trim_end_matches('/');
    let store = super::mysql::MysqlStore::open(&format!("{base}/{db}"), Some("Hangfire"), false)
        .expect("opens");
    all(&store).await;
    let _ = admin.query_drop(format!("DROP DATABASE `{db}`")).await;
}

/// Redis: `JOBAGENT_TEST_REDIS_URL`, else 127.0.0.1:6379; a fresh prefix, its keys left to
/// expire (a day).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn redis() {
    let url = std::env::var("JOBAGENT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("{{c{:016x}}}:", rand::random::<u64>());
    let store =
        super::redis::RedisStore::open(&url, &prefix, None, super::Origin::Own).expect("opens");
    if let Err(e) = store.ping().await {
        panic!("no Redis answers ({e}): start one, or set JOBAGENT_TEST_REDIS_URL");
    }
    all(&store).await;
}
