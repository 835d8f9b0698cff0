//! The MQTT control packets as plain data, shared by 3.1.1 and 5.0.
//!
//! One struct per packet shape; fields a 3.1.1 packet cannot carry (properties, reason codes,
//! subscription options beyond QoS) hold their defaults when decoded from 3.1.1 and make the encoder
//! refuse ([`super::EncodeError::NotRepresentable`]) when set for 3.1.1. String fields are
//! `bytes::Bytes` holding UTF-8 that the decoder has validated; the encoder does not re-validate
//! UTF-8 or topic syntax (it checks lengths, flags, packet identifiers, reason codes and properties).

use core::num::NonZeroU16;

use bytes::Bytes;

use super::error::ReasonCode;
use super::properties::Properties;

/// The protocol level negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    #[must_use]
    pub fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }
}

/// Who sent the bytes being decoded. Most rules are the same both ways; the ones that are not
/// (a Subscription Identifier in PUBLISH is for the server to send only, [MQTT-3.3.4-6]) are
/// checked against this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A client sent it (what the gateway reads from a device; what a broker reads from us).
    Client,
    /// A server sent it (what the gateway reads from an upstream broker).
    Server,
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS 0.
    AtMostOnce = 0,
    /// QoS 1.
    AtLeastOnce = 1,
    /// QoS 2.
    ExactlyOnce = 2,
}

impl QoS {
    /// The two-bit wire value, or `None` for the invalid value 3 (or anything larger).
    #[must_use]
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet type: the high nibble of the first fixed-header byte (§2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1: client request to connect.
    Connect = 1,
    /// 2: connect acknowledgement.
    ConnAck = 2,
    /// 3: publish message.
    Publish = 3,
    /// 4: publish acknowledgement (QoS 1).
    PubAck = 4,
    /// 5: publish received (QoS 2, part 1).
    PubRec = 5,
    /// 6: publish release (QoS 2, part 2).
    PubRel = 6,
    /// 7: publish complete (QoS 2, part 3).
    PubComp = 7,
    /// 8: subscribe request.
    Subscribe = 8,
    /// 9: subscribe acknowledgement.
    SubAck = 9,
    /// 10: unsubscribe request.
    Unsubscribe = 10,
    /// 11: unsubscribe acknowledgement.
    UnsubAck = 11,
    /// 12: ping request.
    PingReq = 12,
    /// 13: ping response.
    PingResp = 13,
    /// 14: disconnect notification.
    Disconnect = 14,
    /// 15: authentication exchange (5.0 only).
    Auth = 15,
}

impl PacketType {
    /// The packet type from the high nibble of a fixed-header first byte; `None` for the forbidden 0.
    #[must_use]
    pub fn from_first_byte(byte: u8) -> Option<Self> {
        Some(match byte >> 4 {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }
}

/// A decoded (or to-be-encoded) MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: it is large and rare).
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubResponse),
    /// PUBREC.
    PubRec(PubResponse),
    /// PUBREL.
    PubRel(PubResponse),
    /// PUBCOMP.
    PubComp(PubResponse),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Auth),
}

impl Packet {
    /// This packet's control packet type.
    #[must_use]
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level the client speaks; the encoder writes CONNECT in this version.
    pub protocol_version: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds (0 = off).
    pub keep_alive: u16,
    /// CONNECT properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// Client Identifier (UTF-8, may be empty).
    pub client_id: Bytes,
    /// The Will Message, if the Will Flag is set.
    pub will: Option<Will>,
    /// User Name (UTF-8).
    pub username: Option<Bytes>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// The Will Message of a CONNECT (§3.1.2.5, §3.1.3.2-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// Will Topic (a topic name: UTF-8, no wildcards).
    pub topic: Bytes,
    /// Will Payload (binary data).
    pub payload: Bytes,
}

/// CONNACK (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// 5.0 reason code, or the 3.1.1 return code (0x00..=0x05).
    pub reason_code: ReasonCode,
    /// CONNACK properties (5.0; empty in 3.1.1).
    pub properties: Properties,
}

/// PUBLISH (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery (never set with QoS 0).
    pub dup: bool,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name (UTF-8, no wildcards; in 5.0 empty when a Topic Alias stands for it).
    pub topic: Bytes,
    /// Packet Identifier: present exactly when QoS > 0 ([MQTT-2.2.1-2]).
    pub packet_id: Option<NonZeroU16>,
    /// PUBLISH properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// Application payload (whatever follows the variable header).
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape (§3.4-§3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// The Packet Identifier of the PUBLISH (or PUBREL) being answered.
    pub packet_id: NonZeroU16,
    /// Reason code (5.0; always Success in 3.1.1).
    pub reason_code: ReasonCode,
    /// Properties (5.0: Reason String and User Properties only; empty in 3.1.1).
    pub properties: Properties,
}

impl PubResponse {
    /// A success response with no properties: the only form 3.1.1 has.
    #[must_use]
    pub fn success(packet_id: NonZeroU16) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// Retain Handling subscription option (5.0 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: do not send retained messages at subscribe time.
    DoNotSend = 2,
}

/// Subscription options (5.0 §3.8.3.1; 3.1.1 has only the maximum QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a maximum QoS set: the only form 3.1.1 has.
    #[must_use]
    pub fn with_qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic Filter (UTF-8, wildcards allowed).
    pub filter: Bytes,
    /// Subscription options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: NonZeroU16,
    /// SUBSCRIBE properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// At least one subscription ([MQTT-3.8.3-2]).
    pub subscriptions: Vec<Subscription>,
}

/// SUBACK (§3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub packet_id: NonZeroU16,
    /// SUBACK properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// One reason / return code per subscription, in order.
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: NonZeroU16,
    /// UNSUBSCRIBE properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// At least one topic filter ([MQTT-3.10.3-2]).
    pub filters: Vec<Bytes>,
}

/// UNSUBACK (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: NonZeroU16,
    /// UNSUBACK properties (5.0; empty in 3.1.1).
    pub properties: Properties,
    /// One reason code per topic filter (5.0; empty in 3.1.1, which has no payload).
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (§3.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0; Normal disconnection in 3.1.1).
    pub reason_code: ReasonCode,
    /// DISCONNECT properties (5.0; empty in 3.1.1).
    pub properties: Properties,
}

/// AUTH (5.0 §3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Reason code: Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// AUTH properties.
    pub properties: Properties,
}
