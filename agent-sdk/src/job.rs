//! The trait a job implements, and the kinds of job the agent knows.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::context::JobContext;
use crate::error::JobError;
use crate::future::BoxFuture;

/// A job the scheduling center can run, stop and inspect.
///
/// Implement it on a struct annotated with [`#[job_agent]`](crate::job_agent). Only
/// [`on_start`](JobAgent::on_start) is required; write it as an `async fn`.
///
/// ```
/// use jobagent::{job_agent, JobAgent, JobContext, JobError};
///
/// #[job_agent]
/// #[derive(Default)]
/// pub struct CleanupJob;
///
/// impl JobAgent for CleanupJob {
///     async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
///         let hours: u32 = cx.param("Hour")?.unwrap_or(48);
///         cx.console().info(format!("removing messages older than {hours} h"));
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a #[job_agent] type but does not implement `JobAgent`",
    label = "this job has no `impl JobAgent`",
    note = "add `impl jobagent::JobAgent for {Self} {{ async fn on_start(&self, cx: jobagent::JobContext) -> Result<(), jobagent::JobError> {{ Ok(()) }} }}`"
)]
pub trait JobAgent: Send + Sync + 'static {
    /// Runs the job. The future runs on its own tokio task; it should return soon after
    /// [`JobContext::cancelled`] resolves.
    fn on_start(&self, cx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Called when the center asks this run to stop. The default cancels the run's token.
    fn on_stop(&self, cx: &JobContext) -> impl Future<Output = Result<(), JobError>> + Send {
        cx.cancel();
        async { Ok(()) }
    }

    /// Called once when a run ends with an error (including a panic or a timeout), before
    /// the error is reported to the center.
    fn on_exception(&self, cx: &JobContext, err: &JobError) {
        let _ = (cx, err);
    }
}

/// How the agent treats concurrent runs of one job class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobKind {
    /// One instance per agent; a run while it runs is refused with 501.
    Singleton,
    /// A new instance for every run; stop stops them all.
    Transient,
    /// A singleton that stays running after `on_start` returns, until stopped.
    Hang,
}

impl JobKind {
    /// Whether runs of this kind share one instance and refuse a second run.
    pub fn is_singleton(self) -> bool {
        matches!(self, JobKind::Singleton | JobKind::Hang)
    }

    /// The name shown in `detail`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Singleton => "singleton",
            JobKind::Transient => "transient",
            JobKind::Hang => "hang",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object-safe face of [`JobAgent`] the runtime holds.
#[doc(hidden)]
pub trait DynJob: Send + Sync + 'static {
    fn start(self: Arc<Self>, cx: JobContext) -> BoxFuture<Result<(), JobError>>;
    fn stop(self: Arc<Self>, cx: JobContext) -> BoxFuture<Result<(), JobError>>;
    fn exception(&self, cx: &JobContext, err: &JobError);
}

impl<T: JobAgent> DynJob for T {
    fn start(self: Arc<Self>, cx: JobContext) -> BoxFuture<Result<(), JobError>> {
        Box::pin(async move { self.on_start(cx).await })
    }

    fn stop(self: Arc<Self>, cx: JobContext) -> BoxFuture<Result<(), JobError>> {
        Box::pin(async move { self.on_stop(&cx).await })
    }

    fn exception(&self, cx: &JobContext, err: &JobError) {
        self.on_exception(cx, err)
    }
}
