//! Waiting for what the agent writes in the background.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pg::TestDb;

/// Waits until the result of `job_id` is in the store (as the center polls for it) and
/// returns it; panics after `within`.
pub async fn result(db: &TestDb, job_id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = db.result(job_id).await {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no result for job {job_id} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the result of `job_id` like [`result`], and asserts that the run failed with
/// an error text (`E`) containing `reason`; returns the result.
pub async fn failure(db: &TestDb, job_id: &str, within: Duration, reason: &str) -> Value {
    let r = result(db, job_id, within).await;
    assert_eq!(r["R"], "err", "{r}");
    assert!(
        r["E"].as_str().unwrap_or_default().contains(reason),
        "expected an error containing {reason:?}: {r}"
    );
    r
}

/// Polls `check` every 20 ms until it holds, instead of a fixed sleep before an assertion;
/// panics with `what` after `within`.
pub async fn until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
