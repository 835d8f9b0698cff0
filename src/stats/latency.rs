//! Latency histograms by destination and device protocol, per shard: what a shard records on
//! the message path with plain writes, and what the control thread merges by destination name
//! and renders (Prometheus buckets in `control::metrics`, the HDR percentile distribution text
//! here, in [`percentile_distribution`]).
//!
//! A shard's [`DestinationLatencies`] is a `Vec` indexed by the served plan's destination
//! index, rebuilt on reload by destination *name* ([`DestinationLatencies::set_destinations`]):
//! a destination that stays in the configuration keeps its counts across reloads, one that
//! leaves it is dropped. A histogram is allocated on its first sample (an HDR histogram of
//! 1 µs..60 s at 3 significant digits is ~140 KB), so an idle destination or protocol costs
//! nothing, in memory or in snapshots.
//!
//! It does not take time itself (callers pass microseconds), does not know the plan (names
//! only) and holds nothing per SIM: label sets stay bounded by the configuration.

use std::fmt::Write;

use hdrhistogram::Histogram;

use super::Protocol;

/// Lowest value the latency histograms track, in µs.
pub const LOWEST_US: u64 = 1;
/// Highest value the latency histograms track, in µs (60 s; longer samples are clamped).
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant digits of the latency histograms.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram with the bounds above.
pub fn new_latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds.
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// What a per-destination latency histogram measures; also its name in `/metrics`
/// (`simgate_{name}_seconds`) and in `/histograms/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Device-observed time in simgate. HTTP: the device request fully received → the
    /// response head sent to the device. MQTT: a device QoS 1 PUBLISH received → its PUBACK
    /// sent to the device (covering the cloud's acknowledgement).
    RequestDuration,
    /// Upstream round trip: the request (or QoS 1 PUBLISH) written upstream → the response
    /// head (or PUBACK) received from upstream.
    UpstreamRtt,
    /// Upstream TCP connect: socket connect submitted → connected.
    ConnectTcp,
    /// Upstream TLS handshake that was a full handshake: TCP connected → handshake done.
    ConnectTlsFull,
    /// Upstream TLS handshake that resumed a session.
    ConnectTlsResumed,
    /// Time an HTTP/1.1 request or an MQTT session-mode CONNECT waited for an upstream
    /// connection when the pool had no idle one: the miss → a connection in hand (its own
    /// connect, or one returned meanwhile). Checkouts served from the pool at once are not
    /// samples. HTTP/2: a request that found no pooled connection (the miss → a stream handle
    /// on its own new connection or one another request opened), or only connections at their
    /// server's stream limit (→ its stream opened on one of them).
    PoolWait,
    /// Latency simgate adds: [`Latency::RequestDuration`] minus the [`Latency::UpstreamRtt`]
    /// of the same request (HTTP) or QoS 1 PUBLISH (MQTT, both modes).
    GatewayAdded,
    /// Aggregate mode: a device PUBLISH (QoS 0 or 1, and Wills) handed to the shared link →
    /// encoded into the link's outbox for writing (waiting for the link to be up, for room in
    /// the in-flight window, for the publish-rate pacing, or for PUBLISHes queued ahead).
    LinkWait,
}

impl Latency {
    /// Every kind, in exposition order.
    pub const ALL: [Latency; 8] = [
        Latency::RequestDuration,
        Latency::UpstreamRtt,
        Latency::ConnectTcp,
        Latency::ConnectTlsFull,
        Latency::ConnectTlsResumed,
        Latency::PoolWait,
        Latency::GatewayAdded,
        Latency::LinkWait,
    ];

    /// The name in `/histograms/{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Latency::RequestDuration => "request_duration",
            Latency::UpstreamRtt => "upstream_rtt",
            Latency::ConnectTcp => "upstream_connect_tcp",
            Latency::ConnectTlsFull => "upstream_connect_tls_full",
            Latency::ConnectTlsResumed => "upstream_connect_tls_resumed",
            Latency::PoolWait => "pool_wait",
            Latency::GatewayAdded => "gateway_added",
            Latency::LinkWait => "link_wait",
        }
    }

    /// The kind named `name` in `/histograms/{name}`.
    pub fn from_name(name: &str) -> Option<Latency> {
        Latency::ALL.into_iter().find(|l| l.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The latency histograms of one destination, by [`Latency`] and [`Protocol`] (`None`: no
/// sample yet).
#[derive(Debug, Clone)]
pub struct DestinationLatency {
    /// The destination's name (`destination` label).
    pub name: String,
    histograms: [[Option<Histogram<u64>>; Protocol::ALL.len()]; Latency::ALL.len()],
}

impl DestinationLatency {
    /// No samples for destination `name`.
    pub fn new(name: &str) -> DestinationLatency {
        DestinationLatency {
            name: name.to_string(),
            histograms: Default::default(),
        }
    }

    /// Record `us` microseconds (clamped to the histogram's range).
    pub fn record(&mut self, latency: Latency, protocol: Protocol, us: u64) {
        self.histograms[latency.index()][protocol as usize]
            .get_or_insert_with(new_latency_histogram)
            .saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// The histogram of `latency` and `protocol`, if it has samples.
    pub fn get(&self, latency: Latency, protocol: Protocol) -> Option<&Histogram<u64>> {
        self.histograms[latency.index()][protocol as usize].as_ref()
    }

    /// The histogram of `latency` over both protocols, if either has samples.
    pub fn all_protocols(&self, latency: Latency) -> Option<Histogram<u64>> {
        let mut out: Option<Histogram<u64>> = None;
        for h in self.histograms[latency.index()].iter().flatten() {
            match &mut out {
                // Same bounds on both sides: `add` cannot fail.
                Some(o) => {
                    let _ = o.add(h);
                }
                None => out = Some(h.clone()),
            }
        }
        out
    }

    fn merge(&mut self, other: &DestinationLatency) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                if let Some(b) = b {
                    match a {
                        // Same bounds on both sides: `add` cannot fail.
                        Some(a) => {
                            let _ = a.add(b);
                        }
                        None => *a = Some(b.clone()),
                    }
                }
            }
        }
    }
}

/// The latency histograms of a shard's destinations, indexed by the served plan's destination
/// index (after [`DestinationLatencies::merge`]: in first-seen order, one entry per name).
#[derive(Debug, Clone, Default)]
pub struct DestinationLatencies {
    /// One entry per destination.
    pub destinations: Vec<DestinationLatency>,
    /// `metrics.histograms = false`: nothing is recorded or named, and a merge with a
    /// switched-off set is switched off (so the control thread knows not to export the
    /// families at all).
    switched_off: bool,
}

impl DestinationLatencies {
    /// Stop recording for good (`metrics.histograms = false`, read at start): drop what is
    /// kept; [`DestinationLatencies::record`] then costs one branch.
    pub fn switch_off(&mut self) {
        self.switched_off = true;
        self.destinations = Vec::new();
    }

    /// True once [`DestinationLatencies::switch_off`] was called (on this set or on one
    /// merged into it).
    pub fn is_switched_off(&self) -> bool {
        self.switched_off
    }

    /// Index the histograms by `names` (the plan's destinations, in order), keeping the
    /// samples of names already present and dropping those of names no longer listed.
    pub fn set_destinations<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        if self.switched_off {
            return;
        }
        let mut old = std::mem::take(&mut self.destinations);
        self.destinations = names
            .into_iter()
            .map(|name| match old.iter().position(|d| d.name == name) {
                Some(i) => old.swap_remove(i),
                None => DestinationLatency::new(name),
            })
            .collect();
    }

    /// Record `us` microseconds for destination `index` of the served plan. `name` guards a
    /// sample that straddled a reload which moved the destination: it is recorded under its
    /// name, or dropped if the destination left the configuration.
    pub fn record(
        &mut self,
        index: usize,
        name: &str,
        latency: Latency,
        protocol: Protocol,
        us: u64,
    ) {
        if self.switched_off {
            return;
        }
        let slot = match self.destinations.get_mut(index) {
            Some(d) if d.name == name => Some(d),
            _ => self.destinations.iter_mut().find(|d| d.name == name),
        };
        if let Some(d) = slot {
            d.record(latency, protocol, us);
        }
    }

    /// The histograms of destination `name`.
    pub fn get(&self, name: &str) -> Option<&DestinationLatency> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// Add `other` into `self`, destination by destination name.
    pub fn merge(&mut self, other: &DestinationLatencies) {
        self.switched_off |= other.switched_off;
        if self.switched_off {
            self.destinations.clear();
            return;
        }
        for theirs in &other.destinations {
            match self.destinations.iter_mut().find(|d| d.name == theirs.name) {
                Some(mine) => mine.merge(theirs),
                None => self.destinations.push(theirs.clone()),
            }
        }
    }
}

/// `h` (µs) as HdrHistogram's percentile distribution text (Java's
/// `outputPercentileDistribution(out, 5, 1000.0)`, values in milliseconds): the format
/// HdrHistogram's plotter and HistogramLogAnalyzer read. Columns Value, Percentile,
/// TotalCount, 1/(1-Percentile); a footer with the mean, standard deviation, max, total count
/// and the bucket layout.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    const TICKS_PER_HALF_DISTANCE: u32 = 5;
    const SCALE: f64 = 1000.0;
    let mut w = String::with_capacity(8 * 1024);
    let _ = write!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(
                    w,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(w, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let _ = writeln!(w, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]");
    let _ = writeln!(
        w,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_by_name_keeps_exact_counts() {
        let mut a = DestinationLatencies::default();
        a.set_destinations(["one", "two"]);
        let mut b = DestinationLatencies::default();
        // Another shard on a plan with the destinations in another order and one more.
        b.set_destinations(["two", "three", "one"]);
        for _ in 0..3 {
            a.record(0, "one", Latency::RequestDuration, Protocol::Http, 100);
        }
        a.record(1, "two", Latency::UpstreamRtt, Protocol::Mqtt, 50);
        for _ in 0..5 {
            b.record(2, "one", Latency::RequestDuration, Protocol::Http, 2_000);
        }
        b.record(1, "three", Latency::RequestDuration, Protocol::Mqtt, 7);
        let mut merged = DestinationLatencies::default();
        merged.merge(&a);
        merged.merge(&b);
        let one = merged.get("one").unwrap();
        let h = one.get(Latency::RequestDuration, Protocol::Http).unwrap();
        assert_eq!(h.len(), 8);
        assert_eq!(h.count_between(0, 100), 3);
        assert!(one.get(Latency::RequestDuration, Protocol::Mqtt).is_none());
        let two = merged.get("two").unwrap();
        assert_eq!(
            two.get(Latency::UpstreamRtt, Protocol::Mqtt).unwrap().len(),
            1
        );
        assert_eq!(
            merged
                .get("three")
                .unwrap()
                .all_protocols(Latency::RequestDuration)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(merged.destinations.len(), 3);
    }

    #[test]
    fn reload_keeps_samples_of_unchanged_names_and_reroutes_moved_indexes() {
        let mut d = DestinationLatencies::default();
        d.set_destinations(["a", "b"]);
        d.record(1, "b", Latency::RequestDuration, Protocol::Http, 10);
        d.set_destinations(["b", "c"]);
        assert_eq!(d.destinations[0].name, "b");
        // A sample from a request that started before the reload, with b's old index.
        d.record(1, "b", Latency::RequestDuration, Protocol::Http, 10);
        // A sample of a destination that left: dropped.
        d.record(0, "a", Latency::RequestDuration, Protocol::Http, 10);
        let b = d.get("b").unwrap();
        assert_eq!(
            b.get(Latency::RequestDuration, Protocol::Http)
                .unwrap()
                .len(),
            2
        );
        assert!(d.get("a").is_none());
        assert!(d
            .get("c")
            .unwrap()
            .get(Latency::RequestDuration, Protocol::Http)
            .is_none());
    }

    /// Parse the distribution text back: the rows are monotonic, the last row is the max at
    /// percentile 1 with the total count, and the footer agrees.
    #[test]
    fn percentile_distribution_parses_back() {
        let mut h = new_latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let text = percentile_distribution(&h);
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let mut rows: Vec<(f64, f64, u64)> = Vec::new();
        let mut footer = Vec::new();
        for line in lines {
            if line.starts_with("#[") {
                footer.push(line);
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert!(cols.len() == 4 || cols.len() == 3, "{line}");
            rows.push((
                cols[0].parse().unwrap(),
                cols[1].parse().unwrap(),
                cols[2].parse().unwrap(),
            ));
            if cols.len() == 4 {
                let inv: f64 = cols[3].parse().unwrap();
                assert!((inv - 1.0 / (1.0 - rows.last().unwrap().1)).abs() < 0.01 * inv.max(1.0));
            }
        }
        assert!(rows.len() > 20);
        for pair in rows.windows(2) {
            assert!(pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1 && pair[0].2 <= pair[1].2);
        }
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 1000);
        assert!((last.0 - h.max() as f64 / 1000.0).abs() < 1e-9);
        assert_eq!(footer.len(), 3);
        assert!(footer[0].starts_with("#[Mean    ="));
        assert!(
            footer[1].contains("Total count    =         1000]"),
            "{}",
            footer[1]
        );
    }

    #[test]
    fn empty_distribution_has_header_and_footer() {
        let text = percentile_distribution(&new_latency_histogram());
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }
}
