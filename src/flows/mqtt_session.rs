//! Session mode (1:1) MQTT bridging (being written for issue #3).

use super::mqtt_bridge::{send_connack, DeviceSession};
use crate::proto::mqtt::ReasonCode;

/// Bridge one device session to its own upstream MQTTS connection.
pub async fn serve(mut session: DeviceSession) {
    let version = session.version();
    send_connack(&mut session.stream, version, ReasonCode::SERVER_UNAVAILABLE).await;
}
