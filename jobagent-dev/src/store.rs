//! The center's store as the user names it: a `postgres://` URL, a libpq `key=value` string,
//! or an Npgsql `Key=Value;...` string (what Hangfire's `HangfireDb` holds).
//!
//! The CLI connects with the parsed settings and sends the agent an Npgsql string, as the
//! center does: the user's own when they gave one, else one rendered from the URL. Only the
//! common Npgsql keys are understood here (`Host`/`Server`, `Port`, `Database`/`DB`, the
//! `Username` synonyms, the `Password` synonyms, `SSL Mode`, `Timeout`, `Application Name`);
//! others are ignored, as Npgsql ignores what it does not need. The agent parses the string it
//! receives with its own, complete parser.
//!
//! Neither errors nor `Debug` output ever hold the password or the whole string.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

/// How long connecting may take when the string sets no timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed store.
#[derive(Clone)]
pub(crate) struct StoreSpec {
    config: Config,
    hangfire_db: String,
    label: String,
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSpec")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl StoreSpec {
    /// Reads any of the three forms.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let (config, hangfire_db) =
            if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                let config = Config::from_str(text)
                    .map_err(|e| format!("the store is not a valid postgres:// URL: {e}"))?;
                let npgsql = to_npgsql(&config);
                (config, npgsql)
            } else if text.contains(';') {
                (from_npgsql(text)?, text.to_owned())
            } else if text.contains('=') {
                match Config::from_str(text) {
                    Ok(config) => {
                        let npgsql = to_npgsql(&config);
                        (config, npgsql)
                    }
                    // `Host=db` alone is an Npgsql string without a `;`.
                    Err(libpq) => match from_npgsql(text) {
                        Ok(config) => (config, text.to_owned()),
                        Err(_) => {
                            return Err(format!(
                                "the store is neither a libpq `key=value` string ({libpq}) nor an \
                                 Npgsql `Key=Value;...` string"
                            ));
                        }
                    },
                }
            } else {
                return Err(
                    "the store must be a postgres:// URL, a libpq `host=... dbname=...` \
                     string, or an Npgsql `Host=...;Database=...` string"
                        .to_owned(),
                );
            };
        if config.get_user().is_none_or(str::is_empty) {
            return Err(
                "the store names no user (Username=... / user=... / postgres://user@...)"
                    .to_owned(),
            );
        }
        if config.get_hosts().is_empty() {
            return Err(
                "the store names no host (Host=... / host=... / postgres://host/...)".into(),
            );
        }
        let label = label(&config);
        Ok(Self {
            config,
            hangfire_db,
            label,
        })
    }

    /// The Npgsql connection string sent as `HangfireDb` (a secret).
    pub(crate) fn hangfire_db(&self) -> &str {
        &self.hangfire_db
    }

    /// `host:port/database`, for messages; never a user's secret.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Opens one connection; the error names the store by its label only.
    pub(crate) async fn connect(&self) -> Result<Client, String> {
        let limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .saturating_mul(u32::try_from(self.config.get_hosts().len()).unwrap_or(1))
            + Duration::from_secs(5);
        let mut config = self.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let attempt = async {
            if config.get_ssl_mode() == SslMode::Require {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
                let (client, connection) = config.connect(tls).await.map_err(|e| describe(&e))?;
                tokio::spawn(async move {
                    // A broken connection shows as failing queries; the caller reconnects.
                    let _ = connection.await;
                });
                Ok::<Client, String>(client)
            } else {
                let (client, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to the store {}: {e}", self.label)),
            Err(_) => Err(format!(
                "cannot connect to the store {}: no answer within {} s",
                self.label,
                limit.as_secs()
            )),
        }
    }
}

/// TLS for `SSL Mode=Require` (and libpq's `sslmode=require`): rustls, the system's trusted
/// roots, full certificate checks.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("TLS is required but no trusted root certificates were found".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn host_text(host: &Host) -> String {
    match host {
        Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        Host::Unix(p) => p.display().to_string(),
    }
}

fn label(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(host_text)
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    if host.contains(':') && !host.starts_with('/') {
        format!("[{host}]:{port}/{db}")
    } else {
        format!("{host}:{port}/{db}")
    }
}

/// Quotes an Npgsql value when it needs it.
fn npgsql_value(v: &str) -> String {
    if v.contains([';', '"', '\'', '='])
        || v.starts_with(char::is_whitespace)
        || v.ends_with(char::is_whitespace)
    {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// Renders the settings as the Npgsql string a center would hold.
fn to_npgsql(config: &Config) -> String {
    let mut parts: Vec<String> = Vec::new();
    let hosts: Vec<String> = config.get_hosts().iter().map(host_text).collect();
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
    match config.get_ssl_mode() {
        SslMode::Disable => parts.push("SSL Mode=Disable".to_owned()),
        SslMode::Require => parts.push("SSL Mode=Require".to_owned()),
        _ => {}
    }
    if let Some(t) = config.get_connect_timeout() {
        parts.push(format!("Timeout={}", t.as_secs().max(1)));
    }
    if let Some(app) = config.get_application_name() {
        parts.push(format!("Application Name={}", npgsql_value(app)));
    }
    parts.join(";")
}

/// Splits an Npgsql string into `(normalized key, value)` pairs: `;`-separated, values
/// optionally quoted with `"` or `'` (a doubled quote is literal), keys lower-cased without
/// spaces or `_`. Errors name the problem, never a value.
fn npgsql_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') if chars.peek() == Some(&'=') => {
                    chars.next();
                    key.push('=');
                }
                Some('=') => break,
                Some(';') | None => {
                    return Err(format!(
                        "the Npgsql store string has a key without `=` (`{}`)",
                        short_key(&key)
                    ));
                }
                Some(c) => key.push(c),
            }
        }
        let key: String = key
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if key.is_empty() {
            return Err("the Npgsql store string has an empty key".to_owned());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        match chars.peek().copied() {
            Some(q @ ('"' | '\'')) => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == q && chars.peek() == Some(&q) => {
                            chars.next();
                            value.push(q);
                        }
                        Some(c) if c == q => break,
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!(
                                "the Npgsql store string has an unclosed quote in `{}`",
                                short_key(&key)
                            ));
                        }
                    }
                }
                for c in chars.by_ref() {
                    if c == ';' {
                        break;
                    }
                    if !c.is_whitespace() {
                        return Err(format!(
                            "the Npgsql store string has text after the quoted value of `{}`",
                            short_key(&key)
                        ));
                    }
                }
            }
            _ => {
                for c in chars.by_ref() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                }
                value = value.trim().to_owned();
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn short_key(key: &str) -> String {
    key.chars().take(40).collect()
}

/// Reads the common keys of an Npgsql string into a connection config.
fn from_npgsql(text: &str) -> Result<Config, String> {
    let mut host: Option<String> = None;
    let mut port: Option<u16> = None;
    let mut db: Option<String> = None;
    let mut user: Option<String> = None;
    let mut password: Option<String> = None;
    let mut ssl: Option<SslMode> = None;
    let mut timeout: Option<u64> = None;
    let mut app: Option<String> = None;
    let mut known = 0usize;
    for (key, value) in npgsql_pairs(text)? {
        // A later pair wins; an empty value restores the default.
        let v = (!value.is_empty()).then(|| value.clone());
        match key.as_str() {
            "host" | "server" => host = v,
            "port" => {
                port = match v {
                    None => None,
                    Some(p) => Some(p.parse::<u16>().map_err(|_| {
                        "the Npgsql store string's `Port` is not a port number".to_owned()
                    })?),
                }
            }
            "database" | "db" => db = v,
            "username" | "userid" | "user" | "uid" => user = v,
            "password" | "pwd" | "psw" => password = v,
            "sslmode" => {
                ssl = match v
                    .as_deref()
                    .map(|s| s.to_ascii_lowercase().replace('-', ""))
                {
                    None => None,
                    Some(m) => Some(match m.as_str() {
                        "disable" | "disabled" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" | "verifyca" | "verifyfull" => SslMode::Require,
                        _ => {
                            return Err(
                                "the Npgsql store string's `SSL Mode` is not Disable, Allow, \
                                 Prefer, Require, VerifyCA or VerifyFull"
                                    .to_owned(),
                            );
                        }
                    }),
                }
            }
            "timeout" => {
                timeout = match v {
                    None => None,
                    Some(t) => Some(t.parse::<u64>().map_err(|_| {
                        "the Npgsql store string's `Timeout` is not a number of seconds".to_owned()
                    })?),
                }
            }
            "applicationname" => app = v,
            _ => continue,
        }
        known += 1;
    }
    if known == 0 {
        return Err(
            "the Npgsql store string names none of Host, Port, Database, Username, \
                    Password"
                .to_owned(),
        );
    }
    let mut config = Config::new();
    let Some(host) = host else {
        return Err("the store names no host (Host=...)".to_owned());
    };
    for h in host.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        // Npgsql allows `host:port` per host.
        match h.rsplit_once(':') {
            Some((name, p)) if !name.contains(':') && !h.starts_with('/') => {
                let p = p
                    .parse::<u16>()
                    .map_err(|_| "the Npgsql store string's `Host` has a bad `:port`".to_owned())?;
                config.host(name);
                config.port(p);
            }
            _ => {
                config.host(h);
                config.port(port.unwrap_or(5432));
            }
        }
    }
    if let Some(db) = &db {
        config.dbname(db);
    }
    if let Some(user) = &user {
        config.user(user);
    }
    if let Some(pw) = &password {
        config.password(pw.as_bytes());
    }
    config.ssl_mode(ssl.unwrap_or(SslMode::Prefer));
    if let Some(t) = timeout.filter(|t| *t > 0) {
        config.connect_timeout(Duration::from_secs(t));
    }
    config.application_name(app.as_deref().unwrap_or("jobagent-dev"));
    Ok(config)
}

/// A database error with its causes: `tokio_postgres::Error` alone says only "db error", and
/// the server's message ("database \"x\" does not exist") is in its source.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_npgsql_strings() {
        let s = StoreSpec::parse(
            "Server=db.local; Port=6543; Database=\"hang;fire\"; User Id=bob; Password='p''w;d'; SSL Mode=Disable; Pooling=true",
        )
        .expect("npgsql");
        assert_eq!(s.label(), "db.local:6543/hang;fire");
        assert_eq!(s.config.get_user(), Some("bob"));
        assert_eq!(s.config.get_password(), Some(&b"p'w;d"[..]));
        assert_eq!(s.config.get_ssl_mode(), SslMode::Disable);
        // The user's own string is what the agent gets.
        assert!(s.hangfire_db().starts_with("Server=db.local"));
        // A single pair without `;` is Npgsql too; an empty password is no password.
        let s = StoreSpec::parse("Host=127.0.0.1;Port=5433;Database=x;Username=postgres;Password=")
            .expect("npgsql");
        assert_eq!(s.config.get_password(), None);
        assert_eq!(s.label(), "127.0.0.1:5433/x");
    }

    #[test]
    fn reads_urls_and_libpq_and_renders_npgsql() {
        let s = StoreSpec::parse("postgres://bob:p%3Bw@db.local:6543/app?sslmode=disable")
            .expect("url");
        assert_eq!(s.label(), "db.local:6543/app");
        assert_eq!(
            s.hangfire_db(),
            "Host=db.local;Port=6543;Database=app;Username=bob;Password=\"p;w\";SSL Mode=Disable"
        );
        let back = from_npgsql(s.hangfire_db()).expect("round trip");
        assert_eq!(back.get_password(), Some(&b"p;w"[..]));
        let s = StoreSpec::parse("host=/var/run/postgresql port=5433 user=postgres dbname=t")
            .expect("libpq");
        assert_eq!(s.label(), "/var/run/postgresql:5433/t");
        assert!(
            s.hangfire_db()
                .starts_with("Host=/var/run/postgresql;Port=5433")
        );
    }

    #[test]
    fn refuses_without_leaking() {
        for bad in [
            "Host=h;Username=u;Password=hunter2;Port=x",
            "Host=h;Username=u;Password=\"hunter2",
            "postgres://u:hunter2@h:notaport/db",
            "just-a-word-hunter2",
            "Password=hunter2;Database=d",
            "Host=h;Password=hunter2",
            "nonsense=hunter2 more=stuff",
        ] {
            let e = StoreSpec::parse(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let s = StoreSpec::parse("postgres://u:hunter2@h/db").expect("url");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
