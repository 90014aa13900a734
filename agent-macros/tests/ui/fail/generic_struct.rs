use std::marker::PhantomData;

use jobagent::{JobAgent, JobContext, JobError, job_agent};

#[job_agent]
#[derive(Default)]
struct Generic<T> {
    _marker: PhantomData<fn() -> T>,
}

impl<T: 'static> JobAgent for Generic<T> {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[job_agent]
struct Borrowing<'a> {
    name: &'a str,
}

impl JobAgent for Borrowing<'static> {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        let _ = self.name;
        Ok(())
    }
}

fn main() {}
