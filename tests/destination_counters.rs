//! Integration: the per-destination counters (`simgate_destination_*_total`) of a 2-shard
//! gateway count exactly the traffic sent to each destination — two HTTPS sinks, an
//! unreachable HTTPS destination, and a mosquitto broker in session and aggregate mode —
//! across a reload that reorders the destinations but keeps their names; the sums over
//! destinations equal the global families; the unreachable destination's errors are its own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::mosquitto::{publish, Broker, BrokerOptions};
use common::*;
use simgate::testkit::HttpsSink;

/// Samples of a `/metrics` text: series (name with labels, as printed) → value.
fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, v)| Some((series.to_string(), v.parse::<f64>().ok()? as u64)))
        .collect()
}

fn value(m: &BTreeMap<String, u64>, series: &str) -> u64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

fn messages(m: &BTreeMap<String, u64>, dest: &str, protocol: &str, direction: &str) -> u64 {
    value(
        m,
        &format!(
            "simgate_destination_messages_total{{destination=\"{dest}\",protocol=\"{protocol}\",direction=\"{direction}\"}}"
        ),
    )
}

/// Sum of the samples of family `name` whose labels contain every one of `labels`.
fn sum(m: &BTreeMap<String, u64>, name: &str, labels: &[&str]) -> u64 {
    m.iter()
        .filter(|(s, _)| s.starts_with(&format!("{name}{{")) || *s == name)
        .filter(|(s, _)| labels.iter().all(|l| s.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// Poll `/metrics` until `done` holds (the last counts land on the shard just after the device
/// got its answer), or give up after a generous deadline; returns the last samples.
fn metrics_when(
    gw: &Simgate,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = gw.admin_get("/metrics");
        assert_eq!(status, 200);
        let m = parse(&text);
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const BODY: &[u8] = b"{\"t\":21.5}";

/// The gateway config; `reversed` lists the destinations in the other order (every index
/// moves; the names stay).
fn config(
    world: &World,
    sink_b: &HttpsSink,
    dead: std::net::SocketAddr,
    broker: &Broker,
    reversed: bool,
) -> String {
    let ca = world.pki.ca_pem.display().to_string();
    let https = |name: &str, endpoint: String| {
        format!(
            "[[destination]]\nname = \"{name}\"\nadapter = \"https\"\nendpoint = \"{endpoint}\"\n\
             server_name = \"localhost\"\nca = \"{ca}\"\n[destination.pool]\nwarm = 0\n\
             connect_timeout = \"2s\"\n"
        )
    };
    let mut destinations = [
        https("sink-a", world.sink.addr().to_string()),
        https("sink-b", sink_b.addr().to_string()),
        https("dead", dead.to_string()),
        // No warm connections anywhere: every connect counted is one the traffic made (a
        // session-mode broker destination warms 2 by default, which raced the first scrape).
        broker.destination_toml("broker-session", &world.pki.ca_pem, "mode = \"session\"")
            + "[destination.pool]\nwarm = 0\n",
        broker.destination_toml("broker-agg", &world.pki.ca_pem, "mode = \"aggregate\"")
            + "[destination.pool]\nwarm = 0\n",
    ];
    if reversed {
        destinations.reverse();
    }
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtt-session"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtt-agg"
protocol = "mqtt"
bind = "127.0.0.1:0"

{destinations}

[[group]]
name = "default"
routes = [
  {{ listener = "http", path = "/a", destination = "sink-a" }},
  {{ listener = "http", path = "/b", destination = "sink-b" }},
  {{ listener = "http", path = "/down", destination = "dead" }},
  {{ listener = "mqtt-session", destination = "broker-session" }},
  {{ listener = "mqtt-agg", destination = "broker-agg" }},
]
"#,
        destinations = destinations.join("\n")
    )
}

/// Traffic of one burst.
#[derive(Clone, Copy)]
struct Burst {
    a: u64,
    b: u64,
    dead: u64,
    session: u64,
    aggregate: u64,
}

fn send(gw: &Simgate, burst: Burst) {
    let mut device = Device::connect(gw.http);
    for (path, n) in [("/a", burst.a), ("/b", burst.b)] {
        for _ in 0..n {
            let r = device.request(&post(path, BODY, ""));
            assert_eq!(r.status, 200, "{path}: {}", gw.stderr());
        }
    }
    for _ in 0..burst.dead {
        // Each on a connection of its own: a 502 may close the device's connection.
        let r = Device::connect(gw.http).request(&post("/down", BODY, ""));
        assert_eq!(r.status, 502, "{}", gw.stderr());
    }
    for (listener, n) in [
        ("mqtt-session", burst.session),
        ("mqtt-agg", burst.aggregate),
    ] {
        let port = gw.listener(listener).port();
        for i in 0..n {
            let id = format!("{listener}-{i}");
            let (ok, stderr) = publish(port, "t/x", "payload-7", &["-q", "1", "-i", &id]);
            assert!(ok, "mosquitto_pub to {listener}: {stderr}\n{}", gw.stderr());
        }
    }
}

#[test]
fn destination_counters_match_the_traffic_across_a_reload() {
    let world = World::new();
    let cert_b = world
        .pki
        .server_cert("sink-b", &["localhost", "127.0.0.1"])
        .expect("cert");
    let sink_b = HttpsSink::start(sink_config(cert_b)).expect("sink b");
    // A port nothing listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let gw = world.simgate(&config(&world, &sink_b, dead, &broker, false));

    // Every destination's series exist at 0 before any traffic.
    let before = parse(&gw.admin_get("/metrics").1);
    for dest in ["sink-a", "sink-b", "dead", "broker-session", "broker-agg"] {
        assert_eq!(messages(&before, dest, "http", "uplink"), 0);
        assert_eq!(messages(&before, dest, "mqtt", "downlink"), 0);
        assert_eq!(
            value(
                &before,
                &format!(
                    "simgate_destination_connects_total{{destination=\"{dest}\",result=\"ok\"}}"
                )
            ),
            0
        );
    }

    let first = Burst {
        a: 5,
        b: 3,
        dead: 2,
        session: 4,
        aggregate: 3,
    };
    let second = Burst {
        a: 2,
        b: 4,
        dead: 1,
        session: 2,
        aggregate: 2,
    };
    send(&gw, first);
    std::fs::write(
        &gw.config_path,
        config(&world, &sink_b, dead, &broker, true),
    )
    .expect("write config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "reload: {body}");
    send(&gw, second);

    let a = first.a + second.a;
    let b = first.b + second.b;
    let session = first.session + second.session;
    let aggregate = first.aggregate + second.aggregate;
    let dead_requests = first.dead + second.dead;
    let m = metrics_when(&gw, |m| {
        messages(m, "sink-a", "http", "downlink") == a
            && messages(m, "sink-b", "http", "downlink") == b
            && sum(
                m,
                "simgate_destination_errors_total",
                &["destination=\"dead\""],
            ) == dead_requests
            && messages(m, "broker-session", "mqtt", "uplink") == session
            && messages(m, "broker-agg", "mqtt", "uplink") == aggregate
    });

    // Exactly the traffic, each way, under each name, across the reload.
    assert_eq!(messages(&m, "sink-a", "http", "uplink"), a);
    assert_eq!(messages(&m, "sink-a", "http", "downlink"), a);
    assert_eq!(messages(&m, "sink-b", "http", "uplink"), b);
    assert_eq!(messages(&m, "sink-b", "http", "downlink"), b);
    assert_eq!(messages(&m, "dead", "http", "uplink"), 0);
    assert_eq!(messages(&m, "dead", "http", "downlink"), 0);
    assert_eq!(messages(&m, "broker-session", "mqtt", "uplink"), session);
    assert_eq!(messages(&m, "broker-agg", "mqtt", "uplink"), aggregate);
    assert_eq!(messages(&m, "sink-a", "mqtt", "uplink"), 0);
    assert_eq!(messages(&m, "broker-session", "http", "uplink"), 0);

    // Sums over destinations equal the global families.
    assert_eq!(
        sum(
            &m,
            "simgate_destination_messages_total",
            &["protocol=\"http\"", "direction=\"downlink\""]
        ),
        value(&m, "simgate_http_responses_total{class=\"2xx\"}")
    );
    assert_eq!(
        sum(
            &m,
            "simgate_destination_messages_total",
            &["protocol=\"mqtt\"", "direction=\"uplink\""]
        ),
        sum(
            &m,
            "simgate_mqtt_publishes_total",
            &["direction=\"uplink\""]
        )
    );
    assert_eq!(
        sum(
            &m,
            "simgate_destination_errors_total",
            &["protocol=\"http\""]
        ),
        sum(&m, "simgate_http_errors_total", &[])
    );

    // The unreachable destination's errors are its own, and only upstream ones.
    assert_eq!(
        sum(
            &m,
            "simgate_destination_errors_total",
            &["destination=\"dead\""]
        ),
        dead_requests
    );
    assert_eq!(
        sum(
            &m,
            "simgate_destination_errors_total",
            &["destination=\"dead\"", "kind=\"upstream_connect\""]
        ) + sum(
            &m,
            "simgate_destination_errors_total",
            &["destination=\"dead\"", "kind=\"upstream_backoff\""]
        ),
        dead_requests
    );
    for dest in ["sink-a", "sink-b", "broker-session", "broker-agg"] {
        let label = format!("destination=\"{dest}\"");
        assert_eq!(
            sum(&m, "simgate_destination_errors_total", &[&label]),
            0,
            "{dest}"
        );
    }
    assert!(
        value(
            &m,
            "simgate_destination_connects_total{destination=\"dead\",result=\"failed\"}"
        ) >= 1
    );
    assert_eq!(
        value(
            &m,
            "simgate_destination_connects_total{destination=\"dead\",result=\"ok\"}"
        ),
        0
    );

    // Every HTTP/1.1 request to a sink took one pool checkout.
    for (dest, n) in [("sink-a", a), ("sink-b", b)] {
        let label = format!("destination=\"{dest}\"");
        assert_eq!(
            sum(&m, "simgate_destination_pool_checkouts_total", &[&label]),
            n,
            "{dest}"
        );
        // Bytes: at least the bodies went up; the answers came back.
        let sent = value(
            &m,
            &format!("simgate_destination_bytes_total{{{label},direction=\"sent\"}}"),
        );
        let received = value(
            &m,
            &format!("simgate_destination_bytes_total{{{label},direction=\"received\"}}"),
        );
        assert!(sent > n * BODY.len() as u64, "{dest}: sent {sent}");
        assert!(received > 0, "{dest}");
    }
    // MQTT bytes are payloads: exactly those sent.
    assert_eq!(
        value(
            &m,
            "simgate_destination_bytes_total{destination=\"broker-session\",direction=\"sent\"}"
        ),
        session * "payload-7".len() as u64
    );
    assert_eq!(
        value(
            &m,
            "simgate_destination_bytes_total{destination=\"broker-agg\",direction=\"sent\"}"
        ),
        aggregate * "payload-7".len() as u64
    );
}

/// A response that breaks off after its head was relayed (`upstream_closed`, the device's
/// connection closed mid-body) is counted under its destination as well as in the global
/// family. The upstream is a real TLS server that answers `Content-Length: 100` with 10 bytes
/// and closes (tests/python/truncating_https_server.py).
#[test]
fn a_response_broken_off_mid_body_counts_under_its_destination() {
    use std::io::{BufRead, Read};
    use std::process::{Command, Stdio};

    let world = World::new();
    let cert = world
        .pki
        .server_cert("truncating", &["localhost", "127.0.0.1"])
        .expect("cert");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/truncating_https_server.py"
    );
    let mut server = Command::new("python3")
        .arg(script)
        .arg(&cert.cert)
        .arg(&cert.key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required for this test (scripts/test.sh installs it)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server announces its port");
    let _server = Kill(server);
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));

    let toml = world.config("", "").replace(
        &format!("endpoint = \"{}\"", world.sink.addr()),
        &format!("endpoint = \"127.0.0.1:{port}\""),
    );
    let gw = world.simgate(&toml);
    let mut device = Device::connect(gw.http);
    device.send(&post("/m", BODY, ""));
    let mut got = Vec::new();
    let _ = device.stream.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the head was relayed: {got}"
    );
    assert!(
        got.ends_with("0123456789"),
        "then the 10 bytes, then close: {got}"
    );

    let closed = "simgate_destination_errors_total{destination=\"sink\",protocol=\"http\",kind=\"upstream_closed\"}";
    let m = metrics_when(&gw, |m| m.get(closed) == Some(&1));
    assert_eq!(value(&m, closed), 1, "{}", gw.stderr());
    assert_eq!(
        value(&m, "simgate_http_errors_total{kind=\"upstream_closed\"}"),
        1
    );
}
