//! The first hour of a Rust user (issue 13), end to end: a crate outside the workspace,
//! depending on `jobagent` by path and written from the docs alone (`tests/outside-crate/`),
//! builds, logs its start-up line, and runs a job that uses injected state, driven by the
//! installed `jobagent-dev` configured by the same variables as the service. Its second week
//! (issue 28): the same crate unit-tests its job with `jobagent::testing`, with no database.
//!
//! The crate builds into this test's target directory (so unchanged dependencies are not
//! built twice) and the CLI is installed with `cargo install --debug --path jobagent-dev`, as
//! the docs say, into `<target>/outside-crate/cli`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::cargo;
use tests::pg::TestDb;
use tokio::process::Command;

/// How long building the crate or installing the CLI may take (a cold build on two cores).
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Runs `cmd` to completion within `limit`; panics with its output when it fails.
async fn run_ok(what: &str, cmd: &mut Command, limit: Duration) -> String {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Copies the crate to `<target>/outside-crate/greeter` with the path of `jobagent` filled
/// in and the workspace's lock file (the versions the workspace is tested with). The tests of
/// this file write it one at a time.
fn write_crate(root: &Path) -> PathBuf {
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let workspace = cargo::workspace();
    let dir = root.join("greeter");
    std::fs::create_dir_all(dir.join("src")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let template = workspace.join("tests/outside-crate");
    let read = |name: &str| {
        std::fs::read_to_string(template.join(name))
            .unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    };
    let sdk = workspace.join("agent-sdk");
    let manifest = read("Cargo.toml.in").replace("@AGENT_SDK@", &sdk.display().to_string());
    let write = |path: PathBuf, text: &str| {
        // Unchanged files keep their times, so a rebuild is a no-op.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
    };
    write(dir.join("Cargo.toml"), &manifest);
    write(dir.join("src/main.rs"), &read("main.rs"));
    if !dir.join("Cargo.lock").exists() {
        std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock"))
            .unwrap_or_else(|e| panic!("cannot copy Cargo.lock: {e}"));
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crate_written_from_the_docs_runs_a_job_with_state_driven_by_the_installed_cli() {
    let db = TestDb::new().await;
    let target = cargo::target();
    let root = target.dir.join("outside-crate");
    let dir = write_crate(&root);

    run_ok(
        "cargo build of the outside crate",
        Command::new(cargo::cargo())
            .current_dir(&dir)
            .arg("build")
            .arg("--target-dir")
            .arg(&target.dir),
        BUILD_LIMIT,
    )
    .await;
    let cli_root = root.join("cli");
    run_ok(
        "cargo install of jobagent-dev",
        Command::new(cargo::cargo())
            .args(["install", "--debug", "--locked", "--force"])
            .arg("--path")
            .arg(cargo::workspace().join("jobagent-dev"))
            .arg("--root")
            .arg(&cli_root)
            .arg("--target-dir")
            .arg(&target.dir),
        BUILD_LIMIT,
    )
    .await;

    // The service and the CLI read the same variables.
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("JOBAGENT_LISTEN", listen.clone()),
        ("JOBAGENT_STORE", db.connection_string()),
        ("JOBAGENT_STORE_SCHEMA", tests::pg::SCHEMA.to_owned()),
    ];
    let log = root.join("greeter.log");
    let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
    let log_err = log_file
        .try_clone()
        .unwrap_or_else(|e| panic!("log file: {e}"));
    let mut service = Command::new(target.dir.join("debug/greeter"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("GREETING", "Bonjour")
        .env("RUST_LOG", "info")
        .env_remove("JOBAGENT_LOG_ONLY")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the outside crate: {e}"));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the service did not listen within 30 s:\n{}",
            read_log()
        );
        if let Ok(Some(status)) = service.try_wait() {
            panic!("the service exited ({status}):\n{}", read_log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = read_log();
    assert!(
        started.contains("job agent ready") && started.contains("greeter::GreetJob"),
        "no start-up line naming the job:\n{started}"
    );
    assert!(
        started.contains("Greeting"),
        "the state is listed:\n{started}"
    );

    let cli = cli_root.join("bin/jobagent-dev");
    let output = run_ok(
        "jobagent-dev run",
        Command::new(&cli)
            .args(["run", "greeter::GreetJob", "--param", r#"{"Name":"Ada"}"#])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("JOBAGENT_DEV_AGENT")
            .env_remove("JOBAGENT_DEV_STORE"),
        Duration::from_secs(60),
    )
    .await;
    assert!(output.contains("Bonjour, Ada!"), "{output}");
    assert!(output.contains("result R=ok"), "{output}");
    let _ = service.kill().await;
}

/// Issue 28: a user unit-tests a job in-process, in a plain `#[tokio::test]`, with
/// `jobagent::testing`: no center, no store, and here no database reachable at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_crate_outside_the_workspace_unit_tests_its_job_without_a_database() {
    let target = cargo::target();
    let dir = write_crate(&target.dir.join("outside-crate"));
    let mut test = Command::new(cargo::cargo());
    test.current_dir(&dir)
        .arg("test")
        .arg("--target-dir")
        .arg(&target.dir);
    // Nothing points at a database: the test runs need none.
    for var in [
        "JOBAGENT_STORE",
        "JOBAGENT_TEST_DATABASE_URL",
        "JOBAGENT_DEV_STORE",
        "DATABASE_URL",
    ] {
        test.env_remove(var);
    }
    let output = run_ok("cargo test of the outside crate", &mut test, BUILD_LIMIT).await;
    for name in [
        "greets_by_name_with_the_configured_word",
        "greets_the_world_without_a_name",
        "a_name_that_is_not_text_fails_the_run",
    ] {
        assert!(
            output.contains(&format!("test tests::{name} ... ok")),
            "{name} did not pass:\n{output}"
        );
    }
    assert!(output.contains("test result: ok. 3 passed"), "{output}");
}
