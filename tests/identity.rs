//! Integration (issue #11 §1/§3): SIM identity on the HTTP path, through a real `simgate run`
//! to the HTTPS test sink. Devices connect from 127.0.0.x source addresses, as SIMs bound to
//! those addresses would; the sink records what reached it.
//!
//! Checked as a carrier would: a known SIM's requests follow its group's routes and carry the
//! group's attached identity headers; a device cannot claim an identity (its own `X-Simgate-*`
//! headers never reach the upstream); an unknown source is refused with 403 on a listener with
//! `unknown = "reject"` and served as the default group elsewhere; a reload that moves the SIM
//! to another group applies from the next request on the same keep-alive connection.

mod common;

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::{Client, ClientError};
use common::*;
use simgate::proto::mqtt::{
    Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, UserProperty,
};

const KNOWN: &str = "127.0.0.2";
/// The meters group's signing secret (32 bytes).
const SECRET: &str = "meters-signing-secret-0123456789";
const UNKNOWN: &str = "127.0.0.3";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// The value of the sample `name` in the exposition `text` (0 when absent).
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Two HTTP listeners (`strict` refuses unknown sources, `open` serves them as the default
/// group), two destinations on the same sink (`meters-sink` under `/meters`), one SIM on
/// 127.0.0.2 in `sim_group`.
fn config(world: &World, sim_group: &str) -> String {
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"
default_group = "default"

[[listener]]
name = "strict"
protocol = "http"
bind = "127.0.0.1:0"
unknown = "reject"

[[listener]]
name = "open"
protocol = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

[[destination]]
name = "meters-sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
base_path = "/meters/{{imsi}}"

[[group]]
name = "default"
routes = [
  {{ listener = "strict", path = "/", destination = "sink" }},
  {{ listener = "open", path = "/", destination = "sink" }},
]

[[group]]
name = "meters"
attach = ["imsi", "name", "tags"]
signing_secret = {{ file = "meters.secret" }}
routes = [
  {{ listener = "strict", path = "/", destination = "meters-sink" }},
  {{ listener = "open", path = "/", destination = "meters-sink" }},
]

[[sim]]
imsi = "001010000000002"
ip = "{KNOWN}"
name = "meter-2"
group = "{sim_group}"
tags = {{ site = "kyoto" }}
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run the reference Python verifier (tests/python/verify_signature.py, written from
/// docs/signature.md, not from simgate's code) on JSON-lines `cases`; its verdict lines.
fn python_verdicts(dir: &std::path::Path, cases: &[String]) -> Vec<String> {
    let file = dir.join("cases.jsonl");
    std::fs::write(&file, cases.join("\n") + "\n").expect("write cases");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/verify_signature.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 is required for this test: apt-get install python3");
    assert!(
        out.status.success(),
        "verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn pairs_json(pairs: &[(String, Vec<u8>)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(n, v)| format!("[\"{n}\", \"{}\"]", hex(v)))
        .collect();
    items.join(", ")
}

/// A verifier case for a request the sink recorded (`body` replaced when given, to tamper).
fn http_case(id: &str, r: &simgate::testkit::RecordedRequest, body: Option<&[u8]>) -> String {
    format!(
        "{{\"kind\": \"http\", \"id\": \"{id}\", \"secret_hex\": \"{}\", \"method_hex\": \"{}\", \
         \"target_hex\": \"{}\", \"body_hex\": \"{}\", \"headers\": [{}]}}",
        hex(SECRET.as_bytes()),
        hex(r.method.as_bytes()),
        hex(r.path.as_bytes()),
        hex(body.unwrap_or(&r.body)),
        pairs_json(&r.headers)
    )
}

/// A verifier case for a PUBLISH the broker delivered.
fn mqtt_case(id: &str, topic: &str, props: &[(String, String)], payload: &[u8]) -> String {
    let props: Vec<(String, Vec<u8>)> = props
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    format!(
        "{{\"kind\": \"mqtt\", \"id\": \"{id}\", \"secret_hex\": \"{}\", \"target_hex\": \"{}\", \
         \"body_hex\": \"{}\", \"user_properties\": [{}]}}",
        hex(SECRET.as_bytes()),
        hex(topic.as_bytes()),
        hex(payload),
        pairs_json(&props)
    )
}

fn header(r: &simgate::testkit::RecordedRequest, name: &str) -> Option<String> {
    r.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn sim_identity_routes_attaches_and_cannot_be_spoofed_and_unknown_sources_follow_the_listener() {
    let world = World::new();
    std::fs::write(
        world.dir.path().join("meters.secret"),
        format!("{SECRET}\n"),
    )
    .expect("write the secret");
    let gw = world.simgate(&config(&world, "meters"));
    let strict = gw.listener("strict");
    let open = gw.listener("open");

    // The known SIM: its group's route, its group's attached fields, the device's own claims
    // left out.
    let mut meter = Device::connect_from(strict, ip(KNOWN));
    let r = meter.request(&post(
        "/m",
        b"21.5",
        "X-Simgate-Imsi: 999999999999999\r\nx-simgate-tag-site: elsewhere\r\n",
    ));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let last = seen.last().expect("the sink saw the request");
    assert_eq!(
        last.path, "/meters/001010000000002/m",
        "base_path names the SIM"
    );
    assert_eq!(
        header(last, "x-simgate-imsi").as_deref(),
        Some("001010000000002")
    );
    assert_eq!(header(last, "x-simgate-name").as_deref(), Some("meter-2"));
    assert_eq!(header(last, "x-simgate-tag-site").as_deref(), Some("kyoto"));
    let imsi_values = last
        .headers
        .iter()
        .filter(|(n, _)| n == "x-simgate-imsi")
        .count();
    assert_eq!(
        imsi_values, 1,
        "the spoofed value never reaches the upstream"
    );
    // The group signs: an independent verifier accepts what the upstream received, and
    // refuses it with another body.
    assert_eq!(
        python_verdicts(
            world.dir.path(),
            &[
                http_case("as-sent", last, None),
                http_case("tampered", last, Some(b"99.9"))
            ]
        ),
        ["as-sent valid", "tampered invalid signature does not match"].map(str::to_owned),
    );

    // An unknown source: refused on the strict listener, the default group on the open one.
    let mut stranger = Device::connect_from(strict, ip(UNKNOWN));
    let r = stranger.request(&post("/m", b"1", ""));
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(stranger.is_closed(), "a refused device is disconnected");
    let before = world.sink.requests().len();
    let mut guest = Device::connect_from(open, ip(UNKNOWN));
    let r = guest.request(&post("/m", b"1", "X-Simgate-Imsi: 001010000000002\r\n"));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().expect("request");
    assert_eq!(last.path, "/m", "the default group's route");
    assert!(
        last.headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-simgate-")),
        "an unknown device gets no identity and cannot claim one: {:?}",
        last.headers
    );

    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        sample(
            &text,
            "simgate_device_rejects_total{listener=\"strict\",reason=\"unknown_source\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(&text, "simgate_http_identity_headers_dropped_total"),
        3,
        "{text}"
    );

    // Moving the SIM to the default group applies from the next request on the same
    // connection: the default group's route, and its default attach (the IMSI only).
    std::fs::write(&gw.config_path, config(&world, "default")).expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    // Every shard applied the reload, and says so.
    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(sample(&text, "simgate_plan_generation"), 1, "{text}");
    for shard in 0..2 {
        let name = format!("simgate_shard_plan_generation{{shard=\"{shard}\"}}");
        assert_eq!(sample(&text, &name), 1, "{text}");
    }
    assert_eq!(gw.admin_get("/healthz").0, 200);
    let r = meter.request(&post("/m", b"22.0", ""));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let last = seen.last().expect("request");
    assert_eq!(last.path, "/m");
    assert_eq!(
        header(last, "x-simgate-imsi").as_deref(),
        Some("001010000000002")
    );
    assert_eq!(header(last, "x-simgate-name"), None);
}

/// MQTT: an aggregate-mode listener that refuses unknown sources (its topic template names the
/// SIM: `sims/{imsi}/{tag.site}/{topic}`) and a session-mode one, both to a real mosquitto over
/// TLS speaking 5.0; the SIM on 127.0.0.2 attaches its IMSI and tags.
fn mqtt_config(world: &World, broker: &Broker, sim_group: &str) -> String {
    let ca = world.pki.ca_pem.as_path();
    let aggregate = broker.destination_toml(
        "agg",
        ca,
        "mode = \"aggregate\"\nversion = \"5\"\ntopic = \"sims/{imsi}/{tag.site}/{topic}\"",
    );
    let session = broker.destination_toml(
        "sess",
        ca,
        "mode = \"session\"\nversion = \"5\"\ntopic = \"sessions/{client_id}/{topic}\"",
    );
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt-strict"
protocol = "mqtt"
bind = "127.0.0.1:0"
unknown = "reject"

[[listener]]
name = "mqtt-session"
protocol = "mqtt"
bind = "127.0.0.1:0"

{aggregate}
{session}

[[group]]
name = "default"
routes = [ {{ listener = "mqtt-session", destination = "sess" }} ]

[[group]]
name = "meters"
attach = ["imsi", "tags"]
signing_secret = {{ file = "meters.secret" }}
routes = [
  {{ listener = "mqtt-strict", destination = "agg" }},
  {{ listener = "mqtt-session", destination = "sess" }},
]

[[sim]]
imsi = "001010000000002"
ip = "{KNOWN}"
group = "{sim_group}"
tags = {{ site = "kyoto" }}
"#
    )
}

fn publish(topic: &'static str, id: u16, spoof: bool) -> Packet {
    let mut properties = Properties::default();
    if spoof {
        properties.user_properties.push(UserProperty {
            name: Bytes::from_static(b"imsi"),
            value: Bytes::from_static(b"999999999999999"),
        });
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(topic.as_bytes()),
        packet_id: NonZeroU16::new(id),
        properties,
        payload: Bytes::from_static(b"21.5"),
    })
}

/// The next PUBLISH `client` receives, as (topic, user properties).
fn next_publish(client: &mut Client) -> (String, Vec<(String, String)>) {
    let (topic, props, _) = next_publish_with_payload(client);
    (topic, props)
}

/// The user properties without the signature pair.
fn identity_only(props: &[(String, String)]) -> Vec<(String, String)> {
    props
        .iter()
        .filter(|(n, _)| !n.starts_with("x-simgate-"))
        .cloned()
        .collect()
}

/// The PUBACK for `id` that `device` receives.
fn wait_puback(device: &mut Client, id: u16) {
    loop {
        match device.next(Duration::from_secs(10)) {
            Ok(Some(Packet::PubAck(a))) if a.packet_id.get() == id => return,
            Ok(Some(_)) => {}
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
}

#[test]
fn mqtt_sessions_carry_the_sims_identity_as_user_properties_and_unknown_sources_are_refused() {
    let world = World::new();
    std::fs::write(world.dir.path().join("meters.secret"), SECRET).expect("write the secret");
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let gw = world.simgate(&mqtt_config(&world, &broker, "meters"));
    let strict = gw.listener("mqtt-strict");
    let open = gw.listener("mqtt-session");
    let broker_addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.plain_port));
    let mut checker =
        Client::connect(broker_addr, "checker", ProtocolVersion::V5, true).expect("checker");
    checker.subscribe("#", QoS::AtLeastOnce).expect("subscribe");

    // Aggregate mode: the SIM's fields, and never the device's own claim.
    let mut meter = Client::connect_from(strict, ip(KNOWN), "meter", ProtocolVersion::V5)
        .expect("known SIM accepted");
    meter.send(&publish("t", 1, true)).expect("PUBLISH");
    wait_puback(&mut meter, 1);
    let (topic, props) = next_publish(&mut checker);
    assert_eq!(
        topic, "sims/001010000000002/kyoto/t",
        "SIM placeholders in the topic"
    );
    let want = vec![
        ("imsi".to_owned(), "001010000000002".to_owned()),
        ("tag.site".to_owned(), "kyoto".to_owned()),
    ];
    assert_eq!(
        identity_only(&props),
        want,
        "attached fields only, the spoofed imsi removed"
    );
    // Signed by the group: the independent verifier accepts it, and refuses another topic.
    assert_eq!(
        python_verdicts(
            world.dir.path(),
            &[
                mqtt_case("agg", &topic, &props, b"21.5"),
                mqtt_case("agg-moved", "sims/other/t", &props, b"21.5"),
            ]
        ),
        ["agg valid", "agg-moved invalid signature does not match"].map(str::to_owned),
    );

    // Session mode: the same fields on the device's own upstream session.
    let mut sess = Client::connect_from(open, ip(KNOWN), "meter-s", ProtocolVersion::V311)
        .expect("session accepted");
    sess.send(&publish("s", 2, false)).expect("PUBLISH");
    wait_puback(&mut sess, 2);
    let (topic, props) = next_publish(&mut checker);
    assert_eq!(topic, "sessions/meter-s/s");
    assert_eq!(identity_only(&props), want);
    assert_eq!(
        python_verdicts(
            world.dir.path(),
            &[mqtt_case("session", &topic, &props, b"21.5")]
        ),
        ["session valid"].map(str::to_owned),
    );

    // Unknown sources: refused where the listener says so (5.0: 0x87; 3.1.1: return code 5),
    // served as the default group (no identity) elsewhere.
    for (version, code) in [
        (ProtocolVersion::V5, ReasonCode::NOT_AUTHORIZED),
        (ProtocolVersion::V311, ReasonCode(5)),
    ] {
        match Client::connect_from(strict, ip(UNKNOWN), "stranger", version) {
            Err(ClientError::Refused(got)) => assert_eq!(got, code, "{version:?}"),
            Err(other) => panic!("{version:?}: expected CONNACK {code:?}, got {other:?}"),
            Ok(_) => panic!("{version:?}: an unknown source was accepted on mqtt-strict"),
        }
    }
    let mut guest = Client::connect_from(open, ip(UNKNOWN), "guest", ProtocolVersion::V5)
        .expect("the default group on mqtt-session");
    guest.send(&publish("g", 3, true)).expect("PUBLISH");
    wait_puback(&mut guest, 3);
    let (topic, props) = next_publish(&mut checker);
    assert_eq!(topic, "sessions/guest/g");
    // No SIM to attach, and the default group's field names (the IMSI) stay reserved: the
    // device's own claim is removed.
    assert!(props.is_empty(), "{props:?}");

    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        sample(
            &text,
            "simgate_device_rejects_total{listener=\"mqtt-strict\",reason=\"unknown_source\"}"
        ),
        2,
        "{text}"
    );

    // A reload that changes the SIM's fields but not its group keeps the session, which
    // attaches the new values from then on (its topic keeps the rendering of its CONNECT).
    std::fs::write(
        &gw.config_path,
        mqtt_config(&world, &broker, "meters").replace("site = \"kyoto\"", "site = \"osaka\""),
    )
    .expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    meter
        .send(&publish("t", 5, false))
        .expect("PUBLISH after the reload");
    wait_puback(&mut meter, 5);
    let (topic, props) = next_publish(&mut checker);
    assert_eq!(topic, "sims/001010000000002/kyoto/t");
    assert!(
        identity_only(&props).contains(&("tag.site".to_owned(), "osaka".to_owned())),
        "{props:?}"
    );

    // Moving the SIM to another group ends its aggregate session with 0x98 "administrative
    // action" (after what it has in flight), so that it reconnects into the new group.
    std::fs::write(&gw.config_path, mqtt_config(&world, &broker, "default"))
        .expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let packets = meter.until_closed(Duration::from_secs(10));
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode(0x98)),
        "{packets:?}"
    );
    // The same for its session-mode session (3.1.1: closed without a DISCONNECT).
    let packets = sess.until_closed(Duration::from_secs(10));
    assert!(packets.is_empty(), "{packets:?}");
    // The guest, whose group did not change, stays.
    guest.send(&publish("g", 4, false)).expect("PUBLISH");
    wait_puback(&mut guest, 4);
}

/// The next PUBLISH `client` receives, as (topic, user properties, payload).
fn next_publish_with_payload(client: &mut Client) -> (String, Vec<(String, String)>, Bytes) {
    loop {
        match client.next(Duration::from_secs(10)) {
            Ok(Some(Packet::Publish(p))) => {
                let props = p
                    .properties
                    .user_properties
                    .iter()
                    .map(|u| {
                        (
                            String::from_utf8_lossy(&u.name).into_owned(),
                            String::from_utf8_lossy(&u.value).into_owned(),
                        )
                    })
                    .collect();
                return (
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    props,
                    p.payload,
                );
            }
            Ok(Some(_)) => {}
            other => panic!("expected a PUBLISH at the broker, got {other:?}"),
        }
    }
}

/// Parse an envelope and check its timestamp is Unix milliseconds of about now.
fn envelope(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ts = v["timestamp"].as_u64().expect("a numeric timestamp");
    assert!(
        ts <= now_ms && now_ms - ts < 60_000,
        "timestamp {ts} is not Unix ms near {now_ms}"
    );
    v
}

#[test]
fn http_envelope_json_wraps_the_body_with_the_sims_identity() {
    let world = World::new();
    std::fs::write(
        world.dir.path().join("meters.secret"),
        format!("{SECRET}\n"),
    )
    .expect("write the secret");
    // Both destinations wrap.
    let cfg = config(&world, "meters").replace(
        "server_name = \"localhost\"\n",
        "server_name = \"localhost\"\nenvelope = \"json\"\n",
    );
    let gw = world.simgate(&cfg);
    let strict = gw.listener("strict");
    let open = gw.listener("open");
    let mut meter = Device::connect_from(strict, ip(KNOWN));

    // A JSON body: kept as JSON; the framing and type are simgate's.
    let body = br#"{"t": 21.5, "unit": "C"}"#;
    let r = meter.request(&post("/m", body, "Content-Type: text/plain\r\n"));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let last = seen.last().expect("the sink saw the request");
    assert_eq!(last.path, "/meters/001010000000002/m");
    assert_eq!(
        header(last, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header(last, "content-length"),
        Some(last.body.len().to_string())
    );
    let v = envelope(&last.body);
    assert_eq!(v["imsi"], "001010000000002");
    assert_eq!(v["name"], "meter-2");
    assert_eq!(v["tags"], serde_json::json!({"site": "kyoto"}));
    assert_eq!(v["payload"], serde_json::json!({"t": 21.5, "unit": "C"}));
    assert!(v.get("payload_encoding").is_none(), "{v}");
    // The identity headers are still attached, and the signature covers the envelope.
    assert_eq!(
        header(last, "x-simgate-imsi").as_deref(),
        Some("001010000000002")
    );
    assert_eq!(
        python_verdicts(
            world.dir.path(),
            &[
                http_case("enveloped", last, None),
                http_case("device-body", last, Some(body))
            ]
        ),
        [
            "enveloped valid",
            "device-body invalid signature does not match"
        ]
        .map(str::to_owned),
    );

    // A binary body: base64.
    let r = meter.request(&post("/m", b"\x00\xff\x10", ""));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let v = envelope(&seen.last().expect("request").body);
    assert_eq!(v["payload"], "AP8Q");
    assert_eq!(v["payload_encoding"], "base64");
    assert_eq!(v["imsi"], "001010000000002");

    // A chunked body: de-chunked, sent with Content-Length, its trailers dropped.
    let chunked = b"POST /m HTTP/1.1\r\nHost: device\r\nTransfer-Encoding: chunked\r\n\
                    Trailer: X-Check\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\nX-Check: 1\r\n\r\n";
    let r = meter.request(chunked);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let last = seen.last().expect("request");
    assert_eq!(header(last, "transfer-encoding"), None);
    assert_eq!(
        header(last, "content-length"),
        Some(last.body.len().to_string())
    );
    assert!(last.trailers.is_empty(), "{:?}", last.trailers);
    let v = envelope(&last.body);
    assert_eq!(v["payload"], serde_json::json!([1, 2]));

    // A device without a SIM: still wrapped, with no identity.
    let mut guest = Device::connect_from(open, ip(UNKNOWN));
    let r = guest.request(&post("/m", b"[3]", ""));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = world.sink.requests();
    let last = seen.last().expect("request");
    assert_eq!(last.path, "/m", "the default group's route");
    let v = envelope(&last.body);
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 2, "only timestamp and payload: {v}");
    assert_eq!(v["payload"], serde_json::json!([3]));
}

#[test]
fn mqtt_envelope_json_wraps_uplink_payloads_with_the_sims_identity() {
    let world = World::new();
    std::fs::write(world.dir.path().join("meters.secret"), SECRET).expect("write the secret");
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let cfg = mqtt_config(&world, &broker, "meters").replace(
        "[destination.mqtt]",
        "envelope = \"json\"\n[destination.mqtt]",
    );
    let gw = world.simgate(&cfg);
    let strict = gw.listener("mqtt-strict");
    let open = gw.listener("mqtt-session");
    let broker_addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.plain_port));
    let mut checker =
        Client::connect(broker_addr, "checker", ProtocolVersion::V5, true).expect("checker");
    checker.subscribe("#", QoS::AtLeastOnce).expect("subscribe");

    // Aggregate mode: the payload "21.5" is JSON, kept as a number.
    let mut meter = Client::connect_from(strict, ip(KNOWN), "meter", ProtocolVersion::V5)
        .expect("known SIM accepted");
    meter.send(&publish("t", 1, false)).expect("PUBLISH");
    wait_puback(&mut meter, 1);
    let (topic, props, payload) = next_publish_with_payload(&mut checker);
    assert_eq!(topic, "sims/001010000000002/kyoto/t");
    let v = envelope(&payload);
    assert_eq!(v["imsi"], "001010000000002");
    assert_eq!(v["tags"], serde_json::json!({"site": "kyoto"}));
    assert_eq!(v["payload"], 21.5);
    assert!(
        v.get("name").is_none(),
        "the group does not attach the name: {v}"
    );
    // The signature covers the wrapped payload as delivered.
    assert_eq!(
        python_verdicts(
            world.dir.path(),
            &[
                mqtt_case("agg", &topic, &props, &payload),
                mqtt_case("agg-raw", &topic, &props, b"21.5"),
            ]
        ),
        ["agg valid", "agg-raw invalid signature does not match"].map(str::to_owned),
    );

    // Session mode, a 3.1.1 device: wrapped as well; a binary payload is base64.
    let mut sess = Client::connect_from(open, ip(KNOWN), "meter-s", ProtocolVersion::V311)
        .expect("session accepted");
    let Packet::Publish(mut binary) = publish("s", 2, false) else {
        unreachable!()
    };
    binary.payload = Bytes::from_static(b"\x00\xff\x10");
    sess.send(&Packet::Publish(binary)).expect("PUBLISH");
    wait_puback(&mut sess, 2);
    let (topic, _, payload) = next_publish_with_payload(&mut checker);
    assert_eq!(topic, "sessions/meter-s/s");
    let v = envelope(&payload);
    assert_eq!(v["imsi"], "001010000000002");
    assert_eq!(v["payload"], "AP8Q");
    assert_eq!(v["payload_encoding"], "base64");
}
