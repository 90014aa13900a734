//! A PostgreSQL harness: one fresh database per test, with the Hangfire tables the agent
//! writes into, and readers that read them the way the center's dashboard does.
//!
//! The server comes from `JOBAGENT_TEST_DATABASE_URL` (a `postgres://` URL or a libpq
//! `key=value` string) when it is set; otherwise a throwaway server is started once per test
//! process from the local PostgreSQL binaries (`initdb`, `pg_ctl`, found on `PATH` or under
//! `/usr/lib/postgresql/*/bin`) in a temporary directory, and stopped when the process exits.
//! With neither, [`TestDb::new`] fails and says how to get one; it never skips.
//!
//! ```no_run
//! # async fn demo() {
//! let db = tests::pg::TestDb::new().await;
//! let rows = db.client().query("SELECT 1", &[]).await.expect("query");
//! assert_eq!(rows.len(), 1);
//! # }
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use jobagent::__dev::npgsql_value;
use serde_json::Value;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::center::Storage;

/// The environment variable naming an existing server to test against.
pub const DATABASE_URL_VAR: &str = "JOBAGENT_TEST_DATABASE_URL";

/// The Hangfire schema the harness creates.
pub const SCHEMA: &str = "hangfire";

/// The hash key prefix of results (`_agent_result_<job id>`) and the set key of result ids.
pub const RESULT_KEY: &str = "_agent_result_";

/// Where a server is and how to log in.
#[derive(Clone)]
struct Server {
    host: ServerHost,
    port: u16,
    user: String,
    password: Option<String>,
    admin_db: String,
    origin: String,
}

#[derive(Clone, Debug)]
enum ServerHost {
    Tcp(String),
    Unix(PathBuf),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Server {
    fn config(&self, db: &str) -> Config {
        let mut c = Config::new();
        match &self.host {
            ServerHost::Tcp(h) => c.host(h),
            ServerHost::Unix(p) => c.host_path(p),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if let Some(pw) = &self.password {
            c.password(pw.as_bytes());
        }
        c
    }

    async fn connect(&self, db: &str) -> Result<Client, String> {
        let (client, connection) = self.config(db).connect(NoTls).await.map_err(|e| {
            format!(
                "cannot connect to PostgreSQL ({}) database `{db}`: {e}",
                self.origin
            )
        })?;
        tokio::spawn(async move {
            // Errors here mean the database was dropped or the server stopped; the test that
            // owns the client sees its queries fail.
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// The process-wide server: the URL's, or the throwaway one.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
/// The throwaway server's watchdog: it stops the server when this process exits.
static WATCHDOG: OnceLock<Mutex<(Child, ChildStdin)>> = OnceLock::new();
/// How to stop and start the throwaway server again (never set for the URL's server).
static THROWAWAY: OnceLock<Throwaway> = OnceLock::new();

/// The throwaway server's `pg_ctl`, data directory, log and start options.
struct Throwaway {
    run_as: RunAs,
    pg_ctl: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
}

impl Throwaway {
    /// Runs `pg_ctl <action>` on the data directory and waits for it (at most 60 s).
    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let mut args: Vec<OsString> = vec!["-D".into(), self.data.clone().into()];
        match action {
            "stop" => args.extend(["-m".into(), "fast".into()]),
            _ => args.extend([
                "-l".into(),
                self.log.clone().into(),
                "-o".into(),
                self.options.clone().into(),
            ]),
        }
        args.extend(["-w".into(), "-t".into(), "60".into(), action.into()]);
        let out = self
            .run_as
            .command(&self.pg_ctl, &args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.pg_ctl.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {action} failed ({}): {}",
                out.status,
                output_text(&out)
            ))
        }
    }
}

fn server() -> Result<Server, String> {
    SERVER
        .get_or_init(|| match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => from_url(url.trim()),
            _ => start_local(),
        })
        .clone()
}

fn how_to_get_one() -> String {
    format!(
        "set {DATABASE_URL_VAR} to a PostgreSQL server the tests may create databases on \
         (e.g. postgres://postgres@127.0.0.1:5432/postgres), or install the PostgreSQL server \
         binaries (initdb and pg_ctl on PATH or under /usr/lib/postgresql/<version>/bin, e.g. \
         `apt-get install postgresql`) so the tests can start a throwaway server"
    )
}

fn from_url(url: &str) -> Result<Server, String> {
    let config = Config::from_str(url).map_err(|e| {
        format!("{DATABASE_URL_VAR} is not a postgres:// URL or key=value connection string: {e}")
    })?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => ServerHost::Tcp(h.clone()),
        #[cfg(unix)]
        Some(Host::Unix(p)) => ServerHost::Unix(p.clone()),
        None => ServerHost::Tcp("localhost".to_owned()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let admin_db = config.get_dbname().unwrap_or(&user).to_owned();
    Ok(Server {
        host,
        port,
        user,
        password,
        admin_db,
        origin: DATABASE_URL_VAR.to_owned(),
    })
}

/// Finds `initdb` and `pg_ctl` side by side: on `PATH`, then the newest
/// `/usr/lib/postgresql/*/bin`, `/usr/pgsql-*/bin` and `/usr/local/pgsql/bin`.
fn find_binaries() -> Option<(PathBuf, PathBuf)> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
    ] {
        if let Ok(entries) = fs::read_dir(parent) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(version) = name.strip_prefix(prefix) else {
                    continue;
                };
                let major = version
                    .split('.')
                    .next()
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0);
                if prefix.is_empty() && major == 0 {
                    continue;
                }
                versioned.push((major, entry.path().join(suffix)));
            }
        }
    }
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versioned.into_iter().map(|(_, p)| p));
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs.into_iter().find_map(|dir| {
        let initdb = dir.join("initdb");
        let pg_ctl = dir.join("pg_ctl");
        (initdb.is_file() && pg_ctl.is_file()).then_some((initdb, pg_ctl))
    })
}

fn output_text(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_owned()
}

fn is_root() -> bool {
    match Command::new("id").arg("-u").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim() == "0",
        _ => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt as _;
                fs::metadata("/proc/self")
                    .map(|m| m.uid() == 0)
                    .unwrap_or(false)
            }
            #[cfg(not(unix))]
            {
                false
            }
        }
    }
}

/// Runs commands as the user that may own a PostgreSQL data directory: ourselves, or
/// `postgres` when we are root (`initdb` and `pg_ctl` refuse to run as root).
#[derive(Clone)]
struct RunAs {
    root: bool,
    runuser: Option<PathBuf>,
}

impl RunAs {
    fn detect() -> Self {
        let root = is_root();
        let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        Self { root, runuser }
    }

    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        if !self.root {
            let mut c = Command::new(program);
            c.args(args);
            return c;
        }
        if let Some(runuser) = &self.runuser {
            let mut c = Command::new(runuser);
            c.args(["-u", "postgres", "--"]).arg(program).args(args);
            return c;
        }
        let mut line = shell_quote(&program.to_string_lossy());
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(&a.to_string_lossy()));
        }
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c"]).arg(line);
        c
    }

    /// Makes `dir` the `postgres` user's when we are root.
    fn hand_over(&self, dir: &Path) -> Result<(), String> {
        if !self.root {
            return Ok(());
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(|e| format!("cannot run `id`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "running as root, the throwaway PostgreSQL server must run as user `postgres`, \
                     which does not exist ({}); {}",
                    output_text(&out),
                    how_to_get_one()
                ));
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|e| format!("`id {flag} postgres` printed no number: {e}"))
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        #[cfg(unix)]
        {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {} to postgres: {e}", dir.display()))?;
        }
        #[cfg(not(unix))]
        let _ = (uid, gid);
        Ok(())
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn start_local() -> Result<Server, String> {
    start_local_with(find_binaries())
}

fn start_local_with(binaries: Option<(PathBuf, PathBuf)>) -> Result<Server, String> {
    let Some((initdb, pg_ctl)) = binaries else {
        return Err(format!(
            "no PostgreSQL server to test against: {DATABASE_URL_VAR} is not set and initdb/pg_ctl \
             were not found; {}",
            how_to_get_one()
        ));
    };
    let run_as = RunAs::detect();
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "jobagent-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    }
    let result = init_and_start(&run_as, &initdb, &pg_ctl, &dir);
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// Removes directories of throwaway servers whose test process died before its watchdog
/// started (no server runs in them: they hold no `postmaster.pid`).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("jobagent-pg-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        let running = entry.path().join("data/postmaster.pid").exists();
        if !alive && !running && Path::new("/proc/self").exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn init_and_start(
    run_as: &RunAs,
    initdb: &Path,
    pg_ctl: &Path,
    dir: &Path,
) -> Result<Server, String> {
    let data = dir.join("data");
    let sock = dir.join("sock");
    fs::create_dir(&sock).map_err(|e| format!("cannot create {}: {e}", sock.display()))?;
    run_as.hand_over(dir)?;
    run_as.hand_over(&sock)?;
    let args: Vec<OsString> = vec![
        "-D".into(),
        data.clone().into(),
        "-U".into(),
        "postgres".into(),
        "-A".into(),
        "trust".into(),
        "-E".into(),
        "UTF8".into(),
        "--locale=C".into(),
        "--no-sync".into(),
    ];
    let out = run_as
        .command(initdb, &args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            initdb.display(),
            out.status,
            output_text(&out)
        ));
    }
    let log = dir.join("server.log");
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            sock.display()
        );
        let args: Vec<OsString> = vec![
            "-D".into(),
            data.clone().into(),
            "-l".into(),
            log.clone().into(),
            "-o".into(),
            options.clone().into(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "start".into(),
        ];
        let out = run_as
            .command(pg_ctl, &args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", pg_ctl.display()))?;
        if out.status.success() {
            spawn_watchdog(run_as, pg_ctl, &data, dir)?;
            let _ = THROWAWAY.set(Throwaway {
                run_as: run_as.clone(),
                pg_ctl: pg_ctl.to_path_buf(),
                data: data.clone(),
                log: log.clone(),
                options: options.clone(),
            });
            return Ok(Server {
                host: ServerHost::Tcp("127.0.0.1".to_owned()),
                port,
                user: "postgres".to_owned(),
                password: None,
                admin_db: "postgres".to_owned(),
                origin: format!("throwaway server in {}", dir.display()),
            });
        }
        let server_log = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = server_log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        last_error = format!(
            "{} start failed ({}): {}\nserver log:\n{}",
            pg_ctl.display(),
            out.status,
            output_text(&out),
            tail.join("\n")
        );
    }
    Err(last_error)
}

/// A shell that waits for this process's end (its stdin closing), then stops the server and
/// removes its directory. It ignores terminal signals so ctrl-c still cleans up.
fn spawn_watchdog(run_as: &RunAs, pg_ctl: &Path, data: &Path, dir: &Path) -> Result<(), String> {
    let script = "trap '' INT TERM HUP; while read -r _line; do :; done; \
                  \"$0\" -D \"$1\" -m immediate -w stop >/dev/null 2>&1; rm -rf \"$2\"";
    let args: Vec<OsString> = vec![
        "-c".into(),
        script.into(),
        pg_ctl.into(),
        data.into(),
        dir.into(),
    ];
    let mut child = run_as
        .command(Path::new("/bin/sh"), &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the server's watchdog shell: {e}"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| "the watchdog shell has no stdin".to_owned())?;
    let _ = WATCHDOG.set(Mutex::new((child, stdin)));
    Ok(())
}

fn random_name() -> String {
    format!("jobagent_t_{:016x}", rand::random::<u64>())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which generation of Hangfire.PostgreSql's tables a [`TestDb`] gets. Deployed centers run
/// every generation since `Install.v3.sql` (the scripts are in Hangfire.PostgreSql's
/// `src/Hangfire.PostgreSql/Scripts/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The current tables (Install.v23): `bigserial` ids, `text` keys, `updatecount`,
    /// `expireat timestamp with time zone` (since Install.v19, Hangfire.PostgreSql 1.9.10).
    Current,
    /// The oldest tables (Install.v3): `serial` (int4) ids, `varchar(100)` keys and fields,
    /// no `updatecount` (Install.v4 adds it), and `expireat timestamp` without time zone,
    /// which Hangfire writes and compares as naive UTC (`NOW() AT TIME ZONE 'UTC'` in the
    /// ExpirationManager.cs of 1.9.9). The database's default time zone is
    /// `America/Los_Angeles`, west of UTC, so a session that converts in its own zone
    /// writes times Hangfire reads as 7 or 8 hours early.
    Oldest,
}

impl Generation {
    /// The database time zone the harness gives this generation's databases.
    pub fn database_time_zone(self) -> Option<&'static str> {
        match self {
            Generation::Current => None,
            Generation::Oldest => Some("America/Los_Angeles"),
        }
    }

    /// Hangfire's "now" for this generation's `expireat`, as SQL: `now()` against
    /// `timestamptz`, naive UTC against `timestamp` (ExpirationManager.cs, before and after
    /// 1.9.10).
    pub fn hangfire_now_sql(self) -> &'static str {
        match self {
            Generation::Current => "now()",
            Generation::Oldest => "(now() at time zone 'utc')",
        }
    }

    /// The `CREATE TABLE`s of this generation's `hash` and `set` (and, current, `lock`:
    /// Install.v3, v4, v7, v9 and v19) in `schema` (quoted here).
    fn tables_sql(self, schema: &str) -> String {
        let s = quote_ident(schema);
        match self {
            Generation::Current => format!(
                "CREATE TABLE {s}.hash (
                     id bigserial PRIMARY KEY,
                     key text NOT NULL,
                     field text NOT NULL,
                     value text,
                     expireat timestamptz,
                     updatecount int NOT NULL DEFAULT 0,
                     UNIQUE (key, field));
                 CREATE TABLE {s}.\"set\" (
                     id bigserial PRIMARY KEY,
                     key text NOT NULL,
                     score double precision NOT NULL,
                     value text NOT NULL,
                     expireat timestamptz,
                     updatecount int NOT NULL DEFAULT 0,
                     UNIQUE (key, value));
                 CREATE TABLE {s}.\"lock\" (
                     resource text NOT NULL,
                     updatecount int NOT NULL DEFAULT 0,
                     acquired timestamptz,
                     UNIQUE (resource));"
            ),
            // Shapes as in Install.v3.sql.
            Generation::Oldest => format!(
                "CREATE TABLE {s}.hash (
                     id serial NOT NULL,
                     key varchar(100) NOT NULL,
                     field varchar(100) NOT NULL,
                     value text NULL,
                     expireat timestamp NULL,
                     PRIMARY KEY (id),
                     UNIQUE (key, field));
                 CREATE TABLE {s}.\"set\" (
                     id serial NOT NULL,
                     key varchar(100) NOT NULL,
                     score float8 NOT NULL,
                     value text NOT NULL,
                     expireat timestamp NULL,
                     PRIMARY KEY (id),
                     UNIQUE (key, value));"
            ),
        }
    }
}

/// One fresh database with the Hangfire tables, dropped when the value is dropped.
pub struct TestDb {
    server: Server,
    name: String,
    client: Client,
    schema: String,
    generation: Generation,
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// Creates a fresh database with tables `hangfire.hash` and `hangfire.set`; panics with
    /// what to do when no server is available.
    pub async fn new() -> Self {
        match Self::try_new().await {
            Ok(db) => db,
            Err(e) => panic!("no test database: {e}"),
        }
    }

    /// Like [`new`](Self::new), returning the reason on failure.
    pub async fn try_new() -> Result<Self, String> {
        Self::try_with(Generation::Current, SCHEMA).await
    }

    /// A fresh database with the oldest generation of the tables ([`Generation::Oldest`]).
    pub async fn oldest() -> Self {
        Self::with(Generation::Oldest, SCHEMA).await
    }

    /// A fresh database with `generation`'s tables in schema `schema` (any name; it is
    /// quoted); panics when no server is available.
    pub async fn with(generation: Generation, schema: &str) -> Self {
        match Self::try_with(generation, schema).await {
            Ok(db) => db,
            Err(e) => panic!("no test database: {e}"),
        }
    }

    /// Like [`with`](Self::with), returning the reason on failure.
    pub async fn try_with(generation: Generation, schema: &str) -> Result<Self, String> {
        let server = tokio::task::spawn_blocking(server)
            .await
            .map_err(|e| format!("starting the server panicked: {e}"))??;
        let name = random_name();
        let admin = server.connect(&server.admin_db).await.map_err(|e| {
            format!("{e}; check {DATABASE_URL_VAR} or unset it to use a throwaway server")
        })?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        if let Some(zone) = generation.database_time_zone() {
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} SET timezone TO '{zone}'",
                    quote_ident(&name)
                ))
                .await
                .map_err(|e| format!("cannot set the time zone of database {name}: {e}"))?;
        }
        drop(admin);
        let client = server.connect(&name).await?;
        let db = Self {
            server,
            name,
            client,
            schema: schema.to_owned(),
            generation,
        };
        db.client
            .batch_execute(&format!(
                "CREATE SCHEMA {};\n{}",
                quote_ident(schema),
                generation.tables_sql(schema)
            ))
            .await
            .map_err(|e| format!("cannot create the Hangfire tables: {e}"))?;
        Ok(db)
    }

    /// A client connected to this database.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens another client to this database.
    pub async fn connect(&self) -> Client {
        match self.server.connect(&self.name).await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Restarts the throwaway server: a fast shutdown (every session is cut), `down_for`
    /// with no server at all, then a start on the same port; reconnects [`client`](Self::client).
    /// Returns how long the server was unreachable. Refuses (with `Err`) when the server comes
    /// from `JOBAGENT_TEST_DATABASE_URL`: a server this process did not start is never
    /// restarted.
    pub async fn restart(&mut self, down_for: Duration) -> Result<Duration, String> {
        if THROWAWAY.get().is_none() {
            return Err(format!(
                "restart() needs the throwaway server; this one comes from {}",
                self.server.origin
            ));
        }
        let down = tokio::task::spawn_blocking(move || {
            let server = THROWAWAY
                .get()
                .ok_or_else(|| "no throwaway server".to_owned())?;
            let started = std::time::Instant::now();
            server.pg_ctl("stop")?;
            std::thread::sleep(down_for);
            server.pg_ctl("start")?;
            Ok::<_, String>(started.elapsed())
        })
        .await
        .map_err(|e| format!("restarting the server panicked: {e}"))??;
        self.client = self.server.connect(&self.name).await?;
        Ok(down)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Hangfire schema (`hangfire` unless created [`with`](Self::with) another).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The generation of the tables.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// A Hangfire table (`hash`, `set`, ...) of this database, quoted for SQL.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// Where the server comes from (the variable, or the throwaway server's directory).
    pub fn origin(&self) -> &str {
        &self.server.origin
    }

    /// The Npgsql connection string the center would send in `HangfireDb`:
    /// `Host=...;Port=...;Database=...;Username=...;Password=...`.
    pub fn connection_string(&self) -> String {
        let host = match &self.server.host {
            ServerHost::Tcp(h) => h.clone(),
            ServerHost::Unix(p) => p.display().to_string(),
        };
        format!(
            "Host={};Port={};Database={};Username={};Password={}",
            npgsql_value(&host),
            self.server.port,
            npgsql_value(&self.name),
            npgsql_value(&self.server.user),
            npgsql_value(self.server.password.as_deref().unwrap_or_default())
        )
    }

    /// A `postgres://` URL for this database.
    pub fn url(&self) -> String {
        let mut auth = pct(&self.server.user);
        if let Some(pw) = &self.server.password {
            auth.push(':');
            auth.push_str(&pct(pw));
        }
        match &self.server.host {
            ServerHost::Tcp(h) if h.contains(':') => format!(
                "postgres://{auth}@[{h}]:{}/{}",
                self.server.port,
                pct(&self.name)
            ),
            ServerHost::Tcp(h) => format!(
                "postgres://{auth}@{h}:{}/{}",
                self.server.port,
                pct(&self.name)
            ),
            ServerHost::Unix(p) => format!(
                "postgres://{auth}@/{}?host={}&port={}",
                pct(&self.name),
                pct(&p.display().to_string()),
                self.server.port
            ),
        }
    }

    /// The center's storage description for this database (its schema, 7 days).
    pub fn storage(&self) -> Storage {
        Storage::postgresql(self.connection_string()).table_prefix(self.schema.clone())
    }

    /// How many seconds ahead of Hangfire's "now" the `expireat` of each row of `table`
    /// (`hash` or `set`) under `key` is, read as Hangfire.PostgreSql's ExpirationManager of
    /// this generation compares it (`timestamptz` against `now()`, naive UTC against
    /// `now() at time zone 'utc'`), whatever this session's time zone. NULL reads as
    /// `None`.
    pub async fn expiry_ahead(&self, table: &str, key: &str) -> Vec<Option<f64>> {
        let sql = format!(
            "SELECT extract(epoch FROM expireat - {})::float8 FROM {} WHERE key = $1 ORDER BY id",
            self.generation.hangfire_now_sql(),
            self.table(table)
        );
        match self.client.query(&sql, &[&key]).await {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => panic!("cannot read the expiry of {table} {key}: {e}"),
        }
    }

    /// The raw values of a set, in insertion order (`ORDER BY id`), with their scores.
    pub async fn set_rows(&self, key: &str) -> Vec<(String, f64)> {
        let sql = format!(
            "SELECT value, score FROM {} WHERE key = $1 ORDER BY id",
            self.table("set")
        );
        match self.client.query(&sql, &[&key]).await {
            Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            Err(e) => panic!("cannot read set {key}: {e}"),
        }
    }

    /// The fields and values of a hash, in insertion order.
    pub async fn hash_rows(&self, key: &str) -> Vec<(String, Option<String>)> {
        let sql = format!(
            "SELECT field, value FROM {} WHERE key = $1 ORDER BY id",
            self.table("hash")
        );
        match self.client.query(&sql, &[&key]).await {
            Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            Err(e) => panic!("cannot read hash {key}: {e}"),
        }
    }

    /// Takes the distributed lock on `resource` as Hangfire.PostgreSql does
    /// (`PostgreSqlDistributedLock.cs`, the native-transaction handler): on its own
    /// connection, remove a row older than `DistributedLockTimeout` (10 minutes), insert the
    /// row unless one exists, and try again every second (at most) until `timeout`.
    pub async fn dotnet_lock(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<DotnetPgLock, String> {
        let client = self.connect().await;
        let table = self.table("lock");
        let started = std::time::Instant::now();
        loop {
            client
                .execute(
                    &format!("DELETE FROM {table} WHERE resource = $1 AND acquired < now() - interval '10 minutes'"),
                    &[&resource],
                )
                .await
                .map_err(|e| e.to_string())?;
            let inserted = client
                .execute(
                    &format!(
                        "INSERT INTO {table} (resource, acquired) SELECT $1, now() \
                         WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE resource = $1) ON CONFLICT DO NOTHING"
                    ),
                    &[&resource],
                )
                .await
                .map_err(|e| e.to_string())?;
            if inserted > 0 {
                return Ok(DotnetPgLock {
                    client,
                    table,
                    resource: resource.to_owned(),
                });
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(format!("could not acquire lock on resource {resource}"));
            }
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
    }

    /// One hash field's value.
    pub async fn hash_value(&self, key: &str, field: &str) -> Option<String> {
        let sql = format!(
            "SELECT value FROM {} WHERE key = $1 AND field = $2",
            self.table("hash")
        );
        match self.client.query_opt(&sql, &[&key, &field]).await {
            Ok(row) => row.and_then(|r| r.get(0)),
            Err(e) => panic!("cannot read hash {key} field {field}: {e}"),
        }
    }

    /// The console's lines as the dashboard shows them: set `set_key` in insertion order,
    /// each value parsed as JSON, references (`"r":true`) replaced by their text from hash
    /// `hash_key` (`s` holds the text, `r` is removed). Panics on a value that is not JSON
    /// or a reference whose field is missing.
    pub async fn console_lines(&self, set_key: &str, hash_key: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        for (raw, _score) in self.set_rows(set_key).await {
            let mut line: Value = serde_json::from_str(&raw)
                .unwrap_or_else(|e| panic!("console line is not JSON ({e}): {raw}"));
            if line.get("r") == Some(&Value::Bool(true)) {
                let field = line
                    .get("s")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("reference line without `s`: {raw}"))
                    .to_owned();
                let text = self
                    .hash_value(hash_key, &field)
                    .await
                    .unwrap_or_else(|| panic!("reference {field} missing from hash {hash_key}"));
                if let Some(obj) = line.as_object_mut() {
                    obj.remove("r");
                    obj.insert("s".to_owned(), Value::String(text));
                }
            }
            lines.push(line);
        }
        lines
    }

    /// Every field of `_agent_result_<job_id>`: (elapsed ms, parsed value).
    pub async fn result_fields(&self, job_id: &str) -> Vec<(String, Value)> {
        let key = format!("{RESULT_KEY}{job_id}");
        self.hash_rows(&key)
            .await
            .into_iter()
            .map(|(field, value)| {
                let value = value.unwrap_or_default();
                let parsed = serde_json::from_str(&value)
                    .unwrap_or_else(|e| panic!("result of {job_id} is not JSON ({e}): {value}"));
                (field, parsed)
            })
            .collect()
    }

    /// The result the center reads for `job_id` (hash `_agent_result_<job_id>`), parsed.
    /// Panics when there is more than one field: a dispatch is reported exactly once.
    pub async fn result(&self, job_id: &str) -> Option<Value> {
        let mut fields = self.result_fields(job_id).await;
        assert!(
            fields.len() <= 1,
            "job {job_id} was reported {} times: {fields:?}",
            fields.len()
        );
        fields.pop().map(|(_, v)| v)
    }

    /// The job ids in set `_agent_result_`, in insertion order.
    pub async fn result_ids(&self) -> Vec<String> {
        self.set_rows(RESULT_KEY)
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    /// The job ids in set `_agent_result_` once it lists `job_id`; panics after `within`.
    /// The agent writes a result's hash, then its set member (the center reads the set, then
    /// the hash): a result found by its hash may be a moment ahead of its set member.
    pub async fn result_ids_listing(&self, job_id: &str, within: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let ids = self.result_ids().await;
            if ids.iter().any(|id| id == job_id) {
                return ids;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "set {RESULT_KEY} did not list {job_id} within {within:?}: {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    let admin = server.connect(&server.admin_db).await?;
                    admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            quote_ident(&name)
                        ))
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(Duration::from_secs(10), work).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("note: could not drop test database {name}: {e}"),
                    Err(_) => eprintln!("note: dropping test database {name} timed out"),
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A lock held the way a .NET service holds it on Hangfire.PostgreSql.
pub struct DotnetPgLock {
    client: Client,
    table: String,
    resource: String,
}

impl DotnetPgLock {
    /// Releases it as Hangfire does: deletes the resource's row, whoever wrote it.
    pub async fn release(self) {
        self.client
            .execute(
                &format!("DELETE FROM {} WHERE resource = $1", self.table),
                &[&self.resource],
            )
            .await
            .expect("release the lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_connection_values() {
        assert_eq!(npgsql_value("abc"), "abc");
        assert_eq!(npgsql_value("a;b"), "\"a;b\"");
        assert_eq!(pct("p@ss/w:rd"), "p%40ss%2Fw%3Ard");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn without_url_or_binaries_says_how_to_get_a_server() {
        let e = start_local_with(None).expect_err("no binaries");
        assert!(e.contains(DATABASE_URL_VAR), "{e}");
        assert!(e.contains("initdb") && e.contains("install"), "{e}");
    }

    #[test]
    fn reads_url_and_key_value_strings() {
        let s = from_url("postgres://bob:pw@db.example:6543/app").expect("url");
        assert_eq!(
            (s.port, s.user.as_str(), s.admin_db.as_str()),
            (6543, "bob", "app")
        );
        assert_eq!(s.password.as_deref(), Some("pw"));
        let s = from_url("host=127.0.0.1 port=5433 user=postgres dbname=test").expect("kv");
        assert_eq!((s.port, s.admin_db.as_str()), (5433, "test"));
        assert!(from_url("postgres://[bad").is_err());
    }
}
