//! `crate = "..."`: generated code reaches jobagent through a re-export (a platform crate
//! that wraps it, or a renamed dependency) instead of `::jobagent`.

mod platform {
    pub use jobagent as sdk;
}

use platform::sdk::{JobAgent, JobContext, JobError, Registry, job_agent};

#[job_agent(transient, crate = "crate::platform::sdk")]
#[derive(Default)]
pub struct Wrapped;

impl JobAgent for Wrapped {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::from_inventory().expect("no duplicate class");
    let reg = registry
        .find(&format!("{}::Wrapped", module_path!()))
        .expect("Wrapped is registered");
    assert_eq!(reg.kind(), platform::sdk::JobKind::Transient);
}
