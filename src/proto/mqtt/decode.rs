//! Packet decoding: fixed header (§2.1), then one body decoder per packet type.
//!
//! Order of checks, so a peer is refused as early as possible: the first byte (packet type and
//! reserved flags) as soon as it arrives; the remaining length against the size limit as soon as the
//! fixed header is complete, before the body is buffered; the body only once it is all there. The
//! complete packet is then split off the receive buffer and frozen, and every string, binary and
//! payload field is a `Bytes` slice of it (zero copy).

use core::num::NonZeroU16;

use bytes::{Buf, Bytes, BytesMut};

use super::error::{MqttError, ReasonCode};
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, RetainHandling, Sender, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
use super::properties::{Properties, PropertyContext};
use super::topic;
use super::wire::{decode_varint, Reader};

/// Size limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted packet, fixed header included (as 5.0 Maximum Packet Size counts it).
    /// Default 256 KiB.
    pub max_packet_size: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_packet_size: 256 * 1024,
        }
    }
}

/// The outcome of a decode attempt that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole packet was decoded and split off the front of the buffer.
    Complete(T),
    /// More bytes are needed; the buffer is untouched.
    Incomplete {
        /// How many more bytes complete the packet, when the fixed header is known; `None` while the
        /// fixed header itself is incomplete.
        needed: Option<usize>,
    },
}

/// Reads the fixed header at the front of `buf` without consuming anything.
///
/// Returns `Ok(None)` until the fixed header is complete, then `Ok(Some((first_byte,
/// remaining_length, header_length)))`. A Variable Byte Integer of more than four bytes or a
/// non-minimal one is [`MqttError::MalformedVarint`] ([MQTT-1.5.5-1]).
pub fn peek_remaining_length(buf: &[u8]) -> Result<Option<(u8, u32, usize)>, MqttError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    Ok(decode_varint(rest)?.map(|(remaining, len)| (first, remaining, 1 + len)))
}

/// Checks the packet type and its reserved flag bits (§2.1.3 Table 2-2, [MQTT-2.1.3-1];
/// 3.1.1 [MQTT-2.2.2-1]). `version` is `None` before CONNECT (AUTH is then refused too).
fn check_first_byte(first: u8, version: Option<ProtocolVersion>) -> Result<PacketType, MqttError> {
    let packet_type = PacketType::from_first_byte(first).ok_or(MqttError::InvalidPacketType)?;
    let flags = first & 0x0F;
    match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                // [MQTT-3.3.1-4]: both QoS bits set is a Malformed Packet.
                return Err(MqttError::InvalidQos);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
                return Err(MqttError::DupWithQos0);
            }
        }
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: flags 0b0010.
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => {
            if flags != 0b0010 {
                return Err(MqttError::ReservedFlags);
            }
        }
        PacketType::Auth if version != Some(ProtocolVersion::V5) => {
            // Type 15 is reserved in 3.1.1.
            return Err(MqttError::InvalidPacketType);
        }
        _ => {
            if flags != 0 {
                return Err(MqttError::ReservedFlags);
            }
        }
    }
    Ok(packet_type)
}

/// Splits one whole packet off `buf` once it is all there: returns its type, first byte and body.
fn frame(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Decoded<(PacketType, u8, Bytes)>, MqttError> {
    let Some(&first) = buf.first() else {
        return Ok(Decoded::Incomplete { needed: None });
    };
    let packet_type = check_first_byte(first, version)?;
    let Some((_, remaining, header_len)) = peek_remaining_length(buf)? else {
        return Ok(Decoded::Incomplete { needed: None });
    };
    // Both terms are bounded (remaining <= 268,435,455, header_len <= 5): no overflow in u64.
    let total = u64::from(remaining) + header_len as u64;
    if total > u64::from(limits.max_packet_size) {
        return Err(MqttError::PacketTooLarge);
    }
    let total = usize::try_from(total).map_err(|_| MqttError::PacketTooLarge)?;
    if buf.len() < total {
        return Ok(Decoded::Incomplete {
            needed: Some(total - buf.len()),
        });
    }
    let mut body = buf.split_to(total).freeze();
    body.advance(header_len);
    Ok(Decoded::Complete((packet_type, first, body)))
}

/// Decodes one packet of a connection whose CONNECT negotiated `version`, sent by `sender` (the
/// gateway reads [`Sender::Client`] packets from devices and [`Sender::Server`] packets from
/// brokers).
///
/// On `Complete`, the packet's bytes are split off the front of `buf`; on `Incomplete`, `buf` is
/// untouched; on `Err` the connection must be closed (after a CONNACK or DISCONNECT carrying
/// [`MqttError::reason_code`]) and `buf` may have lost the offending packet. The declared size is
/// checked against `limits` as soon as the fixed header is in, and the packet type and flags as soon
/// as the first byte is.
///
/// A CONNECT is decoded in the protocol version it declares itself; that a second CONNECT is a
/// Protocol Error ([MQTT-3.1.0-2]) is for the caller to enforce. Every packet type decodes from
/// either sender (which packet types a side may send is for the caller too); `sender` decides the
/// property rules that differ by direction ([`super::PropertyContext::forbidden_from`]).
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    sender: Sender,
    limits: &DecodeLimits,
) -> Result<Decoded<Packet>, MqttError> {
    let (packet_type, first, body) = match frame(buf, Some(version), limits)? {
        Decoded::Complete(framed) => framed,
        Decoded::Incomplete { needed } => return Ok(Decoded::Incomplete { needed }),
    };
    decode_body(packet_type, first, &body, version, sender).map(Decoded::Complete)
}

/// Decodes the first packet of a connection, which must be CONNECT ([MQTT-3.1.0-1]); the protocol
/// version for the rest of the connection is `connect.protocol_version`.
///
/// A first byte that is not CONNECT is refused as soon as it arrives ([`MqttError::ExpectedConnect`]).
/// Buffer handling is as for [`decode_packet`].
pub fn decode_connect(
    buf: &mut BytesMut,
    limits: &DecodeLimits,
) -> Result<Decoded<Connect>, MqttError> {
    if let Some(&first) = buf.first() {
        if PacketType::from_first_byte(first) != Some(PacketType::Connect) {
            return Err(MqttError::ExpectedConnect);
        }
    }
    match frame(buf, None, limits)? {
        Decoded::Complete((_, _, body)) => decode_connect_body(&body).map(Decoded::Complete),
        Decoded::Incomplete { needed } => Ok(Decoded::Incomplete { needed }),
    }
}

fn decode_body(
    packet_type: PacketType,
    first: u8,
    body: &Bytes,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Packet, MqttError> {
    let mut reader = Reader::new(body);
    let r = &mut reader;
    let from = (version, sender);
    let packet = match packet_type {
        PacketType::Connect => {
            return decode_connect_body(body).map(|connect| Packet::Connect(Box::new(connect)))
        }
        PacketType::ConnAck => Packet::ConnAck(decode_connack(r, from)?),
        PacketType::Publish => Packet::Publish(decode_publish(r, first, from)?),
        PacketType::PubAck => Packet::PubAck(decode_pub_response(r, from, PUBACK_PUBREC_CODES)?),
        PacketType::PubRec => Packet::PubRec(decode_pub_response(r, from, PUBACK_PUBREC_CODES)?),
        PacketType::PubRel => Packet::PubRel(decode_pub_response(r, from, PUBREL_PUBCOMP_CODES)?),
        PacketType::PubComp => Packet::PubComp(decode_pub_response(r, from, PUBREL_PUBCOMP_CODES)?),
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(r, from)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(r, from)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(r, from)?),
        PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(r, from)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(decode_disconnect(r, from)?),
        PacketType::Auth => Packet::Auth(decode_auth(r, sender)?),
    };
    // The remaining length must match the content exactly.
    if !reader.is_empty() {
        return Err(MqttError::TrailingBytes);
    }
    Ok(packet)
}

fn packet_id(r: &mut Reader<'_>) -> Result<NonZeroU16, MqttError> {
    // [MQTT-2.2.1-3] / 3.1.1 [MQTT-2.3.1-1]: non-zero.
    NonZeroU16::new(r.u16()?).ok_or(MqttError::ZeroPacketId)
}

/// The protocol version of the connection and the side that sent the packet.
type Origin = (ProtocolVersion, Sender);

fn decode_properties(
    r: &mut Reader<'_>,
    (version, sender): Origin,
    context: PropertyContext,
) -> Result<Properties, MqttError> {
    match version {
        ProtocolVersion::V5 => Properties::decode(r, context, sender),
        ProtocolVersion::V311 => Ok(Properties::default()),
    }
}

/// 5.0 reason codes allowed per packet (§2.4 Table 2-6 "Packets" column).
pub(crate) const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK and PUBREC reason codes (§3.4.2.1, §3.5.2.1).
pub(crate) const PUBACK_PUBREC_CODES: &[u8] =
    &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP reason codes (§3.6.2.1, §3.7.2.1).
pub(crate) const PUBREL_PUBCOMP_CODES: &[u8] = &[0x00, 0x92];
/// SUBACK reason codes (§3.9.3).
pub(crate) const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// 3.1.1 SUBACK return codes ([MQTT-3.9.3-2]).
pub(crate) const SUBACK_CODES_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// UNSUBACK reason codes (§3.11.3).
pub(crate) const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// DISCONNECT reason codes (§3.14.2.1).
pub(crate) const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// AUTH reason codes (§3.15.2.1).
pub(crate) const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// 3.1.1 CONNACK return codes 0..=5 (3.1.1 §3.2.2.3).
pub(crate) const CONNACK_CODES_V311: &[u8] = &[0x00, 0x01, 0x02, 0x03, 0x04, 0x05];

fn reason_code(r: &mut Reader<'_>, allowed: &[u8]) -> Result<ReasonCode, MqttError> {
    let code = r.u8()?;
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(MqttError::InvalidReasonCode)
    }
}

fn decode_connect_body(body: &Bytes) -> Result<Connect, MqttError> {
    let mut reader = Reader::new(body);
    let r = &mut reader;
    let protocol_name = r.binary()?;
    let level = r.u8()?;
    match &protocol_name[..] {
        b"MQTT" => {}
        // MQTT 3.1 (level 3) used "MQIsdp": a real MQTT client of a version we do not speak.
        b"MQIsdp" => return Err(MqttError::UnsupportedProtocolVersion),
        // [MQTT-3.1.2-1]: not MQTT at all.
        _ => return Err(MqttError::InvalidProtocolName),
    }
    let version = match level {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        // [MQTT-3.1.2-2]
        _ => return Err(MqttError::UnsupportedProtocolVersion),
    };
    let flags = r.u8()?;
    if flags & 0b0000_0001 != 0 {
        // [MQTT-3.1.2-3]: the reserved flag must be 0.
        return Err(MqttError::ReservedConnectFlag);
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    // [MQTT-3.1.2-12] (3.1.1 [MQTT-3.1.2-14]): Will QoS 3 is invalid.
    let will_qos = QoS::from_bits(will_qos_bits).ok_or(MqttError::InvalidQos)?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13] (3.1.1 [MQTT-3.1.2-13], [MQTT-3.1.2-15]).
        return Err(MqttError::InvalidWillFlags);
    }
    if version == ProtocolVersion::V311 && password_flag && !username_flag {
        // 3.1.1 [MQTT-3.1.2-22]; 5.0 allows a password without a user name.
        return Err(MqttError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    // Only a client sends CONNECT.
    let from = (version, Sender::Client);
    let properties = decode_properties(r, from, PropertyContext::Connect)?;
    // [MQTT-3.1.3-4]: the Client Identifier is a UTF-8 Encoded String.
    let client_id = r.utf8()?;
    let will = if will_flag {
        let properties = decode_properties(r, from, PropertyContext::Will)?;
        let topic = r.utf8()?;
        topic::validate_topic_name(&topic, false)?;
        let payload = r.binary()?;
        Some(Will {
            qos: will_qos,
            retain: will_retain,
            properties,
            topic,
            payload,
        })
    } else {
        None
    };
    let username = if username_flag { Some(r.utf8()?) } else { None };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    if !reader.is_empty() {
        return Err(MqttError::TrailingBytes);
    }
    Ok(Connect {
        protocol_version: version,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_connack(r: &mut Reader<'_>, from: Origin) -> Result<ConnAck, MqttError> {
    let (version, _) = from;
    let flags = r.u8()?;
    if flags & 0b1111_1110 != 0 {
        // [MQTT-3.2.2-1]: bits 7-1 are reserved and must be 0.
        return Err(MqttError::InvalidConnAckFlags);
    }
    let session_present = flags & 1 != 0;
    let reason_code = match version {
        ProtocolVersion::V311 => reason_code(r, CONNACK_CODES_V311)?,
        ProtocolVersion::V5 => reason_code(r, CONNACK_CODES)?,
    };
    if session_present && reason_code != ReasonCode::SUCCESS {
        // [MQTT-3.2.2-6] (3.1.1 [MQTT-3.2.2-4]).
        return Err(MqttError::InvalidConnAckFlags);
    }
    let properties = decode_properties(r, from, PropertyContext::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn decode_publish(r: &mut Reader<'_>, first: u8, from: Origin) -> Result<Publish, MqttError> {
    let dup = first & 0b1000 != 0;
    // Checked by check_first_byte: never 3.
    let qos = QoS::from_bits((first >> 1) & 0b11).ok_or(MqttError::InvalidQos)?;
    let retain = first & 0b0001 != 0;
    let topic = r.utf8()?;
    // [MQTT-2.2.1-2]: a Packet Identifier only when QoS > 0.
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = decode_properties(r, from, PropertyContext::Publish)?;
    // [MQTT-3.3.2-2] no wildcards; an empty name needs a Topic Alias (5.0 §3.3.2.1), 3.1.1
    // [MQTT-4.7.3-1] never empty.
    topic::validate_topic_name(&topic, properties.topic_alias.is_some())?;
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

fn decode_pub_response(
    r: &mut Reader<'_>,
    (version, sender): Origin,
    allowed_codes: &[u8],
) -> Result<PubResponse, MqttError> {
    let packet_id = packet_id(r)?;
    let mut response = PubResponse::success(packet_id);
    // 5.0 §3.4.2.1: reason code and properties may be omitted (remaining length 2 or 3).
    if version == ProtocolVersion::V5 && !r.is_empty() {
        response.reason_code = reason_code(r, allowed_codes)?;
        if !r.is_empty() {
            response.properties = Properties::decode(r, PropertyContext::PubResponse, sender)?;
        }
    }
    Ok(response)
}

fn decode_subscribe(r: &mut Reader<'_>, from: Origin) -> Result<Subscribe, MqttError> {
    let (version, _) = from;
    let packet_id = packet_id(r)?;
    let properties = decode_properties(r, from, PropertyContext::Subscribe)?;
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.utf8()?;
        topic::validate_topic_filter(&filter, version)?;
        let options = decode_subscription_options(r.u8()?, version)?;
        if options.no_local
            && topic::shared_subscription_parts(&filter).is_some()
            && version == ProtocolVersion::V5
        {
            // [MQTT-3.8.3-4]
            return Err(MqttError::NoLocalOnSharedSubscription);
        }
        subscriptions.push(Subscription { filter, options });
    }
    if subscriptions.is_empty() {
        // [MQTT-3.8.3-2] (3.1.1 [MQTT-3.8.3-3]).
        return Err(MqttError::NoTopicFilters);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        subscriptions,
    })
}

fn decode_subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, MqttError> {
    let reserved_mask = match version {
        // 3.1.1 [MQTT-3-8.3-4]: the upper six bits are reserved.
        ProtocolVersion::V311 => 0b1111_1100,
        // [MQTT-3.8.3-5]: bits 7-6 are reserved.
        ProtocolVersion::V5 => 0b1100_0000,
    };
    if byte & reserved_mask != 0 {
        return Err(MqttError::InvalidSubscriptionOptions);
    }
    let qos = QoS::from_bits(byte & 0b11).ok_or(MqttError::InvalidQos)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        // 5.0 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
        _ => return Err(MqttError::InvalidSubscriptionOptions),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader<'_>, from: Origin) -> Result<SubAck, MqttError> {
    let (version, _) = from;
    let packet_id = packet_id(r)?;
    let properties = decode_properties(r, from, PropertyContext::SubAck)?;
    let allowed = match version {
        ProtocolVersion::V311 => SUBACK_CODES_V311,
        ProtocolVersion::V5 => SUBACK_CODES,
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(reason_code(r, allowed)?);
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn decode_unsubscribe(r: &mut Reader<'_>, from: Origin) -> Result<Unsubscribe, MqttError> {
    let (version, _) = from;
    let packet_id = packet_id(r)?;
    let properties = decode_properties(r, from, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.utf8()?;
        topic::validate_topic_filter(&filter, version)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2]
        return Err(MqttError::NoTopicFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_unsuback(r: &mut Reader<'_>, from: Origin) -> Result<UnsubAck, MqttError> {
    let (version, _) = from;
    let packet_id = packet_id(r)?;
    let properties = decode_properties(r, from, PropertyContext::UnsubAck)?;
    let mut reason_codes = Vec::new();
    // 3.1.1 UNSUBACK has no payload: anything left is trailing bytes (checked by the caller).
    if version == ProtocolVersion::V5 {
        reason_codes.reserve(r.remaining());
        while !r.is_empty() {
            reason_codes.push(reason_code(r, UNSUBACK_CODES)?);
        }
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn decode_disconnect(
    r: &mut Reader<'_>,
    (version, sender): Origin,
) -> Result<Disconnect, MqttError> {
    let mut disconnect = Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    // 5.0 §3.14.2: remaining length 0 = Normal disconnection; < 2 = no properties.
    if version == ProtocolVersion::V5 && !r.is_empty() {
        disconnect.reason_code = reason_code(r, DISCONNECT_CODES)?;
        if !r.is_empty() {
            disconnect.properties = Properties::decode(r, PropertyContext::Disconnect, sender)?;
        }
    }
    Ok(disconnect)
}

fn decode_auth(r: &mut Reader<'_>, sender: Sender) -> Result<Auth, MqttError> {
    let mut auth = Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    // 5.0 §3.15.2: remaining length 0 = Success with no properties.
    if !r.is_empty() {
        auth.reason_code = reason_code(r, AUTH_CODES)?;
        if !r.is_empty() {
            auth.properties = Properties::decode(r, PropertyContext::Auth, sender)?;
        }
    }
    Ok(auth)
}
