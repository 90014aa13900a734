use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(transient = true)]
#[derive(Default)]
struct FlagValue;

impl JobAgent for FlagValue {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
