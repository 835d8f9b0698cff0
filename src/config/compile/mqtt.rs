//! Compiles `[destination.mqtt]` into an [`MqttDestination`]: mode, upstream version, the
//! client id / username / topic templates (per-mode defaults and placeholder sets, client ids
//! unique per upstream connection), the password file, keep-alive, linger and the
//! while-the-broker-is-down policy, with the rules between keys that depend on the mode.
//!
//! What this does not do: the rest of the destination (see `destinations`), or render
//! templates (see `policy::template`).

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{defaults, Compiler};
use crate::config::schema::{RawDuration, RawMqtt};
use crate::config::tls_material;
use crate::config::values::{format_duration, parse_duration};
use crate::policy::template::{Placeholder, SIM_PLACEHOLDERS};
use crate::policy::{
    MqttDestination, MqttMode, MqttUpstreamVersion, Secret, Template, TemplateError, WhileDown,
    MQTT_DOWN_AFTER, MQTT_DOWN_AFTER_MIN, MQTT_LINGER_MAX, MQTT_MAX_PUBLISH_RATE_MAX,
};

impl Compiler<'_> {
    /// `[destination.mqtt]`; `p` is the destination's path. `default_rate` is the adapter's
    /// `max_publish_rate` when the key is not set (`policy::default_max_publish_rate`).
    pub(super) fn mqtt(
        &mut self,
        p: &str,
        raw: &RawMqtt,
        shards: Option<usize>,
        default_rate: Option<NonZeroU32>,
    ) -> Option<MqttDestination> {
        let p = format!("{p}.mqtt");
        let mode = match raw.mode.as_str() {
            "session" => Some(MqttMode::Session),
            "aggregate" => Some(MqttMode::Aggregate),
            other => {
                self.push(
                    format!("{p}.mode"),
                    format!("unknown mode {other:?}; expected \"session\" or \"aggregate\""),
                );
                None
            }
        };
        let keep_alive = self.keep_alive(&format!("{p}.keep_alive"), raw.keep_alive.as_ref());
        let connections_per_shard = self.int(
            &format!("{p}.connections_per_shard"),
            raw.connections_per_shard,
            defaults::MQTT_CONNECTIONS_PER_SHARD,
            1..=64,
        );
        let max_inflight = self.int(
            &format!("{p}.max_inflight"),
            raw.max_inflight,
            defaults::MQTT_MAX_INFLIGHT,
            1..=65535,
        );
        let linger = self.linger(&format!("{p}.linger"), raw.linger.as_ref());
        let max_publish_rate = match raw.max_publish_rate {
            None => Some(default_rate),
            Some(_) => self
                .int::<u32>(
                    &format!("{p}.max_publish_rate"),
                    raw.max_publish_rate,
                    0,
                    1..=i64::from(MQTT_MAX_PUBLISH_RATE_MAX),
                )
                .map(NonZeroU32::new),
        };
        let down_after = self.down_after(&format!("{p}.down_after"), raw.down_after.as_ref());
        // Everything below depends on the mode.
        let mode = mode?;
        // False once a rule between keys fails (each value may have parsed on its own).
        let mut ok = true;

        let version = match (raw.version.as_deref(), mode) {
            (None, MqttMode::Session) => Some(MqttUpstreamVersion::SameAsDevice),
            (None, MqttMode::Aggregate) => Some(MqttUpstreamVersion::V311),
            (Some("device"), MqttMode::Session) => Some(MqttUpstreamVersion::SameAsDevice),
            (Some("device"), MqttMode::Aggregate) => {
                self.push(
                    format!("{p}.version"),
                    "\"device\" is only for mode \"session\": an aggregate connection carries \
                     devices of every version; use \"3.1.1\" or \"5\"",
                );
                None
            }
            (Some("3.1.1"), _) => Some(MqttUpstreamVersion::V311),
            (Some("5"), _) => Some(MqttUpstreamVersion::V5),
            (Some(other), MqttMode::Session) => {
                self.push(
                    format!("{p}.version"),
                    format!("unknown version {other:?}; expected \"device\", \"3.1.1\" or \"5\""),
                );
                None
            }
            (Some(other), MqttMode::Aggregate) => {
                self.push(
                    format!("{p}.version"),
                    format!("unknown version {other:?}; expected \"3.1.1\" or \"5\""),
                );
                None
            }
        };

        let (default_client_id, default_topic) = match mode {
            MqttMode::Session => (
                defaults::MQTT_SESSION_CLIENT_ID,
                defaults::MQTT_SESSION_TOPIC,
            ),
            MqttMode::Aggregate => (
                defaults::MQTT_AGGREGATE_CLIENT_ID,
                defaults::MQTT_AGGREGATE_TOPIC,
            ),
        };
        let client_id_path = format!("{p}.client_id");
        let client_id = self.template(
            &client_id_path,
            raw.client_id.as_deref().unwrap_or(default_client_id),
            &with_sim(IDENTITY_BASE),
            &excluded_in_mode(mode),
            mode,
        );
        if let Some(template) = &client_id {
            ok &= self.check_client_id_unique(
                &client_id_path,
                template,
                mode,
                shards,
                connections_per_shard,
            );
        }

        let username = match raw.username.as_deref() {
            None => Some(None),
            Some("") => {
                self.push(
                    format!("{p}.username"),
                    "must not be empty (leave the key out to send no username)",
                );
                None
            }
            Some(text) => self
                .template(
                    &format!("{p}.username"),
                    text,
                    &with_sim(IDENTITY_BASE),
                    &excluded_in_mode(mode),
                    mode,
                )
                .map(Some),
        };

        let password = match &raw.password_file {
            None => Some(None),
            Some(file) => self
                .password_file(&format!("{p}.password_file"), file)
                .map(Some),
        };
        if raw.password_file.is_some()
            && raw.username.is_none()
            && version.is_some_and(|v| v != MqttUpstreamVersion::V5)
        {
            self.push(
                format!("{p}.password_file"),
                "MQTT 3.1.1 sends a password only together with a username: set username \
                 too, or version = \"5\"",
            );
            ok = false;
        }

        if mode == MqttMode::Session && linger.is_some_and(|l| !l.is_zero()) {
            self.push(
                format!("{p}.linger"),
                "only for mode \"aggregate\": a session connection carries one device, whose \
                 messages are written as they arrive",
            );
            ok = false;
        }
        if mode == MqttMode::Session && raw.max_publish_rate.is_some() {
            self.push(
                format!("{p}.max_publish_rate"),
                "only for mode \"aggregate\": in session mode every device has its own upstream \
                 connection, so that connection's rate is the device's own and simgate does not \
                 pace it",
            );
            ok = false;
        }
        let accept_while_down = raw.accept_while_down.unwrap_or(true);
        if mode == MqttMode::Session {
            let why = "only for mode \"aggregate\": in session mode a device's CONNECT is \
                       answered after the broker's, so it is refused (0x88, 3.1.1: 3) whenever \
                       the broker cannot be reached";
            if raw.accept_while_down.is_some() {
                self.push(format!("{p}.accept_while_down"), why);
                ok = false;
            }
            if raw.down_after.is_some() && down_after.is_some() {
                self.push(format!("{p}.down_after"), why);
                ok = false;
            }
        } else if accept_while_down && raw.down_after.is_some() && down_after.is_some() {
            self.push(
                format!("{p}.down_after"),
                "only with accept_while_down = false: with true (the default) new devices are \
                 accepted however long the broker is unreachable",
            );
            ok = false;
        }
        for (key, set) in [
            ("c2d_topic", raw.c2d_topic.is_some()),
            ("twin_topic", raw.twin_topic.is_some()),
            ("methods_topic", raw.methods_topic.is_some()),
        ] {
            if set {
                self.push(
                    format!("{p}.{key}"),
                    "only for adapter \"azure-iot-hub\": an mqtts destination maps topics \
                     through `topic`",
                );
                ok = false;
            }
        }
        for (key, set) in [
            ("thing_name", raw.thing_name.is_some()),
            ("thing_topics", raw.thing_topics.is_some()),
        ] {
            if set {
                self.push(
                    format!("{p}.{key}"),
                    "only for adapter \"aws-iot-core\" (the thing's Device Shadow and Jobs \
                     topics)",
                );
                ok = false;
            }
        }
        let pass_through_credentials = raw.pass_through_credentials.unwrap_or(false);
        if pass_through_credentials {
            let path = format!("{p}.pass_through_credentials");
            if mode == MqttMode::Aggregate {
                self.push(
                    &path,
                    "only for mode \"session\": an aggregate connection is shared by many \
                     devices and cannot carry one device's credentials",
                );
                ok = false;
            } else if raw.username.is_some() || raw.password_file.is_some() {
                self.push(
                    &path,
                    "cannot be combined with username or password_file: either the device's \
                     credentials are forwarded or the configured ones are sent",
                );
                ok = false;
            }
        }

        let topic_path = format!("{p}.topic");
        let topic_text = raw.topic.as_deref().unwrap_or(default_topic);
        // Rendered per device message in both modes, so no mode excludes a placeholder.
        let topic = self.template(&topic_path, topic_text, &with_sim(TOPIC_BASE), &[], mode);
        if let Some(template) = &topic {
            if !template.uses(Placeholder::Topic) {
                self.push(
                    &topic_path,
                    "must contain {topic} (the device's topic), so that every device topic maps \
                     to its own upstream topic and downlink messages can be mapped back",
                );
                ok = false;
            } else if topic_text.contains(['+', '#', '\0']) {
                self.push(
                    &topic_path,
                    "must not contain the wildcards '+' and '#' or a NUL character: the result \
                     is a topic name that PUBLISHes are sent to",
                );
                ok = false;
            }
        }

        if !ok {
            return None;
        }
        Some(MqttDestination {
            mode,
            version: version?,
            client_id: client_id?,
            username: username?,
            password: password?,
            pass_through_credentials,
            topic: Arc::new(topic?),
            keep_alive: keep_alive?,
            connections_per_shard: connections_per_shard?,
            max_inflight: max_inflight?,
            linger: linger?,
            // Session mode has no links to pace (an adapter default applies to aggregate only).
            max_publish_rate: match mode {
                MqttMode::Session => None,
                MqttMode::Aggregate => max_publish_rate?,
            },
            while_down: if accept_while_down {
                WhileDown::Accept
            } else {
                WhileDown::RefuseAfter(down_after?)
            },
        })
    }

    /// Parses a template for an MQTT field. `field_allows` is what the field accepts in some
    /// mode; placeholders in `excluded` (those `mode` cannot fill) get an error saying why.
    pub(super) fn template(
        &mut self,
        path: &str,
        text: &str,
        field_allows: &[Placeholder],
        excluded: &[Placeholder],
        mode: MqttMode,
    ) -> Option<Template> {
        let allowed_here: Vec<Placeholder> = field_allows
            .iter()
            .copied()
            .filter(|p| !excluded.contains(p))
            .collect();
        let listed = placeholder_list(&allowed_here);
        let template = match Template::parse(text, field_allows) {
            Ok(template) => template,
            Err(TemplateError::UnknownPlaceholder(name)) => {
                self.push(
                    path,
                    format!("unknown placeholder {{{name}}}; known: {listed}"),
                );
                return None;
            }
            Err(TemplateError::NotAllowedHere(name)) => {
                self.push(
                    path,
                    format!("placeholder {{{name}}} is not allowed here; allowed: {listed}"),
                );
                return None;
            }
            Err(e @ (TemplateError::UnbalancedBrace | TemplateError::RepeatedTopic)) => {
                self.push(path, format!("invalid template {text:?}: {e}"));
                return None;
            }
        };
        let mut ok = true;
        for placeholder in excluded.iter().filter(|p| template.uses(**p)) {
            let why = match mode {
                MqttMode::Session => {
                    "mode \"session\": {shard} and {conn} number aggregate connections, and a \
                     session connection belongs to one device"
                }
                MqttMode::Aggregate => {
                    "mode \"aggregate\": one upstream connection carries many devices, so it has \
                     no single device {client_id}, {ip} or SIM"
                }
            };
            self.push(
                path,
                format!(
                    "placeholder {{{}}} is not allowed in {why}; allowed: {listed}",
                    placeholder.name()
                ),
            );
            ok = false;
        }
        ok.then_some(template)
    }

    /// Brokers disconnect the older of two connections with the same client id, so every
    /// upstream connection needs its own: per device in session mode, per shard and per
    /// connection in aggregate mode. Returns false if an error was reported.
    fn check_client_id_unique(
        &mut self,
        path: &str,
        template: &Template,
        mode: MqttMode,
        shards: Option<usize>,
        connections_per_shard: Option<usize>,
    ) -> bool {
        let errors_before = self.errors.len();
        match mode {
            MqttMode::Session => {
                // {imsi} is unique per SIM (the table refuses duplicates), and a template with
                // a SIM placeholder is only reachable by devices with a SIM (checked later).
                if !template.uses(Placeholder::ClientId)
                    && !template.uses(Placeholder::Ip)
                    && !template.uses(Placeholder::Imsi)
                {
                    self.push(
                        path,
                        "must contain {client_id}, {ip} or {imsi}: with a fixed client id, every \
                         device session would take over the previous one at the broker",
                    );
                }
            }
            MqttMode::Aggregate => {
                if shards.is_some_and(|n| n > 1) && !template.uses(Placeholder::Shard) {
                    self.push(
                        path,
                        format!(
                            "must contain {{shard}}: with {} shards, each opens its own upstream \
                             connections, and the broker disconnects a connection whose client \
                             id is reused",
                            shards.unwrap_or_default()
                        ),
                    );
                }
                if connections_per_shard.is_some_and(|n| n > 1) && !template.uses(Placeholder::Conn)
                {
                    self.push(
                        path,
                        "must contain {conn} when connections_per_shard is more than 1: the \
                         broker disconnects a connection whose client id is reused",
                    );
                }
            }
        }
        self.errors.len() == errors_before
    }

    /// `mqtt.linger`: 0 (the default) up to [`MQTT_LINGER_MAX`].
    fn linger(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(Duration::ZERO);
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if d > MQTT_LINGER_MAX => {
                self.push(
                    path,
                    format!(
                        "must be between 0s and {} (it delays every uplink message), got {text:?}",
                        format_duration(MQTT_LINGER_MAX)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// `mqtt.down_after`: [`MQTT_DOWN_AFTER_MIN`] up to the longest duration accepted anywhere.
    fn down_after(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(MQTT_DOWN_AFTER);
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if !(MQTT_DOWN_AFTER_MIN..=defaults::MAX_DURATION).contains(&d) => {
                self.push(
                    path,
                    format!(
                        "must be between {} and {}, got {text:?}",
                        format_duration(MQTT_DOWN_AFTER_MIN),
                        format_duration(defaults::MAX_DURATION)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// `mqtt.keep_alive`: whole seconds in 1s..=65535s (the MQTT field is a `u16`).
    fn keep_alive(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(defaults::MQTT_KEEP_ALIVE);
        };
        let max = defaults::MQTT_MAX_KEEP_ALIVE;
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if d < Duration::from_secs(1) || d > max => {
                self.push(
                    path,
                    format!(
                        "must be between 1s and {}s (18h12m15s; MQTT keep-alive is a 16-bit \
                         number of seconds), got {text:?}",
                        max.as_secs()
                    ),
                );
                None
            }
            Ok(d) if d.subsec_nanos() != 0 => {
                self.push(
                    path,
                    format!("must be a whole number of seconds, got {text:?}"),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// Reads an MQTT password file: trailing line breaks trimmed, 1..=65535 bytes left. Errors
    /// name the file, never its contents.
    fn password_file(&mut self, path: &str, file: &Path) -> Option<Secret> {
        let full = self.base_dir.join(file);
        let mut bytes = match tls_material::read(&full) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.push(path, format!("{e}: {}", full.display()));
                return None;
            }
        };
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            self.push(path, format!("password file is empty: {}", full.display()));
            return None;
        }
        if bytes.len() > usize::from(u16::MAX) {
            self.push(
                path,
                format!(
                    "password longer than 65535 bytes (the MQTT limit): {}",
                    full.display()
                ),
            );
            return None;
        }
        Some(Secret(bytes::Bytes::from(bytes)))
    }
}

/// Placeholders of `mqtt.client_id` and `mqtt.username` (before the per-mode exclusions),
/// besides the SIM's ([`SIM_PLACEHOLDERS`]).
pub(super) const IDENTITY_BASE: &[Placeholder] = &[
    Placeholder::ClientId,
    Placeholder::Ip,
    Placeholder::Shard,
    Placeholder::Conn,
];

/// Placeholders of `mqtt.topic` (one device's, in both modes), besides the SIM's.
const TOPIC_BASE: &[Placeholder] = &[Placeholder::ClientId, Placeholder::Ip, Placeholder::Topic];

/// `base` and every SIM placeholder.
pub(super) fn with_sim(base: &[Placeholder]) -> Vec<Placeholder> {
    base.iter().chain(SIM_PLACEHOLDERS).copied().collect()
}

/// Placeholders a mode cannot fill: session connections have no shard-wide numbering,
/// aggregate connections no single device (so no device's address or SIM either).
pub(super) fn excluded_in_mode(mode: MqttMode) -> Vec<Placeholder> {
    match mode {
        MqttMode::Session => vec![Placeholder::Shard, Placeholder::Conn],
        MqttMode::Aggregate => with_sim(&[Placeholder::ClientId, Placeholder::Ip]),
    }
}

/// `{a}, {b}, {c}` for messages.
fn placeholder_list(placeholders: &[Placeholder]) -> String {
    placeholders
        .iter()
        .map(|p| format!("{{{}}}", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}
