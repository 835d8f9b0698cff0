//! Fuzz target: every MQTT packet that decodes must encode, and decode again to an equal packet
//! with a stable encoding. Seed corpus: fuzz/corpus/mqtt_roundtrip/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    simgate::proto::mqtt::fuzz_roundtrip(data);
});
