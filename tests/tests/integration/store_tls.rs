//! Connection-string options against a real server: search path, application name, and the
//! TLS modes (what each does depends on whether the server offers TLS; both cases are checked).

use jobagent::__dev::probe_store;
use tests::pg::TestDb;

async fn server_ssl(db: &TestDb) -> bool {
    let row = db
        .client()
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl");
    row.get::<_, String>(0) == "on"
}

#[tokio::test]
async fn search_path_and_application_name_apply() {
    let db = TestDb::new().await;
    let conn = format!(
        "{};SSL Mode=Disable;Search Path=\"pg_catalog, public\"",
        db.connection_string()
    );
    let (_, path) = probe_store(&conn, "SHOW search_path")
        .await
        .expect("connects");
    assert_eq!(path.replace(' ', ""), "pg_catalog,public");
    let (_, app) = probe_store(&conn, "SHOW application_name")
        .await
        .expect("connects");
    assert_eq!(app, "rust-job-agent");
    let (_, app) = probe_store(
        &format!(
            "{};Application Name='billing;agent'",
            db.connection_string()
        ),
        "SHOW application_name",
    )
    .await
    .expect("connects");
    assert_eq!(app, "billing;agent");
}

#[tokio::test]
async fn tls_modes_do_what_npgsql_does() {
    let db = TestDb::new().await;
    let ssl = server_ssl(&db).await;
    let base = db.connection_string();
    let (encrypted, _) = probe_store(&format!("{base};SSL Mode=Disable"), "SELECT 'x'")
        .await
        .expect("plain");
    assert!(!encrypted, "Disable never encrypts");
    let (encrypted, _) = probe_store(&format!("{base};SSL Mode=Prefer"), "SELECT 'x'")
        .await
        .expect("prefer");
    assert_eq!(
        encrypted, ssl,
        "Prefer encrypts exactly when the server offers TLS"
    );
    match probe_store(&format!("{base};SSL Mode=Require"), "SELECT 'x'").await {
        Ok((encrypted, _)) => assert!(
            ssl && encrypted,
            "Require connected: the server must offer TLS and the session be encrypted"
        ),
        Err(e) => assert!(!ssl, "Require failed against a TLS server: {e}"),
    }
    // A certificate no trusted root signed (test servers use self-signed ones) is refused.
    if ssl {
        let e = probe_store(&format!("{base};SSL Mode=VerifyFull"), "SELECT 'x'")
            .await
            .expect_err("a self-signed certificate must not verify");
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        let e = probe_store(
            &format!("{base};SSL Mode=VerifyFull;Trust Server Certificate=true"),
            "SELECT 'x'",
        )
        .await
        .expect_err("contradictory options");
        assert!(e.contains("Trust Server Certificate"), "{e}");
    }
}
