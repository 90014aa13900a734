//! What an unchanged Hangfire.HttpJob center really sends (PROTOCOL.md sections 1–3), over
//! real HTTP: job headers its HTTP stack owns, the paths ASP.NET's `app.Map` accepts, storage
//! descriptions written with a host's own Newtonsoft defaults, and `detail` as the dashboard
//! asks for it. Each test names the upstream file (github.com/yuzd/Hangfire.HttpJob) whose
//! behaviour it pins.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use jobagent::{Agent, AgentOptions, JobAgent, JobContext, JobError, job_agent};
use reqwest::Method;
use serde_json::json;
use tests::center::{Center, ConsoleInfo, Reply, headers};
use tests::pg::TestDb;
use tests::service::{TestService, init_tracing};
use tests::wait;

const TEST_JOB: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const ECHO: &str = "integration::real_center::HeaderEchoJob";

/// How long a state change may take before a test fails.
const WAIT: Duration = Duration::from_secs(10);

/// The headers each run of [`HeaderEchoJob`] saw, by job id.
fn seen() -> &'static Mutex<HashMap<String, BTreeMap<String, String>>> {
    static SEEN: OnceLock<Mutex<HashMap<String, BTreeMap<String, String>>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

/// Records the job headers it was given, and writes them to its console as `name=value`.
#[job_agent(transient)]
#[derive(Default)]
struct HeaderEchoJob;

impl JobAgent for HeaderEchoJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        for (name, value) in cx.headers() {
            cx.console().info(format!("{name}={value}"));
        }
        seen()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cx.job_id().to_owned(), cx.headers().clone());
        Ok(())
    }
}

/// Waits until the run `job_id` of [`HeaderEchoJob`] has recorded its headers.
async fn headers_seen_by(job_id: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = seen()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
            .cloned();
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "run {job_id} did not start within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pairs(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Job headers (Server/Hangfire.HttpJob/Server/HttpJob.cs `PrepareHttpRequestMessage`;
//    Agent/Hangfire.HttpJob.Agent/JobAgentMiddleware.cs `GetJobHeaders`).
// ---------------------------------------------------------------------------------------

/// The center lists every configured header; `Content-Type` arrives as the body's own
/// `application/json; charset=utf-8`, `Accept` as `application/json, <base64>`,
/// `Authorization` as the basic-auth value. None of them decodes: each is skipped and the
/// run goes ahead with the headers that do.
#[tokio::test(flavor = "multi_thread")]
async fn headers_owned_by_the_centers_http_stack_are_skipped_and_the_run_goes_ahead() {
    let svc = TestService::start().await;
    let c = svc.center().with_basic_auth("center", "s3cret");
    let reply = c
        .run(ECHO, "h-1")
        .param(json!({"Hour": 48}))
        .header("tenant", "acme")
        .header("Content-Type", "text/xml")
        .header("Accept", "text/plain")
        .header("Authorization", "Bearer token-1")
        .header("trace-id", "追踪-1")
        .send()
        .await;
    reply.assert_status(200);
    assert!(!reply.is_err_body(), "{reply:?}");
    assert_eq!(
        headers_seen_by("h-1").await,
        pairs(&[("tenant", "acme"), ("trace-id", "追踪-1")])
    );
}

/// Without basic auth the center sends the configured `Authorization` base64-encoded like any
/// other header, so the job gets it; a GET job (or one with empty `Data`) has no body and so
/// no `Content-Type` at all: a listed header that is absent is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn without_basic_auth_authorization_reaches_the_job_and_absent_headers_are_skipped() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(ECHO, "h-2")
        .method(Method::GET)
        .data(r#"{"ignored":"on GET"}"#)
        .header("Content-Type", "application/json")
        .header("Authorization", "Bearer token-2")
        .header("tenant", "acme")
        .send()
        .await;
    reply.assert_status(200);
    assert_eq!(
        headers_seen_by("h-2").await,
        pairs(&[("Authorization", "Bearer token-2"), ("tenant", "acme")])
    );
}

/// A listed header whose value is not base64 of UTF-8 (a proxy rewrote it, a hand-made
/// request) or that is missing is skipped; the others reach the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_header_that_does_not_decode_or_is_missing_is_skipped() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(ECHO, "h-3")
        .param(json!({}))
        .header("tenant", "acme")
        .header("region", "eu")
        .header("shard", "7")
        .set_header("region", "not base64!")
        .remove_header("shard")
        .send()
        .await;
    reply.assert_status(200);
    assert_eq!(headers_seen_by("h-3").await, pairs(&[("tenant", "acme")]));
}

// ---------------------------------------------------------------------------------------
// 2. Paths (Agent/Hangfire.HttpJob.Agent/JobAgentApplicationBuilderExtensions.cs:
//    `app.Map(SitemapUrl, ...)`, case-insensitive and by path prefix).
// ---------------------------------------------------------------------------------------

/// Serves `app` on `127.0.0.1:0`; the server stops when the returned handle is dropped.
async fn serve(app: Router) -> (String, AbortOnDrop) {
    init_tracing();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap_or_else(|e| panic!("cannot bind: {e}"));
    let addr: SocketAddr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), AbortOnDrop(task))
}

/// Aborts the server task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn agent() -> Agent {
    example_agent::Service::new(AgentOptions::new().log_only(true))
        .map(|s| s.agent)
        .unwrap_or_else(|e| panic!("invalid agent options: {e}"))
}

/// Asserts that the agent `id` answers a center's `detail` at each of `paths` under `base`.
async fn assert_agent_answers(base: &str, id: &str, paths: &[&str]) {
    for path in paths {
        Center::new(format!("{base}{path}"))
            .expect_agent(id)
            .detail(TEST_JOB)
            .send()
            .await
            .assert_status(200);
    }
}

async fn get_text(url: &str) -> (u16, String, bool) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let marked = response.headers().contains_key(headers::AGENT_SERVER_ID);
    let body = response.text().await.unwrap_or_default();
    (status, body, marked)
}

/// Every spelling a center configured for the .NET agent may use reaches the agent; a path
/// that only starts with the same letters does not, and gets a plain 404.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_answers_every_path_asp_net_map_would() {
    let svc = TestService::start().await;
    let id = svc.agent().server_id().to_owned();
    for path in [
        "/jobagent",
        "/JobAgent",
        "/JOBAGENT",
        "/jobagent/",
        "/JobAgent/",
        "/jobagent/x",
        "/JobAgent/x/y",
        "/job%61gent",
    ] {
        let c = Center::new(format!("{}{path}", svc.base_url())).expect_agent(&id);
        let d = c.detail(TEST_JOB).send().await;
        d.assert_status(200);
        assert!(d.body.contains(TEST_JOB), "{path}: {d:?}");
        c.heartbeat().send().await.assert_status(200);
    }
    let c = Center::new(format!("{}/JobAgent/", svc.base_url())).expect_agent(&id);
    c.run(TEST_JOB, "p-1")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);

    for path in ["/jobagentx", "/JobAgents", "/x/jobagent", "/jobagent%2Fx"] {
        let reply = Center::new(format!("{}{path}", svc.base_url()))
            .detail(TEST_JOB)
            .send()
            .await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert_eq!(reply.body, "", "{path}: a plain 404");
        assert_eq!(reply.agent_server_id_header, None, "{path}: not the agent");
    }
    // The example service's own routes, merged beside the agent's, still answer.
    let (status, body, marked) = get_text(&format!("{}/health", svc.base_url())).await;
    assert_eq!((status, body.as_str(), marked), (200, "ok", false));
}

/// Merged beside a host's routes, the host's routes win for their paths (even one the agent
/// would serve case-insensitively); nested, the agent serves its spellings under the prefix,
/// and nested at its own path it serves that path;
/// a host fallback set after merging replaces the agent's (documented on `Agent::router`):
/// the configured path as written still reaches the agent, other spellings the host.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_router_merges_and_nests_beside_host_routes() {
    let agent = agent();
    let id = agent.server_id().to_owned();
    let app = Router::new()
        .route("/health", get(|| async { "host ok" }))
        .route("/JobAgent/status", get(|| async { "host status" }))
        .route("/jobagentx", get(|| async { "host x" }))
        .merge(agent.router());
    let (base, _server) = serve(app).await;
    for (path, expected) in [
        ("/health", "host ok"),
        ("/JobAgent/status", "host status"),
        ("/jobagentx", "host x"),
    ] {
        let (status, body, marked) = get_text(&format!("{base}{path}")).await;
        assert_eq!((status, body.as_str(), marked), (200, expected, false));
    }
    for path in ["/jobagent", "/JOBAGENT/status", "/JobAgent/"] {
        let d = Center::new(format!("{base}{path}"))
            .expect_agent(&id)
            .detail(TEST_JOB)
            .send()
            .await;
        d.assert_status(200);
    }
    let (status, body, marked) = get_text(&format!("{base}/nothing")).await;
    assert_eq!((status, body.as_str(), marked), (404, "", false));

    let nested = Router::new()
        .route("/health", get(|| async { "host ok" }))
        .nest("/svc", agent.router());
    let (base, _nested_server) = serve(nested).await;
    assert_agent_answers(
        &base,
        &id,
        &["/svc/jobagent", "/svc/JobAgent", "/svc/jobagent/x"],
    )
    .await;
    let (status, _, marked) = get_text(&format!("{base}/svc/other")).await;
    assert_eq!((status, marked), (404, false));

    // Nested at its own path (the natural mistake, issue 13), it answers at that path, not at
    // `/jobagent/jobagent` only: an empty 404 there would read as success at the center.
    let own = Router::new()
        .route("/health", get(|| async { "host ok" }))
        .nest("/jobagent", agent.router());
    let (base, _own_server) = serve(own).await;
    // (axum's `nest` matches its prefix case-sensitively and routes no `/jobagent/` to a
    // nested router, so a center spelling the path otherwise needs the router merged.)
    assert_agent_answers(&base, &id, &["/jobagent", "/jobagent/x"]).await;
    let (status, body, marked) = get_text(&format!("{base}/health")).await;
    assert_eq!((status, body.as_str(), marked), (200, "host ok", false));

    let with_fallback = Router::new()
        .merge(agent.router())
        .fallback(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "host fallback") });
    let (base, _fallback_server) = serve(with_fallback).await;
    assert_agent_answers(&base, &id, &["/jobagent", "/jobagent/", "/jobagent/x"]).await;
    let (status, body, _) = get_text(&format!("{base}/JobAgent")).await;
    assert_eq!((status, body.as_str()), (418, "host fallback"));
}

// ---------------------------------------------------------------------------------------
// 3. Storage header shapes (Server/Hangfire.HttpJob/Server/HttpJob.cs `GetCurrentJobStorage`
//    serializes with the host's Newtonsoft defaults; the .NET agent's JobAgentMiddleware.cs
//    binds the names case-insensitively and reads ExpireAtDays < 1 or null as 7).
// ---------------------------------------------------------------------------------------

/// Seconds from now until the result row of `job_id` expires.
async fn result_expires_in(db: &TestDb, job_id: &str) -> f64 {
    let row = db
        .client()
        .query_one(
            &format!(
                "SELECT extract(epoch FROM max(expireat) - now())::float8 FROM {}.hash WHERE key = $1",
                db.schema()
            ),
            &[&format!("_agent_result_{job_id}")],
        )
        .await
        .unwrap_or_else(|e| panic!("reading the result row: {e}"));
    row.try_get::<_, Option<f64>>(0)
        .ok()
        .flatten()
        .unwrap_or(f64::NAN)
}

const SEVEN_DAYS: f64 = 7.0 * 86_400.0;

#[track_caller]
fn assert_about(secs: f64, expected: f64) {
    assert!(
        (secs - expected).abs() < 600.0,
        "expected about {expected} s until expiry, got {secs}"
    );
}

/// A center whose host sets camelCase Newtonsoft defaults writes `type`, `tablePrefix`,
/// `expireAtDays`, `hangfireDb` (and a camelCase console and item): the run is accepted, its
/// lines and result land in the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_camel_case_center_drives_the_agent_into_its_store() {
    let db = TestDb::new().await;
    let svc = TestService::start().await;
    let c = svc
        .center()
        .with_storage(&db.storage().expire_at_days(3))
        .with_camel_case_json();
    let console = ConsoleInfo::for_job("s-1");
    c.run(ECHO, "s-1")
        .param(json!({}))
        .header("tenant", "acme")
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = wait::result(&db, "s-1", WAIT).await;
    assert_eq!(result["R"], "ok", "{result}");
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert!(
        lines
            .iter()
            .any(|l| l["s"].as_str().unwrap_or_default().contains("tenant=acme")),
        "{lines:?}"
    );
    assert_about(result_expires_in(&db, "s-1").await, 3.0 * 86_400.0);
}

/// Hangfire.PostgreSql 1.6–1.8 has no schema option: `TablePrefix` is null, the schema is
/// `hangfire`. `ExpireAtDays` below 1, null or absent means 7 days.
#[tokio::test(flavor = "multi_thread")]
async fn a_null_table_prefix_means_hangfire_and_expire_days_below_one_mean_seven() {
    let db = TestDb::new().await;
    let svc = TestService::start().await;
    let conn = serde_json::to_string(&db.connection_string()).unwrap_or_default();
    let shapes = [
        (
            "s-2",
            format!(
                r#"{{"Type":"postgresql","TablePrefix":null,"ExpireAtDays":0,"HangfireDb":{conn}}}"#
            ),
        ),
        (
            "s-3",
            format!(r#"{{"Type":"postgresql","ExpireAtDays":null,"HangfireDb":{conn}}}"#),
        ),
        (
            "s-4",
            format!(r#"{{"TYPE":"PostgreSQL","HANGFIREDB":{conn}}}"#),
        ),
        (
            "s-5",
            format!(r#"{{"type":"postgresql","expireAtDays":-3,"hangfireDb":{conn}}}"#),
        ),
    ];
    for (id, json) in shapes {
        svc.center()
            .with_storage_json(json)
            .run(TRANSIENT, id)
            .param(json!({"lines": 1}))
            .send()
            .await
            .assert_status(200);
        let result = wait::result(&db, id, WAIT).await;
        assert_eq!(result["R"], "ok", "{id}: {result}");
        assert_about(result_expires_in(&db, id).await, SEVEN_DAYS);
    }
}

/// A storage description the agent cannot use is refused with a 500 that names the header,
/// never the connection string.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_storage_description_is_a_500_without_the_connection_string() {
    let svc = TestService::start().await;
    for json in [
        r#"{"type":"postgresql","hangfireDb":["Host=db;Password=hunter2"]}"#,
        r#"{"type":"postgresql","hangfireDb":"Host=db;Port=x;Password=hunter2"}"#,
        r#"{"type":"mysql","hangfireDb":"server=db;pwd=hunter2"}"#,
        r#""Host=db;Password=hunter2""#,
    ] {
        let reply = svc
            .center()
            .with_storage_json(json)
            .run(TEST_JOB, "s-6")
            .param(json!({}))
            .send()
            .await;
        reply.assert_err(500);
        assert!(!reply.body.contains("hunter2"), "{json}: {reply:?}");
    }
    let d = svc.center().detail(TEST_JOB).send().await;
    assert!(d.has_word("Default"), "no refused run started: {d:?}");
}

/// Hangfire.PostgreSql 1.20.3+ has none of the fields the center reflects on: it sends no
/// `x-job-storage` and no heartbeats. An agent with its own store is then how results reach
/// the center; without one (and without log-only runs) the run is refused, not accepted into
/// a void.
#[tokio::test(flavor = "multi_thread")]
async fn a_center_that_sends_no_storage_works_with_the_agents_own_store() {
    let db = TestDb::new().await;
    let svc = TestService::start_with(AgentOptions::new().store(
        db.connection_string(),
        db.schema(),
        7.0,
    ))
    .await;
    let c = svc.center().without_storage_header();
    assert!(!c.sends_heartbeats());
    c.run(TEST_JOB, "s-7")
        .param(json!({"lines": 2}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(wait::result(&db, "s-7", WAIT).await["R"], "ok");

    let bare = TestService::start_with(AgentOptions::new()).await;
    let refused = bare
        .center()
        .without_storage_header()
        .run(TEST_JOB, "s-8")
        .param(json!({}))
        .send()
        .await;
    refused.assert_err(500);
    assert!(refused.body.contains("store"), "{refused:?}");
    // detail needs no store: the dashboard can still look at such an agent.
    let d = bare
        .center()
        .without_storage_header()
        .detail(TEST_JOB)
        .send()
        .await;
    d.assert_status(200);
    assert!(d.has_word("Default"), "{d:?}");
}

// ---------------------------------------------------------------------------------------
// 4. detail (Server/Hangfire.HttpJob/Server/HttpJob.cs `GetAgentJobDetail`: a GET with the
//    class, the action and Authorization only; Server/HttpJobDispatcher.cs replaces `\r\n`,
//    and nothing else, with `<br/>`).
// ---------------------------------------------------------------------------------------

#[track_caller]
fn assert_crlf_lines(reply: &Reply) {
    let body = &reply.body;
    assert!(body.ends_with("\r\n"), "{body:?}");
    assert!(
        !body.replace("\r\n", "").contains('\n') && !body.replace("\r\n", "").contains('\r'),
        "every line ends with \\r\\n and only there: {body:?}"
    );
    assert!(body.matches("\r\n").count() >= 3, "{body:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn detail_as_the_dashboard_asks_for_it_answers_in_crlf_lines() {
    let svc = TestService::start_with(
        AgentOptions::new()
            .log_only(true)
            .basic_auth("center", "s3cret"),
    )
    .await;
    let c = svc.center().with_basic_auth("center", "s3cret");

    let before = c.detail(TEST_JOB).send().await;
    before.assert_status(200);
    assert!(before.has_word("Default"), "{before:?}");
    assert_crlf_lines(&before);

    c.run(TEST_JOB, "d-1")
        .param(json!({"sleep_ms": 30_000, "note": "<b>bold</b> & more"}))
        .send()
        .await
        .assert_status(200);
    let during = c
        .wait_detail(TEST_JOB, WAIT, |r| r.is_ok() && r.has_word("Running"))
        .await;
    assert_crlf_lines(&during);
    assert!(during.body.contains("\r\nJobId: d-1\r\n"), "{during:?}");
    // The dashboard inserts the text as HTML: markup in the parameter is shown, not applied.
    assert!(
        during.body.contains("&lt;b&gt;bold&lt;/b&gt; &amp; more") && !during.body.contains("<b>"),
        "{during:?}"
    );

    for id in ["d-2", "d-3"] {
        c.run(TRANSIENT, id)
            .param(json!({"sleep_ms": 30_000}))
            .send()
            .await
            .assert_status(200);
    }
    let transient = c
        .wait_detail(TRANSIENT, WAIT, |r| r.is_ok() && r.body.contains("d-3"))
        .await;
    assert_crlf_lines(&transient);
    assert!(transient.body.contains("d-2"), "{transient:?}");

    // Without the dashboard's credentials detail is refused like any other request.
    c.detail(TEST_JOB).no_auth().send().await.assert_err(500);
    c.stop(TEST_JOB, "d-4").send().await.assert_status(200);
    c.stop(TRANSIENT, "d-5").send().await.assert_status(200);
}
