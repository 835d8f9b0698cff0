//! The CONNECT/CONNACK exchange of a bridged session as pure mappings: the upstream CONNECT
//! built from the device's ([`build_upstream_connect`], with [`session_vars`] and
//! [`upstream_version`]) and the CONNACK relayed back ([`device_connack`], [`v5_connack_code`]).
//!
//! For `aws-iot-core` over MQTT, [`aws_session`], [`aws_connect`] and [`aws_connack`] add
//! the cloud's rules to the exchange: client id and thing name checked, keep-alive clamped as
//! AWS clamps it (and a v5 device told so), the will's topic mapped and checked.
//!
//! What this module does not do: send or wait for anything (the driver does, within the
//! destination's `connect_timeout`), assign client ids (`flows::mqtt_bridge::assign_client_id`)
//! or translate packets after the CONNACK (`super::bridge`).

use std::net::IpAddr;
use std::num::NonZeroU32;

use bytes::Bytes;

use super::bridge::DEVICE_TOPIC_ALIAS_MAXIMUM;
use crate::adapters::aws_iot_core_mqtt::{self as aws, Session as AwsSession};
#[cfg(doc)]
use crate::flows::mqtt_common::assign_client_id;
use crate::flows::mqtt_common::v311_return_code;
use crate::policy::cloud::AwsIotCoreMqtt;
use crate::policy::{
    MqttDestination, MqttListenerLimits, MqttUpstreamVersion, TemplateVars, TopicMap,
};
use crate::proto::mqtt::{ConnAck, Connect, Properties, ProtocolVersion, ReasonCode, Will};
use crate::stats::CloudRule;

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
        sim: None,
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

/// The AWS IoT Core session of a device (`vars` and `topics` as for its CONNECT), or why it
/// cannot have one: `Err(Some(rule))` for a cloud rule (client id over 128 bytes), `Err(None)`
/// for an empty client id or an invalid thing name. Either way the device gets CONNACK 0x85
/// (3.1.1: 2) and nothing is sent upstream.
pub fn aws_session(
    settings: &AwsIotCoreMqtt,
    vars: &TemplateVars<'_>,
    topics: &TopicMap,
) -> Result<AwsSession, Option<CloudRule>> {
    let client_id = settings.mqtt.client_id.render(vars);
    if client_id.is_empty() {
        return Err(None);
    }
    aws::check_client_id(&client_id).map_err(Some)?;
    let thing = if settings.thing_topics {
        let name = String::from_utf8_lossy(&settings.thing_name.render(vars)).into_owned();
        if !aws::thing_name_valid(&name) {
            return Err(None);
        }
        Some(name)
    } else {
        None
    };
    Ok(AwsSession::new(thing.as_deref(), topics))
}

/// The upstream CONNECT `c` (built from `device`'s) made AWS IoT Core's: keep-alive clamped as
/// AWS clamps it ([`aws::upstream_keep_alive`]), the will's topic mapped like a PUBLISH's and
/// checked by AWS's rules (a refused one is [`BuildError::WillTopicInvalid`]: CONNACK 0x90).
pub fn aws_connect(
    c: &mut Connect,
    device: &Connect,
    session: &AwsSession,
    topics: &TopicMap,
) -> Result<(), BuildError> {
    c.keep_alive = aws::upstream_keep_alive(device.keep_alive);
    if let (Some(will), Some(device_will)) = (c.will.as_mut(), device.will.as_ref()) {
        will.topic = session
            .uplink_topic(topics, &device_will.topic)
            .map_err(|_| BuildError::WillTopicInvalid)?;
    }
    Ok(())
}

/// The keep-alive an AWS IoT Core session holds the device to, after telling a v5 device
/// (accepted, and not told one by the cloud) the clamped value AWS uses as Server Keep Alive
/// when it differs from the device's own. A 3.1.1 device keeps its own.
pub fn aws_connack(connack: &mut ConnAck, device: &Connect) -> u16 {
    let clamped = aws::upstream_keep_alive(device.keep_alive);
    if device.protocol_version == ProtocolVersion::V311 {
        return device.keep_alive;
    }
    if let Some(told) = connack.properties.server_keep_alive {
        return told;
    }
    if connack.reason_code == ReasonCode::SUCCESS && clamped != device.keep_alive {
        connack.properties.server_keep_alive = Some(clamped);
        return clamped;
    }
    device.keep_alive
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{destination, device_connect, limits, vars};
    use super::*;
    use crate::flows::mqtt_common::assign_client_id;
    use crate::proto::mqtt::{self, Packet, QoS};
    use bytes::BytesMut;
    use std::num::NonZeroU16;

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

    fn aws_settings(client_id: &str, thing: &str) -> AwsIotCoreMqtt {
        let mut session = destination("{topic}");
        session.client_id = super::super::test_support::template(client_id);
        session.username = None;
        session.password = None;
        AwsIotCoreMqtt {
            thing_name: super::super::test_support::template(thing),
            thing_topics: true,
            mqtt: session,
        }
    }

    #[test]
    fn aws_checks_the_client_id_and_thing_name_before_connecting() {
        let device = device_connect(ProtocolVersion::V5);
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&aws_settings("{client_id}", "{client_id}").mqtt.topic, &v);
        assert!(aws_session(&aws_settings("{client_id}", "{client_id}"), &v, &topics).is_ok());
        let long = format!("{}{{client_id}}", "x".repeat(125));
        assert_eq!(
            aws_session(&aws_settings(&long, "t"), &v, &topics),
            Err(Some(CloudRule::ClientIdTooLong))
        );
        assert_eq!(
            aws_session(&aws_settings("{client_id}", "a/{client_id}"), &v, &topics),
            Err(None)
        );
    }

    #[test]
    fn aws_clamps_keep_alive_tells_a_v5_device_and_maps_the_will() {
        let settings = aws_settings("{client_id}", "{client_id}");
        for (keep_alive, upstream) in [(0u16, 1200u16), (10, 30), (60, 60), (3600, 1200)] {
            let mut device = device_connect(ProtocolVersion::V5);
            device.keep_alive = keep_alive;
            device.will.as_mut().expect("will").topic = Bytes::from_static(b"shadow/update");
            let v = vars(&device.client_id);
            let topics = TopicMap::new(&settings.mqtt.topic, &v);
            let session = aws_session(&settings, &v, &topics).expect("session");
            let mut c = build_upstream_connect(
                &device,
                &settings.mqtt,
                &v,
                ProtocolVersion::V5,
                &topics,
                1000,
            )
            .expect("builds");
            aws_connect(&mut c, &device, &session, &topics).expect("aws");
            assert_eq!(c.keep_alive, upstream);
            assert_eq!(
                &c.will.expect("will").topic[..],
                b"$aws/things/dev1/shadow/update"
            );
            let mut connack = ConnAck {
                session_present: false,
                reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            };
            assert_eq!(aws_connack(&mut connack, &device), upstream);
            let told = (upstream != keep_alive).then_some(upstream);
            assert_eq!(connack.properties.server_keep_alive, told, "{keep_alive}");
            // A 3.1.1 device keeps its own (simgate pings upstream when it is longer).
            let mut old = device.clone();
            old.protocol_version = ProtocolVersion::V311;
            assert_eq!(aws_connack(&mut connack.clone(), &old), keep_alive);
        }
        // A will on a reserved topic is refused (CONNACK 0x90).
        let mut device = device_connect(ProtocolVersion::V5);
        device.will.as_mut().expect("will").topic = Bytes::from_static(b"$aws/events/x");
        let v = vars(&device.client_id);
        let topics = TopicMap::new(&settings.mqtt.topic, &v);
        let session = aws_session(&settings, &v, &topics).expect("session");
        let mut c = build_upstream_connect(
            &device,
            &settings.mqtt,
            &v,
            ProtocolVersion::V5,
            &topics,
            1000,
        )
        .expect("builds");
        assert_eq!(
            aws_connect(&mut c, &device, &session, &topics),
            Err(BuildError::WillTopicInvalid)
        );
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
}
