//! A greeting service: one job that uses the service's configuration, given to the agent as
//! state, and the agent's router merged beside the service's own route.

use agent_sdk::{Agent, AgentOptions, JobAgent, JobContext, JobError, job_agent};
use axum::Router;
use axum::routing::get;
use tracing_subscriber::EnvFilter;

/// The service's configuration: what its jobs share.
#[derive(Clone)]
struct Greeting {
    word: String,
}

/// Greets `Name` (default "world") on the job's console.
#[job_agent(transient, constructor = "GreetJob::new")]
struct GreetJob {
    greeting: Greeting,
}

impl GreetJob {
    fn new(greeting: Greeting) -> Self {
        Self { greeting }
    }
}

impl JobAgent for GreetJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let name: String = cx.param("Name")?.unwrap_or_else(|| "world".to_owned());
        cx.console()
            .info(format!("{}, {name}!", self.greeting.word));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let greeting = Greeting {
        word: std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned()),
    };
    let agent = Agent::new(AgentOptions::from_env()?.state(greeting))?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(agent.router());
    let listen = std::env::var("JOBAGENT_LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(agent.shutdown_on_signal())
        .await?;
    Ok(())
}
