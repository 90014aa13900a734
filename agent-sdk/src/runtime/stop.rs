//! `stop`: here and on other replicas, with bounded waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;

use std::sync::OnceLock;

use super::Runtime;
use super::build::panic_message;
use super::drive::InFlight;
use super::run::{Run, Status};
use crate::cluster::{Command, RunRecord};
use crate::console::Console;
use crate::context::{Cancel, ContextInner, JobContext};
use crate::error::DispatchError;
use crate::outcome::Outlet;
use crate::registry::JobRegistration;
use crate::request::{Action, Dispatch};
use crate::result::DispatchResult;
use crate::store::Store;
use crate::sync::lock;

impl Runtime {
    /// Stops the running instance(s), here and on other replicas; answers at once, reports
    /// when their `on_stop` is done.
    pub(crate) async fn stop(
        self: &Arc<Self>,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: Outlet,
    ) -> Result<String, DispatchError> {
        let state = self.state(reg);
        let (local, last) = {
            let slot = lock(&state.slot);
            (
                slot.runs
                    .in_order()
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>(),
                slot.last.clone(),
            )
        };
        // A singleton already winding down is not stopped twice (the .NET agent refuses it
        // too, with a text the center fails).
        if reg.kind().is_singleton()
            && let Some(run) = local.first()
            && run.status() == Status::Stopping
        {
            return Err(DispatchError::AlreadyStopping {
                class: reg.class().to_owned(),
                job_id: run.cx.job_id().to_owned(),
            });
        }
        let deadline = answer_deadline(&d);
        let mut remote: Vec<(String, String, u64)> = Vec::new();
        let mut cluster_last = None;
        // Why other replicas' runs could not be looked up, when they could not.
        let mut unseen = None;
        if let Some(store) = self.shared(&outlet) {
            if reg.kind().is_singleton() {
                if local.is_empty() {
                    match within(deadline, store.claim_of(reg.class())).await {
                        Ok(Some((holder, true))) if holder.server_id != self.member.server_id => {
                            remote.push((holder.instance, holder.job_id, 0));
                        }
                        Ok(Some((holder, _))) => cluster_last = Some(holder.job_id),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(class = reg.class(), error = %e, "cannot read the cluster-wide claim; stopping locally only");
                            unseen = Some(e);
                        }
                    }
                }
            } else {
                match within(deadline, store.remote_runs(&self.member, reg.class())).await {
                    Ok(runs) => remote.extend(
                        runs.into_iter()
                            .map(|r| (r.instance, r.job_id, r.record.started)),
                    ),
                    Err(e) => {
                        tracing::warn!(class = reg.class(), error = %e, "cannot read other replicas' runs; stopping locally only");
                        unseen = Some(e);
                    }
                }
            }
        }
        if local.is_empty()
            && remote.is_empty()
            && let Some(e) = unseen
        {
            // Nothing runs here, and where it runs is unknown: not a stop to report done.
            return Err(DispatchError::Undecided(format!(
                "cannot stop job {}: it does not run on this replica, and the shared store did not say where it runs ({e}); retry",
                reg.class()
            )));
        }
        if local.is_empty() && remote.is_empty() {
            if reg.kind().is_singleton() {
                if let Some(job_id) = last
                    .as_ref()
                    .map(|l| l.cx.job_id().to_owned())
                    .or(cluster_last)
                {
                    return Err(DispatchError::AlreadyStopped {
                        class: reg.class().to_owned(),
                        job_id,
                    });
                }
            } else {
                return Err(DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                });
            }
        }
        // A run that ended while the replicas were asked is no longer stopped here, nor is
        // one already stopping (its `on_stop` is not called twice).
        let had_local = !local.is_empty();
        let local: Vec<_> = local
            .into_iter()
            .filter(|run| run.mark_stopping())
            .collect();
        if had_local && local.is_empty() && remote.is_empty() {
            return Err(match last {
                Some(last) if reg.kind().is_singleton() => DispatchError::AlreadyStopped {
                    class: reg.class().to_owned(),
                    job_id: last.cx.job_id().to_owned(),
                },
                _ => DispatchError::NothingRunning {
                    class: reg.class().to_owned(),
                },
            });
        }
        let stop_id = d.job_id.clone();
        let local_newest = local
            .iter()
            .max_by_key(|r| r.started)
            .map(|r| (r.started, r.cx.job_id().to_owned()));
        let remote_newest = remote
            .iter()
            .max_by_key(|r| r.2)
            .map(|r| (r.2, r.1.clone()));
        let run_id = match (local_newest, remote_newest) {
            (Some((at, id)), Some((ms, rid))) => {
                let at_ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                if ms > at_ms { rid } else { id }
            }
            (Some((_, id)), None) | (None, Some((_, id))) => id,
            (None, None) => String::new(),
        };
        let store = self.shared(&outlet).cloned();
        // The stop is accepted: on record in flight wherever a run is (any store, shared or
        // not), so that a process killed before its result is written still has it reported
        // (the result may take two graces, and the other replicas' answers).
        let written = Arc::new(AtomicBool::new(false));
        let record_in = outlet.store.clone();
        let recording = record_in.clone().map(|store| {
            let (done, recorded) = tokio::sync::oneshot::channel();
            let record = RunRecord {
                class: reg.class().to_owned(),
                server_id: self.member.server_id.clone(),
                started: crate::cluster::now_ms(),
                action: "stop".to_owned(),
                run_id: run_id.clone(),
            };
            let (member, stop_id, written) =
                (self.member.clone(), stop_id.clone(), written.clone());
            let spool = self.spool.clone();
            let needed = move || !written.load(Ordering::Acquire);
            let task = self.tracker.spawn(async move {
                let in_flight = InFlight {
                    store: &store,
                    member: &member,
                    spool: spool.as_deref(),
                };
                in_flight.record(&stop_id, &record, needed, done).await;
            });
            (task, recorded)
        });
        let (record_task, recorded) = recording.unzip();
        if let Some(store) = &store {
            for (instance, job_id, _) in &remote {
                let command = Command {
                    action: "stop".to_owned(),
                    class: reg.class().to_owned(),
                    job_id: job_id.clone(),
                    stop_id: stop_id.clone(),
                    console: d.console.clone(),
                    param: d.body.clone(),
                };
                if let Err(e) = within(deadline, store.send_command(instance, &command)).await {
                    tracing::warn!(instance, job_id, error = %e, "could not send the stop to the replica");
                }
            }
        }
        let (count, replicas) = (
            local.len() + remote.len(),
            remote
                .iter()
                .map(|r| r.0.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        );
        let grace = self.options.timeout_grace;
        let started = SystemTime::now();
        let remote_ids: Vec<String> = remote.iter().map(|r| r.1.clone()).collect();
        // The stop has its own console and context, as on .NET: `on_stop` sees the stop
        // dispatch (its id, parameter and console) and the run's cancellation token.
        let console = self.console(reg, &d, &outlet, &self.span_of(reg, &d));
        let contexts: Vec<JobContext> = local
            .iter()
            .map(|run| stop_context(reg, run, &d, console.clone()))
            .collect();
        let rt = self.clone();
        self.tracker.spawn(async move {
            // Every instance at once (here and on the replicas): the whole stop takes at most
            // two graces (on_stop, then the wait for the run to end) plus the replicas' answer.
            let local_stops = local.iter().zip(contexts).map(|(run, cx)| {
                let (rt, stop_id) = (&rt, &stop_id);
                async move {
                    run.cx
                        .console()
                        .lifecycle(|| format!("stop requested (stop job id {stop_id})"));
                    cx.console().lifecycle(|| {
                        format!("stopping job {} (job id {})", reg.class(), run.cx.job_id())
                    });
                    rt.stop_run(reg, run, cx, grace).await
                }
            });
            let remote_stops = async {
                match (&store, remote_ids.is_empty()) {
                    (Some(store), false) => {
                        let within = grace * 2 + Duration::from_secs(2);
                        wait_for_acks(store, &stop_id, &remote_ids, within).await
                    }
                    _ => Vec::new(),
                }
            };
            let (local_failures, remote_failures) =
                tokio::join!(futures_util::future::join_all(local_stops), remote_stops);
            let mut failures: Vec<String> = local_failures.into_iter().flatten().collect();
            failures.extend(remote_failures);
            let error = (!failures.is_empty()).then(|| failures.join("; "));
            match &error {
                None => console.lifecycle(|| "stop done".to_owned()),
                Some(e) => console.error(format!("stop ended with errors: {e}")),
            }
            console.close().await;
            let result = DispatchResult::new(&stop_id, Action::Stop, &run_id, error, started);
            if outlet.results(rt.options.result_retry).write(result).await {
                written.store(true, Ordering::Release);
                if let (Some(record_in), Some(task)) = (&record_in, record_task) {
                    let _ = task.await;
                    if let Err(e) = record_in.forget_run(&rt.member, &stop_id).await {
                        tracing::debug!(stop_id, error = %e, "could not remove the stop's in-flight record");
                    }
                }
            }
        });
        Self::until_recorded(recorded).await;
        let elsewhere = if replicas > 0 {
            format!(" ({} on {replicas} other replica(s))", remote.len())
        } else {
            String::new()
        };
        Ok(if reg.kind().is_singleton() {
            if count == 0 {
                format!(
                    "JobClass:{} stop success! (it was not running)",
                    reg.class()
                )
            } else {
                format!("JobClass:{} stop success!{elsewhere}", reg.class())
            }
        } else {
            format!(
                "JobClass:{} stop success! {count} running instance(s) stopped{elsewhere}",
                reg.class()
            )
        })
    }

    /// Executes a stop sent by another replica, then acknowledges it. `on_stop` gets the
    /// stop dispatch's context (its id, parameter and console), as for a local stop.
    pub(crate) async fn remote_stop(&self, store: &Arc<Store>, command: Command) {
        let found = self.registry.find(&command.class).and_then(|reg| {
            lock(&self.state(reg).slot)
                .runs
                .values()
                .find(|r| r.cx.job_id() == command.job_id)
                .cloned()
                .map(|run| (reg, run))
        });
        let mut error = String::new();
        if let Some((reg, run)) = found.filter(|(_, run)| run.mark_stopping()) {
            run.cx.console().lifecycle(|| {
                format!(
                    "stop requested through another replica (stop job id {})",
                    command.stop_id
                )
            });
            let cx = match &command.console {
                Some(target) => {
                    let outlet = Outlet {
                        store: Some(store.clone()),
                        ..Outlet::default()
                    };
                    let d = Dispatch::for_remote_stop(&command.stop_id, &command.param, target);
                    stop_context(
                        reg,
                        &run,
                        &d,
                        self.console(reg, &d, &outlet, &self.span_of(reg, &d)),
                    )
                }
                None => run.cx.clone(),
            };
            let console = cx.console().clone();
            error = self
                .stop_run(reg, &run, cx, self.options.timeout_grace)
                .await
                .join("; ");
            if command.console.is_some() {
                console.close().await;
            }
        }
        if let Err(e) = store.ack(&command.stop_id, &command.job_id, &error).await {
            tracing::warn!(stop_id = %command.stop_id, error = %e, "could not acknowledge a remote stop");
        }
    }
}

impl Runtime {
    /// Calls a run's `on_stop` with `cx`, then waits for the run to end; a run that ignores
    /// its stop is abandoned (reported stuck, its class freed). The failures, if any.
    pub(super) async fn stop_run(
        &self,
        reg: &'static JobRegistration,
        run: &Arc<Run>,
        cx: JobContext,
        grace: Duration,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(e) = call_on_stop(run, cx, grace).await {
            failures.push(e);
        }
        if !self.ends_within(reg, run, grace).await {
            let why = ignored_stop(grace);
            failures.push(format!("job {}: {why}", run.cx.job_id()));
            self.abandon(reg, run, why).await;
        }
        failures
    }
}

/// Why a run that ignored its stop for `grace` is given up.
pub(super) fn ignored_stop(grace: Duration) -> String {
    format!(
        "the job ignored cancellation for {} ms after it was asked to stop; it is reported as stuck and no longer counted as running",
        grace.as_millis()
    )
}

/// The context `on_stop` gets for a stop dispatch: the stop's own ids, parameter, headers and
/// console, with the stopped run's cancellation token (and fencing token).
fn stop_context(
    reg: &'static JobRegistration,
    run: &Run,
    d: &Dispatch,
    console: Console,
) -> JobContext {
    let fence = OnceLock::new();
    if let Some(token) = run.cx.fencing_token() {
        let _ = fence.set(token);
    }
    JobContext::new(ContextInner {
        class: reg.class(),
        job_id: d.job_id.clone(),
        server_id: d.server_id.clone(),
        job_url: d.job_url.clone(),
        param: d.body.clone(),
        item: d.item.clone(),
        headers: d.headers.clone(),
        token: Cancel::of(run.cx.token().clone()),
        console,
        started_at: SystemTime::now(),
        fence,
        states: run.cx.states().clone(),
        store: run.cx.store().cloned(),
    })
}

/// How long the answer to a dispatch may wait on the store: three quarters of the center's
/// HTTP timeout for it (the job item's `Timeout`, 5 s when below 1, as the center uses).
pub(crate) fn answer_deadline(d: &Dispatch) -> tokio::time::Instant {
    deadline_for(d.item.get().timeout)
}

/// [`answer_deadline`] for a center HTTP timeout of `timeout_ms` (`None` for a dispatch that
/// carries no job item, such as `detail`: the center's default then applies).
pub(super) fn deadline_for(timeout_ms: Option<i64>) -> tokio::time::Instant {
    const CENTER_DEFAULT_MS: u64 = 5_000;
    let ms = timeout_ms
        .filter(|ms| *ms >= 1)
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(CENTER_DEFAULT_MS)
        .min(600_000);
    tokio::time::Instant::now() + Duration::from_millis(ms * 3 / 4)
}

/// A store operation bounded by `deadline`.
pub(super) async fn within<T, E: Into<String>>(
    deadline: tokio::time::Instant,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(deadline, op).await {
        Ok(res) => res.map_err(Into::into),
        Err(_) => Err("the store did not answer within the center's HTTP timeout".to_owned()),
    }
}

/// Calls a run's `on_stop` with `cx` within `grace`; the error text when it failed.
async fn call_on_stop(run: &Run, cx: JobContext, grace: Duration) -> Option<String> {
    let stop = AssertUnwindSafe(run.instance.clone().stop(cx)).catch_unwind();
    let id = run.cx.job_id();
    match tokio::time::timeout(grace, stop).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!("job {id}: on_stop failed: {e}")),
        Ok(Err(p)) => {
            run.cx.cancel();
            Some(format!(
                "job {id}: on_stop panicked: {}",
                panic_message(&*p)
            ))
        }
        Err(_) => {
            run.cx.cancel();
            Some(format!(
                "job {id}: on_stop did not return within {} ms; the run was cancelled",
                grace.as_millis()
            ))
        }
    }
}

/// Waits until the replicas acknowledged a stop of `job_ids`; the errors they reported.
async fn wait_for_acks(
    store: &Store,
    stop_id: &str,
    job_ids: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match store.acks(stop_id).await {
            Ok(acks) => {
                let done = job_ids.iter().all(|id| acks.iter().any(|(a, _)| a == id));
                if done || tokio::time::Instant::now() >= deadline {
                    let mut errors: Vec<String> = acks
                        .into_iter()
                        .map(|(_, e)| e)
                        .filter(|e| !e.is_empty())
                        .collect();
                    if !done {
                        errors.push(format!(
                            "not every replica confirmed the stop within {} ms",
                            within.as_millis()
                        ));
                    }
                    return errors;
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return vec![format!("cannot read the replicas' confirmations: {e}")];
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
