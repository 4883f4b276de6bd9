//! cargo-fuzz target for the converter (`cargo +nightly fuzz run convert`); the harness lives in
//! `fuzz/harness/convert.rs` so that `tests/fuzz_corpus.rs` replays the committed corpus too.
#![no_main]

#[path = "../harness/convert.rs"]
mod harness;

/// libfuzzer-sys's panic hook aborts even on panics the converter catches (mail-parser 0.11
/// panics on some malformed multiparts, and `convert` treats those as unparseable). The default
/// hook only prints; a panic that escapes still aborts through libfuzzer-sys's own catch.
static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    harness::run(data);
});
