//! [`LinkCore`]: the state machine of one upstream MQTT link, with no IO and no clock.
//!
//! Device sessions hand it PUBLISHes, SUBSCRIBE and UNSUBSCRIBE requests ([`LinkCore::publish`],
//! [`LinkCore::subscribe`], [`LinkCore::unsubscribe`]); the driver feeds it the broker's packets
//! ([`LinkCore::handle`]) and connection changes ([`LinkCore::on_connected`],
//! [`LinkCore::on_disconnected`]), and writes what [`LinkCore::take_outbox`] returns. Answers for
//! a device session go to that session's [`SessionMailbox`]. The delivery rules (in-flight
//! window, FIFO order, resend with DUP after a reconnect, QoS 0 drops, subscription reference
//! counting and re-subscription) are in the parent module's docs.
//!
//! What this module does not do: sockets, TLS, timers, pings, backoff or reading a clock (all in
//! the driver, `super::driver`); it encodes packets into its outbox and nothing more.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::events::{
    bump, AggregateCounters, Enqueued, LinkEvent, LinkProtocolError, PublishOwner, SessionKey,
    SessionMailbox,
};
use super::rate::PublishPacer;
use crate::proto::mqtt::{
    self, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use crate::stats::{DestinationLatencies, Latency, Protocol};

/// QoS 0 PUBLISHes that may queue behind waiting QoS 1 ones before further QoS 0 is dropped.
const QUEUED_QOS0_LIMIT: usize = 4096;

/// Outbox size beyond which new QoS 0 PUBLISHes are dropped rather than buffered (a slow broker).
const OUTBOX_QOS0_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug)]
struct Outgoing {
    /// Upstream PUBLISH; its packet id is set once it is in flight.
    publish: Publish,
    owner: Option<PublishOwner>,
    /// While waiting: when it was handed to the link (for `link_wait`). Once written: when it
    /// was last written (for `upstream_rtt`). The caller's clock (the reactor's), so no epoch
    /// to keep; 16 bytes on a PUBLISH that already holds ~150.
    since: Instant,
}

/// Where a link records its latency samples (`upstream_rtt`, `link_wait`, protocol mqtt): the
/// shard's upstream histograms, under the link's destination.
struct LatencySink {
    histograms: Rc<RefCell<DestinationLatencies>>,
    index: usize,
    name: Box<str>,
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
    /// `max_publish_rate`: spaces every PUBLISH written (first sends, resends, QoS 0, Wills).
    pacer: Option<PublishPacer>,
    /// Latency histograms to record into (`None`: not recorded, as in most unit tests).
    latency: Option<LatencySink>,
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
            pacer: None,
            latency: None,
        }
    }

    /// Record `upstream_rtt` (QoS 1 PUBLISH written → its PUBACK read) and `link_wait` (a
    /// PUBLISH handed over → written) into `histograms` for destination `index` named `name`.
    pub fn set_latency_histograms(
        &mut self,
        histograms: Rc<RefCell<DestinationLatencies>>,
        index: usize,
        name: &str,
    ) {
        self.latency = Some(LatencySink {
            histograms,
            index,
            name: name.into(),
        });
    }

    fn record(&self, latency: Latency, elapsed: Duration) {
        if let Some(sink) = &self.latency {
            sink.histograms.borrow_mut().record(
                sink.index,
                &sink.name,
                latency,
                Protocol::Mqtt,
                elapsed.as_micros() as u64,
            );
        }
    }

    /// Limit the PUBLISHes this link writes to `per_second` in any one-second window
    /// (`max_publish_rate`; `None`: unlimited). See [`PublishPacer`].
    pub fn set_publish_rate(&mut self, per_second: Option<NonZeroU32>) {
        self.pacer = per_second.map(PublishPacer::new);
    }

    /// Whether the link has a `max_publish_rate`.
    pub fn is_rate_limited(&self) -> bool {
        self.pacer.is_some()
    }

    /// How long a PUBLISH handed over at `now` waits for the rate limit alone (zero without
    /// one): its own turn after those already waiting. A lower bound: the in-flight window, or
    /// a connection not up, may hold it longer (that wait is `accept_while_down`'s business).
    pub fn publish_delay(&self, now: Instant) -> Duration {
        self.pacer
            .as_ref()
            .map_or(Duration::ZERO, |p| p.delay(now, self.waiting.len()))
    }

    /// When the driver must call [`LinkCore::poll`] again: a PUBLISH waits for the rate limit
    /// alone until then. `None`: nothing waits on the rate.
    pub fn pace_deadline(&self, now: Instant) -> Option<Instant> {
        if !self.connected || self.waiting.is_empty() {
            return None;
        }
        self.pacer.as_ref()?.blocked_until(now)
    }

    /// Send what the rate limit allows at `now` (the driver calls this at
    /// [`LinkCore::pace_deadline`]).
    pub fn poll(&mut self, now: Instant) {
        self.pump(now);
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

    /// Bytes queued in the outbox (what [`LinkCore::take_outbox`] would return).
    pub(super) fn outbox_len(&self) -> usize {
        self.outbox.len()
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
    ///
    /// `now` is the reactor's clock, for the rate limit.
    pub fn publish(
        &mut self,
        now: Instant,
        mut publish: Publish,
        owner: Option<PublishOwner>,
    ) -> Enqueued {
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
            if self.connected && self.waiting.is_empty() && self.pacer_ready(now) {
                self.write(&Packet::Publish(publish));
                self.paced(now);
                self.record(Latency::LinkWait, Duration::ZERO);
                return Enqueued::Sent;
            }
            self.queued_qos0 += 1;
            self.waiting.push_back(Outgoing {
                publish,
                owner: None,
                since: now,
            });
            return Enqueued::Queued;
        }
        publish.qos = QoS::AtLeastOnce;
        let was_waiting = self.waiting.len();
        self.waiting.push_back(Outgoing {
            publish,
            owner,
            since: now,
        });
        self.pump(now);
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

    /// The upstream session is established (CONNACK accepted) at `now`.
    /// `broker_receive_maximum` is the 5.0 CONNACK's Receive Maximum. Re-subscribes, re-sends
    /// unacknowledged PUBLISHes in order with DUP, then sends what waited (all of it paced by
    /// the rate limit, if any: resends count against it like any PUBLISH). Returns how many
    /// PUBLISHes are to be sent again (not counting those that were waiting and go out for the
    /// first time).
    pub fn on_connected(
        &mut self,
        now: Instant,
        broker_receive_maximum: Option<NonZeroU16>,
    ) -> usize {
        self.connected = true;
        self.ever_connected = true;
        self.outbox.clear();
        self.window = match broker_receive_maximum {
            Some(rm) => self.max_inflight.min(usize::from(rm.get())),
            None => self.max_inflight,
        };
        // Unacknowledged ones go back to the head of the queue, in order, keeping their ids:
        // `pump` sends them first (an id already set marks a resend).
        let inflight = std::mem::take(&mut self.inflight);
        let resent = inflight.len();
        for mut out in inflight.into_iter().rev() {
            out.publish.dup = true;
            self.waiting.push_front(out);
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
        self.pump(now);
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
        // Only the in-flight PUBLISHes (and those waiting to be resent) keep their packet ids.
        self.ids_in_use = self
            .inflight
            .iter()
            .chain(&self.waiting)
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

    /// Apply one packet from the broker, received at `now` (PINGRESP is the driver's business
    /// and ignored here).
    pub fn handle(&mut self, now: Instant, packet: Packet) -> Result<(), LinkProtocolError> {
        match packet {
            Packet::PubAck(ack) => {
                self.on_puback(now, ack);
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

    fn on_puback(&mut self, now: Instant, ack: PubResponse) {
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
        let upstream_rtt = now.saturating_duration_since(done.since);
        self.record(Latency::UpstreamRtt, upstream_rtt);
        if let Some(owner) = done.owner {
            if let Some(mailbox) = self.sessions.get(&owner.session) {
                mailbox.push(LinkEvent::Acked {
                    device_packet_id: owner.device_packet_id,
                    device_qos: owner.device_qos,
                    reason: ack.reason_code,
                    upstream_rtt_us: u32::try_from(upstream_rtt.as_micros()).unwrap_or(u32::MAX),
                });
            }
        }
        self.pump(now);
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

    /// Move waiting PUBLISHes into the outbox while connected, the window has room and the
    /// rate limit allows at `now`. One with a packet id already is a resend after a reconnect:
    /// it was in the window before and goes regardless of it.
    fn pump(&mut self, now: Instant) {
        while self.connected {
            let Some(front) = self.waiting.front() else {
                return;
            };
            if !self.pacer_ready(now) {
                return;
            }
            if front.publish.qos == QoS::AtMostOnce {
                if let Some(out) = self.waiting.pop_front() {
                    self.queued_qos0 = self.queued_qos0.saturating_sub(1);
                    self.write(&Packet::Publish(out.publish));
                    self.paced(now);
                    self.record(Latency::LinkWait, now.saturating_duration_since(out.since));
                }
                continue;
            }
            let resend = front.publish.packet_id;
            if resend.is_none() && self.inflight.len() >= self.window {
                return;
            }
            let Some(id) = resend.or_else(|| self.alloc_id()) else {
                return;
            };
            let Some(mut out) = self.waiting.pop_front() else {
                return;
            };
            out.publish.packet_id = Some(id);
            self.write(&Packet::Publish(out.publish.clone()));
            self.paced(now);
            if resend.is_none() {
                // A resend's wait was counted when it was first written.
                self.record(Latency::LinkWait, now.saturating_duration_since(out.since));
            }
            out.since = now;
            if resend.is_some() {
                bump(&self.counters.resent_after_reconnect);
                trace_publish(&self.name, "uplink publish resent", &out);
            } else {
                trace_publish(&self.name, "uplink publish sent", &out);
            }
            self.inflight.push_back(out);
        }
    }

    fn pacer_ready(&self, now: Instant) -> bool {
        self.pacer.as_ref().is_none_or(|p| p.ready(now))
    }

    /// Account a PUBLISH just written at `now` to the rate limit.
    fn paced(&mut self, now: Instant) {
        if let Some(p) = &mut self.pacer {
            p.sent(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mqtt::{DecodeLimits, Decoded, Disconnect, Sender};

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    /// For tests without a rate limit, where time does not matter.
    fn now() -> Instant {
        Instant::now()
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
        let t0 = now();
        c.on_connected(t0, None);
        assert_eq!(
            c.publish(t0, publish("d/1/t", QoS::AtLeastOnce, "a"), owner(s, 7)),
            Enqueued::Sent
        );
        let sent = publishes(&mut c);
        assert_eq!(sent.len(), 1);
        let upstream_id = sent[0].packet_id.expect("QoS 1 has an id");
        assert!(mailbox.drain().is_empty(), "nothing acked before PUBACK");
        c.handle(
            t0 + Duration::from_millis(3),
            Packet::PubAck(PubResponse::success(upstream_id)),
        )
        .expect("valid");
        let events: Vec<_> = mailbox.drain().into_iter().collect();
        assert_eq!(
            events,
            vec![LinkEvent::Acked {
                device_packet_id: id(7),
                device_qos: QoS::AtLeastOnce,
                reason: mqtt::ReasonCode::SUCCESS,
                upstream_rtt_us: 3_000,
            }]
        );
        assert_eq!(c.inflight_len(), 0);
    }

    /// The samples of one histogram, as (value in µs, count) pairs.
    fn samples(h: &RefCell<DestinationLatencies>, latency: Latency) -> Vec<(u64, u64)> {
        h.borrow()
            .get("dest")
            .and_then(|d| d.get(latency, Protocol::Mqtt))
            .map(|h| {
                h.iter_recorded()
                    .map(|v| {
                        (
                            h.highest_equivalent(v.value_iterated_to()),
                            v.count_at_value(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `link_wait` is handed over → first written, for QoS 0 and QoS 1 alike (a resend after a
    /// reconnect adds none); `upstream_rtt` is last written → PUBACK, once per PUBACK.
    #[test]
    fn waits_and_round_trips_are_recorded_once_per_publish() {
        let histograms = Rc::new(RefCell::new(DestinationLatencies::default()));
        histograms.borrow_mut().set_destinations(["dest"]);
        let mut c = core(1);
        c.set_latency_histograms(histograms.clone(), 0, "dest");
        let s = c.register(Rc::new(SessionMailbox::default()));
        let ms = Duration::from_millis;
        let t0 = now();
        // Before the first connection: both wait for it.
        c.publish(t0, publish("t", QoS::AtLeastOnce, "a"), owner(s, 1));
        c.publish(t0 + ms(1), publish("t", QoS::AtMostOnce, "b"), None);
        assert!(samples(&histograms, Latency::LinkWait).is_empty());
        // Connected at 10 ms: the QoS 1 one goes (waited 10 ms), the QoS 0 one queues behind
        // it in order... and goes too (QoS 0 takes no window slot): waited 9 ms.
        c.on_connected(t0 + ms(10), None);
        assert_eq!(publishes(&mut c).len(), 2);
        // A second QoS 1 waits for the window (1) until the first PUBACK at 30 ms.
        c.publish(
            t0 + ms(12),
            publish("t", QoS::AtLeastOnce, "c"),
            owner(s, 2),
        );
        assert!(publishes(&mut c).is_empty());
        c.handle(t0 + ms(30), Packet::PubAck(PubResponse::success(id(1))))
            .expect("valid");
        let second = publishes(&mut c);
        assert_eq!(second.len(), 1);
        // Lost at 35 ms, resent at 100 ms, acknowledged at 104 ms: its round trip is from the
        // resend, and the resend is no second wait.
        c.on_disconnected();
        c.on_connected(t0 + ms(100), None);
        assert_eq!(publishes(&mut c).len(), 1);
        c.handle(
            t0 + ms(104),
            Packet::PubAck(PubResponse::success(second[0].packet_id.expect("id"))),
        )
        .expect("valid");
        // Connected and idle: a QoS 0 one goes at once (1 µs, the histogram's floor).
        c.publish(t0 + ms(105), publish("t", QoS::AtMostOnce, "d"), None);
        let close = |v: u64, want_us: u64| v.abs_diff(want_us) <= want_us / 500 + 1;
        let waits = samples(&histograms, Latency::LinkWait);
        let wanted_waits = [1, 9_000, 10_000, 18_000];
        assert_eq!(waits.iter().map(|w| w.1).sum::<u64>(), 4, "{waits:?}");
        for (got, want) in waits.iter().zip(wanted_waits) {
            assert!(close(got.0, want), "{waits:?}");
        }
        let rtts = samples(&histograms, Latency::UpstreamRtt);
        assert_eq!(rtts.len(), 2, "{rtts:?}");
        assert!(
            close(rtts[0].0, 4_000) && close(rtts[1].0, 20_000),
            "{rtts:?}"
        );
        assert_eq!((rtts[0].1, rtts[1].1), (1, 1));
    }

    #[test]
    fn unacked_publishes_are_resent_in_order_with_dup_after_reconnect() {
        let mut c = core(2);
        let mailbox = Rc::new(SessionMailbox::default());
        let s = c.register(mailbox.clone());
        // Two before the first connection: they wait.
        c.publish(now(), publish("t", QoS::AtLeastOnce, "1"), owner(s, 1));
        c.publish(now(), publish("t", QoS::AtLeastOnce, "2"), owner(s, 2));
        assert!(c.take_outbox().is_none());
        assert_eq!(
            c.on_connected(now(), None),
            0,
            "first sends are not resends"
        );
        c.publish(now(), publish("t", QoS::AtLeastOnce, "3"), owner(s, 3));
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
            c.publish(now(), publish("t", QoS::AtMostOnce, "x"), None),
            Enqueued::Dropped
        );
        c.publish(now(), publish("t", QoS::AtLeastOnce, "4"), owner(s, 4));
        assert_eq!(
            c.on_connected(now(), None),
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
        c.handle(
            now(),
            Packet::PubAck(PubResponse::success(again[0].packet_id.expect("id"))),
        )
        .expect("valid");
        c.handle(
            now(),
            Packet::PubAck(PubResponse::success(again[1].packet_id.expect("id"))),
        )
        .expect("valid");
        let rest = publishes(&mut c);
        assert_eq!(
            rest.iter()
                .map(|p| (&p.payload[..], p.dup))
                .collect::<Vec<_>>(),
            vec![(&b"3"[..], false), (&b"4"[..], false)]
        );
        assert_eq!(acked_ids(&mailbox), vec![1, 2]);
    }

    /// The device packet ids acknowledged in `mailbox` since the last drain, in order.
    fn acked_ids(mailbox: &SessionMailbox) -> Vec<u16> {
        mailbox
            .drain()
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::Acked {
                    device_packet_id, ..
                } => Some(device_packet_id.get()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_puback_acknowledges_only_the_publish_in_flight_under_its_id() {
        let mut c = core(4);
        let mailbox = Rc::new(SessionMailbox::default());
        let s = c.register(mailbox.clone());
        c.on_connected(now(), None);
        c.publish(now(), publish("t", QoS::AtLeastOnce, "1"), owner(s, 11));
        c.publish(now(), publish("t", QoS::AtLeastOnce, "2"), owner(s, 12));
        let sent = publishes(&mut c);
        let (a, b) = (
            sent[0].packet_id.expect("id"),
            sent[1].packet_id.expect("id"),
        );
        // An id nothing is in flight under (a stale PUBACK) acknowledges nothing.
        let stale = id(a.get().wrapping_add(100));
        c.handle(now(), Packet::PubAck(PubResponse::success(stale)))
            .expect("valid");
        assert!(mailbox.drain().is_empty());
        // The broker dies; on the new connection "1" and "2" go again under their ids, and
        // each PUBACK acknowledges its own message once; a repeated PUBACK acknowledges nothing.
        c.on_disconnected();
        assert_eq!(c.on_connected(now(), None), 2);
        let again = publishes(&mut c);
        assert_eq!(
            again.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
            vec![Some(a), Some(b)]
        );
        c.handle(now(), Packet::PubAck(PubResponse::success(b)))
            .expect("valid");
        c.handle(now(), Packet::PubAck(PubResponse::success(b)))
            .expect("valid");
        assert_eq!(acked_ids(&mailbox), vec![12]);
        assert_eq!(c.inflight_len(), 1, "\"1\" is still unacknowledged");
    }

    #[test]
    fn qos0_keeps_its_place_behind_waiting_qos1() {
        let mut c = core(1);
        let s = c.register(Rc::new(SessionMailbox::default()));
        c.on_connected(now(), None);
        c.publish(now(), publish("t", QoS::AtLeastOnce, "1"), owner(s, 1));
        c.publish(now(), publish("t", QoS::AtLeastOnce, "2"), owner(s, 2));
        assert_eq!(
            c.publish(now(), publish("t", QoS::AtMostOnce, "3"), None),
            Enqueued::Queued
        );
        let first = publishes(&mut c);
        assert_eq!(first.len(), 1);
        c.handle(
            now(),
            Packet::PubAck(PubResponse::success(first[0].packet_id.expect("id"))),
        )
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
            c.publish(now(), publish("t", QoS::ExactlyOnce, "p"), owner(s, n));
        }
        c.on_connected(now(), NonZeroU16::new(3));
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
        c.on_connected(now(), None);
        let filter = Bytes::from_static(b"devices/a/cmd/#");
        c.subscribe(s1, filter.clone(), id(5), 0);
        c.subscribe(s2, filter.clone(), id(9), 1);
        let sent = packets(&mut c);
        assert_eq!(sent.len(), 1, "one upstream SUBSCRIBE per distinct filter");
        let Packet::Subscribe(sub) = &sent[0] else {
            panic!("expected SUBSCRIBE, got {sent:?}");
        };
        c.handle(
            now(),
            Packet::SubAck(mqtt::SubAck {
                packet_id: sub.packet_id,
                properties: Properties::default(),
                reason_codes: vec![mqtt::ReasonCode::GRANTED_QOS_1],
            }),
        )
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
        c.handle(
            now(),
            Packet::Publish(publish("devices/a/cmd/x", QoS::AtMostOnce, "go")),
        )
        .expect("valid");
        assert_eq!(m1.drain().len(), 1);
        assert_eq!(m2.drain().len(), 1);
        // Reconnect: re-subscribed.
        c.on_disconnected();
        c.on_connected(now(), None);
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
        c.on_connected(now(), None);
        let mut p = publish("x", QoS::AtLeastOnce, "y");
        p.packet_id = Some(id(42));
        c.handle(now(), Packet::Publish(p)).expect("valid");
        assert_eq!(
            packets(&mut c),
            vec![Packet::PubAck(PubResponse::success(id(42)))]
        );
    }

    #[test]
    fn broker_disconnect_is_an_error() {
        let mut c = core(4);
        c.on_connected(now(), None);
        assert!(c
            .handle(
                now(),
                Packet::Disconnect(Disconnect {
                    reason_code: mqtt::ReasonCode::SERVER_BUSY,
                    properties: Properties::default(),
                })
            )
            .is_err());
        assert!(c
            .handle(now(), Packet::PubRec(PubResponse::success(id(1))))
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
    fn max_publish_rate_paces_first_sends_qos0_and_resends_on_a_virtual_clock() {
        let t0 = Instant::now();
        let rate = NonZeroU32::new(10).expect("non-zero");
        let interval = PublishPacer::interval(rate);
        let mut c = core(100);
        c.set_publish_rate(Some(rate));
        let s = c.register(Rc::new(SessionMailbox::default()));
        c.on_connected(t0, None);
        assert_eq!(c.publish_delay(t0), Duration::ZERO);
        for n in 1..=3 {
            c.publish(t0, publish("t", QoS::AtLeastOnce, "p"), owner(s, n));
        }
        assert_eq!(
            c.publish(t0, publish("t", QoS::AtMostOnce, "q0"), None),
            Enqueued::Queued,
            "QoS 0 waits its turn behind the paced QoS 1"
        );
        assert_eq!(publishes(&mut c).len(), 1, "one at t0, the rest paced");
        assert_eq!(c.pace_deadline(t0), Some(t0 + interval));
        // A fifth would wait for the three ahead of it, then its own turn.
        assert_eq!(c.publish_delay(t0), interval * 4);
        // Polled early: nothing; at the deadline: one more.
        c.poll(t0 + interval / 2);
        assert!(publishes(&mut c).is_empty());
        c.poll(t0 + interval);
        assert_eq!(publishes(&mut c).len(), 1);
        // The connection drops with two in flight; on reconnect their resends are paced too.
        c.on_disconnected();
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.on_connected(t1, None), 2);
        let first = publishes(&mut c);
        assert_eq!(first.len(), 1);
        assert!(first[0].dup);
        let mut t = t1;
        let mut sent = Vec::new();
        while let Some(next) = c.pace_deadline(t) {
            t = next;
            c.poll(t);
            sent.extend(
                publishes(&mut c)
                    .into_iter()
                    .map(|p| (t - t1, p.dup, p.qos)),
            );
        }
        assert_eq!(
            sent,
            vec![
                (interval, true, QoS::AtLeastOnce),
                (interval * 2, false, QoS::AtLeastOnce),
            ],
            "resend first, then the third; the QoS 0 was dropped with the connection"
        );
        assert_eq!(c.waiting_len(), 0);
    }

    #[test]
    fn packet_ids_skip_those_in_use() {
        let mut c = core(3);
        let s = c.register(Rc::new(SessionMailbox::default()));
        c.on_connected(now(), None);
        c.next_id = u16::MAX - 1;
        for n in 1..=3 {
            c.publish(now(), publish("t", QoS::AtLeastOnce, "p"), owner(s, n));
        }
        let ids: Vec<u16> = publishes(&mut c)
            .iter()
            .filter_map(|p| p.packet_id.map(NonZeroU16::get))
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1, 2]);
    }
}
