//! Integration: usage metering (issue #14). A real `simgate run` with two shards, SIMs on
//! distinct source addresses (127.0.0.x), HTTP devices to the built-in HTTPS sink and MQTT
//! devices (session and aggregate mode) to a real mosquitto over TLS, a reload in the middle (one SIM moves to
//! another group), then SIGTERM. The sum of the usage file's JSON lines (across rotated files)
//! and `GET /admin/usage` (JSON and CSV) both equal, exactly, the messages and bytes the
//! devices sent and received, per SIM and group.
//!
//! What is counted (docs/metrics.md): HTTP — one up message per request received, one down
//! message per answer, bytes are the device connection's wire bytes each way; MQTT — PUBLISH
//! packets each way and their payload bytes; errors — what `/metrics` counts as an error.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::Client;
use common::*;
use simgate::proto::mqtt::{Disconnect, Packet, Properties, ProtocolVersion, QoS, ReasonCode};

/// (imsi or "unknown", group) → [up_msgs, up_bytes, down_msgs, down_bytes, errors].
type Usage = BTreeMap<(String, String), [u64; 5]>;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn add(u: &mut Usage, imsi: &str, group: &str, c: [u64; 5]) {
    let e = u.entry((imsi.to_owned(), group.to_owned())).or_default();
    for (a, b) in e.iter_mut().zip(c) {
        *a += b;
    }
}

fn config(world: &World, broker: &Broker, moved_group: &str) -> String {
    let aggregate = broker.destination_toml(
        "agg",
        &world.pki.ca_pem,
        "mode = \"aggregate\"\nversion = \"5\"\ntopic = \"a/{client_id}/{topic}\"",
    );
    let session = broker.destination_toml(
        "sess",
        &world.pki.ca_pem,
        "mode = \"session\"\nversion = \"5\"\ntopic = \"u/{client_id}/{topic}\"",
    );
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[usage]
file = "usage.jsonl"
interval = "1s"
max_file_bytes = 4096

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtt-agg"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

{session}
{aggregate}

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }}, {{ listener = "mqtt", destination = "sess" }}, {{ listener = "mqtt-agg", destination = "agg" }} ]

[[group]]
name = "meters"
routes = [ {{ listener = "http", path = "/", destination = "sink" }}, {{ listener = "mqtt", destination = "sess" }}, {{ listener = "mqtt-agg", destination = "agg" }} ]

[[sim]]
imsi = "001010000000002"
ip = "127.0.0.2"
group = "meters"

[[sim]]
imsi = "001010000000003"
ip = "127.0.0.3"
group = "meters"

[[sim]]
imsi = "001010000000004"
ip = "127.0.0.4"
group = "{moved_group}"
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display(),
    )
}

/// A raw HTTP device that counts every byte it writes and reads.
struct HttpDevice {
    stream: TcpStream,
    sent: u64,
    received: u64,
}

impl HttpDevice {
    fn connect(addr: SocketAddr, from: &str) -> HttpDevice {
        let d = Device::connect_from(addr, ip(from));
        HttpDevice {
            stream: d.stream,
            sent: 0,
            received: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.sent += bytes.len() as u64;
    }

    /// Read one response with a Content-Length body (or up to the close); returns its status.
    fn read_response(&mut self) -> u16 {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, status, length) = loop {
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().expect("status");
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().expect("content-length"));
                break (pos + 4, status, length);
            }
        };
        match length {
            Some(len) => {
                while buf.len() < head_end + len {
                    let n = self.stream.read(&mut chunk).expect("read body");
                    assert!(n > 0, "closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                assert_eq!(buf.len(), head_end + len, "nothing beyond one response");
            }
            None => loop {
                let n = self.stream.read(&mut chunk).expect("read to close");
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
        self.received += buf.len() as u64;
        status
    }

    /// Read until the server closes (counting what arrives).
    fn read_to_close(&mut self) {
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).expect("read to close");
        self.received += rest.len() as u64;
    }
}

/// `n` POSTs of growing bodies on one keep-alive connection from `from`; returns
/// [up_msgs, up_bytes, down_msgs, down_bytes, errors] as the device saw them.
fn http_traffic(addr: SocketAddr, from: &str, n: usize, close_with_last: bool) -> [u64; 5] {
    let mut d = HttpDevice::connect(addr, from);
    for i in 0..n {
        let body = vec![b'x'; 10 + 37 * i];
        let conn = if close_with_last && i + 1 == n {
            "Connection: close\r\n"
        } else {
            ""
        };
        d.send(&post("/m", &body, conn));
        assert_eq!(d.read_response(), 200);
    }
    drop(d.stream);
    [n as u64, d.sent, n as u64, d.received, 0]
}

/// One MQTT session from `from`: subscribes to `echo` (mapped upstream by the destination's
/// topic template, like the PUBLISHes), sends `n` QoS 1 PUBLISHes to it and receives each back from the broker
/// (a downlink PUBLISH of the same payload), then disconnects.
fn mqtt_traffic(addr: SocketAddr, from: &str, client_id: &str, n: usize) -> [u64; 5] {
    let mut c = Client::connect_from(addr, ip(from), client_id, ProtocolVersion::V5)
        .expect("MQTT CONNECT accepted");
    c.subscribe("echo", QoS::AtMostOnce).expect("SUBSCRIBE");
    let mut bytes = 0;
    for i in 0..n {
        let payload = format!("reading-{from}-{}", "7".repeat(i * 13));
        bytes += payload.len() as u64;
        c.publish("echo", &payload, QoS::AtLeastOnce, (i + 1) as u16)
            .expect("PUBLISH");
        let (mut acked, mut echoed) = (false, false);
        while !(acked && echoed) {
            match c.next(Duration::from_secs(10)).expect("read") {
                Some(Packet::PubAck(a)) if usize::from(a.packet_id.get()) == i + 1 => acked = true,
                Some(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], payload.as_bytes(), "the echo");
                    echoed = true;
                }
                other => panic!("expected PUBACK or the echo, got {other:?}"),
            }
        }
    }
    c.send(&Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .expect("DISCONNECT");
    [n as u64, bytes, n as u64, bytes, 0]
}

fn parse_json_rows(body: &str, key: &str) -> Usage {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let mut u = Usage::new();
    let rows: Vec<serde_json::Value> = match key {
        "" => vec![v],
        k => v[k].as_array().expect("array").clone(),
    };
    for r in rows {
        let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f} in {r}"));
        add(
            &mut u,
            r["imsi"].as_str().expect("imsi"),
            r["group"].as_str().expect("group"),
            [
                n("up_msgs"),
                n("up_bytes"),
                n("down_msgs"),
                n("down_bytes"),
                n("errors"),
            ],
        );
    }
    u
}

fn parse_csv(body: &str) -> Usage {
    let mut lines = body.lines();
    assert_eq!(
        lines.next(),
        Some(
            "from,to,imsi,group,up_msgs,up_bytes,down_msgs,down_bytes,errors,first_seen,last_seen"
        )
    );
    let mut u = Usage::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let n = |i: usize| f[i].parse::<u64>().expect("number");
        add(&mut u, f[2], f[3], [n(4), n(5), n(6), n(7), n(8)]);
    }
    u
}

/// GET /admin/usage until it equals `want` (the shards count a message just after its last
/// byte is handed to the kernel, so the device can read it a moment earlier), then once more:
/// a repeated read must not count anything twice.
fn api_equals(gw: &Simgate, want: &Usage) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = gw.admin_get("/admin/usage");
        assert_eq!(status, 200, "{body}");
        let got = parse_json_rows(&body, "sims");
        if &got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/admin/usage never equalled the traffic sent:\n got {got:?}\nwant {want:?}"
        );
        std::thread::yield_now();
    }
    let (_, body) = gw.admin_get("/admin/usage");
    assert_eq!(&parse_json_rows(&body, "sims"), want, "a second read");
}

#[test]
fn usage_file_and_api_equal_the_traffic_across_two_shards_a_reload_and_sigterm() {
    let world = World::new();
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let gw = world.simgate(&config(&world, &broker, "default"));
    let http = gw.listener("http");
    let mqtt = gw.listener("mqtt");
    let agg = gw.listener("mqtt-agg");
    let mut want = Usage::new();

    // Before the reload: several connections per SIM, so both shards see traffic.
    for round in 0..4 {
        add(
            &mut want,
            "001010000000002",
            "meters",
            http_traffic(http, "127.0.0.2", 3, round % 2 == 0),
        );
        add(
            &mut want,
            "001010000000004",
            "default",
            http_traffic(http, "127.0.0.4", 2, false),
        );
        add(
            &mut want,
            "unknown",
            "default",
            http_traffic(http, "127.0.0.9", 1, false),
        );
    }
    for k in 0..3 {
        let id = format!("m3-{k}");
        add(
            &mut want,
            "001010000000003",
            "meters",
            mqtt_traffic(mqtt, "127.0.0.3", &id, 3),
        );
    }
    // A malformed request: no message up, simgate's 400 down, one error.
    let mut bad = HttpDevice::connect(http, "127.0.0.3");
    bad.send(b"BROKEN\r\n\r\n");
    assert_eq!(bad.read_response(), 400);
    bad.read_to_close();
    add(
        &mut want,
        "001010000000003",
        "meters",
        [0, bad.sent, 1, bad.received, 1],
    );

    // A keep-alive connection that lives across the reload.
    let mut across = HttpDevice::connect(http, "127.0.0.2");
    across.send(&post("/m", b"before", ""));
    assert_eq!(across.read_response(), 200);
    api_equals(&gw, &{
        let mut w = want.clone();
        add(
            &mut w,
            "001010000000002",
            "meters",
            [1, across.sent, 1, across.received, 0],
        );
        w
    });

    // Reload: SIM 4 moves from "default" to "meters"; usage before stays where it was.
    std::fs::write(&gw.config_path, config(&world, &broker, "meters")).expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");

    across.send(&post("/m", b"after the reload", ""));
    assert_eq!(across.read_response(), 200);
    drop(across.stream);
    add(
        &mut want,
        "001010000000002",
        "meters",
        [2, across.sent, 2, across.received, 0],
    );
    for round in 0..4 {
        add(
            &mut want,
            "001010000000004",
            "meters",
            http_traffic(http, "127.0.0.4", 2, round % 2 == 1),
        );
    }
    for k in 0..3 {
        let id = format!("m2-{k}");
        add(
            &mut want,
            "001010000000002",
            "meters",
            mqtt_traffic(mqtt, "127.0.0.2", &id, 2),
        );
    }
    // Aggregate mode (N:1 links): the same counting, per SIM.
    for k in 0..3 {
        let id = format!("a4-{k}");
        let sent = mqtt_traffic(agg, "127.0.0.4", &id, 2);
        add(&mut want, "001010000000004", "meters", sent);
        let id = format!("a9-{k}");
        add(
            &mut want,
            "unknown",
            "default",
            mqtt_traffic(agg, "127.0.0.9", &id, 1),
        );
    }
    api_equals(&gw, &want);

    // The filters and the CSV form agree with the JSON.
    let (status, csv) = gw.admin_get("/admin/usage?format=csv");
    assert_eq!(status, 200);
    assert_eq!(parse_csv(&csv), want, "CSV");
    let admin = gw.admin.expect("admin endpoint");
    let by_accept = raw_exchange(
        admin,
        b"GET /admin/usage HTTP/1.1\r\nHost: a\r\nAccept: text/csv\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        by_accept.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(parse_csv(&by_accept.body_text()), want, "CSV by Accept");
    // /metrics has the metering's own counters, without per-SIM labels.
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        metrics.contains(&format!("\nsimgate_usage_sims {}\n", want.len())),
        "{metrics}"
    );
    assert!(metrics.contains("\nsimgate_usage_intervals_total "));
    assert!(!metrics.contains("001010000000002"), "no IMSI in /metrics");
    let (_, meters) = gw.admin_get("/admin/usage?group=meters");
    let want_meters: Usage = want
        .iter()
        .filter(|((_, g), _)| g == "meters")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        parse_json_rows(&meters, "sims"),
        want_meters,
        "group=meters"
    );
    let (status, body) = gw.admin_get("/admin/usage?since=yesterday");
    assert_eq!(status, 400, "{body}");
    let (status, body) = gw.admin_get("/admin/usage?since=2000-01-01T00:00:00Z");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        parse_json_rows(&body, "sims"),
        want,
        "since before the start: everything"
    );

    // Traffic right before SIGTERM is flushed with the last, partial interval.
    add(
        &mut want,
        "001010000000003",
        "meters",
        http_traffic(http, "127.0.0.3", 2, false),
    );
    assert_eq!(gw.stop(), Some(0), "clean exit");

    // Every usage file (live and rotated): the sum of their lines equals the traffic, and the
    // intervals tile the run without overlap (each written once).
    let mut from_files = Usage::new();
    let mut intervals = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(world.dir.path()).expect("read dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !name.starts_with("usage.jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(world.dir.path().join(&name)).expect("read usage");
        for line in text.lines() {
            for (k, v) in parse_json_rows(line, "") {
                add(&mut from_files, &k.0, &k.1, v);
            }
            let r: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            intervals.push((
                r["from"].as_str().expect("from").to_owned(),
                r["to"].as_str().expect("to").to_owned(),
            ));
        }
    }
    assert_eq!(from_files, want, "the usage files sum to the traffic");
    // Rotation itself is unit-tested (control::usage_file); how many files this run wrote
    // depends on how many 1 s intervals it spanned.
    assert!(files >= 1, "a usage file was written");
    intervals.sort();
    intervals.dedup();
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "intervals overlap: {pair:?}");
    }
}
