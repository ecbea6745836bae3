//! `msggate stress` end to end: the real binary against a real gateway (a `msggate serve` child
//! or an in-process one), checking its exit code and its JSON report; a listener that never
//! answers proves the stall detector can fail a run; bad arguments exit 2. Every child is killed
//! by its guard's `Drop`, every wait is bounded, and every test runs under the hang watchdog.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{self, watchdog};

const BIN: &str = env!("CARGO_BIN_EXE_msggate");

/// A child process killed and reaped on drop, its stdout lines and its stderr read by threads.
struct Child_ {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Child_ {
    fn spawn(args: &[&str]) -> Child_ {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MSGGATE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("spawn msggate");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            let _ = err_tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        Child_ { child, lines, stderr: stderr_rx }
    }

    /// `msggate serve` on 127.0.0.1:0 with `extra` flags; returns it and its address.
    fn serve(extra: &[&str]) -> (Child_, SocketAddr) {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"];
        args.extend_from_slice(extra);
        let server = Child_::spawn(&args);
        let line = server.lines.recv_timeout(Duration::from_secs(10)).expect("the listen line");
        let addr = line.strip_prefix("msggate listening on ").expect("listen line").parse().expect("an address");
        (server, addr)
    }

    /// Waits (bounded) for the child to exit on its own.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let stderr = match self.stderr.recv_timeout(limit) {
            Ok(s) => s,
            Err(_) => panic!("msggate did not exit within {limit:?}; killing it"),
        };
        let status = self.child.wait().expect("wait");
        // Every line up to stdout's EOF: its reader thread may still be behind the exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stdout = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stdout not closed 10 s after the exit"),
            }
        }
        (status, stdout.join("\n"), stderr)
    }
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON report path in the temp directory, removed on drop.
struct TempJson(PathBuf);

impl TempJson {
    fn new() -> TempJson {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempJson(std::env::temp_dir().join(format!("msggate-stress-test-{}-{n}.json", std::process::id())))
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }

    fn read(&self) -> Value {
        let text = std::fs::read_to_string(&self.0).expect("the JSON report was written");
        serde_json::from_str(&text).expect("the report is JSON")
    }
}

impl Drop for TempJson {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `msggate stress ARGS --json FILE`; returns the exit status, stdout, stderr and the report.
fn stress(args: &[&str], limit: Duration) -> (ExitStatus, String, String, Value) {
    let json = TempJson::new();
    let mut full = vec!["stress"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--json", json.arg()]);
    let (status, stdout, stderr) = Child_::spawn(&full).finish(limit);
    let report = json.read();
    (status, stdout, stderr, report)
}

fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// The seed's scenario in CI: 100 users churning with overlapping logins against a gateway
/// whose role queues hold one entry; every cycle must complete and kick, nothing may stall.
#[test]
fn ci_churn_with_overlap_completes_cycles_and_kicks_without_stalls() {
    watchdog(Duration::from_secs(60), || {
        let (_server, addr) = Child_::serve(&["--register-queue", "1", "--unregister-queue", "1"]);
        let url = format!("ws://{addr}");
        let args = ["churn", "--users", "100", "--overlap", "--duration", "10s", "--url", &url];
        let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(r["scenario"], "churn");
        assert_eq!(r["ok"], true, "{r:#}");
        assert_eq!(u(&r, "stalls"), 0, "{r:#}");
        assert_eq!(u(&r, "lost_acks") + u(&r, "lost_pushes"), 0, "{r:#}");
        assert_eq!(u(&r, "errors"), 0, "{r:#}");
        assert!(u(&r, "cycles") > 0 && r["cycles_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
        assert!(u(&r, "kicks") > 0, "overlapping logins must be kicked: {r:#}");
        // Every cycle but each user's last kicks the previous session.
        assert!(u(&r, "kicks") + 100 >= u(&r, "cycles"), "{r:#}");
        assert!(stdout.contains("result: ok"), "the text report on stdout:\n{stdout}");
    });
}

#[test]
fn churn_with_expect_push_relay_idle_and_fanout_report_sane_numbers() {
    watchdog(Duration::from_secs(90), || {
        let gw = util::start(|_| {});
        let url = format!("ws://{}", gw.local_addr());
        let common = ["--url", url.as_str(), "--secret", util::SECRET, "--stall-timeout", "5s"];
        let run = |args: &[&str]| {
            let mut all: Vec<&str> = args.to_vec();
            all.extend_from_slice(&common);
            let (status, stdout, stderr, r) = stress(&all, Duration::from_secs(30));
            assert_eq!(status.code(), Some(0), "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
            assert_eq!((u(&r, "stalls"), u(&r, "lost_acks"), u(&r, "lost_pushes"), u(&r, "errors")), (0, 0, 0, 0));
            r
        };

        let r = run(&["churn", "--users", "20", "--expect-push", "--duration", "1s"]);
        assert!(u(&r, "cycles") > 0 && u(&r, "pushes") >= u(&r, "cycles"), "{r:#}");
        assert_eq!(u(&r, "sessions_open"), 20, "the listeners were held: {r:#}");

        let r = run(&[
            "relay",
            "--users",
            "50",
            "--inflight",
            "2",
            "--duration",
            "2s",
            "--server-pid",
            &std::process::id().to_string(),
        ]);
        assert!(u(&r, "messages_sent") > 0 && u(&r, "pushes") == u(&r, "messages_sent"), "{r:#}");
        assert_eq!(u(&r, "acks"), u(&r, "messages_sent"), "{r:#}");
        assert!(r["messages_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
        assert!(u(&r, "latency_us.ack.count") > 0 && u(&r, "latency_us.push.p99") >= u(&r, "latency_us.push.p50"));
        assert!(r["server"]["cpu_us_per_msg"].is_number(), "--server-pid gives CPU per message: {r:#}");

        let r = run(&["relay", "--users", "20", "--rate", "500", "--size", "10", "--duration", "1s"]);
        assert!(u(&r, "messages_sent") >= 300, "open loop at 500/s for 1 s: {r:#}");

        let r = run(&["idle", "--users", "300", "--duration", "1s"]);
        assert_eq!((u(&r, "sessions_open"), u(&r, "handshakes")), (300, 300), "{r:#}");
        assert!(r["handshakes_per_s"].as_f64().unwrap() > 0.0, "{r:#}");

        let r = run(&["fanout", "--recipients", "5", "--sessions", "3", "--spread-platforms", "--duration", "1s"]);
        assert!(u(&r, "messages_sent") > 0 && u(&r, "pushes") == 3 * u(&r, "messages_sent"), "{r:#}");
        drop(gw);
    });
}

/// A listener that accepts and never answers: every handshake must be reported as a stall after
/// --stall-timeout, and the run must end (exit 1) rather than hang.
#[test]
fn a_server_that_never_answers_is_reported_as_stalled_handshakes() {
    watchdog(Duration::from_secs(60), || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                held.extend(s.ok()); // accepted, never read, never answered
            }
        });
        let url = format!("ws://{addr}");
        for scenario in ["idle", "churn"] {
            let args = [scenario, "--users", "5", "--stall-timeout", "1s", "--duration", "2s", "--url", &url];
            let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(20));
            assert_eq!(status.code(), Some(1), "{scenario}: stdout:\n{stdout}\nstderr:\n{stderr}");
            // idle opens each session once; churn retries, so each user may stall more than once.
            let stalled = u(&r, "stalls_by_kind.handshake");
            assert!(if scenario == "idle" { stalled == 5 } else { stalled >= 5 }, "{scenario}: {r:#}");
            assert_eq!(r["ok"], false);
            let example = &r["stall_examples"][0];
            assert_eq!(example["kind"], "handshake", "{r:#}");
            assert!(example["user"].as_str().unwrap().starts_with("st"), "names the user: {r:#}");
            assert!(example["waited_ms"].as_u64().unwrap() >= 1000, "{r:#}");
            assert!(stderr.contains("stall"), "why on stderr:\n{stderr}");
            assert!(stdout.contains("handshake stalled"), "the text report describes it:\n{stdout}");
        }
        stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(addr); // wakes the acceptor
        acceptor.join().unwrap();
    });
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    watchdog(Duration::from_secs(30), || {
        let cases: [(&[&str], &str); 5] = [
            (&["churn", "--users", "0"], "--users"),
            (&["relay", "--url", "http://127.0.0.1:1"], "ws://"),
            (&["idle", "--stall-timeout", "soon"], "--stall-timeout"),
            (&["idle", "--users", "10000000"], "open-file limit allows"),
            (&["fanout", "--users", "3"], "--recipients"),
        ];
        for (args, needle) in cases {
            let mut full = vec!["stress"];
            full.extend_from_slice(args);
            let (status, stdout, stderr) = Child_::spawn(&full).finish(Duration::from_secs(10));
            assert_eq!(status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
            assert!(stderr.contains(needle), "{args:?}: stderr should mention {needle:?}:\n{stderr}");
            assert!(stdout.is_empty(), "{args:?}: no report: {stdout}");
        }
    });
}
