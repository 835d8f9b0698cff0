//! Heap held per idle device connection, counted exactly rather than read from RSS.
//!
//! RSS per connection (what docs/benchmarks.md reports from `simgate-load run idle-fleet`) moves
//! by megabytes between identical runs, because the allocator keeps freed pages of the connect
//! ramp. This test runs a gateway in-process under a counting global allocator and measures the
//! bytes the gateway has allocated and not freed per idle device — the part the code controls,
//! and what issue #4's "≤ 2 KiB per idle MQTT device" is made of. A regression such as a
//! connection future that stores its state twice shows here as hundreds of bytes per device.
//!
//! The upstream is a real mosquitto over TLS. The devices are plain sockets that send a CONNECT
//! (and one PINGREQ, so each has exchanged traffic after admission) and then hold still: a real
//! client library would add nothing here but allocations of its own in this process.
//!
//! Debug builds (what `cargo test` runs) keep more in async state machines than release builds
//! do; the budget below is for the debug build, and the figure printed is what to compare
//! between commits. Release figures are in docs/benchmarks.md.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::mosquitto::{Broker, BrokerOptions};
use simgate::proto::mqtt::{self, Connect, Packet, Properties, ProtocolVersion};
use simgate::testkit::TestPki;

/// Counts bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap once it has stopped moving (the shard finishes what a device's last packet
/// started — a send completing, a buffer returned — after the device has its answer).
fn settled_live_bytes() -> isize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = LIVE_BYTES.load(Ordering::Relaxed);
    let mut stable_reads = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = LIVE_BYTES.load(Ordering::Relaxed);
        if now == last {
            stable_reads += 1;
            if stable_reads == 3 {
                return now;
            }
        } else {
            stable_reads = 0;
            last = now;
        }
    }
    panic!("live heap did not settle within 10 s (last {last} B)");
}

/// CONNECT then PINGREQ, encoded before measuring so the test's own allocations stay out.
fn device_hello(i: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 300,
        properties: Properties::default(),
        client_id: Bytes::from(format!("idle-{i:06}")),
        will: None,
        username: None,
        password: None,
    }));
    mqtt::encode(&connect, ProtocolVersion::V311, &mut out).expect("encode CONNECT");
    mqtt::encode(&Packet::PingReq, ProtocolVersion::V311, &mut out).expect("encode PINGREQ");
    out.to_vec()
}

/// Connect `hellos.len()` devices and wait for each one's CONNACK (0x20 0x02 0x00 0x00) and
/// PINGRESP (0xd0 0x00).
fn connect_devices(addr: SocketAddr, hellos: &[Vec<u8>], devices: &mut Vec<TcpStream>) {
    const CONNACK_OK_PINGRESP: [u8; 6] = [0x20, 0x02, 0x00, 0x00, 0xd0, 0x00];
    for hello in hellos {
        let mut s = TcpStream::connect(addr).expect("connect to simgate");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(hello).expect("send CONNECT");
        let mut answer = [0u8; 6];
        s.read_exact(&mut answer).expect("CONNACK and PINGRESP");
        assert_eq!(answer, CONNACK_OK_PINGRESP, "device admitted and answered");
        devices.push(s);
    }
}

#[test]
fn idle_aggregate_mqtt_device_holds_under_2_kib_of_heap() {
    const WARM: usize = 200;
    const MEASURED: usize = 2000;
    const BUDGET_BYTES: isize = 2048;

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let toml = broker
        .gateway_toml(
            1,
            &pki.ca_pem,
            "mode = \"aggregate\"\nkeep_alive = \"60s\"",
            "warm = 0",
        )
        .replace("[gateway]\n", "[gateway]\nrecv_buffers = 64\n")
        .replace("admin = \"127.0.0.1:0\"", "admin = \"off\"");
    let path = dir.path().join("simgate.toml");
    std::fs::write(&path, toml).expect("write config");
    let plan = simgate::config::load_plan(&path).expect("config loads");
    let gateway = simgate::shard::Gateway::start(Arc::new(plan)).expect("gateway starts");
    let addr = gateway
        .listener_addrs()
        .iter()
        .find(|(name, _)| name == "mqtt")
        .map(|(_, a)| *a)
        .expect("mqtt listener");

    let hellos: Vec<Vec<u8>> = (0..WARM + MEASURED).map(device_hello).collect();
    let mut devices = Vec::with_capacity(WARM + MEASURED);
    // The first devices pay one-time costs (the upstream link, slabs and maps growing from
    // empty); the figure is the cost of each further device.
    connect_devices(addr, &hellos[..WARM], &mut devices);
    let before = settled_live_bytes();
    connect_devices(addr, &hellos[WARM..], &mut devices);
    let after = settled_live_bytes();

    let per_device = (after - before) / MEASURED as isize;
    println!(
        "idle aggregate MQTT device: {per_device} B of live heap each \
         ({MEASURED} devices, {} B in all)",
        after - before
    );
    assert!(
        per_device <= BUDGET_BYTES,
        "an idle aggregate-mode device holds {per_device} B of heap, over the {BUDGET_BYTES} B \
         budget: look for connection futures that grew (nightly `-Zprint-type-sizes`)"
    );

    // Every device is still connected: nothing was dropped to make the figure small.
    for s in &mut devices {
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle device's connection changed state: {other:?}"),
        }
    }
    drop(devices);
    gateway.shutdown();
}
