//! What a session's text frame asks for, and the relay of 1003 sends.
//!
//! Owns the meaning of each request identifier, and the list of users each of its reactor's
//! sessions watches (2005 presence), which it clears into the presence map when a session ends.
//! Runs on the reactor that owns the sending session; reaches other sessions only through
//! [`Outbox::push`] (never blocking) and the registry's and presence map's locks (released
//! before any push). It must not touch sockets: it returns what
//! the session should write, and the reactor writes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::handler::{self, Claim, Handler, Msg};
use crate::mailbox::{ConnId, NotDelivered, Offer, Outgoing, PresenceFrame, SessionHandle};
use crate::metrics::{inc, inc_by, Metrics};
use crate::outbox::Outbox;
use crate::presence::Presence;
use crate::protocol::{
    self, codes, ident, Inbound, Request, SendAck, SendMsg, SetBackground, SubUserOnlineStatus,
    SubUserOnlineStatusTips, UserOnlineStatus,
};
use crate::registry::Registry;
use crate::throttle::log_throttled;
use crate::worker::Job;

/// What the session does after a frame.
#[derive(Debug)]
pub(crate) enum Action {
    /// Write this text frame.
    Reply(String),
    /// Write this text frame, then close with 1000 (logout).
    ReplyThenClose(String),
    /// Hand this to the handler's worker pool; if its queue is full, answer "server busy".
    Work(Job),
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
    /// The embedding service's handler, asked who serves each request.
    handler: Option<Arc<dyn Handler>>,
    presence: Arc<Presence>,
    /// `Config::max_subscriptions`.
    max_subscriptions: usize,
    /// Users each of this reactor's sessions watches (2005), sorted, each with the registry
    /// version of the newest state the session was told; only sessions that watch someone have
    /// an entry. Only this reactor touches it: no lock.
    watching: HashMap<ConnId, Vec<(Arc<str>, u64)>>,
}

impl Dispatcher {
    /// `id_prefix` makes `serverMsgID`s unique across reactors and gateway restarts.
    pub(crate) fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        id_prefix: String,
        presence: Arc<Presence>,
        max_subscriptions: usize,
        handler: Option<Arc<dyn Handler>>,
    ) -> Dispatcher {
        Dispatcher {
            registry,
            metrics,
            id_prefix,
            next_id: 0,
            targets: Vec::new(),
            outbox: Outbox::default(),
            handler,
            presence,
            max_subscriptions,
            watching: HashMap::new(),
        }
    }

    /// The session has ended (reactor, before its unregister): its subscriptions end with it.
    pub(crate) fn session_ended(&mut self, session: &SessionHandle) {
        if let Some(watched) = self.watching.remove(&session.conn) {
            let users: Vec<Arc<str>> = watched.into_iter().map(|(u, _)| u).collect();
            self.presence.unsubscribe_all(session, &users);
        }
    }

    /// Whether a presence push should reach session `conn`: it still watches the user and the
    /// push describes a newer registry state than anything it was told. Pushes from the two role
    /// threads can arrive out of order; the older one is dropped here (`presence_stale`), so a
    /// subscriber always ends on the user's latest state.
    pub(crate) fn presence_is_news(&mut self, conn: ConnId, item: &PresenceFrame) -> bool {
        let newer = self.watching.get_mut(&conn).and_then(|watched| {
            let i = watched.binary_search_by(|(w, _)| (**w).cmp(&*item.user)).ok()?;
            let seen = &mut watched[i].1;
            (item.version > *seen).then(|| *seen = item.version)
        });
        if newer.is_none() {
            inc(&self.metrics.presence_stale);
        }
        newer.is_some()
    }

    /// Offers `frame` to `target` through the outbox and counts the outcome. `here` is this
    /// reactor's id. Returns whether it counts as delivered.
    fn push(&mut self, target: &Arc<SessionHandle>, frame: &Outgoing, here: usize) -> bool {
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
    pub(crate) fn on_text(&mut self, me: &Arc<SessionHandle>, text: &str) -> Action {
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
        let claim = match &self.handler {
            None => Claim::Gateway,
            // The one handler call made on a reactor: a panic in it must not take the reactor.
            Some(h) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.claim(identifier))) {
                Ok(claim) => claim,
                Err(_) => {
                    inc(&self.metrics.handler_panics);
                    log_throttled!(log::Level::Error, "the handler panicked in claim({identifier})");
                    return self.error(Some(&req), codes::SERVER_INTERNAL, "the handler failed");
                }
            },
        };
        match claim {
            Claim::Gateway => {}
            Claim::Observe if identifier == ident::SEND_MSG => {
                return match send_msg(&req) {
                    Ok(msg) => Action::Work(Job::Message {
                        session: me.clone(),
                        req: Box::new(handler::Request::from_wire(&req, identifier)),
                        msg: Box::new(Msg {
                            send_id: me.user.to_string(),
                            recv_id: msg.recv_id.into_owned(),
                            client_msg_id: msg.client_msg_id.into_owned(),
                            content_type: msg.content_type,
                            content: msg.content.to_owned(),
                        }),
                    }),
                    Err(e) => self.error(Some(&req), codes::ARGS, &e),
                };
            }
            Claim::Handler | Claim::Observe => {
                let req = Box::new(handler::Request::from_wire(&req, identifier));
                return Action::Work(Job::Request { session: me.clone(), req });
            }
        }
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
            ident::SUB_USER_ONLINE_STATUS => self.subscribe(me, &req),
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

    /// 2005: unsubscribe, then subscribe (a user in both lists stays subscribed), then answer each
    /// subscribed user's online platforms. All or nothing: a request that would take the session
    /// past `max_subscriptions` changes nothing.
    fn subscribe(&mut self, me: &Arc<SessionHandle>, req: &Request<'_>) -> Action {
        let sub: SubUserOnlineStatus = match protocol::data(req, "2005 subscribe") {
            Ok(s) => s,
            Err(e) => return self.error(Some(req), codes::ARGS, &e.0),
        };
        let (subscribe, unsubscribe) = match (sub.subscribe_user_ids, sub.unsubscribe_user_ids) {
            (None, None) => {
                let msg = "2005 subscribe: neither subscribeUserIDs nor unsubscribeUserIDs";
                return self.error(Some(req), codes::ARGS, msg);
            }
            (s, u) => (s.unwrap_or_default(), u.unwrap_or_default()),
        };
        if subscribe.iter().chain(&unsubscribe).any(String::is_empty) {
            return self.error(Some(req), codes::ARGS, "2005 subscribe: empty user id");
        }
        let mut seen = HashSet::with_capacity(subscribe.len());
        let wanted: Vec<&str> = subscribe.iter().map(String::as_str).filter(|u| seen.insert(*u)).collect();
        let dropped: HashSet<&str> = unsubscribe.iter().map(String::as_str).filter(|u| !seen.contains(u)).collect();

        let watching = self.watching.remove(&me.conn).unwrap_or_default();
        let find = |list: &[(Arc<str>, u64)], user: &str| list.binary_search_by(|(w, _)| (**w).cmp(user));
        let removed = dropped.iter().filter(|u| find(&watching, u).is_ok()).count();
        let added = wanted.iter().filter(|u| find(&watching, u).is_err()).count();
        let total = watching.len() - removed + added;
        if total > self.max_subscriptions {
            self.keep_watching(me, watching);
            let msg = format!(
                "2005 subscribe: the session would watch {total} users, over max_subscriptions ({})",
                self.max_subscriptions
            );
            return self.error(Some(req), codes::ARGS, &msg);
        }
        let mut watching = watching;
        for user in dropped {
            if let Ok(i) = find(&watching, user) {
                self.presence.unsubscribe(user, me);
                watching.remove(i);
            }
        }
        for &user in &wanted {
            if let Err(i) = find(&watching, user) {
                let user: Arc<str> = user.into();
                self.presence.subscribe(&user, me);
                watching.insert(i, (user, 0));
            }
        }
        // Read after subscribing, so no change is missed: one made before the read is in the
        // answer, and its push (if any) is older than the version noted here and is dropped;
        // one made after it is pushed and newer.
        let subscribers = wanted
            .iter()
            .map(|&user| {
                let (platforms, version) = self.registry.platforms_of(user);
                if let Ok(i) = find(&watching, user) {
                    watching[i].1 = version;
                }
                UserOnlineStatus { user_id: user, online_platform_ids: platforms.ids() }
            })
            .collect();
        self.keep_watching(me, watching);
        Action::Reply(protocol::response(Some(req), codes::OK, "", SubUserOnlineStatusTips { subscribers }))
    }

    fn keep_watching(&mut self, me: &SessionHandle, watching: Vec<(Arc<str>, u64)>) {
        if !watching.is_empty() {
            self.watching.insert(me.conn, watching);
        }
    }

    /// 1003: push 2001 to every session of the recipient and the sender's other sessions, then
    /// ack with the number of recipient sessions that took it.
    fn relay(&mut self, me: &SessionHandle, req: &Request<'_>) -> Action {
        let msg = match send_msg(req) {
            Ok(m) => m,
            Err(e) => return self.error(Some(req), codes::ARGS, &e),
        };
        self.next_id += 1;
        let server_msg_id = format!("{}-{}", self.id_prefix, self.next_id);
        let here = me.reactor();
        let registry = self.registry.clone();
        let mut targets = std::mem::take(&mut self.targets);
        let ack = relay_to(&registry, me, &req.operation_id, &msg, &server_msg_id, &mut targets, |t, f| {
            self.push(t, f, here)
        });
        self.targets = targets;
        inc(&self.metrics.messages_relayed);
        Action::Reply(protocol::response(Some(req), codes::OK, "", ack))
    }
}

/// The `data` of a 1003, checked: a sender and a recipient are required.
pub(crate) fn send_msg<'a>(req: &Request<'a>) -> Result<SendMsg<'a>, String> {
    if req.send_id.is_empty() {
        return Err("1003 send: missing sendID".into());
    }
    let msg: SendMsg<'a> = protocol::data(req, "1003 send").map_err(|e| e.0)?;
    if msg.recv_id.is_empty() {
        return Err("1003 send: empty recvID".into());
    }
    Ok(msg)
}

/// Relays one 1003 from `me`: builds the 2001 once and hands it to `push` for every session of
/// the recipient and the sender's other sessions. `push` is the caller's non-blocking path (a
/// reactor defers on a full inbox; a worker fails that session) and says whether the frame was
/// taken. Returns the ack, counting the recipient's sessions that took it. `targets` is scratch.
pub(crate) fn relay_to<'a>(
    registry: &Registry,
    me: &SessionHandle,
    operation_id: &str,
    msg: &'a SendMsg<'_>,
    server_msg_id: &'a str,
    targets: &mut Vec<Arc<SessionHandle>>,
    mut push: impl FnMut(&Arc<SessionHandle>, &Outgoing) -> bool,
) -> SendAck<'a> {
    let send_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let frame = Outgoing::Frame(protocol::push_frame(&me.user, operation_id, msg, server_msg_id, send_time).into());
    targets.clear();
    registry.sessions_of(&msg.recv_id, targets);
    let recipients = targets.len();
    if *msg.recv_id != *me.user {
        registry.sessions_of(&me.user, targets);
    }
    let mut delivered = 0;
    for (i, target) in targets.iter().enumerate() {
        if target.conn != me.conn && push(target, &frame) {
            delivered += usize::from(i < recipients);
        }
    }
    targets.clear();
    SendAck { server_msg_id, client_msg_id: &msg.client_msg_id, send_time, delivered }
}

/// Queues `frame` for `target` from a thread with no reactor loop (the admin API, a worker),
/// and counts the outcome like a reactor's push. A full inbox fails this session (`Busy`).
pub(crate) fn push_now(m: &Metrics, target: &SessionHandle, frame: &Outgoing) -> Result<(), NotDelivered> {
    let outcome = target.offer_now(frame);
    inc(match outcome {
        Ok(()) => &m.pushes_queued,
        Err(NotDelivered::Closing) => &m.pushes_dropped_closing,
        Err(NotDelivered::SlowConsumer) => &m.pushes_dropped_slow,
        Err(NotDelivered::Busy) => &m.pushes_dropped_busy,
    });
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::tests::{handle, mailbox};
    use crate::mailbox::Delivery;
    use crate::policy::{MultiLoginPolicy, Platform};
    use serde_json::Value;

    fn dispatcher(registry: Arc<Registry>, metrics: Arc<Metrics>, max_subscriptions: usize) -> Dispatcher {
        let presence = Arc::new(Presence::new(metrics.clone()));
        Dispatcher::new(registry, metrics, "t".into(), presence, max_subscriptions, None)
    }

    fn reply(a: Action) -> Value {
        match a {
            Action::Reply(t) | Action::ReplyThenClose(t) => serde_json::from_str(&t).unwrap(),
            Action::Work(_) => panic!("handed to a worker"),
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
        let mut d = dispatcher(registry, metrics, 1000);
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
                Delivery::Notice { .. }
                | Delivery::Last { .. }
                | Delivery::Reply { .. }
                | Delivery::Presence { .. } => None,
            })
            .collect();
        conns.sort();
        assert_eq!(conns, vec![2, 3, 4], "u2's two sessions and u1's web session, not the sender");
    }

    #[test]
    fn offline_recipient_acks_zero() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = dispatcher(Arc::new(Registry::new(metrics.clone())), metrics, 1000);
        let me = handle("u1", Platform::Ios, 1, &mb);
        let text = r#"{"reqIdentifier":1003,"sendID":"u1","data":{"recvID":"nobody","content":"x"}}"#;
        let ack = reply(d.on_text(&me, text));
        assert_eq!((ack["errCode"].as_i64(), ack["data"]["delivered"].as_i64()), (Some(0), Some(0)));
    }

    #[test]
    fn bad_requests_get_documented_codes() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = dispatcher(Arc::new(Registry::new(metrics.clone())), metrics.clone(), 1000);
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
            (r#"{"reqIdentifier":2005}"#, 1001),
            (r#"{"reqIdentifier":2005,"data":{}}"#, 1001),
            (r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":null,"unsubscribeUserIDs":null}}"#, 1001),
            (r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":["a",""]}}"#, 1001),
            (r#"{"reqIdentifier":2005,"data":{"unsubscribeUserIDs":[""]}}"#, 1001),
            (r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":[1]}}"#, 1001),
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
        let mut d = dispatcher(Arc::new(Registry::new(metrics.clone())), metrics, 1000);
        let me = handle("u1", Platform::Ios, 1, &mb);
        assert!(matches!(d.on_text(&me, r#"{"reqIdentifier":2003}"#), Action::ReplyThenClose(_)));
        let r = reply(d.on_text(&me, r#"{"reqIdentifier":2004,"data":{"isBackground":true}}"#));
        assert_eq!(r["errCode"], 0);
        assert!(me.background.load(std::sync::atomic::Ordering::Relaxed));
        assert!(matches!(d.on_text(&me, r#"{"type":"ping"}"#), Action::Reply(p) if p == protocol::PONG));
    }

    fn subscribe(d: &mut Dispatcher, me: &Arc<SessionHandle>, sub: &[&str], unsub: &[&str]) -> Value {
        let text = serde_json::json!({"reqIdentifier":2005,"msgIncr":"9","operationID":"op",
            "data":{"subscribeUserIDs":sub,"unsubscribeUserIDs":unsub}})
        .to_string();
        reply(d.on_text(me, &text))
    }

    fn watched(d: &Dispatcher, me: &SessionHandle) -> Vec<String> {
        d.watching.get(&me.conn).map_or_else(Vec::new, |w| w.iter().map(|(u, _)| u.to_string()).collect())
    }

    #[test]
    fn subscribe_answers_each_users_platforms_in_request_order_once() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        registry.register(&handle("on", Platform::Web, 1, &mb), MultiLoginPolicy::SameTerminalKick);
        registry.register(&handle("on", Platform::Ios, 2, &mb), MultiLoginPolicy::SameTerminalKick);
        let mut d = dispatcher(registry, metrics.clone(), 1000);
        let me = handle("me", Platform::Ios, 3, &mb);
        let r = subscribe(&mut d, &me, &["off", "on", "off"], &[]);
        assert_eq!(
            (r["reqIdentifier"].as_i64(), r["msgIncr"].as_str(), r["errCode"].as_i64()),
            (Some(2005), Some("9"), Some(0))
        );
        assert_eq!(
            r["data"],
            serde_json::json!({"subscribers":[{"userID":"off","onlinePlatformIDs":[]},
                                              {"userID":"on","onlinePlatformIDs":[1,5]}]})
        );
        assert_eq!(watched(&d, &me), ["off", "on"]);
        assert_eq!(metrics.snapshot().presence_subscriptions, 2);
        // Unsubscribing answers nothing, and unsubscribing a user not watched is a no-op.
        let r = subscribe(&mut d, &me, &[], &["off", "never"]);
        assert_eq!((r["errCode"].as_i64(), &r["data"]), (Some(0), &serde_json::json!({"subscribers":[]})));
        assert_eq!(watched(&d, &me), ["on"]);
        // The session ends: every subscription with it.
        d.session_ended(&me);
        assert!(d.watching.is_empty());
        assert_eq!(metrics.snapshot().presence_subscriptions, 0);
    }

    #[test]
    fn the_cap_is_all_or_nothing_and_counts_after_unsubscribing() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let mut d = dispatcher(Arc::new(Registry::new(metrics.clone())), metrics.clone(), 3);
        let me = handle("me", Platform::Ios, 1, &mb);
        assert_eq!(subscribe(&mut d, &me, &["a", "b"], &[])["errCode"], 0);
        let r = subscribe(&mut d, &me, &["c", "d"], &[]);
        assert_eq!(r["errCode"], 1001);
        assert!(r["errMsg"].as_str().unwrap().contains("max_subscriptions (3)"), "{r}");
        assert_eq!(watched(&d, &me), ["a", "b"], "nothing changed");
        assert_eq!(
            subscribe(&mut d, &me, &["a", "b", "c"], &[])["errCode"],
            0,
            "already watched ones do not count twice"
        );
        assert_eq!(subscribe(&mut d, &me, &["d"], &["a"])["errCode"], 0, "unsubscribes make room first");
        assert_eq!(watched(&d, &me), ["b", "c", "d"]);
        assert_eq!(subscribe(&mut d, &me, &["e"], &["e"])["errCode"], 1001, "in both lists: subscribed, so over");
        assert_eq!(subscribe(&mut d, &me, &["b"], &["b"])["errCode"], 0, "in both lists: stays subscribed");
        assert_eq!(watched(&d, &me), ["b", "c", "d"]);
        assert_eq!(metrics.snapshot().presence_subscriptions, 3);
        assert_eq!(metrics.snapshot().request_errors, 2);
    }

    #[test]
    fn a_presence_push_older_than_what_the_subscriber_was_told_is_dropped() {
        let (mb, _rx, _poll) = mailbox(64, 1 << 20);
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        let mut d = dispatcher(registry.clone(), metrics.clone(), 1000);
        let me = handle("s", Platform::Web, 1, &mb);
        let watched = handle("u", Platform::Ios, 2, &mb);
        let before = registry.register(&watched, MultiLoginPolicy::SameTerminalKick).version;
        let item = |version: u64| PresenceFrame { user: "u".into(), version, frame: "{}".into() };
        let r = reply(d.on_text(&me, r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":["u"]}}"#));
        assert_eq!(r["data"]["subscribers"][0]["onlinePlatformIDs"], serde_json::json!([1]));
        assert!(!d.presence_is_news(me.conn, &item(before)), "the answer already told this state");
        let (_, offline) = registry.unregister(&watched).unwrap();
        // The unregister role's push (newer) overtakes a late push of an older state.
        assert!(d.presence_is_news(me.conn, &item(offline)));
        assert!(!d.presence_is_news(me.conn, &item(before)), "older than the last delivered: stale");
        assert!(!d.presence_is_news(me.conn, &item(offline)), "a repeat is not news either");
        // After unsubscribing, nothing for that user is news, however new.
        reply(d.on_text(&me, r#"{"reqIdentifier":2005,"data":{"unsubscribeUserIDs":["u"]}}"#));
        assert!(!d.presence_is_news(me.conn, &item(offline + 10)));
        assert_eq!(metrics.snapshot().presence_stale, 4);
    }
}
