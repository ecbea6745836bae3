//! The client side of every scenario: the target URL, and [`Net`], one mio `Poll` owning many
//! client connections, each a state machine: non-blocking TCP connect → client handshake →
//! open → closing → gone. [`run`] is a client thread's loop: poll, drive the connections, hand
//! what happened ([`Out`]) to the scenario's [`Driver`], flush what it wrote once per turn.
//!
//! Owns connection-level accounting: connect and handshake failures (counted as error kinds in
//! the thread's [`Tally`]), handshake latency, and the stalls of the operations it drives itself
//! (connect, handshake, our close). Must never block, never sleep, and never panic on anything
//! the server sends; it knows nothing about the messaging protocol (the scenarios do).

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use msggate::TokenKey;
use slab::Slab;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::{ClientHandshake, Request, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message, Utf8Bytes, WebSocket};

use super::report::{Lat, Stall, Tally};
use super::run::{Phase, Shared};

/// Sessions per source address before another 127.x address is used (the ephemeral port range
/// holds about 28k ports; TIME_WAIT and other users need the rest).
pub const PER_SOURCE: usize = 20_000;

/// The most `--source-addrs`: the distinct 127.0.x.y addresses [`Target::parse`] generates
/// (127.0.0.1 up to 127.0.255.255).
pub const MAX_SOURCES: usize = 65_535;

/// How many source addresses to spread the connections over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// `--source-addrs 0`: one per [`PER_SOURCE`] of `conns` connections when the target is IPv4
    /// loopback, else one (the kernel chooses; extra 127.x sources only reach a loopback target).
    Auto { conns: usize },
    /// As given: 1..=[`MAX_SOURCES`]; more than 1 needs an IPv4 loopback target.
    Exactly(usize),
}

/// Where to connect, and how to log in.
pub struct Target {
    addr: SocketAddr,
    /// `host:port` and path as given in `--url`.
    authority: String,
    path: String,
    key: TokenKey,
    exp: u64,
    /// Source addresses to bind before connecting, used in turn; empty: let the kernel choose.
    sources: Vec<IpAddr>,
}

impl Target {
    /// Parses `--url` (`ws://host:port[/path]`) and resolves it once. More than one source
    /// spreads the connections over the first that many addresses after 127.0.0.0 (127.0.0.1,
    /// ..., 127.0.0.255, 127.0.1.0, ...; loopback targets only).
    pub fn parse(url: &str, secret: &str, sources: Sources) -> Result<Target, String> {
        let rest = match url.strip_prefix("ws://") {
            Some(rest) => rest,
            None if url.starts_with("wss://") => {
                return Err("--url: wss:// is not supported (no TLS here); use ws://".into())
            }
            None => return Err(format!("--url must be a ws:// URL such as ws://127.0.0.1:10001, got {url:?}")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(format!("--url must not carry a query or fragment (the tool adds its own): {url:?}"));
        }
        if authority.is_empty() {
            return Err(format!("--url has no host: {url:?}"));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url: cannot resolve {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url: {authority:?} resolves to no address"))?;
        let loopback_v4 = addr.is_ipv4() && addr.ip().is_loopback();
        let sources = match sources {
            Sources::Auto { .. } if !loopback_v4 => 1,
            Sources::Auto { conns } => conns.div_ceil(PER_SOURCE).clamp(1, MAX_SOURCES),
            Sources::Exactly(n) if n == 0 || n > MAX_SOURCES => {
                return Err(format!("--source-addrs must be from 1 to {MAX_SOURCES} (or 0: auto), got {n}"))
            }
            Sources::Exactly(n) if n > 1 && !loopback_v4 => {
                return Err(format!("--source-addrs {n} needs an IPv4 loopback target (127.x sources), not {addr}"))
            }
            Sources::Exactly(n) => n,
        };
        let sources = if sources > 1 {
            (1..=sources as u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | i))).collect()
        } else {
            Vec::new()
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let target = Target {
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
            key: TokenKey::new(secret.as_bytes()),
            exp: now + 24 * 3600,
            sources,
        };
        target.url("probe", 1).into_client_request().map_err(|e| format!("--url {url:?} is not usable: {e}"))?;
        Ok(target)
    }

    /// The login URL of `user` on `platform`, with a fresh token.
    pub fn url(&self, user: &str, platform: i64) -> String {
        let token = self.key.mint(user, platform, self.exp);
        format!(
            "ws://{}{}?token={token}&sendID={user}&platformID={platform}&operationID=stress-{user}",
            self.authority, self.path
        )
    }

    pub fn sources(&self) -> usize {
        self.sources.len().max(1)
    }
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub enum End {
    /// We closed it and the close handshake finished (or it was dropped at the end of the run).
    Closed,
    /// The server closed it: the close frame's code and reason (`None`: no close frame).
    ServerClosed { code: Option<u16>, reason: String },
    /// It failed; the error kind has been counted.
    Failed,
    /// `op` (connect, handshake, close) did not finish within the stall timeout; counted.
    Stalled,
}

/// What happened on a connection, for the scenario.
#[derive(Debug)]
pub enum Out {
    /// The upgrade completed.
    Open { id: usize, owner: u32 },
    /// A text frame (or a binary one holding UTF-8).
    Text { id: usize, owner: u32, text: Utf8Bytes },
    /// The connection is gone; `id` may be reused from now on. `unsent`: how many of the last
    /// texts [`Net::send`] queued on it never completely reached the socket (they were still
    /// buffered: the server cannot have read them).
    End { id: usize, owner: u32, end: End, unsent: u64 },
}

enum State {
    Connecting(TcpStream, Request),
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    Open(WebSocket<TcpStream>),
    /// Ended; the slab entry goes when the scenario is told.
    Gone,
}

struct Conn {
    state: State,
    owner: u32,
    who: Box<str>,
    started: Instant,
    /// When the current stage (connect, handshake, our close) began.
    since: Instant,
    /// We sent a close frame.
    closing: bool,
    /// The scenario has been (or is about to be) told it ended.
    ended: bool,
    /// The server's close frame, when one came.
    close: Option<(u16, String)>,
    dirty: bool,
    /// Texts queued since the last flush that wrote everything out.
    unflushed: u64,
}

/// A client thread's connections.
pub struct Net {
    poll: Poll,
    conns: Slab<Conn>,
    target: Arc<Target>,
    config: WebSocketConfig,
    stall: Duration,
    pub tally: Tally,
    pub shared: Arc<Shared>,
    out: VecDeque<Out>,
    dirty: Vec<usize>,
    next_source: usize,
    last_check: Instant,
}

impl Net {
    pub fn new(target: Arc<Target>, shared: Arc<Shared>, stall: Duration, first_source: usize) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            conns: Slab::new(),
            target,
            // Small buffers: thousands of connections per process, frames of a few hundred bytes.
            config: WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(16 * 1024),
            stall,
            tally: Tally::default(),
            shared,
            out: VecDeque::new(),
            dirty: Vec::new(),
            next_source: first_source,
            last_check: Instant::now(),
        })
    }

    /// Connections in any state.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Starts connecting `who` (for reports) with the login `url`; the outcome comes as
    /// [`Out::Open`] or [`Out::End`] with the returned id.
    pub fn connect(&mut self, owner: u32, who: &str, url: &str) -> usize {
        let now = Instant::now();
        self.tally.counts.connects += 1;
        let id = self.conns.insert(Conn {
            state: State::Gone,
            owner,
            who: who.into(),
            started: now,
            since: now,
            closing: false,
            ended: false,
            close: None,
            dirty: false,
            unflushed: 0,
        });
        let request = match url.into_client_request() {
            Ok(r) => r,
            Err(e) => {
                self.fail(id, "bad_request", format!("{who}: {e}"));
                return id;
            }
        };
        match self.open_socket() {
            Ok(mut stream) => {
                match self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE) {
                    Ok(()) => self.conns[id].state = State::Connecting(stream, request),
                    Err(e) => self.fail(id, "register_failed", format!("{who}: {e}")),
                }
            }
            Err(e) => {
                let kind = connect_kind(&e);
                self.fail(id, kind, format!("{who}: connect to {}: {e}", self.target.addr));
            }
        }
        id
    }

    fn open_socket(&mut self) -> io::Result<TcpStream> {
        let addr = self.target.addr;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if !self.target.sources.is_empty() {
            let ip = self.target.sources[self.next_source % self.target.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {} // EINPROGRESS
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// Queues a text frame; flushed at the end of this poll turn. False when not open.
    pub fn send(&mut self, id: usize, text: String) -> bool {
        let Some(conn) = self.conns.get_mut(id) else { return false };
        let State::Open(ws) = &mut conn.state else { return false };
        if conn.closing {
            return false;
        }
        match ws.write(Message::text(text)) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {} // queued, flushed later
            Err(e) => {
                let kind = ws_error_kind(&e);
                let who = conn.who.clone();
                self.fail(id, &kind, format!("{who}: write: {e}"));
                return false;
            }
        }
        conn.unflushed += 1;
        self.mark_dirty(id);
        true
    }

    /// Starts our close handshake (or drops a connection still connecting); the end comes as
    /// [`Out::End`] with [`End::Closed`].
    pub fn close(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match &mut conn.state {
            State::Open(ws) if !conn.closing => {
                conn.closing = true;
                conn.since = Instant::now();
                match ws.close(None) {
                    Ok(()) => self.mark_dirty(id),
                    Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => self.mark_dirty(id),
                    Err(_) => self.finish(id, End::Closed),
                }
            }
            State::Open(_) | State::Gone => {}
            State::Connecting(..) | State::Handshaking(_) => self.finish(id, End::Closed),
        }
    }

    fn mark_dirty(&mut self, id: usize) {
        if let Some(conn) = self.conns.get_mut(id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Counts an error and ends the connection.
    fn fail(&mut self, id: usize, kind: &str, detail: String) {
        self.tally.error(kind, || detail);
        self.shared.errors.fetch_add(1, Relaxed);
        self.finish(id, End::Failed);
    }

    /// Drops the socket and queues the end for the scenario.
    fn finish(&mut self, id: usize, end: End) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.ended {
            return;
        }
        conn.ended = true;
        let state = std::mem::replace(&mut conn.state, State::Gone);
        let registry = self.poll.registry();
        match state {
            State::Gone => {}
            State::Connecting(mut s, _) => drop(registry.deregister(&mut s)),
            State::Handshaking(mut mid) => drop(registry.deregister(mid.get_mut().get_mut())),
            State::Open(mut ws) => {
                drop(registry.deregister(ws.get_mut()));
                self.shared.open.fetch_sub(1, Relaxed);
            }
        }
        self.out.push_back(Out::End { id, owner: conn.owner, end, unsent: conn.unflushed });
    }

    fn on_event(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match std::mem::replace(&mut conn.state, State::Gone) {
            State::Gone => {}
            State::Connecting(stream, request) => {
                let failed = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == ErrorKind::NotConnected => {
                            conn.state = State::Connecting(stream, request); // not yet
                            return;
                        }
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = failed {
                    conn.state = State::Connecting(stream, request); // deregistered by `finish`
                    let detail = format!("{}: connect to {}: {e}", conn.who, self.target.addr);
                    self.fail(id, connect_kind(&e), detail);
                    return;
                }
                conn.since = Instant::now();
                let r = tungstenite::client::client_with_config(request, stream, Some(self.config));
                self.handshake_result(id, r);
            }
            State::Handshaking(mid) => self.handshake_result(id, mid.handshake()),
            State::Open(ws) => {
                conn.state = State::Open(ws);
                self.read(id);
                self.flush(id);
            }
        }
    }

    fn handshake_result(
        &mut self,
        id: usize,
        r: Result<(WebSocket<TcpStream>, Response), HandshakeError<ClientHandshake<TcpStream>>>,
    ) {
        let conn = &mut self.conns[id];
        match r {
            Ok((ws, _response)) => {
                let now = Instant::now();
                conn.state = State::Open(ws);
                conn.since = now;
                let us = now.duration_since(conn.started).as_micros() as u64;
                let owner = conn.owner;
                self.tally.latency(Lat::Handshake, us);
                let c = &mut self.tally.counts;
                c.handshakes += 1;
                match self.shared.phase() {
                    Phase::Ramp => c.handshakes_ramp += 1,
                    Phase::Run => c.handshakes_window += 1,
                    _ => {}
                }
                self.shared.open.fetch_add(1, Relaxed);
                self.shared.handshakes.fetch_add(1, Relaxed);
                self.out.push_back(Out::Open { id, owner });
                self.read(id); // frames that came with the 101
            }
            Err(HandshakeError::Interrupted(mid)) => conn.state = State::Handshaking(mid),
            Err(HandshakeError::Failure(e)) => {
                let (kind, detail) = handshake_error(&e);
                let detail = format!("{}: {detail}", conn.who);
                self.fail(id, &kind, detail);
            }
        }
    }

    /// Reads until the socket would block.
    fn read(&mut self, id: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else { return };
            let State::Open(ws) = &mut conn.state else { return };
            match ws.read() {
                Ok(Message::Text(text)) => self.out.push_back(Out::Text { id, owner: conn.owner, text }),
                Ok(Message::Binary(bytes)) => match Utf8Bytes::try_from(bytes) {
                    Ok(text) => self.out.push_back(Out::Text { id, owner: conn.owner, text }),
                    Err(_) => {
                        let who = conn.who.clone();
                        self.tally.error("binary_not_utf8", || format!("{who}: a binary frame that is not UTF-8"));
                        self.shared.errors.fetch_add(1, Relaxed);
                    }
                },
                Ok(Message::Close(frame)) => {
                    conn.close =
                        Some(frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
                    self.mark_dirty(id); // our reply
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => self.mark_dirty(id), // a pong is queued
                Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.ended(id, e, "read"),
            }
        }
    }

    fn flush(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.dirty = false;
        let State::Open(ws) = &mut conn.state else { return };
        match ws.flush() {
            Ok(()) => conn.unflushed = 0, // everything queued is in the kernel's hands
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {} // WRITABLE will come
            Err(e) => self.ended(id, e, "flush"),
        }
    }

    /// An open connection's read or flush returned `e`: closed normally, or failed.
    fn ended(&mut self, id: usize, e: WsError, during: &str) {
        let conn = &mut self.conns[id];
        let normal = matches!(e, WsError::ConnectionClosed | WsError::AlreadyClosed);
        if conn.closing && (normal || conn.close.is_some()) {
            return self.finish(id, End::Closed);
        }
        if normal || conn.close.is_some() {
            let (code, reason) = match conn.close.take() {
                Some((code, reason)) => (Some(code), reason),
                None => (None, String::new()),
            };
            return self.finish(id, End::ServerClosed { code, reason });
        }
        if conn.closing {
            // The server dropped the socket instead of answering our close: count it, it is over anyway.
            let who = conn.who.clone();
            self.tally.error("close_not_answered", || format!("{who}: {during} after our close: {e}"));
            self.shared.errors.fetch_add(1, Relaxed);
            return self.finish(id, End::Closed);
        }
        // Gone without a close frame (reset, EOF): the scenario decides what it means.
        let kind = ws_error_kind(&e);
        let detail = format!("{}: {during}: {e}", conn.who);
        if matches!(&e, WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake))
            || matches!(&e, WsError::Io(io) if io.kind() == ErrorKind::ConnectionReset)
        {
            return self.finish(id, End::ServerClosed { code: None, reason: detail });
        }
        self.fail(id, &kind, detail);
    }

    /// Flushes every connection written to in this turn.
    pub fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            self.flush(id);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Declares connects, handshakes and closes older than the stall timeout stalled
    /// (checked at most every 50 ms).
    fn check_stalls(&mut self, now: Instant) {
        if now.duration_since(self.last_check) < Duration::from_millis(50) {
            return;
        }
        self.last_check = now;
        let stall = self.stall;
        let stalled: Vec<(usize, &'static str)> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.since) >= stall)
            .filter_map(|(id, c)| match c.state {
                State::Connecting(..) => Some((id, "connect")),
                State::Handshaking(_) => Some((id, "handshake")),
                State::Open(_) if c.closing => Some((id, "close")),
                _ => None,
            })
            .collect();
        for (id, op) in stalled {
            let conn = &self.conns[id];
            let what = match op {
                "connect" => format!("TCP connect to {} not established", self.target.addr),
                "handshake" => "no HTTP 101 (or refusal) for the upgrade request".to_owned(),
                _ => "no close frame from the server after ours".to_owned(),
            };
            let s = Stall {
                kind: op,
                user: conn.who.to_string(),
                what,
                waited_ms: now.duration_since(conn.since).as_millis() as u64,
                at_ms: self.shared.ms_since_start(now),
            };
            self.tally.stall(s);
            self.shared.stalls.fetch_add(1, Relaxed);
            self.finish(id, End::Stalled);
        }
    }

    /// Records a stall the scenario found (ack, push, kick...).
    pub fn stall(&mut self, kind: &'static str, user: &str, what: String, waited: Duration) {
        let s = Stall {
            kind,
            user: user.to_owned(),
            what,
            waited_ms: waited.as_millis() as u64,
            at_ms: self.shared.ms_since_start(Instant::now()),
        };
        self.tally.stall(s);
        self.shared.stalls.fetch_add(1, Relaxed);
    }

    /// Counts an error the scenario found.
    pub fn error(&mut self, kind: &str, detail: impl FnOnce() -> String) {
        self.tally.error(kind, detail);
        self.shared.errors.fetch_add(1, Relaxed);
    }

    /// Drops every connection at once (the end of the run); the scenario is not told.
    pub fn drop_all(&mut self) {
        let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.finish(id, End::Closed);
        }
        self.out.clear();
        self.conns.clear();
    }
}

/// A scenario's per-thread logic.
pub trait Driver {
    /// Something happened on one of its connections.
    fn on(&mut self, net: &mut Net, out: Out);
    /// Called every turn: start connections, send, check its own deadlines. Returns how soon
    /// it wants to be called again.
    fn tick(&mut self, net: &mut Net, now: Instant) -> Duration;
    /// True when the thread may return.
    fn finished(&self, net: &Net) -> bool;
}

/// A client thread: polls until the driver is finished.
pub fn run(net: &mut Net, driver: &mut impl Driver) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        let wait = driver.tick(net, now);
        deliver(net, driver);
        net.flush_dirty();
        if driver.finished(net) {
            return Ok(());
        }
        match net.poll.poll(&mut events, Some(wait.min(Duration::from_millis(20)))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            net.on_event(ev.token().0);
        }
        net.check_stalls(Instant::now());
        deliver(net, driver);
        net.flush_dirty();
    }
}

fn deliver(net: &mut Net, driver: &mut impl Driver) {
    while let Some(out) = net.out.pop_front() {
        if let Out::End { id, .. } = out {
            net.conns.try_remove(id);
        }
        driver.on(net, out);
    }
}

/// snake_case of an `ErrorKind`'s name.
fn snake(kind: ErrorKind) -> String {
    let name = format!("{kind:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn connect_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connect_refused",
        ErrorKind::TimedOut => "connect_timed_out",
        ErrorKind::AddrNotAvailable => "connect_no_source_port",
        _ if matches!(e.raw_os_error(), Some(23 | 24)) => "connect_too_many_open_files",
        _ => "connect_failed",
    }
}

fn ws_error_kind(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("io_{}", snake(io.kind())),
        WsError::Protocol(_) => "ws_protocol_error".into(),
        WsError::Capacity(_) => "ws_frame_too_big".into(),
        WsError::Utf8(_) => "ws_invalid_utf8".into(),
        _ => "ws_error".into(),
    }
}

/// The error kind and a description of a failed upgrade.
fn handshake_error(e: &WsError) -> (String, String) {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().as_deref().unwrap_or_default();
            let code = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("errCode")?.as_i64());
            let kind = match code {
                Some(code) => format!("http_{status}_{code}"),
                None => format!("http_{status}"),
            };
            (kind, format!("upgrade refused: HTTP {status} {}", String::from_utf8_lossy(body)))
        }
        WsError::Io(io) if io.kind() == ErrorKind::ConnectionRefused => ("connect_refused".into(), e.to_string()),
        WsError::Io(io) => (format!("handshake_io_{}", snake(io.kind())), e.to_string()),
        WsError::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete) => {
            ("handshake_eof".into(), "the server closed the socket before answering the upgrade".into())
        }
        WsError::Protocol(p) => ("handshake_protocol_error".into(), p.to_string()),
        _ => ("handshake_failed".into(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Target, String>) -> String {
        r.err().expect("an error")
    }

    const ONE: Sources = Sources::Exactly(1);

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:10001", "s", ONE).ok().unwrap();
        assert_eq!(t.addr, "127.0.0.1:10001".parse().unwrap());
        assert!(t.url("u1", 1).starts_with("ws://127.0.0.1:10001/?token="));
        let t = Target::parse("ws://127.0.0.1:9/gw", "s", Sources::Exactly(3)).ok().unwrap();
        assert!(t.url("u1", 2).starts_with("ws://127.0.0.1:9/gw?token="));
        assert_eq!(t.sources.len(), 3);
        assert!(err(Target::parse("http://127.0.0.1:1", "s", ONE)).contains("ws://"));
        assert!(err(Target::parse("wss://127.0.0.1:1", "s", ONE)).contains("wss"));
        assert!(err(Target::parse("ws://127.0.0.1:1/?a=b", "s", ONE)).contains("query"));
        assert!(Target::parse("ws://", "s", ONE).is_err());
    }

    #[test]
    fn auto_sources_fall_back_to_one_for_targets_that_are_not_ipv4_loopback() {
        let auto = Sources::Auto { conns: 30_000 };
        assert_eq!(Target::parse("ws://127.0.0.1:1", "s", auto).ok().unwrap().sources(), 2);
        // A remote or IPv6 target: the kernel's source address, not a refusal of a flag never given.
        for url in ["ws://10.0.0.5:10001", "ws://[::1]:10001"] {
            let t = Target::parse(url, "s", auto).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(t.sources.is_empty(), "{url}");
        }
        // Asked for explicitly, it stays an error.
        let e = err(Target::parse("ws://10.0.0.5:10001", "s", Sources::Exactly(2)));
        assert!(e.contains("--source-addrs 2") && e.contains("loopback"), "{e}");
        assert!(err(Target::parse("ws://[::1]:1", "s", Sources::Exactly(2))).contains("loopback"));
    }

    #[test]
    fn source_addrs_are_bounded_and_distinct() {
        for n in [0, MAX_SOURCES + 1, 1_000_000_000] {
            let e = err(Target::parse("ws://127.0.0.1:1", "s", Sources::Exactly(n)));
            assert!(e.contains("--source-addrs must be from 1 to 65535"), "{n}: {e}");
        }
        let t = Target::parse("ws://127.0.0.1:1", "s", Sources::Exactly(MAX_SOURCES)).ok().unwrap();
        let distinct: std::collections::HashSet<_> = t.sources.iter().collect();
        assert_eq!(distinct.len(), MAX_SOURCES);
        assert_eq!(t.sources[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(t.sources[255], IpAddr::V4(Ipv4Addr::new(127, 0, 1, 0)));
        assert_eq!(t.sources[MAX_SOURCES - 1], IpAddr::V4(Ipv4Addr::new(127, 0, 255, 255)));
        assert!(t.sources.iter().all(|ip| ip.is_loopback() && *ip != IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0))));
    }

    #[test]
    fn names_error_kinds() {
        assert_eq!(snake(ErrorKind::ConnectionReset), "connection_reset");
        assert_eq!(connect_kind(&io::Error::from(ErrorKind::ConnectionRefused)), "connect_refused");
    }
}
