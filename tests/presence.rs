//! Presence (2005): the subscription answer, pushes on connect, kick and disconnect, none after
//! unsubscribe, the per-session cap, and subscriptions ending with the session.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Sends a 2005 request and returns its answer.
fn subscribe(c: &mut Client, sub: &[&str], unsub: &[&str]) -> Value {
    let incr = format!("sub-{}-{}", sub.join(","), unsub.join(","));
    c.send_json(&json!({
        "reqIdentifier": 2005, "sendID": c.user, "operationID": "op-sub", "msgIncr": incr,
        "data": {"subscribeUserIDs": sub, "unsubscribeUserIDs": unsub},
    }));
    let answer = c.await_reply(&incr);
    assert_eq!(answer["reqIdentifier"], 2005, "{answer}");
    answer
}

/// The `(userID, onlinePlatformIDs)` pairs of a 2005 frame's data.
fn states(v: &Value) -> Vec<(String, Vec<u64>)> {
    v["data"]["subscribers"]
        .as_array()
        .unwrap_or_else(|| panic!("no subscribers in {v}"))
        .iter()
        .map(|e| {
            let ids = e["onlinePlatformIDs"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect();
            (e["userID"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

/// The next presence push (2005 with an empty msgIncr), whoever it is about.
fn next_push(c: &mut Client) -> (String, Vec<u64>) {
    let v = c.recv_until(|v| v["reqIdentifier"] == 2005 && v["msgIncr"] == "");
    assert_eq!((v["errCode"].as_i64(), v["operationID"].as_str()), (Some(0), Some("")), "{v}");
    let mut s = states(&v);
    assert_eq!(s.len(), 1, "a push carries one user: {v}");
    s.remove(0)
}

fn state(user: &str, ids: &[u64]) -> (String, Vec<u64>) {
    (user.to_owned(), ids.to_vec())
}

#[test]
fn subscribe_answers_the_current_platforms_of_online_and_offline_users() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let web = Client::connect(addr, "on", 5);
        let ios = Client::connect(addr, "on", 1);
        let mut me = Client::connect(addr, "me", 3);
        let answer = subscribe(&mut me, &["off", "on", "off"], &[]);
        assert_eq!((answer["errCode"].as_i64(), answer["operationID"].as_str()), (Some(0), Some("op-sub")));
        assert_eq!(states(&answer), [state("off", &[]), state("on", &[1, 5])]);
        assert_eq!(gw.stats().presence_subscriptions, 2);
        for c in [web, ios, me] {
            c.close();
        }
        assert_drained(&gw);
        assert_eq!(gw.stats().presence_subscriptions, 0);
    });
}

#[test]
fn pushes_follow_connect_second_platform_kick_and_disconnect() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut me = Client::connect(addr, "me", 3);
        assert_eq!(states(&subscribe(&mut me, &["w"], &[])), [state("w", &[])]);

        let mut ios = Client::connect(addr, "w", 1);
        assert_eq!(next_push(&mut me), state("w", &[1]), "connect");
        let web = Client::connect(addr, "w", 5);
        assert_eq!(next_push(&mut me), state("w", &[1, 5]), "a second platform");
        // Same platform again: the default policy kicks the old iOS session. One edit, one push,
        // and the state still shows iOS (the new session); the kicked one's unregister is stale.
        let ios2 = Client::connect(addr, "w", 1);
        assert_eq!(next_push(&mut me), state("w", &[1, 5]), "kick");
        assert_eq!(ios.recv_until(|v| v["reqIdentifier"] == 2002)["reqIdentifier"], 2002);
        let _ = ios.expect_close();
        drop(ios);
        web.close();
        // The next push is the web session leaving: nothing came for the kicked one.
        assert_eq!(next_push(&mut me), state("w", &[1]), "disconnect of one platform");
        ios2.close();
        assert_eq!(next_push(&mut me), state("w", &[]), "offline");
        assert!(me.stash.is_empty(), "unexpected frames: {:?}", me.stash);
        // The role counts a push after handing it over, so the counter may trail the frame a little.
        eventually(STEP, "five events, five pushes", || {
            let s = gw.stats();
            (s.presence_events, s.presence_pushes, s.presence_dropped) == (5, 5, 0)
        });
        me.close();
        assert_drained(&gw);
    });
}

#[test]
fn no_push_for_a_user_after_unsubscribing() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let mut me = Client::connect(addr, "me", 3);
        subscribe(&mut me, &["gone", "kept"], &[]);
        let answer = subscribe(&mut me, &[], &["gone", "never-watched"]);
        assert_eq!((answer["errCode"].as_i64(), states(&answer)), (Some(0), vec![]));
        assert_eq!(gw.stats().presence_subscriptions, 1);
        // `gone` changes first, `kept` second, both on the register role in that order: the
        // first push to arrive must be `kept`'s.
        let gone = Client::connect(addr, "gone", 1);
        let kept = Client::connect(addr, "kept", 2);
        assert_eq!(next_push(&mut me), state("kept", &[2]));
        gone.close();
        eventually(STEP, "gone offline", || gw.sessions("gone").is_empty());
        kept.close();
        assert_eq!(next_push(&mut me), state("kept", &[]));
        assert!(me.stash.is_empty(), "unexpected frames: {:?}", me.stash);
        me.close();
        assert_drained(&gw);
    });
}

#[test]
fn a_request_over_the_cap_is_refused_and_changes_nothing() {
    watchdog(LIMIT, || {
        let gw = start(|c| c.max_subscriptions = 2);
        let addr = gw.local_addr();
        let mut me = Client::connect(addr, "me", 3);
        assert_eq!(subscribe(&mut me, &["a", "b"], &[])["errCode"], 0);
        let refused = subscribe(&mut me, &["c"], &["nobody"]);
        assert_eq!(refused["errCode"], 1001, "{refused}");
        assert!(refused["errMsg"].as_str().unwrap().contains("max_subscriptions (2)"), "{refused}");
        assert_eq!(refused["data"], Value::Null);
        assert_eq!(gw.stats().presence_subscriptions, 2);
        // Errors the session survives: empty ids, no lists at all.
        for bad in [json!({"subscribeUserIDs": [""]}), json!({}), Value::Null] {
            me.send_json(&json!({"reqIdentifier": 2005, "sendID": "me", "msgIncr": "bad", "data": bad}));
            assert_eq!(me.await_reply("bad")["errCode"], 1001, "{bad}");
        }
        // `c` was not subscribed: its change comes to nobody, `b`'s after it does.
        let c = Client::connect(addr, "c", 1);
        let b = Client::connect(addr, "b", 1);
        assert_eq!(next_push(&mut me), state("b", &[1]));
        // Swapping one for another stays within the cap.
        assert_eq!(states(&subscribe(&mut me, &["c"], &["a"])), [state("c", &[1])]);
        for client in [c, b, me] {
            client.close();
        }
        assert_drained(&gw);
        assert_eq!(gw.stats().presence_subscriptions, 0);
    });
}

#[test]
fn subscriptions_end_with_the_session() {
    watchdog(LIMIT, || {
        let gw = start(|_| {});
        let addr = gw.local_addr();
        let watchers: Vec<Client> = (0..4)
            .map(|i| {
                let mut c = Client::connect(addr, &format!("watcher{i}"), 1);
                subscribe(&mut c, &["w", "x", "y"], &[]);
                c
            })
            .collect();
        assert_eq!(gw.stats().presence_subscriptions, 12);
        for c in watchers {
            c.close();
        }
        eventually(STEP, "every subscription gone", || gw.stats().presence_subscriptions == 0);
        let before = gw.stats();
        for round in 0..3 {
            let w = Client::connect(addr, "w", 1 + round);
            w.close();
            eventually(STEP, "w offline", || gw.sessions("w").is_empty());
        }
        let after = gw.stats();
        assert_eq!(
            (after.presence_events, after.presence_pushes, after.presence_dropped),
            (before.presence_events, before.presence_pushes, before.presence_dropped),
            "nobody watches any more: {after:?}"
        );
        assert_eq!((after.request_errors, after.reactor_panics, after.stalls), (0, 0, 0));
        assert_drained(&gw);
    });
}

#[test]
fn presence_frames_are_not_lost_with_every_queue_at_capacity_one() {
    watchdog(LIMIT, || {
        let gw = start(|c| {
            c.inbox_queue = 1;
            c.register_queue = 1;
            c.unregister_queue = 1;
        });
        let addr = gw.local_addr();
        let mut watchers: Vec<Client> = (0..8)
            .map(|i| {
                let mut c = Client::connect(addr, &format!("watcher{i}"), 1);
                subscribe(&mut c, &["w"], &[]);
                c
            })
            .collect();
        const ROUNDS: u64 = 30;
        for round in 0..ROUNDS {
            let w = Client::connect(addr, "w", 1 + (round % 11) as i64);
            w.close();
            eventually(STEP, "w offline", || gw.sessions("w").is_empty());
        }
        // Two events per round (online, offline), each pushed to every watcher. Every push is
        // either delivered or dropped by the watcher's reactor as stale (an older state that
        // arrived after a newer one, from the other role): none lost, however often an inbox
        // was full, and what a watcher sees is the true sequence with, at most, states skipped.
        let total = 16 * ROUNDS;
        eventually(STEP, "every push made", || gw.stats().presence_pushes == total);
        let mut seen: Vec<Vec<Vec<u64>>> = vec![Vec::new(); watchers.len()];
        for c in &mut watchers {
            c.set_timeout(Duration::from_millis(20));
        }
        let deadline = std::time::Instant::now() + STEP;
        while seen.iter().map(Vec::len).sum::<usize>() as u64 + gw.stats().presence_stale < total {
            assert!(std::time::Instant::now() < deadline, "pushes unaccounted for: {:?}", gw.stats());
            for (c, seen) in watchers.iter_mut().zip(&mut seen) {
                match c.ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        let mut s = states(&v);
                        assert_eq!(s[0].0, "w");
                        seen.push(s.remove(0).1);
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("watcher: {e}"),
                }
            }
        }
        let truth: Vec<Vec<u64>> = (0..ROUNDS).flat_map(|r| [vec![1 + r % 11], vec![]]).collect();
        for seen in &seen {
            let mut rest = truth.iter();
            for state in seen {
                assert!(rest.any(|t| t == state), "{state:?} out of order in {seen:?}");
            }
            assert_eq!(seen.last(), Some(&vec![]), "every watcher ends on the latest state, offline");
        }
        for c in &mut watchers {
            c.set_timeout(STEP);
        }
        let s = gw.stats();
        assert_eq!((s.presence_events, s.presence_dropped, s.stalls), (2 * ROUNDS, 0, 0), "{s:?}");
        for c in watchers {
            c.close();
        }
        assert_drained(&gw);
        assert_eq!(gw.stats().presence_subscriptions, 0);
    });
}
