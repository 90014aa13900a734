//! Runs the example message service with its job agent.
//!
//! Environment variables of the example, besides the agent's own `JOBAGENT_*` options
//! (docs/configuration.md):
//!
//! - `JOBAGENT_LISTEN`: the service's address, default `127.0.0.1:5000`.
//! - `JOBAGENT_METRICS_LISTEN`: an address like `127.0.0.1:9464` to serve Prometheus metrics
//!   at `GET /metrics` on, a listener of its own; empty or unset, no metrics are recorded.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: an OTLP/HTTP collector like `http://127.0.0.1:4318` to
//!   export the traces to (JSON, at `<endpoint>/v1/traces`); runs continue the trace of their
//!   job's `traceparent`. The other standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`,
//!   default `example-agent`; `OTEL_EXPORTER_OTLP_HEADERS`, ...). Unset, no traces.
//! - `JOBAGENT_SERVE_HEADER_TIMEOUT_MS`, `JOBAGENT_SERVE_BODY_TIMEOUT_MS`,
//!   `JOBAGENT_SERVE_MAX_CONNECTIONS`: the listener's bounds (`jobagent::ServeLimits`).
//! - `RUST_LOG`: the log filter, default `info`.

mod telemetry;

use example_agent::Service;
use jobagent::AgentOptions;

use crate::telemetry::Telemetry;

#[tokio::main]
async fn main() {
    let telemetry = Telemetry::init();
    let result = serve().await;
    telemetry.shutdown().await;
    if let Err(message) = result {
        tracing::error!("{message}");
        eprintln!("example-agent: {message}");
        std::process::exit(2);
    }
}

async fn serve() -> Result<(), String> {
    let addr = example_agent::listen_addr()?;
    let metrics_addr = telemetry::metrics_addr()?;
    let options = AgentOptions::from_env().map_err(|e| e.to_string())?;
    // Before the agent is built: it records through the recorder installed then.
    if let Some(metrics_addr) = metrics_addr {
        let local = telemetry::serve_metrics(metrics_addr).await?;
        tracing::info!(%local, "metrics at http://{local}/metrics");
    }
    let Service { agent, app } = Service::new(options).map_err(|e| e.to_string())?;
    if agent.start_auto_registration().is_some() {
        tracing::info!("registering the jobs at the center, in the background");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (JOBAGENT_LISTEN): {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let classes: Vec<&str> = agent.registry().iter().map(|r| r.class()).collect();
    tracing::info!(%local, path = agent.options().path_str(), jobs = ?classes, "example-agent listening");
    // Bounded: a client that sends its request slowly, or not at all, cannot hold a
    // connection for long (JOBAGENT_SERVE_* variables; docs/security.md, "Serving bounds").
    let limits = jobagent::ServeLimits::from_env().map_err(|e| e.to_string())?;
    jobagent::serve(listener, app)
        .limits(limits)
        .with_graceful_shutdown(agent.shutdown_on_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("example-agent stopped");
    Ok(())
}
