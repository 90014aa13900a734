//! `constructor` with state: the job is built from values given to the agent
//! (`AgentOptions::state`), and the agent refuses to start without them.

use std::sync::Arc;

use jobagent::{Agent, AgentOptions, ConfigError, JobAgent, JobContext, JobError, job_agent};

#[derive(Clone)]
pub struct Settings {
    pub batch: u32,
}

pub struct Db {
    pub url: String,
}

#[job_agent(transient, constructor = "Report::new")]
pub struct Report {
    db: Arc<Db>,
    settings: Settings,
}

impl Report {
    fn new(db: Arc<Db>, settings: Settings) -> Self {
        Report { db, settings }
    }
}

impl JobAgent for Report {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let _ = (&self.db.url, self.settings.batch, cx.state::<Settings>()?);
        Ok(())
    }
}

fn main() {
    match Agent::new(AgentOptions::new().state(Settings { batch: 10 })) {
        Err(ConfigError::MissingState { job, state, .. }) => {
            assert!(job.ends_with("::Report"), "{job}");
            assert!(state.contains("Arc<") && state.ends_with("::Db>"), "{state}");
        }
        other => panic!("expected MissingState, got {other:?}"),
    }
    let agent = Agent::new(
        AgentOptions::new()
            .state(Settings { batch: 10 })
            .state(Arc::new(Db { url: "postgres://".into() })),
    )
    .expect("both state types given");
    assert_eq!(agent.registry().iter().count(), 1);
}
