//! Replays every seed of the cargo-fuzz corpora on the stable toolchain, so CI exercises the
//! fuzz entry points (and their property checks) without nightly or libFuzzer.
//!
//! Each known target maps a corpus directory under `fuzz/corpus/` to its entry point; adding a
//! target (MQTT, RADIUS) is one line in `TARGETS`. A missing or empty corpus directory fails the
//! test.

use std::fs;
use std::path::{Path, PathBuf};

/// A fuzz entry point: must not panic on any input.
type EntryPoint = fn(&[u8]);

/// (corpus directory name = cargo-fuzz target name, entry point).
const TARGETS: &[(&str, EntryPoint)] = &[
    ("http1_request", simgate::proto::http1::fuzz_decode),
    ("mqtt_decode", simgate::proto::mqtt::fuzz_decode),
    ("mqtt_roundtrip", simgate::proto::mqtt::fuzz_roundtrip),
    ("radius_decode", simgate::proto::radius::fuzz_decode),
    ("adapter_message", simgate::adapters::fuzz::fuzz_message),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_without_panicking() {
    for &(target, entry_point) in TARGETS {
        let dir = corpus_dir(target);
        let entries = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
        let mut replayed = 0usize;
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path();
            if !path.is_file() {
                continue;
            }
            let data =
                fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| entry_point(&data));
            assert!(
                outcome.is_ok(),
                "target {target} panicked on {}",
                path.display()
            );
            replayed += 1;
        }
        assert!(replayed > 0, "corpus directory {} is empty", dir.display());
    }
}
