//! MQTT 5.0 properties (§2.2.2): every identifier of §2.2.2.2 with its data type, which packets may
//! carry it, and the value rules the spec states for it.
//!
//! Decoding refuses unknown identifiers and identifiers not allowed in the packet at hand
//! (Malformed Packet, §2.2.2.2), identifiers the packet type allows but not from the side that sent
//! it (Protocol Error: a client's PUBLISH with a Subscription Identifier, [MQTT-3.3.4-6]), a second
//! copy of any single-valued property (Protocol Error), and forbidden values (Protocol Error).
//! User Properties repeat and keep their order; Subscription Identifier repeats in PUBLISH only. Encoding writes properties in identifier order with the User
//! Properties last, so `decode(encode(p)) == p` but the byte order of a decoded packet is not kept.
//! This module does not track session state (e.g. Topic Alias Maximum, Session Expiry on
//! DISCONNECT when CONNECT had 0): that is the connection flow's job.

use core::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use super::error::{EncodeError, MqttError};
use super::packet::{QoS, Sender};
use super::topic;
use super::wire::{Counter, Reader, Sink, MAX_VARINT};

/// Property identifiers (§2.2.2.2, Table 2-4).
pub mod id {
    /// 0x01 Payload Format Indicator (Byte).
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// 0x02 Message Expiry Interval (Four Byte Integer).
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// 0x03 Content Type (UTF-8 String).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// 0x08 Response Topic (UTF-8 String).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// 0x09 Correlation Data (Binary Data).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// 0x0B Subscription Identifier (Variable Byte Integer).
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// 0x11 Session Expiry Interval (Four Byte Integer).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// 0x12 Assigned Client Identifier (UTF-8 String).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// 0x13 Server Keep Alive (Two Byte Integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// 0x15 Authentication Method (UTF-8 String).
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// 0x16 Authentication Data (Binary Data).
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// 0x17 Request Problem Information (Byte).
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// 0x18 Will Delay Interval (Four Byte Integer).
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// 0x19 Request Response Information (Byte).
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// 0x1A Response Information (UTF-8 String).
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// 0x1C Server Reference (UTF-8 String).
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// 0x1F Reason String (UTF-8 String).
    pub const REASON_STRING: u8 = 0x1F;
    /// 0x21 Receive Maximum (Two Byte Integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// 0x22 Topic Alias Maximum (Two Byte Integer).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// 0x23 Topic Alias (Two Byte Integer).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// 0x24 Maximum QoS (Byte).
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// 0x25 Retain Available (Byte).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// 0x26 User Property (UTF-8 String Pair).
    pub const USER_PROPERTY: u8 = 0x26;
    /// 0x27 Maximum Packet Size (Four Byte Integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// 0x28 Wildcard Subscription Available (Byte).
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// 0x29 Subscription Identifier Available (Byte).
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// 0x2A Shared Subscription Available (Byte).
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which packet (or part of one) a property block belongs to; decides the allowed identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    /// CONNECT properties.
    Connect,
    /// Will properties inside CONNECT.
    Will,
    /// CONNACK properties.
    ConnAck,
    /// PUBLISH properties.
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP properties.
    PubResponse,
    /// SUBSCRIBE properties.
    Subscribe,
    /// SUBACK properties.
    SubAck,
    /// UNSUBSCRIBE properties.
    Unsubscribe,
    /// UNSUBACK properties.
    UnsubAck,
    /// DISCONNECT properties.
    Disconnect,
    /// AUTH properties.
    Auth,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut bits = 0u64;
    let mut index = 0;
    while index < ids.len() {
        bits |= 1u64 << ids[index];
        index += 1;
    }
    bits
}

impl PropertyContext {
    /// The identifiers allowed in this context, as a bit set (bit n = identifier n), from the
    /// "Used in" column of Table 2-4.
    #[must_use]
    pub const fn allowed(self) -> u64 {
        use id::*;
        match self {
            Self::Connect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            Self::Will => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ]),
            Self::ConnAck => mask(&[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ]),
            Self::Publish => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            Self::PubResponse | Self::SubAck | Self::UnsubAck => {
                mask(&[REASON_STRING, USER_PROPERTY])
            }
            Self::Subscribe => mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            Self::Unsubscribe => mask(&[USER_PROPERTY]),
            Self::Disconnect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                SERVER_REFERENCE,
                REASON_STRING,
                USER_PROPERTY,
            ]),
            Self::Auth => mask(&[
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REASON_STRING,
                USER_PROPERTY,
            ]),
        }
    }
}

impl PropertyContext {
    /// The identifiers [`allowed`](Self::allowed) in this context that `sender` must not send
    /// anyway (bit n = identifier n): the direction rules the spec states outside Table 2-4.
    ///
    /// From a client: Subscription Identifier in PUBLISH ([MQTT-3.3.4-6]). Every other
    /// property of a client packet in Table 2-4 may come from a client (Topic Alias in PUBLISH
    /// both ways, Session Expiry Interval in DISCONNECT, ...; limits that depend on the session,
    /// such as Topic Alias Maximum, are the connection flow's).
    ///
    /// From a server: nothing. [MQTT-3.14.2-2] (no Session Expiry Interval in a server's
    /// DISCONNECT) is deliberately not enforced on what a broker sends: the gateway is lenient
    /// with its upstream, and refusing a broker's DISCONNECT would only lose its reason code.
    #[must_use]
    pub const fn forbidden_from(self, sender: Sender) -> u64 {
        match (sender, self) {
            (Sender::Client, Self::Publish) => mask(&[id::SUBSCRIPTION_IDENTIFIER]),
            _ => 0,
        }
    }
}

/// A User Property: a UTF-8 name/value pair (§1.5.7); the same name may appear more than once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// Name (UTF-8).
    pub name: Bytes,
    /// Value (UTF-8).
    pub value: Bytes,
}

/// The properties of one 5.0 packet (or of a Will). Every field is `None` / empty when absent; a
/// 3.1.1 packet always has `Properties::default()`.
///
/// String and binary values are zero-copy slices of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01 Payload Format Indicator: `true` = the payload is UTF-8 (wire 1), `false` = unspecified bytes (wire 0).
    pub payload_format_indicator: Option<bool>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<Bytes>,
    /// 0x08 Response Topic (a topic name: no wildcards, [MQTT-3.3.2-14]).
    pub response_topic: Option<Bytes>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifiers, 1..=268,435,455 (several in PUBLISH, at most one in SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<Bytes>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<Bytes>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information.
    pub request_problem_information: Option<bool>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information.
    pub request_response_information: Option<bool>,
    /// 0x1A Response Information.
    pub response_information: Option<Bytes>,
    /// 0x1C Server Reference.
    pub server_reference: Option<Bytes>,
    /// 0x1F Reason String.
    pub reason_string: Option<Bytes>,
    /// 0x21 Receive Maximum (0 is a Protocol Error).
    pub receive_maximum: Option<NonZeroU16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (0 is a Protocol Error, [MQTT-3.3.2-8]).
    pub topic_alias: Option<NonZeroU16>,
    /// 0x24 Maximum QoS (only 0 or 1 may be sent).
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available.
    pub retain_available: Option<bool>,
    /// 0x26 User Properties, in wire order ([MQTT-3.3.2-18]).
    pub user_properties: Vec<UserProperty>,
    /// 0x27 Maximum Packet Size (0 is a Protocol Error).
    pub maximum_packet_size: Option<NonZeroU32>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifier Available.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
}

fn flag_byte(reader: &mut Reader<'_>) -> Result<bool, MqttError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(MqttError::InvalidPropertyValue),
    }
}

fn put_once<T>(slot: &mut Option<T>, value: T) -> Result<(), MqttError> {
    if slot.is_some() {
        return Err(MqttError::DuplicateProperty);
    }
    *slot = Some(value);
    Ok(())
}

impl Properties {
    /// Whether no property is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.present_mask() == 0
    }

    /// Decodes a property block (Property Length then properties) for `context`, sent by
    /// `sender`.
    pub fn decode(
        reader: &mut Reader<'_>,
        context: PropertyContext,
        sender: Sender,
    ) -> Result<Self, MqttError> {
        let len = reader.varint().map_err(|error| match error {
            MqttError::Truncated => MqttError::InvalidPropertyLength,
            other => other,
        })?;
        let len = usize::try_from(len).map_err(|_| MqttError::InvalidPropertyLength)?;
        if len > reader.remaining() {
            return Err(MqttError::InvalidPropertyLength);
        }
        let mut block = reader.sub_reader(len)?;
        let mut properties = Self::default();
        while !block.is_empty() {
            properties
                .decode_one(&mut block, context, sender)
                .map_err(|error| match error {
                    MqttError::Truncated => MqttError::InvalidPropertyLength,
                    other => other,
                })?;
        }
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(MqttError::AuthDataWithoutMethod);
        }
        Ok(properties)
    }

    fn decode_one(
        &mut self,
        block: &mut Reader<'_>,
        context: PropertyContext,
        sender: Sender,
    ) -> Result<(), MqttError> {
        let identifier = block.varint()?;
        if identifier >= 64 || context.allowed() & (1u64 << identifier) == 0 {
            return Err(MqttError::InvalidPropertyId);
        }
        if context.forbidden_from(sender) & (1u64 << identifier) != 0 {
            return Err(MqttError::PropertyNotAllowedFromSender);
        }
        // Checked above: identifier < 64.
        let identifier = identifier as u8;
        match identifier {
            id::PAYLOAD_FORMAT_INDICATOR => {
                put_once(&mut self.payload_format_indicator, flag_byte(block)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                put_once(&mut self.message_expiry_interval, block.u32()?)
            }
            id::CONTENT_TYPE => put_once(&mut self.content_type, block.utf8()?),
            id::RESPONSE_TOPIC => {
                let topic = block.utf8()?;
                // [MQTT-3.3.2-14]: a Topic Name, so no wildcards (and not empty).
                topic::validate_topic_name(&topic, false)?;
                put_once(&mut self.response_topic, topic)
            }
            id::CORRELATION_DATA => put_once(&mut self.correlation_data, block.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let value = block.varint()?;
                if value == 0 {
                    return Err(MqttError::InvalidPropertyValue);
                }
                // Repeatable in PUBLISH only; "It is a Protocol Error to include the Subscription
                // Identifier more than once" in SUBSCRIBE (§3.8.2.1.2).
                if context == PropertyContext::Subscribe
                    && !self.subscription_identifiers.is_empty()
                {
                    return Err(MqttError::DuplicateProperty);
                }
                self.subscription_identifiers.push(value);
                Ok(())
            }
            id::SESSION_EXPIRY_INTERVAL => {
                put_once(&mut self.session_expiry_interval, block.u32()?)
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                put_once(&mut self.assigned_client_identifier, block.utf8()?)
            }
            id::SERVER_KEEP_ALIVE => put_once(&mut self.server_keep_alive, block.u16()?),
            id::AUTHENTICATION_METHOD => put_once(&mut self.authentication_method, block.utf8()?),
            id::AUTHENTICATION_DATA => put_once(&mut self.authentication_data, block.binary()?),
            id::REQUEST_PROBLEM_INFORMATION => {
                put_once(&mut self.request_problem_information, flag_byte(block)?)
            }
            id::WILL_DELAY_INTERVAL => put_once(&mut self.will_delay_interval, block.u32()?),
            id::REQUEST_RESPONSE_INFORMATION => {
                put_once(&mut self.request_response_information, flag_byte(block)?)
            }
            id::RESPONSE_INFORMATION => put_once(&mut self.response_information, block.utf8()?),
            id::SERVER_REFERENCE => put_once(&mut self.server_reference, block.utf8()?),
            id::REASON_STRING => put_once(&mut self.reason_string, block.utf8()?),
            id::RECEIVE_MAXIMUM => {
                let value = NonZeroU16::new(block.u16()?).ok_or(MqttError::InvalidPropertyValue)?;
                put_once(&mut self.receive_maximum, value)
            }
            id::TOPIC_ALIAS_MAXIMUM => put_once(&mut self.topic_alias_maximum, block.u16()?),
            id::TOPIC_ALIAS => {
                let value = NonZeroU16::new(block.u16()?).ok_or(MqttError::InvalidPropertyValue)?;
                put_once(&mut self.topic_alias, value)
            }
            id::MAXIMUM_QOS => {
                let value = match block.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(MqttError::InvalidPropertyValue),
                };
                put_once(&mut self.maximum_qos, value)
            }
            id::RETAIN_AVAILABLE => put_once(&mut self.retain_available, flag_byte(block)?),
            id::USER_PROPERTY => {
                let name = block.utf8()?;
                let value = block.utf8()?;
                self.user_properties.push(UserProperty { name, value });
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => {
                let value = NonZeroU32::new(block.u32()?).ok_or(MqttError::InvalidPropertyValue)?;
                put_once(&mut self.maximum_packet_size, value)
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                put_once(&mut self.wildcard_subscription_available, flag_byte(block)?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => put_once(
                &mut self.subscription_identifier_available,
                flag_byte(block)?,
            ),
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                put_once(&mut self.shared_subscription_available, flag_byte(block)?)
            }
            // Every identifier in an `allowed()` mask is handled above.
            _ => Err(MqttError::InvalidPropertyId),
        }
    }

    /// The bit set of identifiers present (bit n = identifier n).
    fn present_mask(&self) -> u64 {
        let mut bits = 0u64;
        let mut mark = |present: bool, identifier: u8| {
            if present {
                bits |= 1u64 << identifier;
            }
        };
        mark(
            self.payload_format_indicator.is_some(),
            id::PAYLOAD_FORMAT_INDICATOR,
        );
        mark(
            self.message_expiry_interval.is_some(),
            id::MESSAGE_EXPIRY_INTERVAL,
        );
        mark(self.content_type.is_some(), id::CONTENT_TYPE);
        mark(self.response_topic.is_some(), id::RESPONSE_TOPIC);
        mark(self.correlation_data.is_some(), id::CORRELATION_DATA);
        mark(
            !self.subscription_identifiers.is_empty(),
            id::SUBSCRIPTION_IDENTIFIER,
        );
        mark(
            self.session_expiry_interval.is_some(),
            id::SESSION_EXPIRY_INTERVAL,
        );
        mark(
            self.assigned_client_identifier.is_some(),
            id::ASSIGNED_CLIENT_IDENTIFIER,
        );
        mark(self.server_keep_alive.is_some(), id::SERVER_KEEP_ALIVE);
        mark(
            self.authentication_method.is_some(),
            id::AUTHENTICATION_METHOD,
        );
        mark(self.authentication_data.is_some(), id::AUTHENTICATION_DATA);
        mark(
            self.request_problem_information.is_some(),
            id::REQUEST_PROBLEM_INFORMATION,
        );
        mark(self.will_delay_interval.is_some(), id::WILL_DELAY_INTERVAL);
        mark(
            self.request_response_information.is_some(),
            id::REQUEST_RESPONSE_INFORMATION,
        );
        mark(
            self.response_information.is_some(),
            id::RESPONSE_INFORMATION,
        );
        mark(self.server_reference.is_some(), id::SERVER_REFERENCE);
        mark(self.reason_string.is_some(), id::REASON_STRING);
        mark(self.receive_maximum.is_some(), id::RECEIVE_MAXIMUM);
        mark(self.topic_alias_maximum.is_some(), id::TOPIC_ALIAS_MAXIMUM);
        mark(self.topic_alias.is_some(), id::TOPIC_ALIAS);
        mark(self.maximum_qos.is_some(), id::MAXIMUM_QOS);
        mark(self.retain_available.is_some(), id::RETAIN_AVAILABLE);
        mark(!self.user_properties.is_empty(), id::USER_PROPERTY);
        mark(self.maximum_packet_size.is_some(), id::MAXIMUM_PACKET_SIZE);
        mark(
            self.wildcard_subscription_available.is_some(),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        );
        mark(
            self.subscription_identifier_available.is_some(),
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        );
        mark(
            self.shared_subscription_available.is_some(),
            id::SHARED_SUBSCRIPTION_AVAILABLE,
        );
        bits
    }

    /// Encodes the property block (Property Length then properties) for `context`.
    pub fn encode<S: Sink>(
        &self,
        context: PropertyContext,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        if self.present_mask() & !context.allowed() != 0 {
            return Err(EncodeError::InvalidProperty);
        }
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(EncodeError::InvalidProperty);
        }
        if context == PropertyContext::Subscribe && self.subscription_identifiers.len() > 1 {
            return Err(EncodeError::InvalidProperty);
        }
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(EncodeError::InvalidProperty);
        }
        let mut counter = Counter::default();
        self.encode_items(&mut counter)?;
        sink.put_varint(counter.0)?;
        self.encode_items(sink)
    }

    fn encode_items<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        fn byte<S: Sink>(sink: &mut S, identifier: u8, value: Option<u8>) {
            if let Some(value) = value {
                sink.put_u8(identifier);
                sink.put_u8(value);
            }
        }
        fn two<S: Sink>(sink: &mut S, identifier: u8, value: Option<u16>) {
            if let Some(value) = value {
                sink.put_u8(identifier);
                sink.put_u16(value);
            }
        }
        fn four<S: Sink>(sink: &mut S, identifier: u8, value: Option<u32>) {
            if let Some(value) = value {
                sink.put_u8(identifier);
                sink.put_u32(value);
            }
        }
        fn binary<S: Sink>(
            sink: &mut S,
            identifier: u8,
            value: Option<&Bytes>,
        ) -> Result<(), EncodeError> {
            if let Some(value) = value {
                sink.put_u8(identifier);
                sink.put_binary(value)?;
            }
            Ok(())
        }
        let flag = |value: Option<bool>| value.map(u8::from);

        byte(
            sink,
            id::PAYLOAD_FORMAT_INDICATOR,
            flag(self.payload_format_indicator),
        );
        four(
            sink,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        binary(sink, id::CONTENT_TYPE, self.content_type.as_ref())?;
        binary(sink, id::RESPONSE_TOPIC, self.response_topic.as_ref())?;
        binary(sink, id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        for &identifier in &self.subscription_identifiers {
            if identifier == 0 || identifier > MAX_VARINT {
                return Err(EncodeError::InvalidProperty);
            }
            sink.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            sink.put_varint(identifier as usize)?;
        }
        four(
            sink,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        binary(
            sink,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        )?;
        two(sink, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        binary(
            sink,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        )?;
        binary(
            sink,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )?;
        byte(
            sink,
            id::REQUEST_PROBLEM_INFORMATION,
            flag(self.request_problem_information),
        );
        four(sink, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(
            sink,
            id::REQUEST_RESPONSE_INFORMATION,
            flag(self.request_response_information),
        );
        binary(
            sink,
            id::RESPONSE_INFORMATION,
            self.response_information.as_ref(),
        )?;
        binary(sink, id::SERVER_REFERENCE, self.server_reference.as_ref())?;
        binary(sink, id::REASON_STRING, self.reason_string.as_ref())?;
        two(
            sink,
            id::RECEIVE_MAXIMUM,
            self.receive_maximum.map(NonZeroU16::get),
        );
        two(sink, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        two(sink, id::TOPIC_ALIAS, self.topic_alias.map(NonZeroU16::get));
        byte(sink, id::MAXIMUM_QOS, self.maximum_qos.map(|qos| qos as u8));
        byte(sink, id::RETAIN_AVAILABLE, flag(self.retain_available));
        four(
            sink,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        byte(
            sink,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            flag(self.wildcard_subscription_available),
        );
        byte(
            sink,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            flag(self.subscription_identifier_available),
        );
        byte(
            sink,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            flag(self.shared_subscription_available),
        );
        for property in &self.user_properties {
            sink.put_u8(id::USER_PROPERTY);
            sink.put_binary(&property.name)?;
            sink.put_binary(&property.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Every property context, for tests that check each one.
    const ALL_CONTEXTS: [PropertyContext; 11] = [
        PropertyContext::Connect,
        PropertyContext::Will,
        PropertyContext::ConnAck,
        PropertyContext::Publish,
        PropertyContext::PubResponse,
        PropertyContext::Subscribe,
        PropertyContext::SubAck,
        PropertyContext::Unsubscribe,
        PropertyContext::UnsubAck,
        PropertyContext::Disconnect,
        PropertyContext::Auth,
    ];

    /// Decodes `block` as sent by a server (Table 2-4 alone decides what is allowed).
    fn decode(block: &'static [u8], context: PropertyContext) -> Result<Properties, MqttError> {
        decode_from(block, context, Sender::Server)
    }

    fn decode_from(
        block: &'static [u8],
        context: PropertyContext,
        sender: Sender,
    ) -> Result<Properties, MqttError> {
        let body = Bytes::from_static(block);
        let mut reader = Reader::new(&body);
        let properties = Properties::decode(&mut reader, context, sender)?;
        assert!(
            reader.is_empty(),
            "property block must consume the whole test input"
        );
        Ok(properties)
    }

    #[test]
    fn every_identifier_has_a_context_and_round_trips() {
        // One block per context holding every property that context allows.
        let mut all = Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some(Bytes::from_static(b"text/plain")),
            response_topic: Some(Bytes::from_static(b"reply/to")),
            correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(3600),
            assigned_client_identifier: Some(Bytes::from_static(b"auto-1")),
            server_keep_alive: Some(30),
            authentication_method: Some(Bytes::from_static(b"SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(&[9, 9])),
            request_problem_information: Some(false),
            will_delay_interval: Some(5),
            request_response_information: Some(true),
            response_information: Some(Bytes::from_static(b"resp")),
            server_reference: Some(Bytes::from_static(b"other:1883")),
            reason_string: Some(Bytes::from_static(b"because")),
            receive_maximum: NonZeroU16::new(10),
            topic_alias_maximum: Some(7),
            topic_alias: NonZeroU16::new(3),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            user_properties: vec![
                UserProperty {
                    name: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v1"),
                },
                UserProperty {
                    name: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v2"),
                },
            ],
            maximum_packet_size: NonZeroU32::new(1024),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
        };
        let mut covered = 0u64;
        for context in ALL_CONTEXTS {
            if context == PropertyContext::Subscribe {
                all.subscription_identifiers = vec![268_435_455];
            }
            let restricted = restrict(&all, context.allowed());
            covered |= restricted.present_mask();
            let mut out = BytesMut::new();
            restricted.encode(context, &mut out).unwrap();
            let body = out.freeze();
            let mut reader = Reader::new(&body);
            assert_eq!(
                Properties::decode(&mut reader, context, Sender::Server).unwrap(),
                restricted,
                "{context:?}"
            );
            assert!(reader.is_empty());
        }
        // All 27 identifiers of Table 2-4 are reachable from some context.
        assert_eq!(covered.count_ones(), 27);
    }

    /// Keeps only the properties whose identifier is in `allowed`.
    fn restrict(all: &Properties, allowed: u64) -> Properties {
        let keep = |identifier: u8| allowed & (1u64 << identifier) != 0;
        let mut p = Properties::default();
        macro_rules! copy {
            ($field:ident, $id:expr) => {
                if keep($id) {
                    p.$field = all.$field.clone();
                }
            };
        }
        copy!(payload_format_indicator, id::PAYLOAD_FORMAT_INDICATOR);
        copy!(message_expiry_interval, id::MESSAGE_EXPIRY_INTERVAL);
        copy!(content_type, id::CONTENT_TYPE);
        copy!(response_topic, id::RESPONSE_TOPIC);
        copy!(correlation_data, id::CORRELATION_DATA);
        copy!(subscription_identifiers, id::SUBSCRIPTION_IDENTIFIER);
        copy!(session_expiry_interval, id::SESSION_EXPIRY_INTERVAL);
        copy!(assigned_client_identifier, id::ASSIGNED_CLIENT_IDENTIFIER);
        copy!(server_keep_alive, id::SERVER_KEEP_ALIVE);
        copy!(authentication_method, id::AUTHENTICATION_METHOD);
        copy!(authentication_data, id::AUTHENTICATION_DATA);
        copy!(request_problem_information, id::REQUEST_PROBLEM_INFORMATION);
        copy!(will_delay_interval, id::WILL_DELAY_INTERVAL);
        copy!(
            request_response_information,
            id::REQUEST_RESPONSE_INFORMATION
        );
        copy!(response_information, id::RESPONSE_INFORMATION);
        copy!(server_reference, id::SERVER_REFERENCE);
        copy!(reason_string, id::REASON_STRING);
        copy!(receive_maximum, id::RECEIVE_MAXIMUM);
        copy!(topic_alias_maximum, id::TOPIC_ALIAS_MAXIMUM);
        copy!(topic_alias, id::TOPIC_ALIAS);
        copy!(maximum_qos, id::MAXIMUM_QOS);
        copy!(retain_available, id::RETAIN_AVAILABLE);
        copy!(user_properties, id::USER_PROPERTY);
        copy!(maximum_packet_size, id::MAXIMUM_PACKET_SIZE);
        copy!(
            wildcard_subscription_available,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE
        );
        copy!(
            subscription_identifier_available,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        );
        copy!(
            shared_subscription_available,
            id::SHARED_SUBSCRIPTION_AVAILABLE
        );
        p
    }

    #[test]
    fn duplicate_single_valued_property_is_protocol_error() {
        let error = decode(
            &[10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2],
            PropertyContext::Publish,
        )
        .unwrap_err();
        assert_eq!(error, MqttError::DuplicateProperty);
        assert_eq!(error.reason_code().0, 0x82);
    }

    #[test]
    fn user_properties_repeat_in_order() {
        let props = decode(
            &[
                12, 0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2',
            ][..],
            PropertyContext::Publish,
        );
        // Length 12 is short by 2: the second pair runs past the block.
        assert_eq!(props, Err(MqttError::InvalidPropertyLength));
        let props = decode(
            &[
                14, 0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2',
            ],
            PropertyContext::Publish,
        )
        .unwrap();
        let values: Vec<&[u8]> = props.user_properties.iter().map(|p| &p.value[..]).collect();
        assert_eq!(values, vec![&b"1"[..], &b"2"[..]]);
    }

    #[test]
    fn subscription_identifier_in_a_client_publish_is_a_protocol_error() {
        // [MQTT-3.3.4-6]; the same block is fine from a server (checked below and above).
        let block = &[2, 0x0B, 1];
        let error = decode_from(block, PropertyContext::Publish, Sender::Client).unwrap_err();
        assert_eq!(error, MqttError::PropertyNotAllowedFromSender);
        assert_eq!(error.reason_code().0, 0x82);
        assert_eq!(
            decode_from(block, PropertyContext::Publish, Sender::Server)
                .unwrap()
                .subscription_identifiers,
            vec![1]
        );
        // In SUBSCRIBE a client may send one.
        assert_eq!(
            decode_from(block, PropertyContext::Subscribe, Sender::Client)
                .unwrap()
                .subscription_identifiers,
            vec![1]
        );
        // Topic Alias is allowed in PUBLISH both ways.
        for sender in [Sender::Client, Sender::Server] {
            assert_eq!(
                decode_from(&[3, 0x23, 0, 1], PropertyContext::Publish, sender)
                    .unwrap()
                    .topic_alias,
                NonZeroU16::new(1)
            );
        }
    }

    #[test]
    fn forbidden_from_is_a_subset_of_allowed() {
        for context in ALL_CONTEXTS {
            for sender in [Sender::Client, Sender::Server] {
                let forbidden = context.forbidden_from(sender);
                assert_eq!(forbidden & !context.allowed(), 0, "{context:?} {sender:?}");
            }
        }
    }

    #[test]
    fn subscription_identifier_repeats_in_publish_only() {
        let block = &[4, 0x0B, 1, 0x0B, 2];
        assert_eq!(
            decode(block, PropertyContext::Publish)
                .unwrap()
                .subscription_identifiers,
            vec![1, 2]
        );
        assert_eq!(
            decode(block, PropertyContext::Subscribe),
            Err(MqttError::DuplicateProperty)
        );
    }

    #[test]
    fn property_not_allowed_in_context_is_malformed() {
        // Topic Alias in CONNECT.
        let error = decode(&[3, 0x23, 0, 1], PropertyContext::Connect).unwrap_err();
        assert_eq!(error, MqttError::InvalidPropertyId);
        assert_eq!(error.reason_code().0, 0x81);
        // Unknown identifier 0x05.
        assert_eq!(
            decode(&[2, 0x05, 0], PropertyContext::Publish),
            Err(MqttError::InvalidPropertyId)
        );
    }

    #[test]
    fn forbidden_values_are_protocol_errors() {
        let cases: [&'static [u8]; 7] = [
            &[2, 0x01, 2],          // Payload Format Indicator 2
            &[3, 0x21, 0, 0],       // Receive Maximum 0 (CONNECT)
            &[5, 0x27, 0, 0, 0, 0], // Maximum Packet Size 0 (CONNECT)
            &[2, 0x17, 7],          // Request Problem Information 7 (CONNECT)
            &[3, 0x23, 0, 0],       // Topic Alias 0 (PUBLISH)
            &[2, 0x0B, 0],          // Subscription Identifier 0 (PUBLISH)
            &[2, 0x24, 2],          // Maximum QoS 2 (CONNACK)
        ];
        let contexts = [
            PropertyContext::Publish,
            PropertyContext::Connect,
            PropertyContext::Connect,
            PropertyContext::Connect,
            PropertyContext::Publish,
            PropertyContext::Publish,
            PropertyContext::ConnAck,
        ];
        for (block, context) in cases.into_iter().zip(contexts) {
            let error = decode(block, context).unwrap_err();
            assert_eq!(error, MqttError::InvalidPropertyValue, "{block:?}");
            assert_eq!(error.reason_code().0, 0x82);
        }
    }

    #[test]
    fn property_length_bounds() {
        // Declared block longer than the packet.
        assert_eq!(
            decode(&[9, 0x01, 1], PropertyContext::Publish),
            Err(MqttError::InvalidPropertyLength)
        );
        // A value running past the block end (Message Expiry needs 4 bytes, block has 3).
        let body = Bytes::from_static(&[3, 0x02, 0, 0, 0, 0]);
        let mut reader = Reader::new(&body);
        assert_eq!(
            Properties::decode(&mut reader, PropertyContext::Publish, Sender::Server),
            Err(MqttError::InvalidPropertyLength)
        );
        // Malformed property length varint.
        assert_eq!(
            decode(&[0x80, 0x00], PropertyContext::Publish),
            Err(MqttError::MalformedVarint)
        );
    }

    #[test]
    fn auth_data_without_method_is_refused_both_ways() {
        assert_eq!(
            decode(&[3, 0x16, 0, 0], PropertyContext::Auth),
            Err(MqttError::AuthDataWithoutMethod)
        );
        let props = Properties {
            authentication_data: Some(Bytes::new()),
            ..Properties::default()
        };
        assert_eq!(
            props.encode(PropertyContext::Auth, &mut BytesMut::new()),
            Err(EncodeError::InvalidProperty)
        );
    }

    #[test]
    fn encode_refuses_property_outside_context() {
        let props = Properties {
            topic_alias: NonZeroU16::new(1),
            ..Properties::default()
        };
        assert_eq!(
            props.encode(PropertyContext::Connect, &mut BytesMut::new()),
            Err(EncodeError::InvalidProperty)
        );
    }

    #[test]
    fn response_topic_with_wildcard_is_refused() {
        assert_eq!(
            decode(&[4, 0x08, 0, 1, b'#'], PropertyContext::Publish),
            Err(MqttError::InvalidTopicName)
        );
    }
}
