//! Reading the store as the center's dashboard does: a console's lines in insertion order
//! (`ORDER BY id`), long texts resolved from the console hash, and a dispatch's result from
//! hash `_agent_result_<job id>`.

use std::time::{Duration, Instant};

use agent_sdk::__dev::DevClient;
use serde_json::Value;
use tokio_postgres::Client;

use crate::store::{StoreSpec, describe};

/// How long the store may stay unreachable while following before the CLI gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// One dispatch's result, as the center reads it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobResult {
    /// Elapsed milliseconds (the hash field).
    pub(crate) elapsed_ms: String,
    /// `run` or `stop`.
    pub(crate) action: String,
    /// The dispatch's job id.
    pub(crate) id: String,
    /// The run's job id.
    pub(crate) run_id: String,
    /// `ok` or `err`.
    pub(crate) r: String,
    /// The error text.
    pub(crate) e: String,
}

impl JobResult {
    fn parse(field: &str, value: &str) -> Self {
        let v: Value = serde_json::from_str(value).unwrap_or(Value::Null);
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let r = text("R");
        Self {
            elapsed_ms: field.to_owned(),
            action: text("Action"),
            id: text("Id"),
            run_id: text("RunId"),
            r: if r.is_empty() {
                format!(
                    "? (not a result: {})",
                    value.chars().take(200).collect::<String>()
                )
            } else {
                r
            },
            e: text("E"),
        }
    }

    /// `R=ok`.
    pub(crate) fn is_ok(&self) -> bool {
        self.r == "ok"
    }

    /// `result R=ok after 532 ms (run, job 1)` or `result R=err after ... : <error>`.
    pub(crate) fn render(&self) -> String {
        let mut what = match self.action.as_str() {
            "" => format!("job {}", self.id),
            a => format!("{a}, job {}", self.id),
        };
        if self.action == "stop" {
            if self.run_id.is_empty() {
                what.push_str(", nothing was running");
            } else {
                what.push_str(&format!(", stopped run {}", self.run_id));
            }
        }
        let mut out = format!("result R={} after {} ms ({what})", self.r, self.elapsed_ms);
        if !self.e.is_empty() {
            out.push_str(": ");
            out.push_str(&self.e);
        }
        out
    }
}

/// Colors of the console, as ANSI escapes for a terminal.
fn ansi(color: &str) -> Option<String> {
    let hex = color.strip_prefix('#')?;
    if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("ff"), 16).unwrap_or(255);
    let (r, g, b) = (byte(0), byte(2), byte(4));
    if (r, g, b) == (255, 255, 255) {
        return None; // info: the terminal's own color
    }
    Some(format!("\x1b[38;2;{r};{g};{b}m"))
}

/// Renders one stored line: `+<t>s <text>`, or `+<t>s [bar <id> <name>] <p>%` for a progress
/// bar. `resolve` is the referenced text for a `"r":true` line.
pub(crate) fn render_line(raw: &str, resolved: Option<&str>, color: bool) -> String {
    let Ok(v) = serde_json::from_str::<Value>(raw) else {
        return format!("+?s (not a console line) {raw}");
    };
    let t = v.get("t").and_then(Value::as_f64);
    let s = v.get("s").and_then(Value::as_str).unwrap_or("");
    let time = match t {
        Some(t) => format!("+{t:.3}s"),
        None => "+?s".to_owned(),
    };
    let body = if let Some(p) = v.get("p").and_then(Value::as_f64) {
        match v.get("n").and_then(Value::as_str) {
            Some(n) => format!("[bar {s} {n}] {p}%"),
            None => format!("[bar {s}] {p}%"),
        }
    } else if v.get("r").and_then(Value::as_bool) == Some(true) {
        match resolved {
            Some(text) => text.to_owned(),
            None => format!("(reference {s} is missing from the console hash)"),
        }
    } else {
        s.to_owned()
    };
    match (color, v.get("c").and_then(Value::as_str).and_then(ansi)) {
        (true, Some(esc)) => format!("{time} {esc}{body}\x1b[0m"),
        _ => format!("{time} {body}"),
    }
}

/// The hash field a reference line (`"r":true`) points to.
fn reference_field(raw: &str) -> Option<String> {
    let v: Value = serde_json::from_str(raw).ok()?;
    if v.get("r").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    v.get("s").and_then(Value::as_str).map(str::to_owned)
}

/// A reader of one store that reconnects when the connection breaks.
pub(crate) struct Reader<'a> {
    spec: &'a StoreSpec,
    client: Option<DevClient>,
    schema: String,
    failing_since: Option<Instant>,
}

impl<'a> Reader<'a> {
    /// A reader over an open client; `schema` is checked by the caller.
    pub(crate) fn new(spec: &'a StoreSpec, client: DevClient, schema: &str) -> Self {
        Self {
            spec,
            client: Some(client),
            schema: agent_sdk::__dev::quote_schema(schema),
            failing_since: None,
        }
    }

    /// Checks that the Hangfire tables exist; the error says what to fix.
    pub(crate) async fn check_tables(&mut self) -> Result<(), String> {
        let set = format!("{}.\"set\"", self.schema);
        let hash = format!("{}.\"hash\"", self.schema);
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
                &[&set, &hash],
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot read the store {}: {}",
                    self.spec.label(),
                    describe(&e)
                )
            })?;
        let read = |e: tokio_postgres::Error| {
            format!(
                "cannot read the store {}: {}",
                self.spec.label(),
                describe(&e)
            )
        };
        let (has_set, has_hash): (bool, bool) =
            (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?);
        if has_set && has_hash {
            Ok(())
        } else {
            Err(format!(
                "the store {} has no Hangfire tables {set} and {hash}; is --schema right, and \
                 has the center (Hangfire.PostgreSql) created its schema there?",
                self.spec.label()
            ))
        }
    }

    async fn client(&mut self) -> Result<&Client, String> {
        if self.client.is_none() {
            self.client = Some(self.spec.connect().await?);
        }
        self.client
            .as_deref()
            .ok_or_else(|| "no store connection".to_owned())
    }

    /// Runs `op`; on failure drops the connection (the next call reconnects) and returns
    /// `Ok(None)` until the store has been failing for too long.
    async fn attempt<T>(
        &mut self,
        op: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Option<T>, String> {
        let outcome = match self.client().await {
            Ok(client) => op(client).await.map_err(|e| describe(&e)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(v) => {
                if self.failing_since.take().is_some() {
                    eprintln!("jobagent-dev: the store {} is back", self.spec.label());
                }
                Ok(Some(v))
            }
            Err(e) => {
                self.client = None;
                let since = *self.failing_since.get_or_insert_with(|| {
                    eprintln!(
                        "jobagent-dev: reading the store {} failed ({e}); retrying",
                        self.spec.label()
                    );
                    Instant::now()
                });
                if since.elapsed() > GIVE_UP_AFTER {
                    Err(format!(
                        "the store {} stayed unreachable for {} s: {e}",
                        self.spec.label(),
                        GIVE_UP_AFTER.as_secs()
                    ))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The lines of set `set_key` with an id above `after`, in `ORDER BY id` order, each with
    /// its referenced text (from hash `hash_key`) when it is a reference.
    pub(crate) async fn lines_after(
        &mut self,
        set_key: &str,
        hash_key: &str,
        after: i64,
    ) -> Result<Option<Vec<(i64, String, Option<String>)>>, String> {
        let lines = format!(
            "SELECT id, value FROM {}.\"set\" WHERE key = $1 AND id > $2 ORDER BY id",
            self.schema
        );
        let refs = format!(
            "SELECT field, value FROM {}.hash WHERE key = $1 AND field = ANY($2)",
            self.schema
        );
        self.attempt(async |c: &Client| {
            let rows = c.query(&lines, &[&set_key, &after]).await?;
            let rows = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<(i64, String)>, tokio_postgres::Error>>()?;
            let wanted: Vec<String> = rows
                .iter()
                .filter_map(|(_, raw)| reference_field(raw))
                .collect();
            let mut texts: Vec<(String, Option<String>)> = Vec::new();
            if !wanted.is_empty() {
                for r in c.query(&refs, &[&hash_key, &wanted]).await? {
                    texts.push((r.try_get(0)?, r.try_get(1)?));
                }
            }
            Ok(rows
                .into_iter()
                .map(|(id, raw)| {
                    let text = reference_field(&raw).and_then(|field| {
                        texts
                            .iter()
                            .find(|(f, _)| *f == field)
                            .and_then(|(_, v)| v.clone())
                    });
                    (id, raw, text)
                })
                .collect())
        })
        .await
    }

    /// The result of `job_id`, once written.
    pub(crate) async fn result(&mut self, job_id: &str) -> Result<Option<JobResult>, String> {
        let sql = format!(
            "SELECT field, value FROM {}.hash WHERE key = $1 ORDER BY id LIMIT 1",
            self.schema
        );
        let key = format!("_agent_result_{job_id}");
        let found = self
            .attempt(async |c: &Client| c.query_opt(&sql, &[&key]).await)
            .await?;
        found
            .flatten()
            .map(|row| {
                let read =
                    |e: tokio_postgres::Error| format!("cannot read the result: {}", describe(&e));
                let field: String = row.try_get(0).map_err(read)?;
                let value: Option<String> = row.try_get(1).map_err(read)?;
                Ok(JobResult::parse(&field, value.as_deref().unwrap_or("")))
            })
            .transpose()
    }

    /// Whether a result for `job_id` is already in the store.
    pub(crate) async fn has_result(&mut self, job_id: &str) -> Result<bool, String> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.hash WHERE key = $1)",
            self.schema
        );
        let key = format!("_agent_result_{job_id}");
        let client = self.client().await?;
        let row = client.query_one(&sql, &[&key]).await.map_err(|e| {
            format!(
                "cannot read the store {}: {}",
                self.spec.label(),
                describe(&e)
            )
        })?;
        row.try_get(0).map_err(|e| {
            format!(
                "cannot read the store {}: {}",
                self.spec.label(),
                describe(&e)
            )
        })
    }

    /// One field of a hash (heartbeat rows).
    pub(crate) async fn hash_field(
        &mut self,
        key: &str,
        field: &str,
    ) -> Result<Option<String>, String> {
        let sql = format!(
            "SELECT value FROM {}.hash WHERE key = $1 AND field = $2",
            self.schema
        );
        let found = self
            .attempt(async |c: &Client| c.query_opt(&sql, &[&key, &field]).await)
            .await?;
        Ok(found
            .flatten()
            .and_then(|row| row.try_get(0).ok().flatten()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_lines_like_the_dashboard() {
        assert_eq!(
            render_line(r##"{"t":0.012,"s":"line 1","c":"#ffffff"}"##, None, false),
            "+0.012s line 1"
        );
        assert_eq!(
            render_line(r#"{"t":1.5,"s":"1","p":33.3,"n":"progress"}"#, None, false),
            "+1.500s [bar 1 progress] 33.3%"
        );
        assert_eq!(
            render_line(r#"{"t":2.0,"s":"1","p":100.0,"n":"progress"}"#, None, false),
            "+2.000s [bar 1 progress] 100%"
        );
        assert_eq!(
            render_line(
                r#"{"t":0.1,"r":true,"s":"abc"}"#,
                Some("a long text"),
                false
            ),
            "+0.100s a long text"
        );
        assert!(render_line(r#"{"t":0.1,"r":true,"s":"abc"}"#, None, false).contains("missing"));
        assert_eq!(
            render_line(r##"{"t":0.2,"s":"boom","c":"#ff0000"}"##, None, true),
            "+0.200s \x1b[38;2;255;0;0mboom\x1b[0m"
        );
        assert!(render_line("garbage", None, false).contains("garbage"));
    }

    #[test]
    fn renders_results() {
        let ok = JobResult::parse(
            "532",
            r#"{"Id":"7","Action":"run","RunId":"7","R":"ok","E":""}"#,
        );
        assert!(ok.is_ok());
        assert_eq!(ok.render(), "result R=ok after 532 ms (run, job 7)");
        let err = JobResult::parse(
            "12",
            r#"{"Id":"8","Action":"run","RunId":"8","R":"err","E":"boom"}"#,
        );
        assert!(!err.is_ok());
        assert_eq!(err.render(), "result R=err after 12 ms (run, job 8): boom");
        let stop = JobResult::parse(
            "3",
            r#"{"Id":"9","Action":"stop","RunId":"8","R":"ok","E":""}"#,
        );
        assert_eq!(
            stop.render(),
            "result R=ok after 3 ms (stop, job 9, stopped run 8)"
        );
        assert!(!JobResult::parse("1", "junk").is_ok());
    }
}
