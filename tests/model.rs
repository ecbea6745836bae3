//! The seed's deadlock as a model that must wedge, and the watchdog that must say so.
//!
//! A faithful model of OpenIM 3.5.1's `ws_server.go` loop: one consumer `select`s over two
//! bounded queues, `registerChan` and `unregisterChan`; registering a user who is already online
//! kicks the old connection with a **blocking** send into `unregisterChan`, the queue only that
//! same consumer drains. 100 users churn as in the seed (a new connection registers while the
//! previous one is still online, then the previous one goes offline). The consumer ends up
//! blocked in its own send, the queues stay full and nothing moves: the test asserts that
//! msggate's stall watchdog reports exactly that within seconds, then tears the model down.
//! The seed test (`seed.rs`) runs the real gateway under the same pattern with every queue at
//! capacity 1 and the same watchdog, and asserts it reports nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, SendTimeoutError, Sender};
use msggate::{Beacon, Monitor, QueueDepth, StallReport, Watchdog, Watched};

use crate::util::*;

/// OpenIM sizes these at 1000; smaller only makes the model wedge sooner. The bug is the
/// blocking send into a queue whose consumer is the sender, which no capacity removes.
const CAPACITY: usize = 16;
const USERS: u64 = 100;
const LABELS: &[&str] =
    &["waiting in select", "registering", "kicking: blocking send into unregisterChan", "unregistering"];
const KICKING: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Client {
    user: u64,
    conn: u64,
}

/// `ws.Run()`: the single consumer of both queues.
fn ws_server_loop(
    register: Receiver<Client>,
    unregister: Receiver<Client>,
    unregister_tx: Sender<Client>,
    beacon: Arc<Beacon>,
    stop: Arc<AtomicBool>,
) {
    let mut online: HashMap<u64, u64> = HashMap::new();
    while !stop.load(Relaxed) {
        beacon.doing(0);
        select! {
            recv(register) -> c => {
                let Ok(c) = c else { return };
                beacon.doing(1);
                // multiTerminalLoginChecker: same-terminal kick of the older connection.
                if let Some(old) = online.insert(c.user, c.conn) {
                    beacon.doing(KICKING);
                    // The bug: a blocking send into the queue this very thread consumes.
                    if unregister_tx.send(Client { user: c.user, conn: old }).is_err() {
                        return;
                    }
                }
            }
            recv(unregister) -> c => {
                let Ok(c) = c else { return };
                beacon.doing(3);
                if online.get(&c.user) == Some(&c.conn) {
                    online.remove(&c.user);
                }
            }
            default(Duration::from_millis(10)) => {}
        }
        beacon.turn();
    }
}

/// A blocking send, as the handshake and the read loop do it; it gives up only at teardown.
fn send_blocking(tx: &Sender<Client>, mut c: Client, stop: &AtomicBool) -> bool {
    loop {
        match tx.send_timeout(c, Duration::from_millis(50)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) if !stop.load(Relaxed) => c = back,
            Err(_) => return false,
        }
    }
}

/// One seed user: connect (register) while the previous connection is online, exchange a
/// message (no queue involved), then the previous connection goes offline (unregister).
fn churn(user: u64, register: Sender<Client>, unregister: Sender<Client>, stop: Arc<AtomicBool>) {
    let mut prev = Client { user, conn: 0 };
    if !send_blocking(&register, prev, &stop) {
        return;
    }
    for conn in 1.. {
        let next = Client { user, conn };
        if !send_blocking(&register, next, &stop) || !send_blocking(&unregister, prev, &stop) {
            return;
        }
        prev = next;
    }
}

#[test]
fn openim_model_wedges_under_seed_churn_and_the_watchdog_reports_it() {
    watchdog(Duration::from_secs(60), || {
        let (register_tx, register_rx) = bounded(CAPACITY);
        let (unregister_tx, unregister_rx) = bounded(CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let beacon = Arc::new(Beacon::new(LABELS));

        let (r, u) = (register_rx.clone(), unregister_rx.clone());
        let queues = move || QueueDepth { len: r.len() + u.len(), capacity: 2 * CAPACITY };
        let watched = Watched::new("openim-ws-server-loop", beacon.clone(), queues);
        let monitor = Arc::new(Monitor::new(vec![watched], Duration::from_secs(1)));
        let (report_tx, reports) = bounded::<StallReport>(4);
        let dog = Watchdog::spawn(monitor, "model-watchdog", move |r| {
            let _ = report_tx.try_send(r.clone());
        })
        .unwrap();

        let started = Instant::now();
        let consumer = {
            let (register, unregister, tx) = (register_rx.clone(), unregister_rx.clone(), unregister_tx.clone());
            let (beacon, stop) = (beacon.clone(), stop.clone());
            std::thread::spawn(move || ws_server_loop(register, unregister, tx, beacon, stop))
        };
        let users: Vec<_> = (0..USERS)
            .map(|user| {
                let (r, u, stop) = (register_tx.clone(), unregister_tx.clone(), stop.clone());
                std::thread::Builder::new().stack_size(64 * 1024).spawn(move || churn(user, r, u, stop)).unwrap()
            })
            .collect();

        let report = reports.recv_timeout(Duration::from_secs(30)).expect("the watchdog reports the wedge");
        let detected = started.elapsed();
        eprintln!("model wedged and reported after {detected:.1?}:\n{report}");
        assert_eq!(report.thread, "openim-ws-server-loop");
        assert_eq!(report.doing, LABELS[KICKING], "{report}");
        assert!(report.stalled_for >= Duration::from_secs(1), "{report}");
        let t = &report.health.threads[0];
        assert!(t.stalled && t.queue.len > 0, "{report}");
        assert_eq!(unregister_rx.len(), CAPACITY, "the kick waits on a full unregisterChan");
        let progress = beacon.progress();
        assert_eq!(dog.health().threads[0].progress, progress);
        assert!(report.to_string().contains("STALLED"), "{report}");

        // Teardown: stop everyone, and play the consumer's missing partner by draining
        // unregisterChan until the wedged send completes and the loop sees the flag.
        stop.store(true, Relaxed);
        let drain = unregister_rx.clone();
        while !consumer.is_finished() {
            let _ = drain.recv_timeout(Duration::from_millis(10));
        }
        consumer.join().unwrap();
        for u in users {
            u.join().unwrap();
        }
        drop(dog);
    });
}
