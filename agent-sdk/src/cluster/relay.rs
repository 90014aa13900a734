//! Cluster mode through a relay: each operation is sent as one [`ClusterCall`]
//! (`POST /v1/cluster`), and the relay runs it on its own store with that store's primitive,
//! so the guarantees are the store's. Every call names this process (`Member`), so a retried
//! call acts as the first did (a claim, a lease, a record of our own is ours again).

use serde::{Deserialize, Serialize};

use super::{ClaimValue, Claimed, ClusterRun, Command, Lease, Member, Res, RunRecord};
use crate::store::Store;
use crate::store::relay::RelayStore;

/// One cluster operation, as the relay receives it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ClusterCall {
    Claim {
        me: Member,
        class: String,
        job_id: String,
    },
    RenewClaim {
        me: Member,
        class: String,
        job_id: String,
    },
    ReleaseClaim {
        me: Member,
        class: String,
        job_id: String,
    },
    ReleaseLostClaim {
        class: String,
        job_id: String,
        server_id: String,
    },
    ClaimOf {
        class: String,
    },
    RecordRun {
        me: Member,
        job_id: String,
        record: RunRecord,
    },
    ForgetRun {
        me: Member,
        job_id: String,
    },
    RemoteRuns {
        me: Member,
        class: String,
    },
    HoldLease {
        me: Member,
    },
    ReleaseLease {
        me: Member,
    },
    SendCommand {
        instance: String,
        command: Command,
    },
    TakeCommands {
        me: Member,
    },
    Ack {
        stop_id: String,
        job_id: String,
        error: String,
    },
    Acks {
        stop_id: String,
    },
    TakeOrphans {
        me: Member,
    },
    TakeLost {
        me: Member,
        scan: bool,
    },
}

#[cfg_attr(not(feature = "relay-server"), allow(dead_code))]
impl ClusterCall {
    /// Runs the call on `store` (the relay's side); its answer as JSON.
    pub(crate) async fn run(self, store: &Store) -> Res<serde_json::Value> {
        use ClusterCall as C;
        match self {
            C::Claim { me, class, job_id } => json(store.claim(&me, &class, &job_id).await?),
            C::RenewClaim { me, class, job_id } => {
                json(store.renew_claim(&me, &class, &job_id).await?)
            }
            C::ReleaseClaim { me, class, job_id } => {
                json(store.release_claim(&me, &class, &job_id).await?)
            }
            C::ReleaseLostClaim {
                class,
                job_id,
                server_id,
            } => json(
                store
                    .release_lost_claim(&class, &job_id, &server_id)
                    .await?,
            ),
            C::ClaimOf { class } => json(store.claim_of(&class).await?),
            C::RecordRun { me, job_id, record } => {
                json(store.record_run(&me, &job_id, &record).await?)
            }
            C::ForgetRun { me, job_id } => json(store.forget_run(&me, &job_id).await?),
            C::RemoteRuns { me, class } => json(store.remote_runs(&me, &class).await?),
            C::HoldLease { me } => json(store.hold_lease(&me).await?),
            C::ReleaseLease { me } => json(store.release_lease(&me).await?),
            C::SendCommand { instance, command } => {
                json(store.send_command(&instance, &command).await?)
            }
            C::TakeCommands { me } => json(store.take_commands(&me).await?),
            C::Ack {
                stop_id,
                job_id,
                error,
            } => json(store.ack(&stop_id, &job_id, &error).await?),
            C::Acks { stop_id } => json(store.acks(&stop_id).await?),
            C::TakeOrphans { me } => json(store.take_orphans(&me).await?),
            C::TakeLost { me, scan } => json(store.take_lost(&me, scan).await?),
        }
    }
}

#[cfg_attr(not(feature = "relay-server"), allow(dead_code))]
fn json(value: impl Serialize) -> Res<serde_json::Value> {
    serde_json::to_value(value).map_err(super::e)
}

async fn send<T: serde::de::DeserializeOwned>(r: &RelayStore, call: ClusterCall) -> Res<T> {
    r.call("cluster", &call).await
}

fn member(me: &Member) -> Member {
    me.clone()
}

pub(super) async fn kv_claim(
    r: &RelayStore,
    me: &Member,
    class: &str,
    job_id: &str,
) -> Res<Claimed> {
    let call = ClusterCall::Claim {
        me: member(me),
        class: class.to_owned(),
        job_id: job_id.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_renew_claim(
    r: &RelayStore,
    me: &Member,
    class: &str,
    job_id: &str,
) -> Res<bool> {
    let call = ClusterCall::RenewClaim {
        me: member(me),
        class: class.to_owned(),
        job_id: job_id.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_release_claim(
    r: &RelayStore,
    me: &Member,
    class: &str,
    job_id: &str,
) -> Res<()> {
    let call = ClusterCall::ReleaseClaim {
        me: member(me),
        class: class.to_owned(),
        job_id: job_id.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_release_lost_claim(
    r: &RelayStore,
    class: &str,
    job_id: &str,
    server_id: &str,
) -> Res<()> {
    let call = ClusterCall::ReleaseLostClaim {
        class: class.to_owned(),
        job_id: job_id.to_owned(),
        server_id: server_id.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_claim_of(r: &RelayStore, class: &str) -> Res<Option<(ClaimValue, bool)>> {
    send(
        r,
        ClusterCall::ClaimOf {
            class: class.to_owned(),
        },
    )
    .await
}

pub(super) async fn kv_record_run(
    r: &RelayStore,
    me: &Member,
    job_id: &str,
    record: &RunRecord,
) -> Res<()> {
    let call = ClusterCall::RecordRun {
        me: member(me),
        job_id: job_id.to_owned(),
        record: record.clone(),
    };
    send(r, call).await
}

pub(super) async fn kv_forget_run(r: &RelayStore, me: &Member, job_id: &str) -> Res<()> {
    let call = ClusterCall::ForgetRun {
        me: member(me),
        job_id: job_id.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_remote_runs(
    r: &RelayStore,
    me: &Member,
    class: &str,
) -> Res<Vec<ClusterRun>> {
    let call = ClusterCall::RemoteRuns {
        me: member(me),
        class: class.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_hold_lease(r: &RelayStore, me: &Member) -> Res<Lease> {
    send(r, ClusterCall::HoldLease { me: member(me) }).await
}

pub(super) async fn kv_release_lease(r: &RelayStore, me: &Member) -> Res<()> {
    send(r, ClusterCall::ReleaseLease { me: member(me) }).await
}

pub(super) async fn kv_send_command(r: &RelayStore, instance: &str, command: &Command) -> Res<()> {
    let call = ClusterCall::SendCommand {
        instance: instance.to_owned(),
        command: command.clone(),
    };
    send(r, call).await
}

pub(super) async fn kv_take_commands(r: &RelayStore, me: &Member) -> Res<Vec<Command>> {
    send(r, ClusterCall::TakeCommands { me: member(me) }).await
}

pub(super) async fn kv_ack(r: &RelayStore, stop_id: &str, job_id: &str, error: &str) -> Res<()> {
    let call = ClusterCall::Ack {
        stop_id: stop_id.to_owned(),
        job_id: job_id.to_owned(),
        error: error.to_owned(),
    };
    send(r, call).await
}

pub(super) async fn kv_acks(r: &RelayStore, stop_id: &str) -> Res<Vec<(String, String)>> {
    send(
        r,
        ClusterCall::Acks {
            stop_id: stop_id.to_owned(),
        },
    )
    .await
}

pub(super) async fn kv_take_orphans(r: &RelayStore, me: &Member) -> Res<Vec<(String, RunRecord)>> {
    send(r, ClusterCall::TakeOrphans { me: member(me) }).await
}

pub(super) async fn kv_take_lost(
    r: &RelayStore,
    me: &Member,
    scan: bool,
) -> Res<Vec<(String, String, RunRecord)>> {
    send(
        r,
        ClusterCall::TakeLost {
            me: member(me),
            scan,
        },
    )
    .await
}
