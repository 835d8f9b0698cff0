//! Sans-IO RADIUS accounting codec: the server side of RFC 2866 over the RFC 2865 packet
//! format, for the live IP → SIM bindings a mobile packet core reports (issue #11, part 2).
//!
//! What it does:
//! - [`decode_accounting_request`] takes one received datagram and the client's shared secret
//!   and returns an [`AccountingRequest`] or a [`RadiusError`]. In order: the header's length
//!   rules (RFC 2865 §3: Length 20..=4096 and within the datagram; octets past Length are
//!   padding and ignored), Code 4, the Request Authenticator (RFC 2866 §3, compared in constant
//!   time), then a bounds-checked walk of every attribute (Length ≥ 2, inside the packet).
//! - It reads what the gateway binds on: Acct-Status-Type (40; required), Framed-IP-Address (8),
//!   Framed-IPv6-Prefix (97, RFC 3162), Calling-Station-Id (31, the MSISDN), Acct-Session-Id
//!   (44), and in 3GPP's Vendor-Specific (26, vendor 10415) 3GPP-IMSI (sub-type 1, checked to be
//!   digits) and 3GPP-IMEISV (sub-type 20, as sent). Everything else is walked and skipped, and
//!   stays reachable through [`AccountingRequest::attributes`].
//! - [`encode_accounting_response`] builds the 20-octet Accounting-Response (Code 5, no
//!   attributes) with its Response Authenticator (RFC 2866 §3).
//! - [`DuplicateDetector`] recognises retransmissions (same client, Identifier and Request
//!   Authenticator within a window, time passed in), so a request is applied once and answered
//!   every time.
//!
//! ```text
//!  datagram ─► decode_accounting_request(dgram, secret) ─► AccountingRequest<'dgram> | RadiusError (drop, count)
//!  AccountingRequest ─► DuplicateDetector::observe(client, id, auth, now) ─► New (apply) | Duplicate
//!                    └► response(secret) ─► [u8; 20] ─► send (both cases)
//! ```
//!
//! Every field borrows the datagram (`&'a [u8]`, no copy, no allocation): the listener applies
//! a request before it receives the next, so nothing outlives the receive buffer and a
//! reference-counted `Bytes` would buy nothing; a binding table that keeps the IMSI copies its
//! 15 digits.
//!
//! Sources verified while writing this (the comments cite the section where each rule is
//! enforced): RFC 2865 §3 (length rules, padding, silent discard — text as quoted in
//! FreeRADIUS's and Wireshark's decoders), RFC 2866 §3 (Request and Response Authenticator —
//! text as quoted in draft-ietf-radext documents and checked against radclient's packets, see
//! tests/radius_radclient.rs), RFC 3162 §2.3 (Framed-IPv6-Prefix layout: Length 4..=20, Reserved
//! zero, Prefix-Length ≤ 128, bits past it zero), and FreeRADIUS 3.2's dictionaries as Debian
//! ships them: dictionary.rfc2866 (Acct-Status-Type values 1, 2, 3, 7, 8) and dictionary.3gpp
//! (VENDOR 3GPP 10415, from TS 29.061: 3GPP-IMSI 1 `string`, 3GPP-IMEISV 20 `string`, "Most of
//! the 'string' attributes are UTF-8 encoded text"). The text of TS 29.061 itself was not at
//! hand; the IMEISV is therefore handed out as octets (see [`Imeisv`]).
//!
//! What it does NOT do: sockets, timers, the bindings table, per-client secrets (the caller
//! picks the secret by source address), Access-Request/Accept (RFC 2865 authentication), CoA
//! and Disconnect (RFC 5176), Message-Authenticator (RFC 3579: not used in accounting), and
//! encoding of requests beyond [`sign_accounting_request`] for tests and load generators.
#![forbid(unsafe_code)]

mod auth;
mod dedup;
mod error;
mod packet;
mod wire;

#[cfg(test)]
mod tests;

pub use auth::{encode_accounting_response, sign_accounting_request, ACCOUNTING_RESPONSE_LEN};
pub use dedup::{DuplicateDetector, Seen};
pub use error::{AttributeKind, RadiusError};
pub use packet::{
    attr, dangerous_decode_unverified, decode_accounting_request, peek_header, AccountingRequest,
    AcctStatusType, Attribute, Attributes, Header, Imeisv, Imsi, Ipv6Prefix,
    CODE_ACCOUNTING_REQUEST, CODE_ACCOUNTING_RESPONSE, HEADER_LEN, MAX_PACKET_LEN, MIN_PACKET_LEN,
};
pub use wire::AUTHENTICATOR_LEN;

/// The shared secret the fuzz entry point verifies with; the seed corpus is signed with it
/// (`testing123`, radclient's customary test secret, so a radclient capture is a valid seed).
pub const FUZZ_SECRET: &[u8] = b"testing123";

/// Fuzz entry point: decodes `data` as a datagram, verified with [`FUZZ_SECRET`] and unverified,
/// and checks properties, panicking (so the fuzzer reports it) when one fails:
/// - the verified and unverified decoders agree (the verified one can only add
///   [`RadiusError::BadAuthenticator`]);
/// - a request that decodes unverified, once signed with the secret, decodes verified to the
///   same request (authenticator aside), is refused with another secret, and its response
///   carries Code 5, its Identifier and length 20;
/// - octets appended past the header's Length change nothing.
///
/// # Panics
/// Only when a property fails, which is a codec bug.
pub fn fuzz_decode(data: &[u8]) {
    let _ = peek_header(data);
    let verified = decode_accounting_request(data, FUZZ_SECRET);
    let unverified = dangerous_decode_unverified(data);
    match (&verified, &unverified) {
        (Ok(v), Ok(u)) => assert_eq!(v, u, "verified and unverified decodes differ"),
        (Err(RadiusError::BadAuthenticator), _) => {}
        (Err(v), Err(u)) => assert_eq!(v, u, "verified and unverified errors differ"),
        (v, u) => panic!("verified {v:?} but unverified {u:?}"),
    }
    let Ok(request) = unverified else {
        return;
    };

    let Ok(header) = peek_header(data) else {
        panic!("a decoded request has a bad header");
    };
    let mut signed = data[..usize::from(header.length)].to_vec();
    if let Err(e) = sign_accounting_request(&mut signed, FUZZ_SECRET) {
        panic!("a decoded request cannot be signed: {e:?}");
    }
    let mut resigned = match decode_accounting_request(&signed, FUZZ_SECRET) {
        Ok(r) => r,
        Err(e) => panic!("a signed request does not verify: {e:?}"),
    };
    resigned.authenticator = request.authenticator;
    assert_eq!(resigned, request, "signing changed the decoded request");
    assert_eq!(
        decode_accounting_request(&signed, b"not the secret"),
        Err(RadiusError::BadAuthenticator),
        "a request verified with the wrong secret"
    );

    let mut padded = signed.clone();
    padded.extend_from_slice(&[0xA5; 7]);
    assert_eq!(
        dangerous_decode_unverified(&padded),
        dangerous_decode_unverified(&signed),
        "padding past Length changed the request"
    );

    let response = request.response(FUZZ_SECRET);
    assert_eq!(
        (response[0], response[1], &response[2..4]),
        (CODE_ACCOUNTING_RESPONSE, request.identifier, &[0u8, 20][..]),
        "malformed response header"
    );
}
