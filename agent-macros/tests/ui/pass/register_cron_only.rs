//! `register_cron` alone asks for auto-registration, like `register_id` or `register_name`.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent(register_cron = "0 3 * * *")]
#[derive(Default)]
pub struct PurgeJob;

impl JobAgent for PurgeJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let reg = registry.iter().next().expect("one job");
    assert_eq!(reg.class(), format!("{}::PurgeJob", module_path!()));
    assert_eq!(reg.kind(), JobKind::Singleton);
    assert_eq!(
        reg.auto_register().map(|a| (a.id, a.name, a.cron)),
        Some((concat!(module_path!(), "::PurgeJob"), "PurgeJob", "0 3 * * *"))
    );
}
