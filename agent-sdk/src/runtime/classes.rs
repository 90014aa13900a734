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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::runtime::testkit::{
        HANG, QUICK, WAITS, dispatch, limited, result, running, runtime, start, until,
    };

    #[test]
    fn the_live_run_table_takes_runs_out_by_seq_and_lists_them_in_start_order() {
        let (rt, outlet, _) = runtime(&[&WAITS], limited(10, 10));
        let run = |id: &str| {
            rt.new_run(
                &WAITS,
                dispatch(&WAITS, id, "{}"),
                &outlet,
                SystemTime::now(),
            )
        };
        let (a, b, c) = (run("a"), run("b"), run("c"));
        let ids = |runs: &Runs| -> Vec<String> {
            runs.in_order()
                .iter()
                .map(|r| r.cx.job_id().to_owned())
                .collect()
        };
        let mut runs = Runs::default();
        assert!(runs.is_empty() && runs.oldest().is_none());
        // Entered out of start order: read back in it.
        runs.insert(c.clone());
        runs.insert(a.clone());
        runs.insert(b.clone());
        assert_eq!(runs.len(), 3);
        assert_eq!(ids(&runs), ["a", "b", "c"]);
        assert_eq!(runs.oldest().map(|r| r.cx.job_id()), Some("a"));
        assert_eq!(runs.values().count(), 3);

        assert_eq!(runs.remove(b.seq).map(|r| r.seq), Some(b.seq));
        assert!(runs.remove(b.seq).is_none(), "a run is taken out once");
        assert_eq!(ids(&runs), ["a", "c"]);
        assert!(runs.remove(a.seq).is_some());
        assert_eq!(runs.oldest().map(|r| r.cx.job_id()), Some("c"));
        assert!(runs.remove(c.seq).is_some());
        assert!(runs.is_empty() && runs.oldest().is_none());
    }

    #[test]
    fn each_registered_class_has_a_state_of_its_own_and_an_unregistered_one_none() {
        let registry = Registry::from_registrations([&WAITS, &QUICK, &HANG]).expect("distinct");
        let classes = Classes::new(&registry);
        assert_eq!(classes.values().count(), 3);
        let waits = classes.get(&WAITS).expect("registered");
        waits.admitted.fetch_add(7, Ordering::AcqRel);
        assert_eq!(waits.admitted.load(Ordering::Acquire), 7);
        for reg in [&QUICK, &HANG] {
            let state = classes.get(reg).expect("registered");
            assert_eq!(state.admitted.load(Ordering::Acquire), 0, "{}", reg.class());
        }
        assert_eq!(
            classes
                .get(&WAITS)
                .map(|s| s.admitted.load(Ordering::Acquire)),
            Some(7)
        );
        let unregistered = Registry::from_registrations([&QUICK]).expect("one");
        assert!(Classes::new(&unregistered).get(&WAITS).is_none());
    }

    /// What `stop`, `detail` and `testing` read: the class's latest run, kept once it ended,
    /// and the runs in flight, hang jobs left out of those a drain waits for.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_latest_run_is_kept_after_it_ends_and_hang_jobs_are_not_waited_for() {
        let (rt, outlet, memory) = runtime(&[&WAITS, &HANG], limited(10, 10));
        assert!(rt.latest_context(&WAITS).is_none());
        start(&rt, &outlet, &WAITS, "w1").await.expect("w1");
        start(&rt, &outlet, &WAITS, "w2").await.expect("w2");
        start(&rt, &outlet, &HANG, "h").await.expect("h");
        assert_eq!(
            rt.latest_context(&WAITS)
                .map(|cx| cx.job_id().to_owned())
                .as_deref(),
            Some("w2")
        );
        assert_eq!(rt.running(), 3);
        assert_eq!(rt.finishing(), 2, "a hang job runs until stopped");

        running(&rt, &WAITS, "w2").cancel();
        result(&memory, "w2").await;
        until("w2 is out of its class", || rt.running() == 2).await;
        assert_eq!(
            rt.latest_context(&WAITS)
                .map(|cx| cx.job_id().to_owned())
                .as_deref(),
            Some("w2")
        );
        let last = lock(&rt.state(&WAITS).slot)
            .last
            .clone()
            .expect("a latest run");
        assert!(last.ended.is_some_and(|end| end >= last.started));
        assert_eq!(rt.finishing(), 1);
        rt.shutdown().await;
        assert_eq!(rt.running(), 0);
    }
}
