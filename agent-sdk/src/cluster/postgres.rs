//! Cluster mode on PostgreSQL: each operation is one SQL statement (or one transaction) on
//! Hangfire's `hash` table; leases are compared on the database's clock; `pg_notify` wakes
//! the other replicas at once.
//!
//! As in the store (see `store/postgres.rs`): every statement is bounded by `Command
//! Timeout` (with a cancel sent to the server past it) and is an unnamed one, and nothing
//! relies on session state, so all of it works behind PgBouncer in transaction pooling.
//! Leases are epoch milliseconds from `now()` (the same in every time zone); the statements
//! that write or compare `expireat` run with `TimeZone` UTC for their own transaction only.

use tokio_postgres::types::Type;

use super::{
    CLAIM_LEASE, ClaimValue, Claimed, ClusterRun, Command, Holder, LOST_GRACE, Lease, Member,
    RENEW_ROWS_SLACK_SECS, REPLICA_LEASE, Res, RunRecord, e, millis,
};
use crate::store::Store;
use crate::store::postgres::in_utc;

/// The database's clock, in milliseconds since the Unix epoch (the unit of `Until`).
const DB_NOW_MS: &str = "(extract(epoch from now()) * 1000)::bigint";

/// A lease row's deadline (`Until`, in ms); for rows of earlier agent versions, which kept the
/// lease in `expireat`, that instead (naive UTC or `timestamptz`: `extract(epoch ..)` reads
/// both as UTC); 0 (lapsed) when neither is there.
fn until_of(alias: &str) -> String {
    format!(
        "COALESCE(({alias}.\"value\"::jsonb->>'Until')::bigint, \
         (extract(epoch from {alias}.expireat) * 1000)::bigint, 0)"
    )
}

impl Store {
    fn hash_sql(&self) -> Res<String> {
        Ok(format!("{}.hash", self.pg()?.schema))
    }

    /// Claims a singleton class for `job_id`; the fencing token grows with every claim. A
    /// live claim is taken over only when it is this process's own (one it could not release
    /// while the store was down: the class is free locally) or a predecessor's of this
    /// instance name that no longer holds the name's lease (it crashed). A process that is a
    /// duplicate of a live process's instance name gets an error naming it.
    pub(super) async fn pg_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<Claimed> {
        let conn = self.pg()?.conn().await?;
        let h = self.hash_sql()?;
        let key = format!("jobagent:claim:{class}");
        let until = until_of("t");
        let lease_until = until_of("l");
        conn.transaction(async {
            // A process that is a duplicate of a live process's instance name claims nothing.
            if let Some(holder) = holder_of(&conn, &h, me).await? {
                return Ok(Err(holder.refusal(&me.instance)));
            }
            let won = conn
                .query_typed_opt(
                    &format!(
                        "INSERT INTO {h} AS t (\"key\", field, \"value\", expireat) VALUES ($1, 'claim', \
                         jsonb_build_object('Instance', $2::text, 'ServerId', $3::text, 'JobId', $4::text, \
                         'Until', {DB_NOW_MS} + $5::bigint)::text, NULL) \
                         ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = NULL \
                         WHERE {until} < {DB_NOW_MS} OR t.\"value\"::jsonb->>'ServerId' = $3 \
                         OR (t.\"value\"::jsonb->>'Instance' = $2 AND NOT EXISTS (SELECT 1 FROM {h} l \
                         WHERE l.\"key\" = 'jobagent:replicas' AND l.field = $2 AND {lease_until} > {DB_NOW_MS} \
                         AND l.\"value\"::jsonb->>'ServerId' = t.\"value\"::jsonb->>'ServerId')) RETURNING id"
                    ),
                    &[
                        (&key, Type::TEXT),
                        (&me.instance, Type::TEXT),
                        (&me.server_id, Type::TEXT),
                        (&job_id, Type::TEXT),
                        (&millis(CLAIM_LEASE), Type::INT8),
                    ],
                )
                .await
                .map_err(e)?;
            if won.is_none() {
                let holder: Option<String> = conn
                    .query_typed_opt(
                        &format!("SELECT \"value\" FROM {h} WHERE \"key\" = $1 AND field = 'claim'"),
                        &[(&key, Type::TEXT)],
                    )
                    .await
                    .map_err(e)?
                    .and_then(|r| r.try_get(0).ok().flatten());
                let holder = holder
                    .and_then(|v| serde_json::from_str::<ClaimValue>(&v).ok())
                    .unwrap_or(ClaimValue {
                        instance: "?".into(),
                        server_id: String::new(),
                        job_id: String::new(),
                    });
                return Ok(Ok(Claimed::Busy(holder)));
            }
            let fence: Option<String> = conn
                .query_typed_one(
                    &format!(
                        "INSERT INTO {h} AS t (\"key\", field, \"value\", expireat) VALUES ('jobagent:fence', $1, '1', NULL) \
                         ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = ((COALESCE(NULLIF(t.value, ''), '0'))::bigint + 1)::text, \
                         expireat = NULL RETURNING \"value\""
                    ),
                    &[(&class, Type::TEXT)],
                )
                .await
                .map_err(e)?
                .try_get(0)
                .ok()
                .flatten();
            Ok::<_, String>(Ok(Claimed::Yes(
                fence.and_then(|f| f.parse().ok()).unwrap_or(0),
            )))
        })
        .await?
    }

    /// Renews a claim we hold; false when it is no longer ours.
    pub(super) async fn pg_renew_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<bool> {
        self.set_claim_until(me, class, job_id, millis(CLAIM_LEASE))
            .await
    }

    /// Releases a claim we hold: its lease lapses now, and the row stays (with no
    /// `expireat`, so Hangfire keeps it) as the class's last run.
    pub(super) async fn pg_release_claim(&self, me: &Member, class: &str, job_id: &str) -> Res<()> {
        self.set_claim_until(me, class, job_id, -1).await?;
        self.notify_claim(class).await;
        Ok(())
    }

    /// Tells replicas waiting for `class` (runs queued behind it, a `replace`) that its claim
    /// is free; they look every 100 ms anyway.
    async fn notify_claim(&self, class: &str) {
        let sent = async {
            let conn = self.pg()?.conn().await?;
            conn.bound(conn.execute_typed(
                "SELECT pg_notify($1, $2)",
                &[
                    (&crate::store::listen::CLAIMS, Type::TEXT),
                    (&class, Type::TEXT),
                ],
            ))
            .await
        };
        if let Err(err) = sent.await {
            tracing::debug!(class, error = %err, "could not notify the claim's release");
        }
    }

    /// Lapses the claim a process that is gone held for a run just reported lost, so the class
    /// is free at once (not when the claim would have lapsed) and a stop of it says it has
    /// already stopped instead of stopping a run that no longer exists.
    pub(super) async fn pg_release_lost_claim(
        &self,
        class: &str,
        job_id: &str,
        server_id: &str,
    ) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        conn.bound(conn.execute_typed(
            &format!(
                "UPDATE {} SET \"value\" = jsonb_set(\"value\"::jsonb, '{{Until}}', to_jsonb({DB_NOW_MS} - 1))::text, \
                 expireat = NULL WHERE \"key\" = $1 AND field = 'claim' \
                 AND \"value\"::jsonb->>'ServerId' = $2 AND \"value\"::jsonb->>'JobId' = $3",
                self.hash_sql()?
            ),
            &[
                (&format!("jobagent:claim:{class}"), Type::TEXT),
                (&server_id, Type::TEXT),
                (&job_id, Type::TEXT),
            ],
        ))
        .await?;
        drop(conn);
        self.notify_claim(class).await;
        Ok(())
    }

    /// Sets the deadline of a claim we hold to the database's now plus `ms`.
    async fn set_claim_until(&self, me: &Member, class: &str, job_id: &str, ms: i64) -> Res<bool> {
        let conn = self.pg()?.conn().await?;
        let n = conn
            .bound(conn.execute_typed(
                &format!(
                    "UPDATE {} SET \"value\" = jsonb_set(\"value\"::jsonb, '{{Until}}', to_jsonb({DB_NOW_MS} + $4::bigint))::text, \
                     expireat = NULL WHERE \"key\" = $1 AND field = 'claim' \
                     AND \"value\"::jsonb->>'ServerId' = $2 AND \"value\"::jsonb->>'JobId' = $3",
                    self.hash_sql()?
                ),
                &[
                    (&format!("jobagent:claim:{class}"), Type::TEXT),
                    (&me.server_id, Type::TEXT),
                    (&job_id, Type::TEXT),
                    (&ms, Type::INT8),
                ],
            ))
            .await?;
        Ok(n == 1)
    }

    /// The class's claim: its holder and whether it is live.
    pub(super) async fn pg_claim_of(&self, class: &str) -> Res<Option<(ClaimValue, bool)>> {
        let conn = self.pg()?.conn().await?;
        let row = conn
            .bound(conn.query_typed_opt(
                &format!(
                    "SELECT t.\"value\", {} > {DB_NOW_MS} FROM {} t WHERE t.\"key\" = $1 AND t.field = 'claim'",
                    until_of("t"),
                    self.hash_sql()?
                ),
                &[(&format!("jobagent:claim:{class}"), Type::TEXT)],
            ))
            .await?;
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
    /// The process's lease of its instance name is taken or renewed first, on the same
    /// connection: a run on record always has a lease that will lapse if this process dies
    /// (otherwise a replica killed before its coordinator's first lease write would leave runs
    /// no survivor ever reports). A duplicate of a live process's instance name records
    /// nothing: that process, or its successor, would report the run as its own lost run.
    pub(super) async fn pg_record_run(
        &self,
        me: &Member,
        job_id: &str,
        record: &RunRecord,
    ) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        if let Lease::HeldBy(holder) = conn.bound(self.hold_lease_on(&conn, me)).await? {
            return Err(holder.refusal(&me.instance));
        }
        let value = serde_json::to_string(record).map_err(e)?;
        conn.bound(crate::store::postgres::upsert_hash_fields(
            &conn,
            &self.pg()?.schema,
            &format!("jobagent:runs:{}", me.instance),
            &[job_id],
            &[&value],
            self.expire_secs(),
        ))
        .await
        .map_err(String::from)
    }

    /// Puts a run's record back under `instance` (see [`Store::restore_run`]).
    pub(super) async fn pg_restore_run(
        &self,
        instance: &str,
        job_id: &str,
        record: &RunRecord,
    ) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        let value = serde_json::to_string(record).map_err(e)?;
        conn.bound(crate::store::postgres::upsert_hash_fields(
            &conn,
            &self.pg()?.schema,
            &format!("jobagent:runs:{instance}"),
            &[job_id],
            &[&value],
            self.expire_secs(),
        ))
        .await
        .map_err(String::from)
    }

    /// Forgets a run once its result is written.
    pub(super) async fn pg_forget_run(&self, me: &Member, job_id: &str) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        conn.bound(conn.execute_typed(
            &format!(
                "DELETE FROM {} WHERE \"key\" = $1 AND field = $2",
                self.hash_sql()?
            ),
            &[
                (&format!("jobagent:runs:{}", me.instance), Type::TEXT),
                (&job_id, Type::TEXT),
            ],
        ))
        .await?;
        Ok(())
    }

    /// Runs of `class` on live replicas other than `me`.
    pub(super) async fn pg_remote_runs(&self, me: &Member, class: &str) -> Res<Vec<ClusterRun>> {
        let conn = self.pg()?.conn().await?;
        let h = self.hash_sql()?;
        let until = until_of("r");
        let rows = conn
            .bound(conn.query_typed(
                &format!(
                    "SELECT r.field, runs.field, runs.\"value\" FROM {h} r \
                     JOIN {h} runs ON runs.\"key\" = 'jobagent:runs:' || r.field \
                     WHERE r.\"key\" = 'jobagent:replicas' AND {until} > {DB_NOW_MS} AND r.field <> $1 \
                     ORDER BY runs.id"
                ),
                &[(&me.instance, Type::TEXT)],
            ))
            .await?;
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

    /// Takes or renews this process's lease of its instance name and, when it is ours, keeps
    /// the `expireat` of its run records out of Hangfire's reach (a run may last longer than
    /// `ExpireAtDays`).
    pub(super) async fn pg_hold_lease(&self, me: &Member) -> Res<Lease> {
        let conn = self.pg()?.conn().await?;
        let lease = conn.bound(self.hold_lease_on(&conn, me)).await?;
        if lease != Lease::Held {
            return Ok(lease);
        }
        let sql = format!(
            "UPDATE {} SET expireat = now() + $2::float8 * interval '1 second' WHERE \"key\" = $1 \
             AND (expireat IS NULL OR expireat < now() + ($2::float8 - $3::float8) * interval '1 second')",
            self.hash_sql()?
        );
        conn.bound(in_utc(
            &conn,
            conn.execute_typed(
                &sql,
                &[
                    (&format!("jobagent:runs:{}", me.instance), Type::TEXT),
                    (&self.expire_secs(), Type::FLOAT8),
                    (&RENEW_ROWS_SLACK_SECS, Type::FLOAT8),
                ],
            ),
        ))
        .await?;
        Ok(Lease::Held)
    }

    /// Lets this process's lease lapse now (a graceful stop: a successor of the same name
    /// need not wait for it).
    pub(super) async fn pg_release_lease(&self, me: &Member) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        conn.bound(conn.execute_typed(
            &format!(
                "UPDATE {} SET \"value\" = jsonb_set(\"value\"::jsonb, '{{Until}}', to_jsonb({DB_NOW_MS} - 1))::text \
                 WHERE \"key\" = 'jobagent:replicas' AND field = $1 AND \"value\"::jsonb->>'ServerId' = $2",
                self.hash_sql()?
            ),
            &[(&me.instance, Type::TEXT), (&me.server_id, Type::TEXT)],
        ))
        .await?;
        Ok(())
    }

    /// Writes this process's lease, `Until` = the database's now + [`REPLICA_LEASE`] (the
    /// row's `expireat` is the store's `ExpireAtDays` ahead), unless another process holds a
    /// live lease of the same name: then says who.
    async fn hold_lease_on(&self, client: &tokio_postgres::Client, me: &Member) -> Res<Lease> {
        let until = until_of("t");
        let sql = format!(
            "INSERT INTO {} AS t (\"key\", field, \"value\", expireat) VALUES ('jobagent:replicas', $1, \
             jsonb_build_object('ServerId', $2::text, 'Pid', $3::bigint, 'Until', {DB_NOW_MS} + $4::bigint)::text, \
             now() + $5 * interval '1 second') \
             ON CONFLICT (\"key\", field) DO UPDATE SET \"value\" = EXCLUDED.value, expireat = EXCLUDED.expireat \
             WHERE COALESCE(t.\"value\"::jsonb->>'ServerId', '') IN ('', $2) OR {until} < {DB_NOW_MS} \
             RETURNING t.id",
            self.hash_sql()?
        );
        let pid = i64::from(std::process::id());
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 5] = [
            (&me.instance, Type::TEXT),
            (&me.server_id, Type::TEXT),
            (&pid, Type::INT8),
            (&millis(REPLICA_LEASE), Type::INT8),
            (&self.expire_secs(), Type::FLOAT8),
        ];
        // Twice: the holder's lease may lapse between the write and the look-up.
        for _ in 0..2 {
            let row = in_utc(client, client.query_typed_opt(&sql, &params))
                .await
                .map_err(e)?;
            if row.is_some() {
                return Ok(Lease::Held);
            }
            if let Some(holder) = holder_of(client, &self.hash_sql()?, me).await? {
                return Ok(Lease::HeldBy(holder));
            }
        }
        Err(format!(
            "the lease of instance `{}` kept changing hands; retrying",
            me.instance
        ))
    }

    /// Sends a command to a replica.
    pub(super) async fn pg_send_command(&self, instance: &str, command: &Command) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        let value = serde_json::to_string(command).map_err(e)?;
        let id = format!("{}:{}", command.stop_id, command.job_id);
        conn.bound(crate::store::postgres::upsert_hash_fields(
            &conn,
            &self.pg()?.schema,
            &format!("jobagent:cmd:{instance}"),
            &[&id],
            &[&value],
            3600.0,
        ))
        .await?;
        // The replica polls for it anyway; the notification only makes it act at once.
        if let Err(err) = conn
            .bound(conn.execute_typed(
                "SELECT pg_notify($1, $2)",
                &[
                    (&crate::store::listen::COMMANDS, Type::TEXT),
                    (&instance, Type::TEXT),
                ],
            ))
            .await
        {
            tracing::debug!(instance, error = %err, "could not notify the replica; it finds the command by polling");
        }
        Ok(())
    }

    /// Takes the commands addressed to this replica (each is taken once).
    pub(super) async fn pg_take_commands(&self, me: &Member) -> Res<Vec<Command>> {
        let conn = self.pg()?.conn().await?;
        let rows = conn
            .bound(conn.query_typed(
                &format!(
                    "DELETE FROM {} WHERE \"key\" = $1 RETURNING \"value\"",
                    self.hash_sql()?
                ),
                &[(&format!("jobagent:cmd:{}", me.instance), Type::TEXT)],
            ))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    /// Acknowledges that `on_stop` finished for a remote stop.
    pub(super) async fn pg_ack(&self, stop_id: &str, job_id: &str, error: &str) -> Res<()> {
        let conn = self.pg()?.conn().await?;
        conn.bound(crate::store::postgres::upsert_hash_fields(
            &conn,
            &self.pg()?.schema,
            &format!("jobagent:ack:{stop_id}"),
            &[job_id],
            &[error],
            3600.0,
        ))
        .await
        .map_err(String::from)
    }

    /// The acknowledgements of a stop: job id and error text (empty when fine).
    pub(super) async fn pg_acks(&self, stop_id: &str) -> Res<Vec<(String, String)>> {
        let conn = self.pg()?.conn().await?;
        let rows = conn
            .bound(conn.query_typed(
                &format!(
                    "SELECT field, \"value\" FROM {} WHERE \"key\" = $1",
                    self.hash_sql()?
                ),
                &[(&format!("jobagent:ack:{stop_id}"), Type::TEXT)],
            ))
            .await?;
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
    pub(super) async fn pg_take_orphans(&self, me: &Member) -> Res<Vec<(String, RunRecord)>> {
        let conn = self.pg()?.conn().await?;
        let rows = conn
            .bound(conn.query_typed(
                &format!(
                    "DELETE FROM {} WHERE \"key\" = $1 AND (\"value\"::jsonb->>'ServerId') IS DISTINCT FROM $2 RETURNING field, \"value\"",
                    self.hash_sql()?
                ),
                &[
                    (&format!("jobagent:runs:{}", me.instance), Type::TEXT),
                    (&me.server_id, Type::TEXT),
                ],
            ))
            .await?;
        Ok(parse_runs(&rows))
    }

    /// Takes the runs of replicas whose lease lapsed longer than [`LOST_GRACE`] ago, and
    /// forgets those replicas. Each run is taken by one replica only.
    ///
    /// With `scan`, first gives every instance that has run records but no lease row a lease
    /// that lapses now (its row was deleted: by hand, or by Hangfire's expiration of an
    /// earlier agent version's lease), so its runs are taken [`LOST_GRACE`] later, unless
    /// the instance renews its lease meanwhile. The scan reads the whole `hash` table (a key
    /// prefix cannot use its index in every collation), hence only every
    /// [`ORPHAN_SCAN_EVERY`]. Only instances whose names start with `scope` are looked at
    /// (empty: all; a relay's tenant: its own).
    pub(super) async fn pg_take_lost(
        &self,
        me: &Member,
        scan: bool,
        scope: &str,
    ) -> Res<Vec<(String, String, RunRecord)>> {
        let conn = self.pg()?.conn().await?;
        let h = self.hash_sql()?;
        conn.transaction(async {
            if scan {
                conn.execute_typed(
                    &format!(
                        "INSERT INTO {h} (\"key\", field, \"value\", expireat) \
                         SELECT DISTINCT 'jobagent:replicas', substr(r.\"key\", 15), \
                         jsonb_build_object('ServerId', ''::text, 'Pid', 0, 'Until', {DB_NOW_MS})::text, \
                         now() + $2 * interval '1 second' \
                         FROM {h} r WHERE r.\"key\" LIKE 'jobagent:runs:%' AND substr(r.\"key\", 15) <> $1 \
                         AND NOT EXISTS (SELECT 1 FROM {h} l WHERE l.\"key\" = 'jobagent:replicas' \
                         AND l.field = substr(r.\"key\", 15)) \
                         AND left(substr(r.\"key\", 15), length($3)) = $3 \
                         ON CONFLICT (\"key\", field) DO NOTHING"
                    ),
                    &[
                        (&me.instance, Type::TEXT),
                        (&self.expire_secs(), Type::FLOAT8),
                        (&scope, Type::TEXT),
                    ],
                )
                .await
                .map_err(e)?;
            }
            let dead = conn
                .query_typed(
                    &format!(
                        "DELETE FROM {h} t WHERE t.\"key\" = 'jobagent:replicas' AND t.field <> $1 \
                         AND {} < {DB_NOW_MS} - $2::bigint AND left(t.field, length($3)) = $3 \
                         RETURNING t.field",
                        until_of("t")
                    ),
                    &[
                        (&me.instance, Type::TEXT),
                        (&millis(LOST_GRACE), Type::INT8),
                        (&scope, Type::TEXT),
                    ],
                )
                .await
                .map_err(e)?;
            let mut lost = Vec::new();
            for row in dead {
                let Ok(instance) = row.try_get::<_, String>(0) else {
                    continue;
                };
                let runs = conn
                    .query_typed(
                        &format!("DELETE FROM {h} WHERE \"key\" = $1 RETURNING field, \"value\""),
                        &[(&format!("jobagent:runs:{instance}"), Type::TEXT)],
                    )
                    .await
                    .map_err(e)?;
                lost.extend(
                    parse_runs(&runs)
                        .into_iter()
                        .map(|(id, r)| (instance.clone(), id, r)),
                );
            }
            Ok::<_, String>(lost)
        })
        .await
        .map_err(String::from)
    }
}

/// The other live process holding `me`'s instance name, if any.
async fn holder_of(client: &tokio_postgres::Client, h: &str, me: &Member) -> Res<Option<Holder>> {
    let row = client
        .query_typed_opt(
            &format!(
                "SELECT t.\"value\"::jsonb->>'ServerId', (t.\"value\"::jsonb->>'Pid')::bigint, {} FROM {h} t \
                 WHERE t.\"key\" = 'jobagent:replicas' AND t.field = $1 AND {} > {DB_NOW_MS}",
                until_of("t"),
                until_of("t")
            ),
            &[(&me.instance, Type::TEXT)],
        )
        .await
        .map_err(e)?;
    Ok(row.and_then(|r| {
        let server_id: String = r.try_get::<_, Option<String>>(0).ok().flatten()?;
        let pid: i64 = r.try_get::<_, Option<i64>>(1).ok().flatten().unwrap_or(0);
        let until: i64 = r.try_get::<_, Option<i64>>(2).ok().flatten().unwrap_or(0);
        (!server_id.is_empty() && server_id != me.server_id).then_some(Holder {
            server_id,
            pid,
            until,
        })
    }))
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
