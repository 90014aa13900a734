use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(stall_after = "30")]
#[derive(Default)]
struct NoUnit;

#[job_agent(on_stall = "cancel")]
#[derive(Default)]
struct CancelWithoutBound;

#[job_agent(stall_after = "1m", on_stall = "kill")]
#[derive(Default)]
struct BadAction;

impl JobAgent for NoUnit {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
impl JobAgent for CancelWithoutBound {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
impl JobAgent for BadAction {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
