//! Frames waiting for room in another reactor's inbox: the deferral every pushing thread shares.
//!
//! Owns the "full inbox" fallback for pushes: a frame that finds its target reactor's inbox full
//! stays here, charged to its session's budget, behind every earlier frame for that reactor, and
//! is retried oldest first, so per-recipient order holds. Used by each reactor's dispatcher (relay)
//! and by the role threads (presence). It must not block, lock, or count metrics: callers own the
//! outbox (one per thread, no sharing) and count what the results say.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::mailbox::{NotDelivered, Offer, Outgoing, SessionHandle};

/// One thread's deferred frames, one FIFO per target reactor.
#[derive(Default)]
pub(crate) struct Outbox {
    lanes: Vec<VecDeque<(Arc<SessionHandle>, Outgoing)>>,
    len: usize,
}

/// What one [`Outbox::retry`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retried {
    /// Deferred frames that reached their inbox.
    pub(crate) queued: usize,
    /// Deferred frames dropped because their session began closing meanwhile.
    pub(crate) dropped: usize,
}

impl Outbox {
    /// Offers `frame` to `target` without blocking. A full inbox (or earlier frames still waiting
    /// for the same reactor) keeps it here, charged to the session, and answers `Deferred`.
    /// `here` is the calling reactor's id, if the caller is a reactor: a target on it is not woken
    /// (that reactor drains its own inbox before it sleeps). An error: nothing was queued or kept.
    pub(crate) fn push(
        &mut self,
        target: &Arc<SessionHandle>,
        frame: &Outgoing,
        here: Option<usize>,
    ) -> Result<Offer, NotDelivered> {
        let lane = target.reactor();
        if self.lanes.len() <= lane {
            self.lanes.resize_with(lane + 1, VecDeque::new);
        }
        let outcome = if !self.lanes[lane].is_empty() {
            target.charge(frame.len()).map(|()| Offer::Deferred)
        } else if here == Some(lane) {
            target.offer_local(frame)
        } else {
            target.offer(frame)
        };
        if let Ok(Offer::Deferred) = outcome {
            self.lanes[lane].push_back((target.clone(), frame.clone()));
            self.len += 1;
        }
        // `offer` never answers Busy: a full inbox defers the frame instead.
        outcome
    }

    /// Retries deferred frames, oldest first per reactor; stops at a reactor still full.
    pub(crate) fn retry(&mut self) -> Retried {
        let mut done = Retried::default();
        if self.len == 0 {
            return done;
        }
        for lane in &mut self.lanes {
            while let Some((target, frame)) = lane.front() {
                match target.resume(frame) {
                    Ok(Offer::Deferred) => break,
                    Ok(Offer::Queued) => done.queued += 1,
                    Err(_) => done.dropped += 1,
                }
                lane.pop_front();
                self.len -= 1;
            }
        }
        done
    }

    /// Drops every deferred frame, releasing the budget it holds on its session (thread exit).
    pub(crate) fn abandon(&mut self) {
        for (target, frame) in self.lanes.drain(..).flatten() {
            target.dequeued(frame.len());
        }
        self.len = 0;
    }

    /// Frames waiting for room in some reactor's inbox.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::mailbox::Delivery;
    use crate::policy::Platform;

    fn contents(rx: &crossbeam_channel::Receiver<Delivery>) -> Vec<String> {
        rx.try_iter()
            .filter_map(|d| match d {
                Delivery::Frame { frame, .. } => Some(frame.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_inbox_defers_in_order_and_retry_delivers() {
        let (mb, rx, _poll) = mailbox(1, 1000);
        let h = handle("u", Platform::Ios, 1, &mb);
        let mut out = Outbox::default();
        assert_eq!(out.push(&h, &"a".into(), None), Ok(Offer::Queued));
        assert_eq!(out.push(&h, &"b".into(), None), Ok(Offer::Deferred));
        assert_eq!(out.push(&h, &"c".into(), None), Ok(Offer::Deferred), "behind b, even if room appeared");
        assert_eq!(out.len(), 2);
        assert_eq!(out.retry(), Retried::default(), "still full");
        assert_eq!(contents(&rx), ["a"]);
        assert_eq!(out.retry(), Retried { queued: 1, dropped: 0 });
        assert_eq!(contents(&rx), ["b"]);
        assert_eq!(out.retry(), Retried { queued: 1, dropped: 0 });
        assert_eq!(contents(&rx), ["c"]);
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn abandon_and_closing_release_the_budget() {
        let (mb, rx, _poll) = mailbox(1, 12);
        let h = handle("u", Platform::Ios, 1, &mb);
        let mut out = Outbox::default();
        out.push(&h, &"aaaa".into(), None).unwrap();
        out.push(&h, &"bbbb".into(), None).unwrap();
        out.push(&h, &"cccc".into(), None).unwrap();
        out.abandon();
        assert_eq!(out.len(), 0);
        rx.try_recv().unwrap();
        h.dequeued(4); // the reactor took "aaaa"
                       // Budget 12: only with the abandoned charges released do two more 4-byte frames fit.
        out.push(&h, &"dddd".into(), None).unwrap();
        assert_eq!(out.push(&h, &"eeee".into(), None), Ok(Offer::Deferred));
        h.order_close(crate::mailbox::CloseOrder::Kicked);
        assert_eq!(out.retry(), Retried { queued: 0, dropped: 1 });
        assert_eq!(out.len(), 0);
    }
}
