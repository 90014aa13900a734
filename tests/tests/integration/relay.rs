//! `jobagent-relay` (issue 17): what it refuses (a wrong token, a key outside an agent's
//! scope, an oversized batch), each with nothing written; and a relay killed mid-job and
//! restarted, after which every line has landed once, in order, with one result.
//!
//! The store black-holed behind a live relay (no reset: the relay's statements time out and it
//! answers 503): the agent keeps the lines and the result and delivers them once the store is
//! back.
//!
//! A relay serving TLS: agents that trust its certificate's CA write through it, one that does
//! not is told so by its readiness probe and writes nothing. That relay checks results against
//! the center's jobs (the job is Processing in the store, as the center leaves it).
//!
//! The store suite and the cluster tests also run through relays (`store.rs`, `cluster.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::relay::{Relay, TOKEN, job_in_state};
use tests::replica::Replica;
use tests::stores::AnyStore;
use tests::wait;

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

/// Sends the demo job `id` writing `lines` lines over `sleep_ms` to `agent`; its console.
async fn start_lines(agent: &Replica, id: &str, lines: u32, sleep_ms: u64) -> ConsoleInfo {
    let console = ConsoleInfo::for_job(id);
    agent
        .center()
        .run(TRANSIENT, id)
        .param(json!({"lines": lines, "sleep_ms": sleep_ms}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    console
}

/// Asserts that run `id` ended well with one result and that its console holds the demo's
/// `lines` numbered lines, each once, in order (as the dashboard reads them).
async fn assert_every_line_once(db: &AnyStore, id: &str, console: &ConsoleInfo, lines: u32) {
    let result = db.wait_result(id, Duration::from_secs(30)).await;
    assert_eq!(result["R"], "ok", "{result}");
    let rows = db.console_lines(&console.set_key, &console.hash_key).await;
    // Lines carry the example service's console prefix.
    let texts: Vec<&str> = rows
        .iter()
        .filter_map(|l| l["s"].as_str())
        .map(|s| s.trim_start_matches("【JobAgent】"))
        .collect();
    let numbered: Vec<u32> = texts
        .iter()
        .filter_map(|s| s.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(numbered, (1..=lines).collect::<Vec<u32>>(), "{texts:?}");
    assert_eq!(db.result_fields(id).await.len(), 1);
}

/// The relay is SIGKILLed while a job writes its console and started again 3 s later: the
/// agent buffers meanwhile; every line lands once, in order, and the run has one result.
async fn relay_killed_mid_job(mut db: AnyStore) {
    let agent = Replica::start("relayed", &db.env()).await;
    let console = start_lines(&agent, "rk1", 60, 6000).await;
    // Mid-job: once the first lines have landed through the relay.
    wait::until(
        Duration::from_secs(10),
        "no line through the relay",
        async || db.set_rows(&console.set_key).await.len() >= 10,
    )
    .await;
    db.relays_mut()[0].kill();
    // The outage under test: the relay stays down 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.relays_mut()[0].restart();
    assert_every_line_once(&db, "rk1", &console, 60).await;
}

/// The store behind a live relay black-holes mid-job for 4 s (connections stay open, nothing
/// passes, no reset). The relay's store operations time out (its store is given with the short
/// bounds of [`AnyStore::env_behind_proxy`]) and it answers 503; the agent keeps the console
/// and the result meanwhile. After the store is back: no result while it was away, then every
/// line once, in order, and one result.
async fn store_black_holed_behind_the_relay(db: AnyStore) {
    let (proxy, env) = db.env_behind_proxy().await;
    // The relay reaches the store through the proxy: `JOBAGENT_STORE` of that environment.
    let (_, through_proxy) = env
        .into_iter()
        .find(|(k, _)| *k == "JOBAGENT_STORE")
        .unwrap_or_else(|| panic!("no JOBAGENT_STORE in the proxied environment"));
    let relay = Relay::start(&db, &[("JOBAGENT_RELAY_STORE", through_proxy)]);
    let agent = Replica::start("relayed-outage", &relay.agent_env()).await;
    let console = start_lines(&agent, "bh1", 200, 2000).await;
    wait::until(
        Duration::from_secs(10),
        "no line through the relay",
        async || !db.set_rows(&console.set_key).await.is_empty(),
    )
    .await;
    proxy.black_hole();
    let during = db.set_rows(&console.set_key).await.len();
    assert!(
        during < 200,
        "the run was still writing at the cut: {during}"
    );
    // The 4 s outage under test, and a window for something that must not happen: the run
    // ends 2 s after it starts, and its result must not appear while the store is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        db.result("bh1").await.is_none(),
        "no result while the store is away"
    );
    proxy.restore();
    assert_every_line_once(&db, "bh1", &console, 200).await;
}

/// A throwaway CA: its certificate (PEM) and the issuer that signs with it.
fn certificate_authority(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("CA parameters: {e}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("CA certificate: {e}"));
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A server certificate for `localhost` signed by `ca`: (certificate PEM, key PEM).
fn server_certificate(ca: &rcgen::Issuer<'static, rcgen::KeyPair>) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("server parameters: {e}"));
    params
        .extended_key_usages
        .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("server key: {e}"));
    let cert = params
        .signed_by(&key, ca)
        .unwrap_or_else(|e| panic!("server certificate: {e}"));
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// `GET url` until its status is `want` (or the deadline): the last (status, body).
async fn probe_until(url: &str, want: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = match reqwest::get(url).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        if got.0 == want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay serves HTTPS when given a certificate (`JOBAGENT_RELAY_TLS_CERT`/`_KEY`). An
/// agent at `relay+https://localhost:<port>` that trusts the certificate's CA (named in
/// `SSL_CERT_FILE`, which the agent reads with the system's trusted CAs) is ready and its run
/// lands whole; an agent trusting another CA only is not ready, refuses runs saying why, and
/// writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_serves_tls_to_agents_that_trust_its_ca() {
    let db = AnyStore::postgresql().await;
    let dir = std::env::temp_dir().join(format!(
        "jobagent-relay-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let (ca_pem, ca) = certificate_authority("jobagent test CA");
    let (cert_pem, key_pem) = server_certificate(&ca);
    let (other_ca_pem, _) = certificate_authority("some other CA");
    let ca_file = write(&dir, "ca.pem", &ca_pem);
    let other_ca_file = write(&dir, "other-ca.pem", &other_ca_pem);
    let cert_file = write(&dir, "relay.pem", &cert_pem);
    let key_file = write(&dir, "relay-key.pem", &key_pem);
    // A relay that checks results: the center's job is Processing in its storage, as the
    // center leaves it after the dispatch (`tests::relay::job_in_state`).
    let relay = Relay::start_checked(
        &db,
        &[
            ("JOBAGENT_RELAY_TLS_CERT", cert_file.display().to_string()),
            ("JOBAGENT_RELAY_TLS_KEY", key_file.display().to_string()),
        ],
    );
    let store = format!("relay+https://localhost:{}", relay.port());
    let agent_env = |trusted: &Path| {
        vec![
            ("JOBAGENT_STORE", store.clone()),
            ("JOBAGENT_RELAY_TOKEN", TOKEN.to_owned()),
            ("SSL_CERT_FILE", trusted.display().to_string()),
        ]
    };

    let agent = Replica::start("tls-trusting", &agent_env(&ca_file)).await;
    let (status, body) =
        probe_until(&agent.url("/jobagent/readyz"), 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    job_in_state(&db, "2701", "Processing").await;
    let console = ConsoleInfo::for_job("2701");
    agent
        .center()
        .run(TRANSIENT, "2701")
        .param(json!({"lines": 20}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = db.wait_result("2701", Duration::from_secs(30)).await;
    assert_eq!(result["R"], "ok", "{result}");
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    let numbered = lines
        .iter()
        .filter_map(|l| l["s"].as_str())
        .filter(|s| s.contains("line "))
        .count();
    assert_eq!(numbered, 20, "{lines:?}");

    let stranger = Replica::start("tls-untrusting", &agent_env(&other_ca_file)).await;
    let (status, body) = probe_until(
        &stranger.url("/jobagent/readyz"),
        503,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not answer"), "{body}");
    assert!(!body.contains(TOKEN), "{body}");
    // A run is refused at once, saying why (the center marks it failed), and nothing is written.
    job_in_state(&db, "2702", "Processing").await;
    let console = ConsoleInfo::for_job("2702");
    let reply = stranger
        .center()
        .run(TRANSIENT, "2702")
        .param(json!({"lines": 20}))
        .console(console.clone())
        .send()
        .await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.body.starts_with("err:") && reply.body.contains("certificate"),
        "{reply:?}"
    );
    assert!(!reply.body.contains(TOKEN), "{reply:?}");
    assert!(db.result("2702").await.is_none());
    assert!(db.set_rows(&console.set_key).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

tests::on_every_store! {
    the_relay_refuses_with_nothing_written => refusals;
    a_store_black_holed_behind_the_relay_loses_no_line => store_black_holed_behind_the_relay;
}

tests::on_every_store_via_relays! { 1;
    a_relay_killed_mid_job_loses_no_line => relay_killed_mid_job;
}
