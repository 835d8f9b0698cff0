//! `adapter = "azure-iot-hub"` over MQTT (session mode): the pure mapping between a device's
//! MQTT session and its IoT Hub device connection.
//!
//! - CONNECT: client id = the device id, user name
//!   `{hub}.azure-devices.net/{device_id}/?api-version=2021-04-12` ([`username`]), password =
//!   the destination's SAS token (minted on the control thread; the driver takes it from the
//!   shard's token store).
//! - Uplink: every device PUBLISH goes to `devices/{device_id}/messages/events/{bag}`
//!   ([`Session::events_topic`]), the bag being the URL-encoded `key=value&…` of the attached
//!   identity fields, then `topic={device topic}`, then the device's v5 user properties (names
//!   of the identity fields, `topic` and names starting with `$` — IoT Hub's system
//!   properties — are not taken from the device).
//! - Downlink: simgate subscribes to `devices/{device_id}/messages/devicebound/#`
//!   ([`Session::c2d_filter`]); each message is delivered on the configured device topic, the
//!   bag after `devicebound/` decoded into (name, value) pairs ([`Session::c2d_properties`]).
//! - Device twin and direct methods: IoT Hub's `$iothub/twin/…` and `$iothub/methods/…` topics
//!   carry no device id (the connection is the device), so they are reached through two device
//!   topic prefixes, `twin_topic` and `methods_topic` (defaults `$iothub/twin` and
//!   `$iothub/methods`: a device written for IoT Hub speaks its own topics unchanged; a device
//!   that cannot use `$` topics gets e.g. `twin` and `methods`). Only what the hub takes passes:
//!   PUBLISH to `{twin}/GET/…`, `{twin}/PATCH/properties/reported/…` and `{methods}/res/…`
//!   ([`Session::hub_topic`]); SUBSCRIBE to `{twin}/res/#`, `{twin}/PATCH/properties/desired/#`
//!   and `{methods}/POST/#` ([`Session::hub_filter`]), forwarded to the hub so that it sees the
//!   device online for methods only when the device asked; the hub's messages on those topics
//!   come back under the device's prefixes ([`Session::device_topic`]). Request ids
//!   (`?$rid=…`) and versions pass as they are.
//! - Rules IoT Hub sets: no retain ([`RETAIN_NOT_SUPPORTED`]), no QoS 2 (carried as QoS 1 by
//!   the session bridge); device subscriptions other than the C2D topic and the hub filters
//!   above have nothing upstream ([`Session::grants`]).
//!
//! What this does not do: IO, minting or renewing tokens, twin documents or method dispatch
//! (the device's own business: simgate carries the topics).

use bytes::Bytes;

use super::percent_encode;

/// The API version IoT Hub's MQTT user name names.
pub const API_VERSION: &str = "2021-04-12";

/// v5 reason code 0x9A "Retain not supported" (DISCONNECT).
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;

/// The MQTT user name IoT Hub expects from device `device_id` of hub `hub`.
pub fn username(hub: &str, device_id: &str) -> String {
    format!("{hub}.azure-devices.net/{device_id}/?api-version={API_VERSION}")
}

/// Whether `id` can be an IoT Hub device id in MQTT topics: 1 to 128 bytes, none of them a
/// `/`, `+`, `#`, NUL or space (IoT Hub's own rule is narrower still; the hub refuses the rest).
pub fn device_id_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id
            .bytes()
            .any(|b| matches!(b, b'/' | b'+' | b'#' | 0 | b' '))
}

/// IoT Hub's twin topics (the device-side `twin_topic` default).
pub const HUB_TWIN: &str = "$iothub/twin";
/// IoT Hub's direct-method topics (the device-side `methods_topic` default).
pub const HUB_METHODS: &str = "$iothub/methods";

/// What a device may publish under the twin prefix: a GET of the twin, a reported-properties
/// patch (each followed by `?$rid=…`).
const TWIN_PUBLISH: [&str; 2] = ["/GET/", "/PATCH/properties/reported/"];
/// What a device may publish under the methods prefix: a method's response
/// (`/res/{status}/?$rid=…`).
const METHODS_PUBLISH: [&str; 1] = ["/res/"];
/// The twin filters IoT Hub takes: responses, desired-property patches.
const TWIN_FILTERS: [&str; 2] = ["/res/#", "/PATCH/properties/desired/#"];
/// The method filter IoT Hub takes: requests.
const METHODS_FILTERS: [&str; 1] = ["/POST/#"];

/// Why a device message cannot be carried to IoT Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The mapped topic is over MQTT's 65,535 bytes.
    TopicTooLong,
    /// A topic under the twin or methods prefix that IoT Hub does not take from a device
    /// (e.g. `$iothub/twin/res/…`, which only the hub publishes).
    NotAHubTopic,
}

/// Where a device SUBSCRIBE filter goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterRoute {
    /// Answered by simgate: granted when it matches the C2D topic ([`Session::grants`]).
    Local,
    /// Forwarded to the hub as this filter (a twin or method filter).
    Hub(Bytes),
    /// Under the twin or methods prefix but not a filter IoT Hub takes: refused.
    Refused,
}

/// One device's IoT Hub session: its device id, the identity fields it carries, and the
/// device topic its cloud-to-device messages are delivered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The rendered device id.
    pub device_id: String,
    /// The identity fields the device's group attaches (name, value), in order.
    pub fields: Box<[(String, String)]>,
    /// The device topic of cloud-to-device messages.
    pub c2d_topic: Bytes,
    /// The device-side prefix of IoT Hub's twin topics (`$iothub/twin` by default).
    pub twin_topic: Bytes,
    /// The device-side prefix of IoT Hub's direct-method topics (`$iothub/methods` by default).
    pub methods_topic: Bytes,
}

/// `topic` minus `prefix`, when `topic` is `prefix` itself or continues it with a `/`.
fn under<'a>(topic: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = topic.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

fn joined(head: &[u8], rest: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(head.len() + rest.len());
    out.extend_from_slice(head);
    out.extend_from_slice(rest);
    Bytes::from(out)
}

impl Session {
    /// The upstream topic of a device PUBLISH on `topic` carrying `user_properties` (v5).
    pub fn events_topic(
        &self,
        topic: &[u8],
        user_properties: &[(Bytes, Bytes)],
    ) -> Result<Bytes, Refusal> {
        let mut out = String::with_capacity(64 + topic.len());
        out.push_str("devices/");
        out.push_str(&self.device_id);
        out.push_str("/messages/events/");
        let mut first = true;
        let mut pair = |out: &mut String, name: &[u8], value: &[u8]| {
            if !first {
                out.push('&');
            }
            first = false;
            percent_encode(name, out);
            out.push('=');
            percent_encode(value, out);
        };
        for (name, value) in self.fields.iter() {
            pair(&mut out, name.as_bytes(), value.as_bytes());
        }
        pair(&mut out, b"topic", topic);
        for (name, value) in user_properties {
            let reserved = name.is_empty()
                || name.starts_with(b"$")
                || &name[..] == b"topic"
                || self.fields.iter().any(|(f, _)| f.as_bytes() == &name[..]);
            if !reserved {
                pair(&mut out, name, value);
            }
        }
        if out.len() > usize::from(u16::MAX) {
            return Err(Refusal::TopicTooLong);
        }
        Ok(Bytes::from(out))
    }

    fn c2d_prefix(&self) -> String {
        let mut out = String::with_capacity(40 + self.device_id.len());
        out.push_str("devices/");
        out.push_str(&self.device_id);
        out.push_str("/messages/devicebound/");
        out
    }

    /// The filter simgate subscribes to upstream at session start.
    pub fn c2d_filter(&self) -> Bytes {
        let mut f = self.c2d_prefix();
        f.push('#');
        Bytes::from(f)
    }

    /// The properties of a cloud-to-device message published on `topic`, or `None` if the
    /// topic is not this device's C2D topic.
    pub fn c2d_properties(&self, topic: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
        let bag = topic.strip_prefix(self.c2d_prefix().as_bytes())?;
        Some(
            bag.split(|b| *b == b'&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = match kv.iter().position(|b| *b == b'=') {
                        Some(at) => (&kv[..at], &kv[at + 1..]),
                        None => (kv, &b""[..]),
                    };
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    /// Whether a device subscription to `filter` is granted here: it must match the C2D topic
    /// (the only device topic simgate delivers on by itself).
    pub fn grants(&self, filter: &[u8]) -> bool {
        filter_matches(filter, &self.c2d_topic)
    }

    /// The hub topic of a device PUBLISH on `topic`: `None` when it is not under the twin or
    /// methods prefix (it is telemetry: [`Session::events_topic`]), the `$iothub/…` topic when
    /// it is one the hub takes from a device, [`Refusal::NotAHubTopic`] otherwise.
    pub fn hub_topic(&self, topic: &[u8]) -> Option<Result<Bytes, Refusal>> {
        let (hub, rest, allowed): (&str, &[u8], &[&str]) =
            if let Some(rest) = under(topic, &self.twin_topic) {
                (HUB_TWIN, rest, &TWIN_PUBLISH)
            } else if let Some(rest) = under(topic, &self.methods_topic) {
                (HUB_METHODS, rest, &METHODS_PUBLISH)
            } else {
                return None;
            };
        if !allowed.iter().any(|a| rest.starts_with(a.as_bytes())) {
            return Some(Err(Refusal::NotAHubTopic));
        }
        Some(Ok(joined(hub.as_bytes(), rest)))
    }

    /// Where a device SUBSCRIBE (or UNSUBSCRIBE) `filter` goes.
    pub fn hub_filter(&self, filter: &[u8]) -> FilterRoute {
        let (hub, rest, allowed): (&str, &[u8], &[&str]) =
            if let Some(rest) = under(filter, &self.twin_topic) {
                (HUB_TWIN, rest, &TWIN_FILTERS)
            } else if let Some(rest) = under(filter, &self.methods_topic) {
                (HUB_METHODS, rest, &METHODS_FILTERS)
            } else {
                return FilterRoute::Local;
            };
        if allowed.iter().any(|a| rest == a.as_bytes()) {
            FilterRoute::Hub(joined(hub.as_bytes(), rest))
        } else {
            FilterRoute::Refused
        }
    }

    /// The device's topic of a hub message on a twin or method topic (a response, a desired
    /// patch, a method request), or `None` for any other topic.
    pub fn device_topic(&self, topic: &[u8]) -> Option<Bytes> {
        if let Some(rest) = under(topic, HUB_TWIN.as_bytes()) {
            return Some(joined(&self.twin_topic, rest));
        }
        under(topic, HUB_METHODS.as_bytes()).map(|rest| joined(&self.methods_topic, rest))
    }
}

/// `%XX` decoded (and `+` kept: IoT Hub encodes a space as `%20`); invalid escapes kept as
/// they are.
fn percent_decode(text: &[u8]) -> Bytes {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' && i + 2 < text.len() {
            if let (Some(h), Some(l)) = (hex(text[i + 1]), hex(text[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    Bytes::from(out)
}

/// MQTT topic-filter matching (`+` one level, `#` the rest) of a topic name.
fn filter_matches(filter: &[u8], name: &[u8]) -> bool {
    let mut f = filter.split(|b| *b == b'/');
    let mut n = name.split(|b| *b == b'/');
    loop {
        match (f.next(), n.next()) {
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            device_id: "440101234567890".into(),
            fields: vec![
                ("imsi".to_owned(), "440101234567890".to_owned()),
                ("imei".to_owned(), "490154203237518".to_owned()),
                ("tag.site".to_owned(), "osaka 2".to_owned()),
            ]
            .into(),
            c2d_topic: Bytes::from_static(b"devicebound"),
            twin_topic: Bytes::from_static(HUB_TWIN.as_bytes()),
            methods_topic: Bytes::from_static(HUB_METHODS.as_bytes()),
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn username_has_the_hub_host_the_device_and_the_api_version() {
        assert_eq!(
            username("myhub", "440101234567890"),
            "myhub.azure-devices.net/440101234567890/?api-version=2021-04-12"
        );
    }

    #[test]
    fn events_topic_carries_identity_topic_and_user_properties_url_encoded() {
        let t = session()
            .events_topic(
                b"sensors/temp",
                &[
                    (b("unit"), b("°C")),
                    (b("imsi"), b("spoofed")),
                    (b("$.ct"), b("x")),
                    (b("topic"), b("other")),
                ],
            )
            .expect("fits");
        assert_eq!(
            &t[..],
            b"devices/440101234567890/messages/events/imsi=440101234567890&imei=490154203237518\
              &tag.site=osaka%202&topic=sensors%2Ftemp&unit=%C2%B0C"
        );
    }

    #[test]
    fn device_ids_that_would_break_the_topics_are_invalid() {
        assert!(device_id_valid("440101234567890"));
        for bad in ["", "a/b", "a+", "#", "a b"] {
            assert!(!device_id_valid(bad), "{bad:?}");
        }
        assert!(!device_id_valid(&"x".repeat(129)));
    }

    #[test]
    fn an_over_long_topic_is_refused() {
        let long = vec![b'a'; 70_000];
        assert_eq!(
            session().events_topic(&long, &[]),
            Err(Refusal::TopicTooLong)
        );
    }

    #[test]
    fn c2d_bag_becomes_properties_and_other_topics_are_not_c2d() {
        let s = session();
        assert_eq!(
            &s.c2d_filter()[..],
            b"devices/440101234567890/messages/devicebound/#"
        );
        let props = s
            .c2d_properties(
                b"devices/440101234567890/messages/devicebound/k=v&%24.to=%2Fdevices%2Fx&flag",
            )
            .expect("c2d");
        assert_eq!(
            props,
            vec![
                (b("k"), b("v")),
                (b("$.to"), b("/devices/x")),
                (b("flag"), b(""))
            ]
        );
        assert_eq!(
            s.c2d_properties(b"devices/440101234567890/messages/devicebound/"),
            Some(vec![])
        );
        assert_eq!(
            s.c2d_properties(b"devices/other/messages/devicebound/k=v"),
            None
        );
        assert_eq!(percent_decode(b"a%2"), b("a%2"));
        assert_eq!(percent_decode(b"%zz%41"), b("%zzA"));
    }

    #[test]
    fn only_filters_matching_the_c2d_topic_are_granted() {
        let s = session();
        for f in [&b"devicebound"[..], b"#", b"+"] {
            assert!(s.grants(f), "{f:?}");
        }
        for f in [&b"devicebound/x"[..], b"cmd/#", b"+/+"] {
            assert!(!s.grants(f), "{f:?}");
        }
    }

    #[test]
    fn twin_and_method_topics_pass_when_the_hub_takes_them_from_a_device() {
        let s = session();
        assert_eq!(
            s.hub_topic(b"$iothub/twin/GET/?$rid=1"),
            Some(Ok(b("$iothub/twin/GET/?$rid=1")))
        );
        assert_eq!(
            s.hub_topic(b"$iothub/twin/PATCH/properties/reported/?$rid=2"),
            Some(Ok(b("$iothub/twin/PATCH/properties/reported/?$rid=2")))
        );
        assert_eq!(
            s.hub_topic(b"$iothub/methods/res/200/?$rid=7"),
            Some(Ok(b("$iothub/methods/res/200/?$rid=7")))
        );
        // What only the hub publishes, or nothing the hub knows: refused, not telemetry.
        for bad in [
            &b"$iothub/twin/res/200/?$rid=1"[..],
            b"$iothub/twin",
            b"$iothub/methods/POST/reboot/?$rid=1",
            b"$iothub/methods/",
        ] {
            assert_eq!(
                s.hub_topic(bad),
                Some(Err(Refusal::NotAHubTopic)),
                "{bad:?}"
            );
        }
        // Telemetry, including look-alikes that are not under a prefix.
        for telemetry in [&b"sensors/t"[..], b"$iothub/twinkle", b"$iothub/other"] {
            assert_eq!(s.hub_topic(telemetry), None, "{telemetry:?}");
        }
    }

    #[test]
    fn twin_and_method_prefixes_map_both_ways() {
        let s = Session {
            twin_topic: b("twin"),
            methods_topic: b("cmd/methods"),
            ..session()
        };
        assert_eq!(
            s.hub_topic(b"twin/PATCH/properties/reported/?$rid=3"),
            Some(Ok(b("$iothub/twin/PATCH/properties/reported/?$rid=3")))
        );
        assert_eq!(
            s.hub_topic(b"cmd/methods/res/404/?$rid=9"),
            Some(Ok(b("$iothub/methods/res/404/?$rid=9")))
        );
        // The hub's own names are telemetry when the device's prefixes are others.
        assert_eq!(s.hub_topic(b"$iothub/twin/GET/?$rid=1"), None);
        assert_eq!(
            s.hub_filter(b"twin/res/#"),
            FilterRoute::Hub(b("$iothub/twin/res/#"))
        );
        assert_eq!(
            s.hub_filter(b"twin/PATCH/properties/desired/#"),
            FilterRoute::Hub(b("$iothub/twin/PATCH/properties/desired/#"))
        );
        assert_eq!(
            s.hub_filter(b"cmd/methods/POST/#"),
            FilterRoute::Hub(b("$iothub/methods/POST/#"))
        );
        for refused in [
            &b"twin/#"[..],
            b"twin/res/200/+",
            b"cmd/methods/POST/reboot",
        ] {
            assert_eq!(s.hub_filter(refused), FilterRoute::Refused, "{refused:?}");
        }
        for local in [&b"devicebound"[..], b"#", b"twins/res/#"] {
            assert_eq!(s.hub_filter(local), FilterRoute::Local, "{local:?}");
        }
        assert_eq!(
            s.device_topic(b"$iothub/twin/res/200/?$rid=3&$version=4"),
            Some(b("twin/res/200/?$rid=3&$version=4"))
        );
        assert_eq!(
            s.device_topic(b"$iothub/methods/POST/reboot/?$rid=9"),
            Some(b("cmd/methods/POST/reboot/?$rid=9"))
        );
        assert_eq!(
            s.device_topic(b"devices/440101234567890/messages/devicebound/"),
            None
        );
    }
}
