//! Fixtures shared by the unit tests of `connect` and `bridge`: templates, template variables,
//! a session-mode destination, a device CONNECT and listener limits.

use std::time::Duration;

use bytes::Bytes;

use crate::policy::template::Placeholder;
use crate::policy::{
    MqttDestination, MqttListenerLimits, MqttMode, MqttUpstreamVersion, Secret, TemplateVars,
};
use crate::proto::mqtt::{Connect, Properties, ProtocolVersion, QoS, Will};

const ALL: &[Placeholder] = &[Placeholder::ClientId, Placeholder::Topic, Placeholder::Ip];

pub(super) fn template(text: &str) -> crate::policy::Template {
    crate::policy::Template::parse(text, ALL).expect("valid template")
}

pub(super) fn vars(client_id: &[u8]) -> TemplateVars<'_> {
    TemplateVars {
        client_id,
        topic: b"",
        ip: "10.0.0.17".parse().expect("ip"),
        shard: 0,
        conn: 0,
        sim: None,
    }
}

pub(super) fn destination(topic: &str) -> MqttDestination {
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
        max_publish_rate: None,
        while_down: crate::policy::WhileDown::Accept,
    }
}

pub(super) fn device_connect(version: ProtocolVersion) -> Connect {
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

pub(super) fn limits() -> MqttListenerLimits {
    MqttListenerLimits {
        max_packet_size: 1000,
        connect_timeout: Duration::from_secs(10),
        receive_maximum: 64,
    }
}
