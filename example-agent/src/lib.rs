//! A small message service: an outbox of messages sent now or later, with the jobs a
//! scheduling center runs on it (send what is due, clean up what was sent) and the demo jobs
//! the docs, tests and benchmarks drive.

pub mod jobs;
pub mod outbox;

use agent_sdk::Agent;
use axum::Router;

/// The service's own routes beside the job agent's.
pub fn app(agent: &Agent) -> Router {
    Router::new().merge(outbox::routes()).merge(agent.router())
}

/// The address the example listens on: `JOBAGENT_LISTEN`, default `127.0.0.1:5000`.
pub fn listen_addr() -> Result<std::net::SocketAddr, String> {
    let raw = std::env::var("JOBAGENT_LISTEN").unwrap_or_default();
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 5000)));
    }
    raw.parse().map_err(|_| {
        format!("invalid JOBAGENT_LISTEN: `{raw}` is not an address like 127.0.0.1:5000")
    })
}
