//! Fuzz target: the cloud adapters never panic and never build an invalid HTTP/1.1 request or
//! batch element, whatever the device's path, content type and body, and the cloud-answer
//! parsers (Pub/Sub message ids, OAuth2 token response) survive any bytes; see
//! `simgate::adapters::fuzz::fuzz_message`. Seed corpus: fuzz/corpus/adapter_message/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    simgate::adapters::fuzz::fuzz_message(data);
});
