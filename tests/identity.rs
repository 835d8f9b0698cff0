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

use common::*;

const KNOWN: &str = "127.0.0.2";
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
base_path = "/meters"

[[group]]
name = "default"
routes = [
  {{ listener = "strict", path = "/", destination = "sink" }},
  {{ listener = "open", path = "/", destination = "sink" }},
]

[[group]]
name = "meters"
attach = ["imsi", "name", "tags"]
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

fn header(r: &simgate::testkit::RecordedRequest, name: &str) -> Option<String> {
    r.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn sim_identity_routes_attaches_and_cannot_be_spoofed_and_unknown_sources_follow_the_listener() {
    let world = World::new();
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
    assert_eq!(last.path, "/meters/m");
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
