//! CPU time and resident memory of another process, read from `/proc/<pid>`.
//!
//! [`sample`] reads `utime + stime` from `/proc/<pid>/stat` and `VmRSS` from `/proc/<pid>/status`.
//! The parsers are pure functions over the file text, tested on stored samples. CPU time is in
//! clock ticks; [`CLOCK_TICKS_PER_SEC`] is the kernel's USER_HZ, fixed at 100 in the Linux
//! user-space ABI on every architecture simgate targets (no `sysconf` call needed).
//!
//! What it does NOT do: child processes or threads separately, other operating systems, or
//! proportional memory (PSS): RSS counts shared pages (the binary, libraries) in full, so compare
//! RSS deltas, not absolute values, between processes.

use std::io;

/// Kernel clock ticks per second of the CPU times in `/proc/<pid>/stat` (USER_HZ).
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

/// Why a process could not be sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcError {
    /// Reading a `/proc` file failed (e.g. the process exited).
    Read(io::ErrorKind),
    /// A `/proc` file did not have the expected layout.
    Format,
}

impl std::fmt::Display for ProcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(kind) => write!(f, "reading /proc failed: {kind}"),
            Self::Format => f.write_str("unexpected /proc file layout"),
        }
    }
}

impl std::error::Error for ProcError {}

/// Reads CPU time and RSS of process `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|e| ProcError::Read(e.kind()))
    };
    let cpu_ticks = parse_stat_cpu_ticks(&read("stat")?).ok_or(ProcError::Format)?;
    let rss_kib = parse_status_rss_kib(&read("status")?).ok_or(ProcError::Format)?;
    Ok(ProcSample { cpu_ticks, rss_kib })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its LAST `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command come field 3 (state) onwards: utime is the 12th, stime the 13th.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in KiB from `/proc/<pid>/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let value = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value)
}

/// Average CPU use in percent of one core between two samples `elapsed_secs` apart.
pub fn cpu_percent(before: &ProcSample, after: &ProcSample, elapsed_secs: f64) -> f64 {
    if elapsed_secs <= 0.0 {
        return 0.0;
    }
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
    ticks as f64 / CLOCK_TICKS_PER_SEC as f64 / elapsed_secs * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (sim gate) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 4 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_rss_is_read_in_kib() {
        let status = "Name:\tsimgate\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        assert_eq!(parse_status_rss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(parse_status_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let sample = sample(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_kib > 0);
    }

    #[test]
    fn cpu_percent_is_per_core() {
        let a = ProcSample {
            cpu_ticks: 100,
            rss_kib: 0,
        };
        let b = ProcSample {
            cpu_ticks: 250,
            rss_kib: 0,
        };
        assert!((cpu_percent(&a, &b, 1.0) - 150.0).abs() < 1e-9);
        assert_eq!(cpu_percent(&a, &b, 0.0), 0.0);
    }
}
