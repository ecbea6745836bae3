//! A reactor thread: one mio `Poll`, its `Waker`, and the connections it owns.
//!
//! Owns the event loop and the reactor's side of every queue: it drains its hand-off queue
//! (new sockets) and its inbox (frames and notices from other threads), and it is the only
//! producer of register and unregister events, which it sends with `try_send` and keeps in its
//! own backlog when a role's queue is full. It blocks only in `poll`. Socket work is delegated
//! to [`conn::Conn`].

mod conn;
pub(crate) mod harness;
mod socket;

pub(crate) use conn::http_error;
pub(crate) use socket::{answer_and_close, Stream};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::mailbox::{ConnId, Delivery, Mailbox, SessionHandle};
use crate::metrics::{add, inc, Metrics};
use crate::presence::Presence;
use crate::registry::Registry;
use crate::roles::Waiters;
use crate::throttle::log_throttled;
use crate::token::TokenKey;
use crate::watchdog::Beacon;
use crate::worker::{Job, Pool};
use conn::{Conn, End, Next};

/// The `Waker`'s token in every reactor's `Poll`.
pub(crate) const WAKE: Token = Token(usize::MAX);
/// Frames read from one connection before the reactor moves on to others.
const READ_BATCH: usize = 64;
/// Inbox deliveries handled per turn before sockets get another look.
const INBOX_BATCH: usize = 8192;
/// Poll timeout while frames wait for room in another reactor's inbox.
const DEFERRED_RETRY: Duration = Duration::from_millis(1);
/// Connect and disconnect events a reactor keeps while the workers' queues are full.
const EVENT_BACKLOG: usize = 65536;
/// Poll timeout while a role backlog waits: only a safety net, since the role wakes the
/// reactor as soon as it frees a slot.
const BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// What a reactor tells the watchdog it is doing (indices into this; see [`doing`]).
pub(crate) const REACTOR_LABELS: &[&str] = &[
    "polling",
    "handling socket events",
    "taking handed-off sockets",
    "draining its inbox",
    "sweeping its sessions",
    "reading sessions left mid-batch",
    "retrying backlogs and deferred frames",
    "ticking timers",
    "flushing",
    "closing sessions for shutdown",
];

/// Indices into [`REACTOR_LABELS`].
mod doing {
    pub(super) const POLLING: usize = 0;
    pub(super) const IO: usize = 1;
    pub(super) const HANDOFFS: usize = 2;
    pub(super) const INBOX: usize = 3;
    pub(super) const SWEEP: usize = 4;
    pub(super) const READY: usize = 5;
    pub(super) const RETRY: usize = 6;
    pub(super) const TICK: usize = 7;
    pub(super) const FLUSH: usize = 8;
    pub(super) const SHUTDOWN: usize = 9;
}

/// State shared by every thread of one gateway.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) key: TokenKey,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set first: the acceptor stops.
    pub(crate) shutdown: AtomicBool,
    /// Set once the acceptor has been joined: reactors close their sessions and exit. No
    /// socket can be handed to a reactor after this, so none is left in a hand-off queue.
    pub(crate) draining: AtomicBool,
    pub(crate) next_conn: AtomicU64,
    /// Prefix of `serverMsgID`s: the gateway's start time, so ids stay unique across restarts.
    pub(crate) boot_id: String,
}

impl Shared {
    /// The state every thread of one gateway shares, fresh: empty registry and presence map,
    /// zeroed metrics (the same `Arc`s the caller hands to the roles), running.
    pub(crate) fn new(config: Config, key: TokenKey, boot_id: String, metrics: &Arc<Metrics>) -> Shared {
        Shared {
            key,
            ws_config: ws_config(&config),
            registry: Arc::new(Registry::new(metrics.clone())),
            presence: Arc::new(Presence::new(metrics.clone())),
            metrics: metrics.clone(),
            shutdown: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            boot_id,
            config,
        }
    }
}

/// The tungstenite configuration every session of a gateway with `config` runs with.
fn ws_config(config: &Config) -> WebSocketConfig {
    let write_threshold = (config.outbound_budget / 2).min(8192);
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(write_threshold)
        .max_write_buffer_size(config.outbound_budget)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}

/// A reactor's queues, as handed to its thread.
pub(crate) struct Queues {
    pub(crate) handoff: Receiver<TcpStream>,
    pub(crate) inbox: Receiver<Delivery>,
    pub(crate) register: RoleSender,
    pub(crate) unregister: RoleSender,
    /// The handler's worker pool, if the gateway has a handler.
    pub(crate) pool: Option<Pool>,
}

/// A reactor's end of a role queue: the sender, and the role's waiters to sign up with when
/// the queue is full.
pub(crate) struct RoleSender {
    pub(crate) tx: Sender<Arc<SessionHandle>>,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) full: fn(&Metrics) -> &AtomicU64,
}

/// Everything a connection may use while the reactor holds it mutably.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) dispatcher: Dispatcher,
    /// Milliseconds since the reactor started, updated once per turn.
    pub(crate) now: u64,
    epoch: Instant,
    register: RoleSender,
    unregister: RoleSender,
    register_backlog: VecDeque<Arc<SessionHandle>>,
    unregister_backlog: VecDeque<Arc<SessionHandle>>,
    /// Connect and disconnect events waiting for room in a worker's queue, in order, one
    /// backlog per worker (a slow worker holds up only its own sessions' events and requests).
    event_backlog: Vec<VecDeque<Job>>,
    /// Connections with output queued this turn.
    pub(crate) dirty: Vec<usize>,
    /// Connections that stopped reading at a batch limit with input left.
    pub(crate) ready: Vec<usize>,
    /// The handler's worker pool, if the gateway has a handler.
    pub(crate) pool: Option<Pool>,
}

impl Ctx {
    /// Sends a register event; a full queue keeps it (and every later one, in order) in the
    /// backlog, retried as soon as the role frees a slot. Never dropped, never blocking.
    pub(crate) fn register(&mut self, session: Arc<SessionHandle>) {
        let id = self.mailbox.id;
        self.register.send_or_keep(&mut self.register_backlog, session, id, &self.shared.metrics);
    }

    fn unregister(&mut self, session: Arc<SessionHandle>) {
        let id = self.mailbox.id;
        self.unregister.send_or_keep(&mut self.unregister_backlog, session, id, &self.shared.metrics);
    }

    fn retry_backlogs(&mut self) {
        let id = self.mailbox.id;
        self.register.retry(&mut self.register_backlog, id);
        self.unregister.retry(&mut self.unregister_backlog, id);
        self.retry_events();
    }

    /// Hands a connect or disconnect event to the pool. A full queue keeps it (and every later
    /// one for that worker, in order) in the reactor's backlog for that worker, retried every
    /// turn; past [`EVENT_BACKLOG`] events it is dropped, counted and logged. Returns whether
    /// it is queued or kept.
    pub(crate) fn event(&mut self, job: Job) -> bool {
        let Some(pool) = &self.pool else { return false };
        let w = pool.worker_of(&job);
        if self.event_backlog.len() < pool.len() {
            self.event_backlog.resize_with(pool.len(), VecDeque::new);
        }
        let job = if self.event_backlog[w].is_empty() {
            match pool.try_send(job) {
                Ok(()) => return true,
                Err(job) => job,
            }
        } else {
            job
        };
        if self.event_backlog[w].len() >= EVENT_BACKLOG {
            inc(&self.shared.metrics.handler_events_dropped);
            log_throttled!(log::Level::Warn, "{job:?} dropped: its worker is {EVENT_BACKLOG} events behind");
            return false;
        }
        self.event_backlog[w].push_back(job);
        true
    }

    /// Hands over as many kept events as the workers' queues take, each worker's in order.
    fn retry_events(&mut self) {
        let Some(pool) = &self.pool else { return };
        for lane in &mut self.event_backlog {
            while let Some(job) = lane.pop_front() {
                if let Err(job) = pool.try_send(job) {
                    lane.push_front(job);
                    break;
                }
            }
        }
    }

    /// Whether `job` must wait: events for its worker wait (they go first, so a session's
    /// connect event always precedes its requests).
    pub(crate) fn events_waiting(&self, job: &Job) -> bool {
        let Some(pool) = &self.pool else { return false };
        self.event_backlog.get(pool.worker_of(job)).is_some_and(|lane| !lane.is_empty())
    }

    fn events_kept(&self) -> usize {
        self.event_backlog.iter().map(VecDeque::len).sum()
    }

    fn backlog_len(&self) -> usize {
        self.register_backlog.len() + self.unregister_backlog.len() + self.events_kept()
    }
}

impl RoleSender {
    fn send_or_keep(
        &self,
        backlog: &mut VecDeque<Arc<SessionHandle>>,
        session: Arc<SessionHandle>,
        id: usize,
        m: &Metrics,
    ) {
        if !backlog.is_empty() {
            backlog.push_back(session); // keep events in order behind the ones already waiting
            return;
        }
        match self.tx.try_send(session) {
            Ok(()) => {}
            Err(TrySendError::Full(session)) => {
                inc((self.full)(m));
                backlog.push_back(session);
                self.retry(backlog, id);
            }
            Err(TrySendError::Disconnected(session)) => {
                log::error!("{session:?}: role queue disconnected while the reactor runs (bug)");
            }
        }
    }

    /// Hands over as much of `backlog` as the queue takes. When it is full, signs up to be
    /// woken when the role frees a slot, then tries once more: a slot freed between the two is
    /// not missed.
    fn retry(&self, backlog: &mut VecDeque<Arc<SessionHandle>>, id: usize) {
        let mut signed_up = false;
        while let Some(session) = backlog.pop_front() {
            match self.tx.try_send(session) {
                Ok(()) => {}
                Err(TrySendError::Full(session)) => {
                    backlog.push_front(session);
                    if signed_up {
                        return;
                    }
                    self.waiters.wait(id);
                    signed_up = true;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Names a connection in log lines, formatted only if a line is actually written.
struct LazyWho<'a>(Option<&'a SessionHandle>);

impl std::fmt::Display for LazyWho<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "{s:?}"),
            None => f.write_str("handshake"),
        }
    }
}

/// How often an idle reactor wakes to check its timers: an eighth of the shortest deadline,
/// between 5 and 500 ms. The watchdog relies on it: a reactor turns at least this often.
pub(crate) fn tick(c: &Config) -> Duration {
    let shortest = [c.handshake_timeout, c.ping_interval, c.idle_timeout, c.close_timeout].into_iter().min();
    Duration::from_millis((shortest.unwrap_or_default().as_millis() as u64 / 8).clamp(5, 500))
}

/// One reactor thread's state.
pub(crate) struct Reactor {
    poll: Poll,
    conns: Slab<Conn>,
    ctx: Ctx,
    handoff: Receiver<TcpStream>,
    inbox: Receiver<Delivery>,
    tick: u64,
    /// Reused list of connection keys for passes over every connection.
    keys: Vec<usize>,
    beacon: Arc<Beacon>,
}

impl Reactor {
    pub(crate) fn new(
        poll: Poll,
        shared: Arc<Shared>,
        mailbox: Arc<Mailbox>,
        queues: Queues,
        beacon: Arc<Beacon>,
    ) -> Reactor {
        let tick = tick(&shared.config).as_millis() as u64;
        let dispatcher = Dispatcher::new(
            shared.registry.clone(),
            shared.metrics.clone(),
            format!("{}-{}", shared.boot_id, mailbox.id),
            shared.presence.clone(),
            shared.config.max_subscriptions,
            queues.pool.as_ref().map(|p| p.handler.clone()),
        );
        Reactor {
            poll,
            conns: Slab::new(),
            ctx: Ctx {
                shared,
                mailbox,
                dispatcher,
                now: 0,
                epoch: Instant::now(),
                register: queues.register,
                unregister: queues.unregister,
                register_backlog: VecDeque::new(),
                unregister_backlog: VecDeque::new(),
                event_backlog: Vec::new(),
                dirty: Vec::new(),
                ready: Vec::new(),
                pool: queues.pool,
            },
            handoff: queues.handoff,
            inbox: queues.inbox,
            tick,
            keys: Vec::new(),
            beacon,
        }
    }

    /// Runs the event loop until shutdown, then leaves nothing behind: every connection is
    /// dropped and unregistered, and the unregister backlog is handed to the role before the
    /// thread ends. A panic (a bug) is contained here and cleaned up the same way, so the
    /// registry and gauges stay true even then.
    pub(crate) fn run(mut self) {
        let id = self.ctx.mailbox.id;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.event_loop())).is_err() {
            log::error!("reactor {id} panicked (a bug); dropping its connections and stopping it");
            inc(&self.ctx.shared.metrics.reactor_panics);
        }
        self.ctx.dirty.clear();
        self.ctx.ready.clear();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.finish(key, End::Shutdown);
        }
        while self.handoff.try_recv().is_ok() {
            add(&self.ctx.shared.metrics.connections, -1);
        }
        // Frames this reactor deferred for other reactors' sessions: release their budget.
        self.ctx.dispatcher.abandon_deferred();
        // The unregister role is alive (this reactor still holds a sender) and waits on no
        // reactor, so this drains; the deadline only guards against a bug.
        let deadline = Instant::now() + Duration::from_secs(2);
        self.ctx.register_backlog.clear();
        self.beacon.doing(doing::SHUTDOWN);
        // The same for the handler's disconnect events: workers wait on no reactor, though one
        // may be busy in a slow handler, which the deadline bounds.
        let waiting = |ctx: &Ctx| ctx.unregister_backlog.len() + ctx.events_kept();
        while waiting(&self.ctx) > 0 && Instant::now() < deadline {
            self.ctx.retry_backlogs();
            self.beacon.backlog(waiting(&self.ctx));
            self.beacon.turn();
            std::thread::sleep(Duration::from_micros(100));
        }
        if !self.ctx.unregister_backlog.is_empty() {
            log::error!(
                "reactor {id}: {} unregister events could not be handed over",
                self.ctx.unregister_backlog.len()
            );
        }
        if self.ctx.events_kept() > 0 {
            let dropped = self.ctx.events_kept();
            log::warn!(
                "reactor {id}: {dropped} handler events dropped at shutdown: the workers did not take them in time"
            );
            crate::metrics::inc_by(&self.ctx.shared.metrics.handler_events_dropped, dropped);
            self.ctx.event_backlog.clear();
        }
        self.beacon.exit();
    }

    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.tick;
        let mut drain_deadline = None;
        loop {
            // A non-empty inbox (more than a batch, or pushes from this reactor to its own
            // sessions, which are queued without a wake-up) means a zero timeout.
            let timeout = if !self.ctx.ready.is_empty() || !self.inbox.is_empty() {
                Duration::ZERO
            } else if self.ctx.dispatcher.deferred_len() > 0 {
                DEFERRED_RETRY
            } else if self.ctx.backlog_len() > 0 {
                BACKLOG_RETRY
            } else {
                Duration::from_millis(next_tick.saturating_sub(self.ctx.now))
            };
            let beacon = &*self.beacon;
            beacon.backlog(self.ctx.backlog_len() + self.ctx.dispatcher.deferred_len());
            beacon.turn();
            beacon.doing(doing::POLLING);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("reactor {}: poll failed: {e}; closing its connections", self.ctx.mailbox.id);
                    break;
                }
            }
            self.ctx.mailbox.rearm();
            self.ctx.now = self.ctx.epoch.elapsed().as_millis() as u64;

            self.beacon.doing(doing::IO);
            for event in events.iter() {
                if event.token() == WAKE {
                    continue;
                }
                let peer_closed = event.is_read_closed() || event.is_error();
                self.io(event.token().0, event.is_readable() || peer_closed, event.is_writable(), peer_closed);
            }
            self.beacon.doing(doing::HANDOFFS);
            self.accept_handoffs();
            self.beacon.doing(doing::INBOX);
            self.drain_inbox();
            if self.ctx.mailbox.take_sweep() {
                self.beacon.doing(doing::SWEEP);
                inc(&self.ctx.shared.metrics.sweeps);
                self.sweep();
            }
            self.beacon.doing(doing::READY);
            for key in std::mem::take(&mut self.ctx.ready) {
                self.with(key, |conn, ctx| conn.read(ctx));
            }
            self.beacon.doing(doing::RETRY);
            self.ctx.retry_backlogs();
            self.ctx.dispatcher.retry_deferred();
            if self.ctx.now >= next_tick {
                self.beacon.doing(doing::TICK);
                next_tick = self.ctx.now + self.tick;
                self.for_each(|conn, ctx| conn.tick(ctx));
            }
            if self.ctx.shared.draining.load(Acquire) {
                self.beacon.doing(doing::SHUTDOWN);
                let deadline = *drain_deadline.get_or_insert_with(|| self.begin_shutdown());
                if self.conns.is_empty() || self.ctx.now >= deadline {
                    self.flush_dirty();
                    break;
                }
            }
            self.beacon.doing(doing::FLUSH);
            self.flush_dirty();
        }
    }

    /// Runs `op` on connection `key` (if it still exists) and ends it if asked to.
    fn with(&mut self, key: usize, op: impl FnOnce(&mut Conn, &mut Ctx) -> Next) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Next::End(why) = op(conn, &mut self.ctx) {
            self.finish(key, why);
        }
    }

    fn io(&mut self, key: usize, readable: bool, writable: bool, peer_closed: bool) {
        self.with(key, |conn, ctx| conn.on_ready(ctx, readable, writable, peer_closed));
    }

    fn accept_handoffs(&mut self) {
        while let Ok(mut stream) = self.handoff.try_recv() {
            let metrics = &self.ctx.shared.metrics;
            if self.ctx.shared.draining.load(Acquire) {
                add(&metrics.connections, -1);
                continue;
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
            {
                log::error!("reactor {}: cannot register a socket: {e}", self.ctx.mailbox.id);
                add(&metrics.connections, -1);
                continue;
            }
            entry.insert(Conn::start(stream, key, &self.ctx));
            self.ctx.mailbox.owned(1);
            self.io(key, true, true, false); // the request may already be waiting
        }
    }

    /// Handles up to a batch of inbox deliveries.
    fn drain_inbox(&mut self) {
        for _ in 0..INBOX_BATCH {
            let Ok(delivery) = self.inbox.try_recv() else { return };
            // Each item is for session `conn` in slot `token`; a slot since reused is skipped.
            match delivery {
                Delivery::Frame { token, conn, frame } => {
                    let Some(s) = self.current(token, conn) else { continue };
                    s.dequeued(frame.len());
                    self.with(token, |c, ctx| c.deliver(ctx, frame));
                }
                Delivery::Notice { token, conn } => {
                    if self.current(token, conn).is_some() {
                        self.with(token, |c, ctx| c.on_notice(ctx));
                    }
                }
                Delivery::Last { token, conn, frame } => {
                    let Some(s) = self.current(token, conn) else { continue };
                    s.last_delivered(frame.len());
                    self.with(token, |c, ctx| c.deliver_last(ctx, frame));
                }
                Delivery::Presence { token, conn, item } => {
                    let Some(s) = self.current(token, conn) else { continue };
                    s.dequeued(item.frame.len());
                    if self.ctx.dispatcher.presence_is_news(conn, &item) {
                        let frame = item.frame.clone();
                        self.with(token, |c, ctx| c.deliver(ctx, frame));
                    }
                }
                Delivery::Reply { token, conn, out } => {
                    let Some(s) = self.current(token, conn) else { continue };
                    s.dequeued(out.len());
                    self.with(token, |c, ctx| c.deliver_reply(ctx, out));
                }
            }
        }
    }

    /// The session in slot `token`, if it is still session `conn`.
    fn current(&self, token: usize, conn: ConnId) -> Option<&SessionHandle> {
        self.conns.get(token)?.session.as_deref().filter(|s| s.conn == conn)
    }

    /// Runs `op` on every connection (keys snapshotted first: `op` may end connections).
    fn for_each(&mut self, mut op: impl FnMut(&mut Conn, &mut Ctx) -> Next) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(self.conns.iter().map(|(k, _)| k));
        for &key in &keys {
            self.with(key, &mut op);
        }
        self.keys = keys;
    }

    /// Checks every session's flags: the fallback for notices that found the inbox full.
    fn sweep(&mut self) {
        self.for_each(|c, ctx| c.on_notice(ctx));
    }

    fn flush_dirty(&mut self) {
        for key in std::mem::take(&mut self.ctx.dirty) {
            self.with(key, |c, ctx| c.flush(ctx));
        }
    }

    /// Starts closing every session with 1001; returns the drain deadline.
    fn begin_shutdown(&mut self) -> u64 {
        self.for_each(|c, ctx| {
            if c.is_handshaking() {
                return Next::End(End::Shutdown);
            }
            c.begin_close(ctx, CloseCode::Away, "server shutting down")
        });
        self.ctx.now + self.ctx.shared.config.shutdown_timeout.as_millis() as u64
    }

    /// Drops connection `key`: its socket closes, and a session is marked ended and unregistered.
    fn finish(&mut self, key: usize, why: End) {
        let conn = self.conns.remove(key);
        retire(&mut self.ctx, conn, &why);
    }
}

/// The bookkeeping of a connection taken out of its reactor (the fuzzing harness's too): the
/// gauges, the log line, and for a session its end, the handler's disconnect event and the
/// unregistration. The socket closes when `conn` drops, at the end.
pub(crate) fn retire<S: Stream>(ctx: &mut Ctx, conn: Conn<S>, why: &End) {
    ctx.mailbox.owned(-1);
    let metrics = &ctx.shared.metrics;
    add(&metrics.connections, -1);
    let who = LazyWho(conn.session.as_deref());
    match why {
        End::Bug(what) => log_throttled!(log::Level::Error, "{who}: ended by a bug: {what}"),
        End::Io(e) => log::debug!("{who}: socket error: {e}"),
        End::BadHandshake(e) => log::debug!("{who}: not a WebSocket upgrade: {e}"),
        End::ErrorWhileClosing(e) => log::debug!("{who}: error while closing: {e}"),
        other => log::debug!("{who}: ended ({other:?})"),
    }
    if let Some(session) = conn.session {
        session.mark_ended();
        add(&metrics.sessions, -1);
        if conn.announced {
            ctx.event(Job::Disconnect(session.clone()));
        }
        ctx.dispatcher.session_ended(&session);
        ctx.unregister(session);
    }
}
