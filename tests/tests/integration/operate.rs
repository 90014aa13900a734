//! Operating the agent like a Rust service (issue 15): metrics, the run's span and trace,
//! the console mirrored to the log, probes, drain on SIGTERM, rolling restarts, cluster
//! commands through `NOTIFY`, and the stall watchdog. Against real HTTP and PostgreSQL,
//! with the example service as a process (its log, its `/metrics`, its OTLP export) or
//! in-process.
//!
//! Upstream facts these rely on (yuzd/Hangfire.HttpJob
//! `Server/Hangfire.HttpJob/Server/HttpJob.cs`): the center sends a job's configured headers
//! to the agent, their names joined with `_@_` in `x-job-agent-header` (around line 690), so
//! a W3C `traceparent` configured there reaches the run; and an agent's answer of 500 throws
//! `AgentJobException` when `EnableJobAgentErrorThrow` is on, its default (around line 211),
//! so the center fails the dispatch and may retry it: what a draining agent answers.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::pg::TestDb;
use tests::replica::Replica;
use tests::{TestService, wait};

const SINGLETON: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const QUEUED: &str = "example_agent::jobs::TestQueuedJob";
const WATCHED: &str = "example_agent::jobs::TestWatchedJob";
const WARNED: &str = "example_agent::jobs::TestWarnedJob";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Polls `check` every 20 ms until it gives a value, or panics with `what` after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// One sample of Prometheus text: `name{labels} value`, the labels given matching (others
/// may be present).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let found: BTreeMap<&str, &str> = rest
                .split("\",")
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|(k, v)| found.get(k) == Some(v))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .next()
}

fn store_env(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![("JOBAGENT_STORE", db.connection_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_by_class_and_outcome_refusals_console_store_and_takeovers() {
    let db = TestDb::new().await;
    let metrics_port = free_port();
    let mut env = store_env(&db);
    env.push((
        "JOBAGENT_METRICS_LISTEN",
        format!("127.0.0.1:{metrics_port}"),
    ));
    let a = Replica::start("metrics-a", &env).await;
    let center = a.center().with_storage(&db.storage());
    // One run of each outcome, on this process.
    center
        .run(TRANSIENT, "ok-1")
        .param(json!({"lines": 3}))
        .console(ConsoleInfo::for_job("ok-1"))
        .send()
        .await
        .assert_status(200);
    center
        .run(TRANSIENT, "err-1")
        .param(json!({"fail": true}))
        .send()
        .await
        .assert_status(200);
    center
        .run(TRANSIENT, "timeout-1")
        .param(json!({"sleep_ms": 30000}))
        .timeout_ms(300)
        .send()
        .await
        .assert_status(200);
    center
        .run(SINGLETON, "stopped-1")
        .param(json!({"sleep_ms": 30000}))
        .send()
        .await
        .assert_status(200);
    center
        .run(WATCHED, "stalled-1")
        .param(json!({"lines": 2, "sleep_ms": 6000}))
        .send()
        .await
        .assert_status(200);
    // Two refusals: the singleton is busy (501), a class nobody has (500).
    center.run(SINGLETON, "busy-1").send().await.assert_err(501);
    center
        .run("No.Such.Job", "unknown-1")
        .send()
        .await
        .assert_err(500);
    center
        .stop(SINGLETON, "stop-1")
        .send()
        .await
        .assert_status(200);
    for (job, r) in [
        ("ok-1", "ok"),
        ("err-1", "err"),
        ("timeout-1", "err"),
        ("stopped-1", "ok"),
        ("stalled-1", "err"),
    ] {
        let result = wait::result(&db, job, Duration::from_secs(20)).await;
        assert_eq!(result["R"], r, "{job}: {result}");
    }
    // A run on a replica that dies is reported lost by the survivor.
    let mut b = Replica::start("metrics-b", &store_env(&db)).await;
    b.center()
        .with_storage(&db.storage())
        .run(TRANSIENT, "lost-1")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await
        .assert_status(200);
    b.kill();
    wait::failure(&db, "lost-1", Duration::from_secs(30), "replica lost").await;

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = eventually(Duration::from_secs(10), "the lost run counted", || {
        let url = url.clone();
        async move {
            let (status, text) = get(&url).await;
            (status == 200
                && sample(
                    &text,
                    "jobagent_runs_ended_total",
                    &[("class", TRANSIENT), ("outcome", "lost")],
                ) == Some(1.0))
            .then_some(text)
        }
    })
    .await;
    let count = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let ended = |class: &str, outcome: &str| {
        count(
            "jobagent_runs_ended_total",
            &[("class", class), ("outcome", outcome)],
        )
    };
    assert_eq!(
        count("jobagent_runs_started_total", &[("class", TRANSIENT)]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(ended(TRANSIENT, "ok"), Some(1.0), "{text}");
    assert_eq!(ended(TRANSIENT, "err"), Some(1.0), "{text}");
    assert_eq!(ended(TRANSIENT, "timeout"), Some(1.0), "{text}");
    assert_eq!(ended(SINGLETON, "stopped"), Some(1.0), "{text}");
    assert_eq!(ended(WATCHED, "err"), Some(1.0), "{text}");
    assert_eq!(
        count(
            "jobagent_run_duration_seconds_count",
            &[("class", SINGLETON), ("outcome", "stopped")]
        ),
        Some(1.0),
        "{text}"
    );
    for class in [TRANSIENT, SINGLETON, WATCHED] {
        assert_eq!(
            count("jobagent_runs_in_progress", &[("class", class)]),
            Some(0.0),
            "{class}: {text}"
        );
    }
    assert_eq!(
        count(
            "jobagent_dispatches_refused_total",
            &[("action", "run"), ("reason", "busy")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(
            "jobagent_dispatches_refused_total",
            &[("action", "run"), ("reason", "unknown_class")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(
            "jobagent_stalls_total",
            &[("class", WATCHED), ("action", "cancelled")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        count("jobagent_console_lines_written_total", &[]).unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    for op in ["console", "result", "claim", "lease"] {
        assert!(
            count("jobagent_store_op_duration_seconds_count", &[("op", op)]).unwrap_or(0.0) >= 1.0,
            "store op {op} timed: {text}"
        );
    }
    assert_eq!(
        count("jobagent_cluster_claims_held", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        count("jobagent_cluster_takeovers_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count("jobagent_console_buffered_lines", &[]),
        Some(0.0),
        "{text}"
    );
}

/// A stand-in OTLP/HTTP collector: keeps every JSON body posted to `/v1/traces`.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    kept.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, bodies)
}

/// Every exported span: (name, traceId, parentSpanId, attributes as text).
fn spans(bodies: &Mutex<Vec<Value>>) -> Vec<(String, String, String, String)> {
    let bodies = bodies.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for body in bodies.iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((
                        span["name"].as_str().unwrap_or_default().to_owned(),
                        span["traceId"].as_str().unwrap_or_default().to_owned(),
                        span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        span["attributes"].to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_a_span_that_continues_the_trace_its_traceparent_names() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let (otlp, bodies) = collector().await;
    let a = Replica::start_logged(
        "trace-a",
        &[
            ("JOBAGENT_LOG_ONLY", "true".to_owned()),
            (
                "RUST_LOG",
                "info,jobagent::run=debug,example_agent=debug".to_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    )
    .await;
    a.center()
        .run(TRANSIENT, "traced-1")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    a.center()
        .run(TRANSIENT, "untraced-1")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    // The job's own log line belongs to the run's span: class, job id and the caller's
    // trace id are on it.
    let line = eventually(
        Duration::from_secs(10),
        "the traced run's log line",
        || async {
            a.log_text()
                .lines()
                .find(|l| l.contains("demo job starting") && l.contains("job_id=traced-1 "))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(line.contains("job_run{"), "{line}");
    assert!(line.contains(&format!("class={TRANSIENT} ")), "{line}");
    assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");
    assert!(line.contains("replica=trace-a "), "{line}");
    // The exported span is a child of the caller's span, in the caller's trace.
    let traced = eventually(Duration::from_secs(10), "the traced span exported", || {
        let found = spans(&bodies)
            .into_iter()
            .find(|s| s.0 == "job_run" && s.3.contains("traced-1") && !s.3.contains("untraced"));
        async move { found }
    })
    .await;
    assert_eq!((traced.1.as_str(), traced.2.as_str()), (TRACE, PARENT));
    // Without traceparent a run starts its own trace, and its log lines carry that trace's
    // id: what the exporter sent is what the log says.
    let line = eventually(
        Duration::from_secs(10),
        "the untraced run's log line",
        || async {
            a.log_text()
                .lines()
                .find(|l| l.contains("demo job starting") && l.contains("job_id=untraced-1 "))
                .map(str::to_owned)
        },
    )
    .await;
    let own = line
        .split("trace_id=")
        .nth(1)
        .map(|rest| rest.chars().take(32).collect::<String>())
        .unwrap_or_default();
    assert_eq!(own.len(), 32, "{line}");
    assert_ne!(own, TRACE);
    let untraced = eventually(
        Duration::from_secs(10),
        "the untraced span exported",
        || {
            let found = spans(&bodies)
                .into_iter()
                .find(|s| s.0 == "job_run" && s.3.contains("untraced-1"));
            async move { found }
        },
    )
    .await;
    assert_eq!(untraced.1, own);
    assert_eq!(untraced.2, "", "a root span: {untraced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lines_also_go_to_the_log_past_the_console_budget() {
    let db = TestDb::new().await;
    let mut env = store_env(&db);
    env.extend([
        ("JOBAGENT_CONSOLE_LOG", "on".to_owned()),
        ("JOBAGENT_CONSOLE_MAX_LINES", "1100".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    let a = Replica::start_logged("mirror-a", &env).await;
    let console = ConsoleInfo::for_job("mirrored-1");
    a.center()
        .with_storage(&db.storage())
        .run(TRANSIENT, "mirrored-1")
        .param(json!({"lines": 1500}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let r = wait::result(&db, "mirrored-1", Duration::from_secs(30)).await;
    assert_eq!(r["R"], "ok", "{r}");
    // The dashboard shows the budget: 100 first lines, a marker, the last 1000.
    let shown = db.console_lines(&console.set_key, &console.hash_key).await;
    assert!(shown.len() < 1500, "{} lines shown", shown.len());
    // The log has every line, each with its class and job id.
    let log = a.log_text();
    let mirrored: HashSet<String> = log
        .lines()
        .filter(|l| {
            l.contains("job_id=\"mirrored-1\"") && l.contains(&format!("class=\"{TRANSIENT}\""))
        })
        .filter_map(|l| {
            let n: String = l
                .split("】line ")
                .nth(1)?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some(n)
        })
        .collect();
    for n in 1..=1500 {
        assert!(mirrored.contains(&n.to_string()), "line {n} not in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_for_the_process_the_store_and_the_drain() {
    let db = TestDb::new().await;
    let options = AgentOptions::new()
        .store(db.connection_string(), db.schema(), 1.0)
        .drain_timeout(Duration::from_secs(2));
    let svc = TestService::start_with(options).await;
    let base = svc.base_url().to_owned();
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, "ok".to_owned())
    );
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready".to_owned())
    );
    // Under the agent's path too, so they never clash with a host's own routes.
    assert_eq!(
        get(&format!("{base}/jobagent/readyz")).await,
        (200, "ready".to_owned())
    );
    // Any other method there is the center's, as ASP.NET's Map would route it.
    let posted = reqwest::Client::new()
        .post(format!("{base}/jobagent/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));
    assert_eq!(posted.status().as_u16(), 500);
    assert!(
        posted.text().await.unwrap_or_default().starts_with("err:"),
        "the agent answered"
    );

    // A drain: not ready, runs refused with a reason, stops still served.
    let center = svc.center().with_storage(&db.storage());
    center
        .run(SINGLETON, "drained-1")
        .param(json!({"sleep_ms": 30000}))
        .send()
        .await
        .assert_status(200);
    let agent = svc.agent().clone();
    let drain = tokio::spawn(async move { agent.drain().await });
    let (status, body) = eventually(Duration::from_secs(5), "readyz saying draining", || {
        let url = format!("{base}/readyz");
        async move {
            let (s, b) = get(&url).await;
            (s == 503).then_some((s, b))
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let refused = center.run(TRANSIENT, "late-1").send().await;
    refused.assert_err(500);
    assert!(refused.body.contains("draining"), "{}", refused.body);
    center
        .stop(SINGLETON, "stop-drained-1")
        .send()
        .await
        .assert_status(200);
    let drained = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .unwrap_or_else(|_| panic!("the drain did not end"))
        .unwrap_or_else(|e| panic!("drain task: {e}"));
    assert!(drained, "the stopped run ended within the drain bound");
    svc.shutdown(Duration::from_secs(15)).await;

    // A store that does not answer: alive, not ready.
    let closed = free_port();
    let options = AgentOptions::new().store(
        format!("Host=127.0.0.1;Port={closed};Database=x;Username=u;Timeout=1"),
        "hangfire",
        1.0,
    );
    let svc = TestService::start_with(options).await;
    let base = svc.base_url();
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not answer"), "{body}");
    assert!(body.contains(&format!("127.0.0.1:{closed}")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_lets_short_runs_finish_and_reports_every_run_once() {
    let db = TestDb::new().await;
    let mut env = store_env(&db);
    env.push(("JOBAGENT_DRAIN_TIMEOUT_MS", "2000".to_owned()));
    env.push(("JOBAGENT_SHUTDOWN_TIMEOUT_MS", "5000".to_owned()));
    let mut a = Replica::start("drain-a", &env).await;
    let center = a.center().with_storage(&db.storage());
    for (class, job, sleep_ms) in [
        (TRANSIENT, "short-1", 800),
        (TRANSIENT, "long-1", 60_000),
        (QUEUED, "queued-running", 60_000),
    ] {
        center
            .run(class, job)
            .param(json!({"lines": 2, "sleep_ms": sleep_ms}))
            .send()
            .await
            .assert_status(200);
    }
    let queued = center
        .run(QUEUED, "queued-waiting")
        .param(json!({"lines": 1}))
        .send()
        .await;
    queued.assert_status(200);
    assert!(queued.body.contains("queued"), "{}", queued.body);

    a.signal_term();
    let ready = a.url("/readyz");
    eventually(Duration::from_secs(5), "readyz 503 while draining", || {
        let url = ready.clone();
        async move { (get(&url).await.0 == 503).then_some(()) }
    })
    .await;
    let late = center.run(TRANSIENT, "late-1").send().await;
    late.assert_err(500);
    assert!(late.body.contains("draining"), "{}", late.body);

    let status = a
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the process did not exit after its drain and shutdown"));
    assert!(status.success(), "{status:?}");
    let short = wait::result(&db, "short-1", Duration::from_secs(5)).await;
    assert_eq!(short["R"], "ok", "finished within the drain: {short}");
    wait::failure(&db, "long-1", Duration::from_secs(5), "shut down").await;
    wait::failure(&db, "queued-running", Duration::from_secs(5), "shut down").await;
    wait::failure(&db, "queued-waiting", Duration::from_secs(5), "draining").await;
    for job in ["short-1", "long-1", "queued-running", "queued-waiting"] {
        assert_eq!(db.result_fields(job).await.len(), 1, "{job}: one result");
    }
    assert!(
        db.result("late-1").await.is_none(),
        "a refused run has no result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_replicas_under_load_loses_no_result() {
    let db = TestDb::new().await;
    let mut env = store_env(&db);
    env.push(("JOBAGENT_DRAIN_TIMEOUT_MS", "5000".to_owned()));
    let names = ["roll-a", "roll-b", "roll-c"];
    let mut replicas = Vec::new();
    for name in names {
        replicas.push(Replica::start(name, &env).await);
    }
    // The load balancer: the ports of the replicas that are up, tried in turn.
    let ports: Arc<Mutex<Vec<u16>>> =
        Arc::new(Mutex::new(replicas.iter().map(Replica::port).collect()));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (ports, accepted, refusals, stop) = (
            ports.clone(),
            accepted.clone(),
            refusals.clone(),
            stop.clone(),
        );
        let storage = db.storage();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let job = format!("roll-{n}");
                // As the center retries a failed dispatch: the next replica, until one takes it.
                for attempt in 0..12 {
                    let candidates = ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let port = candidates[(n + attempt) % candidates.len()];
                    let center = tests::Center::new(format!("http://127.0.0.1:{port}/jobagent"))
                        .with_storage(&storage);
                    match center
                        .run(TRANSIENT, &job)
                        .param(json!({"lines": 2, "sleep_ms": 400}))
                        .try_send()
                        .await
                    {
                        Ok(reply) if reply.status == 200 => {
                            accepted
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(job.clone());
                            break;
                        }
                        Ok(reply) => {
                            assert!(
                                reply.body.contains("draining")
                                    || reply.body.contains("shutting down"),
                                "only a draining replica refuses: {}",
                                reply.body
                            );
                            refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => {
                            refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    // Under load: once runs are being accepted.
    eventually(Duration::from_secs(10), "no run accepted", || {
        let accepted = accepted.clone();
        async move { (accepted.lock().unwrap_or_else(|e| e.into_inner()).len() >= 5).then_some(()) }
    })
    .await;
    for (i, name) in names.iter().enumerate() {
        let old = replicas[i].port();
        replicas[i].signal_term();
        // The orchestrator takes it out of the endpoints once it is not ready.
        let ready = replicas[i].url("/readyz");
        eventually(Duration::from_secs(5), "the replica not ready", || {
            let url = ready.clone();
            async move {
                let ok = reqwest::get(&url)
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false);
                (!ok).then_some(())
            }
        })
        .await;
        ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != old);
        replicas[i]
            .wait_exit(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{name} did not exit"));
        replicas[i] = Replica::start(name, &env).await;
        ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(replicas[i].port());
        // Pacing of the rolling restart, as an orchestrator's: the load reaches the new
        // replica for a while before the next one goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(20), load).await;
    let accepted = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(accepted.len() >= 20, "steady load: {} runs", accepted.len());
    for job in &accepted {
        let r = wait::result(&db, job, Duration::from_secs(30)).await;
        assert_eq!(r["R"], "ok", "{job} could finish within the drain: {r}");
        assert_eq!(db.result_fields(job).await.len(), 1, "{job}: one result");
    }
    eprintln!(
        "rolling restart: {} runs accepted, all ok; {} dispatches refused by draining replicas and retried",
        accepted.len(),
        refusals.load(std::sync::atomic::Ordering::Relaxed)
    );
}

async fn stop_across_replicas(notify: bool) {
    let db = TestDb::new().await;
    // LISTEN from the test on a connection of its own.
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let (client, mut connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let kept = heard.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                    "{}:{}",
                    n.channel(),
                    n.payload()
                ));
            }
        }
    });
    client
        .batch_execute("LISTEN jobagent_cmd")
        .await
        .unwrap_or_else(|e| panic!("LISTEN: {e}"));
    let mut env = store_env(&db);
    env.push((
        "JOBAGENT_CLUSTER_NOTIFY",
        if notify { "on" } else { "off" }.to_owned(),
    ));
    env.push(("RUST_LOG", "info,jobagent=debug".to_owned()));
    let a = Replica::start_logged("notify-a", &env).await;
    let b = Replica::start_logged("notify-b", &env).await;
    a.center()
        .with_storage(&db.storage())
        .run(SINGLETON, "far-1")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await
        .assert_status(200);
    b.center()
        .with_storage(&db.storage())
        .stop(SINGLETON, "stop-far-1")
        .send()
        .await
        .assert_status(200);
    let r = wait::result(&db, "far-1", Duration::from_secs(10)).await;
    assert_eq!(r["R"], "ok", "stopped on request: {r}");
    let heard = heard.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let woken = a.log_text().contains("command notification received");
    // The sender notifies either way (a replica that listens acts at once); only one that
    // listens is woken.
    assert!(
        heard.iter().any(|h| h == "jobagent_cmd:notify-a"),
        "the stop was notified to notify-a: {heard:?}"
    );
    if notify {
        assert!(woken, "notify-a was woken by the notification");
    } else {
        assert!(
            !woken,
            "notify-a does not listen: it found the command by polling"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reaches_the_replica_running_the_job_through_notify() {
    stop_across_replicas(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_a_stop_still_reaches_the_replica_by_polling() {
    stop_across_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_run_is_warned_about_and_cancelled_when_its_job_says_so() {
    let db = TestDb::new().await;
    let svc = TestService::start_with(AgentOptions::new().store(
        db.connection_string(),
        db.schema(),
        1.0,
    ))
    .await;
    let center = svc.center().with_storage(&db.storage());
    let watched = ConsoleInfo::for_job("watched-1");
    let warned = ConsoleInfo::for_job("warned-1");
    center
        .run(WATCHED, "watched-1")
        .param(json!({"lines": 2, "sleep_ms": 6000}))
        .console(watched.clone())
        .send()
        .await
        .assert_status(200);
    center
        .run(WARNED, "warned-1")
        .param(json!({"lines": 2, "sleep_ms": 3000}))
        .console(warned.clone())
        .send()
        .await
        .assert_status(200);
    // Silent for 3 s after its start: warned after 1 s and cancelled.
    let r = wait::failure(&db, "watched-1", Duration::from_secs(15), "stalled").await;
    assert!(
        r["E"].as_str().unwrap_or_default().contains("for 1.0s"),
        "{r}"
    );
    let lines = db.console_lines(&watched.set_key, &watched.hash_key).await;
    let texts: Vec<String> = lines
        .iter()
        .map(|l| l["s"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("no console line or progress change for")
                && t.contains("cancelling")),
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.ends_with("line 2")),
        "cancelled before line 2: {texts:?}"
    );
    // Warn-only: the warning, then the job goes on and ends well.
    let r = wait::result(&db, "warned-1", Duration::from_secs(15)).await;
    assert_eq!(r["R"], "ok", "{r}");
    let lines = db.console_lines(&warned.set_key, &warned.hash_key).await;
    let texts: Vec<String> = lines
        .iter()
        .map(|l| l["s"].as_str().unwrap_or_default().to_owned())
        .collect();
    let warning = texts
        .iter()
        .position(|t| t.contains("no console line or progress change for"))
        .unwrap_or_else(|| panic!("a stall warning: {texts:?}"));
    assert!(!texts[warning].contains("cancelling"), "{texts:?}");
    assert!(
        texts[warning..].iter().any(|t| t.ends_with("line 2")),
        "the job went on after the warning: {texts:?}"
    );
}
