//! A StackExchange.Redis configuration string (`ConfigurationOptions.Parse`: comma-separated
//! endpoints and `key=value` options, what the center's `HangfireDb` holds for a Redis
//! storage) or a `redis://` / `rediss://` URL, read into a [`RedisSpec`] for
//! [`super::redis::RedisStore::open`]. Not ADO.NET's format: only the echo, the closest key
//! and the typed error come from [`super::connstr`]. No error or `Debug` output holds the
//! password.

use std::time::Duration;

use crate::secret::Secret;
use crate::store::connstr::{self, ConnStrError, HostPortError, split_host_port};
use crate::store::url::{self, PercentError};

pub(crate) use super::Origin;

/// StackExchange.Redis's default port, and its default port for `ssl=true` (Azure's TLS port).
const DEFAULT_PORT: u16 = 6379;
const DEFAULT_TLS_PORT: u16 = 6380;
/// StackExchange.Redis's defaults for `connectTimeout` and `syncTimeout` / `asyncTimeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5000);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(5000);
/// The largest timeout taken from a configuration string (larger values are lowered to it):
/// a store that does not answer for ten minutes is down, whatever the string says.
const MAX_TIMEOUT_MS: u64 = 600_000;
/// The most characters of a key or endpoint echoed in an error.
const MAX_ECHO_CHARS: usize = 60;

/// One endpoint as written: host (IPv6 without brackets) and port, if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

/// A parsed configuration string or URL. `Debug` shows the password as `<redacted>`
/// ([`Secret`]); every other field is not a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RedisSpec {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) tls: bool,
    pub(crate) ssl_host: Option<String>,
    pub(crate) db: Option<i64>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) client_name: Option<String>,
    /// Whether it came from a URL (whose default port is 6379 even with TLS).
    url: bool,
    /// The options accepted but not applied, to be named in one warning (names only).
    pub(crate) ignored: Vec<String>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            user: None,
            password: None,
            tls: false,
            ssl_host: None,
            db: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            client_name: None,
            url: false,
            ignored: Vec::new(),
        }
    }
}

impl RedisSpec {
    /// Notes an option accepted but not applied (once, whatever its spelling).
    fn ignore(&mut self, key: &str) {
        if !self.ignored.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            self.ignored.push(key.to_owned());
        }
    }

    /// The endpoint connected to (the first), with its port.
    pub(crate) fn first(&self) -> Result<(String, u16), ConnStrError> {
        let ep = self.endpoints.first().ok_or_else(|| {
            ConnStrError::other("the Redis configuration names no endpoint (host[:port])")
        })?;
        let default = if self.tls && !self.url {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        Ok((ep.host.clone(), ep.port.unwrap_or(default)))
    }
}

/// What the agent does with an option of a configuration string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handling {
    /// Read: it changes how the agent connects.
    Read,
    /// Nothing to do: the agent already behaves as the option asks, or the option concerns only
    /// StackExchange.Redis's own machinery (or StackExchange.Redis itself ignores it).
    NoEffect,
    /// The agent cannot give what the option asks: accepted, and named in one warning.
    Ignored,
}

/// How an option's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// Trimmed, and a trailing `;` dropped.
    Text,
    /// Taken verbatim (a trailing `;` is part of it, as for StackExchange.Redis).
    Verbatim,
    /// `true`/`false` (any case), checked even when ignored: StackExchange.Redis refuses
    /// another value too.
    Bool,
}

/// The options of StackExchange.Redis's configuration string (`ConfigurationOptions.cs`,
/// `OptionKeys`), by canonical name (matched case-insensitively), what the agent does with
/// each, and how its value is read. `serviceName`, `tunnel` and `proxy` are read, and refused
/// unless empty (or `None`).
#[rustfmt::skip]
const OPTIONS: &[(&str, Handling, Value)] = {
    use Handling::{Ignored, NoEffect, Read};
    use Value::{Bool, Text, Verbatim};
    &[
        ("abortConnect", NoEffect, Bool),
        ("allowAdmin", NoEffect, Bool),
        ("asyncTimeout", Read, Text),
        ("channelPrefix", NoEffect, Text),
        ("checkCertificateRevocation", Ignored, Bool),
        ("configChannel", NoEffect, Text),
        ("configCheckSeconds", NoEffect, Text),
        ("connectRetry", NoEffect, Text),
        ("connectTimeout", Read, Text),
        ("defaultDatabase", Read, Text),
        // Not string keys of StackExchange.Redis (properties only); accepted as before.
        ("heartbeatConsistencyChecks", NoEffect, Bool),
        ("heartbeatInterval", NoEffect, Text),
        ("highIntegrity", Ignored, Bool),
        ("highPriorityThreads", NoEffect, Text),
        ("keepAlive", NoEffect, Text),
        ("name", Read, Verbatim),
        ("password", Read, Verbatim),
        ("preserveAsyncOrder", NoEffect, Bool),
        ("protocol", NoEffect, Text),
        ("proxy", Read, Text),
        ("resolveDns", NoEffect, Bool),
        ("responseTimeout", NoEffect, Text),
        ("sentinelPassword", Ignored, Verbatim),
        ("sentinelUser", Ignored, Verbatim),
        ("serviceName", Read, Text),
        ("setlib", NoEffect, Bool),
        ("ssl", Read, Bool),
        ("sslHost", Read, Text),
        ("sslProtocols", Ignored, Text),
        ("syncTimeout", Read, Text),
        ("tcpKeepAlive", Ignored, Bool),
        ("tiebreaker", NoEffect, Text),
        ("tunnel", Read, Text),
        ("user", Read, Verbatim),
        ("version", NoEffect, Text),
        ("writeBuffer", NoEffect, Text),
    ]
};

/// Up to [`MAX_ECHO_CHARS`] characters of `s`, for an error message.
pub(crate) fn echo(s: &str) -> String {
    connstr::echo(s, MAX_ECHO_CHARS)
}

/// The known option closest to `written` (Jaro-Winkler on lower case).
fn closest_option(written: &str) -> &'static str {
    let options = OPTIONS.iter().map(|(k, ..)| (*k, k.to_ascii_lowercase()));
    connstr::closest(&written.to_ascii_lowercase(), options, -1.0).unwrap_or("")
}

/// Reads a StackExchange.Redis configuration string or a `redis://` / `rediss://` URL.
pub(crate) fn parse(connection: &str, origin: Origin) -> Result<RedisSpec, ConnStrError> {
    let s = connection.trim();
    if s.is_empty() {
        return Err(ConnStrError::other("the Redis configuration is empty"));
    }
    for (scheme, tls) in [("rediss://", true), ("redis://", false)] {
        if let Some(rest) = url::after_scheme(s, scheme) {
            return parse_url(rest, tls);
        }
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(ConnStrError::other(format!(
            "the Redis configuration is a URL with scheme `{}`; only redis:// and rediss:// are understood",
            echo(scheme)
        )));
    }
    parse_options(s, origin)
}

/// Reads a StackExchange.Redis configuration string (`ConfigurationOptions.Parse`, and what
/// `ConfigurationOptions.ToString()` prints): comma-separated endpoints and `key=value`
/// options, keys case-insensitive. A later option replaces an earlier one. Empty tokens
/// (`,,`, a trailing `,`) and stray `;` next to a separator (`;;`, a trailing `;`) are
/// skipped; a password, user or client name is taken as written.
fn parse_options(s: &str, origin: Origin) -> Result<RedisSpec, ConnStrError> {
    let mut spec = RedisSpec::default();
    let mut sync_timeout = None;
    let mut async_timeout = None;
    for token in s.split(',') {
        let token = token.trim().trim_start_matches(';').trim_start();
        if token.trim_end_matches(';').trim().is_empty() {
            continue;
        }
        let Some((key, raw_value)) = token.split_once('=') else {
            spec.endpoints
                .push(parse_endpoint(token.trim_end_matches(';').trim_end())?);
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConnStrError::other(
                "the Redis configuration has an option without a name (`=value`)",
            ));
        }
        // `$COMMAND=newname`: StackExchange.Redis's command renames; nothing here renames,
        // so a renamed command the agent sends would fail: said, not refused.
        if key.starts_with('$') {
            spec.ignore(&echo(key));
            continue;
        }
        let Some(&(canonical, handling, kind)) =
            OPTIONS.iter().find(|(k, ..)| k.eq_ignore_ascii_case(key))
        else {
            if origin == Origin::Center {
                spec.ignore(&echo(key));
                continue;
            }
            return Err(ConnStrError::other(format!(
                "the Redis configuration has an unknown option `{}` (the closest known one is `{}`)",
                echo(key),
                closest_option(key)
            )));
        };
        let value = match kind {
            Value::Verbatim => raw_value.trim(),
            _ => raw_value.trim().trim_end_matches(';').trim_end(),
        };
        if kind == Value::Bool && !value.is_empty() {
            parse_bool(canonical, value)?;
        }
        if handling == Handling::Ignored {
            if !value.is_empty() {
                spec.ignore(canonical);
            }
            continue;
        }
        let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        match canonical {
            "password" => spec.password = non_empty(value).map(Secret::new),
            "user" => spec.user = non_empty(value),
            "ssl" => spec.tls = !value.is_empty() && parse_bool(canonical, value)?,
            "sslHost" => spec.ssl_host = non_empty(value),
            "defaultDatabase" => {
                spec.db = if value.is_empty() {
                    None
                } else {
                    Some(parse_db(value, "defaultDatabase")?)
                }
            }
            "connectTimeout" => {
                if let Some(t) = parse_ms(canonical, value)? {
                    spec.connect_timeout = t;
                }
            }
            "syncTimeout" => sync_timeout = parse_ms(canonical, value)?,
            "asyncTimeout" => async_timeout = parse_ms(canonical, value)?,
            "name" => spec.client_name = non_empty(value),
            "serviceName" if !value.is_empty() => {
                return Err(ConnStrError::other(
                    "the Redis configuration names a Sentinel service (serviceName), which this agent does not support: name the Redis primary's endpoint instead",
                ));
            }
            "tunnel" if !value.is_empty() => {
                // Neither the tunnel's address nor anything after it is echoed.
                return Err(ConnStrError::other(
                    "the Redis configuration reaches the server through an HTTP tunnel (tunnel=), which this agent cannot do: it would connect to the endpoint directly, around the route the center takes (or not reach it at all); make the Redis server reachable from the agent and give the agent its own store (JOBAGENT_STORE) without tunnel=",
                ));
            }
            "proxy" => check_proxy(value)?,
            // NoEffect options, and empty values of the refused ones.
            _ => {}
        }
    }
    // StackExchange.Redis: asyncTimeout defaults to syncTimeout. Operations here are async.
    if let Some(t) = async_timeout.or(sync_timeout) {
        spec.command_timeout = t;
    }
    if spec.endpoints.is_empty() {
        return Err(ConnStrError::other(
            "the Redis configuration names no endpoint (host[:port])",
        ));
    }
    Ok(spec)
}

/// `proxy=`: StackExchange.Redis's `Proxy` (`None`, `Twemproxy`, `Envoyproxy`). Only `None`
/// (or nothing) is accepted: through a proxy, the agent's writes would not work.
fn check_proxy(value: &str) -> Result<(), ConnStrError> {
    if value.is_empty() || value.eq_ignore_ascii_case("none") {
        return Ok(());
    }
    if value.eq_ignore_ascii_case("twemproxy") || value.eq_ignore_ascii_case("envoyproxy") {
        return Err(ConnStrError::other(format!(
            "the Redis configuration says the server is behind a proxy (proxy={value}), which this agent does not support: {value} passes neither MULTI/EXEC transactions nor Lua scripts, on which every console batch and the exactly-once result rely; point the store at the Redis server itself"
        )));
    }
    Err(ConnStrError::other(format!(
        "the Redis option proxy must be None, Twemproxy or Envoyproxy, not `{}`",
        echo(value)
    )))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConnStrError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ConnStrError::other(format!(
            "the Redis option {key} must be true or false, not `{}`",
            echo(value)
        )))
    }
}

/// A timeout in milliseconds; `None` for an empty value (the default). Zero or negative is
/// refused; more than [`MAX_TIMEOUT_MS`] is lowered to it.
fn parse_ms(key: &str, value: &str) -> Result<Option<Duration>, ConnStrError> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<i64>() {
        Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(
            u64::try_from(ms)
                .unwrap_or(MAX_TIMEOUT_MS)
                .min(MAX_TIMEOUT_MS),
        ))),
        _ => Err(ConnStrError::other(format!(
            "the Redis option {key} must be a positive number of milliseconds, not `{}`",
            echo(value)
        ))),
    }
}

/// A database number: 0 or more.
fn parse_db(value: &str, context: &str) -> Result<i64, ConnStrError> {
    match value.trim().parse::<i64>() {
        Ok(db) if (0..=i64::from(i32::MAX)).contains(&db) => Ok(db),
        _ => Err(ConnStrError::other(format!(
            "{context}: a Redis database is a number from 0, not `{}`",
            echo(value)
        ))),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (no port).
fn parse_endpoint(token: &str) -> Result<Endpoint, ConnStrError> {
    let bad = |why: &str| {
        Err(ConnStrError::other(format!(
            "the Redis endpoint `{}` is not valid: {why}",
            echo(token)
        )))
    };
    let (host, port) = match split_host_port(token) {
        Ok(split) => split,
        Err(HostPortError::Unclosed) => {
            return bad("an IPv6 address opened with [ is not closed with ]");
        }
        Err(HostPortError::After(_)) => return bad("expected :port after ]"),
    };
    let host = host.trim();
    if host.is_empty() {
        return bad("no host");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '[' | ']'))
    {
        return bad("the host has characters a host name cannot have");
    }
    let port = match port {
        None => None,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return bad("the port is not a number from 1 to 65535"),
        },
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
    })
}

/// `%XX` decoding for the user and password of a URL.
fn percent_decode(s: &str) -> Result<String, ConnStrError> {
    // Nothing of the text is echoed: it may be the password.
    url::percent_decode(s).map_err(|e| match e {
        PercentError::BadEscape => {
            ConnStrError::other("the Redis URL's user information has an invalid %-escape")
        }
        PercentError::NotUtf8 => {
            ConnStrError::other("the Redis URL's user information is not UTF-8 once decoded")
        }
    })
}

/// Reads what follows `redis://` / `rediss://`: `[user[:password]@]host[:port][/db]`.
fn parse_url(rest: &str, tls: bool) -> Result<RedisSpec, ConnStrError> {
    let mut spec = RedisSpec {
        tls,
        url: true,
        ..RedisSpec::default()
    };
    let parts = url::split(rest);
    if let Some(user) = parts.user {
        let user = percent_decode(user)?;
        spec.user = (!user.is_empty()).then_some(user);
    }
    if let Some(p) = parts.password {
        let p = percent_decode(p)?;
        spec.password = (!p.is_empty()).then(|| Secret::new(p));
    }
    let hostport = parts.hostspec;
    if hostport.is_empty() {
        return Err(ConnStrError::other("the Redis URL names no host"));
    }
    spec.endpoints.push(parse_endpoint(hostport)?);
    let path = parts.path.unwrap_or("").trim_end_matches('/');
    if !path.is_empty() {
        spec.db = Some(parse_db(path, "the Redis URL's path")?);
    }
    for pair in parts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.eq_ignore_ascii_case("db") {
            spec.db = Some(parse_db(value, "the Redis URL's db")?);
        } else if key.eq_ignore_ascii_case("protocol") {
            // RESP2 is spoken whatever is asked: nothing here needs RESP3.
        } else {
            return Err(ConnStrError::other(format!(
                "the Redis URL has an unknown parameter `{}` (known: db, protocol)",
                echo(key)
            )));
        }
    }
    Ok(spec)
}

/// `host:port`, with IPv6 addresses in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::connstr::tests::{Fails, Gives, Want, check};

    fn own(s: &str) -> Result<RedisSpec, ConnStrError> {
        parse(s, Origin::Own)
    }

    fn center(s: &str) -> Result<RedisSpec, ConnStrError> {
        parse(s, Origin::Center)
    }

    /// A field of a spec as the tables name it.
    fn field(spec: &RedisSpec, name: &str) -> String {
        let opt = |v: Option<&String>| v.map_or("None", String::as_str).to_owned();
        match name {
            "first" => spec
                .first()
                .map_or_else(|e| e.to_string(), |(h, p)| format!("{h}:{p}")),
            "endpoints" => format!("{:?}", spec.endpoints),
            "count" => spec.endpoints.len().to_string(),
            "user" => opt(spec.user.as_ref()),
            "password" => spec
                .password
                .as_ref()
                .map_or("None", Secret::expose)
                .to_owned(),
            "tls" => spec.tls.to_string(),
            "db" => format!("{:?}", spec.db),
            "connect_timeout" => format!("{:?}", spec.connect_timeout),
            "command_timeout" => format!("{:?}", spec.command_timeout),
            "client_name" => opt(spec.client_name.as_ref()),
            "ignored" => spec.ignored.join(","),
            "redacted" => format!("{spec:?}").contains("<redacted>").to_string(),
            "echo" => format!("{spec:?}"),
            _ => panic!("no field `{name}`"),
        }
    }

    /// What StackExchange.Redis's `ConfigurationOptions.ToString()` prints (endpoints, then
    /// each option that was set, booleans as `True`/`False`: `ConfigurationOptions.cs`), with
    /// every current option key: the options the agent reads are read, the others named once
    /// (names only), none refused, from a center as in the agent's own string.
    const PRINTED: &str = "redis1:6379,redis2:6380,name=center,keepAlive=60,syncTimeout=2500,\
         asyncTimeout=3000,allowAdmin=True,version=7.2,connectTimeout=1500,user=app,\
         sentinelUser=sentu,password=Secr3t;,sentinelPassword=S3ntinelPw,tiebreaker=tb,\
         ssl=False,sslProtocols=Tls12|Tls13,checkCertificateRevocation=False,\
         sslHost=redis1,configChannel=cfg,abortConnect=False,resolveDns=True,\
         channelPrefix=ch,connectRetry=3,proxy=None,configCheckSeconds=60,\
         responseTimeout=100,defaultDatabase=2,setlib=False,highIntegrity=True,\
         protocol=resp3,tcpKeepAlive=True,highPriorityThreads=True,\
         preserveAsyncOrder=False,writeBuffer=4096,$INFO=,$EVAL=EVAL,tunnel=";

    /// Strings read the same from a center and in the agent's own string.
    #[rustfmt::skip]
    const BOTH: &[(&str, Want)] = &[
        (PRINTED, Gives(&[
            ("first", "redis1:6379"), ("user", "app"), ("password", "Secr3t;"), ("db", "Some(2)"),
            ("command_timeout", "3s"), ("connect_timeout", "1.5s"), ("client_name", "center"),
            ("tls", "false"), ("ignored", "sentinelUser,sentinelPassword,sslProtocols,\
              checkCertificateRevocation,highIntegrity,tcpKeepAlive,$INFO,$EVAL")])),
        // Separators: empty tokens, `;;`, trailing ones.
        ("h:6379,,abortConnect=False,", Gives(SEPARATED)),
        ("h:6379,abortConnect=False;", Gives(SEPARATED)),
        ("h:6379;,;;,abortConnect=False;;,", Gives(SEPARATED)),
        (" h:6379 , ABORTCONNECT=false ,, ", Gives(SEPARATED)),
        // Tunnels, proxies and Sentinel are refused saying why; as `ToString()` prints an
        // HTTP tunnel (`Tunnel.HttpProxy`: `http:host:port`).
        ("h:6379,tunnel=http:proxy.corp:8080,password=hunter2",
            Fails(&["HTTP tunnel", "directly", "!proxy.corp", "!hunter2"])),
        ("h,proxy=Twemproxy", Fails(&["proxy", "MULTI/EXEC", "Lua"])),
        ("h,proxy=envoyproxy", Fails(&["proxy", "MULTI/EXEC", "Lua"])),
        ("h,proxy=Squid", Fails(&["None, Twemproxy or Envoyproxy"])),
        ("h,serviceName=mymaster,sentinelPassword=hunter2", Fails(&["Sentinel", "!hunter2"])),
        ("h,proxy=None", Gives(&[])),
        ("h,proxy=", Gives(&[])),
        ("h,tunnel=", Gives(&[])),
        ("h,serviceName=", Gives(&[])),
    ];
    const SEPARATED: &[(&str, &str)] = &[
        ("first", "h:6379"),
        ("ignored", ""),
        ("endpoints", r#"[Endpoint { host: "h", port: Some(6379) }]"#),
    ];

    /// A center's strings.
    #[rustfmt::skip]
    const CENTER: &[(&str, Want)] = &[
        // A key this agent does not know (a newer StackExchange.Redis's): named, never its value.
        ("h,someFutureOption=hunter2,tcpkeepalive=false,TcpKeepAlive=true",
            Gives(&[("ignored", "someFutureOption,tcpKeepAlive")])),
        // StackExchange.Redis refuses a malformed boolean too.
        ("h,tcpKeepAlive=maybe", Fails(&["true or false"])),
    ];

    /// The agent's own strings.
    #[rustfmt::skip]
    const OWN: &[(&str, Want)] = &[
        // Endpoints and default ports; StackExchange.Redis's default port with ssl=true is 6380.
        ("localhost", Gives(&[("first", "localhost:6379")])),
        ("redis1:6380, redis2:6381", Gives(&[("count", "2"), ("first", "redis1:6380")])),
        ("[::1]:7000,abortConnect=false", Gives(&[("first", "::1:7000")])),
        ("[fe80::1]", Gives(&[("first", "fe80::1:6379")])),
        ("::1", Gives(&[("first", "::1:6379")])),
        ("cache.example,ssl=True", Gives(&[("tls", "true"), ("first", "cache.example:6380")])),
        ("host:0", Fails(&["endpoint"])),
        ("host:99999", Fails(&["endpoint"])),
        ("host:x", Fails(&["endpoint"])),
        ("[::1", Fails(&["endpoint"])),
        ("[::1]x", Fails(&["endpoint"])),
        (":6379", Fails(&["endpoint"])),
        ("password=x", Fails(&["no endpoint"])),
        ("  ", Fails(&["empty"])),
        // Options.
        ("h:1,Password=p@ss=word,USER=app,ssl=false,defaultDatabase=3,connectTimeout=1500,\
          syncTimeout=2500,name=agent,allowAdmin=true,keepAlive=60,connectRetry=3,\
          resolveDns=false,tiebreaker=,version=7.2,configChannel=x,\
          checkCertificateRevocation=false,sslProtocols=Tls12,responseTimeout=100,\
          proxy=None,$INFO=,channelPrefix=c", Gives(&[
            ("password", "p@ss=word"), ("user", "app"), ("tls", "false"), ("db", "Some(3)"),
            ("connect_timeout", "1.5s"), ("command_timeout", "2.5s"), ("client_name", "agent")])),
        // asyncTimeout wins over syncTimeout, whatever the order.
        ("h,asyncTimeout=700,syncTimeout=900", Gives(&[("command_timeout", "700ms")])),
        ("h", Gives(&[("command_timeout", "5s"), ("connect_timeout", "5s")])),
        // Huge timeouts are lowered; zero, negative and words refused.
        ("h,connectTimeout=2147483647", Gives(&[("connect_timeout", "600s")])),
        ("h,syncTimeout=0", Fails(&["milliseconds"])),
        ("h,connectTimeout=-5", Fails(&["milliseconds"])),
        ("h,asyncTimeout=soon", Fails(&["milliseconds"])),
        ("h,ssl=yes", Fails(&["true or false"])),
        ("h,defaultDatabase=-1", Fails(&["defaultDatabase"])),
        ("h,=x", Fails(&["without a name"])),
        // Unknown keys and Sentinel are refused, without values.
        ("h,pasword=hunter2", Fails(&["`pasword`", "`password`", "!hunter2"])),
        ("h,connectTimout=10", Fails(&["`connectTimeout`"])),
        ("h,servicename=mymaster,password=hunter2", Fails(&["Sentinel", "not support", "!hunter2"])),
        ("http://h:1", Fails(&["redis://"])),
        ("h,someFutureOption=hunter2", Fails(&["`someFutureOption`", "!hunter2"])),
        // URLs.
        ("redis://127.0.0.1:6390/4", Gives(&[("first", "127.0.0.1:6390"), ("db", "Some(4)"), ("tls", "false")])),
        ("REDISS://us%40r:p%3Ass@cache.example", Gives(&[("tls", "true"), ("user", "us@r"),
            ("password", "p:ss"), ("first", "cache.example:6379"), ("db", "None")])),
        ("redis://:secret@[::1]:6400/", Gives(&[("user", "None"), ("password", "secret"), ("first", "::1:6400")])),
        ("redis://h?db=2&protocol=resp3", Gives(&[("db", "Some(2)")])),
        ("redis://h/x", Fails(&["path"])),
        ("redis://h?foo=1", Fails(&["`foo`"])),
        ("redis://u:se%ZZcret@h", Fails(&["!se%ZZcret", "!cret"])),
        ("redis://", Fails(&["no host"])),
        // The password is never shown (each row's secret is checked absent).
        ("h,password=Sup3rS3cret", Gives(&[("redacted", "true")])),
        ("h,password=Sup3rS3cret,bogus=1", Fails(&[])),
        ("h,password=Sup3rS3cret,ssl=maybe", Fails(&[])),
        ("redis://u:Sup3rS3cret@h:1/x", Fails(&[])),
        ("redis://u:Sup3rS3cret@h:99999", Fails(&[])),
    ];

    #[test]
    fn table() {
        check(BOTH, own, field);
        check(BOTH, center, field);
        check(CENTER, center, field);
        check(OWN, own, field);
    }
}
