//! Console throughput on MySQL and Redis, each beside that store's raw ceiling on the same
//! server in the same run: a multi-row `INSERT` of the same rows (MySQL), pipelined `ZADD`s
//! (Redis).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde_json::json;
use tests::center::{Center, ConsoleInfo};
use tests::mysql::TestMysql;
use tests::redis::TestRedis;
use tests::stores::{AnyStore, Backing};

use crate::bench::scenarios::{Report, Settings, TRANSIENT, progress, start_agent};
use crate::bench::stats::{Row, Target, Unit};
use crate::bench::store::line_json;

pub(crate) const LINE_LEN: usize = 80;
/// Rows per statement (MySQL) or per pipeline (Redis) in the ceilings.
const CHUNK: usize = 1_000;

/// `n` demo lines as the agent stores them for one console.
fn rows(n: u64) -> Vec<(f64, String)> {
    (1..=n)
        .map(|i| (i as f64 / 10_000.0, line_json(i, i, LINE_LEN)))
        .collect()
}

/// The ceiling on MySQL: the rows in multi-row inserts of [`CHUNK`], one connection.
async fn mysql_ceiling(
    db: &TestMysql,
    key: &str,
    rows: &[(f64, String)],
) -> Result<Duration, String> {
    let mut conn = db.conn().await;
    let table = db.table("Set");
    let started = Instant::now();
    for chunk in rows.chunks(CHUNK) {
        let placeholders =
            vec!["(?, ?, ?, UTC_TIMESTAMP() + INTERVAL 7 DAY)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO {table} (`Key`, `Value`, `Score`, `ExpireAt`) VALUES {placeholders}"
        );
        let mut params: Vec<mysql_async::Value> = Vec::with_capacity(chunk.len() * 3);
        for (score, value) in chunk {
            params.push(key.into());
            params.push(value.as_str().into());
            params.push((*score).into());
        }
        conn.exec_drop(sql, params)
            .await
            .map_err(|e| format!("the MySQL ceiling's insert failed: {e}"))?;
    }
    Ok(started.elapsed())
}

/// The ceiling on Redis: the rows as pipelined `ZADD`s of [`CHUNK`], one connection.
async fn redis_ceiling(
    db: &TestRedis,
    key: &str,
    rows: &[(f64, String)],
) -> Result<Duration, String> {
    let mut conn = db.connection();
    let key = format!("{}{key}", db.prefix());
    let started = Instant::now();
    for chunk in rows.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (score, value) in chunk {
            pipe.cmd("ZADD").arg(&key).arg(*score).arg(value).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("the Redis ceiling's pipeline failed: {e}"))?;
    }
    Ok(started.elapsed())
}

/// Whether the console holds the run's lines, complete and in order, as the dashboard reads
/// it (the started line, `lines` demo lines, the finished line).
pub(crate) async fn check_console(
    db: &AnyStore,
    console: &ConsoleInfo,
    lines: u64,
) -> Result<(), String> {
    let rows = db.set_rows(&console.set_key).await;
    if rows.len() as u64 != lines + 2 {
        return Err(format!(
            "{}: {} rows in the console, expected {}",
            db.kind(),
            rows.len(),
            lines + 2
        ));
    }
    for (i, (value, _)) in rows.iter().enumerate().skip(1).take(lines as usize) {
        let want = example_agent::jobs::demo_line(i as u64, LINE_LEN);
        if !value.contains(&want) {
            return Err(format!("{}: line {i} is out of place: {value}", db.kind()));
        }
    }
    Ok(())
}

/// Empties the store's tables or keys, so each measurement starts from the same state.
pub(crate) async fn clear(db: &AnyStore) -> Result<(), String> {
    match db.backing() {
        Backing::Mysql(m) => m.clear().await,
        Backing::Redis(r) => r.clear().await,
        Backing::Pg(p) => crate::bench::store::truncate(p).await,
    }
}

/// Console throughput per store, next to that store's ceiling.
pub(crate) async fn console_per_store(s: &Settings, r: &mut Report) -> Result<(), String> {
    let lines: u64 = if s.quick { 20_000 } else { 100_000 };
    for (name, ceiling_name) in [("mysql", "multi-row INSERT"), ("redis", "pipelined ZADD")] {
        let db = match name {
            "mysql" => AnyStore::mysql().await,
            _ => AnyStore::redis().await,
        };
        let agent = start_agent(s, &[("JOBAGENT_CONSOLE_MAX_LINES", "1000000".to_owned())]).await?;
        let center = Center::new(agent.url()).with_storage(&db.storage());
        // Warm the agent's pool for this store.
        let reply = center
            .run(TRANSIENT, "warm")
            .param(json!({"lines": 10, "line_len": LINE_LEN}))
            .send()
            .await;
        if reply.status != 200 {
            return Err(format!("{name}: the warm-up run answered {reply:?}"));
        }
        db.wait_result("warm", Duration::from_secs(60)).await;
        let scenario: &'static str = match name {
            "mysql" => "console throughput (mysql)",
            _ => "console throughput (redis)",
        };
        let mut vs_ceiling = Row::new(
            scenario,
            format!("{}k lines → result", lines / 1000),
            Unit::PerSec,
        )
        .baseline(ceiling_name)
        .target(Target::RatioAtLeast(0.5));
        let mut complete = Row::new(scenario, "console complete, in order", Unit::Count)
            .target(Target::Every(1.0));
        for run in 0..s.runs {
            clear(&db).await?;
            let id = format!("cs-{run}");
            let console = ConsoleInfo::for_job(&id);
            let t0 = Instant::now();
            let reply = center
                .run(TRANSIENT, &id)
                .param(json!({"lines": lines, "line_len": LINE_LEN}))
                .console(console.clone())
                .send()
                .await;
            if reply.status != 200 {
                return Err(format!("{name}: the run answered {reply:?}"));
            }
            let result = db.wait_result(&id, Duration::from_secs(600)).await;
            let agent_rate = lines as f64 / t0.elapsed().as_secs_f64();
            if result["R"] != "ok" {
                return Err(format!("{name}: the run failed: {result}"));
            }
            check_console(&db, &console, lines).await?;
            complete.push(1.0, None);

            clear(&db).await?;
            let rows = rows(lines);
            let key = format!("console:ceiling-{run}");
            let took = match db.backing() {
                Backing::Mysql(m) => mysql_ceiling(m, &key, &rows).await?,
                Backing::Redis(rd) => redis_ceiling(rd, &key, &rows).await?,
                Backing::Pg(_) => return Err("not a MySQL or Redis store".to_owned()),
            };
            let ceiling_rate = lines as f64 / took.as_secs_f64();
            vs_ceiling.push(agent_rate, Some(ceiling_rate));
            progress(format!(
                "{name} run {}: agent {agent_rate:.0} lines/s, {ceiling_name} {ceiling_rate:.0} lines/s",
                run + 1
            ));
        }
        clear(&db).await?;
        r.rows.extend([vs_ceiling, complete]);
        agent.kill();
    }
    r.note(format!(
        "console throughput per store: example-agent process, store sent in x-job-storage \
         (MariaDB at {} with Install.sql's tables in utf8; Redis at {}), pool warmed by one \
         small job; {lines} lines of {LINE_LEN} characters, timed from sending the run to its \
         id in `_agent_result_` (polled every 20 ms); the console then checked complete and in \
         the dashboard's order. Ceilings on the same server and table/key, same rows: MySQL \
         multi-row INSERTs of {CHUNK} rows on one connection; Redis pipelines of {CHUNK} ZADDs \
         on one connection.",
        std::env::var(tests::mysql::MYSQL_URL_VAR).unwrap_or_else(|_| "127.0.0.1:3306".to_owned()),
        std::env::var(tests::redis::REDIS_URL_VAR).unwrap_or_else(|_| "127.0.0.1:6379".to_owned()),
    ));
    Ok(())
}
