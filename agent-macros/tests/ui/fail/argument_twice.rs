use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent(class = "Jobs.A,Jobs", class = "Jobs.B,Jobs")]
#[derive(Default)]
struct ClassTwice;

impl JobAgent for ClassTwice {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(transient, transient)]
#[derive(Default)]
struct KindTwice;

impl JobAgent for KindTwice {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(register, register)]
#[derive(Default)]
struct RegisterTwice;

impl JobAgent for RegisterTwice {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent(constructor = "WithNew::new", constructor = "WithNew::new")]
struct WithNew;

impl WithNew {
    fn new() -> Self {
        WithNew
    }
}

impl JobAgent for WithNew {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
