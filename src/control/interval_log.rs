//! HdrHistogram interval logs of the per-destination latency histograms: every
//! `metrics.interval_log_period` the control thread hands [`IntervalLog::tick`] the merged,
//! cumulative histograms; it keeps what each series gained since the last tick (one interval
//! histogram per destination, [`Latency`] and [`Protocol`]), compressed, for the last
//! `metrics.interval_log_keep` intervals. `GET /histograms/{name}/log?destination=…` answers
//! them in HdrHistogram's interval log format (the V2 compressed histogram encoding, what
//! HistogramLogProcessor, HistogramLogAnalyzer and HdrHistogram_py's `HistogramLogReader`
//! read) — whole latency curves over time, where `/metrics` has fixed buckets and
//! `/histograms/{name}` one curve since start.
//!
//! Kept compressed (`V2DeflateSerializer`, typically 100 bytes to a few KB per series and
//! interval) because an uncompressed 1 µs..60 s histogram is ~140 KB. Intervals with no samples
//! of a series are written as empty histograms, so a log's timeline has no gaps.
//!
//! What this module does not do: take snapshots from the shards or run the timer (the control
//! thread does, in `control::interval_log_loop`), or route and authenticate requests.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::stats::latency::new_latency_histogram;
use crate::stats::{DestinationLatencies, Latency, Protocol};

/// What one interval of one series gained, compressed.
#[derive(Debug)]
struct Series {
    destination: String,
    latency: Latency,
    protocol: Protocol,
    /// The interval histogram in the V2 deflate encoding.
    encoded: Vec<u8>,
}

/// One closed interval: its bounds relative to the log's base time, and the series that had
/// samples in it.
#[derive(Debug)]
struct Interval {
    start: Duration,
    length: Duration,
    series: Vec<Series>,
}

/// The interval logs of every latency series, for the last `keep` intervals.
#[derive(Debug)]
pub struct IntervalLog {
    keep: usize,
    /// The log's StartTime and BaseTime (when the recorder started); interval starts are
    /// offsets from it.
    base: SystemTime,
    /// The offset of the last tick and the cumulative histograms it saw.
    last: (Duration, DestinationLatencies),
    intervals: VecDeque<Interval>,
    /// Series whose histogram could not be encoded (not expected; counted, never fatal).
    pub encode_failures: u64,
}

impl IntervalLog {
    /// An empty log starting at `base`, keeping the last `keep` intervals. The first interval
    /// runs from `base` to the first tick.
    pub fn new(base: SystemTime, keep: usize) -> IntervalLog {
        IntervalLog {
            keep: keep.max(1),
            base,
            last: (Duration::ZERO, DestinationLatencies::default()),
            intervals: VecDeque::new(),
            encode_failures: 0,
        }
    }

    /// Intervals kept now.
    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    /// True before the first tick.
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// Bytes the kept intervals' encoded histograms take.
    pub fn encoded_bytes(&self) -> usize {
        self.intervals
            .iter()
            .flat_map(|i| &i.series)
            .map(|s| s.encoded.len())
            .sum()
    }

    /// Close the interval ending at `now`, given the merged cumulative histograms: each
    /// series' interval histogram is its cumulative histogram minus the one of the last tick.
    /// A series whose counts went down (its destination left the configuration and came back,
    /// which restarts its counts) is taken whole.
    pub fn tick(&mut self, now: SystemTime, cumulative: DestinationLatencies) {
        let offset = now.duration_since(self.base).unwrap_or_default();
        let (last_offset, last) = &self.last;
        let start = (*last_offset).min(offset);
        let mut series = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        for d in &cumulative.destinations {
            let before = last.get(&d.name);
            for latency in Latency::ALL {
                for protocol in Protocol::ALL {
                    let Some(now_h) = d.get(latency, protocol) else {
                        continue;
                    };
                    let mut delta = now_h.clone();
                    if let Some(prev) = before.and_then(|b| b.get(latency, protocol)) {
                        if prev.len() > now_h.len() || delta.subtract(prev).is_err() {
                            delta = now_h.clone();
                        }
                    }
                    if delta.is_empty() {
                        continue;
                    }
                    let mut encoded = Vec::new();
                    if serializer.serialize(&delta, &mut encoded).is_err() {
                        self.encode_failures += 1;
                        continue;
                    }
                    series.push(Series {
                        destination: d.name.clone(),
                        latency,
                        protocol,
                        encoded,
                    });
                }
            }
        }
        self.intervals.push_back(Interval {
            start,
            length: offset - start,
            series,
        });
        while self.intervals.len() > self.keep {
            self.intervals.pop_front();
        }
        self.last = (offset, cumulative);
    }

    /// The interval log of `latency` for `destination`, one line per kept interval (oldest
    /// first), both protocols merged when `protocol` is `None`. Values are microseconds;
    /// `Interval_Max` is in milliseconds (`MaxValueDivisor` 1000).
    pub fn render(
        &self,
        latency: Latency,
        destination: &str,
        protocol: Option<Protocol>,
    ) -> Result<String, String> {
        let mut out: Vec<u8> = Vec::with_capacity(256 + 200 * self.intervals.len());
        let mut serializer = V2DeflateSerializer::new();
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "[simgate {} interval log: {} of destination {destination:?}, protocol {}; \
                 values in microseconds]",
                env!("CARGO_PKG_VERSION"),
                latency.name(),
                protocol.map_or("http+mqtt", Protocol::label),
            ))
            .with_start_time(self.base)
            .with_base_time(self.base)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| e.to_string())?;
        let mut deserializer = Deserializer::new();
        for interval in &self.intervals {
            let mut h = new_latency_histogram();
            for s in interval.series.iter().filter(|s| {
                s.destination == destination
                    && s.latency == latency
                    && protocol.is_none_or(|p| p == s.protocol)
            }) {
                let part: Histogram<u64> = deserializer
                    .deserialize(&mut s.encoded.as_slice())
                    .map_err(|e| format!("stored interval histogram unreadable: {e:?}"))?;
                h.add(&part).map_err(|e| format!("{e:?}"))?;
            }
            writer
                .write_histogram(&h, interval.start, interval.length, None)
                .map_err(|e| e.to_string())?;
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn cumulative(samples: &[(&str, Latency, Protocol, u64, u64)]) -> DestinationLatencies {
        let mut d = DestinationLatencies::default();
        d.set_destinations(["alpha", "beta"]);
        for &(name, latency, protocol, us, times) in samples {
            for _ in 0..times {
                let index = usize::from(name == "beta");
                d.record(index, name, latency, protocol, us);
            }
        }
        d
    }

    /// (start s, length s, total count, max ms) of each interval line, read back with the
    /// crate's own log reader and deserializer.
    fn read_back(text: &str) -> Vec<(f64, f64, u64, f64)> {
        let mut deserializer = Deserializer::new();
        IntervalLogIterator::new(text.as_bytes())
            .filter_map(|e| match e.expect("log parses") {
                LogEntry::Interval(i) => {
                    let bytes = base64_decode(i.encoded_histogram());
                    let h: Histogram<u64> =
                        deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                    Some((
                        i.start_timestamp().as_secs_f64(),
                        i.duration().as_secs_f64(),
                        h.len(),
                        i.max(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn intervals_hold_what_each_tick_added() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::new(base, 10);
        let rd = Latency::RequestDuration;
        let (http, mqtt) = (Protocol::Http, Protocol::Mqtt);
        log.tick(
            base + Duration::from_secs(10),
            cumulative(&[("alpha", rd, http, 100, 3), ("alpha", rd, mqtt, 2_000, 1)]),
        );
        // Next interval: alpha http gains 5 samples of 4 ms, beta gets its first.
        log.tick(
            base + Duration::from_secs(20),
            cumulative(&[
                ("alpha", rd, http, 100, 3),
                ("alpha", rd, http, 4_000, 5),
                ("alpha", rd, mqtt, 2_000, 1),
                ("beta", rd, http, 50, 2),
            ]),
        );
        let all = read_back(&log.render(rd, "alpha", None).unwrap());
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0, all[0].1, all[0].2), (0.0, 10.0, 4));
        assert_eq!((all[1].0, all[1].1, all[1].2), (10.0, 10.0, 5));
        assert!((all[1].3 - 4.0).abs() < 0.01, "max in ms: {}", all[1].3);
        let mqtt_only = read_back(&log.render(rd, "alpha", Some(mqtt)).unwrap());
        assert_eq!(
            mqtt_only.iter().map(|r| r.2).collect::<Vec<_>>(),
            [1, 0],
            "an interval without samples is an empty line, not a gap"
        );
        let beta = read_back(&log.render(rd, "beta", None).unwrap());
        assert_eq!(beta.iter().map(|r| r.2).collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn header_names_the_series_and_times() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::new(base, 10);
        log.tick(base + Duration::from_secs(1), cumulative(&[]));
        let text = log
            .render(Latency::UpstreamRtt, "alpha", Some(Protocol::Http))
            .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("upstream_rtt of destination \"alpha\", protocol http"));
        assert_eq!(
            lines[1],
            "#[StartTime: 1700000000.000 (seconds since epoch)]"
        );
        assert_eq!(
            lines[2],
            "#[BaseTime: 1700000000.000 (seconds since epoch)]"
        );
        assert_eq!(lines[3], "#[MaxValueDivisor: 1000.000]");
        assert!(lines[4].starts_with("0.000,1.000,0.000,"), "{}", lines[4]);
    }

    #[test]
    fn keeps_the_last_intervals_and_survives_a_restarted_series() {
        let base = SystemTime::UNIX_EPOCH;
        let mut log = IntervalLog::new(base, 2);
        let rd = Latency::RequestDuration;
        log.tick(
            base + Duration::from_secs(1),
            cumulative(&[("alpha", rd, Protocol::Http, 10, 7)]),
        );
        // alpha left the configuration and came back: its counts restarted at 2.
        log.tick(
            base + Duration::from_secs(2),
            cumulative(&[("alpha", rd, Protocol::Http, 10, 2)]),
        );
        log.tick(
            base + Duration::from_secs(3),
            cumulative(&[("alpha", rd, Protocol::Http, 10, 3)]),
        );
        assert_eq!(log.len(), 2);
        let rows = read_back(&log.render(rd, "alpha", None).unwrap());
        assert_eq!(
            rows.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            [(1.0, 2), (2.0, 1)]
        );
        assert!(log.encoded_bytes() > 0);
        assert_eq!(log.encode_failures, 0);
    }
}
