//! Runs the example message service with its job agent.

use agent_sdk::AgentOptions;
use example_agent::Service;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    // Colors only on a terminal: logs collected from a pipe or a file stay plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Err(message) = serve().await {
        tracing::error!("{message}");
        eprintln!("example-agent: {message}");
        std::process::exit(2);
    }
}

async fn serve() -> Result<(), String> {
    let addr = example_agent::listen_addr()?;
    let options = AgentOptions::from_env().map_err(|e| e.to_string())?;
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
    axum::serve(listener, app)
        .with_graceful_shutdown(agent.shutdown_on_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("example-agent stopped");
    Ok(())
}
