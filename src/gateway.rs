//! Starting and stopping a gateway: threads, queues, and the handle that owns them.
//!
//! Owns construction (every queue created with its configured capacity, every thread named)
//! and teardown through ownership: shutdown sets one flag and wakes the acceptor and reactors;
//! reactors close their sessions and exit, dropping the last senders of the role queues, which
//! ends the role loops; `Drop` joins everything. No global state: gateways are independent.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::bounded;
use parking_lot::Mutex;
use tungstenite::Utf8Bytes;

use crate::acceptor::{self, Acceptor, Lane};
use crate::config::Config;
use crate::dispatch::push_now;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::mailbox::{CloseOrder, ConnId, Mailbox, NotDelivered, Outgoing};
use crate::metrics::{inc, Metrics, Snapshot};
use crate::policy::Platform;
use crate::protocol;
use crate::reactor::{Queues, Reactor, RoleSender, Shared, REACTOR_LABELS};
use crate::registry::OnlineSession;
use crate::roles::{self, Role, RoleCtx, Waiters, ROLE_LABELS};
use crate::token::TokenKey;
use crate::watchdog::{Beacon, Health, Monitor, QueueDepth, Watchdog, Watched};
use crate::worker;

/// Starts gateways. See [`Gateway::start`].
#[derive(Debug)]
pub struct Gateway;

/// A running gateway. Cheap to clone, `Send + Sync`; the gateway stops when
/// [`GatewayHandle::shutdown`] is called or the last clone of the handle `Gateway::start`
/// returned is dropped, and either way every thread is joined (except the calling one, when
/// that is one of the gateway's own threads). The handles the gateway gives its own threads
/// and a handler ([`crate::Session::gateway`]) work the same but do not keep it running.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
    /// `None` for the gateway's own threads' handles: they never run the last-drop shutdown.
    _owner: Option<Arc<Owner>>,
}

/// Shuts the gateway down when the last owning handle is dropped, on that caller's thread.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor_waker: mio::Waker,
    mailboxes: Vec<Arc<Mailbox>>,
    /// The acceptor, then the reactors, joined in this order.
    threads: Mutex<Vec<(String, JoinHandle<()>)>>,
    /// The handler's workers, joined after the reactors (whose senders end their loops).
    workers: Mutex<Vec<(String, JoinHandle<()>)>>,
    /// Receiver clones of the workers' queues, for their depths (a receiver never keeps a
    /// worker's loop alive: that ends with the last sender).
    worker_queues: Vec<crossbeam_channel::Receiver<crate::worker::Job>>,
    /// The register and unregister roles, joined last.
    roles: Mutex<Vec<(String, JoinHandle<()>)>>,
    /// Every thread this gateway spawned, for [`Inner::is_own_thread`].
    own: Mutex<Vec<std::thread::ThreadId>>,
    summary: Mutex<Option<ShutdownSummary>>,
    /// The register and unregister roles' beacons.
    role_beacons: [Arc<Beacon>; 2],
    /// What the watchdog watches, and its thread.
    watch: Mutex<Watch>,
    /// The admin API's address, when it is on.
    admin_addr: Option<SocketAddr>,
    /// The admin thread, stopped last so that `/healthz` answers 503 during a shutdown.
    admin: Mutex<Option<crate::admin::Admin>>,
}

/// The watchdog's parts. The monitor's probes of the role queues hold senders (a receiver
/// clone would hide a dead consumer from its producers), so both are dropped after the
/// reactors are joined and before the roles are: a role loop ends with its last sender.
#[derive(Default)]
struct Watch {
    monitor: Option<Arc<Monitor>>,
    dog: Option<Watchdog>,
}

/// One user's sessions, as [`GatewayHandle::online`] reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserOnline {
    /// The user id asked about.
    pub user: String,
    /// Its sessions; empty when the user is offline.
    pub sessions: Vec<OnlineSession>,
}

/// What a push did for one user: per session, queued or not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The user pushed to.
    pub user: String,
    /// One entry per session the user had when the push was made.
    pub sessions: Vec<SessionPush>,
}

impl PushReport {
    /// Sessions that have the frame queued.
    pub fn delivered(&self) -> usize {
        self.sessions.iter().filter(|s| s.result.is_ok()).count()
    }
}

/// What a push did for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPush {
    /// The session's connection id.
    pub conn: ConnId,
    /// The session's platform id.
    pub platform: u8,
    /// Queued (it will be written in order with the session's other frames), or why not.
    pub result: Result<(), NotDelivered>,
}

/// What a shutdown did.
#[derive(Debug, Clone)]
pub struct ShutdownSummary {
    /// Sessions that were open when shutdown began.
    pub sessions_closed: i64,
    /// Time from the shutdown call to the last thread joined.
    pub elapsed: Duration,
    /// Counters at the end.
    pub stats: Snapshot,
}

impl fmt::Display for ShutdownSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "shut down in {:.2}s: closed {} sessions; lifetime: {} accepted, {} handshakes ok, {} refused, \
             {} messages relayed, {} kicks, {} slow consumers",
            self.elapsed.as_secs_f64(),
            self.sessions_closed,
            s.accepted,
            s.handshakes_ok,
            s.refused_max_connections
                + s.refused_handoff_full
                + s.handshakes_rejected_args
                + s.handshakes_rejected_token,
            s.messages_relayed,
            s.kicks,
            s.slow_consumer_closes,
        )
    }
}

impl Gateway {
    /// Validates `config`, binds its listen address and starts every thread. The gateway
    /// serves the protocol itself (1003 relay and the rest); see [`Gateway::start_with`].
    pub fn start(config: Config) -> Result<GatewayHandle> {
        Gateway::launch(config, None)
    }

    /// [`Gateway::start`], with `handler` serving the requests it claims (and connect and
    /// disconnect events) on a pool of `config.workers` threads. See [`Handler`].
    pub fn start_with(config: Config, handler: impl Handler) -> Result<GatewayHandle> {
        Gateway::launch(config, Some(Arc::new(handler)))
    }

    fn launch(config: Config, handler: Option<Arc<dyn Handler>>) -> Result<GatewayHandle> {
        config.validate()?;
        if config.secret.is_none() {
            log::warn!(
                "NO SECRET CONFIGURED: using the public development secret {:?}; anyone can mint tokens. \
                 Set --secret or MSGGATE_SECRET before exposing this gateway.",
                crate::config::DEV_SECRET
            );
        }
        let listener = acceptor::bind(config.listen).map_err(Error::io("binding the listen address"))?;
        let local_addr = listener.local_addr().map_err(Error::io("reading the listen address"))?;
        let admin = config.admin_listen.map(crate::admin::bind).transpose()?;
        let metrics = Arc::new(Metrics::default());
        let boot_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let key = TokenKey::new(config.secret_or_dev().as_bytes());
        let shared = Arc::new(Shared::new(config, key, format!("{boot_ms:x}"), &metrics));
        let (registry, presence) = (shared.registry.clone(), shared.presence.clone());
        let config = &shared.config;

        let acceptor_poll = mio::Poll::new().map_err(Error::io("creating the acceptor's poll"))?;
        let acceptor_waker = acceptor::waker(&acceptor_poll).map_err(Error::io("creating the acceptor's waker"))?;
        let (register_tx, register_rx) = bounded(config.register_queue);
        let (unregister_tx, unregister_rx) = bounded(config.unregister_queue);
        let role_beacons = [Arc::new(Beacon::new(ROLE_LABELS)), Arc::new(Beacon::new(ROLE_LABELS))];
        let port = local_addr.port();
        let name = |what: &str| format!("msggate-{port}-{what}");
        let mut watched = Vec::new();
        let acceptor_beacon = Arc::new(Beacon::new(acceptor::ACCEPTOR_LABELS));
        let m = metrics.clone();
        watched.push(
            Watched::new(name("acceptor"), acceptor_beacon.clone(), QueueDepth::default)
                .fallbacks(move || m.handoff_queue_full.load(Relaxed)),
        );
        for (beacon, queue, full, what) in [
            (&role_beacons[0], &register_tx, (|m| &m.register_queue_full) as fn(&Metrics) -> &AtomicU64, "register"),
            (&role_beacons[1], &unregister_tx, |m| &m.unregister_queue_full, "unregister"),
        ] {
            let (q, m) = (queue.clone(), metrics.clone());
            watched.push(
                Watched::new(name(what), beacon.clone(), move || depth(&q)).fallbacks(move || full(&m).load(Relaxed)),
            );
        }

        let (pool, worker_rxs) = match &handler {
            Some(h) => {
                let (pool, rxs) = worker::queues(h.clone(), config.workers, config.worker_queue);
                (Some(pool), rxs)
            }
            None => (None, Vec::new()),
        };
        let mut reactors = Vec::new();
        let mut mailboxes = Vec::new();
        let mut lanes = Vec::new();
        for id in 0..config.io_threads {
            let poll = mio::Poll::new().map_err(Error::io("creating a reactor's poll"))?;
            let waker = acceptor::waker(&poll).map_err(Error::io("creating a reactor's waker"))?;
            let (inbox_tx, inbox_rx) = bounded(config.inbox_queue);
            let (handoff_tx, handoff_rx) = bounded(config.handoff_queue);
            let mailbox = Arc::new(Mailbox::new(id, inbox_tx, waker, config.outbound_budget));
            let beacon = Arc::new(Beacon::new(REACTOR_LABELS));
            let (h, m) = (handoff_tx.clone(), mailbox.clone());
            let queue = move || {
                let handoff = depth(&h);
                QueueDepth { len: m.inbox_len() + handoff.len, capacity: m.inbox_capacity() + handoff.capacity }
            };
            let m = mailbox.clone();
            watched.push(
                Watched::new(name(&format!("reactor-{id}")), beacon.clone(), queue)
                    .fallbacks(move || m.inbox_full())
                    .turns_every(crate::reactor::tick(config)),
            );
            reactors.push((poll, mailbox.clone(), handoff_rx, inbox_rx, beacon));
            lanes.push(Lane { handoff: handoff_tx, mailbox: mailbox.clone() });
            mailboxes.push(mailbox);
        }
        let register_waiters = Arc::new(Waiters::new(mailboxes.clone()));
        let unregister_waiters = Arc::new(Waiters::new(mailboxes.clone()));
        let reactors: Vec<_> = reactors
            .into_iter()
            .map(|(poll, mailbox, handoff, inbox, beacon)| {
                let register = RoleSender {
                    tx: register_tx.clone(),
                    waiters: register_waiters.clone(),
                    full: |m| &m.register_queue_full,
                };
                let unregister = RoleSender {
                    tx: unregister_tx.clone(),
                    waiters: unregister_waiters.clone(),
                    full: |m| &m.unregister_queue_full,
                };
                (poll, mailbox, Queues { handoff, inbox, register, unregister, pool: pool.clone() }, beacon)
            })
            .collect();
        drop((register_tx, unregister_tx, pool)); // the reactors hold the only senders now

        let inner = Inner {
            shared: shared.clone(),
            local_addr,
            acceptor_waker,
            mailboxes,
            threads: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            worker_queues: worker_rxs.clone(),
            roles: Mutex::new(Vec::new()),
            own: Mutex::new(Vec::new()),
            summary: Mutex::new(None),
            role_beacons: role_beacons.clone(),
            watch: Mutex::new(Watch {
                monitor: Some(Arc::new(Monitor::new(watched, shared.config.stall_after))),
                dog: None,
            }),
            admin_addr: admin.as_ref().map(crate::admin::Bound::addr),
            admin: Mutex::new(None),
        };
        // From here on, an error drops `owner`, which stops and joins what was started.
        let inner = Arc::new(inner);
        let owner = Arc::new(Owner(inner.clone()));
        let internal = || GatewayHandle { inner: inner.clone(), _owner: None };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| -> Result<()> {
            let handle =
                std::thread::Builder::new().name(name.clone()).spawn(f).map_err(Error::io("spawning a thread"))?;
            inner.own.lock().push(handle.thread().id());
            inner.threads.lock().push((name, handle));
            Ok(())
        };
        let acceptor = Acceptor {
            poll: acceptor_poll,
            listener,
            lanes,
            shared: shared.clone(),
            pending: Default::default(),
            next: 0,
            beacon: acceptor_beacon,
        };
        spawn(name("acceptor"), Box::new(move || acceptor.run()))?;
        for (id, (poll, mailbox, queues, beacon)) in reactors.into_iter().enumerate() {
            let shared = shared.clone();
            // Built on its own thread: connections hold thread-local state and never move.
            let run = move || Reactor::new(poll, shared, mailbox, queues, beacon).run();
            spawn(name(&format!("reactor-{id}")), Box::new(run))?;
        }
        let role_ctx = Arc::new(RoleCtx {
            registry,
            presence,
            metrics,
            policy: config.multi_login_policy,
            register_delay: config.register_delay,
        });
        for (role, queue, waiters, beacon, suffix) in [
            (Role::Register, register_rx, register_waiters, &role_beacons[0], "register"),
            (Role::Unregister, unregister_rx, unregister_waiters, &role_beacons[1], "unregister"),
        ] {
            let name = name(suffix);
            let handle = roles::spawn(role, role_ctx.clone(), queue, waiters, beacon.clone(), name.clone())?;
            inner.own.lock().push(handle.thread().id());
            inner.roles.lock().push((name, handle));
        }
        // Workers last: until every reactor runs, an error here must not leave a worker waiting
        // for senders that the error path has yet to drop.
        if let Some(handler) = &handler {
            for (id, queue) in worker_rxs.into_iter().enumerate() {
                let name = name(&format!("worker-{id}"));
                let handle = worker::spawn(id, queue, handler.clone(), shared.clone(), internal(), name.clone())?;
                inner.workers.lock().push((name, handle));
            }
        }
        let monitor = inner.watch.lock().monitor.clone().expect("the monitor is set until shutdown");
        let stalls = shared.metrics.clone();
        let dog = Watchdog::spawn(monitor, name("watchdog"), move |report| {
            inc(&stalls.stalls);
            log::error!("{report}");
        })?;
        inner.watch.lock().dog = Some(dog);
        if let Some(bound) = admin {
            let running = bound.spawn(internal(), config.admin_token.clone(), name("admin"))?;
            *inner.admin.lock() = Some(running);
        }

        log::info!(
            "msggate listening on {local_addr}: {} reactors, register/unregister queues {}/{}, policy {}, \
             max message {} B, max connections {}",
            config.io_threads,
            config.register_queue,
            config.unregister_queue,
            config.multi_login_policy,
            config.max_message_size,
            config.max_connections
        );
        Ok(GatewayHandle { inner, _owner: Some(owner) })
    }
}

impl GatewayHandle {
    /// The address the gateway listens on (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The admin API's address (with the real port when 0 was configured), or `None` when
    /// `Config::admin_listen` is unset.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Counters and gauges right now, with the role and queue states (queue depths, stalled
    /// threads; [`GatewayHandle::health`] has every thread's row).
    pub fn stats(&self) -> Snapshot {
        let mut s = self.inner.shared.metrics.snapshot();
        let health = self.health();
        let queue_of =
            |suffix: &str| health.threads.iter().find(|t| t.name.ends_with(suffix)).map_or(0, |t| t.queue.len as i64);
        s.register_queue_depth = queue_of("-register");
        s.unregister_queue_depth = queue_of("-unregister");
        s.stalled_threads = health.stalled().count() as i64;
        s.inbox_depth = self.inner.mailboxes.iter().map(|m| m.inbox_len() as i64).sum();
        s.worker_queue_depth = self.inner.worker_queues.iter().map(|q| q.len() as i64).sum();
        s
    }

    /// The sessions of `user` in the registry: platform, connection id, background flag.
    pub fn sessions(&self, user: &str) -> Vec<OnlineSession> {
        self.inner.shared.registry.online(user)
    }

    /// Who of `users` is online, and where (OpenIM's `GetUsersOnlineStatus`): one entry per
    /// user, in order, with no sessions for a user who is offline.
    ///
    /// ```
    /// # let config = msggate::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    /// let gateway = msggate::Gateway::start(config)?;
    /// let status = gateway.online(&["alice", "bob"]);
    /// assert!(status.iter().all(|u| u.sessions.is_empty()));
    /// # Ok::<(), msggate::Error>(())
    /// ```
    pub fn online<S: AsRef<str>>(&self, users: &[S]) -> Vec<UserOnline> {
        users.iter().map(|u| UserOnline { user: u.as_ref().to_owned(), sessions: self.sessions(u.as_ref()) }).collect()
    }

    /// Pushes `msg` (a JSON object: the message, as OpenIM's `MsgData`) to every session of
    /// `user` as a 2001 frame with `data.msgs[0]` = `msg`, untouched. Never blocks: each session
    /// either has it queued or is reported not delivered, and why.
    ///
    /// ```
    /// # let config = msggate::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    /// let gateway = msggate::Gateway::start(config)?;
    /// let msg = serde_json::json!({"sendID": "system", "recvID": "bob", "contentType": 101, "content": "hi"});
    /// let report = gateway.push("bob", &msg)?;
    /// assert_eq!(report.delivered(), 0); // bob is not online
    /// # Ok::<(), msggate::Error>(())
    /// ```
    pub fn push(&self, user: &str, msg: &serde_json::Value) -> Result<PushReport> {
        Ok(self.push_many(&[user], msg)?.pop().expect("one report per user"))
    }

    /// [`GatewayHandle::push`] to several users, the frame built once (OpenIM's
    /// `SuperGroupOnlineBatchPushOneMsg`). One report per user, in order.
    pub fn push_many<S: AsRef<str>>(&self, users: &[S], msg: &serde_json::Value) -> Result<Vec<PushReport>> {
        if !msg.is_object() {
            return Err(Error::BadRequest("a pushed message must be a JSON object".into()));
        }
        let raw = serde_json::value::to_raw_value(msg).map_err(|e| Error::BadRequest(e.to_string()))?;
        self.push_many_raw(users, &raw)
    }

    /// [`GatewayHandle::push_many`] of a message already encoded (a JSON object), sent byte for
    /// byte: the admin API's `/push` keeps the client's key order and number spelling.
    pub(crate) fn push_many_raw<S: AsRef<str>>(
        &self,
        users: &[S],
        raw: &serde_json::value::RawValue,
    ) -> Result<Vec<PushReport>> {
        if !raw.get().trim_start().starts_with('{') {
            return Err(Error::BadRequest("a pushed message must be a JSON object".into()));
        }
        if let Some(bad) = users.iter().find(|u| u.as_ref().is_empty()) {
            return Err(Error::BadRequest(format!("empty user id {:?}", bad.as_ref())));
        }
        let shared = &self.inner.shared;
        let max = shared.config.max_message_size;
        if raw.get().len() > max {
            // Larger than a client may send, and possibly than a session's whole budget: it
            // would close healthy recipients as slow consumers.
            let len = raw.get().len();
            return Err(Error::BadRequest(format!("the message is {len} bytes, over max_message_size ({max})")));
        }
        let frame = Outgoing::Frame(protocol::push_frame_raw(raw).into());
        let mut targets = Vec::new();
        Ok(users
            .iter()
            .map(|user| {
                targets.clear();
                shared.registry.sessions_of(user.as_ref(), &mut targets);
                let sessions = targets
                    .iter()
                    .map(|s| SessionPush {
                        conn: s.conn,
                        platform: s.platform.id(),
                        result: push_now(&shared.metrics, s, &frame),
                    })
                    .collect();
                PushReport { user: user.as_ref().to_owned(), sessions }
            })
            .collect())
    }

    /// Kicks `user` offline (OpenIM's `KickUserOffline`): every session, or only those on
    /// `platform`, gets a 2002 frame and is closed with 1008 "kicked". Returns the sessions
    /// told to close; one already closing is not counted. Never blocks: a session whose inbox
    /// is full is closed without its 2002.
    ///
    /// ```
    /// # let config = msggate::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    /// let gateway = msggate::Gateway::start(config)?;
    /// let kicked = gateway.kick("mallory", Some(msggate::Platform::Web));
    /// assert!(kicked.is_empty()); // mallory was not online
    /// # Ok::<(), msggate::Error>(())
    /// ```
    pub fn kick(&self, user: &str, platform: Option<Platform>) -> Vec<OnlineSession> {
        let shared = &self.inner.shared;
        let mut targets = Vec::new();
        shared.registry.sessions_of(user, &mut targets);
        let frame = Utf8Bytes::from(protocol::kick_frame("kicked offline by the server"));
        targets
            .iter()
            .filter(|s| platform.is_none_or(|p| s.platform == p))
            .filter(|s| match s.push_last(&frame, CloseOrder::KickedByAdmin) {
                Ok(()) => true,
                Err(NotDelivered::Busy) => {
                    inc(&shared.metrics.kick_frames_dropped);
                    true
                }
                Err(_) => false,
            })
            .map(|s| {
                inc(&shared.metrics.kicks_admin);
                OnlineSession { platform: s.platform.id(), conn: s.conn, background: s.background.load(Relaxed) }
            })
            .collect()
    }

    /// Each handler worker's queue: (jobs waiting, capacity). Empty without a handler.
    pub fn worker_depths(&self) -> Vec<(usize, usize)> {
        self.inner.worker_queues.iter().map(|q| (q.len(), q.capacity().unwrap_or(0))).collect()
    }

    /// Records the calling thread as one of this gateway's own (a worker does, before it runs
    /// any handler), so a shutdown it calls never waits on the shutdown that joins it.
    pub(crate) fn note_own_thread(&self) {
        self.inner.own.lock().push(std::thread::current().id());
    }

    /// Sessions in the registry, counted by walking it (the `registry_sessions` gauge, checked).
    pub fn registry_len(&self) -> usize {
        self.inner.shared.registry.len()
    }

    /// Events handled by the register and unregister roles so far.
    pub fn role_progress(&self) -> (u64, u64) {
        let [r, u] = &self.inner.role_beacons;
        (r.progress(), u.progress())
    }

    /// What the stall watchdog sees: every thread's progress, queue, backlog, fallbacks and
    /// activity. Empty once the gateway has shut down.
    pub fn health(&self) -> Health {
        self.inner.watch.lock().dog.as_ref().map(Watchdog::health).unwrap_or_default()
    }

    /// Whether a shutdown has begun (it may still be running).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shared.shutdown.load(Acquire)
    }

    /// Sockets each reactor owns now, handshakes in flight included, by reactor id.
    pub fn reactor_connections(&self) -> Vec<usize> {
        self.inner.mailboxes.iter().map(|m| m.owned_conns()).collect()
    }

    /// Each reactor's inbox: (frames and notices waiting, capacity).
    pub fn inbox_depths(&self) -> Vec<(usize, usize)> {
        self.inner.mailboxes.iter().map(|m| (m.inbox_len(), m.inbox_capacity())).collect()
    }

    /// Stops accepting, closes every session with 1001, waits up to `shutdown_timeout` for
    /// their close handshakes (and for handler calls in progress to return), and joins every
    /// thread. Idempotent: later calls return the first call's summary. Called from a handler
    /// while another thread's shutdown is under way, it returns at once with the counters so
    /// far (that other shutdown is waiting for the handler to return).
    pub fn shutdown(&self) -> ShutdownSummary {
        self.inner.shutdown()
    }
}

impl Inner {
    fn shutdown(&self) -> ShutdownSummary {
        let mut summary = match self.summary.try_lock() {
            Some(guard) => guard,
            // Another thread is shutting down and will join this one: waiting here for it
            // would be a wait cycle. Return at once; the flags are already set.
            None if self.is_own_thread() => {
                return ShutdownSummary {
                    sessions_closed: 0,
                    elapsed: Duration::ZERO,
                    stats: self.shared.metrics.snapshot(),
                }
            }
            None => self.summary.lock(),
        };
        if let Some(s) = &*summary {
            return s.clone();
        }
        let started = Instant::now();
        let sessions = self.shared.metrics.snapshot().sessions;
        self.shared.shutdown.store(true, Release);
        if let Err(e) = self.acceptor_waker.wake() {
            log::error!("cannot wake the acceptor: {e}");
        }
        let join = |(name, handle): (String, JoinHandle<()>)| {
            if handle.thread().id() == std::thread::current().id() {
                // Shutdown from a handler on one of our workers: it ends once it returns.
                return;
            }
            if handle.join().is_err() {
                log::error!("thread {name} panicked");
            }
        };
        let mut threads = self.threads.lock();
        let mut threads = threads.drain(..);
        // The acceptor first (it is spawned first): once it is gone no socket can reach a
        // reactor, so the reactors' last look at their hand-off queues finds everything.
        threads.next().into_iter().for_each(join);
        self.shared.draining.store(true, Release);
        for mailbox in &self.mailboxes {
            mailbox.wake();
        }
        threads.for_each(join);
        // The reactors are gone, and with them the workers' senders: workers finish their
        // queued jobs (a reply finds its session gone) and exit.
        self.workers.lock().drain(..).for_each(join);
        // The watchdog goes next: its probes hold role-queue senders.
        let watch = std::mem::take(&mut *self.watch.lock());
        drop(watch);
        self.roles.lock().drain(..).for_each(join);
        // Last, so that `/healthz` answered 503 "shutting down" all along. Its thread holds no
        // part of the gateway, and its reads give up within 50 ms of the stop flag.
        if let Some(mut admin) = self.admin.lock().take() {
            admin.stop();
        }
        let s = ShutdownSummary {
            sessions_closed: sessions,
            elapsed: started.elapsed(),
            stats: self.shared.metrics.snapshot(),
        };
        log::info!("{s}");
        *summary = Some(s.clone());
        s
    }
}

impl Inner {
    /// Whether the calling thread is one this gateway spawned (a handler's worker, say).
    fn is_own_thread(&self) -> bool {
        self.own.lock().contains(&std::thread::current().id())
    }
}

impl Drop for Inner {
    /// Only a safety net: an `Owner` shuts the gateway down first whenever one was created.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A channel's fill level, read through a sender: an extra sender never hides the consumer's
/// death from the producers (`try_send` still answers `Disconnected`), as a receiver would.
fn depth<T>(tx: &crossbeam_channel::Sender<T>) -> QueueDepth {
    QueueDepth { len: tx.len(), capacity: tx.capacity().unwrap_or(0) }
}

impl fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayHandle").field("local_addr", &self.inner.local_addr).finish_non_exhaustive()
    }
}
