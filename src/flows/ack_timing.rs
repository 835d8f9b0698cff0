//! When a device's QoS 1 PUBLISHes went through simgate, for the latency histograms: received
//! from the device, written upstream, acknowledged to the device. Pure bookkeeping keyed by the
//! device's packet id, with time passed in.
//!
//! It does not record into the histograms (the session driver does, with the destination it
//! serves) and does not decide what is acknowledged (the bridge does).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The times of one acknowledged PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedTimes {
    /// Received from the device.
    pub received: Instant,
    /// Written upstream (`None`: the PUBACK came before the write was recorded).
    pub sent: Option<Instant>,
    /// The upstream PUBACK relayed to the device.
    pub acked: Instant,
}

impl AckedTimes {
    /// From the PUBLISH written upstream to its PUBACK from upstream.
    pub fn upstream_rtt(&self) -> Option<Duration> {
        self.sent
            .map(|sent| self.acked.saturating_duration_since(sent))
    }
}

/// QoS 1 PUBLISHes of one device session in flight, by device packet id.
#[derive(Debug, Default)]
pub struct AckTimes {
    /// Packet id → (received, written upstream).
    in_flight: HashMap<u16, (Instant, Option<Instant>)>,
    /// Not written upstream yet (the batch being built).
    unsent: Vec<u16>,
    /// Acknowledged, waiting for the PUBACK to be sent to the device.
    acked: Vec<AckedTimes>,
}

impl AckTimes {
    /// A PUBLISH `id` from the device goes upstream in the next write. An id still in flight
    /// (a device resending without waiting) keeps its first time.
    pub fn received(&mut self, id: u16, now: Instant) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.in_flight.entry(id) {
            e.insert((now, None));
            self.unsent.push(id);
        }
    }

    /// The PUBLISHes received since the last call were written upstream at `now`.
    pub fn sent_upstream(&mut self, now: Instant) {
        for id in self.unsent.drain(..) {
            if let Some(t) = self.in_flight.get_mut(&id) {
                t.1 = Some(now);
            }
        }
    }

    /// The upstream PUBACK for `id` arrived at `now` and is relayed to the device (ignored for
    /// an id not in flight, e.g. a PUBACK for a cloud-to-device message).
    pub fn acked(&mut self, id: u16, now: Instant) {
        if let Some((received, sent)) = self.in_flight.remove(&id) {
            self.acked.push(AckedTimes {
                received,
                sent,
                acked: now,
            });
        }
    }

    /// The PUBLISHes acknowledged since the last call (their PUBACKs were sent to the device).
    pub fn take_acked(&mut self) -> std::vec::Drain<'_, AckedTimes> {
        self.acked.drain(..)
    }

    /// PUBLISHes in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_acked_publish_is_timed_once_from_receipt_and_from_the_upstream_write() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = AckTimes::default();
        a.received(1, ms(0));
        a.received(2, ms(1));
        a.received(1, ms(2)); // a resend while in flight keeps the first time
        a.sent_upstream(ms(3));
        a.acked(9, ms(4)); // not ours
        a.acked(2, ms(10));
        let got: Vec<AckedTimes> = a.take_acked().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].acked - got[0].received, Duration::from_millis(9));
        assert_eq!(got[0].upstream_rtt(), Some(Duration::from_millis(7)));
        assert_eq!(a.len(), 1);
        a.acked(1, ms(20));
        a.acked(1, ms(21)); // a second PUBACK for the same id: counted once
        let got: Vec<AckedTimes> = a.take_acked().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].acked - got[0].received, Duration::from_millis(20));
        assert!(a.is_empty());
        assert_eq!(a.take_acked().count(), 0);
    }
}
