//! Locking shared state that a panicking job may have poisoned.

use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Locks `m`, recovering the data when a panic poisoned the lock: every critical section
/// of the agent leaves its data consistent, so the agent keeps serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A [`Notify`] for "something ended" wake-ups, whose [`notify_waiters`](Self::notify_waiters)
/// costs one atomic load while nobody watches. Every run's end signals two of them, and
/// `Notify::notify_waiters` takes the waiter list's lock even when the list is empty: both
/// worker threads contended for it on every run.
///
/// A waiter takes a [`Watch`] first, then creates and enables its `Notified`, then checks its
/// condition; a notifier changes the state, then notifies. The fences on both sides make
/// sure that either the notifier sees the watcher or the watcher sees the new state.
pub(crate) struct Signal {
    notify: Notify,
    watchers: AtomicUsize,
}

impl Signal {
    pub(crate) const fn new() -> Self {
        Self {
            notify: Notify::const_new(),
            watchers: AtomicUsize::new(0),
        }
    }

    /// Wakes every enabled or polled `Notified` of a current [`Watch`].
    pub(crate) fn notify_waiters(&self) {
        fence(Ordering::SeqCst);
        if self.watchers.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Registers a waiter for as long as the returned guard lives.
    pub(crate) fn watch(&self) -> Watch<'_> {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Watch(self)
    }
}

/// A registered waiter of a [`Signal`].
pub(crate) struct Watch<'a>(&'a Signal);

impl Watch<'_> {
    /// A wake-up of the next [`Signal::notify_waiters`].
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.0.notify.notified()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Release);
    }
}
