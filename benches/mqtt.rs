//! Criterion benches for the MQTT codec: decode and encode of PUBLISH with 100 B, 1 KiB and 64 KiB
//! payloads, in 3.1.1 and 5.0 (the 5.0 packet carries a Payload Format Indicator and one User
//! Property, as bridged device traffic typically does). Each case is reported twice: as bytes per
//! second (`Throughput::Bytes`, wire size) and as messages per second (`Throughput::Elements`).
//!
//! Run: `cargo bench --bench mqtt` (on a quiet machine; not in CI).

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use simgate::proto::mqtt::{decode_packet, encode, DecodeLimits, Decoded, ProtocolVersion, Sender};

#[path = "fixtures/mod.rs"]
mod fixtures;
use fixtures::{publish, wire};

const PAYLOAD_SIZES: [(usize, &str); 3] = [(100, "100B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const VERSIONS: [(ProtocolVersion, &str); 2] =
    [(ProtocolVersion::V311, "v311"), (ProtocolVersion::V5, "v5")];

fn bench_decode(c: &mut Criterion) {
    let limits = DecodeLimits {
        max_packet_size: 1 << 20,
    };
    for (unit, per_bytes) in [("bytes", true), ("messages", false)] {
        let mut group = c.benchmark_group(format!("mqtt_decode_publish/{unit}"));
        for (version, version_name) in VERSIONS {
            for (size, size_name) in PAYLOAD_SIZES {
                let bytes = wire(&publish(version, size), version);
                group.throughput(if per_bytes {
                    Throughput::Bytes(bytes.len() as u64)
                } else {
                    Throughput::Elements(1)
                });
                group.bench_function(format!("{version_name}/{size_name}"), |b| {
                    b.iter_batched(
                        || BytesMut::from(&bytes[..]),
                        |mut buf| match decode_packet(&mut buf, version, Sender::Client, &limits) {
                            Ok(Decoded::Complete(packet)) => black_box(packet),
                            other => panic!("bench packet must decode: {other:?}"),
                        },
                        BatchSize::SmallInput,
                    );
                });
            }
        }
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion) {
    for (unit, per_bytes) in [("bytes", true), ("messages", false)] {
        let mut group = c.benchmark_group(format!("mqtt_encode_publish/{unit}"));
        for (version, version_name) in VERSIONS {
            for (size, size_name) in PAYLOAD_SIZES {
                let packet = publish(version, size);
                let wire_len = wire(&packet, version).len();
                group.throughput(if per_bytes {
                    Throughput::Bytes(wire_len as u64)
                } else {
                    Throughput::Elements(1)
                });
                let mut out = BytesMut::with_capacity(wire_len);
                group.bench_function(format!("{version_name}/{size_name}"), |b| {
                    b.iter(|| {
                        out.clear();
                        encode(black_box(&packet), version, &mut out)
                            .expect("bench packet encodes");
                        black_box(out.len())
                    });
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
