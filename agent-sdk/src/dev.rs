//! Not public API: what `jobagent-dev` shares with the agent, so that one connection string
//! means the same server, the same TLS checks and the same schema rules in both (feature
//! `dev`).

use std::ops::Deref;

use crate::store::connstr::SslMode;
use crate::store::postgres::PgStore;

/// A store opened as the agent opens its own (`JOBAGENT_STORE`): the agent's parser (Npgsql
/// strings and `postgres://` URLs), its TLS rules and its bounds.
pub struct DevStore {
    store: PgStore,
    config: tokio_postgres::Config,
    ssl: SslMode,
    /// The string as the center would hold it (Npgsql): the user's own, or rendered from a URL.
    hangfire_db: String,
}

impl std::fmt::Debug for DevStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevStore")
            .field("label", &self.store.label)
            .finish_non_exhaustive()
    }
}

impl DevStore {
    /// Parses `connection` and prepares a pool (nothing is connected yet). The error never
    /// holds the password.
    pub fn open(connection: &str) -> Result<Self, String> {
        let spec = crate::store::connstr::parse(connection).map_err(|e| e.to_string())?;
        let store = PgStore::open(&spec, "hangfire", crate::store::pool::Load::Deferred)?;
        let text = connection.trim();
        let is_url = ["postgres://", "postgresql://"].iter().any(|s| {
            text.get(..s.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(s))
        });
        let hangfire_db = if is_url {
            to_npgsql(&spec.config, spec.ssl)
        } else {
            text.to_owned()
        };
        Ok(Self {
            store,
            config: spec.config,
            ssl: spec.ssl,
            hangfire_db,
        })
    }

    /// The connection string as a center holds it in `HangfireDb` (Npgsql): the one given, or,
    /// for a URL, the same settings rendered (a secret: it holds the password).
    pub fn hangfire_db(&self) -> &str {
        &self.hangfire_db
    }

    /// Whether the server's certificate is checked (`SSL Mode=VerifyCA/VerifyFull`).
    pub fn verifies_certificates(&self) -> bool {
        self.ssl.verifies()
    }

    /// `host:port/database`, for messages (no secret).
    pub fn label(&self) -> &str {
        &self.store.label
    }

    /// The parsed settings (hosts, database, user, password): for rendering the string again.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A connection from the pool, within the store's checkout bound.
    pub async fn client(&self) -> Result<DevClient, String> {
        self.store
            .checkout()
            .await
            .map(DevClient)
            .map_err(|e| format!("cannot connect to the store {}: {e}", self.store.label))
    }
}

/// A pooled connection: a [`tokio_postgres::Client`] by `Deref`.
pub struct DevClient(deadpool_postgres::Object);

impl Deref for DevClient {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.0
    }
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
    crate::store::postgres::probe(connection, sql).await
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

    #[test]
    fn a_url_is_sent_as_the_npgsql_string_it_means_and_parses_back_the_same() {
        let s =
            DevStore::open("postgres://bob:p%3Bw@db.local:6543/app?sslmode=disable").expect("url");
        assert_eq!(s.label(), "db.local:6543/app");
        assert!(
            s.hangfire_db().starts_with(
                "Host=db.local;Port=6543;Database=app;Username=bob;Password=\"p;w\";SSL Mode=Disable;"
            ),
            "{}",
            s.label()
        );
        let back = crate::store::connstr::parse(s.hangfire_db()).expect("round trip");
        assert_eq!(back.config.get_password(), Some(&b"p;w"[..]));
        assert_eq!(back.ssl, SslMode::Disable);
        // An Npgsql string goes as given.
        let given =
            "Server=db.local; Port=6543; Database=\"hang;fire\"; User Id=bob; Password='p''w;d'";
        let s = DevStore::open(given).expect("npgsql");
        assert_eq!(s.hangfire_db(), given);
        assert_eq!(s.config().get_password(), Some(&b"p'w;d"[..]));
    }

    #[test]
    fn refuses_without_leaking() {
        for bad in [
            "Host=h;Username=u;Password=hunter2;Port=x",
            "Host=h;Username=u;Password=\"hunter2",
            "postgres://u:hunter2@h:notaport/db",
            "just-a-word-hunter2",
        ] {
            let e = DevStore::open(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let s = DevStore::open("postgres://u:hunter2@h/db").expect("url");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
