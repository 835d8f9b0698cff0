//! MQTT device sessions: picks the bridging mode of the session's destination and hands the
//! connection to [`super::mqtt_session`] (1:1) or [`super::mqtt_aggregate`] (N:1).
//!
//! Being built (issue #3): until both modes land, an MQTT listener closes connections it cannot
//! bridge, and config validation refuses `protocol = "mqtt"` listeners.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::policy::ListenerId;
use crate::reactor::TcpStream;
use crate::shard::ShardState;

/// Serve one device MQTT connection.
pub async fn serve(
    state: Rc<ShardState>,
    listener: ListenerId,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = (state, listener, peer);
    drop(stream);
}
