//! Real MQTT devices built on Eclipse Paho (paho-mqtt 2.x for Python): each [`Paho`] is one
//! `python3 tests/paho/device.py` process, connected to simgate (or straight to a broker) with
//! MQTT 3.1.1 or 5. It is driven with JSON-line commands on its stdin and reports every CONNACK,
//! SUBACK, publish acknowledgement, message and disconnect as a JSON line on its stdout, which is
//! what the tests wait on (each wait has a deadline and fails with what did arrive).
//!
//! A missing `python3` or paho-mqtt fails the test with the command that installs it; nothing is
//! skipped. This module does not speak MQTT itself: paho does.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single expected event may take.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);

/// The MQTT version a paho device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn arg(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }

    /// Short name for client ids and messages.
    pub fn tag(self) -> &'static str {
        match self {
            Version::V311 => "v3",
            Version::V5 => "v5",
        }
    }
}

/// Both versions, for tests that run each case under 3.1.1 and 5.
pub const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

/// How a paho device connects.
#[derive(Debug, Clone)]
pub struct PahoOptions {
    pub port: u16,
    pub client_id: String,
    pub version: Version,
    /// (topic, payload, qos).
    pub will: Option<(String, String, u8)>,
    /// Ask for a persistent session (3.1.1 Clean Session = 0, 5 Clean Start = 0). paho refuses
    /// it for 3.1.1 with an empty client id.
    pub persistent: bool,
}

impl PahoOptions {
    pub fn new(port: u16, client_id: &str, version: Version) -> PahoOptions {
        PahoOptions {
            port,
            client_id: client_id.to_string(),
            version,
            will: None,
            persistent: false,
        }
    }
}

/// A running paho device process.
pub struct Paho {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    /// Every event seen so far (for failure messages).
    seen: Vec<Value>,
    /// The CONNACK event.
    pub connack: Value,
    name: String,
}

fn script() -> String {
    format!("{}/tests/paho/device.py", env!("CARGO_MANIFEST_DIR"))
}

impl Paho {
    /// Start a device and wait for its CONNACK (accepted or refused: see [`Paho::connack_code`]).
    pub fn connect(opts: PahoOptions) -> Paho {
        let mut cmd = Command::new("python3");
        cmd.arg(script())
            .args(["--port", &opts.port.to_string()])
            .args(["--id", &opts.client_id])
            .args(["--version", opts.version.arg()]);
        if opts.persistent {
            cmd.arg("--persistent");
        }
        if let Some((topic, payload, qos)) = &opts.will {
            cmd.args(["--will-topic", topic, "--will-payload", payload])
                .args(["--will-qos", &qos.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "python3 is required for the paho tests ({e}): apt-get install python3 \
                     python3-pip && pip install paho-mqtt (scripts/test.sh does it)"
                )
            });
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, events) = channel();
        let name = format!("paho {} {:?}", opts.version.arg(), opts.client_id);
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "stdout", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        // Python tracebacks become events too, so a failure shows them.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx
                    .send(json!({"event": "stderr", "line": line}))
                    .is_err()
                {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut dev = Paho {
            child,
            stdin,
            events,
            seen: Vec::new(),
            connack: Value::Null,
            name,
        };
        dev.connack = dev.wait_event(|e| e["event"] == "connack");
        dev
    }

    /// The CONNACK reason code as paho reports it (a 3.1.1 return code is mapped by paho onto
    /// the v5 code of the same meaning: 0 accepted, 0x86 bad user name or password, ...).
    pub fn connack_code(&self) -> u64 {
        self.connack["reason_code"].as_u64().expect("reason_code")
    }

    fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("device stdin open");
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: command {cmd} not delivered: {e}", self.name));
    }

    /// The next event matching `pred`, skipping others (fails with everything seen).
    pub fn wait_event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if e["event"] == "error"
                        && e["error"]
                            .as_str()
                            .is_some_and(|s| s.contains("pip install"))
                    {
                        panic!(
                            "paho-mqtt 2.x is required for these tests: pip install paho-mqtt \
                             (scripts/test.sh does it). {}",
                            e["error"]
                        );
                    }
                    if pred(&e) {
                        return e;
                    }
                }
                Err(_) => panic!(
                    "{}: no expected event within {EVENT_WAIT:?}; events so far: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Subscribe; returns the SUBACK's reason codes (granted QoS, or >= 0x80 refused).
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u64> {
        self.send(json!({"op": "subscribe", "filter": filter, "qos": qos}));
        let ack = self.wait_event(|e| e["event"] == "suback");
        ack["reason_codes"]
            .as_array()
            .expect("reason_codes")
            .iter()
            .map(|c| c.as_u64().expect("code"))
            .collect()
    }

    /// Publish and wait until paho reports it complete (QoS 0: written; QoS 1: PUBACK; QoS 2:
    /// PUBCOMP). Returns the "published" event (its `reason_code` is the broker's, relayed).
    pub fn publish(&mut self, topic: &str, payload: &str, qos: u8, retain: bool) -> Value {
        self.publish_with(topic, payload, qos, retain, Value::Null)
    }

    /// [`Paho::publish`] with v5 properties (`{"user": [["k","v"]], "content_type": ...}`).
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: &str,
        qos: u8,
        retain: bool,
        props: Value,
    ) -> Value {
        let tag = format!("{topic}|{payload}");
        let mut cmd = json!({"op": "publish", "tag": tag, "topic": topic, "payload": payload,
                             "qos": qos, "retain": retain});
        if !props.is_null() {
            cmd["props"] = props;
        }
        self.send(cmd);
        self.wait_event(|e| e["event"] == "published" && e["tag"] == tag.as_str())
    }

    /// The next message whose topic is `topic` (others are skipped).
    pub fn message_on(&mut self, topic: &str) -> Value {
        self.wait_event(|e| e["event"] == "message" && e["topic"] == topic)
    }

    /// Every event so far (for assertions about what did not arrive).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// A clean DISCONNECT; waits for the process to exit.
    pub fn disconnect(mut self) {
        self.send(json!({"op": "disconnect"}));
        self.wait_event(|e| e["event"] == "disconnected");
        let _ = self.child.wait();
    }

    /// SIGKILL the device process: its socket is closed by the kernel with no DISCONNECT.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
