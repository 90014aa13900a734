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
                match crate::metrics::store_op("result", write_once(&store, &result)).await {
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

/// One attempt, every step bounded: the checkout by the pool's limits, each statement by
/// `Command Timeout` (a connection whose statement timed out is dropped, and the next attempt
/// takes another). Both statements are upserts, so a retry after an unknown outcome (the
/// write committed, the answer was lost) leaves one field and one member.
async fn write_once(store: &Store, result: &DispatchResult) -> Result<(), String> {
    let value = serde_json::to_string(result).map_err(|e| e.to_string())?;
    let field = result.elapsed.as_millis().to_string();
    let key = format!("_agent_result_{}", result.id);
    let expire = store.expire_secs();
    let client = store.conn().await?;
    if !client
        .bound(first_report(&client, store, result, &field, &value))
        .await?
    {
        tracing::warn!(target: "agent_sdk::result", job_id = %result.id, action = result.action, r = result.r, error = %result.e, "this dispatch was already reported by another replica or process (it was cut off, or a duplicate); this result is dropped: a dispatch gets exactly one");
        return Ok(());
    }
    client
        .bound(super::upsert_hash_fields(
            &client,
            &store.schema,
            &key,
            &[&field],
            &[&value],
            expire,
        ))
        .await?;
    let sql = format!(
        "INSERT INTO {}.\"set\" (\"key\", score, \"value\", expireat) VALUES ('_agent_result_', 1, $1, now() + $2 * interval '1 second') \
         ON CONFLICT (\"key\", \"value\") DO UPDATE SET score = EXCLUDED.score, expireat = EXCLUDED.expireat",
        store.schema
    );
    client
        .bound(async {
            let stmt = client.prepare_cached(&sql).await?;
            client.execute(&stmt, &[&result.id, &expire]).await
        })
        .await?;
    Ok(())
}

/// Whether this write is the dispatch's first report (or a retry of it). The first writer of
/// a dispatch id marks it in hash `jobagent:results` (field = the id, value = a token of its
/// own write, kept `ExpireAtDays`); any other write of that id is then refused, even after the
/// center consumed and deleted the first result. So a run gets exactly one result whichever
/// side reports it: a replica cut off from the store and the survivor that reported its runs
/// lost, or two processes with one instance name.
async fn first_report(
    client: &deadpool_postgres::Client,
    store: &Store,
    result: &DispatchResult,
    field: &str,
    value: &str,
) -> Result<bool, tokio_postgres::Error> {
    use std::hash::{Hash as _, Hasher as _};
    // Same in every retry of this write (one process), different for another writer's.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    let token = format!("{field}:{:016x}", hasher.finish());
    let sql = format!(
        "INSERT INTO {}.hash AS t (\"key\", field, \"value\", expireat) \
         VALUES ('jobagent:results', $1, $2, now() + $3 * interval '1 second') \
         ON CONFLICT (\"key\", field) DO UPDATE SET expireat = EXCLUDED.expireat \
         WHERE t.\"value\" = EXCLUDED.\"value\" RETURNING t.id",
        store.schema
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&stmt, &[&result.id, &token, &store.expire_secs()])
        .await?;
    Ok(row.is_some())
}
