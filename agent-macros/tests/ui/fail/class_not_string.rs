use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(class = 5)]
#[derive(Default)]
struct NumberClass;

impl JobAgent for NumberClass {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(register_cron = 0 3 * * *)]
#[derive(Default)]
struct UnquotedCron;

impl JobAgent for UnquotedCron {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
