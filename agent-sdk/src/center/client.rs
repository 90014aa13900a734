//! `CenterClient`: the center's dashboard API (`POST <dashboard>/httpjob?op=<op>`).
//!
//! What the center (Hangfire.HttpJob's `HttpJobDispatcher`) does with each operation:
//!
//! | op | body it reads | success | failure |
//! |---|---|---|---|
//! | `backgroundjob` | a job; `DelayFromMinutes` (absent means 15!), `RunAt` | 200, body = the job id | 400 + text (invalid job), 500 `add fail` |
//! | `recurringjob` | a job; `RecurringJobIdentifier` (else `JobName`), `Cron` | 204 | 400 + text, 500 + text |
//! | `addrecurringjob` | as `recurringjob`, but never overwrites | 204 | 500 `<id>is registerd!` when it exists |
//! | `deljob` | `JobName` = the recurring job's id (or a background job id with `Data` = `backgroundjob`) | 204 | 400 / 500 + text |
//! | `pausejob` | `JobName` = the recurring job's id; pauses a running job, resumes a paused one | 204 | 400 / 500 + text |
//!
//! The op is matched case-insensitively; any method but POST is answered 405, an unknown op
//! 405, an exception 500 with an empty body. The job checks are: `Url` non-empty and not
//! `http://`, `ContentType` non-empty, `JobName` non-empty (defaulted to the last segment of
//! `Url`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::Url;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::secret::Secret;

/// At most this many bytes of an answer are read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// At most this many characters of the center's text are kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;
/// What the center answers (200!) to a background job for a queue no server listens on.
const NO_ACTIVE_SERVER: &str = "active server not exist";

/// Why a call to the center failed. Never holds a password or an `Authorization` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CenterError {
    /// The center URL cannot be used.
    #[error("invalid center URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given, with any credentials in it replaced by `<redacted>`.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A request (or the client's credentials or timeout) is unusable before anything is sent.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The center did not answer in time.
    #[error("the center at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoint called.
        url: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// No connection could be made.
    #[error("cannot connect to the center at {url}: {reason}")]
    Connect {
        /// The endpoint called.
        url: String,
        /// The cause, as the network stack reports it.
        reason: String,
    },
    /// The request failed in transit for another reason.
    #[error("request to the center at {url} failed: {reason}")]
    Transport {
        /// The endpoint called.
        url: String,
        /// The cause.
        reason: String,
    },
    /// The center refused the credentials (401 or 403).
    #[error(
        "the center refused the request with HTTP {status}: check the center user and password, that the dashboard accepts basic auth for POST requests, and that it ignores antiforgery tokens"
    )]
    Unauthorized {
        /// The HTTP status.
        status: u16,
    },
    /// The center answered with an error.
    #[error("the center rejected `{op}` with HTTP {status}: {message}")]
    Rejected {
        /// The operation (`backgroundjob`, `recurringjob`, ...).
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The center's own text, trimmed and capped (`<empty answer>` when it sent none).
        message: String,
    },
    /// `addrecurringjob` found a recurring job with this id already at the center.
    #[error("recurring job `{id}` is already registered at the center ({message})")]
    AlreadyRegistered {
        /// The recurring job's identifier.
        id: String,
        /// The center's text.
        message: String,
    },
}

impl CenterError {
    /// Whether trying again later may succeed: network failures, timeouts, and 5xx, 408 or
    /// 429 answers. Invalid input, refused credentials and 4xx answers are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            CenterError::Timeout { .. }
            | CenterError::Connect { .. }
            | CenterError::Transport { .. } => true,
            CenterError::Rejected { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// Whether this is the center's "already registered" answer to `addrecurringjob`.
    pub fn is_already_registered(&self) -> bool {
        matches!(self, CenterError::AlreadyRegistered { .. })
    }
}

/// A DingTalk notification target (`DingTalk`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DingTalk {
    /// The webhook token (`Token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The signing secret (`Secret`; hidden in `Debug`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_secret"
    )]
    pub secret: Option<Secret>,
    /// Phone numbers to mention, comma-separated (`AtPhones`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_phones: Option<String>,
    /// Mention everyone (`IsAtAll`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_at_all: Option<bool>,
}

impl DingTalk {
    /// A target with a webhook token.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..Self::default()
        }
    }

    /// Sets the signing secret.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Secret::new(secret));
        self
    }

    /// Mentions these phone numbers (comma-separated).
    pub fn at_phones(mut self, phones: impl Into<String>) -> Self {
        self.at_phones = Some(phones.into());
        self
    }

    /// Mentions everyone.
    pub fn at_all(mut self, yes: bool) -> Self {
        self.is_at_all = Some(yes);
        self
    }
}

/// A job as the center's dashboard API takes it (the center's `HttpJobItem`), serialized with
/// the center's PascalCase names. Unset fields are left out, so the center's own defaults
/// apply (`Method` `Post`, `ContentType` `application/json`; but see
/// [`delay_from_minutes`](Self::delay_from_minutes)).
///
/// `Debug` hides `BasicPassword`, header values and the DingTalk secret.
///
/// ```
/// use std::time::Duration;
/// use jobagent::center::HttpJobRequest;
///
/// let job = HttpJobRequest::agent("http://svc:8080/jobagent", "MyJobs.Cleanup", "Clean up")
///     .recurring_job_identifier("cleanup")
///     .cron("0 3 * * *")
///     .data(r#"{"Hour":48}"#)
///     .agent_timeout(Duration::from_secs(600))
///     .basic_auth("center", "s3cret");
/// assert!(!format!("{job:?}").contains("s3cret"));
/// let json = serde_json::to_value(&job).unwrap();
/// assert_eq!(json["AgentClass"], "MyJobs.Cleanup");
/// assert_eq!(json["BasicPassword"], "s3cret");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct HttpJobRequest {
    /// The URL the center calls (`Url`); for an agent job, the agent's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The HTTP method (`Method`; the center's default is `Post`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The body sent with each call: the job's parameter (`Data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The content type of `Data` (`ContentType`; the center's default is `application/json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The center's HTTP timeout in ms (`Timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i32>,
    /// For `backgroundjob`: -1 = only run by hand, 0 = now, > 0 = minutes to wait
    /// (`DelayFromMinutes`). The center takes an absent value as 15, so
    /// [`CenterClient::add_background_job`] sends 0 when it is unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_from_minutes: Option<i32>,
    /// For `backgroundjob`: when to run, a date-time the center parses; wins over
    /// `DelayFromMinutes` (`RunAt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// The recurring job's cron expression; empty = only triggered by hand (`Cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The job's display name (`JobName`); the id too when no identifier is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The recurring job's unique id (`RecurringJobIdentifier`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurring_job_identifier: Option<String>,
    /// The center's queue (`QueueName`); a server must listen on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// The agent class; set, it makes the job an agent job (`AgentClass`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_class: Option<String>,
    /// Ms after which the agent cancels a run; 0 = no limit (`AgentTimeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_timeout: Option<i32>,
    /// Mail on success (`SendSuccess`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_success: Option<bool>,
    /// Mail on failure (`SendFail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_fail: Option<bool>,
    /// Mail addresses, comma-separated (`Mail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Retry failed runs (`EnableRetry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_retry: Option<bool>,
    /// How often to retry (`RetryTimes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_times: Option<i32>,
    /// Delays between retries in seconds, comma-separated (`RetryDelaysInSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_delays_in_seconds: Option<String>,
    /// The basic-auth user the center sends to the job's URL (`BasicUserName`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_user_name: Option<String>,
    /// The basic-auth password the center sends (`BasicPassword`; hidden in `Debug`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_secret"
    )]
    pub basic_password: Option<Secret>,
    /// Extra headers the center sends (`Headers`; values hidden in `Debug`). Always sent,
    /// `{}` when empty.
    #[serde(serialize_with = "serialize_secret_map")]
    pub headers: BTreeMap<String, Secret>,
    /// An expression over the answer that decides success (`CallbackEL`).
    #[serde(rename = "CallbackEL", skip_serializing_if = "Option::is_none")]
    pub callback_el: Option<String>,
    /// The time zone of `Cron`, e.g. `Asia/Shanghai` (`TimeZone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// DingTalk notifications (`DingTalk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ding_talk: Option<DingTalk>,
    /// A job the center calls when this one succeeds (`Success`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<Box<HttpJobRequest>>,
    /// A job the center calls when this one fails (`Fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<Box<HttpJobRequest>>,
}

/// Milliseconds of a duration as the center's `int`, saturating.
fn millis_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

impl HttpJobRequest {
    /// A plain HTTP job: the center calls `url`; `job_name` names it.
    pub fn new(url: impl Into<String>, job_name: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            job_name: Some(job_name.into()),
            ..Self::default()
        }
    }

    /// An agent job: the center calls the agent at `agent_url` (e.g.
    /// `http://svc:8080/jobagent`) with class `agent_class`, method POST, JSON content.
    pub fn agent(
        agent_url: impl Into<String>,
        agent_class: impl Into<String>,
        job_name: impl Into<String>,
    ) -> Self {
        Self::new(agent_url, job_name)
            .agent_class(agent_class)
            .method("Post")
            .content_type("application/json")
    }

    /// Sets `Method`.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Sets `Data`, the job's parameter.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Sets `ContentType`.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets `Timeout`, the center's HTTP timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(millis_i32(timeout));
        self
    }

    /// Sets `DelayFromMinutes` (-1 = only by hand, 0 = now, > 0 = delay).
    pub fn delay_from_minutes(mut self, minutes: i32) -> Self {
        self.delay_from_minutes = Some(minutes);
        self
    }

    /// Sets `RunAt`, a date-time the center parses (e.g. `2026-01-02T03:04:05+08:00`).
    pub fn run_at(mut self, at: impl Into<String>) -> Self {
        self.run_at = Some(at.into());
        self
    }

    /// Sets `Cron`; empty registers a job that only runs when triggered.
    pub fn cron(mut self, cron: impl Into<String>) -> Self {
        self.cron = Some(cron.into());
        self
    }

    /// Sets `JobName`.
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.job_name = Some(name.into());
        self
    }

    /// Sets `RecurringJobIdentifier`.
    pub fn recurring_job_identifier(mut self, id: impl Into<String>) -> Self {
        self.recurring_job_identifier = Some(id.into());
        self
    }

    /// Sets `QueueName`.
    pub fn queue_name(mut self, queue: impl Into<String>) -> Self {
        self.queue_name = Some(queue.into());
        self
    }

    /// Sets `AgentClass`.
    pub fn agent_class(mut self, class: impl Into<String>) -> Self {
        self.agent_class = Some(class.into());
        self
    }

    /// Sets `AgentTimeout`; zero means no limit.
    pub fn agent_timeout(mut self, timeout: Duration) -> Self {
        self.agent_timeout = Some(millis_i32(timeout));
        self
    }

    /// Sets `BasicUserName` and `BasicPassword`, the credentials the center sends.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_user_name = Some(user.into());
        self.basic_password = Some(Secret::new(password));
        self
    }

    /// Adds an extra header the center sends with each call.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), Secret::new(value));
        self
    }

    /// Sets `EnableRetry` and `RetryTimes`.
    pub fn retry(mut self, times: i32) -> Self {
        self.enable_retry = Some(times > 0);
        self.retry_times = Some(times.max(0));
        self
    }

    /// Sets `RetryDelaysInSeconds` (e.g. `"10,60,300"`).
    pub fn retry_delays_in_seconds(mut self, delays: impl Into<String>) -> Self {
        self.retry_delays_in_seconds = Some(delays.into());
        self
    }

    /// Sets `Mail`, `SendSuccess` and `SendFail`.
    pub fn mail(mut self, to: impl Into<String>, on_success: bool, on_fail: bool) -> Self {
        self.mail = Some(to.into());
        self.send_success = Some(on_success);
        self.send_fail = Some(on_fail);
        self
    }

    /// Sets `CallbackEL`.
    pub fn callback_el(mut self, expression: impl Into<String>) -> Self {
        self.callback_el = Some(expression.into());
        self
    }

    /// Sets `TimeZone`.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = Some(zone.into());
        self
    }

    /// Sets `DingTalk`.
    pub fn ding_talk(mut self, ding_talk: DingTalk) -> Self {
        self.ding_talk = Some(ding_talk);
        self
    }

    /// Sets `Success`, a job called when this one succeeds.
    pub fn on_success(mut self, job: HttpJobRequest) -> Self {
        self.success = Some(Box::new(job));
        self
    }

    /// Sets `Fail`, a job called when this one fails.
    pub fn on_fail(mut self, job: HttpJobRequest) -> Self {
        self.fail = Some(Box::new(job));
        self
    }

    /// The id the center files a recurring job under: `RecurringJobIdentifier`, else
    /// `JobName`.
    pub fn identifier(&self) -> Option<&str> {
        [&self.recurring_job_identifier, &self.job_name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|s| !s.is_empty())
    }

    /// The secrets in this request, to scrub from the center's answers.
    fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(self);
        let mut stack = Vec::new();
        while let Some(job) = next {
            out.extend(job.basic_password.iter().map(|s| s.expose().to_owned()));
            out.extend(job.headers.values().map(|s| s.expose().to_owned()));
            if let Some(d) = &job.ding_talk {
                out.extend(d.secret.iter().map(|s| s.expose().to_owned()));
            }
            stack.extend(job.success.as_deref());
            stack.extend(job.fail.as_deref());
            next = stack.pop();
        }
        out
    }

    /// The center's own checks, done before sending so the error comes sooner.
    fn check_job(&self, op: Op) -> Result<(), CenterError> {
        let bad = |reason: String| Err(CenterError::InvalidRequest { reason });
        let url = self.url.as_deref().map(str::trim).unwrap_or("");
        if url.is_empty() || url.eq_ignore_ascii_case("http://") {
            return bad(format!("`{}` needs a Url", op.as_str()));
        }
        if self
            .content_type
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return bad(
                "ContentType may not be empty (leave it unset for the center's default)".to_owned(),
            );
        }
        let named = self.job_name.as_deref().is_some_and(|n| !n.is_empty())
            || url.rsplit('/').next().is_some_and(|last| !last.is_empty());
        if !named {
            return bad("the job needs a JobName".to_owned());
        }
        self.check_child()
    }

    fn check_child(&self) -> Result<(), CenterError> {
        for child in self.success.iter().chain(self.fail.iter()) {
            let curl = child.url.as_deref().map(str::trim).unwrap_or("");
            if curl.is_empty() || curl.eq_ignore_ascii_case("http://") {
                return Err(CenterError::InvalidRequest {
                    reason: "a Success or Fail job needs a Url".to_owned(),
                });
            }
            child.check_child()?;
        }
        Ok(())
    }
}

fn serialize_opt_secret<S: Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(secret) => s.serialize_some(secret.expose()),
        None => s.serialize_none(),
    }
}

fn serialize_secret_map<S: Serializer>(
    value: &BTreeMap<String, Secret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(value.len()))?;
    for (k, v) in value {
        map.serialize_entry(k, v.expose())?;
    }
    map.end()
}

/// The body of `deljob` and `pausejob`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ByName<'a> {
    job_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
}

/// The dashboard operations this client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Background,
    Recurring,
    AddRecurring,
    Delete,
    Pause,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Background => "backgroundjob",
            Op::Recurring => "recurringjob",
            Op::AddRecurring => "addrecurringjob",
            Op::Delete => "deljob",
            Op::Pause => "pausejob",
        }
    }
}

/// A 2xx answer's text.
struct Answer {
    text: String,
}

/// A client of the center's dashboard API: `POST <dashboard>/httpjob?op=<op>` with a JSON
/// job and basic auth. Cheap to clone. `Debug` hides the password.
///
/// ```no_run
/// # async fn demo() -> Result<(), jobagent::center::CenterError> {
/// use std::time::Duration;
/// use jobagent::center::{CenterClient, HttpJobRequest};
///
/// let center = CenterClient::new(
///     "http://center:5000/hangfire",
///     Some(("admin", "s3cret")),
///     Duration::from_secs(10),
/// )?;
/// let job = HttpJobRequest::agent("http://svc:8080/jobagent", "MyJobs.Report", "Report")
///     .data(r#"{"Day":"2026-01-02"}"#);
/// let job_id = center.add_background_job(&job).await?;
/// # let _ = job_id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct CenterClient {
    http: reqwest::Client,
    base: String,
    endpoint: String,
    user: Option<String>,
    password: Option<Secret>,
    timeout: Duration,
}

impl fmt::Debug for CenterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CenterClient")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CenterClient {
    /// A client of the dashboard at `base_url` (its root, e.g. `http://center:5000/hangfire`),
    /// with the dashboard's basic-auth credentials when it needs them, and a timeout for each
    /// call (connecting included).
    pub fn new(
        base_url: &str,
        credentials: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Self, CenterError> {
        let base = validate_base_url(base_url).map_err(|reason| CenterError::InvalidUrl {
            url: redact_url(base_url),
            reason,
        })?;
        if timeout.is_zero() {
            return Err(CenterError::InvalidRequest {
                reason: "the timeout must be above zero".to_owned(),
            });
        }
        let (user, password) = match credentials {
            Some((user, password)) => {
                check_user(user).map_err(|reason| CenterError::InvalidRequest { reason })?;
                (Some(user.to_owned()), Some(Secret::new(password)))
            }
            None => (None, None),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect is a login page, never an answer: do not follow it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CenterError::Transport {
                url: base.clone(),
                reason: error_chain(&e),
            })?;
        let endpoint = format!("{base}/httpjob");
        Ok(Self {
            http,
            base,
            endpoint,
            user,
            password,
            timeout,
        })
    }

    /// The dashboard root, normalized (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Adds a fire-and-forget or delayed job (`op=backgroundjob`) and returns the center's job
    /// id (empty if the center sent none). An unset `DelayFromMinutes` is sent as 0 (run now);
    /// the center's own default would be 15 minutes.
    pub async fn add_background_job(&self, job: &HttpJobRequest) -> Result<String, CenterError> {
        let op = Op::Background;
        job.check_job(op)?;
        let answer = if job.delay_from_minutes.is_none() {
            let mut job = job.clone();
            job.delay_from_minutes = Some(0);
            self.post(op, &job, &job.secrets()).await?
        } else {
            self.post(op, job, &job.secrets()).await?
        };
        let id = answer.text.trim();
        if id.to_ascii_lowercase().contains(NO_ACTIVE_SERVER) {
            return Err(CenterError::Rejected {
                op: op.as_str(),
                status: 200,
                message: clean_message(id, &[]),
            });
        }
        // Job ids are short; anything longer is not one of the center's answers.
        Ok(id.chars().take(200).collect())
    }

    /// Adds a recurring job, or replaces the one with the same id (`op=recurringjob`). A
    /// paused job stays paused with the new cron.
    pub async fn add_or_update_recurring_job(
        &self,
        job: &HttpJobRequest,
    ) -> Result<(), CenterError> {
        let op = Op::Recurring;
        job.check_job(op)?;
        self.post(op, job, &job.secrets()).await.map(drop)
    }

    /// Adds a recurring job only if none has its id (`op=addrecurringjob`); an existing one
    /// is [`CenterError::AlreadyRegistered`].
    pub async fn add_recurring_job(&self, job: &HttpJobRequest) -> Result<(), CenterError> {
        let op = Op::AddRecurring;
        job.check_job(op)?;
        match self.post(op, job, &job.secrets()).await {
            Ok(_) => Ok(()),
            Err(CenterError::Rejected {
                status: 500,
                message,
                ..
            }) if is_registerd(&message) => Err(CenterError::AlreadyRegistered {
                id: job.identifier().unwrap_or_default().to_owned(),
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// Deletes a recurring job by its id (`op=deljob`); deleting one that does not exist
    /// succeeds.
    pub async fn delete_recurring_job(&self, id: &str) -> Result<(), CenterError> {
        self.by_name(Op::Delete, id, None).await
    }

    /// Deletes a background job by its job id (`op=deljob` with `Data` = `backgroundjob`).
    pub async fn delete_background_job(&self, job_id: &str) -> Result<(), CenterError> {
        self.by_name(Op::Delete, job_id, Some("backgroundjob"))
            .await
    }

    /// Pauses a recurring job, or resumes it when it is paused (`op=pausejob`: the center
    /// toggles). A paused job keeps its cron and runs only by hand.
    pub async fn pause_or_resume_job(&self, id: &str) -> Result<(), CenterError> {
        self.by_name(Op::Pause, id, None).await
    }

    async fn by_name(&self, op: Op, name: &str, data: Option<&str>) -> Result<(), CenterError> {
        if name.trim().is_empty() {
            return Err(CenterError::InvalidRequest {
                reason: format!("`{}` needs a job id", op.as_str()),
            });
        }
        let body = ByName {
            job_name: name,
            data,
        };
        self.post(op, &body, &[]).await.map(drop)
    }

    /// Sends one operation; a 2xx answer is `Ok`, anything else an error.
    async fn post(
        &self,
        op: Op,
        body: &impl Serialize,
        secrets: &[String],
    ) -> Result<Answer, CenterError> {
        let url = format!("{}?op={}", self.endpoint, op.as_str());
        let mut request = self.http.post(&url).json(body);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_ref().map(Secret::expose));
        }
        let mut response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            let room = MAX_ANSWER_BYTES.saturating_sub(bytes.len());
            bytes.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if bytes.len() >= MAX_ANSWER_BYTES {
                break;
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        tracing::debug!(
            op = op.as_str(),
            status = status.as_u16(),
            "center answered"
        );
        let mut scrub: Vec<&str> = secrets.iter().map(String::as_str).collect();
        if let Some(p) = &self.password {
            scrub.push(p.expose());
        }
        if status.is_success() {
            return Ok(Answer { text });
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CenterError::Unauthorized {
                status: status.as_u16(),
            });
        }
        let message = if status.is_redirection() {
            format!(
                "redirected to `{}`: the dashboard wants a login; give it basic-auth credentials, or check the URL",
                clean_message(location.as_deref().unwrap_or(""), &scrub)
            )
        } else {
            clean_message(&text, &scrub)
        };
        Err(CenterError::Rejected {
            op: op.as_str(),
            status: status.as_u16(),
            message,
        })
    }

    fn transport(&self, e: &reqwest::Error) -> CenterError {
        let url = self.endpoint.clone();
        if e.is_timeout() {
            CenterError::Timeout {
                url,
                timeout: self.timeout,
            }
        } else if e.is_connect() {
            CenterError::Connect {
                url,
                reason: error_chain(e),
            }
        } else {
            CenterError::Transport {
                url,
                reason: error_chain(e),
            }
        }
    }
}

/// Whether the center's text is its "already registered" answer (`<id>is registerd!`).
fn is_registerd(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("registerd") || lower.contains("already registered")
}

/// The causes of an error, without the outer "error sending request" line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

/// The center's text: trimmed, secrets replaced, capped, `<empty answer>` for none.
fn clean_message(text: &str, secrets: &[&str]) -> String {
    let mut text = text.trim().to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    if text.is_empty() {
        return "<empty answer>".to_owned();
    }
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => {
            text.truncate(cut);
            text.push('…');
            text
        }
        None => text,
    }
}

/// A basic-auth user: non-empty, without `:`.
pub(crate) fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') {
        return Err("the user must be non-empty and may not contain `:`".to_owned());
    }
    Ok(())
}

/// Checks an http(s) URL to which paths are appended and returns it without trailing
/// slashes, repeated slashes in its path collapsed. The reason names what is wrong.
pub(crate) fn validate_http_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("empty; expected e.g. http://host:5000/path".to_owned());
    }
    let mut url =
        Url::parse(raw).map_err(|e| format!("{e}; expected e.g. http://host:5000/path"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "scheme `{}` is not http or https; expected e.g. http://host:5000/path",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials in the URL are not allowed; configure the user and password separately"
                .to_owned(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a query (`?`) or fragment (`#`) is not allowed".to_owned());
    }
    let mut path = String::with_capacity(url.path().len());
    for segment in url.path().split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        path.push_str(segment);
    }
    url.set_path(&path);
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Checks the dashboard root URL.
pub(crate) fn validate_base_url(raw: &str) -> Result<String, String> {
    let base = validate_http_url(raw)?;
    if base.to_ascii_lowercase().ends_with("/httpjob") {
        return Err(
            "give the dashboard root (e.g. http://center:5000/hangfire), not its /httpjob endpoint"
                .to_owned(),
        );
    }
    Ok(base)
}

/// `base` + `path` with exactly one `/` between them.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{path}")
    }
}

/// A URL for an error message: any `user:password@` replaced by `<redacted>@`.
pub(crate) fn redact_url(raw: &str) -> String {
    let raw = raw.trim();
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}<redacted>@{}{tail}", &authority[at + 1..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized_or_refused() {
        assert_eq!(
            validate_base_url("http://c:5000/hangfire/").as_deref(),
            Ok("http://c:5000/hangfire")
        );
        assert_eq!(
            validate_base_url(" http://c:5000//a//hangfire// ").as_deref(),
            Ok("http://c:5000/a/hangfire")
        );
        assert_eq!(validate_base_url("http://c").as_deref(), Ok("http://c"));
        for bad in [
            "",
            "center:5000",
            "ftp://c/x",
            "http://u:p@c/x",
            "http://c/x?y=1",
            "http://c/hangfire/httpjob",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_join_with_one_slash_and_lose_credentials_in_messages() {
        assert_eq!(join_url("http://a:1/", "/jobagent"), "http://a:1/jobagent");
        assert_eq!(
            join_url("http://a:1/x", "jobagent"),
            "http://a:1/x/jobagent"
        );
        assert_eq!(join_url("http://a:1", ""), "http://a:1");
        assert_eq!(
            redact_url("http://user:pw@host:1/x@y"),
            "http://<redacted>@host:1/x@y"
        );
        assert_eq!(redact_url("user:pw@host"), "<redacted>@host");
        assert_eq!(redact_url("http://host/x"), "http://host/x");
    }

    #[test]
    fn messages_are_trimmed_capped_and_scrubbed() {
        assert_eq!(clean_message("  \n", &[]), "<empty answer>");
        assert_eq!(clean_message(" bad pw1 ", &["pw1", ""]), "bad <redacted>");
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let cut = clean_message(&long, &[]);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(is_registerd("cleanupis registerd!"));
        assert!(!is_registerd("active server not exist!"));
    }

    #[test]
    fn request_serializes_pascal_case_and_hides_secrets_in_debug() {
        let job = HttpJobRequest::agent("http://a/jobagent", "C", "N")
            .basic_auth("u", "pw-1")
            .header("X-Token", "tok-2")
            .callback_el("x")
            .ding_talk(DingTalk::new("t").secret("ding-3").at_all(true))
            .on_fail(HttpJobRequest::new("http://a/f", "f").basic_auth("v", "pw-4"));
        let json = serde_json::to_value(&job).unwrap_or_default();
        assert_eq!(json["AgentClass"], "C");
        assert_eq!(json["CallbackEL"], "x");
        assert_eq!(json["DingTalk"]["IsAtAll"], true);
        assert_eq!(json["Headers"]["X-Token"], "tok-2");
        assert_eq!(json["Fail"]["BasicPassword"], "pw-4");
        assert!(json.get("DelayFromMinutes").is_none());
        let debug = format!("{job:?}");
        for secret in ["pw-1", "tok-2", "ding-3", "pw-4"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(job.secrets().len(), 4);
    }
}
