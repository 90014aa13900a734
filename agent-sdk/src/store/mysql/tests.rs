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

use crate::store::conformance::real::{line, texts};
use crate::store::conformance::{MysqlDb, guarded};

/// A fresh database with Hangfire.MySqlStorage's tables (see [`MysqlDb`]), and its spec for
/// stores with other settings.
struct TestDb {
    db: MysqlDb,
    spec: MyConnSpec,
}

impl TestDb {
    async fn create() -> Self {
        let db = MysqlDb::create().await;
        let spec = connstr::parse(&db.url).expect("JOBAGENT_TEST_MYSQL_URL parses");
        Self { db, spec }
    }

    fn store(&self, prefix: &str) -> MysqlStore {
        MysqlStore::from_spec(&self.spec, Prefix::Given(prefix.to_owned()), false).expect("opens")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn against_a_real_server() {
    let db = TestDb::create().await;
    guarded(
        run_all(db.store("Hangfire"), db.store("Nope")),
        db.db.drop_now(),
    )
    .await;
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

    // The layout every store keeps is checked in `store::conformance`; here what is MySQL's.
    wide_characters(&store).await;
    statement_budget(&store).await;
    lock_owners(&store).await;
}

/// utf8mb3 columns: 4-byte characters escaped in the Set, U+FFFD in the Hash, and a line
/// too long once escaped moved to the hash.
async fn wide_characters(store: &MysqlStore) {
    let week = Duration::from_secs(7 * 86_400);
    let (set, hash) = ("console:1", "console-refs:1");
    let mut reference = line(10.0, "");
    reference.value =
        r##"{"t":10.0,"r":true,"s":"0123456789abcdef0123456789abcdef","c":"#ffffff"}"##.to_owned();
    let long = format!("{} 😀 end", "long text ".repeat(100));
    reference.reference = Some(("0123456789abcdef0123456789abcdef".to_owned(), long.clone()));
    // Emoji: one short (escaped in place), one long once escaped (moved to the hash).
    let emoji = line(13.0, "done 😀");
    let many = line(14.0, &"🎉".repeat(60));
    store
        .write_console(set, hash, &[reference, emoji, many], week)
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
    let read = store.read_set(set, 0, 100).await.expect("read");
    assert_eq!(read.len(), 3);
    let emoji: serde_json::Value = serde_json::from_str(&read[1]).expect("JSON");
    assert_eq!(emoji["s"], "done 😀", "{}", read[1]);
    let many: serde_json::Value = serde_json::from_str(&read[2]).expect("JSON");
    assert_eq!(many["r"], true, "{}", read[2]);
    let field = many["s"].as_str().expect("field");
    assert_eq!(
        store.get(hash, field).await.expect("read"),
        Some("\u{FFFD}".repeat(60))
    );
    store
        .set_hash("h:1", &[("b", "x 😀")], None)
        .await
        .expect("set");
    assert_eq!(
        store.get("h:1", "b").await.expect("read").as_deref(),
        Some("x \u{FFFD}")
    );
}

/// A batch bigger than one statement (a tiny budget forces several), still in order.
async fn statement_budget(store: &MysqlStore) {
    let week = Duration::from_secs(7 * 86_400);
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
        .write_console("console:2", "console-refs:2", &big, week)
        .await
        .expect("big");
    store
        .write_console("console:2", "console-refs:2", &big, week)
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

/// An owner is the row's `CreatedAt` with microseconds; keeping moves it on, so the owner
/// before is stale.
async fn lock_owners(store: &MysqlStore) {
    let take = || async {
        store
            .lock_try("job:7", Duration::from_secs(60))
            .await
            .expect("try")
    };
    let keep = |owner| async move { store.lock_keep("job:7", owner).await.expect("keep") };
    let owner = take().await.expect("taken");
    assert_eq!(owner.len(), "2024-01-01 00:00:00.000000".len(), "{owner}");
    let kept = keep(&owner).await.expect("held");
    assert!(kept > owner, "{kept} after {owner}");
    assert_eq!(keep(&owner).await, None, "stale owner");
    // Releasing with the owner before leaves the lock held.
    store.lock_release("job:7", &owner).await.expect("release");
    assert_eq!(take().await, None);
    store.lock_release("job:7", &kept).await.expect("release");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_past_its_command_timeout_fails_and_its_connection_is_not_reused() {
    let mut db = TestDb::create().await;
    db.spec.command_timeout = Some(Duration::from_secs(1));
    db.spec.max_pool = 1;
    let store = db.store("Hangfire");
    let body = async move {
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
    };
    guarded(body, db.db.drop_now()).await;
}
