//! The per-store coordinator: reconciles runs a predecessor left in flight and, in cluster
//! mode, keeps this replica's lease, executes stops other replicas send, and reports the runs
//! of replicas that died.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::{ORPHAN_SCAN_EVERY, POLL_EVERY, RENEW_EVERY, RunRecord};
use crate::outcome::{DispatchResult, ResultSink};
use crate::request::Action;
use crate::runtime::Runtime;
use crate::store::{Store, StoreResults};

/// How often a replica looks for dead replicas' runs.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// Starts the coordinator of `store`; it ends with the agent.
pub(crate) fn spawn(runtime: Weak<Runtime>, store: Arc<Store>, stop: CancellationToken) {
    tokio::spawn(async move {
        let Some(rt) = runtime.upgrade() else { return };
        let me = rt.member.clone();
        let cluster = rt.options.cluster;
        drop(rt);
        if cluster && let Err(e) = store.renew_replica(&me).await {
            tracing::debug!(store = %store.label, error = %e, "could not register the replica yet");
        }
        // Runs a crashed predecessor of this instance left in flight: report them once.
        let mut reconciled = false;
        let mut last_renew = tokio::time::Instant::now();
        let mut last_reap = tokio::time::Instant::now();
        // The first reap also looks for runs whose instance lost its lease row.
        let mut last_scan: Option<tokio::time::Instant> = None;
        loop {
            if !reconciled {
                match store.take_orphans(&me).await {
                    Ok(orphans) => {
                        reconciled = true;
                        for (job_id, record) in orphans {
                            tracing::warn!(job_id, class = %record.class, "reporting a run the previous process of this instance left in flight");
                            report_lost(
                                &store,
                                &job_id,
                                &record,
                                "agent restarted before the job finished",
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(store = %store.label, error = %e, "reconciliation deferred")
                    }
                }
            }
            if !cluster && reconciled {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            if !cluster {
                continue;
            }
            let Some(rt) = runtime.upgrade() else { return };
            match store.take_commands(&me).await {
                Ok(commands) => {
                    for command in commands {
                        let (rt, store) = (rt.clone(), store.clone());
                        tokio::spawn(async move { rt.remote_stop(&store, command).await });
                    }
                }
                Err(e) => {
                    tracing::debug!(store = %store.label, error = %e, "could not read commands")
                }
            }
            if last_renew.elapsed() >= RENEW_EVERY {
                last_renew = tokio::time::Instant::now();
                if let Err(e) = store.renew_replica(&me).await {
                    tracing::debug!(store = %store.label, error = %e, "could not renew the replica lease");
                }
            }
            if last_reap.elapsed() >= REAP_EVERY {
                last_reap = tokio::time::Instant::now();
                let scan = last_scan.is_none_or(|at| at.elapsed() >= ORPHAN_SCAN_EVERY);
                let taken = store.take_lost(&me, scan).await;
                if scan && taken.is_ok() {
                    last_scan = Some(last_reap);
                }
                match taken {
                    Ok(lost) => {
                        for (instance, job_id, record) in lost {
                            tracing::warn!(instance, job_id, class = %record.class, "reporting a run of a lost replica");
                            report_lost(&store, &job_id, &record, &format!("agent replica lost: {instance} stopped answering before the job finished")).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(store = %store.label, error = %e, "could not look for lost replicas")
                    }
                }
            }
        }
    });
}

async fn report_lost(store: &Arc<Store>, job_id: &str, record: &RunRecord, why: &str) {
    let started = std::time::UNIX_EPOCH + Duration::from_millis(record.started);
    let result = DispatchResult::new(job_id, Action::Run, job_id, Some(why.to_owned()), started);
    StoreResults {
        store: store.clone(),
    }
    .write(result)
    .await;
}
