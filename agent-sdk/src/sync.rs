//! Locking shared state that a panicking job may have poisoned.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data when a panic poisoned the lock: every critical section
/// of the agent leaves its data consistent, so the agent keeps serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
