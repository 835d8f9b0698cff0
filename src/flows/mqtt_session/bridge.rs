//! [`Bridge`]: the per-session translation between a device's MQTT packets and the broker's,
//! sans-IO (no sockets, no clock), and how a bridged session ends ([`SessionEnd`]).
//!
//! PUBLISH topics (and v5 Response Topic) are rewritten uplink through the session's
//! [`TopicMap`] and mapped back downlink; SUBSCRIBE/UNSUBSCRIBE filters likewise. Device topic
//! aliases are resolved here and never forwarded; a broker alias is a protocol error. When the
//! two hops speak different versions, properties are dropped toward 3.1.1 and reason codes
//! mapped. Each translated packet comes back as an [`Action`]: forward it, forward it and end,
//! end, answer the device here, or absorb it (the PINGRESP to simgate's own PINGREQ).
//!
//! Cloud forms (`azure-iot-hub`, `aws-iot-core` over MQTT) add the cloud's topics and rules
//! from their adapter files: a cloud without QoS 2 gets a device's QoS 2 as QoS 1, the device's
//! exchange completed after the cloud's PUBACK (one path for both clouds); a message a cloud
//! rule refuses is answered here and never forwarded (AWS: v5 QoS 1/2 PUBACK/PUBREC 0x90 for a
//! topic, DISCONNECT 0x95 for a payload; see `refuse_topic`), and tallied by
//! [`CloudRule`] for the driver to count ([`Bridge::take_refusals`]).
//!
//! What this module does not do: read or write sockets, keep time (keep-alive and drain
//! deadlines are the driver's), count metrics (it only tallies refusals), or build the
//! CONNECT/CONNACK exchange (see `super::connect`).

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};

use crate::adapters::aws_iot_core_mqtt::{self as aws, Session as AwsSession, TopicRefusal};
use crate::adapters::azure_iot_hub_mqtt::{self as azure, FilterRoute, Session as AzureSession};
use crate::flows::identity::AttachedProperties;
use crate::policy::envelope;
use crate::policy::TopicMap;
use crate::proto::mqtt::{
    self, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
    SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::stats::{CloudRule, ErrorKind};

/// Topic Alias Maximum simgate advertises to v5 devices: device aliases are resolved here (the
/// map holds copies of at most this many topics per session) and never sent upstream.
pub const DEVICE_TOPIC_ALIAS_MAXIMUM: u16 = 16;

/// v5 reason code 0x94 "Topic Alias invalid".
const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);

/// Why a bridged session ended; decides what each side is told and what is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device sent DISCONNECT and it was forwarded upstream: close both sides cleanly.
    DeviceDisconnected,
    /// The device asked for its will to be published (v5 DISCONNECT 0x04) and the upstream speaks
    /// 3.1.1, which cannot say so: drop the upstream link abruptly.
    DeviceDisconnectedWithWill,
    /// The device closed its socket without DISCONNECT (or the socket failed).
    DeviceClosed,
    /// The device was silent for 1.5× its keep-alive.
    DeviceKeepAliveTimeout,
    /// The device sent a malformed packet or broke the protocol; the reason code to tell it (v5).
    DeviceProtocol(ReasonCode),
    /// The broker sent DISCONNECT (already relayed to a v5 device).
    UpstreamDisconnected(ReasonCode),
    /// The broker closed the connection or it failed.
    UpstreamClosed,
    /// The broker broke the protocol (or sent a packet the device's version cannot carry).
    UpstreamProtocol,
    /// The broker refused a 3.1.1 device's QoS 1/2 PUBLISH (v5 PUBACK/PUBREC ≥ 0x80), which
    /// 3.1.1 cannot express: the device is disconnected rather than acknowledged.
    UpstreamRejectedPublish(ReasonCode),
    /// The shard drained (SIGTERM): a v5 device gets DISCONNECT 0x8B; upstream, a v5 broker
    /// gets DISCONNECT 0x04 "Disconnect with Will Message" and a 3.1.1 broker a close without
    /// DISCONNECT — the device did not leave, so its will stands (see docs/operations.md).
    ServerShuttingDown,
    /// A reload moved the device's SIM to another group (or now refuses it): as for
    /// `ServerShuttingDown` upstream (the will stands), and a v5 device gets DISCONNECT 0x98
    /// "administrative action"; it reconnects into its new group.
    Moved,
}

impl SessionEnd {
    /// The DISCONNECT reason a v5 device is sent before its socket closes (`None`: nothing is
    /// sent, because the device left, or its DISCONNECT was already relayed).
    pub fn device_reason(self) -> Option<ReasonCode> {
        match self {
            SessionEnd::DeviceDisconnected
            | SessionEnd::DeviceDisconnectedWithWill
            | SessionEnd::DeviceClosed
            | SessionEnd::UpstreamDisconnected(_) => None,
            SessionEnd::DeviceKeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            SessionEnd::ServerShuttingDown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            SessionEnd::Moved => Some(ReasonCode::ADMINISTRATIVE_ACTION),
            SessionEnd::DeviceProtocol(code) | SessionEnd::UpstreamRejectedPublish(code) => {
                Some(code)
            }
            // 0x88 "Server unavailable" is a CONNACK-only code; DISCONNECT has no closer one.
            SessionEnd::UpstreamClosed | SessionEnd::UpstreamProtocol => {
                Some(ReasonCode::UNSPECIFIED_ERROR)
            }
        }
    }

    /// Whether the upstream link is closed cleanly (TLS close_notify after a DISCONNECT was sent
    /// or received). Otherwise it is dropped without DISCONNECT, so the broker publishes the will.
    pub fn upstream_clean(self) -> bool {
        matches!(
            self,
            SessionEnd::DeviceDisconnected | SessionEnd::UpstreamDisconnected(_)
        )
    }

    /// The DISCONNECT reason sent upstream before a graceful close when the session ends for
    /// the gateway's own reasons (drain), for an upstream speaking `version`; `None`: no
    /// DISCONNECT (a 3.1.1 broker cannot be asked to keep the will, so it is closed without).
    pub fn upstream_goodbye(self, version: ProtocolVersion) -> Option<ReasonCode> {
        match (self, version) {
            (SessionEnd::ServerShuttingDown | SessionEnd::Moved, ProtocolVersion::V5) => {
                Some(ReasonCode::DISCONNECT_WITH_WILL)
            }
            _ => None,
        }
    }

    /// The error counted for this ending, if it is one.
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            SessionEnd::ServerShuttingDown | SessionEnd::Moved => None,
            SessionEnd::DeviceDisconnected
            | SessionEnd::DeviceDisconnectedWithWill
            | SessionEnd::DeviceClosed
            | SessionEnd::UpstreamDisconnected(_) => None,
            SessionEnd::DeviceKeepAliveTimeout => Some(ErrorKind::DeviceTimeout),
            SessionEnd::DeviceProtocol(_) => Some(ErrorKind::DeviceBadRequest),
            SessionEnd::UpstreamClosed => Some(ErrorKind::UpstreamClosed),
            SessionEnd::UpstreamProtocol | SessionEnd::UpstreamRejectedPublish(_) => {
                Some(ErrorKind::UpstreamProtocol)
            }
        }
    }
}

/// What to do with one translated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the other side.
    Forward(Packet),
    /// Send this packet to the other side, then end the session.
    ForwardAndEnd(Packet, SessionEnd),
    /// End the session without forwarding anything.
    End(SessionEnd),
    /// Answer the device with this packet; nothing goes upstream.
    Reply(Packet),
    /// Nothing to send either way (the broker's PINGRESP to simgate's own PINGREQ).
    Absorb,
}

/// A v5 DISCONNECT carrying `reason_code`, or 0x80 "Unspecified error" when that code is not
/// one DISCONNECT may carry (e.g. a PUBACK-only code relayed from the broker).
pub(super) fn encode_device_disconnect(reason_code: ReasonCode) -> Bytes {
    let mut out = BytesMut::with_capacity(4);
    for code in [reason_code, ReasonCode::UNSPECIFIED_ERROR] {
        let packet = Packet::Disconnect(Disconnect {
            reason_code: code,
            properties: Properties::default(),
        });
        if mqtt::encode(&packet, ProtocolVersion::V5, &mut out).is_ok() {
            break;
        }
    }
    out.freeze()
}

/// The per-session translation between the device's packets and the broker's: sans-IO, one
/// instance per bridged session.
#[derive(Debug)]
pub struct Bridge {
    device: ProtocolVersion,
    upstream: ProtocolVersion,
    topics: TopicMap,
    /// Device topic aliases (copies, so no receive buffer stays pinned).
    device_aliases: HashMap<u16, Bytes>,
    /// Filter counts of device UNSUBSCRIBEs awaiting a 3.1.1 UNSUBACK, for a v5 device (whose
    /// UNSUBACK needs one reason code per filter).
    pending_unsubscribes: HashMap<u16, usize>,
    /// Device SUBSCRIBEs (and 5.0 UNSUBSCRIBEs) forwarded without some of their filters (those
    /// with no valid upstream form): the positions refused, merged into the broker's SUBACK /
    /// UNSUBACK for the device. Packet ids are unique among a client's in-flight packets.
    pending_refusals: HashMap<u16, Vec<usize>>,
    /// Packet ids of device QoS 1/2 PUBLISHes forwarded and not yet answered by the broker
    /// (PUBACK / PUBREC): what a draining session waits for.
    uplink_unacked: HashSet<u16>,
    /// The SIM's attached fields, added to every uplink PUBLISH toward a 5.0 broker.
    identity: AttachedProperties,
    /// `envelope = "json"`: the identity fields every uplink payload is wrapped with, whatever
    /// the broker's version; `None`: payloads go as sent.
    envelope: Option<Box<[(String, String)]>>,
    /// `azure-iot-hub` over MQTT: topics are IoT Hub's (events with a property bag uplink,
    /// cloud-to-device downlink), QoS 2 and retain refused, subscriptions answered here.
    azure: Option<AzureSession>,
    /// `aws-iot-core` over MQTT: AWS's topic, payload and reserved-topic rules, the thing's
    /// shadow and jobs topics, QoS 2 carried as QoS 1.
    aws: Option<AwsSession>,
    /// Clouds without QoS 2 (IoT Hub, AWS IoT Core): packet ids of device QoS 2 PUBLISHes sent
    /// upstream as QoS 1, whose cloud PUBACK becomes the device's PUBREC (the device's PUBREL
    /// is then answered here).
    qos2_as_qos1: HashSet<u16>,
    /// Device messages refused by a cloud rule since the driver last took the counts, by
    /// [`CloudRule`] index.
    refusals: [u64; CloudRule::ALL.len()],
    /// PINGREQs simgate sent upstream on its own (to keep a cloud session alive for a device
    /// whose keep-alive is longer than the cloud's) whose PINGRESP has not come back.
    own_pings: u32,
    /// IoT Hub: device SUBSCRIBEs / UNSUBSCRIBEs forwarded with only their twin and method
    /// filters: the (position, code) of the filters answered here, merged into the hub's answer.
    azure_local_codes: HashMap<u16, Vec<(usize, ReasonCode)>>,
}

impl Bridge {
    /// A bridge between a device speaking `device` and a broker speaking `upstream`.
    pub fn new(device: ProtocolVersion, upstream: ProtocolVersion, topics: TopicMap) -> Bridge {
        Bridge {
            device,
            upstream,
            topics,
            identity: AttachedProperties::default(),
            envelope: None,
            device_aliases: HashMap::new(),
            pending_unsubscribes: HashMap::new(),
            pending_refusals: HashMap::new(),
            uplink_unacked: HashSet::new(),
            azure: None,
            aws: None,
            qos2_as_qos1: HashSet::new(),
            refusals: [0; CloudRule::ALL.len()],
            own_pings: 0,
            azure_local_codes: HashMap::new(),
        }
    }

    /// Enforce AWS IoT Core's rules and speak its thing topics for this device (see
    /// [`crate::adapters::aws_iot_core_mqtt`]).
    #[must_use]
    pub fn with_aws(mut self, session: Option<AwsSession>) -> Bridge {
        self.aws = session;
        self
    }

    /// The device messages refused by a cloud rule since the last call, by [`CloudRule`]
    /// index (for the driver to count).
    pub fn take_refusals(&mut self) -> [u64; CloudRule::ALL.len()] {
        std::mem::take(&mut self.refusals)
    }

    /// simgate sent a PINGREQ upstream of its own: the broker's next PINGRESP is not the
    /// device's.
    pub fn note_own_ping(&mut self) {
        self.own_pings += 1;
    }

    /// Whether the cloud takes no QoS 2, so a device's QoS 2 is carried as QoS 1.
    fn qos2_carried_as_qos1(&self) -> bool {
        self.azure.is_some() || self.aws.is_some()
    }

    /// A device QoS 2 PUBLISH toward a cloud without QoS 2: QoS 1 upstream (at least once),
    /// the device's exchange completed after the cloud's PUBACK (which becomes its PUBREC).
    fn carry_qos2_as_qos1(&mut self, publish: &mut Publish) {
        if publish.qos == QoS::ExactlyOnce {
            publish.qos = QoS::AtLeastOnce;
            if let Some(id) = publish.packet_id {
                self.qos2_as_qos1.insert(id.get());
            }
        }
    }

    fn count_refusal(&mut self, rule: CloudRule) {
        self.refusals[rule.index()] += 1;
    }

    /// The upstream topic name of a device topic: AWS's mapping and rules for `aws-iot-core`,
    /// the template otherwise.
    fn uplink_topic_name(&self, topic: &Bytes) -> Result<Bytes, TopicRefusal> {
        match &self.aws {
            Some(aws) => aws.uplink_topic(&self.topics, topic),
            None => self
                .topics
                .uplink_topic(topic)
                .map_err(|_| TopicRefusal::Invalid),
        }
    }

    /// The upstream filter of a device filter (as [`Self::uplink_topic_name`]); a refusal by
    /// a cloud rule is counted here.
    fn uplink_filter_of(&mut self, filter: &Bytes) -> Option<Bytes> {
        let mapped = match &self.aws {
            Some(aws) => aws.uplink_filter(&self.topics, filter, self.upstream),
            None => self
                .topics
                .uplink_filter(filter, self.upstream)
                .map_err(|_| TopicRefusal::Invalid),
        };
        match mapped {
            Ok(f) => Some(f),
            Err(TopicRefusal::Cloud(rule)) => {
                self.count_refusal(rule);
                None
            }
            Err(TopicRefusal::Invalid) => None,
        }
    }

    /// A device PUBLISH whose topic has no upstream form: a topic a broker would refuse ends
    /// the session with DISCONNECT 0x90. Toward AWS IoT Core (whose rules simgate enforces
    /// before the cloud disconnects), a v5 device's QoS 1 / QoS 2 PUBLISH is answered PUBACK /
    /// PUBREC 0x90 instead and the session goes on; QoS 0 (nothing to answer) and 3.1.1
    /// devices (nothing to say it with) end as above. Nothing is sent upstream.
    fn refuse_topic(&mut self, publish: &Publish, refusal: TopicRefusal) -> Action {
        if let TopicRefusal::Cloud(rule) = refusal {
            self.count_refusal(rule);
        }
        let code = ReasonCode::TOPIC_NAME_INVALID;
        if self.aws.is_some() && self.device == ProtocolVersion::V5 {
            let answer = publish.packet_id.map(|id| PubResponse {
                packet_id: id,
                reason_code: code,
                properties: Properties::default(),
            });
            match (publish.qos, answer) {
                (QoS::AtLeastOnce, Some(r)) => return Action::Reply(Packet::PubAck(r)),
                (QoS::ExactlyOnce, Some(r)) => return Action::Reply(Packet::PubRec(r)),
                _ => {}
            }
        }
        Action::End(SessionEnd::DeviceProtocol(code))
    }

    /// Speak IoT Hub's topics for this device (see [`crate::adapters::azure_iot_hub_mqtt`]).
    #[must_use]
    pub fn with_azure(mut self, session: Option<AzureSession>) -> Bridge {
        self.azure = session;
        self
    }

    /// Attach `identity` (the SIM's fields as user properties) to every uplink PUBLISH, when
    /// the broker speaks 5.0.
    #[must_use]
    pub fn with_identity(mut self, identity: AttachedProperties) -> Bridge {
        self.identity = identity;
        self
    }

    /// A SUBACK failure `code` as the device's version can say it (3.1.1 has only 0x80).
    fn refusal_code(&self, code: ReasonCode) -> ReasonCode {
        match self.device {
            ProtocolVersion::V5 => code,
            ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
        }
    }

    /// Replace the identity attached from now on (a reload changed the SIM's fields).
    pub fn set_identity(&mut self, identity: AttachedProperties) {
        self.identity = identity;
    }

    /// Wrap every uplink PUBLISH payload in a JSON envelope with these identity fields
    /// (`destination.envelope = "json"`; see [`crate::policy::envelope`]).
    #[must_use]
    pub fn with_envelope(mut self, fields: Option<Box<[(String, String)]>>) -> Bridge {
        self.envelope = fields;
        self
    }

    /// The version the device speaks.
    pub fn device_version(&self) -> ProtocolVersion {
        self.device
    }

    /// The version spoken upstream.
    pub fn upstream_version(&self) -> ProtocolVersion {
        self.upstream
    }

    /// Device QoS 1/2 PUBLISHes forwarded to the broker and not yet acknowledged by it.
    pub fn uplink_unacknowledged(&self) -> usize {
        self.uplink_unacked.len()
    }

    fn props_up(&self, p: Properties) -> Properties {
        match self.upstream {
            ProtocolVersion::V5 if self.device == ProtocolVersion::V5 => p,
            _ => Properties::default(),
        }
    }

    fn props_down(&self, p: Properties) -> Properties {
        match self.device {
            ProtocolVersion::V5 if self.upstream == ProtocolVersion::V5 => p,
            _ => Properties::default(),
        }
    }

    /// Translate a packet from the device for the broker.
    pub fn uplink(&mut self, packet: Packet) -> Action {
        let protocol_error = Action::End(SessionEnd::DeviceProtocol(ReasonCode::PROTOCOL_ERROR));
        match packet {
            Packet::Publish(mut publish) => {
                if let Err(code) = self.resolve_device_alias(&mut publish) {
                    return Action::End(SessionEnd::DeviceProtocol(code));
                }
                if self.azure.is_some() {
                    return self.uplink_azure(publish);
                }
                // A topic with no valid upstream form is the device's error (as a broker
                // refuses an invalid topic name): see `refuse_topic`; nothing forwarded.
                let topic = match self.uplink_topic_name(&publish.topic) {
                    Ok(t) => t,
                    Err(refusal) => return self.refuse_topic(&publish, refusal),
                };
                publish.topic = topic;
                let mut props = self.props_up(std::mem::take(&mut publish.properties));
                props.response_topic = match props
                    .response_topic
                    .take()
                    .map(|t| self.uplink_topic_name(&t))
                {
                    None => None,
                    Some(Ok(t)) => Some(t),
                    Some(Err(refusal)) => return self.refuse_topic(&publish, refusal),
                };
                // Wrapped before signing: the signature covers the payload as sent.
                if let Some(fields) = &self.envelope {
                    publish.payload =
                        Bytes::from(envelope::wrap(fields, envelope::now_ms(), &publish.payload));
                }
                if self.aws.is_some() {
                    // Larger than the cloud takes (as sent, envelope included): DISCONNECT
                    // 0x95 (3.1.1: closed), never sent upstream.
                    if let Err(rule) = aws::check_payload(publish.payload.len()) {
                        self.count_refusal(rule);
                        return Action::End(SessionEnd::DeviceProtocol(
                            ReasonCode::PACKET_TOO_LARGE,
                        ));
                    }
                    self.carry_qos2_as_qos1(&mut publish);
                }
                if self.upstream == ProtocolVersion::V5 {
                    self.identity
                        .apply_to_publish(&mut props, &publish.topic, &publish.payload);
                }
                publish.properties = props;
                if let (Some(id), QoS::AtLeastOnce | QoS::ExactlyOnce) =
                    (publish.packet_id, publish.qos)
                {
                    self.uplink_unacked.insert(id.get());
                }
                Action::Forward(Packet::Publish(publish))
            }
            Packet::PubAck(r) => Action::Forward(Packet::PubAck(self.response_up(r))),
            Packet::PubRec(r) => Action::Forward(Packet::PubRec(self.response_up(r))),
            // A cloud without QoS 2 never sees it, so the device's PUBREL (for a QoS 2 PUBLISH
            // the cloud acknowledged as QoS 1) is completed here.
            Packet::PubRel(r) if self.qos2_carried_as_qos1() => {
                self.qos2_as_qos1.remove(&r.packet_id.get());
                Action::Reply(Packet::PubComp(PubResponse::success(r.packet_id)))
            }
            Packet::PubRel(r) => Action::Forward(Packet::PubRel(self.response_up(r))),
            Packet::PubComp(r) => Action::Forward(Packet::PubComp(self.response_up(r))),
            Packet::Subscribe(s) if self.azure.is_some() => self.subscribe_azure(s),
            Packet::Unsubscribe(u) if self.azure.is_some() => self.unsubscribe_azure(u),
            Packet::Subscribe(s) => {
                let mut subscriptions = Vec::with_capacity(s.subscriptions.len());
                let mut refused = Vec::new();
                for (index, sub) in s.subscriptions.into_iter().enumerate() {
                    // A filter with no valid upstream form is refused in the SUBACK, as a broker
                    // refuses an invalid filter; the others go upstream.
                    let Some(filter) = self.uplink_filter_of(&sub.filter) else {
                        refused.push(index);
                        continue;
                    };
                    let mut options = match self.upstream {
                        ProtocolVersion::V5 => sub.options,
                        ProtocolVersion::V311 => SubscriptionOptions::with_qos(sub.options.qos),
                    };
                    // A cloud without QoS 2 does not answer a QoS 2 subscription: ask for 1
                    // (the device is granted what the cloud grants).
                    if self.qos2_carried_as_qos1() && options.qos == QoS::ExactlyOnce {
                        options.qos = QoS::AtLeastOnce;
                    }
                    subscriptions.push(Subscription { filter, options });
                }
                if !refused.is_empty() {
                    if subscriptions.is_empty() {
                        let code = self.refusal_code(ReasonCode::TOPIC_FILTER_INVALID);
                        return Action::Reply(Packet::SubAck(SubAck {
                            packet_id: s.packet_id,
                            properties: Properties::default(),
                            reason_codes: vec![code; refused.len()],
                        }));
                    }
                    self.pending_refusals.insert(s.packet_id.get(), refused);
                }
                Action::Forward(Packet::Subscribe(Subscribe {
                    packet_id: s.packet_id,
                    properties: self.props_up(s.properties),
                    subscriptions,
                }))
            }
            Packet::Unsubscribe(u) => {
                let count = u.filters.len();
                let mut filters = Vec::with_capacity(count);
                let mut refused = Vec::new();
                for (index, filter) in u.filters.iter().enumerate() {
                    // As for SUBSCRIBE: a filter with no upstream form is refused in the UNSUBACK.
                    match self.uplink_filter_of(filter) {
                        Some(f) => filters.push(f),
                        None => refused.push(index),
                    }
                }
                if filters.is_empty() {
                    let reason_codes = match self.device {
                        ProtocolVersion::V5 => vec![ReasonCode::TOPIC_FILTER_INVALID; count],
                        ProtocolVersion::V311 => Vec::new(),
                    };
                    return Action::Reply(Packet::UnsubAck(UnsubAck {
                        packet_id: u.packet_id,
                        properties: Properties::default(),
                        reason_codes,
                    }));
                }
                if self.device == ProtocolVersion::V5 && self.upstream == ProtocolVersion::V311 {
                    self.pending_unsubscribes
                        .insert(u.packet_id.get(), filters.len());
                }
                if !refused.is_empty() && self.device == ProtocolVersion::V5 {
                    self.pending_refusals.insert(u.packet_id.get(), refused);
                }
                Action::Forward(Packet::Unsubscribe(Unsubscribe {
                    packet_id: u.packet_id,
                    properties: self.props_up(u.properties),
                    filters,
                }))
            }
            Packet::PingReq => Action::Forward(Packet::PingReq),
            Packet::Disconnect(d) => {
                if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL
                    && self.upstream == ProtocolVersion::V311
                {
                    return Action::End(SessionEnd::DeviceDisconnectedWithWill);
                }
                let forwarded = match self.upstream {
                    ProtocolVersion::V5 => Disconnect {
                        reason_code: d.reason_code,
                        properties: self.props_up(d.properties),
                    },
                    ProtocolVersion::V311 => Disconnect {
                        reason_code: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    },
                };
                Action::ForwardAndEnd(
                    Packet::Disconnect(forwarded),
                    SessionEnd::DeviceDisconnected,
                )
            }
            // A second CONNECT ([MQTT-3.1.0-2]), server-to-client packets, and AUTH: the device's
            // CONNECT had no Authentication Method (one is refused before the session starts,
            // `mqtt_bridge::refuse_enhanced_auth`), so it must not send AUTH ([MQTT-4.12.0-7]).
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => protocol_error,
        }
    }

    /// The device's form of a topic the broker sent this session: the template's affixes
    /// stripped; a topic without them passes as it is (the broker addresses this device only).
    fn device_topic(&self, topic: Bytes) -> Bytes {
        match &self.aws {
            Some(aws) => aws.downlink_topic(&self.topics, topic),
            None => self.topics.downlink_topic(&topic).unwrap_or(topic),
        }
    }

    /// Translate a packet from the broker for the device.
    pub fn downlink(&mut self, packet: Packet) -> Action {
        let protocol_error = Action::End(SessionEnd::UpstreamProtocol);
        match packet {
            Packet::Publish(mut publish) => {
                // simgate's CONNECT offers no Topic Alias Maximum, so the broker may not use one
                // ([MQTT-3.3.2-9]).
                if publish.properties.topic_alias.is_some() {
                    return protocol_error;
                }
                if let Some(azure) = &self.azure {
                    // A cloud-to-device message: on the configured device topic, its bag as
                    // user properties (v5 devices). Anything else passes as it is.
                    if let Some(bag) = azure.c2d_properties(&publish.topic) {
                        publish.topic = azure.c2d_topic.clone();
                        publish.properties = Properties::default();
                        if self.device == ProtocolVersion::V5 {
                            publish.properties.user_properties = bag
                                .into_iter()
                                .map(|(name, value)| mqtt::UserProperty { name, value })
                                .collect();
                        }
                        return Action::Forward(Packet::Publish(publish));
                    }
                    // A twin response or desired patch, a method request: under the device's
                    // prefixes.
                    if let Some(topic) = azure.device_topic(&publish.topic) {
                        publish.topic = topic;
                        publish.properties = Properties::default();
                        return Action::Forward(Packet::Publish(publish));
                    }
                }
                // Everything the broker sends this session is addressed to this device: a topic
                // without the template's affixes passes as it is.
                publish.topic = self.device_topic(publish.topic);
                let mut props = self.props_down(std::mem::take(&mut publish.properties));
                props.response_topic = props.response_topic.map(|t| self.device_topic(t));
                publish.properties = props;
                Action::Forward(Packet::Publish(publish))
            }
            Packet::PubAck(r) => {
                self.uplink_unacked.remove(&r.packet_id.get());
                if self.qos2_as_qos1.contains(&r.packet_id.get()) {
                    // A device QoS 2 PUBLISH carried as QoS 1: the cloud's PUBACK is its PUBREC.
                    if r.reason_code.0 >= 0x80 {
                        self.qos2_as_qos1.remove(&r.packet_id.get());
                    }
                    return self.response_down(r, Packet::PubRec);
                }
                self.response_down(r, Packet::PubAck)
            }
            Packet::PubRec(r) => {
                self.uplink_unacked.remove(&r.packet_id.get());
                self.response_down(r, Packet::PubRec)
            }
            Packet::PubRel(r) => self.response_down(r, Packet::PubRel),
            Packet::PubComp(r) => self.response_down(r, Packet::PubComp),
            Packet::SubAck(s) => {
                let mut reason_codes = match self.device {
                    ProtocolVersion::V5 => s.reason_codes,
                    ProtocolVersion::V311 => s
                        .reason_codes
                        .into_iter()
                        .map(|c| {
                            if c.0 <= 2 {
                                c
                            } else {
                                ReasonCode::UNSPECIFIED_ERROR
                            }
                        })
                        .collect(),
                };
                // Put back the device's filters refused here, in their places.
                if let Some(refused) = self.pending_refusals.remove(&s.packet_id.get()) {
                    let code = self.refusal_code(ReasonCode::TOPIC_FILTER_INVALID);
                    for index in refused {
                        reason_codes.insert(index.min(reason_codes.len()), code);
                    }
                }
                self.merge_azure_local_codes(s.packet_id.get(), &mut reason_codes);
                Action::Forward(Packet::SubAck(SubAck {
                    packet_id: s.packet_id,
                    properties: self.props_down(s.properties),
                    reason_codes,
                }))
            }
            Packet::UnsubAck(u) => {
                let pending = self.pending_unsubscribes.remove(&u.packet_id.get());
                let mut reason_codes = match (self.device, self.upstream) {
                    (ProtocolVersion::V311, _) => Vec::new(),
                    (ProtocolVersion::V5, ProtocolVersion::V5) => u.reason_codes,
                    (ProtocolVersion::V5, ProtocolVersion::V311) => {
                        vec![ReasonCode::SUCCESS; pending.unwrap_or(1)]
                    }
                };
                // Put back the device's filters refused here (5.0 only: 3.1.1 has no codes).
                if let Some(refused) = self.pending_refusals.remove(&u.packet_id.get()) {
                    for index in refused {
                        let at = index.min(reason_codes.len());
                        reason_codes.insert(at, ReasonCode::TOPIC_FILTER_INVALID);
                    }
                }
                if self.device == ProtocolVersion::V5 {
                    self.merge_azure_local_codes(u.packet_id.get(), &mut reason_codes);
                } else {
                    self.azure_local_codes.remove(&u.packet_id.get());
                }
                Action::Forward(Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    properties: self.props_down(u.properties),
                    reason_codes,
                }))
            }
            Packet::PingResp if self.own_pings > 0 => {
                self.own_pings -= 1;
                Action::Absorb
            }
            Packet::PingResp => Action::Forward(Packet::PingResp),
            Packet::Disconnect(d) => {
                let end = SessionEnd::UpstreamDisconnected(d.reason_code);
                match self.device {
                    // A 3.1.1 server never sends DISCONNECT: just close.
                    ProtocolVersion::V311 => Action::End(end),
                    ProtocolVersion::V5 => {
                        let reason_code = match self.upstream {
                            ProtocolVersion::V5 => d.reason_code,
                            ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
                        };
                        Action::ForwardAndEnd(
                            Packet::Disconnect(Disconnect {
                                reason_code,
                                properties: self.props_down(d.properties),
                            }),
                            end,
                        )
                    }
                }
            }
            // simgate's CONNECT carries no Authentication Method, so the broker must not send
            // AUTH ([MQTT-4.12.0-6]).
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq => protocol_error,
        }
    }

    /// A device PUBLISH toward IoT Hub: the topic mapped to the device's events topic; QoS 2
    /// carried as QoS 1 (the hub has no QoS 2: at least once upstream, the device's exchange
    /// completed after the hub's PUBACK); retain refused (a v5 device was told in its CONNACK).
    fn uplink_azure(&mut self, mut publish: Publish) -> Action {
        let Some(azure) = self.azure.as_ref() else {
            return Action::End(SessionEnd::UpstreamProtocol);
        };
        if publish.retain {
            self.count_refusal(CloudRule::Retain);
            return Action::End(SessionEnd::DeviceProtocol(ReasonCode(
                azure::RETAIN_NOT_SUPPORTED,
            )));
        }
        let user_properties: Vec<(Bytes, Bytes)> = match self.device {
            ProtocolVersion::V5 => publish
                .properties
                .user_properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect(),
            ProtocolVersion::V311 => Vec::new(),
        };
        let invalid = Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID));
        match azure.hub_topic(&publish.topic) {
            // A twin request or method response: to the hub's topic as sent (the hub reads the
            // JSON body: no envelope).
            Some(Ok(topic)) => publish.topic = topic,
            Some(Err(_)) => return invalid,
            None => {
                publish.topic = match azure.events_topic(&publish.topic, &user_properties) {
                    Ok(t) => t,
                    Err(_) => return invalid,
                };
                if let Some(fields) = &self.envelope {
                    publish.payload =
                        Bytes::from(envelope::wrap(fields, envelope::now_ms(), &publish.payload));
                }
            }
        }
        publish.properties = self.props_up(std::mem::take(&mut publish.properties));
        self.carry_qos2_as_qos1(&mut publish);
        if let Some(id) = publish
            .packet_id
            .filter(|_| publish.qos == QoS::AtLeastOnce)
        {
            self.uplink_unacked.insert(id.get());
        }
        Action::Forward(Packet::Publish(publish))
    }

    /// A device SUBSCRIBE toward IoT Hub: the C2D topic is granted here (simgate subscribed
    /// to it at session start), twin and method filters go to the hub (its SUBACK, with the
    /// codes given here merged in, answers the device), anything else is refused.
    fn subscribe_azure(&mut self, s: Subscribe) -> Action {
        let Some(azure) = self.azure.as_ref() else {
            return Action::End(SessionEnd::UpstreamProtocol);
        };
        let mut local = Vec::new();
        let mut upstream = Vec::new();
        for (index, sub) in s.subscriptions.iter().enumerate() {
            let code = match azure.hub_filter(&sub.filter) {
                FilterRoute::Hub(filter) => {
                    let qos = match sub.options.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    upstream.push(Subscription {
                        filter,
                        options: SubscriptionOptions::with_qos(qos),
                    });
                    continue;
                }
                FilterRoute::Local if azure.grants(&sub.filter) => match sub.options.qos {
                    QoS::AtMostOnce => ReasonCode::SUCCESS,
                    _ => ReasonCode::GRANTED_QOS_1,
                },
                FilterRoute::Local => self.refusal_code(ReasonCode::NOT_AUTHORIZED),
                FilterRoute::Refused => self.refusal_code(ReasonCode::TOPIC_FILTER_INVALID),
            };
            local.push((index, code));
        }
        if upstream.is_empty() {
            return Action::Reply(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reason_codes: local.into_iter().map(|(_, code)| code).collect(),
            }));
        }
        if !local.is_empty() {
            self.azure_local_codes.insert(s.packet_id.get(), local);
        }
        Action::Forward(Packet::Subscribe(Subscribe {
            packet_id: s.packet_id,
            properties: Properties::default(),
            subscriptions: upstream,
        }))
    }

    /// A device UNSUBSCRIBE toward IoT Hub: twin and method filters go to the hub, the others
    /// are answered here (success: nothing upstream to undo).
    fn unsubscribe_azure(&mut self, u: Unsubscribe) -> Action {
        let Some(azure) = self.azure.as_ref() else {
            return Action::End(SessionEnd::UpstreamProtocol);
        };
        let mut local = Vec::new();
        let mut upstream = Vec::new();
        for (index, filter) in u.filters.iter().enumerate() {
            match azure.hub_filter(filter) {
                FilterRoute::Hub(f) => upstream.push(f),
                FilterRoute::Local => local.push((index, ReasonCode::SUCCESS)),
                FilterRoute::Refused => local.push((index, ReasonCode::TOPIC_FILTER_INVALID)),
            }
        }
        if upstream.is_empty() {
            let reason_codes = match self.device {
                ProtocolVersion::V5 => local.into_iter().map(|(_, code)| code).collect(),
                ProtocolVersion::V311 => Vec::new(),
            };
            return Action::Reply(Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes,
            }));
        }
        if self.device == ProtocolVersion::V5 && self.upstream == ProtocolVersion::V311 {
            self.pending_unsubscribes
                .insert(u.packet_id.get(), upstream.len());
        }
        if !local.is_empty() {
            self.azure_local_codes.insert(u.packet_id.get(), local);
        }
        Action::Forward(Packet::Unsubscribe(Unsubscribe {
            packet_id: u.packet_id,
            properties: Properties::default(),
            filters: upstream,
        }))
    }

    /// Put the codes of filters answered here back in their places in the hub's answer.
    fn merge_azure_local_codes(&mut self, packet_id: u16, reason_codes: &mut Vec<ReasonCode>) {
        if let Some(local) = self.azure_local_codes.remove(&packet_id) {
            for (index, code) in local {
                reason_codes.insert(index.min(reason_codes.len()), code);
            }
        }
    }

    fn resolve_device_alias(&mut self, publish: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias.get() > DEVICE_TOPIC_ALIAS_MAXIMUM {
            return Err(TOPIC_ALIAS_INVALID);
        }
        if publish.topic.is_empty() {
            publish.topic = self
                .device_aliases
                .get(&alias.get())
                .cloned()
                .ok_or(ReasonCode::PROTOCOL_ERROR)?;
        } else {
            self.device_aliases
                .insert(alias.get(), Bytes::copy_from_slice(&publish.topic));
        }
        Ok(())
    }

    fn response_up(&self, r: PubResponse) -> PubResponse {
        match self.upstream {
            ProtocolVersion::V5 => PubResponse {
                packet_id: r.packet_id,
                reason_code: r.reason_code,
                properties: self.props_up(r.properties),
            },
            // 3.1.1 has only success; a v5 device's refusal still ends the delivery.
            ProtocolVersion::V311 => PubResponse::success(r.packet_id),
        }
    }

    fn response_down(&self, r: PubResponse, wrap: fn(PubResponse) -> Packet) -> Action {
        match self.device {
            ProtocolVersion::V5 => Action::Forward(wrap(PubResponse {
                packet_id: r.packet_id,
                reason_code: r.reason_code,
                properties: self.props_down(r.properties),
            })),
            ProtocolVersion::V311 if r.reason_code.0 >= 0x80 => {
                Action::End(SessionEnd::UpstreamRejectedPublish(r.reason_code))
            }
            ProtocolVersion::V311 => Action::Forward(wrap(PubResponse::success(r.packet_id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{device_connect, template, vars};
    use super::*;
    use std::num::NonZeroU16;

    fn publish(topic: &'static [u8], alias: Option<u16>) -> Publish {
        let properties = Properties {
            topic_alias: alias.and_then(NonZeroU16::new),
            ..Properties::default()
        };
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(topic),
            packet_id: NonZeroU16::new(7),
            properties,
            payload: Bytes::from_static(b"x"),
        }
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    #[test]
    fn invalid_rendered_topics_and_filters_end_the_session_with_their_reason_code() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        let publish = |topic: &'static [u8]| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Bytes::from_static(topic),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::new(),
            })
        };
        // A wildcard cannot be in a topic name, wrapped or not.
        assert!(matches!(
            b.uplink(publish(b"a/+")),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID))
        ));
        let subscribe = |filter: &'static [u8]| {
            Packet::Subscribe(Subscribe {
                packet_id: NonZeroU16::MIN,
                properties: Properties::default(),
                subscriptions: vec![Subscription {
                    filter: Bytes::from_static(filter),
                    options: SubscriptionOptions::with_qos(QoS::AtMostOnce),
                }],
            })
        };
        // `devices/{client_id}/{topic}` has no suffix, so `#` stays last: valid.
        assert!(matches!(b.uplink(subscribe(b"cmd/#")), Action::Forward(_)));
        // An invalid filter is refused in the SUBACK, as a broker would; the session goes on.
        let Action::Reply(Packet::SubAck(ack)) = b.uplink(subscribe(b"cmd/#/x")) else {
            panic!("an all-invalid SUBSCRIBE is answered here");
        };
        assert_eq!(ack.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    }

    #[test]
    fn an_unsubscribe_with_invalid_filters_is_answered_in_the_unsuback() {
        for upstream in [ProtocolVersion::V5, ProtocolVersion::V311] {
            let mut b = bridge(ProtocolVersion::V5, upstream);
            let unsubscribe = |filters: &[&'static [u8]]| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: id(3),
                    properties: Properties::default(),
                    filters: filters.iter().map(|f| Bytes::from_static(f)).collect(),
                })
            };
            let Action::Reply(Packet::UnsubAck(all)) = b.uplink(unsubscribe(&[b"a/#/x"])) else {
                panic!("an all-invalid UNSUBSCRIBE is answered here");
            };
            assert_eq!(all.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
            let Action::Forward(Packet::Unsubscribe(up)) = b.uplink(unsubscribe(&[b"b", b"a/#/x"]))
            else {
                panic!("the valid filter goes upstream");
            };
            assert_eq!(up.filters.len(), 1);
            let broker_codes = match upstream {
                ProtocolVersion::V5 => vec![ReasonCode::SUCCESS],
                ProtocolVersion::V311 => Vec::new(),
            };
            let Action::Forward(Packet::UnsubAck(down)) = b.downlink(Packet::UnsubAck(UnsubAck {
                packet_id: id(3),
                properties: Properties::default(),
                reason_codes: broker_codes,
            })) else {
                panic!("the broker's UNSUBACK goes to the device");
            };
            assert_eq!(
                down.reason_codes,
                vec![ReasonCode::SUCCESS, ReasonCode::TOPIC_FILTER_INVALID],
                "{upstream:?}"
            );
        }
        // 3.1.1 has no UNSUBACK codes: the refused filter is simply not sent upstream.
        let mut b = bridge(ProtocolVersion::V311, ProtocolVersion::V5);
        let Action::Reply(Packet::UnsubAck(ack)) = b.uplink(Packet::Unsubscribe(Unsubscribe {
            packet_id: id(4),
            properties: Properties::default(),
            filters: vec![Bytes::from_static(b"a/#/x")],
        })) else {
            panic!("answered here");
        };
        assert!(ack.reason_codes.is_empty());
    }

    #[test]
    fn a_subscribe_with_some_invalid_filters_forwards_the_rest_and_merges_the_suback() {
        for (device, refused) in [
            (ProtocolVersion::V5, ReasonCode::TOPIC_FILTER_INVALID),
            (ProtocolVersion::V311, ReasonCode::UNSPECIFIED_ERROR),
        ] {
            let mut b = bridge(device, ProtocolVersion::V5);
            let filters: [&'static [u8]; 4] = [b"a/#/x", b"b", b"c/#/y", b"d/+"];
            let Action::Forward(Packet::Subscribe(up)) = b.uplink(Packet::Subscribe(Subscribe {
                packet_id: id(7),
                properties: Properties::default(),
                subscriptions: filters
                    .iter()
                    .map(|f| Subscription {
                        filter: Bytes::from_static(f),
                        options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    })
                    .collect(),
            })) else {
                panic!("the valid filters go upstream");
            };
            assert_eq!(up.subscriptions.len(), 2);
            let Action::Forward(Packet::SubAck(down)) = b.downlink(Packet::SubAck(SubAck {
                packet_id: id(7),
                properties: Properties::default(),
                reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::SUCCESS],
            })) else {
                panic!("the broker's SUBACK goes to the device");
            };
            assert_eq!(
                down.reason_codes,
                vec![
                    refused,
                    ReasonCode::GRANTED_QOS_1,
                    refused,
                    ReasonCode::SUCCESS
                ],
                "{device:?}"
            );
        }
    }

    #[test]
    fn uplink_publishes_count_as_unacknowledged_until_the_broker_answers() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        let with = |qos: QoS, n: u16| {
            let mut p = publish(b"t", None);
            p.qos = qos;
            p.packet_id = (qos != QoS::AtMostOnce).then(|| id(n));
            Packet::Publish(p)
        };
        b.uplink(with(QoS::AtLeastOnce, 1));
        b.uplink(with(QoS::ExactlyOnce, 2));
        b.uplink(with(QoS::AtMostOnce, 0));
        assert_eq!(b.uplink_unacknowledged(), 2);
        // A PUBACK the device sends (for a downlink message) is not the broker's answer.
        b.uplink(Packet::PubAck(PubResponse::success(id(1))));
        assert_eq!(b.uplink_unacknowledged(), 2);
        b.downlink(Packet::PubAck(PubResponse::success(id(1))));
        assert_eq!(b.uplink_unacknowledged(), 1);
        b.downlink(Packet::PubRec(PubResponse::success(id(2))));
        assert_eq!(b.uplink_unacknowledged(), 0);
    }

    fn azure_bridge(device: ProtocolVersion) -> Bridge {
        bridge(device, ProtocolVersion::V311).with_azure(Some(AzureSession {
            device_id: "001010000000002".into(),
            fields: vec![("imsi".to_owned(), "001010000000002".to_owned())].into(),
            c2d_topic: Bytes::from_static(b"devicebound"),
            twin_topic: Bytes::from_static(azure::HUB_TWIN.as_bytes()),
            methods_topic: Bytes::from_static(b"methods"),
        }))
    }

    #[test]
    fn azure_twin_and_method_topics_reach_the_hub_and_come_back() {
        let mut b = azure_bridge(ProtocolVersion::V5);
        let sub = |filter: &'static [u8]| Subscription {
            filter: Bytes::from_static(filter),
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        };
        // A mixed SUBSCRIBE: the hub gets the twin and method filters only; its SUBACK, with
        // the local codes put back in their places, answers the device.
        let Action::Forward(Packet::Subscribe(up)) = b.uplink(Packet::Subscribe(Subscribe {
            packet_id: id(3),
            properties: Properties::default(),
            subscriptions: vec![
                sub(b"devicebound"),
                sub(b"$iothub/twin/res/#"),
                sub(b"methods/POST/#"),
                sub(b"methods/#"),
            ],
        })) else {
            panic!("forwarded");
        };
        let filters: Vec<&[u8]> = up.subscriptions.iter().map(|s| &s.filter[..]).collect();
        assert_eq!(
            filters,
            vec![&b"$iothub/twin/res/#"[..], b"$iothub/methods/POST/#"]
        );
        let Action::Forward(Packet::SubAck(ack)) = b.downlink(Packet::SubAck(SubAck {
            packet_id: id(3),
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::GRANTED_QOS_1],
        })) else {
            panic!("relayed");
        };
        assert_eq!(
            ack.reason_codes,
            vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::TOPIC_FILTER_INVALID
            ]
        );
        // A method request comes back under the device's prefix; the response goes to the
        // hub's topic as sent, without the telemetry property bag.
        let Action::Forward(Packet::Publish(down)) = b.downlink(Packet::Publish(publish(
            b"$iothub/methods/POST/reboot/?$rid=5",
            None,
        ))) else {
            panic!("delivered");
        };
        assert_eq!(&down.topic[..], b"methods/POST/reboot/?$rid=5");
        let Action::Forward(Packet::Publish(up)) =
            b.uplink(Packet::Publish(publish(b"methods/res/200/?$rid=5", None)))
        else {
            panic!("forwarded");
        };
        assert_eq!(&up.topic[..], b"$iothub/methods/res/200/?$rid=5");
        let Action::Forward(Packet::Publish(up)) =
            b.uplink(Packet::Publish(publish(b"$iothub/twin/GET/?$rid=1", None)))
        else {
            panic!("forwarded");
        };
        assert_eq!(&up.topic[..], b"$iothub/twin/GET/?$rid=1");
        // What only the hub publishes is the device's error.
        assert_eq!(
            b.uplink(Packet::Publish(publish(
                b"$iothub/twin/res/200/?$rid=1",
                None
            ))),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID))
        );
        // UNSUBSCRIBE: hub filters forwarded, the rest answered here; codes merged (v5).
        let Action::Forward(Packet::Unsubscribe(up)) = b.uplink(Packet::Unsubscribe(Unsubscribe {
            packet_id: id(4),
            properties: Properties::default(),
            filters: vec![
                Bytes::from_static(b"devicebound"),
                Bytes::from_static(b"methods/POST/#"),
            ],
        })) else {
            panic!("forwarded");
        };
        assert_eq!(
            up.filters,
            vec![Bytes::from_static(b"$iothub/methods/POST/#")]
        );
        let Action::Forward(Packet::UnsubAck(ack)) = b.downlink(Packet::UnsubAck(UnsubAck {
            packet_id: id(4),
            properties: Properties::default(),
            reason_codes: Vec::new(),
        })) else {
            panic!("relayed");
        };
        assert_eq!(ack.reason_codes, vec![ReasonCode::SUCCESS; 2]);
    }

    #[test]
    fn azure_uplink_goes_to_the_events_topic_carries_qos2_as_qos1_and_refuses_retain() {
        let mut b = azure_bridge(ProtocolVersion::V5);
        let mut p = publish(b"temp", None);
        p.properties.user_properties.push(mqtt::UserProperty {
            name: Bytes::from_static(b"unit"),
            value: Bytes::from_static(b"C"),
        });
        let Action::Forward(Packet::Publish(up)) = b.uplink(Packet::Publish(p)) else {
            panic!("forwarded");
        };
        assert_eq!(
            &up.topic[..],
            b"devices/001010000000002/messages/events/imsi=001010000000002&topic=temp&unit=C"
        );
        assert!(up.properties.is_empty(), "3.1.1 upstream");
        assert_eq!(b.uplink_unacknowledged(), 1);
        // QoS 2: QoS 1 upstream; the hub's PUBACK is the device's PUBREC, its PUBREL is
        // completed here.
        let mut q2 = publish(b"t", None);
        q2.qos = QoS::ExactlyOnce;
        q2.packet_id = Some(id(9));
        let Action::Forward(Packet::Publish(up)) = b.uplink(Packet::Publish(q2)) else {
            panic!("forwarded");
        };
        assert_eq!((up.qos, up.packet_id), (QoS::AtLeastOnce, Some(id(9))));
        assert_eq!(
            b.downlink(Packet::PubAck(PubResponse::success(id(9)))),
            Action::Forward(Packet::PubRec(PubResponse::success(id(9))))
        );
        assert_eq!(
            b.uplink(Packet::PubRel(PubResponse::success(id(9)))),
            Action::Reply(Packet::PubComp(PubResponse::success(id(9))))
        );
        // A QoS 1 PUBACK stays a PUBACK.
        assert_eq!(
            b.downlink(Packet::PubAck(PubResponse::success(id(7)))),
            Action::Forward(Packet::PubAck(PubResponse::success(id(7))))
        );
        let mut retained = publish(b"t", None);
        retained.retain = true;
        assert_eq!(
            b.uplink(Packet::Publish(retained)),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode(0x9A)))
        );
    }

    #[test]
    fn azure_subscriptions_are_answered_here_and_c2d_messages_delivered_with_properties() {
        let mut b = azure_bridge(ProtocolVersion::V5);
        let sub = |filter: &'static [u8]| Subscription {
            filter: Bytes::from_static(filter),
            options: SubscriptionOptions::with_qos(QoS::ExactlyOnce),
        };
        let Action::Reply(Packet::SubAck(ack)) = b.uplink(Packet::Subscribe(Subscribe {
            packet_id: id(2),
            properties: Properties::default(),
            subscriptions: vec![sub(b"devicebound"), sub(b"cmd/#")],
        })) else {
            panic!("answered here");
        };
        assert_eq!(
            ack.reason_codes,
            vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED]
        );
        let c2d = publish(
            b"devices/001010000000002/messages/devicebound/k=v&%24.mid=7",
            None,
        );
        let Action::Forward(Packet::Publish(down)) = b.downlink(Packet::Publish(c2d.clone()))
        else {
            panic!("delivered");
        };
        assert_eq!(&down.topic[..], b"devicebound");
        let props: Vec<(&[u8], &[u8])> = down
            .properties
            .user_properties
            .iter()
            .map(|p| (&p.name[..], &p.value[..]))
            .collect();
        assert_eq!(props, vec![(&b"k"[..], &b"v"[..]), (b"$.mid", b"7")]);
        let mut v311 = azure_bridge(ProtocolVersion::V311);
        let Action::Forward(Packet::Publish(down)) = v311.downlink(Packet::Publish(c2d)) else {
            panic!("delivered");
        };
        assert_eq!(&down.topic[..], b"devicebound");
        assert!(down.properties.is_empty());
    }

    const THING: &str = "001010000000002";

    fn aws_bridge(device: ProtocolVersion) -> Bridge {
        let topics = TopicMap::new(&template("{topic}"), &vars(THING.as_bytes()));
        let session = AwsSession::new(Some(THING), &topics);
        Bridge::new(device, ProtocolVersion::V311, topics).with_aws(Some(session))
    }

    fn refused(b: &mut Bridge, rule: CloudRule) -> u64 {
        b.take_refusals()[rule.index()]
    }

    #[test]
    fn aws_carries_qos2_as_qos1_and_completes_the_device_exchange_after_the_puback() {
        let mut b = aws_bridge(ProtocolVersion::V5);
        let mut q2 = publish(b"dt/temp", None);
        q2.qos = QoS::ExactlyOnce;
        q2.packet_id = Some(id(9));
        let Action::Forward(Packet::Publish(up)) = b.uplink(Packet::Publish(q2)) else {
            panic!("forwarded");
        };
        assert_eq!(&up.topic[..], b"dt/temp");
        assert_eq!((up.qos, up.packet_id), (QoS::AtLeastOnce, Some(id(9))));
        assert_eq!(b.uplink_unacknowledged(), 1);
        assert_eq!(
            b.downlink(Packet::PubAck(PubResponse::success(id(9)))),
            Action::Forward(Packet::PubRec(PubResponse::success(id(9))))
        );
        assert_eq!(b.uplink_unacknowledged(), 0);
        assert_eq!(
            b.uplink(Packet::PubRel(PubResponse::success(id(9)))),
            Action::Reply(Packet::PubComp(PubResponse::success(id(9))))
        );
        // Retained messages are AWS IoT Core's to keep: they pass.
        let mut retained = publish(b"state", None);
        retained.retain = true;
        assert!(matches!(
            b.uplink(Packet::Publish(retained)),
            Action::Forward(Packet::Publish(p)) if p.retain
        ));
    }

    #[test]
    fn aws_topic_rules_answer_a_v5_qos1_publish_with_0x90_and_keep_the_session() {
        let mut b = aws_bridge(ProtocolVersion::V5);
        let puback_0x90 = Action::Reply(Packet::PubAck(PubResponse {
            packet_id: id(7),
            reason_code: ReasonCode::TOPIC_NAME_INVALID,
            properties: Properties::default(),
        }));
        assert_eq!(
            b.uplink(Packet::Publish(publish(b"a/b/c/d/e/f/g/h/i", None))),
            puback_0x90
        );
        assert_eq!(refused(&mut b, CloudRule::TopicSlashes), 1);
        let long: &'static [u8] = Box::leak(vec![b'a'; 257].into_boxed_slice());
        assert_eq!(b.uplink(Packet::Publish(publish(long, None))), puback_0x90);
        assert_eq!(refused(&mut b, CloudRule::TopicBytes), 1);
        assert_eq!(
            b.uplink(Packet::Publish(publish(
                b"$aws/things/other/shadow/update",
                None
            ))),
            puback_0x90
        );
        assert_eq!(refused(&mut b, CloudRule::ReservedTopic), 1);
        assert_eq!(b.uplink_unacknowledged(), 0, "nothing went upstream");
        // QoS 2: PUBREC 0x90. QoS 0: nothing to answer, so DISCONNECT 0x90.
        let mut q2 = publish(b"a/b/c/d/e/f/g/h/i", None);
        q2.qos = QoS::ExactlyOnce;
        assert!(matches!(
            b.uplink(Packet::Publish(q2)),
            Action::Reply(Packet::PubRec(r)) if r.reason_code == ReasonCode::TOPIC_NAME_INVALID
        ));
        let mut q0 = publish(b"a/b/c/d/e/f/g/h/i", None);
        q0.qos = QoS::AtMostOnce;
        q0.packet_id = None;
        assert_eq!(
            b.uplink(Packet::Publish(q0)),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID))
        );
        assert_eq!(refused(&mut b, CloudRule::TopicSlashes), 2);
        // A 3.1.1 device cannot be told: the connection is closed.
        let mut old = aws_bridge(ProtocolVersion::V311);
        assert_eq!(
            old.uplink(Packet::Publish(publish(b"a/b/c/d/e/f/g/h/i", None))),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID))
        );
    }

    #[test]
    fn aws_refuses_a_payload_over_128_kb_with_0x95() {
        let mut b = aws_bridge(ProtocolVersion::V5);
        let mut big = publish(b"dt/blob", None);
        big.payload = Bytes::from(vec![0u8; aws::MAX_PAYLOAD_BYTES + 1]);
        assert_eq!(
            b.uplink(Packet::Publish(big)),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::PACKET_TOO_LARGE))
        );
        assert_eq!(refused(&mut b, CloudRule::PayloadTooLarge), 1);
        let mut fits = publish(b"dt/blob", None);
        fits.payload = Bytes::from(vec![0u8; aws::MAX_PAYLOAD_BYTES]);
        assert!(matches!(
            b.uplink(Packet::Publish(fits)),
            Action::Forward(_)
        ));
    }

    #[test]
    fn aws_shadow_topics_map_both_ways_and_subscriptions_ask_for_qos1() {
        let mut b = aws_bridge(ProtocolVersion::V5);
        let Action::Forward(Packet::Publish(up)) =
            b.uplink(Packet::Publish(publish(b"shadow/update", None)))
        else {
            panic!("forwarded");
        };
        assert_eq!(&up.topic[..], b"$aws/things/001010000000002/shadow/update");
        let Action::Forward(Packet::Subscribe(s)) = b.uplink(Packet::Subscribe(Subscribe {
            packet_id: id(3),
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: Bytes::from_static(b"shadow/update/+"),
                options: SubscriptionOptions::with_qos(QoS::ExactlyOnce),
            }],
        })) else {
            panic!("forwarded");
        };
        assert_eq!(
            &s.subscriptions[0].filter[..],
            b"$aws/things/001010000000002/shadow/update/+"
        );
        assert_eq!(s.subscriptions[0].options.qos, QoS::AtLeastOnce);
        let Action::Forward(Packet::Publish(down)) = b.downlink(Packet::Publish(publish(
            b"$aws/things/001010000000002/shadow/update/accepted",
            None,
        ))) else {
            panic!("delivered");
        };
        assert_eq!(&down.topic[..], b"shadow/update/accepted");
        // A subscription to another thing's topics is refused in the SUBACK and counted.
        let Action::Reply(Packet::SubAck(ack)) = b.uplink(Packet::Subscribe(Subscribe {
            packet_id: id(4),
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: Bytes::from_static(b"$aws/things/+/shadow/#"),
                options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            }],
        })) else {
            panic!("answered here");
        };
        assert_eq!(ack.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
        assert_eq!(refused(&mut b, CloudRule::ReservedTopic), 1);
    }

    #[test]
    fn the_answer_to_simgates_own_ping_is_not_the_devices() {
        let mut b = aws_bridge(ProtocolVersion::V311);
        b.note_own_ping();
        assert_eq!(b.downlink(Packet::PingResp), Action::Absorb);
        assert_eq!(
            b.downlink(Packet::PingResp),
            Action::Forward(Packet::PingResp)
        );
    }

    #[test]
    fn azure_retain_refusals_are_counted() {
        let mut b = azure_bridge(ProtocolVersion::V5);
        let mut retained = publish(b"t", None);
        retained.retain = true;
        let _ = b.uplink(Packet::Publish(retained));
        assert_eq!(refused(&mut b, CloudRule::Retain), 1);
        assert_eq!(refused(&mut b, CloudRule::Retain), 0, "taken once");
    }

    #[test]
    fn drain_tells_a_v5_device_0x8b_and_keeps_the_will_upstream() {
        let end = SessionEnd::ServerShuttingDown;
        assert_eq!(end.device_reason(), Some(ReasonCode::SERVER_SHUTTING_DOWN));
        assert!(
            !end.upstream_clean(),
            "no normal DISCONNECT: it would delete the will"
        );
        assert_eq!(
            end.upstream_goodbye(ProtocolVersion::V5),
            Some(ReasonCode::DISCONNECT_WITH_WILL)
        );
        assert_eq!(end.upstream_goodbye(ProtocolVersion::V311), None);
        assert_eq!(end.error_kind(), None);
        assert_eq!(
            SessionEnd::DeviceDisconnected.upstream_goodbye(ProtocolVersion::V5),
            None
        );
    }

    fn bridge(device: ProtocolVersion, upstream: ProtocolVersion) -> Bridge {
        Bridge::new(
            device,
            upstream,
            TopicMap::new(&template("devices/{client_id}/{topic}"), &vars(b"d1")),
        )
    }

    #[test]
    fn uplink_payload_is_wrapped_when_the_destination_envelopes_even_toward_3_1_1() {
        let fields: Box<[(String, String)]> = Box::new([("imsi".into(), "001010000000002".into())]);
        let mut b =
            bridge(ProtocolVersion::V311, ProtocolVersion::V311).with_envelope(Some(fields));
        let Action::Forward(Packet::Publish(p)) = b.uplink(Packet::Publish(publish(b"t", None)))
        else {
            panic!("expected a forwarded publish");
        };
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
        assert_eq!(v["imsi"], "001010000000002");
        assert_eq!(v["payload"], "eA==", "b\"x\" is not JSON: base64");
        assert_eq!(v["payload_encoding"], "base64");
    }

    #[test]
    fn uplink_publish_is_rewritten_and_aliases_resolved() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        let Action::Forward(Packet::Publish(first)) =
            b.uplink(Packet::Publish(publish(b"temp", Some(3))))
        else {
            panic!("expected a forwarded publish");
        };
        assert_eq!(&first.topic[..], b"devices/d1/temp");
        assert_eq!(first.properties.topic_alias, None);
        assert_eq!(first.packet_id, NonZeroU16::new(7));
        let Action::Forward(Packet::Publish(second)) =
            b.uplink(Packet::Publish(publish(b"", Some(3))))
        else {
            panic!("expected a forwarded publish");
        };
        assert_eq!(&second.topic[..], b"devices/d1/temp");
        assert_eq!(
            b.uplink(Packet::Publish(publish(b"", Some(4)))),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::PROTOCOL_ERROR))
        );
        assert_eq!(
            b.uplink(Packet::Publish(publish(
                b"x",
                Some(DEVICE_TOPIC_ALIAS_MAXIMUM + 1)
            ))),
            Action::End(SessionEnd::DeviceProtocol(TOPIC_ALIAS_INVALID))
        );
    }

    #[test]
    fn downlink_publish_maps_topic_back_and_refuses_broker_aliases() {
        let mut b = bridge(ProtocolVersion::V311, ProtocolVersion::V311);
        let Action::Forward(Packet::Publish(p)) =
            b.downlink(Packet::Publish(publish(b"devices/d1/cmd/reboot", None)))
        else {
            panic!("expected a forwarded publish");
        };
        assert_eq!(&p.topic[..], b"cmd/reboot");
        let mut b5 = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        assert_eq!(
            b5.downlink(Packet::Publish(publish(b"devices/d1/x", Some(1)))),
            Action::End(SessionEnd::UpstreamProtocol)
        );
    }

    #[test]
    fn subscribe_filters_are_rewritten_and_options_fit_the_upstream_version() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V311);
        let mut options = SubscriptionOptions::with_qos(QoS::ExactlyOnce);
        options.no_local = true;
        let action = b.uplink(Packet::Subscribe(Subscribe {
            packet_id: id(5),
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: Bytes::from_static(b"cmd/#"),
                options,
            }],
        }));
        let Action::Forward(Packet::Subscribe(s)) = action else {
            panic!("expected a forwarded subscribe");
        };
        assert_eq!(&s.subscriptions[0].filter[..], b"devices/d1/cmd/#");
        assert_eq!(
            s.subscriptions[0].options,
            SubscriptionOptions::with_qos(QoS::ExactlyOnce)
        );
    }

    #[test]
    fn v311_unsuback_gets_one_code_per_filter_for_a_v5_device() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V311);
        let _ = b.uplink(Packet::Unsubscribe(Unsubscribe {
            packet_id: id(9),
            properties: Properties::default(),
            filters: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        }));
        let action = b.downlink(Packet::UnsubAck(UnsubAck {
            packet_id: id(9),
            properties: Properties::default(),
            reason_codes: Vec::new(),
        }));
        let Action::Forward(Packet::UnsubAck(u)) = action else {
            panic!("expected a forwarded unsuback");
        };
        assert_eq!(u.reason_codes, vec![ReasonCode::SUCCESS; 2]);
    }

    #[test]
    fn suback_failures_become_0x80_for_v311_devices() {
        let mut b = bridge(ProtocolVersion::V311, ProtocolVersion::V5);
        let action = b.downlink(Packet::SubAck(SubAck {
            packet_id: id(1),
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        }));
        let Action::Forward(Packet::SubAck(s)) = action else {
            panic!("expected a forwarded suback");
        };
        assert_eq!(
            s.reason_codes,
            vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR]
        );
    }

    #[test]
    fn refused_publish_disconnects_a_v311_device_instead_of_acknowledging() {
        let mut b = bridge(ProtocolVersion::V311, ProtocolVersion::V5);
        let refused = PubResponse {
            packet_id: id(7),
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::default(),
        };
        assert_eq!(
            b.downlink(Packet::PubAck(refused.clone())),
            Action::End(SessionEnd::UpstreamRejectedPublish(
                ReasonCode::NOT_AUTHORIZED
            ))
        );
        let mut b5 = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        assert_eq!(
            b5.downlink(Packet::PubAck(refused.clone())),
            Action::Forward(Packet::PubAck(refused))
        );
    }

    #[test]
    fn disconnects_end_the_session_the_right_way() {
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        let normal = Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        assert_eq!(
            b.uplink(Packet::Disconnect(normal.clone())),
            Action::ForwardAndEnd(
                Packet::Disconnect(normal.clone()),
                SessionEnd::DeviceDisconnected
            )
        );
        let with_will = Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Properties::default(),
        };
        let mut b311 = bridge(ProtocolVersion::V5, ProtocolVersion::V311);
        assert_eq!(
            b311.uplink(Packet::Disconnect(with_will)),
            Action::End(SessionEnd::DeviceDisconnectedWithWill)
        );
        assert!(!SessionEnd::DeviceDisconnectedWithWill.upstream_clean());
        let busy = Disconnect {
            reason_code: ReasonCode::SERVER_BUSY,
            properties: Properties::default(),
        };
        assert_eq!(
            b.downlink(Packet::Disconnect(busy.clone())),
            Action::ForwardAndEnd(
                Packet::Disconnect(busy),
                SessionEnd::UpstreamDisconnected(ReasonCode::SERVER_BUSY)
            )
        );
    }

    #[test]
    fn auth_is_a_protocol_error_both_ways_and_never_forwarded() {
        let auth = Packet::Auth(mqtt::Auth {
            reason_code: ReasonCode::RE_AUTHENTICATE,
            properties: Properties {
                authentication_method: Some(Bytes::from_static(b"SCRAM-SHA-1")),
                ..Properties::default()
            },
        });
        let mut b = bridge(ProtocolVersion::V5, ProtocolVersion::V5);
        assert_eq!(
            b.uplink(auth.clone()),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::PROTOCOL_ERROR))
        );
        assert_eq!(b.downlink(auth), Action::End(SessionEnd::UpstreamProtocol));
    }

    #[test]
    fn wrong_direction_packets_are_protocol_errors() {
        let mut b = bridge(ProtocolVersion::V311, ProtocolVersion::V311);
        assert_eq!(
            b.uplink(Packet::PingResp),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::PROTOCOL_ERROR))
        );
        assert_eq!(
            b.uplink(Packet::Connect(Box::new(device_connect(
                ProtocolVersion::V311
            )))),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::PROTOCOL_ERROR))
        );
        assert_eq!(
            b.downlink(Packet::PingReq),
            Action::End(SessionEnd::UpstreamProtocol)
        );
        assert_eq!(b.uplink(Packet::PingReq), Action::Forward(Packet::PingReq));
    }

    #[test]
    fn device_disconnect_falls_back_to_unspecified_error_for_non_disconnect_codes() {
        // 0x91 (Packet Identifier in use) is a PUBACK code, not a DISCONNECT one.
        assert_eq!(
            &encode_device_disconnect(ReasonCode(0x91))[..],
            &[0xE0, 0x01, 0x80]
        );
        assert_eq!(
            &encode_device_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT)[..],
            &[0xE0, 0x01, 0x8D]
        );
    }

    #[test]
    fn session_endings_decide_will_and_device_reason() {
        for end in [
            SessionEnd::DeviceClosed,
            SessionEnd::DeviceKeepAliveTimeout,
            SessionEnd::DeviceProtocol(ReasonCode::MALFORMED_PACKET),
            SessionEnd::UpstreamClosed,
        ] {
            assert!(
                !end.upstream_clean(),
                "{end:?} must leave the will to the broker"
            );
        }
        assert_eq!(
            SessionEnd::DeviceProtocol(ReasonCode::PACKET_TOO_LARGE).device_reason(),
            Some(ReasonCode::PACKET_TOO_LARGE)
        );
        assert_eq!(
            SessionEnd::UpstreamClosed.device_reason(),
            Some(ReasonCode::UNSPECIFIED_ERROR)
        );
        assert_eq!(SessionEnd::DeviceClosed.device_reason(), None);
    }
}
