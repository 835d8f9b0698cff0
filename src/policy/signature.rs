//! Origin signature (issue #11 §4): an HMAC-SHA256, keyed with a group's `signing_secret`, over
//! a canonical string of what simgate sends upstream, so that a cloud can prove a message came
//! through simgate with the SIM identity it carries.
//!
//! What this module does: builds the canonical string (version 1, below), signs it, and names the
//! two headers / MQTT 5 user properties that carry the result. It is pure: no IO, no clock (the
//! timestamp is passed in), no allocation of the canonical string on the signing path (it is
//! streamed into the HMAC). What it does not do: read the secret (config does), strip what a
//! device sent under these names or under identity-field names (the flows do), attach the headers
//! or properties (the flows do), or verify (clouds do: docs/signature.md has the recipe and
//! `tests/python/verify_signature.py` the reference verifier, which is independent of this code).
//!
//! # Canonical string, v1
//!
//! Lines joined by one `\n` (0x0A), no `\n` after the last line, no `\r` anywhere:
//!
//! ```text
//! simgate-v1
//! <method>
//! <target>
//! <timestamp>
//! <name>=<value>        one line per attached identity field, sorted; none if no field
//! <body hash>
//! ```
//!
//! - `simgate-v1`: these 10 ASCII bytes.
//! - `<method>`: the HTTP method as on the upstream request line (`POST`, case kept), or
//!   `PUBLISH` for an MQTT PUBLISH. Escaped (below).
//! - `<target>`: for HTTP the request-target as sent upstream (origin form: path and query,
//!   exactly as on the request line, no decoding or normalisation); for MQTT the full topic name
//!   as sent upstream (after simgate's topic mapping; never an empty alias-only topic). Escaped.
//!   May be empty (an empty line).
//! - `<timestamp>`: Unix seconds in ASCII decimal, no sign, no leading zeros (`0` for zero); the
//!   same text as the `X-Simgate-Timestamp` value.
//! - Field lines: every attached identity field, named as the MQTT 5 user properties of
//!   `policy::attach` (`imsi`, `imei`, `msisdn`, `sim_id`, `name`, `tag.<key>`), as
//!   `<name>=<value>`, both escaped, the name additionally with `=` escaped. Sorted by name
//!   bytes, then by value bytes (plain unsigned byte order of the unescaped bytes). The order
//!   in which fields were given does not matter (they are a set); duplicates are kept, each on
//!   its own line. With no field, the timestamp line is followed directly by the hash line.
//! - `<body hash>`: lowercase hex SHA-256 of the body bytes as sent upstream (HTTP: the message
//!   content after removing any chunked transfer coding; MQTT: the PUBLISH payload). An empty
//!   body hashes as usual: `e3b0c442…b855`.
//!
//! Escaping: in method, target, names and values every byte `0x00`–`0x1F`, `%` (0x25) and
//! `0x7F`–`0xFF` is written as `%` and two uppercase hex digits (`\n` → `%0A`, `%` → `%25`,
//! `é` in UTF-8 → `%C3%A9`); in names `=` is written `%3D` too. Every other byte is itself. So a
//! topic that is not UTF-8, or a value with a `\n` (the SIM table allows neither: its values are
//! printable ASCII), still gives one well-defined string, the canonical string is always
//! printable ASCII plus `\n`, and (as `%` itself is escaped) different inputs never give the same
//! string: split at `\n`, the first four lines and the last are fixed, every line in between is a
//! field, cut at its first `=`, and unescaping is exact. Identity values and the usual HTTP
//! targets and MQTT topics contain none of the escaped bytes except `%` in percent-encoded
//! queries (`?q=a%20b` is signed as `?q=a%2520b`).
//!
//! Signature: `v1=` + lowercase hex of HMAC-SHA256(secret, canonical string).

use std::fmt;

use aws_lc_rs::{digest, hmac};

/// The first line of a v1 canonical string.
pub const VERSION_LINE: &[u8] = b"simgate-v1";

/// The method of an MQTT PUBLISH in the canonical string.
pub const MQTT_METHOD: &[u8] = b"PUBLISH";

/// HTTP header carrying the signed timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Simgate-Timestamp";
/// HTTP header carrying the signature (`v1=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Simgate-Signature";
/// MQTT 5 user property carrying the signed timestamp: the header's name in lowercase, like the
/// identity properties (`imsi`, `tag.site`) and like header names on the HTTP/2 wire. MQTT
/// property names are case-sensitive; a verifier matches this spelling exactly.
pub const TIMESTAMP_PROPERTY: &str = "x-simgate-timestamp";
/// MQTT 5 user property carrying the signature (`v1=<hex>`).
pub const SIGNATURE_PROPERTY: &str = "x-simgate-signature";

/// Shortest secret docs/signature.md recommends, in bytes: SHA-256's output length, the least
/// RFC 2104 recommends for an HMAC key. Not enforced here; config decides what it accepts.
pub const RECOMMENDED_SECRET_LEN: usize = 32;

/// What is signed: one upstream HTTP request or MQTT PUBLISH.
///
/// `N` and `V` are the types of field names and values: `&str` by default, `String` for the
/// pairs [`crate::policy::attach::Attach::user_properties`] returns (pass them as they are).
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a, N = &'a str, V = &'a str> {
    /// HTTP method as sent upstream, or [`MQTT_METHOD`].
    pub method: &'a [u8],
    /// HTTP request-target (path and query) or MQTT topic name, as sent upstream.
    pub target: &'a [u8],
    /// Unix seconds; the caller's clock.
    pub timestamp: u64,
    /// The attached identity fields, as `(user-property name, value)`, in any order.
    pub fields: &'a [(N, V)],
    /// The body or payload as sent upstream.
    pub body: &'a [u8],
}

/// The result of signing: what goes into the two headers or user properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signed timestamp (Unix seconds).
    pub timestamp: u64,
    /// `v1=` and 64 lowercase hex digits.
    pub value: String,
}

impl Signature {
    /// `[(X-Simgate-Timestamp, "<seconds>"), (X-Simgate-Signature, "v1=…")]`.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (TIMESTAMP_HEADER, self.timestamp.to_string()),
            (SIGNATURE_HEADER, self.value.clone()),
        ]
    }

    /// `[(x-simgate-timestamp, "<seconds>"), (x-simgate-signature, "v1=…")]`.
    pub fn user_properties(&self) -> [(&'static str, String); 2] {
        [
            (TIMESTAMP_PROPERTY, self.timestamp.to_string()),
            (SIGNATURE_PROPERTY, self.value.clone()),
        ]
    }
}

/// Signs with one group's secret. Cheap to clone; the key never appears in `Debug`.
#[derive(Clone)]
pub struct Signer {
    key: hmac::Key,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &"HMAC-SHA256")
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer keyed with `secret` (any length; see [`RECOMMENDED_SECRET_LEN`]).
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Signs `input`: HMAC-SHA256 over its canonical string, streamed (nothing buffered but a
    /// list of field positions for sorting).
    pub fn sign<N: AsRef<[u8]>, V: AsRef<[u8]>>(&self, input: &SignInput<'_, N, V>) -> Signature {
        let mut ctx = hmac::Context::with_key(&self.key);
        write_canonical(input, &mut |bytes| ctx.update(bytes));
        let tag = ctx.sign();
        let mut value = String::with_capacity(3 + 64);
        value.push_str("v1=");
        push_hex(&mut value, tag.as_ref());
        Signature {
            timestamp: input.timestamp,
            value,
        }
    }
}

/// The v1 canonical string of `input` (what [`Signer::sign`] authenticates), for docs, tests and
/// debugging. Contains no secret.
pub fn canonical_string<N: AsRef<[u8]>, V: AsRef<[u8]>>(input: &SignInput<'_, N, V>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + input.target.len());
    write_canonical(input, &mut |bytes| out.extend_from_slice(bytes));
    out
}

/// Feeds the canonical string of `input` to `out`, piece by piece.
fn write_canonical<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    input: &SignInput<'_, N, V>,
    out: &mut impl FnMut(&[u8]),
) {
    out(VERSION_LINE);
    out(b"\n");
    escape(input.method, false, out);
    out(b"\n");
    escape(input.target, false, out);
    out(b"\n");
    let mut digits = [0u8; 20];
    out(decimal(input.timestamp, &mut digits));
    out(b"\n");
    let mut order: Vec<&(N, V)> = input.fields.iter().collect();
    order.sort_by(|a, b| (a.0.as_ref(), a.1.as_ref()).cmp(&(b.0.as_ref(), b.1.as_ref())));
    for (name, value) in order {
        escape(name.as_ref(), true, out);
        out(b"=");
        escape(value.as_ref(), false, out);
        out(b"\n");
    }
    let hash = digest::digest(&digest::SHA256, input.body);
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(hash.as_ref()) {
        pair[0] = HEX_LOWER[usize::from(byte >> 4)];
        pair[1] = HEX_LOWER[usize::from(byte & 0x0F)];
    }
    out(&hex);
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// True for a byte written as `%XX`.
fn needs_escape(byte: u8, is_name: bool) -> bool {
    !(0x20..0x7F).contains(&byte) || byte == b'%' || (is_name && byte == b'=')
}

/// Feeds `bytes` escaped to `out`: runs of plain bytes as they are, others as `%XX`.
fn escape(bytes: &[u8], is_name: bool, out: &mut impl FnMut(&[u8])) {
    let mut plain_from = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if needs_escape(byte, is_name) {
            if plain_from < i {
                out(&bytes[plain_from..i]);
            }
            out(&[
                b'%',
                HEX_UPPER[usize::from(byte >> 4)],
                HEX_UPPER[usize::from(byte & 0x0F)],
            ]);
            plain_from = i + 1;
        }
    }
    if plain_from < bytes.len() {
        out(&bytes[plain_from..]);
    }
}

/// `n` in ASCII decimal, no leading zeros, in the tail of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        s.push(char::from(HEX_LOWER[usize::from(byte >> 4)]));
        s.push(char::from(HEX_LOWER[usize::from(byte & 0x0F)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below were computed outside this code: by Python's hmac/hashlib through
    // tests/python/verify_signature.py, the second also by `openssl dgst -sha256 -hmac`.
    const SECRET: &[u8] = b"simgate-test-secret-0123456789ab";

    fn meter() -> [(&'static str, &'static str); 6] {
        [
            ("imsi", "001010123456789"),
            ("tag.site", "kyoto"),
            ("msisdn", "+819012345678"),
            ("tag.tier", "gold"),
            ("name", "meter 7"),
            ("sim_id", "sim-7"),
        ]
    }

    #[test]
    fn mqtt_publish_with_tags_fixed_vector() {
        let fields = meter();
        let input = SignInput {
            method: MQTT_METHOD,
            target: b"devices/001010123456789/up",
            timestamp: 1_700_000_000,
            fields: &fields,
            body: br#"{"t":21.5}"#,
        };
        assert_eq!(
            String::from_utf8(canonical_string(&input)).expect("ascii"),
            "simgate-v1\nPUBLISH\ndevices/001010123456789/up\n1700000000\n\
             imsi=001010123456789\nmsisdn=+819012345678\nname=meter 7\nsim_id=sim-7\n\
             tag.site=kyoto\ntag.tier=gold\n\
             64cb2922cbcd122329525c35461f0e6c3e56d112c21aed2200ed6d45a448f9af"
        );
        let sig = Signer::new(SECRET).sign(&input);
        assert_eq!(
            sig.value,
            "v1=3739955b3facaa393cc460d4c9d7cf50cca28ce5a0137ff7835200f811a5b61d"
        );
        assert_eq!(sig.timestamp, 1_700_000_000);
        assert_eq!(
            sig.user_properties(),
            [
                ("x-simgate-timestamp", "1700000000".to_owned()),
                ("x-simgate-signature", sig.value.clone()),
            ]
        );
        assert_eq!(
            sig.headers(),
            [
                ("X-Simgate-Timestamp", "1700000000".to_owned()),
                ("X-Simgate-Signature", sig.value.clone()),
            ]
        );
    }

    #[test]
    fn empty_body_no_fields_and_a_percent_in_the_query() {
        let input: SignInput<'_> = SignInput {
            method: b"POST",
            target: b"/ingest?q=a%20b",
            timestamp: 0,
            fields: &[],
            body: b"",
        };
        assert_eq!(
            canonical_string(&input),
            b"simgate-v1\nPOST\n/ingest?q=a%2520b\n0\n\
              e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Signer::new(SECRET).sign(&input).value,
            "v1=a5c2474e22aaf5e6e1a5d55a492434adb56d8393ac55a002237aba1abc487482"
        );
        assert_eq!(
            Signer::new(b"").sign(&input).value,
            "v1=e10784ca83281148de4988be0badfa9946a72af7273af0506ac25aec72546ff1",
            "an empty secret is HMAC's zero-length key (config should refuse it)"
        );
    }

    #[test]
    fn escapes_newlines_non_utf8_percent_and_equals_in_names() {
        let body: Vec<u8> = (0..=255).collect();
        let fields = [("na=me", "v\nx"), ("imsi", "1")];
        let input = SignInput {
            method: MQTT_METHOD,
            target: b"a\nb\xff%",
            timestamp: u64::MAX,
            fields: &fields,
            body: &body,
        };
        assert_eq!(
            canonical_string(&input),
            b"simgate-v1\nPUBLISH\na%0Ab%FF%25\n18446744073709551615\nimsi=1\nna%3Dme=v%0Ax\n\
              40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880"
        );
        assert_eq!(
            Signer::new(SECRET).sign(&input).value,
            "v1=4d28e6f5c9d04dd1a07f55610df03a15aaee69cdd7b8b14cad1b8c52e2c8eb1d"
        );
    }

    #[test]
    fn field_order_is_irrelevant_and_owned_pairs_from_attach_work() {
        let signer = Signer::new(SECRET);
        let borrowed = meter();
        let mut owned: Vec<(String, String)> = borrowed
            .iter()
            .rev()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        owned.swap(0, 3);
        let a = signer.sign(&SignInput {
            method: MQTT_METHOD,
            target: b"t",
            timestamp: 5,
            fields: &borrowed,
            body: b"x",
        });
        let b = signer.sign(&SignInput {
            method: MQTT_METHOD,
            target: b"t",
            timestamp: 5,
            fields: &owned,
            body: b"x",
        });
        assert_eq!(a, b);
    }

    /// Inputs that a naive "join with \n" would confuse give different canonical strings.
    #[test]
    fn no_two_different_inputs_share_a_canonical_string() {
        type Case<'a> = (&'a [u8], &'a [u8], u64, &'a [(&'a str, &'a str)], &'a [u8]);
        let cases: &[Case<'_>] = &[
            (b"PUBLISH", b"a", 1, &[("imsi", "1")], b""),
            // The field smuggled into the topic.
            (b"PUBLISH", b"a\n1\nimsi=1", 1, &[], b""),
            (b"PUBLISH", b"a%0A1", 1, &[], b""),
            (b"PUBLISH", b"a\n1", 1, &[], b""),
            // Name/value boundary.
            (b"PUBLISH", b"a", 1, &[("imsi=1", "")], b""),
            (b"PUBLISH", b"a", 1, &[("imsi", "1\nimsi=2")], b""),
            (b"PUBLISH", b"a", 1, &[("imsi", "1"), ("imsi", "2")], b""),
            (b"PUBLISH", b"a", 1, &[("imsi", "1"), ("imsi", "1")], b""),
            (b"PUBLISH", b"a", 1, &[("imsi", "")], b""),
            (b"PUBLISH", b"a", 1, &[("", "")], b""),
            (b"PUBLISH", b"a", 10, &[], b""),
            (b"PUBLISH\na", b"", 1, &[], b""),
            (b"PUBLISH", b"", 1, &[], b""),
            (b"PUBLISH", b"a", 1, &[], b"\n"),
        ];
        let strings: Vec<Vec<u8>> = cases
            .iter()
            .map(|&(method, target, timestamp, fields, body)| {
                let s = canonical_string(&SignInput {
                    method,
                    target,
                    timestamp,
                    fields,
                    body,
                });
                assert!(
                    s.iter().all(|&b| b == b'\n' || (0x20..0x7F).contains(&b)),
                    "printable ASCII and \\n only"
                );
                s
            })
            .collect();
        for (i, a) in strings.iter().enumerate() {
            for (j, b) in strings.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "cases {i} and {j} collide");
            }
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", Signer::new(b"hunter2-very-secret"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("HMAC-SHA256"), "{shown}");
    }

    #[test]
    fn decimal_and_escape_edges() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(10, &mut buf), b"10");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
        let mut out = Vec::new();
        escape(b"\x00 ~\x7f=%", false, &mut |b| out.extend_from_slice(b));
        assert_eq!(out, b"%00 ~%7F=%25");
        out.clear();
        escape(b"tag.a=b", true, &mut |b| out.extend_from_slice(b));
        assert_eq!(out, b"tag.a%3Db");
    }
}
