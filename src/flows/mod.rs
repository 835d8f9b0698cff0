//! The glue per device protocol: read from a device connection with a codec, decide the route,
//! forward through an upstream pool, relay the answer. One module per flow.
//!
//! Flows run as tasks on a shard's reactor; everything they touch is shard-local. They own the
//! protocol-level decisions the codecs and pools cannot make alone: timeouts per phase, which
//! error a device sees, when a connection is reusable, and when a retry is safe.

pub mod ack_timing;
pub mod batch;
pub mod client_ids;
pub mod context;
pub mod device_log;
pub mod drain;
pub mod http2_exchange;
pub mod http_forward;
pub mod identity;
pub mod mqtt_aggregate;
pub mod mqtt_bridge;
pub mod mqtt_common;
pub mod mqtt_session;
pub mod sessions;
pub mod throttle;

pub use context::{ShardId, ShardState};
