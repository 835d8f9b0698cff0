//! Session mode (1:1) MQTT bridging: each device session gets its own upstream MQTTS
//! connection, so the device's MQTT session *is* the upstream session, re-encoded.
//!
//! ```text
//!  device ──plaintext MQTT──► [decode ─► Bridge::uplink ─► encode] ──TLS──► broker
//!  device ◄──────────────────  [encode ◄─ Bridge::downlink ◄─ decode] ◄────── broker
//! ```
//!
//! Flow of one session:
//! 1. Build the upstream CONNECT from the device's ([`build_upstream_connect`]): client id and
//!    user name from the destination's templates, password from the destination (or the
//!    device's own user name/password with `pass_through_credentials`), the device's keep-alive,
//!    clean start and will (topic rewritten through the `topic` template); v5 properties passed
//!    through when both hops speak v5. Version per [`MqttUpstreamVersion`](crate::policy::MqttUpstreamVersion). A device that sent
//!    an empty client id gets one of simgate's ([`assign_client_id`](super::mqtt_common::assign_client_id)) and the templates are
//!    filled with it (3.1.1 with Clean Session = 0: CONNACK 0x02 instead, [MQTT-3.1.3-8]).
//! 2. Take a TLS connection from the shard's pool (a warm one when there is one: the device
//!    then connects in one upstream round trip), send CONNECT, wait for CONNACK within the
//!    destination's `pool.connect_timeout`. A pooled connection found dead before any reply is
//!    replaced once by a fresh one (a CONNECT that got no answer is safe to repeat).
//! 3. Relay the CONNACK ([`device_connack`]: reason code mapped across versions; v5 properties
//!    such as Server Keep Alive passed through; Assigned Client Identifier is simgate's id for
//!    a device that sent none, never the broker's). Upstream
//!    unreachable, TLS failure, timeout or a bad reply: CONNACK 0x88 (3.1.1: 0x03) and close.
//! 4. Pump both directions with [`select2`](crate::reactor::select2). Packets are decoded, translated by [`Bridge`] and
//!    re-encoded; packet identifiers pass through unchanged (one session, one id space), so
//!    QoS 0/1/2 run end to end: a device's PUBACK/PUBREC/PUBCOMP come from the broker and
//!    nothing is acknowledged that the broker has not acknowledged.
//!
//! Translation ([`Bridge`], sans-IO): PUBLISH topics (and v5 Response Topic) are rewritten
//! uplink by the `topic` template and mapped back downlink by stripping its affixes
//! ([`TopicMap`](crate::policy::TopicMap)); SUBSCRIBE/UNSUBSCRIBE filters are rewritten likewise (inside
//! `$share/{group}/` for shared subscriptions). Device topic aliases are resolved (simgate
//! advertises its own small Topic Alias Maximum to v5 devices) and never forwarded; simgate
//! advertises no aliases upstream, so a broker alias is a protocol error. When the two hops
//! speak different versions, properties are dropped toward 3.1.1 and reason codes mapped.
//!
//! Cloud forms: `azure-iot-hub` over MQTT (IoT Hub's device topics, SAS password) and
//! `aws-iot-core` over MQTT (AWS's topic, payload and client-id rules enforced before the cloud
//! would disconnect, keep-alive clamped as AWS does with simgate's own PINGREQ for a device
//! that sleeps longer, the thing's shadow and jobs topics): see docs/adapters.md.
//!
//! IoT Hub token renewal (`azure-iot-hub` only): before the session's SAS token expires, its
//! upstream connection is replaced by one opened with the shard's newer token; device requests
//! left unanswered are sent again on it (QoS 1 with DUP), C2D and the device's hub filters are
//! subscribed again, and the device sees nothing (see `renewal.rs` and
//! docs/decisions/0015-azure-token-renewal.md).
//!
//! Endings:
//! - device DISCONNECT: forwarded upstream (normal: the broker discards the will), both closed;
//!   a v5 "disconnect with will" (0x04) toward a 3.1.1 broker drops the link abruptly instead;
//! - device silent for 1.5× its keep-alive (or the broker's Server Keep Alive), device EOF or
//!   socket error: device closed, upstream dropped without DISCONNECT (the broker publishes
//!   the will);
//! - malformed or oversized device packet (oversized is refused from the fixed header, before
//!   the body is buffered): v5 DISCONNECT with the codec's reason code (0x81/0x82/0x95...),
//!   device closed, upstream dropped without DISCONNECT;
//! - upstream DISCONNECT, close or error: the device (v5) gets the broker's DISCONNECT, or
//!   DISCONNECT 0x80 (0x88 "Server unavailable" is a CONNACK-only code), then is closed.
//! - shard drain (SIGTERM): the device is no longer read; the broker's answers to the device's
//!   QoS 1/2 PUBLISHes already forwarded are relayed until none is outstanding (or the drain
//!   window is nearly over), then a v5 device gets DISCONNECT 0x8B (a 3.1.1 device is closed).
//!   Upstream, a v5 broker gets DISCONNECT 0x04 "Disconnect with Will Message" and a 3.1.1
//!   broker a TLS close without DISCONNECT: the device did not leave, so its will stands (it
//!   is published, after its Will Delay Interval, unless the device reconnects first).
//!
//! What this module does NOT do: enhanced authentication (a device CONNECT with an
//! Authentication Method is refused with 0x8C before this module runs, a device AUTH is a
//! Protocol Error 0x82 and is not forwarded, a broker AUTH before CONNACK gets the device 0x83
//! and one after it ends the session as an upstream protocol error), enforcement of the listener's Receive Maximum (it is only advertised;
//! the broker enforces its own; for IoT Hub it bounds what is kept for a renewal),
//! persistence of anything across an upstream reconnect other than an IoT Hub renewal (the
//! device reconnects and its broker session resumes), or buffering: a side that stops reading
//! stalls the other direction (TCP back-pressure).
//!
//! Files, one job each:
//!
//! - `connect.rs` — the upstream CONNECT and the relayed CONNACK ([`build_upstream_connect`],
//!   [`device_connack`]), pure;
//! - `bridge.rs` — [`Bridge`], the packet translation, and [`SessionEnd`], pure;
//! - `driver.rs` — [`serve`]: sockets, the pool, timeouts, drain, IoT Hub renewal, metrics;
//! - `renewal.rs` — when an IoT Hub session renews its connection and what it carries across
//!   (the unanswered requests, the hub filters, stale C2D packet ids), pure;
//! - `test_support.rs` — fixtures for the unit tests of `connect` and `bridge` (tests only).

mod bridge;
mod connect;
mod driver;
mod renewal;

pub use self::bridge::{Action, Bridge, SessionEnd, DEVICE_TOPIC_ALIAS_MAXIMUM};
pub use self::connect::{
    aws_connack, aws_connect, aws_session, build_upstream_connect, device_connack, session_vars,
    upstream_version, v5_connack_code, BuildError,
};
pub use self::driver::serve;

#[cfg(test)]
mod test_support;
