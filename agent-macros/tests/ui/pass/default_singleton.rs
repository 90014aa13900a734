//! No arguments: a singleton named by its Rust path, not auto-registered.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent]
#[derive(Default)]
pub struct CleanupJob;

impl JobAgent for CleanupJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("one job, no duplicate class");
    assert_eq!(registry.iter().count(), 1);
    let path = format!("{}::CleanupJob", module_path!());
    let reg = registry
        .find(&path)
        .expect("registered under its Rust path");
    assert_eq!(reg.class(), path);
    assert_eq!(reg.type_path(), path);
    assert_eq!(reg.kind(), JobKind::Singleton);
    // Registered by default, with the type path as id.
    assert_eq!(reg.auto_register().map(|a| a.id), Some(reg.type_path()));
}
