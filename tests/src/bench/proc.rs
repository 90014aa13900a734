//! Child processes: building and starting the example service (and the baseline server), the
//! readiness probe, and the `/proc` figures the scenarios read.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The class the readiness probe asks `detail` of (a singleton: answers 200 at once).
const PROBE_CLASS: &str = "example_agent::jobs::TestJob";

/// A child process serving HTTP on `addr`; killed when dropped.
pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// The agent endpoint: `http://<addr>/jobagent`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/jobagent", self.addr)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port on 127.0.0.1 (bound then released).
pub(crate) fn free_addr() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Starts `program args...` with `env`, stdout and stderr discarded, listening on `addr`.
/// The invoker's `JOBAGENT_*` and `RUST_LOG` variables are not passed on (the scenario sets
/// what it needs). Returns the server and the instant just before the spawn.
pub(crate) fn spawn(
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    addr: SocketAddr,
) -> Result<(Server, Instant), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("JOBAGENT_") || name == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
    cmd.env("JOBAGENT_LISTEN", addr.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id();
    Ok((Server { child, pid, addr }, t0))
}

/// Starts the example service on a free port and waits until it answers.
pub(crate) fn start_agent(bin: &Path, env: &[(&str, String)]) -> Result<Server, String> {
    let addr = free_addr()?;
    let (server, _) = spawn(bin, &[], env, addr)?;
    wait_ready(addr, Duration::from_secs(20))?;
    Ok(server)
}

/// Starts the bare baseline server (this binary with `--serve-baseline`) and waits until it
/// answers.
pub(crate) fn start_baseline(self_exe: &Path) -> Result<Server, String> {
    let addr = free_addr()?;
    let addr_text = addr.to_string();
    let (server, _) = spawn(self_exe, &["--serve-baseline", &addr_text], &[], addr)?;
    wait_ready(addr, Duration::from_secs(20))?;
    Ok(server)
}

/// Blocks until a request to `addr` is answered (any status); returns when. Probes every
/// 100 µs, each probe a fresh connection sending a `detail` request.
pub(crate) fn wait_ready(addr: SocketAddr, within: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + within;
    let request = format!(
        "POST /jobagent HTTP/1.1\r\nhost: {addr}\r\nx-job-agent-action: detail\r\n\
         x-job-agent-class: {PROBE_CLASS}\r\nx-job-id: probe\r\ncontent-length: 0\r\n\
         connection: close\r\n\r\n"
    );
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(request.as_bytes()).is_ok() {
                let mut buf = [0u8; 16];
                let mut got = 0;
                while got < 12 {
                    match s.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                if got >= 12 && buf.starts_with(b"HTTP/1.") {
                    return Ok(Instant::now());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the server on {addr} did not answer within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// `VmRSS` of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `utime + stime` of `pid` (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("odd /proc/{pid}/stat"))?;
    let mut f = after.split_ascii_whitespace().skip(11);
    let parse = |x: Option<&str>| x.and_then(|v| v.parse::<u64>().ok());
    let utime = parse(f.next()).ok_or_else(|| format!("no utime in /proc/{pid}/stat"))?;
    let stime = parse(f.next()).ok_or_else(|| format!("no stime in /proc/{pid}/stat"))?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub(crate) fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(100)
    })
}

/// A CPU-time reading of one process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuMark {
    at: Instant,
    ticks: u64,
}

impl CpuMark {
    pub(crate) fn now(pid: u32) -> Result<Self, String> {
        Ok(Self {
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU used between `self` and `later`, in percent of one core.
    pub(crate) fn pct_until(self, later: CpuMark, tck: u64) -> f64 {
        let wall = later.at.saturating_duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        later.ticks.saturating_sub(self.ticks) as f64 / tck as f64 / wall * 100.0
    }
}

/// Where the example service's binary is: next to this one.
pub(crate) fn agent_bin_path(self_exe: &Path) -> Result<PathBuf, String> {
    let dir = self_exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", self_exe.display()))?;
    Ok(dir.join(format!("example-agent{}", std::env::consts::EXE_SUFFIX)))
}

/// Builds the example service's release binary into the target directory this binary lives
/// in (`cargo build --release -p example-agent`; a no-op when it is up to date).
pub(crate) fn build_agent(self_exe: &Path) -> Result<PathBuf, String> {
    let bin = agent_bin_path(self_exe)?;
    // <target>/release/bench → <target>
    let target_dir = self_exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot find the target directory of {}", self_exe.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate has no parent directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!(
        "building the example service: {cargo} build --release -p example-agent (CARGO_TARGET_DIR={})",
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "example-agent"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release -p example-agent` failed ({status})"
        ));
    }
    if !bin.is_file() {
        return Err(format!("{} was not built", bin.display()));
    }
    Ok(bin)
}

/// `nproc`, the CPU model and total memory.
pub(crate) fn machine_line() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!(
        "machine: nproc {nproc}, CPU \"{model}\", memory {:.1} GiB",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// The 1/5/15-minute load averages (`/proc/loadavg`).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}
