//! Entry points for `benches/` into crate-private code: the envelope codec, the registry with
//! the register role's kick path, and the policy table.
//!
//! Not an API: hidden from the docs and free to change. It owns no logic of its own; every
//! function calls the code the gateway runs, so a benchmark measures the real thing. It must
//! not touch sockets or threads.

use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};

use crate::mailbox::{Delivery, Mailbox, SessionHandle};
use crate::metrics::Metrics;
use crate::policy::{MultiLoginPolicy, Platform};
use crate::presence::Presence;
use crate::protocol::{self, Inbound, SendAck, SendMsg};
use crate::registry::Registry;
use crate::roles::{self, RoleCtx, RoleState};

/// Decodes a client frame as the reactor does: envelope, then a 1003's `data`. Returns the
/// length of the message content, or `None` if the frame is not a valid send.
pub fn decode_send(frame: &str) -> Option<usize> {
    let Ok(Inbound::Request(req)) = protocol::decode(frame) else { return None };
    let msg: SendMsg<'_> = protocol::data(&req, "send").ok()?;
    Some(msg.content.get().len())
}

/// Encodes what one relayed message produces: the 2001 push and the sender's ack. Returns
/// their total length. `frame` must be a valid 1003 send.
pub fn encode_push_and_ack(frame: &str) -> usize {
    let Ok(Inbound::Request(req)) = protocol::decode(frame) else { panic!("not a request: {frame}") };
    let msg: SendMsg<'_> = protocol::data(&req, "send").expect("a 1003 send");
    let push = protocol::push_frame(&req.send_id, &req.operation_id, &msg, "18c2f0a1-0-1", 1_764_037_000_000);
    let ack = SendAck {
        server_msg_id: "18c2f0a1-0-1",
        client_msg_id: &msg.client_msg_id,
        send_time: 1_764_037_000_000,
        delivered: 1,
    };
    push.len() + protocol::response(Some(&req), protocol::codes::OK, "", ack).len()
}

/// A registered session, opaque.
#[derive(Debug, Clone)]
pub struct Session(Arc<SessionHandle>);

/// A registry and the register role's logic, driven from the calling thread, with one
/// mailbox whose inbox (kick frames, notices) is emptied after every call.
pub struct RegistryBench {
    ctx: RoleCtx,
    state: RoleState,
    mailbox: Arc<Mailbox>,
    inbox: Receiver<Delivery>,
    _poll: mio::Poll,
    next_conn: u64,
}

impl RegistryBench {
    /// A fresh registry applying `policy`.
    pub fn new(policy: MultiLoginPolicy) -> RegistryBench {
        let poll = mio::Poll::new().expect("a poll for the mailbox's waker");
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("a waker");
        let (tx, inbox) = bounded(1024);
        let metrics = Arc::new(Metrics::default());
        let ctx = RoleCtx {
            registry: Arc::new(Registry::new(metrics.clone())),
            presence: Arc::new(Presence::new(metrics.clone())),
            metrics,
            policy,
            register_delay: std::time::Duration::ZERO,
        };
        RegistryBench {
            ctx,
            state: RoleState::default(),
            mailbox: Arc::new(Mailbox::new(0, tx, waker, 1 << 20)),
            inbox,
            _poll: poll,
            next_conn: 1,
        }
    }

    /// Registers a new session of `user` on `platform` as the register role does, kicking
    /// whatever the policy says (2002 frame and close order included).
    pub fn register(&mut self, user: &str, platform: Platform) -> Session {
        let conn = self.next_conn;
        self.next_conn += 1;
        let handle = Arc::new(SessionHandle::new(user.into(), platform, conn, false, 0, self.mailbox.clone()));
        roles::register(&self.ctx, &mut self.state, &handle);
        self.drain();
        Session(handle)
    }

    /// Removes `session` as the unregister role does; returns whether it was still registered.
    pub fn unregister(&mut self, session: &Session) -> bool {
        session.0.mark_ended();
        self.ctx.registry.unregister(&session.0).is_some()
    }

    /// Sessions in the registry.
    pub fn len(&self) -> usize {
        self.ctx.registry.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the inbox. The wake flag is left set, as it stays within one reactor turn, so
    /// the eventfd write happens once, not per call: the benchmark measures the registry and
    /// the kick path, not a syscall the gateway coalesces.
    fn drain(&mut self) {
        while self.inbox.try_recv().is_ok() {}
    }
}

impl std::fmt::Debug for RegistryBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBench").field("sessions", &self.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = r#"{"reqIdentifier":1003,"sendID":"a","operationID":"o","msgIncr":"1","data":{"recvID":"b","clientMsgID":"c","contentType":101,"content":"hi"}}"#;

    #[test]
    fn codec_entry_points_run_the_real_codec() {
        assert_eq!(decode_send(SEND), Some(4));
        assert_eq!(decode_send("{}"), None);
        assert!(encode_push_and_ack(SEND) > SEND.len());
    }

    #[test]
    fn registry_bench_kicks_and_unregisters_like_the_roles() {
        let mut r = RegistryBench::new(MultiLoginPolicy::SameTerminalKick);
        let first = r.register("u", Platform::Ios);
        let second = r.register("u", Platform::Ios); // kicks `first`
        assert_eq!(r.len(), 1);
        assert!(!r.unregister(&first), "the kicked session is already gone");
        assert!(r.unregister(&second));
        assert!(r.is_empty());
    }
}
