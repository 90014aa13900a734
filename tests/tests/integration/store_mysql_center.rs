//! MySQL/MariaDB stores as centers really configure them, each run through the example
//! service as the center dispatches it and read back as the dashboard reads it:
//!
//! - the storages' default **empty table prefix** (tables `Hash`, `Set`; Hangfire.MySqlStorage's
//!   `Hangfire.MySql/MySqlStorageOptions.cs` and Hangfire.Storage.MySql's
//!   `src/Hangfire.Storage.MySql/MySqlStorageOptions.cs`: `DefaultTablesPrefix =
//!   String.Empty`), a **missing** prefix (found from the tables), `hangfire` on
//!   **Hangfire.Storage.MySql**'s schema (`Install/Install.sql` + `Install/Migrations.xml`:
//!   `Score double`, index `(Key, Score, Value)`), and a prefix that needs quoting (`-`);
//! - a center's connection string holding **its driver's other settings** (MySqlConnector's
//!   `MySqlConnectionStringBuilder.cs`, MySql.Data's): ignored with one warning naming them,
//!   files refused, the agent's own string strict;
//! - the dashboard's **paged read** (Hangfire.Console `Dashboard/ConsoleRenderer.cs`
//!   `ReadLines`: `GetSetCount`, then `GetRangeFromSet(start, count - 1)`, the storages'
//!   user-variable rank over `ORDER BY Id`) of a console whose times pass 10 s.

use std::time::{Duration, Instant, SystemTime};

use jobagent::{AgentOptions, StoreType};
use serde_json::{Value, json};
use tests::center::{ConsoleInfo, Storage};
use tests::logs::Logs;
use tests::mysql::{Flavor, TestMysql};
use tests::service::TestService;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";

// --- reading as the center does ---

/// A service whose agent writes where the center's header says.
async fn service() -> TestService {
    // The store is opened on the runtime's threads: the binary's one log catches it.
    Logs::global();
    TestService::start_with(AgentOptions::new()).await
}

/// The console as the dashboard shows it, read in pages with the storage's own statement
/// until a page comes back empty; references resolved.
async fn dashboard_console(db: &TestMysql, console: &ConsoleInfo) -> Vec<Value> {
    let mut raw: Vec<String> = Vec::new();
    loop {
        let page = db.dashboard_page(&console.set_key, raw.len()).await;
        if page.is_empty() {
            break;
        }
        raw.extend(page);
    }
    resolve(db, console, raw).await
}

async fn resolve(db: &TestMysql, console: &ConsoleInfo, raw: Vec<String>) -> Vec<Value> {
    let refs = db.hash_rows(&console.hash_key).await;
    raw.into_iter()
        .map(|r| {
            let mut line: Value = serde_json::from_str(&r)
                .unwrap_or_else(|e| panic!("console line is not JSON ({e}): {r}"));
            if line["r"] == Value::Bool(true) {
                let field = line["s"].as_str().unwrap_or_default().to_owned();
                let text = refs
                    .iter()
                    .find(|(f, _)| *f == field)
                    .and_then(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("reference {field} missing"));
                line["s"] = Value::String(text);
            }
            line
        })
        .collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["s"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The result of `job_id` once the center would see it: the id in set `_agent_result_`
/// (read by the dashboard's statement), then the hash's one field.
async fn wait_result(db: &TestMysql, job_id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let ids = db.dashboard_page("_agent_result_", 0).await;
        if ids.iter().any(|id| id == job_id) {
            let fields = db.hash_rows(&format!("_agent_result_{job_id}")).await;
            assert_eq!(fields.len(), 1, "one result field: {fields:?}");
            let value = fields[0].1.clone().unwrap_or_default();
            return serde_json::from_str(&value)
                .unwrap_or_else(|e| panic!("result is not JSON ({e}): {value}"));
        }
        assert!(
            Instant::now() < deadline,
            "no result for {job_id} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a 5-line job through `service` as a center on `storage` dispatches it; asserts the
/// 200, the result and the console read the dashboard's way.
async fn run_and_read(service: &TestService, db: &TestMysql, storage: &Storage, id: &str) {
    let console = ConsoleInfo::for_job(id);
    service
        .center()
        .with_storage(storage)
        .run(TRANSIENT, id)
        .param(json!({"lines": 5}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = wait_result(db, id, Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert_eq!(result["Id"], id);
    let t = texts(&dashboard_console(db, &console).await);
    assert_eq!(t.len(), 7, "started + 5 + finished: {t:?}");
    let want: Vec<String> = (1..=5).map(|n| format!("【JobAgent】line {n}")).collect();
    assert_eq!(t[1..=5], want[..], "{t:?}");
}

// --- 1. prefixes as given ---

/// The storages' default: no prefix. The center's README sets Hangfire.MySqlStorage up so
/// and sends `"TablePrefix":""`; before, every run was answered 500 (`has no Hangfire table
/// HangfireHash`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_from_a_center_is_empty() {
    let db = TestMysql::with_prefix("").await;
    let service = service().await;
    let storage = db.storage();
    assert_eq!(storage.table_prefix.as_deref(), Some(""));
    run_and_read(&service, &db, &storage, "e1").await;
    // The agent's own rows are in the unprefixed tables too (a second run: same store).
    run_and_read(&service, &db, &storage, "e2").await;
    assert!(
        db.hash_rows("jobagent:results").await.len() >= 2,
        "first reports in `Hash`"
    );
}

/// No `TablePrefix` at all (null, or absent): found from the tables the database holds, and
/// a database holding two sets of Hangfire tables is refused with both named, never guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_prefix_is_found_from_the_tables() {
    let db = TestMysql::with_prefix("").await;
    let service = service().await;
    let mut storage = db.storage();
    storage.table_prefix = None;
    run_and_read(&service, &db, &storage, "n1").await;
    // Absent rather than null.
    let absent = json!({"Type": "mysql", "ExpireAtDays": 7, "HangfireDb": db.connection_string()});
    let console = ConsoleInfo::for_job("n2");
    service
        .center()
        .with_storage_json(absent.to_string())
        .run(TRANSIENT, "n2")
        .param(json!({"lines": 1}))
        .console(console)
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait_result(&db, "n2", Duration::from_secs(10)).await["R"],
        "ok"
    );

    let two = TestMysql::with_prefix("").await;
    two.create_tables("Hangfire", Flavor::MySqlStorage)
        .await
        .expect("a second set of tables");
    let mut storage = two.storage();
    storage.table_prefix = None;
    let reply = service
        .center()
        .with_storage(&storage)
        .run(TRANSIENT, "n3")
        .console(ConsoleInfo::for_job("n3"))
        .send()
        .await;
    reply.assert_err(500);
    assert!(
        reply.body.contains("several prefixes") && reply.body.contains("`Hangfire`"),
        "{}",
        reply.body
    );
    // Given, the same database works.
    run_and_read(&service, &two, &two.storage(), "n4").await;
}

/// The center's own MySQL sample: Hangfire.Storage.MySql 2.1 with `hangfire` (lower case),
/// its migrated schema (`Score double`, index `(Key, Score, Value)`) and the string it
/// sends (`;Allow User Variables=True;` appended, so `;;`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangfire_lower_case_on_storage_mysqls_schema() {
    let db = TestMysql::with_flavor("hangfire", Flavor::StorageMySql).await;
    let service = service().await;
    let storage = db.storage();
    assert!(storage.hangfire_db.contains(";;Allow User Variables=True;"));
    run_and_read(&service, &db, &storage, "h1").await;
}

/// Any name the server takes is a prefix, quoted: `-`, and one with a backtick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_needs_quoting_is_quoted() {
    let service = service().await;
    for prefix in ["-", "hf`x "] {
        let db = TestMysql::with_prefix(prefix).await;
        run_and_read(&service, &db, &db.storage(), "q1").await;
    }
}

/// The agent's own store says "no prefix" with `JOBAGENT_STORE_SCHEMA` set but empty; here
/// the database also holds `Hangfire`-prefixed tables, so nothing else would tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_store_can_say_no_prefix() {
    Logs::global();
    let db = TestMysql::with_prefix("").await;
    db.create_tables("Hangfire", Flavor::MySqlStorage)
        .await
        .expect("a second set of tables");
    let connection = db.connection_string();
    let env = |name: &str| match name {
        "JOBAGENT_STORE" => Some(connection.clone()),
        "JOBAGENT_STORE_TYPE" => Some("mysql".to_owned()),
        "JOBAGENT_STORE_SCHEMA" => Some(String::new()),
        _ => None,
    };
    let options = AgentOptions::from_lookup(env).expect("options");
    let service = TestService::start_with(options).await;
    // The header names other tables: the agent's own store wins.
    let decoy = Storage::of_kind("mysql", "server=127.0.0.1;port=1;database=x;uid=u;");
    let console = ConsoleInfo::for_job("o1");
    service
        .center()
        .with_storage(&decoy)
        .run(TRANSIENT, "o1")
        .param(json!({"lines": 2}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait_result(&db, "o1", Duration::from_secs(10)).await["R"],
        "ok"
    );
    assert_eq!(texts(&dashboard_console(&db, &console).await).len(), 4);
    let mut conn = db.conn().await;
    let prefixed: Option<u64> = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        "SELECT COUNT(*) FROM `HangfireSet`",
    )
    .await
    .expect("count");
    assert_eq!(prefixed, Some(0), "nothing in the other tables");
}

// --- 2. a center's connection string is its driver's ---

/// A MySQL user with a password, for the test's database; dropped with it.
struct User {
    name: String,
    password: String,
}

async fn user_for(db: &TestMysql) -> User {
    let user = User {
        name: format!("ja_{:08x}", rand::random::<u32>()),
        password: format!("Pw-{:016x}", rand::random::<u64>()),
    };
    let mut conn = db.conn().await;
    for host in ["%", "localhost", "127.0.0.1"] {
        let sql = format!(
            "CREATE USER '{u}'@'{host}' IDENTIFIED BY '{p}'; GRANT ALL ON `{d}`.* TO '{u}'@'{host}'",
            u = user.name,
            p = user.password,
            d = db.name()
        );
        mysql_async::prelude::Queryable::query_drop(&mut conn, sql)
            .await
            .expect("create a user");
    }
    user
}

async fn drop_user(db: &TestMysql, user: &User) {
    let mut conn = db.conn().await;
    for host in ["%", "localhost", "127.0.0.1"] {
        let _ = mysql_async::prelude::Queryable::query_drop(
            &mut conn,
            format!("DROP USER IF EXISTS '{}'@'{host}'", user.name),
        )
        .await;
    }
}

/// Settings of MySqlConnector and MySql.Data the agent has no use for: the run is answered
/// 200 and lands, one warning per store names the keys (never a value, never the password).
/// Before, every run was a 500 (`pair 6 has an unknown key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_centers_string_with_its_drivers_settings_works() {
    let db = TestMysql::with_prefix("").await;
    let user = user_for(&db).await;
    let service = service().await;
    let (host, port) = db.endpoint();
    let connection = format!(
        "server={host};port={port};database={};uid={};pwd={};SslMode=None;Pipelining=false;\
         Respect Binary Flags=true;Certificate Password=CertPw-123;Use Performance Monitor=False;\
         Connection Idle Ping Time=5;;Allow User Variables=True;",
        db.name(),
        user.name,
        user.password
    );
    let storage = Storage::of_kind("mysql", connection).table_prefix("");
    for id in ["f1", "f2", "f3"] {
        run_and_read(&service, &db, &storage, id).await;
    }
    let log = Logs::global().text();
    drop_user(&db, &user).await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(db.name()) && l.contains("WARN") && l.contains("no use for"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per store: {warnings:#?}");
    for key in [
        "Pipelining",
        "Respect Binary Flags",
        "Certificate Password",
        "Use Performance Monitor",
        "Connection Idle Ping Time",
    ] {
        assert!(warnings[0].contains(key), "{key} named: {}", warnings[0]);
    }
    assert!(
        !warnings[0].contains("Allow User Variables"),
        "{}",
        warnings[0]
    );
    for secret in [user.password.as_str(), "CertPw-123"] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
}

/// A key naming a file on the agent's machine stays refused from a center: a 500 that names
/// the key (never the path), nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_centers_string_is_refused() {
    let db = TestMysql::with_prefix("").await;
    let service = service().await;
    for (setting, named) in [
        ("SslCa=/etc/ssl/certs/ca-certificates.crt", "SSL CA"),
        (
            "Server RSA Public Key File=/etc/hostname",
            "Server RSA Public Key File",
        ),
    ] {
        let storage = Storage::of_kind(
            "mysql",
            format!("{}Pipelining=false;{setting};", db.connection_string()),
        )
        .table_prefix("");
        let reply = service
            .center()
            .with_storage(&storage)
            .run(TRANSIENT, "x1")
            .console(ConsoleInfo::for_job("x1"))
            .send()
            .await;
        reply.assert_err(500);
        assert!(
            reply.body.contains(&format!("`{named}`")) && reply.body.contains("file"),
            "{}",
            reply.body
        );
        assert!(!reply.body.contains("/etc/"), "{}", reply.body);
    }
    assert!(db.hash_rows("_agent_result_x1").await.is_empty());
}

/// The agent's own string stays strict: a setting it has no use for, or a typo, is refused
/// when the agent is built, naming the variable and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_string_is_strict_at_start_up() {
    let db = TestMysql::with_prefix("").await;
    for extra in ["Pipelining=false;", "Databse=x;"] {
        let connection = format!("{}{extra}", db.connection_string());
        let env = |name: &str| match name {
            "JOBAGENT_STORE" => Some(connection.clone()),
            "JOBAGENT_STORE_TYPE" => Some("mysql".to_owned()),
            _ => None,
        };
        let options = AgentOptions::from_lookup(env).expect("read");
        let e = match example_agent::Service::new(options) {
            Ok(_) => panic!("{extra} accepted at start-up"),
            Err(e) => e.to_string(),
        };
        let key = extra.split('=').next().unwrap_or_default();
        assert!(
            e.contains("JOBAGENT_STORE") && e.contains(&format!("`{key}`")),
            "{e}"
        );
    }
    // The builder takes the same path.
    let options = AgentOptions::new()
        .store(
            format!("{}Pipelining=false;", db.connection_string()),
            "",
            7.0,
        )
        .store_type(StoreType::MySql);
    assert!(example_agent::Service::new(options).is_err());
}

// --- 8. the dashboard's paged read ---

/// A console whose times pass 10 s (`{"t":9.9...` then `{"t":10.0...`: in `Value` order the
/// later lines would sort first), read while the job writes it, page by page with each
/// storage's own statement on MariaDB: every line once, in write order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_paged_read_finds_write_order() {
    let service = service().await;
    for (flavor, prefix) in [
        (Flavor::MySqlStorage, ""),
        (Flavor::StorageMySql, "hangfire"),
    ] {
        let db = TestMysql::with_flavor(prefix, flavor).await;
        // Started 9.4 s ago: the lines' times run from about 9.4 s to 10.9 s.
        let started = SystemTime::now() - Duration::from_millis(9_400);
        let console = ConsoleInfo::for_job_at("p1", started);
        service
            .center()
            .with_storage(&db.storage())
            .run(TRANSIENT, "p1")
            .param(json!({"lines": 60, "sleep_ms": 1_500}))
            .console(console.clone())
            .send()
            .await
            .assert_status(200);
        // As the dashboard polls: each page from the count read so far.
        let mut raw: Vec<String> = Vec::new();
        let mut pages = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let done = !db.hash_rows("_agent_result_p1").await.is_empty();
            let page = db.dashboard_page(&console.set_key, raw.len()).await;
            if !page.is_empty() {
                pages += 1;
                raw.extend(page);
            }
            if done
                && db
                    .dashboard_page(&console.set_key, raw.len())
                    .await
                    .is_empty()
            {
                break;
            }
            assert!(Instant::now() < deadline, "{flavor:?}: the job did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(pages > 1, "{flavor:?}: read in {pages} page(s)");
        let lines = resolve(&db, &console, raw.clone()).await;
        let t = texts(&lines);
        assert_eq!(t.len(), 62, "{flavor:?}: {t:?}");
        let want: Vec<String> = (1..=60).map(|n| format!("【JobAgent】line {n}")).collect();
        assert_eq!(t[1..=60], want[..], "{flavor:?}");
        let times: Vec<f64> = lines
            .iter()
            .map(|l| l["t"].as_f64().unwrap_or(0.0))
            .collect();
        assert!(
            times.first().is_some_and(|t| *t < 10.0) && times.last().is_some_and(|t| *t >= 10.0),
            "{flavor:?}: times pass 10 s: {times:?}"
        );
        assert!(times.windows(2).all(|w| w[1] > w[0]), "{times:?}");
        // What the test tells apart: in `Value` order the lines past 10 s would come first.
        let mut by_value = raw.clone();
        by_value.sort();
        assert_ne!(
            by_value, raw,
            "{flavor:?}: write order is not value order here"
        );
        // And the whole read equals the plain `ORDER BY Id` one.
        let by_id: Vec<String> = db
            .set_rows(&console.set_key)
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(by_id, raw, "{flavor:?}");
    }
}
