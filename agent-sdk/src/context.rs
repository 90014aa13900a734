//! `JobContext`: what a run knows about itself.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::console::Console;
use crate::error::JobError;
use crate::item::{JobItem, LazyItem};
use crate::store::lock::{LockError, StoreLock};

/// A run's cancellation: a flag, and a [`CancellationToken`] made only once something asks
/// for one (to wait on it, or to hand it on). Most runs end without: making a token costs an
/// allocation, and dropping it takes its lock.
///
/// `cancel` sets the flag and then cancels the token if there is one; `token` makes the
/// token and then cancels it if the flag is set. The fences between the two steps make sure
/// that at least one side sees the other's step, so a token never misses a cancellation.
pub(crate) struct Cancel {
    flag: AtomicBool,
    token: OnceLock<CancellationToken>,
}

impl Cancel {
    /// A run's cancellation, cancelled from the start when `cancelled`.
    pub(crate) fn new(cancelled: bool) -> Self {
        Self {
            flag: AtomicBool::new(cancelled),
            token: OnceLock::new(),
        }
    }

    /// The cancellation of `token` (a stop's context shares the stopped run's).
    pub(crate) fn of(token: CancellationToken) -> Self {
        Self {
            flag: AtomicBool::new(false),
            token: OnceLock::from(token),
        }
    }

    fn token(&self) -> &CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new);
        fence(Ordering::SeqCst);
        if self.flag.load(Ordering::Relaxed) {
            token.cancel();
        }
        token
    }

    /// The flag, or the token when one was handed out (whoever holds it may cancel it).
    fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.token.get().is_some_and(|t| t.is_cancelled())
    }

    fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }
}

/// The context of one run: its parameter, the center's job item, headers, ids, console and
/// cancellation token. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) class: &'static str,
    pub(crate) job_id: String,
    pub(crate) server_id: Option<String>,
    pub(crate) job_url: Option<String>,
    pub(crate) param: String,
    pub(crate) item: LazyItem,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) token: Cancel,
    pub(crate) console: Console,
    pub(crate) started_at: SystemTime,
    pub(crate) fence: std::sync::OnceLock<u64>,
    pub(crate) states: crate::state::States,
    /// The store this run writes to (none for a log-only run).
    pub(crate) store: Option<Arc<crate::store::Store>>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("class", &self.inner.class)
            .field("job_id", &self.inner.job_id)
            .field("server_id", &self.inner.server_id)
            .field("item", &self.inner.item)
            .field("headers", &self.inner.headers.keys().collect::<Vec<_>>())
            .field("cancelled", &self.inner.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(inner: ContextInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn fence_cell(&self) -> &std::sync::OnceLock<u64> {
        &self.inner.fence
    }

    /// A value of application state given to the agent with
    /// [`AgentOptions::state`](crate::AgentOptions::state), by its type (exactly the type given:
    /// `Arc<Db>` and `Db` are two types). An error naming the type and the fix when none was
    /// given, so `?` reports it as the run's failure.
    ///
    /// A job that always needs a value takes it in its constructor instead
    /// (`#[job_agent(constructor = "...")]`): the agent then refuses to start without it.
    ///
    /// ```
    /// # use jobagent::{JobContext, JobError};
    /// #[derive(Clone)]
    /// struct Mailer { from: String }
    ///
    /// async fn send(cx: &JobContext) -> Result<(), JobError> {
    ///     let mailer = cx.state::<Mailer>()?;
    ///     cx.console().info(format!("sending as {}", mailer.from));
    ///     Ok(())
    /// }
    /// ```
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, JobError> {
        self.inner
            .states
            .get::<T>()
            .ok_or_else(|| JobError::msg(crate::state::MissingState::of::<T>()))
    }

    pub(crate) fn states(&self) -> &crate::state::States {
        &self.inner.states
    }

    /// The parameter as sent (the request body; usually JSON).
    pub fn param_text(&self) -> &str {
        &self.inner.param
    }

    /// One key of a JSON-object parameter, as `T`. `Ok(None)` when the parameter is empty or
    /// lacks the key; an error when the parameter is not a JSON object or the value is not a
    /// `T`. A number or boolean sent as a string (`{"Hour":"48"}`) is read as one.
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, JobError> {
        let text = self.inner.param.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let object: serde_json::Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| JobError::msg(format!("the parameter is not a JSON object: {e}")))?;
        let Some(value) = object.get(key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        match T::deserialize(value) {
            Ok(v) => Ok(Some(v)),
            Err(first) => {
                if let Value::String(s) = value
                    && let Ok(inner) = serde_json::from_str::<Value>(s)
                    && let Ok(v) = T::deserialize(&inner)
                {
                    return Ok(Some(v));
                }
                Err(JobError::msg(format!("parameter `{key}`: {first}")))
            }
        }
    }

    /// The whole parameter as `T` (an empty parameter reads as `{}`). The error names the
    /// field that does not fit (``parameter `items[2].qty` does not fit: ...``).
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        params_from(&self.inner.param)
    }

    /// The job class this run belongs to.
    pub fn class(&self) -> &'static str {
        self.inner.class
    }

    /// The center's background-job id of this run.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// The center server that dispatched the run.
    pub fn server_id(&self) -> Option<&str> {
        self.inner.server_id.as_deref()
    }

    /// The dashboard URL of this job.
    pub fn job_url(&self) -> Option<&str> {
        self.inner.job_url.as_deref()
    }

    /// The center's job item.
    pub fn item(&self) -> &JobItem {
        self.inner.item.get()
    }

    /// The item's `AgentTimeout` (ms), read without building the typed item.
    pub(crate) fn agent_timeout(&self) -> Option<i64> {
        self.inner.item.agent_timeout()
    }

    /// The pass-through headers (`x-job-agent-header`), decoded.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.inner.headers
    }

    /// One pass-through header, by exact name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers.get(name).map(String::as_str)
    }

    /// The run's console.
    pub fn console(&self) -> &Console {
        &self.inner.console
    }

    /// The run's cancellation token (cancelled on stop, timeout or shutdown).
    pub fn token(&self) -> &CancellationToken {
        self.inner.token.token()
    }

    /// Resolves when the run is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.token().cancelled()
    }

    /// Whether the run has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Cancels the run.
    pub fn cancel(&self) {
        self.inner.token.cancel()
    }

    /// Sleeps for `duration`, or returns [`JobError::cancelled`] as soon as the run is
    /// cancelled.
    pub async fn sleep(&self, duration: std::time::Duration) -> Result<(), JobError> {
        tokio::select! {
            _ = self.inner.token.token().cancelled() => Err(JobError::cancelled()),
            _ = tokio::time::sleep(duration) => Ok(()),
        }
    }

    /// The fencing token of this run's cluster-wide singleton claim: it grows with every
    /// claim of the class, so business code can refuse writes from a run whose token is lower
    /// than one it has seen. `None` for transient jobs and without a shared store.
    pub fn fencing_token(&self) -> Option<u64> {
        self.inner.fence.get().copied()
    }

    /// When the run started.
    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    /// Takes the center's distributed lock on `resource` in the store this run writes to,
    /// waiting up to `timeout` while someone else holds it: the lock .NET code takes with
    /// `JobStorage.Current.GetConnection().AcquireDistributedLock(resource, timeout)`, written
    /// as that store's Hangfire package writes it, so Rust and .NET holders exclude each
    /// other. Released when the returned guard is dropped. See [`StoreLock`].
    pub async fn lock(
        &self,
        resource: &str,
        timeout: std::time::Duration,
    ) -> Result<StoreLock, LockError> {
        match &self.inner.store {
            Some(store) => StoreLock::acquire(store.clone(), resource, timeout).await,
            None => Err(LockError::NoStore("this run writes to no store (log-only)")),
        }
    }

    pub(crate) fn store(&self) -> Option<&Arc<crate::store::Store>> {
        self.inner.store.as_ref()
    }
}

/// Reads a whole parameter as `T`; the error names the field that does not fit.
fn params_from<T: DeserializeOwned>(text: &str) -> Result<T, JobError> {
    let text = text.trim();
    let text = if text.is_empty() { "{}" } else { text };
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            JobError::msg(format!("the parameter does not fit: {}", e.inner()))
        } else {
            JobError::msg(format!("parameter `{path}` does not fit: {}", e.inner()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whichever comes first, the cancellation or the token, the token ends up cancelled, and
    /// a token handed out and cancelled by its holder counts as the run's cancellation.
    #[test]
    fn a_lazily_made_token_never_misses_a_cancellation() {
        let before = Cancel::new(false);
        before.cancel();
        assert!(before.is_cancelled() && before.token().is_cancelled());
        let after = Cancel::new(false);
        let token = after.token().clone();
        assert!(!after.is_cancelled());
        after.cancel();
        assert!(token.is_cancelled());
        let held = Cancel::new(false);
        held.token().cancel();
        assert!(held.is_cancelled());
        assert!(Cancel::new(true).token().is_cancelled());
    }

    /// A token made while another thread cancels the run is cancelled once both are done,
    /// whichever interleaving happens. Two threads that live for the whole test start each
    /// round together (spinning on one counter), so the two calls do overlap: a thread
    /// spawned per round, as this test once did, starts long after the token was made and
    /// never tests the race. Each round's outcome is checked after both calls returned.
    #[test]
    fn a_token_made_while_the_run_is_cancelled_never_misses_it() {
        use std::sync::atomic::AtomicUsize;
        const ROUNDS: usize = 100_000;
        let cancels: Arc<Vec<Cancel>> = Arc::new((0..ROUNDS).map(|_| Cancel::new(false)).collect());
        // Round `i` starts when `step` is `2i + 1` and its cancellation is done at `2i + 2`.
        let step = Arc::new(AtomicUsize::new(0));
        let canceller = {
            let (cancels, step) = (cancels.clone(), step.clone());
            std::thread::spawn(move || {
                for (i, cancel) in cancels.iter().enumerate() {
                    while step.load(Ordering::Acquire) != 2 * i + 1 {
                        std::hint::spin_loop();
                    }
                    cancel.cancel();
                    step.store(2 * i + 2, Ordering::Release);
                }
            })
        };
        let mut missed = 0;
        for (i, cancel) in cancels.iter().enumerate() {
            step.store(2 * i + 1, Ordering::Release);
            let token = cancel.token().clone();
            while step.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
            if !token.is_cancelled() {
                missed += 1;
            }
        }
        canceller.join().expect("the canceller");
        assert_eq!(
            missed, 0,
            "tokens that missed their run's cancellation in {ROUNDS} rounds"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        id: u64,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        qty: u32,
    }

    #[test]
    fn a_parameter_that_does_not_fit_names_the_field() {
        let err = params_from::<Order>(r#"{"id": 1, "items": [{"qty": 1}, {"qty": "many"}]}"#)
            .expect_err("qty is not a number");
        assert!(
            err.message()
                .starts_with("parameter `items[1].qty` does not fit: invalid type"),
            "{err}"
        );
        let err = params_from::<Order>(r#"{"id": 1}"#).expect_err("items missing");
        assert!(err.message().contains("missing field `items`"), "{err}");
        let err = params_from::<Order>("[1]").expect_err("not an object");
        assert!(
            err.message().starts_with("the parameter does not fit"),
            "{err}"
        );
        assert!(params_from::<Order>(r#"{"id": 1, "items": []}"#).is_ok());
    }
}
