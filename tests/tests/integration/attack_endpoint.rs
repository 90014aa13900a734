//! The agent's own `/jobagent` endpoint attacked with its defaults (no basic auth, stores
//! from the center) — issue 27, "A bounded endpoint". Each test replays one attack against
//! the example service as a process and asserts what the center or the operator sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::{ConsoleInfo, Storage};
use tests::pg::TestDb;
use tests::replica::Replica;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

fn name(prefix: &str) -> String {
    format!("{prefix}-{}", rand::random::<u32>())
}

/// Waits for `cond` up to `within`; true when it held.
async fn eventually(within: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Console keys must be Hangfire.Console's. Hangfire.Console names a console's set
/// `console:<consoleId>` and its hash of long lines `console:refs:<consoleId>`
/// (pieceofsummer/Hangfire.Console, src/Hangfire.Console/Storage/ConsoleIdExtensions.cs
/// `GetSetKey`/`GetHashKey`), where a console id is 11 hex digits of its start time followed
/// by the job id (src/Hangfire.Console/Serialization/ConsoleId.cs `ToString`/`Parse`).
/// Before: a console header naming `recurring-jobs` and `recurring-job:pwned` wrote the run's
/// lines into Hangfire's recurring-job set and a forged recurring job's hash, also with the
/// store pinned by `JOBAGENT_STORE`.
#[tokio::test(flavor = "multi_thread")]
async fn console_keys_other_than_hangfire_consoles_are_refused() {
    let db = TestDb::new().await;
    let agent = Replica::start(
        &name("console-keys"),
        &[("JOBAGENT_STORE", db.connection_string())],
    )
    .await;
    let center = agent.center();
    let forged = [
        ("recurring-jobs", "recurring-job:pwned"),
        ("console:0123456789apwned", "recurring-job:pwned"),
        ("console:abc", "console:refs:abc"),
        ("console:0123456789a1", "console:refs:0123456789a2"),
    ];
    for (i, (set_key, hash_key)) in forged.iter().enumerate() {
        let job_id = format!("forged-{i}");
        let console = ConsoleInfo {
            set_key: (*set_key).to_owned(),
            hash_key: (*hash_key).to_owned(),
            start_time: tests::center::dotnet_utc(std::time::SystemTime::now()),
        };
        let reply = center
            .run(TRANSIENT, &job_id)
            .param(json!({"lines": 3, "line_len": 300}))
            .console(console)
            .send()
            .await;
        reply.assert_err(500);
        assert!(reply.has_word("console"), "{}", reply.body);
        // Nothing written: no line, no result.
        assert!(db.set_rows(set_key).await.is_empty(), "{set_key}");
        assert!(db.hash_rows(hash_key).await.is_empty(), "{hash_key}");
        assert!(db.result(&job_id).await.is_none(), "{job_id}");
    }
    // The center's own shape still runs.
    let console = ConsoleInfo::for_job("fine-1");
    center
        .run(TRANSIENT, "fine-1")
        .param(json!({"lines": 2}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    tests::wait::result(&db, "fine-1", Duration::from_secs(20)).await;
    assert!(!db.set_rows(&console.set_key).await.is_empty());
}

/// The store cache never refuses a real store because bogus ones filled it. Before: 32
/// bogus connection strings filled the 32-entry cache and every new real center store was
/// refused until restart.
#[tokio::test(flavor = "multi_thread")]
async fn bogus_stores_do_not_fill_the_store_cache() {
    let db = TestDb::new().await;
    let agent = Replica::start(&name("cache"), &[]).await;
    let center = agent.center();
    for i in 0..40 {
        let bogus = Storage::postgresql(format!(
            "Host=127.0.0.1;Port=1;Username=u{i};Password=p;Timeout=1"
        ));
        let reply = center
            .run(TRANSIENT, &format!("bogus-{i}"))
            .storage(&bogus)
            .console(ConsoleInfo::for_job(&format!("bogus-{i}")))
            .send()
            .await;
        reply.assert_err(500);
    }
    let reply = center
        .run(TRANSIENT, "real-1")
        .storage(&db.storage())
        .param(json!({"lines": 1}))
        .console(ConsoleInfo::for_job("real-1"))
        .send()
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    tests::wait::result(&db, "real-1", Duration::from_secs(20)).await;
}

/// A dead store named by one dispatch is not dialled for ever. The "store" is a TCP
/// listener that counts connections and closes each at once. Before: the agent dialled it
/// about once a second for as long as it ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_store_is_not_dialled_for_ever() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let port = listener.local_addr().expect("addr").port();
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let agent = Replica::start_logged(
        &name("dead-store"),
        &[
            ("JOBAGENT_STORE_IDLE_MS", "2000".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ],
    )
    .await;
    let dead = Storage::postgresql(format!(
        "Host=127.0.0.1;Port={port};Username=u;Password=p;Timeout=1"
    ));
    agent
        .center()
        .run(TRANSIENT, "dead-1")
        .storage(&dead)
        .console(ConsoleInfo::for_job("dead-1"))
        .send()
        .await
        .assert_err(500);
    // Dialling stops: no new connection for 6 s, well within a minute.
    let mut last = dials.load(Ordering::SeqCst);
    let mut quiet_since = Instant::now();
    let stopped = eventually(Duration::from_secs(60), async || {
        let now = dials.load(Ordering::SeqCst);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() >= Duration::from_secs(6)
    })
    .await;
    assert!(
        stopped,
        "the agent still dials the dead store a minute later ({} connections)",
        dials.load(Ordering::SeqCst)
    );
    let log = agent.log_text();
    let said = log.matches("stops dialling").count();
    assert_eq!(said, 1, "said once at info:\n{log}");
    server.abort();
}

/// `detail` shows a bounded prefix of each run's parameter, and running runs' parameters
/// have a byte budget. Before: each run kept its whole parameter and `detail` printed every
/// one of them (300 runs of 1 MiB: a 300 MB answer).
#[tokio::test(flavor = "multi_thread")]
async fn parameters_are_bounded_in_detail_and_in_memory() {
    let agent = Replica::start(
        &name("params"),
        &[
            ("JOBAGENT_LOG_ONLY", "true".to_owned()),
            ("JOBAGENT_MAX_PARAM_BYTES_RUNNING", "700000".to_owned()),
            // The center sends the parameter twice: as the body and in the job item header.
            ("JOBAGENT_MAX_HEADER_BYTES", "400000".to_owned()),
        ],
    )
    .await;
    let center = agent.center();
    let pad = "x".repeat(150_000);
    let mut refused = None;
    for i in 0..8 {
        let reply = center
            .run(TRANSIENT, &format!("big-{i}"))
            .param(json!({"sleep_ms": 60_000, "lines": 1, "pad": pad}))
            .send()
            .await;
        if reply.status != 200 {
            refused = Some((i, reply));
            break;
        }
    }
    let (i, reply) = refused.expect("a run over the parameter budget is refused");
    assert_eq!(
        i, 4,
        "four runs of 150 kB fit a budget of 700 kB: {}",
        reply.body
    );
    reply.assert_err(500);
    assert!(
        reply.body.contains("JOBAGENT_MAX_PARAM_BYTES_RUNNING"),
        "{}",
        reply.body
    );
    let detail = center.detail(TRANSIENT).send().await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert!(
        detail.body.len() < 4 * 8 * 1024,
        "detail of four runs is {} bytes",
        detail.body.len()
    );
    assert!(detail.body.contains("truncated"), "{}", detail.body);
}

/// Text from a request is escaped before it goes into a log line or an `err:` body. Before:
/// a storage `Type` holding a line break wrote a forged line into the agent's log and its
/// answer.
#[tokio::test(flavor = "multi_thread")]
async fn request_text_cannot_forge_log_lines() {
    let agent = Replica::start_logged(&name("forge"), &[("RUST_LOG", "info".to_owned())]).await;
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO forged: agent compromised";
    let storage = json!({"Type": forged, "HangfireDb": "Host=h"}).to_string();
    let reply = agent
        .center()
        .run(TRANSIENT, "forge-1")
        .storage_json(storage)
        .send()
        .await;
    reply.assert_err(500);
    assert!(!reply.body.contains('\n'), "{:?}", reply.body);
    assert!(reply.body.contains("\\n"), "{:?}", reply.body);
    let seen = eventually(Duration::from_secs(10), async || {
        agent.log_text().contains("refused")
    })
    .await;
    assert!(seen, "the refusal is logged");
    let log = agent.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00")),
        "a forged line in the log:\n{log}"
    );
}

/// Basic-auth failures are rate-limited per peer and logged as counts. Before: every guess
/// was checked (4,000 a second) and logged as a line of its own.
#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_guesses_are_rate_limited_and_counted() {
    let agent = Replica::start_logged(
        &name("auth"),
        &[
            ("JOBAGENT_BASIC_USER", "center".to_owned()),
            ("JOBAGENT_BASIC_PASSWORD", "s3cret-pw".to_owned()),
            ("JOBAGENT_LOG_ONLY", "true".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ],
    )
    .await;
    let center = agent.center();
    let mut limited = 0;
    for i in 0..200 {
        let reply = center
            .heartbeat()
            .basic_auth("center", format!("guess-{i}"))
            .send()
            .await;
        reply.assert_err(500);
        if reply.body.contains("too many") {
            limited += 1;
        }
    }
    assert!(limited > 150, "only {limited} of 200 guesses were limited");
    // The right password from the same peer is refused too while the limit holds.
    let reply = center
        .heartbeat()
        .basic_auth("center", "s3cret-pw")
        .send()
        .await;
    assert!(reply.body.contains("too many"), "{}", reply.body);
    let log = agent.log_text();
    let lines = log.lines().filter(|l| l.contains("basic auth")).count();
    assert!(lines <= 3, "{lines} log lines for 200 failures:\n{log}");
}
