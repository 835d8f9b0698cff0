//! Fuzz target: the MQTT decoder must never panic, whatever the bytes (CONNECT-first and 3.1.1/5.0
//! packet streams). Seed corpus: fuzz/corpus/mqtt_decode/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    simgate::proto::mqtt::fuzz_decode(data);
});
