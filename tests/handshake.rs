//! The upgrade: success, every refusal with its HTTP status and OpenIM errCode, `isMsgResp`.

use std::time::Duration;

use msggate::TokenKey;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn handshake_ok_registers_the_session() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        c.send_text(r#"{"type":"ping"}"#);
        assert_eq!(c.recv_json(), serde_json::json!({"type":"pong"}));
        eventually(STEP, "u1 registered", || gw.sessions("u1").len() == 1);
        assert_eq!(gw.sessions("u1")[0].platform, 1);
        assert_eq!(gw.stats().handshakes_ok, 1);
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn each_handshake_error_has_its_status_and_err_code() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let now = now_secs();
        let key = TokenKey::new(SECRET.as_bytes());
        let good = key.mint("u1", 1, now + 60);
        let cases: Vec<(String, u16, i64)> = vec![
            (String::new(), 400, 1602),
            (format!("token={good}&platformID=1"), 400, 1602),
            (format!("token={good}&sendID=u1"), 400, 1602),
            (format!("token={good}&sendID=u1&platformID=99"), 400, 1602),
            (format!("token={}&sendID=u1&platformID=1", key.mint("u1", 1, now - 5)), 401, 1501),
            (format!("token={}&sendID=u1&platformID=1", TokenKey::new(b"other").mint("u1", 1, now + 60)), 401, 1502),
            (format!("token={good}&sendID=u2&platformID=1"), 401, 1502),
            (format!("token={good}&sendID=u1&platformID=2"), 401, 1502),
            ("token=not.a.jwt&sendID=u1&platformID=1".into(), 401, 1503),
            ("token=garbage&sendID=u1&platformID=1".into(), 401, 1503),
        ];
        for (query, status, code) in &cases {
            let refused = Client::connect_query(addr, query, "x").err().unwrap_or_else(|| panic!("{query} upgraded"));
            assert_eq!(refused.status, *status, "{query}");
            assert_eq!(refused.body["errCode"], *code, "{query}: {}", refused.body);
            assert!(refused.body["errMsg"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(refused.body["errDlt"], "");
        }
        let s = gw.stats();
        assert_eq!(s.handshakes_rejected_args, 4);
        assert_eq!(s.handshakes_rejected_token, 6);
        assert_eq!(s.handshakes_ok, 0);
        assert_drained(&gw);
    });
}

#[test]
fn is_msg_resp_error_arrives_as_a_frame_then_close_1008() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let query = "token=garbage&sendID=u1&platformID=1&isMsgResp=true";
        let mut c = Client::connect_query(gw.local_addr(), query, "u1").expect("upgrades despite the bad token");
        let frame = c.recv_json();
        assert_eq!(frame["errCode"], 1503, "{frame}");
        assert_eq!(frame["errDlt"], "");
        let close = c.expect_close().expect("a close frame");
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(gw.registry_len(), 0);
        assert_drained(&gw);
    });
}

#[test]
fn is_msg_resp_success_frame_comes_first() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let query = login_query("u1", 5) + "&isMsgResp=true";
        let mut c = Client::connect_query(gw.local_addr(), &query, "u1").unwrap();
        assert_eq!(c.recv_json(), serde_json::json!({"errCode":0,"errMsg":"","errDlt":""}));
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn over_max_connections_is_503_1601_and_existing_sessions_keep_working() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.max_connections = 2);
        let addr = gw.local_addr();
        let mut a = Client::connect(addr, "a", 1);
        let mut b = Client::connect(addr, "b", 1);
        let refused = Client::connect_query(addr, &login_query("c", 1), "c").err().expect("third is refused");
        assert_eq!((refused.status, refused.body["errCode"].as_i64()), (503, Some(1601)));
        assert_eq!(gw.stats().refused_max_connections, 1);
        eventually(STEP, "a and b registered", || gw.registry_len() == 2);
        let incr = a.send_msg("b", "still here");
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(b.await_push()["content"], "still here");
        a.close();
        b.close();
        assert_drained(&gw);
    });
}

#[test]
fn not_http_at_all_is_answered_400_and_closed() {
    use std::io::{Read, Write};
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let mut by = Bystanders::connect(&gw);
        let mut s = std::net::TcpStream::connect(gw.local_addr()).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.write_all(b"\x16\x03\x01 this is not http\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("the server answers and closes");
        Http::parse(&buf).assert_error(400, 1602);
        drop(s);
        eventually(STEP, "counted as a failed handshake", || gw.stats().handshakes_failed == 1);
        by.check(&gw, "not HTTP at all");
        by.leave(&gw);
    });
}

#[test]
fn handshake_deadline_closes_a_slowloris_client() {
    use std::io::{Read, Write};
    watchdog(LIMIT, || {
        let gw = start(|c| c.handshake_timeout = Duration::from_millis(300));
        let mut s = std::net::TcpStream::connect(gw.local_addr()).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        // Half a request line, then nothing: the upgrade never completes.
        s.write_all(b"GET /?token=x HTTP/1.1\r\nHost: a\r\n").unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let e = s.read_to_end(&mut buf).expect_err("the server resets the socket");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(buf.is_empty(), "no response to an unfinished request: {buf:?}");
        assert!(started.elapsed() < STEP);
        assert_eq!(gw.stats().handshake_timeouts, 1);
        assert_drained(&gw);
    });
}

#[test]
fn registration_deadline_refuses_with_1013_and_the_late_registration_inserts_and_kicks_nothing() {
    watchdog(LIMIT, || {
        // The register role takes longer per event than a login may wait.
        let gw = start(|c| {
            c.handshake_timeout = Duration::from_millis(300);
            c.register_delay = Duration::from_millis(700);
        });
        let addr = gw.local_addr();
        let logins: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || Client::connect_query(addr, &login_query("u1", 1), "u1")))
            .collect();
        let mut clients: Vec<Client> =
            logins.into_iter().map(|l| l.join().unwrap().expect("the 101 is let out at the deadline")).collect();
        // The clients stay silent, so both sessions are still open (closing, waiting for our close
        // reply) when the slow role reaches their events: neither may be inserted late, and the
        // second login (same user and platform) must not kick the first.
        eventually(STEP, "the register role handled both events", || gw.role_progress().0 == 2);
        let s = gw.stats();
        assert_eq!(s.sessions, 2, "both sessions still open while the role caught up: {s:?}");
        assert_eq!((s.register_timeouts, s.registered, s.kicks, s.handshakes_ok), (2, 0, 0, 0), "{s:?}");
        assert!(gw.sessions("u1").is_empty());
        for c in &mut clients {
            let close = c.expect_close().expect("a close frame");
            assert_eq!(close.code, tungstenite::protocol::frame::coding::CloseCode::Again);
            assert!(close.reason.contains("registration timed out"), "{}", close.reason);
        }
        assert_drained(&gw);
    });
}
