//! The center as people really deploy it (issue 11): no store in the request, one
//! `agentServerId` behind one URL, the stop's own console, `AgentTimeout` over a hang job's
//! wait, answers within the center's HTTP timeout, and auto-registration of every job.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobagent::{Agent, AgentOptions, JobAgent, JobContext, JobError, job_agent};
use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::pg::TestDb;
use tests::proxy::Proxy;
use tests::replica::Replica;
use tests::service::TestService;
use tests::wait;

const SINGLETON: &str = "example_agent::jobs::TestJob";
const HANG: &str = "example_agent::jobs::TestHangJob";
const STOP_ECHO: &str = "integration::deployed_center::StopEchoJob";

/// The stop ids `StopEchoJob::on_stop` ran for.
static ON_STOP_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn on_stop_calls(prefix: &str) -> usize {
    ON_STOP_CALLS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|id| id.starts_with(prefix))
        .count()
}

/// Runs until stopped; its `on_stop` writes the id it was given to the console it was given,
/// then takes 800 ms to wind down, so the run stays Stopping for a while.
#[job_agent]
#[derive(Default)]
struct StopEchoJob;

impl JobAgent for StopEchoJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        cx.cancelled().await;
        Ok(())
    }

    async fn on_stop(&self, cx: &JobContext) -> Result<(), JobError> {
        ON_STOP_CALLS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cx.job_id().to_owned());
        let why: String = cx.param("why")?.unwrap_or_default();
        cx.console()
            .info(format!("on_stop for job {} because {why}", cx.job_id()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        cx.cancel();
        Ok(())
    }
}

fn with_store(db: &TestDb) -> AgentOptions {
    AgentOptions::new().store(db.connection_string(), "hangfire", 7.0)
}

/// The texts of a console, as the dashboard shows them.
async fn texts(db: &TestDb, console: &ConsoleInfo) -> Vec<String> {
    db.console_lines(&console.set_key, &console.hash_key)
        .await
        .iter()
        .filter_map(|l| l["s"].as_str().map(str::to_owned))
        .collect()
}

// Item 1. Hangfire.PostgreSql 1.20.3+ hides its connection string, so the center's
// `GetCurrentJobStorage` (Server/Hangfire.HttpJob/Server/HttpJob.cs) finds nothing and sends
// no x-job-storage; a run accepted then would stay Processing forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_no_store_from_either_side_is_refused_and_names_the_fix() {
    let service = TestService::start_with(AgentOptions::new()).await;
    let center = service.center();
    for reply in [
        center.run(SINGLETON, "n1").send().await,
        center.stop(SINGLETON, "n1-stop").send().await,
    ] {
        reply.assert_err(500);
        assert!(
            reply.body.contains("x-job-storage") && reply.body.contains("JOBAGENT_STORE"),
            "{}",
            reply.body
        );
    }
    assert_eq!(service.agent().running(), 0);
    // detail needs no store.
    center.detail(SINGLETON).send().await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_only_runs_are_an_explicit_choice() {
    let service = TestService::start_with(AgentOptions::new().log_only(true)).await;
    service
        .center()
        .run(SINGLETON, "l1")
        .send()
        .await
        .assert_status(200);
    // From the environment, as the example service reads it.
    let options = AgentOptions::from_lookup(|k| (k == "JOBAGENT_LOG_ONLY").then(|| "true".into()))
        .expect("valid");
    let service = TestService::start_with(options).await;
    service
        .center()
        .run(SINGLETON, "l2")
        .send()
        .await
        .assert_status(200);
}

/// What `Agent::new(options)` logs (on this thread), as text.
fn startup_log(options: AgentOptions) -> String {
    let logs = tests::logs::Logs::default();
    let _guard = logs.capture();
    let _ = agent(options).expect("valid options");
    logs.text()
}

#[test]
fn the_start_up_line_says_which_store_mode_is_in_force() {
    let refusing = startup_log(AgentOptions::new());
    assert!(
        refusing.contains("job agent ready") && refusing.contains("runs without one are refused"),
        "{refusing}"
    );
    assert!(refusing.contains("JOBAGENT_STORE"), "{refusing}");
    let log_only = startup_log(AgentOptions::new().log_only(true));
    assert!(log_only.contains("JOBAGENT_LOG_ONLY"), "{log_only}");
    let own = startup_log(AgentOptions::new().store(
        "Host=db.internal;Database=hangfire;Username=u;Password=hunter2",
        "hangfire",
        7.0,
    ));
    assert!(
        own.contains("its own store (db.internal:5432/hangfire)"),
        "{own}"
    );
    assert!(!own.contains("hunter2"), "{own}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_own_store_takes_runs_the_center_sent_no_store_for() {
    let db = TestDb::new().await;
    let service = TestService::start_with(with_store(&db)).await;
    service
        .center()
        .run(SINGLETON, "o1")
        .param(json!({"lines": 2}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "o1", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_service_refuses_storeless_runs_unless_told_otherwise() {
    let refusing = Replica::start("example-default", &[]).await;
    let reply = refusing.center().run(SINGLETON, "e1").send().await;
    reply.assert_err(500);
    assert!(reply.body.contains("JOBAGENT_STORE"), "{}", reply.body);
    let log_only =
        Replica::start("example-log-only", &[("JOBAGENT_LOG_ONLY", "true".into())]).await;
    log_only
        .center()
        .run(SINGLETON, "e2")
        .send()
        .await
        .assert_status(200);
}

// Item 4. The center keeps the agentServerId of each heartbeat answer in
// `activeAgent:<host:port>` and fails jobs older than 5 minutes whose run answer carried
// another one (Server/Hangfire.HttpJob/Server/JobAgent/JobAgentHeartBeatServer.cs,
// LosedJobCheckServer.cs): replicas behind one URL must answer with one id.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_a_store_present_one_agent_server_id_across_restarts() {
    let db = TestDb::new().await;
    let env = vec![("JOBAGENT_STORE", db.connection_string())];
    let a = Replica::start("replica-a", &env).await;
    let mut b = Replica::start("replica-b", &env).await;
    let id_of = |reply: tests::center::Reply| {
        reply
            .agent_server_id_header
            .clone()
            .unwrap_or_else(|| panic!("no agentServerId: {}", reply.body))
    };
    let run = a
        .center()
        .run(SINGLETON, "r1")
        .param(json!({"sleep_ms": 60000}));
    let run_id = id_of(run.send().await);
    let heartbeat_b = id_of(b.center().heartbeat().send().await);
    let heartbeat_a = id_of(a.center().heartbeat().send().await);
    assert_eq!(run_id, heartbeat_a);
    assert_eq!(run_id, heartbeat_b);
    // A run on the replica that is killed: the restarted process keeps the id, and the run
    // it lost is reported by reconciliation instead of by the center's id check.
    b.center()
        .run("example_agent::jobs::TestTransientJob", "r2")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await
        .assert_status(200);
    b.kill();
    let b2 = Replica::start("replica-b", &env).await;
    assert_eq!(id_of(b2.center().heartbeat().send().await), run_id);
    let lost = wait::result(&db, "r2", Duration::from_secs(40)).await;
    assert_eq!(lost["R"], "err", "{lost}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_id_is_derived_from_what_replicas_share_or_configured() {
    let db = TestDb::new().await;
    let one = agent(with_store(&db)).expect("valid");
    let two = agent(with_store(&db)).expect("valid");
    assert_eq!(one.server_id(), two.server_id());
    let other_path = agent(with_store(&db).path("/other")).expect("valid");
    assert_ne!(one.server_id(), other_path.server_id());
    let set = agent(AgentOptions::new().agent_id("orders-agent")).expect("valid");
    assert_eq!(set.server_id(), "orders-agent");
    // Log-only without a store: nothing reports a restarted process's runs, so the
    // center's own restart check stays on (one id per process).
    let a = agent(AgentOptions::new().log_only(true)).expect("valid");
    let b = agent(AgentOptions::new().log_only(true)).expect("valid");
    assert_ne!(a.server_id(), b.server_id());
    let bad = agent(AgentOptions::new().agent_id("two words"));
    assert!(
        bad.expect_err("invalid id")
            .to_string()
            .contains("JOBAGENT_AGENT_ID")
    );
}

// Item 9. The .NET agent builds on_stop's context from the stop request (Agent/
// Hangfire.HttpJob.Agent/JobAgentMiddleware.cs), so its lines land on the stop job's page.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_writes_to_its_own_console_and_is_not_repeated_while_stopping() {
    let db = TestDb::new().await;
    let service = TestService::start_with(with_store(&db)).await;
    let center = service.center();
    let run_console = ConsoleInfo::for_job("s1");
    center
        .run(STOP_ECHO, "s1")
        .console(run_console.clone())
        .send()
        .await
        .assert_status(200);
    let stop_console = ConsoleInfo::for_job("s1-stop");
    center
        .stop(STOP_ECHO, "s1-stop")
        .param(json!({"why": "maintenance"}))
        .console(stop_console.clone())
        .send()
        .await
        .assert_status(200);
    // While the run winds down, a second stop is refused with 500 and on_stop is not called
    // again.
    let again = center.stop(STOP_ECHO, "s1-stop2").send().await;
    again.assert_err(500);
    assert!(again.body.contains("stopping"), "{}", again.body);
    assert!(!again.body.contains("already Running"), "{}", again.body);
    let stop = wait::result(&db, "s1-stop", Duration::from_secs(10)).await;
    assert_eq!(stop["R"], "ok", "{stop}");
    assert_eq!(stop["RunId"], "s1", "{stop}");
    let run = wait::result(&db, "s1", Duration::from_secs(10)).await;
    assert_eq!(run["R"], "ok", "{run}");
    assert_eq!(on_stop_calls("s1-stop"), 1);
    let stop_lines = texts(&db, &stop_console).await;
    assert!(
        stop_lines
            .iter()
            .any(|l| l.contains("on_stop for job s1-stop because maintenance")),
        "{stop_lines:?}"
    );
    let run_lines = texts(&db, &run_console).await;
    assert!(
        !run_lines.iter().any(|l| l.contains("on_stop for job")),
        "{run_lines:?}"
    );
    assert!(db.result("s1-stop2").await.is_none());
}

// Item 9 across replicas: a stop received by one replica for a run on another gives that
// replica's on_stop the stop's context and console.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_through_another_replica_writes_to_the_stops_console() {
    let db = TestDb::new().await;
    let a = TestService::start_with(with_store(&db).instance("replica-a")).await;
    let b = TestService::start_with(with_store(&db).instance("replica-b")).await;
    a.center()
        .run(STOP_ECHO, "x1")
        .send()
        .await
        .assert_status(200);
    let stop_console = ConsoleInfo::for_job("x1-stop");
    let reply = b
        .center()
        .stop(STOP_ECHO, "x1-stop")
        .param(json!({"why": "deploy"}))
        .console(stop_console.clone())
        .send()
        .await;
    reply.assert_status(200);
    assert!(reply.body.contains("other replica"), "{}", reply.body);
    let stop = wait::result(&db, "x1-stop", Duration::from_secs(15)).await;
    assert_eq!(stop["R"], "ok", "{stop}");
    assert_eq!(stop["RunId"], "x1", "{stop}");
    let lines = texts(&db, &stop_console).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("on_stop for job x1-stop because deploy")),
        "{lines:?}"
    );
    assert_eq!(
        wait::result(&db, "x1", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

// Item 10. On .NET AgentTimeout covers the whole run, a hang job's wait included
// (Agent/Hangfire.HttpJob.Agent/JobAgent.cs); a stopped run stays "stopped" here.
#[tokio::test(flavor = "multi_thread")]
async fn agent_timeout_bounds_a_hang_jobs_wait_and_a_stop_stays_a_stop() {
    let db = TestDb::new().await;
    let service = TestService::start_with(with_store(&db)).await;
    let center = service.center();
    let started = Instant::now();
    center
        .run(HANG, "h1")
        .timeout_ms(600)
        .send()
        .await
        .assert_status(200);
    let failed = wait::failure(&db, "h1", Duration::from_secs(10), "AgentTimeout").await;
    assert!(started.elapsed() >= Duration::from_millis(600), "{failed}");
    center
        .run(HANG, "h2")
        .timeout_ms(60_000)
        .send()
        .await
        .assert_status(200);
    center.stop(HANG, "h2-stop").send().await.assert_status(200);
    let stopped = wait::result(&db, "h2", Duration::from_secs(10)).await;
    assert_eq!(stopped["R"], "ok", "{stopped}");
}

// Item 7: a center whose host sets camelCase Newtonsoft defaults also writes the job item
// camelCase; `agentTimeout` still bounds the run.
#[tokio::test(flavor = "multi_thread")]
async fn a_camel_case_centers_agent_timeout_is_read() {
    let db = TestDb::new().await;
    let service = TestService::start_with(with_store(&db)).await;
    let center = service.center().with_camel_case_json();
    center
        .run(HANG, "k1")
        .timeout_ms(500)
        .send()
        .await
        .assert_status(200);
    wait::failure(&db, "k1", Duration::from_secs(10), "AgentTimeout").await;
}

// Item 12. The center waits `Timeout` ms (5 s below 1) for the answer
// (Server/Hangfire.HttpJob/Server/HttpJob.cs). A cluster claim on a black-holed store must
// not outlast it, and must not leave the class claimed.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_on_a_black_holed_store_is_answered_in_time_and_frees_the_class() {
    let db = TestDb::new().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let service =
        TestService::start_with(AgentOptions::new().store(via_proxy, "hangfire", 7.0)).await;
    let center = service.center();
    center.run(SINGLETON, "c1").send().await.assert_status(200);
    assert_eq!(
        wait::result(&db, "c1", Duration::from_secs(10)).await["R"],
        "ok"
    );
    proxy.black_hole();
    let asked = Instant::now();
    let reply = center
        .run(SINGLETON, "c2")
        .item_field("Timeout", json!(2000))
        .send()
        .await;
    let took = asked.elapsed();
    reply.assert_err(500);
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}"
    );
    assert!(reply.body.contains("cannot decide"), "{}", reply.body);
    // A center Timeout below 1 means 5 s.
    let asked = Instant::now();
    let reply = center
        .run(SINGLETON, "c3")
        .item_field("Timeout", json!(0))
        .send()
        .await;
    reply.assert_err(500);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    proxy.restore();
    // The class is free again once the store answers: a run is accepted and succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = center.run(SINGLETON, "c4").send().await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the class stayed claimed: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        wait::result(&db, "c4", Duration::from_secs(10)).await["R"],
        "ok"
    );
    assert_eq!(service.agent().running(), 0);
}

// Item 11. The .NET agent registers every job unless it opts out, id `Namespace.Type` and
// name `Type` by default (Agent/Hangfire.HttpJob.Agent/JobAgentRegisterService.cs).
#[tokio::test(flavor = "multi_thread")]
async fn every_example_job_registers_with_dotnet_like_defaults() {
    let agent = agent(AgentOptions::new().log_only(true)).expect("valid");
    let find = |class: &str| {
        agent
            .registry()
            .iter()
            .find(|r| r.class() == class)
            .unwrap_or_else(|| panic!("{class} is registered"))
    };
    let test_job = find(SINGLETON).auto_register().expect("registered");
    assert_eq!(test_job.id, SINGLETON);
    assert_eq!(test_job.name, "TestJob");
    let send = find("example_agent::jobs::SendDueMessagesJob")
        .auto_register()
        .expect("registered");
    assert_eq!(send.id, "outbox-send");
    let registered: Vec<Value> = agent
        .registry()
        .iter()
        .filter(|r| r.class().starts_with("example_agent::"))
        .map(|r| json!(r.auto_register().map(|a| a.id)))
        .collect();
    assert!(registered.iter().all(|id| !id.is_null()), "{registered:?}");
}

/// The example service's agent (its jobs take the service's outbox as state).
fn agent(options: AgentOptions) -> Result<Agent, jobagent::ConfigError> {
    example_agent::Service::new(options).map(|s| s.agent)
}
