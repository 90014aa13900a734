//! Decoding a center request (PROTOCOL.md section 1) into a [`Dispatch`].

use std::collections::BTreeMap;
use std::fmt;

use axum::http::{HeaderMap, HeaderValue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::DispatchError;
use crate::item::{ItemCache, LazyItem};

pub(crate) const H_ACTION: &str = "x-job-agent-action";
pub(crate) const H_CLASS: &str = "x-job-agent-class";
pub(crate) const H_JOB_ID: &str = "x-job-id";
pub(crate) const H_BODY: &str = "x-job-body";
pub(crate) const H_URL: &str = "x-job-url";
pub(crate) const H_SERVER: &str = "x-job-server";
pub(crate) const H_STORAGE: &str = "x-job-storage";
pub(crate) const H_CONSOLE: &str = "x-job-agent-console";
pub(crate) const H_EXTRA: &str = "x-job-agent-header";
pub(crate) const H_AGENT_SERVER: &str = "x-job-agent-server";

/// The action a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a run.
    Run,
    /// Stop the running instance(s).
    Stop,
    /// Describe the instance(s).
    Detail,
    /// Start or renew the heartbeat reporter.
    Heartbeat,
}

impl Action {
    fn parse(text: &str) -> Result<Self, DispatchError> {
        let t = text.trim();
        [
            ("run", Action::Run),
            ("stop", Action::Stop),
            ("detail", Action::Detail),
            ("heartbeat", Action::Heartbeat),
        ]
        .into_iter()
        .find(|(name, _)| t.eq_ignore_ascii_case(name))
        .map(|(_, a)| a)
        .ok_or_else(|| DispatchError::UnknownAction(truncate(t, 64)))
    }

    /// The lower-case name, as written into results.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Stop => "stop",
            Action::Detail => "detail",
            Action::Heartbeat => "heartbeat",
        }
    }
}

/// Where the center asks console lines to go (`x-job-agent-console`).
///
/// Property names are read as Newtonsoft binds them: the exact name first, else any spelling
/// that differs only in ASCII case (a center whose host sets camelCase JSON defaults sends
/// `setKey`, `hashKey`, `startTime`). The real center sends no `ProgressBarId` (bars start
/// at 1).
///
/// Its three strings live in one allocation: every `run` carries a console description.
#[derive(Clone, PartialEq)]
pub(crate) struct ConsoleTarget {
    /// `SetKey`, `HashKey` and `StartTime`, one after the other.
    text: Box<str>,
    /// Where `HashKey` and `StartTime` begin in `text`.
    hash_at: usize,
    start_at: usize,
    /// The first progress bar id minus one.
    pub progress_bar_id: i64,
}

impl ConsoleTarget {
    pub(crate) fn new(
        set_key: &str,
        progress_bar_id: i64,
        hash_key: &str,
        start_time: &str,
    ) -> Self {
        let mut text = String::with_capacity(set_key.len() + hash_key.len() + start_time.len());
        text.push_str(set_key);
        text.push_str(hash_key);
        text.push_str(start_time);
        Self {
            text: text.into_boxed_str(),
            hash_at: set_key.len(),
            start_at: set_key.len() + hash_key.len(),
            progress_bar_id,
        }
    }

    /// The set key, `console:<id>`.
    pub(crate) fn set_key(&self) -> &str {
        &self.text[..self.hash_at]
    }

    /// The hash key for long lines, `console:refs:<id>`.
    pub(crate) fn hash_key(&self) -> &str {
        &self.text[self.hash_at..self.start_at]
    }

    /// When the console started; line offsets count from here.
    pub(crate) fn start_time(&self) -> &str {
        &self.text[self.start_at..]
    }

    /// Whether the keys are Hangfire.Console's for one console: `console:<id>` and
    /// `console:refs:<id>` (Hangfire.Console's `ConsoleIdExtensions`), the id being 11 hex
    /// digits of the start time and the job id (its `ConsoleId`). The job id is held to what
    /// Hangfire's storages use for ids (digits, letters, `-`, `_`, `.`; at most 64), so a
    /// header cannot name any other key of the store.
    pub(crate) fn is_hangfire_console(&self) -> bool {
        let Some(id) = self.set_key().strip_prefix("console:") else {
            return false;
        };
        if self.hash_key().strip_prefix("console:refs:") != Some(id) {
            return false;
        }
        let (Some(stamp), Some(job)) = (id.get(..11), id.get(11..)) else {
            return false;
        };
        stamp.bytes().all(|b| b.is_ascii_hexdigit())
            && (1..=64).contains(&job.len())
            && job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }
}

impl fmt::Debug for ConsoleTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleTarget")
            .field("set_key", &self.set_key())
            .field("progress_bar_id", &self.progress_bar_id)
            .field("hash_key", &self.hash_key())
            .field("start_time", &self.start_time())
            .finish()
    }
}

/// The center's own field names, as a replica's stop command carries the console.
impl Serialize for ConsoleTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Shape<'a> {
            set_key: &'a str,
            progress_bar_id: i64,
            hash_key: &'a str,
            start_time: &'a str,
        }
        Shape {
            set_key: self.set_key(),
            progress_bar_id: self.progress_bar_id,
            hash_key: self.hash_key(),
            start_time: self.start_time(),
        }
        .serialize(serializer)
    }
}

/// The console description as the center writes it by default (PascalCase, string values):
/// read straight into its fields, without the map that other spellings need. Every dispatch
/// carries one, so this is the common path.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PascalConsole {
    set_key: String,
    hash_key: String,
    start_time: String,
    #[serde(default)]
    progress_bar_id: Option<i64>,
}

impl ConsoleTarget {
    /// Reads `x-job-agent-console`: the center's own shape directly, anything else (other
    /// spellings, lenient values) through [`Deserialize`], with the same result.
    fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        if let Some(exact) = Self::center_shape(json) {
            return Ok(exact);
        }
        match serde_json::from_str::<PascalConsole>(json) {
            Ok(c) => Ok(Self::new(
                &c.set_key,
                c.progress_bar_id.filter(|n| *n >= 0).unwrap_or(0),
                &c.hash_key,
                &c.start_time,
            )),
            Err(_) => serde_json::from_str::<ConsoleTarget>(json),
        }
    }
}

impl ConsoleTarget {
    /// The text exactly as the center writes it,
    /// `{"SetKey":"…","HashKey":"…","StartTime":"…"}` with values free of escapes and control
    /// characters, read without a parser; anything else is `None`, for serde_json. That
    /// text reads the same through serde_json (three strings as they are, no
    /// `ProgressBarId`, so 0): a test holds the two to it.
    fn center_shape(json: &str) -> Option<Self> {
        let mut rest = json;
        let mut field = |opening: &str| -> Option<&str> {
            let after = rest.strip_prefix(opening)?;
            let end = crate::item::plain_text_end(after.as_bytes(), 0);
            // `end` is at an ASCII quote, so both slices fall on character boundaries.
            let value = after.get(..end)?;
            rest = after.get(end..)?.strip_prefix('"')?;
            Some(value)
        };
        let set_key = field(r#"{"SetKey":""#)?;
        let hash_key = field(r#","HashKey":""#)?;
        let start_time = field(r#","StartTime":""#)?;
        (rest == "}").then(|| Self::new(set_key, 0, hash_key, start_time))
    }
}

impl<'de> Deserialize<'de> for ConsoleTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let obj = Map::<String, Value>::deserialize(deserializer)?;
        let required = |name: &'static str| {
            text_field(&obj, name)
                .map_err(D::Error::custom)?
                .ok_or_else(|| D::Error::custom(format_args!("missing field `{name}`")))
        };
        let set_key = required("SetKey")?;
        let progress_bar_id = number_field(&obj, "ProgressBarId")
            .filter(|n| (0.0..=i64::MAX as f64).contains(n))
            .map_or(0, |n| n as i64);
        Ok(Self::new(
            &set_key,
            progress_bar_id,
            &required("HashKey")?,
            &required("StartTime")?,
        ))
    }
}

/// The center's store description (`x-job-storage`). `Debug` hides the connection string.
///
/// Property names are read case-insensitively, as the .NET agent's Newtonsoft binding does:
/// a center whose host sets camelCase JSON defaults sends `type`, `tablePrefix`,
/// `expireAtDays`, `hangfireDb`. `TablePrefix` may be null (Hangfire.PostgreSql 1.6–1.8:
/// schema `hangfire`); `ExpireAtDays` may be null, absent, a number or a numeric string.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub(crate) struct StorageHeader {
    /// The store kind: `postgresql`, `mysql`, `redis` (or one this agent does not speak).
    pub kind: String,
    /// The Hangfire schema.
    pub table_prefix: Option<String>,
    /// Days until written rows expire.
    pub expire_at_days: Option<f64>,
    /// The store's connection string (a secret): Npgsql's, MySqlConnector's, or
    /// StackExchange.Redis's configuration string.
    pub hangfire_db: String,
    /// Redis only: the database number (`Db`, sent as text).
    pub db: Option<String>,
}

impl<'de> Deserialize<'de> for StorageHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let obj = Map::<String, Value>::deserialize(deserializer)?;
        let text = |name: &'static str| text_field(&obj, name).map_err(D::Error::custom);
        Ok(Self {
            kind: text("Type")?.unwrap_or_default(),
            table_prefix: text("TablePrefix")?,
            expire_at_days: number_field(&obj, "ExpireAtDays"),
            hangfire_db: text("HangfireDb")?.unwrap_or_default(),
            db: text("Db")?,
        })
    }
}

/// A property of a center JSON object as Newtonsoft binds it: the exact name, else the first
/// name equal to it ignoring ASCII case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A text property: strings as they are, numbers and booleans as their JSON text (Newtonsoft
/// converts them), null or absent as `None`. The error names the property, never its value.
fn text_field(obj: &Map<String, Value>, name: &'static str) -> Result<Option<String>, String> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(Value::Array(_) | Value::Object(_)) => Err(format!("property `{name}` is not text")),
    }
}

/// A numeric property: a number or a numeric string; anything else is `None`.
fn number_field(obj: &Map<String, Value>, name: &str) -> Option<f64> {
    match field(obj, name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
}

impl fmt::Debug for StorageHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageHeader")
            .field("kind", &self.kind)
            .field("table_prefix", &self.table_prefix)
            .field("expire_at_days", &self.expire_at_days)
            .field("db", &self.db)
            .field("hangfire_db", &"<redacted>")
            .finish()
    }
}

/// A decoded center request.
#[derive(Debug)]
pub(crate) struct Dispatch {
    pub(crate) action: Action,
    pub(crate) class: Option<String>,
    pub(crate) job_id: String,
    pub(crate) item: LazyItem,
    pub(crate) job_url: Option<String>,
    pub(crate) server_id: Option<String>,
    pub(crate) storage: Option<StorageHeader>,
    pub(crate) console: Option<ConsoleTarget>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) agent_server: Option<String>,
    pub(crate) body: String,
    /// A run's share of the running runs' parameter budget, held as long as the run.
    pub(crate) param_charge: Option<crate::budget::ParamCharge>,
}

/// The center's headers of one request, found in one pass over the request's headers (the
/// first of repeated ones, as `HeaderMap::get` would).
#[derive(Default)]
struct CenterHeaders<'h> {
    action: Option<&'h HeaderValue>,
    class: Option<&'h HeaderValue>,
    job_id: Option<&'h HeaderValue>,
    body: Option<&'h HeaderValue>,
    url: Option<&'h HeaderValue>,
    server: Option<&'h HeaderValue>,
    storage: Option<&'h HeaderValue>,
    console: Option<&'h HeaderValue>,
    extra: Option<&'h HeaderValue>,
    agent_server: Option<&'h HeaderValue>,
}

impl<'h> CenterHeaders<'h> {
    fn find(headers: &'h HeaderMap) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                H_ACTION => &mut found.action,
                H_CLASS => &mut found.class,
                H_JOB_ID => &mut found.job_id,
                H_BODY => &mut found.body,
                H_URL => &mut found.url,
                H_SERVER => &mut found.server,
                H_STORAGE => &mut found.storage,
                H_CONSOLE => &mut found.console,
                H_EXTRA => &mut found.extra,
                H_AGENT_SERVER => &mut found.agent_server,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        found
    }
}

impl Dispatch {
    /// A stop dispatch as another replica received it and passed it on (its id, parameter
    /// and console), for the `on_stop` context of the replica that runs the job.
    pub(crate) fn for_remote_stop(stop_id: &str, param: &str, console: &ConsoleTarget) -> Self {
        Self {
            action: Action::Stop,
            class: None,
            job_id: stop_id.to_owned(),
            item: LazyItem::default(),
            job_url: None,
            server_id: None,
            storage: None,
            console: Some(console.clone()),
            headers: BTreeMap::new(),
            agent_server: None,
            body: param.to_owned(),
            param_charge: None,
        }
    }

    /// Decodes headers and body; every failure names the header and the problem.
    pub(crate) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Self, DispatchError> {
        let h = CenterHeaders::find(headers);
        let action = Action::parse(
            plain(h.action, H_ACTION)?.ok_or(DispatchError::MissingHeader(H_ACTION))?,
        )?;
        let class = plain(h.class, H_CLASS)?
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        if class.is_none() && action != Action::Heartbeat {
            return Err(DispatchError::MissingHeader(H_CLASS));
        }
        let job_id = plain(h.job_id, H_JOB_ID)?
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        if job_id.is_empty() && matches!(action, Action::Run | Action::Stop) {
            return Err(DispatchError::MissingHeader(H_JOB_ID));
        }
        let item = match h.body {
            Some(raw) => ItemCache::item(raw.as_bytes(), || {
                match decode_base64_bytes(raw.as_bytes()).map_err(|reason| bad(H_BODY, reason))? {
                    json if json.trim().is_empty() => Ok(LazyItem::default()),
                    json => LazyItem::from_json(json)
                        .map_err(|e| bad(H_BODY, format!("not a job item: {e}"))),
                }
            })?,
            None => LazyItem::default(),
        };
        let job_url = base64_text(h.url, H_URL)?;
        let server_id = base64_text(h.server, H_SERVER)?.map(|mut s| {
            // `server@_@worker`: the agent reports to the server.
            if let Some(at) = worker_suffix(&s) {
                s.truncate(at);
            }
            // Logged and used in a key: no control characters (a line break would forge a
            // log line).
            crate::error::escape_controls(&s).into_owned()
        });
        if action == Action::Heartbeat && server_id.as_deref().is_none_or(str::is_empty) {
            return Err(DispatchError::MissingHeader(H_SERVER));
        }
        let storage = match base64_text(h.storage, H_STORAGE)? {
            Some(json) if !json.trim().is_empty() => {
                Some(serde_json::from_str::<StorageHeader>(&json).map_err(|e| {
                    bad(
                        H_STORAGE,
                        format!("not a storage description: {}", json_error(&e)),
                    )
                })?)
            }
            _ => None,
        };
        let console = match plain(h.console, H_CONSOLE)? {
            Some(json) if !json.trim().is_empty() => Some(
                ConsoleTarget::from_json(json)
                    .map_err(|e| bad(H_CONSOLE, format!("not a console description: {e}")))?,
            ),
            _ => None,
        };
        if let Some(console) = &console
            && !console.is_hangfire_console()
        {
            return Err(bad(
                H_CONSOLE,
                "SetKey and HashKey must be Hangfire.Console's keys of one console, `console:<id>` and `console:refs:<id>`, where the id is 11 hex digits followed by the job id; the run was not started and nothing was written".to_owned(),
            ));
        }
        let headers_of_job = job_headers(headers, h.extra);
        let agent_server = plain(h.agent_server, H_AGENT_SERVER)?.map(str::to_owned);
        let body = String::from_utf8(body.to_vec()).map_err(|_| DispatchError::BadHeader {
            header: "body",
            reason: "the request body is not UTF-8".into(),
        })?;
        Ok(Self {
            action,
            class,
            job_id,
            item,
            job_url,
            server_id,
            storage,
            console,
            headers: headers_of_job,
            agent_server,
            body,
            param_charge: None,
        })
    }
}

/// The job's configured headers, named in `x-job-agent-header` (joined by `_@_`), each value
/// base64 of UTF-8. The center lists *all* configured headers, including ones its HTTP stack
/// owns (`Server/HttpJob.cs` `PrepareHttpRequestMessage`): `Content-Type` keeps the stack's
/// `application/json; charset=utf-8` (or is absent without a body), `Accept` arrives as
/// `<ContentType>, <base64>`, `Authorization` is the basic-auth value when basic auth is set.
/// A header that is absent or whose value is not base64 of UTF-8 is skipped (logged at debug,
/// without its value, which may be a secret) and the run goes ahead, as the .NET agent does.
fn job_headers(headers: &HeaderMap, list: Option<&HeaderValue>) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let Some(list) = list else { return found };
    let Ok(names) = list.to_str() else {
        tracing::debug!("{H_EXTRA} is not ASCII; the job gets no configured headers");
        return found;
    };
    for name in names.split("_@_").map(str::trim).filter(|n| !n.is_empty()) {
        if found.contains_key(name) {
            continue;
        }
        let value = match headers.get(name) {
            None => Err("it is not in the request".to_owned()),
            Some(raw) => decode_base64_bytes(raw.as_bytes()),
        };
        match value {
            Ok(value) => {
                found.insert(name.to_owned(), value);
            }
            Err(reason) => tracing::debug!(
                header = %truncate(name, 64),
                "job header skipped: {reason} (the center sends Content-Type, Accept and Authorization in its own format)"
            ),
        }
    }
    found
}

/// Where `@_@` begins in `server`, found by its `@`s: `str::find` sets up a substring
/// searcher, which cost more than the rest of reading the header.
fn worker_suffix(server: &str) -> Option<usize> {
    let bytes = server.as_bytes();
    let mut from = 0;
    while let Some(i) = bytes.get(from..)?.iter().position(|&b| b == b'@') {
        let at = from + i;
        if bytes[at..].starts_with(b"@_@") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn bad(header: &'static str, reason: String) -> DispatchError {
    DispatchError::BadHeader { header, reason }
}

/// A plain header's value, or an error when it is not visible ASCII.
fn plain<'h>(
    value: Option<&'h HeaderValue>,
    name: &'static str,
) -> Result<Option<&'h str>, DispatchError> {
    value
        .map(|v| v.to_str().map_err(|_| bad(name, "not ASCII".into())))
        .transpose()
}

/// A base64 header's text. The decoder checks every byte against the base64 alphabet, so
/// the value is not checked for ASCII first (a non-ASCII byte is reported as not base64).
fn base64_text(
    value: Option<&HeaderValue>,
    name: &'static str,
) -> Result<Option<String>, DispatchError> {
    value
        .map(|v| decode_base64_bytes(v.as_bytes()).map_err(|reason| bad(name, reason)))
        .transpose()
}

/// Decodes base64 of UTF-8 text, as the center encodes header values (standard alphabet,
/// padded). SIMD-accelerated: the job item is the largest part of every request.
fn decode_base64_bytes(raw: &[u8]) -> Result<String, String> {
    let bytes = base64_simd::STANDARD
        .decode_to_vec(raw.trim_ascii())
        .map_err(|_| "not base64 (invalid characters, length or padding)".to_owned())?;
    String::from_utf8(bytes).map_err(|_| "base64 of something that is not UTF-8".to_owned())
}

/// A serde error without the input (which may hold a password).
fn json_error(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // pieceofsummer/Hangfire.Console: src/Hangfire.Console/Storage/ConsoleIdExtensions.cs
    // (`console:<id>`, `console:refs:<id>`), src/Hangfire.Console/Serialization/ConsoleId.cs
    // (the id: 11 hex digits of the start time, then the job id).
    #[test]
    fn only_hangfire_console_keys_are_accepted() {
        let console = |set: &str, hash: &str| ConsoleTarget::new(set, 0, hash, "t");
        for id in ["19b8c2d4e5f1001", "19B8C2D4E5Fa-b_c.d", "00000000000x"] {
            let ok = console(&format!("console:{id}"), &format!("console:refs:{id}"));
            assert!(ok.is_hangfire_console(), "{id}");
        }
        for (set, hash) in [
            ("recurring-jobs", "recurring-job:pwned"),
            ("console:19b8c2d4e5f1", "recurring-job:pwned"),
            ("console:19b8c2d4e5f1", "console:refs:19b8c2d4e5f2"),
            ("console:abc", "console:refs:abc"),
            ("console:19b8c2d4e5f", "console:refs:19b8c2d4e5f"),
            ("console:19b8c2d4e5g1", "console:refs:19b8c2d4e5g1"),
            ("console:19b8c2d4e5f1:x", "console:refs:19b8c2d4e5f1:x"),
            (
                "console:refs:19b8c2d4e5f1",
                "console:refs:refs:19b8c2d4e5f1",
            ),
            ("console:19b8c2d4e5f1\n", "console:refs:19b8c2d4e5f1\n"),
        ] {
            assert!(!console(set, hash).is_hangfire_console(), "{set} {hash}");
        }
        let long = format!("console:19b8c2d4e5f{}", "1".repeat(65));
        let hash = long.replacen("console:", "console:refs:", 1);
        assert!(!console(&long, &hash).is_hangfire_console());
    }

    #[test]
    fn request_text_is_escaped_for_logs() {
        use crate::error::escape_controls;
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(
            escape_controls("a\nINFO forged\r\u{1b}[31m"),
            "a\\nINFO forged\\r\\u{1b}[31m"
        );
        let mut h = base();
        h.insert(H_SERVER, b64("srv\nINFO forged"));
        let d = Dispatch::decode(&h, b"").expect("valid");
        assert_eq!(d.server_id.as_deref(), Some("srv\\nINFO forged"));
    }

    #[test]
    fn the_worker_suffix_is_found_as_str_find_finds_it() {
        for server in [
            "a@_@b", "a@@_@b", "@_@", "a@_", "a@_@", "@a@_@@_@", "", "ab", "é@_@é",
        ] {
            assert_eq!(worker_suffix(server), server.find("@_@"), "{server}");
        }
    }

    #[test]
    fn the_console_fast_path_reads_as_the_lenient_one() {
        let cases = [
            r#"{"SetKey":"console:a","HashKey":"console:refs:a","StartTime":"2026-01-02T03:04:05.12Z"}"#,
            r#"{"SetKey":"console:a","ProgressBarId":3,"HashKey":"h","StartTime":"t"}"#,
            r#"{"SetKey":"console:a","ProgressBarId":-3,"HashKey":"h","StartTime":"t"}"#,
            r#"{"SetKey":"console:a","ProgressBarId":null,"HashKey":"h","StartTime":"t","X":[1]}"#,
            r#"{"setKey":"console:a","hashKey":"h","startTime":"t"}"#,
            r#"{"SetKey":"console:a","ProgressBarId":"2","HashKey":"h","StartTime":"t"}"#,
            r#"{"SetKey":"a","SetKey":"b","HashKey":"h","StartTime":"t"}"#,
        ];
        for case in cases {
            let lenient = serde_json::from_str::<ConsoleTarget>(case).ok();
            assert_eq!(ConsoleTarget::from_json(case).ok(), lenient, "{case}");
        }
    }

    /// The center's own text is read without a parser, as serde_json reads it; every
    /// one-byte change or deletion of it (into JSON-significant bytes too) either reads the
    /// same through both or falls back to serde_json.
    #[test]
    fn the_center_shape_reads_as_serde_does() {
        let center = r#"{"SetKey":"console:1a2b","HashKey":"console:refs:1a2b","StartTime":"2026-12-05T10:37:10.651Z"}"#;
        let exact = ConsoleTarget::center_shape(center).expect("the center's shape");
        assert_eq!(
            serde_json::from_str::<ConsoleTarget>(center).ok(),
            Some(exact.clone())
        );
        assert_eq!(exact.set_key(), "console:1a2b");
        assert_eq!(exact.progress_bar_id, 0);
        let significant = b"{}[]\",:\\ 0aZ\x01\x7f";
        let bytes = center.as_bytes();
        for i in 0..=bytes.len() {
            let mut variants = Vec::new();
            if i < bytes.len() {
                let mut v = bytes.to_vec();
                v.remove(i);
                variants.push(v);
            }
            for &b in significant {
                let mut v = bytes.to_vec();
                v.insert(i, b);
                variants.push(v);
            }
            for v in variants {
                let Ok(text) = String::from_utf8(v) else {
                    continue;
                };
                if let Some(fast) = ConsoleTarget::center_shape(&text) {
                    assert_eq!(
                        serde_json::from_str::<PascalConsole>(&text)
                            .ok()
                            .map(|c| c.set_key),
                        Some(fast.set_key().to_owned()),
                        "{text}"
                    );
                    assert_eq!(
                        serde_json::from_str::<ConsoleTarget>(&text).ok(),
                        Some(fast),
                        "{text}"
                    );
                }
            }
        }
        assert!(
            ConsoleTarget::center_shape(r#"{"SetKey":"a\"b","HashKey":"h","StartTime":"t"}"#)
                .is_none()
        );
        assert!(
            ConsoleTarget::center_shape(
                r#"{"SetKey":"a","HashKey":"h","StartTime":"t","ProgressBarId":2}"#
            )
            .is_none()
        );
        assert!(
            ConsoleTarget::center_shape(r#"{"SetKey":"a","HashKey":"h","StartTime":"t"} "#)
                .is_none()
        );
    }
    use axum::http::HeaderValue;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn b64(s: &str) -> HeaderValue {
        HeaderValue::from_str(&STANDARD.encode(s)).expect("ascii")
    }

    fn base() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_ACTION, HeaderValue::from_static("RUN"));
        h.insert(H_CLASS, HeaderValue::from_static("a::B"));
        h.insert(H_JOB_ID, HeaderValue::from_static("42"));
        h
    }

    #[test]
    fn decodes_center_request() {
        let mut h = base();
        h.insert(H_BODY, b64(r#"{"JobName":"名字","AgentTimeout":100}"#));
        h.insert(H_SERVER, b64("srv-1:123@_@worker-7"));
        h.insert(H_EXTRA, HeaderValue::from_static("tenant_@_trace"));
        h.insert("tenant", b64("acme"));
        h.insert("trace", b64("t-1"));
        h.insert(
            H_CONSOLE,
            HeaderValue::from_static(r#"{"SetKey":"console:19b8c2d4e5fabc","ProgressBarId":0,"HashKey":"console:refs:19b8c2d4e5fabc","StartTime":"2026-01-02T03:04:05.1234567Z"}"#),
        );
        let d = Dispatch::decode(&h, br#"{"Hour":48}"#).expect("valid");
        assert_eq!(d.action, Action::Run);
        assert_eq!(d.item.get().job_name.as_deref(), Some("名字"));
        assert_eq!(d.item.agent_timeout(), Some(100));
        assert_eq!(d.server_id.as_deref(), Some("srv-1:123"));
        assert_eq!(d.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            d.console.as_ref().map(|c| c.set_key()),
            Some("console:19b8c2d4e5fabc")
        );
        assert_eq!(d.body, r#"{"Hour":48}"#);
    }

    #[test]
    fn base64_accepts_what_the_reference_decoder_accepts() {
        let cases = [
            "QQ==", "QR==", "QQ", "QQ=", "QUJD", "QUJ", "Q", "", "QU JD", "QQ==QQ==", "=", "QUI=",
            "QUJ=", "_-8=", "+/8=", "5ZCN5a2X", "5ZCN5a2",
        ];
        for case in cases {
            let reference = STANDARD.decode(case).ok().map(String::from_utf8);
            let ours = decode_base64_bytes(case.as_bytes()).ok();
            match reference {
                Some(Ok(text)) => assert_eq!(ours, Some(text), "{case:?}"),
                _ => assert_eq!(ours, None, "{case:?}"),
            }
        }
    }

    #[test]
    fn names_the_bad_header() {
        let mut h = base();
        h.insert(H_BODY, HeaderValue::from_static("%%%"));
        let e = Dispatch::decode(&h, b"")
            .expect_err("bad base64")
            .to_string();
        assert!(e.contains(H_BODY) && e.contains("base64"), "{e}");

        let mut h = base();
        h.insert(
            H_STORAGE,
            b64(r#"{"Type":"postgresql","HangfireDb":"Password=hunter2;"#),
        );
        let e = Dispatch::decode(&h, b"").expect_err("bad json").to_string();
        assert!(e.contains(H_STORAGE) && !e.contains("hunter2"), "{e}");

        for json in [
            r#""Password=hunter2""#,
            r#"{"Type":"postgresql","HangfireDb":["Password=hunter2"]}"#,
        ] {
            let mut h = base();
            h.insert(H_STORAGE, b64(json));
            let e = Dispatch::decode(&h, b"").expect_err(json).to_string();
            assert!(e.contains(H_STORAGE) && !e.contains("hunter2"), "{e}");
        }

        let mut h = base();
        h.remove(H_ACTION);
        assert!(matches!(
            Dispatch::decode(&h, b""),
            Err(DispatchError::MissingHeader(H_ACTION))
        ));

        let mut h = base();
        h.insert(H_ACTION, HeaderValue::from_static("explode"));
        assert!(matches!(
            Dispatch::decode(&h, b""),
            Err(DispatchError::UnknownAction(_))
        ));

        let mut h = HeaderMap::new();
        h.insert(H_ACTION, HeaderValue::from_static("heartbeat"));
        assert!(matches!(
            Dispatch::decode(&h, b""),
            Err(DispatchError::MissingHeader(H_SERVER))
        ));
    }

    // Server/HttpJob.cs `PrepareHttpRequestMessage` lists every configured header, also the
    // ones its HTTP stack owns; Agent/Hangfire.HttpJob.Agent/JobAgentMiddleware.cs
    // `GetJobHeaders` ignores what it cannot decode and runs the job.
    #[test]
    fn job_headers_the_center_cannot_encode_are_skipped() {
        let mut h = base();
        h.insert(
            H_EXTRA,
            HeaderValue::from_static(
                "tenant_@_Content-Type_@_Accept_@_Authorization_@_missing_@_raw_@_latin_@_bad name",
            ),
        );
        h.insert("tenant", b64("acme"));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert(
            "accept",
            HeaderValue::from_str(&format!("application/json, {}", STANDARD.encode("x")))
                .expect("ascii"),
        );
        h.insert("authorization", HeaderValue::from_static("Basic dTpw"));
        h.insert("raw", HeaderValue::from_static("plain value"));
        h.insert(
            "latin",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid value"),
        );
        let d = Dispatch::decode(&h, b"{}").expect("the run goes ahead");
        assert_eq!(
            d.headers.into_iter().collect::<Vec<_>>(),
            vec![("tenant".to_owned(), "acme".to_owned())]
        );

        let mut h = base();
        h.insert(
            H_EXTRA,
            HeaderValue::from_bytes(b"t\xe9nant").expect("obs-text is a valid value"),
        );
        let d = Dispatch::decode(&h, b"").expect("the run goes ahead");
        assert!(d.headers.is_empty());
    }

    // Server/HttpJob.cs `GetCurrentJobStorage` serializes with the host's Newtonsoft defaults;
    // the .NET agent (JobAgentMiddleware.cs) binds names case-insensitively.
    #[test]
    fn storage_and_console_names_are_case_insensitive() {
        let mut h = base();
        h.insert(
            H_STORAGE,
            b64(r#"{"type":"postgresql","tablePrefix":null,"expireAtDays":0,"hangfireDb":"Host=h"}"#),
        );
        h.insert(
            H_CONSOLE,
            HeaderValue::from_static(
                r#"{"setKey":"console:19b8c2d4e5fa","hashKey":"console:refs:19b8c2d4e5fa","startTime":"2026-01-02T03:04:05.12Z"}"#,
            ),
        );
        let d = Dispatch::decode(&h, b"").expect("camelCase is accepted");
        let s = d.storage.expect("storage");
        assert_eq!(s.kind, "postgresql");
        assert_eq!(s.table_prefix, None);
        assert_eq!(s.expire_at_days, Some(0.0));
        assert_eq!(s.hangfire_db, "Host=h");
        let c = d.console.expect("console");
        assert_eq!(c.set_key(), "console:19b8c2d4e5fa");
        assert_eq!(c.hash_key(), "console:refs:19b8c2d4e5fa");
        assert_eq!(c.progress_bar_id, 0);
        assert_eq!(c.start_time(), "2026-01-02T03:04:05.12Z");

        let mut h = base();
        h.insert(
            H_STORAGE,
            b64(r#"{"Type":"postgresql","HANGFIREDB":"Host=h","ExpireAtDays":"3"}"#),
        );
        let s = Dispatch::decode(&h, b"")
            .expect("valid")
            .storage
            .expect("storage");
        assert_eq!(s.hangfire_db, "Host=h");
        assert_eq!(s.expire_at_days, Some(3.0));
        assert_eq!(s.table_prefix, None);

        let mut h = base();
        h.insert(
            H_CONSOLE,
            HeaderValue::from_static(r#"{"setKey":"console:a","startTime":"x"}"#),
        );
        let e = Dispatch::decode(&h, b"")
            .expect_err("no hash key")
            .to_string();
        assert!(e.contains(H_CONSOLE) && e.contains("HashKey"), "{e}");
    }
}
