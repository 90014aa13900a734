//! The center's store as the user names it, on any storage the agent writes to:
//!
//! - PostgreSQL (Hangfire.PostgreSql): an Npgsql `Key=Value;...` string or a `postgres://` URL;
//! - MySQL/MariaDB (Hangfire.MySqlStorage): a MySqlConnector string or a `mysql://` URL;
//! - Redis (Hangfire.Redis.StackExchange): a StackExchange.Redis configuration string or a
//!   `redis://` / `rediss://` URL.
//!
//! Parsed, connected and read by the agent's own code (`jobagent::__dev::DevReader`, over
//! the agent's store seam): the same string reaches the same server with the same TLS checks
//! in the CLI and in the agent, and reads see what the dashboard shows. The agent is sent the
//! string as a center holds it in `HangfireDb`: the user's own, or one rendered from the URL
//! in the form of the center's driver. Neither errors nor `Debug` output ever hold the
//! password or the whole string.

use std::fmt;

use jobagent::__dev::DevReader;
use jobagent::StoreType;
use serde_json::{Value, json};

/// A parsed store, ready to read (nothing connected yet).
pub(crate) struct StoreSpec {
    store: DevReader,
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSpec")
            .field("kind", &self.store.kind())
            .field("label", &self.store.label())
            .finish_non_exhaustive()
    }
}

impl StoreSpec {
    /// Reads a store of type `kind` as the agent reads `JOBAGENT_STORE`; `prefix` is the
    /// schema, table prefix or key prefix; `db` the Redis database (`None`: the string's own,
    /// else 0).
    pub(crate) fn parse(
        text: &str,
        kind: StoreType,
        prefix: &str,
        db: Option<i64>,
    ) -> Result<Self, String> {
        let store = DevReader::open(Some(kind), text, Some(prefix), db)
            .map_err(|e| format!("the store: {e}"))?;
        Ok(Self { store })
    }

    /// The agent's reader of the store.
    pub(crate) fn reader(&self) -> &DevReader {
        &self.store
    }

    /// Host and database, for messages; never a user's secret.
    pub(crate) fn label(&self) -> &str {
        self.store.label()
    }

    /// `postgresql, schema hangfire`, `mysql, table prefix Hangfire`, `redis db 0, key
    /// prefix {hangfire}:`: where the center's rows are, for messages.
    pub(crate) fn describe_place(&self) -> String {
        let prefix = self.store.prefix();
        match (self.store.kind(), self.store.db()) {
            (StoreType::PostgreSql, _) => format!("postgresql, schema {prefix}"),
            (StoreType::MySql, _) => format!("mysql, table prefix {prefix}"),
            (kind, Some(db)) => format!("{kind} db {db}, key prefix {prefix}"),
            (kind, None) => format!("{kind}, key prefix {prefix}"),
        }
    }

    /// The `x-job-storage` object a center sends for this store: `Type`, `TablePrefix`,
    /// `ExpireAtDays`, `HangfireDb` and, for Redis, `Db` (as text, as the center sends it).
    pub(crate) fn storage_header(&self) -> Value {
        let mut header = json!({
            "Type": self.store.storage_type_name(),
            "TablePrefix": self.store.prefix(),
            "ExpireAtDays": 7,
            "HangfireDb": self.store.hangfire_db(),
        });
        if self.store.kind() == StoreType::Redis
            && let Some(map) = header.as_object_mut()
        {
            map.insert(
                "Db".to_owned(),
                Value::String(self.store.db().unwrap_or(0).to_string()),
            );
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(text: &str) -> Result<StoreSpec, String> {
        StoreSpec::parse(text, StoreType::PostgreSql, "hangfire", None)
    }

    #[test]
    fn reads_what_the_agent_reads_and_sends_npgsql() {
        let s = pg(
            "Server=db.local; Port=6543; Database=\"hang;fire\"; User Id=bob; Password='p''w;d'; SSL Mode=Disable",
        )
        .expect("npgsql");
        assert_eq!(s.label(), "db.local:6543/hang;fire");
        assert!(s.reader().hangfire_db().starts_with("Server=db.local"));
        let s = pg("postgres://bob:pw@db.local/app").expect("url");
        assert!(
            s.reader()
                .hangfire_db()
                .starts_with("Host=db.local;Port=5432;Database=app;Username=bob;")
        );
        // libpq's `key=value` form is not a connection string the agent takes.
        assert!(pg("host=/tmp user=postgres dbname=t").is_err());
    }

    #[test]
    fn sends_the_storage_header_a_postgresql_center_sends() {
        let s = StoreSpec::parse(
            "postgres://bob:pw@db.local/app",
            StoreType::PostgreSql,
            "center",
            None,
        )
        .expect("url");
        let h = s.storage_header();
        assert_eq!(h["Type"], "postgresql");
        assert_eq!(h["TablePrefix"], "center");
        assert_eq!(h["ExpireAtDays"], 7);
        assert_eq!(h["HangfireDb"], s.reader().hangfire_db());
        assert!(h.get("Db").is_none(), "{h}");
        assert_eq!(s.describe_place(), "postgresql, schema center");
    }

    #[test]
    fn refuses_without_leaking() {
        for bad in [
            "Host=h;Username=u;Password=hunter2;Port=x",
            "postgres://u:hunter2@h:notaport/db",
            "just-a-word-hunter2",
            "Host=h;Password=hunter2",
        ] {
            let e = pg(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        for (kind, bad) in [
            (StoreType::MySql, "mysql://u:hunter2@h:notaport/db"),
            (StoreType::Redis, "redis://:hunter2,x@h/0"),
            (StoreType::MySql, "postgres://u:hunter2@h/db"),
        ] {
            let e = StoreSpec::parse(bad, kind, kind.default_prefix(), None).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let s = pg("postgres://u:hunter2@h/db").expect("url");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
