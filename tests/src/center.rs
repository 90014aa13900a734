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
    /// Redis: the database number, as text (Hangfire.Redis.StackExchange's `Db`).
    #[serde(rename = "Db", skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
}

impl Storage {
    /// A PostgreSQL store in schema `hangfire`, rows expiring after 7 days.
    pub fn postgresql(connection_string: impl Into<String>) -> Self {
        Self {
            kind: "postgresql".to_owned(),
            table_prefix: Some("hangfire".to_owned()),
            expire_at_days: Some(7),
            hangfire_db: connection_string.into(),
            db: None,
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

/// The console description sent in `x-job-agent-console`, as the center's `ConsoleInfo`
/// (`Server/Hangfire.HttpJob/Support/Models.cs`): no `ProgressBarId`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleInfo {
    /// `console:<consoleId>`.
    pub set_key: String,
    /// `console:refs:<consoleId>`.
    pub hash_key: String,
    /// When the job's console started, as Newtonsoft writes a UTC `DateTime` of millisecond
    /// precision: `2026-01-02T03:04:05.12Z` (trailing zeros dropped).
    pub start_time: String,
}

impl ConsoleInfo {
    /// A console for `job_id` starting now, with ids shaped like Hangfire.Console's
    /// (`<11 hex digits of unix ms><job id>`).
    pub fn for_job(job_id: &str) -> Self {
        Self::for_job_at(job_id, SystemTime::now())
    }

    /// A console for `job_id` starting at `start` (kept to the millisecond, as Hangfire.Console's
    /// console id keeps it; `Server/Hangfire.HttpJob/Server/HttpJob.cs` `GetConsoleInfo`).
    pub fn for_job_at(job_id: &str, start: SystemTime) -> Self {
        let ms = start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let console_id = format!("{ms:011x}{job_id}");
        let start_ms = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
        Self {
            set_key: format!("console:{console_id}"),
            hash_key: format!("console:refs:{console_id}"),
            start_time: dotnet_utc(start_ms),
        }
    }
}

/// Formats a time as Json.NET writes a UTC `DateTime` (ISO format
/// `yyyy-MM-ddTHH:mm:ss.FFFFFFFZ`): up to seven fractional digits (100 ns ticks), trailing
/// zeros dropped, no `.` when the fraction is zero.
pub fn dotnet_utc(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let mut out = t.format(&format).unwrap_or_default();
    let ticks = format!("{:07}", t.nanosecond() / 100);
    let fraction = ticks.trim_end_matches('0');
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out.push('Z');
    out
}

/// A property name as Newtonsoft's camel-case naming strategy writes it (`AgentClass` →
/// `agentClass`, `URL` → `url`, `DingTalk` → `dingTalk`).
pub fn camel_case(name: &str) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    for i in 0..chars.len() {
        if i == 1 && !chars[i].is_uppercase() {
            break;
        }
        let next_is_upper = chars.get(i + 1).map(|c| c.is_uppercase());
        if i > 0 && next_is_upper == Some(false) {
            break;
        }
        chars[i] = chars[i].to_ascii_lowercase();
    }
    chars.into_iter().collect()
}

/// `value` with every object key camel-cased, as a center whose host sets
/// `CamelCasePropertyNamesContractResolver` as the Newtonsoft default writes it (dictionary
/// keys included).
fn camel_cased(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (camel_case(&k), camel_cased(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_cased).collect()),
        other => other,
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `Guid.NewGuid().ToString("N")`: 32 hex digits, as the heartbeat's query string.
fn guid_n() -> String {
    random_hex(16)
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

/// Request headers .NET keeps on the content, not the request: `TryAddWithoutValidation`
/// on the request's headers fails for them, so a job header of one of these names is listed
/// in `x-job-agent-header` but not sent (`Content-Type` arrives as the body's own).
const CONTENT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "content-location",
    "content-md5",
    "content-range",
    "content-disposition",
    "expires",
    "last-modified",
    "allow",
];

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
    storage_readable: bool,
    camel_case: bool,
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
            storage_readable: true,
            camel_case: false,
            expect_server_id: None,
        }
    }

    /// Every job of this center is configured with basic auth (`BasicUserName`,
    /// `BasicPassword`).
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// The center runs on this store and sends it in `x-job-storage` (unless
    /// [`without_storage_header`](Self::without_storage_header)).
    pub fn with_storage(mut self, storage: &Storage) -> Self {
        self.storage = Some(storage.to_json());
        self
    }

    /// A center that cannot read its own store's connection string: Hangfire.PostgreSql 1.20.3
    /// and later has none of the private fields `Server/HttpJob.cs` `GetCurrentJobStorage`
    /// reflects on, so the center sends **no `x-job-storage`** on any dispatch and **no
    /// heartbeats** at all (`JobAgentHeartBeatServer.cs` `SendHeartbeat` returns when the
    /// storage string is empty). [`heartbeat`](Self::heartbeat) panics on such a center.
    pub fn without_storage_header(mut self) -> Self {
        self.storage_readable = false;
        self
    }

    /// Whether this center sends heartbeats (it does unless
    /// [`without_storage_header`](Self::without_storage_header)).
    pub fn sends_heartbeats(&self) -> bool {
        self.storage_readable
    }

    /// A center whose host sets camel-case Newtonsoft defaults
    /// (`JsonConvert.DefaultSettings` with `CamelCasePropertyNamesContractResolver`): the job
    /// item, `x-job-storage` and `x-job-agent-console` carry `agentClass`, `hangfireDb`,
    /// `setKey`, ... instead of PascalCase names.
    pub fn with_camel_case_json(mut self) -> Self {
        self.camel_case = true;
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

    /// A `detail` request as the center's dashboard sends it (`Server/HttpJob.cs`
    /// `GetAgentJobDetail`): a GET to the job's URL carrying only `x-job-agent-class`,
    /// `x-job-agent-action: detail` and, with basic auth, `Authorization`; no job id, item,
    /// storage, console or body.
    pub fn detail(&self, class: &str) -> CenterRequest {
        CenterRequest::new(self.clone(), Kind::Detail)
            .method(Method::GET)
            .set_action("detail")
            .set_class(class)
    }

    /// A dispatch with any action text (sent as given), shaped as a run.
    pub fn dispatch(&self, action: &str, class: &str, job_id: &str) -> CenterRequest {
        CenterRequest::new(self.clone(), Kind::Job)
            .set_action(action)
            .set_class(class)
            .set_job_id(job_id)
    }

    /// A heartbeat as the center's `JobAgentHeartBeatServer.SendHeartbeat` sends it: POST to
    /// the job URL with `?<guid, 32 hex digits>` appended, `Accept: application/json`, basic
    /// auth when set, `x-job-storage`, `x-job-agent-action: heartbeat`,
    /// `x-job-agent-server: <host>:<port>` and `x-job-server: base64(<server id>)`; no class,
    /// job id, item or body.
    ///
    /// # Panics
    ///
    /// On a center made [`without_storage_header`](Self::without_storage_header): such a
    /// center never sends heartbeats.
    pub fn heartbeat(&self) -> CenterRequest {
        assert!(
            self.sends_heartbeats(),
            "a center that cannot read its store (without_storage_header) sends no heartbeats"
        );
        CenterRequest::new(self.clone(), Kind::Heartbeat)
            .set_action("heartbeat")
            .query(guid_n())
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
    Detail,
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
        let storage = if center.storage_readable {
            center.storage.clone()
        } else {
            None
        };
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
        put("Method", json!(self.method.as_str()));
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
        let item = Value::Object(item);
        if self.center.camel_case {
            camel_cased(item).to_string()
        } else {
            item.to_string()
        }
    }

    /// Whether the center sends a body (and its `Content-Type`): only when the job's method
    /// is not GET and its `Data` is not empty (`Server/HttpJob.cs` `PrepareHttpRequestMessage`);
    /// never with `detail` or heartbeats.
    pub fn has_body(&self) -> bool {
        self.kind == Kind::Job && self.method != Method::GET && !self.data.is_empty()
    }

    /// The `Content-Type` the center's HTTP stack sends with a body:
    /// `<ContentType>; charset=utf-8`.
    pub fn body_content_type(&self) -> String {
        format!("{}; charset=utf-8", self.content_type)
    }

    /// JSON text as this center writes it (camel-cased keys when the center is).
    fn center_json(&self, json: &str) -> String {
        if !self.center.camel_case {
            return json.to_owned();
        }
        match serde_json::from_str::<Value>(json) {
            Ok(value) => camel_cased(value).to_string(),
            Err(_) => json.to_owned(),
        }
    }

    /// The URL this request goes to.
    pub fn target_url(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.center.url),
            None => self.center.url.clone(),
        }
    }

    /// The headers as the center sends them, after overrides. The body's own `Content-Type`
    /// is not among them (see [`has_body`](Self::has_body)).
    pub fn build_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| h.push((k.to_owned(), v));
        let basic = self
            .basic
            .as_ref()
            .filter(|(user, password)| !user.is_empty() && !password.is_empty());
        match self.kind {
            Kind::Heartbeat => {
                // JobAgentHeartBeatServer.cs `SendHeartbeat`.
                put("accept", "application/json".to_owned());
                if let Some(storage) = &self.storage {
                    put(headers::STORAGE, b64(&self.center_json(storage)));
                }
                if let Some(action) = &self.action {
                    put(headers::ACTION, action.clone());
                }
                put(headers::AGENT_SERVER, self.center.agent_host_port());
                put(headers::SERVER, b64(&self.center.server_id));
            }
            Kind::Detail => {
                // HttpJob.cs `GetAgentJobDetail`: the class and the action, nothing else.
                if let Some(class) = &self.class {
                    put(headers::CLASS, class.clone());
                }
                if let Some(action) = &self.action {
                    put(headers::ACTION, action.clone());
                }
            }
            Kind::Job => {
                // HttpJob.cs `PrepareHttpRequestMessage`. `Accept: <ContentType>` first; every
                // configured header is then added base64-encoded with TryAddWithoutValidation,
                // which appends to `Accept`, cannot set content headers (`Content-Type` is the
                // body's own, or absent), and loses `Authorization` to basic auth.
                let mut accept = self.content_type.clone();
                for (name, value) in &self.extra {
                    let lower = name.to_ascii_lowercase();
                    if lower == "accept" {
                        accept.push_str(", ");
                        accept.push_str(&b64(value));
                    } else if CONTENT_HEADERS.contains(&lower.as_str())
                        || (lower == "authorization" && basic.is_some())
                    {
                        continue;
                    } else {
                        put(name, b64(value));
                    }
                }
                put("accept", accept);
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
                    put(headers::STORAGE, b64(&self.center_json(storage)));
                }
                let job_id = self.job_id.clone().unwrap_or_default();
                let console = self
                    .console
                    .clone()
                    .unwrap_or_else(|| ConsoleInfo::for_job(&job_id));
                let console = serde_json::to_string(&console).unwrap_or_default();
                put(headers::CONSOLE, self.center_json(&console));
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
        if let Some((user, password)) = basic {
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

    /// Sends the request as [`send`](Self::send) does, and says how long the answer took.
    pub async fn send_timed(self) -> (Reply, Duration) {
        let asked = Instant::now();
        let reply = self.send().await;
        (reply, asked.elapsed())
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
        if self.has_body() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, self.body_content_type())
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
        assert!(console.get("ProgressBarId").is_none(), "{console}");
        let start = console["StartTime"].as_str().unwrap_or_default();
        assert!(start.ends_with('Z') && start.len() <= 24, "{start}");
        assert_eq!(get("accept"), "application/json");
        assert_eq!(get("authorization"), format!("Basic {}", b64("u:p")));
        assert!(get(headers::STORAGE).len() > 10);

        let hb_request = center.heartbeat();
        let query = hb_request.target_url();
        let guid = query.rsplit('?').next().unwrap_or_default();
        assert!(
            guid.len() == 32 && guid.chars().all(|c| c.is_ascii_hexdigit()),
            "{query}"
        );
        assert!(!hb_request.has_body());
        let hb = hb_request.build_headers();
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

    fn find(h: &[(String, String)], name: &str) -> Option<String> {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    // Server/Hangfire.HttpJob/Server/HttpJob.cs `GetConsoleInfo`: the StartTime is a
    // DateTime of millisecond precision, written by Newtonsoft.
    #[test]
    fn start_time_is_written_as_newtonsoft_writes_a_utc_datetime() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(dotnet_utc(at(1_767_323_045_000)), "2026-01-02T03:04:05Z");
        assert_eq!(dotnet_utc(at(1_767_323_045_120)), "2026-01-02T03:04:05.12Z");
        assert_eq!(
            dotnet_utc(at(1_767_323_045_123)),
            "2026-01-02T03:04:05.123Z"
        );
        assert_eq!(
            dotnet_utc(at(1_767_323_045_000) + Duration::from_nanos(123_456_700)),
            "2026-01-02T03:04:05.1234567Z"
        );
        let c = ConsoleInfo::for_job_at("7", at(1_767_323_045_100) + Duration::from_nanos(999));
        assert_eq!(c.start_time, "2026-01-02T03:04:05.1Z");
        assert_eq!(c.set_key, format!("console:{:011x}7", 1_767_323_045_100u64));
    }

    // Server/Hangfire.HttpJob/Server/HttpJob.cs `PrepareHttpRequestMessage`.
    #[test]
    fn job_headers_the_http_stack_owns_arrive_as_the_center_sends_them() {
        let center = Center::new("http://127.0.0.1:5000/jobagent");
        let req = center
            .run("A.B", "1")
            .data("{}")
            .header("Content-Type", "text/xml")
            .header("Accept", "text/plain")
            .header("Authorization", "Bearer t")
            .header("tenant", "acme")
            .basic_auth("u", "p");
        let h = req.build_headers();
        assert_eq!(
            find(&h, headers::EXTRA).as_deref(),
            Some("Content-Type_@_Accept_@_Authorization_@_tenant")
        );
        assert_eq!(find(&h, "content-type"), None, "the body carries its own");
        assert!(req.has_body());
        assert_eq!(req.body_content_type(), "application/json; charset=utf-8");
        assert_eq!(
            find(&h, "accept"),
            Some(format!("application/json, {}", b64("text/plain")))
        );
        assert_eq!(
            find(&h, "authorization"),
            Some(format!("Basic {}", b64("u:p")))
        );
        assert_eq!(find(&h, "tenant"), Some(b64("acme")));

        // Without basic auth the configured Authorization is sent base64-encoded; a GET (or
        // empty Data) has no body and so no Content-Type at all.
        let req = center
            .run("A.B", "2")
            .method(Method::GET)
            .data("{}")
            .header("Authorization", "Bearer t");
        assert!(!req.has_body());
        let h = req.build_headers();
        assert_eq!(find(&h, "authorization"), Some(b64("Bearer t")));
        assert!(!center.run("A.B", "3").has_body(), "empty Data");
        let item: Value = serde_json::from_str(&req.item_json()).unwrap_or_default();
        assert_eq!(item["Method"], json!("GET"));
    }

    // Server/Hangfire.HttpJob/Server/HttpJob.cs `GetAgentJobDetail`.
    #[test]
    fn detail_is_a_get_with_class_action_and_auth_only() {
        let center = Center::new("http://127.0.0.1:5000/jobagent")
            .with_storage(&Storage::postgresql("Host=h;Password=p"))
            .with_basic_auth("u", "p");
        let req = center.detail("A.B");
        assert_eq!(req.method, Method::GET);
        assert!(!req.has_body());
        assert_eq!(req.target_url(), "http://127.0.0.1:5000/jobagent");
        let mut names: Vec<String> = req.build_headers().into_iter().map(|(k, _)| k).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "authorization".to_owned(),
                headers::ACTION.to_owned(),
                headers::CLASS.to_owned()
            ]
        );
    }

    // Server/Hangfire.HttpJob/Server/JobAgent/JobAgentHeartBeatServer.cs `SendHeartbeat`
    // returns when the center could not read its storage; HttpJob.cs sends no x-job-storage.
    #[test]
    fn a_center_that_cannot_read_its_store_sends_none_and_no_heartbeats() {
        let center = Center::new("http://127.0.0.1:5000/jobagent")
            .with_storage(&Storage::postgresql("Host=h"))
            .without_storage_header();
        assert!(!center.sends_heartbeats());
        let h = center.run("A.B", "1").build_headers();
        assert_eq!(find(&h, headers::STORAGE), None);
        assert!(find(&h, headers::CONSOLE).is_some());
        let hb = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| center.heartbeat()));
        assert!(hb.is_err(), "such a center sends no heartbeats");
    }

    #[test]
    fn camel_case_center_writes_camel_case_json() {
        assert_eq!(camel_case("AgentClass"), "agentClass");
        assert_eq!(camel_case("URL"), "url");
        assert_eq!(camel_case("Type"), "type");
        assert_eq!(camel_case("HangfireDb"), "hangfireDb");
        assert_eq!(camel_case("already"), "already");
        let center = Center::new("http://127.0.0.1:5000/jobagent")
            .with_storage(&Storage::postgresql("Host=h"))
            .with_camel_case_json();
        let req = center.run("A.B", "1");
        let h = req.build_headers();
        let storage = String::from_utf8(
            STANDARD
                .decode(find(&h, headers::STORAGE).unwrap_or_default())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let storage: Value = serde_json::from_str(&storage).unwrap_or_default();
        assert_eq!(storage["hangfireDb"], json!("Host=h"));
        assert_eq!(storage["type"], json!("postgresql"));
        let console: Value = serde_json::from_str(&find(&h, headers::CONSOLE).unwrap_or_default())
            .unwrap_or_default();
        assert!(console["setKey"].is_string(), "{console}");
        let item: Value = serde_json::from_str(&req.item_json()).unwrap_or_default();
        assert_eq!(item["agentClass"], json!("A.B"));
    }
}
