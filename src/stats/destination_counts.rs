//! Counters by destination, per shard: messages each way, bytes each way, errors by kind,
//! rejects by reason, pool checkouts, connects and reconnects — what a shard counts on the
//! message path with plain `u64` writes, and what the control thread merges by destination
//! name and renders (`simgate_destination_*_total` in `control::metrics`).
//!
//! Like the per-destination latency histograms ([`super::latency`]), a shard's
//! [`DestinationCounters`] is a `Vec` indexed by the served plan's destination index, re-keyed
//! by destination *name* when the shard applies a plan ([`DestinationCounters::set_destinations`]):
//! a destination that keeps its name keeps its counts across reloads, one that leaves the
//! configuration is dropped, a new one starts at zero. A count that straddles a reload (a
//! request routed under the old plan) is found by name ([`DestinationCounters::slot`]).
//!
//! It does not decide what counts (the flows and the upstream driver do), does not know the
//! plan (names only) and holds nothing per SIM or per connection: label sets stay bounded by
//! the configuration, and memory by shards × destinations.

use super::{CloudRule, ErrorKind, Protocol};

/// Why simgate refused a device's message (or CONNECT) for a destination without sending it
/// upstream (`simgate_destination_rejects_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A cloud rule simgate enforces (see [`CloudRule`]).
    Cloud(CloudRule),
    /// Aggregate mode: the rewritten upstream topic is not a valid MQTT topic.
    TopicInvalid,
    /// Aggregate mode: `max_publish_rate` would have made the device wait longer than it may.
    PublishRate,
    /// Aggregate mode: a device CONNECT refused because the destination's link had been down
    /// for `down_after`.
    LinkDown,
}

impl RejectReason {
    /// Every reason, in exposition order.
    pub const ALL: [RejectReason; CloudRule::ALL.len() + 3] = [
        RejectReason::Cloud(CloudRule::TopicBytes),
        RejectReason::Cloud(CloudRule::TopicSlashes),
        RejectReason::Cloud(CloudRule::ReservedTopic),
        RejectReason::Cloud(CloudRule::PayloadTooLarge),
        RejectReason::Cloud(CloudRule::ClientIdTooLong),
        RejectReason::Cloud(CloudRule::Retain),
        RejectReason::TopicInvalid,
        RejectReason::PublishRate,
        RejectReason::LinkDown,
    ];

    /// Label value used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Cloud(rule) => rule.label(),
            RejectReason::TopicInvalid => "topic_invalid",
            RejectReason::PublishRate => "publish_rate",
            RejectReason::LinkDown => "link_down",
        }
    }

    /// Position in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        match self {
            RejectReason::Cloud(rule) => rule.index(),
            RejectReason::TopicInvalid => CloudRule::ALL.len(),
            RejectReason::PublishRate => CloudRule::ALL.len() + 1,
            RejectReason::LinkDown => CloudRule::ALL.len() + 2,
        }
    }
}

/// Which way a message went (`direction` label of `simgate_destination_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device → destination.
    Uplink,
    /// Destination → device.
    Downlink,
}

impl Direction {
    /// Both directions, in exposition order.
    pub const ALL: [Direction; 2] = [Direction::Uplink, Direction::Downlink];

    /// Label value used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Uplink => "uplink",
            Direction::Downlink => "downlink",
        }
    }
}

/// The counters of one destination (all start at zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationCounts {
    /// The destination's name (`destination` label).
    pub name: String,
    /// Messages by [`Protocol`] and [`Direction`]: HTTP requests forwarded and responses
    /// relayed; MQTT PUBLISHes forwarded each way.
    pub messages: [[u64; Direction::ALL.len()]; Protocol::ALL.len()],
    /// Bytes sent to the destination (docs/metrics.md says which bytes).
    pub bytes_sent: u64,
    /// Bytes received from the destination.
    pub bytes_received: u64,
    /// Errors by [`Protocol`] and [`ErrorKind`] of devices routed to this destination.
    pub errors: [[u64; ErrorKind::ALL.len()]; Protocol::ALL.len()],
    /// Refusals by [`RejectReason`].
    pub rejects: [u64; RejectReason::ALL.len()],
    /// Pool checkouts served by an idle pooled connection at once.
    pub pool_hits: u64,
    /// Pool checkouts that found no idle connection.
    pub pool_misses: u64,
    /// Upstream connects (TCP + TLS, HTTP pool or MQTT link) that succeeded.
    pub connects_ok: u64,
    /// Upstream connects that failed.
    pub connects_failed: u64,
    /// Aggregate-mode links re-established after losing their upstream session.
    pub reconnects: u64,
}

impl DestinationCounts {
    /// All zero, for destination `name`.
    pub fn new(name: &str) -> DestinationCounts {
        DestinationCounts {
            name: name.to_string(),
            messages: [[0; Direction::ALL.len()]; Protocol::ALL.len()],
            bytes_sent: 0,
            bytes_received: 0,
            errors: [[0; ErrorKind::ALL.len()]; Protocol::ALL.len()],
            rejects: [0; RejectReason::ALL.len()],
            pool_hits: 0,
            pool_misses: 0,
            connects_ok: 0,
            connects_failed: 0,
            reconnects: 0,
        }
    }

    /// Count `n` messages of `protocol` going `direction`.
    pub fn message(&mut self, protocol: Protocol, direction: Direction, n: u64) {
        self.messages[protocol.index()][direction as usize] += n;
    }

    /// Messages counted for `protocol` and `direction`.
    pub fn messages_of(&self, protocol: Protocol, direction: Direction) -> u64 {
        self.messages[protocol.index()][direction as usize]
    }

    /// Count an error of `kind` for a device of `protocol`.
    pub fn error(&mut self, protocol: Protocol, kind: ErrorKind) {
        self.errors[protocol.index()][kind.index()] += 1;
    }

    /// Errors counted for `protocol` and `kind`.
    pub fn errors_of(&self, protocol: Protocol, kind: ErrorKind) -> u64 {
        self.errors[protocol.index()][kind.index()]
    }

    /// Count `n` refusals for `reason`.
    pub fn reject(&mut self, reason: RejectReason, n: u64) {
        self.rejects[reason.index()] += n;
    }

    fn merge(&mut self, o: &DestinationCounts) {
        for (mine, theirs) in self.messages.iter_mut().zip(&o.messages) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        for (mine, theirs) in self.errors.iter_mut().zip(&o.errors) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (a, b) in self.rejects.iter_mut().zip(&o.rejects) {
            *a += b;
        }
        self.pool_hits += o.pool_hits;
        self.pool_misses += o.pool_misses;
        self.connects_ok += o.connects_ok;
        self.connects_failed += o.connects_failed;
        self.reconnects += o.reconnects;
    }
}

/// The counters of a shard's destinations, indexed by the served plan's destination index
/// (after [`DestinationCounters::merge`]: in first-seen order, one entry per name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationCounters {
    /// One entry per destination.
    pub destinations: Vec<DestinationCounts>,
}

impl DestinationCounters {
    /// Index the counters by `names` (the plan's destinations, in order), keeping the counts
    /// of names already present, starting new names at zero and dropping names no longer
    /// listed.
    pub fn set_destinations<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let mut old = std::mem::take(&mut self.destinations);
        self.destinations = names
            .into_iter()
            .map(|name| match old.iter().position(|d| d.name == name) {
                Some(i) => old.swap_remove(i),
                None => DestinationCounts::new(name),
            })
            .collect();
    }

    /// The counters of destination `index` of the served plan, named `name`. `name` guards a
    /// count that straddled a reload which moved the destination: it lands under its name, or
    /// nowhere (`None`) if the destination left the configuration.
    pub fn slot(&mut self, index: usize, name: &str) -> Option<&mut DestinationCounts> {
        let at_index = self.destinations.get(index).is_some_and(|d| d.name == name);
        if at_index {
            self.destinations.get_mut(index)
        } else {
            self.destinations.iter_mut().find(|d| d.name == name)
        }
    }

    /// The counters of destination `name`.
    pub fn get(&self, name: &str) -> Option<&DestinationCounts> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// Add `other` into `self`, destination by destination name.
    pub fn merge(&mut self, other: &DestinationCounters) {
        for theirs in &other.destinations {
            match self.destinations.iter_mut().find(|d| d.name == theirs.name) {
                Some(mine) => mine.merge(theirs),
                None => self.destinations.push(theirs.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_by_name_sums_shards_with_different_orders() {
        let mut a = DestinationCounters::default();
        a.set_destinations(["one", "two"]);
        let mut b = DestinationCounters::default();
        // Another shard on a plan with the destinations in another order and one more.
        b.set_destinations(["two", "three", "one"]);
        for _ in 0..3 {
            a.slot(0, "one")
                .unwrap()
                .message(Protocol::Http, Direction::Uplink, 1);
        }
        a.slot(1, "two").unwrap().bytes_sent += 40;
        b.slot(2, "one")
            .unwrap()
            .message(Protocol::Http, Direction::Uplink, 5);
        b.slot(0, "two").unwrap().bytes_sent += 2;
        b.slot(1, "three")
            .unwrap()
            .error(Protocol::Mqtt, ErrorKind::UpstreamConnect);
        b.slot(1, "three")
            .unwrap()
            .reject(RejectReason::Cloud(CloudRule::Retain), 2);

        let mut merged = DestinationCounters::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.destinations.len(), 3);
        let one = merged.get("one").unwrap();
        assert_eq!(one.messages_of(Protocol::Http, Direction::Uplink), 8);
        assert_eq!(one.messages_of(Protocol::Http, Direction::Downlink), 0);
        assert_eq!(one.messages_of(Protocol::Mqtt, Direction::Uplink), 0);
        assert_eq!(merged.get("two").unwrap().bytes_sent, 42);
        let three = merged.get("three").unwrap();
        assert_eq!(
            three.errors_of(Protocol::Mqtt, ErrorKind::UpstreamConnect),
            1
        );
        assert_eq!(
            three.errors_of(Protocol::Http, ErrorKind::UpstreamConnect),
            0
        );
        assert_eq!(
            three.rejects[RejectReason::Cloud(CloudRule::Retain).index()],
            2
        );
    }

    #[test]
    fn reload_keeps_counts_by_name_and_reroutes_moved_indexes() {
        let mut d = DestinationCounters::default();
        d.set_destinations(["a", "b"]);
        d.slot(1, "b").unwrap().connects_ok += 1;
        d.slot(0, "a").unwrap().pool_misses += 1;
        d.set_destinations(["b", "c"]);
        assert_eq!(d.destinations[0].name, "b");
        assert_eq!(d.destinations[1], DestinationCounts::new("c"));
        // A count from a request routed before the reload, with b's old index.
        d.slot(1, "b").unwrap().connects_ok += 1;
        // A destination that left: nowhere to count.
        assert!(d.slot(0, "a").is_none());
        assert_eq!(d.get("b").unwrap().connects_ok, 2);
        assert!(d.get("a").is_none());
        assert_eq!(d.get("c").unwrap().connects_ok, 0);
    }

    #[test]
    fn reject_reasons_have_distinct_indexes_and_labels() {
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }
}
