//! The admin HTTP API through real HTTP (a tiny client below) and real WebSocket clients, on
//! port 0: every endpoint's success and error cases, bearer auth, `/metrics` through a real
//! Prometheus parser, two gateways in one process, `/healthz` during a shutdown, and the
//! `msggate serve` admin line. Every wait is a bounded read or an `eventually`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use msggate::{Config, Error, Gateway, GatewayHandle};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::proc::{msggate, Proc, PATIENCE};
use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "adm1n-t0ken";

fn get(addr: SocketAddr, target: &str) -> Http {
    http(addr, "GET", target, &[], None)
}

fn post(addr: SocketAddr, target: &str, body: &Value) -> Http {
    http(addr, "POST", target, &[], Some(body.to_string().as_bytes()))
}

/// A gateway with the admin API on 127.0.0.1:0.
fn start_admin(tweak: impl FnOnce(&mut Config)) -> (GatewayHandle, SocketAddr) {
    let gw = start(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    });
    let admin = gw.admin_addr().expect("admin API on");
    (gw, admin)
}

#[test]
fn admin_healthz_roles_and_routing_errors() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        let r = get(admin, "/healthz");
        assert_eq!((r.status, r.body.trim()), (200, "ok"), "{r:?}");

        get(admin, "/nope").assert_error(404, 404);
        get(admin, "/").assert_error(404, 404);
        let r = http(admin, "POST", "/healthz", &[], Some(b""));
        r.assert_error(405, 405);
        assert_eq!(r.headers["allow"], "GET");
        let r = get(admin, "/push");
        r.assert_error(405, 405);
        assert_eq!(r.headers["allow"], "POST");
        http(admin, "DELETE", "/kick", &[], None).assert_error(405, 405);

        let _c = Client::connect(gw.local_addr(), "r1", 1);
        let roles = get(admin, "/debug/roles");
        assert_eq!(roles.status, 200, "{roles:?}");
        let v = roles.json();
        assert_eq!(v["errCode"], 0);
        let names: Vec<&str> =
            v["data"]["threads"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        let port = gw.local_addr().port();
        for role in ["acceptor", "register", "unregister", "reactor-0", "reactor-1"] {
            assert!(names.contains(&format!("msggate-{port}-{role}").as_str()), "{role} missing: {v}");
        }
        let register = &v["data"]["threads"][1];
        assert_eq!(register["queueCapacity"], gw.config().register_queue, "{v}");
        for key in ["progress", "doing", "queueDepth", "backlog", "fallbacks", "lastProgressAgeMs", "stalled"] {
            assert!(!register[key].is_null(), "{key} missing: {register}");
        }
        let owned: u64 =
            v["data"]["reactors"].as_array().unwrap().iter().map(|r| r["connections"].as_u64().unwrap()).sum();
        assert_eq!(owned, 1, "one client, owned by one reactor: {v}");
        assert_eq!(v["data"]["shuttingDown"], false);
    });
}

#[test]
fn admin_push_reaches_websocket_clients_untouched() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        let mut ios = Client::connect(gw.local_addr(), "alice", 1);
        let mut web = Client::connect(gw.local_addr(), "alice", 5);
        let data = json!({"sendID": "system", "recvID": "alice", "contentType": 101, "content": "héllo \"admin\"",
                          "ex": {"nested": [1, 2.5, null, true]}, "seq": 9007199254740991u64});
        let r = post(admin, "/push", &json!({"userIDs": ["alice", "nobody"], "data": data}));
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!((v["errCode"].clone(), v["errMsg"].clone()), (json!(0), json!("")));
        assert_eq!(v["data"][0]["userID"], "alice");
        let mut resp = v["data"][0]["resp"].as_array().unwrap().clone();
        resp.sort_by_key(|s| s["platformID"].as_u64());
        assert_eq!(resp.len(), 2, "{v}");
        for (s, platform) in resp.iter().zip([1, 5]) {
            assert_eq!(s["platformID"], platform, "{v}");
            assert_eq!((s["resultCode"].clone(), s["result"].clone()), (json!(0), json!("delivered")), "{v}");
            assert!(s["connID"].as_u64().is_some(), "{v}");
        }
        assert_eq!(v["data"][1], json!({"userID": "nobody", "resp": []}));
        assert_eq!(ios.await_push(), data, "the 2001 carries data untouched");
        assert_eq!(web.await_push(), data);
        assert_eq!(gw.stats().pushes_queued, 2);

        // Byte for byte: key order and number spelling as sent.
        let raw = r#"{"z":1,"a":1.10,"m":{"y":"é","b":[]}}"#;
        let body = format!(r#"{{"userIDs":["alice"],"data":{raw}}}"#);
        let r = http(admin, "POST", "/push", &[], Some(body.as_bytes()));
        assert_eq!(r.json()["data"][0]["resp"][0]["result"], "delivered", "{r:?}");
        let frame = loop {
            match ios.recv() {
                tungstenite::Message::Text(t) => break t.to_string(),
                _ => continue,
            }
        };
        assert!(frame.contains(&format!(r#""msgs":[{raw}]"#)), "{frame}");
        web.await_push();

        // Bad requests: nothing pushed, a JSON error each.
        let bad = [
            json!({"userIDs": ["alice"], "data": "not an object"}),
            json!({"userIDs": ["alice"], "data": [1]}),
            json!({"userIDs": [], "data": {}}),
            json!({"userIDs": [""], "data": {}}),
            json!({"userIDs": ["alice"]}),
            json!({"userIDs": ["alice"], "data": {}, "extra": 1}),
            json!({"userIDs": "alice", "data": {}}),
            json!(["alice"]),
        ];
        for body in bad {
            post(admin, "/push", &body).assert_error(400, 1001);
        }
        http(admin, "POST", "/push", &[], Some(b"{not json")).assert_error(400, 1001);
        http(admin, "POST", "/push", &[], None).assert_error(400, 1001);
        let huge = vec![b' '; (1 << 20) + 1];
        http(admin, "POST", "/push", &[], Some(&huge)).assert_error(413, 413);
        assert_eq!(gw.stats().pushes_queued, 4, "no bad request pushed anything");
        // The admin API is still serving.
        assert_eq!(get(admin, "/healthz").status, 200);
    });
}

#[test]
fn admin_kick_sends_2002_then_closes_1008() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        let mut ios = Client::connect(gw.local_addr(), "bob", 1);
        let _android = Client::connect(gw.local_addr(), "bob", 2);

        let r = post(admin, "/kick", &json!({"userIDs": ["bob", "ghost"], "platformID": 1}));
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["errCode"], 0);
        assert_eq!(v["data"][0]["userID"], "bob");
        let kicked = v["data"][0]["kicked"].as_array().unwrap();
        assert_eq!(kicked.len(), 1, "{v}");
        assert_eq!(kicked[0]["platformID"], 1);
        assert_eq!(v["data"][1], json!({"userID": "ghost", "kicked": []}));

        let frame = ios.recv_until(|f| f["reqIdentifier"] == 2002);
        assert_eq!(frame["reqIdentifier"], 2002);
        let close = ios.expect_close().expect("a close frame with a code");
        assert_eq!(close.code, CloseCode::Policy, "{close:?}");
        eventually(STEP, "only bob's Android session left", || {
            let s = gw.sessions("bob");
            s.len() == 1 && s[0].platform == 2
        });
        let online = get(admin, "/online?userID=bob").json();
        let detail = online["data"][0]["detailPlatformStatus"].as_array().unwrap().clone();
        assert_eq!((detail.len(), detail[0]["platformID"].clone()), (1, json!(2)), "{online}");
        assert_eq!(gw.stats().kicks_admin, 1);

        for body in [
            json!({"userIDs": ["bob"], "platformID": 0}),
            json!({"userIDs": ["bob"], "platformID": 12}),
            json!({"userIDs": ["bob"], "platformID": "1"}),
            json!({"userIDs": []}),
            json!({"userID": ["bob"]}),
        ] {
            post(admin, "/kick", &body).assert_error(400, 1001);
        }
        // Without platformID every session goes.
        let v = post(admin, "/kick", &json!({"userIDs": ["bob"]})).json();
        assert_eq!(v["data"][0]["kicked"].as_array().unwrap().len(), 1, "{v}");
        eventually(STEP, "bob offline", || gw.sessions("bob").is_empty());
    });
}

#[test]
fn admin_online_before_and_after() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        let offline = json!({"userID": "carol", "status": "offline", "detailPlatformStatus": []});
        let v = get(admin, "/online?userID=carol").json();
        assert_eq!(v, json!({"errCode": 0, "errMsg": "", "data": [offline]}));

        let c = Client::connect(gw.local_addr(), "carol", 1);
        let v = get(admin, "/online?userID=carol&userID=dave").json();
        let carol = &v["data"][0];
        assert_eq!((carol["userID"].clone(), carol["status"].clone()), (json!("carol"), json!("online")), "{v}");
        let detail = &carol["detailPlatformStatus"][0];
        assert_eq!(detail["platformID"], 1);
        assert_eq!(detail["platform"], "IOS");
        assert_eq!(detail["isBackground"], false);
        assert_eq!(detail["connID"], gw.sessions("carol")[0].conn);
        assert_eq!(v["data"][1]["status"], "offline");

        // Percent-encoded ids are decoded.
        let v = get(admin, "/online?userID=%63arol").json();
        assert_eq!(v["data"][0]["status"], "online", "{v}");

        c.close();
        eventually(STEP, "carol offline", || get(admin, "/online?userID=carol").json()["data"][0] == offline);

        get(admin, "/online").assert_error(400, 1001);
        get(admin, "/online?user=carol").assert_error(400, 1001);
        get(admin, "/online?userID=").assert_error(400, 1001);
        get(admin, "/online?userID=%zz").assert_error(400, 1001);
    });
}

#[test]
fn admin_token_guards_every_endpoint_but_healthz() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|c| c.admin_token = Some(TOKEN.into()));
        let good = format!("Bearer {TOKEN}");
        let good = [("Authorization", good.as_str())];
        let wrong = [("Authorization", "Bearer nope")];
        let basic = [("Authorization", "Basic YWRtaW46YWRtaW4=")];
        for (method, target, body) in [
            ("GET", "/metrics", None),
            ("GET", "/debug/roles", None),
            ("GET", "/online?userID=a", None),
            ("POST", "/push", Some(br#"{"userIDs":["a"],"data":{}}"#.as_slice())),
            ("POST", "/kick", Some(br#"{"userIDs":["a"]}"#.as_slice())),
        ] {
            for headers in [&[][..], &wrong, &basic] {
                let r = http(admin, method, target, headers, body);
                r.assert_error(401, 1002);
                assert!(r.headers["www-authenticate"].starts_with("Bearer"), "{r:?}");
            }
            let r = http(admin, method, target, &good, body);
            assert_eq!(r.status, 200, "{method} {target}: {r:?}");
        }
        // /healthz stays open for probes; an unknown path reveals nothing without the token.
        assert_eq!(get(admin, "/healthz").status, 200);
        get(admin, "/nope").assert_error(401, 1002);
        http(admin, "GET", "/nope", &good, None).assert_error(404, 404);
        // A wrong method is only reported to an authenticated caller too.
        get(admin, "/push").assert_error(401, 1002);
        http(admin, "GET", "/push", &good, None).assert_error(405, 405);
        drop(gw);
    });
}

#[test]
fn admin_metrics_parse_as_prometheus_text_and_move() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|c| c.register_queue = 7);
        let before = Scrape::take(admin, &[]);
        assert_eq!(before.get("msggate_sessions", None), 0.0);
        assert_eq!(before.get("msggate_queue_capacity", Some(("queue", "register"))), 7.0);
        assert_eq!(before.get("msggate_queue_depth", Some(("queue", "unregister"))), 0.0);
        assert!(before.get("msggate_process_threads", None) >= 5.0);
        assert!(before.get("msggate_process_resident_memory_bytes", None) > 0.0);
        for reason in ["rejected_args", "rejected_token", "timeout", "not_websocket", "refused_max_connections"] {
            assert_eq!(before.get("msggate_handshake_failures_total", Some(("reason", reason))), 0.0);
        }
        assert_eq!(before.get("msggate_thread_stalled", Some(("thread", "register"))), 0.0);
        assert_eq!(before.get("msggate_kicked_total", Some(("by", "same-terminal-kick"))), 0.0);

        let mut a = Client::connect(gw.local_addr(), "m1", 1);
        let mut b = Client::connect(gw.local_addr(), "m2", 1);
        let incr = a.send_msg("m2", "hi");
        a.await_reply(&incr);
        b.await_push();
        let refused = Client::connect_query(gw.local_addr(), "sendID=x&platformID=1&operationID=o", "x");
        assert!(refused.is_err(), "no token: refused");
        // A second iOS login of m1 kicks the first (same-terminal-kick).
        let _a2 = Client::connect(gw.local_addr(), "m1", 1);
        a.expect_close();
        post(admin, "/push", &json!({"userIDs": ["m2"], "data": {"n": 1}}));
        b.await_push();

        eventually(STEP, "the kicked session is gone", || gw.stats().sessions == 2);
        let after = Scrape::take(admin, &[]);
        assert_eq!(after.get("msggate_accepted_total", None), 4.0);
        assert_eq!(after.get("msggate_sessions", None), 2.0);
        assert_eq!(after.get("msggate_online_users", None), 2.0);
        assert_eq!(after.get("msggate_messages_relayed_total", None), 1.0);
        assert_eq!(after.get("msggate_pushes_queued_total", None), 2.0);
        assert!(after.get("msggate_frames_in_total", None) >= 1.0);
        assert_eq!(after.get("msggate_handshake_failures_total", Some(("reason", "rejected_args"))), 1.0);
        assert_eq!(after.get("msggate_kicked_total", Some(("by", "same-terminal-kick"))), 1.0);
        assert_eq!(after.get("msggate_kicked_total", Some(("by", "admin"))), 0.0);
        assert_eq!(after.sum("msggate_reactor_connections"), 2.0);
        assert_eq!(after.get("msggate_stalls_total", None), 0.0);
        // Thread rows are the watchdog's, refreshed once per check (every second here).
        eventually(STEP, "the register role's progress shows three registrations", || {
            Scrape::take(admin, &[]).get("msggate_thread_progress_total", Some(("thread", "register"))) >= 3.0
        });
    });
}

#[test]
fn admin_apis_of_two_gateways_in_one_process_are_separate() {
    watchdog(LIMIT, || {
        let (one, admin_one) = start_admin(|_| {});
        let (two, admin_two) = start_admin(|_| {});
        assert_ne!(admin_one, admin_two);
        let _c = Client::connect(one.local_addr(), "shared-name", 1);
        let status = |admin| get(admin, "/online?userID=shared-name").json()["data"][0]["status"].clone();
        assert_eq!(status(admin_one), "online");
        assert_eq!(status(admin_two), "offline");
        let pushed = post(admin_two, "/push", &json!({"userIDs": ["shared-name"], "data": {"x": 1}})).json();
        assert_eq!(pushed["data"][0]["resp"], json!([]), "gateway two has no such session");
        let kicked = post(admin_two, "/kick", &json!({"userIDs": ["shared-name"]})).json();
        assert_eq!(kicked["data"][0]["kicked"], json!([]));
        assert_eq!(Scrape::take(admin_one, &[]).get("msggate_sessions", None), 1.0);
        assert_eq!(Scrape::take(admin_two, &[]).get("msggate_sessions", None), 0.0);
        assert_eq!(one.sessions("shared-name").len(), 1);
        let two_port = two.local_addr().port();
        assert_eq!(listener_fds(admin_two.port()), 1);
        drop(two);
        // Gone from this process: its listener closed and every thread joined. (Not "a connect
        // is refused": a child that a parallel test forks may hold the listener until it execs.)
        assert_eq!(listener_fds(admin_two.port()), 0, "gateway two's admin listener is closed");
        assert_eq!(gateway_threads(two_port), 0, "gateway two's threads, the admin thread among them, are joined");
        assert_eq!(get(admin_one, "/healthz").status, 200, "gateway one's is not");
    });
}

#[test]
fn admin_healthz_says_503_while_shutting_down_and_the_api_stops_with_the_gateway() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|c| c.shutdown_timeout = Duration::from_secs(3));
        assert_eq!(gw.admin_addr(), Some(admin));
        // A client that never reads: its close handshake cannot finish, so the shutdown waits
        // its full `shutdown_timeout` and /healthz is asked during it.
        let silent = Client::connect(gw.local_addr(), "silent", 1);
        let stopper = {
            let gw = gw.clone();
            std::thread::spawn(move || gw.shutdown())
        };
        eventually(STEP, "/healthz answers 503 during the shutdown", || {
            let r = get(admin, "/healthz");
            r.status == 503 && r.body.trim() == "shutting down"
        });
        let roles = get(admin, "/debug/roles").json();
        assert_eq!(roles["data"]["shuttingDown"], true, "{roles}");
        stopper.join().unwrap();
        assert_eq!(listener_fds(admin.port()), 0, "the admin listener is closed after shutdown");
        drop(silent);

        // Dropping the last handle stops it too: the admin thread does not keep the gateway alive.
        let (gw, admin) = start_admin(|_| {});
        assert_eq!(get(admin, "/healthz").status, 200);
        drop(gw);
        assert_eq!(listener_fds(admin.port()), 0, "the admin listener is closed after drop");
    });
}

#[test]
fn admin_without_token_off_loopback_is_refused() {
    let config = Config { admin_listen: Some("0.0.0.0:0".parse().unwrap()), ..config() };
    match Gateway::start(config) {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "admin_token", "{reason}");
            assert!(reason.contains("0.0.0.0"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // With a token it starts (bound on every interface, asked only through loopback here).
    let (gw, admin) = start_admin(|c| {
        c.admin_listen = Some("0.0.0.0:0".parse().unwrap());
        c.admin_token = Some(TOKEN.into());
    });
    let loopback = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    assert_eq!(get(loopback, "/healthz").status, 200);
    drop(gw);
}

#[test]
fn admin_cli_serve_prints_the_admin_line_and_answers() {
    watchdog(LIMIT, || {
        let mut server = Proc::spawn(&mut msggate(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ]));
        let _addr = server.listen_addr();
        let admin = server.admin_addr();
        let r = get(admin, "/healthz");
        assert_eq!((r.status, r.body.trim()), (200, "ok"), "{r:?}");
        assert_eq!(Scrape::take(admin, &[]).get("msggate_sessions", None), 0.0);
        drop(server);

        // The environment sets the address and the token.
        let mut server = Proc::spawn(
            msggate(&["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"])
                .env("MSGGATE_ADMIN_LISTEN", "127.0.0.1:0")
                .env("MSGGATE_ADMIN_TOKEN", TOKEN),
        );
        server.listen_addr();
        let admin = server.admin_addr();
        get(admin, "/metrics").assert_error(401, 1002);
        let bearer = format!("Bearer {TOKEN}");
        Scrape::take(admin, &[("Authorization", &bearer)]);
        drop(server);

        // The TOML file sets the address; setting it and no_admin there is refused.
        let path = std::env::temp_dir().join(format!("msggate-admin-test-{}.toml", std::process::id()));
        std::fs::write(&path, "admin_listen = \"127.0.0.1:0\"\n").unwrap();
        let file = path.to_str().unwrap();
        let mut server = Proc::spawn(&mut msggate(&["serve", "--listen", "127.0.0.1:0", "--config", file]));
        server.listen_addr();
        assert_eq!(get(server.admin_addr(), "/healthz").status, 200);
        drop(server);
        std::fs::write(&path, "admin_listen = \"127.0.0.1:0\"\nno_admin = true\n").unwrap();
        let out =
            Proc::spawn(&mut msggate(&["serve", "--listen", "127.0.0.1:0", "--config", file])).finish_within(PATIENCE);
        let _ = std::fs::remove_file(&path);
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("no_admin"), "{}", out.stderr);

        // Off loopback without a token: refused at start, exit 2, naming the field.
        let mut refused =
            Proc::spawn(&mut msggate(&["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"]));
        let out = refused.finish_within(PATIENCE);
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("admin_token"), "{}", out.stderr);
    });
}

#[test]
fn admin_refuses_cross_site_posts_ambiguous_lengths_and_messages_over_max_message_size() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        let mut bob = Client::connect(gw.local_addr(), "bob", 1);
        let body = br#"{"userIDs":["bob"],"data":{"content":"x"}}"#;
        // A browser's "simple" cross-site POST (no preflight) cannot reach /push or /kick.
        http(admin, "POST", "/push", &[("Content-Type", "text/plain")], Some(body)).assert_error(415, 415);
        for lengths in [&[("Content-Length", "5"), ("Content-Length", "5")][..], &[("Content-Length", "+5")][..]] {
            let r = http(admin, "POST", "/push", lengths, None);
            assert_eq!(r.status, 400, "{lengths:?}: {r:?}");
        }
        // A message a client could not send is not pushed either; nobody is closed for it.
        let big = json!({"userIDs": ["bob"], "data": {"content": "y".repeat(60 * 1024)}});
        post(admin, "/push", &big).assert_error(413, 413);
        let ok = post(admin, "/push", &json!({"userIDs": ["bob"], "data": {"content": "small"}}));
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(bob.await_push()["content"], "small", "bob is still connected and served");
        assert_eq!(gw.stats().slow_consumer_closes, 0);
        gw.shutdown();
    });
}

#[test]
fn admin_silent_connections_do_not_hold_up_healthz() {
    watchdog(LIMIT, || {
        let (gw, admin) = start_admin(|_| {});
        // Each would hold a one-at-a-time server for its whole 3 s deadline: three of them
        // would push /healthz past this client's read timeout.
        let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect_timeout(&admin, STEP).unwrap()).collect();
        let r = get(admin, "/healthz");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        drop(silent);
        gw.shutdown();
    });
}

#[test]
fn dropping_the_last_handle_stops_the_gateway_even_while_the_admin_api_is_busy() {
    watchdog(LIMIT, || {
        for _ in 0..10 {
            let (gw, admin) = start_admin(|_| {});
            let ws = gw.local_addr();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let spam = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect_timeout(&admin, STEP) else { return };
                        let _ = s.set_read_timeout(Some(STEP));
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                })
            };
            drop(gw); // the caller's drop runs the whole shutdown before it returns
            assert_eq!(listener_fds(ws.port()), 0, "the gateway still listens after the last drop");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            spam.join().unwrap();
        }
    });
}
