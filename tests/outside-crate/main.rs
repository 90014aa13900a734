//! A greeting service: one job that uses the service's configuration, given to the agent as
//! state, and the agent's router merged beside the service's own route.

use jobagent::{Agent, AgentOptions, JobAgent, JobContext, JobError, job_agent};
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

/// The job tested in-process, as the docs show (`jobagent::testing`): no center, no
/// database.
#[cfg(test)]
mod tests {
    use super::*;
    use jobagent::testing::TestRun;

    fn greeting(word: &str) -> Greeting {
        Greeting {
            word: word.to_owned(),
        }
    }

    #[tokio::test]
    async fn greets_by_name_with_the_configured_word() {
        let out = TestRun::new::<GreetJob>()
            .param(serde_json::json!({ "Name": "Ada" }))
            .state(greeting("Bonjour"))
            .run()
            .await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(out.texts(), ["Bonjour, Ada!"]);
    }

    #[tokio::test]
    async fn greets_the_world_without_a_name() {
        let out = TestRun::new::<GreetJob>().state(greeting("Hello")).run().await;
        assert_eq!(out.texts(), ["Hello, world!"]);
    }

    #[tokio::test]
    async fn a_name_that_is_not_text_fails_the_run() {
        let out = TestRun::new::<GreetJob>()
            .param(serde_json::json!({ "Name": ["Ada"] }))
            .state(greeting("Hello"))
            .run()
            .await;
        let err = out.result().expect_err("a list is not a name");
        assert!(err.starts_with("parameter `Name`: invalid type: sequence"), "{err}");
    }
}
