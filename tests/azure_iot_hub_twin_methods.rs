//! `adapter = "azure-iot-hub"` over MQTT: device twin and direct methods, end to end through the
//! IoT Hub contract front (tests/python/mqtt_cloud_front.py: it verifies simgate's SAS password
//! with `azure-iot-device`'s own code and refuses any topic or filter IoT Hub does not take)
//! in front of a real mosquitto, with a real `simgate run` and a raw MQTT 5 device.
//!
//! The "hub service" side is played on mosquitto's plaintext port: it answers the device's
//! twin GET, sends a desired-properties patch and invokes a direct method, as IoT Hub does on
//! the device's `$iothub/...` topics. The device uses IoT Hub's own twin topics (the default
//! `twin_topic`) and a `methods` prefix (`methods_topic = "methods"`), so both the pass-through
//! and the mapped form are exercised.

mod common;

use std::num::NonZeroU16;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cloud_front::{CloudFront, FrontCloud};
use common::mosquitto::{publish, Broker, BrokerOptions, Sub};
use common::mqtt_client::{Client, ClientError};
use common::Simgate;
use serde_json::json;
use simgate::proto::mqtt::{
    Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions,
};
use simgate::testkit::TestPki;

const WAIT: Duration = Duration::from_secs(15);
const IMSI: &str = "001010000000002";
/// The hub policy key (base64) the front checks the SAS signature with.
const HUB_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

fn config(dir: &Path, pki: &TestPki, front: &CloudFront) -> String {
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
endpoint = "{front}"
server_name = "localhost"
ca = "{ca}"
[destination.mqtt]
mode = "session"
methods_topic = "methods"

[[sim]]
imsi = "{IMSI}"
ip = "127.0.0.1"
group = "default"

[[group]]
name = "default"
attach = ["imsi"]
routes = [ {{ listener = "mqtt", destination = "hub" }} ]
"#,
        front = front.addr(),
        ca = pki.ca_pem.display(),
    )
}

/// Connect a device, retrying while simgate has no token yet (CONNACK 0x88 until the control
/// thread's first SAS token reaches the shard).
fn connect_device(gw: &Simgate) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(gw.listener("mqtt"), "meter", ProtocolVersion::V5, true) {
            Ok(c) => return c,
            Err(ClientError::Refused(code)) if Instant::now() < deadline => {
                assert_eq!(code, ReasonCode::SERVER_UNAVAILABLE, "refused");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("device could not connect: {e:?}"),
        }
    }
}

/// The next packet the device receives (PINGRESP skipped).
fn next_packet(device: &mut Client) -> Packet {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match device.next(Duration::from_secs(1)) {
            Ok(Some(Packet::PingResp) | None) => {}
            Ok(Some(p)) => return p,
            Err(e) => panic!("device: {e:?}"),
        }
    }
    panic!("nothing reached the device");
}

fn next_publish(device: &mut Client) -> Publish {
    match next_packet(device) {
        Packet::Publish(p) => p,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

fn device_publish(device: &mut Client, topic: &str, payload: &str, id: u16) {
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from(topic.to_owned()),
            packet_id: NonZeroU16::new(id),
            properties: Properties::default(),
            payload: Bytes::from(payload.to_owned()),
        }))
        .expect("publish");
    match next_packet(device) {
        Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{topic}"),
        other => panic!("expected the hub's PUBACK for {topic}, got {other:?}"),
    }
}

fn hub_publish(broker: &Broker, topic: &str, payload: &str) {
    let (ok, stderr) = publish(broker.plain_port, topic, payload, &["-q", "1"]);
    assert!(ok, "mosquitto_pub {topic}: {stderr}");
}

#[test]
fn twin_and_direct_methods_round_trip_through_the_hub_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let front = CloudFront::start(
        dir.path(),
        &pki,
        &broker,
        FrontCloud::Azure,
        json!({"hub": "myhub", "key": HUB_KEY, "key_name": "device-gateway"}),
    );
    let twin_requests = Sub::start(broker.plain_port, "$iothub/twin/#", &["-q", "1"]);
    let method_answers = Sub::start(broker.plain_port, "$iothub/methods/res/#", &["-q", "1"]);
    let gw = Simgate::start(dir.path(), &config(dir.path(), &pki, &front));
    let mut device = connect_device(&gw);

    // One SUBSCRIBE: the C2D topic (answered by simgate), the twin and method filters (the
    // hub's SUBACK) and a filter IoT Hub does not take (refused): the codes in order.
    let sub = |filter: &str| Subscription {
        filter: Bytes::from(filter.to_owned()),
        options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
    };
    device
        .send(&Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::MIN,
            properties: Properties::default(),
            subscriptions: vec![
                sub("devicebound"),
                sub("$iothub/twin/res/#"),
                sub("$iothub/twin/PATCH/properties/desired/#"),
                sub("methods/POST/#"),
                sub("methods/#"),
            ],
        }))
        .expect("subscribe");
    match next_packet(&mut device) {
        Packet::SubAck(ack) => assert_eq!(
            ack.reason_codes,
            vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::TOPIC_FILTER_INVALID
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // Twin GET: the request reaches the hub as sent; the hub's answer reaches the device.
    device_publish(&mut device, "$iothub/twin/GET/?$rid=1", "", 1);
    let seen = twin_requests
        .next_message(WAIT)
        .expect("twin GET at the hub");
    assert!(seen.starts_with("$iothub/twin/GET/?$rid=1"), "{seen}");
    let twin = r#"{"desired":{"interval":30,"$version":4},"reported":{"$version":1}}"#;
    hub_publish(&broker, "$iothub/twin/res/200/?$rid=1", twin);
    let answer = next_publish(&mut device);
    assert_eq!(&answer.topic[..], b"$iothub/twin/res/200/?$rid=1");
    assert_eq!(&answer.payload[..], twin.as_bytes());

    // Reported properties: to the hub's PATCH topic, the body untouched (no envelope, no bag).
    device_publish(
        &mut device,
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        r#"{"fw":"1.2"}"#,
        2,
    );
    let seen = twin_requests
        .wait_for(WAIT, |m| {
            m.starts_with("$iothub/twin/PATCH/properties/reported/")
        })
        .to_string();
    assert_eq!(
        seen,
        r#"$iothub/twin/PATCH/properties/reported/?$rid=2 {"fw":"1.2"}"#
    );

    // A desired-properties patch from the hub.
    hub_publish(
        &broker,
        "$iothub/twin/PATCH/properties/desired/?$version=5",
        r#"{"interval":60}"#,
    );
    let patch = next_publish(&mut device);
    assert_eq!(
        &patch.topic[..],
        b"$iothub/twin/PATCH/properties/desired/?$version=5"
    );

    // A direct method: the request on the device's `methods` prefix, its answer to the hub's
    // response topic.
    hub_publish(
        &broker,
        "$iothub/methods/POST/reboot/?$rid=7",
        r#"{"delay":1}"#,
    );
    let call = next_publish(&mut device);
    assert_eq!(&call.topic[..], b"methods/POST/reboot/?$rid=7");
    assert_eq!(&call.payload[..], br#"{"delay":1}"#);
    device_publish(&mut device, "methods/res/200/?$rid=7", r#"{"ok":true}"#, 3);
    let seen = method_answers
        .next_message(WAIT)
        .expect("method answer at the hub");
    assert_eq!(seen, r#"$iothub/methods/res/200/?$rid=7 {"ok":true}"#);

    // The front saw a valid SAS and only topics IoT Hub takes.
    let stats = front.stats();
    assert_eq!(stats["connections_accepted"], 1, "{stats}");
    assert_eq!(stats["connections_refused"], json!({}), "{stats}");
    assert_eq!(stats["disconnects"], json!({}), "{stats}");

    // What only the hub publishes is refused by simgate (DISCONNECT 0x90) before the hub would
    // drop the connection for it.
    device
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"$iothub/twin/res/200/?$rid=9"),
            packet_id: NonZeroU16::new(4),
            properties: Properties::default(),
            payload: Bytes::new(),
        }))
        .expect("publish");
    let rest = device.until_closed(WAIT);
    assert!(
        rest.iter().any(|p| matches!(
            p,
            Packet::Disconnect(d) if d.reason_code == ReasonCode::TOPIC_NAME_INVALID
        )),
        "DISCONNECT 0x90: {rest:?}"
    );
    let stats = front.stats();
    assert_eq!(
        stats["disconnects"],
        json!({}),
        "the hub never saw it: {stats}"
    );
}
