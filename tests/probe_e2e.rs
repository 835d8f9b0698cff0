//! Integration: the end-to-end probe (`[probe.e2e]`) of a real `simgate run`, both transports.
//!
//! MQTT, in session mode to a real TLS mosquitto: the control thread's synthetic device
//! publishes numbered messages through simgate's own MQTT listener and reads them back through
//! the broker (received, no loss); a SIGSTOPped broker makes the loss ratio rise and raises the
//! alarm (one warn line, a `/readyz` detail line); SIGCONT brings the messages back and clears
//! it (one line).
//!
//! HTTP, to the cloud sink's `/echo` (tests/python/cloud_sink.py, a real TLS server in its own
//! process): the device `POST`s numbered messages through simgate's own HTTP listener, routed
//! to the sink, which echoes them; the same freeze / alarm / thaw / clear sequence.
//!
//! `/admin/probes` is the signal polled; nothing waits on a timer.

mod common;

use std::time::{Duration, Instant};

use common::cloud_sink::CloudSink;
use common::mosquitto::{Broker, BrokerOptions};
use common::*;

/// Longest wait for any one expected state; a bound for a failure message, not a pacing sleep.
const DEADLINE: Duration = Duration::from_secs(60);

fn e2e(gw: &Simgate) -> serde_json::Value {
    let (status, body) = gw.admin_get("/admin/probes");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/admin/probes is not JSON ({e}): {body}"));
    json["e2e"].clone()
}

fn wait_e2e(
    gw: &Simgate,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let json = e2e(gw);
        if pred(&json) {
            return json;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what} not seen within {DEADLINE:?}; last e2e: {json}\nlog:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Wait until the log holds a line containing `needle` (a deadline bounds the wait).
fn wait_logged(gw: &Simgate, needle: &str, what: &str) {
    let start = Instant::now();
    while lines(&gw.stderr(), needle) < 1 {
        assert!(
            start.elapsed() < DEADLINE,
            "{what} not logged:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sequence both transports are held to, for the probe of `listener` (loss bound 0.2):
/// up — messages come back, none lost, the families on `/metrics` pass promtool — then
/// `while_up` (the transport's own checks, given the e2e JSON); `freeze` stops the upstream —
/// loss rises above the bound, the alarm is raised (`/admin/probes`, the gauge, one warn line,
/// a `/readyz` detail naming the listener; with `says_why`, `last_error` too); `thaw` — the
/// messages come back, the alarm clears (one line, the gauge, `/readyz`), raised only once.
fn up_frozen_thawed(
    gw: &Simgate,
    listener: &str,
    says_why: bool,
    while_up: impl FnOnce(&serde_json::Value),
    freeze: impl FnOnce(),
    thaw: impl FnOnce(),
) {
    let alarm_gauge = |v: u8| format!("simgate_probe_e2e_alarm{{listener=\"{listener}\"}} {v}");
    // Up: messages come back, none lost.
    let json = wait_e2e(gw, "received messages", |j| {
        j["received_total"].as_u64() >= Some(5) && j["connected"] == true
    });
    eprintln!("e2e while up: {json}");
    assert_eq!(json["lost_total"], 0, "{json}");
    assert_eq!(json["loss_ratio"], 0.0, "{json}");
    assert_eq!(json["alarm"], false, "{json}");
    assert!(json["p99_ms"].as_f64().is_some(), "{json}");
    let (_, text) = gw.admin_get("/metrics");
    assert!(
        text.contains(&format!(
            "simgate_probe_e2e_delay_seconds_count{{listener=\"{listener}\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "simgate_probe_e2e_loss_ratio{{listener=\"{listener}\"}} 0"
        )),
        "{text}"
    );
    assert!(text.contains(&alarm_gauge(0)), "{text}");
    promtool_check(&text);
    while_up(&json);

    // SIGSTOP: messages stop coming back; loss rises above the bound, the alarm is logged.
    freeze();
    let json = wait_e2e(gw, "the alarm", |j| j["alarm"] == true);
    eprintln!("e2e with the upstream frozen: {json}");
    assert!(json["loss_ratio"].as_f64() > Some(0.2), "{json}");
    assert!(json["lost_total"].as_u64() > Some(0), "{json}");
    if says_why {
        assert!(json["last_error"].is_string(), "{json}");
    }
    let (_, text) = gw.admin_get("/metrics");
    assert!(text.contains(&alarm_gauge(1)), "{text}");
    wait_logged(gw, "end-to-end probe alarm:", "the alarm");
    let (status, body) = gw.admin_get("/readyz");
    eprintln!("/readyz with the alarm up: {status} {body}");
    assert!(
        body.contains(&format!("end-to-end probe alarm ({listener})")),
        "{body}"
    );

    // SIGCONT: messages come back, the window fills with received ones, the alarm clears.
    let received_frozen = json["received_total"].as_u64().expect("received_total");
    thaw();
    let json = wait_e2e(gw, "the alarm cleared", |j| {
        j["alarm"] == false && j["received_total"].as_u64() > Some(received_frozen)
    });
    eprintln!("e2e after thaw: {json}");
    assert!(json["loss_ratio"].as_f64() <= Some(0.2), "{json}");
    wait_logged(gw, "end-to-end probe alarm cleared", "recovery");
    let log = gw.stderr();
    assert_eq!(
        lines(&log, "end-to-end probe alarm:"),
        1,
        "raised once:\n{log}"
    );
    let (_, text) = gw.admin_get("/metrics");
    assert!(text.contains(&alarm_gauge(0)), "{text}");
    let (_, body) = gw.admin_get("/readyz");
    assert!(!body.contains("end-to-end probe alarm"), "{body}");
}

#[test]
fn e2e_probe_sees_a_frozen_broker_and_recovers() {
    let world = World::new();
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let ca = world.pki.ca_pem.display().to_string();
    let toml = format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[destination]]
name = "broker"
adapter = "mqtts"
endpoint = "127.0.0.1:{mqtt_port}"
server_name = "localhost"
ca = "{ca}"
[destination.mqtt]
mode = "session"
[destination.pool]
warm = 0

[[group]]
name = "default"
routes = [
  {{ listener = "mqtt", destination = "broker" }},
]

[[sim]]
imsi = "001010000000002"
ip = "127.0.0.2"
group = "default"

[probe]
interval = "off"
client_id = "probe-test"

[probe.e2e]
listener = "mqtt"
topic = "simgate/probe"
interval = "100ms"
timeout = "500ms"
window = 10
loss_alarm = 0.2
"#,
        mqtt_port = broker.tls_port,
    );
    let gw = world.simgate(&toml);
    up_frozen_thawed(
        &gw,
        "mqtt",
        false,
        |_| {
            let (_, config) = gw.admin_get("/admin/config");
            let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
            assert_eq!(config["probe"]["e2e"]["listener"], "mqtt", "{config}");
            assert_eq!(config["probe"]["e2e"]["window"], 10, "{config}");
            assert!(
                broker.log().contains("probe-test-e2e"),
                "the broker saw the probe device"
            );
        },
        || broker.freeze(),
        || broker.thaw(),
    );
}

#[test]
fn e2e_probe_over_http_sees_a_frozen_echo_server_and_recovers() {
    let world = World::new();
    let sink = CloudSink::start(
        world.dir.path(),
        &world.pki,
        serde_json::json!({"echo": {}}),
    );
    let ca = world.pki.ca_pem.display().to_string();
    let toml = format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "echo"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
[destination.pool]
warm = 0

[[group]]
name = "default"
routes = [
  {{ listener = "http", path = "/echo", destination = "echo" }},
]

[probe]
interval = "off"
client_id = "probe-test"

[probe.e2e]
listener = "http"
path = "/echo/probe"
interval = "100ms"
timeout = "500ms"
window = 10
loss_alarm = 0.2
"#,
        sink = sink.addr(),
    );
    let gw = world.simgate(&toml);
    up_frozen_thawed(
        &gw,
        "http",
        true,
        |json| {
            assert_eq!(json["path"], "/echo/probe", "{json}");
            assert_eq!(json["topic"], serde_json::Value::Null, "{json}");
            let echoed = sink.accepted("echo");
            assert!(
                echoed.len() >= 5,
                "the echo server saw the probe: {echoed:?}"
            );
            assert_eq!(echoed[0]["path"], "/echo/probe", "{:?}", echoed[0]);
            let (_, config) = gw.admin_get("/admin/config");
            let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
            assert_eq!(config["probe"]["e2e"]["path"], "/echo/probe", "{config}");
        },
        || sink.freeze(),
        || sink.thaw(),
    );
}
