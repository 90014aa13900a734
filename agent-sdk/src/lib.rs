//! Run Rust jobs for a Hangfire.HttpJob scheduling center.
//!
//! Annotate a job type with [`#[job_agent]`](job_agent), implement [`JobAgent`], and mount
//! [`Agent::router`] beside your own routes. The center drives the jobs over HTTP (run, stop,
//! detail, heartbeat); each run gets its own tokio task, a cancellation token and a console.
//!
//! ```
//! use jobagent::{job_agent, Agent, AgentOptions, JobAgent, JobContext, JobError};
//!
//! #[job_agent(transient)]
//! #[derive(Default)]
//! struct SendSmsJob;
//!
//! impl JobAgent for SendSmsJob {
//!     async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
//!         let to: String = cx.param("To")?.ok_or_else(|| JobError::msg("`To` is required"))?;
//!         cx.console().info(format!("sending to {to}"));
//!         Ok(())
//!     }
//! }
//!
//! let agent = Agent::new(AgentOptions::new()).expect("valid options");
//! let app: axum::Router = axum::Router::new().merge(agent.router());
//! # let _ = app;
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod agent;
mod auth_limit;
mod budget;
#[cfg(feature = "center")]
pub mod center;
// With no store feature, `Backend` has no variant and the store layer's code after a match
// on it cannot run (nor can much of what only a backend calls).
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "relay"
    )),
    allow(dead_code, unreachable_code, unused_variables)
)]
mod cluster;
mod console;
mod context;
mod coordinator;
#[cfg(any(doc, doctest))]
pub mod docs;
mod endpoint;
mod error;
mod future;
mod item;
mod job;
mod metrics;
mod options;
mod outcome;
mod probes;
mod procstat;
mod registry;
mod request;
mod result;
mod router;
mod runtime;
mod schema;
mod secret;
#[cfg(feature = "serve")]
mod serve;
mod spool;
mod state;
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "relay"
    )),
    allow(dead_code, unreachable_code, unused_variables)
)]
mod store;
mod switch;
mod sync;
pub mod testing;
mod timefmt;
mod trace;

pub use agent::Agent;
pub use console::{Console, ConsoleColor, ProgressBar};
pub use context::JobContext;
pub use error::{ConfigError, JobError, JobErrorKind};
pub use item::JobItem;
pub use job::{JobAgent, JobKind};
pub use options::{
    AgentOptions, ConsoleBudget, DEFAULT_CONSOLE_PREFIX, DEFAULT_PATH, RequestLimits,
};
pub use registry::{AutoRegister, BusyPolicy, JobRegistration, Registry};
pub use secret::Secret;
#[cfg(feature = "serve")]
pub use serve::{Serve, ServeLimits, serve};
pub use store::lock::{LockError, StoreLock};
pub use store::{StoreType, UnknownStoreType};

/// Marks a struct or enum as a job the center can run; it must also implement [`JobAgent`].
///
/// Arguments, all optional:
///
/// | argument | meaning |
/// |---|---|
/// | `singleton` (default), `transient`, `hang` | the job's [`JobKind`] |
/// | `class = "..."` | the class name the center sends (default: the type's path) |
/// | `constructor = "path::to::fn"` | builds the job instead of `Default`; its parameters are state values given with [`AgentOptions::state`] |
/// | `on_busy = "reject" \| "discard" \| "replace" \| "queue"` | what a run of a busy singleton does ([`BusyPolicy`]) |
/// | `stall_after = "30s"` | the stall watchdog: how long a run may go without a console line or a progress change (`ms`, `s`, `m`, `h`) before the agent writes a warning and counts it |
/// | `on_stall = "warn" \| "cancel"` | with `stall_after`: only warn (the default), or also cancel the run (its result says it stalled) |
/// | `register = false`, `register_id`, `register_name`, `register_cron` | auto-registration at the center |
/// | `crate = "path"` | where `jobagent` is reachable when the dependency is renamed or re-exported (`crate = "platform::jobagent"`) |
pub use jobagent_macros::job_agent;

/// Not public API: what `jobagent-dev` shares with the agent (feature `dev`).
#[cfg(feature = "dev")]
#[doc(hidden)]
#[path = "dev.rs"]
pub mod __dev;

/// Not public API: the server side of `jobagent-relay` (feature `relay-server`).
#[cfg(feature = "relay-server")]
#[doc(hidden)]
#[path = "relay.rs"]
pub mod __relay;

/// Not public API: used by the fuzz targets in `fuzz/` (feature `fuzz`).
#[cfg(feature = "fuzz")]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;

/// Not public API: used by code `#[job_agent]` generates.
#[doc(hidden)]
pub mod __private {
    /// Not public API, used by generated code.
    pub use crate::job::DynJob;
    /// Not public API, used by generated code.
    pub use crate::job::JobKind;
    /// Not public API, used by generated code.
    pub use crate::registry::{AutoRegister, BusyPolicy, JobRegistration};
    /// Not public API, used by generated code.
    pub use crate::state::{Constructor, MissingState, Need, States, needs_of};
    /// Not public API, used by generated code.
    pub use inventory;

    /// Not public API, used by generated code: boxes a job for the registry.
    pub fn into_dyn<T: crate::JobAgent>(job: T) -> std::sync::Arc<dyn DynJob> {
        std::sync::Arc::new(job)
    }
}
