//! `singleton` spelled out is the same as the default.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent(singleton)]
#[derive(Default)]
pub struct ReportJob;

impl JobAgent for ReportJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let reg = registry.iter().next().expect("one job");
    assert_eq!(reg.class(), format!("{}::ReportJob", module_path!()));
    assert_eq!(reg.kind(), JobKind::Singleton);
    // Registered by default, with the type path as id.
    assert_eq!(reg.auto_register().map(|a| a.id), Some(reg.type_path()));
}
