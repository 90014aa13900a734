use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(register = false, register_cron = "0 3 * * *")]
#[derive(Default)]
pub struct NightlyJob;

impl JobAgent for NightlyJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(register = "no")]
#[derive(Default)]
pub struct OtherJob;

impl JobAgent for OtherJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
