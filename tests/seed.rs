//! The seed scenario: OpenIM's gateway froze under exactly this load. Here it must not.
//!
//! 100 users each loop: open a new connection (the previous one is still open, so the login
//! kicks it), send to a partner, await the ack, then drop the previous connection. Register and
//! unregister queues (and every other queue) have capacity 1. Every operation must finish
//! within 5 s, nothing may be refused, the stall watchdog (1 s, as in `model.rs`) must stay
//! silent, and at the end the registry and gauges are exactly 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

const USERS: usize = 100;

fn seconds() -> u64 {
    std::env::var("MSGGATE_SEED_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

#[test]
fn seed_scenario_churn_with_kicks_at_queue_capacity_1_never_wedges() {
    seed(Duration::from_secs(seconds()), 0);
}

/// The same load with 4 sessions watching every churning user (2005): the role threads (queues
/// of capacity 1) fan each login and logout out to them. Nothing may wedge, and every watcher
/// must end on the truth, everyone offline, whatever order pushes arrived in. The reactors'
/// inboxes hold 1024 here: at capacity 1 the fan-out of ~40k frames/s backs up in the roles'
/// outboxes, charged to the watchers' budgets, and they are closed as slow consumers, which is
/// the bound doing its job, not what this test is about.
#[test]
fn seed_scenario_with_presence_watchers_at_queue_capacity_1_never_wedges_and_ends_on_the_truth() {
    seed(Duration::from_secs(seconds() / 2), 4);
}

/// Watches every seed user and keeps the latest state per user until told to stop.
fn watch(
    addr: std::net::SocketAddr,
    i: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashMap<String, Value>> {
    let mut c = Client::connect(addr, &format!("watcher{i}"), 5);
    let users: Vec<String> = (0..USERS).map(|u| format!("seed{u}")).collect();
    c.send_json(&json!({"reqIdentifier": 2005, "sendID": c.user, "msgIncr": "sub",
                        "data": {"subscribeUserIDs": users}}));
    std::thread::spawn(move || {
        let mut state = HashMap::new();
        let mut apply = |v: &Value| {
            for s in v["data"]["subscribers"].as_array().into_iter().flatten() {
                state.insert(s["userID"].as_str().unwrap_or_default().to_owned(), s["onlinePlatformIDs"].clone());
            }
        };
        apply(&c.recv_until(|v| v["msgIncr"] == "sub"));
        c.set_timeout(Duration::from_millis(50));
        let mut quiet_since = None;
        loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    apply(&serde_json::from_str(&t).unwrap());
                    quiet_since = None;
                }
                Ok(tungstenite::Message::Close(f)) => panic!("watcher{i} was closed: {f:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    // After the load: stop once nothing has come for a while.
                    if stop.load(Relaxed)
                        && quiet_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(500)
                    {
                        break;
                    }
                }
                Err(e) => panic!("watcher{i}: {e}"),
            }
        }
        c.close();
        state
    })
}

fn seed(run: Duration, watchers: usize) {
    watchdog(run + Duration::from_secs(60), move || {
        let gw = start(|c| {
            c.register_queue = 1;
            c.unregister_queue = 1;
            c.handoff_queue = 1;
            c.inbox_queue = if watchers > 0 { 1024 } else { 1 };
            c.stall_after = Duration::from_secs(1); // as sensitive as the model's watchdog
        });
        let addr = gw.local_addr();
        let stop_watching = Arc::new(AtomicBool::new(false));
        let watchers: Vec<_> = (0..watchers).map(|i| watch(addr, i, stop_watching.clone())).collect();
        let cycles = Arc::new(AtomicU64::new(0));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + run;
        let workers: Vec<_> = (0..USERS)
            .map(|i| {
                let (cycles, slowest_ms) = (cycles.clone(), slowest_ms.clone());
                let user = format!("seed{i}");
                let partner = format!("seed{}", (i + 1) % USERS);
                std::thread::Builder::new()
                    .name(user.clone())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let mut prev = Client::connect(addr, &user, 1);
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let op = Instant::now();
                            let mut next = Client::connect(addr, &user, 1); // kicks `prev`
                            let incr = next.send_msg(&partner, "ping");
                            let ack = next.await_reply(&incr);
                            assert_eq!(ack["errCode"], 0, "{user}: {ack}");
                            let took = op.elapsed();
                            assert!(took < STEP, "{user}: connect+send+ack took {took:?}");
                            slowest_ms.fetch_max(took.as_millis() as u64, Relaxed);
                            // Disconnect the previous one: half gracefully, half by dropping it.
                            if n.is_multiple_of(2) {
                                prev.close();
                            } else {
                                drop(prev);
                            }
                            prev = next;
                            n += 1;
                            cycles.fetch_add(1, Relaxed);
                        }
                        prev.close();
                    })
                    .unwrap()
            })
            .collect();
        for w in workers {
            w.join().expect("a user loop failed");
        }
        // Presence must follow promptly: a role that frees a slot wakes the reactors waiting
        // for one, so the unregister backlogs drain at the role's pace, not a poll timeout's.
        eventually(Duration::from_secs(2), "every seed user offline right after the last one left", || {
            (0..USERS).all(|u| gw.sessions(&format!("seed{u}")).is_empty())
        });
        stop_watching.store(true, Relaxed);
        for (i, w) in watchers.into_iter().enumerate() {
            let state = w.join().expect("a watcher failed");
            assert_eq!(state.len(), USERS, "watcher{i} knows every user");
            let online: Vec<_> = state.iter().filter(|(_, p)| p.as_array().is_none_or(|a| !a.is_empty())).collect();
            assert!(online.is_empty(), "watcher{i} ends with users still online: {online:?}");
        }
        assert_drained(&gw);
        let s = gw.stats();
        let cycles = cycles.load(Relaxed);
        eprintln!(
            "seed: {cycles} cycles in {run:?} ({:.0}/s), slowest {} ms, kicks {}, register queue full {}x, \
             unregister queue full {}x, sweeps {}, deferred pushes {}, presence pushes {} (stale {})",
            cycles as f64 / run.as_secs_f64(),
            slowest_ms.load(Relaxed),
            s.kicks,
            s.register_queue_full,
            s.unregister_queue_full,
            s.sweeps,
            s.pushes_deferred,
            s.presence_pushes,
            s.presence_stale
        );
        assert!(cycles >= USERS as u64, "only {cycles} cycles");
        assert_eq!(s.refused_handoff_full + s.refused_max_connections, 0, "sessions were refused: {s:?}");
        assert_eq!(s.register_timeouts, 0, "sessions timed out waiting for registration: {s:?}");
        assert!(s.kicks >= cycles / 2, "the overlap should kick on nearly every cycle: {s:?}");
        // The model in model.rs, under this pattern, is reported stalled within seconds; the
        // same watchdog, watching every thread of the real gateway, never fired here.
        assert_eq!(s.stalls, 0, "the watchdog reported a stall:\n{}", gw.health());
    });
}
