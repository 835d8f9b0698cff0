//! Delivery accounting at the sink: per-device sequence tracking (loss, duplicates, reordering)
//! and the end-to-end latency histogram, fed with every stamped payload ([`crate::payload`]) a
//! sink receives.
//!
//! Per device the tracker keeps the next expected sequence number and the gaps still open, as
//! ranges (so a long outage costs one entry, not one per message). For an arriving `seq`:
//!
//! - `seq == next`: in order; `next += 1`.
//! - `seq > next`: in order for itself, but `next .. seq` become a gap; `next = seq + 1`.
//! - `seq < next` and inside a gap: a **late fill** — counted as `reordered` (it arrived after a
//!   higher sequence number of the same device) and removed from the gap.
//! - `seq < next` otherwise: a **duplicate**.
//!
//! At the end of a run `lost` is what the gaps still hold. Messages after a device's highest
//! received sequence number are invisible to the sink (the tail of an aborted run, messages
//! still in flight): they are not counted as lost. Devices number from 0, so a device whose
//! first arrival is `seq = 3` lost 0..=2.
//!
//! End-to-end latency = receive time − intended send time (both wall clock, same host), recorded
//! for first arrivals only (not duplicates), in microseconds.
//!
//! Loss injection for tests ([`DeliveryTracker::new`] with `drop_every = N`): a message whose
//! `(seq + 1) % N == 0` is acknowledged by the sink but not tracked, as if the cloud lost it; it
//! is counted in `dropped_by_sink`.
//!
//! What it does NOT do: detect loss after a device's last received message, survive a device
//! restarting its numbering (use one tracker per run: [`DeliveryTracker::reset`]), or check the
//! padding bytes.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::payload;
use crate::stats::{new_latency_histogram, HistogramError, LatencySummary};

/// One device's sequence state.
#[derive(Debug, Clone, Default)]
struct DeviceTrack {
    /// Next sequence number expected in order.
    next: u64,
    /// Open gaps: start -> end (exclusive).
    gaps: BTreeMap<u64, u64>,
}

/// What became of one arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected message, or one after a gap.
    InOrder,
    /// A message filling an earlier gap.
    LateFill,
    /// Already received.
    Duplicate,
    /// Discarded by the sink's loss injection.
    Dropped,
    /// Not a stamped payload.
    Malformed,
}

impl DeviceTrack {
    fn arrive(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.gaps.insert(self.next, seq);
            }
            self.next = seq.saturating_add(1);
            return Arrival::InOrder;
        }
        // The gap starting at or before `seq`, if `seq` lies inside it.
        let Some((&start, &end)) = self.gaps.range(..=seq).next_back() else {
            return Arrival::Duplicate;
        };
        if seq >= end {
            return Arrival::Duplicate;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, seq);
        }
        if seq + 1 < end {
            self.gaps.insert(seq + 1, end);
        }
        Arrival::LateFill
    }

    fn missing(&self) -> u64 {
        self.gaps.iter().map(|(start, end)| end - start).sum()
    }
}

/// The accounting state (see the module docs). Not thread-safe; [`DeliveryTracker`] is.
#[derive(Debug, Clone)]
pub struct Tracker {
    drop_every: Option<u64>,
    devices: HashMap<u64, DeviceTrack>,
    received: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    malformed: u64,
    dropped: u64,
    latency: Histogram<u64>,
}

impl Tracker {
    /// An empty tracker; `drop_every = Some(N)` discards every N-th message of each device.
    pub fn new(drop_every: Option<u64>) -> Result<Self, HistogramError> {
        Ok(Self {
            drop_every: drop_every.filter(|n| *n > 0),
            devices: HashMap::new(),
            received: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            malformed: 0,
            dropped: 0,
            latency: new_latency_histogram()?,
        })
    }

    /// Accounts one payload received at `now_unix_ns`.
    pub fn record(&mut self, payload: &[u8], now_unix_ns: u64) -> Arrival {
        let Some(stamp) = payload::parse(payload) else {
            self.malformed += 1;
            return Arrival::Malformed;
        };
        if self
            .drop_every
            .is_some_and(|n| (stamp.seq.wrapping_add(1)) % n == 0)
        {
            self.dropped += 1;
            return Arrival::Dropped;
        }
        self.received += 1;
        let arrival = self
            .devices
            .entry(stamp.device)
            .or_default()
            .arrive(stamp.seq);
        match arrival {
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::LateFill | Arrival::InOrder => {
                if arrival == Arrival::LateFill {
                    self.reordered += 1;
                }
                self.unique += 1;
                let micros = now_unix_ns.saturating_sub(stamp.sent_unix_ns) / 1000;
                self.latency.saturating_record(micros.max(1));
            }
            Arrival::Dropped | Arrival::Malformed => {}
        }
        arrival
    }

    /// Highest sequence number received from `device`, if any.
    pub fn highest_seq(&self, device: u64) -> Option<u64> {
        self.devices.get(&device).map(|d| d.next - 1)
    }

    /// The end-to-end latency histogram (µs).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// The counts so far; `lost` counts the gaps open now.
    pub fn summary(&self) -> DeliverySummary {
        DeliverySummary {
            received: self.received,
            unique: self.unique,
            lost: self.devices.values().map(DeviceTrack::missing).sum(),
            duplicates: self.duplicates,
            reordered: self.reordered,
            malformed: self.malformed,
            dropped_by_sink: self.dropped,
            devices: self.devices.len() as u64,
            e2e_latency_us: LatencySummary::of(&self.latency),
        }
    }
}

/// What the sink saw over a run (part of the report and its JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeliverySummary {
    /// Stamped messages received, duplicates included (loss-injected ones excluded).
    pub received: u64,
    /// Distinct messages received.
    pub unique: u64,
    /// Sequence numbers never received below each device's highest received one.
    pub lost: u64,
    /// Messages received more than once (each extra copy counts).
    pub duplicates: u64,
    /// Messages that arrived after a higher sequence number of the same device.
    pub reordered: u64,
    /// Payloads without a valid stamp.
    pub malformed: u64,
    /// Messages discarded by the sink's loss injection (`--drop-every`).
    pub dropped_by_sink: u64,
    /// Devices heard from.
    pub devices: u64,
    /// Receive time minus intended send time, µs, first arrivals only.
    pub e2e_latency_us: LatencySummary,
}

impl std::fmt::Display for DeliverySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "delivery received {}  unique {}  lost {}  dup {}  reordered {}  malformed {}  dropped-by-sink {}  devices {}",
            self.received,
            self.unique,
            self.lost,
            self.duplicates,
            self.reordered,
            self.malformed,
            self.dropped_by_sink,
            self.devices
        )?;
        let l = &self.e2e_latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "e2e      p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms  (n={})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.count
        )
    }
}

/// A [`Tracker`] shared by a sink's connection tasks (one short lock per message; the sink is a
/// test double on the load generator's core, not the data plane).
#[derive(Debug)]
pub struct DeliveryTracker {
    inner: Mutex<Tracker>,
    /// Notified after every recorded arrival (for [`DeliveryTracker::wait_for`]).
    changed: Condvar,
}

impl DeliveryTracker {
    /// See [`Tracker::new`].
    pub fn new(drop_every: Option<u64>) -> Result<Self, HistogramError> {
        Ok(Self {
            inner: Mutex::new(Tracker::new(drop_every)?),
            changed: Condvar::new(),
        })
    }

    /// Accounts one payload received now.
    pub fn record(&self, payload: &[u8]) -> Arrival {
        let now = payload::now_unix_ns();
        let arrival = self.inner.lock().record(payload, now);
        self.changed.notify_all();
        arrival
    }

    /// Blocks until `done(summary)` holds or `timeout` passes; returns the last summary either
    /// way (woken by each arrival, no polling).
    pub fn wait_for(
        &self,
        mut done: impl FnMut(&DeliverySummary) -> bool,
        timeout: std::time::Duration,
    ) -> DeliverySummary {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.inner.lock();
        loop {
            let summary = inner.summary();
            if done(&summary) || self.changed.wait_until(&mut inner, deadline).timed_out() {
                return inner.summary();
            }
        }
    }

    /// The counts so far.
    pub fn summary(&self) -> DeliverySummary {
        self.inner.lock().summary()
    }

    /// A copy of the whole state (for per-device checks and the latency histogram).
    pub fn snapshot(&self) -> Tracker {
        self.inner.lock().clone()
    }

    /// Forgets everything (keeps the loss injection setting).
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.devices.clear();
        inner.latency.reset();
        inner.received = 0;
        inner.unique = 0;
        inner.duplicates = 0;
        inner.reordered = 0;
        inner.malformed = 0;
        inner.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{stamp, template, Stamp};

    fn msg(device: u64, seq: u64, sent_unix_ns: u64) -> Vec<u8> {
        let mut buf = template(64);
        stamp(
            &mut buf,
            Stamp {
                device,
                seq,
                sent_unix_ns,
            },
        );
        buf
    }

    fn feed(tracker: &mut Tracker, device: u64, seqs: &[u64]) -> Vec<Arrival> {
        seqs.iter()
            .map(|&s| tracker.record(&msg(device, s, 0), 1_000_000))
            .collect()
    }

    #[test]
    fn in_order_arrivals_count_nothing_bad() {
        let mut t = Tracker::new(None).expect("tracker");
        let arrivals = feed(&mut t, 1, &[0, 1, 2, 3]);
        assert!(arrivals.iter().all(|a| *a == Arrival::InOrder));
        let s = t.summary();
        assert_eq!((s.received, s.unique, s.lost), (4, 4, 0));
        assert_eq!((s.duplicates, s.reordered, s.malformed), (0, 0, 0));
        assert_eq!(t.highest_seq(1), Some(3));
    }

    #[test]
    fn gaps_never_filled_are_lost() {
        let mut t = Tracker::new(None).expect("tracker");
        feed(&mut t, 7, &[0, 1, 4, 5, 9]);
        // 2, 3 and 6, 7, 8 missing; nothing after 9 can be judged.
        assert_eq!(t.summary().lost, 5);
        // A device whose first message is seq 3 lost 0..=2.
        feed(&mut t, 8, &[3]);
        assert_eq!(t.summary().lost, 8);
        assert_eq!(t.summary().devices, 2);
    }

    #[test]
    fn late_fills_are_reordered_not_lost() {
        let mut t = Tracker::new(None).expect("tracker");
        let arrivals = feed(&mut t, 1, &[0, 3, 1, 4, 2, 6]);
        assert_eq!(
            arrivals,
            [
                Arrival::InOrder,
                Arrival::InOrder,
                Arrival::LateFill,
                Arrival::InOrder,
                Arrival::LateFill,
                Arrival::InOrder
            ]
        );
        let s = t.summary();
        assert_eq!(s.reordered, 2);
        assert_eq!(s.lost, 1, "only 5 is missing");
        assert_eq!(s.unique, 6);
        // Filling the middle of a gap splits it.
        let mut t = Tracker::new(None).expect("tracker");
        feed(&mut t, 1, &[0, 10, 5]);
        assert_eq!(t.summary().lost, 8);
        feed(&mut t, 1, &[1, 9, 4, 6]);
        assert_eq!(t.summary().lost, 4, "2, 3, 7, 8 remain");
        assert_eq!(t.summary().reordered, 5);
    }

    #[test]
    fn duplicates_count_every_extra_copy_and_no_latency() {
        let mut t = Tracker::new(None).expect("tracker");
        let arrivals = feed(&mut t, 2, &[0, 1, 1, 0, 3, 3, 2, 2]);
        assert_eq!(arrivals[2], Arrival::Duplicate);
        assert_eq!(arrivals[3], Arrival::Duplicate);
        assert_eq!(arrivals[5], Arrival::Duplicate);
        assert_eq!(arrivals[6], Arrival::LateFill);
        assert_eq!(
            arrivals[7],
            Arrival::Duplicate,
            "a filled gap is not open again"
        );
        let s = t.summary();
        assert_eq!((s.received, s.unique, s.duplicates, s.lost), (8, 4, 4, 0));
        assert_eq!(s.e2e_latency_us.count, 4);
    }

    #[test]
    fn devices_are_tracked_independently() {
        let mut t = Tracker::new(None).expect("tracker");
        feed(&mut t, 1, &[0, 1]);
        feed(&mut t, 2, &[0, 2]);
        feed(&mut t, 1, &[2]);
        let s = t.summary();
        assert_eq!((s.lost, s.duplicates, s.reordered), (1, 0, 0));
    }

    #[test]
    fn latency_is_receive_minus_intended_send_time() {
        let mut t = Tracker::new(None).expect("tracker");
        t.record(&msg(1, 0, 5_000_000), 7_500_000);
        t.record(&msg(1, 1, 5_000_000), 9_000_000);
        let l = t.summary().e2e_latency_us;
        assert_eq!(l.count, 2);
        assert!((2495..=2505).contains(&l.p50), "p50 {}", l.p50);
        assert!((3995..=4005).contains(&l.max), "max {}", l.max);
    }

    #[test]
    fn malformed_payloads_are_counted_apart() {
        let mut t = Tracker::new(None).expect("tracker");
        assert_eq!(t.record(b"hello", 1), Arrival::Malformed);
        let s = t.summary();
        assert_eq!((s.malformed, s.received, s.devices), (1, 0, 0));
    }

    #[test]
    fn loss_injection_drops_every_nth_per_device_and_the_gaps_show_it() {
        let mut t = Tracker::new(Some(3)).expect("tracker");
        let arrivals = feed(&mut t, 1, &(0..10).collect::<Vec<_>>());
        // seq 2, 5, 8 dropped; 9 received, so all three are gaps.
        assert_eq!(
            arrivals.iter().filter(|a| **a == Arrival::Dropped).count(),
            3
        );
        let s = t.summary();
        assert_eq!((s.dropped_by_sink, s.lost, s.unique), (3, 3, 7));
    }

    #[test]
    fn waiting_for_arrivals_wakes_on_the_arrival() {
        let shared = std::sync::Arc::new(DeliveryTracker::new(None).expect("tracker"));
        let feeder = {
            let shared = std::sync::Arc::clone(&shared);
            std::thread::spawn(move || {
                for seq in 0..5 {
                    shared.record(&msg(3, seq, 0));
                }
            })
        };
        let s = shared.wait_for(|s| s.unique == 5, std::time::Duration::from_secs(30));
        assert_eq!(s.unique, 5);
        feeder.join().expect("feeder");
        // An unmet condition returns the state at the deadline.
        let s = shared.wait_for(|s| s.unique == 6, std::time::Duration::from_millis(1));
        assert_eq!(s.unique, 5);
    }

    #[test]
    fn shared_tracker_resets_but_keeps_its_injection() {
        let shared = DeliveryTracker::new(Some(2)).expect("tracker");
        shared.record(&msg(1, 0, 0));
        shared.record(&msg(1, 1, 0));
        assert_eq!(shared.summary().dropped_by_sink, 1);
        shared.reset();
        let s = shared.summary();
        assert_eq!((s.received, s.dropped_by_sink, s.devices), (0, 0, 0));
        assert_eq!(s.e2e_latency_us.count, 0);
        shared.record(&msg(1, 1, 0));
        assert_eq!(shared.summary().dropped_by_sink, 1);
    }
}
