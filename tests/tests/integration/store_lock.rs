//! The center's distributed lock, shared between a Rust job (`JobContext::lock`) and a .NET
//! service taking `AcquireDistributedLock` on the same store: each excludes the other, on
//! every store. The .NET side is played by the harness with the statements of each store's
//! Hangfire package:
//! - PostgreSQL: Hangfire.PostgreSql `src/Hangfire.PostgreSql/PostgreSqlDistributedLock.cs`
//!   (the `lock` table, `Scripts/Install.v3.sql`, `v4`, `v7`, `v9`, `v19`);
//! - MySQL: Hangfire.MySqlStorage `Hangfire.MySql/MySqlDistributedLock.cs` (the
//!   `DistributedLock` table, `Hangfire.MySql/Install.sql`);
//! - Redis: Hangfire.Redis.StackExchange `Hangfire.Redis.StackExchange/RedisLock.cs`
//!   (`SET NX PX` with an owner, deleted only by that owner).

use std::time::{Duration, Instant, SystemTime};

use jobagent::{JobAgent, JobContext, JobError, job_agent};
use serde_json::{Value, json};
use tests::center::ConsoleInfo;
use tests::service::TestService;
use tests::stores::AnyStore;

/// Takes the lock named by its parameter, says so with its fencing token, holds it for
/// `hold_ms`, then releases it.
#[job_agent(transient)]
#[derive(Default)]
struct LockJob;

impl JobAgent for LockJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let resource: String = cx.param("resource")?.unwrap_or_default();
        let timeout_ms: u64 = cx.param("timeout_ms")?.unwrap_or(10_000);
        let hold_ms: u64 = cx.param("hold_ms")?.unwrap_or(0);
        cx.console().info("waiting for the lock");
        let lock = cx
            .lock(&resource, Duration::from_millis(timeout_ms))
            .await
            .map_err(|e| JobError::msg(e.to_string()))?;
        cx.console()
            .info(format!("locked, token {}", lock.fencing_token()));
        cx.sleep(Duration::from_millis(hold_ms)).await?;
        cx.console().info("releasing");
        lock.release().await;
        Ok(())
    }
}

const LOCK_JOB: &str = "integration::store_lock::LockJob";
const RESOURCE: &str = "msg:sms:update:lock";

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["s"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the console of `job_id` shows a line containing `text`.
async fn wait_line(store: &AnyStore, console: &ConsoleInfo, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let lines = texts(
            &store
                .console_lines(&console.set_key, &console.hash_key)
                .await,
        );
        if lines.iter().any(|l| l.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no line containing {text:?} within {within:?}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.split("locked, token ").nth(1))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no token line: {lines:?}"))
}

/// .NET holds the lock: the Rust job waits until it is released, then takes it; then the
/// Rust job holds it and .NET waits (and times out while it is held).
async fn shared_lock(store: AnyStore) {
    let service = TestService::start().await;
    let center = service.center().with_storage(&store.storage());

    // 1. .NET first.
    let held = store
        .dotnet_lock(RESOURCE, Duration::from_secs(5))
        .await
        .expect("the .NET side takes the free lock");
    let first = ConsoleInfo::for_job("l1");
    center
        .run(LOCK_JOB, "l1")
        .param(json!({"resource": RESOURCE, "timeout_ms": 20_000}))
        .console(first.clone())
        .send()
        .await
        .assert_status(200);
    wait_line(
        &store,
        &first,
        "waiting for the lock",
        Duration::from_secs(10),
    )
    .await;
    // While .NET holds it, the job stays waiting (its own retries run meanwhile).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lines = texts(&store.console_lines(&first.set_key, &first.hash_key).await);
    assert!(
        !lines.iter().any(|l| l.contains("locked")),
        "taken while .NET held it: {lines:?}"
    );
    assert!(store.result("l1").await.is_none());
    let released_at = Instant::now();
    held.release().await;
    let result = store.wait_result("l1", Duration::from_secs(15)).await;
    assert_eq!(result["R"], "ok", "{result}");
    let waited = released_at.elapsed();
    let lines = texts(&store.console_lines(&first.set_key, &first.hash_key).await);
    let first_token = token(&lines);
    eprintln!("{}: taken {waited:?} after .NET released it", store.kind());

    // 2. Rust first: .NET cannot take it while the job holds it, and can once it let go.
    let start = SystemTime::now();
    let second = ConsoleInfo::for_job_at("l2", start);
    center
        .run(LOCK_JOB, "l2")
        .param(json!({"resource": RESOURCE, "timeout_ms": 5_000, "hold_ms": 2_500}))
        .console(second.clone())
        .send()
        .await
        .assert_status(200);
    wait_line(&store, &second, "locked, token", Duration::from_secs(10)).await;
    // Hangfire.MySqlStorage takes a row older than the waiter's own timeout for stale; the
    // held lock is refreshed twice a second, so any timeout above that is safe.
    let refused = store
        .dotnet_lock(RESOURCE, Duration::from_millis(1_200))
        .await;
    assert!(
        refused.is_err(),
        "the .NET side took a lock the Rust job holds"
    );
    let again = store
        .dotnet_lock(RESOURCE, Duration::from_secs(15))
        .await
        .expect("the .NET side takes it once the job released it");
    let taken_at = SystemTime::now();
    let result = store.wait_result("l2", Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok", "{result}");
    // The job wrote "releasing" just before it let go: .NET got the lock after that.
    let raw = store.console_lines(&second.set_key, &second.hash_key).await;
    let releasing = raw
        .iter()
        .find(|l| l["s"].as_str().unwrap_or_default().contains("releasing"))
        .and_then(|l| l["t"].as_f64())
        .unwrap_or_else(|| panic!("no releasing line: {raw:?}"));
    let taken = taken_at
        .duration_since(start)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    assert!(
        taken >= releasing - 0.01,
        ".NET got the lock at {taken:.3} s, before the job released it at {releasing:.3} s"
    );
    let lines = texts(&raw);
    assert!(
        token(&lines) > first_token,
        "the fencing token grows: {first_token} then {lines:?}"
    );
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_shared_with_dotnet_postgresql() {
    shared_lock(AnyStore::postgresql().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_shared_with_dotnet_mysql() {
    shared_lock(AnyStore::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_shared_with_dotnet_redis() {
    shared_lock(AnyStore::redis().await).await;
}
