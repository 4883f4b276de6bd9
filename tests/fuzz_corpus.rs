//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) as regression tests, through the
//! same harness as the cargo-fuzz targets, so CI checks every input found so far without
//! cargo-fuzz or a nightly toolchain.

use std::path::Path;

#[path = "../fuzz/harness/convert.rs"]
mod convert;
#[path = "../fuzz/harness/session.rs"]
mod session;

/// Feeds every file of `fuzz/corpus/<target>/` to `run`; a panic names the file.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    for file in &files {
        let input = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            panic!("fuzz input {} fails", file.display());
        }
    }
    println!("{target}: {} corpus inputs replayed", files.len());
}

#[test]
fn session_corpus_replays_without_a_failure() {
    replay("session", session::run);
}

#[test]
fn convert_corpus_replays_without_a_failure() {
    replay("convert", convert::run);
}
