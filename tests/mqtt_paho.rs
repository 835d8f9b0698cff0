//! Real devices (Eclipse Paho, paho-mqtt 2.x for Python, MQTT 3.1.1 and 5) through a real
//! `simgate run` process to a real mosquitto over TLS, in both bridging modes (issue #3's "proof
//! with real devices"). Checkers and cloud-side publishers are paho clients too, connected
//! straight to the broker's plaintext listener, so they see QoS, RETAIN and v5 properties as the
//! broker delivers them.
//!
//! Each test waits on paho's JSON events (CONNACK, SUBACK, publish completion, message) with a
//! deadline; none sleeps. What the two modes do differently is asserted as documented in
//! docs/configuration.md and the flow modules: aggregate mode carries QoS 2 upstream as QoS 1,
//! delivers downlink at QoS 0 (its SUBACK grants 0) and answers devices itself; session mode runs
//! the device's own session end to end, so QoS, properties and the broker's reason codes pass.

mod common;

use common::mosquitto::{Broker, BrokerOptions};
use common::paho::{Paho, PahoOptions, Version, VERSIONS};
use common::Simgate;
use serde_json::{json, Value};
use simgate::testkit::TestPki;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Session,
    Aggregate,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Session => "session",
            Mode::Aggregate => "aggregate",
        }
    }

    /// The QoS a message published by a device at `qos` has at the broker.
    fn upstream_qos(self, qos: u8) -> u8 {
        match self {
            Mode::Session => qos,
            // Aggregate links carry QoS 2 as QoS 1 (documented in src/flows/mqtt_aggregate.rs).
            Mode::Aggregate => qos.min(1),
        }
    }

    /// The QoS a downlink subscription is granted (and messages are delivered at) for a
    /// requested `qos`.
    fn downlink_qos(self, qos: u8) -> u8 {
        match self {
            Mode::Session => qos,
            // Aggregate mode delivers downlink at QoS 0 and grants 0 in the SUBACK.
            Mode::Aggregate => 0,
        }
    }
}

/// A broker, simgate bridging to it in one mode, and helpers for paho clients on either.
struct World {
    _dir: tempfile::TempDir,
    broker: Broker,
    simgate: Simgate,
}

impl World {
    fn start(mode: Mode) -> World {
        World::start_with(mode, "", BrokerOptions::default())
    }

    /// `mqtt_extra`: TOML lines added to `[destination.mqtt]` (they may override the defaults
    /// below, which come first).
    fn start_with(mode: Mode, mqtt_extra: &str, opts: BrokerOptions) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let broker = Broker::start(dir.path(), &pki, opts);
        let (mqtt_table, warm) = match mode {
            Mode::Session => (
                "mode = \"session\"\nclient_id = \"gw-{client_id}\"\n\
                 topic = \"devices/{client_id}/{topic}\"\n"
                    .to_string(),
                2,
            ),
            Mode::Aggregate => (
                "mode = \"aggregate\"\nkeep_alive = \"10s\"\n".to_string(),
                0,
            ),
        };
        let mqtt_table = merge_keys(&mqtt_table, mqtt_extra);
        let pool = format!("warm = {warm}\nconnect_timeout = \"5s\"");
        let toml = broker.gateway_toml(2, &pki.ca_pem, &mqtt_table, &pool);
        let simgate = Simgate::start(dir.path(), &toml);
        World {
            _dir: dir,
            broker,
            simgate,
        }
    }

    /// A paho device connected through simgate; its CONNACK must be a success.
    fn device(&self, client_id: &str, version: Version) -> Paho {
        self.device_with(PahoOptions::new(self.port(), client_id, version))
    }

    fn device_with(&self, opts: PahoOptions) -> Paho {
        let dev = Paho::connect(opts);
        assert_eq!(
            dev.connack_code(),
            0,
            "device CONNACK {}\nsimgate log:\n{}",
            dev.connack,
            self.simgate.stderr()
        );
        dev
    }

    fn port(&self) -> u16 {
        self.simgate.listener("mqtt").port()
    }

    /// A v5 paho client straight on the broker's plaintext listener (the cloud side).
    fn cloud(&self, client_id: &str) -> Paho {
        let c = Paho::connect(PahoOptions::new(
            self.broker.plain_port,
            client_id,
            Version::V5,
        ));
        assert_eq!(c.connack_code(), 0, "{}", c.connack);
        c
    }

    /// A cloud-side subscriber to `filter` at QoS 2, ready on return.
    fn checker(&self, client_id: &str, filter: &str) -> Paho {
        let mut c = self.cloud(client_id);
        assert_eq!(c.subscribe(filter, 2), vec![2]);
        c
    }
}

/// `base` TOML lines with any key also set in `extra` replaced by `extra`'s line.
fn merge_keys(base: &str, extra: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra.lines().map(key).collect();
    let mut out: String = base
        .lines()
        .filter(|l| !overridden.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(extra);
    out.push('\n');
    out
}

/// The next message event on `topic` with `payload`.
fn expect_message(client: &mut Paho, topic: &str, payload: &str) -> Value {
    client.wait_event(|e| e["event"] == "message" && e["topic"] == topic && e["payload"] == payload)
}

fn reason(ev: &Value) -> u64 {
    ev["reason_code"].as_u64().expect("reason_code")
}

// ---------------------------------------------------------------------------------------------
// Uplink: QoS 0/1/2 and retained messages, both versions, both modes.

fn uplink_qos_0_1_2_and_retained_arrive_rewritten(mode: Mode) {
    let w = World::start(mode);
    let mut checker = w.checker("checker", "devices/#");
    for v in VERSIONS {
        let id = format!("up-{}-{}", mode.name(), v.tag());
        let mut dev = w.device(&id, v);
        for qos in 0..=2u8 {
            let payload = format!("reading-q{qos}");
            let done = dev.publish("sensors/temp", &payload, qos, false);
            assert!(reason(&done) < 0x80, "{id} qos {qos}: {done}");
            let m = expect_message(
                &mut checker,
                &format!("devices/{id}/sensors/temp"),
                &payload,
            );
            assert_eq!(m["qos"], mode.upstream_qos(qos), "{id} qos {qos}: {m}");
            assert_eq!(m["retain"], false, "{m}");
        }
        // Retained: stored by the broker, so a subscriber that comes later gets it, flagged.
        let done = dev.publish("state", "online", 1, true);
        assert!(reason(&done) < 0x80, "{done}");
        let mut late = w.checker(&format!("late-{id}"), &format!("devices/{id}/state"));
        let m = expect_message(&mut late, &format!("devices/{id}/state"), "online");
        assert_eq!(m["retain"], true, "{m}");
        dev.disconnect();
    }
}

#[test]
fn session_uplink_qos_0_1_2_and_retained_arrive_rewritten() {
    uplink_qos_0_1_2_and_retained_arrive_rewritten(Mode::Session);
}

#[test]
fn aggregate_uplink_qos_0_1_2_and_retained_arrive_rewritten() {
    uplink_qos_0_1_2_and_retained_arrive_rewritten(Mode::Aggregate);
}

// ---------------------------------------------------------------------------------------------
// Downlink: subscribe through simgate, publish at the broker, topic mapped back; retained.

fn downlink_and_retained_reach_the_device_mapped_back(mode: Mode) {
    let w = World::start(mode);
    let mut cloud = w.cloud("cloud");
    for v in VERSIONS {
        let id = format!("down-{}-{}", mode.name(), v.tag());
        // Retained before the device subscribes: delivered on SUBSCRIBE, flagged.
        let done = cloud.publish(&format!("devices/{id}/cfg/interval"), "30", 1, true);
        assert!(reason(&done) < 0x80, "{done}");

        let mut dev = w.device(&id, v);
        let granted = dev.subscribe("cmd/#", 1);
        assert_eq!(granted, vec![u64::from(mode.downlink_qos(1))], "{id}");
        let done = cloud.publish(&format!("devices/{id}/cmd/reboot"), "now", 1, false);
        assert!(reason(&done) < 0x80, "{done}");
        let m = expect_message(&mut dev, "cmd/reboot", "now");
        assert_eq!(m["qos"], mode.downlink_qos(1), "{id}: {m}");
        assert_eq!(m["retain"], false, "{m}");

        // QoS 2 requested: session mode grants and delivers it end to end.
        let granted = dev.subscribe("ota/+", 2);
        assert_eq!(granted, vec![u64::from(mode.downlink_qos(2))], "{id}");
        cloud.publish(&format!("devices/{id}/ota/fw"), "v2", 2, false);
        let m = expect_message(&mut dev, "ota/fw", "v2");
        assert_eq!(m["qos"], mode.downlink_qos(2), "{id}: {m}");

        assert_eq!(
            dev.subscribe("cfg/#", 1),
            vec![u64::from(mode.downlink_qos(1))]
        );
        let m = expect_message(&mut dev, "cfg/interval", "30");
        assert_eq!(m["retain"], true, "{id}: {m}");

        // Nothing for another device's topics ever reached this one.
        cloud.publish("devices/someone-else/cmd/reboot", "not-yours", 1, false);
        cloud.publish(&format!("devices/{id}/cmd/last"), "end", 1, false);
        expect_message(&mut dev, "cmd/last", "end");
        assert!(
            !dev.seen().iter().any(|e| e["payload"] == "not-yours"),
            "{id} got another device's message: {:#?}",
            dev.seen()
        );
        dev.disconnect();
    }
}

#[test]
fn session_downlink_and_retained_reach_the_device_mapped_back() {
    downlink_and_retained_reach_the_device_mapped_back(Mode::Session);
}

#[test]
fn aggregate_downlink_and_retained_reach_the_device_mapped_back() {
    downlink_and_retained_reach_the_device_mapped_back(Mode::Aggregate);
}

// ---------------------------------------------------------------------------------------------
// Will: a device process killed (socket closed by the kernel, no DISCONNECT) has its will
// published; a clean DISCONNECT does not.

fn will_on_abnormal_disconnect_only(mode: Mode) {
    let w = World::start(mode);
    let mut checker = w.checker("watcher", "devices/+/status");
    for v in VERSIONS {
        let id = format!("will-{}-{}", mode.name(), v.tag());
        let mut opts = PahoOptions::new(w.port(), &id, v);
        opts.will = Some(("status".into(), format!("dead-{id}"), 1));
        let dev = w.device_with(opts);
        dev.kill9();
        let m = expect_message(
            &mut checker,
            &format!("devices/{id}/status"),
            &format!("dead-{id}"),
        );
        assert_eq!(m["qos"], 1, "{m}");
    }
    for v in VERSIONS {
        let id = format!("clean-{}-{}", mode.name(), v.tag());
        let mut opts = PahoOptions::new(w.port(), &id, v);
        opts.will = Some(("status".into(), "must-not-appear".into(), 1));
        w.device_with(opts).disconnect();
    }
    // The marker comes after both clean disconnects: no will may precede it.
    w.cloud("marker")
        .publish("devices/marker/status", "after", 1, false);
    let next = checker.wait_event(|e| e["event"] == "message");
    assert_eq!(next["topic"], "devices/marker/status", "{next}");
}

#[test]
fn session_will_on_abnormal_disconnect_only() {
    will_on_abnormal_disconnect_only(Mode::Session);
}

#[test]
fn aggregate_will_on_abnormal_disconnect_only() {
    will_on_abnormal_disconnect_only(Mode::Aggregate);
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 specifics.

#[test]
fn session_v5_properties_pass_through_both_ways() {
    let w = World::start(Mode::Session);
    let mut checker = w.checker("props-checker", "devices/#");
    let id = "props-v5";
    let mut dev = w.device(id, Version::V5);
    let done = dev.publish_with(
        "telemetry",
        "{\"t\":21.5}",
        1,
        false,
        json!({
            "user": [["site", "tokyo"], ["fw", "1.2.3"]],
            "content_type": "application/json",
            "message_expiry": 3600,
            "response_topic": "replies/1",
            "correlation_data": "c0ffee",
            "payload_format": 1,
        }),
    );
    assert_eq!(reason(&done), 0, "{done}");
    let m = expect_message(
        &mut checker,
        &format!("devices/{id}/telemetry"),
        "{\"t\":21.5}",
    );
    let p = &m["properties"];
    assert_eq!(
        p["UserProperty"],
        json!([["site", "tokyo"], ["fw", "1.2.3"]]),
        "{m}"
    );
    assert_eq!(p["ContentType"], "application/json", "{m}");
    assert_eq!(p["CorrelationData"], "c0ffee", "{m}");
    assert_eq!(p["PayloadFormatIndicator"], 1, "{m}");
    // The response topic is a topic too: rewritten like the PUBLISH topic.
    assert_eq!(p["ResponseTopic"], format!("devices/{id}/replies/1"), "{m}");
    // The broker forwards the remaining lifetime: present, at most what was set.
    let expiry = p["MessageExpiryInterval"].as_u64().expect("expiry relayed");
    assert!((1..=3600).contains(&expiry), "{m}");

    // Downlink: the broker's properties reach the device, response topic mapped back.
    assert_eq!(dev.subscribe("cmd/#", 1), vec![1]);
    let mut cloud = w.cloud("props-cloud");
    cloud.publish_with(
        &format!("devices/{id}/cmd/set"),
        "on",
        1,
        false,
        json!({
            "user": [["request-id", "42"]],
            "content_type": "text/plain",
            "response_topic": format!("devices/{id}/cmd-replies/42"),
        }),
    );
    let m = expect_message(&mut dev, "cmd/set", "on");
    let p = &m["properties"];
    assert_eq!(p["UserProperty"], json!([["request-id", "42"]]), "{m}");
    assert_eq!(p["ContentType"], "text/plain", "{m}");
    assert_eq!(p["ResponseTopic"], "cmd-replies/42", "{m}");
    dev.disconnect();
}

#[test]
fn session_relays_the_brokers_reason_codes_and_assigned_client_id() {
    let w = World::start_with(
        Mode::Session,
        "client_id = \"{client_id}\"",
        BrokerOptions::default(),
    );
    // mosquitto answers a v5 QoS 1 PUBLISH nobody subscribed to with PUBACK 0x10 "No matching
    // subscribers"; the device gets the broker's PUBACK, code and all.
    let mut dev = w.device("rc-v5", Version::V5);
    let done = dev.publish("nobody/listens", "x", 1, false);
    assert_eq!(reason(&done), 0x10, "{done}");
    // QoS 2: the exchange completes; paho reports the PUBCOMP's code (success), not the
    // PUBREC's, so the relayed PUBREC code is not visible here.
    let done = dev.publish("nobody/listens", "y", 2, false);
    assert_eq!(reason(&done), 0x00, "{done}");
    dev.disconnect();

    // An empty client id from a v5 device: simgate assigns one, tells the device in the
    // CONNACK, and the upstream CONNECT carries it (template "{client_id}").
    let dev = w.device("", Version::V5);
    let assigned = dev.connack["properties"]["AssignedClientIdentifier"]
        .as_str()
        .unwrap_or_else(|| panic!("no Assigned Client Identifier relayed: {}", dev.connack))
        .to_string();
    assert!(!assigned.is_empty());
    w.broker
        .wait_log(&format!("as {assigned} "), common::paho::EVENT_WAIT);
    dev.disconnect();
}

#[test]
fn session_wrong_upstream_password_is_refused_with_the_brokers_code() {
    let opts = BrokerOptions {
        password: Some(("gw".to_string(), "right-pass".to_string())),
        ..BrokerOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = dir.path().join("wrong.pass");
    std::fs::write(&pass, "wrong-pass").expect("password file");
    let w = World::start_with(
        Mode::Session,
        &format!("username = \"gw\"\npassword_file = \"{}\"", pass.display()),
        opts,
    );
    for v in VERSIONS {
        let dev = Paho::connect(PahoOptions::new(w.port(), &format!("pw-{}", v.tag()), v));
        // 0x86 "bad user name or password" / 0x87 "not authorized" (3.1.1 return codes 4 and 5,
        // which paho reports as these).
        assert!(
            [0x86, 0x87].contains(&dev.connack_code()),
            "{}: {}",
            v.arg(),
            dev.connack
        );
    }
}

/// The Assigned Client Identifier of a v5 device's CONNACK (fails if there is none or it is
/// empty).
fn assigned_id(dev: &Paho) -> String {
    let id = dev.connack["properties"]["AssignedClientIdentifier"]
        .as_str()
        .unwrap_or_else(|| panic!("no Assigned Client Identifier: {}", dev.connack))
        .to_string();
    assert!(!id.is_empty(), "{}", dev.connack);
    id
}

#[test]
fn session_gives_anonymous_v5_devices_distinct_assigned_ids_used_in_templates() {
    // client_id = "gw-{client_id}", topic = "devices/{client_id}/{topic}".
    let w = World::start(Mode::Session);
    let mut checker = w.checker("anon-checker", "devices/#");
    let mut cloud = w.cloud("anon-cloud");
    let mut devs: Vec<(Paho, String)> = Vec::new();
    for persistent in [false, true] {
        // v5 allows an empty id with Clean Start = 0 too: the server assigns one either way.
        let mut opts = PahoOptions::new(w.port(), "", Version::V5);
        opts.persistent = persistent;
        let dev = w.device_with(opts);
        let id = assigned_id(&dev);
        // The upstream session is the assigned id through the client_id template.
        w.broker
            .wait_log(&format!("as gw-{id} "), common::paho::EVENT_WAIT);
        devs.push((dev, id));
    }
    assert_ne!(devs[0].1, devs[1].1, "both devices were assigned one id");

    // Both are still connected (the second did not take over the first's upstream session):
    // each one's QoS 1 publish completes and arrives under its own id.
    for (dev, id) in devs.iter_mut() {
        let payload = format!("from-{id}");
        let done = dev.publish("t", &payload, 1, false);
        assert!(reason(&done) < 0x80, "{id}: {done}");
        expect_message(&mut checker, &format!("devices/{id}/t"), &payload);
    }
    // Downlink: each gets what is addressed to its id, and nothing addressed to the other.
    for (dev, _) in devs.iter_mut() {
        assert_eq!(dev.subscribe("cmd/#", 1), vec![1]);
    }
    for (_, id) in &devs {
        cloud.publish(
            &format!("devices/{id}/cmd/x"),
            &format!("to-{id}"),
            1,
            false,
        );
    }
    // Markers after both messages: whatever was coming to a device came before its marker.
    for (_, id) in &devs {
        cloud.publish(&format!("devices/{id}/cmd/last"), "end", 1, false);
    }
    for (dev, id) in devs.iter_mut() {
        expect_message(dev, "cmd/x", &format!("to-{id}"));
        expect_message(dev, "cmd/last", "end");
        let mine = format!("to-{id}");
        let wrong: Vec<_> = dev
            .seen()
            .iter()
            .filter(|e| {
                e["event"] == "disconnected"
                    || (e["event"] == "message"
                        && e["payload"]
                            .as_str()
                            .is_some_and(|p| p.starts_with("to-") && p != mine))
            })
            .cloned()
            .collect();
        assert!(wrong.is_empty(), "{id}: {wrong:#?}");
    }
    assert!(
        !w.broker.log().contains("as gw- "),
        "an upstream session under the empty id:\n{}",
        w.broker.log()
    );
    for (dev, _) in devs {
        dev.disconnect();
    }
}

#[test]
fn session_v311_device_without_client_id_gets_an_assigned_one_in_its_topics() {
    // (Without a clean session it is refused with return code 2, which paho will not send:
    // tests/mqtt_session.rs checks that with raw packets.)
    let w = World::start(Mode::Session);
    let mut checker = w.checker("v3-anon-checker", "devices/#");
    let mut dev = w.device("", Version::V311);
    let done = dev.publish("t", "from-v3-anonymous", 1, false);
    assert!(reason(&done) < 0x80, "{done}");
    // 3.1.1 cannot tell the device its id; the topic shows the one simgate assigned.
    let m = checker.wait_event(|e| e["event"] == "message" && e["payload"] == "from-v3-anonymous");
    let topic = m["topic"].as_str().expect("topic");
    let id = topic
        .strip_prefix("devices/")
        .and_then(|t| t.strip_suffix("/t"))
        .unwrap_or_else(|| panic!("unexpected topic {topic}"));
    assert!(id.starts_with("simgate-"), "{topic}");
    w.broker
        .wait_log(&format!("as gw-{id} "), common::paho::EVENT_WAIT);
    dev.disconnect();
}

#[test]
fn aggregate_assigns_a_client_id_to_a_v5_device_without_one_and_uses_it_in_topics() {
    let w = World::start(Mode::Aggregate);
    let mut checker = w.checker("assigned-checker", "devices/#");
    let mut dev = w.device("", Version::V5);
    let assigned = dev.connack["properties"]["AssignedClientIdentifier"]
        .as_str()
        .unwrap_or_else(|| panic!("no Assigned Client Identifier: {}", dev.connack))
        .to_string();
    assert!(!assigned.is_empty());
    dev.publish("hello", "from-anonymous", 1, false);
    expect_message(
        &mut checker,
        &format!("devices/{assigned}/hello"),
        "from-anonymous",
    );
    dev.disconnect();
}

#[test]
fn aggregate_with_v5_links_passes_user_properties() {
    let w = World::start_with(Mode::Aggregate, "version = \"5\"", BrokerOptions::default());
    let mut checker = w.checker("agg-props-checker", "devices/#");
    let mut dev = w.device("agg-props", Version::V5);
    dev.publish_with(
        "t",
        "p",
        1,
        false,
        json!({"user": [["k", "v"]], "content_type": "text/plain"}),
    );
    let m = expect_message(&mut checker, "devices/agg-props/t", "p");
    assert_eq!(m["properties"]["UserProperty"], json!([["k", "v"]]), "{m}");
    assert_eq!(m["properties"]["ContentType"], "text/plain", "{m}");
    dev.disconnect();
}
