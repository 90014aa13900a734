//! The job console: lines, colors and progress bars, as the center's dashboard shows them.
//!
//! Writing never waits: a line is handed to the console's sink, which is the center's store
//! (see `store/`) or, without a store, the agent's own `tracing` log.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::error::JobError;
use crate::future::BoxFuture;
use crate::sync::lock;

/// A console line color, as the dashboard renders it (`#rrggbb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsoleColor(&'static str);

impl ConsoleColor {
    /// `#ffffff`: information.
    pub const INFO: Self = Self("#ffffff");
    /// `#ffff00`: a warning.
    pub const WARNING: Self = Self("#ffff00");
    /// `#ff0000`: an error.
    pub const ERROR: Self = Self("#ff0000");
    /// `#008000`: the runtime's own lifecycle lines.
    pub const LIFECYCLE: Self = Self("#008000");

    /// A custom color; `hex` must be `#rrggbb` (anything else is written as given).
    pub const fn custom(hex: &'static str) -> Self {
        Self(hex)
    }

    /// The `#rrggbb` text.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// One console line as the job wrote it, before it is encoded for a store.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConsoleLine {
    pub(crate) at: SystemTime,
    pub(crate) text: String,
    pub(crate) color: Option<ConsoleColor>,
    /// For a progress bar line: its value and name.
    pub(crate) progress: Option<(f64, Option<String>)>,
}

/// Where a console's lines go. Pushing never blocks.
pub(crate) trait LineSink: Send + Sync + 'static {
    fn push(&self, line: ConsoleLine);
    /// Resolves when every pushed line has been written (or given up on).
    fn flush(&self) -> BoxFuture<()>;
    /// Lines dropped so far (budget or overflow), for the result.
    fn dropped(&self) -> u64 {
        0
    }
    /// Whether the runtime's own lifecycle lines are kept (worth building).
    fn keeps_lifecycle(&self) -> bool {
        true
    }
    /// Whether the lines go to the service's log already (no mirror needed).
    fn is_log(&self) -> bool {
        false
    }
}

/// A console's sink, held in the console itself when it is the log's (one allocation less
/// for every run of an agent without a store).
pub(crate) enum Sink {
    Log(LogSink),
    Shared(Arc<dyn LineSink>),
}

impl std::ops::Deref for Sink {
    type Target = dyn LineSink;

    fn deref(&self) -> &Self::Target {
        match self {
            Sink::Log(log) => log,
            Sink::Shared(sink) => sink.as_ref(),
        }
    }
}

/// The sink of an agent without a store: lines go to `tracing`, with the job id.
pub(crate) struct LogSink {
    pub(crate) job_id: String,
}

impl LineSink for LogSink {
    fn push(&self, line: ConsoleLine) {
        let job_id = self.job_id.as_str();
        match (&line.progress, line.color) {
            (Some((value, name)), _) => {
                tracing::info!(target: "jobagent::console", job_id, bar = %line.text, name = name.as_deref().unwrap_or(""), progress = value, "progress")
            }
            (None, Some(ConsoleColor::ERROR)) => {
                tracing::error!(target: "jobagent::console", job_id, "{}", line.text)
            }
            (None, Some(ConsoleColor::WARNING)) => {
                tracing::warn!(target: "jobagent::console", job_id, "{}", line.text)
            }
            // The runtime's own lines (started, finished): the result line says the same.
            (None, Some(ConsoleColor::LIFECYCLE)) => {
                tracing::debug!(target: "jobagent::console", job_id, "{}", line.text)
            }
            _ => tracing::info!(target: "jobagent::console", job_id, "{}", line.text),
        }
    }

    fn flush(&self) -> BoxFuture<()> {
        crate::future::done()
    }

    fn keeps_lifecycle(&self) -> bool {
        tracing::enabled!(target: "jobagent::console", tracing::Level::DEBUG)
    }

    fn is_log(&self) -> bool {
        true
    }
}

/// Whom a console's lines are mirrored to the service's log as (`JOBAGENT_CONSOLE_LOG`).
pub(crate) struct LogMirror {
    pub(crate) class: &'static str,
    pub(crate) job_id: String,
    /// The run's `job_run` span: each mirrored line is emitted in it, so it carries the run's
    /// `trace_id` wherever the job wrote it from (a task it spawned, `on_stop`, the runtime's
    /// own lines from a stop or a watchdog).
    pub(crate) span: tracing::Span,
}

impl LogMirror {
    fn write(&self, line: &str, color: Option<ConsoleColor>, progress: Option<f64>) {
        // Entering the span the line is already in changes nothing (a subscriber shows a
        // span once however often it is entered).
        self.span.in_scope(|| self.emit(line, color, progress));
    }

    fn emit(&self, line: &str, color: Option<ConsoleColor>, progress: Option<f64>) {
        let (class, job_id) = (self.class, self.job_id.as_str());
        match (progress, color) {
            (Some(value), _) => {
                tracing::info!(target: "jobagent::console", class, job_id, bar = line, progress = value, "progress")
            }
            (None, Some(ConsoleColor::ERROR)) => {
                tracing::error!(target: "jobagent::console", class, job_id, "{line}")
            }
            (None, Some(ConsoleColor::WARNING)) => {
                tracing::warn!(target: "jobagent::console", class, job_id, "{line}")
            }
            _ => tracing::info!(target: "jobagent::console", class, job_id, "{line}"),
        }
    }
}

/// Milliseconds since the first console of the process was made: a clock for activity.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The console of one run. Cheap to clone; every clone writes to the same console.
#[derive(Clone)]
pub struct Console {
    inner: Arc<ConsoleInner>,
}

/// The agent's console prefix, held by every run's console. The default one is static: a
/// shared `Arc`'s count would be updated by both worker threads on every run.
#[derive(Clone)]
pub(crate) enum Prefix {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Prefix {
    pub(crate) fn new(prefix: &str) -> Self {
        if prefix == crate::options::DEFAULT_CONSOLE_PREFIX {
            Prefix::Static(crate::options::DEFAULT_CONSOLE_PREFIX)
        } else {
            Prefix::Shared(prefix.into())
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Prefix::Static(s) => s,
            Prefix::Shared(s) => s,
        })
    }
}

/// [`ConsoleInner::active_at`] of a console no watchdog watches.
const UNWATCHED: u64 = u64::MAX;

struct ConsoleInner {
    /// The agent's prefix, shared by every run's console (not a copy per run).
    prefix: Prefix,
    sink: Sink,
    next_bar: AtomicI64,
    closed: AtomicBool,
    written: AtomicU64,
    /// When the job last wrote a line or moved a bar ([`now_ms`]); [`UNWATCHED`] until a
    /// stall watchdog [watches](Console::watch) the console (reading the clock on every line
    /// and every run costs more than the rest of writing a line to the log).
    active_at: AtomicU64,
    mirror: Option<LogMirror>,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("written", &self.inner.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The most progress bars one console may hold.
const MAX_BARS: i64 = 1000;

impl Console {
    #[cfg(test)]
    pub(crate) fn new(prefix: Prefix, first_bar_id: i64, sink: Sink) -> Self {
        Self::mirrored(prefix, first_bar_id, sink, None)
    }

    /// A console whose lines also go to the service's log as `mirror` (unless its sink is
    /// that log already).
    pub(crate) fn mirrored(
        prefix: Prefix,
        first_bar_id: i64,
        sink: Sink,
        mirror: Option<LogMirror>,
    ) -> Self {
        let mirror = mirror.filter(|_| !sink.is_log());
        Self {
            inner: Arc::new(ConsoleInner {
                prefix,
                sink,
                next_bar: AtomicI64::new(first_bar_id.saturating_add(1)),
                closed: AtomicBool::new(false),
                written: AtomicU64::new(0),
                active_at: AtomicU64::new(UNWATCHED),
                mirror,
            }),
        }
    }

    /// Starts tracking the job's activity for a stall watchdog: from now on, every line and
    /// progress change is timed. Lines written before count as written now.
    pub(crate) fn watch(&self) {
        self.inner.active_at.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the job last wrote a line or moved a progress bar (or since the
    /// watchdog began watching); zero while no watchdog watches.
    pub(crate) fn silent_for(&self) -> std::time::Duration {
        let at = self.inner.active_at.load(Ordering::Relaxed);
        if at == UNWATCHED {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(now_ms().saturating_sub(at))
    }

    /// Writes a line of the runtime's that does not count as the job's activity.
    pub(crate) fn runtime_warning(&self, text: impl AsRef<str>) {
        let text = format!("{}{}", self.inner.prefix, text.as_ref());
        self.push_line(text, Some(ConsoleColor::WARNING), None, false);
    }

    /// Writes a line in `color` (or the dashboard's default).
    pub fn write_line(&self, text: impl AsRef<str>, color: impl Into<Option<ConsoleColor>>) {
        let text = format!("{}{}", self.inner.prefix, text.as_ref());
        self.push(text, color.into(), None);
    }

    /// Writes a white information line.
    pub fn info(&self, text: impl AsRef<str>) {
        self.write_line(text, ConsoleColor::INFO);
    }

    /// Writes a yellow warning line.
    pub fn warning(&self, text: impl AsRef<str>) {
        self.write_line(text, ConsoleColor::WARNING);
    }

    /// Writes a red error line.
    pub fn error(&self, text: impl AsRef<str>) {
        self.write_line(text, ConsoleColor::ERROR);
    }

    /// Starts a new progress bar at 0 %. The name shows beside the bar.
    pub fn progress_bar(&self, name: impl Into<String>) -> Result<ProgressBar, JobError> {
        self.new_bar(Some(name.into()), None)
    }

    /// Starts a new progress bar with a color.
    pub fn progress_bar_colored(
        &self,
        name: impl Into<String>,
        color: ConsoleColor,
    ) -> Result<ProgressBar, JobError> {
        self.new_bar(Some(name.into()), Some(color))
    }

    fn new_bar(
        &self,
        name: Option<String>,
        color: Option<ConsoleColor>,
    ) -> Result<ProgressBar, JobError> {
        let id = self.inner.next_bar.fetch_add(1, Ordering::Relaxed);
        if id > MAX_BARS {
            return Err(JobError::msg(format!(
                "a console holds at most {MAX_BARS} progress bars"
            )));
        }
        let bar = ProgressBar {
            console: self.clone(),
            id: id.to_string(),
            name,
            color,
            last: Arc::new(Mutex::new(None)),
        };
        bar.set(0.0);
        Ok(bar)
    }

    /// Lines written so far.
    pub fn lines_written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Writes one of the runtime's own lines; `text` is only built when the sink keeps it.
    pub(crate) fn lifecycle(&self, text: impl FnOnce() -> String) {
        if self.inner.sink.keeps_lifecycle() {
            self.write_line(text(), ConsoleColor::LIFECYCLE);
        }
    }

    fn push(
        &self,
        text: String,
        color: Option<ConsoleColor>,
        progress: Option<(f64, Option<String>)>,
    ) {
        let active = color != Some(ConsoleColor::LIFECYCLE);
        self.push_line(text, color, progress, active);
    }

    fn push_line(
        &self,
        text: String,
        color: Option<ConsoleColor>,
        progress: Option<(f64, Option<String>)>,
        active: bool,
    ) {
        if self.inner.closed.load(Ordering::Acquire) {
            tracing::debug!(target: "jobagent::console", "a line written after the run ended was dropped");
            return;
        }
        if active && self.inner.active_at.load(Ordering::Relaxed) != UNWATCHED {
            self.inner.active_at.store(now_ms(), Ordering::Relaxed);
        }
        if let Some(mirror) = &self.inner.mirror {
            mirror.write(&text, color, progress.as_ref().map(|p| p.0));
        }
        self.inner.written.fetch_add(1, Ordering::Relaxed);
        self.inner.sink.push(ConsoleLine {
            at: SystemTime::now(),
            text,
            color,
            progress,
        });
    }

    /// Stops taking lines and waits until those taken are written.
    pub(crate) async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.sink.flush().await;
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.inner.sink.dropped()
    }
}

/// A progress bar on a console. Setting an unchanged value writes nothing.
#[derive(Clone)]
pub struct ProgressBar {
    console: Console,
    id: String,
    name: Option<String>,
    color: Option<ConsoleColor>,
    last: Arc<Mutex<Option<f64>>>,
}

impl fmt::Debug for ProgressBar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressBar")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProgressBar {
    /// Sets the bar to `percent` (clamped to 0..=100, rounded to one decimal).
    pub fn set(&self, percent: f64) {
        let value = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0)
        };
        let value = (value * 10.0).round() / 10.0;
        {
            let mut last = lock(&self.last);
            if *last == Some(value) {
                return;
            }
            *last = Some(value);
        }
        self.console.push(
            self.id.clone(),
            self.color,
            Some((value, self.name.clone())),
        );
    }

    /// Sets the bar to `done` of `total` items.
    pub fn set_ratio(&self, done: u64, total: u64) {
        if total > 0 {
            self.set(done as f64 * 100.0 / total as f64);
        }
    }

    /// The bar's id as the dashboard knows it (`"1"`, `"2"`, ...).
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Capture(Mutex<Vec<ConsoleLine>>);
    impl LineSink for Capture {
        fn push(&self, line: ConsoleLine) {
            self.0.lock().expect("lock").push(line);
        }
        fn flush(&self) -> BoxFuture<()> {
            crate::future::done()
        }
    }
    impl LineSink for Arc<Capture> {
        fn push(&self, line: ConsoleLine) {
            (**self).push(line)
        }
        fn flush(&self) -> BoxFuture<()> {
            crate::future::done()
        }
    }

    #[test]
    fn prefixes_colors_and_bars() {
        let cap = Arc::new(Capture::default());
        let console = Console::new(
            Prefix::new("【JobAgent】"),
            0,
            Sink::Shared(Arc::new(cap.clone())),
        );
        console.warning("careful");
        let bar = console.progress_bar("import").expect("bar");
        bar.set(12.34);
        bar.set(12.3);
        bar.set(150.0);
        let bar2 = console.progress_bar("second").expect("bar");
        let lines = cap.0.lock().expect("lock").clone();
        assert_eq!(lines[0].text, "【JobAgent】careful");
        assert_eq!(lines[0].color, Some(ConsoleColor::WARNING));
        let bars: Vec<_> = lines[1..]
            .iter()
            .map(|l| (l.text.as_str(), l.progress.clone()))
            .collect();
        assert_eq!(
            bars,
            vec![
                ("1", Some((0.0, Some("import".to_owned())))),
                ("1", Some((12.3, Some("import".to_owned())))),
                ("1", Some((100.0, Some("import".to_owned())))),
                ("2", Some((0.0, Some("second".to_owned())))),
            ]
        );
        assert_eq!(bar2.id(), "2");
    }
}
