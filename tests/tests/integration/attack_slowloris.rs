//! Slow clients against the relay and the example service (issue 27, "Bounded listeners").
//!
//! Each process runs as built, under a file-descriptor limit of 256 (`prlimit`), with small
//! bounds from the environment (`JOBAGENT_SERVE_*`) so the test runs in seconds. An attacker
//! opens 300 connections and sends half a request on each, then nothing. Before the bounds
//! every one of them stayed open for good, the process ran out of descriptors, and a real
//! request was never answered; now:
//!
//! - a real request sent after them is answered within a deadline (new connections wait in
//!   the backlog while the cap is reached, and half-sent ones are closed after the header
//!   read time, which frees their slots);
//! - every half-sent connection is closed by the server after the header read time;
//! - an idle keep-alive connection is closed after the same time;
//! - a body that stops arriving ends the request after the body time.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The process's descriptor limit: 300 half-sent connections exceed it.
const FD_LIMIT: u32 = 256;
const HALF_SENT: usize = 300;
const HEADER_MS: u64 = 1000;
const BODY_MS: u64 = 1000;
const MAX_CONNECTIONS: u32 = 64;

fn bounds() -> Vec<(&'static str, String)> {
    vec![
        ("JOBAGENT_SERVE_HEADER_TIMEOUT_MS", HEADER_MS.to_string()),
        ("JOBAGENT_SERVE_BODY_TIMEOUT_MS", BODY_MS.to_string()),
        (
            "JOBAGENT_SERVE_MAX_CONNECTIONS",
            MAX_CONNECTIONS.to_string(),
        ),
    ]
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `binary` under `prlimit --nofile`, with `env`.
fn limited(binary: &std::path::Path, env: &[(&str, String)], stdout: Stdio) -> Child {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={FD_LIMIT}:{FD_LIMIT}"))
        .arg(binary)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {} under prlimit: {e}", binary.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

async fn example_service() -> (Proc, SocketAddr) {
    let port = free_port();
    let mut env = bounds();
    env.push(("JOBAGENT_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("JOBAGENT_LOG_ONLY", "true".to_owned()));
    let child = limited(&tests::replica::example_binary(), &env, Stdio::null());
    let proc = Proc(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answer(
        addr,
        "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the example service did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, addr)
}

fn relay() -> (Proc, SocketAddr) {
    use std::io::BufRead as _;
    let database = std::env::var("JOBAGENT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut env = bounds();
    env.push(("JOBAGENT_RELAY_LISTEN", "127.0.0.1:0".to_owned()));
    env.push(("JOBAGENT_RELAY_STORE", database));
    env.push(("JOBAGENT_RELAY_TOKENS", tests::relay::TOKEN.to_owned()));
    let mut child = limited(&tests::relay::relay_binary(), &env, Stdio::piped());
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay says where it listens");
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line of the relay: {line}"));
    (proc, ([127, 0, 0, 1], port).into())
}

/// Sends `request` on a new connection and returns the status line, or `None` when the
/// connection fails or no status line arrives within 2 s.
async fn answer(addr: SocketAddr, request: &str) -> Option<String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        status_line(&mut s).await
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

async fn status_line(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
            return Some(String::from_utf8_lossy(&got[..end]).into_owned());
        }
    }
}

/// Whether the server closed `s` (end of stream or reset) within `within`; anything it
/// sends first is read and skipped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Opens [`HALF_SENT`] connections, each with half a request's headers.
async fn half_sent(addr: SocketAddr) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(HALF_SENT);
    for _ in 0..HALF_SENT {
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr));
        let Ok(Ok(mut s)) = connect.await else {
            continue;
        };
        if s.write_all(b"POST /jobagent HTTP/1.1\r\nHost: a\r\nx-job-agent-action: run\r\n")
            .await
            .is_ok()
        {
            open.push(s);
        }
    }
    assert!(
        open.len() > FD_LIMIT as usize,
        "only {} half-sent connections could be opened",
        open.len()
    );
    open
}

/// The attack, then what a user sees: `real` answered, every half-sent connection closed.
async fn survives_slow_clients(addr: SocketAddr, real: &str) {
    let mut slow = half_sent(addr).await;
    let started = Instant::now();
    let deadline = Duration::from_secs(25);
    let answered = loop {
        if let Some(line) = answer(addr, real).await {
            break Some(line);
        }
        if started.elapsed() > deadline {
            break None;
        }
    };
    let line = answered.unwrap_or_else(|| {
        panic!(
            "a real request got no answer within {deadline:?} behind {} half-sent connections",
            slow.len()
        )
    });
    assert!(line.starts_with("HTTP/1.1 "), "{line}");
    let mut still_open = 0;
    let by = Instant::now() + Duration::from_millis(HEADER_MS * 3) + Duration::from_secs(10);
    for s in &mut slow {
        let left = by.saturating_duration_since(Instant::now());
        if !closed_within(s, left).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "half-sent connections the server never closed (header read time {HEADER_MS} ms)"
    );
}

/// An idle keep-alive connection is closed after the header read time.
async fn closes_idle_keep_alive(addr: SocketAddr, request: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(request.as_bytes()).await.expect("writes");
    let line = status_line(&mut s).await.expect("an answer");
    assert!(line.starts_with("HTTP/1.1 "), "{line}");
    assert!(
        closed_within(&mut s, Duration::from_millis(HEADER_MS * 4)).await,
        "an idle keep-alive connection stayed open past 4x the header read time"
    );
}

/// A body that stops arriving: the request ends (an answer, or the connection closed) after
/// the body time.
async fn ends_stalled_body(addr: SocketAddr, path: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nx-job-agent-action: run\r\nx-job-agent-class: x\r\nx-job-id: 1\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    s.write_all(head.as_bytes()).await.expect("writes");
    assert!(
        closed_within(&mut s, Duration::from_millis(BODY_MS * 5)).await,
        "a stalled body held its request open past 5x the body time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_service_survives_half_sent_requests() {
    let (_proc, addr) = example_service().await;
    let health = "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    survives_slow_clients(addr, health).await;
    closes_idle_keep_alive(addr, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n").await;
    ends_stalled_body(addr, "/jobagent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_survives_half_sent_requests() {
    let (_proc, addr) = relay();
    // Without a token: a 401, which shows the relay answers.
    let real =
        "POST /v1/check HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    survives_slow_clients(addr, real).await;
    closes_idle_keep_alive(
        addr,
        "POST /v1/check HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    ends_stalled_body(addr, "/v1/check").await;
}
