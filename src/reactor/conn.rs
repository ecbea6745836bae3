//! One socket on a reactor: the upgrade, then the WebSocket session, then the close.
//!
//! Owns the per-connection state machine and every tungstenite call on its socket: resuming
//! the handshake on readiness, reading until `WouldBlock`, queueing and flushing writes, the
//! close handshake in both directions, and the deadlines. It never blocks and never sends into
//! a queue; what the reactor must do next comes back as [`Next`].

use std::cell::RefCell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message, Utf8Bytes, WebSocket};

use super::socket::{answer_and_close, Socket, Stream};
use super::Ctx;
use crate::admission::{admit, admit_open, Identity, Rejection};
use crate::dispatch::Action;
use crate::handler::Frame;
use crate::mailbox::{CloseOrder, Out, SessionHandle};
use crate::metrics::{add, inc};
use crate::protocol;
use crate::throttle::log_throttled;
use crate::worker::Job;

type Ws<S> = Box<WebSocket<Socket<S>>>;
type Verdict = Rc<RefCell<Option<Result<Identity, Rejection>>>>;

/// Where a connection is in its life.
enum Stage<S: Stream> {
    /// Reading the upgrade request; then, once accepted, holding the `101` until the register
    /// role has inserted the session; then writing it.
    Handshake(Box<MidHandshake<ServerHandshake<Socket<S>, Auth>>>, Verdict),
    /// Upgraded and registered: requests are served.
    Open(Ws<S>),
    /// Our or the peer's close frame is out; waiting for the other one, or the deadline.
    Closing(Ws<S>),
    /// Transient, while a stage is being replaced.
    Gone,
}

/// What a connection does once its `101` is out.
enum AfterUpgrade {
    /// Serve requests.
    Serve,
    /// Send a close frame at once (kicked or timed out while registering).
    Close(CloseCode, &'static str),
}

/// Why a connection ended. "The peer closed normally" is kept apart from everything else.
#[derive(Debug)]
pub(crate) enum End {
    /// The close handshake completed.
    Closed,
    /// The peer went away without one (EOF or reset).
    PeerGone,
    /// The socket failed.
    Io(std::io::Error),
    /// The upgrade was answered with an HTTP error (already counted by reason).
    Refused,
    /// What the peer sent was not a WebSocket upgrade.
    BadHandshake(WsError),
    /// No upgrade within the handshake timeout.
    HandshakeTimeout,
    /// The peer never answered our close frame.
    CloseTimeout,
    /// The peer misbehaved after the close began (oversize or invalid frames, a reset).
    ErrorWhileClosing(WsError),
    /// The gateway is shutting down.
    Shutdown,
    /// Something that cannot happen did; logged at error level.
    Bug(String),
}

/// What the reactor must do with a connection after an operation on it.
pub(crate) enum Next {
    Keep,
    End(End),
}

use Next::Keep;

/// The handshake callback: judges the request and records the verdict for the reactor.
pub(crate) struct Auth {
    ctx: Arc<super::Shared>,
    verdict: Verdict,
}

impl Callback for Auth {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let outcome = if self.ctx.config.require_token {
            admit(request.uri().query(), &self.ctx.key, now)
        } else {
            admit_open(request.uri().query())
        };
        let result = match &outcome {
            Ok(_) => Ok(response),
            Err(r) => {
                let counter = if r.status == 400 {
                    &self.ctx.metrics.handshakes_rejected_args
                } else {
                    &self.ctx.metrics.handshakes_rejected_token
                };
                inc(counter);
                log::debug!("upgrade refused ({}): {} {}", r.reason(), r.code, r.msg);
                if r.msg_resp {
                    Ok(response)
                } else {
                    Err(error_response(r.status, &r.body()))
                }
            }
        };
        *self.verdict.borrow_mut() = Some(outcome);
        result
    }
}

/// An HTTP error response with a JSON body and the headers a client needs to read it.
fn error_response(status: u16, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_owned()));
    *resp.status_mut() = tungstenite::http::StatusCode::from_u16(status).unwrap_or_default();
    let headers = resp.headers_mut();
    headers.insert("content-type", tungstenite::http::HeaderValue::from_static("application/json"));
    headers.insert("content-length", body.len().into());
    headers.insert("connection", tungstenite::http::HeaderValue::from_static("close"));
    resp
}

/// The HTTP error for a request tungstenite refused as an upgrade (RFC 6455 4.2.1: the server
/// MUST answer a bad handshake with an HTTP error, not just drop it): 426 naming `websocket`
/// for a plain HTTP request, 426 with `Sec-WebSocket-Version: 13` for another version (4.2.2,
/// 4.4), 431 for an oversized head, 400 for the rest. `None` when the peer left mid-request.
fn bad_upgrade_response(e: &WsError) -> Option<Vec<u8>> {
    use tungstenite::error::{CapacityError, ProtocolError as P};
    let (status, extra): (u16, &[(&'static str, &'static str)]) = match e {
        WsError::Protocol(P::HandshakeIncomplete) | WsError::Io(_) | WsError::ConnectionClosed => return None,
        WsError::Protocol(P::MissingConnectionUpgradeHeader | P::MissingUpgradeWebSocketHeader) => {
            (426, &[("upgrade", "websocket")])
        }
        WsError::Protocol(P::MissingSecWebSocketVersionHeader) => {
            (426, &[("upgrade", "websocket"), ("sec-websocket-version", "13")])
        }
        WsError::AttackAttempt | WsError::Capacity(CapacityError::TooManyHeaders) => (431, &[]),
        _ => (400, &[]),
    };
    Some(http_error(status, &protocol::status_json(protocol::codes::CONN_ARGS, &e.to_string()), extra))
}

/// [`error_response`] with `extra` headers, as the bytes to write on a socket tungstenite is
/// not (or no longer) driving.
pub(crate) fn http_error(status: u16, body: &str, extra: &[(&'static str, &'static str)]) -> Vec<u8> {
    let mut resp = error_response(status, body);
    for (name, value) in extra {
        resp.headers_mut().insert(*name, tungstenite::http::HeaderValue::from_static(value));
    }
    let mut out = Vec::new();
    // Writing into a Vec cannot fail; the head is all static or numeric.
    let _ = tungstenite::handshake::server::write_response(&mut out, &resp);
    out.extend_from_slice(body.as_bytes());
    out
}

/// One connection owned by a reactor, on a TCP socket (`S` is an in-memory pipe only in the
/// fuzzing harness).
pub(crate) struct Conn<S: Stream = TcpStream> {
    stage: Stage<S>,
    pub(super) session: Option<Arc<SessionHandle>>,
    token: usize,
    /// Handshake or registration deadline, then close deadline (reactor milliseconds).
    deadline: u64,
    last_seen: u64,
    last_ping: u64,
    /// Input may be waiting in the socket (edge-triggered readiness already consumed).
    unread: bool,
    /// In the reactor's dirty list: has queued output to flush.
    dirty: bool,
    after_upgrade: AfterUpgrade,
    /// After an oversize frame, which leaves tungstenite's reader mid-frame: our close frame
    /// is out, our side is shut once it is flushed, and input is read raw and discarded until
    /// the peer closes or the close deadline passes.
    raw_drain: bool,
    /// The connection failed (1002, 1007, 1009): once our close frame is flushed, our side is
    /// shut down (FIN). RFC 6455 7.1.7: a failing endpoint does not wait for the peer's close
    /// frame, which may never come (the bad frame may have been the peer's close); a close
    /// frame already on its way is still read as the answer.
    failed: bool,
    /// Frames for a registered session whose `101` could not be written yet (socket full).
    early: Vec<Utf8Bytes>,
    /// The handler was told of this session (`on_connect`): it must hear of its end too.
    pub(super) announced: bool,
    /// Jobs handed to the worker pool and not yet answered. In raw mode the session's next
    /// frame is read only when this is zero, so answers keep the order of the frames.
    in_flight: u32,
    /// A logout came while jobs were in flight: its reply is out, and the close follows the
    /// last answer (nothing more is read meanwhile), so no answer is lost to the close.
    close_when_answered: bool,
}

impl<S: Stream> Conn<S> {
    /// Starts the server handshake on a freshly accepted, already registered socket.
    pub(crate) fn start(stream: S, token: usize, ctx: &Ctx) -> Conn<S> {
        let verdict = Verdict::default();
        let auth = Auth { ctx: ctx.shared.clone(), verdict: verdict.clone() };
        let mid = ServerHandshake::start(Socket::held(stream), auth, Some(ctx.shared.ws_config));
        Conn {
            stage: Stage::Handshake(Box::new(mid), verdict),
            session: None,
            token,
            deadline: ctx.now + ctx.shared.config.handshake_timeout.as_millis() as u64,
            last_seen: ctx.now,
            last_ping: ctx.now,
            unread: true,
            dirty: false,
            after_upgrade: AfterUpgrade::Serve,
            raw_drain: false,
            failed: false,
            early: Vec::new(),
            announced: false,
            in_flight: 0,
            close_when_answered: false,
        }
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self.stage, Stage::Handshake(..))
    }

    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.stage, Stage::Closing(_))
    }

    /// Where the connection is, for the fuzzing harness's end-state checks.
    pub(crate) fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Handshake(..) => "handshake",
            Stage::Open(_) => "open",
            Stage::Closing(_) => "closing",
            Stage::Gone => "gone",
        }
    }

    /// Readiness from the poll; `peer_closed`: the peer's FIN (or an error) has arrived.
    pub(crate) fn on_ready(&mut self, ctx: &mut Ctx, readable: bool, writable: bool, peer_closed: bool) -> Next {
        if readable {
            self.unread = true;
            match &mut self.stage {
                Stage::Handshake(mid, _) => mid.get_mut().get_mut().readable(peer_closed),
                Stage::Open(ws) | Stage::Closing(ws) => ws.get_mut().readable(peer_closed),
                _ => {}
            }
        }
        if let Stage::Handshake(..) = self.stage {
            return self.step_handshake(ctx);
        }
        if writable {
            if let Next::End(e) = self.flush(ctx) {
                return Next::End(e);
            }
        }
        if self.unread {
            return self.read(ctx);
        }
        Keep
    }

    fn step_handshake(&mut self, ctx: &mut Ctx) -> Next {
        let Stage::Handshake(mid, verdict) = std::mem::replace(&mut self.stage, Stage::Gone) else {
            return Next::End(End::Bug("step_handshake outside the handshake".into()));
        };
        let stream = mid.get_ref().get_ref().stream();
        match mid.handshake() {
            Ok(ws) => self.upgraded(ctx, Box::new(ws), &verdict),
            Err(HandshakeError::Interrupted(mut mid)) => {
                let held = mid.get_ref().get_ref().is_held();
                let judged = verdict.borrow().as_ref().map(Result::is_ok);
                match judged {
                    None => {} // the request is not complete yet
                    // Refused: let the HTTP error (or, with isMsgResp, the 101) out now.
                    Some(false) if held => {
                        mid.get_mut().get_mut().release();
                        self.stage = Stage::Handshake(Box::new(mid), verdict);
                        return self.step_handshake(ctx);
                    }
                    Some(true) if self.session.is_none() => self.accepted(ctx, &verdict),
                    Some(_) => {} // waiting for the register role, or for the socket
                }
                self.stage = Stage::Handshake(Box::new(mid), verdict);
                Keep
            }
            Err(HandshakeError::Failure(WsError::Http(_))) => Next::End(End::Refused),
            Err(HandshakeError::Failure(WsError::Io(e))) => Next::End(End::Io(e)),
            Err(HandshakeError::Failure(e)) => {
                inc(&ctx.shared.metrics.handshakes_failed);
                if let Some(response) = bad_upgrade_response(&e) {
                    answer_and_close(&*stream, &response);
                }
                Next::End(End::BadHandshake(e))
            }
        }
    }

    /// The token was good: create the session and ask the register role for it. The `101`
    /// stays held until the role has inserted it.
    fn accepted(&mut self, ctx: &mut Ctx, verdict: &Verdict) {
        let verdict = verdict.borrow();
        let Some(Ok(id)) = verdict.as_ref() else { return };
        add(&ctx.shared.metrics.sessions, 1);
        let conn = ctx.shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = if id.user.is_empty() { format!("anonymous-{conn}") } else { id.user.clone() };
        let handle = Arc::new(SessionHandle::new(
            Arc::from(user),
            id.platform,
            conn,
            id.background,
            self.token,
            ctx.mailbox.clone(),
        ));
        log::debug!("{handle:?} authenticated (operationID {:?}); registering", id.operation_id);
        self.session = Some(handle.clone());
        ctx.register(handle);
    }

    /// Lets a held `101` out and carries the handshake on.
    fn release(&mut self, ctx: &mut Ctx) -> Next {
        match &mut self.stage {
            Stage::Handshake(mid, _) if mid.get_ref().get_ref().is_held() => {
                mid.get_mut().get_mut().release();
                self.step_handshake(ctx)
            }
            _ => Keep,
        }
    }

    /// The `101` is out.
    fn upgraded(&mut self, ctx: &mut Ctx, ws: Ws<S>, verdict: &Verdict) -> Next {
        self.stage = Stage::Open(ws);
        self.last_seen = ctx.now;
        self.last_ping = ctx.now;
        match verdict.borrow_mut().take() {
            Some(Ok(id)) => {
                let session = self.session.clone();
                if session.as_ref().is_some_and(|s| !s.has_ended()) {
                    inc(&ctx.shared.metrics.handshakes_ok); // not for a login cancelled at its deadline
                }
                if id.msg_resp {
                    if let Next::End(e) = self.write(ctx, Message::text(protocol::status_json(protocol::codes::OK, "")))
                    {
                        return Next::End(e);
                    }
                }
                for frame in std::mem::take(&mut self.early) {
                    if let Next::End(e) = self.write(ctx, Message::Text(frame)) {
                        return Next::End(e);
                    }
                }
                match (&self.after_upgrade, session.as_ref().and_then(|s| s.close_order().map(|o| (s, o)))) {
                    (AfterUpgrade::Close(code, reason), _) => self.begin_close(ctx, *code, reason),
                    // Ordered closed while the 101 was held: never serve it. A kick still in the
                    // inbox closes it when it arrives (after its 2002); any other order closes now.
                    (AfterUpgrade::Serve, Some((s, _))) if s.last_pending() => Keep,
                    (AfterUpgrade::Serve, Some((s, order))) => {
                        let (code, reason) = close_for(order, s, ctx);
                        self.begin_close(ctx, code, reason)
                    }
                    (AfterUpgrade::Serve, None) => {
                        if let Some(s) = session.filter(|s| !s.has_ended()) {
                            self.announced = ctx.event(Job::Connect(s));
                        }
                        self.read(ctx)
                    }
                }
            }
            Some(Err(rejection)) => {
                // isMsgResp=true: the error travels as the first frame, then close 1008.
                if let Next::End(e) = self.write(ctx, Message::text(rejection.body())) {
                    return Next::End(e);
                }
                self.begin_close(ctx, CloseCode::Policy, &rejection.msg)
            }
            None => Next::End(End::Bug("handshake completed without a verdict".into())),
        }
    }

    /// Flags changed: registered, or a close was ordered.
    pub(crate) fn on_notice(&mut self, ctx: &mut Ctx) -> Next {
        let Some(session) = self.session.clone() else { return Keep };
        if let Some(order) = session.close_order() {
            if self.is_closing() || matches!(self.after_upgrade, AfterUpgrade::Close(..)) || session.last_pending() {
                return Keep; // already closing, or the kick frame in the inbox will close it
            }
            let (code, reason) = close_for(order, &session, ctx);
            if let Stage::Handshake(..) = self.stage {
                self.after_upgrade = AfterUpgrade::Close(code, reason);
                return self.release(ctx);
            }
            return self.begin_close(ctx, code, reason);
        }
        if session.is_registered() {
            return self.release(ctx);
        }
        Keep
    }

    /// Reads and serves frames until the socket would block, or a batch is done (then the
    /// reactor comes back to it on its next turn, so one busy client cannot starve the rest).
    pub(crate) fn read(&mut self, ctx: &mut Ctx) -> Next {
        for _ in 0..super::READ_BATCH {
            if self.raw_drain {
                return self.drain_raw(ctx);
            }
            let waiting = self.close_when_answered || (self.in_flight > 0 && ctx.pool.as_ref().is_some_and(|p| p.raw));
            if waiting && matches!(self.stage, Stage::Open(_)) {
                return Keep; // the input waits until the handler has answered
            }
            let ws = match &mut self.stage {
                Stage::Open(ws) | Stage::Closing(ws) => ws,
                _ => return Keep, // not upgraded yet: the input waits in the socket
            };
            match ws.read() {
                Ok(msg) => {
                    self.last_seen = ctx.now;
                    if let Next::End(e) = self.on_message(ctx, msg) {
                        return Next::End(e);
                    }
                }
                Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.unread = false;
                    return self.mark_dirty(ctx);
                }
                // A close may have begun: keep going, the readiness edge is spent.
                Err(e) => match self.on_ws_error(ctx, e) {
                    Keep => continue,
                    end => return end,
                },
            }
        }
        ctx.ready.push(self.token);
        self.mark_dirty(ctx)
    }

    /// Reads and discards input until `WouldBlock` (wait for more) or end of stream (done), at
    /// most a batch per turn so a flood cannot hog the reactor.
    fn drain_raw(&mut self, ctx: &mut Ctx) -> Next {
        if let Next::End(e) = self.flush(ctx) {
            return Next::End(e);
        }
        let Stage::Closing(ws) = &mut self.stage else {
            return Next::End(End::Bug("raw drain outside closing".into()));
        };
        let mut scratch = [0u8; 4096];
        for _ in 0..super::READ_BATCH {
            match std::io::Read::read(ws.get_mut(), &mut scratch) {
                Ok(0) => return Next::End(End::Closed),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.unread = false;
                    return Keep;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::End(End::PeerGone),
            }
        }
        ctx.ready.push(self.token);
        Keep
    }

    fn on_message(&mut self, ctx: &mut Ctx, msg: Message) -> Next {
        if self.is_closing() {
            return Keep; // data after a close frame is dropped, as RFC 6455 allows
        }
        if ctx.pool.as_ref().is_some_and(|p| p.raw) {
            let frame = match msg {
                Message::Text(t) => Frame::Text(t.as_str().to_owned()),
                Message::Binary(b) => Frame::Binary(b.into()),
                Message::Close(_) => {
                    self.enter_closing(ctx);
                    return self.mark_dirty(ctx);
                }
                _ => return self.mark_dirty(ctx),
            };
            inc(&ctx.shared.metrics.frames_in);
            let Some(session) = self.session.clone() else {
                return Next::End(End::Bug("open without a session".into()));
            };
            return self.hand_over(ctx, Job::Frame { session, frame });
        }
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Binary(b) => match std::str::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    inc(&ctx.shared.metrics.request_errors);
                    let reply = protocol::error_response(None, protocol::codes::ARGS, "binary frame is not UTF-8 JSON");
                    return self.write(ctx, Message::text(reply));
                }
            },
            Message::Close(_) => {
                // tungstenite queued the reply; it goes out with the next flush.
                self.enter_closing(ctx);
                return self.mark_dirty(ctx);
            }
            _ => return self.mark_dirty(ctx), // ping (pong queued), pong, raw frame
        };
        inc(&ctx.shared.metrics.frames_in);
        let Some(session) = self.session.clone() else { return Next::End(End::Bug("open without a session".into())) };
        match ctx.dispatcher.on_text(&session, text) {
            Action::Reply(reply) => self.write(ctx, Message::text(reply)),
            Action::ReplyThenClose(reply) => match self.write(ctx, Message::text(reply)) {
                Keep if self.in_flight > 0 => {
                    self.close_when_answered = true;
                    Keep
                }
                Keep => self.begin_close(ctx, CloseCode::Normal, "logout"),
                end => end,
            },
            Action::Work(job) => self.hand_over(ctx, job),
        }
    }

    /// Gives `job` to the worker pool. A full queue answers at once: errCode 503 for a
    /// request; for a raw frame, which has no envelope to carry it, close 1013.
    fn hand_over(&mut self, ctx: &mut Ctx, job: Job) -> Next {
        let Some(pool) = &ctx.pool else { return Next::End(End::Bug("work without a worker pool".into())) };
        let sent = if ctx.events_waiting(&job) { Err(job) } else { pool.try_send(job) };
        match sent {
            Ok(()) => {
                self.in_flight += 1;
                Keep
            }
            Err(job) => {
                inc(&ctx.shared.metrics.worker_queue_full);
                log_throttled!(
                    log::Level::Warn,
                    "{:?}: the handler's worker queue is full; answering busy",
                    self.session
                );
                match job.busy_reply() {
                    Some(reply) => self.write(ctx, Message::text(reply)),
                    None => self.begin_close(ctx, CloseCode::Again, "server busy"),
                }
            }
        }
    }

    /// A worker's answer: write it, and let a raw session read on.
    pub(crate) fn deliver_reply(&mut self, ctx: &mut Ctx, out: Out) -> Next {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_seen = ctx.now; // a session waiting for its handler is not idle
        let written = match out {
            Out::Text(t) => self.write(ctx, Message::Text(t)),
            Out::Binary(b) => self.write(ctx, Message::Binary(b)),
            Out::Nothing => Keep,
        };
        match written {
            Keep if self.in_flight == 0 && self.close_when_answered => {
                self.close_when_answered = false;
                self.begin_close(ctx, CloseCode::Normal, "logout")
            }
            Keep if self.unread && self.in_flight == 0 => self.read(ctx),
            other => other,
        }
    }

    fn on_ws_error(&mut self, ctx: &mut Ctx, e: WsError) -> Next {
        let m = &ctx.shared.metrics;
        match e {
            WsError::ConnectionClosed => Next::End(End::Closed),
            // Bad input after the close began (already counted, if it was what began it):
            // tungstenite may be stuck on a header it cannot read past, so read on raw. The
            // close frame and whatever was queued before it still go out, then the FIN;
            // dropping the socket here would cut them off if the socket was full.
            WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_) if self.is_closing() => {
                self.failed = true;
                self.raw_drain = true;
                Keep
            }
            // Our close frame is out; whatever else goes wrong now just ends it (counted once).
            e if self.is_closing() => Next::End(End::ErrorWhileClosing(e)),
            WsError::AlreadyClosed => Next::End(End::Bug("tungstenite: already closed".into())),
            WsError::Io(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                Next::End(End::PeerGone)
            }
            WsError::Io(e) => Next::End(End::Io(e)),
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                Next::End(End::PeerGone)
            }
            WsError::Capacity(c) => {
                // tungstenite keeps the oversize frame's header; reading on through it would
                // trip its internal assertions, so the rest of the input is discarded raw.
                self.raw_drain = true;
                self.failed = true;
                inc(&m.oversize_closes);
                log_throttled!(log::Level::Info, "{:?}: {c}; closing with 1009", self.session);
                self.begin_close(ctx, CloseCode::Size, "message too big")
            }
            WsError::Utf8(_) => {
                self.failed = true;
                inc(&m.protocol_closes);
                self.begin_close(ctx, CloseCode::Invalid, "invalid UTF-8")
            }
            WsError::Protocol(p) => {
                self.failed = true;
                inc(&m.protocol_closes);
                log_throttled!(log::Level::Info, "{:?}: protocol error: {p}; closing with 1002", self.session);
                let reason = p.to_string();
                self.begin_close(ctx, CloseCode::Protocol, &reason)
            }
            WsError::WriteBufferFull(_) => {
                inc(&m.slow_consumer_closes);
                log_throttled!(log::Level::Info, "{:?}: write buffer over budget: slow consumer", self.session);
                if let Some(s) = &self.session {
                    s.order_close(CloseOrder::SlowConsumer);
                }
                self.begin_close(ctx, CloseCode::Policy, "slow consumer")
            }
            other => Next::End(End::Bug(format!("tungstenite: {other}"))),
        }
    }

    /// A frame from the inbox.
    ///
    /// A frame for a session whose `101` is still held means the session is in the registry
    /// already (the register role flags it before inserting it): the `101` goes out first.
    pub(crate) fn deliver(&mut self, ctx: &mut Ctx, frame: Utf8Bytes) -> Next {
        match self.stage {
            Stage::Open(_) => self.write(ctx, Message::Text(frame)),
            Stage::Handshake(..) if self.session.as_ref().is_some_and(|s| s.is_registered()) => {
                self.early.push(frame);
                self.release(ctx)
            }
            _ => Keep,
        }
    }

    /// The kick: write its frame, then act on the close order it carries.
    pub(crate) fn deliver_last(&mut self, ctx: &mut Ctx, frame: Utf8Bytes) -> Next {
        match self.deliver(ctx, frame) {
            Keep => self.on_notice(ctx),
            end => end,
        }
    }

    /// Queues `msg`; the reactor flushes dirty connections at the end of its turn.
    fn write(&mut self, ctx: &mut Ctx, msg: Message) -> Next {
        let ws = match &mut self.stage {
            Stage::Open(ws) => ws,
            _ => return Keep,
        };
        match ws.write(msg) {
            Ok(()) => self.mark_dirty(ctx),
            // Queued; the socket is full. WRITABLE readiness resumes the flush.
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => Keep,
            Err(e) => self.on_ws_error(ctx, e),
        }
    }

    fn mark_dirty(&mut self, ctx: &mut Ctx) -> Next {
        if !self.dirty {
            self.dirty = true;
            ctx.dirty.push(self.token);
        }
        Keep
    }

    /// Writes what is queued; `WouldBlock` waits for WRITABLE readiness.
    pub(crate) fn flush(&mut self, ctx: &mut Ctx) -> Next {
        self.dirty = false;
        let ws = match &mut self.stage {
            Stage::Open(ws) | Stage::Closing(ws) => ws,
            _ => return Keep,
        };
        match ws.flush() {
            Ok(()) => {
                self.fin_if_failed();
                Keep
            }
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => Keep,
            Err(e) => self.on_ws_error(ctx, e),
        }
    }

    /// Sends a close frame (once) and waits for the peer's, up to `close_timeout`.
    pub(crate) fn begin_close(&mut self, ctx: &mut Ctx, code: CloseCode, reason: &str) -> Next {
        let ws = match &mut self.stage {
            Stage::Open(ws) => ws,
            Stage::Closing(_) => return Keep,
            Stage::Handshake(..) | Stage::Gone => return Next::End(End::Shutdown),
        };
        let reason = truncate(reason, 123);
        let result = ws.close(Some(CloseFrame { code, reason: reason.into() }));
        self.enter_closing(ctx);
        match result {
            Ok(()) => {
                self.fin_if_failed();
                Keep
            }
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => Keep,
            Err(WsError::ConnectionClosed) => Next::End(End::Closed),
            // Over budget even for the close frame, or the socket is broken: just drop it.
            Err(WsError::WriteBufferFull(_)) => Next::End(End::PeerGone),
            Err(WsError::Io(e)) => Next::End(End::Io(e)),
            Err(e) => Next::End(End::Bug(format!("close: {e}"))),
        }
    }

    /// A failed connection's close frame is out: the server closes the TCP connection first
    /// (RFC 6455 7.1.1), with a FIN rather than a drop, so the peer still reads the close frame.
    fn fin_if_failed(&mut self) {
        if let (true, Stage::Closing(ws)) = (self.failed, &mut self.stage) {
            ws.get_mut().finish_writes();
        }
    }

    fn enter_closing(&mut self, ctx: &Ctx) {
        if let Stage::Open(_) = self.stage {
            let Stage::Open(ws) = std::mem::replace(&mut self.stage, Stage::Gone) else { unreachable!() };
            self.stage = Stage::Closing(ws);
            self.deadline = ctx.now + ctx.shared.config.close_timeout.as_millis() as u64;
        }
    }

    /// Deadlines, idle detection and pings; called every reactor tick.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx) -> Next {
        let config = &ctx.shared.config;
        let now = ctx.now;
        match &mut self.stage {
            Stage::Handshake(mid, _) if now >= self.deadline => {
                if self.session.is_none() || !mid.get_ref().get_ref().is_held() {
                    // A cancelled login was counted as a registration timeout already.
                    if !self.session.as_ref().is_some_and(|s| s.has_ended()) {
                        inc(&ctx.shared.metrics.handshake_timeouts);
                    }
                    // As at the close deadline: a peer that let the deadline pass is reset, so
                    // that a vanished one leaves no orphaned socket in FIN_WAIT for a minute.
                    mid.get_ref().get_ref().reset_on_close();
                    return Next::End(End::HandshakeTimeout);
                }
                // Authenticated, but the register role has not inserted it in time. Cancel it, so
                // a late registration can neither insert it nor kick the user's other sessions;
                // if the role won the race after all, the session is simply let in.
                if self.session.as_ref().is_some_and(|s| !s.try_cancel()) {
                    return self.release(ctx);
                }
                inc(&ctx.shared.metrics.register_timeouts);
                log_throttled!(
                    log::Level::Warn,
                    "{:?}: not registered within the handshake timeout; closing with 1013",
                    self.session
                );
                self.deadline = now + config.close_timeout.as_millis() as u64;
                self.after_upgrade = AfterUpgrade::Close(CloseCode::Again, "registration timed out, try again later");
                self.release(ctx)
            }
            Stage::Open(_)
                if self.in_flight == 0
                    && now.saturating_sub(self.last_seen) >= config.idle_timeout.as_millis() as u64 =>
            {
                inc(&ctx.shared.metrics.idle_closes);
                log::debug!("{:?}: idle timeout", self.session);
                self.begin_close(ctx, CloseCode::Away, "idle timeout")
            }
            Stage::Open(_) if now.saturating_sub(self.last_ping) >= config.ping_interval.as_millis() as u64 => {
                self.last_ping = now;
                self.write(ctx, Message::Ping(Default::default()))
            }
            Stage::Closing(ws) if now >= self.deadline => {
                // The peer never answered our close frame: it has stopped reading or is gone.
                ws.get_ref().reset_on_close();
                Next::End(End::CloseTimeout)
            }
            _ => Keep,
        }
    }
}

/// The close code and reason for a close order, counted once.
fn close_for(order: CloseOrder, session: &SessionHandle, ctx: &Ctx) -> (CloseCode, &'static str) {
    let m = &ctx.shared.metrics;
    match order {
        CloseOrder::Kicked | CloseOrder::KickedByAdmin => (CloseCode::Policy, "kicked"),
        CloseOrder::Overloaded => (CloseCode::Again, "server overloaded"),
        CloseOrder::SlowConsumer => {
            inc(&m.slow_consumer_closes);
            log_throttled!(log::Level::Info, "{session:?}: slow consumer, closing");
            (CloseCode::Policy, "slow consumer")
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
