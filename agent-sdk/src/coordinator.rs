//! The per-store coordinator: holds this process's lease of its instance name, reconciles the
//! runs a predecessor left in flight and, in cluster mode, executes stops other replicas send
//! and reports the runs of replicas that died.
//!
//! The lease is held whether or not cluster mode is on: it is how two live processes with one
//! instance name (the default is the host name) notice each other instead of reporting each
//! other's runs as crashed. A process that finds the name held by another live process is a
//! duplicate: it says so (an error naming `JOBAGENT_INSTANCE`), does nothing under that name
//! (no reconciliation, no reaping, no commands; claims are refused by the store) and keeps
//! trying; when the other process's lease lapses (it died), this one takes the name over and
//! reconciles. A predecessor that crashed is told from a live duplicate by its lease: a live
//! process renews it every [`RENEW_EVERY`], a dead one does not.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{
    Holder, Lease, Member, ORPHAN_SCAN_EVERY, POLL_EVERY, RENEW_EVERY, RENEW_WITHIN, RunRecord,
};
use crate::request::Action;
use crate::result::{DispatchResult, ResultSink};
use crate::runtime::{NameState, Runtime};
use crate::spool::{self, Entry, Kept, Spool};
use crate::store::{Store, StoreError, StoreErrorKind, StoreResults};

/// How often a replica looks for dead replicas' runs.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long one coordinator store operation may take before it is given up (and retried at
/// its next turn): a black-holed connection must not stall the lease.
const STORE_OP_WITHIN: Duration = Duration::from_secs(5);
/// How long releasing the lease at a graceful stop may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(1);
/// How long a lost run's report, cut short by shutdown, may still take to finish its write
/// (its record stays either way until the report is written).
const REPORT_GRACE: Duration = Duration::from_millis(500);
/// How long shutdown waits for the coordinators (the lease's release, lost runs' reports
/// finishing) once the runs are over.
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(3);
/// The longest wait between two lease renewals of a store that does not answer (they back
/// off from [`RENEW_EVERY`], doubling).
const MAX_RENEW_BACKOFF: Duration = Duration::from_secs(60);

/// A store operation bounded by `within`.
async fn bounded<T>(
    within: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(within, op)
        .await
        .unwrap_or_else(|_| Err(StoreError::timed_out("the store", within)))
}

/// What this process knows of its claim to its instance name.
enum Identity {
    /// Not known yet (the store has not answered).
    Unknown,
    /// The lease is ours.
    Held,
    /// Another process holds a live lease of the name, first seen with this deadline;
    /// `live` once it was seen renewing (a duplicate, not a predecessor that died).
    Other { holder: Holder, live: bool },
}

impl Identity {
    fn held(&self) -> bool {
        matches!(self, Identity::Held)
    }

    /// Takes in the answer of a lease write, logging what changed.
    fn update(&mut self, lease: Lease, me: &Member, store: &Store) {
        match (lease, &mut *self) {
            (Lease::Held, Identity::Held) => {}
            (Lease::Held, Identity::Other { holder, .. }) => {
                tracing::warn!(
                    instance = %me.instance,
                    store = %store.label,
                    other_pid = holder.pid,
                    "the other process's lease of this instance name lapsed: this process now holds the name"
                );
                *self = Identity::Held;
            }
            (Lease::Held, Identity::Unknown) => *self = Identity::Held,
            (Lease::HeldBy(holder), Identity::Other { holder: seen, live })
                if holder.server_id == seen.server_id =>
            {
                if !*live && holder.until > seen.until {
                    *live = true;
                    tracing::error!(
                        instance = %me.instance,
                        store = %store.label,
                        "{}",
                        holder.refusal(&me.instance)
                    );
                }
                *seen = holder;
            }
            (Lease::HeldBy(holder), previous) => {
                let lost = previous.held();
                if lost {
                    tracing::error!(
                        instance = %me.instance,
                        store = %store.label,
                        other_pid = holder.pid,
                        "this process's lease of its instance name was taken by another process while it could not renew it (cut off from the store?); {}",
                        holder.refusal(&me.instance)
                    );
                } else {
                    tracing::warn!(
                        instance = %me.instance,
                        store = %store.label,
                        other_pid = holder.pid,
                        "instance name {} (JOBAGENT_INSTANCE) is held by another process; waiting for its lease to lapse (a predecessor that died) or to see it renewed (a live process with the same name: a configuration error)",
                        me.instance
                    );
                }
                *self = Identity::Other { holder, live: lost };
            }
        }
    }
}

/// Starts the coordinator of `store`, in the agent's background tracker; it ends with the
/// agent, releasing the instance name.
pub(crate) fn spawn(runtime: Weak<Runtime>, store: Arc<Store>, stop: CancellationToken) {
    let Some(rt) = runtime.upgrade() else {
        store.coordinator_ended();
        return;
    };
    let tasks = rt.background().clone();
    drop(rt);
    tasks.clone().spawn(async move {
        let Some(rt) = runtime.upgrade() else {
            store.coordinator_ended();
            return;
        };
        let me = rt.member.clone();
        let spool = rt.spool.clone();
        let cluster = rt.options.cluster;
        let idle = rt.options.store_idle;
        // Ends with this coordinator (the store went unused) or with the agent.
        let here = stop.child_token();
        let listening = cluster
            && rt.options.cluster_notify
            && store.kind() == crate::store::StoreType::PostgreSql;
        #[cfg(feature = "postgres")]
        if listening {
            crate::store::listen::spawn(&tasks, store.clone(), me.instance.clone(), here.clone());
        }
        drop(rt);
        let reporting = Reporting::default();
        let reporter = Reporter {
            tasks: &tasks,
            stop: &stop,
            store: &store,
            reporting: &reporting,
            me: &me,
        };
        // The last refusal to act beside replicas of another version, as logged.
        let mut refused: Option<String> = None;
        let mut renew_failures = 0u32;
        let mut identity = Identity::Unknown;
        // Runs a crashed predecessor of this instance left in flight: reported once, by the
        // process that holds the name.
        let mut reconciled = false;
        let mut last_renew: Option<Instant> = None;
        let mut last_reap = Instant::now();
        // The first reap also looks for runs whose instance lost its lease row.
        let mut last_scan: Option<Instant> = None;
        loop {
            // A store that does not answer is asked less and less often.
            let renew_every = RENEW_EVERY
                .saturating_mul(1 << renew_failures.min(6))
                .min(MAX_RENEW_BACKOFF);
            if last_renew.is_none_or(|at| at.elapsed() >= renew_every) {
                last_renew = Some(Instant::now());
                match bounded(
                    RENEW_WITHIN,
                    crate::metrics::store_op("lease", store.hold_lease(&me)),
                )
                .await
                {
                    Ok(lease) => {
                        renew_failures = 0;
                        identity.update(lease, &me, &store);
                        let Some(rt) = runtime.upgrade() else { return };
                        rt.set_name(match &identity {
                            Identity::Unknown => NameState::Unknown,
                            Identity::Held => NameState::Held,
                            Identity::Other { holder, live: true } => {
                                NameState::HeldElsewhere(holder.refusal(&me.instance))
                            }
                            Identity::Other { holder, live: false } => {
                                NameState::HeldElsewhere(holder.waiting(&me.instance))
                            }
                        });
                    }
                    Err(e) => {
                        renew_failures = renew_failures.saturating_add(1);
                        tracing::debug!(store = %store.label, error = %e, "could not renew the instance lease")
                    }
                }
            }
            // A store a center sent that no dispatch named for `idle` and nothing uses (no
            // run, heartbeat or console holds it; only this task, its listener and the
            // cache): not dialled any more. A dispatch naming it starts this again.
            if store.sent_by_center() && store.idle_for() >= idle {
                let own = 1 + usize::from(listening) + usize::from(store.is_cached());
                if Arc::strong_count(&store) <= own {
                    tracing::info!(
                        store = %store.label,
                        idle_ms = idle.as_millis() as u64,
                        answering = renew_failures == 0,
                        "no dispatch named this store for the idle time and nothing uses it: the agent stops dialling it (JOBAGENT_STORE_IDLE_MS; a dispatch naming it opens it again)"
                    );
                    if identity.held() {
                        let _ = bounded(RELEASE_WITHIN, store.release_lease(&me)).await;
                    }
                    here.cancel();
                    store.coordinator_ended();
                    return;
                }
            }
            if identity.held() && !reconciled {
                match bounded(STORE_OP_WITHIN, store.orphans(&me)).await {
                    Ok(orphans) => {
                        reconciled = true;
                        let mut spooled = spooled_runs(spool.as_deref(), &me, &store).await;
                        // Spooled and in the store too (killed between the store taking the
                        // record and the file's removal): reported once, the file removed
                        // with it.
                        let orphans: Vec<_> = orphans
                            .into_iter()
                            .map(|(job_id, record)| {
                                let kept = spooled
                                    .iter()
                                    .position(|(_, e)| e.job_id == job_id)
                                    .map(|i| spooled.swap_remove(i).0);
                                (job_id, record, kept)
                            })
                            .collect();
                        tracing::info!(
                            instance = %me.instance,
                            store = %store.label,
                            "this process holds its instance name and reconciled it: {} run(s) a previous process of it left in flight in the store, {} more in this machine's spool",
                            orphans.len(),
                            spooled.len(),
                        );
                        let spooled = spooled
                            .into_iter()
                            .map(|(kept, e)| (e.job_id, e.record, Some(kept)));
                        for (job_id, record, kept) in orphans.into_iter().chain(spooled) {
                            tracing::warn!(job_id, class = %record.class, "reporting a run the previous process of this instance left in flight");
                            report_lost(
                                &reporter,
                                me.instance.clone(),
                                job_id,
                                &record,
                                "agent restarted before the job finished".to_owned(),
                                kept,
                            );
                        }
                    }
                    Err(e) => {
                        tracing::debug!(store = %store.label, error = %e, "reconciliation deferred")
                    }
                }
            }
            let pause = if cluster { POLL_EVERY } else { RENEW_EVERY };
            tokio::select! {
                _ = stop.cancelled() => {
                    if identity.held()
                        && let Err(e) = bounded(RELEASE_WITHIN, store.release_lease(&me)).await
                    {
                        tracing::debug!(store = %store.label, error = %e, "could not release the instance lease; it lapses by itself");
                    }
                    return;
                }
                _ = tokio::time::sleep(pause) => {}
                // A NOTIFY for this instance: a command waits.
                _ = store.wakeups.commands.notified(), if cluster => {}
            }
            let Some(rt) = runtime.upgrade() else {
                store.coordinator_ended();
                return;
            };
            // Commands and lost runs under this name belong to the process that holds it.
            if !cluster || !identity.held() {
                continue;
            }
            match bounded(
                STORE_OP_WITHIN,
                crate::metrics::store_op("commands", store.take_commands(&me)),
            )
            .await
            {
                Ok(commands) => {
                    for command in commands {
                        let (rt, store) = (rt.clone(), store.clone());
                        tasks.spawn(async move { rt.remote_stop(&store, command).await });
                    }
                }
                Err(e) => {
                    tracing::debug!(store = %store.label, error = %e, "could not read commands")
                }
            }
            drop(rt);
            if last_reap.elapsed() >= REAP_EVERY {
                last_reap = Instant::now();
                let scan = last_scan.is_none_or(|at| at.elapsed() >= ORPHAN_SCAN_EVERY);
                let taken = bounded(
                    STORE_OP_WITHIN,
                    crate::metrics::store_op("lost", store.take_lost(&me, scan)),
                )
                .await;
                if scan && taken.is_ok() {
                    last_scan = Some(last_reap);
                }
                match taken {
                    Ok(lost) => {
                        refused = None;
                        for (instance, job_id, record) in lost {
                            tracing::warn!(instance, job_id, class = %record.class, "reporting a run of a lost replica");
                            let why = format!(
                                "agent replica lost: {instance} stopped answering before the job finished"
                            );
                            report_lost(&reporter, instance, job_id, &record, why, None);
                        }
                    }
                    // Replicas of another version side by side: the operator must act (said once
                    // per distinct refusal, not every second).
                    Err(e) if e.kind() == StoreErrorKind::Config => {
                        if refused.as_deref() != Some(e.message()) {
                            tracing::error!(store = %store.label, "{e}");
                            refused = Some(e.message().to_owned());
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

/// The runs this process is reporting lost (instance, job id): one taken again while its
/// report is under way (the reaper's placeholder lapsed) is not reported twice from here.
type Reporting = Arc<Mutex<HashSet<(String, String)>>>;

/// Takes its run out of [`Reporting`] when the report task ends, however it ends.
struct Reported(Reporting, (String, String));

impl Drop for Reported {
    fn drop(&mut self) {
        crate::sync::lock(&self.0).remove(&self.1);
    }
}

/// What a report of a lost run needs from its coordinator.
struct Reporter<'a> {
    tasks: &'a TaskTracker,
    stop: &'a CancellationToken,
    store: &'a Arc<Store>,
    reporting: &'a Reporting,
    me: &'a Member,
}

/// The runs a previous process of this instance kept in this machine's spool for `store`
/// (not this process's own, which are still in flight); those older than the store keeps
/// anything are removed unreported.
async fn spooled_runs(spool: Option<&Spool>, me: &Member, store: &Store) -> Vec<(Kept, Entry)> {
    let Some(spool) = spool else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for (kept, entry) in spool.left(&me.instance, &spool::store_key(store)).await {
        if entry.record.server_id == me.server_id {
            continue;
        }
        if spool::outlived(&entry, store.expire) {
            tracing::warn!(job_id = %entry.job_id, class = %entry.record.class, "a spooled run is older than the store keeps anything (ExpireAtDays); removed, not reported");
            kept.forget().await;
            continue;
        }
        runs.push((kept, entry));
    }
    runs
}

/// Reports a run found lost, in the background (the agent's tracker): the result writer
/// retries while the store is unreachable, and the coordinator must go on renewing the lease.
/// The run's record stays in the store until its result is written, and is deleted only
/// then: a process killed before the write leaves the record, which whoever holds the
/// instance name next, or a survivor once the reaper's placeholder lapses, reports; one
/// killed between the write and the delete leaves at most a second report, which the result's
/// first-report mark absorbs.
fn report_lost(
    r: &Reporter<'_>,
    instance: String,
    job_id: String,
    record: &RunRecord,
    why: String,
    spooled: Option<Kept>,
) {
    let key = (instance.clone(), job_id.clone());
    if !crate::sync::lock(r.reporting).insert(key.clone()) {
        return;
    }
    let reported = Reported(r.reporting.clone(), key);
    let started = std::time::UNIX_EPOCH + Duration::from_millis(record.started);
    crate::metrics::lost_run_reported(
        &record.class,
        std::time::SystemTime::now()
            .duration_since(started)
            .unwrap_or_default(),
    );
    // A stop in flight is reported as the stop it was, naming the run it stopped (none when
    // it stopped nothing, as its own report would: the center sets the recurring job's
    // `LastJobId` from a stop's non-empty `RunId`, yuzd/Hangfire.HttpJob
    // `Server/Hangfire.HttpJob/Server/JobAgent/JobAgentReportServer.cs`).
    let (action, run_id) = if record.is_stop() {
        (Action::Stop, record.run_id.as_str())
    } else {
        (Action::Run, job_id.as_str())
    };
    let result = DispatchResult::new(&job_id, action, run_id, Some(why), started);
    let results = StoreResults {
        store: r.store.clone(),
        retry_for: None,
    };
    let (store, record, stop) = (r.store.clone(), record.clone(), r.stop.clone());
    let owner = Member {
        instance,
        server_id: r.me.server_id.clone(),
    };
    r.tasks.spawn(async move {
        let _reported = reported;
        // The claim goes first: once the result is visible, the class must already be free
        // (a stop read right after the result says "already stopped", not "stopping").
        let release = store.release_lost_claim(&record.class, &job_id, &record.server_id);
        if let Err(e) = bounded(STORE_OP_WITHIN, release).await {
            tracing::debug!(job_id, error = %e, "could not release the lost run's claim; it lapses by itself");
        }
        let mut write = std::pin::pin!(results.write(result));
        let written = tokio::select! {
            written = &mut write => written,
            () = stop.cancelled() => {
                tokio::time::timeout(REPORT_GRACE, &mut write).await.unwrap_or(false)
            }
        };
        if !written {
            tracing::warn!(instance = %owner.instance, job_id, class = %record.class, "a lost run's report was not written before shutdown; its record stays, and whoever holds the instance name next (or a surviving replica) reports it");
            return;
        }
        if let Some(kept) = spooled {
            kept.forget().await;
        }
        if let Err(e) = bounded(STORE_OP_WITHIN, store.forget_run(&owner, &job_id)).await {
            tracing::debug!(instance = %owner.instance, job_id, error = %e, "could not delete a reported lost run's record; it is found again later, and its second report is absorbed by the first-report mark");
        }
    });
}
