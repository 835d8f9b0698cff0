//! A real mosquitto broker for integration tests, started by the test itself: a TLS listener
//! (certificates minted at test time with rcgen through `TestPki`), optionally requiring client
//! certificates (like AWS IoT) or a password file (like Azure's username/password), plus a
//! plaintext listener for subscribers that check what arrived at the broker directly. Clients
//! are the real `mosquitto_pub` / `mosquitto_sub`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use simgate::testkit::TestPki;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn require(binary: &str) {
    let found = Path::new(binary).exists()
        || Command::new("which")
            .arg(binary)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    assert!(
        found,
        "{binary} is required for the MQTT tests: apt-get install mosquitto mosquitto-clients \
         (scripts/test.sh does it)"
    );
}

/// Broker options.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// TLS listener demands a client certificate signed by the test CA.
    pub require_certificate: bool,
    /// TLS listener demands this username/password.
    pub password: Option<(String, String)>,
    /// Keep sessions and queued messages on disk (for kill -9 tests). Saved after every change
    /// (`autosave_on_changes` with `autosave_interval 1`) rather than on mosquitto's default
    /// 30-minute timer. Even so, mosquitto writes its database at the end of an event-loop
    /// iteration, *after* it has sent the PUBACKs of that iteration: a SIGKILL between the two
    /// loses messages the broker already acknowledged (see docs/operations.md, "MQTT delivery
    /// guarantees and broker persistence"). The log (`log_type all`) shows where each save fell.
    pub persistence: bool,
    /// Extra global mosquitto.conf lines (e.g. `max_queued_messages 0`), written right after
    /// `per_listener_settings` and before the listeners.
    pub extra_conf: String,
}

/// A running mosquitto.
pub struct Broker {
    child: Option<Child>,
    /// Copies the running instance's stderr into `log`; joined when the instance is killed so
    /// the log is complete before a restarted instance appends to it.
    log_thread: Option<std::thread::JoinHandle<()>>,
    /// TLS listener port (what simgate connects to).
    pub tls_port: u16,
    /// Plaintext listener port (for direct test clients).
    pub plain_port: u16,
    conf: PathBuf,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Broker {
    /// Start a broker in `dir` with a server certificate from `pki`.
    pub fn start(dir: &Path, pki: &TestPki, opts: BrokerOptions) -> Broker {
        require(MOSQUITTO);
        let cert = pki
            .server_cert("broker", &["localhost", "127.0.0.1"])
            .expect("broker cert");
        // Ports are picked free and then bound by mosquitto: another test can take one in
        // between, so a broker that fails to start is retried on fresh ports.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let tls_port = free_port();
            let plain_port = free_port();
            let mut conf = format!(
                "per_listener_settings true\n{}\nuser root\nlog_dest stderr\nlog_type all\n\
             persistence {}\npersistence_location {}/\n\
             autosave_on_changes true\nautosave_interval 1\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate {}\n",
                opts.extra_conf,
                opts.persistence,
                dir.display(),
                pki.ca_pem.display(),
                cert.cert.display(),
                cert.key.display(),
                opts.require_certificate,
            );
            match &opts.password {
                Some((user, pass)) => {
                    let passwd = dir.join("broker.passwd");
                    let ok = Command::new("mosquitto_passwd")
                        .args(["-c", "-b"])
                        .arg(&passwd)
                        .args([user, pass])
                        .status()
                        .expect("mosquitto_passwd (apt-get install mosquitto)");
                    assert!(ok.success(), "mosquitto_passwd failed");
                    conf.push_str(&format!(
                        "allow_anonymous false\npassword_file {}\n",
                        passwd.display()
                    ));
                }
                None => conf.push_str("allow_anonymous true\n"),
            }
            conf.push_str(&format!(
                "listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
            ));
            let conf_path = dir.join(format!("mosquitto-{tls_port}.conf"));
            std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
            let mut broker = Broker {
                child: None,
                log_thread: None,
                tls_port,
                plain_port,
                conf: conf_path,
                log: dir.join(format!("mosquitto-{tls_port}.log")),
            };
            match broker.launch() {
                Ok(()) => return broker,
                Err(log) => last_log = log,
            }
        }
        panic!("mosquitto did not start after 5 attempts; last log:\n{last_log}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = channel::<String>();
        let log = self.log.clone();
        let log_thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        // mosquitto logs "... running" once both listeners are open.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(" running") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = log_thread.join();
                    return Err(std::fs::read_to_string(&self.log).unwrap_or_default());
                }
            }
        }
        self.child = Some(child);
        self.log_thread = Some(log_thread);
        Ok(())
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the broker log has a line containing `needle`; returns that line (fails with
    /// the whole log if none appears within `timeout`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_where(timeout, |l| l.contains(needle))
    }

    /// Wait until the broker log has a line for which `pred` holds; returns the first such line
    /// (fails with the whole log if none appears within `timeout`).
    pub fn wait_log_where(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log();
            if let Some(line) = text.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "broker log has no line as expected:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP the broker: it stops reading, answering and saving, with its sockets open (what
    /// clients write piles up unread in the kernel). `kill9` still works on it.
    pub fn freeze(&self) {
        super::signal(self.child.as_ref().expect("broker running").id(), "STOP");
    }

    /// SIGCONT a broker stopped with [`Broker::freeze`].
    pub fn thaw(&self) {
        super::signal(self.child.as_ref().expect("broker running").id(), "CONT");
    }

    /// Bytes clients wrote to the TLS listener's connections that the broker has not read yet
    /// (the receive queues of its established sockets on `tls_port`, from /proc/net/tcp).
    pub fn unread_tls_bytes(&self) -> u64 {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let port = format!(":{:04X}", self.tls_port);
        table
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // sl local rem st tx_queue:rx_queue ...; st 01 = ESTABLISHED
                (f.len() > 4 && f[1].ends_with(&port) && f[3] == "01")
                    .then(|| f[4].split_once(':'))
                    .flatten()
                    .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            })
            .sum()
    }

    /// SIGKILL the broker (no clean shutdown, no final persistence write). Returns once the
    /// process is gone and everything it logged is in [`Broker::log`].
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }

    /// Start the broker again with the same config and ports (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(log) = self.launch() {
            panic!("mosquitto did not restart on its ports; log:\n{log}");
        }
    }

    /// A whole gateway config: `shards` shards, an admin endpoint on a free loopback port, one
    /// MQTT listener "mqtt" on a free port routed to destination "broker" (this broker, with the
    /// `[destination.mqtt]` keys `mqtt_table`), and `pool` as the `[destination.pool]` keys.
    pub fn gateway_toml(&self, shards: usize, ca: &Path, mqtt_table: &str, pool: &str) -> String {
        let destination = self.destination_toml("broker", ca, mqtt_table);
        format!(
            r#"
[gateway]
shards = {shards}
admin = "127.0.0.1:0"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

{destination}
[destination.pool]
{pool}

[[group]]
name = "default"
routes = [ {{ listener = "mqtt", destination = "broker" }} ]
"#
        )
    }

    /// TOML for an `mqtts` destination pointing at this broker's TLS listener.
    pub fn destination_toml(&self, name: &str, ca: &Path, mqtt_table: &str) -> String {
        format!(
            "[[destination]]\nname = \"{name}\"\nadapter = \"mqtts\"\nendpoint = \"127.0.0.1:{}\"\n\
             server_name = \"localhost\"\nca = \"{}\"\n[destination.mqtt]\n{mqtt_table}\n",
            self.tls_port,
            ca.display()
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `mosquitto_sub -d -v`: waits for its SUBACK on start, then yields received
/// `topic payload` lines.
pub struct Sub {
    child: Child,
    lines: Receiver<String>,
}

impl Sub {
    /// Subscribe to `topic` on 127.0.0.1:`port` with extra mosquitto_sub `args` (e.g.
    /// `["-V", "mqttv5", "-q", "1"]`). Returns once the broker (or simgate) sent SUBACK.
    pub fn start(port: u16, topic: &str, args: &[&str]) -> Sub {
        require("mosquitto_sub");
        // stdbuf: mosquitto_sub block-buffers stdout into a pipe; we need each line as it comes.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-d",
                "-v",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("received SUBACK") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().ok();
                    panic!(
                        "mosquitto_sub on port {port} got no SUBACK; stderr: {}",
                        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                            .unwrap_or_default()
                    );
                }
            }
        }
        Sub { child, lines: rx }
    }

    /// The next received message as `topic payload`, skipping mosquitto_sub's debug lines.
    pub fn next_message(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("Client ") || l.starts_with("Subscribed (mid") => {}
                Ok(l) => return Some(l),
                Err(_) => return None,
            }
        }
    }

    /// Collect `n` messages (fails with what arrived if fewer come within `timeout`).
    pub fn messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left) {
                Some(m) => got.push(m),
                None => panic!("expected {n} messages, got {}: {got:?}", got.len()),
            }
        }
        got
    }

    /// Skip messages until one matches `pred` and return it (fails with the messages skipped if
    /// none matches within `timeout`).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left) {
                Some(m) if pred(&m) => return m,
                Some(m) => skipped.push(m),
                None => panic!("no expected message within {timeout:?}; got {skipped:?}"),
            }
        }
    }

    /// SIGKILL the client (an abnormal disconnect: no DISCONNECT packet).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub` one message to 127.0.0.1:`port`; returns (success, stderr).
pub fn publish(port: u16, topic: &str, message: &str, args: &[&str]) -> (bool, String) {
    let out = run_pub(port, topic, message, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`publish`], but returns stdout followed by stderr: with `-d`, mosquitto_pub's protocol
/// trace (`received CONNACK (5)`, `received PUBACK`, ...) is on stdout.
pub fn publish_output(port: u16, topic: &str, message: &str, args: &[&str]) -> (bool, String) {
    let out = run_pub(port, topic, message, args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn run_pub(port: u16, topic: &str, message: &str, args: &[&str]) -> std::process::Output {
    require("mosquitto_pub");
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-m",
            message,
        ])
        .args(args)
        .output()
        .expect("spawn mosquitto_pub")
}
