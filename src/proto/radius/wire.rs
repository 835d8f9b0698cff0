//! The fixed part of every RADIUS packet (RFC 2865 §3): its constants and its length-checked
//! header, shared by the packet reader (`packet`) and the authenticators (`auth`).
//!
//! What this module does not do: read attributes or verify anything.

use super::RadiusError;

/// Length of the Authenticator field (RFC 2865 §3).
pub const AUTHENTICATOR_LEN: usize = 16;

/// Length of the fixed header: Code, Identifier, Length, Authenticator (RFC 2865 §3).
pub const HEADER_LEN: usize = 20;
/// Smallest value of the Length field (RFC 2865 §3).
pub const MIN_PACKET_LEN: usize = HEADER_LEN;
/// Largest value of the Length field (RFC 2865 §3): a receive buffer of this size always holds a
/// whole packet.
pub const MAX_PACKET_LEN: usize = 4096;

/// Code 4, Accounting-Request (RFC 2866 §4.1).
pub const CODE_ACCOUNTING_REQUEST: u8 = 4;
/// Code 5, Accounting-Response (RFC 2866 §4.2).
pub const CODE_ACCOUNTING_RESPONSE: u8 = 5;

/// The fixed header of a RADIUS packet whose length checks passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Code (RFC 2865 §3): 4 for Accounting-Request.
    pub code: u8,
    /// Identifier: matches a response to its request, and a retransmission to its original.
    pub identifier: u8,
    /// Length: 20..=4096 and no more than the datagram.
    pub length: u16,
    /// The Authenticator field as received.
    pub authenticator: [u8; AUTHENTICATOR_LEN],
}

impl Header {
    /// Parses and length-checks the header of `datagram` (RFC 2865 §3): at least 20 octets, a
    /// Length in 20..=4096 that the datagram holds. Octets past Length are padding.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Header, RadiusError> {
        let Some((fixed, _)) = datagram.split_first_chunk::<HEADER_LEN>() else {
            return Err(RadiusError::TooShort);
        };
        let length = u16::from_be_bytes([fixed[2], fixed[3]]);
        if !(MIN_PACKET_LEN..=MAX_PACKET_LEN).contains(&usize::from(length)) {
            return Err(RadiusError::LengthOutOfRange);
        }
        if usize::from(length) > datagram.len() {
            return Err(RadiusError::Truncated);
        }
        let mut authenticator = [0u8; AUTHENTICATOR_LEN];
        authenticator.copy_from_slice(&fixed[4..HEADER_LEN]);
        Ok(Header {
            code: fixed[0],
            identifier: fixed[1],
            length,
            authenticator,
        })
    }
}
