//! The center's store (Hangfire.PostgreSql): where console lines, results and heartbeats go.
//!
//! A dispatch's store is the agent's own (`JOBAGENT_STORE`) when configured, else the one the
//! center sends in `x-job-storage`. One bounded pool is kept per distinct store.
//!
//! **Every store operation has a deadline.** The pool bounds the wait for a connection
//! (`Timeout`, 15 s by default, as Npgsql) and the opening of one; connections use TCP
//! keepalive (10 s idle) and `TCP_USER_TIMEOUT`; the server ends statements that outlive
//! `Command Timeout` (30 s by default); a pooled connection is checked (an empty query,
//! 3 s) before reuse, so one still carrying an abandoned request is dropped. On top of that,
//! code that talks to the store takes its connection with [`Store::conn`] and runs each
//! statement through [`Conn::bound`]: a client-side `Command Timeout` that also holds when
//! the link is black-holed (nothing answers, nothing is reset), and drops the connection
//! whose statement timed out or whose caller went away mid-statement. [`Store::bounded`]
//! puts one deadline over a whole operation.

pub(crate) mod connstr;
mod console_writer;
mod heartbeat;
pub(crate) mod line;
pub(crate) mod listen;
pub(crate) mod pool;
mod procstat;
mod results;

use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;

pub(crate) use pool::Limits;

pub(crate) use console_writer::StoreConsole;
pub(crate) use heartbeat::Heartbeats;
pub(crate) use results::StoreResults;

use crate::error::ConfigError;
use crate::options::LocalStore;
use crate::request::StorageHeader;
pub(crate) use crate::schema::{check_schema, quote_ident};

/// One store: a pool, the schema, and how long rows live.
pub(crate) struct Store {
    pub(crate) pool: Pool,
    /// `"schema"`, quoted for SQL.
    pub(crate) schema: String,
    pub(crate) expire: Duration,
    /// Where it came from, for logs (host and database; never a secret).
    pub(crate) label: String,
    /// The bounds of its operations.
    pub(crate) limits: Limits,
    /// The longest [`Store::conn`] waits for a connection.
    checkout: Option<Duration>,
    /// Whether Hangfire's tables were seen in the schema (then never checked again).
    tables_seen: AtomicBool,
    /// When the last table check could not tell (the store did not answer in time).
    tables_unknown_at: Mutex<Option<std::time::Instant>>,
    /// Opens the `LISTEN` connection.
    pub(crate) connector: pool::Connector,
    /// What `NOTIFY` wakes (see [`listen`]).
    pub(crate) wakeups: Arc<listen::Wakeups>,
}

/// How long a run's answer waits to learn whether the store has Hangfire's tables.
const TABLE_CHECK_WITHIN: Duration = Duration::from_millis(500);
/// After a check that could not tell, how long runs go ahead without checking again (so an
/// unreachable store delays one answer per period, not every one).
const TABLE_CHECK_RETRY: Duration = Duration::from_secs(30);

impl Store {
    pub(crate) fn open(
        spec: &connstr::ConnSpec,
        schema: &str,
        expire_days: f64,
        load: pool::Load,
    ) -> Result<Self, String> {
        check_schema(schema)?;
        let label = label(&spec.config);
        let connector = pool::Connector::new(spec, load)?;
        let pool = pool::pool_of(spec, &connector)?;
        let limits = Limits::of(spec);
        Ok(Self {
            pool,
            schema: quote_ident(schema),
            expire: Duration::from_secs_f64(expire_days * 86_400.0),
            label,
            limits,
            checkout: limits.checkout(),
            tables_seen: AtomicBool::new(false),
            tables_unknown_at: Mutex::new(None),
            connector,
            wakeups: Arc::new(listen::Wakeups::default()),
        })
    }

    /// Refuses a store whose schema lacks Hangfire's `hash` or `set` table: a run written
    /// there could never show at the center, and its writes would fail forever. Only a
    /// database that answers "absent" refuses; one that does not answer within
    /// [`TABLE_CHECK_WITHIN`] lets the run go (its writes retry, as in any outage).
    pub(crate) async fn check_tables(&self) -> Result<(), String> {
        if self.tables_seen.load(Ordering::Acquire) {
            return Ok(());
        }
        if crate::sync::lock(&self.tables_unknown_at)
            .is_some_and(|at| at.elapsed() < TABLE_CHECK_RETRY)
        {
            return Ok(());
        }
        let check = async {
            let client = self.checkout().await?;
            // Per table: whether it exists, and whether this session's user may read and write
            // it (asked one privilege at a time: a list is true when any one is held; the
            // functions give NULL for a table that does not exist).
            let rows = client
                .query(
                    "SELECT t.name, to_regclass(t.path) IS NOT NULL, \
                     COALESCE(has_table_privilege(to_regclass(t.path), 'SELECT') \
                     AND has_table_privilege(to_regclass(t.path), 'INSERT') \
                     AND has_table_privilege(to_regclass(t.path), 'UPDATE'), false), \
                     current_user::text \
                     FROM unnest($1::text[], $2::text[]) AS t(name, path)",
                    &[
                        &vec!["hash", "set"],
                        &vec![
                            format!("{}.hash", self.schema),
                            format!("{}.set", self.schema),
                        ],
                    ],
                )
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let mut problem = None;
            for row in rows {
                let get = |i: usize| {
                    row.try_get::<_, bool>(i)
                        .map_err(|e| crate::error::chain(&e))
                };
                let name: String = row.try_get(0).map_err(|e| crate::error::chain(&e))?;
                let user: String = row.try_get(3).map_err(|e| crate::error::chain(&e))?;
                let (exists, writable) = (get(1)?, get(2)?);
                if problem.is_none() && !(exists && writable) {
                    problem = Some((name, exists, user));
                }
            }
            Ok::<_, String>(problem)
        };
        match tokio::time::timeout(TABLE_CHECK_WITHIN, check).await {
            Ok(Ok(None)) => {
                self.tables_seen.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Ok(Some((table, true, user)))) => Err(format!(
                "the store {}'s user `{user}` may not write Hangfire's table {}.{table} (it needs SELECT, INSERT and UPDATE, as the center's own user has)",
                self.label, self.schema,
            )),
            Ok(Ok(Some((table, false, _)))) => Err(format!(
                "the store {} has no Hangfire table {}.{table}: point the store at the center's database and schema (the center's HangfireDb and TablePrefix, or JOBAGENT_STORE and JOBAGENT_STORE_SCHEMA); the agent does not create Hangfire's tables",
                self.label, self.schema,
            )),
            Ok(Err(e)) => {
                tracing::debug!(store = %self.label, error = %e, "could not check the store's tables");
                *crate::sync::lock(&self.tables_unknown_at) = Some(std::time::Instant::now());
                Ok(())
            }
            Err(_) => {
                *crate::sync::lock(&self.tables_unknown_at) = Some(std::time::Instant::now());
                Ok(())
            }
        }
    }

    pub(crate) fn expire_secs(&self) -> f64 {
        self.expire.as_secs_f64()
    }

    /// Whether the store answers a trivial statement within `within`.
    pub(crate) async fn ping(&self, within: Duration) -> Result<(), String> {
        self.bounded(Some(within), async {
            let conn = self.conn().await?;
            conn.bound(conn.simple_query("SELECT 1")).await.map(|_| ())
        })
        .await
    }

    /// A pooled connection as it comes from the pool, within the checkout bound (see
    /// [`Limits::checkout`]): for a few statements of the agent's own, or a caller that holds
    /// it across many (the dev CLI's reader).
    pub(crate) async fn checkout(&self) -> Result<deadpool_postgres::Object, String> {
        let get = self.pool.get();
        match self.checkout {
            Some(limit) => tokio::time::timeout(limit, get).await.map_err(|_| {
                format!("no connection to the store within {} ms", limit.as_millis())
            })?,
            None => get.await,
        }
        .map_err(|e| crate::error::chain(&e))
    }

    /// A pooled connection, within the pool's bounds (see [`Limits::checkout`]). Run its
    /// statements through [`Conn::bound`].
    pub(crate) async fn conn(&self) -> Result<Conn, String> {
        Ok(Conn {
            client: Some(self.checkout().await?),
            command: self.limits.command,
            busy: AtomicBool::new(false),
        })
    }

    /// Runs `op` (which takes its connections with [`Store::conn`], or uses the pool) with
    /// one deadline over the whole of it: `within`, else the checkout bound plus `Command
    /// Timeout`. For callers outside this module whose operation spans several statements
    /// (a claim, a transaction): when the deadline passes, `op` is dropped, and a
    /// [`Conn`] it held with a statement in flight is dropped with it, not pooled again.
    pub(crate) async fn bounded<T>(
        &self,
        within: Option<Duration>,
        op: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let limit = within.or_else(|| {
            self.checkout
                .and_then(|c| self.limits.command.map(|s| c.saturating_add(s)))
        });
        match limit {
            Some(limit) => tokio::time::timeout(limit, op)
                .await
                .map_err(|_| format!("the store did not answer within {} ms", limit.as_millis()))?,
            None => op.await,
        }
    }
}

/// A pooled connection whose statements carry a client-side deadline ([`Conn::bound`]).
/// It derefs to the pool's client, so the helpers of this module take it as they are.
///
/// A connection whose statement timed out, or whose caller went away while a statement was
/// in flight (a dropped request future), is taken out of the pool when dropped and closed:
/// it is never handed out again with a request in flight.
pub(crate) struct Conn {
    client: Option<deadpool_postgres::Client>,
    command: Option<Duration>,
    /// Set while a bounded statement runs, and left set when it timed out.
    busy: AtomicBool,
}

impl Conn {
    /// Runs one statement (or a few that belong together) within `Command Timeout`.
    pub(crate) async fn bound<T, E: Describe>(
        &self,
        statement: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        self.busy.store(true, Ordering::Release);
        let outcome = match self.command {
            Some(limit) => match tokio::time::timeout(limit, statement).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // `busy` stays set: the connection is dropped, not pooled again.
                    return Err(format!(
                        "the store did not answer within Command Timeout ({} ms); the connection is dropped",
                        limit.as_millis()
                    ));
                }
            },
            None => statement.await,
        };
        self.busy.store(false, Ordering::Release);
        outcome.map_err(|e| e.describe())
    }

    /// Whether this connection will be dropped rather than pooled again.
    #[cfg(test)]
    pub(crate) fn is_poisoned(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

impl Deref for Conn {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        match &self.client {
            Some(client) => client,
            // Only `Drop` takes the client out.
            None => unreachable!("a Conn holds its client until dropped"),
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.client {
            Some(client) => client,
            None => unreachable!("a Conn holds its client until dropped"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.busy.load(Ordering::Acquire)
            && let Some(client) = self.client.take()
        {
            // Out of the pool; dropping the wrapper aborts its connection task, which closes
            // the socket.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// An error as the store reports it: with its causes (a database error's own message is in
/// its source; `tokio_postgres::Error` alone says only "db error").
pub(crate) trait Describe {
    fn describe(&self) -> String;
}

impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl Describe for tokio_postgres::Error {
    fn describe(&self) -> String {
        crate::error::chain(self)
    }
}

fn label(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

/// The stores an agent writes to: its own, and those centers send, one pool each.
pub(crate) struct Stores {
    local: Option<Arc<Store>>,
    allowed_hosts: Option<Vec<String>>,
    sent: Mutex<HashMap<String, Arc<Store>>>,
}

/// The most distinct header-sent stores kept open at once.
const MAX_SENT_STORES: usize = 32;

impl Stores {
    pub(crate) fn new(
        local: Option<&LocalStore>,
        allowed_hosts: Option<Vec<String>>,
    ) -> Result<Self, ConfigError> {
        let local = match local {
            None => None,
            Some(l) => {
                let invalid = |reason: String| ConfigError::invalid("JOBAGENT_STORE", reason);
                let spec =
                    connstr::parse(l.connection.expose()).map_err(|e| invalid(e.to_string()))?;
                // Configuration time: files it names (Root Certificate) are read now.
                Some(Arc::new(
                    Store::open(&spec, &l.schema, l.expire_days, pool::Load::Now)
                        .map_err(invalid)?,
                ))
            }
        };
        if let Some(store) = &local {
            tracing::info!(store = %store.label, "job agent writes to its configured store");
        }
        Ok(Self {
            local,
            allowed_hosts,
            sent: Mutex::new(HashMap::new()),
        })
    }

    /// The agent's own store, if configured.
    pub(crate) fn local(&self) -> Option<Arc<Store>> {
        self.local.clone()
    }

    /// The store for a dispatch: the local one, else the one in `x-job-storage`, else none.
    pub(crate) fn select(
        &self,
        header: Option<&StorageHeader>,
    ) -> Result<Option<Arc<Store>>, String> {
        if let Some(local) = &self.local {
            return Ok(Some(local.clone()));
        }
        let Some(h) = header else { return Ok(None) };
        if !h.kind.trim().eq_ignore_ascii_case("postgresql") {
            return Err(format!(
                "the center's store Type is `{}`, but this agent writes only to a PostgreSQL store, which the center sends as Type `postgresql` (a center on Hangfire.PostgreSql does); for a center on another storage, give the agent its own store (JOBAGENT_STORE)",
                h.kind.chars().take(40).collect::<String>()
            ));
        }
        if h.hangfire_db.trim().is_empty() {
            return Err("the center's store has no HangfireDb connection string".to_owned());
        }
        let schema = h
            .table_prefix
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("hangfire");
        let days = h
            .expire_at_days
            .filter(|d| d.is_finite() && *d >= 1.0)
            .unwrap_or(7.0)
            .min(3650.0);
        let spec = connstr::parse(&h.hangfire_db).map_err(|e| format!("HangfireDb: {e}"))?;
        if let Some(setting) = spec.file_settings.first() {
            // Neither the path nor anything about the file is echoed: a caller must not
            // learn which files exist on the agent's machine.
            return Err(format!(
                "HangfireDb: connection string key `{setting}` names a file on the agent's machine, which a store sent by the center may not do; remove it from the center's connection string, or configure the store on the agent (JOBAGENT_STORE), where Root Certificate is allowed"
            ));
        }
        check_schema(schema).map_err(|e| format!("TablePrefix: {e}"))?;
        if let Some(allowed) = &self.allowed_hosts {
            for (host, _port) in spec.hosts() {
                if !host_allowed(&host, allowed) {
                    return Err(format!(
                        "the center's store names host `{}`, which is not in JOBAGENT_STORE_ALLOWED_HOSTS",
                        host.chars().take(100).collect::<String>()
                    ));
                }
            }
        }
        let key = format!("{}|{schema}|{days}", spec.identity());
        let mut sent = crate::sync::lock(&self.sent);
        if let Some(store) = sent.get(&key) {
            return Ok(Some(store.clone()));
        }
        if sent.len() >= MAX_SENT_STORES {
            return Err(format!(
                "this agent already writes to {MAX_SENT_STORES} different stores; configure one store on the agent (JOBAGENT_STORE)"
            ));
        }
        // The request path, under a lock: nothing is read here (the system's CA
        // certificates, when needed, are loaded off-thread at the first connection).
        let store = Arc::new(
            Store::open(&spec, schema, days, pool::Load::Deferred)
                .map_err(|e| format!("HangfireDb: {e}"))?,
        );
        tracing::info!(store = %store.label, "job agent opened a store sent by the center");
        sent.insert(key, store.clone());
        Ok(Some(store))
    }
}

#[cfg(feature = "dev")]
/// Opens `connection` as the agent opens a store and runs `sql` (one row, one text column);
/// also says whether the session is encrypted. For the integration tests of TLS modes.
pub(crate) async fn probe(connection: &str, sql: &str) -> Result<(bool, String), String> {
    let spec = connstr::parse(connection).map_err(|e| crate::error::chain(&e))?;
    let store = Store::open(&spec, "hangfire", 1.0, pool::Load::Now)?;
    let client = store.pool.get().await.map_err(|e| format!("{e} ({e:?})"))?;
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| crate::error::chain(&e))?
        .try_get(0)
        .map_err(|e| crate::error::chain(&e))?;
    let value: String = client
        .query_one(sql, &[])
        .await
        .map_err(|e| crate::error::chain(&e))?
        .try_get(0)
        .map_err(|e| crate::error::chain(&e))?;
    Ok((encrypted, value))
}

/// Upserts fields of one hash key, in one statement.
pub(crate) async fn upsert_hash_fields(
    client: &deadpool_postgres::Client,
    schema: &str,
    key: &str,
    fields: &[&str],
    values: &[&str],
    expire_secs: f64,
) -> Result<(), String> {
    let sql = format!(
        "INSERT INTO {schema}.hash (\"key\", field, \"value\", expireat) \
         SELECT $1, h.field, h.value, now() + $4 * interval '1 second' \
         FROM unnest($2::text[], $3::text[]) AS h(field, value) \
         ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = EXCLUDED.expireat"
    );
    let stmt = client
        .prepare_cached(&sql)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    client
        .execute(&stmt, &[&key, &fields, &values, &expire_secs])
        .await
        .map_err(|e| crate::error::chain(&e))?;
    Ok(())
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

    fn header(connection: &str) -> StorageHeader {
        serde_json::from_value(serde_json::json!({
            "Type": "postgresql",
            "HangfireDb": connection,
        }))
        .expect("a storage header")
    }

    #[test]
    fn a_center_sent_store_may_not_name_files_and_opening_one_reads_nothing() {
        let stores = Stores::new(None, None).expect("no local store");
        let base = "Host=db;Username=u;Password=p;SSL Mode=VerifyFull";
        let refusal = |setting: &str, path: &str| match stores
            .select(Some(&header(&format!("{base};{setting}={path}"))))
        {
            Ok(_) => panic!("{setting} accepted"),
            Err(e) => e,
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

    /// A store on the test server (JOBAGENT_TEST_DATABASE_URL) with a 1 s `Command Timeout`
    /// enforced by the client only, and one connection; `None` without a test server.
    fn short_store() -> Option<Store> {
        let url = std::env::var("JOBAGENT_TEST_DATABASE_URL").ok()?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}command_timeout=1&max_pool_size=1&options=-c%20statement_timeout%3D0"
        );
        let spec = connstr::parse(&url).expect("a valid test URL");
        Some(Store::open(&spec, "hangfire", 1.0, pool::Load::Now).expect("opens"))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_statement_past_its_command_timeout_fails_and_its_connection_is_not_reused() {
        let Some(store) = short_store() else {
            eprintln!("JOBAGENT_TEST_DATABASE_URL not set; skipped");
            return;
        };
        let conn = store.conn().await.expect("a connection");
        let pid: i32 = conn
            .bound(conn.query_one("SELECT pg_backend_pid()", &[]))
            .await
            .expect("answers")
            .get(0);
        let started = std::time::Instant::now();
        let e = conn
            .bound(conn.execute("SELECT pg_sleep(10)", &[]))
            .await
            .expect_err("past Command Timeout");
        let took = started.elapsed();
        assert!(e.contains("Command Timeout"), "{e}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(conn.is_poisoned());
        drop(conn);
        assert_eq!(store.pool.status().size, 0, "taken out of the pool");
        // The one slot is free again, on a new session that answers at once.
        let conn = store.conn().await.expect("a new connection");
        let started = std::time::Instant::now();
        let other: i32 = conn
            .bound(conn.query_one("SELECT pg_backend_pid()", &[]))
            .await
            .expect("answers")
            .get(0);
        assert_ne!(pid, other);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!conn.is_poisoned());
        drop(conn);
        assert_eq!(
            store.pool.status().size,
            1,
            "a healthy connection is pooled again"
        );

        // A caller that goes away mid-statement (its future dropped): the connection goes too.
        let conn = store.conn().await.expect("the pooled connection");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            conn.bound(conn.execute("SELECT pg_sleep(10)", &[])),
        )
        .await;
        assert!(gave_up.is_err());
        drop(conn);
        assert_eq!(store.pool.status().size, 0);
        let conn = store.conn().await.expect("a new connection");
        let started = std::time::Instant::now();
        conn.bound(conn.execute("SELECT 1", &[]))
            .await
            .expect("not queued behind the abandoned statement");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
