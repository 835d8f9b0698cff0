//! Criterion benches for per-message work outside the codecs: rendering an aggregate-mode topic
//! template (`devices/{client_id}/{topic}`), recording a request's latencies into the shard's
//! HDR histograms (the two gateway-wide ones, and a destination's `request_duration` and
//! `upstream_rtt`), and counting a message into the shard's usage meter (10 000 SIMs active).
//! Each runs once per relayed message. Run with `cargo bench --bench
//! policy_metrics` on a quiet machine; instruction counts of the same loops are in
//! benches/instructions.rs (scripts/callgrind.sh).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simgate::policy::template::Placeholder;
use simgate::policy::{Template, TemplateVars};
use simgate::shard::{Protocol, ShardMetrics};
use simgate::stats::Latency;

fn topic_template(c: &mut Criterion) {
    let template = Template::parse(
        "devices/{client_id}/{topic}",
        &[Placeholder::ClientId, Placeholder::Topic],
    )
    .expect("fixed template parses");
    let vars = TemplateVars {
        client_id: b"440103123456789",
        topic: b"sensor/telemetry",
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17)),
        shard: 0,
        conn: 0,
        sim: None,
    };
    let mut out = Vec::with_capacity(128);
    let mut group = c.benchmark_group("topic_template");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render_client_id_topic", |b| {
        b.iter(|| {
            out.clear();
            template.render_into(black_box(&vars), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn histogram_record(c: &mut Criterion) {
    let mut metrics = ShardMetrics::default();
    let mut value = 0u64;
    let mut group = c.benchmark_group("latency_histograms");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record_total_and_added", |b| {
        b.iter(|| {
            value = (value * 7 + 13) % 50_000;
            metrics.record_latency(black_box(value + 100), black_box(value / 10 + 1));
        })
    });
    // What an HTTP request adds now: its device-observed time and its upstream round trip into
    // its destination's histograms (8 destinations configured, names checked per record).
    let names: Vec<String> = (0..8).map(|i| format!("destination-{i}")).collect();
    metrics
        .latency
        .set_destinations(names.iter().map(String::as_str));
    let mut d = 0usize;
    group.bench_function("record_per_destination_duration_and_rtt", |b| {
        b.iter(|| {
            value = (value * 7 + 13) % 50_000;
            d = (d + 5) % names.len();
            let name = names[d].as_str();
            metrics.record_destination(
                d,
                black_box(name),
                Latency::RequestDuration,
                Protocol::Http,
                black_box(value + 100),
            );
            metrics.record_destination(
                d,
                black_box(name),
                Latency::UpstreamRtt,
                Protocol::Http,
                black_box(value / 2 + 1),
            );
        })
    });
    group.finish();
}

fn usage_meter(c: &mut Criterion) {
    use simgate::identity::Imsi;
    use simgate::stats::usage::{ShardUsage, UsageKey};
    let keys: Vec<UsageKey> = (0..10_000u64)
        .map(|i| UsageKey {
            imsi: Imsi::parse(&format!("44010{i:010}")),
            group: i % 7,
        })
        .collect();
    let mut usage = ShardUsage::default();
    let now = std::time::Instant::now();
    let mut i = 0usize;
    let mut group = c.benchmark_group("usage_meter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("uplink_10k_sims", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            usage.uplink(black_box(keys[i]), 1, black_box(48), now);
        })
    });
    group.finish();
}

criterion_group!(benches, topic_template, histogram_record, usage_meter);
criterion_main!(benches);
