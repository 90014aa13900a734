//! Example-service processes sharing one store: replicas behind one URL, for cluster tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::center::Center;

/// The example service as a separate process.
pub struct Replica {
    name: String,
    port: u16,
    child: Option<Child>,
    /// Where its standard output (its log) goes, when kept.
    log: Option<PathBuf>,
}

/// The example service's binary, built once per test process into this test's target
/// directory (with the other service binaries: [`crate::cargo::service_bin`]).
pub fn example_binary() -> PathBuf {
    crate::cargo::service_bin("example-agent").unwrap_or_else(|e| panic!("{e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Replica {
    /// Starts a replica named `name` with extra environment; waits until it answers.
    pub async fn start(name: &str, env: &[(&str, String)]) -> Self {
        Self::start_inner(name, env, false).await
    }

    /// Like [`start`](Self::start), keeping the process's log (its standard output) in a
    /// temporary file, read with [`log_text`](Self::log_text).
    pub async fn start_logged(name: &str, env: &[(&str, String)]) -> Self {
        Self::start_inner(name, env, true).await
    }

    /// What the process logged so far (empty unless started with
    /// [`start_logged`](Self::start_logged)).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    async fn start_inner(name: &str, env: &[(&str, String)], logged: bool) -> Self {
        let port = free_port();
        let mut cmd = Command::new(example_binary());
        cmd.env("JOBAGENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("JOBAGENT_INSTANCE", name)
            .env(
                "RUST_LOG",
                std::env::var("REPLICA_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null());
        let log = logged.then(|| {
            std::env::temp_dir().join(format!("replica-{name}-{port}-{}.log", std::process::id()))
        });
        match &log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
                cmd.stdout(file);
            }
            None => {
                cmd.stdout(Stdio::null());
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example-agent: {e}"));
        let replica = Self {
            name: name.to_owned(),
            port,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = format!("http://127.0.0.1:{port}/health");
        loop {
            if let Ok(r) = reqwest::get(&health).await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "replica {name} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts run `job_id` of the transient job `class` here, lasting two minutes, and waits
    /// until `other` lists it in its `detail` (the cluster's runs have reached it).
    pub async fn run_long_seen_by(&self, other: &Replica, class: &str, job_id: &str) {
        self.center()
            .run(class, job_id)
            .param(serde_json::json!({"sleep_ms": 120000}))
            .send()
            .await
            .assert_status(200);
        let listed = format!("JobId: {job_id}");
        other
            .center()
            .wait_detail(class, Duration::from_secs(5), |r| r.body.contains(&listed))
            .await;
    }

    /// A center stand-in talking to this replica's agent.
    pub fn center(&self) -> Center {
        Center::new(format!("http://127.0.0.1:{}/jobagent", self.port))
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and returns at once (the process drains, then shuts down).
    pub fn signal_term(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `within` for the process to exit; its exit status, or `None` when it still
    /// runs (it is left running) or was already reaped.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL (no shutdown at all).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = self.log.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
