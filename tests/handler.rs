//! The embedding API: a `Handler` on the worker pool (claims, observe, raw mode, events,
//! busy, panics), and `GatewayHandle::push`/`kick`/`online` from the embedding service.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use msggate::{Claim, Config, Gateway, Handler, Msg, Platform, Reply, Request, Session};
use serde_json::{json, Value};
use tungstenite::Message;

use crate::util::{config, watchdog, Client, STEP};

const SLOW: i32 = 5000;

fn request(c: &mut Client, ident: i32, incr: &str, data: Value) {
    let user = c.user.clone();
    c.send_json(&json!({"reqIdentifier": ident, "sendID": user, "operationID": "op", "msgIncr": incr, "data": data}));
}

/// A handler whose `SLOW` requests block until the test lets them go.
struct Gate {
    entered: Mutex<mpsc::Sender<String>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Handler for Gate {
    fn claim(&self, req_identifier: i32) -> Claim {
        if req_identifier == SLOW {
            Claim::Handler
        } else {
            Claim::Gateway
        }
    }
    fn on_request(&self, _s: &Session, req: &Request) -> Reply {
        let name = std::thread::current().name().unwrap_or_default().to_owned();
        self.entered.lock().unwrap().send(req.msg_incr.clone()).unwrap();
        // Blocks like a slow database write would; bounded so a broken test cannot hang.
        let released = self.release.lock().unwrap().recv_timeout(4 * STEP).is_ok();
        Reply::with_data(&json!({"thread": name, "released": released}))
    }
}

fn gate() -> (Gate, mpsc::Receiver<String>, mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    (Gate { entered: Mutex::new(entered_tx), release: Mutex::new(release_rx) }, entered_rx, release_tx)
}

#[test]
fn a_blocking_handler_does_not_delay_pings_handshakes_or_other_users_relays() {
    watchdog(6 * STEP, || {
        let (handler, entered, release) = gate();
        let gw = Gateway::start_with(config(), handler).unwrap();
        let addr = gw.local_addr();
        let mut slow = Client::connect(addr, "slow", 1);
        request(&mut slow, SLOW, "s1", Value::Null);
        assert_eq!(entered.recv_timeout(STEP).unwrap(), "s1", "the handler is running and blocked");

        // While it blocks: a fresh handshake, a relay between two other users, a text ping
        // and a WebSocket ping on the blocked user's own session all go through at once.
        let started = Instant::now();
        let mut a = Client::connect(addr, "a", 1);
        let mut b = Client::connect(addr, "b", 1);
        let incr = a.send_msg("b", "while the handler blocks");
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(b.await_push()["content"], "while the handler blocks");
        slow.send_json(&json!({"type": "ping"}));
        assert_eq!(slow.recv_until(|v| v["type"] == "pong")["type"], "pong");
        slow.ws.send(Message::Ping("p".into())).unwrap();
        loop {
            match slow.recv() {
                Message::Pong(p) if p.as_ref() == b"p" => break,
                Message::Text(t) => panic!("unexpected frame before the pong: {t}"),
                _ => {}
            }
        }
        let other_work = started.elapsed();

        release.send(()).unwrap();
        let reply = slow.recv_until(|v| v["msgIncr"] == "s1");
        assert_eq!((reply["reqIdentifier"].as_i64(), reply["errCode"].as_i64()), (Some(SLOW as i64), Some(0)));
        assert_eq!(reply["operationID"], "op");
        assert_eq!(reply["data"]["released"], true);
        let thread = reply["data"]["thread"].as_str().unwrap();
        assert!(thread.contains("-worker-"), "handlers run on the pool's threads, not {thread}");
        assert!(other_work < STEP, "other work took {other_work:?} while the handler blocked");
        gw.shutdown();
    });
}

#[test]
fn worker_queue_full_answers_server_busy_at_once() {
    watchdog(6 * STEP, || {
        let (handler, entered, release) = gate();
        let gw = Gateway::start_with(Config { workers: 1, worker_queue: 1, ..config() }, handler).unwrap();
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        // The connect event shares the queue: let the worker take it first. (The client can see
        // its 101 before the reactor queues the event, so an empty queue alone proves nothing.)
        crate::util::eventually(STEP, "connect event taken", || {
            gw.stats().handler_calls == 1 && gw.worker_depths() == vec![(0, 1)]
        });
        request(&mut c, SLOW, "r1", Value::Null); // taken by the only worker, which blocks
        assert_eq!(entered.recv_timeout(STEP).unwrap(), "r1");
        request(&mut c, SLOW, "r2", Value::Null); // fills the queue of capacity 1
        request(&mut c, SLOW, "r3", Value::Null); // nowhere to go
        let busy = c.recv_until(|v| v["msgIncr"] == "r3");
        assert_eq!(busy["errCode"], 503, "{busy}");
        assert_eq!(busy["reqIdentifier"], SLOW);
        assert!(busy["errMsg"].as_str().unwrap().contains("busy"));
        assert_eq!(gw.stats().worker_queue_full, 1);
        assert_eq!(gw.worker_depths(), vec![(1, 1)]);
        let s = gw.stats();
        assert_eq!((s.worker_queue_depth, s.stalled_threads), (1, 0), "stats carry the queue states");

        release.send(()).unwrap();
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "r1")["errCode"], 0);
        assert_eq!(entered.recv_timeout(STEP).unwrap(), "r2", "the queued request is served next");
        release.send(()).unwrap();
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "r2")["errCode"], 0);
        gw.shutdown();
    });
}

/// Persists every message before it is relayed; refuses content "forbidden".
#[derive(Default)]
struct Store {
    messages: Mutex<Vec<(String, String, String)>>,
}

impl Handler for Store {
    fn claim(&self, req_identifier: i32) -> Claim {
        if req_identifier == msggate::ident::SEND_MSG {
            Claim::Observe
        } else {
            Claim::Gateway
        }
    }
    fn on_message(&self, s: &Session, msg: &Msg) -> Result<(), Reply> {
        if msg.content() == r#""forbidden""# {
            return Err(Reply::error(1004, "refused by policy"));
        }
        assert_eq!(s.user(), msg.send_id);
        self.messages.lock().unwrap().push((msg.send_id.clone(), msg.recv_id.clone(), msg.content().to_owned()));
        Ok(())
    }
}

#[test]
fn an_observing_handler_sees_each_message_before_it_is_relayed_and_may_refuse_it() {
    watchdog(4 * STEP, || {
        let store = Arc::new(Store::default());
        let gw = Gateway::start_with(config(), store.clone()).unwrap();
        let (mut a, mut b) = (Client::connect(gw.local_addr(), "a", 1), Client::connect(gw.local_addr(), "b", 1));
        let incr = a.send_msg("b", "first");
        let ack = a.await_reply(&incr);
        assert_eq!((ack["errCode"].as_i64(), ack["data"]["delivered"].as_i64()), (Some(0), Some(1)), "{ack}");
        assert_eq!(b.await_push()["content"], "first");
        assert_eq!(store.messages.lock().unwrap().clone(), vec![("a".into(), "b".into(), r#""first""#.into())]);

        let refused = a.send_msg("b", "forbidden");
        let reply = a.await_reply(&refused);
        assert_eq!((reply["errCode"].as_i64(), reply["errMsg"].as_str()), (Some(1004), Some("refused by policy")));
        // Nothing was relayed: the next message is the next push b sees.
        let incr = a.send_msg("b", "third");
        a.await_reply(&incr);
        assert_eq!(b.await_push()["content"], "third");
        assert_eq!(store.messages.lock().unwrap().len(), 2);
        // Malformed sends are answered on the reactor and never reach the handler.
        request(&mut a, 1003, "bad", json!({"content": 1}));
        assert_eq!(a.await_reply("bad")["errCode"], 1001);
        assert_eq!(store.messages.lock().unwrap().len(), 2);
        gw.shutdown();
    });
}

/// Records connect and disconnect events.
struct Events(Mutex<mpsc::Sender<String>>);

impl Handler for Events {
    fn on_connect(&self, s: &Session) {
        self.0.lock().unwrap().send(format!("connect {} {}", s.user(), s.platform().id())).unwrap();
    }
    fn on_disconnect(&self, s: &Session) {
        self.0.lock().unwrap().send(format!("disconnect {} {}", s.user(), s.conn())).unwrap();
    }
}

#[test]
fn connect_and_disconnect_events_reach_the_handler() {
    watchdog(4 * STEP, || {
        let (tx, rx) = mpsc::channel();
        let gw = Gateway::start_with(config(), Events(Mutex::new(tx))).unwrap();
        let c = Client::connect(gw.local_addr(), "u1", 2);
        assert_eq!(rx.recv_timeout(STEP).unwrap(), "connect u1 2");
        let conn = gw.sessions("u1")[0].conn;
        c.close();
        assert_eq!(rx.recv_timeout(STEP).unwrap(), format!("disconnect u1 {conn}"));
        // A kicked session is announced and ended too.
        let _old = Client::connect(gw.local_addr(), "u2", 1);
        assert_eq!(rx.recv_timeout(STEP).unwrap(), "connect u2 1");
        let _new = Client::connect(gw.local_addr(), "u2", 1);
        let mut events = [rx.recv_timeout(STEP).unwrap(), rx.recv_timeout(STEP).unwrap()];
        events.sort();
        assert!(events[0] == "connect u2 1" && events[1].starts_with("disconnect u2 "), "{events:?}");
        gw.shutdown();
    });
}

#[test]
fn raw_mode_echoes_text_and_binary_in_order_without_tokens() {
    watchdog(4 * STEP, || {
        let echo = msggate::raw(|_s, frame| Some(frame));
        let gw = Gateway::start_with(Config { require_token: false, ..config() }, echo).unwrap();
        let mut c = Client::connect_query(gw.local_addr(), "", "anonymous").expect("no token needed");
        for i in 0..200 {
            if i % 2 == 0 {
                c.ws.send(Message::text(format!("t{i}"))).unwrap();
            } else {
                c.ws.send(Message::binary(vec![i as u8; i])).unwrap();
            }
        }
        for i in 0..200 {
            match c.recv() {
                Message::Text(t) => assert_eq!(t.as_str(), format!("t{i}")),
                Message::Binary(b) => assert_eq!(b.as_ref(), vec![i as u8; i].as_slice(), "frame {i}"),
                other => panic!("frame {i}: {other:?}"),
            }
        }
        let online = gw.registry_len();
        assert_eq!(online, 1, "an anonymous session is still a registered session");
        c.close();
        gw.shutdown();
    });
}

/// Panics on request 5001; answers 5002.
struct Fragile;

impl Handler for Fragile {
    fn claim(&self, _req_identifier: i32) -> Claim {
        Claim::Handler
    }
    fn on_request(&self, _s: &Session, req: &Request) -> Reply {
        if req.req_identifier == 5001 {
            panic!("a bug in the embedding service");
        }
        match req.data::<Value>() {
            Ok(v) => Reply::with_data(&v),
            Err(reply) => reply,
        }
    }
}

#[test]
fn a_panicking_handler_answers_500_and_its_worker_lives_on() {
    watchdog(4 * STEP, || {
        let gw = Gateway::start_with(Config { workers: 1, ..config() }, Fragile).unwrap();
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        request(&mut c, 5001, "boom", Value::Null);
        let reply = c.recv_until(|v| v["msgIncr"] == "boom");
        assert_eq!(reply["errCode"], 500, "{reply}");
        request(&mut c, 5002, "after", json!({"x": 1}));
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "after")["data"], json!({"x": 1}));
        request(&mut c, 5002, "nodata", Value::Null);
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "nodata")["errCode"], 1001);
        assert_eq!(gw.stats().handler_panics, 1);
        gw.shutdown();
    });
}

#[test]
fn push_reports_each_session_and_kick_sends_2002_then_closes() {
    watchdog(4 * STEP, || {
        let gw = Gateway::start(config()).unwrap();
        let mut ios = Client::connect(gw.local_addr(), "u1", 1);
        let mut web = Client::connect(gw.local_addr(), "u1", 5);
        let msg = json!({"sendID": "system", "recvID": "u1", "contentType": 101, "content": {"n": 1}});
        let reports = gw.push_many(&["u1", "nobody"], &msg).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!((reports[0].user.as_str(), reports[0].delivered()), ("u1", 2));
        assert!(reports[1].sessions.is_empty());
        assert_eq!(ios.await_push(), msg, "the message arrives untouched");
        assert_eq!(web.await_push(), msg);
        assert!(gw.push("u1", &json!([1, 2])).is_err(), "a message must be a JSON object");
        assert!(gw.push("", &msg).is_err(), "an empty user id is refused");

        let online = gw.online(&["u1", "nobody"]);
        assert_eq!(online[0].sessions.len(), 2);
        assert!(online[1].sessions.is_empty());

        let kicked = gw.kick("u1", Some(Platform::Web));
        assert_eq!(kicked.iter().map(|s| s.platform).collect::<Vec<_>>(), vec![5]);
        let notice = web.recv_until(|v| v["reqIdentifier"] == 2002);
        assert_eq!(notice["errCode"], 0);
        let close = web.expect_close().expect("a close frame");
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "kicked"));
        crate::util::eventually(STEP, "web unregistered", || gw.sessions("u1").len() == 1);
        assert!(gw.kick("u1", Some(Platform::Web)).is_empty(), "nothing left to kick there");
        // The iOS session is untouched and still served.
        let incr = ios.send_msg("u1", "still here");
        assert_eq!(ios.await_reply(&incr)["errCode"], 0);
        assert_eq!(gw.stats().kicks_admin, 1);
        gw.shutdown();
    });
}

/// Shuts the gateway down from inside a handler, on a worker thread.
struct Quitter;

impl Handler for Quitter {
    fn claim(&self, _req_identifier: i32) -> Claim {
        Claim::Handler
    }
    fn on_request(&self, s: &Session, _req: &Request) -> Reply {
        s.gateway().shutdown();
        Reply::ok()
    }
}

#[test]
fn shutdown_from_inside_a_handler_does_not_deadlock() {
    watchdog(4 * STEP, || {
        let gw = Gateway::start_with(config(), Quitter).unwrap();
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        request(&mut c, 5000, "quit", Value::Null);
        let close = c.expect_close().expect("a close frame");
        assert_eq!(u16::from(close.code), 1001, "closed for shutdown");
        let summary = gw.shutdown(); // returns the summary of the shutdown the handler ran
        assert_eq!(summary.sessions_closed, 1);
    });
}

#[test]
fn dropping_the_last_handle_stops_a_gateway_whose_handler_is_idle() {
    watchdog(4 * STEP, || {
        let gw = Gateway::start_with(config(), msggate::on(SLOW, |_, _| Reply::ok())).unwrap();
        let addr = gw.local_addr();
        let mut c = Client::connect(addr, "u1", 1);
        request(&mut c, SLOW, "x", Value::Null);
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "x")["errCode"], 0);
        drop(gw); // workers hold no strong handle: this stops and joins everything
        assert_eq!(u16::from(c.expect_close().expect("close").code), 1001);
        assert_eq!(crate::util::listener_fds(addr.port()), 0, "nothing listens any more");
    });
}

/// Blocks on the gate, then shuts the gateway down from the worker.
struct LateQuitter(Gate);

impl Handler for LateQuitter {
    fn claim(&self, req_identifier: i32) -> Claim {
        self.0.claim(req_identifier)
    }
    fn on_request(&self, s: &Session, req: &Request) -> Reply {
        self.0.on_request(s, req);
        s.gateway().shutdown();
        Reply::ok()
    }
}

#[test]
fn a_handler_calling_shutdown_while_another_thread_shuts_down_does_not_deadlock() {
    watchdog(6 * STEP, || {
        let (gate, entered, release) = gate();
        let gw = Gateway::start_with(config(), LateQuitter(gate)).unwrap();
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        request(&mut c, SLOW, "q", Value::Null);
        entered.recv_timeout(STEP).unwrap();
        // This shutdown closes the session, then waits for the worker, which is in the handler.
        let closer = {
            let gw = gw.clone();
            std::thread::spawn(move || gw.shutdown())
        };
        assert_eq!(u16::from(c.expect_close().expect("close").code), 1001, "shutdown is under way");
        release.send(()).unwrap(); // the handler now calls shutdown too, from the worker
        let summary = closer.join().unwrap();
        assert_eq!(summary.sessions_closed, 1);
    });
}

/// Panics in `claim` for 666 (a table indexed by the client's identifier, say).
struct BadClaim;

impl Handler for BadClaim {
    fn claim(&self, req_identifier: i32) -> Claim {
        assert_ne!(req_identifier, 666, "a bug in the embedding service's claim");
        Claim::Gateway
    }
}

#[test]
fn a_panicking_claim_answers_500_and_the_reactor_lives_on() {
    watchdog(4 * STEP, || {
        let gw = Gateway::start_with(Config { io_threads: 1, ..config() }, BadClaim).unwrap();
        let (mut a, mut b) = (Client::connect(gw.local_addr(), "a", 1), Client::connect(gw.local_addr(), "b", 1));
        request(&mut a, 666, "bad", Value::Null);
        assert_eq!(a.recv_until(|v| v["msgIncr"] == "bad")["errCode"], 500);
        let incr = a.send_msg("b", "after the panic");
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(b.await_push()["content"], "after the panic");
        let _c = Client::connect(gw.local_addr(), "c", 1); // handshakes still served
        let s = gw.stats();
        assert_eq!((s.handler_panics, s.reactor_panics), (1, 0));
        gw.shutdown();
    });
}

#[test]
fn disconnect_events_are_not_lost_to_a_full_worker_queue_or_to_shutdown() {
    watchdog(6 * STEP, || {
        for drop_it in [false, true] {
            let (tx, rx) = mpsc::channel();
            let cfg = Config { workers: 1, worker_queue: 1, ..config() };
            let gw = Gateway::start_with(cfg, Events(Mutex::new(tx))).unwrap();
            let clients: Vec<Client> = (0..12).map(|i| Client::connect(gw.local_addr(), &format!("u{i}"), 1)).collect();
            if drop_it {
                drop(gw); // the gateway stops with its last handle
            } else {
                gw.shutdown();
            }
            let events: Vec<String> = rx.try_iter().collect();
            let (connects, disconnects) = (
                events.iter().filter(|e| e.starts_with("connect")).count(),
                events.iter().filter(|e| e.starts_with("disconnect")).count(),
            );
            assert_eq!((connects, disconnects), (12, 12), "drop: {drop_it}: {events:?}");
            drop(clients);
        }
    });
}

#[test]
fn a_raw_session_waiting_for_a_slow_handler_is_not_closed_as_idle() {
    watchdog(4 * STEP, || {
        let slow_echo = msggate::raw(|_, frame| {
            std::thread::sleep(std::time::Duration::from_millis(900)); // slower than idle_timeout
            Some(frame)
        });
        let cfg = Config {
            require_token: false,
            idle_timeout: std::time::Duration::from_millis(300),
            ping_interval: std::time::Duration::from_millis(100),
            ..config()
        };
        let gw = Gateway::start_with(cfg, slow_echo).unwrap();
        let mut c = Client::connect_query(gw.local_addr(), "", "raw").unwrap();
        c.ws.send(Message::text("slow")).unwrap();
        loop {
            match c.recv() {
                Message::Text(t) => break assert_eq!(t.as_str(), "slow"),
                Message::Close(f) => panic!("closed while the handler worked: {f:?}"),
                _ => {} // pings
            }
        }
        assert_eq!(gw.stats().idle_closes, 0);
        gw.shutdown();
    });
}

#[test]
fn a_logout_right_after_an_observed_message_still_gets_the_message_acked() {
    watchdog(4 * STEP, || {
        struct SlowStore;
        impl Handler for SlowStore {
            fn claim(&self, req_identifier: i32) -> Claim {
                if req_identifier == 1003 {
                    Claim::Observe
                } else {
                    Claim::Gateway
                }
            }
            fn on_message(&self, _s: &Session, _m: &Msg) -> Result<(), Reply> {
                std::thread::sleep(std::time::Duration::from_millis(200)); // a slow store
                Ok(())
            }
        }
        let gw = Gateway::start_with(config(), SlowStore).unwrap();
        let (mut a, mut b) = (Client::connect(gw.local_addr(), "a", 1), Client::connect(gw.local_addr(), "b", 1));
        let incr = a.send_msg("b", "last words");
        request(&mut a, 2003, "bye", Value::Null);
        assert_eq!(a.await_reply("bye")["errCode"], 0);
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1, "the ack is not lost to the logout");
        assert_eq!(u16::from(a.expect_close().expect("close").code), 1000);
        assert_eq!(b.await_push()["content"], "last words");
        assert_eq!(gw.stats().replies_dropped, 0);
        gw.shutdown();
    });
}

#[test]
fn a_handler_reply_larger_than_the_outbound_budget_is_a_500_not_a_slow_consumer_close() {
    watchdog(4 * STEP, || {
        let huge = msggate::on(SLOW, |_, _| Reply::with_data(&"x".repeat(300 * 1024)));
        let gw = Gateway::start_with(config(), huge).unwrap();
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        request(&mut c, SLOW, "big", Value::Null);
        let reply = c.recv_until(|v| v["msgIncr"] == "big");
        assert_eq!(reply["errCode"], 500, "{reply}");
        request(&mut c, 2004, "still", json!({"isBackground": false}));
        assert_eq!(c.recv_until(|v| v["msgIncr"] == "still")["errCode"], 0, "the session is still served");
        assert_eq!(gw.stats().slow_consumer_closes, 0);
        gw.shutdown();
    });
}

/// `on_connect` blocks for even connection ids (worker 0 of 2) until released; serves 5000.
struct SlowEvenConnects {
    connected: Mutex<mpsc::Sender<u64>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Handler for SlowEvenConnects {
    fn claim(&self, req_identifier: i32) -> Claim {
        if req_identifier == SLOW {
            Claim::Handler
        } else {
            Claim::Gateway
        }
    }
    fn on_request(&self, _s: &Session, _req: &Request) -> Reply {
        Reply::ok()
    }
    fn on_connect(&self, s: &Session) {
        if s.conn().is_multiple_of(2) {
            let _ = self.release.lock().unwrap().recv_timeout(4 * STEP);
        }
        self.connected.lock().unwrap().send(s.conn()).unwrap();
    }
}

#[test]
fn a_slow_worker_does_not_make_requests_for_other_workers_busy() {
    watchdog(6 * STEP, || {
        let (connected_tx, connected) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let handler = SlowEvenConnects { connected: Mutex::new(connected_tx), release: Mutex::new(release_rx) };
        let cfg = Config { io_threads: 1, workers: 2, worker_queue: 1, ..config() };
        let gw = Gateway::start_with(cfg, handler).unwrap();
        // Connections 1..=6: worker 0 blocks on 2, holds 4 in its queue and 6 in the reactor's
        // backlog for it; worker 1 takes 1, 3 and 5.
        let mut clients: Vec<Client> = (1..=6).map(|i| Client::connect(gw.local_addr(), &format!("u{i}"), 1)).collect();
        let mut odd: Vec<u64> = (0..3).map(|_| connected.recv_timeout(STEP).unwrap()).collect();
        odd.sort();
        assert_eq!(odd, [1, 3, 5], "worker 1 is not held up by worker 0");
        let conn1 = gw.sessions("u1")[0].conn;
        assert_eq!(conn1 % 2, 1);
        request(&mut clients[0], SLOW, "free", Value::Null);
        let reply = clients[0].recv_until(|v| v["msgIncr"] == "free");
        assert_eq!(reply["errCode"], 0, "a request for the idle worker is served: {reply}");
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        gw.shutdown();
    });
}
