use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(constructor = "Missing::with_defaults")]
struct Missing;

impl Missing {
    #[allow(dead_code)]
    fn new() -> Self {
        Missing
    }
}

impl JobAgent for Missing {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
