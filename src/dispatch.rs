//! What a session's text frame asks for, and the relay of 1003 sends.
//!
//! Owns the meaning of each request identifier. Runs on the reactor that owns the sending
//! session; reaches other sessions only through [`SessionHandle::push`] (never blocking) and the
//! registry's read locks (released before any push). It must not touch sockets: it returns what
//! the session should write, and the reactor writes it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tungstenite::Utf8Bytes;

use crate::mailbox::{NotDelivered, Offer, SessionHandle};
use crate::metrics::{inc, inc_by, Metrics};
use crate::outbox::Outbox;
use crate::protocol::{self, codes, ident, Inbound, Request, SendAck, SendMsg, SetBackground};
use crate::registry::Registry;

/// What the session does after a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Write this text frame.
    Reply(String),
    /// Write this text frame, then close with 1000 (logout).
    ReplyThenClose(String),
}

/// Per-reactor dispatch state.
pub(crate) struct Dispatcher {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    id_prefix: String,
    next_id: u64,
    targets: Vec<Arc<SessionHandle>>,
    /// Frames whose target reactor's inbox was full, per target reactor, in send order.
    outbox: Outbox,
}

impl Dispatcher {
    /// `id_prefix` makes `serverMsgID`s unique across reactors and gateway restarts.
    pub(crate) fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, id_prefix: String) -> Dispatcher {
        Dispatcher { registry, metrics, id_prefix, next_id: 0, targets: Vec::new(), outbox: Outbox::default() }
    }

    /// Offers `frame` to `target` through the outbox and counts the outcome. `here` is this
    /// reactor's id. Returns whether it counts as delivered.
    fn push(&mut self, target: &Arc<SessionHandle>, frame: &Utf8Bytes, here: usize) -> bool {
        match self.outbox.push(target, frame, Some(here)) {
            Ok(Offer::Queued) => {
                inc(&self.metrics.pushes_queued);
                true
            }
            Ok(Offer::Deferred) => {
                inc(&self.metrics.pushes_deferred);
                true
            }
            Err(NotDelivered::Closing | NotDelivered::Busy) => {
                inc(&self.metrics.pushes_dropped_closing);
                false
            }
            Err(NotDelivered::SlowConsumer) => {
                inc(&self.metrics.pushes_dropped_slow);
                false
            }
        }
    }

    /// Retries deferred frames, oldest first per reactor; stops at a reactor still full.
    pub(crate) fn retry_deferred(&mut self) {
        let done = self.outbox.retry();
        inc_by(&self.metrics.pushes_queued, done.queued);
        inc_by(&self.metrics.pushes_dropped_closing, done.dropped);
    }

    /// Drops every deferred frame, releasing the budget it holds on its session (reactor exit).
    pub(crate) fn abandon_deferred(&mut self) {
        self.outbox.abandon();
    }

    /// Frames waiting for room in some reactor's inbox.
    pub(crate) fn deferred_len(&self) -> usize {
        self.outbox.len()
    }

    /// Handles one text frame from `me`.
    pub(crate) fn on_text(&mut self, me: &SessionHandle, text: &str) -> Action {
        let req = match protocol::decode(text) {
            Ok(Inbound::Ping) => return Action::Reply(protocol::PONG.to_owned()),
            Ok(Inbound::Request(req)) => req,
            Err(e) => return self.error(None, codes::ARGS, &e.0),
        };
        if !req.send_id.is_empty() && *req.send_id != *me.user {
            let msg = format!("sendID {:?} is not this session's user", req.send_id);
            return self.error(Some(&req), codes::NO_PERMISSION, &msg);
        }
        let Some(identifier) = req.req_identifier else {
            return self.error(Some(&req), codes::ARGS, "malformed request: missing reqIdentifier");
        };
        match identifier {
            ident::SEND_MSG => self.relay(me, &req),
            ident::LOGOUT => {
                inc(&self.metrics.logouts);
                Action::ReplyThenClose(protocol::response(Some(&req), codes::OK, "", ()))
            }
            ident::SET_BACKGROUND => match protocol::data::<SetBackground>(&req, "2004 set background") {
                Ok(bg) => {
                    me.background.store(bg.is_background, std::sync::atomic::Ordering::Relaxed);
                    Action::Reply(protocol::response(Some(&req), codes::OK, "", ()))
                }
                Err(e) => self.error(Some(&req), codes::ARGS, &e.0),
            },
            ident::GET_NEWEST_SEQ | ident::PULL_MSG_BY_SEQ => {
                self.error(Some(&req), codes::NOT_SUPPORTED, "seq sync is not supported: this gateway keeps no storage")
            }
            other => self.error(Some(&req), codes::ARGS, &format!("unsupported reqIdentifier {other}")),
        }
    }

    fn error(&self, req: Option<&Request<'_>>, code: i32, msg: &str) -> Action {
        inc(&self.metrics.request_errors);
        Action::Reply(protocol::error_response(req, code, msg))
    }

    /// 1003: push 2001 to every session of the recipient and the sender's other sessions, then
    /// ack with the number of recipient sessions that took it.
    fn relay(&mut self, me: &SessionHandle, req: &Request<'_>) -> Action {
        if req.send_id.is_empty() {
            return self.error(Some(req), codes::ARGS, "1003 send: missing sendID");
        }
        let msg: SendMsg<'_> = match protocol::data(req, "1003 send") {
            Ok(m) => m,
            Err(e) => return self.error(Some(req), codes::ARGS, &e.0),
        };
        if msg.recv_id.is_empty() {
            return self.error(Some(req), codes::ARGS, "1003 send: empty recvID");
        }
        self.next_id += 1;
        let server_msg_id = format!("{}-{}", self.id_prefix, self.next_id);
        let send_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let frame = Utf8Bytes::from(protocol::push_frame(&me.user, &req.operation_id, &msg, &server_msg_id, send_time));

        self.targets.clear();
        self.registry.sessions_of(&msg.recv_id, &mut self.targets);
        let recipients = self.targets.len();
        if *msg.recv_id != *me.user {
            self.registry.sessions_of(&me.user, &mut self.targets);
        }
        let mut delivered = 0;
        let here = me.reactor();
        let targets = std::mem::take(&mut self.targets);
        for (i, target) in targets.iter().enumerate() {
            if target.conn != me.conn && self.push(target, &frame, here) {
                delivered += usize::from(i < recipients);
            }
        }
        self.targets = targets;
        self.targets.clear();
        inc(&self.metrics.messages_relayed);
        let ack = SendAck { server_msg_id: &server_msg_id, client_msg_id: &msg.client_msg_id, send_time, delivered };
        Action::Reply(protocol::response(Some(req), codes::OK, "", ack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::mailbox::Delivery;
    use crate::policy::{MultiLoginPolicy, Platform};
    use serde_json::Value;

    fn reply(a: Action) -> Value {
        match a {
            Action::Reply(t) | Action::ReplyThenClose(t) => serde_json::from_str(&t).unwrap(),
        }
    }

    #[test]
    fn send_pushes_to_recipient_and_senders_other_sessions_and_acks_the_count() {
        let (mb, rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        let u1_ios = handle("u1", Platform::Ios, 1, &mb);
        let u1_web = handle("u1", Platform::Web, 2, &mb);
        let u2_ios = handle("u2", Platform::Ios, 3, &mb);
        let u2_pc = handle("u2", Platform::Windows, 4, &mb);
        for h in [&u1_ios, &u1_web, &u2_ios, &u2_pc] {
            registry.register(h, MultiLoginPolicy::SameTerminalKick);
        }
        let mut d = Dispatcher::new(registry, metrics, "t".into());
        let text = r#"{"reqIdentifier":1003,"sendID":"u1","msgIncr":"5","operationID":"op",
            "data":{"recvID":"u2","clientMsgID":"c1","contentType":101,"content":"hi"}}"#;
        let ack = reply(d.on_text(&u1_ios, text));
        assert_eq!(ack["errCode"], 0);
        assert_eq!((ack["reqIdentifier"].as_i64(), ack["msgIncr"].as_str()), (Some(1003), Some("5")));
        assert_eq!(ack["data"]["delivered"], 2);
        assert_eq!(ack["data"]["clientMsgID"], "c1");
        let mut conns: Vec<u64> = rx
            .try_iter()
            .filter_map(|d| match d {
                Delivery::Frame { conn, .. } => Some(conn),
                Delivery::Notice { .. } | Delivery::Last { .. } => None,
            })
            .collect();
        conns.sort();
        assert_eq!(conns, vec![2, 3, 4], "u2's two sessions and u1's web session, not the sender");
    }

    #[test]
    fn offline_recipient_acks_zero() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = Dispatcher::new(Arc::new(Registry::new(metrics.clone())), metrics, "t".into());
        let me = handle("u1", Platform::Ios, 1, &mb);
        let text = r#"{"reqIdentifier":1003,"sendID":"u1","data":{"recvID":"nobody","content":"x"}}"#;
        let ack = reply(d.on_text(&me, text));
        assert_eq!((ack["errCode"].as_i64(), ack["data"]["delivered"].as_i64()), (Some(0), Some(0)));
    }

    #[test]
    fn bad_requests_get_documented_codes() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = Dispatcher::new(Arc::new(Registry::new(metrics.clone())), metrics.clone(), "t".into());
        let me = handle("u1", Platform::Ios, 1, &mb);
        let cases = [
            ("not json", 1001),
            (r#"{"msgIncr":"m1","sendID":"u1"}"#, 1001),
            (r#"{"reqIdentifier":9999}"#, 1001),
            (r#"{"reqIdentifier":1003,"sendID":"u2","data":{"recvID":"x","content":1}}"#, 1002),
            (r#"{"reqIdentifier":1003,"sendID":"u1","data":{"content":1}}"#, 1001),
            (r#"{"reqIdentifier":1003,"sendID":"u1"}"#, 1001),
            (r#"{"reqIdentifier":1001}"#, 1610),
            (r#"{"reqIdentifier":2004,"data":{}}"#, 1001),
        ];
        for (text, code) in cases {
            assert_eq!(reply(d.on_text(&me, text))["errCode"], code, "{text}");
        }
        assert_eq!(metrics.snapshot().request_errors, cases.len() as u64);
    }

    #[test]
    fn logout_and_background_and_ping() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = Dispatcher::new(Arc::new(Registry::new(metrics.clone())), metrics, "t".into());
        let me = handle("u1", Platform::Ios, 1, &mb);
        assert!(matches!(d.on_text(&me, r#"{"reqIdentifier":2003}"#), Action::ReplyThenClose(_)));
        let r = reply(d.on_text(&me, r#"{"reqIdentifier":2004,"data":{"isBackground":true}}"#));
        assert_eq!(r["errCode"], 0);
        assert!(me.background.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(d.on_text(&me, r#"{"type":"ping"}"#), Action::Reply(protocol::PONG.into()));
    }
}
