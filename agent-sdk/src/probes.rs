//! Probes for an orchestrator: `healthz` (the process serves) and `readyz` (the agent's own
//! store answers, and the agent is not draining).
//!
//! The agent's router answers them under its path (`/jobagent/healthz`, `/jobagent/readyz`);
//! [`Agent::probes`](crate::Agent::probes) serves them at `/healthz` and `/readyz` for a host
//! that wants them at the root or on another listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::endpoint::AgentInner;
use crate::sync::lock;

/// How long the store's answer to a readiness check stands: probes from several sources (or a
/// tight period) cost the store one round trip per second at most.
const READY_CACHE: Duration = Duration::from_secs(1);
/// How long a readiness check waits for the store.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// The probe routes at the root of a router.
pub(crate) fn router<S>(agent: Arc<AgentInner>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(agent)
}

/// The process serves: always 200 while the router answers.
pub(crate) async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok")
}

/// 200 `ready`, or 503 with why not: the agent drains or shuts down, or its own store (the
/// one `JOBAGENT_STORE` names) does not answer. An agent whose stores come with each request
/// has nothing of its own to check.
pub(crate) async fn readyz(State(agent): State<Arc<AgentInner>>) -> (StatusCode, String) {
    if let Some(why) = agent.runtime.not_accepting() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"));
    }
    let Some(store) = agent.stores.local() else {
        return (StatusCode::OK, "ready".to_owned());
    };
    let cached = lock(&agent.readiness)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < READY_CACHE)
        .map(|(_, outcome)| outcome.clone());
    let outcome = match cached {
        Some(outcome) => outcome,
        None => {
            let outcome = store.ping(READY_WITHIN).await.map_err(String::from);
            *lock(&agent.readiness) = Some((Instant::now(), outcome.clone()));
            outcome
        }
    };
    match outcome {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store ({}) does not answer: {e}",
                store.label
            ),
        ),
    }
}
