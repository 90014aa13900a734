use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(constructor = "not a path!")]
struct BadConstructor;

impl JobAgent for BadConstructor {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
