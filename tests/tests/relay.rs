//! `jobagent-relay` (issue 17): what it refuses (a wrong token, a key outside an agent's
//! scope, an oversized batch), each with nothing written; and a relay killed mid-job and
//! restarted, after which every line has landed once, in order, with one result.
//!
//! The store suite and the cluster tests also run through relays (`store.rs`, `cluster.rs`).

use std::time::Duration;

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::relay::{Relay, TOKEN};
use tests::replica::Replica;
use tests::stores::AnyStore;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// A batch of `n` console lines as the agent sends it.
fn batch(set_key: &str, n: usize) -> Value {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "value": format!("{{\"t\":{i}.0,\"s\":\"line {i}\"}}"),
                "score": i as f64,
                "reference": null,
                "progress_field": null,
            })
        })
        .collect();
    json!({"set_key": set_key, "hash_key": format!("console:refs:{set_key}"), "lines": lines})
}

async fn post(relay: &Relay, op: &str, token: Option<&str>, body: &Value) -> (u16, String) {
    let mut req = reqwest::Client::new().post(relay.endpoint(op)).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let reply = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("the relay did not answer: {e}"));
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap_or_default())
}

async fn refusals(db: AnyStore) {
    let relay = Relay::start(
        &db,
        &[
            ("JOBAGENT_RELAY_MAX_LINES", "100".to_owned()),
            ("JOBAGENT_RELAY_MAX_BODY", "200000".to_owned()),
        ],
    );
    // The relay accepts a well-formed batch with the token: the baseline of this test.
    let (status, body) = post(&relay, "console", Some(TOKEN), &batch("console:ok", 3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(db.set_rows("console:ok").await.len(), 3);
    // No token, a wrong token: 401, nothing written.
    for token in [None, Some("wrong-token")] {
        let (status, body) = post(&relay, "console", token, &batch("console:t", 3)).await;
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    assert!(db.set_rows("console:t").await.is_empty());
    // A key outside what an agent writes: 403, nothing written.
    let (status, body) = post(&relay, "console", Some(TOKEN), &batch("hangfire:job:1", 3)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("outside what an agent writes"), "{body}");
    assert!(db.set_rows("hangfire:job:1").await.is_empty());
    let hash =
        json!({"key": "recurring-job:x", "pairs": [["Cron", "* * * * *"]], "life_secs": null});
    let (status, body) = post(&relay, "set_hash", Some(TOKEN), &hash).await;
    assert_eq!(status, 403, "{body}");
    assert!(db.hash_rows("recurring-job:x").await.is_empty());
    // Too many lines, too many bytes: 413 with a clear error, no line of the batch written.
    let (status, body) = post(&relay, "console", Some(TOKEN), &batch("console:big", 101)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("nothing was written"), "{body}");
    let mut huge = batch("console:huge", 50);
    huge["lines"][0]["value"] = json!("x".repeat(300_000));
    let (status, body) = post(&relay, "console", Some(TOKEN), &huge).await;
    assert_eq!(status, 413, "{body}");
    assert!(db.set_rows("console:big").await.is_empty());
    assert!(db.set_rows("console:huge").await.is_empty());
}

/// The relay is SIGKILLed while a job writes its console and started again 3 s later: the
/// agent buffers meanwhile; every line lands once, in order, and the run has one result.
async fn relay_killed_mid_job(mut db: AnyStore) {
    let agent = Replica::start("relayed", &db.env()).await;
    let console = ConsoleInfo::for_job("rk1");
    agent
        .center()
        .run(TRANSIENT, "rk1")
        .param(json!({"lines": 60, "sleep_ms": 6000}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.relays_mut()[0].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.relays_mut()[0].restart();
    let result = db.wait_result("rk1", Duration::from_secs(30)).await;
    assert_eq!(result["R"], "ok", "{result}");
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    // Lines carry the example service's console prefix.
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["s"].as_str())
        .map(|s| s.trim_start_matches("【JobAgent】"))
        .collect();
    let numbered: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|s| s.starts_with("line "))
        .collect();
    assert_eq!(numbered.len(), 60, "every line once: {texts:?}");
    let order: Vec<u32> = numbered
        .iter()
        .filter_map(|s| {
            s.trim_start_matches("line ")
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(order, (1..=60).collect::<Vec<u32>>(), "{texts:?}");
    assert_eq!(db.result_fields("rk1").await.len(), 1);
}

tests::on_every_store! {
    the_relay_refuses_with_nothing_written => refusals;
}

tests::on_every_store_via_relays! { 1;
    a_relay_killed_mid_job_loses_no_line => relay_killed_mid_job;
}
