//! This process's own figures for the heartbeat: CPU share, resident memory, free disk.
//!
//! `sysinfo` reads the process's CPU time and resident set (on Linux `/proc/<pid>/stat` and
//! `statm`; other OSes through their own calls); the share of all cores is computed here, over
//! the time between two samples. Free disk is `statvfs` on the current directory (`rustix`):
//! exactly the filesystem holding it, without listing every mount as `sysinfo::Disks` would.
//! Anything that cannot be read (an OS neither supports, no `/proc`) reads as zero: a
//! heartbeat is never refused for it.

use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

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
pub(crate) struct ProcessSampler {
    pid: u32,
    name: String,
    cores: u32,
    /// `sysinfo`'s view of this one process, refreshed by each sample.
    system: System,
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
        let mut sampler = Self {
            pid: std::process::id(),
            name: process_name(),
            cores,
            system: System::new(),
            last: None,
        };
        sampler.last = sampler.refresh().0;
        sampler
    }

    /// The figures now; CPU is the share used since the previous sample (or since `new`).
    pub(crate) fn sample(&mut self) -> ProcessFigures {
        let (now, working_set) = self.refresh();
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
            working_set,
            free_disk: free_disk_bytes().unwrap_or(0),
        }
    }

    /// Re-reads this process: its CPU time (when it was read) and its resident bytes.
    fn refresh(&mut self) -> (Option<CpuReading>, u64) {
        let pid = Pid::from_u32(self.pid);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let at = Instant::now();
        match self.system.process(pid) {
            Some(process) => {
                let cpu_secs = process.accumulated_cpu_time() as f64 / 1000.0;
                (Some(CpuReading { at, cpu_secs }), process.memory())
            }
            None => (None, 0),
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

    /// Spins this thread for `spin`.
    fn busy(spin: Duration) {
        let start = Instant::now();
        let mut x: u64 = 0;
        while start.elapsed() < spin {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
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
        busy(Duration::from_millis(250));
        let f = sampler.sample();
        assert_eq!(f.pid, std::process::id());
        assert!(!f.name.is_empty());
        assert!(f.cpu_percent > 0.0, "cpu after a busy loop: {f:?}");
        assert!(f.cpu_percent <= 100.0, "{f:?}");
        assert_eq!(f.cpu_percent, (f.cpu_percent * 10.0).round() / 10.0);
        assert!(f.working_set > 1024 * 1024, "rss: {f:?}");
        assert!(f.free_disk > 0, "free disk: {f:?}");
        // The state is kept: the next sample's share is the busy loop since this one.
        busy(Duration::from_millis(250));
        let g = sampler.sample();
        assert!(g.cpu_percent > 0.0, "cpu after a second busy loop: {g:?}");
        assert!(g.cpu_percent <= 100.0, "{g:?}");
    }

    #[test]
    fn an_unreadable_process_reads_zero() {
        // A pid no process has (Linux's `pid_max` is at most 2^22): sysinfo finds nothing,
        // and the figures read as zero.
        let mut sampler = ProcessSampler {
            pid: i32::MAX.unsigned_abs(),
            ..ProcessSampler::new()
        };
        busy(Duration::from_millis(50));
        let f = sampler.sample();
        assert_eq!(f.pid, i32::MAX.unsigned_abs());
        assert_eq!((f.cpu_percent, f.working_set), (0.0, 0), "{f:?}");
    }
}
