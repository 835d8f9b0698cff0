//! 1,000 MQTT devices at once through a real `simgate run` (2 shards) to a real mosquitto over
//! TLS, in session mode (1,000 upstream TLS sessions) and in aggregate mode (multiplexed links):
//! each device connects from its own 127.x.y.z source address, all 1,000 sessions are open at
//! the same time (every device has its CONNACK and simgate's `simgate_mqtt_sessions_open` gauge
//! reads 1,000 before anyone publishes), then each publishes one QoS 1 message; every device must
//! get its PUBACK and a subscriber at the broker must see all 1,000 messages, topics rewritten.
//!
//! Devices are simgate's own sans-IO codec over blocking sockets, a few worker threads holding
//! many sockets each (a process per device would measure Python, not simgate). File descriptors:
//! the test raises its own RLIMIT_NOFILE soft limit (children inherit it) with `prlimit`, and
//! checks what the simgate process actually got in /proc/PID/limits.
//!
//! What this does not measure: latency or throughput (see simgate-load and docs/benchmarks.md).

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::num::NonZeroU16;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::mosquitto::{Broker, BrokerOptions, Sub};
use common::Simgate;
use simgate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Disconnect, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode,
};
use simgate::testkit::TestPki;
use socket2::{Domain, Socket, Type};

const DEVICES: usize = 1000;
const WORKERS: usize = 8;
/// Deadline for any one expected packet (not a performance threshold: a generous bound so a
/// lost packet fails the test instead of hanging it).
const WAIT: Duration = Duration::from_secs(60);

/// Soft and hard "Max open files" of process `pid` ("self" for this one).
fn nofile(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Make sure this process (and so every child it starts: simgate, mosquitto) may open `need`
/// files, raising the soft limit (and, as root, the hard one) with `prlimit` if needed.
fn ensure_nofile(need: u64) {
    let (soft, hard) = nofile("self");
    if soft >= need {
        return;
    }
    let new_hard = hard.max(need);
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={need}:{new_hard}"))
        .status();
    let (soft, _) = nofile("self");
    assert!(
        soft >= need,
        "this test needs {need} open files (1,000 device sockets here, 2,000 in simgate in \
         session mode); RLIMIT_NOFILE is {soft} and `prlimit` could not raise it ({status:?}): \
         run `ulimit -n {need}` first"
    );
}

/// Device `i`'s source address: 127.1.x.y, unique per device.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

struct Device {
    i: usize,
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Device {
    fn open(i: usize, to: SocketAddr) -> Result<Device, String> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(|e| format!("device {i}: socket: {e}"))?;
        let from = SocketAddr::V4(SocketAddrV4::new(source(i), 0));
        socket
            .bind(&from.into())
            .map_err(|e| format!("device {i}: bind {from}: {e}"))?;
        socket
            .connect(&to.into())
            .map_err(|e| format!("device {i}: connect {to} from {from}: {e}"))?;
        let stream: TcpStream = socket.into();
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| format!("device {i}: {e}"))?;
        let version = if i % 2 == 0 {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        };
        Ok(Device {
            i,
            stream,
            buf: BytesMut::new(),
            version,
        })
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.version, &mut out)
            .map_err(|e| format!("device {}: encode: {e:?}", self.i))?;
        self.stream
            .write_all(&out)
            .map_err(|e| format!("device {}: write: {e}", self.i))
    }

    fn next(&mut self) -> Result<Packet, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match mqtt::decode_packet(
                &mut self.buf,
                self.version,
                mqtt::Sender::Server,
                &DecodeLimits::default(),
            ) {
                Ok(Decoded::Complete(p)) => return Ok(p),
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(format!("device {}: decode: {e:?}", self.i)),
            }
            if Instant::now() >= deadline {
                return Err(format!("device {}: nothing within {WAIT:?}", self.i));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("device {}: closed by simgate", self.i)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("device {}: read: {e}", self.i)),
            }
        }
    }

    fn client_id(&self) -> String {
        format!("fleet-{}", self.i)
    }

    fn connect(&mut self) -> Result<(), String> {
        self.send(&Packet::Connect(Box::new(Connect {
            protocol_version: self.version,
            clean_start: true,
            keep_alive: 120,
            properties: Properties::default(),
            client_id: Bytes::from(self.client_id()),
            will: None,
            username: None,
            password: None,
        })))
    }

    fn expect_connack(&mut self) -> Result<(), String> {
        match self.next()? {
            Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS => Ok(()),
            other => Err(format!(
                "device {}: expected CONNACK 0, got {other:?}",
                self.i
            )),
        }
    }

    fn publish(&mut self) -> Result<(), String> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"up"),
            packet_id: NonZeroU16::new(7),
            properties: Properties::default(),
            payload: Bytes::from(self.i.to_string()),
        }))
    }

    fn expect_puback(&mut self) -> Result<(), String> {
        match self.next()? {
            Packet::PubAck(a) if a.packet_id.get() == 7 && a.reason_code.0 < 0x80 => Ok(()),
            other => Err(format!(
                "device {}: expected PUBACK 7, got {other:?}",
                self.i
            )),
        }
    }

    fn disconnect(&mut self) -> Result<(), String> {
        self.send(&Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
    }
}

/// The value of an unlabelled-or-labelled metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn thousand_devices(mode: &str) {
    // Here: 1,000 device sockets plus the harness's; simgate in session mode: 1,000 device and
    // 1,000 upstream sockets; mosquitto: 1,000 upstream sockets in session mode.
    ensure_nofile(4 * DEVICES as u64 + 256);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path()).expect("pki");
    // mosquitto 2.0 defaults, written out so the fleet's needs are visible: no connection
    // limit, and no cap on messages queued for the (QoS 1) checker while 1,000 arrive at once
    // (the default of 1,000 queued would drop some of them at the broker).
    let broker = Broker::start(
        dir.path(),
        &pki,
        BrokerOptions {
            extra_conf: "max_connections -1\nmax_queued_messages 0\n".into(),
            ..BrokerOptions::default()
        },
    );
    let checker = Sub::start(broker.plain_port, "devices/#", &["-q", "1"]);
    let mqtt = match mode {
        "session" => "mode = \"session\"\ntopic = \"devices/{client_id}/{topic}\"\n",
        _ => "mode = \"aggregate\"\nconnections_per_shard = 2\n",
    };
    let toml = broker.gateway_toml(2, &pki.ca_pem, mqtt, "connect_timeout = \"30s\"");
    let simgate = Simgate::start(dir.path(), &toml);
    let (gw_soft, _) = nofile(&simgate.pid().to_string());
    assert!(
        gw_soft >= 2 * DEVICES as u64 + 64,
        "simgate may open only {gw_soft} files; {mode} mode with {DEVICES} devices needs more"
    );
    let addr = simgate.listener("mqtt");

    // Every worker: open its sockets and send CONNECT on all, then collect the CONNACKs; wait
    // for every worker (all 1,000 sessions open), publish on all, collect PUBACKs, DISCONNECT.
    let all_open = Arc::new(Barrier::new(WORKERS + 1));
    let go = Arc::new(Barrier::new(WORKERS + 1));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (all_open, go) = (all_open.clone(), go.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mine: Vec<usize> = (0..DEVICES).filter(|i| i % WORKERS == w).collect();
                let opened: Result<Vec<Device>, String> = (|| {
                    let mut devs = Vec::with_capacity(mine.len());
                    for &i in &mine {
                        let mut d = Device::open(i, addr)?;
                        d.connect()?;
                        devs.push(d);
                    }
                    for d in &mut devs {
                        d.expect_connack()?;
                    }
                    Ok(devs)
                })();
                // Reach the barriers even on failure, so the test reports instead of hanging.
                all_open.wait();
                go.wait();
                let mut devs = opened?;
                for d in &mut devs {
                    d.publish()?;
                }
                for d in &mut devs {
                    d.expect_puback()?;
                }
                for d in &mut devs {
                    d.disconnect()?;
                }
                Ok(())
            })
        })
        .collect();
    all_open.wait();
    let (status, metrics) = simgate.admin_get("/metrics");
    assert_eq!(status, 200);
    let open = metric(
        &metrics,
        &format!("simgate_mqtt_sessions_open{{mode=\"{mode}\"}}"),
    );
    go.wait();
    let mut errors = Vec::new();
    for w in workers {
        if let Err(e) = w.join().expect("worker thread") {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{} worker(s) failed: {errors:#?}\nsimgate log (tail):\n{}",
        errors.len(),
        last_lines(&simgate.stderr(), 40)
    );
    // Only meaningful when every device had its CONNACK (checked above).
    assert_eq!(
        open,
        Some(DEVICES as u64),
        "simgate_mqtt_sessions_open while all devices were connected"
    );

    let got: HashSet<String> = checker.messages(DEVICES, WAIT).into_iter().collect();
    let expected: HashSet<String> = (0..DEVICES)
        .map(|i| format!("devices/fleet-{i}/up {i}"))
        .collect();
    assert_eq!(got.len(), DEVICES, "duplicates among the messages");
    assert_eq!(got, expected);
    if mode == "session" {
        // One upstream MQTT session per device, as the broker saw it.
        let log = broker.log();
        let upstream: HashSet<&str> = log
            .lines()
            .filter(|l| l.contains("New client connected"))
            .filter_map(|l| l.split(" as ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|id| id.starts_with("fleet-"))
            .collect();
        assert_eq!(upstream.len(), DEVICES, "distinct upstream sessions");
        let (_, metrics) = simgate.admin_get("/metrics");
        assert_eq!(
            metric(&metrics, "simgate_mqtt_sessions_started_total"),
            Some(DEVICES as u64)
        );
    }
}

#[test]
fn thousand_devices_at_once_session_mode() {
    thousand_devices("session");
}

#[test]
fn thousand_devices_at_once_aggregate_mode() {
    thousand_devices("aggregate");
}
