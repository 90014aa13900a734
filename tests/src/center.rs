//! A stand-in for the Hangfire.HttpJob scheduling center: builds requests to a job agent
//! exactly as the center does (PROTOCOL.md section 1) and reads the answers the way the center
//! reads them (section 2).
//!
//! ```no_run
//! # async fn demo() {
//! use tests::center::Center;
//!
//! let center = Center::new("http://127.0.0.1:5000/jobagent");
//! let reply = center
//!     .run("example_agent::jobs::TestJob", "1001")
//!     .param(serde_json::json!({"sleep_ms": 200}))
//!     .timeout_ms(5_000)
//!     .send()
//!     .await;
//! assert_eq!(reply.status, 200, "{}", reply.body);
//! # }
//! ```

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The header names of PROTOCOL.md section 1.
pub mod headers {
    /// `run`, `stop`, `detail` or `heartbeat`.
    pub const ACTION: &str = "x-job-agent-action";
    /// The job class (`AgentClass`).
    pub const CLASS: &str = "x-job-agent-class";
    /// The Hangfire background-job id of the dispatch.
    pub const JOB_ID: &str = "x-job-id";
    /// Base64 of the job item JSON.
    pub const BODY: &str = "x-job-body";
    /// Base64 of the dashboard URL of the job.
    pub const URL: &str = "x-job-url";
    /// Base64 of `<serverId>@_@<workerId>` (heartbeats: the server id alone).
    pub const SERVER: &str = "x-job-server";
    /// Base64 of the center's storage JSON.
    pub const STORAGE: &str = "x-job-storage";
    /// Plain JSON console description.
    pub const CONSOLE: &str = "x-job-agent-console";
    /// Names of the pass-through headers joined by `_@_`.
    pub const EXTRA: &str = "x-job-agent-header";
    /// Heartbeats: the agent's `host:port` as the center knows it.
    pub const AGENT_SERVER: &str = "x-job-agent-server";
    /// The response header carrying the agent's process id.
    pub const AGENT_SERVER_ID: &str = "agentServerId";
}

/// Base64 of the UTF-8 bytes of `text`, as the center encodes header values.
pub fn b64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

/// The center's store description sent in `x-job-storage`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Storage {
    /// The store kind (`postgresql`, `mysql`, `sqlserver`, `redis`).
    #[serde(rename = "Type")]
    pub kind: String,
    /// The Hangfire schema.
    pub table_prefix: Option<String>,
    /// Days until rows expire.
    pub expire_at_days: Option<i64>,
    /// The connection string (Npgsql form for PostgreSQL).
    pub hangfire_db: String,
}

impl Storage {
    /// A PostgreSQL store in schema `hangfire`, rows expiring after 7 days.
    pub fn postgresql(connection_string: impl Into<String>) -> Self {
        Self {
            kind: "postgresql".to_owned(),
            table_prefix: Some("hangfire".to_owned()),
            expire_at_days: Some(7),
            hangfire_db: connection_string.into(),
        }
    }

    /// A store of another kind (for mismatch tests).
    pub fn of_kind(kind: impl Into<String>, connection_string: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            ..Self::postgresql(connection_string)
        }
    }

    /// Uses another schema.
    pub fn table_prefix(mut self, schema: impl Into<String>) -> Self {
        self.table_prefix = Some(schema.into());
        self
    }

    /// Sets `ExpireAtDays`.
    pub fn expire_at_days(mut self, days: i64) -> Self {
        self.expire_at_days = Some(days);
        self
    }

    /// The JSON the center sends (before base64).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The console description sent in `x-job-agent-console`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleInfo {
    /// `console:<consoleId>`.
    pub set_key: String,
    /// The first progress bar id minus one.
    pub progress_bar_id: i64,
    /// `console:refs:<consoleId>`.
    pub hash_key: String,
    /// When the console started, `2026-01-02T03:04:05.1234567Z`.
    pub start_time: String,
}

impl ConsoleInfo {
    /// A console for `job_id` starting now, with ids shaped like Hangfire.Console's
    /// (`<11 hex digits of unix ms><job id>`).
    pub fn for_job(job_id: &str) -> Self {
        Self::for_job_at(job_id, SystemTime::now())
    }

    /// A console for `job_id` starting at `start`.
    pub fn for_job_at(job_id: &str, start: SystemTime) -> Self {
        let ms = start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let console_id = format!("{ms:011x}{job_id}");
        Self {
            set_key: format!("console:{console_id}"),
            progress_bar_id: 0,
            hash_key: format!("console:refs:{console_id}"),
            start_time: dotnet_utc(start),
        }
    }
}

/// Formats a time as Json.NET writes a UTC `DateTime`: seven fractional digits and `Z`.
pub fn dotnet_utc(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    t.format(&format).unwrap_or_default()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn guid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A scheduling center stand-in pointed at one agent URL. Cheap to clone.
#[derive(Clone)]
pub struct Center {
    client: reqwest::Client,
    url: String,
    server_id: String,
    worker_id: String,
    dashboard: String,
    basic: Option<(String, String)>,
    storage: Option<String>,
    expect_server_id: Option<String>,
}

impl fmt::Debug for Center {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Center")
            .field("url", &self.url)
            .field("server_id", &self.server_id)
            .field("basic_user", &self.basic.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl Center {
    /// A center whose jobs call `agent_url` (the job's `Url`, e.g.
    /// `http://127.0.0.1:5000/jobagent`).
    pub fn new(agent_url: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let host = "center-test";
        Self {
            client,
            url: agent_url.into(),
            server_id: format!("{host}:{}:{}", std::process::id(), guid()),
            worker_id: guid(),
            dashboard: "http://center.test/hangfire".to_owned(),
            basic: None,
            storage: None,
            expect_server_id: None,
        }
    }

    /// Every job of this center is configured with basic auth (`BasicUserName`,
    /// `BasicPassword`).
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// The center runs on this store and sends it in `x-job-storage`.
    pub fn with_storage(mut self, storage: &Storage) -> Self {
        self.storage = Some(storage.to_json());
        self
    }

    /// Sends this raw text (before base64) as `x-job-storage`.
    pub fn with_storage_json(mut self, json: impl Into<String>) -> Self {
        self.storage = Some(json.into());
        self
    }

    /// The center's Hangfire server id (the part before `@_@` in `x-job-server`).
    pub fn with_server_id(mut self, server_id: impl Into<String>) -> Self {
        self.server_id = server_id.into();
        self
    }

    /// Every reply must carry this `agentServerId` as header and cookie and be `text/plain`;
    /// [`CenterRequest::send`] panics otherwise.
    pub fn expect_agent(mut self, server_id: impl Into<String>) -> Self {
        self.expect_server_id = Some(server_id.into());
        self
    }

    /// The agent URL the jobs call.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The center's server id.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The `host:port` of the agent URL, as the center sends it in `x-job-agent-server`.
    pub fn agent_host_port(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        }
    }

    /// A `run` dispatch of `class` with Hangfire job id `job_id`.
    pub fn run(&self, class: &str, job_id: &str) -> CenterRequest {
        self.dispatch("run", class, job_id)
    }

    /// A `stop` dispatch; `job_id` is the stop dispatch's own job id.
    pub fn stop(&self, class: &str, job_id: &str) -> CenterRequest {
        self.dispatch("stop", class, job_id)
    }

    /// A `detail` dispatch, with a fresh job id.
    pub fn detail(&self, class: &str) -> CenterRequest {
        let id = format!("detail-{}", random_hex(4));
        self.dispatch("detail", class, &id)
    }

    /// A dispatch with any action text (sent as given).
    pub fn dispatch(&self, action: &str, class: &str, job_id: &str) -> CenterRequest {
        CenterRequest::new(self.clone(), Kind::Job)
            .set_action(action)
            .set_class(class)
            .set_job_id(job_id)
    }

    /// A heartbeat as the center's heartbeat server sends it: POST with a `?<guid>` query,
    /// `x-job-agent-server`, the server id in `x-job-server`, the storage, and basic auth;
    /// no class, no job id, no job item.
    pub fn heartbeat(&self) -> CenterRequest {
        CenterRequest::new(self.clone(), Kind::Heartbeat)
            .set_action("heartbeat")
            .query(guid())
    }

    /// Polls `detail` of `class` until `done` holds for a reply, or panics after `within`
    /// with the last reply.
    pub async fn wait_detail(
        &self,
        class: &str,
        within: Duration,
        done: impl Fn(&Reply) -> bool,
    ) -> Reply {
        let deadline = Instant::now() + within;
        loop {
            let reply = self.detail(class).send().await;
            if done(&reply) {
                return reply;
            }
            if Instant::now() >= deadline {
                panic!(
                    "detail of {class} did not reach the expected state within {within:?}; last reply: {reply:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Job,
    Heartbeat,
}

/// One request being built; [`send`](Self::send) it.
#[must_use = "a request does nothing until it is sent"]
pub struct CenterRequest {
    center: Center,
    kind: Kind,
    method: Method,
    query: Option<String>,
    action: Option<String>,
    class: Option<String>,
    job_id: Option<String>,
    data: String,
    content_type: String,
    item: Map<String, Value>,
    extra: Vec<(String, String)>,
    basic: Option<(String, String)>,
    storage: Option<String>,
    console: Option<ConsoleInfo>,
    overrides: Vec<(String, Option<String>)>,
}

impl fmt::Debug for CenterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CenterRequest")
            .field("method", &self.method)
            .field("action", &self.action)
            .field("class", &self.class)
            .field("job_id", &self.job_id)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl CenterRequest {
    fn new(center: Center, kind: Kind) -> Self {
        let basic = center.basic.clone();
        let storage = center.storage.clone();
        Self {
            center,
            kind,
            method: Method::POST,
            query: None,
            action: None,
            class: None,
            job_id: None,
            data: String::new(),
            content_type: "application/json".to_owned(),
            item: Map::new(),
            extra: Vec::new(),
            basic,
            storage,
            console: None,
            overrides: Vec::new(),
        }
    }

    fn set_action(mut self, action: &str) -> Self {
        self.action = Some(action.to_owned());
        self
    }

    fn set_class(mut self, class: &str) -> Self {
        self.class = Some(class.to_owned());
        self
    }

    fn set_job_id(mut self, job_id: &str) -> Self {
        self.job_id = Some(job_id.to_owned());
        self
    }

    /// The job's parameter (`Data`), serialized as JSON; it is the request body.
    pub fn param(mut self, param: impl Serialize) -> Self {
        self.data = serde_json::to_string(&param).unwrap_or_default();
        self
    }

    /// The job's `Data` as raw text.
    pub fn data(mut self, text: impl Into<String>) -> Self {
        self.data = text.into();
        self
    }

    /// The job's `ContentType` (default `application/json`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// `AgentTimeout` in milliseconds.
    pub fn timeout_ms(self, ms: i64) -> Self {
        self.item_field("AgentTimeout", json!(ms))
    }

    /// Sets (or replaces) any field of the job item.
    pub fn item_field(mut self, name: &str, value: Value) -> Self {
        self.item.insert(name.to_owned(), value);
        self
    }

    /// A header configured on the job: sent base64-encoded, named in `x-job-agent-header`, and
    /// listed in the item's `Headers`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// The job is configured with basic auth.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// The job has no basic auth configured.
    pub fn no_auth(mut self) -> Self {
        self.basic = None;
        self
    }

    /// Sends this storage in `x-job-storage`.
    pub fn storage(mut self, storage: &Storage) -> Self {
        self.storage = Some(storage.to_json());
        self
    }

    /// Sends this raw text (before base64) as `x-job-storage`.
    pub fn storage_json(mut self, json: impl Into<String>) -> Self {
        self.storage = Some(json.into());
        self
    }

    /// Sends no `x-job-storage`.
    pub fn no_storage(mut self) -> Self {
        self.storage = None;
        self
    }

    /// Uses this console description (default: a fresh one per dispatch).
    pub fn console(mut self, console: ConsoleInfo) -> Self {
        self.console = Some(console);
        self
    }

    /// The HTTP method (default POST).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Appends `?<query>` to the URL.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Replaces a header's value after the center's headers are built (for malformed
    /// requests).
    pub fn set_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.overrides
            .push((name.to_ascii_lowercase(), Some(value.into())));
        self
    }

    /// Removes a header after the center's headers are built (for malformed requests).
    pub fn remove_header(mut self, name: &str) -> Self {
        self.overrides.push((name.to_ascii_lowercase(), None));
        self
    }

    /// The job item JSON the center sends in `x-job-body` (Json.NET, PascalCase, nulls kept).
    pub fn item_json(&self) -> String {
        let class = self.class.clone().unwrap_or_default();
        let name = class
            .split(',')
            .next()
            .unwrap_or_default()
            .rsplit([':', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let headers: Map<String, Value> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let (user, password) = match &self.basic {
            Some((u, p)) => (json!(u), json!(p)),
            None => (Value::Null, Value::Null),
        };
        let mut item = Map::new();
        let mut put = |k: &str, v: Value| {
            item.insert(k.to_owned(), v);
        };
        put("Url", json!(self.center.url));
        put("Method", json!("POST"));
        put("Data", json!(self.data));
        put("ContentType", json!(self.content_type));
        put("Timeout", json!(20000));
        put("DelayFromMinutes", json!(0));
        put("Cron", Value::Null);
        put("JobName", json!(name));
        put("RecurringJobIdentifier", json!(name));
        put("QueueName", json!("DEFAULT"));
        put("AgentClass", json!(class));
        put("AgentTimeout", json!(0));
        put("SendSuccess", json!(false));
        put("SendFail", json!(true));
        put("Mail", json!([]));
        put("EnableRetry", json!(false));
        put("RetryTimes", json!(3));
        put("RetryDelaysInSeconds", json!("20,30,60"));
        put("BasicUserName", user);
        put("BasicPassword", password);
        put("Headers", Value::Object(headers));
        put("CallbackEL", Value::Null);
        put("TimeZone", Value::Null);
        put(
            "DingTalk",
            json!({"Token": null, "AtPhones": null, "IsAtAll": false}),
        );
        for (k, v) in &self.item {
            item.insert(k.clone(), v.clone());
        }
        Value::Object(item).to_string()
    }

    /// The URL this request goes to.
    pub fn target_url(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.center.url),
            None => self.center.url.clone(),
        }
    }

    /// The headers as the center sends them, after overrides.
    pub fn build_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| h.push((k.to_owned(), v));
        match self.kind {
            Kind::Heartbeat => {
                put("accept", "application/json".to_owned());
                if let Some(storage) = &self.storage {
                    put(headers::STORAGE, b64(storage));
                }
                if let Some(action) = &self.action {
                    put(headers::ACTION, action.clone());
                }
                put(headers::AGENT_SERVER, self.center.agent_host_port());
                put(headers::SERVER, b64(&self.center.server_id));
            }
            Kind::Job => {
                for (name, value) in &self.extra {
                    put(name, b64(value));
                }
                put(
                    headers::SERVER,
                    b64(&format!(
                        "{}@_@{}",
                        self.center.server_id, self.center.worker_id
                    )),
                );
                if let Some(class) = &self.class {
                    put(headers::CLASS, class.clone());
                }
                if !self.extra.is_empty() {
                    let names: Vec<&str> = self.extra.iter().map(|(k, _)| k.as_str()).collect();
                    put(headers::EXTRA, names.join("_@_"));
                }
                if let Some(storage) = &self.storage {
                    put(headers::STORAGE, b64(storage));
                }
                let job_id = self.job_id.clone().unwrap_or_default();
                let console = self
                    .console
                    .clone()
                    .unwrap_or_else(|| ConsoleInfo::for_job(&job_id));
                put(
                    headers::CONSOLE,
                    serde_json::to_string(&console).unwrap_or_default(),
                );
                put(
                    headers::URL,
                    b64(&format!("{}/jobs/details/{job_id}", self.center.dashboard)),
                );
                put(headers::JOB_ID, job_id);
                put(headers::BODY, b64(&self.item_json()));
                if let Some(action) = &self.action {
                    put(headers::ACTION, action.clone());
                }
            }
        }
        if let Some((user, password)) = &self.basic
            && !user.is_empty()
            && !password.is_empty()
        {
            put(
                "authorization",
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
            );
        }
        for (name, value) in &self.overrides {
            h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            if let Some(value) = value {
                h.push((name.clone(), value.clone()));
            }
        }
        h
    }

    /// Sends the request; panics when the agent cannot be reached (or, with
    /// [`Center::expect_agent`], when the reply lacks the agent's marks).
    pub async fn send(self) -> Reply {
        let what = format!("{self:?}");
        let expect = self.center.expect_server_id.clone();
        let reply = match self.try_send().await {
            Ok(reply) => reply,
            Err(e) => panic!("the agent did not answer {what}: {e}"),
        };
        if let Some(id) = expect {
            reply.assert_marked(&id);
        }
        reply
    }

    /// Sends the request.
    pub async fn try_send(self) -> Result<Reply, reqwest::Error> {
        let mut map = HeaderMap::new();
        for (name, value) in self.build_headers() {
            let name = HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|e| panic!("bad header name `{name}`: {e}"));
            let value = HeaderValue::from_bytes(value.as_bytes())
                .unwrap_or_else(|e| panic!("bad header value for `{name}`: {e}"));
            map.append(name, value);
        }
        let mut request = self
            .center
            .client
            .request(self.method.clone(), self.target_url())
            .headers(map);
        if self.kind == Kind::Job {
            request = request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    format!("{}; charset=utf-8", self.content_type),
                )
                .body(self.data.clone());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get(headers::AGENT_SERVER_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cookie = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                let first = c.split(';').next()?.trim();
                let (k, v) = first.split_once('=')?;
                (k.trim() == headers::AGENT_SERVER_ID).then(|| v.trim().to_owned())
            });
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await?;
        Ok(Reply {
            status,
            body,
            agent_server_id_header: header,
            cookie,
            content_type,
        })
    }
}

/// What the agent answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body text.
    pub body: String,
    /// The `agentServerId` response header.
    pub agent_server_id_header: Option<String>,
    /// The value of the `agentServerId` cookie.
    pub cookie: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
}

impl Reply {
    /// Status 200.
    pub fn is_ok(&self) -> bool {
        self.status == 200
    }

    /// The body starts with `err:`.
    pub fn is_err_body(&self) -> bool {
        self.body.starts_with("err:")
    }

    /// What a center set to tolerate busy singletons reads from a 501: the body split on
    /// `,JobId:`, the part after it (`None` unless there is exactly one separator).
    pub fn busy_job_id(&self) -> Option<&str> {
        let parts: Vec<&str> = self.body.split(",JobId:").collect();
        match parts.as_slice() {
            [_, id] => Some(id),
            _ => None,
        }
    }

    /// `word` appears in the body as a whole word (`Running` does not match `RunningTime`).
    pub fn has_word(&self, word: &str) -> bool {
        self.body
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == word)
    }

    /// Panics unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "expected status {status}, got {}: {:?}",
            self.status, self.body
        );
        self
    }

    /// Panics unless this is a refusal: `status` with a body starting `err:`.
    #[track_caller]
    pub fn assert_err(&self, status: u16) -> &Self {
        self.assert_status(status);
        assert!(
            self.is_err_body(),
            "a refusal must start with `err:`: {:?}",
            self.body
        );
        self
    }

    /// Panics unless the reply carries `server_id` as `agentServerId` header and cookie and
    /// is `text/plain`.
    #[track_caller]
    pub fn assert_marked(&self, server_id: &str) -> &Self {
        assert_eq!(
            self.agent_server_id_header.as_deref(),
            Some(server_id),
            "agentServerId header missing or wrong on {self:?}"
        );
        assert_eq!(
            self.cookie.as_deref(),
            Some(server_id),
            "agentServerId cookie missing or wrong on {self:?}"
        );
        let ct = self.content_type.as_deref().unwrap_or_default();
        assert!(
            ct.to_ascii_lowercase().starts_with("text/plain"),
            "content type must be text/plain, got {ct:?} on {self:?}"
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_center_headers() {
        let center = Center::new("http://127.0.0.1:5000/jobagent").with_storage(
            &Storage::postgresql("Host=h;Port=5432;Database=d;Username=u;Password=p"),
        );
        let req = center
            .run("A.B,Asm", "42")
            .param(json!({"Hour": 48}))
            .timeout_ms(1500)
            .header("tenant", "acme")
            .basic_auth("u", "p");
        let h = req.build_headers();
        let get = |name: &str| {
            h.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get(headers::ACTION), "run");
        assert_eq!(get(headers::CLASS), "A.B,Asm");
        assert_eq!(get(headers::JOB_ID), "42");
        assert_eq!(get(headers::EXTRA), "tenant");
        assert_eq!(get("tenant"), b64("acme"));
        let body = String::from_utf8(STANDARD.decode(get(headers::BODY)).unwrap_or_default())
            .unwrap_or_default();
        let item: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(item["AgentTimeout"], json!(1500));
        assert_eq!(item["Data"], json!(r#"{"Hour":48}"#));
        assert_eq!(item["Headers"]["tenant"], json!("acme"));
        assert_eq!(item["AgentClass"], json!("A.B,Asm"));
        let server = String::from_utf8(STANDARD.decode(get(headers::SERVER)).unwrap_or_default())
            .unwrap_or_default();
        assert!(server.starts_with(center.server_id()) && server.contains("@_@"));
        let console: Value = serde_json::from_str(&get(headers::CONSOLE)).unwrap_or_default();
        assert!(
            console["SetKey"]
                .as_str()
                .unwrap_or_default()
                .ends_with("42")
        );
        assert_eq!(console["StartTime"].as_str().map(str::len), Some(28));
        assert_eq!(get("authorization"), format!("Basic {}", b64("u:p")));
        assert!(get(headers::STORAGE).len() > 10);

        let hb = center.heartbeat().build_headers();
        assert!(
            hb.iter()
                .any(|(k, v)| k == headers::AGENT_SERVER && v == "127.0.0.1:5000")
        );
        assert!(
            !hb.iter()
                .any(|(k, _)| k == headers::CLASS || k == headers::JOB_ID)
        );
    }

    #[test]
    fn reads_busy_job_id_like_the_center() {
        let reply = Reply {
            status: 501,
            body: "err:job X is Running,JobId:77".to_owned(),
            agent_server_id_header: None,
            cookie: None,
            content_type: None,
        };
        assert_eq!(reply.busy_job_id(), Some("77"));
        assert!(!reply.has_word("Run"));
        assert!(reply.has_word("Running"));
    }
}
