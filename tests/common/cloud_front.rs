//! The MQTT cloud contract front (tests/python/mqtt_cloud_front.py) as a child process: a TLS
//! MQTT server that checks each connection as AWS IoT Core or Azure IoT Hub would (client
//! certificate and ALPN, client id, the SAS password recomputed with `azure-iot-device`, topic,
//! QoS, payload and rate rules) and relays what it accepts to a real mosquitto's plaintext
//! listener. Its control port answers `/stats`, `/events` and `/reset`. Killed on drop. A
//! missing Python module fails the test with the pip line that installs it.
//!
//! What this does not do: start the mosquitto behind it (see [`super::mosquitto::Broker`]) or
//! judge what the front recorded (the tests do).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use simgate::testkit::TestPki;

use super::cloud_sink::explain_python_failure;
use super::mosquitto::Broker;

const FRONT_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/mqtt_cloud_front.py"
);

/// Which cloud the front plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontCloud {
    /// AWS IoT Core: mutual TLS with a certificate of the test CA, optional ALPN, AWS's limits.
    Aws,
    /// Azure IoT Hub: the SAS token in the password checked for the hub and key given.
    Azure,
}

/// A running contract front.
pub struct CloudFront {
    child: Child,
    /// Its device-facing TLS port on 127.0.0.1 (simgate's destination endpoint).
    pub port: u16,
    /// Its plain-HTTP control port on 127.0.0.1.
    pub control_port: u16,
    /// The CA that signed its certificate (the destination's `ca`).
    pub ca: PathBuf,
    stderr_path: PathBuf,
}

impl Drop for CloudFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CloudFront {
    /// Start the front in `dir` in front of `broker`'s plaintext listener, with a server
    /// certificate from `pki` and the cloud's `section` (the `"aws"` or `"azure"` object of
    /// tests/python/mqtt_cloud_front.py's config; absent keys take the front's defaults). For
    /// AWS, `client_ca` defaults to `pki`'s CA.
    pub fn start(
        dir: &Path,
        pki: &TestPki,
        broker: &Broker,
        cloud: FrontCloud,
        section: Value,
    ) -> CloudFront {
        let cert = pki
            .server_cert("cloud-front", &["localhost", "127.0.0.1"])
            .expect("front certificate");
        let mut section = section;
        let name = match cloud {
            FrontCloud::Aws => {
                if section.get("client_ca").is_none() {
                    section["client_ca"] = json!(pki.ca_pem);
                }
                "aws"
            }
            FrontCloud::Azure => "azure",
        };
        let mut config = json!({
            "cert": cert.cert,
            "key": cert.key,
            "port": 0,
            "upstream": format!("127.0.0.1:{}", broker.plain_port),
            "cloud": name,
        });
        config[name] = section;
        let config_path = dir.join(format!("front-{name}.json"));
        std::fs::write(&config_path, config.to_string()).expect("write front.json");
        let stderr_path = dir.join(format!("cloud_front-{name}.stderr"));
        let mut child = Command::new("python3")
            .arg(FRONT_SCRIPT)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("front stderr file"))
            .spawn()
            .expect("python3 is required for these tests: apt-get install python3");
        let stdout = child.stdout.take().expect("front stdout");
        let mut lines = BufReader::new(stdout);
        let mut port_of = |prefix: &str| -> Option<u16> {
            let mut line = String::new();
            let _ = lines.read_line(&mut line);
            line.strip_prefix(prefix)
                .and_then(|p| p.trim().parse::<u16>().ok())
        };
        let (Some(port), Some(control_port)) = (port_of("LISTENING "), port_of("CONTROL ")) else {
            let _ = child.kill();
            let _ = child.wait();
            explain_python_failure(
                "the MQTT cloud front did not start",
                &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            );
        };
        CloudFront {
            child,
            port,
            control_port,
            ca: pki.ca_pem.clone(),
            stderr_path,
        }
    }

    /// `127.0.0.1:PORT` (the device-facing TLS port).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn control(&self, method: &str, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.control_port);
        let (ok, out) = super::curl(&["-sS", "-X", method, &url]);
        assert!(ok, "curl to the front's {path} failed: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("front {path}: {e}: {out}"))
    }

    /// `/stats`: `connections_accepted`, `connections_refused{reason}`, `publishes_relayed`,
    /// `publishes_throttled`, `retain_ignored`, `disconnects{rule}`, `active_connections`.
    pub fn stats(&self) -> Value {
        self.control("GET", "/stats")
    }

    /// `/events`: what the front decided, newest last (no secrets in them).
    pub fn events(&self) -> Vec<Value> {
        match self.control("GET", "/events") {
            Value::Array(items) => items,
            other => panic!("front /events is not a list: {other}"),
        }
    }

    /// Forget what was recorded.
    pub fn reset(&self) {
        self.control("POST", "/reset");
    }

    /// Poll `/stats` until `pred` holds on it (the front has no push channel), or panic after
    /// `timeout` with the last stats and the front's log.
    pub fn wait_stats(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the front's stats never met the condition: {stats}\nits log:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter of `/stats` (`"publishes_relayed"`) or of one of its maps
    /// (`"disconnects.qos2"`, `"connections_refused.sas_expired"`); 0 when absent.
    pub fn stat(&self, path: &str) -> u64 {
        let stats = self.stats();
        let v = match path.split_once('.') {
            Some((map, key)) => &stats[map][key],
            None => &stats[path],
        };
        v.as_u64().unwrap_or(0)
    }

    /// What it wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}
