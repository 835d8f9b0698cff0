//! Integration (issue #11 §2): live SIM bindings from RADIUS accounting, end to end. A real
//! `simgate run` with a RADIUS listener; FreeRADIUS's `radclient` (Debian freeradius-utils) plays
//! the packet core; an HTTP device from 127.0.0.5 — an address no `[[sim]]` entry names —
//! plays the SIM whose session the packet core reports.
//!
//! Checked as a carrier would: before the Start the device is an unknown source (403 on a
//! listener that refuses them); after it, its requests carry its SIM's identity; a request
//! signed with the wrong secret is not answered and changes nothing; the binding survives a
//! reload; an Accounting-On (the node restarted) ends it; after the Stop the device is unknown
//! again; `/metrics` counts it all.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const SECRET: &str = "radius-shared-secret-01";
const DEVICE: &str = "127.0.0.5";
const IMSI: &str = "001010000000005";

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Send one Accounting-Request with `attributes` (radclient syntax); true if it was answered
/// (radclient exits 0 only on a verified Accounting-Response).
fn radclient(server: std::net::SocketAddr, secret: &str, attributes: &str) -> bool {
    let mut child = Command::new("radclient")
        .args(["-x", "-t", "2", "-r", "1"])
        .arg(server.to_string())
        .args(["acct", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("radclient is required for this test: apt-get install freeradius-utils");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(attributes.as_bytes())
        .expect("write attributes");
    child.wait().expect("radclient").success()
}

fn config(world: &World, note: &str) -> String {
    format!(
        r#"
# {note}
[gateway]
shards = 2
admin = "127.0.0.1:0"

[radius]
bind = "127.0.0.1:0"
secret = {{ file = "radius.secret" }}

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
unknown = "reject"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

[[group]]
name = "default"

[[group]]
name = "meters"
attach = ["imsi", "name"]
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]

[[sim]]
imsi = "{IMSI}"
name = "roaming-meter"
group = "meters"
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display()
    )
}

#[test]
fn radius_accounting_binds_session_addresses_to_sims_live() {
    let world = World::new();
    std::fs::write(world.dir.path().join("radius.secret"), SECRET).expect("secret");
    let gw = world.simgate(&config(&world, "first"));
    let radius = gw.radius.expect("simgate printed its radius address");
    let device = DEVICE.parse().expect("ip");
    let send = || raw_exchange_from(gw.http, device, &post("/m", b"1", "Connection: close\r\n"));

    assert_eq!(send().status, 403, "no binding yet: an unknown source");

    let start = format!(
        "Acct-Status-Type = Start, Framed-IP-Address = {DEVICE}, 3GPP-IMSI = \"{IMSI}\", \
         Acct-Session-Id = \"s1\""
    );
    assert!(
        !radclient(radius, "wrong-secret-0000000", &start),
        "a request with a bad authenticator is never answered"
    );
    assert_eq!(send().status, 403, "and binds nothing");
    assert!(radclient(radius, SECRET, &start), "Start answered");
    let r = send();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let last = world.sink.requests().pop().expect("request");
    assert_eq!(last.header("x-simgate-imsi"), Some(IMSI.as_bytes()));
    assert_eq!(last.header("x-simgate-name"), Some(&b"roaming-meter"[..]));

    // Bindings outlive reloads.
    std::fs::write(&gw.config_path, config(&world, "second")).expect("rewrite");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(send().status, 200, "still bound after the reload");

    // The packet core's node restarts: Accounting-On ends every session it reported.
    assert!(
        radclient(radius, SECRET, "Acct-Status-Type = Accounting-On"),
        "Accounting-On answered"
    );
    assert_eq!(send().status, 403, "the node's sessions are gone");
    assert!(radclient(radius, SECRET, &start), "Start answered again");
    assert_eq!(send().status, 200);

    let stop = format!(
        "Acct-Status-Type = Stop, Framed-IP-Address = {DEVICE}, 3GPP-IMSI = \"{IMSI}\", \
         Acct-Session-Id = \"s1\""
    );
    assert!(radclient(radius, SECRET, &stop), "Stop answered");
    assert_eq!(send().status, 403, "the session ended: unknown again");

    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        sample(&text, "simgate_radius_requests_total{status=\"start\"}"),
        2,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "simgate_radius_requests_total{status=\"accounting_on\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(&text, "simgate_radius_requests_total{status=\"stop\"}"),
        1,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "simgate_radius_dropped_total{reason=\"bad_authenticator\"}"
        ) >= 1,
        "{text}"
    );
    assert_eq!(sample(&text, "simgate_radius_bindings"), 0, "{text}");
}
