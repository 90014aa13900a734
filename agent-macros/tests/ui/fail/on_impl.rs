use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[derive(Default)]
struct Cleanup;

#[job_agent]
impl JobAgent for Cleanup {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
