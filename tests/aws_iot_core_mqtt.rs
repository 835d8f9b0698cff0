//! `adapter = "aws-iot-core"` over MQTT (session mode) end to end: a real `simgate run` with
//! the gateway's client certificate (minted by the test CA), the AWS IoT Core contract front
//! (tests/python/mqtt_cloud_front.py, `"cloud": "aws"`: it requires a client certificate of the
//! test CA, checks ALPN when asked, clamps keep-alive, disconnects on QoS 2, over-long or
//! over-deep topics, reserved `$aws/` topics and payloads over 128 KB, as AWS does) in front of
//! a real mosquitto, and raw MQTT devices (tests/common/mqtt_client.rs).
//!
//! What is checked: the upstream client id is the SIM's IMSI and keep-alive is clamped (in
//! mosquitto's connection log, which sees the CONNECT the front relays), a v5 device is told
//! Server Keep Alive; QoS 2 is carried as QoS 1 with the device's exchange completed after the
//! cloud's PUBACK; topics with too many slashes or bytes and reserved topics are answered
//! PUBACK 0x90 (v5, session kept) or closed (3.1.1), a payload over 128 KB DISCONNECT 0x95,
//! each counted in `simgate_mqtt_cloud_refusals_total` and never seen by the front (its
//! `/stats` shows no rule disconnect and only the accepted messages relayed); the port-443
//! form's ALPN `x-amzn-mqtt-ca` (a front that requires it refuses a destination without it);
//! Device Shadow and Jobs round trips through `shadow/...` and `jobs/...` device topics, the
//! shadow service played by a client on mosquitto's plaintext port.

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use common::cloud_front::{CloudFront, FrontCloud};
use common::mosquitto::{publish, Broker, BrokerOptions, Sub};
use common::mqtt_client::{Client, ClientError};
use common::Simgate;
use serde_json::json;
use simgate::proto::mqtt::{
    Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
};
use simgate::testkit::TestPki;

const WAIT: Duration = Duration::from_secs(15);
const IMSI: &str = "001010000000002";

/// simgate in front of `front`, the destination's extra keys and `[destination.mqtt]` table
/// as given.
fn config(pki: &TestPki, front: &CloudFront, extra: &str, mqtt_table: &str) -> String {
    let cert = pki.client_cert("gateway").expect("gateway certificate");
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
name = "gateway-cert"
kind = "x509"
cert = "{cert}"
key = "{key}"

[[destination]]
name = "aws"
adapter = "aws-iot-core"
credential = "gateway-cert"
endpoint = "{front}"
server_name = "localhost"
ca = "{ca}"
{extra}
[destination.mqtt]
mode = "session"
{mqtt_table}

[[sim]]
imsi = "{IMSI}"
ip = "127.0.0.1"
group = "default"

[[group]]
name = "default"
routes = [ {{ listener = "mqtt", destination = "aws" }} ]
"#,
        cert = cert.cert.display(),
        key = cert.key.display(),
        front = front.addr(),
        ca = pki.ca_pem.display(),
    )
}

fn next_packet(device: &mut Client) -> Packet {
    match device.next(WAIT) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet, got {other:?}"),
    }
}

/// The next PUBLISH the device receives (acknowledged if QoS 1; other packets skipped).
fn next_publish(device: &mut Client) -> Publish {
    loop {
        if let Packet::Publish(p) = next_packet(device) {
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                device
                    .send(&Packet::PubAck(PubResponse::success(id)))
                    .expect("puback");
            }
            return p;
        }
    }
}

fn publish_qos1(device: &mut Client, topic: &[u8], payload: Bytes, id: u16) -> PubResponse {
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::copy_from_slice(topic),
            packet_id: NonZeroU16::new(id),
            properties: Properties::default(),
            payload,
        }))
        .expect("publish");
    match next_packet(device) {
        Packet::PubAck(ack) => {
            assert_eq!(ack.packet_id.get(), id);
            ack
        }
        other => panic!("expected PUBACK {id}, got {other:?}"),
    }
}

/// The value of one line of simgate's /metrics.
fn metric(gw: &Simgate, line_start: &str) -> u64 {
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

fn refusals(gw: &Simgate, rule: &str) -> u64 {
    metric(
        gw,
        &format!("simgate_mqtt_cloud_refusals_total{{adapter=\"aws-iot-core\",rule=\"{rule}\"}}"),
    )
}

#[test]
fn things_connect_as_their_sim_and_simgate_refuses_what_aws_would_disconnect_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = CloudFront::start(dir.path(), &pki, &broker, FrontCloud::Aws, json!({}));
    let cloud_side = Sub::start(broker.plain_port, "telemetry/#", &["-q", "1"]);
    let gw = Simgate::start(dir.path(), &config(&pki, &front, "", ""));

    // CONNECT: client id = the IMSI; keep-alive 5 s is clamped to AWS's 30 upstream, and the
    // v5 device is told so.
    let mut device =
        Client::connect_keep_alive(gw.listener("mqtt"), "meter", ProtocolVersion::V5, true, 5)
            .unwrap_or_else(|e| panic!("{e:?}\n{}\n{}", gw.stderr(), front.stderr()));
    assert_eq!(
        device
            .connack()
            .and_then(|c| c.properties.server_keep_alive),
        Some(30)
    );
    broker.wait_log_where(WAIT, |l| l.contains(&format!(" as {IMSI} (p5, c1, k30")));

    // Uplink on the device's topic.
    let ack = publish_qos1(
        &mut device,
        b"telemetry/temp",
        Bytes::from_static(b"21.5"),
        1,
    );
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        cloud_side.next_message(WAIT).as_deref(),
        Some("telemetry/temp 21.5")
    );

    // QoS 2: carried as QoS 1 (the front would disconnect a QoS 2 PUBLISH); the device's PUBREC
    // comes after the cloud's PUBACK, its PUBCOMP from simgate.
    device
        .publish("telemetry/alarm", "fire", QoS::ExactlyOnce, 2)
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
    assert_eq!(
        cloud_side.next_message(WAIT).as_deref(),
        Some("telemetry/alarm fire")
    );
    broker.wait_log_where(WAIT, |l| {
        l.contains(&format!("Received PUBLISH from {IMSI} (d0, q1, r0, m2,"))
    });

    // Topics AWS would disconnect for: PUBACK 0x90, the session goes on.
    let too_deep = b"telemetry/a/b/c/d/e/f/g/h";
    let too_long = [b'x'; 257];
    let reserved = b"$aws/things/someone-else/shadow/update";
    for (id, topic) in [
        (3u16, &too_deep[..]),
        (4, &too_long[..]),
        (5, &reserved[..]),
    ] {
        let ack = publish_qos1(&mut device, topic, Bytes::from_static(b"no"), id);
        assert_eq!(
            ack.reason_code,
            ReasonCode::TOPIC_NAME_INVALID,
            "{}",
            String::from_utf8_lossy(topic)
        );
    }
    let ack = publish_qos1(
        &mut device,
        b"telemetry/after",
        Bytes::from_static(b"ok"),
        6,
    );
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "the session was kept");
    assert_eq!(
        cloud_side.next_message(WAIT).as_deref(),
        Some("telemetry/after ok")
    );

    // A payload over 128 KB: DISCONNECT 0x95, never sent.
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"telemetry/blob"),
            packet_id: NonZeroU16::new(7),
            properties: Properties::default(),
            payload: Bytes::from(vec![b'z'; 128 * 1024 + 1]),
        }))
        .expect("publish");
    let rest = device.until_closed(WAIT);
    assert!(
        matches!(rest.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PACKET_TOO_LARGE),
        "{rest:?}"
    );

    // A 3.1.1 device cannot be told: a refused topic closes its connection.
    let mut old = Client::connect(gw.listener("mqtt"), "meter", ProtocolVersion::V311, true)
        .expect("3.1.1 device");
    old.publish("telemetry/a/b/c/d/e/f/g/h", "no", QoS::AtLeastOnce, 1)
        .expect("publish");
    assert!(
        old.until_closed(WAIT).is_empty(),
        "closed without an answer"
    );

    // Counted by rule; the front saw only the three accepted messages and no rule breach.
    assert_eq!(refusals(&gw, "topic_slashes"), 2);
    assert_eq!(refusals(&gw, "topic_bytes"), 1);
    assert_eq!(refusals(&gw, "reserved_topic"), 1);
    assert_eq!(refusals(&gw, "payload_too_large"), 1);
    assert_eq!(refusals(&gw, "client_id_too_long"), 0);
    let stats = front.stats();
    assert_eq!(stats["publishes_relayed"], 3, "{stats}");
    for rule in [
        "qos2",
        "topic_bytes",
        "topic_slashes",
        "reserved_topic",
        "payload_too_large",
    ] {
        assert_eq!(
            front.stat(&format!("disconnects.{rule}")),
            0,
            "{rule}: {stats}"
        );
    }
    assert_eq!(front.stat("connections_refused.client_id"), 0, "{stats}");
}

#[test]
fn the_port_443_form_offers_alpn_x_amzn_mqtt_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    // A front that, like AWS on 443, takes MQTT with a client certificate only with the ALPN.
    let front = CloudFront::start(
        dir.path(),
        &pki,
        &broker,
        FrontCloud::Aws,
        json!({"alpn": "x-amzn-mqtt-ca"}),
    );
    let cloud_side = Sub::start(broker.plain_port, "telemetry/#", &["-q", "1"]);
    // The test front cannot listen on 443, so the ALPN is named (on 443 it is the default).
    let gw = Simgate::start(
        dir.path(),
        &config(
            &pki,
            &front,
            "alpn = [\"x-amzn-mqtt-ca\"]",
            "version = \"3.1.1\"",
        ),
    );
    // A 3.1.1 device with keep-alive 3600 s: AWS's 1200 upstream (simgate pings in between;
    // mosquitto logs 3.1.1 as "p2").
    let mut device = Client::connect_keep_alive(
        gw.listener("mqtt"),
        "meter",
        ProtocolVersion::V311,
        true,
        3600,
    )
    .unwrap_or_else(|e| panic!("{e:?}\n{}", front.stderr()));
    broker.wait_log_where(WAIT, |l| l.contains(&format!(" as {IMSI} (p2, c1, k1200")));
    device
        .publish("telemetry/t", "1", QoS::AtLeastOnce, 1)
        .expect("publish");
    assert!(matches!(next_packet(&mut device), Packet::PubAck(_)));
    assert_eq!(
        cloud_side.next_message(WAIT).as_deref(),
        Some("telemetry/t 1")
    );
    assert_eq!(front.stat("connections_refused.alpn"), 0);

    // Without the ALPN the same front refuses the connection: the device gets 0x88 / 3.
    drop(device);
    let dir2 = dir.path().join("no-alpn");
    std::fs::create_dir_all(&dir2).expect("dir");
    let gw2 = Simgate::start(&dir2, &config(&pki, &front, "", ""));
    match Client::connect(gw2.listener("mqtt"), "meter", ProtocolVersion::V5, true) {
        Err(ClientError::Refused(code)) => assert_eq!(code, ReasonCode::SERVER_UNAVAILABLE),
        Ok(_) => panic!("connected without the ALPN"),
        Err(e) => panic!("{e:?}"),
    }
    // (Counted once per TLS connection: the pool's warm one too.)
    assert!(
        front.stat("connections_refused.alpn") >= 1,
        "{}",
        front.stats()
    );
}

#[test]
fn device_shadow_and_jobs_round_trip_through_the_things_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = CloudFront::start(dir.path(), &pki, &broker, FrontCloud::Aws, json!({}));
    // The shadow service's side: what the thing publishes to its shadow.
    let shadow_service = Sub::start(
        broker.plain_port,
        &format!("$aws/things/{IMSI}/shadow/update"),
        &["-q", "1"],
    );
    let gw = Simgate::start(dir.path(), &config(&pki, &front, "", ""));
    let mut device = Client::connect(gw.listener("mqtt"), "meter", ProtocolVersion::V5, true)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", front.stderr()));
    device
        .subscribe("shadow/update/accepted", QoS::AtLeastOnce)
        .expect("shadow/update/accepted granted");
    device
        .subscribe("shadow/update/rejected", QoS::AtLeastOnce)
        .expect("shadow/update/rejected granted");
    device
        .subscribe("jobs/notify", QoS::AtLeastOnce)
        .expect("jobs/notify granted");

    let update = r#"{"state":{"reported":{"temp":21}}}"#;
    let ack = publish_qos1(
        &mut device,
        b"shadow/update",
        Bytes::from(update.to_owned()),
        1,
    );
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        shadow_service.next_message(WAIT),
        Some(format!("$aws/things/{IMSI}/shadow/update {update}"))
    );

    // The shadow service answers on the thing's accepted topic: the device gets it on its own.
    let accepted = r#"{"state":{"reported":{"temp":21}},"version":1}"#;
    let (ok, stderr) = publish(
        broker.plain_port,
        &format!("$aws/things/{IMSI}/shadow/update/accepted"),
        accepted,
        &["-q", "1"],
    );
    assert!(ok, "{stderr}");
    let got = next_publish(&mut device);
    assert_eq!(&got.topic[..], b"shadow/update/accepted");
    assert_eq!(&got.payload[..], accepted.as_bytes());

    // Jobs: a notification to the thing arrives on jobs/notify.
    let (ok, stderr) = publish(
        broker.plain_port,
        &format!("$aws/things/{IMSI}/jobs/notify"),
        r#"{"jobs":{}}"#,
        &["-q", "1"],
    );
    assert!(ok, "{stderr}");
    let got = next_publish(&mut device);
    assert_eq!(&got.topic[..], b"jobs/notify");
    assert_eq!(front.stat("disconnects.reserved_topic"), 0);
}

#[test]
fn check_names_the_missing_x509_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let path = dir.path().join("simgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[destination]]
name = "aws"
adapter = "aws-iot-core"
endpoint = "127.0.0.1:8883"
ca = "{ca}"
[destination.mqtt]
mode = "session"

[[group]]
name = "default"
routes = [ {{ listener = "mqtt", destination = "aws" }} ]
"#,
            ca = pki.ca_pem.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simgate"))
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
        text.contains("destination[0].credential")
            && text.contains("required for adapter \"aws-iot-core\" over MQTT"),
        "{text}"
    );
}
