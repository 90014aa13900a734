//! End to end through processes: the `jobagent-dev` CLI drives the example service (its own
//! process, on a free port) exactly as a center would, with a real PostgreSQL store, and
//! shows the job's console lines and result.
//!
//! The two binaries belong to other packages, so `env!("CARGO_BIN_EXE_...")` cannot name
//! them; the test builds them once, with the relay ([`tests::cargo::service_bin`]: a no-op
//! when they are fresh), into the target directory this test runs from.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::pg::TestDb;
use tests::stores::AnyStore;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

const TEST_JOB: &str = "example_agent::jobs::TestJob";
const HANG_JOB: &str = "example_agent::jobs::TestHangJob";
/// How long one CLI invocation may take before the test fails.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// The variables that would change what the service or the CLI does.
const SCRUBBED: &[&str] = &[
    "JOBAGENT_STORE",
    "JOBAGENT_STORE_SCHEMA",
    "JOBAGENT_BASIC_USER",
    "JOBAGENT_BASIC_PASSWORD",
    "JOBAGENT_PATH",
    "JOBAGENT_AUTO_REGISTER",
    "JOBAGENT_CONSOLE_PREFIX",
    "JOBAGENT_DEV_AGENT",
    "JOBAGENT_DEV_STORE",
];

/// The two binaries, built once per test process into `target/<profile>/` beside this
/// test's executable ([`tests::cargo::service_bin`] caches the build).
struct Bins {
    example_agent: PathBuf,
    jobagent_dev: PathBuf,
}

async fn built() -> Bins {
    let bins = tokio::task::spawn_blocking(|| -> Result<Bins, String> {
        Ok(Bins {
            example_agent: tests::cargo::service_bin("example-agent")?,
            jobagent_dev: tests::cargo::service_bin("jobagent-dev")?,
        })
    })
    .await
    .unwrap_or_else(|e| panic!("building the binaries panicked: {e}"));
    bins.unwrap_or_else(|e| panic!("{e}"))
}

/// The example service as a process; killed when dropped (also when a test fails), printing
/// its log if the test is failing.
struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Service {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// The service with these variables set besides its listen address.
    async fn start_with(env: &[(&str, &str)]) -> Self {
        let bins = built().await;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let log = std::env::temp_dir().join(format!(
            "jobagent-dev-cli-{}-{port}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file: {e}"));
        let mut command = Command::new(&bins.example_agent);
        for var in SCRUBBED {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let child = command
            .env("JOBAGENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins.example_agent.display()));
        let mut service = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "the example service exited ({status}) before listening:\n{}",
                    service.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the example service did not listen on {port} within 30 s:\n{}",
                    service.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn agent_url(&self) -> String {
        format!("http://127.0.0.1:{}/jobagent", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("--- example service log ---\n{}", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What one CLI run printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn cli_command(args: &[&str]) -> Command {
    let bins = built().await;
    let mut command = Command::new(&bins.jobagent_dev);
    for var in SCRUBBED {
        command.env_remove(var);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the CLI to its end (at most [`CLI_LIMIT`]).
async fn cli(args: &[&str]) -> Run {
    let child = cli_command(args)
        .await
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start jobagent-dev: {e}"));
    let out = match tokio::time::timeout(CLI_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("jobagent-dev {args:?}: {e}"),
        Err(_) => panic!("jobagent-dev {args:?} did not end within {CLI_LIMIT:?}"),
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The index of the first stdout line containing `needle`, or a panic showing the output.
fn line_index(run: &Run, needle: &str) -> usize {
    run.stdout
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in the output: {run:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_tails_lines_progress_and_result_in_order() {
    tails(AnyStore::postgresql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_tails_a_mysql_console_in_dashboard_order() {
    tails(AnyStore::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_tails_a_redis_console_in_dashboard_order() {
    tails(AnyStore::redis().await).await;
}

/// `jobagent-dev run` against a store of each type (named as a center holds it, with
/// `--store-type` and `--schema`), read back in the dashboard's order.
async fn tails(db: AnyStore) {
    let service = Service::start().await;
    let (store, _, prefix) = db.local();
    let run = cli(&[
        "run",
        TEST_JOB,
        "--param",
        r#"{"lines":3,"progress":true,"sleep_ms":300}"#,
        "--store",
        &store,
        "--store-type",
        db.kind(),
        "--schema",
        &prefix,
        "--agent",
        &service.agent_url(),
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("run success!"), "{run:#?}");

    // The lines in order, each as `+<t>s <text>`.
    let l1 = line_index(&run, "line 1");
    let l2 = line_index(&run, "line 2");
    let l3 = line_index(&run, "line 3");
    assert!(l1 < l2 && l2 < l3, "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    for i in [l1, l2, l3] {
        assert!(
            lines[i].starts_with('+') && lines[i].contains("s "),
            "{}",
            lines[i]
        );
    }
    // The progress bar, reaching 100%.
    let full = line_index(&run, "100%");
    assert!(lines[full].contains("[bar 1 progress]"), "{}", lines[full]);
    let first_bar = line_index(&run, "[bar 1 progress]");
    assert!(first_bar < full, "{run:#?}");
    // The result last, R=ok.
    let result = line_index(&run, "result R=ok");
    assert!(result > l3 && result > full, "{run:#?}");
    assert_eq!(result, lines.len() - 1, "{run:#?}");

    // Every stored line was printed, in the store's order (`ORDER BY id`, by rank on Redis).
    let set_key = run
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("console:"))
        .unwrap_or_else(|| panic!("no console key printed: {run:#?}"))
        .to_owned();
    let stored = db.set_rows(&set_key).await;
    let printed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with('+'))
        .collect();
    assert_eq!(printed.len(), stored.len(), "{run:#?}\n{stored:?}");
    let lines = db
        .console_lines(&set_key, &set_key.replacen("console:", "console:refs:", 1))
        .await;
    for (shown, line) in printed.iter().zip(&lines) {
        let text = line["s"].as_str().unwrap_or_default();
        assert!(
            shown.contains(text) || line.get("p").is_some(),
            "printed {shown:?} where the dashboard shows {line}"
        );
    }
    // The connection string is a secret: never printed.
    assert!(!run.stdout.contains(&store) && !run.stderr.contains(&store));
}

#[tokio::test]
async fn failing_run_exits_1_and_shows_the_error() {
    let db = TestDb::new().await;
    let service = Service::start().await;
    let run = cli(&[
        "run",
        TEST_JOB,
        "--param",
        r#"{"lines":1,"fail":true}"#,
        "--store",
        &db.url(),
        "--agent",
        &service.agent_url(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let result = line_index(&run, "result R=err");
    assert!(
        run.stdout
            .lines()
            .nth(result)
            .is_some_and(|l| l.contains("failed on request (fail=true)")),
        "{run:#?}"
    );
    // The job's line and the runtime's error line are in the console, before the result.
    assert!(line_index(&run, "line 1") < result, "{run:#?}");
    assert!(
        line_index(&run, "job failed: failed on request") < result,
        "{run:#?}"
    );
}

#[tokio::test]
async fn unknown_class_exits_1_with_the_agents_err() {
    let db = TestDb::new().await;
    let service = Service::start().await;
    let run = cli(&[
        "run",
        "example_agent::jobs::NoSuchJob",
        "--store",
        &db.connection_string(),
        "--agent",
        &service.agent_url(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let answer = line_index(&run, "agent: 500");
    let line = run.stdout.lines().nth(answer).unwrap_or_default();
    assert!(
        line.contains("err:") && line.contains("unknown job class"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("result R="), "{run:#?}");
}

#[cfg(unix)]
#[tokio::test]
async fn ctrl_c_while_following_stops_the_run() {
    let db = TestDb::new().await;
    let service = Service::start().await;
    let store = db.connection_string();
    let agent = service.agent_url();
    let mut child = cli_command(&["run", HANG_JOB, "--store", &store, "--agent", &agent])
        .await
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start jobagent-dev: {e}"));
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no piped stdout"));
    let mut stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| panic!("no piped stderr"));
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.contains("consumer started");
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        started,
        Ok(true),
        "the hang job's line never came: {seen:#?}"
    );

    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(kill.success());

    let rest = tokio::time::timeout(CLI_LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        (child.wait().await, err)
    })
    .await;
    let Ok((status, err)) = rest else {
        panic!("jobagent-dev did not end after ctrl-c: {seen:#?}");
    };
    let code = status.ok().and_then(|s| s.code());
    let out = seen.join("\n");
    assert_eq!(code, Some(130), "{out}\n{err}");
    assert!(out.contains("^C: sending stop for run"), "{out}\n{err}");
    assert!(out.contains("stop success!"), "{out}\n{err}");
    // The hang job ends on the stop and reports R=ok (stopped on request).
    let last = seen.last().map(String::as_str).unwrap_or_default();
    assert!(last.starts_with("result R=ok"), "{out}\n{err}");
    assert!(out.contains("job stopped on request"), "{out}\n{err}");
}

#[tokio::test]
async fn detail_and_heartbeat() {
    let db = TestDb::new().await;
    let service = Service::start().await;
    let agent = service.agent_url();
    let run = cli(&["detail", TEST_JOB, "--agent", &agent]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains("agent: 200 OK") && run.stdout.contains("Status:"),
        "{run:#?}"
    );

    let run = cli(&[
        "heartbeat",
        "--store",
        &db.connection_string(),
        "--agent",
        &agent,
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let row = line_index(&run, "AgentHeart:");
    let row = run.stdout.lines().nth(row).unwrap_or_default();
    assert!(row.contains("pid ") && row.contains("cpu "), "{run:#?}");
}

#[tokio::test]
async fn bad_usage_and_unreachable_places_exit_2_without_secrets() {
    let run = cli(&[]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("no command"), "{run:#?}");

    let run = cli(&["run", TEST_JOB, "--timeout-ms", "soon"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("--timeout-ms"), "{run:#?}");

    let run = cli(&[
        "run",
        TEST_JOB,
        "--store",
        "Host=127.0.0.1;Username=u;Password=hunter2;Port=notaport",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("Port"), "{run:#?}");
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));

    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let agent = format!("http://127.0.0.1:{port}/jobagent");
    let run = cli(&["detail", TEST_JOB, "--agent", &agent]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("cannot connect"), "{run:#?}");

    let run = cli(&[
        "run",
        TEST_JOB,
        "--agent",
        &agent,
        "--store",
        &format!("postgres://u:hunter2@127.0.0.1:{port}/db"),
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("cannot connect to the store"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));

    // A store whose database does not exist: the server's own message, not "db error"
    // (issue 13).
    let db = TestDb::new().await;
    let missing = db
        .connection_string()
        .replace(";Database=", ";Database=no_such_db_");
    let run = cli(&["run", TEST_JOB, "--agent", &agent, "--store", &missing]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("cannot connect to the store") && run.stderr.contains("does not exist"),
        "{run:#?}"
    );

    let run = cli(&["--help"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("jobagent-dev run <class>"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_prints_the_stop_jobs_own_console() {
    let db = TestDb::new().await;
    let service = Service::start().await;
    let store = db.connection_string();
    let agent = service.agent_url();
    let run_id = format!("77{}", std::process::id());
    let run = cli(&[
        "run",
        HANG_JOB,
        "--store",
        &store,
        "--agent",
        &agent,
        "--job-id",
        &run_id,
        "--no-follow",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    // The hang job runs once its first line is in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    // "(not following: console lines are in set console:..., the result will be in ...)"
    let set_key = run
        .stdout
        .split("lines are in set ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no console key in the output: {run:#?}"))
        .to_owned();
    while db.set_rows(&set_key).await.is_empty() {
        assert!(Instant::now() < deadline, "the hang job never wrote a line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = cli(&[
        "stop", HANG_JOB, "--store", &store, "--agent", &agent, "--run-id", &run_id,
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    // The stop job's own console, as its page at the center shows it, before its result;
    // then the stopped run's result.
    let stop_line = line_index(&run, "stop done");
    let results: Vec<usize> = run
        .stdout
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("result R=ok"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(results.len(), 2, "{run:#?}");
    assert!(stop_line < results[0], "{run:#?}");
}

/// A database created on the local server under a random name, with no table at all (a
/// laptop's `createdb test`); dropped when the value is (also when the test fails).
struct FreshDb {
    kind: &'static str,
    name: String,
    /// The connection string the README's store command takes (`JOBAGENT_STORE`).
    store: String,
}

/// The local PostgreSQL's admin URL (the test suite's).
fn pg_admin_url() -> String {
    std::env::var("JOBAGENT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The local MySQL/MariaDB's URL, without a database.
fn mysql_base_url() -> String {
    std::env::var("JOBAGENT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

async fn pg_admin(db: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = pg_admin_url()
        .parse()
        .unwrap_or_else(|e| panic!("JOBAGENT_TEST_DATABASE_URL: {e}"));
    config.dbname(db).connect_timeout(Duration::from_secs(10));
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(15),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("no PostgreSQL answer within 15 s"))
    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at 127.0.0.1:5432: {e}"));
    tokio::spawn(connection);
    client
}

async fn mysql_admin(db: Option<&str>) -> mysql_async::Conn {
    let url = match db {
        Some(db) => format!("{}/{db}", mysql_base_url()),
        None => mysql_base_url(),
    };
    let opts = mysql_async::Opts::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    tokio::time::timeout(Duration::from_secs(15), mysql_async::Conn::new(opts))
        .await
        .unwrap_or_else(|_| panic!("no MySQL answer within 15 s"))
        .unwrap_or_else(|e| panic!("cannot reach MySQL at {url}: {e}"))
}

impl FreshDb {
    async fn new(kind: &'static str) -> Self {
        let name = format!("jobagent_setup_{:016x}", rand::random::<u64>());
        let store = match kind {
            "postgresql" => {
                pg_admin("postgres")
                    .await
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
                let config: tokio_postgres::Config = pg_admin_url()
                    .parse()
                    .unwrap_or_else(|e| panic!("JOBAGENT_TEST_DATABASE_URL: {e}"));
                let host = match config.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                    _ => "127.0.0.1".to_owned(),
                };
                let port = config.get_ports().first().copied().unwrap_or(5432);
                let user = config.get_user().unwrap_or("postgres");
                // The README's form: an Npgsql string.
                format!("Host={host};Port={port};Database={name};Username={user}")
            }
            _ => {
                use mysql_async::prelude::Queryable as _;
                let mut conn = mysql_admin(None).await;
                conn.query_drop(format!("CREATE DATABASE `{name}`"))
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
                let _ = conn.disconnect().await;
                format!("{}/{name}", mysql_base_url())
            }
        };
        Self { kind, name, store }
    }

    async fn drop_db(kind: &str, name: &str) {
        match kind {
            "postgresql" => {
                let _ = pg_admin("postgres")
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
            _ => {
                use mysql_async::prelude::Queryable as _;
                let mut conn = mysql_admin(None).await;
                let _ = conn
                    .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await;
                let _ = conn.disconnect().await;
            }
        }
    }

    /// How many rows the console set and the result hash of `job_id` hold, read from the
    /// tables `setup` created.
    async fn rows(&self, job_id: &str) -> (i64, i64) {
        let result_key = format!("_agent_result_{job_id}");
        match self.kind {
            "postgresql" => {
                let client = pg_admin(&self.name).await;
                let count = |sql: &'static str, key: String| {
                    let client = &client;
                    async move {
                        client
                            .query_one(sql, &[&key])
                            .await
                            .and_then(|r| r.try_get::<_, i64>(0))
                            .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    }
                };
                (
                    count(
                        "SELECT count(*) FROM hangfire.\"set\" WHERE key LIKE $1",
                        "console:%".to_owned(),
                    )
                    .await,
                    count(
                        "SELECT count(*) FROM hangfire.hash WHERE key = $1",
                        result_key,
                    )
                    .await,
                )
            }
            _ => {
                use mysql_async::prelude::Queryable as _;
                let mut conn = mysql_admin(Some(&self.name)).await;
                let lines: Option<i64> = conn
                    .exec_first(
                        "SELECT count(*) FROM `HangfireSet` WHERE `Key` LIKE ?",
                        ("console:%",),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("HangfireSet: {e}"));
                let result: Option<i64> = conn
                    .exec_first(
                        "SELECT count(*) FROM `HangfireHash` WHERE `Key` = ?",
                        (result_key,),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("HangfireHash: {e}"));
                let _ = conn.disconnect().await;
                (lines.unwrap_or(0), result.unwrap_or(0))
            }
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (kind, name) = (self.kind, self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(FreshDb::drop_db(kind, &name));
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_makes_a_fresh_postgresql_database_a_store() {
    laptop_store_in_one_command(FreshDb::new("postgresql").await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_makes_a_fresh_mariadb_database_a_store() {
    laptop_store_in_one_command(FreshDb::new("mysql").await).await;
}

/// The README's store command on a fresh database: the service says at start-up that the
/// tables are missing and names the setup command; `jobagent-dev setup` creates them (twice
/// is fine); then the service accepts a run and its console and result rows land.
///
/// The tables are those of Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`
/// (and its later versions' columns) and Hangfire.MySqlStorage's `Hangfire.MySql/Install.sql`.
async fn laptop_store_in_one_command(db: FreshDb) {
    let service = Service::start_with(&[("JOBAGENT_STORE", db.store.as_str())]).await;
    let agent = service.agent_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !service.log_text().contains("jobagent-dev setup") {
        assert!(
            Instant::now() < deadline,
            "no start-up warning naming the setup command:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = service.log_text();
    let ready = log.find("job agent ready").unwrap_or(usize::MAX);
    let warning = log.find("jobagent-dev setup").unwrap_or(0);
    assert!(ready < warning, "the warning comes after `ready`:\n{log}");

    // Before setup, a run is refused, and the CLI says how to fix it.
    let run = cli(&["run", TEST_JOB, "--store", &db.store, "--agent", &agent]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("jobagent-dev setup"), "{run:#?}");

    for _ in 0..2 {
        let run = cli(&["setup", "--store", &db.store]).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(run.stdout.contains("tables are in place"), "{run:#?}");
    }

    let job_id = format!("88{}", std::process::id());
    let run = cli(&[
        "run",
        TEST_JOB,
        "--param",
        r#"{"lines":3}"#,
        "--store",
        &db.store,
        "--agent",
        &agent,
        "--job-id",
        &job_id,
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("result R=ok"), "{run:#?}");
    let (lines, result) = db.rows(&job_id).await;
    assert!(lines >= 3, "console rows: {lines}");
    assert!(result >= 1, "result rows: {result}");

    // Redis needs no tables: refused with the reason.
    let run = cli(&["setup", "--store", "redis://127.0.0.1:6379"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("needs no tables"), "{run:#?}");
}
