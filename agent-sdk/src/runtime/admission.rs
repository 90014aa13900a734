//! Admission: the agent-wide and per-class limits, counted on atomics before a run is
//! built, and the guard that gives the counts back when a run is not entered.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::Runtime;
use crate::error::DispatchError;

/// Run ids and the runs in flight agent-wide.
pub(super) struct Counters {
    pub(super) seq: AtomicU64,
    pub(super) in_flight: AtomicUsize,
}

impl Counters {
    pub(super) fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Runtime {
    /// Counts a run against the agent-wide limit, or says why it may not start.
    pub(super) fn reserve_slot(&self) -> Result<(), DispatchError> {
        let limit = self.options.limits.max_running;
        if self.counters.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(DispatchError::Limit(format!(
                "the agent already runs {limit} jobs, the most allowed (JOBAGENT_MAX_RUNNING)"
            )));
        }
        Ok(())
    }
}

/// The counts a run takes when it is admitted (the agent's runs in flight and, for a class
/// that may run many at once, the class's): given back when dropped, unless the run was
/// entered into its class, whose end gives them back. So a constructor, a console or anything
/// else that fails or unwinds between the two cannot leak them.
#[must_use]
pub(super) struct Admission<'a> {
    in_flight: &'a AtomicUsize,
    class: Option<&'a AtomicUsize>,
    armed: bool,
}

impl<'a> Admission<'a> {
    pub(super) fn new(in_flight: &'a AtomicUsize, class: Option<&'a AtomicUsize>) -> Self {
        Self {
            in_flight,
            class,
            armed: true,
        }
    }

    /// The run holds the counts now.
    pub(super) fn entered(mut self) {
        self.armed = false;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if let Some(class) = self.class {
                class.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;

    use super::*;
    use crate::runtime::testkit::{
        BROKEN, BROKEN_SINGLETON, CONSTRUCTED, WAITS, counts, limited, result, running, runtime,
        start, until,
    };

    #[test]
    fn the_agent_wide_limit_refuses_past_max_running_and_keeps_no_count_for_the_refused() {
        let (rt, _, _) = runtime(&[&WAITS], limited(2, 10));
        assert!(rt.reserve_slot().is_ok());
        assert!(rt.reserve_slot().is_ok());
        let refused = rt
            .reserve_slot()
            .expect_err("a third run is past the limit");
        assert!(matches!(refused, DispatchError::Limit(_)), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            "the agent already runs 2 jobs, the most allowed (JOBAGENT_MAX_RUNNING)"
        );
        assert_eq!(rt.counters.in_flight.load(Ordering::Acquire), 2);
        rt.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        assert!(
            rt.reserve_slot().is_ok(),
            "a given-back slot is taken again"
        );
    }

    #[test]
    fn an_armed_admission_gives_both_counts_back_when_dropped_or_unwound_and_an_entered_one_does_not()
     {
        let (in_flight, class) = (AtomicUsize::new(1), AtomicUsize::new(1));
        drop(Admission::new(&in_flight, Some(&class)));
        assert_eq!(
            (
                in_flight.load(Ordering::Acquire),
                class.load(Ordering::Acquire)
            ),
            (0, 0)
        );

        let (in_flight, class) = (AtomicUsize::new(3), AtomicUsize::new(2));
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _admission = Admission::new(&in_flight, Some(&class));
            panic!("a constructor panicked");
        }));
        assert!(unwound.is_err());
        assert_eq!(
            (
                in_flight.load(Ordering::Acquire),
                class.load(Ordering::Acquire)
            ),
            (2, 1)
        );

        // A singleton's admission holds no class count.
        let in_flight = AtomicUsize::new(1);
        drop(Admission::new(&in_flight, None));
        assert_eq!(in_flight.load(Ordering::Acquire), 0);

        let (in_flight, class) = (AtomicUsize::new(1), AtomicUsize::new(1));
        Admission::new(&in_flight, Some(&class)).entered();
        assert_eq!(
            (
                in_flight.load(Ordering::Acquire),
                class.load(Ordering::Acquire)
            ),
            (1, 1),
            "an entered run gives its counts back when it ends, not before"
        );
    }

    /// Issue 26: a constructor that panics on every dispatch must not leak the counts, or the
    /// agent refuses every class once the leak reaches the limit. With limits of one run,
    /// one leaked count refuses the next dispatch.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_constructor_fails_its_run_and_gives_its_counts_back() {
        let (rt, outlet, memory) = runtime(&[&BROKEN, &BROKEN_SINGLETON], limited(1, 1));
        let before = CONSTRUCTED.load(Ordering::Relaxed);
        for (i, reg) in [&BROKEN, &BROKEN_SINGLETON, &BROKEN, &BROKEN_SINGLETON]
            .into_iter()
            .enumerate()
        {
            let id = format!("p{i}");
            let answer = start(&rt, &outlet, reg, &id)
                .await
                .map_err(|e| e.to_string());
            let expected = format!("JobClass:{} run success!", reg.class());
            assert_eq!(answer, Ok(expected), "dispatch {i}");
            let result = result(&memory, &id).await;
            assert_eq!(result.r, "err");
            assert_eq!(
                result.e,
                format!(
                    "the constructor of job {} panicked: no database configured",
                    reg.class()
                )
            );
            until("the counts are given back", || counts(&rt, reg) == (0, 0)).await;
            assert_eq!(rt.running(), 0);
        }
        assert!(CONSTRUCTED.load(Ordering::Relaxed) >= before + 4);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_per_class_limit_refuses_the_run_past_it_and_admits_again_once_one_ends() {
        let (rt, outlet, memory) = runtime(&[&WAITS], limited(10, 2));
        start(&rt, &outlet, &WAITS, "a").await.expect("first");
        start(&rt, &outlet, &WAITS, "b").await.expect("second");
        let refused = start(&rt, &outlet, &WAITS, "c")
            .await
            .expect_err("a third run is past the per-class limit");
        assert_eq!(
            refused.to_string(),
            "job unit::Waits already runs 2 instances, the most allowed per class (JOBAGENT_MAX_RUNNING_PER_CLASS)"
        );
        assert_eq!(
            counts(&rt, &WAITS),
            (2, 2),
            "the refused run holds no count"
        );
        assert_eq!(memory.results_of("c"), 0, "a refused run has no result");

        running(&rt, &WAITS, "a").cancel();
        assert!(result(&memory, "a").await.is_ok());
        until("run a is given back", || counts(&rt, &WAITS) == (1, 1)).await;
        start(&rt, &outlet, &WAITS, "d").await.expect("room again");
        assert_eq!(counts(&rt, &WAITS), (2, 2));
        rt.shutdown().await;
    }
}
