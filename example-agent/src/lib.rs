//! A small message service: an outbox of messages sent now or later, with the jobs a
//! scheduling center runs on it (send what is due, clean up what was sent) and the demo jobs
//! the docs, tests and benchmarks drive.

pub mod jobs;
pub mod outbox;

use std::sync::Arc;

use axum::Router;
use jobagent::{Agent, AgentOptions, ConfigError};

use crate::outbox::Outbox;

/// The service: its job agent, and its own routes beside the agent's.
pub struct Service {
    /// The job agent, built with the service's outbox as state.
    pub agent: Agent,
    /// The outbox's routes, the agent's, and its probes at `/healthz` and `/readyz`.
    pub app: Router,
}

impl Service {
    /// Builds the service on a new outbox, which the routes use and the jobs are given.
    pub fn new(options: AgentOptions) -> Result<Self, ConfigError> {
        let outbox = Arc::new(Outbox::default());
        let agent = Agent::new(options.state(outbox.clone()))?;
        let app = Router::new()
            .merge(outbox::routes(outbox))
            .merge(agent.probes())
            .merge(agent.router());
        Ok(Self { agent, app })
    }
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
