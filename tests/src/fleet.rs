//! Example-service processes for the soak: replicas that share one store, each reaching it
//! through its own [`Proxy`] (so one replica's store can be black-holed), that can be
//! SIGKILLed and started again under the same instance name and port, with their logs kept
//! in files for the soak's report.
//!
//! The example binary is built and found as the tests' is ([`crate::cargo::service_bin`]),
//! here beside a program run from `target/<profile>/` (`cargo run --bin soak`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::pg::TestDb;
use crate::proxy::Proxy;

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `db`'s connection string with its host and port replaced by the proxy on `port`.
pub fn via_proxy(db: &TestDb, port: u16) -> String {
    let conn = db.connection_string();
    let mut rest: Vec<&str> = Vec::new();
    for kv in conn.split(';') {
        let key = kv.split('=').next().unwrap_or("").trim();
        if !key.eq_ignore_ascii_case("Host") && !key.eq_ignore_ascii_case("Port") {
            rest.push(kv);
        }
    }
    format!("Host=127.0.0.1;Port={port};{}", rest.join(";"))
}

/// `(host, port)` of `db`'s server, as a [`Proxy`] takes them.
pub fn server_of(db: &TestDb) -> (String, u16) {
    let conn = db.connection_string();
    let get = |key: &str| {
        conn.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.to_owned())
        })
    };
    let host = get("Host").unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = get("Port").and_then(|p| p.parse().ok()).unwrap_or(5432);
    (host, port)
}

/// One replica: its process (while it runs), its proxy to the store, its port and log files.
pub struct Member {
    name: String,
    bin: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    proxy: Proxy,
    log_dir: PathBuf,
    logs: Vec<PathBuf>,
}

impl Member {
    /// Starts the example service as instance `name`, its store `JOBAGENT_STORE` reached
    /// through a new proxy to `db`'s server, plus `env`; waits until it answers.
    pub async fn start(
        bin: &Path,
        name: &str,
        db: &TestDb,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Self, String> {
        let (host, port) = server_of(db);
        let proxy = Proxy::start(&host, port).await;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.push(("JOBAGENT_STORE".to_owned(), via_proxy(db, proxy.port())));
        let mut member = Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            port: free_port()?,
            env,
            child: None,
            proxy,
            log_dir: log_dir.to_owned(),
            logs: Vec::new(),
        };
        member.spawn().await?;
        Ok(member)
    }

    /// Starts the process again (same name, environment and, when it is free, port); waits
    /// until it answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), String> {
        for attempt in 0..3 {
            if attempt > 0 {
                // The port was taken meanwhile: the center would be reconfigured.
                self.port = free_port()?;
            }
            let log = self
                .log_dir
                .join(format!("{}.{}.log", self.name, self.logs.len() + 1));
            let file = std::fs::File::create(&log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            let mut cmd = Command::new(&self.bin);
            cmd.env("JOBAGENT_LISTEN", format!("127.0.0.1:{}", self.port))
                .env("JOBAGENT_INSTANCE", &self.name)
                .env(
                    "RUST_LOG",
                    std::env::var("REPLICA_LOG").unwrap_or_else(|_| "info".to_owned()),
                )
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(Stdio::null());
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            self.logs.push(log);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let health = format!("http://127.0.0.1:{}/health", self.port);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if let Ok(r) = reqwest::get(&health).await
                    && r.status().is_success()
                {
                    break true;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("replica {} did not start within 20 s", self.name));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if up {
                self.child = Some(child);
                return Ok(());
            }
        }
        Err(format!("replica {} exited at start three times", self.name))
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent URL of this replica.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jobagent", self.port)
    }

    /// The proxy between this replica and the store.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// SIGKILLs the process (no shutdown at all); returns when it was sent.
    pub fn kill(&mut self) -> SystemTime {
        let at = SystemTime::now();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        at
    }

    /// Stops the process with SIGTERM, waiting for it at most `within`; SIGKILL after that.
    /// Returns how long it took.
    pub fn terminate(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            while started.elapsed() < within {
                if let Ok(Some(_)) = child.try_wait() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        started.elapsed()
    }

    /// The log files of every process of this replica so far, oldest first.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// Everything every process of this replica logged, oldest first.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for path in &self.logs {
            if let Ok(bytes) = std::fs::read(path) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        text
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
