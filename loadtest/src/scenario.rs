//! Scenario files: what fleet to simulate and what traffic it sends, as TOML.
//!
//! [`Scenario::parse`] rejects unknown keys and bad values with the dotted path of the offending
//! key (`fleet.devicez: unknown field ...`), then checks cross-field rules ([`Scenario::validate`]).
//! The keys, with defaults:
//!
//! ```toml
//! name = "http-1k-keepalive"        # required
//! description = ""
//! target = "127.0.0.1:8080"         # optional; `--target` overrides; one of them is required
//! duration_s = 10.0                 # run length, ramp included
//!
//! [fleet]
//! devices = 1000                    # required, >= 1
//! protocol = "http"                 # http | mqtt
//! ramp_per_s = 0.0                  # new devices per second; 0 = all at once
//! source_addresses = true           # device i binds 127.a.b.c (see `source`) before connecting
//! first_device = 0                  # index of the first device (to split a fleet over runs)
//!
//! [traffic]
//! rate_per_s = 0.0                  # messages per second over the whole fleet; 0 = idle
//! arrival = "constant"              # constant | poisson
//! body_bytes = 256
//! timeout_ms = 10000                # connect and answer timeout
//! seed = 1                          # Poisson schedules are reproducible per seed
//!
//! [http]
//! path = "/telemetry"
//! keepalive = true                  # false: one connection per request (`Connection: close`)
//!
//! [mqtt]                            # only with protocol = "mqtt"
//! version = "3.1.1"                 # "3.1.1" | "5"
//! qos = 0                           # 0 | 1
//! topic = "devices/{device}/telemetry"   # {device} is replaced by the device index
//! keep_alive_s = 60
//! clean_start = true
//! client_id_prefix = "simgate-load-"
//! ```
//!
//! What it does NOT do: include other files, vary the rate during a run, or mix protocols in one
//! scenario (run two instances).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::schedule::Arrival;
use crate::source::MAX_DEVICES;

/// Device protocol of a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 POSTs.
    Http,
    /// MQTT PUBLISHes.
    Mqtt,
}

/// MQTT protocol version of the simulated devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5")]
    V5,
}

/// A parsed, validated scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, echoed in reports.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The gateway's device listener; `--target` overrides it.
    #[serde(default)]
    pub target: Option<SocketAddr>,
    /// Run length in seconds, ramp included.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Who the devices are.
    pub fleet: Fleet,
    /// What they send.
    #[serde(default)]
    pub traffic: Traffic,
    /// HTTP device settings.
    #[serde(default)]
    pub http: HttpSettings,
    /// MQTT device settings (only with `fleet.protocol = "mqtt"`).
    #[serde(default)]
    pub mqtt: Option<MqttSettings>,
}

/// The simulated devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Number of devices.
    pub devices: u64,
    /// Their protocol.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Devices started per second; 0 starts all at once.
    #[serde(default)]
    pub ramp_per_s: f64,
    /// Bind each device to its own 127.a.b.c source address.
    #[serde(default = "default_true")]
    pub source_addresses: bool,
    /// Index of the first device.
    #[serde(default)]
    pub first_device: u64,
}

/// The message schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Messages per second over the whole fleet; 0 = devices only connect and stay idle.
    #[serde(default)]
    pub rate_per_s: f64,
    /// Gap distribution.
    #[serde(default = "default_arrival")]
    pub arrival: Arrival,
    /// Message body (HTTP) or payload (MQTT) size.
    #[serde(default = "default_body_bytes")]
    pub body_bytes: usize,
    /// Connect and answer timeout in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Seed of the Poisson schedules.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            rate_per_s: 0.0,
            arrival: default_arrival(),
            body_bytes: default_body_bytes(),
            timeout_ms: default_timeout_ms(),
            seed: default_seed(),
        }
    }
}

/// HTTP device settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Request target of every POST.
    #[serde(default = "default_path")]
    pub path: String,
    /// Keep connections open between requests; `false` opens one connection per request.
    #[serde(default = "default_true")]
    pub keepalive: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            path: default_path(),
            keepalive: true,
        }
    }
}

/// MQTT device settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// Protocol version.
    #[serde(default = "default_mqtt_version")]
    pub version: MqttVersion,
    /// QoS of every PUBLISH: 0 or 1.
    #[serde(default)]
    pub qos: u8,
    /// Topic; `{device}` is replaced by the device index.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Keep Alive announced in CONNECT, seconds; the device sends PINGREQ when idle this long.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// Clean Start / Clean Session.
    #[serde(default = "default_true")]
    pub clean_start: bool,
    /// Client identifiers are this prefix plus the device index.
    #[serde(default = "default_client_id_prefix")]
    pub client_id_prefix: String,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            version: default_mqtt_version(),
            qos: 0,
            topic: default_topic(),
            keep_alive_s: default_keep_alive(),
            clean_start: true,
            client_id_prefix: default_client_id_prefix(),
        }
    }
}

fn default_duration() -> f64 {
    10.0
}
fn default_protocol() -> Protocol {
    Protocol::Http
}
fn default_true() -> bool {
    true
}
fn default_arrival() -> Arrival {
    Arrival::Constant
}
fn default_body_bytes() -> usize {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_seed() -> u64 {
    1
}
fn default_path() -> String {
    "/telemetry".to_owned()
}
fn default_mqtt_version() -> MqttVersion {
    MqttVersion::V311
}
fn default_topic() -> String {
    "devices/{device}/telemetry".to_owned()
}
fn default_keep_alive() -> u16 {
    60
}
fn default_client_id_prefix() -> String {
    "simgate-load-".to_owned()
}

/// Why a scenario was rejected: the dotted path of the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// Dotted key path, e.g. `fleet.devices`; `.` for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ScenarioError {
    fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ScenarioError {}

/// Largest accepted message body, to keep a typo from allocating gigabytes per device.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Deserializes TOML into `T`, or names the dotted path of the bad key and what is wrong.
pub(crate) fn deserialize_with_path<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, ScenarioError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        // toml's message carries a source excerpt over several lines; the first says it all.
        let message = err
            .inner()
            .message()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        ScenarioError { path, message }
    })
}

impl Scenario {
    /// Parses and validates scenario TOML.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = deserialize_with_path(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks values and cross-field rules the types cannot express.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty() {
            return Err(ScenarioError::new("name", "must not be empty"));
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return Err(ScenarioError::new(
                "duration_s",
                "must be a positive number",
            ));
        }
        let fleet = &self.fleet;
        if fleet.devices == 0 {
            return Err(ScenarioError::new("fleet.devices", "must be at least 1"));
        }
        if !(fleet.ramp_per_s.is_finite() && fleet.ramp_per_s >= 0.0) {
            return Err(ScenarioError::new(
                "fleet.ramp_per_s",
                "must be 0 (all at once) or positive",
            ));
        }
        if fleet.source_addresses
            && fleet
                .first_device
                .checked_add(fleet.devices)
                .is_none_or(|end| end > MAX_DEVICES)
        {
            return Err(ScenarioError::new(
                "fleet.devices",
                format!("first_device + devices exceeds the {MAX_DEVICES} source addresses"),
            ));
        }
        let traffic = &self.traffic;
        if !(traffic.rate_per_s.is_finite() && traffic.rate_per_s >= 0.0) {
            return Err(ScenarioError::new(
                "traffic.rate_per_s",
                "must be 0 (idle) or positive",
            ));
        }
        if traffic.body_bytes > MAX_BODY_BYTES {
            return Err(ScenarioError::new(
                "traffic.body_bytes",
                format!("at most {MAX_BODY_BYTES}"),
            ));
        }
        if traffic.timeout_ms == 0 {
            return Err(ScenarioError::new("traffic.timeout_ms", "must be positive"));
        }
        let path = &self.http.path;
        if !path.starts_with('/') || path.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
            return Err(ScenarioError::new(
                "http.path",
                "must start with / and hold no spaces or control bytes",
            ));
        }
        match (fleet.protocol, &self.mqtt) {
            (Protocol::Http, Some(_)) => {
                return Err(ScenarioError::new(
                    "mqtt",
                    "given, but fleet.protocol is \"http\"",
                ))
            }
            (Protocol::Mqtt, Some(mqtt)) => {
                if mqtt.qos > 1 {
                    return Err(ScenarioError::new("mqtt.qos", "must be 0 or 1"));
                }
                let sample = mqtt.topic.replace("{device}", "0");
                if sample.is_empty() || sample.contains(['+', '#', '\0']) {
                    return Err(ScenarioError::new(
                        "mqtt.topic",
                        "must be a non-empty topic name without wildcards",
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The MQTT settings in force (the defaults when the section is absent).
    pub fn mqtt_settings(&self) -> MqttSettings {
        self.mqtt.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"t\"\n[fleet]\ndevices = 3\n";

    #[test]
    fn minimal_scenario_takes_defaults() {
        let scenario = Scenario::parse(MINIMAL).expect("valid");
        assert_eq!(scenario.fleet.devices, 3);
        assert_eq!(scenario.fleet.protocol, Protocol::Http);
        assert!(scenario.fleet.source_addresses);
        assert_eq!(scenario.traffic, Traffic::default());
        assert_eq!(scenario.http, HttpSettings::default());
        assert_eq!(scenario.target, None);
        assert_eq!(scenario.duration_s, 10.0);
    }

    #[test]
    fn full_mqtt_scenario_parses() {
        let text = r#"
            name = "m"
            target = "127.0.0.1:1883"
            duration_s = 2.5
            [fleet]
            devices = 10
            protocol = "mqtt"
            ramp_per_s = 100
            [traffic]
            rate_per_s = 50
            arrival = "poisson"
            [mqtt]
            version = "5"
            qos = 1
            topic = "t/{device}"
        "#;
        let scenario = Scenario::parse(text).expect("valid");
        assert_eq!(
            scenario.target,
            Some(SocketAddr::from(([127, 0, 0, 1], 1883)))
        );
        assert_eq!(scenario.traffic.arrival, Arrival::Poisson);
        let mqtt = scenario.mqtt_settings();
        assert_eq!(mqtt.version, MqttVersion::V5);
        assert_eq!(mqtt.qos, 1);
        assert_eq!(mqtt.keep_alive_s, 60);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let cases = [
            ("name = \"t\"\nbogus = 1\n[fleet]\ndevices = 1\n", "bogus", "bogus"),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\ndevicez = 2\n",
                "fleet.devicez",
                "devicez",
            ),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\n[traffic]\nrate = 5\n",
                "traffic.rate",
                "rate",
            ),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\nprotocol = \"mqtt\"\n[mqtt]\nqos = 1\nretain = true\n",
                "mqtt.retain",
                "retain",
            ),
        ];
        for (text, path, key) in cases {
            let err = Scenario::parse(text).expect_err(key);
            assert_eq!(err.path, path, "{err}");
            assert!(err.message.contains("unknown field"), "{err}");
            assert!(err.message.contains(key), "{err}");
        }
    }

    #[test]
    fn bad_values_are_rejected_with_their_path() {
        let cases = [
            ("name = \"t\"\n[fleet]\ndevices = \"many\"\n", "fleet.devices"),
            ("name = \"t\"\n[fleet]\ndevices = 0\n", "fleet.devices"),
            ("name = \"t\"\nduration_s = 0\n[fleet]\ndevices = 1\n", "duration_s"),
            ("name = \"t\"\ntarget = \"nowhere\"\n[fleet]\ndevices = 1\n", "target"),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\n[traffic]\narrival = \"bursty\"\n",
                "traffic.arrival",
            ),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\n[traffic]\nrate_per_s = -1\n",
                "traffic.rate_per_s",
            ),
            ("name = \"t\"\n[fleet]\ndevices = 1\n[http]\npath = \"x\"\n", "http.path"),
            ("name = \"t\"\n[fleet]\ndevices = 1\n[mqtt]\nqos = 0\n", "mqtt"),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\nprotocol = \"mqtt\"\n[mqtt]\nqos = 2\n",
                "mqtt.qos",
            ),
            (
                "name = \"t\"\n[fleet]\ndevices = 1\nprotocol = \"mqtt\"\n[mqtt]\ntopic = \"a/#\"\n",
                "mqtt.topic",
            ),
            (
                "name = \"t\"\n[fleet]\ndevices = 16581120\nfirst_device = 1\n",
                "fleet.devices",
            ),
            ("[fleet]\ndevices = 1\n", "."),
        ];
        for (text, path) in cases {
            let err = Scenario::parse(text).expect_err(path);
            assert_eq!(err.path, path, "{text:?}: {err}");
        }
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                if crate::mix::Mix::is_mix(&text) {
                    // Mixes and their parts are loaded by mix's own test.
                    continue;
                }
                if let Err(err) = Scenario::parse(&text) {
                    panic!("{}: {err}", path.display());
                }
                count += 1;
            }
        }
        assert!(count >= 5, "only {count} scenarios");
    }
}
