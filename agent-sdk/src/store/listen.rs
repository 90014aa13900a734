//! Instant cluster commands: PostgreSQL `LISTEN`/`NOTIFY` between replicas.
//!
//! A replica that sends a command (a stop, or `replace`'s stop) to another, or releases a
//! singleton's claim, also sends a `NOTIFY` in the same round trip. Each replica keeps one
//! connection outside its pool listening on both channels, and a notification wakes its
//! coordinator (commands) or its queued runs (claims) at once. Polling stays: a replica
//! whose listening connection is down, or a store that delivers no notifications (a pooler
//! in transaction mode), still finds commands within the 200 ms poll.
//!
//! | channel | payload | sent when |
//! |---|---|---|
//! | `jobagent_cmd` | the addressed instance | a command is written to `jobagent:cmd:<instance>` |
//! | `jobagent_claim` | the class | a singleton's claim is released |

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Store;

pub(crate) const COMMANDS: &str = "jobagent_cmd";
pub(crate) const CLAIMS: &str = "jobagent_claim";

/// How often the listening connection is checked (a black-holed link sends nothing, so
/// silence alone says nothing), and how long the check may take.
const CHECK_EVERY: Duration = Duration::from_secs(15);
const CHECK_WITHIN: Duration = Duration::from_secs(5);
/// The longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What notifications wake.
#[derive(Default)]
pub(crate) struct Wakeups {
    /// A command for this instance may be waiting.
    pub(crate) commands: Notify,
    /// A singleton claim was released somewhere.
    pub(crate) claims: Notify,
}

/// Keeps a `LISTEN` connection to `store` for `instance` until `stop`: reconnects with
/// backoff, checks the link, and wakes [`Wakeups`] on each notification.
pub(crate) fn spawn(store: Arc<Store>, instance: String, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = listen_once(&store, &instance, &mut failures) => outcome,
            };
            if let Err(e) = outcome {
                failures += 1;
                if failures == 1 {
                    tracing::info!(store = %store.label, error = %e, "cluster notifications unavailable; replicas find commands by polling (every 200 ms) until they are back");
                } else {
                    tracing::debug!(store = %store.label, error = %e, "listening again failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// One listening connection, from connect to failure.
async fn listen_once(store: &Store, instance: &str, failures: &mut u32) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pg = store.pg()?;
    let within = pg.limits.create.unwrap_or(Duration::from_secs(20));
    let client = tokio::time::timeout(within, pg.connector.connect(tx))
        .await
        .map_err(|_| format!("no connection within {} ms", within.as_millis()))??;
    let listen = format!("LISTEN {COMMANDS}; LISTEN {CLAIMS}");
    tokio::time::timeout(CHECK_WITHIN, client.batch_execute(&listen))
        .await
        .map_err(|_| "LISTEN got no answer".to_owned())?
        .map_err(|e| crate::error::chain(&e))?;
    if *failures > 0 {
        tracing::info!(store = %store.label, "cluster notifications are back");
    }
    *failures = 0;
    tracing::debug!(store = %store.label, "listening for cluster notifications");
    // A command sent while nobody listened is found by the next poll; wake it now anyway.
    store.wakeups.commands.notify_one();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(n) if n.channel() == COMMANDS && n.payload() == instance => {
                    tracing::debug!(instance, "command notification received");
                    store.wakeups.commands.notify_one();
                }
                Some(n) if n.channel() == CLAIMS => store.wakeups.claims.notify_waiters(),
                Some(_) => {}
                None => return Err("the listening connection closed".to_owned()),
            },
            _ = check.tick() => {
                tokio::time::timeout(CHECK_WITHIN, client.simple_query(""))
                    .await
                    .map_err(|_| "the listening connection did not answer its check".to_owned())?
                    .map_err(|e| crate::error::chain(&e))?;
            }
        }
    }
}
