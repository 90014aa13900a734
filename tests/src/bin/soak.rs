//! The soak run: the example service under steady load for a bounded time, with faults in
//! the middle, then a check of everything it wrote. Not part of CI.
//!
//! ```text
//! cargo run --release -p tests --bin soak -- [--secs 120] [--rate 4] [--seed N] [--store header|local] [--replicas N]
//! cargo run --release -p tests --bin soak -- --secs 600 --replicas 3    # the 10-minute run
//! ```
//!
//! It starts its own throwaway PostgreSQL server (through `tests::pg`, always: when
//! `JOBAGENT_TEST_DATABASE_URL` is set the soak runs itself again without it, since it
//! restarts the server). For `--secs` it dispatches `--rate` requests a second, as the center
//! builds them: runs of the transient and the singleton demo jobs (`lines`, `sleep_ms`,
//! sometimes `fail` or `panic`; some heavy runs of 5,000 to 20,000 lines), stops of either
//! class, and details.
//!
//! **In-process** (the default, `--replicas 0`): one example service in this process; halfway
//! through it stops the server for 3 s and starts it again. `--store header` (the default)
//! sends the store in `x-job-storage` as a center does; `--store local` configures it on the
//! agent instead. `RUST_LOG` filters the agent's log (default: errors only; warnings are
//! counted either way).
//!
//! **Replicas** (`--replicas N`, 1 to 5): N example-agent processes (built with `cargo build
//! -p example-agent` into this target directory) named `soak-r0`, `soak-r1`, ..., sharing the
//! soak's database as their own store (`JOBAGENT_STORE`, one `JOBAGENT_AGENT_ID`), each through
//! its own [`tests::proxy::Proxy`]. Some runs last longer (8% of transient runs 10 to 30 s, a
//! quarter of singleton runs 8 to 20 s) so that faults find runs in flight. The center spreads
//! dispatches round-robin over the replicas in rotation (a SIGKILLed one is out of it until
//! it is back, as behind a load balancer's health check). Faults, on a schedule printed at start (one about every 40 s, at least
//! three): a replica's store black-holed for 12 s (connections stay open, nothing is
//! forwarded), a replica SIGKILLed and started again 4 s later under the same instance name
//! and port, alternating over the replicas, and the server restart in the middle. Each
//! process's log goes to `/tmp/soak-<pid>/<instance>.<n>.log` (`REPLICA_LOG` sets its filter,
//! default `info`); warnings and errors are counted and grouped by message.
//!
//! Then it waits for every result (at most 180 s, then 15 s more with replicas for a late
//! duplicate to show) and checks:
//!
//! - every accepted dispatch (200) has exactly one result (hash `_agent_result_<id>` holds one
//!   field, and set `_agent_result_` the id) with the right `Action`, `RunId` and `R`;
//! - every run's console is complete and ordered: strictly increasing `t`, the lifecycle
//!   lines, `line 1` .. `line n` in order (all of them unless the run was stopped);
//! - a run ends stopped only if a stop of its class was accepted while it ran;
//! - no refused dispatch (500, 501) has a result;
//! - with replicas: a run reported by another process (`agent replica lost`, `agent restarted
//!   before the job finished`) was on a replica that was SIGKILLed or black-holed while it
//!   ran; its console is in order up to where it stops (a killed run's end is lost with its
//!   buffer); a singleton cancelled because it could not renew its claim was on a black-holed
//!   replica; a dispatch left without an answer by a SIGKILL has at most one result; every
//!   answer carries the one `agentServerId`; a stop reported failed was one whose replica was
//!   killed or cut off before its result (reported lost, `Action` stop), or whose run's
//!   replica was before it confirmed the stop (`not every replica confirmed the stop`).
//!
//! It prints the figures (accepted dispatches, results, lines checked, the time from each
//! SIGKILL and black hole to the result of each run it lost, the worst of them), a summary
//! line, and `PASS` or `FAIL`, naming and explaining (store contents, console, the replicas'
//! log lines) every dispatch that failed; the exit status is non-zero on `FAIL`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobagent::{AgentOptions, DEFAULT_CONSOLE_PREFIX};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tests::center::{Center, ConsoleInfo, Reply};
use tests::fleet::Member;
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

/// How long a replica's store stays black-holed.
const BLACK_HOLE: Duration = Duration::from_secs(12);
/// How long a SIGKILLed replica stays down before it is started again.
const KILLED_FOR: Duration = Duration::from_secs(4);
/// The `agentServerId` every replica presents (replicas behind one URL must agree).
const FLEET_AGENT_ID: &str = "soak-agent";
/// The result texts of runs reported by another process than their own.
const LOST_REPLICA: &str = "agent replica lost";
const LOST_RESTART: &str = "agent restarted before the job finished";
/// The console warnings of a singleton cancelled because it could not keep its claim.
const CLAIM_CUT: [&str; 2] = [
    "this run could not renew its cluster-wide claim",
    "this run lost its cluster-wide claim",
];

const USAGE: &str =
    "usage: soak [--secs N] [--rate R] [--seed N] [--store header|local] [--replicas N]
  --secs N       how long to dispatch, in seconds (default 120)
  --rate R       dispatches per second (default 4)
  --seed N       the random seed (default: a random one, printed)
  --store S      header: the store goes in x-job-storage (default); local: configured on the
                 agent (in-process only; replicas always have their own store)
  --replicas N   run N example-agent processes (1 to 5) sharing the store, with black-holes,
                 SIGKILLs and restarts; default 0: one service in-process";

struct Args {
    secs: u64,
    rate: f64,
    seed: u64,
    local_store: bool,
    replicas: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        secs: 120,
        rate: 4.0,
        seed: rand::random(),
        local_store: false,
        replicas: 0,
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
            "--replicas" => {
                let v = value("--replicas")?;
                args.replicas = v
                    .parse()
                    .ok()
                    .filter(|n| (0..=5).contains(n))
                    .ok_or_else(|| format!("--replicas {v}: give 0 (in-process) to 5"))?;
            }
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

/// Where the center's dispatches go: the one in-process service, or the replicas behind one
/// URL, spread round-robin over those that run (a load balancer's health check takes a
/// killed replica out until it is back).
#[derive(Clone)]
enum Router {
    One(Center),
    Fleet {
        /// Each replica's center stand-in, and whether it is in the rotation.
        members: Arc<Mutex<Vec<(Center, bool)>>>,
        next: Arc<AtomicUsize>,
    },
}

impl Router {
    fn pick(&self) -> (Option<usize>, Center) {
        match self {
            Router::One(c) => (None, c.clone()),
            Router::Fleet { members, next } => {
                let members = members.lock().unwrap_or_else(|e| e.into_inner());
                let n = members.len();
                let start = next.fetch_add(1, Ordering::Relaxed);
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|i| members[*i].1)
                    .unwrap_or(start % n);
                (Some(i), members[i].0.clone())
            }
        }
    }

    /// Takes replica `i` out of the rotation, or puts it back with `center`.
    fn set(&self, i: usize, center: Option<Center>) {
        if let Router::Fleet { members, .. } = self {
            let mut members = members.lock().unwrap_or_else(|e| e.into_inner());
            match center {
                Some(c) => members[i] = (c, true),
                None => members[i].1 = false,
            }
        }
    }
}

/// One dispatch as sent, and what the agent answered.
struct Sent {
    id: String,
    /// The replica it was sent to (`None`: the in-process service).
    replica: Option<usize>,
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

/// Chooses the next dispatch. `heavy` forces a long run. `long` (with replicas) makes some
/// runs last 8 to 30 s, so that faults find runs in flight: 8% of transient runs, 25% of
/// singleton runs.
fn plan(
    rng: &mut StdRng,
    heavy: Option<(u64, u64)>,
    long: bool,
) -> (Kind, &'static str, Option<Params>) {
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
        } else if long && r >= 0.92 {
            (rng.random_range(50..500), rng.random_range(10_000..=30_000))
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
        let sleep_ms = if long && rng.random::<f64>() < 0.25 {
            rng.random_range(8_000..=20_000)
        } else {
            rng.random_range(300..=5_000)
        };
        let p = Params {
            lines: rng.random_range(0..500),
            sleep_ms,
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
async fn drive(router: Router, secs: u64, rate: f64, seed: u64) -> Vec<JoinHandle<Sent>> {
    let long = matches!(router, Router::Fleet { .. });
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
        let (kind, class, params) = plan(&mut rng, heavy, long);
        next_id += 1;
        let id = next_id.to_string();
        let console_start = SystemTime::now();
        let console = (kind == Kind::Run).then(|| ConsoleInfo::for_job_at(&id, console_start));
        let (replica, center) = router.pick();
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
                replica,
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
    /// The run was cancelled because it could not keep its singleton claim.
    claim_cut: bool,
    problems: Vec<String>,
}

/// Checks one run's console. `cut_short`: the run's process was killed (or its run reported
/// lost), so the console may stop anywhere, as long as what is there is in order.
fn check_console(lines: &[Value], class: &str, p: &Params, cut_short: bool) -> ConsoleCheck {
    let prefix = DEFAULT_CONSOLE_PREFIX;
    let mut problems = Vec::new();
    let mut claim_cut = 0usize;
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
        } else if CLAIM_CUT.iter().any(|w| text.starts_with(w)) {
            claim_cut += 1;
            "#ffff00"
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
    if starts != 1 && !(cut_short && lines.is_empty()) {
        problems.push(format!("{starts} start lines"));
    }
    if fencing > want_fencing || (fencing != want_fencing && !(cut_short && end.is_none())) {
        problems.push(format!(
            "{fencing} fencing-token lines, expected {want_fencing}"
        ));
    }
    if claim_cut > 1 || (claim_cut == 1 && class != SINGLETON) {
        problems.push(format!("{claim_cut} claim-cut warnings"));
    }
    match end {
        None if cut_short => {
            if body > p.lines {
                problems.push(format!("{body} body lines of {}", p.lines));
            }
        }
        None => problems.push("no end line".to_owned()),
        Some(End::Stopped) => {
            if body > p.lines {
                problems.push(format!("{body} body lines of {}", p.lines));
            }
        }
        Some(End::Failed) if claim_cut == 1 => {
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
    let cut = cut_short && end.is_none();
    if failed != usize::from(end == Some(End::Failed)) && !(cut && failed == 1) {
        problems.push(format!("{failed} `job failed` lines for an end {end:?}"));
    }
    let expected =
        starts + fencing + body as usize + stops + failed + claim_cut + usize::from(end.is_some());
    if lines.len() != expected {
        problems.push(format!(
            "{} lines, expected {expected} (1 start, {fencing} fencing, {body} body, {stops} stop, {claim_cut} claim-cut, {failed} failed, 1 end)",
            lines.len()
        ));
    }
    ConsoleCheck {
        end,
        end_t,
        late_stop_lines,
        claim_cut: claim_cut > 0,
        problems,
    }
}

/// What was done to the replicas, for the checks and the figures.
#[derive(Default)]
struct FaultLog {
    /// (replica, SIGKILL sent, started again)
    kills: Vec<(usize, SystemTime, SystemTime)>,
    /// (replica, black-holed, restored)
    holes: Vec<(usize, SystemTime, SystemTime)>,
}

impl FaultLog {
    /// The SIGKILL of `replica` that cut off a dispatch sent at `from`, answered (or not)
    /// by `to`.
    fn kill_within(&self, replica: Option<usize>, from: f64, to: f64) -> Option<f64> {
        let r = replica?;
        self.kills
            .iter()
            .map(|(i, at, _)| (*i, secs_since_epoch(*at)))
            .find(|(i, at)| *i == r && *at + 0.05 >= from && *at <= to + 0.05)
            .map(|(_, at)| at)
    }

    /// The black hole of `replica` that overlapped `from..to`.
    fn hole_within(&self, replica: Option<usize>, from: f64, to: f64) -> Option<f64> {
        let r = replica?;
        self.holes
            .iter()
            .map(|(i, a, b)| (*i, secs_since_epoch(*a), secs_since_epoch(*b)))
            .find(|(i, a, b)| *i == r && *a <= to + 0.05 && *b + 0.05 >= from)
            .map(|(_, a, _)| a)
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
    /// Stops reported failed because their replica, or their run's, was killed or cut off.
    stops_failed_by_fault: u64,
    failed_runs: u64,
    late_stop_lines: u64,
    heavy_runs: u64,
    lines_expected_min: u64,
    end_to_result_ms: Vec<f64>,
    /// Console lines of accepted runs checked, and those of consoles cut short.
    lines_checked: u64,
    lines_checked_cut: u64,
    /// Dispatches without an answer because their replica was SIGKILLed meanwhile, and how
    /// many of those got a result all the same.
    cut_by_kill: u64,
    cut_by_kill_results: u64,
    /// Runs reported by another process after a SIGKILL: (job id, SIGKILL → result, by
    /// the restarted process?).
    lost_to_kill: Vec<(String, f64, bool)>,
    /// Runs reported lost after a black hole: (job id, black hole → result).
    lost_to_hole: Vec<(String, f64)>,
    /// Singleton runs cancelled because their claim could not be renewed.
    claim_cut_runs: u64,
    /// Accepted dispatches without a result, with more than one; refused ones with one.
    missing_results: u64,
    duplicate_results: u64,
    refused_with_result: u64,
    /// Runs whose console is incomplete or out of order.
    bad_consoles: u64,
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
    faults: &FaultLog,
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
                let (from, to) = (secs_since_epoch(s.sent_at), secs_since_epoch(s.replied_at));
                if faults.kill_within(s.replica, from, to).is_some() {
                    // The center fails a dispatch it got no answer for; the agent may have
                    // recorded the run before it died, and then reports it once.
                    fig.cut_by_kill += 1;
                    let rows = store.results.get(&s.id).map_or(0, Vec::len);
                    fig.cut_by_kill_results += u64::from(rows > 0);
                    if rows > 1 {
                        failures.push(format!(
                            "{:?} {} (no answer: its replica was killed) has {rows} result fields",
                            s.kind, s.id
                        ));
                    }
                    continue;
                }
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
                fig.refused_with_result += 1;
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
            if rows.is_empty() {
                fig.missing_results += 1;
            } else if rows.len() > 1 {
                fig.duplicate_results += 1;
            }
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
            let run_id = get("RunId");
            if get("R") != "ok" {
                // A stop fails for a fault only: its own replica killed or cut off before its
                // result (reported lost, as a run would be), or the replica of the run it
                // stops killed or cut off before confirming it.
                let e = get("E");
                let (from, to) = (secs_since_epoch(s.sent_at), row.written);
                let fault = |replica| {
                    faults
                        .kill_within(replica, from, to)
                        .or_else(|| faults.hole_within(replica, from, to))
                };
                let its_run = all
                    .iter()
                    .find(|r| r.kind == Kind::Run && r.id == run_id)
                    .and_then(|r| r.replica);
                let lost = e.starts_with(LOST_REPLICA) || e.starts_with(LOST_RESTART);
                let unconfirmed = e.contains("not every replica confirmed the stop");
                if (lost && fault(s.replica).is_some()) || (unconfirmed && fault(its_run).is_some())
                {
                    fig.stops_failed_by_fault += 1;
                } else {
                    failures.push(format!("stop {} reported {}", s.id, row.value));
                }
            }
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
        let r = get("R");
        let e = get("E");
        let lost = e.starts_with(LOST_REPLICA) || e.starts_with(LOST_RESTART);
        let (from, to) = (secs_since_epoch(s.sent_at), row.written);
        let killed = faults.kill_within(s.replica, from, to);
        let holed = faults.hole_within(s.replica, from, to);
        let check = check_console(lines, s.class, p, lost || killed.is_some());
        fig.late_stop_lines += check.late_stop_lines;
        fig.lines_checked += lines.len() as u64;
        if lost || check.end.is_none() {
            fig.lines_checked_cut += lines.len() as u64;
        }
        fig.claim_cut_runs += u64::from(check.claim_cut);
        fig.bad_consoles += u64::from(!check.problems.is_empty());
        for problem in check.problems.iter().take(5) {
            failures.push(format!("console of run {} ({:?}): {problem}", s.id, p));
        }
        if lost {
            // Reported by another process: its replica must have been killed or cut off
            // while it ran.
            if r != "err" {
                failures.push(format!("run {} reported lost with {}", s.id, row.value));
            }
            if let Some(at) = killed {
                fig.lost_to_kill.push((
                    s.id.clone(),
                    row.written - at,
                    e.starts_with(LOST_RESTART),
                ));
            } else if let Some(at) = holed {
                fig.lost_to_hole.push((s.id.clone(), row.written - at));
            } else {
                failures.push(format!(
                    "run {} was reported lost, but its replica ({}) was neither killed nor cut off while it ran: {}",
                    s.id,
                    s.replica.map_or("in-process".to_owned(), |r| r.to_string()),
                    row.value
                ));
            }
            continue;
        }
        if check.claim_cut && check.end == Some(End::Failed) {
            // Cancelled by its own replica before its claim could lapse.
            if r != "err" || holed.is_none() {
                failures.push(format!(
                    "run {} was cancelled for its claim (cut off: {}): {}",
                    s.id,
                    holed.is_some(),
                    row.value
                ));
            }
            continue;
        }
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
fn explain(
    failures: &[String],
    all: &[Sent],
    store: &Store,
    start: SystemTime,
    names: &[String],
    logs: &[(String, String)],
) {
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
        let to = s
            .replica
            .and_then(|r| names.get(r))
            .map(|n| format!(" to {n}"))
            .unwrap_or_default();
        println!(
            "{id}: {:?}{to} {} {:?}, sent at {:.3} s, answered {status} at {:.3} s; {result}",
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
        // What the replicas logged about it (their logs are kept, see above).
        for (name, text) in logs {
            for line in text.lines().filter(|l| l.contains(id)).take(8) {
                println!("    {name}: {line}");
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

/// A fault of the schedule.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The replica's store black-holed for [`BLACK_HOLE`].
    BlackHole(usize),
    /// The replica SIGKILLed, and started again [`KILLED_FOR`] later.
    Kill(usize),
    /// PostgreSQL stopped for [`OUTAGE`] and started again.
    ServerRestart,
}

/// When each fault happens. In-process: the server restart halfway. With replicas: one
/// fault every 40 s or so (at least three), the server restart in the middle, black holes
/// and kills alternating over the replicas around it.
fn schedule(secs: u64, replicas: usize) -> Vec<(Duration, Fault)> {
    let total = Duration::from_secs(secs);
    if replicas == 0 {
        return vec![(total / 2, Fault::ServerRestart)];
    }
    let k = (secs / 40).max(3) as u32;
    let gap = total / (k + 1);
    let mut n = 0usize;
    (0..k)
        .map(|j| {
            let fault = if j == k / 2 {
                Fault::ServerRestart
            } else {
                let r = n % replicas;
                n += 1;
                if n % 2 == 1 {
                    Fault::BlackHole(r)
                } else {
                    Fault::Kill(r)
                }
            };
            (gap * (j + 1), fault)
        })
        .collect()
}

fn describe(fault: Fault, names: &[String]) -> String {
    match fault {
        Fault::BlackHole(r) => format!(
            "black-hole {}'s store for {} s",
            names[r],
            BLACK_HOLE.as_secs()
        ),
        Fault::Kill(r) => format!(
            "SIGKILL {}, start it again (same name) {} s later",
            names[r],
            KILLED_FOR.as_secs()
        ),
        Fault::ServerRestart => format!(
            "restart PostgreSQL (fast shutdown, {} s down)",
            OUTAGE.as_secs()
        ),
    }
}

/// The replicas behind one URL.
struct Fleet {
    members: Vec<Member>,
    log_dir: PathBuf,
}

/// What the soak drives.
enum Target {
    InProcess(TestService),
    Fleet(Fleet),
}

/// Starts `n` replicas of the example service on `db`'s store.
async fn start_fleet(db: &TestDb, n: usize) -> Result<Fleet, String> {
    let bin = tokio::task::spawn_blocking(|| tests::cargo::service_bin("example-agent"))
        .await
        .map_err(|e| format!("building example-agent panicked: {e}"))??;
    let log_dir = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let env = [
        ("JOBAGENT_STORE_SCHEMA", SCHEMA.to_owned()),
        ("JOBAGENT_STORE_EXPIRE_DAYS", EXPIRE_DAYS.to_string()),
        ("JOBAGENT_AGENT_ID", FLEET_AGENT_ID.to_owned()),
    ];
    let mut members = Vec::new();
    for i in 0..n {
        members.push(Member::start(&bin, &format!("soak-r{i}"), db, &env, &log_dir).await?);
    }
    Ok(Fleet { members, log_dir })
}

/// `(WARN lines, ERROR lines)` of a log.
fn count_levels(text: &str) -> (u64, u64) {
    text.lines().fold((0, 0), |(w, e), l| {
        (
            w + u64::from(l.contains(" WARN ")),
            e + u64::from(l.contains(" ERROR ")),
        )
    })
}

/// The replicas' warnings and errors grouped by message (the text after the target, before
/// the fields), most frequent first.
fn log_messages(logs: &[(String, String)]) -> Vec<(u64, String)> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (_, text) in logs {
        for line in text.lines() {
            let Some(level) = [" WARN ", " ERROR "].iter().find(|l| line.contains(**l)) else {
                continue;
            };
            let rest = line.split_once(level).map(|(_, r)| r).unwrap_or(line);
            // `target: message key=value ...`
            let rest = rest.split_once(": ").map(|(_, r)| r).unwrap_or(rest);
            let cut = [
                ",JobId:", " job_id=", " class=", " store=", " error=", " status=",
            ]
            .iter()
            .filter_map(|f| rest.find(f))
            .min()
            .unwrap_or(rest.len());
            let message: String = rest[..cut].chars().take(150).collect();
            *counts
                .entry(format!("{}{message}", level.trim_start()))
                .or_default() += 1;
        }
    }
    let mut v: Vec<(u64, String)> = counts.into_iter().map(|(m, n)| (n, m)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v
}

fn worst_and_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    let med = median(&mut v);
    (v.last().copied().unwrap_or_default(), med)
}

async fn soak(args: &Args) -> Result<bool, String> {
    let mut db = TestDb::try_new().await?;
    let store_mode = if args.replicas > 0 {
        "the agents' own (JOBAGENT_STORE, each replica through its own proxy)"
    } else if args.local_store {
        "local"
    } else {
        "x-job-storage"
    };
    println!(
        "soak: {} s at {} dispatch(es)/s, seed {}, {}, store {store_mode}, PostgreSQL: {}",
        args.secs,
        args.rate,
        args.seed,
        if args.replicas > 0 {
            format!("{} replica process(es)", args.replicas)
        } else {
            "in-process service".to_owned()
        },
        db.origin()
    );
    // The center's Hangfire server id (one center, whichever replica a dispatch goes to).
    let center_sid = Center::new("http://127.0.0.1/jobagent")
        .server_id()
        .to_owned();
    let (target, router, server_id, names) = if args.replicas > 0 {
        let fleet = start_fleet(&db, args.replicas).await?;
        let members: Vec<(Center, bool)> = fleet
            .members
            .iter()
            .map(|m| {
                let c = Center::new(m.url()).with_server_id(center_sid.clone());
                (c, true)
            })
            .collect();
        let names: Vec<String> = fleet.members.iter().map(|m| m.name().to_owned()).collect();
        for m in &fleet.members {
            println!(
                "replica {}: pid {}, {}, store through proxy port {}",
                m.name(),
                m.pid().unwrap_or_default(),
                m.url(),
                m.proxy().port()
            );
        }
        println!("replica logs: {}", fleet.log_dir.display());
        let router = Router::Fleet {
            members: Arc::new(Mutex::new(members)),
            next: Arc::default(),
        };
        (
            Target::Fleet(fleet),
            router,
            FLEET_AGENT_ID.to_owned(),
            names,
        )
    } else {
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
        (
            Target::InProcess(service),
            Router::One(center),
            server_id,
            Vec::new(),
        )
    };
    let plan = schedule(args.secs, args.replicas);
    println!("fault schedule ({} fault(s)):", plan.len());
    for (at, fault) in &plan {
        println!(
            "  {:>6.1} s  {}",
            at.as_secs_f64(),
            describe(*fault, &names)
        );
    }

    let started = Instant::now();
    let started_at = SystemTime::now();
    let mut target = target;
    let driver = tokio::spawn(drive(router.clone(), args.secs, args.rate, args.seed));
    let mut faults = FaultLog::default();
    let mut restarts: Vec<(f64, f64)> = Vec::new();
    for (at, fault) in &plan {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + *at)).await;
        let now = started.elapsed().as_secs_f64();
        match (*fault, &mut target) {
            (Fault::ServerRestart, _) => {
                let down = db.restart(OUTAGE).await?;
                println!(
                    "{now:>6.1} s  PostgreSQL restarted: down {:.1} s (fast shutdown, {} s pause, start)",
                    down.as_secs_f64(),
                    OUTAGE.as_secs()
                );
                restarts.push((now, down.as_secs_f64()));
            }
            (Fault::BlackHole(r), Target::Fleet(fleet)) => {
                let from = SystemTime::now();
                fleet.members[r].proxy().black_hole();
                tokio::time::sleep(BLACK_HOLE).await;
                fleet.members[r].proxy().restore();
                let to = SystemTime::now();
                println!(
                    "{now:>6.1} s  {}'s store black-holed for {:.1} s",
                    names[r],
                    to.duration_since(from).unwrap_or_default().as_secs_f64()
                );
                faults.holes.push((r, from, to));
            }
            (Fault::Kill(r), Target::Fleet(fleet)) => {
                let member = &mut fleet.members[r];
                let pid = member.pid().unwrap_or_default();
                router.set(r, None);
                let killed = member.kill();
                tokio::time::sleep(KILLED_FOR).await;
                member.restart().await?;
                let back = SystemTime::now();
                let center = Center::new(member.url()).with_server_id(center_sid.clone());
                router.set(r, Some(center));
                println!(
                    "{now:>6.1} s  {} (pid {pid}) SIGKILLed; started again after {:.1} s as pid {}",
                    names[r],
                    back.duration_since(killed)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    member.pid().unwrap_or_default()
                );
                faults.kills.push((r, killed, back));
            }
            (_, Target::InProcess(_)) => {}
        }
    }
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
    // Give a duplicate result, had there been one, the time to show up: with replicas, the
    // longest way is a cut-off replica's own late write, or a survivor's report (about 11 s).
    let settle = if args.replicas > 0 { 15 } else { 3 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let store = read_store(&db).await?;
    let mut fig = Figures::default();
    let mut failures = verify(&all, &store, &server_id, started_at, &faults, &mut fig);
    if let Err(e) = waited {
        failures.insert(0, e);
    }
    let (shutdown, fleet_logs) = match target {
        Target::InProcess(service) => (service.shutdown(Duration::from_secs(30)).await, Vec::new()),
        Target::Fleet(mut fleet) => {
            let mut longest = Duration::ZERO;
            for m in &mut fleet.members {
                longest = longest.max(m.terminate(Duration::from_secs(30)));
            }
            let logs: Vec<(String, String)> = fleet
                .members
                .iter()
                .map(|m| (m.name().to_owned(), m.log_text()))
                .collect();
            (longest, logs)
        }
    };

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
    if fig.cut_by_kill > 0 {
        println!(
            "  {:>4}× no answer: the replica was SIGKILLed while answering ({} of them reported all the same, once)",
            fig.cut_by_kill, fig.cut_by_kill_results
        );
    }
    println!(
        "stops:             {} sent, {} accepted; {} runs ended stopped ({} stop line(s) after the run's end line); {} failed by a fault (their replica, or their run's, killed or cut off)",
        fig.stops,
        fig.stops_accepted,
        fig.stopped_runs,
        fig.late_stop_lines,
        fig.stops_failed_by_fault
    );
    println!(
        "runs:              {} accepted, {} failed on request (fail/panic{}), {} heavy (5,000+ lines)",
        fig.runs_accepted,
        fig.failed_runs,
        if args.replicas > 0 {
            String::new()
        } else {
            format!(
                "; {} panics caught",
                REQUESTED_PANICS.load(Ordering::Relaxed)
            )
        },
        fig.heavy_runs
    );
    println!(
        "lines written:     {lines} console rows ({:.0} lines/s over {:.1} s)",
        lines as f64 / all_in.as_secs_f64().max(0.001),
        all_in.as_secs_f64()
    );
    println!(
        "lines checked:     {} console lines of {} accepted runs, in order ({} of them in consoles cut short by a kill or a lost run)",
        fig.lines_checked, fig.runs_accepted, fig.lines_checked_cut
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
    if args.replicas > 0 {
        let kill_lat: Vec<f64> = fig.lost_to_kill.iter().map(|l| l.1).collect();
        let (kill_worst, kill_med) = worst_and_median(&kill_lat);
        let by_restart = fig.lost_to_kill.iter().filter(|l| l.2).count();
        let worst_id = fig
            .lost_to_kill
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|l| l.0.as_str())
            .unwrap_or("-");
        println!(
            "lost to SIGKILL:   {} run(s) over {} kill(s); SIGKILL → result worst {kill_worst:.1} s (job {worst_id}), median {kill_med:.1} s; {by_restart} reported by the restarted process, {} by a survivor",
            kill_lat.len(),
            faults.kills.len(),
            kill_lat.len() - by_restart
        );
        let hole_lat: Vec<f64> = fig.lost_to_hole.iter().map(|l| l.1).collect();
        let (hole_worst, hole_med) = worst_and_median(&hole_lat);
        println!(
            "lost to black hole: {} run(s) over {} black hole(s) of {} s; black hole → result worst {hole_worst:.1} s, median {hole_med:.1} s; {} singleton run(s) cancelled for their claim",
            hole_lat.len(),
            faults.holes.len(),
            BLACK_HOLE.as_secs(),
            fig.claim_cut_runs
        );
    }
    for (at, down) in &restarts {
        println!("PostgreSQL:        restarted at {at:.1} s, down {down:.1} s");
    }
    if args.replicas > 0 {
        let (w, e) = fleet_logs
            .iter()
            .map(|(_, text)| count_levels(text))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        println!(
            "replica logs:      {w} warning(s), {e} error(s); SIGTERM shutdown of all {:.2} s (longest)",
            shutdown.as_secs_f64()
        );
        for (n, message) in log_messages(&fleet_logs).iter().take(12) {
            println!("  {n:>4}× {message}");
        }
    } else {
        println!(
            "agent log:         {} warning(s), {} error(s); graceful shutdown {:.2} s",
            WARNINGS.load(Ordering::Relaxed),
            LOG_ERRORS.load(Ordering::Relaxed),
            shutdown.as_secs_f64()
        );
    }
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
        explain(&failures, &all, &store, started_at, &names, &fleet_logs);
    }
    let pass = failures.is_empty();
    let worst_kill = fig
        .lost_to_kill
        .iter()
        .map(|l| l.1)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    println!(
        "summary: {} accepted dispatches, {} results (exactly once each: {}), {} lines checked (complete and in order: {}), worst SIGKILL → result of a lost run: {}",
        accepted.len(),
        fig.results,
        if fig.missing_results + fig.duplicate_results + fig.refused_with_result == 0 {
            "yes".to_owned()
        } else {
            format!(
                "NO: {} without, {} with several, {} refused with one",
                fig.missing_results, fig.duplicate_results, fig.refused_with_result
            )
        },
        fig.lines_checked,
        if fig.bad_consoles == 0 {
            "yes".to_owned()
        } else {
            format!("NO: {} console(s) wrong", fig.bad_consoles)
        },
        worst_kill.map_or("none lost".to_owned(), |w| format!("{w:.1} s"))
    );
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
