//! `AgentOptions`: how an agent is configured, in code or from `JOBAGENT_*` variables.

use std::time::Duration;

use crate::error::ConfigError;
use crate::secret::Secret;
use crate::switch::parse_switch;

/// The default path the center calls.
pub const DEFAULT_PATH: &str = "/jobagent";
/// The prefix the .NET agent puts before every console line.
pub const DEFAULT_CONSOLE_PREFIX: &str = "【JobAgent】";

/// Basic-auth credentials the center must send.
#[derive(Clone, Debug)]
pub(crate) struct BasicAuth {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: Secret,
}

/// How an agent is configured. Build it in code or read it with [`AgentOptions::from_env`];
/// [`Agent::new`](crate::Agent::new) validates it.
///
/// ```
/// use std::time::Duration;
/// let options = jobagent::AgentOptions::new()
///     .path("/jobs/agent")
///     .basic_auth("center", "s3cret")
///     .shutdown_timeout(Duration::from_secs(5));
/// assert_eq!(options.path_str(), "/jobs/agent");
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub(crate) path: String,
    pub(crate) basic_auth: Option<BasicAuth>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) timeout_grace: Duration,
    pub(crate) console_prefix: String,
    pub(crate) store: Option<LocalStore>,
    pub(crate) console_budget: ConsoleBudget,
    pub(crate) limits: RequestLimits,
    pub(crate) allowed_store_hosts: Option<Vec<String>>,
    pub(crate) cluster: bool,
    pub(crate) instance: Option<String>,
    #[cfg(feature = "center")]
    pub(crate) auto_register: Option<crate::center::AutoRegistrationOptions>,
    pub(crate) log_only: bool,
    pub(crate) agent_id: Option<String>,
    pub(crate) states: crate::state::States,
    pub(crate) console_log: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) cluster_notify: bool,
    pub(crate) result_retry: Option<Duration>,
    pub(crate) store_idle: Duration,
    pub(crate) spool_dir: Option<std::path::PathBuf>,
}

/// Bounds on what one request and the runtime may take. Start from the defaults and set what
/// differs: `RequestLimits::default().max_running(64)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestLimits {
    /// Largest request body (the parameter), in bytes.
    pub max_body_bytes: usize,
    /// Largest total size of the request's headers, in bytes.
    pub max_header_bytes: usize,
    /// Most instances of one transient class running at once.
    pub max_running_per_class: usize,
    /// Most runs at once, all classes together.
    pub max_running: usize,
    /// Most bytes of parameters the running runs hold together: a run whose parameter would
    /// take the sum past it is refused (a 500 saying so). `JOBAGENT_MAX_PARAM_BYTES_RUNNING`.
    pub max_param_bytes_running: usize,
}

impl RequestLimits {
    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, value: usize) -> Self {
        self.max_body_bytes = value;
        self
    }

    /// Sets [`max_header_bytes`](Self::max_header_bytes).
    pub fn max_header_bytes(mut self, value: usize) -> Self {
        self.max_header_bytes = value;
        self
    }

    /// Sets [`max_running_per_class`](Self::max_running_per_class).
    pub fn max_running_per_class(mut self, value: usize) -> Self {
        self.max_running_per_class = value;
        self
    }

    /// Sets [`max_running`](Self::max_running).
    pub fn max_running(mut self, value: usize) -> Self {
        self.max_running = value;
        self
    }

    /// Sets [`max_param_bytes_running`](Self::max_param_bytes_running).
    pub fn max_param_bytes_running(mut self, value: usize) -> Self {
        self.max_param_bytes_running = value;
        self
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_running_per_class: 10_000,
            max_running: 20_000,
            max_param_bytes_running: 64 * 1024 * 1024,
        }
    }
}

/// A store configured on the agent itself; it wins over the one the center sends.
#[derive(Clone, Debug)]
pub(crate) struct LocalStore {
    /// The store's connection string or URL (a secret).
    pub connection: Secret,
    /// Its type: given, else the URL's scheme, else PostgreSQL.
    pub kind: Option<crate::store::StoreType>,
    /// The Hangfire schema (PostgreSQL), table prefix (MySQL) or key prefix (Redis); empty:
    /// the type's default (MySQL: found from the tables), unless `no_prefix`.
    pub schema: String,
    /// MySQL: the tables have no prefix (`JOBAGENT_STORE_SCHEMA` set but empty).
    pub no_prefix: bool,
    /// Days until written rows expire (default 7).
    pub expire_days: f64,
    /// The bearer token shown to a relay (`JOBAGENT_RELAY_TOKEN`; a secret).
    pub relay_token: Option<Secret>,
}

impl LocalStore {
    /// The store's type: given, else the URL's scheme, else PostgreSQL.
    pub(crate) fn resolved_kind(&self) -> crate::store::StoreType {
        self.kind
            .or_else(|| crate::store::StoreType::of_url(self.connection.expose()))
            .unwrap_or(crate::store::StoreType::PostgreSql)
    }

    /// Its schema or prefix; `None` when none was given (the type's default; MySQL finds it
    /// from the tables).
    pub(crate) fn prefix(&self) -> Option<&str> {
        match self.schema.trim() {
            "" if self.no_prefix && self.resolved_kind() == crate::store::StoreType::MySql => {
                Some("")
            }
            "" => None,
            given => Some(given),
        }
    }
}

/// Limits on what one run's console keeps and buffers. Start from the defaults and set what
/// differs: `ConsoleBudget::default().max_lines(20_000)`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConsoleBudget {
    /// Lines one run may write into the store; past it the head and the tail are kept and one
    /// marker line says how many were dropped.
    pub max_lines: u64,
    /// Bytes of text one run may write into the store (same rule as `max_lines`).
    pub max_bytes: u64,
    /// Lines kept at the end when the budget is exceeded.
    pub tail_lines: u64,
    /// Lines one console may hold in memory while the store is slow or unreachable; more are
    /// counted and dropped.
    pub buffer_lines: usize,
    /// Bytes one console may hold in memory (lines waiting for the store, lines being sent,
    /// the kept tail), each line counted as its text plus a fixed overhead; more are counted
    /// and dropped, and a longer line is cut to fit.
    pub buffer_bytes: u64,
    /// Bytes all consoles of the process may hold together (same count as `buffer_bytes`),
    /// through one shared budget.
    pub memory_bytes: u64,
}

impl ConsoleBudget {
    /// Sets [`max_lines`](Self::max_lines).
    pub fn max_lines(mut self, value: u64) -> Self {
        self.max_lines = value;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes).
    pub fn max_bytes(mut self, value: u64) -> Self {
        self.max_bytes = value;
        self
    }

    /// Sets [`tail_lines`](Self::tail_lines).
    pub fn tail_lines(mut self, value: u64) -> Self {
        self.tail_lines = value;
        self
    }

    /// Sets [`buffer_lines`](Self::buffer_lines).
    pub fn buffer_lines(mut self, value: usize) -> Self {
        self.buffer_lines = value;
        self
    }

    /// Sets [`buffer_bytes`](Self::buffer_bytes).
    pub fn buffer_bytes(mut self, value: u64) -> Self {
        self.buffer_bytes = value;
        self
    }

    /// Sets [`memory_bytes`](Self::memory_bytes).
    pub fn memory_bytes(mut self, value: u64) -> Self {
        self.memory_bytes = value;
        self
    }
}

impl Default for ConsoleBudget {
    fn default() -> Self {
        Self {
            max_lines: 100_000,
            max_bytes: 64 * 1024 * 1024,
            tail_lines: 1_000,
            buffer_lines: 200_000,
            buffer_bytes: 32 * 1024 * 1024,
            memory_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_owned(),
            basic_auth: None,
            shutdown_timeout: Duration::from_secs(10),
            timeout_grace: Duration::from_secs(5),
            console_prefix: DEFAULT_CONSOLE_PREFIX.to_owned(),
            store: None,
            console_budget: ConsoleBudget::default(),
            limits: RequestLimits::default(),
            allowed_store_hosts: None,
            cluster: true,
            instance: None,
            #[cfg(feature = "center")]
            auto_register: None,
            log_only: false,
            agent_id: None,
            states: Default::default(),
            console_log: false,
            drain_timeout: Duration::from_secs(20),
            cluster_notify: true,
            result_retry: None,
            store_idle: Duration::from_secs(300),
            spool_dir: Some(crate::spool::default_dir()),
        }
    }
}

impl AgentOptions {
    /// The defaults: path `/jobagent`, no auth, 10 s shutdown bound.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the `JOBAGENT_*` environment variables over the defaults. An invalid value is an
    /// error naming the variable.
    ///
    /// A `JOBAGENT_*` variable that nothing reads (a misspelling, usually) is logged as a
    /// warning, with the known name it is closest to.
    pub fn from_env() -> Result<Self, ConfigError> {
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        for (name, closest) in unknown_variables(names) {
            match closest {
                Some(known) => tracing::warn!(
                    "job agent: {name} is set but nothing reads it; did you mean {known}?"
                ),
                None => tracing::warn!("job agent: {name} is set but nothing reads it"),
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), with variables from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut options = Self::default();
        if let Some(path) = get("JOBAGENT_PATH") {
            options.path = path.trim().to_owned();
        }
        match (get("JOBAGENT_BASIC_USER"), get("JOBAGENT_BASIC_PASSWORD")) {
            (Some(user), Some(password)) => options = options.basic_auth(user, password),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "JOBAGENT_BASIC_PASSWORD",
                    "JOBAGENT_BASIC_USER is set but the password is not; set both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "JOBAGENT_BASIC_USER",
                    "JOBAGENT_BASIC_PASSWORD is set but the user is not; set both or neither",
                ));
            }
            (None, None) => {}
        }
        if let Some(ms) = get("JOBAGENT_SHUTDOWN_TIMEOUT_MS") {
            options.shutdown_timeout = parse_ms("JOBAGENT_SHUTDOWN_TIMEOUT_MS", &ms)?;
        }
        if let Some(ms) = get("JOBAGENT_TIMEOUT_GRACE_MS") {
            options.timeout_grace = parse_ms("JOBAGENT_TIMEOUT_GRACE_MS", &ms)?;
        }
        if let Some(prefix) = lookup("JOBAGENT_CONSOLE_PREFIX") {
            options.console_prefix = prefix;
        }
        if let Some(connection) = get("JOBAGENT_STORE") {
            let schema = get("JOBAGENT_STORE_SCHEMA").unwrap_or_default();
            let kind = match get("JOBAGENT_STORE_TYPE") {
                None => None,
                Some(t) => Some(
                    t.parse::<crate::store::StoreType>()
                        .map_err(|e| ConfigError::invalid("JOBAGENT_STORE_TYPE", e.to_string()))?,
                ),
            };
            let expire_days = match get("JOBAGENT_STORE_EXPIRE_DAYS") {
                None => 7.0,
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d > 0.0 && *d <= 3650.0)
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "JOBAGENT_STORE_EXPIRE_DAYS",
                            format!("`{}` is not a number of days between 0 and 3650", v.trim()),
                        )
                    })?,
            };
            options = options.store(connection, schema.trim(), expire_days);
            if let Some(store) = options.store.as_mut() {
                if kind.is_some() {
                    store.kind = kind;
                }
                // MySQL: set but empty says the tables have no prefix (unset: found).
                store.no_prefix =
                    lookup("JOBAGENT_STORE_SCHEMA").is_some_and(|v| v.trim().is_empty());
            }
            if let Some(token) = get("JOBAGENT_RELAY_TOKEN") {
                options = options.relay_token(token.trim());
            }
        } else if get("JOBAGENT_STORE_SCHEMA").is_some()
            || get("JOBAGENT_STORE_EXPIRE_DAYS").is_some()
            || get("JOBAGENT_STORE_TYPE").is_some()
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_STORE",
                "JOBAGENT_STORE_SCHEMA, JOBAGENT_STORE_TYPE or JOBAGENT_STORE_EXPIRE_DAYS is set but JOBAGENT_STORE is not",
            ));
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_MAX_LINES") {
            options.console_budget.max_lines = parse_count("JOBAGENT_CONSOLE_MAX_LINES", &v)?;
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_MAX_BYTES") {
            options.console_budget.max_bytes = parse_count("JOBAGENT_CONSOLE_MAX_BYTES", &v)?;
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_BUFFER_LINES") {
            options.console_budget.buffer_lines =
                parse_count("JOBAGENT_CONSOLE_BUFFER_LINES", &v)? as usize;
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_BUFFER_BYTES") {
            options.console_budget.buffer_bytes = parse_count("JOBAGENT_CONSOLE_BUFFER_BYTES", &v)?;
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_MEMORY_BYTES") {
            options.console_budget.memory_bytes = parse_count("JOBAGENT_CONSOLE_MEMORY_BYTES", &v)?;
        }
        let limits = &mut options.limits;
        for (name, slot) in [
            ("JOBAGENT_MAX_BODY_BYTES", &mut limits.max_body_bytes),
            ("JOBAGENT_MAX_HEADER_BYTES", &mut limits.max_header_bytes),
            (
                "JOBAGENT_MAX_RUNNING_PER_CLASS",
                &mut limits.max_running_per_class,
            ),
            ("JOBAGENT_MAX_RUNNING", &mut limits.max_running),
            (
                "JOBAGENT_MAX_PARAM_BYTES_RUNNING",
                &mut limits.max_param_bytes_running,
            ),
        ] {
            if let Some(v) = get(name) {
                *slot = parse_count(name, &v)? as usize;
            }
        }
        if let Some(hosts) = get("JOBAGENT_STORE_ALLOWED_HOSTS") {
            options = options
                .allowed_store_hosts(hosts.split(',').map(str::trim).filter(|h| !h.is_empty()));
        }
        #[cfg(feature = "center")]
        {
            options.auto_register = crate::center::AutoRegistrationOptions::from_lookup(&lookup)?;
        }
        #[cfg(not(feature = "center"))]
        if get("JOBAGENT_AUTO_REGISTER")
            .is_some_and(|v| parse_switch("JOBAGENT_AUTO_REGISTER", &v).unwrap_or(true))
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_AUTO_REGISTER",
                "auto-registration needs jobagent's `center` feature, which this build leaves out",
            ));
        }
        if let Some(v) = get("JOBAGENT_LOG_ONLY") {
            options.log_only = parse_switch("JOBAGENT_LOG_ONLY", &v)?;
        }
        if let Some(v) = get("JOBAGENT_AGENT_ID") {
            options.agent_id = Some(v.trim().to_owned());
        }
        if let Some(v) = get("JOBAGENT_CONSOLE_LOG") {
            options.console_log = parse_switch("JOBAGENT_CONSOLE_LOG", &v)?;
        }
        if let Some(ms) = get("JOBAGENT_DRAIN_TIMEOUT_MS") {
            options.drain_timeout = parse_ms("JOBAGENT_DRAIN_TIMEOUT_MS", &ms)?;
        }
        if let Some(ms) = get("JOBAGENT_STORE_IDLE_MS") {
            options.store_idle = parse_ms("JOBAGENT_STORE_IDLE_MS", &ms)?;
        }
        if let Some(ms) = get("JOBAGENT_RESULT_RETRY_MS") {
            options.result_retry = Some(parse_ms("JOBAGENT_RESULT_RETRY_MS", &ms)?);
        }
        // Read unfiltered: set empty, it turns the spool off.
        if let Some(dir) = lookup("JOBAGENT_SPOOL_DIR") {
            let dir = dir.trim();
            options.spool_dir = (!dir.is_empty()).then(|| dir.into());
        }
        if let Some(v) = get("JOBAGENT_CLUSTER_NOTIFY") {
            options.cluster_notify = parse_switch("JOBAGENT_CLUSTER_NOTIFY", &v)?;
        }
        if let Some(v) = get("JOBAGENT_CLUSTER") {
            options.cluster = parse_switch("JOBAGENT_CLUSTER", &v)?;
        }
        if let Some(v) = get("JOBAGENT_INSTANCE") {
            options.instance = Some(v.trim().to_owned());
        } else if let Some(url) = get("JOBAGENT_PUBLIC_URL") {
            options.instance = Some(url_authority(&url));
        } else if let Some(listen) = get("JOBAGENT_LISTEN")
            && let Some((_, port)) = listen.trim().rsplit_once(':')
        {
            options.instance = Some(format!("{}:{port}", host_name()));
        }
        options.validate()?;
        Ok(options)
    }

    /// The path the router answers at (default `/jobagent`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Requires basic auth with these credentials on every request.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some(BasicAuth {
            user: user.into(),
            password: Secret::new(password),
        });
        self
    }

    /// How long graceful shutdown waits for running jobs after cancelling them.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a run that hit its `AgentTimeout` may take to honour cancellation before
    /// it is abandoned.
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.timeout_grace = grace;
        self
    }

    /// The text put before every console line (default `【JobAgent】`; empty for none).
    pub fn console_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.console_prefix = prefix.into();
        self
    }

    /// Writes consoles, results and heartbeats into this store whatever store the center
    /// sends. `connection` is a URL (`postgres://`, `mysql://`, `redis://`, `rediss://`: the
    /// scheme names the type) or the connection string the center's own storage takes (an
    /// Npgsql one unless [`store_type`](Self::store_type) says otherwise). `schema` is the
    /// Hangfire schema (PostgreSQL), table prefix (MySQL) or key prefix (Redis); empty for
    /// the type's default (`hangfire`, `{hangfire}:`; on MySQL the prefix under which the
    /// database holds Hangfire's tables, found at the first run: `Hash`/`Set` for none,
    /// `HangfireHash`/`HangfireSet` for `Hangfire`, ...). A MySQL database holding tables under
    /// several prefixes needs the prefix given; `JOBAGENT_STORE_SCHEMA` set but empty says
    /// "no prefix".
    pub fn store(
        mut self,
        connection: impl Into<String>,
        schema: impl Into<String>,
        expire_days: f64,
    ) -> Self {
        let kind = self.store.as_ref().and_then(|s| s.kind);
        let relay_token = self.store.as_mut().and_then(|s| s.relay_token.take());
        self.store = Some(LocalStore {
            connection: Secret::new(connection),
            kind,
            schema: schema.into(),
            no_prefix: false,
            expire_days,
            relay_token,
        });
        self
    }

    /// The token this agent shows the relay given to [`store`](Self::store) as
    /// `relay+http(s)://host:port` (`JOBAGENT_RELAY_TOKEN`). Call it after `store`.
    pub fn relay_token(mut self, token: impl Into<String>) -> Self {
        if let Some(store) = self.store.as_mut() {
            store.relay_token = Some(Secret::new(token));
        }
        self
    }

    /// The type of the store given to [`store`](Self::store) when its connection string is
    /// not a URL (`JOBAGENT_STORE_TYPE`: `postgresql`, `mysql` or `redis`). Call it after
    /// `store`.
    pub fn store_type(mut self, kind: crate::store::StoreType) -> Self {
        if let Some(store) = self.store.as_mut() {
            store.kind = Some(kind);
        }
        self
    }

    /// Limits on each run's console.
    pub fn console_budget(mut self, budget: ConsoleBudget) -> Self {
        self.console_budget = budget;
        self
    }

    /// Bounds on requests and running jobs.
    pub fn limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Restricts the hosts a store sent by the center (`x-job-storage`) may name: host names
    /// or addresses, `*.example.com` for a domain. Without it any host is accepted.
    pub fn allowed_store_hosts<I, H>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: Into<String>,
    {
        self.allowed_store_hosts = Some(
            hosts
                .into_iter()
                .map(|h| h.into().to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Whether replicas sharing a store coordinate (cluster-wide singletons, stop and detail
    /// anywhere, lost runs reported). On by default; it only acts when a store is known.
    pub fn cluster(mut self, on: bool) -> Self {
        self.cluster = on;
        self
    }

    /// Whether stops, `replace` and released singleton claims reach other replicas at once
    /// through PostgreSQL `LISTEN`/`NOTIFY` (`JOBAGENT_CLUSTER_NOTIFY`, default on). Off, or
    /// where the store cannot deliver notifications (a pooler in transaction mode), replicas
    /// find them by polling every 200 ms, as they always also do.
    pub fn cluster_notify(mut self, on: bool) -> Self {
        self.cluster_notify = on;
        self
    }

    /// Also writes every console line to the service's log, with the run's class and job id
    /// (`JOBAGENT_CONSOLE_LOG`, default off): log collectors get the whole output, even the
    /// lines past the console budget the dashboard does not show.
    pub fn console_log(mut self, on: bool) -> Self {
        self.console_log = on;
        self
    }

    /// How long a drain lets running jobs finish before shutdown cancels them
    /// (`JOBAGENT_DRAIN_TIMEOUT_MS`, default 20 s); see [`Agent::drain`](crate::Agent::drain).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a run's result that the store does not take is retried
    /// (`JOBAGENT_RESULT_RETRY_MS`; default: the store's `ExpireAtDays`, as long as the store
    /// keeps what the agent writes). The center has no time-out for agent jobs: until the
    /// result lands the job stays Processing, so a result is retried (with a backoff of at
    /// most 10 s) rather than dropped, and the run's in-flight record stays until it is
    /// written, so that a next process of this instance reports the run.
    pub fn result_retry(mut self, bound: Duration) -> Self {
        self.result_retry = Some(bound);
        self
    }

    /// Where runs are kept on this machine while their store cannot take their in-flight
    /// record (`JOBAGENT_SPOOL_DIR`; default `<temp dir>/jobagent-spool-<uid>`; an empty
    /// variable turns it off). After a first success an outage of the store is buffered and
    /// a run answered 200; should the process be killed before the store is back, the next
    /// process of this instance on this machine reports such a run as lost from here (it is
    /// otherwise never reported, and the center waits for its result for ever). One file per
    /// run, only while the store is away; the directory must be this user's alone (mode
    /// 0700), else nothing is kept there and the log says why. Keep it on a volume that
    /// outlives the process (a container's restarts, not its replacement).
    pub fn spool_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Keeps no run on this machine's disk (see [`AgentOptions::spool_dir`]): a process
    /// killed while its store is away leaves the runs it answered meanwhile unreported.
    pub fn no_spool(mut self) -> Self {
        self.spool_dir = None;
        self
    }

    /// How long a store a center sent may go unused before the agent stops dialling it
    /// (`JOBAGENT_STORE_IDLE_MS`, default 5 minutes): once no dispatch has named it for this
    /// long and no run, heartbeat or console uses it, its coordinator ends (said once at info)
    /// and the store may leave the agent's cache of center stores. A dispatch naming it again
    /// opens it again. The agent's own store (`JOBAGENT_STORE`) is never left.
    pub fn store_idle(mut self, idle: Duration) -> Self {
        self.store_idle = idle;
        self
    }

    /// The stable name of this agent instance (`JOBAGENT_INSTANCE`): replicas need distinct
    /// names, and a restarted process must keep its predecessor's to reconcile its runs.
    /// Default: the public URL's host and port, else the host name (and listen port).
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// Registers every job that does not opt out (`#[job_agent(register = false)]`) at the center when
    /// [`Agent::start_auto_registration`](crate::Agent::start_auto_registration) runs.
    /// (Feature `center`.)
    #[cfg(feature = "center")]
    pub fn auto_register(mut self, options: crate::center::AutoRegistrationOptions) -> Self {
        self.auto_register = Some(options);
        self
    }

    /// Accepts runs when no store is known (`JOBAGENT_LOG_ONLY`): neither the agent's own
    /// ([`store`](Self::store)) nor one sent by the center in `x-job-storage`. Their console
    /// lines and results go to this service's log only, so the center never learns that such
    /// a run ended (its job stays Processing). Off by default: such runs are refused with a
    /// 500 the center shows. Meant for development without a database.
    pub fn log_only(mut self, on: bool) -> Self {
        self.log_only = on;
        self
    }

    /// The `agentServerId` this agent presents to the center (`JOBAGENT_AGENT_ID`). The
    /// center fails long jobs whose run was answered with another id than its heartbeats, so
    /// replicas behind one URL must present one id. Default: derived from the agent's path
    /// and its own store when it has one (so replicas sharing a store agree), else random
    /// per process.
    pub fn agent_id(mut self, id: impl Into<String>) -> Self {
        self.agent_id = Some(id.into());
        self
    }

    /// Gives the agent a value of application state (a database pool, an HTTP client, the
    /// service's configuration): jobs take it as a parameter of their constructor
    /// (`#[job_agent(constructor = "MyJob::new")]` with `fn new(pool: Pool) -> Self`) or read
    /// it with [`JobContext::state`](crate::JobContext::state). One value per type: a second
    /// value of one type replaces the first (wrap two pools of one type in newtypes). The
    /// value is cloned for each job built, so give cheap-to-clone handles (`Arc<T>`, pools).
    ///
    /// ```rust,standalone_crate
    /// use std::sync::Arc;
    /// use jobagent::{job_agent, AgentOptions, JobAgent, JobContext, JobError};
    ///
    /// struct Outbox { /* a pool, a client, ... */ }
    ///
    /// #[job_agent(transient, constructor = "FlushOutbox::new")]
    /// struct FlushOutbox { outbox: Arc<Outbox> }
    ///
    /// impl FlushOutbox {
    ///     fn new(outbox: Arc<Outbox>) -> Self {
    ///         Self { outbox }
    ///     }
    /// }
    ///
    /// impl JobAgent for FlushOutbox {
    ///     async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
    ///         let _outbox = &self.outbox;
    ///         cx.console().info("flushed");
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let options = AgentOptions::new().state(Arc::new(Outbox {}));
    /// # let _ = options;
    /// ```
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// The instance name in force.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(host_name)
    }

    /// The configured path.
    pub fn path_str(&self) -> &str {
        &self.path
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.path;
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
            return Err(ConfigError::invalid(
                "JOBAGENT_PATH",
                format!(
                    "`{p}` must start with `/`, name at least one segment and not end with `/` (e.g. /jobagent)"
                ),
            ));
        }
        if p.contains(|c: char| {
            c.is_whitespace()
                || c == '?'
                || c == '#'
                || c == '{'
                || c == '}'
                || c == '*'
                || c == ':'
        }) || p.contains("//")
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_PATH",
                format!("`{p}` may not hold spaces, `//`, `?`, `#`, `:`, `*` or braces"),
            ));
        }
        if let Some(store) = &self.store
            && !(store.expire_days.is_finite()
                && store.expire_days > 0.0
                && store.expire_days <= 3650.0)
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_STORE_EXPIRE_DAYS",
                format!(
                    "`{}` must be a number of days above 0 and at most 3650",
                    store.expire_days
                ),
            ));
        }
        if let Some(auth) = &self.basic_auth
            && (auth.user.is_empty() || auth.user.contains(':'))
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_BASIC_USER",
                "the user must be non-empty and may not contain `:`",
            ));
        }
        if let Some(instance) = &self.instance
            && (instance.trim().is_empty()
                || instance.len() > 200
                || instance.chars().any(char::is_control))
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_INSTANCE",
                "the instance name must be 1 to 200 printable characters",
            ));
        }
        if let Some(id) = &self.agent_id
            && (id.is_empty()
                || id.len() > 100
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_AGENT_ID",
                "the agent id must be 1 to 100 letters, digits, `-`, `_` or `.`",
            ));
        }
        if let Some(store) = &self.store
            && store.resolved_kind() == crate::store::StoreType::PostgreSql
            && !store.schema.is_empty()
        {
            crate::schema::check_schema(&store.schema)
                .map_err(|reason| ConfigError::invalid("JOBAGENT_STORE_SCHEMA", reason))?;
        }
        let b = &self.console_budget;
        if b.max_lines == 0 || b.tail_lines >= b.max_lines || b.buffer_lines == 0 {
            return Err(ConfigError::invalid(
                "JOBAGENT_CONSOLE_MAX_LINES",
                "the console budget must allow at least one line, keep fewer tail lines than the budget, and buffer at least one line",
            ));
        }
        Ok(())
    }
}

/// `http://host:port/path` → `host:port`.
fn url_authority(url: &str) -> String {
    let rest = url
        .trim()
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url.trim());
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or(rest)
        .to_owned()
}

/// This machine's host name.
/// Every `JOBAGENT_*` variable read in this workspace: the agent's, auto-registration's, and
/// those of the example service, the dev CLI and the tests (so none of them is warned about).
const KNOWN_VARIABLES: &[&str] = &[
    "JOBAGENT_AGENT_ID",
    "JOBAGENT_AUTO_REGISTER",
    "JOBAGENT_BASIC_PASSWORD",
    "JOBAGENT_BASIC_USER",
    "JOBAGENT_CENTER_PASSWORD",
    "JOBAGENT_CENTER_URL",
    "JOBAGENT_CENTER_USER",
    "JOBAGENT_CLUSTER",
    "JOBAGENT_CLUSTER_NOTIFY",
    "JOBAGENT_CONSOLE_LOG",
    "JOBAGENT_CONSOLE_BUFFER_BYTES",
    "JOBAGENT_CONSOLE_BUFFER_LINES",
    "JOBAGENT_CONSOLE_MAX_BYTES",
    "JOBAGENT_CONSOLE_MAX_LINES",
    "JOBAGENT_CONSOLE_MEMORY_BYTES",
    "JOBAGENT_CONSOLE_PREFIX",
    "JOBAGENT_DEV_AGENT",
    "JOBAGENT_DEV_STORE",
    "JOBAGENT_DRAIN_TIMEOUT_MS",
    "JOBAGENT_INSTANCE",
    "JOBAGENT_LISTEN",
    "JOBAGENT_LOG_ONLY",
    "JOBAGENT_MAX_BODY_BYTES",
    "JOBAGENT_MAX_HEADER_BYTES",
    "JOBAGENT_MAX_PARAM_BYTES_RUNNING",
    "JOBAGENT_MAX_RUNNING",
    "JOBAGENT_MAX_RUNNING_PER_CLASS",
    "JOBAGENT_METRICS_LISTEN",
    "JOBAGENT_PATH",
    "JOBAGENT_PUBLIC_URL",
    "JOBAGENT_SHUTDOWN_TIMEOUT_MS",
    "JOBAGENT_STORE",
    "JOBAGENT_STORE_ALLOWED_HOSTS",
    "JOBAGENT_STORE_EXPIRE_DAYS",
    "JOBAGENT_STORE_SCHEMA",
    "JOBAGENT_STORE_TYPE",
    "JOBAGENT_RELAY_TOKEN",
    "JOBAGENT_RESULT_RETRY_MS",
    "JOBAGENT_SPOOL_DIR",
    "JOBAGENT_SERVE_BODY_TIMEOUT_MS",
    "JOBAGENT_SERVE_HEADER_TIMEOUT_MS",
    "JOBAGENT_SERVE_MAX_CONNECTIONS",
    "JOBAGENT_STORE_IDLE_MS",
    "JOBAGENT_TEST_DATABASE_URL",
    "JOBAGENT_TIMEOUT_GRACE_MS",
];

/// The `JOBAGENT_*` names among `names` that nothing reads, sorted, each with the known name
/// closest to it (when one is close enough to be a likely misspelling).
fn unknown_variables(
    names: impl IntoIterator<Item = String>,
) -> Vec<(String, Option<&'static str>)> {
    let mut unknown: Vec<(String, Option<&'static str>)> = names
        .into_iter()
        .filter(|n| n.starts_with("JOBAGENT_") && !KNOWN_VARIABLES.contains(&n.as_str()))
        .map(|name| {
            let closest = KNOWN_VARIABLES
                .iter()
                .map(|known| (strsim::jaro_winkler(&name, known), *known))
                .filter(|(score, _)| *score > 0.9)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, known)| known);
            (name, closest)
        })
        .collect();
    unknown.sort();
    unknown
}

pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn parse_count(name: &'static str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ConfigError::invalid(
                name,
                format!("`{}` is not a positive whole number", value.trim()),
            )
        })
}

/// Parses a millisecond count from an environment variable.
pub(crate) fn parse_ms(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| {
            ConfigError::invalid(
                name,
                format!("`{}` is not a whole number of milliseconds", value.trim()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_store_expiry_that_is_not_a_positive_number_of_days_is_refused_not_a_panic() {
        for days in [f64::NAN, -1.0, 0.0, f64::INFINITY, 4000.0] {
            let options = AgentOptions::new().store("Host=h;Database=d", "hangfire", days);
            let err = options.validate().expect_err("refused");
            assert!(
                err.to_string().contains("JOBAGENT_STORE_EXPIRE_DAYS"),
                "{err}"
            );
        }
        let options = AgentOptions::new().store("Host=h;Database=d", "hangfire", 0.5);
        assert!(options.validate().is_ok());
    }

    #[test]
    fn unknown_jobagent_variables_are_named_with_the_closest_known_one() {
        let names = [
            "PATH",
            "JOBAGENT_STORE",
            "JOBAGENT_STOER",
            "JOBAGENT_BASIC_PASWORD",
            "JOBAGENT_SOMETHING_ELSE_ENTIRELY",
            "JOBAGENT_LISTEN",
        ]
        .map(str::to_owned);
        assert_eq!(
            unknown_variables(names),
            vec![
                (
                    "JOBAGENT_BASIC_PASWORD".to_owned(),
                    Some("JOBAGENT_BASIC_PASSWORD")
                ),
                ("JOBAGENT_SOMETHING_ELSE_ENTIRELY".to_owned(), None),
                ("JOBAGENT_STOER".to_owned(), Some("JOBAGENT_STORE")),
            ]
        );
    }

    #[test]
    fn every_variable_the_agent_reads_is_known() {
        // The names `from_lookup` asks for are all in the list (else they would be warned
        // about as unknown while being read).
        let asked = std::sync::Mutex::new(Vec::new());
        let _ = AgentOptions::from_lookup(|name| {
            asked.lock().map(|mut a| a.push(name.to_owned())).ok();
            None
        });
        let asked = asked.into_inner().unwrap_or_default();
        assert!(asked.len() > 10, "{asked:?}");
        for name in asked {
            assert!(KNOWN_VARIABLES.contains(&name.as_str()), "{name}");
        }
    }

    fn from(vars: &[(&str, &str)]) -> Result<AgentOptions, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentOptions::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_env_and_names_bad_variables() {
        let o = from(&[
            ("JOBAGENT_PATH", "/x/agent"),
            ("JOBAGENT_BASIC_USER", "u"),
            ("JOBAGENT_BASIC_PASSWORD", "p"),
        ])
        .expect("valid");
        assert_eq!(o.path, "/x/agent");
        assert!(o.basic_auth.is_some());
        let e = from(&[("JOBAGENT_PATH", "jobagent")])
            .expect_err("no slash")
            .to_string();
        assert!(e.contains("JOBAGENT_PATH"), "{e}");
        let e = from(&[("JOBAGENT_BASIC_USER", "u")])
            .expect_err("half auth")
            .to_string();
        assert!(e.contains("JOBAGENT_BASIC_PASSWORD"), "{e}");
        let e = from(&[("JOBAGENT_SHUTDOWN_TIMEOUT_MS", "soon")])
            .expect_err("nan")
            .to_string();
        assert!(e.contains("JOBAGENT_SHUTDOWN_TIMEOUT_MS"), "{e}");
        assert!(from(&[]).expect("defaults").basic_auth.is_none());
    }

    #[test]
    fn the_spool_is_on_by_default_and_set_or_turned_off_by_its_variable() {
        let default = from(&[]).expect("defaults").spool_dir;
        assert_eq!(default, Some(crate::spool::default_dir()));
        assert!(default.is_some_and(|d| d.starts_with(std::env::temp_dir())));
        let set = from(&[("JOBAGENT_SPOOL_DIR", " /var/lib/agent/spool ")]).expect("valid");
        assert_eq!(set.spool_dir, Some("/var/lib/agent/spool".into()));
        let off = from(&[("JOBAGENT_SPOOL_DIR", "")]).expect("valid");
        assert_eq!(off.spool_dir, None);
        assert_eq!(AgentOptions::new().no_spool().spool_dir, None);
    }
}
