use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(constructor = Unquoted::new)]
struct Unquoted;

impl Unquoted {
    fn new() -> Self {
        Unquoted
    }
}

impl JobAgent for Unquoted {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
