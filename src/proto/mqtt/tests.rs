//! Codec tests: known-good wire vectors for every packet type in 3.1.1 and 5.0 (written from the
//! spec's field layouts), every validation rule with its reason code, incremental decoding,
//! zero-copy, size limits, encoder refusals, and a small deterministic mutation run of the fuzz
//! entry points.

use core::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};

use super::*;

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn pid(value: u16) -> NonZeroU16 {
    NonZeroU16::new(value).unwrap()
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// A packet from its first byte and body parts; the remaining length (< 128 here) is one byte.
fn frame(first: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    assert!(
        body.len() < 128,
        "test helper only writes one-byte remaining lengths"
    );
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Decodes `bytes` as sent by a server (Table 2-4 alone decides which properties are allowed;
/// the client-only refusals are checked by [`check_vector`] and the property-table tests).
fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Decoded<Packet>, MqttError> {
    decode_all_from(bytes, version, Sender::Server)
}

fn decode_all_from(
    bytes: &[u8],
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Decoded<Packet>, MqttError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode_packet(&mut buf, version, sender, &DecodeLimits::default());
    if let Ok(Decoded::Complete(_)) = &result {
        assert!(
            buf.is_empty(),
            "a complete decode must consume exactly the packet"
        );
    }
    result
}

fn decode_err(bytes: &[u8], version: ProtocolVersion) -> MqttError {
    decode_err_from(bytes, version, Sender::Server)
}

fn decode_err_from(bytes: &[u8], version: ProtocolVersion, sender: Sender) -> MqttError {
    match decode_all_from(bytes, version, sender) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Asserts `bytes` decodes to `expected` (also when fed one byte at a time) and that `expected`
/// encodes back to exactly `bytes`. From a client it decodes the same, unless it is a PUBLISH
/// with a Subscription Identifier, which a client must not send ([MQTT-3.3.4-6]).
fn check_vector(bytes: &[u8], version: ProtocolVersion, expected: &Packet) {
    assert_eq!(
        decode_all(bytes, version),
        Ok(Decoded::Complete(expected.clone())),
        "decode {bytes:02X?}"
    );
    let from_client = match expected {
        Packet::Publish(p) if !p.properties.subscription_identifiers.is_empty() => {
            Err(MqttError::PropertyNotAllowedFromSender)
        }
        _ => Ok(Decoded::Complete(expected.clone())),
    };
    assert_eq!(
        decode_all_from(bytes, version, Sender::Client),
        from_client,
        "decode from a client {bytes:02X?}"
    );
    let mut out = BytesMut::new();
    encode(expected, version, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encode {expected:?}");
    assert_eq!(encoded_len(expected, version), Ok(bytes.len()));
    check_incremental(bytes, version, expected);
}

/// Feeds `bytes` one byte at a time: Incomplete (buffer untouched) until the last byte.
fn check_incremental(bytes: &[u8], version: ProtocolVersion, expected: &Packet) {
    let mut buf = BytesMut::new();
    for (index, &byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let result =
            decode_packet(&mut buf, version, Sender::Server, &DecodeLimits::default()).unwrap();
        if index + 1 < bytes.len() {
            match result {
                Decoded::Incomplete { needed } => {
                    assert_eq!(buf.len(), index + 1, "incomplete must not consume");
                    if let Some(needed) = needed {
                        assert_eq!(needed, bytes.len() - (index + 1));
                    }
                }
                Decoded::Complete(packet) => panic!("complete too early at {index}: {packet:?}"),
            }
        } else {
            assert_eq!(result, Decoded::Complete(expected.clone()));
            assert!(buf.is_empty());
        }
    }
}

// ---------------------------------------------------------------- known-good vectors, 3.1.1

fn connect_v3_minimal() -> Connect {
    Connect {
        protocol_version: V3,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: b(b"abc"),
        will: None,
        username: None,
        password: None,
    }
}

#[test]
fn v311_connect_minimal() {
    let bytes = [
        0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c',
    ];
    check_vector(&bytes, V3, &Packet::Connect(Box::new(connect_v3_minimal())));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode_connect(&mut buf, &DecodeLimits::default()),
        Ok(Decoded::Complete(connect_v3_minimal()))
    );
}

#[test]
fn v311_connect_with_will_user_password() {
    // Flags 0xEE: user name, password, will retain, will QoS 1, will, clean session.
    let bytes = [
        0x10, 0x1E, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, 0, 2, b'i', b'd', 0, 3, b'w',
        b'/', b't', 0, 2, b'b', b'y', 0, 1, b'u', 0, 2, b'p', b'w',
    ];
    let expected = Connect {
        protocol_version: V3,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: b(b"id"),
        will: Some(Will {
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            topic: b(b"w/t"),
            payload: b(b"by"),
        }),
        username: Some(b(b"u")),
        password: Some(b(b"pw")),
    };
    check_vector(&bytes, V3, &Packet::Connect(Box::new(expected)));
}

#[test]
fn v311_connack() {
    let expected = ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check_vector(&[0x20, 0x02, 0x01, 0x00], V3, &Packet::ConnAck(expected));
    // Return code 0x05 Not authorized.
    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode(5),
        properties: Properties::default(),
    };
    check_vector(&[0x20, 0x02, 0x00, 0x05], V3, &Packet::ConnAck(refused));
}

#[test]
fn v311_publish_qos0_and_qos1() {
    let qos0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b(b"a/b"),
        packet_id: None,
        properties: Properties::default(),
        payload: b(b"hello"),
    };
    check_vector(
        &[
            0x30, 0x0A, 0, 3, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
        ],
        V3,
        &Packet::Publish(qos0),
    );
    // 0x3B: DUP, QoS 1, RETAIN.
    let qos1 = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: b(b"t"),
        packet_id: Some(pid(10)),
        properties: Properties::default(),
        payload: b(b"xy"),
    };
    check_vector(
        &[0x3B, 0x07, 0, 1, b't', 0, 10, b'x', b'y'],
        V3,
        &Packet::Publish(qos1),
    );
    // QoS 2, empty payload.
    let qos2 = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: b(b"t"),
        packet_id: Some(pid(0x1234)),
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    check_vector(
        &[0x34, 0x05, 0, 1, b't', 0x12, 0x34],
        V3,
        &Packet::Publish(qos2),
    );
}

#[test]
fn v311_pub_responses() {
    let response = PubResponse::success(pid(10));
    check_vector(&[0x40, 0x02, 0, 10], V3, &Packet::PubAck(response.clone()));
    check_vector(&[0x50, 0x02, 0, 10], V3, &Packet::PubRec(response.clone()));
    check_vector(&[0x62, 0x02, 0, 10], V3, &Packet::PubRel(response.clone()));
    check_vector(&[0x70, 0x02, 0, 10], V3, &Packet::PubComp(response));
}

#[test]
fn v311_subscribe_suback() {
    let subscribe = Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: vec![
            Subscription {
                filter: b(b"a/+"),
                options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            },
            Subscription {
                filter: b(b"#"),
                options: SubscriptionOptions::with_qos(QoS::ExactlyOnce),
            },
        ],
    };
    let bytes = [
        0x82, 0x0C, 0, 1, 0, 3, b'a', b'/', b'+', 0x01, 0, 1, b'#', 0x02,
    ];
    check_vector(&bytes, V3, &Packet::Subscribe(subscribe));
    let suback = SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reason_codes: vec![ReasonCode(1), ReasonCode(2), ReasonCode(0x80)],
    };
    check_vector(
        &[0x90, 0x05, 0, 1, 0x01, 0x02, 0x80],
        V3,
        &Packet::SubAck(suback),
    );
}

#[test]
fn v311_unsubscribe_unsuback() {
    let unsubscribe = Unsubscribe {
        packet_id: pid(2),
        properties: Properties::default(),
        filters: vec![b(b"a/b")],
    };
    check_vector(
        &[0xA2, 0x07, 0, 2, 0, 3, b'a', b'/', b'b'],
        V3,
        &Packet::Unsubscribe(unsubscribe),
    );
    let unsuback = UnsubAck {
        packet_id: pid(2),
        properties: Properties::default(),
        reason_codes: vec![],
    };
    check_vector(&[0xB0, 0x02, 0, 2], V3, &Packet::UnsubAck(unsuback));
}

#[test]
fn v311_ping_and_disconnect() {
    check_vector(&[0xC0, 0x00], V3, &Packet::PingReq);
    check_vector(&[0xD0, 0x00], V3, &Packet::PingResp);
    let disconnect = Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check_vector(&[0xE0, 0x00], V3, &Packet::Disconnect(disconnect));
}

// ---------------------------------------------------------------- known-good vectors, 5.0

#[test]
fn v5_connect_with_properties_and_will() {
    // Flags 0x96: user name, will QoS 2, will, clean start.
    let bytes = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x96, 0, 30],
            // Properties (15): Session Expiry 3600, Receive Maximum 20, User Property k=v.
            &[
                15, 0x11, 0, 0, 0x0E, 0x10, 0x21, 0, 20, 0x26, 0, 1, b'k', 0, 1, b'v',
            ],
            &[0, 2, b'c', b'1'],
            // Will properties (5): Will Delay Interval 5.
            &[5, 0x18, 0, 0, 0, 5],
            &[0, 1, b'w', 0, 1, b'x'],
            &[0, 1, b'u'],
        ],
    );
    let expected = Connect {
        protocol_version: V5,
        clean_start: true,
        keep_alive: 30,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(20),
            user_properties: vec![UserProperty {
                name: b(b"k"),
                value: b(b"v"),
            }],
            ..Properties::default()
        },
        client_id: b(b"c1"),
        will: Some(Will {
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
            topic: b(b"w"),
            payload: b(b"x"),
        }),
        username: Some(b(b"u")),
        password: None,
    };
    // Decodes the same whatever version the caller believes: CONNECT carries its own.
    check_vector(&bytes, V5, &Packet::Connect(Box::new(expected.clone())));
    check_vector(&bytes, V3, &Packet::Connect(Box::new(expected.clone())));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode_connect(&mut buf, &DecodeLimits::default()),
        Ok(Decoded::Complete(expected))
    );
}

#[test]
fn v5_connect_password_without_username_is_allowed() {
    let bytes = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x40, 0, 0, 0],
            &[0, 0],
            &[0, 1, b'p'],
        ],
    );
    let expected = Connect {
        protocol_version: V5,
        clean_start: false,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: Bytes::new(),
        will: None,
        username: None,
        password: Some(b(b"p")),
    };
    check_vector(&bytes, V5, &Packet::Connect(Box::new(expected)));
}

#[test]
fn v5_connack() {
    check_vector(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }),
    );
    let bytes = frame(
        0x20,
        &[
            &[0x01, 0x00],
            &[10, 0x12, 0, 2, b'i', b'd', 0x22, 0, 10, 0x24, 1],
        ],
    );
    let expected = ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties {
            assigned_client_identifier: Some(b(b"id")),
            topic_alias_maximum: Some(10),
            maximum_qos: Some(QoS::AtLeastOnce),
            ..Properties::default()
        },
    };
    check_vector(&bytes, V5, &Packet::ConnAck(expected));
    // 0x84 Unsupported Protocol Version, the answer to a refused CONNECT.
    check_vector(
        &[0x20, 0x03, 0x00, 0x84, 0x00],
        V5,
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            properties: Properties::default(),
        }),
    );
}

#[test]
fn v5_publish() {
    // QoS 1 with Payload Format Indicator, Message Expiry 60, Topic Alias 5, Subscription Id 128.
    let bytes = frame(
        0x32,
        &[
            &[0, 3, b'a', b'/', b'b', 0, 1],
            &[13, 0x01, 1, 0x02, 0, 0, 0, 60, 0x0B, 0x80, 0x01, 0x23, 0, 5],
            b"hi",
        ],
    );
    let expected = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: b(b"a/b"),
        packet_id: Some(pid(1)),
        properties: Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            subscription_identifiers: vec![128],
            topic_alias: NonZeroU16::new(5),
            ..Properties::default()
        },
        payload: b(b"hi"),
    };
    check_vector(&bytes, V5, &Packet::Publish(expected));
    // QoS 0, no properties.
    let plain = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: b(b"t"),
        packet_id: None,
        properties: Properties::default(),
        payload: b(b"p"),
    };
    check_vector(
        &[0x31, 0x05, 0, 1, b't', 0, b'p'],
        V5,
        &Packet::Publish(plain),
    );
    // Empty topic name standing for Topic Alias 1.
    let aliased = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Bytes::new(),
        packet_id: None,
        properties: Properties {
            topic_alias: NonZeroU16::new(1),
            ..Properties::default()
        },
        payload: b(b"p"),
    };
    check_vector(
        &[0x30, 0x07, 0, 0, 3, 0x23, 0, 1, b'p'],
        V5,
        &Packet::Publish(aliased),
    );
}

#[test]
fn v5_pub_responses_short_and_long_forms() {
    check_vector(
        &[0x40, 0x02, 0, 1],
        V5,
        &Packet::PubAck(PubResponse::success(pid(1))),
    );
    let no_subscribers = PubResponse {
        packet_id: pid(1),
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::default(),
    };
    check_vector(
        &[0x40, 0x03, 0, 1, 0x10],
        V5,
        &Packet::PubAck(no_subscribers),
    );
    let with_reason = PubResponse {
        packet_id: pid(1),
        reason_code: ReasonCode::NOT_AUTHORIZED,
        properties: Properties {
            reason_string: Some(b(b"no")),
            ..Properties::default()
        },
    };
    check_vector(
        &[0x40, 0x09, 0, 1, 0x87, 5, 0x1F, 0, 2, b'n', b'o'],
        V5,
        &Packet::PubAck(with_reason),
    );
    let rec = PubResponse {
        packet_id: pid(7),
        reason_code: ReasonCode(0x80),
        properties: Properties::default(),
    };
    check_vector(&[0x50, 0x03, 0, 7, 0x80], V5, &Packet::PubRec(rec));
    let rel = PubResponse {
        packet_id: pid(7),
        reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        properties: Properties::default(),
    };
    check_vector(&[0x62, 0x03, 0, 7, 0x92], V5, &Packet::PubRel(rel));
    check_vector(
        &[0x70, 0x02, 0, 7],
        V5,
        &Packet::PubComp(PubResponse::success(pid(7))),
    );
    // The long form with explicit Success and an empty property block decodes to the same packet
    // (and re-encodes in the short form).
    assert_eq!(
        decode_all(&[0x40, 0x04, 0, 1, 0x00, 0x00], V5),
        Ok(Decoded::Complete(Packet::PubAck(PubResponse::success(
            pid(1)
        ))))
    );
}

#[test]
fn v5_subscribe_suback() {
    // Options 0x2D: QoS 1, No Local, Retain As Published, Retain Handling 2.
    let bytes = frame(
        0x82,
        &[
            &[0, 1, 2, 0x0B, 5],
            &[0, 3, b'a', b'/', b'#', 0x2D],
            &[
                0, 10, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x00,
            ],
        ],
    );
    let expected = Subscribe {
        packet_id: pid(1),
        properties: Properties {
            subscription_identifiers: vec![5],
            ..Properties::default()
        },
        subscriptions: vec![
            Subscription {
                filter: b(b"a/#"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription {
                filter: b(b"$share/g/x"),
                options: SubscriptionOptions::with_qos(QoS::AtMostOnce),
            },
        ],
    };
    check_vector(&bytes, V5, &Packet::Subscribe(expected));
    let suback = SubAck {
        packet_id: pid(1),
        properties: Properties {
            reason_string: Some(b(b"r")),
            ..Properties::default()
        },
        reason_codes: vec![ReasonCode(1), ReasonCode::TOPIC_FILTER_INVALID],
    };
    check_vector(
        &[0x90, 0x09, 0, 1, 4, 0x1F, 0, 1, b'r', 0x01, 0x8F],
        V5,
        &Packet::SubAck(suback),
    );
}

#[test]
fn v5_unsubscribe_unsuback() {
    let unsubscribe = Unsubscribe {
        packet_id: pid(3),
        properties: Properties {
            user_properties: vec![UserProperty {
                name: b(b"a"),
                value: b(b""),
            }],
            ..Properties::default()
        },
        filters: vec![b(b"a/b"), b(b"+")],
    };
    let bytes = frame(
        0xA2,
        &[
            &[0, 3, 6, 0x26, 0, 1, b'a', 0, 0],
            &[0, 3, b'a', b'/', b'b', 0, 1, b'+'],
        ],
    );
    check_vector(&bytes, V5, &Packet::Unsubscribe(unsubscribe));
    let unsuback = UnsubAck {
        packet_id: pid(3),
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
    };
    check_vector(
        &[0xB0, 0x05, 0, 3, 0, 0x00, 0x11],
        V5,
        &Packet::UnsubAck(unsuback),
    );
}

#[test]
fn v5_ping_disconnect_auth() {
    check_vector(&[0xC0, 0x00], V5, &Packet::PingReq);
    check_vector(&[0xD0, 0x00], V5, &Packet::PingResp);
    let normal = Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check_vector(&[0xE0, 0x00], V5, &Packet::Disconnect(normal));
    let with_will = Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    };
    check_vector(&[0xE0, 0x01, 0x04], V5, &Packet::Disconnect(with_will));
    let taken_over = Disconnect {
        reason_code: ReasonCode(0x8E),
        properties: Properties {
            session_expiry_interval: Some(0),
            server_reference: Some(b(b"s")),
            ..Properties::default()
        },
    };
    check_vector(
        &[0xE0, 0x0B, 0x8E, 9, 0x11, 0, 0, 0, 0, 0x1C, 0, 1, b's'],
        V5,
        &Packet::Disconnect(taken_over),
    );
    let auth_ok = Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    check_vector(&[0xF0, 0x00], V5, &Packet::Auth(auth_ok));
    let auth_continue = Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some(b(b"SCRAM")),
            authentication_data: Some(b(&[1, 2])),
            ..Properties::default()
        },
    };
    let bytes = frame(
        0xF0,
        &[&[
            0x18, 13, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 2, 1, 2,
        ]],
    );
    check_vector(&bytes, V5, &Packet::Auth(auth_continue));
}

#[test]
fn big_remaining_length_uses_multi_byte_varint() {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b(b"t"),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; 20_000]),
    };
    let packet = Packet::Publish(publish);
    let mut out = BytesMut::new();
    encode(&packet, V3, &mut out).unwrap();
    // 20,003 bytes of remaining length need three varint bytes.
    assert_eq!(peek_remaining_length(&out), Ok(Some((0x30, 20_003, 4))));
    check_incremental(&out.clone(), V3, &packet);
}

// ---------------------------------------------------------------- validation rules

#[test]
fn malformed_varint_is_malformed_packet() {
    let error = decode_err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V3);
    assert_eq!(error, MqttError::MalformedVarint);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Non-minimal encoding of 0 ([MQTT-1.5.5-1]).
    assert_eq!(
        decode_err(&[0xC0, 0x80, 0x00], V5),
        MqttError::MalformedVarint
    );
    assert_eq!(
        peek_remaining_length(&[0xC0, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(MqttError::MalformedVarint)
    );
}

#[test]
fn oversize_refused_from_the_header_alone() {
    // Remaining length 262,144 (0x80 0x80 0x10): with the header, above the 256 KiB default.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x10][..]);
    let error = decode_packet(&mut buf, V3, Sender::Server, &DecodeLimits::default()).unwrap_err();
    assert_eq!(error, MqttError::PacketTooLarge);
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // A small limit: 2-byte header + 100 > 64, refused with only the fixed header buffered.
    let limits = DecodeLimits {
        max_packet_size: 64,
    };
    let mut buf = BytesMut::from(&[0x30, 100][..]);
    assert_eq!(
        decode_packet(&mut buf, V5, Sender::Server, &limits),
        Err(MqttError::PacketTooLarge)
    );
    let mut buf = BytesMut::from(&[0x10, 100][..]);
    assert_eq!(
        decode_connect(&mut buf, &limits),
        Err(MqttError::PacketTooLarge)
    );
    // Exactly at the limit is accepted: 2 + 62 = 64.
    let mut body = vec![0u8, 1, b't'];
    body.resize(62, b'x');
    let mut bytes = vec![0x30, 62];
    bytes.extend_from_slice(&body);
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode_packet(&mut buf, V3, Sender::Server, &limits),
        Ok(Decoded::Complete(Packet::Publish(_)))
    ));
}

#[test]
fn incomplete_reports_needed_bytes() {
    let mut buf = BytesMut::new();
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &DecodeLimits::default()),
        Ok(Decoded::Incomplete { needed: None })
    );
    let mut buf = BytesMut::from(&[0x30, 0x80][..]);
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &DecodeLimits::default()),
        Ok(Decoded::Incomplete { needed: None })
    );
    let mut buf = BytesMut::from(&[0x30, 0x05, 0, 1][..]);
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &DecodeLimits::default()),
        Ok(Decoded::Incomplete { needed: Some(3) })
    );
    assert_eq!(buf.len(), 4);
    assert_eq!(peek_remaining_length(&[0x30]), Ok(None));
    assert_eq!(
        peek_remaining_length(&[0x30, 0x05, 0]),
        Ok(Some((0x30, 5, 2)))
    );
}

#[test]
fn two_packets_in_one_buffer_decode_in_turn() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0x40, 0x02, 0, 9, 0xD0][..]);
    let limits = DecodeLimits::default();
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &limits),
        Ok(Decoded::Complete(Packet::PingReq))
    );
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &limits),
        Ok(Decoded::Complete(Packet::PubAck(PubResponse::success(
            pid(9)
        ))))
    );
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &limits),
        Ok(Decoded::Incomplete { needed: None })
    );
    assert_eq!(&buf[..], &[0xD0]);
}

#[test]
fn reserved_fixed_header_flags_refused_from_first_byte() {
    // Each refused with only the first byte buffered ([MQTT-2.1.3-1]).
    for first in [0x41u8, 0x12, 0x21, 0x60, 0x63, 0x80, 0xA0, 0xC8, 0xE1, 0xF1] {
        let error = decode_err(&[first], V5);
        assert_eq!(error, MqttError::ReservedFlags, "first byte {first:#04X}");
        assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    assert_eq!(decode_err(&[0x00, 0x00], V5), MqttError::InvalidPacketType);
}

#[test]
fn qos_3_and_dup_on_qos_0_refused() {
    let error = decode_err(&[0x36], V3);
    assert_eq!(error, MqttError::InvalidQos);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    assert_eq!(
        decode_err(&[0x38, 0x03, 0, 1, b't'], V3),
        MqttError::DupWithQos0
    );
}

#[test]
fn zero_packet_id_is_protocol_error() {
    let cases: [&[u8]; 5] = [
        &[0x32, 0x05, 0, 1, b't', 0, 0],
        &[0x40, 0x02, 0, 0],
        &[0x62, 0x02, 0, 0],
        &[0x82, 0x06, 0, 0, 0, 1, b'a', 0],
        &[0xA2, 0x05, 0, 0, 0, 1, b'a'],
    ];
    for bytes in cases {
        let error = decode_err(bytes, V3);
        assert_eq!(error, MqttError::ZeroPacketId, "{bytes:02X?}");
        assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn strings_must_be_utf8_without_nul() {
    let error = decode_err(&[0x30, 0x04, 0, 2, b'a', 0xFF], V3);
    assert_eq!(error, MqttError::InvalidUtf8);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Encoded surrogate U+D800 in a client id.
    let connect = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0],
            &[0, 3, 0xED, 0xA0, 0x80],
        ],
    );
    assert_eq!(decode_err(&connect, V3), MqttError::InvalidUtf8);
    let error = decode_err(&[0x30, 0x04, 0, 2, b'a', 0x00], V3);
    assert_eq!(error, MqttError::NullCharInString);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // A NUL in a user property value.
    let publish = frame(0x30, &[&[0, 1, b't'], &[7, 0x26, 0, 1, b'k', 0, 1, 0x00]]);
    assert_eq!(decode_err(&publish, V5), MqttError::NullCharInString);
}

#[test]
fn publish_topic_name_rules() {
    for topic in [&b"a/+"[..], b"#", b"a/#"] {
        let mut bytes = vec![0x30, (2 + topic.len()) as u8, 0, topic.len() as u8];
        bytes.extend_from_slice(topic);
        let error = decode_err(&bytes, V3);
        assert_eq!(error, MqttError::InvalidTopicName);
        assert_eq!(error.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    }
    // Empty topic: never in 3.1.1, in 5.0 only with a Topic Alias.
    assert_eq!(
        decode_err(&[0x30, 0x02, 0, 0], V3),
        MqttError::InvalidTopicName
    );
    assert_eq!(
        decode_err(&[0x30, 0x03, 0, 0, 0], V5),
        MqttError::InvalidTopicName
    );
    // Will topic with a wildcard.
    let connect = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 0],
            &[0, 1, b'c'],
            &[0, 1, b'+', 0, 0],
        ],
    );
    assert_eq!(decode_err(&connect, V3), MqttError::InvalidTopicName);
}

#[test]
fn topic_filter_rules() {
    for filter in [&b"a/#/b"[..], b"a#", b"a+/b", b""] {
        let mut bytes = vec![0x82, (5 + filter.len()) as u8, 0, 1, 0, filter.len() as u8];
        bytes.extend_from_slice(filter);
        bytes.push(0);
        let error = decode_err(&bytes, V3);
        assert_eq!(
            error,
            MqttError::InvalidTopicFilter,
            "{}",
            String::from_utf8_lossy(filter)
        );
        assert_eq!(error.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
    }
    assert_eq!(
        decode_err(&[0xA2, 0x07, 0, 1, 0, 0, 2, b'#', b'#'], V5),
        MqttError::InvalidTopicFilter
    );
}

#[test]
fn subscribe_and_unsubscribe_need_a_filter() {
    let error = decode_err(&[0x82, 0x02, 0, 1], V3);
    assert_eq!(error, MqttError::NoTopicFilters);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(
        decode_err(&[0x82, 0x03, 0, 1, 0], V5),
        MqttError::NoTopicFilters
    );
    assert_eq!(
        decode_err(&[0xA2, 0x02, 0, 1], V3),
        MqttError::NoTopicFilters
    );
}

#[test]
fn subscription_option_rules() {
    let sub = |version_is_v5: bool, options: u8| {
        let mut bytes = vec![0x82];
        let props: &[u8] = if version_is_v5 { &[0] } else { &[] };
        let body_len = 2 + props.len() + 3 + 1;
        bytes.push(body_len as u8);
        bytes.extend_from_slice(&[0, 1]);
        bytes.extend_from_slice(props);
        bytes.extend_from_slice(&[0, 1, b'a', options]);
        bytes
    };
    // 3.1.1: any of the upper six bits set.
    let error = decode_err(&sub(false, 0x04), V3);
    assert_eq!(error, MqttError::InvalidSubscriptionOptions);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(decode_err(&sub(false, 0x03), V3), MqttError::InvalidQos);
    // 5.0: bits 7-6 reserved, Retain Handling 3 invalid; 0x3C is fine.
    assert_eq!(
        decode_err(&sub(true, 0x40), V5),
        MqttError::InvalidSubscriptionOptions
    );
    assert_eq!(
        decode_err(&sub(true, 0x30), V5),
        MqttError::InvalidSubscriptionOptions
    );
    assert!(matches!(
        decode_all(&sub(true, 0x2C), V5),
        Ok(Decoded::Complete(Packet::Subscribe(_)))
    ));
    // No Local on a shared subscription.
    let bytes = frame(
        0x82,
        &[
            &[0, 1, 0],
            &[0, 9, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/'],
            &[b'a', 0x04],
        ],
    );
    let bytes = {
        // Fix the filter length: "$share/g/a" is 10 bytes.
        let mut fixed = bytes;
        fixed[6] = 10;
        fixed
    };
    let error = decode_err(&bytes, V5);
    assert_eq!(error, MqttError::NoLocalOnSharedSubscription);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

fn connect_bytes(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 0]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x10, &[&body])
}

fn connect_err(bytes: &[u8]) -> MqttError {
    let mut buf = BytesMut::from(bytes);
    match decode_connect(&mut buf, &DecodeLimits::default()) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn connect_flag_rules() {
    let client = [0, 1, b'c'];
    // [MQTT-3.1.2-3] reserved bit.
    let error = connect_err(&connect_bytes(b"MQTT", 4, 0x03, &client));
    assert_eq!(error, MqttError::ReservedConnectFlag);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Will QoS without the Will Flag, Will Retain without the Will Flag.
    assert_eq!(
        connect_err(&connect_bytes(b"MQTT", 4, 0x08, &client)),
        MqttError::InvalidWillFlags
    );
    assert_eq!(
        connect_err(&connect_bytes(b"MQTT", 5, 0x20, &client)),
        MqttError::InvalidWillFlags
    );
    // Will QoS 3.
    assert_eq!(
        connect_err(&connect_bytes(b"MQTT", 4, 0x1C, &client)),
        MqttError::InvalidQos
    );
    // 3.1.1 password without user name.
    let error = connect_err(&connect_bytes(b"MQTT", 4, 0x40, &[0, 1, b'c', 0, 1, b'p']));
    assert_eq!(error, MqttError::PasswordWithoutUsername);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn connect_protocol_name_and_level() {
    let client = [0, 1, b'c'];
    let error = connect_err(&connect_bytes(b"MQTT", 3, 0x02, &client));
    assert_eq!(error, MqttError::UnsupportedProtocolVersion);
    assert_eq!(
        error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    assert_eq!(error.connack_return_code_v311(), Some(ReasonCode(0x01)));
    assert_eq!(
        connect_err(&connect_bytes(b"MQIsdp", 3, 0x02, &client)),
        MqttError::UnsupportedProtocolVersion
    );
    let error = connect_err(&connect_bytes(b"HTTP", 4, 0x02, &client));
    assert_eq!(error, MqttError::InvalidProtocolName);
    assert_eq!(
        error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    assert_eq!(
        MqttError::ReservedConnectFlag.connack_return_code_v311(),
        None
    );
}

#[test]
fn first_packet_must_be_connect() {
    let error = connect_err(&[0x30]);
    assert_eq!(error, MqttError::ExpectedConnect);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // An HTTP request on the MQTT port is refused from its first byte ('G' = 0x47).
    assert_eq!(
        connect_err(b"GET / HTTP/1.1\r\n"),
        MqttError::ExpectedConnect
    );
    // Reserved flags on CONNECT itself.
    assert_eq!(connect_err(&[0x11]), MqttError::ReservedFlags);
    let mut buf = BytesMut::new();
    assert_eq!(
        decode_connect(&mut buf, &DecodeLimits::default()),
        Ok(Decoded::Incomplete { needed: None })
    );
}

#[test]
fn remaining_length_must_match_content() {
    // Trailing bytes.
    for (bytes, version) in [
        (&[0x40u8, 0x03, 0, 1, 0][..], V3),
        (&[0xC0, 0x01, 0x00][..], V3),
        (&[0xE0, 0x01, 0x00][..], V3),
        (&[0xB0, 0x03, 0, 1, 0][..], V3),
        (&[0x20, 0x03, 0, 0, 0][..], V3),
        (&[0x20, 0x04, 0, 0, 0, 0][..], V5),
        (&[0x40, 0x05, 0, 1, 0, 0, 0][..], V5),
    ] {
        let error = decode_err(bytes, version);
        assert_eq!(error, MqttError::TrailingBytes, "{bytes:02X?}");
        assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    let trailing_connect = connect_bytes(b"MQTT", 4, 0x02, &[0, 1, b'c', 0xAA]);
    assert_eq!(connect_err(&trailing_connect), MqttError::TrailingBytes);
    // Truncated: fields run past the declared remaining length.
    for (bytes, version) in [
        (&[0x40u8, 0x01, 0][..], V3),
        (&[0x30, 0x03, 0, 5, b'a'][..], V3),
        (&[0x32, 0x04, 0, 1, b't', 0][..], V5),
    ] {
        let error = decode_err(bytes, version);
        assert_eq!(error, MqttError::Truncated, "{bytes:02X?}");
        assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // A 5.0 CONNACK without its (mandatory) Property Length.
    assert_eq!(
        decode_err(&[0x20, 0x02, 0, 0], V5),
        MqttError::InvalidPropertyLength
    );
}

#[test]
fn property_length_bounds_at_packet_level() {
    // PUBLISH whose Property Length (9) runs past the packet.
    let error = decode_err(&[0x30, 0x05, 0, 1, b't', 9, 0x01], V5);
    assert_eq!(error, MqttError::InvalidPropertyLength);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Duplicate Content Type in PUBLISH.
    let publish = frame(
        0x30,
        &[&[0, 1, b't'], &[8, 0x03, 0, 1, b'a', 0x03, 0, 1, b'b']],
    );
    let error = decode_err(&publish, V5);
    assert_eq!(error, MqttError::DuplicateProperty);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // Will Delay Interval in PUBLISH is not allowed.
    let publish = frame(0x30, &[&[0, 1, b't'], &[5, 0x18, 0, 0, 0, 1]]);
    assert_eq!(decode_err(&publish, V5), MqttError::InvalidPropertyId);
    // Session Expiry in will properties is not allowed either.
    let connect = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 0, 0],
            &[0, 1, b'c'],
            &[5, 0x11, 0, 0, 0, 1],
            &[0, 1, b'w', 0, 0],
        ],
    );
    assert_eq!(decode_err(&connect, V5), MqttError::InvalidPropertyId);
}

#[test]
fn reason_codes_checked_per_packet() {
    let cases: [(&[u8], ProtocolVersion); 7] = [
        (&[0x40, 0x03, 0, 1, 0x92], V5), // PUBACK with a PUBREL-only code
        (&[0x62, 0x03, 0, 1, 0x10], V5), // PUBREL with a PUBACK-only code
        (&[0x20, 0x02, 0, 0x06], V3),    // 3.1.1 CONNACK return code 6
        (&[0x20, 0x03, 0, 0x04, 0], V5), // 0x04 is not a CONNACK code
        (&[0x90, 0x03, 0, 1, 0x03], V3), // 3.1.1 SUBACK 0x03
        (&[0xE0, 0x01, 0x01], V5),       // DISCONNECT 0x01
        (&[0xF0, 0x02, 0x01, 0], V5),    // AUTH 0x01
    ];
    for (bytes, version) in cases {
        let error = decode_err(bytes, version);
        assert_eq!(error, MqttError::InvalidReasonCode, "{bytes:02X?}");
        assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn connack_flag_rules() {
    let error = decode_err(&[0x20, 0x02, 0x02, 0x00], V3);
    assert_eq!(error, MqttError::InvalidConnAckFlags);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Session Present with a refusal.
    assert_eq!(
        decode_err(&[0x20, 0x02, 0x01, 0x05], V3),
        MqttError::InvalidConnAckFlags
    );
    assert_eq!(
        decode_err(&[0x20, 0x03, 0x01, 0x87, 0], V5),
        MqttError::InvalidConnAckFlags
    );
}

#[test]
fn auth_is_not_a_v311_packet() {
    let error = decode_err(&[0xF0, 0x00], V3);
    assert_eq!(error, MqttError::InvalidPacketType);
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
}

// ---------------------------------------------------------------- zero copy

fn points_into(field: &Bytes, base: *const u8, len: usize) -> bool {
    let start = base as usize;
    let address = field.as_ptr() as usize;
    field.is_empty() || (address >= start && address + field.len() <= start + len)
}

#[test]
fn publish_fields_are_slices_of_the_receive_buffer() {
    let bytes = frame(
        0x30,
        &[
            &[0, 3, b'a', b'/', b'b'],
            &[7, 0x26, 0, 1, b'k', 0, 1, b'v'],
            b"payload",
        ],
    );
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&bytes);
    let (base, len) = (buf.as_ptr(), buf.len());
    let Ok(Decoded::Complete(Packet::Publish(publish))) =
        decode_packet(&mut buf, V5, Sender::Client, &DecodeLimits::default())
    else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(&publish.payload[..], b"payload");
    assert!(points_into(&publish.payload, base, len));
    assert!(points_into(&publish.topic, base, len));
    let user = &publish.properties.user_properties[0];
    assert!(points_into(&user.name, base, len) && points_into(&user.value, base, len));
    // And at the exact offset: the payload is the last 7 bytes of the packet.
    assert_eq!(publish.payload.as_ptr() as usize, base as usize + len - 7);
}

#[test]
fn connect_fields_are_slices_of_the_receive_buffer() {
    let bytes = frame(
        0x10,
        &[
            &[0, 4, b'M', b'Q', b'T', b'T', 5, 0xC6, 0, 0],
            &[4, 0x15, 0, 1, b'm'],
            &[0, 2, b'i', b'd'],
            &[4, 0x03, 0, 1, b'j'],
            &[0, 1, b'w', 0, 2, b'w', b'p'],
            &[0, 1, b'u', 0, 2, b'p', b'w'],
        ],
    );
    let mut buf = BytesMut::from(&bytes[..]);
    let (base, len) = (buf.as_ptr(), buf.len());
    let Ok(Decoded::Complete(connect)) = decode_connect(&mut buf, &DecodeLimits::default()) else {
        panic!("expected a CONNECT");
    };
    let Some(will) = &connect.will else {
        panic!("expected a will")
    };
    let (Some(username), Some(password)) = (&connect.username, &connect.password) else {
        panic!("expected credentials")
    };
    let (Some(method), Some(content_type)) = (
        &connect.properties.authentication_method,
        &will.properties.content_type,
    ) else {
        panic!("expected properties")
    };
    for field in [
        &connect.client_id,
        &will.topic,
        &will.payload,
        username,
        password,
        method,
        content_type,
    ] {
        assert!(points_into(field, base, len), "{field:?} was copied");
    }
}

// ---------------------------------------------------------------- encoder refusals

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let with_props = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b(b"t"),
        packet_id: None,
        properties: Properties {
            message_expiry_interval: Some(1),
            ..Properties::default()
        },
        payload: Bytes::new(),
    };
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&Packet::Publish(with_props.clone()), V3, &mut out),
        Err(EncodeError::NotRepresentable)
    );
    assert!(out.is_empty(), "nothing written on error");
    assert!(encode(&Packet::Publish(with_props.clone()), V5, &mut out).is_ok());
    out.clear();

    let qos0_with_id = Publish {
        packet_id: Some(pid(1)),
        properties: Properties::default(),
        ..with_props.clone()
    };
    assert_eq!(
        encode(&Packet::Publish(qos0_with_id), V3, &mut out),
        Err(EncodeError::PacketIdMismatch)
    );
    let qos1_without_id = Publish {
        qos: QoS::AtLeastOnce,
        properties: Properties::default(),
        ..with_props.clone()
    };
    assert_eq!(
        encode(&Packet::Publish(qos1_without_id), V3, &mut out),
        Err(EncodeError::PacketIdMismatch)
    );
    let dup_qos0 = Publish {
        dup: true,
        properties: Properties::default(),
        ..with_props.clone()
    };
    assert_eq!(
        encode(&Packet::Publish(dup_qos0), V3, &mut out),
        Err(EncodeError::InvalidFlags)
    );
    let long_topic = Publish {
        topic: Bytes::from(vec![b'a'; 70_000]),
        properties: Properties::default(),
        ..with_props
    };
    assert_eq!(
        encode(&Packet::Publish(long_topic), V5, &mut out),
        Err(EncodeError::FieldTooLong)
    );

    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&auth, V3, &mut out),
        Err(EncodeError::NotRepresentable)
    );
    let empty_subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: vec![],
    });
    assert_eq!(
        encode(&empty_subscribe, V5, &mut out),
        Err(EncodeError::NoTopicFilters)
    );
    let no_local_v3 = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: b(b"a"),
            options: SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::with_qos(QoS::AtMostOnce)
            },
        }],
    });
    assert_eq!(
        encode(&no_local_v3, V3, &mut out),
        Err(EncodeError::NotRepresentable)
    );
    let puback_reason_v3 = Packet::PubAck(PubResponse {
        packet_id: pid(1),
        reason_code: ReasonCode::NOT_AUTHORIZED,
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&puback_reason_v3, V3, &mut out),
        Err(EncodeError::NotRepresentable)
    );
    let bad_code = Packet::PubRel(PubResponse {
        packet_id: pid(1),
        reason_code: ReasonCode(0x10),
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&bad_code, V5, &mut out),
        Err(EncodeError::InvalidReasonCode)
    );
    let connack_v3 = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode(0x84),
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&connack_v3, V3, &mut out),
        Err(EncodeError::InvalidReasonCode)
    );
    let alias_in_connect = Packet::Connect(Box::new(Connect {
        protocol_version: V5,
        properties: Properties {
            topic_alias: NonZeroU16::new(1),
            ..Properties::default()
        },
        ..connect_v3_minimal()
    }));
    assert_eq!(
        encode(&alias_in_connect, V5, &mut out),
        Err(EncodeError::InvalidProperty)
    );
    let password_only_v3 = Packet::Connect(Box::new(Connect {
        password: Some(b(b"p")),
        ..connect_v3_minimal()
    }));
    assert_eq!(
        encode(&password_only_v3, V3, &mut out),
        Err(EncodeError::NotRepresentable)
    );
    assert!(out.is_empty());
}

#[test]
fn connect_encodes_in_its_own_version() {
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: V5,
        properties: Properties {
            maximum_packet_size: NonZeroU32::new(4096),
            ..Properties::default()
        },
        ..connect_v3_minimal()
    }));
    let mut out = BytesMut::new();
    encode(&connect, V3, &mut out).unwrap();
    assert_eq!(out[8], 5, "protocol level byte");
    let mut buf = out.clone();
    assert_eq!(
        decode_packet(&mut buf, V3, Sender::Server, &DecodeLimits::default()),
        Ok(Decoded::Complete(connect))
    );
}

// ---------------------------------------------------------------- property table (§2.2.2.2)

/// Where a property block sits: the packets of Table 2-4's "Used in" column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// The packets a client sends that carry properties (the Will's inside CONNECT).
const CLIENT_PACKETS: [In; 11] = [
    In::Connect,
    In::Will,
    In::Publish,
    In::PubAck,
    In::PubRec,
    In::PubRel,
    In::PubComp,
    In::Subscribe,
    In::Unsubscribe,
    In::Disconnect,
    In::Auth,
];

/// Table 2-4 of MQTT 5.0 §2.2.2.2, transcribed row by row (independently of
/// `PropertyContext::allowed`): identifier, one property with a valid value (Authentication Data
/// is followed by the Authentication Method it needs), and the "Used in" column.
fn property_table() -> Vec<(u8, Vec<u8>, Vec<In>)> {
    use In::*;
    let all = vec![
        Connect,
        Will,
        ConnAck,
        Publish,
        PubAck,
        PubRec,
        PubRel,
        PubComp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    ];
    vec![
        (0x01, vec![0x01, 1], vec![Publish, Will]),
        (0x02, vec![0x02, 0, 0, 0, 60], vec![Publish, Will]),
        (0x03, vec![0x03, 0, 1, b'c'], vec![Publish, Will]),
        (0x08, vec![0x08, 0, 1, b'r'], vec![Publish, Will]),
        (0x09, vec![0x09, 0, 1, 7], vec![Publish, Will]),
        (0x0B, vec![0x0B, 1], vec![Publish, Subscribe]),
        (
            0x11,
            vec![0x11, 0, 0, 0, 9],
            vec![Connect, ConnAck, Disconnect],
        ),
        (0x12, vec![0x12, 0, 1, b'i'], vec![ConnAck]),
        (0x13, vec![0x13, 0, 5], vec![ConnAck]),
        (0x15, vec![0x15, 0, 1, b'M'], vec![Connect, ConnAck, Auth]),
        (
            0x16,
            vec![0x16, 0, 1, 7, 0x15, 0, 1, b'M'],
            vec![Connect, ConnAck, Auth],
        ),
        (0x17, vec![0x17, 1], vec![Connect]),
        (0x18, vec![0x18, 0, 0, 0, 5], vec![Will]),
        (0x19, vec![0x19, 1], vec![Connect]),
        (0x1A, vec![0x1A, 0, 1, b'a'], vec![ConnAck]),
        (0x1C, vec![0x1C, 0, 1, b's'], vec![ConnAck, Disconnect]),
        (
            0x1F,
            vec![0x1F, 0, 1, b'w'],
            vec![
                ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
            ],
        ),
        (0x21, vec![0x21, 0, 10], vec![Connect, ConnAck]),
        (0x22, vec![0x22, 0, 10], vec![Connect, ConnAck]),
        (0x23, vec![0x23, 0, 1], vec![Publish]),
        (0x24, vec![0x24, 1], vec![ConnAck]),
        (0x25, vec![0x25, 1], vec![ConnAck]),
        (0x26, vec![0x26, 0, 1, b'k', 0, 1, b'v'], all),
        (0x27, vec![0x27, 0, 0, 1, 0], vec![Connect, ConnAck]),
        (0x28, vec![0x28, 1], vec![ConnAck]),
        (0x29, vec![0x29, 1], vec![ConnAck]),
        (0x2A, vec![0x2A, 1], vec![ConnAck]),
    ]
}

/// A minimal valid 5.0 packet of kind `kind` whose (only) property block is `props`.
fn packet_with_properties(kind: In, props: &[u8]) -> Vec<u8> {
    let len = [u8::try_from(props.len()).unwrap()];
    let connect_head: &[u8] = &[0, 4, b'M', b'Q', b'T', b'T', 5];
    match kind {
        In::Connect => frame(
            0x10,
            &[connect_head, &[0x02, 0, 60], &len, props, &[0, 1, b'c']],
        ),
        In::Will => frame(
            0x10,
            &[
                connect_head,
                &[0x06, 0, 60, 0, 0, 1, b'c'],
                &len,
                props,
                &[0, 1, b'w', 0, 1, b'x'],
            ],
        ),
        In::ConnAck => frame(0x20, &[&[0, 0], &len, props]),
        In::Publish => frame(0x30, &[&[0, 1, b't'], &len, props, b"p"]),
        In::PubAck => frame(0x40, &[&[0, 1, 0], &len, props]),
        In::PubRec => frame(0x50, &[&[0, 1, 0], &len, props]),
        In::PubRel => frame(0x62, &[&[0, 1, 0], &len, props]),
        In::PubComp => frame(0x70, &[&[0, 1, 0], &len, props]),
        In::Subscribe => frame(0x82, &[&[0, 1], &len, props, &[0, 1, b'f', 0]]),
        In::SubAck => frame(0x90, &[&[0, 1], &len, props, &[0]]),
        In::Unsubscribe => frame(0xA2, &[&[0, 1], &len, props, &[0, 1, b'f']]),
        In::UnsubAck => frame(0xB0, &[&[0, 1], &len, props, &[0]]),
        In::Disconnect => frame(0xE0, &[&[0], &len, props]),
        In::Auth => frame(0xF0, &[&[0], &len, props]),
    }
}

/// Decodes one packet the way the gateway would receive it from `sender` (a CONNECT as the
/// first packet of a connection).
fn decode_as(kind: In, bytes: &[u8], sender: Sender) -> Result<(), MqttError> {
    let mut buf = BytesMut::from(bytes);
    let limits = DecodeLimits::default();
    let outcome = match kind {
        In::Connect | In::Will => {
            decode_connect(&mut buf, &limits).map(|d| matches!(d, Decoded::Complete(_)))
        }
        _ => {
            decode_packet(&mut buf, V5, sender, &limits).map(|d| matches!(d, Decoded::Complete(_)))
        }
    };
    match outcome {
        Ok(true) => {
            assert!(buf.is_empty(), "{kind:?} {bytes:02X?} left bytes behind");
            Ok(())
        }
        Ok(false) => panic!("{kind:?} {bytes:02X?} is incomplete"),
        Err(error) => Err(error),
    }
}

#[test]
fn every_property_in_every_client_packet_follows_the_table() {
    // Each property of Table 2-4 alone in each packet a client sends: allowed where the table
    // lists it; elsewhere a Malformed Packet (0x81, "an Identifier which is not valid for its
    // packet type ... is a Malformed Packet"); and where the table lists it but the spec forbids
    // the client to send it — Subscription Identifier in PUBLISH, [MQTT-3.3.4-6] — a Protocol
    // Error (0x82).
    let table = property_table();
    assert_eq!(table.len(), 27, "Table 2-4 has 27 rows");
    let mut refused = 0;
    for (identifier, property, used_in) in &table {
        for kind in CLIENT_PACKETS {
            let bytes = packet_with_properties(kind, property);
            let result = decode_as(kind, &bytes, Sender::Client);
            let client_forbidden = *identifier == 0x0B && kind == In::Publish;
            let expected = if client_forbidden {
                Err(MqttError::PropertyNotAllowedFromSender)
            } else if used_in.contains(&kind) {
                Ok(())
            } else {
                Err(MqttError::InvalidPropertyId)
            };
            assert_eq!(result, expected, "property 0x{identifier:02X} in {kind:?}");
            match result {
                Err(error) if client_forbidden => {
                    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
                    refused += 1;
                }
                Err(error) => {
                    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
                    refused += 1;
                }
                Ok(()) => {}
            }
            // From a server the same packet (where a server can send it) follows the table alone.
            if !matches!(
                kind,
                In::Connect | In::Will | In::Subscribe | In::Unsubscribe
            ) {
                let from_server = decode_as(kind, &bytes, Sender::Server);
                let expected = if used_in.contains(&kind) {
                    Ok(())
                } else {
                    Err(MqttError::InvalidPropertyId)
                };
                assert_eq!(
                    from_server, expected,
                    "0x{identifier:02X} in {kind:?} from a server"
                );
            }
        }
    }
    assert!(refused > 200, "only {refused} refusals checked");
    // Identifiers that are not in the table at all are malformed everywhere.
    for identifier in [
        0x00u8, 0x04, 0x05, 0x0A, 0x0C, 0x14, 0x1B, 0x1D, 0x20, 0x2B, 0x7F,
    ] {
        for kind in CLIENT_PACKETS {
            let bytes = packet_with_properties(kind, &[identifier, 0]);
            assert_eq!(
                decode_as(kind, &bytes, Sender::Client),
                Err(MqttError::InvalidPropertyId),
                "unknown 0x{identifier:02X} in {kind:?}"
            );
        }
    }
}

#[test]
fn every_single_valued_property_twice_is_a_protocol_error() {
    // §2.2.2.2 and each property's section: "It is a Protocol Error to include the ... more than
    // once". User Property may repeat; Subscription Identifier repeats in a server's PUBLISH
    // only (one per matching subscription, §3.3.2.3.8) — in SUBSCRIBE twice is a Protocol Error.
    for (identifier, property, used_in) in property_table() {
        for &kind in &used_in {
            let twice = [&property[..], &property[..]].concat();
            let sender = match kind {
                In::ConnAck | In::SubAck | In::UnsubAck => Sender::Server,
                In::Publish if identifier == 0x0B => Sender::Server,
                _ => Sender::Client,
            };
            let bytes = packet_with_properties(kind, &twice);
            let result = decode_as(kind, &bytes, sender);
            let repeatable = identifier == 0x26 || (identifier == 0x0B && kind == In::Publish);
            if repeatable {
                assert_eq!(result, Ok(()), "0x{identifier:02X} twice in {kind:?}");
            } else {
                assert_eq!(
                    result,
                    Err(MqttError::DuplicateProperty),
                    "0x{identifier:02X} twice in {kind:?}"
                );
                assert_eq!(
                    MqttError::DuplicateProperty.reason_code(),
                    ReasonCode::PROTOCOL_ERROR
                );
            }
        }
    }
}

#[test]
fn client_publish_with_subscription_identifier_among_allowed_properties_is_refused() {
    // QoS 1, Topic Alias 2, Subscription Identifier 5, a User Property: what a device must not
    // send, whatever else the PUBLISH carries; a broker may send exactly this.
    let bytes = frame(
        0x32,
        &[
            &[0, 1, b't', 0, 7],
            &[12, 0x23, 0, 2, 0x0B, 0x05, 0x26, 0, 1, b'k', 0, 1, b'v'],
            b"x",
        ],
    );
    let error = decode_err_from(&bytes, V5, Sender::Client);
    assert_eq!(error, MqttError::PropertyNotAllowedFromSender);
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    let Ok(Decoded::Complete(Packet::Publish(publish))) = decode_all(&bytes, V5) else {
        panic!("a server's PUBLISH with a Subscription Identifier must decode");
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![5]);
    assert_eq!(publish.properties.topic_alias, NonZeroU16::new(2));
}

// ---------------------------------------------------------------- fuzz entry points

/// All the known-good vectors above, for the mutation run.
fn seed_vectors() -> Vec<Vec<u8>> {
    vec![
        vec![
            0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c',
        ],
        frame(
            0x10,
            &[
                &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x96, 0, 30],
                &[
                    15, 0x11, 0, 0, 0x0E, 0x10, 0x21, 0, 20, 0x26, 0, 1, b'k', 0, 1, b'v',
                ],
                &[0, 2, b'c', b'1'],
                &[5, 0x18, 0, 0, 0, 5],
                &[0, 1, b'w', 0, 1, b'x'],
                &[0, 1, b'u'],
            ],
        ),
        frame(
            0x20,
            &[
                &[0x01, 0x00],
                &[10, 0x12, 0, 2, b'i', b'd', 0x22, 0, 10, 0x24, 1],
            ],
        ),
        frame(
            0x32,
            &[
                &[0, 3, b'a', b'/', b'b', 0, 1],
                &[13, 0x01, 1, 0x02, 0, 0, 0, 60, 0x0B, 0x80, 0x01, 0x23, 0, 5],
                b"hi",
            ],
        ),
        vec![0x40, 0x09, 0, 1, 0x87, 5, 0x1F, 0, 2, b'n', b'o'],
        vec![
            0x82, 0x0C, 0, 1, 0, 3, b'a', b'/', b'+', 0x01, 0, 1, b'#', 0x02,
        ],
        vec![0x90, 0x09, 0, 1, 4, 0x1F, 0, 1, b'r', 0x01, 0x8F],
        frame(
            0xA2,
            &[
                &[0, 3, 6, 0x26, 0, 1, b'a', 0, 0],
                &[0, 3, b'a', b'/', b'b', 0, 1, b'+'],
            ],
        ),
        vec![0xB0, 0x05, 0, 3, 0, 0x00, 0x11],
        vec![0xE0, 0x0B, 0x8E, 9, 0x11, 0, 0, 0, 0, 0x1C, 0, 1, b's'],
        frame(
            0xF0,
            &[&[
                0x18, 13, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 2, 1, 2,
            ]],
        ),
        vec![0xC0, 0x00, 0xD0, 0x00, 0x62, 0x03, 0, 7, 0x92],
    ]
}

#[test]
fn fuzz_entry_points_accept_the_seed_vectors() {
    for vector in seed_vectors() {
        fuzz_decode(&vector);
        fuzz_roundtrip(&vector);
    }
}

#[test]
fn deterministic_mutation_run_never_breaks_the_invariants() {
    // A tiny xorshift PRNG: reproducible, no dependency. ~24k mutated inputs, well under a second.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for vector in seed_vectors() {
        for _ in 0..2_000 {
            let mut mutated = vector.clone();
            for _ in 0..(1 + next() % 3) {
                let choice = next();
                let position = (choice >> 8) as usize % mutated.len().max(1);
                match choice % 4 {
                    0 if !mutated.is_empty() => mutated[position] ^= 1 << ((choice >> 32) % 8),
                    1 if !mutated.is_empty() => mutated[position] = (choice >> 40) as u8,
                    2 if !mutated.is_empty() => mutated.truncate(position),
                    _ => mutated.insert(position.min(mutated.len()), (choice >> 48) as u8),
                }
            }
            fuzz_decode(&mutated);
            fuzz_roundtrip(&mutated);
        }
    }
}

/// Decodes a whole stream sent by a server: `Ok(n)` if it is `n` complete packets with nothing
/// left over.
fn decode_stream(bytes: &[u8], version: ProtocolVersion) -> Result<usize, MqttError> {
    decode_stream_from(bytes, version, Sender::Server)
}

fn decode_stream_from(
    bytes: &[u8],
    version: ProtocolVersion,
    sender: Sender,
) -> Result<usize, MqttError> {
    let mut buf = BytesMut::from(bytes);
    let mut count = 0;
    while !buf.is_empty() {
        match decode_packet(&mut buf, version, sender, &DecodeLimits::default())? {
            Decoded::Complete(_) => count += 1,
            Decoded::Incomplete { .. } => return Err(MqttError::Truncated),
        }
    }
    Ok(count)
}

#[test]
fn fuzz_seed_corpora_replay() {
    // The seed corpora live in fuzz/corpus/; `v311_*` / `v5_*` seeds are valid streams in that
    // version (from a server: Table 2-4 alone), `bad_*` seeds must be refused in both, `bad5_*`
    // seeds in 5.0, `bad5c_*` seeds in 5.0 from a client only (a server may send them).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seen = 0;
    for target in ["mqtt_decode", "mqtt_roundtrip"] {
        let entries = std::fs::read_dir(root.join(target)).unwrap();
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            fuzz_decode(&data);
            fuzz_roundtrip(&data);
            if name.starts_with("v311_") {
                assert!(
                    decode_stream(&data, V3).unwrap_or(0) > 0,
                    "{name} must decode as 3.1.1"
                );
            } else if name.starts_with("v5_") {
                assert!(
                    decode_stream(&data, V5).unwrap_or(0) > 0,
                    "{name} must decode as 5.0"
                );
            } else if name.starts_with("bad5c_") {
                assert!(
                    decode_stream_from(&data, V5, Sender::Client).is_err()
                        && decode_stream(&data, V5).unwrap_or(0) > 0,
                    "{name} must be refused in 5.0 from a client only"
                );
            } else if name.starts_with("bad5_") {
                assert!(
                    decode_stream(&data, V5).is_err(),
                    "{name} must be refused in 5.0"
                );
            } else if name.starts_with("bad_") {
                assert!(
                    decode_stream(&data, V3).is_err() && decode_stream(&data, V5).is_err(),
                    "{name} must be refused"
                );
            } else {
                panic!("unexpected corpus file {name}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 40, "corpora look incomplete: {seen} files");
}
