//! A MySQL/MariaDB harness: one fresh database per test with the tables a center's MySQL
//! storage creates ([`Flavor`]: Hangfire.MySqlStorage's `Hangfire.MySql/Install.sql` in
//! arnoldasgudas/Hangfire.MySqlStorage, or Hangfire.Storage.MySql's `Install.sql` and
//! `Migrations.xml` in MiloszKrajewski/Hangfire.Storage.MySql: `<P>Hash`, `<P>Set`,
//! `<P>DistributedLock`, charset `utf8`), read the way the dashboard reads them (a set
//! `ORDER BY Id`, or paged with the storage's own statement: [`TestMysql::dashboard_page`]).
//!
//! The server comes from `JOBAGENT_TEST_MYSQL_URL` (a `mysql://` URL), else
//! `mysql://root@127.0.0.1:3306`. Without a server, [`TestMysql::new`] fails and says how to
//! get one; it never skips.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool, Value};

use crate::center::Storage;

/// The environment variable naming the server to test against.
pub const MYSQL_URL_VAR: &str = "JOBAGENT_TEST_MYSQL_URL";
/// The server tried when the variable is not set.
const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306";
/// Hangfire.MySqlStorage's default table prefix.
pub const PREFIX: &str = "Hangfire";

/// Which MySQL storage a center runs, which decides its tables and dashboard statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// arnoldasgudas/Hangfire.MySqlStorage (`Hangfire.MySql/Install.sql`: `Score float`).
    MySqlStorage,
    /// MiloszKrajewski/Hangfire.Storage.MySql 2.x, which the center's own MySQL sample runs:
    /// `src/Hangfire.Storage.MySql/Install/Install.sql`, then `Migrations.xml` (`Score
    /// double`, index `(Key, Score, Value)`); it appends `;Allow User Variables=True;` to the
    /// connection string.
    StorageMySql,
}

/// A fresh database with a MySQL storage's tables; dropped at the end of the test.
pub struct TestMysql {
    pool: Pool,
    server: Opts,
    name: String,
    prefix: String,
    flavor: Flavor,
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

    /// A fresh database with Hangfire.MySqlStorage's tables under `prefix`.
    pub async fn with_prefix(prefix: &str) -> Self {
        Self::with_flavor(prefix, Flavor::MySqlStorage).await
    }

    /// A fresh database with `flavor`'s tables under `prefix`.
    pub async fn with_flavor(prefix: &str, flavor: Flavor) -> Self {
        match Self::try_with_flavor(prefix, flavor).await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    async fn try_with_flavor(prefix: &str, flavor: Flavor) -> Result<Self, String> {
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
            flavor,
        };
        db.create_tables(prefix, flavor).await?;
        Ok(db)
    }

    /// Creates `flavor`'s tables under `prefix` (another storage in the same database).
    pub async fn create_tables(&self, prefix: &str, flavor: Flavor) -> Result<(), String> {
        let mut conn = self.conn().await;
        let p = prefix.replace('`', "``");
        // As Install.sql lays them out (both storages' are alike for these three tables).
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
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci;"
        ))
        .await
        .map_err(|e| format!("cannot create Hangfire's tables: {e}"))?;
        if flavor == Flavor::StorageMySql {
            // Migrations.xml: `index-pack-1` (the three tables' indexes), then
            // `set.score-to-double`.
            conn.query_drop(format!(
                "CREATE INDEX `IX_Set_ExpireAt` ON `{p}Set` (`ExpireAt`);
                 CREATE INDEX `IX_Hash_ExpireAt` ON `{p}Hash` (`ExpireAt`);
                 CREATE INDEX `IX_Set_KeyScore` ON `{p}Set` (`Key`, `Score`, `Value`);
                 CREATE INDEX `IX_DistributedLock_Resource` ON `{p}DistributedLock` (`Resource`, `CreatedAt`);
                 ALTER TABLE `{p}Set` MODIFY `Score` double NOT NULL;"
            ))
            .await
            .map_err(|e| format!("cannot migrate Hangfire.Storage.MySql's tables: {e}"))?;
        }
        Ok(())
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

    /// The storage whose tables it has.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// A table's full name, quoted (a backtick doubled).
    pub fn table(&self, table: &str) -> String {
        format!("`{}{table}`", self.prefix.replace('`', "``"))
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

    /// The store as a center on this storage sends it (`x-job-storage`): Hangfire.Storage.MySql
    /// appends `;Allow User Variables=True;` to the string (hence `;;`).
    pub fn storage(&self) -> Storage {
        let mut connection = self.connection_string();
        if self.flavor == Flavor::StorageMySql {
            connection.push_str(";Allow User Variables=True;");
        }
        Storage::of_kind("mysql", connection).table_prefix(self.prefix.clone())
    }

    /// A set's rows as the dashboard reads them: `(Value, Score)` by `Id`.
    pub async fn set_rows(&self, key: &str) -> Vec<(String, f64)> {
        let sql = format!(
            "SELECT `Value`, `Score` FROM {} WHERE `Key` = ? ORDER BY `Id`",
            self.table("Set")
        );
        let mut conn = self.conn().await;
        match conn.exec::<(String, Value), _, _>(sql, (key,)).await {
            Ok(rows) => rows.into_iter().map(|(v, s)| (v, score(s))).collect(),
            Err(e) => panic!("cannot read set {key}: {e}"),
        }
    }

    /// One page of a set as the dashboard reads it from this storage, from `start` on.
    /// Hangfire.Console's `ConsoleRenderer.ReadLines` asks `GetSetCount` for the count, then
    /// `GetRangeFromSet(key, start, count - 1)`, which runs the storage's own statement
    /// (Hangfire.MySqlStorage `Hangfire.MySql/MySqlStorageConnection.cs`, Hangfire.Storage.MySql
    /// `src/Hangfire.Storage.MySql/MySqlStorageConnection.cs`): a user-variable rank over
    /// `ORDER BY Id` in a derived table, then `rank BETWEEN start + 1 AND end + 1`, sent as
    /// text with the values inlined, as MySqlConnector sends Dapper's parameters.
    pub async fn dashboard_page(&self, key: &str, start: usize) -> Vec<String> {
        let set = self.table("Set");
        let key_sql = Value::from(key).as_sql(false);
        let mut conn = self.conn().await;
        let count: Option<u64> = conn
            .query_first(format!(
                "select count(`Key`) from {set} where `Key` = {key_sql}"
            ))
            .await
            .unwrap_or_else(|e| panic!("cannot count set {key}: {e}"));
        let count = usize::try_from(count.unwrap_or(0)).unwrap_or(usize::MAX);
        if count <= start {
            return Vec::new();
        }
        // MySqlStorage quotes the alias (`rank` is a keyword on MySQL 8); Storage.MySql does not.
        let rank = match self.flavor {
            Flavor::MySqlStorage => "'rank'",
            Flavor::StorageMySql => "rank",
        };
        let sql = format!(
            "select `Value` \nfrom (\n\t    select `Value`, @rownum := @rownum + 1 AS {rank}\n\t    from {set},\n            (select @rownum := 0) r \n        where `Key` = {key_sql}\n        order by Id\n     ) ranked\nwhere ranked.rank between {} and {}",
            start + 1,
            count
        );
        conn.query(sql)
            .await
            .unwrap_or_else(|e| panic!("cannot read a page of set {key}: {e}"))
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

/// A `Score` as read: `float` on Hangfire.MySqlStorage, `double` on Hangfire.Storage.MySql.
fn score(v: Value) -> f64 {
    match v {
        Value::Float(f) => f64::from(f),
        Value::Double(d) => d,
        Value::Bytes(b) => String::from_utf8_lossy(&b).parse().unwrap_or(f64::NAN),
        other => panic!("a Score that is not a number: {other:?}"),
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
