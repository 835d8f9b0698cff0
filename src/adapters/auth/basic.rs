//! HTTP Basic credentials (RFC 7617): `Basic base64(user:password)`.
//!
//! What this does not do: check the user name (config does: no ':'), or any IO.

use base64::Engine as _;

/// The `Authorization` value for `user` and `password`.
pub fn basic_authorization(user: &str, password: &str) -> String {
    let mut out = String::from("Basic ");
    base64::engine::general_purpose::STANDARD.encode_string(format!("{user}:{password}"), &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc_7617_example() {
        assert_eq!(
            super::basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
