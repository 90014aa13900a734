#![allow(dead_code)]
//! This process's own figures for the heartbeat: CPU share, resident memory, free disk.
//!
//! On Linux the CPU time comes from `/proc/self/stat` (user + system ticks), the resident set
//! from `/proc/self/statm`, and free disk from `statvfs` on the current directory. Anything that
//! cannot be read (another OS, no `/proc`) reads as zero: a heartbeat is never refused for it.

use std::time::Instant;

/// One sample of this process's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessFigures {
    /// The OS process id.
    pub(crate) pid: u32,
    /// The executable's name, without its directory.
    pub(crate) name: String,
    /// CPU used since the previous sample, in percent of all cores (0..=100), 1 decimal.
    pub(crate) cpu_percent: f64,
    /// Resident set size in bytes.
    pub(crate) working_set: u64,
    /// Free bytes (available to this user) of the filesystem holding the current directory.
    pub(crate) free_disk: u64,
}

/// Samples this process's figures; keeps the previous CPU reading to compute a share.
#[derive(Debug)]
pub(crate) struct ProcessSampler {
    pid: u32,
    name: String,
    cores: u32,
    last: Option<CpuReading>,
}

#[derive(Clone, Copy, Debug)]
struct CpuReading {
    at: Instant,
    /// CPU time (user + system) in seconds.
    cpu_secs: f64,
}

impl ProcessSampler {
    /// A sampler whose first [`sample`](Self::sample) reports CPU used since now.
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Self {
            pid: std::process::id(),
            name: process_name(),
            cores,
            last: cpu_reading(),
        }
    }

    /// The figures now; CPU is the share used since the previous sample (or since `new`).
    pub(crate) fn sample(&mut self) -> ProcessFigures {
        let now = cpu_reading();
        let cpu_percent = match (self.last, now) {
            (Some(before), Some(after)) => cpu_share(before, after, self.cores),
            _ => 0.0,
        };
        if now.is_some() {
            self.last = now;
        }
        ProcessFigures {
            pid: self.pid,
            name: self.name.clone(),
            cpu_percent,
            working_set: resident_bytes().unwrap_or(0),
            free_disk: free_disk_bytes().unwrap_or(0),
        }
    }
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Percent of all cores used between two readings, rounded to 1 decimal, within 0..=100.
fn cpu_share(before: CpuReading, after: CpuReading, cores: u32) -> f64 {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    let used = after.cpu_secs - before.cpu_secs;
    if wall <= 0.0 || used <= 0.0 || !used.is_finite() {
        return 0.0;
    }
    let percent = used / wall / f64::from(cores.max(1)) * 100.0;
    ((percent * 10.0).round() / 10.0).clamp(0.0, 100.0)
}

/// The executable's file name (what .NET calls the process name).
fn process_name() -> String {
    let from_exe = std::env::current_exe().ok().and_then(|path| {
        path.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
    });
    from_exe
        .or_else(|| {
            std::env::args_os().next().and_then(|arg0| {
                std::path::Path::new(&arg0)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(target_os = "linux")]
fn cpu_reading() -> Option<CpuReading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let at = Instant::now();
    let ticks = parse_stat_cpu_ticks(&stat)?;
    let per_sec = rustix::param::clock_ticks_per_second();
    if per_sec == 0 {
        return None;
    }
    Some(CpuReading {
        at,
        cpu_secs: ticks as f64 / per_sec as f64,
    })
}

#[cfg(not(target_os = "linux"))]
fn cpu_reading() -> Option<CpuReading> {
    None
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields are counted after the
/// last `)`: there, field 3 (`state`) is index 0, so `utime` (14) is 11 and `stime` (15) is 12.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

#[cfg(target_os = "linux")]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages = parse_statm_resident_pages(&statm)?;
    let page = u64::try_from(rustix::param::page_size()).ok()?;
    Some(pages.saturating_mul(page))
}

#[cfg(not(target_os = "linux"))]
fn resident_bytes() -> Option<u64> {
    None
}

/// The resident page count: the second field of `/proc/<pid>/statm`.
fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(unix)]
fn free_disk_bytes() -> Option<u64> {
    let dir = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("."));
    let st = rustix::fs::statvfs(&dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn free_disk_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "4242 (my (odd) job) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 3 0 12345 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(22));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(
            parse_statm_resident_pages("1000 250 30 1 0 90 0\n"),
            Some(250)
        );
        assert_eq!(parse_statm_resident_pages(""), None);
    }

    #[test]
    fn share_is_bounded_and_rounded() {
        let at = Instant::now();
        let before = CpuReading { at, cpu_secs: 1.0 };
        let after = CpuReading {
            at: at + Duration::from_secs(2),
            cpu_secs: 2.0,
        };
        assert_eq!(cpu_share(before, after, 2), 25.0);
        assert_eq!(cpu_share(before, after, 0), 50.0);
        assert_eq!(cpu_share(after, before, 2), 0.0);
        let greedy = CpuReading {
            at: at + Duration::from_secs(1),
            cpu_secs: 100.0,
        };
        assert_eq!(cpu_share(before, greedy, 1), 100.0);
        let third = CpuReading {
            at: at + Duration::from_secs(3),
            cpu_secs: 2.0,
        };
        assert_eq!(cpu_share(before, third, 1), 33.3);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_real_figures() {
        let mut sampler = ProcessSampler::new();
        let start = Instant::now();
        let mut x: u64 = 0;
        while start.elapsed() < Duration::from_millis(250) {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
        let f = sampler.sample();
        assert_eq!(f.pid, std::process::id());
        assert!(!f.name.is_empty());
        assert!(f.cpu_percent > 0.0, "cpu after a busy loop: {f:?}");
        assert!(f.cpu_percent <= 100.0, "{f:?}");
        assert_eq!(f.cpu_percent, (f.cpu_percent * 10.0).round() / 10.0);
        assert!(f.working_set > 1024 * 1024, "rss: {f:?}");
        assert!(f.free_disk > 0, "free disk: {f:?}");
    }
}
