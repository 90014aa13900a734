//! The store's connection string: an Npgsql `key=value;...` string (what Hangfire's
//! `HangfireDb` holds) or a `postgres://` / `postgresql://` URL, read into a [`ConnSpec`].
//!
//! The pairs are read by the shared ADO.NET tokenizer ([`super::connstr`]); Npgsql's keys are
//! case-insensitive, with spaces (and `_`) optional, and have synonyms (`Server` for `Host`,
//! `UID` for `Username`, ...); a later pair overrides an earlier one and an empty value
//! restores the default. Keys Npgsql knows but this agent does not use, and unknown keys, are
//! ignored and listed in [`ConnSpec::ignored_keys`].
//!
//! No error or `Debug` output ever holds the password or the whole string.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::Host;

use crate::store::connstr::{
    self, ConnStrError, HostPortError, Table, boolean, count, normalize, percent_decode, shown,
    split_host_port,
};
use crate::store::url::{self, password_tag};

/// The `application_name` sent when the string names none.
pub(crate) const DEFAULT_APPLICATION_NAME: &str = "rust-job-agent";
/// Pool bound when the string names no `Maximum Pool Size`.
pub(crate) const DEFAULT_MAX_POOL: usize = 16;
/// The largest pool this agent opens per store, whatever the string asks.
pub(crate) const MAX_POOL_LIMIT: usize = 64;
const DEFAULT_PORT: u16 = 5432;
/// Npgsql's default `Timeout` (connect), seconds.
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 15;
/// Npgsql's largest `Timeout`, seconds.
const MAX_CONNECT_TIMEOUT_SECS: u64 = 1024;
/// The largest `Command Timeout`, pool size and keepalive times (.NET's `int`).
const MAX_INT: u64 = i32::MAX as u64;
/// Npgsql's default `Command Timeout`, seconds.
const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 30;
/// TCP keepalive, on by default (Npgsql leaves it off and the OS waits 2 h before the first
/// probe): an idle connection whose peer vanished is noticed within
/// `idle + interval × retries` = 25 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`, Linux): a peer that vanished mid-request is noticed this fast.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// How TLS is used, as Npgsql's `SSL Mode` (default `Prefer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server insists (treated like `Prefer`).
    Allow,
    /// TLS when the server offers it, plain otherwise; the certificate is not verified.
    Prefer,
    /// TLS always; the certificate is not verified (Npgsql 8 semantics).
    Require,
    /// TLS always; the certificate chain must lead to a trusted root, any host name.
    VerifyCa,
    /// TLS always; trusted chain and a certificate valid for the host name.
    VerifyFull,
}

impl SslMode {
    /// Parses Npgsql's names (and libpq's `verify-full` spellings, and Npgsql's enum numbers).
    fn parse(value: &str) -> Option<Self> {
        let v: String = value
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Some(match v.as_str() {
            "disable" | "disabled" | "0" => SslMode::Disable,
            "allow" | "1" => SslMode::Allow,
            "prefer" | "2" => SslMode::Prefer,
            "require" | "3" => SslMode::Require,
            "verifyca" | "4" => SslMode::VerifyCa,
            "verifyfull" | "5" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate is checked at all.
    pub(crate) fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The `tokio_postgres` mode: whether TLS is attempted and whether it is required.
    pub(crate) fn to_tokio(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// A parsed connection string: what to connect to and how.
#[derive(Clone)]
pub(crate) struct ConnSpec {
    /// Hosts (one port per host), database (defaults to the user), user, password,
    /// `application_name`, connect timeout, keepalives, options, and the `tokio_postgres`
    /// TLS mode that matches `ssl`.
    pub(crate) config: tokio_postgres::Config,
    /// The `SSL Mode` asked for.
    pub(crate) ssl: SslMode,
    /// `Trust Server Certificate`: no certificate check even where `ssl` would check.
    pub(crate) trust_server_certificate: bool,
    /// `Root Certificate`: a PEM file of CA certificates to trust instead of the system's.
    pub(crate) root_certificate: Option<PathBuf>,
    /// The settings present that name a file on the agent's machine (`Root Certificate`,
    /// `SSL Certificate`, `SSL Key`, `Passfile`), by canonical name. A store the center
    /// sends may not name any: the agent does not read files a caller chooses.
    pub(crate) file_settings: Vec<&'static str>,
    /// Pool bound: `Maximum Pool Size`, default 16, within 1..=64.
    pub(crate) max_pool: usize,
    /// `Search Path`, set on every new connection.
    pub(crate) search_path: Option<String>,
    /// `Command Timeout`: default 30 s (Npgsql's); `None` when the string sets 0 (no limit).
    pub(crate) command_timeout: Option<Duration>,
    /// Keys that were present but are not used by this agent (names only, for a debug log).
    pub(crate) ignored_keys: Vec<String>,
}

impl ConnSpec {
    /// A key equal for two strings that reach the same server(s), database, user, password
    /// and TLS settings (plus search path and options, which change the session), however
    /// they are spelled. The password appears only as a keyed hash whose key is random per
    /// process, so the identity is safe to log and cannot be reversed.
    #[cfg_attr(not(any(test, feature = "fuzz")), allow(dead_code))]
    pub(crate) fn identity(&self) -> String {
        let mut id = String::new();
        for (i, (host, port)) in self.hosts().iter().enumerate() {
            if i > 0 {
                id.push(',');
            }
            id.push_str(&format!("{:?}:{port}", host.to_lowercase()));
        }
        let password = match self.config.get_password() {
            None => "none".to_owned(),
            Some(pw) => password_tag(pw),
        };
        id.push_str(&format!(
            "/{:?}?user={:?}&password={password}&ssl={:?}&trust={}&root={:?}&search_path={:?}&options={:?}",
            self.config.get_dbname().unwrap_or(""),
            self.config.get_user().unwrap_or(""),
            self.ssl,
            self.trust_server_certificate,
            self.root_certificate,
            self.search_path,
            self.config.get_options(),
        ));
        id
    }

    /// Each host with its port, as text (Unix socket directories as paths).
    pub(crate) fn hosts(&self) -> Vec<(String, u16)> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    Host::Unix(path) => path.display().to_string(),
                };
                let port = ports
                    .get(i)
                    .or_else(|| ports.first())
                    .copied()
                    .unwrap_or(DEFAULT_PORT);
                (name, port)
            })
            .collect()
    }
}

// Written by hand, not derived: the password lives in `tokio_postgres::Config`, whose own
// `Debug` hides it only by that crate's choice (as `_`, not documented), and would add fields
// this one leaves out (`options`, free text from the string).
impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("hosts", &self.hosts())
            .field("database", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field(
                "password",
                &self.config.get_password().map(|_| "<redacted>"),
            )
            .field("application_name", &self.config.get_application_name())
            .field("connect_timeout", &self.config.get_connect_timeout())
            .field("ssl", &self.ssl)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("root_certificate", &self.root_certificate)
            .field("file_settings", &self.file_settings)
            .field("max_pool", &self.max_pool)
            .field("search_path", &self.search_path)
            .field("command_timeout", &self.command_timeout)
            .field("ignored_keys", &self.ignored_keys)
            .finish()
    }
}

/// Reads an Npgsql connection string or a `postgres://` / `postgresql://` URL.
pub(crate) fn parse(s: &str) -> Result<ConnSpec, ConnStrError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ConnStrError::general("it is empty"));
    }
    let mut settings = Settings::default();
    match url_rest(s) {
        Some(rest) => parse_url(rest, &mut settings)?,
        None => parse_npgsql(s, &mut settings)?,
    }
    settings.build()
}

/// The part after `postgres://` or `postgresql://` (scheme case-insensitive), if `s` is a URL.
fn url_rest(s: &str) -> Option<&str> {
    ["postgresql://", "postgres://"]
        .iter()
        .find_map(|scheme| url::after_scheme(s, scheme))
}

/// The settings this agent reads, by canonical key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Host,
    Port,
    Database,
    Username,
    Password,
    SslMode,
    TrustServerCertificate,
    RootCertificate,
    Timeout,
    CommandTimeout,
    Pooling,
    MinPoolSize,
    MaxPoolSize,
    SearchPath,
    ApplicationName,
    Keepalive,
    TcpKeepalive,
    TcpKeepaliveTime,
    Options,
}

/// Npgsql's keys (`NpgsqlConnectionStringBuilder`), a few ADO.NET habits, and libpq's URL
/// parameter names, normalized (upper case, no spaces or `_`).
#[rustfmt::skip]
const KEYS: &Table<Key> = &[
    ("Host", &["HOST", "SERVER", "DATASOURCE"], Key::Host),
    ("Port", &["PORT"], Key::Port),
    ("Database", &["DATABASE", "DB", "INITIALCATALOG", "DBNAME"], Key::Database),
    ("Username", &["USERNAME", "USERID", "USER", "UID"], Key::Username),
    ("Password", &["PASSWORD", "PWD", "PSW"], Key::Password),
    ("SSL Mode", &["SSLMODE"], Key::SslMode),
    ("Trust Server Certificate", &["TRUSTSERVERCERTIFICATE"], Key::TrustServerCertificate),
    ("Root Certificate", &["ROOTCERTIFICATE", "SSLROOTCERT"], Key::RootCertificate),
    ("Timeout", &["TIMEOUT", "CONNECTTIMEOUT", "CONNECTIONTIMEOUT"], Key::Timeout),
    ("Command Timeout", &["COMMANDTIMEOUT"], Key::CommandTimeout),
    ("Pooling", &["POOLING"], Key::Pooling),
    ("Minimum Pool Size", &["MINIMUMPOOLSIZE", "MINPOOLSIZE"], Key::MinPoolSize),
    ("Maximum Pool Size", &["MAXIMUMPOOLSIZE", "MAXPOOLSIZE"], Key::MaxPoolSize),
    ("Search Path", &["SEARCHPATH"], Key::SearchPath),
    ("Application Name", &["APPLICATIONNAME"], Key::ApplicationName),
    ("Keepalive", &["KEEPALIVE"], Key::Keepalive),
    ("Tcp Keepalive", &["TCPKEEPALIVE", "KEEPALIVES"], Key::TcpKeepalive),
    ("Tcp Keepalive Time", &["TCPKEEPALIVETIME", "KEEPALIVESIDLE"], Key::TcpKeepaliveTime),
    ("Options", &["OPTIONS"], Key::Options),
];

/// Npgsql's settings that name a file and that this agent does not read.
#[rustfmt::skip]
const UNUSED_FILES: &Table<()> = &[
    ("SSL Certificate", &["SSLCERTIFICATE", "SSLCERT", "CLIENTCERTIFICATE"], ()),
    ("SSL Key", &["SSLKEY", "CLIENTKEY"], ()),
    ("Passfile", &["PASSFILE"], ()),
];

impl Key {
    /// The canonical (Npgsql display) name, used in errors.
    fn name(self) -> &'static str {
        KEYS.iter()
            .find(|(_, _, key)| *key == self)
            .map_or("?", |(name, _, _)| name)
    }

    /// Looks a key up as written: case-insensitive, spaces and `_` ignored, synonyms.
    fn lookup(written: &str) -> Option<Key> {
        connstr::lookup(KEYS, &normalize(written, &['_'])).map(|(_, key)| key)
    }
}

/// Values by key as read; a later value replaces an earlier one, an empty one removes it.
#[derive(Default)]
struct Settings {
    values: BTreeMap<Key, String>,
    ignored: Vec<String>,
    /// Npgsql settings naming a file that this agent does not use (client certificates,
    /// pass files), as set, by canonical name.
    unused_files: BTreeMap<&'static str, bool>,
}

/// The most ignored key names kept for the debug log, and the most characters of each.
const MAX_IGNORED: usize = 32;
const MAX_IGNORED_CHARS: usize = 40;

impl Settings {
    fn put(&mut self, written: &str, value: String) {
        if let Some((name, ())) = connstr::lookup(UNUSED_FILES, &normalize(written, &['_'])) {
            self.unused_files.insert(name, !value.is_empty());
        }
        match Key::lookup(written) {
            Some(key) => self.put_key(key, value),
            None => {
                let name: String = written.trim().chars().take(MAX_IGNORED_CHARS).collect();
                if self.ignored.len() < MAX_IGNORED && !self.ignored.contains(&name) {
                    self.ignored.push(name);
                }
            }
        }
    }

    fn put_key(&mut self, key: Key, value: String) {
        if value.is_empty() {
            self.values.remove(&key);
        } else {
            self.values.insert(key, value);
        }
    }

    fn get(&self, key: Key) -> Option<&str> {
        self.values.get(&key).map(String::as_str)
    }

    /// `key`'s value as `read` reads it (naming the key in errors), if set.
    fn read<T>(
        &self,
        key: Key,
        read: impl FnOnce(&'static str, &str) -> Result<T, ConnStrError>,
    ) -> Result<Option<T>, ConnStrError> {
        self.get(key).map(|v| read(key.name(), v)).transpose()
    }

    /// `key`'s value as a whole number within `0..=max`, if set.
    fn count(&self, key: Key, max: u64) -> Result<Option<u64>, ConnStrError> {
        self.read(key, |name, v| count(name, v, max))
    }

    fn build(self) -> Result<ConnSpec, ConnStrError> {
        let mut config = tokio_postgres::Config::new();

        let default_port = self.read(Key::Port, connstr::port)?.unwrap_or(DEFAULT_PORT);
        let Some(host_list) = self.get(Key::Host) else {
            return Err(ConnStrError::general(
                "no `Host` given (e.g. `Host=db.example.com;Port=5432;...`)",
            ));
        };
        for (host, port) in parse_hosts(host_list)? {
            config.host(host);
            config.port(port.unwrap_or(default_port));
        }

        let Some(user) = self.get(Key::Username) else {
            return Err(ConnStrError::general(
                "no `Username` given (e.g. `Username=hangfire`)",
            ));
        };
        config.user(user);
        config.dbname(self.get(Key::Database).unwrap_or(user));
        if let Some(password) = self.get(Key::Password) {
            config.password(password);
        }
        config.application_name(
            self.get(Key::ApplicationName)
                .unwrap_or(DEFAULT_APPLICATION_NAME),
        );

        let ssl = match self.get(Key::SslMode) {
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(v).ok_or_else(|| {
                at(
                    Key::SslMode,
                    format!(
                        "`{}` is not one of Disable, Allow, Prefer, Require, VerifyCA, VerifyFull",
                        shown(v)
                    ),
                )
            })?,
        };
        config.ssl_mode(ssl.to_tokio());
        let trust_server_certificate =
            self.read(Key::TrustServerCertificate, boolean)? == Some(true);
        if trust_server_certificate && ssl.verifies() {
            return Err(at(
                Key::TrustServerCertificate,
                format!(
                    "`true` contradicts `SSL Mode={ssl:?}`, which verifies the certificate; drop one of them"
                ),
            ));
        }
        let root_certificate = self.get(Key::RootCertificate).map(PathBuf::from);
        let mut file_settings = Vec::new();
        if root_certificate.is_some() {
            file_settings.push(Key::RootCertificate.name());
        }
        file_settings.extend(
            self.unused_files
                .iter()
                .filter(|(_, set)| **set)
                .map(|(name, _)| *name),
        );

        let connect_timeout = (self.count(Key::Timeout, MAX_CONNECT_TIMEOUT_SECS)?)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        if connect_timeout > 0 {
            config.connect_timeout(Duration::from_secs(connect_timeout));
        }
        let command_timeout =
            (self.count(Key::CommandTimeout, MAX_INT)?).unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS);
        let command_timeout = (command_timeout > 0).then(|| Duration::from_secs(command_timeout));

        // Validated as Npgsql would, then not used: this agent always pools.
        self.read(Key::Pooling, boolean)?;
        self.count(Key::MinPoolSize, 1024)?;
        let max_pool = (self.count(Key::MaxPoolSize, MAX_INT)?)
            .map_or(DEFAULT_MAX_POOL, |n| {
                usize::try_from(n).unwrap_or(MAX_POOL_LIMIT)
            })
            .clamp(1, MAX_POOL_LIMIT);

        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        if let Some(secs) = self.count(Key::Keepalive, MAX_INT)?.filter(|s| *s > 0) {
            config.keepalives(true);
            config.keepalives_idle(Duration::from_secs(secs));
        }
        if let Some(on) = self.read(Key::TcpKeepalive, boolean)? {
            config.keepalives(on);
        }
        if let Some(secs) = self
            .count(Key::TcpKeepaliveTime, MAX_INT)?
            .filter(|s| *s > 0)
        {
            config.keepalives_idle(Duration::from_secs(secs));
        }
        // The string's own `Options` go to the server as the `options` startup parameter, as
        // Npgsql sends them. PgBouncer refuses that parameter ("unsupported startup
        // parameter: options") unless its `ignore_startup_parameters` lists it: behind
        // PgBouncer, leave `Options` out. The agent adds none of its own.
        if let Some(v) = self.get(Key::Options) {
            config.options(v);
        }
        let search_path = self
            .get(Key::SearchPath)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);

        Ok(ConnSpec {
            config,
            ssl,
            trust_server_certificate,
            root_certificate,
            file_settings,
            max_pool,
            search_path,
            command_timeout,
            ignored_keys: self.ignored,
        })
    }
}

fn at(key: Key, reason: impl std::fmt::Display) -> ConnStrError {
    ConnStrError::at(key.name(), reason)
}

/// `Host`: hosts separated by `,`, each `name`, `name:port`, `[v6]`, `[v6]:port`, a bare IPv6
/// address (two or more `:`), or a Unix socket directory (starting with `/`).
fn parse_hosts(value: &str) -> Result<Vec<(String, Option<u16>)>, ConnStrError> {
    let mut hosts = Vec::new();
    for part in value.split(',').map(str::trim) {
        let (name, port) = match part.starts_with('/') {
            true => (part, None),
            false => split_host_port(part).map_err(|e| match e {
                HostPortError::Unclosed => at(
                    Key::Host,
                    format!("`{}` opens `[` without closing it", shown(part)),
                ),
                HostPortError::After(after) => at(
                    Key::Host,
                    format!("unexpected `{}` after `]`", shown(after)),
                ),
            })?,
        };
        let port = port
            .map(|p| connstr::port(Key::Host.name(), p))
            .transpose()?;
        if name.is_empty() {
            return Err(at(Key::Host, "a host name in the list is empty"));
        }
        hosts.push((name.to_owned(), port));
    }
    Ok(hosts)
}

/// Reads `key=value` pairs as Npgsql (ADO.NET `DbConnectionStringBuilder`) does.
fn parse_npgsql(s: &str, settings: &mut Settings) -> Result<(), ConnStrError> {
    connstr::pairs(
        s,
        |written| Key::lookup(written).map(Key::name),
        |pair| {
            settings.put(&pair.key, pair.value);
            Ok(())
        },
    )
}

/// Reads `[user[:password]@][host[:port][,host[:port]...]][/database][?param=value&...]`,
/// percent-decoded; parameters take libpq names (`sslmode`, `connect_timeout`,
/// `application_name`, ...) or Npgsql ones.
fn parse_url(rest: &str, settings: &mut Settings) -> Result<(), ConnStrError> {
    let parts = url::split(rest);
    let hostspec = Some(parts.hostspec).filter(|h| !h.is_empty());
    let path = parts.path.filter(|p| !p.is_empty());
    for (key, part) in [
        (Key::Username, parts.user),
        (Key::Password, parts.password),
        (Key::Host, hostspec),
        (Key::Database, path),
    ] {
        if let Some(part) = part {
            settings.put_key(key, percent_decode(part, key.name())?);
        }
    }
    if let Some(query) = parts.query {
        for (i, param) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
            let Some((k, v)) = param.split_once('=') else {
                return Err(ConnStrError::general(format!(
                    "URL parameter {} has no `=`",
                    i + 1
                )));
            };
            let key = percent_decode(k, Key::Options.name()).map_err(|_| {
                ConnStrError::general(format!("URL parameter {} has a bad %-escape", i + 1))
            })?;
            let value = match Key::lookup(&key) {
                Some(known) => percent_decode(v, known.name())?,
                None => String::new(),
            };
            settings.put(&key, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::connstr::tests::{Fails, Gives, Want, check, check_identities, never_panics};

    /// A field of a spec as the tables name it.
    fn field(spec: &ConnSpec, name: &str) -> String {
        let (c, hosts) = (&spec.config, spec.hosts());
        let opt = |v: Option<&str>| v.unwrap_or("None").to_owned();
        match name {
            "hosts" => hosts
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            "host" => hosts[0].0.clone(),
            "port" => hosts[0].1.to_string(),
            "ports_per_host" => (c.get_ports().len() == c.get_hosts().len()).to_string(),
            "db" => opt(c.get_dbname()),
            "user" => opt(c.get_user()),
            "password" => opt(c
                .get_password()
                .map(|p| String::from_utf8_lossy(p))
                .as_deref()),
            "ssl" => format!("{:?}", spec.ssl),
            "tokio_ssl" => format!("{:?}", c.get_ssl_mode()),
            "trust" => spec.trust_server_certificate.to_string(),
            "root" => format!("{:?}", spec.root_certificate),
            "max_pool" => spec.max_pool.to_string(),
            "connect_timeout" => format!("{:?}", c.get_connect_timeout()),
            "command_timeout" => format!("{:?}", spec.command_timeout),
            "app" => opt(c.get_application_name()),
            "search_path" => opt(spec.search_path.as_deref()),
            "keepalives" => c.get_keepalives().to_string(),
            "keepalives_idle" => format!("{:?}", c.get_keepalives_idle()),
            "options" => opt(c.get_options()),
            "ignored" => spec.ignored_keys.join(","),
            "redacted" => format!("{spec:?}").contains("<redacted>").to_string(),
            "echo" => format!("{spec:?} {}", spec.identity()),
            _ => panic!("no field `{name}`"),
        }
    }

    #[rustfmt::skip]
    const ROWS: &[(&str, Want)] = &[
        // A Hangfire string, with the defaults.
        ("Host=db.local;Port=5433;Database=hangfire;Username=hf;Password=s3cret", Gives(&[
            ("hosts", "db.local:5433"), ("db", "hangfire"), ("user", "hf"), ("password", "s3cret"),
            ("ssl", "Prefer"), ("tokio_ssl", "Prefer"), ("trust", "false"), ("max_pool", "16"),
            ("command_timeout", "Some(30s)"), ("connect_timeout", "Some(15s)"),
            ("app", "rust-job-agent"), ("search_path", "None"), ("ignored", "")])),
        // Key synonyms and spellings.
        ("{Host|Server|Data Source|HOST|data_source| server }=h1;Username=u", Gives(&[("host", "h1")])),
        ("Host=h;Username=u;{Database|DB|Initial Catalog|initialcatalog|dbname}=d1", Gives(&[("db", "d1")])),
        ("Host=h;{Username|User Id|User Name|UserID|User|UID|user_id}=bob",
            Gives(&[("user", "bob"), ("db", "bob")])),
        ("Host=h;Username=u;{Password|PWD|psw|pass word}=pw1", Gives(&[("password", "pw1")])),
        // SSL modes.
        ("Host=h;Username=u;SSL Mode=Require", Gives(&[("ssl", "Require")])),
        ("Host=h;Username=u;SslMode=disable", Gives(&[("ssl", "Disable")])),
        ("Host=h;Username=u;sslmode=verify-full", Gives(&[("ssl", "VerifyFull")])),
        ("Host=h;Username=u;ssl_mode=VerifyCA", Gives(&[("ssl", "VerifyCa")])),
        ("Host=h;Username=u;SSL Mode=Allow", Gives(&[("ssl", "Allow")])),
        ("Host=h;Username=u;SSL Mode=3", Gives(&[("ssl", "Require")])),
        ("Host=h;Username=u;SSL Mode=Disable", Gives(&[("tokio_ssl", "Disable")])),
        ("Host=h;Username=u;SSL Mode=VerifyFull", Gives(&[("tokio_ssl", "Require")])),
        // Other settings.
        ("Host=h;Username=u;Timeout=5;Command Timeout=0;Pooling=false;\
          Maximum Pool Size=8;Minimum Pool Size=1;Search Path=hangfire, public;\
          Application Name=center-agent;Keepalive=30;Trust Server Certificate=true;\
          Root Certificate=/etc/ca.pem;Options=-c statement_timeout=5000", Gives(&[
            ("connect_timeout", "Some(5s)"), ("command_timeout", "None"), ("max_pool", "8"),
            ("search_path", "hangfire, public"), ("app", "center-agent"), ("keepalives", "true"),
            ("keepalives_idle", "30s"), ("trust", "true"), ("root", r#"Some("/etc/ca.pem")"#),
            ("options", "-c statement_timeout=5000")])),
        ("Host=h;Username=u;Timeout=0", Gives(&[("connect_timeout", "None")])),
        ("Host=h;Username=u;Max Pool Size=1000", Gives(&[("max_pool", "64")])),
        ("Host=h;Username=u;MaxPoolSize=0", Gives(&[("max_pool", "1")])),
        ("Host=h;Username=u;Command Timeout=12", Gives(&[("command_timeout", "Some(12s)")])),
        ("Host=h;Username=u;Tcp Keepalive=false", Gives(&[("keepalives", "false")])),
        // Quoting; `==` in a key is a literal `=`; a later pair wins; an empty value resets.
        (r#"Host=h;Username=u;Password="a;b""c=d";Application Name='it''s; mine'"#,
            Gives(&[("password", r#"a;b"c=d"#), ("app", "it's; mine")])),
        (r#"Host=h;Username=u;Password='x"y';Search Path="a'b""#,
            Gives(&[("password", r#"x"y"#), ("search_path", "a'b")])),
        ("  Host = h ;  Username =  u u ; Password = \"  padded  \"  ; ;; ",
            Gives(&[("host", "h"), ("user", "u u"), ("password", "  padded  ")])),
        ("Host=h;Username=u;Odd==Key=1;Port=1;Port=2;Timeout=3;Timeout=",
            Gives(&[("ignored", "Odd=Key"), ("port", "2"), ("connect_timeout", "Some(15s)")])),
        ("Host=h;Username=u;Password=a=b", Gives(&[("password", "a=b")])),
        // Unknown keys are ignored and listed.
        ("Host=h;Username=u;Enlist=true;Frobnicate=yes;No Reset On Close=true",
            Gives(&[("ignored", "Enlist,Frobnicate,No Reset On Close")])),
        // The URL form.
        ("postgresql://us%40er:p%3Ass%2Fw@h1:5433,h2/hang%20fire\
          ?sslmode=verify-full&application_name=x&connect_timeout=5&search_path=hf&foo=bar", Gives(&[
            ("user", "us@er"), ("password", "p:ss/w"), ("hosts", "h1:5433,h2:5432"),
            ("db", "hang fire"), ("ssl", "VerifyFull"), ("app", "x"),
            ("connect_timeout", "Some(5s)"), ("search_path", "hf"), ("ignored", "foo")])),
        ("POSTGRES://u@[::1]:6000/db", Gives(&[("hosts", "::1:6000"), ("password", "None")])),
        ("postgres:///db?host=%2Fvar%2Frun%2Fpostgresql&user=me",
            Gives(&[("host", "/var/run/postgresql"), ("user", "me")])),
        ("postgres://u:%zz@h/db", Fails(&["@Password"])),
        ("postgres://u@h/db?sslmode", Fails(&["parameter 1"])),
        ("postgres://u@h:99999/db", Fails(&["@Host"])),
        // Several hosts.
        ("Host=h1:5433, h2 ,[::1]:6000,[fe80::1],::2,/tmp/pg;Port=5444;Username=u", Gives(&[
            ("hosts", "h1:5433,h2:5444,::1:6000,fe80::1:5444,::2:5444,/tmp/pg:5444"),
            ("ports_per_host", "true")])),
        ("Host=h1,,h2;Username=u", Fails(&["@Host"])),
        ("Host=[::1;Username=u", Fails(&["@Host"])),
        ("Host=[::1]x;Username=u", Fails(&["@Host"])),
        // Errors name the key.
        ("Host=h;Username=u;Port=abc", Fails(&["@Port"])),
        ("Host=h;Username=u;Port=0", Fails(&["@Port"])),
        ("Host=h;Username=u;Port=70000", Fails(&["@Port"])),
        ("Host=h:abc;Username=u", Fails(&["@Host"])),
        ("Host=h;Username=u;Timeout=-1", Fails(&["@Timeout"])),
        ("Host=h;Username=u;Timeout=2000", Fails(&["@Timeout"])),
        ("Host=h;Username=u;Command Timeout=soon", Fails(&["@Command Timeout"])),
        ("Host=h;Username=u;Maximum Pool Size=-3", Fails(&["@Maximum Pool Size"])),
        ("Host=h;Username=u;Pooling=maybe", Fails(&["@Pooling"])),
        ("Host=h;Username=u;SSL Mode=Sometimes", Fails(&["@SSL Mode"])),
        ("Host=h;Username=u;SSL Mode=VerifyFull;Trust Server Certificate=true",
            Fails(&["@Trust Server Certificate"])),
        ("", Fails(&["empty"])),
        ("Username=u", Fails(&["Host"])),
        ("Host=h", Fails(&["Username"])),
        ("Host=h;garbage;Username=u", Fails(&["pair 2", "!garbage"])),
        ("Host=h;=x;Username=u", Fails(&["empty key"])),
        // The password never shows (each row's secret is checked absent).
        ("Host=h;Username=u;Password=Sup3r-S3cret", Gives(&[("redacted", "true")])),
        ("Host=h;Username=u;PWD=\"Sup3r-S3cret\"", Gives(&[("redacted", "true")])),
        ("postgres://u:Sup3r-S3cret@h/db", Gives(&[("redacted", "true")])),
        ("Host=h;Username=u;Password=Sup3r-S3cret;Port=x", Fails(&[])),
        ("Host=h;Username=u;Password=\"Sup3r-S3cret", Fails(&[])),
        ("Host=h;Username=u;Password=\"Sup3r-S3cret\" tail", Fails(&[])),
        ("Host=h;Username=u;Password=Sup3r-S3cret;Sup3r-S3cret", Fails(&[])),
        ("Host=h;Username=u;Password=ab;Sup3r-S3cret=\"x", Fails(&[])),
        ("Host=h;Username=u;Password=Sup3r-S3cret;SSL Mode=nope", Fails(&[])),
        ("Password=Sup3r-S3cret", Fails(&[])),
        ("postgres://u:Sup3r-S3cret%@h/db", Fails(&[])),
        ("postgres://u:Sup3r-S3cret@h:bad/db", Fails(&[])),
    ];

    #[test]
    fn table() {
        check(ROWS, parse, field);
    }

    #[test]
    fn identity_follows_meaning_not_spelling() {
        let id = |s: &str| parse(s).map_or_else(|e| panic!("{s}: {e}"), |spec| spec.identity());
        let a = "Host=DB.local;Port=5432;Database=hf;Username=u;Password=p1;SSL Mode=Require";
        #[rustfmt::skip]
        let rows = [
            ("server=db.local; uid=u ; PWD='p1' ; DB=hf ; sslmode=require; Timeout=3; Maximum Pool Size=4", true),
            ("postgresql://u:p1@db.local:5432/hf?sslmode=require", true),
            ("Host=db.local;Database=hf;Username=u;Password=p2;SSL Mode=Require", false),
            ("Host=db.local;Database=hf;Username=u;SSL Mode=Require", false),
            ("Host=db.local;Database=hf;Username=u;Password=p1;SSL Mode=VerifyFull", false),
            ("Host=db.local;Database=hf2;Username=u;Password=p1;SSL Mode=Require", false),
            ("Host=db.local:5433;Database=hf;Username=u;Password=p1;SSL Mode=Require", false),
        ];
        check_identities(id, a, &rows);
        assert!(!id(a).contains("p1"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        never_panics(
            parse,
            &[
                r#"Host="h;x"'';Username='u''';Password="p""";=;==;;'"#,
                "postgres://a:b@[::1]:5/d?x=%&y=%4&sslmode=%ZZ&&=",
                "Host=[;Port=;Username=é;Passwörd=ü;Ключ=значение",
                "postgresql://@/?",
            ],
        );
    }
}
