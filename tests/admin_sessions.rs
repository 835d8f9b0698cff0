//! `GET /admin/sessions` (issue #14): a real `simgate run` with two shards, an admin token, HTTP
//! keep-alive devices on distinct source addresses (127.0.0.x; one of them without a SIM entry)
//! to the built-in HTTPS sink, and MQTT devices in session and aggregate mode to a real
//! mosquitto over TLS. The endpoint lists each live connection with its shard, IMSI, group,
//! protocol, destination, device-side bytes and client id; paging (`offset`, `limit`, `total`)
//! and the filters work; a connection that sent nothing yet is listed unidentified; after the
//! devices disconnect (and after a malformed CONNECT is refused) the list empties. The endpoint is polled
//! until it shows what is expected (no sleeps, no timing thresholds).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::Client;
use common::*;
use serde_json::Value;
use simgate::proto::mqtt::ProtocolVersion;

const TOKEN: &str = "sessions-admin-token-0123456789";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn config(world: &World, broker: &Broker) -> String {
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
admin_token = {{ file = "admin.token" }}

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
group = "meters"

[[sim]]
imsi = "001010000000005"
ip = "127.0.0.5"
group = "meters"

[[sim]]
imsi = "001010000000006"
ip = "127.0.0.6"
group = "meters"
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display(),
    )
}

/// GET `path` on the admin endpoint with an optional bearer token: (status, body).
fn admin_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let resp = raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    (resp.status, resp.body_text())
}

fn sessions(addr: SocketAddr, query: &str) -> Value {
    let (status, body) = admin_get(addr, &format!("/admin/sessions{query}"), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Poll `/admin/sessions` until `done` holds for its answer (fails after a generous bound, which
/// only guards against a hang; the test does not depend on timing).
fn poll(addr: SocketAddr, query: &str, done: impl Fn(&Value) -> bool) -> Value {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let v = sessions(addr, query);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < give_up, "never got there: {v:#}");
    }
}

fn rows(v: &Value) -> &Vec<Value> {
    v["sessions"].as_array().expect("sessions array")
}

/// A keep-alive HTTP device from `from` that sent one POST and read its answer; returns the
/// stream (kept open) and the bytes it sent and received.
fn http_device(addr: SocketAddr, from: &str) -> (std::net::TcpStream, u64, u64) {
    let mut d = Device::connect_from(addr, ip(from));
    let req = post("/m", b"hello from a meter", "");
    d.stream.write_all(&req).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The sink answers "ok" with a Content-Length: read the head, then the body.
    loop {
        let n = d.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("length"))
                .expect("content-length");
            while buf.len() < pos + 4 + len {
                let n = d.stream.read(&mut chunk).expect("read body");
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            break;
        }
    }
    (d.stream, req.len() as u64, buf.len() as u64)
}

#[test]
fn admin_sessions_lists_live_device_connections_pages_them_and_empties_when_they_leave() {
    let world = World::new();
    std::fs::write(world.dir.path().join("admin.token"), format!("{TOKEN}\n")).expect("token");
    let broker = Broker::start(world.dir.path(), &world.pki, BrokerOptions::default());
    let gw = world.simgate(&config(&world, &broker));
    let admin = gw.admin.expect("admin address");
    let http = gw.listener("http");

    // The token is required.
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = admin_get(admin, "/admin/sessions", token);
        assert_eq!(status, 401, "{body}");
    }
    // Bad queries are refused with the reason.
    let (status, body) = admin_get(admin, "/admin/sessions?limit=1001", Some(TOKEN));
    assert_eq!(status, 400, "{body}");

    let mut held = Vec::new();
    let mut http_bytes = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"] {
        let (stream, sent, received) = http_device(http, from);
        held.push(stream);
        http_bytes.push((from, sent, received));
    }
    let session_client = Client::connect_from(
        gw.listener("mqtt"),
        ip("127.0.0.5"),
        "meter-5",
        ProtocolVersion::V5,
    )
    .expect("session CONNECT accepted");
    let aggregate_client = Client::connect_from(
        gw.listener("mqtt-agg"),
        ip("127.0.0.6"),
        "meter-6",
        ProtocolVersion::V5,
    )
    .expect("aggregate CONNECT accepted");

    // Every device is listed once its bytes are in (an HTTP connection hands its counts over
    // after each answer it sends).
    let all = poll(admin, "?limit=1000", |v| {
        v["total"] == 6
            && http_bytes.iter().all(|(from, sent, received)| {
                rows(v).iter().any(|r| {
                    r["peer"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(&format!("{from}:")))
                        && r["bytes_in"] == *sent
                        && r["bytes_out"] == *received
                })
            })
    });
    let by_ip = |from: &str| -> &Value {
        rows(&all)
            .iter()
            .find(|r| {
                r["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{from}:")))
            })
            .unwrap_or_else(|| panic!("{from} listed: {all:#}"))
    };
    for (from, imsi) in [
        ("127.0.0.2", "001010000000002"),
        ("127.0.0.3", "001010000000003"),
        ("127.0.0.4", "001010000000004"),
    ] {
        let r = by_ip(from);
        assert_eq!(r["imsi"], imsi, "{r}");
        assert_eq!(r["group"], "meters", "{r}");
        assert_eq!(r["protocol"], "http", "{r}");
        assert_eq!(r["destination"], "sink", "{r}");
        assert_eq!(r["client_id"], Value::Null, "{r}");
        assert!(r["age_seconds"].is_u64(), "{r}");
    }
    let unknown = by_ip("127.0.0.9");
    assert_eq!(unknown["imsi"], Value::Null, "{unknown}");
    assert_eq!(unknown["group"], "default", "{unknown}");
    assert_eq!(unknown["destination"], "sink", "{unknown}");
    let s = by_ip("127.0.0.5");
    assert_eq!(
        (
            &s["imsi"],
            &s["protocol"],
            &s["destination"],
            &s["client_id"]
        ),
        (
            &Value::from("001010000000005"),
            &Value::from("mqtt-session"),
            &Value::from("sess"),
            &Value::from("meter-5")
        ),
        "{s}"
    );
    assert!(
        s["bytes_in"].as_u64().unwrap_or(0) > 0,
        "CONNECT counted: {s}"
    );
    assert!(
        s["bytes_out"].as_u64().unwrap_or(0) > 0,
        "CONNACK counted: {s}"
    );
    let a = by_ip("127.0.0.6");
    assert_eq!(
        (
            &a["imsi"],
            &a["protocol"],
            &a["destination"],
            &a["client_id"]
        ),
        (
            &Value::from("001010000000006"),
            &Value::from("mqtt-aggregate"),
            &Value::from("agg"),
            &Value::from("meter-6")
        ),
        "{a}"
    );
    let shards: BTreeSet<u64> = rows(&all)
        .iter()
        .map(|r| r["shard"].as_u64().expect("shard"))
        .collect();
    assert!(shards.iter().all(|s| *s < 2), "{shards:?}");

    // Paging: three pages of two cover every session once, each with the total.
    let mut paged = BTreeSet::new();
    for offset in [0, 2, 4] {
        let v = sessions(admin, &format!("?offset={offset}&limit=2"));
        assert_eq!(
            (v["total"].as_u64(), v["offset"].as_u64()),
            (Some(6), Some(offset))
        );
        assert_eq!(rows(&v).len(), 2, "{v:#}");
        for r in rows(&v) {
            assert!(paged.insert(r["peer"].to_string()), "listed twice: {v:#}");
        }
    }
    assert_eq!(paged.len(), 6);
    let past = sessions(admin, "?offset=6&limit=2");
    assert_eq!((past["total"].as_u64(), rows(&past).len()), (Some(6), 0));
    // Per shard: the two shards' totals add up.
    let per_shard: u64 = (0..2)
        .map(|s| {
            sessions(admin, &format!("?shard={s}"))["total"]
                .as_u64()
                .expect("total")
        })
        .sum();
    assert_eq!(per_shard, 6);
    let (status, body) = admin_get(admin, "/admin/sessions?shard=2", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    // Filters.
    assert_eq!(sessions(admin, "?protocol=http")["total"], 4);
    assert_eq!(sessions(admin, "?protocol=mqtt-session")["total"], 1);
    assert_eq!(sessions(admin, "?destination=agg")["total"], 1);
    let one = sessions(admin, "?imsi=001010000000003");
    assert_eq!(one["total"], 1);
    assert_eq!(rows(&one)[0]["protocol"], "http");

    // A connection that has sent nothing yet is listed, not identified, with no destination;
    // an MQTT device without a client id shows the one simgate gave it.
    let bare = std::net::TcpStream::connect(http).expect("bare connection");
    let bare_peer = bare.local_addr().expect("local addr").to_string();
    let anonymous = Client::connect_from(
        gw.listener("mqtt-agg"),
        ip("127.0.0.7"),
        "",
        ProtocolVersion::V5,
    )
    .expect("CONNECT without a client id accepted");
    let more = poll(admin, "?limit=1000", |v| v["total"] == 8);
    let r = rows(&more)
        .iter()
        .find(|r| r["peer"] == bare_peer.as_str())
        .unwrap_or_else(|| panic!("{bare_peer} listed: {more:#}"));
    assert_eq!(
        (&r["protocol"], &r["imsi"], &r["group"], &r["destination"]),
        (
            &Value::from("http"),
            &Value::Null,
            &Value::Null,
            &Value::Null
        ),
        "{r}"
    );
    let r = rows(&more)
        .iter()
        .find(|r| {
            r["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.7:"))
        })
        .unwrap_or_else(|| panic!("127.0.0.7 listed: {more:#}"));
    assert_eq!(
        (&r["imsi"], &r["group"]),
        (&Value::Null, &Value::from("default")),
        "{r}"
    );
    assert!(
        r["client_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("simgate-")),
        "{r}"
    );
    // A connection refused at its CONNECT (a malformed one) leaves no entry behind: the final
    // empty list below includes it.
    let mut junk = std::net::TcpStream::connect(gw.listener("mqtt")).expect("junk connection");
    junk.write_all(b"\x10\xff\xff\xff\xff\x7f")
        .expect("send junk");
    let mut rest = Vec::new();
    let _ = junk.read_to_end(&mut rest);

    // Everyone leaves: the list empties.
    drop(bare);
    drop(anonymous);
    drop(held);
    drop(session_client);
    drop(aggregate_client);
    let empty = poll(admin, "", |v| v["total"] == 0);
    assert!(rows(&empty).is_empty(), "{empty:#}");
}
