//! Counters and gauges every thread bumps, and the plain [`Snapshot`] they read out as.
//!
//! Owns the names and meanings of the numbers. Relaxed atomics only: it must not lock, allocate
//! or log on the paths that bump it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    (counters { $($(#[doc = $cdoc:literal])* $c:ident,)* } gauges { $($(#[doc = $gdoc:literal])* $g:ident,)* }
     derived { $($(#[doc = $ddoc:literal])* $d:ident,)* }) => {
        /// Live counters (monotonic) and gauges (up and down), shared by every thread of a gateway.
        #[derive(Debug, Default)]
        pub(crate) struct Metrics {
            $(pub(crate) $c: AtomicU64,)*
            $(pub(crate) $g: AtomicI64,)*
        }

        /// A point-in-time copy of a gateway's counters and gauges.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        #[non_exhaustive]
        pub struct Snapshot {
            $($(#[doc = $cdoc])* pub $c: u64,)*
            $($(#[doc = $gdoc])* pub $g: i64,)*
            $($(#[doc = $ddoc])* pub $d: i64,)*
        }

        impl Metrics {
            pub(crate) fn snapshot(&self) -> Snapshot {
                // Derived gauges are read from the queues by `GatewayHandle::stats`.
                Snapshot { $($c: self.$c.load(Relaxed),)* $($g: self.$g.load(Relaxed),)* $($d: 0,)* }
            }
        }

        impl Snapshot {
            /// Every field as `(name, value)`, counters first, for logs and exposition.
            pub fn fields(&self) -> Vec<(&'static str, i128)> {
                vec![
                    $((stringify!($c), i128::from(self.$c)),)*
                    $((stringify!($g), i128::from(self.$g)),)*
                    $((stringify!($d), i128::from(self.$d)),)*
                ]
            }

            /// Every field with its doc text and kind, counters first, for the Prometheus exposition.
            pub(crate) fn described(&self) -> Vec<Field> {
                vec![
                    $(Field { name: stringify!($c), help: concat!($($cdoc),*), counter: true, value: i128::from(self.$c) },)*
                    $(Field { name: stringify!($g), help: concat!($($gdoc),*), counter: false, value: i128::from(self.$g) },)*
                    $(Field { name: stringify!($d), help: concat!($($ddoc),*), counter: false, value: i128::from(self.$d) },)*
                ]
            }
        }
    };
}

metrics! {
    counters {
        /// Sockets accepted by the acceptor.
        accepted,
        /// Times every reactor's hand-off queue was full and a socket waited in the accept backlog.
        handoff_queue_full,
        /// Sockets refused because no reactor could take them in time (503, 1601).
        refused_handoff_full,
        /// Sockets refused because `max_connections` were held (503, 1601).
        refused_max_connections,
        /// Upgrades completed and authenticated.
        handshakes_ok,
        /// Upgrades refused for missing or invalid arguments (400, 1602).
        handshakes_rejected_args,
        /// Upgrades refused for a bad, expired or mismatched token (401, 1501-1503).
        handshakes_rejected_token,
        /// Sockets that did not complete the upgrade within `handshake_timeout`.
        handshake_timeouts,
        /// Sockets that sent something that is not a WebSocket upgrade.
        handshakes_failed,
        /// Sessions still unregistered at their handshake deadline, closed with 1013.
        register_timeouts,
        /// Times a register event found the register queue full and stayed in a reactor backlog.
        register_queue_full,
        /// Times an unregister event found the unregister queue full and stayed in a backlog.
        unregister_queue_full,
        /// Sessions registered by the register role.
        registered,
        /// Sessions removed from the registry by the unregister role.
        unregistered,
        /// Unregister events that found their session already gone (kicked or never inserted).
        unregister_stale,
        /// Sessions kicked by a newer login.
        kicks,
        /// Sessions kicked through `GatewayHandle::kick` or the admin API.
        kicks_admin,
        /// Frames received from clients.
        frames_in,
        /// Messages (1003) accepted and relayed.
        messages_relayed,
        /// Pushes queued to a recipient session.
        pushes_queued,
        /// Pushes that found the recipient's reactor inbox full and waited in the sender's reactor.
        pushes_deferred,
        /// Pushes not queued because the recipient was already closing.
        pushes_dropped_closing,
        /// Pushes not queued because the recipient was over its outbound budget.
        pushes_dropped_slow,
        /// Pushes from a thread with no reactor loop (admin API, embedding service, worker) that
        /// found the recipient's reactor inbox full: that session was reported not delivered.
        pushes_dropped_busy,
        /// Kicks whose 2002 frame found the reactor inbox full: the session was closed without it.
        kick_frames_dropped,
        /// Registry edits (a login, with the sessions it kicked, or a removal) of a user with at
        /// least one presence subscriber, fanned out as one 2005 frame per subscriber.
        presence_events,
        /// 2005 presence frames queued to a subscriber, or deferred behind a full inbox (a deferred
        /// frame later dropped is counted again in `presence_dropped`).
        presence_pushes,
        /// 2005 presence frames not delivered: the subscriber was closing, or over its outbound
        /// budget (then closed as a slow consumer, as for messages).
        presence_dropped,
        /// Presence pushes dropped by the subscriber's reactor as stale: an older state that
        /// arrived after a newer one (pushes come from two role threads), or for a user the
        /// session no longer watches.
        presence_stale,
        /// Error responses sent for bad requests (malformed, unknown identifier, wrong sendID).
        request_errors,
        /// Sessions closed as slow consumers (1008).
        slow_consumer_closes,
        /// Sessions closed for an oversize message (1009).
        oversize_closes,
        /// Sessions closed for a protocol violation (1002) or invalid UTF-8 (1007).
        protocol_closes,
        /// Sessions closed for silence past `idle_timeout`.
        idle_closes,
        /// Sessions that ended by logout (2003).
        logouts,
        /// Times a reactor had to sweep all its sessions because its inbox could not take a notice.
        sweeps,
        /// Requests, messages, frames and events a handler was called for on a worker.
        handler_calls,
        /// Handler calls that panicked (a bug in the handler): requests got errCode 500.
        handler_panics,
        /// Requests answered errCode 503 "server busy" at once because the worker queue was full.
        worker_queue_full,
        /// Connect and disconnect events not handed to the handler: a reactor's event backlog
        /// was full (65536), or the workers did not take them within 2 s of shutdown.
        handler_events_dropped,
        /// Handler replies not sent because their session was closing or over budget.
        replies_dropped,
        /// Sessions closed with 1013 because a handler's reply found their inbox full for 2 s.
        replies_overloaded,
        /// Reactors that panicked (a bug); their connections were dropped and unregistered.
        reactor_panics,
        /// Stalls the watchdog reported: a thread with queued work and no progress for
        /// `stall_after` (a bug, or a starved machine).
        stalls,
    }
    gauges {
        /// Sockets held: handshakes in flight plus sessions.
        connections,
        /// Authenticated sessions, from the token's acceptance (before the `101`) to the socket's close.
        sessions,
        /// Sessions in the registry.
        registry_sessions,
        /// Users with at least one session in the registry.
        online_users,
        /// Presence subscriptions held (session, watched user) pairs, over every session.
        presence_subscriptions,
    }
    derived {
        /// Register events waiting in the register role's queue (when the snapshot was taken).
        register_queue_depth,
        /// Unregister events waiting in the unregister role's queue.
        unregister_queue_depth,
        /// Frames, notices and replies waiting in the reactors' inboxes, summed.
        inbox_depth,
        /// Jobs waiting in the handler workers' queues, summed (0 without a handler).
        worker_queue_depth,
        /// Threads the stall watchdog reports stalled right now.
        stalled_threads,
    }
}

/// One [`Snapshot`] field as the exposition needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// The field's name, e.g. `accepted`.
    pub(crate) name: &'static str,
    /// Its doc comment, lines joined (each starts with a space).
    pub(crate) help: &'static str,
    /// Monotonic (a counter) or up and down (a gauge).
    pub(crate) counter: bool,
    /// Its value.
    pub(crate) value: i128,
}

/// Bumps a counter by one.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Bumps a counter by `n`.
pub(crate) fn inc_by(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Relaxed);
    }
}

/// Moves a gauge by `delta`.
pub(crate) fn add(gauge: &AtomicI64, delta: i64) {
    gauge.fetch_add(delta, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_counters_and_gauges() {
        let m = Metrics::default();
        inc(&m.accepted);
        inc(&m.accepted);
        add(&m.sessions, 3);
        add(&m.sessions, -1);
        let s = m.snapshot();
        assert_eq!((s.accepted, s.sessions), (2, 2));
        assert!(s.fields().contains(&("accepted", 2)));
        let described = s.described();
        assert_eq!(described.len(), s.fields().len());
        let accepted = described.iter().find(|f| f.name == "accepted").unwrap();
        assert_eq!((accepted.counter, accepted.value, accepted.help), (true, 2, " Sockets accepted by the acceptor."));
        let sessions = described.iter().find(|f| f.name == "sessions").unwrap();
        assert!(!sessions.counter && sessions.value == 2);
    }
}
