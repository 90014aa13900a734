//! Building a run: its job instance (a panicking constructor is a failed run), context,
//! console and span, entered into its class.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use super::Runtime;
use super::classes::{ClassSlot, LastRun};
use super::run::{Run, Status};
use crate::console::{Console, LogMirror};
use crate::context::{Cancel, ContextInner, JobContext};
use crate::error::JobError;
use crate::job::DynJob;
use crate::outcome::Outlet;
use crate::registry::JobRegistration;
use crate::request::Dispatch;
use crate::sync::lock;

impl Runtime {
    /// Builds a run from the dispatch and enters it into its class.
    pub(super) fn admit(
        &self,
        reg: &'static JobRegistration,
        slot: &mut ClassSlot,
        d: Dispatch,
        outlet: &Outlet,
    ) -> Arc<Run> {
        let started = SystemTime::now();
        let run = self.new_run(reg, d, outlet, started);
        let previous = slot.last.replace(LastRun {
            cx: run.cx.clone(),
            started,
            ended: None,
        });
        // The previous run's context may end here: not worth a second lock to drop it later.
        drop(previous);
        slot.runs.insert(run.clone());
        run
    }

    pub(super) fn new_run(
        &self,
        reg: &'static JobRegistration,
        d: Dispatch,
        outlet: &Outlet,
        started: SystemTime,
    ) -> Arc<Run> {
        let state = self.state(reg);
        let instance = if reg.kind().is_singleton() {
            let mut singleton = lock(&state.singleton);
            match &*singleton {
                Some(instance) => instance.clone(),
                None => match construct(reg, &self.options.states) {
                    Ok(instance) => singleton.insert(instance).clone(),
                    // Not kept: the next run tries the constructor again.
                    Err(failed) => failed,
                },
            }
        } else {
            construct(reg, &self.options.states).unwrap_or_else(|failed| failed)
        };
        let span = self.span_of(reg, &d);
        let console = self.console(reg, &d, outlet, &span);
        let cx = JobContext::new(ContextInner {
            class: reg.class(),
            job_id: d.job_id,
            server_id: d.server_id,
            job_url: d.job_url,
            param: d.body,
            item: d.item,
            headers: d.headers,
            // Not a child of the root token: a child takes the root's lock when made and when
            // dropped, which every run on every worker thread would contend for. Shutdown sets
            // the flag read here, then cancels each run in its class slot.
            token: Cancel::new(self.root_cancelled.load(Ordering::Acquire)),
            console,
            started_at: started,
            fence: OnceLock::new(),
            states: self.options.states.clone(),
            store: outlet.store.clone(),
        });
        Arc::new(Run {
            seq: self.counters.seq.fetch_add(1, Ordering::Relaxed),
            cx,
            instance,
            status: Mutex::new(Status::Running),
            started,
            results: outlet.results(self.options.result_retry),
            reported: AtomicBool::new(false),
            result_written: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            // In-flight records: what a restarted process or a survivor reports lost.
            store: outlet.store.clone(),
            claimed: AtomicBool::new(false),
            record: Mutex::new(None),
            stalled: AtomicBool::new(false),
            span,
            _param_charge: d.param_charge,
        })
    }

    /// The `job_run` span of dispatch `d` (see [`crate::trace`]).
    pub(super) fn span_of(&self, reg: &'static JobRegistration, d: &Dispatch) -> tracing::Span {
        crate::trace::run_span(
            reg.class(),
            &d.job_id,
            d.server_id.as_deref(),
            &self.member.instance,
            &d.headers,
        )
    }

    /// The console of a run whose span is `span` (lines mirrored to the log are emitted in
    /// it, wherever the job writes them from).
    pub(super) fn console(
        &self,
        reg: &'static JobRegistration,
        d: &Dispatch,
        outlet: &Outlet,
        span: &tracing::Span,
    ) -> Console {
        let sink = outlet.console(
            &self.tracker,
            &d.job_id,
            d.console.as_ref(),
            self.options.console_budget,
            &self.options.console_prefix,
        );
        let mirror = self.options.console_log.then(|| LogMirror {
            class: reg.class(),
            job_id: d.job_id.clone(),
            span: span.clone(),
        });
        Console::mirrored(
            self.console_prefix.clone(),
            d.console.as_ref().map(|c| c.progress_bar_id).unwrap_or(0),
            sink,
            mirror,
        )
    }
}

/// Builds an instance of `reg`'s job. A constructor (or `Default`) that panics does not
/// unwind through the dispatch (which holds the class's counts and, for a singleton, its
/// lock): the run gets, as `Err`, an instance whose every run fails saying so.
fn construct(
    reg: &JobRegistration,
    states: &crate::state::States,
) -> Result<Arc<dyn DynJob>, Arc<dyn DynJob>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| reg.instantiate(states))) {
        Ok(instance) => Ok(instance),
        Err(payload) => {
            let why = format!(
                "the constructor of job {} panicked: {}",
                reg.class(),
                panic_message(&*payload)
            );
            tracing::error!(class = reg.class(), error = %why, "a job could not be built; this run fails");
            Err(Arc::new(Unconstructed(why)))
        }
    }
}

/// A job whose constructor panicked: its run fails with why.
struct Unconstructed(String);

impl crate::job::JobAgent for Unconstructed {
    async fn on_start(&self, _: JobContext) -> Result<(), JobError> {
        Err(JobError::msg(&self.0))
    }
}

pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}
