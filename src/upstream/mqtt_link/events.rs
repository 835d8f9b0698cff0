//! What a link and its device sessions exchange: session keys, the events a link posts to a
//! session's [`SessionMailbox`], who owns an upstream PUBLISH, what became of it, the broker's
//! protocol errors, and the per-shard aggregate counters both sides bump.
//!
//! What this module does not do: decide anything. The rules live in [`super::LinkCore`]; the
//! mailbox only queues events and notifies a [`Signal`] (a wake flag: no IO, no clock, usable
//! outside a reactor).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::rc::Rc;

use crate::proto::mqtt::{self, Publish, QoS};
use crate::reactor::Signal;

/// Identifies one device session registered with a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub u64);

/// What a link tells a device session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker answered the upstream copy of the session's PUBLISH `device_packet_id`.
    Acked {
        /// The device's packet id.
        device_packet_id: NonZeroU16,
        /// The QoS the device published with (1: answer PUBACK, 2: answer PUBREC).
        device_qos: QoS,
        /// The broker's reason code (always Success from a 3.1.1 broker).
        reason: mqtt::ReasonCode,
        /// The upstream round trip in µs (saturating): the upstream PUBLISH last written →
        /// this PUBACK read. A `u32`, not a `Duration`, to keep `LinkEvent` (held by every
        /// aggregate-mode device session's task) at 16 bytes.
        upstream_rtt_us: u32,
    },
    /// The broker answered the upstream SUBSCRIBE for subscription `index` of the session's
    /// SUBSCRIBE `device_packet_id`.
    SubscribeResult {
        /// The device's SUBSCRIBE packet id.
        device_packet_id: NonZeroU16,
        /// Position of the filter in that SUBSCRIBE.
        index: usize,
        /// The broker's SUBACK code for the upstream filter.
        code: mqtt::ReasonCode,
    },
    /// A message arrived on an upstream filter the session subscribed to (upstream topic as
    /// received; the session maps it back).
    Message(Box<Publish>),
    /// The link gave up (its destination was removed or changed by a reload, and its connection
    /// then dropped): the session must close. Nothing unacknowledged was acknowledged.
    Closed,
    /// The gateway ends this session (not the link) with this reason, e.g. 0x8E when a newer
    /// device connection took its client id over.
    Evicted(mqtt::ReasonCode),
}

/// Events queued for one device session plus the signal that wakes its task.
#[derive(Default)]
pub struct SessionMailbox {
    events: RefCell<VecDeque<LinkEvent>>,
    /// Notified whenever an event is pushed.
    pub signal: Signal,
}

impl SessionMailbox {
    /// Queue an event and wake the session.
    pub fn push(&self, event: LinkEvent) {
        self.events.borrow_mut().push_back(event);
        self.signal.notify();
    }

    /// Take every queued event.
    pub fn drain(&self) -> VecDeque<LinkEvent> {
        std::mem::take(&mut *self.events.borrow_mut())
    }
}

/// Who is waiting for the broker's PUBACK of an upstream PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOwner {
    /// The device session.
    pub session: SessionKey,
    /// The device's packet id of the original PUBLISH.
    pub device_packet_id: NonZeroU16,
    /// The device's QoS (1 or 2).
    pub device_qos: QoS,
}

/// What became of a PUBLISH handed to [`LinkCore::publish`](super::LinkCore::publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Written to the outbox (QoS 1: now in flight).
    Sent,
    /// Waiting for the link to connect or for room in the in-flight window.
    Queued,
    /// QoS 0 dropped: the link is down or too far behind.
    Dropped,
}

/// The broker broke the protocol; the connection must be dropped (and will be re-established).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProtocolError {
    /// A packet a broker never sends to a client, or one out of place (second CONNACK, PUBREC for
    /// our QoS 1, ...).
    UnexpectedPacket(mqtt::PacketType),
    /// The broker sent DISCONNECT (5.0), with this reason code.
    Disconnected(mqtt::ReasonCode),
    /// The broker's bytes did not decode.
    Malformed(mqtt::MqttError),
}

impl std::fmt::Display for LinkProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkProtocolError::UnexpectedPacket(t) => write!(f, "unexpected {t:?} from broker"),
            LinkProtocolError::Disconnected(code) => write!(f, "broker sent DISCONNECT {code}"),
            LinkProtocolError::Malformed(e) => write!(f, "malformed packet from broker: {e:?}"),
        }
    }
}

/// Per-shard aggregate-mode counters, shared by the links and sessions of one shard (plain
/// `Cell`s: shard-local). The integrator exposes them through `ShardMetrics`.
#[derive(Debug, Default)]
pub struct AggregateCounters {
    /// Device PUBLISHes handed to a link.
    pub uplink_publishes: Cell<u64>,
    /// Broker PUBACKs for upstream QoS 1 PUBLISHes.
    pub upstream_acks: Cell<u64>,
    /// QoS 0 PUBLISHes dropped (link down or too far behind).
    pub qos0_dropped: Cell<u64>,
    /// Unacknowledged QoS 1 PUBLISHes sent again (with DUP) after a reconnect.
    pub resent_after_reconnect: Cell<u64>,
    /// Upstream MQTT sessions established (first connects and reconnects).
    pub link_connects: Cell<u64>,
    /// Upstream connections lost or refused.
    pub link_failures: Cell<u64>,
    /// Downlink messages queued for device sessions.
    pub downlink_messages: Cell<u64>,
    /// Device PUBLISHes refused because the rewritten topic is not a valid topic name.
    pub topics_refused: Cell<u64>,
    /// Device CONNECTs refused with "server unavailable" because their link had been down for
    /// `down_after` (`accept_while_down = false`).
    pub connects_refused_down: Cell<u64>,
    /// Links running on this shard (a gauge: one per destination with devices, or draining).
    pub links_running: Cell<u64>,
    /// Of those, links with an upstream MQTT session now (a gauge).
    pub links_up: Cell<u64>,
    /// `max_publish_rate` outcomes by destination name (only destinations with a limit that
    /// had devices on this shard). Kept across reloads: the counters only grow.
    pub publish_rate: RefCell<Vec<(String, Rc<RateOutcomes>)>>,
}

impl AggregateCounters {
    /// The `max_publish_rate` outcome counters of destination `name`, created on first use.
    pub fn rate_outcomes(&self, name: &str) -> Rc<RateOutcomes> {
        let mut all = self.publish_rate.borrow_mut();
        if let Some((_, o)) = all.iter().find(|(n, _)| n == name) {
            return o.clone();
        }
        let o = Rc::new(RateOutcomes::default());
        all.push((name.to_string(), o.clone()));
        o
    }
}

/// What became of device PUBLISHes whose link had no turn free under `max_publish_rate`
/// (those sent at once are not counted).
#[derive(Debug, Default)]
pub struct RateOutcomes {
    /// Queued on the device's link for their turn (the device not read meanwhile).
    pub waited: Cell<u64>,
    /// Sent on another link of the destination that had a turn free.
    pub spilled: Cell<u64>,
    /// Refused: the wait would have exceeded the device's bound (5.0: 0x97; QoS 0: dropped;
    /// 3.1.1 QoS 1/2: connection closed).
    pub refused: Cell<u64>,
}

/// Add one to a counter.
pub(super) fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

/// One unit of a gauge, held until dropped (so a task dropped mid-await still gives it back).
pub(super) struct GaugeHold<'a>(&'a Cell<u64>);

impl<'a> GaugeHold<'a> {
    /// Add one to `gauge` until the hold is dropped.
    pub(super) fn new(gauge: &'a Cell<u64>) -> GaugeHold<'a> {
        bump(gauge);
        GaugeHold(gauge)
    }
}

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
