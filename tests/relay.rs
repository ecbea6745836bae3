//! Relay (1003 -> 2001 + ack), ordering, login policies and the registry's stale-unregister guard.

use std::time::Duration;

use msggate::MultiLoginPolicy;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn relay_acks_with_fields_and_pushes_to_every_recipient_session_and_senders_other_session() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut u1_ios = Client::connect(addr, "u1", 1);
        let mut u1_web = Client::connect(addr, "u1", 5);
        let mut u2_ios = Client::connect(addr, "u2", 1);
        let mut u2_pc = Client::connect(addr, "u2", 3);
        eventually(STEP, "four sessions registered", || gw.registry_len() == 4);

        let incr = u1_ios.send_msg("u2", "hello");
        let ack = u1_ios.await_reply(&incr);
        assert_eq!(ack["reqIdentifier"], 1003);
        assert_eq!(ack["errCode"], 0);
        assert_eq!(ack["operationID"], format!("op-{incr}"));
        let data = &ack["data"];
        assert_eq!(data["delivered"], 2);
        assert_eq!(data["clientMsgID"], format!("c-{incr}"));
        let server_msg_id = data["serverMsgID"].as_str().unwrap().to_owned();
        assert!(!server_msg_id.is_empty());
        assert!(data["sendTime"].as_u64().unwrap() > 1_600_000_000_000);

        for c in [&mut u2_ios, &mut u2_pc, &mut u1_web] {
            let m = c.await_push();
            assert_eq!(m["sendID"], "u1");
            assert_eq!(m["recvID"], "u2");
            assert_eq!(m["content"], "hello");
            assert_eq!(m["contentType"], 101);
            assert_eq!(m["serverMsgID"], server_msg_id.as_str());
            assert_eq!(m["sendTime"], data["sendTime"]);
        }
        // The sender's own session gets the ack only, never its own push.
        u1_ios.send_text(r#"{"type":"ping"}"#);
        assert_eq!(u1_ios.recv_json(), serde_json::json!({"type":"pong"}));
        assert!(u1_ios.stash.is_empty(), "sender got {:?}", u1_ios.stash);
        for c in [u1_ios, u1_web, u2_ios, u2_pc] {
            c.close();
        }
        assert_drained(&gw);
    });
}

#[test]
fn offline_recipient_is_acked_with_zero_delivered() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        let incr = c.send_msg("nobody", "anyone?");
        let ack = c.await_reply(&incr);
        assert_eq!((ack["errCode"].as_i64(), ack["data"]["delivered"].as_i64()), (Some(0), Some(0)));
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn thousand_messages_from_one_sender_arrive_in_order() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut rx = Client::connect(addr, "rx", 1);
        let mut tx = Client::connect(addr, "tx", 1);
        eventually(STEP, "both registered", || gw.registry_len() == 2);
        let receiver = std::thread::spawn(move || {
            for i in 0..1000 {
                assert_eq!(rx.await_push()["content"], i.to_string(), "message {i} out of order");
            }
            rx
        });
        let mut last = String::new();
        for i in 0..1000 {
            last = tx.send_msg("rx", &i.to_string());
        }
        assert_eq!(tx.await_reply(&last)["data"]["delivered"], 1);
        receiver.join().unwrap().close();
        tx.close();
        assert_drained(&gw);
    });
}

#[test]
fn same_terminal_kick_sends_2002_and_closes_1008_the_older_session() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.multi_login_policy = MultiLoginPolicy::SameTerminalKick);
        let addr = gw.local_addr();
        let mut old = Client::connect(addr, "u1", 1);
        let mut other_platform = Client::connect(addr, "u1", 2);
        eventually(STEP, "two sessions", || gw.registry_len() == 2);
        let new = Client::connect(addr, "u1", 1);
        let kick = old.recv_until(|v| v["reqIdentifier"] == 2002);
        assert!(kick["errMsg"].as_str().unwrap().contains("kicked"), "{kick}");
        let close = old.expect_close().expect("close frame");
        assert_eq!((close.code, close.reason.as_str()), (CloseCode::Policy, "kicked"));
        eventually(STEP, "iOS and Android sessions remain", || gw.registry_len() == 2);
        // The Android session was not touched.
        other_platform.send_text(r#"{"type":"ping"}"#);
        assert_eq!(other_platform.recv_json()["type"], "pong");
        assert_eq!(gw.stats().kicks, 1);
        new.close();
        other_platform.close();
        assert_drained(&gw);
    });
}

#[test]
fn pc_and_other_kicks_non_pc_sessions_and_leaves_pc_alone() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.multi_login_policy = MultiLoginPolicy::PcAndOther);
        let addr = gw.local_addr();
        let mut windows = Client::connect(addr, "u1", 3);
        let mut ios = Client::connect(addr, "u1", 1);
        eventually(STEP, "two sessions", || gw.registry_len() == 2);
        let linux = Client::connect(addr, "u1", 7); // a PC login kicks nothing
        eventually(STEP, "three sessions", || gw.registry_len() == 3);
        let web = Client::connect(addr, "u1", 5); // a non-PC login kicks every non-PC session
        let close = ios.expect_close().expect("iOS kicked");
        assert_eq!(close.code, CloseCode::Policy);
        eventually(STEP, "windows, linux and web remain", || gw.registry_len() == 3);
        let mut platforms: Vec<u8> = gw.sessions("u1").iter().map(|s| s.platform).collect();
        platforms.sort();
        assert_eq!(platforms, vec![3, 5, 7]);
        windows.send_text(r#"{"type":"ping"}"#);
        assert_eq!(windows.recv_json()["type"], "pong");
        for c in [windows, linux, web] {
            c.close();
        }
        assert_drained(&gw);
    });
}

#[test]
fn stale_unregister_never_removes_the_newer_session() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut partner = Client::connect(addr, "p", 1);
        for round in 0..20 {
            let mut old = Client::connect(addr, "u1", 1);
            eventually(STEP, "old registered", || gw.sessions("u1").len() == 1);
            let old_conn = gw.sessions("u1")[0].conn;
            let new = Client::connect(addr, "u1", 1);
            // The old session's close (and its unregister) happen after the newer login.
            let _ = old.expect_close();
            drop(old);
            eventually(STEP, "old session's unregister processed", || {
                gw.sessions("u1").iter().all(|s| s.conn != old_conn) && gw.stats().connections == 2
            });
            let online = gw.sessions("u1");
            assert_eq!(online.len(), 1, "round {round}: {online:?}");
            let incr = partner.send_msg("u1", "still reachable?");
            assert_eq!(partner.await_reply(&incr)["data"]["delivered"], 1, "round {round}");
            new.close();
            eventually(STEP, "u1 offline", || gw.sessions("u1").is_empty());
        }
        assert!(gw.stats().unregister_stale >= 20, "{:?}", gw.stats());
        partner.close();
        assert_drained(&gw);
    });
}

#[test]
fn a_completed_upgrade_means_online_and_reachable() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut tx = Client::connect(addr, "tx", 1);
        for round in 0..100 {
            let user = format!("rx{round}");
            let mut rx = Client::connect(addr, &user, 1);
            // No waiting for the registry: the 101 left only after the session was inserted.
            let incr = tx.send_msg(&user, "are you there?");
            assert_eq!(tx.await_reply(&incr)["data"]["delivered"], 1, "round {round}");
            assert_eq!(rx.await_push()["content"], "are you there?");
            rx.close();
        }
        tx.close();
        assert_drained(&gw);
    });
}

#[test]
fn kick_frame_always_precedes_the_kick_close() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        for round in 0..100 {
            // Two logins of one user racing; whichever registers second kicks the other, often
            // while the first one's 101 is still held. The URL's background flag tells them apart.
            let logins: Vec<_> = [true, false]
                .into_iter()
                .map(|bg| {
                    let q = login_query("u1", 1) + if bg { "&isBackground=true" } else { "" };
                    std::thread::spawn(move || (bg, Client::connect_query(addr, &q, "u1").unwrap()))
                })
                .collect();
            let mut clients: Vec<(bool, Client)> = logins.into_iter().map(|t| t.join().unwrap()).collect();
            let online = gw.sessions("u1");
            assert_eq!(online.len(), 1, "round {round}");
            let kicked = clients.iter().position(|(bg, _)| *bg != online[0].background).unwrap();
            let (_, mut old) = clients.remove(kicked);
            let kick = old.recv_json(); // panics if the close comes first
            assert_eq!(kick["reqIdentifier"], 2002, "round {round}: {kick}");
            let close = old.expect_close().expect("close frame");
            assert_eq!((close.code, close.reason.as_str()), (CloseCode::Policy, "kicked"), "round {round}");
            clients.pop().unwrap().1.close();
            // Otherwise the next round's logins may kick this one while its unregister is in flight.
            eventually(STEP, "u1 offline before the next round", || gw.sessions("u1").is_empty());
        }
        assert_eq!(gw.stats().kicks, 100);
        assert_drained(&gw);
    });
}
