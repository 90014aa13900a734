//! Not public API: what `jobagent-dev` shares with the agent, so that one connection string
//! means the same server, the same TLS checks and the same schema rules in both, and the CLI
//! reads a store (PostgreSQL, MySQL or Redis) through the agent's own store seam
//! ([`DevReader`](crate::__dev::DevReader)) (feature `dev`).

use std::time::Duration;

use crate::store::pg_connstr::SslMode;
use crate::store::url::{self, PercentError};
use crate::store::{Opening, Store, StoreType, pool};

/// A center's store opened for reading as the agent opens its own (`JOBAGENT_STORE`): the
/// agent's parsers, TLS rules and bounds, on any storage type the agent writes to. Reads go
/// through the agent's store seam, so they see what the center's dashboard shows: a set's
/// members by id (SQL stores) or by rank (Redis).
pub struct DevReader {
    store: Store,
    /// The schema, table prefix or key prefix, as given (not quoted).
    prefix: String,
    /// The string a center would send as `HangfireDb` (a secret).
    hangfire_db: String,
    /// Redis: the database (`Db`).
    db: Option<i64>,
}

impl std::fmt::Debug for DevReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevReader")
            .field("kind", &self.kind())
            .field("label", &self.store.label)
            .field("prefix", &self.prefix)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl DevReader {
    /// Reads `connection` as the agent reads `JOBAGENT_STORE` and prepares its pool (nothing
    /// is connected yet).
    ///
    /// `kind`: the storage type; `None` takes it from a URL's scheme, else PostgreSQL (as the
    /// agent does without `JOBAGENT_STORE_TYPE`). `prefix`: the schema (PostgreSQL), table
    /// prefix (MySQL) or key prefix (Redis); `None` or blank is the type's default. `db`: the
    /// Redis database; `None` takes a `redis://` URL's path or the configuration's
    /// `defaultDatabase`, else 0.
    ///
    /// Errors never hold the password.
    pub fn open(
        kind: Option<StoreType>,
        connection: &str,
        prefix: Option<&str>,
        db: Option<i64>,
    ) -> Result<Self, String> {
        let text = connection.trim();
        let (kind, prefix) = kind_and_prefix(kind, text, prefix);
        let prefix = prefix.to_owned();
        if let Some(url_kind) = StoreType::of_url(text)
            && url_kind != kind
        {
            return Err(format!(
                "the store is a {url_kind} URL, but its type is given as {kind}"
            ));
        }
        let is_url = StoreType::of_url(text).is_some();
        if db.is_some() && kind != StoreType::Redis {
            return Err(format!(
                "a database number (Db) is for Redis stores; this one is {kind}"
            ));
        }
        if let Some(d) = db
            && !(0..=65_535).contains(&d)
        {
            return Err(format!("Db: {d} is not a Redis database number"));
        }
        let (hangfire_db, db) = match kind {
            StoreType::PostgreSql => {
                // The agent's parser also refuses a string that names no user.
                let spec = crate::store::pg_connstr::parse(text).map_err(|e| e.to_string())?;
                let rendered = if is_url {
                    to_npgsql(&spec.config, spec.ssl)
                } else {
                    text.to_owned()
                };
                (rendered, None)
            }
            StoreType::MySql => {
                let rendered = if is_url {
                    mysql_from_url(text)?
                } else {
                    text.to_owned()
                };
                (rendered, None)
            }
            StoreType::Redis => {
                // `Db` as a center sends it: given, else the string's own database, else 0.
                if is_url {
                    let (rendered, url_db) = redis_from_url(text)?;
                    (rendered, Some(db.or(url_db).unwrap_or(0)))
                } else {
                    let own = redis_default_database(text)?;
                    (text.to_owned(), Some(db.or(own).unwrap_or(0)))
                }
            }
            StoreType::Relay => {
                return Err(
                    "a relay is the agent's own store; jobagent-dev sends the center's store itself (give it the database the relay fronts)"
                        .to_owned(),
                );
            }
        };
        let store = Store::open(&Opening {
            kind,
            connection: text,
            prefix: Some(&prefix),
            expire_days: 7.0,
            db,
            from_center: false,
            // The trusted roots are read off the async threads, at the first connection.
            load: pool::Load::Deferred,
            relay_token: None,
        })?;
        Ok(Self {
            store,
            prefix,
            hangfire_db,
            db,
        })
    }

    /// Host and database, for messages (no secret).
    pub fn label(&self) -> &str {
        &self.store.label
    }

    /// The storage type.
    pub fn kind(&self) -> StoreType {
        self.store.kind()
    }

    /// The type's name as the center sends it in `Type`: `postgresql`, `mysql` or `redis`.
    pub fn storage_type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The schema, table prefix or key prefix (`TablePrefix`), as given or the type's default.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Redis: the database sent as `Db`: given, else the URL's path or the configuration's
    /// `defaultDatabase`, else 0. `None` for the other types.
    pub fn db(&self) -> Option<i64> {
        self.db
    }

    /// The connection string as a center holds it in `HangfireDb` (a secret: it holds the
    /// password): the one given, or, for a URL, the same settings rendered in the form the
    /// center's driver reads (Npgsql, MySqlConnector, StackExchange.Redis).
    pub fn hangfire_db(&self) -> &str {
        &self.hangfire_db
    }

    /// Whether the store answers within `within`; the error names the store by its label.
    pub async fn ping(&self, within: Duration) -> Result<(), String> {
        self.store
            .ping(within)
            .await
            .map_err(|e| format!("cannot connect to the store {}: {e}", self.label()))
    }

    /// The agent's own check of Hangfire's tables, as a run's is: a store this process has
    /// reached before and that does not answer in time passes (its reads fail and retry
    /// later); one it never reached fails with the reason.
    pub async fn check_tables(&self) -> Result<(), String> {
        self.store
            .check_tables(tokio::time::Instant::now() + crate::store::FIRST_REACH_WITHIN)
            .await
            .map_err(String::from)
    }

    /// Members `from..from + count` of set `key`, in the order the dashboard shows them.
    pub async fn set_range(
        &self,
        key: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, String> {
        self.store
            .read_set(key, from, count)
            .await
            .map_err(String::from)
    }

    /// One field of hash `key`.
    pub async fn hash_field(&self, key: &str, field: &str) -> Result<Option<String>, String> {
        self.store.read_hash(key, field).await.map_err(String::from)
    }

    /// Every field of hash `key` with its value, in the order they were written.
    pub async fn hash_all(&self, key: &str) -> Result<Vec<(String, String)>, String> {
        self.store.read_hash_all(key).await.map_err(String::from)
    }
}

/// The storage type (`None`: from a URL's scheme, else PostgreSQL, as the agent does without
/// `JOBAGENT_STORE_TYPE`) and the prefix (`None` or blank: the type's default) the dev tools
/// use for `text`.
fn kind_and_prefix<'a>(
    kind: Option<StoreType>,
    text: &str,
    prefix: Option<&'a str>,
) -> (StoreType, &'a str) {
    let kind = kind
        .or_else(|| StoreType::of_url(text))
        .unwrap_or(StoreType::PostgreSql);
    let prefix = prefix
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or(kind.default_prefix());
    (kind, prefix)
}

/// Creates Hangfire's tables that the agent touches (`hash`, `set` and `lock`; MySQL's
/// `<prefix>Hash`, `<prefix>Set` and `<prefix>DistributedLock`) in the store `connection`
/// names, in the shapes the center's storage installs them (Hangfire.PostgreSql's install
/// scripts up to today's columns; Hangfire.MySqlStorage's `Install.sql`), when they are
/// absent: running it again changes nothing. For a laptop's fresh database, so an agent can
/// write there with no center having run. A center's storage creates its other tables itself.
///
/// `kind`: PostgreSQL or MySQL (`None`: from a URL's scheme, else PostgreSQL); Redis needs no
/// tables and a relay is refused, each with the reason. `prefix`: the schema or table prefix
/// (`None` or blank: the type's default). Every step has a deadline (`within` for the
/// connection, the string's `Command Timeout` for the statements). Returns the tables' names.
/// Errors never hold the password.
pub async fn install_tables(
    kind: Option<StoreType>,
    connection: &str,
    prefix: Option<&str>,
    within: Duration,
) -> Result<Vec<String>, String> {
    let text = connection.trim();
    let (kind, prefix) = kind_and_prefix(kind, text, prefix);
    match kind {
        StoreType::PostgreSql => {
            let spec = crate::store::pg_connstr::parse(text).map_err(|e| e.to_string())?;
            let store = crate::store::postgres::PgStore::open(&spec, prefix, pool::Load::Now)?;
            let label = store.label.clone();
            let conn = tokio::time::timeout(within, store.conn())
                .await
                .map_err(|_| {
                    format!(
                        "cannot connect to the store {label}: no answer within {} ms",
                        within.as_millis()
                    )
                })?
                .map_err(|e| format!("cannot connect to the store {label}: {e}"))?;
            let s = &store.schema;
            conn.bound(conn.batch_execute(&pg_tables_sql(s)))
                .await
                .map_err(|e| format!("cannot create Hangfire's tables in {label}: {e}"))?;
            Ok(["hash", "set", "lock"]
                .iter()
                .map(|t| format!("{prefix}.{t}"))
                .collect())
        }
        #[cfg(feature = "mysql")]
        StoreType::MySql => {
            let store = crate::store::mysql::MysqlStore::open(text, Some(prefix), false)?;
            let label = store.label().to_owned();
            let names = ["Hash", "Set", "DistributedLock"].map(|t| format!("{prefix}{t}"));
            tokio::time::timeout(within, store.run_batch(&mysql_tables_sql(prefix)))
                .await
                .map_err(|_| {
                    format!(
                        "cannot create Hangfire's tables in {label}: no answer within {} ms",
                        within.as_millis()
                    )
                })?
                .map_err(|e| format!("cannot create Hangfire's tables in {label}: {e}"))?;
            Ok(names.to_vec())
        }
        #[cfg(not(feature = "mysql"))]
        StoreType::MySql => Err(crate::store::built_without("mysql")),
        StoreType::Redis => Err(
            "a Redis store needs no tables: Hangfire.Redis.StackExchange keeps hashes and sorted sets under its key prefix, created as they are written; point the agent at it as it is"
                .to_owned(),
        ),
        StoreType::Relay => Err(
            "a relay is the agent's own store: run setup against the database the relay fronts (the relay's JOBAGENT_RELAY_STORE)"
                .to_owned(),
        ),
    }
}

/// Hangfire.PostgreSql's `hash`, `set` and `lock` in schema `s` (quoted), as its install
/// scripts leave them today (`Install.v3.sql` creates them; later versions widen ids to
/// `bigint`, keys to `text`, times to `timestamptz`, and add `updatecount` and the lock's
/// `acquired`), each created only when absent.
fn pg_tables_sql(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.hash (
             id bigserial PRIMARY KEY,
             key text NOT NULL,
             field text NOT NULL,
             value text,
             expireat timestamptz,
             updatecount integer NOT NULL DEFAULT 0,
             UNIQUE (key, field));
         CREATE TABLE IF NOT EXISTS {s}.\"set\" (
             id bigserial PRIMARY KEY,
             key text NOT NULL,
             score double precision NOT NULL,
             value text NOT NULL,
             expireat timestamptz,
             updatecount integer NOT NULL DEFAULT 0,
             UNIQUE (key, value));
         CREATE TABLE IF NOT EXISTS {s}.\"lock\" (
             resource text NOT NULL,
             updatecount integer NOT NULL DEFAULT 0,
             acquired timestamptz,
             UNIQUE (resource));"
    )
}

/// Hangfire.MySqlStorage's `<p>Hash`, `<p>Set` and `<p>DistributedLock` (`Install.sql`),
/// each created only when absent.
#[cfg(feature = "mysql")]
fn mysql_tables_sql(prefix: &str) -> String {
    let q = |t: &str| format!("`{}`", format!("{prefix}{t}").replace('`', "``"));
    let ix = |t: &str| format!("`IX_{}`", format!("{prefix}{t}").replace('`', "``"));
    let (hash, set, lock) = (q("Hash"), q("Set"), q("DistributedLock"));
    let (hash_ix, set_ix) = (ix("Hash_Key_Field"), ix("Set_Key_Value"));
    format!(
        "CREATE TABLE IF NOT EXISTS {hash} (
           `Id` int(11) NOT NULL AUTO_INCREMENT,
           `Key` nvarchar(100) NOT NULL,
           `Field` nvarchar(40) NOT NULL,
           `Value` longtext,
           `ExpireAt` datetime(6) DEFAULT NULL,
           PRIMARY KEY (`Id`),
           UNIQUE KEY {hash_ix} (`Key`, `Field`)
         ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;
         CREATE TABLE IF NOT EXISTS {set} (
           `Id` int(11) NOT NULL AUTO_INCREMENT,
           `Key` nvarchar(100) NOT NULL,
           `Value` nvarchar(256) NOT NULL,
           `Score` float NOT NULL,
           `ExpireAt` datetime DEFAULT NULL,
           PRIMARY KEY (`Id`),
           UNIQUE KEY {set_ix} (`Key`, `Value`)
         ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;
         CREATE TABLE IF NOT EXISTS {lock} (
           `Resource` nvarchar(100) NOT NULL,
           `CreatedAt` datetime(6) NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;"
    )
}

/// A StackExchange.Redis configuration string's `defaultDatabase`, if it sets one.
fn redis_default_database(config: &str) -> Result<Option<i64>, String> {
    let mut found = None;
    for option in config.split(',') {
        if let Some((k, v)) = option.split_once('=')
            && k.trim().eq_ignore_ascii_case("defaultDatabase")
        {
            found = Some(
                v.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|d| (0..=65_535).contains(d))
                    .ok_or_else(|| "defaultDatabase is not a database number".to_owned())?,
            );
        }
    }
    Ok(found)
}

/// The parts of a `scheme://[user[:password]@]host[:port][/path][?query]` URL, decoded.
struct UrlParts {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
    query: Vec<(String, String)>,
}

/// Splits a store URL as the agent's PostgreSQL URL parser does. Errors name the part at
/// fault, never its text (a misplaced `@` or `/` can put the password anywhere).
fn url_parts(text: &str) -> Result<UrlParts, String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| "not a URL".to_owned())?;
    let scheme = scheme.to_ascii_lowercase();
    let parts = url::split(rest);
    let user = parts.user.map(|u| percent_decode(u, "user")).transpose()?;
    let password = parts
        .password
        .map(|p| percent_decode(p, "password"))
        .transpose()?;
    let hostport = parts.hostspec;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("the {scheme}:// URL's host has no closing `]`"))?;
        match after {
            "" => (format!("[{addr}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{addr}]"), Some(port)),
                None => return Err(format!("the {scheme}:// URL's host is malformed")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (percent_decode(h, "host")?, Some(p)),
            None => (percent_decode(hostport, "host")?, None),
        }
    };
    if host.is_empty() || host.contains(',') {
        return Err(format!("the {scheme}:// URL must name one host"));
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("the {scheme}:// URL's port is not a port number"))?,
        ),
    };
    let mut params = Vec::new();
    for (i, param) in parts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        let k = percent_decode(k, "parameter name")?;
        let v = percent_decode(v, "parameter").map_err(|_| {
            format!(
                "the {scheme}:// URL's parameter {} has a bad %-escape",
                i + 1
            )
        })?;
        params.push((k, v));
    }
    Ok(UrlParts {
        user: user.filter(|u| !u.is_empty()),
        password,
        host,
        port,
        path: percent_decode(parts.path.unwrap_or(""), "path")?,
        query: params,
        scheme,
    })
}

/// Decodes `%XX` escapes; the result must be UTF-8. Errors name `what`, never the text.
fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    url::percent_decode(s).map_err(|e| match e {
        PercentError::BadEscape => format!("the URL's {what} has a bad %-escape"),
        PercentError::NotUtf8 => format!("the URL's {what} is not UTF-8 once decoded"),
    })
}

/// Renders a `mysql://user:password@host:port/database?ssl-mode=...` URL as the
/// MySqlConnector string a center holds: `server=..;port=..;database=..;uid=..;pwd=..`
/// (values quoted as a .NET connection string quotes them). `ssl-mode` (MySQL's names or
/// MySqlConnector's) becomes `sslmode`; any other parameter is refused, having no agreed
/// meaning in both forms.
fn mysql_from_url(text: &str) -> Result<String, String> {
    let u = url_parts(text)?;
    let mut parts = vec![
        format!("server={}", npgsql_value(&u.host)),
        format!("port={}", u.port.unwrap_or(3306)),
    ];
    if !u.path.is_empty() {
        parts.push(format!("database={}", npgsql_value(&u.path)));
    }
    if let Some(user) = &u.user {
        parts.push(format!("uid={}", npgsql_value(user)));
    }
    if let Some(pw) = &u.password {
        parts.push(format!("pwd={}", npgsql_value(pw)));
    }
    // Parameters are named by position only: an unescaped `?` in a password would put part
    // of it in a parameter's name.
    for (i, (k, v)) in u.query.iter().enumerate() {
        let key = k.to_ascii_lowercase().replace(['-', '_', ' '], "");
        if key != "sslmode" {
            return Err(format!(
                "the {}:// URL's parameter {} is not ssl-mode, the one this CLI translates; give a MySqlConnector connection string (server=..;port=..;...) instead",
                u.scheme,
                i + 1
            ));
        }
        let mode = match v.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "disabled" | "none" => "None",
            "preferred" => "Preferred",
            "required" => "Required",
            "verifyca" => "VerifyCA",
            "verifyidentity" | "verifyfull" => "VerifyFull",
            _ => {
                return Err(format!(
                    "the {}:// URL's ssl-mode is not DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY",
                    u.scheme
                ));
            }
        };
        parts.push(format!("sslmode={mode}"));
    }
    Ok(parts.join(";"))
}

/// Renders a `redis://[user][:password]@host:port/db` (or `rediss://`) URL as the
/// StackExchange.Redis configuration a center holds: `host:port,password=..,
/// defaultDatabase=N,ssl=true`; also the URL's database. StackExchange.Redis cannot escape
/// a comma, so a user or password holding one is refused; so is any query parameter.
fn redis_from_url(text: &str) -> Result<(String, Option<i64>), String> {
    let u = url_parts(text)?;
    if !u.query.is_empty() {
        return Err(format!(
            "the {}:// URL has parameters, which this CLI does not translate; give a StackExchange.Redis configuration string (host:port,password=..) instead",
            u.scheme,
        ));
    }
    let db = match u.path.trim_matches('/') {
        "" => None,
        d => Some(
            d.parse::<i64>()
                .ok()
                .filter(|d| (0..=65_535).contains(d))
                .ok_or_else(|| {
                    format!("the {}:// URL's path must be a database number", u.scheme)
                })?,
        ),
    };
    let mut parts = vec![format!("{}:{}", u.host, u.port.unwrap_or(6379))];
    for (what, value) in [("user", &u.user), ("password", &u.password)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            if v.contains(',') {
                return Err(format!(
                    "the {}:// URL's {what} holds a comma, which a StackExchange.Redis configuration string cannot carry",
                    u.scheme
                ));
            }
            parts.push(format!("{what}={v}"));
        }
    }
    if let Some(db) = db {
        parts.push(format!("defaultDatabase={db}"));
    }
    if u.scheme == "rediss" {
        parts.push("ssl=true".to_owned());
    }
    Ok((parts.join(","), db))
}

/// Quotes an Npgsql connection-string value when it needs it.
pub fn npgsql_value(v: &str) -> String {
    if v.contains([';', '"', '\'', '='])
        || v.starts_with(char::is_whitespace)
        || v.ends_with(char::is_whitespace)
    {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// Renders parsed settings as the Npgsql string a center would hold.
fn to_npgsql(config: &tokio_postgres::Config, ssl: SslMode) -> String {
    use tokio_postgres::config::Host;
    let mut parts: Vec<String> = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("Host={}", npgsql_value(&hosts.join(","))));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("Port={port}"));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("Database={}", npgsql_value(db)));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("Username={}", npgsql_value(user)));
    }
    if let Some(pw) = config.get_password() {
        parts.push(format!(
            "Password={}",
            npgsql_value(&String::from_utf8_lossy(pw))
        ));
    }
    let mode = match ssl {
        SslMode::Disable => "Disable",
        SslMode::Allow => "Allow",
        SslMode::Prefer => "Prefer",
        SslMode::Require => "Require",
        SslMode::VerifyCa => "VerifyCA",
        SslMode::VerifyFull => "VerifyFull",
    };
    parts.push(format!("SSL Mode={mode}"));
    if let Some(t) = config.get_connect_timeout() {
        parts.push(format!("Timeout={}", t.as_secs().max(1)));
    }
    if let Some(app) = config.get_application_name() {
        parts.push(format!("Application Name={}", npgsql_value(app)));
    }
    parts.join(";")
}

/// Opens `connection` as the agent opens a store and runs `sql` (one row, one text column);
/// also says whether the session is encrypted. For the integration tests of TLS modes and
/// session settings.
pub async fn probe_store(connection: &str, sql: &str) -> Result<(bool, String), String> {
    crate::store::postgres::probe(connection, sql)
        .await
        .map_err(String::from)
}

/// An error and its causes, joined with `: ` (a database error's own message is in its
/// source: `tokio_postgres::Error` alone says only "db error").
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain(err)
}

/// The agent's rule for Hangfire schema names.
pub fn check_schema(schema: &str) -> Result<(), String> {
    crate::schema::check_schema(schema)
}

/// A Hangfire schema name quoted for SQL as the agent quotes it.
pub fn quote_schema(schema: &str) -> String {
    crate::schema::quote_ident(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(connection: &str) -> Result<DevReader, String> {
        DevReader::open(None, connection, None, None)
    }

    #[test]
    fn a_url_is_sent_as_the_npgsql_string_it_means_and_parses_back_the_same() {
        let s = pg("postgres://bob:p%3Bw@db.local:6543/app?sslmode=disable").expect("url");
        assert_eq!(s.label(), "db.local:6543/app");
        assert_eq!(s.kind(), StoreType::PostgreSql);
        assert_eq!(s.storage_type_name(), "postgresql");
        assert_eq!(s.prefix(), "hangfire");
        assert_eq!(s.db(), None);
        assert!(
            s.hangfire_db().starts_with(
                "Host=db.local;Port=6543;Database=app;Username=bob;Password=\"p;w\";SSL Mode=Disable;"
            ),
            "{}",
            s.label()
        );
        let back = crate::store::pg_connstr::parse(s.hangfire_db()).expect("round trip");
        assert_eq!(back.config.get_password(), Some(&b"p;w"[..]));
        assert_eq!(back.ssl, SslMode::Disable);
        // An Npgsql string goes as given; a blank prefix is the default, another is kept.
        let given =
            "Server=db.local; Port=6543; Database=\"hang;fire\"; User Id=bob; Password='p''w;d'";
        let s = DevReader::open(Some(StoreType::PostgreSql), given, Some("center"), None)
            .expect("npgsql");
        assert_eq!(s.hangfire_db(), given);
        assert_eq!(s.prefix(), "center");
        let s = DevReader::open(None, given, Some("  "), None).expect("npgsql");
        assert_eq!(s.prefix(), "hangfire");
    }

    #[test]
    fn refuses_without_leaking() {
        for bad in [
            "Host=h;Username=u;Password=hunter2;Port=x",
            "Host=h;Username=u;Password=\"hunter2",
            "Host=h;Password=hunter2",
            "postgres://u:hunter2@h:notaport/db",
            "just-a-word-hunter2",
        ] {
            let e = pg(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        assert!(
            pg("Host=h;Password=p")
                .expect_err("no user")
                .contains("Username")
        );
        let s = pg("postgres://u:hunter2@h/db").expect("url");
        assert!(!format!("{s:?}").contains("hunter2"));
        // Refusals of the other kinds' URLs and options name no secret either.
        for (kind, bad) in [
            (None, "mysql://u:hunter2@h:notaport/db"),
            (None, "mysql://u:hunter2@h/db?hunter2=1"),
            (None, "mysql://u:hun?ter2@h/db"),
            (None, "redis://:hun?ter2@h"),
            (None, "mysql://u:hunter2%zz@h/db"),
            (None, "redis://:hunter2,x@h"),
            (None, "rediss://:hunter2@h/notadb"),
            (Some(StoreType::MySql), "postgres://u:hunter2@h/db"),
            (Some(StoreType::PostgreSql), "redis://:hunter2@h"),
        ] {
            let e = DevReader::open(kind, bad, None, None).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        // A database number is for Redis only, and a real one.
        let e = DevReader::open(None, "postgres://u@h/db", None, Some(1)).expect_err("db");
        assert!(e.contains("Redis"), "{e}");
        let e = DevReader::open(Some(StoreType::Redis), "h:6379", None, Some(70_000))
            .expect_err("db range");
        assert!(e.contains("70000"), "{e}");
    }

    #[test]
    fn renders_a_mysql_url_as_a_mysqlconnector_string() {
        assert_eq!(
            mysql_from_url("mysql://bob:p%3Bw@db.local:3307/hang?ssl-mode=VERIFY_IDENTITY")
                .expect("url"),
            "server=db.local;port=3307;database=hang;uid=bob;pwd=\"p;w\";sslmode=VerifyFull"
        );
        assert_eq!(
            mysql_from_url("mariadb://root@127.0.0.1/hangfire").expect("url"),
            "server=127.0.0.1;port=3306;database=hangfire;uid=root"
        );
        assert_eq!(
            mysql_from_url("mysql://u:pw@[::1]/d?sslmode=disabled").expect("url"),
            "server=[::1];port=3306;database=d;uid=u;pwd=pw;sslmode=None"
        );
        assert!(mysql_from_url("mysql://u@h/d?ssl-mode=sometimes").is_err());
        assert!(mysql_from_url("mysql://u@h/d?pool=1").is_err());
        assert!(mysql_from_url("mysql://u@/d").is_err());
    }

    #[test]
    fn renders_a_redis_url_as_a_stackexchange_configuration() {
        assert_eq!(
            redis_from_url("redis://:s3cret@cache.local:6380/2").expect("url"),
            (
                "cache.local:6380,password=s3cret,defaultDatabase=2".to_owned(),
                Some(2)
            )
        );
        assert_eq!(
            redis_from_url("rediss://app:p%40ss@cache.local").expect("url"),
            (
                "cache.local:6379,user=app,password=p@ss,ssl=true".to_owned(),
                None
            )
        );
        assert_eq!(
            redis_from_url("redis://127.0.0.1/").expect("url"),
            ("127.0.0.1:6379".to_owned(), None)
        );
        assert!(redis_from_url("redis://h/x").is_err());
        assert!(redis_from_url("redis://h/70000").is_err());
        assert!(redis_from_url("redis://h?protocol=resp3").is_err());
        assert!(redis_from_url("redis://:a,b@h").is_err());
        assert_eq!(
            redis_default_database("h:6379,password=x,DefaultDatabase = 3").expect("valid"),
            Some(3)
        );
        assert_eq!(redis_default_database("h:6379").expect("valid"), None);
        assert!(redis_default_database("h,defaultDatabase=x").is_err());
    }
}
