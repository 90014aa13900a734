//! Decoding a center request (PROTOCOL.md section 1) into a [`Dispatch`].

use std::collections::BTreeMap;
use std::fmt;

use axum::http::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::error::DispatchError;
use crate::item::LazyItem;

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
pub enum Action {
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
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Stop => "stop",
            Action::Detail => "detail",
            Action::Heartbeat => "heartbeat",
        }
    }
}

/// Where the center asks console lines to go (`x-job-agent-console`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ConsoleTarget {
    /// The set key, `console:<id>`.
    pub set_key: String,
    /// The first progress bar id minus one.
    #[serde(default)]
    pub progress_bar_id: i64,
    /// The hash key for long lines, `console:refs:<id>`.
    pub hash_key: String,
    /// When the console started; line offsets count from here.
    pub start_time: String,
}

/// The center's store description (`x-job-storage`). `Debug` hides the connection string.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct StorageHeader {
    /// The store kind; this agent speaks `postgresql`.
    #[serde(default, rename = "Type")]
    pub kind: String,
    /// The Hangfire schema.
    #[serde(default)]
    pub table_prefix: Option<String>,
    /// Days until written rows expire.
    #[serde(default)]
    pub expire_at_days: Option<f64>,
    /// The Npgsql connection string (a secret).
    #[serde(default)]
    pub hangfire_db: String,
}

impl fmt::Debug for StorageHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageHeader")
            .field("kind", &self.kind)
            .field("table_prefix", &self.table_prefix)
            .field("expire_at_days", &self.expire_at_days)
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
        let item = match base64_text(h.body, H_BODY)? {
            Some(json) if !json.trim().is_empty() => LazyItem::from_json(json)
                .map_err(|e| bad(H_BODY, format!("not a job item: {e}")))?,
            _ => LazyItem::default(),
        };
        let job_url = base64_text(h.url, H_URL)?;
        let server_id = base64_text(h.server, H_SERVER)?.map(|mut s| {
            // `server@_@worker`: the agent reports to the server.
            if let Some(at) = s.find("@_@") {
                s.truncate(at);
            }
            s
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
                serde_json::from_str::<ConsoleTarget>(json)
                    .map_err(|e| bad(H_CONSOLE, format!("not a console description: {e}")))?,
            ),
            _ => None,
        };
        let mut extra = BTreeMap::new();
        if let Some(names) = plain(h.extra, H_EXTRA)? {
            for name in names.split("_@_").map(str::trim).filter(|n| !n.is_empty()) {
                let Some(raw) = headers.get(name) else {
                    continue;
                };
                let raw = raw.to_str().map_err(|_| {
                    bad(
                        H_EXTRA,
                        format!("header `{}` is not ASCII", truncate(name, 64)),
                    )
                })?;
                let value = decode_base64(raw).map_err(|reason| {
                    bad(
                        H_EXTRA,
                        format!("header `{}`: {reason}", truncate(name, 64)),
                    )
                })?;
                extra.insert(name.to_owned(), value);
            }
        }
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
            headers: extra,
            agent_server,
            body,
        })
    }
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
pub(crate) fn decode_base64(raw: &str) -> Result<String, String> {
    decode_base64_bytes(raw.as_bytes())
}

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
            HeaderValue::from_static(r#"{"SetKey":"console:abc","ProgressBarId":0,"HashKey":"console:refs:abc","StartTime":"2026-01-02T03:04:05.1234567Z"}"#),
        );
        let d = Dispatch::decode(&h, br#"{"Hour":48}"#).expect("valid");
        assert_eq!(d.action, Action::Run);
        assert_eq!(d.item.get().job_name.as_deref(), Some("名字"));
        assert_eq!(d.item.agent_timeout(), Some(100));
        assert_eq!(d.server_id.as_deref(), Some("srv-1:123"));
        assert_eq!(d.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            d.console.as_ref().map(|c| c.set_key.as_str()),
            Some("console:abc")
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
            let ours = decode_base64(case).ok();
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
}
