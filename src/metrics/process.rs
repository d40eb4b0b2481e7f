//! The standard `process_*` figures, read from `/proc/self` at scrape time.

use std::time::{SystemTime, UNIX_EPOCH};

/// What Prometheus's process collector reports, for this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time the process started.
    pub start_time: f64,
}

impl Process {
    /// Reads the figures; any that cannot be read stay 0 (a scrape never fails for them).
    pub fn read() -> Self {
        let mut p = Process::default();
        use nix::unistd::{SysconfVar, sysconf};
        let conf = |v| sysconf(v).ok().flatten().filter(|&n| n > 0);
        let ticks = conf(SysconfVar::CLK_TCK).unwrap_or(100) as f64;
        let page = conf(SysconfVar::PAGE_SIZE).unwrap_or(4096) as u64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After ")": state is field 3 of stat(5), so field n is f[n - 3].
            let num = |n: usize| {
                f.get(n - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            p.cpu_seconds = (num(14) + num(15)) as f64 / ticks;
            p.virtual_bytes = num(23);
            p.resident_bytes = num(24) * page;
            if let Some(boot) = boot_time() {
                p.start_time = boot + num(22) as f64 / ticks;
            }
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(0, |(soft, _)| soft);
        p
    }
}

/// Unix time the machine booted (`btime` in /proc/stat).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<f64>().ok()
}

/// Now, as Unix time in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = Process::read();
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds >= 3, "stdin, stdout, stderr at least");
        assert!(p.max_fds >= p.open_fds);
        // Started in the past, and after the machine booted (within a day of now for a
        // test run is not assumed).
        assert!(p.start_time > 1.0e9 && p.start_time <= unix_now());
    }
}
