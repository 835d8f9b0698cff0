//! One upstream MQTT link of aggregate mode: a long-lived MQTTS client connection that carries the
//! PUBLISHes of many device sessions of one shard to one broker, and brings their downlink
//! messages back.
//!
//! Two layers, as in the codecs:
//!
//! - [`LinkCore`] is the link's state machine with no IO and no clock: device sessions hand it
//!   PUBLISHes, SUBSCRIBE and UNSUBSCRIBE requests ([`LinkCore::publish`],
//!   [`LinkCore::subscribe`], [`LinkCore::unsubscribe`]); the link driver feeds it the broker's
//!   packets ([`LinkCore::handle`]) and connection changes ([`LinkCore::on_connected`],
//!   [`LinkCore::on_disconnected`]), and writes what [`LinkCore::take_outbox`] returns. Answers
//!   for a device session go to that session's [`SessionMailbox`].
//! - [`run_link`] drives one core over a TLS connection from the shard's pool: connect (with the
//!   pool's jittered backoff plus its own for MQTT-level refusals), CONNECT/CONNACK, one TLS write
//!   per event-loop turn for everything queued in that turn (or, with `linger`, for everything
//!   queued within that time or until one TLS record's worth is queued), PINGREQ every half
//!   keep-alive, and a link declared dead when a PINGRESP does not come back within the other
//!   half.
//!
//! ```text
//!  device tasks ──publish/subscribe──► LinkCore ──outbox (one buffer per turn)──► TLS write
//!       ▲                                 ▲   │
//!       └──── SessionMailbox events ◄─────┘   └── PUBACK / SUBACK / PUBLISH ◄── TLS read
//! ```
//!
//! Delivery rules (QoS 1 end to end):
//! - A QoS 1 or 2 device PUBLISH goes upstream as QoS 1 with a packet id allocated per link; the
//!   link remembers upstream id -> (session, device packet id) and tells the session
//!   [`LinkEvent::Acked`] only when the broker's PUBACK arrives. QoS 0 goes upstream as QoS 0.
//! - At most `min(max_inflight, broker Receive Maximum)` QoS 1 PUBLISHes are unacknowledged at
//!   once; the rest wait in FIFO order (QoS 0 ones queued behind them too, so per-link order —
//!   hence per-device order — holds).
//! - When the connection drops, unacknowledged PUBLISHes stay; on the next connection they are
//!   sent again first, in their original order, with DUP set ([MQTT-4.4.0-1]). QoS 0 PUBLISHes not
//!   yet written are dropped and counted, and so is QoS 0 arriving while the link is down (before
//!   the very first connection QoS 0 queues instead, bounded, so start-up loses nothing).
//! - Upstream sessions are clean (Clean Session / Clean Start = 1): the link re-subscribes every
//!   upstream filter still wanted after each reconnect.
//!
//! What this module does not do: device-side protocol (see `flows::mqtt_aggregate`), topic
//! rewriting (the session does it before calling in), QoS 2 upstream, Topic Aliases, AUTH
//! exchanges, or persisting anything across a simgate restart.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::reactor::{select2, Either, Signal};
use crate::policy::{DestinationPlan, MqttMode, MqttUpstreamVersion, TemplateVars};
use crate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Disconnect, Packet, Properties, ProtocolVersion,
    PubResponse, Publish, QoS, Sender, Subscribe, SubscriptionOptions, Unsubscribe,
};
use crate::reactor;
use crate::shard::ShardState;
use crate::upstream::UpstreamStream;

/// Largest packet accepted from the broker (downlink messages included).
const UPSTREAM_MAX_PACKET: u32 = 1024 * 1024;

/// QoS 0 PUBLISHes that may queue behind waiting QoS 1 ones before further QoS 0 is dropped.
const QUEUED_QOS0_LIMIT: usize = 4096;

/// Outbox size beyond which new QoS 0 PUBLISHes are dropped rather than buffered (a slow broker).
const OUTBOX_QOS0_LIMIT: usize = 4 * 1024 * 1024;

/// Queued uplink bytes at which a lingering link writes without waiting out `linger`: one full
/// TLS record (2^14 bytes of plaintext).
const LINGER_FLUSH_BYTES: usize = 16 * 1024;

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

/// What became of a PUBLISH handed to [`LinkCore::publish`].
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
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

#[derive(Debug)]
struct Outgoing {
    /// Upstream PUBLISH; its packet id is set once it is in flight.
    publish: Publish,
    owner: Option<PublishOwner>,
}

#[derive(Debug, Default)]
struct UpstreamSub {
    /// Sessions subscribed through this upstream filter (its reference count).
    sessions: Vec<SessionKey>,
    /// (session, device SUBSCRIBE id, index) waiting for this filter's SUBACK.
    waiters: Vec<(SessionKey, NonZeroU16, usize)>,
    /// The broker's SUBACK code on the current connection.
    granted: Option<mqtt::ReasonCode>,
    /// Packet id of the SUBSCRIBE in flight for it.
    pending_id: Option<NonZeroU16>,
}

/// The sans-IO state of one upstream link. See the module docs for the delivery rules.
pub struct LinkCore {
    /// The upstream client id, for logs.
    name: String,
    version: ProtocolVersion,
    max_inflight: usize,
    window: usize,
    connected: bool,
    /// False until the first CONNACK: QoS 0 queues (bounded) instead of being dropped, so a
    /// link still starting up does not lose the first messages.
    ever_connected: bool,
    outbox: BytesMut,
    inflight: VecDeque<Outgoing>,
    waiting: VecDeque<Outgoing>,
    queued_qos0: usize,
    ids_in_use: HashSet<u16>,
    next_id: u16,
    sessions: HashMap<SessionKey, Rc<SessionMailbox>>,
    next_session: u64,
    subs: HashMap<Bytes, UpstreamSub>,
    pending_subscribes: HashMap<u16, Bytes>,
    counters: Rc<AggregateCounters>,
}

impl LinkCore {
    /// A disconnected link speaking `version`, allowing `max_inflight` unacknowledged QoS 1
    /// PUBLISHes (at least 1).
    pub fn new(
        version: ProtocolVersion,
        max_inflight: u16,
        counters: Rc<AggregateCounters>,
    ) -> Self {
        let max_inflight = usize::from(max_inflight.max(1));
        LinkCore {
            name: String::new(),
            version,
            max_inflight,
            window: max_inflight,
            connected: false,
            ever_connected: false,
            outbox: BytesMut::new(),
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            queued_qos0: 0,
            ids_in_use: HashSet::new(),
            next_id: 0,
            sessions: HashMap::new(),
            next_session: 0,
            subs: HashMap::new(),
            pending_subscribes: HashMap::new(),
            counters,
        }
    }

    /// Name the link in logs (its upstream client id).
    pub fn set_name(&mut self, name: &[u8]) {
        self.name = String::from_utf8_lossy(name).into_owned();
    }

    /// The name given with [`LinkCore::set_name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol version spoken upstream.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether an upstream MQTT session is established.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Upstream QoS 1 PUBLISHes sent and not yet acknowledged.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// PUBLISHes waiting for a connection or for room in the window.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Registered device sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Register a device session; its events go to `mailbox`.
    pub fn register(&mut self, mailbox: Rc<SessionMailbox>) -> SessionKey {
        self.next_session += 1;
        let key = SessionKey(self.next_session);
        self.sessions.insert(key, mailbox);
        key
    }

    /// Forget a device session: drop its subscriptions (UNSUBSCRIBE upstream filters nobody
    /// wants any more). Its PUBLISHes already handed over are still delivered.
    pub fn unregister(&mut self, key: SessionKey) {
        self.sessions.remove(&key);
        let filters: Vec<Bytes> = self
            .subs
            .iter()
            .filter(|(_, s)| s.sessions.contains(&key) || s.waiters.iter().any(|w| w.0 == key))
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.unsubscribe(key, &filter);
        }
    }

    /// Hand over an upstream PUBLISH (topic already rewritten; QoS 2 is sent as QoS 1; the
    /// packet id and DUP are the link's to set). `owner` is told when the broker acknowledges it
    /// (`None` for QoS 0 and for Will messages).
    pub fn publish(&mut self, mut publish: Publish, owner: Option<PublishOwner>) -> Enqueued {
        bump(&self.counters.uplink_publishes);
        publish.dup = false;
        publish.packet_id = None;
        if publish.qos == QoS::AtMostOnce {
            if (!self.connected && self.ever_connected)
                || self.queued_qos0 >= QUEUED_QOS0_LIMIT
                || self.outbox.len() >= OUTBOX_QOS0_LIMIT
            {
                bump(&self.counters.qos0_dropped);
                return Enqueued::Dropped;
            }
            if self.connected && self.waiting.is_empty() {
                self.write(&Packet::Publish(publish));
                return Enqueued::Sent;
            }
            self.queued_qos0 += 1;
            self.waiting.push_back(Outgoing {
                publish,
                owner: None,
            });
            return Enqueued::Queued;
        }
        publish.qos = QoS::AtLeastOnce;
        let was_waiting = self.waiting.len();
        self.waiting.push_back(Outgoing { publish, owner });
        self.pump();
        if self.waiting.len() > was_waiting {
            Enqueued::Queued
        } else {
            Enqueued::Sent
        }
    }

    /// Subscribe session `key` through `upstream_filter`; the result comes back as
    /// [`LinkEvent::SubscribeResult`] with `device_packet_id` and `index`. The upstream SUBSCRIBE
    /// is sent once per distinct filter (reference counted); a filter already granted answers at
    /// once.
    pub fn subscribe(
        &mut self,
        key: SessionKey,
        upstream_filter: Bytes,
        device_packet_id: NonZeroU16,
        index: usize,
    ) {
        let entry = self.subs.entry(upstream_filter.clone()).or_default();
        if !entry.sessions.contains(&key) {
            entry.sessions.push(key);
        }
        if let Some(code) = entry.granted {
            if let Some(mailbox) = self.sessions.get(&key) {
                mailbox.push(LinkEvent::SubscribeResult {
                    device_packet_id,
                    index,
                    code,
                });
            }
            return;
        }
        entry.waiters.push((key, device_packet_id, index));
        if self.connected && entry.pending_id.is_none() {
            self.send_subscribe(upstream_filter);
        }
    }

    /// Remove session `key` from `upstream_filter`; the last one out sends an upstream
    /// UNSUBSCRIBE.
    pub fn unsubscribe(&mut self, key: SessionKey, upstream_filter: &Bytes) {
        let Some(entry) = self.subs.get_mut(upstream_filter) else {
            return;
        };
        entry.sessions.retain(|s| *s != key);
        entry.waiters.retain(|w| w.0 != key);
        if !entry.sessions.is_empty() {
            return;
        }
        let was_subscribed = entry.granted.is_some() || entry.pending_id.is_some();
        self.subs.remove(upstream_filter);
        if self.connected && was_subscribed {
            if let Some(id) = self.alloc_id() {
                let packet = Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    properties: Properties::default(),
                    filters: vec![upstream_filter.clone()],
                });
                if !self.write(&packet) {
                    self.free_id(id);
                }
            }
        }
    }

    /// The upstream session is established (CONNACK accepted). `broker_receive_maximum` is the
    /// 5.0 CONNACK's Receive Maximum. Re-sends unacknowledged PUBLISHes in order with DUP,
    /// re-subscribes, then sends what waited. Returns how many PUBLISHes were sent again (not
    /// counting those that were waiting and go out for the first time).
    pub fn on_connected(&mut self, broker_receive_maximum: Option<NonZeroU16>) -> usize {
        self.connected = true;
        self.ever_connected = true;
        self.outbox.clear();
        self.window = match broker_receive_maximum {
            Some(rm) => self.max_inflight.min(usize::from(rm.get())),
            None => self.max_inflight,
        };
        let inflight = std::mem::take(&mut self.inflight);
        let resent = inflight.len();
        for mut out in inflight {
            out.publish.dup = true;
            bump(&self.counters.resent_after_reconnect);
            trace_publish(&self.name, "uplink publish resent", &out);
            self.write(&Packet::Publish(out.publish.clone()));
            self.inflight.push_back(out);
        }
        let filters: Vec<Bytes> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.sessions.is_empty())
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.send_subscribe(filter);
        }
        self.pump();
        resent
    }

    /// The connection is gone. Unacknowledged QoS 1 PUBLISHes are kept for the next connection;
    /// whatever was only in the outbox (QoS 0, acknowledgements, subscription requests) is
    /// redone or dropped.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.outbox.clear();
        let before = self.waiting.len();
        self.waiting.retain(|o| o.publish.qos != QoS::AtMostOnce);
        for _ in self.waiting.len()..before {
            bump(&self.counters.qos0_dropped);
        }
        self.queued_qos0 = 0;
        // Only the in-flight PUBLISHes keep their packet ids.
        self.ids_in_use = self
            .inflight
            .iter()
            .filter_map(|o| o.publish.packet_id.map(NonZeroU16::get))
            .collect();
        self.pending_subscribes.clear();
        for sub in self.subs.values_mut() {
            sub.granted = None;
            sub.pending_id = None;
            // Sessions already subscribed wait for the re-subscription silently.
        }
        self.subs.retain(|_, s| !s.sessions.is_empty());
    }

    /// The link gave up for good: tell every session to close.
    pub fn close_sessions(&mut self) {
        for mailbox in self.sessions.values() {
            mailbox.push(LinkEvent::Closed);
        }
    }

    /// Bytes to write upstream now (everything queued since the last call), if any.
    pub fn take_outbox(&mut self) -> Option<Bytes> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(self.outbox.split().freeze())
        }
    }

    /// Queue a PINGREQ.
    pub fn queue_ping(&mut self) {
        self.write(&Packet::PingReq);
    }

    /// Apply one packet from the broker (PINGRESP is the driver's business and ignored here).
    pub fn handle(&mut self, packet: Packet) -> Result<(), LinkProtocolError> {
        match packet {
            Packet::PubAck(ack) => {
                self.on_puback(ack);
                Ok(())
            }
            Packet::SubAck(suback) => {
                self.free_id(suback.packet_id);
                if let Some(filter) = self.pending_subscribes.remove(&suback.packet_id.get()) {
                    let code = suback
                        .reason_codes
                        .first()
                        .copied()
                        .unwrap_or(mqtt::ReasonCode::UNSPECIFIED_ERROR);
                    self.on_suback(&filter, suback.packet_id, code);
                }
                Ok(())
            }
            Packet::UnsubAck(unsuback) => {
                self.free_id(unsuback.packet_id);
                Ok(())
            }
            Packet::Publish(publish) => {
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.write(&Packet::PubAck(PubResponse::success(id)));
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        self.write(&Packet::PubRec(PubResponse::success(id)));
                    }
                    _ => {}
                }
                self.deliver(publish);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.write(&Packet::PubComp(PubResponse::success(rel.packet_id)));
                Ok(())
            }
            Packet::PingResp => Ok(()),
            Packet::Disconnect(d) => Err(LinkProtocolError::Disconnected(d.reason_code)),
            other => Err(LinkProtocolError::UnexpectedPacket(other.packet_type())),
        }
    }

    fn on_puback(&mut self, ack: PubResponse) {
        let id = ack.packet_id;
        let Some(pos) = self
            .inflight
            .iter()
            .position(|o| o.publish.packet_id == Some(id))
        else {
            // Not ours (or a duplicate PUBACK): nothing to release.
            tracing::debug!(
                link = %self.name,
                upstream_id = id.get(),
                "broker PUBACK for no in-flight PUBLISH ignored"
            );
            return;
        };
        let Some(done) = self.inflight.remove(pos) else {
            return;
        };
        self.free_id(id);
        bump(&self.counters.upstream_acks);
        trace_publish(&self.name, "broker PUBACK", &done);
        if let Some(owner) = done.owner {
            if let Some(mailbox) = self.sessions.get(&owner.session) {
                mailbox.push(LinkEvent::Acked {
                    device_packet_id: owner.device_packet_id,
                    device_qos: owner.device_qos,
                    reason: ack.reason_code,
                });
            }
        }
        self.pump();
    }

    fn on_suback(&mut self, filter: &Bytes, id: NonZeroU16, code: mqtt::ReasonCode) {
        let Some(entry) = self.subs.get_mut(filter) else {
            return;
        };
        if entry.pending_id != Some(id) {
            return;
        }
        entry.pending_id = None;
        let failed = code.0 >= 0x80;
        let waiters = std::mem::take(&mut entry.waiters);
        if failed {
            entry
                .sessions
                .retain(|s| !waiters.iter().any(|w| w.0 == *s));
        } else {
            entry.granted = Some(code);
        }
        if entry.sessions.is_empty() {
            self.subs.remove(filter);
        }
        for (session, device_packet_id, index) in waiters {
            if let Some(mailbox) = self.sessions.get(&session) {
                mailbox.push(LinkEvent::SubscribeResult {
                    device_packet_id,
                    index,
                    code,
                });
            }
        }
    }

    fn deliver(&mut self, publish: Publish) {
        let mut targets: Vec<SessionKey> = Vec::new();
        for (filter, sub) in &self.subs {
            if sub.granted.is_some() && topic_matches(filter, &publish.topic) {
                for s in &sub.sessions {
                    if !targets.contains(s) {
                        targets.push(*s);
                    }
                }
            }
        }
        for key in targets {
            if let Some(mailbox) = self.sessions.get(&key) {
                bump(&self.counters.downlink_messages);
                mailbox.push(LinkEvent::Message(Box::new(publish.clone())));
            }
        }
    }

    fn send_subscribe(&mut self, filter: Bytes) {
        let Some(id) = self.alloc_id() else {
            return; // 65535 ids in use: retried on the next reconnect
        };
        let packet = Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::default(),
            subscriptions: vec![mqtt::Subscription {
                filter: filter.clone(),
                options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            }],
        });
        if !self.write(&packet) {
            self.free_id(id);
            return;
        }
        if let Some(entry) = self.subs.get_mut(&filter) {
            entry.pending_id = Some(id);
        }
        self.pending_subscribes.insert(id.get(), filter);
    }

    /// Move waiting PUBLISHes into the outbox while connected and the window has room.
    fn pump(&mut self) {
        while self.connected {
            let Some(front) = self.waiting.front() else {
                return;
            };
            if front.publish.qos == QoS::AtMostOnce {
                if let Some(out) = self.waiting.pop_front() {
                    self.queued_qos0 = self.queued_qos0.saturating_sub(1);
                    self.write(&Packet::Publish(out.publish));
                }
                continue;
            }
            if self.inflight.len() >= self.window {
                return;
            }
            let Some(id) = self.alloc_id() else {
                return;
            };
            let Some(mut out) = self.waiting.pop_front() else {
                return;
            };
            out.publish.packet_id = Some(id);
            self.write(&Packet::Publish(out.publish.clone()));
            trace_publish(&self.name, "uplink publish sent", &out);
            self.inflight.push_back(out);
        }
    }

    /// Encode into the outbox; false (and nothing written) if the packet cannot be encoded.
    fn write(&mut self, packet: &Packet) -> bool {
        mqtt::encode(packet, self.version, &mut self.outbox).is_ok()
    }

    fn alloc_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.next_id) {
                if self.ids_in_use.insert(id.get()) {
                    return Some(id);
                }
            }
        }
        None
    }

    fn free_id(&mut self, id: NonZeroU16) {
        self.ids_in_use.remove(&id.get());
    }
}

/// Per-message trace of the QoS 1 hop mapping: upstream packet id <-> (session, device packet
/// id). Ids only: no topic, no payload.
fn trace_publish(link: &str, what: &'static str, out: &Outgoing) {
    tracing::trace!(
        link,
        upstream_id = out.publish.packet_id.map_or(0, NonZeroU16::get),
        dup = out.publish.dup,
        session = out.owner.map_or(0, |o| o.session.0),
        device_id = out.owner.map_or(0, |o| o.device_packet_id.get()),
        "{what}"
    );
}

/// Whether topic `name` matches topic `filter` (§4.7): `+` is one level, `#` the rest (including
/// the parent level); wildcards at the first level do not match names starting with `$`.
pub fn topic_matches(filter: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut n = name.split(|&b| b == b'/');
    loop {
        match (f.next(), n.next()) {
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Connection settings of one link, copied out of the plan.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Protocol version spoken upstream.
    pub version: ProtocolVersion,
    /// Rendered client id.
    pub client_id: Bytes,
    /// Rendered user name.
    pub username: Option<Bytes>,
    /// Password.
    pub password: Option<Bytes>,
    /// Keep-alive announced in CONNECT; PINGREQ goes out every half of it.
    pub keep_alive: Duration,
    /// Most unacknowledged QoS 1 PUBLISHes.
    pub max_inflight: u16,
    /// Time allowed for CONNECT -> CONNACK.
    pub connack_timeout: Duration,
    /// First delay after a failed or lost connection; doubles per failure (jittered).
    pub backoff_initial: Duration,
    /// Delay ceiling.
    pub backoff_max: Duration,
    /// How long queued uplink bytes may wait for more before being written (0: none).
    pub linger: Duration,
}

impl LinkSettings {
    /// Settings of link `conn` of shard `shard` for an aggregate-mode destination; `None` if the
    /// destination is not one.
    pub fn for_destination(dest: &DestinationPlan, shard: usize, conn: usize) -> Option<Self> {
        let mqtt = dest
            .mqtt
            .as_ref()
            .filter(|m| m.mode == MqttMode::Aggregate)?;
        let vars = TemplateVars {
            client_id: b"",
            topic: b"",
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            shard,
            conn,
        };
        Some(LinkSettings {
            version: match mqtt.version {
                MqttUpstreamVersion::V5 => ProtocolVersion::V5,
                // "same as device" is session-mode only; aggregate defaults to 3.1.1.
                MqttUpstreamVersion::V311 | MqttUpstreamVersion::SameAsDevice => {
                    ProtocolVersion::V311
                }
            },
            client_id: Bytes::from(mqtt.client_id.render(&vars)),
            username: mqtt.username.as_ref().map(|t| Bytes::from(t.render(&vars))),
            password: mqtt.password.as_ref().map(|s| s.0.clone()),
            keep_alive: mqtt.keep_alive,
            max_inflight: mqtt.max_inflight,
            connack_timeout: dest.pool.connect_timeout.max(Duration::from_secs(1)),
            backoff_initial: dest.pool.backoff_initial.max(Duration::from_millis(10)),
            backoff_max: dest.pool.backoff_max.max(dest.pool.backoff_initial),
            linger: mqtt.linger,
        })
    }
}

/// A link shared by its driver task and the device sessions that use it.
pub struct Link {
    /// The state machine (borrow briefly, never across an await).
    pub core: RefCell<LinkCore>,
    /// Wakes the driver when the core has something to write.
    pub wake: Signal,
    retired: Cell<bool>,
    ended: Cell<bool>,
}

impl Link {
    /// A new, disconnected link.
    pub fn new(core: LinkCore) -> Rc<Link> {
        Rc::new(Link {
            core: RefCell::new(core),
            wake: Signal::default(),
            retired: Cell::new(false),
            ended: Cell::new(false),
        })
    }

    /// Run `f` on the core, then wake the driver if the outbox just became non-empty or just
    /// reached [`LINGER_FLUSH_BYTES`]. The driver never sleeps on a non-empty outbox except while
    /// lingering (until its flush time or that size), so other additions need no wake-up: one
    /// wake per batch, not per message.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut LinkCore) -> R) -> R {
        let (r, wake) = {
            let mut core = self.core.borrow_mut();
            let before = core.outbox.len();
            let r = f(&mut core);
            let after = core.outbox.len();
            let wake = (before == 0 && after > 0)
                || (before < LINGER_FLUSH_BYTES && after >= LINGER_FLUSH_BYTES);
            (r, wake)
        };
        if wake {
            self.wake.notify();
        }
        r
    }

    /// A reload replaced this link's destination settings: finish what it carries, take no
    /// new sessions, and stop once idle.
    pub fn retire(&self) {
        self.retired.set(true);
        self.wake.notify();
    }

    /// True once the driver has stopped for good.
    pub fn has_ended(&self) -> bool {
        self.ended.get()
    }

    /// True if retired (or ended): new sessions must not use it.
    pub fn is_retired(&self) -> bool {
        self.retired.get() || self.ended.get()
    }

    fn idle_and_retired(&self) -> bool {
        let core = self.core.borrow();
        self.retired.get()
            && core.sessions.is_empty()
            && core.inflight.is_empty()
            && core.waiting.is_empty()
    }
}

/// Why one upstream connection ended.
#[derive(Debug)]
enum ConnectionEnd {
    /// The link is retired and idle: leave for good.
    Retired,
    /// Lost (IO error, close, ping timeout, protocol error); reconnect.
    Lost(String),
}

/// Drive `link` for destination `dest_name` until it is retired and idle (or its destination
/// leaves the plan). `fingerprint` identifies the destination settings the link was built for;
/// a reconnect under a plan whose destination differs ends the link (its sessions close, and
/// the devices' unacknowledged messages are resent by the devices through a new link).
pub async fn run_link(
    state: Rc<ShardState>,
    link: Rc<Link>,
    dest_name: String,
    fingerprint: u64,
    settings: LinkSettings,
    counters: Rc<AggregateCounters>,
) {
    let mut delay = settings.backoff_initial;
    let mut salt = state.id.0 as u64 ^ fingerprint;
    loop {
        if link.idle_and_retired() {
            break;
        }
        let (plan, generation) = state.current();
        let Some(dest) = plan
            .destinations
            .iter()
            .find(|d| d.name == dest_name && destination_fingerprint(d) == Some(fingerprint))
        else {
            // The plan no longer has this destination with these settings.
            break;
        };
        match state.connect_new(generation, dest).await {
            Ok(conn) => {
                let mut tls = conn.stream;
                match handshake(&mut tls, &settings).await {
                    Ok(receive_maximum) => {
                        bump(&counters.link_connects);
                        delay = settings.backoff_initial;
                        let resent = link.with_core(|c| c.on_connected(receive_maximum));
                        tracing::info!(shard = state.id.0, dest = %dest_name, resent, "mqtt link up");
                        let end = serve_connection(&mut tls, &link, &settings).await;
                        link.core.borrow_mut().on_disconnected();
                        match end {
                            ConnectionEnd::Retired => {
                                let _ = reactor::timeout(Duration::from_secs(1), tls.close()).await;
                                break;
                            }
                            ConnectionEnd::Lost(why) => {
                                bump(&counters.link_failures);
                                tracing::info!(shard = state.id.0, dest = %dest_name, reason = %why, "mqtt link lost");
                            }
                        }
                    }
                    Err(why) => {
                        bump(&counters.link_failures);
                        tracing::info!(shard = state.id.0, dest = %dest_name, reason = %why, "mqtt link refused");
                    }
                }
            }
            Err(e) => {
                bump(&counters.link_failures);
                tracing::debug!(shard = state.id.0, dest = %dest_name, error = %e, "mqtt link connect failed");
            }
        }
        if link.idle_and_retired() {
            break;
        }
        // Full jitter between half and all of the current delay.
        salt = salt
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let frac = 0.5 + 0.5 * ((salt >> 11) as f64 / (1u64 << 53) as f64);
        let wait = delay.mul_f64(frac);
        let _ = select2(reactor::sleep(wait), async {
            // A retired, idle link need not wait out its backoff.
            while !link.idle_and_retired() {
                link.wake.wait().await;
            }
        })
        .await;
        delay = delay.saturating_mul(2).min(settings.backoff_max);
    }
    link.ended.set(true);
    link.core.borrow_mut().close_sessions();
}

/// CONNECT and wait for CONNACK; the broker's Receive Maximum on success.
async fn handshake(
    tls: &mut UpstreamStream,
    settings: &LinkSettings,
) -> Result<Option<NonZeroU16>, String> {
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: settings.version,
        clean_start: true,
        keep_alive: u16::try_from(settings.keep_alive.as_secs()).unwrap_or(u16::MAX),
        properties: Properties::default(),
        client_id: settings.client_id.clone(),
        will: None,
        username: settings.username.clone(),
        password: settings.password.clone(),
    }));
    let mut out = BytesMut::new();
    mqtt::encode(&connect, settings.version, &mut out).map_err(|e| format!("CONNECT: {e:?}"))?;
    let limits = DecodeLimits {
        max_packet_size: UPSTREAM_MAX_PACKET,
    };
    let exchange = async {
        tls.write_all(&[&out]).await.map_err(|e| e.to_string())?;
        loop {
            match mqtt::decode_packet(tls.plaintext(), settings.version, Sender::Server, &limits) {
                Ok(Decoded::Complete(Packet::ConnAck(ack))) => {
                    if ack.reason_code != mqtt::ReasonCode::SUCCESS {
                        return Err(format!("CONNACK {}", ack.reason_code));
                    }
                    return Ok(ack.properties.receive_maximum);
                }
                Ok(Decoded::Complete(other)) => {
                    return Err(format!("expected CONNACK, got {:?}", other.packet_type()))
                }
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(format!("malformed CONNACK: {e:?}")),
            }
            match tls.fill().await {
                Ok(true) => {}
                Ok(false) => return Err("closed before CONNACK".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match reactor::timeout(settings.connack_timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err("no CONNACK in time".into()),
    }
}

/// Pump one established connection until it ends.
async fn serve_connection(
    tls: &mut UpstreamStream,
    link: &Rc<Link>,
    settings: &LinkSettings,
) -> ConnectionEnd {
    let limits = DecodeLimits {
        max_packet_size: UPSTREAM_MAX_PACKET,
    };
    let half = (settings.keep_alive / 2).max(Duration::from_millis(500));
    let write_timeout = settings.keep_alive.max(Duration::from_secs(5));
    let mut next_ping = Instant::now() + half;
    let mut ping_deadline: Option<Instant> = None;
    // While lingering: when the queued bytes are written even if no more arrive.
    let mut flush_at: Option<Instant> = None;
    loop {
        let out = {
            let mut core = link.core.borrow_mut();
            let queued = core.outbox.len();
            let write_now = queued > 0
                && (settings.linger.is_zero()
                    || queued >= LINGER_FLUSH_BYTES
                    || link.retired.get()
                    || reactor::now()
                        >= *flush_at.get_or_insert_with(|| reactor::now() + settings.linger));
            if write_now {
                flush_at = None;
                core.take_outbox()
            } else {
                None
            }
        };
        if let Some(out) = out {
            match reactor::timeout(write_timeout, tls.write_all(&[&out])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return ConnectionEnd::Lost(e.to_string()),
                Err(_) => return ConnectionEnd::Lost("write timed out".into()),
            }
            // More may have been queued while writing: go round before sleeping.
            continue;
        }
        if flush_at.is_none() && link.idle_and_retired() {
            let mut bye = BytesMut::new();
            let disconnect = Packet::Disconnect(Disconnect {
                reason_code: mqtt::ReasonCode::SUCCESS,
                properties: Properties::default(),
            });
            if mqtt::encode(&disconnect, settings.version, &mut bye).is_ok() {
                let _ = reactor::timeout(Duration::from_secs(1), tls.write_all(&[&bye])).await;
            }
            return ConnectionEnd::Retired;
        }
        let ping_at = ping_deadline.unwrap_or(next_ping);
        let deadline = flush_at.map_or(ping_at, |f| f.min(ping_at));
        match select2(
            tls.fill(),
            select2(link.wake.wait(), reactor::sleep_until(deadline)),
        )
        .await
        {
            Either::Left(Ok(true)) => loop {
                let decoded =
                    mqtt::decode_packet(tls.plaintext(), settings.version, Sender::Server, &limits);
                match decoded {
                    Ok(Decoded::Complete(Packet::PingResp)) => {
                        ping_deadline = None;
                    }
                    Ok(Decoded::Complete(packet)) => {
                        if let Err(e) = link.with_core(|c| c.handle(packet)) {
                            return ConnectionEnd::Lost(e.to_string());
                        }
                    }
                    Ok(Decoded::Incomplete { .. }) => break,
                    Err(e) => {
                        return ConnectionEnd::Lost(LinkProtocolError::Malformed(e).to_string())
                    }
                }
            },
            Either::Left(Ok(false)) => return ConnectionEnd::Lost("broker closed".into()),
            Either::Left(Err(e)) => return ConnectionEnd::Lost(e.to_string()),
            Either::Right(Either::Left(())) => {}
            Either::Right(Either::Right(())) if reactor::now() < ping_at => {
                // The linger time is up: written at the top of the loop.
            }
            Either::Right(Either::Right(())) => {
                if ping_deadline.is_some() {
                    return ConnectionEnd::Lost("no PINGRESP within keep-alive".into());
                }
                link.core.borrow_mut().queue_ping();
                let now = Instant::now();
                ping_deadline = Some(now + half);
                next_ping = now + half;
            }
        }
        if ping_deadline.is_none() && Instant::now() >= next_ping {
            link.core.borrow_mut().queue_ping();
            let now = Instant::now();
            ping_deadline = Some(now + half);
            next_ping = now + half;
        }
    }
}

/// A hash of every destination setting a link depends on (endpoint, TLS name, version, client
/// id, credentials, keep-alive, links per shard, in-flight bound); `None` unless the destination
/// is in aggregate mode. Two plans whose fingerprints match can share links.
///
/// The endpoint's resolved addresses are deliberately left out: DNS may return them in another
/// order or another subset at every reload, and a changed fingerprint retires the links (every
/// device on them reconnects). Links connect through the shard pool's current addresses, which
/// DNS re-resolution updates in place.
pub fn destination_fingerprint(dest: &DestinationPlan) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mqtt = dest
        .mqtt
        .as_ref()
        .filter(|m| m.mode == MqttMode::Aggregate)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dest.endpoint.hash(&mut h);
    format!("{:?}", dest.server_name).hash(&mut h);
    format!("{:?}", mqtt.version).hash(&mut h);
    mqtt.client_id.as_str().hash(&mut h);
    mqtt.username.as_ref().map(|t| t.as_str()).hash(&mut h);
    mqtt.password.as_ref().map(|s| &s.0[..]).hash(&mut h);
    mqtt.keep_alive.hash(&mut h);
    mqtt.connections_per_shard.hash(&mut h);
    mqtt.max_inflight.hash(&mut h);
    mqtt.linger.hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    fn publish(topic: &'static str, qos: QoS, payload: &'static str) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(topic.as_bytes()),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    /// Decode every packet of an outbox.
    fn packets(core: &mut LinkCore) -> Vec<Packet> {
        let mut buf = BytesMut::from(&core.take_outbox().unwrap_or_default()[..]);
        let mut out = Vec::new();
        while let Ok(Decoded::Complete(p)) = mqtt::decode_packet(
            &mut buf,
            core.version(),
            Sender::Client,
            &DecodeLimits::default(),
        ) {
            out.push(p);
        }
        assert!(buf.is_empty(), "outbox held a partial packet");
        out
    }

    fn publishes(core: &mut LinkCore) -> Vec<Publish> {
        packets(core)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn core(max_inflight: u16) -> LinkCore {
        LinkCore::new(
            ProtocolVersion::V311,
            max_inflight,
            Rc::new(AggregateCounters::default()),
        )
    }

    fn owner(session: SessionKey, n: u16) -> Option<PublishOwner> {
        Some(PublishOwner {
            session,
            device_packet_id: id(n),
            device_qos: QoS::AtLeastOnce,
        })
    }

    #[test]
    fn device_is_acked_only_after_the_broker_acks() {
        let mut c = core(8);
        let mailbox = Rc::new(SessionMailbox::default());
        let s = c.register(mailbox.clone());
        c.on_connected(None);
        assert_eq!(
            c.publish(publish("d/1/t", QoS::AtLeastOnce, "a"), owner(s, 7)),
            Enqueued::Sent
        );
        let sent = publishes(&mut c);
        assert_eq!(sent.len(), 1);
        let upstream_id = sent[0].packet_id.expect("QoS 1 has an id");
        assert!(mailbox.drain().is_empty(), "nothing acked before PUBACK");
        c.handle(Packet::PubAck(PubResponse::success(upstream_id)))
            .expect("valid");
        let events: Vec<_> = mailbox.drain().into_iter().collect();
        assert_eq!(
            events,
            vec![LinkEvent::Acked {
                device_packet_id: id(7),
                device_qos: QoS::AtLeastOnce,
                reason: mqtt::ReasonCode::SUCCESS
            }]
        );
        assert_eq!(c.inflight_len(), 0);
    }

    #[test]
    fn unacked_publishes_are_resent_in_order_with_dup_after_reconnect() {
        let mut c = core(2);
        let mailbox = Rc::new(SessionMailbox::default());
        let s = c.register(mailbox.clone());
        // Two before the first connection: they wait.
        c.publish(publish("t", QoS::AtLeastOnce, "1"), owner(s, 1));
        c.publish(publish("t", QoS::AtLeastOnce, "2"), owner(s, 2));
        assert!(c.take_outbox().is_none());
        assert_eq!(c.on_connected(None), 0, "first sends are not resends");
        c.publish(publish("t", QoS::AtLeastOnce, "3"), owner(s, 3));
        let first = publishes(&mut c);
        // Window of 2: "3" waits.
        assert_eq!(
            first.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
            vec![&b"1"[..], b"2"]
        );
        assert!(first.iter().all(|p| !p.dup));
        // QoS 0 during the outage is dropped; QoS 1 waits.
        c.on_disconnected();
        assert_eq!(
            c.publish(publish("t", QoS::AtMostOnce, "x"), None),
            Enqueued::Dropped
        );
        c.publish(publish("t", QoS::AtLeastOnce, "4"), owner(s, 4));
        assert_eq!(
            c.on_connected(None),
            2,
            "only the two in flight count as resent"
        );
        let again = publishes(&mut c);
        assert_eq!(
            again
                .iter()
                .map(|p| (&p.payload[..], p.dup))
                .collect::<Vec<_>>(),
            vec![(&b"1"[..], true), (&b"2"[..], true)]
        );
        assert_eq!(again[0].packet_id, first[0].packet_id);
        // Acks free the window in order: 3 then 4 go out, never duplicated.
        c.handle(Packet::PubAck(PubResponse::success(
            again[0].packet_id.expect("id"),
        )))
        .expect("valid");
        c.handle(Packet::PubAck(PubResponse::success(
            again[1].packet_id.expect("id"),
        )))
        .expect("valid");
        let rest = publishes(&mut c);
        assert_eq!(
            rest.iter()
                .map(|p| (&p.payload[..], p.dup))
                .collect::<Vec<_>>(),
            vec![(&b"3"[..], false), (&b"4"[..], false)]
        );
        let acked: Vec<_> = mailbox
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::Acked {
                    device_packet_id, ..
                } => Some(device_packet_id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(acked, vec![1, 2]);
    }

    #[test]
    fn a_puback_acknowledges_only_the_publish_in_flight_under_its_id() {
        let mut c = core(4);
        let mailbox = Rc::new(SessionMailbox::default());
        let s = c.register(mailbox.clone());
        c.on_connected(None);
        c.publish(publish("t", QoS::AtLeastOnce, "1"), owner(s, 11));
        c.publish(publish("t", QoS::AtLeastOnce, "2"), owner(s, 12));
        let sent = publishes(&mut c);
        let (a, b) = (
            sent[0].packet_id.expect("id"),
            sent[1].packet_id.expect("id"),
        );
        // An id nothing is in flight under (a stale PUBACK) acknowledges nothing.
        let stale = id(a.get().wrapping_add(100));
        c.handle(Packet::PubAck(PubResponse::success(stale)))
            .expect("valid");
        assert!(mailbox.drain().is_empty());
        // The broker dies; on the new connection "1" and "2" go again under their ids, and
        // each PUBACK acknowledges its own message once; a repeated PUBACK acknowledges nothing.
        c.on_disconnected();
        assert_eq!(c.on_connected(None), 2);
        let again = publishes(&mut c);
        assert_eq!(
            again.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
            vec![Some(a), Some(b)]
        );
        c.handle(Packet::PubAck(PubResponse::success(b)))
            .expect("valid");
        c.handle(Packet::PubAck(PubResponse::success(b)))
            .expect("valid");
        let acked: Vec<u16> = mailbox
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::Acked {
                    device_packet_id, ..
                } => Some(device_packet_id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(acked, vec![12]);
        assert_eq!(c.inflight_len(), 1, "\"1\" is still unacknowledged");
    }

    #[test]
    fn qos0_keeps_its_place_behind_waiting_qos1() {
        let mut c = core(1);
        let s = c.register(Rc::new(SessionMailbox::default()));
        c.on_connected(None);
        c.publish(publish("t", QoS::AtLeastOnce, "1"), owner(s, 1));
        c.publish(publish("t", QoS::AtLeastOnce, "2"), owner(s, 2));
        assert_eq!(
            c.publish(publish("t", QoS::AtMostOnce, "3"), None),
            Enqueued::Queued
        );
        let first = publishes(&mut c);
        assert_eq!(first.len(), 1);
        c.handle(Packet::PubAck(PubResponse::success(
            first[0].packet_id.expect("id"),
        )))
        .expect("valid");
        let next = publishes(&mut c);
        assert_eq!(
            next.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
            vec![&b"2"[..], b"3"]
        );
    }

    #[test]
    fn broker_receive_maximum_narrows_the_window() {
        let mut c = core(10);
        let s = c.register(Rc::new(SessionMailbox::default()));
        for n in 1..=5 {
            c.publish(publish("t", QoS::ExactlyOnce, "p"), owner(s, n));
        }
        c.on_connected(NonZeroU16::new(3));
        let sent = publishes(&mut c);
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|p| p.qos == QoS::AtLeastOnce));
        assert_eq!(c.waiting_len(), 2);
    }

    #[test]
    fn subscriptions_are_refcounted_and_resubscribed_after_reconnect() {
        let mut c = core(4);
        let m1 = Rc::new(SessionMailbox::default());
        let m2 = Rc::new(SessionMailbox::default());
        let s1 = c.register(m1.clone());
        let s2 = c.register(m2.clone());
        c.on_connected(None);
        let filter = Bytes::from_static(b"devices/a/cmd/#");
        c.subscribe(s1, filter.clone(), id(5), 0);
        c.subscribe(s2, filter.clone(), id(9), 1);
        let sent = packets(&mut c);
        assert_eq!(sent.len(), 1, "one upstream SUBSCRIBE per distinct filter");
        let Packet::Subscribe(sub) = &sent[0] else {
            panic!("expected SUBSCRIBE, got {sent:?}");
        };
        c.handle(Packet::SubAck(mqtt::SubAck {
            packet_id: sub.packet_id,
            properties: Properties::default(),
            reason_codes: vec![mqtt::ReasonCode::GRANTED_QOS_1],
        }))
        .expect("valid");
        assert_eq!(
            m1.drain().into_iter().collect::<Vec<_>>(),
            vec![LinkEvent::SubscribeResult {
                device_packet_id: id(5),
                index: 0,
                code: mqtt::ReasonCode::GRANTED_QOS_1
            }]
        );
        assert_eq!(m2.drain().len(), 1);
        // Downlink goes to both subscribers, once each.
        c.handle(Packet::Publish(publish(
            "devices/a/cmd/x",
            QoS::AtMostOnce,
            "go",
        )))
        .expect("valid");
        assert_eq!(m1.drain().len(), 1);
        assert_eq!(m2.drain().len(), 1);
        // Reconnect: re-subscribed.
        c.on_disconnected();
        c.on_connected(None);
        assert!(matches!(&packets(&mut c)[..], [Packet::Subscribe(_)]));
        // First unsubscriber keeps the filter; the last sends UNSUBSCRIBE.
        c.unsubscribe(s1, &filter);
        assert!(packets(&mut c).is_empty());
        c.unregister(s2);
        assert!(matches!(&packets(&mut c)[..], [Packet::Unsubscribe(_)]));
    }

    #[test]
    fn downlink_qos1_is_acknowledged_upstream() {
        let mut c = core(4);
        c.on_connected(None);
        let mut p = publish("x", QoS::AtLeastOnce, "y");
        p.packet_id = Some(id(42));
        c.handle(Packet::Publish(p)).expect("valid");
        assert_eq!(
            packets(&mut c),
            vec![Packet::PubAck(PubResponse::success(id(42)))]
        );
    }

    #[test]
    fn broker_disconnect_is_an_error() {
        let mut c = core(4);
        c.on_connected(None);
        assert!(c
            .handle(Packet::Disconnect(Disconnect {
                reason_code: mqtt::ReasonCode::SERVER_BUSY,
                properties: Properties::default(),
            }))
            .is_err());
        assert!(c
            .handle(Packet::PubRec(PubResponse::success(id(1))))
            .is_err());
    }

    #[test]
    fn topic_matching_follows_section_4_7() {
        assert!(topic_matches(b"a/+/c", b"a/b/c"));
        assert!(!topic_matches(b"a/+/c", b"a/b/d"));
        assert!(topic_matches(b"a/#", b"a"));
        assert!(topic_matches(b"a/#", b"a/b/c"));
        assert!(topic_matches(b"#", b"a/b"));
        assert!(!topic_matches(b"#", b"$SYS/x"));
        assert!(!topic_matches(b"+/x", b"$SYS/x"));
        assert!(topic_matches(b"$SYS/#", b"$SYS/x"));
        assert!(!topic_matches(b"a/b", b"a/b/c"));
        assert!(!topic_matches(b"a/b/c", b"a/b"));
        assert!(topic_matches(b"a//b", b"a//b"));
        assert!(topic_matches(b"+", b""));
    }

    #[test]
    fn packet_ids_skip_those_in_use() {
        let mut c = core(3);
        let s = c.register(Rc::new(SessionMailbox::default()));
        c.on_connected(None);
        c.next_id = u16::MAX - 1;
        for n in 1..=3 {
            c.publish(publish("t", QoS::AtLeastOnce, "p"), owner(s, n));
        }
        let ids: Vec<u16> = publishes(&mut c)
            .iter()
            .filter_map(|p| p.packet_id.map(NonZeroU16::get))
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1, 2]);
    }
}
