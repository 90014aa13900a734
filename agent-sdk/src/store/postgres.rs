//! PostgreSQL (Hangfire.PostgreSql): pooled connections with a deadline on every statement,
//! and the statements the agent writes with.
//!
//! **Every store operation has a deadline.** The pool bounds the wait for a connection
//! (`Timeout`, 15 s by default, as Npgsql) and the opening of one; connections use TCP
//! keepalive (10 s idle) and `TCP_USER_TIMEOUT`; a pooled connection is checked (an empty
//! query, 3 s) before reuse, so one still carrying an abandoned request is dropped. Code
//! that talks to the store takes its connection with [`PgStore::conn`] and runs each
//! statement through [`Conn::bound`]: a client-side `Command Timeout` (30 s by default) that
//! also holds when the link is black-holed (nothing answers, nothing is reset); the
//! connection whose statement timed out, or whose caller went away mid-statement, is taken
//! out of the pool, and the server is sent a cancel for the statement before it is closed.
//!
//! **No session state (PgBouncer).** Connections start with no `options` (a pooler refuses
//! that startup parameter) and no session setting of the agent's: behind PgBouncer in
//! transaction pooling, consecutive transactions of one client connection may run on
//! different server sessions. So every statement is an unnamed one (`*_typed` calls: parse,
//! bind and execute in one round trip, nothing left on the server), and a statement that
//! reads or writes a time runs in a transaction of its own that sets `TimeZone` to UTC with
//! `SET LOCAL` ([`in_utc`], [`BEGIN_UTC`]): Hangfire.PostgreSql before schema v19
//! (1.9.10) keeps `expireat` as `timestamp without time zone` holding naive UTC, and a
//! `now() + interval` stored there is converted in the session's zone, which is the
//! database's default (anything) unless set. On `timestamptz` columns the zone changes
//! nothing.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;

use tokio_postgres::types::{ToSql, Type};

use super::driver::Driver;
use super::line::EncodedLine;
use super::pg_connstr::ConnSpec;
use super::pool::{self, Limits};
use super::results::{MARKS, RESULTS};
use super::{CheckError, ResultWrite, StoreError};
use crate::schema::{check_schema, quote_ident};

/// A PostgreSQL store: a pool and the Hangfire schema.
pub(crate) struct PgStore {
    pub(crate) pool: Pool,
    /// `"schema"`, quoted for SQL.
    pub(crate) schema: String,
    /// Where it came from, for logs (host and database; never a secret).
    pub(crate) label: String,
    /// The bounds of its operations.
    pub(crate) limits: Limits,
    /// The longest [`PgStore::conn`] waits for a connection.
    checkout: Option<Duration>,
    /// Whether Hangfire's tables were seen in the schema (then never checked again).
    tables_seen: AtomicBool,
    /// Opens the `LISTEN` connection.
    pub(crate) connector: pool::Connector,
    /// The host names it connects to.
    hosts: Vec<String>,
}

impl PgStore {
    pub(crate) fn open(
        spec: &ConnSpec,
        schema: &str,
        load: pool::Load,
    ) -> Result<Self, StoreError> {
        check_schema(schema).map_err(StoreError::config)?;
        let label = label(&spec.config);
        let connector = pool::Connector::new(spec, load)?;
        let pool = pool::pool_of(spec, &connector)?;
        let limits = Limits::of(spec);
        Ok(Self {
            pool,
            schema: quote_ident(schema),
            label,
            limits,
            checkout: limits.checkout(),
            tables_seen: AtomicBool::new(false),
            connector,
            hosts: spec.hosts().into_iter().map(|(host, _)| host).collect(),
        })
    }

    /// Refuses a store whose schema lacks Hangfire's `hash` or `set` table: a run written
    /// there could never show at the center, and its writes would fail forever. What a
    /// store that does not answer within `within` means is decided above (see
    /// [`Store::check_tables`](super::Store::check_tables)).
    pub(crate) async fn check_tables(&self, within: Duration) -> Result<(), CheckError> {
        let problem = async {
            // Bounded (and dropped, not pooled, when the check gives up mid-statement).
            let client = self.conn().await?;
            // Per table: whether it exists, and whether this session's user may read and write
            // it (asked one privilege at a time: a list is true when any one is held; the
            // functions give NULL for a table that does not exist).
            let rows = client
                .bound(client.query_typed(
                    "SELECT t.name, to_regclass(t.path) IS NOT NULL, \
                     COALESCE(has_table_privilege(to_regclass(t.path), 'SELECT') \
                     AND has_table_privilege(to_regclass(t.path), 'INSERT') \
                     AND has_table_privilege(to_regclass(t.path), 'UPDATE'), false), \
                     current_user::text \
                     FROM unnest($1::text[], $2::text[]) AS t(name, path)",
                    &[
                        (&vec!["hash", "set"], Type::TEXT_ARRAY),
                        (
                            &vec![
                                format!("{}.hash", self.schema),
                                format!("{}.set", self.schema),
                            ],
                            Type::TEXT_ARRAY,
                        ),
                    ],
                ))
                .await?;
            let mut problem = None;
            for row in rows {
                let get = |i: usize| row.try_get::<_, bool>(i).map_err(StoreError::from);
                let name: String = row.try_get(0).map_err(StoreError::from)?;
                let user: String = row.try_get(3).map_err(StoreError::from)?;
                let (exists, writable) = (get(1)?, get(2)?);
                if problem.is_none() && !(exists && writable) {
                    problem = Some((name, exists, user));
                }
            }
            Ok::<_, StoreError>(problem)
        };
        let check = async {
            match problem.await {
                Ok(None) => Ok(()),
                Ok(Some((table, true, user))) => Err(CheckError::Refused(format!(
                    "the store {}'s user `{user}` may not write Hangfire's table {}.{table} (it needs SELECT, INSERT and UPDATE, as the center's own user has)",
                    self.label, self.schema,
                ))),
                Ok(Some((table, false, _))) => Err(CheckError::Refused(format!(
                    "the store {} has no Hangfire table {}.{table}: point the store at the center's database and schema (the center's HangfireDb and TablePrefix, or JOBAGENT_STORE and JOBAGENT_STORE_SCHEMA); the agent does not create Hangfire's tables",
                    self.label, self.schema,
                ))),
                Err(e) => Err(CheckError::Unknown(e)),
            }
        };
        CheckError::once(&self.tables_seen, within, check).await
    }

    /// The host names it connects to.
    pub(crate) fn hosts(&self) -> Vec<String> {
        self.hosts.clone()
    }

    /// Whether the store answers a trivial statement (the caller bounds it).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.bound(conn.simple_query("SELECT 1")).await.map(|_| ())
    }

    /// A pooled connection as it comes from the pool, within the checkout bound (see
    /// [`Limits::checkout`]): for a few statements of the agent's own, or a caller that holds
    /// it across many (the dev CLI's reader).
    pub(crate) async fn checkout(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let get = self.pool.get();
        match self.checkout {
            Some(limit) => tokio::time::timeout(limit, get).await.map_err(|_| {
                StoreError::new(
                    super::StoreErrorKind::TimedOut,
                    format!("no connection to the store within {} ms", limit.as_millis()),
                )
            })?,
            None => get.await,
        }
        .map_err(StoreError::from)
    }

    /// A pooled connection, within the pool's bounds (see [`Limits::checkout`]). Run its
    /// statements through [`Conn::bound`].
    pub(crate) async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        Ok(Conn {
            client: Some(self.checkout().await?),
            command: self.limits.command,
            busy: AtomicBool::new(false),
            connector: &self.connector,
        })
    }
}

/// A pooled connection whose statements carry a client-side deadline ([`Conn::bound`]).
/// It derefs to the pool's client, so the helpers of this module take it as they are.
///
/// A connection whose statement timed out, or whose caller went away while a statement was
/// in flight (a dropped request future), is taken out of the pool when dropped, the server
/// is sent a cancel for that statement, and then it is closed: it is never handed out again
/// with a request in flight, and the server does not go on running what nobody waits for.
pub(crate) struct Conn<'s> {
    client: Option<deadpool_postgres::Client>,
    command: Option<Duration>,
    /// Set while a bounded statement runs, and left set when it timed out.
    busy: AtomicBool,
    /// Sends the cancel.
    connector: &'s pool::Connector,
}

/// Opens a statement's own transaction with the session's `TimeZone` set to UTC for that
/// transaction only (nothing outlives it: right behind a pooler in transaction mode).
const BEGIN_UTC: &str = "BEGIN; SET LOCAL TimeZone TO 'UTC'";

/// Runs `statement` in a transaction of its own whose time zone is UTC ([`BEGIN_UTC`]), then
/// commits; the three are sent at once (one round trip). `statement` must send its request
/// when first polled (one `*_typed` call, or several joined): a statement sent later would
/// run after the `COMMIT`. When it fails, the `COMMIT` ends the failed transaction (the
/// server answers it with a rollback) and its error is returned.
pub(crate) async fn in_utc<T, F>(
    client: &tokio_postgres::Client,
    statement: F,
) -> Result<T, tokio_postgres::Error>
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let (_, out, _) = futures_util::future::try_join3(
        client.batch_execute(BEGIN_UTC),
        statement,
        client.batch_execute("COMMIT"),
    )
    .await?;
    Ok(out)
}

impl Conn<'_> {
    /// Runs one statement (or a few that belong together) within `Command Timeout`.
    pub(crate) async fn bound<T, E: Describe>(
        &self,
        statement: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        self.busy.store(true, Ordering::Release);
        let outcome = match self.command {
            Some(limit) => match tokio::time::timeout(limit, statement).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // `busy` stays set: the connection is dropped, not pooled again.
                    return Err(StoreError::new(
                        super::StoreErrorKind::TimedOut,
                        format!(
                            "the store did not answer within Command Timeout ({} ms); the connection is dropped",
                            limit.as_millis()
                        ),
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

impl Deref for Conn<'_> {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        match &self.client {
            Some(client) => client,
            // Only `Drop` takes the client out.
            None => unreachable!("a Conn holds its client until dropped"),
        }
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.client {
            Some(client) => client,
            None => unreachable!("a Conn holds its client until dropped"),
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.busy.load(Ordering::Acquire)
            && let Some(client) = self.client.take()
        {
            // Out of the pool now; the server is asked to cancel the statement, and the
            // connection is closed once it was (dropping the wrapper aborts its connection
            // task, which closes the socket). Kept open until then: a pooler cancels only
            // for a client that is still connected.
            let token = client.cancel_token();
            let taken = deadpool_postgres::Object::take(client);
            self.connector.cancel(token, taken);
        }
    }
}

/// An error as a [`StoreError`]: classified by its SQLSTATE, with its causes (a database
/// error's own message is in its source; `tokio_postgres::Error` alone says only "db error").
pub(crate) trait Describe {
    fn describe(self) -> StoreError;
}

impl Describe for StoreError {
    fn describe(self) -> StoreError {
        self
    }
}

impl Describe for tokio_postgres::Error {
    fn describe(self) -> StoreError {
        StoreError::from(self)
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

#[cfg(feature = "dev")]
/// Opens `connection` as the agent opens a store and runs `sql` (one row, one text column);
/// also says whether the session is encrypted. For the integration tests of TLS modes.
pub(crate) async fn probe(connection: &str, sql: &str) -> Result<(bool, String), StoreError> {
    let spec = super::pg_connstr::parse(connection)
        .map_err(|e| StoreError::config(crate::error::chain(&e)))?;
    let store = PgStore::open(&spec, "hangfire", pool::Load::Now)?;
    let client = store.pool.get().await.map_err(StoreError::from)?;
    let encrypted: bool = client
        .query_typed_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(StoreError::from)?
        .try_get(0)
        .map_err(StoreError::from)?;
    let value: String = client
        .query_typed_one(sql, &[])
        .await
        .map_err(StoreError::from)?
        .try_get(0)
        .map_err(StoreError::from)?;
    Ok((encrypted, value))
}

/// Upserts fields of one hash key, in one statement (in UTC, see [`in_utc`]).
pub(crate) async fn upsert_hash_fields(
    client: &tokio_postgres::Client,
    schema: &str,
    key: &str,
    fields: &[&str],
    values: &[&str],
    expire_secs: f64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {schema}.hash (\"key\", field, \"value\", expireat) \
         SELECT $1, h.field, h.value, now() + $4 * interval '1 second' \
         FROM unnest($2::text[], $3::text[]) AS h(field, value) \
         ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = EXCLUDED.expireat"
    );
    in_utc(
        client,
        client.execute_typed(
            &sql,
            &[
                (&key, Type::TEXT),
                (&fields, Type::TEXT_ARRAY),
                (&values, Type::TEXT_ARRAY),
                (&expire_secs, Type::FLOAT8),
            ],
        ),
    )
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

impl PgStore {
    /// One console batch, each statement bounded (see [`Conn::bound`]): references, then the
    /// lines in one statement (inserted in their order, so ids keep it), then bar 1's value.
    /// A retried batch that had in fact committed is upserted (same ids kept).
    pub(crate) async fn write_console(
        &self,
        set_key: &str,
        hash_key: &str,
        lines: &[EncodedLine],
        expire: Duration,
    ) -> Result<(), StoreError> {
        // Every step within the checkout bound and `Command Timeout`: a connection that
        // goes silent mid-statement (a black-holed link answers nothing, ever) fails the
        // batch, which is retried on another connection, and is dropped, never pooled again.
        let conn = self.conn().await?;
        let schema = &self.schema;
        let expire_secs = expire.as_secs_f64();
        let (ref_fields, ref_values): (Vec<&str>, Vec<&str>) = lines
            .iter()
            .filter_map(|l| l.reference.as_ref().map(|(f, v)| (f.as_str(), v.as_str())))
            .unzip();
        if !ref_fields.is_empty() {
            conn.bound(upsert_hash_fields(
                &conn,
                schema,
                hash_key,
                &ref_fields,
                &ref_values,
                expire_secs,
            ))
            .await?;
        }
        conn.bound(self.upsert_lines(&conn, set_key, lines, expire_secs))
            .await?;
        if let Some(progress) = lines.iter().rev().find_map(|l| l.progress_field.as_deref()) {
            conn.bound(upsert_hash_fields(
                &conn,
                schema,
                hash_key,
                &["progress"],
                &[progress],
                expire_secs,
            ))
            .await?;
        }
        Ok(())
    }

    /// Inserts the lines in their order, keeping rows that already exist (a retry after an
    /// unknown outcome).
    async fn upsert_lines(
        &self,
        client: &tokio_postgres::Client,
        set_key: &str,
        lines: &[EncodedLine],
        expire_secs: f64,
    ) -> Result<(), StoreError> {
        let schema = &self.schema;
        let scores: Vec<f64> = lines.iter().map(|l| l.score).collect();
        let values: Vec<&str> = lines.iter().map(|l| l.value.as_str()).collect();
        let sql = format!(
            "INSERT INTO {schema}.\"set\" (\"key\", score, \"value\", expireat) \
             SELECT $1, l.score, l.value, now() + $4 * interval '1 second' \
             FROM unnest($2::float8[], $3::text[]) WITH ORDINALITY AS l(score, value, ord) ORDER BY l.ord \
             ON CONFLICT (\"key\", \"value\") DO UPDATE SET score = EXCLUDED.score, expireat = EXCLUDED.expireat"
        );
        in_utc(
            client,
            client.execute_typed(
                &sql,
                &[
                    (&set_key, Type::TEXT),
                    (&scores, Type::FLOAT8_ARRAY),
                    (&values, Type::TEXT_ARRAY),
                    (&expire_secs, Type::FLOAT8),
                ],
            ),
        )
        .await
        .map_err(StoreError::from)?;
        Ok(())
    }

    /// Fields of one hash key, bounded: the checkout and the statement (see [`Conn::bound`]).
    /// `life` None: the rows never expire.
    pub(crate) async fn set_hash(
        &self,
        key: &str,
        pairs: &[(&str, &str)],
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (fields, values): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
        let conn = self.conn().await?;
        // No expiry: a century (Hangfire's columns have no "never" but NULL, which its cleanup keeps).
        let secs = life.map_or(3_155_760_000.0, |l| l.as_secs_f64());
        conn.bound(upsert_hash_fields(
            &conn,
            &self.schema,
            key,
            &fields,
            &values,
            secs,
        ))
        .await
    }

    /// Upserts one set member (a retry updates its score and expiry).
    #[cfg(any(feature = "relay-server", test))]
    pub(crate) async fn add_to_set(
        &self,
        key: &str,
        value: &str,
        score: f64,
        expire: Duration,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {}.\"set\" (\"key\", score, \"value\", expireat) VALUES ($1, $2, $3, now() + $4 * interval '1 second') \
             ON CONFLICT (\"key\", \"value\") DO UPDATE SET score = EXCLUDED.score, expireat = EXCLUDED.expireat",
            self.schema
        );
        let params: &[(&(dyn ToSql + Sync), Type)] = &[
            (&key, Type::TEXT),
            (&score, Type::FLOAT8),
            (&value, Type::TEXT),
            (&expire.as_secs_f64(), Type::FLOAT8),
        ];
        self.execute(&sql, params, true).await.map(drop)
    }

    /// A dispatch's result with its first-report mark, in one statement (so all of it or
    /// none lands): the mark is field `w.mark` of hash [`MARKS`] holding the
    /// writer's token, taken only when absent or already this token; the result's hash field
    /// and set member are upserted only when the mark was (and a result is given).
    pub(crate) async fn write_result(
        &self,
        w: &ResultWrite<'_>,
        expire: Duration,
    ) -> Result<bool, StoreError> {
        let schema = &self.schema;
        let until = "now() + $3 * interval '1 second'";
        let sql = format!(
            "WITH mark AS (\
               INSERT INTO {schema}.hash AS t (\"key\", field, \"value\", expireat) \
               VALUES ('{MARKS}', $1, $2, {until}) \
               ON CONFLICT (\"key\", field) DO UPDATE SET expireat = EXCLUDED.expireat \
               WHERE t.\"value\" = EXCLUDED.\"value\" RETURNING t.id), \
             result AS (\
               INSERT INTO {schema}.hash (\"key\", field, \"value\", expireat) \
               SELECT $4, $5, $6, {until} FROM mark WHERE $6 IS NOT NULL \
               ON CONFLICT (\"key\", field) DO UPDATE \
               SET \"value\" = EXCLUDED.\"value\", expireat = EXCLUDED.expireat), \
             member AS (\
               INSERT INTO {schema}.\"set\" (\"key\", score, \"value\", expireat) \
               SELECT '{RESULTS}', 1.0, $7, {until} FROM mark WHERE $6 IS NOT NULL \
               ON CONFLICT (\"key\", \"value\") DO UPDATE \
               SET score = EXCLUDED.score, expireat = EXCLUDED.expireat) \
             SELECT id FROM mark"
        );
        let key = w.key();
        let (field, value) = w.result.unzip();
        let conn = self.conn().await?;
        let row = conn
            .bound(in_utc(
                &conn,
                conn.query_typed_opt(
                    &sql,
                    &[
                        (&w.mark, Type::TEXT),
                        (&w.token, Type::TEXT),
                        (&expire.as_secs_f64(), Type::FLOAT8),
                        (&key, Type::TEXT),
                        (&field, Type::TEXT),
                        (&value, Type::TEXT),
                        (&w.id, Type::TEXT),
                    ],
                ),
            ))
            .await?;
        Ok(row.is_some())
    }

    /// One try at Hangfire.PostgreSql's distributed lock (`PostgreSqlDistributedLock.cs`):
    /// a lock row older than `stale_after` (the center's `DistributedLockTimeout`) is removed
    /// first, as Hangfire does, then the row for `resource` is inserted unless one exists.
    /// The owner is the row's `acquired` time as text (the table has no owner column), in UTC.
    pub(crate) async fn lock_try(
        &self,
        resource: &str,
        stale_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let schema = &self.schema;
        let delete = format!(
            "DELETE FROM {schema}.\"lock\" WHERE resource = $1 \
             AND acquired < now() - $2 * interval '1 second'"
        );
        let insert = format!(
            "INSERT INTO {schema}.\"lock\" (resource, acquired) \
             SELECT $1, now() WHERE NOT EXISTS (SELECT 1 FROM {schema}.\"lock\" WHERE resource = $1) \
             ON CONFLICT DO NOTHING RETURNING acquired::text"
        );
        let stale = stale_after.as_secs_f64();
        let (_, row) = conn
            .bound(in_utc(
                &conn,
                futures_util::future::try_join(
                    conn.execute_typed(&delete, &[(&resource, Type::TEXT), (&stale, Type::FLOAT8)]),
                    conn.query_typed_opt(&insert, &[(&resource, Type::TEXT)]),
                ),
            ))
            .await?;
        row.map(|row| row.try_get::<_, String>(0).map_err(StoreError::from))
            .transpose()
    }

    /// Moves a held lock's `acquired` to now, so no process takes it as stale; the new owner,
    /// or None when the row is not ours any more.
    pub(crate) async fn lock_keep(
        &self,
        resource: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "UPDATE {}.\"lock\" SET acquired = now() WHERE resource = $1 AND acquired::text = $2 \
             RETURNING acquired::text",
            self.schema
        );
        conn.bound(in_utc(
            &conn,
            conn.query_typed_opt(&sql, &[(&resource, Type::TEXT), (&owner, Type::TEXT)]),
        ))
        .await?
        .map(|row| row.try_get::<_, String>(0).map_err(StoreError::from))
        .transpose()
    }

    /// Deletes the lock row if it is still ours (Hangfire deletes by resource alone).
    pub(crate) async fn lock_release(&self, resource: &str, owner: &str) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM {}.\"lock\" WHERE resource = $1 AND acquired::text = $2",
            self.schema
        );
        let params: &[(&(dyn ToSql + Sync), Type)] =
            &[(&resource, Type::TEXT), (&owner, Type::TEXT)];
        self.execute(&sql, params, true).await.map(drop)
    }

    /// The next fencing token of `resource`: a counter in hash `jobagent:lock-fence` that
    /// never expires.
    pub(crate) async fn fence(&self, resource: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "INSERT INTO {}.hash AS t (\"key\", field, \"value\", expireat) \
             VALUES ('jobagent:lock-fence', $1, '1', NULL) \
             ON CONFLICT (\"key\", field) DO UPDATE \
             SET \"value\" = (COALESCE(NULLIF(t.\"value\", '')::bigint, 0) + 1)::text \
             RETURNING \"value\"",
            self.schema
        );
        let of = format!("`{resource}`");
        self.count(&sql, &super::fence_field(resource), &of).await
    }

    /// Runs the increment of a fencing counter, `sql` (`$1`: its field): the new value. `of`
    /// names the counter when its value is not a number.
    async fn count(&self, sql: &str, field: &str, of: &str) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let value: String = conn
            .bound(conn.query_typed_one(sql, &[(&field, Type::TEXT)]))
            .await?
            .try_get(0)
            .map_err(StoreError::from)?;
        value.parse().map_err(|_| {
            StoreError::refused(format!("the fencing counter of {of} holds `{value}`"))
        })
    }

    /// Runs one statement, in a transaction of its own in UTC when it reads or writes a time
    /// (`utc`, see [`in_utc`]): the rows it affected.
    async fn execute(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        utc: bool,
    ) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let write = conn.execute_typed(sql, params);
        if utc {
            conn.bound(in_utc(&conn, write)).await
        } else {
            conn.bound(write).await
        }
    }

    /// The dashboard's read of a set: values by id, from `from`, at most `count`.
    // The dashboard's reads: for `jobagent-dev` (feature `dev`) and the tests.
    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) async fn read_set(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let (from, count) = (
            i64::try_from(from).unwrap_or(i64::MAX),
            i64::try_from(count).unwrap_or(i64::MAX),
        );
        let rows = conn
            .bound(conn.query_typed(
                &format!(
                    "SELECT \"value\" FROM {}.\"set\" WHERE \"key\" = $1 ORDER BY id OFFSET $2 LIMIT $3",
                    self.schema
                ),
                &[
                    (&key, Type::TEXT),
                    (&from, Type::INT8),
                    (&count, Type::INT8),
                ],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Runs `sql` (`$1`: the key) and reads its rows as field and value; a NULL value reads
    /// as empty.
    async fn pairs(&self, sql: &str, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .bound(conn.query_typed(sql, &[(&key, Type::TEXT)]))
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .collect()
    }
}

impl Driver for PgStore {
    /// The database's clock.
    async fn now_ms(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .bound(conn.query_typed_one("SELECT (extract(epoch from now()) * 1000)::bigint", &[]))
            .await?;
        row.try_get(0).map_err(StoreError::from)
    }

    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .bound(conn.query_typed_opt(
                &format!(
                    "SELECT \"value\" FROM {}.hash WHERE \"key\" = $1 AND field = $2",
                    self.schema
                ),
                &[(&key, Type::TEXT), (&field, Type::TEXT)],
            ))
            .await?;
        row.map(|r| r.try_get(0).map_err(StoreError::from))
            .transpose()
    }

    /// By id (the order they were written in).
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let sql = format!(
            "SELECT field, \"value\" FROM {}.hash WHERE \"key\" = $1 ORDER BY id",
            self.schema
        );
        self.pairs(&sql, key).await
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

    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "DELETE FROM {}.hash WHERE \"key\" = $1 AND field = $2",
            self.schema
        );
        let n = self
            .execute(&sql, &[(&key, Type::TEXT), (&field, Type::TEXT)], false)
            .await?;
        Ok(n >= 1)
    }

    /// One statement (`DELETE ... RETURNING`).
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        let sql = format!(
            "DELETE FROM {}.hash WHERE \"key\" = $1 RETURNING field, \"value\"",
            self.schema
        );
        self.pairs(&sql, key).await
    }

    /// On Hangfire.PostgreSql's `hash` table (unique on `key, field`): an insert that does
    /// nothing on a conflict, or an update or delete whose `WHERE` holds the expected value.
    /// `life` None: `expireat` NULL (Hangfire keeps the row).
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let h = format!("{}.hash", self.schema);
        let secs: Option<f64> = life.map(|l| l.as_secs_f64());
        let expireat = "now() + $4::float8 * interval '1 second'";
        let (sql, params): (_, &[(&(dyn ToSql + Sync), Type)]) = match (expected, new) {
            (None, None) => return Ok(self.get(key, field).await?.is_none()),
            (None, Some(_)) => (
                format!(
                    "INSERT INTO {h} (\"key\", field, \"value\", expireat) VALUES ($1, $2, $3, {expireat}) \
                     ON CONFLICT (\"key\", field) DO NOTHING"
                ),
                &[
                    (&key, Type::TEXT),
                    (&field, Type::TEXT),
                    (&new, Type::TEXT),
                    (&secs, Type::FLOAT8),
                ],
            ),
            (Some(_), Some(_)) => (
                format!(
                    "UPDATE {h} SET \"value\" = $3, expireat = {expireat} \
                     WHERE \"key\" = $1 AND field = $2 AND \"value\" = $5"
                ),
                &[
                    (&key, Type::TEXT),
                    (&field, Type::TEXT),
                    (&new, Type::TEXT),
                    (&secs, Type::FLOAT8),
                    (&expected, Type::TEXT),
                ],
            ),
            (Some(_), None) => (
                format!("DELETE FROM {h} WHERE \"key\" = $1 AND field = $2 AND \"value\" = $3"),
                &[
                    (&key, Type::TEXT),
                    (&field, Type::TEXT),
                    (&expected, Type::TEXT),
                ],
            ),
        };
        // A delete writes no time: no transaction of its own.
        Ok(self.execute(&sql, params, new.is_some()).await? == 1)
    }

    /// Rows already within an hour of that are left alone (a renewal every second would
    /// otherwise rewrite them every second).
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {}.hash SET expireat = now() + $2::float8 * interval '1 second' WHERE \"key\" = $1 \
             AND (expireat IS NULL OR expireat < now() + ($2::float8 - 3600) * interval '1 second')",
            self.schema
        );
        let secs = life.as_secs_f64();
        let params: &[(&(dyn ToSql + Sync), Type)] = &[(&key, Type::TEXT), (&secs, Type::FLOAT8)];
        self.execute(&sql, params, true).await.map(drop)
    }

    /// Hash `jobagent:fence`, field the class, never expiring (where cluster mode has always
    /// kept it on PostgreSQL).
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "INSERT INTO {}.hash AS t (\"key\", field, \"value\", expireat) \
             VALUES ('jobagent:fence', $1, '1', NULL) \
             ON CONFLICT (\"key\", field) DO UPDATE \
             SET \"value\" = (COALESCE(NULLIF(t.\"value\", '')::bigint, 0) + 1)::text, expireat = NULL \
             RETURNING \"value\"",
            self.schema
        );
        self.count(&sql, class, "a class").await
    }

    /// `pg_notify(channel, payload)`.
    async fn wake(&self, channel: &'static str, payload: &str) -> Result<(), StoreError> {
        let params: &[(&(dyn ToSql + Sync), Type)] =
            &[(&channel, Type::TEXT), (&payload, Type::TEXT)];
        self.execute("SELECT pg_notify($1, $2)", params, false)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the test server (JOBAGENT_TEST_DATABASE_URL) with a 1 s `Command Timeout`
    /// enforced by the client only, and one connection; `None` without a test server.
    fn short_store() -> Option<PgStore> {
        let url = std::env::var("JOBAGENT_TEST_DATABASE_URL").ok()?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}command_timeout=1&max_pool_size=1&options=-c%20statement_timeout%3D0"
        );
        let spec = crate::store::pg_connstr::parse(&url).expect("a valid test URL");
        Some(PgStore::open(&spec, "hangfire", pool::Load::Now).expect("opens"))
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
        // The server was told to cancel the abandoned statement: its session stops running
        // it long before the 10 s sleep would end (closing the socket alone would not stop
        // it: a sleeping backend does not read its socket).
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        loop {
            let running: i64 = conn
                .bound(conn.query_typed_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    &[(&pid, Type::INT4)],
                ))
                .await
                .expect("answers")
                .get(0);
            if running == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the timed-out statement still runs on the server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
