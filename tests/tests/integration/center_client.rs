//! The center client and auto-registration against a stand-in of the center's dashboard API
//! (`POST <dashboard>/httpjob?op=<op>`), which records each request and answers as scripted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jobagent::center::{
    AutoRegistrationOptions, CenterClient, CenterError, DingTalk, HttpJobRequest,
    RegistrationOutcome, spawn_auto_register,
};
use jobagent::{ConfigError, Registry};
use serde_json::{Value, json};

use example_agent as _;
use tests::logs::Logs;

const CENTER_PW: &str = "pw-center-Xq7";
const AGENT_PW: &str = "pw-agent-Zr9";

// ---------------------------------------------------------------------------------------------
// The stand-in center.

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    query: Option<String>,
    auth: Option<String>,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    fn op(&self) -> &str {
        self.query
            .as_deref()
            .and_then(|q| q.strip_prefix("op="))
            .unwrap_or("")
    }
}

/// One scripted answer.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
    location: Option<String>,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.to_owned(),
        delay: Duration::ZERO,
        location: None,
    }
}

#[derive(Default)]
struct Script {
    seen: Vec<Seen>,
    next: VecDeque<Reply>,
    default: Option<Reply>,
}

#[derive(Clone)]
struct Center {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Center {
    /// Starts a stand-in answering `default` unless a scripted answer is queued.
    async fn start(default: Reply) -> Self {
        let script = Arc::new(Mutex::new(Script {
            default: Some(default),
            ..Script::default()
        }));
        let app = Router::new().fallback(handle).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, script }
    }

    /// Queues answers given before the default.
    fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().next.extend(replies);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The dashboard root, with a trailing slash to show it is normalized.
    fn base(&self) -> String {
        format!("http://{}/hangfire/", self.addr)
    }

    fn client(&self) -> CenterClient {
        CenterClient::new(
            &self.base(),
            Some(("admin", CENTER_PW)),
            Duration::from_secs(5),
        )
        .expect("valid client")
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        at: Instant::now(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        auth: header("authorization"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let answer = {
        let mut script = script.lock().unwrap_or_else(|e| e.into_inner());
        script.seen.push(seen);
        match script.next.pop_front() {
            Some(reply) => reply,
            None => script.default.clone().unwrap_or_else(|| reply(204, "")),
        }
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    if let Some(location) = answer.location
        && let Ok(value) = location.parse()
    {
        response.headers_mut().insert("location", value);
    }
    response
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Every key of a JSON object, recursively, starts with an upper-case letter.
fn assert_pascal_case(value: &Value) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            assert!(
                key.starts_with(|c: char| c.is_ascii_uppercase()),
                "`{key}` is not PascalCase in {value}"
            );
            if key != "Headers" {
                assert_pascal_case(inner);
            }
        }
    }
}

fn assert_no_secret(text: &str) {
    for secret in [CENTER_PW, AGENT_PW, "pw-url-Kd2", "hdr-tok-Wq1", "ding-Ps4"] {
        assert!(!text.contains(secret), "secret `{secret}` shown in: {text}");
    }
    assert!(
        !text.contains(&basic("admin", CENTER_PW)),
        "Authorization shown in: {text}"
    );
}

fn assert_error_hides_secrets(error: &CenterError) {
    assert_no_secret(&error.to_string());
    assert_no_secret(&format!("{error:?}"));
}

/// A closed local port.
async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// The operations.

#[tokio::test]
async fn background_job_posts_the_job_with_basic_auth_and_returns_the_id() {
    let center = Center::start(reply(200, "42")).await;
    let client = center.client();
    let job = HttpJobRequest::agent("http://svc:8080/jobagent", "Msg.Job.Send,Msg", "Send")
        .data(r#"{"Hour":48}"#)
        .timeout(Duration::from_secs(20))
        .agent_timeout(Duration::from_secs(60))
        .queue_name("jobs")
        .basic_auth("center", AGENT_PW)
        .header("X-Token", "hdr-tok-Wq1")
        .retry(3)
        .mail("ops@example.com", false, true)
        .ding_talk(DingTalk::new("tok").secret("ding-Ps4").at_all(true));
    let id = client.add_background_job(&job).await.expect("added");
    assert_eq!(id, "42");

    let delayed = job.clone().delay_from_minutes(5);
    client
        .add_background_job(&delayed)
        .await
        .expect("added delayed");

    let seen = center.seen();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/hangfire/httpjob");
    assert_eq!(first.query.as_deref(), Some("op=backgroundjob"));
    assert_eq!(first.auth, Some(basic("admin", CENTER_PW)));
    assert!(
        first
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{first:?}"
    );
    let b = &first.body;
    assert_pascal_case(b);
    assert_eq!(b["Url"], "http://svc:8080/jobagent");
    assert_eq!(b["Method"], "Post");
    assert_eq!(b["ContentType"], "application/json");
    assert_eq!(b["AgentClass"], "Msg.Job.Send,Msg");
    assert_eq!(b["JobName"], "Send");
    assert_eq!(b["Data"], r#"{"Hour":48}"#);
    assert_eq!(b["Timeout"], 20000);
    assert_eq!(b["AgentTimeout"], 60000);
    assert_eq!(b["QueueName"], "jobs");
    assert_eq!(b["BasicUserName"], "center");
    assert_eq!(b["BasicPassword"], AGENT_PW);
    assert_eq!(b["Headers"], json!({"X-Token": "hdr-tok-Wq1"}));
    assert_eq!(b["EnableRetry"], true);
    assert_eq!(b["RetryTimes"], 3);
    assert_eq!(b["Mail"], "ops@example.com");
    assert_eq!(b["SendSuccess"], false);
    assert_eq!(b["SendFail"], true);
    assert_eq!(
        b["DingTalk"],
        json!({"Token": "tok", "Secret": "ding-Ps4", "IsAtAll": true})
    );
    // The center reads an absent DelayFromMinutes as 15: the client sends 0 for "now".
    assert_eq!(b["DelayFromMinutes"], 0);
    assert!(b.get("Cron").is_none(), "unset fields are left out: {b}");
    assert_eq!(seen[1].body["DelayFromMinutes"], 5);

    // The request's Debug hides the secrets it carries.
    assert_no_secret(&format!("{job:?}"));
    assert_no_secret(&format!("{client:?}"));
}

#[tokio::test]
async fn recurring_jobs_are_added_updated_deleted_and_paused() {
    let center = Center::start(reply(204, "")).await;
    let client = center.client();
    let job = HttpJobRequest::agent("http://svc:8080/jobagent", "Cleanup", "Clean up")
        .recurring_job_identifier("cleanup")
        .cron("0 3 * * *")
        .time_zone("Asia/Shanghai")
        .callback_el("true")
        .on_fail(HttpJobRequest::new("http://svc:8080/alert", "alert"));

    client
        .add_or_update_recurring_job(&job)
        .await
        .expect("add or update");
    client.add_recurring_job(&job).await.expect("add only");
    client
        .delete_recurring_job("cleanup")
        .await
        .expect("delete recurring");
    client
        .delete_background_job("17")
        .await
        .expect("delete background");
    client
        .pause_or_resume_job("cleanup")
        .await
        .expect("pause or resume");

    let seen = center.seen();
    let ops: Vec<&str> = seen.iter().map(Seen::op).collect();
    assert_eq!(
        ops,
        [
            "recurringjob",
            "addrecurringjob",
            "deljob",
            "deljob",
            "pausejob"
        ]
    );
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/hangfire/httpjob");
        assert_eq!(s.auth, Some(basic("admin", CENTER_PW)));
        assert_pascal_case(&s.body);
    }
    for s in &seen[..2] {
        let b = &s.body;
        assert_eq!(b["RecurringJobIdentifier"], "cleanup");
        assert_eq!(b["JobName"], "Clean up");
        assert_eq!(b["Cron"], "0 3 * * *");
        assert_eq!(b["TimeZone"], "Asia/Shanghai");
        assert_eq!(b["CallbackEL"], "true");
        assert_eq!(b["AgentClass"], "Cleanup");
        assert_eq!(b["Fail"]["Url"], "http://svc:8080/alert");
        assert_eq!(b["Headers"], json!({}));
        assert!(b.get("DelayFromMinutes").is_none(), "{b}");
    }
    assert_eq!(seen[2].body, json!({"JobName": "cleanup"}));
    assert_eq!(
        seen[3].body,
        json!({"JobName": "17", "Data": "backgroundjob"})
    );
    assert_eq!(seen[4].body, json!({"JobName": "cleanup"}));
}

#[tokio::test]
async fn without_credentials_no_authorization_is_sent() {
    let center = Center::start(reply(204, "")).await;
    let client = CenterClient::new(
        &format!("http://{}/hangfire", center.addr),
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    client.delete_recurring_job("x").await.expect("deleted");
    let seen = center.seen();
    assert_eq!(seen[0].auth, None);
    assert_eq!(seen[0].path, "/hangfire/httpjob");
}

#[tokio::test]
async fn a_dashboard_at_the_root_gets_one_slash() {
    let center = Center::start(reply(204, "")).await;
    let client = CenterClient::new(
        &format!("http://{}//", center.addr),
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    assert_eq!(client.base_url(), format!("http://{}", center.addr));
    client.pause_or_resume_job("x").await.expect("paused");
    assert_eq!(center.seen()[0].path, "/httpjob");
}

#[tokio::test]
async fn invalid_requests_are_refused_before_sending() {
    let center = Center::start(reply(204, "")).await;
    let client = center.client();
    let no_url = HttpJobRequest::new("", "name");
    let e = client.add_recurring_job(&no_url).await.expect_err("no url");
    assert!(matches!(e, CenterError::InvalidRequest { .. }), "{e:?}");
    let bare = HttpJobRequest::new("http://", "name");
    assert!(client.add_background_job(&bare).await.is_err());
    let e = client.delete_recurring_job("  ").await.expect_err("no id");
    assert!(matches!(e, CenterError::InvalidRequest { .. }), "{e:?}");
    assert!(center.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[tokio::test]
async fn center_errors_keep_the_centers_text() {
    let center = Center::start(reply(204, "")).await;
    let client = center.client();
    let job = HttpJobRequest::agent("http://svc/jobagent", "C", "N")
        .recurring_job_identifier("outbox-send")
        .basic_auth("center", AGENT_PW);
    center.then([
        reply(500, "  active server not exist!\r\n"),
        reply(500, ""),
        reply(400, "ContentType invaild"),
        reply(401, ""),
        reply(403, "forbidden"),
        reply(500, "outbox-sendis registerd!"),
        reply(500, &format!("echo {CENTER_PW} and {AGENT_PW}")),
        reply(500, &"x".repeat(5000)),
        reply(405, ""),
    ]);

    let mut errors = Vec::new();
    let e = client
        .add_or_update_recurring_job(&job)
        .await
        .expect_err("500");
    assert_eq!(
        e,
        CenterError::Rejected {
            op: "recurringjob",
            status: 500,
            message: "active server not exist!".to_owned()
        }
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("active server not exist!"), "{e}");
    errors.push(e);

    let e = client
        .add_or_update_recurring_job(&job)
        .await
        .expect_err("500");
    assert!(
        matches!(&e, CenterError::Rejected { status: 500, message, .. } if message == "<empty answer>"),
        "{e:?}"
    );
    errors.push(e);

    let e = client.add_recurring_job(&job).await.expect_err("400");
    assert!(
        matches!(&e, CenterError::Rejected { op: "addrecurringjob", status: 400, message } if message == "ContentType invaild"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    errors.push(e);

    let e = client.delete_recurring_job("x").await.expect_err("401");
    assert_eq!(e, CenterError::Unauthorized { status: 401 });
    assert!(!e.is_retryable());
    errors.push(e);
    let e = client.pause_or_resume_job("x").await.expect_err("403");
    assert_eq!(e, CenterError::Unauthorized { status: 403 });
    errors.push(e);

    let e = client.add_recurring_job(&job).await.expect_err("exists");
    assert!(e.is_already_registered(), "{e:?}");
    assert!(
        matches!(&e, CenterError::AlreadyRegistered { id, message } if id == "outbox-send" && message.contains("registerd")),
        "{e:?}"
    );
    errors.push(e);

    // A center that echoes a password does not get it into the error.
    let e = client.add_recurring_job(&job).await.expect_err("echo");
    assert!(e.to_string().contains("<redacted>"), "{e}");
    errors.push(e);

    let e = client.add_recurring_job(&job).await.expect_err("long");
    let CenterError::Rejected { message, .. } = &e else {
        panic!("{e:?}");
    };
    assert!(message.chars().count() <= 1001, "{}", message.len());
    errors.push(e);

    let e = client
        .add_background_job(&job)
        .await
        .expect_err("unknown op");
    assert!(
        matches!(&e, CenterError::Rejected { status: 405, .. }),
        "{e:?}"
    );
    errors.push(e);

    for e in &errors {
        assert_error_hides_secrets(e);
    }
}

#[tokio::test]
async fn background_job_for_a_queue_no_server_listens_on_is_an_error() {
    // The center answers 200 with this text instead of a job id.
    let center = Center::start(reply(200, "active server not exist!")).await;
    let job = HttpJobRequest::new("http://svc/x", "x").queue_name("nobody");
    let e = center
        .client()
        .add_background_job(&job)
        .await
        .expect_err("no server");
    assert!(
        matches!(&e, CenterError::Rejected { op: "backgroundjob", status: 200, message } if message.contains("active server")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_redirect_to_a_login_page_is_not_followed() {
    let center = Center::start(reply(204, "")).await;
    center.then([Reply {
        location: Some("/account/login?ReturnUrl=%2Fhangfire".to_owned()),
        ..reply(302, "")
    }]);
    let e = center
        .client()
        .delete_recurring_job("x")
        .await
        .expect_err("redirect");
    assert!(
        matches!(&e, CenterError::Rejected { status: 302, message, .. } if message.contains("/account/login")),
        "{e:?}"
    );
    assert_eq!(center.seen().len(), 1, "the redirect was followed");
}

#[tokio::test]
async fn a_slow_center_times_out() {
    let center = Center::start(Reply {
        delay: Duration::from_secs(3),
        ..reply(204, "")
    })
    .await;
    let client = CenterClient::new(
        &center.base(),
        Some(("admin", CENTER_PW)),
        Duration::from_millis(200),
    )
    .expect("client");
    let started = Instant::now();
    let e = client.delete_recurring_job("x").await.expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(2), "took too long");
    assert!(
        matches!(&e, CenterError::Timeout { timeout, url } if *timeout == Duration::from_millis(200) && url.ends_with("/hangfire/httpjob")),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_error_hides_secrets(&e);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let addr = refused_addr().await;
    let client = CenterClient::new(
        &format!("http://{addr}/hangfire"),
        Some(("admin", CENTER_PW)),
        Duration::from_secs(5),
    )
    .expect("client");
    let e = client
        .add_or_update_recurring_job(&HttpJobRequest::new("http://svc/x", "x"))
        .await
        .expect_err("refused");
    assert!(matches!(&e, CenterError::Connect { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert_error_hides_secrets(&e);
}

#[test]
fn invalid_urls_and_settings_are_refused_without_showing_secrets() {
    let timeout = Duration::from_secs(1);
    for bad in [
        "",
        "   ",
        "center:5000/hangfire",
        "ftp://center/hangfire",
        "http://center/hangfire?x=1",
        "http://center/hangfire#top",
        "http://center/hangfire/httpjob",
        "http://admin:pw-url-Kd2@center/hangfire",
        "http://admin:pw-url-Kd2@",
        "not a url pw-url-Kd2@x",
    ] {
        let e =
            CenterClient::new(bad, Some(("admin", CENTER_PW)), timeout).expect_err("invalid url");
        assert!(matches!(&e, CenterError::InvalidUrl { .. }), "{bad}: {e:?}");
        assert_error_hides_secrets(&e);
    }
    let e = CenterClient::new(
        "http://center/hangfire",
        Some(("ad:min", CENTER_PW)),
        timeout,
    )
    .expect_err("user with colon");
    assert!(matches!(&e, CenterError::InvalidRequest { .. }), "{e:?}");
    assert_error_hides_secrets(&e);
    assert!(
        CenterClient::new("http://center/hangfire", None, Duration::ZERO).is_err(),
        "zero timeout"
    );
    let ok = CenterClient::new("https://center.example/hangfire", None, timeout).expect("https");
    assert_eq!(ok.base_url(), "https://center.example/hangfire");
}

// ---------------------------------------------------------------------------------------------
// Auto-registration.

/// The example service's jobs that auto-registration sends (all that did not opt out):
/// (class, id, name, cron).
fn registered(
    registry: &Registry,
) -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    registry
        .iter()
        .filter_map(|r| {
            let a = r.auto_register()?;
            Some((r.class(), a.id, a.name, a.cron))
        })
        .collect()
}

fn registry() -> Registry {
    let registry = Registry::from_inventory().expect("registry");
    assert!(
        registered(&registry).len() >= 2,
        "the example service's jobs are linked in"
    );
    registry
}

fn options(center: &str) -> AutoRegistrationOptions {
    AutoRegistrationOptions::new(center, "http://svc.example:8080/")
        .expect("options")
        .center_credentials("admin", CENTER_PW)
        .agent_basic_auth("center", AGENT_PW)
        .backoff(Duration::from_millis(10), Duration::from_millis(40))
}

#[tokio::test]
async fn every_job_is_registered_once_with_dotnet_defaults() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let center = Center::start(reply(204, "")).await;
    let registry = registry();
    let jobs = registered(&registry);

    let report = spawn_auto_register(&registry, options(&center.base()), "/jobagent")
        .await
        .expect("task");

    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(report.jobs.len(), jobs.len());
    // Every job, not only those that name an id; defaults as .NET's: the type path and the
    // type name (Agent/Hangfire.HttpJob.Agent/JobAgentRegisterService.cs).
    let test_job = "example_agent::jobs::TestJob";
    assert!(
        jobs.iter().any(|(class, id, name, _)| *class == test_job
            && *id == test_job
            && *name == "TestJob"),
        "{jobs:?}"
    );
    let seen = center.seen();
    assert_eq!(seen.len(), jobs.len());
    for (class, id, name, cron) in &jobs {
        let result = report.get(class).expect("reported");
        assert_eq!(result.outcome, RegistrationOutcome::Registered);
        assert_eq!(result.attempts, 1);
        assert_eq!(result.id, *id);
        let s = seen
            .iter()
            .find(|s| s.body["AgentClass"] == *class)
            .expect("sent");
        assert_eq!(s.op(), "addrecurringjob");
        assert_eq!(s.path, "/hangfire/httpjob");
        assert_eq!(s.auth, Some(basic("admin", CENTER_PW)));
        assert_pascal_case(&s.body);
        let expected = json!({
            "Url": "http://svc.example:8080/jobagent",
            "Method": "Post",
            "ContentType": "application/json",
            "Timeout": 20000,
            "Cron": cron,
            "JobName": name,
            "RecurringJobIdentifier": id,
            "AgentClass": class,
            "BasicUserName": "center",
            "BasicPassword": AGENT_PW,
            "Headers": {},
        });
        assert_eq!(s.body, expected);
    }
    let text = logs.text();
    for (class, ..) in &jobs {
        let lines = text
            .lines()
            .filter(|l| l.contains(class) && l.contains("registered at the center"))
            .count();
        assert_eq!(lines, 1, "{text}");
    }
    assert_no_secret(&text);
}

#[tokio::test]
async fn already_registerd_counts_as_success() {
    let center = Center::start(reply(500, "outbox-sendis registerd!")).await;
    let registry = registry();
    let report = spawn_auto_register(&registry, options(&center.base()), "/jobagent")
        .await
        .expect("task");
    assert!(report.all_succeeded(), "{report:?}");
    for job in &report.jobs {
        assert_eq!(job.outcome, RegistrationOutcome::AlreadyRegistered);
        assert_eq!(job.attempts, 1);
    }
    assert_eq!(center.seen().len(), report.jobs.len(), "no retry");
}

#[tokio::test]
async fn a_failing_center_is_retried_with_backoff_until_it_answers() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let center = Center::start(reply(204, "")).await;
    let registry = registry();
    let n = registered(&registry).len();
    // Two rounds fail (500, then a 503 from a proxy), the third succeeds.
    center.then((0..n).map(|_| reply(500, "database unavailable")));
    center.then((0..n).map(|_| reply(503, "starting")));
    let options = options(&center.base())
        .retries(5)
        .backoff(Duration::from_millis(100), Duration::from_secs(1));

    let report = spawn_auto_register(&registry, options, "jobagent")
        .await
        .expect("task");

    assert!(report.all_succeeded(), "{report:?}");
    for job in &report.jobs {
        assert_eq!(job.outcome, RegistrationOutcome::Registered);
        assert_eq!(job.attempts, 3);
    }
    let seen = center.seen();
    assert_eq!(seen.len(), 3 * n);
    // Round 2 waited the first backoff (100 ms), round 3 the doubled one (200 ms).
    let gap1 = seen[n].at.duration_since(seen[n - 1].at);
    let gap2 = seen[2 * n].at.duration_since(seen[2 * n - 1].at);
    assert!(gap1 >= Duration::from_millis(95), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(195), "{gap2:?}");
    for s in &seen {
        assert_eq!(s.body["Url"], "http://svc.example:8080/jobagent");
    }
    let text = logs.text();
    for job in &report.jobs {
        let outcomes = text
            .lines()
            .filter(|l| l.contains(job.class) && (l.contains(" INFO ") || l.contains(" WARN ")))
            .count();
        assert_eq!(outcomes, 1, "{text}");
    }
    assert_no_secret(&text);
}

#[tokio::test]
async fn registration_gives_up_after_the_retries() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let center = Center::start(reply(500, "database unavailable")).await;
    let registry = registry();
    let n = registered(&registry).len();

    let report = spawn_auto_register(&registry, options(&center.base()).retries(2), "/jobagent")
        .await
        .expect("task");

    assert!(!report.all_succeeded());
    assert_eq!(report.failed().count(), n);
    for job in &report.jobs {
        assert_eq!(job.attempts, 3);
        let RegistrationOutcome::Failed { error } = &job.outcome else {
            panic!("{job:?}");
        };
        assert!(
            matches!(error, CenterError::Rejected { status: 500, message, .. } if message == "database unavailable"),
            "{error:?}"
        );
        assert_error_hides_secrets(error);
    }
    assert_eq!(center.seen().len(), 3 * n);
    let text = logs.text();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("could not register"))
            .count(),
        n,
        "{text}"
    );
    assert_no_secret(&text);
    assert_no_secret(&format!("{report:?}"));
}

#[tokio::test]
async fn a_refusal_retrying_cannot_change_is_not_retried() {
    let center = Center::start(reply(400, "Url invaild")).await;
    let registry = registry();
    let report = spawn_auto_register(&registry, options(&center.base()), "/jobagent")
        .await
        .expect("task");
    for job in &report.jobs {
        assert_eq!(job.attempts, 1);
        assert!(!job.outcome.is_success());
    }
    assert_eq!(center.seen().len(), report.jobs.len());
}

#[tokio::test]
async fn an_unreachable_center_is_retried_then_reported() {
    let addr = refused_addr().await;
    let registry = registry();
    let report = spawn_auto_register(
        &registry,
        options(&format!("http://{addr}/hangfire")).retries(1),
        "/jobagent",
    )
    .await
    .expect("task");
    for job in &report.jobs {
        assert_eq!(job.attempts, 2);
        assert!(
            matches!(
                &job.outcome,
                RegistrationOutcome::Failed {
                    error: CenterError::Connect { .. }
                }
            ),
            "{job:?}"
        );
    }
}

#[test]
fn the_agent_url_is_the_public_url_and_path_with_one_slash() {
    for (public, path, expected) in [
        ("http://svc:8080", "/jobagent", "http://svc:8080/jobagent"),
        ("http://svc:8080/", "/jobagent", "http://svc:8080/jobagent"),
        ("http://svc:8080//", "jobagent", "http://svc:8080/jobagent"),
        ("http://gw/svc/", "/jobs/agent", "http://gw/svc/jobs/agent"),
        ("https://gw/svc", "/jobagent", "https://gw/svc/jobagent"),
    ] {
        let o = AutoRegistrationOptions::new("http://center/hangfire", public).expect("valid");
        assert_eq!(o.agent_url(path), expected, "{public} + {path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Options from the environment.

fn from(vars: &[(&str, &str)]) -> Result<Option<AutoRegistrationOptions>, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AutoRegistrationOptions::from_lookup(|k| map.get(k).cloned())
}

fn invalid_name(result: Result<Option<AutoRegistrationOptions>, ConfigError>) -> &'static str {
    match result {
        Err(ConfigError::Invalid { name, reason }) => {
            assert_no_secret(&reason);
            name
        }
        other => panic!("expected an invalid variable, got {other:?}"),
    }
}

#[test]
fn options_are_read_from_variables() {
    assert!(from(&[]).expect("unset").is_none());
    assert!(
        from(&[
            ("JOBAGENT_AUTO_REGISTER", "false"),
            ("JOBAGENT_CENTER_URL", "nonsense")
        ])
        .expect("off")
        .is_none()
    );
    assert!(
        from(&[("JOBAGENT_AUTO_REGISTER", "0")])
            .expect("off")
            .is_none()
    );

    let all = [
        ("JOBAGENT_AUTO_REGISTER", "TRUE"),
        ("JOBAGENT_CENTER_URL", " http://center:5000/hangfire/ "),
        ("JOBAGENT_CENTER_USER", "admin"),
        ("JOBAGENT_CENTER_PASSWORD", CENTER_PW),
        ("JOBAGENT_PUBLIC_URL", "http://svc:8080/"),
        ("JOBAGENT_BASIC_USER", "center"),
        ("JOBAGENT_BASIC_PASSWORD", AGENT_PW),
    ];
    let o = from(&all).expect("valid").expect("enabled");
    assert_eq!(o.center_url(), "http://center:5000/hangfire");
    assert_eq!(o.public_url(), "http://svc:8080");
    assert_eq!(o.agent_url("/jobagent"), "http://svc:8080/jobagent");
    assert_no_secret(&format!("{o:?}"));

    let o = from(&[
        ("JOBAGENT_AUTO_REGISTER", "1"),
        ("JOBAGENT_CENTER_URL", "http://center/hangfire"),
        ("JOBAGENT_PUBLIC_URL", "http://svc"),
    ])
    .expect("valid")
    .expect("enabled");
    assert_eq!(o.center_url(), "http://center/hangfire");
}

#[test]
fn each_bad_variable_is_named() {
    let on = ("JOBAGENT_AUTO_REGISTER", "true");
    let center = ("JOBAGENT_CENTER_URL", "http://center/hangfire");
    let public = ("JOBAGENT_PUBLIC_URL", "http://svc:8080");
    assert_eq!(
        // One vocabulary for every switch (issue 14): `yes` is on, as for JOBAGENT_CLUSTER.
        invalid_name(from(&[("JOBAGENT_AUTO_REGISTER", "maybe")])),
        "JOBAGENT_AUTO_REGISTER"
    );
    assert_eq!(invalid_name(from(&[on, public])), "JOBAGENT_CENTER_URL");
    assert_eq!(invalid_name(from(&[on, center])), "JOBAGENT_PUBLIC_URL");
    assert_eq!(
        invalid_name(from(&[on, public, ("JOBAGENT_CENTER_URL", "center:5000")])),
        "JOBAGENT_CENTER_URL"
    );
    assert_eq!(
        invalid_name(from(&[
            on,
            public,
            (
                "JOBAGENT_CENTER_URL",
                "http://admin:pw-url-Kd2@center/hangfire"
            )
        ])),
        "JOBAGENT_CENTER_URL"
    );
    assert_eq!(
        invalid_name(from(&[on, center, ("JOBAGENT_PUBLIC_URL", "svc:8080")])),
        "JOBAGENT_PUBLIC_URL"
    );
    assert_eq!(
        invalid_name(from(&[
            on,
            center,
            public,
            ("JOBAGENT_CENTER_USER", "admin")
        ])),
        "JOBAGENT_CENTER_PASSWORD"
    );
    assert_eq!(
        invalid_name(from(&[
            on,
            center,
            public,
            ("JOBAGENT_CENTER_PASSWORD", CENTER_PW)
        ])),
        "JOBAGENT_CENTER_USER"
    );
    assert_eq!(
        invalid_name(from(&[
            on,
            center,
            public,
            ("JOBAGENT_CENTER_USER", "ad:min"),
            ("JOBAGENT_CENTER_PASSWORD", CENTER_PW)
        ])),
        "JOBAGENT_CENTER_USER"
    );
    assert_eq!(
        invalid_name(from(&[
            on,
            center,
            public,
            ("JOBAGENT_BASIC_USER", "center")
        ])),
        "JOBAGENT_BASIC_PASSWORD"
    );
}
