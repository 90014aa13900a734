//! Nothing per run in long-lived keys or rows: after 40 runs (singletons with their cluster
//! claims and fencing tokens, transients, distributed locks), everything the agent keeps in
//! the center's store expires, and nothing it keeps grows by an entry per run.
//!
//! Expiry is what each store's Hangfire package does with it: Hangfire.PostgreSql's and
//! Hangfire.MySqlStorage's `ExpirationManager` delete `hash`/`set` rows whose `expireat` has
//! passed, row by row (hangfire-postgres/Hangfire.PostgreSql
//! `src/Hangfire.PostgreSql/ExpirationManager.cs`, arnoldasgudas/Hangfire.MySqlStorage
//! `Hangfire.MySql/ExpirationManager.cs`); Hangfire.Redis.StackExchange keeps a TTL per key
//! (marcoCasamento/Hangfire.Redis.StackExchange `RedisWriteOnlyTransaction.cs`,
//! `ExpireHash`/`ExpireSet`), so on Redis anything kept per run must be a key of its own.
//! Hangfire's own set `_agent_result_`, which the center drains, is left aside.

use std::collections::BTreeMap;
use std::time::Duration;

use jobagent::{AgentOptions, JobAgent, JobContext, JobError, job_agent};
use serde_json::json;
use tests::center::{Center, ConsoleInfo};
use tests::service::TestService;
use tests::stores::{AnyStore, Backing};

const SINGLETON: &str = "example_agent::jobs::TestJob";
const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const LOCKING: &str = "integration::store_bookkeeping::LockingJob";

/// Takes and releases the distributed lock `bookkeeping:lock` (a fencing token each time).
#[job_agent(transient)]
#[derive(Default)]
struct LockingJob;

impl JobAgent for LockingJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let lock = cx
            .lock("bookkeeping:lock", Duration::from_secs(10))
            .await
            .map_err(|e| JobError::msg(e.to_string()))?;
        cx.console()
            .info(format!("locked, token {}", lock.fencing_token()));
        lock.release().await;
        Ok(())
    }
}

/// One key (Redis) or row (`hash`/`set` on PostgreSQL and MySQL) of the store.
#[derive(Clone, Debug)]
struct Entry {
    /// Whether it expires (a TTL, an `expireat`).
    expires: bool,
    /// Redis: its entries (fields, members; bytes of a string). SQL: the bytes of its value.
    size: usize,
}

/// Everything in the store, by `table|key|field` (Redis: `key`).
async fn census(db: &AnyStore) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    match db.backing() {
        Backing::Redis(r) => {
            for k in r.keys().await {
                out.insert(
                    k.key,
                    Entry {
                        expires: k.ttl.is_some(),
                        size: k.entries,
                    },
                );
            }
        }
        Backing::Pg(pg) => {
            let sql = format!(
                "SELECT 'hash|' || key || '|' || field, coalesce(length(value), 0)::int8, expireat IS NOT NULL FROM {} \
                 UNION ALL SELECT 'set|' || key || '|' || value, 0::int8, expireat IS NOT NULL FROM {}",
                pg.table("hash"),
                pg.table("set")
            );
            let rows = match pg.client().query(&sql, &[]).await {
                Ok(rows) => rows,
                Err(e) => panic!("cannot read the tables: {e}"),
            };
            for row in rows {
                let size: i64 = row.get(1);
                out.insert(
                    row.get(0),
                    Entry {
                        expires: row.get(2),
                        size: usize::try_from(size).unwrap_or(0),
                    },
                );
            }
        }
        Backing::Mysql(my) => {
            use mysql_async::prelude::Queryable;
            let sql = format!(
                "SELECT CONCAT('hash|', `Key`, '|', `Field`), COALESCE(LENGTH(`Value`), 0), `ExpireAt` IS NOT NULL FROM {} \
                 UNION ALL SELECT CONCAT('set|', `Key`, '|', `Value`), 0, `ExpireAt` IS NOT NULL FROM {}",
                my.table("Hash"),
                my.table("Set")
            );
            let mut conn = my.conn().await;
            let rows: Vec<(String, i64, i64)> = match conn.query(sql).await {
                Ok(rows) => rows,
                Err(e) => panic!("cannot read the tables: {e}"),
            };
            for (name, size, expires) in rows {
                out.insert(
                    name,
                    Entry {
                        expires: expires != 0,
                        size: usize::try_from(size).unwrap_or(0),
                    },
                );
            }
        }
    }
    out
}

/// Whether `name` (a census name) is Hangfire's own set of results, which the center drains.
fn hangfire_results_set(name: &str) -> bool {
    name == "_agent_result_" || name.starts_with("set|_agent_result_|")
}

/// Whether `name` is a row the agent holds only while it acts and then deletes (the MySQL
/// cluster section's lease row: taken and left around every cluster step, its lease in the
/// value).
fn transient_row(name: &str) -> bool {
    name.starts_with("hash|jobagent:cluster-section|")
}

/// Rows the SQL stores still keep without an `expireat`, one per lock resource or singleton
/// class (never per run): the fencing counters (`jobagent:lock-fence`, PostgreSQL's cluster
/// `jobagent:fence`) and PostgreSQL's cluster claims. Their size is checked like every row's.
fn kept_per_resource(kind: &str, name: &str) -> bool {
    match kind {
        "postgresql" => {
            name.starts_with("hash|jobagent:lock-fence|")
                || name.starts_with("hash|jobagent:fence|")
                || (name.starts_with("hash|jobagent:claim:") && name.ends_with("|claim"))
        }
        "mysql" => name.starts_with("hash|jobagent:lock-fence|"),
        _ => false,
    }
}

/// Sends `n` runs, one after the other, each waited for: singletons, transients and runs that
/// take a distributed lock, in turn.
async fn runs(db: &AnyStore, center: &Center, from: usize, n: usize) {
    for i in from..from + n {
        let class = [SINGLETON, TRANSIENT, LOCKING][i % 3];
        let id = format!("bk-{i}");
        center
            .run(class, &id)
            .param(json!({"lines": 1}))
            .console(ConsoleInfo::for_job(&id))
            .send()
            .await
            .assert_status(200);
        let result = db.wait_result(&id, Duration::from_secs(15)).await;
        assert_eq!(result["R"], "ok", "{result}");
    }
}

async fn nothing_per_run_in_long_lived_keys(db: AnyStore) {
    // Cluster mode is on by default: claims, leases, run records and fencing tokens too.
    let service = TestService::start_with(db.agent_options(AgentOptions::new())).await;
    let center = service.center().with_storage(&db.storage());
    runs(&db, &center, 0, 20).await;
    let at_20 = census(&db).await;
    runs(&db, &center, 20, 20).await;
    let at_40 = census(&db).await;

    // The census sees what the agent wrote: each run's console and result.
    assert!(
        at_40.keys().any(|k| k.contains("bk-39")),
        "no key or row of run bk-39 found: {:?}",
        at_40.keys().collect::<Vec<_>>()
    );
    let never_expire: Vec<&String> = at_40
        .iter()
        .filter(|(name, e)| {
            !e.expires
                && !hangfire_results_set(name)
                && !transient_row(name)
                && !kept_per_resource(db.kind(), name)
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        never_expire.is_empty(),
        "{}: kept without a TTL / expireat: {never_expire:?}",
        db.kind()
    );
    // A key or row there at 20 runs and at 40 has not gained 20 entries (or bytes): nothing
    // is added to it per run.
    let grown: Vec<String> = at_40
        .iter()
        .filter(|(name, _)| !hangfire_results_set(name))
        .filter_map(|(name, e)| {
            let before = at_20.get(name)?;
            (e.size >= before.size + 10).then(|| format!("{name}: {} -> {}", before.size, e.size))
        })
        .collect();
    assert!(
        grown.is_empty(),
        "{}: grew with the runs: {grown:?}",
        db.kind()
    );
    if let Backing::Redis(r) = db.backing() {
        // The first-report marks: one key per dispatch, each with the store's expiry.
        let mark = r.ttl("jobagent:result:bk-39").await;
        assert!(
            mark.is_some_and(|t| t > 6.9 * 86_400.0 && t <= 7.0 * 86_400.0),
            "{mark:?}"
        );
        assert_eq!(r.ttl("jobagent:results").await, None);
        assert!(r.hash_rows("jobagent:results").await.is_empty());
    }
}

tests::on_every_store! {
    nothing_per_run_in_long_lived_keys => nothing_per_run_in_long_lived_keys;
}
