//! The embedding service's side of the gateway: the [`Handler`] trait and the values it sees.
//!
//! Owns the public contract of a handler: which requests it claims, what it is given, what it
//! answers. Every method runs on a worker thread of the gateway's pool (`worker.rs`), never on
//! a reactor or role thread, so a handler may block. Nothing here touches sockets or queues:
//! a [`Session`] reaches its client only through the same non-blocking paths as any push.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use crate::gateway::GatewayHandle;
use crate::mailbox::{ConnId, NotDelivered, SessionHandle};
use crate::policy::Platform;
use crate::protocol::codes;

/// Who serves a request identifier (see [`Handler::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Claim {
    /// The gateway serves it on the reactor as usual (1003 relay, 2003 logout, 2004, 2005, or
    /// errCode 1001 for an identifier it does not know). The default.
    #[default]
    Gateway,
    /// [`Handler::on_request`] serves it on a worker, instead of the gateway.
    Handler,
    /// For 1003 only: [`Handler::on_message`] sees each message on a worker first (to persist
    /// it, say), then the gateway relays it from that worker, unless `on_message` refused it.
    /// For any other identifier this means [`Claim::Handler`].
    Observe,
}

/// The embedding service's logic. Every method has a default, so an implementor writes only
/// what it needs; [`on`] and [`raw`] turn a closure into a handler.
///
/// Methods run on the gateway's worker pool (`Config::workers` threads), never on a reactor or
/// role thread: they may block (a database write, a legacy RPC) without delaying pings,
/// handshakes or other sessions' relays. One session's requests always go to the same worker,
/// so they are handled in the order they arrived. When that worker's queue
/// (`Config::worker_queue`) is full the client gets errCode 503 "server busy" at once.
/// Connect and disconnect events travel in the same queue; one that finds it full waits, in
/// order, in its reactor's event backlog for that worker (requests for that worker are answered
/// "busy" until it is empty, so a session's connect always precedes its requests). Shutdown hands
/// the backlog over before it stops, so every `on_connect` gets its `on_disconnect`.
///
/// ```
/// use msggate::{Claim, Config, Gateway, Handler, Reply, Request, Session};
///
/// struct Clock;
/// impl Handler for Clock {
///     fn claim(&self, req_identifier: i32) -> Claim {
///         if req_identifier == 5000 { Claim::Handler } else { Claim::Gateway }
///     }
///     fn on_request(&self, _session: &Session, _req: &Request) -> Reply {
///         Reply::with_data(&serde_json::json!({"now": 1_700_000_000}))
///     }
/// }
///
/// let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
/// let gateway = Gateway::start_with(config, Clock)?;
/// gateway.shutdown();
/// # Ok::<(), msggate::Error>(())
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Who serves `req_identifier`. Asked on the reactor for every request, so it must be
    /// quick and must not block: a `match` or a set lookup. Default: [`Claim::Gateway`].
    fn claim(&self, req_identifier: i32) -> Claim {
        let _ = req_identifier;
        Claim::Gateway
    }

    /// Serves a request this handler claimed; the reply is sent in the envelope that echoes
    /// the request's `reqIdentifier`, `msgIncr` and `operationID`. A panic here is caught and
    /// answered with errCode 500.
    fn on_request(&self, session: &Session, req: &Request) -> Reply {
        let _ = session;
        Reply::error(codes::ARGS, format!("unsupported reqIdentifier {}", req.req_identifier))
    }

    /// Sees a 1003 message before the gateway relays it, when 1003 is claimed with
    /// [`Claim::Observe`]. `Err(reply)` refuses it: nothing is relayed and the client gets
    /// `reply` instead of the ack.
    fn on_message(&self, session: &Session, msg: &Msg) -> Result<(), Reply> {
        let _ = (session, msg);
        Ok(())
    }

    /// A session is registered and its `101` is out.
    fn on_connect(&self, session: &Session) {
        let _ = session;
    }

    /// A session that was announced to [`Handler::on_connect`] has ended.
    fn on_disconnect(&self, session: &Session) {
        let _ = session;
    }

    /// Raw mode: when true (read once, at start) every text and binary frame goes to
    /// [`Handler::on_frame`] as it is, without the JSON envelope. Default false.
    fn raw(&self) -> bool {
        false
    }

    /// Raw mode: one frame from the client; the answer (if any) is sent back to it. A
    /// session's next frame is read only once this one is answered, so answers keep order.
    fn on_frame(&self, session: &Session, frame: Frame) -> Option<Frame> {
        let _ = (session, frame);
        None
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn claim(&self, req_identifier: i32) -> Claim {
        (**self).claim(req_identifier)
    }
    fn on_request(&self, session: &Session, req: &Request) -> Reply {
        (**self).on_request(session, req)
    }
    fn on_message(&self, session: &Session, msg: &Msg) -> Result<(), Reply> {
        (**self).on_message(session, msg)
    }
    fn on_connect(&self, session: &Session) {
        (**self).on_connect(session)
    }
    fn on_disconnect(&self, session: &Session) {
        (**self).on_disconnect(session)
    }
    fn raw(&self) -> bool {
        (**self).raw()
    }
    fn on_frame(&self, session: &Session, frame: Frame) -> Option<Frame> {
        (**self).on_frame(session, frame)
    }
}

/// A handler that serves one request identifier with a closure. See [`on`].
#[derive(Debug, Clone)]
pub struct On<F> {
    req_identifier: i32,
    f: F,
}

/// A handler that claims `req_identifier` and serves it with `f`.
///
/// ```
/// let time = msggate::on(5000, |_session, _req| msggate::Reply::with_data(&42));
/// # let _ = time;
/// ```
pub fn on<F>(req_identifier: i32, f: F) -> On<F>
where
    F: Fn(&Session, &Request) -> Reply + Send + Sync + 'static,
{
    On { req_identifier, f }
}

impl<F> Handler for On<F>
where
    F: Fn(&Session, &Request) -> Reply + Send + Sync + 'static,
{
    fn claim(&self, req_identifier: i32) -> Claim {
        if req_identifier == self.req_identifier {
            Claim::Handler
        } else {
            Claim::Gateway
        }
    }
    fn on_request(&self, session: &Session, req: &Request) -> Reply {
        (self.f)(session, req)
    }
}

/// A raw-mode handler from a closure. See [`raw`].
#[derive(Debug, Clone)]
pub struct Raw<F>(F);

/// A raw-mode handler: `f` gets every frame as it is and returns the answer, if any. An echo
/// server is `msggate::raw(|_, frame| Some(frame))`.
pub fn raw<F>(f: F) -> Raw<F>
where
    F: Fn(&Session, Frame) -> Option<Frame> + Send + Sync + 'static,
{
    Raw(f)
}

impl<F> Handler for Raw<F>
where
    F: Fn(&Session, Frame) -> Option<Frame> + Send + Sync + 'static,
{
    fn raw(&self) -> bool {
        true
    }
    fn on_frame(&self, session: &Session, frame: Frame) -> Option<Frame> {
        (self.0)(session, frame)
    }
}

/// A client session, as a handler sees it.
#[derive(Clone)]
pub struct Session {
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) gateway: GatewayHandle,
}

impl Session {
    /// The session's user (the token's `UserID`; `anonymous-<conn>` without tokens).
    pub fn user(&self) -> &str {
        &self.handle.user
    }

    /// The session's platform.
    pub fn platform(&self) -> Platform {
        self.handle.platform
    }

    /// The gateway-wide connection id.
    pub fn conn(&self) -> ConnId {
        self.handle.conn
    }

    /// Whether the client said it is in the background (URL or 2004).
    pub fn is_background(&self) -> bool {
        self.handle.background.load(Relaxed)
    }

    /// The gateway, to push to other users, kick or ask who is online. This handle does not
    /// keep the gateway running: when the embedding service drops the last handle it got from
    /// `Gateway::start_with`, the gateway stops, and calls through this one find nobody online.
    pub fn gateway(&self) -> &GatewayHandle {
        &self.gateway
    }

    /// Sends a text frame to this session besides the reply, without blocking. It fails for
    /// this session only: closing, over its outbound budget, or its reactor's inbox full.
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), NotDelivered> {
        self.handle.offer_now(&Utf8Bytes::from(text.into()).into())
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

/// A client request, owned, as [`Handler::on_request`] gets it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `reqIdentifier`.
    pub req_identifier: i32,
    /// `sendID` (empty when the client left it out; never another user's).
    pub send_id: String,
    /// `operationID`.
    pub operation_id: String,
    /// `msgIncr`.
    pub msg_incr: String,
    pub(crate) data: Option<Box<RawValue>>,
}

impl Request {
    pub(crate) fn from_wire(req: &crate::protocol::Request<'_>, req_identifier: i32) -> Request {
        Request {
            req_identifier,
            send_id: req.send_id.to_string(),
            operation_id: req.operation_id.to_string(),
            msg_incr: req.msg_incr.to_string(),
            data: req.data.map(ToOwned::to_owned),
        }
    }

    /// `data` as raw JSON text, if present.
    pub fn raw_data(&self) -> Option<&str> {
        self.data.as_deref().map(RawValue::get)
    }

    /// `data` decoded as `T`; on failure, the errCode 1001 reply that says why.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, Reply> {
        let what = self.req_identifier;
        let raw = self.raw_data().ok_or_else(|| Reply::error(codes::ARGS, format!("{what}: missing data")))?;
        serde_json::from_str(raw).map_err(|e| Reply::error(codes::ARGS, format!("{what}: bad data: {e}")))
    }
}

/// A 1003 message as [`Handler::on_message`] sees it, before it is relayed.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The sender (the session's user).
    pub send_id: String,
    /// The recipient user.
    pub recv_id: String,
    /// The client's id for the message.
    pub client_msg_id: String,
    /// `contentType`, passed through.
    pub content_type: i64,
    pub(crate) content: Box<RawValue>,
}

impl Msg {
    /// `content` as raw JSON text, exactly as the client sent it.
    pub fn content(&self) -> &str {
        self.content.get()
    }
}

/// A handler's answer to a request: `errCode`, `errMsg` and `data` of the response envelope.
#[derive(Debug, Clone)]
pub struct Reply {
    pub(crate) code: i32,
    pub(crate) msg: String,
    pub(crate) data: Option<Box<RawValue>>,
}

impl Reply {
    /// Success with `data: null`.
    pub fn ok() -> Reply {
        Reply { code: codes::OK, msg: String::new(), data: None }
    }

    /// Success with `data` (encoded now; a value that cannot be encoded is errCode 500).
    pub fn with_data<T: Serialize + ?Sized>(data: &T) -> Reply {
        match serde_json::value::to_raw_value(data) {
            Ok(raw) => Reply { data: Some(raw), ..Reply::ok() },
            Err(e) => Reply::error(codes::SERVER_INTERNAL, format!("reply data does not encode: {e}")),
        }
    }

    /// An error with `data: null`.
    pub fn error(code: i32, msg: impl Into<String>) -> Reply {
        Reply { code, msg: msg.into(), data: None }
    }

    /// The `errCode`.
    pub fn code(&self) -> i32 {
        self.code
    }
}

/// A WebSocket data frame, for raw mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}
