//! An in-memory [`Driver`] for tests: hashes with a TTL per key (as Redis keeps them), a
//! clock on tokio's [`Instant`] (so `#[tokio::test(start_paused = true)]` moves it), and a
//! hook that holds the next write until the test lets it go, placing it after a lease lapsed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::driver::Driver;
use super::error::StoreError;

/// One hash: its fields in write order, and when the key expires.
#[derive(Default)]
struct Hash {
    fields: Vec<(String, String)>,
    until: Option<Instant>,
}

/// The store.
pub(crate) struct MemoryStore {
    /// The clock's reading at `start`, in ms since the Unix epoch.
    epoch_ms: i64,
    start: Instant,
    hashes: Mutex<HashMap<String, Hash>>,
    counters: Mutex<HashMap<String, u64>>,
    /// What the next write waits for (see [`MemoryStore::hold_next_write`]).
    held: Mutex<Option<oneshot::Receiver<()>>>,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self {
            epoch_ms: 1_700_000_000_000,
            start: Instant::now(),
            hashes: Mutex::default(),
            counters: Mutex::default(),
            held: Mutex::default(),
        }
    }

    /// The next write (put, delete, take, conditional write, expiry) waits until the returned
    /// sender is used or dropped, and is then applied to what the store holds at that moment:
    /// a write delayed in flight, as a lock wait or a queue would delay it.
    // Used by the cluster protocol's tests, which need a store driver feature.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn hold_next_write(&self) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel();
        *crate::sync::lock(&self.held) = Some(held);
        release
    }

    async fn write_gate(&self) {
        let held = crate::sync::lock(&self.held).take();
        if let Some(held) = held {
            let _ = held.await;
        }
    }

    /// Runs `f` on the live hashes (expired keys removed first).
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Hash>) -> T) -> T {
        let mut hashes = crate::sync::lock(&self.hashes);
        let now = Instant::now();
        hashes.retain(|_, h| h.until.is_none_or(|u| u > now) && !h.fields.is_empty());
        f(&mut hashes)
    }

    fn set(h: &mut Hash, field: &str, value: &str, life: Option<Duration>) {
        match h.fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, v)) => value.clone_into(v),
            None => h.fields.push((field.to_owned(), value.to_owned())),
        }
        h.until = life.map(|l| Instant::now() + l);
    }
}

impl Driver for MemoryStore {
    async fn now_ms(&self) -> Result<i64, StoreError> {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        Ok(self.epoch_ms.saturating_add(elapsed))
    }

    async fn get(&self, key: &str, field: &str) -> Result<Option<String>, StoreError> {
        Ok(self.with(|m| {
            m.get(key)
                .and_then(|h| h.fields.iter().find(|(f, _)| f == field))
                .map(|(_, v)| v.clone())
        }))
    }

    async fn get_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.with(|m| m.get(key).map(|h| h.fields.clone()).unwrap_or_default()))
    }

    async fn put(
        &self,
        key: &str,
        field: &str,
        value: &str,
        life: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.write_gate().await;
        self.with(|m| Self::set(m.entry(key.to_owned()).or_default(), field, value, life));
        Ok(())
    }

    async fn delete(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        self.write_gate().await;
        Ok(self.with(|m| {
            let Some(h) = m.get_mut(key) else {
                return false;
            };
            let before = h.fields.len();
            h.fields.retain(|(f, _)| f != field);
            h.fields.len() < before
        }))
    }

    async fn take_all(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.write_gate().await;
        Ok(self.with(|m| m.remove(key).map(|h| h.fields).unwrap_or_default()))
    }

    async fn cas(
        &self,
        key: &str,
        field: &str,
        expected: Option<&str>,
        new: Option<&str>,
        life: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.write_gate().await;
        Ok(self.with(|m| {
            let h = m.entry(key.to_owned()).or_default();
            let current = h.fields.iter().find(|(f, _)| f == field).map(|(_, v)| v);
            if current.map(String::as_str) != expected {
                return false;
            }
            match new {
                Some(new) => Self::set(h, field, new, life),
                None => h.fields.retain(|(f, _)| f != field),
            }
            true
        }))
    }

    async fn expire(&self, key: &str, life: Duration) -> Result<(), StoreError> {
        self.write_gate().await;
        self.with(|m| {
            if let Some(h) = m.get_mut(key) {
                h.until = Some(Instant::now() + life);
            }
        });
        Ok(())
    }

    async fn fence(&self, class: &str) -> Result<u64, StoreError> {
        let mut counters = crate::sync::lock(&self.counters);
        let n = counters.entry(class.to_owned()).or_default();
        *n += 1;
        Ok(*n)
    }
}
