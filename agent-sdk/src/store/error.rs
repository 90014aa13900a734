//! One error type for the store layer: its [`StoreErrorKind`] says what the caller may do
//! (retry, split or give up, accept that someone else wrote first, tell the operator), and
//! the message says why, for the log. The cause, when there is one, is kept as the error's
//! source rather than flattened into a string to parse.

use std::fmt;
use std::time::Duration;

/// A boxed cause.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller may do about a [`StoreError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum StoreErrorKind {
    /// The store (or the way to it) is down or refused the connection: retry later, with
    /// backoff.
    Unavailable,
    /// The store gave no answer in time: the write may or may not have landed. Retry (every
    /// write of the layer is idempotent when retried).
    TimedOut,
    /// The store will never take this input as it is (too large, malformed, outside what the
    /// agent may write): retrying it unchanged is pointless. Split it or give it up, and say
    /// so where the user looks.
    Refused,
    /// Someone else wrote first (a lease, a mark, a fencing token): nothing to retry.
    Conflict,
    /// The configuration is wrong (credentials, a missing table, a bad connection string):
    /// tell the operator.
    // Only the relay client says it yet.
    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    Config,
}

impl StoreErrorKind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed out",
            Self::Refused => "refused",
            Self::Conflict => "conflict",
            Self::Config => "configuration",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of a store operation: its kind, a message for the log (never a secret), and
/// the cause, if any.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    /// An error of `kind` saying `message`.
    pub(crate) fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    #[allow(dead_code)]
    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The store is down or unreachable: retry.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// No answer within `within`: retry.
    pub(crate) fn timed_out(what: impl fmt::Display, within: Duration) -> Self {
        Self::new(
            StoreErrorKind::TimedOut,
            format!("{what}: no answer within {} ms", within.as_millis()),
        )
    }

    /// This input will never be taken: split it or give it up.
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Refused, message)
    }

    /// Someone else wrote first.
    #[allow(dead_code)]
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Conflict, message)
    }

    /// The configuration is wrong: tell the operator.
    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Config, message)
    }

    /// What the caller may do.
    pub(crate) fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

/// The backends not converted yet say what failed as a string: an outage is what such an
/// error has always been taken for (retried), so that is its kind.
impl From<String> for StoreError {
    fn from(message: String) -> Self {
        Self::unavailable(message)
    }
}

/// For the callers still written against string errors: the message with its causes.
impl From<StoreError> for String {
    fn from(e: StoreError) -> Self {
        match &e.source {
            Some(source) => format!("{}: {}", e.message, crate::error::chain(&**source)),
            None => e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_what_to_do() {
        assert_eq!(
            StoreError::unavailable("down").kind(),
            StoreErrorKind::Unavailable
        );
        let t = StoreError::timed_out("the relay (console)", Duration::from_millis(1500));
        assert_eq!(t.kind(), StoreErrorKind::TimedOut);
        assert!(t.to_string().contains("1500 ms"), "{t}");
        assert_eq!(
            StoreError::refused("too large").kind(),
            StoreErrorKind::Refused
        );
        assert_eq!(
            StoreError::conflict("taken").kind(),
            StoreErrorKind::Conflict
        );
        assert_eq!(
            StoreError::config("bad token").kind(),
            StoreErrorKind::Config
        );
        // A string from a backend not converted yet is retried, as it always was.
        assert_eq!(
            StoreError::from("x".to_owned()).kind(),
            StoreErrorKind::Unavailable
        );
        let io = std::io::Error::other("reset");
        let e: String = StoreError::unavailable("the store").with_source(io).into();
        assert_eq!(e, "the store: reset");
    }
}
