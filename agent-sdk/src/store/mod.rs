//! The center's store: where console lines, results, heartbeats, cluster state and
//! distributed locks go, on whichever storage the center runs.
//!
//! [`Store`] is the seam: one type the rest of the agent writes through, with one backend per
//! storage `Type` the center can send ([`postgres`] for Hangfire.PostgreSql, [`mysql`] for
//! Hangfire.MySqlStorage, [`redis`] for Hangfire.Redis.StackExchange). Another storage (SQL
//! Server) is one more module and one more [`Backend`] variant.
//!
//! A dispatch's store is the agent's own (`JOBAGENT_STORE`) when configured, else the one the
//! center sends in `x-job-storage`. One bounded pool is kept per distinct store. Every backend
//! puts a deadline on each of its operations (see each module).

#[cfg(test)]
mod conformance;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(crate) mod connstr;
mod console_writer;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis", test))]
pub(crate) mod driver;
pub(crate) mod error;
mod heartbeat;
pub(crate) mod line;
#[cfg(feature = "postgres")]
pub(crate) mod listen;
pub(crate) mod lock;
#[cfg(test)]
pub(crate) mod memory;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod pg_connstr;
#[cfg(feature = "postgres")]
pub(crate) mod pool;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod redis_connstr;
#[cfg(feature = "relay")]
pub(crate) mod relay;
mod results;
#[cfg(any(feature = "postgres", feature = "relay"))]
pub(crate) mod tls;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(crate) mod url;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use console_writer::StoreConsole;
pub(crate) use error::{StoreError, StoreErrorKind};
pub(crate) use heartbeat::Heartbeats;
pub(crate) use results::{ResultWrite, StoreResults};

use crate::error::ConfigError;
use crate::options::LocalStore;
use crate::request::StorageHeader;
pub(crate) use crate::schema::check_schema;
use line::EncodedLine;
#[cfg(feature = "mysql")]
use mysql::MysqlStore;
#[cfg(feature = "postgres")]
use postgres::PgStore;
#[cfg(feature = "redis")]
use redis::RedisStore;

/// The storages a Hangfire.HttpJob center runs on that this agent writes to, by the `Type`
/// the center sends in `x-job-storage` (`postgresql`, `mysql`, `redis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreType {
    /// Hangfire.PostgreSql: an Npgsql connection string or a `postgres://` URL.
    PostgreSql,
    /// Hangfire.MySqlStorage (MySQL or MariaDB): a MySqlConnector connection string or a
    /// `mysql://` URL.
    MySql,
    /// Hangfire.Redis.StackExchange: a StackExchange.Redis configuration string or a
    /// `redis://` / `rediss://` URL.
    Redis,
    /// A `jobagent-relay` in front of the center's store: `relay+http://host:port` or
    /// `relay+https://...`, with the token in `JOBAGENT_RELAY_TOKEN`. The agent's own store
    /// only: a center never sends it.
    Relay,
}

impl StoreType {
    /// The name the center sends as `Type`.
    pub const fn name(self) -> &'static str {
        match self {
            StoreType::PostgreSql => "postgresql",
            StoreType::MySql => "mysql",
            StoreType::Redis => "redis",
            StoreType::Relay => "relay",
        }
    }

    /// The schema, table prefix or key prefix Hangfire uses when none is given. MySQL:
    /// `Hangfire`, what the agent assumed before it found prefixes; both MySQL storages'
    /// own default is empty, and a MySQL store given no prefix finds it from its tables.
    pub const fn default_prefix(self) -> &'static str {
        match self {
            StoreType::PostgreSql => "hangfire",
            StoreType::MySql => "Hangfire",
            StoreType::Redis => "{hangfire}:",
            // The relay's own configuration names the store and its prefix.
            StoreType::Relay => "",
        }
    }

    /// The type a URL's scheme names (`postgres://`, `postgresql://`, `mysql://`,
    /// `redis://`, `rediss://`, `relay+http://`, `relay+https://`), if it is a URL.
    pub fn of_url(connection: &str) -> Option<Self> {
        let (scheme, _) = connection.trim().split_once("://")?;
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(StoreType::PostgreSql),
            "mysql" | "mariadb" => Some(StoreType::MySql),
            "redis" | "rediss" => Some(StoreType::Redis),
            "relay+http" | "relay+https" => Some(StoreType::Relay),
            _ => None,
        }
    }
}

impl fmt::Display for StoreType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A store `Type` this agent does not write to: the error of [`StoreType`]'s `FromStr`.
/// Its message names the type as given (at most 40 characters) and the types the agent
/// writes to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the store Type `{given}` is not one this agent writes to; it writes to `postgresql`, `mysql` and `redis` (SQL Server is planned)"
)]
pub struct UnknownStoreType {
    given: String,
}

impl FromStr for StoreType {
    type Err = UnknownStoreType;

    /// The center's `Type` names, case-insensitively (`postgres` and `mariadb` too).
    fn from_str(s: &str) -> Result<Self, UnknownStoreType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "postgresql" | "postgres" => Ok(StoreType::PostgreSql),
            "mysql" | "mariadb" => Ok(StoreType::MySql),
            "redis" => Ok(StoreType::Redis),
            "relay" => Ok(StoreType::Relay),
            other => Err(UnknownStoreType {
                given: other.chars().take(40).collect(),
            }),
        }
    }
}

/// The longest a run's answer waits for a store this process has never reached to answer
/// (see [`Store::check_tables`]); a dispatch's own answer deadline may be shorter.
pub(crate) const FIRST_REACH_WITHIN: Duration = Duration::from_secs(3);
/// How long a run's answer waits for the table check of a store reached before.
const CHECK_WITHIN: Duration = Duration::from_millis(500);
/// After a check of a reached store that could not tell, how long runs go ahead without
/// checking again (an unreachable store delays one answer per period, not every one).
const CHECK_RETRY: Duration = Duration::from_secs(30);

/// Why a backend's check of a store (its tables, or that it takes this agent) failed.
#[derive(Debug)]
pub(crate) enum CheckError {
    /// The store answered, and said no: it lacks Hangfire's tables, or refuses this agent.
    /// A run written there could never show at the center.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "redis")),
        allow(dead_code)
    )]
    Refused(String),
    /// No answer that tells: unreachable, connection or login refused, timed out. Safe to
    /// show (never a password or a connection string).
    Unknown(StoreError),
}

impl CheckError {
    /// The store did not answer within `within`.
    pub(crate) fn no_answer(within: Duration) -> Self {
        CheckError::Unknown(StoreError::new(
            StoreErrorKind::TimedOut,
            format!("the store did not answer within {} ms", within.as_millis()),
        ))
    }

    /// A backend's `check` of a store, bounded by `within`, unless one succeeded before
    /// (`seen`, set on success: the store is not asked again).
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
    pub(crate) async fn once(
        seen: &AtomicBool,
        within: Duration,
        check: impl std::future::Future<Output = Result<(), CheckError>>,
    ) -> Result<(), CheckError> {
        if seen.load(Ordering::Acquire) {
            return Ok(());
        }
        let checked = tokio::time::timeout(within, check)
            .await
            .unwrap_or_else(|_| Err(CheckError::no_answer(within)));
        if checked.is_ok() {
            seen.store(true, Ordering::Release);
        }
        checked
    }
}

/// What `NOTIFY` wakes (see `listen`; PostgreSQL only: the other stores never wake it, their
/// readers poll).
#[derive(Default)]
pub(crate) struct Wakeups {
    /// A command for this instance may be waiting.
    pub(crate) commands: tokio::sync::Notify,
    /// A singleton claim was released somewhere.
    pub(crate) claims: tokio::sync::Notify,
}

/// When the TLS material (trusted roots) of a PostgreSQL store is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Load {
    /// Now, blocking: at configuration time (the agent's own store), or in a test.
    Now,
    /// At the first connection, off the async threads (a store the center sent: reached on
    /// the request path, so no blocking I/O there).
    Deferred,
}

/// One store, through the backend of its storage type.
pub(crate) struct Store {
    /// Where it came from, for logs (host and database; never a secret).
    pub(crate) label: String,
    /// Its schema (PostgreSQL, quoted for SQL), table prefix (MySQL) or key prefix (Redis).
    pub(crate) prefix: String,
    /// How long written rows live.
    pub(crate) expire: Duration,
    /// What `NOTIFY` wakes (PostgreSQL only, the others poll).
    pub(crate) wakeups: Arc<Wakeups>,
    /// Whether this process has had an answer from the store (a check or a write that
    /// succeeded): from then on an outage is buffered, never refused (see
    /// [`Store::check_tables`]).
    reached: AtomicBool,
    /// When the last check of a reached store could not tell.
    unknown_at: Mutex<Option<std::time::Instant>>,
    /// Sent by a center (not the agent's own store): left when unused.
    from_center: bool,
    /// When a dispatch last named it.
    last_used: Mutex<std::time::Instant>,
    /// Whether its coordinator runs.
    coordinated: AtomicBool,
    /// Whether the cache of center stores holds it.
    cached: AtomicBool,
    backend: Backend,
}

/// The backends, one per storage type.
// A `Store` is created once per distinct store and lives as long as the agent: the size of
// the enum does not matter, and boxing a variant would only add a hop to every write.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
    #[cfg(feature = "mysql")]
    Mysql(MysqlStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
    #[cfg(feature = "relay")]
    Relay(relay::RelayStore),
    /// Never made: the enum's only variant when no store feature is on.
    #[cfg(not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "relay"
    )))]
    None(std::convert::Infallible),
}

/// Dispatches one call to the backend: `$call` on each, or, given `$relay`, `$call` on a
/// database and `$relay` on a relay. Each says its error as a [`StoreError`].
macro_rules! backend {
    ($self:ident, $b:ident => $call:expr) => {
        backend!($self, $b => $call, $b => $call)
    };
    ($self:ident, $b:ident => $call:expr, $r:ident => $relay:expr) => {
        match $self.backend() {
            #[cfg(feature = "postgres")]
            $crate::store::Backend::Postgres($b) => $call,
            #[cfg(feature = "mysql")]
            $crate::store::Backend::Mysql($b) => $call,
            #[cfg(feature = "redis")]
            $crate::store::Backend::Redis($b) => $call,
            #[cfg(feature = "relay")]
            $crate::store::Backend::Relay($r) => $relay,
            #[cfg(not(any(
                feature = "postgres",
                feature = "mysql",
                feature = "redis",
                feature = "relay"
            )))]
            $crate::store::Backend::None(never) => match *never {},
        }
    };
}

pub(crate) use backend;

/// Why a store of a type this build left out cannot be opened (`feature`: the Cargo feature
/// of jobagent that brings it).
#[cfg(any(
    not(feature = "postgres"),
    not(feature = "mysql"),
    not(feature = "redis"),
    not(feature = "relay")
))]
pub(crate) fn built_without(feature: &str) -> String {
    format!(
        "this agent was built without the `{feature}` feature of jobagent; rebuild it with that feature (it is on by default), or give the agent a store of a type it was built with"
    )
}

/// What opening a store needs besides its connection string.
pub(crate) struct Opening<'a> {
    pub(crate) kind: StoreType,
    pub(crate) connection: &'a str,
    /// Schema (PostgreSQL), table prefix (MySQL) or key prefix (Redis); `None` when none was
    /// given: the type's default ([`StoreType::default_prefix`]), except on MySQL, where it is
    /// found from the tables present.
    pub(crate) prefix: Option<&'a str>,
    pub(crate) expire_days: f64,
    /// Redis: the database.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) db: Option<i64>,
    /// Sent by a center: may not name files on the agent's machine.
    pub(crate) from_center: bool,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) load: Load,
    /// A relay's bearer token (the agent's own store only).
    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    pub(crate) relay_token: Option<&'a str>,
}

/// Where a store's connection string came from, which decides what a key the agent has no
/// use for does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "mysql", feature = "redis")), allow(dead_code))]
pub(crate) enum Origin {
    /// The agent's own configuration (`JOBAGENT_STORE`): an unknown key is the operator's
    /// typo, refused at start-up.
    Own,
    /// Sent by a center (`x-job-storage`): the center's own driver accepted it, so a key the
    /// agent has no use for, even one it does not know, is ignored with one warning naming
    /// it; a key naming a file on the agent's machine stays refused.
    Center,
}

#[cfg_attr(not(any(feature = "mysql", feature = "redis")), allow(dead_code))]
impl Origin {
    /// [`Origin::Center`] for a string a center sent.
    pub(crate) fn of(from_center: bool) -> Self {
        if from_center { Self::Center } else { Self::Own }
    }
}

impl Store {
    /// Opens a store (no I/O but, for a local store, the files it names).
    pub(crate) fn open(o: &Opening<'_>) -> Result<Self, StoreError> {
        // For logs and the derived agent id (a MySQL prefix to be found counts as the type's
        // default, as before prefixes were found).
        #[cfg_attr(
            not(any(feature = "postgres", feature = "mysql", feature = "redis")),
            allow(unused_variables)
        )]
        let named = o.prefix.unwrap_or(o.kind.default_prefix());
        let (label, prefix, backend) = match o.kind {
            #[cfg(feature = "postgres")]
            StoreType::PostgreSql => {
                let spec = pg_connstr::parse(o.connection)
                    .map_err(|e| StoreError::config(e.to_string()))?;
                if o.from_center
                    && let Some(setting) = spec.file_settings.first()
                {
                    // Neither the path nor anything about the file is echoed: a caller must
                    // not learn which files exist on the agent's machine.
                    return Err(StoreError::config(format!(
                        "connection string key `{setting}` names a file on the agent's machine, which a store sent by the center may not do; remove it from the center's connection string, or configure the store on the agent (JOBAGENT_STORE), where Root Certificate is allowed"
                    )));
                }
                let pg = PgStore::open(&spec, named, o.load)?;
                (pg.label.clone(), pg.schema.clone(), Backend::Postgres(pg))
            }
            #[cfg(not(feature = "postgres"))]
            StoreType::PostgreSql => return Err(StoreError::config(built_without("postgres"))),
            #[cfg(feature = "mysql")]
            StoreType::MySql => {
                let my = MysqlStore::open(o.connection, o.prefix, o.from_center)?;
                (my.label().to_owned(), named.to_owned(), Backend::Mysql(my))
            }
            #[cfg(not(feature = "mysql"))]
            StoreType::MySql => return Err(StoreError::config(built_without("mysql"))),
            #[cfg(feature = "redis")]
            StoreType::Redis => {
                let r = RedisStore::open(o.connection, named, o.db, Origin::of(o.from_center))?;
                (r.label().to_owned(), named.to_owned(), Backend::Redis(r))
            }
            #[cfg(not(feature = "redis"))]
            StoreType::Redis => return Err(StoreError::config(built_without("redis"))),
            #[cfg(feature = "relay")]
            StoreType::Relay => {
                if o.from_center {
                    return Err(StoreError::config(
                        "`relay` is the agent's own store type; a center does not send it",
                    ));
                }
                let r = relay::RelayStore::open(o.connection, o.relay_token)?;
                (r.label().to_owned(), String::new(), Backend::Relay(r))
            }
            #[cfg(not(feature = "relay"))]
            StoreType::Relay => return Err(StoreError::config(built_without("relay"))),
        };
        Ok(Self {
            label,
            prefix,
            expire: Duration::from_secs_f64(o.expire_days * 86_400.0),
            wakeups: Arc::new(Wakeups::default()),
            reached: AtomicBool::new(false),
            unknown_at: Mutex::new(None),
            from_center: o.from_center,
            last_used: Mutex::new(std::time::Instant::now()),
            coordinated: AtomicBool::new(false),
            cached: AtomicBool::new(false),
            backend,
        })
    }

    /// Notes that a dispatch named the store.
    fn touch(&self) {
        *crate::sync::lock(&self.last_used) = std::time::Instant::now();
    }

    /// How long since a dispatch last named the store.
    pub(crate) fn idle_for(&self) -> Duration {
        crate::sync::lock(&self.last_used).elapsed()
    }

    /// Whether a center sent it (the agent's own store is never left).
    pub(crate) fn sent_by_center(&self) -> bool {
        self.from_center
    }

    /// Whether the cache of center stores holds it.
    pub(crate) fn is_cached(&self) -> bool {
        self.cached.load(Ordering::Acquire)
    }

    /// True when the caller should start the coordinator (none runs).
    pub(crate) fn start_coordinating(&self) -> bool {
        !self.coordinated.swap(true, Ordering::AcqRel)
    }

    /// Called by the coordinator when it ends: the next dispatch starts one again.
    pub(crate) fn coordinator_ended(&self) {
        self.coordinated.store(false, Ordering::Release);
    }

    pub(crate) fn kind(&self) -> StoreType {
        match self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => StoreType::PostgreSql,
            #[cfg(feature = "mysql")]
            Backend::Mysql(_) => StoreType::MySql,
            #[cfg(feature = "redis")]
            Backend::Redis(_) => StoreType::Redis,
            #[cfg(feature = "relay")]
            Backend::Relay(_) => StoreType::Relay,
            #[cfg(not(any(
                feature = "postgres",
                feature = "mysql",
                feature = "redis",
                feature = "relay"
            )))]
            Backend::None(never) => match never {},
        }
    }

    /// The backend, for what is built on its own primitives (cluster mode).
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The PostgreSQL backend, for what only it has (its cluster SQL, `LISTEN`).
    #[cfg(feature = "postgres")]
    pub(crate) fn pg(&self) -> Result<&PgStore, StoreError> {
        match &self.backend {
            Backend::Postgres(pg) => Ok(pg),
            #[allow(unreachable_patterns)]
            _ => Err(StoreError::config(format!(
                "this needs a PostgreSQL store; this one is {}",
                self.kind()
            ))),
        }
    }

    /// The host names the store connects to.
    fn hosts(&self) -> Vec<String> {
        backend!(self, b => b.hosts())
    }

    /// Whether a run may be accepted for this store, deciding by `answer_by` (the run's
    /// answer deadline). One behaviour for every store type:
    ///
    /// - a store that answers that it lacks Hangfire's tables, or refuses this agent, is
    ///   refused (the run could never show at the center);
    /// - a store this process has **never reached** that does not answer (connection or login
    ///   refused, unreachable, no answer within [`FIRST_REACH_WITHIN`] or by `answer_by`) is
    ///   refused with the reason: answered 200, the run's result could not be written
    ///   anywhere the center reads, and the center, which has no time-out for agent jobs,
    ///   would wait for ever; a 500 shows the reason and lets the center's retries apply;
    /// - a store reached before that does not answer within [`CHECK_WITHIN`] lets the run go
    ///   (its writes are buffered and retried, as in any outage), and is not asked again for
    ///   [`CHECK_RETRY`].
    pub(crate) async fn check_tables(
        &self,
        answer_by: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let reached = self.reached.load(Ordering::Acquire);
        if reached
            && crate::sync::lock(&self.unknown_at).is_some_and(|at| at.elapsed() < CHECK_RETRY)
        {
            return Ok(());
        }
        let within = if reached {
            CHECK_WITHIN
        } else {
            answer_by
                .saturating_duration_since(tokio::time::Instant::now())
                .min(FIRST_REACH_WITHIN)
                .max(Duration::from_millis(100))
        };
        let checked = backend!(self, b => b.check_tables(within).await);
        match checked {
            Ok(()) => {
                self.mark_reached();
                Ok(())
            }
            Err(CheckError::Refused(e)) => Err(StoreError::config(e)),
            // Reached since the check began (another run's write): as below.
            Err(CheckError::Unknown(e)) if reached || self.reached.load(Ordering::Acquire) => {
                tracing::debug!(store = %self.label, error = %e, "could not check the store; the run goes ahead and its writes retry");
                *crate::sync::lock(&self.unknown_at) = Some(std::time::Instant::now());
                Ok(())
            }
            Err(CheckError::Unknown(e)) => {
                let kind = e.kind();
                Err(StoreError::new(
                    kind,
                    format!(
                        "the store {} has not answered this agent yet: {}; the run was not started (once the store has answered, an outage no longer refuses runs: their writes are retried)",
                        self.label,
                        String::from(e)
                    ),
                ))
            }
        }
    }

    /// Notes that the store answered.
    fn mark_reached(&self) {
        if !self.reached.load(Ordering::Relaxed) {
            self.reached.store(true, Ordering::Release);
        }
    }

    /// `res`, noting that the store answered when it is a success.
    fn noted<T>(&self, res: Result<T, StoreError>) -> Result<T, StoreError> {
        if res.is_ok() {
            self.mark_reached();
        }
        res
    }

    /// The type of the store written in the end: a relay's is the one behind it.
    pub(crate) async fn final_kind(&self) -> Result<StoreType, StoreError> {
        match &self.backend {
            #[cfg(feature = "relay")]
            Backend::Relay(r) => r.remote_kind().await,
            #[cfg(any(
                feature = "postgres",
                feature = "mysql",
                feature = "redis",
                not(feature = "relay")
            ))]
            _ => Ok(self.kind()),
        }
    }

    /// Whether the store answers a trivial request within `within`.
    pub(crate) async fn ping(&self, within: Duration) -> Result<(), StoreError> {
        let ping = async { backend!(self, b => b.ping().await) };
        let res = tokio::time::timeout(within, ping)
            .await
            .map_err(|_| StoreError::timed_out("the store", within))?;
        self.noted(res)
    }

    /// One console batch, in order, idempotent when retried.
    pub(crate) async fn write_console(
        &self,
        set_key: &str,
        hash_key: &str,
        lines: &[EncodedLine],
    ) -> Result<(), StoreError> {
        let res = backend!(self, b => b.write_console(set_key, hash_key, lines, self.expire).await);
        self.noted(res)
    }

    /// Upserts fields of one hash key; they expire after `life` (None: never).
    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.noted(backend!(self, b => b.set_hash(key, pairs, life).await))
    }

    /// Upserts one set member.
    #[cfg(any(
        feature = "relay-server",
        all(test, any(feature = "postgres", feature = "mysql", feature = "redis"))
    ))]
    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
    ) -> Result<(), StoreError> {
        self.noted(backend!(self, b => b.add_to_set(key, value, score, self.expire).await))
    }

    /// A dispatch's result with its first-report mark, in one write; false (nothing written)
    /// when another writer marked it first.
    pub(crate) async fn write_result(&self, w: &ResultWrite<'_>) -> Result<bool, StoreError> {
        self.noted(backend!(self, b => b.write_result(w, self.expire).await))
    }

    /// One try at the store's distributed lock; the owner when taken.
    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        stale_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.noted(backend!(self, b => b.lock_try(resource, stale_after).await))
    }

    /// Keeps a held lock fresh; the new owner, or None when it was lost.
    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        backend!(self, b => b.lock_keep(resource, owner).await)
    }

    /// Releases a held lock if it is still this owner's.
    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), StoreError> {
        backend!(self, b => b.lock_release(resource, owner).await)
    }

    /// The next fencing token of `resource`.
    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, StoreError> {
        backend!(self, b => b.fence(resource).await)
    }
}

/// Reading back what was written: the dev CLI, the relay, and the tests of the stores.
#[cfg(any(
    feature = "dev",
    feature = "relay-server",
    all(test, any(feature = "postgres", feature = "mysql", feature = "redis"))
))]
impl Store {
    /// A set's members in the order the dashboard shows them.
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        backend!(self, b => b.read_set(key, from, count).await)
    }

    /// One field of a hash.
    pub(crate) async fn read_hash(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<String>, StoreError> {
        backend!(self, b => driver::Driver::get(b, key, field).await, r => r.read_hash(key, field).await)
    }

    /// All fields of a hash with their values, in the order they were written (a result's
    /// field is its elapsed milliseconds, unknown to the reader).
    pub(crate) async fn read_hash_all(
        &self,
        key: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        backend!(self, b => driver::Driver::get_all(b, key).await, r => r.read_hash_all(key).await)
    }
}

/// The fencing counter's field for a lock resource: 32 hex digits (MySQL's `Field` holds 40
/// characters; resources may be longer).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn fence_field(resource: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, resource.as_bytes())
        .simple()
        .to_string()
}

/// The stores an agent writes to: its own, and those centers send, one pool each.
pub(crate) struct Stores {
    local: Option<Arc<Store>>,
    allowed_hosts: Option<Vec<String>>,
    sent: Mutex<HashMap<String, Arc<Store>>>,
    /// How long a center store may go unused before it is left (`JOBAGENT_STORE_IDLE_MS`).
    idle: Duration,
}

/// The most distinct header-sent stores kept open at once. A new one past it makes room by
/// leaving one (see [`Stores::make_room`]): never refused, so stores that never answered
/// (bogus strings) cannot lock real ones out.
const MAX_SENT_STORES: usize = 32;

impl Stores {
    pub(crate) fn new(
        local: Option<&LocalStore>,
        allowed_hosts: Option<Vec<String>>,
        idle: Duration,
    ) -> Result<Self, ConfigError> {
        let local = match local {
            None => None,
            Some(l) => {
                let invalid = |reason: StoreError| {
                    ConfigError::invalid("JOBAGENT_STORE", String::from(reason))
                };
                let connection = l.connection.expose();
                let kind = l.resolved_kind();
                let prefix = l.prefix();
                // Configuration time: files it names (Root Certificate) are read now.
                let store = Store::open(&Opening {
                    kind,
                    connection,
                    prefix,
                    expire_days: l.expire_days,
                    db: None,
                    from_center: false,
                    load: Load::Now,
                    relay_token: l.relay_token.as_ref().map(|t| t.expose()),
                })
                .map_err(invalid)?;
                Some(Arc::new(store))
            }
        };
        if let Some(store) = &local {
            tracing::info!(store = %store.label, kind = %store.kind(), "job agent writes to its configured store");
            #[cfg(feature = "redis")]
            redis::look_for_hangfire(store);
        }
        Ok(Self {
            local,
            allowed_hosts,
            sent: Mutex::new(HashMap::new()),
            idle,
        })
    }

    /// Leaves stores unused for [`Stores::idle`] whose coordinator has ended (nothing uses
    /// them), then, while the cache is still full, the least recently named one, preferring
    /// one that never answered. Its pool closes once its last user (a run still writing
    /// there) lets go.
    fn make_room(&self, sent: &mut HashMap<String, Arc<Store>>) {
        let idle = self.idle;
        sent.retain(|_, store| {
            let keep = store.idle_for() < idle || store.coordinated.load(Ordering::Acquire);
            if !keep {
                store.cached.store(false, Ordering::Release);
                tracing::debug!(store = %store.label, "left a center store nobody used");
            }
            keep
        });
        while sent.len() >= MAX_SENT_STORES {
            let victim = sent
                .iter()
                .map(|(key, store)| {
                    let answered = store.reached.load(Ordering::Acquire);
                    (answered, std::cmp::Reverse(store.idle_for()), key.clone())
                })
                .min()
                .map(|(_, _, key)| key);
            let Some(key) = victim else { break };
            if let Some(store) = sent.remove(&key) {
                store.cached.store(false, Ordering::Release);
                tracing::debug!(store = %store.label, "left a center store to make room for another (the least recently used, one that never answered first)");
            }
        }
    }

    /// The agent's own store, if configured.
    pub(crate) fn local(&self) -> Option<Arc<Store>> {
        self.local.clone()
    }

    /// The store for a dispatch: the local one, else the one in `x-job-storage`, else none.
    pub(crate) fn select(
        &self,
        header: Option<&StorageHeader>,
    ) -> Result<Option<Arc<Store>>, StoreError> {
        if let Some(local) = &self.local {
            return Ok(Some(local.clone()));
        }
        let Some(h) = header else { return Ok(None) };
        let kind: StoreType = h.kind.parse().map_err(|e: UnknownStoreType| {
            StoreError::config(format!("{e}; for a center on another storage, give the agent its own store (JOBAGENT_STORE)"))
        })?;
        if h.hangfire_db.trim().is_empty() {
            return Err(StoreError::config(
                "the center's store has no HangfireDb connection string",
            ));
        }
        let prefix = match (kind, h.table_prefix.as_deref()) {
            // Hangfire.MySqlStorage's and Hangfire.Storage.MySql's prefix verbatim, empty
            // included (their default); a missing one is found from the tables.
            (StoreType::MySql, given) => given,
            // Hangfire.Redis.StackExchange uses its `Prefix` verbatim, an empty one too.
            (StoreType::Redis, Some(given)) => Some(given),
            (_, given) => Some(
                given
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(kind.default_prefix()),
            ),
        };
        let days = h
            .expire_at_days
            .filter(|d| d.is_finite() && *d >= 1.0)
            .unwrap_or(7.0)
            .min(3650.0);
        let db = match h.db.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            None => None,
            Some(d) => Some(
                d.parse::<i64>()
                    .ok()
                    .filter(|d| (0..=65_535).contains(d))
                    .ok_or_else(|| {
                        StoreError::config(format!(
                            "Db: `{}` is not a Redis database number",
                            d.chars().take(20).collect::<String>()
                        ))
                    })?,
            ),
        };
        if kind == StoreType::PostgreSql
            && let Some(prefix) = prefix
        {
            check_schema(prefix).map_err(|e| StoreError::config(format!("TablePrefix: {e}")))?;
        }
        // Keyed by what the center sent (the same center sends the same string); held in
        // memory only, as the store itself holds its credentials.
        let key = format!("{kind}|{}|{prefix:?}|{days}|{db:?}", h.hangfire_db);
        let mut sent = crate::sync::lock(&self.sent);
        if let Some(store) = sent.get(&key) {
            store.touch();
            return Ok(Some(store.clone()));
        }
        self.make_room(&mut sent);
        // The request path, under a lock: nothing is read here (the system's CA
        // certificates, when needed, are loaded off-thread at the first connection).
        let store = Store::open(&Opening {
            kind,
            connection: &h.hangfire_db,
            prefix,
            expire_days: days,
            db,
            from_center: true,
            load: Load::Deferred,
            relay_token: None,
        })
        .map_err(|e| e.context("HangfireDb"))?;
        if let Some(allowed) = &self.allowed_hosts {
            for host in store.hosts() {
                if !host_allowed(&host, allowed) {
                    return Err(StoreError::config(format!(
                        "the center's store names host `{}`, which is not in JOBAGENT_STORE_ALLOWED_HOSTS",
                        host.chars().take(100).collect::<String>()
                    )));
                }
            }
        }
        let store = Arc::new(store);
        tracing::info!(store = %store.label, kind = %kind, "job agent opened a store sent by the center");
        store.cached.store(true, Ordering::Release);
        sent.insert(key, store.clone());
        Ok(Some(store))
    }
}

/// Whether `host` matches an allow-list entry (`name`, or `*.domain` for its sub-domains).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|entry| match entry.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => *entry == host || entry == "*",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::quote_ident;

    #[test]
    fn store_types_parse_by_the_centers_names_and_an_unknown_one_is_a_typed_error() {
        for (name, kind) in [
            ("postgresql", StoreType::PostgreSql),
            (" PostgreS ", StoreType::PostgreSql),
            ("MySQL", StoreType::MySql),
            ("mariadb", StoreType::MySql),
            ("redis", StoreType::Redis),
            ("relay", StoreType::Relay),
        ] {
            assert_eq!(name.parse::<StoreType>(), Ok(kind), "{name}");
            assert_eq!(kind.name().parse::<StoreType>(), Ok(kind));
        }
        let long = format!("sqlserver{}", "x".repeat(100));
        let err = long
            .parse::<StoreType>()
            .expect_err("SQL Server is not written to");
        let shown = err.to_string();
        assert!(shown.starts_with("the store Type `sqlserverxxx"), "{shown}");
        assert!(!shown.contains(&"x".repeat(40)), "cut at 40: {shown}");
        assert!(
            shown.contains("`postgresql`, `mysql` and `redis`"),
            "{shown}"
        );
    }

    #[test]
    fn allow_list_matches_names_and_domains() {
        let allowed = vec![
            "db1".to_owned(),
            "10.0.0.5".to_owned(),
            "*.corp.example".to_owned(),
        ];
        assert!(host_allowed("DB1", &allowed));
        assert!(host_allowed("10.0.0.5", &allowed));
        assert!(host_allowed("pg.corp.example", &allowed));
        assert!(!host_allowed("corp.example", &allowed));
        assert!(!host_allowed("evil.example", &allowed));
        assert!(!host_allowed("db1.evil", &allowed));
        assert!(check_schema("hangfire").is_ok());
        // Hangfire.PostgreSql quotes its schema name: anything but NUL, up to 63 bytes.
        for name in ["hangfire-prod", "1abc", "a\"b", "bad;schema", "空间"] {
            assert!(check_schema(name).is_ok(), "{name}");
        }
        assert!(check_schema("").is_err());
        assert!(check_schema("a\0b").is_err());
        assert!(check_schema(&"x".repeat(64)).is_err());
        assert!(check_schema(&"x".repeat(63)).is_ok());
        assert_eq!(quote_ident("hangfire-prod"), "\"hangfire-prod\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[cfg(feature = "postgres")]
    fn header(connection: &str) -> StorageHeader {
        serde_json::from_value(serde_json::json!({
            "Type": "postgresql",
            "HangfireDb": connection,
        }))
        .expect("a storage header")
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_center_sent_store_may_not_name_files_and_opening_one_reads_nothing() {
        let stores = Stores::new(None, None, Duration::from_secs(300)).expect("no local store");
        let base = "Host=db;Username=u;Password=p;SSL Mode=VerifyFull";
        let refusal = |setting: &str, path: &str| match stores
            .select(Some(&header(&format!("{base};{setting}={path}"))))
        {
            Ok(_) => panic!("{setting} accepted"),
            Err(e) => String::from(e),
        };
        let exists = refusal("Root Certificate", "/etc/passwd");
        let missing = refusal("Root Certificate", "/nonexistent/ca.pem");
        assert_eq!(exists, missing, "no hint whether the file exists");
        assert!(exists.contains("`Root Certificate`"), "{exists}");
        assert!(!exists.contains("/etc/passwd"), "{exists}");
        for (setting, named) in [
            ("sslrootcert", "Root Certificate"),
            ("SSL Key", "SSL Key"),
            ("SslCert", "SSL Certificate"),
            ("Passfile", "Passfile"),
        ] {
            let e = refusal(setting, "/etc/hostname");
            assert!(e.contains(&format!("`{named}`")), "{setting}: {e}");
            assert!(!e.contains("/etc/hostname"), "{e}");
        }
        // An empty value sets nothing.
        assert!(
            stores
                .select(Some(&header(&format!("{base};Passfile="))))
                .is_ok()
        );
        // Verifying against the system's roots: nothing is read while selecting (the request
        // path); the roots are loaded off-thread at the first connection.
        assert!(stores.select(Some(&header(base))).is_ok());
    }

    /// An agent built without a backend's feature refuses that store, naming the feature,
    /// whether the center sends it or the agent's own configuration names it. Runs in CI as
    /// `cargo test -p jobagent --lib --no-default-features --features postgres store::` (and
    /// `--features mysql`).
    #[cfg(not(all(feature = "postgres", feature = "mysql", feature = "redis")))]
    #[test]
    fn a_store_type_left_out_of_the_build_is_refused_naming_its_feature() {
        let mut left_out = Vec::new();
        #[cfg(not(feature = "postgres"))]
        left_out.push((
            "postgresql",
            "Host=db;Username=u;Password=p",
            "postgres://u:p@db/hangfire",
        ));
        #[cfg(not(feature = "mysql"))]
        left_out.push((
            "mysql",
            "Server=db;User ID=u;Password=p",
            "mysql://u:p@db/hangfire",
        ));
        #[cfg(not(feature = "redis"))]
        left_out.push(("redis", "db:6379,password=p", "redis://:p@db:6379/0"));
        for (kind, sent, own) in left_out {
            let feature = if kind == "postgresql" {
                "postgres"
            } else {
                kind
            };
            let wanted =
                format!("this agent was built without the `{feature}` feature of jobagent");
            // Sent by a center in `x-job-storage`.
            let stores = Stores::new(None, None, Duration::from_secs(300)).expect("no local store");
            let header: StorageHeader = serde_json::from_value(serde_json::json!({
                "Type": kind,
                "HangfireDb": sent,
            }))
            .expect("a storage header");
            let e = match stores.select(Some(&header)) {
                Ok(_) => panic!("a {kind} store was opened without its feature"),
                Err(e) => e,
            };
            assert!(e.contains(&wanted), "{e}");
            assert!(!e.contains("Password=p") && !e.contains(":p@"), "{e}");
            // Named by the agent's own configuration (JOBAGENT_STORE).
            let local = LocalStore {
                connection: crate::secret::Secret::new(own),
                kind: None,
                schema: String::new(),
                no_prefix: false,
                expire_days: 7.0,
                relay_token: None,
            };
            let e = match Stores::new(Some(&local), None, Duration::from_secs(300)) {
                Ok(_) => panic!("a {kind} store was configured without its feature"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("JOBAGENT_STORE"), "{e}");
            assert!(e.contains(&wanted), "{e}");
        }
    }
}
