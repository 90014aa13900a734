//! The store contract, written once and run against every store. The cluster's [`Driver`]
//! primitives: on the in-memory store and on real PostgreSQL, MariaDB and Redis servers. The
//! layout every real store keeps (console batches, references and progress, first reports,
//! locks, fencing tokens, hashes and sets), through [`super::Store`], also through a relay in
//! front of Redis and of PostgreSQL: in [`real`]. Each real store's test fails, never skips,
//! when its server does not answer (see [`real`] for how to point them elsewhere); what only
//! one store does is tested in its own module.

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
    type V = Option<&'static str>;
    let cas = |f: &'static str, old: V, new: V, life| async move {
        d.cas("c:cas", f, old, new, life).await.expect("cas")
    };
    assert!(cas("f", None, Some("a"), DAY).await, "create");
    assert!(
        !cas("f", None, Some("b"), DAY).await,
        "an existing field is not created over"
    );
    assert!(!cas("f", Some("A"), Some("b"), DAY).await, "case");
    assert!(!cas("f", Some("a "), Some("b"), DAY).await, "pad");
    assert_eq!(
        d.get("c:cas", "f").await.expect("get").as_deref(),
        Some("a")
    );
    assert!(cas("f", Some("a"), Some("b"), None).await, "swap");
    assert!(!cas("f", Some("a"), Some("c"), DAY).await, "stale");
    assert!(cas("f", Some("b"), Some("b"), DAY).await, "same");
    assert!(!cas("f", Some("x"), None, DAY).await, "stale delete");
    assert!(!cas("f", None, None, DAY).await, "absent?");
    assert!(cas("f", Some("b"), None, DAY).await, "delete");
    assert!(cas("f", None, None, DAY).await, "absent");
    assert!(!cas("g", Some("b"), Some("c"), DAY).await, "none");
    assert_eq!(d.get("c:cas", "g").await.expect("get"), None);
    let json = r#"{"Instance":"é","Until":1}"#;
    assert!(cas("j", None, Some(json), DAY).await, "json");
    assert!(cas("j", Some(json), Some("{}"), DAY).await, "json swap");
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

/// Runs `body`, then `cleanup` whether it passed or not (a test's tables or keys go either
/// way); a panic in `body` is raised again after.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(in crate::store) async fn guarded(
    body: impl std::future::Future<Output = ()>,
    cleanup: impl std::future::Future<Output = ()>,
) {
    use futures_util::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The MariaDB/MySQL test server: `JOBAGENT_TEST_MYSQL_URL`, else root without a password at
/// 127.0.0.1:3306.
#[cfg(feature = "mysql")]
fn mysql_url() -> String {
    std::env::var("JOBAGENT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".to_owned())
}

/// A fresh database on the MariaDB/MySQL test server with Hangfire.MySqlStorage's three
/// tables as its Install.sql lays them out (prefix `Hangfire`, charset utf8); dropped by
/// [`MysqlDb::drop_now`]. Fails, never skips, when no server answers.
#[cfg(feature = "mysql")]
pub(in crate::store) struct MysqlDb {
    admin: mysql_async::Conn,
    name: String,
    /// The database's URL.
    pub(in crate::store) url: String,
}

#[cfg(feature = "mysql")]
impl MysqlDb {
    pub(in crate::store) async fn create() -> Self {
        use mysql_async::prelude::Queryable;
        let url = mysql_url();
        // Never the URL in a message: it may hold a password.
        let no_server = |e: &str| -> ! {
            panic!(
                "no MySQL/MariaDB server answers at JOBAGENT_TEST_MYSQL_URL or 127.0.0.1:3306 \
                 ({e}). These tests need one: start MariaDB locally (e.g. `apt-get install \
                 mariadb-server && service mariadb start`, or `docker run -d -p 3306:3306 -e \
                 MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 mariadb:11`), or set \
                 JOBAGENT_TEST_MYSQL_URL=mysql://user:password@host:port/ to a server where \
                 that user may create databases"
            )
        };
        let connect = mysql_async::Conn::from_url(url.as_str());
        let mut admin = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => no_server(&e.to_string()),
            Err(_) => no_server("no answer within 10 s"),
        };
        let name = format!("jobagent_c_{:016x}", rand::random::<u64>());
        let utf8 = "ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci";
        admin
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8 COLLATE utf8_general_ci; \
                 CREATE TABLE `{name}`.`HangfireHash` (`Id` int(11) NOT NULL AUTO_INCREMENT, \
                 `Key` nvarchar(100) NOT NULL, `Field` nvarchar(40) NOT NULL, `Value` longtext, \
                 `ExpireAt` datetime(6) DEFAULT NULL, PRIMARY KEY (`Id`), \
                 UNIQUE KEY `IX_HangfireHash_Key_Field` (`Key`,`Field`)) {utf8}; \
                 CREATE TABLE `{name}`.`HangfireSet` (`Id` int(11) NOT NULL AUTO_INCREMENT, \
                 `Key` nvarchar(100) NOT NULL, `Value` nvarchar(256) NOT NULL, \
                 `Score` float NOT NULL, `ExpireAt` datetime DEFAULT NULL, PRIMARY KEY (`Id`), \
                 UNIQUE KEY `IX_HangfireSet_Key_Value` (`Key`,`Value`)) {utf8}; \
                 CREATE TABLE `{name}`.`HangfireDistributedLock` (\
                 `Resource` nvarchar(100) NOT NULL, `CreatedAt` datetime(6) NOT NULL) {utf8}"
            ))
            .await
            .expect("the test database");
        let url = format!("{}/{name}", url.trim_end_matches('/'));
        Self { admin, name, url }
    }

    pub(in crate::store) async fn drop_now(mut self) {
        use mysql_async::prelude::Queryable;
        let _ = self
            .admin
            .query_drop(format!("DROP DATABASE `{}`", self.name))
            .await;
        let _ = self.admin.disconnect().await;
    }
}

/// The Redis test server: `JOBAGENT_TEST_REDIS_URL`, else 127.0.0.1:6379.
#[cfg(feature = "redis")]
pub(in crate::store) fn redis_url() -> String {
    std::env::var("JOBAGENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection of a test's own to the Redis test server; fails, never skips, when none answers.
#[cfg(feature = "redis")]
async fn redis_conn() -> ::redis::aio::MultiplexedConnection {
    match ::redis::Client::open(redis_url().as_str()) {
        Ok(client) => client.get_multiplexed_async_connection().await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| {
        panic!(
            "no Redis answers ({e}): start one (`redis-server`, or `docker run --rm -p 6379:6379 redis:7`), or point JOBAGENT_TEST_REDIS_URL at one (redis://host:port/db)"
        )
    })
}

/// Deletes every key of the Redis test server under `prefix` (hex digits, braces, a colon).
#[cfg(feature = "redis")]
pub(in crate::store) async fn delete_keys(prefix: &str) {
    let mut c = redis_conn().await;
    let keys: Result<Vec<String>, _> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await;
    if let Ok(keys) = keys
        && !keys.is_empty()
    {
        let _: Result<i64, _> = ::redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
    }
}

/// The real stores, each opened as the agent opens one ([`Store::open`]) on fresh tables or
/// keys: the [`Driver`] checks above, then the layout every real store keeps, through `Store`;
/// and a relay in front of Redis and of PostgreSQL (feature `relay-server`), opened as an
/// agent opens it.
///
/// The checks' keys and lock names are the ones a relay lets an agent use (Hangfire-shaped:
/// `console:*`, `AgentHeart:*`; no lock under the center's `lock:*`), so one check serves
/// every store.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(in crate::store) mod real {
    use std::future::Future;
    use std::time::Duration;

    use super::super::line::EncodedLine;
    use super::super::results::RESULTS;
    use super::super::{Load, Opening, ResultWrite, Store, StoreType};

    async fn read_set(s: &Store, key: &str, from: usize, count: usize) -> Vec<String> {
        s.read_set(key, from, count).await.expect("read_set")
    }

    async fn read_hash(s: &Store, key: &str, field: &str) -> Option<String> {
        s.read_hash(key, field).await.expect("read_hash")
    }

    async fn read_hash_all(s: &Store, key: &str) -> Vec<(String, String)> {
        let mut all = s.read_hash_all(key).await.expect("read_hash_all");
        all.sort();
        all
    }

    fn open(kind: StoreType, connection: &str, prefix: &str) -> Store {
        let opening = Opening {
            kind,
            connection,
            prefix: Some(prefix),
            expire_days: 1.0,
            db: None,
            from_center: false,
            load: Load::Now,
            relay_token: None,
        };
        Store::open(&opening).unwrap_or_else(|e| panic!("{kind} store opens: {e}"))
    }

    /// The Driver checks, then the layout checks (`stale` makes a held lock stale, as when
    /// its holder stops keeping it); `cleanup` runs whether they passed or not.
    async fn check<F: Fn(&'static str) -> Fut, Fut: Future<Output = ()>>(
        s: &Store,
        stale: F,
        cleanup: impl Future<Output = ()>,
    ) {
        let body = async {
            s.ping(Duration::from_secs(10))
                .await
                .expect("the store answers");
            // The store whose rules the layout follows: a relay's is the one behind it.
            let layout = s.final_kind().await.expect("the store's type");
            super::super::backend!(s, b => super::all(b).await, _r => {
                // A relay's client is no Driver (the cluster's primitives go over the wire as
                // whole cluster operations): the Driver checks run on the store behind it, in
                // that store's own test.
            });
            console(s).await;
            hashes_and_sets(s).await;
            results(s, layout).await;
            results_cut_anywhere(s).await;
            locks(s, layout, stale).await;
            fences(s, layout).await;
        };
        super::guarded(body, cleanup).await;
    }

    /// A console line as the encoder writes it: text `s` at `t` s.
    pub(in crate::store) fn line(t: f64, s: &str) -> EncodedLine {
        let s = serde_json::to_string(s).expect("JSON");
        let value = format!(r##"{{"t":{t:?},"s":{s},"c":"#ffffff"}}"##);
        EncodedLine {
            value,
            score: t,
            reference: None,
            progress_field: None,
        }
    }

    /// The texts (`s`) of console lines.
    pub(in crate::store) fn texts(values: &[String]) -> Vec<String> {
        let text = |v: &String| {
            let parsed: serde_json::Value = serde_json::from_str(v).expect("a JSON line");
            parsed["s"].as_str().expect("s").to_owned()
        };
        values.iter().map(text).collect()
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
        let long = "long text ".repeat(100);
        let reference = EncodedLine {
            value: format!(r#"{{"t":10.0,"r":true,"s":"{field}"}}"#),
            reference: Some((field.to_owned(), long.clone())),
            ..line(10.0, "")
        };
        let bar = |t: f64, p: &str| EncodedLine {
            value: format!(r#"{{"t":{t:?},"s":"1","p":{p}}}"#),
            progress_field: Some(p.to_owned()),
            ..line(t, "")
        };
        let batch = [reference, bar(11.0, "42.0"), bar(12.0, "43.5")];
        for _ in 0..2 {
            s.write_console(set, hash, &batch).await.expect("a batch");
        }
        let values = batch.iter().map(|l| l.value.clone()).collect::<Vec<_>>();
        assert_eq!(read_set(s, set, 5, 100).await, values);
        assert_eq!(read_hash(s, hash, field).await, Some(long));
        let progress = read_hash(s, hash, "progress").await;
        assert_eq!(progress.as_deref(), Some("43.5"), "the last progress wins");
        assert_eq!(read_hash(s, hash, "absent").await, None);
        assert_eq!(read_hash_all(s, hash).await.len(), 2);
    }

    /// Hash fields round trip (upserted, whatever their expiry); a set member is kept once.
    /// (Keys an agent writes, which a relay lets it read back: a heartbeat's hash, a
    /// console's set; not `_agent_result_`, the set of every service's results.)
    async fn hashes_and_sets(s: &Store) {
        let (key, set) = ("AgentHeart:c1", "console:2");
        let set_hash =
            |pairs, life| async move { s.set_hash(key, pairs, life).await.expect("set") };
        set_hash(&[("a", "1"), ("b", "x y")], None).await;
        set_hash(&[("a", "2")], Some(Duration::from_secs(60))).await;
        assert_eq!(read_hash(s, key, "a").await.as_deref(), Some("2"));
        assert_eq!(read_hash(s, key, "b").await.as_deref(), Some("x y"));
        assert_eq!(read_hash(s, key, "c").await, None);
        let all = [("a".into(), "2".into()), ("b".into(), "x y".into())];
        assert_eq!(read_hash_all(s, key).await, all);
        assert!(read_hash_all(s, "AgentHeart:none").await.is_empty());
        for score in [1.0, 2.0] {
            s.add_to_set(set, "17", score).await.expect("add");
        }
        assert_eq!(read_set(s, set, 0, 10).await, ["17"]);
    }

    /// A dispatch's result is taken once, with its mark: its writer's retry is too, no other
    /// writer's; the center reads it from hash `_agent_result_<id>`.
    async fn results(s: &Store, layout: StoreType) {
        let write = move |id: &'static str, token: &'static str| async move {
            let w = ResultWrite {
                mark: id,
                token,
                id,
                result: Some(("12", token)),
            };
            s.write_result(&w).await.expect("a result")
        };
        assert!(write("42", "a:1").await);
        assert!(write("42", "a:1").await, "a retry");
        assert!(!write("42", "b:2").await, "another writer");
        assert!(!write("42", "A:1").await, "the token's case differs");
        assert!(write("43", "b:2").await, "another dispatch");
        let result = |id| async move { read_hash_all(s, &format!("{RESULTS}{id}")).await };
        assert_eq!(result("42").await, [("12".into(), "a:1".into())]);
        assert_eq!(result("43").await, [("12".into(), "b:2".into())]);
        // The mark alone (what a relay's agents of earlier versions write first) holds off
        // other writers; its own writer's result is taken after it.
        let mark = ResultWrite {
            mark: "44",
            token: "c:3",
            id: "44",
            result: None,
        };
        assert!(s.write_result(&mark).await.expect("a mark"));
        assert!(result("44").await.is_empty());
        assert!(!write("44", "d:4").await, "another writer");
        assert!(write("44", "c:3").await, "the mark's writer");
        assert_eq!(result("44").await, [("12".into(), "c:3".into())]);
        if layout != StoreType::Redis && s.kind() != StoreType::Relay {
            // The SQL stores mark it in hash `jobagent:results` (Redis: see its module; a
            // relay marks it per service and reads no `jobagent:*` key: see `relay.rs`).
            let mark = read_hash(s, "jobagent:results", "42").await;
            assert_eq!(mark.as_deref(), Some("a:1"));
        }
        if s.kind() != StoreType::Relay {
            // A relay lets no service read the set of every service's results.
            let ids = read_set(s, RESULTS, 0, 10).await;
            assert_eq!(ids, ["42", "43", "44"]);
        }
    }

    /// A result write abandoned at any point (its future dropped, as when its process is
    /// killed: the connection goes with it) leaves its mark and its result both, or neither.
    /// Whoever reports the dispatch next (a restarted process, another replica) is refused
    /// only when the first result is there for the center to read.
    async fn results_cut_anywhere(s: &Store) {
        for cut in 0..1_000 {
            let id = format!("cut-{cut}");
            let first = ResultWrite {
                mark: &id,
                token: "a:1",
                id: &id,
                result: Some(("1", "first")),
            };
            if cut_after(cut, s.write_result(&first)).await.is_some() {
                return;
            }
            let next = ResultWrite {
                token: "b:2",
                result: Some(("1", "next")),
                ..first
            };
            let taken = s.write_result(&next).await.expect("the next report");
            let read = read_hash_all(s, &next.key()).await;
            let expected = if taken { "next" } else { "first" };
            assert_eq!(
                read,
                [("1".to_owned(), expected.to_owned())],
                "cut after {cut} waits: the next report was {}",
                if taken { "taken" } else { "refused" }
            );
        }
        panic!("a result write did not end within 1,000 waits");
    }

    /// Polls `f` until it has waited `waits` times, then drops it; its output if it ended
    /// first.
    async fn cut_after<F: Future>(waits: usize, f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let mut waited = 0;
        std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
            std::task::Poll::Pending if waited == waits => std::task::Poll::Ready(None),
            std::task::Poll::Pending => {
                waited += 1;
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Locks are exclusive, kept and released only by their owner, and taken over once stale,
    /// the old owner learning it lost.
    /// (A relay takes `report:*` as named when granted: see the `relay` test.)
    async fn locks<F: Fn(&'static str) -> Fut, Fut: Future<Output = ()>>(
        s: &Store,
        layout: StoreType,
        stale: F,
    ) {
        let after = Duration::from_millis(300);
        let take = |r, after| async move { s.lock_try(r, after).await.expect("lock_try") };
        let keep = |r, owner| async move { s.lock_keep(r, owner).await.expect("lock_keep") };
        let release = |r, owner| async move { s.lock_release(r, owner).await.expect("release") };
        let r = "report:recurring";
        let a = take(r, after).await.expect("taken");
        assert_eq!(take(r, after).await, None, "exclusive");
        let a = keep(r, &a).await.expect("kept");
        // Another owner (in MySQL's owner format, which the others take as any text).
        let other = "2000-01-01 00:00:00.000000";
        assert_eq!(keep(r, other).await, None);
        // Another owner's release leaves it.
        release(r, other).await;
        assert_eq!(take(r, after).await, None);
        release(r, &a).await;
        let b = take(r, after).await.expect("free again");
        assert_ne!(a, b);
        assert_eq!(keep(r, &a).await, None, "released");
        release(r, &b).await;

        // A holder that stops keeping its lock loses it.
        let r = "report:x";
        let a = take(r, after).await.expect("taken");
        stale(r).await;
        if layout != StoreType::Redis {
            // Redis: the key's expiry is the staleness rule, not `stale_after`. (Longer than
            // the 10 minutes a relay in front of PostgreSQL waits at least.)
            let longer = Duration::from_secs(1200);
            assert_eq!(
                take(r, longer).await,
                None,
                "not stale under a longer bound"
            );
        }
        let b = take(r, after).await.expect("taken over");
        assert_ne!(a, b);
        assert_eq!(keep(r, &a).await, None, "lost");
        release(r, &a).await;
        assert_eq!(take(r, after).await, None, "b holds it");
        assert!(keep(r, &b).await.is_some());
    }

    /// Fencing tokens count up by one per resource (from 1 on the SQL stores; Redis seeds
    /// each counter from its clock), each concurrent increment getting its own.
    /// (Through a relay, in the service's namespace: these are not granted.)
    async fn fences(s: &Store, layout: StoreType) {
        let sql = layout != StoreType::Redis;
        let fence = |r| async move { s.fence(r).await.expect("fence") };
        for r in ["fence:a", "fence:b"] {
            let first = fence(r).await;
            assert_eq!([fence(r).await, fence(r).await], [first + 1, first + 2]);
            assert!(!sql || first == 1, "{r}: {first}");
        }
        let mut tokens = futures_util::future::join_all((0..8).map(|_| fence("fence:c"))).await;
        tokens.sort_unstable();
        let first = tokens[0];
        assert_eq!(tokens, (first..first + 8).collect::<Vec<u64>>());
        assert!(!sql || first == 1, "{first}");
    }

    /// Waits out a SQL lock's `stale_after` (300 ms).
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    async fn wait_out(_resource: &'static str) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// `JOBAGENT_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`.
    #[cfg(feature = "postgres")]
    fn pg_url() -> String {
        std::env::var("JOBAGENT_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A PostgreSQL store on a fresh schema holding Hangfire.PostgreSql's `hash`, `set` and
    /// `lock`, with the statement that drops it (see [`pg_drop`]).
    #[cfg(feature = "postgres")]
    async fn pg_schema() -> (Store, String) {
        let schema = format!("jobagent_c_{:016x}", rand::random::<u64>());
        let store = open(StoreType::PostgreSql, &pg_url(), &schema);
        let conn = store
            .pg()
            .expect("PostgreSQL")
            .conn()
            .await
            .unwrap_or_else(|e| {
                panic!("no PostgreSQL answers ({e}): start one, or set JOBAGENT_TEST_DATABASE_URL")
            });
        let tables = format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.hash (id bigserial PRIMARY KEY, \"key\" text NOT NULL, \
             field text NOT NULL, \"value\" text, expireat timestamptz, \
             updatecount integer NOT NULL DEFAULT 0, UNIQUE (\"key\", field)); \
             CREATE TABLE {schema}.\"set\" (id bigserial PRIMARY KEY, \"key\" text NOT NULL, \
             score double precision NOT NULL, \"value\" text NOT NULL, expireat timestamptz, \
             updatecount integer NOT NULL DEFAULT 0, UNIQUE (\"key\", \"value\")); \
             CREATE TABLE {schema}.\"lock\" (resource text NOT NULL, \
             updatecount integer NOT NULL DEFAULT 0, acquired timestamptz, UNIQUE (resource))"
        );
        conn.batch_execute(&tables).await.expect("the test schema");
        drop(conn);
        (store, schema)
    }

    /// Drops the schema [`pg_schema`] made.
    #[cfg(feature = "postgres")]
    async fn pg_drop(store: &Store, schema: &str) {
        if let Ok(conn) = store.pg().expect("PostgreSQL").conn().await {
            let _ = conn
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await;
        }
    }

    /// PostgreSQL (see [`pg_url`]): a fresh schema, dropped at the end.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread")]
    async fn pg() {
        let (store, schema) = pg_schema().await;
        check(&store, wait_out, pg_drop(&store, &schema)).await;
    }

    /// MariaDB/MySQL: a fresh database (see [`super::MysqlDb`]), dropped at the end.
    #[cfg(feature = "mysql")]
    #[tokio::test(flavor = "multi_thread")]
    async fn mysql() {
        let db = super::MysqlDb::create().await;
        let store = open(StoreType::MySql, &db.url, "Hangfire");
        check(&store, wait_out, db.drop_now()).await;
    }

    /// A fresh Redis key prefix.
    #[cfg(feature = "redis")]
    fn redis_prefix() -> String {
        format!("{{c{:016x}}}:", rand::random::<u64>())
    }

    /// Makes the lock `resource` of the Redis store with key prefix `prefix` stale: its hold
    /// ends, the key expiring now.
    #[cfg(feature = "redis")]
    async fn redis_stale(prefix: &str) -> impl Fn(&'static str) -> BoxedUnit {
        let conn = super::redis_conn().await;
        let prefix = prefix.to_owned();
        move |resource| {
            let (mut conn, key) = (conn.clone(), format!("{prefix}{resource}"));
            Box::pin(async move {
                let mut cmd = ::redis::cmd("PEXPIRE");
                let ended = cmd.arg(&key).arg(1).query_async(&mut conn).await;
                assert_eq!(ended.ok(), Some(1), "the lock's key exists");
                tokio::time::sleep(Duration::from_millis(20)).await;
            })
        }
    }

    #[cfg(feature = "redis")]
    type BoxedUnit = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Redis (see [`super::redis_url`]): a fresh prefix, its keys deleted at the end.
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread")]
    async fn redis() {
        let prefix = redis_prefix();
        let store = open(StoreType::Redis, &super::redis_url(), &prefix);
        let stale = redis_stale(&prefix).await;
        check(&store, stale, super::delete_keys(&prefix)).await;
    }

    /// A relay in front of `store_url` (prefix or schema `prefix`): `jobagent-relay`'s router,
    /// served here on a port of its own (dropped with the test's runtime), opened as an agent
    /// opens a `relay+http://` store. One service, granted the checks' locks (`report:*`, kept
    /// under their own names); its fences live in its namespace. Results are not checked
    /// against Hangfire's jobs (the test's store has none).
    #[cfg(all(feature = "relay-server", any(feature = "redis", feature = "postgres")))]
    async fn relay_before(store_url: String, prefix: &str) -> Store {
        use crate::__relay::{RelayConfig, parse_tenants, router};
        let token = format!("conformance:{:032x}", rand::random::<u128>());
        let tenants = parse_tenants(&format!("{token} lock=report:*"), ',', "the test's tokens")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut config = RelayConfig::new(store_url, tenants);
        prefix.clone_into(&mut config.prefix);
        config.expire_days = 1.0;
        config.check_jobs = false;
        let (app, _label) = router(config).unwrap_or_else(|e| panic!("the relay: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = listener.local_addr().expect("an address").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("relay+http://127.0.0.1:{port}");
        Store::open(&Opening {
            kind: StoreType::Relay,
            connection: &url,
            prefix: None,
            expire_days: 1.0,
            db: None,
            from_center: false,
            load: Load::Now,
            relay_token: Some(&token),
        })
        .unwrap_or_else(|e| panic!("the relay store opens: {e}"))
    }

    /// Through a relay in front of Redis (a fresh prefix, as [`redis`]; a lock made stale as
    /// there); its keys are deleted at the end.
    #[cfg(all(feature = "relay-server", feature = "redis"))]
    #[tokio::test(flavor = "multi_thread")]
    async fn relay_redis() {
        let prefix = redis_prefix();
        let store = relay_before(super::redis_url(), &prefix).await;
        let stale = redis_stale(&prefix).await;
        check(&store, stale, super::delete_keys(&prefix)).await;
    }

    /// Through a relay in front of PostgreSQL (a fresh schema, as [`pg`]), dropped at the end.
    /// The relay never takes a PostgreSQL lock younger than 10 minutes as stale (whatever the
    /// agent asks: Hangfire.PostgreSql's own rule), so a lock is made stale by moving its
    /// `acquired` 11 minutes back.
    #[cfg(all(feature = "relay-server", feature = "postgres"))]
    #[tokio::test(flavor = "multi_thread")]
    async fn relay_pg() {
        let (direct, schema) = pg_schema().await;
        let store = relay_before(pg_url(), &schema).await;
        let stale = |resource: &'static str| {
            let (direct, schema) = (&direct, &schema);
            async move {
                let conn = direct
                    .pg()
                    .expect("PostgreSQL")
                    .conn()
                    .await
                    .expect("a connection");
                let aged = conn
                    .execute(
                        &format!(
                            "UPDATE {schema}.\"lock\" SET acquired = acquired - interval '11 minutes' \
                             WHERE resource = $1"
                        ),
                        &[&resource],
                    )
                    .await
                    .expect("the lock's row ages");
                assert_eq!(aged, 1, "the lock's row is `{resource}`");
            }
        };
        check(&store, stale, pg_drop(&direct, &schema)).await;
    }
}
