//! Instant cluster commands: PostgreSQL `LISTEN`/`NOTIFY` between replicas.
//!
//! A replica that sends a command (a stop, or `replace`'s stop) to another, or releases a
//! singleton's claim, also sends a `NOTIFY` in the same round trip. Each replica keeps one
//! connection outside its pool listening on both channels, and a notification wakes its
//! coordinator (commands) or its queued runs (claims) at once. Polling stays: a replica
//! whose listening connection is down, or a store that delivers no notifications, still
//! finds commands within the 200 ms poll.
//!
//! **Behind a pooler in transaction mode** (PgBouncer's `pool_mode = transaction`) a `LISTEN`
//! holds only on whichever server session ran it, and notifications never reach the
//! listening client. So each listening connection first proves that it hears: it listens on
//! `jobagent_probe`, sends a `NOTIFY` there with a payload of its own from the store's pool
//! (another connection, as a replica's would be), and waits [`PROBE_WITHIN`] for it. A
//! connection that does not hear it is closed, the log says once that this replica polls,
//! and the probe is tried again every [`UNHEARD_RETRY`] (quietly) in case the pooler's mode
//! changes. A probe is robust where a guess from the server's answers would not be: in
//! transaction mode the listening client holds no server session while it waits, so nothing
//! can deliver the probe to it; in session mode, or straight to PostgreSQL, delivery takes
//! milliseconds. (`JOBAGENT_CLUSTER_NOTIFY=off` turns listening off altogether.)
//!
//! | channel | payload | sent when |
//! |---|---|---|
//! | `jobagent_cmd` | the addressed instance | a command is written to `jobagent:cmd:<instance>` |
//! | `jobagent_claim` | the class | a singleton's claim is released |
//! | `jobagent_probe` | a random token | a listening connection checks that it hears |

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use super::Store;

pub(crate) use super::driver::{CLAIMS, COMMANDS};
const PROBE: &str = "jobagent_probe";

/// How long a new listening connection waits for its own probe notification.
const PROBE_WITHIN: Duration = Duration::from_secs(5);
/// How often a store whose notifications did not arrive is probed again.
const UNHEARD_RETRY: Duration = Duration::from_secs(300);

/// How often the listening connection is checked (a black-holed link sends nothing, so
/// silence alone says nothing), and how long the check may take.
const CHECK_EVERY: Duration = Duration::from_secs(15);
const CHECK_WITHIN: Duration = Duration::from_secs(5);
/// The longest wait between attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a listening connection ended.
enum Ended {
    /// It failed (connect, `LISTEN`, its check): try again soon.
    Failed(String),
    /// It did not hear its own probe: notifications do not reach this client.
    Unheard,
}

impl From<String> for Ended {
    fn from(e: String) -> Self {
        Ended::Failed(e)
    }
}

impl From<super::StoreError> for Ended {
    fn from(e: super::StoreError) -> Self {
        Ended::Failed(e.into())
    }
}

impl From<tokio_postgres::Error> for Ended {
    fn from(e: tokio_postgres::Error) -> Self {
        Ended::Failed(crate::error::chain(&e))
    }
}

/// Keeps a `LISTEN` connection to `store` for `instance` until `stop`: reconnects with
/// backoff, checks the link, and wakes [`Wakeups`](super::Wakeups) on each notification.
pub(crate) fn spawn(
    tracker: &tokio_util::task::TaskTracker,
    store: Arc<Store>,
    instance: String,
    stop: CancellationToken,
) {
    tracker.spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let mut failures = 0u32;
        let mut unheard_said = false;
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = listen_once(&store, &instance, &mut failures) => outcome,
            };
            let pause = match outcome {
                Ok(()) => backoff,
                Err(Ended::Failed(e)) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::info!(store = %store.label, error = %e, "cluster notifications unavailable; replicas find commands by polling (every 200 ms) until they are back");
                    } else {
                        tracing::debug!(store = %store.label, error = %e, "listening again failed");
                    }
                    backoff
                }
                Err(Ended::Unheard) => {
                    if unheard_said {
                        tracing::debug!(store = %store.label, "cluster notifications still do not arrive");
                    } else {
                        unheard_said = true;
                        tracing::info!(
                            store = %store.label,
                            within_ms = PROBE_WITHIN.as_millis() as u64,
                            "cluster notifications do not arrive through this store's connections (a pooler in transaction mode, such as PgBouncer's pool_mode = transaction, delivers none); replicas find commands by polling (every 200 ms)"
                        );
                    }
                    UNHEARD_RETRY
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// Listens on [`PROBE`], sends a notification there from the pool, and waits for it.
async fn hears(
    store: &Store,
    client: &tokio_postgres::Client,
    rx: &mut mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> Result<bool, Ended> {
    let pg = store.pg()?;
    let listen = format!("LISTEN {PROBE}");
    tokio::time::timeout(CHECK_WITHIN, client.batch_execute(&listen))
        .await
        .map_err(|_| "LISTEN got no answer".to_owned())??;
    let token = format!("{:032x}", rand::random::<u128>());
    let sent = async {
        let conn = pg.conn().await?;
        conn.bound(conn.execute_typed(
            "SELECT pg_notify($1, $2)",
            &[(&PROBE, Type::TEXT), (&token, Type::TEXT)],
        ))
        .await
    };
    tokio::time::timeout(CHECK_WITHIN, sent)
        .await
        .map_err(|_| "the probe notification got no answer".to_owned())??;
    let heard = tokio::time::timeout(PROBE_WITHIN, async {
        while let Some(n) = rx.recv().await {
            if n.channel() == PROBE && n.payload() == token {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    Ok(heard)
}

/// One listening connection, from connect to failure.
async fn listen_once(store: &Store, instance: &str, failures: &mut u32) -> Result<(), Ended> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pg = store.pg()?;
    let within = pg.limits.create.unwrap_or(Duration::from_secs(20));
    let client = tokio::time::timeout(within, pg.connector.connect(tx))
        .await
        .map_err(|_| format!("no connection within {} ms", within.as_millis()))??;
    if !hears(store, &client, &mut rx).await? {
        // Behind a pooler the LISTEN stays on a server session nobody reads; this undoes
        // it where it can (on the session it reaches), then the connection closes.
        let _ = tokio::time::timeout(CHECK_WITHIN, client.batch_execute("UNLISTEN *")).await;
        return Err(Ended::Unheard);
    }
    let listen = format!("LISTEN {COMMANDS}; LISTEN {CLAIMS}; UNLISTEN {PROBE}");
    tokio::time::timeout(CHECK_WITHIN, client.batch_execute(&listen))
        .await
        .map_err(|_| "LISTEN got no answer".to_owned())??;
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
                None => return Err(Ended::Failed("the listening connection closed".to_owned())),
            },
            _ = check.tick() => {
                tokio::time::timeout(CHECK_WITHIN, client.simple_query(""))
                    .await
                    .map_err(|_| "the listening connection did not answer its check".to_owned())??;
            }
        }
    }
}
