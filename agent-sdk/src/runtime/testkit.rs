//! What the runtime's unit tests share: a runtime without a store (lines and results kept in
//! memory, as [`testing`](crate::testing) keeps them), dispatches, and a few jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Runtime;
use crate::JobContext;
use crate::cluster::Member;
use crate::error::{DispatchError, JobError};
use crate::item::LazyItem;
use crate::job::{DynJob, JobAgent, JobKind};
use crate::options::{AgentOptions, RequestLimits};
use crate::outcome::Outlet;
use crate::registry::{BusyPolicy, JobRegistration, Registry};
use crate::request::{Action, Dispatch};
use crate::result::DispatchResult;
use crate::state::{MissingState, Need, States};
use crate::sync::lock;
use crate::testing::Memory;

/// A runtime of `regs` without a store, and where its runs' lines and results go.
pub(super) fn runtime(
    regs: &[&'static JobRegistration],
    options: AgentOptions,
) -> (Arc<Runtime>, Outlet, Arc<Memory>) {
    let registry = Registry::from_registrations(regs.iter().copied()).expect("no duplicates");
    let member = Member {
        instance: "unit".to_owned(),
        server_id: "unit".to_owned(),
    };
    let memory = Arc::new(Memory::default());
    let outlet = Outlet {
        memory: Some(memory.clone()),
        ..Outlet::default()
    };
    (
        Arc::new(Runtime::new(registry, options, member)),
        outlet,
        memory,
    )
}

/// Options with the given agent-wide and per-class limits and a short grace.
pub(super) fn limited(max_running: usize, per_class: usize) -> AgentOptions {
    AgentOptions::new()
        .limits(
            RequestLimits::default()
                .max_running(max_running)
                .max_running_per_class(per_class),
        )
        .timeout_grace(Duration::from_millis(500))
}

/// A run dispatch of `reg` with job id `job_id` and the job item `item` (JSON).
pub(super) fn dispatch(reg: &'static JobRegistration, job_id: &str, item: &str) -> Dispatch {
    Dispatch {
        action: Action::Run,
        class: Some(reg.class().to_owned()),
        job_id: job_id.to_owned(),
        item: LazyItem::from_json(item.to_owned()).expect("a valid item"),
        job_url: None,
        server_id: None,
        storage: None,
        console: None,
        headers: Default::default(),
        agent_server: None,
        body: "{}".to_owned(),
        param_charge: None,
    }
}

/// Starts run `job_id` of `reg`: the agent's answer.
pub(super) async fn start(
    rt: &Arc<Runtime>,
    outlet: &Outlet,
    reg: &'static JobRegistration,
    job_id: &str,
) -> Result<String, DispatchError> {
    rt.run(reg, dispatch(reg, job_id, "{}"), outlet.clone())
        .await
}

/// The result of `job_id`, which must come within 10 s.
pub(super) async fn result(memory: &Memory, job_id: &str) -> DispatchResult {
    match memory.result_within(job_id, Duration::from_secs(10)).await {
        Some(result) => result,
        None => panic!("no result for job {job_id} within 10 s"),
    }
}

/// Waits up to 10 s until `cond` holds.
pub(super) async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The agent's runs in flight and the class's admitted runs.
pub(super) fn counts(rt: &Runtime, reg: &'static JobRegistration) -> (usize, usize) {
    (
        rt.counters.in_flight.load(Ordering::Acquire),
        rt.state(reg).admitted.load(Ordering::Acquire),
    )
}

/// The context of run `job_id` of `reg`, in flight.
pub(super) fn running(rt: &Runtime, reg: &'static JobRegistration, job_id: &str) -> JobContext {
    let slot = lock(&rt.state(reg).slot);
    let run = slot.runs.values().find(|run| run.cx.job_id() == job_id);
    match run {
        Some(run) => run.cx.clone(),
        None => panic!("run {job_id} is not in flight"),
    }
}

fn none() -> Vec<Need> {
    Vec::new()
}

fn build<J: JobAgent + Default>(_: &States) -> Result<Arc<dyn DynJob>, MissingState> {
    Ok(Arc::new(J::default()))
}

/// Times a constructor panicked.
pub(super) static CONSTRUCTED: AtomicUsize = AtomicUsize::new(0);

fn panicking(_: &States) -> Result<Arc<dyn DynJob>, MissingState> {
    CONSTRUCTED.fetch_add(1, Ordering::Relaxed);
    panic!("no database configured")
}

/// Runs until cancelled, then ends well.
#[derive(Default)]
pub(super) struct UntilCancelled;
impl JobAgent for UntilCancelled {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        cx.console().info("waiting");
        cx.cancelled().await;
        Ok(())
    }
}

/// Sleeps `SLEEP` (an hour), or until cancelled (then fails as cancelled).
#[derive(Default)]
pub(super) struct Sleeper;
pub(super) const SLEEP: Duration = Duration::from_secs(3600);
impl JobAgent for Sleeper {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        cx.sleep(SLEEP).await
    }
}

/// Sleeps an hour whatever happens.
#[derive(Default)]
pub(super) struct Stubborn;
impl JobAgent for Stubborn {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(SLEEP).await;
        Ok(())
    }
}

/// Ends at once.
#[derive(Default)]
pub(super) struct Quick;
impl JobAgent for Quick {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        cx.console().info("done");
        Ok(())
    }
}

/// Panics in `on_start`.
#[derive(Default)]
pub(super) struct Panics;
impl JobAgent for Panics {
    async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
        panic!("index out of bounds")
    }
}

macro_rules! registration {
    ($name:ident, $class:literal, $kind:ident, $factory:expr) => {
        pub(super) static $name: JobRegistration =
            JobRegistration::new($class, $class, JobKind::$kind, $factory, none);
    };
}

registration!(WAITS, "unit::Waits", Transient, build::<UntilCancelled>);
registration!(SLEEPS, "unit::Sleeps", Transient, build::<Sleeper>);
registration!(STUBBORN, "unit::Stubborn", Transient, build::<Stubborn>);
registration!(QUICK, "unit::Quick", Transient, build::<Quick>);
registration!(PANICS, "unit::Panics", Transient, build::<Panics>);
registration!(BROKEN, "unit::Broken", Transient, panicking);
registration!(
    BROKEN_SINGLETON,
    "unit::BrokenSingleton",
    Singleton,
    panicking
);
registration!(
    SINGLETON,
    "unit::Singleton",
    Singleton,
    build::<UntilCancelled>
);
registration!(HANG, "unit::Hang", Hang, build::<Quick>);

pub(super) static QUEUED: JobRegistration = JobRegistration::new(
    "unit::Queued",
    "unit::Queued",
    JobKind::Singleton,
    build::<UntilCancelled>,
    none,
)
.with_on_busy(BusyPolicy::Queue);

/// Silent until cancelled; its watchdog cancels it after 1 s of silence.
pub(super) static STALLS: JobRegistration = JobRegistration::new(
    "unit::Stalls",
    "unit::Stalls",
    JobKind::Transient,
    build::<Sleeper>,
    none,
)
.with_stall(1_000, true);
