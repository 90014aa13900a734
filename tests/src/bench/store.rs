//! Store-side work of the console scenarios: the baselines (a `COPY` of the same rows, and a
//! one-transaction-per-line writer like the .NET agent's), waiting for results, and checking
//! that consoles are complete and in order.

use std::collections::HashMap;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tests::pg::TestDb;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// The prefix the agent puts before every line (its default).
pub(crate) const PREFIX: &str = "【JobAgent】";

/// The set and hash the agent writes results into.
const RESULT_SET: &str = "_agent_result_";

/// The console line JSON the agent writes for demo line `n` (`{"t":..,"s":..,"c":"#ffffff"}`),
/// with offset `t` in units of 0.0001 s. Same keys, same shape, same text.
pub(crate) fn line_json(units: u64, n: u64, line_len: usize) -> String {
    let text = format!("{PREFIX}{}", example_agent::jobs::demo_line(n, line_len));
    let whole = units / 10_000;
    let frac = units % 10_000;
    let t = if frac == 0 {
        format!("{whole}.0")
    } else {
        let f = format!("{frac:04}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    };
    let s = serde_json::to_string(&text).unwrap_or_default();
    format!(r##"{{"t":{t},"s":{s},"c":"#ffffff"}}"##)
}

/// Empties the Hangfire tables (between measurements, so each starts from the same state).
pub(crate) async fn truncate(db: &TestDb) -> Result<(), String> {
    db.client()
        .batch_execute("TRUNCATE hangfire.\"set\", hangfire.hash")
        .await
        .map_err(|e| format!("truncate: {e}"))
}

/// A few server settings that change what the figures mean.
pub(crate) async fn server_settings(db: &TestDb) -> String {
    let mut parts = Vec::new();
    for name in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "shared_buffers",
    ] {
        let v = match db.client().query_one(&format!("SHOW {name}"), &[]).await {
            Ok(row) => row.get::<_, String>(0),
            Err(e) => format!("? ({e})"),
        };
        parts.push(format!("{name}={v}"));
    }
    parts.join(", ")
}

/// `COPY ... FROM STDIN (FORMAT binary)` of `rows` (key, score, value) into `hangfire.set`
/// with `expireat` = now + 7 days, over `client`; returns how long the COPY took.
pub(crate) async fn copy_rows(
    client: &Client,
    rows: &[(String, f64, String)],
) -> Result<Duration, String> {
    let expire = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let t0 = Instant::now();
    let sink = client
        .copy_in("COPY hangfire.\"set\" (key, score, value, expireat) FROM STDIN (FORMAT binary)")
        .await
        .map_err(|e| format!("COPY: {e}"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::TEXT, Type::FLOAT8, Type::TEXT, Type::TIMESTAMPTZ],
    );
    let mut writer = pin!(writer);
    for (key, score, value) in rows {
        writer
            .as_mut()
            .write(&[key, score, value, &expire])
            .await
            .map_err(|e| format!("COPY row: {e}"))?;
    }
    let n = writer
        .as_mut()
        .finish()
        .await
        .map_err(|e| format!("COPY finish: {e}"))?;
    let took = t0.elapsed();
    if n != rows.len() as u64 {
        return Err(format!("COPY wrote {n} rows, expected {}", rows.len()));
    }
    Ok(took)
}

/// The .NET agent's pattern: for each line its own transaction (`BEGIN; INSERT ... ON
/// CONFLICT ...; COMMIT`), one after another on one connection. Returns how long it took.
pub(crate) async fn one_tx_per_line(
    client: &mut Client,
    rows: &[(String, f64, String)],
) -> Result<Duration, String> {
    let stmt = client
        .prepare(
            "INSERT INTO hangfire.\"set\" (key, score, value, expireat) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 second') \
             ON CONFLICT (key, value) DO UPDATE SET score = EXCLUDED.score, expireat = EXCLUDED.expireat",
        )
        .await
        .map_err(|e| format!("prepare: {e}"))?;
    let expire = 7.0 * 86_400.0_f64;
    let t0 = Instant::now();
    for (key, score, value) in rows {
        let tx = client
            .transaction()
            .await
            .map_err(|e| format!("BEGIN: {e}"))?;
        tx.execute(&stmt, &[key, score, value, &expire])
            .await
            .map_err(|e| format!("INSERT: {e}"))?;
        tx.commit().await.map_err(|e| format!("COMMIT: {e}"))?;
    }
    Ok(t0.elapsed())
}

/// Waits until set `_agent_result_` holds `count` members, polling every `every`; fails after
/// `within`.
pub(crate) async fn wait_results(
    db: &TestDb,
    count: i64,
    every: Duration,
    within: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + within;
    let stmt = db
        .client()
        .prepare("SELECT count(*) FROM hangfire.\"set\" WHERE key = $1")
        .await
        .map_err(|e| format!("prepare: {e}"))?;
    loop {
        let n: i64 = db
            .client()
            .query_one(&stmt, &[&RESULT_SET])
            .await
            .map_err(|e| format!("poll results: {e}"))?
            .get(0);
        if n >= count {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only {n} of {count} results after {within:?}; the agent did not finish"
            ));
        }
        tokio::time::sleep(every).await;
    }
}

/// Every result row, checked to be `"R":"ok"`; returns how many.
pub(crate) async fn check_results_ok(db: &TestDb) -> Result<usize, String> {
    let rows = db
        .client()
        .query(
            "SELECT key, value FROM hangfire.hash WHERE key LIKE '\\_agent\\_result\\_%'",
            &[],
        )
        .await
        .map_err(|e| format!("read results: {e}"))?;
    for r in &rows {
        let value: Option<String> = r.get(1);
        let v: Value = serde_json::from_str(value.as_deref().unwrap_or(""))
            .map_err(|e| format!("result is not JSON: {e}"))?;
        if v.get("R").and_then(Value::as_str) != Some("ok") {
            return Err(format!("a job did not end ok: {v}"));
        }
    }
    Ok(rows.len())
}

/// How the consoles in the set look: per console key, whether its demo lines
/// `line 1 ..= line expected` are all there, once each, in insertion order.
pub(crate) async fn consoles_in_order(
    db: &TestDb,
    expected: u64,
) -> Result<HashMap<String, Result<(), String>>, String> {
    let rows = db
        .client()
        .query(
            "SELECT key, value FROM hangfire.\"set\" WHERE key LIKE 'console:%' ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| format!("read consoles: {e}"))?;
    let marker = format!("{PREFIX}line ");
    let mut next: HashMap<String, Result<u64, String>> = HashMap::new();
    for r in &rows {
        let key: String = r.get(0);
        let value: String = r.get(1);
        let state = next.entry(key).or_insert(Ok(1));
        let Ok(want) = state else { continue };
        let line: Value = match serde_json::from_str(&value) {
            Ok(v) => v,
            Err(e) => {
                *state = Err(format!("a line is not JSON ({e})"));
                continue;
            }
        };
        let text = line.get("s").and_then(Value::as_str).unwrap_or("");
        let Some(rest) = text.strip_prefix(&marker) else {
            continue; // lifecycle and other lines
        };
        let n: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        if n != *want {
            *state = Err(format!("expected line {want}, found line {n}"));
        } else {
            *want += 1;
        }
    }
    Ok(next
        .into_iter()
        .map(|(k, s)| {
            let verdict = match s {
                Ok(n) if n == expected + 1 => Ok(()),
                Ok(n) => Err(format!("{} of {expected} lines", n - 1)),
                Err(e) => Err(e),
            };
            (k, verdict)
        })
        .collect())
}
