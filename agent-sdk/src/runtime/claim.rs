//! A singleton's cluster-wide claim: the reservation while it is decided, and its renewal
//! while the run lasts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::classes::ClassState;
use crate::cluster::{CLAIM_LEASE, CLAIM_SAFETY, Member, RENEW_EVERY, RENEW_WITHIN};
use crate::context::JobContext;
use crate::store::Store;
use crate::sync::lock;

/// A singleton's reservation while its cluster-wide claim is being decided. Dropped armed
/// (the claim failed, timed out, or the request was dropped), it frees the class and
/// releases in the background a claim the store may have written.
pub(super) struct Claiming<'a> {
    pub(super) rt: &'a Runtime,
    pub(super) state: &'a ClassState,
    pub(super) store: Arc<Store>,
    pub(super) class: &'static str,
    pub(super) job_id: String,
    pub(super) armed: bool,
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut slot = lock(&self.state.slot);
            if slot.claiming.as_deref() == Some(self.job_id.as_str()) {
                slot.claiming = None;
            }
        }
        self.rt.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.state.ended.notify_waiters();
        let (store, member) = (self.store.clone(), self.rt.member.clone());
        let (class, job_id) = (self.class, std::mem::take(&mut self.job_id));
        if tokio::runtime::Handle::try_current().is_ok() {
            self.rt.tracker.spawn(async move {
                let release = store.release_claim(&member, class, &job_id);
                match tokio::time::timeout(RELEASE_WITHIN, release).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(class, error = %e, "could not release an undecided claim; it lapses by itself"),
                    Err(_) => tracing::debug!(class, "releasing an undecided claim timed out; it lapses by itself"),
                }
            });
        }
    }
}

/// How long releasing an undecided claim may take before it is left to lapse.
const RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// Renews a running singleton's cluster-wide claim every [`RENEW_EVERY`] until `stop`, and
/// cancels the run when the claim is lost: taken by another replica, or not renewed for
/// `CLAIM_LEASE - CLAIM_SAFETY` (the store is unreachable or silent). Time is measured on
/// this process's monotonic clock from the moment each successful renewal was *sent*: the
/// database set the claim's `Until` to its own now, later than that, plus `CLAIM_LEASE`, so
/// the run is cancelled (and its fencing token stops being current) before the claim can
/// lapse and another replica take it.
pub(super) async fn keep_claim(
    store: Arc<Store>,
    member: Member,
    class: &'static str,
    cx: JobContext,
    stop: CancellationToken,
) {
    let job_id = cx.job_id().to_owned();
    // The claim was written just before the run started, and is renewed at once.
    let mut renewed = tokio::time::Instant::now();
    let mut next = renewed;
    loop {
        let cancel_at = renewed + (CLAIM_LEASE - CLAIM_SAFETY);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(cancel_at) => {
                let silent = renewed.elapsed();
                tracing::warn!(
                    class,
                    job_id,
                    silent_ms = silent.as_millis() as u64,
                    claim_lease_ms = CLAIM_LEASE.as_millis() as u64,
                    "the singleton claim could not be renewed; cancelling the run before the claim can lapse and another replica take it"
                );
                cx.console().warning(format!(
                    "this run could not renew its cluster-wide claim for {} ms (store unreachable) and was cancelled before another replica could take it",
                    silent.as_millis()
                ));
                crate::metrics::claim_lost(class);
                cx.cancel();
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = tokio::time::Instant::now();
        next = sent + RENEW_EVERY;
        let attempt = crate::metrics::store_op("renew", store.renew_claim(&member, class, &job_id));
        let bound = (sent + RENEW_WITHIN).min(cancel_at);
        tokio::select! {
            _ = stop.cancelled() => return,
            res = tokio::time::timeout_at(bound, attempt) => match res {
                Ok(Ok(true)) => renewed = sent,
                Ok(Ok(false)) => {
                    tracing::warn!(class, job_id, "the singleton claim was lost; cancelling the run");
                    cx.console()
                        .warning("this run lost its cluster-wide claim and was cancelled");
                    crate::metrics::claim_lost(class);
                    cx.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::debug!(class, error = %e, "claim renewal failed; retrying"),
                Err(_) => tracing::debug!(class, "claim renewal got no answer in time; retrying"),
            }
        }
    }
}
