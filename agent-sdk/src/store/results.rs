//! Writing dispatch results where the center reads them: hash `_agent_result_<id>`, then
//! set `_agent_result_`.

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::future::BoxFuture;
use crate::result::{DispatchResult, ResultSink};

/// How long a result keeps being retried while the store is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// Results into a store.
pub(crate) struct StoreResults {
    pub(crate) store: Arc<Store>,
}

impl ResultSink for StoreResults {
    fn write(&self, result: DispatchResult) -> BoxFuture<()> {
        let store = self.store.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut backoff = Duration::from_millis(50);
            let mut failures = 0u32;
            loop {
                // Whatever the store's own bounds say (they may be off), no attempt waits for
                // good: one past the bound is abandoned and retried.
                let attempt = async {
                    tokio::time::timeout(
                        super::console_writer::ATTEMPT_WITHIN,
                        write_once(&store, &result),
                    )
                    .await
                    .unwrap_or_else(|_| Err("the store did not take the result in time".to_owned()))
                };
                match crate::metrics::store_op("result", attempt).await {
                    Ok(()) => {
                        tracing::debug!(target: "agent_sdk::result", job_id = %result.id, action = result.action, r = result.r, "result written");
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(target: "agent_sdk::result", store = %store.label, job_id = %result.id, error = %e, "writing a result failed; retrying with backoff");
                        }
                    }
                }
                if started.elapsed() > GIVE_UP_AFTER {
                    tracing::error!(target: "agent_sdk::result", store = %store.label, job_id = %result.id, action = result.action, r = result.r, error = %result.e, "the store stayed unreachable; the result was not written (the center will time the job out)");
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

/// One attempt, every step bounded by the backend (the checkout and each statement or
/// command). Each step is an upsert, so a retry after an unknown outcome (the write
/// committed, the answer was lost) leaves one field and one member.
///
/// The first writer of a dispatch id marks it in hash `jobagent:results` (field = the id,
/// value = a token of its own write, kept `ExpireAtDays`); any other write of that id is then
/// refused, even after the center consumed and deleted the first result. So a run gets
/// exactly one result whichever side reports it: a replica cut off from the store and the
/// survivor that reported its runs lost, or two processes with one instance name.
async fn write_once(store: &Store, result: &DispatchResult) -> Result<(), String> {
    use std::hash::{Hash as _, Hasher as _};
    let value = serde_json::to_string(result).map_err(|e| e.to_string())?;
    let field = result.elapsed.as_millis().to_string();
    // Same in every retry of this write (one process), different for another writer's.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    let token = format!("{field}:{:016x}", hasher.finish());
    if !store.first_report(&result.id, &token).await? {
        tracing::warn!(target: "agent_sdk::result", job_id = %result.id, action = result.action, r = result.r, error = %result.e, "this dispatch was already reported by another replica or process (it was cut off, or a duplicate); this result is dropped: a dispatch gets exactly one");
        return Ok(());
    }
    let key = format!("_agent_result_{}", result.id);
    store
        .set_hash(&key, &[(&field, &value)], Some(store.expire))
        .await?;
    store.add_to_set("_agent_result_", &result.id, 1.0).await
}
