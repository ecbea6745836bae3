//! Starting and stopping a gateway: threads, queues, and the handle that owns them.
//!
//! Owns construction (every queue created with its configured capacity, every thread named)
//! and teardown through ownership: shutdown sets one flag and wakes the acceptor and reactors;
//! reactors close their sessions and exit, dropping the last senders of the role queues, which
//! ends the role loops; `Drop` joins everything. No global state: gateways are independent.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::bounded;
use parking_lot::Mutex;
use tungstenite::protocol::WebSocketConfig;

use crate::acceptor::{self, Acceptor, Lane};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mailbox::Mailbox;
use crate::metrics::{inc, Metrics, Snapshot};
use crate::presence::Presence;
use crate::reactor::{Queues, Reactor, RoleSender, Shared, REACTOR_LABELS};
use crate::registry::{OnlineSession, Registry};
use crate::roles::{self, Role, RoleCtx, Waiters, ROLE_LABELS};
use crate::token::TokenKey;
use crate::watchdog::{Beacon, Health, Monitor, QueueDepth, Watchdog, Watched};

/// Starts gateways. See [`Gateway::start`].
#[derive(Debug)]
pub struct Gateway;

/// A running gateway. Cheap to clone; the gateway stops when [`GatewayHandle::shutdown`] is
/// called or the last clone is dropped, and either way every thread is joined.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor_waker: mio::Waker,
    mailboxes: Vec<Arc<Mailbox>>,
    /// The acceptor, then the reactors, joined in this order.
    threads: Mutex<Vec<(String, JoinHandle<()>)>>,
    /// The register and unregister roles, joined last.
    roles: Mutex<Vec<(String, JoinHandle<()>)>>,
    summary: Mutex<Option<ShutdownSummary>>,
    /// The register and unregister roles' beacons.
    role_beacons: [Arc<Beacon>; 2],
    /// What the watchdog watches, and its thread.
    watch: Mutex<Watch>,
}

/// The watchdog's parts. The monitor's probes of the role queues hold senders (a receiver
/// clone would hide a dead consumer from its producers), so both are dropped after the
/// reactors are joined and before the roles are: a role loop ends with its last sender.
#[derive(Default)]
struct Watch {
    monitor: Option<Arc<Monitor>>,
    dog: Option<Watchdog>,
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
    /// Validates `config`, binds its listen address and starts every thread.
    pub fn start(config: Config) -> Result<GatewayHandle> {
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
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        let presence = Arc::new(Presence::new(metrics.clone()));
        let write_threshold = (config.outbound_budget / 2).min(8192);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(write_threshold)
            .max_write_buffer_size(config.outbound_budget)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let boot_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let shared = Arc::new(Shared {
            key: TokenKey::new(config.secret_or_dev().as_bytes()),
            ws_config,
            registry: registry.clone(),
            presence: presence.clone(),
            metrics: metrics.clone(),
            shutdown: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            boot_id: format!("{boot_ms:x}"),
            config,
        });
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
                (poll, mailbox, Queues { handoff, inbox, register, unregister }, beacon)
            })
            .collect();
        drop((register_tx, unregister_tx)); // the reactors hold the only senders now

        let inner = Inner {
            shared: shared.clone(),
            local_addr,
            acceptor_waker,
            mailboxes,
            threads: Mutex::new(Vec::new()),
            roles: Mutex::new(Vec::new()),
            summary: Mutex::new(None),
            role_beacons: role_beacons.clone(),
            watch: Mutex::new(Watch {
                monitor: Some(Arc::new(Monitor::new(watched, shared.config.stall_after))),
                dog: None,
            }),
        };
        // From here on, an error drops `inner`, whose Drop stops and joins what was started.
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| -> Result<()> {
            let handle =
                std::thread::Builder::new().name(name.clone()).spawn(f).map_err(Error::io("spawning a thread"))?;
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
            inner.roles.lock().push((name, handle));
        }
        let monitor = inner.watch.lock().monitor.clone().expect("the monitor is set until shutdown");
        let stalls = shared.metrics.clone();
        let dog = Watchdog::spawn(monitor, name("watchdog"), move |report| {
            inc(&stalls.stalls);
            log::error!("{report}");
        })?;
        inner.watch.lock().dog = Some(dog);

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
        Ok(GatewayHandle { inner: Arc::new(inner) })
    }
}

impl GatewayHandle {
    /// The address the gateway listens on (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Counters and gauges right now.
    pub fn stats(&self) -> Snapshot {
        self.inner.shared.metrics.snapshot()
    }

    /// The sessions of `user` in the registry.
    pub fn online(&self, user: &str) -> Vec<OnlineSession> {
        self.inner.shared.registry.online(user)
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

    /// Each reactor's inbox: (frames and notices waiting, capacity).
    pub fn inbox_depths(&self) -> Vec<(usize, usize)> {
        self.inner.mailboxes.iter().map(|m| (m.inbox_len(), m.inbox_capacity())).collect()
    }

    /// Stops accepting, closes every session with 1001, waits up to `shutdown_timeout` for
    /// their close handshakes, and joins every thread. Idempotent: later calls return the
    /// first call's summary.
    pub fn shutdown(&self) -> ShutdownSummary {
        self.inner.shutdown()
    }
}

impl Inner {
    fn shutdown(&self) -> ShutdownSummary {
        let mut summary = self.summary.lock();
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
        // The reactors are gone. The watchdog goes next: its probes hold role-queue senders.
        let watch = std::mem::take(&mut *self.watch.lock());
        drop(watch);
        self.roles.lock().drain(..).for_each(join);
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

impl Drop for Inner {
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
