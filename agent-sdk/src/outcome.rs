//! Where a dispatch's console lines and result go: the store, or the agent's log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::console::{LogSink, Sink};
use crate::options::ConsoleBudget;
use crate::request::ConsoleTarget;
use crate::result::Results;
use crate::store::{Store, StoreConsole, StoreResults};
use crate::timefmt::parse_utc;

/// Where one dispatch's console lines and result go: a store, or the agent's log (or, for a
/// run of [`testing`](crate::testing), memory).
#[derive(Clone, Default)]
pub(crate) struct Outlet {
    pub(crate) store: Option<Arc<Store>>,
    /// Set only by [`testing`](crate::testing): lines and results are kept in memory.
    pub(crate) memory: Option<Arc<crate::testing::Memory>>,
}

impl Outlet {
    /// Where the run's result goes; a store retries an unwritten one for `retry_for`
    /// (`None`: the store's `ExpireAtDays`).
    pub(crate) fn results(&self, retry_for: Option<Duration>) -> Results {
        if let Some(memory) = &self.memory {
            return Results::Sink(memory.clone());
        }
        match &self.store {
            Some(store) => Results::Sink(Arc::new(StoreResults {
                store: store.clone(),
                retry_for,
            })),
            None => Results::Log,
        }
    }

    /// Opens the console of a run (after the run was accepted: a store console starts a
    /// writer task).
    pub(crate) fn console(
        &self,
        tracker: &tokio_util::task::TaskTracker,
        job_id: &str,
        target: Option<&ConsoleTarget>,
        budget: ConsoleBudget,
        prefix: &str,
    ) -> Sink {
        if let Some(memory) = &self.memory {
            return Sink::Shared(memory.console(job_id));
        }
        match (&self.store, target) {
            (Some(store), Some(target)) => {
                let start = parse_utc(target.start_time()).unwrap_or_else(SystemTime::now);
                Sink::Shared(Arc::new(StoreConsole::start(
                    tracker,
                    store.clone(),
                    target.clone(),
                    start,
                    budget,
                    prefix.to_owned(),
                )))
            }
            _ => Sink::Log(LogSink {
                job_id: job_id.to_owned(),
            }),
        }
    }
}
