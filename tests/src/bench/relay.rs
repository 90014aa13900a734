//! Console throughput through one `jobagent-relay`, beside the same agent writing directly to
//! the same store in the same run, on each store; and the relay's CPU time per line.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::{Center, ConsoleInfo};
use tests::relay::Relay;
use tests::stores::AnyStore;

use crate::bench::proc::{self, Server};
use crate::bench::scenarios::{Report, Settings, TRANSIENT, progress, start_agent};
use crate::bench::stats::{Row, Target, Unit};
use crate::bench::stores::{LINE_LEN, check_console, clear};

/// The scenario's rows, per store.
struct Rows {
    vs_direct: Row,
    cpu_per_line: Row,
    complete: Row,
}

impl Rows {
    fn new(scenario: &'static str, lines: u64) -> Self {
        Self {
            vs_direct: Row::new(
                scenario,
                format!("{}k lines → result, via relay", lines / 1000),
                Unit::PerSec,
            )
            .baseline("direct")
            .target(Target::RatioAtLeast(0.5)),
            cpu_per_line: Row::new(scenario, "relay CPU per line", Unit::Us),
            complete: Row::new(scenario, "console complete, in order", Unit::Count)
                .target(Target::Every(1.0)),
        }
    }
}

/// One run of the demo job writing `lines` lines through `agent`; returns lines per second
/// from sending the run to its result in the store, after checking the console.
async fn one_run(agent: &Server, db: &AnyStore, id: &str, lines: u64) -> Result<f64, String> {
    let console = ConsoleInfo::for_job(id);
    // The agents are configured with their store (or relay): the center's header is not
    // needed, and in relay mode it would be ignored anyway.
    let center = Center::new(agent.url());
    let t0 = Instant::now();
    let reply = center
        .run(TRANSIENT, id)
        .param(json!({"lines": lines, "line_len": LINE_LEN}))
        .console(console.clone())
        .send()
        .await;
    if reply.status != 200 {
        return Err(format!("{}: run {id} answered {reply:?}", db.kind()));
    }
    let result = db.wait_result(id, Duration::from_secs(600)).await;
    let rate = lines as f64 / t0.elapsed().as_secs_f64();
    if result["R"] != "ok" {
        return Err(format!("{}: run {id} failed: {result}", db.kind()));
    }
    check_console(db, &console, lines).await?;
    Ok(rate)
}

/// Console throughput via one relay against direct, per store.
pub(crate) async fn console_via_relay(s: &Settings, r: &mut Report) -> Result<(), String> {
    let lines: u64 = if s.quick { 20_000 } else { 100_000 };
    let budget = ("JOBAGENT_CONSOLE_MAX_LINES", "1000000".to_owned());
    let tck = proc::clk_tck();
    for name in ["postgresql", "mysql", "redis"] {
        let db = match name {
            "postgresql" => AnyStore::postgresql().await,
            "mysql" => AnyStore::mysql().await,
            _ => AnyStore::redis().await,
        };
        // Builds the relay if needed, starts it and waits until it listens (or panics saying
        // why it could not).
        let relay = Relay::start(&db, &[]);
        let relay_pid = relay
            .pid()
            .ok_or("the relay stopped right after it started")?;

        let mut direct_env = db.env();
        direct_env.push(budget.clone());
        let mut relayed_env = relay.agent_env();
        relayed_env.push(budget.clone());
        let direct = start_agent(s, &direct_env).await?;
        let relayed = start_agent(s, &relayed_env).await?;
        // Warm both agents' connections (and the relay's pool).
        one_run(&direct, &db, "warm-direct", 100).await?;
        one_run(&relayed, &db, "warm-relayed", 100).await?;

        let scenario: &'static str = match name {
            "postgresql" => "console via relay (postgresql)",
            "mysql" => "console via relay (mysql)",
            _ => "console via relay (redis)",
        };
        let mut rows = Rows::new(scenario, lines);
        for run in 0..s.runs {
            clear(&db).await?;
            let direct_rate = one_run(&direct, &db, &format!("cd-{run}"), lines).await?;
            clear(&db).await?;
            let before = proc::cpu_ticks(relay_pid)?;
            let relayed_rate = one_run(&relayed, &db, &format!("cr-{run}"), lines).await?;
            let after = proc::cpu_ticks(relay_pid)?;
            let cpu_us = after.saturating_sub(before) as f64 / tck as f64 * 1e6;
            rows.vs_direct.push(relayed_rate, Some(direct_rate));
            rows.cpu_per_line.push(cpu_us / lines as f64, None);
            rows.complete.push(1.0, None);
            progress(format!(
                "{name} run {}: via relay {relayed_rate:.0} lines/s, direct {direct_rate:.0} \
                 lines/s, relay CPU {:.2} µs/line",
                run + 1,
                cpu_us / lines as f64
            ));
        }
        clear(&db).await?;
        r.rows
            .extend([rows.vs_direct, rows.cpu_per_line, rows.complete]);
        direct.kill();
        relayed.kill();
        drop(relay);
    }
    r.note(format!(
        "console via relay: two example-agent processes, one configured with the store itself \
         (JOBAGENT_STORE), one with a jobagent-relay in front of the same store \
         (JOBAGENT_STORE=relay+http://..., bearer token; relay built with --release, log level \
         warn, plain HTTP on 127.0.0.1); each warmed by one small job; runs alternate direct \
         then relayed, the store emptied before each; {lines} lines of {LINE_LEN} characters, \
         timed from sending the run to its id in `_agent_result_` (polled every 20 ms), then \
         the console checked complete and in the dashboard's order. Relay CPU per line: the \
         relay process's utime+stime (/proc/<pid>/stat, {tck} ticks/s) over the relayed run, \
         divided by the lines."
    ));
    Ok(())
}
