//! Aggregate mode (N:1) MQTT bridging (being written for issue #3).

use super::mqtt_bridge::{send_connack, DeviceSession};
use crate::proto::mqtt::ReasonCode;

/// Per-shard state of aggregate mode (upstream links, downlink subscriptions).
#[derive(Default)]
pub struct AggregateShard {}

/// Serve one device session over the shard's shared upstream links.
pub async fn serve(mut session: DeviceSession) {
    let version = session.version();
    send_connack(&mut session.stream, version, ReasonCode::SERVER_UNAVAILABLE).await;
}
