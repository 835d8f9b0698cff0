//! Integration: the internal probes of a real `simgate run` against the built-in HTTPS sink
//! (`HEAD /`) and a real TLS mosquitto (CONNECT, PINGREQ, DISCONNECT): both pass, `/metrics`
//! and `/admin/probes` agree, and `promtool` accepts the series; a SIGSTOPped broker makes its
//! probe fail (logged once), SIGCONT makes it pass again (logged once).

mod common;

use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions};
use common::*;

/// Longest wait for any one expected state; a bound for a failure message, not a pacing sleep.
const DEADLINE: Duration = Duration::from_secs(30);

fn probes(gw: &Simgate) -> serde_json::Value {
    let (status, body) = gw.admin_get("/admin/probes");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/admin/probes is not JSON ({e}): {body}"))
}

fn destination<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == name))
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

/// Poll `/admin/probes` until `pred` holds for destination `name`; the JSON that satisfied it.
fn wait_probe(
    gw: &Simgate,
    name: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let json = probes(gw);
        if pred(destination(&json, name)) {
            return json;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name}: {what} not seen within {DEADLINE:?}; last /admin/probes: {json}\nlog:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll simgate's log until it holds `n` lines with all of `needles`.
fn wait_log_lines(gw: &Simgate, needles: &[&str], n: usize) -> String {
    let start = Instant::now();
    loop {
        let log = gw.stderr();
        if matching(&log, needles) >= n {
            return log;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{n} log line(s) with {needles:?} not seen; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn matching(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
        .parse()
        .expect("a number")
}

#[test]
fn probes_pass_then_see_a_frozen_broker_fail_and_recover() {
    let world = World::new();
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
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

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

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
  {{ listener = "http", path = "/", destination = "sink" }},
  {{ listener = "mqtt", destination = "broker" }},
]

[probe]
interval = "200ms"
timeout = "500ms"
client_id = "probe-test-{{hostname}}"
"#,
        sink = world.sink.addr(),
        mqtt_port = broker.tls_port,
    );
    let gw = world.simgate(&toml);

    // Both probed ok.
    for name in ["sink", "broker"] {
        wait_probe(&gw, name, "a passing probe", |d| d["result"] == "ok");
    }
    let json = probes(&gw);
    eprintln!("/admin/probes with both passing: {json}");
    assert_eq!(json["interval_ms"], 200);
    let sink = destination(&json, "sink");
    assert_eq!(sink["adapter"], "https");
    assert_eq!(sink["last"]["http_status_class"], "2xx", "{sink}");
    let broker_json = destination(&json, "broker");
    let detail = broker_json["last"]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("CONNACK accepted in "), "{broker_json}");
    let (_, text) = gw.admin_get("/metrics");
    for name in ["sink", "broker"] {
        for stage in ["connect", "tls", "exchange"] {
            let labels = format!("{{destination=\"{name}\",stage=\"{stage}\"}}");
            assert_eq!(
                metric(&text, &format!("simgate_probe_success{labels}")),
                1.0
            );
            assert!(metric(&text, &format!("simgate_probe_duration_seconds{labels}")) > 0.0);
        }
        assert!(
            metric(
                &text,
                &format!("simgate_probe_total{{destination=\"{name}\",result=\"ok\"}}")
            ) >= 1.0
        );
    }
    for name in ["sink", "broker"] {
        assert!(
            metric(
                &text,
                &format!("simgate_probe_round_trip_seconds_count{{destination=\"{name}\"}}")
            ) >= 1.0
        );
    }
    promtool_check(&text);
    // The sink saw the probe's HEAD; no device request was counted for it.
    assert!(world.sink.requests().iter().any(|r| r.method == "HEAD"
        && r.path == "/"
        && r.header("user-agent")
            .is_some_and(|u| u.starts_with(b"simgate-probe/"))));
    assert_eq!(metric(&text, "simgate_http_requests_total"), 0.0);
    assert!(
        broker.log().contains("probe-test-"),
        "the broker saw the probe's client id"
    );

    // SIGSTOP: the kernel still completes TCP handshakes (the listen backlog), but nobody
    // answers the ClientHello or the CONNECT: the probe fails after the connect stage.
    broker.freeze();
    let json = wait_probe(&gw, "broker", "a failing probe", |d| {
        d["result"] == "failed"
    });
    let b = destination(&json, "broker");
    eprintln!("first failed probe of the frozen broker: {b}");
    let stage = b["last"]["failed_stage"].as_str().unwrap_or_default();
    assert!(
        stage == "tls" || stage == "exchange",
        "failed at {stage}: {b}"
    );
    assert_eq!(b["last"]["stages"]["connect"]["ok"], true, "{b}");
    assert!(
        b["last"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{b}"
    );
    wait_probe(&gw, "broker", "several failures", |d| {
        d["consecutive_failures"].as_u64() >= Some(3)
    });
    wait_log_lines(&gw, &["probe failed", "destination=broker"], 1);
    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        metric(
            &text,
            "simgate_probe_success{destination=\"broker\",stage=\"exchange\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &text,
            "simgate_probe_consecutive_failures{destination=\"broker\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &text,
            "simgate_probe_success{destination=\"sink\",stage=\"exchange\"}"
        ),
        1.0,
        "the sink's path is unaffected"
    );

    // SIGCONT: ok again, logged once.
    broker.thaw();
    wait_probe(&gw, "broker", "a passing probe after thaw", |d| {
        d["result"] == "ok" && d["consecutive_failures"] == 0
    });
    let log = wait_log_lines(&gw, &["probe ok", "destination=broker"], 2);
    assert_eq!(
        matching(&log, &["probe failed", "destination=broker"]),
        1,
        "a failure streak logs once, not every probe:\n{log}"
    );
    assert_eq!(
        matching(&log, &["probe failed", "destination=sink"]),
        0,
        "{log}"
    );
    assert!(!log.contains("SharedAccessSignature"));

    // A reload turns probes off: the board empties and the series go.
    std::fs::write(
        &gw.config_path,
        toml.replace("interval = \"200ms\"", "interval = \"off\""),
    )
    .expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let start = Instant::now();
    while !probes(&gw)["interval_ms"].is_null() {
        assert!(
            start.elapsed() < DEADLINE,
            "reload did not reach the probes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probes(&gw)["destinations"], serde_json::json!([]));
    let (_, text) = gw.admin_get("/metrics");
    assert!(!text.contains("simgate_probe_"), "{text}");
}
