//! `adapter = "aws-iot-core"` over MQTT: the pure rules of AWS IoT Core's message broker for one
//! device's messages — in session mode (the device's own connection) and in aggregate mode (a
//! shared link: [`Session::new`] without a thing) — and the mapping of the thing's Device
//! Shadow and Jobs topics (session mode).
//!
//! - Connection: mutual TLS with the gateway's certificate (the destination's `x509`
//!   credential), on port 8883, or on 443 with ALPN [`ALPN`]; no user name or password. Client
//!   id = the rendered `client_id` template (default `{imsi}`), at most
//!   [`MAX_CLIENT_ID_BYTES`] ([`check_client_id`]).
//! - Keep-alive: AWS takes [`KEEP_ALIVE_MIN`]..=[`KEEP_ALIVE_MAX`] seconds and clamps the rest
//!   (0 or more than 1200 → 1200, less than 30 → 30). simgate sends the clamped value
//!   ([`upstream_keep_alive`]) so both hops agree on it; the session driver tells a v5 device
//!   with Server Keep Alive and pings upstream itself when the device's own interval is longer.
//! - Uplink topics ([`Session::uplink_topic`]): the device topic through the destination's
//!   `topic` template, or, for `shadow/...` and `jobs/...` (with `thing_topics`), the thing's
//!   `$aws/things/{thing_name}/shadow/...` and `.../jobs/...`. Then AWS's limits: at most
//!   [`MAX_TOPIC_BYTES`] bytes and [`MAX_TOPIC_SLASHES`] slashes (a leading
//!   `$aws/rules/<rule>/` Basic Ingest prefix not counted), and no `$aws/` topic unless the
//!   template itself writes it (Basic Ingest) or it is this thing's shadow or jobs topic: a
//!   device topic that would render to `$aws/...` through a `{topic}` at the start of the
//!   template is refused ([`CloudRule::ReservedTopic`]).
//! - Payload: at most [`MAX_PAYLOAD_BYTES`] ([`check_payload`]).
//! - Subscriptions ([`Session::uplink_filter`]): mapped and limited likewise; downlink topics
//!   ([`Session::downlink_topic`]) of the thing's shadow and jobs come back as `shadow/...` and
//!   `jobs/...`.
//! - Load-time checks of the templates' own text ([`template_problem`]), so `simgate check`
//!   explains a template no device topic could satisfy.
//!
//! What this does not do: IO, reason codes or counting (the session bridge and the aggregate
//! device path map a [`TopicRefusal`] to the device's answer and count it), QoS 2 (carried as
//! QoS 1 by the bridge), AWS's per-connection publish rate (aggregate links are paced by
//! `max_publish_rate`, whose AWS default and ceiling is `policy::AWS_IOT_CORE_MAX_PUBLISH_RATE`), IoT
//! policies (the cloud's; see docs/adapters.md for the policy a carrier needs), custom
//! authorizers, or MQTT over WebSocket.

use bytes::Bytes;

use crate::policy::{TopicMap, TopicMapError};
use crate::proto::mqtt::ProtocolVersion;
use crate::stats::CloudRule;

/// The ALPN protocol AWS IoT Core takes MQTT with mutual TLS on port 443.
pub const ALPN: &str = "x-amzn-mqtt-ca";
/// Longest topic name or filter, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Most slashes in a topic name or filter (not counting a Basic Ingest prefix).
pub const MAX_TOPIC_SLASHES: usize = 7;
/// Largest PUBLISH payload: 128 KB.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;
/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
/// Longest thing name, in bytes.
pub const MAX_THING_NAME_BYTES: usize = 128;
/// Shortest keep-alive AWS keeps (shorter ones count as this), in seconds.
pub const KEEP_ALIVE_MIN: u16 = 30;
/// Longest keep-alive AWS keeps (longer ones and 0 count as this), in seconds.
pub const KEEP_ALIVE_MAX: u16 = 1200;

/// AWS's reserved topic space.
const RESERVED: &[u8] = b"$aws/";
/// The Basic Ingest prefix (`$aws/rules/<rule>/`).
const BASIC_INGEST: &[u8] = b"$aws/rules/";
/// Device topic prefixes mapped to the thing's own reserved topics.
const THING_TOPICS: [&[u8]; 2] = [b"shadow/", b"jobs/"];

/// The keep-alive simgate sends AWS for a device's `keep_alive`: the value AWS would use.
pub fn upstream_keep_alive(keep_alive: u16) -> u16 {
    match keep_alive {
        0 => KEEP_ALIVE_MAX,
        k => k.clamp(KEEP_ALIVE_MIN, KEEP_ALIVE_MAX),
    }
}

/// Whether a rendered client id fits AWS's limit.
pub fn check_client_id(id: &[u8]) -> Result<(), CloudRule> {
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Err(CloudRule::ClientIdTooLong);
    }
    Ok(())
}

/// Whether `name` can be a thing name: 1 to 128 of `a-z A-Z 0-9 : _ -` (AWS's pattern).
pub fn thing_name_valid(name: &str) -> bool {
    (1..=MAX_THING_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether a payload of `len` bytes fits AWS's limit.
pub fn check_payload(len: usize) -> Result<(), CloudRule> {
    if len > MAX_PAYLOAD_BYTES {
        return Err(CloudRule::PayloadTooLarge);
    }
    Ok(())
}

/// The slashes AWS counts in `topic`: all of them, except those of a leading
/// `$aws/rules/<rule>/`.
pub fn counted_slashes(topic: &[u8]) -> usize {
    let counted = match topic.strip_prefix(BASIC_INGEST) {
        Some(rest) => match rest.iter().position(|b| *b == b'/') {
            Some(at) => &rest[at + 1..],
            None => rest,
        },
        None => topic,
    };
    counted.iter().filter(|b| **b == b'/').count()
}

/// AWS's size limits on an upstream topic name or filter.
pub fn check_topic(topic: &[u8]) -> Result<(), CloudRule> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(CloudRule::TopicBytes);
    }
    if counted_slashes(topic) > MAX_TOPIC_SLASHES {
        return Err(CloudRule::TopicSlashes);
    }
    Ok(())
}

fn is_reserved(topic: &[u8]) -> bool {
    topic.starts_with(RESERVED) || topic == b"$aws"
}

/// Why a device topic or filter cannot go to AWS IoT Core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRefusal {
    /// One of AWS's rules (counted by rule).
    Cloud(CloudRule),
    /// No valid MQTT topic or filter under the destination's template (as for any broker).
    Invalid,
}

/// What is wrong with a destination's `topic` template for AWS IoT Core, judged on its own
/// text (`prefix` and `suffix`: the rendering around `{topic}` with every other placeholder
/// empty): `None` when some device topic can pass.
pub fn template_problem(prefix: &[u8], suffix: &[u8]) -> Option<String> {
    if is_reserved(prefix) {
        let rule_named = prefix
            .strip_prefix(BASIC_INGEST)
            .and_then(|rest| rest.iter().position(|b| *b == b'/'));
        if rule_named.is_none() {
            return Some(format!(
                "writes into AWS's reserved topics ({:?}...): only the Basic Ingest prefix \
                 \"$aws/rules/<rule>/\" may start a topic template; the thing's shadow and jobs \
                 are reached through device topics \"shadow/...\" and \"jobs/...\" \
                 (thing_topics)",
                String::from_utf8_lossy(prefix)
            ));
        }
    }
    let literal = prefix.len() + suffix.len();
    if literal >= MAX_TOPIC_BYTES {
        return Some(format!(
            "its own text is {literal} bytes, so no device topic fits AWS IoT Core's \
             {MAX_TOPIC_BYTES}-byte topic limit"
        ));
    }
    let mut both = prefix.to_vec();
    both.extend_from_slice(suffix);
    let slashes = counted_slashes(&both);
    if slashes > MAX_TOPIC_SLASHES {
        return Some(format!(
            "its own text has {slashes} slashes; AWS IoT Core takes at most {MAX_TOPIC_SLASHES} \
             per topic (a leading \"$aws/rules/<rule>/\" not counted)"
        ));
    }
    None
}

/// One device's AWS IoT Core session: its thing's reserved topic prefix and whether the
/// destination's template itself writes into `$aws/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `$aws/things/{thing_name}/`, when device topics `shadow/...` and `jobs/...` are the
    /// thing's.
    thing_prefix: Option<Bytes>,
    /// The template's rendered text before `{topic}` starts with `$aws/` (Basic Ingest): the
    /// topics it makes are the destination's, not the device's, choice.
    template_reserved: bool,
}

impl Session {
    /// The session of a device whose topics map through `topics`, with thing `thing_name`
    /// (`None`: no shadow and jobs mapping).
    pub fn new(thing_name: Option<&str>, topics: &TopicMap) -> Session {
        Session {
            thing_prefix: thing_name.map(|name| Bytes::from(format!("$aws/things/{name}/"))),
            template_reserved: is_reserved(topics.affixes().0),
        }
    }

    fn thing_topic(&self, topic: &[u8]) -> Option<Bytes> {
        let prefix = self.thing_prefix.as_ref()?;
        if !THING_TOPICS.iter().any(|p| topic.starts_with(p)) {
            return None;
        }
        let mut out = Vec::with_capacity(prefix.len() + topic.len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(topic);
        Some(Bytes::from(out))
    }

    /// The upstream topic name of a device PUBLISH on `topic`, checked against AWS's rules.
    pub fn uplink_topic(&self, topics: &TopicMap, topic: &Bytes) -> Result<Bytes, TopicRefusal> {
        let (out, thing) = match self.thing_topic(topic) {
            Some(t) => (t, true),
            None => (
                topics
                    .uplink_topic(topic)
                    .map_err(|_| TopicRefusal::Invalid)?,
                false,
            ),
        };
        if !thing && !self.template_reserved && is_reserved(&out) {
            return Err(TopicRefusal::Cloud(CloudRule::ReservedTopic));
        }
        if thing && crate::proto::mqtt::validate_topic_name(&out, false).is_err() {
            return Err(TopicRefusal::Invalid);
        }
        check_topic(&out).map_err(TopicRefusal::Cloud)?;
        Ok(out)
    }

    /// The upstream filter of a device SUBSCRIBE/UNSUBSCRIBE filter, checked likewise.
    pub fn uplink_filter(
        &self,
        topics: &TopicMap,
        filter: &Bytes,
        version: ProtocolVersion,
    ) -> Result<Bytes, TopicRefusal> {
        let (out, thing) = match self.thing_topic(filter) {
            Some(f) => (f, true),
            None => (
                topics
                    .uplink_filter(filter, version)
                    .map_err(|_: TopicMapError| TopicRefusal::Invalid)?,
                false,
            ),
        };
        if !thing && !self.template_reserved && is_reserved(&out) {
            return Err(TopicRefusal::Cloud(CloudRule::ReservedTopic));
        }
        if thing && crate::proto::mqtt::validate_topic_filter(&out, version).is_err() {
            return Err(TopicRefusal::Invalid);
        }
        check_topic(&out).map_err(TopicRefusal::Cloud)?;
        Ok(out)
    }

    /// The device topic of a topic the cloud sent this session: `shadow/...` / `jobs/...` for
    /// the thing's own, else through the template (a topic without its affixes passes as it
    /// is: the broker addresses this device only).
    pub fn downlink_topic(&self, topics: &TopicMap, topic: Bytes) -> Bytes {
        if let Some(prefix) = &self.thing_prefix {
            if let Some(rest) = topic.strip_prefix(&prefix[..]) {
                if THING_TOPICS.iter().any(|p| rest.starts_with(p)) {
                    return topic.slice(prefix.len()..);
                }
            }
        }
        topics.downlink_topic(&topic).unwrap_or(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Placeholder;
    use crate::policy::{Template, TemplateVars};

    fn map(template: &str) -> TopicMap {
        let t = Template::parse(template, &[Placeholder::Topic, Placeholder::ClientId])
            .expect("template");
        TopicMap::new(
            &t,
            &TemplateVars {
                client_id: b"001010000000002",
                topic: b"",
                ip: "10.0.0.1".parse().expect("ip"),
                shard: 0,
                conn: 0,
                sim: None,
            },
        )
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn keep_alive_is_clamped_as_aws_does() {
        assert_eq!(upstream_keep_alive(0), 1200);
        assert_eq!(upstream_keep_alive(5), 30);
        assert_eq!(upstream_keep_alive(30), 30);
        assert_eq!(upstream_keep_alive(600), 600);
        assert_eq!(upstream_keep_alive(1200), 1200);
        assert_eq!(upstream_keep_alive(u16::MAX), 1200);
    }

    #[test]
    fn client_ids_and_thing_names_have_aws_limits() {
        assert_eq!(check_client_id(&[b'a'; 128]), Ok(()));
        assert_eq!(
            check_client_id(&[b'a'; 129]),
            Err(CloudRule::ClientIdTooLong)
        );
        assert!(thing_name_valid("001010000000002"));
        assert!(thing_name_valid("meter:a_b-c"));
        for bad in ["", "a/b", "a b", "a+", "#", "ä"] {
            assert!(!thing_name_valid(bad), "{bad:?}");
        }
        assert!(!thing_name_valid(&"x".repeat(129)));
    }

    #[test]
    fn topics_are_limited_in_bytes_and_slashes_but_basic_ingest_is_not_counted() {
        assert_eq!(check_topic(b"a/b/c/d/e/f/g/h"), Ok(()));
        assert_eq!(
            check_topic(b"a/b/c/d/e/f/g/h/i"),
            Err(CloudRule::TopicSlashes)
        );
        assert_eq!(check_topic(b"$aws/rules/r/a/b/c/d/e/f/g/h"), Ok(()));
        assert_eq!(counted_slashes(b"$aws/rules/r"), 0);
        assert_eq!(check_topic(&[b'a'; 256]), Ok(()));
        assert_eq!(check_topic(&[b'a'; 257]), Err(CloudRule::TopicBytes));
        assert_eq!(check_payload(MAX_PAYLOAD_BYTES), Ok(()));
        assert_eq!(
            check_payload(MAX_PAYLOAD_BYTES + 1),
            Err(CloudRule::PayloadTooLarge)
        );
    }

    #[test]
    fn shadow_and_jobs_map_to_the_things_reserved_topics_both_ways() {
        let topics = map("{topic}");
        let s = Session::new(Some("001010000000002"), &topics);
        assert_eq!(
            s.uplink_topic(&topics, &b("shadow/update")),
            Ok(b("$aws/things/001010000000002/shadow/update"))
        );
        assert_eq!(
            s.uplink_topic(&topics, &b("shadow/name/cfg/update")),
            Ok(b("$aws/things/001010000000002/shadow/name/cfg/update"))
        );
        assert_eq!(
            s.uplink_topic(&topics, &b("jobs/start-next")),
            Ok(b("$aws/things/001010000000002/jobs/start-next"))
        );
        assert_eq!(
            s.uplink_filter(&topics, &b("shadow/update/+"), ProtocolVersion::V5),
            Ok(b("$aws/things/001010000000002/shadow/update/+"))
        );
        assert_eq!(
            s.uplink_filter(&topics, &b("jobs/#"), ProtocolVersion::V311),
            Ok(b("$aws/things/001010000000002/jobs/#"))
        );
        assert_eq!(
            s.downlink_topic(
                &topics,
                b("$aws/things/001010000000002/shadow/update/accepted")
            ),
            b("shadow/update/accepted")
        );
        assert_eq!(
            s.downlink_topic(&topics, b("$aws/things/001010000000002/jobs/notify")),
            b("jobs/notify")
        );
        // Another thing's topics are not this device's shadow.
        assert_eq!(
            s.downlink_topic(&topics, b("$aws/things/other/shadow/update/accepted")),
            b("$aws/things/other/shadow/update/accepted")
        );
        // Under a template with affixes, other topics go through it.
        let prefixed = map("dt/{client_id}/{topic}");
        let s = Session::new(Some("t1"), &prefixed);
        assert_eq!(
            s.uplink_topic(&prefixed, &b("temp")),
            Ok(b("dt/001010000000002/temp"))
        );
        assert_eq!(
            s.uplink_topic(&prefixed, &b("shadow/get")),
            Ok(b("$aws/things/t1/shadow/get"))
        );
        assert_eq!(
            s.downlink_topic(&prefixed, b("dt/001010000000002/cmd")),
            b("cmd")
        );
        // Without thing topics, shadow/ is an ordinary device topic.
        let s = Session::new(None, &topics);
        assert_eq!(
            s.uplink_topic(&topics, &b("shadow/update")),
            Ok(b("shadow/update"))
        );
    }

    #[test]
    fn reserved_topics_only_where_the_template_writes_them() {
        let topics = map("{topic}");
        let s = Session::new(Some("t1"), &topics);
        for t in ["$aws/things/other/shadow/update", "$aws/events/x", "$aws"] {
            assert_eq!(
                s.uplink_topic(&topics, &b(t)),
                Err(TopicRefusal::Cloud(CloudRule::ReservedTopic)),
                "{t}"
            );
        }
        assert_eq!(
            s.uplink_filter(&topics, &b("$aws/things/+/shadow/#"), ProtocolVersion::V5),
            Err(TopicRefusal::Cloud(CloudRule::ReservedTopic))
        );
        // Basic Ingest written by the template: allowed, its prefix's slashes not counted.
        let ingest = map("$aws/rules/ingest/{client_id}/{topic}");
        let s = Session::new(None, &ingest);
        assert_eq!(
            s.uplink_topic(&ingest, &b("a/b/c/d/e/f")),
            Ok(b("$aws/rules/ingest/001010000000002/a/b/c/d/e/f"))
        );
        assert_eq!(
            s.uplink_topic(&ingest, &b("a/b/c/d/e/f/g")).map(|_| ()),
            Ok(())
        );
        assert_eq!(
            s.uplink_topic(&ingest, &b("a/b/c/d/e/f/g/h")),
            Err(TopicRefusal::Cloud(CloudRule::TopicSlashes))
        );
    }

    #[test]
    fn limits_apply_after_mapping() {
        let topics = map("dt/{client_id}/{topic}");
        let s = Session::new(Some("t1"), &topics);
        assert_eq!(
            s.uplink_topic(&topics, &b("a/b/c/d/e/f/g")),
            Err(TopicRefusal::Cloud(CloudRule::TopicSlashes))
        );
        assert_eq!(
            s.uplink_topic(&topics, &b("a/b/c/d/e/f")).map(|_| ()),
            Ok(())
        );
        let long = "x".repeat(240);
        assert_eq!(
            s.uplink_topic(&topics, &b(&long)),
            Err(TopicRefusal::Cloud(CloudRule::TopicBytes))
        );
        assert_eq!(
            s.uplink_topic(&topics, &b("a/+")),
            Err(TopicRefusal::Invalid)
        );
        assert_eq!(
            s.uplink_filter(&topics, &b("a/b/c/d/e/f/+"), ProtocolVersion::V5),
            Err(TopicRefusal::Cloud(CloudRule::TopicSlashes))
        );
    }

    #[test]
    fn templates_no_device_topic_could_satisfy_are_explained() {
        assert_eq!(template_problem(b"", b""), None);
        assert_eq!(template_problem(b"$aws/rules/r/", b""), None);
        let reserved = template_problem(b"$aws/things/", b"").expect("refused");
        assert!(reserved.contains("reserved"), "{reserved}");
        assert!(template_problem(b"$aws/rules/", b"").is_some());
        let slashes = template_problem(b"a/b/c/d/e/f/g/h/", b"").expect("refused");
        assert!(slashes.contains("8 slashes"), "{slashes}");
        let long = vec![b'a'; 256];
        assert!(template_problem(&long, b"").is_some());
    }
}
