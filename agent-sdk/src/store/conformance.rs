//! The store contract, written once and run against every store. The cluster's [`Driver`]
//! primitives: on the in-memory store and on real PostgreSQL, MariaDB and Redis servers. The
//! layout every real store keeps (console batches, references and progress, first reports,
//! locks, fencing tokens, hashes and sets), through [`super::Store`]: in [`real`]. Each real
//! store's test fails, never skips, when its server does not answer (see [`real`] for how to
//! point them elsewhere); what only one store does is tested in its own module.

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

/// The real stores, each opened as the agent opens one ([`Store::open`]) on fresh tables or
/// keys: the [`Driver`] checks above, then the layout checks below.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
mod real {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::super::line::EncodedLine;
    use super::super::{Backend, Load, Opening, Store, StoreType};

    /// Runs `$call` with `$b` bound to the store's backend (its [`Driver`](super::Driver) and
    /// its reads: `Store`'s own reads are built for `jobagent-dev` and the relay only).
    macro_rules! on_backend {
        ($store:expr, $b:ident => $call:expr) => {
            match $store.backend() {
                #[cfg(feature = "postgres")]
                Backend::Postgres($b) => $call,
                #[cfg(feature = "mysql")]
                Backend::Mysql($b) => $call,
                #[cfg(feature = "redis")]
                Backend::Redis($b) => $call,
                #[allow(unreachable_patterns)]
                _ => unreachable!("a real store"),
            }
        };
    }

    async fn read_set(s: &Store, key: &str, from: usize, count: usize) -> Vec<String> {
        on_backend!(s, b => b.read_set(key, from, count).await).expect("read_set")
    }

    async fn read_hash(s: &Store, key: &str, field: &str) -> Option<String> {
        on_backend!(s, b => b.read_hash(key, field).await).expect("read_hash")
    }

    async fn read_hash_all(s: &Store, key: &str) -> Vec<(String, String)> {
        let mut all = on_backend!(s, b => b.read_hash_all(key).await).expect("read_hash_all");
        all.sort();
        all
    }

    fn open(kind: StoreType, connection: &str, prefix: &str) -> Store {
        Store::open(&Opening {
            kind,
            connection,
            prefix: Some(prefix),
            expire_days: 1.0,
            db: None,
            from_center: false,
            load: Load::Now,
            relay_token: None,
        })
        .unwrap_or_else(|e| panic!("{kind} store opens: {e}"))
    }

    /// The Driver checks, then the layout checks (`stale`: makes a held lock stale, as when
    /// its holder stops keeping it); `cleanup` runs whether they passed or not.
    async fn check<F, Fut>(store: &Store, stale: F, cleanup: impl Future<Output = ()>)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let outcome = AssertUnwindSafe(async {
            store
                .ping(Duration::from_secs(10))
                .await
                .expect("the store answers");
            on_backend!(store, b => super::all(b).await);
            layout(store, stale).await;
        })
        .catch_unwind()
        .await;
        cleanup.await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// A console line as the encoder writes it, in score order.
    fn line(t: f64, text: &str) -> EncodedLine {
        EncodedLine {
            value: format!(
                r#"{{"t":{t:?},"s":{}}}"#,
                serde_json::to_string(text).expect("JSON")
            ),
            score: t,
            reference: None,
            progress_field: None,
        }
    }

    fn texts(values: &[String]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                let parsed: serde_json::Value = serde_json::from_str(v).expect("a JSON line");
                parsed["s"].as_str().expect("s").to_owned()
            })
            .collect()
    }

    /// The layout every real store keeps, through [`Store`].
    async fn layout<F, Fut>(s: &Store, stale: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        console(s).await;
        hashes_and_sets(s).await;
        first_reports(s).await;
        locks(s, stale).await;
        fences(s).await;
    }

    /// A console batch is ordered and idempotent when retried whole or in part, and read
    /// back as the dashboard reads it; references and the last progress go to the hash.
    async fn console(s: &Store) {
        let (set, hash) = ("console:1", "console:refs:1");
        let lines: Vec<EncodedLine> = (0..5)
            .map(|i| line(f64::from(i) + 0.5, &format!("line {i}")))
            .collect();
        // The first three, then the whole batch (a retry after an unknown outcome), a part
        // of it, and the whole again.
        for part in [&lines[..3], &lines[..], &lines[2..4], &lines[..]] {
            s.write_console(set, hash, part).await.expect("a batch");
        }
        let all = (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>();
        assert_eq!(texts(&read_set(s, set, 0, 100).await), all);
        assert_eq!(texts(&read_set(s, set, 1, 2).await), ["line 1", "line 2"]);
        assert!(read_set(s, set, 9, 2).await.is_empty());
        assert!(read_set(s, set, 0, 0).await.is_empty());
        // Only the set is written when there are no references or progress.
        assert!(read_hash_all(s, hash).await.is_empty());

        let field = "0123456789abcdef0123456789abcdef";
        let mut reference = line(10.0, field);
        reference.value = format!(r#"{{"t":10.0,"r":true,"s":"{field}"}}"#);
        let long = "long text ".repeat(100);
        reference.reference = Some((field.to_owned(), long.clone()));
        let mut bar = line(11.0, "1");
        bar.value = r#"{"t":11.0,"s":"1","p":42.0}"#.to_owned();
        bar.progress_field = Some("42.0".to_owned());
        let mut bar2 = line(12.0, "1");
        bar2.value = r#"{"t":12.0,"s":"1","p":43.5}"#.to_owned();
        bar2.progress_field = Some("43.5".to_owned());
        let batch = [reference, bar, bar2];
        for _ in 0..2 {
            s.write_console(set, hash, &batch).await.expect("a batch");
        }
        assert_eq!(
            read_set(s, set, 5, 100).await,
            batch.iter().map(|l| l.value.clone()).collect::<Vec<_>>()
        );
        assert_eq!(read_hash(s, hash, field).await, Some(long));
        assert_eq!(
            read_hash(s, hash, "progress").await.as_deref(),
            Some("43.5"),
            "the last progress wins"
        );
        assert_eq!(read_hash(s, hash, "absent").await, None);
        assert_eq!(read_hash_all(s, hash).await.len(), 2);
    }

    /// Hash fields round trip (upserted, whatever their expiry); a set member is kept once.
    async fn hashes_and_sets(s: &Store) {
        s.set_hash("h:1", &[("a", "1"), ("b", "x y")], None)
            .await
            .expect("set");
        s.set_hash("h:1", &[("a", "2")], Some(Duration::from_secs(60)))
            .await
            .expect("set again");
        assert_eq!(read_hash(s, "h:1", "a").await.as_deref(), Some("2"));
        assert_eq!(read_hash(s, "h:1", "b").await.as_deref(), Some("x y"));
        assert_eq!(read_hash(s, "h:1", "c").await, None);
        assert_eq!(
            read_hash_all(s, "h:1").await,
            [("a".into(), "2".into()), ("b".into(), "x y".into())]
        );
        assert!(read_hash_all(s, "h:none").await.is_empty());
        s.add_to_set("_agent_result_", "17", 1.0)
            .await
            .expect("add");
        s.add_to_set("_agent_result_", "17", 2.0)
            .await
            .expect("add again");
        assert_eq!(read_set(s, "_agent_result_", 0, 10).await, ["17"]);
    }

    /// A dispatch's first report is taken once: its writer's retry is too, no other writer.
    async fn first_reports(s: &Store) {
        let claim = move |id: &'static str, token: &'static str| async move {
            s.first_report(id, token).await.expect("first_report")
        };
        assert!(claim("42", "a:1").await);
        assert!(claim("42", "a:1").await, "a retry");
        assert!(!claim("42", "b:2").await, "another writer");
        assert!(!claim("42", "A:1").await, "the token's case differs");
        assert!(claim("43", "b:2").await, "another dispatch");
        if s.kind() != StoreType::Redis {
            // The SQL stores mark it in hash `jobagent:results` (Redis: see its module).
            assert_eq!(
                read_hash(s, "jobagent:results", "42").await.as_deref(),
                Some("a:1")
            );
        }
    }

    /// Locks are exclusive, kept and released only by their owner, and taken over once stale,
    /// the old owner learning it lost.
    async fn locks<F, Fut>(s: &Store, stale: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let after = Duration::from_millis(300);
        let r = "lock:recurring";
        let a = s.lock_try(r, after).await.expect("try").expect("taken");
        assert_eq!(s.lock_try(r, after).await.expect("try"), None, "exclusive");
        let a = s.lock_keep(r, &a).await.expect("keep").expect("kept");
        // Another owner (in MySQL's owner format, which the others take as any text).
        let other = "2000-01-01 00:00:00.000000";
        assert_eq!(s.lock_keep(r, other).await.expect("keep"), None);
        // Another owner's release leaves it.
        s.lock_release(r, other).await.expect("release");
        assert_eq!(s.lock_try(r, after).await.expect("try"), None);
        s.lock_release(r, &a).await.expect("release");
        let b = s
            .lock_try(r, after)
            .await
            .expect("try")
            .expect("free again");
        assert_ne!(a, b);
        assert_eq!(s.lock_keep(r, &a).await.expect("keep"), None, "released");
        s.lock_release(r, &b).await.expect("release");

        // A holder that stops keeping its lock loses it.
        let r = "lock:x";
        let a = s.lock_try(r, after).await.expect("try").expect("taken");
        stale(r.to_owned()).await;
        if s.kind() != StoreType::Redis {
            // Redis: the key's expiry is the staleness rule, not `stale_after`.
            let longer = Duration::from_secs(600);
            assert_eq!(
                s.lock_try(r, longer).await.expect("try"),
                None,
                "not stale under a longer bound"
            );
        }
        let b = s
            .lock_try(r, after)
            .await
            .expect("try")
            .expect("taken over");
        assert_ne!(a, b);
        assert_eq!(s.lock_keep(r, &a).await.expect("keep"), None, "lost");
        s.lock_release(r, &a).await.expect("release");
        assert_eq!(s.lock_try(r, after).await.expect("try"), None, "b holds it");
        assert!(s.lock_keep(r, &b).await.expect("keep").is_some());
    }

    /// Fencing tokens count up by one per resource (from 1 on the SQL stores; Redis seeds
    /// each counter from its clock), each concurrent increment getting its own.
    async fn fences(s: &Store) {
        let sql = s.kind() != StoreType::Redis;
        for resource in ["lock:a", "lock:b"] {
            let first = s.fence(resource).await.expect("fence");
            let next = [s.fence(resource).await, s.fence(resource).await];
            assert_eq!(next.map(|t| t.expect("fence")), [first + 1, first + 2]);
            assert!(!sql || first == 1, "{resource}: {first}");
        }
        let mut tokens = futures_util::future::join_all((0..8).map(|_| s.fence("lock:c")))
            .await
            .into_iter()
            .map(|t| t.expect("fence"))
            .collect::<Vec<_>>();
        tokens.sort_unstable();
        let first = tokens[0];
        assert_eq!(tokens, (first..first + 8).collect::<Vec<u64>>());
        assert!(!sql || first == 1, "{first}");
    }

    /// Waits out a SQL lock's `stale_after` (300 ms).
    async fn wait_out(_resource: String) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// PostgreSQL: `JOBAGENT_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`;
    /// a fresh schema with Hangfire.PostgreSql's `hash`, `set` and `lock`, dropped at the end.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread")]
    async fn pg() {
        let url = std::env::var("JOBAGENT_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let schema = format!("jobagent_c_{:016x}", rand::random::<u64>());
        let store = open(StoreType::PostgreSql, &url, &schema);
        let pg = store.pg().expect("PostgreSQL");
        let conn = pg.conn().await.unwrap_or_else(|e| {
            panic!("no PostgreSQL answers ({e}): start one, or set JOBAGENT_TEST_DATABASE_URL")
        });
        conn.batch_execute(&format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.hash (id bigserial PRIMARY KEY, \"key\" text NOT NULL, \
             field text NOT NULL, \"value\" text, expireat timestamptz, \
             updatecount integer NOT NULL DEFAULT 0, UNIQUE (\"key\", field)); \
             CREATE TABLE {schema}.\"set\" (id bigserial PRIMARY KEY, \"key\" text NOT NULL, \
             score double precision NOT NULL, \"value\" text NOT NULL, expireat timestamptz, \
             updatecount integer NOT NULL DEFAULT 0, UNIQUE (\"key\", \"value\")); \
             CREATE TABLE {schema}.\"lock\" (resource text NOT NULL, \
             updatecount integer NOT NULL DEFAULT 0, acquired timestamptz, UNIQUE (resource))"
        ))
        .await
        .expect("the test schema");
        drop(conn);
        let cleanup = async {
            if let Ok(conn) = pg.conn().await {
                let _ = conn
                    .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await;
            }
        };
        check(&store, wait_out, cleanup).await;
    }

    /// MariaDB/MySQL: `JOBAGENT_TEST_MYSQL_URL`, else root without a password at
    /// 127.0.0.1:3306; a fresh database with Hangfire.MySqlStorage's `Hash`, `Set` and
    /// `DistributedLock` (prefix `Hangfire`, charset utf8), dropped at the end.
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
                    panic!(
                        "no MySQL/MariaDB answers ({e}): start one, or set JOBAGENT_TEST_MYSQL_URL"
                    )
                });
        let db = format!("jobagent_c_{:016x}", rand::random::<u64>());
        let utf8 = "ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci";
        admin
            .query_drop(format!(
                "CREATE DATABASE `{db}` CHARACTER SET utf8 COLLATE utf8_general_ci; \
                 CREATE TABLE `{db}`.`HangfireHash` (`Id` int(11) NOT NULL AUTO_INCREMENT, \
                 `Key` nvarchar(100) NOT NULL, `Field` nvarchar(40) NOT NULL, `Value` longtext, \
                 `ExpireAt` datetime(6) DEFAULT NULL, PRIMARY KEY (`Id`), \
                 UNIQUE KEY `IX_HangfireHash_Key_Field` (`Key`,`Field`)) {utf8}; \
                 CREATE TABLE `{db}`.`HangfireSet` (`Id` int(11) NOT NULL AUTO_INCREMENT, \
                 `Key` nvarchar(100) NOT NULL, `Value` nvarchar(256) NOT NULL, \
                 `Score` float NOT NULL, `ExpireAt` datetime DEFAULT NULL, PRIMARY KEY (`Id`), \
                 UNIQUE KEY `IX_HangfireSet_Key_Value` (`Key`,`Value`)) {utf8}; \
                 CREATE TABLE `{db}`.`HangfireDistributedLock` (\
                 `Resource` nvarchar(100) NOT NULL, `CreatedAt` datetime(6) NOT NULL) {utf8}"
            ))
            .await
            .expect("the test database");
        let base = url.trim_end_matches('/');
        let store = open(StoreType::MySql, &format!("{base}/{db}"), "Hangfire");
        let cleanup = async move {
            let _ = admin.query_drop(format!("DROP DATABASE `{db}`")).await;
        };
        check(&store, wait_out, cleanup).await;
    }

    /// Redis: `JOBAGENT_TEST_REDIS_URL`, else 127.0.0.1:6379; a fresh prefix, its keys
    /// deleted at the end.
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread")]
    async fn redis() {
        let url = std::env::var("JOBAGENT_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("{{c{:016x}}}:", rand::random::<u64>());
        let store = open(StoreType::Redis, &url, &prefix);
        // A connection of the test's own, to end locks' holds and delete the keys.
        let conn = match ::redis::Client::open(url.as_str()) {
            Ok(client) => client.get_multiplexed_async_connection().await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            panic!("no Redis answers ({e}): start one, or set JOBAGENT_TEST_REDIS_URL")
        });
        let stale = |resource: String| {
            let (mut conn, key) = (conn.clone(), format!("{prefix}{resource}"));
            async move {
                let ended: i64 = ::redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .expect("PEXPIRE");
                assert_eq!(ended, 1, "the lock's key exists");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (mut c, pattern) = (conn.clone(), format!("{prefix}*"));
        let cleanup = async move {
            let keys: Result<Vec<String>, _> =
                ::redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await;
            if let Ok(keys) = keys
                && !keys.is_empty()
            {
                let _: Result<i64, _> = ::redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
            }
        };
        check(&store, stale, cleanup).await;
    }
}
