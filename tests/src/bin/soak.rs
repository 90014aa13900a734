//! The soak run: the example service under steady load for a bounded time, with one
//! PostgreSQL restart in the middle, then a check of everything it wrote. Not part of CI.
//!
//! ```text
//! cargo run --release -p tests --bin soak -- [--secs 120] [--rate 4] [--seed N] [--store header|local]
//! ```
//!
//! It starts its own throwaway PostgreSQL server (through `tests::pg`, always: when
//! `JOBAGENT_TEST_DATABASE_URL` is set the soak runs itself again without it, since it
//! restarts the server), and the example service in-process. For `--secs` it dispatches
//! `--rate` requests a second, as the center builds them: runs of the transient and the
//! singleton demo jobs (`lines`, `sleep_ms`, sometimes `fail` or `panic`; some heavy runs of
//! 5,000 to 20,000 lines), stops of either class, and details. Halfway through it stops the
//! server for 3 s and starts it again. Then it waits for every result and checks:
//!
//! - every accepted dispatch (200) has exactly one result (hash `_agent_result_<id>` holds one
//!   field, and set `_agent_result_` the id) with the right `Action`, `RunId` and `R`;
//! - every run's console is complete and ordered: strictly increasing `t`, the lifecycle
//!   lines, `line 1` .. `line n` in order (all of them unless the run was stopped);
//! - a run ends stopped only if a stop of its class was accepted while it ran;
//! - no refused dispatch (500, 501) has a result.
//!
//! It prints the figures and `PASS` or `FAIL`; the exit status is non-zero on `FAIL`.
//! `--store header` (the default) sends the store in `x-job-storage` as a center does;
//! `--store local` configures it on the agent instead. `RUST_LOG` filters the agent's log
//! (default: errors only; warnings are counted either way).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_sdk::{AgentOptions, DEFAULT_CONSOLE_PREFIX};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tests::center::{Center, ConsoleInfo, Reply};
use tests::pg::{DATABASE_URL_VAR, RESULT_KEY, SCHEMA, TestDb};
use tests::service::TestService;
use tokio::task::JoinHandle;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const SINGLETON: &str = "example_agent::jobs::TestJob";
/// `ExpireAtDays` sent with the store: a result row was written at `expireat` minus this.
const EXPIRE_DAYS: i64 = 7;
/// How long the server stays down in the middle of the run.
const OUTAGE: Duration = Duration::from_secs(3);

const USAGE: &str = "usage: soak [--secs N] [--rate R] [--seed N] [--store header|local]
  --secs N     how long to dispatch, in seconds (default 120)
  --rate R     dispatches per second (default 4)
  --seed N     the random seed (default: a random one, printed)
  --store S    header: the store goes in x-job-storage (default); local: configured on the agent";

struct Args {
    secs: u64,
    rate: f64,
    seed: u64,
    local_store: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        secs: 120,
        rate: 4.0,
        seed: rand::random(),
        local_store: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--secs" => {
                let v = value("--secs")?;
                args.secs = v
                    .parse()
                    .ok()
                    .filter(|s| (5..=86_400).contains(s))
                    .ok_or_else(|| format!("--secs {v}: give a number of seconds from 5"))?;
            }
            "--rate" => {
                let v = value("--rate")?;
                args.rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0 && *r <= 500.0)
                    .ok_or_else(|| format!("--rate {v}: give dispatches per second, 0 to 500"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                args.seed = v.parse().map_err(|_| format!("--seed {v}: not a number"))?;
            }
            "--store" => match value("--store")?.as_str() {
                "header" => args.local_store = false,
                "local" => args.local_store = true,
                other => return Err(format!("--store {other}: header or local")),
            },
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

/// Counts the agent's warnings and errors, whatever `RUST_LOG` shows.
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static LOG_ERRORS: AtomicU64 = AtomicU64::new(0);

struct CountLevels;

impl<S: tracing::Subscriber> Layer<S> for CountLevels {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
        match *event.metadata().level() {
            tracing::Level::ERROR => LOG_ERRORS.fetch_add(1, Ordering::Relaxed),
            tracing::Level::WARN => WARNINGS.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

fn init_logging() {
    let shown = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::registry()
        .with(CountLevels.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(shown),
        )
        .try_init();
}

/// Panics the soak asked for (`panic: true`) are counted, not printed with a backtrace;
/// any other panic is printed as usual.
static REQUESTED_PANICS: AtomicU64 = AtomicU64::new(0);

fn quiet_requested_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or_default();
        if message.contains("panic requested by the parameter") {
            REQUESTED_PANICS.fetch_add(1, Ordering::Relaxed);
        } else {
            default(info);
        }
    }));
}

/// A demo job's parameters (`example_agent::jobs::TestParams`).
#[derive(Clone, Copy, Debug, Serialize)]
struct Params {
    lines: u64,
    sleep_ms: u64,
    fail: bool,
    panic: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Run,
    Stop,
    Detail,
}

/// One dispatch as sent, and what the agent answered.
struct Sent {
    id: String,
    kind: Kind,
    class: &'static str,
    params: Option<Params>,
    console: Option<ConsoleInfo>,
    console_start: SystemTime,
    sent_at: SystemTime,
    replied_at: SystemTime,
    reply: Result<Reply, String>,
}

impl Sent {
    fn accepted(&self) -> bool {
        matches!(&self.reply, Ok(r) if r.status == 200)
    }
}

fn secs_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Chooses the next dispatch. `heavy` forces a long run.
fn plan(rng: &mut StdRng, heavy: Option<(u64, u64)>) -> (Kind, &'static str, Option<Params>) {
    if let Some((lines, sleep_ms)) = heavy {
        let p = Params {
            lines,
            sleep_ms,
            fail: false,
            panic: false,
        };
        return (Kind::Run, TRANSIENT, Some(p));
    }
    let roll: f64 = rng.random();
    let ending = |rng: &mut StdRng| {
        let r: f64 = rng.random();
        (r < 0.10, (0.10..0.15).contains(&r))
    };
    if roll < 0.50 {
        let r: f64 = rng.random();
        let (lines, sleep_ms) = if r < 0.03 {
            (
                rng.random_range(5_000..=20_000),
                rng.random_range(0..=5_000),
            )
        } else if r < 0.25 {
            (rng.random_range(200..2_000), rng.random_range(0..=4_000))
        } else {
            (rng.random_range(0..200), rng.random_range(0..=3_000))
        };
        let (fail, panic) = ending(rng);
        let p = Params {
            lines,
            sleep_ms,
            fail,
            panic,
        };
        (Kind::Run, TRANSIENT, Some(p))
    } else if roll < 0.78 {
        let (fail, panic) = ending(rng);
        let p = Params {
            lines: rng.random_range(0..500),
            sleep_ms: rng.random_range(300..=5_000),
            fail,
            panic,
        };
        (Kind::Run, SINGLETON, Some(p))
    } else if roll < 0.90 {
        (Kind::Stop, SINGLETON, None)
    } else if roll < 0.915 {
        (Kind::Stop, TRANSIENT, None)
    } else if roll < 0.96 {
        (Kind::Detail, SINGLETON, None)
    } else {
        (Kind::Detail, TRANSIENT, None)
    }
}

/// Dispatches for `secs` at `rate` a second; returns every dispatch's handle.
async fn drive(center: Center, secs: u64, rate: f64, seed: u64) -> Vec<JoinHandle<Sent>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handles = Vec::new();
    let mut next_id: u64 = 100_000;
    // Two forced heavy runs: a burst at the start, and one spread over the server restart.
    let mut forced: Vec<(f64, (u64, u64))> = vec![(0.0, (20_000, 0)), (0.44, (20_000, 8_000))];
    while Instant::now() < end {
        ticker.tick().await;
        let elapsed = start.elapsed().as_secs_f64() / secs as f64;
        let heavy = match forced.first() {
            Some((at, what)) if elapsed >= *at => {
                let what = *what;
                forced.remove(0);
                Some(what)
            }
            _ => None,
        };
        let (kind, class, params) = plan(&mut rng, heavy);
        next_id += 1;
        let id = next_id.to_string();
        let console_start = SystemTime::now();
        let console = (kind == Kind::Run).then(|| ConsoleInfo::for_job_at(&id, console_start));
        let request = match kind {
            Kind::Run => center
                .run(class, &id)
                .param(params)
                .console(console.clone().unwrap_or_else(|| ConsoleInfo::for_job(&id))),
            Kind::Stop => center.stop(class, &id),
            Kind::Detail => center.detail(class),
        };
        handles.push(tokio::spawn(async move {
            let sent_at = SystemTime::now();
            let reply = request.try_send().await.map_err(|e| e.to_string());
            Sent {
                id,
                kind,
                class,
                params,
                console,
                console_start,
                sent_at,
                replied_at: SystemTime::now(),
                reply,
            }
        }));
    }
    handles
}

/// One result row: its field, parsed value and when it was written (epoch seconds).
struct ResultRow {
    field: String,
    value: Value,
    written: f64,
}

struct Store {
    results: HashMap<String, Vec<ResultRow>>,
    result_ids: HashSet<String>,
    consoles: HashMap<String, Vec<Value>>,
    console_rows: u64,
}

/// Reads every result and every console line of the soak's database.
async fn read_store(db: &TestDb) -> Result<Store, String> {
    let client = db.client();
    let rows = client
        .query(
            &format!(
                "SELECT key, field, value, extract(epoch from expireat)::float8 FROM {SCHEMA}.hash \
                 WHERE key LIKE '\\_agent\\_result\\_%' ORDER BY id"
            ),
            &[],
        )
        .await
        .map_err(|e| format!("reading results: {e}"))?;
    let mut results: HashMap<String, Vec<ResultRow>> = HashMap::new();
    for row in rows {
        let key: String = row.get(0);
        let value: Option<String> = row.get(2);
        let expire: Option<f64> = row.get(3);
        let value = value.unwrap_or_default();
        let parsed = serde_json::from_str(&value).unwrap_or(Value::String(value));
        results
            .entry(key.trim_start_matches(RESULT_KEY).to_owned())
            .or_default()
            .push(ResultRow {
                field: row.get(1),
                value: parsed,
                written: expire.unwrap_or_default() - (EXPIRE_DAYS * 86_400) as f64,
            });
    }
    let result_ids = client
        .query(
            &format!("SELECT value FROM {SCHEMA}.\"set\" WHERE key = $1"),
            &[&RESULT_KEY],
        )
        .await
        .map_err(|e| format!("reading the result set: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let refs: HashMap<(String, String), String> = client
        .query(
            &format!("SELECT key, field, value FROM {SCHEMA}.hash WHERE key LIKE 'console:refs:%'"),
            &[],
        )
        .await
        .map_err(|e| format!("reading console references: {e}"))?
        .iter()
        .map(|r| {
            let v: Option<String> = r.get(2);
            ((r.get(0), r.get(1)), v.unwrap_or_default())
        })
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT key, value FROM {SCHEMA}.\"set\" WHERE key LIKE 'console:%' ORDER BY id"
            ),
            &[],
        )
        .await
        .map_err(|e| format!("reading consoles: {e}"))?;
    let console_rows = rows.len() as u64;
    let mut consoles: HashMap<String, Vec<Value>> = HashMap::new();
    for row in rows {
        let key: String = row.get(0);
        let raw: String = row.get(1);
        let mut line: Value = serde_json::from_str(&raw)
            .unwrap_or_else(|_| Value::String(format!("not JSON: {raw}")));
        if line.get("r") == Some(&Value::Bool(true)) {
            let field = line.get("s").and_then(Value::as_str).unwrap_or_default();
            let hash_key = key.replacen("console:", "console:refs:", 1);
            let text = refs
                .get(&(hash_key, field.to_owned()))
                .cloned()
                .unwrap_or_else(|| format!("missing reference {field}"));
            if let Some(obj) = line.as_object_mut() {
                obj.remove("r");
                obj.insert("s".to_owned(), Value::String(text));
            }
        }
        consoles.entry(key).or_default().push(line);
    }
    Ok(Store {
        results,
        result_ids,
        consoles,
        console_rows,
    })
}

/// How one run's console ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Finished,
    Stopped,
    Failed,
}

/// What a run's console shows, or why it is wrong.
struct ConsoleCheck {
    end: Option<End>,
    end_t: Option<f64>,
    late_stop_lines: u64,
    problems: Vec<String>,
}

fn check_console(lines: &[Value], class: &str, p: &Params) -> ConsoleCheck {
    let prefix = DEFAULT_CONSOLE_PREFIX;
    let mut problems = Vec::new();
    let mut previous_t = f64::NEG_INFINITY;
    let (mut starts, mut fencing, mut stops, mut failed) = (0, 0, 0, 0);
    let mut body = 0u64;
    let mut end: Option<End> = None;
    let mut end_t = None;
    let mut late_stop_lines = 0;
    for (i, line) in lines.iter().enumerate() {
        let t = line.get("t").and_then(Value::as_f64);
        match t {
            Some(t) if t > previous_t => previous_t = t,
            _ => problems.push(format!(
                "line {} has t {t:?}, not after {previous_t}",
                i + 1
            )),
        }
        let text = line.get("s").and_then(Value::as_str).unwrap_or_default();
        let color = line.get("c").and_then(Value::as_str).unwrap_or_default();
        let Some(text) = text.strip_prefix(prefix) else {
            problems.push(format!("line {} lacks the prefix: {text:?}", i + 1));
            continue;
        };
        if end.is_some() && !text.starts_with("stop requested") {
            problems.push(format!("line {} comes after the end: {text:?}", i + 1));
        }
        let want_color = if let Some(n) = text.strip_prefix("line ") {
            body += 1;
            if n.parse::<u64>().ok() != Some(body) {
                problems.push(format!(
                    "line {} is {text:?}, expected `line {body}`",
                    i + 1
                ));
            }
            "#ffffff"
        } else if text.starts_with("job ") && text.contains(" started, job id ") {
            starts += 1;
            if i != 0 {
                problems.push(format!("the start line is line {}", i + 1));
            }
            "#008000"
        } else if text.starts_with("fencing token ") {
            fencing += 1;
            "#ffffff"
        } else if text.starts_with("stop requested") {
            stops += 1;
            if end.is_some() {
                late_stop_lines += 1;
            }
            "#008000"
        } else if text.starts_with("job failed: ") {
            failed += 1;
            "#ff0000"
        } else {
            let this = if text.starts_with("job finished after") {
                End::Finished
            } else if text.starts_with("job stopped on request after") {
                End::Stopped
            } else if text.starts_with("job ended with an error after") {
                End::Failed
            } else {
                problems.push(format!("line {} is unexpected: {text:?}", i + 1));
                continue;
            };
            if end.is_some() {
                problems.push(format!("a second end line (line {})", i + 1));
            }
            end = Some(this);
            end_t = t;
            "#008000"
        };
        if color != want_color {
            problems.push(format!("line {} has color {color:?}: {text:?}", i + 1));
        }
    }
    let want_fencing = usize::from(class == SINGLETON);
    if starts != 1 {
        problems.push(format!("{starts} start lines"));
    }
    if fencing != want_fencing {
        problems.push(format!(
            "{fencing} fencing-token lines, expected {want_fencing}"
        ));
    }
    match end {
        None => problems.push("no end line".to_owned()),
        Some(End::Stopped) => {
            if body > p.lines {
                problems.push(format!("{body} body lines of {}", p.lines));
            }
        }
        Some(e) => {
            if body != p.lines {
                problems.push(format!("{body} body lines of {} ({e:?})", p.lines));
            }
        }
    }
    if failed != usize::from(end == Some(End::Failed)) {
        problems.push(format!("{failed} `job failed` lines for an end {end:?}"));
    }
    let expected = 1 + want_fencing + body as usize + stops + failed + 1;
    if lines.len() != expected {
        problems.push(format!(
            "{} lines, expected {expected} (1 start, {want_fencing} fencing, {body} body, {stops} stop, {failed} failed, 1 end)",
            lines.len()
        ));
    }
    ConsoleCheck {
        end,
        end_t,
        late_stop_lines,
        problems,
    }
}

#[derive(Default)]
struct Figures {
    runs: u64,
    runs_accepted: u64,
    stops: u64,
    stops_accepted: u64,
    details: u64,
    refused_by_status: BTreeMap<u16, u64>,
    /// Refusals grouped by reason: how many, first and last (seconds into the run).
    refusal_reasons: BTreeMap<String, (u64, f64, f64)>,
    transport_errors: u64,
    results: u64,
    stopped_runs: u64,
    failed_runs: u64,
    late_stop_lines: u64,
    heavy_runs: u64,
    lines_expected_min: u64,
    end_to_result_ms: Vec<f64>,
}

/// A refusal's kind, class and answer without its ids, for grouping.
fn refusal_reason(s: &Sent, reply: &Reply) -> String {
    let class = s.class.rsplit("::").next().unwrap_or(s.class);
    let body: String = reply
        .body
        .split(",JobId:")
        .next()
        .unwrap_or_default()
        .chars()
        .take(110)
        .collect();
    let body = body.replace(s.class, class);
    format!("{:?} {class} → {} {body}", s.kind, reply.status)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Checks everything; returns the failures.
fn verify(
    all: &[Sent],
    store: &Store,
    server_id: &str,
    start: SystemTime,
    fig: &mut Figures,
) -> Vec<String> {
    let mut failures = Vec::new();
    // When each accepted run's result was written: the end of its life.
    let result_time = |id: &str| -> Option<f64> {
        store
            .results
            .get(id)
            .and_then(|rows| rows.first())
            .map(|r| r.written)
    };
    let accepted_stops: Vec<&Sent> = all
        .iter()
        .filter(|s| s.kind == Kind::Stop && s.accepted())
        .collect();
    // A run may end stopped when a stop of its class was accepted while it ran.
    let stoppable = |run: &Sent| -> bool {
        let end = result_time(&run.id).unwrap_or(f64::INFINITY);
        accepted_stops.iter().any(|s| {
            s.class == run.class
                && secs_since_epoch(s.sent_at) <= end + 0.05
                && secs_since_epoch(s.replied_at) >= secs_since_epoch(run.sent_at) - 0.05
        })
    };
    for s in all {
        match s.kind {
            Kind::Run => fig.runs += 1,
            Kind::Stop => fig.stops += 1,
            Kind::Detail => fig.details += 1,
        }
        let reply = match &s.reply {
            Ok(r) => r,
            Err(e) => {
                fig.transport_errors += 1;
                failures.push(format!("{:?} {} got no answer: {e}", s.kind, s.id));
                continue;
            }
        };
        if reply.agent_server_id_header.as_deref() != Some(server_id)
            || reply.cookie.as_deref() != Some(server_id)
        {
            failures.push(format!(
                "{:?} {}: reply without agentServerId",
                s.kind, s.id
            ));
        }
        if s.kind == Kind::Detail {
            if reply.status != 200 && reply.status != 500 {
                failures.push(format!("detail answered {}: {}", reply.status, reply.body));
            }
            continue;
        }
        let rows = store.results.get(&s.id).map(Vec::as_slice).unwrap_or(&[]);
        let in_set = store.result_ids.contains(&s.id);
        if reply.status != 200 {
            *fig.refused_by_status.entry(reply.status).or_default() += 1;
            let at = secs_since_epoch(s.sent_at) - secs_since_epoch(start);
            let entry = fig
                .refusal_reasons
                .entry(refusal_reason(s, reply))
                .or_insert((0, at, at));
            entry.0 += 1;
            entry.1 = entry.1.min(at);
            entry.2 = entry.2.max(at);
            if !(reply.status == 500 || reply.status == 501) || !reply.is_err_body() {
                failures.push(format!(
                    "{:?} {} answered {} {:?}",
                    s.kind, s.id, reply.status, reply.body
                ));
            }
            if !rows.is_empty() || in_set {
                failures.push(format!(
                    "refused {:?} {} ({}) has a result: {} field(s), in set: {in_set}",
                    s.kind,
                    s.id,
                    reply.status,
                    rows.len()
                ));
            }
            continue;
        }
        match s.kind {
            Kind::Run => fig.runs_accepted += 1,
            _ => fig.stops_accepted += 1,
        }
        if rows.len() != 1 || !in_set {
            failures.push(format!(
                "{:?} {} has {} result field(s), in set: {in_set}",
                s.kind,
                s.id,
                rows.len()
            ));
        }
        let Some(row) = rows.first() else { continue };
        fig.results += 1;
        if row.field.parse::<u64>().is_err() {
            failures.push(format!("result of {} has field {:?}", s.id, row.field));
        }
        let get = |k: &str| row.value.get(k).and_then(Value::as_str).unwrap_or_default();
        let action = if s.kind == Kind::Run { "run" } else { "stop" };
        if get("Id") != s.id || get("Action") != action {
            failures.push(format!("result of {} is {}", s.id, row.value));
        }
        if s.kind == Kind::Stop {
            if get("R") != "ok" {
                failures.push(format!("stop {} reported {}", s.id, row.value));
            }
            let run_id = get("RunId");
            let plausible = all.iter().any(|r| {
                r.kind == Kind::Run
                    && r.class == s.class
                    && r.id == run_id
                    && r.accepted()
                    && secs_since_epoch(r.sent_at) <= secs_since_epoch(s.replied_at) + 0.05
                    && result_time(&r.id).is_some_and(|t| t + 0.05 >= secs_since_epoch(s.sent_at))
            });
            let never_ran = run_id.is_empty() && reply.body.contains("not running");
            if !plausible && !never_ran {
                failures.push(format!(
                    "stop {} names RunId {run_id:?}, not a run of {} that was running",
                    s.id, s.class
                ));
            }
            continue;
        }
        // An accepted run.
        if get("RunId") != s.id {
            failures.push(format!("result of run {} has RunId {}", s.id, get("RunId")));
        }
        let (Some(p), Some(console)) = (&s.params, &s.console) else {
            continue;
        };
        if p.lines >= 5_000 {
            fig.heavy_runs += 1;
        }
        let lines = store
            .consoles
            .get(&console.set_key)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let check = check_console(lines, s.class, p);
        fig.late_stop_lines += check.late_stop_lines;
        for problem in check.problems.iter().take(5) {
            failures.push(format!("console of run {} ({:?}): {problem}", s.id, p));
        }
        let r = get("R");
        let e = get("E");
        match check.end {
            Some(End::Finished) => {
                fig.lines_expected_min += p.lines;
                if r != "ok" || p.fail || p.panic {
                    failures.push(format!("run {} ({p:?}) finished: {}", s.id, row.value));
                }
            }
            Some(End::Stopped) => {
                fig.stopped_runs += 1;
                if r != "ok" {
                    failures.push(format!("run {} was stopped: {}", s.id, row.value));
                }
                if !stoppable(s) {
                    failures.push(format!(
                        "run {} ended stopped with no stop of its class accepted while it ran",
                        s.id
                    ));
                }
            }
            Some(End::Failed) => {
                fig.failed_runs += 1;
                fig.lines_expected_min += p.lines;
                let why_ok =
                    (p.fail && e.contains("fail=true")) || (p.panic && e.contains("panicked"));
                if r != "err" || !why_ok {
                    failures.push(format!("run {} ({p:?}) failed: {}", s.id, row.value));
                }
            }
            None => {}
        }
        if let Some(t) = check.end_t {
            let end = secs_since_epoch(s.console_start) + t;
            fig.end_to_result_ms.push((row.written - end) * 1000.0);
        }
    }
    // Results for ids nobody dispatched, or dispatched and refused, were caught above; check
    // nothing else appeared.
    let known: HashSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    for id in store.results.keys() {
        if !known.contains(id.as_str()) {
            failures.push(format!("a result for unknown id {id}"));
        }
    }
    failures
}

/// Prints what the soak knows about every dispatch a failure names (ids are 6+ digits).
fn explain(failures: &[String], all: &[Sent], store: &Store, start: SystemTime) {
    let mut ids: Vec<&str> = Vec::new();
    for f in failures.iter().take(40) {
        for word in f.split(|c: char| !c.is_ascii_digit()) {
            if word.len() >= 6 && !ids.contains(&word) {
                ids.push(word);
            }
        }
    }
    let t0 = secs_since_epoch(start);
    println!("---- the dispatches named above ----");
    for id in ids {
        let Some(s) = all.iter().find(|s| s.id == id) else {
            continue;
        };
        let status = match &s.reply {
            Ok(r) => r.status.to_string(),
            Err(e) => format!("no answer ({e})"),
        };
        let result = store
            .results
            .get(id)
            .and_then(|rows| rows.first())
            .map(|r| format!("{} written at {:.3} s", r.value, r.written - t0))
            .unwrap_or_else(|| "no result".to_owned());
        println!(
            "{id}: {:?} {} {:?}, sent at {:.3} s, answered {status} at {:.3} s; {result}",
            s.kind,
            s.class.rsplit("::").next().unwrap_or(s.class),
            s.params,
            secs_since_epoch(s.sent_at) - t0,
            secs_since_epoch(s.replied_at) - t0,
        );
        if let Some(console) = &s.console {
            let lines = store
                .consoles
                .get(&console.set_key)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let start = secs_since_epoch(s.console_start) - t0;
            let show = |l: &Value| {
                format!(
                    "{:.3} s {}",
                    start + l.get("t").and_then(Value::as_f64).unwrap_or_default(),
                    l.get("s").and_then(Value::as_str).unwrap_or_default()
                )
            };
            println!("    console: {} line(s)", lines.len());
            let n = lines.len();
            for (i, l) in lines.iter().enumerate() {
                if i < 3 || i + 4 >= n {
                    println!("      {}", show(l));
                } else if i == 3 {
                    println!("      ...");
                }
            }
        }
    }
}

/// Waits until every accepted dispatch has a result (or `within` passes); returns when the
/// last one arrived.
async fn wait_for_results(db: &TestDb, ids: &[String], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        let rows = db
            .client()
            .query(
                &format!("SELECT value FROM {SCHEMA}.\"set\" WHERE key = $1"),
                &[&RESULT_KEY],
            )
            .await
            .map_err(|e| format!("polling results: {e}"))?;
        let have: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing = want.iter().filter(|id| !have.contains(**id)).count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{missing} accepted dispatch(es) still have no result after {} s",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn soak(args: &Args) -> Result<bool, String> {
    let mut db = TestDb::try_new().await?;
    println!(
        "soak: {} s at {} dispatch(es)/s, seed {}, store {}, PostgreSQL: {}",
        args.secs,
        args.rate,
        args.seed,
        if args.local_store {
            "local"
        } else {
            "x-job-storage"
        },
        db.origin()
    );
    let mut options = AgentOptions::new();
    if args.local_store {
        options = options.store(db.connection_string(), SCHEMA, EXPIRE_DAYS as f64);
    }
    let service = TestService::start_with(options).await;
    let server_id = service.agent().server_id().to_owned();
    let mut center = service.center();
    if !args.local_store {
        center = center.with_storage(&db.storage().expire_at_days(EXPIRE_DAYS));
    }

    let started = Instant::now();
    let started_at = SystemTime::now();
    let driver = tokio::spawn(drive(center, args.secs, args.rate, args.seed));
    tokio::time::sleep(Duration::from_secs(args.secs) / 2).await;
    let restart_at = started.elapsed();
    let down = db.restart(OUTAGE).await?;
    println!(
        "PostgreSQL restarted at {:.1} s: down {:.1} s (fast shutdown, {} s pause, start)",
        restart_at.as_secs_f64(),
        down.as_secs_f64(),
        OUTAGE.as_secs()
    );
    let handles = driver
        .await
        .map_err(|e| format!("the driver failed: {e}"))?;
    let mut all = Vec::with_capacity(handles.len());
    for h in handles {
        all.push(
            h.await
                .map_err(|e| format!("a dispatch task failed: {e}"))?,
        );
    }
    let driven = started.elapsed();
    let accepted: Vec<String> = all
        .iter()
        .filter(|s| s.kind != Kind::Detail && s.accepted())
        .map(|s| s.id.clone())
        .collect();
    println!(
        "dispatching done after {:.1} s; waiting for {} result(s)",
        driven.as_secs_f64(),
        accepted.len()
    );
    let waited = wait_for_results(&db, &accepted, Duration::from_secs(180)).await;
    let all_in = started.elapsed();
    // Give a duplicate result, had there been one, the time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let store = read_store(&db).await?;
    let mut fig = Figures::default();
    let mut failures = verify(&all, &store, &server_id, started_at, &mut fig);
    if let Err(e) = waited {
        failures.insert(0, e);
    }
    let shutdown = service.shutdown(Duration::from_secs(30)).await;

    let lines = store.console_rows;
    let refused: Vec<String> = fig
        .refused_by_status
        .iter()
        .map(|(status, n)| format!("{n}×{status}"))
        .collect();
    let mut lat = fig.end_to_result_ms.clone();
    let med = median(&mut lat);
    let max = lat.last().copied().unwrap_or_default();
    let errors = failures.len() as u64;
    println!("---- soak figures ----");
    println!(
        "duration:          {:.1} s dispatching, {:.1} s until the last result",
        driven.as_secs_f64(),
        all_in.as_secs_f64()
    );
    println!(
        "dispatches:        {} ({} runs, {} stops, {} details); accepted {} runs, {} stops; refused {}",
        all.len(),
        fig.runs,
        fig.stops,
        fig.details,
        fig.runs_accepted,
        fig.stops_accepted,
        if refused.is_empty() {
            "none".to_owned()
        } else {
            refused.join(", ")
        }
    );
    for (reason, (n, first, last)) in &fig.refusal_reasons {
        println!("  {n:>4}× at {first:>5.1}..{last:>5.1} s  {reason}");
    }
    println!(
        "stops:             {} sent, {} accepted; {} runs ended stopped ({} stop line(s) after the run's end line)",
        fig.stops, fig.stops_accepted, fig.stopped_runs, fig.late_stop_lines
    );
    println!(
        "runs:              {} accepted, {} failed on request (fail/panic; {} panics caught), {} heavy (5,000+ lines)",
        fig.runs_accepted,
        fig.failed_runs,
        REQUESTED_PANICS.load(Ordering::Relaxed),
        fig.heavy_runs
    );
    println!(
        "lines written:     {lines} console rows ({:.0} lines/s over {:.1} s)",
        lines as f64 / all_in.as_secs_f64().max(0.001),
        all_in.as_secs_f64()
    );
    println!(
        "results:           {} (expected {}: one per accepted run and stop)",
        fig.results,
        accepted.len()
    );
    println!(
        "job end → result:  median {med:.0} ms, max {max:.0} ms (over {} runs)",
        lat.len()
    );
    println!(
        "PostgreSQL:        restarted once at {:.1} s, down {:.1} s",
        restart_at.as_secs_f64(),
        down.as_secs_f64()
    );
    println!(
        "agent log:         {} warning(s), {} error(s); graceful shutdown {:.2} s",
        WARNINGS.load(Ordering::Relaxed),
        LOG_ERRORS.load(Ordering::Relaxed),
        shutdown.as_secs_f64()
    );
    println!(
        "errors:            {errors} ({} without an answer)",
        fig.transport_errors
    );
    for f in failures.iter().take(40) {
        println!("  - {f}");
    }
    if failures.len() > 40 {
        println!("  ... and {} more", failures.len() - 40);
    }
    if !failures.is_empty() {
        explain(&failures, &all, &store, started_at);
    }
    let pass = failures.is_empty();
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("soak: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The soak restarts its server: never one it did not start.
    if std::env::var_os(DATABASE_URL_VAR).is_some_and(|v| !v.is_empty()) {
        eprintln!(
            "note: {DATABASE_URL_VAR} is set, but the soak restarts PostgreSQL, so it always uses a \
             throwaway server; running again without the variable"
        );
        let status = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env_remove(DATABASE_URL_VAR)
                .status()
        });
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
            Err(e) => {
                eprintln!("soak: cannot run itself again: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    quiet_requested_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(soak(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            println!("FAIL");
            ExitCode::FAILURE
        }
    }
}
