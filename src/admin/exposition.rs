//! Prometheus text exposition (format 0.0.4) of one gateway's numbers, written by hand.
//!
//! Owns the metric names, their `# HELP`/`# TYPE` lines and label sets: every [`Snapshot`]
//! field as `msggate_<field>_total` (counters) or `msggate_<field>` (gauges), then labelled
//! families for dashboards, then the process's RSS and thread count. [`render`] is pure: it
//! formats a [`Sample`] the admin thread collected and must not read the gateway, lock or do
//! I/O itself; only [`process_stats`] reads `/proc/self/status`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::metrics::Snapshot;
use crate::watchdog::ThreadHealth;

/// Everything one scrape shows, collected by the admin thread with non-blocking reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample<'a> {
    /// The gateway's counters and gauges.
    pub(crate) stats: Snapshot,
    /// The multi-login policy's name: the `by` label of kicks caused by a newer login.
    pub(crate) policy: &'a str,
    /// Every watched thread (`GatewayHandle::health`).
    pub(crate) threads: &'a [ThreadHealth],
    /// Stripped from thread names for labels (`msggate-10001-`), so labels survive a new port.
    pub(crate) thread_prefix: &'a str,
    /// Each handler worker's queue: (depth, capacity).
    pub(crate) workers: &'a [(usize, usize)],
    /// Sockets each reactor owns, by reactor id.
    pub(crate) reactor_conns: &'a [usize],
    /// The process's RSS and threads, where the platform tells.
    pub(crate) process: Option<ProcessStats>,
}

/// What `/proc/self/status` says about the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessStats {
    /// Resident set size in bytes (`VmRSS`).
    pub(crate) resident_bytes: u64,
    /// Threads in the process (`Threads`).
    pub(crate) threads: u64,
}

/// The process's RSS and thread count; `None` off Linux or when `/proc` is unreadable.
pub(crate) fn process_stats() -> Option<ProcessStats> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Reads `VmRSS:   1234 kB` and `Threads:   9` out of a `/proc/<pid>/status` text.
pub(crate) fn parse_status(text: &str) -> Option<ProcessStats> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some(ProcessStats { resident_bytes: field("VmRSS")?.checked_mul(1024)?, threads: field("Threads")? })
}

/// The exposition text of `s`.
pub(crate) fn render(s: &Sample<'_>) -> String {
    let mut out = Out::default();
    for f in s.stats.described() {
        let help = f.help.split_whitespace().collect::<Vec<_>>().join(" ");
        let (name, kind) = if f.counter {
            (format!("msggate_{}_total", f.name), "counter")
        } else {
            (format!("msggate_{}", f.name), "gauge")
        };
        out.family(&name, kind, &help);
        out.sample(&name, &[], f.value);
    }

    let st = &s.stats;
    let name = "msggate_handshake_failures_total";
    out.family(name, "counter", "Upgrades that did not become a session, by reason.");
    for (reason, v) in [
        ("rejected_args", st.handshakes_rejected_args),
        ("rejected_token", st.handshakes_rejected_token),
        ("timeout", st.handshake_timeouts),
        ("not_websocket", st.handshakes_failed),
        ("register_timeout", st.register_timeouts),
        ("refused_max_connections", st.refused_max_connections),
        ("refused_handoff_full", st.refused_handoff_full),
    ] {
        out.sample(name, &[("reason", reason)], v);
    }

    let name = "msggate_pushes_dropped_total";
    out.family(name, "counter", "Pushes not queued to a recipient session, by reason.");
    for (reason, v) in [
        ("closing", st.pushes_dropped_closing),
        ("slow_consumer", st.pushes_dropped_slow),
        ("busy", st.pushes_dropped_busy),
    ] {
        out.sample(name, &[("reason", reason)], v);
    }

    let name = "msggate_kicked_total";
    out.family(name, "counter", "Sessions kicked, by the multi-login policy that kicked them or by admin.");
    out.sample(name, &[("by", s.policy)], st.kicks);
    out.sample(name, &[("by", "admin")], st.kicks_admin);

    let short = |t: &ThreadHealth| t.name.strip_prefix(s.thread_prefix).unwrap_or(&t.name).to_owned();
    let queues: Vec<_> = s.threads.iter().filter(|t| t.queue.capacity > 0).collect();
    let name = "msggate_queue_depth";
    out.family(name, "gauge", "Items waiting in a queue: a role's queue, a reactor's inbox plus hand-off, a worker's.");
    for t in &queues {
        out.sample(name, &[("queue", &short(t))], t.queue.len);
    }
    for (i, (len, _)) in s.workers.iter().enumerate() {
        out.sample(name, &[("queue", &format!("worker-{i}"))], *len);
    }
    let name = "msggate_queue_capacity";
    out.family(name, "gauge", "A queue's capacity.");
    for t in &queues {
        out.sample(name, &[("queue", &short(t))], t.queue.capacity);
    }
    for (i, (_, cap)) in s.workers.iter().enumerate() {
        out.sample(name, &[("queue", &format!("worker-{i}"))], *cap);
    }
    let name = "msggate_queue_fallbacks_total";
    out.family(
        name,
        "counter",
        "Times a producer found a thread's queue full and took its fallback (try_send failed); \
         for the acceptor: every reactor's hand-off queue full.",
    );
    for t in s.threads {
        out.sample(name, &[("queue", &short(t))], t.fallbacks);
    }

    let name = "msggate_thread_progress_total";
    out.family(name, "counter", "Loop turns (or events) a watched thread has completed.");
    for t in s.threads {
        out.sample(name, &[("thread", &short(t))], t.progress);
    }
    let name = "msggate_thread_backlog";
    out.family(name, "gauge", "Work a watched thread holds privately, waiting for room in another queue.");
    for t in s.threads {
        out.sample(name, &[("thread", &short(t))], t.backlog);
    }
    let name = "msggate_thread_last_progress_seconds";
    out.family(name, "gauge", "Time since a watched thread's progress counter last moved.");
    for t in s.threads {
        out.sample_f64(name, &[("thread", &short(t))], t.since_progress.as_secs_f64());
    }
    let name = "msggate_thread_stalled";
    out.family(
        name,
        "gauge",
        "1 while the watchdog sees the thread stalled: queued work, no progress for stall_after.",
    );
    for t in s.threads {
        out.sample(name, &[("thread", &short(t))], u8::from(t.stalled));
    }

    let name = "msggate_reactor_connections";
    out.family(name, "gauge", "Sockets a reactor owns, handshakes in flight included.");
    for (i, n) in s.reactor_conns.iter().enumerate() {
        out.sample(name, &[("reactor", &i.to_string())], *n);
    }

    if let Some(p) = s.process {
        let name = "msggate_process_resident_memory_bytes";
        out.family(name, "gauge", "Resident set size of the whole process, in bytes.");
        out.sample(name, &[], p.resident_bytes);
        let name = "msggate_process_threads";
        out.family(name, "gauge", "Threads in the whole process.");
        out.sample(name, &[], p.threads);
    }
    out.buf
}

/// The text being written, and the families declared so far.
#[derive(Default)]
struct Out {
    buf: String,
    declared: BTreeSet<String>,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(valid_name(name), "invalid metric name {name:?}");
        let fresh = self.declared.insert(name.to_owned());
        debug_assert!(fresh, "metric family {name} declared twice");
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.buf, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let v = v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.buf, "{sep}{k}=\"{v}\"");
            }
            self.buf.push('}');
        }
        let _ = writeln!(self.buf, " {value}");
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let value = if value.is_finite() { value } else { 0.0 };
        self.sample(name, labels, format_args!("{value:.3}"));
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, Prometheus' rule for metric names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::QueueDepth;
    use std::collections::HashMap;
    use std::time::Duration;

    fn thread(name: &str, len: usize, capacity: usize, stalled: bool) -> ThreadHealth {
        ThreadHealth {
            name: name.into(),
            progress: 7,
            doing: "polling",
            queue: QueueDepth { len, capacity },
            backlog: 1,
            fallbacks: 3,
            since_progress: Duration::from_millis(1500),
            stalled,
        }
    }

    fn sample_text() -> String {
        let stats = Snapshot {
            accepted: 5,
            kicks: 2,
            kicks_admin: 1,
            pushes_dropped_slow: 4,
            sessions: 3,
            ..Default::default()
        };
        let threads = [
            thread("msggate-1-acceptor", 0, 0, false),
            thread("msggate-1-register", 2, 1024, true),
            thread("msggate-1-reactor-0", 0, 66560, false),
        ];
        render(&Sample {
            stats,
            policy: "same-terminal-kick",
            threads: &threads,
            thread_prefix: "msggate-1-",
            workers: &[(1, 8)],
            reactor_conns: &[4, 0],
            process: Some(ProcessStats { resident_bytes: 4096, threads: 9 }),
        })
    }

    /// Every line is a comment or a sample of a family declared (HELP then TYPE) before it, once.
    fn check_strictly(text: &str) -> HashMap<String, &str> {
        let mut types = HashMap::new();
        let mut helped = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(valid_name(name), "{name}");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(types.insert(name.to_owned(), kind).is_none(), "TYPE twice for {name}");
                assert!(kind == "counter" || kind == "gauge", "{kind}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(types.contains_key(name), "sample of undeclared family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                value.parse::<f64>().unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
        types
    }

    #[test]
    fn every_family_is_declared_once_with_valid_names() {
        let text = sample_text();
        let types = check_strictly(&text);
        assert_eq!(types["msggate_accepted_total"], "counter");
        assert_eq!(types["msggate_sessions"], "gauge");
        assert!(types.contains_key("msggate_process_threads"));
        assert!(text.contains("# HELP msggate_accepted_total Sockets accepted by the acceptor.\n"), "{text}");
    }

    #[test]
    fn parses_with_a_real_parser_and_carries_the_values() {
        let text = sample_text();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let find = |metric: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                    ref other => panic!("{metric}: {other:?}"),
                })
                .unwrap_or_else(|| panic!("no {metric} {label:?} in\n{text}"))
        };
        assert_eq!(find("msggate_accepted_total", None), 5.0);
        assert_eq!(find("msggate_sessions", None), 3.0);
        assert_eq!(find("msggate_kicked_total", Some(("by", "same-terminal-kick"))), 2.0);
        assert_eq!(find("msggate_kicked_total", Some(("by", "admin"))), 1.0);
        assert_eq!(find("msggate_pushes_dropped_total", Some(("reason", "slow_consumer"))), 4.0);
        assert_eq!(find("msggate_queue_depth", Some(("queue", "register"))), 2.0);
        assert_eq!(find("msggate_queue_capacity", Some(("queue", "worker-0"))), 8.0);
        assert_eq!(find("msggate_queue_fallbacks_total", Some(("queue", "acceptor"))), 3.0);
        assert_eq!(find("msggate_thread_stalled", Some(("thread", "register"))), 1.0);
        assert_eq!(find("msggate_thread_last_progress_seconds", Some(("thread", "reactor-0"))), 1.5);
        assert_eq!(find("msggate_reactor_connections", Some(("reactor", "0"))), 4.0);
        assert_eq!(find("msggate_process_resident_memory_bytes", None), 4096.0);
        // The acceptor reads no queue: it has fallbacks but no depth or capacity.
        assert!(!text.contains("msggate_queue_depth{queue=\"acceptor\"}"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Out::default();
        out.family("x_total", "counter", "a \\ b\nc");
        out.sample("x_total", &[("k", "q\"\\\n")], 1);
        assert_eq!(out.buf, "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{k=\"q\\\"\\\\\\n\"} 1\n");
    }

    #[test]
    fn status_parsing() {
        let text = "Name:\tmsggate\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t11\n";
        assert_eq!(parse_status(text), Some(ProcessStats { resident_bytes: 1234 * 1024, threads: 11 }));
        assert_eq!(parse_status("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            let p = process_stats().expect("/proc/self/status on Linux");
            assert!(p.resident_bytes > 0 && p.threads >= 1);
        }
    }

    #[test]
    fn metric_name_rule() {
        assert!(valid_name("msggate_a:b_1"));
        assert!(!valid_name("1abc") && !valid_name("a-b") && !valid_name(""));
    }
}
