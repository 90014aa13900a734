//! Issue 27: a relay token is a tenant. Two services, `billing` and `mailer`, write through
//! one built `jobagent-relay` to one store (PostgreSQL, MariaDB, Redis); each test replays,
//! with the mailer's token, an attack that worked before tokens named their service, and
//! checks what the billing service (or the center) sees afterwards.
//!
//! - locks: the center's own (`hangfire:recurring-jobs:lock`, `hangfire:locks:schedulepoller`)
//!   are refused; another service's lock is not broken by `stale_ms: 0`, nor a shared
//!   (granted) one; on Redis no lock resource lands in Hangfire's key space (`job:<id>`);
//! - results: a dispatch id is not marked in advance (billing's real agent still reports the
//!   job), a finished job's result is not forged, another service's result reads as absent;
//! - cluster: another service's replica is not stopped, its singleton not claimed, its runs not
//!   listed, its instance names not squatted, its records not read;
//! - answers: `Bearer` in any case, a permanent refusal as a 4xx without the database's text,
//!   rows without an expiry given `ExpireAtDays`, `ping` and `check` failing when the relay's
//!   own login fails, and a bare token (no service name) refused at start-up.
//!
//! Where the center keeps a job's state (what the relay reads before it takes a result):
//! Hangfire.PostgreSql `src/Hangfire.PostgreSql/Scripts/Install.v*.sql` (`job.statename`),
//! Hangfire.MySqlStorage `Hangfire.MySql/Install.sql` (`Job.StateName`),
//! Hangfire.Redis.StackExchange `RedisWriteOnlyTransaction.cs` (`SetJobState`: hash
//! `job:<id>`, field `State`); see `tests::relay::job_in_state`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::relay::{Relay, job_in_state, relay_binary};
use tests::replica::Replica;
use tests::stores::{AnyStore, Backing, Table};

const BILLING: &str = "billing:b1ll1ng-s3cret-t0ken";
const MAILER: &str = "mailer:ma1ler-s3cret-t0ken";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// A tokens file granting both services the shared lock `shared:*`.
fn tokens_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "jobagent-relay-tenants-{}-{}.tokens",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let text = format!(
        "# service:secret [lock=<name or prefix*>]...\n{BILLING} lock=shared:*\n\n{MAILER} lock=shared:*  # the mailer\n"
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// One relay in front of `db` serving billing and mailer (from a tokens file), checking
/// results against the center's jobs.
fn two_tenants(db: &AnyStore) -> Relay {
    let tokens = tokens_file();
    let relay = Relay::start_checked(
        db,
        &[("JOBAGENT_RELAY_TOKENS_FILE", tokens.display().to_string())],
    );
    // Read once, before the relay says where it listens: the secrets leave the disk now.
    let _ = std::fs::remove_file(&tokens);
    relay
}

async fn post_auth(relay: &Relay, op: &str, authorization: &str, body: &Value) -> (u16, String) {
    let reply = reqwest::Client::new()
        .post(relay.endpoint(op))
        .header("authorization", authorization)
        .json(body)
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the relay did not answer: {e}"));
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap_or_default())
}

async fn post(relay: &Relay, op: &str, token: &str, body: &Value) -> (u16, String) {
    post_auth(relay, op, &format!("Bearer {token}"), body).await
}

/// `post` expecting 200; the answer's JSON.
async fn call(relay: &Relay, op: &str, token: &str, body: &Value) -> Value {
    let (status, text) = post(relay, op, token, body).await;
    assert_eq!(status, 200, "{op} {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{op}: {e}: {text}"))
}

fn member(instance: &str, server_id: &str) -> Value {
    json!({"instance": instance, "server_id": server_id})
}

/// Locks: the center's own are refused; another service's live lock is not broken by a stale
/// period of 0, nor a shared one both may take; on Redis nothing lands in Hangfire's keys.
async fn locks(db: AnyStore) {
    let relay = two_tenants(&db);
    // The center holds its recurring-job lock, as Hangfire does.
    let center = db
        .dotnet_lock("hangfire:recurring-jobs:lock", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the center's lock: {e}"));
    let (status, body) = post(
        &relay,
        "lock_try",
        MAILER,
        &json!({"resource": "hangfire:recurring-jobs:lock", "stale_ms": 0}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        &relay,
        "lock_keep",
        MAILER,
        &json!({"resource": "hangfire:locks:schedulepoller", "owner": "x"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    center.release().await;

    // Billing holds its nightly lock; the mailer asks for the same name with stale_ms 0: it
    // gets a lock of its own namespace, and billing's is still held.
    for resource in ["nightly", "shared:report"] {
        let owner = call(
            &relay,
            "lock_try",
            BILLING,
            &json!({"resource": resource, "stale_ms": 600_000}),
        )
        .await;
        assert!(owner.is_string(), "billing takes {resource}: {owner}");
        let (status, body) = post(
            &relay,
            "lock_try",
            MAILER,
            &json!({"resource": resource, "stale_ms": 0}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if resource.starts_with("shared:") {
            // Granted to both: one lock, and a stale period of 0 does not break billing's.
            assert_eq!(body, "null", "the mailer took billing's live {resource}");
        }
        let kept = call(
            &relay,
            "lock_keep",
            BILLING,
            &json!({"resource": resource, "owner": owner}),
        )
        .await;
        assert!(
            kept.is_string(),
            "billing lost its {resource} lock to the mailer: {kept}"
        );
    }

    // On Redis a lock is a key under Hangfire's prefix: a resource named like one of
    // Hangfire's keys must not become one.
    let (status, body) = post(
        &relay,
        "lock_try",
        MAILER,
        &json!({"resource": "job:424242", "stale_ms": 0}),
    )
    .await;
    assert!(status == 200 || status == 403, "{status} {body}");
    if let Backing::Redis(r) = db.backing() {
        let key = format!("{}job:424242", r.prefix());
        let mut conn = r.connection();
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("EXISTS: {e}"));
        assert_eq!(n, 0, "{key} was created by a lock");
    }
}

/// Results: the mailer cannot mark billing's dispatch in advance (billing's real agent, behind
/// the same relay, then reports it), cannot forge the result of a finished job, and cannot
/// read billing's result.
async fn results(db: AnyStore) {
    let relay = two_tenants(&db);
    // Hangfire's ids are sequential: the mailer marks the next one before it exists.
    let (status, body) = post(
        &relay,
        "first_report",
        MAILER,
        &json!({"id": "424243", "token": "evil"}),
    )
    .await;
    assert_ne!(status, 200, "a dispatch was marked in advance: {body}");
    // The center creates the job and dispatches it to billing's agent.
    job_in_state(&db, "424243", "Processing").await;
    let (status, body) = post(
        &relay,
        "first_report",
        MAILER,
        &json!({"id": "424243", "token": "evil"}),
    )
    .await;
    // Marks are per service: once the job is Processing the mailer may mark it in its own
    // namespace, which does not stop billing's agent from reporting it.
    assert!(status == 200 || status == 409, "{status} {body}");
    let agent = Replica::start(
        "billing-agent",
        &[
            ("JOBAGENT_STORE", relay.url()),
            ("JOBAGENT_RELAY_TOKEN", BILLING.to_owned()),
        ],
    )
    .await;
    let console = ConsoleInfo::for_job("424243");
    agent
        .center()
        .run(TRANSIENT, "424243")
        .param(json!({"lines": 3}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = db.wait_result("424243", Duration::from_secs(30)).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert_eq!(db.result_fields("424243").await.len(), 1);

    // A finished job's result is not forged.
    job_in_state(&db, "424244", "Succeeded").await;
    let forged = json!({"key": "_agent_result_424244", "pairs": [["1", "{\"R\":\"err\"}"]], "life_secs": 60});
    let (status, body) = post(&relay, "set_hash", MAILER, &forged).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        &relay,
        "add_to_set",
        MAILER,
        &json!({"key": "_agent_result_", "value": "424244", "score": 1.0}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(db.hash_rows("_agent_result_424244").await.is_empty());
    // Nor one for a job that does not exist.
    let (status, body) = post(
        &relay,
        "set_hash",
        MAILER,
        &json!({"key": "_agent_result_999999", "pairs": [["1", "x"]], "life_secs": 60}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(db.hash_rows("_agent_result_999999").await.is_empty());
    // The same through `result` (the mark and the result in one call, as agents write
    // them now): a job that does not exist is refused, a finished one is not written, a
    // field that is no elapsed time is refused.
    let result = |id: &str, field: &str| json!({"id": id, "token": "evil", "field": field, "value": "{\"R\":\"err\"}"});
    let (status, body) = post(&relay, "result", MAILER, &result("999998", "1")).await;
    assert_eq!(status, 409, "{body}");
    assert!(db.hash_rows("_agent_result_999998").await.is_empty());
    let (status, body) = post(&relay, "result", MAILER, &result("424244", "1")).await;
    assert_eq!((status, body.as_str()), (200, "false"));
    assert!(db.hash_rows("_agent_result_424244").await.is_empty());
    let (status, body) = post(&relay, "result", MAILER, &result("424243", "1; DROP")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(db.result_fields("424243").await.len(), 1);

    // Billing's result is for the services that reported it to read (the mailer marked it
    // in its own namespace above; service `other` never did).
    let read = json!({"key": "_agent_result_424243"});
    let (status, body) = post(&relay, "read_hash_all", "other:other-token", &read).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "[]"),
        "another service read billing's result"
    );
    let (status, body) = post(
        &relay,
        "read_set",
        MAILER,
        &json!({"key": "_agent_result_", "count": 10}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let mine = call(&relay, "read_hash_all", BILLING, &read).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
}

/// Cluster records: with the mailer's token, billing's replica is not stopped, its singleton
/// not claimed, its runs not listed, its instance names not squatted, its records not read.
async fn cluster(db: AnyStore) {
    let relay = two_tenants(&db);
    let billing_1 = member("billing-1", "b1-process");
    let evil = member("evil", "evil-process");
    // billing-1 runs job 101 of its singleton class.
    let run = json!({"op": "record_run", "me": billing_1, "job_id": "101",
        "record": {"Class": "app::Nightly", "ServerId": "b1-process", "Started": 1, "Action": "run"}});
    call(&relay, "cluster", BILLING, &run).await;
    let claimed = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "claim", "me": billing_1, "class": "app::Nightly", "job_id": "101"}),
    )
    .await;
    assert!(claimed.get("Yes").is_some(), "{claimed}");

    // The mailer sends billing-1 a stop: billing-1 finds no command.
    let stop = json!({"op": "send_command", "instance": "billing-1",
        "command": {"Action": "stop", "Class": "app::Nightly", "JobId": "101", "StopId": "9"}});
    call(&relay, "cluster", MAILER, &stop).await;
    let commands = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "take_commands", "me": billing_1}),
    )
    .await;
    assert_eq!(commands, json!([]), "the mailer stopped billing's run");

    // The mailer lists runs of billing's class: none.
    let runs = call(
        &relay,
        "cluster",
        MAILER,
        &json!({"op": "remote_runs", "me": evil, "class": "app::Nightly"}),
    )
    .await;
    assert_eq!(runs, json!([]), "the mailer listed billing's runs");
    // ...while billing-2 sees billing-1's run, named as billing knows it.
    let runs = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "remote_runs", "me": member("billing-2", "b2"), "class": "app::Nightly"}),
    )
    .await;
    assert_eq!(runs[0]["instance"], "billing-1", "{runs}");
    assert_eq!(runs[0]["record"]["Class"], "app::Nightly", "{runs}");

    // A forged claim of billing's next singleton: billing still claims it.
    call(
        &relay,
        "cluster",
        MAILER,
        &json!({"op": "claim", "me": evil, "class": "app::Report", "job_id": "666"}),
    )
    .await;
    let claimed = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "claim", "me": billing_1, "class": "app::Report", "job_id": "102"}),
    )
    .await;
    assert!(
        claimed.get("Yes").is_some(),
        "billing's singleton is held by the mailer: {claimed}"
    );
    let of = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "claim_of", "class": "app::Report"}),
    )
    .await;
    assert_eq!(of[0]["Instance"], "billing-1", "{of}");

    // The mailer squats billing's unused instance name: billing-2 still starts under it.
    call(
        &relay,
        "cluster",
        MAILER,
        &json!({"op": "hold_lease", "me": member("billing-2", "evil-process")}),
    )
    .await;
    let lease = call(
        &relay,
        "cluster",
        BILLING,
        &json!({"op": "hold_lease", "me": member("billing-2", "b2-process")}),
    )
    .await;
    assert_eq!(lease, json!("Held"), "billing-2's name was squatted");

    // The mailer reads the cluster's records directly: refused.
    let (status, body) = post(
        &relay,
        "read_hash_all",
        MAILER,
        &json!({"key": "jobagent:replicas"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("billing-1"), "{body}");
}

/// The relay's answers: the scheme in any case; a permanent refusal is a 4xx without the
/// database's text; a row sent without an expiry gets ExpireAtDays.
async fn answers(db: AnyStore) {
    let relay = two_tenants(&db);
    let heart = json!({"key": "AgentHeart:s1", "pairs": [["a", "b"]], "life_secs": null});
    let (status, body) = post_auth(&relay, "set_hash", &format!("bearer {BILLING}"), &heart).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_auth(&relay, "set_hash", &format!("BEARER {BILLING}"), &heart).await;
    assert_eq!(status, 200, "{body}");
    // Without an expiry: the store's ExpireAtDays (7 days), not for ever.
    let ahead = db.expiry_ahead(Table::Hash, "AgentHeart:s1").await;
    assert!(
        ahead
            .iter()
            .all(|a| a.is_some_and(|s| s > 6.9 * 86_400.0 && s <= 7.0 * 86_400.0 + 60.0)),
        "{ahead:?}"
    );
    // Each store's permanent refusal of what it is sent: PostgreSQL refuses a NUL in text,
    // MySQL a field longer than its `Field nvarchar(40)`, Redis a hash write to a set's key.
    let (bad, words) = match db.backing() {
        Backing::Pg(_) => (
            json!({"key": "AgentHeart:s2", "pairs": [["a", "b\u{0}c"]], "life_secs": 60}),
            ["UTF8", "0x00"],
        ),
        Backing::Mysql(_) => (
            json!({"key": "AgentHeart:s2", "pairs": [["f".repeat(60), "b"]], "life_secs": 60}),
            ["too long", "Field"],
        ),
        Backing::Redis(_) => {
            call(
                &relay,
                "add_to_set",
                BILLING,
                &json!({"key": "console:s2", "value": "v", "score": 1.0}),
            )
            .await;
            (
                json!({"key": "console:s2", "pairs": [["a", "b"]], "life_secs": 60}),
                ["WRONGTYPE", "kind of value"],
            )
        }
    };
    let (status, body) = post(&relay, "set_hash", BILLING, &bad).await;
    assert!(
        (400..500).contains(&status),
        "a permanent refusal answered {status}: {body}"
    );
    for w in words {
        assert!(
            !body.contains(w),
            "the database's text in the answer: {body}"
        );
    }
}

/// `ping` and `check` fail when the store refuses the relay's own login.
#[tokio::test(flavor = "multi_thread")]
async fn ping_and_check_fail_when_the_relays_login_fails() {
    let db = AnyStore::postgresql().await;
    let (connection, _, _) = db.direct();
    // The same server and database, as a role that does not exist.
    let wrong: String = connection
        .split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("username") => {
                "Username=no_such_role_27".to_owned()
            }
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";");
    assert_ne!(wrong, connection, "the connection string names no Username");
    let relay = Relay::start_checked(
        &db,
        &[
            ("JOBAGENT_RELAY_STORE", wrong),
            ("JOBAGENT_RELAY_TOKENS", BILLING.to_owned()),
        ],
    );
    for op in ["ping", "check"] {
        let (status, body) = post(&relay, op, BILLING, &json!(null)).await;
        assert_ne!(status, 200, "{op}: {body}");
        assert!(!body.contains("no_such_role_27"), "{op}: {body}");
    }
}

/// A token without a service name (the form before tokens were tenants) is refused at start-up,
/// saying the new form, and the secret is not echoed.
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_token_is_refused_at_start_up() {
    let db = AnyStore::postgresql().await;
    let (connection, kind, prefix) = db.direct();
    let mut child = std::process::Command::new(relay_binary())
        .env("JOBAGENT_RELAY_LISTEN", "127.0.0.1:0")
        .env("JOBAGENT_RELAY_STORE", connection)
        .env("JOBAGENT_RELAY_STORE_TYPE", kind.name())
        .env("JOBAGENT_RELAY_STORE_SCHEMA", prefix)
        .env("JOBAGENT_RELAY_TOKENS", "a-bare-s3cret-token")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start jobagent-relay: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = status.unwrap_or_else(|| panic!("the relay started with a bare token"));
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(stderr.contains("<service>:<secret>"), "{stderr}");
    assert!(!stderr.contains("a-bare-s3cret-token"), "{stderr}");
}

/// Requests with a wrong token are logged as a count, not one line each, and the tried tokens
/// are not logged.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_tokens_are_logged_as_counts() {
    let db = AnyStore::postgresql().await;
    let relay = Relay::start_checked(
        &db,
        &[
            ("JOBAGENT_RELAY_TOKENS", BILLING.to_owned()),
            ("JOBAGENT_RELAY_REFUSED_LOG_SECS", "1".to_owned()),
        ],
    );
    for i in 0..40 {
        let (status, body) = post(&relay, "ping", &format!("guess-{i}"), &json!(null)).await;
        assert_eq!(status, 401, "{body}");
    }
    let counted = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("wrong relay token"))
            .filter_map(|l| {
                l.split("refused=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while counted(&relay.log_text()) < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = relay.log_text();
    assert_eq!(counted(&log), 40, "{log}");
    let lines = log
        .lines()
        .filter(|l| l.contains("wrong relay token"))
        .count();
    assert!(lines <= 5, "one line per attempt: {log}");
    assert!(!log.contains("guess-"), "a tried token was logged: {log}");
}

tests::on_every_store! {
    a_token_takes_no_lock_but_its_own => locks;
    a_token_marks_forges_and_reads_no_other_result => results;
    a_token_reaches_no_other_service_cluster_records => cluster;
    the_relay_answers_what_a_caller_can_act_on => answers;
}
