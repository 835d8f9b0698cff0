//! Typed decode errors for RADIUS accounting datagrams.
//!
//! RADIUS has one wire answer to every error: none. RFC 2865 §3 and RFC 2866 §2/§3 say a packet
//! that is malformed, of an unexpected code, or fails authentication is *silently discarded* —
//! the NAS retransmits or gives up. So [`RadiusError`] does not map to a reply; it maps to a
//! metrics label ([`RadiusError::label`]) so the listener can count what it dropped and why.

use core::fmt;

/// The attributes this codec interprets, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeKind {
    /// Acct-Status-Type (40, RFC 2866 §5.1).
    AcctStatusType,
    /// Framed-IP-Address (8, RFC 2865 §5.8).
    FramedIpAddress,
    /// Framed-IPv6-Prefix (97, RFC 3162 §2.3).
    FramedIpv6Prefix,
    /// Calling-Station-Id (31, RFC 2865 §5.31): the MSISDN on a mobile core.
    CallingStationId,
    /// Acct-Session-Id (44, RFC 2866 §5.5).
    AcctSessionId,
    /// Vendor-Specific (26, RFC 2865 §5.26), whatever the vendor.
    VendorSpecific,
    /// 3GPP-IMSI (Vendor-Specific, vendor 10415, sub-type 1).
    Imsi,
    /// 3GPP-IMEISV (Vendor-Specific, vendor 10415, sub-type 20).
    Imeisv,
}

impl AttributeKind {
    /// A short, stable, lowercase name (for logs and metric labels).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AcctStatusType => "acct_status_type",
            Self::FramedIpAddress => "framed_ip_address",
            Self::FramedIpv6Prefix => "framed_ipv6_prefix",
            Self::CallingStationId => "calling_station_id",
            Self::AcctSessionId => "acct_session_id",
            Self::VendorSpecific => "vendor_specific",
            Self::Imsi => "3gpp_imsi",
            Self::Imeisv => "3gpp_imeisv",
        }
    }
}

/// Why a datagram is not an acceptable Accounting-Request. Every variant means "silently
/// discard" (RFC 2865 §3, RFC 2866 §2); none is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RadiusError {
    /// The datagram is shorter than the 20-octet header (Code, Identifier, Length,
    /// Authenticator).
    TooShort,
    /// The header's Length field is below 20 or above 4096 (RFC 2865 §3: "The minimum length is
    /// 20 and maximum length is 4096").
    LengthOutOfRange,
    /// The header's Length field is larger than the datagram (RFC 2865 §3: "If the packet is
    /// shorter than the Length field indicates, it MUST be silently discarded"). Octets beyond
    /// Length are padding and are ignored, never an error.
    Truncated,
    /// The Code is not 4, Accounting-Request (RFC 2866 §4.1). The header was otherwise well
    /// formed: an Access-Request sent to the accounting port lands here.
    NotAccountingRequest,
    /// An attribute's Length field is below 2, the size of its own Type and Length octets
    /// (RFC 2865 §5): the attribute walk cannot continue.
    InvalidAttributeLength,
    /// An attribute runs past the end of the packet as the header's Length delimits it (or
    /// fewer than two octets are left for an attribute header).
    AttributeOverrun,
    /// The Request Authenticator is not MD5(Code + Identifier + Length + 16 zero octets +
    /// attributes + shared secret) (RFC 2866 §3): a wrong secret, a forged or a corrupted
    /// packet. RFC 2866 §3: the server "MUST NOT" answer such a request.
    BadAuthenticator,
    /// No Acct-Status-Type: RFC 2866 §5.13 lists it as "1" (exactly one) in an
    /// Accounting-Request, and without it the request means nothing to the gateway.
    MissingStatusType,
    /// An attribute the codec interprets appears more than once. The tables of attributes
    /// (RFC 2866 §5.13, RFC 2865 §5.44) allow at most one of each in an Accounting-Request; the
    /// codec applies the same rule to 3GPP-IMSI and 3GPP-IMEISV: two different
    /// Framed-IP-Addresses or IMSIs in one request would make the binding ambiguous.
    DuplicateAttribute(AttributeKind),
    /// An interpreted attribute has a value its specification forbids: a Framed-IP-Address or
    /// Acct-Status-Type that is not 4 octets, a Framed-IPv6-Prefix outside RFC 3162 §2.3
    /// (Length 4..=20, Reserved 0, Prefix-Length ≤ 128 and covered by the octets sent, bits past
    /// Prefix-Length zero), a Vendor-Specific shorter than RFC 2865 §5.26's 7 octets, a 3GPP
    /// sub-attribute whose length is below 2 or runs past its Vendor-Specific, or a 3GPP-IMSI
    /// that is not 6 to 15 ASCII digits.
    InvalidAttributeValue(AttributeKind),
}

impl RadiusError {
    /// A short, stable, lowercase reason for the "dropped" counter of the RADIUS listener.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::LengthOutOfRange => "length_out_of_range",
            Self::Truncated => "truncated",
            Self::NotAccountingRequest => "not_accounting_request",
            Self::InvalidAttributeLength => "invalid_attribute_length",
            Self::AttributeOverrun => "attribute_overrun",
            Self::BadAuthenticator => "bad_authenticator",
            Self::MissingStatusType => "missing_status_type",
            Self::DuplicateAttribute(_) => "duplicate_attribute",
            Self::InvalidAttributeValue(_) => "invalid_attribute_value",
        }
    }
}

impl fmt::Display for RadiusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateAttribute(kind) => {
                write!(f, "RADIUS: duplicate attribute {}", kind.name())
            }
            Self::InvalidAttributeValue(kind) => {
                write!(f, "RADIUS: invalid value of attribute {}", kind.name())
            }
            other => write!(f, "RADIUS: {}", other.label()),
        }
    }
}

impl std::error::Error for RadiusError {}
