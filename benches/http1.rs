//! Criterion benches for the HTTP/1.1 codec: decoding a realistic device POST plus rewriting its
//! head for upstream (bytes/s and requests/s), and a sweep over body sizes for Content-Length and
//! chunked bodies. Run with `cargo bench --bench http1` on an otherwise idle machine.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simgate::proto::http1::{write_upstream_request_head, Limits, Parsed, RequestDecoder};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
const EXTRA: &[(&str, &[u8])] = &[
    ("X-Sim-Imsi", b"440103123456789"),
    ("X-Sim-Imei", b"356938035643809"),
];

/// A device POST with ~8 header fields and a body of `body_len` bytes.
fn device_post(body_len: usize, chunked: bool) -> Vec<u8> {
    let mut request = b"POST /telemetry/v1/sensor-17?batch=1 HTTP/1.1\r\n\
        Host: gateway.iot.carrier.example\r\n\
        User-Agent: SIM7600-modem/2.3.1\r\n\
        Accept: application/json\r\n\
        Content-Type: application/json\r\n\
        X-Device-Id: sensor-17\r\n\
        X-Request-Id: 7f3a9c2e-5b1d-4e8f-9a6c-0d2b4e6f8a1c\r\n\
        Connection: keep-alive\r\n"
        .to_vec();
    let body: Vec<u8> = (0..body_len).map(|i| b'a' + (i % 26) as u8).collect();
    if chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(512) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
        request.extend_from_slice(&body);
    }
    request
}

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
