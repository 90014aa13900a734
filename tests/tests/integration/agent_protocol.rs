//! The agent's HTTP protocol (PROTOCOL.md sections 1–4), driven over real HTTP with
//! requests built exactly as the Hangfire.HttpJob center builds them, asserting what the
//! center (and its user) sees: status codes, `err:` bodies, the `,JobId:` tail of 501s, the
//! `agentServerId` header and cookie on every answer, and `text/plain`.
//!
//! Every request goes through `TestService::center()`, which also checks the header, cookie
//! and content type on every single reply.

use std::time::{Duration, Instant};

use jobagent::AgentOptions;
use reqwest::Method;
use serde_json::json;
use tests::center::{Center, Reply, Storage, b64, headers};
use tests::service::TestService;

const TEST_JOB: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const HANG: &str = "example_agent::jobs::TestHangJob";
const CLEANUP: &str = "MsgDevOps.Job.CleanupJob,MsgDevOps";

/// How long a state change may take before a test fails.
const WAIT: Duration = Duration::from_secs(5);

/// A job that runs until stopped (or for a long time).
fn long() -> serde_json::Value {
    json!({"sleep_ms": 30_000})
}

async fn wait_status(center: &Center, class: &str, status: &str) -> Reply {
    center
        .wait_detail(class, WAIT, |r| r.is_ok() && r.has_word(status))
        .await
}

/// Waits until a transient class has no instance left (detail answers 500).
async fn wait_no_instances(center: &Center, class: &str) -> Reply {
    center.wait_detail(class, WAIT, |r| r.status == 500).await
}

fn lower(reply: &Reply) -> String {
    reply.body.to_lowercase()
}

#[track_caller]
fn assert_mentions(reply: &Reply, words: &[&str]) {
    let body = lower(reply);
    for w in words {
        assert!(
            body.contains(&w.to_lowercase()),
            "the answer should mention `{w}`: {:?}",
            reply.body
        );
    }
}

// ---------------------------------------------------------------------------------------
// The response table of section 2, row by row.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn run_is_accepted_and_names_the_class() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(TEST_JOB, "101")
        .param(json!({"sleep_ms": 30_000, "lines": 2}))
        .send()
        .await;
    reply.assert_status(200);
    assert!(!reply.is_err_body(), "{reply:?}");
    assert!(reply.body.contains(TEST_JOB), "{reply:?}");

    let detail = c.detail(TEST_JOB).send().await;
    detail.assert_status(200);
    assert!(detail.has_word("Running"), "{detail:?}");
    assert!(
        detail.body.contains("101"),
        "detail names the run: {detail:?}"
    );
    assert!(
        detail.body.contains(r#""sleep_ms":30000"#),
        "detail shows the parameter: {detail:?}"
    );
}

#[tokio::test]
async fn stop_is_accepted_and_the_run_ends() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.run(TEST_JOB, "111")
        .param(long())
        .send()
        .await
        .assert_status(200);
    wait_status(&c, TEST_JOB, "Running").await;
    let stop = c.stop(TEST_JOB, "112").send().await;
    stop.assert_status(200);
    assert!(!stop.is_err_body(), "{stop:?}");
    assert!(stop.body.contains(TEST_JOB), "{stop:?}");
    let detail = wait_status(&c, TEST_JOB, "Stopped").await;
    assert!(!detail.has_word("Running"), "{detail:?}");
}

#[tokio::test]
async fn detail_describes_a_singleton_before_during_and_after_a_run() {
    let svc = TestService::start().await;
    let c = svc.center();

    let before = c.detail(TEST_JOB).send().await;
    before.assert_status(200);
    assert!(before.body.contains(TEST_JOB), "{before:?}");
    assert!(before.has_word("Default"), "never ran: {before:?}");
    assert!(lower(&before).contains("singleton"), "kind: {before:?}");

    c.run(TEST_JOB, "121")
        .param(json!({"sleep_ms": 200}))
        .send()
        .await
        .assert_status(200);
    let during = c.detail(TEST_JOB).send().await;
    during.assert_status(200);
    assert!(during.has_word("Running"), "{during:?}");
    assert!(during.body.contains(r#"{"sleep_ms":200}"#), "{during:?}");
    assert!(lower(&during).contains("start"), "start time: {during:?}");

    let after = wait_status(&c, TEST_JOB, "Stopped").await;
    assert!(after.body.contains("121"), "the last run: {after:?}");
    assert!(lower(&after).contains("end"), "last end time: {after:?}");
    assert!(after.body.contains(TEST_JOB), "{after:?}");
}

#[tokio::test]
async fn heartbeat_answers_200_with_an_empty_body() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c.heartbeat().send().await;
    reply.assert_status(200);
    assert_eq!(reply.body, "");
    // Renewing is answered the same way.
    let again = c.heartbeat().send().await;
    again.assert_status(200);
    assert_eq!(again.body, "");
}

#[tokio::test]
async fn singleton_run_while_running_is_501_with_the_running_job_id() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.run(TEST_JOB, "201")
        .param(long())
        .send()
        .await
        .assert_status(200);
    for refused_id in ["202", "203"] {
        let busy = c.run(TEST_JOB, refused_id).param(long()).send().await;
        busy.assert_err(501);
        assert_eq!(
            busy.busy_job_id(),
            Some("201"),
            "the center splits the body on `,JobId:`: {busy:?}"
        );
        assert!(busy.body.ends_with(",JobId:201"), "{busy:?}");
    }
    // The refused runs did not replace the running one.
    let detail = c.detail(TEST_JOB).send().await;
    assert!(
        detail.body.contains("201") && !detail.body.contains("203"),
        "{detail:?}"
    );

    c.stop(TEST_JOB, "204").send().await.assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
    c.run(TEST_JOB, "205")
        .param(long())
        .send()
        .await
        .assert_status(200);
}

#[tokio::test]
async fn stop_of_a_stopped_singleton_is_501_with_the_last_run_id() {
    let svc = TestService::start().await;
    let c = svc.center();

    // A run that ended by itself.
    c.run(TEST_JOB, "301")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
    let stop = c.stop(TEST_JOB, "302").send().await;
    stop.assert_err(501);
    assert_eq!(stop.busy_job_id(), Some("301"), "{stop:?}");

    // A run that was stopped.
    c.run(TEST_JOB, "303")
        .param(long())
        .send()
        .await
        .assert_status(200);
    c.stop(TEST_JOB, "304").send().await.assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
    let stop = c.stop(TEST_JOB, "305").send().await;
    stop.assert_err(501);
    assert_eq!(stop.busy_job_id(), Some("303"), "{stop:?}");
}

#[tokio::test]
async fn stop_of_a_never_run_singleton_is_accepted() {
    let svc = TestService::start().await;
    let c = svc.center();
    let stop = c.stop(TEST_JOB, "401").send().await;
    stop.assert_status(200);
    assert!(!stop.is_err_body(), "{stop:?}");
    // It did not start anything.
    let detail = c.detail(TEST_JOB).send().await;
    assert!(!detail.has_word("Running"), "{detail:?}");
}

#[tokio::test]
async fn transient_runs_side_by_side_and_stop_stops_them_all() {
    let svc = TestService::start().await;
    let c = svc.center();
    let (a, b, d) = tokio::join!(
        c.run(TRANSIENT, "501").param(long()).send(),
        c.run(TRANSIENT, "502").param(long()).send(),
        c.run(TRANSIENT, "503").param(long()).send(),
    );
    for r in [&a, &b, &d] {
        r.assert_status(200);
        assert!(r.body.contains(TRANSIENT), "{r:?}");
    }

    let detail = c.detail(TRANSIENT).send().await;
    detail.assert_status(200);
    assert!(lower(&detail).contains("transient"), "kind: {detail:?}");
    assert!(detail.has_word("3"), "the number of instances: {detail:?}");
    for id in ["501", "502", "503"] {
        assert!(detail.body.contains(id), "instance {id} listed: {detail:?}");
    }
    assert!(detail.has_word("Running"), "{detail:?}");

    let stop = c.stop(TRANSIENT, "504").send().await;
    stop.assert_status(200);
    assert!(!stop.is_err_body(), "{stop:?}");
    assert!(stop.has_word("3"), "stop answers how many: {stop:?}");

    let gone = wait_no_instances(&c, TRANSIENT).await;
    gone.assert_err(500);
    let stop = c.stop(TRANSIENT, "505").send().await;
    stop.assert_err(500);
    assert!(stop.body.contains(TRANSIENT), "{stop:?}");
}

#[tokio::test]
async fn transient_with_nothing_running_refuses_stop_and_detail_with_500() {
    let svc = TestService::start().await;
    let c = svc.center();
    let stop = c.stop(TRANSIENT, "511").send().await;
    stop.assert_err(500);
    assert!(stop.body.contains(TRANSIENT), "{stop:?}");
    let detail = c.detail(TRANSIENT).send().await;
    detail.assert_err(500);
    assert!(detail.body.contains(TRANSIENT), "{detail:?}");

    // A run that ended by itself leaves nothing running either.
    c.run(TRANSIENT, "512")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);
    wait_no_instances(&c, TRANSIENT).await.assert_err(500);
    c.stop(TRANSIENT, "513").send().await.assert_err(500);
}

#[tokio::test]
async fn every_answer_carries_the_agent_id_as_header_and_cookie_and_is_text_plain() {
    let svc = TestService::start().await;
    let other = TestService::start().await;
    let id = svc.agent().server_id().to_owned();
    assert!(!id.is_empty());
    assert_ne!(id, other.agent().server_id(), "each agent has its own id");

    // Center::new without `expect_agent`: check by hand here.
    let c = Center::new(svc.agent_url());
    let replies = vec![
        c.run(TEST_JOB, "601").param(long()).send().await, // 200
        c.run(TEST_JOB, "602").param(long()).send().await, // 501
        c.detail(TEST_JOB).send().await,                   // 200
        c.stop(TEST_JOB, "603").send().await,              // 200
        c.heartbeat().send().await,                        // 200, empty
        c.run("No.Such.Job", "604").send().await,          // 500
        c.detail(TRANSIENT).send().await,                  // 500
        c.run(TEST_JOB, "605")
            .remove_header(headers::ACTION)
            .send()
            .await, // 500
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 501, 200, 200, 200, 500, 500, 500]);
    for r in &replies {
        r.assert_marked(&id);
    }
}

// ---------------------------------------------------------------------------------------
// Job kinds and run lifecycles (section 3).
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hang_job_stays_running_after_on_start_returns_until_stopped() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.run(HANG, "701").send().await.assert_status(200);

    // on_start returns at once; the run must stay Running for as long as we look.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let d = c.detail(HANG).send().await;
        d.assert_status(200);
        assert!(d.has_word("Running"), "hang job must stay Running: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = c.run(HANG, "702").send().await;
    busy.assert_err(501);
    assert_eq!(busy.busy_job_id(), Some("701"), "{busy:?}");

    c.stop(HANG, "703").send().await.assert_status(200);
    wait_status(&c, HANG, "Stopped").await;
    c.run(HANG, "704").send().await.assert_status(200);
    wait_status(&c, HANG, "Running").await;
}

#[tokio::test]
async fn agent_timeout_ends_a_run_and_a_new_run_is_accepted() {
    let svc = TestService::start().await;
    let c = svc.center();
    let started = Instant::now();
    c.run(TEST_JOB, "801")
        .param(long())
        .timeout_ms(300)
        .send()
        .await
        .assert_status(200);
    let during = c.detail(TEST_JOB).send().await;
    assert!(during.has_word("Running"), "{during:?}");
    wait_status(&c, TEST_JOB, "Stopped").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290),
        "the run ended before its AgentTimeout of 300 ms: {took:?}"
    );
    c.run(TEST_JOB, "802")
        .param(long())
        .send()
        .await
        .assert_status(200);
    let detail = wait_status(&c, TEST_JOB, "Running").await;
    assert!(detail.body.contains("802"), "{detail:?}");
}

#[tokio::test]
async fn agent_timeout_zero_means_no_limit() {
    // Asserted on the result the center reads, not on a status that a run cut short reaches
    // too: a run with AgentTimeout 0 ends well after its full time, while the same run with a
    // limit shorter than its time is reported as timed out (so the limit is applied at all).
    let db = tests::pg::TestDb::new().await;
    let svc = TestService::start_with(
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .instance("timeout-zero"),
    )
    .await;
    let c = svc.center();
    let sent = Instant::now();
    c.run(TRANSIENT, "811")
        .param(json!({"sleep_ms": 1500}))
        .timeout_ms(0)
        .send()
        .await
        .assert_status(200);
    let result = tests::wait::result(&db, "811", Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert!(sent.elapsed() >= Duration::from_millis(1500), "{result}");
    c.run(TRANSIENT, "812")
        .param(json!({"sleep_ms": 1500}))
        .timeout_ms(300)
        .send()
        .await
        .assert_status(200);
    let result = tests::wait::result(&db, "812", Duration::from_secs(10)).await;
    assert_eq!(result["R"], "err", "{result}");
    assert!(
        result["E"].as_str().unwrap_or_default().contains("time"),
        "{result}"
    );
}

#[tokio::test]
async fn panicking_run_does_not_take_the_agent_down() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.run(TEST_JOB, "901")
        .param(json!({"panic": true}))
        .send()
        .await
        .assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
    // The next request is served and the singleton runs again.
    c.run(TEST_JOB, "902")
        .param(long())
        .send()
        .await
        .assert_status(200);
    let d = wait_status(&c, TEST_JOB, "Running").await;
    assert!(d.body.contains("902"), "{d:?}");

    // A panicking transient instance is removed too.
    c.run(TRANSIENT, "903")
        .param(json!({"panic": true, "lines": 1}))
        .send()
        .await
        .assert_status(200);
    wait_no_instances(&c, TRANSIENT).await;
    c.heartbeat().send().await.assert_status(200);
}

#[tokio::test]
async fn failing_run_ends_and_the_singleton_runs_again() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.run(TEST_JOB, "911")
        .param(json!({"fail": true}))
        .send()
        .await
        .assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
    c.run(TEST_JOB, "912")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_runs_on_a_singleton_get_exactly_one_200_and_one_501() {
    let svc = TestService::start().await;
    let c = svc.center();
    for round in 0..25 {
        let (a, b) = (format!("{round}-a"), format!("{round}-b"));
        let ta = tokio::spawn(c.run(TEST_JOB, &a).param(long()).send());
        let tb = tokio::spawn(c.run(TEST_JOB, &b).param(long()).send());
        let (ra, rb) = (ta.await.expect("run a"), tb.await.expect("run b"));
        let (winner, loser) = match (ra.status, rb.status) {
            (200, 501) => (&a, &rb),
            (501, 200) => (&b, &ra),
            other => {
                panic!("round {round}: expected one 200 and one 501, got {other:?}: {ra:?} {rb:?}")
            }
        };
        loser.assert_err(501);
        assert_eq!(loser.busy_job_id(), Some(winner.as_str()), "round {round}");
        c.stop(TEST_JOB, &format!("{round}-stop"))
            .send()
            .await
            .assert_status(200);
        wait_status(&c, TEST_JOB, "Stopped").await;
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: 500 `err:` saying what is wrong, and the agent keeps serving.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_refused_with_500_and_the_agent_keeps_serving() {
    let svc = TestService::start().await;
    let c = svc.center();
    let cases = vec![
        (
            "bad base64 in x-job-body",
            c.run(TEST_JOB, "1001")
                .set_header(headers::BODY, "%%% not base64 %%%"),
            vec!["x-job-body"],
        ),
        (
            "bad JSON in x-job-body",
            c.run(TEST_JOB, "1002")
                .set_header(headers::BODY, b64("{\"JobName\": ")),
            vec!["x-job-body"],
        ),
        (
            "x-job-body JSON that is not an object",
            c.run(TEST_JOB, "1003")
                .set_header(headers::BODY, b64("[1,2]")),
            vec!["x-job-body"],
        ),
        (
            "unknown class",
            c.run("No.Such.Job,NoAssembly", "1004"),
            vec!["No.Such.Job"],
        ),
        (
            "unknown action",
            c.dispatch("explode", TEST_JOB, "1005"),
            vec!["explode"],
        ),
        (
            "missing action",
            c.run(TEST_JOB, "1006").remove_header(headers::ACTION),
            vec![headers::ACTION],
        ),
        (
            "missing class",
            c.run(TEST_JOB, "1007").remove_header(headers::CLASS),
            vec![headers::CLASS],
        ),
        (
            "empty class",
            c.run(TEST_JOB, "1008").set_header(headers::CLASS, ""),
            vec![headers::CLASS],
        ),
        (
            "missing x-job-id on run",
            c.run(TEST_JOB, "1009").remove_header(headers::JOB_ID),
            vec![headers::JOB_ID],
        ),
        (
            "missing x-job-id on stop",
            c.stop(TEST_JOB, "1010").remove_header(headers::JOB_ID),
            vec![headers::JOB_ID],
        ),
        (
            "heartbeat without x-job-server",
            c.heartbeat().remove_header(headers::SERVER),
            vec![headers::SERVER],
        ),
        (
            "bad base64 in x-job-storage",
            c.run(TEST_JOB, "1011").set_header(headers::STORAGE, "***"),
            vec![headers::STORAGE],
        ),
        (
            "bad JSON in x-job-storage",
            c.run(TEST_JOB, "1012")
                .storage_json(r#"{"Type":"postgresql","HangfireDb":"Password=hunter2;"#),
            vec![headers::STORAGE],
        ),
    ];
    for (what, request, mentions) in cases {
        let reply = request.send().await;
        assert_eq!(reply.status, 500, "{what}: {reply:?}");
        assert!(reply.is_err_body(), "{what}: {reply:?}");
        let body = lower(&reply);
        for m in mentions {
            assert!(
                body.contains(&m.to_lowercase()),
                "{what}: the answer should mention `{m}`: {reply:?}"
            );
        }
        assert!(!reply.body.contains("hunter2"), "{what}: leaks a secret");
        // Still serving, and the refused dispatch started nothing.
        let d = c.detail(TEST_JOB).send().await;
        d.assert_status(200);
        assert!(
            !d.has_word("Running"),
            "{what}: a refused run started: {d:?}"
        );
    }
    c.run(TEST_JOB, "1013")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_storage_of_another_type_is_refused_with_500() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(TEST_JOB, "1101")
        .storage(&Storage::of_kind(
            "sqlserver",
            "Server=.;Database=hangfire;User Id=sa;Password=hunter2",
        ))
        .param(json!({}))
        .send()
        .await;
    reply.assert_err(500);
    assert_mentions(&reply, &["sqlserver"]);
    assert!(!reply.body.contains("hunter2"), "leaks a secret: {reply:?}");
    let d = c.detail(TEST_JOB).send().await;
    assert!(
        d.has_word("Default"),
        "the refused run must not start: {d:?}"
    );
}

#[tokio::test]
async fn a_postgresql_storage_without_a_connection_string_is_refused_with_500() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(TEST_JOB, "1111")
        .storage(&Storage::postgresql(""))
        .param(json!({}))
        .send()
        .await;
    reply.assert_err(500);
    assert_mentions(&reply, &["storage"]);
    let d = c.detail(TEST_JOB).send().await;
    assert!(
        d.has_word("Default"),
        "the refused run must not start: {d:?}"
    );
}

#[tokio::test]
async fn basic_auth_is_required_when_configured_and_failures_are_500() {
    let svc = TestService::start_with(
        AgentOptions::new()
            .log_only(true)
            .basic_auth("center", "s3cret"),
    )
    .await;
    let c = svc.center();
    let refused = vec![
        ("no auth", c.run(TEST_JOB, "1201").no_auth()),
        (
            "wrong password",
            c.run(TEST_JOB, "1202").basic_auth("center", "guess"),
        ),
        (
            "wrong user",
            c.run(TEST_JOB, "1203").basic_auth("admin", "s3cret"),
        ),
        (
            "not basic",
            c.run(TEST_JOB, "1204")
                .set_header("authorization", "Bearer s3cret"),
        ),
        (
            "garbage token",
            c.run(TEST_JOB, "1205")
                .set_header("authorization", "Basic !!!"),
        ),
        ("heartbeat without auth", c.heartbeat().no_auth()),
        ("detail without auth", c.detail(TEST_JOB).no_auth()),
    ];
    for (what, request) in refused {
        let reply = request.send().await;
        assert_eq!(
            reply.status, 500,
            "{what}: auth failures must be 500, not 401: {reply:?}"
        );
        assert!(reply.is_err_body(), "{what}: {reply:?}");
        assert!(lower(&reply).contains("auth"), "{what}: {reply:?}");
        assert!(!reply.body.contains("s3cret"), "{what}: leaks the password");
    }
    let authed = c.clone().with_basic_auth("center", "s3cret");
    let d = authed.detail(TEST_JOB).send().await;
    d.assert_status(200);
    assert!(d.has_word("Default"), "no refused run started: {d:?}");
    authed
        .run(TEST_JOB, "1206")
        .param(long())
        .send()
        .await
        .assert_status(200);
    authed.heartbeat().send().await.assert_status(200);
    authed
        .stop(TEST_JOB, "1207")
        .send()
        .await
        .assert_status(200);
}

// ---------------------------------------------------------------------------------------
// Request shapes the center produces (section 1).
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn class_with_an_assembly_resolves_by_the_name_before_the_comma() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(CLEANUP, "1301")
        .param(json!({"Hour": 48}))
        .send()
        .await;
    reply.assert_status(200);
    assert!(reply.body.contains("MsgDevOps.Job.CleanupJob"), "{reply:?}");
    c.detail(CLEANUP).send().await.assert_status(200);

    let reply = c
        .run("example_agent::jobs::TestJob,SomeAssembly", "1302")
        .param(long())
        .send()
        .await;
    reply.assert_status(200);
    // It is the same job as the plain class name.
    let d = c.detail(TEST_JOB).send().await;
    assert!(d.has_word("Running") && d.body.contains("1302"), "{d:?}");
    let busy = c.run(TEST_JOB, "1303").param(long()).send().await;
    busy.assert_err(501);
    assert_eq!(busy.busy_job_id(), Some("1302"));
}

#[tokio::test]
async fn class_written_the_dotnet_way_with_spaces_or_full_assembly_name_resolves() {
    // .NET's Type.GetType accepts `Name, Assembly` and assembly-qualified names, so centers
    // configured for the .NET agent may send them.
    let svc = TestService::start().await;
    let c = svc.center();
    let mut refused = Vec::new();
    for (i, class) in [
        "MsgDevOps.Job.CleanupJob, MsgDevOps",
        "MsgDevOps.Job.CleanupJob, MsgDevOps, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null",
        "example_agent::jobs::TestJob, SomeAssembly",
    ]
    .into_iter()
    .enumerate()
    {
        let reply = c
            .run(class, &format!("131{i}"))
            .param(json!({}))
            .send()
            .await;
        if reply.status != 200 {
            refused.push(format!("`{class}` -> {} {}", reply.status, reply.body));
        }
    }
    assert!(
        refused.is_empty(),
        "refused classes:\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn action_names_are_case_insensitive() {
    let svc = TestService::start().await;
    let c = svc.center();
    c.dispatch("RUN", TEST_JOB, "1401")
        .param(long())
        .send()
        .await
        .assert_status(200);
    let d = c.dispatch("Detail", TEST_JOB, "1402").send().await;
    d.assert_status(200);
    assert!(d.has_word("Running"), "{d:?}");
    c.dispatch("STOP", TEST_JOB, "1403")
        .send()
        .await
        .assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
}

#[tokio::test]
async fn any_method_and_a_query_string_are_served() {
    let svc = TestService::start().await;
    let c = svc.center();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ] {
        let d = c
            .detail(TEST_JOB)
            .method(method.clone())
            .query("5f1c0d2e-1b7a-4c1e-9f43-0a8b6c3d2e1f&x=1")
            .send()
            .await;
        d.assert_status(200);
        assert!(d.body.contains(TEST_JOB), "{method}: {d:?}");
    }
    let head = c.detail(TEST_JOB).method(Method::HEAD).send().await;
    head.assert_status(200);

    let run = c
        .run(TEST_JOB, "1501")
        .method(Method::GET)
        .query("a=1")
        .param(long())
        .send()
        .await;
    run.assert_status(200);
    let hb = c.heartbeat().method(Method::PUT).send().await;
    hb.assert_status(200);
    assert_eq!(hb.body, "");
}

#[tokio::test]
async fn the_center_item_with_every_field_and_extra_headers_is_accepted() {
    let svc = TestService::start().await;
    let c = svc.center();
    let reply = c
        .run(TEST_JOB, "1601")
        .param(json!({"lines": 3, "sleep_ms": 30}))
        .header("tenant", "acme")
        .header("trace-id", "t-1")
        .item_field("JobName", json!("清理过期消息"))
        .item_field("Cron", json!("0 3 * * *"))
        .item_field("TimeZone", json!("China Standard Time"))
        .item_field(
            "DingTalk",
            json!({"Token": "x", "AtPhones": "13800000000", "IsAtAll": true}),
        )
        .item_field("SomethingNew", json!({"nested": [1, 2]}))
        .item_field("AgentTimeout", json!("5000"))
        .send()
        .await;
    reply.assert_status(200);
    wait_status(&c, TEST_JOB, "Stopped").await;
}

#[tokio::test]
async fn a_custom_path_is_served_instead_of_the_default() {
    let svc = TestService::start_with(AgentOptions::new().log_only(true).path("/jobs/agent")).await;
    assert!(svc.agent_url().ends_with("/jobs/agent"));
    let c = svc.center();
    c.detail(TEST_JOB).send().await.assert_status(200);
    c.run(TEST_JOB, "1701")
        .param(json!({}))
        .send()
        .await
        .assert_status(200);
    c.heartbeat().send().await.assert_status(200);

    let default = Center::new(format!("{}/jobagent", svc.base_url()));
    let reply = default.detail(TEST_JOB).send().await;
    assert_eq!(
        reply.status, 404,
        "the default path is not the agent: {reply:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_cancels_running_jobs_and_refuses_new_runs() {
    let bound = Duration::from_secs(3);
    let svc =
        TestService::start_with(AgentOptions::new().log_only(true).shutdown_timeout(bound)).await;
    let c = svc.center();
    c.run(TEST_JOB, "1801")
        .param(long())
        .send()
        .await
        .assert_status(200);
    c.run(TRANSIENT, "1802")
        .param(long())
        .send()
        .await
        .assert_status(200);
    c.run(TRANSIENT, "1803")
        .param(long())
        .send()
        .await
        .assert_status(200);
    c.run(HANG, "1804").send().await.assert_status(200);
    assert_eq!(svc.agent().running(), 4);

    let started = Instant::now();
    tokio::time::timeout(bound + Duration::from_secs(2), svc.agent().shutdown())
        .await
        .expect("shutdown returns within its bound");
    let took = started.elapsed();
    assert!(
        took < bound,
        "jobs that honour cancellation end before the bound: {took:?}"
    );
    assert_eq!(svc.agent().running(), 0, "every job was cancelled");

    let d = c.detail(TEST_JOB).send().await;
    d.assert_status(200);
    assert!(d.has_word("Stopped"), "{d:?}");
    for (class, id) in [(TEST_JOB, "1805"), (TRANSIENT, "1806"), (HANG, "1807")] {
        let refused = c.run(class, id).param(long()).send().await;
        refused.assert_err(500);
        assert_mentions(&refused, &["shutting down"]);
    }
    assert_eq!(svc.agent().running(), 0);
    svc.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stopping_the_service_shuts_the_agent_down_within_the_bound() {
    let bound = Duration::from_secs(3);
    let svc =
        TestService::start_with(AgentOptions::new().log_only(true).shutdown_timeout(bound)).await;
    let c = svc.center();
    c.run(TEST_JOB, "1901")
        .param(long())
        .send()
        .await
        .assert_status(200);
    c.run(HANG, "1902").send().await.assert_status(200);
    let agent = svc.agent().clone();
    let url = svc.agent_url();
    let took = svc.shutdown(bound + Duration::from_secs(2)).await;
    assert!(took < bound, "{took:?}");
    assert_eq!(agent.running(), 0);
    let after = Center::new(url).detail(TEST_JOB).try_send().await;
    assert!(after.is_err(), "the server is gone: {after:?}");
}
