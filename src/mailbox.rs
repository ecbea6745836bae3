//! The cross-thread handles: a reactor's [`Mailbox`] and a session's [`SessionHandle`].
//!
//! Owns every way another thread reaches a reactor: frames and notices through the reactor's
//! bounded inbox, flags on the session, and one coalesced `Waker` call. Every send here is a
//! `try_send` with its fallback written next to it; nothing in this file may block, lock across
//! a send, or touch a socket.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use tungstenite::Utf8Bytes;

use crate::policy::Platform;

/// A gateway-wide connection id; never reused within one gateway.
pub type ConnId = u64;

/// What other threads put into a reactor's inbox.
pub(crate) enum Delivery {
    /// A text frame for one session.
    Frame { token: usize, conn: ConnId, frame: Utf8Bytes },
    /// "Look at this session's flags": registered, or told to close.
    Notice { token: usize, conn: ConnId },
    /// A last frame (the 2002 kick) and then the close order already set on the session: one
    /// item, so nothing can close the session between the two.
    Last { token: usize, conn: ConnId, frame: Utf8Bytes },
    /// A worker's answer to a frame or request it was handed (see [`crate::handler`]).
    Reply { token: usize, conn: ConnId, out: Out },
    /// A 2005 presence push, tagged so the subscriber's reactor can drop it when stale.
    Presence { token: usize, conn: ConnId, item: Arc<PresenceFrame> },
}

/// A 2005 push for every subscriber of `user`, built once: the frame, and the registry version
/// of the edit it describes. Versions of one user's edits increase in the order the edits were
/// made (they are taken under the user's registry lock), so a subscriber's reactor keeps only a
/// frame newer than the last one it delivered (or the subscription answer it wrote).
#[derive(Debug)]
pub(crate) struct PresenceFrame {
    pub(crate) user: Arc<str>,
    pub(crate) version: u64,
    pub(crate) frame: Utf8Bytes,
}

/// What a pushing thread offers a session: a plain frame, or a tagged presence frame.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    Frame(Utf8Bytes),
    Presence(Arc<PresenceFrame>),
}

impl Outgoing {
    pub(crate) fn len(&self) -> usize {
        match self {
            Outgoing::Frame(f) => f.len(),
            Outgoing::Presence(p) => p.frame.len(),
        }
    }
}

impl From<Utf8Bytes> for Outgoing {
    fn from(frame: Utf8Bytes) -> Outgoing {
        Outgoing::Frame(frame)
    }
}

#[cfg(test)]
impl From<&str> for Outgoing {
    fn from(frame: &str) -> Outgoing {
        Outgoing::Frame(frame.into())
    }
}

/// What a worker sends back to a session.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    Text(Utf8Bytes),
    Binary(tungstenite::Bytes),
    /// No frame: only "the job is done" (a raw handler that answered nothing).
    Nothing,
}

impl Out {
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Text(t) => t.len(),
            Out::Binary(b) => b.len(),
            Out::Nothing => 0,
        }
    }
}

/// Why [`SessionHandle::try_reply`] did not queue a reply; `Full` hands it back, as
/// crossbeam's `TrySendError::Full` does, for the worker to retry.
#[derive(Debug)]
pub(crate) enum ReplyError {
    Full(Out),
    Not(NotDelivered),
}

/// The part of a reactor other threads may touch.
pub(crate) struct Mailbox {
    pub(crate) id: usize,
    inbox: Sender<Delivery>,
    waker: mio::Waker,
    woken: AtomicBool,
    sweep: AtomicBool,
    budget: usize,
    /// Times a sender found the inbox full and took its fallback (for the watchdog's dump).
    full: AtomicU64,
    /// Sockets the reactor owns (handshakes in flight included); only the reactor writes it.
    conns: AtomicUsize,
}

impl Mailbox {
    pub(crate) fn new(id: usize, inbox: Sender<Delivery>, waker: mio::Waker, budget: usize) -> Mailbox {
        Mailbox {
            id,
            inbox,
            waker,
            woken: AtomicBool::new(false),
            sweep: AtomicBool::new(false),
            budget,
            full: AtomicU64::new(0),
            conns: AtomicUsize::new(0),
        }
    }

    /// The reactor took (`+1`) or dropped (`-1`) a socket.
    pub(crate) fn owned(&self, delta: isize) {
        if delta >= 0 {
            self.conns.fetch_add(delta.unsigned_abs(), Relaxed);
        } else {
            self.conns.fetch_sub(delta.unsigned_abs(), Relaxed);
        }
    }

    /// Sockets the reactor owns now, handshakes in flight included.
    pub(crate) fn owned_conns(&self) -> usize {
        self.conns.load(Relaxed)
    }

    /// Wakes the reactor unless a wake is already pending (one syscall per reactor turn at most).
    pub(crate) fn wake(&self) {
        if !self.woken.swap(true, AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("reactor {}: waker failed: {e}", self.id);
            }
        }
    }

    /// Called by the reactor right after `poll` returns and before it drains the inbox, so a
    /// sender that enqueues after the drain sees the flag clear and wakes it again.
    pub(crate) fn rearm(&self) {
        self.woken.store(false, Release);
    }

    #[cfg(test)]
    pub(crate) fn is_woken(&self) -> bool {
        self.woken.load(Acquire)
    }

    /// Whether a notice could not be queued since the last call: the reactor must then check
    /// every session's flags itself.
    pub(crate) fn take_sweep(&self) -> bool {
        self.sweep.swap(false, AcqRel)
    }

    pub(crate) fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    pub(crate) fn inbox_capacity(&self) -> usize {
        self.inbox.capacity().unwrap_or(0)
    }

    /// Times a sender found the inbox full and took its fallback.
    pub(crate) fn inbox_full(&self) -> u64 {
        self.full.load(Relaxed)
    }

    fn found_full(&self) {
        self.full.fetch_add(1, Relaxed);
    }
}

/// Why another thread told a session to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseOrder {
    /// A newer login replaced it: close 1008 "kicked".
    Kicked = 1,
    /// Its outbound budget was exceeded: close 1008 "slow consumer".
    SlowConsumer = 2,
    /// A worker could not hand it a reply for `REPLY_PATIENCE`: close 1013 "server overloaded".
    Overloaded = 3,
    /// The embedding service or the admin API kicked it: its 2002 frame, then close 1008.
    KickedByAdmin = 4,
}

impl CloseOrder {
    fn from_u8(v: u8) -> Option<CloseOrder> {
        match v {
            1 => Some(CloseOrder::Kicked),
            2 => Some(CloseOrder::SlowConsumer),
            3 => Some(CloseOrder::Overloaded),
            4 => Some(CloseOrder::KickedByAdmin),
            _ => None,
        }
    }
}

/// A frame offered to a session: in its reactor's inbox, or kept by the caller for later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Deferred,
}

/// Why a push did not reach a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotDelivered {
    /// The session is closing or closed.
    #[error("the session is closing")]
    Closing,
    /// The session is over its outbound budget; it is being closed as a slow consumer.
    #[error("the session is over its outbound budget and is being closed as a slow consumer")]
    SlowConsumer,
    /// The session's reactor inbox was full for a frame from a thread that cannot keep it for
    /// later (the admin API, a worker, a kick's 2002 whose close order still stands).
    #[error("the session's reactor inbox is full")]
    Busy,
}

impl NotDelivered {
    /// A short label for metrics and JSON: `closing`, `slow_consumer` or `busy`.
    pub fn reason(self) -> &'static str {
        match self {
            NotDelivered::Closing => "closing",
            NotDelivered::SlowConsumer => "slow_consumer",
            NotDelivered::Busy => "busy",
        }
    }
}

const REGISTERED: u8 = 1;
const ENDED: u8 = 2;
/// In `order`, beside the close order: a `Last` item carrying that order is in the inbox. One
/// byte, so winning the order and raising this are one compare-and-swap: a reactor never sees
/// a `push_last` order without it, and a losing `push_last` never touches it.
const LAST_PENDING: u8 = 0x80;

/// A session as other threads see it: identity, flags and the way to its reactor.
pub(crate) struct SessionHandle {
    pub(crate) user: Arc<str>,
    pub(crate) platform: Platform,
    pub(crate) conn: ConnId,
    pub(crate) background: AtomicBool,
    token: usize,
    mailbox: Arc<Mailbox>,
    flags: AtomicU8,
    order: AtomicU8,
    queued: AtomicUsize,
}

impl SessionHandle {
    pub(crate) fn new(
        user: Arc<str>,
        platform: Platform,
        conn: ConnId,
        background: bool,
        token: usize,
        mailbox: Arc<Mailbox>,
    ) -> SessionHandle {
        SessionHandle {
            user,
            platform,
            conn,
            background: AtomicBool::new(background),
            token,
            mailbox,
            flags: AtomicU8::new(0),
            order: AtomicU8::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    /// Queues `item` for this session without blocking, for reactors and role threads.
    ///
    /// `Offer::Deferred` means the reactor inbox was full: the item is charged to the
    /// session's budget and the caller keeps it, in order, and retries with [`Self::resume`].
    /// Over budget, the session is ordered closed as a slow consumer and `SlowConsumer` returned.
    pub(crate) fn offer(&self, item: &Outgoing) -> Result<Offer, NotDelivered> {
        self.offer_waking(item, true)
    }

    /// [`Self::offer`] from the session's own reactor: no wake-up, since that reactor checks
    /// its inbox before it next sleeps (saves an eventfd write and a spurious `poll` return).
    pub(crate) fn offer_local(&self, item: &Outgoing) -> Result<Offer, NotDelivered> {
        self.offer_waking(item, false)
    }

    fn offer_waking(&self, item: &Outgoing, wake: bool) -> Result<Offer, NotDelivered> {
        self.charge(item.len())?;
        let offer = self.enqueue(item, wake);
        if let Ok(Offer::Deferred) = offer {
            self.mailbox.found_full();
        }
        offer
    }

    /// Queues `frame` from a thread with no reactor loop (the admin API, the embedding service,
    /// a worker): it cannot keep a frame for later, so a full inbox is `Busy` for this session
    /// and nothing is kept or charged.
    pub(crate) fn offer_now(&self, frame: &Outgoing) -> Result<(), NotDelivered> {
        self.charge(frame.len())?;
        match self.enqueue(frame, true)? {
            Offer::Queued => Ok(()),
            Offer::Deferred => {
                self.queued.fetch_sub(frame.len(), AcqRel);
                self.mailbox.found_full();
                Err(NotDelivered::Busy)
            }
        }
    }

    /// A worker's reply (or its "done, nothing to say"), charged to the budget like a push.
    /// `Full` hands `out` back uncharged for a retry; the caller decides how long to wait.
    pub(crate) fn try_reply(&self, out: Out) -> Result<(), ReplyError> {
        let len = out.len();
        self.charge(len).map_err(ReplyError::Not)?;
        match self.mailbox.inbox.try_send(Delivery::Reply { token: self.token, conn: self.conn, out }) {
            Ok(()) => {
                self.mailbox.wake();
                Ok(())
            }
            Err(e) => {
                self.queued.fetch_sub(len, AcqRel);
                match e {
                    TrySendError::Full(Delivery::Reply { out, .. }) => {
                        self.mailbox.found_full();
                        Err(ReplyError::Full(out))
                    }
                    _ => Err(ReplyError::Not(NotDelivered::Closing)),
                }
            }
        }
    }

    /// Charges `len` bytes to the session's budget without queueing anything, for a frame the
    /// caller defers behind others. Fails like [`Self::offer`].
    pub(crate) fn charge(&self, len: usize) -> Result<(), NotDelivered> {
        if self.order.load(Acquire) != 0 || self.flags.load(Acquire) & ENDED != 0 {
            return Err(NotDelivered::Closing);
        }
        if self.queued.fetch_add(len, AcqRel) + len > self.mailbox.budget {
            self.queued.fetch_sub(len, AcqRel);
            self.order_close(CloseOrder::SlowConsumer);
            return Err(NotDelivered::SlowConsumer);
        }
        Ok(())
    }

    /// Retries a deferred frame. `Ok(Offer::Deferred)`: still full, keep it. An error: the
    /// session is closing; the frame is dropped and its charge released.
    pub(crate) fn resume(&self, item: &Outgoing) -> Result<Offer, NotDelivered> {
        if self.order.load(Acquire) != 0 || self.flags.load(Acquire) & ENDED != 0 {
            self.queued.fetch_sub(item.len(), AcqRel);
            return Err(NotDelivered::Closing);
        }
        self.enqueue(item, true)
    }

    /// Orders the session closed for `order` and queues `frame` to be written just before the
    /// close, as one inbox item, so the frame always precedes the close (budget or not). If the
    /// inbox is full the order still stands and the session is closed without the frame.
    /// `Err(Closing)`: the session was already ordered closed or has ended; nothing changed.
    pub(crate) fn push_last(&self, frame: &Utf8Bytes, order: CloseOrder) -> Result<(), NotDelivered> {
        if self.has_ended() {
            return Err(NotDelivered::Closing);
        }
        if self.order.compare_exchange(0, order as u8 | LAST_PENDING, AcqRel, Acquire).is_err() {
            // Someone ordered it closed first; that order stands and was notified. Notify
            // again anyway: it costs a notice and guards against any reactor that skipped it.
            self.notify();
            return Err(NotDelivered::Closing);
        }
        self.queued.fetch_add(frame.len(), AcqRel);
        let last = Delivery::Last { token: self.token, conn: self.conn, frame: frame.clone() };
        match self.mailbox.inbox.try_send(last) {
            Ok(()) => {
                self.mailbox.wake();
                Ok(())
            }
            Err(e) => {
                // Fallback: no frame, but the close order is acted on through a notice or sweep.
                self.queued.fetch_sub(frame.len(), AcqRel);
                self.order.fetch_and(!LAST_PENDING, AcqRel);
                self.notify();
                Err(match e {
                    TrySendError::Full(_) => {
                        self.mailbox.found_full();
                        NotDelivered::Busy
                    }
                    TrySendError::Disconnected(_) => NotDelivered::Closing,
                })
            }
        }
    }

    /// Reactor: the `Last` item arrived; the close order is now the reactor's to act on.
    pub(crate) fn last_delivered(&self, len: usize) {
        self.queued.fetch_sub(len, AcqRel);
        self.order.fetch_and(!LAST_PENDING, AcqRel);
    }

    /// A `Last` item is in the inbox: its close must wait for it.
    pub(crate) fn last_pending(&self) -> bool {
        self.order.load(Acquire) & LAST_PENDING != 0
    }

    /// The one `try_send` of a frame (already charged to the budget). Full: the charge stays
    /// and the caller decides (defer, or give up and release it).
    fn enqueue(&self, item: &Outgoing, wake: bool) -> Result<Offer, NotDelivered> {
        let (token, conn, len) = (self.token, self.conn, item.len());
        let delivery = match item {
            Outgoing::Frame(frame) => Delivery::Frame { token, conn, frame: frame.clone() },
            Outgoing::Presence(item) => Delivery::Presence { token, conn, item: item.clone() },
        };
        match self.mailbox.inbox.try_send(delivery) {
            Ok(()) => {
                if wake {
                    self.mailbox.wake();
                }
                Ok(Offer::Queued)
            }
            Err(TrySendError::Full(_)) => Ok(Offer::Deferred),
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, AcqRel);
                Err(NotDelivered::Closing)
            }
        }
    }

    /// Orders the session closed; only the first order counts. Returns whether this was it.
    pub(crate) fn order_close(&self, order: CloseOrder) -> bool {
        let first = self.order.compare_exchange(0, order as u8, AcqRel, Acquire).is_ok();
        if first {
            self.notify();
        }
        first
    }

    /// The close order, if any.
    pub(crate) fn close_order(&self) -> Option<CloseOrder> {
        CloseOrder::from_u8(self.order.load(Acquire) & !LAST_PENDING)
    }

    /// Registry, under the shard lock, just before inserting: flags the session registered
    /// unless it has ended (or was cancelled), in one atomic step, so exactly one of
    /// "registered" and "ended first" wins. Anyone who then finds the session in the registry
    /// (and so may push to it) also sees it registered. Returns whether it may be inserted.
    pub(crate) fn try_flag_registered(&self) -> bool {
        self.flags.fetch_update(AcqRel, Acquire, |f| if f & ENDED != 0 { None } else { Some(f | REGISTERED) }).is_ok()
    }

    /// Reactor, when a session's registration deadline passes: ends it unless the register
    /// role got to it first. Returns whether it was cancelled (and will never be inserted).
    pub(crate) fn try_cancel(&self) -> bool {
        self.flags.fetch_update(AcqRel, Acquire, |f| if f & REGISTERED != 0 { None } else { Some(f | ENDED) }).is_ok()
    }

    pub(crate) fn is_registered(&self) -> bool {
        self.flags.load(Acquire) & REGISTERED != 0
    }

    /// Reactor: the socket is gone. Set before the unregister event is sent, so the register
    /// role, which checks it under the registry lock, never inserts a session that has ended.
    pub(crate) fn mark_ended(&self) {
        self.flags.fetch_or(ENDED, AcqRel);
    }

    /// The id of the reactor that owns this session.
    pub(crate) fn reactor(&self) -> usize {
        self.mailbox.id
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.flags.load(Acquire) & ENDED != 0
    }

    /// Reactor: `len` bytes of this session's frames left the inbox.
    pub(crate) fn dequeued(&self, len: usize) {
        self.queued.fetch_sub(len, AcqRel);
    }

    /// Tells the reactor to look at this session. Fallback when the inbox is full: the
    /// reactor's sweep flag, which makes it check every session's flags on its next turn.
    pub(crate) fn notify(&self) {
        let notice = Delivery::Notice { token: self.token, conn: self.conn };
        if let Err(e) = self.mailbox.inbox.try_send(notice) {
            if e.is_full() {
                self.mailbox.found_full();
            }
            self.mailbox.sweep.store(true, Release);
        }
        self.mailbox.wake();
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {} ({} on {})", self.conn, self.user, self.platform)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver};

    pub(crate) fn mailbox(capacity: usize, budget: usize) -> (Arc<Mailbox>, Receiver<Delivery>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let (tx, rx) = bounded(capacity);
        (Arc::new(Mailbox::new(0, tx, waker, budget)), rx, poll)
    }

    pub(crate) fn handle(user: &str, platform: Platform, conn: ConnId, mb: &Arc<Mailbox>) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(user.into(), platform, conn, false, conn as usize, mb.clone()))
    }

    #[test]
    fn push_within_budget_queues_and_wakes_once() {
        let (mb, rx, _poll) = mailbox(8, 100);
        let h = handle("u", Platform::Ios, 1, &mb);
        let frame = Outgoing::from(Utf8Bytes::from("0123456789"));
        h.offer(&frame).unwrap();
        h.offer(&frame).unwrap();
        assert_eq!(rx.len(), 2);
        assert!(mb.woken.load(Acquire), "first push wakes");
        mb.rearm();
        h.offer(&frame).unwrap();
        assert!(mb.woken.load(Acquire));
    }

    #[test]
    fn over_budget_orders_a_slow_consumer_close_and_refuses_later_pushes() {
        let (mb, rx, _poll) = mailbox(8, 25);
        let h = handle("u", Platform::Ios, 1, &mb);
        let frame = Outgoing::from(Utf8Bytes::from("0123456789"));
        h.offer(&frame).unwrap();
        h.offer(&frame).unwrap();
        assert_eq!(h.offer(&frame), Err(NotDelivered::SlowConsumer));
        assert_eq!(h.close_order(), Some(CloseOrder::SlowConsumer));
        assert_eq!(h.offer(&frame), Err(NotDelivered::Closing));
        assert_eq!(rx.len(), 3, "two frames and one notice");
    }

    #[test]
    fn offer_defers_on_a_full_inbox_keeping_the_charge_until_resumed() {
        let (mb, rx, _poll) = mailbox(1, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        let frame = Outgoing::from(Utf8Bytes::from("abc"));
        assert_eq!(h.offer(&frame), Ok(Offer::Queued));
        assert_eq!(h.offer(&frame), Ok(Offer::Deferred));
        assert_eq!(h.close_order(), None, "a full inbox is a throttle, not a failure");
        assert_eq!(h.queued.load(Acquire), 6);
        assert_eq!(h.resume(&frame), Ok(Offer::Deferred));
        rx.try_recv().unwrap();
        assert_eq!(h.resume(&frame), Ok(Offer::Queued));
        h.order_close(CloseOrder::Kicked);
        assert_eq!(h.resume(&frame), Err(NotDelivered::Closing));
        assert_eq!(h.queued.load(Acquire), 3, "a dropped deferred frame releases its charge");
    }

    #[test]
    fn registered_and_cancelled_exclude_each_other() {
        let (mb, _rx, _poll) = mailbox(8, 1000);
        let a = handle("u", Platform::Ios, 1, &mb);
        assert!(a.try_flag_registered());
        assert!(!a.try_cancel(), "registered first: the deadline cannot cancel it");
        let b = handle("u", Platform::Ios, 2, &mb);
        assert!(b.try_cancel());
        assert!(!b.try_flag_registered(), "cancelled first: never inserted");
        assert!(b.has_ended() && !b.is_registered());
    }

    #[test]
    fn push_last_is_one_item_and_defers_the_close_to_it() {
        let (mb, rx, _poll) = mailbox(8, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        h.push_last(&Utf8Bytes::from("kick"), CloseOrder::Kicked).unwrap();
        assert!(h.last_pending());
        assert_eq!(h.close_order(), Some(CloseOrder::Kicked));
        assert_eq!(rx.len(), 1, "no separate notice that could overtake the frame");
        assert!(matches!(rx.try_recv(), Ok(Delivery::Last { .. })));
        h.last_delivered(4);
        assert!(!h.last_pending());
        assert_eq!(h.push_last(&Utf8Bytes::from("again"), CloseOrder::Kicked), Err(NotDelivered::Closing));
    }

    #[test]
    fn a_second_push_last_never_clears_the_first_ones_pending_item() {
        let (mb, rx, _poll) = mailbox(8, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        h.push_last(&Utf8Bytes::from("kick"), CloseOrder::Kicked).unwrap();
        // An admin kick racing the register role's: it loses and must leave the first alone.
        assert_eq!(h.push_last(&Utf8Bytes::from("admin"), CloseOrder::KickedByAdmin), Err(NotDelivered::Closing));
        assert!(h.last_pending(), "the first kick's 2002 is still in the inbox: its close waits for it");
        assert_eq!(h.close_order(), Some(CloseOrder::Kicked));
        assert!(matches!(rx.try_recv(), Ok(Delivery::Last { .. })));
        h.last_delivered(4);
        assert!(!h.last_pending());
        assert_eq!(h.close_order(), Some(CloseOrder::Kicked));
    }

    #[test]
    fn push_last_after_another_order_still_notifies_the_reactor() {
        let (mb, rx, _poll) = mailbox(8, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        h.order_close(CloseOrder::SlowConsumer);
        let _ = rx.try_recv(); // the reactor took that notice while LAST_PENDING was up, say
        assert_eq!(h.push_last(&Utf8Bytes::from("kick"), CloseOrder::Kicked), Err(NotDelivered::Closing));
        assert!(!h.last_pending());
        assert!(matches!(rx.try_recv(), Ok(Delivery::Notice { .. })), "the slow-consumer order is not lost");
    }

    #[test]
    fn push_last_on_a_full_inbox_keeps_the_order_and_falls_back_to_a_sweep() {
        let (mb, rx, _poll) = mailbox(1, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        h.offer(&Utf8Bytes::from("fill").into()).unwrap();
        assert_eq!(h.push_last(&Utf8Bytes::from("kick"), CloseOrder::Kicked), Err(NotDelivered::Busy));
        assert_eq!(h.close_order(), Some(CloseOrder::Kicked));
        assert!(!h.last_pending());
        assert!(mb.take_sweep());
        assert_eq!(rx.len(), 1);
        assert_eq!(h.queued.load(Acquire), 4, "only the first frame is charged");
    }

    #[test]
    fn only_the_first_close_order_counts() {
        let (mb, _rx, _poll) = mailbox(8, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        assert!(h.order_close(CloseOrder::Kicked));
        assert!(!h.order_close(CloseOrder::SlowConsumer));
        assert_eq!(h.close_order(), Some(CloseOrder::Kicked));
    }
}
