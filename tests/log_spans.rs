//! The log as an operator reads it while devices misbehave: with `--log-format json`, a line
//! logged while serving a device connection carries the connection's span (shard, peer, SIM,
//! destination), and a flood of bad requests yields a handful of lines whose held-back counts
//! account for every one of them, while simgate keeps serving.

mod common;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::Client;
use common::{post, raw_exchange, Device, Simgate, World};
use serde_json::Value;
use simgate::proto::mqtt::ProtocolVersion;
use simgate::testkit::TestPki;

const KNOWN_SIM_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const KNOWN_IMSI: &str = "001010000000042";

/// The harness logs at `simgate=debug`, where every held-back fault also shows (at debug);
/// an operator runs at info, so the counts below are of info lines.
const JSON: &[&str] = &["--log-format", "json"];

/// The JSON lines of simgate's log so far.
fn json_lines(gw: &Simgate) -> Vec<Value> {
    gw.stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Poll the log until a line matches `pred`, or panic with the log after 20 s.
fn wait_for_line(gw: &Simgate, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = json_lines(gw).into_iter().find(|l| pred(l)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no such line within 20 s; log:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_gateway_error_line_carries_shard_sim_and_destination_of_the_connection() {
    let world = World::new();
    let sink = world.sink.addr().to_string();
    let dead = format!("127.0.0.1:{}", closed_port());
    let toml = world.config("", "").replace(&sink, &dead)
        + &format!(
            r#"
[[sim]]
imsi = "{KNOWN_IMSI}"
ip = "{KNOWN_SIM_IP}"
name = "meter-42"
group = "default"
"#
        );
    assert!(toml.contains(&dead), "endpoint replaced: {toml}");
    let gw = Simgate::start_with_args(world.dir.path(), &toml, JSON);

    let mut device = Device::connect_from(gw.http, KNOWN_SIM_IP);
    let resp = device.request(&post(
        "/t",
        b"secret-payload-42",
        "Authorization: Bearer secret-token-42\r\n",
    ));
    assert!(resp.status >= 500, "the upstream is down: {}", resp.status);

    let line = wait_for_line(&gw, |l| {
        l["fields"]["message"] == "request answered with a gateway error"
    });
    let span = &line["span"];
    assert_eq!(span["name"], "connection", "{line}");
    assert!(span["shard"].as_u64().is_some_and(|s| s < 2), "{line}");
    assert_eq!(span["sim"], KNOWN_IMSI, "{line}");
    assert_eq!(span["destination"], "sink", "{line}");
    assert_eq!(span["protocol"], "http", "{line}");
    assert!(
        span["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.2:")),
        "{line}"
    );
    drop(device);

    assert_eq!(gw.stop(), Some(0), "clean exit");
    let log = std::fs::read_to_string(world.dir.path().join("simgate.stderr")).expect("log");
    assert!(!log.contains("secret-payload"), "no payloads: {log}");
    assert!(!log.contains("secret-token"), "no secrets: {log}");
}

#[test]
fn a_flood_of_bad_requests_logs_a_few_lines_that_account_for_all_of_them() {
    const BAD_REQUESTS: u64 = 2_000;
    const DEVICES: u64 = 4;
    let world = World::new();
    let gw = Simgate::start_with_args(world.dir.path(), &world.config("", ""), JSON);
    let addr = gw.http;

    // Each bad request on its own connection (simgate closes after a 400), from 4 devices at once.
    std::thread::scope(|s| {
        for _ in 0..DEVICES {
            s.spawn(|| {
                for _ in 0..BAD_REQUESTS / DEVICES {
                    let resp = raw_exchange(addr, b"NOT\x01HTTP AT ALL\r\n\r\n");
                    assert_eq!(resp.status, 400);
                }
            });
        }
    });

    // Still serving.
    let resp = Device::connect(addr).request(&post("/t", b"after the flood", ""));
    assert_eq!(resp.status, 200, "{}", resp.body_text());

    // The stop logs what each shard still held back, so the log is complete once it exits.
    assert_eq!(gw.stop(), Some(0), "clean exit");
    let log = std::fs::read_to_string(world.dir.path().join("simgate.stderr")).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fault_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["level"] == "INFO" && l["fields"]["fault"] == "bad_http_request")
        .collect();

    // One line per shard per 10 s, plus one closing count per shard: a handful, not 2,000.
    assert!(
        !fault_lines.is_empty() && fault_lines.len() < 40,
        "{} lines for the fault:\n{log}",
        fault_lines.len()
    );
    // Every bad request is either a line of its own or counted in a later line's
    // `similar_since_last_line`.
    let accounted: u64 = fault_lines
        .iter()
        .map(|l| {
            let own = u64::from(l["fields"]["message"] == "device fault");
            own + l["fields"]["similar_since_last_line"]
                .as_u64()
                .unwrap_or_else(|| panic!("no held-back count: {l}"))
        })
        .sum();
    assert_eq!(accounted, BAD_REQUESTS, "{log}");

    // The lines logged on a connection carry its span: shard, peer, and an unknown SIM (the
    // loopback address is no SIM's); no destination, as nothing was routed.
    for line in fault_lines
        .iter()
        .filter(|l| l["fields"]["message"] == "device fault")
    {
        let span = &line["span"];
        assert_eq!(span["name"], "connection", "{line}");
        assert!(span["shard"].as_u64().is_some(), "{line}");
        assert_eq!(span["sim"], "unknown", "{line}");
        assert!(span.get("destination").is_none(), "{line}");
        assert!(line["fields"]["detail"].is_string(), "{line}");
    }
    assert!(!log.contains("NOT\\u0001HTTP"), "no request bytes: {log}");
}

/// Both MQTT modes: a device of a known SIM that sends a malformed packet after its CONNECT
/// gets a line carrying its span (protocol mqtt, the SIM, the destination routed at CONNECT).
#[test]
fn a_bad_mqtt_packet_line_carries_the_session_span_in_both_modes() {
    for (mode, mqtt_table) in [
        ("aggregate", "mode = \"aggregate\"\n"),
        (
            "session",
            "mode = \"session\"\nversion = \"device\"\nclient_id = \"gw-{client_id}\"\n\
             topic = \"devices/{client_id}/{topic}\"\n",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
        let toml = broker.gateway_toml(1, &pki.ca_pem, mqtt_table, "warm = 0")
            + &format!(
                "\n[[sim]]\nimsi = \"{KNOWN_IMSI}\"\nip = \"{KNOWN_SIM_IP}\"\ngroup = \"default\"\n"
            );
        let gw = Simgate::start_with_args(dir.path(), &toml, JSON);
        let mut device = Client::connect_from(
            gw.listener("mqtt"),
            KNOWN_SIM_IP,
            "meter-42",
            ProtocolVersion::V5,
        )
        .unwrap_or_else(|e| panic!("{mode}: CONNECT: {e:?}"));
        // Packet type 0 is reserved: malformed.
        device.send_raw(&[0x00, 0x00]).expect("send");
        let line = wait_for_line(&gw, |l| l["fields"]["fault"] == "bad_mqtt_packet");
        let span = &line["span"];
        assert_eq!(span["name"], "connection", "{mode}: {line}");
        assert_eq!(span["protocol"], "mqtt", "{mode}: {line}");
        assert_eq!(span["shard"], 0, "{mode}: {line}");
        assert_eq!(span["sim"], KNOWN_IMSI, "{mode}: {line}");
        assert_eq!(span["destination"], "broker", "{mode}: {line}");
        assert_eq!(line["level"], "INFO", "{mode}: {line}");
        // Counted too, under the session's destination as well as globally (the device's
        // error is counted when its session ends, just after the line: polled).
        let series = "simgate_destination_errors_total{destination=\"broker\",protocol=\"mqtt\",kind=\"device_bad_request\"} 1";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, text) = gw.admin_get("/metrics");
            if text.lines().any(|l| l == series) {
                assert!(
                    text.lines()
                        .any(|l| l == "simgate_mqtt_errors_total{kind=\"device_bad_request\"} 1"),
                    "{mode}: {text}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: no {series}:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
