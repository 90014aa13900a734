//! A store that black-holes in the middle of a write (issue 29): every open connection goes
//! silent (no RST, no FIN) and new ones hang; a few seconds later new connections work
//! again, while the links that were open stay dead for good (a partition outlived by the
//! links it broke). Each round places the hole at a random moment of a busy console (2,000
//! lines over 4 s, some rounds with progress lines and long lines kept as references), so
//! over the rounds it falls before a checkout, during a statement, a `COPY`, a `MULTI`, a
//! commit, and during a retry. Every round: once the store is back, all lines land, in
//! order, the run has exactly one result within [`AFTER_RETURN`], and the agent's pending
//! writes drain to zero (its metrics; at the end, its shutdown log).
//!
//! On PostgreSQL, MariaDB and Redis directly, and through a `jobagent-relay` (the store behind
//! the relay black-holed, and the agent's link to the relay black-holed). Each store is
//! reached with short deadlines (connect within 2 s, each statement or command within 3 s),
//! so a hole of [`HOLE`] outlasts them. `JOBAGENT_BLACKHOLE_ROUNDS` sets the rounds per
//! case (default [`CI_ROUNDS`]), `JOBAGENT_BLACKHOLE_SEED` the random placement.
//!
//! The center moves an agent job out of Processing only when set `_agent_result_` lists it
//! (read every 2 s with the first field of hash `_agent_result_<id>`; yuzd/Hangfire.HttpJob
//! `Server/Hangfire.HttpJob/Server/JobAgent/JobAgentReportServer.cs`, `OnVerify`), with no
//! time-out of its own: a write that never ends leaves the job Processing forever.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::proxy::Proxy;
use tests::relay::Relay;
use tests::replica::Replica;
use tests::stores::{AnyStore, demo_numbers};

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
/// The run: this many console lines over [`RUN_MS`], so busy that its writer nearly always
/// has a statement in flight when the hole opens (issue 29 saw it with 200).
const LINES: u64 = 2_000;
const RUN_MS: u64 = 4_000;
/// How long the store stays black-holed: longer than every deadline the agent is given
/// (connect 2 s, statement or command 3 s), so each of them fires during the hole.
const HOLE: Duration = Duration::from_secs(5);
/// From the store's return to the run's result, at most.
const AFTER_RETURN: Duration = Duration::from_secs(30);
/// Rounds per case in CI.
const CI_ROUNDS: usize = 3;

fn rounds() -> usize {
    std::env::var("JOBAGENT_BLACKHOLE_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CI_ROUNDS)
}

fn seed(case: &str) -> u64 {
    let base = std::env::var("JOBAGENT_BLACKHOLE_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        });
    println!("{case}: JOBAGENT_BLACKHOLE_SEED={base}");
    base ^ case
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b))
}

/// What the proxy stands in front of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hole {
    /// The store, which the agent writes to directly.
    Store,
    /// The store, which a relay writes to for the agent.
    BehindRelay,
    /// The relay, which the agent calls.
    RelayLink,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_black_holed_mid_write() {
    rounds_of(AnyStore::postgresql().await, Hole::Store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_black_holed_mid_write() {
    rounds_of(AnyStore::mysql().await, Hole::Store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_black_holed_mid_write() {
    rounds_of(AnyStore::redis().await, Hole::Store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_behind_a_relay_black_holed_mid_write() {
    rounds_of(AnyStore::postgresql().await, Hole::BehindRelay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_to_a_relay_black_holed_mid_write() {
    rounds_of(AnyStore::postgresql().await, Hole::RelayLink).await;
}

/// A proxy where `hole` says, the relay when there is one, and the agent's environment.
async fn set_up(db: &AnyStore, hole: Hole) -> (Proxy, Option<Relay>, Vec<(&'static str, String)>) {
    match hole {
        Hole::Store => {
            let (proxy, env) = db.env_behind_proxy().await;
            (proxy, None, env)
        }
        Hole::BehindRelay => {
            let (proxy, env) = db.env_behind_proxy().await;
            let relay = Relay::start(db, &[("JOBAGENT_RELAY_STORE", env[0].1.clone())]);
            let env = relay.agent_env();
            (proxy, Some(relay), env)
        }
        Hole::RelayLink => {
            let (connection, _, _) = db.direct();
            // The store itself with the same short deadlines; the hole is in front of the relay.
            let short = match db.kind() {
                "postgresql" => format!("{connection};Timeout=2;Command Timeout=3"),
                _ => connection,
            };
            let relay = Relay::start(db, &[("JOBAGENT_RELAY_STORE", short)]);
            let proxy = Proxy::start("127.0.0.1", relay.port()).await;
            let env = tests::relay::relay_env(proxy.port());
            (proxy, Some(relay), env)
        }
    }
}

async fn rounds_of(db: AnyStore, hole: Hole) {
    let case = match hole {
        Hole::Store => db.kind().to_owned(),
        Hole::BehindRelay => format!("{} behind a relay", db.kind()),
        Hole::RelayLink => "the link to a relay".to_owned(),
    };
    let mut rng = StdRng::seed_from_u64(seed(&case));
    let (proxy, _relay, mut env) = set_up(&db, hole).await;
    let metrics_port = free_port();
    env.push((
        "JOBAGENT_METRICS_LISTEN",
        format!("127.0.0.1:{metrics_port}"),
    ));
    env.push(("JOBAGENT_SHUTDOWN_TIMEOUT_MS", "10000".to_owned()));
    env.push(("RUST_LOG", "info".to_owned()));
    let name = format!("bh-{}", std::process::id());
    let mut agent = Replica::start_logged(&name, &env).await;
    let center = agent.center();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");

    let total = rounds();
    let mut longest = Duration::ZERO;
    for round in 1..=total {
        let job = format!("bh-{round}-{}", rng.random::<u32>());
        let console = ConsoleInfo::for_job(&job);
        let progress = rng.random_bool(0.5);
        // Past 220 characters a line's text goes into the console's hash (a reference).
        let line_len = if rng.random_bool(0.3) { 300 } else { 0 };
        let at = Duration::from_millis(rng.random_range(0..RUN_MS + 500));
        center
            .run(TRANSIENT, &job)
            .param(json!({"lines": LINES, "sleep_ms": RUN_MS, "progress": progress, "line_len": line_len}))
            .console(console.clone())
            .send()
            .await
            .assert_status(200);
        let started = Instant::now();
        tokio::time::sleep_until((started + at).into()).await;
        proxy.black_hole();
        tokio::time::sleep(HOLE).await;
        proxy.restore_new();
        let back = Instant::now();

        let result = await_result(&db, &job, &console, &agent).await;
        let took = back.elapsed();
        longest = longest.max(took);
        println!(
            "{case} round {round}/{total}: hole at {at:?} of the run (progress {progress}, line length {line_len}); result {took:?} after the store was back"
        );
        assert_eq!(result["R"], "ok", "{case} round {round}: {result}");
        assert_eq!(
            db.result_fields(&job).await.len(),
            1,
            "{case} round {round}: exactly one result"
        );
        let numbers = demo_numbers(&db.console_lines(&console.set_key, &console.hash_key).await);
        assert_eq!(
            numbers,
            (1..=LINES).collect::<Vec<u64>>(),
            "{case} round {round}: every line, once, in order"
        );
        drained(&metrics, &case, round).await;
        // The partition's dead links finally reset (a server keeps a session per link).
        proxy.close_dead();
    }

    agent.signal_term();
    let exited = agent.wait_exit(Duration::from_secs(20)).await;
    let log = agent.log_text();
    assert!(
        exited.is_some_and(|s| s.success()),
        "{case}: the agent did not exit cleanly: {exited:?}\n{}",
        tail(&log)
    );
    assert!(
        log.contains("pending_tasks=0"),
        "{case}: writes still pending at shutdown:\n{}",
        tail(&log)
    );
    println!(
        "{case}: {total} round(s); longest from the store's return to the result: {longest:?}"
    );
}

/// The run's result once the center would see it; panics with the agent's log after
/// [`AFTER_RETURN`].
async fn await_result(db: &AnyStore, job: &str, console: &ConsoleInfo, agent: &Replica) -> Value {
    let deadline = Instant::now() + AFTER_RETURN;
    loop {
        if let Some(r) = db.result(job).await {
            return r;
        }
        if Instant::now() >= deadline {
            let lines = db.set_rows(&console.set_key).await.len();
            panic!(
                "{}: no result for {job} within {AFTER_RETURN:?} of the store's return ({lines} line(s) seen); agent log:\n{}",
                db.kind(),
                tail(&agent.log_text())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent has no run in progress and no console line waiting for the store,
/// and dropped none.
async fn drained(metrics: &str, case: &str, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(metrics).await;
        let running = total(&text, "jobagent_runs_in_progress");
        let buffered = total(&text, "jobagent_console_buffered_lines");
        let dropped = total(&text, "jobagent_console_lines_dropped_total");
        // A run's last write is the removal of its in-flight record, after its result (one
        // run a round): a pooled link that died in the hole may hold it up to Command Timeout.
        let forgotten = forget_ops(&text);
        assert_eq!(dropped, 0.0, "{case} round {round}: console lines dropped");
        if running == 0.0 && buffered == 0.0 && forgotten >= round as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case} round {round}: {running} run(s) in progress, {buffered} console line(s) buffered and {forgotten} in-flight record(s) removed after the result"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many in-flight records the agent has tried to remove (the `forget` store operation,
/// done or failed), from Prometheus text.
fn forget_ops(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("jobagent_store_op_duration_seconds_count{"))
        .filter(|l| l.contains("op=\"forget\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The sum of every series of metric `name` in Prometheus text (0 when absent).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

async fn get(url: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
