//! An enum can be a job too.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent(hang, class = "Jobs.Mode")]
#[derive(Default)]
pub enum ModeJob {
    #[default]
    Fast,
    Thorough,
}

impl JobAgent for ModeJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        match self {
            ModeJob::Fast | ModeJob::Thorough => Ok(()),
        }
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let reg = registry
        .find("Jobs.Mode")
        .expect("registered under its class");
    assert_eq!(reg.type_path(), format!("{}::ModeJob", module_path!()));
    assert_eq!(reg.kind(), JobKind::Hang);
    // Registered by default, with the type path as id.
    assert_eq!(reg.auto_register().map(|a| a.id), Some(reg.type_path()));
}
