//! Property tests: the fuzz targets' properties (`fuzz/`), on stable, with proptest.
//!
//! Owns three properties: the envelope decoder never panics and round-trips what the encoder
//! produces; upgrade query and token parsing never panic and accept exactly the valid tokens;
//! one connection's server side, fed arbitrary byte streams (and valid frame streams with
//! mutations) through `msggate::fuzzing`'s in-memory harness, never panics, never grows
//! without bound and always ends in a defined state. No sockets: the harness is in memory.
//! Case counts keep the whole module to a few seconds in `cargo test --release`; it must not
//! grow them into a soak test (that is what `cargo fuzz` is for).

use std::time::Duration;

use msggate::fuzzing::{self, Decoded, Login, Script, Step};
use msggate::{admit, admit_open, TokenKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::util::watchdog;

const LIMIT: Duration = Duration::from_secs(120);
const NOW: u64 = 1_700_000_000;

/// Runs `test` on `cases` values of `strategy` under the hang watchdog; a failure panics with
/// proptest's minimal failing input.
/// (`strategy` builds the strategy on the test's thread: strategies are not `Send`.)
fn check<S: Strategy>(
    cases: u32,
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) where
    S::Value: std::fmt::Debug,
{
    watchdog(LIMIT, move || {
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        if let Err(e) = runner.run(&strategy(), test) {
            panic!("{e}");
        }
    });
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Envelope-shaped JSON with random field values, so the decoder's typed paths are reached.
fn envelope_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("reqIdentifier"),
        Just("sendID"),
        Just("operationID"),
        Just("msgIncr"),
        Just("data"),
        Just("type"),
        Just("recvID"),
        Just("content"),
        Just("isBackground"),
        Just("subscribeUserIDs"),
    ];
    prop::collection::vec((key, json_value()), 0..6).prop_map(|fields| {
        let inner: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let mut outer: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        outer.insert("data".into(), Value::Object(inner));
        Value::Object(outer).to_string()
    })
}

#[test]
fn decoder_never_panics_on_arbitrary_text() {
    let text = || {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            any::<String>(),
            envelope_like(),
        ]
    };
    check(512, text, |text| {
        let _ = fuzzing::decode(&text);
        let _ = fuzzing::decode_everything(&text);
        Ok(())
    });
}

#[test]
fn decoder_round_trips_what_the_encoder_produces() {
    let parts = || (any::<i32>(), any::<String>(), any::<String>(), any::<i32>(), any::<String>(), json_value());
    check(512, parts, |(ident, incr, op, code, msg, data)| {
        let text = fuzzing::envelope(ident, &incr, &op, code, &msg, &data.to_string()).unwrap();
        let decoded = fuzzing::decode(&text).map_err(TestCaseError::fail)?;
        let expected_data = (data != Value::Null).then(|| data.to_string());
        prop_assert_eq!(
            decoded,
            Decoded::Request {
                req_identifier: Some(ident),
                send_id: String::new(),
                operation_id: op,
                msg_incr: incr,
                data: expected_data
            }
        );
        Ok(())
    });
}

#[test]
fn a_send_decodes_and_its_push_carries_the_content_untouched() {
    let parts = || ("[a-z0-9]{1,8}", any::<String>(), any::<String>(), json_value());
    check(256, parts, |(recv, client_msg_id, op, content)| {
        let frame = json!({"reqIdentifier":1003,"sendID":"u1","operationID":op,"msgIncr":"1",
            "data":{"recvID":recv,"clientMsgID":client_msg_id,"contentType":101,"content":content}});
        // the envelope, 2005's data type (which takes any object: "neither list" is the
        // dispatcher's refusal) and 1003's; not 2004's (no isBackground). Inside, the push is
        // checked to carry the content untouched and the ack to echo msgIncr and operationID.
        prop_assert_eq!(fuzzing::decode_everything(&frame.to_string()), 3);
        Ok(())
    });
}

fn key() -> TokenKey {
    TokenKey::new(b"props-secret")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn query_parsing_never_panics_and_refuses_what_has_no_valid_token() {
    let query = || {
        prop_oneof![
            any::<String>(),
            "(token|sendID|platformID|isMsgResp|isBackground|%[0-9A-Fa-f]{0,2}|[=&+])*".prop_map(|s| s),
            prop::collection::vec(any::<u8>(), 0..120).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    };
    check(512, query, |q| {
        let _ = admit_open(Some(&q));
        let verdict = admit(Some(&q), &key(), NOW);
        prop_assert!(verdict.is_err(), "admitted without a valid token: {q:?} -> {verdict:?}");
        let r = verdict.unwrap_err();
        prop_assert!(matches!((r.status, r.code), (400, 1602) | (401, 1501..=1503)), "{:?}", r);
        Ok(())
    });
}

#[test]
fn valid_tokens_are_accepted_with_their_claims() {
    check(
        256,
        || (any::<String>().prop_filter("a user", |u| !u.is_empty()), 1i64..=11, 1u64..1 << 40),
        |(user, platform, ttl)| {
            let token = key().mint(&user, platform, NOW + ttl);
            let claims = key().verify(&token, NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                (claims.user_id.as_str(), claims.platform_id, claims.exp),
                (user.as_str(), platform, NOW + ttl)
            );
            let q = format!("token={token}&sendID={}&platformID={platform}", percent_encode(&user));
            let id = admit(Some(&q), &key(), NOW).map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
            prop_assert_eq!((id.user.as_str(), i64::from(id.platform.id())), (user.as_str(), platform));
            Ok(())
        },
    );
}

/// How a token is damaged: one character replaced, removed or inserted.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Remove(usize),
    Insert(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let c = prop_oneof![
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/".chars().collect::<Vec<_>>()
        ),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), c.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), c).prop_map(|(i, c)| Mutation::Insert(i, c)),
    ]
}

fn mutate(token: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let n = chars.len();
    match *m {
        Mutation::Replace(i, c) if n > 0 => chars[i % n] = c,
        Mutation::Remove(i) if n > 0 => {
            chars.remove(i % n);
        }
        Mutation::Insert(i, c) => chars.insert(i % (n + 1), c),
        _ => {}
    }
    chars.into_iter().collect()
}

#[test]
fn a_mutated_token_is_refused() {
    let parts = || ("[a-zA-Z0-9_-]{1,16}", 1i64..=11, prop::collection::vec(mutation(), 1..4));
    check(512, parts, |(user, platform, mutations)| {
        let token = key().mint(&user, platform, NOW + 3600);
        let mut bad = token.clone();
        for m in &mutations {
            bad = mutate(&bad, m);
        }
        prop_assume!(bad != token);
        prop_assert!(key().verify(&bad, NOW).is_err(), "mutated token {bad:?} (from {token:?}) verified");
        let q = format!("token={}&sendID={user}&platformID={platform}", percent_encode(&bad));
        let r = admit(Some(&q), &key(), NOW).err();
        prop_assert!(r.as_ref().is_some_and(|r| r.status == 401), "mutated token admitted or not 401: {r:?}");
        Ok(())
    });
}

/// Found by `cargo fuzz run handshake`, in the target's own oracle: a token edited down to
/// nothing is a missing argument (400, 1602, as PROTOCOL.md says), not a bad token (401).
#[test]
fn an_empty_token_is_a_missing_argument_not_a_bad_token() {
    watchdog(LIMIT, || {
        let r = admit(Some("token=&sendID=u1&platformID=1"), &key(), NOW).unwrap_err();
        assert_eq!((r.status, r.code), (400, 1602), "{r:?}");
        let r = admit(Some("token=%41&sendID=u1&platformID=1"), &key(), NOW).unwrap_err();
        assert_eq!((r.status, r.code), (401, 1503), "{r:?}");
    });
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    crate::util::masked_frame_with((u8::from(fin) << 7) | opcode, payload, mask)
}

/// Requests a client sends, well-formed or not.
fn request_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"type":"ping"}"#.to_string()),
        "[a-z0-9]{0,6}".prop_map(|to| format!(
            r#"{{"reqIdentifier":1003,"sendID":"u1","operationID":"o","msgIncr":"1","data":{{"recvID":"{to}","clientMsgID":"c","contentType":101,"content":"hi"}}}}"#
        )),
        Just(r#"{"reqIdentifier":1003,"sendID":"u1","operationID":"o","msgIncr":"2","data":{"recvID":"u1","content":{"a":[1,2]}}}"#.to_string()),
        Just(r#"{"reqIdentifier":1003,"sendID":"someone-else","data":{"recvID":"u2","content":1}}"#.to_string()),
        any::<bool>().prop_map(|b| format!(r#"{{"reqIdentifier":2004,"msgIncr":"3","data":{{"isBackground":{b}}}}}"#)),
        Just(r#"{"reqIdentifier":2005,"msgIncr":"4","data":{"subscribeUserIDs":["u1","u2"]}}"#.to_string()),
        Just(r#"{"reqIdentifier":2005,"msgIncr":"5","data":{"unsubscribeUserIDs":["u1"]}}"#.to_string()),
        Just(r#"{"reqIdentifier":1001,"msgIncr":"6"}"#.to_string()),
        Just(r#"{"reqIdentifier":2003,"msgIncr":"7"}"#.to_string()),
        Just(r#"{"reqIdentifier":9999}"#.to_string()),
        envelope_like(),
        any::<String>(),
    ]
}

/// One client frame: a request (text or binary), a control frame, or a fragment.
fn client_frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let mask = any::<[u8; 4]>();
    prop_oneof![
        6 => (request_text(), mask).prop_map(|(t, m)| client_frame(0x1, true, t.as_bytes(), m)),
        1 => (request_text(), mask).prop_map(|(t, m)| client_frame(0x2, true, t.as_bytes(), m)),
        1 => (prop::collection::vec(any::<u8>(), 0..20), mask).prop_map(|(p, m)| client_frame(0x9, true, &p, m)),
        1 => (prop::collection::vec(any::<u8>(), 0..20), mask).prop_map(|(p, m)| client_frame(0xA, true, &p, m)),
        1 => (request_text(), 1usize..8, mask).prop_map(|(t, parts, m)| {
            // a text message in fragments
            let b = t.as_bytes();
            let size = b.len().div_ceil(parts).max(1);
            let chunks: Vec<&[u8]> = if b.is_empty() { vec![b] } else { b.chunks(size).collect() };
            let last = chunks.len() - 1;
            chunks.iter().enumerate().flat_map(|(i, c)| client_frame(if i == 0 { 0x1 } else { 0x0 }, i == last, c, m)).collect()
        }),
        1 => (any::<u16>(), "[a-z ]{0,10}", mask).prop_map(|(code, why, m)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(why.as_bytes());
            client_frame(0x8, true, &p, m)
        }),
        1 => (0u8..16, any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), mask)
            .prop_map(|(op, fin, p, m)| client_frame(op, fin, &p, m)),
    ]
}

/// Damage to a byte stream: flip a bit, drop a span, insert bytes, or duplicate a span.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Drop(usize, usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
}

fn damage(stream: &mut Vec<u8>, d: &Damage) {
    if stream.is_empty() {
        return;
    }
    let len = stream.len();
    match d {
        Damage::Flip(i, bit) => stream[i % len] ^= 1 << (bit % 8),
        Damage::Drop(i, n) => {
            let at = i % len;
            stream.drain(at..(at + n).min(len));
        }
        Damage::Insert(i, bytes) => {
            let at = i % (len + 1);
            stream.splice(at..at, bytes.iter().copied());
        }
        Damage::Repeat(i, n) => {
            let at = i % len;
            let span = stream[at..(at + n).min(len)].to_vec();
            stream.splice(at..at, span);
        }
    }
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Damage::Drop(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Damage::Repeat(i, n)),
    ]
}

/// Cuts `stream` into turns with random read caps, write room and clock steps.
fn into_steps(stream: &[u8], cuts: &[(u8, u8)]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = stream;
    for &(len, knobs) in cuts.iter().cycle().take(stream.len().max(1)) {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(len) + 1).min(rest.len());
        let (input, tail) = rest.split_at(n);
        steps.push(Step {
            input: input.to_vec(),
            read_cap: [0, 1, 3, 64][usize::from(knobs & 3)],
            write_room: [usize::MAX, 0, 7, 100][usize::from(knobs >> 2 & 3)],
            advance_ms: [0, 0, 0, 10, 1_000, 12_000, 31_000, 0][usize::from(knobs >> 4 & 7)],
        });
        rest = tail;
    }
    steps
}

fn must_hold(outcome: &fuzzing::Outcome) -> Result<fuzzing::Transcript, TestCaseError> {
    outcome.check().map_err(|e| TestCaseError::fail(format!("{e}\n(end {:?}, stage {})", outcome.end, outcome.stage)))
}

#[test]
fn session_survives_arbitrary_bytes() {
    check(
        2048,
        || prop::collection::vec(any::<u8>(), 0..600),
        |bytes| {
            must_hold(&fuzzing::run(&Script::from_bytes(&bytes)))?;
            Ok(())
        },
    );
}

#[test]
fn session_survives_mutated_streams_of_valid_frames() {
    let parts = || {
        (
            prop::sample::select(vec![
                Login::Valid,
                Login::ValidMsgResp,
                Login::RefusedMsgResp,
                Login::Open,
                Login::ValidRawEcho,
                Login::OpenRawEcho,
            ]),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(client_frame_strategy(), 0..12),
            prop::collection::vec(damage_strategy(), 0..4),
            prop::collection::vec((any::<u8>(), any::<u8>()), 1..8),
            prop::option::of(0usize..6),
        )
    };
    check(2048, parts, |(login, small_limit, eof, frames, damages, cuts, kick_after)| {
        let mut stream: Vec<u8> = frames.concat();
        if matches!(login, Login::Open | Login::OpenRawEcho) {
            let mut upgrade = fuzzing::upgrade_request("sendID=u1&platformID=1");
            upgrade.append(&mut stream);
            stream = upgrade;
        }
        for d in &damages {
            damage(&mut stream, d);
        }
        let script = Script { login, small_limit, eof, kick_after, steps: into_steps(&stream, &cuts) };
        must_hold(&fuzzing::run(&script))?;
        Ok(())
    });
}

#[test]
fn valid_frames_then_a_close_end_in_a_clean_close() {
    // Requests but no logout: the session stays open until the client's close frame, which
    // the gateway answers with the same code; then the FIN ends it.
    let request = || request_text().prop_filter("not a logout", |t| !t.contains("2003"));
    let frames = move || prop::collection::vec((request(), any::<[u8; 4]>()), 0..10);
    check(
        512,
        move || (frames(), prop::collection::vec((any::<u8>(), 0u8..4), 1..6)),
        |(frames, cuts)| {
            let mut stream: Vec<u8> =
                frames.iter().flat_map(|(t, m)| client_frame(0x1, true, t.as_bytes(), *m)).collect();
            let requests = frames.len();
            stream.extend(client_frame(0x8, true, &1000u16.to_be_bytes(), [1, 2, 3, 4]));
            // read caps only: unlimited room and a still clock, so nothing times out
            let steps = into_steps(&stream, &cuts);
            let script = Script { login: Login::Valid, small_limit: false, eof: true, kick_after: None, steps };
            let outcome = fuzzing::run(&script);
            let t = must_hold(&outcome)?;
            prop_assert_eq!(t.status, Some(101));
            prop_assert_eq!(t.close_code, Some(1000), "texts: {:?}", t.texts);
            prop_assert_eq!(outcome.end.as_deref(), Some("Closed"));
            prop_assert!(
                t.texts.len() >= requests,
                "{} answers to {} requests: {:?}",
                t.texts.len(),
                requests,
                t.texts
            );
            Ok(())
        },
    );
}

#[test]
fn a_newer_login_kicks_the_session_with_2002_then_1008() {
    watchdog(LIMIT, || {
        let ping = client_frame(0x1, true, br#"{"type":"ping"}"#, [9, 8, 7, 6]);
        let step = Step { input: ping, write_room: usize::MAX, ..Step::default() };
        let script =
            Script { login: Login::Valid, eof: true, kick_after: Some(1), steps: vec![step], ..Script::default() };
        let outcome = fuzzing::run(&script);
        let t = outcome.check().unwrap();
        assert_eq!(t.texts.first().map(String::as_str), Some(r#"{"type":"pong"}"#), "{t:?}");
        assert!(t.texts.get(1).is_some_and(|k| k.contains(r#""reqIdentifier":2002"#)), "{t:?}");
        assert_eq!(t.close_code, Some(1008));
    });
}

#[test]
fn the_end_state_check_catches_what_it_guards() {
    watchdog(LIMIT, || {
        let good = fuzzing::run(&Script { login: Login::Valid, eof: true, ..Script::default() });
        let t = good.check().unwrap();
        assert_eq!((t.status, good.end.as_deref()), (Some(101), Some("PeerGone")));
        let broken = |f: &dyn Fn(&mut fuzzing::Outcome)| {
            let mut o = good.clone();
            f(&mut o);
            o.check().err()
        };
        assert!(broken(&|o| o.bug = Some("impossible".into())).is_some());
        assert!(broken(&|o| o.end = None).is_some(), "an EOF run that did not end");
        assert!(broken(&|o| o.leftovers[2] = 1).is_some(), "a session left in the registry");
        assert!(broken(&|o| o.peak_lists = 100).is_some());
        assert!(broken(&|o| o.output = b"junk".to_vec()).is_some());
        assert!(broken(&|o| o.output.extend([0x81, 3, b'n', b'o', b'!'])).is_some(), "a text frame that is not JSON");
        assert!(broken(&|o| o.output.extend([0x82, 1, b'x'])).is_some(), "a binary frame");
        assert!(broken(&|o| o.output.extend([0x88, 2, 0x03, 0xEE])).is_some(), "close code 1006 on the wire");
        assert!(broken(&|o| o.output.extend(vec![0x81; 9000])).is_some(), "output past the bound");
    });
}

/// Found by `cargo fuzz run session` (artifact crash-b617df25…): a close frame without a body
/// (no status code) is answered with a close frame without a body, as RFC 6455 asks. The
/// harness's oracle had read that as close code 1005 on the wire.
#[test]
fn a_close_without_a_code_is_answered_without_a_code() {
    watchdog(LIMIT, || {
        let artifact = [
            2, 8, 8, 136, 128, 4, 0, 0, 0, 0, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 0,
        ];
        let outcome = fuzzing::run(&Script::from_bytes(&artifact));
        let t = outcome.check().unwrap();
        assert!(t.closed && t.close_code.is_none(), "{t:?}");
        assert_eq!(outcome.end.as_deref(), Some("Closed"));
    });
}

#[test]
fn a_watched_user_logging_in_is_pushed_before_the_kick() {
    watchdog(LIMIT, || {
        let sub = br#"{"reqIdentifier":2005,"msgIncr":"1","data":{"subscribeUserIDs":["u2"]}}"#;
        let step =
            Step { input: client_frame(0x1, true, sub, [1, 2, 3, 4]), write_room: usize::MAX, ..Step::default() };
        let script =
            Script { login: Login::Valid, eof: true, kick_after: Some(1), steps: vec![step], ..Script::default() };
        let outcome = fuzzing::run(&script);
        let t = outcome.check().unwrap();
        let texts: Vec<Value> = t.texts.iter().map(|x| serde_json::from_str(x).unwrap()).collect();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert_eq!(texts[0]["data"]["subscribers"], json!([{"userID":"u2","onlinePlatformIDs":[]}]));
        assert_eq!(texts[1]["data"]["subscribers"], json!([{"userID":"u2","onlinePlatformIDs":[1]}]));
        assert_eq!(texts[2]["reqIdentifier"], 2002);
        assert_eq!(t.close_code, Some(1008));
    });
}

#[test]
fn raw_echo_answers_every_frame_in_order_then_closes_cleanly() {
    // The embedding API's raw mode (as examples/echo.rs): one frame in flight at a time, so
    // every answer precedes the next read, and the client's close is read after the last one.
    let frames = || prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)), 0..8);
    check(
        256,
        move || (frames(), prop::collection::vec((any::<u8>(), 0u8..4), 1..6)),
        |(frames, cuts)| {
            let mut stream = Vec::new();
            let (mut texts, mut binaries) = (Vec::new(), Vec::new());
            for (text, bytes) in &frames {
                if *text {
                    let t = String::from_utf8_lossy(bytes).into_owned();
                    stream.extend(client_frame(0x1, true, t.as_bytes(), [7, 0, 7, 0]));
                    texts.push(t);
                } else {
                    stream.extend(client_frame(0x2, true, bytes, [0, 9, 0, 9]));
                    binaries.push(bytes.clone());
                }
            }
            stream.extend(client_frame(0x8, true, &1000u16.to_be_bytes(), [1, 2, 3, 4]));
            let steps = into_steps(&stream, &cuts);
            let script = Script { login: Login::ValidRawEcho, eof: true, steps, ..Script::default() };
            let outcome = fuzzing::run(&script);
            let t = must_hold(&outcome)?;
            prop_assert_eq!(&t.texts, &texts);
            prop_assert_eq!(&t.binaries, &binaries);
            prop_assert_eq!((t.close_code, outcome.end.as_deref()), (Some(1000), Some("Closed")));
            Ok(())
        },
    );
}

/// Found by `cargo fuzz run session` (artifact crash-46cd5291…): a raw session with dozens of
/// pipelined frames and then EOF was still open 16 turns later. Not a leak: a raw session
/// reads one frame per worker round trip, by design (answers keep the frames' order), so it
/// needs a turn per frame; the harness now allows that many. It must end, with every echo out.
#[test]
fn a_raw_session_drains_pipelined_frames_after_eof_then_ends() {
    watchdog(LIMIT, || {
        let artifact = include_bytes!("../fuzz/seeds/session/regress_raw_pipelined_frames_after_eof");
        let outcome = fuzzing::run(&Script::from_bytes(artifact));
        let t = outcome.check().unwrap();
        assert!(outcome.end.is_some() && t.binaries.len() > 16, "{:?}: {} echoes", outcome.end, t.binaries.len());
    });
}
