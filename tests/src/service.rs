//! The example service, started in-process on `127.0.0.1:0` with its own agent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jobagent::{Agent, AgentOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::center::Center;
use crate::logs::Logs;

/// A running example service. Dropping it aborts the server; [`shutdown`](Self::shutdown)
/// stops it gracefully.
#[derive(Debug)]
pub struct TestService {
    agent: Agent,
    addr: SocketAddr,
    base_url: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Installs a `tracing` subscriber writing to the test output (filter from `RUST_LOG`,
/// default `warn`): the test binary's one global subscriber, [`Logs::global`], which also
/// captures what is logged. Safe to call more than once. A program that installed its own
/// subscriber before (the bench, the soak) keeps it, and nothing is captured.
pub fn init_tracing() {
    Logs::global();
}

impl TestService {
    /// Starts the service with default options and log-only runs allowed (most protocol
    /// tests send no store; a run without one is otherwise refused).
    pub async fn start() -> Self {
        Self::start_with(AgentOptions::new().log_only(true)).await
    }

    /// Starts the service with `options`; panics when the agent cannot be built or the port
    /// cannot be bound.
    pub async fn start_with(options: AgentOptions) -> Self {
        init_tracing();
        let example_agent::Service { agent, app } = example_agent::Service::new(options)
            .unwrap_or_else(|e| panic!("invalid agent options: {e}"));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown_agent = agent.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    shutdown_agent.shutdown().await;
                })
                .await
        });
        Self {
            agent,
            addr,
            base_url: format!("http://{addr}"),
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// The agent serving the center's requests.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The agent endpoint the center calls: base URL plus the configured path.
    pub fn agent_url(&self) -> String {
        format!("{}{}", self.base_url, self.agent.options().path_str())
    }

    /// A center whose jobs call this agent, checking that every reply carries this agent's
    /// `agentServerId` header and cookie and is `text/plain`.
    pub fn center(&self) -> Center {
        Center::new(self.agent_url()).expect_agent(self.agent.server_id())
    }

    /// Graceful shutdown: stops the server, which runs [`Agent::shutdown`]; waits for both
    /// (at most `bound`, else panics) and returns how long it took.
    pub async fn shutdown(mut self, bound: Duration) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(bound, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the server failed: {e}"),
                Ok(Err(e)) => panic!("the server task failed: {e}"),
                Err(_) => panic!("the service did not shut down within {bound:?}"),
            }
        }
        started.elapsed()
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
