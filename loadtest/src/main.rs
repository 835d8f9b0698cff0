//! `simgate-load`: the load-test companion of simgate (command line only; the logic lives in
//! the `simgate_load` library).
//!
//! - `run`: the fleet simulator — a scenario file of HTTP or MQTT devices with per-device source
//!   addresses, open-loop schedules and coordinated-omission-corrected latency.
//! - `pki`, `sink`: certificates and the stand-in HTTPS cloud (hyper, no accounting).
//! - `compare`: simgate against its peers (nginx, haproxy, mosquitto bridge, stunnel), a
//!   direct baseline and a floor (a peer answering the devices itself) on one scenario, printed
//!   as a markdown table (and optionally an SVG plot).
//! - `account`: an accounting sink (HTTP(S) or MQTT(S)) on its own; `run --sink` starts one in
//!   the same process and adds its loss/dup/reorder counts and end-to-end latency to the report,
//!   `run --subscribe` does the same behind a real broker.
//! - `connect-time`: MQTT TCP-connect-to-CONNACK time, one device at a time (through simgate,
//!   or directly to a broker over TLS).
//! - `radius`: RADIUS accounting Start/Stop at a paced rate against simgate's `[radius]`
//!   listener (a stand-in packet core), every answer verified; sent, answered, lost, latency.
//! - `idle`: a plain blocking idle fleet from 127.0.0.1 (the `idle-fleet` scenario
//!   does the same with source addresses and `/proc` sampling).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use simgate::testkit::{CertFiles, HttpsSink, SinkConfig, TestPki};
use simgate_load::compare::{self, CompareOptions};
use simgate_load::connect_time::{self, ConnectTimeOptions, TlsTarget};
use simgate_load::fleet::{self, RunOptions};
use simgate_load::mix::Mix;
use simgate_load::radius::{self, RadiusOptions};
use simgate_load::scenario::Scenario;
use simgate_load::sink::{Sink, SinkKind, SinkOptions, Subscriber, SubscriberOptions};

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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        #[command(flatten)]
        sink: SinkArgs,
        /// Account delivery behind a real broker: subscribe to `--subscribe-filter` on this
        /// MQTT broker (e.g. mosquitto standing in for the cloud) before the run.
        #[arg(long, conflicts_with = "sink")]
        subscribe: Option<SocketAddr>,
        /// Topic filter of `--subscribe`.
        #[arg(long, default_value = "#")]
        subscribe_filter: String,
        /// QoS of `--subscribe`.
        #[arg(long, default_value_t = 1)]
        subscribe_qos: u8,
        /// CA file: `--subscribe` over TLS (server name `localhost` unless `--subscribe-name`).
        #[arg(long)]
        subscribe_ca: Option<PathBuf>,
        /// Server name checked in the broker's certificate with `--subscribe-ca`.
        #[arg(long, default_value = "localhost")]
        subscribe_name: String,
    },
    /// Compare simgate with its peers on this scenario (see loadtest/README.md): each system
    /// in turn, same pinning, same load, one markdown table of ratios.
    Compare {
        /// Scenario TOML file (its protocol picks the systems; its `target` is ignored).
        scenario: PathBuf,
        /// Seconds per system (overrides the scenario's `duration_s`).
        #[arg(long)]
        duration: Option<f64>,
        /// CPUs of the system under test (taskset list).
        #[arg(long, default_value = "0")]
        proxy_cpus: String,
        /// CPU of this process (devices and sink); negative: do not pin.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        load_cpu: i64,
        /// The simgate binary (default: `simgate` next to this executable).
        #[arg(long)]
        simgate: Option<PathBuf>,
        /// Write an SVG percentile-spectrum chart of end-to-end latency, one line per system.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Keep configs, certificates and logs here (default: a temporary directory, removed).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Run only these systems (comma-separated, names as in the table, lower case, spaces as
        /// dashes: direct, floor, simgate, simgate-h2, simgate-event-hubs,
        /// simgate-event-hubs-batch, simgate-aggregate, simgate-aggregate-linger, simgate-session,
        /// nginx, haproxy, stunnel, mosquitto-bridge). Default: all of the
        /// scenario's protocol but the opt-in rows simgate-unmeasured,
        /// simgate-aggregate-unmeasured and simgate-session-unmeasured (simgate with
        /// `[metrics] histograms = false` and `[usage] enabled = false`), which run only when
        /// named here.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Run the whole comparison this many times in a row and end with the median proxy CPU
        /// per message, the median per-core ratio against the peer and the median multiple of
        /// the floor's CPU per message (each round's ratio is taken within that round): on a
        /// shared machine one round's absolute figures drift.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        rounds: u32,
        /// Seconds at the start of each run (device ramp, first upstream handshakes) left out of
        /// the e2e latency and CPU columns; the delivered and lost counts still cover the whole
        /// run. Must be shorter than the duration.
        #[arg(long, default_value_t = 0.0)]
        warmup: f64,
        /// A `[destination.pool]` setting for every simgate row, as a TOML line (repeatable),
        /// e.g. `--simgate-pool 'max_connecting = 8'`. simgate refuses unknown keys, and the row
        /// then shows its error.
        #[arg(long)]
        simgate_pool: Vec<String>,
        /// Append one CSV line per row and round to this file: `round,system,cpu_us_per_msg`
        /// (empty CPU for a row without a proxy or that failed); a header is written when the
        /// file is new. For scripts (loadtest/compare-measurement.sh).
        #[arg(long)]
        cpu_csv: Option<PathBuf>,
        /// tokio worker threads of the device simulator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print per-second progress lines of each run (stderr).
        #[arg(long)]
        progress: bool,
    },
    /// Mint a CA (DIR/ca.pem) and a server certificate for localhost/127.0.0.1
    /// (DIR/sink.pem, DIR/sink.key).
    Pki {
        /// Output directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run an accounting sink until killed: prints `listening ADDR`, then a `delivery` line
    /// (loss, dup, reorder, end-to-end latency) every second in which messages arrived.
    Account {
        #[command(flatten)]
        sink: SinkArgs,
    },
    /// Run the stand-in HTTPS cloud (hyper, no accounting) until killed. Prints
    /// `listening ADDR` when ready.
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
    /// Stand in for a packet core: send RADIUS Accounting-Requests (Start, then Stop, per
    /// session, over and over) at a paced rate to simgate's `[radius]` listener and verify every
    /// Accounting-Response. Prints sent, answered, lost and latency; never the secret.
    Radius {
        /// simgate's `[radius]` UDP address.
        #[arg(long)]
        target: SocketAddr,
        /// File holding the shared secret (one trailing newline ignored, as simgate does).
        #[arg(
            long,
            conflicts_with = "secret_env",
            required_unless_present = "secret_env"
        )]
        secret_file: Option<PathBuf>,
        /// Environment variable holding the shared secret.
        #[arg(long)]
        secret_env: Option<String>,
        /// Requests per second (paced, open loop).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Distinct sessions (IMSI 00101 + 10 digits, IP 10.0.0.0 + i + 1).
        #[arg(long, default_value_t = 10_000)]
        sessions: u32,
        /// UDP sockets (source ports), round robin: Identifiers are 8 bits per socket, so
        /// `rate × timeout / sockets` should stay well under 256.
        #[arg(long, default_value_t = 64)]
        sockets: usize,
        /// Milliseconds after which an unanswered request counts as lost.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
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

/// A built-in accounting sink (see `simgate_load::sink`).
#[derive(clap::Args)]
struct SinkArgs {
    /// Start a built-in sink standing in for the cloud: https or mqtts (TLS with the
    /// certificates of `--pki-dir`), or http / mqtt in plaintext (direct baselines).
    #[arg(long, value_parser = ["https", "mqtts", "http", "mqtt"])]
    sink: Option<String>,
    /// Address of the built-in sink (where the gateway under test forwards to).
    #[arg(long, default_value = "127.0.0.1:9443")]
    sink_bind: SocketAddr,
    /// Directory written by `simgate-load pki` (for https / mqtts).
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Loss injection: the sink acknowledges but discards every N-th message of each device.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Sink tokio worker threads.
    #[arg(long, default_value_t = 1)]
    sink_workers: usize,
}

impl SinkArgs {
    fn start(&self) -> Result<Option<Sink>> {
        let Some(kind) = self.sink.as_deref() else {
            return Ok(None);
        };
        let (kind, tls) = match kind {
            "https" => (SinkKind::Http, true),
            "mqtts" => (SinkKind::Mqtt, true),
            "http" => (SinkKind::Http, false),
            _ => (SinkKind::Mqtt, false),
        };
        let tls = if tls {
            let Some(dir) = &self.pki_dir else {
                bail!("--sink https/mqtts needs --pki-dir (make one with `simgate-load pki`)");
            };
            Some(CertFiles {
                cert: dir.join("sink.pem"),
                key: dir.join("sink.key"),
            })
        } else {
            None
        };
        let http2 = kind == SinkKind::Http && tls.is_some();
        let sink = Sink::start(SinkOptions {
            kind,
            bind: self.sink_bind,
            tls,
            drop_every: self.drop_every,
            workers: self.sink_workers,
            // Offered in ALPN; HTTP/1.1 clients are served as before.
            http2,
        })?;
        Ok(Some(sink))
    }
}

/// `run MIX.toml`: the parts side by side, one report each (see `simgate_load::mix`).
fn run_mix(
    path: &std::path::Path,
    text: &str,
    pid: Option<u32>,
    json: Option<PathBuf>,
    duration: Option<f64>,
    threads: usize,
    quiet: bool,
) -> Result<()> {
    let mix = Mix::parse(text).with_context(|| format!("mixed scenario {}", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let parts = mix
        .load_parts(base)
        .map_err(|e| anyhow::anyhow!("mixed scenario {}: {e}", path.display()))?;
    let seconds = duration.unwrap_or(mix.duration_s);
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let runs: Vec<(Scenario, RunOptions)> = parts
        .into_iter()
        .map(|(_, scenario)| {
            let options = RunOptions {
                // load_parts checked that every part has one.
                target: scenario.target.unwrap_or_else(|| unreachable!()),
                duration: Duration::from_secs_f64(seconds),
                gateway_pid: pid,
                threads,
                progress: !quiet,
                label: Some(scenario.name.clone()),
                delivery: None,
                mark_after: None,
            };
            (scenario, options)
        })
        .collect();
    eprintln!(
        "mix {}: {} parts side by side for {seconds} s",
        mix.name,
        runs.len()
    );
    let reports = simgate_load::mix::run(&runs)?;
    for (index, report) in reports.iter().enumerate() {
        println!(
            "## part {}/{}: {}",
            index + 1,
            reports.len(),
            report.scenario
        );
        print!("{report}");
    }
    if let Some(json_path) = json {
        let value = serde_json::json!({ "mix": mix.name, "parts": reports });
        std::fs::write(&json_path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("write {}", json_path.display()))?;
    }
    Ok(())
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
            sink,
            subscribe,
            subscribe_filter,
            subscribe_qos,
            subscribe_ca,
            subscribe_name,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("read {}", scenario.display()))?;
            if Mix::is_mix(&text) {
                if target.is_some()
                    || hdr_log.is_some()
                    || sink.sink.is_some()
                    || subscribe.is_some()
                {
                    bail!(
                        "{} is a mixed scenario: its parts name their own targets, and \
                         --target, --hdr-log, --sink and --subscribe apply to one scenario at a \
                         time (run the parts alone for those)",
                        scenario.display()
                    );
                }
                return run_mix(&scenario, &text, pid, json, duration, threads, quiet);
            }
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
            let sink = sink.start()?;
            if let Some(sink) = &sink {
                eprintln!("sink listening {}", sink.addr());
            }
            let subscriber = match subscribe {
                Some(broker) => Some(Subscriber::start(SubscriberOptions {
                    broker,
                    tls: subscribe_ca.map(|ca| (ca, subscribe_name)),
                    filter: subscribe_filter,
                    qos: subscribe_qos,
                    client_id: format!("simgate-load-sub-{}", std::process::id()),
                    drop_every: None,
                })?),
                None => None,
            };
            let delivery = sink
                .as_ref()
                .map(|s| Arc::clone(s.tracker()))
                .or_else(|| subscriber.as_ref().map(|s| Arc::clone(s.tracker())));
            let options = RunOptions {
                target,
                duration: Duration::from_secs_f64(seconds),
                gateway_pid: pid,
                threads,
                progress: !quiet,
                label: None,
                delivery,
                mark_after: None,
            };
            let report = fleet::run(&parsed, &options, log)?;
            print!("{report}");
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
        Command::Account { sink } => {
            let Some(sink) = sink.start()? else {
                bail!("give --sink https|mqtts|http|mqtt");
            };
            println!("listening {}", sink.addr());
            std::io::stdout().flush()?;
            let mut last = sink.tracker().summary();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let now = sink.tracker().summary();
                if now.received + now.malformed + now.dropped_by_sink
                    != last.received + last.malformed + last.dropped_by_sink
                {
                    print!("{now}");
                    std::io::stdout().flush()?;
                }
                last = now;
            }
        }
        Command::Compare {
            scenario,
            duration,
            proxy_cpus,
            load_cpu,
            simgate,
            plot,
            work_dir,
            only,
            rounds,
            warmup,
            simgate_pool,
            cpu_csv,
            threads,
            progress,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("read {}", scenario.display()))?;
            if Mix::is_mix(&text) {
                bail!(
                    "{} is a mixed scenario; compare runs one scenario at a time against \
                     gateways it configures itself (compare its parts one by one)",
                    scenario.display()
                );
            }
            let parsed = Scenario::parse(&text)
                .with_context(|| format!("scenario {}", scenario.display()))?;
            let seconds = duration.unwrap_or(parsed.duration_s);
            if !(seconds.is_finite() && seconds > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
            if !(warmup.is_finite() && warmup >= 0.0 && warmup < seconds) {
                bail!("--warmup must be at least 0 and shorter than the duration ({seconds} s)");
            }
            let simgate = match simgate {
                Some(path) => path,
                None => std::env::current_exe()?
                    .parent()
                    .map(|dir| dir.join("simgate"))
                    .context("no directory of the running executable")?,
            };
            let temp = tempfile::Builder::new()
                .prefix("simgate-compare-")
                .tempdir()?;
            let work_dir = match work_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    dir
                }
                None => temp.path().to_path_buf(),
            };
            let options = CompareOptions {
                duration: Duration::from_secs_f64(seconds),
                proxy_cpus,
                load_cpu: usize::try_from(load_cpu).ok(),
                simgate,
                work_dir,
                threads,
                progress,
                only,
                warmup: Duration::from_secs_f64(warmup),
                simgate_pool,
            };
            let mut all = Vec::new();
            for round in 1..=rounds {
                let comparison = compare::compare(&parsed, &options)?;
                let of = if rounds > 1 {
                    format!(", round {round} of {rounds}")
                } else {
                    String::new()
                };
                println!(
                    "scenario {} ({} devices, {:.0} msg/s offered, {seconds} s per system; proxy on CPU {}, load + sink on CPU {}{of})\n",
                    parsed.name,
                    parsed.fleet.devices,
                    parsed.traffic.rate_per_s,
                    options.proxy_cpus,
                    options
                        .load_cpu
                        .map_or_else(|| "any".to_string(), |c| c.to_string())
                );
                print!("{comparison}");
                std::io::stdout().flush()?;
                if let Some(path) = &cpu_csv {
                    append_cpu_csv(path, round, &comparison)?;
                }
                all.push(comparison);
            }
            if rounds > 1 {
                println!("\n{}", compare::rounds_summary(&all));
            }
            let comparison = all.pop().context("no round ran")?;
            if let Some(path) = plot {
                std::fs::write(&path, comparison.svg())
                    .with_context(|| format!("write {}", path.display()))?;
                println!("\nplot: {}", path.display());
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
        Command::Radius {
            target,
            secret_file,
            secret_env,
            rate,
            duration,
            sessions,
            sockets,
            timeout_ms,
            json,
        } => {
            let secret = match (secret_file, secret_env) {
                (Some(path), _) => radius::read_secret_file(&path)?,
                (None, Some(var)) => std::env::var(&var)
                    .with_context(|| format!("environment variable {var} (the secret)"))?
                    .into_bytes(),
                (None, None) => bail!("give --secret-file or --secret-env"),
            };
            if !(duration.is_finite() && duration > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
            let report = radius::run(&RadiusOptions {
                target,
                secret,
                rate,
                duration: Duration::from_secs_f64(duration),
                sessions,
                sockets,
                timeout: Duration::from_millis(timeout_ms),
            })?;
            print!("{report}");
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
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

/// Append `round`'s CPU µs/msg per row of `comparison` to the CSV at `path` (header first when
/// the file is new).
fn append_cpu_csv(
    path: &std::path::Path,
    round: u32,
    comparison: &compare::Comparison,
) -> Result<()> {
    let new = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut text = String::new();
    if new {
        text.push_str("round,system,cpu_us_per_msg\n");
    }
    for (system, cpu) in comparison.cpu_us_per_msg() {
        let cpu = cpu.map_or_else(String::new, |c| format!("{c:.3}"));
        text.push_str(&format!("{round},{system},{cpu}\n"));
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
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
