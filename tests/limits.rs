//! Bad and heavy input: slow consumers, oversize messages, malformed requests, silent clients.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn slow_consumer_is_closed_and_reported_while_others_are_unaffected() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.outbound_budget = 128 * 1024);
        let addr = gw.local_addr();
        let mut by = Bystanders::connect(&gw);
        let slow = Client::connect(addr, "slow", 1); // never reads
        let mut tx = Client::connect(addr, "tx", 1);
        let mut a = Client::connect(addr, "a", 1);
        let mut b = Client::connect(addr, "b", 1);
        eventually(STEP, "four registered", || gw.registry_len() == 6);
        let payload = "x".repeat(40_000);
        let mut refused_at = None;
        for i in 0..5000 {
            let incr = tx.send_msg("slow", &payload);
            let ack = tx.await_reply(&incr);
            assert_eq!(ack["errCode"], 0);
            if ack["data"]["delivered"] == 0 {
                refused_at = Some(i);
                break;
            }
        }
        let refused_at = refused_at.expect("the slow consumer was never cut off");
        eventually(STEP, "slow consumer counted", || gw.stats().slow_consumer_closes >= 1);
        eventually(STEP, "slow consumer unregistered", || gw.sessions("slow").is_empty());
        // Everyone else is unaffected.
        let incr = a.send_msg("b", "fine");
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(b.await_push()["content"], "fine");
        let incr = tx.send_msg("a", "also fine");
        assert_eq!(tx.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(a.await_push()["content"], "also fine");
        eprintln!("slow consumer cut off after {refused_at} messages of 40 kB");
        for c in [tx, a, b] {
            c.close();
        }
        // The slow consumer still holds its socket, unread: the gateway's side, its close frame
        // stuck behind full buffers, must be gone at the close deadline, not left in FIN_WAIT1.
        by.check(&gw, "slow consumer");
        drop(slow);
        by.leave(&gw);
    });
}

/// A 1003 request whose JSON text is exactly `len` bytes long.
fn request_of_len(len: usize) -> String {
    let make = |pad: usize| {
        json!({"reqIdentifier":1003,"sendID":"u1","msgIncr":"m","operationID":"o",
               "data":{"recvID":"nobody","clientMsgID":"c","contentType":101,"content":"y".repeat(pad)}})
        .to_string()
    };
    let base = make(0).len();
    let text = make(len - base);
    assert_eq!(text.len(), len);
    text
}

#[test]
fn oversize_message_closes_with_1009_at_the_configured_limit() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.max_message_size = 1000);
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        c.send_text(&request_of_len(1000));
        assert_eq!(c.await_reply("m")["errCode"], 0, "exactly at the limit is accepted");
        c.send_text(&request_of_len(1001));
        let close = c.expect_close().expect("close frame");
        assert_eq!(close.code, CloseCode::Size);
        assert_eq!(gw.stats().oversize_closes, 1);
        assert_drained(&gw);
    });
}

#[test]
fn malformed_json_and_unknown_identifier_get_errors_and_the_connection_stays_up() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        c.send_text("{not json");
        let r = c.recv_json();
        assert_eq!(r["errCode"], 1001, "{r}");
        assert!(r["errMsg"].as_str().unwrap().contains("malformed"));
        c.send_json(&json!({"reqIdentifier": 4242, "msgIncr": "9", "sendID": "u1"}));
        let r = c.await_reply("9");
        assert_eq!((r["errCode"].as_i64(), r["reqIdentifier"].as_i64()), (Some(1001), Some(4242)));
        assert!(r["errMsg"].as_str().unwrap().contains("4242"));
        c.send_json(&json!({"reqIdentifier": 1003, "msgIncr": "10", "sendID": "someone-else",
                            "data": {"recvID": "x", "content": "spoof"}}));
        assert_eq!(c.await_reply("10")["errCode"], 1002);
        c.send_json(&json!({"reqIdentifier": 1002, "msgIncr": "11"}));
        assert_eq!(c.await_reply("11")["errCode"], 1610);
        c.ws.send(tungstenite::Message::binary(&br#"{"type":"ping"}"#[..])).unwrap();
        assert_eq!(c.recv_json()["type"], "pong", "binary JSON is accepted");
        let incr = c.send_msg("nobody", "still up");
        assert_eq!(c.await_reply(&incr)["errCode"], 0);
        assert_eq!(gw.stats().request_errors, 4);
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn idle_timeout_closes_a_silent_client() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            c.ping_interval = Duration::from_millis(200);
            c.idle_timeout = Duration::from_millis(600);
            c.close_timeout = Duration::from_millis(300);
        });
        let c = Client::connect(gw.local_addr(), "u1", 1);
        eventually(STEP, "registered", || gw.registry_len() == 1);
        // Never read and never answer pings: the gateway must give up on its own.
        let mut raw: TcpStream = c.ws.get_ref().try_clone().unwrap();
        raw.set_read_timeout(Some(STEP)).unwrap();
        let started = Instant::now();
        let mut bytes = Vec::new();
        // Our close frame goes unanswered too, so at the close deadline the socket is reset.
        let e = raw.read_to_end(&mut bytes).expect_err("the server resets the socket");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        assert!(started.elapsed() < STEP);
        // A server close frame (0x88) with code 1001 (0x03e9) is among what arrived.
        let close_at = bytes.windows(4).position(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xe9);
        assert!(close_at.is_some(), "no close 1001 in {bytes:02x?}");
        assert_eq!(gw.stats().idle_closes, 1);
        drop(c);
        assert_drained(&gw);
    });
}

#[test]
fn pings_keep_a_responsive_client_alive_past_the_idle_timeout() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            c.ping_interval = Duration::from_millis(100);
            c.idle_timeout = Duration::from_millis(400);
        });
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        c.set_timeout(Duration::from_millis(50));
        let until = Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        while Instant::now() < until {
            match c.ws.read() {
                Ok(tungstenite::Message::Ping(_)) => pings += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("closed while answering pings: {e}"),
            }
        }
        assert!(pings >= 3, "only {pings} pings");
        assert_eq!(gw.stats().idle_closes, 0);
        c.set_timeout(STEP);
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn oversize_frame_header_does_not_panic_the_reactor() {
    use std::io::Write;
    watchdog(LIMIT, || {
        let gw = start(|c| c.io_threads = 1); // attacker and bystanders share the reactor
        let addr = gw.local_addr();
        let mut a = Client::connect(addr, "a", 1);
        let mut b = Client::connect(addr, "b", 1);
        let mut raw = raw_session(addr, "attacker");
        raw.set_read_timeout(Some(STEP)).unwrap();
        // Claims 100 000 bytes (over the 51 200 limit), sends part of it, then more later.
        let mut bytes = frame_header(0x1, 100_000);
        bytes.extend(std::iter::repeat_n(b'x', 3000));
        raw.write_all(&bytes).unwrap();
        // Wait for the server's close 1009, then send more of the frame: a new readiness event
        // for a connection whose reader stopped mid-frame.
        let mut got = Vec::new();
        let is_close_1009 = |w: &[u8]| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xf1;
        while !got.windows(4).any(is_close_1009) {
            let mut buf = [0u8; 256];
            let n = std::io::Read::read(&mut raw, &mut buf).expect("a close 1009 before the deadline");
            assert!(n > 0, "closed without a close 1009: {got:02x?}");
            got.extend_from_slice(&buf[..n]);
        }
        let _ = raw.write_all(&[b'y'; 100]);
        let _ = raw.shutdown(std::net::Shutdown::Write);
        let _ = std::io::Read::read_to_end(&mut raw, &mut got); // the server closes
        let incr = a.send_msg("b", "reactor still alive");
        assert_eq!(a.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(b.await_push()["content"], "reactor still alive");
        assert_eq!((gw.stats().reactor_panics, gw.stats().oversize_closes), (0, 1));
        a.close();
        b.close();
        assert_drained(&gw);
    });
}

#[test]
fn close_after_an_invalid_frame_is_answered_without_waiting_for_the_deadline() {
    use std::io::{Read, Write};
    watchdog(LIMIT, || {
        let gw = start(|c| c.close_timeout = Duration::from_secs(20));
        let mut raw = raw_session(gw.local_addr(), "u1");
        raw.set_read_timeout(Some(STEP)).unwrap();
        // Invalid UTF-8 in a text frame and the client's own close frame, in one write.
        let mut bytes = frame_header(0x1, 2);
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend(frame_header(0x8, 2));
        bytes.extend_from_slice(&1000u16.to_be_bytes());
        raw.write_all(&bytes).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        raw.read_to_end(&mut got).expect("the server closes the socket");
        assert!(started.elapsed() < STEP, "the server waited {:?} for a close it already had", started.elapsed());
        let close_1007 = got.windows(4).any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xef);
        assert!(close_1007, "no close 1007 in {got:02x?}");
        assert_eq!(gw.stats().protocol_closes, 1);
        assert_drained(&gw);
    });
}
