//! Auto-registration: at start-up, create each job (unless it opted out) as a recurring job at
//! the center, as the .NET agent does.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::center::client::{
    CenterClient, CenterError, HttpJobRequest, check_user, join_url, redact_url, validate_base_url,
    validate_http_url,
};
use crate::error::ConfigError;
use crate::registry::{JobRegistration, Registry};
use crate::secret::Secret;

/// The default number of retries after the first try.
pub const DEFAULT_REGISTER_RETRIES: u32 = 5;

/// Where and how to register this agent's jobs at the center. Build it in code or read it
/// with [`from_env`](Self::from_env). `Debug` hides the passwords.
///
/// ```
/// use std::time::Duration;
/// use jobagent::center::AutoRegistrationOptions;
///
/// let options = AutoRegistrationOptions::new("http://center:5000/hangfire", "http://svc:8080/")
///     .unwrap()
///     .center_credentials("admin", "center-pw")
///     .agent_basic_auth("center", "agent-pw")
///     .retries(3)
///     .backoff(Duration::from_millis(500), Duration::from_secs(10));
/// assert_eq!(options.agent_url("/jobagent"), "http://svc:8080/jobagent");
/// let debug = format!("{options:?}");
/// assert!(!debug.contains("center-pw") && !debug.contains("agent-pw"));
/// ```
#[derive(Clone, Debug)]
pub struct AutoRegistrationOptions {
    center_url: String,
    center_user: Option<String>,
    center_password: Option<Secret>,
    public_url: String,
    agent_user: Option<String>,
    agent_password: Option<Secret>,
    retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    request_timeout: Duration,
    job_timeout: Duration,
}

impl AutoRegistrationOptions {
    /// Registers at the dashboard `center_url` (e.g. `http://center:5000/hangfire`) jobs the
    /// center calls at `public_url` (this agent as the center reaches it, e.g.
    /// `http://svc:8080`) plus the agent's path. Defaults: no credentials, 5 retries, backoff
    /// 1 s doubling up to 30 s, 10 s per call, the center's HTTP timeout for the job 20 s.
    pub fn new(center_url: &str, public_url: &str) -> Result<Self, ConfigError> {
        let center_url = validate_base_url(center_url).map_err(|reason| {
            ConfigError::invalid(
                "JOBAGENT_CENTER_URL",
                format!("`{}`: {reason}", redact_url(center_url)),
            )
        })?;
        let public_url = validate_http_url(public_url).map_err(|reason| {
            ConfigError::invalid(
                "JOBAGENT_PUBLIC_URL",
                format!("`{}`: {reason}", redact_url(public_url)),
            )
        })?;
        Ok(Self {
            center_url,
            center_user: None,
            center_password: None,
            public_url,
            agent_user: None,
            agent_password: None,
            retries: DEFAULT_REGISTER_RETRIES,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            job_timeout: Duration::from_secs(20),
        })
    }

    /// Reads the `JOBAGENT_*` environment variables; see [`from_lookup`](Self::from_lookup).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the options from variables: `JOBAGENT_AUTO_REGISTER` (on/off, as every switch: `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`;
    /// unset or false gives `None`), `JOBAGENT_CENTER_URL` and `JOBAGENT_PUBLIC_URL` (both
    /// required when enabled), `JOBAGENT_CENTER_USER` and `JOBAGENT_CENTER_PASSWORD` (the
    /// dashboard's credentials, both or neither), and the agent's own `JOBAGENT_BASIC_USER`
    /// and `JOBAGENT_BASIC_PASSWORD`, which the center must send. An invalid or missing
    /// value is an error naming the variable.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let enabled = match get("JOBAGENT_AUTO_REGISTER") {
            None => false,
            Some(v) => crate::switch::parse_switch("JOBAGENT_AUTO_REGISTER", &v)?,
        };
        if !enabled {
            return Ok(None);
        }
        let center_url = get("JOBAGENT_CENTER_URL").ok_or_else(|| {
            ConfigError::invalid(
                "JOBAGENT_CENTER_URL",
                "JOBAGENT_AUTO_REGISTER is on but no center URL is set; set it to the dashboard root, e.g. http://center:5000/hangfire",
            )
        })?;
        let public_url = get("JOBAGENT_PUBLIC_URL").ok_or_else(|| {
            ConfigError::invalid(
                "JOBAGENT_PUBLIC_URL",
                "JOBAGENT_AUTO_REGISTER is on but this agent's public URL is not set; set it to the URL the center reaches this service at, e.g. http://my-service:8080",
            )
        })?;
        let mut options = Self::new(&center_url, &public_url)?;
        if let Some((user, password)) =
            pair(&get, ("JOBAGENT_CENTER_USER", "JOBAGENT_CENTER_PASSWORD"))?
        {
            options = options.center_credentials(user, password);
        }
        if let Some((user, password)) =
            pair(&get, ("JOBAGENT_BASIC_USER", "JOBAGENT_BASIC_PASSWORD"))?
        {
            options = options.agent_basic_auth(user, password);
        }
        Ok(Some(options))
    }

    /// The dashboard's basic-auth credentials.
    pub fn center_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.center_user = Some(user.into());
        self.center_password = Some(Secret::new(password));
        self
    }

    /// The credentials this agent requires, registered as the job's `BasicUserName` and
    /// `BasicPassword` so the center sends them.
    pub fn agent_basic_auth(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.agent_user = Some(user.into());
        self.agent_password = Some(Secret::new(password));
        self
    }

    /// How often a job is retried after a failed first try (default 5). Refusals that
    /// cannot change (invalid job, refused credentials, 4xx) are not retried.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry, doubled for each further one up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The timeout of each call to the center (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The HTTP timeout the center uses when it calls the agent, the job's `Timeout`
    /// (default 20 s, as the .NET agent registers).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// The dashboard root, normalized.
    pub fn center_url(&self) -> &str {
        &self.center_url
    }

    /// This agent's public URL, normalized.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The URL registered for the agent's path: the public URL and the path joined by one `/`.
    pub fn agent_url(&self, agent_path: &str) -> String {
        join_url(&self.public_url, agent_path)
    }

    /// The wait after failed try number `attempt` (1-based).
    fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The request that registers one job.
    fn request_for(&self, reg: &JobRegistration, agent_url: &str) -> Option<HttpJobRequest> {
        let register = reg.auto_register()?;
        let id = non_empty(register.id).unwrap_or(reg.type_path());
        let name = non_empty(register.name).unwrap_or(id);
        let mut job = HttpJobRequest::agent(agent_url, reg.class(), name)
            .recurring_job_identifier(id)
            .cron(register.cron)
            .timeout(self.job_timeout);
        if let (Some(user), Some(password)) = (&self.agent_user, &self.agent_password) {
            job = job.basic_auth(user, password.expose());
        }
        Some(job)
    }
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// Reads a user/password pair: both or neither, the user without `:`.
fn pair(
    get: &impl Fn(&str) -> Option<String>,
    (user_var, password_var): (&'static str, &'static str),
) -> Result<Option<(String, String)>, ConfigError> {
    match (get(user_var), get(password_var)) {
        (Some(user), Some(password)) => {
            check_user(&user).map_err(|reason| ConfigError::invalid(user_var, reason))?;
            Ok(Some((user, password)))
        }
        (Some(_), None) => Err(ConfigError::invalid(
            password_var,
            format!("{user_var} is set but the password is not; set both or neither"),
        )),
        (None, Some(_)) => Err(ConfigError::invalid(
            user_var,
            format!("{password_var} is set but the user is not; set both or neither"),
        )),
        (None, None) => Ok(None),
    }
}

/// How registering one job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationOutcome {
    /// The center created the recurring job.
    Registered,
    /// The center already had a recurring job with this id and kept it.
    AlreadyRegistered,
    /// Every try failed, or the center refused in a way retrying cannot change.
    Failed {
        /// The last error.
        error: CenterError,
    },
}

impl RegistrationOutcome {
    /// Registered or already registered.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            RegistrationOutcome::Registered | RegistrationOutcome::AlreadyRegistered
        )
    }
}

/// One job's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobRegistrationResult {
    /// The job's class (`AgentClass`).
    pub class: &'static str,
    /// The recurring job's id at the center (`RecurringJobIdentifier`).
    pub id: String,
    /// How many calls were made.
    pub attempts: u32,
    /// How it ended.
    pub outcome: RegistrationOutcome,
}

/// What auto-registration did, one entry per job registered, sorted by class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrationReport {
    /// Each job's result.
    pub jobs: Vec<JobRegistrationResult>,
}

impl RegistrationReport {
    /// Whether every job is registered (or already was).
    pub fn all_succeeded(&self) -> bool {
        self.jobs.iter().all(|j| j.outcome.is_success())
    }

    /// The result for a class.
    pub fn get(&self, class: &str) -> Option<&JobRegistrationResult> {
        self.jobs.iter().find(|j| j.class == class)
    }

    /// The jobs that could not be registered.
    pub fn failed(&self) -> impl Iterator<Item = &JobRegistrationResult> {
        self.jobs.iter().filter(|j| !j.outcome.is_success())
    }
}

/// Registers, in the background, each job of `registry` that did not opt out
/// (`#[job_agent(register = false)]`) as a recurring job at the center (`op=addrecurringjob`); the agent's URL is the
/// public URL joined with `agent_path` (e.g. [`AgentOptions::path_str`](crate::AgentOptions::path_str)).
/// A job the center already has counts as success and is left as it is. Failures are retried
/// with backoff; each job's outcome is logged once. Await the handle for the report, or drop
/// it; abort it to stop early.
///
/// Must be called inside a Tokio runtime (it uses `tokio::spawn`).
pub fn spawn_auto_register(
    registry: &Registry,
    options: AutoRegistrationOptions,
    agent_path: &str,
) -> JoinHandle<RegistrationReport> {
    let jobs: Vec<&'static JobRegistration> = registry.iter().collect();
    let agent_path = agent_path.to_owned();
    tokio::spawn(async move { register_jobs(jobs, &options, &agent_path).await })
}

/// Like [`spawn_auto_register`], in the caller's task.
pub async fn auto_register(
    registry: &Registry,
    options: &AutoRegistrationOptions,
    agent_path: &str,
) -> RegistrationReport {
    let jobs: Vec<&'static JobRegistration> = registry.iter().collect();
    register_jobs(jobs, options, agent_path).await
}

/// One job on its way.
struct Pending {
    class: &'static str,
    id: String,
    request: HttpJobRequest,
    attempts: u32,
}

async fn register_jobs(
    jobs: Vec<&'static JobRegistration>,
    options: &AutoRegistrationOptions,
    agent_path: &str,
) -> RegistrationReport {
    let agent_url = options.agent_url(agent_path);
    let mut pending: Vec<Pending> = jobs
        .into_iter()
        .filter_map(|reg| {
            let request = options.request_for(reg, &agent_url)?;
            Some(Pending {
                class: reg.class(),
                id: request.identifier().unwrap_or_default().to_owned(),
                request,
                attempts: 0,
            })
        })
        .collect();
    let mut report = RegistrationReport::default();
    if pending.is_empty() {
        tracing::debug!("no job asks for auto-registration at the center");
        return report;
    }
    let credentials = match (&options.center_user, &options.center_password) {
        (Some(user), Some(password)) => Some((user.as_str(), password.expose())),
        _ => None,
    };
    let client = match CenterClient::new(&options.center_url, credentials, options.request_timeout)
    {
        Ok(client) => client,
        Err(error) => {
            for job in pending {
                finish(
                    &mut report,
                    job,
                    options,
                    &agent_url,
                    RegistrationOutcome::Failed {
                        error: error.clone(),
                    },
                );
            }
            return report;
        }
    };
    let max_attempts = options.retries.saturating_add(1);
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let mut retry = Vec::new();
        for mut job in pending {
            job.attempts += 1;
            let outcome = match client.add_recurring_job(&job.request).await {
                Ok(()) => RegistrationOutcome::Registered,
                Err(CenterError::AlreadyRegistered { .. }) => {
                    RegistrationOutcome::AlreadyRegistered
                }
                Err(error) if error.is_retryable() && attempt < max_attempts => {
                    tracing::debug!(
                        class = job.class,
                        id = %job.id,
                        attempt,
                        error = %error,
                        "registering the job at the center failed; will retry"
                    );
                    retry.push(job);
                    continue;
                }
                Err(error) => RegistrationOutcome::Failed { error },
            };
            finish(&mut report, job, options, &agent_url, outcome);
        }
        pending = retry;
        if !pending.is_empty() {
            tokio::time::sleep(options.backoff_after(attempt)).await;
        }
    }
    report.jobs.sort_by_key(|j| j.class);
    report
}

/// Logs a job's outcome (once) and records it.
fn finish(
    report: &mut RegistrationReport,
    job: Pending,
    options: &AutoRegistrationOptions,
    agent_url: &str,
    outcome: RegistrationOutcome,
) {
    match &outcome {
        RegistrationOutcome::Registered => tracing::info!(
            class = job.class,
            id = %job.id,
            url = %agent_url,
            center = %options.center_url,
            "job registered at the center"
        ),
        RegistrationOutcome::AlreadyRegistered => tracing::info!(
            class = job.class,
            id = %job.id,
            center = %options.center_url,
            "job already registered at the center; left as it is"
        ),
        RegistrationOutcome::Failed { error } => tracing::warn!(
            class = job.class,
            id = %job.id,
            url = %agent_url,
            center = %options.center_url,
            attempts = job.attempts,
            error = %error,
            "could not register the job at the center; create it on the dashboard or fix the error and restart"
        ),
    }
    report.jobs.push(JobRegistrationResult {
        class: job.class,
        id: job.id,
        attempts: job.attempts,
        outcome,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let o = AutoRegistrationOptions::new("http://c/h", "http://a")
            .map(|o| o.backoff(Duration::from_millis(100), Duration::from_millis(350)));
        let Ok(o) = o else {
            panic!("valid options");
        };
        let waits: Vec<u128> = (1..=5).map(|a| o.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350, 350]);
        assert_eq!(o.backoff_after(200), Duration::from_millis(350));
    }
}
