//! Criterion benches for the HTTP/1.1 codec: decoding a realistic device POST plus rewriting its
//! head for upstream (bytes/s and requests/s), and a sweep over body sizes for Content-Length and
//! chunked bodies. Run with `cargo bench --bench http1` on an otherwise idle machine.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simgate::proto::http1::{write_upstream_request_head, Limits, Parsed, RequestDecoder};

#[path = "fixtures/mod.rs"]
mod fixtures;
use fixtures::device_post;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
const EXTRA: &[(&str, &[u8])] = &[
    ("X-Sim-Imsi", b"440103123456789"),
    ("X-Sim-Imei", b"356938035643809"),
];

/// Decodes one request from a fresh buffer and writes its upstream head.
fn decode_and_rewrite(wire: &[u8], out: &mut BytesMut) -> usize {
    let mut buf = BytesMut::from(wire);
    let mut decoder = RequestDecoder::new(Limits {
        max_body_bytes: 1 << 30,
        ..Limits::default()
    });
    let Ok(Parsed::Complete(request)) = decoder.decode(&mut buf) else {
        return 0;
    };
    out.clear();
    write_upstream_request_head(
        out,
        &request.head,
        "api.example.com",
        "/ingest",
        CLIENT,
        EXTRA,
    );
    out.len() + request.body.len()
}

fn realistic_post(c: &mut Criterion) {
    let wire = device_post(1024, false);
    let mut out = BytesMut::with_capacity(2048);
    let mut group = c.benchmark_group("http1_post_1KiB");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode+rewrite/bytes", |b| {
        b.iter(|| black_box(decode_and_rewrite(black_box(&wire), &mut out)));
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode+rewrite/requests", |b| {
        b.iter(|| black_box(decode_and_rewrite(black_box(&wire), &mut out)));
    });
    group.finish();
}

fn body_size_sweep(c: &mut Criterion) {
    let mut out = BytesMut::with_capacity(2048);
    let mut group = c.benchmark_group("http1_body_sweep");
    for size in [0usize, 64, 1024, 16 * 1024, 256 * 1024] {
        for (label, chunked) in [("content-length", false), ("chunked-512", true)] {
            let wire = device_post(size, chunked);
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_with_input(BenchmarkId::new(label, size), &wire, |b, wire| {
                b.iter(|| black_box(decode_and_rewrite(black_box(wire), &mut out)));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, realistic_post, body_size_sweep);
criterion_main!(benches);
