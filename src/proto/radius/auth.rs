//! The MD5 authenticators of RADIUS accounting (RFC 2866 §3), computed without copying the
//! packet: the hash is fed the header, a run of zero octets (or the Request Authenticator) and
//! the attributes straight from the datagram, then the secret.
//!
//! MD5 comes from RustCrypto's `md-5`; the comparison is `subtle::ConstantTimeEq`, so a wrong
//! authenticator takes as long to refuse whichever octet differs (docs/decisions/0004).

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::wire::{
    Header, AUTHENTICATOR_LEN, CODE_ACCOUNTING_REQUEST, CODE_ACCOUNTING_RESPONSE, HEADER_LEN,
    MAX_PACKET_LEN,
};
use super::RadiusError;

/// Length of an Accounting-Response without attributes: the header alone.
pub const ACCOUNTING_RESPONSE_LEN: usize = HEADER_LEN;

/// MD5(Code + Identifier + Length + `middle` + attributes + secret), `packet` being the octets the
/// header's Length covers.
fn digest(packet: &[u8], middle: &[u8; AUTHENTICATOR_LEN], secret: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(&packet[..4]);
    md5.update(middle);
    md5.update(&packet[HEADER_LEN..]);
    md5.update(secret);
    md5.finalize().into()
}

/// The Request Authenticator an Accounting-Request must carry (RFC 2866 §3: "MD5 hash calculated
/// over a stream of octets consisting of the Code + Identifier + Length + 16 zero octets +
/// request attributes + shared secret"). `packet` is the packet as its Length delimits it
/// (header included); the Authenticator octets in it are not read.
pub(crate) fn request_authenticator(packet: &[u8], secret: &[u8]) -> [u8; 16] {
    digest(packet, &[0; AUTHENTICATOR_LEN], secret)
}

/// True when `packet` (delimited by its Length) carries the right Request Authenticator for
/// `secret`. Constant time in the authenticator's value.
pub(crate) fn verify_request(packet: &[u8], secret: &[u8]) -> bool {
    let expected = request_authenticator(packet, secret);
    expected.ct_eq(&packet[4..HEADER_LEN]).into()
}

/// The Accounting-Response (Code 5, no attributes) to a request with `identifier` and
/// `request_authenticator`: its Response Authenticator is MD5(Code + Identifier + Length +
/// Request Authenticator + attributes + secret) (RFC 2866 §3, "Response Authenticator"; the
/// same construction as RFC 2865 §3). The answer to a retransmission is byte-identical, so a
/// duplicate can be answered by encoding again.
#[must_use]
pub fn encode_accounting_response(
    identifier: u8,
    request_authenticator: &[u8; AUTHENTICATOR_LEN],
    secret: &[u8],
) -> [u8; ACCOUNTING_RESPONSE_LEN] {
    let mut out = [0u8; ACCOUNTING_RESPONSE_LEN];
    out[0] = CODE_ACCOUNTING_RESPONSE;
    out[1] = identifier;
    out[2..4].copy_from_slice(&(ACCOUNTING_RESPONSE_LEN as u16).to_be_bytes());
    let auth = digest(&out, request_authenticator, secret);
    out[4..HEADER_LEN].copy_from_slice(&auth);
    out
}

/// Writes the Request Authenticator into an Accounting-Request assembled by the caller (header
/// with Code 4 and the Length set, attributes after it): what a NAS does before sending. For
/// tests, benches and load generators; the gateway itself only verifies. Octets past the
/// header's Length are left as they are.
///
/// # Errors
/// The header checks of [`super::peek_header`] ([`RadiusError::TooShort`],
/// [`RadiusError::LengthOutOfRange`], [`RadiusError::Truncated`]), and
/// [`RadiusError::NotAccountingRequest`] when the Code is not 4.
pub fn sign_accounting_request(packet: &mut [u8], secret: &[u8]) -> Result<(), RadiusError> {
    let header = Header::parse(packet)?;
    if header.code != CODE_ACCOUNTING_REQUEST {
        return Err(RadiusError::NotAccountingRequest);
    }
    let len = usize::from(header.length);
    debug_assert!(len <= MAX_PACKET_LEN);
    let auth = request_authenticator(&packet[..len], secret);
    packet[4..HEADER_LEN].copy_from_slice(&auth);
    Ok(())
}
