//! `jobagent-dev`: a scheduling center in a box.
//!
//! Sends `run`, `stop`, `detail` and `heartbeat` to a job agent exactly as a Hangfire.HttpJob
//! center does, and, given the center's store (PostgreSQL, MySQL or Redis, `--store-type`),
//! tails the job's console lines from it in the dashboard's order and prints the dispatch's
//! result: a job runs end to end on a laptop with no .NET center. The store is read with the
//! agent's own store code (`jobagent::__dev::DevReader`), so both agree on every backend.
//! `setup` creates Hangfire's tables the agent touches on a laptop's fresh PostgreSQL or MySQL
//! database (`jobagent::__dev::install_tables`).
//!
//! ```sh
//! cargo run -p jobagent-dev -- run example_agent::jobs::TestJob \
//!     --param '{"lines":5,"progress":true}' --store postgres://postgres@127.0.0.1/hangfire
//! cargo run -p jobagent-dev -- run example_agent::jobs::TestJob --store redis://127.0.0.1/1
//! cargo run -p jobagent-dev -- setup --store "Host=127.0.0.1;Database=test;Username=postgres"
//! ```
//!
//! Run `jobagent-dev --help` for every command and option.

mod args;
mod center;
mod follow;
mod store;

use std::io::{IsTerminal as _, Write as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use args::{Command, Options, Parsed};
use center::{Answer, Center, ConsoleInfo, Dispatch, fresh_job_id};
use follow::{JobResult, Reader, render_line};
use store::StoreSpec;

/// Accepted, and (when followed) `R=ok`.
const EXIT_OK: u8 = 0;
/// Refused by the agent, or `R=err`.
const EXIT_FAILED: u8 = 1;
/// Bad usage, or the agent or the store unreachable.
const EXIT_USAGE: u8 = 2;
/// Interrupted with ctrl-c.
const EXIT_INTERRUPTED: u8 = 130;

/// How often the store is read while following.
const POLL: Duration = Duration::from_millis(250);
/// After this long with nothing in the store, a hint says why that may be.
const IDLE_HINT_AFTER: Duration = Duration::from_secs(10);
/// After ctrl-c, how long to wait for the stopped run's result.
const AFTER_STOP_WAIT: Duration = Duration::from_secs(10);
/// How long `setup` waits for the store's connection and each of its steps.
const SETUP_WITHIN: Duration = Duration::from_secs(15);
/// How long `heartbeat` waits for the agent's first row (it writes one every 3 s).
const HEARTBEAT_WAIT: Duration = Duration::from_secs(10);

/// A failure that ends the command, with its exit status; the message goes to stderr.
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

/// Prints one line to stdout; a closed stdout (`| head`) is not an error worth a panic.
fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.as_ref());
    let _ = out.flush();
}

/// Prints a note to stderr.
fn note(text: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "jobagent-dev: {}", text.as_ref());
}

fn main() -> ExitCode {
    let args: Option<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect();
    let Some(args) = args else {
        note("an argument is not valid UTF-8");
        return ExitCode::from(EXIT_USAGE);
    };
    let options = match args::parse(args, |name| std::env::var(name).ok()) {
        Ok(Parsed::Help(text) | Parsed::Version(text)) => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return ExitCode::from(EXIT_OK);
        }
        Ok(Parsed::Go(options)) => options,
        Err(message) => {
            note(message);
            note("see `jobagent-dev --help`");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note(format!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = match runtime.block_on(dispatch(&options)) {
        Ok(code) => code,
        Err(fail) => {
            note(&fail.message);
            fail.code
        }
    };
    ExitCode::from(code)
}

async fn dispatch(opts: &Options) -> Result<u8, Fail> {
    if opts.command == Command::Setup {
        return setup(opts).await;
    }
    let store = match &opts.store {
        None => None,
        Some(text) => Some(
            StoreSpec::parse(text.expose(), opts.store_type, &opts.schema, opts.db)
                .map_err(Fail::usage)?,
        ),
    };
    let center = Center::new(opts, store.as_ref()).map_err(Fail::usage)?;
    let class = opts.class.as_deref().unwrap_or_default();
    match opts.command {
        Command::Run => run(opts, &center, store.as_ref(), class).await,
        Command::Stop => stop(opts, &center, store.as_ref(), class).await,
        Command::Detail => detail(opts, &center, class).await,
        Command::Heartbeat => heartbeat(opts, &center, store.as_ref()).await,
        Command::Setup => setup(opts).await,
    }
}

/// `setup`: creates Hangfire's tables in the store (when absent), then checks them as the
/// agent does before a run.
async fn setup(opts: &Options) -> Result<u8, Fail> {
    let Some(text) = &opts.store else {
        return Err(Fail::usage("`setup` needs --store"));
    };
    let spec = StoreSpec::parse(text.expose(), opts.store_type, &opts.schema, opts.db)
        .map_err(Fail::usage)?;
    say(format!(
        "setup: store {} ({})",
        spec.label(),
        spec.describe_place()
    ));
    let tables = jobagent::__dev::install_tables(
        Some(opts.store_type),
        text.expose(),
        Some(&opts.schema),
        SETUP_WITHIN,
    )
    .await
    .map_err(Fail::usage)?;
    // The agent's own check, as before a run: the tables are there and this user may write.
    Reader::new(&spec).check().await.map_err(Fail::usage)?;
    say(format!(
        "Hangfire's tables are in place: {} (created where absent; the center's storage creates its other tables itself)",
        tables.join(", ")
    ));
    Ok(EXIT_OK)
}

/// Connects to the store and checks its tables and that `job_id` has no result yet.
async fn open_store<'a>(spec: &'a StoreSpec, job_id: Option<&str>) -> Result<Reader<'a>, Fail> {
    let reader = Reader::new(spec);
    reader.check().await.map_err(Fail::usage)?;
    if let Some(id) = job_id
        && reader.has_result(id).await.map_err(Fail::usage)?
    {
        return Err(Fail::usage(format!(
            "job id {id} already has a result in the store (hash _agent_result_{id}); pick another --job-id"
        )));
    }
    Ok(reader)
}

/// Prints the answer; for a refusal, also a hint, and returns the exit status to end with.
fn report_answer(answer: &Answer, opts: &Options) -> Option<u8> {
    say(answer.render());
    if answer.status == 200 {
        return None;
    }
    match answer.status {
        404 | 405 => note(format!(
            "nothing handles the agent requests at {}: is the path right? The SDK's default is \
             /jobagent (JOBAGENT_PATH)",
            opts.agent
        )),
        500 if answer.body.contains("unauthorized") && opts.auth.is_none() => note(
            "the agent requires basic auth: give --user and --password (or set \
             JOBAGENT_BASIC_USER and JOBAGENT_BASIC_PASSWORD)",
        ),
        500 | 501 => {}
        other => note(format!(
            "a center would count status {other} as a dispatch that succeeded, but it is not \
             what an agent answers; is --agent pointing at a job agent?"
        )),
    }
    Some(EXIT_FAILED)
}

/// A ctrl-c future, registered (polled once) so that no signal is missed from now on.
async fn armed_interrupt() -> Pin<Box<dyn Future<Output = ()>>> {
    let mut interrupt: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: never fire.
            std::future::pending::<()>().await;
        }
    });
    tokio::select! {
        biased;
        _ = &mut interrupt => {
            // A ctrl-c right away: hand back a future that fires at once.
            return Box::pin(async {});
        }
        _ = std::future::ready(()) => {}
    }
    interrupt
}

async fn run(
    opts: &Options,
    center: &Center,
    store: Option<&StoreSpec>,
    class: &str,
) -> Result<u8, Fail> {
    let job_id = opts.job_id.clone().unwrap_or_else(fresh_job_id);
    let mut reader = match store {
        Some(spec) => Some(open_store(spec, Some(&job_id)).await?),
        None => None,
    };
    let console = ConsoleInfo::for_job(&job_id);
    say(format!("run {class} as job {job_id} at {}", center.agent()));
    if let Some(spec) = store {
        say(format!(
            "store {} ({}), console {}",
            spec.label(),
            spec.describe_place(),
            console.set_key
        ));
    }
    let answer = center
        .dispatch(&Dispatch {
            action: "run",
            class,
            job_id: &job_id,
            param: &opts.param,
            timeout_ms: opts.timeout_ms.unwrap_or(0),
            console: &console,
        })
        .await
        .map_err(Fail::usage)?;
    if let Some(code) = report_answer(&answer, opts) {
        return Ok(code);
    }
    let Some(reader) = reader.as_mut() else {
        say("(no --store: the job's console lines and result go to the agent's log)");
        return Ok(EXIT_OK);
    };
    if !opts.follow {
        say(format!(
            "(not following: console lines are in set {}, the result will be in hash _agent_result_{job_id})",
            console.set_key
        ));
        return Ok(EXIT_OK);
    }
    follow_run(opts, center, reader, class, &job_id, &console).await
}

/// Tails the run's console and waits for its result; ctrl-c sends a `stop`.
async fn follow_run(
    opts: &Options,
    center: &Center,
    reader: &mut Reader<'_>,
    class: &str,
    job_id: &str,
    console: &ConsoleInfo,
) -> Result<u8, Fail> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let started = Instant::now();
    // The index of the next line in the dashboard's order: reads resume there, so a failed
    // read neither skips nor repeats a line.
    let mut next_line = 0usize;
    let mut seen_anything = false;
    let mut stopped_at: Option<Instant> = None;
    let mut interrupt = armed_interrupt().await;
    loop {
        // The result first: the agent flushes a run's lines before its result, so the lines
        // read after the result are complete.
        let result = reader.result(job_id).await.map_err(Fail::usage)?;
        if let Some(lines) = reader
            .lines_from(&console.set_key, &console.hash_key, next_line)
            .await
            .map_err(Fail::usage)?
        {
            for (raw, text) in lines {
                say(render_line(&raw, text.as_deref(), color));
                next_line += 1;
                seen_anything = true;
            }
        }
        if let Some(result) = result {
            say(result.render());
            return Ok(match (stopped_at, result.is_ok()) {
                (Some(_), _) => EXIT_INTERRUPTED,
                (None, true) => EXIT_OK,
                (None, false) => EXIT_FAILED,
            });
        }
        if !seen_anything && started.elapsed() > IDLE_HINT_AFTER {
            seen_anything = true;
            note(format!(
                "nothing in {} yet; if the agent has its own store (JOBAGENT_STORE), it ignores \
                 the one sent and writes there: point --store at that one. Ctrl-C stops the run.",
                console.set_key
            ));
        }
        if let Some(at) = stopped_at
            && at.elapsed() > AFTER_STOP_WAIT
        {
            note(format!(
                "run {job_id} reported no result within {} s of the stop; exiting",
                AFTER_STOP_WAIT.as_secs()
            ));
            return Ok(EXIT_INTERRUPTED);
        }
        tokio::select! {
            _ = &mut interrupt => {
                if stopped_at.is_some() {
                    say("^C again: exiting without waiting for the run's result");
                    return Ok(EXIT_INTERRUPTED);
                }
                stopped_at = Some(Instant::now());
                send_stop_for(opts, center, class, job_id).await;
                interrupt = armed_interrupt().await;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Ctrl-c while following: a `stop` dispatch for the class, as the center's stop button.
async fn send_stop_for(opts: &Options, center: &Center, class: &str, run_id: &str) {
    let stop_id = fresh_job_id();
    say(format!(
        "^C: sending stop for run {run_id} (stop job {stop_id}); ctrl-c again to exit at once"
    ));
    let console = ConsoleInfo::for_job(&stop_id);
    let dispatch = Dispatch {
        action: "stop",
        class,
        job_id: &stop_id,
        param: &opts.param,
        timeout_ms: 0,
        console: &console,
    };
    let request = center.dispatch(&dispatch);
    let mut again = armed_interrupt().await;
    tokio::select! {
        answer = request => match answer {
            Ok(answer) => say(answer.render()),
            Err(e) => note(format!("the stop was not delivered: {e}")),
        },
        _ = &mut again => note("the stop was not delivered: interrupted"),
    }
}

async fn stop(
    opts: &Options,
    center: &Center,
    store: Option<&StoreSpec>,
    class: &str,
) -> Result<u8, Fail> {
    let stop_id = opts.job_id.clone().unwrap_or_else(fresh_job_id);
    let mut reader = match store {
        Some(spec) => Some(open_store(spec, Some(&stop_id)).await?),
        None => None,
    };
    say(format!(
        "stop {class} (stop job {stop_id}) at {}",
        center.agent()
    ));
    let console = ConsoleInfo::for_job(&stop_id);
    let answer = center
        .dispatch(&Dispatch {
            action: "stop",
            class,
            job_id: &stop_id,
            param: "",
            timeout_ms: 0,
            console: &console,
        })
        .await
        .map_err(Fail::usage)?;
    if let Some(code) = report_answer(&answer, opts) {
        return Ok(code);
    }
    let Some(reader) = reader.as_mut() else {
        say("(no --store: the stop's result goes to the agent's log)");
        return Ok(EXIT_OK);
    };
    if !opts.follow {
        return Ok(EXIT_OK);
    }
    let mut interrupt = armed_interrupt().await;
    // The stop job's own console (what `on_stop` wrote, and the agent's lines), then its
    // result, as the stop job's page at the center shows them.
    let Some(result) = tail_until_result(reader, &stop_id, &console, &mut interrupt).await? else {
        return Ok(EXIT_INTERRUPTED);
    };
    say(result.render());
    if let Some(run_id) = &opts.run_id {
        let Some(run) = wait_result(reader, run_id, &mut interrupt).await? else {
            return Ok(EXIT_INTERRUPTED);
        };
        say(run.render());
    }
    Ok(if result.is_ok() { EXIT_OK } else { EXIT_FAILED })
}

/// Prints a job's console lines as they come until its result; `None` when interrupted.
async fn tail_until_result(
    reader: &mut Reader<'_>,
    job_id: &str,
    console: &ConsoleInfo,
    interrupt: &mut Pin<Box<dyn Future<Output = ()>>>,
) -> Result<Option<JobResult>, Fail> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut next_line = 0usize;
    loop {
        // The result first: lines read after it are complete (see `follow_run`).
        let result = reader.result(job_id).await.map_err(Fail::usage)?;
        if let Some(lines) = reader
            .lines_from(&console.set_key, &console.hash_key, next_line)
            .await
            .map_err(Fail::usage)?
        {
            for (raw, text) in lines {
                say(render_line(&raw, text.as_deref(), color));
                next_line += 1;
            }
        }
        if result.is_some() {
            return Ok(result);
        }
        tokio::select! {
            _ = &mut *interrupt => {
                say(format!("^C: stopped waiting for the result of job {job_id}"));
                return Ok(None);
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Waits for a result; `None` when interrupted.
async fn wait_result(
    reader: &mut Reader<'_>,
    job_id: &str,
    interrupt: &mut Pin<Box<dyn Future<Output = ()>>>,
) -> Result<Option<JobResult>, Fail> {
    loop {
        if let Some(result) = reader.result(job_id).await.map_err(Fail::usage)? {
            return Ok(Some(result));
        }
        tokio::select! {
            _ = &mut *interrupt => {
                say(format!("^C: stopped waiting for the result of job {job_id}"));
                return Ok(None);
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn detail(opts: &Options, center: &Center, class: &str) -> Result<u8, Fail> {
    let job_id = opts.job_id.clone().unwrap_or_else(fresh_job_id);
    let console = ConsoleInfo::for_job(&job_id);
    let answer = center
        .dispatch(&Dispatch {
            action: "detail",
            class,
            job_id: &job_id,
            param: "",
            timeout_ms: 0,
            console: &console,
        })
        .await
        .map_err(Fail::usage)?;
    Ok(report_answer(&answer, opts).unwrap_or(EXIT_OK))
}

async fn heartbeat(opts: &Options, center: &Center, store: Option<&StoreSpec>) -> Result<u8, Fail> {
    let mut reader = match store {
        Some(spec) => Some(open_store(spec, None).await?),
        None => None,
    };
    let agent_server = center.agent_host_port();
    say(format!(
        "heartbeat to {} as center server {} (agent server {agent_server})",
        center.agent(),
        center.server_id()
    ));
    let answer = center.heartbeat().await.map_err(Fail::usage)?;
    if let Some(code) = report_answer(&answer, opts) {
        return Ok(code);
    }
    let Some(reader) = reader.as_mut() else {
        say("(no --store: give one to see the agent's heartbeat row)");
        return Ok(EXIT_OK);
    };
    let key = format!("AgentHeart:{}", center.server_id());
    let deadline = Instant::now() + HEARTBEAT_WAIT;
    let mut interrupt = armed_interrupt().await;
    loop {
        if let Some(value) = reader
            .hash_field(&key, &agent_server)
            .await
            .map_err(Fail::usage)?
        {
            say(format!("{key} [{agent_server}]: {}", render_beat(&value)));
            return Ok(EXIT_OK);
        }
        if Instant::now() >= deadline {
            note(format!(
                "no row in hash {key} within {} s; if the agent has its own store \
                 (JOBAGENT_STORE), it writes there: point --store at that one",
                HEARTBEAT_WAIT.as_secs()
            ));
            return Ok(EXIT_FAILED);
        }
        tokio::select! {
            _ = &mut interrupt => return Ok(EXIT_INTERRUPTED),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// A heartbeat row in words.
fn render_beat(value: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(value) else {
        return value.chars().take(300).collect();
    };
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let text = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    format!(
        "pid {} ({}), cpu {:.1}%, working set {:.1} MiB, disk free {:.1} GiB, at {}",
        num("Id"),
        text("ProcessName"),
        num("CpuUsage"),
        mib(num("WorkingSet")),
        mib(num("DiskUsage")) / 1024.0,
        text("Timestamp")
    )
}
