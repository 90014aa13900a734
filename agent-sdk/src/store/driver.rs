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

/// The `NOTIFY` channel ([`Driver::wake`]) of commands for a replica (payload: its instance).
pub(crate) const COMMANDS: &str = "jobagent_cmd";
/// The `NOTIFY` channel of released claims (payload: the class).
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
    fn wake(
        &self,
        _channel: &'static str,
        _payload: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

#[cfg(feature = "postgres")]
impl Driver for super::postgres::PgStore {
    async fn now_ms(&self) -> Result<i64, StoreError> {
        self.clock_ms().await
    }
    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        self.read_hash(key, field).await
    }
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read_hash_all(key).await
    }
    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.set_hash(key, &[(field, value)], life).await
    }
    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        self.del_hash_field(key, field).await
    }
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.take_hash(key).await
    }
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.cas_hash(key, field, expected, new, life).await
    }
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        self.expire_hash(key, life).await
    }
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        self.class_fence(class).await
    }
    async fn wake(&self, channel: &'static str, payload: &str) -> Result<(), StoreError> {
        self.notify(channel, payload).await
    }
}

/// MySQL's `Key nvarchar(100)` and `Field nvarchar(40)` (Hangfire.MySqlStorage's Install.sql):
/// a longer name is stored as `~` and its UUID v5 (33 characters), so the protocol never reads
/// a name back from a key or field (its records carry their names).
#[cfg(feature = "mysql")]
mod fitted {
    pub(super) const KEY_CHARS: usize = 100;
    pub(super) const FIELD_CHARS: usize = 40;

    /// `text`, or `~` and its UUID v5 when it is longer than `max` characters (stable, and
    /// a fitted text fits as it is).
    pub(super) fn fit(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
        if text.chars().count() <= max {
            return text.into();
        }
        format!(
            "~{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).simple()
        )
        .into()
    }
}

#[cfg(feature = "mysql")]
impl Driver for super::mysql::MysqlStore {
    async fn now_ms(&self) -> Result<i64, StoreError> {
        MysqlStore::now_ms(self).await
    }
    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        let (k, f) = fit2(key, field);
        self.read_hash(&k, &f).await
    }
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read_hash_all(&fit_key(key)).await
    }
    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (k, f) = fit2(key, field);
        self.set_hash(&k, &[(&f, value)], life).await
    }
    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        let (k, f) = fit2(key, field);
        self.del_hash_field(&k, &f).await
    }
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.take_hash(&fit_key(key)).await
    }
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let (k, f) = fit2(key, field);
        self.cas_hash(&k, &f, expected, new, life).await
    }
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        self.expire_hash(&fit_key(key), life).await
    }
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        MysqlStore::fence(self, &format!("jobagent:claim:{class}")).await
    }
}

#[cfg(feature = "mysql")]
use super::mysql::MysqlStore;

#[cfg(feature = "mysql")]
fn fit_key(key: &str) -> std::borrow::Cow<'_, str> {
    fitted::fit(key, fitted::KEY_CHARS)
}

#[cfg(feature = "mysql")]
fn fit2<'a>(
    key: &'a str,
    field: &'a str,
) -> (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>) {
    (fit_key(key), fitted::fit(field, fitted::FIELD_CHARS))
}

#[cfg(feature = "redis")]
impl Driver for super::redis::RedisStore {
    async fn now_ms(&self) -> Result<i64, StoreError> {
        super::redis::RedisStore::now_ms(self).await
    }
    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        self.read_hash(key, field).await
    }
    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read_hash_all(key).await
    }
    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.set_hash(key, &[(field, value)], life).await
    }
    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        self.del_hash_field(key, field).await
    }
    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.take_hash(key).await
    }
    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.cas_hash(key, field, expected, new, life).await
    }
    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        self.expire_hash(key, life).await
    }
    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        super::redis::RedisStore::fence(self, &format!("jobagent:claim:{class}")).await
    }
}

#[cfg(all(test, feature = "mysql"))]
mod tests {
    use super::fitted::{FIELD_CHARS, fit};

    #[test]
    fn long_names_fit_mysql_columns_and_stay_distinct() {
        assert_eq!(fit("replica-a", FIELD_CHARS), "replica-a");
        let a = fit(&"x".repeat(41), FIELD_CHARS).into_owned();
        let y = "y".repeat(41);
        let b = fit(&y, FIELD_CHARS);
        assert_eq!(a.chars().count(), 33);
        assert_ne!(a, b);
        assert_eq!(a, fit(&"x".repeat(41), FIELD_CHARS), "stable");
        assert_eq!(fit(&a, FIELD_CHARS), a, "a fitted name fits as it is");
    }
}
