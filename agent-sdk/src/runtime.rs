//! The runtime: job instances, their status machine, tasks, stop, detail and shutdown.
//!
//! [`Runtime`] is shared by the router, the coordinators and the shutdown future. Its parts,
//! one concern per file:
//!
//! - `start`: a dispatch's way in (the checks, the busy singleton, the per-class limit, the
//!   cluster-wide claim), built on `admission` (the agent-wide and per-class counts and the
//!   guard that gives them back), `name` (refusing runs while another process holds this
//!   instance name) and `claim` (a singleton's cluster-wide claim, while decided and while
//!   held);
//! - `build`: a run's job instance (a panicking constructor is a failed run), context and
//!   console; `run`: the run itself, its status and the report of its result;
//! - `classes`: the live-run table, each class's runs in flight and latest run;
//! - `drive`: the run's task (AgentTimeout, how the run ended), with `stall` (the stall
//!   watchdog); `end`: a run taken out of its class, reported, or given up;
//! - `busy`: the busy policies; `stop`: stops, here and on other replicas; `detail`: the
//!   status text of a class; `shutdown`: drain and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::CachePadded;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Member;
use crate::console::Prefix;
use crate::error::DispatchError;
use crate::metrics::ClassMetrics;
use crate::options::AgentOptions;
use crate::outcome::Outlet;
use crate::registry::{JobRegistration, Registry};
use crate::store::Store;
use crate::sync::Signal;

mod admission;
mod build;
mod busy;
mod claim;
mod classes;
mod detail;
mod drive;
mod end;
mod name;
mod run;
mod shutdown;
mod stall;
mod start;
mod stop;
#[cfg(test)]
mod testkit;

use admission::Counters;
use classes::{ClassState, Classes};

pub(crate) use name::NameState;
pub(crate) use stop::answer_deadline;

/// The runtime shared by the router and the shutdown future.
///
/// Aligned to a cache line pair: behind an `Arc` whose count every run updates from both
/// worker threads, its fields, which every run reads, then start on a line of their own.
#[repr(align(128))]
pub(crate) struct Runtime {
    pub(crate) registry: Registry,
    classes: Classes,
    pub(crate) options: AgentOptions,
    /// `options.console_prefix`, shared by every run's console.
    console_prefix: Prefix,
    root: CancellationToken,
    /// Set just before `root` is cancelled. Every run reads it (a token's `is_cancelled`
    /// takes the token's lock, which both worker threads would contend for).
    root_cancelled: AtomicBool,
    tracker: TaskTracker,
    /// What lives as long as the agent rather than a run (coordinators, heartbeats, the
    /// reports of lost runs, remote stops): closed and waited for, with a bound, after the
    /// runs at shutdown.
    background: TaskTracker,
    accepting: AtomicBool,
    /// Set by a drain: new runs are refused, running ones may finish.
    draining: AtomicBool,
    /// Signalled whenever a run ends (a drain waits on it).
    idle: Signal,
    /// Written by every run: on a cache line of their own.
    counters: CachePadded<Counters>,
    pub(crate) member: Member,
    /// Whether this process holds its instance name (the coordinator finds out).
    name: tokio::sync::watch::Sender<NameState>,
    /// Where runs wait on this machine's disk while their store cannot take their record.
    pub(crate) spool: Option<Arc<crate::spool::Spool>>,
}

impl Runtime {
    pub(crate) fn new(registry: Registry, options: AgentOptions, member: Member) -> Self {
        let classes = Classes::new(&registry);
        let spool = options
            .spool_dir
            .clone()
            .map(|dir| Arc::new(crate::spool::Spool::new(dir)));
        Self {
            registry,
            classes,
            console_prefix: Prefix::new(&options.console_prefix),
            options,
            root: CancellationToken::new(),
            root_cancelled: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            background: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            idle: Signal::new(),
            counters: CachePadded::new(Counters::new()),
            member,
            name: tokio::sync::watch::Sender::new(NameState::Unknown),
            spool,
        }
    }

    /// The tracker of what lives as long as the agent (see [`Runtime::background`]'s field).
    pub(crate) fn background(&self) -> &TaskTracker {
        &self.background
    }

    pub(crate) fn class(&self, name: &str) -> Result<&'static JobRegistration, DispatchError> {
        self.registry
            .find(name)
            .ok_or_else(|| self.registry.unknown_class(name))
    }

    fn state(&self, reg: &'static JobRegistration) -> &ClassState {
        match self.classes.get(reg) {
            Some(state) => state,
            // Every registration of the registry has a state; this cannot happen.
            None => unreachable!("class state missing for {}", reg.class()),
        }
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Why new runs are refused, if they are.
    pub(crate) fn not_accepting(&self) -> Option<&'static str> {
        if !self.is_accepting() {
            Some("the agent is shutting down")
        } else if self.is_draining() {
            Some("the agent is draining")
        } else {
            None
        }
    }

    fn class_metrics(&self, reg: &'static JobRegistration) -> &ClassMetrics {
        ClassMetrics::of(&self.state(reg).metrics, reg.class())
    }

    /// The store used for cluster coordination, when cluster mode is on.
    fn shared<'a>(&self, outlet: &'a Outlet) -> Option<&'a Arc<Store>> {
        outlet.store.as_ref().filter(|_| self.options.cluster)
    }
}
