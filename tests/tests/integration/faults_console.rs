//! Console memory is bounded in bytes, per run and for the whole process (issue 12): runs
//! writing megabyte lines while the store is black-holed keep the example service's resident
//! memory within the documented bound, and once the store is back every run is reported once,
//! with what was dropped counted and what was kept in order.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::pg::TestDb;
use tests::proxy::Proxy;
use tests::replica::Replica;
use tests::wait;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const MIB: u64 = 1024 * 1024;
/// Concurrent runs.
const RUNS: usize = 4;
/// Lines each run writes, of one MiB each.
const LINES: u64 = 300;
/// The time each run spreads its lines over.
const PACE: Duration = Duration::from_secs(20);
/// The documented default bound for all consoles of the process (docs/console.md,
/// `JOBAGENT_CONSOLE_MEMORY_BYTES`).
const MEMORY_BOUND: u64 = 64 * MIB;
/// Room beyond the bound: the batches in transit (at most as much again, as documented), each
/// run's own line being built (two MiB per run) and the allocator's slack.
const MARGIN: u64 = 96 * MIB;

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU time the process has used, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The fields after the command name (which may hold spaces) in parentheses; utime and
    // stime are the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// The number of a demo line (`【JobAgent】line 17.....`), if it is one.
fn line_number(text: &str) -> Option<u64> {
    let rest = text
        .strip_prefix(jobagent::DEFAULT_CONSOLE_PREFIX)?
        .strip_prefix("line ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The count `n` in a text containing `<n> <what>`.
fn count_before(text: &str, what: &str) -> Option<u64> {
    let head = &text[..text.find(what)?];
    let digits: String = head
        .chars()
        .rev()
        .skip_while(|c| *c == ' ' || *c == '(')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn megabyte_lines_during_a_black_holed_store_stay_within_the_memory_bound() {
    let db = TestDb::new().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let replica = Replica::start("console-memory", &[("JOBAGENT_STORE", via_proxy)]).await;
    let pid = replica.pid().expect("the replica runs");
    let center = replica.center();
    // A warm-up run with the store up, so that the idle figure includes a used pool.
    center
        .run(TRANSIENT, "warm")
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "warm", Duration::from_secs(20)).await["R"],
        "ok"
    );
    let idle = status_bytes(pid, "VmRSS");

    proxy.black_hole();
    let consoles: Vec<(String, ConsoleInfo)> = (0..RUNS)
        .map(|i| {
            let id = format!("mb-{i}");
            let console = ConsoleInfo::for_job(&id);
            (id, console)
        })
        .collect();
    let mut sends = Vec::new();
    for (id, console) in &consoles {
        // `fail` makes the result carry the count of dropped lines; `sleep_ms` paces the
        // lines (the demo job otherwise builds them without yielding, and four such runs on
        // two cores would leave the agent no thread to answer the next dispatch).
        let request = center
            .run(TRANSIENT, id)
            .param(json!({"lines": LINES, "line_len": MIB, "fail": true, "sleep_ms": PACE.as_millis() as u64}))
            .console(console.clone());
        sends.push(tokio::spawn(request.send()));
    }
    for send in sends {
        send.await.expect("dispatch task").assert_status(200);
    }
    let dispatched = Instant::now();

    // The runs write their 300 MiB each while nothing reaches the store; they are done when
    // the process stops using the CPU (the runs then wait for their consoles to drain).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut samples: Vec<u64> = Vec::new();
    let mut peak = 0;
    loop {
        peak = peak.max(status_bytes(pid, "VmRSS"));
        samples.push(cpu_ticks(pid));
        // Past the pace, and quiet: at most 3 ticks (30 ms) of CPU over the last 2 s.
        if dispatched.elapsed() >= PACE
            && samples.len() > 20
            && samples[samples.len() - 1] - samples[samples.len() - 21] <= 3
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runs did not finish writing within 180 s ({} ticks of CPU)",
            samples.last().copied().unwrap_or(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let high_water = status_bytes(pid, "VmHWM").max(peak);
    let held = status_bytes(pid, "VmRSS");
    println!(
        "resident memory: idle {} MiB, peak {} MiB, after the runs {} MiB ({RUNS} runs × {LINES} lines of 1 MiB; bound {} MiB + margin {} MiB)",
        idle / MIB,
        high_water / MIB,
        held / MIB,
        MEMORY_BOUND / MIB,
        MARGIN / MIB
    );
    assert!(
        high_water < idle + MEMORY_BOUND + MARGIN,
        "peak resident memory {} MiB over idle {} MiB + bound {} MiB + margin {} MiB",
        high_water / MIB,
        idle / MIB,
        MEMORY_BOUND / MIB,
        MARGIN / MIB
    );

    proxy.restore();
    for (id, console) in &consoles {
        let result: Value = wait::failure(
            &db,
            id,
            Duration::from_secs(120),
            "console lines were dropped",
        )
        .await;
        let error = result["E"].as_str().unwrap_or_default();
        let overflow = count_before(error, "console lines were dropped")
            .unwrap_or_else(|| panic!("no count in {error}"));
        assert!(overflow > 0, "{error}");
        let lines = db.console_lines(&console.set_key, &console.hash_key).await;
        let texts: Vec<&str> = lines.iter().filter_map(|l| l["s"].as_str()).collect();
        let kept: Vec<u64> = texts.iter().filter_map(|t| line_number(t)).collect();
        // In order, none twice; at most one console buffer's worth (the default 32 MiB), as
        // every kept line waited for the store.
        assert!(
            kept.windows(2).all(|w| w[0] < w[1]),
            "{id}: kept lines out of order: {kept:?}"
        );
        assert!(kept.len() < 32, "{id}: {} lines kept", kept.len());
        // The markers say what was dropped, and it adds up.
        let overflow_marker = texts
            .iter()
            .find(|t| t.contains("line(s) dropped: the store was unreachable"))
            .unwrap_or_else(|| panic!("{id}: no overflow marker"));
        assert_eq!(
            count_before(overflow_marker, "line(s) dropped"),
            Some(overflow),
            "{overflow_marker}"
        );
        let over_budget = texts
            .iter()
            .find(|t| t.contains("more than its console budget"))
            .and_then(|t| count_before(t, "line(s) dropped"))
            .unwrap_or(0);
        assert_eq!(
            kept.len() as u64 + overflow + over_budget,
            LINES,
            "{id}: kept {}, dropped {overflow} (buffer) + {over_budget} (budget)",
            kept.len()
        );
        println!(
            "{id}: kept {} lines, dropped {overflow} (buffer full) + {over_budget} (budget)",
            kept.len()
        );
    }
    // Exactly one result each (`result` asserts at most one field; all have landed by now).
    for (id, _) in &consoles {
        assert_eq!(db.result_fields(id).await.len(), 1, "{id}");
    }
}
