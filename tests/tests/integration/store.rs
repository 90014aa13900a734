//! The center's store: console lines, progress bars, results and heartbeats, read back the way
//! the dashboard reads them (set rows `ORDER BY id` on PostgreSQL and MySQL, by rank on Redis;
//! references resolved; results from `_agent_result_`). Each behaviour runs against every
//! store a center runs on: Hangfire.PostgreSql, Hangfire.MySqlStorage
//! (`Hangfire.MySql/Install.sql`) and Hangfire.Redis.StackExchange (`RedisConnection.cs`,
//! `GetRangeFromSet` by rank).

use std::time::{Duration, Instant};

use jobagent::{AgentOptions, ConsoleBudget, JobAgent, JobContext, JobError, job_agent};
use serde_json::{Value, json};
use tests::center::{Center, ConsoleInfo, Storage};
use tests::pg::TestDb;
use tests::service::TestService;
use tests::stores::{AnyStore, Backing, Table};
use tests::wait;

const TRANSIENT: &str = "example_agent::jobs::TestTransientJob";
const SINGLETON: &str = "example_agent::jobs::TestJob";
const HANG: &str = "example_agent::jobs::TestHangJob";

/// Writes from four tasks at once, 250 lines each (`w<k>-<i>`).
#[job_agent(transient)]
#[derive(Default)]
struct ManyThreadsJob;

impl JobAgent for ManyThreadsJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let mut tasks = Vec::new();
        for k in 0..4 {
            let cx = cx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..250 {
                    cx.console().info(format!("w{k}-{i}"));
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    }
}

/// Writes the texts of its parameter `texts`, one line each.
#[job_agent(transient)]
#[derive(Default)]
struct EchoJob;

impl JobAgent for EchoJob {
    async fn on_start(&self, cx: JobContext) -> Result<(), JobError> {
        let texts: Vec<String> = cx.param("texts")?.unwrap_or_default();
        for t in texts {
            cx.console().write_line(t, None);
        }
        Ok(())
    }
}

const MANY_THREADS: &str = "integration::store::ManyThreadsJob";
const ECHO: &str = "integration::store::EchoJob";

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["s"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn assert_offsets_increase(lines: &[Value]) {
    let ts: Vec<f64> = lines
        .iter()
        .map(|l| l["t"].as_f64().unwrap_or(f64::NAN))
        .collect();
    for pair in ts.windows(2) {
        assert!(pair[1] > pair[0], "offsets must strictly increase: {ts:?}");
    }
}

async fn center_for(db: &AnyStore, service: &TestService) -> Center {
    service.center().with_storage(&db.storage())
}

/// The same against Install.v3's tables (int4 ids, varchar(100) keys, naive-UTC `expireat`) in a database west of UTC; shapes from Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lines_land_in_order_before_the_result_oldest_tables() {
    console_order(AnyStore::of(Backing::Pg(TestDb::oldest().await))).await;
}

async fn console_order(db: AnyStore) {
    let service =
        TestService::start_with(db.agent_options(AgentOptions::new().log_only(true))).await;
    let center = center_for(&db, &service).await;
    let console = ConsoleInfo::for_job("s1");
    center
        .run(TRANSIENT, "s1")
        .param(json!({"lines": 300, "line_len": 40}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    let result = db.wait_result("s1", Duration::from_secs(10)).await;
    // The result is written after the lines: all of them are there when it appears.
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert_eq!(result["R"], "ok", "{result}");
    assert_eq!(result["Action"], "run");
    assert_eq!(result["RunId"], "s1");
    assert_eq!(result["Id"], "s1");
    assert_eq!(
        db.result_ids_listing("s1", Duration::from_secs(5)).await,
        vec!["s1".to_owned()]
    );
    let t = texts(&lines);
    assert_eq!(t.len(), 302, "started + 300 + finished: {t:?}");
    assert!(
        t[0].starts_with("【JobAgent】job example_agent::jobs::TestTransientJob started"),
        "{}",
        t[0]
    );
    assert_eq!(lines[0]["c"], "#008000");
    for n in 1..=300usize {
        let want = example_agent::jobs::demo_line(n as u64, 40);
        assert_eq!(t[n], format!("【JobAgent】{want}"));
        assert_eq!(lines[n]["c"], "#ffffff");
    }
    assert!(t[301].contains("job finished"), "{}", t[301]);
    assert_offsets_increase(&lines);
    // The raw JSON keeps the dashboard's key order.
    let raw = db.set_rows(&console.set_key).await;
    assert!(
        raw[1].0.starts_with("{\"t\":") && raw[1].0.contains("\",\"c\":\"#ffffff\"}"),
        "{}",
        raw[1].0
    );
    // Hangfire.MySqlStorage's `Score` is a single-precision `float`.
    assert_eq!(
        raw[1].1 as f32,
        lines[1]["t"].as_f64().unwrap_or_default() as f32,
        "score = t"
    );
}

/// The same against Install.v3's tables (int4 ids, varchar(100) keys, naive-UTC `expireat`) in a database west of UTC; shapes from Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_and_threads_keep_each_console_in_order_oldest_tables() {
    concurrent_order(AnyStore::of(Backing::Pg(TestDb::oldest().await))).await;
}

async fn concurrent_order(db: AnyStore) {
    let service =
        TestService::start_with(db.agent_options(AgentOptions::new().log_only(true))).await;
    let center = center_for(&db, &service).await;
    let mut consoles = Vec::new();
    let mut sends = Vec::new();
    for i in 0..6 {
        let id = format!("c{i}");
        let console = ConsoleInfo::for_job(&id);
        consoles.push((id.clone(), console.clone()));
        let req = if i % 2 == 0 {
            center.run(MANY_THREADS, &id).console(console)
        } else {
            center
                .run(TRANSIENT, &id)
                .param(json!({"lines": 1000}))
                .console(console)
        };
        sends.push(tokio::spawn(req.send()));
    }
    for s in sends {
        s.await.expect("send task").assert_status(200);
    }
    for (i, (id, console)) in consoles.iter().enumerate() {
        let result = db.wait_result(id, Duration::from_secs(20)).await;
        assert_eq!(result["R"], "ok", "{result}");
        let lines = db.console_lines(&console.set_key, &console.hash_key).await;
        assert_offsets_increase(&lines);
        let t = texts(&lines);
        assert_eq!(t.len(), 1002, "job {id}");
        if i % 2 == 0 {
            // Each writer's lines keep their order.
            for k in 0..4 {
                let mine: Vec<&String> = t
                    .iter()
                    .filter(|s| s.starts_with(&format!("【JobAgent】w{k}-")))
                    .collect();
                let want: Vec<String> = (0..250).map(|i| format!("【JobAgent】w{k}-{i}")).collect();
                assert_eq!(mine.len(), 250);
                assert!(
                    mine.iter().zip(&want).all(|(a, b)| *a == b),
                    "writer {k} out of order in {id}"
                );
            }
        } else {
            for (n, text) in t.iter().enumerate().take(1001).skip(1) {
                assert_eq!(*text, format!("【JobAgent】line {n}"), "job {id}");
            }
        }
    }
}

/// The same against Install.v3's tables (int4 ids, varchar(100) keys, naive-UTC `expireat`) in a database west of UTC; shapes from Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_multibyte_texts_are_stored_by_reference_oldest_tables() {
    references(AnyStore::of(Backing::Pg(TestDb::oldest().await))).await;
}

async fn references(db: AnyStore) {
    let service =
        TestService::start_with(db.agent_options(AgentOptions::new().console_prefix(""))).await;
    let center = center_for(&db, &service).await;
    let console = ConsoleInfo::for_job("r1");
    let long = "x".repeat(500);
    let cjk = "漢字かな交じり文".repeat(30); // 240 UTF-16 units
    let short_cjk = "字".repeat(200); // 200 units: inline
    let emoji = "😀".repeat(111); // 222 units: by reference
    let short_emoji = "done 🎉 ok".to_owned();
    center
        .run(ECHO, "r1")
        .param(json!({"texts": [long, cjk, short_cjk, emoji, "plain", short_emoji]}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    db.wait_result("r1", Duration::from_secs(10)).await;
    let raw = db.set_rows(&console.set_key).await;
    let is_ref: Vec<bool> = raw.iter().map(|(v, _)| v.contains("\"r\":true")).collect();
    assert_eq!(
        is_ref,
        vec![false, true, true, false, true, false, false, false],
        "{raw:?}"
    );
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    let t = texts(&lines);
    // Install.sql's `utf8` is 3 bytes a character on MySQL: a 4-byte character in a
    // referenced text (a hash value, not JSON) cannot be stored and shows as U+FFFD; in a
    // line (JSON) it is escaped, and the dashboard's JSON parser shows it.
    let emoji_shown = match db.backing() {
        Backing::Mysql(_) => "\u{FFFD}".repeat(111),
        _ => emoji,
    };
    assert_eq!(
        &t[1..7],
        &[
            long,
            cjk,
            short_cjk,
            emoji_shown,
            "plain".to_owned(),
            short_emoji
        ]
    );
    // The referenced texts expire with the console (7 days), as Hangfire reads `expireat`.
    let seven_days = 7.0 * 86_400.0;
    let refs = db.expiry_ahead(Table::Hash, &console.hash_key).await;
    assert!(
        refs.len() == 3
            && refs
                .iter()
                .all(|e| e.is_some_and(|e| (e - seven_days).abs() < 120.0)),
        "reference expiry {refs:?} s"
    );
}

async fn progress(db: AnyStore) {
    let service =
        TestService::start_with(db.agent_options(AgentOptions::new().log_only(true))).await;
    let center = center_for(&db, &service).await;
    let console = ConsoleInfo::for_job("p1");
    center
        .run(SINGLETON, "p1")
        .param(json!({"lines": 4, "progress": true}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    db.wait_result("p1", Duration::from_secs(10)).await;
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    let bars: Vec<(String, f64, String)> = lines
        .iter()
        .filter(|l| l.get("p").is_some())
        .map(|l| {
            (
                l["s"].as_str().unwrap_or_default().to_owned(),
                l["p"].as_f64().unwrap_or(-1.0),
                l["n"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, f64, String)> = [0.0, 25.0, 50.0, 75.0, 100.0]
        .iter()
        .map(|p| ("1".to_owned(), *p, "progress".to_owned()))
        .collect();
    assert_eq!(bars, want);
    assert_eq!(
        db.hash_value(&console.hash_key, "progress")
            .await
            .as_deref(),
        Some("100.0")
    );
}

/// The same against Install.v3's tables (int4 ids, varchar(100) keys, naive-UTC `expireat`) in a database west of UTC; shapes from Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_expire_after_the_configured_days_oldest_tables() {
    expiry(AnyStore::of(Backing::Pg(TestDb::oldest().await))).await;
}

async fn expiry(db: AnyStore) {
    let service = TestService::start().await;
    let center = service
        .center()
        .with_storage(&db.storage().expire_at_days(3));
    let console = ConsoleInfo::for_job("e1");
    center
        .run(TRANSIENT, "e1")
        .param(json!({"lines": 2}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    db.wait_result("e1", Duration::from_secs(10)).await;
    db.result_ids_listing("e1", Duration::from_secs(5)).await;
    // Read as Hangfire.PostgreSql's ExpirationManager.cs compares `expireat`: against
    // `now()` (timestamptz, since Install.v19) or naive UTC (`timestamp`, before).
    let three_days = 3.0 * 86_400.0;
    let within =
        |e: Option<f64>| e.is_some_and(|e| e > three_days - 120.0 && e <= three_days + 1.0);
    let lines = db.expiry_ahead(Table::Set, &console.set_key).await;
    assert!(
        !lines.is_empty() && lines.iter().all(|e| within(*e)),
        "console expiry {lines:?} s ({})",
        db.kind()
    );
    let result = db.expiry_ahead(Table::Hash, "_agent_result_e1").await;
    assert!(
        result.len() == 1 && within(result[0]),
        "result expiry {result:?} s"
    );
    let member = db.expiry_ahead(Table::Set, "_agent_result_").await;
    assert!(
        member.len() == 1 && within(member[0]),
        "result member expiry {member:?} s"
    );
}

/// The same against Install.v3's tables (int4 ids, varchar(100) keys, naive-UTC `expireat`) in a database west of UTC; shapes from Hangfire.PostgreSql's `src/Hangfire.PostgreSql/Scripts/Install.v3.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_reported_exactly_once_oldest_tables() {
    outcomes(AnyStore::of(Backing::Pg(TestDb::oldest().await))).await;
}

async fn outcomes(db: AnyStore) {
    let service = TestService::start_with(
        db.agent_options(AgentOptions::new().shutdown_timeout(Duration::from_secs(3))),
    )
    .await;
    let center = center_for(&db, &service).await;
    center.run(TRANSIENT, "ok1").send().await.assert_status(200);
    center
        .run(TRANSIENT, "fail1")
        .param(json!({"fail": true}))
        .send()
        .await
        .assert_status(200);
    center
        .run(TRANSIENT, "panic1")
        .param(json!({"panic": true}))
        .send()
        .await
        .assert_status(200);
    center
        .run(TRANSIENT, "slow1")
        .param(json!({"sleep_ms": 5000}))
        .timeout_ms(100)
        .send()
        .await
        .assert_status(200);
    // A singleton stopped on request, and the stop dispatch itself.
    center
        .run(SINGLETON, "stopme")
        .param(json!({"sleep_ms": 10000}))
        .send()
        .await
        .assert_status(200);
    // A refused run gets no result.
    center
        .run(SINGLETON, "refused")
        .send()
        .await
        .assert_status(501);
    center
        .stop(SINGLETON, "stop1")
        .send()
        .await
        .assert_status(200);
    let expect = [
        ("ok1", "ok", ""),
        ("fail1", "err", "failed on request"),
        ("panic1", "err", "panicked"),
        ("slow1", "err", "timeout"),
        ("stopme", "ok", ""),
    ];
    for (id, r, e) in expect {
        let result = db.wait_result(id, Duration::from_secs(10)).await;
        assert_eq!(result["R"], r, "{id}: {result}");
        assert!(
            result["E"].as_str().unwrap_or_default().contains(e),
            "{id}: {result}"
        );
        assert_eq!(result["Action"], "run");
        assert_eq!(result["RunId"], id);
    }
    let stop = db.wait_result("stop1", Duration::from_secs(10)).await;
    assert_eq!(stop["Action"], "stop", "{stop}");
    assert_eq!(stop["RunId"], "stopme");
    assert_eq!(stop["R"], "ok");
    // Shutdown ends a hang job with an error result.
    center.run(HANG, "hang1").send().await.assert_status(200);
    center
        .wait_detail(HANG, Duration::from_secs(5), |r| r.body.contains("Running"))
        .await;
    service.shutdown(Duration::from_secs(5)).await;
    db.wait_failure("hang1", Duration::from_secs(10), "shut down")
        .await;
    assert!(
        db.result("refused").await.is_none(),
        "a refused dispatch has no result"
    );
    // Exactly once: one field per result hash, one member per id in the set.
    let mut ids = db.result_ids().await;
    ids.sort();
    let mut want: Vec<String> = [
        "ok1", "fail1", "panic1", "slow1", "stopme", "stop1", "hang1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(ids, want);
    for id in &want {
        assert_eq!(
            db.result_fields(id).await.len(),
            1,
            "{id} reported more than once"
        );
    }
}

async fn heartbeat(db: AnyStore) {
    let service =
        TestService::start_with(db.agent_options(AgentOptions::new().log_only(true))).await;
    let center = center_for(&db, &service).await;
    center.heartbeat().send().await.assert_status(200);
    let key = format!("AgentHeart:{}", center.server_id());
    let deadline = Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let rows = db.hash_rows(&key).await;
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, center.agent_host_port());
    let beat: Value =
        serde_json::from_str(rows[0].1.as_deref().unwrap_or("")).expect("heartbeat JSON");
    assert_eq!(beat["Id"], std::process::id());
    assert_eq!(beat["Server"], center.agent_host_port());
    assert!(beat["Idx"].as_u64().unwrap_or(0) >= 290, "{beat}");
    assert!(beat["WorkingSet"].as_u64().unwrap_or(0) > 1 << 20, "{beat}");
    assert!(beat["DiskUsage"].as_u64().unwrap_or(0) > 0, "{beat}");
    assert!(beat["CpuUsage"].as_f64().is_some(), "{beat}");
    assert!(
        !beat["ProcessName"].as_str().unwrap_or("").is_empty(),
        "{beat}"
    );
    let ts = beat["Timestamp"].as_str().unwrap_or("");
    assert!(ts.ends_with('Z') && ts.starts_with("20"), "{beat}");
    let e = db.expiry_ahead(Table::Hash, &key).await;
    assert!(
        e.len() == 1 && e[0].is_some_and(|e| e > 540.0 && e <= 601.0),
        "heartbeat rows live 10 minutes, got {e:?} s"
    );
}

/// `JOBAGENT_STORE` (with `JOBAGENT_STORE_TYPE` and `JOBAGENT_STORE_SCHEMA`) of each type.
async fn local_store(local: AnyStore) {
    let sent = TestDb::new().await;
    let (connection, kind, prefix) = local.local();
    let service = TestService::start_with(
        AgentOptions::new()
            .store(connection, prefix, 7.0)
            .store_type(kind),
    )
    .await;
    // Even a header the agent could not use is ignored entirely.
    for storage in [sent.storage(), Storage::of_kind("redis", "localhost:6379")] {
        let center = service.center().with_storage(&storage);
        let id = format!("l-{}", storage.kind);
        center
            .run(TRANSIENT, &id)
            .param(json!({"lines": 3}))
            .send()
            .await
            .assert_status(200);
        local.wait_result(&id, Duration::from_secs(10)).await;
        assert!(sent.result(&id).await.is_none());
    }
    assert!(sent.result_ids().await.is_empty());
}

#[tokio::test]
async fn npgsql_strings_with_synonyms_and_quotes() {
    let db = TestDb::new().await;
    let service = TestService::start().await;
    let (host, port, user, password, database) = parts(&db.connection_string());
    let pw = if password.is_empty() {
        String::new()
    } else {
        format!("PWD='{}';", password.replace('\'', "''"))
    };
    let conn = format!(
        "Server={host}; port = {port};UID=\"{user}\";{pw}DB='{database}';Application Name=\"a;b\";Some Unknown Key=1;Pooling=true"
    );
    let center = service.center().with_storage(&Storage::postgresql(conn));
    center
        .run(TRANSIENT, "syn1")
        .param(json!({"lines": 2}))
        .send()
        .await
        .assert_status(200);
    let result = wait::result(&db, "syn1", Duration::from_secs(10)).await;
    assert_eq!(result["R"], "ok");
}

#[tokio::test]
async fn unusable_stores_are_refused_at_dispatch() {
    let db = TestDb::new().await;
    let service = TestService::start().await;
    let cases = [
        (
            Storage::of_kind("sqlserver", db.connection_string()),
            "Type",
        ),
        (
            Storage::postgresql("Host=localhost;Port=notaport;Password=hunter2"),
            "Port",
        ),
        (
            // Any name Hangfire.PostgreSql takes is quoted and used; only what PostgreSQL
            // cannot name is refused (longer than 63 bytes, or with NUL).
            Storage::postgresql(db.connection_string()).table_prefix("s".repeat(64)),
            "schema",
        ),
        (
            Storage::postgresql(db.connection_string()).table_prefix("bad\0schema"),
            "schema",
        ),
        (Storage::postgresql(""), "HangfireDb"),
    ];
    for (storage, word) in cases {
        let reply = service
            .center()
            .with_storage(&storage)
            .run(TRANSIENT, "bad")
            .send()
            .await;
        reply.assert_err(500);
        assert!(reply.body.contains(word), "{word}: {}", reply.body);
        assert!(!reply.body.contains("hunter2"), "{}", reply.body);
        if storage.kind == "sqlserver" {
            // It names the types this agent writes to.
            for kind in ["`postgresql`", "`mysql`", "`redis`"] {
                assert!(reply.body.contains(kind), "{kind}: {}", reply.body);
            }
        }
    }
    let reply = service
        .center()
        .with_storage_json("{not json")
        .run(TRANSIENT, "bad")
        .send()
        .await;
    reply.assert_err(500);
    // The agent keeps serving.
    service
        .center()
        .with_storage(&db.storage())
        .run(TRANSIENT, "good")
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "good", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

async fn budget(db: AnyStore) {
    let budget = ConsoleBudget::default().max_lines(50).tail_lines(10);
    let service = TestService::start_with(
        db.agent_options(
            AgentOptions::new()
                .console_budget(budget)
                .console_prefix(""),
        ),
    )
    .await;
    let center = center_for(&db, &service).await;
    let console = ConsoleInfo::for_job("b1");
    center
        .run(TRANSIENT, "b1")
        .param(json!({"lines": 200, "progress": true}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        db.wait_result("b1", Duration::from_secs(10)).await["R"],
        "ok"
    );
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert_offsets_increase(&lines);
    let text: Vec<String> = lines
        .iter()
        .filter(|l| l.get("p").is_none())
        .map(|l| l["s"].as_str().unwrap_or("").to_owned())
        .collect();
    // started + line 1..39 (the head), the marker, line 192..200 + finished (the tail).
    assert_eq!(text.len(), 40 + 1 + 10, "{text:?}");
    assert!(text[0].contains("started"));
    assert_eq!(text[39], "line 39");
    assert!(text[40].contains("152 line(s) dropped"), "{}", text[40]);
    assert_eq!(text[41], "line 192");
    assert_eq!(text[49], "line 200");
    assert!(text[50].contains("finished"));
    // Progress lines are not counted: every distinct value is there.
    assert_eq!(lines.iter().filter(|l| l.get("p").is_some()).count(), 201);
}

async fn outage(db: AnyStore) {
    let (proxy, via) = db.behind_proxy().await;
    let service = TestService::start().await;
    let center = service.center().with_storage(&via);
    let console = ConsoleInfo::for_job("o1");
    center
        .run(TRANSIENT, "o1")
        .param(json!({"lines": 400, "sleep_ms": 2000}))
        .console(console.clone())
        .send()
        .await
        .assert_status(200);
    wait::until(
        Duration::from_secs(10),
        "no lines before the cut",
        async || db.set_rows(&console.set_key).await.len() > 10,
    )
    .await;
    proxy.cut();
    let during = db.set_rows(&console.set_key).await.len();
    assert!(
        during > 10 && during < 400,
        "some lines before the cut: {during}"
    );
    // A window for something that must not happen: the run ends 2 s after it starts, and its
    // result must not appear while the store is cut.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        db.result("o1").await.is_none(),
        "no result while the store is down"
    );
    proxy.restore();
    let result = db.wait_result("o1", Duration::from_secs(20)).await;
    assert_eq!(result["R"], "ok", "{result}");
    let lines = db.console_lines(&console.set_key, &console.hash_key).await;
    assert_offsets_increase(&lines);
    let t = texts(&lines);
    assert_eq!(t.len(), 402);
    for (n, text) in t.iter().enumerate().take(401).skip(1) {
        assert_eq!(*text, format!("【JobAgent】line {n}"));
    }
}

/// Host, port, user, password and database of the harness's Npgsql string.
fn parts(conn: &str) -> (String, u16, String, String, String) {
    let mut host = String::new();
    let mut port = 5432;
    let mut user = String::new();
    let mut password = String::new();
    let mut database = String::new();
    for pair in conn.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim() {
            "Host" => host = v,
            "Port" => port = v.parse().unwrap_or(5432),
            "Username" => user = v,
            "Password" => password = v,
            "Database" => database = v,
            _ => {}
        }
    }
    (host, port, user, password, database)
}

/// A store whose schema lacks Hangfire's tables (a wrong `TablePrefix` or database) is
/// refused at the run, naming the table, instead of accepting a run whose console and result
/// could never be written (the writes failed forever and the job stayed Processing). Once
/// the tables exist, runs into the same store are accepted. The center fails a job on an
/// agent's 500 and shows its body (`Server/Hangfire.HttpJob/Server/HttpJob.cs`: with
/// `EnableJobAgentErrorThrow`, on by default, a 500 throws `AgentJobException(result)`).
#[tokio::test(flavor = "multi_thread")]
async fn a_store_without_hangfire_tables_is_refused_at_the_run() {
    let db = TestDb::new().await;
    let service = TestService::start().await;
    let elsewhere = Storage {
        table_prefix: Some("not_hangfire".to_owned()),
        ..db.storage()
    };
    let center = service.center().with_storage(&elsewhere);
    for kind in [TRANSIENT, SINGLETON] {
        let reply = center
            .run(kind, "nt-1")
            .param(json!({"lines": 1}))
            .send()
            .await;
        reply.assert_err(500);
        assert!(
            reply
                .body
                .contains("no Hangfire table \"not_hangfire\".hash")
                && reply.body.contains("TablePrefix"),
            "{reply:?}"
        );
    }
    // The right schema in the same database is fine.
    let center = service.center().with_storage(&db.storage());
    center
        .run(TRANSIENT, "nt-2")
        .param(json!({"lines": 1}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        wait::result(&db, "nt-2", Duration::from_secs(10)).await["R"],
        "ok"
    );
}

/// A store whose user may read Hangfire's tables but not write them is refused at the run,
/// naming the user and the table, instead of accepting a run whose writes are refused
/// forever (a read-only role copied from a reporting set-up, say).
#[tokio::test(flavor = "multi_thread")]
async fn a_store_whose_user_may_not_write_is_refused_at_the_run() {
    let db = TestDb::new().await;
    let role = format!("ro_{}", db.name());
    let admin = db.client();
    let setup = format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'ro-pw'; \
         GRANT USAGE ON SCHEMA {schema} TO \"{role}\"; \
         GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO \"{role}\";",
        schema = tests::pg::SCHEMA
    );
    admin
        .batch_execute(&setup)
        .await
        .unwrap_or_else(|e| panic!("cannot create a read-only role: {e}"));
    let connection: Vec<String> = db
        .connection_string()
        .split(';')
        .map(|pair| match pair.split_once('=') {
            Some(("Username", _)) => format!("Username={role}"),
            Some(("Password", _)) => "Password=ro-pw".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    let read_only = Storage {
        hangfire_db: connection.join(";"),
        ..db.storage()
    };
    let service = TestService::start().await;
    let reply = service
        .center()
        .with_storage(&read_only)
        .run(TRANSIENT, "ro-1")
        .param(json!({"lines": 1}))
        .send()
        .await;
    let cleanup = format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\";");
    let dropped = admin.batch_execute(&cleanup).await;
    reply.assert_err(500);
    assert!(
        reply.body.contains(&format!("user `{role}` may not write"))
            && reply.body.contains(".hash"),
        "{reply:?}"
    );
    assert!(
        !reply.body.contains("ro-pw"),
        "leaks the password: {reply:?}"
    );
    dropped.unwrap_or_else(|e| panic!("cannot drop the role: {e}"));
}

// One test per store for each behaviour above.
tests::on_every_store! {
    progress_bars_and_the_job_list_progress => progress;
    heartbeat_writes_real_process_figures => heartbeat;
    the_console_budget_keeps_head_and_tail => budget;
    an_outage_mid_job_loses_no_line => outage;
    a_local_store_wins_over_the_header => local_store;
    console_lines_land_in_order_before_the_result_on_each_store => console_order;
    concurrent_consoles_keep_their_order_on_each_store => concurrent_order;
    long_and_multibyte_texts_on_each_store => references;
    rows_expire_after_the_configured_days_on_each_store => expiry;
    every_outcome_is_reported_exactly_once_on_each_store => outcomes;
}

// The same behaviours with the agent writing through a relay (issue 17): the center's header
// still names the store, and the agent ignores it for its own store, the relay.
tests::on_every_store_via_relays! { 1;
    relayed_progress_bars_and_the_job_list_progress => progress;
    relayed_heartbeat_writes_real_process_figures => heartbeat;
    relayed_the_console_budget_keeps_head_and_tail => budget;
    relayed_console_lines_land_in_order_before_the_result => console_order;
    relayed_concurrent_consoles_keep_their_order => concurrent_order;
    relayed_long_and_multibyte_texts => references;
    relayed_every_outcome_is_reported_exactly_once => outcomes;
}
