//! Packet encoding into a caller-owned `BytesMut`.
//!
//! Each body is written by one generic function run twice: first into a byte counter (to learn the
//! remaining length and validate), then into the output. Nothing is written to `out` unless the
//! packet is valid. Optional 5.0 fields are written in their shortest form (e.g. a PUBACK with
//! Success and no properties is two bytes), so `decode(encode(p)) == p`. The encoder does not
//! re-validate UTF-8 or topic syntax of the strings it is given.

use bytes::{BufMut, BytesMut};

use super::decode::{
    AUTH_CODES, CONNACK_CODES, CONNACK_CODES_V311, DISCONNECT_CODES, PUBACK_PUBREC_CODES,
    PUBREL_PUBCOMP_CODES, SUBACK_CODES, SUBACK_CODES_V311, UNSUBACK_CODES,
};
use super::error::{EncodeError, ReasonCode};
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubResponse, Publish, QoS, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use super::properties::{Properties, PropertyContext};
use super::wire::{varint_len, Counter, Sink, MAX_VARINT};

/// Appends `packet`, encoded for `version`, to `out`.
///
/// CONNECT is written in its own `protocol_version` (`version` is ignored for it). On error nothing
/// is written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let version = match packet {
        Packet::Connect(connect) => connect.protocol_version,
        _ => version,
    };
    let first = first_byte(packet, version)?;
    let mut counter = Counter::default();
    encode_body(packet, version, &mut counter)?;
    let remaining = counter.0;
    if remaining > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    out.reserve(1 + varint_len(remaining) + remaining);
    BufMut::put_u8(out, first);
    out.put_varint(remaining)?;
    let start = out.len();
    encode_body(packet, version, out)?;
    debug_assert_eq!(
        out.len() - start,
        remaining,
        "count and write passes disagree"
    );
    Ok(())
}

/// The number of bytes [`encode`] would append for `packet`.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let version = match packet {
        Packet::Connect(connect) => connect.protocol_version,
        _ => version,
    };
    first_byte(packet, version)?;
    let mut counter = Counter::default();
    encode_body(packet, version, &mut counter)?;
    if counter.0 > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(1 + varint_len(counter.0) + counter.0)
}

fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    let type_bits = (packet.packet_type() as u8) << 4;
    let flags = match packet {
        Packet::Publish(publish) => {
            if (publish.qos == QoS::AtMostOnce) != publish.packet_id.is_none() {
                return Err(EncodeError::PacketIdMismatch);
            }
            if publish.qos == QoS::AtMostOnce && publish.dup {
                return Err(EncodeError::InvalidFlags);
            }
            (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        Packet::Auth(_) if version == ProtocolVersion::V311 => {
            return Err(EncodeError::NotRepresentable)
        }
        _ => 0,
    };
    Ok(type_bits | flags)
}

fn encode_body<S: Sink>(
    packet: &Packet,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(connect) => encode_connect(connect, sink),
        Packet::ConnAck(connack) => encode_connack(connack, version, sink),
        Packet::Publish(publish) => encode_publish(publish, version, sink),
        Packet::PubAck(response) | Packet::PubRec(response) => {
            encode_pub_response(response, version, PUBACK_PUBREC_CODES, sink)
        }
        Packet::PubRel(response) | Packet::PubComp(response) => {
            encode_pub_response(response, version, PUBREL_PUBCOMP_CODES, sink)
        }
        Packet::Subscribe(subscribe) => encode_subscribe(subscribe, version, sink),
        Packet::SubAck(suback) => encode_suback(suback, version, sink),
        Packet::Unsubscribe(unsubscribe) => encode_unsubscribe(unsubscribe, version, sink),
        Packet::UnsubAck(unsuback) => encode_unsuback(unsuback, version, sink),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(disconnect) => encode_disconnect(disconnect, version, sink),
        Packet::Auth(auth) => encode_auth(auth, sink),
    }
}

/// Writes a property block in 5.0; in 3.1.1 only an empty set is representable (and writes nothing).
fn encode_properties<S: Sink>(
    properties: &Properties,
    version: ProtocolVersion,
    context: PropertyContext,
    sink: &mut S,
) -> Result<(), EncodeError> {
    match version {
        ProtocolVersion::V5 => properties.encode(context, sink),
        ProtocolVersion::V311 if properties.is_empty() => Ok(()),
        ProtocolVersion::V311 => Err(EncodeError::NotRepresentable),
    }
}

fn check_code(code: ReasonCode, allowed: &[u8]) -> Result<u8, EncodeError> {
    if allowed.contains(&code.0) {
        Ok(code.0)
    } else {
        Err(EncodeError::InvalidReasonCode)
    }
}

fn encode_connect<S: Sink>(connect: &Connect, sink: &mut S) -> Result<(), EncodeError> {
    let version = connect.protocol_version;
    if version == ProtocolVersion::V311 && connect.password.is_some() && connect.username.is_none()
    {
        return Err(EncodeError::NotRepresentable);
    }
    sink.put_binary(b"MQTT")?;
    sink.put_u8(version.level());
    let mut flags = u8::from(connect.clean_start) << 1;
    if let Some(will) = &connect.will {
        flags |= 0b0000_0100 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    flags |= u8::from(connect.password.is_some()) << 6;
    flags |= u8::from(connect.username.is_some()) << 7;
    sink.put_u8(flags);
    sink.put_u16(connect.keep_alive);
    encode_properties(&connect.properties, version, PropertyContext::Connect, sink)?;
    sink.put_binary(&connect.client_id)?;
    if let Some(will) = &connect.will {
        encode_properties(&will.properties, version, PropertyContext::Will, sink)?;
        sink.put_binary(&will.topic)?;
        sink.put_binary(&will.payload)?;
    }
    if let Some(username) = &connect.username {
        sink.put_binary(username)?;
    }
    if let Some(password) = &connect.password {
        sink.put_binary(password)?;
    }
    Ok(())
}

fn encode_connack<S: Sink>(
    connack: &ConnAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    let allowed = match version {
        ProtocolVersion::V311 => CONNACK_CODES_V311,
        ProtocolVersion::V5 => CONNACK_CODES,
    };
    let code = check_code(connack.reason_code, allowed)?;
    if connack.session_present && code != 0 {
        // [MQTT-3.2.2-6]
        return Err(EncodeError::InvalidFlags);
    }
    sink.put_u8(u8::from(connack.session_present));
    sink.put_u8(code);
    encode_properties(&connack.properties, version, PropertyContext::ConnAck, sink)
}

fn encode_publish<S: Sink>(
    publish: &Publish,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    sink.put_binary(&publish.topic)?;
    if let Some(packet_id) = publish.packet_id {
        sink.put_u16(packet_id.get());
    }
    encode_properties(&publish.properties, version, PropertyContext::Publish, sink)?;
    sink.put_slice(&publish.payload);
    Ok(())
}

fn encode_pub_response<S: Sink>(
    response: &PubResponse,
    version: ProtocolVersion,
    allowed: &[u8],
    sink: &mut S,
) -> Result<(), EncodeError> {
    sink.put_u16(response.packet_id.get());
    let code = check_code(response.reason_code, allowed)?;
    short_tail(
        code,
        &response.properties,
        version,
        PropertyContext::PubResponse,
        sink,
    )
}

/// The optional "reason code, then properties" tail of PUBACK/PUBREC/PUBREL/PUBCOMP/DISCONNECT in its
/// shortest form: nothing for Success without properties, the code alone without properties.
fn short_tail<S: Sink>(
    code: u8,
    props: &Properties,
    version: ProtocolVersion,
    context: PropertyContext,
    sink: &mut S,
) -> Result<(), EncodeError> {
    let no_properties = props.is_empty();
    match version {
        ProtocolVersion::V311 if code == 0 && no_properties => Ok(()),
        ProtocolVersion::V311 => Err(EncodeError::NotRepresentable),
        ProtocolVersion::V5 if code == 0 && no_properties => Ok(()),
        ProtocolVersion::V5 => {
            sink.put_u8(code);
            if no_properties {
                Ok(())
            } else {
                props.encode(context, sink)
            }
        }
    }
}

fn encode_subscribe<S: Sink>(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if subscribe.subscriptions.is_empty() {
        return Err(EncodeError::NoTopicFilters);
    }
    sink.put_u16(subscribe.packet_id.get());
    encode_properties(
        &subscribe.properties,
        version,
        PropertyContext::Subscribe,
        sink,
    )?;
    for subscription in &subscribe.subscriptions {
        let options = subscription.options;
        let v5_bits = (u8::from(options.no_local) << 2)
            | (u8::from(options.retain_as_published) << 3)
            | ((options.retain_handling as u8) << 4);
        if version == ProtocolVersion::V311 && v5_bits != 0 {
            return Err(EncodeError::NotRepresentable);
        }
        sink.put_binary(&subscription.filter)?;
        sink.put_u8((options.qos as u8) | v5_bits);
    }
    Ok(())
}

fn encode_suback<S: Sink>(
    suback: &SubAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    let allowed = match version {
        ProtocolVersion::V311 => SUBACK_CODES_V311,
        ProtocolVersion::V5 => SUBACK_CODES,
    };
    sink.put_u16(suback.packet_id.get());
    encode_properties(&suback.properties, version, PropertyContext::SubAck, sink)?;
    for &code in &suback.reason_codes {
        sink.put_u8(check_code(code, allowed)?);
    }
    Ok(())
}

fn encode_unsubscribe<S: Sink>(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::NoTopicFilters);
    }
    sink.put_u16(unsubscribe.packet_id.get());
    encode_properties(
        &unsubscribe.properties,
        version,
        PropertyContext::Unsubscribe,
        sink,
    )?;
    for filter in &unsubscribe.filters {
        sink.put_binary(filter)?;
    }
    Ok(())
}

fn encode_unsuback<S: Sink>(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    sink.put_u16(unsuback.packet_id.get());
    if version == ProtocolVersion::V311 && !unsuback.reason_codes.is_empty() {
        return Err(EncodeError::NotRepresentable);
    }
    encode_properties(
        &unsuback.properties,
        version,
        PropertyContext::UnsubAck,
        sink,
    )?;
    for &code in &unsuback.reason_codes {
        sink.put_u8(check_code(code, UNSUBACK_CODES)?);
    }
    Ok(())
}

fn encode_disconnect<S: Sink>(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    let code = check_code(disconnect.reason_code, DISCONNECT_CODES)?;
    short_tail(
        code,
        &disconnect.properties,
        version,
        PropertyContext::Disconnect,
        sink,
    )
}

fn encode_auth<S: Sink>(auth: &Auth, sink: &mut S) -> Result<(), EncodeError> {
    let code = check_code(auth.reason_code, AUTH_CODES)?;
    // 5.0 §3.15.2: both may be omitted only for Success without properties; otherwise the Property
    // Length is always written.
    if code == 0 && auth.properties.is_empty() {
        return Ok(());
    }
    sink.put_u8(code);
    auth.properties.encode(PropertyContext::Auth, sink)
}
