//! `AgentOptions`: how an agent is configured, in code or from `JOBAGENT_*` variables.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;

/// The default path the center calls.
pub const DEFAULT_PATH: &str = "/jobagent";
/// The prefix the .NET agent puts before every console line.
pub const DEFAULT_CONSOLE_PREFIX: &str = "【JobAgent】";

/// A string that never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; use it only where it must go.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Basic-auth credentials the center must send.
#[derive(Clone, Debug)]
pub struct BasicAuth {
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
/// let options = agent_sdk::AgentOptions::new()
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
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_owned(),
            basic_auth: None,
            shutdown_timeout: Duration::from_secs(10),
            timeout_grace: Duration::from_secs(5),
            console_prefix: DEFAULT_CONSOLE_PREFIX.to_owned(),
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
    pub fn from_env() -> Result<Self, ConfigError> {
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
        if let Some(auth) = &self.basic_auth
            && (auth.user.is_empty() || auth.user.contains(':'))
        {
            return Err(ConfigError::invalid(
                "JOBAGENT_BASIC_USER",
                "the user must be non-empty and may not contain `:`",
            ));
        }
        Ok(())
    }
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
}
