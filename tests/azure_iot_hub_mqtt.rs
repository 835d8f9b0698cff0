//! `adapter = "azure-iot-hub"` over MQTT (session mode) with a real `simgate run`, through the
//! IoT Hub contract front (tests/python/mqtt_cloud_front.py: it verifies the SAS password
//! with `azure-iot-device`'s own code, IoT Hub's topics, filters and QoS, and closes a
//! connection when its token's `se` passes) in front of a real mosquitto 2.x.
//!
//! Through the front: the upstream client id (the SIM's IMSI) and user name
//! (`myhub.azure-devices.net/{imsi}/?api-version=2021-04-12`) in mosquitto's connection log,
//! the uplink topic with its URL-encoded property bag (a direct subscriber on
//! `devices/+/messages/events/#`), cloud-to-device messages published on
//! `devices/{imsi}/messages/devicebound/{bag}` reaching the device on `devicebound` with the
//! bag as v5 user properties, QoS 2 from a device carried as QoS 1 with the device's exchange
//! completed after the hub's PUBACK, a retained PUBLISH from a v5 device refused with
//! DISCONNECT 0x9A, the hub dropping the connection ending the session with DISCONNECT 0x80;
//! and token renewal: with 5 s tokens, two devices (5.0 and 3.1.1) publishing QoS 1
//! continuously across two renewals each lose nothing, are never disconnected, and keep their
//! subscriptions.
//!
//! Against plain mosquitto (what only it can show): the gateway in process, with no control
//! thread, against a broker that accepts only IoT Hub's user name with the shard's token as
//! password: no token (or an expired one) is CONNACK 0x88 and `credential_unavailable`, the
//! token handed to the shards is the password; and `simgate check` refusing aggregate mode
//! with the reason.

mod common;

use std::num::NonZeroU16;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cloud_front::{CloudFront, FrontCloud};
use common::mosquitto::{publish, Broker, BrokerOptions, Sub};
use common::mqtt_client::{Client, ClientError};
use common::Simgate;
use serde_json::json;
use simgate::proto::mqtt::{
    Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, UserProperty,
};
use simgate::testkit::TestPki;

const WAIT: Duration = Duration::from_secs(15);
const IMSI: &str = "001010000000002";
const IMEI: &str = "490154203237518";
/// A second SIM (source address 127.0.0.2), for the renewal test's second device.
const IMSI2: &str = "001010000000003";

/// A gateway config whose `azure-iot-hub` destination is plain mosquitto (which does not
/// verify the token), with `mqtt_table` as its `[destination.mqtt]`.
fn config(dir: &Path, pki: &TestPki, broker: &Broker, mqtt_table: &str) -> String {
    let endpoint = format!("127.0.0.1:{}", broker.tls_port);
    hub_config(dir, &endpoint, &pki.ca_pem, "", mqtt_table)
}

/// The one gateway config of these tests: two SIMs (127.0.0.1 and .2), an `azure-iot-hub`
/// destination at `endpoint` (policy key `HUB_KEY`), `dest_extra` added to the destination
/// table and `mqtt_table` as its `[destination.mqtt]`.
fn hub_config(dir: &Path, endpoint: &str, ca: &Path, dest_extra: &str, mqtt_table: &str) -> String {
    std::fs::write(dir.join("hub.key"), HUB_KEY).expect("key file");
    format!(
        r#"
[gateway]
shards = 1
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"
unknown = "reject"

[[credential]]
name = "hub"
kind = "azure-sas"
key_name = "device-gateway"
key = {{ file = "hub.key" }}

[[destination]]
name = "hub"
adapter = "azure-iot-hub"
hub = "myhub"
credential = "hub"
endpoint = "{endpoint}"
server_name = "localhost"
ca = "{ca}"
{dest_extra}
[destination.mqtt]
{mqtt_table}

[[sim]]
imsi = "{IMSI}"
ip = "127.0.0.1"
imei = "{IMEI}"
group = "default"

[[sim]]
imsi = "{IMSI2}"
ip = "127.0.0.2"
group = "default"

[[group]]
name = "default"
attach = ["imsi", "imei"]
routes = [ {{ listener = "mqtt", destination = "hub" }} ]
"#,
        ca = ca.display(),
    )
}

/// Connect a device, retrying while simgate has no token yet (CONNACK 0x88 until the control
/// thread's first SAS token reaches the shard).
fn connect_device(gw: &Simgate, version: ProtocolVersion) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(gw.listener("mqtt"), "meter", version, true) {
            Ok(c) => return c,
            Err(ClientError::Refused(code)) if Instant::now() < deadline => {
                assert!(
                    code == ReasonCode::SERVER_UNAVAILABLE || code == ReasonCode(3),
                    "refused with {code:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("device could not connect: {e:?}"),
        }
    }
}

/// The next PUBLISH the device receives (PINGRESP and acks skipped).
fn next_publish(device: &mut Client) -> Publish {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match device.next(Duration::from_secs(1)) {
            Ok(Some(Packet::Publish(p))) => return p,
            Ok(_) => {}
            Err(e) => panic!("device: {e:?}"),
        }
    }
    panic!("no PUBLISH reached the device");
}

fn next_packet(device: &mut Client) -> Packet {
    match device.next(WAIT) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet, got {other:?}"),
    }
}

#[test]
fn devices_are_iot_hub_devices_uplink_and_cloud_to_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let mut broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = start_front(dir.path(), &pki, &broker);
    let hub_side = Sub::start(
        broker.plain_port,
        "devices/+/messages/events/#",
        &["-q", "1"],
    );
    let gw = Simgate::start(dir.path(), &front_config(dir.path(), &front, ""));

    // CONNECT: client id = the IMSI, user name = IoT Hub's, the SAS token verified by the
    // front (relayed to mosquitto as sent).
    let mut device = connect_device(&gw, ProtocolVersion::V5);
    let username = format!("u'myhub.azure-devices.net/{IMSI}/?api-version=2021-04-12'");
    broker.wait_log_where(WAIT, |line| {
        line.contains(&format!(" as {IMSI} ")) && line.contains(&username)
    });

    // The device subscribes to its C2D topic: answered by simgate (QoS 2 granted as 1; the
    // client checks the SUBACK grants it).
    device
        .subscribe("devicebound", QoS::ExactlyOnce)
        .expect("devicebound granted");
    assert!(
        matches!(
            device.subscribe("cmd/#", QoS::AtLeastOnce),
            Err(ClientError::Protocol(_))
        ),
        "only the C2D topic is granted"
    );

    // Uplink: identity, topic and the device's user properties in the property bag.
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"sensors/temp"),
            packet_id: NonZeroU16::new(1),
            properties: Properties {
                user_properties: vec![UserProperty {
                    name: Bytes::from_static(b"unit"),
                    value: Bytes::from_static(b"deg C"),
                }],
                ..Properties::default()
            },
            payload: Bytes::from_static(b"21.5"),
        }))
        .expect("publish");
    match next_packet(&mut device) {
        Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected the hub's PUBACK, got {other:?}"),
    }
    let seen = hub_side
        .next_message(WAIT)
        .expect("the hub got the message");
    assert_eq!(
        seen,
        format!(
            "devices/{IMSI}/messages/events/imsi={IMSI}&imei={IMEI}&topic=sensors%2Ftemp&unit=deg%20C 21.5"
        )
    );

    // Cloud-to-device: on `devicebound`, the bag as user properties.
    let (ok, stderr) = publish(
        broker.plain_port,
        &format!("devices/{IMSI}/messages/devicebound/%24.mid=42&k=v"),
        "reboot",
        &["-q", "1"],
    );
    assert!(ok, "{stderr}");
    let c2d = next_publish(&mut device);
    assert_eq!(&c2d.topic[..], b"devicebound");
    assert_eq!(&c2d.payload[..], b"reboot");
    let props: Vec<(String, String)> = c2d
        .properties
        .user_properties
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.name).into_owned(),
                String::from_utf8_lossy(&p.value).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        props,
        vec![("$.mid".into(), "42".into()), ("k".into(), "v".into())]
    );
    if let Some(id) = c2d.packet_id {
        device
            .send(&Packet::PubAck(PubResponse::success(id)))
            .expect("puback");
    }

    // QoS 2: carried as QoS 1 (the broker logs q1); the device's exchange completes after the
    // hub's PUBACK: PUBREC, then simgate's own PUBCOMP.
    device
        .publish("alarm", "fire", QoS::ExactlyOnce, 2)
        .expect("publish");
    match next_packet(&mut device) {
        Packet::PubRec(r) => assert_eq!(r.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    device
        .send(&Packet::PubRel(PubResponse::success(
            NonZeroU16::new(2).expect("id"),
        )))
        .expect("pubrel");
    match next_packet(&mut device) {
        Packet::PubComp(r) => assert_eq!(r.packet_id.get(), 2),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let seen = hub_side
        .next_message(WAIT)
        .expect("the hub got the message");
    assert!(seen.ends_with("&topic=alarm fire"), "{seen}");
    let q1 = format!("Received PUBLISH from {IMSI} (d0, q1, r0, m2,");
    broker.wait_log_where(WAIT, |line| line.contains(&q1));

    // Retain: IoT Hub has none; the v5 device is told 0x9A and disconnected.
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: Bytes::from_static(b"state"),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"on"),
        }))
        .expect("publish");
    match next_packet(&mut device) {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode(0x9A)),
        other => panic!("expected DISCONNECT 0x9A, got {other:?}"),
    }

    // A 3.1.1 device: uplink without user properties, C2D on the same device topic.
    let mut old = connect_device(&gw, ProtocolVersion::V311);
    old.publish("status", "ok", QoS::AtLeastOnce, 3)
        .expect("publish");
    assert!(matches!(next_packet(&mut old), Packet::PubAck(_)));
    let seen = hub_side
        .next_message(WAIT)
        .expect("the hub got the message");
    assert_eq!(
        seen,
        format!("devices/{IMSI}/messages/events/imsi={IMSI}&imei={IMEI}&topic=status ok")
    );
    let (ok, stderr) = publish(
        broker.plain_port,
        &format!("devices/{IMSI}/messages/devicebound/k=v"),
        "hello",
        &["-q", "1"],
    );
    assert!(ok, "{stderr}");
    let c2d = next_publish(&mut old);
    assert_eq!(&c2d.topic[..], b"devicebound");
    assert_eq!(&c2d.payload[..], b"hello");
    drop(old);

    // The front took every CONNECT (the SAS password as azure-iot-device computes it), topic,
    // filter and QoS: simgate refused the retained PUBLISH itself.
    let stats = front.stats();
    assert_eq!(stats["connections_refused"], json!({}), "{stats}");
    assert_eq!(stats["disconnects"], json!({}), "{stats}");

    // The hub going away ends the session as in any session mode: a v5 device gets
    // DISCONNECT 0x80, then is closed.
    let mut device = connect_device(&gw, ProtocolVersion::V5);
    broker.kill9();
    let rest = device.until_closed(WAIT);
    assert!(
        matches!(rest.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode(0x80)),
        "{rest:?}"
    );
}

/// In process (no control thread, so no token until the test hands one to the shards), against
/// a broker whose TLS listener accepts only IoT Hub's user name with the token as password.
#[test]
fn the_sas_token_is_the_password_and_without_one_the_device_gets_0x88() {
    let token = "SharedAccessSignature sr=myhub.azure-devices.net&sig=c2ln&se=4102444800&skn=device-gateway";
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(
        dir.path(),
        &pki,
        BrokerOptions {
            password: Some((
                format!("myhub.azure-devices.net/{IMSI}/?api-version=2021-04-12"),
                token.to_owned(),
            )),
            ..BrokerOptions::default()
        },
    );
    let toml = config(dir.path(), &pki, &broker, "mode = \"session\"");
    let plan = std::sync::Arc::new(
        simgate::config::compile_str(&toml, dir.path()).unwrap_or_else(|e| panic!("{e}")),
    );
    let mut gateway = simgate::shard::Gateway::start(plan.clone()).expect("gateway");
    let addr = gateway
        .listener_addrs()
        .iter()
        .find(|(n, _)| n == "mqtt")
        .map(|(_, a)| *a)
        .expect("mqtt listener");

    // No token yet: refused with "server unavailable", counted, nothing sent upstream.
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        match Client::connect(addr, "meter", version, true) {
            Err(ClientError::Refused(code)) => assert!(
                code == ReasonCode::SERVER_UNAVAILABLE || code == ReasonCode(3),
                "{version:?}: {code:?}"
            ),
            Ok(_) => panic!("{version:?}: connected without a token"),
            Err(e) => panic!("{version:?}: {e:?}"),
        }
    }
    assert_eq!(
        gateway.metrics().errors_of(
            simgate::shard::Protocol::Mqtt,
            simgate::shard::ErrorKind::CredentialUnavailable
        ),
        2
    );

    // An expired token is no token.
    let expired = simgate::policy::cloud::Token {
        authorization: token.into(),
        expires_at: std::time::SystemTime::now() - Duration::from_secs(1),
    };
    gateway
        .set_tokens(&plan, vec![(simgate::policy::DestinationId(0), expired)])
        .expect("tokens");
    assert!(matches!(
        Client::connect(addr, "meter", ProtocolVersion::V5, true),
        Err(ClientError::Refused(ReasonCode::SERVER_UNAVAILABLE))
    ));

    // The token is the password the broker checks.
    let valid = simgate::policy::cloud::Token {
        authorization: token.into(),
        expires_at: std::time::SystemTime::now() + Duration::from_secs(600),
    };
    gateway
        .set_tokens(&plan, vec![(simgate::policy::DestinationId(0), valid)])
        .expect("tokens");
    let mut device = Client::connect(addr, "meter", ProtocolVersion::V5, true)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", broker.log()));
    device
        .publish("t", "1", QoS::AtLeastOnce, 1)
        .expect("publish");
    assert!(matches!(next_packet(&mut device), Packet::PubAck(_)));
    gateway.shutdown();
}

#[test]
fn check_refuses_aggregate_mode_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let path = dir.path().join("simgate.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pki, &broker, "mode = \"aggregate\""),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_simgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run simgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("destination[0].mqtt.mode")
            && text.contains("an IoT Hub MQTT connection is one device: use session mode"),
        "{text}"
    );
}

/// The hub policy key (base64) the contract front checks the SAS signature with.
const HUB_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

/// A gateway config whose `azure-iot-hub` destination is the contract front (session mode),
/// with `dest_extra` added to the destination table.
fn front_config(dir: &Path, front: &CloudFront, dest_extra: &str) -> String {
    hub_config(
        dir,
        &front.addr(),
        &front.ca,
        dest_extra,
        "mode = \"session\"",
    )
}

fn start_front(dir: &Path, pki: &TestPki, broker: &Broker) -> CloudFront {
    CloudFront::start(
        dir,
        pki,
        broker,
        FrontCloud::Azure,
        json!({"hub": "myhub", "key": HUB_KEY, "key_name": "device-gateway"}),
    )
}

/// `simgate_mqtt_session_renewals_total{result}` from /metrics.
fn renewals(gw: &Simgate, result: &str) -> u64 {
    let (status, body) = gw.admin_get("/metrics");
    assert_eq!(status, 200, "{body}");
    let prefix = format!("simgate_mqtt_session_renewals_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

/// Publish QoS 1 from `device`, up to `WINDOW` in flight (so some are in flight at each
/// switch), until `stop` is set (by this device or another) once /metrics counts `renewals`
/// successful renewals; then collect the last PUBACKs. Returns the payloads acknowledged.
/// Anything but a PUBACK (a DISCONNECT, a close, silence) fails the test.
fn publish_until_renewed(
    device: &mut Client,
    label: &str,
    gw: &Simgate,
    stop: &std::sync::atomic::AtomicBool,
    renewed: u64,
) -> Vec<String> {
    use std::sync::atomic::Ordering;
    const WINDOW: usize = 8;
    let mut in_flight: std::collections::HashMap<u16, String> = Default::default();
    let mut acked: Vec<String> = Vec::new();
    let mut sent = 0u32;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() {
            return acked;
        }
        while !stopping && in_flight.len() < WINDOW {
            sent += 1;
            let id = (sent % 60_000) as u16 + 1;
            let payload = format!("{label}-{sent}");
            device
                .publish("telemetry", &payload, QoS::AtLeastOnce, id)
                .expect("publish");
            in_flight.insert(id, payload);
        }
        match device.next(WAIT) {
            Ok(Some(Packet::PubAck(ack))) => {
                assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{label}: {ack:?}");
                let payload = in_flight.remove(&ack.packet_id.get()).unwrap_or_else(|| {
                    panic!("{label}: PUBACK for {} not in flight", ack.packet_id)
                });
                acked.push(payload);
                if acked.len() % 50 == 0 && renewals(gw, "ok") >= renewed {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            other => panic!(
                "{label}: the device must see only PUBACKs, got {other:?} after {} acks; simgate:\n{}",
                acked.len(),
                gw.stderr()
            ),
        }
    }
}

#[test]
fn token_renewal_under_qos1_load_loses_nothing_and_the_device_sees_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = start_front(dir.path(), &pki, &broker);
    let events = Sub::start(
        broker.plain_port,
        "devices/+/messages/events/#",
        &["-q", "1"],
    );
    // Tokens live 10 s: a newer one reaches the shard every 8 s (2 s before the old one
    // expires; the renewal is placed in the first second of that), and the front closes any
    // connection whose token's `se` passes (rule "sas_expired"). With 5 s (1 s left, renewal in
    // the first 0.5 s) a renewal — a new TLS connect, CONNECT and subscriptions — could run past
    // the old token on a loaded 2-core machine (seen once with a build running beside the suite).
    // Receive Maximum 8, as many as a device keeps in flight: a session holds at most 8
    // requests for resending, and a ninth would wait at that bound.
    let toml = front_config(dir.path(), &front, "token_ttl = \"10s\"").replace(
        "unknown = \"reject\"",
        "unknown = \"reject\"\nreceive_maximum = 8",
    );
    let gw = Simgate::start(dir.path(), &toml);
    // Two devices (two SIMs, two IoT Hub sessions, renewing at their own moments): a 5.0
    // device with a twin subscription, which each new connection must carry, and a 3.1.1 one.
    let mut device = connect_device(&gw, ProtocolVersion::V5);
    device
        .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
        .expect("twin subscription");
    let mut other = Client::connect_from(
        gw.listener("mqtt"),
        "127.0.0.2".parse().expect("ip"),
        "meter2",
        ProtocolVersion::V311,
    )
    .expect("second device");
    const DEVICES: u64 = 2;

    // QoS 1 from both until each session renewed twice (on average: the counter is the
    // shard's); every PUBACK accounted for, nothing else seen.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (acked, acked_other) = std::thread::scope(|scope| {
        let second =
            scope.spawn(|| publish_until_renewed(&mut other, "b", &gw, &stop, 2 * DEVICES));
        let first = publish_until_renewed(&mut device, "a", &gw, &stop, 2 * DEVICES);
        (first, second.join().expect("second device"))
    });
    let acked: Vec<String> = acked.into_iter().chain(acked_other).collect();

    // Every message acknowledged to the device reached the hub (duplicates allowed).
    let mut missing: std::collections::HashSet<&str> = acked.iter().map(|s| s.as_str()).collect();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = events.next_message(left) else {
            panic!(
                "{} acknowledged messages never reached the hub",
                missing.len()
            );
        };
        if let Some((_, payload)) = line.rsplit_once(' ') {
            missing.remove(payload);
        }
    }

    // The new connections carry the device's subscriptions: a twin answer and a C2D message
    // published at the hub now reach the device.
    let hub_publish = |topic: &str, payload: &str| {
        let (ok, stderr) = publish(broker.plain_port, topic, payload, &["-q", "1"]);
        assert!(ok, "{stderr}");
    };
    hub_publish("$iothub/twin/res/200/?$rid=1", "{}");
    let twin = next_publish(&mut device);
    assert_eq!(&twin.topic[..], b"$iothub/twin/res/200/?$rid=1");
    hub_publish(&format!("devices/{IMSI}/messages/devicebound/k=v"), "after");
    let c2d = next_publish(&mut device);
    assert_eq!(&c2d.topic[..], b"devicebound");
    assert_eq!(&c2d.payload[..], b"after");
    hub_publish(
        &format!("devices/{IMSI2}/messages/devicebound/k=v"),
        "after",
    );
    let c2d = next_publish(&mut other);
    assert_eq!(&c2d.payload[..], b"after");

    // The devices leave; then nothing renews any more and the counts can be compared.
    for d in [&mut device, &mut other] {
        d.send(&Packet::Disconnect(simgate::proto::mqtt::Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .expect("disconnect");
    }
    let stats = front.wait_stats(WAIT, |s| s["active_connections"] == 0);
    let ok = renewals(&gw, "ok");
    assert!(ok >= 2 * DEVICES, "{ok}");
    assert_eq!(renewals(&gw, "failed"), 0);
    assert_eq!(
        stats["connections_accepted"].as_u64(),
        Some(ok + DEVICES),
        "one accepted connection per renewal: {stats}"
    );
    assert!(
        stats["disconnects"].get("sas_expired").is_none(),
        "no connection outlived its token: {stats}"
    );
    assert_eq!(stats["connections_refused"], json!({}), "{stats}");
    eprintln!(
        "{} messages acknowledged across {ok} renewals; front: {stats}",
        acked.len()
    );
}
