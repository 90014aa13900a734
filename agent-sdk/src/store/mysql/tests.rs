//! Tests of the MySQL store: the 4-byte rules, and the operations against a real server
//! (`JOBAGENT_TEST_MYSQL_URL`, else root without a password at 127.0.0.1:3306).

use super::*;

#[test]
fn prefixes() {
    // Any name the server accepts, quoted; a too long one is refused.
    let store = MysqlStore::open("Server=h;Database=d", Some("a`b;-"), false).expect("accepted");
    assert_eq!(
        store.tables.get().map(|t| t.hash.as_str()),
        Some("`a``b;-Hash`")
    );
    let empty = MysqlStore::open("Server=h;Database=d", Some(""), true).expect("empty");
    assert_eq!(empty.tables.get().map(|t| t.set.as_str()), Some("`Set`"));
    let e = MysqlStore::open("Server=h;Database=d", Some(&"x".repeat(50)), false)
        .expect_err("too long");
    assert!(e.contains("prefix"), "{e}");
    // None given: nothing known until the tables are looked at.
    let find = MysqlStore::open("Server=h;Database=d", None, true).expect("find");
    assert!(find.tables.get().is_none());
    assert_ne!(find.identity(), empty.identity());
}

#[test]
fn open_rules() {
    let store = MysqlStore::open(
        "Server=db;Database=d;Uid=u;Pwd=hunter2",
        Some("Hangfire"),
        true,
    )
    .expect("ok");
    assert_eq!(store.label(), "db:3306/d");
    assert_eq!(store.hosts(), vec!["db".to_owned()]);
    assert!(!store.identity().contains("hunter2"));
    assert!(!format!("{store:?}").contains("hunter2"));
    assert_eq!(
        store.tables.get().map(|t| t.hash.as_str()),
        Some("`HangfireHash`")
    );
    assert!(
        MysqlStore::open("Server=db;Uid=u", Some("Hangfire"), false)
            .expect_err("no database")
            .contains("`Database`")
    );
    // Files are refused from the center (naming the key, never the path), taken locally.
    for key in ["SslCa", "Ssl-Ca", "CACertificateFile"] {
        let s = format!("Server=db;Database=d;SslMode=VerifyFull;{key}=/etc/secret/ca.pem");
        let e = MysqlStore::open(&s, Some("Hangfire"), true).expect_err("refused");
        assert!(e.contains("`SSL CA`") && !e.contains("/etc/secret"), "{e}");
        assert!(MysqlStore::open(&s, Some("Hangfire"), false).is_ok());
    }
    let e = MysqlStore::open(
        "Server=db;Database=d;SslCert=/c.pem;SslKey=/k.pem",
        Some("Hangfire"),
        true,
    )
    .expect_err("refused");
    assert!(e.contains("`SSL Cert`") && e.contains("`SSL Key`") && !e.contains("/k.pem"));
    // Files the agent would not even read are refused from a center too.
    let e = MysqlStore::open(
        "Server=db;Database=d;ServerRSAPublicKeyFile=/srv/key.pem",
        Some(""),
        true,
    )
    .expect_err("refused");
    assert!(
        e.contains("`Server RSA Public Key File`") && !e.contains("/srv"),
        "{e}"
    );
    // A center's driver settings are ignored; the agent's own string is strict.
    let s = "Server=db;Database=d;Pwd=hunter2;Pipelining=false;Respect Binary Flags=true";
    assert!(MysqlStore::open(s, Some(""), true).is_ok());
    let e = MysqlStore::open(s, Some(""), false).expect_err("strict");
    assert!(e.contains("`Pipelining`") && !e.contains("hunter2"), "{e}");
    // Another prefix is another store.
    let other = MysqlStore::open(
        "Server=db;Database=d;Uid=u;Pwd=hunter2",
        Some("Other"),
        true,
    )
    .expect("ok");
    assert_ne!(store.identity(), other.identity());
}

#[test]
fn wide_characters_are_escaped_as_surrogate_pairs() {
    assert_eq!(escape_wide(r#"{"s":"a😀b"}"#), r#"{"s":"a\ud83d\ude00b"}"#);
    assert_eq!(escape_wide("𝄞"), r"\ud834\udd1e");
    assert!(matches!(escape_wide("plain ü 字"), Cow::Borrowed(_)));
    assert_eq!(replace_wide("a😀字"), "a\u{FFFD}字");
    // The escaped JSON parses back to the character.
    let parsed: serde_json::Value =
        serde_json::from_str(&escape_wide(r#"{"s":"hi 😀"}"#)).expect("JSON");
    assert_eq!(parsed["s"], "hi 😀");
}

#[test]
fn a_narrow_line_too_long_when_escaped_becomes_a_reference() {
    // Short: escaped in place.
    let (v, moved) = narrow_line(r##"{"t":1.5,"s":"ok 😀","c":"#ffffff"}"##, "console:1");
    assert_eq!(v, r##"{"t":1.5,"s":"ok \ud83d\ude00","c":"#ffffff"}"##);
    assert!(moved.is_none());
    // 60 emoji: 180 characters of JSON, 720 once escaped.
    let text = "😀".repeat(60);
    let value = format!(r##"{{"t":2.0001,"s":"{text}","c":"#ff0000"}}"##);
    let (v, moved) = narrow_line(&value, "console:1");
    let (field, kept) = moved.expect("moved to the hash");
    assert_eq!(kept, text);
    assert_eq!(field.len(), 32);
    assert_eq!(
        v,
        format!(r##"{{"t":2.0001,"r":true,"s":"{field}","c":"#ff0000"}}"##)
    );
    // Same line, same field: a retried batch writes the same row.
    assert_eq!(
        narrow_line(&value, "console:1").1.map(|m| m.0),
        Some(field.clone())
    );
    assert_ne!(narrow_line(&value, "console:2").1.map(|m| m.0), Some(field));
    // A progress line cannot become a reference: U+FFFD instead.
    let progress = format!(r#"{{"t":3.0,"s":"1","p":50.0,"n":"{text}"}}"#);
    let (v, moved) = narrow_line(&progress, "console:1");
    assert!(moved.is_none());
    assert!(v.chars().count() <= SET_VALUE_CHARS);
    assert!(v.contains('\u{FFFD}') && v.contains(r#""p":50.0"#), "{v}");
}

#[test]
fn chunks_stay_within_the_budget_in_order() {
    assert_eq!(chunks(&[], 0, 10), Vec::<Range<usize>>::new());
    assert_eq!(chunks(&[4, 4, 4], 0, 8), vec![0..2, 2..3]);
    assert_eq!(chunks(&[20, 1], 0, 8), vec![0..1, 1..2]);
    assert_eq!(chunks(&[1; 2500], 0, usize::MAX).len(), 3);
    assert_eq!(fit("abc", 10), "abc");
    let cut = fit("ééééé", 6);
    assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
}

// --- against a real server ---

/// The test server's URL.
fn server_url() -> String {
    std::env::var("JOBAGENT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".to_owned())
}

/// A fresh database with Hangfire.MySqlStorage's three tables (as Install.sql lays them
/// out, prefix `Hangfire`, charset utf8), and a store on it with `extra` settings; dropped
/// by [`TestDb::drop_now`].
struct TestDb {
    admin: mysql_async::Conn,
    name: String,
    spec: MyConnSpec,
}

impl TestDb {
    async fn create() -> Self {
        let url = server_url();
        let spec = connstr::parse(&url).expect("JOBAGENT_TEST_MYSQL_URL parses");
        let mut admin_spec = spec.clone();
        admin_spec.database = None;
        let connect = mysql_async::Conn::new(opts_of(&admin_spec, SslMode::Disabled));
        let mut admin = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!("{}", no_server(describe(&e).message())),
            Err(_) => panic!("{}", no_server("no answer within 10 s")),
        };
        let name = format!("jobagent_u_{:016x}", rand::random::<u64>());
        admin
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8 COLLATE utf8_general_ci"
            ))
            .await
            .expect("CREATE DATABASE");
        for table in [
            "CREATE TABLE `{db}`.`HangfireDistributedLock` (\
               `Resource` nvarchar(100) NOT NULL,\
               `CreatedAt` datetime(6) NOT NULL\
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci",
            "CREATE TABLE `{db}`.`HangfireHash` (\
               `Id` int(11) NOT NULL AUTO_INCREMENT,\
               `Key` nvarchar(100) NOT NULL,\
               `Field` nvarchar(40) NOT NULL,\
               `Value` longtext,\
               `ExpireAt` datetime(6) DEFAULT NULL,\
               PRIMARY KEY (`Id`),\
               UNIQUE KEY `IX_HangfireHash_Key_Field` (`Key`,`Field`)\
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci",
            "CREATE TABLE `{db}`.`HangfireSet` (\
               `Id` int(11) NOT NULL AUTO_INCREMENT,\
               `Key` nvarchar(100) NOT NULL,\
               `Value` nvarchar(256) NOT NULL,\
               `Score` float NOT NULL,\
               `ExpireAt` datetime DEFAULT NULL,\
               PRIMARY KEY (`Id`),\
               UNIQUE KEY `IX_HangfireSet_Key_Value` (`Key`,`Value`)\
             ) ENGINE=InnoDB DEFAULT CHARACTER SET utf8 COLLATE utf8_general_ci",
        ] {
            admin
                .query_drop(table.replace("{db}", &name))
                .await
                .expect("CREATE TABLE");
        }
        let mut spec = spec;
        spec.database = Some(name.clone());
        Self { admin, name, spec }
    }

    fn store(&self, prefix: &str) -> MysqlStore {
        MysqlStore::from_spec(&self.spec, Prefix::Given(prefix.to_owned()), false).expect("opens")
    }

    async fn drop_now(mut self) {
        let _ = self
            .admin
            .query_drop(format!("DROP DATABASE `{}`", self.name))
            .await;
        let _ = self.admin.disconnect().await;
    }
}

fn no_server(error: &str) -> String {
    // The label, not the URL: the URL may hold a password.
    let at =
        connstr::parse(&server_url()).map_or_else(|_| "the test URL".to_owned(), |s| s.label());
    format!(
        "no MySQL/MariaDB server answers at {at} ({error}). These tests need one: start MariaDB \
         locally (e.g. `apt-get install mariadb-server && service mariadb start`, or \
         `docker run -d -p 3306:3306 -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 mariadb:11`), or \
         set JOBAGENT_TEST_MYSQL_URL=mysql://user:password@host:port/ to a server where that \
         user may create databases",
    )
}

fn line(t: f64, text: &str) -> EncodedLine {
    let value = format!(
        r##"{{"t":{t:?},"s":{},"c":"#ffffff"}}"##,
        serde_json::to_string(text).expect("JSON")
    );
    EncodedLine {
        value,
        score: t,
        reference: None,
        progress_field: None,
    }
}

fn texts(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            let parsed: serde_json::Value = serde_json::from_str(v).expect("a JSON line");
            parsed["s"].as_str().expect("s").to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn against_a_real_server() {
    let db = TestDb::create().await;
    // A test's own task, joined at once (so a panic in it is caught and the database dropped).
    let outcome = tokio::spawn(run_all(db.store("Hangfire"), db.store("Nope"))).await;
    db.drop_now().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run_all(store: MysqlStore, missing: MysqlStore) {
    store.ping().await.expect("ping");
    let e = missing.ensure_learned().await.expect_err("no such tables");
    assert!(
        e.contains("`NopeHash`") && e.contains("does not create"),
        "{e}"
    );
    assert!(missing.check_tables(Duration::from_secs(5)).await.is_err());
    store
        .check_tables(Duration::from_secs(5))
        .await
        .map_err(|e| format!("{e:?}"))
        .expect("tables present");
    assert!(store.tables_seen.load(Ordering::Acquire));
    assert!(store.narrow_set.load(Ordering::Acquire), "utf8 is utf8mb3");
    assert!(store.narrow_hash.load(Ordering::Acquire));
    assert!(store.packet.load(Ordering::Acquire) >= 1024);

    console(&store).await;
    results(&store).await;
    locks(&store).await;
    fences(&store).await;
    hashes_and_sets(&store).await;
}

async fn console(store: &MysqlStore) {
    let week = Duration::from_secs(7 * 86_400);
    let (set, hash) = ("console:1", "console-refs:1");
    let lines: Vec<EncodedLine> = (0..5)
        .map(|i| line(i as f64 + 0.5, &format!("line {i}")))
        .collect();
    // The first three, then a retry of the whole batch (as after an unknown outcome).
    store
        .write_console(set, hash, &lines[..3], week)
        .await
        .expect("first write");
    store
        .write_console(set, hash, &lines, week)
        .await
        .expect("retry");
    store
        .write_console(set, hash, &lines, week)
        .await
        .expect("retry again");
    let read = store.read_set(set, 0, 100).await.expect("read");
    assert_eq!(
        texts(&read),
        (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        texts(&store.read_set(set, 1, 2).await.expect("page")),
        ["line 1", "line 2"]
    );

    // A reference and progress.
    let mut reference = line(10.0, "");
    reference.value =
        r##"{"t":10.0,"r":true,"s":"0123456789abcdef0123456789abcdef","c":"#ffffff"}"##.to_owned();
    let long = format!("{} 😀 end", "long text ".repeat(100));
    reference.reference = Some(("0123456789abcdef0123456789abcdef".to_owned(), long.clone()));
    let mut progress = line(11.0, "1");
    progress.value = r#"{"t":11.0,"s":"1","p":42.0}"#.to_owned();
    progress.progress_field = Some("42.0".to_owned());
    let mut progress2 = line(12.0, "1");
    progress2.value = r#"{"t":12.0,"s":"1","p":43.5}"#.to_owned();
    progress2.progress_field = Some("43.5".to_owned());
    // Emoji: one short (escaped in place), one long once escaped (moved to the hash).
    let emoji = line(13.0, "done 😀");
    let many = line(14.0, &"🎉".repeat(60));
    store
        .write_console(
            set,
            hash,
            &[reference, progress, progress2, emoji, many],
            week,
        )
        .await
        .expect("write");
    assert_eq!(
        store
            .get(hash, "0123456789abcdef0123456789abcdef")
            .await
            .expect("read"),
        Some(long.replace('😀', "\u{FFFD}")),
        "the Hash column is utf8mb3: U+FFFD for the emoji"
    );
    assert_eq!(
        store.get(hash, "progress").await.expect("read").as_deref(),
        Some("43.5")
    );
    let read = store.read_set(set, 5, 100).await.expect("read");
    assert_eq!(read.len(), 5);
    let emoji: serde_json::Value = serde_json::from_str(&read[3]).expect("JSON");
    assert_eq!(emoji["s"], "done 😀", "{}", read[3]);
    let many: serde_json::Value = serde_json::from_str(&read[4]).expect("JSON");
    assert_eq!(many["r"], true, "{}", read[4]);
    let field = many["s"].as_str().expect("field");
    assert_eq!(
        store.get(hash, field).await.expect("read"),
        Some("\u{FFFD}".repeat(60))
    );
    assert_eq!(store.get(hash, "absent").await.expect("read"), None);

    // A batch bigger than one statement (a tiny budget forces several), still in order.
    store.packet.store(1024, Ordering::Release);
    let big: Vec<EncodedLine> = (0..3000)
        .map(|i| {
            line(
                100.0 + i as f64,
                &format!("bulk {i:04} {}", "x".repeat(150)),
            )
        })
        .collect();
    store
        .write_console("console:2", hash, &big, week)
        .await
        .expect("big");
    store
        .write_console("console:2", hash, &big, week)
        .await
        .expect("big retry");
    let read = store.read_set("console:2", 0, 10_000).await.expect("read");
    assert_eq!(read.len(), 3000);
    assert!(
        texts(&read)
            .iter()
            .enumerate()
            .all(|(i, t)| t.starts_with(&format!("bulk {i:04} ")))
    );
    store.packet.store(ASSUMED_PACKET, Ordering::Release);
}

async fn results(store: &MysqlStore) {
    let day = Duration::from_secs(86_400);
    assert!(store.first_report("42", "a:1", day).await.expect("first"));
    assert!(store.first_report("42", "a:1", day).await.expect("retry"));
    assert!(!store.first_report("42", "b:2", day).await.expect("other"));
    assert!(
        !store
            .first_report("42", "A:1", day)
            .await
            .expect("case differs")
    );
    assert_eq!(
        store.get(RESULTS_KEY, "42").await.expect("read").as_deref(),
        Some("a:1")
    );
}

async fn locks(store: &MysqlStore) {
    let stale = Duration::from_secs(60);
    let owner = store
        .lock_try("job:7", stale)
        .await
        .expect("try")
        .expect("taken");
    assert_eq!(owner.len(), "2024-01-01 00:00:00.000000".len(), "{owner}");
    assert_eq!(store.lock_try("job:7", stale).await.expect("try"), None);
    let kept = store
        .lock_keep("job:7", &owner)
        .await
        .expect("keep")
        .expect("held");
    assert!(kept > owner, "{kept} after {owner}");
    assert_eq!(
        store.lock_keep("job:7", &owner).await.expect("keep"),
        None,
        "stale owner"
    );
    // Releasing with a wrong owner leaves the lock held.
    store.lock_release("job:7", &owner).await.expect("release");
    assert_eq!(store.lock_try("job:7", stale).await.expect("try"), None);
    store.lock_release("job:7", &kept).await.expect("release");
    let again = store
        .lock_try("job:7", stale)
        .await
        .expect("try")
        .expect("free again");
    store.lock_release("job:7", &again).await.expect("release");

    // A row older than stale_after (a holder that died) is taken over, and its holder
    // learns it lost the lock.
    let mut c = store.conn().await.expect("conn");
    let old: Option<String> = c
        .bound(|c| {
            c.query_first(format!(
                "SELECT DATE_FORMAT(UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE, {OWNER_FORMAT})"
            ))
        })
        .await
        .expect("time");
    let old = old.expect("a time");
    let insert = format!(
        "INSERT INTO {} (`Resource`, `CreatedAt`) VALUES ('job:8', CAST(? AS DATETIME(6)))",
        store.tables.get().expect("given").lock
    );
    c.bound(|c| c.exec_drop(insert.as_str(), vec![Value::from(old.as_str())]))
        .await
        .expect("insert");
    drop(c);
    assert_eq!(
        store
            .lock_try("job:8", Duration::from_secs(600))
            .await
            .expect("try"),
        None,
        "not stale under a longer bound"
    );
    let taken = store
        .lock_try("job:8", stale)
        .await
        .expect("try")
        .expect("taken over");
    assert_eq!(store.lock_keep("job:8", &old).await.expect("keep"), None);
    assert!(
        store
            .lock_keep("job:8", &taken)
            .await
            .expect("keep")
            .is_some()
    );
}

async fn fences(store: &MysqlStore) {
    assert_eq!(store.fence("job:7").await.expect("fence"), 1);
    assert_eq!(store.fence("job:7").await.expect("fence"), 2);
    assert_eq!(store.fence("job:7").await.expect("fence"), 3);
    assert_eq!(store.fence("job:8").await.expect("fence"), 1);
    // Concurrent increments each get their own token.
    let mut tokens = futures_util::future::join_all((0..8).map(|_| store.fence("job:9")))
        .await
        .into_iter()
        .map(|t| t.expect("fence"))
        .collect::<Vec<_>>();
    tokens.sort_unstable();
    assert_eq!(tokens, (1..=8).collect::<Vec<u64>>());
}

async fn hashes_and_sets(store: &MysqlStore) {
    store
        .set_hash("h:1", &[("a", "1"), ("b", "x 😀")], None)
        .await
        .expect("set");
    store
        .set_hash("h:1", &[("a", "2")], Some(Duration::from_secs(60)))
        .await
        .expect("set");
    assert_eq!(
        store.get("h:1", "a").await.expect("read").as_deref(),
        Some("2")
    );
    assert_eq!(
        store.get("h:1", "b").await.expect("read").as_deref(),
        Some("x \u{FFFD}")
    );
    store
        .add_to_set("_agent_result_", "17", 1.0, Duration::from_secs(60))
        .await
        .expect("add");
    store
        .add_to_set("_agent_result_", "17", 2.0, Duration::from_secs(60))
        .await
        .expect("add again");
    assert_eq!(
        store.read_set("_agent_result_", 0, 10).await.expect("read"),
        ["17"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_past_its_command_timeout_fails_and_its_connection_is_not_reused() {
    let mut db = TestDb::create().await;
    db.spec.command_timeout = Some(Duration::from_secs(1));
    db.spec.max_pool = 1;
    let store = db.store("Hangfire");
    // A test's own task, joined at once (so a panic in it is caught and the database dropped).
    let outcome = tokio::spawn(async move {
        let mut c = store.conn().await.expect("conn");
        let id: Option<u64> = c
            .bound(|c| c.query_first("SELECT CONNECTION_ID()"))
            .await
            .expect("id");
        let started = std::time::Instant::now();
        let e = c
            .bound(|c| c.query_drop("SELECT SLEEP(5)"))
            .await
            .expect_err("past Command Timeout");
        assert!(e.contains("Command Timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(c.is_poisoned());
        drop(c);
        // The one slot is free again, on another session that answers at once.
        let started = std::time::Instant::now();
        let mut c = store.conn().await.expect("a new connection");
        let other: Option<u64> = c
            .bound(|c| c.query_first("SELECT CONNECTION_ID()"))
            .await
            .expect("id");
        assert_ne!(id, other);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A server-side error keeps the connection.
        assert!(
            c.bound(|c| c.query_drop("SELECT * FROM nowhere"))
                .await
                .is_err()
        );
        assert!(!c.is_poisoned());
    })
    .await;
    db.drop_now().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
