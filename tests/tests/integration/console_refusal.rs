//! A console line the relay will never take (issue 26, "Refusals end cleanly"): the relay
//! refuses any request over its body limit (8 MiB, `JOBAGENT_RELAY_MAX_BODY`) with 413 and
//! nothing written, while the agent buffers a line of up to 32 MiB. The batch holding that
//! line is split until the line stands alone; the line is replaced by a marker line that says
//! so; every other line lands, in order; the result comes within seconds and says how many
//! lines were lost. Before the fix the batch was retried unchanged for ever: no later line
//! landed, and the result waited for the console's 5-minute give-up.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::ConsoleInfo;
use tests::relay::Relay;
use tests::replica::Replica;
use tests::stores::AnyStore;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

#[tokio::test(flavor = "multi_thread")]
async fn a_line_over_the_relays_body_limit_is_replaced_and_the_rest_lands() {
    let db = AnyStore::postgresql().await;
    // The relay's default body limit: 8 MiB.
    let relay = Relay::start(&db, &[]);
    let agent = Replica::start("refused-line", &relay.agent_env()).await;
    let console = ConsoleInfo::for_job("rf1");
    let sent = Instant::now();
    agent
        .center()
        .run(TRANSIENT, "rf1")
        // Line 10 of 20 is 9 MiB; the run fails at its end, so its result carries a message.
        .param(json!({"lines": 20, "long_line": 10, "long_len": 9 * 1024 * 1024, "fail": true}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = db.wait_result("rf1", Duration::from_secs(20)).await;
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the result took {waited:?}"
    );
    assert_eq!(result["R"], "err", "{result}");
    let said = result["E"].as_str().unwrap_or_default();
    assert!(said.contains("failed on request"), "{said}");
    assert!(said.contains("1 console lines were dropped"), "{said}");

    // The console as the dashboard reads it: lines 1..=20 but 10, in order, and in line 10's
    // place a marker saying a line of that size was refused.
    let rows = db.console_lines(&console.set_key, &console.hash_key).await;
    let texts: Vec<String> = rows
        .iter()
        .filter_map(|l| l["s"].as_str())
        .map(|s| s.trim_start_matches("【JobAgent】").to_owned())
        .collect();
    let numbered: Vec<u64> = texts
        .iter()
        .filter_map(|s| s.strip_prefix("line ")?.split('.').next()?.parse().ok())
        .collect();
    let expected: Vec<u64> = (1..=20).filter(|n| *n != 10).collect();
    assert_eq!(numbered, expected, "{:?}", short(&texts));
    let marker = texts
        .iter()
        .position(|s| s.contains("is not shown: the store refused it"))
        .unwrap_or_else(|| panic!("no marker line: {:?}", short(&texts)));
    let ninth = texts.iter().position(|s| s.starts_with("line 9"));
    let eleventh = texts.iter().position(|s| s.starts_with("line 11"));
    assert_eq!(
        (ninth, eleventh),
        (Some(marker - 1), Some(marker + 1)),
        "{:?}",
        short(&texts)
    );
    let size: u64 = texts[marker]
        .split(" bytes")
        .next()
        .and_then(|s| s.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the marker names no size: {}", texts[marker]));
    assert!(size >= 9 * 1024 * 1024, "{}", texts[marker]);
    assert!(texts[marker].contains("413"), "{}", texts[marker]);
}

/// Lines cut to 60 characters, for messages.
fn short(texts: &[String]) -> Vec<String> {
    texts.iter().map(|t| t.chars().take(60).collect()).collect()
}
