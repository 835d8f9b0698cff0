//! The sinks against mosquitto, a real MQTT implementation on both sides:
//! - mosquitto as the sink: devices publish QoS 1 to a real mosquitto, and simgate-load's
//!   subscriber (QoS 1 and QoS 2 subscriptions; mosquitto delivers at the publishers' QoS 1)
//!   does the accounting;
//! - mosquitto_pub as the client of the built-in MQTT sink: QoS 0/1/2 PUBLISH flows (QoS 2
//!   PUBREC/PUBREL/PUBCOMP) in MQTT 3.1.1 and 5.0, each message counted once.
//!
//! Needs the Debian package `mosquitto` (broker) and `mosquitto-clients` (mosquitto_pub); fails
//! with the install line when missing.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use simgate_load::fleet::{self, RunOptions};
use simgate_load::payload::{self, Stamp};
use simgate_load::scenario::Scenario;
use simgate_load::sink::{Sink, SinkKind, SinkOptions, Subscriber, SubscriberOptions};
use simgate_load::sut::{self, Child};

#[test]
fn a_subscriber_accounts_delivery_through_a_real_mosquitto() {
    let mosquitto = sut::find_binary("mosquitto", "mosquitto").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let port = sut::free_port().expect("port");
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("user root\nlog_dest stdout\nlistener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .expect("write config");
    let mut broker = Child::spawn(
        "mosquitto",
        &mosquitto,
        &["-c", &conf.display().to_string()],
        None,
        &dir.path().join("mosquitto.log"),
    )
    .expect("start mosquitto");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    sut::wait_for_port(&mut broker, addr, Duration::from_secs(10)).expect("mosquitto listens");

    for qos in [1u8, 2] {
        let subscriber = Subscriber::start(SubscriberOptions {
            broker: addr,
            tls: None,
            filter: "devices/#".into(),
            qos,
            client_id: format!("accounting-{qos}"),
            drop_every: None,
        })
        .expect("subscribed");
        let scenario = Scenario::parse(
            "name = \"via-mosquitto\"\n[fleet]\ndevices = 3\nprotocol = \"mqtt\"\n\
             [traffic]\nrate_per_s = 150\nbody_bytes = 100\n[mqtt]\nqos = 1\n",
        )
        .expect("scenario");
        let report = fleet::run(
            &scenario,
            &RunOptions {
                target: addr,
                duration: Duration::from_millis(1000),
                gateway_pid: Some(broker.pid()),
                threads: 2,
                progress: false,
                label: None,
                delivery: Some(Arc::clone(subscriber.tracker())),
                mark_after: None,
            },
            None,
        )
        .expect("run");
        let c = &report.counts;
        assert_eq!(c.error_total(), 0, "{:?}", c.errors);
        assert!(c.ok >= 100, "ok {}", c.ok);
        // mosquitto PUBACKs a message before routing it on, so acknowledged messages may still be
        // on their way to the subscriber when the run stops; every one of them must arrive.
        let d = subscriber
            .tracker()
            .wait_for(|d| d.unique >= c.ok, Duration::from_secs(30));
        assert!(
            (c.ok..=c.sent).contains(&d.unique),
            "qos {qos}: {d:?}, ok {}",
            c.ok
        );
        assert_eq!(
            (d.lost, d.duplicates, d.reordered, d.malformed),
            (0, 0, 0, 0)
        );
        assert_eq!(d.devices, 3);
    }
}

#[test]
fn mosquitto_pub_qos_0_1_2_into_the_mqtt_sink_counts_each_message_once() {
    let publisher =
        sut::find_binary("mosquitto_pub", "mosquitto-clients").unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(SinkOptions::new(SinkKind::Mqtt)).expect("sink");
    let mut seq = 0;
    for version in ["mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let mut message = payload::template(80);
            payload::stamp(
                &mut message,
                Stamp {
                    device: 9,
                    seq,
                    sent_unix_ns: payload::now_unix_ns(),
                },
            );
            seq += 1;
            let message = String::from_utf8(message).expect("ascii payload");
            let out = Command::new(&publisher)
                .args(["-h", "127.0.0.1", "-p", &sink.addr().port().to_string()])
                .args([
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    "devices/9/t",
                    "-m",
                    &message,
                ])
                .output()
                .expect("run mosquitto_pub");
            assert!(
                out.status.success(),
                "mosquitto_pub -V {version} -q {qos}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // QoS 1/2 are accounted before mosquitto_pub gets its PUBACK/PUBCOMP; a QoS 0 PUBLISH may
    // still be in the sink's socket when mosquitto_pub exits: wait for the arrivals.
    let d = sink
        .tracker()
        .wait_for(|d| d.received >= 6, Duration::from_secs(30));
    assert_eq!((d.unique, d.received), (6, 6), "{d:?}");
    assert_eq!((d.lost, d.duplicates, d.reordered), (0, 0, 0));
}
