//! Errors: what a job returns, what a dispatch is refused with, and what start-up reports.

use std::fmt;

use axum::http::StatusCode;

/// A boxed error, as [`JobError`] keeps its source.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a job run failed.
///
/// `?` converts what jobs meet into it: any `std::error::Error + Send + Sync + 'static`,
/// `anyhow::Error` (and other report types that convert into a boxed error),
/// `Box<dyn Error + Send + Sync>`, `String` and `&str`. The message reported to the center is
/// the error's chain of causes, joined with `: `; the error itself stays reachable through
/// [`JobError::source`] (for `on_exception` or your own logging).
///
/// ```
/// use jobagent::JobError;
///
/// fn read_config() -> Result<u32, JobError> {
///     let text = std::fs::read_to_string("/no/such/config").map_err(|e| {
///         // Add context while keeping the cause: the message becomes "config: <cause>".
///         JobError::with_source("config", e)
///     })?;
///     Ok(text.len() as u32)
/// }
///
/// fn parse(text: &str) -> Result<u32, JobError> {
///     if text.is_empty() {
///         return Err("an empty parameter".into());
///     }
///     Ok(text.trim().parse::<u32>()?)
/// }
///
/// assert!(read_config().unwrap_err().message().starts_with("config: "));
/// assert_eq!(parse("").unwrap_err().message(), "an empty parameter");
/// assert_eq!(parse("x").unwrap_err().message(), "invalid digit found in string");
/// ```
pub struct JobError {
    kind: JobErrorKind,
    message: String,
    source: Option<BoxError>,
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
    /// The run went longer than its `stall_after` without a console line or a progress
    /// change, and its job asked to be cancelled then (`on_stall = "cancel"`).
    Stalled,
}

impl JobError {
    /// A failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(JobErrorKind::Failed, message.to_string())
    }

    /// A failure with context before its cause: the message is `context: cause: ...`, and
    /// [`source`](JobError::source) is the cause.
    pub fn with_source(context: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Self {
            kind: JobErrorKind::Failed,
            message: format!("{context}: {}", chain(&*source)),
            source: Some(source),
        }
    }

    /// The job noticed cancellation and stopped early.
    pub fn cancelled() -> Self {
        Self::new(JobErrorKind::Cancelled, "cancelled".to_owned())
    }

    pub(crate) fn new(kind: JobErrorKind, message: String) -> Self {
        Self {
            kind,
            message,
            source: None,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// The message reported to the center: the error and its causes, joined with `: `.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error this one was made from, when it was made from one (by `?` or
    /// [`with_source`](JobError::with_source)); its own `source()` chain continues from there.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

/// An error and its causes, joined with `: ` (skipping a cause whose text its error already
/// ends with, as report types that print their chain do). A database error's own message is
/// in its source: `tokio_postgres::Error` alone says only "db error".
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
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
            .finish_non_exhaustive()
    }
}

impl<E: Into<BoxError>> From<E> for JobError {
    fn from(err: E) -> Self {
        let source: BoxError = err.into();
        Self {
            kind: JobErrorKind::Failed,
            message: chain(&*source),
            source: Some(source),
        }
    }
}

/// Text that came from a request, made safe for one log line or an `err:` body: control
/// characters (line breaks among them) are written as escapes (`\n`, `\r`, `\t`,
/// `\u{1b}`), so a value cannot start a forged line of its own. Other text is unchanged.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Why the agent refused a request. Each variant maps to one status code and an `err:` body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DispatchError {
    /// The request lacks valid basic-auth credentials.
    #[error(
        "unauthorized: this agent requires basic auth; set BasicUserName and BasicPassword on the job at the center"
    )]
    Unauthorized,
    /// The caller's address failed basic auth too often: refused without a check until its
    /// budget refills.
    #[error("unauthorized: too many failed basic-auth attempts from this address; retry later")]
    AuthLimited,
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
    #[error("unknown job class `{class}`: registered classes are {known}{hint}")]
    UnknownClass {
        /// The class sent.
        class: String,
        /// The classes this agent knows.
        known: String,
        /// Empty, or (from `; `) how to link the crate the class seems to belong to.
        hint: String,
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
    /// The agent is draining (it received SIGTERM): running jobs may finish, new runs go
    /// elsewhere.
    #[error(
        "the agent is draining before it shuts down and takes no new runs; retry the job (another replica, or this service once restarted, takes it)"
    )]
    Draining,
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
    /// A short, fixed label of the refusal, for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            DispatchError::Unauthorized | DispatchError::AuthLimited => "unauthorized",
            DispatchError::MissingHeader(_)
            | DispatchError::BadHeader { .. }
            | DispatchError::UnknownAction(_) => "bad_request",
            DispatchError::UnknownClass { .. } => "unknown_class",
            DispatchError::Busy { .. } => "busy",
            DispatchError::AlreadyStopped { .. }
            | DispatchError::AlreadyStopping { .. }
            | DispatchError::NothingRunning { .. } => "not_running",
            DispatchError::ShuttingDown => "shutting_down",
            DispatchError::Draining => "draining",
            DispatchError::Limit(_) => "limit",
            DispatchError::NoStore => "no_store",
            DispatchError::DuplicateInstance(_) => "duplicate_instance",
            DispatchError::Undecided(_) => "undecided",
            DispatchError::Storage(_) => "storage",
        }
    }

    /// The HTTP status the center expects for this refusal.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            DispatchError::Busy { .. } | DispatchError::AlreadyStopped { .. } => {
                StatusCode::NOT_IMPLEMENTED
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why an agent could not be built or configured.
///
/// Its `Debug` is its message, as for report types: a `main` returning
/// `Result<(), Box<dyn Error>>` prints `Error: invalid JOBAGENT_PATH: ...`, not the variant's
/// fields.
#[derive(thiserror::Error)]
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
    /// A job's constructor takes a state type the agent was not given.
    #[error(
        "job `{job}` takes state of type `{state}` in its constructor, but the agent was not given one: add `.state(value)` with a `{state}` to the AgentOptions{}",
        if state.starts_with('&') { " (a constructor taking a reference needs a `&'static` value: take an `Arc<T>` by value instead)" } else { "" }
    )]
    MissingState {
        /// The job type's path.
        job: &'static str,
        /// The state type's name.
        state: &'static str,
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

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ConfigError {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pool exhausted")]
    struct Pool(#[source] std::io::Error);

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
    }

    fn via_question_mark<E>(err: E) -> Result<(), JobError>
    where
        JobError: From<E>,
    {
        Err(err)?
    }

    #[test]
    fn question_mark_takes_the_error_types_jobs_meet_and_keeps_the_chain() {
        let typed = via_question_mark(Pool(io())).expect_err("an error");
        assert_eq!(typed.message(), "pool exhausted: connect timed out");
        assert_eq!(
            typed
                .source()
                .and_then(|s| s.source())
                .map(|s| s.to_string()),
            Some("connect timed out".to_owned())
        );

        let any = anyhow::Error::new(io()).context("loading orders");
        let any = via_question_mark(any).expect_err("an error");
        assert_eq!(any.message(), "loading orders: connect timed out");
        assert!(any.source().is_some());

        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Pool(io()));
        assert_eq!(
            via_question_mark(boxed).expect_err("an error").message(),
            "pool exhausted: connect timed out"
        );
        assert_eq!(
            via_question_mark(String::from("no rows"))
                .expect_err("an error")
                .message(),
            "no rows"
        );
        assert_eq!(
            via_question_mark("no rows")
                .expect_err("an error")
                .message(),
            "no rows"
        );
        assert_eq!(
            via_question_mark("no rows").expect_err("an error").kind(),
            JobErrorKind::Failed
        );
    }

    #[test]
    fn a_config_error_debugs_as_its_message_as_main_prints_it() {
        let err = ConfigError::invalid("JOBAGENT_PATH", "`x` must start with `/`");
        assert_eq!(
            format!("{err:?}"),
            "invalid JOBAGENT_PATH: `x` must start with `/`"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert_eq!(
            format!("{boxed:?}"),
            "invalid JOBAGENT_PATH: `x` must start with `/`"
        );
    }

    #[test]
    fn context_goes_before_the_cause() {
        let err = JobError::with_source("fetching page 3", Pool(io()));
        assert_eq!(
            err.message(),
            "fetching page 3: pool exhausted: connect timed out"
        );
        assert_eq!(
            err.source().map(|s| s.to_string()),
            Some("pool exhausted".to_owned())
        );
        assert!(JobError::msg("plain").source().is_none());
    }
}
