//! Integration: periodic re-resolution of a destination's endpoint name, end to end, without
//! real DNS.
//!
//! The endpoint `cloud.test:P` resolves through the test-only `SIMGATE_TEST_HOSTS_FILE`
//! override (the file is re-read on every lookup; `/etc/hosts` is not reliably writable in CI).
//! Two real HTTPS upstreams listen on the same port P, one on 127.0.0.1 only and one on
//! 127.0.0.2 only, both with a certificate for `cloud.test`. The test points the name at the
//! first, then rewrites the file to point it at the second, and waits — polling the
//! `simgate_upstream_dns_changes_total` counter on the admin endpoint, which counts a change
//! only once every shard has the new addresses, against a deadline — before asserting that new
//! requests arrive at the second upstream. It then removes the name from the file and checks
//! that the failure is counted and logged and traffic keeps flowing to the last good address.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use simgate::testkit::{HttpsSink, SinkConfig, TestPki};

/// Upper bound for the gateway to notice a hosts-file change (interval 1 s); a deadline for a
/// poll, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(30);

/// Two sinks on the same port: one on 127.0.0.1, one on 127.0.0.2.
fn two_sinks(pki: &TestPki) -> (HttpsSink, HttpsSink) {
    let cert = pki
        .server_cert("cloud", &["cloud.test"])
        .expect("server cert");
    let mut last_error = None;
    for _ in 0..20 {
        let first = HttpsSink::start(SinkConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..sink_config(cert.clone())
        })
        .expect("first sink");
        let port = first.addr().port();
        match HttpsSink::start(SinkConfig {
            bind: SocketAddr::from(([127, 0, 0, 2], port)),
            ..sink_config(cert.clone())
        }) {
            Ok(second) => return (first, second),
            // Port P is taken on 127.0.0.2 by something else: pick another P.
            Err(e) => last_error = Some(e),
        }
    }
    panic!("cannot bind a second sink on 127.0.0.2 at the first sink's port: {last_error:?}");
}

/// Replace the hosts file in one step (a lookup never sees a half-written file).
fn write_hosts(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write hosts");
    std::fs::rename(&tmp, path).expect("rename hosts");
}

/// Value of `name{destination="cloud"}` in the exposition text.
fn dns_counter(metrics: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}{{destination=\"cloud\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Poll `/metrics` until `name` for the destination reaches `at_least`, or fail at the deadline.
fn wait_for_counter(gw: &Simgate, name: &str, at_least: u64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, metrics) = gw.admin_get("/metrics");
        assert_eq!(status, 200);
        if dns_counter(&metrics, name).is_some_and(|v| v >= at_least) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {at_least} within {DEADLINE:?}; metrics:\n{metrics}\nstderr:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(gw: &Simgate, n: usize, tag: &str) {
    for i in 0..n {
        let resp = raw_exchange(gw.http, &post("/t", format!("{tag}-{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200, "{tag} {i}: {}", resp.body_text());
    }
}

#[test]
fn changed_dns_answer_moves_new_connections_and_a_failed_lookup_keeps_the_last_good_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    let (first, second) = two_sinks(&pki);
    let port = first.addr().port();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, "127.0.0.1 cloud.test\n");

    // No pooling (warm 0, max_idle 0): every request opens a new upstream connection, so where
    // it lands shows the addresses new connects use. Pooled connections to an old address are
    // allowed to keep serving, which would hide the switch.
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
name = "cloud"
adapter = "https"
endpoint = "cloud.test:{port}"
ca = "{ca}"
resolve_interval = "1s"
[destination.pool]
warm = 0
max_idle = 0

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "cloud" }} ]
"#,
        ca = pki.ca_pem.display()
    );
    let gw = Simgate::start_with_env(
        dir.path(),
        &toml,
        &[("SIMGATE_TEST_HOSTS_FILE", hosts.as_path())],
    );
    assert!(
        gw.stderr().contains("SIMGATE_TEST_HOSTS_FILE is set"),
        "the test-only override must be announced:\n{}",
        gw.stderr()
    );

    // Before: the name points at 127.0.0.1.
    send(&gw, 6, "before");
    assert_eq!(first.requests().len(), 6);
    assert_eq!(second.requests().len(), 0);
    let (_, metrics) = gw.admin_get("/metrics");
    assert_eq!(
        dns_counter(&metrics, "simgate_upstream_dns_changes_total"),
        Some(0),
        "the series exists at 0 from the start (lookups so far found the same address):\n{metrics}"
    );

    // The cloud moves: the name now points at 127.0.0.2.
    write_hosts(&hosts, "127.0.0.2 cloud.test\n");
    wait_for_counter(&gw, "simgate_upstream_dns_changes_total", 1);
    send(&gw, 6, "after");
    assert_eq!(
        first.requests().len(),
        6,
        "nothing more reaches the old address"
    );
    let moved: Vec<_> = second.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(moved.len(), 6, "new connections go to the new address");
    assert!(moved.iter().all(|b| b.starts_with(b"after-")));
    assert!(
        gw.stderr().contains("endpoint addresses changed"),
        "{}",
        gw.stderr()
    );

    // Resolution breaks: the last good address stays in use.
    write_hosts(&hosts, "127.0.0.9 elsewhere.test\n");
    let metrics = wait_for_counter(&gw, "simgate_upstream_dns_failures_total", 1);
    assert_eq!(
        dns_counter(&metrics, "simgate_upstream_dns_changes_total"),
        Some(1),
        "a failure is not a change"
    );
    send(&gw, 4, "broken-dns");
    assert_eq!(second.requests().len(), 10);
    assert_eq!(first.requests().len(), 6);
    let log = gw.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("keeping the last good addresses")
                && l.contains("cloud")
                && l.contains("cloud.test")),
        "the warning names the destination and the error:\n{log}"
    );
    promtool_check(&metrics);
}
