//! A Redis harness: a fresh key prefix per test, laid out as Hangfire.Redis.StackExchange
//! lays it out (marcoCasamento/Hangfire.Redis.StackExchange: keys `<Prefix><key>`, a set is a
//! sorted set read by rank (`RedisConnection.GetRangeFromSet`), a hash is a hash, expiry is a
//! TTL on the key).
//!
//! The server comes from `JOBAGENT_TEST_REDIS_URL` (a `redis://` URL), else
//! `redis://127.0.0.1:6379`. Without a server, [`TestRedis::new`] fails and says how to get
//! one; it never skips.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::center::Storage;

/// The environment variable naming the server to test against.
pub const REDIS_URL_VAR: &str = "JOBAGENT_TEST_REDIS_URL";
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// How long Hangfire.Redis holds a lock before it must be extended (`RedisLock.cs`).
const HOLD: Duration = Duration::from_secs(30);

/// A fresh key prefix (`{t<hex>}:`) in database 0; its keys are deleted at the end.
pub struct TestRedis {
    conn: MultiplexedConnection,
    client: redis::Client,
    prefix: String,
}

fn how_to_get_one(e: &str) -> String {
    format!(
        "no Redis server ({e}); install and start one (`apt-get install redis-server && service redis-server start`), or point {REDIS_URL_VAR} at one (redis://[:password@]host:port)"
    )
}

impl TestRedis {
    /// A fresh prefix on the test server.
    pub async fn new() -> Self {
        let url = std::env::var(REDIS_URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => panic!("{REDIS_URL_VAR} is not a redis:// URL: {e}"),
        };
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("{}", how_to_get_one(&e.to_string())),
            Err(_) => panic!("{}", how_to_get_one("no answer within 10 s")),
        };
        Self {
            conn,
            client,
            prefix: format!("{{t{:016x}}}:", rand::random::<u64>()),
        }
    }

    /// A connection to the test server (multiplexed; clones share it).
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Deletes the prefix's keys (between benchmark measurements).
    pub async fn clear(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        for chunk in keys.chunks(1_000) {
            let _: i64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The server's host and port.
    pub fn endpoint(&self) -> (String, u16) {
        match self.client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            _ => ("127.0.0.1".to_owned(), 6379),
        }
    }

    /// The configuration string as a center on Hangfire.Redis.StackExchange holds it.
    pub fn connection_string(&self) -> String {
        let (host, port) = self.endpoint();
        self.connection_string_at(&host, port)
    }

    /// The same string naming another endpoint (a proxy in front of the server).
    pub fn connection_string_at(&self, host: &str, port: u16) -> String {
        let info = self.client.get_connection_info();
        let mut s = format!("{host}:{port},defaultDatabase=0");
        if let Some(pw) = info.redis_settings().password() {
            s.push_str(&format!(",password={pw}"));
        }
        s
    }

    /// The store as the center sends it (`x-job-storage`): prefix and `Db` included.
    pub fn storage(&self) -> Storage {
        let mut storage =
            Storage::of_kind("redis", self.connection_string()).table_prefix(self.prefix.clone());
        storage.db = Some("0".to_owned());
        storage
    }

    /// A sorted set's members with their scores, by rank (the dashboard's order).
    pub async fn set_rows(&self, key: &str) -> Vec<(String, f64)> {
        let mut conn = self.conn.clone();
        match conn.zrange_withscores(self.key(key), 0, -1).await {
            Ok(rows) => rows,
            Err(e) => panic!("cannot read set {key}: {e}"),
        }
    }

    /// A hash's fields and values.
    pub async fn hash_rows(&self, key: &str) -> Vec<(String, Option<String>)> {
        let mut conn = self.conn.clone();
        match conn
            .hgetall::<_, Vec<(String, String)>>(self.key(key))
            .await
        {
            Ok(rows) => rows.into_iter().map(|(f, v)| (f, Some(v))).collect(),
            Err(e) => panic!("cannot read hash {key}: {e}"),
        }
    }

    /// Seconds until `key` expires (None: no TTL, or no key).
    pub async fn ttl(&self, key: &str) -> Option<f64> {
        let mut conn = self.conn.clone();
        match conn.pttl::<_, i64>(self.key(key)).await {
            Ok(ms) if ms >= 0 => Some(ms as f64 / 1000.0),
            Ok(_) => None,
            Err(e) => panic!("cannot read the TTL of {key}: {e}"),
        }
    }

    /// Every key under the prefix, as [`KeyInfo`]s sorted by name.
    pub async fn keys(&self) -> Vec<KeyInfo> {
        let mut conn = self.conn.clone();
        let names: Vec<String> = match redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
        {
            Ok(names) => names,
            Err(e) => panic!("cannot list the keys: {e}"),
        };
        let mut out = Vec::new();
        for name in names {
            let kind: String = redis::cmd("TYPE")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("cannot read the type of {name}: {e}"));
            let size = match kind.as_str() {
                "hash" => "HLEN",
                "zset" => "ZCARD",
                "set" => "SCARD",
                "list" => "LLEN",
                "string" => "STRLEN",
                // Gone in between.
                "none" => continue,
                other => panic!("{name} is a {other}"),
            };
            let entries: usize = redis::cmd(size)
                .arg(&name)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("cannot read the size of {name}: {e}"));
            let key = name[self.prefix.len()..].to_owned();
            let ttl = self.ttl(&key).await;
            out.push(KeyInfo {
                key,
                kind,
                ttl,
                entries,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A connection of its own to database `db` of the test server.
    pub async fn connection_to(&self, db: i64) -> MultiplexedConnection {
        let (host, port) = self.endpoint();
        let info = self.client.get_connection_info();
        let password = info
            .redis_settings()
            .password()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let url = format!("redis://{password}{host}:{port}/{db}");
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => panic!("cannot reach database {db}: {e}"),
        };
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("cannot connect to database {db}: {e}"),
            Err(_) => panic!("no connection to database {db} within 10 s"),
        }
    }

    /// Takes the distributed lock on `resource` as Hangfire.Redis.StackExchange does
    /// (`RedisLock.cs`): `SET <prefix><resource> <owner> NX PX 30000`, retried with a random
    /// back-off growing as i² ms until `timeout`.
    pub async fn dotnet_lock(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<DotnetRedisLock, String> {
        let key = self.key(resource);
        let owner = format!("{:032x}", rand::random::<u128>());
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let mut i: u64 = 0;
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(HOLD.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if taken.is_some() {
                return Ok(DotnetRedisLock { conn, key, owner });
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "Failed to acquire lock on {key} within given timeout"
                ));
            }
            let pause = rand::random_range(i * i..=(i + 1) * (i + 1));
            i += 1;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// One key under a test prefix, as [`TestRedis::keys`] finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    /// The key without the prefix.
    pub key: String,
    /// Its Redis type (`hash`, `zset`, `string`, ...).
    pub kind: String,
    /// Seconds until it expires; `None` without a TTL.
    pub ttl: Option<f64>,
    /// Its entries (fields, members, items), or its length in bytes for a string.
    pub entries: usize,
}

/// A lock held the way a .NET service holds it on Hangfire.Redis.StackExchange.
pub struct DotnetRedisLock {
    conn: MultiplexedConnection,
    key: String,
    owner: String,
}

impl DotnetRedisLock {
    /// Releases it as StackExchange.Redis's `LockRelease` does: deletes the key only if it
    /// still holds this owner.
    pub async fn release(mut self) {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        if let Err(e) = script
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async::<i64>(&mut self.conn)
            .await
        {
            panic!("cannot release the lock: {e}");
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (client, pattern) = (self.client.clone(), format!("{}*", self.prefix));
        let dropped = std::thread::spawn(move || {
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .ok()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).ok()?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL").arg(keys).query(&mut conn).ok()?;
            }
            Some(())
        });
        let _ = dropped.join();
    }
}
