//! End to end through a real `simgate run` process: simgate-load devices (HTTP and MQTT QoS 1)
//! → simgate (one shard, HTTP forward and MQTT aggregate mode) → the built-in HTTPS and MQTTS
//! sinks (TLS with certificates minted for the test), checking the sinks' delivery accounting:
//! nothing lost, duplicated or reordered; and, with loss injected at a sink (every 5th message of
//! each device discarded), exactly the injected loss counted.
//!
//! A mix (HTTP and MQTT devices side by side, `simgate_load::mix`) is checked the same way, each
//! part accounted by its own sink.
//!
//! The simgate binary is built by this test through cargo (`cargo build -p simgate --bin
//! simgate`, the path taken from cargo's JSON messages), so it is never a stale one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use simgate::testkit::TestPki;
use simgate_load::fleet::{self, RunOptions};
use simgate_load::mix;
use simgate_load::scenario::Scenario;
use simgate_load::sink::{Sink, SinkKind, SinkOptions};
use simgate_load::stats::Report;
use simgate_load::sut;

/// Builds the simgate binary and returns its path.
fn simgate_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-p",
            "simgate",
            "--bin",
            "simgate",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running `{cargo} build -p simgate` failed: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p simgate --bin simgate` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "simgate")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no simgate executable")
}

fn tls_sink(kind: SinkKind, pki: &TestPki, drop_every: Option<u64>) -> Sink {
    let cert = pki
        .server_cert(
            &format!("sink-{}", rand_suffix()),
            &["localhost", "127.0.0.1"],
        )
        .expect("server cert");
    Sink::start(SinkOptions {
        tls: Some(cert),
        drop_every,
        ..SinkOptions::new(kind)
    })
    .expect("sink")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct World {
    _dir: tempfile::TempDir,
    simgate: sut::Simgate,
    http: Sink,
    http_lossy: Sink,
    mqtt: Sink,
    mqtt_lossy: Sink,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let http = tls_sink(SinkKind::Http, &pki, None);
    let http_lossy = tls_sink(SinkKind::Http, &pki, Some(5));
    let mqtt = tls_sink(SinkKind::Mqtt, &pki, None);
    let mqtt_lossy = tls_sink(SinkKind::Mqtt, &pki, Some(5));
    let ca = pki.ca_pem.display();
    let https = |name: &str, sink: &Sink| {
        format!(
            "[[destination]]\nname = \"{name}\"\nadapter = \"https\"\nendpoint = \"{}\"\n\
             server_name = \"localhost\"\nca = \"{ca}\"\n",
            sink.addr()
        )
    };
    let mqtts = |name: &str, sink: &Sink| {
        format!(
            "[[destination]]\nname = \"{name}\"\nadapter = \"mqtts\"\nendpoint = \"{}\"\n\
             server_name = \"localhost\"\nca = \"{ca}\"\n[destination.mqtt]\nmode = \"aggregate\"\n",
            sink.addr()
        )
    };
    let listener = |name: &str, protocol: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n"
        )
    };
    let config = format!(
        "[gateway]\nshards = 1\npin_shards = false\nadmin = \"off\"\n{}{}{}{}{}{}{}{}\
         [[group]]\nname = \"default\"\nroutes = [\n\
           {{ listener = \"http\", path = \"/\", destination = \"http\" }},\n\
           {{ listener = \"http-lossy\", path = \"/\", destination = \"http-lossy\" }},\n\
           {{ listener = \"mqtt\", destination = \"mqtt\" }},\n\
           {{ listener = \"mqtt-lossy\", destination = \"mqtt-lossy\" }},\n]\n",
        listener("http", "http"),
        listener("http-lossy", "http"),
        listener("mqtt", "mqtt"),
        listener("mqtt-lossy", "mqtt"),
        https("http", &http),
        https("http-lossy", &http_lossy),
        mqtts("mqtt", &mqtt),
        mqtts("mqtt-lossy", &mqtt_lossy),
    );
    let path = dir.path().join("simgate.toml");
    std::fs::write(&path, config).expect("write config");
    let simgate = sut::start_simgate(
        &simgate_binary(),
        &path,
        None,
        &dir.path().join("simgate.log"),
    )
    .expect("simgate starts");
    World {
        _dir: dir,
        simgate,
        http,
        http_lossy,
        mqtt,
        mqtt_lossy,
    }
}

fn run_through(world: &World, listener: &str, sink: &Sink, protocol_toml: &str) -> Report {
    let (scenario, options) = part(world, listener, sink, protocol_toml);
    fleet::run(&scenario, &options, None).expect("run")
}

/// The scenario and options of a run of 4 devices through `listener` into `sink`.
fn part(world: &World, listener: &str, sink: &Sink, protocol_toml: &str) -> (Scenario, RunOptions) {
    let target: SocketAddr = world.simgate.listeners[listener];
    let scenario = Scenario::parse(&format!(
        "name = \"through-{listener}\"\n[fleet]\ndevices = 4\n{protocol_toml}"
    ))
    .expect("scenario");
    let options = RunOptions {
        target,
        duration: Duration::from_millis(1500),
        gateway_pid: Some(world.simgate.child.pid()),
        threads: 2,
        progress: false,
        label: None,
        delivery: Some(Arc::clone(sink.tracker())),
        mark_after: None,
    };
    (scenario, options)
}

const HTTP: &str = "protocol = \"http\"\n[traffic]\nrate_per_s = 200\nbody_bytes = 1024\n";
const MQTT: &str =
    "protocol = \"mqtt\"\n[traffic]\nrate_per_s = 200\nbody_bytes = 100\n[mqtt]\nqos = 1\n";

fn assert_clean(report: &Report) {
    let c = &report.counts;
    let d = report.delivery.expect("delivery");
    assert_eq!(c.error_total(), 0, "{}: {:?}", report.scenario, c.errors);
    assert!(c.ok >= 100, "{}: only {} ok", report.scenario, c.ok);
    // Acknowledged end to end means received; unacknowledged ones at the end may be too.
    assert!(
        (c.ok..=c.sent).contains(&d.unique),
        "{}: sink unique {} outside ok {} ..= sent {}",
        report.scenario,
        d.unique,
        c.ok,
        c.sent
    );
    assert_eq!(
        (
            d.lost,
            d.duplicates,
            d.reordered,
            d.malformed,
            d.dropped_by_sink
        ),
        (0, 0, 0, 0, 0),
        "{}",
        report.scenario
    );
    assert_eq!(d.devices, 4);
    assert_eq!(d.e2e_latency_us.count, d.unique);
}

fn assert_injected_loss_counted(report: &Report, sink: &Sink) {
    let c = &report.counts;
    assert_eq!(c.error_total(), 0, "{}: {:?}", report.scenario, c.errors);
    // One snapshot for both sides of the comparison: a message still in flight when the run
    // ended may reach the sink after the report's summary was taken.
    let tracker = sink.tracker().snapshot();
    let d = tracker.summary();
    // Every 5th message (seq 4, 9, 14, ...) of each device was discarded; each one below the
    // device's highest received seq is a gap the tracker must count, and nothing else.
    let expected: u64 = (0..4)
        .map(|device| tracker.highest_seq(device).map_or(0, |h| (h + 1) / 5))
        .sum();
    assert!(
        expected >= 20,
        "{}: too few messages ({d:?})",
        report.scenario
    );
    assert_eq!(d.lost, expected, "{}", report.scenario);
    assert!(d.dropped_by_sink >= d.lost && d.dropped_by_sink <= d.lost + 4);
    assert_eq!((d.duplicates, d.reordered), (0, 0), "{}", report.scenario);
}

#[test]
fn http_and_mqtt_aggregate_through_simgate_to_the_tls_sinks() {
    let world = world();
    let http = run_through(&world, "http", &world.http, HTTP);
    assert_clean(&http);
    let mqtt = run_through(&world, "mqtt", &world.mqtt, MQTT);
    assert_clean(&mqtt);
    assert!(
        world
            .http
            .counters()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(http.gateway.is_some_and(|g| g.cpu_seconds > 0.0));

    let http = run_through(&world, "http-lossy", &world.http_lossy, HTTP);
    assert_injected_loss_counted(&http, &world.http_lossy);
    let mqtt = run_through(&world, "mqtt-lossy", &world.mqtt_lossy, MQTT);
    assert_injected_loss_counted(&mqtt, &world.mqtt_lossy);
}

#[test]
fn a_mix_runs_http_and_mqtt_devices_side_by_side_each_accounted_by_its_sink() {
    let world = world();
    let reports = mix::run(&[
        part(&world, "http", &world.http, HTTP),
        part(&world, "mqtt", &world.mqtt, MQTT),
    ])
    .expect("mix runs");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].protocol, "http");
    assert_eq!(reports[1].protocol, "mqtt");
    for report in &reports {
        assert_clean(report);
    }
}
