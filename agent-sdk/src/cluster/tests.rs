//! The protocol, tested once on the in-memory store in paused time: every lease lapses
//! exactly when the test says, and a write can be held in flight past one.
//!
//! One delayed-write case covers MySQL and Redis alike: both apply the conditional write's
//! comparison when the write runs (InnoDB evaluates the `WHERE` once it holds the row lock;
//! Redis runs the script whole when it reaches it), which is what the memory store's held
//! write does. The two cases below are the two shapes a delay takes: a renewal stuck behind
//! a lock (MySQL), and a claim queued behind other commands (Redis).

use std::time::Duration;

use tokio::time::advance;

use super::protocol::Cluster;
use super::*;
use crate::store::driver::Driver;
use crate::store::memory::MemoryStore;

const DAYS: Duration = Duration::from_secs(7 * 86_400);

fn member(instance: &str, server_id: &str) -> Member {
    Member {
        instance: instance.to_owned(),
        server_id: server_id.to_owned(),
    }
}

fn record(class: &str, server_id: &str) -> RunRecord {
    RunRecord {
        class: class.to_owned(),
        server_id: server_id.to_owned(),
        started: 1,
        action: String::new(),
        run_id: String::new(),
    }
}

fn yes(c: Claimed) -> u64 {
    match c {
        Claimed::Yes(token) => token,
        Claimed::Busy(by) => panic!("busy: held by {by:?}"),
    }
}

fn busy(c: Claimed) -> ClaimValue {
    match c {
        Claimed::Busy(by) => by,
        Claimed::Yes(token) => panic!("claimed (token {token}), expected busy"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_claim_goes_to_the_next_claimer_with_a_higher_token() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b) = (member("a", "sa"), member("b", "sb"));
    let first = yes(c.claim(&a, "K", "1").await.expect("claim"));
    assert_eq!(
        busy(c.claim(&b, "K", "2").await.expect("claim")).job_id,
        "1"
    );
    advance(CLAIM_LEASE - Duration::from_secs(1)).await;
    assert!(c.renew_claim(&a, "K", "1").await.expect("renew"));
    advance(CLAIM_LEASE - Duration::from_secs(1)).await;
    assert_eq!(
        busy(c.claim(&b, "K", "2").await.expect("claim")).job_id,
        "1"
    );
    advance(Duration::from_secs(2)).await;
    let second = yes(c.claim(&b, "K", "2").await.expect("claim"));
    assert!(second > first, "tokens grow: {first} then {second}");
    assert!(!c.renew_claim(&a, "K", "1").await.expect("renew"));
    let (holder, live) = c.claim_of("K").await.expect("read").expect("a claim");
    assert_eq!((holder.job_id.as_str(), live), ("2", true));
    c.release_claim(&b, "K", "2").await.expect("release");
    let (_, live) = c
        .claim_of("K")
        .await
        .expect("read")
        .expect("kept as the last run");
    assert!(!live);
}

/// MySQL-shaped: the holder's renewal waits (a lock wait) past its lease; another replica
/// claims the class meanwhile. The renewal lands after, and fails: the new holder keeps it.
#[tokio::test(start_paused = true)]
async fn a_renewal_delayed_past_the_lease_is_refused() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b) = (member("a", "sa"), member("b", "sb"));
    yes(c.claim(&a, "K", "1").await.expect("claim"));
    let release = store.hold_next_write();
    let renewal = async { c.renew_claim(&a, "K", "1").await };
    let late = async {
        advance(CLAIM_LEASE + Duration::from_secs(1)).await;
        let won = yes(c.claim(&b, "K", "2").await.expect("claim"));
        let _ = release.send(());
        won
    };
    let (renewed, _) = tokio::join!(renewal, late);
    assert!(!renewed.expect("renewal"), "a late renewal must not win");
    let (holder, live) = c.claim_of("K").await.expect("read").expect("a claim");
    assert_eq!((holder.server_id.as_str(), live), ("sb", true));
}

/// Redis-shaped: a claim read the lapsed claim, then its write queued; another replica's
/// claim lands first. The queued one fails, decides again, and finds the class busy.
#[tokio::test(start_paused = true)]
async fn a_claim_delayed_behind_another_finds_the_class_busy() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b, d) = (member("a", "sa"), member("b", "sb"), member("d", "sd"));
    yes(c.claim(&a, "K", "1").await.expect("claim"));
    advance(CLAIM_LEASE + Duration::from_secs(1)).await;
    let release = store.hold_next_write();
    let queued = async { c.claim(&b, "K", "2").await };
    let first = async {
        tokio::task::yield_now().await;
        let won = yes(c.claim(&d, "K", "3").await.expect("claim"));
        let _ = release.send(());
        won
    };
    let (queued, _) = tokio::join!(queued, first);
    assert_eq!(busy(queued.expect("claim")).server_id, "sd");
}

#[tokio::test(start_paused = true)]
async fn commands_crossing_are_each_taken_once_by_their_replica() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b) = (member("a", "sa"), member("b", "sb"));
    let to = |job: &str| Command {
        action: "stop".into(),
        class: "K".into(),
        job_id: job.into(),
        stop_id: format!("s{job}"),
        console: None,
        param: String::new(),
    };
    let (one, two) = (to("1"), to("2"));
    let (x, y) = tokio::join!(c.send_command("b", &one), c.send_command("a", &two));
    x.expect("send");
    y.expect("send");
    let (for_a, for_b) = tokio::join!(c.take_commands(&a), c.take_commands(&b));
    assert_eq!(for_a.expect("take")[0].job_id, "2");
    assert_eq!(for_b.expect("take")[0].job_id, "1");
    assert!(c.take_commands(&a).await.expect("take").is_empty());
    c.ack("s1", "1", "").await.expect("ack");
    assert_eq!(
        c.acks("s1").await.expect("acks"),
        [("1".to_owned(), String::new())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_instance_name_is_refused_until_the_holder_lapses() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (first, dup) = (member("i", "s1"), member("i", "s2"));
    assert_eq!(c.hold_lease(&first).await.expect("lease"), Lease::Held);
    let Lease::HeldBy(holder) = c.hold_lease(&dup).await.expect("lease") else {
        panic!("a duplicate must not hold the name");
    };
    assert_eq!(holder.server_id, "s1");
    let refused = c.claim(&dup, "K", "1").await.expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("in use by another live process"),
        "{refused}"
    );
    c.record_run(&dup, "1", &record("K", "s2"))
        .await
        .expect_err("a duplicate records nothing");
    advance(REPLICA_LEASE + Duration::from_millis(1)).await;
    assert_eq!(c.hold_lease(&dup).await.expect("lease"), Lease::Held);
    // A graceful stop lets the next process in at once.
    c.release_lease(&dup).await.expect("release");
    assert_eq!(c.hold_lease(&first).await.expect("lease"), Lease::Held);
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_runs_are_taken_once_after_lease_and_grace() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b) = (member("a", "sa"), member("b", "sb"));
    c.record_run(&a, "7", &record("K", "sa"))
        .await
        .expect("record");
    c.hold_lease(&b).await.expect("lease");
    assert_eq!(c.remote_runs(&b, "K").await.expect("runs").len(), 1);
    advance(REPLICA_LEASE + LOST_GRACE - Duration::from_millis(500)).await;
    assert!(c.take_lost(&b, false, "").await.expect("lost").is_empty());
    advance(Duration::from_secs(1)).await;
    let lost = c.take_lost(&b, false, "").await.expect("lost");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].0.as_str(), lost[0].1.as_str()), ("a", "7"));
    assert!(c.take_lost(&b, false, "").await.expect("lost").is_empty());
}

/// A stop in flight is recorded like a run: it is no run of its class to other replicas (no
/// stop or detail finds it), but once its replica is dead it is taken as lost, with the run
/// it stops, so that the stop gets its result.
#[tokio::test(start_paused = true)]
async fn a_stop_in_flight_is_no_run_to_others_and_is_taken_when_its_replica_dies() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b) = (member("a", "sa"), member("b", "sb"));
    let stop = RunRecord {
        action: "stop".to_owned(),
        run_id: "7".to_owned(),
        ..record("K", "sa")
    };
    c.record_run(&a, "7", &record("K", "sa"))
        .await
        .expect("record");
    c.record_run(&a, "s8", &stop).await.expect("record");
    c.hold_lease(&b).await.expect("lease");
    let runs = c.remote_runs(&b, "K").await.expect("runs");
    let ids: Vec<&str> = runs.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(ids, ["7"], "the stop is not a run");
    advance(REPLICA_LEASE + LOST_GRACE + Duration::from_secs(1)).await;
    let mut lost = c.take_lost(&b, false, "").await.expect("lost");
    lost.sort_by(|x, y| x.1.cmp(&y.1));
    let taken: Vec<(&str, bool, &str)> = lost
        .iter()
        .map(|(_, id, r)| (id.as_str(), r.is_stop(), r.run_id.as_str()))
        .collect();
    assert_eq!(taken, [("7", false, ""), ("s8", true, "7")]);
}

/// A reaper takes a dead replica's runs and dies before reporting them: the records stay, and
/// the next reaper takes them once the first one's placeholder lapsed; once reported and
/// forgotten, the dead instance is forgotten too.
#[tokio::test(start_paused = true)]
async fn a_reaper_dying_mid_report_leaves_the_runs_to_the_next() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (a, b, d) = (member("a", "sa"), member("b", "sb"), member("d", "sd"));
    c.record_run(&a, "1", &record("K", "sa"))
        .await
        .expect("record");
    c.record_run(&a, "2", &record("L", "sa"))
        .await
        .expect("record");
    advance(REPLICA_LEASE + LOST_GRACE + Duration::from_secs(1)).await;
    assert_eq!(c.take_lost(&b, false, "").await.expect("lost").len(), 2);
    // `b` dies here. Nobody else takes them while its placeholder is live...
    assert!(c.take_lost(&d, false, "").await.expect("lost").is_empty());
    assert!(
        c.remote_runs(&d, "K").await.expect("runs").is_empty(),
        "a placeholder runs nothing"
    );
    advance(REPLICA_LEASE).await;
    assert!(c.take_lost(&d, false, "").await.expect("lost").is_empty());
    // ...and the next reaper does once it lapsed.
    advance(LOST_GRACE + Duration::from_secs(1)).await;
    let mut lost = c.take_lost(&d, false, "").await.expect("lost");
    lost.sort_by(|x, y| x.1.cmp(&y.1));
    let ids: Vec<&str> = lost.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(ids, ["1", "2"]);
    for (instance, job_id, _) in &lost {
        let owner = member(instance, "sd");
        c.forget_run(&owner, job_id).await.expect("forget");
    }
    advance(REPLICA_LEASE + LOST_GRACE + Duration::from_secs(1)).await;
    assert!(c.take_lost(&d, false, "").await.expect("lost").is_empty());
    assert_eq!(
        store.get("jobagent:replicas", "a").await.expect("get"),
        None
    );
    assert_eq!(
        store.get("jobagent:instances", "a").await.expect("get"),
        None
    );
}

/// A process restarted under the name of one that died with runs in flight reports them,
/// and they stay on record until it forgets each.
#[tokio::test(start_paused = true)]
async fn a_successor_finds_its_predecessors_runs_until_it_forgets_them() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let (old, new) = (member("i", "s1"), member("i", "s2"));
    c.record_run(&old, "1", &record("K", "s1"))
        .await
        .expect("record");
    advance(REPLICA_LEASE + Duration::from_millis(1)).await;
    assert_eq!(c.hold_lease(&new).await.expect("lease"), Lease::Held);
    c.record_run(&new, "2", &record("K", "s2"))
        .await
        .expect("record");
    let orphans = c.orphans(&new).await.expect("orphans");
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].0, "1");
    assert_eq!(
        c.orphans(&new).await.expect("orphans").len(),
        1,
        "kept until forgotten"
    );
    c.forget_run(&new, "1").await.expect("forget");
    assert!(c.orphans(&new).await.expect("orphans").is_empty());
}

/// A live record of another version (here: one written before records had a version) makes
/// this replica refuse to claim or reap, saying to finish the rolling upgrade; a lapsed one
/// is taken over as usual.
#[tokio::test(start_paused = true)]
async fn a_live_record_of_another_version_is_refused() {
    let store = MemoryStore::new();
    let c = Cluster::new(&store, DAYS);
    let me = member("b", "sb");
    let now = store.now_ms().await.expect("clock");
    let old_claim = format!(
        r#"{{"Instance":"a","ServerId":"sa","JobId":"1","Until":{}}}"#,
        now + 5000
    );
    store
        .put("jobagent:claim:K", "claim", &old_claim, None)
        .await
        .expect("put");
    let old_lease = format!(
        r#"{{"Instance":"a","ServerId":"sa","Pid":1,"Until":{}}}"#,
        now + 5000
    );
    store
        .put("jobagent:replicas", "a", &old_lease, None)
        .await
        .expect("put");
    let refused = c.claim(&me, "K", "2").await.expect_err("refused");
    assert_eq!(refused.kind(), crate::store::StoreErrorKind::Config);
    assert!(refused.to_string().contains("finish"), "{refused}");
    assert!(refused.to_string().contains("rolling upgrade"), "{refused}");
    let refused = c.take_lost(&me, true, "").await.expect_err("refused");
    assert!(refused.to_string().contains("rolling upgrade"), "{refused}");
    // The old replica stops: its records lapse, and this one goes on by itself.
    advance(REPLICA_LEASE + LOST_GRACE + Duration::from_secs(1)).await;
    assert!(c.take_lost(&me, false, "").await.expect("lost").is_empty());
    yes(c.claim(&me, "K", "2").await.expect("claim"));
}
