//! Compiles `adapter = "aws-iot-core"` with a `[destination.mqtt]` table into
//! [`Adapter::AwsIotCoreMqtt`]: AWS IoT Core over MQTT in session mode (every SIM a thing),
//! mutual TLS with the destination's `x509` credential, ALPN `x-amzn-mqtt-ca` on port 443.
//!
//! Checks, each with the field's path and the reason: session mode only; the keys AWS's
//! certificate authentication leaves no use for (user name, password) and the aggregate-mode
//! keys refused; `client_id` (default `{imsi}`), `thing_name` (default: the client id) and
//! `topic` judged on their own text against AWS's limits
//! ([`crate::adapters::aws_iot_core_mqtt::template_problem`]); the credential an `x509` one;
//! an explicit `alpn` that contradicts the port refused.
//!
//! What this does not do: the keys every destination shares (`destinations`), the generic
//! `[destination.mqtt]` keys (`mqtt`, which this calls for `version`, `client_id` and
//! `topic`), or any per-device check (the session bridge does those at run time).

use std::net::{IpAddr, Ipv4Addr};

use super::mqtt::{excluded_in_mode, with_sim, IDENTITY_BASE};
use super::Compiler;
use crate::adapters::aws_iot_core_mqtt::{self as aws, ALPN};
use crate::config::schema::{RawDestination, RawMqtt};
use crate::config::values::Endpoint;
use crate::policy::cloud::AwsIotCoreMqtt;
use crate::policy::{Adapter, MqttMode, TemplateVars, TopicMap};

/// `mqtt.client_id` default of `aws-iot-core`: every SIM its own thing.
pub(super) const AWS_CLIENT_ID: &str = "{imsi}";

/// Template variables with every placeholder empty: what a template's own text renders to.
fn literal_vars() -> TemplateVars<'static> {
    TemplateVars {
        client_id: b"",
        topic: b"",
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        shard: 0,
        conn: 0,
        sim: None,
    }
}

impl Compiler<'_> {
    /// `[destination.mqtt]` of `aws-iot-core`; `p` is the destination's path, `x509` whether
    /// its credential is an `x509` one.
    pub(super) fn aws_iot_core_mqtt(
        &mut self,
        p: &str,
        raw: &RawDestination,
        m: &RawMqtt,
        shards: Option<usize>,
        x509: bool,
    ) -> Option<Adapter> {
        let mut ok = true;
        match (&raw.credential, x509) {
            (_, true) => {}
            (None, false) => {
                self.push(
                    format!("{p}.credential"),
                    "required for adapter \"aws-iot-core\" over MQTT: the name of an \"x509\" \
                     [[credential]] (the gateway's certificate and key, registered with AWS IoT \
                     and attached to a policy that lets it connect as every SIM's client id)",
                );
                ok = false;
            }
            (Some(name), false) => {
                self.push(
                    format!("{p}.credential"),
                    format!(
                        "credential {name:?} is not of kind \"x509\": AWS IoT Core over MQTT \
                         authenticates with mutual TLS (aws-keys sign HTTPS requests, which the \
                         MQTT form does not make)"
                    ),
                );
                ok = false;
            }
        }
        for (key, set, why) in [
            (
                "region",
                raw.region.is_some(),
                "the MQTT form authenticates with the x509 credential, not SigV4",
            ),
            (
                "topic",
                raw.topic.is_some(),
                "with a [destination.mqtt] table the topic template is mqtt.topic",
            ),
        ] {
            if set {
                self.push(format!("{p}.{key}"), format!("not for MQTT: {why}"));
                ok = false;
            }
        }
        let mp = format!("{p}.mqtt");
        match m.mode.as_str() {
            "session" => {}
            "aggregate" => {
                self.push(
                    format!("{mp}.mode"),
                    "an AWS IoT Core MQTT connection is one thing: use session mode (mode = \
                     \"session\": every SIM its own client id and thing)",
                );
                ok = false;
            }
            other => {
                self.push(
                    format!("{mp}.mode"),
                    format!("unknown mode {other:?}; adapter \"aws-iot-core\" takes \"session\""),
                );
                ok = false;
            }
        }
        for (key, set) in [
            ("username", m.username.is_some()),
            ("password_file", m.password_file.is_some()),
            (
                "pass_through_credentials",
                m.pass_through_credentials.is_some(),
            ),
        ] {
            if set {
                self.push(
                    format!("{mp}.{key}"),
                    "not for adapter \"aws-iot-core\": the gateway's certificate (credential) \
                     authenticates every connection; custom authorizers are not supported",
                );
                ok = false;
            }
        }
        for (key, set) in [
            ("keep_alive", m.keep_alive.is_some()),
            ("connections_per_shard", m.connections_per_shard.is_some()),
            ("max_inflight", m.max_inflight.is_some()),
            ("linger", m.linger.is_some()),
            ("accept_while_down", m.accept_while_down.is_some()),
            ("down_after", m.down_after.is_some()),
        ] {
            if set {
                self.push(
                    format!("{mp}.{key}"),
                    "only for mode \"aggregate\", which adapter \"aws-iot-core\" does not take",
                );
                ok = false;
            }
        }
        for (key, set) in [
            ("twin_topic", m.twin_topic.is_some()),
            ("methods_topic", m.methods_topic.is_some()),
        ] {
            if set {
                self.push(
                    format!("{mp}.{key}"),
                    "only for adapter \"azure-iot-hub\"; AWS IoT Core's Device Shadow and Jobs \
                     are reached through thing_topics",
                );
                ok = false;
            }
        }
        if m.c2d_topic.is_some() {
            self.push(
                format!("{mp}.c2d_topic"),
                "only for adapter \"azure-iot-hub\"; AWS IoT Core's downlink topics map back \
                 through `topic` (and shadow/jobs through thing_topics)",
            );
            ok = false;
        }
        // The generic keys: version, client_id (default `{imsi}`), topic.
        let generic = RawMqtt {
            mode: "session".to_owned(),
            version: m.version.clone(),
            client_id: Some(
                m.client_id
                    .clone()
                    .unwrap_or_else(|| AWS_CLIENT_ID.to_owned()),
            ),
            username: None,
            password_file: None,
            pass_through_credentials: None,
            topic: m.topic.clone(),
            keep_alive: None,
            connections_per_shard: None,
            max_inflight: None,
            linger: None,
            accept_while_down: None,
            down_after: None,
            max_publish_rate: None,
            c2d_topic: None,
            thing_name: None,
            thing_topics: None,
            twin_topic: None,
            methods_topic: None,
        };
        let session = self.mqtt(p, &generic, shards, None);
        let thing_topics = m.thing_topics.unwrap_or(true);
        let thing_text = m
            .thing_name
            .clone()
            .or_else(|| generic.client_id.clone())
            .unwrap_or_else(|| AWS_CLIENT_ID.to_owned());
        let thing_name = self.template(
            &format!("{mp}.thing_name"),
            &thing_text,
            &with_sim(IDENTITY_BASE),
            &excluded_in_mode(MqttMode::Session),
            MqttMode::Session,
        );
        if m.thing_name.is_some() && !thing_topics {
            self.push(
                format!("{mp}.thing_name"),
                "only with thing_topics = true (the thing name is used in the shadow and jobs \
                 topics only)",
            );
            ok = false;
        }
        let session = session?;
        let thing_name = thing_name?;
        let vars = literal_vars();
        let client_literal = session.client_id.render(&vars);
        if client_literal.len() > aws::MAX_CLIENT_ID_BYTES {
            self.push(
                format!("{mp}.client_id"),
                format!(
                    "its own text is {} bytes; AWS IoT Core takes client ids up to {} bytes",
                    client_literal.len(),
                    aws::MAX_CLIENT_ID_BYTES
                ),
            );
            ok = false;
        }
        // A default thing name (the client id) already refused as a client id is not refused
        // twice.
        let client_refused = client_literal.len() > aws::MAX_CLIENT_ID_BYTES;
        if thing_topics && (m.thing_name.is_some() || !client_refused) {
            let literal = String::from_utf8_lossy(&thing_name.render(&vars)).into_owned();
            let chars_ok = literal
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
            if literal.len() > aws::MAX_THING_NAME_BYTES || !chars_ok {
                self.push(
                    format!("{mp}.thing_name"),
                    format!(
                        "{thing_text:?} cannot be a thing name: AWS takes 1 to {} of a-z A-Z \
                         0-9 : _ - (placeholders are checked per device){}",
                        aws::MAX_THING_NAME_BYTES,
                        if m.thing_name.is_none() {
                            "; the thing name defaults to the client id: set thing_name, or \
                             thing_topics = false"
                        } else {
                            ""
                        }
                    ),
                );
                ok = false;
            }
        }
        let topics = TopicMap::new(&session.topic, &vars);
        let (prefix, suffix) = topics.affixes();
        if let Some(problem) = aws::template_problem(prefix, suffix) {
            self.push(
                format!("{mp}.topic"),
                format!("{:?} {problem}", session.topic.as_str()),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Adapter::AwsIotCoreMqtt(AwsIotCoreMqtt {
            thing_name,
            thing_topics,
            session,
        }))
    }

    /// ALPN of `aws-iot-core` over MQTT: `x-amzn-mqtt-ca` by default on port 443 (where AWS
    /// takes MQTT with mutual TLS only with it), none elsewhere; an explicit list must not
    /// contradict the port (8883: none; 443: `x-amzn-mqtt-ca`). Other ports (a private
    /// endpoint, a test front) take what is written.
    pub(super) fn aws_iot_mqtt_alpn(
        &mut self,
        p: &str,
        raw: Option<&[String]>,
        endpoint: Option<&Endpoint>,
    ) -> Option<Vec<String>> {
        let port = endpoint.map(|e| e.port);
        let Some(list) = raw else {
            return Some(if port == Some(443) {
                vec![ALPN.to_owned()]
            } else {
                Vec::new()
            });
        };
        let mut ok = true;
        for (k, proto) in list.iter().enumerate() {
            if proto != ALPN {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!(
                        "unsupported ALPN protocol {proto:?}: AWS IoT Core takes MQTT with mutual \
                         TLS only with \"{ALPN}\" (\"x-amzn-http-ca\" is its HTTPS; \"mqtt\" is \
                         for custom authorizers, which simgate does not use)"
                    ),
                );
                ok = false;
            } else if list[..k].contains(proto) {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!("duplicate ALPN protocol {proto:?}"),
                );
                ok = false;
            }
        }
        // The port conflicts only once every name is one AWS takes.
        match port {
            _ if !ok => {}
            Some(443) if list.is_empty() => {
                self.push(
                    format!("{p}.alpn"),
                    format!(
                        "port 443 takes MQTT with mutual TLS only with ALPN \"{ALPN}\": leave \
                         alpn out (simgate offers it on 443) or use port 8883"
                    ),
                );
                ok = false;
            }
            Some(8883) if !list.is_empty() => {
                self.push(
                    format!("{p}.alpn"),
                    format!(
                        "port 8883 takes MQTT without ALPN; \"{ALPN}\" is for port 443: leave \
                         alpn out"
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        ok.then(|| list.to_vec())
    }
}
