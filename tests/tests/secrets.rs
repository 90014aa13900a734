//! Passwords, connection strings and `Authorization` values never reach the logs or the
//! answers, whatever goes wrong.

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jobagent::AgentOptions;
use serde_json::json;
use tests::center::Storage;
use tests::service::TestService;

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = LOG.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

fn logs() -> String {
    LOG.lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default()
}

const AGENT_PW: &str = "S3cr3t-Agent-Pw";
const WRONG_PW: &str = "Wr0ng-Pw-Value";
const DB_PW: &str = "Db-Pa55word-x9";
const ITEM_PW: &str = "Item-Pa55-q7";
const STORE_PW: &str = "Local-St0re-Pw";

#[tokio::test]
async fn no_secret_reaches_logs_or_answers() {
    capture_logs();
    let options = AgentOptions::new().basic_auth("center", AGENT_PW).store(
        format!("Host=127.0.0.1;Port=1;Username=u;Password={STORE_PW};Timeout=1"),
        "hangfire",
        7.0,
    );
    tracing::info!("options: {options:?}");
    let service = TestService::start_with(options).await;
    tracing::info!("agent: {:?}", service.agent());
    let center = service.center().with_basic_auth("center", AGENT_PW);
    let mut bodies = Vec::new();

    // Wrong credentials.
    let reply = center
        .run("example_agent::jobs::TestJob", "w1")
        .basic_auth("center", WRONG_PW)
        .send()
        .await;
    reply.assert_err(500);
    bodies.push(reply.body.clone());
    // A store the agent never reached (the local one, port 1): the run is refused with the
    // store's reason, which names neither the password nor the connection string.
    let reply = center
        .run("example_agent::jobs::TestTransientJob", "s1")
        .param(json!({"lines": 3}))
        .item_field("BasicPassword", json!(ITEM_PW))
        .send()
        .await;
    reply.assert_err(500);
    assert!(reply.body.contains("has not answered"), "{}", reply.body);
    bodies.push(reply.body.clone());
    bodies.push(
        center
            .detail("example_agent::jobs::TestTransientJob")
            .send()
            .await
            .body,
    );
    // A bounded wait, not a condition: the agent's background store attempts (Timeout=1)
    // fail and log meanwhile, and the test asserts that nothing they log names a secret.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(service);

    // A second agent without a local store: bad and unreachable stores from the header.
    let service = TestService::start_with(AgentOptions::new().basic_auth("center", AGENT_PW)).await;
    let center = service.center().with_basic_auth("center", AGENT_PW);
    for conn in [
        format!("Host=127.0.0.1;Port=notaport;Username=u;Password={DB_PW}"),
        format!("Host=127.0.0.1;Port=1;Username=u;Password={DB_PW};Timeout=1"),
        format!("Host=127.0.0.1;Port=1;Username=u;Password='{DB_PW}"),
        format!("postgres://u:{DB_PW}@127.0.0.1:1/db?sslmode=bogus"),
    ] {
        let reply = center
            .run("example_agent::jobs::TestTransientJob", "h1")
            .storage(&Storage::postgresql(conn))
            .send()
            .await;
        bodies.push(reply.body.clone());
    }
    // MySQL and Redis stores: malformed, unreachable, and reachable with a wrong password.
    for storage in [
        Storage::of_kind(
            "mysql",
            format!("server=127.0.0.1;port=x;uid=u;pwd={DB_PW};database=d"),
        ),
        Storage::of_kind(
            "mysql",
            format!("server=127.0.0.1;port=1;uid=u;pwd={DB_PW};database=d;Connect Timeout=1"),
        ),
        Storage::of_kind(
            "mysql",
            format!("server=127.0.0.1;port=3306;uid=root;pwd={DB_PW};database=d;Connect Timeout=2"),
        ),
        Storage::of_kind("mysql", format!("mysql://u:{DB_PW}@127.0.0.1:1/d?bogus=1")),
        Storage::of_kind(
            "redis",
            format!("127.0.0.1:1,password={DB_PW},connectTimeout=1000"),
        ),
        Storage::of_kind(
            "redis",
            format!("127.0.0.1:6379,password={DB_PW},connectTimeout=1000"),
        ),
        Storage::of_kind(
            "redis",
            format!("127.0.0.1:1,password={DB_PW},unknownOption=1"),
        ),
        Storage::of_kind("redis", format!("redis://:{DB_PW}@127.0.0.1:1/99999")),
    ] {
        let reply = center
            .run("example_agent::jobs::TestTransientJob", "h2")
            .param(json!({"lines": 2}))
            .storage(&storage)
            .send()
            .await;
        bodies.push(reply.body.clone());
        let reply = center.heartbeat().storage(&storage).send().await;
        bodies.push(reply.body.clone());
    }
    let reply = center
        .heartbeat()
        .storage(&Storage::postgresql(format!(
            "Host=127.0.0.1;Port=1;Username=u;Password={DB_PW};Timeout=1"
        )))
        .send()
        .await;
    bodies.push(reply.body.clone());
    // As above: time for the background store attempts to fail and log (checked for secrets).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let log = logs();
    assert!(log.contains("refused"), "the capture works: {log}");
    assert!(
        log.contains("has not answered"),
        "the store failures were logged: {log}"
    );
    let secrets = [
        AGENT_PW.to_owned(),
        WRONG_PW.to_owned(),
        DB_PW.to_owned(),
        ITEM_PW.to_owned(),
        STORE_PW.to_owned(),
        STANDARD.encode(format!("center:{AGENT_PW}")),
        STANDARD.encode(format!("center:{WRONG_PW}")),
    ];
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret reached the log: {secret}\n{log}"
        );
        for body in &bodies {
            assert!(
                !body.contains(secret.as_str()),
                "a secret reached an answer: {body}"
            );
        }
    }
}
