//! The instance name: whether this process holds it, and the refusal of runs while another
//! process does.

use std::time::Duration;

use super::Runtime;
use crate::error::DispatchError;

/// What this process knows of its instance name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NameState {
    /// The store has not answered yet.
    Unknown,
    /// This process holds it.
    Held,
    /// Another process holds it (a live duplicate, or a predecessor whose lease has not
    /// lapsed yet): why runs are refused.
    HeldElsewhere(String),
}

impl Runtime {
    /// Records what the coordinator found of this instance name. While another process holds
    /// it (a live duplicate, or a predecessor whose lease has not lapsed), runs are refused:
    /// they could be neither recorded under the name nor reported if this process died.
    pub(crate) fn set_name(&self, state: NameState) {
        self.name.send_if_modified(|now| {
            let changed = *now != state;
            *now = state;
            changed
        });
    }

    /// Refuses a run while another process holds this instance name. Before the store has
    /// first answered, waits for that answer until `by` (at most [`NAME_WITHIN`]): a run
    /// accepted under a name another process holds would belong to no one. A store that does
    /// not answer in time lets the run go, as before (its writes are retried).
    pub(super) async fn check_name(&self, by: tokio::time::Instant) -> Result<(), DispatchError> {
        if *self.name.borrow() == NameState::Unknown {
            let by = by.min(tokio::time::Instant::now() + NAME_WITHIN);
            let mut rx = self.name.subscribe();
            let _ = tokio::time::timeout_at(by, rx.wait_for(|s| *s != NameState::Unknown)).await;
        }
        match &*self.name.borrow() {
            NameState::HeldElsewhere(why) => Err(DispatchError::DuplicateInstance(why.clone())),
            NameState::Held | NameState::Unknown => Ok(()),
        }
    }
}

/// How long a run waits, at most, for the store's first answer about this process's
/// instance name.
const NAME_WITHIN: Duration = Duration::from_secs(2);
