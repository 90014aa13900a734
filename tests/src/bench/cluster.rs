//! The cross-replica stop scenario: how long after replica A answers a stop the run it
//! stopped on replica B has its result in the store, with the command reaching B by
//! PostgreSQL LISTEN/NOTIFY (`JOBAGENT_CLUSTER_NOTIFY=on`) and, as the same-run baseline, by
//! B's poll alone (`JOBAGENT_CLUSTER_NOTIFY=off`).
//!
//! Each mode has its own pair of example-service processes (A and B, cluster mode, distinct
//! `JOBAGENT_INSTANCE`, same `JOBAGENT_PATH`) on its own fresh database of the store, so the
//! pairs share nothing but the PostgreSQL server. Samples alternate between the pairs.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::center::Center;
use tests::pg::TestDb;
use tokio_postgres::{Client, Statement};

use crate::bench::proc::{self, Server};
use crate::bench::scenarios::{Report, Settings, TRANSIENT, progress};
use crate::bench::stats::{Row, Target, Unit, median, percentile_sorted};

/// How often the store is polled for the stopped run's result.
const POLL: Duration = Duration::from_millis(2);
/// The longest any one wait of a sample may take.
const WAIT: Duration = Duration::from_secs(10);
/// The stopped job: the demo transient job sleeping (cancellably, `cx.sleep`) for a minute.
const SLEEP_MS: u64 = 60_000;

/// One pair of replicas on one database.
struct Pair {
    mode: &'static str,
    a: Server,
    b: Server,
    b_name: String,
    a_center: Center,
    b_center: Center,
    /// A connection of its own for polling, and its statements.
    poll: Client,
    has_key: Statement,
    runs_on_b: Statement,
    // Dropped last: the processes above are killed first.
    db: TestDb,
}

async fn start_replica(s: &Settings, env: Vec<(&'static str, String)>) -> Result<Server, String> {
    let bin = s.agent_bin.clone();
    tokio::task::spawn_blocking(move || proc::start_agent(&bin, &env))
        .await
        .map_err(|e| format!("start task: {e}"))?
}

impl Pair {
    async fn start(s: &Settings, notify: bool) -> Result<Self, String> {
        let mode = if notify { "on" } else { "off" };
        let db = TestDb::try_new().await?;
        let env = |instance: &str| {
            vec![
                ("RUST_LOG", s.agent_log.clone()),
                ("JOBAGENT_CLUSTER", "on".to_owned()),
                ("JOBAGENT_CLUSTER_NOTIFY", mode.to_owned()),
                ("JOBAGENT_STORE", db.connection_string()),
                ("JOBAGENT_STORE_SCHEMA", db.schema().to_owned()),
                ("JOBAGENT_INSTANCE", instance.to_owned()),
                ("JOBAGENT_PATH", "/jobagent".to_owned()),
            ]
        };
        let (a_name, b_name) = (
            format!("bench-a-notify-{mode}"),
            format!("bench-b-notify-{mode}"),
        );
        let a = start_replica(s, env(&a_name)).await?;
        let b = start_replica(s, env(&b_name)).await?;
        let poll = db.connect().await;
        let hash = db.table("hash");
        let has_key = poll
            .prepare(&format!("SELECT 1 FROM {hash} WHERE key = $1 LIMIT 1"))
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        let runs_on_b = poll
            .prepare(&format!(
                "SELECT 1 FROM {hash} WHERE key = $1 AND field = $2 LIMIT 1"
            ))
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        Ok(Self {
            mode,
            a_center: Center::new(a.url()),
            b_center: Center::new(b.url()),
            a,
            b,
            b_name,
            poll,
            has_key,
            runs_on_b,
            db,
        })
    }

    /// Whether the store holds any row of hash `key`.
    async fn has(&self, key: &str) -> Result<bool, String> {
        self.poll
            .query_opt(&self.has_key, &[&key])
            .await
            .map(|r| r.is_some())
            .map_err(|e| format!("poll the store: {e}"))
    }

    /// Waits, polling every `every`, until hash `key` has a row; returns when it was seen.
    async fn wait_key(&self, key: &str, every: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.has(key).await? {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cluster-stop (NOTIFY {}): no row `{key}` in the store within {WAIT:?}",
                    self.mode
                ));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until B's in-flight record of run `id` is there (`present`) or gone.
    async fn wait_record(&self, id: &str, present: bool) -> Result<(), String> {
        let key = format!("jobagent:runs:{}", self.b_name);
        let deadline = Instant::now() + WAIT;
        loop {
            let there = self
                .poll
                .query_opt(&self.runs_on_b, &[&key, &id])
                .await
                .map_err(|e| format!("poll the store: {e}"))?
                .is_some();
            if there == present {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "cluster-stop (NOTIFY {}): the record of run {id} on {} was {} after {WAIT:?}",
                    self.mode,
                    self.b_name,
                    if present {
                        "not written"
                    } else {
                        "not removed"
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs job `id` on B, stops it at A, and returns (stop answer → the run's result in the
    /// store, stop request round trip), in milliseconds.
    async fn one_stop(&self, id: &str) -> Result<(f64, f64), String> {
        let fail =
            |what: &str, e: String| format!("cluster-stop (NOTIFY {}): {what}: {e}", self.mode);
        let reply = self
            .b_center
            .run(TRANSIENT, id)
            .param(json!({ "sleep_ms": SLEEP_MS }))
            .try_send()
            .await
            .map_err(|e| fail("the run at B got no answer", e.to_string()))?;
        if reply.status != 200 {
            return Err(fail("the run at B answered", format!("{reply:?}")));
        }
        // Running on B, and recorded where A's stop looks for it.
        self.wait_record(id, true).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stop_id = format!("{id}-stop");
        let sent = Instant::now();
        let reply = self
            .a_center
            .stop(TRANSIENT, &stop_id)
            .try_send()
            .await
            .map_err(|e| fail("the stop at A got no answer", e.to_string()))?;
        let answered = Instant::now();
        if reply.status != 200 || !reply.body.contains(" 1 running instance(s) stopped") {
            return Err(fail(
                "the stop at A did not answer 200 with one running instance stopped",
                format!("{reply:?}"),
            ));
        }
        let seen = self
            .wait_key(&format!("{}{id}", tests::pg::RESULT_KEY), POLL)
            .await?;
        // Before the next sample: the stop's own result (written by A once B acknowledged),
        // and B's record of the run gone.
        self.wait_key(
            &format!("{}{stop_id}", tests::pg::RESULT_KEY),
            Duration::from_millis(10),
        )
        .await?;
        self.wait_record(id, false).await?;
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        Ok((ms(answered, seen), ms(sent, answered)))
    }

    fn kill(self) {
        self.a.kill();
        self.b.kill();
    }
}

/// The `cluster-stop` scenario.
pub(crate) async fn cross_replica_stop(s: &Settings, r: &mut Report) -> Result<(), String> {
    const SCENARIO: &str = "cluster stop";
    let samples = if s.quick { 10 } else { 20 };
    let on = Pair::start(s, true).await?;
    let off = Pair::start(s, false).await?;
    // One unmeasured stop per pair: connections, prepared statements, the listener.
    on.one_stop("cs-on-warm").await?;
    off.one_stop("cs-off-warm").await?;
    let mut med = Row::new(
        SCENARIO,
        "stop answer at A → result of run on B (median)",
        Unit::Ms,
    )
    .baseline("NOTIFY off")
    .target(Target::AtMost(100.0));
    let mut p90 = Row::new(
        SCENARIO,
        "stop answer at A → result of run on B (p90)",
        Unit::Ms,
    )
    .baseline("NOTIFY off");
    let mut rtt = Row::new(SCENARIO, "stop request round trip at A (median)", Unit::Ms)
        .baseline("NOTIFY off");
    for run in 0..s.runs {
        let (mut on_ms, mut off_ms) = (Vec::new(), Vec::new());
        let (mut on_rtt, mut off_rtt) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let order = if (run + i) % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for notify in order {
                let pair = if notify { &on } else { &off };
                let id = format!("cs-{}-{run:02}-{i:03}", pair.mode);
                let (ms, trip) = pair.one_stop(&id).await?;
                if notify {
                    on_ms.push(ms);
                    on_rtt.push(trip);
                } else {
                    off_ms.push(ms);
                    off_rtt.push(trip);
                }
            }
        }
        let p = |v: &[f64], q: f64| {
            let mut sorted = v.to_vec();
            sorted.sort_by(f64::total_cmp);
            percentile_sorted(&sorted, q)
        };
        med.push(median(&on_ms), Some(median(&off_ms)));
        p90.push(p(&on_ms, 90.0), Some(p(&off_ms, 90.0)));
        rtt.push(median(&on_rtt), Some(median(&off_rtt)));
        progress(format!(
            "run {}: NOTIFY on median {:.1} ms (p90 {:.1}, max {:.1}), off median {:.1} ms (p90 {:.1}, max {:.1}) over {samples} stops each",
            run + 1,
            median(&on_ms),
            p(&on_ms, 90.0),
            p(&on_ms, 100.0),
            median(&off_ms),
            p(&off_ms, 90.0),
            p(&off_ms, 100.0)
        ));
    }
    r.note(format!(
        "cluster stop: per mode, two example-agent processes (A, B; JOBAGENT_CLUSTER=on, \
         JOBAGENT_STORE on one fresh database per mode, distinct JOBAGENT_INSTANCE, \
         JOBAGENT_PATH=/jobagent, RUST_LOG={}), JOBAGENT_CLUSTER_NOTIFY=on for the measured \
         pair and =off (B polls for commands every 200 ms) for the baseline pair. Each sample: \
         a run of {TRANSIENT} {{\"sleep_ms\":{SLEEP_MS}}} at B; once B's record of it is in \
         jobagent:runs:<B> (what A's stop reads) and 20 ms more, a stop at A (must answer 200, \
         `1 running instance(s) stopped`); timed from A's answer until hash \
         `_agent_result_<run id>` has a row, polled every {POLL:?} on a connection of its own \
         (so values are up to ~{POLL:?} late); then the stop's own result and the record's \
         removal are awaited before the next sample. {samples} samples per mode and run, the \
         modes alternating, after one unmeasured sample per pair. The ≤ 100 ms target is the \
         brief's; poll alone gives a median of about half the poll period plus the write, so \
         the ratio column is the telling figure. PostgreSQL: {}.",
        s.agent_log,
        on.db.origin()
    ));
    r.rows.extend([med, p90, rtt]);
    on.kill();
    off.kill();
    Ok(())
}
