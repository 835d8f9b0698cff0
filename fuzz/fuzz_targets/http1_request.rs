//! Fuzz target for the HTTP/1.1 codec: request decoding split at fuzzer-chosen boundaries,
//! upstream/device head rewriting round trips, and response decoding.
//! The checks live in `simgate::proto::http1::fuzz_decode` so the corpus replay test runs them too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    simgate::proto::http1::fuzz_decode(data);
});
