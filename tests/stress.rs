//! `msggate stress` end to end: the real binary against a real gateway (a `msggate serve` child
//! or an in-process one), checking its exit code and its JSON report; a listener that never
//! answers proves the stall detector can fail a run; bad arguments exit 2. Every child is killed
//! by its guard's `Drop`, every wait is bounded, and every test runs under the hang watchdog.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::proc::{msggate, via, Proc};
use crate::util::{self, watchdog};

/// `msggate serve` on 127.0.0.1:0 with `extra` flags; returns it and its address.
fn serve(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--no-admin", "--log-level", "warn"];
    args.extend_from_slice(extra);
    let mut server = Proc::spawn(&mut msggate(&args));
    let addr = server.listen_addr();
    (server, addr)
}

/// Runs `wrapper... msggate args...` to its end (bounded): exit status, stdout, stderr.
fn finish(wrapper: &[&str], args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let out = Proc::spawn(&mut via(wrapper, args)).finish_within(limit);
    (out.status, out.stdout, out.stderr)
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
    let (status, stdout, stderr) = finish(&[], &full, limit);
    let report = json.read();
    (status, stdout, stderr, report)
}

/// A scripted stand-in for a gateway on 127.0.0.1:0, for behaviour a real one does not show on
/// demand (slow upgrades, slow acks, dead sessions): every connection gets a thread that holds
/// the upgrade for `delay(sendID)` (the simulated slowness, not synchronisation), then runs
/// `serve(sendID, socket)`. Dropping it stops the acceptor; connection threads end with their
/// sockets (the stress child has exited by then).
struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

type Ws = tungstenite::WebSocket<TcpStream>;

impl Fake {
    fn start(
        delay: impl Fn(&str) -> Duration + Send + Sync + 'static,
        serve: impl Fn(&str, Ws) + Send + Sync + 'static,
    ) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handlers = Arc::new((delay, serve));
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let handlers = handlers.clone();
                thread::spawn(move || {
                    let mut user = String::new();
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let callback = |req: &tungstenite::handshake::server::Request, resp| {
                        let query = req.uri().query().unwrap_or_default();
                        user = query.split('&').find_map(|kv| kv.strip_prefix("sendID=")).unwrap_or_default().into();
                        thread::sleep((handlers.0)(&user));
                        Ok(resp)
                    };
                    if let Ok(ws) = tungstenite::accept_hdr(stream, callback) {
                        (handlers.1)(&user, ws);
                    }
                });
            }
        });
        Fake { addr, stop, acceptor: Some(acceptor) }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// The ack the gateway sends for a 1003 frame.
fn ack_for(frame: &str, delivered: u64) -> Option<String> {
    let v: Value = serde_json::from_str(frame).ok()?;
    (v["reqIdentifier"] == 1003).then(|| {
        serde_json::json!({
            "reqIdentifier": 1003, "msgIncr": v["msgIncr"], "operationID": v["operationID"], "errCode": 0,
            "errMsg": "", "data": {"clientMsgID": v["data"]["clientMsgID"], "delivered": delivered},
        })
        .to_string()
    })
}

/// Reads until the client goes, answering each 1003 with its ack after `ack_delay`.
fn ack_everything(mut ws: Ws, ack_delay: Duration) {
    while let Ok(msg) = ws.read() {
        if let Some(ack) = msg.to_text().ok().and_then(|t| ack_for(t, 0)) {
            thread::sleep(ack_delay); // the simulated slow ack
            if ws.send(tungstenite::Message::text(ack)).is_err() {
                return;
            }
        }
    }
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
        let (_server, addr) = serve(&["--register-queue", "1", "--unregister-queue", "1"]);
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

/// A churn cycle started just before the window ends but opened only in the drain must not send
/// then: its ack, due within --stall-timeout of the send, could come after the drain's bound and
/// be counted lost. stc1's upgrade and ack take 1.8 s each, both under --stall-timeout 2s; stc0
/// is fast. The old code sent stc1's message at 1.8 s (in the drain), the ack was due at 3.6 s,
/// the drain ended at 3.3 s, and the run failed with a lost ack and no stall.
#[test]
fn churn_sends_nothing_after_the_window_so_nothing_is_counted_lost_early() {
    watchdog(Duration::from_secs(30), || {
        let slow = |user: &str| if user == "stc1" { Duration::from_millis(1800) } else { Duration::ZERO };
        let fake = Fake::start(slow, move |user, ws| ack_everything(ws, slow(user)));
        let url = fake.url();
        let args = ["churn", "--users", "2", "--duration", "1s", "--stall-timeout", "2s", "--url", &url];
        let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!((u(&r, "lost_acks"), u(&r, "stalls"), u(&r, "errors")), (0, 0, 0), "{r:#}");
        assert!(u(&r, "cycles") > 0, "stc0 cycled: {r:#}");
        assert!(r["drain_s"].as_f64().unwrap() < 1.0, "nothing sent in the drain to wait for: {r:#}");
        drop(fake);
    });
}

/// `sessions_open` for churn --expect-push counts the listeners, not every open connection: here
/// the server drops each user's listener when the user sends (and never acks, so the churning
/// connections stay open through the window). Before the fix it reported min(open, users) = 3.
#[test]
fn churn_sessions_open_counts_only_the_listeners() {
    watchdog(Duration::from_secs(30), || {
        type Listeners = Arc<(std::sync::Mutex<std::collections::HashMap<String, TcpStream>>, std::sync::Condvar)>;
        let listeners: Listeners = Arc::default();
        let fake = Fake::start(
            |_| Duration::ZERO,
            move |user, mut ws| {
                let (map, cv) = &*listeners;
                if let Some(i) = user.strip_prefix("stl") {
                    let clone = ws.get_ref().try_clone().unwrap();
                    map.lock().unwrap().insert(i.to_owned(), clone);
                    cv.notify_all();
                }
                while let Ok(msg) = ws.read() {
                    let Some(i) = user.strip_prefix("stc") else { continue };
                    if ack_for(msg.to_text().unwrap_or_default(), 1).is_none() {
                        continue;
                    }
                    // Its listener is registered as its upgrade completes; the ramp waited for that.
                    let guard = map.lock().unwrap();
                    let (guard, _) =
                        cv.wait_timeout_while(guard, Duration::from_secs(5), |m| !m.contains_key(i)).unwrap();
                    if let Some(l) = guard.get(i) {
                        let _ = l.shutdown(std::net::Shutdown::Both);
                    }
                }
            },
        );
        let url = fake.url();
        let args =
            ["churn", "--expect-push", "--users", "3", "--duration", "1s", "--stall-timeout", "1500ms", "--url", &url];
        let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!((u(&r, "sessions_wanted"), u(&r, "sessions_open")), (3, 0), "{r:#}");
        let failures = r["failures"].to_string();
        assert!(failures.contains("only 0 of 3 listeners were open"), "{r:#}");
        assert_eq!(u(&r, "errors_by_kind.closed_without_close_frame"), 3, "{r:#}");
        drop(fake);
    });
}

/// A relay message that never reached the socket (its session died with it still buffered) is
/// neither a lost ack nor a lost push: the server cannot have seen it. Each session queues
/// 400 × 50 KB at once; the fake server reads 1 MiB of it and drops the socket, so most of the
/// 20 MB is still in the client's buffer. Before the fix every one counted as a lost ack and a
/// lost push.
#[test]
fn relay_messages_that_never_left_the_client_are_send_failed_not_lost() {
    watchdog(Duration::from_secs(30), || {
        let fake = Fake::start(
            |_| Duration::ZERO,
            |_, mut ws| {
                let (mut buf, mut total) = (vec![0; 64 * 1024], 0);
                while total < 1 << 20 {
                    match std::io::Read::read(ws.get_mut(), &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => total += n,
                    }
                }
                // Dropped with unread data: the client's session ends (reset) mid-write.
            },
        );
        let url = fake.url();
        let args = [
            "relay",
            "--users",
            "2",
            "--inflight",
            "400",
            "--size",
            "50000",
            "--duration",
            "1s",
            "--stall-timeout",
            "2s",
            "--url",
            &url,
        ];
        let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "the sessions died: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!((u(&r, "lost_acks"), u(&r, "lost_pushes")), (0, 0), "{r:#}");
        // (Writes refused after the reset are not queued at all, so fewer than 800 are counted.)
        assert!(u(&r, "errors_by_kind.send_failed") > 0, "{r:#}");
        drop(fake);
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

        // churn's listeners are opened at most --ramp-concurrency at once: two stall at about
        // 1 s, and only then are the next two opened, to stall at about 2 s (all four at once
        // before this was fixed).
        let args = [
            "churn",
            "--expect-push",
            "--users",
            "4",
            "--ramp-concurrency",
            "2",
            "--threads",
            "1",
            "--stall-timeout",
            "1s",
            "--url",
            &url,
        ];
        let (status, stdout, stderr, r) = stress(&args, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(u(&r, "stalls_by_kind.handshake"), 4, "{r:#}");
        let at: Vec<u64> =
            r["stall_examples"].as_array().unwrap().iter().map(|e| e["at_ms"].as_u64().unwrap()).collect();
        let (first, last) = (at.iter().min().unwrap(), at.iter().max().unwrap());
        assert!(last - first >= 900, "the second pair must wait for the first: stalled at {at:?} ms");

        stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(addr); // wakes the acceptor
        acceptor.join().unwrap();
    });
}

/// A local port nothing listens on: bad-argument runs get it as `--url`, so that a run the
/// check fails to refuse cannot reach a real server (such as a developer's on 10001).
fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}")
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    watchdog(Duration::from_secs(30), || {
        let url = closed_url();
        let cases: [(&[&str], &str); 6] = [
            (&["churn", "--users", "0"], "--users"),
            (&["relay", "--url", "http://127.0.0.1:1"], "ws://"),
            (&["idle", "--stall-timeout", "soon"], "--stall-timeout"),
            (&["idle", "--source-addrs", "1000000000"], "--source-addrs must be from 1 to 65535"),
            (&["idle", "--source-addrs", "2", "--url", "ws://[::1]:1"], "IPv4 loopback"),
            (&["fanout", "--users", "3"], "--recipients"),
        ];
        for (args, needle) in cases {
            let mut full = vec!["stress"];
            full.extend_from_slice(args);
            if !args.contains(&"--url") {
                full.extend_from_slice(&["--url", &url]);
            }
            let (status, stdout, stderr) = finish(&[], &full, Duration::from_secs(10));
            assert_eq!(status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
            assert!(stderr.contains(needle), "{args:?}: stderr should mention {needle:?}:\n{stderr}");
            assert!(stdout.is_empty(), "{args:?}: no report: {stdout}");
        }
    });
}

/// More connections than the open-file limit allows is refused before any connect. The child
/// runs under `prlimit` with a small known limit (the host's may be unlimited), against a port
/// nothing listens on. The check itself is unit-tested in src/cli/stress/mod.rs.
#[test]
fn a_run_beyond_the_open_file_limit_exits_2_before_connecting() {
    watchdog(Duration::from_secs(30), || {
        let prlimit = Command::new("prlimit").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !prlimit.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no prlimit(1) here to run the child under a known open-file limit");
            return;
        }
        let url = closed_url();
        let args = ["stress", "idle", "--users", "5000", "--url", &url];
        let (status, stdout, stderr) = finish(&["prlimit", "--nofile=1024:1024", "--"], &args, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
        assert!(stderr.contains("needs up to 5000 connections"), "{stderr}");
        assert!(stderr.contains("open-file limit allows 960"), "1024 - 64 reserved: {stderr}");
        assert!(stdout.is_empty(), "no report: {stdout}");
    });
}
