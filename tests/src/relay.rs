//! `jobagent-relay` processes in front of a test store, and a round-robin TCP balancer to put
//! several behind one address.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::stores::AnyStore;

/// The token the test relays accept: service `test`'s (a token is `<service>:<secret>`).
pub const TOKEN: &str = "test:test-relay-token-1";

/// The relay's binary, built once per test process into this test's target directory (with
/// the other service binaries: [`crate::cargo::service_bin`]).
pub fn relay_binary() -> PathBuf {
    crate::cargo::service_bin("jobagent-relay").unwrap_or_else(|e| panic!("{e}"))
}

/// One relay process.
pub struct Relay {
    child: Option<Child>,
    port: u16,
    env: Vec<(&'static str, String)>,
    /// What it wrote to its standard output after its first line (its log).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Relay {
    /// Starts a relay in front of `store`, accepting [`TOKEN`] (and service `other`'s); waits
    /// until it listens. `extra` adds or overrides settings. The test stores have no Hangfire
    /// job tables, so these relays take results without looking the job up
    /// (`JOBAGENT_RELAY_CHECK_JOBS=false`); [`Relay::start_checked`] starts one that checks.
    pub fn start(store: &AnyStore, extra: &[(&'static str, String)]) -> Self {
        let mut all = vec![("JOBAGENT_RELAY_CHECK_JOBS", "false".to_owned())];
        all.extend(extra.iter().cloned());
        Self::start_checked(store, &all)
    }

    /// As [`Relay::start`], with the relay's default check of results: a result is taken only
    /// for a job Processing in the center's storage (see [`processing_job`]).
    pub fn start_checked(store: &AnyStore, extra: &[(&'static str, String)]) -> Self {
        let (connection, kind, prefix) = store.direct();
        let mut env = vec![
            ("JOBAGENT_RELAY_STORE", connection),
            ("JOBAGENT_RELAY_STORE_TYPE", kind.name().to_owned()),
            ("JOBAGENT_RELAY_STORE_SCHEMA", prefix),
            (
                "JOBAGENT_RELAY_TOKENS",
                format!("{TOKEN},other:other-token"),
            ),
        ];
        env.extend(extra.iter().cloned());
        Self::spawn(env, 0)
    }

    fn spawn(env: Vec<(&'static str, String)>, port: u16) -> Self {
        let mut cmd = Command::new(relay_binary());
        cmd.env("JOBAGENT_RELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RELAY_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start jobagent-relay: {e}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("jobagent-relay has no stdout"));
        // The first line names the address (port 0 is chosen by the system).
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for line in lines.map_while(Result::ok) {
                if let Ok(mut log) = kept.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("jobagent-relay did not say where it listens"));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line of jobagent-relay: {line}"));
        Self {
            child: Some(child),
            port,
            env,
            log,
        }
    }

    /// What it logged so far (its standard output after the first line), without colours.
    pub fn log_text(&self) -> String {
        let text = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        // Strip ANSI colour sequences (`ESC [ ... m`).
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `relay+http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("relay+http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>/v1/<op>`.
    pub fn endpoint(&self, op: &str) -> String {
        format!("http://127.0.0.1:{}/v1/{op}", self.port)
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger a moment after the kill.
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {} stayed busy after the relay was killed",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        *self = Self::spawn(self.env.clone(), self.port);
    }

    /// The agent's environment for this relay (`JOBAGENT_STORE`, `JOBAGENT_RELAY_TOKEN`).
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        relay_env(self.port)
    }
}

/// The agent's environment for a relay at `port`.
pub fn relay_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("JOBAGENT_STORE", format!("relay+http://127.0.0.1:{port}")),
        ("JOBAGENT_RELAY_TOKEN", TOKEN.to_owned()),
    ]
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP balancer on 127.0.0.1: each new connection goes to the next upstream port in turn.
pub struct Balancer {
    port: u16,
    accept: JoinHandle<()>,
}

impl Balancer {
    /// Balances over `upstreams`.
    pub async fn start(upstreams: Vec<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("balancer cannot bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("balancer has no address: {e}"))
            .port();
        let next = AtomicUsize::new(0);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let i = next.fetch_add(1, Ordering::Relaxed) % upstreams.len().max(1);
                let Some(&up) = upstreams.get(i) else { return };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", up)).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, accept }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Puts job `id` in state `state` (`Processing`, `Succeeded`, ...) in the center's storage,
/// where the center keeps it and where a relay that checks results looks (creating the job
/// table first when the test store has none):
///
/// - PostgreSQL: `<schema>.job`, columns as Hangfire.PostgreSql's `Scripts/Install.v*.sql`
///   create them (`statename` is what is read);
/// - MySQL: `<prefix>Job`, as Hangfire.MySqlStorage's `Install.sql` (`StateName`);
/// - Redis: field `State` of hash `<prefix>job:<id>`, as Hangfire.Redis.StackExchange's
///   `RedisWriteOnlyTransaction.SetJobState` writes it.
///
/// Ids are numbers on PostgreSQL and MySQL (their `id` columns).
pub async fn job_in_state(store: &AnyStore, id: &str, state: &str) {
    use crate::stores::Backing;
    match store.backing() {
        Backing::Pg(db) => {
            let table = db.table("job");
            let n: i64 = id
                .parse()
                .unwrap_or_else(|_| panic!("a PostgreSQL job id is a number: {id}"));
            db.client()
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, stateid bigint, \
                     statename varchar(20), invocationdata jsonb NOT NULL DEFAULT '{{}}', \
                     arguments jsonb NOT NULL DEFAULT '[]', createdat timestamp NOT NULL DEFAULT now(), \
                     expireat timestamp, updatecount integer NOT NULL DEFAULT 0)"
                ))
                .await
                .unwrap_or_else(|e| panic!("cannot create the job table: {e}"));
            db.client()
                .execute(
                    &format!(
                        "INSERT INTO {table} (id, statename) VALUES ($1, $2) \
                         ON CONFLICT (id) DO UPDATE SET statename = EXCLUDED.statename"
                    ),
                    &[&n, &state],
                )
                .await
                .unwrap_or_else(|e| panic!("cannot write job {id}: {e}"));
        }
        Backing::Mysql(db) => {
            use mysql_async::prelude::Queryable;
            let table = db.table("Job");
            let n: i64 = id
                .parse()
                .unwrap_or_else(|_| panic!("a MySQL job id is a number: {id}"));
            let mut conn = db.conn().await;
            conn.query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {table} (`Id` int(11) NOT NULL AUTO_INCREMENT, \
                 `StateId` int(11) DEFAULT NULL, `StateName` nvarchar(20) DEFAULT NULL, \
                 `InvocationData` longtext NOT NULL, `Arguments` longtext NOT NULL, \
                 `CreatedAt` datetime(6) NOT NULL, `ExpireAt` datetime(6) DEFAULT NULL, \
                 PRIMARY KEY (`Id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8"
            ))
            .await
            .unwrap_or_else(|e| panic!("cannot create the job table: {e}"));
            conn.exec_drop(
                format!(
                    "INSERT INTO {table} (`Id`, `StateName`, `InvocationData`, `Arguments`, `CreatedAt`) \
                     VALUES (?, ?, '', '', UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE `StateName` = VALUES(`StateName`)"
                ),
                (n, state),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot write job {id}: {e}"));
        }
        Backing::Redis(db) => {
            let mut conn = db.connection();
            let key = format!("{}job:{id}", db.prefix());
            redis::cmd("HSET")
                .arg(&key)
                .arg("State")
                .arg(state)
                .query_async::<()>(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("cannot write job {id}: {e}"));
        }
    }
}
