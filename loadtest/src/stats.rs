//! What a run measured: counters, errors by kind, latency histograms, and the report built
//! from them.
//!
//! Device tasks record into one [`Recorder`] (a mutex around the current interval; the load
//! tester is a client, one short lock per message is far below its own syscall cost). Once a
//! second the run loop takes the interval ([`Recorder::take_interval`]), prints a progress line,
//! appends it to the HdrHistogram log and folds it into the run's [`Totals`].
//!
//! Counting rules: `sent` counts messages written (or, for one-connection-per-request HTTP,
//! attempted); every answer lands in `answered` and the latency histogram (microseconds from
//! the INTENDED send time); `ok` counts successful answers (HTTP 2xx, MQTT PUBACK success, or a
//! QoS 0 PUBLISH handed to the kernel); failures are counted per [`ErrorKind`]. Messages still
//! in flight when the run ends are `sent` only.
//!
//! Loss, duplicate and reorder counts and end-to-end latency come from the sink's
//! [`crate::tracker`] and are attached to the [`Report`] as [`Report::delivery`].
//!
//! What it does NOT do: per-device statistics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::tracker::DeliverySummary;

/// Highest latency the histograms resolve (one hour in microseconds); larger values saturate.
pub const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Why a message or connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Binding the device's source address failed.
    Bind,
    /// TCP connect refused or failed.
    Connect,
    /// TCP connect (or MQTT CONNACK) did not complete within the timeout.
    ConnectTimeout,
    /// No answer within the timeout.
    Timeout,
    /// The gateway closed the connection (mid-exchange, or while the device was idle).
    Closed,
    /// A socket read or write failed.
    Io,
    /// The answer could not be parsed or had unsupported framing.
    Malformed,
    /// HTTP status outside 2xx, or an MQTT CONNACK/PUBACK with a failure reason code.
    Rejected,
}

/// Counters of one interval or of the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Messages sent.
    pub sent: u64,
    /// Answers received (each one is a latency sample).
    pub answered: u64,
    /// Successful answers.
    pub ok: u64,
    /// Messages sent that then failed (timeout, IO error, close, bad answer) without an answer.
    pub failed: u64,
    /// Connections established.
    pub connects: u64,
    /// Failures by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// HTTP answers by status code (empty for MQTT).
    pub statuses: BTreeMap<u16, u64>,
}

impl Counts {
    /// Sum of all errors.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.ok += other.ok;
        self.failed += other.failed;
        self.connects += other.connects;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += n;
        }
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += n;
        }
    }
}

/// One interval's counters and latencies.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Counters.
    pub counts: Counts,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
}

/// Why a histogram could not be created (only with impossible bounds; kept typed anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramError;

impl std::fmt::Display for HistogramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("latency histogram creation failed")
    }
}

impl std::error::Error for HistogramError {}

/// An empty latency histogram (1 µs .. 1 h, 3 significant digits).
pub fn new_latency_histogram() -> Result<Histogram<u64>, HistogramError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).map_err(|_| HistogramError)
}

/// Where device tasks record; shared by all of them.
#[derive(Debug)]
pub struct Recorder {
    interval: Mutex<Interval>,
    open: AtomicU64,
    peak_open: AtomicU64,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Result<Self, HistogramError> {
        Ok(Self {
            interval: Mutex::new(Interval {
                counts: Counts::default(),
                latency: new_latency_histogram()?,
            }),
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
        })
    }

    /// A message left.
    pub fn sent(&self) {
        self.interval.lock().counts.sent += 1;
    }

    /// An answer arrived `latency_micros` after the message's intended send time.
    pub fn answered(&self, latency_micros: u64, ok: bool, http_status: Option<u16>) {
        let mut interval = self.interval.lock();
        interval.latency.saturating_record(latency_micros.max(1));
        let counts = &mut interval.counts;
        counts.answered += 1;
        if ok {
            counts.ok += 1;
        }
        if let Some(status) = http_status {
            *counts.statuses.entry(status).or_insert(0) += 1;
        }
        if !ok {
            *counts.errors.entry(ErrorKind::Rejected).or_insert(0) += 1;
        }
    }

    /// Something failed that was not a sent message (a connect, an idle connection).
    pub fn error(&self, kind: ErrorKind) {
        *self.interval.lock().counts.errors.entry(kind).or_insert(0) += 1;
    }

    /// A sent message failed without an answer.
    pub fn message_failed(&self, kind: ErrorKind) {
        let mut interval = self.interval.lock();
        interval.counts.failed += 1;
        *interval.counts.errors.entry(kind).or_insert(0) += 1;
    }

    /// A connection was established; it counts as open until the guard drops.
    pub fn connected(&self) -> OpenConnection<'_> {
        self.interval.lock().counts.connects += 1;
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        OpenConnection { recorder: self }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Most connections open at once so far.
    pub fn peak_open_connections(&self) -> u64 {
        self.peak_open.load(Ordering::Relaxed)
    }

    /// Takes the counters and latencies recorded since the last call, leaving them empty.
    pub fn take_interval(&self) -> Interval {
        let mut interval = self.interval.lock();
        let taken = interval.clone();
        interval.counts = Counts::default();
        interval.latency.reset();
        taken
    }
}

/// Marks one open connection; dropping it closes the mark.
#[derive(Debug)]
pub struct OpenConnection<'a> {
    recorder: &'a Recorder,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.recorder.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The run so far: every interval folded together.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Counters.
    pub counts: Counts,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
}

impl Totals {
    /// Empty totals.
    pub fn new() -> Result<Self, HistogramError> {
        Ok(Self {
            counts: Counts::default(),
            latency: new_latency_histogram()?,
        })
    }

    /// Folds `interval` in.
    pub fn add(&mut self, interval: &Interval) {
        self.counts.add(&interval.counts);
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&interval.latency);
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencySummary {
    /// Percentiles of `histogram` (all zero when empty).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            mean: if histogram.is_empty() {
                0.0
            } else {
                histogram.mean()
            },
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// The gateway process's resource use, from `--pid`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GatewayUsage {
    /// Process id sampled.
    pub pid: u32,
    /// CPU seconds (user + system) used during the run.
    pub cpu_seconds: f64,
    /// Average CPU use in percent of one core.
    pub cpu_percent: f64,
    /// RSS when the run started, KiB.
    pub rss_kib_start: u64,
    /// RSS when the run ended, KiB.
    pub rss_kib_end: u64,
    /// Largest RSS sampled, KiB.
    pub rss_kib_peak: u64,
    /// `(peak RSS - start RSS) / peak open connections`, bytes; the memory-per-connection
    /// figure of idle-fleet runs. `None` when no connection was open.
    pub rss_bytes_per_connection: Option<u64>,
}

/// One per-second progress line, kept in the JSON report too.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProgressLine {
    /// Seconds since the run started (end of the interval).
    pub t: f64,
    /// Messages sent in the interval.
    pub sent: u64,
    /// Answers per second in the interval.
    pub answered_per_s: f64,
    /// Errors in the interval.
    pub errors: u64,
    /// Median latency in the interval, µs.
    pub p50_us: u64,
    /// 99th percentile latency in the interval, µs.
    pub p99_us: u64,
    /// Connections open at the end of the interval.
    pub open: u64,
    /// Gateway CPU in the interval, percent of one core (with `--pid`).
    pub gateway_cpu_percent: Option<f64>,
    /// Gateway RSS at the end of the interval, KiB (with `--pid`).
    pub gateway_rss_kib: Option<u64>,
}

impl std::fmt::Display for ProgressLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "t={:>6.1}s sent={:<7} answered/s={:<9.1} errors={:<5} p50={:.3}ms p99={:.3}ms open={}",
            self.t,
            self.sent,
            self.answered_per_s,
            self.errors,
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.open
        )?;
        if let (Some(cpu), Some(rss)) = (self.gateway_cpu_percent, self.gateway_rss_kib) {
            write!(f, " gw_cpu={cpu:.1}% gw_rss={:.1}MiB", rss as f64 / 1024.0)?;
        }
        Ok(())
    }
}

/// The result of a run (serialized as the `--json` report).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Gateway address driven.
    pub target: String,
    /// `http` or `mqtt`.
    pub protocol: String,
    /// Devices in the fleet.
    pub devices: u64,
    /// Seconds the run lasted.
    pub duration_s: f64,
    /// Target message rate over the fleet (0 = idle).
    pub target_rate_per_s: f64,
    /// Answers per second over the run.
    pub achieved_rate_per_s: f64,
    /// Counters over the run.
    pub counts: Counts,
    /// Messages sent but neither answered nor failed when the run ended.
    pub in_flight_at_end: u64,
    /// Latency over the run, µs from the intended send time.
    pub latency_us: LatencySummary,
    /// Connections open when the run ended.
    pub open_at_end: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Gateway CPU and memory, with `--pid`.
    pub gateway: Option<GatewayUsage>,
    /// Per-second progress.
    pub intervals: Vec<ProgressLine>,
    /// What the sink received (loss, duplicates, reordering, end-to-end latency), when the run
    /// had a built-in sink or subscriber.
    pub delivery: Option<DeliverySummary>,
    /// The device-side counts and latency after [`crate::fleet::RunOptions::mark_after`], when
    /// it was set.
    pub after_mark: Option<AfterMark>,
}

/// What the devices saw after a mark in the run (a warm-up cut made by the fleet itself, for
/// runs with no sink to account deliveries: `simgate-load compare`'s floor row).
#[derive(Debug, Clone, Serialize)]
pub struct AfterMark {
    /// Seconds into the run the mark was taken (0, or a once-a-second tick).
    pub at_s: f64,
    /// Successful answers after the mark.
    pub ok: u64,
    /// Answers after the mark.
    pub answered: u64,
    /// The sampled gateway's CPU clock ticks (user + system) at the mark, with a gateway pid.
    pub gateway_cpu_ticks: Option<u64>,
    /// Latencies (µs from the intended send time) of the answers after the mark.
    #[serde(skip)]
    pub latency: Histogram<u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "scenario {} ({} devices, {}) -> {} for {:.1}s",
            self.scenario, self.devices, self.protocol, self.target, self.duration_s
        )?;
        writeln!(
            f,
            "rate     target {:.1}/s  achieved {:.1}/s",
            self.target_rate_per_s, self.achieved_rate_per_s
        )?;
        writeln!(
            f,
            "messages sent {}  answered {}  ok {}  in-flight-at-end {}",
            c.sent, c.answered, c.ok, self.in_flight_at_end
        )?;
        write!(f, "errors   {}", c.error_total())?;
        for (kind, n) in &c.errors {
            write!(
                f,
                "  {}={n}",
                serde_json::to_string(kind)
                    .unwrap_or_default()
                    .trim_matches('"')
            )?;
        }
        writeln!(f)?;
        if !c.statuses.is_empty() {
            write!(f, "statuses")?;
            for (status, n) in &c.statuses {
                write!(f, "  {status}={n}")?;
            }
            writeln!(f)?;
        }
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "latency  p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms  (n={})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.count
        )?;
        writeln!(
            f,
            "conns    connects {}  open-at-end {}  peak-open {}",
            c.connects, self.open_at_end, self.peak_open
        )?;
        if let Some(g) = &self.gateway {
            write!(
                f,
                "gateway  pid {}  cpu {:.2}s ({:.1}% of a core)  rss start {} KiB  end {} KiB  peak {} KiB",
                g.pid, g.cpu_seconds, g.cpu_percent, g.rss_kib_start, g.rss_kib_end, g.rss_kib_peak
            )?;
            if let Some(per) = g.rss_bytes_per_connection {
                write!(f, "  ~{per} B/connection")?;
            }
            writeln!(f)?;
        }
        if let Some(d) = &self.delivery {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_fold_into_totals_and_reset() {
        let recorder = Recorder::new().expect("recorder");
        recorder.sent();
        recorder.sent();
        recorder.answered(1500, true, Some(200));
        recorder.answered(2500, false, Some(503));
        recorder.message_failed(ErrorKind::Timeout);
        let first = recorder.take_interval();
        assert_eq!(first.counts.sent, 2);
        assert_eq!(first.counts.answered, 2);
        assert_eq!(first.counts.ok, 1);
        assert_eq!(first.counts.failed, 1);
        assert_eq!(first.counts.errors.get(&ErrorKind::Rejected), Some(&1));
        assert_eq!(first.counts.errors.get(&ErrorKind::Timeout), Some(&1));
        assert_eq!(first.counts.statuses.get(&503), Some(&1));
        assert_eq!(first.latency.len(), 2);
        let second = recorder.take_interval();
        assert_eq!(second.counts, Counts::default());
        assert!(second.latency.is_empty());

        let mut totals = Totals::new().expect("totals");
        totals.add(&first);
        totals.add(&first);
        assert_eq!(totals.counts.sent, 4);
        assert_eq!(totals.counts.error_total(), 4);
        assert_eq!(totals.latency.len(), 4);
    }

    #[test]
    fn open_connections_are_tracked_with_their_peak() {
        let recorder = Recorder::new().expect("recorder");
        let a = recorder.connected();
        let b = recorder.connected();
        assert_eq!(recorder.open_connections(), 2);
        drop(a);
        drop(b);
        let _c = recorder.connected();
        assert_eq!(recorder.open_connections(), 1);
        assert_eq!(recorder.peak_open_connections(), 2);
        assert_eq!(recorder.take_interval().counts.connects, 3);
    }

    #[test]
    fn summary_of_an_empty_histogram_is_zero() {
        let summary = LatencySummary::of(&new_latency_histogram().expect("h"));
        assert_eq!(summary.count, 0);
        assert_eq!(summary.max, 0);
        assert_eq!(summary.mean, 0.0);
    }
}
