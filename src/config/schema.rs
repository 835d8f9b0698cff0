//! The raw TOML schema: what serde reads before any semantic check.
//!
//! Every table denies unknown keys, so a typo is an error with its path
//! (`destination[0].pool.wram`). Scalars are read in wide, permissive types (`i64`, `String`)
//! and every optional key is an `Option`: ranges, formats, defaults and cross-references are
//! checked in `compile`, where all problems are collected instead of stopping at the first.
//! This module does no IO and knows nothing of the `Plan`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[gateway]`; all keys optional.
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[[listener]]`.
    #[serde(default)]
    pub listener: Vec<RawListener>,
    /// `[[credential]]`.
    #[serde(default)]
    pub credential: Vec<RawCredential>,
    /// `[[destination]]`.
    #[serde(default)]
    pub destination: Vec<RawDestination>,
    /// `[[group]]`.
    #[serde(default)]
    pub group: Vec<RawGroup>,
    /// `[radius]`: optional.
    pub radius: Option<RawRadius>,
    /// `[usage]`: optional; usage is metered unless it says `enabled = false`.
    pub usage: Option<RawUsage>,
    /// `[metrics]`: optional; what the shards measure for `/metrics`.
    pub metrics: Option<RawMetrics>,
    /// `[probe]`: optional; destinations are probed every 30 s unless it says `interval = "off"`.
    pub probe: Option<RawProbe>,
    /// `[[sim]]`.
    #[serde(default)]
    pub sim: Vec<RawSim>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub shards: Option<RawShards>,
    pub pin_shards: Option<bool>,
    pub admin: Option<String>,
    pub admin_allow_non_loopback: Option<bool>,
    pub admin_token: Option<RawSecret>,
    pub default_group: Option<String>,
    pub ring_entries: Option<i64>,
    pub recv_buffers: Option<i64>,
    pub recv_buffer_size: Option<i64>,
    pub backlog: Option<i64>,
    pub max_connections: Option<i64>,
    pub reserved_fds: Option<i64>,
    /// CSV file of SIMs, relative to the config file's directory.
    pub sims_file: Option<PathBuf>,
}

/// `gateway.shards`: the string `"auto"` or an integer. Any other string is kept so that
/// `compile` can report it alongside the other errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawShards {
    /// A string (valid only when `"auto"`).
    Word(String),
    /// An integer (valid in 1..=1024).
    Count(i64),
}

impl<'de> Deserialize<'de> for RawShards {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShardsVisitor;
        impl Visitor<'_> for ShardsVisitor {
            type Value = RawShards;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawShards, E> {
                Ok(RawShards::Word(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawShards, E> {
                Ok(RawShards::Count(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawShards, E> {
                Ok(RawShards::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_any(ShardsVisitor)
    }
}

/// A duration string such as `"10s"`, parsed in `compile` so that a bad one is collected with
/// the other errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"10s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// `[[listener]]`. The HTTP keys are valid only with `protocol = "http"`, the MQTT keys only
/// with `protocol = "mqtt"`; `compile` checks that.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: String,
    pub protocol: String,
    pub bind: String,
    pub max_connections: Option<i64>,
    /// `"reject"` or `"default"`: what a source address without a SIM gets; checked in
    /// `compile`.
    pub unknown: Option<String>,
    // HTTP keys.
    pub max_head_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub header_timeout: Option<RawDuration>,
    pub body_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub max_requests_per_connection: Option<i64>,
    /// `"generic"` or `"full"`; checked in `compile`.
    pub error_detail: Option<String>,
    // MQTT keys.
    pub max_packet_size: Option<i64>,
    pub connect_timeout: Option<RawDuration>,
    pub receive_maximum: Option<i64>,
}

/// `[[credential]]`. Which keys a kind takes is checked in `compile`: `x509` (`cert`, `key`
/// as file paths), `aws-keys` (`access_key_id`, `secret_access_key`, `session_token`),
/// `azure-sas` (`key_name`, `key`), `gcp-service-account` (`file`), `basic` (`username`,
/// `password`), `bearer` (`token`). Secret values are [`RawSecret`]s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub name: String,
    pub kind: String,
    pub cert: Option<PathBuf>,
    /// `x509`: the private key file (a path, inline or `{ file }`); `azure-sas`: the key.
    pub key: Option<RawSecret>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<RawSecret>,
    pub session_token: Option<RawSecret>,
    pub key_name: Option<String>,
    /// `gcp-service-account`: the service-account JSON file Google issues.
    pub file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub token: Option<RawSecret>,
}

/// `[[destination]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    pub name: String,
    pub adapter: String,
    /// Required for `https`, `mqtts`, `aws-iot-core` and `things-cloud`; the other cloud
    /// adapters derive it from their keys (and this overrides it).
    pub endpoint: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub credential: Option<String>,
    pub host_header: Option<String>,
    pub base_path: Option<String>,
    pub alpn: Option<Vec<String>>,
    /// `"off"`, `"0"` or a duration; parsed in `compile`.
    pub resolve_interval: Option<RawDuration>,
    /// `"none"` (default) or `"json"`; parsed in `compile`.
    pub envelope: Option<String>,
    #[serde(default)]
    pub pool: RawPool,
    /// `[destination.mqtt]`: required for `adapter = "mqtts"`, an error otherwise.
    pub mqtt: Option<RawMqtt>,
    // Cloud adapter keys (docs/adapters.md); which adapter takes which is checked in
    // `compile`.
    pub region: Option<String>,
    pub function: Option<String>,
    pub qualifier: Option<String>,
    pub invocation: Option<String>,
    pub namespace: Option<String>,
    pub hub: Option<String>,
    pub device_id: Option<String>,
    pub project: Option<String>,
    /// `aws-iot-core`: the topic template; `gcp-pubsub`: the Pub/Sub topic name.
    pub topic: Option<String>,
    pub token_uri: Option<String>,
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub source_id: Option<String>,
    pub partition_key: Option<String>,
    pub ordering_key: Option<String>,
    pub token_ttl: Option<RawDuration>,
    /// `{ max_messages, max_bytes, linger }`: `gcp-pubsub` and `azure-event-hubs` only.
    pub batch: Option<RawBatch>,
}

/// `destination.batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatch {
    pub max_messages: Option<i64>,
    /// A size such as `"1MiB"`, or an integer of bytes.
    pub max_bytes: Option<RawSize>,
    pub linger: Option<RawDuration>,
}

/// A byte size: an integer, or a string with a unit (`"512KiB"`, `"1MiB"`, `"1MB"`); parsed in
/// `compile`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    /// Bytes.
    Bytes(i64),
    /// With a unit.
    Text(String),
}

/// `[destination.mqtt]`. Only `mode` is required; per-mode defaults are applied in `compile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    pub mode: String,
    pub version: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub pass_through_credentials: Option<bool>,
    pub topic: Option<String>,
    pub keep_alive: Option<RawDuration>,
    pub connections_per_shard: Option<i64>,
    pub max_inflight: Option<i64>,
    pub max_publish_rate: Option<i64>,
    pub linger: Option<RawDuration>,
    pub accept_while_down: Option<bool>,
    pub down_after: Option<RawDuration>,
    pub c2d_topic: Option<String>,
    pub thing_name: Option<String>,
    pub thing_topics: Option<bool>,
    pub twin_topic: Option<String>,
    pub methods_topic: Option<String>,
}

/// `[destination.pool]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub warm: Option<i64>,
    pub max_idle: Option<i64>,
    pub idle_timeout: Option<RawDuration>,
    pub max_age: Option<RawDuration>,
    pub max_connecting: Option<i64>,
    pub connect_timeout: Option<RawDuration>,
    pub response_timeout: Option<RawDuration>,
    pub backoff_initial: Option<RawDuration>,
    pub backoff_max: Option<RawDuration>,
}

/// `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub attach: Option<Vec<String>>,
    pub signing_secret: Option<RawSecret>,
}

/// `[radius]`: the RADIUS accounting listener (live IP → SIM bindings from the packet core).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRadius {
    pub bind: String,
    pub secret: RawSecret,
    pub unknown_imsi: Option<String>,
}

/// `[usage]`: the usage file and its rotation, and the intervals kept for `/admin/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUsage {
    /// Meter usage per SIM on the shards (default true).
    pub enabled: Option<bool>,
    /// JSON-lines file, relative to the config file's directory.
    pub file: Option<PathBuf>,
    pub interval: Option<RawDuration>,
    pub max_file_bytes: Option<i64>,
    pub max_file_age: Option<RawDuration>,
    pub keep_intervals: Option<i64>,
}

/// `[metrics]`: measurement switches, and how measurement is kept and exported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    /// Keep the per-destination latency histograms (default true).
    pub histograms: Option<bool>,
    /// How often an interval of the latency histograms' interval logs is closed.
    pub interval_log_period: Option<RawDuration>,
    /// How many closed intervals the interval logs keep.
    pub interval_log_keep: Option<i64>,
}

/// `[probe]`: the control thread's internal probe of every destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    /// How often (`"off"` or `"0"`: never).
    pub interval: Option<RawDuration>,
    /// Longest one probe may take, connect to last answer.
    pub timeout: Option<RawDuration>,
    /// MQTT client id of the probe's CONNECT; `{hostname}` is this node's host name.
    pub client_id: Option<String>,
    /// `[probe.e2e]`: the end-to-end probe.
    pub e2e: Option<RawProbeE2e>,
}

/// `[probe.e2e]`: the end-to-end probe through an MQTT listener (`topic`) or an HTTP listener
/// (`path`); which of the two applies is checked in `compile`, which knows the listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbeE2e {
    pub listener: String,
    pub topic: Option<String>,
    pub path: Option<String>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub window: Option<i64>,
    pub loss_alarm: Option<f64>,
    pub p99_alarm: Option<RawDuration>,
    pub alarm_affects_readiness: Option<bool>,
}

/// A secret: inline (`"…"`), `{ file = "path" }` (relative to the config's directory; a trailing
/// newline is removed) or `{ env = "VAR" }`. Which one is checked in `compile`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSecret {
    /// The secret itself, in the config file.
    Inline(String),
    /// Where to read it.
    Source(RawSecretSource),
}

/// `{ file = … }` or `{ env = … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretSource {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

/// One entry of `group[].routes`. `path` is required on HTTP listeners and an error on MQTT
/// listeners (checked in `compile`, which knows the listener's protocol).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub listener: String,
    pub path: Option<String>,
    pub destination: String,
}

/// `[[sim]]`: one SIM. Values are strings (an IMSI written as a TOML integer would lose its
/// leading zeros); formats are checked by `identity` through `compile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSim {
    pub imsi: String,
    pub ip: Option<String>,
    pub imei: Option<String>,
    pub msisdn: Option<String>,
    pub sim_id: Option<String>,
    pub name: Option<String>,
    pub group: String,
    pub tags: Option<BTreeMap<String, String>>,
}
