//! The device side of an aggregate-mode session: what simgate, acting as the device's broker,
//! does with each device packet and each event of the shared upstream link — acknowledgements
//! relayed only after the broker's, QoS 2 completed toward the device, subscriptions mapped
//! through the topic template, downlink delivery, the session's end, and the
//! `max_publish_rate` decision for each uplink PUBLISH (through `super::rate`), and, toward AWS
//! IoT Core, AWS's topic, reserved-topic and payload rules on every uplink message and filter
//! (through [`crate::adapters::aws_iot_core_mqtt`], refusals counted by rule). Works on the
//! device's state and writes into its output buffer; the socket, timers and drain are the
//! driver's (`super`), and time is passed in.
//!
//! What this module does not do: read or write sockets, or keep time.

use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::rate::DeviceRate;

use bytes::{Bytes, BytesMut};

use crate::adapters::aws_iot_core_mqtt::{self as aws, Session as AwsSession, TopicRefusal};
use crate::flows::identity::AttachedProperties;
use crate::flows::ShardState;
use crate::policy::envelope;
use crate::policy::{AdapterKind, TopicMap};
use crate::proto::mqtt::{
    self, DecodeLimits, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::stats::usage::UsageCounts;
use crate::stats::{CloudRule, Direction, Protocol, RejectReason};
use crate::upstream::mqtt_link::{Enqueued, Link, LinkEvent, PublishOwner, SessionKey};

/// Why a device session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The device sent DISCONNECT (no Will).
    Normal,
    /// Abnormal: publish the Will. For 5.0 devices, send DISCONNECT with the code first (if any).
    Abnormal(Option<ReasonCode>),
}

/// Per-session state of the device side.
pub(super) struct Device {
    pub(super) version: ProtocolVersion,
    /// Set when a reload moved the device's SIM to another group: the session stops taking
    /// packets and ends (0x98) once the broker acknowledged what is in flight, or at this time.
    pub(super) leaving: Option<Instant>,
    /// The SIM identity attached to every uplink PUBLISH (MQTT 5 user properties; empty when
    /// the link speaks 3.1.1, the source is unknown or the group attaches nothing).
    pub(super) identity_properties: AttachedProperties,
    /// `envelope = "json"`: the identity fields every uplink payload is wrapped with (empty
    /// for an unknown source); `None`: payloads go as sent.
    pub(super) envelope: Option<Box<[(String, String)]>>,
    /// The destination's `topic` template resolved for this device.
    pub(super) topics: TopicMap,
    /// The destination is AWS IoT Core (`aws-iot-core` over MQTT): AWS's topic, reserved-topic
    /// and payload rules apply to every uplink message and filter (a flag, not the rules: they
    /// are the adapter's, derived from `topics` when needed, and every idle device pays for
    /// this field).
    pub(super) aws: bool,
    pub(super) receive_maximum: usize,
    /// Largest packet the device accepts (5.0 CONNECT Maximum Packet Size).
    pub(super) device_max_packet: Option<NonZeroU32>,
    pub(super) decode_limits: DecodeLimits,
    /// Acknowledgement and subscription state; allocated the first time the device needs it.
    pub(super) tracking: Option<Box<Tracking>>,
    /// Boxed: most devices have none, and this struct is what every idle device costs.
    pub(super) will: Option<Box<Will>>,
    /// `max_publish_rate` state, when the destination has one (boxed, as `will`).
    pub(super) rate: Option<Box<DeviceRate>>,
    pub(super) out: BytesMut,
    /// Usage not yet handed to the shard's meter (PUBLISHes taken by the link, delivered).
    pub(super) usage: UsageCounts,
}

/// What a device has in flight and subscribed. Boxed in [`Device`] and allocated on first use:
/// a device that only publishes at QoS 0 never needs it, and four empty hash tables inline would
/// add ~190 bytes to every idle device's session.
#[derive(Default)]
pub(super) struct Tracking {
    /// Device packet ids of QoS 1/2 PUBLISHes waiting for the broker's PUBACK, with when
    /// each was received (for the latency histograms).
    pub(super) outstanding: HashMap<u16, Instant>,
    /// When the QoS 1 PUBLISHes acknowledged to the device since the session last looked were
    /// received, with their upstream round trips ([`Device::drain_acked`]).
    pub(super) acked: Vec<(Instant, Duration)>,
    /// QoS 2 ids answered with PUBREC, waiting for the device's PUBREL.
    pub(super) awaiting_pubrel: HashSet<u16>,
    /// Device filter -> upstream filter, for granted or pending subscriptions.
    pub(super) subs: HashMap<Bytes, Bytes>,
    /// Device SUBSCRIBE id -> (codes so far, device filters).
    pub(super) pending_subacks: HashMap<u16, (Vec<Option<ReasonCode>>, Vec<Bytes>)>,
}

/// The [`Tracking`] of a device that has none yet.
static NO_TRACKING: std::sync::LazyLock<Tracking> = std::sync::LazyLock::new(Tracking::default);

impl Device {
    /// The device's tracking state (empty if it has none yet).
    pub(super) fn tracked(&self) -> &Tracking {
        self.tracking.as_deref().unwrap_or(&NO_TRACKING)
    }

    /// The device's tracking state, allocated if it has none yet.
    pub(super) fn tracking_mut(&mut self) -> &mut Tracking {
        self.tracking.get_or_insert_with(Box::default)
    }

    pub(super) fn paused(&self) -> bool {
        self.tracked().outstanding.len() >= self.receive_maximum
    }

    /// Until when the device is not read at `now` because its last message waits for its
    /// link's `max_publish_rate` turn (`None`: it is not held).
    pub(super) fn held(&self, now: Instant) -> Option<Instant> {
        self.rate.as_ref().and_then(|r| r.holds(now))
    }

    pub(super) fn write(&mut self, packet: &Packet) {
        if let Err(e) = mqtt::encode(packet, self.version, &mut self.out) {
            tracing::debug!(error = ?e, "cannot encode packet for device");
        }
    }

    /// The AWS IoT Core rules of this device's messages (no thing of its own: aggregate links
    /// carry many SIMs), if its destination is AWS IoT Core.
    fn aws_rules(&self) -> Option<AwsSession> {
        self.aws.then(|| AwsSession::new(None, &self.topics))
    }

    /// The upstream topic for device topic `topic`, or why it has none: no valid upstream form,
    /// or (AWS IoT Core) one of the cloud's rules.
    pub(super) fn upstream_topic(&self, topic: &Bytes) -> Result<Bytes, TopicRefusal> {
        match self.aws_rules() {
            Some(rules) => rules.uplink_topic(&self.topics, topic),
            None => self
                .topics
                .uplink_topic(topic)
                .map_err(|_| TopicRefusal::Invalid),
        }
    }

    /// The upstream filter for device filter `filter`, or the SUBACK failure code (and the
    /// cloud rule that refused it, if one did). Upstream subscriptions are shared by every
    /// device on the link, so a template without `{topic}` (whose filters would pass
    /// unchanged) and shared subscriptions are refused.
    pub(super) fn upstream_filter(
        &self,
        filter: &Bytes,
    ) -> Result<Bytes, (ReasonCode, Option<CloudRule>)> {
        if self.version == ProtocolVersion::V5 && filter.starts_with(b"$share/") {
            return Err((ReasonCode(0x9E), None)); // Shared Subscriptions not supported
        }
        if !self.topics.has_topic() {
            return Err((ReasonCode::UNSPECIFIED_ERROR, None));
        }
        let mapped = match self.aws_rules() {
            Some(rules) => rules.uplink_filter(&self.topics, filter, ProtocolVersion::V311),
            None => self
                .topics
                .uplink_filter(filter, ProtocolVersion::V311)
                .map_err(|_| TopicRefusal::Invalid),
        };
        mapped.map_err(|refusal| match refusal {
            TopicRefusal::Cloud(rule) => (ReasonCode::TOPIC_FILTER_INVALID, Some(rule)),
            TopicRefusal::Invalid => (ReasonCode::TOPIC_FILTER_INVALID, None),
        })
    }

    /// The device topic for an upstream topic (template text around `{topic}` stripped); None
    /// when it is not this device's.
    pub(super) fn device_topic(&self, upstream: &Bytes) -> Option<Bytes> {
        self.topics.downlink_topic(upstream)
    }

    pub(super) fn failure_code(&self, code: ReasonCode) -> ReasonCode {
        match self.version {
            ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
            ProtocolVersion::V5 => code,
        }
    }

    /// Apply one device packet, received at `now`. `Some(end)` closes the session.
    pub(super) fn on_packet(
        &mut self,
        packet: Packet,
        link: &Rc<Link>,
        key: SessionKey,
        state: &Rc<ShardState>,
        now: Instant,
    ) -> Option<End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, link, key, state, now),
            Packet::PubRel(rel) => {
                let known = self
                    .tracking_mut()
                    .awaiting_pubrel
                    .remove(&rel.packet_id.get());
                let mut comp = PubResponse::success(rel.packet_id);
                if !known && self.version == ProtocolVersion::V5 {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.write(&Packet::PubComp(comp));
                None
            }
            Packet::Subscribe(sub) if !sub.properties.subscription_identifiers.is_empty() => {
                // CONNACK said Subscription Identifiers Available = 0 (the link's subscriptions
                // are shared by every device): [MQTT-3.2.2.3.13] wants 0xA1 for one sent anyway.
                Some(End::Abnormal(Some(ReasonCode(0xA1))))
            }
            Packet::Subscribe(sub) => {
                self.on_subscribe(sub, link, key, state);
                None
            }
            Packet::Unsubscribe(unsub) => {
                self.on_unsubscribe(unsub, link, key);
                None
            }
            Packet::PingReq => {
                self.write(&Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => {
                if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL {
                    Some(End::Abnormal(None))
                } else {
                    Some(End::Normal)
                }
            }
            // Downlink is QoS 0: the device has nothing to acknowledge.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => None,
            // A second CONNECT, or packets only a server sends.
            _ => Some(End::Abnormal(Some(ReasonCode::PROTOCOL_ERROR))),
        }
    }

    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        link: &Rc<Link>,
        key: SessionKey,
        state: &Rc<ShardState>,
        now: Instant,
    ) -> Option<End> {
        let device_bytes = publish.payload.len() as u64;
        if publish.properties.topic_alias.is_some() || publish.topic.is_empty() {
            // We advertised Topic Alias Maximum 0 ([MQTT-3.3.2-9]).
            return Some(End::Abnormal(Some(ReasonCode(0x94))));
        }
        if let Some(id) = publish.packet_id {
            if self.tracked().outstanding.contains_key(&id.get()) {
                return None; // a duplicate of one still in flight upstream
            }
            if publish.qos == QoS::ExactlyOnce && self.tracked().awaiting_pubrel.contains(&id.get())
            {
                // Already forwarded and PUBREC'd: answer again, do not forward twice.
                self.write(&Packet::PubRec(PubResponse::success(id)));
                return None;
            }
        }
        let topic = match self.upstream_topic(&publish.topic) {
            Ok(topic) => topic,
            Err(refusal) => {
                match refusal {
                    TopicRefusal::Cloud(rule) => count_cloud_refusal(state, link, rule),
                    TopicRefusal::Invalid => {
                        let c = &state.links.counters().topics_refused;
                        c.set(c.get() + 1);
                        state.metrics.borrow_mut().destination_reject(
                            link.destination_index(),
                            link.destination(),
                            RejectReason::TopicInvalid,
                            1,
                        );
                    }
                }
                return self.refuse_topic(&publish);
            }
        };
        // Wrapped before the cloud's size check and before signing: both see the payload as
        // sent.
        let payload = match &self.envelope {
            Some(fields) => {
                Bytes::from(envelope::wrap(fields, envelope::now_ms(), &publish.payload))
            }
            None => publish.payload.clone(),
        };
        if self.aws {
            // Larger than AWS IoT Core takes: DISCONNECT 0x95 (3.1.1: closed), never sent
            // upstream (the cloud would disconnect the link, and every device on it).
            if let Err(rule) = aws::check_payload(payload.len()) {
                count_cloud_refusal(state, link, rule);
                return Some(End::Abnormal(Some(ReasonCode::PACKET_TOO_LARGE)));
            }
        }
        // `max_publish_rate`: on its own link, spilled to another, or refused.
        let idle = self.tracked().outstanding.is_empty();
        let spilled = match self.rate.as_mut() {
            None => None,
            Some(rate) => match rate.route(now, link, key, idle) {
                Some((to, k)) if !Rc::ptr_eq(&to, link) => Some((to, k)),
                Some(_) => None,
                None => {
                    state.metrics.borrow_mut().destination_reject(
                        link.destination_index(),
                        link.destination(),
                        RejectReason::PublishRate,
                        1,
                    );
                    return self.refuse_over_rate(&publish);
                }
            },
        };
        let (link, key) = match &spilled {
            Some((to, k)) => (to, *k),
            None => (link, key),
        };
        let properties = if link.core.borrow().version() == ProtocolVersion::V5 {
            let mut p = publish.properties;
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            self.identity_properties
                .apply_to_publish(&mut p, &topic, &payload);
            p
        } else {
            Properties::default()
        };
        let owner = publish.packet_id.map(|id| PublishOwner {
            session: key,
            device_packet_id: id,
            device_qos: publish.qos,
        });
        if let Some(id) = publish.packet_id {
            self.tracking_mut().outstanding.insert(id.get(), now);
        }
        let upstream = Publish {
            dup: false,
            qos: publish.qos,
            retain: publish.retain,
            topic,
            packet_id: None,
            properties,
            payload,
        };
        let enqueued = link.with_core(|c| c.publish(now, upstream, owner));
        // Counted as the link counts it (`simgate_mqtt_publishes_total`): dropped QoS 0 too;
        // bytes only for what was taken.
        let sent_bytes = if enqueued == Enqueued::Dropped {
            tracing::trace!("qos 0 publish dropped: link down");
            0
        } else {
            self.usage.up_msgs += 1;
            self.usage.up_bytes += device_bytes;
            device_bytes
        };
        if let Some(d) = state
            .metrics
            .borrow_mut()
            .destination(link.destination_index(), link.destination())
        {
            d.message(Protocol::Mqtt, Direction::Uplink, 1);
            d.bytes_sent += sent_bytes;
        }
        None
    }

    /// Answer a PUBLISH whose topic has no upstream form (none under the template, or one an
    /// AWS IoT Core rule refuses): 5.0 QoS 1/2 get PUBACK/PUBREC 0x90 Topic Name invalid and
    /// the session goes on; 5.0 QoS 0 is dropped (nothing to answer); a 3.1.1 device cannot be
    /// told, so its connection is closed unacknowledged. Nothing goes upstream.
    fn refuse_topic(&mut self, publish: &Publish) -> Option<End> {
        match (self.version, publish.packet_id) {
            (ProtocolVersion::V5, Some(id)) => {
                let mut r = PubResponse::success(id);
                r.reason_code = ReasonCode::TOPIC_NAME_INVALID;
                self.write(&match publish.qos {
                    QoS::ExactlyOnce => Packet::PubRec(r),
                    _ => Packet::PubAck(r),
                });
                None
            }
            (ProtocolVersion::V5, None) => None,
            (ProtocolVersion::V311, _) => Some(End::Abnormal(None)),
        }
    }

    /// Answer a PUBLISH refused because its wait for the link's `max_publish_rate` would exceed
    /// the device's bound: 5.0 QoS 1/2 get 0x97 Quota exceeded; QoS 0 is dropped (it has no
    /// answer); a 3.1.1 device cannot be told "refused" and would take a PUBACK for delivered,
    /// so its connection is closed unacknowledged (it resends the message after reconnecting),
    /// as for any broker refusal.
    fn refuse_over_rate(&mut self, publish: &Publish) -> Option<End> {
        tracing::debug!(qos = ?publish.qos, "device publish refused: max_publish_rate wait too long");
        match (self.version, publish.packet_id) {
            (_, None) => None,
            (ProtocolVersion::V5, Some(id)) => {
                let mut r = PubResponse::success(id);
                r.reason_code = ReasonCode::QUOTA_EXCEEDED;
                self.write(&match publish.qos {
                    QoS::ExactlyOnce => Packet::PubRec(r),
                    _ => Packet::PubAck(r),
                });
                None
            }
            (ProtocolVersion::V311, Some(_)) => Some(End::Abnormal(None)),
        }
    }

    pub(super) fn on_subscribe(
        &mut self,
        sub: Subscribe,
        link: &Rc<Link>,
        key: SessionKey,
        state: &ShardState,
    ) {
        let n = sub.subscriptions.len();
        let mut codes = vec![None; n];
        let mut filters = Vec::with_capacity(n);
        let mut requests = Vec::new();
        for (index, s) in sub.subscriptions.into_iter().enumerate() {
            filters.push(s.filter.clone());
            match self.upstream_filter(&s.filter) {
                Err((code, rule)) => {
                    if let Some(rule) = rule {
                        count_cloud_refusal(state, link, rule);
                    }
                    codes[index] = Some(self.failure_code(code));
                }
                Ok(upstream) => {
                    self.tracking_mut()
                        .subs
                        .insert(s.filter.clone(), upstream.clone());
                    requests.push((upstream, index));
                }
            }
        }
        let id = sub.packet_id;
        self.tracking_mut()
            .pending_subacks
            .insert(id.get(), (codes, filters));
        if requests.is_empty() {
            self.complete_suback(id);
            return;
        }
        link.with_core(|c| {
            for (upstream, index) in requests {
                c.subscribe(key, upstream, id, index);
            }
        });
    }

    pub(super) fn complete_suback(&mut self, id: NonZeroU16) {
        let done = self
            .tracked()
            .pending_subacks
            .get(&id.get())
            .is_some_and(|(codes, _)| codes.iter().all(Option::is_some));
        if !done {
            return;
        }
        let Some((codes, _)) = self.tracking_mut().pending_subacks.remove(&id.get()) else {
            return;
        };
        let reason_codes = codes
            .into_iter()
            .map(|c| c.unwrap_or(ReasonCode::UNSPECIFIED_ERROR))
            .collect();
        self.write(&Packet::SubAck(SubAck {
            packet_id: id,
            properties: Properties::default(),
            reason_codes,
        }));
    }

    pub(super) fn on_unsubscribe(&mut self, unsub: Unsubscribe, link: &Rc<Link>, key: SessionKey) {
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            match self.tracking_mut().subs.remove(filter) {
                Some(upstream) => {
                    link.with_core(|c| c.unsubscribe(key, &upstream));
                    codes.push(ReasonCode::SUCCESS);
                }
                None => codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if self.version == ProtocolVersion::V311 {
            codes.clear();
        }
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id: unsub.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
    }

    /// When the QoS 1 PUBLISHes acknowledged to the device since the last call were received,
    /// and their upstream round trips (their PUBACKs are in [`Device::out`]); the buffer is
    /// kept for the next ones.
    pub(super) fn drain_acked(&mut self) -> impl Iterator<Item = (Instant, Duration)> + '_ {
        self.tracking
            .as_mut()
            .into_iter()
            .flat_map(|t| t.acked.drain(..))
    }

    /// Apply one event from the link. `Some(end)` closes the session.
    pub(super) fn on_link_event(&mut self, event: LinkEvent) -> Option<End> {
        match event {
            LinkEvent::Acked {
                device_packet_id,
                device_qos,
                reason,
                upstream_rtt_us,
            } => {
                let received = self
                    .tracking_mut()
                    .outstanding
                    .remove(&device_packet_id.get());
                let refused = reason.0 >= 0x80;
                if refused && self.version == ProtocolVersion::V311 {
                    // 3.1.1 cannot say "refused": close rather than acknowledge.
                    return Some(End::Abnormal(None));
                }
                let mut response = PubResponse::success(device_packet_id);
                if self.version == ProtocolVersion::V5 {
                    response.reason_code = reason;
                }
                if device_qos == QoS::ExactlyOnce {
                    if !refused {
                        self.tracking_mut()
                            .awaiting_pubrel
                            .insert(device_packet_id.get());
                    }
                    self.write(&Packet::PubRec(response));
                } else {
                    self.write(&Packet::PubAck(response));
                    if let Some(received) = received {
                        self.tracking_mut()
                            .acked
                            .push((received, Duration::from_micros(u64::from(upstream_rtt_us))));
                    }
                }
                None
            }
            LinkEvent::SubscribeResult {
                device_packet_id,
                index,
                code,
            } => {
                let failed = code.0 >= 0x80;
                let device_code = if failed {
                    self.failure_code(code)
                } else {
                    ReasonCode::SUCCESS // granted QoS 0: downlink is delivered at QoS 0
                };
                let mut failed_filter = None;
                if let Some((codes, filters)) = self
                    .tracking_mut()
                    .pending_subacks
                    .get_mut(&device_packet_id.get())
                {
                    if let Some(slot) = codes.get_mut(index) {
                        *slot = Some(device_code);
                    }
                    if failed {
                        failed_filter = filters.get(index).cloned();
                    }
                }
                if let Some(f) = failed_filter {
                    self.tracking_mut().subs.remove(&f);
                }
                self.complete_suback(device_packet_id);
                None
            }
            LinkEvent::Message(publish) => {
                self.deliver(*publish);
                None
            }
            // The link was retired (its destination changed or left the plan). 0x88 "Server
            // unavailable" is a CONNACK code only; DISCONNECT says 0x80, and the device
            // reconnects to the current plan.
            LinkEvent::Closed => Some(End::Abnormal(Some(ReasonCode::UNSPECIFIED_ERROR))),
            // Taken over by a newer connection with this client id (or ended by the gateway for
            // another reason): as a broker would, DISCONNECT (5.0) and close; the Will goes out.
            LinkEvent::Evicted(code) => Some(End::Abnormal(Some(code))),
        }
    }

    pub(super) fn deliver(&mut self, publish: Publish) {
        let Some(topic) = self.device_topic(&publish.topic) else {
            return;
        };
        if !self
            .tracked()
            .subs
            .keys()
            .any(|f| crate::upstream::mqtt_link::topic_matches(f, &topic))
        {
            return;
        }
        let properties = if self.version == ProtocolVersion::V5 {
            let mut p = publish.properties;
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            p
        } else {
            Properties::default()
        };
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: publish.retain,
            topic,
            packet_id: None,
            properties,
            payload: publish.payload,
        });
        let payload_bytes = publish_payload_len(&packet);
        if let Some(max) = self.device_max_packet {
            match mqtt::encoded_len(&packet, self.version) {
                Ok(len) if len as u64 <= u64::from(max.get()) => {}
                // [MQTT-3.1.2-24]: never send a packet over the client's maximum.
                _ => return,
            }
        }
        self.write(&packet);
        self.usage.down_msgs += 1;
        self.usage.down_bytes += payload_bytes;
    }
}

/// Count a device message or filter refused by one of AWS IoT Core's rules
/// (`simgate_mqtt_cloud_refusals_total{adapter="aws-iot-core",rule}`), and under the
/// destination of `link` (`simgate_destination_rejects_total`).
pub(super) fn count_cloud_refusal(state: &ShardState, link: &Link, rule: CloudRule) {
    let mut m = state.metrics.borrow_mut();
    m.cloud_refusal(AdapterKind::AwsIotCore.index(), rule, 1);
    m.destination_reject(
        link.destination_index(),
        link.destination(),
        RejectReason::Cloud(rule),
        1,
    );
}

fn publish_payload_len(packet: &Packet) -> u64 {
    match packet {
        Packet::Publish(p) => p.payload.len() as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Placeholder;
    use crate::policy::{Template, TemplateVars};
    use crate::proto::mqtt::{Decoded, Sender};

    pub(super) fn device(template: &str, version: ProtocolVersion) -> Device {
        let topic = Template::parse(
            template,
            &[Placeholder::ClientId, Placeholder::Topic, Placeholder::Ip],
        )
        .expect("template");
        let client_id = Bytes::from_static(b"dev1");
        let vars = TemplateVars {
            client_id: &client_id,
            topic: b"",
            ip: "10.0.0.1".parse().expect("ip"),
            shard: 0,
            conn: 0,
            sim: None,
        };
        Device {
            version,
            leaving: None,
            identity_properties: AttachedProperties::default(),
            envelope: None,
            topics: TopicMap::new(&topic, &vars),
            aws: false,
            receive_maximum: 2,
            device_max_packet: None,
            decode_limits: DecodeLimits::default(),
            tracking: None,
            will: None,
            rate: None,
            out: BytesMut::new(),
            usage: UsageCounts::default(),
        }
    }

    pub(super) fn written(d: &mut Device) -> Vec<Packet> {
        let mut buf = d.out.split();
        let mut out = Vec::new();
        while let Ok(Decoded::Complete(p)) = mqtt::decode_packet(
            &mut buf,
            d.version,
            Sender::Server,
            &DecodeLimits::default(),
        ) {
            out.push(p);
        }
        out
    }

    pub(super) fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    #[test]
    pub(super) fn topics_are_rewritten_and_mapped_back() {
        let d = device("devices/{client_id}/{topic}", ProtocolVersion::V311);
        assert_eq!(
            d.upstream_topic(&Bytes::from_static(b"temp/1")).as_deref(),
            Ok(&b"devices/dev1/temp/1"[..])
        );
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"cmd/#")).as_deref(),
            Ok(&b"devices/dev1/cmd/#"[..])
        );
        assert_eq!(
            d.device_topic(&Bytes::from_static(b"devices/dev1/cmd/reboot"))
                .as_deref(),
            Some(&b"cmd/reboot"[..])
        );
        assert_eq!(
            d.device_topic(&Bytes::from_static(b"devices/dev2/cmd/reboot")),
            None
        );
    }

    #[test]
    pub(super) fn filters_that_cannot_map_are_refused() {
        let d = device("devices/{client_id}/{topic}/up", ProtocolVersion::V5);
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"cmd/#")),
            Err((ReasonCode::TOPIC_FILTER_INVALID, None))
        );
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"$share/g/x")),
            Err((ReasonCode(0x9E), None))
        );
        let fixed = device("all/devices", ProtocolVersion::V311);
        assert!(fixed.upstream_filter(&Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn acks_map_to_puback_pubrec_and_pubrel_completes_qos2() {
        let mut d = device("{topic}", ProtocolVersion::V311);
        d.tracking_mut().outstanding.insert(3, Instant::now());
        d.tracking_mut().outstanding.insert(4, Instant::now());
        assert!(d
            .on_link_event(LinkEvent::Acked {
                device_packet_id: nz(3),
                device_qos: QoS::AtLeastOnce,
                reason: ReasonCode::SUCCESS,
                upstream_rtt_us: 0,
            })
            .is_none());
        assert!(d
            .on_link_event(LinkEvent::Acked {
                device_packet_id: nz(4),
                device_qos: QoS::ExactlyOnce,
                reason: ReasonCode::SUCCESS,
                upstream_rtt_us: 0,
            })
            .is_none());
        assert_eq!(
            written(&mut d),
            vec![
                Packet::PubAck(PubResponse::success(nz(3))),
                Packet::PubRec(PubResponse::success(nz(4)))
            ]
        );
        assert!(d.tracked().outstanding.is_empty());
        assert!(d.tracked().awaiting_pubrel.contains(&4));
    }

    #[test]
    fn v311_device_is_closed_not_acked_when_the_broker_refuses() {
        let mut d = device("{topic}", ProtocolVersion::V311);
        d.tracking_mut().outstanding.insert(1, Instant::now());
        assert_eq!(
            d.on_link_event(LinkEvent::Acked {
                device_packet_id: nz(1),
                device_qos: QoS::AtLeastOnce,
                reason: ReasonCode::NOT_AUTHORIZED,
                upstream_rtt_us: 0,
            }),
            Some(End::Abnormal(None))
        );
        assert!(written(&mut d).is_empty());
    }

    #[test]
    pub(super) fn suback_waits_for_every_filter() {
        let mut d = device("devices/{client_id}/{topic}", ProtocolVersion::V5);
        d.tracking_mut().pending_subacks.insert(
            7,
            (
                vec![None, Some(ReasonCode::TOPIC_FILTER_INVALID)],
                vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            ),
        );
        d.tracking_mut().subs.insert(
            Bytes::from_static(b"a"),
            Bytes::from_static(b"devices/dev1/a"),
        );
        d.complete_suback(nz(7));
        assert!(written(&mut d).is_empty());
        d.on_link_event(LinkEvent::SubscribeResult {
            device_packet_id: nz(7),
            index: 0,
            code: ReasonCode::GRANTED_QOS_1,
        });
        assert_eq!(
            written(&mut d),
            vec![Packet::SubAck(SubAck {
                packet_id: nz(7),
                properties: Properties::default(),
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::TOPIC_FILTER_INVALID],
            })]
        );
    }

    #[test]
    fn aws_rules_refuse_topics_and_filters_by_rule_and_devices_hear_0x90() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut d = device("devices/{client_id}/{topic}", ProtocolVersion::V5);
        // Not AWS: the deep topic passes (as for any broker).
        assert!(d.upstream_topic(&b("a/b/c/d/e/f/g")).is_ok());
        d.aws = true;
        assert_eq!(
            d.upstream_topic(&b("a/b/c/d/e/f")).as_deref(),
            Ok(&b"devices/dev1/a/b/c/d/e/f"[..])
        );
        assert_eq!(
            d.upstream_topic(&b("a/b/c/d/e/f/g")),
            Err(TopicRefusal::Cloud(CloudRule::TopicSlashes))
        );
        assert_eq!(
            d.upstream_topic(&b(&"x".repeat(250))),
            Err(TopicRefusal::Cloud(CloudRule::TopicBytes))
        );
        assert_eq!(d.upstream_topic(&b("a/+")), Err(TopicRefusal::Invalid));
        assert_eq!(
            d.upstream_filter(&b("a/b/c/d/e/f/#")),
            Err((
                ReasonCode::TOPIC_FILTER_INVALID,
                Some(CloudRule::TopicSlashes)
            ))
        );
        assert!(d.upstream_filter(&b("cmd/#")).is_ok());
        // `$aws/...` only where the template writes it.
        let mut bare = device("{topic}", ProtocolVersion::V5);
        bare.aws = true;
        assert_eq!(
            bare.upstream_topic(&b("$aws/things/other/shadow/update")),
            Err(TopicRefusal::Cloud(CloudRule::ReservedTopic))
        );
        let mut ingest = device("$aws/rules/r/{client_id}/{topic}", ProtocolVersion::V5);
        ingest.aws = true;
        assert!(ingest.upstream_topic(&b("a/b/c/d/e/f")).is_ok());

        // What the device hears: 5.0 QoS 1 / 2: PUBACK / PUBREC 0x90; QoS 0: nothing; 3.1.1:
        // closed.
        let publish = |qos, id: Option<u16>| Publish {
            dup: false,
            qos,
            retain: false,
            topic: b("a/b/c/d/e/f/g"),
            packet_id: id.map(nz),
            properties: Properties::default(),
            payload: Bytes::from_static(b"p"),
        };
        let invalid = |id| {
            let mut r = PubResponse::success(nz(id));
            r.reason_code = ReasonCode::TOPIC_NAME_INVALID;
            r
        };
        assert_eq!(d.refuse_topic(&publish(QoS::AtLeastOnce, Some(1))), None);
        assert_eq!(d.refuse_topic(&publish(QoS::ExactlyOnce, Some(2))), None);
        assert_eq!(d.refuse_topic(&publish(QoS::AtMostOnce, None)), None);
        assert_eq!(
            written(&mut d),
            vec![Packet::PubAck(invalid(1)), Packet::PubRec(invalid(2))]
        );
        let mut v3 = device("devices/{client_id}/{topic}", ProtocolVersion::V311);
        v3.aws = true;
        assert_eq!(
            v3.refuse_topic(&publish(QoS::AtLeastOnce, Some(1))),
            Some(End::Abnormal(None))
        );
        assert!(written(&mut v3).is_empty());
    }

    #[test]
    fn a_publish_refused_for_the_rate_is_0x97_dropped_or_a_disconnect() {
        let publish = |qos, id: Option<u16>| Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(b"t"),
            packet_id: id.map(nz),
            properties: Properties::default(),
            payload: Bytes::from_static(b"p"),
        };
        let quota = |id| {
            let mut r = PubResponse::success(nz(id));
            r.reason_code = ReasonCode::QUOTA_EXCEEDED;
            r
        };
        let mut v5 = device("{topic}", ProtocolVersion::V5);
        assert_eq!(
            v5.refuse_over_rate(&publish(QoS::AtLeastOnce, Some(1))),
            None
        );
        assert_eq!(
            v5.refuse_over_rate(&publish(QoS::ExactlyOnce, Some(2))),
            None
        );
        assert_eq!(v5.refuse_over_rate(&publish(QoS::AtMostOnce, None)), None);
        assert_eq!(
            written(&mut v5),
            vec![Packet::PubAck(quota(1)), Packet::PubRec(quota(2))]
        );
        assert!(
            v5.tracked().awaiting_pubrel.is_empty(),
            "nothing to complete"
        );
        let mut v3 = device("{topic}", ProtocolVersion::V311);
        assert_eq!(v3.refuse_over_rate(&publish(QoS::AtMostOnce, None)), None);
        assert_eq!(
            v3.refuse_over_rate(&publish(QoS::AtLeastOnce, Some(1))),
            Some(End::Abnormal(None))
        );
        assert!(written(&mut v3).is_empty());
    }

    #[test]
    fn downlink_goes_only_to_matching_subscriptions_at_qos0() {
        let mut d = device("devices/{client_id}/{topic}", ProtocolVersion::V311);
        d.tracking_mut().subs.insert(
            Bytes::from_static(b"cmd/+"),
            Bytes::from_static(b"devices/dev1/cmd/+"),
        );
        let msg = |topic: &'static str| Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(topic.as_bytes()),
            packet_id: Some(nz(1)),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        };
        d.on_link_event(LinkEvent::Message(Box::new(msg("devices/dev1/cmd/reboot"))));
        d.on_link_event(LinkEvent::Message(Box::new(msg(
            "devices/dev1/other/reboot",
        ))));
        d.on_link_event(LinkEvent::Message(Box::new(msg("devices/dev2/cmd/reboot"))));
        let out = written(&mut d);
        assert_eq!(out.len(), 1);
        let Packet::Publish(p) = &out[0] else {
            panic!("expected PUBLISH, got {out:?}");
        };
        assert_eq!(&p.topic[..], b"cmd/reboot");
        assert_eq!(p.qos, QoS::AtMostOnce);
    }
}
