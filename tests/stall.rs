//! The gateway's own stall watchdog: it sees every thread, and a thread that sits on queued
//! work is reported (metric, health snapshot) while healthy ones are not.

use std::time::Duration;

use crate::util::*;

#[test]
fn health_lists_every_thread_and_nothing_is_stalled_at_rest() {
    watchdog(Duration::from_secs(30), || {
        let gw = start(|c| c.io_threads = 2);
        let port = gw.local_addr().port();
        let _c = Client::connect(gw.local_addr(), "u1", 1);
        let health = gw.health();
        let names: Vec<&str> = health.threads.iter().map(|t| t.name.as_str()).collect();
        let expected: Vec<String> = ["acceptor", "register", "unregister", "reactor-0", "reactor-1"]
            .iter()
            .map(|t| format!("msggate-{port}-{t}"))
            .collect();
        assert_eq!(names, expected);
        assert_eq!(health.threads[1].queue.capacity, gw.config().register_queue);
        // The role counts the event after handling it, which is after the 101 went out.
        eventually(STEP, "the register role counted u1", || gw.health().threads[1].progress >= 1);
        assert_eq!(health.stalled().count(), 0, "{health}");
        assert_eq!(gw.stats().stalls, 0);
        gw.shutdown();
        assert!(gw.health().threads.is_empty(), "the watchdog stops with the gateway");
    });
}

/// The register role stands still (the testing-only delay) with an event queued behind the
/// one it holds: the watchdog must report it, name what it is doing, and count it.
#[test]
fn watchdog_reports_a_role_sitting_on_queued_work() {
    watchdog(Duration::from_secs(60), || {
        let gw = start(|c| {
            c.register_delay = Duration::from_secs(2);
            c.stall_after = Duration::from_millis(300);
            c.handshake_timeout = Duration::from_secs(20);
        });
        let addr = gw.local_addr();
        let logins: Vec<_> =
            (0..2).map(|i| std::thread::spawn(move || Client::connect(addr, &format!("slow{i}"), 1))).collect();
        eventually(STEP, "a stall reported", || gw.stats().stalls >= 1);
        let health = gw.health();
        let register = health.threads.iter().find(|t| t.name.ends_with("-register")).unwrap();
        assert!(register.stalled, "{health}");
        assert_eq!(register.doing, "registering", "{health}");
        assert!(register.queue.len >= 1, "{health}");
        assert!(health.threads.iter().filter(|t| t.stalled).all(|t| t.name.ends_with("-register")), "{health}");
        for login in logins {
            login.join().expect("both logins complete once the role moves again");
        }
        eventually(STEP, "the stall is over", || gw.health().stalled().count() == 0);
    });
}
