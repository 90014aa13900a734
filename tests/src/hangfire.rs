//! What Hangfire.PostgreSql itself does to the tables the agent writes into, for tests that
//! check the agent survives it.
//!
//! [`ExpirationPass`] plays Hangfire.PostgreSql's `ExpirationManager`
//! (`src/Hangfire.PostgreSql/ExpirationManager.cs`): it deletes every `hash` and `set` row
//! whose `expireat` has passed. Hangfire runs it hourly by default (`JobExpirationCheckInterval`),
//! often more often; here it runs every `every` (a second in the tests), so any bookkeeping
//! that relies on an expired row still being there is caught.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pg::TestDb;

/// A running Hangfire-like expiration pass over one [`TestDb`]; stops when dropped.
pub struct ExpirationPass {
    task: tokio::task::JoinHandle<()>,
    passes: Arc<AtomicU64>,
    deleted: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl ExpirationPass {
    /// Starts deleting expired `hash` and `set` rows of `db` every `every`, on a connection
    /// of its own, comparing as Hangfire does for the database's generation
    /// (`expireat < NOW()` for `timestamptz`, `expireat < NOW() AT TIME ZONE 'UTC'` before
    /// Hangfire.PostgreSql 1.9.10).
    pub async fn start(db: &TestDb, every: Duration) -> Self {
        let client = db.connect().await;
        let now = db.generation().hangfire_now_sql();
        let statements: Vec<String> = ["hash", "set"]
            .iter()
            .map(|t| format!("DELETE FROM {} WHERE expireat < {now}", db.table(t)))
            .collect();
        let passes = Arc::new(AtomicU64::new(0));
        let deleted = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (p, d, e) = (passes.clone(), deleted.clone(), errors.clone());
        let task = tokio::spawn(async move {
            loop {
                for sql in &statements {
                    match client.execute(sql.as_str(), &[]).await {
                        Ok(n) => {
                            d.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(err) => {
                            e.fetch_add(1, Ordering::Relaxed);
                            eprintln!("note: the expiration pass failed: {err}");
                        }
                    }
                }
                p.fetch_add(1, Ordering::Release);
                tokio::time::sleep(every).await;
            }
        });
        Self {
            task,
            passes,
            deleted,
            errors,
        }
    }

    /// Passes completed so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Acquire)
    }

    /// Rows deleted so far.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Statements that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits until `n` more passes have completed; panics after `within`.
    pub async fn wait_passes(&self, n: u64, within: Duration) {
        let target = self.passes() + n;
        let deadline = Instant::now() + within;
        while self.passes() < target {
            assert!(
                Instant::now() < deadline,
                "the expiration pass did not complete {n} passes within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ExpirationPass {
    fn drop(&mut self) {
        self.task.abort();
    }
}
