//! The seed scenario: OpenIM's gateway froze under exactly this load. Here it must not.
//!
//! 100 users each loop: open a new connection (the previous one is still open, so the login
//! kicks it), send to a partner, await the ack, then drop the previous connection. Register and
//! unregister queues (and every other queue) have capacity 1. Every operation must finish
//! within 5 s, nothing may be refused, the stall watchdog (1 s, as in `model.rs`) must stay
//! silent, and at the end the registry and gauges are exactly 0.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

const USERS: usize = 100;

fn seconds() -> u64 {
    std::env::var("MSGGATE_SEED_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

#[test]
fn seed_scenario_churn_with_kicks_at_queue_capacity_1_never_wedges() {
    let run = Duration::from_secs(seconds());
    watchdog(run + Duration::from_secs(60), move || {
        let gw = start(|c| {
            c.register_queue = 1;
            c.unregister_queue = 1;
            c.handoff_queue = 1;
            c.inbox_queue = 1;
            c.stall_after = Duration::from_secs(1); // as sensitive as the model's watchdog
        });
        let addr = gw.local_addr();
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
        eventually(Duration::from_secs(2), "every user offline right after the last one left", || {
            gw.registry_len() == 0
        });
        assert_drained(&gw);
        let s = gw.stats();
        let cycles = cycles.load(Relaxed);
        eprintln!(
            "seed: {cycles} cycles in {run:?} ({:.0}/s), slowest {} ms, kicks {}, register queue full {}x, \
             unregister queue full {}x, sweeps {}, deferred pushes {}",
            cycles as f64 / run.as_secs_f64(),
            slowest_ms.load(Relaxed),
            s.kicks,
            s.register_queue_full,
            s.unregister_queue_full,
            s.sweeps,
            s.pushes_deferred
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
