//! Sans-IO MQTT 3.1.1 (protocol level 4) and 5.0 (level 5) codec.
//!
//! What it does:
//! - decodes every control packet (CONNECT .. AUTH) and every 5.0 property from a receive buffer,
//!   validating what the specs make a Malformed Packet or Protocol Error at the packet level
//!   (including the property rules that depend on who sent the packet, [`Sender`]), and maps each
//!   error to the reason code to answer with ([`MqttError::reason_code`]);
//! - refuses a packet as early as the bytes allow: bad type/flags from the first byte, an oversized
//!   packet from the fixed header alone ([`DecodeLimits`]), before the body is buffered;
//! - hands out zero-copy fields: topic, payload, client id, user name, password, will topic/payload
//!   and every property string/binary are `bytes::Bytes` slices of the frozen receive buffer;
//! - encodes any packet into a caller-owned `BytesMut`, such that `decode(encode(p)) == p`.
//!
//! ```text
//!  recv bytes ─► BytesMut ─► decode_connect (first packet: learns the version)
//!                         └► decode_packet(version, sender) ─► Decoded::Complete(Packet) | Incomplete | Err(MqttError)
//!  Packet ─► encode(version) ─► caller's BytesMut ─► send
//! ```
//!
//! What it does NOT do: sockets, timers (keep-alive), session state (packet-id allocation, QoS
//! flows, topic-alias maps, "second CONNECT is a Protocol Error", Receive Maximum accounting),
//! topic matching, authentication, or validating a UTF-8 payload announced by Payload Format
//! Indicator (a "MAY" in the spec). MQTT 3.1 (`MQIsdp`, level 3) is refused as an unsupported
//! version. The encoder checks lengths, flags, identifiers, reason codes and properties, but trusts
//! the caller's strings to be valid UTF-8 and valid topic syntax.
//!
//! Normative statement ids in comments are 5.0 numbering unless marked 3.1.1.
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod topic;
mod wire;

#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use decode::{decode_connect, decode_packet, peek_remaining_length, DecodeLimits, Decoded};
pub use encode::{encode, encoded_len};
pub use error::{EncodeError, MqttError, ReasonCode};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, RetainHandling, Sender, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
pub use properties::{id as property_id, Properties, PropertyContext, UserProperty};
pub use topic::{validate_topic_filter, validate_topic_name};
pub use wire::MAX_VARINT as MAX_REMAINING_LENGTH;

/// Every (version, sender) a packet stream decodes differently as (3.1.1 has no properties: the
/// sender changes nothing there).
const STREAM_KINDS: [(ProtocolVersion, Sender); 3] = [
    (ProtocolVersion::V311, Sender::Client),
    (ProtocolVersion::V5, Sender::Client),
    (ProtocolVersion::V5, Sender::Server),
];

/// Fuzz entry point: decodes `data` every way a connection can (first packet as CONNECT, then the
/// stream as 3.1.1 and as 5.0 packets, from a client and from a server) and discards the results.
/// Must never panic.
pub fn fuzz_decode(data: &[u8]) {
    let limits = DecodeLimits::default();
    let _ = peek_remaining_length(data);
    let mut buf = BytesMut::from(data);
    let _ = decode_connect(&mut buf, &limits);
    for (version, sender) in STREAM_KINDS {
        let mut buf = BytesMut::from(data);
        while let Ok(Decoded::Complete(_)) = decode_packet(&mut buf, version, sender, &limits) {}
    }
}

/// Fuzz entry point: every packet that decodes from `data` (as 3.1.1 and as 5.0, from either
/// sender) must encode, and the encoding must decode (from the same sender) to an equal packet
/// whose re-encoding is byte-identical.
///
/// # Panics
///
/// Only when the codec breaks that invariant — which is the bug the fuzzer is looking for.
pub fn fuzz_roundtrip(data: &[u8]) {
    let unlimited = DecodeLimits {
        max_packet_size: u32::MAX,
    };
    for (version, sender) in STREAM_KINDS {
        let mut buf = BytesMut::from(data);
        while let Ok(Decoded::Complete(packet)) =
            decode_packet(&mut buf, version, sender, &unlimited)
        {
            let mut encoded = BytesMut::new();
            if let Err(error) = encode(&packet, version, &mut encoded) {
                panic!("decoded packet failed to encode ({error:?}): {packet:?}");
            }
            assert_eq!(
                encoded_len(&packet, version),
                Ok(encoded.len()),
                "encoded_len disagrees"
            );
            let first_encoding = encoded.clone().freeze();
            match decode_packet(&mut encoded, version, sender, &unlimited) {
                Ok(Decoded::Complete(again)) => {
                    assert_eq!(again, packet, "re-decoded packet differs");
                    assert!(encoded.is_empty(), "re-decode left bytes behind");
                    let mut second_encoding = BytesMut::new();
                    if let Err(error) = encode(&again, version, &mut second_encoding) {
                        panic!("re-decoded packet failed to encode ({error:?})");
                    }
                    assert_eq!(
                        second_encoding.freeze(),
                        first_encoding,
                        "encoding is not stable"
                    );
                }
                other => panic!("encoded packet did not decode: {other:?} from {packet:?}"),
            }
        }
    }
}
