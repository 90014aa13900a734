//! `wrk` (the Debian package `wrk`, an HTTP load generator in C with LuaJIT scripting) as a
//! second load client: an independent check on the in-repo client of [`crate::bench::http`].
//!
//! The request is the one the in-repo client sends: a [`CenterRequest`] (the center's exact
//! method, path and headers, with the same `content-type` and body), written into a Lua script
//! (`wrk.method`, `wrk.path`, `wrk.body`, `wrk.headers[...]`) in a temporary file. Like the
//! in-repo client, the script gives every request its own 12-digit `x-job-id` (a `request()`
//! function: wrk thread number, then a per-thread counter). `wrk --latency` prints the
//! latency distribution, which is parsed with the request rate and the error counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tests::center::CenterRequest;

use crate::bench::http;
use crate::bench::proc::{self, CpuMark};

/// What one wrk run measured.
#[derive(Clone, Debug)]
pub(crate) struct WrkOutcome {
    /// `Requests/sec:`.
    pub(crate) rps: f64,
    /// Requests completed (`N requests in ...`).
    pub(crate) requests: u64,
    /// Latency percentiles from `--latency`, in milliseconds.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// CPU of wrk and of the server during the middle of the run, percent of one core (NaN
    /// when a sample could not be read).
    pub(crate) client_cpu: f64,
    pub(crate) server_cpu: f64,
}

/// wrk's path, or why it cannot be used.
pub(crate) fn find() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "`wrk` is not on PATH: install it (Debian/Ubuntu: `apt-get install wrk`) or leave \
             this scenario out (--only)"
                .to_owned()
        })
}

/// `s` as a Lua string literal: printable ASCII as is, everything else (and `"`, `\`) as a
/// three-digit decimal escape, which Lua 5.1 and LuaJIT read byte for byte.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('"');
    out
}

/// The Lua script sending `req` with `body` (built with job id [`http::ID_PLACEHOLDER`]).
pub(crate) fn script(req: &CenterRequest, body: &str) -> String {
    let mut s = String::from("-- written by the job agent's bench; see tests/src/bench/wrk.rs\n");
    s.push_str("wrk.method = \"POST\"\n");
    s.push_str(&format!(
        "wrk.path = {}\n",
        lua_str(&http::request_path(req))
    ));
    s.push_str(&format!("wrk.body = {}\n", lua_str(body)));
    for (name, value) in req.build_headers() {
        if name.eq_ignore_ascii_case("x-job-id") {
            continue; // set per request below
        }
        s.push_str(&format!(
            "wrk.headers[{}] = {}\n",
            lua_str(&name),
            lua_str(&value)
        ));
    }
    s.push_str(&format!(
        "wrk.headers[\"content-type\"] = {}\n",
        lua_str(http::CONTENT_TYPE)
    ));
    s.push_str(&format!(
        "wrk.headers[\"x-job-id\"] = {}\n",
        lua_str(http::ID_PLACEHOLDER)
    ));
    // `setup` runs in the main Lua state once per thread; `tid` becomes a global of that
    // thread's own state, where `request` runs.
    s.push_str(
        "local threads = 0\n\
         function setup(thread)\n  threads = threads + 1\n  thread:set(\"tid\", threads)\nend\n\
         local n = 0\n\
         function request()\n  n = n + 1\n  \
         wrk.headers[\"x-job-id\"] = string.format(\"%d%011d\", tid or 0, n % 100000000000)\n  \
         return wrk.format()\nend\n",
    );
    s
}

/// A script file removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write(text: &str) -> Result<Self, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "jobagent-bench-wrk-{}-{}.lua",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text)
            .map_err(|e| format!("cannot write the wrk script {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `wrk -t<threads> -c<conns> -d<secs>s --latency -s <script>` against `addr` (the
/// script sets the path), checks it reported no errors, and parses what it measured. CPU of
/// wrk and of `server_pid` is sampled from 300 ms after the start to 200 ms before the end.
pub(crate) async fn run(
    wrk: &Path,
    script_text: &str,
    addr: SocketAddr,
    server_pid: u32,
    threads: usize,
    conns: usize,
    secs: u64,
) -> Result<WrkOutcome, String> {
    let file = ScriptFile::write(script_text)?;
    let url = format!("http://{addr}/");
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&file.0)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", wrk.display()))?;
    let wrk_pid = child.id();
    let cpu = async {
        let (Some(wrk_pid), true) = (wrk_pid, secs >= 2) else {
            return (f64::NAN, f64::NAN);
        };
        let tck = proc::clk_tck();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m0 = (CpuMark::now(wrk_pid), CpuMark::now(server_pid));
        tokio::time::sleep(Duration::from_millis(secs * 1000 - 500)).await;
        let m1 = (CpuMark::now(wrk_pid), CpuMark::now(server_pid));
        let pct = |a: Result<CpuMark, String>, b: Result<CpuMark, String>| match (a, b) {
            (Ok(a), Ok(b)) => a.pct_until(b, tck),
            _ => f64::NAN,
        };
        (pct(m0.0, m1.0), pct(m0.1, m1.1))
    };
    let limit = Duration::from_secs(secs + 30);
    let wait = tokio::time::timeout(limit, child.wait_with_output());
    let (output, (client_cpu, server_cpu)) = tokio::join!(wait, cpu);
    let output = output
        .map_err(|_| format!("wrk did not end within {limit:?}"))?
        .map_err(|e| format!("waiting for wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        ));
    }
    let mut out = parse(&stdout)?;
    out.client_cpu = client_cpu;
    out.server_cpu = server_cpu;
    Ok(out)
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.trim().parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(v * factor)
}

/// Reads wrk's `--latency` report; fails when it counted non-2xx answers or socket errors.
fn parse(text: &str) -> Result<WrkOutcome, String> {
    let bad = |what: &str| format!("wrk printed no {what}:\n{text}");
    let mut rps = None;
    let mut requests = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            match t.split_whitespace().collect::<Vec<_>>()[..] {
                ["50%", v] => p50 = duration_ms(v),
                ["99%", v] => p99 = duration_ms(v),
                [pct, _] if pct.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some((n, _)) = t.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            return Err(format!(
                "wrk: {} answers were not 2xx/3xx:\n{text}",
                v.trim()
            ));
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            let errors: u64 = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            if errors > 0 {
                return Err(format!("wrk counted socket errors ({}):\n{text}", v.trim()));
            }
        }
    }
    let requests = requests.ok_or_else(|| bad("request count"))?;
    if requests == 0 {
        return Err(format!("wrk completed no request:\n{text}"));
    }
    Ok(WrkOutcome {
        rps: rps.ok_or_else(|| bad("Requests/sec"))?,
        requests,
        p50_ms: p50.ok_or_else(|| bad("50% latency"))?,
        p99_ms: p99.ok_or_else(|| bad("99% latency"))?,
        client_cpu: f64::NAN,
        server_cpu: f64::NAN,
    })
}

#[cfg(test)]
mod reading {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n  \
        Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  300.00us   \
        9.00ms   80.00%\n    Req/Sec    29.00k     1.00k   31.00k    70.00%\n  Latency \
        Distribution\n     50%  812.00us\n     75%    1.20ms\n     90%    1.60ms\n     99%    \
        2.50ms\n  116000 requests in 2.00s, 20.00MB read\nRequests/sec:  57999.50\n\
        Transfer/sec:     10.00MB\n";

    #[test]
    fn reads_a_report() {
        let o = parse(REPORT).expect("parse");
        assert_eq!(o.requests, 116_000);
        assert!((o.rps - 57_999.5).abs() < 1e-9);
        assert!((o.p50_ms - 0.812).abs() < 1e-9);
        assert!((o.p99_ms - 2.5).abs() < 1e-9);
        assert_eq!(duration_ms("1.50s"), Some(1500.0));
    }

    #[test]
    fn refuses_errors() {
        let non2xx = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 3\nRequests/sec",
        );
        assert!(parse(&non2xx).is_err());
        let socket = REPORT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 2, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse(&socket).is_err());
        let fine = REPORT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 0, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn escapes_lua_strings() {
        assert_eq!(lua_str("a\"b\\c"), "\"a\\034b\\092c\"");
        assert_eq!(lua_str("é"), "\"\\195\\169\"");
    }
}

/// Runs the real wrk against a listener that records what it receives: the script must send
/// the in-repo client's request (same request line, headers and body; `Host` aside), with a
/// fresh 12-digit `x-job-id` each time. `cargo test -p tests --bin bench -- --ignored wrk`.
#[cfg(test)]
mod with_wrk {
    use std::collections::BTreeSet;
    use std::io::{Read as _, Write as _};

    use super::*;

    fn read_request(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let req: Vec<u8> = buf.drain(..end + 4).collect();
                return Some(req); // the bench's requests have empty bodies
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn lines(req: &[u8]) -> (String, BTreeSet<String>, String) {
        let text = String::from_utf8_lossy(req).into_owned();
        let mut it = text.split("\r\n").filter(|l| !l.is_empty());
        let first = it.next().unwrap_or_default().to_owned();
        let mut id = String::new();
        let mut set = BTreeSet::new();
        for l in it {
            let (k, v) = l.split_once(": ").unwrap_or((l, ""));
            let k = k.to_ascii_lowercase();
            if k == "x-job-id" {
                id = v.to_owned();
            } else if k != "host" {
                set.insert(format!("{k}: {v}"));
            }
        }
        (first, set, id)
    }

    #[test]
    #[ignore = "needs wrk on PATH"]
    fn wrk_sends_the_in_repo_request() {
        let wrk = find().expect("wrk on PATH");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let req = ::tests::center::Center::new(format!("http://{addr}/jobagent"))
            .run(crate::bench::scenarios::TRANSIENT, http::ID_PLACEHOLDER)
            .data("");
        let template = http::Template::new(&req, "", addr);
        let text = script(&req, "");
        // wrk may open and close a connection before its threads start: serve every
        // connection until three requests came, or until woken after wrk ended.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 3 && !seen.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    break;
                };
                let mut buf = Vec::new();
                while let Some(r) = read_request(&mut s, &mut buf) {
                    got.push(r);
                    if got.len() >= 3
                        || s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        break;
                    }
                }
            }
            got
        });
        let file = ScriptFile::write(&text).expect("script");
        let out = std::process::Command::new(wrk)
            .args(["-t1", "-c1", "-d1s", "-s"])
            .arg(&file.0)
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run wrk");
        done.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(addr);
        let wrk_said = String::from_utf8_lossy(&out.stdout).into_owned();
        let got = server.join().expect("server");
        assert!(
            got.len() >= 2,
            "wrk sent {} requests:\n{wrk_said}",
            got.len()
        );
        let (want_first, want_set, _) = lines(template.bytes());
        let mut ids = BTreeSet::new();
        for r in &got {
            let (first, set, id) = lines(r);
            assert_eq!(first, want_first);
            assert_eq!(set, want_set);
            assert!(
                id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()),
                "{id}"
            );
            ids.insert(id);
        }
        assert_eq!(
            ids.len(),
            got.len(),
            "x-job-id differs per request: {ids:?}"
        );
    }
}
