//! Typed codec errors and the MQTT reason codes they map to.
//!
//! [`MqttError`] is what the decoder returns for bytes a peer sent; every variant maps to the reason
//! code the gateway answers with ([`MqttError::reason_code`]) and, for the errors a 3.1.1 CONNECT can
//! carry, to a CONNACK return code ([`MqttError::connack_return_code_v311`]). [`EncodeError`] is what
//! the encoder returns for a packet that cannot be represented on the wire. This module does not
//! decide what to do with an error (close, CONNACK, DISCONNECT): the connection flow does.

use core::fmt;

/// An MQTT 5.0 reason code (§2.4), also used to carry 3.1.1 CONNACK and SUBACK return codes (whose
/// byte values are the same numbers: 3.1.1 SUBACK `0x80` "Failure" is 5.0 "Unspecified error").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// 0x00 Success / Normal disconnection / Granted QoS 0.
    pub const SUCCESS: Self = Self(0x00);
    /// 0x01 Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: Self = Self(0x01);
    /// 0x02 Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: Self = Self(0x02);
    /// 0x04 Disconnect with Will Message.
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    /// 0x10 No matching subscribers.
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    /// 0x11 No subscription existed.
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    /// 0x18 Continue authentication.
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    /// 0x19 Re-authenticate.
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    /// 0x80 Unspecified error (3.1.1 SUBACK: Failure).
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    /// 0x81 Malformed Packet.
    pub const MALFORMED_PACKET: Self = Self(0x81);
    /// 0x82 Protocol Error.
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    /// 0x83 Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    /// 0x84 Unsupported Protocol Version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    /// 0x85 Client Identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    /// 0x86 Bad User Name or Password.
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    /// 0x87 Not authorized.
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    /// 0x88 Server unavailable.
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    /// 0x89 Server busy.
    pub const SERVER_BUSY: Self = Self(0x89);
    /// 0x8B Server shutting down.
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    /// 0x8C Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    /// 0x8D Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    /// 0x8E Session taken over: another connection with the same client id was accepted.
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    /// 0x98 Administrative action: the operator's configuration ended the session.
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    /// 0x8F Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    /// 0x90 Topic Name invalid.
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    /// 0x91 Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    /// 0x92 Packet Identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    /// 0x95 Packet too large.
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    /// 0x97 Quota exceeded.
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    /// 0x99 Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

/// Why received bytes are not an acceptable MQTT packet.
///
/// Incomplete input is never an error (see [`super::Decoded::Incomplete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MqttError {
    /// A Variable Byte Integer is longer than four bytes or not minimally encoded ([MQTT-1.5.5-1]).
    MalformedVarint,
    /// The declared packet size exceeds [`super::DecodeLimits::max_packet_size`].
    PacketTooLarge,
    /// The control packet type is 0 (forbidden) or 15 (AUTH) in MQTT 3.1.1.
    InvalidPacketType,
    /// Reserved fixed-header flag bits are not set to the value the spec lists ([MQTT-2.1.3-1],
    /// 3.1.1 [MQTT-2.2.2-1]).
    ReservedFlags,
    /// A QoS field holds 3 ([MQTT-3.3.1-4], will QoS [MQTT-3.1.2-12]).
    InvalidQos,
    /// DUP is set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    DupWithQos0,
    /// A Packet Identifier is zero ([MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]).
    ZeroPacketId,
    /// A string is not well-formed UTF-8 ([MQTT-1.5.4-1], 3.1.1 [MQTT-1.5.3-1]).
    InvalidUtf8,
    /// A string contains U+0000 ([MQTT-1.5.4-2], 3.1.1 [MQTT-1.5.3-2]).
    NullCharInString,
    /// A field runs past the end of the packet (the remaining length is too short for the content).
    Truncated,
    /// Bytes are left over after the last field (the remaining length is too long for the content).
    TrailingBytes,
    /// A Topic Name contains `+` or `#` ([MQTT-3.3.2-2]) or is empty where that is not allowed
    /// ([MQTT-4.7.3-1]; in 5.0 an empty name needs a Topic Alias).
    InvalidTopicName,
    /// A Topic Filter is empty, or `#` is not last and alone in its level, or `+` is not alone in its
    /// level ([MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1]), or a shared subscription
    /// (`$share/{name}/{filter}`) is malformed ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    InvalidTopicFilter,
    /// SUBSCRIBE or UNSUBSCRIBE carries no topic filter ([MQTT-3.8.3-2], [MQTT-3.10.3-2]).
    NoTopicFilters,
    /// Reserved bits of a SUBSCRIBE option byte are set, or Retain Handling is 3
    /// ([MQTT-3.8.3-5], 3.1.1 [MQTT-3-8.3-4]).
    InvalidSubscriptionOptions,
    /// No Local is set on a shared subscription ([MQTT-3.8.3-4]).
    NoLocalOnSharedSubscription,
    /// The CONNECT protocol name is not `MQTT` ([MQTT-3.1.2-1]).
    InvalidProtocolName,
    /// The CONNECT protocol level is neither 4 (3.1.1) nor 5 ([MQTT-3.1.2-2]).
    UnsupportedProtocolVersion,
    /// The reserved CONNECT flag (bit 0) is set ([MQTT-3.1.2-3]).
    ReservedConnectFlag,
    /// Will QoS or Will Retain is set without the Will Flag ([MQTT-3.1.2-11], [MQTT-3.1.2-13]).
    InvalidWillFlags,
    /// 3.1.1: the Password Flag is set without the User Name Flag ([MQTT-3.1.2-22]).
    PasswordWithoutUsername,
    /// The first packet on a connection is not CONNECT ([MQTT-3.1.0-1]).
    ExpectedConnect,
    /// CONNACK acknowledge flags have reserved bits set ([MQTT-3.2.2-1]), or Session Present is set
    /// with a non-zero return code ([MQTT-3.2.2-6], 3.1.1 [MQTT-3.2.2-4]).
    InvalidConnAckFlags,
    /// A reason / return code is not one the spec allows in this packet type.
    InvalidReasonCode,
    /// The Property Length runs past the end of the packet, or a property value runs past the end of
    /// the property block (§2.2.2.1).
    InvalidPropertyLength,
    /// A property identifier is unknown or not allowed in this packet type (§2.2.2.2: "A Control
    /// Packet which contains an Identifier which is not valid for its packet type ... is a
    /// Malformed Packet").
    InvalidPropertyId,
    /// A property this packet type may carry, but not from this sender: a Subscription
    /// Identifier in a PUBLISH sent by a client ([MQTT-3.3.4-6]). Breaking a MUST of the protocol
    /// rather than the packet format: a Protocol Error.
    PropertyNotAllowedFromSender,
    /// A single-valued property appears more than once (§2.2.2.2, "It is a Protocol Error to
    /// include ... more than once").
    DuplicateProperty,
    /// A property holds a value the spec forbids (e.g. Receive Maximum 0, a flag byte other than
    /// 0 or 1, Subscription Identifier 0, Topic Alias 0, Maximum QoS 2).
    InvalidPropertyValue,
    /// Authentication Data is present without an Authentication Method (5.0 §3.1.2.11.10: "It is a
    /// Protocol Error to include Authentication Data if there is no Authentication Method").
    AuthDataWithoutMethod,
}

impl MqttError {
    /// The MQTT 5.0 reason code to answer this error with (CONNACK before the session is up,
    /// DISCONNECT after).
    #[must_use]
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Self::PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            Self::InvalidProtocolName | Self::UnsupportedProtocolVersion => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            Self::InvalidTopicFilter => ReasonCode::TOPIC_FILTER_INVALID,
            Self::NoTopicFilters
            | Self::ExpectedConnect
            | Self::InvalidSubscriptionOptions
            | Self::NoLocalOnSharedSubscription
            | Self::DuplicateProperty
            | Self::PropertyNotAllowedFromSender
            | Self::InvalidPropertyValue
            | Self::AuthDataWithoutMethod
            | Self::InvalidReasonCode
            | Self::ZeroPacketId => ReasonCode::PROTOCOL_ERROR,
            Self::MalformedVarint
            | Self::InvalidPacketType
            | Self::ReservedFlags
            | Self::InvalidQos
            | Self::DupWithQos0
            | Self::InvalidUtf8
            | Self::NullCharInString
            | Self::Truncated
            | Self::TrailingBytes
            | Self::ReservedConnectFlag
            | Self::InvalidWillFlags
            | Self::PasswordWithoutUsername
            | Self::InvalidConnAckFlags
            | Self::InvalidPropertyLength
            | Self::InvalidPropertyId => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// The 3.1.1 CONNACK return code to answer a failed CONNECT with, if the spec defines one;
    /// `None` means "close the network connection without a CONNACK" (3.1.1 §3.1.4).
    #[must_use]
    pub fn connack_return_code_v311(self) -> Option<ReasonCode> {
        match self {
            // [MQTT-3.1.2-2]: unacceptable protocol level -> return code 0x01.
            Self::InvalidProtocolName | Self::UnsupportedProtocolVersion => Some(ReasonCode(0x01)),
            _ => None,
        }
    }
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MQTT decode error {:?} (reason code {})",
            self,
            self.reason_code()
        )
    }
}

impl std::error::Error for MqttError {}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes (the four-byte varint bound).
    PacketTooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    FieldTooLong,
    /// The packet uses something the target protocol version cannot carry (properties, reason codes
    /// or subscription options in 3.1.1, AUTH in 3.1.1, a password without a user name in 3.1.1).
    NotRepresentable,
    /// A PUBLISH has QoS 0 with a Packet Identifier or QoS > 0 without one ([MQTT-2.2.1-2]).
    PacketIdMismatch,
    /// SUBSCRIBE or UNSUBSCRIBE without topic filters.
    NoTopicFilters,
    /// A reason code not allowed in this packet type and version.
    InvalidReasonCode,
    /// A property not allowed in this packet type, or a value the spec forbids (Maximum QoS 2,
    /// Subscription Identifier 0 or above 268,435,455, more than one Subscription Identifier in
    /// SUBSCRIBE, Authentication Data without Authentication Method).
    InvalidProperty,
    /// DUP set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    InvalidFlags,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MQTT encode error {self:?}")
    }
}

impl std::error::Error for EncodeError {}
