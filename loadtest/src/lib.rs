//! `simgate-load`: the fleet simulator that load-tests simgate.
//!
//! A run reads a [`scenario::Scenario`] (TOML), simulates its devices — HTTP/1.1 or MQTT
//! publishers, each connecting from its own 127.a.b.c source address ([`source`]) — on an
//! open-loop message schedule ([`schedule`]), and measures latency from each message's INTENDED
//! send time into HDR histograms (coordinated omission corrected, as wrk2 does). [`fleet::run`]
//! drives it and returns a [`stats::Report`]: achieved rate, errors by kind, percentiles, the
//! gateway's CPU and RSS from `/proc` ([`procstat`]), per-second progress, and optionally an
//! HdrHistogram interval log ([`hdrlog`]).
//!
//! ```text
//!  scenario.toml ─► Scenario ─► FleetPlan ─► device tasks (ramped, one per device)
//!                                              │ record(sent, answer latency, error kind)
//!                                              ▼
//!                       Recorder ─(1 s tick)─► progress line · HdrHistogram log · Totals ─► Report
//! ```
//!
//! Every message carries a stamped payload ([`payload`]: device, sequence number, intended send
//! time). The built-in sinks ([`sink`]: HTTP(S) and MQTT(S) servers, or a subscriber behind a
//! real broker) feed a [`tracker`] that counts loss, duplicates and reordering per device and
//! measures end-to-end latency; the report carries it as `delivery`. [`compare`] runs one
//! scenario through simgate and its peers (processes managed by [`sut`]) and prints the ratios;
//! [`plot`] draws their latency percentile spectra as SVG. [`radius`] is a stand-in packet core:
//! paced RADIUS accounting Start/Stop against simgate's `[radius]` listener, every answer verified.
//!
//! What it does NOT do: TLS to the gateway, MQTT QoS 2 devices or device-side subscriptions, or
//! distributed load generation over several machines. It is a client, not the data plane: it
//! runs on an ordinary multi-threaded tokio runtime.
#![warn(missing_docs)]

pub mod compare;
pub mod connect_time;
pub mod device;
pub mod fleet;
pub mod hdrlog;
pub mod mix;
pub mod payload;
pub mod plot;
pub mod procstat;
pub mod radius;
pub mod scenario;
pub mod schedule;
pub mod sink;
pub mod source;
pub mod stats;
pub mod sut;
pub mod tracker;
