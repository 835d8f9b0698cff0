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
//! | HTTP → HTTPS | direct (devices → plaintext HTTP sink), floor (nginx answering `return 204;` itself, no upstream), simgate, simgate h2 (destination `alpn = ["h2", "http/1.1"]`, the sink offering h2: one shared HTTP/2 connection), simgate event-hubs (`adapter = "azure-event-hubs"`, one cloud call per message), simgate event-hubs batch (the same with `batch = { max_messages = 100, linger = "5ms" }`: many devices' messages per call), nginx (peer: `proxy_pass https://` with upstream keepalive, `proxy_ssl_verify on`), haproxy (`server ... ssl verify required ca-file`, `http-reuse always`) |
//! | MQTT → MQTTS | direct (devices → plaintext MQTT sink), floor (a plain mosquitto the devices publish to, no bridge, no subscriber), simgate aggregate, simgate aggregate linger (`linger = "1ms"`), simgate session, mosquitto bridge (peer: a local mosquitto bridging `#` out to the MQTTS sink) |
//! | TCP → TLS (same scenario, carried as bytes) | stunnel (client mode, verifying the sink), simgate: "n/a — simgate TCP flow not built yet" |
//!
//! Opt-in rows, run only when named in `--only` (they measure simgate against itself, not a
//! peer): simgate unmeasured (HTTP), simgate aggregate unmeasured and simgate session unmeasured
//! (MQTT) — the row of the same name without "unmeasured", with `[metrics] histograms = false`
//! and `[usage] enabled = false` ([`MEASUREMENT_OFF`]). Their CPU µs/msg against the measured
//! row's is the cost of measurement (`loadtest/compare-measurement.sh`).
//!
//! Columns: messages delivered to the sink per second; that rate over direct's and over the
//! peer's; end-to-end p50/p99/p99.9 at the sink (receive − intended send time); CPU µs per
//! delivered message of the proxy process (user + system from `/proc/PID/stat` over the run);
//! that CPU per message as a multiple of the floor's ("× floor"); the sink's calls per delivered
//! message ("calls/msg": HTTP requests the sink read ÷ messages it counted, after the warm-up
//! when there is one; below 1 only when a call carries several messages, as an Event Hubs batch
//! does); its peak RSS; lost/dup/reordered; device-side errors. Under each table, the connections the
//! sink accepted from each proxied row over its run (how many upstream connections it used).
//!
//! The event-hubs rows point simgate's `azure-event-hubs` adapter at the same built-in HTTPS
//! sink as the simgate row (`endpoint`, `ca` and `server_name` overridden; an `azure-sas`
//! credential with `key_name = "send"` and a generated key read from a file). The sink answers
//! every request 200; it reads each element's `Body` of a batch call
//! (`application/vnd.microsoft.servicebus.json`) as one device message, so delivery, sequence
//! and latency accounting are the same as for one message per request.
//!
//! The floor row is the lowest CPU per message any proxy could reach here: the same peer
//! server, pinned the same way, on the same listen socket settings, with the same devices and
//! schedule, answering them itself. Nothing reaches a sink, so its "delivered" is counted at the
//! devices: successful answers (HTTP 2xx; MQTT QoS 1 PUBACKs; QoS 0 PUBLISHes written to the
//! socket, as the fleet counts them). Its latency columns are device-side (intended send →
//! answer), its lost/dup/reordered is "-", and with `--warmup` its cut is the fleet's mark at the
//! first once-a-second tick at or after the warm-up (the other rows cut at the warm-up itself;
//! the same moment for a whole number of seconds). nginx's `return 204;` reads and discards the
//! request body (never buffered, never on disk); mosquitto with no subscriber drops every
//! message after acknowledging it.
//!
//! What it does NOT do: warm-up exclusion (the ramp and first handshakes are in the run), run
//! systems in parallel, install packages itself, or retry a port another process grabbed
//! between [`crate::sut::free_port`] and the proxy's bind.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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

/// The floor row's system name (a peer answering the devices itself, no upstream).
const FLOOR: &str = "floor";

/// `destination.batch` of the "simgate event-hubs batch" row.
const EVENT_HUBS_BATCH: &str = r#"{ max_messages = 100, linger = "5ms" }"#;

/// Below the table when it has a floor row.
const FLOOR_NOTE: &str = "floor: the peer server answering the devices itself, no upstream \
(HTTP: nginx `return 204;`, body read and discarded; MQTT: a plain mosquitto, no bridge, no \
subscriber). Nothing reaches a sink, so its \"delivered\" is counted at the devices: successful \
answers (HTTP 2xx; MQTT QoS 1 PUBACKs; QoS 0: PUBLISHes written to the socket), its e2e columns \
are device-side (intended send → answer; QoS 0: → written) and lost/dup/reordered is -. With \
--warmup its cut is the first once-a-second tick at or after the warm-up. \
× floor = the row's proxy CPU µs/msg ÷ the floor's.";

/// Below every table.
const CALLS_NOTE: &str = "calls/msg: HTTP requests (MQTT: -) the sink read ÷ messages it \
counted (after the warm-up when there is one); one call per message reads 1.000, an Event Hubs \
batch call (application/vnd.microsoft.servicebus.json) carries one message per array element.";

/// Appended to the config of the "unmeasured" rows: simgate with its measurement switched off.
pub const MEASUREMENT_OFF: &str = "[metrics]\nhistograms = false\n[usage]\nenabled = false\n";

/// Systems that run only when `--only` names them.
const OPT_IN: [&str; 3] = [
    "simgate-unmeasured",
    "simgate-aggregate-unmeasured",
    "simgate-session-unmeasured",
];

/// The `--only` spelling of a table's system name: "simgate aggregate" → "simgate-aggregate".
fn system_slug(system: &str) -> String {
    system.to_lowercase().replace(' ', "-")
}

/// Whether the row `system` runs under `--only` `only`: named there, or, with no `--only`, any
/// row but the opt-in ones.
fn runs(system: &str, only: &[String]) -> bool {
    let slug = system_slug(system);
    if only.is_empty() {
        !OPT_IN.contains(&slug.as_str())
    } else {
        only.contains(&slug)
    }
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
    /// Whether "delivered" is counted at the devices (successful answers: the floor row, which
    /// has no sink) rather than at the sink.
    pub device_side: bool,
    /// Connections the sink accepted from the proxy over the whole run (None without a proxy
    /// in front of a sink).
    pub upstream_connections: Option<u64>,
    /// Requests the sink read (cloud calls) per message it counted, after the warm-up when there
    /// was one (None: no sink).
    pub calls_per_msg: Option<f64>,
}

/// What had been delivered, and the proxy's CPU, when the warm-up ended.
struct WarmMark {
    latency: Histogram<u64>,
    unique: u64,
    cpu_ticks: Option<u64>,
    requests: u64,
}

impl Measured {
    /// Messages delivered over the whole run: unique arrivals at the sink, or for a device-side
    /// row the devices' successful answers.
    fn delivered(&self) -> u64 {
        if self.device_side {
            self.report.counts.ok
        } else {
            self.report.delivery.map_or(0, |d| d.unique)
        }
    }

    fn delivered_per_s(&self) -> f64 {
        self.delivered() as f64 / self.report.duration_s.max(1e-9)
    }

    /// The proxy's user + system CPU per delivered message, in µs (rows with a proxy only;
    /// after the warm-up when there was one).
    fn cpu_us_per_msg(&self) -> Option<f64> {
        if self.steady_cpu_us_per_msg.is_some() {
            return self.steady_cpu_us_per_msg;
        }
        match (&self.report.gateway, self.proxy) {
            (Some(g), true) => {
                let delivered = self.delivered().max(1);
                Some(g.cpu_seconds * 1e6 / delivered as f64)
            }
            _ => None,
        }
    }
}

impl Comparison {
    /// Each row's proxy CPU µs per delivered message (after the warm-up when there was one), in
    /// table order; `None` for a row without a proxy or that failed.
    pub fn cpu_us_per_msg(&self) -> Vec<(&str, Option<f64>)> {
        self.rows
            .iter()
            .map(|r| {
                let cpu = r.outcome.as_ref().ok().and_then(Measured::cpu_us_per_msg);
                (r.system.as_str(), cpu)
            })
            .collect()
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

/// The system's CPU µs/msg as a multiple of the floor's (`None` without both, or a floor of 0).
fn times_floor(system: Option<f64>, floor: Option<f64>) -> Option<f64> {
    match (system, floor) {
        (Some(s), Some(f)) if f > 0.0 => Some(s / f),
        _ => None,
    }
}

/// Per system over several rounds: its proxy CPU µs/msg in each round and their median, its
/// per-core ratio against the peer (peer's µs/msg ÷ the system's, both from the same round) in
/// each round and their median, its µs/msg as a multiple of the floor row's (same round) in
/// each round and their median, and the sink's calls per message in each round. Rows without a proxy (direct) or that failed are left out.
pub fn rounds_summary(rounds: &[Comparison]) -> String {
    let Some(first) = rounds.first() else {
        return String::new();
    };
    let peer = first.peer;
    let mut out = format!(
        "rounds summary ({} rounds): proxy CPU µs/msg, per-core ratio vs {peer} (its µs/msg ÷ the system's, same round), \
         µs/msg as a multiple of the floor's (same round), and the sink's calls per message\n\n\
         | system | CPU µs/msg by round | median | vs {peer} by round | median ratio | × floor by round | median × floor | calls/msg by round |\n\
         |---|---|---|---|---|---|---|---|\n",
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
        let floors: Vec<Option<f64>> = rounds
            .iter()
            .map(|c| times_floor(cpu(c, &row.system), cpu(c, FLOOR)))
            .collect();
        let calls: Vec<Option<f64>> = rounds
            .iter()
            .map(|c| {
                c.rows
                    .iter()
                    .find(|r| r.system == row.system)
                    .and_then(|r| r.outcome.as_ref().ok())
                    .and_then(|m| m.calls_per_msg)
            })
            .collect();
        let med = |v: &[Option<f64>]| median(&v.iter().flatten().copied().collect::<Vec<_>>());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.system,
            list(&per_round, 1),
            med(&per_round).map_or_else(|| "-".into(), |m| format!("{m:.1}")),
            list(&ratios, 2),
            med(&ratios).map_or_else(|| "-".into(), |m| format!("{m:.2}×")),
            list(&floors, 2),
            med(&floors).map_or_else(|| "-".into(), |m| format!("{m:.2}×")),
            list(&calls, 3),
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
        Protocol::Http => &[
            "direct",
            "floor",
            "simgate",
            "simgate-h2",
            "simgate-event-hubs",
            "simgate-event-hubs-batch",
            "simgate-unmeasured",
            "nginx",
            "haproxy",
            "stunnel",
        ],
        Protocol::Mqtt => &[
            "direct",
            "floor",
            "simgate-aggregate",
            "simgate-aggregate-linger",
            "simgate-session",
            "simgate-aggregate-unmeasured",
            "simgate-session-unmeasured",
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
    let wanted = |system: &str| runs(system, &options.only);
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
            row(FLOOR, "HTTP (no upstream)", &|| env.nginx_floor());
            row("simgate", p, &|| env.simgate_http(false, ""));
            row("simgate unmeasured", p, &|| {
                env.simgate_http(false, MEASUREMENT_OFF)
            });
            row("simgate h2", p, &|| env.simgate_http(true, ""));
            row("simgate event-hubs", p, &|| env.simgate_event_hubs(None));
            row("simgate event-hubs batch", p, &|| {
                env.simgate_event_hubs(Some(EVENT_HUBS_BATCH))
            });
            row("nginx", p, &|| env.nginx());
            row("haproxy", p, &|| env.haproxy());
            row("stunnel", "TCP→TLS", &|| env.stunnel(SinkKind::Http));
            "nginx"
        }
        Protocol::Mqtt => {
            let p = "MQTT→MQTTS";
            row("direct", p, &|| env.direct(SinkKind::Mqtt));
            row(FLOOR, "MQTT (no upstream)", &|| env.mosquitto_floor());
            row("simgate aggregate", p, &|| {
                env.simgate_mqtt("aggregate", None, "")
            });
            row("simgate aggregate unmeasured", p, &|| {
                env.simgate_mqtt("aggregate", None, MEASUREMENT_OFF)
            });
            row("simgate aggregate linger", p, &|| {
                env.simgate_mqtt("aggregate", Some(AGGREGATE_LINGER), "")
            });
            row("simgate session", p, &|| {
                env.simgate_mqtt("session", None, "")
            });
            row("simgate session unmeasured", p, &|| {
                env.simgate_mqtt("session", None, MEASUREMENT_OFF)
            });
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

    /// Runs the scenario against `target`, sampling `pid`, accounted by `sink`; without a sink
    /// (the floor row), accounted at the devices.
    fn measure(
        &self,
        target: std::net::SocketAddr,
        pid: Option<u32>,
        sink: Option<&Sink>,
    ) -> Result<Measured> {
        let warmup = self.options.warmup;
        let warm = !warmup.is_zero() && warmup < self.options.duration;
        let Some(sink) = sink else {
            return self.measure_device_side(target, pid, warm.then_some(warmup));
        };
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
        // At the end of the warm-up, note what the sink has seen and the proxy's CPU so far;
        // the row's latency and CPU columns are what came after.
        let marker = warm.then(|| {
            let tracker = Arc::clone(sink.tracker());
            let counters = Arc::clone(sink.counters());
            std::thread::spawn(move || {
                std::thread::sleep(warmup); // the measurement schedule, not a synchronisation
                let snapshot = tracker.snapshot();
                WarmMark {
                    latency: snapshot.latency().clone(),
                    unique: snapshot.summary().unique,
                    cpu_ticks: pid
                        .and_then(|p| crate::procstat::sample(p).ok().map(|s| s.cpu_ticks)),
                    requests: counters.requests.load(Ordering::Relaxed),
                }
            })
        });
        let report = fleet::run(self.scenario, &options, None)?;
        let end_ticks = pid.and_then(|p| crate::procstat::sample(p).ok().map(|s| s.cpu_ticks));
        let mut e2e = sink.tracker().snapshot().latency().clone();
        let requests = sink.counters().requests.load(Ordering::Relaxed);
        let unique = report.delivery.map_or(0, |d| d.unique);
        let mut calls_per_msg = Some(requests as f64 / unique.max(1) as f64);
        let mut steady_cpu_us_per_msg = None;
        if let Some(marker) = marker {
            let mark = marker
                .join()
                .map_err(|_| anyhow::anyhow!("warm-up marker thread panicked"))?;
            e2e.subtract(&mark.latency)
                .context("subtract the warm-up's latencies")?;
            let delivered = unique.saturating_sub(mark.unique).max(1);
            calls_per_msg = Some(requests.saturating_sub(mark.requests) as f64 / delivered as f64);
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
            device_side: false,
            upstream_connections: pid.is_some().then(|| {
                sink.counters()
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            // The MQTT sink counts no requests.
            calls_per_msg: calls_per_msg.filter(|_| self.scenario.fleet.protocol == Protocol::Http),
        })
    }

    /// [`Self::measure`] with no sink: delivered = the devices' successful answers, latency =
    /// device-side; the warm-up cut (if any) is the fleet's mark at its first tick at or after
    /// `warmup`.
    fn measure_device_side(
        &self,
        target: std::net::SocketAddr,
        pid: Option<u32>,
        warmup: Option<Duration>,
    ) -> Result<Measured> {
        let options = RunOptions {
            target,
            duration: self.options.duration,
            gateway_pid: pid,
            threads: self.options.threads,
            progress: self.options.progress,
            label: None,
            delivery: None,
            mark_after: Some(warmup.unwrap_or(Duration::ZERO)),
        };
        let report = fleet::run(self.scenario, &options, None)?;
        let end_ticks = pid.and_then(|p| crate::procstat::sample(p).ok().map(|s| s.cpu_ticks));
        let Some(mark) = report.after_mark.clone() else {
            bail!("the run ended before its warm-up mark");
        };
        let steady_cpu_us_per_msg = match (warmup, end_ticks, mark.gateway_cpu_ticks) {
            (Some(_), Some(end), Some(start)) => {
                let seconds =
                    end.saturating_sub(start) as f64 / crate::procstat::CLOCK_TICKS_PER_SEC as f64;
                Some(seconds * 1e6 / mark.ok.max(1) as f64)
            }
            _ => None,
        };
        Ok(Measured {
            e2e: mark.latency,
            report,
            proxy: pid.is_some(),
            steady_cpu_us_per_msg,
            device_side: true,
            upstream_connections: None,
            calls_per_msg: None,
        })
    }

    fn direct(&self, kind: SinkKind) -> Result<Measured> {
        let sink = self.sink(kind, false)?;
        self.measure(sink.addr(), None, Some(&sink))
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
        let measured = self.measure(target, Some(simgate.child.pid()), Some(sink));
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

    /// simgate with one `https` destination; `h2`: the sink offers HTTP/2 and simgate's
    /// destination `alpn = ["h2", "http/1.1"]` (one shared connection per shard). `tables`:
    /// TOML tables appended to the config (e.g. [`MEASUREMENT_OFF`]).
    fn simgate_http(&self, h2: bool, tables: &str) -> Result<Measured> {
        let sink = Sink::start(SinkOptions {
            tls: Some(self.cert.clone()),
            http2: h2,
            ..SinkOptions::new(SinkKind::Http)
        })?;
        let alpn = if h2 {
            "alpn = [\"h2\", \"http/1.1\"]\n"
        } else {
            ""
        };
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
{alpn}[destination.pool]
warm = 8
max_idle = 256
{extra}[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
{tables}"#,
            sink = sink.addr(),
            ca = self.ca(),
            extra = self.pool_extra(),
        );
        let name = match (h2, tables.is_empty()) {
            (true, _) => "simgate-h2",
            (false, true) => "simgate-http",
            (false, false) => "simgate-http-unmeasured",
        };
        self.run_simgate(name, &config, &sink)
    }

    /// simgate with an `azure-event-hubs` destination pointed at the HTTPS sink: one cloud
    /// call per message, or with `batch` (a `destination.batch` inline table) many.
    fn simgate_event_hubs(&self, batch: Option<&str>) -> Result<Measured> {
        let sink = self.sink(SinkKind::Http, true)?;
        // The policy key the SAS tokens are minted from (any text: the sink checks no token).
        let key = self.path("event-hubs-send.key");
        std::fs::write(&key, "c2ltZ2F0ZS1iZW5jaC1ldmVudC1odWJzLXNlbmQta2V5\n")?;
        let config = format!(
            r#"[gateway]
shards = 1
pin_shards = false
admin = "off"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[credential]]
name = "event-hubs"
kind = "azure-sas"
key_name = "send"
key = {{ file = "{key}" }}
[[destination]]
name = "sink"
adapter = "azure-event-hubs"
namespace = "simgate-bench"
hub = "telemetry"
credential = "event-hubs"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
{batch}[destination.pool]
warm = 8
max_idle = 256
{extra}[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
"#,
            key = key.display(),
            sink = sink.addr(),
            ca = self.ca(),
            batch = batch.map_or(String::new(), |b| format!("batch = {b}\n")),
            extra = self.pool_extra(),
        );
        let name = match batch {
            Some(_) => "simgate-event-hubs-batch",
            None => "simgate-event-hubs",
        };
        let measured = self.run_simgate(name, &config, &sink)?;
        let bad = sink.counters().bad_batches.load(Ordering::Relaxed);
        if bad > 0 {
            bail!("the sink could not read {bad} batch call(s) (not a JSON array of events)");
        }
        Ok(measured)
    }

    /// simgate with one MQTT destination in `mode`; `linger` sets `destination.mqtt.linger`;
    /// `tables`: TOML tables appended to the config (e.g. [`MEASUREMENT_OFF`]).
    fn simgate_mqtt(&self, mode: &str, linger: Option<&str>, tables: &str) -> Result<Measured> {
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
{tables}"#,
            sink = sink.addr(),
            ca = self.ca(),
            linger = linger.map_or(String::new(), |l| format!("linger = \"{l}\"\n")),
        );
        let name = match (linger, tables.is_empty()) {
            (Some(_), _) => format!("simgate-{mode}-linger"),
            (None, true) => format!("simgate-{mode}"),
            (None, false) => format!("simgate-{mode}-unmeasured"),
        };
        self.run_simgate(&name, &config, &sink)
    }

    /// Starts a peer from its config, waits for its port, measures (at the devices when there
    /// is no sink).
    fn run_peer(
        &self,
        name: &str,
        binary: &Path,
        args: &[&str],
        port: u16,
        sink: Option<&Sink>,
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

    /// Writes `name`'s nginx config (one process, the devices' listen socket and keep-alive
    /// settings; `http` and `location` are the row's own lines) and runs it.
    fn run_nginx(
        &self,
        name: &str,
        http: &str,
        location: &str,
        sink: Option<&Sink>,
    ) -> Result<Measured> {
        let binary = sut::find_binary("nginx", "nginx-light")?;
        let port = sut::free_port()?;
        let dir = self.path(name);
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
{http}  server {{
    listen 127.0.0.1:{port} backlog=4096;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    location / {{
{location}    }}
  }}
}}
"#
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        let err = format!("{d}/error.log");
        self.run_peer(name, &binary, &["-c", &conf, "-e", &err], port, sink)
    }

    fn nginx(&self) -> Result<Measured> {
        let sink = self.sink(SinkKind::Http, true)?;
        let http = format!(
            "  upstream sink {{ server {sink}; keepalive 256; keepalive_requests 1000000; }}\n",
            sink = sink.addr()
        );
        let location = format!(
            r#"      proxy_pass https://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_session_reuse on;
"#,
            ca = self.ca()
        );
        self.run_nginx("nginx", &http, &location, Some(&sink))
    }

    /// The HTTP floor: the nginx of the nginx row, answering every request itself. `return`
    /// discards the request body (nginx reads it off the socket and drops it, never buffering
    /// it to memory or disk; a keep-alive connection needs it read before the next request);
    /// the body buffer is sized anyway so that no body could ever reach `client_body_temp_path`.
    fn nginx_floor(&self) -> Result<Measured> {
        let body = self.scenario.traffic.body_bytes;
        let http = format!(
            "  client_body_buffer_size {buffer};\n  client_max_body_size {max};\n",
            buffer = (body + 1024).max(16 * 1024),
            max = (body + 1024).max(1024 * 1024),
        );
        self.run_nginx("floor-nginx", &http, "      return 204;\n", None)
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
        self.run_peer("haproxy", &binary, &["-db", "-f", &conf], port, Some(&sink))
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
        self.run_peer("stunnel", &binary, &[&conf], port, Some(&sink))
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
        self.run_peer(
            "mosquitto bridge",
            &binary,
            &["-c", &conf],
            port,
            Some(&sink),
        )
    }

    /// The MQTT floor: a plain mosquitto (the bridge row's, without the bridge) as the broker the
    /// devices publish to, with no subscriber: it acknowledges (QoS 1) and drops every message.
    fn mosquitto_floor(&self) -> Result<Measured> {
        let binary = sut::find_binary("mosquitto", "mosquitto")?;
        let port = sut::free_port()?;
        let config = format!(
            "user root\nlog_dest stdout\nlog_type error\nlog_type warning\n\
             max_queued_messages 100000\nmax_inflight_messages 256\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n"
        );
        let conf = self.path("floor-mosquitto.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        self.run_peer("floor-mosquitto", &binary, &["-c", &conf], port, None)
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
        let floor = self
            .rows
            .iter()
            .find(|r| r.system == FLOOR)
            .and_then(|r| r.outcome.as_ref().ok())
            .and_then(Measured::cpu_us_per_msg);
        writeln!(
            f,
            "| path | system | delivered msg/s | vs direct | vs {} | e2e p50 | e2e p99 | e2e p99.9 | proxy CPU µs/msg | × floor | calls/msg | proxy RSS peak | lost / dup / reordered | device errors |",
            self.peer
        )?;
        writeln!(
            f,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        for row in &self.rows {
            match &row.outcome {
                Err(why) => writeln!(
                    f,
                    "| {} | {} | {} | | | | | | | | | | | |",
                    row.path,
                    row.system,
                    why.lines().next().unwrap_or("").replace('|', "/")
                )?,
                Ok(m) => {
                    let rate = m.delivered_per_s();
                    let (e2e, lost) = match m.report.delivery {
                        None if m.device_side => (LatencySummary::of(&m.e2e), "-".into()),
                        Some(d) => (
                            LatencySummary::of(&m.e2e),
                            format!("{} / {} / {}", d.lost, d.duplicates, d.reordered),
                        ),
                        None => (m.report.latency_us, "-".into()),
                    };
                    let cpu_us = m.cpu_us_per_msg();
                    let cpu = cpu_us.map_or_else(|| "-".into(), |us| format!("{us:.1}"));
                    let x_floor = times_floor(cpu_us, floor)
                        .map_or_else(|| "-".into(), |x| format!("{x:.2}×"));
                    let calls = m
                        .calls_per_msg
                        .map_or_else(|| "-".into(), |c| format!("{c:.3}"));
                    let rss = match (&m.report.gateway, m.proxy) {
                        (Some(g), true) => format!("{:.1} MiB", g.rss_kib_peak as f64 / 1024.0),
                        _ => "-".into(),
                    };
                    writeln!(
                        f,
                        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        row.path,
                        row.system,
                        rate,
                        ratio(rate, direct),
                        ratio(rate, peer),
                        ms(e2e.p50),
                        ms(e2e.p99),
                        ms(e2e.p999),
                        cpu,
                        x_floor,
                        calls,
                        rss,
                        lost,
                        m.report.counts.error_total()
                    )?;
                }
            }
        }
        let connections: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                let n = r.outcome.as_ref().ok()?.upstream_connections?;
                Some(format!("{} {n}", r.system))
            })
            .collect();
        if !connections.is_empty() {
            writeln!(
                f,
                "\nupstream connections (accepted by the sink over the run): {}",
                connections.join(", ")
            )?;
        }
        if self.rows.iter().any(|r| r.system == FLOOR) {
            writeln!(f, "\n{FLOOR_NOTE}")?;
        }
        writeln!(f, "\n{CALLS_NOTE}")?;
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
    use super::{
        median, rounds_summary, runs, times_floor, Comparison, Measured, Row, FLOOR,
        MEASUREMENT_OFF,
    };

    #[test]
    fn unmeasured_rows_run_only_when_named() {
        let only = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(runs("simgate", &[]));
        assert!(!runs("simgate unmeasured", &[]));
        assert!(!runs("simgate session unmeasured", &[]));
        let pair = only(&["simgate", "simgate-unmeasured"]);
        assert!(runs("simgate unmeasured", &pair));
        assert!(runs("simgate", &pair));
        assert!(!runs("nginx", &pair));
    }

    #[test]
    fn measurement_off_tables_compile_in_simgate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = simgate::testkit::TestPki::new(dir.path()).expect("pki");
        let toml = format!(
            r#"[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[destination]]
name = "sink"
adapter = "https"
endpoint = "127.0.0.1:1"
ca = "{ca}"
[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
{MEASUREMENT_OFF}"#,
            ca = pki.ca_pem.display()
        );
        let plan = simgate::config::compile_str(&toml, dir.path()).expect("compiles");
        assert!(!plan.metrics.histograms);
        assert!(!plan.usage.enabled);
    }
    use crate::stats::{new_latency_histogram, Counts, LatencySummary, Report};

    /// A measured row whose proxy CPU per message is `cpu_us` (None: no proxy, like direct).
    fn row(system: &str, cpu_us: Option<f64>) -> Row {
        let e2e = new_latency_histogram().expect("histogram");
        let report = Report {
            scenario: "s".into(),
            target: "127.0.0.1:1".into(),
            protocol: "http".into(),
            devices: 1,
            duration_s: 1.0,
            target_rate_per_s: 1.0,
            achieved_rate_per_s: 1.0,
            counts: Counts::default(),
            in_flight_at_end: 0,
            latency_us: LatencySummary::of(&e2e),
            open_at_end: 0,
            peak_open: 0,
            gateway: None,
            intervals: Vec::new(),
            delivery: None,
            after_mark: None,
        };
        Row {
            system: system.into(),
            path: "HTTP→HTTPS",
            outcome: Ok(Measured {
                report,
                e2e,
                proxy: cpu_us.is_some(),
                steady_cpu_us_per_msg: cpu_us,
                device_side: system == FLOOR,
                upstream_connections: None,
                calls_per_msg: (system != FLOOR).then_some(1.0),
            }),
        }
    }

    fn round(floor: f64, simgate: f64, nginx: f64) -> Comparison {
        Comparison {
            scenario: "s".into(),
            peer: "nginx",
            rows: vec![
                row("direct", None),
                row(FLOOR, Some(floor)),
                row("simgate", Some(simgate)),
                row("nginx", Some(nginx)),
            ],
            missing: Vec::new(),
        }
    }

    #[test]
    fn times_floor_divides_by_a_positive_floor_only() {
        assert_eq!(times_floor(Some(30.0), Some(10.0)), Some(3.0));
        assert_eq!(times_floor(Some(30.0), Some(0.0)), None);
        assert_eq!(times_floor(None, Some(10.0)), None);
        assert_eq!(times_floor(Some(30.0), None), None);
    }

    #[test]
    fn the_table_and_the_rounds_summary_carry_multiples_of_the_floor() {
        let table = round(10.0, 30.0, 35.0).to_string();
        let line = |system: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!("| {system} |")))
                .unwrap_or_else(|| panic!("no {system} line in\n{table}"))
                .to_owned()
        };
        assert!(
            line("simgate").contains("| 30.0 | 3.00× | 1.000 |"),
            "{table}"
        );
        assert!(line("nginx").contains("| 35.0 | 3.50× |"), "{table}");
        assert!(line(FLOOR).contains("| 10.0 | 1.00× | - |"), "{table}");
        assert!(line("direct").contains("| - | - |"), "{table}");
        assert!(
            table.contains("counted at the devices"),
            "footnote: {table}"
        );

        // × floor per round is taken within the round; the median is over the rounds.
        let summary = rounds_summary(&[
            round(10.0, 30.0, 35.0),
            round(8.0, 32.0, 36.0),
            round(12.0, 30.0, 30.0),
        ]);
        let simgate = summary
            .lines()
            .find(|l| l.starts_with("| simgate |"))
            .expect("simgate line");
        assert_eq!(
            simgate,
            "| simgate | 30.0 / 32.0 / 30.0 | 30.0 | 1.17 / 1.12 / 1.00 | 1.12× | 3.00 / 4.00 / 2.50 | 3.00× | 1.000 / 1.000 / 1.000 |"
        );
        assert!(
            summary.contains("| floor | 10.0 / 8.0 / 12.0 | 10.0 |")
                && summary.contains("| 1.00 / 1.00 / 1.00 | 1.00× |"),
            "{summary}"
        );
        assert!(
            !summary.contains("| direct |"),
            "no proxy, no line: {summary}"
        );
    }

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
