//! Cluster mode on MySQL and Redis: the same records as on PostgreSQL, in the store's hash
//! rows (MySQL's `<prefix>Hash`, Redis hashes `<Prefix>jobagent:...`), with every
//! read-decide-write step taken inside the store's **cluster section**:
//!
//! - MySQL: a lease row, hash `jobagent:cluster-section`, taken by one upsert when absent or
//!   lapsed (`<owner>:<until>` on the server's clock), left by deleting our own row.
//! - Redis: `SET <Prefix>jobagent:cluster-section <owner> NX PX 5000`, left with a compare
//!   and delete.
//!
//! Either is a lease of [`SECTION_HOLD`] (3 s), not a session lock (`GET_LOCK` stays held
//! while a black-holed client's session looks alive to the server, for hours): a holder that
//! vanishes or is cut off holds it at most 3 s, and a waiter waits [`SECTION_WAIT`] (3.5 s),
//! longer than that, before it gives up. The work inside is bounded by [`BODY_WITHIN`]
//! (2.5 s), under the hold, so a live holder does not outlast its lease.
//!
//! Deadlines (`Until`) are milliseconds on the store's own clock (`NOW(3)`, `TIME`), read
//! inside the section after the request was sent, as on PostgreSQL. Fencing tokens come from
//! the store's atomic counter (`LAST_INSERT_ID(expr)` upsert, `HINCRBY`), per class.
//!
//! Everything a reader needs is in the values (`Instance`, `JobId`): MySQL's `Key` holds 100
//! characters and `Field` 40, so a longer name is stored as `~` and its UUID v5 (33
//! characters), and is never read back from the key or field.
//!
//! Every record expires (a Redis TTL is per key, so nothing per run or per process may sit in
//! a key without one): leases, run records, the index of instances and claims live the
//! store's `ExpireAtDays`, renewed while in use (a claim is kept after its run as the class's
//! last one, its deadline in the value); commands and acknowledgements an hour; the section
//! 3 s. Run records are removed when their run ends, so no key grows with the runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CLAIM_LEASE, ClaimValue, Claimed, ClusterRun, Command, Holder, LOST_GRACE, Lease, Member,
    REPLICA_LEASE, Res, RunRecord, millis,
};
#[cfg(feature = "mysql")]
use crate::store::mysql::MysqlStore;
#[cfg(feature = "redis")]
use crate::store::redis::RedisStore;
use crate::store::{Backend, Store};

/// The bound of each cluster operation outside the section.
const OP_WITHIN: Duration = Duration::from_secs(4);
/// How long an operation waits to enter the cluster section: longer than [`SECTION_HOLD`],
/// so a holder that vanished never makes a waiter fail.
const SECTION_WAIT: Duration = Duration::from_millis(3500);
/// How long a section lives without its holder.
const SECTION_HOLD: Duration = Duration::from_secs(3);
/// The bound of the work inside a section (under [`SECTION_HOLD`]).
const BODY_WITHIN: Duration = Duration::from_millis(2500);
/// The bound of leaving a section (it lapses by itself anyway).
const LEAVE_WITHIN: Duration = Duration::from_secs(1);
/// The section's key (a hash on MySQL, a string on Redis).
#[cfg(feature = "redis")]
const SECTION_KEY: &str = "jobagent:cluster-section";
/// Instances that have (or had) run records: what the orphan scan reads.
const INSTANCES_KEY: &str = "jobagent:instances";
const REPLICAS_KEY: &str = "jobagent:replicas";
/// MySQL's `Key nvarchar(100)` and `Field nvarchar(40)` (Hangfire.MySqlStorage's Install.sql).
#[cfg(feature = "mysql")]
const MYSQL_KEY_CHARS: usize = 100;
#[cfg(feature = "mysql")]
const MYSQL_FIELD_CHARS: usize = 40;
/// Bookkeeping that outlives a run (commands, acknowledgements): an hour.
const HOUR: Duration = Duration::from_secs(3600);

/// A lease of an instance name.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct LeaseValue {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    until: i64,
}

/// A claim with its deadline.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ClaimRow {
    #[serde(flatten)]
    claim: ClaimValue,
    #[serde(default)]
    until: i64,
}

/// A run record with its job id.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunRow {
    #[serde(flatten)]
    record: RunRecord,
    job_id: String,
}

/// An acknowledgement of a remote stop.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AckRow {
    job_id: String,
    #[serde(default)]
    error: String,
}

/// The store's primitives.
#[derive(Clone, Copy)]
enum Kv<'a> {
    #[cfg(feature = "mysql")]
    Mysql(&'a MysqlStore),
    #[cfg(feature = "redis")]
    Redis(&'a RedisStore),
}

/// A held cluster section: the store and the owner it was entered as.
struct Section<'a>(Kv<'a>, String);

impl Section<'_> {
    async fn end(self) {
        let Section(kv, owner) = self;
        let leave = async {
            match kv {
                #[cfg(feature = "mysql")]
                Kv::Mysql(m) => m.section_leave(&owner).await,
                #[cfg(feature = "redis")]
                Kv::Redis(r) => r.lock_release(SECTION_KEY, &owner).await,
            }
        };
        let left = tokio::time::timeout(LEAVE_WITHIN, leave)
            .await
            .unwrap_or_else(|_| Err(crate::store::StoreError::unavailable("no answer")));
        if let Err(err) = left {
            tracing::debug!(error = %err, "could not leave the cluster section; it lapses by itself");
        }
    }
}

impl<'a> Kv<'a> {
    fn of(store: &'a Store) -> Res<Self> {
        match store.backend() {
            #[cfg(feature = "mysql")]
            Backend::Mysql(m) => Ok(Kv::Mysql(m)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => Ok(Kv::Redis(r)),
            _ => Err("not a key-value store".to_owned()),
        }
    }

    /// A key as the store can hold it.
    fn key(self, key: String) -> String {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(_) => fit(key, MYSQL_KEY_CHARS),
            #[cfg(feature = "redis")]
            Kv::Redis(_) => key,
        }
    }

    /// A field as the store can hold it.
    fn field(self, field: &str) -> String {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(_) => fit(field.to_owned(), MYSQL_FIELD_CHARS),
            #[cfg(feature = "redis")]
            Kv::Redis(_) => field.to_owned(),
        }
    }

    async fn now_ms(self) -> Res<i64> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.now_ms().await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.now_ms().await.map_err(String::from),
        }
    }

    async fn get(self, key: &str, field: &str) -> Res<Option<String>> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.read_hash(key, field).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.read_hash(key, field).await.map_err(String::from),
        }
    }

    async fn get_all(self, key: &str) -> Res<Vec<(String, String)>> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.read_hash_all(key).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.read_hash_all(key).await.map_err(String::from),
        }
    }

    /// Writes one field; `life` `None` never expires (MySQL: `ExpireAt` NULL; Redis: the
    /// key's TTL removed, so use it only on keys whose every field lives forever).
    async fn put(self, key: &str, field: &str, value: &str, life: Option<Duration>) -> Res<()> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m
                .set_hash(key, &[(field, value)], life)
                .await
                .map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r
                .set_hash(key, &[(field, value)], life)
                .await
                .map_err(String::from),
        }
    }

    async fn del(self, key: &str, field: &str) -> Res<bool> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.del_hash_field(key, field).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.del_hash_field(key, field).await.map_err(String::from),
        }
    }

    async fn take_all(self, key: &str) -> Res<Vec<(String, String)>> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.take_hash(key).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.take_hash(key).await.map_err(String::from),
        }
    }

    async fn expire(self, key: &str, life: Duration) -> Res<()> {
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.expire_hash(key, life).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.expire_hash(key, life).await.map_err(String::from),
        }
    }

    async fn fence(self, class: &str) -> Res<u64> {
        let resource = format!("jobagent:claim:{class}");
        match self {
            #[cfg(feature = "mysql")]
            Kv::Mysql(m) => m.fence(&resource).await.map_err(String::from),
            #[cfg(feature = "redis")]
            Kv::Redis(r) => r.fence(&resource).await.map_err(String::from),
        }
    }

    /// Enters the cluster section, waiting at most [`SECTION_WAIT`].
    async fn section(self) -> Res<Section<'a>> {
        let busy = || {
            format!(
                "the store's cluster section stayed busy for {} ms; retrying",
                SECTION_WAIT.as_millis()
            )
        };
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let entered = match self {
                #[cfg(feature = "mysql")]
                Kv::Mysql(m) => m.section_try(SECTION_HOLD).await?,
                #[cfg(feature = "redis")]
                Kv::Redis(r) => r.set_owner_nx(SECTION_KEY, SECTION_HOLD).await?,
            };
            if let Some(owner) = entered {
                return Ok(Section(self, owner));
            }
            if started.elapsed() >= SECTION_WAIT {
                return Err(busy());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The live lease of `instance`, if any, with the store's now.
    async fn lease_of(self, instance: &str) -> Res<Option<LeaseValue>> {
        Ok(self
            .get(REPLICAS_KEY, &self.field(instance))
            .await?
            .map(|v| serde_json::from_str::<LeaseValue>(&v).unwrap_or_default()))
    }

    /// The other live process holding `me`'s instance name, if any.
    async fn holder_of(self, me: &Member, now: i64) -> Res<Option<Holder>> {
        Ok(self.lease_of(&me.instance).await?.and_then(|l| {
            (l.until > now && !l.server_id.is_empty() && l.server_id != me.server_id).then_some(
                Holder {
                    server_id: l.server_id,
                    pid: l.pid,
                    until: l.until,
                },
            )
        }))
    }

    /// Takes or renews `me`'s lease (inside a section).
    async fn hold_lease_in(self, store: &Store, me: &Member, now: i64) -> Res<Lease> {
        let current = self.lease_of(&me.instance).await?;
        if let Some(l) = &current
            && !l.server_id.is_empty()
            && l.server_id != me.server_id
            && l.until > now
        {
            return Ok(Lease::HeldBy(Holder {
                server_id: l.server_id.clone(),
                pid: l.pid,
                until: l.until,
            }));
        }
        let value = json(&LeaseValue {
            instance: me.instance.clone(),
            server_id: me.server_id.clone(),
            pid: i64::from(std::process::id()),
            until: now + millis(REPLICA_LEASE),
        })?;
        let field = self.field(&me.instance);
        self.put(REPLICAS_KEY, &field, &value, Some(store.expire))
            .await?;
        if current.is_none_or(|l| l.server_id != me.server_id) {
            // The orphan scan's index: instances that may have run records. It expires as
            // their records do (renewed with them in `kv_hold_lease`), never later.
            self.put(INSTANCES_KEY, &field, &me.instance, Some(store.expire))
                .await?;
        }
        Ok(Lease::Held)
    }

    fn runs_key(self, instance: &str) -> String {
        self.key(format!("jobagent:runs:{instance}"))
    }

    fn claim_key(self, class: &str) -> String {
        self.key(format!("jobagent:claim:{class}"))
    }

    async fn claim_row(self, class: &str) -> Res<Option<ClaimRow>> {
        Ok(self
            .get(&self.claim_key(class), "claim")
            .await?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Sets the deadline of `me`'s claim to the store's now plus `ms` (inside a section); the
    /// row lives `life` from now (it is kept after the run as the class's last one).
    async fn set_claim_until(
        self,
        class: &str,
        server_id: &str,
        job_id: &str,
        ms: i64,
        life: Duration,
    ) -> Res<bool> {
        let now = self.now_ms().await?;
        let Some(mut row) = self.claim_row(class).await? else {
            return Ok(false);
        };
        if row.claim.server_id != server_id || row.claim.job_id != job_id {
            return Ok(false);
        }
        row.until = now + ms;
        self.put(&self.claim_key(class), "claim", &json(&row)?, Some(life))
            .await?;
        Ok(true)
    }
}

/// `text`, or `~` and its UUID v5 when it is longer than `max` characters.
#[cfg(feature = "mysql")]
fn fit(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    format!(
        "~{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).simple()
    )
}

fn json(value: &impl Serialize) -> Res<String> {
    serde_json::to_string(value).map_err(super::e)
}

/// Runs `op` within [`OP_WITHIN`].
async fn bounded<T>(what: &str, op: impl Future<Output = Res<T>>) -> Res<T> {
    bounded_by(OP_WITHIN, what, op).await
}

/// Runs `op` within `limit`.
async fn bounded_by<T>(limit: Duration, what: &str, op: impl Future<Output = Res<T>>) -> Res<T> {
    tokio::time::timeout(limit, op).await.map_err(|_| {
        format!(
            "the store did not complete {what} within {} ms",
            limit.as_millis()
        )
    })?
}

/// Runs `body` inside the cluster section (entered, then left whatever `body` returned),
/// `body` within [`BODY_WITHIN`].
macro_rules! in_section {
    ($kv:expr, $what:expr, $body:expr) => {{
        let section = bounded_by(SECTION_WAIT + LEAVE_WITHIN, $what, $kv.section()).await?;
        let out = bounded_by(BODY_WITHIN, $what, $body).await;
        section.end().await;
        out
    }};
}

impl Store {
    pub(super) async fn kv_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<Claimed> {
        let kv = Kv::of(self)?;
        in_section!(kv, "a claim", async {
            let now = kv.now_ms().await?;
            if let Some(holder) = kv.holder_of(me, now).await? {
                return Err(holder.refusal(&me.instance));
            }
            if let Some(row) = kv.claim_row(class).await? {
                let free = row.until < now
                    || row.claim.server_id == me.server_id
                    || (row.claim.instance == me.instance
                        && kv
                            .lease_of(&me.instance)
                            .await?
                            .is_none_or(|l| l.until <= now || l.server_id != row.claim.server_id));
                if !free {
                    return Ok(Claimed::Busy(row.claim));
                }
            }
            let row = ClaimRow {
                claim: ClaimValue {
                    instance: me.instance.clone(),
                    server_id: me.server_id.clone(),
                    job_id: job_id.to_owned(),
                },
                until: now + millis(CLAIM_LEASE),
            };
            kv.put(
                &kv.claim_key(class),
                "claim",
                &json(&row)?,
                Some(self.expire),
            )
            .await?;
            Ok(Claimed::Yes(kv.fence(class).await?))
        })
    }

    pub(super) async fn kv_renew_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<bool> {
        let kv = Kv::of(self)?;
        in_section!(
            kv,
            "a claim's renewal",
            kv.set_claim_until(
                class,
                &me.server_id,
                job_id,
                millis(CLAIM_LEASE),
                self.expire
            )
        )
    }

    pub(super) async fn kv_release_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<()> {
        let kv = Kv::of(self)?;
        in_section!(
            kv,
            "a claim's release",
            kv.set_claim_until(class, &me.server_id, job_id, -1, self.expire)
        )
        .map(drop)
    }

    pub(super) async fn kv_release_lost_claim(
        &self,
        class: &str,
        job_id: &str,
        server_id: &str,
    ) -> Res<()> {
        let kv = Kv::of(self)?;
        in_section!(
            kv,
            "a lost claim's release",
            kv.set_claim_until(class, server_id, job_id, -1, self.expire)
        )
        .map(drop)
    }

    pub(super) async fn kv_claim_of(&self, class: &str) -> Res<Option<(ClaimValue, bool)>> {
        let kv = Kv::of(self)?;
        bounded("a claim's read", async {
            let Some(row) = kv.claim_row(class).await? else {
                return Ok(None);
            };
            let now = kv.now_ms().await?;
            Ok(Some((row.claim, row.until > now)))
        })
        .await
    }

    pub(super) async fn kv_record_run(
        &self,
        me: &Member,
        job_id: &str,
        record: &RunRecord,
    ) -> Res<()> {
        let kv = Kv::of(self)?;
        in_section!(kv, "a run's record", async {
            let now = kv.now_ms().await?;
            if let Lease::HeldBy(holder) = kv.hold_lease_in(self, me, now).await? {
                return Err(holder.refusal(&me.instance));
            }
            let row = RunRow {
                record: record.clone(),
                job_id: job_id.to_owned(),
            };
            kv.put(
                &kv.runs_key(&me.instance),
                &kv.field(job_id),
                &json(&row)?,
                Some(self.expire),
            )
            .await
        })
    }

    /// Puts a run's record back under `instance`, and the instance in the orphan scan's
    /// index (see [`Store::restore_run`]).
    pub(super) async fn kv_restore_run(
        &self,
        instance: &str,
        job_id: &str,
        record: &RunRecord,
    ) -> Res<()> {
        let kv = Kv::of(self)?;
        in_section!(kv, "a lost run's record put back", async {
            let row = RunRow {
                record: record.clone(),
                job_id: job_id.to_owned(),
            };
            kv.put(
                &kv.runs_key(instance),
                &kv.field(job_id),
                &json(&row)?,
                Some(self.expire),
            )
            .await?;
            kv.put(
                INSTANCES_KEY,
                &kv.field(instance),
                instance,
                Some(self.expire),
            )
            .await
        })
    }

    pub(super) async fn kv_forget_run(&self, me: &Member, job_id: &str) -> Res<()> {
        let kv = Kv::of(self)?;
        bounded(
            "a run's removal",
            kv.del(&kv.runs_key(&me.instance), &kv.field(job_id)),
        )
        .await
        .map(drop)
    }

    pub(super) async fn kv_remote_runs(&self, me: &Member, class: &str) -> Res<Vec<ClusterRun>> {
        let kv = Kv::of(self)?;
        bounded("the cluster's runs", async {
            let now = kv.now_ms().await?;
            let mut runs = Vec::new();
            for (_, value) in kv.get_all(REPLICAS_KEY).await? {
                let Ok(lease) = serde_json::from_str::<LeaseValue>(&value) else {
                    continue;
                };
                if lease.until <= now || lease.instance.is_empty() || lease.instance == me.instance
                {
                    continue;
                }
                for (_, value) in kv.get_all(&kv.runs_key(&lease.instance)).await? {
                    let Ok(row) = serde_json::from_str::<RunRow>(&value) else {
                        continue;
                    };
                    if row.record.class == class {
                        runs.push(ClusterRun {
                            instance: lease.instance.clone(),
                            job_id: row.job_id,
                            record: row.record,
                        });
                    }
                }
            }
            Ok(runs)
        })
        .await
    }

    pub(super) async fn kv_hold_lease(&self, me: &Member) -> Res<Lease> {
        let kv = Kv::of(self)?;
        in_section!(kv, "the instance's lease", async {
            let now = kv.now_ms().await?;
            let lease = kv.hold_lease_in(self, me, now).await?;
            if lease == Lease::Held {
                // A run may last longer than the store's expiry; the index of instances with
                // records lives as long as the records.
                kv.expire(&kv.runs_key(&me.instance), self.expire).await?;
                kv.expire(INSTANCES_KEY, self.expire).await?;
            }
            Ok(lease)
        })
    }

    pub(super) async fn kv_release_lease(&self, me: &Member) -> Res<()> {
        let kv = Kv::of(self)?;
        in_section!(kv, "the instance's lease release", async {
            let now = kv.now_ms().await?;
            let Some(mut lease) = kv.lease_of(&me.instance).await? else {
                return Ok(());
            };
            if lease.server_id != me.server_id {
                return Ok(());
            }
            lease.until = now - 1;
            kv.put(
                REPLICAS_KEY,
                &kv.field(&me.instance),
                &json(&lease)?,
                Some(self.expire),
            )
            .await
        })
    }

    pub(super) async fn kv_send_command(&self, instance: &str, command: &Command) -> Res<()> {
        let kv = Kv::of(self)?;
        let id = format!("{}:{}", command.stop_id, command.job_id);
        bounded(
            "a command",
            kv.put(
                &kv.key(format!("jobagent:cmd:{instance}")),
                &kv.field(&id),
                &json(command)?,
                Some(HOUR),
            ),
        )
        .await
    }

    pub(super) async fn kv_take_commands(&self, me: &Member) -> Res<Vec<Command>> {
        let kv = Kv::of(self)?;
        let taken = bounded(
            "the commands",
            kv.take_all(&kv.key(format!("jobagent:cmd:{}", me.instance))),
        )
        .await?;
        Ok(taken
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v).ok())
            .collect())
    }

    pub(super) async fn kv_ack(&self, stop_id: &str, job_id: &str, error: &str) -> Res<()> {
        let kv = Kv::of(self)?;
        let row = AckRow {
            job_id: job_id.to_owned(),
            error: error.to_owned(),
        };
        bounded(
            "an acknowledgement",
            kv.put(
                &kv.key(format!("jobagent:ack:{stop_id}")),
                &kv.field(job_id),
                &json(&row)?,
                Some(HOUR),
            ),
        )
        .await
    }

    pub(super) async fn kv_acks(&self, stop_id: &str) -> Res<Vec<(String, String)>> {
        let kv = Kv::of(self)?;
        let rows = bounded(
            "the acknowledgements",
            kv.get_all(&kv.key(format!("jobagent:ack:{stop_id}"))),
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<AckRow>(&v).ok())
            .map(|a| (a.job_id, a.error))
            .collect())
    }

    pub(super) async fn kv_take_orphans(&self, me: &Member) -> Res<Vec<(String, RunRecord)>> {
        let kv = Kv::of(self)?;
        in_section!(kv, "a predecessor's runs", async {
            let key = kv.runs_key(&me.instance);
            let mut taken = Vec::new();
            for (field, value) in kv.get_all(&key).await? {
                let Ok(row) = serde_json::from_str::<RunRow>(&value) else {
                    continue;
                };
                if row.record.server_id != me.server_id && kv.del(&key, &field).await? {
                    taken.push((row.job_id, row.record));
                }
            }
            Ok(taken)
        })
    }

    pub(super) async fn kv_take_lost(
        &self,
        me: &Member,
        scan: bool,
        scope: &str,
    ) -> Res<Vec<(String, String, RunRecord)>> {
        let kv = Kv::of(self)?;
        in_section!(kv, "lost replicas' runs", async {
            let now = kv.now_ms().await?;
            let mine = kv.field(&me.instance);
            let leases = kv.get_all(REPLICAS_KEY).await?;
            if scan {
                // Instances with run records but no lease row get one that lapses now.
                for (field, instance) in kv.get_all(INSTANCES_KEY).await? {
                    if field == mine
                        || !instance.starts_with(scope)
                        || leases.iter().any(|(f, _)| *f == field)
                    {
                        continue;
                    }
                    if kv.get_all(&kv.runs_key(&instance)).await?.is_empty() {
                        kv.del(INSTANCES_KEY, &field).await?;
                        continue;
                    }
                    let placeholder = LeaseValue {
                        instance,
                        until: now,
                        ..LeaseValue::default()
                    };
                    kv.put(
                        REPLICAS_KEY,
                        &field,
                        &json(&placeholder)?,
                        Some(self.expire),
                    )
                    .await?;
                }
            }
            let mut lost = Vec::new();
            for (field, value) in leases {
                let lease = serde_json::from_str::<LeaseValue>(&value).unwrap_or_default();
                // Only the instances of `scope` (a relay's tenant takes its own lost runs).
                if field == mine
                    || !lease.instance.starts_with(scope)
                    || lease.until >= now - millis(LOST_GRACE)
                {
                    continue;
                }
                if !kv.del(REPLICAS_KEY, &field).await? || lease.instance.is_empty() {
                    continue;
                }
                for (_, value) in kv.take_all(&kv.runs_key(&lease.instance)).await? {
                    if let Ok(row) = serde_json::from_str::<RunRow>(&value) {
                        lost.push((lease.instance.clone(), row.job_id, row.record));
                    }
                }
                kv.del(INSTANCES_KEY, &field).await?;
            }
            Ok(lost)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "mysql")]
    #[test]
    fn long_names_fit_mysql_columns_and_stay_distinct() {
        let short = fit("replica-a".to_owned(), MYSQL_FIELD_CHARS);
        assert_eq!(short, "replica-a");
        let a = fit("x".repeat(41), MYSQL_FIELD_CHARS);
        let b = fit("y".repeat(41), MYSQL_FIELD_CHARS);
        assert_eq!(a.chars().count(), 33);
        assert_ne!(a, b);
        assert_eq!(a, fit("x".repeat(41), MYSQL_FIELD_CHARS), "stable");
    }

    #[test]
    fn records_carry_their_names() {
        let row = RunRow {
            record: RunRecord {
                class: "a::B".into(),
                server_id: "s".into(),
                started: 1,
                action: String::new(),
            },
            job_id: "42".into(),
        };
        let text = json(&row).unwrap_or_default();
        let back: RunRow = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(
            (back.job_id.as_str(), back.record.class.as_str()),
            ("42", "a::B")
        );
    }
}
