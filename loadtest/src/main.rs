//! `simgate-load`: the load-test companion of simgate (command line only; the logic lives in
//! the `simgate_load` library).
//!
//! - `run`: the fleet simulator — a scenario file of HTTP or MQTT devices with per-device source
//!   addresses, open-loop schedules and coordinated-omission-corrected latency.
//! - `pki`, `sink`: certificates and the stand-in HTTPS cloud for peer comparisons.
//! - `connect-time`: MQTT TCP-connect-to-CONNACK time, one device at a time (through simgate,
//!   or directly to a broker over TLS).
//! - `idle`: a plain blocking idle fleet kept for `compare-http.sh` (the `idle-fleet` scenario
//!   does the same with source addresses and `/proc` sampling).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use simgate::testkit::{CertFiles, HttpsSink, SinkConfig, TestPki};
use simgate_load::connect_time::{self, ConnectTimeOptions, TlsTarget};
use simgate_load::fleet::{self, RunOptions};
use simgate_load::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "simgate-load",
    version,
    about = "Load-test companion of simgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file (see loadtest/scenarios/) and print its report.
    Run {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Gateway device listener (overrides the scenario's `target`).
        #[arg(long)]
        target: Option<SocketAddr>,
        /// Gateway process id: sample its CPU and RSS from /proc during the run.
        #[arg(long)]
        pid: Option<u32>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an HdrHistogram interval log (one histogram per second) to this file.
        #[arg(long)]
        hdr_log: Option<PathBuf>,
        /// Run length in seconds (overrides the scenario's `duration_s`).
        #[arg(long)]
        duration: Option<f64>,
        /// tokio worker threads of the simulator.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Do not print per-second progress lines (stderr).
        #[arg(long)]
        quiet: bool,
    },
    /// Mint a CA (DIR/ca.pem) and a server certificate for localhost/127.0.0.1
    /// (DIR/sink.pem, DIR/sink.key).
    Pki {
        /// Output directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the stand-in HTTPS cloud until killed. Prints `listening ADDR` when ready.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9443")]
        bind: SocketAddr,
        /// Directory written by `simgate-load pki`.
        #[arg(long)]
        pki_dir: PathBuf,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Open N plaintext connections to TARGET, send nothing, hold them, then report how many
    /// stayed open. Used to measure memory per idle device connection.
    Idle {
        /// Address of the gateway's device listener.
        #[arg(long)]
        target: SocketAddr,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to hold them after all are open.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Send one small keep-alive request per connection first (so each connection has
        /// served traffic and is idle between requests, as a real device's would be).
        #[arg(long)]
        warm_request: bool,
    },
    /// Time MQTT connects, one device at a time: TCP connect to CONNACK. Plaintext to a gateway
    /// listener, or `--tls-ca` for a device connecting to the broker directly over TLS.
    ConnectTime {
        /// MQTT listener to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Connect with TLS, verifying the server against this CA (PEM).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Server name for TLS (SNI and verification).
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Connections to time.
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Milliseconds between connections (0 = back to back).
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Client id prefix (the index is appended).
        #[arg(long, default_value = "connect-time-")]
        client_id_prefix: String,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run {
            scenario,
            target,
            pid,
            json,
            hdr_log,
            duration,
            threads,
            quiet,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("read {}", scenario.display()))?;
            let parsed = Scenario::parse(&text)
                .with_context(|| format!("scenario {}", scenario.display()))?;
            let Some(target) = target.or(parsed.target) else {
                bail!("no target: give --target or set `target` in the scenario");
            };
            let seconds = duration.unwrap_or(parsed.duration_s);
            if !(seconds.is_finite() && seconds > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
            let log: Option<Box<dyn Write + Send>> = match &hdr_log {
                Some(path) => Some(Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("create {}", path.display()))?,
                ))),
                None => None,
            };
            let options = RunOptions {
                target,
                duration: Duration::from_secs_f64(seconds),
                gateway_pid: pid,
                threads,
                progress: !quiet,
            };
            let report = fleet::run(&parsed, &options, log)?;
            print!("{report}");
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
        Command::Pki { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let pki = TestPki::new(&dir)?;
            let cert = pki.server_cert("sink", &["localhost", "127.0.0.1"])?;
            println!("ca {}", pki.ca_pem.display());
            println!("cert {}", cert.cert.display());
            println!("key {}", cert.key.display());
        }
        Command::Sink {
            bind,
            pki_dir,
            workers,
        } => {
            let cert = CertFiles {
                cert: pki_dir.join("sink.pem"),
                key: pki_dir.join("sink.key"),
            };
            let sink = HttpsSink::start(SinkConfig {
                bind,
                workers,
                record: false,
                ..SinkConfig::new(cert)
            })?;
            println!("listening {}", sink.addr());
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
        Command::Idle {
            target,
            connections,
            hold,
            warm_request,
        } => idle(target, connections, hold, warm_request)?,
        Command::ConnectTime {
            target,
            tls_ca,
            server_name,
            count,
            interval_ms,
            client_id_prefix,
            json,
        } => {
            let options = ConnectTimeOptions {
                target,
                tls: tls_ca.map(|ca| TlsTarget { ca, server_name }),
                count,
                interval: Duration::from_millis(interval_ms),
                client_id_prefix,
                timeout: Duration::from_secs(10),
            };
            let r = connect_time::run(&options)?;
            println!(
                "connect-time {target} ({}): {} connected, {} failed; mean {:.0} µs  p50 {} µs  p90 {} µs  p99 {} µs  max {} µs",
                if options.tls.is_some() { "TLS" } else { "plaintext" },
                r.connected, r.failed, r.mean_us, r.p50_us, r.p90_us, r.p99_us, r.max_us
            );
            if let Some(e) = &r.first_error {
                println!("first error: {e}");
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")
                    .with_context(|| format!("write {}", path.display()))?;
            }
            if r.connected == 0 {
                bail!("no connection reached CONNACK");
            }
        }
    }
    Ok(())
}

fn idle(target: SocketAddr, connections: usize, hold: u64, warm_request: bool) -> Result<()> {
    let mut streams = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut s = TcpStream::connect(target)
            .with_context(|| format!("connection {i} of {connections} to {target}"))?;
        if warm_request {
            s.write_all(b"GET /idle HTTP/1.1\r\nHost: idle\r\n\r\n")?;
            read_one_response(&mut s)?;
        }
        streams.push(s);
    }
    println!("open {connections}");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(hold));
    // Count connections the gateway has not closed.
    let mut alive = 0;
    for s in &streams {
        s.set_nonblocking(true)?;
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut &*s, &mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alive += 1,
            _ => {}
        }
    }
    println!("still-open {alive}");
    if alive < connections {
        bail!("{} connections were closed while idle", connections - alive);
    }
    Ok(())
}

fn read_one_response(s: &mut TcpStream) -> Result<()> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    bail!("closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(());
        }
    }
}
