//! The handler's worker pool: bounded per-worker queues, the worker threads, their replies.
//!
//! Owns the only threads that run embedding-service code. Reactors hand them jobs with
//! `try_send` (full: the client is told "server busy" at once, [`Pool::try_send`] hands the job
//! back); a worker answers through the session's reactor inbox with `try_send`, retrying a full
//! inbox for at most [`REPLY_PATIENCE`] before it orders the session closed with 1013. A worker
//! may block (in the handler, in that retry) because nothing ever waits on a worker: no reactor
//! or role thread sends to it with a blocking call or waits for its answer. It must not touch
//! sockets or send into a role queue.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tungstenite::Utf8Bytes;

use crate::dispatch::{push_now, relay_to};
use crate::error::{Error, Result};
use crate::gateway::GatewayHandle;
use crate::handler::{Frame, Handler, Msg, Reply, Request, Session};
use crate::mailbox::{CloseOrder, Out, ReplyError, SessionHandle};
use crate::metrics::{inc, Metrics};
use crate::protocol::{self, codes, SendAck, SendMsg};
use crate::reactor::Shared;
use crate::throttle::log_throttled;

/// How long a worker retries a reply whose session's inbox is full before closing the session
/// with 1013: the reply is never dropped silently, and the worker is never stuck for long.
pub(crate) const REPLY_PATIENCE: Duration = Duration::from_secs(2);

/// Work for a worker. Requests, messages and frames are answered with exactly one
/// `Delivery::Reply` (possibly `Out::Nothing`), which is what lets a raw session read on.
pub(crate) enum Job {
    Request { session: Arc<SessionHandle>, req: Box<Request> },
    Message { session: Arc<SessionHandle>, req: Box<Request>, msg: Box<Msg> },
    Frame { session: Arc<SessionHandle>, frame: Frame },
    Connect(Arc<SessionHandle>),
    Disconnect(Arc<SessionHandle>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Job::Request { req, .. } => format!("request {}", req.req_identifier),
            Job::Message { .. } => "message".into(),
            Job::Frame { .. } => "frame".into(),
            Job::Connect(_) => "connect".into(),
            Job::Disconnect(_) => "disconnect".into(),
        };
        write!(f, "{what} of {:?}", self.session())
    }
}

impl Job {
    fn session(&self) -> &Arc<SessionHandle> {
        match self {
            Job::Request { session, .. } | Job::Message { session, .. } | Job::Frame { session, .. } => session,
            Job::Connect(s) | Job::Disconnect(s) => s,
        }
    }

    /// The errCode 503 answer for a request that found the queue full (None for raw frames
    /// and events, which have no envelope).
    pub(crate) fn busy_reply(&self) -> Option<String> {
        let req = match self {
            Job::Request { req, .. } | Job::Message { req, .. } => req,
            _ => return None,
        };
        Some(envelope(
            req,
            &Reply::error(codes::SERVER_BUSY, "server busy: the handler's queue is full, try again later"),
        ))
    }
}

fn envelope(req: &Request, reply: &Reply) -> String {
    protocol::envelope(req.req_identifier, &req.msg_incr, &req.operation_id, reply.code, &reply.msg, &reply.data)
}

/// A reactor's way into the pool: one sender per worker, and the handler (for its claims).
#[derive(Clone)]
pub(crate) struct Pool {
    queues: Vec<Sender<Job>>,
    pub(crate) handler: Arc<dyn Handler>,
    /// `Handler::raw`, read once at start.
    pub(crate) raw: bool,
}

impl Pool {
    /// Hands `job` to its session's worker (always the same one, so a session's jobs keep
    /// their order). A full (or gone) queue hands it back: the caller answers "busy".
    pub(crate) fn try_send(&self, job: Job) -> Result<(), Job> {
        self.queues[self.worker_of(&job)].try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// The worker that serves `job`'s session.
    pub(crate) fn worker_of(&self, job: &Job) -> usize {
        (job.session().conn % self.queues.len() as u64) as usize
    }

    /// Workers in the pool.
    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }
}

/// Creates the pool's queues; [`spawn`] starts the threads once the gateway exists.
pub(crate) fn queues(handler: Arc<dyn Handler>, workers: usize, capacity: usize) -> (Pool, Vec<Receiver<Job>>) {
    let (txs, rxs) = (0..workers).map(|_| crossbeam_channel::bounded(capacity)).unzip();
    let raw = handler.raw();
    (Pool { queues: txs, handler, raw }, rxs)
}

/// Starts worker `id` on `queue`. It ends when every sender is gone (the reactors exited),
/// after the jobs left in its queue, disconnect events included.
pub(crate) fn spawn(
    id: usize,
    queue: Receiver<Job>,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
    gateway: GatewayHandle,
    name: String,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // First, before any handler can run and call shutdown from here.
            gateway.note_own_thread();
            let mut worker = Worker { handler, shared, gateway, next_id: 0, id, targets: Vec::new() };
            for job in queue.iter() {
                worker.run(job);
            }
        })
        .map_err(Error::io("spawning a worker thread"))
}

struct Worker {
    handler: Arc<dyn Handler>,
    /// What the gateway's threads share.
    shared: Arc<Shared>,
    /// A handle that does not keep the gateway running, for the handler's `Session`s.
    gateway: GatewayHandle,
    id: usize,
    next_id: u64,
    targets: Vec<Arc<SessionHandle>>,
}

impl Worker {
    fn run(&mut self, job: Job) {
        let metrics = self.shared.metrics.clone();
        inc(&metrics.handler_calls);
        let handler = self.handler.clone();
        let session = Session { handle: job.session().clone(), gateway: self.gateway.clone() };
        let guarded = |what: &str, f: &mut dyn FnMut()| {
            if catch_unwind(AssertUnwindSafe(f)).is_err() {
                inc(&metrics.handler_panics);
                log_throttled!(log::Level::Error, "{session:?}: the handler panicked in {what}");
            }
        };
        let failed = || Reply::error(codes::SERVER_INTERNAL, "the handler failed");
        let out = match job {
            Job::Connect(_) => return guarded("on_connect", &mut || handler.on_connect(&session)),
            Job::Disconnect(_) => return guarded("on_disconnect", &mut || handler.on_disconnect(&session)),
            Job::Request { req, .. } => {
                let mut reply = None;
                guarded("on_request", &mut || reply = Some(handler.on_request(&session, &req)));
                self.answer(&session.handle, &req, reply.unwrap_or_else(failed))
            }
            Job::Message { req, msg, .. } => {
                let mut verdict = None;
                guarded("on_message", &mut || verdict = Some(handler.on_message(&session, &msg)));
                match verdict {
                    Some(Ok(())) => Out::Text(self.relay(&session.handle, &req, &msg, &metrics).into()),
                    Some(Err(refusal)) => self.answer(&session.handle, &req, refusal),
                    None => self.answer(&session.handle, &req, failed()),
                }
            }
            Job::Frame { frame, .. } => {
                let (mut answer, mut frame) = (None, Some(frame));
                guarded("on_frame", &mut || answer = frame.take().and_then(|f| handler.on_frame(&session, f)));
                let out = match answer {
                    Some(Frame::Text(t)) => Out::Text(Utf8Bytes::from(t)),
                    Some(Frame::Binary(b)) => Out::Binary(b.into()),
                    None => Out::Nothing,
                };
                if out.len() > self.shared.config.outbound_budget {
                    log_throttled!(
                        log::Level::Warn,
                        "{session:?}: the handler's answer is over outbound_budget; not sent"
                    );
                    inc(&metrics.replies_dropped);
                    Out::Nothing // the session reads on; the client gets no answer
                } else {
                    out
                }
            }
        };
        reply(&session.handle, out, &metrics);
    }

    /// The envelope for `reply`; one that could never fit the session's outbound budget is
    /// replaced by errCode 500 saying so, rather than closing the session as a slow consumer.
    fn answer(&self, session: &SessionHandle, req: &Request, reply: Reply) -> Out {
        let text = envelope(req, &reply);
        if text.len() <= self.shared.config.outbound_budget {
            return Out::Text(text.into());
        }
        log_throttled!(
            log::Level::Warn,
            "{session:?}: a handler reply of {} bytes is over outbound_budget",
            text.len()
        );
        let too_big = Reply::error(codes::SERVER_INTERNAL, "the handler's reply is larger than outbound_budget");
        Out::Text(envelope(req, &too_big).into())
    }

    /// The gateway's own 1003 relay, run here after `on_message` accepted the message.
    fn relay(&mut self, me: &Arc<SessionHandle>, req: &Request, msg: &Msg, metrics: &Metrics) -> String {
        let wire = SendMsg {
            recv_id: msg.recv_id.as_str().into(),
            client_msg_id: msg.client_msg_id.as_str().into(),
            content_type: msg.content_type,
            content: &msg.content,
        };
        self.next_id += 1;
        let server_msg_id = format!("{}-w{}-{}", self.shared.boot_id, self.id, self.next_id);
        let registry = &self.shared.registry;
        let ack: SendAck<'_> =
            relay_to(registry, me, &req.operation_id, &wire, &server_msg_id, &mut self.targets, |t, f| {
                push_now(metrics, t, f).is_ok()
            });
        inc(&metrics.messages_relayed);
        protocol::envelope(req.req_identifier, &req.msg_incr, &req.operation_id, codes::OK, "", ack)
    }
}

/// Sends a worker's answer to its session: at once if its inbox has room, else retried with
/// growing pauses for up to [`REPLY_PATIENCE`], then the session is closed with 1013 rather
/// than left with a silent gap. A closing session's reply is dropped and counted.
pub(crate) fn reply(session: &SessionHandle, mut out: Out, m: &Metrics) {
    let deadline = Instant::now() + REPLY_PATIENCE;
    let mut pause = Duration::from_micros(100);
    loop {
        match session.try_reply(out) {
            Ok(()) => return,
            Err(ReplyError::Not(why)) => {
                inc(&m.replies_dropped);
                log::debug!("{session:?}: reply not sent: {why}");
                return;
            }
            Err(ReplyError::Full(back)) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
                out = back;
            }
            Err(ReplyError::Full(_)) => {
                inc(&m.replies_overloaded);
                log_throttled!(log::Level::Warn, "{session:?}: its inbox stayed full for a reply; closing with 1013");
                session.order_close(CloseOrder::Overloaded);
                return;
            }
        }
    }
}
