//! Fuzz target: the envelope decoder (`protocol::decode` and every `data` type) on arbitrary
//! frames, and the encoders on whatever it accepts. Owns no logic: the properties are in
//! `msggate::fuzzing::decode_everything`; it must not be given a different oracle than the
//! property tests (`tests/props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8; a binary frame that is not goes nowhere near the decoder.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = msggate::fuzzing::decode(text);
        msggate::fuzzing::decode_everything(text);
    }
});
