//! HTTP Basic credentials (RFC 7617), for Things Cloud / Cumulocity (`{tenant}/{user}` as the
//! user) and plain HTTPS servers.
//!
//! What this module does: builds the `Authorization` header value
//! `Basic base64(user ":" password)`, the strings taken as their UTF-8 bytes (RFC 7617 §2.1's
//! `charset="UTF-8"`, which is what servers assume today). What it does not do: check that the
//! user has no `:` (RFC 7617 forbids it; the server would split at the first one), or keep the
//! password anywhere: the returned value carries it, base64 being no protection, so callers treat
//! the header value as the secret it is (never logged).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// `Basic base64(user:password)`, the value of an `Authorization` header.
pub fn basic_authorization(user: &str, password: &str) -> String {
    let mut plain = Vec::with_capacity(user.len() + 1 + password.len());
    plain.extend_from_slice(user.as_bytes());
    plain.push(b':');
    plain.extend_from_slice(password.as_bytes());
    let mut out = String::from("Basic ");
    STANDARD.encode_string(&plain, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7617_examples() {
        // RFC 7617 §2.
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        // RFC 7617 §2.1: user "test", password "123£" in UTF-8.
        assert_eq!(
            basic_authorization("test", "123\u{a3}"),
            "Basic dGVzdDoxMjPCow=="
        );
    }

    #[test]
    fn cumulocity_tenant_user() {
        // `{tenant}/{user}:{password}`; computed with `printf 't1/alice:pw' | base64`.
        assert_eq!(
            basic_authorization("t1/alice", "pw"),
            "Basic dDEvYWxpY2U6cHc="
        );
    }
}
