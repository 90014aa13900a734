//! Replicas behind one URL acting as one agent, coordinated through the store they share.
//!
//! The protocol is written once ([`protocol`]) over the store's driver
//! ([`crate::store::driver::Driver`]): PostgreSQL, MySQL and Redis run the same steps on their
//! hash rows, under keys starting with `jobagent:`; a relay runs them on its own store
//! ([`relay`]). Every read-decide-write is a conditional write on the value read, so a write
//! delayed past its lease fails instead of overwriting.
//!
//! | key | field | value | row life |
//! |---|---|---|---|
//! | `jobagent:replicas` | instance | `{"Instance","ServerId","Pid","Until","V"}` (a reaper's placeholder: `ServerId` empty) | store days, renewed |
//! | `jobagent:instances` | instance | the instance (what the orphan scan reads) | store days, renewed |
//! | `jobagent:runs:<instance>` | job id | `{"Class","ServerId","Started","Action","JobId","V"}` | store days, renewed |
//! | `jobagent:claim:<class>` | `claim` | `{"Instance","ServerId","JobId","Until","V"}` | store days, renewed (kept as the last run) |
//! | fencing counter | class | the last token (PostgreSQL: hash `jobagent:fence`; MySQL, Redis: the lock's counter of `jobagent:claim:<class>`) | never, or Redis's 30 days after use |
//! | `jobagent:cmd:<instance>` | `<stop id>:<job id>` | `{"Action":"stop","Class","JobId","StopId",..}` | 1 hour (taken in 200 ms) |
//! | `jobagent:ack:<stop id>` | job id | `{"JobId","Error"}` | 1 hour (read within the grace) |
//!
//! MySQL's `Key` (100 characters) and `Field` (40) are too short for long names: its driver
//! stores those as `~` and their UUID v5, so every name the protocol reads back is in a value.
//!
//! **Records carry a version** (`"V"`, [`protocol::VERSION`]; none: version 1, the agents that
//! decided inside a cluster section). A replica that meets a live claim or lease of another
//! version refuses to claim or reap, with a message that says to finish the rolling upgrade.
//!
//! **Lost runs are reported before their records are deleted.** A survivor takes a lapsed
//! lease by writing a reaper placeholder over it (conditionally), reports each run, and only
//! then deletes its record; should it die before, the placeholder lapses and another survivor
//! reports them; should it die between report and delete, the second report is absorbed by
//! the result's first-report mark. A predecessor's runs (orphans) likewise stay until reported.
//!
//! **Leases live in the values, never in `expireat`.** Hangfire.PostgreSql's
//! `ExpirationManager` deletes every `hash` row whose `expireat` has passed, at a moment the
//! agent does not choose; so a lease's deadline is the value's `Until` (milliseconds since the
//! Unix epoch on the database's clock), and every bookkeeping row's `expireat` stays out of
//! Hangfire's reach while the row matters: the store's `ExpireAtDays` ahead, renewed (a claim
//! at each claim and renewal, run records and the index of instances while their lease is
//! held), or NULL (fencing counters).
//!
//! A replica that dies stops renewing: its singleton claims lapse within [`CLAIM_LEASE`], and
//! after [`REPLICA_LEASE`] plus [`LOST_GRACE`] a surviving replica reports its runs as lost
//! (within about 11 s of the crash). Runs whose instance has no lease row at all (it was
//! deleted) get a lapsed lease first, so they are reported [`LOST_GRACE`] after a survivor
//! notices them.
//!
//! **A replica cut off from the store stops its singletons first.** The holder of a claim
//! measures, on its own monotonic clock, the time since it *sent* its last successful renewal;
//! the database set the claim's `Until` to its own now (later than that send) plus
//! [`CLAIM_LEASE`], so the claim cannot lapse anywhere before that send plus the lease. The
//! holder cancels its run [`CLAIM_SAFETY`] before that moment (the margin covers timer
//! delays and the job's own wind-down), so a run is over, and its fencing token no longer
//! current, before another replica can claim the class and get a higher token.
//!
//! **One process per instance name.** The lease row `jobagent:replicas`/instance holds the id
//! of the process that owns the name (`ServerId`, one per process). A process takes the row
//! only when it is its own, lapsed, or a placeholder; while another process's lease of the
//! same name is live, this process is a duplicate: it reconciles nothing, reaps nothing,
//! takes no command, and refuses singleton claims, naming the duplicate. A restarted process
//! takes its crashed predecessor's name over as soon as the predecessor's lease lapses
//! (within [`REPLICA_LEASE`]), and then reports what it left in flight.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
use protocol::Cluster;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
mod protocol;
#[cfg(feature = "relay")]
pub(crate) mod relay;
#[cfg(all(test, any(feature = "postgres", feature = "mysql", feature = "redis")))]
mod tests;

/// How long a singleton claim lives without renewal.
pub(crate) const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// How long before its claim could lapse a holder that could not renew it cancels its run:
/// it cancels once its last successful renewal is `CLAIM_LEASE - CLAIM_SAFETY` old.
pub(crate) const CLAIM_SAFETY: Duration = Duration::from_secs(3);
/// How often the holder renews its claims, and a replica its lease.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long one renewal may take before it is given up (and retried at the next tick).
pub(crate) const RENEW_WITHIN: Duration = Duration::from_secs(2);
/// How long a replica's lease lives without renewal.
pub(crate) const REPLICA_LEASE: Duration = Duration::from_secs(6);
/// Extra time before a silent replica's runs are reported lost: a live replica is reported
/// only after `REPLICA_LEASE + LOST_GRACE` (9 s) without one successful renewal.
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "redis")),
    allow(dead_code)
)]
pub(crate) const LOST_GRACE: Duration = Duration::from_secs(3);
/// How often a replica looks for runs whose instance has no lease row.
pub(crate) const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(30);
/// How often a replica looks for commands addressed to it.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(200);

/// This process as the cluster knows it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Member {
    /// The stable instance name (survives restarts).
    pub(crate) instance: String,
    /// This process's id (the `agentServerId`).
    pub(crate) server_id: String,
}

/// A singleton claim's holder.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ClaimValue {
    pub(crate) instance: String,
    pub(crate) server_id: String,
    pub(crate) job_id: String,
}

/// An in-flight run as recorded in the store.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunRecord {
    pub(crate) class: String,
    pub(crate) server_id: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) started: u64,
    /// `run`, or `stop` for a stop dispatch (reported lost with a stop's result); empty in
    /// records written before stops were recorded (a run).
    #[serde(default)]
    pub(crate) action: String,
    /// For a stop: the run it stops, its result's `RunId`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) run_id: String,
}

impl RunRecord {
    /// Whether this records a stop dispatch, not a run.
    pub(crate) fn is_stop(&self) -> bool {
        self.action == "stop"
    }
}

/// A run somewhere in the cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ClusterRun {
    pub(crate) instance: String,
    pub(crate) job_id: String,
    pub(crate) record: RunRecord,
}

/// A command for a replica.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Command {
    pub(crate) action: String,
    pub(crate) class: String,
    pub(crate) job_id: String,
    pub(crate) stop_id: String,
    /// The stop dispatch's console, where the replica's `on_stop` writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) console: Option<crate::request::ConsoleTarget>,
    /// The stop dispatch's parameter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) param: String,
}

/// The outcome of a claim attempt.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) enum Claimed {
    /// The claim is ours, with its fencing token.
    Yes(u64),
    /// Someone holds it.
    Busy(ClaimValue),
}

/// Who holds this process's instance name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum Lease {
    /// This process: the lease is (now) ours.
    Held,
    /// Another live process: this one is a duplicate of the instance name, at least until
    /// that lease lapses.
    HeldBy(Holder),
}

/// Another process holding a live lease of this instance name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Holder {
    pub(crate) server_id: String,
    pub(crate) pid: i64,
    /// Its lease's deadline (ms since the Unix epoch, database clock): it grows when the
    /// holder renews, which tells a live duplicate from a predecessor that died.
    pub(crate) until: i64,
}

impl Holder {
    /// Why a duplicate process refuses what needs the instance name.
    pub(crate) fn refusal(&self, instance: &str) -> String {
        format!(
            "instance name `{instance}` (JOBAGENT_INSTANCE; the default is the host name) is in use by another live process (pid {}, process id {}) sharing this store; this process refuses runs and does not reconcile or coordinate under that name until the other one stops: give every process its own JOBAGENT_INSTANCE",
            self.pid, self.server_id
        )
    }

    /// Why a process whose predecessor has not released the instance name refuses runs.
    pub(crate) fn waiting(&self, instance: &str) -> String {
        format!(
            "instance name `{instance}` (JOBAGENT_INSTANCE) is still held by another process (pid {}, process id {}): a predecessor that stopped without releasing it, whose lease lapses within {} s, or a live duplicate; until this process holds the name it refuses runs (it could not record them under the name, and no one would report them if it died): retry shortly",
            self.pid,
            self.server_id,
            REPLICA_LEASE.as_secs()
        )
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "redis")),
    allow(dead_code)
)]
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long one cluster operation on a database may take.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
const OP_WITHIN: Duration = Duration::from_secs(4);

/// Runs `op` within [`OP_WITHIN`].
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
async fn bounded<T>(
    what: &str,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OP_WITHIN, op)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::timed_out(
                format!("the store ({what})"),
                OP_WITHIN,
            ))
        })
}

/// One operation on the store: the protocol over the store's driver, or, on a relay, the
/// same operation sent to it (which runs it on its own store) or `$relay`.
macro_rules! on_backend {
    ($store:ident, $what:expr, $op:ident ( $($arg:expr),* )) => {
        on_backend!($store, $what, $op($($arg),*), r => relay::$op(r, $($arg),*).await)
    };
    ($store:ident, $what:expr, $op:ident ( $($arg:expr),* ), $r:ident => $relay:expr) => {
        crate::store::backend!($store, d => {
            bounded($what, Cluster::new(d, $store.expire).$op($($arg),*)).await
        }, $r => $relay)
    };
}

/// The cluster's operations, on whichever store the replicas share.
impl Store {
    /// Claims a singleton class for `job_id`; the fencing token grows with every claim. A
    /// live claim is taken over only when it is this process's own (one it could not release
    /// while the store was down: the class is free locally) or a predecessor's of this
    /// instance name that no longer holds the name's lease (it crashed). A process that is a
    /// duplicate of a live process's instance name gets an error naming it.
    pub(crate) async fn claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<Claimed, StoreError> {
        on_backend!(self, "a claim", claim(me, class, job_id))
    }

    /// Renews a claim we hold; false when it is no longer ours.
    pub(crate) async fn renew_claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<bool, StoreError> {
        on_backend!(self, "a claim's renewal", renew_claim(me, class, job_id))
    }

    /// Releases a claim we hold: its lease lapses now, and the record stays (Hangfire keeps
    /// it) as the class's last run.
    pub(crate) async fn release_claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<(), StoreError> {
        on_backend!(self, "a claim's release", release_claim(me, class, job_id))
    }

    /// Lapses the claim a process that is gone held for a run just reported lost, so the class
    /// is free at once and a stop of it says it has already stopped.
    pub(crate) async fn release_lost_claim(
        &self,
        class: &str,
        job_id: &str,
        server_id: &str,
    ) -> Result<(), StoreError> {
        on_backend!(
            self,
            "a lost claim's release",
            release_claim_of(class, job_id, server_id)
        )
    }

    /// The class's claim: its holder and whether it is live.
    pub(crate) async fn claim_of(
        &self,
        class: &str,
    ) -> Result<Option<(ClaimValue, bool)>, StoreError> {
        on_backend!(self, "a claim's read", claim_of(class))
    }

    /// Records a run in flight, after taking or renewing this process's lease of its
    /// instance name (a run on record always has a lease that lapses if this process dies).
    /// A duplicate of a live process's instance name records nothing.
    pub(crate) async fn record_run(
        &self,
        me: &Member,
        job_id: &str,
        record: &RunRecord,
    ) -> Result<(), StoreError> {
        on_backend!(self, "a run's record", record_run(me, job_id, record))
    }

    /// Forgets a run once its result is written (`me.instance`: the instance it ran under,
    /// this process's or a lost one's).
    pub(crate) async fn forget_run(&self, me: &Member, job_id: &str) -> Result<(), StoreError> {
        on_backend!(self, "a run's removal", forget_run(me, job_id))
    }

    /// Runs of `class` on live replicas other than `me`.
    pub(crate) async fn remote_runs(
        &self,
        me: &Member,
        class: &str,
    ) -> Result<Vec<ClusterRun>, StoreError> {
        on_backend!(self, "the cluster's runs", remote_runs(me, class))
    }

    /// Takes or renews this process's lease of its instance name (and keeps its run records
    /// from expiring while it holds it).
    pub(crate) async fn hold_lease(&self, me: &Member) -> Result<Lease, StoreError> {
        on_backend!(self, "the instance's lease", hold_lease(me))
    }

    /// Lets this process's lease lapse now (a graceful stop).
    pub(crate) async fn release_lease(&self, me: &Member) -> Result<(), StoreError> {
        on_backend!(self, "the instance's lease release", release_lease(me))
    }

    /// Sends a command to a replica.
    pub(crate) async fn send_command(
        &self,
        instance: &str,
        command: &Command,
    ) -> Result<(), StoreError> {
        on_backend!(self, "a command", send_command(instance, command))
    }

    /// Takes the commands addressed to this replica (each is taken once).
    pub(crate) async fn take_commands(&self, me: &Member) -> Result<Vec<Command>, StoreError> {
        on_backend!(self, "the commands", take_commands(me))
    }

    /// Acknowledges that `on_stop` finished for a remote stop.
    pub(crate) async fn ack(
        &self,
        stop_id: &str,
        job_id: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        on_backend!(self, "an acknowledgement", ack(stop_id, job_id, error))
    }

    /// The acknowledgements of a stop: job id and error text (empty when fine).
    pub(crate) async fn acks(&self, stop_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        on_backend!(self, "the acknowledgements", acks(stop_id))
    }

    /// The runs an earlier process of this instance left in flight; their records stay until
    /// each is reported and forgotten.
    pub(crate) async fn orphans(
        &self,
        me: &Member,
    ) -> Result<Vec<(String, RunRecord)>, StoreError> {
        on_backend!(self, "a predecessor's runs", orphans(me))
    }

    /// Takes the runs of replicas whose lease lapsed longer than [`LOST_GRACE`] ago: their
    /// lease row becomes a reaper placeholder that lapses like a lease, and their records
    /// stay until each run is reported and forgotten (the taker forgets each with
    /// [`forget_run`](Self::forget_run)); an instance left with no records is forgotten.
    /// With `scan`, instances with run records but no lease row first get a lease that
    /// lapses now.
    pub(crate) async fn take_lost(
        &self,
        me: &Member,
        scan: bool,
    ) -> Result<Vec<(String, String, RunRecord)>, StoreError> {
        on_backend!(self, "lost replicas' runs", take_lost(me, scan, ""), r => {
            relay::take_lost(r, me, scan).await
        })
    }

    /// [`take_lost`](Self::take_lost) among the instances whose names start with `scope`
    /// only: a relay's tenant (`<service>:`) takes no other service's lost runs.
    #[cfg(feature = "relay-server")]
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "redis")),
        allow(unused_variables)
    )]
    pub(crate) async fn take_lost_in(
        &self,
        me: &Member,
        scan: bool,
        scope: &str,
    ) -> Result<Vec<(String, String, RunRecord)>, StoreError> {
        // A relay in front of a relay: its store is a database.
        on_backend!(self, "lost replicas' runs", take_lost(me, scan, scope), _relay => {
            Err(StoreError::config(format!(
                "this needs a database store; this one is {}",
                self.kind()
            )))
        })
    }
}
