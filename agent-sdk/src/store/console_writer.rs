//! The non-blocking console sink: a bounded in-memory queue per console, drained in order
//! and in batches by one background writer task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::line::{EncodedLine, LineEncoder};
use super::{Store, StoreError, StoreErrorKind};
use crate::console::{ConsoleColor, ConsoleLine, LineSink};
use crate::future::BoxFuture;
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
    memory: &'static ConsoleMemory,
    done: watch::Receiver<bool>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

/// The bytes held by every store console of the process, against
/// [`ConsoleBudget::memory_bytes`]: one atomic counter, taken when a line is buffered and
/// given back when it is written (or given up on).
#[derive(Debug)]
pub(crate) struct ConsoleMemory {
    used: AtomicU64,
}

/// The console memory of the process.
static CONSOLE_MEMORY: ConsoleMemory = ConsoleMemory::new();

impl ConsoleMemory {
    pub(crate) const fn new() -> Self {
        Self {
            used: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` if the total stays within `limit`.
    fn try_take(&self, bytes: u64, limit: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes `bytes` whatever the total (the few marker lines at a console's end).
    fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// What a buffered line is counted as beyond its texts: the line itself, its queue slot and
/// the allocator's rounding (documented in `docs/console.md`).
const LINE_OVERHEAD: u64 = 128;
const _: () = assert!(std::mem::size_of::<ConsoleLine>() as u64 + 16 <= LINE_OVERHEAD);

/// The bytes a buffered line is counted as.
fn cost(line: &ConsoleLine) -> u64 {
    let name = match &line.progress {
        Some((_, Some(name))) => name.len(),
        _ => 0,
    };
    (line.text.len() + name) as u64 + LINE_OVERHEAD
}

/// Ends a line that was cut to fit the buffer.
const CUT_MARK: &str = "…";

/// Cuts `line` (at a character boundary, ending with [`CUT_MARK`]) so that it costs at most
/// `limit`; false when it already did.
fn cut_to_fit(line: &mut ConsoleLine, limit: u64) -> bool {
    if cost(line) <= limit {
        return false;
    }
    let keep = limit.saturating_sub(cost(line) - line.text.len() as u64 + CUT_MARK.len() as u64);
    let mut end = usize::try_from(keep)
        .unwrap_or(usize::MAX)
        .min(line.text.len());
    while !line.text.is_char_boundary(end) {
        end -= 1;
    }
    line.text.truncate(end);
    line.text.push_str(CUT_MARK);
    line.text.shrink_to_fit();
    true
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
    /// Lines cut because they were longer than the buffer.
    cut: u64,
    /// Lines the store refused for good (each replaced by a marker line saying so).
    refused: u64,
    /// Bytes counted for the lines in `pending`, in `tail` and being written (all taken from
    /// the process's [`ConsoleMemory`] too).
    held: u64,
}

/// How long a closed console keeps retrying an unreachable store before giving up.
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(300);

/// The longest one attempt at a batch may take, whatever the store's own bounds say (a
/// connection string may turn them off: `Timeout=0`, `Command Timeout=0`). An attempt past it
/// is abandoned like one that failed (the backends drop a connection left mid-statement, never
/// pool it) and retried: a link that went silent for good cannot hold the console's writer.
pub(crate) const ATTEMPT_WITHIN: Duration = Duration::from_secs(300);

/// While a console's writes keep failing, how often the writer says so again.
const STILL_FAILING_EVERY: Duration = Duration::from_secs(60);

impl StoreConsole {
    /// Starts the console's writer task.
    pub(crate) fn start(
        tracker: &tokio_util::task::TaskTracker,
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
        let memory = &CONSOLE_MEMORY;
        let (done_tx, done) = watch::channel(false);
        let writer = Writer {
            store,
            target,
            encoder: LineEncoder::new(start),
            shared: shared.clone(),
            budget,
            memory,
            prefix,
            finalized: false,
            closed_since: Mutex::new(None),
        };
        // In the runs' tracker: shutdown waits (with its bound) for the last lines.
        tracker.spawn(async move {
            writer.run().await;
            let _ = done_tx.send(true);
        });
        Self {
            shared,
            budget,
            memory,
            done,
        }
    }
}

impl Queue {
    /// Takes one line into the buffer (or the tail, or counts it as dropped). True when the
    /// buffer was empty before, so the writer must be woken.
    fn admit(&mut self, mut line: ConsoleLine, b: &ConsoleBudget, memory: &ConsoleMemory) -> bool {
        if self.closed {
            return false;
        }
        if cut_to_fit(&mut line, b.buffer_bytes.min(b.memory_bytes)) {
            self.cut += 1;
            if self.cut == 1 {
                tracing::warn!(target: "jobagent::console", buffer_bytes = b.buffer_bytes, "a console line longer than the console buffer was cut");
            }
        }
        let bytes = cost(&line);
        // Progress lines are few (one per distinct value) and always pass the budget.
        if line.progress.is_none() {
            let text = line.text.len() as u64;
            if !self.tail_mode
                && (self.taken_lines + 1 > b.max_lines.saturating_sub(b.tail_lines)
                    || self.taken_bytes + text > b.max_bytes)
            {
                self.tail_mode = true;
            }
            if self.tail_mode {
                self.keep_in_tail(line, bytes, b, memory);
                return false;
            }
            self.taken_lines += 1;
            self.taken_bytes += text;
        }
        let full = if self.pending.len() >= b.buffer_lines {
            Some("lines")
        } else if self.held + bytes > b.buffer_bytes {
            Some("bytes of this console")
        } else if !memory.try_take(bytes, b.memory_bytes) {
            Some("bytes of all consoles")
        } else {
            None
        };
        if let Some(bound) = full {
            self.overflow += 1;
            crate::metrics::console_dropped("buffer");
            if self.overflow == 1 {
                tracing::warn!(target: "jobagent::console", bound, buffer_lines = b.buffer_lines, buffer_bytes = b.buffer_bytes, memory_bytes = b.memory_bytes, "console buffer full (the store is slow or unreachable); further lines of this console are counted and dropped until it drains");
            }
            return false;
        }
        self.held += bytes;
        let was_empty = self.pending.is_empty();
        self.pending.push_back(line);
        crate::metrics::console_queued(1);
        was_empty
    }

    /// Keeps `line` as the newest of the tail, dropping the oldest tail lines while the tail
    /// has too many lines or the buffer too many bytes.
    fn keep_in_tail(
        &mut self,
        line: ConsoleLine,
        bytes: u64,
        b: &ConsoleBudget,
        memory: &ConsoleMemory,
    ) {
        loop {
            if (self.tail.len() as u64) < b.tail_lines
                && self.held + bytes <= b.buffer_bytes
                && memory.try_take(bytes, b.memory_bytes)
            {
                self.held += bytes;
                self.tail.push_back(line);
                crate::metrics::console_queued(1);
                return;
            }
            self.over_budget += 1;
            crate::metrics::console_dropped("budget");
            match self.tail.pop_front() {
                Some(old) => {
                    crate::metrics::console_queued(-1);
                    let freed = cost(&old);
                    self.held -= freed;
                    memory.give_back(freed);
                }
                // Not even an empty tail takes it: the line is the one dropped.
                None => return,
            }
        }
    }

    /// Gives back the bytes of lines written (or given up on).
    fn release(&mut self, bytes: u64, memory: &ConsoleMemory) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        memory.give_back(bytes);
    }

    /// Appends a line the writer adds itself (a marker), counted whatever the bounds.
    fn push_own(&mut self, line: ConsoleLine, memory: &ConsoleMemory) {
        let bytes = cost(&line);
        memory.take(bytes);
        self.held += bytes;
        self.pending.push_back(line);
        crate::metrics::console_queued(1);
    }

    /// Takes the next batch from the buffer, and the bytes it is counted as.
    fn batch(&mut self) -> (Vec<ConsoleLine>, u64) {
        let mut text = 0;
        let mut bytes = 0;
        let mut n = 0;
        for line in &self.pending {
            if n == BATCH_LINES || (n > 0 && text + line.text.len() > BATCH_BYTES) {
                break;
            }
            text += line.text.len();
            bytes += cost(line);
            n += 1;
        }
        crate::metrics::console_queued(-(n as i64));
        (self.pending.drain(..n).collect(), bytes)
    }
}

impl LineSink for StoreConsole {
    fn push(&self, line: ConsoleLine) {
        let wake = lock(&self.shared.queue).admit(line, &self.budget, self.memory);
        if wake {
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
        let q = lock(&self.shared.queue);
        q.overflow + q.refused
    }
}

/// The background writer of one console.
struct Writer {
    store: Arc<Store>,
    target: ConsoleTarget,
    encoder: LineEncoder,
    shared: Arc<Shared>,
    budget: ConsoleBudget,
    memory: &'static ConsoleMemory,
    prefix: String,
    finalized: bool,
    /// When the writer first found its console closed while the store failed.
    closed_since: Mutex<Option<tokio::time::Instant>>,
}

impl Drop for Writer {
    /// However the writer ends (done, given up, its task dropped), the console takes no more
    /// lines and its bytes go back to the process's budget.
    fn drop(&mut self) {
        let mut q = lock(&self.shared.queue);
        q.closed = true;
        crate::metrics::console_queued(-((q.pending.len() + q.tail.len()) as i64));
        q.pending.clear();
        q.tail.clear();
        let held = q.held;
        q.release(held, self.memory);
    }
}

enum Next {
    Batch(Vec<ConsoleLine>, u64),
    Wait,
    Finished,
}

impl Writer {
    async fn run(mut self) {
        loop {
            match self.next() {
                Next::Finished => return,
                Next::Wait => self.shared.wake.notified().await,
                Next::Batch(lines, bytes) => {
                    let count = lines.len();
                    let encoded: Vec<EncodedLine> = lines
                        .into_iter()
                        .map(|l| self.encoder.encode_owned(l))
                        .collect();
                    let delivery = deliver(&self, encoded).await;
                    let mut q = lock(&self.shared.queue);
                    q.release(bytes, self.memory);
                    q.refused += delivery.refused;
                    let written = count as u64 - delivery.refused - delivery.given_up;
                    crate::metrics::console_written(written as usize);
                    for _ in 0..delivery.refused {
                        crate::metrics::console_dropped("refused");
                    }
                    crate::metrics::console_gauges(self.memory.used());
                    if delivery.given_up > 0 {
                        let lost = delivery.given_up as usize + q.pending.len();
                        drop(q);
                        tracing::error!(target: "jobagent::console", store = %self.store.label, console = %self.target.set_key(), lost, "the store stayed unreachable after the run ended; giving up on this console's remaining lines");
                        return;
                    }
                }
            }
        }
    }

    /// Takes the next batch; once closed and drained, appends the budget's tail and the
    /// marker lines, then finishes.
    fn next(&mut self) -> Next {
        let mut guard = lock(&self.shared.queue);
        let q = &mut *guard;
        if q.pending.is_empty() {
            if !q.closed {
                return Next::Wait;
            }
            if self.finalized {
                return Next::Finished;
            }
            self.finalized = true;
            let b = &self.budget;
            if q.over_budget > 0 {
                let at = q.tail.front().map(|l| l.at).unwrap_or_else(SystemTime::now);
                let text = format!(
                    "{}… {} line(s) dropped: this run wrote more than its console budget ({} lines, {} bytes); the first and the last lines are kept …",
                    self.prefix, q.over_budget, b.max_lines, b.max_bytes
                );
                q.push_own(warning(at, text), self.memory);
            }
            q.pending.extend(q.tail.drain(..));
            if q.overflow > 0 {
                let text = format!(
                    "{}{} line(s) dropped: the store was unreachable or slow and this console's buffer ({} lines, {} bytes; {} bytes for all consoles of the agent) was full",
                    self.prefix, q.overflow, b.buffer_lines, b.buffer_bytes, b.memory_bytes
                );
                q.push_own(warning(SystemTime::now(), text), self.memory);
            }
            if q.cut > 0 {
                let text = format!(
                    "{}{} line(s) longer than this console's buffer ({} bytes) were cut to fit (they end with {CUT_MARK})",
                    self.prefix,
                    q.cut,
                    b.buffer_bytes.min(b.memory_bytes)
                );
                q.push_own(warning(SystemTime::now(), text), self.memory);
            }
            if q.pending.is_empty() {
                return Next::Finished;
            }
        }
        let (lines, bytes) = q.batch();
        Next::Batch(lines, bytes)
    }
}

/// What became of the lines handed to [`deliver`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Delivery {
    /// Lines the store refused for good, each replaced by a marker line (when the store took
    /// the marker).
    refused: u64,
    /// Lines not written because the store stayed unreachable: the writer gave up.
    given_up: u64,
}

/// Where [`deliver`] writes batches.
trait Batches {
    /// Writes `lines` as one batch, retrying while the store is unavailable or slow. An
    /// error is final: [`Refused`](StoreErrorKind::Refused) (this batch will never be taken
    /// as it is) or the last error once the writer gave up.
    async fn send(&self, lines: &[EncodedLine]) -> Result<(), StoreError>;

    /// The line written in place of `refused`, which the store will never take.
    fn marker(&self, refused: &EncodedLine, why: &StoreError) -> EncodedLine;
}

/// Writes `lines` in order. A batch the store refuses as it is (too large for a relay's
/// body limit, too many lines) is split in two halves, written one after the other; a single
/// line that is refused is replaced by a marker line at its offset that says so; the lines
/// after it are written as usual. So a refusal never holds the console back, and the result
/// can say how many lines were lost.
async fn deliver(to: &impl Batches, lines: Vec<EncodedLine>) -> Delivery {
    let mut done = Delivery::default();
    // Last in, first out: the next batch to write is at the end. A marker (`true`) stands
    // for a line already counted as refused.
    let mut todo = vec![(lines, false)];
    while let Some((mut batch, is_marker)) = todo.pop() {
        let Err(e) = to.send(&batch).await else {
            continue;
        };
        if e.kind() != StoreErrorKind::Refused {
            let waiting: usize = todo.iter().filter(|(_, m)| !m).map(|(b, _)| b.len()).sum();
            let this = if is_marker { 0 } else { batch.len() };
            done.given_up = (waiting + this) as u64;
            return done;
        }
        if batch.len() > 1 {
            let second = batch.split_off(batch.len() / 2);
            todo.push((second, false));
            todo.push((batch, false));
        } else if !is_marker && let Some(line) = batch.first() {
            done.refused += 1;
            todo.push((vec![to.marker(line, &e)], true));
        }
        // A refused marker is dropped: its line is counted already.
    }
    done
}

/// The most characters of a refusal's reason a marker line repeats.
const REASON_CHARS: usize = 120;

impl Batches for Writer {
    /// Retries with backoff while the store is unavailable or slow; gives up once the console
    /// is closed and the store stayed away [`GIVE_UP_AFTER_CLOSE`]. A refusal or a
    /// configuration error ends at once: sent again unchanged, the batch would be refused
    /// again (a configuration error is retried like an outage: an operator may fix it).
    async fn send(&self, lines: &[EncodedLine]) -> Result<(), StoreError> {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        let mut said = tokio::time::Instant::now();
        loop {
            let (store, target) = (&self.store, &self.target);
            let write = store.write_console(target.set_key(), target.hash_key(), lines);
            let attempt = tokio::time::timeout(ATTEMPT_WITHIN, write);
            let outcome = crate::metrics::store_op("console", async {
                attempt.await.unwrap_or_else(|_| {
                    Err(StoreError::timed_out(
                        "the store (a console batch)",
                        ATTEMPT_WITHIN,
                    ))
                })
            })
            .await;
            let e = match outcome {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(target: "jobagent::console", store = %self.store.label, failures, "console writes resumed");
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == StoreErrorKind::Refused => {
                    tracing::warn!(target: "jobagent::console", store = %self.store.label, lines = lines.len(), error = %e, "the store refused a console batch as it is; it is split, and a single line it refuses is replaced by a marker line");
                    return Err(e);
                }
                Err(e) => e,
            };
            failures += 1;
            if failures == 1 {
                said = tokio::time::Instant::now();
                tracing::warn!(target: "jobagent::console", store = %self.store.label, kind = %e.kind(), error = %e, "console write failed; retrying with backoff");
            } else if said.elapsed() >= STILL_FAILING_EVERY {
                said = tokio::time::Instant::now();
                tracing::warn!(target: "jobagent::console", store = %self.store.label, failures, kind = %e.kind(), error = %e, "console writes still failing; retrying with backoff");
            }
            if lock(&self.shared.queue).closed {
                let since = *lock(&self.closed_since).get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > GIVE_UP_AFTER_CLOSE {
                    return Err(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn marker(&self, refused: &EncodedLine, why: &StoreError) -> EncodedLine {
        let bytes = refused.value.len() + refused.reference.as_ref().map_or(0, |(_, t)| t.len());
        let reason: String = why.message().chars().take(REASON_CHARS).collect();
        let text = format!(
            "{}… a console line of {bytes} bytes is not shown: the store refused it ({reason}) …",
            self.prefix
        );
        self.encoder
            .replacement(refused, &warning(SystemTime::now(), text))
    }
}

/// A line the writer adds itself (a marker), written at `at`.
fn warning(at: SystemTime, text: String) -> ConsoleLine {
    ConsoleLine {
        at,
        text,
        color: Some(ConsoleColor::WARNING),
        progress: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> ConsoleLine {
        ConsoleLine {
            at: SystemTime::now(),
            text: text.to_owned(),
            color: Some(ConsoleColor::INFO),
            progress: None,
        }
    }

    fn numbered(n: usize, len: usize) -> ConsoleLine {
        let mut text = format!("line {n} ");
        while text.len() < len {
            text.push('.');
        }
        line(&text)
    }

    /// `line <n>` for each of `ns`: what [`texts`] reads of [`numbered`] lines.
    fn names(ns: impl IntoIterator<Item = usize>) -> Vec<String> {
        ns.into_iter().map(|n| format!("line {n}")).collect()
    }

    fn texts(lines: impl IntoIterator<Item = ConsoleLine>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.text.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// A budget whose byte bounds are `run` and `all` lines of `len` bytes.
    fn budget(len: usize, run: u64, all: u64) -> ConsoleBudget {
        let each = cost(&numbered(0, len));
        ConsoleBudget {
            buffer_bytes: run * each,
            memory_bytes: all * each,
            ..ConsoleBudget::default()
        }
    }

    #[test]
    fn one_console_holds_at_most_its_bytes_and_keeps_order() {
        let memory = ConsoleMemory::new();
        let b = budget(1000, 10, 1000);
        let mut q = Queue::default();
        for n in 1..=25 {
            q.admit(numbered(n, 1000), &b, &memory);
        }
        assert_eq!(q.pending.len(), 10);
        assert_eq!(q.overflow, 15);
        assert!(q.held <= b.buffer_bytes);
        assert_eq!(memory.used(), q.held);
        // Written: the bytes come back, later lines are taken again, in order.
        let (batch, bytes) = q.batch();
        assert_eq!(bytes, b.buffer_bytes);
        q.release(bytes, &memory);
        assert_eq!((q.held, memory.used()), (0, 0));
        for n in 26..=27 {
            q.admit(numbered(n, 1000), &b, &memory);
        }
        let mut kept = texts(batch);
        kept.extend(texts(q.pending.drain(..)));
        assert_eq!(kept, names((1..=10).chain(26..=27)));
        assert_eq!(q.overflow, 15);
    }

    #[test]
    fn all_consoles_share_one_budget() {
        let memory = ConsoleMemory::new();
        // Each console may hold 10 lines, all of them together 15.
        let b = budget(500, 10, 15);
        let (mut a, mut c) = (Queue::default(), Queue::default());
        for n in 1..=10 {
            a.admit(numbered(n, 500), &b, &memory);
        }
        for n in 1..=10 {
            c.admit(numbered(n, 500), &b, &memory);
        }
        assert_eq!((a.pending.len(), a.overflow), (10, 0));
        assert_eq!((c.pending.len(), c.overflow), (5, 5));
        assert_eq!(memory.used(), a.held + c.held);
        assert!(memory.used() <= b.memory_bytes);
        // What one console writes frees room for the other.
        let (_, bytes) = a.batch();
        a.release(bytes, &memory);
        for n in 11..=15 {
            c.admit(numbered(n, 500), &b, &memory);
        }
        assert_eq!((c.pending.len(), c.overflow), (10, 5));
        assert_eq!(texts(c.pending.drain(..)), names((1..=5).chain(11..=15)));
        let held = c.held;
        c.release(held, &memory);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_cut_never_kept_whole() {
        let memory = ConsoleMemory::new();
        let b = ConsoleBudget {
            buffer_bytes: 64 * 1024,
            ..ConsoleBudget::default()
        };
        let mut q = Queue::default();
        // Multi-byte characters: the cut falls on a character boundary.
        q.admit(line(&"é".repeat(1024 * 1024)), &b, &memory);
        assert_eq!((q.cut, q.pending.len()), (1, 1));
        let long = &q.pending[0].text;
        assert!(long.ends_with(CUT_MARK), "{:?}", long.chars().rev().take(4));
        assert!(cost(&q.pending[0]) <= b.buffer_bytes);
        assert!(long.len() > 60 * 1024);
        // It fills the buffer: the next line waits for it to be written.
        q.admit(line("short"), &b, &memory);
        assert_eq!((q.pending.len(), q.overflow), (1, 1));
        let (_, bytes) = q.batch();
        q.release(bytes, &memory);
        q.admit(line("short"), &b, &memory);
        assert_eq!(q.pending[0].text, "short");
        // The shared budget cuts too when it is the smaller one.
        let b = ConsoleBudget {
            memory_bytes: 8 * 1024,
            ..b
        };
        let memory = ConsoleMemory::new();
        let mut q = Queue::default();
        q.admit(line(&"x".repeat(100_000)), &b, &memory);
        assert_eq!((q.cut, q.pending.len()), (1, 1));
        assert!(cost(&q.pending[0]) <= 8 * 1024);
        assert_eq!(memory.used(), q.held);
    }

    #[test]
    fn the_tail_is_bounded_in_bytes_and_keeps_the_newest() {
        let memory = ConsoleMemory::new();
        let b = ConsoleBudget {
            max_lines: 20,
            tail_lines: 10,
            ..budget(1000, 6, 1000)
        };
        let mut q = Queue::default();
        for n in 1..=40 {
            q.admit(numbered(n, 1000), &b, &memory);
            // The head is written as it comes (the store is up).
            let (_, bytes) = q.batch();
            q.release(bytes, &memory);
        }
        // Head: lines 1..10; tail: at most 6 lines of bytes (of 10 allowed by lines).
        assert_eq!(q.tail.len(), 6);
        assert_eq!(texts(q.tail.iter().cloned()), names(35..=40));
        assert_eq!(q.over_budget, 30 - 6);
        assert_eq!(memory.used(), q.held);
        assert!(q.held <= b.buffer_bytes);
    }

    #[test]
    fn progress_lines_are_counted_in_bytes_too() {
        let memory = ConsoleMemory::new();
        let b = budget(100, 3, 100);
        let mut q = Queue::default();
        for p in 0..5 {
            q.admit(
                ConsoleLine {
                    at: SystemTime::now(),
                    text: "1".into(),
                    color: None,
                    progress: Some((f64::from(p), Some("n".repeat(80)))),
                },
                &b,
                &memory,
            );
        }
        assert!(q.held <= b.buffer_bytes);
        assert_eq!(q.pending.len() as u64 + q.overflow, 5);
    }

    /// A store that refuses (as a relay does, 413) any batch of more than `max_lines` lines or
    /// `max_bytes` bytes, and is unreachable once it took `up_for` batches.
    struct Refusing {
        max_lines: usize,
        max_bytes: usize,
        up_for: usize,
        written: Mutex<Vec<Vec<String>>>,
    }

    impl Refusing {
        fn new(max_lines: usize, max_bytes: usize) -> Self {
            Self {
                max_lines,
                max_bytes,
                up_for: usize::MAX,
                written: Mutex::new(Vec::new()),
            }
        }

        /// The lines written, in order.
        fn lines(&self) -> Vec<String> {
            lock(&self.written).iter().flatten().cloned().collect()
        }
    }

    impl Batches for Refusing {
        async fn send(&self, lines: &[EncodedLine]) -> Result<(), StoreError> {
            let mut written = lock(&self.written);
            if written.len() >= self.up_for {
                return Err(StoreError::unavailable("the store went away"));
            }
            let bytes: usize = lines.iter().map(|l| l.value.len()).sum();
            if lines.len() > self.max_lines || bytes > self.max_bytes {
                return Err(StoreError::refused("answered 413: too large"));
            }
            written.push(lines.iter().map(|l| l.value.clone()).collect());
            Ok(())
        }

        fn marker(&self, refused: &EncodedLine, why: &StoreError) -> EncodedLine {
            EncodedLine {
                value: format!("refused {} ({why})", refused.score),
                ..refused.clone()
            }
        }
    }

    fn encoded(n: usize, len: usize) -> Vec<EncodedLine> {
        (0..n)
            .map(|i| EncodedLine {
                value: format!("{i:<len$}"),
                score: i as f64,
                reference: None,
                progress_field: None,
            })
            .collect()
    }

    /// What [`deliver`] makes of a store that refuses or goes away: a refused line is replaced
    /// by its marker and later lines land in order; a batch refused as too large is split
    /// until it is taken; a refused line is counted even when its marker is refused too; what
    /// a store that stays away did not take is counted as given up.
    #[tokio::test]
    async fn delivery_splits_replaces_and_counts() {
        let with_long = |n, at: usize| {
            let mut lines = encoded(n, 10);
            lines[at].value = "x".repeat(1000);
            lines
        };
        let refused = |n| format!("refused {n} (answered 413: too large)");
        let padded = |n, len| (0..n).map(|i| format!("{i:<len$}")).collect::<Vec<_>>();
        let delivery = |refused, given_up| Delivery { refused, given_up };
        let mut in_order = padded(10, 10);
        in_order[4] = refused(4);
        let cases = [
            (
                "a refused line is replaced, later lines land in order",
                with_long(10, 4),
                Refusing::new(100, 500),
                delivery(1, 0),
                in_order,
            ),
            (
                "too many lines: split until taken",
                encoded(20, 5),
                Refusing::new(3, usize::MAX),
                delivery(0, 0),
                padded(20, 5),
            ),
            (
                "too many bytes: split until taken",
                encoded(40, 10),
                Refusing::new(100, 64),
                delivery(0, 0),
                padded(40, 10),
            ),
            (
                "nothing fits: each line and each marker refused",
                encoded(5, 10),
                Refusing::new(100, 3),
                delivery(5, 0),
                Vec::new(),
            ),
            (
                // One batch taken (line 0), then a marker for line 1, then the store is gone.
                "the store stays away",
                with_long(8, 1),
                Refusing {
                    up_for: 2,
                    ..Refusing::new(100, 500)
                },
                delivery(1, 6),
                vec![format!("{:<10}", 0), refused(1)],
            ),
        ];
        for (name, lines, store, done, written) in cases {
            assert_eq!(deliver(&store, lines).await, done, "{name}");
            assert_eq!(store.lines(), written, "{name}");
        }
    }

    #[test]
    fn the_shared_counter_refuses_past_its_limit_and_gives_back() {
        let memory = ConsoleMemory::new();
        assert!(memory.try_take(60, 100));
        assert!(!memory.try_take(41, 100));
        assert!(memory.try_take(40, 100));
        assert_eq!(memory.used(), 100);
        memory.give_back(100);
        assert_eq!(memory.used(), 0);
    }
}
