//! Shared test utilities: a gateway on 127.0.0.1:0, a blocking WebSocket client with timeouts,
//! expectations that wait with a deadline, and a hang watchdog. No fixed ports, no sleeps as
//! synchronisation: every wait is a read with a timeout or a condition polled until a deadline.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use msggate::{Config, Gateway, GatewayHandle, TokenKey};
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret";
/// How long any single expectation may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// Runs `f` on its own thread and fails the test if it has not finished within `limit`.
/// A hang anywhere fails the test; it never hangs the run.
pub fn watchdog<F: FnOnce() + Send + 'static>(limit: Duration, f: F) {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            f();
            let _ = done_tx.send(());
        })
        .unwrap();
    match done_rx.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic here.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test hung: not finished within {limit:?}"),
    }
}

/// A config for tests: port 0, the test secret, two reactors.
pub fn config() -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), secret: Some(SECRET.into()), io_threads: 2, ..Config::default() }
}

/// Starts a gateway with the test config as changed by `tweak`.
pub fn start(tweak: impl FnOnce(&mut Config)) -> GatewayHandle {
    let mut c = config();
    tweak(&mut c);
    Gateway::start(c).expect("gateway starts")
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A valid token for `user` on `platform`.
pub fn token(user: &str, platform: i64) -> String {
    TokenKey::new(SECRET.as_bytes()).mint(user, platform, now_secs() + 3600)
}

/// The query string of a valid login.
pub fn login_query(user: &str, platform: i64) -> String {
    format!("token={}&sendID={user}&platformID={platform}&operationID=op-{user}", token(user, platform))
}

/// Waits until `cond` holds, checking every few milliseconds, or fails naming `what`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the gateway holds no sockets, no sessions and an empty registry.
pub fn assert_drained(gw: &GatewayHandle) {
    let drained = || {
        let s = gw.stats();
        s.connections == 0 && s.sessions == 0 && s.registry_sessions == 0 && gw.registry_len() == 0
    };
    let deadline = Instant::now() + 2 * STEP;
    while !drained() {
        assert!(
            Instant::now() < deadline,
            "not drained within {:?}: registry {}, {:#?}",
            2 * STEP,
            gw.registry_len(),
            gw.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(gw.stats().online_users, 0);
}

/// What a refused upgrade returned.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// A blocking WebSocket client with a read timeout on every receive.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub user: String,
    incr: u64,
    /// Frames received while waiting for something else.
    pub stash: Vec<Value>,
}

impl Client {
    /// Logs `user` in on `platform`; panics if the upgrade fails.
    pub fn connect(addr: SocketAddr, user: &str, platform: i64) -> Client {
        Client::connect_query(addr, &login_query(user, platform), user).expect("upgrade succeeds")
    }

    /// Upgrades with an arbitrary query string.
    pub fn connect_query(addr: SocketAddr, query: &str, user: &str) -> Result<Client, Refused> {
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("tcp connect");
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{addr}/?{query}");
        match tungstenite::client::client(url.as_str(), stream) {
            Ok((ws, _)) => Ok(Client { ws, user: user.to_owned(), incr: 0, stash: Vec::new() }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).expect("JSON body"));
                Err(Refused { status, body: body.unwrap_or(Value::Null) })
            }
            Err(e) => panic!("handshake failed unexpectedly: {e}"),
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.ws.get_mut().set_read_timeout(Some(t)).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// The next message of any kind; panics on timeout or error.
    pub fn recv(&mut self) -> Message {
        match self.ws.read() {
            Ok(m) => m,
            Err(e) => panic!("{}: expected a message, got {e}", self.user),
        }
    }

    /// The next text/binary frame as JSON, skipping pings and pongs.
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.recv() {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Binary(b) => return serde_json::from_slice(&b).expect("server sends JSON"),
                Message::Close(c) => panic!("{}: expected a frame, got close {c:?}", self.user),
                _ => continue,
            }
        }
    }

    /// Waits for a JSON frame matching `pred`, stashing the others.
    pub fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        if let Some(i) = self.stash.iter().position(&mut pred) {
            return self.stash.remove(i);
        }
        loop {
            let v = self.recv_json();
            if pred(&v) {
                return v;
            }
            self.stash.push(v);
        }
    }

    /// Waits for the close frame (skipping anything else) and returns it; then finishes the
    /// close handshake.
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(c)) => {
                    // Drain until tungstenite reports the handshake done.
                    while self.ws.read().is_ok() {}
                    return c;
                }
                Ok(Message::Text(t)) => self.stash.push(serde_json::from_str(&t).unwrap_or(Value::Null)),
                Ok(_) => {}
                Err(e) => panic!("{}: expected a close frame, got {e}", self.user),
            }
        }
    }

    /// Sends a 1003 to `to`; returns the msgIncr to match the ack with.
    pub fn send_msg(&mut self, to: &str, content: &str) -> String {
        self.incr += 1;
        let incr = format!("{}-{}", self.user, self.incr);
        self.send_json(&json!({
            "reqIdentifier": 1003,
            "sendID": self.user,
            "operationID": format!("op-{incr}"),
            "msgIncr": incr,
            "data": {"recvID": to, "clientMsgID": format!("c-{incr}"), "contentType": 101, "content": content},
        }));
        incr
    }

    /// Waits for the response whose msgIncr is `incr`.
    pub fn await_reply(&mut self, incr: &str) -> Value {
        self.recv_until(|v| v["msgIncr"] == incr && v["reqIdentifier"] != 2001)
    }

    /// Waits for the next 2001 push and returns its message.
    pub fn await_push(&mut self) -> Value {
        let v = self.recv_until(|v| v["reqIdentifier"] == 2001);
        v["data"]["msgs"][0].clone()
    }

    /// Sends a close frame and waits for the handshake to finish.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Http {
    /// Parses a whole response (head and a `content-length` body), as read to the end.
    pub fn parse(raw: &[u8]) -> Http {
        let text = String::from_utf8(raw.to_vec()).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect::<HashMap<_, _>>();
        assert_eq!(headers["content-length"].parse::<usize>().unwrap(), body.len(), "{text}");
        Http { status, headers, body: body.to_owned() }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A JSON error with this status and errCode.
    pub fn assert_error(&self, status: u16, code: i64) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.headers.get("content-type").map(String::as_str), Some("application/json"), "{self:?}");
        let v = self.json();
        assert_eq!(v["errCode"], code, "{v}");
        assert!(v["errMsg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Http {
    let mut s = TcpStream::connect_timeout(&addr, STEP).expect("connect to the admin API");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // The server may answer (413) without reading all of it; it drains the rest.
        let _ = s.write_all(body);
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    Http::parse(&raw)
}

/// `/metrics`, parsed by a real Prometheus text parser: unlabelled samples by name, and every
/// sample as (name, labels, value).
pub struct Scrape {
    pub samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    pub fn take(admin: SocketAddr, headers: &[(&str, &str)]) -> Scrape {
        let r = http(admin, "GET", "/metrics", headers, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.headers["content-type"].starts_with("text/plain; version=0.0.4"), "{r:?}");
        let parsed = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        let samples = parsed
            .samples
            .into_iter()
            .map(|s| {
                let v = match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                    other => panic!("{}: unexpected {other:?}", s.metric),
                };
                let labels = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                (s.metric, labels, v)
            })
            .collect();
        Scrape { samples }
    }

    pub fn get(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v)))
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    }

    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|s| s.2).sum()
    }
}

/// Completes an upgrade with tungstenite, then hands back the raw socket for hand-made frames.
pub fn raw_session(addr: SocketAddr, user: &str) -> TcpStream {
    let c = Client::connect(addr, user, 1);
    let raw = c.ws.get_ref().try_clone().unwrap();
    raw.set_read_timeout(Some(STEP)).unwrap();
    raw
}

/// A masked client frame header (FIN set) for `opcode` with a payload length of `len`.
pub fn frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=65535 => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as written
    h
}

/// A whole client frame: `first` is the FIN/RSV/opcode byte as sent, the payload is masked
/// with a non-zero key (so a server that forgot to unmask would see garbage).
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame_with(first, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// [`masked_frame`] with the masking `key` given.
pub fn masked_frame_with(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut f = frame_header(0, payload.len() as u64);
    f[0] = first;
    let at = f.len() - 4;
    f[at..].copy_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The client's close frame with `code`, masked.
pub fn close_frame(code: u16) -> Vec<u8> {
    masked_frame(0x88, &code.to_be_bytes())
}

/// Reads server frames from `raw` until a close frame; returns its code (`None` for an empty
/// close). Panics if the socket ends or times out first.
pub fn read_close_code(raw: &mut TcpStream) -> Option<u16> {
    let mut got = Vec::new();
    loop {
        let mut at = 0;
        // Server frames are unmasked: opcode, a 7/16/64-bit length, the payload.
        while got.len() >= at + 2 {
            let (op, len7) = (got[at] & 0x0f, (got[at + 1] & 0x7f) as usize);
            let (len, head) = match len7 {
                126 if got.len() >= at + 4 => (u16::from_be_bytes([got[at + 2], got[at + 3]]) as usize, 4),
                127 if got.len() >= at + 10 => {
                    (u64::from_be_bytes(got[at + 2..at + 10].try_into().unwrap()) as usize, 10)
                }
                126 | 127 => break,
                n => (n, 2),
            };
            if got.len() < at + head + len {
                break;
            }
            if op == 0x8 {
                let p = &got[at + head..at + head + len];
                return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            }
            at += head + len;
        }
        let mut buf = [0u8; 4096];
        let n = raw.read(&mut buf).unwrap_or_else(|e| panic!("expected a close frame, got {e}; read {got:02x?}"));
        assert!(n > 0, "the server closed without a close frame; read {got:02x?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// How the gateway ends a session after its close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It waits for the client's close frame (answered here), then closes the socket.
    Handshake,
    /// It closes the socket right after its close frame (RFC 6455 7.1.7, "Fail the WebSocket
    /// Connection"): the client gets end of stream without answering.
    FailFast,
}

/// Sends `bytes` on a fresh session, expects the server's close frame with `code`, then the
/// `ending`, and that the server closed the socket (end of stream, not a reset).
pub fn expect_close_for(addr: SocketAddr, user: &str, bytes: &[u8], code: u16, ending: Ending) {
    let mut raw = raw_session(addr, user);
    raw.write_all(bytes).unwrap();
    assert_eq!(read_close_code(&mut raw), Some(code), "{user}: {bytes:02x?}");
    if ending == Ending::Handshake {
        raw.write_all(&close_frame(code)).unwrap();
    }
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).unwrap_or_else(|e| panic!("{user}: the server did not close the socket: {e}"));
    assert!(rest.is_empty(), "{user}: more after the close frame: {rest:02x?}");
}

/// One TCP socket from `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state code: 01 ESTABLISHED, 04 FIN_WAIT1, 05 FIN_WAIT2, 06 TIME_WAIT,
    /// 08 CLOSE_WAIT, 09 LAST_ACK, 0A LISTEN, ...
    pub state: u8,
    /// 0 when no descriptor holds it (TIME_WAIT, orphaned FIN_WAIT).
    pub inode: u64,
}

pub const ESTABLISHED: u8 = 0x01;
pub const FIN_WAIT1: u8 = 0x04;
pub const FIN_WAIT2: u8 = 0x05;
pub const TIME_WAIT: u8 = 0x06;
pub const CLOSE_WAIT: u8 = 0x08;
pub const LISTEN: u8 = 0x0A;

pub fn state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "?",
    }
}

/// Every TCP socket of the machine (this network namespace) with `port` at either end.
pub fn tcp_sockets(port: u16) -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let (Some(local_port), Some(remote_port)) = (port_of(f[1]), port_of(f[2])) else { continue };
            let s = TcpSocket {
                local_port,
                remote_port,
                state: u8::from_str_radix(f[3], 16).unwrap_or(0),
                inode: f[9].parse().unwrap_or(0),
            };
            if s.local_port == port || s.remote_port == port {
                out.push(s);
            }
        }
    }
    out
}

/// The gateway's side of its connections (local port = the gateway's port, the listener left
/// out), by state name.
pub fn server_side(port: u16) -> Vec<(&'static str, TcpSocket)> {
    tcp_sockets(port)
        .into_iter()
        .filter(|s| s.local_port == port && s.state != LISTEN)
        .map(|s| (state_name(s.state), s))
        .collect()
}

/// Descriptors of this process (`/proc/self/fd`) that are the gateway's connection sockets:
/// exact even while other tests open and close descriptors in parallel.
pub fn gateway_fds(port: u16) -> usize {
    own_fds_among(server_side(port).iter().map(|(_, s)| s.inode))
}

/// Descriptors of this process that are a listening socket on `port`. (A connect to a closed
/// listener's port can still succeed for a moment while a child process that another test
/// forks holds a copy of it until its `exec`; this counts only ours.)
pub fn listener_fds(port: u16) -> usize {
    own_fds_among(tcp_sockets(port).iter().filter(|s| s.local_port == port && s.state == LISTEN).map(|s| s.inode))
}

/// How many of this process's descriptors are sockets with one of `inodes`.
fn own_fds_among(inodes: impl Iterator<Item = u64>) -> usize {
    let inodes: Vec<u64> = inodes.filter(|&i| i != 0).collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
        .filter(|i| inodes.contains(i))
        .count()
}

/// Threads of this process named for the gateway on `port` (`msggate-PORT-...`, which the
/// kernel truncates to 15 bytes).
pub fn gateway_threads(port: u16) -> usize {
    gateway_threads_in("self", port)
}

/// [`gateway_threads`] of process `pid` (`self` for this one). A thread that has let go of the
/// address space (`statm` all zero) is not counted: `join` returns as soon as an exiting thread
/// gets there, and its `/proc` entry can outlive that by a moment.
pub fn gateway_threads_in(pid: &str, port: u16) -> usize {
    let prefix = format!("msggate-{port}-");
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let statm = std::fs::read_to_string(dir.join("statm")).ok()?;
            let has_mm = statm.split_whitespace().next().is_some_and(|size| size != "0");
            (comm.trim_end().starts_with(&prefix) && has_mm).then_some(())
        })
        .count()
}

/// Two sessions connected before a bad input, and the gateway's state with only them: the
/// "after each" check of `tests/badinput.rs` compares against it.
pub struct Bystanders {
    a: Client,
    b: Client,
    port: u16,
    threads: usize,
    connections: i64,
    sessions: i64,
    fds: usize,
    progress: Vec<u64>,
}

impl Bystanders {
    /// Connects two sessions and records the baseline.
    pub fn connect(gw: &GatewayHandle) -> Bystanders {
        let addr = gw.local_addr();
        let port = addr.port();
        let a = Client::connect(addr, "bystander-a", 1);
        let b = Client::connect(addr, "bystander-b", 1);
        eventually(STEP, "bystanders registered", || {
            gw.sessions("bystander-a").len() == 1 && gw.sessions("bystander-b").len() == 1
        });
        let s = gw.stats();
        // acceptor, reactors, roles, watchdog; a thread takes its name once it runs
        let threads = 1 + gw.config().io_threads + 2 + 1;
        eventually(STEP, "every gateway thread named", || gateway_threads(port) == threads);
        let fds = gateway_fds(port);
        assert_eq!(fds, 2, "one socket per bystander: {:?}", server_side(port));
        Bystanders {
            a,
            b,
            port,
            threads,
            connections: s.connections,
            sessions: s.sessions,
            fds,
            progress: reactor_progress(gw),
        }
    }

    /// After a bad input: no panic, no thread lost or stalled, every reactor still turning,
    /// sockets, descriptors and gauges back to the baseline with no FIN_WAIT or CLOSE_WAIT on
    /// the gateway's side, and the bystanders still relay both ways. Returns the gateway-side
    /// sockets left in TIME_WAIT (normal where the gateway closed first).
    pub fn check(&mut self, gw: &GatewayHandle, case: &str) -> usize {
        let port = self.port;
        eventually(2 * STEP, &format!("{case}: gauges back to the baseline"), || {
            self.pump();
            let s = gw.stats();
            s.connections == self.connections
                && s.sessions == self.sessions
                && gw.reactor_connections().iter().sum::<usize>() as i64 == self.connections
                && gw.registry_len() as i64 == self.sessions
        });
        eventually(2 * STEP, &format!("{case}: no FIN_WAIT or CLOSE_WAIT on the gateway's side"), || {
            self.pump();
            !server_side(port).iter().any(|(_, s)| matches!(s.state, FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT))
        });
        eventually(2 * STEP, &format!("{case}: gateway descriptors back to the baseline"), || {
            self.pump();
            gateway_fds(port) == self.fds
        });
        let s = gw.stats();
        assert_eq!((s.reactor_panics, s.stalls), (0, 0), "{case}: {s:?}");
        assert_eq!(gateway_threads(port), self.threads, "{case}: a gateway thread is gone");
        let health = gw.health();
        assert!(health.threads.iter().all(|t| t.doing != "exited" && !t.stalled), "{case}:\n{health}");
        let before = std::mem::take(&mut self.progress);
        eventually(STEP, &format!("{case}: every reactor turning"), || {
            self.pump();
            reactor_progress(gw).iter().zip(&before).all(|(now, then)| now > then)
        });
        self.progress = reactor_progress(gw);
        relay_both_ways(&mut self.a, &mut self.b, case);
        server_side(port).iter().filter(|(_, s)| s.state == TIME_WAIT).count()
    }

    /// Reads whatever waits for the bystanders (a millisecond each), so they answer the
    /// gateway's pings and stay alive through a short `idle_timeout`; frames are stashed.
    pub fn pump(&mut self) {
        for c in [&mut self.a, &mut self.b] {
            c.set_timeout(Duration::from_millis(1));
            match c.ws.read() {
                Ok(Message::Text(t)) => c.stash.push(serde_json::from_str(&t).expect("server sends JSON")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("{}: closed while standing by: {e}", c.user),
            }
            let _ = c.ws.flush();
            c.set_timeout(STEP);
        }
    }

    /// Closes both sessions and waits for the gateway to drain.
    pub fn leave(self, gw: &GatewayHandle) {
        self.a.close();
        self.b.close();
        assert_drained(gw);
    }
}

/// `a` and `b` each send `text` to the other: acked as delivered to one session, and pushed.
pub fn relay_both_ways(a: &mut Client, b: &mut Client, text: &str) {
    relay_one_way(a, b, text);
    relay_one_way(b, a, text);
}

fn relay_one_way(from: &mut Client, to: &mut Client, text: &str) {
    let incr = from.send_msg(&to.user, text);
    assert_eq!(from.await_reply(&incr)["data"]["delivered"], 1, "{} -> {}: {text}", from.user, to.user);
    assert_eq!(to.await_push()["content"], text);
}

/// Each reactor's progress counter, by reactor id.
fn reactor_progress(gw: &GatewayHandle) -> Vec<u64> {
    gw.health().threads.iter().filter(|t| t.name.contains("-reactor-")).map(|t| t.progress).collect()
}
