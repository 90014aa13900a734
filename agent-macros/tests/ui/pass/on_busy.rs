use jobagent::{BusyPolicy, JobAgent, JobContext, JobError, JobKind, job_agent};

#[job_agent(on_busy = "queue")]
#[derive(Default)]
struct Queued;

#[job_agent(hang, on_busy = "replace")]
#[derive(Default)]
struct Replaced;

#[job_agent]
#[derive(Default)]
struct Rejected;

impl JobAgent for Queued {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
impl JobAgent for Replaced {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
impl JobAgent for Rejected {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn main() {
    let registry = jobagent::Registry::from_inventory().expect("no duplicates");
    let policy = |name: &str| {
        let class = format!("{}::{name}", module_path!());
        let reg = registry.find(&class).expect("registered");
        (reg.kind(), reg.on_busy())
    };
    assert_eq!(policy("Queued"), (JobKind::Singleton, BusyPolicy::Queue));
    assert_eq!(policy("Replaced"), (JobKind::Hang, BusyPolicy::Replace));
    assert_eq!(policy("Rejected"), (JobKind::Singleton, BusyPolicy::Reject));
}
