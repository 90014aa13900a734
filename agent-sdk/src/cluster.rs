//! Replicas behind one URL acting as one agent, coordinated through the store they share.
//!
//! Everything lives in the Hangfire `hash` table, under keys starting with `jobagent:`:
//!
//! | key | field | value | life |
//! |---|---|---|---|
//! | `jobagent:replicas` | instance | `{"ServerId","Pid"}` | lease, renewed every 3 s |
//! | `jobagent:runs:<instance>` | job id | `{"Class","ServerId","Started"}` | while in flight |
//! | `jobagent:claim:<class>` | `claim` | `{"Instance","ServerId","JobId","Fence"}` | lease, renewed by the holder |
//! | `jobagent:fence` | class | the last fencing token | never expires |
//! | `jobagent:cmd:<instance>` | command id | `{"Action":"stop","JobId","StopId"}` | until taken |
//! | `jobagent:ack:<stop id>` | job id | `on_stop` outcome | short |
//!
//! A replica that dies stops renewing: its singleton claims lapse within [`CLAIM_LEASE`], and
//! after [`REPLICA_LEASE`] plus [`LOST_GRACE`] a surviving replica reports its runs as lost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::Store;

/// How long a singleton claim lives without renewal.
pub(crate) const CLAIM_LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews its claims, and a replica its lease.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a replica's lease lives without renewal.
pub(crate) const REPLICA_LEASE: Duration = Duration::from_secs(15);
/// Extra time before a silent replica's runs are reported lost.
pub(crate) const LOST_GRACE: Duration = Duration::from_secs(10);
/// How often a replica looks for commands addressed to it.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(200);

/// This process as the cluster knows it.
#[derive(Clone, Debug)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunRecord {
    pub(crate) class: String,
    pub(crate) server_id: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) started: u64,
    #[serde(default)]
    pub(crate) action: String,
}

/// A run somewhere in the cluster.
#[derive(Clone, Debug)]
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
}

/// The outcome of a claim attempt.
pub(crate) enum Claimed {
    /// The claim is ours, with its fencing token.
    Yes(u64),
    /// Someone holds it.
    Busy(ClaimValue),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

type Res<T> = Result<T, String>;

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

impl Store {
    fn hash_sql(&self) -> String {
        format!("{}.hash", self.schema)
    }

    /// Claims a singleton class for `job_id`; the fencing token grows with every claim. A
    /// claim held under this instance's own name is taken over: the caller's class is free
    /// locally, so such a claim is stale (a crashed predecessor's, or one this process could
    /// not release while the store was down).
    pub(crate) async fn claim(&self, me: &Member, class: &str, job_id: &str) -> Res<Claimed> {
        let mut client = self.pool.get().await.map_err(e)?;
        let h = self.hash_sql();
        let key = format!("jobagent:claim:{class}");
        let value = serde_json::to_string(&ClaimValue {
            instance: me.instance.clone(),
            server_id: me.server_id.clone(),
            job_id: job_id.to_owned(),
        })
        .map_err(e)?;
        let tx = client.transaction().await.map_err(e)?;
        let won = tx
            .query_opt(
                &format!(
                    "INSERT INTO {h} (\"key\", field, \"value\", expireat) VALUES ($1, 'claim', $2, now() + $3 * interval '1 second') \
                     ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = EXCLUDED.expireat \
                     WHERE {h}.expireat IS NULL OR {h}.expireat < now() \
                     OR {h}.value::jsonb->>'Instance' = $4 RETURNING id"
                ),
                &[&key, &value, &secs(CLAIM_LEASE), &me.instance],
            )
            .await
            .map_err(e)?;
        if won.is_none() {
            let holder: Option<String> = tx
                .query_opt(
                    &format!("SELECT \"value\" FROM {h} WHERE \"key\" = $1 AND field = 'claim'"),
                    &[&key],
                )
                .await
                .map_err(e)?
                .and_then(|r| r.try_get(0).ok().flatten());
            tx.rollback().await.map_err(e)?;
            let holder = holder
                .and_then(|v| serde_json::from_str::<ClaimValue>(&v).ok())
                .unwrap_or(ClaimValue {
                    instance: "?".into(),
                    server_id: String::new(),
                    job_id: String::new(),
                });
            return Ok(Claimed::Busy(holder));
        }
        let fence: Option<String> = tx
            .query_one(
                &format!(
                    "INSERT INTO {h} (\"key\", field, \"value\") VALUES ('jobagent:fence', $1, '1') \
                     ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = ((COALESCE(NULLIF({h}.value, ''), '0'))::bigint + 1)::text \
                     RETURNING \"value\""
                ),
                &[&class],
            )
            .await
            .map_err(e)?
            .try_get(0)
            .ok()
            .flatten();
        tx.commit().await.map_err(e)?;
        Ok(Claimed::Yes(
            fence.and_then(|f| f.parse().ok()).unwrap_or(0),
        ))
    }

    /// Renews a claim we hold; false when it is no longer ours.
    pub(crate) async fn renew_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<bool> {
        let client = self.pool.get().await.map_err(e)?;
        let n = client
            .execute(
                &format!(
                    "UPDATE {} SET expireat = now() + $4 * interval '1 second' WHERE \"key\" = $1 AND field = 'claim' \
                     AND \"value\"::jsonb->>'ServerId' = $2 AND \"value\"::jsonb->>'JobId' = $3",
                    self.hash_sql()
                ),
                &[&format!("jobagent:claim:{class}"), &me.server_id, &job_id, &secs(CLAIM_LEASE)],
            )
            .await
            .map_err(e)?;
        Ok(n == 1)
    }

    /// Releases a claim we hold; the row stays (expired) as the class's last run.
    pub(crate) async fn release_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        client
            .execute(
                &format!(
                    "UPDATE {} SET expireat = now() - interval '1 millisecond' WHERE \"key\" = $1 AND field = 'claim' \
                     AND \"value\"::jsonb->>'ServerId' = $2 AND \"value\"::jsonb->>'JobId' = $3",
                    self.hash_sql()
                ),
                &[&format!("jobagent:claim:{class}"), &me.server_id, &job_id],
            )
            .await
            .map_err(e)?;
        Ok(())
    }

    /// The class's claim: its holder and whether it is live.
    pub(crate) async fn claim_of(&self, class: &str) -> Res<Option<(ClaimValue, bool)>> {
        let client = self.pool.get().await.map_err(e)?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT \"value\", expireat > now() FROM {} WHERE \"key\" = $1 AND field = 'claim'",
                    self.hash_sql()
                ),
                &[&format!("jobagent:claim:{class}")],
            )
            .await
            .map_err(e)?;
        Ok(row.and_then(|r| {
            let value: Option<String> = r.try_get(0).ok().flatten();
            let live: Option<bool> = r.try_get(1).ok().flatten();
            value
                .and_then(|v| serde_json::from_str::<ClaimValue>(&v).ok())
                .map(|c| (c, live.unwrap_or(false)))
        }))
    }

    /// Records a run in flight.
    ///
    /// In cluster mode (`lease`) the replica's lease is renewed first, on the same
    /// connection: a run on record always has a lease that will lapse if this process dies.
    /// (Otherwise a replica killed before its coordinator's first lease write would leave
    /// runs no survivor ever reports.)
    pub(crate) async fn record_run(
        &self,
        me: &Member,
        job_id: &str,
        record: &RunRecord,
        lease: bool,
    ) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        if lease {
            self.write_lease(&client, me).await?;
        }
        let value = serde_json::to_string(record).map_err(e)?;
        crate::store::upsert_hash_fields(
            &client,
            &self.schema,
            &format!("jobagent:runs:{}", me.instance),
            &[job_id],
            &[&value],
            self.expire_secs(),
        )
        .await
    }

    /// Forgets a run once its result is written.
    pub(crate) async fn forget_run(&self, me: &Member, job_id: &str) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE \"key\" = $1 AND field = $2",
                    self.hash_sql()
                ),
                &[&format!("jobagent:runs:{}", me.instance), &job_id],
            )
            .await
            .map_err(e)?;
        Ok(())
    }

    /// Runs of `class` on live replicas other than `me`.
    pub(crate) async fn remote_runs(&self, me: &Member, class: &str) -> Res<Vec<ClusterRun>> {
        let client = self.pool.get().await.map_err(e)?;
        let h = self.hash_sql();
        let rows = client
            .query(
                &format!(
                    "SELECT r.field, runs.field, runs.\"value\" FROM {h} r \
                     JOIN {h} runs ON runs.\"key\" = 'jobagent:runs:' || r.field \
                     WHERE r.\"key\" = 'jobagent:replicas' AND r.expireat > now() AND r.field <> $1 \
                     ORDER BY runs.id"
                ),
                &[&me.instance],
            )
            .await
            .map_err(e)?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let instance: String = row.try_get(0).ok()?;
                let job_id: String = row.try_get(1).ok()?;
                let value: Option<String> = row.try_get(2).ok()?;
                let record: RunRecord = serde_json::from_str(&value?).ok()?;
                (record.class == class).then_some(ClusterRun {
                    instance,
                    job_id,
                    record,
                })
            })
            .collect())
    }

    /// Renews this replica's lease.
    pub(crate) async fn renew_replica(&self, me: &Member) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        self.write_lease(&client, me).await
    }

    async fn write_lease(&self, client: &deadpool_postgres::Client, me: &Member) -> Res<()> {
        let value =
            serde_json::json!({"ServerId": me.server_id, "Pid": std::process::id()}).to_string();
        crate::store::upsert_hash_fields(
            client,
            &self.schema,
            "jobagent:replicas",
            &[&me.instance],
            &[&value],
            secs(REPLICA_LEASE),
        )
        .await
    }

    /// Sends a command to a replica.
    pub(crate) async fn send_command(&self, instance: &str, command: &Command) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        let value = serde_json::to_string(command).map_err(e)?;
        let id = format!("{}:{}", command.stop_id, command.job_id);
        crate::store::upsert_hash_fields(
            &client,
            &self.schema,
            &format!("jobagent:cmd:{instance}"),
            &[&id],
            &[&value],
            3600.0,
        )
        .await
    }

    /// Takes the commands addressed to this replica (each is taken once).
    pub(crate) async fn take_commands(&self, me: &Member) -> Res<Vec<Command>> {
        let client = self.pool.get().await.map_err(e)?;
        let rows = client
            .query(
                &format!(
                    "DELETE FROM {} WHERE \"key\" = $1 RETURNING \"value\"",
                    self.hash_sql()
                ),
                &[&format!("jobagent:cmd:{}", me.instance)],
            )
            .await
            .map_err(e)?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    /// Acknowledges that `on_stop` finished for a remote stop.
    pub(crate) async fn ack(&self, stop_id: &str, job_id: &str, error: &str) -> Res<()> {
        let client = self.pool.get().await.map_err(e)?;
        crate::store::upsert_hash_fields(
            &client,
            &self.schema,
            &format!("jobagent:ack:{stop_id}"),
            &[job_id],
            &[error],
            3600.0,
        )
        .await
    }

    /// The acknowledgements of a stop: job id and error text (empty when fine).
    pub(crate) async fn acks(&self, stop_id: &str) -> Res<Vec<(String, String)>> {
        let client = self.pool.get().await.map_err(e)?;
        let rows = client
            .query(
                &format!(
                    "SELECT field, \"value\" FROM {} WHERE \"key\" = $1",
                    self.hash_sql()
                ),
                &[&format!("jobagent:ack:{stop_id}")],
            )
            .await
            .map_err(e)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let field: String = r.try_get(0).ok()?;
                let value: Option<String> = r.try_get(1).ok()?;
                Some((field, value.unwrap_or_default()))
            })
            .collect())
    }

    /// Takes the runs an earlier process of this instance left in flight.
    pub(crate) async fn take_orphans(&self, me: &Member) -> Res<Vec<(String, RunRecord)>> {
        let client = self.pool.get().await.map_err(e)?;
        let rows = client
            .query(
                &format!(
                    "DELETE FROM {} WHERE \"key\" = $1 AND (\"value\"::jsonb->>'ServerId') IS DISTINCT FROM $2 RETURNING field, \"value\"",
                    self.hash_sql()
                ),
                &[&format!("jobagent:runs:{}", me.instance), &me.server_id],
            )
            .await
            .map_err(e)?;
        Ok(parse_runs(&rows))
    }

    /// Takes the runs of replicas silent for longer than their lease and the grace, and
    /// forgets those replicas. Each run is taken by one replica only.
    pub(crate) async fn take_lost(&self, me: &Member) -> Res<Vec<(String, String, RunRecord)>> {
        let mut client = self.pool.get().await.map_err(e)?;
        let h = self.hash_sql();
        let tx = client.transaction().await.map_err(e)?;
        let dead = tx
            .query(
                &format!(
                    "DELETE FROM {h} WHERE \"key\" = 'jobagent:replicas' AND field <> $1 \
                     AND expireat < now() - $2 * interval '1 second' RETURNING field"
                ),
                &[&me.instance, &secs(LOST_GRACE)],
            )
            .await
            .map_err(e)?;
        let mut lost = Vec::new();
        for row in dead {
            let Ok(instance) = row.try_get::<_, String>(0) else {
                continue;
            };
            let runs = tx
                .query(
                    &format!("DELETE FROM {h} WHERE \"key\" = $1 RETURNING field, \"value\""),
                    &[&format!("jobagent:runs:{instance}")],
                )
                .await
                .map_err(e)?;
            lost.extend(
                parse_runs(&runs)
                    .into_iter()
                    .map(|(id, r)| (instance.clone(), id, r)),
            );
        }
        tx.commit().await.map_err(e)?;
        Ok(lost)
    }
}

fn parse_runs(rows: &[tokio_postgres::Row]) -> Vec<(String, RunRecord)> {
    rows.iter()
        .filter_map(|r| {
            let id: String = r.try_get(0).ok()?;
            let v: Option<String> = r.try_get(1).ok()?;
            serde_json::from_str::<RunRecord>(&v?)
                .ok()
                .map(|rec| (id, rec))
        })
        .collect()
}
