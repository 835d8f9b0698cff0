//! Cloud adapters: pure mappings from a device message + SIM identity + destination settings +
//! credential state + time to an upstream request (path, headers, body, topic, properties).
//!
//! One file per cloud, the only place that knows that cloud. No IO here: no sockets, no clock
//! (time is passed in), no token refresh (the control plane mints credentials and pushes them to
//! the shards as data). The authentication primitives the adapters share (AWS SigV4, Azure SAS,
//! Google service-account OAuth2, HTTP Basic) live in [`auth`].

pub mod auth;
