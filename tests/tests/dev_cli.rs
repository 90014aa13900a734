//! End to end through processes: the `jobagent-dev` CLI drives the example service (its own
//! process, on a free port) exactly as a center would, with a real PostgreSQL store, and
//! shows the job's console lines and result.
//!
//! The two binaries belong to other packages, so `env!("CARGO_BIN_EXE_...")` cannot name
//! them; the test builds them once (`cargo build -p example-agent -p jobagent-dev --bins`, a
//! no-op when they are fresh) into the target directory this test runs from.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
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

struct Bins {
    example_agent: PathBuf,
    jobagent_dev: PathBuf,
}

/// Builds (once per test process) and locates both binaries next to this test's executable,
/// in `target/<profile>/`.
fn bins() -> &'static Result<Bins, String> {
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| {
        let target = tests::cargo::target();
        let profile_dir = target.profile_dir;
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let workspace = tests::cargo::workspace();
        let cargo = tests::cargo::cargo();
        let out = std::process::Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build",
                "-p",
                "example-agent",
                "-p",
                "jobagent-dev",
                "--bins",
            ])
            .args(["--profile", &profile])
            .arg("--target-dir")
            .arg(&target.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build of the binaries failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let find = |name: &str| {
            let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{} was not built", path.display()))
            }
        };
        Ok(Bins {
            example_agent: find("example-agent")?,
            jobagent_dev: find("jobagent-dev")?,
        })
    })
}

async fn built() -> &'static Bins {
    let bins = tokio::task::spawn_blocking(bins)
        .await
        .unwrap_or_else(|e| panic!("building the binaries panicked: {e}"));
    match bins {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
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

fn cli_command(args: &[&str]) -> Command {
    let bins = bins().as_ref().unwrap_or_else(|e| panic!("{e}"));
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
    built().await;
    let child = cli_command(args)
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
    built().await;
    let store = db.connection_string();
    let agent = service.agent_url();
    let mut child = cli_command(&["run", HANG_JOB, "--store", &store, "--agent", &agent])
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
    built().await;
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
