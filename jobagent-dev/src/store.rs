//! The center's store as the user names it: an Npgsql `Key=Value;...` string (what Hangfire's
//! `HangfireDb` holds) or a `postgres://` URL.
//!
//! Parsed, connected and checked by the agent's own code (`agent_sdk::__dev`): the same
//! string reaches the same server with the same TLS checks in the CLI and in the agent. The
//! agent is sent an Npgsql string, as the center sends one: the user's own, or one rendered
//! from the URL. Neither errors nor `Debug` output ever hold the password or the whole string.

use std::fmt;

/// A database error with its causes, as the agent reports one.
pub(crate) use agent_sdk::__dev::describe;
use agent_sdk::__dev::{DevClient, DevStore};

/// A parsed store.
pub(crate) struct StoreSpec {
    store: DevStore,
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSpec")
            .field("label", &self.store.label())
            .finish_non_exhaustive()
    }
}

impl StoreSpec {
    /// Reads an Npgsql string or a `postgres://` URL, as the agent reads `JOBAGENT_STORE`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let store = DevStore::open(text).map_err(|e| format!("the store: {e}"))?;
        if store.config().get_user().is_none_or(str::is_empty) {
            return Err("the store names no user (Username=... / postgres://user@...)".to_owned());
        }
        Ok(Self { store })
    }

    /// The Npgsql connection string sent as `HangfireDb` (a secret).
    pub(crate) fn hangfire_db(&self) -> &str {
        self.store.hangfire_db()
    }

    /// `host:port/database`, for messages; never a user's secret.
    pub(crate) fn label(&self) -> &str {
        self.store.label()
    }

    /// A connection, within the store's bounds; the error names the store by its label only.
    pub(crate) async fn connect(&self) -> Result<DevClient, String> {
        self.store.client().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_agent_reads_and_sends_npgsql() {
        let s = StoreSpec::parse(
            "Server=db.local; Port=6543; Database=\"hang;fire\"; User Id=bob; Password='p''w;d'; SSL Mode=Disable",
        )
        .expect("npgsql");
        assert_eq!(s.label(), "db.local:6543/hang;fire");
        assert!(s.hangfire_db().starts_with("Server=db.local"));
        let s = StoreSpec::parse("postgres://bob:pw@db.local/app").expect("url");
        assert!(
            s.hangfire_db()
                .starts_with("Host=db.local;Port=5432;Database=app;Username=bob;")
        );
        // libpq's `key=value` form is not a connection string the agent takes.
        assert!(StoreSpec::parse("host=/tmp user=postgres dbname=t").is_err());
    }

    #[test]
    fn refuses_without_leaking() {
        for bad in [
            "Host=h;Username=u;Password=hunter2;Port=x",
            "postgres://u:hunter2@h:notaport/db",
            "just-a-word-hunter2",
            "Host=h;Password=hunter2",
        ] {
            let e = StoreSpec::parse(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let s = StoreSpec::parse("postgres://u:hunter2@h/db").expect("url");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
