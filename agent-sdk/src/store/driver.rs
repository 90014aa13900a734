//! The driver seam: the few primitives a store must offer for what is written once above it
//! (the cluster protocol, `crate::cluster::protocol`). A new store implements [`Driver`];
//! nothing above it knows SQL, Lua or a wire format.
//!
//! Every primitive is one round trip (or one statement) on the store, bounded by the
//! backend's own deadlines, and says what failed with a [`StoreError`]. Values are text (the
//! records are JSON); keys and fields are given as the protocol names them: a driver whose
//! columns are narrower (MySQL) fits them itself, the same way every time.

use std::future::Future;
use std::time::Duration;

use super::error::StoreError;

// Without a store driver only the tests build this module (the memory store's contract),
// and nothing wakes: the channels and `wake` are the cluster protocol's.
/// The `NOTIFY` channel ([`Driver::wake`]) of commands for a replica (payload: its instance).
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "redis")),
    allow(dead_code)
)]
pub(crate) const COMMANDS: &str = "jobagent_cmd";
/// The `NOTIFY` channel of released claims (payload: the class).
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "redis")),
    allow(dead_code)
)]
pub(crate) const CLAIMS: &str = "jobagent_claim";

/// The primitives of one store's hash rows (Hangfire's `hash` table, `<prefix>Hash`, Redis
/// hashes), on the store's own clock.
pub(crate) trait Driver: Sync {
    /// The store's clock, in milliseconds since the Unix epoch (the unit of every lease).
    fn now_ms(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// One field of hash `key`, `None` when absent.
    fn get(
        &self,
        key: &str,
        field: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Every field of hash `key` (in write order where the store keeps one).
    fn get_all(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// Sets one field; the row (Redis: the key) lives `life` from now, `None` for ever.
    fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes one field; true when it was there.
    fn delete(
        &self,
        key: &str,
        field: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads and deletes every field of hash `key` at once: two concurrent takers never take
    /// one field twice.
    fn take_all(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// The conditional write: sets the field to `new` (deletes it when `None`) only if its
    /// current value is `expected` (`None`: absent), comparing when the write is applied, not
    /// when it was sent. True when written. A write delayed past a lease (a lock wait, a queued
    /// command) that someone else changed meanwhile therefore fails instead of overwriting.
    fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every field of hash `key` lives `life` from now (a driver may skip rows that already
    /// live nearly that long).
    fn expire(
        &self,
        key: &str,
        life: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The next fencing token of singleton class `class`: an atomic counter that only grows
    /// (each store keeps it where its earlier versions did, so tokens keep growing across an
    /// upgrade).
    fn fence(&self, class: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Wakes the replicas listening on `channel` (PostgreSQL's `NOTIFY`); the others poll, so
    /// a store without notifications does nothing.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "redis")),
        allow(dead_code)
    )]
    fn wake(
        &self,
        _channel: &'static str,
        _payload: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}
