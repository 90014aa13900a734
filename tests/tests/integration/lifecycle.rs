//! One lifecycle (issue 26, part 5): what a run holds is given back however it ends.
//!
//! A job whose constructor (here its `Default`) panics: each dispatch is a failed run, its
//! result says the constructor panicked, and the counts it took (the class's admitted runs,
//! the agent's runs in flight) come back. Before, each such dispatch leaked both: with a
//! limit of 3 runs in flight, the fourth dispatch of any class was refused ("the agent
//! already runs 3 jobs"), for ever.
//!
//! A restart under the same instance name: a clean shutdown releases the name, so the next
//! process holds it at once; a run sent while a process waits for its name (its predecessor
//! was SIGKILLed and its lease has not lapsed) is refused, naming the instance, instead of
//! being accepted under a name no one holds and never reported.

use std::time::{Duration, Instant};

use jobagent::{AgentOptions, JobAgent, JobContext, JobError, RequestLimits, job_agent};
use serde_json::{Value, json};
use tests::pg::TestDb;
use tests::replica::Replica;
use tests::service::TestService;
use tests::stores::AnyStore;
use tests::wait;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

/// A transient job whose constructor panics.
#[job_agent(transient)]
struct BrokenTransient;
impl Default for BrokenTransient {
    fn default() -> Self {
        panic!("BrokenTransient cannot be built")
    }
}
impl JobAgent for BrokenTransient {
    async fn on_start(&self, _: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A singleton whose constructor panics (a broken recurring singleton).
#[job_agent]
struct BrokenSingleton;
impl Default for BrokenSingleton {
    fn default() -> Self {
        panic!("BrokenSingleton cannot be built")
    }
}
impl JobAgent for BrokenSingleton {
    async fn on_start(&self, _: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A job that works.
#[job_agent(transient)]
#[derive(Default)]
struct Works;
impl JobAgent for Works {
    async fn on_start(&self, _: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_constructor_is_a_failed_run_and_gives_its_counts_back() {
    let db = TestDb::new().await;
    let limits = RequestLimits::default()
        .max_running(3)
        .max_running_per_class(2);
    let agent = TestService::start_with(
        AgentOptions::new()
            .store(db.connection_string(), "hangfire", 7.0)
            .instance("broken-ctor")
            .limits(limits),
    )
    .await;
    for (class, n) in [
        ("integration::lifecycle::BrokenTransient", 0),
        ("integration::lifecycle::BrokenSingleton", 1),
    ] {
        for i in 0..6 {
            let id = format!("b{n}-{i}");
            let reply = agent.center().run(class, &id).try_send().await;
            let reply = reply.unwrap_or_else(|e| panic!("{class} #{i}: no answer: {e}"));
            assert_eq!(reply.status, 200, "{class} #{i}: {}", reply.body);
            let result = wait::result(&db, &id, Duration::from_secs(10)).await;
            assert_eq!(result["R"], "err", "{result}");
            let said = result["E"].as_str().unwrap_or_default();
            assert!(
                said.contains("panicked") && said.contains("cannot be built"),
                "{said}"
            );
        }
    }
    // Nothing leaked: a working job still runs, up to the limits.
    for i in 0..3 {
        let id = format!("w{i}");
        agent
            .center()
            .run("integration::lifecycle::Works", &id)
            .send()
            .await
            .assert_status(200);
        let result = wait::result(&db, &id, Duration::from_secs(10)).await;
        assert_eq!(result["R"], "ok", "{result}");
    }
}

/// The process id (`ServerId`) holding instance name `name`, from its lease row.
async fn name_holder(db: &AnyStore, name: &str) -> Option<String> {
    db.hash_rows("jobagent:replicas")
        .await
        .into_iter()
        .find(|(field, _)| field == name)
        .and_then(|(_, value)| serde_json::from_str::<Value>(&value?).ok())
        .and_then(|v| v["ServerId"].as_str().map(str::to_owned))
}

/// Polls `check` every 50 ms until it gives a value; panics with `what` after `within`.
async fn until_some<T>(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a process logs when it finds its instance name held by another process.
const HELD_ELSEWHERE: &str = "held by another process";

/// A clean shutdown (SIGTERM) releases the instance name: the next process of that name
/// holds it at once. Before, it found the name held, said so, and waited about 5 s for the
/// lease to lapse.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_releases_the_instance_name() {
    let db = AnyStore::postgresql().await;
    let env = db.env();
    let name = "clean-restart";
    let mut first = Replica::start_logged(name, &env).await;
    let holder = until_some(
        Duration::from_secs(10),
        "the first process never held its name",
        async || name_holder(&db, name).await,
    )
    .await;
    first.terminate();
    let restarted = Instant::now();
    let second = Replica::start_logged(name, &env).await;
    until_some(
        Duration::from_secs(15),
        "the second process never held the name",
        async || name_holder(&db, name).await.filter(|h| *h != holder),
    )
    .await;
    let waited = restarted.elapsed();
    eprintln!("restart after a clean shutdown: the name was held again after {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "the name was held again only after {waited:?}:\n{}",
        second.log_text()
    );
    assert!(
        !second.log_text().contains(HELD_ELSEWHERE),
        "{}",
        second.log_text()
    );
}

/// A run sent to a process that waits for its instance name (its predecessor was SIGKILLed
/// and its lease has not lapsed) is either refused (500, naming the instance) or reported by
/// whoever holds the name next, even when that process is SIGKILLed right after its 200.
/// Before, it was accepted and belonged to no one: never reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_sent_while_the_name_is_held_elsewhere_is_refused_or_reported() {
    let db = AnyStore::postgresql().await;
    let env = db.env();
    let name = "waits-for-name";
    let mut first = Replica::start(name, &env).await;
    until_some(
        Duration::from_secs(10),
        "the first process never held its name",
        async || name_holder(&db, name).await,
    )
    .await;
    first.kill();
    let mut second = Replica::start(name, &env).await;
    let reply = second
        .center()
        .run(TRANSIENT, "wn1")
        .param(json!({"sleep_ms": 60000}))
        .send()
        .await;
    second.kill();
    if reply.status == 200 {
        // Accepted: the next holder of the name must report it.
        let _third = Replica::start(name, &env).await;
        // (Panics when none comes: the run was accepted and never reported.)
        let result = db.wait_result("wn1", Duration::from_secs(30)).await;
        assert_eq!(result["R"], "err", "{result}");
    } else {
        reply.assert_err(500);
        assert!(
            reply.body.contains(name) && reply.body.contains("JOBAGENT_INSTANCE"),
            "{}",
            reply.body
        );
        assert!(db.result("wn1").await.is_none());
    }
}
