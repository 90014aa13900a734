//! A constructor takes each state value as a clone of what was given: a type that is not
//! `Clone` is refused, with the fix (`Arc<T>`) in the message.

use jobagent::{JobAgent, JobContext, JobError, job_agent};

pub struct Db;

#[job_agent(constructor = "Report::new")]
pub struct Report;

impl Report {
    fn new(_db: Db) -> Self {
        Report
    }
}

impl JobAgent for Report {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {}
