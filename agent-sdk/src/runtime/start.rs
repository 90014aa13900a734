//! Starting a run: the dispatch's checks, the busy singleton, the per-class limit and
//! the cluster-wide claim, then the run's task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::admission::Admission;
use super::busy::{Busy, MAX_QUEUED};
use super::claim::Claiming;
use super::classes::LastRun;
use super::run::Status;
use super::{Runtime, stop};
use crate::cluster::Claimed;
use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::registry::{BusyPolicy, JobRegistration};
use crate::request::Dispatch;
use crate::store::Store;
use crate::sync::lock;

/// Whether a run started.
pub(super) enum Start {
    Started,
    /// The singleton is busy; the dispatch comes back for the busy policy.
    Busy(Busy, Box<Dispatch>),
}

impl Runtime {
    /// Starts a run; answers at once. A busy singleton follows the class's busy policy.
    pub(crate) async fn run(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        if !self.is_accepting() {
            return Err(DispatchError::ShuttingDown);
        }
        if self.is_draining() {
            return Err(DispatchError::Draining);
        }
        if outlet.store.is_some() {
            self.check_name(stop::answer_deadline(&d)).await?;
        }
        let (busy, d) = match self.try_start(reg, d, &outlet).await? {
            Start::Started => {
                // The most frequent answer: built without the formatting machinery.
                const TAIL: &str = " run success!";
                let mut answer =
                    String::with_capacity("JobClass:".len() + reg.class().len() + TAIL.len());
                answer.push_str("JobClass:");
                answer.push_str(reg.class());
                answer.push_str(TAIL);
                return Ok(answer);
            }
            Start::Busy(busy, d) => (busy, *d),
        };
        match reg.on_busy() {
            BusyPolicy::Reject => Err(busy.into_error(reg)),
            BusyPolicy::Discard => {
                let answer = format!(
                    "JobClass:{} is busy ({}, JobId:{}); this run was discarded",
                    reg.class(),
                    busy.describe(),
                    busy.job_id
                );
                self.discard(reg, d, outlet, busy);
                Ok(answer)
            }
            BusyPolicy::Replace => {
                let answer = format!(
                    "JobClass:{} run accepted: replacing the running instance (JobId:{})",
                    reg.class(),
                    busy.job_id
                );
                Box::pin(self.replace(reg, d, outlet, busy)).await;
                Ok(answer)
            }
            BusyPolicy::Queue => {
                let state = self.state(reg);
                let position = state.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                if position > MAX_QUEUED {
                    state.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(DispatchError::Limit(format!(
                        "job {} is busy and {MAX_QUEUED} runs already wait behind it, the most allowed",
                        reg.class()
                    )));
                }
                let answer = format!(
                    "JobClass:{} run accepted: queued behind JobId:{} (position {position})",
                    reg.class(),
                    busy.job_id
                );
                self.enqueue(reg, d, outlet);
                Ok(answer)
            }
        }
    }

    /// Reserves the class locally, claims it cluster-wide for a singleton, and spawns the run.
    /// A busy singleton gives the dispatch back.
    pub(super) async fn try_start(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Result<Start, DispatchError> {
        if !reg.kind().is_singleton() {
            return self.start_concurrent(reg, d, outlet).await;
        }
        let state = self.state(reg);
        let claim_in = self.shared(outlet).cloned();
        /// What the reservation leads to: a started run, or a claim to make first.
        enum Next {
            Started(Option<tokio::sync::oneshot::Receiver<()>>),
            Claim(Arc<Store>, Box<Dispatch>),
        }
        let next = {
            let mut slot = lock(&state.slot);
            if let Some(current) = slot.runs.oldest() {
                let busy = Busy {
                    job_id: current.cx.job_id().to_owned(),
                    status: current.status(),
                    replica: None,
                };
                return Ok(Start::Busy(busy, Box::new(d)));
            }
            if let Some(claimer) = &slot.claiming {
                let busy = Busy {
                    job_id: claimer.clone(),
                    status: Status::Running,
                    replica: None,
                };
                return Ok(Start::Busy(busy, Box::new(d)));
            }
            self.reserve_slot()?;
            let admission = Admission::new(&self.counters.in_flight, None);
            match claim_in {
                None => {
                    let run = self.admit(reg, &mut slot, d, outlet);
                    admission.entered();
                    drop(slot);
                    Next::Started(self.spawn_drive(reg, run))
                }
                Some(store) => {
                    slot.claiming = Some(d.job_id.clone());
                    // The claim's guard (below) gives the count back from here.
                    admission.entered();
                    Next::Claim(store, Box::new(d))
                }
            }
        };
        let (store, d) = match next {
            Next::Claim(store, d) => (store, *d),
            Next::Started(recorded) => {
                Self::until_recorded(recorded).await;
                return Ok(Start::Started);
            }
        };
        // A singleton with a shared store: claim it cluster-wide first, within the center's
        // HTTP timeout. Until the claim is decided the guard owns the reservation: whether the
        // claim fails, times out or the request is dropped, the class is freed and a claim
        // that may have been written is released.
        let mut guard = Claiming {
            rt: self,
            state,
            store: store.clone(),
            class: reg.class(),
            job_id: d.job_id.clone(),
            armed: true,
        };
        let deadline = stop::answer_deadline(&d);
        // Boxed: a store round trip is a large future, and the common path must not carry it.
        let claimed = stop::within(
            deadline,
            Box::pin(crate::metrics::store_op(
                "claim",
                store.claim(&self.member, reg.class(), &d.job_id),
            )),
        )
        .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                drop(guard);
                return Err(DispatchError::Undecided(format!(
                    "cannot decide whether singleton {} may start: the shared store did not settle its cluster-wide claim ({e}); the run is refused and the class left free: retry, or turn cluster mode off (JOBAGENT_CLUSTER=off)",
                    reg.class()
                )));
            }
        };
        guard.armed = false;
        let recorded = {
            let mut slot = lock(&state.slot);
            slot.claiming = None;
            match claimed {
                Claimed::Yes(fence) => {
                    let admission = Admission::new(&self.counters.in_flight, None);
                    let run = self.admit(reg, &mut slot, d, outlet);
                    admission.entered();
                    drop(slot);
                    let _ = run.cx.fence_cell().set(fence);
                    run.claimed.store(true, Ordering::Release);
                    crate::metrics::claims_held(1.0);
                    self.spawn_drive(reg, run)
                }
                Claimed::Busy(holder) => {
                    drop(slot);
                    self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let busy = Busy {
                        job_id: holder.job_id,
                        status: Status::Running,
                        replica: Some(holder.instance),
                    };
                    return Ok(Start::Busy(busy, Box::new(d)));
                }
            }
        };
        Self::until_recorded(recorded).await;
        Ok(Start::Started)
    }

    /// Starts a run of a class that may run many at once. The limits are counted on atomics
    /// and the run is built before the class's lock is taken, which is then held only to
    /// enter the run: every run of the class, on every worker thread, takes that lock.
    async fn start_concurrent(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Result<Start, DispatchError> {
        let state = self.state(reg);
        let admitted = state.admitted.fetch_add(1, Ordering::AcqRel);
        if admitted >= self.options.limits.max_running_per_class {
            state.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(DispatchError::Limit(format!(
                "job {} already runs {admitted} instances, the most allowed per class (JOBAGENT_MAX_RUNNING_PER_CLASS)",
                reg.class(),
            )));
        }
        if let Err(e) = self.reserve_slot() {
            state.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        // Whatever unwinds or returns before the run is entered gives both counts back.
        let admission = Admission::new(&self.counters.in_flight, Some(&state.admitted));
        let started = SystemTime::now();
        let run = self.new_run(reg, d, outlet, started);
        let last = LastRun {
            cx: run.cx.clone(),
            started,
            ended: None,
        };
        let previous = {
            let mut slot = lock(&state.slot);
            slot.runs.insert(run.clone());
            // Entered: the run gives its counts back when it ends.
            admission.entered();
            // Shutdown sets the flag, then cancels each run entered before it takes this lock.
            if self.root_cancelled.load(Ordering::Acquire) {
                run.cx.cancel();
            }
            slot.last.replace(last)
        };
        drop(previous);
        Self::until_recorded(self.spawn_drive(reg, run)).await;
        Ok(Start::Started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testkit::{
        SINGLETON, counts, limited, result, running, runtime, start, until,
    };

    #[tokio::test(flavor = "multi_thread")]
    async fn a_busy_singleton_refuses_a_second_run_and_takes_one_once_free() {
        let (rt, outlet, memory) = runtime(&[&SINGLETON], limited(10, 10));
        let answer = start(&rt, &outlet, &SINGLETON, "1").await;
        assert_eq!(
            answer.map_err(|e| e.to_string()),
            Ok("JobClass:unit::Singleton run success!".to_owned())
        );
        match start(&rt, &outlet, &SINGLETON, "2").await {
            Err(DispatchError::Busy {
                class,
                status,
                job_id,
            }) => assert_eq!(
                (class.as_str(), status.as_str(), job_id.as_str()),
                ("unit::Singleton", "Running", "1")
            ),
            other => panic!("{other:?}"),
        }
        // A singleton holds the agent's count, not a class count.
        assert_eq!(counts(&rt, &SINGLETON), (1, 0));
        assert_eq!(memory.results_of("2"), 0);
        running(&rt, &SINGLETON, "1").cancel();
        assert!(result(&memory, "1").await.is_ok());
        until("the singleton is free", || {
            counts(&rt, &SINGLETON) == (0, 0)
        })
        .await;
        start(&rt, &outlet, &SINGLETON, "3")
            .await
            .expect("free again");
        assert_eq!(
            rt.latest_context(&SINGLETON)
                .map(|cx| cx.job_id().to_owned())
                .as_deref(),
            Some("3")
        );
        rt.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_is_refused_while_the_agent_drains_or_shuts_down() {
        let (rt, outlet, _) = runtime(&[&SINGLETON], limited(10, 10));
        rt.draining.store(true, Ordering::Release);
        let refused = start(&rt, &outlet, &SINGLETON, "d").await;
        assert!(
            matches!(refused, Err(DispatchError::Draining)),
            "{refused:?}"
        );
        rt.accepting.store(false, Ordering::Release);
        let refused = start(&rt, &outlet, &SINGLETON, "s").await;
        assert!(
            matches!(refused, Err(DispatchError::ShuttingDown)),
            "{refused:?}"
        );
        assert_eq!(rt.running(), 0);
        assert_eq!(counts(&rt, &SINGLETON), (0, 0));
    }
}
