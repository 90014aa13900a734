//! The center's store (Hangfire.PostgreSql): where console lines, results and heartbeats go.
//!
//! A dispatch's store is the agent's own (`JOBAGENT_STORE`) when configured, else the one the
//! center sends in `x-job-storage`. One bounded pool is kept per distinct store.

pub(crate) mod connstr;
mod console_writer;
mod heartbeat;
pub(crate) mod line;
mod pool;
mod procstat;
mod results;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;

pub(crate) use console_writer::StoreConsole;
pub(crate) use heartbeat::Heartbeats;
pub(crate) use results::StoreResults;

use crate::error::ConfigError;
use crate::options::LocalStore;
use crate::request::StorageHeader;

/// One store: a pool, the schema, and how long rows live.
pub(crate) struct Store {
    pub(crate) pool: Pool,
    /// `"schema"`, quoted for SQL.
    pub(crate) schema: String,
    pub(crate) expire: Duration,
    /// Where it came from, for logs (host and database; never a secret).
    pub(crate) label: String,
}

impl Store {
    fn open(connection: &str, schema: &str, expire_days: f64) -> Result<Self, String> {
        check_schema(schema)?;
        let spec = connstr::parse(connection).map_err(|e| e.to_string())?;
        let label = label(&spec.config);
        let pool = pool::build_pool(&spec)?;
        Ok(Self {
            pool,
            schema: quote_ident(schema),
            expire: Duration::from_secs_f64(expire_days * 86_400.0),
            label,
        })
    }

    pub(crate) fn expire_secs(&self) -> f64 {
        self.expire.as_secs_f64()
    }
}

fn label(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    format!("{host}/{}", config.get_dbname().unwrap_or(""))
}

/// Checks a Hangfire schema name as PostgreSQL takes a quoted identifier (and
/// Hangfire.PostgreSql its `SchemaName`): 1 to 63 bytes, no NUL. Any other character,
/// `-`, spaces or `"` included, is fine: the name is only ever used through
/// [`quote_ident`].
pub(crate) fn check_schema(schema: &str) -> Result<(), String> {
    if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
        Err(format!(
            "schema `{}` must be 1 to 63 bytes long and hold no NUL character",
            schema
                .chars()
                .filter(|c| *c != '\0')
                .take(64)
                .collect::<String>()
        ))
    } else {
        Ok(())
    }
}

/// Quotes a name as an SQL identifier: in double quotes, a `"` doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The stores an agent writes to: its own, and those centers send, one pool each.
pub(crate) struct Stores {
    local: Option<Arc<Store>>,
    allowed_hosts: Option<Vec<String>>,
    sent: Mutex<HashMap<String, Arc<Store>>>,
}

/// The most distinct header-sent stores kept open at once.
const MAX_SENT_STORES: usize = 32;

impl Stores {
    pub(crate) fn new(
        local: Option<&LocalStore>,
        allowed_hosts: Option<Vec<String>>,
    ) -> Result<Self, ConfigError> {
        let local = match local {
            None => None,
            Some(l) => Some(Arc::new(
                Store::open(l.connection.expose(), &l.schema, l.expire_days)
                    .map_err(|reason| ConfigError::invalid("JOBAGENT_STORE", reason))?,
            )),
        };
        if let Some(store) = &local {
            tracing::info!(store = %store.label, "job agent writes to its configured store");
        }
        Ok(Self {
            local,
            allowed_hosts,
            sent: Mutex::new(HashMap::new()),
        })
    }

    /// The agent's own store, if configured.
    pub(crate) fn local(&self) -> Option<Arc<Store>> {
        self.local.clone()
    }

    /// The store for a dispatch: the local one, else the one in `x-job-storage`, else none.
    pub(crate) fn select(
        &self,
        header: Option<&StorageHeader>,
    ) -> Result<Option<Arc<Store>>, String> {
        if let Some(local) = &self.local {
            return Ok(Some(local.clone()));
        }
        let Some(h) = header else { return Ok(None) };
        if !h.kind.trim().eq_ignore_ascii_case("postgresql") {
            return Err(format!(
                "this agent writes to PostgreSQL but the center's store Type is `{}`; configure the center with Hangfire.PostgreSql or give the agent its own store (JOBAGENT_STORE)",
                h.kind.chars().take(40).collect::<String>()
            ));
        }
        if h.hangfire_db.trim().is_empty() {
            return Err("the center's store has no HangfireDb connection string".to_owned());
        }
        let schema = h
            .table_prefix
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("hangfire");
        let days = h
            .expire_at_days
            .filter(|d| d.is_finite() && *d >= 1.0)
            .unwrap_or(7.0)
            .min(3650.0);
        let spec = connstr::parse(&h.hangfire_db).map_err(|e| format!("HangfireDb: {e}"))?;
        check_schema(schema).map_err(|e| format!("TablePrefix: {e}"))?;
        if let Some(allowed) = &self.allowed_hosts {
            for (host, _port) in spec.hosts() {
                if !host_allowed(&host, allowed) {
                    return Err(format!(
                        "the center's store names host `{}`, which is not in JOBAGENT_STORE_ALLOWED_HOSTS",
                        host.chars().take(100).collect::<String>()
                    ));
                }
            }
        }
        let key = format!("{}|{schema}|{days}", spec.identity());
        let mut sent = crate::sync::lock(&self.sent);
        if let Some(store) = sent.get(&key) {
            return Ok(Some(store.clone()));
        }
        if sent.len() >= MAX_SENT_STORES {
            return Err(format!(
                "this agent already writes to {MAX_SENT_STORES} different stores; configure one store on the agent (JOBAGENT_STORE)"
            ));
        }
        let store = Arc::new(
            Store::open(&h.hangfire_db, schema, days).map_err(|e| format!("HangfireDb: {e}"))?,
        );
        tracing::info!(store = %store.label, "job agent opened a store sent by the center");
        sent.insert(key, store.clone());
        Ok(Some(store))
    }
}

/// Opens `connection` as the agent opens a store and runs `sql` (one row, one text column);
/// also says whether the session is encrypted. For the integration tests of TLS modes.
pub(crate) async fn probe(connection: &str, sql: &str) -> Result<(bool, String), String> {
    let spec = connstr::parse(connection).map_err(|e| e.to_string())?;
    let pool = pool::build_pool(&spec)?;
    let client = pool.get().await.map_err(|e| format!("{e} ({e:?})"))?;
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .try_get(0)
        .map_err(|e| e.to_string())?;
    let value: String = client
        .query_one(sql, &[])
        .await
        .map_err(|e| e.to_string())?
        .try_get(0)
        .map_err(|e| e.to_string())?;
    Ok((encrypted, value))
}

/// Upserts fields of one hash key, in one statement.
pub(crate) async fn upsert_hash_fields(
    client: &deadpool_postgres::Client,
    schema: &str,
    key: &str,
    fields: &[&str],
    values: &[&str],
    expire_secs: f64,
) -> Result<(), String> {
    let sql = format!(
        "INSERT INTO {schema}.hash (\"key\", field, \"value\", expireat) \
         SELECT $1, h.field, h.value, now() + $4 * interval '1 second' \
         FROM unnest($2::text[], $3::text[]) AS h(field, value) \
         ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = EXCLUDED.expireat"
    );
    let stmt = client
        .prepare_cached(&sql)
        .await
        .map_err(|e| e.to_string())?;
    client
        .execute(&stmt, &[&key, &fields, &values, &expire_secs])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether `host` matches an allow-list entry (`name`, or `*.domain` for its sub-domains).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|entry| match entry.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => *entry == host || entry == "*",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_names_and_domains() {
        let allowed = vec![
            "db1".to_owned(),
            "10.0.0.5".to_owned(),
            "*.corp.example".to_owned(),
        ];
        assert!(host_allowed("DB1", &allowed));
        assert!(host_allowed("10.0.0.5", &allowed));
        assert!(host_allowed("pg.corp.example", &allowed));
        assert!(!host_allowed("corp.example", &allowed));
        assert!(!host_allowed("evil.example", &allowed));
        assert!(!host_allowed("db1.evil", &allowed));
        assert!(check_schema("hangfire").is_ok());
        // Hangfire.PostgreSql quotes its schema name: anything but NUL, up to 63 bytes.
        for name in ["hangfire-prod", "1abc", "a\"b", "bad;schema", "空间"] {
            assert!(check_schema(name).is_ok(), "{name}");
        }
        assert!(check_schema("").is_err());
        assert!(check_schema("a\0b").is_err());
        assert!(check_schema(&"x".repeat(64)).is_err());
        assert!(check_schema(&"x".repeat(63)).is_ok());
        assert_eq!(quote_ident("hangfire-prod"), "\"hangfire-prod\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
