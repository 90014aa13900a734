//! The result of a dispatch as the center reads it (`_agent_result_<id>`), and where results go.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::future::BoxFuture;
use crate::request::Action;

/// The result of one accepted dispatch, as the center reads it from `_agent_result_<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct DispatchResult {
    #[serde(rename = "Id")]
    pub(crate) id: String,
    #[serde(rename = "Action")]
    pub(crate) action: &'static str,
    #[serde(rename = "RunId")]
    pub(crate) run_id: String,
    #[serde(rename = "R")]
    pub(crate) r: &'static str,
    #[serde(rename = "E")]
    pub(crate) e: String,
    #[serde(skip)]
    pub(crate) elapsed: Duration,
}

impl DispatchResult {
    pub(crate) fn new(
        id: &str,
        action: Action,
        run_id: &str,
        error: Option<String>,
        started: SystemTime,
    ) -> Self {
        Self {
            id: id.to_owned(),
            action: action.as_str(),
            run_id: run_id.to_owned(),
            r: if error.is_some() { "err" } else { "ok" },
            e: error.unwrap_or_default(),
            elapsed: SystemTime::now()
                .duration_since(started)
                .unwrap_or_default(),
        }
    }

    pub(crate) fn is_ok(&self) -> bool {
        self.r == "ok"
    }
}

/// Where results go: the center's store, or the agent's log.
pub(crate) trait ResultSink: Send + Sync + 'static {
    /// Writes `result`; resolves to whether it was written (a store that never took it
    /// within its retry bound: false).
    fn write(&self, result: DispatchResult) -> BoxFuture<bool>;

    /// How long an unwritten result is retried, when it can fail (see
    /// [`StoreResults`](crate::store::StoreResults)): the run waits this long at most for its
    /// console's last lines before its result.
    fn retry_bound(&self) -> Option<Duration> {
        None
    }

    /// Whether a result (a success when `ok`) would be written at all: when not, the run
    /// skips building it.
    fn wants(&self, ok: bool) -> bool {
        let _ = ok;
        true
    }
}

/// The result sink of a run: the log's, one for all runs (nothing to count: a shared `Arc`'s
/// count is updated by both worker threads on every run), or a store's.
pub(crate) enum Results {
    Log,
    Sink(Arc<dyn ResultSink>),
}

impl std::ops::Deref for Results {
    type Target = dyn ResultSink;

    fn deref(&self) -> &Self::Target {
        match self {
            Results::Log => &LogResults,
            Results::Sink(sink) => sink.as_ref(),
        }
    }
}

/// Results of an agent without a store: one log line each; a success at `debug` (runs that
/// succeed are the norm, and a job dispatched every second would otherwise add 86,400 info
/// lines a day), a failure at `warn`.
pub(crate) struct LogResults;

impl ResultSink for LogResults {
    fn wants(&self, ok: bool) -> bool {
        !ok || tracing::enabled!(target: "jobagent::result", tracing::Level::DEBUG)
    }

    fn write(&self, r: DispatchResult) -> BoxFuture<bool> {
        if r.is_ok() {
            tracing::debug!(target: "jobagent::result", job_id = %r.id, action = r.action, run_id = %r.run_id, elapsed_ms = r.elapsed.as_millis() as u64, "dispatch succeeded");
        } else {
            tracing::warn!(target: "jobagent::result", job_id = %r.id, action = r.action, run_id = %r.run_id, elapsed_ms = r.elapsed.as_millis() as u64, error = %r.e, "dispatch failed");
        }
        crate::future::written()
    }
}
