//! The cluster protocol, written once over the store's [`Driver`]: claims, leases of instance
//! names, run records, commands, acknowledgements and lost runs (the records are in
//! [`super`]'s table).
//!
//! Every read-decide-write is a conditional write ([`Driver::cas`]) on the value read: a
//! write that lands after its lease lapsed and someone else wrote (an InnoDB lock wait, a
//! queued Redis command, a paused process) fails instead of overwriting, and the step is
//! decided again on what is there now. No section lock is needed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CLAIM_LEASE, ClaimValue, Claimed, ClusterRun, Command, Holder, LOST_GRACE, Lease, Member,
    REPLICA_LEASE, RunRecord, millis,
};
use crate::store::StoreError;
use crate::store::driver::Driver;

/// Leases of instance names.
const REPLICAS_KEY: &str = "jobagent:replicas";
/// Instances that have (or had) run records: what the orphan scan reads.
const INSTANCES_KEY: &str = "jobagent:instances";
/// The claim's field in `jobagent:claim:<class>`.
const CLAIM: &str = "claim";
/// Commands and acknowledgements live an hour.
const HOUR: Duration = Duration::from_secs(3600);
/// How often a step is decided again when its conditional write lost to another writer.
const ATTEMPTS: usize = 4;
/// The version of the records this protocol writes (`"V"`; records without one are version
/// 1, written by the agents that decided inside a cluster section).
pub(crate) const VERSION: u32 = 2;

/// A record's version (absent: 1).
fn version(v: u32) -> u32 {
    v.max(1)
}

/// Why a replica refuses to act beside a live record of another version.
fn other_version(what: &str, v: u32) -> StoreError {
    StoreError::config(format!(
        "the store holds a live {what} written by an agent replica of another version (cluster records v{}, this replica's v{VERSION}): replicas of two versions must not coordinate side by side, so this replica claims and reaps nothing until the rolling upgrade is finished: upgrade or stop the replicas still running the other version",
        version(v)
    ))
}

/// A lease of an instance name (or, with an empty `ServerId`, a placeholder any process of
/// that name may take).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct LeaseRow {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    until: i64,
    #[serde(default)]
    v: u32,
}

impl LeaseRow {
    /// The process holding this lease at `now` when it is live and another's than `me`.
    fn holder(&self, me: &Member, now: i64) -> Option<Holder> {
        (self.until > now && !self.server_id.is_empty() && self.server_id != me.server_id).then(
            || Holder {
                server_id: self.server_id.clone(),
                pid: self.pid,
                until: self.until,
            },
        )
    }
}

/// A claim with its deadline.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ClaimRow {
    #[serde(flatten)]
    claim: ClaimValue,
    #[serde(default)]
    until: i64,
    #[serde(default)]
    v: u32,
}

/// A run record with its job id.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunRow {
    #[serde(flatten)]
    record: RunRecord,
    #[serde(default)]
    job_id: String,
    #[serde(default)]
    v: u32,
}

/// An acknowledgement of a remote stop.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AckRow {
    job_id: String,
    #[serde(default)]
    error: String,
}

fn json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::refused("a cluster record could not be encoded").with_source(e))
}

fn runs_key(instance: &str) -> String {
    format!("jobagent:runs:{instance}")
}

fn claim_key(class: &str) -> String {
    format!("jobagent:claim:{class}")
}

/// A lease row read: its value as stored (what a conditional write compares with) and parsed
/// (a row that does not parse reads as a lapsed placeholder).
fn lease_of(field: &str, raw: &str) -> LeaseRow {
    let mut row: LeaseRow = serde_json::from_str(raw).unwrap_or_default();
    if row.instance.is_empty() {
        // Rows of earlier versions on PostgreSQL name the instance only in the field.
        field.clone_into(&mut row.instance);
    }
    row
}

fn changing(what: &str) -> StoreError {
    StoreError::conflict(format!("{what} kept changing hands; retrying"))
}

/// The protocol on one store: its driver, and how long bookkeeping rows live (the store's
/// `ExpireAtDays`, renewed while in use).
pub(crate) struct Cluster<'a, D> {
    d: &'a D,
    expire: Duration,
}

impl<'a, D: Driver> Cluster<'a, D> {
    pub(crate) fn new(d: &'a D, expire: Duration) -> Self {
        Self { d, expire }
    }

    /// The lease row of `instance`, as stored and parsed.
    async fn lease(&self, instance: &str) -> Result<Option<(String, LeaseRow)>, StoreError> {
        Ok(self.d.get(REPLICAS_KEY, instance).await?.map(|raw| {
            let row = lease_of(instance, &raw);
            (raw, row)
        }))
    }

    /// The other live process holding `me`'s instance name, if any.
    async fn holder_of(&self, me: &Member, now: i64) -> Result<Option<Holder>, StoreError> {
        Ok(self
            .lease(&me.instance)
            .await?
            .and_then(|(_, l)| l.holder(me, now)))
    }

    pub(crate) async fn hold_lease(&self, me: &Member) -> Result<Lease, StoreError> {
        for _ in 0..ATTEMPTS {
            let now = self.d.now_ms().await?;
            let current = self.lease(&me.instance).await?;
            if let Some(holder) = current.as_ref().and_then(|(_, l)| l.holder(me, now)) {
                return Ok(Lease::HeldBy(holder));
            }
            let value = json(&LeaseRow {
                instance: me.instance.clone(),
                server_id: me.server_id.clone(),
                pid: i64::from(std::process::id()),
                until: now + millis(REPLICA_LEASE),
                v: VERSION,
            })?;
            let expected = current.as_ref().map(|(raw, _)| raw.as_str());
            if !self
                .d
                .cas(
                    REPLICAS_KEY,
                    &me.instance,
                    expected,
                    Some(&value),
                    Some(self.expire),
                )
                .await?
            {
                continue;
            }
            if current.is_none_or(|(_, l)| l.server_id != me.server_id) {
                // The orphan scan's index: instances that may have run records.
                self.d
                    .put(INSTANCES_KEY, &me.instance, &me.instance, Some(self.expire))
                    .await?;
            }
            // A run may last longer than the store's expiry: its records, and the index of
            // instances with records, live as long as the lease is held.
            self.d.expire(&runs_key(&me.instance), self.expire).await?;
            self.d.expire(INSTANCES_KEY, self.expire).await?;
            return Ok(Lease::Held);
        }
        Err(changing(&format!(
            "the lease of instance `{}`",
            me.instance
        )))
    }

    pub(crate) async fn release_lease(&self, me: &Member) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let now = self.d.now_ms().await?;
            let Some((raw, mut lease)) = self.lease(&me.instance).await? else {
                return Ok(());
            };
            if lease.server_id != me.server_id {
                return Ok(());
            }
            lease.until = now - 1;
            let value = json(&lease)?;
            if self
                .d
                .cas(
                    REPLICAS_KEY,
                    &me.instance,
                    Some(&raw),
                    Some(&value),
                    Some(self.expire),
                )
                .await?
            {
                return Ok(());
            }
        }
        Err(changing(&format!(
            "the lease of instance `{}`",
            me.instance
        )))
    }

    pub(crate) async fn claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<Claimed, StoreError> {
        let key = claim_key(class);
        for _ in 0..ATTEMPTS {
            let now = self.d.now_ms().await?;
            if let Some(holder) = self.holder_of(me, now).await? {
                return Err(StoreError::conflict(holder.refusal(&me.instance)));
            }
            let current = self.d.get(&key, CLAIM).await?;
            if let Some(row) = current
                .as_deref()
                .and_then(|v| serde_json::from_str::<ClaimRow>(v).ok())
            {
                if row.until >= now && version(row.v) != VERSION {
                    return Err(other_version(&format!("claim of `{class}`"), row.v));
                }
                let free = row.until < now
                    || row.claim.server_id == me.server_id
                    || (row.claim.instance == me.instance
                        && self.lease(&me.instance).await?.is_none_or(|(_, l)| {
                            l.until <= now || l.server_id != row.claim.server_id
                        }));
                if !free {
                    return Ok(Claimed::Busy(row.claim));
                }
            }
            // The token is drawn after the read and before the write: a claim that wins
            // after another read that one's write, so its token is the higher.
            let token = self.d.fence(class).await?;
            let value = json(&ClaimRow {
                claim: ClaimValue {
                    instance: me.instance.clone(),
                    server_id: me.server_id.clone(),
                    job_id: job_id.to_owned(),
                },
                until: now + millis(CLAIM_LEASE),
                v: VERSION,
            })?;
            if self
                .d
                .cas(
                    &key,
                    CLAIM,
                    current.as_deref(),
                    Some(&value),
                    Some(self.expire),
                )
                .await?
            {
                return Ok(Claimed::Yes(token));
            }
        }
        Err(changing(&format!("the claim of `{class}`")))
    }

    /// Sets the deadline of the claim `server_id` holds for `job_id` to the store's now plus
    /// `ms`; false when it is not theirs.
    async fn set_claim_until(
        &self,
        class: &str,
        server_id: &str,
        job_id: &str,
        ms: i64,
    ) -> Result<bool, StoreError> {
        let key = claim_key(class);
        for _ in 0..ATTEMPTS {
            let now = self.d.now_ms().await?;
            let Some(raw) = self.d.get(&key, CLAIM).await? else {
                return Ok(false);
            };
            let Ok(mut row) = serde_json::from_str::<ClaimRow>(&raw) else {
                return Ok(false);
            };
            if row.claim.server_id != server_id || row.claim.job_id != job_id {
                return Ok(false);
            }
            row.until = now + ms;
            let value = json(&row)?;
            if self
                .d
                .cas(&key, CLAIM, Some(&raw), Some(&value), Some(self.expire))
                .await?
            {
                return Ok(true);
            }
        }
        Err(changing(&format!("the claim of `{class}`")))
    }

    pub(crate) async fn renew_claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<bool, StoreError> {
        self.set_claim_until(class, &me.server_id, job_id, millis(CLAIM_LEASE))
            .await
    }

    pub(crate) async fn release_claim(
        &self,
        me: &Member,
        class: &str,
        job_id: &str,
    ) -> Result<(), StoreError> {
        self.release_claim_of(class, job_id, &me.server_id).await
    }

    pub(crate) async fn release_claim_of(
        &self,
        class: &str,
        job_id: &str,
        server_id: &str,
    ) -> Result<(), StoreError> {
        self.set_claim_until(class, server_id, job_id, -1).await?;
        // Replicas waiting for the class look every 100 ms anyway.
        if let Err(err) = self.d.wake(crate::store::driver::CLAIMS, class).await {
            tracing::debug!(class, error = %err, "could not notify the claim's release");
        }
        Ok(())
    }

    pub(crate) async fn claim_of(
        &self,
        class: &str,
    ) -> Result<Option<(ClaimValue, bool)>, StoreError> {
        let Some(row) = self
            .d
            .get(&claim_key(class), CLAIM)
            .await?
            .and_then(|v| serde_json::from_str::<ClaimRow>(&v).ok())
        else {
            return Ok(None);
        };
        let now = self.d.now_ms().await?;
        Ok(Some((row.claim, row.until > now)))
    }

    pub(crate) async fn record_run(
        &self,
        me: &Member,
        job_id: &str,
        record: &RunRecord,
    ) -> Result<(), StoreError> {
        // The lease is ours and live for a while yet (the coordinator renews it every
        // second): no need to write it again, and the record lands sooner.
        let now = self.d.now_ms().await?;
        let ours = self.lease(&me.instance).await?.is_some_and(|(_, l)| {
            l.server_id == me.server_id && l.until - now > millis(REPLICA_LEASE) / 2
        });
        if !ours && let Lease::HeldBy(holder) = self.hold_lease(me).await? {
            return Err(StoreError::conflict(holder.refusal(&me.instance)));
        }
        let row = RunRow {
            record: record.clone(),
            job_id: job_id.to_owned(),
            v: VERSION,
        };
        self.d
            .put(
                &runs_key(&me.instance),
                job_id,
                &json(&row)?,
                Some(self.expire),
            )
            .await
    }

    pub(crate) async fn forget_run(&self, me: &Member, job_id: &str) -> Result<(), StoreError> {
        self.d
            .delete(&runs_key(&me.instance), job_id)
            .await
            .map(drop)
    }

    /// The runs recorded under `instance`, with their job ids (and the values as stored).
    async fn runs_of(&self, instance: &str) -> Result<Vec<(String, String, RunRow)>, StoreError> {
        Ok(self
            .d
            .get_all(&runs_key(instance))
            .await?
            .into_iter()
            .filter_map(|(field, raw)| {
                let mut row: RunRow = serde_json::from_str(&raw).ok()?;
                if row.job_id.is_empty() {
                    // Rows of earlier versions on PostgreSQL name the job only in the field.
                    row.job_id.clone_from(&field);
                }
                Some((field, raw, row))
            })
            .collect())
    }

    pub(crate) async fn remote_runs(
        &self,
        me: &Member,
        class: &str,
    ) -> Result<Vec<ClusterRun>, StoreError> {
        let now = self.d.now_ms().await?;
        let mut runs = Vec::new();
        for (field, raw) in self.d.get_all(REPLICAS_KEY).await? {
            let lease = lease_of(&field, &raw);
            // A placeholder (no process) runs nothing: its runs are being reported lost.
            if lease.until <= now || lease.server_id.is_empty() || lease.instance == me.instance {
                continue;
            }
            for (_, _, row) in self.runs_of(&lease.instance).await? {
                // A stop in flight is no run to stop or to show.
                if row.record.class == class && !row.record.is_stop() {
                    runs.push(ClusterRun {
                        instance: lease.instance.clone(),
                        job_id: row.job_id,
                        record: row.record,
                    });
                }
            }
        }
        Ok(runs)
    }

    pub(crate) async fn send_command(
        &self,
        instance: &str,
        command: &Command,
    ) -> Result<(), StoreError> {
        let id = format!("{}:{}", command.stop_id, command.job_id);
        self.d
            .put(
                &format!("jobagent:cmd:{instance}"),
                &id,
                &json(command)?,
                Some(HOUR),
            )
            .await?;
        // The replica polls for it anyway; the notification only makes it act at once.
        if let Err(err) = self.d.wake(crate::store::driver::COMMANDS, instance).await {
            tracing::debug!(instance, error = %err, "could not notify the replica; it finds the command by polling");
        }
        Ok(())
    }

    pub(crate) async fn take_commands(&self, me: &Member) -> Result<Vec<Command>, StoreError> {
        Ok(self
            .d
            .take_all(&format!("jobagent:cmd:{}", me.instance))
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v).ok())
            .collect())
    }

    pub(crate) async fn ack(
        &self,
        stop_id: &str,
        job_id: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        let row = AckRow {
            job_id: job_id.to_owned(),
            error: error.to_owned(),
        };
        self.d
            .put(
                &format!("jobagent:ack:{stop_id}"),
                job_id,
                &json(&row)?,
                Some(HOUR),
            )
            .await
    }

    pub(crate) async fn acks(&self, stop_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .d
            .get_all(&format!("jobagent:ack:{stop_id}"))
            .await?
            .into_iter()
            .map(
                |(field, value)| match serde_json::from_str::<AckRow>(&value) {
                    Ok(a) => (a.job_id, a.error),
                    // Earlier versions on PostgreSQL: the job id in the field, the error as text.
                    Err(_) => (field, value),
                },
            )
            .collect())
    }

    /// The runs an earlier process of `me`'s instance name left in flight. They stay on
    /// record until each is reported and forgotten: should this process die first, whoever
    /// holds the name next (or a survivor, once this lease lapses) reports them.
    pub(crate) async fn orphans(
        &self,
        me: &Member,
    ) -> Result<Vec<(String, RunRecord)>, StoreError> {
        Ok(self
            .runs_of(&me.instance)
            .await?
            .into_iter()
            .filter(|(_, _, row)| row.record.server_id != me.server_id)
            .map(|(_, _, row)| (row.job_id, row.record))
            .collect())
    }

    pub(crate) async fn take_lost(
        &self,
        me: &Member,
        scan: bool,
        scope: &str,
    ) -> Result<Vec<(String, String, RunRecord)>, StoreError> {
        let now = self.d.now_ms().await?;
        let mut leases = self.d.get_all(REPLICAS_KEY).await?;
        if let Some(other) = leases
            .iter()
            .map(|(f, raw)| lease_of(f, raw))
            .find(|l| l.until > now && !l.server_id.is_empty() && version(l.v) != VERSION)
        {
            return Err(other_version(
                &format!("lease of instance `{}`", other.instance),
                other.v,
            ));
        }
        if scan {
            // Instances with run records but no lease row get one that lapses now.
            for (field, instance) in self.d.get_all(INSTANCES_KEY).await? {
                if instance == me.instance
                    || !instance.starts_with(scope)
                    || leases.iter().any(|(f, _)| *f == field)
                {
                    continue;
                }
                if self.runs_of(&instance).await?.is_empty() {
                    self.d
                        .cas(INSTANCES_KEY, &field, Some(&instance), None, None)
                        .await?;
                    continue;
                }
                let placeholder = json(&LeaseRow {
                    instance,
                    until: now,
                    v: VERSION,
                    ..LeaseRow::default()
                })?;
                if self
                    .d
                    .cas(
                        REPLICAS_KEY,
                        &field,
                        None,
                        Some(&placeholder),
                        Some(self.expire),
                    )
                    .await?
                {
                    leases.push((field, placeholder));
                }
            }
        }
        let mut lost = Vec::new();
        for (field, raw) in leases {
            let lease = lease_of(&field, &raw);
            // Only the instances of `scope` (a relay's tenant takes its own lost runs).
            if lease.instance == me.instance
                || !lease.instance.starts_with(scope)
                || lease.until >= now - millis(LOST_GRACE)
            {
                continue;
            }
            let runs = self.runs_of(&lease.instance).await?;
            if runs.is_empty() {
                // Everything reported and forgotten: the instance is done with.
                if self
                    .d
                    .cas(REPLICAS_KEY, &field, Some(&raw), None, None)
                    .await?
                {
                    self.d.delete(INSTANCES_KEY, &field).await?;
                }
                continue;
            }
            // Taken by a reaper placeholder whose lease lapses like a replica's: the records
            // stay until each run is reported; should this reaper die before, another takes
            // them once the placeholder has lapsed.
            let placeholder = json(&LeaseRow {
                instance: lease.instance.clone(),
                until: now + millis(REPLICA_LEASE),
                v: VERSION,
                ..LeaseRow::default()
            })?;
            if !self
                .d
                .cas(
                    REPLICAS_KEY,
                    &field,
                    Some(&raw),
                    Some(&placeholder),
                    Some(self.expire),
                )
                .await?
            {
                continue;
            }
            lost.extend(
                runs.into_iter()
                    .map(|(_, _, row)| (lease.instance.clone(), row.job_id, row.record)),
            );
        }
        Ok(lost)
    }
}
