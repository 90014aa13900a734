//! `constructor`: the job is built by a function instead of `Default`.

use jobagent::{JobAgent, JobContext, JobError, JobKind, Registry, job_agent};

#[job_agent(transient, constructor = "MyJob::new")]
pub struct MyJob {
    limit: u32,
}

impl MyJob {
    fn new() -> Self {
        MyJob { limit: 100 }
    }
}

impl JobAgent for MyJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        let _ = self.limit;
        Ok(())
    }
}

mod build {
    pub(crate) fn other_job() -> super::OtherJob {
        super::OtherJob(7)
    }
}

#[job_agent(class = "Jobs.Other", constructor = "crate::build::other_job")]
pub struct OtherJob(u8);

impl JobAgent for OtherJob {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        let _ = self.0;
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("two jobs, no duplicate class");
    assert_eq!(registry.iter().count(), 2);
    let reg = registry
        .find(&format!("{}::MyJob", module_path!()))
        .expect("MyJob is registered");
    assert_eq!(reg.kind(), JobKind::Transient);
    // Registered by default, with the type path as id.
    assert_eq!(reg.auto_register().map(|a| a.id), Some(reg.type_path()));
    let other = registry.find("Jobs.Other").expect("OtherJob is registered");
    assert_eq!(other.class(), "Jobs.Other");
    assert_eq!(other.type_path(), format!("{}::OtherJob", module_path!()));
    assert_eq!(other.kind(), JobKind::Singleton);
}
