//! The command line: commands, flags, environment fallbacks and the help text.
//!
//! clap reads the words and flags (each command takes only the flags that apply to it); the
//! values stay text until checked here, so every error names the flag at fault without
//! echoing secret values (`--password`, `--store`), and the environment fallbacks (the CLI's
//! own variables, then the service's) are applied in one place.

use std::fmt;

use clap::{Args, Parser, Subcommand};
use jobagent::StoreType;

/// The default agent URL (the example service's, and the SDK's default path).
pub(crate) const DEFAULT_AGENT: &str = "http://127.0.0.1:5000/jobagent";

/// Environment fallback for `--agent`.
pub(crate) const ENV_AGENT: &str = "JOBAGENT_DEV_AGENT";
/// Environment fallback for `--store`.
pub(crate) const ENV_STORE: &str = "JOBAGENT_DEV_STORE";
/// The service's own variables, read when the CLI's are not set: the CLI then drives the
/// agent a shell's environment configures, with no flag.
pub(crate) const ENV_LISTEN: &str = "JOBAGENT_LISTEN";
pub(crate) const ENV_PATH: &str = "JOBAGENT_PATH";
pub(crate) const ENV_SERVICE_STORE: &str = "JOBAGENT_STORE";
pub(crate) const ENV_SCHEMA: &str = "JOBAGENT_STORE_SCHEMA";
pub(crate) const ENV_STORE_TYPE: &str = "JOBAGENT_STORE_TYPE";
/// Environment fallback for `--user` (the same variable the agent reads).
pub(crate) const ENV_USER: &str = "JOBAGENT_BASIC_USER";
/// Environment fallback for `--password` (the same variable the agent reads).
pub(crate) const ENV_PASSWORD: &str = "JOBAGENT_BASIC_PASSWORD";

/// What to ask the agent (or, for `setup`, the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start a run and follow it.
    Run,
    /// Stop the running instance(s) of a class.
    Stop,
    /// Show a class's status.
    Detail,
    /// Start or renew the agent's heartbeat reporter.
    Heartbeat,
    /// Create Hangfire's tables in the store (a laptop's fresh database).
    Setup,
}

/// A secret string: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The secret text.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything a command needs, after flags and environment fallbacks.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The command.
    pub(crate) command: Command,
    /// The job class (`AgentClass`); `None` for `heartbeat` and `setup`.
    pub(crate) class: Option<String>,
    /// The agent URL the center's job calls.
    pub(crate) agent: reqwest::Url,
    /// The job's `Data`, sent as the request body.
    pub(crate) param: String,
    /// `AgentTimeout` in milliseconds.
    pub(crate) timeout_ms: Option<i64>,
    /// The center's store, as given (a secret: it may hold a password).
    pub(crate) store: Option<Secret>,
    /// The store's type: given, else the store URL's scheme, else PostgreSQL.
    pub(crate) store_type: StoreType,
    /// The schema (PostgreSQL), table prefix (MySQL) or key prefix (Redis): `TablePrefix`,
    /// given or the type's default.
    pub(crate) schema: String,
    /// Redis: the database (`Db`); `None` takes the store string's own, else 0.
    pub(crate) db: Option<i64>,
    /// Basic auth configured on the job.
    pub(crate) auth: Option<(String, Secret)>,
    /// The dispatch's job id (`x-job-id`); generated when absent.
    pub(crate) job_id: Option<String>,
    /// `stop`: the run whose result to wait for as well.
    pub(crate) run_id: Option<String>,
    /// `heartbeat`: the center's server id; generated when absent.
    pub(crate) server_id: Option<String>,
    /// Headers configured on the job, passed through to it.
    pub(crate) headers: Vec<(String, String)>,
    /// Tail the console and wait for the result (with a store).
    pub(crate) follow: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Print this help text (to stdout, exit status 0).
    Help(String),
    /// Print this version line.
    Version(String),
    /// Run a command.
    Go(Box<Options>),
}

/// The command line as clap reads it: words and flags, values still unchecked text.
#[derive(Parser, Debug)]
#[command(
    name = "jobagent-dev",
    version,
    about = "A scheduling center in a box: drive a job agent over HTTP exactly as a \
             Hangfire.HttpJob center does, and tail the job's console lines from the center's store.",
    subcommand_required = true,
    after_help = AFTER_HELP,
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a run, tail its console, print its result.
    Run {
        /// The job class (AgentClass), e.g. example_agent::jobs::TestJob.
        #[arg(value_name = "class")]
        class: String,
        #[command(flatten)]
        agent: AgentFlags,
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        job: JobFlags,
        /// The job's parameter (Data), usually JSON [default: empty].
        #[arg(long, value_name = "text", allow_hyphen_values = true)]
        param: Option<String>,
        /// AgentTimeout in milliseconds [default 0: none].
        #[arg(long, value_name = "n", allow_hyphen_values = true)]
        timeout_ms: Option<String>,
        /// Send and print the answer; do not wait for the store.
        #[arg(long)]
        no_follow: bool,
    },
    /// Stop the running instance(s), print the stop job's console and result.
    Stop {
        /// The job class (AgentClass).
        #[arg(value_name = "class")]
        class: String,
        #[command(flatten)]
        agent: AgentFlags,
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        job: JobFlags,
        /// Also wait for that run's result.
        #[arg(long, value_name = "id", allow_hyphen_values = true)]
        run_id: Option<String>,
        /// Send and print the answer; do not wait for the store.
        #[arg(long)]
        no_follow: bool,
    },
    /// Print the class's status.
    Detail {
        /// The job class (AgentClass).
        #[arg(value_name = "class")]
        class: String,
        #[command(flatten)]
        agent: AgentFlags,
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        job: JobFlags,
    },
    /// Start the agent's heartbeat reporter, show its row.
    Heartbeat {
        #[command(flatten)]
        agent: AgentFlags,
        #[command(flatten)]
        store: StoreFlags,
        /// The center's server id [default: a fresh one].
        #[arg(long, value_name = "id", allow_hyphen_values = true)]
        server_id: Option<String>,
    },
    /// Create Hangfire's tables (hash, set, lock) in a fresh PostgreSQL or MySQL database, as
    /// the center's storage does; running it again changes nothing. Redis needs no tables.
    Setup {
        #[command(flatten)]
        store: StoreFlags,
    },
}

/// Where the agent is and how to authenticate to it.
#[derive(Args, Debug)]
struct AgentFlags {
    /// The agent URL [env JOBAGENT_DEV_AGENT; else http://JOBAGENT_LISTEN JOBAGENT_PATH from
    /// the service's own variables when either is set (0.0.0.0 is called as 127.0.0.1);
    /// default http://127.0.0.1:5000/jobagent].
    #[arg(long, value_name = "url", allow_hyphen_values = true)]
    agent: Option<String>,
    /// Basic auth user configured on the job [env JOBAGENT_BASIC_USER].
    #[arg(long, value_name = "u", allow_hyphen_values = true)]
    user: Option<String>,
    /// Basic auth password [env JOBAGENT_BASIC_PASSWORD].
    #[arg(long, value_name = "p", allow_hyphen_values = true)]
    password: Option<String>,
}

/// The center's store.
#[derive(Args, Debug)]
struct StoreFlags {
    /// The center's store, read as the agent reads JOBAGENT_STORE (same parsers, same TLS
    /// rules) [env JOBAGENT_DEV_STORE, else JOBAGENT_STORE]. Never printed.
    #[arg(long, value_name = "conn", allow_hyphen_values = true)]
    store: Option<String>,
    /// postgresql, mysql or redis (the center's storage Type) [env JOBAGENT_STORE_TYPE;
    /// default: the store URL's scheme, else postgresql].
    #[arg(long, value_name = "type", allow_hyphen_values = true)]
    store_type: Option<String>,
    /// Where the center's rows are (TablePrefix): the PostgreSQL schema, the MySQL table
    /// prefix or the Redis key prefix [env JOBAGENT_STORE_SCHEMA; default per type:
    /// hangfire, Hangfire, {hangfire}:].
    #[arg(long, value_name = "name", allow_hyphen_values = true)]
    schema: Option<String>,
    /// Redis: the database (Db) [default: the store's defaultDatabase or URL path, else 0].
    #[arg(long, value_name = "n", allow_hyphen_values = true)]
    db: Option<String>,
}

/// What the center's job carries besides its class.
#[derive(Args, Debug)]
struct JobFlags {
    /// The dispatch's job id (x-job-id) [default: a fresh number].
    #[arg(long, value_name = "id", allow_hyphen_values = true)]
    job_id: Option<String>,
    /// A header configured on the job, passed to it (repeatable).
    #[arg(long = "header", value_name = "name=value", allow_hyphen_values = true)]
    headers: Vec<String>,
}

/// The help text's tail: the commands at a glance, the stores, exit status and examples.
const AFTER_HELP: &str = "\
USAGE:
    jobagent-dev run <class> [options]        start a run, tail its console, print its result
    jobagent-dev stop <class> [options]       stop the running instance(s), show the stop's console and result
    jobagent-dev detail <class> [options]     print the class's status
    jobagent-dev heartbeat [options]          start the agent's heartbeat reporter, show its row
    jobagent-dev setup --store <conn>         create Hangfire's tables in a fresh database
    jobagent-dev <command> --help             that command's options

STORES (--store, --store-type):
    postgresql: an Npgsql `Host=..;Database=..;Username=..;..` string or a postgres:// URL
    mysql:      a MySqlConnector `Server=..;Database=..;Uid=..;..` string or a mysql:// URL
    redis:      a StackExchange.Redis `host:port,password=..` string or a redis:// / rediss:// URL
    Sent to the agent in x-job-storage as the center sends HangfireDb (a URL rendered in the
    driver's own form) and read back for console lines, results and heartbeat rows.
    Default prefix (--schema) per type: hangfire, Hangfire, {hangfire}:. A relay
    (relay+http://) is the agent's own store: give the database the relay fronts.

EXIT STATUS:
    0  the agent accepted the dispatch and (when followed) its result is R=ok; setup done
    1  the agent refused the dispatch (500/501 `err:`), or its result is R=err
    2  bad usage, or the agent or the store could not be reached
  130  interrupted: ctrl-c while following sends a `stop` for the run, then exits

EXAMPLE:
    jobagent-dev setup --store 'Host=127.0.0.1;Database=test;Username=postgres'
    jobagent-dev run example_agent::jobs::TestJob --param '{\"lines\":5,\"progress\":true}' \\
        --store postgres://postgres@127.0.0.1:5432/test
    jobagent-dev run example_agent::jobs::TestJob --store redis://127.0.0.1:6379 --db 1
    jobagent-dev run example_agent::jobs::TestJob --store-type mysql \\
        --store 'Server=127.0.0.1;Database=hangfire;Uid=root;Pwd=..' --schema Hangfire
";

/// The agent URL of a service configured by `JOBAGENT_LISTEN` (default `127.0.0.1:5000`) and
/// `JOBAGENT_PATH` (default `/jobagent`), when either is set. An unspecified listen address
/// (`0.0.0.0`, `[::]`) is called on the loopback.
fn service_agent(listen: Option<String>, path: Option<String>) -> Option<String> {
    if listen.is_none() && path.is_none() {
        return None;
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:5000".to_owned());
    let listen = listen.trim();
    let listen = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_owned(),
    };
    let path = path.unwrap_or_else(|| "/jobagent".to_owned());
    Some(format!("http://{listen}{}", path.trim()))
}

/// The help text (as `--help` prints it).
#[cfg(test)]
fn help() -> String {
    use clap::CommandFactory as _;
    Cli::command().render_long_help().to_string()
}

/// The words and flags of one command, flattened, before checks and fallbacks.
#[derive(Default)]
struct Raw {
    class: Option<String>,
    agent: Option<String>,
    user: Option<String>,
    password: Option<String>,
    store: Option<String>,
    store_type: Option<String>,
    schema: Option<String>,
    db: Option<String>,
    job_id: Option<String>,
    headers: Vec<String>,
    param: Option<String>,
    timeout_ms: Option<String>,
    no_follow: bool,
    run_id: Option<String>,
    server_id: Option<String>,
}

impl Raw {
    fn with_agent(mut self, a: AgentFlags) -> Self {
        self.agent = a.agent;
        self.user = a.user;
        self.password = a.password;
        self
    }

    fn with_store(mut self, s: StoreFlags) -> Self {
        self.store = s.store;
        self.store_type = s.store_type;
        self.schema = s.schema;
        self.db = s.db;
        self
    }

    fn with_job(mut self, j: JobFlags) -> Self {
        self.job_id = j.job_id;
        self.headers = j.headers;
        self
    }
}

/// Parses the arguments (without the program name); `env` looks up environment variables.
pub(crate) fn parse(
    args: Vec<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let cli = match Cli::try_parse_from(std::iter::once("jobagent-dev".to_owned()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp => Ok(Parsed::Help(e.render().to_string())),
                clap::error::ErrorKind::DisplayVersion => {
                    Ok(Parsed::Version(e.render().to_string()))
                }
                clap::error::ErrorKind::MissingSubcommand
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Err(
                    "no command given; expected run, stop, detail, heartbeat or setup".to_owned(),
                ),
                // clap's own words: what was unexpected or missing, with a tip; never a
                // flag's value.
                _ => Err(e
                    .render()
                    .to_string()
                    .trim_start_matches("error: ")
                    .trim_end()
                    .to_owned()),
            };
        }
    };
    let (command, raw) = match cli.command {
        Cmd::Run {
            class,
            agent,
            store,
            job,
            param,
            timeout_ms,
            no_follow,
        } => (
            Command::Run,
            Raw {
                class: Some(class),
                param,
                timeout_ms,
                no_follow,
                ..Raw::default()
            }
            .with_agent(agent)
            .with_store(store)
            .with_job(job),
        ),
        Cmd::Stop {
            class,
            agent,
            store,
            job,
            run_id,
            no_follow,
        } => (
            Command::Stop,
            Raw {
                class: Some(class),
                run_id,
                no_follow,
                ..Raw::default()
            }
            .with_agent(agent)
            .with_store(store)
            .with_job(job),
        ),
        Cmd::Detail {
            class,
            agent,
            store,
            job,
        } => (
            Command::Detail,
            Raw {
                class: Some(class),
                ..Raw::default()
            }
            .with_agent(agent)
            .with_store(store)
            .with_job(job),
        ),
        Cmd::Heartbeat {
            agent,
            store,
            server_id,
        } => (
            Command::Heartbeat,
            Raw {
                server_id,
                ..Raw::default()
            }
            .with_agent(agent)
            .with_store(store),
        ),
        Cmd::Setup { store } => (Command::Setup, Raw::default().with_store(store)),
    };
    let class = raw.class.as_deref().map(check_class).transpose()?;

    let agent_text = raw
        .agent
        .or_else(|| env(ENV_AGENT))
        .or_else(|| service_agent(env(ENV_LISTEN), env(ENV_PATH)))
        .unwrap_or_else(|| DEFAULT_AGENT.to_owned());
    let agent = check_agent(agent_text.trim())?;

    let store = match raw.store {
        Some(s) if s.trim().is_empty() => return Err("`--store` is empty".to_owned()),
        Some(s) => Some(Secret(s)),
        None => env(ENV_STORE)
            .or_else(|| env(ENV_SERVICE_STORE))
            .map(Secret),
    };
    if command == Command::Setup && store.is_none() {
        return Err(format!(
            "`setup` needs the store to create the tables in: --store <conn> (or {ENV_STORE} / {ENV_SERVICE_STORE})"
        ));
    }

    let store_type = store_type(raw.store_type, env(ENV_STORE_TYPE), store.as_ref())?;
    if store_type == StoreType::Relay {
        // The real reason, before any check of a prefix the relay's own configuration names.
        return Err(RELAY_REFUSED.to_owned());
    }

    let schema = match raw.schema {
        Some(s) => s,
        None => env(ENV_SCHEMA).unwrap_or_else(|| store_type.default_prefix().to_owned()),
    };
    check_prefix(store_type, &schema)?;

    let db = match raw.db {
        None => None,
        Some(_) if store_type != StoreType::Redis => {
            return Err(format!(
                "`--db` is the Redis database; this store is {store_type} (give --store-type redis or a redis:// store)"
            ));
        }
        Some(v) => Some(
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|d| (0..=65_535).contains(d))
                .ok_or_else(|| {
                    format!(
                        "`--db` must be a Redis database number (0 to 65535), not `{}`",
                        shorten(&v)
                    )
                })?,
        ),
    };

    let auth = match (raw.user, raw.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (Some(_), None) => {
            return Err("`--user` is given but `--password` is not; give both or neither".into());
        }
        (None, Some(_)) => {
            return Err("`--password` is given but `--user` is not; give both or neither".into());
        }
        (None, None) if command == Command::Setup => None,
        (None, None) => match (env(ENV_USER), env(ENV_PASSWORD)) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(_), None) => {
                return Err(format!(
                    "{ENV_USER} is set but {ENV_PASSWORD} is not; set both or neither"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{ENV_PASSWORD} is set but {ENV_USER} is not; set both or neither"
                ));
            }
            (None, None) => None,
        },
    };
    if let Some((user, _)) = &auth
        && user.contains(':')
    {
        return Err("the basic auth user must not contain `:`".to_owned());
    }
    let auth = auth.map(|(u, p)| (u, Secret(p)));

    let job_id = raw.job_id.map(|id| check_id("--job-id", &id)).transpose()?;
    let run_id = raw.run_id.map(|id| check_id("--run-id", &id)).transpose()?;
    let server_id = raw
        .server_id
        .map(|id| check_text("--server-id", &id))
        .transpose()?;

    let timeout_ms = match raw.timeout_ms {
        None => None,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(ms) if ms >= 0 => Some(ms),
            _ => {
                return Err(format!(
                    "`--timeout-ms` must be a whole number of milliseconds, 0 or more, not `{}`",
                    shorten(&v)
                ));
            }
        },
    };

    let headers = raw
        .headers
        .iter()
        .map(|h| check_header(h))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Parsed::Go(Box::new(Options {
        command,
        class,
        agent,
        param: raw.param.unwrap_or_default(),
        timeout_ms,
        store,
        store_type,
        schema,
        db,
        auth,
        job_id,
        run_id,
        server_id,
        headers,
        follow: !raw.no_follow,
    })))
}

/// Why a relay store is refused: the CLI reads and sends the center's store itself.
pub(crate) const RELAY_REFUSED: &str = "the store is a relay (relay+http:// or relay+https://, or type relay): a relay is the agent's own store, and jobagent-dev sends and reads the center's store itself; give it the database the relay fronts (--store, --store-type)";

/// At most 60 characters of a user's word, for error messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Header values are sent as plain text: visible ASCII only.
fn check_text(what: &str, value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!("`{what}` is empty"));
    }
    if !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(format!(
            "`{what}` must be printable ASCII (it is sent as a plain header)"
        ));
    }
    Ok(v.to_owned())
}

fn check_class(class: &str) -> Result<String, String> {
    check_text("<class>", class)
}

fn check_id(what: &str, id: &str) -> Result<String, String> {
    let id = check_text(what, id)?;
    if id.contains(' ') {
        return Err(format!("`{what}` must not contain spaces"));
    }
    Ok(id)
}

fn check_agent(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| {
        format!(
            "the agent URL `{}` is not a URL ({e}); e.g. {DEFAULT_AGENT}",
            shorten(text)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the agent URL must start with http:// or https://, e.g. {DEFAULT_AGENT}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the agent URL must not hold credentials; give them with --user and --password"
                .to_owned(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the agent URL names no host; e.g. {DEFAULT_AGENT}"));
    }
    Ok(url)
}

/// The store's type: `--store-type`, else `JOBAGENT_STORE_TYPE` (as the agent reads it),
/// else the store URL's scheme, else PostgreSQL. A type that contradicts the URL's scheme is
/// refused here, before anything is sent.
fn store_type(
    flag: Option<String>,
    env: Option<String>,
    store: Option<&Secret>,
) -> Result<StoreType, String> {
    let of_url = store.and_then(|s| StoreType::of_url(s.expose()));
    let (given, source) = match (flag, env) {
        (Some(t), _) => (t, "`--store-type`"),
        (None, Some(t)) => (t, ENV_STORE_TYPE),
        (None, None) => return Ok(of_url.unwrap_or(StoreType::PostgreSql)),
    };
    let kind: StoreType = given.parse().map_err(|_| {
        format!(
            "{source}: `{}` is not postgresql, mysql or redis",
            shorten(&given)
        )
    })?;
    if let Some(url) = of_url
        && url != kind
    {
        return Err(format!(
            "{source} is {kind} but the store is a {url} URL; give a {kind} store or drop {source}"
        ));
    }
    Ok(kind)
}

/// The schema or prefix, checked by the agent's own rule for PostgreSQL schemas; MySQL table
/// prefixes and Redis key prefixes must be non-empty text of at most 64 characters without
/// control characters (their stores check the rest).
pub(crate) fn check_prefix(kind: StoreType, prefix: &str) -> Result<(), String> {
    if kind == StoreType::PostgreSql {
        return jobagent::__dev::check_schema(prefix)
            .map_err(|reason| format!("`--schema`: {reason}"));
    }
    if prefix.trim().is_empty() {
        return Err("`--schema` is empty".to_owned());
    }
    if prefix.chars().count() > 64 || prefix.chars().any(char::is_control) {
        return Err(format!(
            "`--schema`: a {kind} prefix must be at most 64 characters, with no control characters"
        ));
    }
    Ok(())
}

/// Names the center never passes through: its own headers and the ones HTTP owns.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

fn check_header(spec: &str) -> Result<(String, String), String> {
    let Some((name, value)) = spec.split_once('=') else {
        return Err(format!(
            "`--header {}` must be `name=value`",
            shorten(spec.split(':').next().unwrap_or_default())
        ));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("`--header` has an empty name".to_owned());
    }
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() || name.contains("_@_") {
        return Err(format!(
            "`--header {}=...`: not a valid header name",
            shorten(name)
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("x-job-") || RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "`--header {}=...`: that header is the center's own; pick another name",
            shorten(name)
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(args: &[&str], env: &[(&str, &str)]) -> Result<Options, String> {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match parse(args, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })? {
            Parsed::Go(o) => Ok(*o),
            other => Err(format!("not a command: {other:?}")),
        }
    }

    #[test]
    fn parses_a_run() {
        let o = go(
            &[
                "run",
                "a::B",
                "--param",
                r#"{"lines":5}"#,
                "--timeout-ms=100",
                "--header",
                "tenant=acme",
                "--header",
                "trace=t=1",
                "--no-follow",
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(o.command, Command::Run);
        assert_eq!(o.class.as_deref(), Some("a::B"));
        assert_eq!(o.param, r#"{"lines":5}"#);
        assert_eq!(o.timeout_ms, Some(100));
        assert_eq!(o.agent.as_str(), DEFAULT_AGENT);
        assert_eq!(
            o.headers,
            vec![
                ("tenant".to_owned(), "acme".to_owned()),
                ("trace".to_owned(), "t=1".to_owned())
            ]
        );
        assert!(!o.follow);
        assert_eq!(o.schema, "hangfire");
    }

    #[test]
    fn finds_the_agent_and_store_from_the_services_own_variables() {
        let env = [
            (ENV_LISTEN, "0.0.0.0:8081"),
            (ENV_PATH, "/jobs/agent"),
            (ENV_SERVICE_STORE, "postgres://u:pw@h/db"),
            (ENV_SCHEMA, "center"),
        ];
        let o = go(&["detail", "a::B"], &env).expect("valid");
        assert_eq!(o.agent.as_str(), "http://127.0.0.1:8081/jobs/agent");
        assert!(o.store.is_some());
        assert_eq!(o.schema, "center");
        let o = go(&["detail", "a::B"], &[(ENV_PATH, "/j")]).expect("valid");
        assert_eq!(o.agent.as_str(), "http://127.0.0.1:5000/j");
        // The CLI's own variable wins over the service's.
        let o = go(
            &["detail", "a::B"],
            &[(ENV_LISTEN, "127.0.0.1:9"), (ENV_AGENT, "http://x:1/a")],
        )
        .expect("valid");
        assert_eq!(o.agent.as_str(), "http://x:1/a");
    }

    #[test]
    fn reads_the_environment_and_flags_win() {
        let env = [
            (ENV_AGENT, "http://10.0.0.1:8080/agent"),
            (ENV_STORE, "postgres://u:pw@h/db"),
            (ENV_USER, "u"),
            (ENV_PASSWORD, "p"),
        ];
        let o = go(&["detail", "a::B"], &env).expect("valid");
        assert_eq!(o.agent.as_str(), "http://10.0.0.1:8080/agent");
        assert!(o.store.is_some());
        assert_eq!(o.auth.as_ref().map(|(u, _)| u.as_str()), Some("u"));
        let o = go(
            &[
                "detail",
                "a::B",
                "--agent",
                "http://x:1/j",
                "--user=a",
                "--password=b",
            ],
            &env,
        )
        .expect("valid");
        assert_eq!(o.agent.as_str(), "http://x:1/j");
        assert_eq!(o.auth.as_ref().map(|(_, p)| p.expose()), Some("b"));
        // Debug never shows secrets.
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("pw@") && !shown.contains("\"b\""),
            "{shown}"
        );
    }

    #[test]
    fn refuses_bad_usage_clearly() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "no command"),
            (&["launch", "a::B"], "unrecognized subcommand 'launch'"),
            (&["run"], "<class>"),
            (&["run", "a::B", "extra"], "unexpected argument"),
            (&["run", "a::B", "--bogus"], "unexpected argument '--bogus'"),
            (
                &["run", "a::B", "--param"],
                "a value is required for '--param <text>'",
            ),
            (&["run", "a::B", "--timeout-ms", "soon"], "--timeout-ms"),
            (&["run", "a::B", "--timeout-ms", "-5"], "--timeout-ms"),
            (&["run", "a::B", "--agent", "ftp://x/"], "http://"),
            (&["run", "a::B", "--agent", "http://u:p@x/"], "credentials"),
            (&["run", "a::B", "--agent", "not a url"], "not a URL"),
            (&["run", "a::B", "--user", "u"], "--password"),
            (&["run", "a::B", "--schema", &"s".repeat(64)], "--schema"),
            (&["run", "a::B", "--header", "novalue"], "name=value"),
            (&["run", "a::B", "--header", "x-job-id=1"], "center's own"),
            (&["run", "a::B", "--header", "bad name=1"], "header name"),
            (
                &["run", "a::B", "--run-id", "1"],
                "unexpected argument '--run-id'",
            ),
            (
                &["heartbeat", "--param", "{}"],
                "unexpected argument '--param'",
            ),
            (
                &["setup", "--agent", "http://x/"],
                "unexpected argument '--agent'",
            ),
            (&["setup"], "needs the store"),
            (
                &["run", "a::B", "--job-id", "1", "--job-id", "2"],
                "cannot be used multiple times",
            ),
            (
                &["run", "a::B", "--no-follow=yes"],
                "unexpected value 'yes'",
            ),
            (&["run", "ä::B"], "ASCII"),
            (&["run", "a::B", "--store", " "], "empty"),
        ];
        for (args, expected) in cases {
            let e = go(args, &[]).expect_err("must fail");
            assert!(e.contains(expected), "{args:?}: {e}");
        }
        let e = go(
            &["run", "a::B", "--password", "hunter2"],
            &[(ENV_USER, "u")],
        )
        .expect_err("password without user flag");
        assert!(!e.contains("hunter2"), "{e}");
        let e = go(&["run", "a::B"], &[(ENV_USER, "u")]).expect_err("half the env pair");
        assert!(e.contains(ENV_PASSWORD), "{e}");
    }

    #[test]
    fn store_type_comes_from_the_flag_the_environment_or_the_url() {
        // Default: PostgreSQL, its schema, no Db.
        let o = go(&["detail", "a::B"], &[]).expect("valid");
        assert_eq!(o.store_type, StoreType::PostgreSql);
        assert_eq!(o.schema, "hangfire");
        assert_eq!(o.db, None);
        // From the URL's scheme, with that type's default prefix.
        let o = go(&["run", "a::B", "--store", "mysql://u:pw@h/hf"], &[]).expect("valid");
        assert_eq!(o.store_type, StoreType::MySql);
        assert_eq!(o.schema, "Hangfire");
        let o = go(&["run", "a::B", "--store", "rediss://:pw@h:6380/2"], &[]).expect("valid");
        assert_eq!(o.store_type, StoreType::Redis);
        assert_eq!(o.schema, "{hangfire}:");
        let o = go(&["heartbeat"], &[(ENV_SERVICE_STORE, "redis://h")]).expect("valid");
        assert_eq!(o.store_type, StoreType::Redis);
        // Given, for a connection string that is not a URL; case-insensitive, as the agent.
        let o = go(
            &[
                "run",
                "a::B",
                "--store-type",
                "MySQL",
                "--store",
                "Server=h;Database=hf;Uid=u;Pwd=pw",
                "--schema",
                "hf_",
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(o.store_type, StoreType::MySql);
        assert_eq!(o.schema, "hf_");
        let o = go(
            &[
                "run",
                "a::B",
                "--store-type=redis",
                "--store",
                "h:6379,password=pw",
                "--db",
                "3",
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(o.store_type, StoreType::Redis);
        assert_eq!(o.db, Some(3));
        // The agent's own variables; the flag wins over them.
        let env = [
            (ENV_STORE_TYPE, "redis"),
            (ENV_SERVICE_STORE, "h:6379"),
            (ENV_SCHEMA, "{app}:"),
        ];
        let o = go(&["detail", "a::B"], &env).expect("valid");
        assert_eq!(o.store_type, StoreType::Redis);
        assert_eq!(o.schema, "{app}:");
        let o = go(
            &[
                "detail",
                "a::B",
                "--store-type",
                "postgresql",
                "--store",
                "Host=h;Username=u",
                "--schema",
                "center",
            ],
            &env,
        )
        .expect("valid");
        assert_eq!(o.store_type, StoreType::PostgreSql);
        assert_eq!(o.schema, "center");
        // A PostgreSQL prefix is checked as a schema; the others' prefixes are not.
        let long = "p".repeat(64);
        assert!(go(&["run", "a::B", "--schema", &long], &[]).is_err());
        let o = go(
            &["run", "a::B", "--store-type", "redis", "--schema", &long],
            &[],
        )
        .expect("a 64-character key prefix");
        assert_eq!(o.schema, long);
    }

    #[test]
    fn refuses_bad_store_types_and_databases() {
        /// Arguments, environment, and what the error must say.
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                &["run", "a::B", "--store-type", "mssql"],
                &[],
                "--store-type",
            ),
            (
                &["run", "a::B"],
                &[(ENV_STORE_TYPE, "oracle")],
                ENV_STORE_TYPE,
            ),
            (
                &[
                    "run",
                    "a::B",
                    "--store-type",
                    "mysql",
                    "--store",
                    "redis://h",
                ],
                &[],
                "redis URL",
            ),
            (
                &["run", "a::B", "--store", "postgres://u@h/d"],
                &[(ENV_STORE_TYPE, "mysql")],
                ENV_STORE_TYPE,
            ),
            (&["run", "a::B", "--db", "1"], &[], "Redis database"),
            (
                &["run", "a::B", "--store", "mysql://u@h/d", "--db", "1"],
                &[],
                "Redis database",
            ),
            (
                &["run", "a::B", "--store-type", "redis", "--db", "x"],
                &[],
                "--db",
            ),
            (
                &["run", "a::B", "--store-type", "redis", "--db", "-1"],
                &[],
                "--db",
            ),
            (
                &["run", "a::B", "--store-type", "redis", "--db", "65536"],
                &[],
                "--db",
            ),
            (
                &[
                    "run",
                    "a::B",
                    "--store-type",
                    "redis",
                    "--db",
                    "1",
                    "--db",
                    "2",
                ],
                &[],
                "cannot be used multiple times",
            ),
            (
                &["run", "a::B", "--store-type", "mysql", "--schema", " "],
                &[],
                "empty",
            ),
            (
                &["run", "a::B", "--store-type", "redis", "--schema", "a\nb"],
                &[],
                "control",
            ),
        ];
        for (args, env, expected) in cases {
            let e = go(args, env).expect_err("must fail");
            assert!(e.contains(expected), "{args:?}: {e}");
        }
        // The store's text is not echoed when its type is at fault.
        let e = go(
            &[
                "run",
                "a::B",
                "--store-type",
                "redis",
                "--store",
                "mysql://u:hunter2@h/d",
            ],
            &[],
        )
        .expect_err("conflict");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_relay_store_gives_the_real_reason_first() {
        // The service's own JOBAGENT_STORE is a relay (docs/relay.md): the CLI cannot read a
        // relay, and says so, not that a prefix is empty.
        for (args, env) in [
            (
                vec!["run", "a::B"],
                vec![(ENV_SERVICE_STORE, "relay+http://relay:7070")],
            ),
            (
                vec!["run", "a::B", "--store", "relay+https://relay:7070"],
                vec![],
            ),
            (vec!["detail", "a::B", "--store-type", "relay"], vec![]),
        ] {
            let e = go(&args, &env).expect_err("a relay store");
            assert!(e.contains("relay"), "{args:?}: {e}");
            assert!(e.contains("the database the relay fronts"), "{args:?}: {e}");
            assert!(!e.contains("--schema"), "{args:?}: {e}");
        }
    }

    #[test]
    fn help_and_version() {
        let p = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned()).collect(), |_| None);
        assert!(matches!(p(&["--help"]), Ok(Parsed::Help(_))));
        assert!(matches!(p(&["run", "a::B", "-h"]), Ok(Parsed::Help(_))));
        assert!(matches!(p(&["help"]), Ok(Parsed::Help(_))));
        match p(&["-V"]) {
            Ok(Parsed::Version(v)) => assert!(v.starts_with("jobagent-dev 0."), "{v}"),
            other => panic!("{other:?}"),
        }
        assert!(help().contains("jobagent-dev run <class>"));
        for word in [
            "--store-type",
            "--db",
            "mysql://",
            "redis://",
            "{hangfire}:",
            "setup",
        ] {
            assert!(help().contains(word), "{word}");
        }
        // A command's own help lists its flags.
        match p(&["stop", "--help"]) {
            Ok(Parsed::Help(h)) => assert!(h.contains("--run-id") && h.contains("--store")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn setup_takes_a_store_and_no_agent() {
        let o = go(&["setup", "--store", "mysql://root@h/test"], &[]).expect("valid");
        assert_eq!(o.command, Command::Setup);
        assert_eq!(o.store_type, StoreType::MySql);
        assert_eq!(o.schema, "Hangfire");
        assert!(o.class.is_none() && o.auth.is_none());
        // From the service's own variable, as the README's store command sets it.
        let o = go(
            &["setup"],
            &[(
                ENV_SERVICE_STORE,
                "Host=127.0.0.1;Database=test;Username=postgres",
            )],
        )
        .expect("valid");
        assert_eq!(o.store_type, StoreType::PostgreSql);
        assert_eq!(o.schema, "hangfire");
    }
}
