//! One connection's server side over an in-memory pipe, for fuzzing and property tests.
//!
//! Owns the pipe that stands in for the TCP socket and a driver that runs the gateway's real
//! code on the calling thread, one reactor-like turn at a time: [`Conn`] (tungstenite's
//! handshake, frames, the session logic and dispatch), the reactor's inbox, ready and flush
//! passes, and the register and unregister roles' own functions. Then it judges how the
//! connection ended ([`Outcome::check`]).
//!
//! It must not be used by the gateway, open sockets, spawn threads or read the clock for
//! deadlines (time is whatever the script says). A connection's end goes through the reactor's
//! own `retire`; where it mirrors the reactor's loop (`turn`, the inbox drain) it must stay as
//! close to `mod.rs` as it can: it adds no behaviour of its own, so what it checks is the
//! gateway's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::conn::{Conn, End, Next};
use super::{Ctx, RoleSender, Shared, Stream};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::handler::Frame;
use crate::mailbox::{CloseOrder, Delivery, Mailbox, Out, ReplyError, SessionHandle};
use crate::metrics::{add, Metrics};
use crate::roles::{self, RoleCtx, RoleState, Waiters};
use crate::token::TokenKey;
use crate::worker::{self, Job};

/// The secret the harness's gateway verifies tokens with.
pub const SECRET: &str = "fuzz-secret";
/// The user a scripted login signs in as.
pub const USER: &str = "u1";
/// Turns the harness gives a connection to end after the end of its input (EOF), with time
/// running on past every deadline, plus one per two bytes of input (a raw session reads one
/// frame per worker round trip, and a frame is at least two bytes). A
/// connection still there after them is a leak.
const EOF_TURNS: usize = 16;
/// Turns the raw echo worker retries an answer that finds the inbox full before it orders the
/// session closed (the harness's stand-in for `worker::REPLY_PATIENCE`).
const WORKER_PATIENCE: usize = 4;

/// How the connection starts and what the gateway is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Login {
    /// The script's bytes are the whole stream, upgrade request included (token required).
    #[default]
    None,
    /// The script's bytes are the whole stream; the gateway runs without tokens.
    Open,
    /// The harness sends a valid upgrade for [`USER`] first; the script's bytes follow it.
    Valid,
    /// As `Valid`, with `isMsgResp=true`.
    ValidMsgResp,
    /// A refused upgrade (bad token) with `isMsgResp=true`: upgraded, error frame, close 1008.
    RefusedMsgResp,
    /// As `Open`, with a raw echo handler (the embedding API's `raw` mode, as `examples/echo.rs`):
    /// every frame goes to a worker, whose answer the harness delivers turn by turn.
    OpenRawEcho,
    /// As `Valid`, with the raw echo handler.
    ValidRawEcho,
}

/// What the harness runs.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// How the connection starts.
    pub login: Login,
    /// A small `max_message_size` (256 bytes) instead of the default, to reach 1009 cheaply.
    pub small_limit: bool,
    /// After the last step, the peer's end of stream (FIN): the connection must then end.
    pub eof: bool,
    /// After this many steps, user `u2` logs in (a 2005 push, if the session watches `u2`), then
    /// a newer login of [`USER`] on platform 1 kicks the session: 2002, then close 1008,
    /// whatever stage it is in. Both go through the register role's own code.
    pub kick_after: Option<usize>,
    /// The turns, in order.
    pub steps: Vec<Step>,
}

/// One turn: bytes arriving, and the conditions the turn runs in.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Bytes the peer sends this turn.
    pub input: Vec<u8>,
    /// Most bytes one `read` returns (partial reads); 0 means no limit.
    pub read_cap: usize,
    /// Bytes the socket takes this turn before `write` would block; `usize::MAX` for no limit.
    pub write_room: usize,
    /// Milliseconds the clock moves before the turn.
    pub advance_ms: u64,
}

impl Script {
    /// Reads a script from arbitrary bytes (a fuzzer's input): one flags byte (login, limit,
    /// EOF, kick), then steps of a length byte, a knobs byte and that many input bytes.
    pub fn from_bytes(data: &[u8]) -> Script {
        let Some((&flags, mut rest)) = data.split_first() else { return Script::default() };
        let login = [
            Login::None,
            Login::Open,
            Login::Valid,
            Login::ValidRawEcho,
            Login::ValidMsgResp,
            Login::RefusedMsgResp,
            Login::OpenRawEcho,
            Login::Valid,
        ][usize::from(flags & 7)];
        let kick_after = (flags >> 5).checked_sub(1).map(usize::from);
        let mut script =
            Script { login, small_limit: flags & 8 != 0, eof: flags & 16 != 0, kick_after, steps: Vec::new() };
        while let [len, knobs, tail @ ..] = rest {
            let n = usize::from(*len).min(tail.len());
            let (input, tail) = tail.split_at(n);
            script.steps.push(Step {
                input: input.to_vec(),
                read_cap: [0, 1, 2, 3, 7, 16, 64, 1000][usize::from(knobs & 7)],
                write_room: [usize::MAX, 0, 1, 2, 10, 100, 1000, 4096][usize::from(knobs >> 3 & 7)],
                advance_ms: [0, 10, 1_000, 31_000][usize::from(knobs >> 6)],
            });
            rest = tail;
        }
        script
    }

    /// Total bytes the peer sends.
    pub fn input_len(&self) -> usize {
        self.steps.iter().map(|s| s.input.len()).sum()
    }
}

/// The upgrade request a real client would send for `query`.
pub fn upgrade_request(query: &str) -> Vec<u8> {
    format!(
        "GET /?{query} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A valid login query for [`USER`] on platform 1, signed with [`SECRET`].
pub fn login_query(msg_resp: bool) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let token = TokenKey::new(SECRET.as_bytes()).mint(USER, 1, exp);
    format!("token={token}&sendID={USER}&platformID=1&operationID=fuzz&isMsgResp={msg_resp}")
}

#[derive(Debug, Default)]
struct PipeState {
    input: VecDeque<u8>,
    eof: bool,
    read_cap: usize,
    room: usize,
    output: Vec<u8>,
    /// The gateway shut its sending side (FIN): nothing more may be written.
    fin: bool,
    /// The gateway tried to write after its FIN (a bug: the bytes would be lost).
    wrote_after_fin: bool,
    /// The gateway asked for a reset on close.
    reset: bool,
}

/// The in-memory socket: the peer's bytes in, the gateway's bytes out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pipe(Rc<RefCell<PipeState>>);

impl Stream for Pipe {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.input.is_empty() {
            return if p.eof { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        let cap = if p.read_cap == 0 { usize::MAX } else { p.read_cap };
        let n = buf.len().min(p.input.len()).min(cap);
        for (slot, byte) in buf.iter_mut().zip(p.input.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.fin {
            p.wrote_after_fin |= !buf.is_empty();
            return Err(ErrorKind::BrokenPipe.into()); // as a TCP socket after shutdown(Write)
        }
        if p.room == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(p.room);
        p.room -= n;
        p.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn shutdown_write(&self) {
        self.0.borrow_mut().fin = true;
    }

    fn reset_on_close(&self) {
        self.0.borrow_mut().reset = true;
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Bytes the peer sent.
    pub input_len: usize,
    /// Every byte the gateway wrote.
    pub output: Vec<u8>,
    /// Why the connection ended (`End`'s debug form), or `None` if it is still there.
    pub end: Option<String>,
    /// The connection ended by `End::Bug`: something that cannot happen did.
    pub bug: Option<String>,
    /// The stage the connection was last seen in (`handshake`, `open`, `closing`).
    pub stage: &'static str,
    /// The script ended with EOF.
    pub eof: bool,
    /// The gateway ran the raw echo handler: its frames are the peer's, not JSON envelopes.
    pub raw: bool,
    /// The gauges and the registry after the run: `(connections, sessions, registry_sessions,
    /// presence_subscriptions, owned sockets)`, all 0 once it ended.
    pub leftovers: [i64; 5],
    /// The gateway wrote after it had sent its FIN.
    pub wrote_after_fin: bool,
    /// The largest number of entries seen at once in the harness's ready, dirty, register
    /// backlog, unregister backlog and inbox lists: none may grow without bound.
    pub peak_lists: usize,
}

/// What the gateway's output says, read back by a tungstenite client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The HTTP status of the upgrade's answer, if a full response head was written.
    pub status: Option<u16>,
    /// Text frames after a `101`, in order.
    pub texts: Vec<String>,
    /// Binary frames after a `101`, in order.
    pub binaries: Vec<Vec<u8>>,
    /// The gateway sent a close frame.
    pub closed: bool,
    /// The code in that close frame; `None` for a close frame without a body (which is how
    /// the gateway answers a peer's close without a code, as RFC 6455 asks).
    pub close_code: Option<u16>,
}

impl Outcome {
    /// Parses the output as a client would: the HTTP answer, then WebSocket frames.
    pub fn transcript(&self) -> Result<Transcript, String> {
        let mut t = Transcript::default();
        let Some(head_end) = self.output.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if self.output.starts_with(b"HTTP/1.1 ") || b"HTTP/1.1 ".starts_with(&self.output) {
                Ok(t) // nothing, or a head cut short by the socket
            } else {
                Err(format!("output does not start with an HTTP status line: {:?}", lossy(&self.output)))
            };
        };
        let head = std::str::from_utf8(&self.output[..head_end]).map_err(|_| "HTTP head is not UTF-8".to_string())?;
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line: {head:?}"))?;
        t.status = Some(status);
        if status != 101 {
            return Ok(t);
        }
        let frames = Replay { data: &self.output[head_end + 4..] };
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let mut ws = WebSocket::from_raw_socket(frames, Role::Client, Some(config));
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    if t.closed {
                        return Err("a text frame after the close frame".into());
                    }
                    t.texts.push(text.as_str().to_owned());
                }
                Ok(Message::Close(_)) => {
                    // tungstenite reports a code it may not receive as 1002: read the real one.
                    t.closed = true;
                    t.close_code = raw_close_code(&self.output[head_end + 4..]);
                }
                Ok(Message::Binary(b)) => {
                    if t.closed {
                        return Err("a binary frame after the close frame".into());
                    }
                    t.binaries.push(b.to_vec());
                }
                Ok(_) => {} // ping or pong
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(t),
                // The output ends, whole frames or in the middle of one (the socket was full).
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Ok(t)
                }
                Err(e) => return Err(format!("the gateway's frames do not parse: {e}")),
            }
        }
    }

    /// Every property the run must have; `Err` names the first one broken.
    pub fn check(&self) -> Result<Transcript, String> {
        if let Some(bug) = &self.bug {
            return Err(format!("the connection ended by a bug: {bug}"));
        }
        if self.eof && self.end.is_none() {
            return Err(format!("still {} after EOF, with every deadline past", self.stage));
        }
        if self.wrote_after_fin {
            return Err("wrote after its FIN".into());
        }
        if self.end.is_some() && self.leftovers != [0; 5] {
            return Err(format!(
                "ended, but left (connections, sessions, registry, subscriptions, owned) = {:?}",
                self.leftovers
            ));
        }
        if self.end.is_none() && !matches!(self.stage, "handshake" | "open" | "closing") {
            return Err(format!("left in stage {}", self.stage));
        }
        // One answer per frame at most, each a bounded envelope echoing bounded input: the
        // output is linear in the input, whatever the input is.
        let bound = 8192 + 64 * self.input_len;
        if self.output.len() > bound {
            return Err(format!("{} bytes out for {} bytes in (bound {bound})", self.output.len(), self.input_len));
        }
        if self.peak_lists > 4 {
            return Err(format!("a reactor list held {} entries for one connection", self.peak_lists));
        }
        let t = self.transcript()?;
        if !self.raw {
            for text in &t.texts {
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|e| format!("text frame is not JSON ({e}): {text:?}"))?;
            }
            if !t.binaries.is_empty() {
                return Err("the gateway sent a binary frame".into());
            }
        }
        if let Some(code) = t.close_code {
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(format!("the gateway sent close code {code}, which may not go on the wire"));
            }
        }
        if t.status.is_some_and(|s| s != 101) && self.end.is_none() {
            return Err(format!("HTTP {:?} was answered but the connection is still {}", t.status, self.stage));
        }
        Ok(t)
    }
}

/// The code in the first close frame of a server's (unmasked) frames, read from the bytes;
/// `None` if there is none or it has no body.
fn raw_close_code(mut frames: &[u8]) -> Option<u16> {
    while let [b0, b1, rest @ ..] = frames {
        let (len, rest) = match b1 & 0x7f {
            126 => (usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), &rest[2..]),
            127 => (usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?, &rest[8..]),
            n => (usize::from(n), rest),
        };
        let payload = rest.get(..len)?;
        if b0 & 0x0f == 0x8 {
            return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
        frames = &rest[len..];
    }
    None
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// The gateway's output, read back; the client's own replies go nowhere.
struct Replay<'a> {
    data: &'a [u8],
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reactor with one connection, on the calling thread.
struct Harness {
    conn: Option<Conn<Pipe>>,
    stage: &'static str,
    end: Option<End>,
    ctx: Ctx,
    pipe: Pipe,
    inbox: Receiver<Delivery>,
    register_rx: Receiver<Arc<SessionHandle>>,
    unregister_rx: Receiver<Arc<SessionHandle>>,
    roles: RoleCtx,
    register_state: RoleState,
    unregister_state: RoleState,
    waiters: [Arc<Waiters>; 2],
    /// Logins from elsewhere (`u2`'s, and the newer one that kicked the session).
    others: Vec<Arc<SessionHandle>>,
    /// The raw echo handler's worker queue, if the script has one.
    worker_rx: Option<Receiver<Job>>,
    /// Answers the worker could not hand over yet (inbox full), and the turns they waited.
    unanswered: VecDeque<(Arc<SessionHandle>, Out, usize)>,
    peak_lists: usize,
    _poll: mio::Poll,
}

/// Runs `script` against the gateway's connection code and reports how it ended.
pub fn run(script: &Script) -> Outcome {
    let mut h = Harness::new(script);
    let mut steps: Vec<Step> = Vec::with_capacity(script.steps.len() + 1);
    match script.login {
        Login::None | Login::Open | Login::OpenRawEcho => {}
        Login::Valid | Login::ValidMsgResp | Login::ValidRawEcho => {
            let request = upgrade_request(&login_query(script.login == Login::ValidMsgResp));
            steps.push(Step { input: request, write_room: usize::MAX, ..Step::default() });
        }
        Login::RefusedMsgResp => {
            let request = upgrade_request(&format!("token=nope&sendID={USER}&platformID=1&isMsgResp=true"));
            steps.push(Step { input: request, write_room: usize::MAX, ..Step::default() });
        }
    }
    let logins = steps.len();
    steps.extend(script.steps.iter().cloned());
    for (i, step) in steps.iter().enumerate() {
        if i >= logins && script.kick_after == Some(i - logins) {
            h.kick();
        }
        h.turn(step, false);
    }
    if script.kick_after.is_some_and(|k| k >= script.steps.len()) {
        h.kick();
    }
    if script.eof {
        // The peer's FIN, then time running past every deadline, with room to write.
        let late = Step { write_room: usize::MAX, advance_ms: 31_000, ..Step::default() };
        // Unread frames may sit in tungstenite's buffer too: count every byte sent.
        for _ in 0..EOF_TURNS + script.input_len() / 2 {
            if h.conn.is_none() {
                break;
            }
            h.turn(&late, true);
        }
    }
    h.roles_turn();
    h.log_out_others();
    h.outcome(script)
}

impl Harness {
    fn new(script: &Script) -> Harness {
        let mut config = Config {
            secret: Some(SECRET.into()),
            require_token: !matches!(script.login, Login::Open | Login::OpenRawEcho),
            // Small queues, so every "queue full" fallback is on the path.
            register_queue: 1,
            unregister_queue: 1,
            inbox_queue: 4,
            ..Config::default()
        };
        if script.small_limit {
            config.max_message_size = 256;
        }
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared::new(config, TokenKey::new(SECRET.as_bytes()), "fuzz".into(), &metrics));
        let (registry, presence) = (shared.registry.clone(), shared.presence.clone());
        let config = &shared.config;
        let poll = mio::Poll::new().expect("a poll for the mailbox's waker");
        let waker = mio::Waker::new(poll.registry(), super::WAKE).expect("a waker");
        let (inbox_tx, inbox) = bounded(config.inbox_queue);
        let mailbox = Arc::new(Mailbox::new(0, inbox_tx, waker, config.outbound_budget));
        let (register_tx, register_rx) = bounded(config.register_queue);
        let (unregister_tx, unregister_rx) = bounded(config.unregister_queue);
        let waiters = [Arc::new(Waiters::new(vec![mailbox.clone()])), Arc::new(Waiters::new(vec![mailbox.clone()]))];
        let (pool, worker_rx) = if matches!(script.login, Login::OpenRawEcho | Login::ValidRawEcho) {
            let echo: Arc<dyn crate::handler::Handler> = Arc::new(crate::handler::raw(|_, frame| Some(frame)));
            let (pool, mut rxs) = worker::queues(echo, 1, 2);
            (Some(pool), rxs.pop())
        } else {
            (None, None)
        };
        let dispatcher = Dispatcher::new(
            registry.clone(),
            metrics.clone(),
            "fuzz-0".into(),
            presence.clone(),
            config.max_subscriptions,
            pool.as_ref().map(|p| p.handler.clone()),
        );
        let roles =
            RoleCtx { registry, presence, metrics, policy: config.multi_login_policy, register_delay: Duration::ZERO };
        let ctx = Ctx {
            shared: shared.clone(),
            mailbox,
            dispatcher,
            now: 0,
            epoch: Instant::now(),
            register: RoleSender { tx: register_tx, waiters: waiters[0].clone(), full: |m| &m.register_queue_full },
            unregister: RoleSender {
                tx: unregister_tx,
                waiters: waiters[1].clone(),
                full: |m| &m.unregister_queue_full,
            },
            register_backlog: VecDeque::new(),
            unregister_backlog: VecDeque::new(),
            event_backlog: Vec::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
            pool,
        };
        let pipe = Pipe::default();
        // As the acceptor and `Reactor::accept_handoffs` do for a new socket.
        add(&shared.metrics.connections, 1);
        let conn = Conn::start(pipe.clone(), 0, &ctx);
        ctx.mailbox.owned(1);
        Harness {
            conn: Some(conn),
            stage: "handshake",
            end: None,
            ctx,
            pipe,
            inbox,
            register_rx,
            unregister_rx,
            roles,
            register_state: RoleState::default(),
            unregister_state: RoleState::default(),
            waiters,
            others: Vec::new(),
            worker_rx,
            unanswered: VecDeque::new(),
            peak_lists: 0,
            _poll: poll,
        }
    }

    /// One reactor turn (as `Reactor::event_loop`), then one turn of each role.
    fn turn(&mut self, step: &Step, eof: bool) {
        {
            let mut p = self.pipe.0.borrow_mut();
            p.input.extend(&step.input);
            p.eof |= eof;
            p.read_cap = step.read_cap;
            p.room = step.write_room;
        }
        self.ctx.now += step.advance_ms;
        self.ctx.mailbox.rearm();
        // Readiness: readable (bytes arrived, or the FIN), and writable (room this turn).
        // Spurious events are allowed by mio, so giving both every turn is fair. Once the FIN
        // has come, every event says so (as mio's `is_read_closed`).
        let peer_closed = self.pipe.0.borrow().eof;
        self.with(|c, ctx| c.on_ready(ctx, true, true, peer_closed));
        self.drain_inbox();
        if self.ctx.mailbox.take_sweep() {
            self.with(|c, ctx| c.on_notice(ctx));
        }
        for _ in std::mem::take(&mut self.ctx.ready) {
            self.with(|c, ctx| c.read(ctx));
        }
        self.ctx.retry_backlogs();
        self.ctx.dispatcher.retry_deferred();
        self.with(|c, ctx| c.tick(ctx));
        self.note_lists();
        for _ in std::mem::take(&mut self.ctx.dirty) {
            self.with(|c, ctx| c.flush(ctx));
        }
        self.roles_turn();
        self.drain_inbox();
    }

    /// `u2` logs in, then a newer login of [`USER`] on platform 1, as if from another reactor's
    /// sockets (they have no connection here; frames for them are skipped).
    fn kick(&mut self) {
        let platform = crate::policy::Platform::from_id(1).expect("platform 1");
        for user in ["u2", USER] {
            let conn = self.ctx.shared.next_conn.fetch_add(1, Relaxed);
            let other =
                Arc::new(SessionHandle::new(Arc::from(user), platform, conn, false, 1, self.ctx.mailbox.clone()));
            roles::register(&self.roles, &mut self.register_state, &other);
            self.others.push(other);
            self.drain_inbox();
        }
    }

    /// The other logins end too, so the registry can be checked empty.
    fn log_out_others(&mut self) {
        for other in std::mem::take(&mut self.others) {
            other.mark_ended();
            roles::unregister(&self.roles, &mut self.unregister_state, &other);
            self.drain_inbox();
        }
    }

    /// The raw echo worker takes its jobs (as `worker::Worker::run` for a raw handler that
    /// answers every frame with itself) and hands the answers over as `worker::reply` does,
    /// except that it retries on the next turn instead of sleeping: after
    /// [`WORKER_PATIENCE`] turns of a full inbox it orders the session closed (1013).
    fn worker_turn(&mut self) {
        let Some(rx) = &self.worker_rx else { return };
        while let Ok(job) = rx.try_recv() {
            if let Job::Frame { session, frame } = job {
                let out = match frame {
                    Frame::Text(t) => Out::Text(t.into()),
                    Frame::Binary(b) => Out::Binary(b.into()),
                };
                let out = if out.len() > self.ctx.shared.config.outbound_budget { Out::Nothing } else { out };
                self.unanswered.push_back((session, out, 0));
            } // connect and disconnect events: the echo handler ignores them
        }
        for _ in 0..self.unanswered.len() {
            let Some((session, out, waited)) = self.unanswered.pop_front() else { break };
            match session.try_reply(out) {
                Ok(()) | Err(ReplyError::Not(_)) => {}
                Err(ReplyError::Full(_)) if waited >= WORKER_PATIENCE => {
                    session.order_close(CloseOrder::Overloaded);
                }
                Err(ReplyError::Full(out)) => self.unanswered.push_back((session, out, waited + 1)),
            }
        }
    }

    /// The register and unregister roles take what is queued for them (as `roles::spawn`).
    fn roles_turn(&mut self) {
        self.worker_turn();
        while let Ok(session) = self.register_rx.try_recv() {
            self.waiters[0].wake_waiting();
            roles::register(&self.roles, &mut self.register_state, &session);
        }
        while let Ok(session) = self.unregister_rx.try_recv() {
            self.waiters[1].wake_waiting();
            roles::unregister(&self.roles, &mut self.unregister_state, &session);
        }
        self.register_state.retry(&self.roles.metrics);
        self.unregister_state.retry(&self.roles.metrics);
        // What the roles could not hand over at once: the reactor's backlog, retried.
        self.ctx.retry_backlogs();
        while let Ok(session) = self.unregister_rx.try_recv() {
            roles::unregister(&self.roles, &mut self.unregister_state, &session);
        }
    }

    fn note_lists(&mut self) {
        let lists = [
            self.ctx.ready.len(),
            self.ctx.dirty.len(),
            self.ctx.register_backlog.len(),
            self.ctx.unregister_backlog.len(),
            self.inbox.len(),
        ];
        self.peak_lists = self.peak_lists.max(lists.into_iter().max().unwrap_or(0));
    }

    /// As `Reactor::drain_inbox`, for the one connection (token 0).
    fn drain_inbox(&mut self) {
        while let Ok(delivery) = self.inbox.try_recv() {
            let current =
                |h: &Harness, conn| h.conn.as_ref().and_then(|c| c.session.clone()).filter(|s| s.conn == conn);
            match delivery {
                Delivery::Frame { conn, frame, .. } => {
                    let Some(s) = current(self, conn) else { continue };
                    s.dequeued(frame.len());
                    self.with(|c, ctx| c.deliver(ctx, frame));
                }
                Delivery::Notice { conn, .. } => {
                    if current(self, conn).is_some() {
                        self.with(|c, ctx| c.on_notice(ctx));
                    }
                }
                Delivery::Last { conn, frame, .. } => {
                    let Some(s) = current(self, conn) else { continue };
                    s.last_delivered(frame.len());
                    self.with(|c, ctx| c.deliver_last(ctx, frame));
                }
                Delivery::Presence { conn, item, .. } => {
                    let Some(s) = current(self, conn) else { continue };
                    s.dequeued(item.frame.len());
                    if self.ctx.dispatcher.presence_is_news(conn, &item) {
                        let frame = item.frame.clone();
                        self.with(|c, ctx| c.deliver(ctx, frame));
                    }
                }
                Delivery::Reply { conn, out, .. } => {
                    let Some(s) = current(self, conn) else { continue };
                    s.dequeued(out.len());
                    self.with(|c, ctx| c.deliver_reply(ctx, out));
                }
            }
        }
    }

    fn with(&mut self, op: impl FnOnce(&mut Conn<Pipe>, &mut Ctx) -> Next) {
        let Some(conn) = self.conn.as_mut() else { return };
        let next = op(conn, &mut self.ctx);
        self.stage = conn.stage_name();
        if let Next::End(why) = next {
            self.finish(why);
        }
    }

    /// As `Reactor::finish`.
    fn finish(&mut self, why: End) {
        let Some(conn) = self.conn.take() else { return };
        super::retire(&mut self.ctx, conn, &why);
        self.end = Some(why);
    }

    fn outcome(self, script: &Script) -> Outcome {
        let m = &self.ctx.shared.metrics;
        let leftovers = [
            m.connections.load(Relaxed),
            m.sessions.load(Relaxed),
            self.roles.registry.len() as i64,
            m.presence_subscriptions.load(Relaxed),
            self.ctx.mailbox.owned_conns() as i64,
        ];
        let bug = match &self.end {
            Some(End::Bug(what)) => Some(what.clone()),
            _ => None,
        };
        let wrote_after_fin = self.pipe.0.borrow().wrote_after_fin;
        Outcome {
            input_len: script.input_len(),
            output: std::mem::take(&mut self.pipe.0.borrow_mut().output),
            end: self.end.as_ref().map(|e| format!("{e:?}")),
            bug,
            stage: self.stage,
            eof: script.eof,
            raw: matches!(script.login, Login::OpenRawEcho | Login::ValidRawEcho),
            leftovers,
            wrote_after_fin,
            peak_lists: self.peak_lists,
        }
    }
}
