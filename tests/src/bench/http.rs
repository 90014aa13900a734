//! A small HTTP/1.1 keep-alive load client on raw tokio sockets.
//!
//! Requests are built once by [`tests::center::Center`] (the center's exact headers) and
//! serialized to bytes; each connection patches only the `x-job-id` digits per request, then
//! writes the bytes and reads one response (status line, `content-length`, body). That keeps
//! the client's CPU per request far below the server's, so with 2 cores the server, not the
//! client, sets the pace; the scenario reports the client's CPU share to show it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tests::center::CenterRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::bench::proc::CpuMark;

/// Digits of the job id patched into every request.
pub(crate) const ID_DIGITS: usize = 12;
/// The job id the template is built with (patched per request).
pub(crate) const ID_PLACEHOLDER: &str = "000000000000";

/// The `content-type` of every request the bench sends (the center's for a JSON body).
pub(crate) const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The path (and query) of a center request's URL.
pub(crate) fn request_path(req: &CenterRequest) -> String {
    let url = req.target_url();
    url.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .unwrap_or_else(|| "/jobagent".to_owned())
}

/// One serialized request and where its job id digits are.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    id_at: Option<usize>,
}

impl Template {
    /// Serializes a center request (built with job id [`ID_PLACEHOLDER`]) with `body` to the
    /// bytes the center would send to `addr`.
    pub(crate) fn new(req: &CenterRequest, body: &str, addr: SocketAddr) -> Self {
        let path = request_path(req);
        let mut text = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n");
        let mut id_at = None;
        for (name, value) in req.build_headers() {
            text.push_str(&name);
            text.push_str(": ");
            if name.eq_ignore_ascii_case("x-job-id") && value == ID_PLACEHOLDER {
                id_at = Some(text.len());
            }
            text.push_str(&value);
            text.push_str("\r\n");
        }
        text.push_str(&format!("content-type: {CONTENT_TYPE}\r\n"));
        text.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        text.push_str(body);
        Self {
            bytes: text.into_bytes(),
            id_at,
        }
    }

    /// The serialized request.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The request size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    fn patch(&self, buf: &mut [u8], mut id: u64) {
        if let Some(at) = self.id_at {
            for i in (0..ID_DIGITS).rev() {
                buf[at + i] = b'0' + (id % 10) as u8;
                id /= 10;
            }
        }
    }
}

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    req: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr, tpl: &Template) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        Ok(Self {
            stream,
            req: tpl.bytes.clone(),
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends the template with job id `id`; returns the response status and body.
    async fn call(&mut self, tpl: &Template, id: u64) -> Result<(u16, Vec<u8>), String> {
        tpl.patch(&mut self.req, id);
        self.stream
            .write_all(&self.req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = &self.buf[..end];
                let status = parse_status(head)?;
                let len = content_length(head)?;
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.read_more().await?;
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".to_owned());
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "bad status line: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )
        })
}

fn content_length(head: &[u8]) -> Result<usize, String> {
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = std::str::from_utf8(line).map_err(|_| "non-UTF-8 response header")?;
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                return v
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad content-length {v:?}"));
            }
            if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported by the bench client".into());
            }
        }
    }
    Ok(0)
}

/// What a timed load produced.
#[derive(Debug, Default)]
pub(crate) struct LoadOutcome {
    /// 200 answers completed inside the measured window.
    pub(crate) ok: u64,
    /// Other statuses inside the window.
    pub(crate) not_ok: u64,
    /// The measured window.
    pub(crate) window: Duration,
    /// Latencies (µs) of the answers completed inside the window, sorted.
    pub(crate) latencies_us: Vec<f64>,
    /// A sample non-200 body, if any.
    pub(crate) sample_error: Option<String>,
    /// CPU of this (client) process during the window, percent of one core.
    pub(crate) client_cpu: f64,
    /// CPU of the server process during the window, percent of one core.
    pub(crate) server_cpu: f64,
}

impl LoadOutcome {
    pub(crate) fn rps(&self) -> f64 {
        (self.ok + self.not_ok) as f64 / self.window.as_secs_f64()
    }
}

/// Drives `conns` keep-alive connections as fast as answers come back: a warm-up, then a
/// measured window. Returns the window's figures, with the CPU this process and the server
/// process `server_pid` used during the window.
pub(crate) async fn timed_load(
    addr: SocketAddr,
    server_pid: u32,
    tpl: Arc<Template>,
    conns: usize,
    warmup: Duration,
    window: Duration,
) -> Result<LoadOutcome, String> {
    let mut open = Vec::with_capacity(conns);
    for _ in 0..conns {
        open.push(Conn::open(addr, &tpl).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + warmup;
    let until = from + window;
    let sampler = tokio::spawn(async move {
        let me = std::process::id();
        let tck = crate::bench::proc::clk_tck();
        tokio::time::sleep_until(from.into()).await;
        let (c0, s0) = (CpuMark::now(me)?, CpuMark::now(server_pid)?);
        tokio::time::sleep_until(until.into()).await;
        let (c1, s1) = (CpuMark::now(me)?, CpuMark::now(server_pid)?);
        Ok::<_, String>((c0.pct_until(c1, tck), s0.pct_until(s1, tck)))
    });
    let mut tasks = Vec::with_capacity(conns);
    for (i, mut conn) in open.into_iter().enumerate() {
        let tpl = tpl.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut lat: Vec<f64> = Vec::with_capacity(1 << 14);
            let (mut ok, mut not_ok, mut sample) = (0u64, 0u64, None);
            let mut seq = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                seq += 1;
                let id = (i as u64 + 1) * 1_000_000_000 + seq;
                let (status, body) = conn.call(&tpl, id).await?;
                let done = Instant::now();
                if done >= from && done <= until {
                    lat.push(done.duration_since(sent).as_secs_f64() * 1e6);
                    if status == 200 {
                        ok += 1;
                    } else {
                        not_ok += 1;
                        if sample.is_none() {
                            sample = Some(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ));
                        }
                    }
                }
            }
            Ok::<_, String>((ok, not_ok, lat, sample))
        }));
    }
    let mut out = LoadOutcome {
        window,
        ..LoadOutcome::default()
    };
    for t in tasks {
        let (ok, not_ok, lat, sample) = t.await.map_err(|e| format!("load task: {e}"))??;
        out.ok += ok;
        out.not_ok += not_ok;
        out.latencies_us.extend(lat);
        if out.sample_error.is_none() {
            out.sample_error = sample;
        }
    }
    out.latencies_us.sort_by(f64::total_cmp);
    let (client_cpu, server_cpu) = sampler.await.map_err(|e| format!("cpu sampler: {e}"))??;
    out.client_cpu = client_cpu;
    out.server_cpu = server_cpu;
    Ok(out)
}

/// Keep-alive connections opened ahead of a burst, so that their buffers are already
/// allocated on both sides before a measurement starts.
pub(crate) struct Conns {
    conns: Vec<Conn>,
}

impl Conns {
    /// Opens `n` connections and sends `warm` once on each (any status is fine).
    pub(crate) async fn open(addr: SocketAddr, n: usize, warm: &Template) -> Result<Self, String> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = Conn::open(addr, warm).await?;
            c.call(warm, 0).await?;
            conns.push(c);
        }
        Ok(Self { conns })
    }

    /// Sends `count` requests of `tpl` over these connections, as fast as they are answered;
    /// fails on the first non-200 answer.
    pub(crate) async fn send_all(self, tpl: Arc<Template>, count: u64) -> Result<Self, String> {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(self.conns.len());
        for mut conn in self.conns {
            conn.req.clone_from(&tpl.bytes);
            let (tpl, next) = (tpl.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok::<_, String>(conn);
                    }
                    let (status, body) = conn.call(&tpl, n + 1).await?;
                    if status != 200 {
                        return Err(format!(
                            "request {n} answered {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        ));
                    }
                }
            }));
        }
        let mut conns = Vec::with_capacity(tasks.len());
        for t in tasks {
            conns.push(t.await.map_err(|e| format!("send task: {e}"))??);
        }
        Ok(Self { conns })
    }
}
