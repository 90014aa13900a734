//! The dispatch path without a network, for profilers: the example service's router answers
//! `--requests` center-shaped `run` dispatches of the transient demo job in-process, on one
//! thread, each run's task finishing before the next request. With `--baseline` the bare
//! axum handler of the `dispatch` benchmark answers the same requests instead. It prints the
//! time per request; run it under `valgrind --tool=callgrind` (instruction counts, repeatable
//! on a noisy machine) or `perf record` to see where the agent spends its instructions, free
//! of the kernel's TCP work that dominates the `dispatch` benchmark.
//!
//! ```text
//! cargo build --release -p tests --bin dispatch_profile
//! valgrind --tool=callgrind target/release/dispatch_profile --requests 20000
//! valgrind --tool=callgrind target/release/dispatch_profile --requests 20000 --baseline
//! ```
//!
//! `--log` installs a `tracing` subscriber as a service does (`fmt` at `info`, writing to
//! nowhere), so the run's span and the log lines it leads to are counted too.

use std::process::ExitCode;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use jobagent::AgentOptions;
use tests::center::Center;
use tower::ServiceExt as _;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

fn main() -> ExitCode {
    let mut requests = 100_000u64;
    let mut baseline = false;
    let mut log = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => baseline = true,
            "--log" => log = true,
            "--requests" => match args.next().map(|v| v.parse::<u64>()) {
                Some(Ok(n)) if n > 0 => requests = n,
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::io::sink)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(drive(requests, baseline)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatch_profile: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: dispatch_profile [--requests N] [--baseline] [--log]   (N > 0; default 100000)"
    );
    ExitCode::from(2)
}

async fn drive(requests: u64, baseline: bool) -> Result<(), String> {
    let service = example_agent::Service::new(AgentOptions::default().log_only(true))
        .map_err(|e| e.to_string())?;
    let agent = service.agent;
    let app = if baseline {
        tests::baseline::router()
    } else {
        service.app
    };
    let center = Center::new("http://127.0.0.1:5000/jobagent");
    let template = center.run(TRANSIENT, "0").data("");
    let headers = template.build_headers();
    let started = Instant::now();
    for i in 0..requests {
        let mut req = Request::builder().method("POST").uri("/jobagent");
        for (name, value) in &headers {
            if name.eq_ignore_ascii_case("x-job-id") {
                req = req.header(name.as_str(), i.to_string());
            } else {
                req = req.header(name.as_str(), value.as_str());
            }
        }
        let req = req.body(Body::empty()).map_err(|e| e.to_string())?;
        let res = app
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| format!("router error: {e}"))?;
        if res.status() != StatusCode::OK {
            return Err(format!("request {i} answered {}", res.status()));
        }
        while agent.running() > 0 {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{}: {requests} requests in {:.3} s, {:.2} µs each (request building included)",
        if baseline { "bare axum" } else { "agent" },
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / requests as f64
    );
    agent.shutdown().await;
    Ok(())
}
