//! `[destination.mqtt] max_publish_rate` (issue #13) against a real mosquitto over TLS: devices
//! (the small MQTT client of `common::mqtt_client`) burst QoS 1 PUBLISHes at simgate in
//! aggregate mode; a subscriber on the broker's plaintext listener timestamps every message, and
//! the broker's log says which upstream link (client id) carried it.
//!
//! Checked: every message a device saw acknowledged arrived, exactly once, and nothing else;
//! no upstream link exceeded the rate in any one-second window (a correctness bound simgate
//! enforces, asserted with a tolerance of a quarter of the rate for delivery jitter: messages
//! that simgate sent evenly spaced can arrive bunched after a stall of the broker or the
//! subscriber on a loaded machine; a limiter that does not work shows twice the rate or more), measured both at the subscriber (per link) and from the broker log's per-second
//! timestamps; refusals are seen by a 5.0 device as PUBACK 0x97 and counted in
//! `simgate_mqtt_publish_rate_limited_total`, and a 3.1.1 device is disconnected instead.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, BrokerOptions};
use common::mqtt_client::Client;
use common::Simgate;
use simgate::proto::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use simgate::testkit::TestPki;

fn world() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    (dir, pki)
}

fn start_gateway(dir: &Path, pki: &TestPki, broker: &Broker, mqtt_extra: &str) -> Simgate {
    let toml = broker.gateway_toml(
        1,
        &pki.ca_pem,
        &format!("mode = \"aggregate\"\nkeep_alive = \"10s\"\n{mqtt_extra}"),
        "warm = 0\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"",
    );
    Simgate::start(dir, &toml)
}

/// A plain MQTT subscriber on the broker, read on its own thread so that each message is
/// timestamped when it arrives: `(receive time, topic, payload)` on the channel. The thread ends
/// when the broker goes away.
fn subscriber(port: u16, filter: &str) -> mpsc::Receiver<(Instant, String, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = Client::connect(addr, "rate-checker", ProtocolVersion::V311, true)
        .expect("checker connects to the broker");
    c.subscribe(filter, QoS::AtMostOnce)
        .expect("checker subscribes");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        match c.next(Duration::from_secs(3600)) {
            Ok(Some(Packet::Publish(p))) => {
                let message = (
                    Instant::now(),
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                );
                if tx.send(message).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });
    rx
}

/// The first `n` messages from [`subscriber`] (fewer if none comes for `timeout`).
fn collect(
    rx: &mpsc::Receiver<(Instant, String, String)>,
    n: usize,
    timeout: Duration,
) -> Vec<(Instant, String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match rx.recv_timeout(timeout) {
            Ok(m) => got.push(m),
            Err(_) => break,
        }
    }
    got
}

/// Most of `times` in any closed window `[t, t + 1 s]`.
fn max_in_any_second(times: &[Instant]) -> usize {
    times
        .iter()
        .map(|&start| {
            times
                .iter()
                .filter(|&&t| t >= start && t <= start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// `simgate_mqtt_publish_rate_limited_total{destination="broker",outcome=...}`.
fn rate_limited(gw: &Simgate, outcome: &str) -> u64 {
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    let prefix = format!(
        "simgate_mqtt_publish_rate_limited_total{{destination=\"broker\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
}

/// Upstream client id and epoch second of every "Received PUBLISH" in the broker log, by
/// upstream topic.
fn broker_receipts(log: &str) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    for line in log.lines() {
        let Some((secs, rest)) = line.split_once(": Received PUBLISH from ") else {
            continue;
        };
        let Some((client, rest)) = rest.split_once(" (") else {
            continue;
        };
        let topic = rest.split('\'').nth(1).unwrap_or_default();
        if let Ok(secs) = secs.trim().parse::<u64>() {
            out.insert(topic.to_string(), (client.to_string(), secs));
        }
    }
    out
}

const RATE: usize = 20;
/// Messages more than `RATE` that one window may show at the receiving end (see the module doc).
const JITTER: usize = RATE / 4;

#[test]
fn a_burst_of_qos1_from_many_devices_never_exceeds_the_rate_on_any_link() {
    let (dir, pki) = world();
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let checker = subscriber(broker.plain_port, "devices/#");
    let gw = start_gateway(
        dir.path(),
        &pki,
        &broker,
        &format!("connections_per_shard = 2\nmax_publish_rate = {RATE}"),
    );
    let addr = gw.listener("mqtt");
    const DEVICES: usize = 8;
    const EACH: u16 = 12;
    // Every device connects first, then all burst at once.
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let threads: Vec<_> = (0..DEVICES)
        .map(|i| {
            let ready = ready_tx.clone();
            let go = go_rx.clone();
            std::thread::spawn(move || -> Result<(Vec<String>, Vec<String>), String> {
                let version = if i % 2 == 0 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                let id = format!("rate-{i}");
                let mut c = Client::connect(addr, &id, version, true)
                    .map_err(|e| format!("{id}: connect: {e:?}"))?;
                let _ = ready.send(());
                let _ = go.lock().map(|g| g.recv());
                for n in 1..=EACH {
                    c.publish(
                        &format!("up/{n}"),
                        &format!("{id}:{n}"),
                        QoS::AtLeastOnce,
                        n,
                    )
                    .map_err(|e| format!("{id}: publish {n}: {e:?}"))?;
                }
                let (mut acked, mut refused) = (Vec::new(), Vec::new());
                while acked.len() + refused.len() < usize::from(EACH) {
                    match c.next(Duration::from_secs(30)) {
                        Ok(Some(Packet::PubAck(ack))) => {
                            let topic = format!("devices/{id}/up/{}", ack.packet_id);
                            match ack.reason_code {
                                ReasonCode::SUCCESS => acked.push(topic),
                                ReasonCode::QUOTA_EXCEEDED => refused.push(topic),
                                other => return Err(format!("{id}: PUBACK {other}")),
                            }
                        }
                        Ok(Some(other)) => return Err(format!("{id}: unexpected {other:?}")),
                        Ok(None) => return Err(format!("{id}: no PUBACK within 30 s")),
                        Err(e) => return Err(format!("{id}: {e:?}")),
                    }
                }
                Ok((acked, refused))
            })
        })
        .collect();
    for _ in 0..DEVICES {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every device connected");
    }
    for _ in 0..DEVICES {
        let _ = go_tx.send(());
    }
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for t in threads {
        match t.join().expect("device thread") {
            Ok((a, r)) => {
                acked.extend(a);
                refused.extend(r);
            }
            Err(e) => panic!("{e}\n{}", gw.stderr()),
        }
    }

    // Exactly what was acknowledged arrived, once each.
    let got = collect(&checker, acked.len(), Duration::from_secs(30));
    let topics: Vec<&String> = got.iter().map(|(_, t, _)| t).collect();
    let distinct: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
    assert_eq!(distinct.len(), topics.len(), "a message arrived twice");
    assert_eq!(distinct, acked, "arrived != acknowledged");
    assert_eq!(
        rate_limited(&gw, "refused") as usize,
        refused.len(),
        "every refusal counted, and seen as 0x97"
    );
    assert!(
        rate_limited(&gw, "waited") + rate_limited(&gw, "spilled") > 0,
        "a burst of {} over two links of {RATE}/s had to wait or spill",
        DEVICES * usize::from(EACH)
    );

    // Which link carried each message: the broker log (mosquitto logs a PUBLISH on receipt,
    // before forwarding it; its log reaches the file through a pipe, so wait for the last).
    if let Some((_, last, _)) = got.last() {
        broker.wait_log(&format!("'{last}'"), Duration::from_secs(10));
    }
    let receipts = broker_receipts(&broker.log());
    let mut per_link: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    let mut per_second: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (at, topic, _) in &got {
        let Some((client, secs)) = receipts.get(topic) else {
            panic!("broker log has no PUBLISH for {topic}:\n{}", broker.log());
        };
        per_link.entry(client.clone()).or_default().push(*at);
        *per_second.entry((client.clone(), *secs)).or_default() += 1;
    }
    assert!(per_link.len() <= 2, "two links: {:?}", per_link.keys());
    for (link, times) in &per_link {
        let max = max_in_any_second(times);
        eprintln!(
            "link {link}: {} messages, at most {max} in any 1 s window at the subscriber",
            times.len()
        );
        assert!(
            max <= RATE + JITTER,
            "link {link} carried {max} messages within one second (max_publish_rate {RATE})"
        );
    }
    for ((link, secs), n) in &per_second {
        assert!(
            *n <= RATE + JITTER,
            "broker received {n} PUBLISHes from {link} in second {secs}"
        );
    }
    eprintln!(
        "acked {}, refused {}, waited {}, spilled {}",
        acked.len(),
        refused.len(),
        rate_limited(&gw, "waited"),
        rate_limited(&gw, "spilled")
    );
}

#[test]
fn a_wait_over_the_keep_alive_bound_is_refused_0x97_for_v5_and_a_disconnect_for_v311() {
    let (dir, pki) = world();
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    // One publish per second on one link; a device with keep-alive 1 s may wait 500 ms at most,
    // so a second message within the same second is always refused.
    let gw = start_gateway(dir.path(), &pki, &broker, "max_publish_rate = 1");
    let addr = gw.listener("mqtt");

    let mut v5 = Client::connect_keep_alive(addr, "quick-v5", ProtocolVersion::V5, true, 1)
        .expect("v5 device connects");
    v5.publish("up", "one", QoS::AtLeastOnce, 1)
        .expect("publish 1");
    v5.publish("up", "two", QoS::AtLeastOnce, 2)
        .expect("publish 2");
    let mut codes = BTreeMap::new();
    while codes.len() < 2 {
        match v5.next(Duration::from_secs(10)) {
            Ok(Some(Packet::PubAck(ack))) => {
                codes.insert(ack.packet_id.get(), ack.reason_code);
            }
            other => panic!("v5 device: {other:?} after {codes:?}\n{}", gw.stderr()),
        }
    }
    assert_eq!(codes[&1], ReasonCode::SUCCESS);
    assert_eq!(codes[&2], ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(rate_limited(&gw, "refused"), 1);

    // 3.1.1 has no "refused" PUBACK: the device is disconnected and resends after reconnecting.
    let mut v3 = Client::connect_keep_alive(addr, "quick-v3", ProtocolVersion::V311, true, 1)
        .expect("v3.1.1 device connects");
    v3.publish("up", "three", QoS::AtLeastOnce, 1)
        .expect("publish 1");
    v3.publish("up", "four", QoS::AtLeastOnce, 2)
        .expect("publish 2");
    let seen = v3.until_closed(Duration::from_secs(10));
    assert!(
        !seen
            .iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id.get() == 2)),
        "the refused message was acknowledged: {seen:?}"
    );
    assert_eq!(rate_limited(&gw, "refused"), 2);
}

#[test]
fn a_device_held_back_for_the_rate_is_not_timed_out_by_its_keep_alive() {
    let (dir, pki) = world();
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    // 2/s: eight messages sent at once leave over 3.5 s, longer than the 3 s (1.5 × 2 s) simgate
    // allows a silent device; each waits 500 ms at most, within its bound (half of 2 s).
    let gw = start_gateway(dir.path(), &pki, &broker, "max_publish_rate = 2");
    let addr = gw.listener("mqtt");
    let mut c = Client::connect_keep_alive(addr, "held", ProtocolVersion::V5, true, 2)
        .expect("device connects");
    for n in 1..=8 {
        c.publish("up", &n.to_string(), QoS::AtLeastOnce, n)
            .expect("publish");
    }
    // The device says nothing more: every byte it sent arrived at once, and what simgate has not
    // read yet is its own doing.
    let mut acked = BTreeSet::new();
    while acked.len() < 8 {
        match c.next(Duration::from_secs(10)) {
            Ok(Some(Packet::PubAck(ack))) if ack.reason_code == ReasonCode::SUCCESS => {
                acked.insert(ack.packet_id.get());
            }
            other => panic!("after {acked:?}: {other:?}\n{}", gw.stderr()),
        }
    }
    assert_eq!(rate_limited(&gw, "refused"), 0);
    assert_eq!(rate_limited(&gw, "waited"), 7);
}

#[test]
fn an_idle_device_spills_to_the_other_link_when_its_own_has_no_turn() {
    let (dir, pki) = world();
    let broker = Broker::start(dir.path(), &pki, BrokerOptions::default());
    let checker = subscriber(broker.plain_port, "devices/#");
    // 1/s per link: within a second of a device's message its link has no turn.
    let gw = start_gateway(
        dir.path(),
        &pki,
        &broker,
        "connections_per_shard = 2\nmax_publish_rate = 1",
    );
    let addr = gw.listener("mqtt");
    let mut c = Client::connect(addr, "spiller", ProtocolVersion::V5, true).expect("connects");
    // Both links up (created with the first device session).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = gw.admin_get("/metrics");
        if text.contains("simgate_mqtt_links{state=\"up\"} 2\n") {
            break;
        }
        assert!(Instant::now() < deadline, "links not up:\n{text}");
        std::thread::sleep(Duration::from_millis(20)); // polling the gateway's gauge
    }
    for n in 1..=2u16 {
        c.publish(&format!("up/{n}"), &format!("m{n}"), QoS::AtLeastOnce, n)
            .expect("publish");
        match c.next(Duration::from_secs(10)) {
            Ok(Some(Packet::PubAck(ack)))
                if ack.packet_id.get() == n && ack.reason_code == ReasonCode::SUCCESS => {}
            other => panic!("message {n}: {other:?}\n{}", gw.stderr()),
        }
    }
    // The second went at once on the other link: nothing was unacknowledged, so order holds.
    assert_eq!(rate_limited(&gw, "spilled"), 1);
    assert_eq!(rate_limited(&gw, "waited"), 0);
    let got = collect(&checker, 2, Duration::from_secs(10));
    let payloads: Vec<&str> = got.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(payloads, ["m1", "m2"]);
    // The broker logs through a pipe: wait for the second PUBLISH's line.
    broker.wait_log("'devices/spiller/up/2'", Duration::from_secs(10));
    let senders: BTreeSet<String> = broker
        .log()
        .lines()
        .filter(|l| l.contains("Received PUBLISH from") && l.contains("'devices/spiller/up/"))
        .filter_map(|l| {
            l.split_once("Received PUBLISH from ")
                .and_then(|(_, rest)| rest.split_once(" ("))
                .map(|(client, _)| client.to_string())
        })
        .collect();
    assert_eq!(senders.len(), 2, "one message per link: {senders:?}");
}
