//! `simgate-load`: the load-test companion of simgate.
//!
//! Today it provides the parts the peer comparison in `loadtest/compare-http.sh` needs: minting
//! certificates, a stand-in HTTPS cloud (the same sink `simgate demo` uses), and an idle fleet
//! that holds N device connections open to measure memory per connection. The fleet simulator
//! with open-loop schedules, MQTT devices and per-device source addresses is the load-tester
//! issue's work.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use simgate::testkit::{CertFiles, HttpsSink, SinkConfig, TestPki};

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
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
