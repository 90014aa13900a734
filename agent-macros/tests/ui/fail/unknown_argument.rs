use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(singelton)]
#[derive(Default)]
struct Typo;

impl JobAgent for Typo {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(transient, parallel)]
#[derive(Default)]
struct Unknown;

impl JobAgent for Unknown {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
