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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::runtime::testkit::{QUICK, limited, runtime, start};

    #[tokio::test(start_paused = true)]
    async fn runs_are_refused_while_another_process_holds_the_name_and_taken_once_this_one_does() {
        let (rt, outlet, _) = runtime(&[&QUICK], limited(10, 10));
        let far = Instant::now() + Duration::from_secs(60);
        rt.set_name(NameState::HeldElsewhere("held by process 4711".to_owned()));
        let refused = rt.check_name(far).await.expect_err("held elsewhere");
        assert!(
            matches!(&refused, DispatchError::DuplicateInstance(why) if why == "held by process 4711"),
            "{refused:?}"
        );
        rt.set_name(NameState::Held);
        assert!(rt.check_name(far).await.is_ok());
        // Without a store the name is not checked (nothing could hold it).
        rt.set_name(NameState::HeldElsewhere("x".to_owned()));
        assert!(start(&rt, &outlet, &QUICK, "q").await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_store_answers_a_run_waits_at_most_name_within_or_its_own_bound() {
        let (rt, _, _) = runtime(&[&QUICK], limited(10, 10));
        let began = Instant::now();
        assert!(rt.check_name(began + Duration::from_secs(60)).await.is_ok());
        assert_eq!(began.elapsed(), NAME_WITHIN);

        let began = Instant::now();
        assert!(
            rt.check_name(began + Duration::from_millis(300))
                .await
                .is_ok()
        );
        assert_eq!(began.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_answering_during_the_wait_decides_at_once() {
        let (rt, _, _) = runtime(&[&QUICK], limited(10, 10));
        let setter = rt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            setter.set_name(NameState::HeldElsewhere("a live duplicate".to_owned()));
        });
        let began = Instant::now();
        let refused = rt.check_name(began + Duration::from_secs(60)).await;
        assert!(
            matches!(refused, Err(DispatchError::DuplicateInstance(_))),
            "{refused:?}"
        );
        assert_eq!(began.elapsed(), Duration::from_millis(250));
    }
}
