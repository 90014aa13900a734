//! The live-run table: each registered class's runs in flight, its latest run and its
//! counts, found by the class's registration.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crossbeam_utils::CachePadded;

use super::Runtime;
use super::run::Run;
use crate::context::JobContext;
use crate::job::{DynJob, JobKind};
use crate::metrics::ClassMetrics;
use crate::registry::{JobRegistration, Registry};
use crate::sync::{Signal, lock};

/// A class's runs in flight, by [`Run::seq`]: taking one out when it ends costs a lookup,
/// not a pass over all of them. A hash table keeps its memory when it empties (a B-tree frees
/// its root node, so every run of a mostly idle class allocated and freed one under the class
/// lock); the few readers that need start order sort.
#[derive(Default)]
pub(super) struct Runs(foldhash::HashMap<u64, Arc<Run>>);

impl Runs {
    pub(super) fn insert(&mut self, run: Arc<Run>) {
        self.0.insert(run.seq, run);
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<Arc<Run>> {
        self.0.remove(&seq)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The earliest started run: a singleton's current one.
    pub(super) fn oldest(&self) -> Option<&Arc<Run>> {
        self.0.values().min_by_key(|run| run.seq)
    }

    /// Every run, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.0.values()
    }

    /// Every run, in start order.
    pub(super) fn in_order(&self) -> Vec<&Arc<Run>> {
        let mut runs: Vec<&Arc<Run>> = self.0.values().collect();
        runs.sort_unstable_by_key(|run| run.seq);
        runs
    }
}

#[derive(Default)]
pub(super) struct ClassSlot {
    pub(super) runs: Runs,
    pub(super) last: Option<LastRun>,
    /// A singleton run being claimed cluster-wide (its job id).
    pub(super) claiming: Option<String>,
}

/// The class's latest run, for `detail` and `stop` once it ended. It keeps the run's context
/// (one reference) rather than copies of its id and parameter: every run replaces it.
#[derive(Clone)]
pub(super) struct LastRun {
    pub(super) cx: JobContext,
    pub(super) started: SystemTime,
    pub(super) ended: Option<SystemTime>,
}

pub(super) struct ClassState {
    /// The singleton's instance, kept across runs like the .NET agent's.
    pub(super) singleton: Mutex<Option<Arc<dyn DynJob>>>,
    /// Padded, as `admitted`: every run writes them, from both worker threads, and what every
    /// run only reads must not share their cache line.
    pub(super) slot: CachePadded<Mutex<ClassSlot>>,
    /// Runs of a class that may run many at once, counted when admitted and until they end:
    /// the per-class limit is checked on it before the run is built, outside the slot's lock.
    pub(super) admitted: CachePadded<AtomicUsize>,
    /// Signalled whenever a run of the class ends.
    pub(super) ended: Signal,
    /// Queued runs (busy policy `queue`) start in arrival order.
    pub(super) queue: tokio::sync::Mutex<()>,
    pub(super) waiting: AtomicUsize,
    /// The class's metric handles, taken at its first run.
    pub(super) metrics: OnceLock<ClassMetrics>,
}

/// The state of every registered class, found by its registration's address: a binary
/// search over a few entries instead of hashing the class name on every dispatch.
pub(super) struct Classes(Vec<(usize, ClassState)>);

impl Classes {
    pub(super) fn new(registry: &Registry) -> Self {
        let mut classes: Vec<(usize, ClassState)> = registry
            .iter()
            .map(|reg| {
                let state = ClassState {
                    singleton: Mutex::new(None),
                    slot: CachePadded::new(Mutex::new(ClassSlot::default())),
                    admitted: CachePadded::new(AtomicUsize::new(0)),
                    ended: Signal::new(),
                    queue: tokio::sync::Mutex::new(()),
                    waiting: AtomicUsize::new(0),
                    metrics: OnceLock::new(),
                };
                (Self::key(reg), state)
            })
            .collect();
        classes.sort_unstable_by_key(|(key, _)| *key);
        Self(classes)
    }

    fn key(reg: &'static JobRegistration) -> usize {
        std::ptr::from_ref(reg).addr()
    }

    pub(super) fn get(&self, reg: &'static JobRegistration) -> Option<&ClassState> {
        let key = Self::key(reg);
        self.0
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ClassState> {
        self.0.iter().map(|(_, state)| state)
    }
}

impl Runtime {
    /// Runs in flight that end by themselves: all but hang jobs, which run until stopped (a
    /// drain does not wait for them).
    pub(super) fn finishing(&self) -> usize {
        self.registry
            .iter()
            .filter(|reg| reg.kind() != JobKind::Hang)
            .map(|reg| lock(&self.state(reg).slot).runs.len())
            .sum()
    }

    /// Number of runs in flight, across classes.
    pub(crate) fn running(&self) -> usize {
        self.classes
            .values()
            .map(|s| lock(&s.slot).runs.len())
            .sum()
    }

    /// The context of the class's latest run, for [`testing`](crate::testing).
    pub(crate) fn latest_context(&self, reg: &'static JobRegistration) -> Option<JobContext> {
        let slot = lock(&self.state(reg).slot);
        slot.last.as_ref().map(|last| last.cx.clone())
    }
}
