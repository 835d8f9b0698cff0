//! The internal probe of every destination: every `probe.interval` the control thread opens a
//! TCP connection to the destination's current addresses, does the TLS handshake with the
//! destination's own TLS config (client certificate included), then the cheapest exchange its
//! protocol has — `HEAD /` over HTTP/1.1 for `https` and the HTTP cloud adapters (any status
//! proves TCP, TLS and HTTP work), MQTT CONNECT, PINGREQ/PINGRESP and DISCONNECT for `mqtts` and
//! the MQTT cloud forms — and records whether each stage worked and how long it took.
//!
//! ```text
//!  control thread (tokio)
//!  driver::run(): every interval ──► Board::start_due ──► driver::probe (task: tokio TCP,
//!        tokio-rustls, hyper HEAD or MQTT over proto::mqtt) ──Report──► Board::complete
//!        StateChange ──► one log line;  /metrics ◄── render_metrics;  /admin/probes ◄── json
//! ```
//!
//! [`Board`] is the pure part (no IO, no clock: time is passed in): one entry per destination of
//! the served plan, when its next probe is due, whether one is running, the last [`Report`],
//! the failure streak and the totals. It decides when a result is a *state change* (the first
//! result, ok → failed, failed → ok), which is all that gets logged: a destination that keeps
//! failing logs once, not every interval. A reload rebuilds the board and keeps the history of
//! every destination whose name stays; results of probes started under an older plan are
//! dropped.
//!
//! [`driver`] holds the IO and the loop, like [`super::resolve`] and [`super::tokens`].
//!
//! The end-to-end probe (`[probe.e2e]`, [`e2e`]) is the exception to "no device traffic": the
//! control thread connects to one of simgate's own listeners as a synthetic device and sends
//! numbered messages that travel through a shard to the cloud and back (an MQTT broker's
//! delivery to the device's subscription, [`e2e_mqtt`], or an HTTPS server's echo of the
//! request body, [`e2e_http`]); its board lives in [`Board`] (for `/metrics` and
//! `/admin/probes`), its loop in [`driver::run_e2e`].
//!
//! What this does not do: carry device traffic or touch a shard (probes never use the shards'
//! pools, counters or reactors, so they never count as device traffic), resolve names (the
//! probe uses the addresses the shards were last given; re-resolution is
//! [`super::resolve`]'s), keep stage-time distributions (the gauges hold the last probe's stage
//! times; only the whole round trip of passing probes has a histogram), or put secrets in its
//! output: errors name the stage and the kind of failure, never a token or a password.

pub mod driver;
pub mod e2e;
pub mod e2e_device;
pub mod e2e_http;
pub mod e2e_mqtt;
pub mod mqtt_io;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::metrics::BUCKETS_SECONDS;
use crate::policy::{DestinationId, Plan};

/// A stage of a probe, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// TCP connect to the first address that answers.
    Connect,
    /// The TLS handshake.
    Tls,
    /// The protocol exchange (HTTP HEAD, MQTT CONNECT + PINGREQ + DISCONNECT).
    Exchange,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 3] = [Stage::Connect, Stage::Tls, Stage::Exchange];

    /// The label value (`connect`, `tls`, `exchange`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Exchange => "exchange",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every stage worked. `detail` says what the exchange answered (`HTTP 404`,
    /// `CONNACK accepted in 0.4 ms, PINGRESP in 0.2 ms`).
    Ok {
        /// What the exchange answered.
        detail: String,
        /// The HTTP status of a HEAD probe.
        http_status: Option<u16>,
    },
    /// `stage` failed; the stages before it worked.
    Failed {
        /// The stage that failed.
        stage: Stage,
        /// Why (the kind of failure; never a secret).
        error: String,
    },
    /// The destination authenticates with a token the control thread has not minted yet: TCP
    /// and TLS were probed, the exchange was not attempted (a CONNECT without a credential
    /// would only be refused).
    NoCredential,
}

impl Outcome {
    /// Whether the whole path worked.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    /// Whether `stage` worked in this probe.
    pub fn stage_ok(&self, stage: Stage) -> bool {
        match self {
            Outcome::Ok { .. } => true,
            Outcome::Failed { stage: failed, .. } => stage < *failed,
            Outcome::NoCredential => stage < Stage::Exchange,
        }
    }

    /// The `result` of `/admin/probes`: `ok`, `failed` or `no_credential`.
    pub fn result_name(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::NoCredential => "no_credential",
        }
    }

    /// The error text (`None` when ok).
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::Failed { stage, error } => Some(format!("{}: {error}", stage.name())),
            Outcome::NoCredential => Some(
                "exchange: no credential: the destination's token has not been minted yet".into(),
            ),
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// How long each stage took (`None`: not reached).
    pub stage_times: [Option<Duration>; 3],
    /// How it ended.
    pub outcome: Outcome,
    /// When it started (wall clock, for `/admin/probes`).
    pub started_at: SystemTime,
}

impl Report {
    /// How long `stage` took, if it ran.
    pub fn time(&self, stage: Stage) -> Option<Duration> {
        self.stage_times[stage.index()]
    }
}

/// A probe result worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// The first probe of a destination failed, or a working one started failing.
    Failed {
        /// The destination.
        name: String,
        /// The error text.
        error: String,
    },
    /// The first probe of a destination worked, or a failing one works again.
    Ok {
        /// The destination.
        name: String,
        /// Failed probes before this one (0 for a first probe).
        after_failures: u32,
    },
}

/// A probe to run, as handed out by [`Board::start_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Index of the entry, for [`Board::complete`].
    pub index: usize,
    /// The board's epoch (a rebuild starts a new one).
    pub epoch: u64,
    /// The destination to probe, in [`Board::plan`].
    pub destination: DestinationId,
}

/// One destination's probe history.
#[derive(Debug, Clone, Default)]
struct History {
    last: Option<Report>,
    consecutive_failures: u32,
    ok_total: u64,
    failed_total: u64,
    round_trips: RoundTrips,
}

/// Round trips (all stages) of passing probes, in the `/metrics` latency buckets: plain
/// counters and an exact sum (a handful of samples per interval needs no HDR histogram).
#[derive(Debug, Clone, Default)]
struct RoundTrips {
    /// Samples at or below each bound of [`BUCKETS_SECONDS`] (cumulative, as exposed).
    buckets: [u64; BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

impl RoundTrips {
    fn record(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS_SECONDS) {
            if s <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += s;
    }
}

#[derive(Debug)]
struct Entry {
    destination: DestinationId,
    name: String,
    next_due: Instant,
    in_flight: bool,
    history: History,
}

/// Every destination's probe schedule and history, for one plan at a time.
#[derive(Debug)]
pub struct Board {
    plan: Arc<Plan>,
    epoch: u64,
    entries: Vec<Entry>,
    /// The end-to-end probe, when `[probe.e2e]` was configured at start (a reload does not
    /// change it).
    e2e: Option<e2e::E2eBoard>,
}

impl Board {
    /// A board for every destination of `plan` (none when probes are off); the first probes
    /// are due one interval after `now`, like every later one.
    pub fn new(plan: Arc<Plan>, now: Instant) -> Board {
        let mut board = Board {
            plan: plan.clone(),
            epoch: 0,
            entries: Vec::new(),
            e2e: plan.probe.e2e.clone().map(e2e::E2eBoard::new),
        };
        board.rebuild(plan, now);
        board
    }

    /// Switch to `plan` (a reload): destinations that keep their name keep their history and
    /// schedule; new ones are due one interval after `now`; running probes' results are
    /// dropped (each destination is probed again under the new plan).
    pub fn rebuild(&mut self, plan: Arc<Plan>, now: Instant) {
        let mut old: BTreeMap<String, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.name.clone(), e))
            .collect();
        self.epoch += 1;
        self.entries = match plan.probe.interval {
            None => Vec::new(),
            Some(interval) => plan
                .destinations
                .iter()
                .map(|d| {
                    let kept = old.remove(&d.name);
                    let next_due = kept
                        .as_ref()
                        .filter(|e| !e.in_flight)
                        .map_or(now + interval, |e| e.next_due.min(now + interval));
                    Entry {
                        destination: d.id,
                        name: d.name.clone(),
                        next_due,
                        in_flight: false,
                        history: kept.map(|e| e.history).unwrap_or_default(),
                    }
                })
                .collect(),
        };
        self.plan = plan;
    }

    /// The plan this board probes.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The end-to-end probe's board, when configured.
    pub fn e2e(&self) -> Option<&e2e::E2eBoard> {
        self.e2e.as_ref()
    }

    /// The end-to-end probe's board, when configured, to update.
    pub fn e2e_mut(&mut self) -> Option<&mut e2e::E2eBoard> {
        self.e2e.as_mut()
    }

    /// Probes due at `now` that are not running; each is marked running until its
    /// [`Board::complete`].
    pub fn start_due(&mut self, now: Instant) -> Vec<Due> {
        let epoch = self.epoch;
        let mut out = Vec::new();
        for (index, e) in self.entries.iter_mut().enumerate() {
            if !e.in_flight && e.next_due <= now {
                e.in_flight = true;
                out.push(Due {
                    index,
                    epoch,
                    destination: e.destination,
                });
            }
        }
        out
    }

    /// When the next probe that is not running falls due (`None`: nothing to probe or all
    /// running).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|e| !e.in_flight)
            .map(|e| e.next_due)
            .min()
    }

    /// Record the report of probe `due`, finished at `now`; the next one is due one interval
    /// after `now` (probes of one destination never overlap). `Some` when the result is worth
    /// a log line; `None` as well for a probe of an older plan (dropped).
    pub fn complete(&mut self, due: Due, report: Report, now: Instant) -> Option<StateChange> {
        if due.epoch != self.epoch {
            return None;
        }
        let interval = self.plan.probe.interval?;
        let e = self.entries.get_mut(due.index)?;
        e.in_flight = false;
        e.next_due = now + interval;
        let h = &mut e.history;
        let was_ok = h.last.as_ref().map(|r| r.outcome.is_ok());
        let change = if report.outcome.is_ok() {
            let after = h.consecutive_failures;
            h.ok_total += 1;
            h.round_trips
                .record(report.stage_times.iter().flatten().sum());
            h.consecutive_failures = 0;
            (was_ok != Some(true)).then(|| StateChange::Ok {
                name: e.name.clone(),
                after_failures: after,
            })
        } else {
            h.failed_total += 1;
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            (was_ok != Some(false)).then(|| StateChange::Failed {
                name: e.name.clone(),
                error: report.outcome.error().unwrap_or_default(),
            })
        };
        h.last = Some(report);
        change
    }

    /// Append the probe families to a Prometheus exposition: per destination (bounded by the
    /// configuration), the last probe's success and time per stage, the totals by result, and
    /// the failure streak.
    pub fn render_metrics(&self, w: &mut String) {
        if let Some(e2e) = &self.e2e {
            e2e.render_metrics(w);
        }
        if self.entries.is_empty() {
            return;
        }
        // Destination names are [a-z0-9_-]: nothing to escape in the label value.
        family(
            w,
            "simgate_probe_success",
            "Whether the last internal probe of the destination passed the stage (1) or not (0)",
            "gauge",
        );
        for e in &self.entries {
            if let Some(r) = &e.history.last {
                for s in Stage::ALL {
                    let v = u8::from(r.outcome.stage_ok(s));
                    let _ = writeln!(
                        w,
                        "simgate_probe_success{{destination=\"{}\",stage=\"{}\"}} {v}",
                        e.name,
                        s.name()
                    );
                }
            }
        }
        family(
            w,
            "simgate_probe_duration_seconds",
            "Time each stage of the last internal probe of the destination took",
            "gauge",
        );
        for e in &self.entries {
            if let Some(r) = &e.history.last {
                for s in Stage::ALL {
                    if let Some(t) = r.time(s) {
                        let _ = writeln!(
                            w,
                            "simgate_probe_duration_seconds{{destination=\"{}\",stage=\"{}\"}} {}",
                            e.name,
                            s.name(),
                            t.as_secs_f64()
                        );
                    }
                }
            }
        }
        family(
            w,
            "simgate_probe_total",
            "Internal probes of the destination, by result (no_credential counts as failed)",
            "counter",
        );
        for e in &self.entries {
            let h = &e.history;
            let _ = writeln!(
                w,
                "simgate_probe_total{{destination=\"{}\",result=\"ok\"}} {}",
                e.name, h.ok_total
            );
            let _ = writeln!(
                w,
                "simgate_probe_total{{destination=\"{}\",result=\"failed\"}} {}",
                e.name, h.failed_total
            );
        }
        family(
            w,
            "simgate_probe_round_trip_seconds",
            "Round trips (connect, TLS handshake and exchange) of the destination's passing probes",
            "histogram",
        );
        for e in &self.entries {
            let rt = &e.history.round_trips;
            for (count, le) in rt.buckets.iter().zip(BUCKETS_SECONDS) {
                let _ = writeln!(
                    w,
                    "simgate_probe_round_trip_seconds_bucket{{destination=\"{}\",le=\"{le}\"}} {count}",
                    e.name
                );
            }
            let _ = writeln!(
                w,
                "simgate_probe_round_trip_seconds_bucket{{destination=\"{}\",le=\"+Inf\"}} {}",
                e.name, rt.count
            );
            let _ = writeln!(
                w,
                "simgate_probe_round_trip_seconds_sum{{destination=\"{}\"}} {}",
                e.name, rt.sum_seconds
            );
            let _ = writeln!(
                w,
                "simgate_probe_round_trip_seconds_count{{destination=\"{}\"}} {}",
                e.name, rt.count
            );
        }
        family(
            w,
            "simgate_probe_consecutive_failures",
            "Internal probes of the destination that failed in a row (0 after a passing one)",
            "gauge",
        );
        for e in &self.entries {
            let _ = writeln!(
                w,
                "simgate_probe_consecutive_failures{{destination=\"{}\"}} {}",
                e.name, e.history.consecutive_failures
            );
        }
    }

    /// The `/admin/probes` answer: the settings and, per destination, the last result, its
    /// stage times, error text, when it ran, the failure streak and the totals.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let destinations: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                let dest = self.plan.destinations.get(usize::from(e.destination.0));
                let h = &e.history;
                let last = h.last.as_ref().map(|r| {
                    let mut stages = serde_json::Map::new();
                    for s in Stage::ALL {
                        stages.insert(
                            s.name().into(),
                            serde_json::json!({
                                "ok": r.outcome.stage_ok(s),
                                "ms": r.time(s).map(ms),
                            }),
                        );
                    }
                    let (detail, http_status, failed_stage) = match &r.outcome {
                        Outcome::Ok {
                            detail,
                            http_status,
                        } => (Some(detail.clone()), *http_status, None),
                        Outcome::Failed { stage, .. } => (None, None, Some(stage.name())),
                        Outcome::NoCredential => (None, None, Some(Stage::Exchange.name())),
                    };
                    serde_json::json!({
                        "result": r.outcome.result_name(),
                        "failed_stage": failed_stage,
                        "error": r.outcome.error(),
                        "detail": detail,
                        "http_status": http_status,
                        "http_status_class": http_status.map(|s| format!("{}xx", s / 100)),
                        "at": super::usage::rfc3339(r.started_at),
                        "stages": stages,
                    })
                });
                serde_json::json!({
                    "destination": e.name,
                    "adapter": dest.map(|d| d.adapter.kind().config_name()),
                    "endpoint": dest.map(|d| d.endpoint.as_str()),
                    "result": h.last.as_ref().map_or("pending", |r| r.outcome.result_name()),
                    "consecutive_failures": h.consecutive_failures,
                    "ok_total": h.ok_total,
                    "failed_total": h.failed_total,
                    "running": e.in_flight,
                    "last": last,
                })
            })
            .collect();
        serde_json::json!({
            "interval_ms": self.plan.probe.interval.map(|d| d.as_millis() as u64),
            "timeout_ms": self.plan.probe.timeout.as_millis() as u64,
            "destinations": destinations,
            "e2e": self.e2e.as_ref().map(e2e::E2eBoard::json),
        })
    }
}

fn family(w: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests;
