//! A MySQL/MariaDB harness: one fresh database per test with the tables Hangfire.MySqlStorage
//! creates (`Hangfire.MySql/Install.sql` in arnoldasgudas/Hangfire.MySqlStorage: `<P>Hash`,
//! `<P>Set`, `<P>DistributedLock`, charset `utf8`), read the way the dashboard reads them
//! (a set `ORDER BY Id`).
//!
//! The server comes from `JOBAGENT_TEST_MYSQL_URL` (a `mysql://` URL), else
//! `mysql://root@127.0.0.1:3306`. Without a server, [`TestMysql::new`] fails and says how to
//! get one; it never skips.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};

use crate::center::Storage;

/// The environment variable naming the server to test against.
pub const MYSQL_URL_VAR: &str = "JOBAGENT_TEST_MYSQL_URL";
/// The server tried when the variable is not set.
const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306";
/// Hangfire.MySqlStorage's default table prefix.
pub const PREFIX: &str = "Hangfire";

/// A fresh database with Hangfire.MySqlStorage's tables; dropped at the end of the test.
pub struct TestMysql {
    pool: Pool,
    server: Opts,
    name: String,
    prefix: String,
}

fn server() -> Result<Opts, String> {
    let url = std::env::var(MYSQL_URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    Opts::from_url(&url).map_err(|e| format!("{MYSQL_URL_VAR} is not a mysql:// URL: {e}"))
}

fn how_to_get_one(opts: &Opts, e: &str) -> String {
    format!(
        "no MySQL/MariaDB server at {}:{} ({e}); install and start one (`apt-get install mariadb-server && service mariadb start`), or point {MYSQL_URL_VAR} at one (mysql://user:password@host:port)",
        opts.ip_or_hostname(),
        opts.tcp_port()
    )
}

impl TestMysql {
    /// A fresh database with the tables under the default prefix (`Hangfire`).
    pub async fn new() -> Self {
        Self::with_prefix(PREFIX).await
    }

    /// A fresh database with the tables under `prefix`.
    pub async fn with_prefix(prefix: &str) -> Self {
        match Self::try_with_prefix(prefix).await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    async fn try_with_prefix(prefix: &str) -> Result<Self, String> {
        let server = server()?;
        let name = format!("jobagent_t_{:016x}", rand::random::<u64>());
        let mut admin = tokio::time::timeout(Duration::from_secs(10), Conn::new(server.clone()))
            .await
            .map_err(|_| how_to_get_one(&server, "no answer within 10 s"))?
            .map_err(|e| how_to_get_one(&server, &e.to_string()))?;
        admin
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8 COLLATE utf8_general_ci"
            ))
            .await
            .map_err(|e| format!("cannot create a test database: {e}"))?;
        let _ = admin.disconnect().await;
        let opts = mysql_async::OptsBuilder::from_opts(server.clone()).db_name(Some(name.clone()));
        let pool = Pool::new(opts);
        let db = Self {
            pool,
            server,
            name,
            prefix: prefix.to_owned(),
        };
        let mut conn = db.conn().await;
        // As Install.sql lays them out.
        conn.query_drop(format!(
            "CREATE TABLE `{p}DistributedLock` (
               `Resource` nvarchar(100) NOT NULL,
               `CreatedAt` datetime(6) NOT NULL
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;
             CREATE TABLE `{p}Hash` (
               `Id` int(11) NOT NULL AUTO_INCREMENT,
               `Key` nvarchar(100) NOT NULL,
               `Field` nvarchar(40) NOT NULL,
               `Value` longtext,
               `ExpireAt` datetime(6) DEFAULT NULL,
               PRIMARY KEY (`Id`),
               UNIQUE KEY `IX_{p}Hash_Key_Field` (`Key`,`Field`)
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;
             CREATE TABLE `{p}Set` (
               `Id` int(11) NOT NULL AUTO_INCREMENT,
               `Key` nvarchar(100) NOT NULL,
               `Value` nvarchar(256) NOT NULL,
               `Score` float NOT NULL,
               `ExpireAt` datetime DEFAULT NULL,
               PRIMARY KEY (`Id`),
               UNIQUE KEY `IX_{p}Set_Key_Value` (`Key`,`Value`)
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;",
            p = prefix
        ))
        .await
        .map_err(|e| format!("cannot create Hangfire's tables: {e}"))?;
        Ok(db)
    }

    /// A connection to the test database.
    pub async fn conn(&self) -> Conn {
        match tokio::time::timeout(Duration::from_secs(10), self.pool.get_conn()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!("cannot connect to the test database: {e}"),
            Err(_) => panic!("no connection to the test database within 10 s"),
        }
    }

    /// Empties the Hangfire tables (between benchmark measurements).
    pub async fn clear(&self) -> Result<(), String> {
        let mut conn = self.conn().await;
        for table in ["Set", "Hash", "DistributedLock"] {
            conn.query_drop(format!("TRUNCATE TABLE {}", self.table(table)))
                .await
                .map_err(|e| format!("cannot empty {table}: {e}"))?;
        }
        Ok(())
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A table's full name, quoted.
    pub fn table(&self, table: &str) -> String {
        format!("`{}{table}`", self.prefix)
    }

    /// The server's host and port.
    pub fn endpoint(&self) -> (String, u16) {
        (
            self.server.ip_or_hostname().to_owned(),
            self.server.tcp_port(),
        )
    }

    /// The connection string as a center on Hangfire.MySqlStorage holds it (MySqlConnector).
    pub fn connection_string(&self) -> String {
        let (host, port) = self.endpoint();
        self.connection_string_at(&host, port)
    }

    /// The same string naming another endpoint (a proxy in front of the server).
    pub fn connection_string_at(&self, host: &str, port: u16) -> String {
        let mut s = format!(
            "server={host};port={port};database={};uid={};",
            self.name,
            self.server.user().unwrap_or("root"),
        );
        if let Some(pw) = self.server.pass() {
            s.push_str(&format!("pwd='{}';", pw.replace('\'', "''")));
        }
        s.push_str("SslMode=None;");
        s
    }

    /// The same store as a `mysql://` URL.
    pub fn url(&self) -> String {
        let user = self.server.user().unwrap_or("root");
        let auth = match self.server.pass() {
            Some(pw) => format!("{user}:{pw}"),
            None => user.to_owned(),
        };
        format!(
            "mysql://{auth}@{}:{}/{}",
            self.server.ip_or_hostname(),
            self.server.tcp_port(),
            self.name
        )
    }

    /// The store as a center on Hangfire.MySqlStorage sends it (`x-job-storage`).
    pub fn storage(&self) -> Storage {
        Storage::of_kind("mysql", self.connection_string()).table_prefix(self.prefix.clone())
    }

    /// A set's rows as the dashboard reads them: `(Value, Score)` by `Id`.
    pub async fn set_rows(&self, key: &str) -> Vec<(String, f64)> {
        let sql = format!(
            "SELECT `Value`, `Score` FROM {} WHERE `Key` = ? ORDER BY `Id`",
            self.table("Set")
        );
        let mut conn = self.conn().await;
        match conn.exec::<(String, f32), _, _>(sql, (key,)).await {
            Ok(rows) => rows.into_iter().map(|(v, s)| (v, f64::from(s))).collect(),
            Err(e) => panic!("cannot read set {key}: {e}"),
        }
    }

    /// A hash's fields and values, by `Id`.
    pub async fn hash_rows(&self, key: &str) -> Vec<(String, Option<String>)> {
        let sql = format!(
            "SELECT `Field`, `Value` FROM {} WHERE `Key` = ? ORDER BY `Id`",
            self.table("Hash")
        );
        let mut conn = self.conn().await;
        match conn.exec(sql, (key,)).await {
            Ok(rows) => rows,
            Err(e) => panic!("cannot read hash {key}: {e}"),
        }
    }

    /// Seconds until each row of `key` in `table` (`Set` or `Hash`) expires (None: never).
    pub async fn expiry_ahead(&self, table: &str, key: &str) -> Vec<Option<f64>> {
        let sql = format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), `ExpireAt`) / 1e6 FROM {} WHERE `Key` = ? ORDER BY `Id`",
            self.table(table)
        );
        let mut conn = self.conn().await;
        match conn.exec::<Option<f64>, _, _>(sql, (key,)).await {
            Ok(rows) => rows,
            Err(e) => panic!("cannot read the expiry of {key}: {e}"),
        }
    }

    /// Takes the distributed lock on `resource` as Hangfire.MySqlStorage does
    /// (`Hangfire.MySql/MySqlDistributedLock.cs`): insert the row unless one younger than the
    /// timeout exists, tried every 100 ms until `timeout`.
    pub async fn dotnet_lock(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<DotnetMysqlLock, String> {
        let mut conn = self.conn().await;
        let table = self.table("DistributedLock");
        let started = Instant::now();
        loop {
            conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
                .await
                .map_err(|e| e.to_string())?;
            conn.exec_drop(
                format!(
                    "INSERT INTO {table} (Resource, CreatedAt) SELECT ?, UTC_TIMESTAMP(6) FROM dual \
                     WHERE NOT EXISTS (SELECT * FROM {table} WHERE Resource = ? \
                     AND CreatedAt > UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND)"
                ),
                (resource, resource, timeout.as_micros() as u64),
            )
            .await
            .map_err(|e| e.to_string())?;
            if conn.affected_rows() > 0 {
                return Ok(DotnetMysqlLock {
                    conn,
                    table,
                    resource: resource.to_owned(),
                });
            }
            if started.elapsed() >= timeout {
                return Err("cannot acquire lock".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A lock held the way a .NET service holds it on Hangfire.MySqlStorage.
pub struct DotnetMysqlLock {
    conn: Conn,
    table: String,
    resource: String,
}

impl DotnetMysqlLock {
    /// Releases it as Hangfire.MySqlStorage does: deletes the resource's rows.
    pub async fn release(mut self) {
        let sql = format!("DELETE FROM {} WHERE Resource = ?", self.table);
        if let Err(e) = self.conn.exec_drop(sql, (self.resource.as_str(),)).await {
            panic!("cannot release the lock: {e}");
        }
    }
}

impl Drop for TestMysql {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Its own runtime on its own thread: a test's runtime may be shutting down.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let mut conn = tokio::time::timeout(Duration::from_secs(5), Conn::new(server))
                    .await
                    .ok()?
                    .ok()?;
                conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await
                    .ok()?;
                conn.disconnect().await.ok()
            })
        });
        let _ = dropped.join();
    }
}
