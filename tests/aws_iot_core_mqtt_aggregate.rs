//! `adapter = "aws-iot-core"` over MQTT in aggregate mode (issue #13) end to end: a real
//! `simgate run` whose devices share `connections_per_shard = 2` links to the AWS IoT Core
//! contract front (tests/python/mqtt_cloud_front.py, `"cloud": "aws"`: client certificate of
//! the test CA, AWS's topic and payload rules, and the per-connection publish limit — more than
//! `max_publishes_per_second_per_connection` PUBLISHes on one connection in a sliding second are
//! throttled, dropped without a PUBACK, and counted in its `/stats` `publishes_throttled`) in
//! front of a real mosquitto, and raw MQTT devices (tests/common/mqtt_client.rs).
//!
//! What is checked: with simgate's `max_publish_rate` at the front's limit, a burst of QoS 1
//! messages from several devices (5.0 and 3.1.1) is paced: every message a device saw
//! acknowledged reaches mosquitto, the front throttled nothing and disconnected no link for a
//! rule, and simgate counted the waits in `simgate_mqtt_publish_rate_limited_total`; a topic
//! AWS would refuse is answered PUBACK 0x90 (5.0), counted in
//! `simgate_mqtt_cloud_refusals_total{adapter="aws-iot-core"}` and never reaches the front; a
//! payload over 128 KB ends the device's session with DISCONNECT 0x95, the link untouched. The
//! control: with `max_publish_rate` left at AWS's 100 over a front that allows 20, the same
//! burst is throttled by the front (so the first test can fail).

mod common;

use std::collections::BTreeSet;
use std::num::NonZeroU16;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::cloud_front::{CloudFront, FrontCloud};
use common::mosquitto::{Broker, BrokerOptions, Sub};
use common::mqtt_client::Client;
use common::Simgate;
use serde_json::json;
use simgate::proto::mqtt::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use simgate::testkit::TestPki;

const WAIT: Duration = Duration::from_secs(30);
/// The front's per-connection limit (AWS's is 100; lower keeps the test short).
const FRONT_RATE: u32 = 20;
const DEVICES: usize = 6;
const EACH: u16 = 10;

/// simgate in aggregate mode in front of `front`, with `mqtt_extra` in `[destination.mqtt]`.
fn config(pki: &TestPki, front: &CloudFront, mqtt_extra: &str) -> String {
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

[destination.pool]
backoff_initial = "50ms"
backoff_max = "400ms"

[destination.mqtt]
mode = "aggregate"
connections_per_shard = 2
keep_alive = "30s"
{mqtt_extra}

[[sim]]
imsi = "001010000000002"
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

/// What a [`burst`] saw: upstream topics acknowledged, refused 0x97, and the devices (still
/// connected).
type Burst = (BTreeSet<String>, BTreeSet<String>, Vec<Client>);

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
        &format!("simgate_mqtt_cloud_refusals_total{{adapter=\"aws-iot-core\",rule=\"{rule}\"}} "),
    )
}

fn rate_limited(gw: &Simgate, outcome: &str) -> u64 {
    metric(
        gw,
        &format!(
            "simgate_mqtt_publish_rate_limited_total{{destination=\"aws\",outcome=\"{outcome}\"}} "
        ),
    )
}

/// `DEVICES` devices (5.0 and 3.1.1 alternately) connect, then all send `EACH` QoS 1
/// PUBLISHes at once. With `wait_for_acks`, each collects its acknowledgements and the upstream
/// topics of those it saw succeed (and of those refused 0x97) are returned; without, the
/// devices only send (the control, where the throttled cloud never acknowledges). The devices
/// are returned still connected.
fn burst(gw: &Simgate, front: &CloudFront, wait_for_acks: bool) -> Burst {
    let addr = gw.listener("mqtt");
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let threads: Vec<_> = (0..DEVICES)
        .map(|i| {
            let ready = ready_tx.clone();
            let go = go_rx.clone();
            std::thread::spawn(
                move || -> Result<(Vec<String>, Vec<String>, Client), String> {
                    let version = if i % 2 == 0 {
                        ProtocolVersion::V5
                    } else {
                        ProtocolVersion::V311
                    };
                    let id = format!("meter-{i}");
                    let mut c = Client::connect(addr, &id, version, true)
                        .map_err(|e| format!("{id}: connect: {e:?}"))?;
                    let _ = ready.send(());
                    let _ = go.lock().map(|g| g.recv());
                    for n in 1..=EACH {
                        c.publish(
                            &format!("up/{n}"),
                            &format!("{id}:{n}"),
                            QoS::AtLeastOnce,
                            n,
                        )
                        .map_err(|e| format!("{id}: publish {n}: {e:?}"))?;
                    }
                    let (mut acked, mut refused) = (Vec::new(), Vec::new());
                    while wait_for_acks && acked.len() + refused.len() < usize::from(EACH) {
                        match c.next(WAIT) {
                            Ok(Some(Packet::PubAck(ack))) => {
                                let topic = format!("devices/{id}/up/{}", ack.packet_id);
                                match ack.reason_code {
                                    ReasonCode::SUCCESS => acked.push(topic),
                                    ReasonCode::QUOTA_EXCEEDED => refused.push(topic),
                                    other => return Err(format!("{id}: PUBACK {other}")),
                                }
                            }
                            Ok(Some(other)) => return Err(format!("{id}: unexpected {other:?}")),
                            Ok(None) => return Err(format!("{id}: no PUBACK within {WAIT:?}")),
                            Err(e) => return Err(format!("{id}: {e:?}")),
                        }
                    }
                    Ok((acked, refused, c))
                },
            )
        })
        .collect();
    for _ in 0..DEVICES {
        ready_rx.recv_timeout(WAIT).expect("every device connected");
    }
    for _ in 0..DEVICES {
        let _ = go_tx.send(());
    }
    let (mut acked, mut refused, mut devices) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for t in threads {
        match t.join().expect("device thread") {
            Ok((a, r, c)) => {
                acked.extend(a);
                refused.extend(r);
                devices.push(c);
            }
            Err(e) => panic!(
                "{e}\nthe front's stats: {}\nsimgate's log:\n{}",
                front.stats(),
                gw.stderr()
            ),
        }
    }
    (acked, refused, devices)
}

#[test]
fn shared_links_stay_within_awss_publish_limit_and_refuse_what_aws_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = CloudFront::start(
        dir.path(),
        &pki,
        &broker,
        FrontCloud::Aws,
        json!({ "max_publishes_per_second_per_connection": FRONT_RATE }),
    );
    let cloud_side = Sub::start(broker.plain_port, "devices/#", &["-q", "1"]);
    let gw = Simgate::start(
        dir.path(),
        &config(&pki, &front, &format!("max_publish_rate = {FRONT_RATE}")),
    );

    let (acked, refused, _devices) = burst(&gw, &front, true);
    eprintln!(
        "acked {}, refused {}, waited {}, spilled {}",
        acked.len(),
        refused.len(),
        rate_limited(&gw, "waited"),
        rate_limited(&gw, "spilled")
    );
    // Every acknowledged message reached mosquitto, once; nothing else did.
    let arrived: Vec<String> = cloud_side
        .messages(acked.len(), WAIT)
        .into_iter()
        .map(|m| m.split_once(' ').map(|(t, _)| t.to_owned()).unwrap_or(m))
        .collect();
    let distinct: BTreeSet<String> = arrived.iter().cloned().collect();
    assert_eq!(distinct.len(), arrived.len(), "a message arrived twice");
    assert_eq!(distinct, acked, "arrived != acknowledged");
    // simgate paced the links: the cloud never had to throttle, and the waits are counted.
    let stats = front.stats();
    assert_eq!(stats["publishes_throttled"], 0, "{stats}");
    assert_eq!(
        stats["publishes_relayed"].as_u64(),
        Some(acked.len() as u64),
        "{stats}"
    );
    assert!(
        rate_limited(&gw, "waited") > 0,
        "{} messages over two links of {FRONT_RATE}/s must wait",
        DEVICES * usize::from(EACH)
    );
    assert_eq!(rate_limited(&gw, "refused") as usize, refused.len());

    // A topic AWS would refuse (8 slashes once mapped): PUBACK 0x90, counted, never sent.
    let mut device = Client::connect(gw.listener("mqtt"), "deep", ProtocolVersion::V5, true)
        .expect("device connects");
    device
        .publish("a/b/c/d/e/f/g", "no", QoS::AtLeastOnce, 1)
        .expect("publish");
    match device.next(WAIT) {
        Ok(Some(Packet::PubAck(ack))) => {
            assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID)
        }
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    assert_eq!(refusals(&gw, "topic_slashes"), 1);
    // The session goes on, and the next message is the one the cloud sees.
    device
        .publish("after", "ok", QoS::AtLeastOnce, 2)
        .expect("publish");
    match device.next(WAIT) {
        Ok(Some(Packet::PubAck(ack))) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(
        cloud_side.next_message(WAIT).as_deref(),
        Some("devices/deep/after ok"),
        "the refused message never reached the cloud"
    );

    // A payload over 128 KB: DISCONNECT 0x95 for the device, the shared link untouched.
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"blob"),
            packet_id: NonZeroU16::new(3),
            properties: Properties::default(),
            payload: Bytes::from(vec![b'z'; 128 * 1024 + 1]),
        }))
        .expect("publish");
    let rest = device.until_closed(WAIT);
    assert!(
        matches!(rest.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PACKET_TOO_LARGE),
        "{rest:?}"
    );
    assert_eq!(refusals(&gw, "payload_too_large"), 1);

    let stats = front.stats();
    assert_eq!(stats["publishes_throttled"], 0, "{stats}");
    assert_eq!(
        stats["publishes_relayed"].as_u64(),
        Some(acked.len() as u64 + 1),
        "{stats}"
    );
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
fn control_a_rate_over_the_clouds_limit_is_throttled_by_the_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = CloudFront::start(
        dir.path(),
        &pki,
        &broker,
        FrontCloud::Aws,
        json!({ "max_publishes_per_second_per_connection": FRONT_RATE }),
    );
    // max_publish_rate left out: AWS's 100 per second, five times what this front allows.
    let gw = Simgate::start(dir.path(), &config(&pki, &front, ""));
    let (_, _, _devices) = burst(&gw, &front, false);
    let stats = front.wait_stats(WAIT, |s| {
        s["publishes_throttled"].as_u64().is_some_and(|n| n > 0)
    });
    eprintln!("control: {stats}");
}
