//! The center's distributed lock, shared with .NET services: `StoreLock`.
//!
//! Business code on the .NET side takes
//! `JobStorage.Current.GetConnection().AcquireDistributedLock("resource", timeout)` on the
//! center's store. A Rust job or service takes the same lock here, written exactly as that
//! store's Hangfire package writes it, so the two exclude each other:
//!
//! - **PostgreSQL** (Hangfire.PostgreSql `PostgreSqlDistributedLock.cs`): a row in the schema's
//!   `lock` table; a row older than the center's `DistributedLockTimeout` (10 minutes unless
//!   configured) is stale and removed by whoever wants the lock. Tries once a second.
//! - **MySQL** (Hangfire.MySqlStorage `MySqlDistributedLock.cs`): a row in
//!   `<prefix>DistributedLock`; a row older than the *waiter's* acquire timeout is stale.
//!   Tries every 100 ms.
//! - **Redis** (Hangfire.Redis.StackExchange `RedisLock.cs`): `SET <prefix><resource> <owner>
//!   NX PX 30000`, extended while held. Tries with a growing random back-off.
//!
//! Unlike the .NET lock, a held `StoreLock` keeps its row fresh (so no waiter takes it for
//! stale while its holder lives), releases only its own row, tells its holder when it was
//! lost anyway ([`StoreLock::lost`]), and carries a fencing token: a number that grows with
//! every acquisition of the resource, for writes that must refuse an older holder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, StoreErrorKind, StoreType};

/// Hangfire.PostgreSql's default `DistributedLockTimeout`: older lock rows are stale.
const PG_STALE_AFTER: Duration = Duration::from_secs(600);
/// How long a Redis lock lives without being extended (Hangfire.Redis's hold duration).
pub(crate) const REDIS_HOLD: Duration = Duration::from_secs(30);
/// The longest resource name (MySQL's `Resource` column holds 100 characters).
const MAX_RESOURCE_CHARS: usize = 100;
/// The most one try (or one refresh, or the release) may take.
const STEP_WITHIN: Duration = Duration::from_secs(5);

/// Why a [`StoreLock`] could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Someone else held the lock for the whole timeout.
    #[error("the distributed lock `{resource}` is held elsewhere; not acquired within {} ms", waited.as_millis())]
    Timeout {
        /// The resource asked for.
        resource: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The resource name is empty or too long.
    #[error("invalid lock resource: {0}")]
    InvalidResource(String),
    /// There is no store to lock in (a log-only run, or an agent without its own store).
    #[error("no store to take the lock in: {0}")]
    NoStore(&'static str),
    /// The store failed (unreachable, or refused the statement) for the whole timeout.
    #[error("the store failed while taking the lock `{resource}`: {reason}")]
    Store {
        /// The resource asked for.
        resource: String,
        /// What the store said (never a secret).
        reason: String,
    },
}

impl LockError {
    fn store(resource: &str, reason: StoreError) -> Self {
        Self::Store {
            resource: resource.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A held distributed lock on the center's store. Released when dropped (in the background)
/// or by [`release`](Self::release); kept fresh while held.
pub struct StoreLock {
    resource: String,
    fencing_token: u64,
    state: Arc<Held>,
    keeper: CancellationToken,
    released: bool,
}

struct Held {
    store: Arc<Store>,
    /// The type of the store the lock is in (behind a relay: the relay's store).
    kind: StoreType,
    /// The current owner value; held across a refresh, so a release never uses a stale one.
    owner: tokio::sync::Mutex<String>,
    lost: CancellationToken,
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLock")
            .field("resource", &self.resource)
            .field("fencing_token", &self.fencing_token)
            .field("store", &self.state.store.label)
            .field("lost", &self.state.lost.is_cancelled())
            .finish()
    }
}

impl StoreLock {
    /// Takes the lock on `resource` in `store`, waiting up to `timeout` while someone else
    /// holds it.
    pub(crate) async fn acquire(
        store: Arc<Store>,
        resource: &str,
        timeout: Duration,
    ) -> Result<Self, LockError> {
        if resource.is_empty() || resource.chars().count() > MAX_RESOURCE_CHARS {
            return Err(LockError::InvalidResource(format!(
                "a resource name is 1 to {MAX_RESOURCE_CHARS} characters"
            )));
        }
        let kind = store
            .final_kind()
            .await
            .map_err(|e| LockError::store(resource, e))?;
        let stale_after = match kind {
            StoreType::PostgreSql | StoreType::Relay => PG_STALE_AFTER,
            // As Hangfire.MySqlStorage: the waiter's own timeout (at least a second).
            StoreType::MySql => timeout.max(Duration::from_secs(1)),
            StoreType::Redis => REDIS_HOLD,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut tries = 0u32;
        loop {
            let last_error = match step(store.lock_try(resource, stale_after)).await {
                Ok(Some(owner)) => return Self::held(store, kind, resource, owner).await,
                Ok(None) => None,
                Err(reason) => Some(reason),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(match last_error {
                    Some(reason) => LockError::store(resource, reason),
                    None => LockError::Timeout {
                        resource: resource.to_owned(),
                        waited: started.elapsed(),
                    },
                });
            }
            let pause = retry_pause(kind, tries).min(deadline - now);
            tries = tries.saturating_add(1);
            tokio::time::sleep(pause).await;
        }
    }

    async fn held(
        store: Arc<Store>,
        kind: StoreType,
        resource: &str,
        owner: String,
    ) -> Result<Self, LockError> {
        let fence = step(store.fence(resource)).await;
        let state = Arc::new(Held {
            store,
            kind,
            owner: tokio::sync::Mutex::new(owner),
            lost: CancellationToken::new(),
        });
        let fencing_token = match fence {
            Ok(token) => token,
            Err(reason) => {
                // Not held without a token: give the lock back.
                release(&state, resource).await;
                return Err(LockError::store(resource, reason));
            }
        };
        let keeper = CancellationToken::new();
        // Not in the agent's tracker: the keeper lives exactly as long as this lock, which
        // its caller holds (service code may hold one outside any agent); it ends when the
        // lock is released or dropped (`keeper` is cancelled) or lost.
        tokio::spawn(keep(state.clone(), resource.to_owned(), keeper.clone()));
        Ok(Self {
            resource: resource.to_owned(),
            fencing_token,
            state,
            keeper,
            released: false,
        })
    }

    /// The resource held.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// A number that grows with every acquisition of this resource (on this store): a write
    /// guarded by the lock can carry it, and refuse a token lower than one it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Cancelled when the lock was found taken by someone else while held (the store was
    /// unreachable for longer than the lock's staleness bound): stop the guarded work.
    pub fn lost(&self) -> CancellationToken {
        self.state.lost.child_token()
    }

    /// Whether the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.state.lost.is_cancelled()
    }

    /// Releases the lock now (dropping it releases it in the background).
    pub async fn release(mut self) {
        self.released = true;
        self.keeper.cancel();
        release(&self.state, &self.resource).await;
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.keeper.cancel();
        let state = self.state.clone();
        let resource = std::mem::take(&mut self.resource);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { release(&state, &resource).await });
            }
            Err(_) => tracing::warn!(
                lock = %resource,
                "a distributed lock was dropped outside the runtime; it lapses by itself"
            ),
        }
    }
}

/// One try at the store, within [`STEP_WITHIN`].
async fn step<T>(try_once: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(STEP_WITHIN, try_once)
        .await
        .map_err(|_| {
            StoreError::new(StoreErrorKind::TimedOut, "the store did not answer in time")
        })?
}

/// The pause before the next try, as each Hangfire package waits.
fn retry_pause(kind: StoreType, tries: u32) -> Duration {
    match kind {
        StoreType::PostgreSql | StoreType::Relay => Duration::from_secs(1),
        StoreType::MySql => Duration::from_millis(100),
        StoreType::Redis => {
            // Random within [i², (i+1)²] ms, as Hangfire.Redis backs off.
            let i = u64::from(tries.min(30));
            let (low, high) = (i * i, (i + 1) * (i + 1));
            Duration::from_millis(rand::random_range(low..=high))
        }
    }
}

/// How often a held lock is refreshed: well within the staleness bound others apply.
fn refresh_every(kind: StoreType) -> Duration {
    match kind {
        StoreType::PostgreSql | StoreType::Relay => Duration::from_secs(60),
        // Other processes judge staleness by their own acquire timeout (seconds, usually).
        StoreType::MySql => Duration::from_millis(500),
        StoreType::Redis => REDIS_HOLD / 3,
    }
}

async fn keep(state: Arc<Held>, resource: String, stop: CancellationToken) {
    let every = refresh_every(state.kind);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut owner = state.owner.lock().await;
        if stop.is_cancelled() {
            return;
        }
        let kept =
            tokio::time::timeout(STEP_WITHIN, state.store.lock_keep(&resource, &owner)).await;
        match kept {
            Ok(Ok(Some(new_owner))) => *owner = new_owner,
            Ok(Ok(None)) => {
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(store = %state.store.label, lock = %resource, "a held distributed lock was taken by someone else; its holder is told (StoreLock::lost)");
                state.lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(store = %state.store.label, lock = %resource, error = %e, "could not refresh a distributed lock; retrying");
            }
            Err(_) => {
                tracing::debug!(store = %state.store.label, lock = %resource, "refreshing a distributed lock timed out; retrying");
            }
        }
    }
}

async fn release(state: &Held, resource: &str) {
    let owner = state.owner.lock().await.clone();
    match tokio::time::timeout(STEP_WITHIN, state.store.lock_release(resource, &owner)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(store = %state.store.label, lock = %resource, error = %e, "could not release a distributed lock; it lapses by itself");
        }
        Err(_) => {
            tracing::warn!(store = %state.store.label, lock = %resource, "releasing a distributed lock timed out; it lapses by itself");
        }
    }
}
