//! The command line: commands, flags, environment fallbacks and the help text.
//!
//! Hand-written on purpose: five commands and a dozen flags do not justify a new dependency,
//! and a hand-written parser lets every error name the flag at fault without echoing secret
//! values (`--password`, `--store`).

use std::fmt;

use agent_sdk::StoreType;

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

/// What to ask the agent.
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
}

impl Command {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "run" => Some(Command::Run),
            "stop" => Some(Command::Stop),
            "detail" => Some(Command::Detail),
            "heartbeat" => Some(Command::Heartbeat),
            _ => None,
        }
    }

    /// The action name sent in `x-job-agent-action`.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Stop => "stop",
            Command::Detail => "detail",
            Command::Heartbeat => "heartbeat",
        }
    }

    fn takes_class(self) -> bool {
        self != Command::Heartbeat
    }
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
    /// The job class (`AgentClass`); `None` for `heartbeat`.
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
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
    /// Run a command.
    Go(Box<Options>),
}

/// A flag: its name, whether it takes a value, and the commands it applies to.
struct Flag {
    name: &'static str,
    value: bool,
    commands: &'static [Command],
}

const ALL: &[Command] = &[
    Command::Run,
    Command::Stop,
    Command::Detail,
    Command::Heartbeat,
];
const JOBS: &[Command] = &[Command::Run, Command::Stop, Command::Detail];

const FLAGS: &[Flag] = &[
    Flag {
        name: "agent",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "store",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "store-type",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "schema",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "db",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "user",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "password",
        value: true,
        commands: ALL,
    },
    Flag {
        name: "job-id",
        value: true,
        commands: JOBS,
    },
    Flag {
        name: "header",
        value: true,
        commands: JOBS,
    },
    Flag {
        name: "param",
        value: true,
        commands: &[Command::Run],
    },
    Flag {
        name: "timeout-ms",
        value: true,
        commands: &[Command::Run],
    },
    Flag {
        name: "no-follow",
        value: false,
        commands: &[Command::Run, Command::Stop],
    },
    Flag {
        name: "run-id",
        value: true,
        commands: &[Command::Stop],
    },
    Flag {
        name: "server-id",
        value: true,
        commands: &[Command::Heartbeat],
    },
];

/// The help text.
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

pub(crate) fn help() -> String {
    format!(
        "\
jobagent-dev — a scheduling center in a box: drive a job agent over HTTP exactly as a
Hangfire.HttpJob center does, and tail the job's console lines from the center's store.

USAGE:
    jobagent-dev run <class> [options]        start a run, tail its console, print its result
    jobagent-dev stop <class> [options]       stop the running instance(s), wait for the stop's result
    jobagent-dev detail <class> [options]     print the class's status
    jobagent-dev heartbeat [options]          start the agent's heartbeat reporter, show its row
    jobagent-dev --help | --version

OPTIONS:
    --agent <url>          the agent URL [env {ENV_AGENT}; else http://{ENV_LISTEN}{ENV_PATH}
                           from the service's own variables when either is set (0.0.0.0 is
                           called as 127.0.0.1); default {DEFAULT_AGENT}]
    --store <conn>         the center's store, read as the agent reads JOBAGENT_STORE (same
                           parsers, same TLS rules)
                           [env {ENV_STORE}, else {ENV_SERVICE_STORE}]:
                             postgresql: an Npgsql `Host=..;Database=..;Username=..;..` string
                                         or a postgres:// URL
                             mysql:      a MySqlConnector `Server=..;Database=..;Uid=..;..`
                                         string or a mysql:// URL
                             redis:      a StackExchange.Redis `host:port,password=..` string
                                         or a redis:// / rediss:// URL
                           Sent to the agent in x-job-storage as the center sends HangfireDb (a
                           URL rendered in the driver's own form) and read back for console
                           lines, results and heartbeat rows. Never printed.
    --store-type <type>    postgresql, mysql or redis (the center's storage Type) [env
                           {ENV_STORE_TYPE}; default: the store URL's scheme, else postgresql]
    --schema <name>        where the center's rows are (TablePrefix): the PostgreSQL schema,
                           the MySQL table prefix or the Redis key prefix
                           [env {ENV_SCHEMA}; default per type: {pg}, {my}, {redis}]
    --db <n>               redis: the database (Db) [default: the store's defaultDatabase or
                           URL path, else 0]
    --user <u>             basic auth user configured on the job [env {ENV_USER}]
    --password <p>         basic auth password [env {ENV_PASSWORD}]
    --job-id <id>          the dispatch's job id (x-job-id) [default: a fresh number]
    --header <name=value>  a header configured on the job, passed to it (repeatable)
    --param <text>         run: the job's parameter (Data), usually JSON [default: empty]
    --timeout-ms <n>       run: AgentTimeout in milliseconds [default 0: none]
    --no-follow            run, stop: send and print the answer, do not wait for the store
    --run-id <id>          stop: also wait for that run's result
    --server-id <id>       heartbeat: the center's server id [default: a fresh one]
    -h, --help             this text
    -V, --version          the version

EXIT STATUS:
    0  the agent accepted the dispatch and (when followed) its result is R=ok
    1  the agent refused the dispatch (500/501 `err:`), or its result is R=err
    2  bad usage, or the agent or the store could not be reached
  130  interrupted: ctrl-c while following sends a `stop` for the run, then exits

EXAMPLE:
    jobagent-dev run example_agent::jobs::TestJob --param '{{\"lines\":5,\"progress\":true}}' \\
        --store postgres://postgres@127.0.0.1:5432/hangfire
    jobagent-dev run example_agent::jobs::TestJob --store redis://127.0.0.1:6379 --db 1
    jobagent-dev run example_agent::jobs::TestJob --store-type mysql \\
        --store 'Server=127.0.0.1;Database=hangfire;Uid=root;Pwd=..' --schema Hangfire
",
        pg = StoreType::PostgreSql.default_prefix(),
        my = StoreType::MySql.default_prefix(),
        redis = StoreType::Redis.default_prefix(),
    )
}

/// Parses the arguments (without the program name); `env` looks up environment variables.
pub(crate) fn parse(
    args: Vec<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut positional: Vec<String> = Vec::new();
    let mut given: Vec<(&'static Flag, Option<String>)> = Vec::new();
    let mut args = args.into_iter();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        if only_positional || arg == "-" || !arg.starts_with('-') {
            positional.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => {
                only_positional = true;
                continue;
            }
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(format!(
                "unknown option `{}`",
                shorten(arg.split('=').next().unwrap_or_default())
            ));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            return Err(format!("unknown option `--{}`", shorten(name)));
        };
        let value = match (flag.value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => match args.next() {
                Some(v) => Some(v),
                None => return Err(format!("`--{}` needs a value", flag.name)),
            },
            (false, Some(_)) => return Err(format!("`--{}` takes no value", flag.name)),
            (false, None) => None,
        };
        given.push((flag, value));
    }

    let mut positional = positional.into_iter();
    let Some(word) = positional.next() else {
        return Err("no command given; expected run, stop, detail or heartbeat".to_owned());
    };
    if word == "help" {
        return Ok(Parsed::Help);
    }
    let Some(command) = Command::parse(&word) else {
        return Err(format!(
            "unknown command `{}`; expected run, stop, detail or heartbeat",
            shorten(&word)
        ));
    };
    let class = if command.takes_class() {
        match positional.next() {
            Some(class) => Some(check_class(&class)?),
            None => {
                return Err(format!(
                    "`{}` needs the job class, e.g. `jobagent-dev {} example_agent::jobs::TestJob`",
                    command.action(),
                    command.action()
                ));
            }
        }
    } else {
        None
    };
    if let Some(extra) = positional.next() {
        return Err(format!(
            "unexpected argument `{}` (quote a parameter: --param '{{...}}')",
            shorten(&extra)
        ));
    }

    let mut values: Vec<(&'static str, Option<String>)> = Vec::new();
    for (flag, value) in given {
        if !flag.commands.contains(&command) {
            return Err(format!(
                "`--{}` does not apply to `{}`",
                flag.name,
                command.action()
            ));
        }
        if flag.name != "header" && values.iter().any(|(n, _)| *n == flag.name) {
            return Err(format!("`--{}` is given more than once", flag.name));
        }
        values.push((flag.name, value));
    }
    let one = |name: &str| -> Option<String> {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    };
    let present = |name: &str| values.iter().any(|(n, _)| *n == name);

    let agent_text = one("agent")
        .or_else(|| env(ENV_AGENT))
        .or_else(|| service_agent(env(ENV_LISTEN), env(ENV_PATH)))
        .unwrap_or_else(|| DEFAULT_AGENT.to_owned());
    let agent = check_agent(agent_text.trim())?;

    let store = match one("store") {
        Some(s) if s.trim().is_empty() => return Err("`--store` is empty".to_owned()),
        Some(s) => Some(Secret(s)),
        None => env(ENV_STORE)
            .or_else(|| env(ENV_SERVICE_STORE))
            .map(Secret),
    };

    let store_type = store_type(one("store-type"), env(ENV_STORE_TYPE), store.as_ref())?;

    let schema = match one("schema") {
        Some(s) => s,
        None => env(ENV_SCHEMA).unwrap_or_else(|| store_type.default_prefix().to_owned()),
    };
    check_prefix(store_type, &schema)?;

    let db = match one("db") {
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

    let auth = match (one("user"), one("password")) {
        (Some(u), Some(p)) => Some((u, p)),
        (Some(_), None) => {
            return Err("`--user` is given but `--password` is not; give both or neither".into());
        }
        (None, Some(_)) => {
            return Err("`--password` is given but `--user` is not; give both or neither".into());
        }
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

    let job_id = one("job-id")
        .map(|id| check_id("--job-id", &id))
        .transpose()?;
    let run_id = one("run-id")
        .map(|id| check_id("--run-id", &id))
        .transpose()?;
    let server_id = one("server-id")
        .map(|id| check_text("--server-id", &id))
        .transpose()?;

    let timeout_ms = match one("timeout-ms") {
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

    let mut headers = Vec::new();
    for (name, value) in &values {
        if *name == "header" {
            headers.push(check_header(value.as_deref().unwrap_or_default())?);
        }
    }

    Ok(Parsed::Go(Box::new(Options {
        command,
        class,
        agent,
        param: one("param").unwrap_or_default(),
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
        follow: !present("no-follow"),
    })))
}

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
        return agent_sdk::__dev::check_schema(prefix)
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
            (&["launch", "a::B"], "unknown command"),
            (&["run"], "needs the job class"),
            (&["run", "a::B", "extra"], "unexpected argument"),
            (&["run", "a::B", "--bogus"], "unknown option"),
            (&["run", "a::B", "--param"], "needs a value"),
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
            (&["run", "a::B", "--run-id", "1"], "does not apply"),
            (&["heartbeat", "--param", "{}"], "does not apply"),
            (
                &["run", "a::B", "--job-id", "1", "--job-id", "2"],
                "more than once",
            ),
            (&["run", "a::B", "--no-follow=yes"], "takes no value"),
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
                "more than once",
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
    fn help_and_version() {
        let p = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned()).collect(), |_| None);
        assert!(matches!(p(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(p(&["run", "a::B", "-h"]), Ok(Parsed::Help)));
        assert!(matches!(p(&["help"]), Ok(Parsed::Help)));
        assert!(matches!(p(&["-V"]), Ok(Parsed::Version)));
        assert!(help().contains("jobagent-dev run <class>"));
        for word in [
            "--store-type",
            "--db",
            "mysql://",
            "redis://",
            "{hangfire}:",
        ] {
            assert!(help().contains(word), "{word}");
        }
    }
}
