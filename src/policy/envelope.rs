//! The JSON envelope (`destination.envelope = "json"`): a device's body (HTTP) or uplink
//! PUBLISH payload (MQTT) wrapped in a JSON object that carries the SIM's identity.
//!
//! Format (docs/configuration.md, "Envelope"), keys in this order:
//!
//! ```text
//! {"imsi":"…","imei":"…","msisdn":"…","sim_id":"…","name":"…","tags":{"k":"v"},
//!  "timestamp":1733389613123,"payload":<body>}
//! ```
//!
//! - identity keys: exactly the fields the device's group attaches (`attach`) and the SIM has,
//!   named as the MQTT user properties ([`Attach::user_properties`]); tags (`tag.K`) are
//!   gathered into one `"tags"` object (present only when the group attaches tags and the SIM
//!   has some). A device without a SIM gets no identity keys, and is still wrapped;
//! - `timestamp`: Unix time in **milliseconds** when simgate wrapped the message;
//! - `payload`: the body itself, byte for byte, when it is one valid JSON text in UTF-8
//!   (objects, arrays, and scalars such as `21.5` alike); otherwise (binary, text that is not
//!   JSON, an empty body) a standard base64 string (RFC 4648 §4, padded), followed by
//!   `"payload_encoding":"base64"`.
//!
//! What this module does: the wrapping, as pure functions of their inputs (the caller reads
//! the clock). What it does not do: decide which messages are wrapped, framing (HTTP
//! `Content-Length`) or size limits — the flows do.

use std::io::Write as _;

use base64::Engine as _;

use crate::identity::SimRef;
use crate::policy::attach::Attach;

/// `destination.envelope`: how the device's body / payload is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// As the device sent it (the default).
    #[default]
    None,
    /// Wrapped in a JSON object with the SIM's identity ([`wrap`]).
    Json,
}

impl Envelope {
    /// The value named `text` in the configuration (`"none"`, `"json"`).
    pub fn parse(text: &str) -> Option<Envelope> {
        match text {
            "none" => Some(Envelope::None),
            "json" => Some(Envelope::Json),
            _ => None,
        }
    }
}

/// The identity fields an envelope carries for `sim` under its group's `attach`, as
/// (user-property name, value) pairs; empty for a device without a SIM.
pub fn identity_fields(sim: Option<&SimRef<'_>>, attach: Attach) -> Vec<(String, String)> {
    sim.map(|sim| attach.user_properties(sim))
        .unwrap_or_default()
}

/// The Unix time now, in milliseconds (the envelope's `timestamp`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// True if `body` is one valid JSON text in UTF-8 (surrounding whitespace allowed).
pub fn is_json(body: &[u8]) -> bool {
    // `IgnoredAny` checks the syntax without building a value; strings' UTF-8 is checked here.
    std::str::from_utf8(body).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Wrap `body` with the identity `fields` ((user-property name, value) pairs as
/// [`identity_fields`] gives them; `tag.K` pairs become the `"tags"` object) and `timestamp_ms`.
/// The result is always one valid JSON object.
pub fn wrap<N: AsRef<str>, V: AsRef<str>>(
    fields: &[(N, V)],
    timestamp_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let json_body = is_json(body);
    let encoded_len = if json_body {
        body.len()
    } else {
        body.len().div_ceil(3) * 4
    };
    let mut out = Vec::with_capacity(64 + encoded_len + fields.len() * 32);
    out.push(b'{');
    let mut tags = Vec::new();
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        if let Some(key) = name.strip_prefix("tag.") {
            tags.push((key, value));
            continue;
        }
        put_str(&mut out, name);
        out.push(b':');
        put_str(&mut out, value);
        out.push(b',');
    }
    if !tags.is_empty() {
        out.extend_from_slice(b"\"tags\":{");
        for (i, (key, value)) in tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put_str(&mut out, key);
            out.push(b':');
            put_str(&mut out, value);
        }
        out.extend_from_slice(b"},");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "\"timestamp\":{timestamp_ms},\"payload\":");
    if json_body {
        out.extend_from_slice(body);
    } else {
        out.push(b'"');
        let start = out.len();
        out.resize(start + encoded_len, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(body, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(b"\",\"payload_encoding\":\"base64\"");
    }
    out.push(b'}');
    out
}

/// A JSON string literal, escaped.
fn put_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("the envelope is valid JSON")
    }

    fn fields() -> Vec<(String, String)> {
        [
            ("imsi", "001010000000002"),
            ("name", "meter \"2\"\n"),
            ("tag.site", "kyoto"),
            ("tag.ti\\er", "gold"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .to_vec()
    }

    #[test]
    fn a_json_body_is_kept_as_json_verbatim_with_tags_as_an_object() {
        let body = br#" {"t": 21.50, "big": 123456789012345678901234567890} "#;
        let out = wrap(&fields(), 1_733_389_613_123, body);
        let v = parsed(&out);
        assert_eq!(v["imsi"], "001010000000002");
        assert_eq!(v["name"], "meter \"2\"\n", "escaped, and back");
        assert_eq!(v["tags"], json!({"site": "kyoto", "ti\\er": "gold"}));
        assert_eq!(v["timestamp"], 1_733_389_613_123_u64);
        assert_eq!(v["payload"]["t"], 21.5);
        assert!(v.get("payload_encoding").is_none());
        // Byte for byte: numbers keep their exact spelling.
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.ends_with(&format!(
            "\"payload\":{}}}",
            std::str::from_utf8(body).unwrap()
        )));
        assert!(text.starts_with("{\"imsi\":\"001010000000002\","), "{text}");
    }

    #[test]
    fn json_scalars_are_json_too() {
        assert_eq!(
            parsed(&wrap::<&str, &str>(&[], 5, b"21.5"))["payload"],
            21.5
        );
        assert_eq!(
            parsed(&wrap::<&str, &str>(&[], 5, b"\"x\""))["payload"],
            "x"
        );
    }

    #[test]
    fn other_bodies_are_base64() {
        for (body, b64) in [
            (&b"\x00\xff\x10binary"[..], "AP8QYmluYXJ5"),
            (b"21.5 degrees", "MjEuNSBkZWdyZWVz"),
            (b"", ""),
            (b"{\"a\":1", "eyJhIjox"),
            // Syntactically JSON but not UTF-8 inside a string: not embedded.
            (b"\"\xff\"", "Iv8i"),
        ] {
            let v = parsed(&wrap::<&str, &str>(&[], 7, body));
            assert_eq!(v["payload"], b64, "{body:?}");
            assert_eq!(v["payload_encoding"], "base64");
        }
    }

    #[test]
    fn without_a_sim_only_timestamp_and_payload() {
        let v = parsed(&wrap::<&str, &str>(&[], 9, b"[1]"));
        assert_eq!(v, json!({"timestamp": 9, "payload": [1]}));
        assert!(identity_fields(None, Attach::default()).is_empty());
        assert_eq!(Envelope::parse("json"), Some(Envelope::Json));
        assert_eq!(Envelope::parse("xml"), None);
    }
}
