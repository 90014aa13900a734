use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent]
struct NoDefault {
    limit: u32,
}

impl JobAgent for NoDefault {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        let _ = self.limit;
        Ok(())
    }
}

fn main() {}
