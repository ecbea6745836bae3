//! Readings from `/proc`: a process's resident set size and CPU time (the server's, with
//! `--server-pid`, and this process's own).
//!
//! Owns nothing but file reads; every reading is `Option`, `None` when the process is gone or the
//! file is not what it should be. Must not panic, block for long, or spawn more than the one
//! `getconf` call.

use std::sync::OnceLock;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// VmRSS in KiB.
    pub rss_kib: Option<u64>,
    /// utime + stime in microseconds.
    pub cpu_us: Option<u64>,
}

impl Sample {
    /// Reads `pid` (`None`: this process).
    pub fn take(pid: Option<u32>) -> Sample {
        let dir = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
        Sample { rss_kib: rss_kib(&dir), cpu_us: cpu_us(&dir) }
    }
}

/// Whether `/proc/PID` can be read at all.
pub fn exists(pid: u32) -> bool {
    rss_kib(&pid.to_string()).is_some()
}

fn rss_kib(dir: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{dir}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_us(dir: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{dir}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    Some(ticks.saturating_mul(1_000_000) / clk_tck())
}

/// utime + stime in clock ticks: fields 14 and 15 of `/proc/PID/stat`. Field 2 (comm) may hold
/// spaces and parentheses, so counting starts after the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that cannot be run).
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t   1234 kB\nVmData: 1 kB\n"), Some(1234));
        assert_eq!(parse_rss("Name:\tx\n"), None);
        let stat = "42 (a ) b) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(100));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = Sample::take(None);
        assert!(s.rss_kib.is_some_and(|r| r > 0));
        assert!(s.cpu_us.is_some());
        assert!(exists(std::process::id()));
    }
}
