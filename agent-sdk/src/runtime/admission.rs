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
