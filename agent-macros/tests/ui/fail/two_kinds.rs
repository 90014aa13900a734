use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(transient, hang)]
#[derive(Default)]
struct TwoKinds;

impl JobAgent for TwoKinds {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
