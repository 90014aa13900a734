//! The job agent's benchmark: `cargo run --release -p tests --bin bench`.
//!
//! Builds the example service's release binary (`cargo build --release -p example-agent`,
//! a no-op when it is fresh; `--no-build` skips it), then runs each scenario several times and
//! prints one table of medians with same-run baselines, ratios and targets, followed by how
//! each scenario measured and the machine.
//!
//! ```text
//! cargo run --release -p tests --bin bench -- [--quick] [--runs N] [--only NAME[,NAME]]
//! ```
//!
//! Scenarios: `dispatch`, `dispatch-wrk` (the same requests driven by `wrk`, which must be
//! on PATH: `apt-get install wrk`), `metrics` (dispatch with the Prometheus recorder on,
//! `JOBAGENT_METRICS_LISTEN`, against the same binary without it), `stop`, `cluster-stop` (a
//! stop at replica A reaching a run on replica B, with `JOBAGENT_CLUSTER_NOTIFY` on and off),
//! `console`, `console-stores` (MySQL and Redis against their raw ceilings), `console-relay`
//! (through one `jobagent-relay` against direct, on all three stores, with the relay's CPU per
//! line), `many`, `memory`, `idle`, `startup`. The store scenarios use
//! `JOBAGENT_TEST_DATABASE_URL` when set, else a throwaway PostgreSQL server (see
//! `tests::pg`), with a fresh database per scenario (two for `cluster-stop`). The exit status
//! is 0 when every scenario ran, whether or not targets were met (missed ones print
//! `MISSED`); non-zero on errors.

#[path = "../bench/mod.rs"]
mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;

use bench::scenarios::{self, Report, Settings};

const USAGE: &str = "usage: bench [--quick] [--runs N] [--only NAME[,NAME...]] [--no-build]
  --quick        fewer runs (2 unless --runs is given), shorter windows (idle cost 10 s)
  --runs N       run each scenario N times (default 5)
  --only NAMES   run only these scenarios: dispatch, dispatch-wrk, metrics, stop, cluster-stop,
                 console, console-stores, console-relay, many, memory, idle, startup
                 (dispatch-wrk needs `wrk` on PATH:
                 apt-get install wrk; metrics also uses it when present)
  --no-build     do not run `cargo build --release -p example-agent` first
  --agent-log F  RUST_LOG for the example service (default `info`, its own default)";

struct Args {
    quick: bool,
    runs: Option<usize>,
    only: Vec<String>,
    build: bool,
    agent_log: String,
    serve_baseline: Option<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        runs: None,
        only: Vec::new(),
        build: true,
        agent_log: "info".to_owned(),
        serve_baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--no-build" => args.build = false,
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1 && *n <= 100)
                    .ok_or_else(|| format!("--runs {v}: give a number from 1 to 100"))?;
                args.runs = Some(n);
            }
            "--only" => {
                let v = it.next().ok_or("--only needs a scenario name")?;
                for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let name = match name {
                        "dispatch_wrk" | "wrk" => "dispatch-wrk",
                        "metrics-overhead" | "metrics_overhead" => "metrics",
                        "cluster_stop" | "cross-replica-stop" | "cross_replica_stop" => {
                            "cluster-stop"
                        }
                        "stop-latency" | "stop_latency" => "stop",
                        "console-throughput" | "console_throughput" => "console",
                        "many-writers" | "many_writers" => "many",
                        "concurrency-memory" | "concurrency_memory" => "memory",
                        "idle-cost" | "idle_cost" => "idle",
                        "start-up" => "startup",
                        n => n,
                    };
                    if !scenarios::ALL.contains(&name) {
                        return Err(format!(
                            "unknown scenario `{name}`; known: {}",
                            scenarios::ALL.join(", ")
                        ));
                    }
                    args.only.push(name.to_owned());
                }
            }
            "--agent-log" => {
                args.agent_log = it.next().ok_or("--agent-log needs a filter, e.g. warn")?;
            }
            "--serve-baseline" => {
                let v = it.next().ok_or("--serve-baseline needs an address")?;
                args.serve_baseline = Some(v.parse().map_err(|_| format!("bad address `{v}`"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let code = match real_main().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: error: {e}");
            1
        }
    };
    std::process::exit(code);
}

async fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    if let Some(addr) = args.serve_baseline {
        return tests::baseline::serve(addr).await;
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: warning: this is a debug build; run `cargo run --release -p tests --bin bench`"
        );
    }
    // The in-process agent (stop scenario) logs here, to stderr, so that stdout holds only
    // the report.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let self_exe: PathBuf =
        std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let agent_bin = if args.build {
        bench::proc::build_agent(&self_exe)?
    } else {
        let bin = bench::proc::agent_bin_path(&self_exe)?;
        if !bin.is_file() {
            return Err(format!(
                "{} is missing; run without --no-build",
                bin.display()
            ));
        }
        bin
    };
    let runs = args.runs.unwrap_or(if args.quick { 2 } else { 5 });
    let settings = Settings {
        runs,
        quick: args.quick,
        agent_bin,
        self_exe,
        agent_log: args.agent_log.clone(),
    };
    let names: Vec<&str> = if args.only.is_empty() {
        scenarios::ALL.to_vec()
    } else {
        scenarios::ALL
            .iter()
            .copied()
            .filter(|n| args.only.iter().any(|o| o == n))
            .collect()
    };
    let load_before = bench::proc::loadavg();
    let mut report = Report::default();
    for name in &names {
        scenarios::run(name, &settings, &mut report).await?;
    }
    println!();
    println!(
        "job agent benchmark — {} run(s) per scenario{}{}; figures are medians over runs, ratios \
         are medians of per-run ratios against the baseline measured in the same run",
        runs,
        if args.quick { ", --quick" } else { "" },
        if args.agent_log == "info" {
            String::new()
        } else {
            format!(", agent RUST_LOG={}", args.agent_log)
        }
    );
    println!();
    print!("{}", bench::stats::table(&report.rows));
    println!();
    let missed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.met() == Some(false))
        .map(|r| format!("{} / {}", r.scenario, r.measure))
        .collect();
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("MISSED: {}", missed.join("; "));
    }
    println!();
    for note in &report.notes {
        println!("- {note}");
    }
    println!();
    println!("{}", bench::proc::machine_line());
    println!(
        "load average (1/5/15 min) before: {load_before}; after: {} (other work on the machine \
         competes for the same cores; ratios are against same-run baselines for that reason)",
        bench::proc::loadavg()
    );
    Ok(())
}
