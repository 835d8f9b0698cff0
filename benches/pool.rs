//! Criterion bench for the upstream pool's per-request work: checking an idle, already
//! handshaken TLS connection out of a shard's pool (`Pools::take_idle`, which includes the
//! liveness check — a non-blocking receive poll on the socket through the reactor) and giving it
//! back (`Pools::check_in`). Every pooled HTTP request pays this pair once.
//!
//! The connections are real: TLS 1.3 to the built-in HTTPS sink on loopback, handshaken once
//! before measuring. Nothing is sent on them while measuring. Run with `cargo bench --bench pool`
//! on a quiet machine.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simgate::config::compile_str;
use simgate::reactor::{self, ReactorConfig};
use simgate::testkit::{HttpsSink, SinkConfig, TestPki};
use simgate::upstream::{self, ConnectParams, Pools, UpstreamConn};

/// Idle connections in the pool while measuring (the most recently used one is taken each time).
const POOLED: usize = 8;

fn pool_checkout(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let cert = pki
        .server_cert("sink", &["localhost"])
        .expect("server certificate");
    let sink = HttpsSink::start(SinkConfig::new(cert)).expect("HTTPS sink");
    let toml = format!(
        r#"[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[destination]]
name = "sink"
adapter = "https"
endpoint = "{addr}"
server_name = "localhost"
ca = "{ca}"
[destination.pool]
warm = 0
max_idle = {POOLED}
[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
"#,
        addr = sink.addr(),
        ca = pki.ca_pem.display()
    );
    let plan = compile_str(&toml, dir.path()).unwrap_or_else(|e| panic!("bench config: {e}"));
    let dest = plan.destinations[0].clone();

    reactor::block_on(&ReactorConfig::default(), async {
        let mut pools = Pools::new(&plan, 0, 1);
        for _ in 0..POOLED {
            let (stream, _) = upstream::connect(ConnectParams::for_destination(&dest))
                .await
                .expect("connect to the sink");
            pools.check_in(UpstreamConn::new(stream, dest.id, 0), Instant::now());
        }
        let mut group = c.benchmark_group("upstream_pool");
        group.throughput(Throughput::Elements(1));
        group.bench_function("take_idle_then_check_in", |b| {
            b.iter(|| {
                let now = Instant::now();
                let conn = pools
                    .take_idle(black_box(dest.id), now)
                    .expect("a live idle connection");
                pools.check_in(black_box(conn), now);
            })
        });
        group.finish();
    })
    .expect("io_uring reactor");
    sink.shutdown();
}

criterion_group!(benches, pool_checkout);
criterion_main!(benches);
