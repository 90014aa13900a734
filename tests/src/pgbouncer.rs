//! A throwaway PgBouncer in front of a [`TestDb`]'s server, configured as a center's usually
//! is: `ignore_startup_parameters = extra_float_digits` (what Npgsql needs; nothing else is
//! let through, so a client that sends `options` is refused, as in the field), session or
//! transaction pooling, clients trusted.
//!
//! PgBouncer comes from Debian's package (`/usr/sbin/pgbouncer`, 1.18 or later). Without it
//! the harness panics saying how to install it: a PgBouncer test is never skipped.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;

use crate::center::Storage;
use crate::pg::TestDb;

/// Where Debian's package installs PgBouncer.
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A server session per client connection, for as long as it is connected.
    Session,
    /// A server session per transaction: consecutive transactions of one client connection
    /// may run on different server sessions, and no session state follows the client.
    Transaction,
}

impl PoolMode {
    /// Server sessions per database and user. In session mode every client connection holds
    /// one for as long as it is open, so the agent's pooled connections (console writers,
    /// results, heartbeats, the table check) need PgBouncer's own default of 20; in
    /// transaction mode 4 makes consecutive transactions of one client land on different
    /// sessions, which is what the tests want to see.
    fn pool_size(self) -> u32 {
        match self {
            PoolMode::Session => 20,
            PoolMode::Transaction => 4,
        }
    }

    fn as_config(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer process, stopped (killed) when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
    database: String,
    user: String,
    mode: PoolMode,
}

impl std::fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` on a free port of 127.0.0.1, in front of `db`'s server, and
    /// waits (up to 10 s) until it answers a query for `db`. Panics with the reason (and how
    /// to install PgBouncer when it is missing).
    pub async fn start(db: &TestDb, mode: PoolMode) -> Self {
        assert!(
            Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: install PgBouncer (`apt-get install pgbouncer`, 1.18 or later); the PgBouncer tests need it"
        );
        let server = tokio_postgres::Config::from_str(&db.url())
            .unwrap_or_else(|e| panic!("the test database's URL does not parse: {e}"));
        let (host, port) = match (server.get_hosts().first(), server.get_ports().first()) {
            (Some(Host::Tcp(h)), p) => (h.clone(), p.copied().unwrap_or(5432)),
            #[cfg(unix)]
            (Some(Host::Unix(dir)), p) => (dir.display().to_string(), p.copied().unwrap_or(5432)),
            (None, p) => ("127.0.0.1".to_owned(), p.copied().unwrap_or(5432)),
        };
        let user = server.get_user().unwrap_or("postgres").to_owned();
        let password = server
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "pgbouncer-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut last = String::new();
        // A port found free may be taken before PgBouncer binds it: a few tries.
        for _ in 0..3 {
            let listen = free_port();
            let config = config(&dir, listen, mode, &host, port, &user, &password);
            let ini = dir.join("pgbouncer.ini");
            write_readable(&ini, &config);
            write_readable(
                &dir.join("userlist.txt"),
                &format!("\"{}\" \"{}\"\n", quote(&user), quote(&password)),
            );
            let log = dir.join("pgbouncer.log");
            let log_file = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
            let mut cmd = Command::new(PGBOUNCER);
            // PgBouncer refuses to run as root: as root, it drops to the server's OS user.
            if is_root() {
                cmd.arg("-u").arg(os_user());
            }
            let child = cmd
                .arg(&ini)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {PGBOUNCER}: {e}"));
            let mut bouncer = Self {
                child,
                port: listen,
                dir: dir.clone(),
                database: db.name().to_owned(),
                user: user.clone(),
                mode,
            };
            match bouncer.ready(Duration::from_secs(10)).await {
                Ok(()) => return bouncer,
                Err(e) => {
                    last = format!("{e}; its log: {}", bouncer.log_text());
                    drop(bouncer);
                }
            }
        }
        panic!("PgBouncer did not start: {last}");
    }

    /// Waits until a query through PgBouncer is answered.
    async fn ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("pgbouncer exited: {status}"));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let (client, connection) =
                    tokio_postgres::connect(&self.libpq(), tokio_postgres::NoTls).await?;
                let task = tokio::spawn(connection);
                let answered = client.simple_query("SELECT 1").await.map(|_| ());
                drop(client);
                let _ = task.await;
                answered
            })
            .await;
            match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) if Instant::now() >= deadline => return Err("no answer".to_owned()),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn libpq(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port, self.user, self.database
        )
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pooling mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// The Npgsql connection string a center behind this PgBouncer sends in `HangfireDb`
    /// (the database's, with PgBouncer's host and port; PgBouncer trusts its clients).
    pub fn connection_string(&self) -> String {
        format!(
            "Host=127.0.0.1;Port={};Database={};Username={}",
            self.port, self.database, self.user
        )
    }

    /// The center's storage description through this PgBouncer, for `db`'s schema.
    pub fn storage(&self, db: &TestDb) -> Storage {
        Storage::postgresql(self.connection_string()).table_prefix(db.schema().to_owned())
    }

    /// What PgBouncer logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(self.dir.join("pgbouncer.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration: one `*` database entry forwarding every database name to the server.
fn config(
    dir: &Path,
    listen: u16,
    mode: PoolMode,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
) -> String {
    let mut database = format!("host={host} port={port} user={user}");
    if !password.is_empty() {
        let _ = write!(database, " password={password}");
    }
    format!(
        "[databases]\n\
         * = {database}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {listen}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {auth}\n\
         pool_mode = {mode}\n\
         ignore_startup_parameters = extra_float_digits\n\
         max_client_conn = 200\n\
         default_pool_size = {pool}\n\
         server_login_retry = 1\n",
        auth = dir.join("userlist.txt").display(),
        mode = mode.as_config(),
        pool = mode.pool_size(),
    )
}

/// Writes a file the PgBouncer process (possibly another OS user) can read.
fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [path, path.parent().unwrap_or(path)] {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// A userlist.txt field: `"` doubled.
fn quote(s: &str) -> String {
    s.replace('"', "\"\"")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

#[cfg(unix)]
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// The OS user PgBouncer runs as when started by root: `postgres` when it exists, else
/// `nobody`.
fn os_user() -> &'static str {
    let known = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if known.lines().any(|l| l.starts_with("postgres:")) {
        "postgres"
    } else {
        "nobody"
    }
}
