//! The heartbeat reporter: every 3 s, this process's figures into hash
//! `AgentHeart:<center server id>`, for as long as the center keeps sending heartbeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::procstat::ProcessSampler;
use crate::sync::lock;
use crate::timefmt::fmt_utc;

/// Ticks a reporter lives after the last heartbeat request (15 minutes of 3 s).
pub(crate) const LIFE_TICKS: u32 = 300;
/// The reporter's period.
pub(crate) const TICK: Duration = Duration::from_secs(3);
/// How long heartbeat rows live.
const ROW_LIFE: Duration = Duration::from_secs(600);
/// The most one heartbeat write may take (one tick): the reporter never falls behind.
const WRITE_WITHIN: Duration = TICK;

/// The running reporters, one per store and center server.
pub(crate) struct Heartbeats {
    reporters: Mutex<HashMap<(usize, String), Arc<AtomicU32>>>,
    stop: CancellationToken,
    /// The agent's background tracker: shutdown waits for the reporters to end.
    tracker: tokio_util::task::TaskTracker,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Beat<'a> {
    id: u32,
    idx: u32,
    process_name: &'a str,
    server: &'a str,
    cpu_usage: f64,
    working_set: u64,
    disk_usage: u64,
    timestamp: String,
}

impl Heartbeats {
    pub(crate) fn new(stop: CancellationToken, tracker: tokio_util::task::TaskTracker) -> Self {
        Self {
            reporters: Mutex::new(HashMap::new()),
            stop,
            tracker,
        }
    }

    /// Starts a reporter for `server_id`, or renews the running one.
    pub(crate) fn beat(self: &Arc<Self>, store: Arc<Store>, server_id: &str, agent_server: &str) {
        let key = (Arc::as_ptr(&store) as usize, server_id.to_owned());
        let mut reporters = lock(&self.reporters);
        if let Some(ticks) = reporters.get(&key) {
            ticks.store(LIFE_TICKS, Ordering::Release);
            return;
        }
        let ticks = Arc::new(AtomicU32::new(LIFE_TICKS));
        reporters.insert(key.clone(), ticks.clone());
        drop(reporters);
        tracing::info!(center_server = server_id, store = %store.label, "heartbeat reporter started");
        let this = self.clone();
        let hash_key = format!("AgentHeart:{server_id}");
        let field = agent_server.to_owned();
        self.tracker.spawn(async move {
            let mut sampler = Some(ProcessSampler::new());
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = this.stop.cancelled() => break,
                    _ = interval.tick() => {}
                }
                let left = ticks.load(Ordering::Acquire);
                if left == 0 {
                    // Remove ourselves, unless a heartbeat renewed us just now.
                    let mut reporters = lock(&this.reporters);
                    if ticks.load(Ordering::Acquire) == 0 {
                        reporters.remove(&key);
                        break;
                    }
                    continue;
                }
                ticks.fetch_sub(1, Ordering::AcqRel);
                // /proc and statvfs are blocking file system calls (a hung mount would hold
                // a worker): they run off the runtime, bounded by a tick.
                let mut taken = sampler.take().unwrap_or_default();
                let sampled = tokio::time::timeout(
                    TICK,
                    tokio::task::spawn_blocking(move || {
                        let figures = taken.sample();
                        (taken, figures)
                    }),
                )
                .await;
                let Ok(Ok((taken, figures))) = sampled else {
                    tracing::debug!("sampling the process figures took longer than a tick; skipped");
                    continue;
                };
                sampler = Some(taken);
                let beat = Beat {
                    id: figures.pid,
                    idx: left - 1,
                    process_name: &figures.name,
                    server: &field,
                    cpu_usage: figures.cpu_percent,
                    working_set: figures.working_set,
                    disk_usage: figures.free_disk,
                    timestamp: fmt_utc(SystemTime::now()),
                };
                if let Err(e) =
                    crate::metrics::store_op("heartbeat", write(&store, &hash_key, &field, &beat))
                        .await
                {
                    tracing::debug!(store = %store.label, error = %e, "heartbeat write failed; next tick retries");
                }
            }
            tracing::info!(center_server = %key.1, "heartbeat reporter ended");
        });
    }
}

/// One heartbeat row, bounded: a tick on an unreachable store fails within the pool's
/// checkout bound and `Command Timeout` (at most 3 s of it: a row older than the next tick
/// is worth nothing), and the next tick tries again on another connection.
async fn write(store: &Store, key: &str, field: &str, beat: &Beat<'_>) -> Result<(), StoreError> {
    let value = serde_json::to_string(beat).map_err(|e| StoreError::refused(e.to_string()))?;
    tokio::time::timeout(
        WRITE_WITHIN,
        store.set_hash(key, &[(field, &value)], Some(ROW_LIFE)),
    )
    .await
    .map_err(|_| StoreError::timed_out("the store", WRITE_WITHIN))?
}
