use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(class = "")]
#[derive(Default)]
struct EmptyClass;

impl JobAgent for EmptyClass {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(class = "   ")]
#[derive(Default)]
struct BlankClass;

impl JobAgent for BlankClass {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
