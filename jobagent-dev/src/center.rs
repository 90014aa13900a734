//! Requests to the agent, built as a Hangfire.HttpJob center builds them (PROTOCOL.md
//! section 1), and the agent's answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::args::{Options, Secret};
use crate::store::StoreSpec;

/// How long the agent may take to answer (the center's default job `Timeout`).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Where a job's dashboard page would be; `.invalid` is never a real host.
const DASHBOARD: &str = "http://jobagent-dev.invalid/hangfire";

/// Base64 of UTF-8 text, as the center encodes header values.
fn b64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

/// A fresh job id shaped like Hangfire's numeric ids: unix milliseconds and three random
/// digits.
pub(crate) fn fresh_job_id() -> String {
    let ms = unix_ms(SystemTime::now());
    let r = rand::random::<u16>() % 1000;
    format!("{}", ms * 1000 + u128::from(r))
}

fn unix_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn guid() -> String {
    let h: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A Hangfire server id: `<host>:<pid>:<guid>`.
pub(crate) fn fresh_server_id() -> String {
    format!("jobagent-dev:{}:{}", std::process::id(), guid())
}

/// Formats a time as Json.NET writes a UTC `DateTime`: seven fraction digits and `Z`.
pub(crate) fn dotnet_utc(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    t.format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.0000000Z".to_owned())
}

/// The console a center opens for a job (`x-job-agent-console`).
#[derive(Clone, Debug)]
pub(crate) struct ConsoleInfo {
    /// `console:<consoleId>`: the set of lines.
    pub(crate) set_key: String,
    /// `console:refs:<consoleId>`: the hash of long texts.
    pub(crate) hash_key: String,
    /// When the console started, in the center's format.
    pub(crate) start_time: String,
}

impl ConsoleInfo {
    /// A console for `job_id` starting now; ids shaped like Hangfire.Console's
    /// (`<11 hex digits of unix ms><job id>`).
    pub(crate) fn for_job(job_id: &str) -> Self {
        let now = SystemTime::now();
        let id = format!("{:011x}{job_id}", unix_ms(now));
        Self {
            set_key: format!("console:{id}"),
            hash_key: format!("console:refs:{id}"),
            start_time: dotnet_utc(now),
        }
    }

    fn to_json(&self) -> String {
        json!({
            "SetKey": self.set_key,
            "ProgressBarId": 0,
            "HashKey": self.hash_key,
            "StartTime": self.start_time,
        })
        .to_string()
    }
}

/// What the agent answered.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// The status's reason phrase.
    pub(crate) reason: &'static str,
    /// The body text.
    pub(crate) body: String,
}

impl Answer {
    /// The first line to print: `agent: 200 OK` and, for one-line bodies, the body.
    pub(crate) fn render(&self) -> String {
        let body = self.body.trim_end();
        if body.is_empty() {
            format!("agent: {} {}", self.status, self.reason)
        } else if body.contains('\n') {
            format!("agent: {} {}\n{body}", self.status, self.reason)
        } else {
            format!("agent: {} {}: {body}", self.status, self.reason)
        }
    }
}

/// A scheduling-center stand-in for one agent URL.
pub(crate) struct Center {
    client: reqwest::Client,
    agent: reqwest::Url,
    auth: Option<(String, Secret)>,
    storage: Option<String>,
    server_id: String,
    worker_id: String,
    headers: Vec<(String, String)>,
}

/// One job dispatch.
pub(crate) struct Dispatch<'a> {
    /// `run`, `stop` or `detail`.
    pub(crate) action: &'a str,
    /// The class.
    pub(crate) class: &'a str,
    /// The dispatch's job id.
    pub(crate) job_id: &'a str,
    /// The body (`Data`).
    pub(crate) param: &'a str,
    /// `AgentTimeout`.
    pub(crate) timeout_ms: i64,
    /// The console opened for this dispatch.
    pub(crate) console: &'a ConsoleInfo,
}

impl Center {
    /// A center configured by the options; `store` is the parsed `--store`.
    pub(crate) fn new(opts: &Options, store: Option<&StoreSpec>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let storage = store.map(|s| s.storage_header().to_string());
        Ok(Self {
            client,
            agent: opts.agent.clone(),
            auth: opts.auth.clone(),
            storage,
            server_id: opts.server_id.clone().unwrap_or_else(fresh_server_id),
            worker_id: guid(),
            headers: opts.headers.clone(),
        })
    }

    /// The center's server id (the part before `@_@` in `x-job-server`).
    pub(crate) fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The agent URL.
    pub(crate) fn agent(&self) -> &reqwest::Url {
        &self.agent
    }

    /// The agent's `host:port` as the center knows it (`x-job-agent-server`).
    pub(crate) fn agent_host_port(&self) -> String {
        let host = self.agent.host_str().unwrap_or_default();
        let port = self.agent.port_or_known_default().unwrap_or(80);
        format!("{host}:{port}")
    }

    /// The job item a center sends in `x-job-body`.
    fn item(&self, d: &Dispatch<'_>) -> String {
        let name = d
            .class
            .split(',')
            .next()
            .unwrap_or_default()
            .rsplit([':', '.'])
            .next()
            .unwrap_or_default();
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let (user, password) = match &self.auth {
            Some((u, p)) => (json!(u), json!(p.expose())),
            None => (Value::Null, Value::Null),
        };
        json!({
            "Url": self.agent.as_str(),
            "Method": "POST",
            "Data": d.param,
            "ContentType": "application/json",
            "Timeout": HTTP_TIMEOUT.as_millis() as u64,
            "DelayFromMinutes": 0,
            "Cron": null,
            "JobName": name,
            "RecurringJobIdentifier": name,
            "QueueName": "DEFAULT",
            "AgentClass": d.class,
            "AgentTimeout": d.timeout_ms,
            "SendSuccess": false,
            "SendFail": false,
            "Mail": [],
            "EnableRetry": false,
            "RetryTimes": 0,
            "RetryDelaysInSeconds": null,
            "BasicUserName": user,
            "BasicPassword": password,
            "Headers": headers,
            "CallbackEL": null,
            "TimeZone": null,
            "DingTalk": {"Token": null, "AtPhones": null, "IsAtAll": false},
        })
        .to_string()
    }

    fn auth_header(&self, headers: &mut Vec<(String, String)>) {
        if let Some((user, password)) = &self.auth
            && !user.is_empty()
            && !password.expose().is_empty()
        {
            headers.push((
                "authorization".to_owned(),
                format!("Basic {}", b64(&format!("{user}:{}", password.expose()))),
            ));
        }
    }

    /// Sends a job dispatch (`run`, `stop`, `detail`) with the center's headers.
    pub(crate) async fn dispatch(&self, d: &Dispatch<'_>) -> Result<Answer, String> {
        let mut h: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.headers {
            h.push((name.clone(), b64(value)));
        }
        h.push((
            "x-job-server".to_owned(),
            b64(&format!("{}@_@{}", self.server_id, self.worker_id)),
        ));
        h.push(("x-job-agent-class".to_owned(), d.class.to_owned()));
        if !self.headers.is_empty() {
            let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
            h.push(("x-job-agent-header".to_owned(), names.join("_@_")));
        }
        if let Some(storage) = &self.storage {
            h.push(("x-job-storage".to_owned(), b64(storage)));
        }
        h.push(("x-job-agent-console".to_owned(), d.console.to_json()));
        h.push((
            "x-job-url".to_owned(),
            b64(&format!("{DASHBOARD}/jobs/details/{}", d.job_id)),
        ));
        h.push(("x-job-id".to_owned(), d.job_id.to_owned()));
        h.push(("x-job-body".to_owned(), b64(&self.item(d))));
        h.push(("x-job-agent-action".to_owned(), d.action.to_owned()));
        self.auth_header(&mut h);
        h.push((
            "content-type".to_owned(),
            "application/json; charset=utf-8".to_owned(),
        ));
        self.send(self.agent.clone(), h, d.param.to_owned()).await
    }

    /// Sends a heartbeat as the center's heartbeat server does: `?<guid>`, the storage, the
    /// agent's `host:port`, the server id, basic auth; no class, no job id, no body.
    pub(crate) async fn heartbeat(&self) -> Result<Answer, String> {
        let mut h: Vec<(String, String)> = Vec::new();
        h.push(("accept".to_owned(), "application/json".to_owned()));
        if let Some(storage) = &self.storage {
            h.push(("x-job-storage".to_owned(), b64(storage)));
        }
        h.push(("x-job-agent-action".to_owned(), "heartbeat".to_owned()));
        h.push(("x-job-agent-server".to_owned(), self.agent_host_port()));
        h.push(("x-job-server".to_owned(), b64(&self.server_id)));
        self.auth_header(&mut h);
        let mut url = self.agent.clone();
        url.set_query(Some(&guid()));
        self.send(url, h, String::new()).await
    }

    async fn send(
        &self,
        url: reqwest::Url,
        headers: Vec<(String, String)>,
        body: String,
    ) -> Result<Answer, String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            // Values are base64 or checked ASCII; the error must not echo a value.
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of header `{name}` is not valid in a header"))?;
            map.append(name, value);
        }
        let response = self
            .client
            .post(url)
            .headers(map)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&self.agent, &e))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| describe(&self.agent, &e))?;
        Ok(Answer {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or(""),
            body,
        })
    }
}

/// A request error in words, naming the agent URL (which holds no credentials).
fn describe(agent: &reqwest::Url, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        format!("no answer within {} s", HTTP_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect (is the agent running? start one with `cargo run -p example-agent`)"
            .to_owned()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    };
    format!("the agent at {agent} did not answer: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_center() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_767_323_045_123_456_700);
        assert_eq!(dotnet_utc(at), "2026-01-02T03:04:05.1234567Z");
        let c = ConsoleInfo::for_job("42");
        assert!(c.set_key.starts_with("console:") && c.set_key.ends_with("42"));
        assert_eq!(c.set_key.len(), "console:".len() + 11 + 2);
        assert_eq!(c.hash_key, c.set_key.replace("console:", "console:refs:"));
        let v: Value = serde_json::from_str(&c.to_json()).expect("json");
        assert_eq!(v["ProgressBarId"], 0);
        let id = fresh_job_id();
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
    }

    #[test]
    fn renders_answers() {
        let a = Answer {
            status: 500,
            reason: "Internal Server Error",
            body: "err: no such class".to_owned(),
        };
        assert_eq!(
            a.render(),
            "agent: 500 Internal Server Error: err: no such class"
        );
        let a = Answer {
            status: 200,
            reason: "OK",
            body: "JobClass: x\nStatus: Running\n".to_owned(),
        };
        assert_eq!(a.render(), "agent: 200 OK\nJobClass: x\nStatus: Running");
    }
}
