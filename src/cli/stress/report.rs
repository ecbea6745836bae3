//! What a stress run measured: per-thread tallies (latency histograms, counters, errors by kind,
//! stall records), their merge, and the final report as text (stdout) and JSON (`--json FILE`).
//!
//! Owns the field names of the JSON report, which `docs/STRESS.md` documents one by one and
//! scripts read: renaming one is a breaking change. Must not do I/O other than writing the
//! report, and must not decide the exit code (the scenario runner does).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::proc::Sample;

/// How many error and stall examples are kept (per thread while running, in total when merged).
const EXAMPLES: usize = 10;

/// The latency histograms, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lat {
    /// TCP connect start to the 101.
    Handshake,
    /// 1003 written to its ack read.
    Ack,
    /// 1003 written to the recipient's 2001 read.
    Push,
    /// churn: connect start to the cycle's last awaited frame.
    Cycle,
}

const LATS: [(Lat, &str); 4] =
    [(Lat::Handshake, "handshake"), (Lat::Ack, "ack"), (Lat::Push, "push"), (Lat::Cycle, "cycle")];

/// An operation not done within `--stall-timeout`.
#[derive(Debug, Clone)]
pub struct Stall {
    /// connect, handshake, close, ack, push, kick, ramp.
    pub kind: &'static str,
    /// The user (and platform) whose operation stalled.
    pub user: String,
    /// What it was waiting for.
    pub what: String,
    /// How long it had waited when declared stalled, ms.
    pub waited_ms: u64,
    /// When it was declared, ms since the run started.
    pub at_ms: u64,
}

/// Counters a thread keeps; summed over threads.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub connects: u64,
    pub handshakes: u64,
    pub handshakes_ramp: u64,
    pub handshakes_window: u64,
    pub cycles: u64,
    pub cycles_window: u64,
    pub kicks: u64,
    pub sent: u64,
    pub acks: u64,
    pub acks_window: u64,
    pub pushes: u64,
    pub pushes_window: u64,
    pub lost_acks: u64,
    pub lost_pushes: u64,
    pub duplicate_pushes: u64,
}

/// One thread's measurements.
#[derive(Debug, Clone)]
pub struct Tally {
    hist: [Histogram<u64>; 4],
    pub counts: Counts,
    errors: BTreeMap<String, u64>,
    error_examples: Vec<String>,
    stalls: BTreeMap<&'static str, u64>,
    stall_examples: Vec<Stall>,
}

impl Default for Tally {
    fn default() -> Tally {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Tally {
            hist: [h(), h(), h(), h()],
            counts: Counts::default(),
            errors: BTreeMap::new(),
            error_examples: Vec::new(),
            stalls: BTreeMap::new(),
            stall_examples: Vec::new(),
        }
    }
}

impl Tally {
    /// Records a latency in microseconds (clamped to the histogram's range).
    pub fn latency(&mut self, which: Lat, us: u64) {
        self.hist[which as usize].saturating_record(us.max(1));
    }

    /// Counts an error of `kind` (a stable snake_case name); the first few keep `detail`.
    pub fn error(&mut self, kind: &str, detail: impl FnOnce() -> String) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_owned(), 1);
            }
        }
        if self.error_examples.len() < EXAMPLES {
            let d = detail();
            self.error_examples.push(format!("{kind}: {d}"));
        }
    }

    /// Counts a stall and keeps the first few.
    pub fn stall(&mut self, stall: Stall) {
        *self.stalls.entry(stall.kind).or_default() += 1;
        if self.stall_examples.len() < EXAMPLES {
            self.stall_examples.push(stall);
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn stalls_total(&self) -> u64 {
        self.stalls.values().sum()
    }

    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Tally) {
        for (mine, theirs) in self.hist.iter_mut().zip(other.hist.iter()) {
            // Same bounds on both sides: `add` cannot fail; a failure would only lose samples.
            let _ = mine.add(theirs);
        }
        let (a, b) = (&mut self.counts, other.counts);
        a.connects += b.connects;
        a.handshakes += b.handshakes;
        a.handshakes_ramp += b.handshakes_ramp;
        a.handshakes_window += b.handshakes_window;
        a.cycles += b.cycles;
        a.cycles_window += b.cycles_window;
        a.kicks += b.kicks;
        a.sent += b.sent;
        a.acks += b.acks;
        a.acks_window += b.acks_window;
        a.pushes += b.pushes;
        a.pushes_window += b.pushes_window;
        a.lost_acks += b.lost_acks;
        a.lost_pushes += b.lost_pushes;
        a.duplicate_pushes += b.duplicate_pushes;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, n) in other.stalls {
            *self.stalls.entry(k).or_default() += n;
        }
        self.error_examples.extend(other.error_examples);
        self.error_examples.truncate(EXAMPLES);
        self.stall_examples.extend(other.stall_examples);
        self.stall_examples.sort_by_key(|s| s.at_ms);
        self.stall_examples.truncate(EXAMPLES);
    }

    fn latency_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (lat, name) in LATS {
            let h = &self.hist[lat as usize];
            let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
            out.insert(
                name.into(),
                json!({
                    "count": h.len(),
                    "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999),
                    "max": if h.is_empty() { 0 } else { h.max() },
                    "mean": if h.is_empty() { 0.0 } else { (h.mean() * 10.0).round() / 10.0 },
                }),
            );
        }
        Value::Object(out)
    }
}

/// /proc readings of the server around the run.
#[derive(Debug, Clone, Copy)]
pub struct ServerSamples {
    pub pid: u32,
    /// Before the first connect.
    pub before: Sample,
    /// When the ramp ended (every session open), i.e. when the window started.
    pub ramp_end: Sample,
    /// When the window ended (before the drain and before any session closed).
    pub window_end: Sample,
}

/// Everything the final report says.
#[derive(Debug)]
pub struct Summary {
    pub scenario: &'static str,
    pub url: String,
    pub threads: usize,
    pub users: usize,
    /// The scenario's own parameters, echoed as given.
    pub params: Value,
    pub ramp_s: f64,
    pub window_s: f64,
    pub drain_s: f64,
    /// Sessions the scenario holds for the whole run (idle, relay, fanout, churn's listeners).
    pub sessions_wanted: u64,
    /// Of those, open when the window ended.
    pub sessions_open: u64,
    /// Of those, open when the ramp ended (the RSS figure of every scenario but idle is taken then).
    pub sessions_at_ramp_end: u64,
    pub tally: Tally,
    pub server: Option<ServerSamples>,
    /// This process's CPU over the window, µs.
    pub client_cpu_us: Option<u64>,
    /// Why the run failed (empty: it passed).
    pub failures: Vec<String>,
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn ratio(a: Option<u64>, n: u64) -> Option<f64> {
    a.filter(|_| n > 0).map(|a| (a as f64 / n as f64 * 100.0).round() / 100.0)
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

impl Summary {
    /// Handshakes per second: over the ramp when the scenario has one, else over the window.
    pub fn handshakes_per_s(&self) -> f64 {
        let c = &self.tally.counts;
        if c.handshakes_ramp > 0 && self.scenario != "churn" {
            per_s(c.handshakes_ramp, self.ramp_s)
        } else {
            per_s(c.handshakes_window, self.window_s)
        }
    }

    /// Messages relayed per second in the window (pushes read by recipients).
    pub fn messages_per_s(&self) -> f64 {
        per_s(self.tally.counts.pushes_window, self.window_s)
    }

    fn server_json(&self) -> Value {
        let Some(s) = self.server else { return Value::Null };
        let c = &self.tally.counts;
        // Sessions held at "full": idle holds them through the window; the others are full at the
        // ramp's end. RSS and the session count are taken at the same moment.
        let (full, sessions) = if self.scenario == "idle" {
            (s.window_end, self.sessions_open)
        } else {
            (s.ramp_end, self.sessions_at_ramp_end)
        };
        let rss_growth = delta(s.before.rss_kib, full.rss_kib);
        let cpu_ramp = delta(s.before.cpu_us, s.ramp_end.cpu_us);
        let cpu_window = delta(s.ramp_end.cpu_us, s.window_end.cpu_us);
        json!({
            "pid": s.pid,
            "rss_before_kib": s.before.rss_kib,
            "rss_full_kib": full.rss_kib,
            "rss_end_kib": s.window_end.rss_kib,
            "rss_per_session_kib": ratio(rss_growth, sessions),
            "cpu_us_ramp": cpu_ramp,
            "cpu_us_per_session": ratio(cpu_ramp, c.handshakes_ramp),
            "cpu_us_window": cpu_window,
            "cpu_percent_window": cpu_window.map(|us| (us as f64 / 1e4 / self.window_s.max(1e-9) * 10.0).round() / 10.0),
            "cpu_us_per_msg": ratio(cpu_window, c.pushes_window),
            "cpu_us_per_cycle": ratio(cpu_window, c.cycles_window),
        })
    }

    /// The report as JSON; every field is documented in docs/STRESS.md.
    pub fn to_json(&self) -> Value {
        let c = &self.tally.counts;
        let stall_examples: Vec<Value> = self
            .tally
            .stall_examples
            .iter()
            .map(
                |s| json!({"kind": s.kind, "user": s.user, "what": s.what, "waited_ms": s.waited_ms, "at_ms": s.at_ms}),
            )
            .collect();
        json!({
            "scenario": self.scenario,
            "url": self.url,
            "threads": self.threads,
            "users": self.users,
            "params": self.params,
            "ok": self.failures.is_empty(),
            "failures": self.failures,
            "ramp_s": round3(self.ramp_s),
            "window_s": round3(self.window_s),
            "drain_s": round3(self.drain_s),
            "connections": c.connects,
            "handshakes": c.handshakes,
            "handshakes_per_s": self.handshakes_per_s(),
            "sessions_wanted": self.sessions_wanted,
            "sessions_open": self.sessions_open,
            "cycles": c.cycles,
            "cycles_per_s": per_s(c.cycles_window, self.window_s),
            "kicks": c.kicks,
            "messages_sent": c.sent,
            "acks": c.acks,
            "pushes": c.pushes,
            "messages_per_s": self.messages_per_s(),
            "acks_per_s": per_s(c.acks_window, self.window_s),
            "lost_acks": c.lost_acks,
            "lost_pushes": c.lost_pushes,
            "duplicate_pushes": c.duplicate_pushes,
            "latency_us": self.tally.latency_json(),
            "errors": self.tally.errors_total(),
            "errors_by_kind": self.tally.errors,
            "error_examples": self.tally.error_examples,
            "stalls": self.tally.stalls_total(),
            "stalls_by_kind": self.tally.stalls,
            "stall_examples": stall_examples,
            "server": self.server_json(),
            "client": {
                "cpu_us_window": self.client_cpu_us,
                "cpu_us_per_msg": ratio(self.client_cpu_us, c.pushes_window),
            },
        })
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let c = &self.tally.counts;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "msggate stress {} against {}: {} users, {} threads",
            self.scenario, self.url, self.users, self.threads
        );
        let _ = writeln!(o, "  parameters: {}", self.params);
        let _ = writeln!(
            o,
            "  time: ramp {:.2} s, window {:.2} s, drain {:.2} s",
            self.ramp_s, self.window_s, self.drain_s
        );
        let _ = writeln!(
            o,
            "  connections: {} started, {} handshakes ({:.0}/s), sessions held {}/{}",
            c.connects,
            c.handshakes,
            self.handshakes_per_s(),
            self.sessions_open,
            self.sessions_wanted
        );
        if c.cycles > 0 || self.scenario == "churn" {
            let _ = writeln!(
                o,
                "  cycles: {} ({:.0}/s in the window), kicks {}",
                c.cycles,
                per_s(c.cycles_window, self.window_s),
                c.kicks
            );
        }
        if c.sent > 0 {
            let _ = writeln!(
                o,
                "  messages: sent {}, acks {}, pushes {}; {:.0} msgs/s relayed, {:.0} acks/s",
                c.sent,
                c.acks,
                c.pushes,
                self.messages_per_s(),
                per_s(c.acks_window, self.window_s)
            );
        }
        let _ = writeln!(
            o,
            "  lost: {} acks, {} pushes; {} duplicate pushes",
            c.lost_acks, c.lost_pushes, c.duplicate_pushes
        );
        let _ = writeln!(o, "  latency µs       count      p50      p90      p99    p99.9      max");
        for (lat, name) in LATS {
            let h = &self.tally.hist[lat as usize];
            if h.is_empty() {
                continue;
            }
            let q = |q: f64| h.value_at_quantile(q);
            let _ = writeln!(
                o,
                "    {name:<10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
                h.len(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                h.max()
            );
        }
        if self.tally.errors.is_empty() {
            let _ = writeln!(o, "  errors: none");
        } else {
            let _ = writeln!(o, "  errors: {}", self.tally.errors_total());
            for (k, n) in &self.tally.errors {
                let _ = writeln!(o, "    {k}: {n}");
            }
            for e in &self.tally.error_examples {
                let _ = writeln!(o, "    e.g. {e}");
            }
        }
        if self.tally.stalls.is_empty() {
            let _ = writeln!(o, "  stalls: none");
        } else {
            let _ = writeln!(o, "  stalls: {}", self.tally.stalls_total());
            for (k, n) in &self.tally.stalls {
                let _ = writeln!(o, "    {k}: {n}");
            }
            for s in &self.tally.stall_examples {
                let _ = writeln!(
                    o,
                    "    at {:.3} s: {} {} stalled: {} (waited {} ms)",
                    s.at_ms as f64 / 1e3,
                    s.user,
                    s.kind,
                    s.what,
                    s.waited_ms
                );
            }
        }
        if let Value::Object(s) = self.server_json() {
            let f = |k: &str| s.get(k).filter(|v| !v.is_null()).map_or_else(|| "-".to_owned(), Value::to_string);
            let _ = writeln!(
                o,
                "  server pid {}: RSS {} KiB before, {} KiB full, {} KiB at the window's end; {} KiB per session",
                f("pid"),
                f("rss_before_kib"),
                f("rss_full_kib"),
                f("rss_end_kib"),
                f("rss_per_session_kib")
            );
            let _ = writeln!(
                o,
                "    CPU: ramp {} µs ({} µs per session); window {} µs ({}% of a core), {} µs per msg, {} µs per cycle",
                f("cpu_us_ramp"),
                f("cpu_us_per_session"),
                f("cpu_us_window"),
                f("cpu_percent_window"),
                f("cpu_us_per_msg"),
                f("cpu_us_per_cycle")
            );
        }
        if let Some(us) = self.client_cpu_us {
            let _ = writeln!(
                o,
                "  client CPU in the window: {us} µs ({:.0}% of a core)",
                us as f64 / 1e4 / self.window_s.max(1e-9)
            );
        }
        if self.failures.is_empty() {
            let _ = writeln!(o, "  result: ok");
        } else {
            let _ = writeln!(o, "  result: FAILED: {}", self.failures.join("; "));
        }
        o
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_errors_and_histograms() {
        let mut a = Tally::default();
        a.latency(Lat::Ack, 100);
        a.error("connect_refused", || "u1".into());
        a.counts.sent = 2;
        let mut b = Tally::default();
        b.latency(Lat::Ack, 300);
        b.error("connect_refused", || "u2".into());
        b.stall(Stall { kind: "ack", user: "u2".into(), what: "ack".into(), waited_ms: 5000, at_ms: 9 });
        b.counts.sent = 3;
        a.merge(b);
        assert_eq!(a.counts.sent, 5);
        assert_eq!(a.error_count("connect_refused"), 2);
        assert_eq!(a.stalls_total(), 1);
        assert_eq!(a.hist[Lat::Ack as usize].len(), 2);
        let s = Summary {
            scenario: "relay",
            url: "ws://x".into(),
            threads: 1,
            users: 2,
            params: json!({}),
            ramp_s: 1.0,
            window_s: 2.0,
            drain_s: 0.0,
            sessions_wanted: 2,
            sessions_open: 2,
            sessions_at_ramp_end: 2,
            tally: a,
            server: None,
            client_cpu_us: None,
            failures: vec!["x".into()],
        };
        let j = s.to_json();
        assert_eq!(j["latency_us"]["ack"]["count"], 2);
        assert_eq!(j["errors_by_kind"]["connect_refused"], 2);
        assert_eq!(j["stalls"], 1);
        assert_eq!(j["ok"], false);
        assert!(s.to_text().contains("u2 ack stalled"));
    }

    #[test]
    fn rss_per_session_divides_by_the_sessions_open_when_the_rss_was_read() {
        let sample = |rss: u64| Sample { rss_kib: Some(rss), cpu_us: Some(0) };
        let summary = |scenario| Summary {
            scenario,
            url: "ws://x".into(),
            threads: 1,
            users: 100,
            params: json!({}),
            ramp_s: 1.0,
            window_s: 1.0,
            drain_s: 0.0,
            sessions_wanted: 100,
            // Half the sessions died during the window.
            sessions_open: 50,
            sessions_at_ramp_end: 100,
            tally: Tally::default(),
            server: Some(ServerSamples {
                pid: 1,
                before: sample(1000),
                ramp_end: sample(2000),
                window_end: sample(1600),
            }),
            client_cpu_us: None,
            failures: Vec::new(),
        };
        // relay and fanout read RSS at the ramp's end, with 100 sessions open: 1000 KiB / 100.
        assert_eq!(summary("relay").to_json()["server"]["rss_per_session_kib"], 10.0);
        // idle reads it at the end of the hold, with 50 open: 600 KiB / 50.
        assert_eq!(summary("idle").to_json()["server"]["rss_per_session_kib"], 12.0);
    }
}
