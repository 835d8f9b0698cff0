//! Fuzz target: the RADIUS accounting decoder must never panic, whatever the datagram, and must
//! keep its properties (verified and unverified decodes agree, signing a decoded request makes
//! it verify, padding past Length changes nothing; see `simgate::proto::radius::fuzz_decode`).
//! Seed corpus: fuzz/corpus/radius_decode/ (signed with `FUZZ_SECRET`, one radclient capture).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    simgate::proto::radius::fuzz_decode(data);
});
