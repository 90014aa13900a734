//! The registry of job types, filled at link time by `#[job_agent]` through `inventory`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::job::{DynJob, JobKind};

/// One job type, as `#[job_agent]` registers it. Generated code builds it; users read it.
#[derive(Debug)]
pub struct JobRegistration {
    class: &'static str,
    type_path: &'static str,
    kind: JobKind,
    factory: fn() -> Arc<dyn DynJob>,
    register: Option<AutoRegister>,
}

/// What `#[job_agent(register, ...)]` asks the center to create at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoRegister {
    /// The recurring job's identifier at the center (`RecurringJobIdentifier`).
    pub id: &'static str,
    /// The job's display name (`JobName`).
    pub name: &'static str,
    /// The cron expression; empty registers a job that runs only when triggered.
    pub cron: &'static str,
}

impl std::fmt::Debug for dyn DynJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynJob")
    }
}

impl JobRegistration {
    /// A registration; `class` is the name the center sends, `type_path` the Rust path.
    pub const fn new(
        class: &'static str,
        type_path: &'static str,
        kind: JobKind,
        factory: fn() -> Arc<dyn DynJob>,
    ) -> Self {
        Self {
            class,
            type_path,
            kind,
            factory,
            register: None,
        }
    }

    /// Asks for auto-registration at the center.
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

    /// The auto-registration request, when the job opted in.
    pub fn auto_register(&self) -> Option<AutoRegister> {
        self.register
    }

    pub(crate) fn instantiate(&self) -> Arc<dyn DynJob> {
        (self.factory)()
    }
}

inventory::collect!(JobRegistration);

/// Every job type linked into this program, by class name.
#[derive(Debug)]
pub struct Registry {
    by_class: HashMap<&'static str, &'static JobRegistration>,
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
        Ok(Self { by_class, ordered })
    }

    /// Finds a job by the class the center sent: the exact name, else for a .NET-style
    /// `Name,Assembly` the part before the comma.
    pub fn find(&self, class: &str) -> Option<&'static JobRegistration> {
        let class = class.trim();
        if let Some(reg) = self.by_class.get(class) {
            return Some(reg);
        }
        let (name, _assembly) = class.split_once(',')?;
        self.by_class.get(name.trim()).copied()
    }

    /// All registrations, sorted by class.
    pub fn iter(&self) -> impl Iterator<Item = &'static JobRegistration> + '_ {
        self.ordered.iter().copied()
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
    fn make() -> Arc<dyn DynJob> {
        Arc::new(Noop)
    }

    static A: JobRegistration =
        JobRegistration::new("Msg.Job.A,Msg", "m::A", JobKind::Singleton, make);
    static B: JobRegistration = JobRegistration::new("m::B", "m::B", JobKind::Transient, make);
    static A2: JobRegistration =
        JobRegistration::new("Msg.Job.A,Msg", "m::A2", JobKind::Hang, make);

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
        assert!(reg.find("m::C").is_none());
        assert!(reg.find("").is_none());
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
