//! `msggate stress <scenario>`: a load generator and liveness checker for msggate (or any server
//! speaking its protocol). Scenarios: `churn`, `relay`, `idle`, `fanout`; docs/STRESS.md
//! describes each, its flags and every number it reports.
//!
//! This module owns the flags every scenario shares, their validation (bad arguments are
//! [`Failure::Config`], exit 2), the open-file budget check, and the verdict: the report goes to
//! stdout (and `--json FILE`), and any stall, lost ack or lost push, or a scenario's own verdict
//! (no work done, sessions not held), is a [`Failure::Runtime`] (exit 1); errors are reported
//! and warned about on stderr. It must not hold connection or protocol logic (client.rs and the
//! scenario modules do) and must never use an async runtime.

mod churn;
mod client;
mod fanout;
mod idle;
mod proc;
mod relay;
mod report;
mod run;
mod wire;

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::{Failure, OpenFileLimit, RESERVED_FDS};
use client::{Sources, Target};
use report::Summary;
use run::Settings;

#[derive(Debug, clap::Args)]
#[command(after_help = "Every scenario prints a report on stdout (and with --json FILE writes it as JSON) and \
    exits 0 when the run passed, 1 on any stall, lost ack or lost push (or when the scenario could not do its \
    work: no cycle, sessions not held), 2 on bad arguments. Errors are counted by kind and reported. \
    docs/STRESS.md documents the scenarios and every field of the report.")]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Users loop connect → send → ack (→ push) → disconnect; --overlap forces a kick per cycle.
    Churn(churn::Args),
    /// Connected users send to random partners; latency to the ack and to the push.
    Relay(relay::Args),
    /// Open and hold N sessions; handshakes/s and the server's RSS per session.
    Idle(idle::Args),
    /// One sender to many recipients, or one recipient with many sessions.
    Fanout(fanout::Args),
}

/// Flags every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The gateway, ws://HOST:PORT[/PATH].
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:10001")]
    url: String,

    /// The HS256 secret tokens are minted from. Default: msggate's development secret (what
    /// `msggate serve` uses when started without one).
    #[arg(long, value_name = "S", env = "MSGGATE_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// Users (accounts) to simulate. Default: churn 100, relay 1000, idle 1000.
    #[arg(long, value_name = "N")]
    users: Option<usize>,

    /// Length of the measurement window, e.g. 20s.
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// An operation (connect, handshake, ack, push, kick, close) not done within this is a stall.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,

    /// Longest time opening the sessions a scenario holds may take before the run gives up.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    ramp_timeout: Duration,

    /// Connections opening at once during the ramp (split over the threads). Keep it under the
    /// server's listen backlog (net.core.somaxconn caps it; std's default is 128), or SYNs are
    /// dropped and retried a second later.
    #[arg(long, value_name = "N", default_value_t = 100)]
    ramp_concurrency: usize,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// The server's process id: report its RSS and CPU time from /proc.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// Client reactor threads, each one mio Poll owning its share of the connections.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,

    /// Spread connections over K source addresses 127.0.0.1, 127.0.0.2, ... (1 to 65535, IPv4
    /// loopback targets only); 0: one per 20000 connections to 127.x, else 1.
    #[arg(long, value_name = "K", default_value_t = 0)]
    source_addrs: usize,

    /// Prefix of the user ids, so that runs against one server do not collide.
    #[arg(long, value_name = "P", default_value = "st")]
    prefix: String,
}

/// Validated common settings.
pub struct Ready {
    settings: Settings,
    json: Option<(PathBuf, File)>,
    prefix: String,
    url: String,
}

impl Common {
    /// Validates the flags for a scenario that will hold up to `max_conns` sockets at once.
    fn resolve(self, scenario: &'static str, users: usize, max_conns: usize) -> Result<Ready, Failure> {
        let bad = |m: String| Err(Failure::Config(m));
        if users == 0 {
            return bad("--users must be at least 1".into());
        }
        if users > u32::MAX as usize / 4 {
            return bad(format!("--users {users} is too large"));
        }
        if self.threads == 0 || self.threads > 256 {
            return bad(format!("--threads must be from 1 to 256, got {}", self.threads));
        }
        if self.ramp_concurrency == 0 {
            return bad("--ramp-concurrency must be at least 1".into());
        }
        if self.duration.is_zero() || self.stall_timeout.is_zero() || self.ramp_timeout.is_zero() {
            return bad("--duration, --stall-timeout and --ramp-timeout must be longer than zero".into());
        }
        if self.prefix.is_empty() || !self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return bad(format!("--prefix must be non-empty ASCII letters, digits, - or _, got {:?}", self.prefix));
        }
        let secret = match self.secret {
            Some(s) if s.is_empty() => return bad("--secret must not be empty".into()),
            Some(s) => s,
            None => msggate::DEV_SECRET.to_owned(),
        };
        if let Some(pid) = self.server_pid {
            if !proc::exists(pid) {
                return bad(format!("--server-pid {pid}: cannot read /proc/{pid}/status (no such process?)"));
            }
        }
        check_budget(max_conns, open_file_budget()).map_err(Failure::Config)?;
        if self.source_addrs > client::MAX_SOURCES {
            // Checked before anything is allocated for them.
            return bad(format!(
                "--source-addrs must be from 1 to {} (or 0: auto), got {}",
                client::MAX_SOURCES,
                self.source_addrs
            ));
        }
        let sources = match self.source_addrs {
            0 => Sources::Auto { conns: max_conns },
            n => Sources::Exactly(n),
        };
        let target = Target::parse(&self.url, &secret, sources).map_err(Failure::Config)?;
        if target.sources() == 1 && max_conns > client::PER_SOURCE {
            eprintln!(
                "msggate: warning: up to {max_conns} connections from one source address to {}: more than about \
                 28000 at once can run out of ephemeral ports (more sources only work against 127.0.0.1)",
                self.url
            );
        }
        let json = match self.json {
            Some(path) => {
                let f = File::create(&path)
                    .map_err(|e| Failure::Config(format!("--json {}: cannot create it: {e}", path.display())))?;
                Some((path, f))
            }
            None => None,
        };
        Ok(Ready {
            settings: Settings {
                scenario,
                target: Arc::new(target),
                threads: self.threads.min(max_conns.max(1)),
                duration: self.duration,
                stall: self.stall_timeout,
                ramp_timeout: self.ramp_timeout,
                server_pid: self.server_pid,
                ramp_concurrency: self.ramp_concurrency,
            },
            json,
            prefix: self.prefix,
            url: self.url,
        })
    }
}

/// Refuses a run that needs more than `allowed` connections (`None`: no known limit).
fn check_budget(max_conns: usize, allowed: Option<u64>) -> Result<(), String> {
    match allowed {
        Some(allowed) if max_conns as u64 > allowed => Err(format!(
            "this run needs up to {max_conns} connections but the open-file limit allows {allowed} \
             (the limit minus {RESERVED_FDS} reserved); lower --users or raise the hard limit (ulimit -Hn)"
        )),
        _ => Ok(()),
    }
}

/// Raises the open-file limit and returns how many connections it allows (`None`: unlimited or unknown).
fn open_file_budget() -> Option<u64> {
    let limit = match super::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(OpenFileLimit { kept: Some(soft), why }) => {
            eprintln!("msggate: warning: cannot raise the open-file limit ({why}); staying at {soft}");
            soft
        }
        Err(OpenFileLimit { kept: None, why }) => {
            eprintln!("msggate: warning: cannot raise or read the open-file limit: {why}");
            return None;
        }
    };
    (limit != rlimit::INFINITY).then(|| limit.saturating_sub(RESERVED_FDS))
}

pub fn run(args: Args) -> Result<(), Failure> {
    match args.scenario {
        Scenario::Churn(a) => churn::run(a),
        Scenario::Relay(a) => relay::run_relay(a),
        Scenario::Idle(a) => idle::run(a),
        Scenario::Fanout(a) => fanout::run(a),
    }
}

/// Adds the failures every scenario shares (stalls, losses, errors), prints the report, writes
/// the JSON, and returns the verdict.
fn conclude(mut summary: Summary, json: Option<(PathBuf, File)>) -> Result<(), Failure> {
    let t = &summary.tally;
    let c = &t.counts;
    let mut why = Vec::new();
    if t.stalls_total() > 0 {
        why.push(format!("{} stalls ({})", t.stalls_total(), kinds(&summary.to_json()["stalls_by_kind"])));
    }
    if c.lost_acks > 0 {
        why.push(format!("{} lost acks", c.lost_acks));
    }
    if c.lost_pushes > 0 {
        why.push(format!("{} lost pushes", c.lost_pushes));
    }
    why.append(&mut summary.failures);
    if t.errors_total() > 0 {
        // Errors alone do not fail a run (stalls, losses and the scenario's own verdicts do), but
        // they are never silent.
        eprintln!(
            "msggate: stress {}: warning: {} errors ({}); see the report",
            summary.scenario,
            t.errors_total(),
            kinds(&summary.to_json()["errors_by_kind"])
        );
    }
    summary.failures = why;

    let mut out = std::io::stdout().lock();
    let _ = out.write_all(summary.to_text().as_bytes()).and_then(|()| out.flush());
    if let Some((path, mut file)) = json {
        let text = serde_json::to_string_pretty(&summary.to_json()).unwrap_or_default();
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(|e| Failure::Runtime(format!("cannot write --json {}: {e}", path.display())))?;
    }
    if summary.failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(format!("stress {} failed: {}", summary.scenario, summary.failures.join("; "))))
    }
}

fn kinds(map: &serde_json::Value) -> String {
    map.as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_budget_refuses_runs_that_need_more() {
        assert_eq!(check_budget(960, Some(960)), Ok(()));
        let e = check_budget(961, Some(960)).unwrap_err();
        assert!(e.contains("needs up to 961 connections") && e.contains("open-file limit allows 960"), "{e}");
        assert_eq!(check_budget(usize::MAX, None), Ok(()), "no known limit: nothing to refuse");
    }
}
