//! Fuzz target: the upgrade's query string (`admit`, `admit_open`) and token verification.
//!
//! Input: one mode byte, then the rest. Mode even: the rest is a query string, judged with and
//! without tokens; nothing may panic, and since the fuzzer cannot sign, anything admitted
//! must be the one token this target mints (user `u1` on platform 1). Mode
//! odd: the rest edits a freshly minted valid token (pairs of position and byte: replace,
//! remove, insert); an edited token that differs from the original must be refused, by
//! `verify` and by `admit` (401, or 400 when nothing is left of it). It must not hold state
//! between runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msggate::{admit, admit_open, TokenKey};

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = TokenKey::new(b"fuzz-secret");
    if mode % 2 == 0 {
        let query = String::from_utf8_lossy(rest);
        let _ = admit_open(Some(&query));
        let _ = key.verify(&query, NOW);
        if let Ok(id) = admit(Some(&query), &key, NOW) {
            // The only signed token the fuzzer can ever have seen is the one odd modes mint.
            assert_eq!((id.user.as_str(), id.platform.id()), ("u1", 1), "admitted a token the key never minted");
        }
        return;
    }
    let token = key.mint("u1", 1, NOW + 3600);
    let mut bad = token.clone().into_bytes();
    for edit in rest.chunks(2) {
        let (at, byte) = (usize::from(edit[0]), edit.get(1).copied().unwrap_or(b'A'));
        match byte % 3 {
            0 if !bad.is_empty() => {
                let at = at % bad.len();
                bad[at] = byte;
            }
            1 if !bad.is_empty() => {
                bad.remove(at % bad.len());
            }
            _ => bad.insert(at % (bad.len() + 1), byte),
        }
    }
    let Ok(bad) = String::from_utf8(bad) else { return };
    if bad == token {
        return;
    }
    assert!(key.verify(&bad, NOW).is_err(), "edited token {bad:?} verified");
    let encoded: String = bad.bytes().map(|b| format!("%{b:02X}")).collect();
    let verdict = admit(Some(&format!("token={encoded}&sendID=u1&platformID=1")), &key, NOW);
    // An empty token is a missing argument (400); anything else is a bad token (401).
    let status = if bad.is_empty() { 400 } else { 401 };
    assert!(verdict.is_err_and(|r| r.status == status), "edited token {bad:?} admitted or not {status}");
});
