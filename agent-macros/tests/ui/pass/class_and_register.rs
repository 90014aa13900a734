//! A .NET-style class name with auto-registration at the center.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent(
    transient,
    class = "MsgDevOps.Job.TestJob,MsgDevOps",
    register_id = "test-job",
    register_name = "Test job",
    register_cron = "*/5 * * * *"
)]
#[derive(Default)]
pub struct TestJob;

impl JobAgent for TestJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let reg = registry
        .find("MsgDevOps.Job.TestJob,MsgDevOps")
        .expect("found by its full class");
    assert_eq!(reg.class(), "MsgDevOps.Job.TestJob,MsgDevOps");
    assert_eq!(reg.type_path(), format!("{}::TestJob", module_path!()));
    assert_eq!(reg.kind(), JobKind::Transient);
    assert_eq!(
        reg.auto_register().map(|a| (a.id, a.name, a.cron)),
        Some(("test-job", "Test job", "*/5 * * * *"))
    );
}
