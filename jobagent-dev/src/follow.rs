//! Reading the store as the center's dashboard does, on PostgreSQL, MySQL or Redis alike
//! (through `jobagent::__dev::DevReader`, the agent's store seam): a console's lines in the
//! dashboard's order (by id in the SQL stores, by rank in Redis), read from the last index
//! seen; long texts resolved from the console's refs hash; a dispatch's result from hash
//! `_agent_result_<job id>`, whose one field is the elapsed milliseconds; heartbeat rows from
//! hash `AgentHeart:<server id>`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::store::StoreSpec;

/// How long the store may stay unreachable while following before the CLI gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// How long the first connection may take (the store's own `Timeout` usually ends it first).
const CONNECT_WITHIN: Duration = Duration::from_secs(30);

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

/// How many console lines one read asks for; a longer backlog is read page by page.
const PAGE: usize = 500;

/// One console line as read: the stored text, and the referenced text of a reference line.
pub(crate) type Line = (String, Option<String>);

/// A reader of one store, of any kind, that rides out a store outage: a failed read is
/// reported once, retried by the caller's next poll, and gives up only after
/// [`GIVE_UP_AFTER`] of failures (the pool reconnects underneath).
pub(crate) struct Reader<'a> {
    spec: &'a StoreSpec,
    failing_since: Option<Instant>,
}

impl<'a> Reader<'a> {
    /// A reader of `spec`; [`Reader::check`] before following.
    pub(crate) fn new(spec: &'a StoreSpec) -> Self {
        Self {
            spec,
            failing_since: None,
        }
    }

    /// Connects, and checks the store has Hangfire's tables (the agent's own check); the error
    /// says what to fix.
    pub(crate) async fn check(&self) -> Result<(), String> {
        let store = self.spec.reader();
        store.ping(CONNECT_WITHIN).await?;
        store.check_tables().await.map_err(|e| {
            if e.contains("does not create Hangfire's tables") {
                format!(
                    "{e} (see --store, --store-type and --schema; on a laptop's own database, `jobagent-dev setup --store ...` creates them)"
                )
            } else {
                format!("{e} (see --store, --store-type and --schema)")
            }
        })
    }

    /// Awaits one read; on failure returns `Ok(None)` (the caller's next poll retries from
    /// where it was) until the store has been failing for too long.
    async fn attempt<T>(
        &mut self,
        read: impl Future<Output = Result<T, String>>,
    ) -> Result<Option<T>, String> {
        match read.await {
            Ok(v) => {
                if self.failing_since.take().is_some() {
                    eprintln!("jobagent-dev: the store {} is back", self.spec.label());
                }
                Ok(Some(v))
            }
            Err(e) => {
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

    /// The lines of set `set_key` from index `from` on, in the dashboard's order, each with
    /// its referenced text (from hash `hash_key`) when it is a reference. All or nothing: a
    /// failed read returns `Ok(None)` and the caller reads from `from` again.
    pub(crate) async fn lines_from(
        &mut self,
        set_key: &str,
        hash_key: &str,
        from: usize,
    ) -> Result<Option<Vec<Line>>, String> {
        let store = self.spec.reader();
        self.attempt(async move {
            let mut raws: Vec<String> = Vec::new();
            loop {
                let page = store.set_range(set_key, from + raws.len(), PAGE).await?;
                let full = page.len() >= PAGE;
                raws.extend(page);
                if !full {
                    break;
                }
            }
            let mut lines = Vec::with_capacity(raws.len());
            for raw in raws {
                let text = match reference_field(&raw) {
                    Some(field) => store.hash_field(hash_key, &field).await?,
                    None => None,
                };
                lines.push((raw, text));
            }
            Ok(lines)
        })
        .await
    }

    /// The result of `job_id`, once written: the first field of hash `_agent_result_<id>`.
    pub(crate) async fn result(&mut self, job_id: &str) -> Result<Option<JobResult>, String> {
        let store = self.spec.reader();
        let key = result_key(job_id);
        let found = self.attempt(store.hash_all(&key)).await?;
        Ok(found
            .unwrap_or_default()
            .first()
            .map(|(field, value)| JobResult::parse(field, value)))
    }

    /// Whether a result for `job_id` is already in the store (read once, before a run).
    pub(crate) async fn has_result(&self, job_id: &str) -> Result<bool, String> {
        self.spec
            .reader()
            .hash_all(&result_key(job_id))
            .await
            .map(|fields| !fields.is_empty())
            .map_err(|e| format!("cannot read the store {}: {e}", self.spec.label()))
    }

    /// One field of a hash (heartbeat rows).
    pub(crate) async fn hash_field(
        &mut self,
        key: &str,
        field: &str,
    ) -> Result<Option<String>, String> {
        let store = self.spec.reader();
        Ok(self.attempt(store.hash_field(key, field)).await?.flatten())
    }
}

/// The hash a dispatch's result is written to.
pub(crate) fn result_key(job_id: &str) -> String {
    format!("_agent_result_{job_id}")
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
