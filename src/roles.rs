//! The register and unregister role threads: each owns one bounded queue and drains it.
//!
//! A role thread blocks only in `recv` on its own queue. Whatever it does per event is
//! non-blocking: registry edits under a lock, then `try_send`-based kicks and notices after the
//! lock is released. It must not send into any queue with a blocking call, and in particular
//! never into the other role's queue: kicking needs no round trip through the unregister queue,
//! because the registry edit that removes the kicked session happens right here.

use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use tungstenite::Utf8Bytes;

use crate::error::{Error, Result};
use crate::mailbox::{CloseOrder, Mailbox, NotDelivered, SessionHandle};
use crate::metrics::{inc, Metrics};
use crate::policy::MultiLoginPolicy;
use crate::protocol;
use crate::registry::Registry;
use crate::watchdog::Beacon;

/// What a role thread tells the watchdog it is doing (indices into this).
pub(crate) const ROLE_LABELS: &[&str] = &["waiting for an event", "registering", "unregistering"];

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
            for session in queue.iter() {
                waiters.wake_waiting();
                match role {
                    Role::Register => {
                        beacon.doing(1);
                        if !ctx.register_delay.is_zero() {
                            std::thread::sleep(ctx.register_delay); // a stand-in for a slow role
                        }
                        register(&ctx, &session)
                    }
                    Role::Unregister => {
                        beacon.doing(2);
                        unregister(&ctx, &session)
                    }
                }
                beacon.turn();
                beacon.doing(0);
            }
            log::debug!("{role:?} role: every reactor is gone, exiting");
        })
        .map_err(Error::io("spawning a role thread"))
}

/// Removes one ended session; a session already gone (kicked, never inserted) is counted stale.
fn unregister(ctx: &RoleCtx, session: &SessionHandle) {
    if ctx.registry.unregister(session) {
        inc(&ctx.metrics.unregistered);
    } else {
        inc(&ctx.metrics.unregister_stale);
    }
}

/// Registers one session: insert under the policy, kick the losers, tell the session.
pub(crate) fn register(ctx: &RoleCtx, session: &Arc<SessionHandle>) {
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
        register(&ctx, &old);
        register(&ctx, &new);
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
        register(&ctx, &old); // its notice fills the inbox
        let new = handle("u", Platform::Ios, 2, &mb);
        register(&ctx, &new);
        assert_eq!(rx.len(), 1);
        assert_eq!(old.close_order(), Some(CloseOrder::Kicked), "the close says why, even without the frame");
        assert!(mb.take_sweep(), "the reactor is told to sweep instead");
        assert_eq!(ctx.metrics.snapshot().kick_frames_dropped, 1);
    }
}
