//! Shared harness for integration tests: mints certificates, starts the built-in HTTPS sink (a
//! real rustls + hyper server) and a real `simgate run` process with a generated config, and
//! offers raw-socket and curl devices.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use simgate::testkit::{CertFiles, HttpsSink, SinkConfig, TestPki};

/// A running `simgate run` process.
pub struct Simgate {
    child: Child,
    /// Address of the listener named `http` (or of the first listener if none has that name).
    pub http: SocketAddr,
    /// Every listener's bound address, by name, as printed on `listening NAME ADDR` lines.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Admin endpoint address.
    pub admin: Option<SocketAddr>,
    /// RADIUS accounting listener address (`radius ADDR` line), if configured.
    pub radius: Option<SocketAddr>,
    /// Config file it runs from.
    pub config_path: PathBuf,
    stderr_path: PathBuf,
}

impl Simgate {
    /// Start `simgate run --config <dir>/simgate.toml` with `toml`, and wait for its `ready` line.
    /// Logs at `simgate=debug` unless `SIMGATE_TEST_LOG` gives another filter (e.g.
    /// `simgate=debug,simgate::upstream::mqtt_link=trace` for the per-message MQTT trace).
    pub fn start(dir: &Path, toml: &str) -> Simgate {
        Simgate::start_with_env(dir, toml, &[])
    }

    /// [`Simgate::start`] with extra environment variables for the simgate process.
    pub fn start_with_env(dir: &Path, toml: &str, env: &[(&str, &Path)]) -> Simgate {
        Simgate::start_full(dir, toml, env, None, &[])
    }

    /// [`Simgate::start`] with extra global options before `run` (e.g. `--log-format json`).
    pub fn start_with_args(dir: &Path, toml: &str, args: &[&str]) -> Simgate {
        Simgate::start_full(dir, toml, &[], None, args)
    }

    /// [`Simgate::start`] under an open-file limit of `fd_limit` (soft and hard, as
    /// `ulimit -n` sets them), so that descriptor exhaustion is cheap to reach.
    pub fn start_with_fd_limit(dir: &Path, toml: &str, fd_limit: u64) -> Simgate {
        Simgate::start_full(dir, toml, &[], Some(fd_limit), &[])
    }

    fn start_full(
        dir: &Path,
        toml: &str,
        env: &[(&str, &Path)],
        fd_limit: Option<u64>,
        global_args: &[&str],
    ) -> Simgate {
        let config_path = dir.join("simgate.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let stderr_path = dir.join("simgate.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let binary = env!("CARGO_BIN_EXE_simgate");
        let mut command = match fd_limit {
            // The shell sets the limit and then becomes simgate (exec), so the child is simgate.
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args([
                "--log",
                &std::env::var("SIMGATE_TEST_LOG").unwrap_or_else(|_| "simgate=debug".into()),
            ])
            .args(global_args)
            .args(["run", "--config"])
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .spawn()
            .expect("spawn simgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
        let mut admin = None;
        let mut radius = None;
        loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let _ = child.wait();
                    panic!(
                        "simgate exited before `ready`; stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["listening", name, addr] => {
                    listeners.push((name.to_string(), addr.parse().expect("listener addr")))
                }
                ["admin", addr] => admin = Some(addr.parse().expect("admin addr")),
                ["radius", addr] => radius = Some(addr.parse().expect("radius addr")),
                ["ready"] => break,
                _ => {}
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let http = listeners
            .iter()
            .find(|(n, _)| n == "http")
            .or(listeners.first())
            .map(|(_, a)| *a)
            .expect("simgate printed no `listening` line");
        Simgate {
            child,
            http,
            listeners,
            admin,
            radius,
            config_path,
            stderr_path,
        }
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener named {name}: {:?}", self.listeners))
    }

    /// What simgate logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// GET an admin path; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self.admin.expect("admin endpoint enabled");
        let resp = raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    }

    /// POST /-/reload; returns (status, body).
    pub fn reload(&self) -> (u16, String) {
        let addr = self.admin.expect("admin endpoint enabled");
        let resp = raw_exchange(
            addr,
            b"POST /-/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    }

    /// Process id of the simgate process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to exit (after a signal sent elsewhere); returns its exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        self.child.wait().expect("wait simgate").code()
    }

    /// Send SIGTERM (start the drain) without waiting; panics if it cannot be sent.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM simgate failed");
    }

    /// Send SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate();
        let status = self.child.wait().expect("wait simgate");
        status.code()
    }
}

impl Drop for Simgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `SIG<name>` (e.g. `"STOP"`, `"CONT"`) to process `pid` with kill(1); panics if that
/// fails.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

/// A test world: temp dir, CA, an HTTPS sink, and helpers to write configs.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub sink: HttpsSink,
}

impl World {
    /// Sink with default settings (records requests).
    pub fn new() -> World {
        World::with_sink(|_| {})
    }

    /// Sink customised by `f`.
    pub fn with_sink(f: impl FnOnce(&mut SinkConfig)) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let cert = pki
            .server_cert("sink", &["localhost", "127.0.0.1"])
            .expect("server cert");
        let mut cfg = sink_config(cert);
        f(&mut cfg);
        let sink = HttpsSink::start(cfg).expect("start sink");
        World { dir, pki, sink }
    }

    /// A config with one http listener on an ephemeral port, admin on an ephemeral port, and one
    /// destination pointing at the sink. `listener_extra` and `destination_extra` are TOML lines
    /// appended to those tables.
    pub fn config(&self, listener_extra: &str, destination_extra: &str) -> String {
        format!(
            r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
{listener_extra}

[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
{destination_extra}

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
"#,
            sink = self.sink.addr(),
            ca = self.pki.ca_pem.display()
        )
    }

    /// Start simgate with `toml` in this world's directory.
    pub fn simgate(&self, toml: &str) -> Simgate {
        Simgate::start(self.dir.path(), toml)
    }
}

/// Default sink config for tests: records requests, answers 200 "ok".
pub fn sink_config(cert: CertFiles) -> SinkConfig {
    SinkConfig {
        record: true,
        ..SinkConfig::new(cert)
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A device on a raw TCP connection (keep-alive capable).
pub struct Device {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Device {
    pub fn connect(addr: SocketAddr) -> Device {
        let stream = TcpStream::connect(addr).expect("connect to simgate");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Device {
            stream,
            buf: Vec::new(),
        }
    }

    /// A device whose connection comes from source address `from` (any 127.0.0.0/8 address
    /// works on loopback), as a SIM's bound IP would.
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Device {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .expect("bind the device's source address");
        socket.connect(&addr.into()).expect("connect to simgate");
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Device {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Read one response (Content-Length or chunked body, or until close).
    pub fn read_response(&mut self) -> Response {
        read_response(&mut self.stream, &mut self.buf)
    }

    /// True if the peer has closed the connection (read returns 0).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }

    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response()
    }
}

/// One request on a fresh connection from source address `from`.
pub fn raw_exchange_from(addr: SocketAddr, from: std::net::IpAddr, bytes: &[u8]) -> Response {
    Device::connect_from(addr, from).request(bytes)
}

/// One request on a fresh connection.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Response {
    Device::connect(addr).request(bytes)
}

/// A POST with a Content-Length body.
pub fn post(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: device\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16384];
    let n = stream.read(&mut chunk).unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if read_more(stream, buf) == 0 {
            panic!(
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    buf.drain(..head_end);
    if status == 100 {
        return read_response(stream, buf);
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        while buf.len() < len {
            if read_more(stream, buf) == 0 {
                panic!("closed mid-body");
            }
        }
        buf.drain(..len).collect()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(read_more(stream, buf) > 0, "closed mid-chunk");
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            break;
                        }
                    } else {
                        assert!(read_more(stream, buf) > 0, "closed in trailers");
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                assert!(read_more(stream, buf) > 0, "closed mid-chunk");
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
        body
    } else {
        while read_more(stream, buf) > 0 {}
        std::mem::take(buf)
    };
    Response {
        status,
        headers,
        body,
    }
}

/// Run curl with `args`; returns (exit ok, stdout). Fails with a message if curl is missing.
pub fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl is required for these tests: apt-get install curl (scripts/test.sh does it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub mod cloud_front;
pub mod cloud_sink;
pub mod mosquitto;
pub mod mqtt_client;
pub mod paho;

/// Check a `/metrics` text with `promtool check metrics` (Prometheus's own linter); panics with
/// promtool's complaint and the text. Fails, never skips, when promtool is missing.
pub fn promtool_check(text: &str) {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("promtool is required: apt-get install prometheus (scripts/test.sh does it)")
        });
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
