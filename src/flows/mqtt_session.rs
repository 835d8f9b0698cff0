//! Session mode (1:1) MQTT bridging: each device session gets its own upstream MQTTS
//! connection, so the device's MQTT session *is* the upstream session, re-encoded.
//!
//! ```text
//!  device ──plaintext MQTT──► [decode ─► Bridge::uplink ─► encode] ──TLS──► broker
//!  device ◄──────────────────  [encode ◄─ Bridge::downlink ◄─ decode] ◄────── broker
//! ```
//!
//! Flow of one session:
//! 1. Build the upstream CONNECT from the device's ([`build_upstream_connect`]): client id and
//!    user name from the destination's templates, password from the destination (or the
//!    device's own user name/password with `pass_through_credentials`), the device's keep-alive,
//!    clean start and will (topic rewritten through the `topic` template); v5 properties passed
//!    through when both hops speak v5. Version per [`MqttUpstreamVersion`]. A device that sent
//!    an empty client id gets one of simgate's ([`assign_client_id`]) and the templates are
//!    filled with it (3.1.1 with Clean Session = 0: CONNACK 0x02 instead, [MQTT-3.1.3-8]).
//! 2. Take a TLS connection from the shard's pool (a warm one when there is one: the device
//!    then connects in one upstream round trip), send CONNECT, wait for CONNACK within the
//!    destination's `pool.connect_timeout`. A pooled connection found dead before any reply is
//!    replaced once by a fresh one (a CONNECT that got no answer is safe to repeat).
//! 3. Relay the CONNACK ([`device_connack`]: reason code mapped across versions; v5 properties
//!    such as Server Keep Alive passed through; Assigned Client Identifier is simgate's id for
//!    a device that sent none, never the broker's). Upstream
//!    unreachable, TLS failure, timeout or a bad reply: CONNACK 0x88 (3.1.1: 0x03) and close.
//! 4. Pump both directions with [`select2`]. Packets are decoded, translated by [`Bridge`] and
//!    re-encoded; packet identifiers pass through unchanged (one session, one id space), so
//!    QoS 0/1/2 run end to end: a device's PUBACK/PUBREC/PUBCOMP come from the broker and
//!    nothing is acknowledged that the broker has not acknowledged.
//!
//! Translation ([`Bridge`], sans-IO): PUBLISH topics (and v5 Response Topic) are rewritten
//! uplink by the `topic` template and mapped back downlink by stripping its affixes
//! ([`TopicMap`]); SUBSCRIBE/UNSUBSCRIBE filters are rewritten likewise (inside
//! `$share/{group}/` for shared subscriptions). Device topic aliases are resolved (simgate
//! advertises its own small Topic Alias Maximum to v5 devices) and never forwarded; simgate
//! advertises no aliases upstream, so a broker alias is a protocol error. When the two hops
//! speak different versions, properties are dropped toward 3.1.1 and reason codes mapped.
//!
//! Endings:
//! - device DISCONNECT: forwarded upstream (normal: the broker discards the will), both closed;
//!   a v5 "disconnect with will" (0x04) toward a 3.1.1 broker drops the link abruptly instead;
//! - device silent for 1.5× its keep-alive (or the broker's Server Keep Alive), device EOF or
//!   socket error: device closed, upstream dropped without DISCONNECT (the broker publishes
//!   the will);
//! - malformed or oversized device packet (oversized is refused from the fixed header, before
//!   the body is buffered): v5 DISCONNECT with the codec's reason code (0x81/0x82/0x95...),
//!   device closed, upstream dropped without DISCONNECT;
//! - upstream DISCONNECT, close or error: the device (v5) gets the broker's DISCONNECT, or
//!   DISCONNECT 0x80 (0x88 "Server unavailable" is a CONNACK-only code), then is closed.
//! - shard drain (SIGTERM): the device is no longer read; the broker's answers to the device's
//!   QoS 1/2 PUBLISHes already forwarded are relayed until none is outstanding (or the drain
//!   window is nearly over), then a v5 device gets DISCONNECT 0x8B (a 3.1.1 device is closed).
//!   Upstream, a v5 broker gets DISCONNECT 0x04 "Disconnect with Will Message" and a 3.1.1
//!   broker a TLS close without DISCONNECT: the device did not leave, so its will stands (it
//!   is published, after its Will Delay Interval, unless the device reconnects first).
//!
//! What this module does NOT do: enhanced authentication (a device CONNECT with an
//! Authentication Method is refused with 0x8C before this module runs, a device AUTH is a
//! Protocol Error 0x82 and is not forwarded, a broker AUTH before CONNACK gets the device 0x83
//! and one after it ends the session as an upstream protocol error), enforcement of the listener's Receive Maximum (it is only advertised;
//! the broker enforces its own), persistence of anything across an upstream reconnect (the
//! device reconnects and its broker session resumes), or buffering: a side that stops reading
//! stalls the other direction (TCP back-pressure).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::mqtt_bridge::{
    assign_client_id, drain_ack_deadline, goodbye_deadline, send_connack, v311_return_code,
    DeviceSession,
};
use super::ShardState;
use crate::policy::{
    DestinationPlan, MqttDestination, MqttListenerLimits, MqttUpstreamVersion, TemplateVars,
    TopicMap,
};
use crate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, Disconnect, MqttError, Packet, Properties,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, Sender, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::reactor::{self, TcpStream};
use crate::reactor::{select2, Either};
use crate::stats::{ErrorKind, Protocol};
use crate::tls::{TlsError, TlsIoError};
use crate::upstream::{UpstreamConn, UpstreamError};

/// Topic Alias Maximum simgate advertises to v5 devices: device aliases are resolved here (the
/// map holds copies of at most this many topics per session) and never sent upstream.
pub const DEVICE_TOPIC_ALIAS_MAXIMUM: u16 = 16;

/// v5 reason code 0x94 "Topic Alias invalid".
const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);

/// How long a best-effort goodbye (a DISCONNECT or CONNACK before closing) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

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
            (SessionEnd::ServerShuttingDown, ProtocolVersion::V5) => {
                Some(ReasonCode::DISCONNECT_WITH_WILL)
            }
            _ => None,
        }
    }

    /// The error counted for this ending, if it is one.
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            SessionEnd::ServerShuttingDown => None,
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
}

/// Why an upstream CONNECT could not be built from the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// A password but no user name toward a 3.1.1 broker, which cannot carry that
    /// ([MQTT-3.1.2-22]): the destination needs a `username`.
    PasswordWithoutUsername,
    /// The Will's topic (or its Response Topic) has no valid upstream form under the
    /// destination's `topic` template: the device gets CONNACK 0x90.
    WillTopicInvalid,
}

/// The upstream MQTT version for a device speaking `device`.
pub fn upstream_version(setting: MqttUpstreamVersion, device: ProtocolVersion) -> ProtocolVersion {
    match setting {
        MqttUpstreamVersion::V311 => ProtocolVersion::V311,
        MqttUpstreamVersion::V5 => ProtocolVersion::V5,
        MqttUpstreamVersion::SameAsDevice => device,
    }
}

/// The template variables of a device session (`topic` empty): `{client_id}` is the id
/// simgate `assigned` the device when it sent none, otherwise the device's own.
pub fn session_vars<'a>(
    device: &'a Connect,
    assigned: Option<&'a Bytes>,
    ip: IpAddr,
    shard: usize,
) -> TemplateVars<'a> {
    TemplateVars {
        client_id: assigned.unwrap_or(&device.client_id),
        topic: b"",
        ip,
        shard,
        conn: 0,
    }
}

/// The CONNECT simgate sends upstream for a device's CONNECT.
///
/// `vars` describe the device (`vars.topic` is ignored); `max_packet_size` is the largest packet
/// simgate accepts from the broker (advertised as v5 Maximum Packet Size, lowered to the
/// device's own when it set one). The upstream is never offered topic aliases.
pub fn build_upstream_connect(
    device: &Connect,
    mqtt: &MqttDestination,
    vars: &TemplateVars<'_>,
    version: ProtocolVersion,
    topics: &TopicMap,
    max_packet_size: u32,
) -> Result<Connect, BuildError> {
    let client_id = Bytes::from(mqtt.client_id.render(vars));
    let (username, password) = if mqtt.pass_through_credentials {
        (device.username.clone(), device.password.clone())
    } else {
        (
            mqtt.username.as_ref().map(|t| Bytes::from(t.render(vars))),
            mqtt.password.as_ref().map(|s| s.0.clone()),
        )
    };
    if version == ProtocolVersion::V311 && password.is_some() && username.is_none() {
        return Err(BuildError::PasswordWithoutUsername);
    }
    let both_v5 = version == ProtocolVersion::V5 && device.protocol_version == ProtocolVersion::V5;
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => {
            let mut p = if both_v5 {
                device.properties.clone()
            } else {
                Properties::default()
            };
            p.topic_alias_maximum = None;
            // No enhanced authentication upstream (simgate could not carry the AUTH exchange).
            p.authentication_method = None;
            p.authentication_data = None;
            let ours = NonZeroU32::new(max_packet_size);
            p.maximum_packet_size = match (p.maximum_packet_size, ours) {
                (Some(theirs), Some(ours)) => Some(theirs.min(ours)),
                (theirs, ours) => theirs.or(ours),
            };
            p
        }
    };
    let will = match device.will.as_ref() {
        None => None,
        Some(w) => Some(Will {
            qos: w.qos,
            retain: w.retain,
            properties: if both_v5 {
                let mut p = w.properties.clone();
                p.response_topic = p
                    .response_topic
                    .map(|t| topics.uplink_topic(&t))
                    .transpose()
                    .map_err(|_| BuildError::WillTopicInvalid)?;
                p
            } else {
                Properties::default()
            },
            topic: topics
                .uplink_topic(&w.topic)
                .map_err(|_| BuildError::WillTopicInvalid)?,
            payload: w.payload.clone(),
        }),
    };
    Ok(Connect {
        protocol_version: version,
        clean_start: device.clean_start,
        keep_alive: device.keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

/// Map a 3.1.1 CONNACK return code onto the v5 reason code that means the same.
pub fn v5_connack_code(code: ReasonCode) -> ReasonCode {
    match code.0 {
        0x00 => ReasonCode::SUCCESS,
        0x01 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        0x02 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        0x03 => ReasonCode::SERVER_UNAVAILABLE,
        0x04 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        _ => ReasonCode::NOT_AUTHORIZED,
    }
}

/// The CONNACK relayed to the device for the broker's `upstream` CONNACK (which arrived in
/// `upstream_version`).
///
/// The reason code is mapped across versions. To a v5 device the broker's properties pass
/// through (Server Keep Alive, Session Expiry, ...), with simgate's own limits in place of the
/// broker's where simgate stands between: Topic Alias Maximum ([`DEVICE_TOPIC_ALIAS_MAXIMUM`]),
/// and Maximum Packet Size / Receive Maximum lowered to the listener's.
///
/// Assigned Client Identifier is `assigned`, the id simgate gave a device that sent none
/// ([`assign_client_id`]), never the broker's: the device must learn the id its topics are
/// rewritten with. (simgate never sends the broker an empty id, so a broker has nothing to
/// assign; one that does anyway names only the upstream session.)
pub fn device_connack(
    upstream: ConnAck,
    upstream_version: ProtocolVersion,
    device_version: ProtocolVersion,
    limits: &MqttListenerLimits,
    assigned: Option<Bytes>,
) -> ConnAck {
    let v5_code = match upstream_version {
        ProtocolVersion::V5 => upstream.reason_code,
        ProtocolVersion::V311 => v5_connack_code(upstream.reason_code),
    };
    let accepted = v5_code == ReasonCode::SUCCESS;
    match device_version {
        ProtocolVersion::V311 => ConnAck {
            session_present: accepted && upstream.session_present,
            reason_code: v311_return_code(v5_code),
            properties: Properties::default(),
        },
        ProtocolVersion::V5 => {
            let mut p = upstream.properties;
            p.assigned_client_identifier = assigned.filter(|_| accepted);
            // The device sent no Authentication Method, so its CONNACK carries none
            // ([MQTT-4.12.0-6]) even if a broker sent one.
            p.authentication_method = None;
            p.authentication_data = None;
            if accepted {
                p.topic_alias_maximum = Some(DEVICE_TOPIC_ALIAS_MAXIMUM);
                let ours = NonZeroU32::new(limits.max_packet_size);
                p.maximum_packet_size = match (p.maximum_packet_size, ours) {
                    (Some(theirs), Some(ours)) => Some(theirs.min(ours)),
                    (theirs, ours) => theirs.or(ours),
                };
                if let Some(ours) = std::num::NonZeroU16::new(limits.receive_maximum) {
                    p.receive_maximum = Some(p.receive_maximum.map_or(ours, |t| t.min(ours)));
                }
            } else {
                p.topic_alias_maximum = None;
            }
            ConnAck {
                session_present: accepted && upstream.session_present,
                reason_code: v5_code,
                properties: p,
            }
        }
    }
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
    /// Packet ids of device QoS 1/2 PUBLISHes forwarded and not yet answered by the broker
    /// (PUBACK / PUBREC): what a draining session waits for.
    uplink_unacked: HashSet<u16>,
}

impl Bridge {
    /// A bridge between a device speaking `device` and a broker speaking `upstream`.
    pub fn new(device: ProtocolVersion, upstream: ProtocolVersion, topics: TopicMap) -> Bridge {
        Bridge {
            device,
            upstream,
            topics,
            device_aliases: HashMap::new(),
            pending_unsubscribes: HashMap::new(),
            uplink_unacked: HashSet::new(),
        }
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
                // A topic with no valid upstream form is the device's error (as a broker
                // refuses an invalid topic name): DISCONNECT 0x90, nothing forwarded.
                let invalid =
                    Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_NAME_INVALID));
                publish.topic = match self.topics.uplink_topic(&publish.topic) {
                    Ok(t) => t,
                    Err(_) => return invalid,
                };
                let mut props = self.props_up(std::mem::take(&mut publish.properties));
                props.response_topic =
                    match props.response_topic.map(|t| self.topics.uplink_topic(&t)) {
                        None => None,
                        Some(Ok(t)) => Some(t),
                        Some(Err(_)) => return invalid,
                    };
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
            Packet::PubRel(r) => Action::Forward(Packet::PubRel(self.response_up(r))),
            Packet::PubComp(r) => Action::Forward(Packet::PubComp(self.response_up(r))),
            Packet::Subscribe(s) => {
                let mut subscriptions = Vec::with_capacity(s.subscriptions.len());
                for sub in s.subscriptions {
                    let Ok(filter) = self.topics.uplink_filter(&sub.filter, self.upstream) else {
                        return Action::End(SessionEnd::DeviceProtocol(
                            ReasonCode::TOPIC_FILTER_INVALID,
                        ));
                    };
                    subscriptions.push(Subscription {
                        filter,
                        options: match self.upstream {
                            ProtocolVersion::V5 => sub.options,
                            ProtocolVersion::V311 => SubscriptionOptions::with_qos(sub.options.qos),
                        },
                    });
                }
                Action::Forward(Packet::Subscribe(Subscribe {
                    packet_id: s.packet_id,
                    properties: self.props_up(s.properties),
                    subscriptions,
                }))
            }
            Packet::Unsubscribe(u) => {
                if self.device == ProtocolVersion::V5 && self.upstream == ProtocolVersion::V311 {
                    self.pending_unsubscribes
                        .insert(u.packet_id.get(), u.filters.len());
                }
                let Ok(filters) = u
                    .filters
                    .iter()
                    .map(|f| self.topics.uplink_filter(f, self.upstream))
                    .collect::<Result<Vec<_>, _>>()
                else {
                    return Action::End(SessionEnd::DeviceProtocol(
                        ReasonCode::TOPIC_FILTER_INVALID,
                    ));
                };
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
        self.topics.downlink_topic(&topic).unwrap_or(topic)
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
                self.response_down(r, Packet::PubAck)
            }
            Packet::PubRec(r) => {
                self.uplink_unacked.remove(&r.packet_id.get());
                self.response_down(r, Packet::PubRec)
            }
            Packet::PubRel(r) => self.response_down(r, Packet::PubRel),
            Packet::PubComp(r) => self.response_down(r, Packet::PubComp),
            Packet::SubAck(s) => {
                let reason_codes = match self.device {
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
                Action::Forward(Packet::SubAck(SubAck {
                    packet_id: s.packet_id,
                    properties: self.props_down(s.properties),
                    reason_codes,
                }))
            }
            Packet::UnsubAck(u) => {
                let pending = self.pending_unsubscribes.remove(&u.packet_id.get());
                let reason_codes = match (self.device, self.upstream) {
                    (ProtocolVersion::V311, _) => Vec::new(),
                    (ProtocolVersion::V5, ProtocolVersion::V5) => u.reason_codes,
                    (ProtocolVersion::V5, ProtocolVersion::V311) => {
                        vec![ReasonCode::SUCCESS; pending.unwrap_or(1)]
                    }
                };
                Action::Forward(Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    properties: self.props_down(u.properties),
                    reason_codes,
                }))
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

/// Why no upstream session could be opened (before any CONNACK was relayed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenError {
    /// No connection could be made.
    Connect(UpstreamError),
    /// The TLS session failed after the handshake (e.g. a TLS 1.3 client-certificate rejection,
    /// which arrives with the first read).
    Tls,
    /// The connection closed or failed before a CONNACK arrived.
    Closed,
    /// No CONNACK within `connect_timeout`.
    Timeout,
    /// The broker answered with something other than a CONNACK, or with bytes that do not decode.
    Protocol,
    /// The broker started an enhanced-authentication exchange (AUTH before CONNACK).
    AuthUnsupported,
}

impl OpenError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            OpenError::Connect(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout) => {
                ErrorKind::UpstreamConnect
            }
            OpenError::Connect(UpstreamError::Tls(_)) | OpenError::Tls => ErrorKind::UpstreamTls,
            OpenError::Connect(UpstreamError::BackingOff { .. }) => ErrorKind::UpstreamBackoff,
            OpenError::Connect(UpstreamError::LocalResources(_)) => ErrorKind::LocalResources,
            OpenError::Closed => ErrorKind::UpstreamClosed,
            OpenError::Timeout => ErrorKind::UpstreamTimeout,
            OpenError::Protocol | OpenError::AuthUnsupported => ErrorKind::UpstreamProtocol,
        }
    }

    fn connack_code(&self) -> ReasonCode {
        match self {
            OpenError::AuthUnsupported => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            _ => ReasonCode::SERVER_UNAVAILABLE,
        }
    }
}

/// Keeps the open-sessions gauge right however the session task ends (it may be dropped).
struct OpenSession(Rc<ShardState>);

impl OpenSession {
    fn start(state: &Rc<ShardState>) -> OpenSession {
        {
            let mut m = state.metrics.borrow_mut();
            m.mqtt_sessions_started += 1;
            m.mqtt_sessions_open += 1;
        }
        OpenSession(state.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let mut m = self.0.metrics.borrow_mut();
        m.mqtt_sessions_open = m.mqtt_sessions_open.saturating_sub(1);
    }
}

/// Bridge one device session to its own upstream MQTTS connection, until either side ends it.
pub async fn serve(session: DeviceSession) {
    let DeviceSession {
        state,
        plan,
        listener,
        destination,
        mut stream,
        peer,
        connect,
        buf,
        identity: _,
    } = session;
    let device_version = connect.protocol_version;
    let dest = plan.destination(destination);
    let Some(mqtt) = dest.mqtt() else {
        // Config validation gives every mqtts destination MQTT settings.
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    };
    let Some(limits) = plan.listener(listener).mqtt().cloned() else {
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    };
    let up_version = upstream_version(mqtt.version, device_version);
    let assigned = match assign_client_id(&connect, &mqtt.topic, state.id.0, peer) {
        Ok(assigned) => assigned,
        Err(code) => {
            send_connack(&mut stream, device_version, code).await;
            return;
        }
    };
    let vars = session_vars(&connect, assigned.as_ref(), peer.ip(), state.id.0);
    let topics = TopicMap::new(&mqtt.topic, &vars);
    let mut connect_bytes = BytesMut::new();
    let built = build_upstream_connect(
        &connect,
        mqtt,
        &vars,
        up_version,
        &topics,
        limits.max_packet_size,
    );
    if let Err(BuildError::WillTopicInvalid) = built {
        state
            .metrics
            .borrow_mut()
            .error(Protocol::Mqtt, ErrorKind::DeviceBadRequest);
        send_connack(&mut stream, device_version, ReasonCode::TOPIC_NAME_INVALID).await;
        return;
    }
    let encoded = built.map(|c| {
        mqtt::encode(
            &Packet::Connect(Box::new(c)),
            up_version,
            &mut connect_bytes,
        )
    });
    if !matches!(encoded, Ok(Ok(()))) {
        state
            .metrics
            .borrow_mut()
            .error(Protocol::Mqtt, ErrorKind::UpstreamProtocol);
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    }
    let decode_limits = DecodeLimits {
        max_packet_size: limits.max_packet_size,
    };
    // The pools' generation of the session's plan. `mqtt_bridge` routes and calls `serve`
    // without an await in between, so a differing plan means a reload raced in: then the
    // connection is made for the session's plan and never pooled.
    let (current_plan, current_generation) = state.current();
    let generation = if Arc::ptr_eq(&current_plan, &plan) {
        current_generation
    } else {
        u64::MAX
    };
    drop(current_plan);
    let opened = open_upstream(
        &state,
        generation,
        dest,
        dest.pool.connect_timeout,
        &connect_bytes,
        up_version,
        &decode_limits,
    )
    .await;
    let (mut upstream, upstream_connack) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            state
                .metrics
                .borrow_mut()
                .error(Protocol::Mqtt, e.error_kind());
            send_connack(&mut stream, device_version, e.connack_code()).await;
            return;
        }
    };
    let server_keep_alive = upstream_connack.properties.server_keep_alive;
    let connack = device_connack(
        upstream_connack,
        up_version,
        device_version,
        &limits,
        assigned,
    );
    let accepted = connack.reason_code == ReasonCode::SUCCESS;
    let mut out = BytesMut::new();
    if mqtt::encode(&Packet::ConnAck(connack), device_version, &mut out).is_err() {
        state
            .metrics
            .borrow_mut()
            .error(Protocol::Mqtt, ErrorKind::UpstreamProtocol);
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    }
    if !accepted {
        state.metrics.borrow_mut().mqtt_connects_refused += 1;
        let _ = send_device(&state, &mut stream, out.freeze()).await;
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
        return;
    }
    let _open = OpenSession::start(&state);
    if send_device(&state, &mut stream, out.freeze())
        .await
        .is_err()
    {
        // The device left before its CONNACK: drop the link abruptly (will published).
        return;
    }
    let keep_alive = server_keep_alive.unwrap_or(connect.keep_alive);
    let mut pump = Pump {
        state: &state,
        device: &mut stream,
        device_buf: buf,
        upstream: &mut upstream,
        bridge: Bridge::new(device_version, up_version, topics),
        limits: decode_limits,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
    };
    let end = pump.run().await;
    if let Some(kind) = end.error_kind() {
        state.metrics.borrow_mut().error(Protocol::Mqtt, kind);
    }
    if device_version == ProtocolVersion::V5 {
        if let Some(reason_code) = end.device_reason() {
            let bye = encode_device_disconnect(reason_code);
            let _ = reactor::timeout_at(
                goodbye_deadline(&state, GOODBYE_TIMEOUT),
                send_device(&state, &mut stream, bye),
            )
            .await;
        }
    }
    if end.upstream_clean() {
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
    } else if end == SessionEnd::ServerShuttingDown {
        // The gateway leaves, not the device: the broker keeps the will (v5: it is told so with
        // 0x04; 3.1.1: no DISCONNECT at all), and the TLS connection is closed properly.
        if let Some(code) = end.upstream_goodbye(up_version) {
            let mut bye = BytesMut::new();
            let packet = Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: Properties::default(),
            });
            if mqtt::encode(&packet, up_version, &mut bye).is_ok() {
                let _ = reactor::timeout_at(
                    goodbye_deadline(&state, GOODBYE_TIMEOUT),
                    upstream.stream.write_all(&[&bye]),
                )
                .await;
            }
        }
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
    }
    // Otherwise `upstream` drops here: the TCP connection closes without DISCONNECT (nor
    // close_notify), and the broker publishes the device's will.
}

async fn send_device(
    state: &ShardState,
    stream: &mut TcpStream,
    bytes: Bytes,
) -> std::io::Result<()> {
    let n = bytes.len() as u64;
    stream.send_all(bytes).await?;
    state.metrics.borrow_mut().device_bytes_out += n;
    Ok(())
}

/// Take a connection (warm if possible), send CONNECT and wait for the CONNACK. A pooled
/// connection that turns out dead before any reply is replaced once by a fresh one.
async fn open_upstream(
    state: &Rc<ShardState>,
    generation: u64,
    destination: &DestinationPlan,
    connect_timeout: Duration,
    connect_bytes: &[u8],
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<(UpstreamConn, ConnAck), OpenError> {
    let mut conn = state
        .upstreams
        .checkout(generation, destination)
        .await
        .map_err(OpenError::Connect)?;
    loop {
        let deadline = Instant::now() + connect_timeout;
        match exchange_connect(&mut conn, connect_bytes, deadline, version, limits).await {
            Ok(connack) => return Ok((conn, connack)),
            Err(OpenError::Closed) if conn.reused => {
                state.metrics.borrow_mut().upstream_retries += 1;
                conn = state
                    .upstreams
                    .connect_new(generation, destination)
                    .await
                    .map_err(OpenError::Connect)?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn exchange_connect(
    conn: &mut UpstreamConn,
    connect_bytes: &[u8],
    deadline: Instant,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<ConnAck, OpenError> {
    let stream = &mut conn.stream;
    match reactor::timeout_at(deadline, stream.write_all(&[connect_bytes])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(open_error_of(&e)),
        Err(_) => return Err(OpenError::Timeout),
    }
    loop {
        match mqtt::decode_packet(stream.plaintext(), version, Sender::Server, limits) {
            Ok(Decoded::Complete(Packet::ConnAck(connack))) => return Ok(connack),
            Ok(Decoded::Complete(Packet::Auth(_))) => return Err(OpenError::AuthUnsupported),
            Ok(Decoded::Complete(_)) | Err(_) => return Err(OpenError::Protocol),
            Ok(Decoded::Incomplete { .. }) => {}
        }
        match reactor::timeout_at(deadline, stream.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(OpenError::Closed),
            Ok(Err(e)) => return Err(open_error_of(&e)),
            Err(_) => return Err(OpenError::Timeout),
        }
    }
}

fn open_error_of(e: &TlsIoError) -> OpenError {
    match e {
        TlsIoError::Io { .. }
        | TlsIoError::Eof
        | TlsIoError::Tls(TlsError::ClosedWithoutCloseNotify | TlsError::UnexpectedEof) => {
            OpenError::Closed
        }
        TlsIoError::Tls(_) => OpenError::Tls,
    }
}

/// How one read from the device ended.
enum DeviceRead {
    Bytes(usize),
    Closed,
    KeepAliveExpired,
}

async fn read_device(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> DeviceRead {
    let result = match deadline {
        Some(at) => match reactor::timeout_at(at, stream.recv_append(buf)).await {
            Ok(r) => r,
            Err(_) => return DeviceRead::KeepAliveExpired,
        },
        None => stream.recv_append(buf).await,
    };
    match result {
        Ok(n) if n > 0 => DeviceRead::Bytes(n),
        _ => DeviceRead::Closed,
    }
}

/// The running session: both sockets, the device's receive buffer and the bridge.
struct Pump<'a> {
    state: &'a ShardState,
    device: &'a mut TcpStream,
    device_buf: BytesMut,
    upstream: &'a mut UpstreamConn,
    bridge: Bridge,
    limits: DecodeLimits,
    /// 1.5× the keep-alive in force, `None` when keep-alive is off.
    keep_alive: Option<Duration>,
}

impl Pump<'_> {
    async fn run(&mut self) -> SessionEnd {
        let mut deadline = self.keep_alive.map(|k| Instant::now() + k);
        let mut out = BytesMut::new();
        loop {
            // Draining: the device is no longer read (what it sent and we did not forward was
            // not acknowledged; it sends it again elsewhere).
            let draining = self.state.draining();
            // Bytes already buffered first: pipelined after CONNECT, or after the CONNACK.
            if !draining {
                if let Some(end) = self.drain_device(&mut out).await {
                    return end;
                }
            }
            if let Some(end) = self.drain_upstream(&mut out).await {
                return end;
            }
            if draining {
                // Relay the broker's answers to what is already upstream, then leave.
                let until = drain_ack_deadline(self.state);
                if self.bridge.uplink_unacknowledged() == 0 || Instant::now() >= until {
                    return SessionEnd::ServerShuttingDown;
                }
                match select2(self.upstream.stream.fill(), reactor::sleep_until(until)).await {
                    Either::Left(Ok(true)) | Either::Right(()) => continue,
                    Either::Left(Ok(false) | Err(_)) => return SessionEnd::UpstreamClosed,
                }
            }
            if self.device_buf.is_empty() {
                // Release the buffer's memory between bursts: an idle session holds none.
                self.device_buf = BytesMut::new();
            }
            let device_read = read_device(self.device, &mut self.device_buf, deadline);
            let device_or_drain = select2(device_read, self.state.drain.wait());
            match select2(device_or_drain, self.upstream.stream.fill()).await {
                Either::Left(Either::Left(DeviceRead::Bytes(n))) => {
                    self.state.metrics.borrow_mut().device_bytes_in += n as u64;
                    deadline = self.keep_alive.map(|k| Instant::now() + k);
                }
                Either::Left(Either::Left(DeviceRead::Closed)) => return SessionEnd::DeviceClosed,
                Either::Left(Either::Left(DeviceRead::KeepAliveExpired)) => {
                    return SessionEnd::DeviceKeepAliveTimeout
                }
                // The shard started draining: handled at the top of the loop.
                Either::Left(Either::Right(())) => {}
                Either::Right(Ok(true)) => {}
                Either::Right(Ok(false) | Err(_)) => return SessionEnd::UpstreamClosed,
            }
        }
    }

    /// Decode every complete device packet, forward the translations upstream in one write.
    async fn drain_device(&mut self, out: &mut BytesMut) -> Option<SessionEnd> {
        let version = self.bridge.device;
        let mut end = None;
        let mut publishes = 0u64;
        while end.is_none() {
            let packet = match mqtt::decode_packet(
                &mut self.device_buf,
                version,
                Sender::Client,
                &self.limits,
            ) {
                Ok(Decoded::Complete(p)) => p,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    end = Some(SessionEnd::DeviceProtocol(device_error_code(e)));
                    break;
                }
            };
            let is_publish = matches!(packet, Packet::Publish(_));
            let (packet, ending) = match self.bridge.uplink(packet) {
                Action::Forward(p) => (Some(p), None),
                Action::ForwardAndEnd(p, e) => (Some(p), Some(e)),
                Action::End(e) => (None, Some(e)),
            };
            if let Some(p) = packet {
                if mqtt::encode(&p, self.bridge.upstream, out).is_err() {
                    // Not representable upstream (e.g. too long once the template is applied).
                    end = Some(SessionEnd::DeviceProtocol(
                        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    ));
                    break;
                }
                publishes += u64::from(is_publish);
            }
            end = ending;
        }
        // A malformed or refused packet ends the session: what came before it is still sent (the
        // device sent it first), unless the session ends abruptly on the upstream side anyway.
        if !out.is_empty() {
            let sent = self.upstream.stream.write_all(&[out]).await;
            out.clear();
            if sent.is_err() {
                return Some(end.unwrap_or(SessionEnd::UpstreamClosed));
            }
            self.state.metrics.borrow_mut().mqtt_publishes_uplink += publishes;
        }
        end
    }

    /// Decode every complete broker packet, forward the translations to the device in one send.
    async fn drain_upstream(&mut self, out: &mut BytesMut) -> Option<SessionEnd> {
        let version = self.bridge.upstream;
        let mut end = None;
        let mut publishes = 0u64;
        while end.is_none() {
            let decoded = mqtt::decode_packet(
                self.upstream.stream.plaintext(),
                version,
                Sender::Server,
                &self.limits,
            );
            let packet = match decoded {
                Ok(Decoded::Complete(p)) => p,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(_) => {
                    end = Some(SessionEnd::UpstreamProtocol);
                    break;
                }
            };
            let is_publish = matches!(packet, Packet::Publish(_));
            let (packet, ending) = match self.bridge.downlink(packet) {
                Action::Forward(p) => (Some(p), None),
                Action::ForwardAndEnd(p, e) => (Some(p), Some(e)),
                Action::End(e) => (None, Some(e)),
            };
            if let Some(p) = packet {
                if mqtt::encode(&p, self.bridge.device, out).is_err() {
                    end = Some(SessionEnd::UpstreamProtocol);
                    break;
                }
                publishes += u64::from(is_publish);
            }
            end = ending;
        }
        if !out.is_empty() {
            let bytes = out.split().freeze();
            if send_device(self.state, self.device, bytes).await.is_err() {
                return Some(end.unwrap_or(SessionEnd::DeviceClosed));
            }
            self.state.metrics.borrow_mut().mqtt_publishes_downlink += publishes;
        }
        end
    }
}

/// A v5 DISCONNECT carrying `reason_code`, or 0x80 "Unspecified error" when that code is not
/// one DISCONNECT may carry (e.g. a PUBACK-only code relayed from the broker).
fn encode_device_disconnect(reason_code: ReasonCode) -> Bytes {
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

/// The DISCONNECT reason code for a device packet that failed to decode.
fn device_error_code(e: MqttError) -> ReasonCode {
    e.reason_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Placeholder;
    use crate::policy::{MqttMode, Secret};
    use crate::proto::mqtt::QoS;
    use std::num::NonZeroU16;

    const ALL: &[Placeholder] = &[Placeholder::ClientId, Placeholder::Topic, Placeholder::Ip];

    fn template(text: &str) -> crate::policy::Template {
        crate::policy::Template::parse(text, ALL).expect("valid template")
    }

    fn vars(client_id: &[u8]) -> TemplateVars<'_> {
        TemplateVars {
            client_id,
            topic: b"",
            ip: "10.0.0.17".parse().expect("ip"),
            shard: 0,
            conn: 0,
        }
    }

    fn destination(topic: &str) -> MqttDestination {
        MqttDestination {
            mode: MqttMode::Session,
            version: MqttUpstreamVersion::SameAsDevice,
            client_id: template("gw-{client_id}"),
            username: Some(template("user-{ip}")),
            password: Some(Secret(Bytes::from_static(b"s3cret"))),
            pass_through_credentials: false,
            topic: template(topic).into(),
            keep_alive: Duration::from_secs(60),
            connections_per_shard: 1,
            max_inflight: 256,
            linger: Duration::ZERO,
            while_down: crate::policy::WhileDown::Accept,
        }
    }

    fn device_connect(version: ProtocolVersion) -> Connect {
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            properties.topic_alias_maximum = Some(10);
            properties.session_expiry_interval = Some(300);
        }
        Connect {
            protocol_version: version,
            clean_start: true,
            keep_alive: 30,
            properties,
            client_id: Bytes::from_static(b"dev1"),
            will: Some(Will {
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
                topic: Bytes::from_static(b"status"),
                payload: Bytes::from_static(b"gone"),
            }),
            username: Some(Bytes::from_static(b"devuser")),
            password: Some(Bytes::from_static(b"devpass")),
        }
    }

    fn limits() -> MqttListenerLimits {
        MqttListenerLimits {
            max_packet_size: 1000,
            connect_timeout: Duration::from_secs(10),
            receive_maximum: 64,
        }
    }

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
        assert!(matches!(
            b.uplink(subscribe(b"cmd/#/x")),
            Action::End(SessionEnd::DeviceProtocol(ReasonCode::TOPIC_FILTER_INVALID))
        ));
    }

    #[test]
    fn upstream_connect_uses_templates_secret_and_rewritten_will() {
        let mqtt = destination("d/{client_id}/{topic}");
        let device = device_connect(ProtocolVersion::V5);
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&mqtt.topic, &v);
        let c = build_upstream_connect(&device, &mqtt, &v, ProtocolVersion::V5, &topics, 1000)
            .expect("builds");
        assert_eq!(&c.client_id[..], b"gw-dev1");
        assert_eq!(c.username.as_deref(), Some(&b"user-10.0.0.17"[..]));
        assert_eq!(c.password.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(c.keep_alive, 30);
        assert!(c.clean_start);
        let will = c.will.expect("will kept");
        assert_eq!(&will.topic[..], b"d/dev1/status");
        assert_eq!(will.qos, QoS::AtLeastOnce);
        // v5 properties pass through, except that the broker is offered no aliases.
        assert_eq!(c.properties.session_expiry_interval, Some(300));
        assert_eq!(c.properties.topic_alias_maximum, None);
        assert_eq!(
            c.properties.maximum_packet_size.map(|m| m.get()),
            Some(1000)
        );
    }

    #[test]
    fn upstream_connect_passes_device_credentials_and_strips_for_v311() {
        let mut mqtt = destination("{topic}");
        mqtt.pass_through_credentials = true;
        let device = device_connect(ProtocolVersion::V5);
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&mqtt.topic, &v);
        let c = build_upstream_connect(&device, &mqtt, &v, ProtocolVersion::V311, &topics, 1000)
            .expect("builds");
        assert_eq!(c.protocol_version, ProtocolVersion::V311);
        assert_eq!(c.username.as_deref(), Some(&b"devuser"[..]));
        assert_eq!(c.password.as_deref(), Some(&b"devpass"[..]));
        assert!(c.properties.is_empty());
        let mut out = BytesMut::new();
        mqtt::encode(
            &Packet::Connect(Box::new(c)),
            ProtocolVersion::V311,
            &mut out,
        )
        .expect("representable in 3.1.1");
    }

    #[test]
    fn upstream_connect_refuses_password_without_username_for_v311() {
        let mut mqtt = destination("{topic}");
        mqtt.username = None;
        let device = device_connect(ProtocolVersion::V311);
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&mqtt.topic, &v);
        assert_eq!(
            build_upstream_connect(&device, &mqtt, &v, ProtocolVersion::V311, &topics, 1000),
            Err(BuildError::PasswordWithoutUsername)
        );
    }

    #[test]
    fn connack_codes_map_across_versions() {
        let refused_v5 = ConnAck {
            session_present: false,
            reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            properties: Properties::default(),
        };
        let to_v311 = device_connack(
            refused_v5,
            ProtocolVersion::V5,
            ProtocolVersion::V311,
            &limits(),
            None,
        );
        assert_eq!(to_v311.reason_code, ReasonCode(0x04));
        let refused_v311 = ConnAck {
            session_present: false,
            reason_code: ReasonCode(0x05),
            properties: Properties::default(),
        };
        let to_v5 = device_connack(
            refused_v311,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
            &limits(),
            Some(Bytes::from_static(b"not-on-refusal")),
        );
        assert_eq!(to_v5.reason_code, ReasonCode::NOT_AUTHORIZED);
        assert_eq!(to_v5.properties.topic_alias_maximum, None);
        assert_eq!(to_v5.properties.assigned_client_identifier, None);
    }

    #[test]
    fn a_device_without_client_id_gets_an_assigned_one_in_templates_and_connack() {
        let mqtt = destination("devices/{client_id}/{topic}");
        let peer: std::net::SocketAddr = "10.0.0.17:40000".parse().expect("addr");
        let mut device = device_connect(ProtocolVersion::V5);
        device.client_id = Bytes::new();
        let mut upstream_ids = Vec::new();
        for _ in 0..2 {
            let assigned = assign_client_id(&device, &mqtt.topic, 1, peer)
                .expect("accepted")
                .expect("an id is assigned");
            assert!(!assigned.is_empty());
            let v = session_vars(&device, Some(&assigned), peer.ip(), 1);
            assert_eq!(v.client_id, &assigned[..]);
            let topics = TopicMap::new(&mqtt.topic, &v);
            let c = build_upstream_connect(&device, &mqtt, &v, ProtocolVersion::V5, &topics, 1000)
                .expect("builds");
            let id = std::str::from_utf8(&assigned).expect("ascii");
            assert_eq!(&c.client_id[..], format!("gw-{id}").as_bytes());
            assert_eq!(
                &topics
                    .uplink_topic(&Bytes::from_static(b"t"))
                    .expect("valid")[..],
                format!("devices/{id}/t").as_bytes()
            );
            let will = c.will.expect("will kept");
            assert_eq!(&will.topic[..], format!("devices/{id}/status").as_bytes());
            // The device is told the id its topics use, not one the broker might name.
            let accepted = ConnAck {
                session_present: false,
                reason_code: ReasonCode::SUCCESS,
                properties: Properties {
                    assigned_client_identifier: Some(Bytes::from_static(b"broker-1")),
                    ..Properties::default()
                },
            };
            let connack = device_connack(
                accepted,
                ProtocolVersion::V5,
                ProtocolVersion::V5,
                &limits(),
                Some(assigned.clone()),
            );
            assert_eq!(
                connack.properties.assigned_client_identifier,
                Some(assigned)
            );
            upstream_ids.push(c.client_id);
        }
        assert_ne!(
            upstream_ids[0], upstream_ids[1],
            "two anonymous devices, one id"
        );

        // A device with an id keeps it and is told no other.
        let named = device_connect(ProtocolVersion::V5);
        assert_eq!(assign_client_id(&named, &mqtt.topic, 1, peer), Ok(None));
        assert_eq!(session_vars(&named, None, peer.ip(), 1).client_id, b"dev1");

        // 3.1.1 asking for a persistent session without an id: identifier rejected.
        let mut v311 = device_connect(ProtocolVersion::V311);
        v311.client_id = Bytes::new();
        v311.clean_start = false;
        assert_eq!(
            assign_client_id(&v311, &mqtt.topic, 1, peer),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        );

        // Ids that would escape the device's topic space are refused: wildcards always, `/`
        // when the topic template contains the id.
        for bad in [&b"+"[..], b"a#", b"dev/1"] {
            let mut d = device_connect(ProtocolVersion::V5);
            d.client_id = Bytes::copy_from_slice(bad);
            assert_eq!(
                assign_client_id(&d, &mqtt.topic, 1, peer),
                Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
                "{bad:?}"
            );
        }
        let no_id_in_topics = destination("plant/{topic}");
        let mut slashed = device_connect(ProtocolVersion::V5);
        slashed.client_id = Bytes::from_static(b"line1/dev7");
        assert_eq!(
            assign_client_id(&slashed, &no_id_in_topics.topic, 1, peer),
            Ok(None)
        );
    }

    #[test]
    fn accepted_connack_passes_broker_properties_with_our_limits() {
        let properties = Properties {
            assigned_client_identifier: Some(Bytes::from_static(b"auto-1")),
            server_keep_alive: Some(20),
            topic_alias_maximum: Some(100),
            receive_maximum: NonZeroU16::new(1000),
            ..Properties::default()
        };
        let accepted = ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties,
        };
        let c = device_connack(
            accepted,
            ProtocolVersion::V5,
            ProtocolVersion::V5,
            &limits(),
            None,
        );
        assert!(c.session_present);
        // The device sent its own id: a broker-assigned one would contradict its templates.
        assert_eq!(c.properties.assigned_client_identifier, None);
        assert_eq!(c.properties.server_keep_alive, Some(20));
        assert_eq!(
            c.properties.topic_alias_maximum,
            Some(DEVICE_TOPIC_ALIAS_MAXIMUM)
        );
        assert_eq!(c.properties.receive_maximum.map(|r| r.get()), Some(64));
        assert_eq!(
            c.properties.maximum_packet_size.map(|m| m.get()),
            Some(1000)
        );
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
    fn no_authentication_method_crosses_the_gateway() {
        let mqtt = destination("d/{client_id}/{topic}");
        let mut device = device_connect(ProtocolVersion::V5);
        device.properties.authentication_method = Some(Bytes::from_static(b"SCRAM-SHA-1"));
        device.properties.authentication_data = Some(Bytes::from_static(b"\x01"));
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&mqtt.topic, &v);
        let c = build_upstream_connect(&device, &mqtt, &v, ProtocolVersion::V5, &topics, 1000)
            .expect("builds");
        assert_eq!(c.properties.authentication_method, None);
        assert_eq!(c.properties.authentication_data, None);
        let upstream = ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties {
                authentication_method: Some(Bytes::from_static(b"SCRAM-SHA-1")),
                ..Properties::default()
            },
        };
        let to_device = device_connack(
            upstream,
            ProtocolVersion::V5,
            ProtocolVersion::V5,
            &limits(),
            None,
        );
        assert_eq!(to_device.properties.authentication_method, None);
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
