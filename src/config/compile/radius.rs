//! Compiles `[radius]`: the UDP address of the accounting listener, its shared secret (any
//! secret form; at least 16 bytes, as RFC 2865 §3 recommends) and `unknown_imsi`.
//!
//! What this module does not do: open the socket or apply bindings (`control::radius`).

use std::net::SocketAddr;

use super::Compiler;
use crate::config::schema::RawRadius;
use crate::policy::{RadiusSettings, Secret, UnknownImsi};

/// Shortest shared secret accepted (RFC 2865 §3: "SHOULD be at least 16 octets").
const MIN_SECRET_LEN: usize = 16;

impl Compiler<'_> {
    pub(super) fn radius(&mut self, raw: &RawRadius) -> Option<RadiusSettings> {
        let bind = match raw.bind.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(
                    "radius.bind",
                    format!(
                        "invalid socket address {:?} (expected ip:port, IPv6 in brackets)",
                        raw.bind
                    ),
                );
                None
            }
        };
        let secret = self.secret("radius.secret", &raw.secret, MIN_SECRET_LEN);
        let unknown_imsi = match raw.unknown_imsi.as_deref() {
            None | Some("ignore") => Some(UnknownImsi::Ignore),
            Some("default") => Some(UnknownImsi::Default),
            Some(other) => {
                self.push(
                    "radius.unknown_imsi",
                    format!("unknown value {other:?}; expected \"ignore\" or \"default\""),
                );
                None
            }
        };
        Some(RadiusSettings {
            bind: bind?,
            secret: Secret(bytes::Bytes::from(secret?)),
            unknown_imsi: unknown_imsi?,
        })
    }
}
