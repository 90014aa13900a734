//! Writing dispatch results where the center reads them: hash `_agent_result_<id>` and set
//! `_agent_result_`, with the first-report mark that keeps it to one result per dispatch.

use std::sync::Arc;
use std::time::Duration;

use super::console_writer::ATTEMPT_WITHIN;
use super::{Store, StoreError};
use crate::future::BoxFuture;
use crate::result::{DispatchResult, ResultSink};
use crate::timefmt::fmt_duration;

/// The first pause between two attempts; it doubles after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts: a store that comes back takes the result within
/// this much.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a result that still waits for the store is said again in the log.
const REMIND_EVERY: Duration = Duration::from_secs(600);

/// Results into a store.
pub(crate) struct StoreResults {
    pub(crate) store: Arc<Store>,
    /// How long an unwritten result is retried (`JOBAGENT_RESULT_RETRY_MS`); `None`: as long
    /// as the store keeps what the agent writes (its `ExpireAtDays`).
    pub(crate) retry_for: Option<Duration>,
}

impl StoreResults {
    /// How long a result is retried: the configured bound, else the store's `ExpireAtDays`
    /// (past it, the run's records in the store have expired too).
    fn bound(&self) -> Duration {
        self.retry_for.unwrap_or(self.store.expire)
    }
}

impl ResultSink for StoreResults {
    fn retry_bound(&self) -> Option<Duration> {
        Some(self.bound())
    }

    /// Retries with backoff (capped at [`MAX_BACKOFF`]) until the store takes the result, for
    /// at most [`StoreResults::bound`]. The center has no time-out for agent jobs: a result
    /// that is not written leaves the job Processing, so it is never given up early. True
    /// when the store took it.
    fn write(&self, result: DispatchResult) -> BoxFuture<bool> {
        let store = self.store.clone();
        let bound = self.bound();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut backoff = FIRST_BACKOFF;
            let mut failures = 0u32;
            let mut reminded = started;
            loop {
                // Whatever the store's own bounds say (they may be off), no attempt waits for
                // good: one past the bound is abandoned and retried.
                let attempt = async {
                    tokio::time::timeout(ATTEMPT_WITHIN, write_once(&store, &result))
                        .await
                        .unwrap_or_else(|_| {
                            Err(StoreError::timed_out(
                                "the store (a result)",
                                ATTEMPT_WITHIN,
                            ))
                        })
                };
                match crate::metrics::store_op("result", attempt).await {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(target: "jobagent::result", store = %store.label, job_id = %result.id, failures, waited = %fmt_duration(started.elapsed()), "result written once the store took it again");
                        } else {
                            tracing::debug!(target: "jobagent::result", job_id = %result.id, action = result.action, r = result.r, "result written");
                        }
                        return true;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(target: "jobagent::result", store = %store.label, job_id = %result.id, error = %e, retry_for = %fmt_duration(bound), "writing a result failed; retrying with backoff until the store takes it (the job stays Processing at the center until then)");
                        } else if reminded.elapsed() >= REMIND_EVERY {
                            reminded = tokio::time::Instant::now();
                            tracing::warn!(target: "jobagent::result", store = %store.label, job_id = %result.id, error = %e, failures, waited = %fmt_duration(started.elapsed()), "a result still waits for the store; retrying");
                        }
                    }
                }
                let left = bound.saturating_sub(started.elapsed());
                if left.is_zero() {
                    tracing::error!(target: "jobagent::result", store = %store.label, job_id = %result.id, action = result.action, r = result.r, error = %result.e, retried_for = %fmt_duration(bound), "the store did not take this result within the retry bound; it is not written, and the job stays Processing at the center. The run's in-flight record is kept: a next process of this instance reports the run as lost while the store still holds the record");
                    return false;
                }
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

/// One attempt, bounded by the backend (the checkout and each statement or command).
///
/// The first writer of a dispatch id marks it (a first-report mark, kept `ExpireAtDays`, with
/// a token of its own write); any other write of that id is then refused, even after the
/// center consumed and deleted the first result. So a run gets exactly one result whichever
/// side reports it: a replica cut off from the store and the survivor that reported its runs
/// lost, or two processes with one instance name. The mark, the result and its set member
/// are one write ([`ResultWrite`]): a writer killed part-way leaves all three or none, so a
/// mark never stands for a result that was not written (whoever reports next is refused).
/// A retry after an unknown outcome (the write committed, the answer was lost) carries the
/// same token and is taken again as an upsert: one field, one member.
async fn write_once(store: &Store, result: &DispatchResult) -> Result<(), StoreError> {
    use std::hash::{Hash as _, Hasher as _};
    let value = serde_json::to_string(result).map_err(|e| StoreError::refused(e.to_string()))?;
    let field = result.elapsed.as_millis().to_string();
    // Same in every retry of this write (one process), different for another writer's.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    let token = format!("{field}:{:016x}", hasher.finish());
    let write = ResultWrite {
        mark: &result.id,
        token: &token,
        id: &result.id,
        result: Some((&field, &value)),
    };
    if !store.write_result(&write).await? {
        tracing::warn!(target: "jobagent::result", job_id = %result.id, action = result.action, r = result.r, error = %result.e, "this dispatch was already reported by another replica or process (it was cut off, or a duplicate); this result is dropped: a dispatch gets exactly one");
    }
    Ok(())
}

/// A dispatch's result as one atomic write: its first-report mark, the result's field and
/// value in hash `_agent_result_<id>` (where the center reads it), and member `<id>` of set
/// `_agent_result_`, all expiring after the store's `ExpireAtDays`. Taken (true) when the mark
/// is absent or holds `token` (a retry); refused (false, nothing written) when another
/// writer's token holds it.
pub(crate) struct ResultWrite<'a> {
    /// What the mark is kept under: the dispatch id (a relay's: per service).
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) mark: &'a str,
    /// The writer's token.
    pub(crate) token: &'a str,
    /// The dispatch (Hangfire job) id.
    pub(crate) id: &'a str,
    /// The result's field (its elapsed milliseconds) and JSON. `None`: the mark alone, for a
    /// relay's agents of earlier versions, which write the result in calls of their own.
    pub(crate) result: Option<(&'a str, &'a str)>,
}

/// The set every result's id is a member of; a result's hash is this followed by the id.
pub(crate) const RESULTS: &str = "_agent_result_";
/// The SQL stores' hash of first-report marks (field: the mark, value: the writer's token).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) const MARKS: &str = "jobagent:results";

impl ResultWrite<'_> {
    /// The result's hash, `_agent_result_<id>`.
    pub(crate) fn key(&self) -> String {
        format!("{RESULTS}{}", self.id)
    }
}
