//! Session-mode (1:1) MQTT bridging against a real mosquitto 2.x with a TLS listener (certs from
//! `TestPki`), with real mosquitto_pub / mosquitto_sub devices (3.1.1 and 5) on simgate's
//! plaintext listener and direct subscribers/publishers on the broker's plaintext listener.
//!
//! The broker and clients come from the shared harness (`tests/common/mosquitto.rs`); the
//! gateway's plan is compiled from the MQTT TOML ([`plan_for`]) and runs in-process
//! ([`Gateway::start`]), so the tests can read its metrics directly.
//!
//! No sleeps stand in for synchronisation: every wait is on a client's output line, a broker log
//! line or a socket, each with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mosquitto::{publish, publish_output, Broker, BrokerOptions, Sub};
use simgate::policy::Plan;
use simgate::shard::{Gateway, Protocol};
use simgate::stats::Latency;
use simgate::testkit::TestPki;

const WAIT: Duration = Duration::from_secs(15);

/// A broker whose TLS listener requires user `gw`, password `right-pass` (its plaintext listener,
/// for direct clients, stays anonymous).
fn password_broker() -> BrokerOptions {
    BrokerOptions {
        password: Some(("gw".to_string(), "right-pass".to_string())),
        ..BrokerOptions::default()
    }
}

/// A broker whose TLS listener requires a client certificate signed by the test CA.
fn client_certificate_broker() -> BrokerOptions {
    BrokerOptions {
        require_certificate: true,
        ..BrokerOptions::default()
    }
}

/// A subscriber connected directly to the broker (QoS 2), ready (SUBACK received) on return.
fn subscribe_direct(broker: &Broker, filter: &str) -> Sub {
    Sub::start(broker.plain_port, filter, &["-q", "2"])
}

/// Publish directly on the broker at QoS 1 (waits for the publish to complete).
fn publish_direct(broker: &Broker, topic: &str, payload: &str, extra: &[&str]) {
    let mut args = vec!["-q", "1"];
    args.extend_from_slice(extra);
    let (ok, stderr) = publish(broker.plain_port, topic, payload, &args);
    assert!(ok, "direct publish failed: {stderr}");
}

/// The session-mode destination under test.
struct Dest {
    version: &'static str,
    client_id: &'static str,
    topic: &'static str,
    username: Option<&'static str>,
    password: Option<&'static str>,
    pass_through: bool,
    credential: bool,
}

impl Default for Dest {
    fn default() -> Self {
        Dest {
            version: "device",
            client_id: "gw-{client_id}",
            topic: "devices/{client_id}/{topic}",
            username: None,
            password: None,
            pass_through: false,
            credential: false,
        }
    }
}

/// The gateway config (the MQTT schema of issue #3) for `d`.
fn mqtt_toml(dir: &Path, pki: &TestPki, broker: &Broker, d: &Dest) -> String {
    let mut credential_table = String::new();
    let mut credential_line = String::new();
    if d.credential {
        let c = pki.client_cert("gw").expect("client cert");
        credential_table = format!(
            "[[credential]]\nname = \"gw-cert\"\nkind = \"x509\"\ncert = \"{}\"\nkey = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        );
        credential_line = "credential = \"gw-cert\"\n".into();
    }
    let mut mqtt = format!(
        "mode = \"session\"\nversion = \"{}\"\nclient_id = \"{}\"\ntopic = \"{}\"\npass_through_credentials = {}\n",
        d.version, d.client_id, d.topic, d.pass_through
    );
    if let Some(u) = d.username {
        mqtt.push_str(&format!("username = \"{u}\"\n"));
    }
    if let Some(p) = d.password {
        let file = dir.join("broker.pass");
        std::fs::write(&file, p).expect("write password file");
        mqtt.push_str(&format!("password_file = \"{}\"\n", file.display()));
    }
    let common = |protocol: &str, adapter: &str, route: &str, mqtt_table: &str| {
        format!(
            "[gateway]\nshards = 1\n\n{credential_table}\n[[listener]]\nname = \"mqtt\"\nprotocol = \"{protocol}\"\nbind = \"127.0.0.1:0\"\n\n\
             [[destination]]\nname = \"broker\"\nadapter = \"{adapter}\"\nendpoint = \"127.0.0.1:{port}\"\n\
             server_name = \"localhost\"\nca = \"{ca}\"\n{credential_line}[destination.pool]\nwarm = 2\nconnect_timeout = \"5s\"\n{mqtt_table}\n\
             [[group]]\nname = \"default\"\nroutes = [ {{ listener = \"mqtt\", {route}destination = \"broker\" }} ]\n",
            port = broker.tls_port,
            ca = pki.ca_pem.display(),
        )
    };
    common("mqtt", "mqtts", "", &format!("[destination.mqtt]\n{mqtt}"))
}

/// The compiled plan for `d`.
fn plan_for(dir: &Path, pki: &TestPki, broker: &Broker, d: &Dest) -> Plan {
    let toml = mqtt_toml(dir, pki, broker, d);
    simgate::config::compile_str(&toml, dir)
        .unwrap_or_else(|e| panic!("MQTT config rejected: {e}\n{toml}"))
}

struct Setup {
    _dir: tempfile::TempDir,
    broker: Broker,
    gateway: Gateway,
    addr: SocketAddr,
}

fn setup(opts: BrokerOptions, d: Dest) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let broker = Broker::start(dir.path(), &pki, opts);
    let plan = plan_for(dir.path(), &pki, &broker, &d);
    let gateway = Gateway::start(Arc::new(plan)).expect("gateway starts");
    let addr = gateway
        .listener_addrs()
        .iter()
        .find(|(name, _)| name == "mqtt")
        .map(|(_, a)| *a)
        .expect("mqtt listener");
    Setup {
        _dir: dir,
        broker,
        gateway,
        addr,
    }
}

impl Setup {
    /// mosquitto_pub -d through simgate; returns (success, output).
    fn device_publish(
        &self,
        id: &str,
        version: &str,
        topic: &str,
        message: &str,
        extra: &[&str],
    ) -> (bool, String) {
        let mut args = vec!["-i", id, "-V", version];
        args.extend_from_slice(extra);
        args.push("-d");
        publish_output(self.addr.port(), topic, message, &args)
    }

    /// mosquitto_sub (QoS 1) through simgate, ready (SUBACK received) on return.
    fn device_subscribe(&self, id: &str, version: &str, filter: &str, extra: &[&str]) -> Sub {
        let mut args = vec!["-i", id, "-V", version, "-q", "1"];
        args.extend_from_slice(extra);
        Sub::start(self.addr.port(), filter, &args)
    }
}

#[test]
fn uplink_qos_0_1_2_arrives_rewritten_and_client_id_template_applies() {
    let s = setup(BrokerOptions::default(), Dest::default());
    let sub = subscribe_direct(&s.broker, "devices/#");
    for (version, tag) in [("mqttv311", "v3"), ("mqttv5", "v5")] {
        for qos in ["0", "1", "2"] {
            let id = format!("up{tag}q{qos}");
            let payload = format!("hello-{tag}-{qos}");
            let (ok, out) = s.device_publish(&id, version, "sensors/temp", &payload, &["-q", qos]);
            assert!(ok, "publish {version} qos {qos} failed:\n{out}");
            if qos == "1" {
                assert!(out.contains("received PUBACK"), "{out}");
            }
            if qos == "2" {
                assert!(out.contains("received PUBCOMP"), "{out}");
            }
            let expected = format!("devices/{id}/sensors/temp {payload}");
            sub.wait_for(WAIT, |l| l == expected);
            // The upstream connection carried the templated client id.
            s.broker.wait_log(&format!("as gw-{id} "), WAIT);
        }
    }
    let m = s.gateway.metrics();
    assert_eq!(m.mqtt_publishes_uplink, 6);
    assert_eq!(m.mqtt_sessions_started, 6);
    // The two QoS 1 PUBLISHes (one per version), timed device in -> PUBACK to the device and
    // written upstream -> broker PUBACK, and the difference (what simgate added); QoS 0 and 2
    // are not.
    let broker = m.latency.get("broker").expect("destination histograms");
    let count = |l| broker.get(l, Protocol::Mqtt).map_or(0, |h| h.len());
    assert_eq!(count(Latency::RequestDuration), 2);
    assert_eq!(count(Latency::UpstreamRtt), 2);
    assert_eq!(count(Latency::GatewayAdded), 2);
    // Session mode has no shared link: no link waits.
    assert_eq!(count(Latency::LinkWait), 0);
    assert!(broker
        .get(Latency::RequestDuration, Protocol::Http)
        .is_none());
}

#[test]
fn downlink_and_retained_messages_reach_devices_with_topics_mapped_back() {
    let s = setup(BrokerOptions::default(), Dest::default());
    for (version, id) in [("mqttv311", "down3"), ("mqttv5", "down5")] {
        let dev = s.device_subscribe(id, version, "cmd/#", &[]);
        publish_direct(&s.broker, &format!("devices/{id}/cmd/reboot"), "now", &[]);
        dev.wait_for(WAIT, |l| l == "cmd/reboot now");
        // Retained: published before the device (reconnecting) subscribes.
        publish_direct(&s.broker, &format!("devices/{id}/state"), "on", &["-r"]);
        drop(dev);
        let retained = s.device_subscribe(id, version, "state", &[]);
        retained.wait_for(WAIT, |l| l == "state on");
    }
    assert!(s.gateway.metrics().mqtt_publishes_downlink >= 4);
}

#[test]
fn will_is_published_after_abnormal_device_disconnects() {
    let s = setup(BrokerOptions::default(), Dest::default());
    let watcher = subscribe_direct(&s.broker, "devices/+/status");
    // A mosquitto_sub device killed with SIGKILL.
    let dev = s.device_subscribe(
        "willdev",
        "mqttv311",
        "cmd",
        &[
            "--will-topic",
            "status",
            "--will-payload",
            "dead",
            "--will-qos",
            "1",
        ],
    );
    dev.kill9();
    watcher.wait_for(WAIT, |l| l == "devices/willdev/status dead");
    // A raw v5 device whose socket is dropped.
    let mut raw = TcpStream::connect(s.addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    raw.write_all(&connect_v5_with_will(b"rawdev", b"status", b"gone"))
        .expect("send CONNECT");
    let connack = read_packet(&mut raw).expect("CONNACK");
    assert_eq!(connack[0], 0x20);
    assert_eq!(connack[3], 0x00, "CONNACK reason: {connack:?}");
    drop(raw);
    watcher.wait_for(WAIT, |l| l == "devices/rawdev/status gone");
    // A clean DISCONNECT publishes no will: a later message arrives with no will before it.
    let (ok, out) = s.device_publish(
        "cleandev",
        "mqttv5",
        "x",
        "1",
        &["--will-topic", "status", "--will-payload", "never"],
    );
    assert!(ok, "{out}");
    publish_direct(&s.broker, "devices/marker/status", "after", &[]);
    let next = watcher
        .next_message(WAIT)
        .expect("a message after the marker");
    assert_eq!(next, "devices/marker/status after");
}

#[test]
fn malformed_and_oversized_frames_close_only_that_session() {
    let s = setup(BrokerOptions::default(), Dest::default());
    let bystander = s.device_subscribe("bystander", "mqttv5", "cmd", &[]);
    // v5: PUBLISH with QoS 3 (malformed) -> DISCONNECT 0x81, then EOF.
    let mut raw = TcpStream::connect(s.addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    raw.write_all(&connect_v5_with_will(b"bad1", b"status", b"x"))
        .expect("CONNECT");
    assert_eq!(read_packet(&mut raw).expect("CONNACK")[0], 0x20);
    raw.write_all(&[0x36, 0x00]).expect("bad frame");
    let disconnect = read_packet(&mut raw).expect("DISCONNECT");
    assert_eq!(disconnect[0], 0xE0);
    assert_eq!(disconnect.get(2), Some(&0x81), "{disconnect:?}");
    assert!(read_packet(&mut raw).is_none(), "connection closed");
    // v5: a PUBLISH declaring 1 MiB (> 256 KiB) -> DISCONNECT 0x95 from the header alone.
    let mut big = TcpStream::connect(s.addr).expect("connect");
    big.set_read_timeout(Some(WAIT)).expect("timeout");
    big.write_all(&connect_v5_with_will(b"bad2", b"status", b"x"))
        .expect("CONNECT");
    assert_eq!(read_packet(&mut big).expect("CONNACK")[0], 0x20);
    big.write_all(&[0x30, 0x80, 0x80, 0x40])
        .expect("oversized header");
    let disconnect = read_packet(&mut big).expect("DISCONNECT");
    assert_eq!(disconnect.get(2), Some(&0x95), "{disconnect:?}");
    // 3.1.1: garbage after CONNECT -> just closed.
    let mut v3 = TcpStream::connect(s.addr).expect("connect");
    v3.set_read_timeout(Some(WAIT)).expect("timeout");
    v3.write_all(&connect_v311(b"bad3")).expect("CONNECT");
    assert_eq!(
        read_packet(&mut v3).expect("CONNACK"),
        vec![0x20, 0x02, 0x00, 0x00]
    );
    v3.write_all(&[0x00, 0x00]).expect("bad frame");
    assert!(read_packet(&mut v3).is_none(), "connection closed");
    // The other session still works.
    publish_direct(&s.broker, "devices/bystander/cmd", "still-here", &[]);
    bystander.wait_for(WAIT, |l| l == "cmd still-here");
    assert!(
        s.gateway.metrics().errors_of(
            simgate::shard::Protocol::Mqtt,
            simgate::shard::ErrorKind::DeviceBadRequest
        ) >= 3
    );
}

#[test]
fn v311_device_without_client_id_needs_a_clean_session() {
    let s = setup(BrokerOptions::default(), Dest::default());
    // Clean Session = 0 and an empty id: return code 2 "identifier rejected" [MQTT-3.1.3-8],
    // then closed.
    let mut refused = TcpStream::connect(s.addr).expect("connect");
    refused.set_read_timeout(Some(WAIT)).expect("timeout");
    refused
        .write_all(&connect_v311_flags(b"", 0))
        .expect("CONNECT");
    assert_eq!(
        read_packet(&mut refused).expect("CONNACK"),
        vec![0x20, 0x02, 0x00, 0x02]
    );
    assert!(read_packet(&mut refused).is_none(), "connection closed");
    // Clean Session = 1: accepted, under an id simgate assigns (never the empty one).
    let mut anonymous = TcpStream::connect(s.addr).expect("connect");
    anonymous.set_read_timeout(Some(WAIT)).expect("timeout");
    anonymous.write_all(&connect_v311(b"")).expect("CONNECT");
    assert_eq!(
        read_packet(&mut anonymous).expect("CONNACK"),
        vec![0x20, 0x02, 0x00, 0x00]
    );
    let line = s.broker.wait_log("as gw-simgate-", WAIT);
    assert!(!s.broker.log().contains("as gw- "), "{line}");
}

#[test]
fn password_file_credentials_and_wrong_password_refusal() {
    let good = setup(
        password_broker(),
        Dest {
            username: Some("gw"),
            password: Some("right-pass"),
            ..Dest::default()
        },
    );
    let sub = subscribe_direct(&good.broker, "devices/#");
    let (ok, out) = good.device_publish("pw1", "mqttv311", "t", "m", &["-q", "1"]);
    assert!(ok, "{out}");
    sub.wait_for(WAIT, |l| l == "devices/pw1/t m");

    let bad = setup(
        password_broker(),
        Dest {
            username: Some("gw"),
            password: Some("wrong-pass"),
            ..Dest::default()
        },
    );
    let (ok, out) = bad.device_publish("pw2", "mqttv311", "t", "m", &[]);
    assert!(!ok, "publish with a wrong password succeeded:\n{out}");
    assert!(
        out.contains("received CONNACK (5)") || out.contains("received CONNACK (4)"),
        "{out}"
    );
    let (ok, out) = bad.device_publish("pw3", "mqttv5", "t", "m", &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("received CONNACK (135)") || out.contains("received CONNACK (134)"),
        "{out}"
    );
    assert_eq!(bad.gateway.metrics().mqtt_connects_refused, 2);

    // Pass-through: the device's own credentials are used.
    let through = setup(
        password_broker(),
        Dest {
            pass_through: true,
            ..Dest::default()
        },
    );
    let (ok, out) =
        through.device_publish("pt1", "mqttv5", "t", "m", &["-u", "gw", "-P", "right-pass"]);
    assert!(ok, "{out}");
    let (ok, out) = through.device_publish("pt2", "mqttv5", "t", "m", &["-u", "gw", "-P", "nope"]);
    assert!(!ok, "{out}");
}

#[test]
fn mtls_credential_is_presented_and_missing_one_gives_server_unavailable() {
    let s = setup(
        client_certificate_broker(),
        Dest {
            credential: true,
            ..Dest::default()
        },
    );
    let sub = subscribe_direct(&s.broker, "devices/#");
    let (ok, out) = s.device_publish("mtls1", "mqttv5", "t", "m", &["-q", "1"]);
    assert!(ok, "{out}");
    sub.wait_for(WAIT, |l| l == "devices/mtls1/t m");

    let no_cert = setup(client_certificate_broker(), Dest::default());
    let (ok, out) = no_cert.device_publish("mtls2", "mqttv311", "t", "m", &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("received CONNACK (3)"), "{out}");
    let (ok, out) = no_cert.device_publish("mtls3", "mqttv5", "t", "m", &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("received CONNACK (136)"), "{out}");
}

#[test]
fn v5_device_over_v311_upstream_still_bridges() {
    let s = setup(
        BrokerOptions::default(),
        Dest {
            version: "3.1.1",
            topic: "{topic}",
            ..Dest::default()
        },
    );
    let sub = subscribe_direct(&s.broker, "plain/#");
    let (ok, out) = s.device_publish("x5", "mqttv5", "plain/a", "b", &["-q", "2"]);
    assert!(ok, "{out}");
    sub.wait_for(WAIT, |l| l == "plain/a b");
    s.broker.wait_log("as gw-x5 (p2", WAIT);
}

#[test]
fn silent_device_is_cut_after_one_and_a_half_keep_alives_and_broker_loss_closes_devices() {
    let mut s = setup(BrokerOptions::default(), Dest::default());
    let watcher = subscribe_direct(&s.broker, "devices/+/status");
    // Keep-alive 1 s, then silence: closed after 1.5 s with DISCONNECT 0x8D, will published.
    let mut quiet = TcpStream::connect(s.addr).expect("connect");
    quiet.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut connect = connect_v5_with_will(b"quiet", b"status", b"timed-out");
    connect[10..12].copy_from_slice(&1u16.to_be_bytes()); // keep-alive field
    quiet.write_all(&connect).expect("CONNECT");
    assert_eq!(read_packet(&mut quiet).expect("CONNACK")[0], 0x20);
    let started = Instant::now();
    let disconnect = read_packet(&mut quiet).expect("DISCONNECT");
    let waited = started.elapsed();
    assert_eq!(disconnect.get(2), Some(&0x8D), "{disconnect:?}");
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    assert!(read_packet(&mut quiet).is_none(), "connection closed");
    watcher.wait_for(WAIT, |l| l == "devices/quiet/status timed-out");
    drop(watcher);

    // The broker goes away: a v5 device gets DISCONNECT 0x80 (0x88 is CONNACK-only) and is
    // closed.
    let mut dev = TcpStream::connect(s.addr).expect("connect");
    dev.set_read_timeout(Some(WAIT)).expect("timeout");
    dev.write_all(&connect_v5_with_will(b"orphan", b"status", b"x"))
        .expect("CONNECT");
    assert_eq!(read_packet(&mut dev).expect("CONNACK")[0], 0x20);
    s.broker.kill9();
    let disconnect = read_packet(&mut dev).expect("DISCONNECT");
    assert_eq!(disconnect.get(2), Some(&0x80), "{disconnect:?}");
    assert!(read_packet(&mut dev).is_none(), "connection closed");
    // With the broker down, a new device gets CONNACK 0x88.
    let mut late = TcpStream::connect(s.addr).expect("connect");
    late.set_read_timeout(Some(WAIT)).expect("timeout");
    late.write_all(&connect_v5_with_will(b"late", b"status", b"x"))
        .expect("CONNECT");
    let connack = read_packet(&mut late).expect("CONNACK");
    assert_eq!(connack.get(3), Some(&0x88), "{connack:?}");
}

#[test]
fn publish_with_subscription_identifier_is_a_protocol_error_and_not_forwarded() {
    // Issue #10 part 5: a client must not send a Subscription Identifier in PUBLISH
    // ([MQTT-3.3.4-6]); simgate used to forward it (and PUBACK it after the broker did).
    let s = setup(BrokerOptions::default(), Dest::default());
    let watcher = subscribe_direct(&s.broker, "devices/#");
    let mut raw = TcpStream::connect(s.addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    raw.write_all(&connect_v5(b"subid", &[])).expect("CONNECT");
    assert_eq!(read_packet(&mut raw).expect("CONNACK")[0], 0x20);
    // QoS 1 PUBLISH to "t", packet id 1, properties: Subscription Identifier 1.
    raw.write_all(&frame(0x32, &[0, 1, b't', 0, 1, 2, 0x0B, 1, b'x']))
        .expect("PUBLISH");
    let reply = read_packet(&mut raw).expect("DISCONNECT");
    assert_eq!(reply[0], 0xE0, "expected DISCONNECT, got {reply:02X?}");
    assert_eq!(reply.get(2), Some(&0x82), "{reply:02X?}");
    assert!(read_packet(&mut raw).is_none(), "connection closed");
    // Nothing reached the broker: the first message its subscriber sees is one published after.
    publish_direct(&s.broker, "devices/marker/t", "after", &[]);
    assert_eq!(
        watcher.next_message(WAIT).as_deref(),
        Some("devices/marker/t after")
    );
    assert_eq!(s.gateway.metrics().mqtt_publishes_uplink, 0);
}

#[test]
fn auth_from_a_device_is_a_protocol_error_and_not_sent_to_the_broker() {
    // Issue #10 part 5: a device that sent no Authentication Method must not send AUTH
    // ([MQTT-4.12.0-7]); simgate used to forward it, and the broker ended the session.
    let s = setup(BrokerOptions::default(), Dest::default());
    let mut raw = TcpStream::connect(s.addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    raw.write_all(&connect_v5(b"authdev", &[]))
        .expect("CONNECT");
    assert_eq!(read_packet(&mut raw).expect("CONNACK")[0], 0x20);
    s.broker.wait_log("as gw-authdev ", WAIT);
    // AUTH 0x19 "Re-authenticate", Authentication Method "SCRAM-SHA-1".
    let mut auth = vec![0x19, 14, 0x15];
    string(&mut auth, b"SCRAM-SHA-1");
    raw.write_all(&frame(0xF0, &auth)).expect("AUTH");
    let reply = read_packet(&mut raw).expect("DISCONNECT");
    assert_eq!(reply[0], 0xE0, "expected DISCONNECT, got {reply:02X?}");
    assert_eq!(reply.get(2), Some(&0x82), "{reply:02X?}");
    assert!(read_packet(&mut raw).is_none(), "connection closed");
    // The upstream session ends without the broker having seen an AUTH: simgate drops it (the
    // broker sees the connection go), the broker does not refuse a packet.
    let end = s.broker.wait_log_where(WAIT, |l| {
        l.contains("gw-authdev")
            && (l.contains("closed its connection") || l.contains("disconnect"))
    });
    assert!(
        !end.contains("protocol error"),
        "the broker got the AUTH: {end}"
    );
    assert!(
        !s.broker.log().contains("Received AUTH"),
        "{}",
        s.broker.log()
    );
    assert!(
        s.gateway.metrics().errors_of(
            simgate::shard::Protocol::Mqtt,
            simgate::shard::ErrorKind::DeviceBadRequest
        ) >= 1
    );
}

#[test]
fn a_subscribe_filter_with_no_upstream_form_is_refused_in_the_suback_and_the_rest_subscribed() {
    // Issue #10 follow-up: under a topic template with text after `{topic}`, `cmd/#` has no
    // valid upstream form (`#` must be last). The device gets 0x8F (0x80 in 3.1.1) for that
    // filter in the SUBACK, as a broker refuses a filter; its other filters are subscribed
    // and the session goes on (it used to end with DISCONNECT). The same for UNSUBSCRIBE.
    let s = setup(
        BrokerOptions::default(),
        Dest {
            topic: "devices/{client_id}/{topic}/in",
            ..Dest::default()
        },
    );
    for (connect, id, refused) in [
        (connect_v5(b"subdev5", &[]), "subdev5", 0x8F),
        (connect_v311(b"subdev3"), "subdev3", 0x80),
    ] {
        let v5 = refused == 0x8F;
        let mut raw = TcpStream::connect(s.addr).expect("connect");
        raw.set_read_timeout(Some(WAIT)).expect("timeout");
        raw.write_all(&connect).expect("CONNECT");
        assert_eq!(read_packet(&mut raw).expect("CONNACK")[0], 0x20);
        // SUBSCRIBE id 9: "cmd/#" (refused), "cmd/+" QoS 1, "a/#" (refused).
        let mut body = vec![0, 9];
        if v5 {
            body.push(0); // properties
        }
        for (filter, qos) in [(&b"cmd/#"[..], 1u8), (b"cmd/+", 1), (b"a/#", 0)] {
            string(&mut body, filter);
            body.push(qos);
        }
        raw.write_all(&frame(0x82, &body)).expect("SUBSCRIBE");
        let suback = read_packet(&mut raw).expect("SUBACK");
        assert_eq!(suback[0], 0x90, "expected SUBACK, got {suback:02X?}");
        let codes = &suback[if v5 { 5 } else { 4 }..];
        assert_eq!(codes, [refused, 0x01, refused], "{suback:02X?}");
        // The valid filter is live: a message the broker routes to it reaches the device.
        publish_direct(
            &s.broker,
            &format!("devices/{id}/cmd/reboot/in"),
            "now",
            &[],
        );
        let publish = read_packet(&mut raw).expect("PUBLISH");
        assert_eq!(
            publish[0] & 0xF0,
            0x30,
            "expected PUBLISH, got {publish:02X?}"
        );
        assert!(
            publish.windows(10).any(|w| w == b"cmd/reboot"),
            "topic mapped back: {publish:02X?}"
        );
        // ...and a SUBSCRIBE whose every filter is refused is answered without the broker.
        let mut body = vec![0, 10];
        if v5 {
            body.push(0);
        }
        string(&mut body, b"x/#");
        body.push(0);
        raw.write_all(&frame(0x82, &body)).expect("SUBSCRIBE");
        let answer = read_packet(&mut raw).expect("SUBACK");
        assert_eq!(answer[0], 0x90, "expected SUBACK, got {answer:02X?}");
        assert_eq!(answer.last(), Some(&refused), "{answer:02X?}");
        // UNSUBSCRIBE id 11: "cmd/+" goes to the broker, "cmd/#" is refused in the UNSUBACK
        // (5.0: 0x8F for it; 3.1.1 UNSUBACKs carry no codes).
        let mut body = vec![0, 11];
        if v5 {
            body.push(0);
        }
        string(&mut body, b"cmd/+");
        string(&mut body, b"cmd/#");
        raw.write_all(&frame(0xA2, &body)).expect("UNSUBSCRIBE");
        let unsuback = read_packet(&mut raw).expect("UNSUBACK");
        assert_eq!(unsuback[0], 0xB0, "expected UNSUBACK, got {unsuback:02X?}");
        if v5 {
            assert_eq!(&unsuback[5..], [0x00, 0x8F], "{unsuback:02X?}");
        } else {
            assert_eq!(unsuback, [0xB0, 2, 0, 11]);
        }
        // The unsubscription reached the broker: nothing more arrives; the session is alive.
        publish_direct(&s.broker, &format!("devices/{id}/cmd/again/in"), "x", &[]);
        raw.write_all(&[0xC0, 0]).expect("PINGREQ");
        assert_eq!(read_packet(&mut raw).expect("PINGRESP"), [0xD0, 0]);
    }
}

// ---- raw MQTT helpers ----

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn connect_v5_with_will(client_id: &[u8], will_topic: &[u8], will_payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(5);
    body.push(0b0000_1110); // will QoS 1, will flag, clean start
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0); // properties
    string(&mut body, client_id);
    body.push(0); // will properties
    string(&mut body, will_topic);
    string(&mut body, will_payload);
    frame(0x10, &body)
}

/// A v5 CONNECT (clean start, keep-alive 60, no will) with the property block `properties`
/// (identifier/value bytes, without the Property Length).
fn connect_v5(client_id: &[u8], properties: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(5);
    body.push(0b0000_0010); // clean start
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(properties.len() as u8);
    body.extend_from_slice(properties);
    string(&mut body, client_id);
    frame(0x10, &body)
}

fn connect_v311(client_id: &[u8]) -> Vec<u8> {
    connect_v311_flags(client_id, 0b0000_0010) // clean session
}

fn connect_v311_flags(client_id: &[u8], flags: u8) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    string(&mut body, client_id);
    frame(0x10, &body)
}

/// Read one whole MQTT packet (fixed header included); `None` at EOF.
fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    if s.read_exact(&mut first).is_err() {
        return None;
    }
    let mut packet = vec![first[0]];
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        packet.push(b[0]);
        len |= usize::from(b[0] & 0x7F) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    packet.extend_from_slice(&body);
    Some(packet)
}

/// The value of the sample `name{labels}` in exposition `text` (0 when absent).
fn sample(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue #10 part 6: with the broker gone, session-mode CONNECTs that fail upstream are MQTT
/// errors in `/metrics`, never `simgate_http_errors_total` (which used to rise by one each).
#[test]
fn upstream_failures_of_mqtt_sessions_are_counted_as_mqtt_errors() {
    let mut s = setup(BrokerOptions::default(), Dest::default());
    s.broker.kill9();
    for i in 0..5 {
        let (ok, out) = s.device_publish(&format!("down{i}"), "mqttv5", "t", "m", &[]);
        assert!(!ok, "publish with the broker down must fail: {out}");
        assert!(out.contains("received CONNACK (136)"), "{out}");
    }
    let text = simgate::control::metrics::render(
        &s.gateway.metrics(),
        &["mqtt"],
        &simgate::control::metrics::PlanGenerations {
            expected: 0,
            served: vec![0],
        },
        Default::default(),
        &Default::default(),
        None,
    );
    let upstream_kinds = [
        "upstream_connect",
        "upstream_tls",
        "upstream_backoff",
        "upstream_closed",
        "upstream_protocol",
        "upstream_timeout",
    ];
    let count = |family: &str| -> u64 {
        upstream_kinds
            .iter()
            .map(|k| sample(&text, &format!("{family}{{kind=\"{k}\"}}")))
            .sum()
    };
    assert_eq!(count("simgate_http_errors_total"), 0, "{text}");
    assert_eq!(count("simgate_mqtt_errors_total"), 5, "{text}");
}
