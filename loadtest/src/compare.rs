//! `simgate-load compare SCENARIO`: the peer comparison in one command. On loopback, with
//! generated certificates and configs, it starts each system under test in turn, pinned the same
//! way (proxy on `proxy_cpus`, this process — devices and sink — on `load_cpu`), runs the same
//! scenario through it to a fresh built-in sink, and prints a markdown table of ratios against a
//! direct-to-sink baseline and against the named peer.
//!
//! Systems by scenario protocol (peers are Debian packages; a missing one is reported with the
//! exact `apt-get install` line and its row is marked, never silently left out):
//!
//! | protocol | rows |
//! |---|---|
//! | HTTP → HTTPS | direct (devices → plaintext HTTP sink), simgate, nginx (peer: `proxy_pass https://` with upstream keepalive, `proxy_ssl_verify on`), haproxy (`server ... ssl verify required ca-file`, `http-reuse always`) |
//! | MQTT → MQTTS | direct (devices → plaintext MQTT sink), simgate aggregate, simgate aggregate linger (`linger = "1ms"`), simgate session, mosquitto bridge (peer: a local mosquitto bridging `#` out to the MQTTS sink) |
//! | TCP → TLS (same scenario, carried as bytes) | stunnel (client mode, verifying the sink), simgate: "n/a — simgate TCP flow not built yet" |
//!
//! Columns: messages delivered to the sink per second; that rate over direct's and over the
//! peer's; end-to-end p50/p99/p99.9 at the sink (receive − intended send time); CPU µs per
//! delivered message of the proxy process (user + system from `/proc/PID/stat` over the run);
//! its peak RSS; lost/dup/reordered; device-side errors.
//!
//! What it does NOT do: warm-up exclusion (the ramp and first handshakes are in the run), run
//! systems in parallel, install packages itself, or retry a port another process grabbed
//! between [`crate::sut::free_port`] and the proxy's bind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use simgate::testkit::{CertFiles, TestPki};

use crate::fleet::{self, RunOptions};
use crate::scenario::{Protocol, Scenario};
use crate::sink::{Sink, SinkKind, SinkOptions};
use crate::stats::{LatencySummary, Report};
use crate::sut::{self, Child};

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Run length per system.
    pub duration: Duration,
    /// CPU list (taskset syntax) for the system under test.
    pub proxy_cpus: String,
    /// CPU for this process (devices and sink); `None`: leave unpinned.
    pub load_cpu: Option<usize>,
    /// The simgate binary.
    pub simgate: PathBuf,
    /// Directory for certificates, configs and logs (must exist).
    pub work_dir: PathBuf,
    /// tokio threads of the device simulator.
    pub threads: usize,
    /// Print per-run progress lines.
    pub progress: bool,
    /// Systems to run (table names, lower case, spaces as dashes); empty: all.
    pub only: Vec<String>,
    /// Extra `[destination.pool]` settings of every simgate row (TOML lines such as
    /// `max_connecting = 8`).
    pub simgate_pool: Vec<String>,
    /// Leave the first part of each run (connection ramp, first handshakes) out of the latency
    /// and CPU columns; zero: measure the whole run.
    pub warmup: Duration,
}

/// `destination.mqtt.linger` of the "simgate aggregate linger" row.
const AGGREGATE_LINGER: &str = "1ms";

/// The `--only` spelling of a table's system name: "simgate aggregate" → "simgate-aggregate".
fn system_slug(system: &str) -> String {
    system.to_lowercase().replace(' ', "-")
}

/// One row of the comparison.
#[derive(Debug)]
pub struct Row {
    /// System name.
    pub system: String,
    /// What the row compares (`HTTP→HTTPS`, `MQTT→MQTTS`, `TCP→TLS`).
    pub path: &'static str,
    /// The run, or why there is none.
    pub outcome: Result<Measured, String>,
}

/// A measured row.
#[derive(Debug)]
pub struct Measured {
    /// The run's report (delivery always set).
    pub report: Report,
    /// End-to-end latency at the sink (µs), of the messages that arrived after the warm-up.
    pub e2e: Histogram<u64>,
    /// Whether the CPU/RSS columns are the proxy's (false for direct).
    pub proxy: bool,
    /// The proxy's CPU µs per message delivered after the warm-up (None without a warm-up:
    /// the whole run's figure from the report is used).
    pub steady_cpu_us_per_msg: Option<f64>,
}

/// What had been delivered, and the proxy's CPU, when the warm-up ended.
struct WarmMark {
    latency: Histogram<u64>,
    unique: u64,
    cpu_ticks: Option<u64>,
}

impl Measured {
    fn delivered_per_s(&self) -> f64 {
        let d = self.report.delivery.map_or(0, |d| d.unique);
        d as f64 / self.report.duration_s.max(1e-9)
    }

    /// The proxy's user + system CPU per delivered message, in µs (rows with a proxy only;
    /// after the warm-up when there was one).
    fn cpu_us_per_msg(&self) -> Option<f64> {
        if self.steady_cpu_us_per_msg.is_some() {
            return self.steady_cpu_us_per_msg;
        }
        match (&self.report.gateway, self.proxy) {
            (Some(g), true) => {
                let delivered = self.report.delivery.map_or(0, |d| d.unique).max(1);
                Some(g.cpu_seconds * 1e6 / delivered as f64)
            }
            _ => None,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Per system over several rounds: its proxy CPU µs/msg in each round and their median, and
/// its per-core ratio against the peer (peer's µs/msg ÷ the system's, both from the same round)
/// in each round and their median. Rows without a proxy (direct) or that failed are left out.
pub fn rounds_summary(rounds: &[Comparison]) -> String {
    let Some(first) = rounds.first() else {
        return String::new();
    };
    let peer = first.peer;
    let mut out = format!(
        "rounds summary ({} rounds): proxy CPU µs/msg, and per-core ratio vs {peer} (its µs/msg ÷ the system's, same round)\n\n\
         | system | CPU µs/msg by round | median | vs {peer} by round | median ratio |\n|---|---|---|---|---|\n",
        rounds.len()
    );
    let cpu = |c: &Comparison, system: &str| {
        c.rows
            .iter()
            .find(|r| r.system == system)
            .and_then(|r| r.outcome.as_ref().ok())
            .and_then(Measured::cpu_us_per_msg)
    };
    let list = |v: &[Option<f64>], digits: usize| {
        v.iter()
            .map(|x| x.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}")))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for row in &first.rows {
        let per_round: Vec<Option<f64>> = rounds.iter().map(|c| cpu(c, &row.system)).collect();
        if per_round.iter().all(Option::is_none) {
            continue;
        }
        let ratios: Vec<Option<f64>> = rounds
            .iter()
            .map(|c| match (cpu(c, peer), cpu(c, &row.system)) {
                (Some(p), Some(s)) if s > 0.0 => Some(p / s),
                _ => None,
            })
            .collect();
        let med = |v: &[Option<f64>]| median(&v.iter().flatten().copied().collect::<Vec<_>>());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.system,
            list(&per_round, 1),
            med(&per_round).map_or_else(|| "-".into(), |m| format!("{m:.1}")),
            list(&ratios, 2),
            med(&ratios).map_or_else(|| "-".into(), |m| format!("{m:.2}×")),
        ));
    }
    out
}

/// The comparison's rows, in table order, and the name of the peer the ratios refer to.
#[derive(Debug)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Peer named in the "vs PEER" column.
    pub peer: &'static str,
    /// Rows.
    pub rows: Vec<Row>,
    /// Missing packages (`apt-get install` names).
    pub missing: Vec<String>,
}

struct Env<'a> {
    options: &'a CompareOptions,
    scenario: &'a Scenario,
    pki: &'a TestPki,
    cert: CertFiles,
}

/// Runs every system of `scenario`'s protocol in turn.
pub fn compare(scenario: &Scenario, options: &CompareOptions) -> Result<Comparison> {
    if let Some(cpu) = options.load_cpu {
        // Threads started from here on (sink, devices) inherit the mask.
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            bail!("could not pin this process to CPU {cpu} (--load-cpu)");
        }
    }
    sut::find_binary("taskset", "util-linux")?;
    if !options.simgate.is_file() {
        bail!(
            "simgate binary {} not found: build it with `cargo build --release -p simgate` \
             or pass --simgate PATH",
            options.simgate.display()
        );
    }
    let pki_dir = options.work_dir.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = TestPki::new(&pki_dir).context("minting certificates")?;
    let cert = pki
        .server_cert("sink", &["localhost", "127.0.0.1"])
        .context("sink certificate")?;
    let env = Env {
        options,
        scenario,
        pki: &pki,
        cert,
    };
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let systems: &[&str] = match scenario.fleet.protocol {
        Protocol::Http => &["direct", "simgate", "nginx", "haproxy", "stunnel"],
        Protocol::Mqtt => &[
            "direct",
            "simgate-aggregate",
            "simgate-aggregate-linger",
            "simgate-session",
            "mosquitto-bridge",
            "stunnel",
        ],
    };
    if let Some(unknown) = options.only.iter().find(|o| !systems.contains(&o.as_str())) {
        bail!(
            "--only: no system {unknown:?} for this scenario (it has: {})",
            systems.join(", ")
        );
    }
    let wanted =
        |system: &str| options.only.is_empty() || options.only.contains(&system_slug(system));
    let mut row = |system: &str, path: &'static str, run: &dyn Fn() -> Result<Measured>| {
        if !wanted(system) {
            return;
        }
        let result = run();
        let outcome = result.map_err(|e| {
            let text = format!("{e:#}");
            if let Some(package) = text.split("apt-get install ").nth(1) {
                missing.push(package.trim_end_matches('`').to_owned());
            }
            text
        });
        if let Err(e) = &outcome {
            eprintln!("{system}: {e}");
        }
        rows.push(Row {
            system: system.to_owned(),
            path,
            outcome,
        });
    };
    let peer = match scenario.fleet.protocol {
        Protocol::Http => {
            let p = "HTTP→HTTPS";
            row("direct", p, &|| env.direct(SinkKind::Http));
            row("simgate", p, &|| env.simgate_http());
            row("nginx", p, &|| env.nginx());
            row("haproxy", p, &|| env.haproxy());
            row("stunnel", "TCP→TLS", &|| env.stunnel(SinkKind::Http));
            "nginx"
        }
        Protocol::Mqtt => {
            let p = "MQTT→MQTTS";
            row("direct", p, &|| env.direct(SinkKind::Mqtt));
            row("simgate aggregate", p, &|| {
                env.simgate_mqtt("aggregate", None)
            });
            row("simgate aggregate linger", p, &|| {
                env.simgate_mqtt("aggregate", Some(AGGREGATE_LINGER))
            });
            row("simgate session", p, &|| env.simgate_mqtt("session", None));
            row("mosquitto bridge", p, &|| env.mosquitto_bridge());
            row("stunnel", "TCP→TLS", &|| env.stunnel(SinkKind::Mqtt));
            "mosquitto bridge"
        }
    };
    if options.only.is_empty() {
        rows.push(Row {
            system: "simgate TCP".into(),
            path: "TCP→TLS",
            outcome: Err("n/a — simgate TCP flow not built yet".into()),
        });
    }
    Ok(Comparison {
        scenario: scenario.name.clone(),
        peer,
        rows,
        missing,
    })
}

impl Env<'_> {
    fn sink(&self, kind: SinkKind, tls: bool) -> Result<Sink> {
        Ok(Sink::start(SinkOptions {
            tls: tls.then(|| self.cert.clone()),
            ..SinkOptions::new(kind)
        })?)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.options.work_dir.join(name)
    }

    fn ca(&self) -> String {
        self.pki.ca_pem.display().to_string()
    }

    /// Runs the scenario against `target`, sampling `pid`, accounted by `sink`.
    fn measure(
        &self,
        target: std::net::SocketAddr,
        pid: Option<u32>,
        sink: &Sink,
    ) -> Result<Measured> {
        let options = RunOptions {
            target,
            duration: self.options.duration,
            gateway_pid: pid,
            threads: self.options.threads,
            progress: self.options.progress,
            label: None,
            delivery: Some(Arc::clone(sink.tracker())),
            mark_after: None,
        };
        let warmup = self.options.warmup;
        // At the end of the warm-up, note what the sink has seen and the proxy's CPU so far;
        // the row's latency and CPU columns are what came after.
        let marker = (!warmup.is_zero() && warmup < self.options.duration).then(|| {
            let tracker = Arc::clone(sink.tracker());
            std::thread::spawn(move || {
                std::thread::sleep(warmup); // the measurement schedule, not a synchronisation
                let snapshot = tracker.snapshot();
                WarmMark {
                    latency: snapshot.latency().clone(),
                    unique: snapshot.summary().unique,
                    cpu_ticks: pid
                        .and_then(|p| crate::procstat::sample(p).ok().map(|s| s.cpu_ticks)),
                }
            })
        });
        let report = fleet::run(self.scenario, &options, None)?;
        let end_ticks = pid.and_then(|p| crate::procstat::sample(p).ok().map(|s| s.cpu_ticks));
        let mut e2e = sink.tracker().snapshot().latency().clone();
        let mut steady_cpu_us_per_msg = None;
        if let Some(marker) = marker {
            let mark = marker
                .join()
                .map_err(|_| anyhow::anyhow!("warm-up marker thread panicked"))?;
            e2e.subtract(&mark.latency)
                .context("subtract the warm-up's latencies")?;
            let unique = report.delivery.map_or(0, |d| d.unique);
            let delivered = unique.saturating_sub(mark.unique).max(1);
            if let (Some(end), Some(start)) = (end_ticks, mark.cpu_ticks) {
                let seconds =
                    end.saturating_sub(start) as f64 / crate::procstat::CLOCK_TICKS_PER_SEC as f64;
                steady_cpu_us_per_msg = Some(seconds * 1e6 / delivered as f64);
            }
        }
        Ok(Measured {
            e2e,
            report,
            proxy: pid.is_some(),
            steady_cpu_us_per_msg,
        })
    }

    fn direct(&self, kind: SinkKind) -> Result<Measured> {
        let sink = self.sink(kind, false)?;
        self.measure(sink.addr(), None, &sink)
    }

    fn run_simgate(&self, name: &str, config: &str, sink: &Sink) -> Result<Measured> {
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut simgate = sut::start_simgate(
            &self.options.simgate,
            &path,
            Some(&self.options.proxy_cpus),
            &self.path(&format!("{name}.log")),
        )?;
        let Some(target) = simgate.listeners.values().next().copied() else {
            bail!("simgate printed no listener");
        };
        let measured = self.measure(target, Some(simgate.child.pid()), sink);
        simgate.child.check_alive()?;
        measured
    }

    /// `--simgate-pool` lines for a `[destination.pool]` table, each ending in a newline.
    fn pool_extra(&self) -> String {
        self.options
            .simgate_pool
            .iter()
            .map(|line| format!("{line}\n"))
            .collect()
    }

    fn simgate_http(&self) -> Result<Measured> {
        let sink = self.sink(SinkKind::Http, true)?;
        let config = format!(
            r#"[gateway]
shards = 1
pin_shards = false
admin = "off"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[destination]]
name = "sink"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
[destination.pool]
warm = 8
max_idle = 256
{extra}[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
"#,
            sink = sink.addr(),
            ca = self.ca(),
            extra = self.pool_extra(),
        );
        self.run_simgate("simgate-http", &config, &sink)
    }

    /// simgate with one MQTT destination in `mode`; `linger` sets `destination.mqtt.linger`.
    fn simgate_mqtt(&self, mode: &str, linger: Option<&str>) -> Result<Measured> {
        let sink = self.sink(SinkKind::Mqtt, true)?;
        let extra = self.pool_extra();
        let pool = if mode == "session" {
            format!("[destination.pool]\nwarm = 16\nmax_idle = 256\n{extra}")
        } else if extra.is_empty() {
            String::new()
        } else {
            format!("[destination.pool]\n{extra}")
        };
        let config = format!(
            r#"[gateway]
shards = 1
pin_shards = false
admin = "off"
[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"
[[destination]]
name = "sink"
adapter = "mqtts"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
{pool}[destination.mqtt]
mode = "{mode}"
{linger}[[group]]
name = "default"
routes = [ {{ listener = "mqtt", destination = "sink" }} ]
"#,
            sink = sink.addr(),
            ca = self.ca(),
            linger = linger.map_or(String::new(), |l| format!("linger = \"{l}\"\n")),
        );
        let name = match linger {
            Some(_) => format!("simgate-{mode}-linger"),
            None => format!("simgate-{mode}"),
        };
        self.run_simgate(&name, &config, &sink)
    }

    /// Starts a peer from its config, waits for its port, measures.
    fn run_peer(
        &self,
        name: &str,
        binary: &Path,
        args: &[&str],
        port: u16,
        sink: &Sink,
    ) -> Result<Measured> {
        let mut child = Child::spawn(
            name,
            binary,
            args,
            Some(&self.options.proxy_cpus),
            &self.path(&format!("{name}.log")),
        )?;
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        sut::wait_for_port(&mut child, target, Duration::from_secs(10))?;
        let measured = self.measure(target, Some(child.pid()), sink);
        child.check_alive()?;
        measured
    }

    fn nginx(&self) -> Result<Measured> {
        let binary = sut::find_binary("nginx", "nginx-light")?;
        let sink = self.sink(SinkKind::Http, true)?;
        let port = sut::free_port()?;
        let dir = self.path("nginx");
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let config = format!(
            r#"worker_processes 1;
master_process off;   # one process: its CPU and RSS are the proxy's
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  upstream sink {{ server {sink}; keepalive 256; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    location / {{
      proxy_pass https://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"#,
            sink = sink.addr(),
            ca = self.ca()
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        let err = format!("{d}/error.log");
        self.run_peer("nginx", &binary, &["-c", &conf, "-e", &err], port, &sink)
    }

    fn haproxy(&self) -> Result<Measured> {
        let binary = sut::find_binary("haproxy", "haproxy")?;
        let sink = self.sink(SinkKind::Http, true)?;
        let port = sut::free_port()?;
        let config = format!(
            r#"global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  http-reuse always
frontend devices
  bind 127.0.0.1:{port}
  default_backend sink
backend sink
  http-reuse always
  http-request set-header Host localhost
  server sink {sink} ssl verify required ca-file {ca} sni str(localhost) verifyhost localhost pool-max-conn 256
"#,
            sink = sink.addr(),
            ca = self.ca()
        );
        let conf = self.path("haproxy.cfg");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        self.run_peer("haproxy", &binary, &["-db", "-f", &conf], port, &sink)
    }

    fn stunnel(&self, kind: SinkKind) -> Result<Measured> {
        let binary = sut::find_binary("stunnel4", "stunnel4")
            .or_else(|_| sut::find_binary("stunnel", "stunnel4"))?;
        let sink = self.sink(kind, true)?;
        let port = sut::free_port()?;
        let config = format!(
            "foreground = yes\npid =\ndebug = 3\n\
             [relay]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {sink}\n\
             verifyChain = yes\nCAfile = {ca}\ncheckHost = localhost\nsni = localhost\n",
            sink = sink.addr(),
            ca = self.ca()
        );
        let conf = self.path("stunnel.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        self.run_peer("stunnel", &binary, &[&conf], port, &sink)
    }

    fn mosquitto_bridge(&self) -> Result<Measured> {
        let binary = sut::find_binary("mosquitto", "mosquitto")?;
        let sink = self.sink(SinkKind::Mqtt, true)?;
        let port = sut::free_port()?;
        let qos = self.scenario.mqtt_settings().qos;
        let config = format!(
            "user root\nlog_dest stdout\nlog_type error\nlog_type warning\n\
             max_queued_messages 100000\nmax_inflight_messages 256\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             connection cloud\naddress {sink}\nbridge_cafile {ca}\nbridge_insecure false\n\
             bridge_protocol_version mqttv311\ncleansession true\nnotifications false\n\
             try_private false\ntopic # out {qos}\n",
            sink = sink.addr(),
            ca = self.ca()
        );
        let conf = self.path("mosquitto-bridge.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        self.run_peer("mosquitto bridge", &binary, &["-c", &conf], port, &sink)
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate_of = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.system == name)
                .and_then(|r| r.outcome.as_ref().ok())
                .map(Measured::delivered_per_s)
        };
        let direct = rate_of("direct");
        let peer = rate_of(self.peer);
        writeln!(
            f,
            "| path | system | delivered msg/s | vs direct | vs {} | e2e p50 | e2e p99 | e2e p99.9 | proxy CPU µs/msg | proxy RSS peak | lost / dup / reordered | device errors |",
            self.peer
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for row in &self.rows {
            match &row.outcome {
                Err(why) => writeln!(
                    f,
                    "| {} | {} | {} | | | | | | | | | |",
                    row.path,
                    row.system,
                    why.lines().next().unwrap_or("").replace('|', "/")
                )?,
                Ok(m) => {
                    let rate = m.delivered_per_s();
                    let (e2e, lost) = match m.report.delivery {
                        Some(d) => (
                            LatencySummary::of(&m.e2e),
                            format!("{} / {} / {}", d.lost, d.duplicates, d.reordered),
                        ),
                        None => (m.report.latency_us, "-".into()),
                    };
                    let cpu = m
                        .cpu_us_per_msg()
                        .map_or_else(|| "-".into(), |us| format!("{us:.1}"));
                    let rss = match (&m.report.gateway, m.proxy) {
                        (Some(g), true) => format!("{:.1} MiB", g.rss_kib_peak as f64 / 1024.0),
                        _ => "-".into(),
                    };
                    writeln!(
                        f,
                        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        row.path,
                        row.system,
                        rate,
                        ratio(rate, direct),
                        ratio(rate, peer),
                        ms(e2e.p50),
                        ms(e2e.p99),
                        ms(e2e.p999),
                        cpu,
                        rss,
                        lost,
                        m.report.counts.error_total()
                    )?;
                }
            }
        }
        if !self.missing.is_empty() {
            writeln!(
                f,
                "\nmissing peers: apt-get install {}",
                self.missing.join(" ")
            )?;
        }
        Ok(())
    }
}

impl Comparison {
    /// The percentile-spectrum SVG of every measured row.
    pub fn svg(&self) -> String {
        let series: Vec<(String, &Histogram<u64>)> = self
            .rows
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok().map(|m| (r.system.clone(), &m.e2e)))
            .collect();
        crate::plot::percentile_svg(
            &format!("{}: end-to-end latency by percentile", self.scenario),
            &series,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            median(&[f64::NAN, 5.0]),
            Some(5.0),
            "non-finite values are ignored"
        );
    }
}
