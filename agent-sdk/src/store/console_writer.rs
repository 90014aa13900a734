//! The non-blocking console sink: a bounded in-memory queue per console, drained in order
//! and in batches by one background writer task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::Store;
use super::line::{EncodedLine, LineEncoder};
use crate::console::{ConsoleColor, ConsoleLine, LineSink};
use crate::job::BoxFuture;
use crate::options::ConsoleBudget;
use crate::request::ConsoleTarget;
use crate::sync::lock;

/// Lines written per statement at most.
const BATCH_LINES: usize = 4_000;
/// Text bytes written per statement at most.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A console whose lines go into the center's store.
pub(crate) struct StoreConsole {
    shared: Arc<Shared>,
    budget: ConsoleBudget,
    done: watch::Receiver<bool>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<ConsoleLine>,
    closed: bool,
    /// Lines and bytes taken into the head so far (the budget).
    taken_lines: u64,
    taken_bytes: u64,
    /// Set once the budget is spent: later lines go to `tail`.
    tail_mode: bool,
    /// Past the budget: the newest lines, kept for the end.
    tail: VecDeque<ConsoleLine>,
    /// Lines dropped by the budget.
    over_budget: u64,
    /// Lines dropped because the buffer was full (the store is slow or down).
    overflow: u64,
}

/// How long a closed console keeps retrying an unreachable store before giving up.
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(300);

impl StoreConsole {
    /// Starts the console's writer task.
    pub(crate) fn start(
        store: Arc<Store>,
        target: ConsoleTarget,
        start: SystemTime,
        budget: ConsoleBudget,
        prefix: String,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        let (done_tx, done) = watch::channel(false);
        let writer = Writer {
            store,
            target,
            encoder: LineEncoder::new(start),
            shared: shared.clone(),
            budget,
            prefix,
            finalized: false,
        };
        tokio::spawn(async move {
            writer.run().await;
            let _ = done_tx.send(true);
        });
        Self {
            shared,
            budget,
            done,
        }
    }
}

impl LineSink for StoreConsole {
    fn push(&self, line: ConsoleLine) {
        let b = &self.budget;
        let was_empty;
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return;
            }
            // Progress lines are few (one per distinct value) and always pass the budget.
            if line.progress.is_none() {
                let bytes = line.text.len() as u64;
                if !q.tail_mode
                    && (q.taken_lines + 1 > b.max_lines - b.tail_lines
                        || q.taken_bytes + bytes > b.max_bytes)
                {
                    q.tail_mode = true;
                }
                if q.tail_mode {
                    q.tail.push_back(line);
                    if q.tail.len() as u64 > b.tail_lines {
                        q.tail.pop_front();
                        q.over_budget += 1;
                    }
                    return;
                }
                q.taken_lines += 1;
                q.taken_bytes += bytes;
            }
            if q.pending.len() >= b.buffer_lines {
                q.overflow += 1;
                if q.overflow == 1 {
                    tracing::warn!(target: "agent_sdk::console", buffer = b.buffer_lines, "console buffer full (the store is slow or unreachable); further lines of this console are counted and dropped");
                }
                return;
            }
            was_empty = q.pending.is_empty();
            q.pending.push_back(line);
        }
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    fn flush(&self) -> BoxFuture<()> {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        Box::pin(async move {
            let _ = done.wait_for(|d| *d).await;
        })
    }

    fn dropped(&self) -> u64 {
        lock(&self.shared.queue).overflow
    }
}

/// The background writer of one console.
struct Writer {
    store: Arc<Store>,
    target: ConsoleTarget,
    encoder: LineEncoder,
    shared: Arc<Shared>,
    budget: ConsoleBudget,
    prefix: String,
    finalized: bool,
}

enum Next {
    Batch(Vec<ConsoleLine>),
    Wait,
    Finished,
}

impl Writer {
    async fn run(mut self) {
        let mut closed_since: Option<tokio::time::Instant> = None;
        loop {
            match self.next() {
                Next::Finished => return,
                Next::Wait => self.shared.wake.notified().await,
                Next::Batch(lines) => {
                    let encoded: Vec<EncodedLine> =
                        lines.iter().map(|l| self.encoder.encode(l)).collect();
                    if !self.write(&encoded, &mut closed_since).await {
                        let lost = encoded.len() + lock(&self.shared.queue).pending.len();
                        tracing::error!(target: "agent_sdk::console", store = %self.store.label, console = %self.target.set_key, lost, "the store stayed unreachable after the run ended; giving up on this console's remaining lines");
                        return;
                    }
                }
            }
        }
    }

    /// Takes the next batch; once closed and drained, appends the budget's tail and the
    /// marker lines, then finishes.
    fn next(&mut self) -> Next {
        let mut q = lock(&self.shared.queue);
        if q.pending.is_empty() {
            if !q.closed {
                return Next::Wait;
            }
            if self.finalized {
                return Next::Finished;
            }
            self.finalized = true;
            let mut end = Vec::new();
            if q.over_budget > 0 {
                let at = q.tail.front().map(|l| l.at).unwrap_or_else(SystemTime::now);
                end.push(ConsoleLine {
                    at,
                    text: format!(
                        "{}… {} line(s) dropped: this run wrote more than its console budget ({} lines, {} bytes); the first and the last lines are kept …",
                        self.prefix, q.over_budget, self.budget.max_lines, self.budget.max_bytes
                    ),
                    color: Some(ConsoleColor::WARNING),
                    progress: None,
                });
            }
            end.extend(q.tail.drain(..));
            if q.overflow > 0 {
                end.push(ConsoleLine {
                    at: SystemTime::now(),
                    text: format!(
                        "{}{} line(s) dropped: the store was unreachable and this console's buffer ({} lines) was full",
                        self.prefix, q.overflow, self.budget.buffer_lines
                    ),
                    color: Some(ConsoleColor::WARNING),
                    progress: None,
                });
            }
            if end.is_empty() {
                return Next::Finished;
            }
            q.pending.extend(end);
        }
        let mut bytes = 0;
        let mut n = 0;
        for line in &q.pending {
            if n == BATCH_LINES || (n > 0 && bytes + line.text.len() > BATCH_BYTES) {
                break;
            }
            bytes += line.text.len();
            n += 1;
        }
        Next::Batch(q.pending.drain(..n).collect())
    }

    /// Writes one batch, retrying with backoff. False when it gave up.
    async fn write(
        &self,
        lines: &[EncodedLine],
        closed_since: &mut Option<tokio::time::Instant>,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            match self.try_write(lines).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(target: "agent_sdk::console", store = %self.store.label, failures, "console writes resumed");
                    }
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(target: "agent_sdk::console", store = %self.store.label, error = %e, "console write failed; retrying with backoff");
                    }
                }
            }
            if lock(&self.shared.queue).closed {
                let since = *closed_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > GIVE_UP_AFTER_CLOSE {
                    return false;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Appends the lines with one binary `COPY` (rows keep their order, so ids do too).
    async fn copy_lines(
        &self,
        client: &deadpool_postgres::Client,
        lines: &[EncodedLine],
    ) -> Result<(), tokio_postgres::Error> {
        let sql = format!(
            "COPY {}.\"set\" (\"key\", score, \"value\", expireat) FROM STDIN (FORMAT binary)",
            self.store.schema
        );
        let sink = client.copy_in(&sql).await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::TEXT, Type::FLOAT8, Type::TEXT, Type::TIMESTAMPTZ],
        );
        let mut writer = std::pin::pin!(writer);
        let expireat = SystemTime::now() + self.store.expire;
        let key = self.target.set_key.as_str();
        for line in lines {
            writer
                .as_mut()
                .write(&[&key, &line.score, &line.value.as_str(), &expireat])
                .await?;
        }
        writer.finish().await?;
        Ok(())
    }

    /// Inserts the lines, keeping rows that already exist (a retry after an unknown outcome).
    async fn upsert_lines(
        &self,
        client: &deadpool_postgres::Client,
        lines: &[EncodedLine],
    ) -> Result<(), String> {
        let schema = &self.store.schema;
        let expire = self.store.expire_secs();
        let scores: Vec<f64> = lines.iter().map(|l| l.score).collect();
        let values: Vec<&str> = lines.iter().map(|l| l.value.as_str()).collect();
        let sql = format!(
            "INSERT INTO {schema}.\"set\" (\"key\", score, \"value\", expireat) \
             SELECT $1, l.score, l.value, now() + $4 * interval '1 second' \
             FROM unnest($2::float8[], $3::text[]) WITH ORDINALITY AS l(score, value, ord) ORDER BY l.ord \
             ON CONFLICT (\"key\", \"value\") DO UPDATE SET score = EXCLUDED.score, expireat = EXCLUDED.expireat"
        );
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(|e| e.to_string())?;
        client
            .execute(&stmt, &[&self.target.set_key, &scores, &values, &expire])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn try_write(&self, lines: &[EncodedLine]) -> Result<(), String> {
        let client = self.store.pool.get().await.map_err(|e| e.to_string())?;
        let schema = &self.store.schema;
        let expire = self.store.expire_secs();
        let (ref_fields, ref_values): (Vec<&str>, Vec<&str>) = lines
            .iter()
            .filter_map(|l| l.reference.as_ref().map(|(f, v)| (f.as_str(), v.as_str())))
            .unzip();
        if !ref_fields.is_empty() {
            super::upsert_hash_fields(
                &client,
                schema,
                &self.target.hash_key,
                &ref_fields,
                &ref_values,
                expire,
            )
            .await?;
        }
        match self.copy_lines(&client, lines).await {
            Ok(()) => {}
            // A retried batch that had in fact committed: upsert it instead (same ids kept).
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.upsert_lines(&client, lines).await?;
            }
            Err(e) => return Err(e.to_string()),
        }
        if let Some(progress) = lines.iter().rev().find_map(|l| l.progress_field.as_deref()) {
            super::upsert_hash_fields(
                &client,
                schema,
                &self.target.hash_key,
                &["progress"],
                &[progress],
                expire,
            )
            .await?;
        }
        Ok(())
    }
}
