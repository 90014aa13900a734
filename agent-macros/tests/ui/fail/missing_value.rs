use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(class)]
#[derive(Default)]
struct NoClassValue;

impl JobAgent for NoClassValue {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(register_id = , register)]
#[derive(Default)]
struct NoIdValue;

impl JobAgent for NoIdValue {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
