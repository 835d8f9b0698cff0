//! Compiles the cloud adapters' keys of `[[destination]]` (`aws-iot-core`, `azure-iot-hub`,
//! `azure-event-hubs`, `gcp-pubsub`, `aws-lambda`, `things-cloud`) into their
//! [`crate::policy::cloud`] settings: which keys each adapter takes, their formats, the
//! public endpoint each derives from them, the credential each needs, the token the control
//! thread will mint ([`TokenSpec`]), and `batch`.
//!
//! What this does not do: the keys every destination shares (see `destinations`), or any
//! mapping of a device message (the adapters do that at run time).

use std::sync::Arc;
use std::time::Duration;

use super::Compiler;
use crate::config::schema::{RawBatch, RawDestination, RawDuration, RawMqtt, RawSize};
use crate::config::values::{format_duration, parse_duration, Endpoint};
use crate::policy::cloud::{
    AwsIotAuth, AwsIotCoreHttps, AwsLambda, AzureEventHubs, AzureIotHubHttps, AzureIotHubMqtt,
    BatchSettings, CloudCredential, GcpPubsub, LambdaInvocation, ThingsCloud, ThingsCloudKind,
    TokenSpec,
};
use crate::policy::template::{Placeholder, SIM_PLACEHOLDERS};
use crate::policy::{
    Adapter, AdapterKind, MqttDestination, MqttMode, MqttUpstreamVersion, Secret, Template,
    WhileDown,
};

/// `destination.token_ttl` default: SAS tokens and OAuth2 access tokens live an hour.
pub(super) const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Shortest `token_ttl` (tests use a few seconds to force renewals).
pub(super) const TOKEN_TTL_MIN: Duration = Duration::from_secs(2);
/// Longest `token_ttl` of a Google access token (Google's limit for a JWT assertion).
pub(super) const TOKEN_TTL_MAX_GOOGLE: Duration = Duration::from_secs(3600);
/// Longest `token_ttl` of a SAS token.
pub(super) const TOKEN_TTL_MAX_SAS: Duration = Duration::from_secs(7 * 24 * 3600);
/// `batch.max_messages` default.
pub(super) const BATCH_MAX_MESSAGES: usize = 100;
/// `batch.max_bytes` default.
pub(super) const BATCH_MAX_BYTES: usize = 1024 * 1024;
/// `batch.linger` default.
pub(super) const BATCH_LINGER: Duration = Duration::from_millis(5);
/// Longest `batch.linger`: devices wait this long for their answer at most on its account.
pub(super) const BATCH_LINGER_MAX: Duration = Duration::from_secs(1);
/// Google's OAuth2 scope for Pub/Sub.
pub const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// The keys each cloud adapter takes (besides the shared ones).
fn keys_of(kind: AdapterKind) -> &'static [&'static str] {
    match kind {
        AdapterKind::GenericHttps | AdapterKind::Mqtts => &[],
        AdapterKind::AwsIotCore => &["region", "topic"],
        AdapterKind::AzureIotHub => &["hub", "device_id", "token_ttl"],
        AdapterKind::AzureEventHubs => &["namespace", "hub", "partition_key", "token_ttl", "batch"],
        AdapterKind::GcpPubsub => &[
            "project",
            "topic",
            "token_uri",
            "ordering_key",
            "token_ttl",
            "batch",
        ],
        AdapterKind::AwsLambda => &["region", "function", "qualifier", "invocation"],
        AdapterKind::ThingsCloud => &["tenant", "kind", "source_id"],
    }
}

/// The public endpoint of a cloud adapter derived from its keys, or why it cannot be.
pub(super) fn derived_endpoint(kind: AdapterKind, raw: &RawDestination) -> Result<String, String> {
    let need = |key: &str, value: &Option<String>| -> Result<String, String> {
        match value {
            Some(v) if is_dns_label(v) => Ok(v.clone()),
            Some(v) => Err(format!(
                "cannot derive the endpoint: {key} {v:?} is not a valid DNS label"
            )),
            None => Err(format!("required (or set `{key}` to derive it)")),
        }
    };
    match kind {
        // MQTT (a `[destination.mqtt]` table) on 8883: IoT Hub has no MQTT on 1883.
        AdapterKind::AzureIotHub => Ok(format!(
            "{}.azure-devices.net:{}",
            need("hub", &raw.hub)?,
            if raw.mqtt.is_some() { 8883 } else { 443 }
        )),
        AdapterKind::AzureEventHubs => Ok(format!(
            "{}.servicebus.windows.net:443",
            need("namespace", &raw.namespace)?
        )),
        AdapterKind::GcpPubsub => Ok("pubsub.googleapis.com:443".to_owned()),
        AdapterKind::AwsLambda => Ok(format!(
            "lambda.{}.amazonaws.com:443",
            need("region", &raw.region)?
        )),
        AdapterKind::AwsIotCore => Err(format!(
            "required: your account's AWS IoT data endpoint, e.g. \
             \"abc123-ats.iot.eu-west-1.amazonaws.com:{}\" (aws iot describe-endpoint \
             --endpoint-type iot:Data-ATS)",
            if raw.mqtt.is_some() { 8883 } else { 8443 }
        )),
        AdapterKind::ThingsCloud => Err(
            "required: your tenant's host, e.g. \"mytenant.je1.thingscloud.ntt.com:443\""
                .to_owned(),
        ),
        AdapterKind::GenericHttps | AdapterKind::Mqtts => Err("required".to_owned()),
    }
}

fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

/// AWS region names: lower-case letters, digits and dashes (`eu-west-1`).
fn is_region(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a byte size: an integer, or a number with `B`, `KB`, `KiB`, `MB`, `MiB`.
pub(super) fn parse_size(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(n) => {
            u64::try_from(*n).map_err(|_| format!("must not be negative, got {n}"))
        }
        RawSize::Text(text) => {
            let t = text.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let n: u64 = digits.parse().map_err(|_| {
                format!("invalid size {text:?}: expected e.g. \"512KiB\", \"1MiB\" or bytes")
            })?;
            let factor: u64 = match unit.trim() {
                "" | "B" => 1,
                "KB" | "kB" => 1000,
                "KiB" => 1024,
                "MB" => 1000 * 1000,
                "MiB" => 1024 * 1024,
                other => {
                    return Err(format!(
                        "invalid size {text:?}: unknown unit {other:?} (B, KB, KiB, MB, MiB)"
                    ))
                }
            };
            n.checked_mul(factor)
                .ok_or_else(|| format!("size {text:?} is too large"))
        }
    }
}

/// `mqtt.c2d_topic` default: the device topic IoT Hub cloud-to-device messages arrive on.
pub(super) const C2D_TOPIC: &str = "devicebound";

impl Compiler<'_> {
    /// `[destination.mqtt]` of `azure-iot-hub`: session mode only, the keys the adapter sets
    /// refused, `c2d_topic` checked. Turns the HTTPS settings into the MQTT form.
    pub(super) fn azure_iot_hub_mqtt(
        &mut self,
        p: &str,
        raw: &RawMqtt,
        https: AzureIotHubHttps,
    ) -> Option<Adapter> {
        let p = format!("{p}.mqtt");
        let mut ok = true;
        match raw.mode.as_str() {
            "session" => {}
            "aggregate" => {
                self.push(
                    format!("{p}.mode"),
                    "an IoT Hub MQTT connection is one device: use session mode (mode = \
                     \"session\": every SIM its own IoT Hub device)",
                );
                ok = false;
            }
            other => {
                self.push(
                    format!("{p}.mode"),
                    format!("unknown mode {other:?}; adapter \"azure-iot-hub\" takes \"session\""),
                );
                ok = false;
            }
        }
        let set_by_adapter = [
            (
                "client_id",
                raw.client_id.is_some(),
                "the device id (device_id)",
            ),
            (
                "username",
                raw.username.is_some(),
                "{hub}.azure-devices.net/{device_id}/?api-version=2021-04-12",
            ),
            (
                "password_file",
                raw.password_file.is_some(),
                "the SAS token minted from the credential",
            ),
            (
                "pass_through_credentials",
                raw.pass_through_credentials.is_some(),
                "the SAS token minted from the credential",
            ),
            (
                "topic",
                raw.topic.is_some(),
                "devices/{device_id}/messages/events/{property bag}",
            ),
            ("version", raw.version.is_some(), "MQTT 3.1.1"),
        ];
        for (key, set, what) in set_by_adapter {
            if set {
                self.push(
                    format!("{p}.{key}"),
                    format!("set by adapter \"azure-iot-hub\" (it sends {what}); remove it"),
                );
                ok = false;
            }
        }
        for (key, set) in [
            ("keep_alive", raw.keep_alive.is_some()),
            ("connections_per_shard", raw.connections_per_shard.is_some()),
            ("max_inflight", raw.max_inflight.is_some()),
            ("max_publish_rate", raw.max_publish_rate.is_some()),
            ("linger", raw.linger.is_some()),
            ("accept_while_down", raw.accept_while_down.is_some()),
            ("down_after", raw.down_after.is_some()),
        ] {
            if set {
                self.push(
                    format!("{p}.{key}"),
                    "only for mode \"aggregate\", which adapter \"azure-iot-hub\" does not take",
                );
                ok = false;
            }
        }
        let c2d_topic = raw.c2d_topic.as_deref().unwrap_or(C2D_TOPIC);
        if c2d_topic.is_empty() || c2d_topic.len() > 1024 || c2d_topic.contains(['+', '#', '\0']) {
            self.push(
                format!("{p}.c2d_topic"),
                format!(
                    "invalid device topic {c2d_topic:?}: 1 to 1024 bytes, without the wildcards \
                     '+' and '#' or NUL"
                ),
            );
            ok = false;
        }
        let twin_topic = raw
            .twin_topic
            .as_deref()
            .unwrap_or(crate::adapters::azure_iot_hub_mqtt::HUB_TWIN);
        let methods_topic = raw
            .methods_topic
            .as_deref()
            .unwrap_or(crate::adapters::azure_iot_hub_mqtt::HUB_METHODS);
        for (key, prefix) in [("twin_topic", twin_topic), ("methods_topic", methods_topic)] {
            if prefix.is_empty()
                || prefix.len() > 1024
                || prefix.contains(['+', '#', '\0'])
                || prefix.ends_with('/')
            {
                self.push(
                    format!("{p}.{key}"),
                    format!(
                        "invalid device topic prefix {prefix:?}: 1 to 1024 bytes, without the \
                         wildcards '+' and '#', NUL or a trailing '/'"
                    ),
                );
                ok = false;
            }
        }
        // Each device topic must have one meaning: telemetry, C2D, twin or methods.
        let nested = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        for (key, prefix, other_key, other) in [
            ("twin_topic", twin_topic, "methods_topic", methods_topic),
            ("methods_topic", methods_topic, "twin_topic", twin_topic),
            ("twin_topic", twin_topic, "c2d_topic", c2d_topic),
            ("methods_topic", methods_topic, "c2d_topic", c2d_topic),
        ] {
            if ok && (nested(prefix, other) || (other_key == "c2d_topic" && nested(other, prefix)))
            {
                self.push(
                    format!("{p}.{key}"),
                    format!(
                        "{prefix:?} overlaps {other_key} {other:?}: a device topic would have two \
                         meanings"
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let username = format!(
            "{}.azure-devices.net/{}/?api-version={}",
            https.hub,
            https.device_id.as_str(),
            crate::adapters::azure_iot_hub_mqtt::API_VERSION
        );
        let username = self.cloud_template(format!("{p}.username"), &username, SIM_PLACEHOLDERS)?;
        let topic = Template::parse("{topic}", &[Placeholder::Topic]).ok()?;
        let session = MqttDestination {
            mode: MqttMode::Session,
            version: MqttUpstreamVersion::V311,
            client_id: https.device_id.clone(),
            username: Some(username),
            password: None,
            pass_through_credentials: false,
            topic: Arc::new(topic),
            keep_alive: Duration::from_secs(60),
            connections_per_shard: 1,
            max_inflight: 1,
            linger: Duration::ZERO,
            max_publish_rate: None,
            while_down: WhileDown::Accept,
        };
        Some(Adapter::AzureIotHubMqtt(AzureIotHubMqtt {
            hub: https.hub,
            device_id: https.device_id,
            c2d_topic: bytes::Bytes::from(c2d_topic.to_owned()),
            twin_topic: bytes::Bytes::from(twin_topic.to_owned()),
            methods_topic: bytes::Bytes::from(methods_topic.to_owned()),
            session,
        }))
    }

    /// Report every cloud key set on a destination whose adapter does not take it.
    pub(super) fn check_cloud_keys(
        &mut self,
        p: &str,
        adapter: Option<AdapterKind>,
        raw: &RawDestination,
    ) {
        let Some(kind) = adapter else { return };
        let present = [
            ("region", raw.region.is_some()),
            ("function", raw.function.is_some()),
            ("qualifier", raw.qualifier.is_some()),
            ("invocation", raw.invocation.is_some()),
            ("namespace", raw.namespace.is_some()),
            ("hub", raw.hub.is_some()),
            ("device_id", raw.device_id.is_some()),
            ("project", raw.project.is_some()),
            ("topic", raw.topic.is_some()),
            ("token_uri", raw.token_uri.is_some()),
            ("tenant", raw.tenant.is_some()),
            ("kind", raw.kind.is_some()),
            ("source_id", raw.source_id.is_some()),
            ("partition_key", raw.partition_key.is_some()),
            ("ordering_key", raw.ordering_key.is_some()),
            ("token_ttl", raw.token_ttl.is_some()),
            ("batch", raw.batch.is_some()),
        ];
        let allowed = keys_of(kind);
        for (key, set) in present {
            if set && !allowed.contains(&key) {
                let takes = if allowed.is_empty() {
                    "none of the cloud keys".to_owned()
                } else {
                    allowed.join(", ")
                };
                self.push(
                    format!("{p}.{key}"),
                    format!(
                        "not a key of adapter {:?}; it takes: {takes}",
                        kind.config_name()
                    ),
                );
            }
        }
    }

    /// `destination.token_ttl` (default 1 h), within the adapter's bounds.
    pub(super) fn token_ttl(
        &mut self,
        p: &str,
        adapter: Option<AdapterKind>,
        raw: Option<&RawDuration>,
    ) -> Option<Duration> {
        let Some(RawDuration(text)) = raw else {
            return Some(TOKEN_TTL);
        };
        let max = match adapter {
            Some(AdapterKind::GcpPubsub) => TOKEN_TTL_MAX_GOOGLE,
            _ => TOKEN_TTL_MAX_SAS,
        };
        match parse_duration(text) {
            Ok(d) if d >= TOKEN_TTL_MIN && d <= max => Some(d),
            Ok(_) => {
                self.push(
                    format!("{p}.token_ttl"),
                    format!(
                        "must be between {} and {}, got {text:?}",
                        format_duration(TOKEN_TTL_MIN),
                        format_duration(max)
                    ),
                );
                None
            }
            Err(e) => {
                self.push(
                    format!("{p}.token_ttl"),
                    format!("invalid duration {text:?}: {e}"),
                );
                None
            }
        }
    }

    /// ALPN of `aws-iot-core`: `http/1.1` or `x-amzn-http-ca` (mutual TLS on port 443, which
    /// is the default there).
    pub(super) fn aws_iot_alpn(
        &mut self,
        p: &str,
        raw: Option<&[String]>,
        endpoint: Option<&Endpoint>,
        mutual_tls: bool,
    ) -> Option<Vec<String>> {
        const AMZN: &str = "x-amzn-http-ca";
        let Some(list) = raw else {
            let on_443 = endpoint.is_some_and(|e| e.port == 443);
            return Some(vec![if mutual_tls && on_443 {
                AMZN
            } else {
                "http/1.1"
            }
            .to_owned()]);
        };
        let mut ok = !list.is_empty();
        if list.is_empty() {
            self.push(format!("{p}.alpn"), "must not be empty");
        }
        for (k, proto) in list.iter().enumerate() {
            if proto != "http/1.1" && proto != "h2" && proto != AMZN {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!(
                        "unsupported ALPN protocol {proto:?}; supported: \"h2\", \"http/1.1\", \
                         \"{AMZN}\""
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| list.to_vec())
    }

    fn cloud_template(
        &mut self,
        path: String,
        text: &str,
        allowed: &[Placeholder],
    ) -> Option<Template> {
        match Template::parse(text, allowed) {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(path, format!("invalid template {text:?}: {e}"));
                None
            }
        }
    }

    fn required_key(
        &mut self,
        p: &str,
        key: &str,
        value: &Option<String>,
        kind: AdapterKind,
    ) -> Option<String> {
        match value {
            Some(v) if !v.is_empty() => Some(v.clone()),
            _ => {
                self.push(
                    format!("{p}.{key}"),
                    format!("required for adapter {:?}", kind.config_name()),
                );
                None
            }
        }
    }

    fn require_credential(&mut self, p: &str, kind: AdapterKind, what: &str) {
        self.push(
            format!("{p}.credential"),
            format!(
                "adapter {:?} needs a credential of kind {what}",
                kind.config_name()
            ),
        );
    }

    /// The batch settings, within the adapter's call limits.
    fn batch(
        &mut self,
        p: &str,
        raw: Option<&RawBatch>,
        max_bytes_limit: usize,
        max_messages_limit: usize,
    ) -> Option<Option<BatchSettings>> {
        let Some(raw) = raw else { return Some(None) };
        let mut ok = true;
        let max_messages = match raw.max_messages {
            None => BATCH_MAX_MESSAGES.min(max_messages_limit),
            Some(n) if n >= 1 && (n as u64) <= max_messages_limit as u64 => n as usize,
            Some(n) => {
                self.push(
                    format!("{p}.batch.max_messages"),
                    format!("must be between 1 and {max_messages_limit} (the service's limit per call), got {n}"),
                );
                ok = false;
                0
            }
        };
        let max_bytes = match raw.max_bytes.as_ref().map(parse_size) {
            None => BATCH_MAX_BYTES.min(max_bytes_limit),
            Some(Ok(n)) if n >= 1024 && n <= max_bytes_limit as u64 => n as usize,
            Some(Ok(n)) => {
                self.push(
                    format!("{p}.batch.max_bytes"),
                    format!("must be between 1KiB and {max_bytes_limit} bytes (the service's limit per call), got {n}"),
                );
                ok = false;
                0
            }
            Some(Err(e)) => {
                self.push(format!("{p}.batch.max_bytes"), e);
                ok = false;
                0
            }
        };
        let linger = match &raw.linger {
            None => BATCH_LINGER,
            Some(RawDuration(text)) => match parse_duration(text) {
                Ok(d) if d <= BATCH_LINGER_MAX => d,
                Ok(_) => {
                    self.push(
                        format!("{p}.batch.linger"),
                        format!(
                            "must be at most {}, got {text:?}",
                            format_duration(BATCH_LINGER_MAX)
                        ),
                    );
                    ok = false;
                    Duration::ZERO
                }
                Err(e) => {
                    self.push(
                        format!("{p}.batch.linger"),
                        format!("invalid duration {text:?}: {e}"),
                    );
                    ok = false;
                    Duration::ZERO
                }
            },
        };
        ok.then_some(Some(BatchSettings {
            max_messages,
            max_bytes,
            linger,
        }))
    }

    /// The settings of a cloud adapter and the token its requests carry.
    pub(super) fn cloud_adapter(
        &mut self,
        p: &str,
        kind: AdapterKind,
        raw: &RawDestination,
        credential: Option<Arc<CloudCredential>>,
        host_header: &str,
        token_ttl: Duration,
    ) -> Option<(Adapter, Option<TokenSpec>)> {
        let mut sim_and_topic: Vec<Placeholder> = SIM_PLACEHOLDERS.to_vec();
        sim_and_topic.push(Placeholder::Topic);
        match kind {
            AdapterKind::AwsIotCore => {
                let topic = self.cloud_template(
                    format!("{p}.topic"),
                    raw.topic.as_deref().unwrap_or("{topic}"),
                    &sim_and_topic,
                );
                let auth = match credential {
                    // x509 (or none: mutual TLS needs the x509 credential).
                    None => {
                        if raw.credential.is_none() {
                            self.require_credential(
                                p,
                                kind,
                                "\"x509\" (mutual TLS) or \"aws-keys\" (SigV4)",
                            );
                            return None;
                        }
                        if raw.region.is_some() {
                            self.push(
                                format!("{p}.region"),
                                "only with an \"aws-keys\" credential (SigV4)",
                            );
                        }
                        Some(AwsIotAuth::MutualTls)
                    }
                    Some(c) => match &raw.region {
                        Some(r) if is_region(r) => Some(AwsIotAuth::SigV4 {
                            region: r.clone(),
                            credential: c,
                        }),
                        Some(r) => {
                            self.push(format!("{p}.region"), format!("invalid AWS region {r:?}"));
                            None
                        }
                        None => {
                            self.push(format!("{p}.region"), "required with an \"aws-keys\" credential (SigV4 signs for a region)");
                            None
                        }
                    },
                };
                Some((
                    Adapter::AwsIotCore(AwsIotCoreHttps {
                        topic: topic?,
                        auth: auth?,
                    }),
                    None,
                ))
            }
            AdapterKind::AzureIotHub => {
                let hub = self.required_key(p, "hub", &raw.hub, kind);
                let device_id = self.cloud_template(
                    format!("{p}.device_id"),
                    raw.device_id.as_deref().unwrap_or("{imsi}"),
                    SIM_PLACEHOLDERS,
                );
                let Some(c) = credential else {
                    self.require_credential(p, kind, "\"azure-sas\"");
                    return None;
                };
                let CloudCredential::AzureSas { key_name, key } = &*c else {
                    return None;
                };
                let (hub, device_id) = (hub?, device_id?);
                let _ = host_header;
                // A device key signs for one device; a hub policy key (with DeviceConnect)
                // for the whole hub, so that one token serves every SIM's device id.
                let host = format!("{hub}.azure-devices.net");
                let resource_uri = match (key_name, device_id.fixed_text()) {
                    (Some(_), _) => host,
                    (None, Some(id)) => format!("{host}/devices/{id}"),
                    (None, None) => {
                        self.push(
                            format!("{p}.device_id"),
                            "a device key (credential without key_name) signs for one device, so \
                             device_id must be fixed text; to send as many devices, use a hub \
                             policy key with the DeviceConnect permission (key_name = …)",
                        );
                        return None;
                    }
                };
                let token = TokenSpec::Sas {
                    resource_uri,
                    key: key.clone(),
                    key_is_base64: true,
                    key_name: key_name.clone(),
                    ttl: token_ttl,
                };
                Some((
                    Adapter::AzureIotHub(AzureIotHubHttps { hub, device_id }),
                    Some(token),
                ))
            }
            AdapterKind::AzureEventHubs => {
                let namespace = self.required_key(p, "namespace", &raw.namespace, kind);
                let hub = self.required_key(p, "hub", &raw.hub, kind);
                let partition_key = match raw.partition_key.as_deref() {
                    Some("") => Some(None),
                    text => self
                        .cloud_template(
                            format!("{p}.partition_key"),
                            text.unwrap_or("{imsi}"),
                            SIM_PLACEHOLDERS,
                        )
                        .map(Some),
                };
                // Event Hubs (Standard tier) takes at most 1 MB (1,048,576 bytes) per send.
                let batch = self.batch(
                    p,
                    raw.batch.as_ref(),
                    crate::adapters::azure_event_hubs::MAX_PAYLOAD,
                    10_000,
                );
                let Some(c) = credential else {
                    self.require_credential(p, kind, "\"azure-sas\" with key_name (a policy key)");
                    return None;
                };
                let CloudCredential::AzureSas { key_name, key } = &*c else {
                    return None;
                };
                if key_name.is_none() {
                    self.push(
                        format!("{p}.credential"),
                        "Event Hubs takes a policy key: the credential needs key_name (the \
                         shared access policy's name, e.g. \"send\")",
                    );
                    return None;
                }
                let (namespace, hub) = (namespace?, hub?);
                let token = TokenSpec::Sas {
                    resource_uri: format!("https://{namespace}.servicebus.windows.net/{hub}"),
                    key: key.clone(),
                    key_is_base64: false,
                    key_name: key_name.clone(),
                    ttl: token_ttl,
                };
                Some((
                    Adapter::AzureEventHubs(AzureEventHubs {
                        namespace,
                        hub,
                        partition_key: partition_key?,
                        batch: batch?,
                    }),
                    Some(token),
                ))
            }
            AdapterKind::GcpPubsub => {
                let project = self.required_key(p, "project", &raw.project, kind);
                let topic = self.required_key(p, "topic", &raw.topic, kind);
                let ordering_key = match raw.ordering_key.as_deref() {
                    None | Some("") => Some(None),
                    Some(text) => self
                        .cloud_template(format!("{p}.ordering_key"), text, SIM_PLACEHOLDERS)
                        .map(Some),
                };
                // Pub/Sub: 1,000 messages and 10 MB per publish request, of which the
                // `{"messages":[…]}` around the messages takes 15 bytes.
                let batch = self.batch(
                    p,
                    raw.batch.as_ref(),
                    crate::adapters::gcp_pubsub::MAX_REQUEST - 16,
                    1000,
                );
                let Some(c) = credential else {
                    self.require_credential(p, kind, "\"gcp-service-account\"");
                    return None;
                };
                let CloudCredential::GcpServiceAccount {
                    json, token_uri, ..
                } = &*c
                else {
                    return None;
                };
                let token_uri = match &raw.token_uri {
                    None => Some(token_uri.clone()),
                    Some(uri)
                        if uri.starts_with("https://") && !uri.contains(char::is_whitespace) =>
                    {
                        Some(uri.clone())
                    }
                    Some(uri) => {
                        self.push(
                            format!("{p}.token_uri"),
                            format!("must be an https:// URL, got {uri:?}"),
                        );
                        None
                    }
                };
                let token = TokenSpec::GoogleOauth2 {
                    service_account: json.clone(),
                    token_uri: token_uri?,
                    scope: PUBSUB_SCOPE.to_owned(),
                    ttl: token_ttl,
                };
                Some((
                    Adapter::GcpPubsub(GcpPubsub {
                        project: project?,
                        topic: topic?,
                        ordering_key: ordering_key?,
                        batch: batch?,
                    }),
                    Some(token),
                ))
            }
            AdapterKind::AwsLambda => {
                let region = match &raw.region {
                    Some(r) if is_region(r) => Some(r.clone()),
                    Some(r) => {
                        self.push(format!("{p}.region"), format!("invalid AWS region {r:?}"));
                        None
                    }
                    None => self.required_key(p, "region", &None, kind),
                };
                let function = match &raw.function {
                    Some(f)
                        if !f.is_empty()
                            && f.len() <= 170
                            && f.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) =>
                    {
                        Some(f.clone())
                    }
                    Some(f) => {
                        self.push(format!("{p}.function"), format!("invalid function name {f:?}: letters, digits, '-', '_', ':' and '.' (a name or an ARN), at most 170"));
                        None
                    }
                    None => self.required_key(p, "function", &None, kind),
                };
                let qualifier = match &raw.qualifier {
                    None => Some(None),
                    Some(q)
                        if !q.is_empty()
                            && q.len() <= 128
                            && q.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_$".contains(&b)) =>
                    {
                        Some(Some(q.clone()))
                    }
                    Some(q) => {
                        self.push(
                            format!("{p}.qualifier"),
                            format!(
                                "invalid qualifier {q:?}: a version number, $LATEST or an alias"
                            ),
                        );
                        None
                    }
                };
                let invocation = match raw.invocation.as_deref() {
                    None | Some("request-response") => Some(LambdaInvocation::RequestResponse),
                    Some("event") => Some(LambdaInvocation::Event),
                    Some(other) => {
                        self.push(format!("{p}.invocation"), format!("unsupported invocation {other:?}; supported: \"request-response\", \"event\""));
                        None
                    }
                };
                let Some(credential) = credential else {
                    self.require_credential(p, kind, "\"aws-keys\"");
                    return None;
                };
                Some((
                    Adapter::AwsLambda(AwsLambda {
                        region: region?,
                        function: function?,
                        qualifier: qualifier?,
                        invocation: invocation?,
                        credential,
                    }),
                    None,
                ))
            }
            AdapterKind::ThingsCloud => {
                let tenant = match &raw.tenant {
                    Some(t)
                        if !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':') =>
                    {
                        Some(t.clone())
                    }
                    Some(t) => {
                        self.push(format!("{p}.tenant"), format!("invalid tenant id {t:?}"));
                        None
                    }
                    None => self.required_key(p, "tenant", &None, kind),
                };
                let kind_setting = match raw.kind.as_deref() {
                    None | Some("measurement") => Some(ThingsCloudKind::Measurement),
                    Some("event") => Some(ThingsCloudKind::Event),
                    Some(other) => {
                        self.push(
                            format!("{p}.kind"),
                            format!(
                                "unsupported kind {other:?}; supported: \"measurement\", \"event\""
                            ),
                        );
                        None
                    }
                };
                let source_id = self.cloud_template(
                    format!("{p}.source_id"),
                    raw.source_id.as_deref().unwrap_or("{tag.c8y_id}"),
                    SIM_PLACEHOLDERS,
                );
                let Some(credential) = credential else {
                    self.require_credential(p, kind, "\"basic\"");
                    return None;
                };
                let CloudCredential::Basic { username, password } = &*credential else {
                    return None;
                };
                let tenant = tenant?;
                // Cumulocity: `{tenant}/{user}` as the Basic user name.
                let authorization = crate::adapters::auth::basic::basic_authorization(
                    &format!("{tenant}/{username}"),
                    &String::from_utf8_lossy(&password.0),
                );
                Some((
                    Adapter::ThingsCloud(ThingsCloud {
                        tenant,
                        kind: kind_setting?,
                        source_id: source_id?,
                        authorization: Secret(authorization.into()),
                    }),
                    None,
                ))
            }
            AdapterKind::GenericHttps | AdapterKind::Mqtts => None,
        }
    }
}
