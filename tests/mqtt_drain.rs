//! Graceful drain of MQTT sessions against a real mosquitto over TLS, in both bridging modes:
//! on SIGTERM a v5 device with a QoS 1 message still unacknowledged upstream first gets that
//! PUBACK (once the broker gives it), then DISCONNECT 0x8B "Server shutting down"; a 3.1.1
//! device is closed at once (it has nothing in flight); nothing the device sends during the
//! drain is acknowledged; simgate exits 0. The Wills of devices closed by the drain reach the
//! broker.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions, Sub};
use common::mqtt_client::Client;
use common::Simgate;
use simgate::proto::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use simgate::testkit::TestPki;

fn start_gateway(dir: &Path, pki: &TestPki, broker: &Broker, mqtt: &str) -> Simgate {
    let toml = broker.gateway_toml(1, &pki.ca_pem, mqtt, "warm = 0");
    Simgate::start(dir, &toml)
}

/// Publish QoS 1 and wait for its PUBACK (the upstream path is up end to end).
fn publish_acked(c: &mut Client, id: u16) {
    c.publish("warm", "w", QoS::AtLeastOnce, id)
        .expect("publish");
    match c.next(Duration::from_secs(10)) {
        Ok(Some(Packet::PubAck(a))) if a.packet_id.get() == id => {}
        other => panic!("expected PUBACK {id}, got {other:?}"),
    }
}

fn drain_scenario(mqtt: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let gw = start_gateway(dir.path(), &pki, &broker, mqtt);
    let addr: SocketAddr = gw.listener("mqtt");
    let mut v5 = Client::connect(addr, "drain-v5", ProtocolVersion::V5, true).expect("v5");
    let mut v3 = Client::connect(addr, "drain-v3", ProtocolVersion::V311, true).expect("v3");
    publish_acked(&mut v5, 1);
    publish_acked(&mut v3, 1);

    // A QoS 1 message upstream that the (frozen) broker has not acknowledged yet.
    broker.freeze();
    v5.publish("in-flight", "m7", QoS::AtLeastOnce, 7)
        .expect("publish 7");
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.unread_tls_bytes() == 0 {
        assert!(
            Instant::now() < deadline,
            "simgate never forwarded the PUBLISH"
        );
        std::thread::sleep(Duration::from_millis(5)); // polling the kernel's socket queues
    }

    gw.terminate();
    // The 3.1.1 device has nothing in flight: closed at once, without any packet.
    let v3_got = v3.until_closed(Duration::from_secs(10));
    assert!(v3_got.is_empty(), "3.1.1 device got {v3_got:?}");
    // Draining has begun (the 3.1.1 device is gone): what the v5 device sends now is not read.
    let _ = v5.publish("too-late", "m8", QoS::AtLeastOnce, 8);
    broker.thaw();
    let v5_got = v5.until_closed(Duration::from_secs(10));
    let acks: Vec<u16> = v5_got
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![7], "v5 device got {v5_got:?}");
    match v5_got.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN),
        other => panic!("v5 device's last packet: {other:?} (all: {v5_got:?})"),
    }
    let log = gw.stderr();
    assert_eq!(gw.wait_exit(), Some(0), "simgate exit code; log:\n{log}");
}

/// `[destination.mqtt]` of the two bridging modes under test.
const AGGREGATE: &str = "mode = \"aggregate\"\nkeep_alive = \"10s\"\n";
const SESSION: &str = "mode = \"session\"\nversion = \"device\"\nclient_id = \"gw-{client_id}\"\n\
                       topic = \"devices/{client_id}/{topic}\"\n";

#[test]
fn sigterm_drains_aggregate_sessions_v5_gets_disconnect_0x8b_after_its_puback() {
    drain_scenario(AGGREGATE);
}

#[test]
fn sigterm_drains_session_mode_v5_gets_disconnect_0x8b_after_its_puback() {
    drain_scenario(SESSION);
}

/// A device's Will is published when simgate shuts down under it: the drain closes the device's
/// connection without a DISCONNECT from the device, which is exactly when MQTT says the Will
/// goes out (MQTT 5.0 section 3.1.2.5). simgate still exits 0.
fn will_on_drain_scenario(mqtt: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let checker = Sub::start(broker.plain_port, "devices/+/status", &["-q", "1"]);
    let gw = start_gateway(dir.path(), &pki, &broker, mqtt);
    let addr: SocketAddr = gw.listener("mqtt");
    // A device with a Will; its SUBACK (which `Sub::start` waits for) shows it is connected.
    let device = Sub::start(
        addr.port(),
        "cmd",
        &[
            "-i",
            "will-dev",
            "--will-topic",
            "status",
            "--will-payload",
            "gateway-gone",
            "--will-qos",
            "1",
        ],
    );
    gw.terminate();
    assert_eq!(
        checker.next_message(Duration::from_secs(10)).as_deref(),
        Some("devices/will-dev/status gateway-gone"),
        "the Will reaches the broker; simgate log:\n{}",
        gw.stderr()
    );
    let log = gw.stderr();
    assert_eq!(gw.wait_exit(), Some(0), "simgate exit code; log:\n{log}");
    drop(device);
}

#[test]
fn sigterm_publishes_the_wills_of_aggregate_devices() {
    will_on_drain_scenario(AGGREGATE);
}

#[test]
fn sigterm_publishes_the_wills_of_session_mode_devices() {
    will_on_drain_scenario(SESSION);
}
