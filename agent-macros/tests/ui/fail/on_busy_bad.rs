use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(on_busy = "wait")]
#[derive(Default)]
struct Waits;

#[job_agent(transient, on_busy = "queue")]
#[derive(Default)]
struct TransientQueue;

impl JobAgent for Waits {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
impl JobAgent for TransientQueue {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
