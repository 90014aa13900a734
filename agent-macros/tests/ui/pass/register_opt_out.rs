//! `register = false`: the job stays out of auto-registration.

use jobagent::{JobAgent, JobContext, JobError, Registry, job_agent};

#[job_agent(transient, register = false)]
#[derive(Default)]
pub struct InternalJob;

impl JobAgent for InternalJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job");
    let reg = registry.iter().next().expect("one job");
    assert_eq!(reg.auto_register(), None);
}
