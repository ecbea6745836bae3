//! Starting and stopping: shutdown closes with 1001 and joins every thread; gateways in one
//! process are independent.

use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn shutdown_sends_1001_to_every_session_and_joins_every_thread() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.io_threads = 3);
        let addr = gw.local_addr();
        // A thread names itself once it runs, so wait for all seven (acceptor, 3 reactors, 2
        // roles, the watchdog).
        eventually(STEP, "seven named gateway threads", || gateway_threads(addr.port()) == 3 + 4);
        let clients: Vec<Client> = (0..5).map(|i| Client::connect(addr, &format!("u{i}"), 1)).collect();
        eventually(STEP, "all registered", || gw.registry_len() == 5);
        let waiters: Vec<_> = clients
            .into_iter()
            .map(|mut c| std::thread::spawn(move || c.expect_close().expect("close frame")))
            .collect();
        let summary = gw.shutdown();
        for w in waiters {
            let close = w.join().unwrap();
            assert_eq!((close.code, close.reason.as_str()), (CloseCode::Away, "server shutting down"));
        }
        assert_eq!(summary.sessions_closed, 5);
        assert!(summary.elapsed < Duration::from_secs(5), "{summary}");
        assert!(summary.to_string().contains("closed 5 sessions"), "{summary}");
        assert_eq!(gateway_threads(addr.port()), 0, "every thread joined");
        assert_eq!(listener_fds(addr.port()), 0, "the listener is closed");
        assert_eq!(gw.shutdown().sessions_closed, 5, "shutdown is idempotent");
    });
}

#[test]
fn dropping_the_last_handle_shuts_down_and_joins() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let port = gw.local_addr().port();
        eventually(STEP, "six named gateway threads", || gateway_threads(port) == 6);
        let clone = gw.clone();
        drop(gw);
        assert_eq!(gateway_threads(port), 6, "a clone keeps it running");
        drop(clone);
        assert_eq!(gateway_threads(port), 0);
    });
}

#[test]
fn two_gateways_in_one_process_do_not_see_each_other() {
    watchdog(LIMIT, || {
        let a = start(|_| {});
        let b = start(|_| {});
        let mut on_a = Client::connect(a.local_addr(), "u1", 1);
        let on_b = Client::connect(b.local_addr(), "u2", 1);
        eventually(STEP, "registered on b", || b.registry_len() == 1);
        let incr = on_a.send_msg("u2", "hello?");
        assert_eq!(on_a.await_reply(&incr)["data"]["delivered"], 0);
        assert!(a.sessions("u2").is_empty());
        assert_eq!(b.sessions("u2").len(), 1);
        on_a.close();
        on_b.close();
        assert_drained(&a);
        assert_drained(&b);
    });
}

#[test]
fn logout_acks_then_closes_1000() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let mut c = Client::connect(gw.local_addr(), "u1", 1);
        c.send_json(&serde_json::json!({"reqIdentifier": 2003, "msgIncr": "bye", "sendID": "u1"}));
        assert_eq!(c.await_reply("bye")["errCode"], 0);
        let close = c.expect_close().expect("close");
        assert_eq!(close.code, CloseCode::Normal);
        assert_eq!(gw.stats().logouts, 1);
        assert_drained(&gw);
    });
}

#[test]
fn background_flag_is_set_by_2004_and_by_the_url() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let q = login_query("u1", 1) + "&isBackground=true";
        let mut c = Client::connect_query(gw.local_addr(), &q, "u1").unwrap();
        eventually(STEP, "registered in the background", || gw.sessions("u1").first().is_some_and(|s| s.background));
        c.send_json(&serde_json::json!({"reqIdentifier": 2004, "msgIncr": "fg", "data": {"isBackground": false}}));
        assert_eq!(c.await_reply("fg")["errCode"], 0);
        assert!(!gw.sessions("u1")[0].background);
        c.close();
        assert_drained(&gw);
    });
}

#[test]
fn shutdown_leaves_an_empty_registry_even_at_unregister_queue_1() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            c.unregister_queue = 1;
            c.shutdown_timeout = Duration::from_millis(300);
        });
        let addr = gw.local_addr();
        // Clients that never answer the server's close: every session ends at the drain deadline,
        // all at once, through a one-slot unregister queue.
        let clients: Vec<Client> = (0..300).map(|i| Client::connect(addr, &format!("u{i}"), 1)).collect();
        assert_eq!(gw.registry_len(), 300);
        gw.shutdown();
        let s = gw.stats();
        assert_eq!((gw.registry_len(), s.registry_sessions, s.online_users), (0, 0, 0), "{s:?}");
        assert_eq!((s.connections, s.sessions), (0, 0));
        drop(clients);
    });
}
