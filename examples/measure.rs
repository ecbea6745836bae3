//! Measurement client for a running msggate gateway.
//!
//! ```text
//! cargo run --release --example measure -- idle  --url ws://127.0.0.1:PORT --secret S --sessions 10000 --server-pid PID
//! cargo run --release --example measure -- relay --url ws://127.0.0.1:PORT --secret S --pairs 50 --server-pid PID
//! ```
//!
//! `idle` opens N authenticated sessions (blocking sockets, `--threads` connecting in parallel, each
//! sequentially), reports handshakes per second and, with `--server-pid`, the server's RSS growth per
//! session. Every session holds one file descriptor here, so N must stay below this process's open-file
//! limit (`ulimit -n`); this tool does not raise it. The idle sessions do not read while held, so keep
//! connect time + `--hold` under the server's ping interval (27 s) or the server may drop them.
//!
//! `relay` runs P sender/receiver pairs (`txI` -> `rxI`), each sender keeping `--inflight` messages
//! unacknowledged, and reports relayed messages per second and push latency percentiles measured from a
//! timestamp carried in the message content. With `--server-pid` it also reports server CPU time per
//! relayed message over the recording window.
//!
//! Both modes print a human-readable report and, last, one line of JSON.

use std::borrow::Cow;
use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use msggate::TokenKey;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// Shared clock: message timestamps are nanoseconds since this instant.
static T0: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Read timeout used by relay loops; short so they can check deadlines and stop flags.
const POLL: Duration = Duration::from_millis(100);
/// No traffic for this long while something is expected counts as a stall.
const STALL: Duration = Duration::from_secs(5);
/// How long senders may wait for the last acks and receivers for the last pushes.
const DRAIN: Duration = Duration::from_secs(5);
/// Warm-up before recording.
const WARMUP: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(about = "Measurement client for msggate (idle sessions, relay throughput and latency)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N idle sessions; report handshakes/s and server RSS per session.
    Idle(IdleArgs),
    /// Relay messages between P pairs; report msgs/s, latency percentiles and server CPU per message.
    Relay(RelayArgs),
}

#[derive(clap::Args)]
struct Common {
    /// Gateway URL, e.g. ws://127.0.0.1:10001
    #[arg(long)]
    url: String,
    /// HS256 secret the gateway verifies tokens with.
    #[arg(long)]
    secret: String,
    /// Server process id (for RSS and CPU readings from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(clap::Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Sessions to open (must stay below this process's open-file limit).
    #[arg(long)]
    sessions: usize,
    /// Connecting threads, each opening its share sequentially.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds to wait after the last handshake before reading the server's RSS again.
    #[arg(long, default_value_t = 5)]
    hold: u64,
}

#[derive(clap::Args)]
struct RelayArgs {
    #[command(flatten)]
    common: Common,
    /// Sender/receiver pairs (users txI -> rxI).
    #[arg(long)]
    pairs: usize,
    /// Recording window in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unacknowledged messages each sender keeps in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Content size in bytes (at least the 20-digit timestamp).
    #[arg(long, default_value_t = 100)]
    size: usize,
}

fn main() -> ExitCode {
    T0.get_or_init(Instant::now);
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Idle(args) => idle(args),
        Mode::Relay(args) => relay(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("measure: {msg}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting

struct Target {
    /// `ws://host:port` without a trailing slash.
    base: String,
    /// `host:port` for the TCP connect.
    addr: String,
    key: TokenKey,
    exp: u64,
}

impl Target {
    fn new(common: &Common) -> Result<Target, String> {
        let base = common.url.trim_end_matches('/').to_owned();
        let rest = base.strip_prefix("ws://").ok_or_else(|| format!("--url must start with ws://: {}", common.url))?;
        let addr = rest.split('/').next().unwrap_or_default().to_owned();
        if addr.is_empty() {
            return Err(format!("--url has no host: {}", common.url));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Target { base, addr, key: TokenKey::new(common.secret.as_bytes()), exp: now + 3600 })
    }

    fn connect(&self, user: &str) -> Result<Ws, ConnectError> {
        let token = self.key.mint(user, 1, self.exp);
        let url = format!("{}/?token={token}&sendID={user}&platformID=1&operationID=op", self.base);
        let stream = TcpStream::connect(&self.addr).map_err(ConnectError::from_io)?;
        stream.set_nodelay(true).map_err(ConnectError::from_io)?;
        // Bound the handshake so a stalled server cannot hang us.
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(ConnectError::from_io)?;
        stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(ConnectError::from_io)?;
        match tungstenite::client::client(url, stream) {
            Ok((ws, _resp)) => Ok(ws),
            Err(HandshakeError::Interrupted(_)) => Err(ConnectError::Other("handshake timed out (10 s)".into())),
            Err(HandshakeError::Failure(tungstenite::Error::Io(e))) => Err(ConnectError::from_io(e)),
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                Err(ConnectError::Other(format!("upgrade refused: HTTP {} {body}", resp.status())))
            }
            Err(HandshakeError::Failure(e)) => Err(ConnectError::Other(format!("handshake failed: {e}"))),
        }
    }
}

#[derive(Debug)]
enum ConnectError {
    TooManyOpenFiles(io::Error),
    Other(String),
}

impl ConnectError {
    fn from_io(e: io::Error) -> ConnectError {
        // EMFILE (24) per process, ENFILE (23) system-wide.
        match e.raw_os_error() {
            Some(23 | 24) => ConnectError::TooManyOpenFiles(e),
            _ => ConnectError::Other(format!("I/O error: {e}")),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::TooManyOpenFiles(e) => write!(
                f,
                "{e}: every session holds one file descriptor in this process; --sessions must stay below \
                 the open-file soft limit (`ulimit -n`), which this tool does not raise"
            ),
            ConnectError::Other(msg) => f.write_str(msg),
        }
    }
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

/// Sends a close frame and waits (bounded) for the server's close reply.
fn close(ws: &mut Ws) {
    let _ = ws.get_mut().set_read_timeout(Some(POLL));
    if ws.close(None).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                let _ = ws.flush();
            }
            Err(_) => return, // ConnectionClosed once the handshake completes, or the peer went away.
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may contain spaces; fields after the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------------------------
// idle

fn idle(args: IdleArgs) -> Result<(), String> {
    let target = Arc::new(Target::new(&args.common)?);
    let (n, threads) = (args.sessions, args.threads.max(1));
    let pid = args.common.server_pid;
    let rss_before = pid.and_then(rss_kib);
    if pid.is_some() && rss_before.is_none() {
        return Err(format!("cannot read VmRSS of pid {}", pid.unwrap_or_default()));
    }

    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let target = Arc::clone(&target);
            // Thread t opens sessions t, t + threads, t + 2 * threads, ...
            thread::spawn(move || {
                let mut open = Vec::with_capacity(n / threads + 1);
                for i in (t..n).step_by(threads) {
                    match target.connect(&format!("idle{i}")) {
                        Ok(ws) => open.push(ws),
                        Err(e) => return (open, Some((i, e))),
                    }
                }
                (open, None)
            })
        })
        .collect();
    let mut sessions: Vec<Ws> = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for w in workers {
        let (open, failure) = w.join().map_err(|_| "connect thread panicked".to_owned())?;
        sessions.extend(open);
        failures.extend(failure);
    }
    let elapsed = start.elapsed();
    if let Some((i, e)) = failures.first() {
        return Err(format!(
            "session idle{i} failed to connect after {} were open ({} threads failed): {e}",
            sessions.len(),
            failures.len()
        ));
    }
    let hs_per_s = n as f64 / elapsed.as_secs_f64();

    thread::sleep(Duration::from_secs(args.hold));
    let rss_after = pid.and_then(rss_kib);

    // Check that the sessions survived the hold: a non-blocking read sees a close or EOF if the
    // server dropped one (and answers any pending ping).
    let mut alive = 0;
    for ws in &mut sessions {
        let _ = ws.get_mut().set_nonblocking(true);
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) if is_timeout(&e) => {
                    alive += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    drop(sessions);

    let delta_per_session = rss_before.zip(rss_after).map(|(b, a)| (a as f64 - b as f64) * 1024.0 / n.max(1) as f64);
    println!("idle: {n} sessions, {threads} connecting threads");
    println!("  handshakes: {:.3} s total, {hs_per_s:.0} handshakes/s", elapsed.as_secs_f64());
    println!("  alive after {} s hold: {alive}/{n}", args.hold);
    match (rss_before, rss_after, delta_per_session) {
        (Some(b), Some(a), Some(d)) => {
            println!("  server RSS: {b} KiB before, {a} KiB after (+{} KiB)", a as i64 - b as i64);
            println!("  RSS per session: {d:.0} bytes ({:.2} KiB)", d / 1024.0);
        }
        _ => println!("  server RSS: not measured (no --server-pid, or the server exited)"),
    }
    let report = json!({
        "mode": "idle",
        "sessions": n,
        "threads": threads,
        "handshake_secs": elapsed.as_secs_f64(),
        "handshakes_per_sec": hs_per_s,
        "alive_after_hold": alive,
        "hold_secs": args.hold,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_session_bytes": delta_per_session,
    });
    println!("{report}");
    if alive < n {
        return Err(format!("{} sessions were dropped during the hold", n - alive));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// relay

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "reqIdentifier", default)]
    req_identifier: i64,
    #[serde(rename = "errCode", default)]
    err_code: i64,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AckData {
    #[serde(default = "minus_one")]
    delivered: i64,
}

fn minus_one() -> i64 {
    -1
}

#[derive(Deserialize)]
struct PushData<'a> {
    #[serde(borrow)]
    msgs: Vec<PushedMsg<'a>>,
}

#[derive(Deserialize)]
struct PushedMsg<'a> {
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// Window boundaries in `now_ns()` time.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        (self.start..self.end).contains(&t)
    }
}

struct Pair {
    /// Messages the sender sent in total; valid once `done` is set.
    sent: AtomicU64,
    done: AtomicBool,
}

#[derive(Default)]
struct Errors {
    ack_err_code: u64,
    ack_not_delivered: u64,
    unexpected_frames: u64,
    bad_content: u64,
    stalls: u64,
    io: u64,
    lost: u64,
    messages: Vec<String>,
}

impl Errors {
    fn note(&mut self, msg: String) {
        if self.messages.len() < 10 {
            self.messages.push(msg);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.ack_err_code += other.ack_err_code;
        self.ack_not_delivered += other.ack_not_delivered;
        self.unexpected_frames += other.unexpected_frames;
        self.bad_content += other.bad_content;
        self.stalls += other.stalls;
        self.io += other.io;
        self.lost += other.lost;
        for m in other.messages {
            self.note(m);
        }
    }

    fn total(&self) -> u64 {
        self.ack_err_code
            + self.ack_not_delivered
            + self.unexpected_frames
            + self.bad_content
            + self.stalls
            + self.io
            + self.lost
    }
}

#[derive(Default)]
struct SenderStats {
    sent: u64,
    acks: u64,
    acks_in_window: u64,
    errors: Errors,
}

#[derive(Default)]
struct ReceiverStats {
    received: u64,
    in_window: u64,
    latencies_ns: Vec<u64>,
    errors: Errors,
}

fn content(size: usize) -> String {
    let mut s = format!("{:020}", now_ns());
    while s.len() < size {
        s.push('x');
    }
    s
}

fn run_sender(mut ws: Ws, i: usize, inflight: usize, size: usize, window: Window, pair: &Pair) -> SenderStats {
    let mut st = SenderStats::default();
    let (tx, rx) = (format!("tx{i}"), format!("rx{i}"));
    let send = |ws: &mut Ws, seq: u64| {
        let frame = format!(
            r#"{{"reqIdentifier":1003,"sendID":"{tx}","operationID":"o","msgIncr":"{i}-{seq}","data":{{"recvID":"{rx}","clientMsgID":"c{i}-{seq}","contentType":101,"content":"{}"}}}}"#,
            content(size)
        );
        ws.send(Message::text(frame))
    };
    let mut outstanding = 0usize;
    let mut last_activity = Instant::now();
    'run: {
        // Sends the next message; false (after counting the error) if the socket failed.
        let send_next = |ws: &mut Ws, st: &mut SenderStats, outstanding: &mut usize| match send(ws, st.sent) {
            Ok(()) => {
                st.sent += 1;
                *outstanding += 1;
                true
            }
            Err(e) => {
                st.errors.io += 1;
                st.errors.note(format!("tx{i}: send: {e}"));
                false
            }
        };
        for _ in 0..inflight {
            if !send_next(&mut ws, &mut st, &mut outstanding) {
                break 'run;
            }
        }
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    last_activity = Instant::now();
                    let now = now_ns();
                    let frame: Frame<'_> = match serde_json::from_str(text.as_str()) {
                        Ok(f) => f,
                        Err(e) => {
                            st.errors.unexpected_frames += 1;
                            st.errors.note(format!("tx{i}: undecodable frame: {e}"));
                            continue;
                        }
                    };
                    if frame.req_identifier != 1003 {
                        st.errors.unexpected_frames += 1;
                        st.errors.note(format!("tx{i}: unexpected frame: {}", text.as_str()));
                        continue;
                    }
                    outstanding = outstanding.saturating_sub(1);
                    st.acks += 1;
                    if window.contains(now) {
                        st.acks_in_window += 1;
                    }
                    let delivered = frame
                        .data
                        .and_then(|d| serde_json::from_str::<AckData>(d.get()).ok())
                        .map_or(-1, |d| d.delivered);
                    if frame.err_code != 0 {
                        st.errors.ack_err_code += 1;
                        st.errors.note(format!("tx{i}: ack errCode {}: {}", frame.err_code, text.as_str()));
                    } else if delivered != 1 {
                        st.errors.ack_not_delivered += 1;
                        st.errors.note(format!("tx{i}: ack delivered={delivered}"));
                    }
                    if now < window.end {
                        if !send_next(&mut ws, &mut st, &mut outstanding) {
                            break 'run;
                        }
                    } else if outstanding == 0 {
                        break 'run;
                    }
                }
                Ok(Message::Close(frame)) => {
                    st.errors.io += 1;
                    st.errors.note(format!("tx{i}: server closed: {frame:?}"));
                    break 'run;
                }
                Ok(_) => last_activity = Instant::now(),
                Err(e) if is_timeout(&e) => {
                    let now = now_ns();
                    if now >= window.end && outstanding == 0 {
                        break 'run;
                    }
                    let limit = if now >= window.end { DRAIN } else { STALL };
                    if last_activity.elapsed() >= limit {
                        st.errors.stalls += 1;
                        st.errors.note(format!("tx{i}: no ack for {limit:?} with {outstanding} in flight"));
                        break 'run;
                    }
                }
                Err(e) => {
                    st.errors.io += 1;
                    st.errors.note(format!("tx{i}: read: {e}"));
                    break 'run;
                }
            }
        }
    }
    pair.sent.store(st.sent, Ordering::Relaxed);
    pair.done.store(true, Ordering::Release);
    close(&mut ws);
    st
}

fn run_receiver(mut ws: Ws, i: usize, window: Window, pair: &Pair) -> ReceiverStats {
    let mut st = ReceiverStats::default();
    let mut last_activity = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        if pair.done.load(Ordering::Acquire) {
            let sent = pair.sent.load(Ordering::Relaxed);
            if st.received >= sent {
                break;
            }
            if done_at.get_or_insert_with(Instant::now).elapsed() >= DRAIN {
                st.errors.lost += sent - st.received;
                st.errors.note(format!("rx{i}: {} of {sent} pushes never arrived", sent - st.received));
                break;
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                last_activity = Instant::now();
                let now = now_ns();
                let frame: Frame<'_> = match serde_json::from_str::<Frame<'_>>(text.as_str()) {
                    Ok(f) if f.req_identifier == 2001 => f,
                    _ => {
                        st.errors.unexpected_frames += 1;
                        st.errors.note(format!("rx{i}: unexpected frame: {}", text.as_str()));
                        continue;
                    }
                };
                let Some(data) = frame.data.and_then(|d| serde_json::from_str::<PushData<'_>>(d.get()).ok()) else {
                    st.errors.bad_content += 1;
                    st.errors.note(format!("rx{i}: push without msgs: {}", text.as_str()));
                    continue;
                };
                for msg in data.msgs {
                    st.received += 1;
                    let Some(ts) = msg.content.get(..20).and_then(|s| s.parse::<u64>().ok()) else {
                        st.errors.bad_content += 1;
                        st.errors.note(format!("rx{i}: content without timestamp: {:?}", msg.content));
                        continue;
                    };
                    if window.contains(now) {
                        st.in_window += 1;
                        st.latencies_ns.push(now.saturating_sub(ts));
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                st.errors.io += 1;
                st.errors.note(format!("rx{i}: server closed: {frame:?}"));
                return st;
            }
            Ok(_) => last_activity = Instant::now(),
            Err(e) if is_timeout(&e) => {
                if done_at.is_none() && last_activity.elapsed() >= STALL {
                    st.errors.stalls += 1;
                    st.errors.note(format!("rx{i}: no push for {STALL:?}"));
                    // Keep going: the sender decides when the run is over.
                    last_activity = Instant::now();
                }
            }
            Err(e) => {
                st.errors.io += 1;
                st.errors.note(format!("rx{i}: read: {e}"));
                return st;
            }
        }
    }
    close(&mut ws);
    st
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn relay(args: RelayArgs) -> Result<(), String> {
    let target = Target::new(&args.common)?;
    let (p, secs) = (args.pairs, args.seconds.max(1));
    let mut receivers = Vec::with_capacity(p);
    let mut senders = Vec::with_capacity(p);
    for i in 0..p {
        receivers.push(target.connect(&format!("rx{i}")).map_err(|e| format!("rx{i}: {e}"))?);
    }
    for i in 0..p {
        senders.push(target.connect(&format!("tx{i}")).map_err(|e| format!("tx{i}: {e}"))?);
    }
    for ws in receivers.iter().chain(&senders) {
        ws.get_ref().set_read_timeout(Some(POLL)).map_err(|e| format!("set_read_timeout: {e}"))?;
        ws.get_ref().set_write_timeout(Some(STALL)).map_err(|e| format!("set_write_timeout: {e}"))?;
    }

    let start = now_ns();
    let window =
        Window { start: start + WARMUP.as_nanos() as u64, end: start + (WARMUP.as_secs() + secs) * 1_000_000_000 };
    let pairs: Arc<Vec<Pair>> =
        Arc::new((0..p).map(|_| Pair { sent: AtomicU64::new(0), done: AtomicBool::new(false) }).collect());

    let rx_threads: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let pairs = Arc::clone(&pairs);
            thread::spawn(move || run_receiver(ws, i, window, &pairs[i]))
        })
        .collect();
    let (inflight, size) = (args.inflight.max(1), args.size);
    let tx_threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let pairs = Arc::clone(&pairs);
            thread::spawn(move || run_sender(ws, i, inflight, size, window, &pairs[i]))
        })
        .collect();

    // Server and own CPU over the recording window.
    let pid = args.common.server_pid.map(|p| p.to_string());
    sleep_until(window.start);
    let cpu_start = (pid.as_deref().and_then(cpu_ticks), cpu_ticks("self"));
    sleep_until(window.end);
    let cpu_end = (pid.as_deref().and_then(cpu_ticks), cpu_ticks("self"));
    let rss_kib = args.common.server_pid.and_then(rss_kib);

    let mut errors = Errors::default();
    let (mut sent, mut acks, mut acks_in_window) = (0, 0, 0);
    for t in tx_threads {
        let st = t.join().map_err(|_| "sender thread panicked".to_owned())?;
        sent += st.sent;
        acks += st.acks;
        acks_in_window += st.acks_in_window;
        errors.merge(st.errors);
    }
    let (mut received, mut in_window, mut lat) = (0, 0, Vec::new());
    for t in rx_threads {
        let st = t.join().map_err(|_| "receiver thread panicked".to_owned())?;
        received += st.received;
        in_window += st.in_window;
        lat.extend(st.latencies_ns);
        errors.merge(st.errors);
    }
    let total_secs = (now_ns() - start) as f64 / 1e9;
    lat.sort_unstable();

    let d = secs as f64;
    let msgs_per_s = in_window as f64 / d;
    let acks_per_s = acks_in_window as f64 / d;
    let us = |p: f64| percentile(&lat, p) as f64 / 1000.0;
    let (p50, p90, p99, p999) = (us(50.0), us(90.0), us(99.0), us(99.9));
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let mean = if lat.is_empty() { 0.0 } else { lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0 };
    let tck = clk_tck();
    let ticks = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let server_ticks = ticks(cpu_start.0, cpu_end.0);
    let client_ticks = ticks(cpu_start.1, cpu_end.1);
    let server_cpu_us = server_ticks.map(|t| t as f64 * 1e6 / tck as f64);
    let client_cpu_us = client_ticks.map(|t| t as f64 * 1e6 / tck as f64);
    let per_msg = |cpu: Option<f64>| cpu.filter(|_| in_window > 0).map(|c| c / in_window as f64);

    println!("relay: {p} pairs, inflight {inflight}, content {size} B, warm-up 1 s, recorded {secs} s");
    println!("  relayed: {msgs_per_s:.0} msgs/s ({in_window} pushes in window), acks: {acks_per_s:.0}/s");
    println!("  totals: sent {sent}, acked {acks}, pushes received {received} (run took {total_secs:.1} s)");
    println!(
        "  latency us: p50 {p50:.0}  p90 {p90:.0}  p99 {p99:.0}  p99.9 {p999:.0}  max {max:.0}  (mean {mean:.0}, n={})",
        lat.len()
    );
    if let (Some(s), Some(pm)) = (server_cpu_us, per_msg(server_cpu_us)) {
        println!(
            "  server CPU: {:.2} s over {secs} s ({:.0}% of one core), {pm:.2} us per relayed msg",
            s / 1e6,
            s / 1e4 / d
        );
    }
    if let (Some(c), Some(pm)) = (client_cpu_us, per_msg(client_cpu_us)) {
        println!(
            "  client CPU: {:.2} s over {secs} s ({:.0}% of one core), {pm:.2} us per relayed msg",
            c / 1e6,
            c / 1e4 / d
        );
    }
    if let Some(r) = rss_kib {
        println!("  server RSS at end of window: {r} KiB");
    }
    println!(
        "  errors: {} (ack errCode {}, ack delivered!=1 {}, unexpected frames {}, bad content {}, stalls {}, io {}, lost {})",
        errors.total(),
        errors.ack_err_code,
        errors.ack_not_delivered,
        errors.unexpected_frames,
        errors.bad_content,
        errors.stalls,
        errors.io,
        errors.lost
    );
    for m in &errors.messages {
        println!("    {m}");
    }
    let report = json!({
        "mode": "relay",
        "pairs": p,
        "seconds": secs,
        "inflight": inflight,
        "size": size,
        "msgs_per_sec": msgs_per_s,
        "acks_per_sec": acks_per_s,
        "sent": sent,
        "acked": acks,
        "received": received,
        "latency_us": { "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max, "mean": mean, "n": lat.len() },
        "server_cpu_us": server_cpu_us,
        "server_cpu_us_per_msg": per_msg(server_cpu_us),
        "client_cpu_us": client_cpu_us,
        "client_cpu_us_per_msg": per_msg(client_cpu_us),
        "server_rss_kib": rss_kib,
        "clk_tck": tck,
        "errors": {
            "total": errors.total(),
            "ack_err_code": errors.ack_err_code,
            "ack_not_delivered": errors.ack_not_delivered,
            "unexpected_frames": errors.unexpected_frames,
            "bad_content": errors.bad_content,
            "stalls": errors.stalls,
            "io": errors.io,
            "lost": errors.lost,
        },
    });
    println!("{report}");
    Ok(())
}
