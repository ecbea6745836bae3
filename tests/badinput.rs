//! The bad-input matrix (`docs/BADINPUT.md`): hostile or broken clients, each case asserting its
//! exact outcome (HTTP status, close code, that the gateway closed the socket) and the counter
//! that records it, then the shared "after each" check ([`Bystanders::check`]): no panic, no
//! thread lost, every reactor turning, gauges, descriptors and sockets back to the baseline with
//! no FIN_WAIT or CLOSE_WAIT on the gateway's side, and two sessions connected before the case
//! still relaying both ways.
//!
//! Cases already covered elsewhere are not repeated here (the matrix names their tests): not
//! HTTP and the slowloris deadline in `tests/handshake.rs`, oversize frames, slow consumers and
//! idle clients in `tests/limits.rs`. Every test binds 127.0.0.1:0, waits only with bounded
//! reads or `eventually`, and runs under the hang watchdog; timeouts are short so the module
//! stays fast. It must not assert timings.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use msggate::Config;

use crate::proc::{msggate, Proc};
use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Short handshake and close deadlines; the idle timeout stays longer than any test here, so
/// that bystanders which only read when asked survive (the idle test shortens it and pumps them).
fn quick(c: &mut Config) {
    c.handshake_timeout = Duration::from_millis(800);
    c.ping_interval = Duration::from_secs(5);
    c.idle_timeout = Duration::from_secs(20);
    c.close_timeout = Duration::from_secs(2);
}

/// Sends `request` on a fresh socket and reads until the gateway closes it.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, STEP).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap_or_else(|e| panic!("the gateway did not close the socket: {e}; read {got:?}"));
    got
}

/// An upgrade request with `headers` (each a full `Name: value` line), for a valid login.
fn upgrade_request(headers: &[&str]) -> Vec<u8> {
    let mut r = format!("GET /?{} HTTP/1.1\r\nHost: gw\r\n", login_query("mallory", 1));
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// A refused upgrade: the response, with the counters that must (and must not) have moved.
fn refused_upgrade(request: &[u8], case: &str) -> Http {
    let gw = start(quick);
    let mut by = Bystanders::connect(&gw);
    let before = gw.stats();
    let resp = Http::parse(&raw_exchange(gw.local_addr(), request));
    eventually(STEP, "counted", || gw.stats().handshakes_failed == before.handshakes_failed + 1);
    let s = gw.stats();
    assert_eq!((s.handshakes_ok, s.sessions, s.handshake_timeouts), (before.handshakes_ok, 2, 0), "{case}");
    by.check(&gw, case);
    by.leave(&gw);
    resp
}

/// Regression (with the three below): a refused upgrade got no HTTP response at all, only a
/// closed socket; RFC 6455 4.2.1 requires an HTTP error.
#[test]
fn http_without_upgrade_is_426_naming_websocket() {
    watchdog(LIMIT, || {
        let resp = refused_upgrade(&upgrade_request(&[VERSION, KEY]), "http without upgrade");
        resp.assert_error(426, 1602);
        assert_eq!(resp.headers.get("upgrade").map(String::as_str), Some("websocket"), "{resp:?}");
        assert_eq!(resp.headers.get("connection").map(String::as_str), Some("close"), "{resp:?}");
    });
}

#[test]
fn wrong_websocket_version_is_426_with_sec_websocket_version_13() {
    watchdog(LIMIT, || {
        let resp =
            refused_upgrade(&upgrade_request(&[UPGRADE, CONNECTION, "Sec-WebSocket-Version: 8", KEY]), "version 8");
        resp.assert_error(426, 1602);
        assert_eq!(resp.headers.get("sec-websocket-version").map(String::as_str), Some("13"), "{resp:?}");
    });
}

#[test]
fn missing_websocket_key_is_400() {
    watchdog(LIMIT, || {
        let resp = refused_upgrade(&upgrade_request(&[UPGRADE, CONNECTION, VERSION]), "missing key");
        resp.assert_error(400, 1602);
    });
}

/// A valid upgrade with `extra` header lines: too much head must be refused with 431.
fn head_too_large(extra: &[String], case: &str) {
    let mut headers: Vec<&str> = vec![UPGRADE, CONNECTION, VERSION, KEY];
    headers.extend(extra.iter().map(String::as_str));
    refused_upgrade(&upgrade_request(&headers), case).assert_error(431, 1602);
}

#[test]
fn oversized_headers_are_431() {
    watchdog(LIMIT, || {
        // 70 KiB of header lines: past tungstenite's 64 KiB bound on a request head.
        let big: Vec<String> = (0..70).map(|i| format!("X-Pad-{i}: {}", "p".repeat(1000))).collect();
        head_too_large(&big, "oversized headers");
    });
}

#[test]
fn too_many_headers_are_431() {
    watchdog(LIMIT, || {
        // Small, but more header lines than tungstenite parses (124).
        let many: Vec<String> = (0..130).map(|i| format!("X-H{i}: v")).collect();
        head_too_large(&many, "too many headers");
    });
}

#[test]
fn handshake_trickled_one_byte_per_second_is_closed_at_the_deadline() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            quick(c);
            c.handshake_timeout = Duration::from_millis(2500);
        });
        let mut by = Bystanders::connect(&gw);
        let mut s = TcpStream::connect(gw.local_addr()).unwrap();
        // The pace is the read timeout: one byte, then a second of listening for the close.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let request = upgrade_request(&[UPGRADE, CONNECTION, VERSION, KEY]);
        let mut sent = 0;
        let mut got = Vec::new();
        let ending = loop {
            assert!(sent < request.len(), "the whole request went out a byte a second and was never cut off");
            if let Err(e) = s.write_all(&request[sent..sent + 1]) {
                break e.kind();
            }
            sent += 1;
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => panic!("closed with a FIN after {sent} bytes, not reset"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => break e.kind(),
            }
        };
        // Reset, not closed with a FIN: the gateway keeps no socket in FIN_WAIT for a client
        // that may have vanished (the socket is still held here when the check runs).
        assert!(
            matches!(ending, std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
            "after {sent} bytes: {ending:?}"
        );
        assert!(got.is_empty(), "no response to an unfinished request: {got:?}");
        assert!(sent >= 2, "closed after {sent} bytes: before the deadline");
        let st = gw.stats();
        assert_eq!((st.handshake_timeouts, st.handshakes_failed), (1, 0), "{st:?}");
        by.check(&gw, "trickled handshake");
        drop(s);
        by.leave(&gw);
    });
}

/// Frames that break RFC 6455, each on its own session: the close code the gateway must send.
fn protocol_case(cases: &[(&str, Vec<u8>, u16)], ending: Ending, counter: fn(&msggate::Snapshot) -> u64) {
    let gw = start(quick);
    let addr = gw.local_addr();
    let mut by = Bystanders::connect(&gw);
    for (i, (case, bytes, code)) in cases.iter().enumerate() {
        let before = counter(&gw.stats());
        expect_close_for(addr, &format!("mallory-{i}"), bytes, *code, ending);
        eventually(STEP, "counted", || counter(&gw.stats()) == before + 1);
        let tw = by.check(&gw, case);
        eprintln!("{case}: close {code}; gateway-side TIME_WAIT sockets: {tw}");
    }
    by.leave(&gw);
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    watchdog(LIMIT, || {
        let unmasked = vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        protocol_case(&[("unmasked text frame", unmasked, 1002)], Ending::Handshake, |s| s.protocol_closes);
    });
}

#[test]
fn reserved_opcodes_are_closed_with_1002() {
    watchdog(LIMIT, || {
        let cases: Vec<(String, Vec<u8>, u16)> = (0x3..=0x7)
            .chain(0xB..=0xF)
            .map(|op: u8| (format!("reserved opcode {op:#x}"), masked_frame(0x80 | op, b"x"), 1002))
            .collect();
        let cases: Vec<(&str, Vec<u8>, u16)> = cases.iter().map(|(c, b, k)| (c.as_str(), b.clone(), *k)).collect();
        // tungstenite refuses the header itself and cannot read past it: the gateway fails the
        // connection at once.
        protocol_case(&cases, Ending::FailFast, |s| s.protocol_closes);
    });
}

#[test]
fn malformed_control_frames_and_rsv_bits_are_closed_with_1002() {
    watchdog(LIMIT, || {
        protocol_case(
            &[
                ("fragmented ping (FIN clear)", masked_frame(0x09, b"p"), 1002),
                ("fragmented close (FIN clear)", masked_frame(0x08, &1000u16.to_be_bytes()), 1002),
                ("ping of 126 bytes", masked_frame(0x89, &[b'p'; 126]), 1002),
                ("RSV1 set", masked_frame(0xC1, b"{}"), 1002),
                ("RSV2 set", masked_frame(0xA1, b"{}"), 1002),
                ("RSV3 set", masked_frame(0x91, b"{}"), 1002),
                ("continuation without a start", masked_frame(0x80, b"{}"), 1002),
                (
                    "new text frame inside a fragmented one",
                    [masked_frame(0x01, b"{"), masked_frame(0x81, b"{}")].concat(),
                    1002,
                ),
            ],
            Ending::Handshake,
            |s| s.protocol_closes,
        );
    });
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    watchdog(LIMIT, || {
        protocol_case(
            &[
                ("invalid UTF-8 in one text frame", masked_frame(0x81, &[b'{', 0xff, 0xfe, b'}']), 1007),
                (
                    "invalid UTF-8 across fragments",
                    [masked_frame(0x01, b"{\"a\":\""), masked_frame(0x80, &[0xc3, 0x28, b'"', b'}'])].concat(),
                    1007,
                ),
            ],
            Ending::Handshake,
            |s| s.protocol_closes,
        );
    });
}

/// Regression: after a 1009 the gateway reads the rest raw and cannot see the client's close
/// frame; it waited for a FIN that a well-behaved client (waiting for the server's) never sent,
/// and reset the connection at the close deadline. It now shuts its side after the close frame.
#[test]
fn oversize_message_is_1009_then_a_clean_close_not_a_reset() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            quick(c);
            c.max_message_size = 1000;
        });
        let addr = gw.local_addr();
        let mut by = Bystanders::connect(&gw);
        // Eleven frames of 100 bytes: each frame is small, the message is not.
        let mut bytes = masked_frame(0x01, &[b' '; 100]);
        for _ in 0..9 {
            bytes.extend(masked_frame(0x00, &[b' '; 100]));
        }
        bytes.extend(masked_frame(0x80, &[b' '; 100]));
        // The rest of the input cannot be parsed: the gateway shuts its side after the close
        // frame and discards what comes until the client closes too.
        expect_close_for(addr, "mallory", &bytes, 1009, Ending::Handshake);
        assert_eq!(gw.stats().oversize_closes, 1);
        by.check(&gw, "oversize message in fragments");
        by.leave(&gw);
    });
}

#[test]
fn half_closed_client_is_closed_at_once() {
    watchdog(LIMIT, || {
        let gw = start(quick);
        let mut by = Bystanders::connect(&gw);
        let mut raw = raw_session(gw.local_addr(), "mallory");
        eventually(STEP, "registered", || gw.sessions("mallory").len() == 1);
        let unregistered = gw.stats().unregistered;
        raw.shutdown(Shutdown::Write).unwrap(); // FIN, no close frame
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).expect("the gateway closes its side");
        eventually(STEP, "unregistered", || gw.stats().unregistered == unregistered + 1);
        let s = gw.stats();
        assert_eq!((s.idle_closes, s.protocol_closes), (0, 0), "{s:?}");
        by.check(&gw, "half-closed client");
        // The client closed first: TIME_WAIT, if any, is on the client's side.
        drop(raw);
        by.leave(&gw);
    });
}

/// Regression: the gateway closed a client that never answered its close frame with a FIN,
/// leaving its orphaned socket in FIN_WAIT2 for `tcp_fin_timeout` (FIN_WAIT1 for minutes when
/// the peer is really gone); it now resets it at the close deadline.
#[test]
fn vanished_client_is_closed_within_the_idle_timeout_and_leaves_no_fin_wait() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            quick(c);
            c.ping_interval = Duration::from_millis(150);
            c.idle_timeout = Duration::from_millis(500);
            c.close_timeout = Duration::from_millis(300);
        });
        let mut by = Bystanders::connect(&gw);
        // Keeps its socket open and never reads or writes again: the peer's kernel still ACKs,
        // as for a client whose process hangs, so only the gateway's timers can end it.
        let mut vanished = raw_session(gw.local_addr(), "mallory");
        eventually(STEP, "registered", || gw.sessions("mallory").len() == 1);
        eventually(STEP, "closed as idle", || {
            by.pump();
            gw.stats().idle_closes == 1
        });
        by.check(&gw, "vanished client");
        // What the client would find if it came back: pings, close 1001, then a reset (it never
        // answered the close, so the gateway did not wait in FIN_WAIT for it).
        assert_eq!(read_close_code(&mut vanished), Some(1001));
        let e = vanished.read_to_end(&mut Vec::new()).expect_err("reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        drop(vanished);
        by.leave(&gw);
    });
}

/// Half of a 1000-byte text frame: a peer that stops in the middle of a frame.
fn half_a_frame() -> Vec<u8> {
    let mut bytes = frame_header(0x1, 1000);
    bytes.extend_from_slice(&[b'x'; 500]);
    bytes
}

/// Sessions that each send half a frame and then end the TCP connection with `end`, right
/// away, so the end usually reaches the gateway in the same readiness edge as the data. Each
/// must be ended by the gateway at once: no close frame (the stream is cut), not counted as a
/// protocol error, nothing left behind.
fn cut_mid_frame(case: &str, end: fn(TcpStream)) {
    let gw = start(quick);
    let mut by = Bystanders::connect(&gw);
    let before = gw.stats();
    const SESSIONS: u64 = 10;
    for i in 0..SESSIONS {
        let user = format!("mallory-{i}");
        let mut raw = raw_session(gw.local_addr(), &user);
        eventually(STEP, "registered", || gw.sessions(&user).len() == 1);
        raw.write_all(&half_a_frame()).unwrap();
        end(raw);
        eventually(STEP, &format!("{case}: session {i} ended"), || gw.sessions(&user).is_empty());
    }
    let s = gw.stats();
    assert_eq!(s.unregistered, before.unregistered + SESSIONS, "{s:?}");
    assert_eq!((s.protocol_closes, s.oversize_closes, s.idle_closes), (0, 0, 0), "{s:?}");
    by.check(&gw, case);
    by.leave(&gw);
}

#[test]
fn reset_mid_frame_ends_the_session() {
    watchdog(LIMIT, || {
        cut_mid_frame("reset mid-frame", |raw| {
            socket2::SockRef::from(&raw).set_linger(Some(Duration::ZERO)).unwrap();
            drop(raw); // with SO_LINGER 0 the close sends RST, not FIN
        });
    });
}

/// Regression: a FIN that arrived in the same readiness edge as data was never read (the
/// socket's short-read shortcut waited for another edge), leaving the session open and the
/// gateway's socket in CLOSE_WAIT until the idle timeout.
#[test]
fn fin_in_the_same_edge_as_data_is_not_missed() {
    watchdog(LIMIT, || {
        cut_mid_frame("FIN mid-frame", |mut raw| {
            raw.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            raw.read_to_end(&mut rest).expect("the gateway closes its side");
        });
    });
}

#[test]
fn connection_flood_past_max_connections_is_503_and_sessions_keep_working() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            quick(c);
            c.handshake_timeout = Duration::from_secs(5);
            c.max_connections = 5;
        });
        let addr = gw.local_addr();
        let mut by = Bystanders::connect(&gw);
        // Three silent sockets fill the gateway to its ceiling.
        let holders: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        eventually(STEP, "at the ceiling", || gw.stats().connections == 5);
        let flood: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let user = format!("flood-{t}-{i}");
                            Client::connect_query(addr, &login_query(&user, 1), &user).err().expect("refused")
                        })
                        .map(|r| (r.status, r.body["errCode"].as_i64()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in flood {
            for outcome in t.join().unwrap() {
                assert_eq!(outcome, (503, Some(1601)));
            }
        }
        let s = gw.stats();
        assert_eq!((s.refused_max_connections, s.accepted, s.handshakes_ok), (200, 205, 2), "{s:?}");
        drop(holders);
        let tw = by.check(&gw, "connection flood");
        eprintln!("flood: gateway-side TIME_WAIT sockets: {tw}");
        by.leave(&gw);
    });
}

/// Open descriptors and resident memory (KiB) of process `pid`.
fn footprint(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    (fds, rss.trim().trim_end_matches("kB").trim().parse().unwrap())
}

/// `n` upgrades with a token that is not a JWT, over 8 parallel connections at a time; each
/// must be refused 401 with errCode 1503.
fn bogus_tokens(addr: SocketAddr, n: usize) {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..n).step_by(8) {
                    let query = format!("token=bogus-{i}&sendID=u{i}&platformID=1");
                    let refused = Client::connect_query(addr, &query, "bogus").err().expect("refused");
                    assert_eq!((refused.status, refused.body["errCode"].as_i64()), (401, Some(1503)), "{i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Resident memory the gateway process may gain over 10 000 refused upgrades, after a warm-up
/// of 1000: allocator arenas and caches settle during the warm-up, so what is left is noise of
/// a few hundred KiB. A leak of the handshake state (a 4 KiB read buffer at least) would be
/// 40 MB; even 100 bytes per refusal would show as 1 MB.
const RSS_TOLERANCE_KIB: u64 = 1024;

#[test]
fn ten_thousand_bogus_tokens_are_all_401_with_no_growth_in_memory_or_descriptors() {
    watchdog(LIMIT, || {
        // The gateway runs in a process of its own, so its descriptors and RSS are its alone
        // (this test process runs other tests in parallel).
        let args = ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--secret", SECRET];
        let mut server =
            Proc::spawn(&mut msggate(&[&args[..], &["--io-threads", "2", "--log-level", "error"]].concat()));
        let addr = server.listen_addr();
        let admin = server.admin_addr();
        let pid = server.pid();
        let mut a = Client::connect(addr, "bystander-a", 1);
        let mut b = Client::connect(addr, "bystander-b", 1);
        // Descriptors now, with nothing in flight; memory after a warm-up.
        let (fds, _) = footprint(pid);
        let threads = gateway_threads_in(&pid.to_string(), addr.port());
        bogus_tokens(addr, 1000);
        eventually(STEP, "warm-up done", || footprint(pid).0 == fds);
        let (_, rss) = footprint(pid);
        let started = std::time::Instant::now();
        bogus_tokens(addr, 10_000);
        let took = started.elapsed();
        eventually(STEP, "descriptors back to exactly the baseline", || footprint(pid).0 == fds);
        let (_, rss_after) = footprint(pid);
        eprintln!(
            "10k bogus tokens in {took:?}: descriptors {fds} -> {fds}, RSS {rss} -> {rss_after} KiB ({:+} KiB)",
            rss_after as i64 - rss as i64
        );
        assert!(rss_after <= rss + RSS_TOLERANCE_KIB, "RSS grew from {rss} to {rss_after} KiB");
        assert_eq!(gateway_threads_in(&pid.to_string(), addr.port()), threads, "a gateway thread is gone");
        let m = Scrape::take(admin, &[]);
        assert_eq!(m.get("msggate_handshakes_rejected_token_total", None), 11_000.0);
        for (name, want) in
            [("msggate_connections", 2.0), ("msggate_sessions", 2.0), ("msggate_reactor_panics_total", 0.0)]
        {
            assert_eq!(m.get(name, None), want, "{name}");
        }
        assert_eq!(m.get("msggate_stalls_total", None), 0.0);
        assert_eq!(http(admin, "GET", "/healthz", &[], None).status, 200);
        relay_both_ways(&mut a, &mut b, "after 10k");
        drop(server);
    });
}

/// Regression: a frame whose header tungstenite refuses (a reserved opcode) cannot be read past,
/// so the read after the close 1002 failed again and the session was dropped at once, even when
/// the close frame (and everything queued before it) was still waiting for room in the socket:
/// a client that was behind on reading got a FIN without a close frame, and lost the pushes
/// queued for it. The close frame now leaves first, then the FIN.
#[test]
fn reserved_opcode_behind_a_full_socket_still_gets_its_close_frame() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            quick(c);
            // One reactor: the pushes below reach mallory's socket in the turn that answers
            // alice's 1003, so once alice has every answer they are all queued for mallory.
            c.io_threads = 1;
            c.outbound_budget = 4 << 20;
            c.socket_send_buffer = Some(4096);
        });
        let addr = gw.local_addr();
        let mut by = Bystanders::connect(&gw);
        let mut mallory = raw_session(addr, "mallory");
        let mut alice = Client::connect(addr, "alice", 1);
        eventually(STEP, "registered", || gw.sessions("mallory").len() == 1);
        // About 1.2 MB for a client that does not read: far more than both kernels' buffers.
        let content = "x".repeat(40_000);
        for _ in 0..30 {
            let incr = alice.send_msg("mallory", &content);
            assert_eq!(alice.await_reply(&incr)["errCode"], 0);
        }
        mallory.write_all(&masked_frame(0x83, b"x")).unwrap();
        let mut got = Vec::new();
        mallory.read_to_end(&mut got).expect("the gateway ends the connection with a FIN");
        // Server frames, unmasked: every push, then the close frame, then nothing.
        let (mut at, mut texts, mut close) = (0, 0, None);
        while at + 2 <= got.len() && close.is_none() {
            let (op, len7) = (got[at] & 0x0f, usize::from(got[at + 1] & 0x7f));
            let (len, head) = match len7 {
                126 => (usize::from(u16::from_be_bytes([got[at + 2], got[at + 3]])), 4),
                127 => (u64::from_be_bytes(got[at + 2..at + 10].try_into().unwrap()) as usize, 10),
                n => (n, 2),
            };
            if at + head + len > got.len() {
                break;
            }
            match op {
                0x1 => texts += 1,
                0x8 => close = Some(u16::from_be_bytes([got[at + head], got[at + head + 1]])),
                _ => {}
            }
            at += head + len;
        }
        assert_eq!(
            (texts, close, got.len() - at),
            (30, Some(1002), 0),
            "(pushes, close code, bytes after them) of {} bytes read",
            got.len()
        );
        drop(mallory);
        eventually(STEP, "ended", || gw.sessions("mallory").is_empty());
        assert_eq!(gw.stats().protocol_closes, 1);
        drop(alice);
        by.check(&gw, "reserved opcode behind a full socket");
        by.leave(&gw);
    });
}
