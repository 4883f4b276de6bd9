//! cargo-fuzz target for the SMTP session; the harness lives in `fuzz/harness/session.rs` so that
//! `tests/fuzz_corpus.rs` replays the committed corpus through the same code without cargo-fuzz.
#![no_main]

#[path = "../harness/session.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|input: &[u8]| harness::run(input));
