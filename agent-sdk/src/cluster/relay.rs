//! Cluster mode through a relay: each operation is sent as one [`ClusterCall`]
//! (`POST /v1/cluster`), and the relay runs it on its own store with that store's primitive,
//! so the guarantees are the store's (in the namespace of the caller's service: see the
//! relay's `relay.rs`). Every call names this process (`Member`), so a retried
//! call acts as the first did (a claim, a lease, a record of our own is ours again).

use serde::{Deserialize, Serialize};

use super::{ClaimValue, Claimed, ClusterRun, Command, Lease, Member, RunRecord};
use crate::store::StoreError;
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

async fn send<T: serde::de::DeserializeOwned>(
    r: &RelayStore,
    call: ClusterCall,
) -> Result<T, StoreError> {
    r.call("cluster", &call).await
}

/// The agent's side of each operation: `<op>(relay, args...)` sends the call named after it,
/// its fields the arguments (owned), and decodes the answer.
macro_rules! relayed {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $variant:ident; )*) => {$(
        pub(super) async fn $name(r: &RelayStore, $($arg: $ty),*) -> Result<$ret, StoreError> {
            send(r, ClusterCall::$variant { $($arg: $arg.to_owned()),* }).await
        }
    )*};
}

relayed! {
    fn claim(me: &Member, class: &str, job_id: &str) -> Claimed = Claim;
    fn renew_claim(me: &Member, class: &str, job_id: &str) -> bool = RenewClaim;
    fn release_claim(me: &Member, class: &str, job_id: &str) -> () = ReleaseClaim;
    fn release_claim_of(class: &str, job_id: &str, server_id: &str) -> () = ReleaseLostClaim;
    fn claim_of(class: &str) -> Option<(ClaimValue, bool)> = ClaimOf;
    fn record_run(me: &Member, job_id: &str, record: &RunRecord) -> () = RecordRun;
    fn forget_run(me: &Member, job_id: &str) -> () = ForgetRun;
    fn remote_runs(me: &Member, class: &str) -> Vec<ClusterRun> = RemoteRuns;
    fn hold_lease(me: &Member) -> Lease = HoldLease;
    fn release_lease(me: &Member) -> () = ReleaseLease;
    fn send_command(instance: &str, command: &Command) -> () = SendCommand;
    fn take_commands(me: &Member) -> Vec<Command> = TakeCommands;
    fn ack(stop_id: &str, job_id: &str, error: &str) -> () = Ack;
    fn acks(stop_id: &str) -> Vec<(String, String)> = Acks;
    fn orphans(me: &Member) -> Vec<(String, RunRecord)> = TakeOrphans;
    fn take_lost(me: &Member, scan: bool) -> Vec<(String, String, RunRecord)> = TakeLost;
}
