//! Criterion benches for the RADIUS accounting codec: decode + Request Authenticator check of a
//! typical 3GPP Start (Acct-Status-Type, Framed-IP-Address, Calling-Station-Id, Acct-Session-Id,
//! NAS-IP-Address, 3GPP-IMSI and 3GPP-IMEISV, as a GGSN/PGW sends it: 109 octets), the same
//! without the check (the attribute walk alone), and encoding the Accounting-Response. Reported
//! as requests per second (`Throughput::Elements`): the load target is 10,000
//! Start/Stop per second on the control thread.
//!
//! Run: `cargo bench --bench radius` (on a quiet machine; not in CI).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use simgate::proto::radius::{
    dangerous_decode_unverified, decode_accounting_request, encode_accounting_response,
    sign_accounting_request, AcctStatusType, CODE_ACCOUNTING_REQUEST, HEADER_LEN,
};

const SECRET: &[u8] = b"a-shared-secret-of-24-oc";

fn attr(out: &mut Vec<u8>, typ: u8, value: &[u8]) {
    out.push(typ);
    out.push(u8::try_from(value.len() + 2).expect("short attribute"));
    out.extend_from_slice(value);
}

fn vsa_3gpp(out: &mut Vec<u8>, sub: u8, value: &[u8]) {
    let mut data = 10415u32.to_be_bytes().to_vec();
    attr(&mut data, sub, value);
    attr(out, 26, &data);
}

/// A signed Accounting-Request Start as a packet core sends it.
fn typical_start() -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, 40, &1u32.to_be_bytes());
    attr(&mut attrs, 4, &[192, 0, 2, 10]);
    attr(&mut attrs, 8, &[10, 45, 3, 7]);
    attr(&mut attrs, 31, b"819012345678");
    attr(&mut attrs, 44, b"4f2a90c1");
    vsa_3gpp(&mut attrs, 1, b"440101234567890");
    vsa_3gpp(&mut attrs, 20, b"3534900812345601");
    let mut packet = vec![CODE_ACCOUNTING_REQUEST, 42];
    let len = u16::try_from(HEADER_LEN + attrs.len()).expect("fits");
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&[0; 16]);
    packet.extend(attrs);
    sign_accounting_request(&mut packet, SECRET).expect("bench packet signs");
    packet
}

fn bench(c: &mut Criterion) {
    let packet = typical_start();
    let mut group = c.benchmark_group("radius_accounting");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_verify_start", |b| {
        b.iter(
            || match decode_accounting_request(black_box(&packet), SECRET) {
                Ok(req) if req.status_type == AcctStatusType::Start => black_box(req.framed_ip),
                other => panic!("bench packet must decode: {other:?}"),
            },
        );
    });
    group.bench_function("decode_unverified_start", |b| {
        b.iter(|| match dangerous_decode_unverified(black_box(&packet)) {
            Ok(req) => black_box(req.imsi),
            Err(e) => panic!("bench packet must decode: {e:?}"),
        });
    });
    let auth = [0x5a; 16];
    group.bench_function("encode_response", |b| {
        b.iter(|| encode_accounting_response(black_box(42), black_box(&auth), SECRET));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
