//! Compiles `adapter = "aws-iot-core"` with a `[destination.mqtt]` table into
//! [`Adapter::AwsIotCoreMqtt`]: AWS IoT Core over MQTT in session mode (every SIM a thing) or
//! aggregate mode (SIMs share `connections_per_shard` links per shard), mutual TLS with the
//! destination's `x509` credential, ALPN `x-amzn-mqtt-ca` on port 443.
//!
//! Checks, each with the field's path and the reason: the keys AWS's certificate
//! authentication leaves no use for (user name, password) refused; in session mode the
//! aggregate-mode keys refused, in aggregate mode `thing_name` / `thing_topics = true` (Device
//! Shadow and Jobs are per thing); `client_id` (session default `{imsi}`; aggregate default
//! `simgate-{shard}-{conn}`, checked rendered for the last link of the last shard),
//! `thing_name` (default: the client id) and `topic` judged on their own text against AWS's
//! limits ([`crate::adapters::aws_iot_core_mqtt::template_problem`]); in aggregate mode the
//! links' `keep_alive` within AWS's 30–1200 s and `max_publish_rate` at most AWS's
//! per-connection limit (also its default); the credential an `x509` one; an explicit `alpn`
//! that contradicts the port refused.
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
use crate::policy::{
    default_max_publish_rate, Adapter, AdapterKind, MqttMode, TemplateVars, TopicMap,
    AWS_IOT_CORE_MAX_PUBLISH_RATE,
};

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
        let mode = match m.mode.as_str() {
            "session" => MqttMode::Session,
            "aggregate" => MqttMode::Aggregate,
            other => {
                self.push(
                    format!("{mp}.mode"),
                    format!(
                        "unknown mode {other:?}; adapter \"aws-iot-core\" takes \"session\" \
                         (every SIM its own thing) or \"aggregate\" (SIMs share the gateway's \
                         connections)"
                    ),
                );
                ok = false;
                MqttMode::Session
            }
        };
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
        if mode == MqttMode::Session {
            for (key, set) in [
                ("keep_alive", m.keep_alive.is_some()),
                ("connections_per_shard", m.connections_per_shard.is_some()),
                ("max_inflight", m.max_inflight.is_some()),
                ("linger", m.linger.is_some()),
                ("accept_while_down", m.accept_while_down.is_some()),
                ("down_after", m.down_after.is_some()),
                ("max_publish_rate", m.max_publish_rate.is_some()),
            ] {
                if set {
                    self.push(
                        format!("{mp}.{key}"),
                        "only for mode \"aggregate\": in session mode every SIM has its own \
                         connection, which follows the device's own CONNECT",
                    );
                    ok = false;
                }
            }
        } else {
            // Device Shadow and Jobs are per thing; an aggregate link is one connection (one
            // client id) carrying many SIMs.
            for (key, set) in [
                ("thing_name", m.thing_name.is_some()),
                ("thing_topics", m.thing_topics == Some(true)),
            ] {
                if set {
                    self.push(
                        format!("{mp}.{key}"),
                        "only for mode \"session\": in aggregate mode one connection carries \
                         many SIMs, so no SIM is a thing of its own; Device Shadow and Jobs need \
                         session mode (reaching every thing's shadow from shared links would need \
                         an IoT policy that lets the gateway's certificate act as every thing)",
                    );
                    ok = false;
                }
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
        // Aggregate: AWS's per-connection publish limit is the default and the ceiling.
        let aws_rate = AWS_IOT_CORE_MAX_PUBLISH_RATE.get();
        let mut max_publish_rate = m.max_publish_rate;
        if mode == MqttMode::Aggregate {
            if let Some(rate) = m.max_publish_rate.filter(|r| *r > i64::from(aws_rate)) {
                self.push(
                    format!("{mp}.max_publish_rate"),
                    format!(
                        "{rate} is over AWS IoT Core's limit of {aws_rate} PUBLISH requests per \
                         second per connection (not adjustable; over it the cloud throttles: \
                         drops messages and withholds PUBACKs): set 1 to {aws_rate}, or leave it \
                         out for {aws_rate}"
                    ),
                );
                ok = false;
                max_publish_rate = None;
            }
        }
        // The generic keys: version, client_id (session default `{imsi}`; aggregate: the
        // mqtts default, one per link), topic, and in aggregate mode the link keys.
        let aggregate = mode == MqttMode::Aggregate;
        let generic = RawMqtt {
            mode: match mode {
                MqttMode::Session => "session",
                MqttMode::Aggregate => "aggregate",
            }
            .to_owned(),
            version: m.version.clone(),
            client_id: match mode {
                MqttMode::Session => Some(
                    m.client_id
                        .clone()
                        .unwrap_or_else(|| AWS_CLIENT_ID.to_owned()),
                ),
                MqttMode::Aggregate => m.client_id.clone(),
            },
            username: None,
            password_file: None,
            pass_through_credentials: None,
            topic: m.topic.clone(),
            keep_alive: m.keep_alive.clone().filter(|_| aggregate),
            connections_per_shard: m.connections_per_shard.filter(|_| aggregate),
            max_inflight: m.max_inflight.filter(|_| aggregate),
            linger: m.linger.clone().filter(|_| aggregate),
            accept_while_down: m.accept_while_down.filter(|_| aggregate),
            down_after: m.down_after.clone().filter(|_| aggregate),
            max_publish_rate: max_publish_rate.filter(|_| aggregate),
            c2d_topic: None,
            thing_name: None,
            thing_topics: None,
            twin_topic: None,
            methods_topic: None,
        };
        let session = self.mqtt(
            p,
            &generic,
            shards,
            default_max_publish_rate(Some(AdapterKind::AwsIotCore)),
        );
        let thing_topics = m.thing_topics.unwrap_or(!aggregate);
        // Session mode: the thing name template (default: the client id). Aggregate mode has
        // no thing of its own (thing_topics is false and thing_name refused above).
        let thing_text = m
            .thing_name
            .clone()
            .or_else(|| generic.client_id.clone())
            .unwrap_or_else(|| AWS_CLIENT_ID.to_owned());
        let thing_name = match mode {
            MqttMode::Session => self.template(
                &format!("{mp}.thing_name"),
                &thing_text,
                &with_sim(IDENTITY_BASE),
                &excluded_in_mode(mode),
                mode,
            ),
            MqttMode::Aggregate => session.as_ref().map(|s| s.client_id.clone()),
        };
        if mode == MqttMode::Session && m.thing_name.is_some() && !thing_topics {
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
        // The longest client id the template can render to: its own text in session mode
        // (placeholders are checked per device), the last link of the last shard in aggregate
        // mode (where the id is wholly static).
        let longest_vars = TemplateVars {
            shard: shards
                .unwrap_or(super::defaults::MAX_SHARDS as usize)
                .saturating_sub(1),
            conn: session.connections_per_shard.saturating_sub(1),
            ..literal_vars()
        };
        let client_literal = session.client_id.render(match mode {
            MqttMode::Session => &vars,
            MqttMode::Aggregate => &longest_vars,
        });
        if client_literal.len() > aws::MAX_CLIENT_ID_BYTES {
            self.push(
                format!("{mp}.client_id"),
                format!(
                    "{} {} bytes; AWS IoT Core takes client ids up to {} bytes",
                    match mode {
                        MqttMode::Session => "its own text is",
                        MqttMode::Aggregate => "the last link's client id is",
                    },
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
        // The links' keep-alive: AWS keeps 30 to 1200 s and would clamp anything else, so
        // the link would ping on a clock the broker does not keep.
        let keep_alive = session.keep_alive.as_secs();
        let aws_keep_alive = u64::from(aws::KEEP_ALIVE_MIN)..=u64::from(aws::KEEP_ALIVE_MAX);
        if aggregate && !aws_keep_alive.contains(&keep_alive) {
            self.push(
                format!("{mp}.keep_alive"),
                format!(
                    "{keep_alive}s is outside AWS IoT Core's keep-alive range of {}s to {}s \
                     (it clamps other values, so the link would ping on a clock the broker does \
                     not keep)",
                    aws::KEEP_ALIVE_MIN,
                    aws::KEEP_ALIVE_MAX
                ),
            );
            ok = false;
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
            mqtt: session,
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
