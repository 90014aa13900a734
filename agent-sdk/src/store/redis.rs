//! The center's store on Redis, laid out as Hangfire.Redis.StackExchange lays it out.
//!
//! Every key is `<Prefix><key>` (the center's `Prefix`, `{hangfire}:` by default) in the
//! database `Db`. A Hangfire "set" is a sorted set (`ZADD score member`, read by rank: by
//! score, ties in byte order); a Hangfire "hash" is a Redis hash; expiry is a TTL on the whole
//! key. The distributed lock is StackExchange.Redis's `LockTake` / `LockExtend` /
//! `LockRelease` as Hangfire.Redis.StackExchange's `RedisLock` uses them: `SET key owner NX
//! PX 30000`, extended to 30 s again only while the value is still the owner's, deleted only
//! by its owner.
//!
//! The connection is described by a StackExchange.Redis configuration string (what the
//! center's `HangfireDb` holds for a Redis storage) or a `redis://` / `rediss://` URL; see
//! [`RedisStore::open`] and [`super::redis_connstr`].
//!
//! **Every operation has a deadline.** The connection manager (one multiplexed connection,
//! reconnected when it breaks) bounds each connection attempt by `connectTimeout`, each
//! reply by `syncTimeout`/`asyncTimeout`, and its reconnects by [`RECONNECT_RETRIES`]; on top
//! of that each operation runs under one `tokio::time::timeout` of `connectTimeout +
//! syncTimeout`, which also holds when the link is black-holed. Nothing connects before the
//! first operation ([`RedisStore::open`] does no I/O), and a first connection that fails is
//! tried again by the next operation.
//!
//! No error, label or `Debug` output holds the password.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, Script, ScriptInvocation, Value,
};

use crate::secret::Secret;
use crate::store::driver::Driver;
use crate::store::line::EncodedLine;
use crate::store::redis_connstr::{Origin, echo, host_port, parse};
use crate::store::results::RESULTS;
use crate::store::url::password_tag;
use crate::store::{CheckError, ResultWrite, StoreError, StoreErrorKind};

/// How many times the connection manager retries a broken connection before failing the
/// waiting commands (the next command starts a new round).
const RECONNECT_RETRIES: usize = 3;
/// The longest pause between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// Hangfire.Redis.StackExchange's lock hold (`RedisLock.DefaultHoldDuration`); the holder
/// extends it at half this period.
const LOCK_HOLD: Duration = Duration::from_secs(30);
/// The longest key prefix accepted.
const MAX_PREFIX_BYTES: usize = 100;
/// The longest TTL given to a key (ten years); longer ones are lowered to it.
const MAX_EXPIRE_SECS: u64 = 10 * 365 * 86_400;
/// The first-report mark of a dispatch: `<P>jobagent:result:<id>`, a string holding the
/// reporting writer's token, with a TTL of its own (`ExpireAtDays`).
const RESULT_MARK_KEY: &str = "jobagent:result:";
/// The hash where earlier versions of this agent kept every dispatch's mark as a field (its TTL renewed by
/// every result, so it never expired). Only read now: a mark there is honoured while the
/// hash lives (`ExpireAtDays` after the last write of an older version).
const OLD_RESULTS_KEY: &str = "jobagent:results";
/// The fencing counter of a lock resource: `<P>jobagent:fence:<resource>`.
const FENCE_KEY: &str = "jobagent:fence:";
/// The hash of fencing counters of earlier versions (one field per resource, no TTL): given
/// [`FENCE_LIFE`] at the first new token, never written.
const OLD_FENCE_KEY: &str = "jobagent:lock-fence";
/// How long a fencing counter lives after its last increment. Its first value is the
/// server's clock in microseconds, so a counter that expired and starts again still
/// exceeds every token it gave before: the TTL only bounds how long an unused one is kept.
const FENCE_LIFE: Duration = Duration::from_secs(30 * 86_400);
/// Keys a center on Hangfire.Redis.StackExchange keeps under its prefix while it runs (its
/// servers, recurring jobs, queues, job counters: `RedisConnection.AnnounceServer`,
/// `RedisWriteOnlyTransaction`): when none exists under a store's prefix and database, no
/// dashboard reads there.
const HANGFIRE_KEYS: &[&str] = &[
    "servers",
    "recurring-jobs",
    "queues",
    "stats:succeeded",
    "stats:deleted",
    "succeeded",
    "failed",
    "processing",
    "schedule",
];
/// How long the start-up look for Hangfire's keys may take.
const DASHBOARD_CHECK_WITHIN: Duration = Duration::from_secs(10);

/// Claims the report of dispatch `ARGV[1]` for token `ARGV[2]`: 1 when the mark `KEYS[1]` was
/// absent (and is set now) or already held `ARGV[2]`, else 0 (and nothing is written). A mark
/// of an older version, field `ARGV[1]` of hash `KEYS[2]`, counts as the mark while it is
/// there. The mark's TTL becomes `ARGV[3]` seconds. Given the result too (`KEYS[3]`, its hash;
/// `KEYS[4]`, the results' set), the claim writes it in the same step: field `ARGV[4]` =
/// `ARGV[5]`, member `ARGV[6]` (score 1), both keys' TTL `ARGV[3]`.
const RESULT_LUA: &str = r"
local held = redis.call('GET', KEYS[1])
if not held then
  held = redis.call('HGET', KEYS[2], ARGV[1])
end
if held and held ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if KEYS[3] then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], 1, ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return 1
";

/// The next fencing token of counter `KEYS[1]`, which starts from the server's clock in
/// microseconds; its TTL becomes `ARGV[1]` seconds. The hash of counters of earlier versions,
/// `KEYS[2]`, kept without a TTL, gets the same TTL (its counters are all below the new ones).
const FENCE_LUA: &str = r"
if redis.call('TTL', KEYS[2]) == -1 then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], t[1] .. string.format('%06d', tonumber(t[2])))
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
";

/// `PEXPIRE KEYS[1] ARGV[2]` if the key's value is `ARGV[1]`; 1 when extended, else 0.
const LOCK_KEEP_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `DEL KEYS[1]` if the key's value is `ARGV[1]`; the number of keys deleted.
const LOCK_RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The scripts, hashed once per store (`EVALSHA`, loaded again after `NOSCRIPT`).
struct Scripts {
    result: Script,
    fence: Script,
    lock_keep: Script,
    lock_release: Script,
}

/// One Redis store: a lazily opened connection manager, the key prefix, the bounds.
pub(crate) struct RedisStore {
    client: Client,
    /// The connection manager in use and its generation: opened at the first operation; left
    /// empty (and tried again) when opening fails; emptied when an operation on it missed its
    /// deadline (see [`RedisStore::run`]).
    manager: Mutex<Option<(u64, ConnectionManager)>>,
    /// Held while a connection manager is opened, so one opens at a time.
    opening: tokio::sync::Mutex<()>,
    /// The last generation given out.
    generation: AtomicU64,
    prefix: String,
    db: i64,
    label: String,
    #[cfg_attr(not(test), allow(dead_code))]
    identity: String,
    hosts: Vec<String>,
    /// The password, only to scrub it from error texts should a server echo it.
    password: Option<Secret>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// How long a lock is held without being extended ([`LOCK_HOLD`]; shorter in tests).
    hold: Duration,
    scripts: Scripts,
    /// Whether a PING succeeded once (then [`RedisStore::check_tables`] is not asked again).
    seen: AtomicBool,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("label", &self.label)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Opens (without connecting) the store that `connection` describes.
    ///
    /// `connection` is StackExchange.Redis's configuration string (as its
    /// `ConfigurationOptions.ToString()` prints it): comma-separated endpoints `host[:port]`
    /// (IPv6 as `[::1]:6379`; the default port is 6379, or 6380 with `ssl=true`, as
    /// StackExchange.Redis) and options `key=value`, keys case-insensitive. Read: `password`,
    /// `user`, `ssl`, `sslHost`, `defaultDatabase`, `connectTimeout` (ms, default 5000),
    /// `syncTimeout` / `asyncTimeout` (ms, default 5000; the bound of each command;
    /// `asyncTimeout` wins when both are given), `name`. Refused, saying why: `serviceName`
    /// (Sentinel), `tunnel` (an HTTP tunnel) and `proxy` other than `None`. Every other
    /// option of StackExchange.Redis is accepted; those whose effect the agent cannot give
    /// (`tcpKeepAlive`, `highIntegrity`, `sslProtocols`, ...) are named in one warning. An
    /// option StackExchange.Redis does not have is ignored with that warning in a string
    /// from a center ([`Origin::Center`]), and refused in the agent's own (the error names
    /// the key and the closest known one). A `redis://[user:pass@]host[:port][/db]` or
    /// `rediss://` URL is also understood (default port 6379).
    ///
    /// **Several endpoints: only the first is used** (a primary/replica list names the
    /// primary first; this agent does not discover topology).
    ///
    /// TLS (`ssl=true`, `rediss://`) verifies the server against the system's roots. `sslHost`
    /// may only repeat the endpoint's own host name: the client verifies the name it connects
    /// to and cannot be told another one (connect by that name instead).
    ///
    /// `db` is the center's `Db`; when `None`, `defaultDatabase` or the URL's, else 0.
    /// `prefix` is the center's `Prefix` (`{hangfire}:` by default), used as given: at most
    /// 100 bytes, and empty for a storage configured without one.
    pub(crate) fn open(
        connection: &str,
        prefix: &str,
        db: Option<i64>,
        origin: Origin,
    ) -> Result<Self, StoreError> {
        if prefix.len() > MAX_PREFIX_BYTES {
            return Err(StoreError::config(format!(
                "the Redis key prefix is longer than {MAX_PREFIX_BYTES} bytes"
            )));
        }
        let spec = parse(connection, origin)?;
        let (host, port) = spec.first()?;
        let db = match db {
            Some(db) if db < 0 || db > i64::from(i32::MAX) => {
                return Err(StoreError::config(format!(
                    "the Redis database {db} is not a number from 0"
                )));
            }
            Some(db) => db,
            None => spec.db.unwrap_or(0),
        };
        if let Some(name) = &spec.ssl_host
            && !name.eq_ignore_ascii_case(&host)
        {
            return Err(StoreError::config(format!(
                "the Redis option sslHost (`{}`) differs from the endpoint's host `{}`, which this agent cannot verify against another name: name the endpoint by the certificate's host name",
                echo(name),
                echo(&host)
            )));
        }
        let addr = if spec.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), port)
        };
        let mut redis = RedisConnectionInfo::default()
            .set_db(db)
            .set_skip_set_lib_name();
        if let Some(user) = &spec.user {
            redis = redis.set_username(user);
        }
        if let Some(password) = &spec.password {
            redis = redis.set_password(password.expose());
        }
        let tcp = ::redis::io::tcp::TcpSettings::default().set_nodelay(true);
        // A peer that vanished with data unacknowledged is noticed by the kernel too.
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        let tcp = tcp.set_user_timeout(spec.connect_timeout + spec.command_timeout);
        let info: ConnectionInfo = addr
            .into_connection_info()
            .map_err(|e| StoreError::config(format!("the Redis configuration: {e}")))?
            .set_redis_settings(redis)
            .set_tcp_settings(tcp);
        let client = Client::open(info).map_err(|e| {
            StoreError::config(format!(
                "the Redis configuration: {}",
                scrub(&e.to_string(), spec.password.as_ref().map(Secret::expose))
            ))
        })?;
        let label = format!("{}/{db}", host_port(&host, port));
        let identity = format!(
            "redis:{}/{db}?user={:?}&password={}&tls={}&prefix={:?}",
            host_port(&host.to_ascii_lowercase(), port),
            spec.user.as_deref().unwrap_or(""),
            spec.password.as_ref().map_or_else(
                || "none".to_owned(),
                |p| password_tag(p.expose().as_bytes())
            ),
            spec.tls,
            prefix,
        );
        if !spec.ignored.is_empty() {
            // Names only: never a value.
            tracing::warn!(
                store = %label,
                options = %spec.ignored.join(", "),
                "the Redis configuration{} has options this agent does not apply; they are ignored",
                if origin == Origin::Center { " sent by the center" } else { "" }
            );
        }
        Ok(Self {
            client,
            manager: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            prefix: prefix.to_owned(),
            db,
            label,
            identity,
            hosts: spec.endpoints.iter().map(|e| e.host.clone()).collect(),
            password: spec.password.clone(),
            connect_timeout: spec.connect_timeout,
            command_timeout: spec.command_timeout,
            hold: LOCK_HOLD,
            scripts: Scripts {
                result: Script::new(RESULT_LUA),
                fence: Script::new(FENCE_LUA),
                lock_keep: Script::new(LOCK_KEEP_LUA),
                lock_release: Script::new(LOCK_RELEASE_LUA),
            },
            seen: AtomicBool::new(false),
        })
    }

    /// `host:port/db`, for logs.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// A key telling two stores apart (endpoint, db, user, a keyed hash of the password, TLS,
    /// prefix). Not meant for logs.
    // Stores are told apart by what the center sent (store::Stores); kept for the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// The hosts the configuration names (all endpoints, though only the first is used), for
    /// an allow-list check.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.hosts.clone()
    }

    /// Whether the store answers a PING within the store's bound.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.cmd("PING", &::redis::cmd("PING")).await
    }

    /// Redis has no tables to check: Ok once a PING succeeded (then never asked again).
    /// Refused only when the server answers with an error (authentication, a database out of
    /// range, a missing permission): a run written there could never be seen. What a store
    /// that does not answer within `within` means is decided above (see
    /// [`Store::check_tables`](crate::store::Store::check_tables)).
    pub(crate) async fn check_tables(&self, within: Duration) -> Result<(), CheckError> {
        // On a connection of its own, tried once: the manager retries a failed first
        // connection (a refused password too) with backoff, which would outlast the check.
        let ping = async {
            let config = ::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(within))
                .set_response_timeout(Some(within));
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            ::redis::cmd("PING").query_async::<()>(&mut c).await
        };
        let check = async {
            ping.await.map_err(|e| {
                if answered(&e) {
                    CheckError::Refused(format!(
                        "the Redis store {} refuses this agent: {}",
                        self.label,
                        self.describe(&e).message()
                    ))
                } else {
                    CheckError::Unknown(self.describe(&e))
                }
            })
        };
        CheckError::once(&self.seen, within, check).await
    }

    /// One console batch, atomic (one `MULTI`/`EXEC`) and idempotent on retry: the
    /// references into hash `<P>hash_key`, every line into sorted set `<P>set_key` (a member
    /// written again keeps one copy), the last `progress_field` as the hash's `progress`, and
    /// both keys' TTL set to `expire` (at least 1 s).
    pub(crate) async fn write_console(
        &self,
        set_key: &str,
        hash_key: &str,
        lines: &[EncodedLine],
        expire: Duration,
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        if let Some(bad) = lines.iter().find(|l| !l.score.is_finite()) {
            return Err(StoreError::refused(format!(
                "a console line's score is not a finite number ({})",
                bad.score
            )));
        }
        let p = console_pipeline(
            &self.key(set_key),
            &self.key(hash_key),
            lines,
            expire_secs(expire),
        );
        self.pipe("a console batch", &p).await
    }

    /// Sets fields of hash `<P>key`, and its TTL to `life` (`None`: no TTL, `PERSIST`), in one
    /// `MULTI`/`EXEC`.
    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = self.key(key);
        let mut p = ::redis::pipe();
        p.atomic();
        if !pairs.is_empty() {
            let cmd = p.cmd("HSET").arg(&key);
            for (field, value) in pairs {
                cmd.arg(*field).arg(*value);
            }
            p.ignore();
        }
        match life {
            Some(life) => p.cmd("EXPIRE").arg(&key).arg(expire_secs(life)).ignore(),
            None => p.cmd("PERSIST").arg(&key).ignore(),
        };
        self.pipe("a hash", &p).await
    }

    /// Adds one member to sorted set `<P>key` (its score updated if present) and sets the
    /// key's TTL, in one `MULTI`/`EXEC`.
    #[cfg(any(feature = "relay-server", test))]
    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
        expire: Duration,
    ) -> Result<(), StoreError> {
        if !score.is_finite() {
            return Err(StoreError::refused(format!(
                "a set score is not a finite number ({score})"
            )));
        }
        let key = self.key(key);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(score)
            .arg(value)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(expire_secs(expire))
            .ignore();
        self.pipe("a set member", &p).await
    }

    /// A dispatch's result with its first-report mark, in one Lua script (atomic): the mark
    /// is a key of its own, `<P>jobagent:result:<mark>`, expiring after `expire`, taken when
    /// absent or already holding the token (a retry); then, only then, the result's hash
    /// field and set member. False (nothing written) when another token holds the mark. A
    /// mark that an earlier version left as a field of hash `<P>jobagent:results` counts the
    /// same while that hash lives (nothing writes there any more).
    pub(crate) async fn write_result(
        &self,
        w: &ResultWrite<'_>,
        expire: Duration,
    ) -> Result<bool, StoreError> {
        let mut call = self.scripts.result.prepare_invoke();
        call.key(self.key(&format!("{RESULT_MARK_KEY}{}", w.mark)))
            .key(self.key(OLD_RESULTS_KEY))
            .arg(w.mark)
            .arg(w.token)
            .arg(expire_secs(expire));
        if let Some((field, value)) = w.result {
            call.key(self.key(&w.key()))
                .key(self.key(RESULTS))
                .arg(field)
                .arg(value)
                .arg(w.id);
        }
        let won: i64 = self.invoke("a result", &call).await?;
        Ok(won == 1)
    }

    /// Whether dispatch `id` has a first-report mark ([`write_result`](Self::write_result)),
    /// read without writing one. For the relay's check of reads.
    #[cfg(feature = "relay-server")]
    pub(crate) async fn result_marked(&self, id: &str) -> Result<bool, StoreError> {
        let key = self.key(&format!("{RESULT_MARK_KEY}{id}"));
        self.exists("a look for a first-report mark", &[key]).await
    }

    /// One attempt at the lock on `<P>resource`, as Hangfire.Redis.StackExchange takes it:
    /// `SET key owner NX PX 30000` with a fresh owner. `Some(owner)` when taken, `None` when
    /// another holds it. `_stale_after` is not used: the key's own expiry is the staleness
    /// rule on Redis (a holder that stops extending loses the lock after 30 s).
    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        _stale_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        let key = self.key(resource);
        let owner = uuid::Uuid::new_v4().to_string();
        let hold = hold_ms(self.hold);
        let reply: Value = self
            .cmd(
                "taking a lock",
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(hold),
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Okay => Ok(Some(owner)),
            Value::SimpleString(s) if s.eq_ignore_ascii_case("OK") => Ok(Some(owner)),
            other => Err(StoreError::unavailable(format!(
                "the Redis store {} answered SET NX with {}",
                self.label,
                kind_of(&other)
            ))),
        }
    }

    /// Extends the lock on `<P>resource` to 30 s from now if its value is still `owner`
    /// (compare and `PEXPIRE`, one script): `Some(owner)`, or `None` when it was lost.
    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.key(resource);
        let hold = hold_ms(self.hold);
        let kept: i64 = self
            .invoke(
                "extending a lock",
                self.scripts.lock_keep.key(&key).arg(owner).arg(hold),
            )
            .await?;
        Ok((kept == 1).then(|| owner.to_owned()))
    }

    /// Deletes the lock on `<P>resource` if its value is `owner` (compare and `DEL`, one
    /// script); a lock already lost is left as it is.
    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), StoreError> {
        let key = self.key(resource);
        let _deleted: i64 = self
            .invoke(
                "releasing a lock",
                self.scripts.lock_release.key(&key).arg(owner),
            )
            .await?;
        Ok(())
    }

    /// A fencing token for `resource`: the next value of counter `<P>jobagent:fence:<resource>`
    /// (one Lua script). A new counter starts from the server's clock in microseconds, so
    /// tokens keep growing across a counter that expired ([`FENCE_LIFE`] after its last use)
    /// and across the hash `<P>jobagent:lock-fence` of earlier versions (counters from 1),
    /// which gets the same TTL here.
    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, StoreError> {
        let key = self.key(&format!("{FENCE_KEY}{resource}"));
        let old = self.key(OLD_FENCE_KEY);
        let secs = expire_secs(FENCE_LIFE);
        let n: i64 = self
            .invoke(
                "a fencing token",
                self.scripts.fence.key(&key).key(&old).arg(secs),
            )
            .await?;
        u64::try_from(n).map_err(|_| {
            StoreError::refused(format!(
                "the Redis store {} holds a negative fencing counter for `{}`",
                self.label,
                echo(resource)
            ))
        })
    }

    /// Whether Hangfire keeps anything under this store's prefix and database: any of
    /// [`HANGFIRE_KEYS`] there (one `EXISTS`).
    pub(crate) async fn hangfire_keys_exist(&self) -> Result<bool, StoreError> {
        let keys: Vec<String> = HANGFIRE_KEYS.iter().map(|k| self.key(k)).collect();
        self.exists("a look for Hangfire's keys", &keys).await
    }

    /// Whether any of `keys` exists (one `EXISTS`).
    async fn exists(&self, what: &str, keys: &[String]) -> Result<bool, StoreError> {
        let n: i64 = self.cmd(what, ::redis::cmd("EXISTS").arg(keys)).await?;
        Ok(n > 0)
    }

    /// The dashboard's read of a set: members of `<P>key` by rank, `count` from `from`.
    // The dashboard's reads: for `jobagent-dev` (feature `dev`) and the tests.
    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(key);
        let start = i64::try_from(from).unwrap_or(i64::MAX);
        let stop = i64::try_from(from.saturating_add(count - 1)).unwrap_or(i64::MAX);
        self.cmd(
            "a set",
            ::redis::cmd("ZRANGE").arg(&key).arg(start).arg(stop),
        )
        .await
    }

    /// `<P>key`.
    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// The connection manager, opened (and its first connection made) at first use. A failed
    /// opening leaves nothing behind: the next operation tries again.
    #[cfg(test)]
    async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        self.current().await.map(|(_, manager)| manager)
    }

    /// The connection manager in use, and its generation (see [`RedisStore::discard`]).
    async fn current(&self) -> Result<(u64, ConnectionManager), RedisError> {
        if let Some(current) = crate::sync::lock(&self.manager).clone() {
            return Ok(current);
        }
        let _opening = self.opening.lock().await;
        if let Some(current) = crate::sync::lock(&self.manager).clone() {
            return Ok(current);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        let current = (self.generation.fetch_add(1, Ordering::Relaxed) + 1, manager);
        *crate::sync::lock(&self.manager) = Some(current.clone());
        Ok(current)
    }

    /// Gives up on the connection of `generation`, which missed a deadline: the next
    /// operation opens a new one. The connection manager reconnects by itself only on an
    /// error of the link (reset, closed); a black-holed link gives none, ever, and every
    /// command on it would time out for good.
    fn discard(&self, generation: u64) {
        let mut slot = crate::sync::lock(&self.manager);
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    /// Runs `op` on the connection under one deadline: `connectTimeout + syncTimeout` (a first
    /// connection, then the command). `what` names the operation in errors. A connection on
    /// which the deadline or the reply timeout passed is given up on ([`RedisStore::discard`]).
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let limit = self.connect_timeout.saturating_add(self.command_timeout);
        let mut used = None;
        let attempt = async {
            let (generation, c) = self.current().await?;
            used = Some(generation);
            op(c).await
        };
        let outcome = tokio::time::timeout(limit, attempt).await;
        let timed_out = match &outcome {
            Ok(Err(e)) => e.is_timeout(),
            Ok(Ok(_)) => false,
            Err(_) => true,
        };
        if timed_out && let Some(generation) = used {
            self.discard(generation);
        }
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self
                .describe(&e)
                .context(format_args!("the Redis store {} ({what})", self.label))),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::TimedOut,
                format!(
                    "the Redis store {} did not answer ({what}) within {} ms",
                    self.label,
                    limit.as_millis()
                ),
            )),
        }
    }

    /// One command under [`RedisStore::run`]'s deadline.
    async fn cmd<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(what, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// One pipeline (a `MULTI`/`EXEC`) under [`RedisStore::run`]'s deadline.
    async fn pipe<T: FromRedisValue>(&self, what: &str, p: &Pipeline) -> Result<T, StoreError> {
        self.run(what, |mut c| async move { p.query_async(&mut c).await })
            .await
    }

    /// One script call under [`RedisStore::run`]'s deadline.
    async fn invoke<T: FromRedisValue>(
        &self,
        what: &str,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(what, |mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    /// An error classified ([`redis_kind`](super::error::redis_kind)), its text with the
    /// password taken out should it ever appear.
    fn describe(&self, e: &RedisError) -> StoreError {
        StoreError::new(
            super::error::redis_kind(e),
            scrub(&e.to_string(), self.password.as_ref().map(Secret::expose)),
        )
    }
}

/// The primitives cluster mode builds on, on hashes `<P>key`.
impl Driver for RedisStore {
    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let key = self.key(key);
        self.cmd("a hash field", ::redis::cmd("HGET").arg(&key).arg(field))
            .await
    }

    /// Redis keeps no write order: fields as `HGETALL` gives them.
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = self.key(key);
        self.cmd("a hash", ::redis::cmd("HGETALL").arg(&key)).await
    }

    /// `TIME`.
    async fn now_ms(&self) -> Result<i64, StoreError> {
        let (secs, micros): (i64, i64) = self.cmd("the time", &::redis::cmd("TIME")).await?;
        Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
    }

    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        let key = self.key(key);
        let n: i64 = self
            .cmd(
                "deleting a hash field",
                ::redis::cmd("HDEL").arg(&key).arg(field),
            )
            .await?;
        Ok(n >= 1)
    }

    /// `HGETALL` and `DEL` in one `MULTI`/`EXEC`.
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = self.key(key);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("HGETALL")
            .arg(&key)
            .cmd("DEL")
            .arg(&key)
            .ignore();
        let (fields,): (Vec<(String, String)>,) = self.pipe("taking a hash", &p).await?;
        Ok(fields)
    }

    /// The key's TTL.
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        let key = self.key(key);
        let secs = expire_secs(life);
        self.cmd("a hash's TTL", ::redis::cmd("EXPIRE").arg(&key).arg(secs))
            .await
    }

    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.set_hash(key, &[(field, value)], life).await
    }

    /// One Lua script compares the field with
    /// `expected` and sets it (then the key's TTL to `life`, or `PERSIST`) or deletes it. Redis
    /// runs a script whole when it reaches it, so a queued call compares with what is there
    /// then.
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        /// ARGV: field, has-expected, expected, has-new, new, TTL seconds (0: none).
        const CAS: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if cur ~= ARGV[3] then return 0 end
elseif cur then
  return 0
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  if ARGV[6] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[6]) else redis.call('PERSIST', KEYS[1]) end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1";
        static SCRIPT: std::sync::LazyLock<::redis::Script> =
            std::sync::LazyLock::new(|| ::redis::Script::new(CAS));
        let key = self.key(key);
        let flag = |o: Option<&str>| if o.is_some() { "1" } else { "0" };
        let ttl = life.map_or(0, expire_secs);
        let done: i64 = self
            .invoke(
                "a conditional hash write",
                SCRIPT
                    .key(&key)
                    .arg(field)
                    .arg(flag(expected))
                    .arg(expected.unwrap_or_default())
                    .arg(flag(new))
                    .arg(new.unwrap_or_default())
                    .arg(ttl),
            )
            .await?;
        Ok(done == 1)
    }

    /// The lock's counter of `jobagent:claim:<class>` (see [`RedisStore::fence`]).
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        RedisStore::fence(self, &format!("jobagent:claim:{class}")).await
    }
}

/// For the agent's own Redis store, at start-up: looks for Hangfire's keys under its prefix
/// and database (in the background, when a Tokio runtime runs; bounded by 10 s) and warns,
/// naming both, when there are none: no dashboard would read what the agent writes there.
pub(crate) fn look_for_hangfire(store: &std::sync::Arc<super::Store>) {
    if !matches!(store.backend(), super::Backend::Redis(_)) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let store = store.clone();
    runtime.spawn(async move {
        #[cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "relay")), allow(irrefutable_let_patterns))]
        let super::Backend::Redis(r) = store.backend() else {
            return;
        };
        let found = tokio::time::timeout(DASHBOARD_CHECK_WITHIN, r.hangfire_keys_exist()).await;
        let (prefix, db) = (&r.prefix, r.db);
        match found {
            Ok(Ok(true)) => tracing::info!(
                store = %r.label(),
                "job agent: Hangfire keeps its keys under the Redis prefix {prefix:?} in database {db}, where the agent writes"
            ),
            Ok(Ok(false)) => tracing::warn!(
                store = %r.label(),
                "job agent: under the Redis prefix {prefix:?} in database {db} of its own store Hangfire keeps nothing (no {0}servers, {0}recurring-jobs, {0}queues, ...): no dashboard reads what the agent writes there. Set JOBAGENT_STORE_SCHEMA to the center's Prefix (Hangfire's default is {{hangfire}}:) and the database to the center's Db",
                prefix.escape_debug()
            ),
            Ok(Err(e)) => tracing::debug!(store = %r.label(), error = %e, "could not look for Hangfire's keys"),
            Err(_) => tracing::debug!(store = %r.label(), "could not look for Hangfire's keys in time"),
        }
    });
}

/// The `MULTI`/`EXEC` of one console batch (see [`RedisStore::write_console`]).
fn console_pipeline(set: &str, hash: &str, lines: &[EncodedLine], secs: u64) -> ::redis::Pipeline {
    let mut p = ::redis::pipe();
    p.atomic();
    let mut refs = lines.iter().filter_map(|l| l.reference.as_ref()).peekable();
    if refs.peek().is_some() {
        let cmd = p.cmd("HSET").arg(hash);
        for (field, text) in refs {
            cmd.arg(field).arg(text);
        }
        p.ignore();
    }
    let cmd = p.cmd("ZADD").arg(set);
    for line in lines {
        cmd.arg(line.score).arg(&line.value);
    }
    p.ignore();
    if let Some(progress) = lines.iter().rev().find_map(|l| l.progress_field.as_deref()) {
        p.cmd("HSET")
            .arg(hash)
            .arg("progress")
            .arg(progress)
            .ignore();
    }
    p.cmd("EXPIRE").arg(set).arg(secs).ignore();
    p.cmd("EXPIRE").arg(hash).arg(secs).ignore();
    p
}

/// `text` without `password` (replaced by `<redacted>`).
fn scrub(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() && text.contains(p) => text.replace(p, "<redacted>"),
        _ => text.to_owned(),
    }
}

/// Whether the server itself answered with this error (rather than the link failing).
fn answered(e: &RedisError) -> bool {
    // (Not `is_unrecoverable_error`: it counts a refused password, which the server said.)
    !(e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped())
}

/// A TTL in whole seconds: at least 1, at most [`MAX_EXPIRE_SECS`].
fn expire_secs(d: Duration) -> u64 {
    let mut secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs = secs.saturating_add(1);
    }
    secs.clamp(1, MAX_EXPIRE_SECS)
}

/// A lock hold in milliseconds, at least 1.
fn hold_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The kind of an unexpected reply, for an error (never its content).
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a bulk string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a simple string",
        Value::Okay => "OK",
        _ => "an unexpected reply",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_precedence_label_identity_and_prefix() {
        let store = |c: &str, db| match RedisStore::open(c, "{hangfire}:", db, Origin::Own) {
            Ok(s) => s,
            Err(e) => panic!("{c}: {e}"),
        };
        assert_eq!(store("h,defaultDatabase=3", Some(5)).label(), "h:6379/5");
        assert_eq!(store("h,defaultDatabase=3", None).label(), "h:6379/3");
        assert_eq!(store("redis://h:1/7", None).label(), "h:1/7");
        assert_eq!(store("redis://h:1/7", Some(0)).label(), "h:1/0");
        assert_eq!(store("h", None).label(), "h:6379/0");
        assert_eq!(store("[::1]:6380", None).label(), "[::1]:6380/0");
        assert_eq!(store("a:1,b:2", None).hosts(), vec!["a", "b"]);
        assert!(RedisStore::open("h", "{hangfire}:", Some(-1), Origin::Own).is_err());
        // An empty prefix is used as empty (a storage configured without one).
        let empty = RedisStore::open("h", "", None, Origin::Own).expect("an empty prefix");
        assert_eq!(empty.key("servers"), "servers");
        assert!(RedisStore::open("h", &"p".repeat(101), None, Origin::Own).is_err());
        assert!(RedisStore::open("h", &"p".repeat(100), None, Origin::Own).is_ok());

        // Identity: same meaning, same identity; any difference that matters, another.
        let a = store("H:6379,password=pw1,user=u", None);
        let b = store("h,user=u,password=pw1", Some(0));
        assert_eq!(a.identity(), b.identity());
        for other in [
            "h,password=pw2,user=u",
            "h,password=pw1,user=v",
            "h,password=pw1,user=u,ssl=true",
            "h,password=pw1,user=u,defaultDatabase=1",
            "h:6380,password=pw1,user=u",
            "h,user=u",
        ] {
            assert_ne!(a.identity(), store(other, None).identity(), "{other}");
        }
        let other_prefix = RedisStore::open("h,password=pw1,user=u", "{other}:", None, Origin::Own);
        assert_ne!(
            a.identity(),
            other_prefix.map(|s| s.identity).unwrap_or_default()
        );

        // sslHost: only the endpoint's own name.
        assert!(RedisStore::open("h,ssl=true,sslHost=H", "p:", None, Origin::Own).is_ok());
        let e = RedisStore::open(
            "10.0.0.1,ssl=true,sslHost=cache.example",
            "p:",
            None,
            Origin::Own,
        )
        .expect_err("refused");
        assert!(e.contains("sslHost"), "{e}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let secret = "Sup3rS3cret";
        let s = store_or_panic(&format!("h,password={secret}"));
        let shown = format!("{s:?} {}", s.label());
        assert!(!shown.contains(secret), "{shown}");
        assert!(!s.identity().contains(secret));
        let s = store_or_panic(&format!("redis://u:{secret}@h:1/2"));
        let shown = format!("{s:?} {}", s.label());
        assert!(!shown.contains(secret), "{shown}");
        assert!(!s.identity().contains(secret));
        assert_eq!(
            scrub(&format!("WRONGPASS {secret}"), Some(secret)),
            "WRONGPASS <redacted>"
        );
    }

    fn store_or_panic(c: &str) -> RedisStore {
        match RedisStore::open(c, "{hangfire}:", None, Origin::Own) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn ttls_are_whole_seconds_from_one() {
        assert_eq!(expire_secs(Duration::ZERO), 1);
        assert_eq!(expire_secs(Duration::from_millis(1500)), 2);
        assert_eq!(expire_secs(Duration::from_secs(7 * 86_400)), 7 * 86_400);
        assert_eq!(expire_secs(Duration::MAX), MAX_EXPIRE_SECS);
        assert_eq!(hold_ms(Duration::ZERO), 1);
    }

    // ---- Against a real server ----

    use crate::store::conformance::redis_url as test_url;

    /// The test server's store, with a fresh prefix; fails (never skips) when no server
    /// answers.
    async fn live_store() -> RedisStore {
        let url = test_url();
        let prefix = format!("{{t{:016x}}}:", rand::random::<u64>());
        let store = match RedisStore::open(&url, &prefix, None, Origin::Own) {
            Ok(s) => s,
            Err(e) => panic!("JOBAGENT_TEST_REDIS_URL: {e}"),
        };
        if let Err(e) = store.ping().await {
            panic!(
                "no Redis answers at {} ({e}): start one (`redis-server`, or `docker run --rm -p 6379:6379 redis:7`), or point JOBAGENT_TEST_REDIS_URL at one (redis://host:port/db)",
                store.label()
            );
        }
        store
    }

    /// Deletes every key under the store's prefix (a test's: hex digits in braces).
    async fn cleanup(store: &RedisStore) {
        let Ok(mut c) = store.manager().await else {
            return;
        };
        let mut keys = ::redis::cmd("KEYS");
        let keys: Result<Vec<String>, _> = keys
            .arg(format!("{}*", store.prefix))
            .query_async(&mut c)
            .await;
        if let Ok(keys) = keys
            && !keys.is_empty()
        {
            let _: Result<i64, _> = ::redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
        }
    }

    /// Runs `body` against a fresh store, then deletes its keys, whether `body` passed or not.
    async fn with_live_store<F, Fut>(body: F)
    where
        F: FnOnce(std::sync::Arc<RedisStore>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let store = std::sync::Arc::new(live_store().await);
        crate::store::conformance::guarded(body(store.clone()), cleanup(&store)).await;
    }

    async fn ttl(store: &RedisStore, key: &str) -> i64 {
        let key = store.key(key);
        store
            .run("TTL", |mut c| async move {
                ::redis::cmd("TTL").arg(&key).query_async(&mut c).await
            })
            .await
            .unwrap_or(-3)
    }

    fn encoded(value: &str, score: f64) -> EncodedLine {
        EncodedLine {
            value: value.to_owned(),
            score,
            reference: None,
            progress_field: None,
        }
    }

    // The layout every store keeps is checked in `store::conformance`; here what is Redis's:
    // its key layout, TTLs, and ordering by score.

    #[tokio::test(flavor = "multi_thread")]
    async fn console_batches_are_ordered_by_score_and_expire() {
        with_live_store(|store| async move {
            assert!(store.check_tables(Duration::from_secs(5)).await.is_ok());
            let reference = EncodedLine {
                reference: Some(("ref1".to_owned(), "a long text".to_owned())),
                ..encoded(r#"{"t":0.002,"r":true,"s":"ref1"}"#, 0.002)
            };
            let bar = EncodedLine {
                progress_field: Some("42.0".to_owned()),
                ..encoded(r#"{"t":0.003,"s":"1","p":42.0}"#, 0.003)
            };
            let (late, first) = (r#"{"t":1.5,"s":"late"}"#, r#"{"t":0.001,"s":"first"}"#);
            // Written out of score order: read back by score (a sorted set).
            let lines = [encoded(late, 1.5), encoded(first, 0.001), reference, bar];
            let expire = Duration::from_secs(3600);
            store
                .write_console("console:j1", "console:refs:j1", &lines, expire)
                .await
                .expect("a batch");
            let by_score = [1, 2, 3, 0].map(|i| lines[i].value.clone());
            assert_eq!(
                store.read_set("console:j1", 0, 100).await.expect("read"),
                by_score
            );
            for key in ["console:j1", "console:refs:j1"] {
                let t = ttl(&store, key).await;
                assert!((3500..=3600).contains(&t), "{key}: {t}");
            }
            // Only the set is touched when there are no references or progress.
            let plain = [encoded("x", 1.0)];
            store
                .write_console("console:j2", "console:refs:j2", &plain, expire)
                .await
                .expect("a batch");
            assert_eq!(ttl(&store, "console:refs:j2").await, -2, "no such key");
            let nan = [encoded("x", f64::NAN)];
            let refused = store.write_console("console:j3", "h", &nan, expire).await;
            assert!(refused.is_err(), "a NaN score");

            // Hashes and sets of their own.
            store
                .set_hash(
                    "job:1",
                    &[("State", "Processing"), ("x", "1")],
                    Some(expire),
                )
                .await
                .expect("hash");
            assert!((3500..=3600).contains(&ttl(&store, "job:1").await));
            store
                .set_hash("job:1", &[("x", "2")], None)
                .await
                .expect("persist");
            assert_eq!(ttl(&store, "job:1").await, -1, "no TTL");
            store
                .add_to_set("_agent_result_", "m", 1.0, Duration::from_secs(60))
                .await
                .expect("set");
            assert!((50..=60).contains(&ttl(&store, "_agent_result_").await));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn first_report_is_claimed_once_in_a_key_of_its_own() {
        with_live_store(|store| async move {
            let expire = Duration::from_secs(600);
            let claim = |id: &'static str, token: &'static str| {
                let store = store.clone();
                async move {
                    let w = ResultWrite {
                        mark: id,
                        token,
                        id,
                        result: Some(("5", token)),
                    };
                    store.write_result(&w, expire).await.expect("claim")
                }
            };
            assert!(claim("42", "tok-a").await);
            let mark = format!("{RESULT_MARK_KEY}42");
            assert!((590..=600).contains(&ttl(&store, &mark).await));
            assert!((590..=600).contains(&ttl(&store, "_agent_result_42").await));
            assert!((590..=600).contains(&ttl(&store, RESULTS).await));
            assert_eq!(
                ttl(&store, OLD_RESULTS_KEY).await,
                -2,
                "the old hash is not written"
            );
            // A mark an earlier version left in the old hash is honoured while it lives, and
            // the hash is left as it was (its TTL runs out).
            store
                .set_hash(OLD_RESULTS_KEY, &[("77", "tok-old")], Some(expire))
                .await
                .expect("an old mark");
            assert!(!claim("77", "tok-new").await, "the old mark wins");
            assert!(claim("77", "tok-old").await, "the old writer's retry");
            assert_eq!(
                store.get_all(OLD_RESULTS_KEY).await.expect("read"),
                vec![("77".to_owned(), "tok-old".to_owned())]
            );
            assert!(
                claim("78", "tok-new").await,
                "a dispatch not in the old hash"
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fencing_counters_grow_expire_and_start_above_what_they_gave() {
        with_live_store(|store| async move {
            let a1 = store.fence("lock:a").await.expect("fence");
            let a2 = store.fence("lock:a").await.expect("fence");
            assert_eq!(a2, a1 + 1);
            // Seeded from the server's clock in microseconds.
            let now_us = u64::try_from(store.now_ms().await.expect("time")).unwrap_or(0) * 1000;
            assert!(
                a1 <= now_us + 1_000_000 && a1 + 60_000_000 > now_us,
                "{a1} vs {now_us}"
            );
            // The hash of an earlier version, without a TTL, gets one at the next token.
            store
                .set_hash(OLD_FENCE_KEY, &[("lock:b", "41")], None)
                .await
                .expect("an old counter");
            assert_eq!(ttl(&store, OLD_FENCE_KEY).await, -1);
            let b1 = store.fence("lock:b").await.expect("fence");
            assert!(ttl(&store, OLD_FENCE_KEY).await > 29 * 86_400);
            assert!(b1 > a1, "another counter, a later start");
            let key = format!("{FENCE_KEY}lock:a");
            let t = ttl(&store, &key).await;
            assert!(t > 29 * 86_400 && t <= 30 * 86_400, "{t}");
            // An expired counter starts again above every token it gave.
            let k = store.key(&key);
            let _: () = store
                .run("DEL", |mut c| async move {
                    ::redis::cmd("DEL").arg(&k).query_async(&mut c).await
                })
                .await
                .expect("del");
            assert!(store.fence("lock:a").await.expect("fence") > a2);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn locks_are_uuids_held_30_s_and_expire() {
        with_live_store(|store| async move {
            let a = store
                .lock_try("lock:recurring", Duration::from_secs(1))
                .await
                .expect("try")
                .expect("taken");
            assert_eq!(a.len(), 36, "a uuid");
            let t = ttl(&store, "lock:recurring").await;
            assert!((25..=30).contains(&t), "PX 30000: {t}");
        })
        .await;
        // The suite (`store::conformance`) checks a lock whose key expired is taken over.
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_store_fails_within_its_bounds() {
        // A port nothing listens on (connection refused), and a black hole (TEST-NET-1).
        for conn in [
            "127.0.0.1:1,connectTimeout=300,syncTimeout=300",
            "192.0.2.1:6379,connectTimeout=300,syncTimeout=300",
            // TLS against a server that speaks plain RESP (or nothing): the handshake fails,
            // within the bounds (and builds the rustls configuration on the system's roots).
            "127.0.0.1:6379,ssl=true,connectTimeout=300,syncTimeout=300",
            "127.0.0.1:1,ssl=true,connectTimeout=300,syncTimeout=300",
        ] {
            let store = store_or_panic(conn);
            let started = std::time::Instant::now();
            let e = store.ping().await.expect_err("unreachable");
            assert!(started.elapsed() < Duration::from_secs(2), "{conn}: {e}");
            assert!(e.contains(store.label()), "{e}");
            // Unknown, not refused (a store reached before lets the run go ahead).
            assert!(matches!(
                store.check_tables(Duration::from_millis(500)).await,
                Err(CheckError::Unknown(_))
            ));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_that_refuses_the_agent_is_refused_without_its_password() {
        let live = live_store().await;
        let url = test_url();
        let secret = "N0tTheP4ssw0rd";
        // The server answers, but refuses: a wrong password (or one it does not expect), and
        // a database it does not have.
        let host = live
            .label()
            .rsplit_once('/')
            .map_or("", |(h, _)| h)
            .to_owned();
        for (conn, db) in [
            (
                format!("{host},password={secret},user=nobody-{secret}"),
                None,
            ),
            (url.clone(), Some(1_000_000)),
        ] {
            let store = match RedisStore::open(&conn, &live.prefix, db, Origin::Own) {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            };
            let e = match store.check_tables(Duration::from_secs(5)).await {
                Err(CheckError::Refused(e)) => e,
                other => panic!("not refused: {other:?}"),
            };
            assert!(e.contains(store.label()), "{e}");
            assert!(!e.contains(secret), "{e}");
            let e = store.ping().await.expect_err("refused");
            assert!(!e.contains(secret), "{e}");
        }
    }
}
