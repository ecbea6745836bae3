//! Fuzz target: one connection's server side (tungstenite handshake, frames, session logic,
//! dispatch, the roles) fed a fuzzer-chosen byte stream through the in-memory harness, in
//! fuzzer-chosen turns (partial reads, a full socket, time jumps). Owns no logic: the script
//! format is `Script::from_bytes` and the properties `Outcome::check`, shared with the property
//! tests; it must not add an oracle of its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msggate::fuzzing::{run, Script};

fuzz_target!(|data: &[u8]| {
    let outcome = run(&Script::from_bytes(data));
    if let Err(broken) = outcome.check() {
        panic!(
            "{broken}\nend {:?}, stage {}, output {:?}",
            outcome.end,
            outcome.stage,
            String::from_utf8_lossy(&outcome.output)
        );
    }
});
