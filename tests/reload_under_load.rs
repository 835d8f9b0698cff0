//! Integration (issue #11 §5): reloads that drop no one. A real `simgate run` serves an HTTP
//! device and an MQTT QoS 1 device (aggregate mode, real mosquitto over TLS) continuously while
//! the test reloads it 100 times: the HTTP device's SIM moves between two groups (each with
//! its own route, attach list and signing secret), the signing secret file is rewritten, and
//! every tenth reload is an invalid config that must be refused while the running one keeps
//! serving.
//!
//! Checked as an operator would: every HTTP request answered 200 on one keep-alive connection
//! and routed by the group in force; every QoS 1 PUBLISH acknowledged and delivered exactly as
//! many times as sent; the MQTT session never dropped (its SIM never moves); every shard on the
//! final configuration generation; `/healthz` 200.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::Client;
use common::*;
use simgate::proto::mqtt::{Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS};

const HTTP_SIM: &str = "127.0.0.2";
const MQTT_SIM: &str = "127.0.0.4";
const RELOADS: usize = 100;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The config with the HTTP SIM in `group` ("east" or "west"); `broken` adds an unknown key.
fn config(world: &World, broker: &Broker, group: &str, broken: bool) -> String {
    let mqtt = broker.destination_toml(
        "broker",
        &world.pki.ca_pem,
        "mode = \"aggregate\"\nversion = \"5\"\ntopic = \"load/{imsi}/{topic}\"",
    );
    let typo = if broken { "shardz = 3\n" } else { "" };
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"
{typo}
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
unknown = "reject"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"
unknown = "reject"

[[destination]]
name = "east-sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
base_path = "/east"

[[destination]]
name = "west-sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
base_path = "/west"

{mqtt}

[[group]]
name = "default"

[[group]]
name = "east"
signing_secret = {{ file = "east.secret" }}
routes = [ {{ listener = "http", path = "/", destination = "east-sink" }} ]

[[group]]
name = "west"
attach = ["imsi", "name"]
routes = [ {{ listener = "http", path = "/", destination = "west-sink" }} ]

[[group]]
name = "meters"
routes = [ {{ listener = "mqtt", destination = "broker" }} ]

[[sim]]
imsi = "001010000000002"
ip = "{HTTP_SIM}"
name = "mover"
group = "{group}"

[[sim]]
imsi = "001010000000004"
ip = "{MQTT_SIM}"
group = "meters"
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display()
    )
}

#[test]
fn a_hundred_reloads_under_http_and_mqtt_qos1_load_drop_no_one() {
    let world = World::new();
    let secret = world.dir.path().join("east.secret");
    std::fs::write(&secret, "east-secret-0000000000000000000000").expect("secret");
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let gw = world.simgate(&config(&world, &broker, "east", false));
    let http = gw.listener("http");
    let mqtt = gw.listener("mqtt");

    let mut checker = Client::connect(
        SocketAddr::from(([127, 0, 0, 1], broker.plain_port)),
        "checker",
        ProtocolVersion::V5,
        true,
    )
    .expect("checker");
    checker
        .subscribe("load/#", QoS::AtLeastOnce)
        .expect("subscribe");

    // The broker's subscriber reads (and acknowledges) all along: a broker queues only so much
    // for a subscriber that does not read. It stops once it holds `target` messages.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let checker_thread = {
        let target = target.clone();
        std::thread::spawn(move || {
            let mut payloads: Vec<Bytes> = Vec::new();
            let mut quiet = std::time::Instant::now();
            while (payloads.len() as u64) < target.load(Ordering::Relaxed) {
                match checker.next(Duration::from_millis(200)) {
                    Ok(Some(Packet::Publish(p))) => {
                        assert_eq!(&p.topic[..], b"load/001010000000004/t");
                        if let Some(id) = p.packet_id {
                            checker
                                .send(&Packet::PubAck(PubResponse::success(id)))
                                .expect("PUBACK");
                        }
                        payloads.push(p.payload);
                        quiet = std::time::Instant::now();
                    }
                    Ok(Some(_)) => {}
                    // Quiet for 10 s after the load stopped: whatever is missing is not coming.
                    Ok(None)
                        if target.load(Ordering::Relaxed) != u64::MAX
                            && quiet.elapsed() > Duration::from_secs(10) =>
                    {
                        break
                    }
                    Ok(None) => {}
                    Err(e) => panic!("checker: {e:?}"),
                }
            }
            payloads
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    // HTTP: one keep-alive device, requests back to back; every answer must be 200.
    let http_sent = Arc::new(AtomicU64::new(0));
    let http_thread = {
        let (stop, sent) = (stop.clone(), http_sent.clone());
        std::thread::spawn(move || {
            let mut device = Device::connect_from(http, ip(HTTP_SIM));
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = device.request(&post("/r", b"1", ""));
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failures.push(format!("{} {}", r.status, r.body_text()));
                }
            }
            failures
        })
    };
    // MQTT: QoS 1, one in flight at a time; every PUBACK must come.
    let mqtt_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut device = Client::connect_from(mqtt, ip(MQTT_SIM), "meter", ProtocolVersion::V5)
                .expect("MQTT device");
            let mut acked = 0u64;
            let mut id = 0u16;
            while !stop.load(Ordering::Relaxed) {
                id = id % 60_000 + 1;
                device
                    .send(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: Bytes::from_static(b"t"),
                        packet_id: NonZeroU16::new(id),
                        properties: Properties::default(),
                        payload: Bytes::from(acked.to_string()),
                    }))
                    .expect("the MQTT session must not drop");
                loop {
                    match device.next(Duration::from_secs(10)) {
                        Ok(Some(Packet::PubAck(a))) if a.packet_id.get() == id => break,
                        Ok(Some(_)) => {}
                        other => panic!("PUBACK {id} expected, got {other:?}"),
                    }
                }
                acked += 1;
            }
            acked
        })
    };

    let mut applied = 0u64;
    for i in 0..RELOADS {
        let broken = i % 10 == 9;
        let group = if i % 2 == 0 { "west" } else { "east" };
        std::fs::write(&secret, format!("east-secret-{i:022}")).expect("rotate secret");
        std::fs::write(&gw.config_path, config(&world, &broker, group, broken))
            .expect("write config");
        let (status, body) = gw.reload();
        if broken {
            assert_eq!(
                status, 422,
                "reload {i}: an invalid config must be refused: {body}"
            );
            assert!(body.contains("shardz"), "{body}");
        } else {
            assert_eq!(status, 200, "reload {i}: {body}");
            applied += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let failures = http_thread.join().expect("HTTP device");
    let acked = mqtt_thread.join().expect("MQTT device");

    assert!(failures.is_empty(), "failed HTTP requests: {failures:?}");
    let sent = http_sent.load(Ordering::Relaxed);
    assert!(sent > 0 && acked > 0, "load ran: {sent} HTTP, {acked} MQTT");
    // Every HTTP request reached the sink, under one of the two groups' routes.
    let seen = world.sink.requests();
    let routed = seen
        .iter()
        .filter(|r| r.path == "/east/r" || r.path == "/west/r")
        .count() as u64;
    assert_eq!(
        routed, sent,
        "every request was routed by a group of the SIM"
    );
    assert!(seen.iter().any(|r| r.path == "/west/r") && seen.iter().any(|r| r.path == "/east/r"));
    // Every acknowledged message reached the broker's subscriber: in order, none lost, none
    // twice (the links survive reloads, so nothing is resent).
    target.store(acked, Ordering::Relaxed);
    let payloads = checker_thread.join().expect("checker");
    let expected: Vec<Bytes> = (0..acked).map(|n| Bytes::from(n.to_string())).collect();
    assert_eq!(payloads.len(), expected.len(), "delivered vs acknowledged");
    assert!(payloads == expected, "messages out of order or duplicated");
    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(sample(&text, "simgate_plan_generation"), applied, "{text}");
    for shard in 0..2 {
        let name = format!("simgate_shard_plan_generation{{shard=\"{shard}\"}}");
        assert_eq!(sample(&text, &name), applied, "{text}");
    }
    assert_eq!(gw.admin_get("/healthz").0, 200);
}
