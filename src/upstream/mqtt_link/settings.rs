//! What a link is configured with, copied out of the plan: [`LinkSettings`], and
//! [`destination_fingerprint`], which says whether two plans' destinations can share links.
//!
//! What this module does not do: connect, or hold any state; it is a pure mapping from
//! `policy::DestinationPlan`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;

use crate::policy::{DestinationPlan, MqttMode, MqttUpstreamVersion, TemplateVars};
use crate::proto::mqtt::ProtocolVersion;

/// Connection settings of one link, copied out of the plan.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Protocol version spoken upstream.
    pub version: ProtocolVersion,
    /// Rendered client id.
    pub client_id: Bytes,
    /// Rendered user name.
    pub username: Option<Bytes>,
    /// Password.
    pub password: Option<Bytes>,
    /// Keep-alive announced in CONNECT; PINGREQ goes out every half of it.
    pub keep_alive: Duration,
    /// Most unacknowledged QoS 1 PUBLISHes.
    pub max_inflight: u16,
    /// Time allowed for CONNECT -> CONNACK.
    pub connack_timeout: Duration,
    /// First delay after a failed or lost connection; doubles per failure (jittered).
    pub backoff_initial: Duration,
    /// Delay ceiling.
    pub backoff_max: Duration,
    /// How long queued uplink bytes may wait for more before being written (0: none).
    pub linger: Duration,
    /// `max_publish_rate`: most PUBLISHes in any one-second window (`None`: unlimited).
    pub max_publish_rate: Option<std::num::NonZeroU32>,
}

impl LinkSettings {
    /// Settings of link `conn` of shard `shard` for an aggregate-mode destination; `None` if the
    /// destination is not one.
    pub fn for_destination(dest: &DestinationPlan, shard: usize, conn: usize) -> Option<Self> {
        let mqtt = dest.mqtt().filter(|m| m.mode == MqttMode::Aggregate)?;
        let vars = TemplateVars {
            client_id: b"",
            topic: b"",
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            shard,
            conn,
            sim: None,
        };
        Some(LinkSettings {
            version: match mqtt.version {
                MqttUpstreamVersion::V5 => ProtocolVersion::V5,
                // "same as device" is session-mode only; aggregate defaults to 3.1.1.
                MqttUpstreamVersion::V311 | MqttUpstreamVersion::SameAsDevice => {
                    ProtocolVersion::V311
                }
            },
            client_id: Bytes::from(mqtt.client_id.render(&vars)),
            username: mqtt.username.as_ref().map(|t| Bytes::from(t.render(&vars))),
            password: mqtt.password.as_ref().map(|s| s.0.clone()),
            keep_alive: mqtt.keep_alive,
            max_inflight: mqtt.max_inflight,
            connack_timeout: dest.pool.connect_timeout.max(Duration::from_secs(1)),
            backoff_initial: dest.pool.backoff_initial.max(Duration::from_millis(10)),
            backoff_max: dest.pool.backoff_max.max(dest.pool.backoff_initial),
            linger: mqtt.linger,
            max_publish_rate: mqtt.max_publish_rate,
        })
    }
}

/// A hash of every destination setting a link depends on (endpoint, TLS name, version, client
/// id, credentials, keep-alive, links per shard, in-flight bound, linger, publish rate); `None` unless the destination
/// is in aggregate mode. Two plans whose fingerprints match can share links.
///
/// The endpoint's resolved addresses are deliberately left out: DNS may return them in another
/// order or another subset at every reload, and a changed fingerprint retires the links (every
/// device on them reconnects). Links connect through the shard pool's current addresses, which
/// DNS re-resolution updates in place.
pub fn destination_fingerprint(dest: &DestinationPlan) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mqtt = dest.mqtt().filter(|m| m.mode == MqttMode::Aggregate)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dest.endpoint.hash(&mut h);
    format!("{:?}", dest.server_name).hash(&mut h);
    format!("{:?}", mqtt.version).hash(&mut h);
    mqtt.client_id.as_str().hash(&mut h);
    mqtt.username.as_ref().map(|t| t.as_str()).hash(&mut h);
    mqtt.password.as_ref().map(|s| &s.0[..]).hash(&mut h);
    mqtt.keep_alive.hash(&mut h);
    mqtt.connections_per_shard.hash(&mut h);
    mqtt.max_inflight.hash(&mut h);
    mqtt.linger.hash(&mut h);
    mqtt.max_publish_rate.hash(&mut h);
    Some(h.finish())
}
