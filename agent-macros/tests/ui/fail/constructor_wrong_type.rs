use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(constructor = "WrongType::try_new")]
struct WrongType;

impl WrongType {
    fn try_new() -> Result<Self, String> {
        Ok(WrongType)
    }
}

impl JobAgent for WrongType {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
