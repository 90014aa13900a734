//! The registry of job types, filled at link time by `#[job_agent]` through `inventory`.

// foldhash rather than std's SipHash: every dispatch looks its class up, and SipHash of a
// 40-byte class name cost ~300 instructions of it. The table is built once from the
// registered jobs, so flooding it with colliding keys is not possible.
use foldhash::{HashMap, HashMapExt as _};
use std::any::TypeId;
use std::sync::Arc;

use crate::error::{ConfigError, DispatchError};
use crate::job::{DynJob, JobKind};
use crate::state::{MissingState, Need, States};

/// How generated code builds a job from the agent's state.
type Factory = fn(&States) -> Result<Arc<dyn DynJob>, MissingState>;

/// One job type, as `#[job_agent]` registers it. Generated code builds it; users read it.
#[derive(Debug)]
pub struct JobRegistration {
    class: &'static str,
    type_path: &'static str,
    kind: JobKind,
    factory: Factory,
    needs: fn() -> Vec<Need>,
    /// The job type's `TypeId` (`None` for a registration not made by `#[job_agent]`).
    type_id: Option<fn() -> TypeId>,
    register: Option<AutoRegister>,
    on_busy: BusyPolicy,
    /// `stall_after` in milliseconds (0: no watchdog), and whether a stall cancels.
    stall_ms: u64,
    stall_cancels: bool,
}

/// What a run of a singleton does when the singleton already runs (here or on another
/// replica sharing the store): `#[job_agent(on_busy = "...")]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusyPolicy {
    /// Refuse it with 501 (the center's "singleton busy"), as the .NET agent does.
    #[default]
    Reject,
    /// Accept it (200) and report it as done at once, with a console line saying it was
    /// skipped.
    Discard,
    /// Stop the running instance, then start this run.
    Replace,
    /// Start it after the running instance ends (at most 16 waiting per class).
    Queue,
}

impl BusyPolicy {
    /// The name used in `#[job_agent(on_busy = "...")]`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusyPolicy::Reject => "reject",
            BusyPolicy::Discard => "discard",
            BusyPolicy::Replace => "replace",
            BusyPolicy::Queue => "queue",
        }
    }
}

/// What `#[job_agent]` asks the center to create at start-up when auto-registration is on
/// (every job unless it says `register = false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutoRegister {
    /// The recurring job's identifier at the center (`RecurringJobIdentifier`).
    pub id: &'static str,
    /// The job's display name (`JobName`).
    pub name: &'static str,
    /// The cron expression; empty registers a job that runs only when triggered.
    pub cron: &'static str,
}

impl AutoRegister {
    /// Used by generated code.
    #[doc(hidden)]
    pub const fn new(id: &'static str, name: &'static str, cron: &'static str) -> Self {
        Self { id, name, cron }
    }
}

impl std::fmt::Debug for dyn DynJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynJob")
    }
}

impl JobRegistration {
    /// A registration; `class` is the name the center sends, `type_path` the Rust path,
    /// `needs` the state types `factory` takes.
    #[doc(hidden)]
    pub const fn new(
        class: &'static str,
        type_path: &'static str,
        kind: JobKind,
        factory: Factory,
        needs: fn() -> Vec<Need>,
    ) -> Self {
        Self {
            class,
            type_path,
            kind,
            factory,
            needs,
            type_id: None,
            register: None,
            on_busy: BusyPolicy::Reject,
            stall_ms: 0,
            stall_cancels: false,
        }
    }

    /// Names the job type (its `TypeId`), so that the registration of a type can be found
    /// ([`testing`](crate::testing)).
    #[doc(hidden)]
    pub const fn with_type(mut self, type_id: fn() -> TypeId) -> Self {
        self.type_id = Some(type_id);
        self
    }

    /// Whether this is the registration of job type `T`.
    pub(crate) fn is_type<T: 'static>(&self) -> bool {
        self.type_id.is_some_and(|id| id() == TypeId::of::<T>())
    }

    /// Sets the stall watchdog: `ms` without a console line or progress change, and whether
    /// a stall cancels the run.
    #[doc(hidden)]
    pub const fn with_stall(mut self, ms: u64, cancel: bool) -> Self {
        self.stall_ms = ms;
        self.stall_cancels = cancel;
        self
    }

    /// How long a run may go without a console line or a progress change before the agent
    /// warns (`#[job_agent(stall_after = "30s")]`); `None` without a watchdog.
    pub fn stall_after(&self) -> Option<std::time::Duration> {
        (self.stall_ms > 0).then(|| std::time::Duration::from_millis(self.stall_ms))
    }

    /// Whether a stalled run is also cancelled (`on_stall = "cancel"`).
    pub fn cancels_on_stall(&self) -> bool {
        self.stall_cancels
    }

    /// Sets what a run does when the singleton is busy.
    #[doc(hidden)]
    pub const fn with_on_busy(mut self, on_busy: BusyPolicy) -> Self {
        self.on_busy = on_busy;
        self
    }

    /// What a run does when the singleton is busy.
    pub fn on_busy(&self) -> BusyPolicy {
        self.on_busy
    }

    /// Asks for auto-registration at the center.
    #[doc(hidden)]
    pub const fn with_register(mut self, register: AutoRegister) -> Self {
        self.register = Some(register);
        self
    }

    /// The class name the center sends in `x-job-agent-class`.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// The Rust path of the job type.
    pub fn type_path(&self) -> &'static str {
        self.type_path
    }

    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// The auto-registration request; `None` when the job opted out (`register = false`).
    pub fn auto_register(&self) -> Option<AutoRegister> {
        self.register
    }

    /// Builds an instance. The agent checked at start-up that the state it takes was given
    /// ([`Registry::check_states`]); were it missing, the instance fails every run saying so.
    pub(crate) fn instantiate(&self, states: &States) -> Arc<dyn DynJob> {
        match (self.factory)(states) {
            Ok(job) => job,
            Err(missing) => Arc::new(Unbuildable(missing.to_string())),
        }
    }
}

inventory::collect!(JobRegistration);

/// A job whose constructor could not get its state: every run fails with why.
struct Unbuildable(String);

impl crate::job::JobAgent for Unbuildable {
    async fn on_start(&self, _: crate::JobContext) -> Result<(), crate::JobError> {
        Err(crate::JobError::msg(&self.0))
    }
}

/// Every job type linked into this program, by class name.
#[derive(Debug)]
pub struct Registry {
    by_class: HashMap<&'static str, &'static JobRegistration>,
    /// By the type-name part of a .NET-style `Name,Assembly` class (unambiguous ones only).
    by_name: HashMap<&'static str, Option<&'static JobRegistration>>,
    ordered: Vec<&'static JobRegistration>,
}

impl Registry {
    /// Collects every `#[job_agent]` type; two types with one class name are an error.
    pub fn from_inventory() -> Result<Self, ConfigError> {
        Self::from_registrations(inventory::iter::<JobRegistration>)
    }

    pub(crate) fn from_registrations(
        regs: impl IntoIterator<Item = &'static JobRegistration>,
    ) -> Result<Self, ConfigError> {
        let mut by_class: HashMap<&'static str, &'static JobRegistration> = HashMap::new();
        let mut ordered = Vec::new();
        for reg in regs {
            if let Some(first) = by_class.insert(reg.class, reg) {
                return Err(ConfigError::DuplicateClass {
                    class: reg.class.to_owned(),
                    first: first.type_path,
                    second: reg.type_path,
                });
            }
            ordered.push(reg);
        }
        ordered.sort_by_key(|r| r.class);
        let mut by_name: HashMap<&'static str, Option<&'static JobRegistration>> = HashMap::new();
        for reg in &ordered {
            if let Some((name, _assembly)) = reg.class.split_once(',') {
                by_name
                    .entry(name.trim())
                    .and_modify(|slot| *slot = None)
                    .or_insert(Some(reg));
            }
        }
        Ok(Self {
            by_class,
            by_name,
            ordered,
        })
    }

    /// Finds a job by the class the center sent: the exact name, else for a .NET-style
    /// `Name, Assembly[, Version=..., ...]` by the type name before the first comma — matching
    /// a job registered as `Name` or as `Name,AnyAssembly`.
    pub fn find(&self, class: &str) -> Option<&'static JobRegistration> {
        let class = class.trim();
        if let Some(reg) = self.by_class.get(class) {
            return Some(reg);
        }
        let name = class.split_once(',').map_or(class, |(name, _)| name).trim();
        self.by_class
            .get(name)
            .copied()
            .or_else(|| self.by_name.get(name).copied().flatten())
    }

    /// Fails when a job's constructor takes a state type the agent was not given.
    pub(crate) fn check_states(&self, states: &States) -> Result<(), ConfigError> {
        for reg in &self.ordered {
            if let Some(need) = states.missing(&(reg.needs)()) {
                return Err(ConfigError::MissingState {
                    job: reg.type_path,
                    state: need.name(),
                });
            }
        }
        Ok(())
    }

    /// All registrations, sorted by class.
    pub fn iter(&self) -> impl Iterator<Item = &'static JobRegistration> + '_ {
        self.ordered.iter().copied()
    }

    /// The error of a dispatch of `class`, which no job is registered under: the classes
    /// known, and when `class` looks like the Rust path of a crate this binary does not link,
    /// how to link it.
    pub(crate) fn unknown_class(&self, class: &str) -> DispatchError {
        DispatchError::UnknownClass {
            class: class.chars().take(200).collect(),
            known: self.class_list(),
            hint: self.link_hint(class.trim()).unwrap_or_default(),
        }
    }

    /// A hint for a class that looks like a Rust path (`billing_jobs::SendInvoice`) whose
    /// crate no registered job belongs to: its registrations were not linked (see
    /// `docs/jobs.md`, "Jobs in a library crate"). `None` for anything else.
    fn link_hint(&self, class: &str) -> Option<String> {
        let mut segments = class.split("::");
        let krate = segments.next()?;
        let rest: Vec<&str> = segments.collect();
        let is_ident = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && s != "_"
        };
        if rest.is_empty()
            || !is_ident(krate)
            || !rest.iter().all(|s| is_ident(s))
            || matches!(krate, "crate" | "self" | "super")
        {
            return None;
        }
        let prefix = format!("{krate}::");
        let linked = self
            .ordered
            .iter()
            .any(|r| r.class.starts_with(&prefix) || r.type_path.starts_with(&prefix));
        if linked {
            return None;
        }
        let krate: String = krate.chars().take(64).collect();
        Some(format!(
            "; no registered class starts with `{krate}::`: if `{krate}` is a crate of jobs, this binary does not link it (a crate's #[job_agent] types are linked only when the binary uses something of that crate): call `{krate}::link()` from main, with a `pub fn link() {{}}` in `{krate}`"
        ))
    }

    /// The class names, for error messages.
    pub(crate) fn class_list(&self) -> String {
        if self.ordered.is_empty() {
            return "none (annotate a job type with #[job_agent])".to_owned();
        }
        self.ordered
            .iter()
            .map(|r| r.class)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobAgent, JobContext, JobError};

    #[derive(Default)]
    struct Noop;
    impl JobAgent for Noop {
        async fn on_start(&self, _cx: JobContext) -> Result<(), JobError> {
            Ok(())
        }
    }
    fn make(_: &States) -> Result<Arc<dyn DynJob>, MissingState> {
        Ok(Arc::new(Noop))
    }
    fn none() -> Vec<Need> {
        Vec::new()
    }

    static A: JobRegistration =
        JobRegistration::new("Msg.Job.A,Msg", "m::A", JobKind::Singleton, make, none);
    static B: JobRegistration =
        JobRegistration::new("m::B", "m::B", JobKind::Transient, make, none);
    static A2: JobRegistration =
        JobRegistration::new("Msg.Job.A,Msg", "m::A2", JobKind::Hang, make, none);

    #[test]
    fn finds_exact_and_by_name_before_comma() {
        let reg = Registry::from_registrations([&A, &B]).expect("no duplicates");
        assert_eq!(reg.find("m::B").map(|r| r.type_path()), Some("m::B"));
        assert_eq!(
            reg.find("m::B, Other.Assembly").map(|r| r.type_path()),
            Some("m::B")
        );
        assert_eq!(
            reg.find("Msg.Job.A,Msg").map(|r| r.type_path()),
            Some("m::A")
        );
        assert_eq!(
            reg.find("Msg.Job.A, Msg").map(|r| r.type_path()),
            Some("m::A")
        );
        assert_eq!(
            reg.find("Msg.Job.A, Msg, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null")
                .map(|r| r.type_path()),
            Some("m::A")
        );
        assert_eq!(reg.find("Msg.Job.A").map(|r| r.type_path()), Some("m::A"));
        assert!(reg.find("m::C").is_none());
        assert!(reg.find("").is_none());
    }

    /// The error a dispatch of `class` gets from a runtime with registrations `regs`.
    fn unknown(regs: &[&'static JobRegistration], class: &str) -> String {
        let registry = Registry::from_registrations(regs.iter().copied()).expect("no duplicates");
        let member = crate::cluster::Member {
            instance: "test".to_owned(),
            server_id: "test".to_owned(),
        };
        let rt = crate::runtime::Runtime::new(registry, crate::AgentOptions::new(), member);
        match rt.class(class) {
            Ok(reg) => panic!("{class} found as {}", reg.type_path()),
            Err(e) => e.to_string(),
        }
    }

    /// Issue 28: a class that is the Rust path of a crate the binary does not link (no
    /// registered class starts with its crate) says how to link it, even while other jobs
    /// are registered (the no-jobs warning at start-up is silent then).
    #[test]
    fn an_unknown_class_of_an_unlinked_crate_says_how_to_link_it() {
        let err = unknown(&[&A, &B], "billing_jobs::SendInvoice");
        assert!(
            err.starts_with("unknown job class `billing_jobs::SendInvoice`: registered classes are Msg.Job.A,Msg, m::B"),
            "{err}"
        );
        assert!(
            err.contains("no registered class starts with `billing_jobs::`")
                && err.contains("call `billing_jobs::link()` from main"),
            "{err}"
        );
        let err = unknown(&[&A, &B], "billing_jobs::invoices::SendInvoice");
        assert!(err.contains("`billing_jobs::link()`"), "{err}");
        // A crate that is linked (a class of it is registered): a misspelt class, no hint.
        for linked in [
            "m::C",
            "Msg.Job.B,Msg",
            "Msg.Job.B",
            "billing_jobs",
            "a b::C",
            "::C",
            "1x::C",
        ] {
            let err = unknown(&[&A, &B], linked);
            assert!(!err.contains("link()"), "{linked}: {err}");
        }
    }

    #[test]
    fn duplicate_class_names_both_types() {
        let err = Registry::from_registrations([&A, &B, &A2]).expect_err("duplicate");
        let text = err.to_string();
        assert!(
            text.contains("Msg.Job.A,Msg") && text.contains("m::A") && text.contains("m::A2"),
            "{text}"
        );
    }
}
