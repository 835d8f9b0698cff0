//! The SIM table at fleet size: building it from a 1,000,000-row `sims_file`, its memory per
//! SIM, and lookups by source IP (hit and miss) and by IMSI. Also measures the alternatives the
//! layout was chosen against (docs/decisions/0010-sim-table-layout.md): an IPv4 index in a std
//! `HashMap<u32, u32>` (SipHash) and in one with a multiplicative hasher.
//!
//! Run with `cargo bench --bench sim_table`. Before criterion starts, the bench prints one
//! measured load of the whole config (`config::load_plan`, file read included), the heap the
//! table keeps (counted by this binary's allocator: requested bytes, before allocator
//! rounding), the peak heap while building, and the same for the hash-map alternatives.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simgate::identity::{read_csv, Imsi, SimTable, SimTableBuilder, CSV_HEADER};

/// Counts live and peak heap bytes (requested sizes).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System` unchanged; only counts sizes on the side.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System` with `layout`; same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIMS: u32 = 1_000_000;

/// The IPv4 address of generated SIM `i`: 10.0.0.0 + 3·i (spread over 10.0.0.0/8, not dense).
fn sim_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + 3 * i)
}

/// A `sims_file` of `n` SIMs: every one with IPv4, IMEI, MSISDN, SIM id, name and two tags
/// (`site` from 200 values, `model` from 8); about 120 bytes a row.
fn generated_csv(n: u32) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(n as usize * 128);
    text.push_str(CSV_HEADER);
    text.push('\n');
    for i in 0..n {
        let _ = writeln!(
            text,
            "4401{i:011},{},35{i:013},+8180{i:08},sim-{i:08},device {i},farm,site=site-{};model=m{}",
            sim_ip(i),
            i % 200,
            i % 8
        );
    }
    text
}

fn build(text: &str) -> SimTable {
    let mut builder = SimTableBuilder::new();
    builder.reserve(SIMS as usize);
    let mut bad = 0usize;
    read_csv(text, |_, row| match row {
        Ok(row) => bad += usize::from(builder.push(&row, 0, 0).is_err()),
        Err(_) => bad += 1,
    })
    .expect("generated header");
    assert_eq!(bad, 0, "generated rows are valid");
    builder.finish().expect("generated SIMs are unique")
}

/// Pseudo-random indexes (xorshift), so lookups do not walk the table in order.
fn spread(n: usize, modulo: u32) -> Vec<u32> {
    let mut x = 0x9e37_79b9u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % modulo
        })
        .collect()
}

/// Fx-style multiplicative hasher for `u32` keys (the alternative to the sorted index).
#[derive(Default)]
struct MulHasher(u64);

impl Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// One full config load (file read, parse, validation, build), measured once, and the memory
/// figures; printed for docs/benchmarks.md.
fn report(text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("sims.csv"), text).expect("write sims.csv");
    let config = dir.path().join("simgate.toml");
    std::fs::write(
        &config,
        "[gateway]\nsims_file = \"sims.csv\"\n\
         [[listener]]\nname = \"http\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\n\
         [[group]]\nname = \"default\"\n[[group]]\nname = \"farm\"\n",
    )
    .expect("write config");
    let start = Instant::now();
    let plan = simgate::config::load_plan(&config).unwrap_or_else(|e| panic!("{e}"));
    let load = start.elapsed();
    assert_eq!(plan.sims.len(), SIMS as usize);
    drop(plan);

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();
    let table = build(text);
    let build_time = start.elapsed();
    let kept = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let n = f64::from(SIMS);
    eprintln!(
        "sim_table: {SIMS} SIMs, csv {:.1} MB; load_plan {:.0} ms; parse+build from text {:.0} ms",
        text.len() as f64 / 1e6,
        load.as_secs_f64() * 1e3,
        build_time.as_secs_f64() * 1e3
    );
    eprintln!(
        "sim_table: kept {kept} B = {:.1} B/SIM (heap_bytes() {:.1} B/SIM); peak while building {:.1} B/SIM (text not counted)",
        kept as f64 / n,
        table.heap_bytes() as f64 / n,
        peak as f64 / n
    );
    drop(table);

    // The alternatives for the IPv4 index: what a hash map of the same 1M entries keeps.
    let pairs: Vec<(u32, u32)> = (0..SIMS).map(|i| (u32::from(sim_ip(i)), i)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let std_map: HashMap<u32, u32> = pairs.iter().copied().collect();
    let std_bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(std_map);
    let before = LIVE.load(Ordering::Relaxed);
    let mul_map: HashMap<u32, u32, BuildHasherDefault<MulHasher>> = pairs.iter().copied().collect();
    let mul_bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(mul_map);
    eprintln!(
        "sim_table: IPv4 index for 1M SIMs: sorted Vec<(u32, u32)> {:.1} B/SIM; HashMap<u32, u32> {:.1} B/SIM (either hasher: {std_bytes} / {mul_bytes} B)",
        (pairs.len() * 8) as f64 / n,
        std_bytes as f64 / n,
    );
}

fn sim_table(c: &mut Criterion) {
    let text = generated_csv(SIMS);
    report(&text);

    let mut group = c.benchmark_group("sim_table");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(SIMS)));
    group.bench_function("build_1m_from_csv_text", |b| {
        b.iter(|| build(black_box(&text)))
    });
    group.finish();

    let table = build(&text);
    let hits: Vec<IpAddr> = spread(4096, SIMS)
        .into_iter()
        .map(|i| IpAddr::V4(sim_ip(i)))
        .collect();
    // Misses inside the table's range (between two SIMs' addresses) and outside it.
    let misses: Vec<IpAddr> = spread(4096, SIMS)
        .into_iter()
        .enumerate()
        .map(|(k, i)| {
            let ip = u32::from(sim_ip(i));
            IpAddr::V4(Ipv4Addr::from(if k % 2 == 0 {
                ip + 1
            } else {
                ip ^ 0x4000_0000
            }))
        })
        .collect();
    let imsis: Vec<Imsi> = spread(4096, SIMS)
        .into_iter()
        .map(|i| Imsi::parse(&format!("4401{i:011}")).expect("generated IMSI"))
        .collect();

    let mut group = c.benchmark_group("sim_table_1m");
    group.throughput(Throughput::Elements(1));
    let mut k = 0usize;
    group.bench_function("by_ip_v4_hit", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(table.by_ip(black_box(hits[k])).map(|s| s.group_index()))
        })
    });
    group.bench_function("by_ip_v4_miss", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(table.by_ip(black_box(misses[k])).is_some())
        })
    });
    group.bench_function("by_imsi_hit", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(table.by_imsi(black_box(imsis[k])).map(|s| s.group_index()))
        })
    });
    group.bench_function("by_ip_v4_hit_then_name_and_tags", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let sim = table.by_ip(black_box(hits[k]));
            black_box(sim.map(|s| (s.name().map(str::len), s.tags().count())))
        })
    });

    // The alternatives, same keys.
    let pairs: Vec<(u32, u32)> = (0..SIMS).map(|i| (u32::from(sim_ip(i)), i)).collect();
    let std_map: HashMap<u32, u32> = pairs.iter().copied().collect();
    let mul_map: HashMap<u32, u32, BuildHasherDefault<MulHasher>> = pairs.iter().copied().collect();
    let key = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(_) => 0,
    };
    group.bench_function("alt_std_hashmap_v4_hit", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(std_map.get(&key(black_box(hits[k]))).copied())
        })
    });
    group.bench_function("alt_mul_hashmap_v4_hit", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(mul_map.get(&key(black_box(hits[k]))).copied())
        })
    });
    group.bench_function("alt_mul_hashmap_v4_miss", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(mul_map.get(&key(black_box(misses[k]))).copied())
        })
    });
    group.finish();
}

criterion_group!(benches, sim_table);
criterion_main!(benches);
