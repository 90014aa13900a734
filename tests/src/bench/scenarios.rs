//! The scenarios. Each runs `runs` times and fills its rows (one value per run, with the
//! same-run baseline where there is one) and adds notes on how it measured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::{Center, ConsoleInfo};
use tests::pg::TestDb;
use tests::service::TestService;

use crate::bench::http::{self, ID_PLACEHOLDER, Template};
use crate::bench::proc::{self, CpuMark, Server};
use crate::bench::stats::{Row, Target, Unit, median, percentile_sorted};
use crate::bench::stopjob::{self, Seen};
use crate::bench::{cluster, store, wrk};

/// The example service's transient demo job.
pub(crate) const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// The scenario names, in the order they run.
pub(crate) const ALL: [&str; 12] = [
    "dispatch",
    "dispatch-wrk",
    "metrics",
    "stop",
    "cluster-stop",
    "console",
    "console-stores",
    "console-relay",
    "many",
    "memory",
    "idle",
    "startup",
];

/// How the bench runs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) runs: usize,
    pub(crate) quick: bool,
    pub(crate) agent_bin: PathBuf,
    pub(crate) self_exe: PathBuf,
    /// `RUST_LOG` of the example service (its default, `info`, unless `--agent-log`).
    pub(crate) agent_log: String,
}

/// Rows and notes gathered so far.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// Runs scenario `name`.
pub(crate) async fn run(name: &str, s: &Settings, r: &mut Report) -> Result<(), String> {
    eprintln!("== {name} ({} run(s))", s.runs);
    match name {
        "dispatch" => dispatch(s, r).await,
        "dispatch-wrk" => dispatch_wrk(s, r).await,
        "metrics" => metrics_overhead(s, r).await,
        "stop" => stop_latency(s, r).await,
        "cluster-stop" => cluster::cross_replica_stop(s, r).await,
        "console" => console_throughput(s, r).await,
        "console-stores" => crate::bench::stores::console_per_store(s, r).await,
        "console-relay" => crate::bench::relay::console_via_relay(s, r).await,
        "many" => many_writers(s, r).await,
        "memory" => memory(s, r).await,
        "idle" => idle_cost(s, r).await,
        "startup" => startup(s, r).await,
        other => Err(format!("unknown scenario `{other}`")),
    }
}

/// The example service's environment: its log level (default `info`, its own default; to
/// stdout, which the bench discards), log-only runs for the scenarios whose center sends no
/// store (dispatch, stop), and whatever the scenario adds.
fn agent_env(s: &Settings, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("RUST_LOG", s.agent_log.clone()),
        ("JOBAGENT_LOG_ONLY", "true".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

pub(crate) async fn start_agent(
    s: &Settings,
    extra: &[(&'static str, String)],
) -> Result<Server, String> {
    let bin = s.agent_bin.clone();
    let env = agent_env(s, extra);
    tokio::task::spawn_blocking(move || proc::start_agent(&bin, &env))
        .await
        .map_err(|e| format!("start task: {e}"))?
}

async fn start_baseline(s: &Settings) -> Result<Server, String> {
    let exe = s.self_exe.clone();
    tokio::task::spawn_blocking(move || proc::start_baseline(&exe))
        .await
        .map_err(|e| format!("start task: {e}"))?
}

pub(crate) fn progress(text: impl AsRef<str>) {
    eprintln!("   {}", text.as_ref());
}

// ---------------------------------------------------------------------------------------------
// dispatch

/// The dispatch scenarios' warm-up and measured window per side and run.
fn dispatch_windows(s: &Settings) -> (Duration, Duration) {
    if s.quick {
        (Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// The `run` request the dispatch scenarios send to `srv`: the demo transient job, no store,
/// an empty body, job id [`ID_PLACEHOLDER`] (patched per request by each client).
fn dispatch_request(srv: &Server) -> tests::center::CenterRequest {
    Center::new(srv.url())
        .run(TRANSIENT, ID_PLACEHOLDER)
        .data("")
}

async fn dispatch(s: &Settings, r: &mut Report) -> Result<(), String> {
    const CONNS: usize = 64;
    let (warmup, window) = dispatch_windows(s);
    let agent = start_agent(s, &[]).await?;
    let base = start_baseline(s).await?;
    let template = |srv: &Server| -> Arc<Template> {
        Arc::new(Template::new(&dispatch_request(srv), "", srv.addr))
    };
    let (agent_tpl, base_tpl) = (template(&agent), template(&base));

    let mut rps = Row::new("dispatch", "run req/s (64 conns)", Unit::PerSec)
        .baseline("bare axum")
        .target(Target::RatioAtLeast(0.8));
    let mut p50 = Row::new("dispatch", "run latency p50", Unit::Ms).baseline("bare axum");
    let mut p99 = Row::new("dispatch", "run latency p99", Unit::Ms)
        .baseline("bare axum")
        .target(Target::RatioAtMost(2.0));
    let mut client_cpu =
        Row::new("dispatch", "client CPU, % of 1 core", Unit::PctCore).baseline("vs bare axum");
    let mut server_cpu =
        Row::new("dispatch", "server CPU, % of 1 core", Unit::PctCore).baseline("bare axum");
    let mut cpu_per_req =
        Row::new("dispatch", "server CPU per request", Unit::Us).baseline("bare axum");
    let mut bad = 0u64;
    let mut sample_error = None;
    for run in 0..s.runs {
        let mut agent_out = None;
        let mut base_out = None;
        // Alternate the order so drift (thermal, other load) does not favour one side.
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_agent in order {
            let (srv, tpl) = if is_agent {
                (&agent, &agent_tpl)
            } else {
                (&base, &base_tpl)
            };
            let out =
                http::timed_load(srv.addr, srv.pid, tpl.clone(), CONNS, warmup, window).await?;
            if is_agent {
                agent_out = Some(out);
            } else {
                base_out = Some(out);
            }
        }
        let (a, b) = match (agent_out, base_out) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err("a dispatch measurement is missing".to_owned()),
        };
        bad += a.not_ok + b.not_ok;
        if sample_error.is_none() {
            sample_error = a.sample_error.clone().or(b.sample_error.clone());
        }
        let pct = |o: &http::LoadOutcome, p: f64| percentile_sorted(&o.latencies_us, p) / 1000.0;
        rps.push(a.rps(), Some(b.rps()));
        p50.push(pct(&a, 50.0), Some(pct(&b, 50.0)));
        p99.push(pct(&a, 99.0), Some(pct(&b, 99.0)));
        client_cpu.push(a.client_cpu, Some(b.client_cpu));
        server_cpu.push(a.server_cpu, Some(b.server_cpu));
        let per_req = |o: &http::LoadOutcome| o.server_cpu / 100.0 / o.rps() * 1e6;
        cpu_per_req.push(per_req(&a), Some(per_req(&b)));
        progress(format!(
            "run {}: agent {:.0} req/s (p99 {:.2} ms), bare {:.0} req/s (p99 {:.2} ms)",
            run + 1,
            a.rps(),
            pct(&a, 99.0),
            b.rps(),
            pct(&b, 99.0)
        ));
    }
    if bad > 0 {
        return Err(format!(
            "dispatch: {bad} answers were not 200, e.g. {}",
            sample_error.unwrap_or_default()
        ));
    }
    r.note(format!(
        "dispatch: example-agent and the bare axum baseline each run as their own release process \
         (multi-thread tokio, 2 workers, loopback); the agent with RUST_LOG={} (stdout \
         discarded), no store. The same in-repo raw HTTP/1.1 keep-alive client (64 \
         connections, requests pre-serialized by tests::center::Center, {} bytes each with the \
         center's x-job-body/x-job-server/x-job-agent-console/x-job-url headers, x-job-id \
         patched per request) drives both; {:?} warm-up then {:?} measured per side and run, \
         order alternating. Client-not-the-bottleneck check: the same client drives the bare \
         baseline faster than the agent, and its own CPU share is in the `client CPU` row \
         (both processes share 2 cores).",
        s.agent_log,
        agent_tpl.len(),
        warmup,
        window
    ));
    r.rows
        .extend([rps, p50, p99, server_cpu, cpu_per_req, client_cpu]);
    agent.kill();
    base.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dispatch, driven by wrk

/// `wrk` threads and connections of the wrk measures.
const WRK_THREADS: usize = 2;
const WRK_CONNS: usize = 64;
/// The unmeasured wrk run before each measured one (wrk's shortest duration).
const WRK_WARMUP_SECS: u64 = 1;

/// One wrk measurement of `srv`: an unmeasured run, then the measured one.
async fn wrk_measure(
    wrk_bin: &std::path::Path,
    script: &str,
    srv: &Server,
    secs: u64,
) -> Result<wrk::WrkOutcome, String> {
    wrk::run(
        wrk_bin,
        script,
        srv.addr,
        srv.pid,
        WRK_THREADS,
        WRK_CONNS,
        WRK_WARMUP_SECS,
    )
    .await?;
    wrk::run(
        wrk_bin,
        script,
        srv.addr,
        srv.pid,
        WRK_THREADS,
        WRK_CONNS,
        secs,
    )
    .await
}

/// Server CPU per request in µs, from a CPU share (% of one core) and a request rate.
fn cpu_per_request_us(cpu_pct: f64, rps: f64) -> f64 {
    if rps > 0.0 {
        cpu_pct / 100.0 / rps * 1e6
    } else {
        f64::NAN
    }
}

async fn dispatch_wrk(s: &Settings, r: &mut Report) -> Result<(), String> {
    let wrk_bin = wrk::find()?;
    let secs = dispatch_windows(s).1.as_secs().max(1);
    let agent = start_agent(s, &[]).await?;
    let base = start_baseline(s).await?;
    let (agent_script, base_script) = (
        wrk::script(&dispatch_request(&agent), ""),
        wrk::script(&dispatch_request(&base), ""),
    );
    const SCENARIO: &str = "dispatch (wrk)";
    let mut rps = Row::new(
        SCENARIO,
        "run req/s (wrk, 2 threads, 64 conns)",
        Unit::PerSec,
    )
    .baseline("bare axum")
    .target(Target::RatioAtLeast(0.8));
    let mut p50 = Row::new(SCENARIO, "run latency p50 (wrk)", Unit::Ms).baseline("bare axum");
    let mut p99 = Row::new(SCENARIO, "run latency p99 (wrk)", Unit::Ms).baseline("bare axum");
    let mut server_cpu =
        Row::new(SCENARIO, "server CPU, % of 1 core", Unit::PctCore).baseline("bare axum");
    let mut cpu_per_req =
        Row::new(SCENARIO, "server CPU per request", Unit::Us).baseline("bare axum");
    let mut client_cpu =
        Row::new(SCENARIO, "wrk CPU, % of 1 core", Unit::PctCore).baseline("vs bare axum");
    for run in 0..s.runs {
        let (mut agent_out, mut base_out) = (None, None);
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_agent in order {
            if is_agent {
                agent_out = Some(wrk_measure(&wrk_bin, &agent_script, &agent, secs).await?);
            } else {
                base_out = Some(wrk_measure(&wrk_bin, &base_script, &base, secs).await?);
            }
        }
        let (Some(a), Some(b)) = (agent_out, base_out) else {
            return Err("a dispatch-wrk measurement is missing".to_owned());
        };
        rps.push(a.rps, Some(b.rps));
        p50.push(a.p50_ms, Some(b.p50_ms));
        p99.push(a.p99_ms, Some(b.p99_ms));
        server_cpu.push(a.server_cpu, Some(b.server_cpu));
        cpu_per_req.push(
            cpu_per_request_us(a.server_cpu, a.rps),
            Some(cpu_per_request_us(b.server_cpu, b.rps)),
        );
        client_cpu.push(a.client_cpu, Some(b.client_cpu));
        progress(format!(
            "run {}: agent {:.0} req/s (p99 {:.2} ms, {} requests), bare {:.0} req/s (p99 {:.2} ms, {} requests)",
            run + 1,
            a.rps,
            a.p99_ms,
            a.requests,
            b.rps,
            b.p99_ms,
            b.requests
        ));
    }
    r.note(format!(
        "dispatch (wrk): the dispatch scenario's two processes (example-agent with RUST_LOG={}, \
         no store; the bare axum baseline) driven by wrk ({}): -t{WRK_THREADS} -c{WRK_CONNS} \
         --latency, a {WRK_WARMUP_SECS} s unmeasured run then {secs} s measured per side and \
         run, order alternating. The request is the dispatch scenario's (method, path, the \
         center's headers, content-type, empty body), set in a generated Lua script \
         (wrk.method/path/body/headers); its request() gives every request its own 12-digit \
         x-job-id, as the in-repo client does. Figures are wrk's own (Requests/sec, the 50%/99% \
         of its latency distribution); any non-2xx answer or socket error fails the scenario. \
         CPU rows: /proc of wrk and of the server from 0.3 s after wrk starts to 0.2 s before \
         its end (both share the 2 cores).",
        s.agent_log,
        wrk_bin.display()
    ));
    r.rows
        .extend([rps, p50, p99, server_cpu, cpu_per_req, client_cpu]);
    agent.kill();
    base.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// metrics overhead

/// The counter the example service's Prometheus recorder must expose once runs were sent.
const RUNS_STARTED: &str = "jobagent_runs_started_total";

/// Reads `GET http://<addr>/metrics` (retrying for up to 5 s while it does not answer 200),
/// checks that it exposes [`RUNS_STARTED`] and returns the sum of its samples.
async fn read_runs_started(addr: SocketAddr) -> Result<f64, String> {
    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let last = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.text().await {
                Ok(text) => break text,
                Err(e) => format!("reading the body: {e}"),
            },
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "GET {url} (JOBAGENT_METRICS_LISTEN) did not answer 200 within 5 s ({last}): \
                 the example service serves no metrics, so the `metrics` scenario would \
                 measure nothing"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !text.contains(RUNS_STARTED) {
        let head: String = text.chars().take(300).collect();
        return Err(format!(
            "GET {url} answered without `{RUNS_STARTED}` after runs were sent, so the \
             `metrics` scenario would measure nothing; it began: {head:?}"
        ));
    }
    // `name{labels} value` or `name value`; comments (`# HELP`, `# TYPE`) are skipped.
    let total = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(RUNS_STARTED)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None; // another metric whose name starts the same
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum();
    Ok(total)
}

async fn metrics_overhead(s: &Settings, r: &mut Report) -> Result<(), String> {
    const CONNS: usize = 64;
    const SCENARIO: &str = "metrics overhead";
    let (warmup, window) = dispatch_windows(s);
    let secs = window.as_secs().max(1);
    let metrics_addr = proc::free_addr()?;
    let off = start_agent(s, &[]).await?;
    let on = start_agent(s, &[("JOBAGENT_METRICS_LISTEN", metrics_addr.to_string())]).await?;
    let wrk_bin = wrk::find();
    let (off_tpl, on_tpl) = (
        Arc::new(Template::new(&dispatch_request(&off), "", off.addr)),
        Arc::new(Template::new(&dispatch_request(&on), "", on.addr)),
    );
    let (off_script, on_script) = (
        wrk::script(&dispatch_request(&off), ""),
        wrk::script(&dispatch_request(&on), ""),
    );
    let mut rps = Row::new(
        SCENARIO,
        "run req/s (in-repo client, 64 conns)",
        Unit::PerSec,
    )
    .baseline("metrics off")
    .target(Target::RatioAtLeast(0.95));
    let mut p99 =
        Row::new(SCENARIO, "run latency p99 (in-repo client)", Unit::Ms).baseline("metrics off");
    let mut cpu_per_req = Row::new(
        SCENARIO,
        "server CPU per request (in-repo client)",
        Unit::Us,
    )
    .baseline("metrics off");
    let mut wrk_rps = Row::new(
        SCENARIO,
        "run req/s (wrk, 2 threads, 64 conns)",
        Unit::PerSec,
    )
    .baseline("metrics off")
    .target(Target::RatioAtLeast(0.95));
    let mut counted = Row::new(
        SCENARIO,
        "jobagent_runs_started_total at run end",
        Unit::Count,
    );
    let mut bad = 0u64;
    let mut sample_error = None;
    for run in 0..s.runs {
        let (mut on_out, mut off_out) = (None, None);
        let (mut on_wrk, mut off_wrk) = (None, None);
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for metrics_on in order {
            let (srv, tpl, script) = if metrics_on {
                (&on, &on_tpl, &on_script)
            } else {
                (&off, &off_tpl, &off_script)
            };
            let out =
                http::timed_load(srv.addr, srv.pid, tpl.clone(), CONNS, warmup, window).await?;
            bad += out.not_ok;
            if sample_error.is_none() {
                sample_error.clone_from(&out.sample_error);
            }
            let w = match &wrk_bin {
                Ok(bin) => Some(
                    wrk::run(bin, script, srv.addr, srv.pid, WRK_THREADS, WRK_CONNS, secs).await?,
                ),
                Err(_) => None,
            };
            if metrics_on {
                (on_out, on_wrk) = (Some(out), w);
                let total = read_runs_started(metrics_addr).await?;
                counted.push(total, None);
            } else {
                (off_out, off_wrk) = (Some(out), w);
            }
        }
        let (Some(a), Some(b)) = (on_out, off_out) else {
            return Err("a metrics measurement is missing".to_owned());
        };
        rps.push(a.rps(), Some(b.rps()));
        let pct99 = |o: &http::LoadOutcome| percentile_sorted(&o.latencies_us, 99.0) / 1000.0;
        p99.push(pct99(&a), Some(pct99(&b)));
        cpu_per_req.push(
            cpu_per_request_us(a.server_cpu, a.rps()),
            Some(cpu_per_request_us(b.server_cpu, b.rps())),
        );
        let wrk_text = match (&on_wrk, &off_wrk) {
            (Some(wa), Some(wb)) => {
                wrk_rps.push(wa.rps, Some(wb.rps));
                format!("; wrk on {:.0} req/s, off {:.0} req/s", wa.rps, wb.rps)
            }
            _ => String::new(),
        };
        progress(format!(
            "run {}: metrics on {:.0} req/s, off {:.0} req/s ({:.3}×){wrk_text}; {RUNS_STARTED} = {}",
            run + 1,
            a.rps(),
            b.rps(),
            a.rps() / b.rps(),
            counted.values.last().copied().unwrap_or(f64::NAN)
        ));
    }
    if bad > 0 {
        return Err(format!(
            "metrics: {bad} answers were not 200, e.g. {}",
            sample_error.unwrap_or_default()
        ));
    }
    let wrk_note = match &wrk_bin {
        Ok(bin) => format!(
            "then wrk ({}, -t{WRK_THREADS} -c{WRK_CONNS}, {secs} s, the dispatch-wrk script) on \
             the same side",
            bin.display()
        ),
        Err(e) => format!("the wrk row is empty: {e}"),
    };
    r.note(format!(
        "metrics overhead: two example-agent processes of the same binary (RUST_LOG={}, no \
         store), one with JOBAGENT_METRICS_LISTEN={metrics_addr} (Prometheus recorder on), one \
         without; each run drives each with the dispatch scenario's in-repo client and request \
         ({CONNS} connections, {warmup:?} warm-up, {window:?} measured), {wrk_note}; sides in \
         alternating order. After each run of the metrics-on side, GET /metrics must contain \
         `{RUNS_STARTED}` (else the scenario fails); its value, summed over labels, is the \
         count row (cumulative since start).",
        s.agent_log
    ));
    if wrk_bin.is_err() {
        wrk_rps = wrk_rps.target(Target::None);
    }
    r.rows.extend([rps, p99, cpu_per_req, wrk_rps, counted]);
    on.kill();
    off.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stop latency

async fn recv_seen(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    want_started: bool,
    id: &str,
) -> Result<Option<Instant>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = tokio::time::timeout(left, rx.recv())
            .await
            .map_err(|_| format!("the probe job {id} did not report within 10 s"))?
            .ok_or("the probe job's channel closed")?;
        match seen {
            Seen::Started(j) if want_started && j == id => return Ok(None),
            Seen::Cancelled(j, at) if !want_started && j == id => return Ok(Some(at)),
            _ => {}
        }
    }
}

/// Per stop, one at a time: answer → cancel seen, sent → cancel seen, and the stop's round
/// trip (ms).
struct StopSamples {
    after_answer: Vec<f64>,
    after_send: Vec<f64>,
    rtt: Vec<f64>,
}

/// `samples` run+stop pairs of the probe job through `center`, ids starting with `tag`.
async fn stop_pairs(
    svc: &TestService,
    center: &Center,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    tag: &str,
    samples: usize,
) -> Result<StopSamples, String> {
    let mut out = StopSamples {
        after_answer: Vec::with_capacity(samples),
        after_send: Vec::with_capacity(samples),
        rtt: Vec::with_capacity(samples),
    };
    for i in 0..samples {
        let id = format!("{tag}-{i}");
        let reply = center.run(stopjob::CLASS, &id).send().await;
        if reply.status != 200 {
            return Err(format!("run of the probe job answered {reply:?}"));
        }
        recv_seen(rx, true, &id).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = Instant::now();
        let reply = center
            .stop(stopjob::CLASS, &format!("{id}-stop"))
            .send()
            .await;
        let answered = Instant::now();
        if reply.status != 200 {
            return Err(format!("stop answered {reply:?}"));
        }
        let seen = recv_seen(rx, false, &id)
            .await?
            .ok_or("no cancellation instant")?;
        let signed_ms = |from: Instant, to: Instant| {
            if to >= from {
                to.duration_since(from).as_secs_f64() * 1e3
            } else {
                -(from.duration_since(to).as_secs_f64() * 1e3)
            }
        };
        out.after_answer.push(signed_ms(answered, seen));
        out.after_send.push(signed_ms(sent, seen));
        out.rtt.push(signed_ms(sent, answered));
        let deadline = Instant::now() + Duration::from_secs(10);
        while svc.agent().running() > 0 {
            if Instant::now() > deadline {
                return Err("the stopped probe job did not end within 10 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(out)
}

async fn stop_latency(s: &Settings, r: &mut Report) -> Result<(), String> {
    let samples = if s.quick { 50 } else { 200 };
    let svc = TestService::start().await;
    let center = svc.center();
    // The same stops with a PostgreSQL store the center names: each stop's in-flight record
    // is written before its answer (one store write more than a run's stop without a store).
    let db = TestDb::new().await;
    let stored = Center::new(svc.agent_url()).with_storage(&db.storage());
    let mut rx = stopjob::listen();
    let mut answer_row = Row::new(
        "stop latency",
        "stop answer → job sees cancel (median)",
        Unit::Ms,
    )
    .target(Target::AtMost(1.0));
    let mut answer_p99 = Row::new(
        "stop latency",
        "stop answer → job sees cancel (p99)",
        Unit::Ms,
    );
    let mut sent_row = Row::new(
        "stop latency",
        "stop sent → job sees cancel (median)",
        Unit::Ms,
    );
    let mut answer_rtt = Row::new("stop latency", "stop request round trip (median)", Unit::Ms);
    let mut stored_rtt = Row::new(
        "stop latency",
        "stop round trip, PostgreSQL store (median)",
        Unit::Ms,
    )
    .baseline("no store");
    for run in 0..s.runs {
        let plain = stop_pairs(&svc, &center, &mut rx, &format!("stop-{run}"), samples).await?;
        let with_store =
            stop_pairs(&svc, &stored, &mut rx, &format!("stop-pg-{run}"), samples).await?;
        let mut sorted = plain.after_answer.clone();
        sorted.sort_by(f64::total_cmp);
        answer_row.push(median(&plain.after_answer), None);
        answer_p99.push(percentile_sorted(&sorted, 99.0), None);
        sent_row.push(median(&plain.after_send), None);
        answer_rtt.push(median(&plain.rtt), None);
        stored_rtt.push(median(&with_store.rtt), Some(median(&plain.rtt)));
        progress(format!(
            "run {}: answer → cancel seen median {:.3} ms over {samples} stops; stop round trip {:.3} ms without a store, {:.3} ms with PostgreSQL",
            run + 1,
            median(&plain.after_answer),
            median(&plain.rtt),
            median(&with_store.rtt)
        ));
    }
    r.note(format!(
        "stop latency: in-process agent (the example service's router plus a bench probe job, \
         `{}`, that waits on cx.cancelled() and records Instant::now() when it wakes), driven \
         by tests::center::Center (reqwest); {samples} run+stop pairs per run, one at a time, \
         without a store and then with a PostgreSQL store named by the center (each stop's \
         in-flight record written before its answer). Negative values: the job saw the \
         cancellation before the client had read the stop answer.",
        stopjob::CLASS
    ));
    r.rows
        .extend([answer_row, answer_p99, sent_row, answer_rtt, stored_rtt]);
    svc.shutdown(Duration::from_secs(15)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// console throughput

/// `n` demo lines of `line_len` for console `key`, as the agent would store them.
fn demo_rows(key: &str, n: u64, line_len: usize) -> Vec<(String, f64, String)> {
    (1..=n)
        .map(|i| {
            (
                key.to_owned(),
                i as f64 / 10_000.0,
                store::line_json(i, i, line_len),
            )
        })
        .collect()
}

async fn warm_store(center: &Center, db: &TestDb, jobs: usize) -> Result<(), String> {
    let mut tasks = Vec::new();
    for i in 0..jobs {
        let c = center.clone();
        tasks.push(tokio::spawn(async move {
            c.run(TRANSIENT, &format!("warm-{i}"))
                .param(json!({"lines": 10, "line_len": 80}))
                .send()
                .await
        }));
    }
    for t in tasks {
        let reply = t.await.map_err(|e| format!("warm-up task: {e}"))?;
        if reply.status != 200 {
            return Err(format!("warm-up run answered {reply:?}"));
        }
    }
    store::wait_results(
        db,
        jobs as i64,
        Duration::from_millis(5),
        Duration::from_secs(60),
    )
    .await?;
    store::truncate(db).await
}

async fn console_throughput(s: &Settings, r: &mut Report) -> Result<(), String> {
    const LINES: u64 = 100_000;
    const LINE_LEN: usize = 80;
    let sample: u64 = if s.quick { 1_000 } else { 3_000 };
    let db = TestDb::new().await;
    r.note(format!(
        "PostgreSQL for the store scenarios: {} ({})",
        db.origin(),
        store::server_settings(&db).await
    ));
    // The budget is raised so that all 100,000 lines (and the two lifecycle lines) are
    // written and can be checked; with the default budget (100,000 lines, 1,000 kept at the
    // end) two lines would be replaced by a marker line.
    let agent = start_agent(s, &[("JOBAGENT_CONSOLE_MAX_LINES", "1000000".to_owned())]).await?;
    let center = Center::new(agent.url()).with_storage(&db.storage());
    warm_store(&center, &db, 2).await?;

    let mut vs_copy = Row::new(
        "console throughput",
        "100k lines → result row",
        Unit::PerSec,
    )
    .baseline("COPY")
    .target(Target::RatioAtLeast(0.5));
    let mut vs_tx = Row::new(
        "console throughput",
        "100k lines → result row",
        Unit::PerSec,
    )
    .baseline(format!("1 tx/line ({sample} lines)"))
    .target(Target::RatioAtLeast(20.0));
    let mut complete = Row::new(
        "console throughput",
        "console complete, in order",
        Unit::Count,
    )
    .target(Target::Every(1.0));
    for run in 0..s.runs {
        store::truncate(&db).await?;
        let id = format!("ct-{run}");
        let console = ConsoleInfo::for_job(&id);
        let t0 = Instant::now();
        let reply = center
            .run(TRANSIENT, &id)
            .param(json!({"lines": LINES, "line_len": LINE_LEN}))
            .console(console.clone())
            .send()
            .await;
        if reply.status != 200 {
            return Err(format!("the run answered {reply:?}"));
        }
        let t1 =
            store::wait_results(&db, 1, Duration::from_millis(5), Duration::from_secs(600)).await?;
        let agent_rate = LINES as f64 / t1.duration_since(t0).as_secs_f64();
        store::check_results_ok(&db).await?;
        let verdicts = store::consoles_in_order(&db, LINES).await?;
        let ok = verdicts.get(&console.set_key).map(|v| v.is_ok()) == Some(true);
        if !ok {
            return Err(format!(
                "console {} is not complete and in order: {:?}",
                console.set_key,
                verdicts.get(&console.set_key)
            ));
        }
        complete.push(1.0, None);

        store::truncate(&db).await?;
        let rows = demo_rows(&format!("console:copy-{run}"), LINES, LINE_LEN);
        let copy_client = db.connect().await;
        let took = store::copy_rows(&copy_client, &rows).await?;
        let copy_rate = LINES as f64 / took.as_secs_f64();
        drop(copy_client);

        store::truncate(&db).await?;
        let rows = demo_rows(&format!("console:tx-{run}"), sample, LINE_LEN);
        let mut tx_client = db.connect().await;
        let took = store::one_tx_per_line(&mut tx_client, &rows).await?;
        let tx_rate = sample as f64 / took.as_secs_f64();

        vs_copy.push(agent_rate, Some(copy_rate));
        vs_tx.push(agent_rate, Some(tx_rate));
        progress(format!(
            "run {}: agent {agent_rate:.0} lines/s, COPY {copy_rate:.0} lines/s, 1 tx/line {tx_rate:.0} lines/s",
            run + 1
        ));
    }
    store::truncate(&db).await?;
    r.note(format!(
        "console throughput: example-agent process, store sent in x-job-storage, pool warmed \
         by one small job; timed from sending the run to its member in set `_agent_result_` \
         (polled every 5 ms); tables truncated before each measurement. Baselines on the same \
         table: one binary COPY of the same 100,000 rows (same JSON shape, keys and texts), and \
         a one-transaction-per-line writer (BEGIN; INSERT ... ON CONFLICT; COMMIT, prepared, \
         one connection) on {sample} lines, as lines/s."
    ));
    r.rows.extend([vs_copy, vs_tx, complete]);
    agent.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// many writers

async fn many_writers(s: &Settings, r: &mut Report) -> Result<(), String> {
    const JOBS: usize = 200;
    const LINES: u64 = 500;
    const LINE_LEN: usize = 80;
    let total = JOBS as u64 * LINES;
    let db = TestDb::new().await;
    let agent = start_agent(s, &[]).await?;
    let center = Center::new(agent.url()).with_storage(&db.storage());
    warm_store(&center, &db, 32).await?;
    let mut vs_copy = Row::new(
        "many writers",
        "200 jobs × 500 lines → results",
        Unit::PerSec,
    )
    .baseline("COPY")
    .target(Target::RatioAtLeast(0.4));
    let mut complete = Row::new("many writers", "consoles complete, in order", Unit::Count)
        .target(Target::Every(JOBS as f64));
    for run in 0..s.runs {
        store::truncate(&db).await?;
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(JOBS);
        for i in 0..JOBS {
            let c = center.clone();
            let id = format!("mw-{run}-{i}");
            tasks.push(tokio::spawn(async move {
                c.run(TRANSIENT, &id)
                    .param(json!({"lines": LINES, "line_len": LINE_LEN}))
                    .send()
                    .await
            }));
        }
        for t in tasks {
            let reply = t.await.map_err(|e| format!("run task: {e}"))?;
            if reply.status != 200 {
                return Err(format!("a run answered {reply:?}"));
            }
        }
        let t1 = store::wait_results(
            &db,
            JOBS as i64,
            Duration::from_millis(5),
            Duration::from_secs(600),
        )
        .await?;
        let rate = total as f64 / t1.duration_since(t0).as_secs_f64();
        let results = store::check_results_ok(&db).await?;
        if results != JOBS {
            return Err(format!("{results} results for {JOBS} jobs"));
        }
        let verdicts = store::consoles_in_order(&db, LINES).await?;
        let good = verdicts.values().filter(|v| v.is_ok()).count();
        if let Some((k, Err(e))) = verdicts.iter().find(|(_, v)| v.is_err()) {
            progress(format!("console {k} is not complete and in order: {e}"));
        }
        complete.push(good as f64, None);

        store::truncate(&db).await?;
        let mut rows = Vec::with_capacity(total as usize);
        for i in 0..JOBS {
            rows.extend(demo_rows(
                &format!("console:copy-{run}-{i}"),
                LINES,
                LINE_LEN,
            ));
        }
        let copy_client = db.connect().await;
        let took = store::copy_rows(&copy_client, &rows).await?;
        let copy_rate = total as f64 / took.as_secs_f64();
        drop(copy_client);
        vs_copy.push(rate, Some(copy_rate));
        progress(format!(
            "run {}: agent {rate:.0} lines/s, COPY {copy_rate:.0} lines/s, {good}/{JOBS} consoles in order",
            run + 1
        ));
    }
    store::truncate(&db).await?;
    r.note(
        "many writers: example-agent process, 200 runs sent at once (200 concurrent requests), \
         timed from the first send until all 200 members are in set `_agent_result_`; then every \
         console is read back ORDER BY id and checked to hold line 1..=500 once each, in order. \
         Baseline: one binary COPY of the same 100,000 rows (200 keys × 500 lines).",
    );
    r.rows.extend([vs_copy, complete]);
    agent.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// concurrency memory

async fn memory(s: &Settings, r: &mut Report) -> Result<(), String> {
    const JOBS: u64 = 10_000;
    let mut idle_row =
        Row::new("concurrency memory", "idle RSS", Unit::MiB).target(Target::AtMost(20.0));
    let mut loaded_row =
        Row::new("concurrency memory", "RSS, 10,000 jobs running", Unit::MiB).baseline("idle");
    let mut per_job = Row::new("concurrency memory", "RSS per running job", Unit::KiB)
        .target(Target::AtMost(8.0));
    for run in 0..s.runs {
        let agent = start_agent(s, &[]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = proc::rss_kib(agent.pid)?;
        // Open the 64 connections and use each once (a `detail`), so their buffers are in
        // the "before" figure and the difference is the jobs'.
        let detail = Center::new(agent.url()).detail("example_agent::jobs::TestJob");
        let warm = Template::new(&detail, "", agent.addr);
        let conns = http::Conns::open(agent.addr, 64, &warm).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let connected = proc::rss_kib(agent.pid)?;
        let body = json!({"sleep_ms": 30_000}).to_string();
        let req = Center::new(agent.url())
            .run(TRANSIENT, ID_PLACEHOLDER)
            .data(body.clone());
        let tpl = Arc::new(Template::new(&req, &body, agent.addr));
        let t0 = Instant::now();
        let conns = conns.send_all(tpl, JOBS).await?;
        let sent = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = proc::rss_kib(agent.pid)?;
        let detail = Center::new(agent.url()).detail(TRANSIENT).send().await;
        let running = format!("Running instances: {JOBS}");
        if !detail.body.contains(&running) {
            let head: String = detail.body.chars().take(200).collect();
            return Err(format!(
                "expected `{running}` in detail, got {}: {head}",
                detail.status
            ));
        }
        if t0.elapsed() > Duration::from_secs(25) {
            return Err("sending the runs took too long: some may have ended".to_owned());
        }
        drop(conns);
        let per = (loaded as f64 - connected as f64) / JOBS as f64;
        idle_row.push(idle as f64 / 1024.0, None);
        loaded_row.push(loaded as f64 / 1024.0, Some(connected as f64 / 1024.0));
        per_job.push(per, None);
        progress(format!(
            "run {}: idle {idle} KiB, 64 connections open {connected} KiB, {JOBS} running {loaded} KiB ({per:.2} KiB/job; sent in {:.2} s)",
            run + 1,
            sent.as_secs_f64()
        ));
        agent.kill();
    }
    r.note(
        "concurrency memory: a fresh example-agent process per run (no store); VmRSS from \
         /proc/<pid>/status 300 ms after its first answer (idle RSS); then 64 keep-alive \
         connections are opened and used once (`detail`) and VmRSS read again (idle + 64 \
         conns); then 10,000 runs of TestTransientJob {\"sleep_ms\":30000} over those \
         connections, VmRSS 500 ms after the last answer, `detail` confirming 10,000 running \
         instances. Per job = (loaded − (idle + 64 conns)) / 10,000.",
    );
    r.rows.extend([idle_row, loaded_row, per_job]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle cost

async fn idle_cost(s: &Settings, r: &mut Report) -> Result<(), String> {
    let window = if s.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };
    let tck = proc::clk_tck();
    let db = TestDb::new().await;
    let mut row = Row::new("idle cost", "CPU, 3 heartbeat reporters", Unit::PctCore)
        .target(Target::AtMost(1.0));
    for run in 0..s.runs {
        store::truncate(&db).await?;
        let agent = start_agent(s, &[]).await?;
        for i in 0..3 {
            let reply = Center::new(agent.url())
                .with_storage(&db.storage())
                .with_server_id(format!("bench-center-{i}"))
                .heartbeat()
                .send()
                .await;
            if reply.status != 200 {
                return Err(format!("heartbeat answered {reply:?}"));
            }
        }
        let first = wait_heartbeats(&db, Duration::from_secs(10)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c0 = CpuMark::now(agent.pid)?;
        tokio::time::sleep(window).await;
        let c1 = CpuMark::now(agent.pid)?;
        let pct = c0.pct_until(c1, tck);
        let last = wait_heartbeats(&db, Duration::from_secs(1)).await?;
        if last >= first {
            return Err(format!(
                "the heartbeat rows were not renewed during the window (Idx {first} → {last})"
            ));
        }
        row.push(pct, None);
        progress(format!(
            "run {}: {pct:.3} % of one core over {window:?} (heartbeat Idx {first} → {last})",
            run + 1
        ));
        agent.kill();
    }
    r.note(format!(
        "idle cost: a fresh example-agent process per run; 3 heartbeats (3 center server ids, \
         store in x-job-storage) start 3 reporters writing every 3 s; after their first rows, \
         utime+stime from /proc/<pid>/stat over {window:?} (clock ticks of 1/{tck} s), checked \
         that the rows kept being renewed."
    ));
    r.rows.push(row);
    Ok(())
}

/// Waits until the three reporters' rows exist; returns the smallest `Idx` among them.
async fn wait_heartbeats(db: &TestDb, within: Duration) -> Result<i64, String> {
    let deadline = Instant::now() + within;
    loop {
        let rows = db
            .client()
            .query(
                "SELECT key, value FROM hangfire.hash WHERE key LIKE 'AgentHeart:bench-center-%'",
                &[],
            )
            .await
            .map_err(|e| format!("read heartbeats: {e}"))?;
        if rows.len() >= 3 {
            let mut min_idx = i64::MAX;
            for row in &rows {
                let value: Option<String> = row.get(1);
                let v: serde_json::Value = serde_json::from_str(value.as_deref().unwrap_or(""))
                    .map_err(|e| format!("heartbeat row is not JSON: {e}"))?;
                min_idx = min_idx.min(v.get("Idx").and_then(|i| i.as_i64()).unwrap_or(i64::MAX));
            }
            return Ok(min_idx);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of 3 heartbeat rows after {within:?}",
                rows.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// start-up

fn one_startup(bin: &std::path::Path, env: &[(&str, String)]) -> Result<Duration, String> {
    let addr: SocketAddr = proc::free_addr()?;
    let (server, t0) = proc::spawn(bin, &[], env, addr)?;
    let t1 = proc::wait_ready(addr, Duration::from_secs(20))?;
    server.kill();
    Ok(t1.duration_since(t0))
}

async fn startup(s: &Settings, r: &mut Report) -> Result<(), String> {
    const PER_RUN: usize = 3;
    let bin = s.agent_bin.clone();
    let runs = s.runs;
    let env = agent_env(s, &[]);
    let values = tokio::task::spawn_blocking(move || {
        one_startup(&bin, &env)?; // warm the page cache; not counted
        let mut per_run = Vec::with_capacity(runs);
        for run in 0..runs {
            let mut ms = Vec::with_capacity(PER_RUN);
            for _ in 0..PER_RUN {
                ms.push(one_startup(&bin, &env)?.as_secs_f64() * 1e3);
            }
            let m = median(&ms);
            eprintln!("   run {}: {m:.2} ms (samples {ms:.2?})", run + 1);
            per_run.push(m);
        }
        Ok::<_, String>(per_run)
    })
    .await
    .map_err(|e| format!("start-up task: {e}"))??;
    let mut row = Row::new("start-up", "spawn → first answered request", Unit::Ms)
        .target(Target::AtMost(100.0));
    for v in values {
        row.push(v, None);
    }
    r.note(format!(
        "start-up: spawn of the example-agent release binary (no store) until a `detail` \
         request on a fresh connection is answered, probing every 100 µs; {PER_RUN} starts per \
         run (median), after one unmeasured start to warm the page cache."
    ));
    r.rows.push(row);
    Ok(())
}
