//! One interface over the three store harnesses, so one test runs against PostgreSQL, MySQL
//! and Redis: what the center is sent (`storage`), and what the dashboard reads (a console in
//! its order with references resolved, results, hashes), each read the way that store's
//! Hangfire package reads it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::center::Storage;
use crate::mysql::{DotnetMysqlLock, TestMysql};
use crate::pg::{DotnetPgLock, TestDb};
use crate::proxy::Proxy;
use crate::redis::{DotnetRedisLock, TestRedis};

/// A fresh store of one kind, and maybe relays in front of it.
pub struct AnyStore {
    backing: Backing,
    /// When set, the agent is configured to write through these relays.
    front: Option<Front>,
}

/// Relays in front of the store, behind one address.
struct Front {
    relays: Vec<crate::relay::Relay>,
    /// With more than one relay: the address in front of them.
    balancer: Option<crate::relay::Balancer>,
}

/// The store itself.
pub enum Backing {
    /// Hangfire.PostgreSql.
    Pg(TestDb),
    /// Hangfire.MySqlStorage.
    Mysql(TestMysql),
    /// Hangfire.Redis.StackExchange.
    Redis(TestRedis),
}

/// A lock held the .NET way on one of the stores.
pub enum DotnetLock {
    /// On PostgreSQL.
    Pg(DotnetPgLock),
    /// On MySQL.
    Mysql(DotnetMysqlLock),
    /// On Redis.
    Redis(DotnetRedisLock),
}

impl DotnetLock {
    /// Releases it as the store's Hangfire package does.
    pub async fn release(self) {
        match self {
            DotnetLock::Pg(l) => l.release().await,
            DotnetLock::Mysql(l) => l.release().await,
            DotnetLock::Redis(l) => l.release().await,
        }
    }
}

impl AnyStore {
    /// The store `backing`, with no relay in front.
    pub fn of(backing: Backing) -> Self {
        Self {
            backing,
            front: None,
        }
    }

    /// The same store with `n` relays in front of it (behind one balanced address when `n`
    /// is more than one): the agent's environment ([`env`](Self::env)) and configuration
    /// ([`local`](Self::local)) then name the relay; everything read is read from the store.
    pub async fn behind_relays(mut self, n: usize) -> Self {
        let relays: Vec<crate::relay::Relay> = (0..n.max(1))
            .map(|_| crate::relay::Relay::start(&self, &[]))
            .collect();
        let balancer = if relays.len() > 1 {
            Some(crate::relay::Balancer::start(relays.iter().map(|r| r.port()).collect()).await)
        } else {
            None
        };
        self.front = Some(Front { relays, balancer });
        self
    }

    /// The store itself.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The relays in front of the store (empty without).
    pub fn relays_mut(&mut self) -> &mut [crate::relay::Relay] {
        match &mut self.front {
            Some(f) => &mut f.relays,
            None => &mut [],
        }
    }

    /// The address agents reach the relays at, with relays in front.
    fn relay_port(&self) -> Option<u16> {
        let front = self.front.as_ref()?;
        match &front.balancer {
            Some(b) => Some(b.port()),
            None => front.relays.first().map(crate::relay::Relay::port),
        }
    }

    /// A fresh PostgreSQL database (current tables).
    pub async fn postgresql() -> Self {
        AnyStore::of(Backing::Pg(TestDb::new().await))
    }

    /// A fresh MySQL database (Install.sql's tables, prefix `Hangfire`).
    pub async fn mysql() -> Self {
        AnyStore::of(Backing::Mysql(TestMysql::new().await))
    }

    /// A fresh Redis key prefix.
    pub async fn redis() -> Self {
        AnyStore::of(Backing::Redis(TestRedis::new().await))
    }

    /// The storage `Type` the center sends.
    pub fn kind(&self) -> &'static str {
        match &self.backing {
            Backing::Pg(_) => "postgresql",
            Backing::Mysql(_) => "mysql",
            Backing::Redis(_) => "redis",
        }
    }

    /// The store as the center sends it in `x-job-storage`.
    pub fn storage(&self) -> Storage {
        match &self.backing {
            Backing::Pg(db) => db.storage(),
            Backing::Mysql(db) => db.storage(),
            Backing::Redis(db) => db.storage(),
        }
    }

    /// The store as the agent's own configuration takes it (`JOBAGENT_STORE`, with
    /// `JOBAGENT_STORE_TYPE` and `JOBAGENT_STORE_SCHEMA`): (connection, type, prefix).
    pub fn local(&self) -> (String, jobagent::StoreType, String) {
        match self.relay_port() {
            Some(port) => (
                format!("relay+http://127.0.0.1:{port}"),
                jobagent::StoreType::Relay,
                String::new(),
            ),
            None => self.direct(),
        }
    }

    /// `options` for an agent writing to this store: unchanged when the store is reached
    /// directly (the center's header names it), configured with the relay (its own store,
    /// whatever the header says) when relays are in front.
    pub fn agent_options(&self, options: jobagent::AgentOptions) -> jobagent::AgentOptions {
        match self.relay_port() {
            Some(port) => options
                .store(format!("relay+http://127.0.0.1:{port}"), "", 7.0)
                .store_type(jobagent::StoreType::Relay)
                .relay_token(crate::relay::TOKEN),
            None => options,
        }
    }

    /// The store itself as a configuration takes it (what a relay is given).
    pub fn direct(&self) -> (String, jobagent::StoreType, String) {
        match &self.backing {
            Backing::Pg(db) => (
                db.connection_string(),
                jobagent::StoreType::PostgreSql,
                db.schema().to_owned(),
            ),
            Backing::Mysql(db) => (
                db.connection_string(),
                jobagent::StoreType::MySql,
                db.prefix().to_owned(),
            ),
            Backing::Redis(db) => (
                db.connection_string(),
                jobagent::StoreType::Redis,
                db.prefix().to_owned(),
            ),
        }
    }

    /// The agent's environment naming this store (`JOBAGENT_STORE`, `JOBAGENT_STORE_TYPE`,
    /// `JOBAGENT_STORE_SCHEMA`), for an example-service process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        if let Some(port) = self.relay_port() {
            return crate::relay::relay_env(port);
        }
        let (connection, kind, prefix) = self.local();
        vec![
            ("JOBAGENT_STORE", connection),
            ("JOBAGENT_STORE_TYPE", kind.name().to_owned()),
            ("JOBAGENT_STORE_SCHEMA", prefix),
        ]
    }

    /// A set's members with their scores, in the dashboard's order.
    pub async fn set_rows(&self, key: &str) -> Vec<(String, f64)> {
        match &self.backing {
            Backing::Pg(db) => db.set_rows(key).await,
            Backing::Mysql(db) => db.set_rows(key).await,
            Backing::Redis(db) => db.set_rows(key).await,
        }
    }

    /// A hash's fields and values.
    pub async fn hash_rows(&self, key: &str) -> Vec<(String, Option<String>)> {
        match &self.backing {
            Backing::Pg(db) => db.hash_rows(key).await,
            Backing::Mysql(db) => db.hash_rows(key).await,
            Backing::Redis(db) => db.hash_rows(key).await,
        }
    }

    /// One hash field's value.
    pub async fn hash_value(&self, key: &str, field: &str) -> Option<String> {
        self.hash_rows(key)
            .await
            .into_iter()
            .find(|(f, _)| f == field)
            .and_then(|(_, v)| v)
    }

    /// The console as the dashboard shows it: each line parsed, references resolved (`s`
    /// holds the text, `r` removed). Panics on a line that is not JSON or a missing reference.
    pub async fn console_lines(&self, set_key: &str, hash_key: &str) -> Vec<Value> {
        let refs = self.hash_rows(hash_key).await;
        self.set_rows(set_key)
            .await
            .into_iter()
            .map(|(raw, _)| {
                let mut line: Value = serde_json::from_str(&raw)
                    .unwrap_or_else(|e| panic!("console line is not JSON ({e}): {raw}"));
                if line.get("r") == Some(&Value::Bool(true)) {
                    let field = line["s"].as_str().unwrap_or_default().to_owned();
                    let text = refs
                        .iter()
                        .find(|(f, _)| *f == field)
                        .and_then(|(_, v)| v.clone())
                        .unwrap_or_else(|| panic!("reference {field} missing from {hash_key}"));
                    if let Some(obj) = line.as_object_mut() {
                        obj.remove("r");
                        obj.insert("s".to_owned(), Value::String(text));
                    }
                }
                line
            })
            .collect()
    }

    /// Every field of `_agent_result_<job_id>`: (elapsed ms, parsed value).
    pub async fn result_fields(&self, job_id: &str) -> Vec<(String, Value)> {
        self.hash_rows(&format!("_agent_result_{job_id}"))
            .await
            .into_iter()
            .map(|(field, value)| {
                let value = value.unwrap_or_default();
                let parsed = serde_json::from_str(&value)
                    .unwrap_or_else(|e| panic!("result of {job_id} is not JSON ({e}): {value}"));
                (field, parsed)
            })
            .collect()
    }

    /// The result of `job_id` if the center would see one: the hash field, and the id in set
    /// `_agent_result_`. Panics when the hash holds more than one field.
    pub async fn result(&self, job_id: &str) -> Option<Value> {
        if !self.result_ids().await.iter().any(|id| id == job_id) {
            return None;
        }
        let mut fields = self.result_fields(job_id).await;
        assert!(
            fields.len() <= 1,
            "more than one result for {job_id}: {fields:?}"
        );
        fields.pop().map(|(_, v)| v)
    }

    /// The ids in set `_agent_result_`.
    pub async fn result_ids(&self) -> Vec<String> {
        self.set_rows("_agent_result_")
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The ids in set `_agent_result_` once it lists `job_id`; panics after `within`. The
    /// agent writes a result's hash, then its set member (the center reads the set, then the
    /// hash): a result found by its hash may be a moment ahead of its set member.
    pub async fn result_ids_listing(&self, job_id: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let ids = self.result_ids().await;
            if ids.iter().any(|id| id == job_id) {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "set _agent_result_ did not list {job_id} within {within:?} ({}): {ids:?}",
                self.kind()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the result of `job_id` is there (as the center polls) and returns it.
    pub async fn wait_result(&self, job_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.result(job_id).await {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no result for job {job_id} within {within:?} ({})",
                self.kind()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes the distributed lock as a .NET service on this store does.
    pub async fn dotnet_lock(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<DotnetLock, String> {
        match &self.backing {
            Backing::Pg(db) => db.dotnet_lock(resource, timeout).await.map(DotnetLock::Pg),
            Backing::Mysql(db) => db
                .dotnet_lock(resource, timeout)
                .await
                .map(DotnetLock::Mysql),
            Backing::Redis(db) => db
                .dotnet_lock(resource, timeout)
                .await
                .map(DotnetLock::Redis),
        }
    }

    /// Waits for the result of `job_id` and asserts that the run failed with an error text
    /// containing `reason`.
    pub async fn wait_failure(&self, job_id: &str, within: Duration, reason: &str) -> Value {
        let r = self.wait_result(job_id, within).await;
        assert_eq!(r["R"], "err", "{r}");
        assert!(
            r["E"].as_str().unwrap_or_default().contains(reason),
            "expected an error containing {reason:?}: {r}"
        );
        r
    }

    /// Seconds until each row of `key` expires, as the store's Hangfire package reads
    /// expiry (`expireat`/`ExpireAt` per row; on Redis the key's TTL, once per member).
    pub async fn expiry_ahead(&self, table: Table, key: &str) -> Vec<Option<f64>> {
        match &self.backing {
            Backing::Pg(db) => db.expiry_ahead(table.pg(), key).await,
            Backing::Mysql(db) => db.expiry_ahead(table.mysql(), key).await,
            Backing::Redis(db) => {
                let rows = match table {
                    Table::Set => db.set_rows(key).await.len(),
                    Table::Hash => db.hash_rows(key).await.len(),
                };
                let ttl = db.ttl(key).await;
                vec![ttl; rows]
            }
        }
    }

    /// A proxy in front of the store's server, and the agent's environment naming the store
    /// through it ([`env`](Self::env)) with short bounds: connect within 2 s, each statement
    /// or command within 3 s.
    pub async fn env_behind_proxy(&self) -> (Proxy, Vec<(&'static str, String)>) {
        let (proxy, connection) = match &self.backing {
            Backing::Pg(db) => {
                let (proxy, conn) = Proxy::in_front_of(db).await;
                (proxy, format!("{conn};Timeout=2;Command Timeout=3"))
            }
            Backing::Mysql(db) => {
                let (host, port) = db.endpoint();
                let proxy = Proxy::start(&host, port).await;
                let conn = db.connection_string_at("127.0.0.1", proxy.port());
                (
                    proxy,
                    format!("{conn}Connection Timeout=2;Default Command Timeout=3;"),
                )
            }
            Backing::Redis(db) => {
                let (host, port) = db.endpoint();
                let proxy = Proxy::start(&host, port).await;
                let conn = db.connection_string_at("127.0.0.1", proxy.port());
                (
                    proxy,
                    format!("{conn},connectTimeout=2000,syncTimeout=3000"),
                )
            }
        };
        let mut env = self.env();
        env[0].1 = connection;
        (proxy, env)
    }

    /// A proxy in front of the store's server, and the store as the center would send it
    /// through that proxy (connect timeouts of 2 s).
    pub async fn behind_proxy(&self) -> (Proxy, Storage) {
        match &self.backing {
            Backing::Pg(db) => {
                let (proxy, conn) = Proxy::in_front_of(db).await;
                (proxy, Storage::postgresql(format!("{conn};Timeout=2")))
            }
            Backing::Mysql(db) => {
                let (host, port) = db.endpoint();
                let proxy = Proxy::start(&host, port).await;
                let conn = db.connection_string_at("127.0.0.1", proxy.port());
                let storage = Storage {
                    hangfire_db: format!("{conn}Connection Timeout=2;"),
                    ..db.storage()
                };
                (proxy, storage)
            }
            Backing::Redis(db) => {
                let (host, port) = db.endpoint();
                let proxy = Proxy::start(&host, port).await;
                let conn = db.connection_string_at("127.0.0.1", proxy.port());
                let storage = Storage {
                    hangfire_db: format!("{conn},connectTimeout=2000"),
                    ..db.storage()
                };
                (proxy, storage)
            }
        }
    }
}

/// The numbers `n` of the demo job's `line n` texts among console `lines` (as
/// [`AnyStore::console_lines`] reads them), in dashboard order.
pub fn demo_numbers(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l["s"].as_str())
        .filter_map(|s| s.split("line ").nth(1))
        .filter_map(|rest| rest.trim_end_matches('.').parse().ok())
        .collect()
}

/// Hangfire's two tables (a Redis key of that kind).
#[derive(Clone, Copy, Debug)]
pub enum Table {
    /// `set` / `<P>Set` / a sorted set.
    Set,
    /// `hash` / `<P>Hash` / a hash.
    Hash,
}

impl Table {
    fn pg(self) -> &'static str {
        match self {
            Table::Set => "set",
            Table::Hash => "hash",
        }
    }

    fn mysql(self) -> &'static str {
        match self {
            Table::Set => "Set",
            Table::Hash => "Hash",
        }
    }
}

/// One test per store: `name => body;` makes module `name` with tests `postgresql`, `mysql`
/// and `redis`, each calling `body(AnyStore)` on a fresh store of that kind.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident => $body:ident;)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use $crate::stores::AnyStore;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgresql() {
                super::$body(AnyStore::postgresql().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$body(AnyStore::mysql().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body(AnyStore::redis().await).await;
            }
        }
    )*};
}

/// One test per store behind relays: as [`on_every_store!`], with tests `postgresql`,
/// `mysql` and `redis` each calling `body(AnyStore)` on a fresh store of that kind with `n`
/// relays in front of it (behind one address).
#[macro_export]
macro_rules! on_every_store_via_relays {
    ($n:expr; $($name:ident => $body:ident;)*) => {$(
        mod $name {
            use $crate::stores::AnyStore;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgresql() {
                super::$body(AnyStore::postgresql().await.behind_relays($n).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$body(AnyStore::mysql().await.behind_relays($n).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body(AnyStore::redis().await.behind_relays($n).await).await;
            }
        }
    )*};
}
