//! Test a job in-process: run one job of a registered class with a parameter, headers,
//! application state and an `AgentTimeout`; stop or cancel it; read its console lines,
//! progress bars and result as the center's dashboard would show them. No HTTP, no store,
//! no database: a plain `#[tokio::test]`.
//!
//! The run goes through the agent's own runtime, as a dispatch from the center does: the job
//! gets the same [`JobContext`](crate::JobContext) (its parameter, headers, console,
//! cancellation token and state), the same timeout, stop, panic and error handling, and the
//! same console lines (the runtime's green lifecycle lines, the red `job failed: ...` line).
//! Only the decoding of the center's request and the store are left out: lines and results
//! are kept in memory instead of being written to the center's store.
//!
//! ```
//! use jobagent::testing::TestRun;
//! use jobagent::{job_agent, ConsoleColor, JobAgent, JobContext, JobError};
//!
//! #[job_agent(transient)]
//! #[derive(Default)]
//! struct SendSmsJob;
//!
//! impl JobAgent for SendSmsJob {
//!     async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
//!         let to: String = cx.param("To")?.ok_or("`To` is required")?;
//!         cx.console().info(format!("sending to {to}"));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let out = TestRun::new::<SendSmsJob>()
//!     .param(serde_json::json!({ "To": "+31 6 1234 5678" }))
//!     .run()
//!     .await;
//! assert_eq!(out.result(), Ok(()));
//! assert_eq!(out.texts(), ["sending to +31 6 1234 5678"]);
//! assert_eq!(out.console_lines()[0].color, Some(ConsoleColor::INFO));
//!
//! let out = TestRun::new::<SendSmsJob>().run().await;
//! assert_eq!(out.result(), Err("`To` is required"));
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::Member;
use crate::console::{self, ConsoleColor, LineSink};
use crate::future::BoxFuture;
use crate::item::LazyItem;
use crate::job::JobAgent;
use crate::options::AgentOptions;
use crate::outcome::Outlet;
use crate::registry::{JobRegistration, Registry};
use crate::request::{Action, Dispatch};
use crate::result::{DispatchResult, ResultSink};
use crate::runtime::Runtime;
use crate::sync::lock;

/// How long [`RunningJob::finish`] and [`RunningJob::wait_for_line`] wait for a run that
/// was given no [`timeout`](TestRun::timeout).
const WAIT_WITHOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// One run of a job, to be started in-process: a builder.
///
/// ```
/// # use jobagent::{job_agent, JobAgent, JobContext, JobError};
/// # #[job_agent] #[derive(Default)] struct ReportJob;
/// # impl JobAgent for ReportJob {
/// #     async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> { Ok(()) }
/// # }
/// # #[derive(Clone)] struct Db;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use jobagent::testing::TestRun;
///
/// let out = TestRun::new::<ReportJob>()
///     .param(serde_json::json!({ "Month": "2026-11" }))  // the request body
///     .header("x-tenant", "acme")                       // a pass-through header
///     .state(Db)                                        // AgentOptions::state
///     .timeout(Duration::from_secs(30))                 // the item's AgentTimeout
///     .run()
///     .await;
/// assert_eq!(out.result(), Ok(()));
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a TestRun does nothing until it is started"]
pub struct TestRun {
    /// The job's registration, or why there is none (reported by `start`).
    reg: Result<&'static JobRegistration, String>,
    param: Result<String, String>,
    headers: BTreeMap<String, String>,
    options: AgentOptions,
    timeout: Option<Duration>,
}

impl TestRun {
    /// A run of job type `J`, a `#[job_agent]` type linked into the test program. The
    /// parameter is empty, there are no headers, no state and no timeout.
    ///
    /// [`start`](Self::start) panics when `J` has no `#[job_agent]` registration.
    pub fn new<J: JobAgent>() -> Self {
        let name = std::any::type_name::<J>();
        Self::with(
            inventory::iter::<JobRegistration>
                .into_iter()
                .find(|reg| reg.is_type::<J>())
                .ok_or_else(|| {
                    format!(
                        "`{name}` has no #[job_agent] registration in this program: annotate it with #[job_agent] (or, when it is defined in another crate, make the test use something of that crate, such as its `link()`, so that the crate's registrations are linked)"
                    )
                }),
        )
    }

    /// A run of the job `reg` registers (the library's own tests make registrations by
    /// hand: `#[job_agent]` would register them for every test of the library).
    #[cfg(test)]
    pub(crate) fn of(reg: &'static JobRegistration) -> Self {
        Self::with(Ok(reg))
    }

    fn with(reg: Result<&'static JobRegistration, String>) -> Self {
        Self {
            reg,
            param: Ok(String::new()),
            headers: BTreeMap::new(),
            options: AgentOptions::new(),
            timeout: None,
        }
    }

    /// The parameter, serialized as JSON: what the center sends as the request body (the
    /// job's `Data`), read with [`JobContext::param`](crate::JobContext::param) and
    /// [`params`](crate::JobContext::params).
    pub fn param(mut self, value: impl serde::Serialize) -> Self {
        self.param = serde_json::to_string(&value)
            .map_err(|e| format!("the parameter cannot be serialized as JSON: {e}"));
        self
    }

    /// The parameter as text, sent as it is
    /// ([`JobContext::param_text`](crate::JobContext::param_text)).
    pub fn param_text(mut self, text: impl Into<String>) -> Self {
        self.param = Ok(text.into());
        self
    }

    /// A pass-through header ([`JobContext::header`](crate::JobContext::header)); a second
    /// one of the same name replaces the first.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// A value of application state, as given to the agent with
    /// [`AgentOptions::state`]: the job's constructor takes it, or the job reads it with
    /// [`JobContext::state`](crate::JobContext::state).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.options = self.options.state(value);
        self
    }

    /// The job item's `AgentTimeout` (in whole milliseconds): the run is cancelled when it
    /// passes and reported as a timeout (a run that ignores the cancellation for 5 s more is
    /// abandoned). Without one, or with zero (as the center's `0`), the run has no limit, but
    /// [`RunningJob::finish`] waits for it at most 60 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Starts the run, as the agent starts a run the center dispatched, and returns once it
    /// has started (the job runs on its own task).
    ///
    /// # Panics
    ///
    /// When the job type has no `#[job_agent]` registration, when its constructor takes a
    /// state type not given with [`state`](Self::state) (where `Agent::new` would refuse to
    /// start), or when the parameter could not be serialized.
    pub async fn start(self) -> RunningJob {
        let reg = self.reg.unwrap_or_else(|why| panic!("{why}"));
        let param = self.param.unwrap_or_else(|why| panic!("{why}"));
        let registry = Registry::from_registrations([reg]).unwrap_or_else(|e| panic!("{e}"));
        registry
            .check_states(&self.options.states)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut item = serde_json::Map::new();
        item.insert("AgentClass".into(), reg.class().into());
        item.insert("Data".into(), param.clone().into());
        let timeout = self.timeout.filter(|t| !t.is_zero());
        if let Some(timeout) = timeout {
            // Whole milliseconds, as the center sends them; a part of one counts as one.
            let ms = timeout.as_nanos().div_ceil(1_000_000);
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            item.insert("AgentTimeout".into(), ms.into());
        }
        let item = LazyItem::from_json(serde_json::Value::Object(item).to_string())
            .unwrap_or_else(|e| panic!("the job item: {e}"));
        let grace = self.options.timeout_grace;
        let wait = match timeout {
            Some(timeout) => timeout.saturating_add(grace * 2 + Duration::from_secs(1)),
            None => WAIT_WITHOUT_TIMEOUT,
        };
        let prefix = self.options.console_prefix.clone();
        let member = Member {
            instance: "testing".to_owned(),
            server_id: "testing".to_owned(),
        };
        let rt = Arc::new(Runtime::new(registry, self.options, member));
        let memory = Arc::new(Memory::default());
        let outlet = Outlet {
            memory: Some(memory.clone()),
            ..Outlet::default()
        };
        let job = RunningJob {
            rt,
            reg,
            outlet,
            memory,
            prefix,
            param,
            headers: self.headers,
            job_id: "1".to_owned(),
            next_id: AtomicU64::new(2),
            stops: Mutex::new(Vec::new()),
            wait,
        };
        let d = job.dispatch(Action::Run, job.job_id.clone(), item);
        if let Err(e) = job.rt.run(reg, d, job.outlet.clone()).await {
            panic!("the agent refused the run: {e}");
        }
        job
    }

    /// Starts the run and waits for it to end: [`start`](Self::start), then
    /// [`finish`](RunningJob::finish).
    pub async fn run(self) -> Outcome {
        self.start().await.finish().await
    }
}

/// A run started by [`TestRun::start`]: stop it, cancel it, wait for a line, then
/// [`finish`](Self::finish) it.
pub struct RunningJob {
    rt: Arc<Runtime>,
    reg: &'static JobRegistration,
    outlet: Outlet,
    memory: Arc<Memory>,
    /// The agent's console prefix, taken off the lines read back.
    prefix: String,
    param: String,
    headers: BTreeMap<String, String>,
    job_id: String,
    /// The next stop's job id.
    next_id: AtomicU64,
    /// The job ids of the stops the agent accepted.
    stops: Mutex<Vec<String>>,
    /// How long `finish` and `wait_for_line` wait.
    wait: Duration,
}

impl std::fmt::Debug for RunningJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningJob")
            .field("class", &self.reg.class())
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl RunningJob {
    fn dispatch(&self, action: Action, job_id: String, item: LazyItem) -> Dispatch {
        Dispatch {
            action,
            class: Some(self.reg.class().to_owned()),
            job_id,
            item,
            job_url: None,
            server_id: None,
            storage: None,
            console: None,
            headers: self.headers.clone(),
            agent_server: None,
            body: self.param.clone(),
            param_charge: None,
        }
    }

    /// The center's stop, as the agent serves it: the job's `on_stop` is called with the
    /// stop's own context (its job id, its console), the run ends and is reported stopped.
    /// Returns at once with the agent's answer (`JobClass:... stop success!`), or why it
    /// refused the stop (the run had already ended); the stop's console and result are in
    /// [`Outcome::stops`].
    pub async fn stop(&self) -> Result<String, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let d = self.dispatch(Action::Stop, id.clone(), LazyItem::default());
        let answer = self
            .rt
            .stop(self.reg, d, self.outlet.clone())
            .await
            .map_err(|e| e.to_string())?;
        lock(&self.stops).push(id);
        Ok(answer)
    }

    /// Cancels the run's token, as a shutdown or a lost cluster-wide claim does: the job's
    /// [`cancelled`](crate::JobContext::cancelled) resolves, and its `on_stop` is not
    /// called. How the run is reported depends on what the job returns (a job that returns
    /// [`JobError::cancelled`](crate::JobError::cancelled) fails with `cancelled`).
    pub fn cancel(&self) {
        if let Some(cx) = self.rt.latest_context(self.reg) {
            cx.cancel();
        }
    }

    /// Waits until the job writes a console line that `matches` (lines already written
    /// count), and returns it; `None` when the run ended without one.
    ///
    /// # Panics
    ///
    /// When the run neither writes such a line nor ends within its timeout (plus 11 s), or
    /// 60 s without a timeout.
    pub async fn wait_for_line(
        &self,
        mut matches: impl FnMut(&ConsoleLine) -> bool,
    ) -> Option<ConsoleLine> {
        let mut found = None;
        // Lines looked at already: each is looked at once.
        let mut seen = 0;
        let mut rx = self.memory.state.subscribe();
        let wait = rx.wait_for(|rec| {
            let lines = rec.consoles.get(&self.job_id).map(Vec::as_slice);
            let new = lines.unwrap_or_default().get(seen..).unwrap_or_default();
            seen += new.len();
            found = read_lines(new, &self.prefix)
                .into_iter()
                .filter(|line| line.color != Some(ConsoleColor::LIFECYCLE))
                .find(|line| matches(line));
            found.is_some() || rec.result(&self.job_id).is_some()
        });
        match tokio::time::timeout(self.wait, wait).await {
            Ok(_) => found,
            Err(_) => panic!(
                "the run of {} wrote no such line and did not end within {:?}",
                self.reg.class(),
                self.wait
            ),
        }
    }

    /// Waits for the run to end, and for the stops it was given, and returns what the
    /// dashboard would show.
    ///
    /// # Panics
    ///
    /// When the run does not end within its timeout (plus 11 s), or within 60 s without a
    /// timeout: a hang job ends only when stopped, other jobs when they return (or are
    /// cancelled, if they heed it).
    pub async fn finish(self) -> Outcome {
        let mut ids = vec![self.job_id.clone()];
        ids.extend(lock(&self.stops).iter().cloned());
        let mut rx = self.memory.state.subscribe();
        let all = rx.wait_for(|rec| ids.iter().all(|id| rec.result(id).is_some()));
        if tokio::time::timeout(self.wait, all).await.is_err() {
            panic!(
                "the run of {} ({} job) did not end within {:?}: a hang job ends only when stopped (RunningJob::stop), other jobs when they return; give the run a longer TestRun::timeout if it needs more",
                self.reg.class(),
                self.reg.kind(),
                self.wait
            );
        }
        let rec = self.memory.state.borrow();
        let mut out = rec.outcome(&self.job_id, &self.prefix);
        out.stops = ids[1..]
            .iter()
            .map(|id| rec.outcome(id, &self.prefix))
            .collect();
        out
    }
}

/// A console line as the dashboard shows it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConsoleLine {
    /// The text as the job wrote it: the dashboard shows it after the agent's console prefix
    /// (`【JobAgent】`), which is left out here.
    pub text: String,
    /// The colour it is shown in; `None` for the dashboard's default.
    pub color: Option<ConsoleColor>,
}

/// A progress bar as the dashboard shows it: at its latest value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// The bar's id on the console (`"1"`, `"2"`, ...).
    pub id: String,
    /// The name shown beside the bar.
    pub name: Option<String>,
    /// Its latest value, in percent.
    pub value: f64,
    /// Its colour; `None` for the dashboard's default.
    pub color: Option<ConsoleColor>,
}

/// How a run ended, as the dashboard shows it: its console and its result.
#[derive(Clone, Debug)]
pub struct Outcome {
    job_id: String,
    lines: Vec<ConsoleLine>,
    progress: Vec<Progress>,
    result: Result<(), String>,
    stops: Vec<Outcome>,
}

impl Outcome {
    /// The run's job id (the run is `"1"`; its stops `"2"`, `"3"`, ...).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The result the center reads: `Ok` when the run succeeded or was stopped on request,
    /// else the message the dashboard shows for the failure (`timeout: ...`, `the job
    /// panicked: ...`, the job's error and its causes).
    pub fn result(&self) -> Result<(), &str> {
        self.result.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The console lines, in order, without the runtime's own green lifecycle lines (`job ...
    /// started`, `job finished after ...`): the lines the job wrote, and for a failed run the
    /// runtime's red `job failed: ...` line.
    pub fn console_lines(&self) -> Vec<&ConsoleLine> {
        self.lines
            .iter()
            .filter(|line| line.color != Some(ConsoleColor::LIFECYCLE))
            .collect()
    }

    /// The text of each of [`console_lines`](Self::console_lines).
    pub fn texts(&self) -> Vec<&str> {
        self.console_lines()
            .into_iter()
            .map(|line| line.text.as_str())
            .collect()
    }

    /// Every console line, in order, as the dashboard lists it: the runtime's lifecycle lines
    /// included.
    pub fn dashboard_lines(&self) -> &[ConsoleLine] {
        &self.lines
    }

    /// The progress bars, in the order they were made, each at its latest value.
    pub fn progress(&self) -> &[Progress] {
        &self.progress
    }

    /// The stops the run was given ([`RunningJob::stop`]) that the agent accepted: each is a
    /// job of its own on the dashboard, with its console (what `on_stop` wrote) and result.
    pub fn stops(&self) -> &[Outcome] {
        &self.stops
    }
}

/// Where the lines and results of a run started by [`TestRun`] go: memory.
#[derive(Default)]
pub(crate) struct Memory {
    state: tokio::sync::watch::Sender<Recorded>,
}

#[derive(Default)]
struct Recorded {
    /// Each console's lines, by job id.
    consoles: BTreeMap<String, Vec<console::ConsoleLine>>,
    results: Vec<DispatchResult>,
}

impl Recorded {
    fn result(&self, job_id: &str) -> Option<&DispatchResult> {
        self.results.iter().find(|r| r.id == job_id)
    }

    /// What the dashboard shows of job `job_id`, which has a result.
    fn outcome(&self, job_id: &str, prefix: &str) -> Outcome {
        let lines = self.consoles.get(job_id).map(Vec::as_slice);
        let lines = lines.unwrap_or_default();
        let mut progress: Vec<Progress> = Vec::new();
        for line in lines {
            if let Some((value, name)) = &line.progress {
                match progress.iter_mut().find(|bar| bar.id == line.text) {
                    Some(bar) => bar.value = *value,
                    None => progress.push(Progress {
                        id: line.text.clone(),
                        name: name.clone(),
                        value: *value,
                        color: line.color,
                    }),
                }
            }
        }
        let result = match self.result(job_id) {
            Some(r) if r.is_ok() => Ok(()),
            Some(r) => Err(r.e.clone()),
            None => Err("no result was written".to_owned()),
        };
        Outcome {
            job_id: job_id.to_owned(),
            lines: read_lines(lines, prefix),
            progress,
            result,
            stops: Vec::new(),
        }
    }
}

/// The text lines of a console (progress bars left out), without the agent's prefix.
fn read_lines(lines: &[console::ConsoleLine], prefix: &str) -> Vec<ConsoleLine> {
    lines
        .iter()
        .filter(|line| line.progress.is_none())
        .map(|line| ConsoleLine {
            text: line
                .text
                .strip_prefix(prefix)
                .unwrap_or(&line.text)
                .to_owned(),
            color: line.color,
        })
        .collect()
}

impl Memory {
    /// The console of job `job_id`.
    pub(crate) fn console(self: &Arc<Self>, job_id: &str) -> Arc<dyn LineSink> {
        Arc::new(MemoryConsole {
            memory: self.clone(),
            job_id: job_id.to_owned(),
        })
    }
}

#[cfg(test)]
impl Memory {
    /// The result of job `job_id`, waited for up to `within` (`None` when none came).
    pub(crate) async fn result_within(
        &self,
        job_id: &str,
        within: Duration,
    ) -> Option<DispatchResult> {
        let mut rx = self.state.subscribe();
        let seen = rx.wait_for(|rec| rec.result(job_id).is_some());
        let rec = tokio::time::timeout(within, seen).await.ok()?.ok()?;
        rec.result(job_id).cloned()
    }

    /// How many results of job `job_id` were written.
    pub(crate) fn results_of(&self, job_id: &str) -> usize {
        let rec = self.state.borrow();
        rec.results.iter().filter(|r| r.id == job_id).count()
    }

    /// The text of job `job_id`'s console lines.
    pub(crate) fn lines_of(&self, job_id: &str) -> Vec<String> {
        let rec = self.state.borrow();
        let lines = rec
            .consoles
            .get(job_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        lines.iter().map(|line| line.text.clone()).collect()
    }
}

impl ResultSink for Memory {
    fn write(&self, result: DispatchResult) -> BoxFuture<bool> {
        self.state.send_modify(|rec| rec.results.push(result));
        crate::future::written()
    }
}

/// One job's console, kept in memory.
struct MemoryConsole {
    memory: Arc<Memory>,
    job_id: String,
}

impl LineSink for MemoryConsole {
    fn push(&self, line: console::ConsoleLine) {
        self.memory.state.send_modify(|rec| {
            rec.consoles
                .entry(self.job_id.clone())
                .or_default()
                .push(line)
        });
    }

    fn flush(&self) -> BoxFuture<()> {
        crate::future::done()
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use serde_json::json;

    use super::*;
    use crate::job::{DynJob, JobKind};
    use crate::state::{Constructor, MissingState, Need, States, needs_of};
    use crate::{JobContext, JobError};

    #[derive(Clone)]
    struct Greeting(&'static str);

    /// Reads what its context gives (parameter, header, state, ids, item) and writes in
    /// every colour and a progress bar.
    struct Greeter {
        greeting: Greeting,
    }

    impl Greeter {
        fn new(greeting: Greeting) -> Self {
            Self { greeting }
        }
    }

    impl JobAgent for Greeter {
        async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
            let name: String = cx.param("Name")?.ok_or("`Name` is required")?;
            let console = cx.console();
            console.info(format!("{}, {name}!", self.greeting.0));
            console.warning(format!(
                "tenant {}",
                cx.header("x-tenant").unwrap_or("none")
            ));
            console.write_line(
                format!("job {} of {}", cx.job_id(), cx.class()),
                ConsoleColor::custom("#00ffff"),
            );
            console.write_line(format!("timeout {:?}", cx.item().agent_timeout), None);
            let bar = console.progress_bar("greeting")?;
            bar.set(50.0);
            bar.set(100.0);
            if name == "Eve" {
                console.error("not Eve");
                return Err(JobError::msg("Eve is not greeted"));
            }
            Ok(())
        }
    }

    // What `#[job_agent(transient, constructor = "Greeter::new")]` generates.
    fn build_greeter(states: &States) -> Result<Arc<dyn DynJob>, MissingState> {
        let job: Greeter = Constructor::<_, Greeter>::construct(&Greeter::new, states)?;
        Ok(Arc::new(job))
    }
    fn greeter_needs() -> Vec<Need> {
        needs_of::<Greeter, _, _>(&Greeter::new)
    }
    static GREETER: JobRegistration = JobRegistration::new(
        "tests::Greeter",
        "tests::Greeter",
        JobKind::Transient,
        build_greeter,
        greeter_needs,
    )
    .with_type(TypeId::of::<Greeter>);

    /// A registration of job type `J`, built with `Default`.
    fn build<J: JobAgent + Default>(_: &States) -> Result<Arc<dyn DynJob>, MissingState> {
        Ok(Arc::new(J::default()))
    }
    fn none() -> Vec<Need> {
        Vec::new()
    }

    /// Sleeps an hour, or until cancelled.
    #[derive(Default)]
    struct Sleeper;
    impl JobAgent for Sleeper {
        async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
            cx.console().info("sleeping");
            cx.sleep(Duration::from_secs(3600)).await
        }
    }
    static SLEEPER: JobRegistration = JobRegistration::new(
        "tests::Sleeper",
        "tests::Sleeper",
        JobKind::Transient,
        build::<Sleeper>,
        none,
    );

    /// Sleeps an hour, whatever happens.
    #[derive(Default)]
    struct Stubborn;
    impl JobAgent for Stubborn {
        async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    }
    static STUBBORN: JobRegistration = JobRegistration::new(
        "tests::Stubborn",
        "tests::Stubborn",
        JobKind::Singleton,
        build::<Stubborn>,
        none,
    );

    /// Panics.
    #[derive(Default)]
    struct Panicker;
    impl JobAgent for Panicker {
        async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
            panic!("boom")
        }
    }
    static PANICKER: JobRegistration = JobRegistration::new(
        "tests::Panicker",
        "tests::Panicker",
        JobKind::Singleton,
        build::<Panicker>,
        none,
    );

    /// A hang job: says it started, returns, and runs until stopped; its `on_stop` writes
    /// on the stop's console.
    #[derive(Default)]
    struct Consumer;
    impl JobAgent for Consumer {
        async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
            cx.console().info("consumer started");
            Ok(())
        }

        async fn on_stop(&self, cx: &JobContext) -> Result<(), JobError> {
            cx.console()
                .warning(format!("stopping on stop job {}", cx.job_id()));
            cx.cancel();
            Ok(())
        }
    }
    static CONSUMER: JobRegistration = JobRegistration::new(
        "tests::Consumer",
        "tests::Consumer",
        JobKind::Hang,
        build::<Consumer>,
        none,
    );

    /// Writes `tick 1` to `tick 3`, a second apart.
    #[derive(Default)]
    struct Ticker;
    impl JobAgent for Ticker {
        async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
            for n in 1..=3 {
                cx.sleep(Duration::from_secs(1)).await?;
                cx.console().info(format!("tick {n}"));
            }
            Ok(())
        }
    }
    static TICKER: JobRegistration = JobRegistration::new(
        "tests::Ticker",
        "tests::Ticker",
        JobKind::Transient,
        build::<Ticker>,
        none,
    );

    fn texts_and_colors(out: &Outcome) -> Vec<(&str, Option<ConsoleColor>)> {
        out.console_lines()
            .into_iter()
            .map(|l| (l.text.as_str(), l.color))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_sees_its_parameter_headers_state_and_timeout_and_its_console_reads_back() {
        let out = TestRun::of(&GREETER)
            .param(json!({ "Name": "Ada" }))
            .header("x-tenant", "acme")
            .state(Greeting("Hello"))
            .timeout(Duration::from_secs(30))
            .run()
            .await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(
            texts_and_colors(&out),
            [
                ("Hello, Ada!", Some(ConsoleColor::INFO)),
                ("tenant acme", Some(ConsoleColor::WARNING)),
                (
                    "job 1 of tests::Greeter",
                    Some(ConsoleColor::custom("#00ffff"))
                ),
                ("timeout Some(30000)", None),
            ]
        );
        assert_eq!(
            out.progress(),
            [Progress {
                id: "1".into(),
                name: Some("greeting".into()),
                value: 100.0,
                color: None,
            }]
        );
        // The dashboard shows the runtime's own lines around the job's.
        let all = out.dashboard_lines();
        assert_eq!(
            all[0],
            ConsoleLine {
                text: "job tests::Greeter started, job id 1, kind transient".into(),
                color: Some(ConsoleColor::LIFECYCLE),
            }
        );
        let last = all.last().expect("lines");
        assert!(last.text.starts_with("job finished after "), "{last:?}");
        assert_eq!(all.len(), 6);
        assert!(out.stops().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_run_reads_back_its_error_as_the_dashboard_shows_it() {
        let out = TestRun::of(&GREETER)
            .param_text(r#"{"Name":"Eve"}"#)
            .state(Greeting("Hi"))
            .run()
            .await;
        assert_eq!(out.result(), Err("Eve is not greeted"));
        let lines = texts_and_colors(&out);
        assert_eq!(
            lines[lines.len() - 2..],
            [
                ("not Eve", Some(ConsoleColor::ERROR)),
                ("job failed: Eve is not greeted", Some(ConsoleColor::ERROR)),
            ]
        );
        assert_eq!(lines[1], ("tenant none", Some(ConsoleColor::WARNING)));
        assert_eq!(lines[3], ("timeout None", None));

        let out = TestRun::of(&GREETER).state(Greeting("Hi")).run().await;
        assert_eq!(out.result(), Err("`Name` is required"));

        let out = TestRun::of(&PANICKER).run().await;
        assert_eq!(out.result(), Err("the job panicked: boom"));
    }

    #[tokio::test(flavor = "multi_thread")]
    #[should_panic(expected = "add `.state(value)`")]
    async fn a_job_whose_constructor_lacks_its_state_is_refused_as_agent_new_refuses_it() {
        let _ = TestRun::of(&GREETER).start().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    #[should_panic(expected = "has no #[job_agent] registration")]
    async fn a_type_without_job_agent_cannot_be_run() {
        let _ = TestRun::new::<Sleeper>().start().await;
    }

    /// Paused clock: the hour-long sleeps and the 5 s grace take no time.
    #[tokio::test(start_paused = true)]
    async fn a_run_past_its_agent_timeout_is_cancelled_and_reported_as_a_timeout() {
        let begin = tokio::time::Instant::now();
        let out = TestRun::of(&SLEEPER)
            .timeout(Duration::from_millis(100))
            .run()
            .await;
        assert_eq!(
            out.result(),
            Err("timeout: the job ran longer than its AgentTimeout of 100 ms")
        );
        assert_eq!(begin.elapsed(), Duration::from_millis(100));
        assert_eq!(
            out.texts(),
            [
                "sleeping",
                "job failed: timeout: the job ran longer than its AgentTimeout of 100 ms"
            ]
        );

        let begin = tokio::time::Instant::now();
        let out = TestRun::of(&STUBBORN)
            .timeout(Duration::from_millis(100))
            .run()
            .await;
        assert_eq!(
            out.result(),
            Err(
                "timeout: the job ran longer than its AgentTimeout of 100 ms and did not stop within 5000 ms of cancellation"
            )
        );
        assert_eq!(begin.elapsed(), Duration::from_millis(5100));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stopped_hang_job_calls_on_stop_with_the_stops_console_and_is_reported_stopped() {
        let run = TestRun::of(&CONSUMER).start().await;
        let line = run.wait_for_line(|l| l.text == "consumer started").await;
        assert_eq!(line.map(|l| l.color), Some(Some(ConsoleColor::INFO)));
        assert_eq!(
            run.stop().await,
            Ok("JobClass:tests::Consumer stop success!".to_owned())
        );
        let out = run.finish().await;
        assert_eq!(out.result(), Ok(()));
        assert_eq!(out.texts(), ["consumer started"]);
        let all = out.dashboard_lines();
        assert!(
            all.iter()
                .any(|l| l.text == "stop requested (stop job id 2)"),
            "{all:?}"
        );
        let last = all.last().expect("lines");
        assert!(
            last.text.starts_with("job stopped on request after "),
            "{last:?}"
        );
        // The stop is a job of its own: its console has what on_stop wrote.
        let [stop] = out.stops() else {
            panic!("one stop: {:?}", out.stops())
        };
        assert_eq!(stop.job_id(), "2");
        assert_eq!(stop.result(), Ok(()));
        assert_eq!(stop.texts(), ["stopping on stop job 2"]);
        assert_eq!(
            stop.dashboard_lines().last().map(|l| l.text.as_str()),
            Some("stop done")
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancelled_run_sees_its_token_cancelled_without_on_stop() {
        let run = TestRun::of(&SLEEPER).start().await;
        assert!(run.wait_for_line(|l| l.text == "sleeping").await.is_some());
        run.cancel();
        let out = run.finish().await;
        assert_eq!(out.result(), Err("cancelled"));
        assert_eq!(out.texts(), ["sleeping", "job failed: cancelled"]);
        assert!(out.stops().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn waiting_for_a_line_the_run_never_writes_ends_with_the_run() {
        let run = TestRun::of(&GREETER)
            .param(json!({ "Name": "Bo" }))
            .state(Greeting("Hey"))
            .start()
            .await;
        assert_eq!(run.wait_for_line(|l| l.text == "never").await, None);
        assert_eq!(run.finish().await.texts()[0], "Hey, Bo!");
    }

    /// Paused clock: the lines come when the job writes them, not before.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_line_returns_when_the_job_writes_it() {
        let begin = tokio::time::Instant::now();
        let run = TestRun::of(&TICKER).start().await;
        let second = run.wait_for_line(|l| l.text.ends_with('2')).await;
        assert_eq!(second.map(|l| l.text), Some("tick 2".to_owned()));
        assert_eq!(begin.elapsed(), Duration::from_secs(2));
        let out = run.finish().await;
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
        assert_eq!(out.texts(), ["tick 1", "tick 2", "tick 3"]);
    }

    /// Paused clock: the minute the run is waited for takes no time.
    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "did not end within 60s: a hang job ends only when stopped")]
    async fn a_hang_job_never_stopped_fails_the_test_instead_of_hanging_it() {
        let _ = TestRun::of(&CONSUMER).run().await;
    }
}
