//! simgate — a carrier-grade IoT protocol-conversion gateway.
//!
//! SIM-connected devices speak plaintext HTTP or MQTT to simgate on a carrier's closed network;
//! simgate forwards their data over TLS to cloud endpoints, holding the cloud credentials.
//!
//! ```text
//!  devices ──SO_REUSEPORT──► shard (io_uring reactor) → proto (sans-IO codecs) → policy (route)
//!                            → upstream pool (rustls, per shard) ──TLS──► clouds
//!  control thread (tokio): admin API · /metrics · reload ── bounded channels ──► shards
//! ```
//!
//! Module map (see `docs/architecture.md`):
//! - [`reactor`]: the per-shard io_uring reactor and executor — the only `unsafe` in the crate.
//! - [`proto`]: sans-IO codecs (HTTP/1.1, MQTT).
//! - [`tls`]: rustls unbuffered client driver over reactor buffers.
//! - [`upstream`]: per-shard pools of TLS connections to destinations.
//! - [`identity`]: the SIM table (source IP / IMSI → SIM), built once per plan.
//! - [`policy`]: the compiled, immutable plan (listeners, destinations, routes).
//! - [`adapters`]: pure per-cloud mappings to upstream requests, and their auth primitives.
//! - [`config`]: TOML schema, validation with field paths, compilation to a plan.
//! - [`flows`]: the glue per device protocol (HTTP forward).
//! - [`shard`]: shard threads, listeners, per-shard state and metrics.
//! - [`control`]: the control thread: admin API, metrics exposition, reload.
//! - [`demo`]: `simgate demo`, the whole path on loopback.
//! - [`top`]: `simgate top`, a live terminal view read from the admin API.
//! - [`testkit`]: certificate minting, an HTTPS sink and a device simulator for the demo,
//!   tests and load tests.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod adapters;
pub mod config;
pub mod control;
pub mod demo;
pub mod flows;
pub mod identity;
pub mod policy;
pub mod proto;
#[allow(unsafe_code)]
pub mod reactor;
pub mod shard;
pub mod stats;
pub mod testkit;
pub mod tls;
pub mod top;
pub mod upstream;
