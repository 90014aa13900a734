//! A MySQL connection string as MySqlConnector / MySql.Data users write it
//! (`server=h;port=3306;database=d;uid=u;pwd=p;`), or a `mysql://user:pass@host:port/db?...`
//! URL, read into a [`MyConnSpec`].
//!
//! The pairs are read by the shared ADO.NET tokenizer (`store::connstr`), as the PostgreSQL
//! parser's are; a later pair overrides an earlier one and an empty value restores the
//! default. Keys are case-insensitive and spaces, `_` and `-` in them are ignored (`Ssl-Ca`,
//! `SslCa`, `SSL CA`).
//!
//! What happens to a key the agent has no use for depends on where the string came from
//! ([`Origin`]):
//!
//! - **The agent's own store** (`JOBAGENT_STORE`) is strict: an unknown key is an error naming
//!   it and the closest known one (MySqlConnector refuses it too), and so is a MySqlConnector
//!   or MySql.Data setting the agent does not use (`Pipelining`, `Respect Binary Flags`): the
//!   operator wrote the string for the agent, and a typo is said at start-up.
//! - **A center's `HangfireDb`** was accepted by the center's own driver: every key of
//!   MySqlConnector and MySql.Data the agent has no use for (and any key this agent does not
//!   know, from a newer driver) is ignored, and [`MyConnSpec::unused`] names them (names only,
//!   never values) for one warning. Keys that name files on the agent's machine stay refused
//!   ([`MyConnSpec::file_settings`]).
//!
//! A few settings are accepted silently from both: they ask for what the agent does anyway or
//! only shape the .NET client's API (`Allow User Variables`, `CharSet`, `Pooling`, ...).
//!
//! One rule keeps the password safe: a key that comes after the password pair may be the
//! tail of an unquoted password holding `;`, so an unknown one is named by its position only.
//!
//! No error or `Debug` output ever holds the password.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::store::connstr::{
    self, ConnStrError, HostPortError, Table, boolean as parse_bool, count as parse_count,
    percent_decode, port as parse_port, shown, split_host_port,
};
use crate::store::url::{self, password_tag};

/// MySQL's port.
pub(crate) const DEFAULT_PORT: u16 = 3306;
/// `Connection Timeout` when the string names none (MySqlConnector's), seconds.
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 15;
/// `Default Command Timeout` when the string names none (MySqlConnector's), seconds.
const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 30;
/// Pool bound when the string names no `Maximum Pool Size`.
pub(crate) const DEFAULT_MAX_POOL: usize = 16;
/// The largest pool this agent opens per store, whatever the string asks.
pub(crate) const MAX_POOL_LIMIT: usize = 64;
/// TCP keepalive idle time when the string sets no `Keepalive` (MySqlConnector leaves it to
/// the OS, which waits 2 h): a peer that vanished is noticed within a minute or so.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

pub(crate) use crate::store::Origin;

/// How TLS is used, as MySqlConnector's `SslMode` (default `Preferred`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SslMode {
    /// Never TLS (`None`, `Disabled`).
    Disabled,
    /// TLS when the server offers it, plain otherwise; the certificate is not verified.
    Preferred,
    /// TLS always; the certificate is not verified.
    Required,
    /// TLS always; the chain must lead to a trusted root, any host name.
    VerifyCa,
    /// TLS always; a trusted chain and a certificate valid for the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match normalize(value).as_str() {
            "NONE" | "DISABLED" | "DISABLE" | "FALSE" => SslMode::Disabled,
            "PREFERRED" | "PREFER" => SslMode::Preferred,
            "REQUIRED" | "REQUIRE" | "TRUE" => SslMode::Required,
            "VERIFYCA" => SslMode::VerifyCa,
            "VERIFYFULL" | "VERIFYIDENTITY" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A parsed connection string. `Debug` shows the password as `<redacted>` ([`Secret`]);
/// every other field is not a secret.
#[derive(Clone, Debug)]
pub(crate) struct MyConnSpec {
    /// The hosts named (`Server` may list several, separated by `,`); the agent connects to
    /// the first.
    pub(crate) hosts: Vec<String>,
    pub(crate) port: u16,
    /// `Database`; `None` when the string names none.
    pub(crate) database: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) ssl: SslMode,
    /// `SslCa`: a PEM file of CA certificates trusted instead of the built-in roots.
    pub(crate) ssl_ca: Option<PathBuf>,
    /// `SslCert` and `SslKey`: a client certificate and its key.
    pub(crate) ssl_cert: Option<PathBuf>,
    pub(crate) ssl_key: Option<PathBuf>,
    /// The settings present that name a file on the agent's machine, by canonical name (a
    /// store the center sends may not name any).
    pub(crate) file_settings: Vec<&'static str>,
    /// `Connection Timeout`: default 15 s; `None` when the string sets 0 (no limit).
    pub(crate) connect_timeout: Option<Duration>,
    /// `Default Command Timeout`: default 30 s; `None` when the string sets 0 (no limit).
    pub(crate) command_timeout: Option<Duration>,
    /// `Maximum Pool Size`, default 16, within 1..=64.
    pub(crate) max_pool: usize,
    /// `Minimum Pool Size`, at most `max_pool`.
    pub(crate) min_pool: usize,
    /// `Connection Lifetime`: a pooled connection older than this is closed.
    pub(crate) lifetime: Option<Duration>,
    /// TCP keepalive idle time (`Keepalive`, else [`DEFAULT_KEEPALIVE`]).
    pub(crate) keepalive: Duration,
    /// Keys that were present and are accepted but not used (names only, for a debug log).
    pub(crate) ignored_keys: Vec<&'static str>,
    /// From a center: the keys present that the agent has no use for and ignored, for one
    /// warning: canonical names, a key this agent does not know as written (at most 40
    /// characters), or `pair <n>` for one after the password. Never a value.
    pub(crate) unused: Vec<String>,
}

impl MyConnSpec {
    /// The first host, which the agent connects to.
    pub(crate) fn host(&self) -> &str {
        self.hosts.first().map_or("", String::as_str)
    }

    /// `host:port/database`: for logs, never a secret.
    pub(crate) fn label(&self) -> String {
        format!(
            "{}:{}/{}",
            self.host(),
            self.port,
            self.database.as_deref().unwrap_or("")
        )
    }

    /// A key equal for two strings that reach the same server, database, user, password and
    /// TLS settings, however spelled. The password appears only as a keyed hash whose key is
    /// random per process.
    pub(crate) fn identity(&self) -> String {
        let password = match &self.password {
            None => "none".to_owned(),
            Some(pw) => password_tag(pw.expose().as_bytes()),
        };
        format!(
            "mysql:{:?}:{}/{:?}?user={:?}&password={password}&ssl={:?}&ca={:?}&cert={:?}&key={:?}",
            self.host().to_lowercase(),
            self.port,
            self.database.as_deref().unwrap_or(""),
            self.user.as_deref().unwrap_or(""),
            self.ssl,
            self.ssl_ca,
            self.ssl_cert,
            self.ssl_key,
        )
    }
}

/// The settings this agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Server,
    Port,
    Database,
    User,
    Password,
    SslMode,
    SslCaFile,
    SslCertFile,
    SslKeyFile,
    ConnectTimeout,
    CommandTimeout,
    MaxPool,
    MinPool,
    Lifetime,
    Keepalive,
    /// Accepted and not used, from both origins; its value checked as the kind says (in the
    /// agent's own string).
    Ignored(Kind),
    /// A MySqlConnector or MySql.Data setting the agent has no use for: refused in the agent's
    /// own string, ignored (and named) in a center's.
    Foreign(Use),
}

/// What a [`Key::Foreign`] setting holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// Nothing that matters to the agent.
    Plain,
    /// A path on the agent's machine: refused from a center too.
    File,
    /// A secret (a certificate password, a second factor): like the password, a key after
    /// it may be the tail of its value.
    Secret,
}

/// What an accepted-and-ignored setting's value must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Count,
    Any,
}

/// Every key known: canonical name, normalized spellings, meaning.
#[rustfmt::skip]
const KEYS: &Table<Key> = &[
    ("Server", &["SERVER", "HOST", "DATASOURCE", "ADDRESS", "ADDR", "NETWORKADDRESS", "HOSTNAME"], Key::Server),
    ("Port", &["PORT"], Key::Port),
    ("Database", &["DATABASE", "INITIALCATALOG", "DB"], Key::Database),
    ("User ID", &["USERID", "UID", "USERNAME", "USER"], Key::User),
    ("Password", &["PASSWORD", "PWD", "PASS", "PASSWORD1", "PWD1"], Key::Password),
    ("SSL Mode", &["SSLMODE"], Key::SslMode),
    ("SSL CA", &["SSLCA", "CACERTIFICATEFILE", "SSLROOTCERT"], Key::SslCaFile),
    ("SSL Cert", &["SSLCERT", "CERTIFICATEFILE", "SSLCERTIFICATE"], Key::SslCertFile),
    ("SSL Key", &["SSLKEY"], Key::SslKeyFile),
    ("Connection Timeout", &["CONNECTIONTIMEOUT", "CONNECTTIMEOUT", "TIMEOUT"], Key::ConnectTimeout),
    ("Default Command Timeout", &["DEFAULTCOMMANDTIMEOUT", "COMMANDTIMEOUT"], Key::CommandTimeout),
    ("Maximum Pool Size", &["MAXIMUMPOOLSIZE", "MAXPOOLSIZE", "MAXIMUMPOOLSIZE"], Key::MaxPool),
    ("Minimum Pool Size", &["MINIMUMPOOLSIZE", "MINPOOLSIZE"], Key::MinPool),
    ("Connection Lifetime", &["CONNECTIONLIFETIME", "LOADBALANCETIMEOUT"], Key::Lifetime),
    ("Keepalive", &["KEEPALIVE"], Key::Keepalive),
    ("Character Set", &["CHARACTERSET", "CHARSET"], Key::Ignored(Kind::Any)),
    ("Allow User Variables", &["ALLOWUSERVARIABLES"], Key::Ignored(Kind::Bool)),
    ("Pooling", &["POOLING"], Key::Ignored(Kind::Bool)),
    ("Allow Public Key Retrieval", &["ALLOWPUBLICKEYRETRIEVAL"], Key::Ignored(Kind::Bool)),
    ("Convert Zero DateTime", &["CONVERTZERODATETIME"], Key::Ignored(Kind::Bool)),
    ("Allow Zero DateTime", &["ALLOWZERODATETIME"], Key::Ignored(Kind::Bool)),
    ("Treat Tiny As Boolean", &["TREATTINYASBOOLEAN"], Key::Ignored(Kind::Bool)),
    ("Connection Reset", &["CONNECTIONRESET"], Key::Ignored(Kind::Bool)),
    ("Connection Idle Timeout", &["CONNECTIONIDLETIMEOUT"], Key::Ignored(Kind::Count)),
    ("Persist Security Info", &["PERSISTSECURITYINFO"], Key::Ignored(Kind::Bool)),
    ("Use Compression", &["USECOMPRESSION", "COMPRESS"], Key::Ignored(Kind::Bool)),
    ("Use Affected Rows", &["USEAFFECTEDROWS"], Key::Ignored(Kind::Bool)),
    ("Old Guids", &["OLDGUIDS"], Key::Ignored(Kind::Bool)),
    ("Guid Format", &["GUIDFORMAT"], Key::Ignored(Kind::Any)),
    ("Application Name", &["APPLICATIONNAME"], Key::Ignored(Kind::Any)),
    ("Auto Enlist", &["AUTOENLIST"], Key::Ignored(Kind::Bool)),
    ("Interactive Session", &["INTERACTIVESESSION", "INTERACTIVE"], Key::Ignored(Kind::Bool)),
    ("No Backslash Escapes", &["NOBACKSLASHESCAPES"], Key::Ignored(Kind::Bool)),
    ("Ignore Command Transaction", &["IGNORECOMMANDTRANSACTION"], Key::Ignored(Kind::Bool)),
    ("Ignore Prepare", &["IGNOREPREPARE"], Key::Ignored(Kind::Bool)),
    ("Defer Connection Reset", &["DEFERCONNECTIONRESET"], Key::Ignored(Kind::Bool)),
    ("Cancellation Timeout", &["CANCELLATIONTIMEOUT"], Key::Ignored(Kind::Any)),
    ("DateTime Kind", &["DATETIMEKIND"], Key::Ignored(Kind::Any)),
    ("Allow Load Local Infile", &["ALLOWLOADLOCALINFILE"], Key::Ignored(Kind::Bool)),
    ("Allow Batch", &["ALLOWBATCH"], Key::Ignored(Kind::Bool)),
    ("Load Balance", &["LOADBALANCE"], Key::Ignored(Kind::Any)),
    ("DNS Check Interval", &["DNSCHECKINTERVAL"], Key::Ignored(Kind::Count)),
    ("TLS Version", &["TLSVERSION", "TLSVERSIONS"], Key::Ignored(Kind::Any)),
    ("Tls Cipher Suites", &["TLSCIPHERSUITES"], Key::Ignored(Kind::Any)),
    ("Check Parameters", &["CHECKPARAMETERS"], Key::Ignored(Kind::Bool)),
    ("Use XA Transactions", &["USEXATRANSACTIONS"], Key::Ignored(Kind::Bool)),
    ("Server Redirection Mode", &["SERVERREDIRECTIONMODE"], Key::Ignored(Kind::Any)),
    ("Connection Protocol", &["CONNECTIONPROTOCOL", "PROTOCOL", "TRANSPORT"], Key::Ignored(Kind::Any)),
    ("Pipe Name", &["PIPENAME", "PIPE"], Key::Foreign(Use::Plain)),
    ("Certificate Password", &["CERTIFICATEPASSWORD", "SSLCAPWD"], Key::Foreign(Use::Secret)),
    ("Certificate Store Location", &["CERTIFICATESTORELOCATION"], Key::Foreign(Use::Plain)),
    ("Certificate Thumbprint", &["CERTIFICATETHUMBPRINT"], Key::Foreign(Use::Plain)),
    ("Skip Certificate Revocation Check", &["SKIPCERTIFICATEREVOCATIONCHECK"], Key::Foreign(Use::Plain)),
    ("Connection Idle Ping Time", &["CONNECTIONIDLEPINGTIME"], Key::Foreign(Use::Plain)),
    ("Force Synchronous", &["FORCESYNCHRONOUS"], Key::Foreign(Use::Plain)),
    ("Pipelining", &["PIPELINING"], Key::Foreign(Use::Plain)),
    ("Server RSA Public Key File", &["SERVERRSAPUBLICKEYFILE"], Key::Foreign(Use::File)),
    ("Server SPN", &["SERVERSPN"], Key::Foreign(Use::Plain)),
    ("Password2", &["PASSWORD2", "PWD2"], Key::Foreign(Use::Secret)),
    ("Password3", &["PASSWORD3", "PWD3"], Key::Foreign(Use::Secret)),
    ("DNS SRV", &["DNSSRV"], Key::Foreign(Use::Plain)),
    ("Logging", &["LOGGING"], Key::Foreign(Use::Plain)),
    ("Shared Memory Name", &["SHAREDMEMORYNAME"], Key::Foreign(Use::Plain)),
    ("Use Default Command Timeout For EF", &["USEDEFAULTCOMMANDTIMEOUTFOREF"], Key::Foreign(Use::Plain)),
    ("Allow Load Local Infile In Path", &["ALLOWLOADLOCALINFILEINPATH"], Key::Foreign(Use::File)),
    ("Integrated Security", &["INTEGRATEDSECURITY"], Key::Foreign(Use::Plain)),
    ("Default Authentication Plugin", &["DEFAULTAUTHENTICATIONPLUGIN"], Key::Foreign(Use::Plain)),
    ("OCI Config File", &["OCICONFIGFILE"], Key::Foreign(Use::File)),
    ("OCI Config Profile", &["OCICONFIGPROFILE"], Key::Foreign(Use::Plain)),
    ("Kerberos Auth Mode", &["KERBEROSAUTHMODE"], Key::Foreign(Use::Plain)),
    ("OpenID Identity Token", &["OPENIDIDENTITYTOKEN"], Key::Foreign(Use::Secret)),
    ("Include Security Asserts", &["INCLUDESECURITYASSERTS"], Key::Foreign(Use::Plain)),
    ("Use Usage Advisor", &["USEUSAGEADVISOR", "USAGEADVISOR"], Key::Foreign(Use::Plain)),
    ("Procedure Cache Size", &["PROCEDURECACHESIZE", "PROCEDURECACHE"], Key::Foreign(Use::Plain)),
    ("Use Performance Monitor", &["USEPERFORMANCEMONITOR", "USEPERFMON", "PERFMON"], Key::Foreign(Use::Plain)),
    ("Respect Binary Flags", &["RESPECTBINARYFLAGS"], Key::Foreign(Use::Plain)),
    ("Functions Return String", &["FUNCTIONSRETURNSTRING"], Key::Foreign(Use::Plain)),
    ("Sql Server Mode", &["SQLSERVERMODE"], Key::Foreign(Use::Plain)),
    ("Table Cache", &["TABLECACHING", "TABLECACHE"], Key::Foreign(Use::Plain)),
    ("Default Table Cache Age", &["DEFAULTTABLECACHEAGE"], Key::Foreign(Use::Plain)),
    ("Replication", &["REPLICATION"], Key::Foreign(Use::Plain)),
    ("Exception Interceptors", &["EXCEPTIONINTERCEPTORS"], Key::Foreign(Use::Plain)),
    ("Command Interceptors", &["COMMANDINTERCEPTORS"], Key::Foreign(Use::Plain)),
    ("Cache Server Properties", &["CACHESERVERPROPERTIES"], Key::Foreign(Use::Plain)),
    ("Treat Blobs As UTF8", &["TREATBLOBSASUTF8"], Key::Foreign(Use::Plain)),
    ("BlobAsUTF8IncludePattern", &["BLOBASUTF8INCLUDEPATTERN"], Key::Foreign(Use::Plain)),
    ("BlobAsUTF8ExcludePattern", &["BLOBASUTF8EXCLUDEPATTERN"], Key::Foreign(Use::Plain)),
];

/// `written` upper-cased, without whitespace, `_` and `-`.
fn normalize(written: &str) -> String {
    connstr::normalize(written, &['_', '-'])
}

fn lookup(written: &str) -> Option<(&'static str, Key)> {
    connstr::lookup(KEYS, &normalize(written))
}

/// The known key closest to an unknown one, if any is close (the last of equal scores).
fn closest(written: &str) -> Option<&'static str> {
    let spellings = KEYS
        .iter()
        .flat_map(|(name, spellings, _)| spellings.iter().map(move |s| (*name, *s)));
    connstr::closest(&normalize(written), spellings.rev(), 0.85)
}

/// Values by key, as read.
struct Settings {
    origin: Origin,
    values: Vec<(&'static str, Key, String)>,
    /// From a center: keys ignored, for the warning ([`MyConnSpec::unused`]).
    unused: Vec<String>,
}

impl Settings {
    fn new(origin: Origin) -> Self {
        Self {
            origin,
            values: Vec::new(),
            unused: Vec::new(),
        }
    }

    fn put(&mut self, name: &'static str, key: Key, value: String) {
        self.values.retain(|(n, _, _)| *n != name);
        if !value.is_empty() {
            self.values.push((name, key, value));
        }
    }

    /// A key the agent has no use for, as `shown` (never its value): named for the warning
    /// from a center, an error (`refusal`) in the agent's own string.
    fn unused(
        &mut self,
        shown: String,
        refusal: impl FnOnce() -> ConnStrError,
    ) -> Result<(), ConnStrError> {
        match self.origin {
            Origin::Own => Err(refusal()),
            Origin::Center => {
                if !self.unused.contains(&shown) {
                    self.unused.push(shown);
                }
                Ok(())
            }
        }
    }

    /// Takes a known key's value: a [`Key::Foreign`] one is refused or set aside (see
    /// [`Origin`]); a file it names is kept to be refused by the store.
    fn take(&mut self, name: &'static str, key: Key, value: String) -> Result<(), ConnStrError> {
        match key {
            Key::Foreign(Use::File) if !value.is_empty() => {
                if self.origin == Origin::Own {
                    return Err(foreign(name));
                }
                self.put(name, key, value);
                Ok(())
            }
            Key::Foreign(..) => {
                if value.is_empty() {
                    return Ok(());
                }
                self.unused(name.to_owned(), || foreign(name))
            }
            _ => {
                self.put(name, key, value);
                Ok(())
            }
        }
    }

    fn get(&self, key: Key) -> Option<(&'static str, &str)> {
        self.values
            .iter()
            .find(|(_, k, _)| *k == key)
            .map(|(n, _, v)| (*n, v.as_str()))
    }
}

/// Reads the agent's own MySqlConnector connection string or `mysql://` URL (strict: see
/// [`Origin::Own`]).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn parse(s: &str) -> Result<MyConnSpec, ConnStrError> {
    parse_from(s, Origin::Own)
}

/// Reads a MySqlConnector / MySql.Data connection string or a `mysql://` URL that came from
/// `origin`.
pub(crate) fn parse_from(s: &str, origin: Origin) -> Result<MyConnSpec, ConnStrError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ConnStrError::general("it is empty"));
    }
    let mut settings = Settings::new(origin);
    match url_rest(s) {
        Some(rest) => parse_url(rest, &mut settings)?,
        None => parse_pairs(s, &mut settings)?,
    }
    build(settings)
}

/// The part after `mysql://` or `mariadb://` (scheme case-insensitive), if `s` is a URL.
fn url_rest(s: &str) -> Option<&str> {
    ["mysql://", "mariadb://"]
        .iter()
        .find_map(|scheme| url::after_scheme(s, scheme))
}

/// The refusal of a MySqlConnector / MySql.Data setting in the agent's own string.
fn foreign(name: &'static str) -> ConnStrError {
    ConnStrError::at(
        name,
        "a MySqlConnector / MySql.Data setting this agent has no use for; remove it (in a store the center sends, such settings are ignored)",
    )
}

fn unknown_key(written: &str) -> ConnStrError {
    let written = shown(written.trim());
    ConnStrError::general(match closest(&written) {
        Some(known) => format!("unknown key `{written}` (did you mean `{known}`?)"),
        None => format!("unknown key `{written}`"),
    })
}

/// Reads `key=value` pairs as ADO.NET's `DbConnectionStringBuilder` does.
fn parse_pairs(s: &str, settings: &mut Settings) -> Result<(), ConnStrError> {
    let mut after_password = false;
    connstr::pairs(
        s,
        |written| lookup(written).map(|(name, _)| name),
        |pair| {
            match lookup(&pair.key) {
            Some((name, key)) => {
                if matches!(key, Key::Password | Key::Foreign(Use::Secret)) {
                    after_password = true;
                }
                settings.take(name, key, pair.value)
            }
            // Possibly the tail of an unquoted password that holds `;`: not shown.
            None if after_password => settings.unused(format!("pair {}", pair.number), || {
                ConnStrError::general(format!(
                    "pair {} has an unknown key (not shown: it follows the password; if the password holds `;`, quote it: `Password='...'`)",
                    pair.number
                ))
            }),
            None => settings.unused(shown(&pair.key), || unknown_key(&pair.key)),
        }
        },
    )
}

/// Reads `[user[:password]@]host[:port][/database][?key=value&...]`, percent-decoded;
/// parameters take the connection string's keys (`ssl-mode`, `sslmode`, `SslCa`, ...).
fn parse_url(rest: &str, settings: &mut Settings) -> Result<(), ConnStrError> {
    let parts = url::split(rest);
    if let Some(user) = parts.user {
        settings.put("User ID", Key::User, percent_decode(user, "User ID")?);
    }
    if let Some(password) = parts.password {
        settings.put(
            "Password",
            Key::Password,
            percent_decode(password, "Password")?,
        );
    }
    if !parts.hostspec.is_empty() {
        let (host, port) = split_host_port(parts.hostspec).map_err(|e| match e {
            HostPortError::Unclosed => ConnStrError::at("Server", "`[` is not closed by `]`"),
            HostPortError::After(after) => {
                ConnStrError::at("Server", format!("unexpected `{}` after `]`", shown(after)))
            }
        })?;
        settings.put("Server", Key::Server, percent_decode(host, "Server")?);
        if let Some(port) = port {
            settings.put("Port", Key::Port, port.to_owned());
        }
    }
    if let Some(path) = parts.path.filter(|p| !p.is_empty()) {
        settings.put("Database", Key::Database, percent_decode(path, "Database")?);
    }
    if let Some(query) = parts.query {
        for (i, param) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
            let Some((k, v)) = param.split_once('=') else {
                return Err(ConnStrError::general(format!(
                    "URL parameter {} has no `=`",
                    i + 1
                )));
            };
            let key = percent_decode(k, "URL parameter")?;
            match lookup(&key) {
                Some((name, known)) => settings.take(name, known, percent_decode(v, name)?)?,
                None => settings.unused(shown(key.trim()), || unknown_key(&key))?,
            }
        }
    }
    Ok(())
}

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

fn build(settings: Settings) -> Result<MyConnSpec, ConnStrError> {
    let Some((_, server)) = settings.get(Key::Server) else {
        return Err(ConnStrError::general(
            "no `Server` given (e.g. `Server=db.example.com;Port=3306;Database=hangfire;...`)",
        ));
    };
    let mut hosts = Vec::new();
    for host in server.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(ConnStrError::at(
                "Server",
                "a host name in the list is empty",
            ));
        }
        if host.starts_with('/') || host.starts_with('.') {
            return Err(ConnStrError::at(
                "Server",
                "Unix sockets and named pipes are not supported; name a TCP host",
            ));
        }
        hosts.push(host.to_owned());
    }
    let port = match settings.get(Key::Port) {
        Some((name, v)) => parse_port(name, v)?,
        None => DEFAULT_PORT,
    };
    let ssl = match settings.get(Key::SslMode) {
        None => SslMode::Preferred,
        Some((name, v)) => SslMode::parse(v).ok_or_else(|| {
            ConnStrError::at(
                name,
                format!(
                    "`{}` is not one of None, Disabled, Preferred, Required, VerifyCA, VerifyFull",
                    shown(v)
                ),
            )
        })?,
    };
    let path = |key: Key| settings.get(key).map(|(_, v)| PathBuf::from(v));
    let (ssl_ca, ssl_cert, ssl_key) = (
        path(Key::SslCaFile),
        path(Key::SslCertFile),
        path(Key::SslKeyFile),
    );
    let mut file_settings = Vec::new();
    for (set, name) in [
        (ssl_ca.is_some(), "SSL CA"),
        (ssl_cert.is_some(), "SSL Cert"),
        (ssl_key.is_some(), "SSL Key"),
    ] {
        if set {
            file_settings.push(name);
        }
    }
    for (name, key, _) in &settings.values {
        if matches!(key, Key::Foreign(Use::File)) {
            file_settings.push(*name);
        }
    }
    if ssl_cert.is_some() != ssl_key.is_some() {
        return Err(ConnStrError::at(
            if ssl_cert.is_some() {
                "SSL Cert"
            } else {
                "SSL Key"
            },
            "a client certificate needs both `SSL Cert` (PEM) and `SSL Key`",
        ));
    }
    // Whole numbers up to `u32::MAX`.
    let count = |key: Key, default: u64| match settings.get(key) {
        Some((name, v)) => parse_count(name, v, u64::from(u32::MAX)),
        None => Ok(default),
    };
    let connect_timeout = secs(count(Key::ConnectTimeout, DEFAULT_CONNECT_TIMEOUT_SECS)?);
    let command_timeout = secs(count(Key::CommandTimeout, DEFAULT_COMMAND_TIMEOUT_SECS)?);
    let max_pool = usize::try_from(count(Key::MaxPool, DEFAULT_MAX_POOL as u64)?)
        .unwrap_or(MAX_POOL_LIMIT)
        .clamp(1, MAX_POOL_LIMIT);
    let min_pool = usize::try_from(count(Key::MinPool, 0)?)
        .unwrap_or(max_pool)
        .min(max_pool);
    let lifetime = secs(count(Key::Lifetime, 0)?);
    let keepalive = secs(count(Key::Keepalive, 0)?).unwrap_or(DEFAULT_KEEPALIVE);
    let mut ignored_keys = Vec::new();
    for (name, key, value) in &settings.values {
        if let Key::Ignored(kind) = key {
            // A center's driver accepted the value: only the agent's own is checked.
            let kind = match settings.origin {
                Origin::Own => *kind,
                Origin::Center => Kind::Any,
            };
            match kind {
                Kind::Bool => {
                    parse_bool(name, value)?;
                }
                Kind::Count => {
                    parse_count(name, value, u64::from(u32::MAX))?;
                }
                Kind::Any => {}
            }
            ignored_keys.push(*name);
        }
    }
    Ok(MyConnSpec {
        hosts,
        port,
        database: settings.get(Key::Database).map(|(_, v)| v.to_owned()),
        user: settings.get(Key::User).map(|(_, v)| v.to_owned()),
        password: settings.get(Key::Password).map(|(_, v)| Secret::new(v)),
        ssl,
        ssl_ca,
        ssl_cert,
        ssl_key,
        file_settings,
        connect_timeout,
        command_timeout,
        max_pool,
        min_pool,
        lifetime,
        keepalive,
        ignored_keys,
        unused: settings.unused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::connstr::tests::{Fails, Gives, Want, check, check_identities, never_panics};

    fn center(s: &str) -> Result<MyConnSpec, ConnStrError> {
        parse_from(s, Origin::Center)
    }

    /// A field of a spec as the tables name it.
    fn field(spec: &MyConnSpec, name: &str) -> String {
        let opt = |v: Option<&String>| v.map_or("None", String::as_str).to_owned();
        match name {
            "host" => spec.host().to_owned(),
            "hosts" => spec.hosts.join(","),
            "port" => spec.port.to_string(),
            "db" => opt(spec.database.as_ref()),
            "user" => opt(spec.user.as_ref()),
            "password" => spec
                .password
                .as_ref()
                .map_or("None", Secret::expose)
                .to_owned(),
            "ssl" => format!("{:?}", spec.ssl),
            "ssl_ca" => format!("{:?}", spec.ssl_ca),
            "connect_timeout" => format!("{:?}", spec.connect_timeout),
            "command_timeout" => format!("{:?}", spec.command_timeout),
            "max_pool" => spec.max_pool.to_string(),
            "min_pool" => spec.min_pool.to_string(),
            "lifetime" => format!("{:?}", spec.lifetime),
            "keepalive" => format!("{:?}", spec.keepalive),
            "label" => spec.label(),
            "file_settings" => spec.file_settings.join(","),
            "ignored" => spec.ignored_keys.join(","),
            "unused" => spec.unused.join(","),
            "redacted" => format!("{spec:?}").contains("<redacted>").to_string(),
            "echo" => format!(
                "{spec:?} {} {} {}",
                spec.label(),
                spec.identity(),
                spec.unused.join(",")
            ),
            _ => panic!("no field `{name}`"),
        }
    }

    /// What MySqlConnector and MySql.Data accept, as a center holds it: `;;` from
    /// Hangfire.Storage.MySql appending `;Allow User Variables=True;`, a trailing `;`,
    /// booleans as .NET prints them.
    const CENTERS: &str = "server=db;port=3306;database=hf;uid=hf;pwd=Sup3rS3cret;Pipelining=false;\
        Respect Binary Flags=True;Connection Idle Ping Time=5;Force Synchronous=False;\
        Certificate Password=CertS3cret;Use Performance Monitor=false;dns-srv=false;;\
        Allow User Variables=True;";

    /// The agent's own strings (strict).
    #[rustfmt::skip]
    const ROWS: &[(&str, Want)] = &[
        // A Hangfire string, with the defaults.
        ("server=db.local;port=3307;database=hangfire;uid=hf;pwd=s3cret;", Gives(&[
            ("hosts", "db.local"), ("port", "3307"), ("db", "hangfire"), ("user", "hf"),
            ("password", "s3cret"), ("ssl", "Preferred"), ("connect_timeout", "Some(15s)"),
            ("command_timeout", "Some(30s)"), ("max_pool", "16"), ("keepalive", "10s"),
            ("label", "db.local:3307/hangfire"), ("file_settings", "")])),
        // Synonyms, case and spacing.
        ("{Server|Host|Data Source|DataSource|Address|Addr|Network Address|SERVER}=h;\
          {Database|Initial Catalog|initialcatalog}=d;{User Id|UserID|Uid|Username|User name|User}=u;\
          {Password|Pwd|PWD}=p", Gives(&[("host", "h"), ("db", "d"), ("user", "u"), ("password", "p")])),
        // SSL modes, timeouts, pools, the settings accepted and not used, files.
        ("Server=h;SslMode=None", Gives(&[("ssl", "Disabled")])),
        ("Server=h;Ssl Mode=Disabled", Gives(&[("ssl", "Disabled")])),
        ("Server=h;sslmode=preferred", Gives(&[("ssl", "Preferred")])),
        ("Server=h;SSL Mode=Required", Gives(&[("ssl", "Required")])),
        ("Server=h;SslMode=VerifyCA", Gives(&[("ssl", "VerifyCa")])),
        ("Server=h;SslMode=VerifyFull", Gives(&[("ssl", "VerifyFull")])),
        ("Server=h;{Connection Timeout|Connect Timeout|ConnectionTimeout}=5",
            Gives(&[("connect_timeout", "Some(5s)")])),
        ("Server=h;{Default Command Timeout|Command Timeout|DefaultCommandTimeout}=7",
            Gives(&[("command_timeout", "Some(7s)")])),
        ("Server=h;Default Command Timeout=0", Gives(&[("command_timeout", "None")])),
        ("Server=h;{Maximum Pool Size|Max Pool Size|MaxPoolSize}=5", Gives(&[("max_pool", "5")])),
        ("Server=h;MaxPoolSize=1000", Gives(&[("max_pool", "64")])),
        ("Server=h;MaxPoolSize=0", Gives(&[("max_pool", "1")])),
        ("Server=h;Minimum Pool Size=2;CharSet=utf8mb4;Character Set=utf8;Allow User Variables=True;\
          Pooling=true;Connection Lifetime=300;Keepalive=20;AllowPublicKeyRetrieval=true;\
          ConvertZeroDateTime=True;Treat Tiny As Boolean=false", Gives(&[
            ("min_pool", "2"), ("lifetime", "Some(300s)"), ("keepalive", "20s"),
            ("ignored", "~Allow User Variables")])),
        ("Server=h;{SslCa|Ssl-Ca|CACertificateFile}=/etc/ca.pem",
            Gives(&[("file_settings", "SSL CA"), ("ssl_ca", r#"Some("/etc/ca.pem")"#)])),
        ("Server=h;SslCert=/c.pem;Ssl-Key=/k.pem", Gives(&[("file_settings", "SSL Cert,SSL Key")])),
        ("Server=h;CertificateFile=/c.pem", Fails(&["SSL Key"])),
        // Quoting; a later pair wins; an empty value restores the default.
        (r#"Server='h';Pwd="a;b""c";Uid='o''neil';Database = d ;"#,
            Gives(&[("password", r#"a;b"c"#), ("user", "o'neil"), ("db", "d")])),
        ("Server=h;Port=1;Port=2;Database=x;Database=", Gives(&[("port", "2"), ("db", "None")])),
        // The URL form.
        ("mysql://hf:p%40ss@db.local:3307/hangfire?ssl-mode=Required&MaxPoolSize=4", Gives(&[
            ("host", "db.local"), ("port", "3307"), ("user", "hf"), ("password", "p@ss"),
            ("db", "hangfire"), ("ssl", "Required"), ("max_pool", "4")])),
        ("MySQL://root@127.0.0.1", Gives(&[("port", "3306"), ("password", "None"), ("db", "None")])),
        ("mysql://u@[::1]:3310/d", Gives(&[("host", "::1"), ("port", "3310")])),
        ("mysql://u:pw@h/d?sslmod=none", Fails(&["`sslmod`", "`SSL Mode`"])),
        ("mysql://u:pw@h:notaport/d", Fails(&["`Port`"])),
        // Errors name the key, and the closest known one.
        ("Server=h;Databse=d", Fails(&["`Databse`", "did you mean `Database`"])),
        ("Server=h;Frobnicate=1", Fails(&["`Frobnicate`", "!did you mean"])),
        ("Server=h;Port=abc", Fails(&["`Port`", "not a port number"])),
        ("Server=h;Port=70000", Fails(&["`Port`"])),
        ("Server=h;SslMode=sometimes", Fails(&["`SSL Mode`", "VerifyFull"])),
        ("Server=h;Connection Timeout=-1", Fails(&["`Connection Timeout`"])),
        ("Server=h;Pooling=maybe", Fails(&["`Pooling`"])),
        ("Port=3306", Fails(&["no `Server`"])),
        ("", Fails(&["empty"])),
        ("Server=h;novalue", Fails(&["pair 2"])),
        ("Server=/var/run/mysqld.sock", Fails(&["Unix sockets"])),
        // The password never shows (each row's secret is checked absent); an unquoted
        // password holding `;`: its tail is not shown as a key.
        ("Server=h;Pwd=Sup3rS3cret;xSup3rS3cret=1", Fails(&[])),
        ("Server=h;Password=Sup3rS3cret;Sup3rS3cret", Fails(&[])),
        ("Server=h;Password='Sup3rS3cret", Fails(&[])),
        ("Server=h;Password='Sup3rS3cret'x", Fails(&[])),
        ("mysql://u:Sup3rS3cret%zz@h/d", Fails(&[])),
        ("Server=h;Password=abc;Tail=xyz", Fails(&["!Tail", "quote it"])),
        ("Server=h;Database=d;Uid=u;Password=Sup3rS3cret", Gives(&[("redacted", "true")])),
        // A center's driver settings, in the agent's own string: the first is refused.
        (CENTERS, Fails(&["`Pipelining`", "no use"])),
        // Unused locally: refused there too (the agent reads no such file).
        ("Server=h;ServerRsaPublicKeyFile=/k.pem", Fails(&["no use"])),
    ];

    /// Strings from a center: the driver's settings the agent has no use for are ignored and
    /// named (names only), files stay refused.
    #[rustfmt::skip]
    const CENTER_ROWS: &[(&str, Want)] = &[
        (CENTERS, Gives(&[("db", "hf"), ("password", "Sup3rS3cret"), ("unused",
            "Pipelining,Respect Binary Flags,Connection Idle Ping Time,Force Synchronous,\
             Certificate Password,Use Performance Monitor,DNS SRV")])),
        // An accepted setting's value is the driver's business from a center.
        ("Server=h;Pooling=maybe", Gives(&[("unused", "")])),
        // A key no driver known here has (a newer one): ignored and named, unless it follows
        // the password (it may be the password's tail): then by position.
        ("Server=h;Frobnicate=1;Pwd=abc;def=ghi", Gives(&[("unused", "Frobnicate,pair 4")])),
        ("mysql://u:p@h/d?Pipelining=false&ssl-mode=none",
            Gives(&[("unused", "Pipelining"), ("ssl", "Disabled")])),
        // Settings of the agent's own still have to make sense.
        ("Server=h;Port=x;Pipelining=false", Fails(&[])),
        ("Server=h;OciConfigFile=", Gives(&[("file_settings", "")])),
        // Files stay refused from a center.
        ("Server=h;{SslCa|CA Certificate File}=/etc/x.pem",
            Gives(&[("file_settings", "SSL CA"), ("unused", "")])),
        ("Server=h;Server RSA Public Key File=/etc/x.pem",
            Gives(&[("file_settings", "Server RSA Public Key File"), ("unused", "")])),
        ("Server=h;OciConfigFile=/etc/x.pem", Gives(&[("file_settings", "OCI Config File"), ("unused", "")])),
        ("Server=h;Allow Load Local Infile In Path=/etc/x.pem",
            Gives(&[("file_settings", "Allow Load Local Infile In Path"), ("unused", "")])),
    ];

    #[test]
    fn table() {
        check(ROWS, parse, field);
        check(CENTER_ROWS, center, field);
    }

    #[test]
    fn identity_follows_meaning_not_spelling() {
        let id = |s: &str| parse(s).map_or_else(|e| panic!("{s}: {e}"), |spec| spec.identity());
        let rows = [
            (
                "host=h;initial catalog=d;user id=u;password=p;port=3306",
                true,
            ),
            ("mysql://u:p@h/d", true),
            ("Server=h;Database=d;Uid=u;Pwd=q", false),
            ("Server=h;Database=d;Uid=u;Pwd=p;SslMode=Required", false),
        ];
        check_identities(id, "Server=H;Database=d;Uid=u;Pwd=p", &rows);
    }

    #[test]
    fn never_panics_on_odd_input() {
        #[rustfmt::skip]
        let samples = [
            "=", ";;;", "a", "'", "Server='", "Server=\"x", "mysql://", "mysql://@", "mysql://[",
            "mysql://h/%", "mysql://h?=", "mysql://h?a", "Server=h;=x", "Server==x", "é=ü",
            "Server=h;Port= ", "mysql://h:/d",
        ];
        never_panics(parse, &samples);
    }
}
