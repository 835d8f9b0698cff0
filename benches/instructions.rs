//! Hot paths as plain loops, for counting instructions under callgrind (not a timing bench).
//!
//! `scripts/callgrind.sh` runs each case twice under `valgrind --tool=callgrind`, with N and
//! N + 10,000 iterations, and reports (Ir(N + 10,000) − Ir(N)) / 10,000: the instructions one
//! operation costs, with start-up and set-up cancelled out. Instruction counts do not depend on
//! what else the machine runs, so they show regressions that wall-clock benches on a shared
//! 2-core box would hide in noise. The figures are kept in docs/benchmarks.md.
//!
//! Usage: `instructions CASE ITERATIONS` runs one case; with no case (as `cargo test
//! --all-targets` and `cargo bench` invoke it) every case runs a few iterations and checks its
//! result, so the loops cannot silently rot. What it does NOT do: measure time, or cover I/O
//! (syscalls and TLS are outside user-space instruction counts' reach; see the load tester).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use simgate::policy::template::Placeholder;
use simgate::policy::{Template, TemplateVars};
use simgate::proto::http1::{write_upstream_request_head, Limits, Parsed, RequestDecoder};
use simgate::proto::mqtt::{
    decode_packet, encode, DecodeLimits, Decoded, Packet, ProtocolVersion, Sender,
};
use simgate::shard::ShardMetrics;

#[path = "fixtures/mod.rs"]
mod fixtures;
use fixtures::{device_post, publish, wire};

/// One hot path: prepared once, then `run` is called per iteration and returns a checksum.
struct Case {
    name: &'static str,
    what: &'static str,
    run: Box<dyn FnMut() -> usize>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    let request = device_post(1024, false);
    let mut out = BytesMut::with_capacity(2048);
    cases.push(Case {
        name: "http1_decode_rewrite_1k",
        what: "HTTP/1.1: decode a 1 KiB device POST (8 headers) and write the upstream head",
        run: Box::new(move || {
            let mut buf = BytesMut::from(&request[..]);
            let mut decoder = RequestDecoder::new(Limits::default());
            let Ok(Parsed::Complete(req)) = decoder.decode(&mut buf) else {
                return 0;
            };
            out.clear();
            write_upstream_request_head(
                &mut out,
                &req.head,
                "api.example.com",
                "/ingest",
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17)),
                &[("X-Sim-Imsi", b"440103123456789")],
            );
            out.len() + req.body.len()
        }),
    });

    let limits = DecodeLimits {
        max_packet_size: 1 << 20,
    };
    for (version, name, what) in [
        (
            ProtocolVersion::V311,
            "mqtt_decode_publish_v311_100b",
            "MQTT 3.1.1: decode a QoS 1 PUBLISH, 100 B payload",
        ),
        (
            ProtocolVersion::V5,
            "mqtt_decode_publish_v5_100b",
            "MQTT 5.0: decode a QoS 1 PUBLISH, 100 B payload, 2 properties",
        ),
    ] {
        let bytes = wire(&publish(version, 100), version);
        cases.push(Case {
            name,
            what,
            run: Box::new(move || {
                let mut buf = BytesMut::from(&bytes[..]);
                match decode_packet(&mut buf, version, Sender::Client, &limits) {
                    Ok(Decoded::Complete(Packet::Publish(p))) => p.payload.len(),
                    _ => 0,
                }
            }),
        });
    }

    for (version, name, what) in [
        (
            ProtocolVersion::V311,
            "mqtt_encode_publish_v311_100b",
            "MQTT 3.1.1: encode a QoS 1 PUBLISH, 100 B payload",
        ),
        (
            ProtocolVersion::V5,
            "mqtt_encode_publish_v5_100b",
            "MQTT 5.0: encode a QoS 1 PUBLISH, 100 B payload, 2 properties",
        ),
    ] {
        let packet = publish(version, 100);
        let mut out = BytesMut::with_capacity(256);
        cases.push(Case {
            name,
            what,
            run: Box::new(move || {
                out.clear();
                encode(black_box(&packet), version, &mut out).expect("fixed packet encodes");
                out.len()
            }),
        });
    }

    let template = Template::parse(
        "devices/{client_id}/{topic}",
        &[Placeholder::ClientId, Placeholder::Topic],
    )
    .expect("fixed template parses");
    let mut rendered = Vec::with_capacity(128);
    cases.push(Case {
        name: "topic_template_render",
        what: "aggregate mode: rewrite a device topic with `devices/{client_id}/{topic}`",
        run: Box::new(move || {
            rendered.clear();
            template.render_into(
                &TemplateVars {
                    client_id: b"440103123456789",
                    topic: b"sensor/telemetry",
                    ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17)),
                    shard: 0,
                    conn: 0,
                    sim: None,
                },
                &mut rendered,
            );
            rendered.len()
        }),
    });

    let mut metrics = ShardMetrics::default();
    let mut value = 0u64;
    cases.push(Case {
        name: "latency_histogram_record",
        what: "metrics: record one request's total and added latency (two HDR histograms)",
        run: Box::new(move || {
            value = (value * 7 + 13) % 50_000;
            metrics.record_latency(value + 100, value / 10 + 1);
            1
        }),
    });

    cases
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cases = cases();
    match args.first().map(String::as_str) {
        Some(name) if !name.starts_with('-') => {
            let iterations: u64 = match args.get(1).map(|n| n.parse()) {
                Some(Ok(n)) => n,
                _ => {
                    eprintln!("usage: instructions CASE ITERATIONS");
                    std::process::exit(2);
                }
            };
            let Some(case) = cases.iter_mut().find(|c| c.name == name) else {
                eprintln!("unknown case {name:?}; cases:");
                for c in &cases {
                    eprintln!("  {:32} {}", c.name, c.what);
                }
                std::process::exit(2);
            };
            let mut sum = 0usize;
            for _ in 0..iterations {
                sum = sum.wrapping_add(black_box((case.run)()));
            }
            black_box(sum);
        }
        // No case (cargo test / cargo bench): every loop runs briefly and must do real work.
        _ => {
            for case in &mut cases {
                for _ in 0..10 {
                    let n = (case.run)();
                    assert!(n > 0, "{}: the hot path did no work", case.name);
                }
                println!("{:32} ok  ({})", case.name, case.what);
            }
        }
    }
}
