//! The Redis store as centers really configure it.
//!
//! - A center's `HangfireDb` is StackExchange.Redis's `ConfigurationOptions.ToString()`
//!   (StackExchange/StackExchange.Redis `src/StackExchange.Redis/ConfigurationOptions.cs`:
//!   endpoints, then each option that was set, booleans `True`/`False`, any current option key
//!   such as `tcpKeepAlive`, `sentinelPassword`, `highIntegrity`). The center's driver accepted
//!   it, so the agent takes it too: runs land, and the options it cannot apply are named in one
//!   warning (never a value). `tunnel=` and `proxy=` are refused saying why.
//! - The agent's own `JOBAGENT_STORE` stays strict: a typo is refused at start-up.
//! - Hangfire.Redis.StackExchange uses its `Prefix` verbatim (`RedisStorage.GetRedisKey`:
//!   `_options.Prefix + key`): an empty prefix from a center is empty.
//! - A locally configured prefix or database under which Hangfire keeps nothing (none of the
//!   keys a live center has: `servers` from `RedisConnection.AnnounceServer`,
//!   `recurring-jobs`, `queues`, ... from `RedisWriteOnlyTransaction`) is said at start-up.

use std::time::{Duration, Instant};

use jobagent::{AgentOptions, StoreType};
use redis::AsyncCommands;
use serde_json::json;
use tests::center::{ConsoleInfo, Storage};
use tests::redis::TestRedis;
use tests::replica::Replica;
use tests::service::TestService;
use tests::stores::AnyStore;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const WARNING: &str = "has options this agent does not apply";

/// Waits until `replica`'s log holds `text`; panics after `within` with the log.
async fn wait_log(replica: &Replica, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = replica.log_text();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not log {text:?} within {within:?}: {log}",
            replica.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_option_keys_from_a_center_land_with_one_warning() {
    let db = AnyStore::redis().await;
    let tests::stores::Backing::Redis(r) = db.backing() else {
        unreachable!()
    };
    // Every current option key, as `ToString()` prints them (the sentinel password too), with
    // `,,`, `;;` and a trailing separator.
    let center_string = format!(
        "{},name=center,keepAlive=60,allowAdmin=True,version=7.2.0,sentinelUser=sentu,\
         sentinelPassword=S3ntinelSecret,tiebreaker=,sslProtocols=Tls12|Tls13,\
         checkCertificateRevocation=False,abortConnect=False,,resolveDns=False,connectRetry=3,\
         proxy=None,configCheckSeconds=60,setlib=False,highIntegrity=True,protocol=resp2,\
         tcpKeepAlive=True;;,",
        r.connection_string()
    );
    let storage = Storage {
        hangfire_db: center_string,
        ..r.storage()
    };
    let replica = Replica::start_logged("rc-foreign", &[]).await;
    for i in 0..3 {
        let id = format!("rc-f{i}");
        let console = ConsoleInfo::for_job(&id);
        replica
            .center()
            .with_storage(&storage)
            .run(TRANSIENT, &id)
            .param(json!({"lines": 2}))
            .console(console.clone())
            .send()
            .await
            .assert_status(200);
        let result = db.wait_result(&id, Duration::from_secs(10)).await;
        assert_eq!(result["R"], "ok", "{result}");
        assert_eq!(
            db.console_lines(&console.set_key, &console.hash_key)
                .await
                .len(),
            4,
            "started, 2 lines, finished"
        );
    }
    let log = wait_log(&replica, WARNING, Duration::from_secs(5)).await;
    assert_eq!(
        log.matches(WARNING).count(),
        1,
        "one warning per store: {log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_default();
    for named in [
        "sentinelUser",
        "sentinelPassword",
        "sslProtocols",
        "checkCertificateRevocation",
        "highIntegrity",
        "tcpKeepAlive",
    ] {
        assert!(line.contains(named), "{named} not named: {line}");
    }
    assert!(!log.contains("S3ntinelSecret"), "a value was logged: {log}");
    assert!(!log.contains("sentu"), "a value was logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_and_proxy_from_a_center_are_refused_saying_why() {
    let r = TestRedis::new().await;
    let service = TestService::start_with(AgentOptions::new()).await;
    for (option, reason) in [
        // `Tunnel.HttpProxy`'s `ToString()`: `http:host:port`.
        ("tunnel=http:proxy.corp.example:3128", "HTTP tunnel"),
        ("proxy=Twemproxy", "MULTI/EXEC"),
        ("proxy=Envoyproxy", "Lua scripts"),
    ] {
        let storage = Storage {
            hangfire_db: format!("{},password=Pw4Refusal,{option}", r.connection_string()),
            ..r.storage()
        };
        let id = format!("rc-{}", option.split('=').next().unwrap_or_default());
        let reply = service
            .center()
            .with_storage(&storage)
            .run(TRANSIENT, &id)
            .send()
            .await;
        reply.assert_err(500);
        assert!(reply.body.contains(reason), "{option}: {}", reply.body);
        assert!(!reply.body.contains("Pw4Refusal"), "{}", reply.body);
        assert!(!reply.body.contains("proxy.corp"), "{}", reply.body);
    }
    assert!(
        r.keys().await.is_empty(),
        "nothing written: {:?}",
        r.keys().await
    );
}

#[test]
fn the_agents_own_string_stays_strict() {
    let own = |conn: &str| {
        example_agent::Service::new(
            AgentOptions::new()
                .store(conn, "{hangfire}:", 7.0)
                .store_type(StoreType::Redis),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let e = own("127.0.0.1:6379,password=Typo5ecret,tcpKeepAlve=True").expect_err("a typo");
    assert!(
        e.contains("JOBAGENT_STORE") && e.contains("`tcpKeepAlve`") && e.contains("`tcpKeepAlive`"),
        "{e}"
    );
    assert!(!e.contains("Typo5ecret"), "{e}");
    let e = own("127.0.0.1:6379,tunnel=http:10.0.0.1:3128").expect_err("a tunnel");
    assert!(e.contains("HTTP tunnel"), "{e}");
    // Every option StackExchange.Redis has is still taken.
    own("127.0.0.1:6379,tcpKeepAlive=True,highIntegrity=False,setlib=False,protocol=resp3")
        .expect("StackExchange.Redis's options");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_from_a_center_is_used_as_empty() {
    // Database 11, keys named by this run only: with no prefix the agent writes at the top of
    // the database, where other tests do not look.
    const DB: i64 = 11;
    let r = TestRedis::new().await;
    let mut conn = r.connection_to(DB).await;
    let id = format!("rc-empty-{:016x}", rand::random::<u64>());
    let console = ConsoleInfo::for_job(&id);
    let mut storage = r.storage().table_prefix(String::new());
    storage.db = Some(DB.to_string());
    let service = TestService::start_with(AgentOptions::new().cluster(false)).await;
    service
        .center()
        .with_storage(&storage)
        .run(TRANSIENT, &id)
        .param(json!({"lines": 1}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result_key = format!("_agent_result_{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let score: Option<f64> = conn
            .zscore("_agent_result_", &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if score.is_some() || Instant::now() > deadline {
            break score.is_some();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fields: Vec<(String, String)> = conn
        .hgetall(&result_key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = conn
        .zrange(&console.set_key, 0, -1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Clean up what this run wrote before asserting.
    let _: Result<i64, _> = conn.zrem("_agent_result_", &id).await;
    let _: Result<i64, _> = conn
        .del(&[
            result_key.clone(),
            console.set_key.clone(),
            console.hash_key.clone(),
            format!("jobagent:result:{id}"),
        ])
        .await;
    assert!(listed, "no {id} in _agent_result_ of database {DB}");
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(fields[0].1.contains("\"R\":\"ok\""), "{fields:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(r.keys().await.is_empty(), "nothing under a prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_store_where_hangfire_keeps_nothing_is_said_at_start_up() {
    const NOTHING: &str = "Hangfire keeps nothing";
    const SOMETHING: &str = "Hangfire keeps its keys";
    let r = TestRedis::new().await;
    let env = |conn: String| {
        vec![
            ("JOBAGENT_STORE", conn),
            ("JOBAGENT_STORE_TYPE", "redis".to_owned()),
            ("JOBAGENT_STORE_SCHEMA", r.prefix().to_owned()),
            ("JOBAGENT_CLUSTER", "off".to_owned()),
            ("RUST_LOG", "warn,jobagent=info".to_owned()),
        ]
    };
    // A prefix under which the center keeps nothing.
    let empty = Replica::start_logged("rc-dash-empty", &env(r.connection_string())).await;
    let log = wait_log(&empty, NOTHING, Duration::from_secs(10)).await;
    let line = log
        .lines()
        .find(|l| l.contains(NOTHING))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("{:?}", r.prefix())) && line.contains("database 0"),
        "{line}"
    );
    drop(empty);

    // A live center's server list under that prefix (`AnnounceServer`): no warning.
    let mut conn = r.connection();
    let _: i64 = conn
        .sadd(format!("{}servers", r.prefix()), "center-1:1234")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let live = Replica::start_logged("rc-dash-live", &env(r.connection_string())).await;
    let log = wait_log(&live, SOMETHING, Duration::from_secs(10)).await;
    assert!(!log.contains(NOTHING), "{log}");
    drop(live);

    // The same prefix in another database.
    let other = Replica::start_logged(
        "rc-dash-db",
        &env(format!("{},defaultDatabase=7", r.connection_string())),
    )
    .await;
    let log = wait_log(&other, NOTHING, Duration::from_secs(10)).await;
    let line = log
        .lines()
        .find(|l| l.contains(NOTHING))
        .unwrap_or_default();
    assert!(line.contains("database 7"), "{line}");
    drop(other);
    // Nothing was written there (cluster mode off, no run), or it is removed now.
    let mut db7 = r.connection_to(7).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", r.prefix()))
        .query_async(&mut db7)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = db7.del(&keys).await;
    }
}
