//! Test, demo and load-test support — NOT part of the data plane.
//!
//! These building blocks are shared by `simgate demo`, the integration tests and the load
//! tester. They are ordinary async Rust on tokio, each running on threads of its own so that
//! synchronous tests can drive them:
//!
//! - [`pki`]: a throw-away CA minted at runtime (rcgen) that signs server and mTLS client
//!   certificates, plus PEM loaders into rustls types.
//! - [`https_sink`]: an HTTPS (optionally mTLS) HTTP/1.1 server standing in for a cloud
//!   endpoint; records requests and counts handshakes.
//! - [`device_sim`]: a plaintext HTTP/1.1 device load generator with keep-alive, open-loop rate
//!   control and coordinated-omission-corrected latency histograms.
//!
//! Nothing here follows the data-plane rules (thread-per-core, io_uring, no locks): a test
//! double that is simple and obviously right is worth more than a fast one. Nothing here should
//! be exposed to untrusted networks.

pub mod device_sim;
pub mod https_sink;
pub mod pki;

pub use device_sim::{DeviceSim, DeviceSimConfig, SimError, SimSnapshot};
pub use https_sink::{HttpsSink, RecordedRequest, SinkConfig, SinkError, SinkStats};
pub use pki::{load_certs, load_key, CertFiles, PkiError, TestPki};
