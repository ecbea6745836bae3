//! RFC 6455 conformance regressions found by Autobahn|Testsuite (`scripts/autobahn.sh`), and
//! the small-send-buffer knob the conformance run uses to force partial writes.
//!
//! Owns raw-socket checks of the close handshake after a failure: frames are written by hand
//! (masked, as a client must) so that a test can send what no well-behaved client library
//! would. It must not depend on Autobahn being installed, and it never waits by sleeping:
//! every read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use msggate::{Config, Gateway, GatewayHandle};
use tungstenite::Message;

use crate::util::{assert_drained, config, login_query, watchdog, Client, STEP};

/// A raw echo gateway (no token) as `examples/echo.rs` runs it, with `tweak` applied. The
/// close timeout is long, so a server that waits for a close frame that never comes shows up as
/// a read timeout in the test rather than a late drop.
fn echo(tweak: impl FnOnce(&mut Config)) -> GatewayHandle {
    let mut c = Config { require_token: false, close_timeout: Duration::from_secs(60), ..config() };
    tweak(&mut c);
    Gateway::start_with(c, msggate::raw(|_session, frame| Some(frame))).expect("gateway starts")
}

/// Upgrades a plain TCP stream by hand; returns it positioned after the `101` response.
fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, STEP).expect("tcp connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    write!(
        s,
        "GET /?sendID=raw HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("reading the upgrade response"), 1, "EOF in the upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One masked client frame, FIN set.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    crate::util::masked_frame(0x80 | opcode, payload)
}

/// Reads one server frame: (opcode, payload). Panics on timeout, EOF or a masked frame.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("a frame from the server");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// Expects the server's close frame with `code`, then (without sending anything more) the
/// server's FIN. A server that waits for a close frame the client will never send times out
/// here: the read has `STEP`, the gateway's close timeout is a minute.
fn expect_close_then_fin(s: &mut TcpStream, code: u16) {
    let (opcode, payload) = read_frame(s);
    assert_eq!(opcode, 8, "a close frame, got opcode {opcode} ({payload:?})");
    assert!(payload.len() >= 2, "the close frame carries a code");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{:?}", String::from_utf8_lossy(&payload[2..]));
    let mut rest = [0u8; 64];
    match s.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF after the close frame, got {n} more bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the server did not close the TCP connection after failing it: it waits for a close frame")
        }
        Err(e) => panic!("expected EOF after the close frame, got {e}"),
    }
}

/// Sends `bad` on a fresh connection and expects close `code` and the server's FIN, with no
/// reply from us; the gateway then holds nothing.
fn fails_and_closes_first(bad: Vec<u8>, code: u16) {
    watchdog(3 * STEP, move || {
        let gw = echo(|_| {});
        let mut s = upgrade(gw.local_addr());
        s.write_all(&bad).unwrap();
        expect_close_then_fin(&mut s, code);
        drop(s);
        assert_drained(&gw);
        gw.shutdown();
    });
}

/// Autobahn 7.3.2: a close frame whose payload is one byte (half a close code).
#[test]
fn close_frame_with_one_byte_payload_gets_1002_and_the_server_closes_the_connection() {
    fails_and_closes_first(frame(0x8, b"a"), 1002);
}

/// Autobahn 7.3.6: a close frame whose reason makes the payload longer than 125 bytes.
#[test]
fn close_frame_with_too_long_reason_gets_1002_and_the_server_closes_the_connection() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(std::iter::repeat_n(b'x', 124));
    fails_and_closes_first(frame(0x8, &payload), 1002);
}

/// Autobahn 7.5.1: a close frame whose reason is not UTF-8.
#[test]
fn close_frame_with_invalid_utf8_reason_gets_1007_and_the_server_closes_the_connection() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited");
    fails_and_closes_first(frame(0x8, &payload), 1007);
}

/// Autobahn 6.*: a text message that is not UTF-8. The peer may never answer our close (it
/// is misbehaving already); the server does not wait for it.
#[test]
fn invalid_utf8_text_gets_1007_and_the_server_closes_the_connection_without_waiting() {
    fails_and_closes_first(frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"), 1007);
}

/// Autobahn 5.*: a fragmented ping is a protocol error.
#[test]
fn fragmented_control_frame_gets_1002_and_the_server_closes_the_connection() {
    let mut ping = frame(0x9, b"ping");
    ping[0] &= 0x7f; // FIN cleared
    fails_and_closes_first(ping, 1002);
}

/// An oversize message: 1009, and the server closes even though a client library (which waits
/// for the server to close the TCP connection first) never sends EOF on its own.
#[test]
fn oversize_message_gets_1009_and_the_server_closes_the_connection() {
    watchdog(3 * STEP, || {
        let gw = echo(|c| c.max_message_size = 1024);
        let mut s = upgrade(gw.local_addr());
        s.write_all(&frame(0x2, &[7u8; 4096])).unwrap();
        expect_close_then_fin(&mut s, 1009);
        drop(s);
        assert_drained(&gw);
        gw.shutdown();
    });
}

/// A client that answers the server's close frame, as Autobahn and tungstenite do, still
/// completes a clean close: it reads the close frame, replies, and then sees EOF.
#[test]
fn a_client_answering_the_failure_close_sees_the_close_frame_then_eof() {
    watchdog(3 * STEP, || {
        let gw = echo(|_| {});
        let mut s = upgrade(gw.local_addr());
        s.write_all(&frame(0x8, b"a")).unwrap();
        let (opcode, payload) = read_frame(&mut s);
        assert_eq!((opcode, &payload[..2]), (8, &1002u16.to_be_bytes()[..]));
        // Our answer may meet the server's FIN: the write succeeds or finds the socket reset.
        let _ = s.write_all(&frame(0x8, &1002u16.to_be_bytes()));
        let mut rest = [0u8; 16];
        assert!(matches!(s.read(&mut rest), Ok(0) | Err(_)), "nothing more after the close frame");
        drop(s);
        assert_drained(&gw);
        gw.shutdown();
    });
}

/// A valid close from the client is still a clean close handshake: echo, close, reply, EOF.
#[test]
fn a_valid_close_from_the_client_is_answered_and_the_server_closes_first() {
    watchdog(3 * STEP, || {
        let gw = echo(|_| {});
        let mut s = upgrade(gw.local_addr());
        s.write_all(&frame(0x1, b"hello")).unwrap();
        assert_eq!(read_frame(&mut s), (1, b"hello".to_vec()));
        s.write_all(&frame(0x8, &1000u16.to_be_bytes())).unwrap();
        assert_eq!(read_frame(&mut s), (8, 1000u16.to_be_bytes().to_vec()));
        let mut rest = [0u8; 16];
        assert_eq!(s.read(&mut rest).expect("EOF, not a timeout"), 0);
        drop(s);
        assert_drained(&gw);
        gw.shutdown();
    });
}

/// A payload no two offsets of which repeat for a while, so a reordered or dropped chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `socket_send_buffer` at its smallest: every large write is partial, and messages still
/// arrive whole and in order, echoed and relayed.
#[test]
fn tiny_send_buffer_still_echoes_and_relays_multi_megabyte_messages_intact() {
    watchdog(6 * STEP, || {
        let big = 4 << 20;
        let gw = echo(|c| {
            c.socket_send_buffer = Some(msggate::MIN_SOCKET_BUFFER);
            c.max_message_size = 2 * big;
            c.outbound_budget = 4 * big;
        });
        let mut c = Client::connect_query(gw.local_addr(), "sendID=big", "big").expect("no token needed");
        let one = pattern(big);
        let two: String = pattern(big / 2).iter().map(|b| char::from(b'a' + b % 26)).collect();
        c.ws.send(Message::binary(one.clone())).unwrap();
        c.ws.send(Message::text(two.clone())).unwrap();
        assert!(c.recv() == Message::binary(one), "the binary echo arrives intact");
        assert!(c.recv() == Message::text(two), "the text echo arrives intact, after it");
        c.close();
        assert_drained(&gw);
        gw.shutdown();

        // The relay path (1003 → 2001) of a gateway with tokens, with the same tiny buffer.
        let gw = crate::util::start(|c| {
            c.socket_send_buffer = Some(msggate::MIN_SOCKET_BUFFER);
            c.max_message_size = 2 * big;
            c.outbound_budget = 4 * big;
        });
        let mut alice = Client::connect(gw.local_addr(), "alice", 1);
        let mut bob = Client::connect_query(gw.local_addr(), &login_query("bob", 1), "bob").unwrap();
        let content: String = pattern(big / 2).iter().map(|b| char::from(b'A' + b % 26)).collect();
        let incr = alice.send_msg("bob", &content);
        assert_eq!(alice.await_reply(&incr)["data"]["delivered"], 1);
        assert!(bob.await_push()["content"] == content.as_str(), "the 2 MiB push arrives intact");
        alice.close();
        bob.close();
        assert_drained(&gw);
        gw.shutdown();
    });
}

/// A FIN that reaches the server together with the frame before it (one readiness edge for
/// both) is noticed when that frame is read, not at the idle timeout. The raw handler holds
/// the first message, so the session reads nothing until the second message and the FIN are
/// both in its socket.
#[test]
fn fin_arriving_with_the_last_frame_ends_the_session_at_once() {
    watchdog(4 * STEP, || {
        let (got_tx, got_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (got_tx, go_rx) = (std::sync::Mutex::new(got_tx), std::sync::Mutex::new(go_rx));
        let handler = msggate::raw(move |_session, frame| {
            let _ = got_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(STEP);
            Some(frame)
        });
        let c = Config {
            require_token: false,
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(60),
            ..config()
        };
        let gw = Gateway::start_with(c, handler).expect("gateway starts");
        let mut s = upgrade(gw.local_addr());
        s.write_all(&frame(0x1, b"one")).unwrap();
        got_rx.recv_timeout(STEP).expect("the handler has the first message");
        s.write_all(&frame(0x1, b"two")).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        go_tx.send(()).unwrap();
        go_tx.send(()).unwrap();
        // A FIN without a close frame is an abnormal closure: the server drops the connection
        // as soon as it reads the end of stream, echoes still queued or not. What did arrive is
        // in order; then EOF, not a read timeout.
        let mut echoed = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("expected EOF: the server missed the FIN that came with the last frame ({e})"),
            }
        }
        let mut rest = &buf[..];
        while rest.len() >= 2 {
            let len = (rest[1] & 0x7f) as usize;
            assert_eq!(rest[0], 0x81, "unmasked final text frames only: {buf:?}");
            echoed.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        let sent = [b"one".to_vec(), b"two".to_vec()];
        assert!(sent.starts_with(&echoed), "echoes out of order: {echoed:?}");
        drop(s);
        assert_drained(&gw);
        gw.shutdown();
    });
}
