//! The center's store when it is Hangfire.MySqlStorage or Hangfire.Storage.MySql (MySQL or
//! MariaDB): console lines, results, locks and fencing tokens, in the tables the storages'
//! `Install.sql` creates (`<prefix>Hash`, `<prefix>Set`, `<prefix>DistributedLock`; the
//! agent never creates them). The prefix is used as given, or found when none was given
//! ([`tables`]).
//!
//! **A center's connection string is its driver's**: settings of MySqlConnector or MySql.Data
//! the agent has no use for are ignored with one warning per store naming them; the agent's
//! own string is strict ([`connstr::Origin`]).
//!
//! **Every operation has a deadline**, as in the PostgreSQL store: the checkout of a pooled
//! connection (opening one included) is bounded by `Connection Timeout`, each statement by
//! `Default Command Timeout` (client-side, so it also holds when the link is black-holed). A
//! connection whose statement timed out, failed below SQL (I/O, protocol), or whose caller
//! went away mid-statement is disconnected, never pooled again. TCP keepalive is on (10 s
//! idle unless `Keepalive` says otherwise).
//!
//! Times are naive UTC as Hangfire.MySqlStorage writes them (`DateTime.UtcNow`): the server's
//! `UTC_TIMESTAMP()`.
//!
//! **4-byte characters.** Install.sql creates the tables in `utf8` (utf8mb3 on MariaDB and
//! MySQL 8), which refuses characters above U+FFFF. The charset of the `Value` columns is
//! learned once ([`MysqlStore::check_tables`]); when the Set's is narrow, such characters in
//! a console line (JSON, where they only occur inside strings) are written as JSON escapes
//! (`\ud83d\ude00`), which the dashboard's JSON parser turns back into the character. A line
//! that the escapes make longer than the column (256 characters) keeps its text in the
//! console's hash instead (a reference, as long lines are). Texts in a narrow Hash column
//! (which are not JSON) get U+FFFD in place of such characters.
//!
//! **TLS** follows MySqlConnector's `SslMode`: `None`/`Disabled` plain; `Required` encrypts
//! without verifying; `VerifyCA` verifies the chain, not the host name; `VerifyFull` both;
//! `Preferred` (the default) encrypts without verifying when the server offers TLS and stays
//! plain when it does not. mysql_async has no "preferred" mode, so this store tries TLS first
//! and, when a server answers that it has no TLS at all, uses a second pool without TLS from
//! then on (a server that offers TLS but fails the handshake is an error, as with
//! MySqlConnector). `SslCa` replaces the built-in roots.

mod connstr;
mod tables;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{
    ClientIdentity, DriverError, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts, Value,
};

use self::connstr::{MyConnSpec, Origin, SslMode};
pub(crate) use self::tables::Prefix;
use self::tables::{Column, Tables, check_prefix};
use super::driver::Driver;
use super::results::{MARKS, RESULTS};
use super::{CheckError, ResultWrite, StoreError, StoreErrorKind};
use crate::secret::Secret;
use crate::store::line::EncodedLine;
/// `max_allowed_packet` assumed until the server's is known (MySQL 5.7's default).
const ASSUMED_PACKET: usize = 4 * 1024 * 1024;
/// Rows per multi-row statement at most (placeholders stay far below 65535).
const MAX_ROWS_PER_STATEMENT: usize = 1_000;
/// The Set's `Value` column: `nvarchar(256)`, in characters.
const SET_VALUE_CHARS: usize = 256;
/// Expiry is capped (a `datetime` ends in year 9999; 100 years is forever enough).
const MAX_EXPIRE_SECS: u64 = 100 * 365 * 86_400;
/// How long a timed-out connection's goodbye (`COM_QUIT`) may take.
const DISCONNECT_WITHIN: Duration = Duration::from_secs(1);
/// The format of a lock owner: the `CreatedAt` written, with microseconds.
const OWNER_FORMAT: &str = "'%Y-%m-%d %H:%i:%s.%f'";
/// The hash key of fencing counters.
const FENCE_KEY: &str = "jobagent:lock-fence";

/// One MySQL/MariaDB store: a bounded pool, the table names, and what was learned of them.
pub(crate) struct MysqlStore {
    pool: Pool,
    /// `SslMode=Preferred`: the same store without TLS, used once the server showed it has
    /// none ([`MysqlStore::no_tls`]).
    plain: Option<Pool>,
    no_tls: AtomicBool,
    /// The prefix as given, or to be found.
    prefix: Prefix,
    /// The tables: known at once for a given prefix, once learned for one to be found.
    tables: OnceLock<Tables>,
    label: String,
    #[cfg_attr(not(test), allow(dead_code))]
    identity: String,
    hosts: Vec<String>,
    connect: Option<Duration>,
    command: Option<Duration>,
    tables_seen: AtomicBool,
    /// Whether the `Value` column of Set / Hash cannot hold characters above U+FFFF (learned
    /// with the tables; assumed until then).
    narrow_set: AtomicBool,
    narrow_hash: AtomicBool,
    /// The server's `max_allowed_packet`.
    packet: AtomicUsize,
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStore")
            .field("label", &self.label)
            .field("prefix", &self.prefix)
            .field("tables", &self.tables.get())
            .finish_non_exhaustive()
    }
}

/// The TLS settings of `mode` (see the module's notes), `None` for plain.
fn ssl_opts(spec: &MyConnSpec, mode: SslMode) -> Option<SslOpts> {
    let mut opts = SslOpts::default();
    if let Some(ca) = &spec.ssl_ca {
        opts = opts
            .with_root_certs(vec![ca.clone().into()])
            .with_disable_built_in_roots(true);
    }
    if let (Some(cert), Some(key)) = (&spec.ssl_cert, &spec.ssl_key) {
        opts = opts.with_client_identity(Some(ClientIdentity::new(
            cert.clone().into(),
            key.clone().into(),
        )));
    }
    match mode {
        SslMode::Disabled => None,
        SslMode::Preferred | SslMode::Required => Some(
            opts.with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(opts.with_danger_skip_domain_validation(true)),
        SslMode::VerifyFull => Some(opts),
    }
}

/// The driver's options for `spec`, with TLS as `mode` says.
fn opts_of(spec: &MyConnSpec, mode: SslMode) -> Opts {
    let constraints = PoolConstraints::new(spec.min_pool, spec.max_pool)
        .or_else(|| PoolConstraints::new(0, spec.max_pool.max(1)))
        .unwrap_or_default();
    // No reset when a connection goes back to the pool: the agent keeps no session state
    // across checkouts (a transaction left open is rolled back by the pool anyway), and a
    // reset per checkout would cost a round trip per operation.
    let pool = PoolOpts::default()
        .with_constraints(constraints)
        .with_reset_connection(false)
        .with_abs_conn_ttl(spec.lifetime);
    OptsBuilder::default()
        .ip_or_hostname(spec.host())
        .tcp_port(spec.port)
        .user(spec.user.clone())
        .pass(spec.password.as_ref().map(Secret::expose))
        .db_name(spec.database.clone())
        .tcp_keepalive(Some(spec.keepalive))
        .tcp_nodelay(true)
        // mysql_async would switch a loopback TCP address to the server's Unix socket: keep
        // to what the string names (and its TLS).
        .prefer_socket(false)
        .pool_opts(pool)
        .ssl_opts(ssl_opts(spec, mode))
        .into()
}

/// An error as the driver reports it, with its causes. Never holds the password (the
/// driver's errors do not; the URL form, which could, is never given to it).
fn describe(e: &mysql_async::Error) -> StoreError {
    crate::store::error::of_mysql(e)
}

/// Whole seconds from now, rounded up and capped.
fn secs_of(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(MAX_EXPIRE_SECS)
}

impl MysqlStore {
    /// Opens a store (no connection yet): `connection` is a MySqlConnector connection string
    /// or a `mysql://` URL; `table_prefix` the storage's `TablesPrefix`, used as given (empty
    /// included), or `None` to find it from the tables ([`tables`]). A string `from_center`
    /// may hold settings the agent has no use for (ignored, one warning naming them) but not
    /// name files on the agent's machine (`SslCa`, `SslCert`, `SslKey`, ...).
    pub(crate) fn open(
        connection: &str,
        table_prefix: Option<&str>,
        from_center: bool,
    ) -> Result<Self, StoreError> {
        let spec = connstr::parse_from(connection, Origin::of(from_center))?;
        Self::from_spec(&spec, Prefix::of(table_prefix), from_center)
    }

    fn from_spec(spec: &MyConnSpec, prefix: Prefix, from_center: bool) -> Result<Self, StoreError> {
        if let Prefix::Given(p) = &prefix {
            check_prefix(p)?;
        }
        if spec.database.is_none() {
            return Err(StoreError::config(
                "connection string: no `Database` given (the database holding Hangfire's tables)",
            ));
        }
        if from_center && !spec.file_settings.is_empty() {
            return Err(StoreError::config(format!(
                "the store the center sent names `{}`, a file on the agent's machine: the agent does not read files a center chooses (TLS files go in the agent's own store, JOBAGENT_STORE)",
                spec.file_settings.join("`, `")
            )));
        }
        if from_center && !spec.unused.is_empty() {
            // Once per store: a store is opened once per distinct string the center sends.
            tracing::warn!(
                store = %spec.label(),
                keys = %spec.unused.join(", "),
                "the center's connection string holds settings this agent has no use for; they are ignored"
            );
        }
        if !spec.ignored_keys.is_empty() {
            tracing::debug!(store = %spec.label(), keys = ?spec.ignored_keys, "connection string settings accepted and not used");
        }
        let pool = Pool::new(opts_of(spec, spec.ssl));
        let plain =
            (spec.ssl == SslMode::Preferred).then(|| Pool::new(opts_of(spec, SslMode::Disabled)));
        Ok(Self {
            pool,
            plain,
            no_tls: AtomicBool::new(false),
            tables: match &prefix {
                Prefix::Given(p) => OnceLock::from(Tables::new(p)),
                Prefix::Find => OnceLock::new(),
            },
            identity: format!("{}&prefix={prefix:?}", spec.identity()),
            prefix,
            label: spec.label(),
            hosts: spec.hosts.clone(),
            connect: spec.connect_timeout,
            command: spec.command_timeout,
            tables_seen: AtomicBool::new(false),
            narrow_set: AtomicBool::new(true),
            narrow_hash: AtomicBool::new(true),
            packet: AtomicUsize::new(ASSUMED_PACKET),
        })
    }

    /// `host:port/database`, for logs; never a secret.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// A key telling two stores apart (host, port, database, user, a keyed hash of the
    /// password, TLS settings, table prefix); never logged.
    // Stores are told apart by what the center sent (store::Stores); kept for the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// The host names, for an allow-list check.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.hosts.clone()
    }

    /// A pooled connection within `Connection Timeout`.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let get = async {
            if let Some(plain) = &self.plain {
                if self.no_tls.load(Ordering::Acquire) {
                    return plain.get_conn().await;
                }
                match self.pool.get_conn().await {
                    Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)) => {
                        if !self.no_tls.swap(true, Ordering::AcqRel) {
                            tracing::info!(store = %self.label, "the store offers no TLS; SslMode=Preferred connects without it");
                        }
                        plain.get_conn().await
                    }
                    other => other,
                }
            } else {
                self.pool.get_conn().await
            }
        };
        let conn = match self.connect {
            Some(limit) => tokio::time::timeout(limit, get).await.map_err(|_| {
                StoreError::new(
                    StoreErrorKind::TimedOut,
                    format!(
                        "no connection to the store {} within Connection Timeout ({} ms)",
                        self.label,
                        limit.as_millis()
                    ),
                )
            })?,
            None => get.await,
        }
        .map_err(|e| describe(&e))?;
        Ok(Conn {
            inner: Some(conn),
            command: self.command,
            busy: false,
            in_transaction: false,
        })
    }

    /// Runs one statement on a connection of its own: the rows it affected.
    async fn exec(&self, sql: &str, params: Vec<Value>) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        c.bound(|c| c.exec_drop(sql, params)).await?;
        Ok(c.affected_rows())
    }

    /// `SELECT 1`.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        c.bound(|c| c.query_drop("SELECT 1")).await
    }

    /// Runs `sql` (statements separated by `;`, no rows) on one connection within `Command
    /// Timeout`: `jobagent-dev setup` creating Hangfire's tables (feature `dev`).
    #[cfg(feature = "dev")]
    pub(crate) async fn run_batch(&self, sql: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        c.bound(|c| c.query_drop(sql)).await
    }

    /// Refuses a store that lacks Hangfire's `<prefix>Hash` or `<prefix>Set` table (a run
    /// written there could never show at the center), or, given no prefix, holds them under
    /// none or several prefixes ([`tables::choose`]); learns the tables, the charset of their
    /// `Value` columns and the server's `max_allowed_packet`. Success is cached. What a store
    /// that does not answer within `within` means is decided above (see
    /// [`Store::check_tables`](crate::store::Store::check_tables)).
    pub(crate) async fn check_tables(&self, within: Duration) -> Result<(), CheckError> {
        let check = async {
            self.learn().await.map_err(|e| match e {
                Learned::Missing(e) => CheckError::Refused(e.into()),
                Learned::Unknown(e) => CheckError::Unknown(e),
            })
        };
        CheckError::once(&self.tables_seen, within, check).await
    }

    /// Learns the tables (see [`MysqlStore::check_tables`]) unless known, without the short
    /// bound: for writes, which need the charsets.
    async fn ensure_learned(&self) -> Result<(), StoreError> {
        if self.tables_seen.load(Ordering::Acquire) {
            return Ok(());
        }
        self.learn().await.map_err(|e| match e {
            Learned::Missing(e) | Learned::Unknown(e) => e,
        })
    }

    async fn learn(&self) -> Result<(), Learned> {
        let mut c = self.conn().await.map_err(Learned::Unknown)?;
        // Every table that may be a `<prefix>Hash` or `<prefix>Set`, to choose among
        // (case-insensitively: `lower_case_table_names` keeps `hangfirehash`).
        let sql = "SELECT TABLE_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
                   WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME = 'Value' \
                   AND (LOWER(TABLE_NAME) LIKE '%hash' OR LOWER(TABLE_NAME) LIKE '%set')";
        let rows: Vec<(String, Option<String>)> =
            c.bound(|c| c.query(sql)).await.map_err(Learned::Unknown)?;
        let packet: Option<u64> = c
            .bound(|c| c.query_first("SELECT @@max_allowed_packet"))
            .await
            .map_err(Learned::Unknown)?;
        let columns: Vec<Column> = rows
            .into_iter()
            .map(|(table, charset)| Column { table, charset })
            .collect();
        let chosen =
            tables::choose(&self.prefix, &columns, &self.label).map_err(Learned::Missing)?;
        let narrow = |c: &Option<String>| c.as_deref().is_none_or(|c| !c.starts_with("utf8mb4"));
        self.narrow_hash
            .store(narrow(&chosen.hash_charset), Ordering::Release);
        self.narrow_set
            .store(narrow(&chosen.set_charset), Ordering::Release);
        if let Some(p) = packet.and_then(|p| usize::try_from(p).ok()) {
            self.packet.store(p.max(1024), Ordering::Release);
        }
        if self.prefix == Prefix::Find && self.tables.set(chosen.tables).is_ok() {
            tracing::info!(store = %self.label, prefix = %self.tables.get().map_or("", |t| t.prefix.as_str()), "no table prefix was given; the store's Hangfire tables have this one");
        }
        self.tables_seen.store(true, Ordering::Release);
        Ok(())
    }

    /// The tables, learned first when the prefix is to be found.
    async fn tables(&self) -> Result<&Tables, StoreError> {
        if let Some(t) = self.tables.get() {
            return Ok(t);
        }
        self.ensure_learned().await?;
        self.tables.get().ok_or_else(|| {
            StoreError::unavailable(format!("the store {} did not tell its tables", self.label))
        })
    }

    /// Whether `column` (`narrow_set`, `narrow_hash`) is known to be narrow: texts for it are
    /// written with U+FFFD in place of characters above U+FFFF ([`hash_text`]).
    fn narrow(&self, column: &AtomicBool) -> bool {
        self.tables_seen.load(Ordering::Acquire) && column.load(Ordering::Acquire)
    }

    /// The most bytes of values one statement carries: well below `max_allowed_packet`.
    fn statement_budget(&self) -> usize {
        (self.packet.load(Ordering::Acquire) / 4 * 3).max(64 * 1024)
    }

    /// One console batch, in order, idempotent on retry: references into hash `hash_key`,
    /// then the set rows (one multi-row upsert per statement, so rows of one statement get
    /// increasing `Id`s in row order; a retried row keeps its `Id`), then the last progress
    /// value into field `progress`. Big batches are split into several statements, in order.
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
        self.ensure_learned().await?;
        let t = self.tables().await?;
        let narrow_set = self.narrow_set.load(Ordering::Acquire);
        let narrow_hash = self.narrow_hash.load(Ordering::Acquire);
        let mut refs: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
        let mut rows: Vec<(Cow<'_, str>, f64)> = Vec::with_capacity(lines.len());
        for line in lines {
            if let Some((field, text)) = &line.reference {
                refs.push((Cow::Borrowed(field), hash_text(text, narrow_hash)));
            }
            if narrow_set {
                let (value, moved) = narrow_line(&line.value, set_key);
                if let Some((field, text)) = moved {
                    refs.push((
                        Cow::Owned(field),
                        hash_text(&text, narrow_hash).into_owned().into(),
                    ));
                }
                rows.push((value, line.score));
            } else {
                rows.push((Cow::Borrowed(&line.value), line.score));
            }
        }
        let budget = self.statement_budget();
        let mut c = self.conn().await?;
        if !refs.is_empty() {
            let refs: Vec<(&str, Cow<'_, str>)> = refs
                .iter()
                .map(|(f, t)| (f.as_ref(), fit(t, budget)))
                .collect();
            self.upsert_hash(&mut c, hash_key, &refs, Some(expire), budget)
                .await?;
        }
        let expire = secs_of(expire);
        let sizes: Vec<usize> = rows.iter().map(|(v, _)| v.len() + 32).collect();
        for range in chunks(&sizes, set_key.len(), budget) {
            let part = &rows[range];
            let mut sql = format!(
                "INSERT INTO {} (`Key`, `Value`, `Score`, `ExpireAt`) VALUES ",
                t.set
            );
            let mut params = Vec::with_capacity(part.len() * 4);
            for (i, (value, score)) in part.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, UTC_TIMESTAMP() + INTERVAL ? SECOND)");
                params.push(Value::from(set_key));
                params.push(Value::from(value.as_ref()));
                params.push(Value::from(*score));
                params.push(Value::from(expire));
            }
            sql.push_str(
                " ON DUPLICATE KEY UPDATE `Score` = VALUES(`Score`), `ExpireAt` = VALUES(`ExpireAt`)",
            );
            c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
        }
        if let Some(progress) = lines.iter().rev().find_map(|l| l.progress_field.as_deref()) {
            self.upsert_hash(
                &mut c,
                hash_key,
                &[("progress", Cow::Borrowed(progress))],
                Some(Duration::from_secs(expire)),
                budget,
            )
            .await?;
        }
        Ok(())
    }

    /// Upserts fields of hash `key` with multi-row statements within `budget` bytes each.
    async fn upsert_hash(
        &self,
        c: &mut Conn,
        key: &str,
        pairs: &[(&str, Cow<'_, str>)],
        life: Option<Duration>,
        budget: usize,
    ) -> Result<(), StoreError> {
        let t = self.tables().await?;
        let expire = match life {
            Some(_) => "UTC_TIMESTAMP(6) + INTERVAL ? SECOND",
            None => "NULL",
        };
        let sizes: Vec<usize> = pairs.iter().map(|(f, v)| f.len() + v.len() + 32).collect();
        for range in chunks(&sizes, key.len(), budget) {
            let part = &pairs[range];
            let mut sql = format!(
                "INSERT INTO {} (`Key`, `Field`, `Value`, `ExpireAt`) VALUES ",
                t.hash
            );
            let mut params = Vec::with_capacity(part.len() * 4);
            for (i, (field, value)) in part.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, ");
                sql.push_str(expire);
                sql.push(')');
                params.push(Value::from(key));
                params.push(Value::from(*field));
                params.push(Value::from(value.as_ref()));
                if let Some(life) = life {
                    params.push(Value::from(secs_of(life)));
                }
            }
            sql.push_str(
                " ON DUPLICATE KEY UPDATE `Value` = VALUES(`Value`), `ExpireAt` = VALUES(`ExpireAt`)",
            );
            c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
        }
        Ok(())
    }

    /// Upserts fields of one hash key (`ExpireAt` = now + `life`; `None` = never expires).
    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let narrow = self.narrow(&self.narrow_hash);
        let budget = self.statement_budget();
        let pairs: Vec<(&str, Cow<'_, str>)> = pairs
            .iter()
            .map(|(f, v)| (*f, hash_text(v, narrow)))
            .collect();
        let mut c = self.conn().await?;
        self.upsert_hash(&mut c, key, &pairs, life, budget).await
    }

    /// Upserts one set member (unique on key and value: a retry updates score and expiry).
    #[cfg(any(feature = "relay-server", test))]
    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
        expire: Duration,
    ) -> Result<(), StoreError> {
        let t = self.tables().await?;
        let value = hash_text(value, self.narrow(&self.narrow_set));
        let sql = format!(
            "INSERT INTO {} (`Key`, `Value`, `Score`, `ExpireAt`) VALUES (?, ?, ?, UTC_TIMESTAMP() + INTERVAL ? SECOND) \
             ON DUPLICATE KEY UPDATE `Score` = VALUES(`Score`), `ExpireAt` = VALUES(`ExpireAt`)",
            t.set
        );
        let params = vec![
            Value::from(key),
            Value::from(value.as_ref()),
            Value::from(score),
            Value::from(secs_of(expire)),
        ];
        self.exec(&sql, params).await.map(drop)
    }

    /// A dispatch's result with its first-report mark, in one transaction (all of it lands
    /// or none): the mark ([`Self::mark`]) first; only when it is this writer's (and a result
    /// is given), the result's hash field and its set member. A transaction cut off (a
    /// timeout, the process killed) is rolled back by the server: the connection is never
    /// pooled again mid-transaction.
    pub(crate) async fn write_result(
        &self,
        w: &ResultWrite<'_>,
        expire: Duration,
    ) -> Result<bool, StoreError> {
        let t = self.tables().await?;
        let member = hash_text(w.id, self.narrow(&self.narrow_set));
        let budget = self.statement_budget();
        let mut c = self.conn().await?;
        c.bound(|c| c.query_drop("START TRANSACTION")).await?;
        c.in_transaction = true;
        let ours = self.mark(&mut c, w.mark, w.token, expire).await?;
        if let (true, Some((field, value))) = (ours, w.result) {
            let pairs = [(field, hash_text(value, self.narrow(&self.narrow_hash)))];
            self.upsert_hash(&mut c, &w.key(), &pairs, Some(expire), budget)
                .await?;
            let sql = format!(
                "INSERT INTO {} (`Key`, `Value`, `Score`, `ExpireAt`) VALUES (?, ?, 1.0, UTC_TIMESTAMP() + INTERVAL ? SECOND) \
                 ON DUPLICATE KEY UPDATE `Score` = VALUES(`Score`), `ExpireAt` = VALUES(`ExpireAt`)",
                t.set
            );
            let params = vec![
                Value::from(RESULTS),
                Value::from(member.as_ref()),
                Value::from(secs_of(expire)),
            ];
            c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
        }
        c.bound(|c| c.query_drop("COMMIT")).await?;
        c.in_transaction = false;
        Ok(ours)
    }

    /// Whether this is the first report of dispatch `id`: hash [`MARKS`], field `id`, gets
    /// `token` unless it holds a value already. True when this call wrote it or it holds
    /// `token` (a retry); false when it holds another writer's token. The insert never
    /// overwrites (`ON DUPLICATE KEY` only refreshes the expiry of our own token), so the
    /// value read back afterwards is the first writer's, whoever it was (in a transaction,
    /// a second writer's insert waits for the first's to end).
    async fn mark(
        &self,
        c: &mut Conn,
        id: &str,
        token: &str,
        expire: Duration,
    ) -> Result<bool, StoreError> {
        let t = self.tables().await?;
        let insert = format!(
            "INSERT INTO {} (`Key`, `Field`, `Value`, `ExpireAt`) \
             VALUES (?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? SECOND) \
             ON DUPLICATE KEY UPDATE `ExpireAt` = \
             IF(BINARY `Value` = BINARY VALUES(`Value`), VALUES(`ExpireAt`), `ExpireAt`)",
            t.hash
        );
        let select = format!(
            "SELECT `Value` FROM {} WHERE `Key` = ? AND `Field` = ?",
            t.hash
        );
        let params = vec![
            Value::from(MARKS),
            Value::from(id),
            Value::from(token),
            Value::from(secs_of(expire)),
        ];
        c.bound(|c| c.exec_drop(insert.as_str(), params)).await?;
        let params = vec![Value::from(MARKS), Value::from(id)];
        let held: Option<Option<String>> =
            c.bound(|c| c.exec_first(select.as_str(), params)).await?;
        match held {
            Some(Some(held)) => Ok(held == token),
            // Gone between the two statements (a cleanup, or the center consumed it): not
            // ours to claim now.
            _ => Err(StoreError::unavailable(format!(
                "the first-report mark of {id} vanished right after it was written; retry"
            ))),
        }
    }

    /// The server's UTC time now (or just after `after`, when given), as a lock owner.
    async fn owner_time(c: &mut Conn, after: Option<&str>) -> Result<String, StoreError> {
        let now: Option<String> = match after {
            None => {
                let sql = format!("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), {OWNER_FORMAT})");
                c.bound(|c| c.query_first(sql)).await?
            }
            Some(after) => {
                let sql = format!(
                    "SELECT DATE_FORMAT(GREATEST(UTC_TIMESTAMP(6), CAST(? AS DATETIME(6)) + INTERVAL 1 MICROSECOND), {OWNER_FORMAT})"
                );
                c.bound(|c| c.exec_first(sql, vec![Value::from(after)]))
                    .await?
            }
        };
        now.ok_or_else(|| StoreError::unavailable("the store did not tell its time"))
    }

    /// Takes the distributed lock `resource` as Hangfire.MySqlStorage does: a row (Resource,
    /// CreatedAt) inserted only when no row of that resource is younger than `stale_after`.
    /// One attempt. `Some(owner)` when taken (the `CreatedAt` written, with microseconds),
    /// `None` when someone else holds it.
    ///
    /// Unlike upstream, the rows of `resource` older than `stale_after` are deleted first
    /// (they count as released anyway): so the holder that went stale finds its row gone at
    /// its next [`lock_keep`](Self::lock_keep) and knows it lost the lock, instead of
    /// refreshing a row next to ours.
    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        stale_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        let t = self.tables().await?;
        let stale = u64::try_from(stale_after.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_EXPIRE_SECS * 1_000_000);
        let mut c = self.conn().await?;
        let now = Self::owner_time(&mut c, None).await?;
        let delete = format!(
            "DELETE FROM {} WHERE `Resource` = ? AND `CreatedAt` <= CAST(? AS DATETIME(6)) - INTERVAL ? MICROSECOND",
            t.lock
        );
        let params = vec![
            Value::from(resource),
            Value::from(now.as_str()),
            Value::from(stale),
        ];
        c.bound(|c| c.exec_drop(delete.as_str(), params)).await?;
        let insert = format!(
            "INSERT INTO {lock} (`Resource`, `CreatedAt`) SELECT ?, CAST(? AS DATETIME(6)) FROM DUAL \
             WHERE NOT EXISTS (SELECT 1 FROM {lock} WHERE `Resource` = ? \
             AND `CreatedAt` > CAST(? AS DATETIME(6)) - INTERVAL ? MICROSECOND)",
            lock = t.lock
        );
        let params = vec![
            Value::from(resource),
            Value::from(now.as_str()),
            Value::from(resource),
            Value::from(now.as_str()),
            Value::from(stale),
        ];
        c.bound(|c| c.exec_drop(insert.as_str(), params)).await?;
        Ok((c.affected_rows() == 1).then_some(now))
    }

    /// Refreshes a held lock (its `CreatedAt` to now, so no one deems it stale): `Some(new
    /// owner)`, or `None` when our row is gone or changed (the lock was lost).
    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let t = self.tables().await?;
        let mut c = self.conn().await?;
        // Strictly later than `owner`, so the update always changes the row (and counts).
        let now = Self::owner_time(&mut c, Some(owner)).await?;
        let sql = format!(
            "UPDATE {} SET `CreatedAt` = CAST(? AS DATETIME(6)) WHERE `Resource` = ? AND `CreatedAt` = CAST(? AS DATETIME(6))",
            t.lock
        );
        let params = vec![
            Value::from(now.as_str()),
            Value::from(resource),
            Value::from(owner),
        ];
        c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
        Ok((c.affected_rows() >= 1).then_some(now))
    }

    /// Releases a held lock: deletes our own row only (upstream deletes by resource).
    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), StoreError> {
        let t = self.tables().await?;
        let sql = format!(
            "DELETE FROM {} WHERE `Resource` = ? AND `CreatedAt` = CAST(? AS DATETIME(6))",
            t.lock
        );
        let params = vec![Value::from(resource), Value::from(owner)];
        self.exec(&sql, params).await.map(drop)
    }

    /// A fencing token for `resource`: the counter in hash `jobagent:lock-fence` (field: the
    /// 32-hex UUID v5 of the resource in the OID namespace, never expiring), incremented
    /// atomically by one statement. A new counter is inserted as 1 (one affected row); an
    /// existing one is updated through `LAST_INSERT_ID(expr)` (two affected rows), which
    /// hands the new value to this session alone.
    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, StoreError> {
        let t = self.tables().await?;
        let field = super::fence_field(resource);
        let sql = format!(
            "INSERT INTO {} (`Key`, `Field`, `Value`, `ExpireAt`) VALUES (?, ?, '1', NULL) \
             ON DUPLICATE KEY UPDATE `Value` = LAST_INSERT_ID(CAST(`Value` AS UNSIGNED) + 1), `ExpireAt` = NULL",
            t.hash
        );
        let mut c = self.conn().await?;
        c.bound(|c| {
            c.exec_drop(
                sql.as_str(),
                vec![Value::from(FENCE_KEY), Value::from(field)],
            )
        })
        .await?;
        if c.affected_rows() == 1 {
            return Ok(1);
        }
        let value: Option<u64> = c
            .bound(|c| c.query_first("SELECT LAST_INSERT_ID()"))
            .await?;
        value.ok_or_else(|| StoreError::unavailable("the store did not return the fencing token"))
    }

    /// The dashboard's read of a set: values in `Id` order, skipping `from`, at most `count`.
    // The dashboard's reads: for `jobagent-dev` (feature `dev`) and the tests.
    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let t = self.tables().await?;
        let sql = format!(
            "SELECT `Value` FROM {} WHERE `Key` = ? ORDER BY `Id` LIMIT ? OFFSET ?",
            t.set
        );
        let params = vec![
            Value::from(key),
            Value::from(u64::try_from(count).unwrap_or(u64::MAX)),
            Value::from(u64::try_from(from).unwrap_or(u64::MAX)),
        ];
        let mut c = self.conn().await?;
        c.bound(|c| c.exec(sql.as_str(), params)).await
    }

    /// The state name of Hangfire job `id` (`<prefix>Job.StateName`, Hangfire.MySqlStorage's
    /// `Install.sql`), `None` when there is no such job. For the relay's check of results.
    #[cfg(feature = "relay-server")]
    pub(crate) async fn job_state(&self, id: i64) -> Result<Option<String>, StoreError> {
        let t = self.tables().await?;
        let sql = format!(
            "SELECT `StateName` FROM {} WHERE `Id` = ?",
            tables::quote(&format!("{}Job", t.prefix))
        );
        let mut c = self.conn().await?;
        let state: Option<Option<String>> = c
            .bound(|c| c.exec_first(sql.as_str(), vec![Value::from(id)]))
            .await?;
        Ok(state.map(Option::unwrap_or_default))
    }
}

/// The primitives cluster mode builds on, on `<prefix>Hash`. Keys and fields are fitted
/// ([`fit_name`]) to the columns first.
impl Driver for MysqlStore {
    /// `NOW(3)` read back through `UNIX_TIMESTAMP` in the same session time zone, so the zone
    /// cancels out.
    async fn now_ms(&self) -> Result<i64, StoreError> {
        let mut c = self.conn().await?;
        let now: Option<i64> = c
            .bound(|c| c.query_first("SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"))
            .await?;
        now.ok_or_else(|| StoreError::unavailable("the store did not tell its time"))
    }

    /// `None` when absent or NULL.
    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let (key, field) = fit2(key, field);
        let t = self.tables().await?;
        let sql = format!(
            "SELECT `Value` FROM {} WHERE `Key` = ? AND `Field` = ?",
            t.hash
        );
        let mut c = self.conn().await?;
        let value: Option<Option<String>> = c
            .bound(|c| {
                c.exec_first(
                    sql.as_str(),
                    vec![Value::from(key.as_ref()), Value::from(field.as_ref())],
                )
            })
            .await?;
        Ok(value.flatten())
    }

    /// In write order (`ORDER BY Id`); a NULL value reads as empty.
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = fit_name(key, KEY_CHARS);
        let t = self.tables().await?;
        let sql = format!(
            "SELECT `Field`, `Value` FROM {} WHERE `Key` = ? ORDER BY `Id`",
            t.hash
        );
        let mut c = self.conn().await?;
        let rows: Vec<(String, Option<String>)> = c
            .bound(|c| c.exec(sql.as_str(), vec![Value::from(key.as_ref())]))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(f, v)| (f, v.unwrap_or_default()))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (key, field) = fit2(key, field);
        self.set_hash(&key, &[(&field, value)], life).await
    }

    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        let (key, field) = fit2(key, field);
        let t = self.tables().await?;
        let sql = format!("DELETE FROM {} WHERE `Key` = ? AND `Field` = ?", t.hash);
        let params = vec![Value::from(key.as_ref()), Value::from(field.as_ref())];
        Ok(self.exec(&sql, params).await? >= 1)
    }

    /// Each row is deleted by its `Id` and returned only when this call deleted it, so
    /// concurrent takers never take one row twice.
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = fit_name(key, KEY_CHARS);
        let t = self.tables().await?;
        let select = format!(
            "SELECT `Id`, `Field`, `Value` FROM {} WHERE `Key` = ? ORDER BY `Id`",
            t.hash
        );
        let delete = format!("DELETE FROM {} WHERE `Id` = ?", t.hash);
        let mut c = self.conn().await?;
        let rows: Vec<(i64, String, Option<String>)> = c
            .bound(|c| c.exec(select.as_str(), vec![Value::from(key.as_ref())]))
            .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for (id, field, value) in rows {
            c.bound(|c| c.exec_drop(delete.as_str(), vec![Value::from(id)]))
                .await?;
            if c.affected_rows() == 1 {
                taken.push((field, value.unwrap_or_default()));
            }
        }
        Ok(taken)
    }

    /// Unique on `Key, Field` (Hangfire.MySqlStorage's Install.sql,
    /// `IX_HangfireHash_Key_Field`): `INSERT IGNORE` when the field must be absent, else an
    /// `UPDATE`/`DELETE` whose `WHERE` holds the expected value, compared byte for byte (the
    /// table's collation may ignore case). InnoDB evaluates the `WHERE` once it has the row
    /// lock, so a statement that waited for it compares with what is there then.
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let (key, field) = fit2(key, field);
        let (key, field) = (key.as_ref(), field.as_ref());
        let t = self.tables().await?;
        let narrow = self.narrow(&self.narrow_hash);
        let stored = |v: &str| hash_text(v, narrow).into_owned();
        let expire = match life {
            Some(_) => "UTC_TIMESTAMP(6) + INTERVAL ? SECOND",
            None => "NULL",
        };
        let secs = life.map(|l| Value::from(secs_of(l)));
        let mut c = self.conn().await?;
        match (expected, new) {
            (None, None) => return Ok(self.get(key, field).await?.is_none()),
            (None, Some(new)) => {
                let sql = format!(
                    "INSERT IGNORE INTO {} (`Key`, `Field`, `Value`, `ExpireAt`) VALUES (?, ?, ?, {expire})",
                    t.hash
                );
                let mut params = vec![
                    Value::from(key),
                    Value::from(field),
                    Value::from(stored(new)),
                ];
                params.extend(secs);
                c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
            }
            (Some(old), Some(new)) => {
                let sql = format!(
                    "UPDATE {} SET `Value` = ?, `ExpireAt` = {expire} \
                     WHERE `Key` = ? AND `Field` = ? AND CAST(`Value` AS BINARY) = CAST(? AS BINARY)",
                    t.hash
                );
                let (old, new) = (stored(old), stored(new));
                let same = old == new;
                let mut params = vec![Value::from(new)];
                params.extend(secs);
                params.extend([
                    Value::from(key),
                    Value::from(field),
                    Value::from(old.as_str()),
                ]);
                c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
                // An unchanged row counts as not affected: it matched if it still reads so.
                if same && c.affected_rows() == 0 {
                    drop(c);
                    return Ok(self.get(key, field).await?.as_deref() == Some(old.as_str()));
                }
            }
            (Some(old), None) => {
                let sql = format!(
                    "DELETE FROM {} WHERE `Key` = ? AND `Field` = ? AND CAST(`Value` AS BINARY) = CAST(? AS BINARY)",
                    t.hash
                );
                let params = vec![
                    Value::from(key),
                    Value::from(field),
                    Value::from(stored(old)),
                ];
                c.bound(|c| c.exec_drop(sql.as_str(), params)).await?;
            }
        }
        Ok(c.affected_rows() == 1)
    }

    /// Sets the `ExpireAt` of every field of a hash to now + `life`.
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        let key = fit_name(key, KEY_CHARS);
        let t = self.tables().await?;
        let sql = format!(
            "UPDATE {} SET `ExpireAt` = UTC_TIMESTAMP(6) + INTERVAL ? SECOND WHERE `Key` = ?",
            t.hash
        );
        let params = vec![Value::from(secs_of(life)), Value::from(key.as_ref())];
        self.exec(&sql, params).await.map(drop)
    }

    /// The lock's counter of `jobagent:claim:<class>` (see [`MysqlStore::fence`]).
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        MysqlStore::fence(self, &format!("jobagent:claim:{class}")).await
    }
}

/// MySQL's `Key nvarchar(100)` and `Field nvarchar(40)` (Hangfire.MySqlStorage's Install.sql).
const KEY_CHARS: usize = 100;
const FIELD_CHARS: usize = 40;

/// `text`, or `~` and its UUID v5 (33 characters) when it is longer than `max` characters
/// (stable, and a fitted text fits as it is): a longer name is stored so, so the protocol
/// never reads a name back from a key or field (its records carry their names).
fn fit_name(text: &str, max: usize) -> Cow<'_, str> {
    if text.chars().count() <= max {
        return text.into();
    }
    format!("~{}", super::fence_field(text)).into()
}

/// A key and a field, fitted.
fn fit2<'a>(key: &'a str, field: &'a str) -> (Cow<'a, str>, Cow<'a, str>) {
    (fit_name(key, KEY_CHARS), fit_name(field, FIELD_CHARS))
}

/// Why learning the tables failed: they are absent, or the store did not tell.
enum Learned {
    Missing(StoreError),
    Unknown(StoreError),
}

/// A pooled connection whose statements carry `Command Timeout` ([`Conn::bound`]). One
/// whose statement timed out, failed below SQL, or was abandoned mid-statement (its caller's
/// future dropped) is disconnected when dropped, never handed out again.
struct Conn {
    inner: Option<mysql_async::Conn>,
    command: Option<Duration>,
    /// Set while a statement runs; left set when it did not end cleanly.
    busy: bool,
    /// Set between `START TRANSACTION` and its `COMMIT`: a connection dropped then is
    /// disconnected (the server rolls the transaction back), never pooled mid-transaction.
    in_transaction: bool,
}

impl Conn {
    /// Runs one statement within `Command Timeout`.
    async fn bound<'a, T, F>(
        &'a mut self,
        statement: impl FnOnce(&'a mut mysql_async::Conn) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, mysql_async::Error>> + 'a,
    {
        let Self {
            inner,
            command,
            busy,
            ..
        } = self;
        let Some(conn) = inner.as_mut() else {
            return Err(StoreError::unavailable(
                "the store connection was already given up",
            ));
        };
        *busy = true;
        let running = statement(conn);
        let outcome = match *command {
            Some(limit) => match tokio::time::timeout(limit, running).await {
                Ok(outcome) => outcome,
                // `busy` stays set: the connection is disconnected, not pooled again.
                Err(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::TimedOut,
                        format!(
                            "the store did not answer within Command Timeout ({} ms); the connection is dropped",
                            limit.as_millis()
                        ),
                    ));
                }
            },
            None => running.await,
        };
        match outcome {
            Ok(value) => {
                *busy = false;
                Ok(value)
            }
            // The server refused the statement: the session is fine.
            Err(e @ mysql_async::Error::Server(_)) => {
                *busy = false;
                Err(describe(&e))
            }
            // I/O, protocol, driver: the session's state is unknown; `busy` stays set.
            Err(e) => Err(describe(&e)),
        }
    }

    fn affected_rows(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, mysql_async::Conn::affected_rows)
    }

    /// Whether this connection will be disconnected rather than pooled again.
    #[cfg(test)]
    fn is_poisoned(&self) -> bool {
        self.busy
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if (self.busy || self.in_transaction)
            && let Some(conn) = self.inner.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // `disconnect` marks the connection disconnected before it writes anything, so
            // the pool discards it even if the goodbye never gets through.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(DISCONNECT_WITHIN, conn.disconnect()).await;
            });
        }
    }
}

/// Splits items of `sizes` bytes into consecutive runs of at most `budget` bytes (and
/// [`MAX_ROWS_PER_STATEMENT`] items); every run holds at least one item. `each` is added per
/// item (the key repeated per row).
fn chunks(sizes: &[usize], each: usize, budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        let size = size + each;
        if i > start && (bytes + size > budget || i - start == MAX_ROWS_PER_STATEMENT) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// `text` cut (at a character boundary, ending with `…`) to at most `budget` bytes, so one
/// value never exceeds what a statement may carry.
fn fit(text: &str, budget: usize) -> Cow<'_, str> {
    if text.len() <= budget {
        return Cow::Borrowed(text);
    }
    let mut end = budget.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(target: "jobagent::console", bytes = text.len(), budget, "a console text longer than the store's max_allowed_packet allows was cut");
    let mut cut = String::with_capacity(end + 3);
    cut.push_str(&text[..end]);
    cut.push('…');
    Cow::Owned(cut)
}

/// A text for a hash `Value` column: U+FFFD in place of characters above U+FFFF when the
/// column is narrow (utf8mb3).
fn hash_text(text: &str, narrow: bool) -> Cow<'_, str> {
    if narrow {
        replace_wide(text)
    } else {
        Cow::Borrowed(text)
    }
}

fn is_wide(c: char) -> bool {
    u32::from(c) > 0xFFFF
}

/// `s` with U+FFFD in place of each character above U+FFFF.
fn replace_wide(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_wide) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_wide(c) { '\u{FFFD}' } else { c })
            .collect(),
    )
}

/// JSON `s` with each character above U+FFFF as its escaped UTF-16 surrogate pair
/// (`\ud83d\ude00`, lowercase hex). Only valid where such characters are inside JSON strings,
/// which in a JSON document they always are.
fn escape_wide(s: &str) -> Cow<'_, str> {
    use std::fmt::Write as _;
    if !s.chars().any(is_wide) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_wide(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A console line (its JSON, keys `t, r, s, c, p, n`) as parsed to rebuild it.
#[derive(serde::Deserialize)]
struct LineJson {
    s: String,
    #[serde(default)]
    r: bool,
    c: Option<String>,
    p: Option<serde_json::Number>,
    n: Option<String>,
}

/// A console line for a narrow (utf8mb3) Set `Value` column: its 4-byte characters escaped;
/// when that makes it longer than the column, its text moved to the console's hash under a
/// field derived from the set key and the line (so a retried batch writes the same row), and
/// returned with it. A line that cannot become a reference (a progress line, one already a
/// reference) gets U+FFFD in place of those characters instead.
fn narrow_line<'a>(value: &'a str, set_key: &str) -> (Cow<'a, str>, Option<(String, String)>) {
    let escaped = escape_wide(value);
    if escaped.chars().count() <= SET_VALUE_CHARS {
        return (escaped, None);
    }
    match as_reference(value, set_key) {
        Some((line, field, text)) => {
            let escaped = escape_wide(&line);
            let line = if escaped.chars().count() <= SET_VALUE_CHARS {
                escaped.into_owned()
            } else {
                replace_wide(&line).into_owned()
            };
            (Cow::Owned(line), Some((field, text)))
        }
        None => (replace_wide(value), None),
    }
}

/// The line `value` rebuilt as a reference: (line, field, text). `None` for a line that is
/// not one of ours, already a reference, or a progress line.
fn as_reference(value: &str, set_key: &str) -> Option<(String, String, String)> {
    let parsed: LineJson = serde_json::from_str(value).ok()?;
    if parsed.r || parsed.p.is_some() {
        return None;
    }
    // `t` as written (a number: digits, sign, point), to keep it exactly.
    let t = value.strip_prefix("{\"t\":")?.split(',').next()?;
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == '.')
    {
        return None;
    }
    let field = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{set_key}\n{value}").as_bytes(),
    )
    .simple()
    .to_string();
    let mut line = format!("{{\"t\":{t},\"r\":true,\"s\":\"{field}\"");
    if let Some(c) = &parsed.c {
        line.push_str(",\"c\":");
        line.push_str(&serde_json::to_string(c).ok()?);
    }
    if let Some(n) = &parsed.n {
        line.push_str(",\"n\":");
        line.push_str(&serde_json::to_string(n).ok()?);
    }
    line.push('}');
    Some((line, field, parsed.s))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fit_tests {
    use super::{FIELD_CHARS, fit_name as fit};

    #[test]
    fn long_names_fit_mysql_columns_and_stay_distinct() {
        assert_eq!(fit("replica-a", FIELD_CHARS), "replica-a");
        let a = fit(&"x".repeat(41), FIELD_CHARS).into_owned();
        let y = "y".repeat(41);
        let b = fit(&y, FIELD_CHARS);
        assert_eq!(a.chars().count(), 33);
        assert_ne!(a, b);
        assert_eq!(a, fit(&"x".repeat(41), FIELD_CHARS), "stable");
        assert_eq!(fit(&a, FIELD_CHARS), a, "a fitted name fits as it is");
    }
}
