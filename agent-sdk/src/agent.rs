//! `Agent`: the handle a host service builds once, mounts, and shuts down.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderValue;

use tokio_util::sync::CancellationToken;

use crate::cluster::Member;
use crate::endpoint::AgentInner;
use crate::error::ConfigError;
use crate::options::AgentOptions;
use crate::registry::Registry;
use crate::router::basic_token;
use crate::runtime::Runtime;
use crate::store::{Heartbeats, Store, Stores};

/// A job agent: the registry of this program's jobs, their runtime, and the router the
/// center calls. Cheap to clone.
///
/// ```no_run
/// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{Router, routing::get};
///
/// let agent = jobagent::Agent::new(jobagent::AgentOptions::from_env()?)?;
/// let app = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .merge(agent.router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(agent.shutdown_on_signal())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("server_id", &self.inner.server_id)
            .field("options", &self.inner.runtime.options)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Builds an agent from every `#[job_agent]` type linked into the program. Fails on an
    /// invalid option or two types with one class name.
    pub fn new(options: AgentOptions) -> Result<Self, ConfigError> {
        options.validate()?;
        crate::metrics::describe();
        let registry = Registry::from_inventory()?;
        registry.check_states(&options.states)?;
        let expected_auth = options
            .basic_auth
            .as_ref()
            .map(|a| basic_token(&a.user, a.password.expose()));
        if options.basic_auth.is_none() && options.store.is_none() {
            tracing::warn!(
                "job agent: basic auth is off and stores come from request headers; anyone who reaches this endpoint can run jobs and make the agent connect to a database of their choice (set JOBAGENT_BASIC_USER/JOBAGENT_BASIC_PASSWORD, and JOBAGENT_STORE or JOBAGENT_STORE_ALLOWED_HOSTS)"
            );
        }
        for reg in registry.iter() {
            tracing::debug!(class = reg.class(), kind = %reg.kind(), "job registered");
        }
        let stores = Stores::new(
            options.store.as_ref(),
            options.allowed_store_hosts.clone(),
            options.store_idle,
        )?;
        let param_budget = crate::budget::ParamBudget::new(options.limits.max_param_bytes_running);
        let server_id = agent_server_id(&options, stores.local().as_deref());
        let header = HeaderValue::from_str(&server_id)
            .map_err(|_| ConfigError::invalid("JOBAGENT_AGENT_ID", "not a header value"))?;
        let cookie = HeaderValue::from_str(&format!("agentServerId={server_id}; Path=/"))
            .map_err(|_| ConfigError::invalid("JOBAGENT_AGENT_ID", "not a header value"))?;
        log_start(&options, &registry, stores.local().as_deref(), &server_id);
        if let (Some(store), Ok(rt)) = (stores.local(), tokio::runtime::Handle::try_current()) {
            rt.spawn(warn_when_tables_missing(store));
        }
        let heartbeat_stop = CancellationToken::new();
        let member = Member {
            instance: options.instance_name(),
            // The cluster tells processes apart, even when they present one agentServerId.
            server_id: uuid::Uuid::new_v4().to_string(),
        };
        let runtime = Arc::new(Runtime::new(registry, options, member));
        let heartbeats = Arc::new(Heartbeats::new(
            heartbeat_stop.clone(),
            runtime.background().clone(),
        ));
        let agent = Self {
            inner: Arc::new(AgentInner {
                runtime,
                expected_auth,
                server_id,
                server_id_header: header,
                server_id_cookie: cookie,
                stores,
                heartbeats,
                heartbeat_stop,
                param_budget,
                auth_limit: crate::auth_limit::AuthLimit::new(),
                readiness: Mutex::new(None),
            }),
        };
        // With a configured store, reconcile and coordinate from the start (when a runtime
        // runs; otherwise at the first request).
        if let (Some(store), Ok(_)) = (
            agent.inner.stores.local(),
            tokio::runtime::Handle::try_current(),
        ) {
            agent.inner.coordinate(&store);
        }
        Ok(agent)
    }

    /// The router that answers the center at the configured path. **Merge** it into the
    /// host's router (`Router::new().merge(agent.router())`; it carries its own state); the
    /// host's own routes win for their paths. The path is part of the router already, so
    /// nesting is not needed; `nest("/jobagent", agent.router())` at the agent's own path
    /// also serves `/jobagent` (not `/jobagent/jobagent`; but axum's `nest` matches its
    /// prefix case-sensitively and routes no `/jobagent/` to it, so only merging serves
    /// `/JobAgent` and `/jobagent/`), and a router nested under any
    /// other prefix answers at the path under it (`/svc/jobagent`), with a warning logged
    /// the first time a request under that prefix finds nothing.
    ///
    /// It matches as the .NET agent's ASP.NET `app.Map(path)` does, so job URLs written for
    /// it keep working: case-insensitively and by prefix (`/JobAgent`, `/jobagent/`,
    /// `/jobagent/x`), through routes for the path as configured plus a fallback for the
    /// other spellings. axum panics when two merged routers both have a fallback, so a host
    /// with its own fallback sets it after merging
    /// (`Router::new().merge(agent.router()).fallback(f)`): that replaces the agent's, and then
    /// only the path as configured (and `path/`, `path/...`) reaches the agent.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        crate::router::router(self.inner.clone())
    }

    /// The id this agent presents to the center as `agentServerId` (see
    /// [`AgentOptions::agent_id`]).
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// The jobs this agent runs.
    pub fn registry(&self) -> &Registry {
        &self.inner.runtime.registry
    }

    /// The options in force.
    pub fn options(&self) -> &AgentOptions {
        &self.inner.runtime.options
    }

    /// Registers every job that did not opt out (`#[job_agent(register = false)]`) as a recurring job at
    /// the center, in the background, when auto-registration is configured
    /// (`JOBAGENT_AUTO_REGISTER` and friends); `None` when it is not. (Feature `center`.)
    #[cfg(feature = "center")]
    pub fn start_auto_registration(
        &self,
    ) -> Option<tokio::task::JoinHandle<crate::center::RegistrationReport>> {
        let options = self.inner.runtime.options.auto_register.clone()?;
        Some(crate::center::spawn_auto_register(
            self.registry(),
            options,
            self.options().path_str(),
        ))
    }

    /// The probes at the root: `GET /healthz` (200 while the process serves) and `GET
    /// /readyz` (200 `ready`; 503 with why while the agent drains or shuts down, or while its
    /// own store does not answer). Merge it, or serve it on a listener of its own. The
    /// agent's [`router`](Self::router) answers the same under its path
    /// (`/jobagent/healthz`, `/jobagent/readyz`), so they never clash with a host's routes.
    pub fn probes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        crate::probes::router(self.inner.clone())
    }

    /// Takes the center's distributed lock on `resource` in the agent's own store
    /// (`JOBAGENT_STORE`), for service code outside a run; see [`JobContext::lock`](crate::JobContext::lock).
    pub async fn lock(
        &self,
        resource: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::StoreLock, crate::LockError> {
        match self.inner.stores.local() {
            Some(store) => crate::store::lock::StoreLock::acquire(store, resource, timeout).await,
            None => Err(crate::LockError::NoStore(
                "the agent has no store of its own (JOBAGENT_STORE)",
            )),
        }
    }

    /// Drains before a shutdown: from now on runs are refused (500 `err:` saying the agent
    /// drains, so the center fails the job and retries it elsewhere instead of waiting),
    /// `readyz` answers 503, runs queued behind a busy singleton are released with an error
    /// result, and running jobs may finish for up to the drain bound
    /// ([`AgentOptions::drain_timeout`]); hang jobs, which run until stopped, are not waited
    /// for. Stops, details and heartbeats are still served. True when every job that ends by
    /// itself finished within the bound. [`shutdown`](Self::shutdown) follows.
    pub async fn drain(&self) -> bool {
        let within = self.inner.runtime.options.drain_timeout;
        self.inner.runtime.drain(within).await
    }

    /// How many runs are in flight.
    pub fn running(&self) -> usize {
        self.inner.runtime.running()
    }

    /// Stops taking runs, cancels running jobs and waits for them (at most the shutdown
    /// timeout), reporting each as ended by shutdown.
    pub async fn shutdown(&self) {
        self.inner.runtime.shutdown().await;
        // Then what lives as long as the agent: the coordinators release the instance name
        // (so the next process of this name holds it at once), heartbeats end.
        self.inner.heartbeat_stop.cancel();
        self.inner
            .runtime
            .stop_background(crate::coordinator::STOP_WITHIN)
            .await;
    }

    /// Waits for ctrl-c or SIGTERM, then [`drain`](Self::drain)s (the server goes on serving
    /// stops, details and probes meanwhile) and [`shutdown`](Self::shutdown)s; give it to
    /// `axum::serve(...).with_graceful_shutdown(...)`, which stops taking connections when it
    /// resolves. A second signal during the drain cuts it short.
    pub fn shutdown_on_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let agent = self.clone();
        async move {
            wait_for_signal().await;
            tokio::select! {
                _ = agent.drain() => {}
                _ = wait_for_signal() => {
                    tracing::warn!("second shutdown signal: the drain is cut short");
                }
            }
            agent.shutdown().await;
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// The `agentServerId` to present: configured, else derived from what replicas behind one
/// URL share (the path and the agent's own store), else (log-only without a store: nothing
/// would report a restarted process's lost runs, so the center's restart check stays on)
/// random per process.
fn agent_server_id(options: &AgentOptions, local: Option<&Store>) -> String {
    if let Some(id) = &options.agent_id {
        return id.clone();
    }
    if options.log_only && local.is_none() {
        return uuid::Uuid::new_v4().to_string();
    }
    let store = local
        .map(|s| match s.kind() {
            // As before other stores existed: ids must not change between versions.
            crate::store::StoreType::PostgreSql => format!("{}|{}", s.label, s.prefix),
            kind => format!("{kind}|{}|{}", s.label, s.prefix),
        })
        .unwrap_or_else(|| "center-store".to_owned());
    let name = format!("jobagent|{}|{store}", options.path.to_ascii_lowercase());
    uuid::Uuid::new_v5(&AGENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The namespace of derived agent ids (a fixed random UUID: the ids must not change between
/// versions, or replicas of two versions would disagree during a rolling upgrade).
const AGENT_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6c1f_2a9e_4b7d_4e0a_9f3c_5d8e_1a2b_7c4f);

/// One line at start-up saying how this agent is set up (no secrets).
fn log_start(options: &AgentOptions, registry: &Registry, local: Option<&Store>, id: &str) {
    let classes: Vec<&str> = registry.iter().map(|r| r.class()).collect();
    let store = match (local, options.log_only) {
        (Some(s), _) => format!("its own store ({})", s.label),
        (None, false) => "the store each request names (x-job-storage); runs without one are refused: set JOBAGENT_STORE with Hangfire.PostgreSql 1.20.3 and later, which sends none".to_owned(),
        (None, true) => "the store each request names; runs without one only log (JOBAGENT_LOG_ONLY)".to_owned(),
    };
    tracing::info!(
        path = %options.path,
        auth = if options.basic_auth.is_some() { "basic" } else { "off" },
        cluster = options.cluster,
        agent_server_id = id,
        jobs = ?classes,
        state = ?options.states,
        "job agent ready; stores: {store}"
    );
    if let Some(warning) = no_jobs_warning(registry) {
        tracing::warn!("{warning}");
    }
}

/// Right after the start-up line: the agent's own store's table check, as before a run; when
/// the store lacks Hangfire's tables (every run would be refused) a warning says so and names
/// the command that creates them on a laptop's database. A store that does not answer yet is
/// left to the runs' own checks.
async fn warn_when_tables_missing(store: Arc<Store>) {
    let by = tokio::time::Instant::now() + crate::store::FIRST_REACH_WITHIN;
    if let Err(reason) = store.check_tables(by).await
        && let Some(warning) = missing_tables_warning(&String::from(reason))
    {
        tracing::warn!(store = %store.label, "{warning}");
    }
}

/// The start-up warning for a store check that failed with `reason`, when the reason is that
/// the tables are missing.
fn missing_tables_warning(reason: &str) -> Option<String> {
    reason.contains("does not create Hangfire's tables").then(|| {
        format!(
            "job agent: its store lacks Hangfire's tables, so every run will be refused until they exist: {reason}. On a laptop's own database, `jobagent-dev setup --store \"<JOBAGENT_STORE>\"` creates them"
        )
    })
}

/// The warning for an agent with no job: every run would be refused with "unknown class".
fn no_jobs_warning(registry: &Registry) -> Option<&'static str> {
    registry.iter().next().is_none().then_some(
        "job agent: no job is registered, so every run will be refused. Annotate job types with #[job_agent]; jobs in a library crate are linked only when the binary uses something of that crate: call a function of it from main (for example a `pub fn link() {}` in the jobs crate, called as `my_jobs::link();`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_without_tables_warns_naming_the_setup_command() {
        let missing = "the store h/db has no Hangfire table \"hangfire\".hash: point the store at the center's database; the agent does not create Hangfire's tables";
        let warning = missing_tables_warning(missing).expect("a warning");
        assert!(warning.contains("jobagent-dev setup"), "{warning}");
        assert!(warning.contains(missing), "{warning}");
        // Not answering yet is not a missing table.
        assert!(missing_tables_warning("the store h/db has not answered this agent yet").is_none());
    }

    #[test]
    fn an_agent_with_no_job_warns_and_says_how_to_link_a_jobs_crate() {
        let none = Registry::from_registrations([]).expect("empty");
        let warning = no_jobs_warning(&none).expect("a warning");
        assert!(warning.contains("no job is registered"), "{warning}");
        assert!(warning.contains("link()"), "{warning}");
        // This test binary links no #[job_agent] type, and Agent::new says so the same way.
        let registry = Registry::from_inventory().expect("no duplicates");
        assert_eq!(no_jobs_warning(&registry), Some(warning));
    }
}
