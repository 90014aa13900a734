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
    /// The configuration is wrong (credentials, a privilege, a missing table, a bad
    /// connection string): tell the operator.
    Config,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed out",
            Self::Refused => "refused",
            Self::Conflict => "conflict",
            Self::Config => "configuration",
        })
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
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
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

    /// Whether the message holds `text` (the tests' checks of what an error says).
    #[cfg(test)]
    pub(crate) fn contains(&self, text: &str) -> bool {
        self.message.contains(text)
    }

    /// The same error with `context` put before its message (its kind kept).
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// What a PostgreSQL SQLSTATE says the caller may do. The classes are PostgreSQL's
/// (Appendix A, "PostgreSQL Error Codes"; `tokio-postgres/src/error/sqlstate.rs`).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn sqlstate_kind(code: &str) -> StoreErrorKind {
    use StoreErrorKind as K;
    match code {
        // Insufficient privilege, a missing database, schema, table, column or function:
        // the account or the configuration is wrong.
        "42501" | "3D000" | "3F000" | "42P01" | "42703" | "42883" => K::Config,
        // A unique key another writer took first.
        "23505" => K::Conflict,
        // The statement was cancelled (statement_timeout, or the agent's own cancel).
        "57014" => K::TimedOut,
        // A read-only transaction (a standby, or a primary demoted in a failover); lock not
        // available, object in use.
        "25006" | "55P03" | "55006" => K::Unavailable,
        _ => match code.get(..2).unwrap_or("") {
            // Invalid authorization: a login refused (password, pg_hba.conf, no such role).
            "28" => K::Config,
            // Connection exception, operator intervention (shutdown, cannot connect now),
            // insufficient resources (too many connections, disk full), a transaction
            // rolled back (serialization failure, deadlock), system and internal errors.
            "08" | "57" | "53" | "40" | "58" | "XX" => K::Unavailable,
            // Data exceptions, integrity constraints, limits, syntax: this input as it is.
            "22" | "23" | "54" | "42" => K::Refused,
            _ => K::Unavailable,
        },
    }
}

/// A `tokio-postgres` error: a database error by its SQLSTATE, anything else (a closed
/// connection, I/O, a connect timeout) an outage. Its text with its causes (never the
/// connection string: `tokio-postgres` does not put it in its errors).
#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = match e.code() {
            Some(code) => sqlstate_kind(code.code()),
            None => StoreErrorKind::Unavailable,
        };
        Self::new(kind, crate::error::chain(&e))
    }
}

/// A pool's error: a connection that could not be made is classified as its cause is.
#[cfg(feature = "postgres")]
impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{HookError, PoolError};
        let kind = match &e {
            PoolError::Backend(pg) | PoolError::PostCreateHook(HookError::Backend(pg)) => pg
                .code()
                .map_or(StoreErrorKind::Unavailable, |c| sqlstate_kind(c.code())),
            PoolError::Timeout(_) => StoreErrorKind::TimedOut,
            _ => StoreErrorKind::Unavailable,
        };
        Self::new(kind, crate::error::chain(&e))
    }
}

/// What a MySQL or MariaDB server error code says the caller may do (the server's error
/// reference: `mysqld_error.h`; MariaDB keeps the same numbers).
#[cfg(feature = "mysql")]
pub(crate) fn mysql_kind(code: u16, state: &str) -> StoreErrorKind {
    use StoreErrorKind as K;
    match code {
        // Access denied (login 1045, database 1044), a table, column or command denied
        // (1142, 1143, 1227), an unknown database (1049), table (1146) or column (1054).
        1044 | 1045 | 1049 | 1142 | 1143 | 1227 | 1146 | 1054 => K::Config,
        // A duplicate key.
        1062 => K::Conflict,
        // Too many connections (1040, 1203), the server shutting down (1053), a lock wait
        // timeout (1205: rolled back) or deadlock (1213), read-only (1290, 1792, 1836).
        1040 | 1203 | 1053 | 1205 | 1213 | 1290 | 1792 | 1836 => K::Unavailable,
        // max_execution_time exceeded (MySQL 3024, MariaDB 1969).
        3024 | 1969 => K::TimedOut,
        // Larger than max_allowed_packet (1153, 1301), data too long (1406), an incorrect
        // string or value (1366, 1292).
        1153 | 1301 | 1406 | 1366 | 1292 => K::Refused,
        _ => match state.get(..2).unwrap_or("") {
            "28" => K::Config,
            "22" | "23" | "42" => K::Refused,
            _ => K::Unavailable,
        },
    }
}

/// A `mysql_async` error: a server's by its code, a bad URL a configuration error, anything
/// else (I/O, a closed connection, the pool) an outage; with its text and causes.
#[cfg(feature = "mysql")]
pub(crate) fn of_mysql(e: &mysql_async::Error) -> StoreError {
    let kind = match e {
        mysql_async::Error::Server(s) => mysql_kind(s.code, &s.state),
        mysql_async::Error::Url(_) => StoreErrorKind::Config,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, crate::error::chain(e))
}

/// What a Redis server error code says the caller may do (the codes Redis sends: `WRONGPASS`,
/// `NOPERM`, `LOADING`, ...), when it says something.
#[cfg(feature = "redis")]
fn redis_code_kind(code: &str) -> Option<StoreErrorKind> {
    use StoreErrorKind as K;
    match code {
        "WRONGPASS" | "NOAUTH" | "NOPERM" => Some(K::Config),
        "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "MISCONF"
        | "OOM" => Some(K::Unavailable),
        // A key of another type: this write will never be taken there. (Not `ERR`, Redis's
        // generic code, which says "max number of clients reached" too: retried, as before.)
        "WRONGTYPE" => Some(K::Refused),
        _ => None,
    }
}

/// What a Redis error says the caller may do: the server's codes (of each command a
/// pipeline or `MULTI`/`EXEC` failed, an outage first), else the `redis` crate's kind.
#[cfg(feature = "redis")]
pub(crate) fn redis_kind(e: &redis::RedisError) -> StoreErrorKind {
    use StoreErrorKind as K;
    use redis::ErrorKind as R;
    let coded: Vec<StoreErrorKind> = e
        .clone()
        .into_server_errors()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|(_, s)| redis_code_kind(s.code()))
                .collect()
        })
        .unwrap_or_default();
    for kind in [K::Unavailable, K::Config, K::Refused] {
        if coded.contains(&kind) {
            return kind;
        }
    }
    match e.kind() {
        R::AuthenticationFailed | R::InvalidClientConfig => K::Config,
        R::Io if e.is_timeout() => K::TimedOut,
        R::UnexpectedReturnType | R::Client => K::Refused,
        _ => K::Unavailable,
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
        use StoreErrorKind as K;
        let t = StoreError::timed_out("the relay (console)", Duration::from_millis(1500));
        assert!(t.to_string().contains("1500 ms"), "{t}");
        for (e, kind) in [
            (StoreError::unavailable("down"), K::Unavailable),
            (t, K::TimedOut),
            (StoreError::refused("too large"), K::Refused),
            (StoreError::conflict("taken"), K::Conflict),
            (StoreError::config("bad token"), K::Config),
        ] {
            assert_eq!(e.kind(), kind, "{e}");
        }
        let io = std::io::Error::other("reset");
        let e: String = StoreError::unavailable("the store").with_source(io).into();
        assert_eq!(e, "the store: reset");
    }

    /// A SQLSTATE decides the kind: a login or privilege refused, a missing table is the
    /// operator's; a connection lost, a server shutting down, a deadlock are retried; bad
    /// data is refused; a unique key taken is a conflict.
    #[test]
    fn sqlstates_say_what_to_do() {
        use StoreErrorKind as K;
        for (code, kind) in [
            ("28P01", K::Config),      // invalid_password
            ("28000", K::Config),      // invalid_authorization_specification (no such role)
            ("42501", K::Config),      // insufficient_privilege
            ("42P01", K::Config),      // undefined_table
            ("3D000", K::Config),      // invalid_catalog_name
            ("08006", K::Unavailable), // connection_failure
            ("57P01", K::Unavailable), // admin_shutdown
            ("57P03", K::Unavailable), // cannot_connect_now
            ("53300", K::Unavailable), // too_many_connections
            ("40001", K::Unavailable), // serialization_failure
            ("40P01", K::Unavailable), // deadlock_detected
            ("25006", K::Unavailable), // read_only_sql_transaction
            ("57014", K::TimedOut),    // query_canceled
            ("22021", K::Refused),     // character_not_in_repertoire
            ("22001", K::Refused),     // string_data_right_truncation
            ("23502", K::Refused),     // not_null_violation
            ("54000", K::Refused),     // program_limit_exceeded
            ("23505", K::Conflict),    // unique_violation
        ] {
            assert_eq!(sqlstate_kind(code), kind, "{code}");
        }
    }

    /// MySQL and MariaDB server codes decide the kind.
    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_errors_say_what_to_do() {
        use StoreErrorKind as K;
        let server = |code: u16, state: &str| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "m".to_owned(),
                state: state.to_owned(),
            })
        };
        for (code, state, kind) in [
            (1045, "28000", K::Config),      // ER_ACCESS_DENIED_ERROR (login)
            (1142, "42000", K::Config),      // ER_TABLEACCESS_DENIED_ERROR
            (1146, "42S02", K::Config),      // ER_NO_SUCH_TABLE
            (1040, "08004", K::Unavailable), // ER_CON_COUNT_ERROR
            (1213, "40001", K::Unavailable), // ER_LOCK_DEADLOCK
            (1205, "HY000", K::Unavailable), // ER_LOCK_WAIT_TIMEOUT
            (1290, "HY000", K::Unavailable), // ER_OPTION_PREVENTS_STATEMENT (read-only)
            (3024, "HY000", K::TimedOut),    // ER_QUERY_TIMEOUT
            (1062, "23000", K::Conflict),    // ER_DUP_ENTRY
            (1406, "22001", K::Refused),     // ER_DATA_TOO_LONG
            (1153, "08S01", K::Refused),     // ER_NET_PACKET_TOO_LARGE
            (1366, "HY000", K::Refused),     // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
            (9999, "22007", K::Refused),     // an unknown code: its SQLSTATE class
            (9999, "HY000", K::Unavailable),
        ] {
            let e = of_mysql(&server(code, state));
            assert_eq!(e.kind(), kind, "{code} {state}");
            assert!(e.message().contains('m'), "{e}");
        }
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other("reset")));
        assert_eq!(of_mysql(&io).kind(), K::Unavailable);
    }

    /// Redis's error codes and the `redis` crate's kinds decide the kind.
    #[cfg(feature = "redis")]
    #[test]
    fn redis_errors_say_what_to_do() {
        use StoreErrorKind as K;
        use redis::{ErrorKind as R, RedisError, make_extension_error};
        let coded = |code: &str| make_extension_error(code.to_owned(), Some("x".to_owned()));
        for (code, kind) in [
            ("WRONGPASS", K::Config),
            ("NOAUTH", K::Config),
            ("NOPERM", K::Config),
            ("LOADING", K::Unavailable),
            ("READONLY", K::Unavailable),
            ("OOM", K::Unavailable),
            ("WRONGTYPE", K::Refused),
            ("ERR", K::Unavailable),
        ] {
            assert_eq!(redis_kind(&coded(code)), kind, "{code}");
        }
        for (of, kind) in [
            (R::AuthenticationFailed, K::Config),
            (R::InvalidClientConfig, K::Config),
            (R::Io, K::Unavailable),
            (R::UnexpectedReturnType, K::Refused),
        ] {
            assert_eq!(redis_kind(&RedisError::from((of, "x"))), kind, "{of:?}");
        }
        use std::io::{Error, ErrorKind as Io};
        for (io, kind) in [
            (Io::TimedOut, K::TimedOut),
            (Io::ConnectionReset, K::Unavailable),
        ] {
            assert_eq!(
                redis_kind(&RedisError::from(Error::from(io))),
                kind,
                "{io:?}"
            );
        }
    }
}
