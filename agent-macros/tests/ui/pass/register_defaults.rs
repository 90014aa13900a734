//! No `register` argument: the job is registered as on .NET, the id defaulting to the
//! type path and the name to the type name (`JobAgentRegisterService.cs` in
//! yuzd/Hangfire.HttpJob `Agent/`), with no cron.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent]
#[derive(Default)]
pub struct NightlyJob;

impl JobAgent for NightlyJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let reg = registry.iter().next().expect("one job");
    assert_eq!(reg.class(), format!("{}::NightlyJob", module_path!()));
    assert_eq!(reg.kind(), JobKind::Singleton);
    assert_eq!(
        reg.auto_register().map(|a| (a.id, a.name, a.cron)),
        Some((concat!(module_path!(), "::NightlyJob"), "NightlyJob", ""))
    );
}
