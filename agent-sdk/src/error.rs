//! Errors: what a job returns, what a dispatch is refused with, and what start-up reports.

use std::fmt;

use axum::http::StatusCode;

/// Why a job run failed. Any `std::error::Error` converts into it, so `?` works in jobs.
pub struct JobError {
    kind: JobErrorKind,
    message: String,
}

/// The class of a [`JobError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// The job reported a failure.
    Failed,
    /// The job gave up because its token was cancelled.
    Cancelled,
    /// The run exceeded its `AgentTimeout`.
    Timeout,
    /// The job panicked.
    Panic,
    /// The agent shut down before the job finished.
    Shutdown,
}

impl JobError {
    /// A failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(JobErrorKind::Failed, message.to_string())
    }

    /// The job noticed cancellation and stopped early.
    pub fn cancelled() -> Self {
        Self::new(JobErrorKind::Cancelled, "cancelled".to_owned())
    }

    pub(crate) fn new(kind: JobErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// The class of this error.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// The message reported to the center.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::msg(message)
    }
}

/// Why the agent refused a request. Each variant maps to one status code and an `err:` body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The request lacks valid basic-auth credentials.
    #[error(
        "unauthorized: this agent requires basic auth; set BasicUserName and BasicPassword on the job at the center"
    )]
    Unauthorized,
    /// A required header is absent.
    #[error("missing header `{0}`: the request must come from the scheduling center")]
    MissingHeader(&'static str),
    /// A header could not be decoded.
    #[error("bad header `{header}`: {reason}")]
    BadHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The action header names no known action.
    #[error("unknown action `{0}`: expected run, stop, detail or heartbeat")]
    UnknownAction(String),
    /// No job is registered under the class.
    #[error("unknown job class `{class}`: registered classes are {known}")]
    UnknownClass {
        /// The class sent.
        class: String,
        /// The classes this agent knows.
        known: String,
    },
    /// A singleton run arrived while the job runs or stops.
    #[error("job {class} is {status}, a new run is refused,JobId:{job_id}")]
    Busy {
        /// The class.
        class: String,
        /// Running or Stopping, and where.
        status: String,
        /// The id of the run in progress.
        job_id: String,
    },
    /// A stop arrived for a singleton that is already stopped.
    #[error("job {class} is already stopped,JobId:{job_id}")]
    AlreadyStopped {
        /// The class.
        class: String,
        /// The id of the last run.
        job_id: String,
    },
    /// A stop or detail arrived for a transient class with no running instance.
    #[error("job {class} has no running instance")]
    NothingRunning {
        /// The class.
        class: String,
    },
    /// The agent is shutting down and takes no new runs.
    #[error("the agent is shutting down and takes no new runs")]
    ShuttingDown,
    /// Too many instances run already.
    #[error("{0}")]
    Limit(String),
    /// Neither the agent nor the center names a store, and log-only runs are off: the run's
    /// result would never reach the center.
    #[error(
        "no store: the center sent no x-job-storage (Hangfire.PostgreSql 1.20.3 and later never sends it) and this agent has none of its own, so the center would never see this run end; set JOBAGENT_STORE to the center's database (or JOBAGENT_LOG_ONLY=true to accept runs that only log, for development)"
    )]
    NoStore,
    /// A singleton is already being stopped.
    #[error("job {class} is already stopping, this stop is refused,JobId:{job_id}")]
    AlreadyStopping {
        /// The class.
        class: String,
        /// The id of the run being stopped.
        job_id: String,
    },
    /// Another live process uses this process's instance name.
    #[error("{0}")]
    DuplicateInstance(String),
    /// The store needed to answer did not answer within the center's HTTP timeout.
    #[error("{0}")]
    Undecided(String),
    /// The store the center sent cannot be used.
    #[error("storage: {0}")]
    Storage(String),
}

impl DispatchError {
    /// The HTTP status the center expects for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            DispatchError::Busy { .. } | DispatchError::AlreadyStopped { .. } => {
                StatusCode::NOT_IMPLEMENTED
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why an agent could not be built or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Two job types claim the same class name.
    #[error(
        "duplicate job class `{class}`: registered by both `{first}` and `{second}`; give one of them another `class = \"...\"`"
    )]
    DuplicateClass {
        /// The class name.
        class: String,
        /// The first type's path.
        first: &'static str,
        /// The second type's path.
        second: &'static str,
    },
    /// An environment variable or option holds an unusable value.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The variable or option name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name,
            reason: reason.into(),
        }
    }
}
