//! The register and unregister role threads: each owns one bounded queue and drains it.
//!
//! A role thread blocks only in `recv` on its own queue (with a 1 ms timeout while it holds
//! deferred presence frames). Whatever it does per event is non-blocking: registry edits under a
//! lock, then `try_send`-based kicks, notices and presence pushes (2005) after the lock is
//! released; a presence frame that finds a reactor's inbox full waits in the role's own
//! [`Outbox`], never in a blocking send. It must not send into any queue with a blocking call, and
//! in particular never into the other role's queue: kicking needs no round trip through the
//! unregister queue, because the registry edit that removes the kicked session happens right here.

use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tungstenite::Utf8Bytes;

use crate::error::{Error, Result};
use crate::mailbox::{CloseOrder, Mailbox, NotDelivered, Outgoing, PresenceFrame, SessionHandle};
use crate::metrics::{inc, inc_by, Metrics};
use crate::outbox::Outbox;
use crate::policy::{MultiLoginPolicy, PlatformSet};
use crate::presence::Presence;
use crate::protocol;
use crate::registry::Registry;
use crate::watchdog::Beacon;

/// What a role thread tells the watchdog it is doing (indices into this).
pub(crate) const ROLE_LABELS: &[&str] =
    &["waiting for an event", "registering", "unregistering", "retrying deferred presence frames"];

/// How long a role waits for its next event while it holds deferred presence frames: it retries
/// them this often (as a reactor does its deferred frames).
const DEFERRED_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Reactors waiting for room in one role's queue, and the way to wake them.
///
/// A reactor that finds the queue full flags itself here (and then tries once more, so a slot
/// freed in between is not missed); the role thread wakes every flagged reactor after each
/// event it takes. A wake is an atomic swap and at most one eventfd write: it never blocks, so
/// this adds no edge to the waits-for graph. It only turns "retry on the next 1 ms poll
/// timeout" into "retry as soon as there is room", which matters at capacity 1.
pub(crate) struct Waiters {
    waiting: Box<[AtomicBool]>,
    any: AtomicBool,
    mailboxes: Vec<Arc<Mailbox>>,
}

impl Waiters {
    pub(crate) fn new(mailboxes: Vec<Arc<Mailbox>>) -> Waiters {
        Waiters {
            waiting: mailboxes.iter().map(|_| AtomicBool::new(false)).collect(),
            any: AtomicBool::new(false),
            mailboxes,
        }
    }

    /// Reactor `id` found the queue full.
    pub(crate) fn wait(&self, id: usize) {
        self.waiting[id].store(true, Release);
        self.any.store(true, Release);
    }

    /// Role: a slot was freed; wake whoever waits for one.
    pub(crate) fn wake_waiting(&self) {
        if self.any.swap(false, AcqRel) {
            for (flag, mailbox) in self.waiting.iter().zip(&self.mailboxes) {
                if flag.swap(false, AcqRel) {
                    mailbox.wake();
                }
            }
        }
    }
}

/// What both roles need.
pub(crate) struct RoleCtx {
    pub(crate) registry: Arc<Registry>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) policy: MultiLoginPolicy,
    /// `Config::register_delay` (testing only).
    pub(crate) register_delay: std::time::Duration,
}

/// Which role a thread plays.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Register,
    Unregister,
}

/// Starts a role thread draining `queue`. It ends when every sender of `queue` is dropped.
pub(crate) fn spawn(
    role: Role,
    ctx: Arc<RoleCtx>,
    queue: Receiver<Arc<SessionHandle>>,
    waiters: Arc<Waiters>,
    beacon: Arc<Beacon>,
    name: String,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            /// Marks the beacon exited however the loop ends, a panic included.
            struct Exit(Arc<Beacon>);
            impl Drop for Exit {
                fn drop(&mut self) {
                    self.0.exit();
                }
            }
            let _exit = Exit(beacon.clone());
            let mut state = RoleState::default();
            loop {
                // Blocking only while nothing is deferred; otherwise wake up to retry. Either way
                // the loop ends when every sender is gone (shutdown).
                let next = if state.outbox.len() == 0 {
                    queue.recv().ok()
                } else {
                    match queue.recv_timeout(DEFERRED_RETRY) {
                        Ok(session) => Some(session),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                };
                if let Some(session) = next {
                    waiters.wake_waiting();
                    match role {
                        Role::Register => {
                            beacon.doing(1);
                            if !ctx.register_delay.is_zero() {
                                std::thread::sleep(ctx.register_delay); // a stand-in for a slow role
                            }
                            register(&ctx, &mut state, &session)
                        }
                        Role::Unregister => {
                            beacon.doing(2);
                            unregister(&ctx, &mut state, &session)
                        }
                    }
                } else if state.outbox.len() == 0 {
                    break; // `recv` failed: every sender is gone
                }
                if state.outbox.len() > 0 {
                    beacon.doing(3);
                    state.retry(&ctx.metrics);
                }
                beacon.backlog(state.outbox.len());
                beacon.turn();
                beacon.doing(0);
            }
            // Frames still deferred go to sessions of reactors that have exited: release them.
            state.outbox.abandon();
            log::debug!("{role:?} role: every reactor is gone, exiting");
        })
        .map_err(Error::io("spawning a role thread"))
}

/// A role thread's own state: presence frames waiting for room in a reactor's inbox, and a
/// reused list of subscribers.
#[derive(Default)]
pub(crate) struct RoleState {
    outbox: Outbox,
    subscribers: Vec<Arc<SessionHandle>>,
}

impl RoleState {
    pub(crate) fn retry(&mut self, m: &Metrics) {
        let done = self.outbox.retry();
        inc_by(&m.presence_dropped, done.dropped);
    }
}

/// Removes one ended session; a session already gone (kicked, never inserted) is counted stale.
pub(crate) fn unregister(ctx: &RoleCtx, state: &mut RoleState, session: &SessionHandle) {
    match ctx.registry.unregister(session) {
        Some((platforms, version)) => {
            inc(&ctx.metrics.unregistered);
            fan_out(ctx, state, &session.user, platforms, version);
        }
        None => inc(&ctx.metrics.unregister_stale),
    }
}

/// Registers one session: insert under the policy, kick the losers, tell the session.
pub(crate) fn register(ctx: &RoleCtx, state: &mut RoleState, session: &Arc<SessionHandle>) {
    let outcome = ctx.registry.register(session, ctx.policy);
    if !outcome.inserted {
        log::debug!("{session:?} ended before it could be registered");
        return;
    }
    inc(&ctx.metrics.registered);
    if !outcome.kicked.is_empty() {
        let reason = format!(
            "kicked: new login of {} on {} ({} policy)",
            session.user,
            session.platform.name(),
            ctx.policy.name()
        );
        let frame = Utf8Bytes::from(protocol::kick_frame(&reason));
        for old in &outcome.kicked {
            kick(ctx, old, &frame);
        }
    }
    session.notify(); // its reactor lets the held 101 out
                      // One event for the whole edit: the kicks and the insert are one state change.
    fan_out(ctx, state, &session.user, outcome.platforms, outcome.version);
}

/// Tells every session watching `user` its online platforms after a registry edit: one frame,
/// offered to each subscriber without blocking; a full inbox defers it in the role's outbox.
fn fan_out(ctx: &RoleCtx, state: &mut RoleState, user: &Arc<str>, platforms: PlatformSet, version: u64) {
    state.subscribers.clear();
    ctx.presence.subscribers_of(user, &mut state.subscribers);
    if state.subscribers.is_empty() {
        return;
    }
    inc(&ctx.metrics.presence_events);
    let frame = Utf8Bytes::from(protocol::presence_frame(user, platforms.ids()));
    let frame = Outgoing::Presence(Arc::new(PresenceFrame { user: user.clone(), version, frame }));
    for subscriber in state.subscribers.drain(..) {
        match state.outbox.push(&subscriber, &frame, None) {
            Ok(_) => inc(&ctx.metrics.presence_pushes),
            Err(why) => {
                inc(&ctx.metrics.presence_dropped);
                log::debug!("{subscriber:?}: presence frame for {user} not queued ({why:?})");
            }
        }
    }
}

/// Hands `old` its 2002 frame and a close order. Never lost: if the frame cannot be queued the
/// close order alone still closes it (with reason "kicked").
fn kick(ctx: &RoleCtx, old: &SessionHandle, frame: &Utf8Bytes) {
    inc(&ctx.metrics.kicks);
    if let Err(why) = old.push_last(frame, CloseOrder::Kicked) {
        if why == NotDelivered::Busy {
            inc(&ctx.metrics.kick_frames_dropped);
        }
        log::debug!("{old:?}: kick frame not queued ({why:?}); closing it without one");
    }
    log::debug!("{old:?} kicked");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::mailbox::Delivery;
    use crate::policy::Platform;

    fn ctx() -> RoleCtx {
        let metrics = Arc::new(Metrics::default());
        RoleCtx {
            registry: Arc::new(Registry::new(metrics.clone())),
            presence: Arc::new(Presence::new(metrics.clone())),
            metrics,
            policy: MultiLoginPolicy::SameTerminalKick,
            register_delay: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn kick_queues_the_2002_then_the_close_notice() {
        let (mb, rx, _poll) = mailbox(16, 1 << 20);
        let ctx = ctx();
        let old = handle("u", Platform::Ios, 1, &mb);
        let new = handle("u", Platform::Ios, 2, &mb);
        let mut state = RoleState::default();
        register(&ctx, &mut state, &old);
        register(&ctx, &mut state, &new);
        assert!(new.is_registered());
        assert_eq!(old.close_order(), Some(CloseOrder::Kicked));
        let deliveries: Vec<_> = rx.try_iter().collect();
        let kinds: Vec<String> = deliveries
            .iter()
            .map(|d| match d {
                Delivery::Frame { conn, frame, .. } => format!("frame {conn} {}", &frame[..21]),
                Delivery::Notice { conn, .. } => format!("notice {conn}"),
                Delivery::Last { conn, frame, .. } => format!("last {conn} {}", &frame[..21]),
                Delivery::Reply { conn, .. } => format!("reply {conn}"),
                Delivery::Presence { conn, .. } => format!("presence {conn}"),
            })
            .collect();
        assert_eq!(kinds, ["notice 1", "last 1 {\"reqIdentifier\":2002", "notice 2"]);
        assert_eq!(ctx.metrics.snapshot().kicks, 1);
    }

    #[test]
    fn waiters_wake_each_flagged_reactor_once() {
        let (a, _ra, _pa) = mailbox(4, 1000);
        let (b, _rb, _pb) = mailbox(4, 1000);
        let w = Waiters::new(vec![a.clone(), b.clone()]);
        w.wake_waiting(); // nobody waits: nothing happens
        assert!(!a.is_woken() && !b.is_woken());
        w.wait(1);
        w.wake_waiting();
        assert!(!a.is_woken() && b.is_woken());
        b.rearm();
        w.wake_waiting(); // the flag was consumed
        assert!(!b.is_woken());
    }

    #[test]
    fn kick_is_not_lost_when_the_inbox_is_full() {
        let (mb, rx, _poll) = mailbox(1, 1 << 20);
        let ctx = ctx();
        let old = handle("u", Platform::Ios, 1, &mb);
        let mut state = RoleState::default();
        register(&ctx, &mut state, &old); // its notice fills the inbox
        let new = handle("u", Platform::Ios, 2, &mb);
        register(&ctx, &mut state, &new);
        assert_eq!(rx.len(), 1);
        assert_eq!(old.close_order(), Some(CloseOrder::Kicked), "the close says why, even without the frame");
        assert!(mb.take_sweep(), "the reactor is told to sweep instead");
        assert_eq!(ctx.metrics.snapshot().kick_frames_dropped, 1);
    }

    fn presence_frames(rx: &Receiver<Delivery>) -> Vec<serde_json::Value> {
        rx.try_iter()
            .filter_map(|d| match d {
                Delivery::Presence { item, .. } => serde_json::from_str(&item.frame).ok(),
                _ => None,
            })
            .collect()
    }

    fn platforms(frame: &serde_json::Value) -> (String, Vec<u64>) {
        let elem = &frame["data"]["subscribers"][0];
        let ids = elem["onlinePlatformIDs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        (elem["userID"].as_str().unwrap().to_owned(), ids)
    }

    #[test]
    fn every_edit_of_a_watched_user_is_pushed_as_its_state_and_stale_removals_are_not() {
        let (watched_mb, _watched_rx, _p1) = mailbox(64, 1 << 20);
        let (sub_mb, sub_rx, _p2) = mailbox(64, 1 << 20);
        let ctx = ctx();
        let mut state = RoleState::default();
        let subscriber = handle("s", Platform::Web, 100, &sub_mb);
        ctx.presence.subscribe(&"u".into(), &subscriber);
        let ios = handle("u", Platform::Ios, 1, &watched_mb);
        let web = handle("u", Platform::Web, 2, &watched_mb);
        let ios2 = handle("u", Platform::Ios, 3, &watched_mb);
        register(&ctx, &mut state, &ios);
        register(&ctx, &mut state, &web);
        register(&ctx, &mut state, &ios2); // kicks `ios`: one edit, one event
        unregister(&ctx, &mut state, &ios); // stale: already kicked, nothing changed
        unregister(&ctx, &mut state, &web);
        unregister(&ctx, &mut state, &ios2);
        register(&ctx, &mut state, &handle("other", Platform::Ios, 4, &watched_mb)); // nobody watches
        let states: Vec<_> = presence_frames(&sub_rx).iter().map(platforms).collect();
        let u = |ids: &[u64]| ("u".to_owned(), ids.to_vec());
        assert_eq!(states, [u(&[1]), u(&[1, 5]), u(&[1, 5]), u(&[1]), u(&[])]);
        let m = ctx.metrics.snapshot();
        assert_eq!((m.presence_events, m.presence_pushes, m.presence_dropped), (5, 5, 0));
    }

    #[test]
    fn presence_frame_to_a_full_inbox_is_deferred_then_delivered_not_lost() {
        let (watched_mb, _watched_rx, _p1) = mailbox(64, 1 << 20);
        let (sub_mb, sub_rx, _p2) = mailbox(1, 1 << 20);
        let ctx = ctx();
        let mut state = RoleState::default();
        let subscriber = handle("s", Platform::Web, 100, &sub_mb);
        ctx.presence.subscribe(&"u".into(), &subscriber);
        subscriber.offer(&"a message".into()).unwrap(); // the inbox (capacity 1) is full
        register(&ctx, &mut state, &handle("u", Platform::Ios, 1, &watched_mb));
        assert_eq!(state.outbox.len(), 1, "deferred, not dropped");
        state.retry(&ctx.metrics);
        assert_eq!(state.outbox.len(), 1, "still full: kept");
        assert!(matches!(sub_rx.try_recv(), Ok(Delivery::Frame { .. })), "the reactor takes the message");
        state.retry(&ctx.metrics);
        assert_eq!(state.outbox.len(), 0);
        assert_eq!(presence_frames(&sub_rx).iter().map(platforms).collect::<Vec<_>>(), [("u".to_owned(), vec![1])]);
        let m = ctx.metrics.snapshot();
        assert_eq!((m.presence_pushes, m.presence_dropped), (1, 0));
    }

    #[test]
    fn the_role_thread_retries_deferred_frames_without_new_events_and_exits_with_its_senders() {
        let (watched_mb, _watched_rx, _p1) = mailbox(64, 1 << 20);
        let (sub_mb, sub_rx, _p2) = mailbox(1, 1 << 20);
        let ctx = Arc::new(ctx());
        let subscriber = handle("s", Platform::Web, 100, &sub_mb);
        ctx.presence.subscribe(&"u".into(), &subscriber);
        subscriber.offer(&"a message".into()).unwrap(); // the inbox (capacity 1) is full
        let (tx, rx) = crossbeam_channel::bounded(1);
        let beacon = Arc::new(Beacon::new(ROLE_LABELS));
        let waiters = Arc::new(Waiters::new(vec![watched_mb.clone(), sub_mb.clone()]));
        let thread = spawn(Role::Register, ctx.clone(), rx, waiters, beacon.clone(), "test-register".into()).unwrap();
        tx.try_send(handle("u", Platform::Ios, 1, &watched_mb)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ctx.metrics.snapshot().presence_pushes == 0 {
            assert!(std::time::Instant::now() < deadline, "the event was not handled");
            std::thread::yield_now();
        }
        // The frame waits in the role's outbox; no further event comes. Make room once.
        assert!(matches!(sub_rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(Delivery::Frame { .. })));
        let frame = sub_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the deferred frame, retried");
        assert!(matches!(frame, Delivery::Presence { .. }));
        drop(tx);
        thread.join().unwrap();
        assert!(beacon.progress() > 1, "the role turned while retrying");
    }

    #[test]
    fn a_subscriber_over_its_budget_is_closed_as_a_slow_consumer_as_for_messages() {
        let (watched_mb, _watched_rx, _p1) = mailbox(64, 1 << 20);
        let (sub_mb, sub_rx, _p2) = mailbox(64, 200); // room for one presence frame, not two
        let ctx = ctx();
        let mut state = RoleState::default();
        let subscriber = handle("s", Platform::Web, 100, &sub_mb);
        ctx.presence.subscribe(&"u".into(), &subscriber);
        for conn in 1..=3 {
            register(&ctx, &mut state, &handle("u", Platform::Ios, conn, &watched_mb));
        }
        assert_eq!(subscriber.close_order(), Some(CloseOrder::SlowConsumer));
        assert_eq!(presence_frames(&sub_rx).len(), 1, "the first frame, then nothing");
        let m = ctx.metrics.snapshot();
        assert_eq!((m.presence_events, m.presence_pushes, m.presence_dropped), (3, 1, 2));
        assert_eq!(state.outbox.len(), 0);
    }
}
