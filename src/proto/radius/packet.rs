//! The RADIUS packet format (RFC 2865 §3, §5) and the Accounting-Request the gateway reads out
//! of it (RFC 2866 §4.1, §5).
//!
//! ```text
//!  0      1      2      4                      20                       Length   datagram end
//!  | Code | Id   | Len  | Authenticator (16)   | Type Len Value | ...   | padding (ignored) |
//! ```
//!
//! Every value handed out borrows the datagram: nothing is copied, nothing is allocated.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::auth;
use super::wire::AUTHENTICATOR_LEN;
pub use super::wire::{
    Header, CODE_ACCOUNTING_REQUEST, CODE_ACCOUNTING_RESPONSE, HEADER_LEN, MAX_PACKET_LEN,
    MIN_PACKET_LEN,
};
use super::{AttributeKind, RadiusError};

/// Attribute types this codec reads (RFC 2865 §5, RFC 2866 §5, RFC 3162 §2).
pub mod attr {
    /// Framed-IP-Address (RFC 2865 §5.8): 4 octets, an IPv4 address.
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    /// Vendor-Specific (RFC 2865 §5.26): Vendor-Id (4 octets) then vendor data.
    pub const VENDOR_SPECIFIC: u8 = 26;
    /// Calling-Station-Id (RFC 2865 §5.31): the MSISDN on a 3GPP core (TS 29.061).
    pub const CALLING_STATION_ID: u8 = 31;
    /// Acct-Status-Type (RFC 2866 §5.1): 4-octet integer.
    pub const ACCT_STATUS_TYPE: u8 = 40;
    /// Acct-Session-Id (RFC 2866 §5.5): text.
    pub const ACCT_SESSION_ID: u8 = 44;
    /// Framed-IPv6-Prefix (RFC 3162 §2.3): Reserved, Prefix-Length, Prefix (0..=16 octets).
    pub const FRAMED_IPV6_PREFIX: u8 = 97;
    /// The IANA enterprise number of 3GPP, the Vendor-Id of its Vendor-Specific attributes.
    pub const VENDOR_3GPP: u32 = 10415;
    /// 3GPP-IMSI: 3GPP Vendor-Specific sub-attribute 1.
    pub const VSA_3GPP_IMSI: u8 = 1;
    /// 3GPP-IMEISV: 3GPP Vendor-Specific sub-attribute 20.
    pub const VSA_3GPP_IMEISV: u8 = 20;
}

/// Acct-Status-Type (RFC 2866 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcctStatusType {
    /// 1: a session (PDP context / PDN connection) starts; carries its address.
    Start,
    /// 2: the session ended.
    Stop,
    /// 3: an update for a running session (RFC 2869; "Alive" in older dictionaries).
    InterimUpdate,
    /// 7: the NAS (re)started accounting: sessions it held before are gone.
    AccountingOn,
    /// 8: the NAS is about to stop accounting: its sessions end.
    AccountingOff,
    /// Any other value (the tunnel values 9..=14 of RFC 2867, 15 "Failed", ...): passed through
    /// for the caller to answer and otherwise ignore.
    Other(u32),
}

impl AcctStatusType {
    /// The type for a wire value.
    #[must_use]
    pub fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Start,
            2 => Self::Stop,
            3 => Self::InterimUpdate,
            7 => Self::AccountingOn,
            8 => Self::AccountingOff,
            other => Self::Other(other),
        }
    }

    /// The wire value.
    #[must_use]
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Start => 1,
            Self::Stop => 2,
            Self::InterimUpdate => 3,
            Self::AccountingOn => 7,
            Self::AccountingOff => 8,
            Self::Other(value) => value,
        }
    }
}

/// A Framed-IPv6-Prefix (RFC 3162 §2.3), checked: `len` ≤ 128, and the address holds the prefix
/// octets sent, zero-filled, with every bit past `len` zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    /// The prefix, zero past `len` bits.
    pub addr: Ipv6Addr,
    /// Prefix-Length in bits, 0..=128.
    pub len: u8,
}

impl Ipv6Prefix {
    /// Parses the value of a Framed-IPv6-Prefix (after Type and Length): Reserved (must be 0),
    /// Prefix-Length (≤ 128), then 0..=16 Prefix octets that must cover Prefix-Length, with
    /// every bit outside Prefix-Length zero (RFC 3162 §2.3: "Bits outside of the Prefix-Length,
    /// if included, must be zero").
    fn parse(value: &[u8]) -> Option<Ipv6Prefix> {
        let [reserved, len, prefix @ ..] = value else {
            return None;
        };
        if *reserved != 0 || *len > 128 || prefix.len() > 16 {
            return None;
        }
        if prefix.len() * 8 < usize::from(*len) {
            return None;
        }
        let mut octets = [0u8; 16];
        octets[..prefix.len()].copy_from_slice(prefix);
        let bits = u128::from_be_bytes(octets);
        let mask = match *len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        if bits & !mask != 0 {
            return None;
        }
        Some(Ipv6Prefix {
            addr: Ipv6Addr::from(bits),
            len: *len,
        })
    }
}

/// A 3GPP-IMSI as received, checked to be 6 to 15 ASCII digits: at most 15 by TS 23.003 §2.2
/// (MCC 3 + MNC 2..=3 + MSIN), at least MCC + a 2-digit MNC + one MSIN digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Imsi<'a>(&'a str);

impl<'a> Imsi<'a> {
    /// Minimum number of digits accepted.
    pub const MIN_DIGITS: usize = 6;
    /// Maximum number of digits (TS 23.003 §2.2).
    pub const MAX_DIGITS: usize = 15;

    fn parse(value: &'a [u8]) -> Option<Imsi<'a>> {
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&value.len())
            || !value.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        std::str::from_utf8(value).ok().map(Imsi)
    }

    /// The digits.
    #[must_use]
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// A 3GPP-IMEISV as received. FreeRADIUS's dictionary.3gpp (drawn from TS 29.061) types it
/// `string`, and radclient sends the digits as text; but packet cores have been seen to send
/// other shapes (the IMEISV as 8 octets of BCD, as in the GTP IE it is copied from), so the codec
/// hands out the octets and refuses none; [`Imeisv::digits`] gives the plain-digits form when it
/// is that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Imeisv<'a>(&'a [u8]);

impl<'a> Imeisv<'a> {
    /// The value octets, whatever their shape.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The value when it is 14 to 16 ASCII digits (an IMEI without or with its check digit, or
    /// an IMEISV: TS 23.003 §6.2), else `None`.
    #[must_use]
    pub fn digits(&self) -> Option<&'a str> {
        if (14..=16).contains(&self.0.len()) && self.0.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(self.0).ok()
        } else {
            None
        }
    }
}

/// One attribute of a packet whose attribute walk succeeded: Type and the value octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// The attribute Type.
    pub typ: u8,
    /// The value (after the Type and Length octets).
    pub value: &'a [u8],
}

/// Iterator over the attributes of a decoded request, in wire order (from
/// [`AccountingRequest::attributes`]; the bounds were checked by the decoder, so it simply
/// stops at the end).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        next_attribute(&mut self.rest).ok().flatten()
    }
}

/// Takes the next attribute off `rest`: `Ok(None)` at the end, an error when its header or its
/// value does not fit (RFC 2865 §5: Length counts Type, Length and Value, so it is at least 2).
fn next_attribute<'a>(rest: &mut &'a [u8]) -> Result<Option<Attribute<'a>>, RadiusError> {
    let [typ, len, after @ ..] = *rest else {
        return if rest.is_empty() {
            Ok(None)
        } else {
            Err(RadiusError::AttributeOverrun)
        };
    };
    let (typ, len) = (*typ, usize::from(*len));
    if len < 2 {
        return Err(RadiusError::InvalidAttributeLength);
    }
    let Some((value, tail)) = after.split_at_checked(len - 2) else {
        return Err(RadiusError::AttributeOverrun);
    };
    *rest = tail;
    Ok(Some(Attribute { typ, value }))
}

/// An Accounting-Request (RFC 2866 §4.1), borrowed from the datagram it was decoded from: what
/// the gateway needs to bind an IP address to a SIM, plus the raw attributes for anything else.
///
/// The single-instance attributes read here appear at most once (else
/// [`RadiusError::DuplicateAttribute`]). Framed-IPv6-Prefix may appear several times (RFC 3162
/// §2.3); [`Self::framed_ipv6_prefix`] is the first, [`Self::framed_ipv6_prefixes`] gives all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountingRequest<'a> {
    /// The Identifier: with the client address and the authenticator, what makes a
    /// retransmission recognisable ([`super::DuplicateDetector`]).
    pub identifier: u8,
    /// The Request Authenticator.
    pub authenticator: [u8; AUTHENTICATOR_LEN],
    /// Acct-Status-Type (required).
    pub status_type: AcctStatusType,
    /// Framed-IP-Address (attribute 8), as sent: the special values 255.255.255.255 and
    /// 255.255.255.254 of RFC 2865 §5.8 are for Access-Accept and are not filtered here.
    pub framed_ip: Option<Ipv4Addr>,
    /// The first Framed-IPv6-Prefix (attribute 97).
    pub framed_ipv6_prefix: Option<Ipv6Prefix>,
    /// Calling-Station-Id (attribute 31): the MSISDN, as sent (any octets, possibly empty).
    pub calling_station_id: Option<&'a [u8]>,
    /// Acct-Session-Id (attribute 44), as sent (any octets, possibly empty).
    pub session_id: Option<&'a [u8]>,
    /// 3GPP-IMSI (vendor 10415, type 1), checked to be digits.
    pub imsi: Option<Imsi<'a>>,
    /// 3GPP-IMEISV (vendor 10415, type 20), as sent.
    pub imeisv: Option<Imeisv<'a>>,
    /// The attribute octets (between the header and Length), already walked once.
    attributes: &'a [u8],
}

impl<'a> AccountingRequest<'a> {
    /// Every attribute, in wire order (including the ones read into fields).
    #[must_use]
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            rest: self.attributes,
        }
    }

    /// Every valid Framed-IPv6-Prefix, in wire order (all were checked by the decoder).
    pub fn framed_ipv6_prefixes(&self) -> impl Iterator<Item = Ipv6Prefix> + 'a {
        self.attributes()
            .filter(|a| a.typ == attr::FRAMED_IPV6_PREFIX)
            .filter_map(|a| Ipv6Prefix::parse(a.value))
    }

    /// The Accounting-Response to this request ([`super::encode_accounting_response`]).
    #[must_use]
    pub fn response(&self, secret: &[u8]) -> [u8; super::ACCOUNTING_RESPONSE_LEN] {
        super::encode_accounting_response(self.identifier, &self.authenticator, secret)
    }
}

/// Checks the header of `datagram` (RFC 2865 §3) and returns it, whatever the Code: lets the
/// listener log or count what it drops.
///
/// # Errors
/// [`RadiusError::TooShort`], [`RadiusError::LengthOutOfRange`], [`RadiusError::Truncated`].
pub fn peek_header(datagram: &[u8]) -> Result<Header, RadiusError> {
    Header::parse(datagram)
}

/// Decodes one received datagram as an Accounting-Request and verifies its Request
/// Authenticator with the client's shared `secret` (RFC 2866 §3), in this order: header length
/// checks (RFC 2865 §3; octets past Length are ignored), Code 4, the authenticator, then the
/// attribute walk. Nothing from the attributes is believed before the authenticator matched.
///
/// # Errors
/// Any [`RadiusError`]; every one means "drop silently, do not answer".
pub fn decode_accounting_request<'a>(
    datagram: &'a [u8],
    secret: &[u8],
) -> Result<AccountingRequest<'a>, RadiusError> {
    let (header, packet) = checked_packet(datagram)?;
    if !auth::verify_request(packet, secret) {
        return Err(RadiusError::BadAuthenticator);
    }
    read_attributes(header, packet)
}

/// [`decode_accounting_request`] without the authenticator check: for the fuzz target and for
/// tests, never for traffic (anyone on the path could forge what it returns).
///
/// # Errors
/// Any [`RadiusError`] but [`RadiusError::BadAuthenticator`].
pub fn dangerous_decode_unverified(datagram: &[u8]) -> Result<AccountingRequest<'_>, RadiusError> {
    let (header, packet) = checked_packet(datagram)?;
    read_attributes(header, packet)
}

/// The header and the packet octets Length delimits, for an Accounting-Request.
fn checked_packet(datagram: &[u8]) -> Result<(Header, &[u8]), RadiusError> {
    let header = Header::parse(datagram)?;
    if header.code != CODE_ACCOUNTING_REQUEST {
        return Err(RadiusError::NotAccountingRequest);
    }
    Ok((header, &datagram[..usize::from(header.length)]))
}

/// Sets `slot` once; a second instance is a [`RadiusError::DuplicateAttribute`].
fn set_once<T>(slot: &mut Option<T>, value: T, kind: AttributeKind) -> Result<(), RadiusError> {
    if slot.is_some() {
        return Err(RadiusError::DuplicateAttribute(kind));
    }
    *slot = Some(value);
    Ok(())
}

/// A 4-octet big-endian value (RFC 2865 §5: "address" and "integer" are 32 bits).
fn four_octets(value: &[u8], kind: AttributeKind) -> Result<[u8; 4], RadiusError> {
    value
        .try_into()
        .map_err(|_| RadiusError::InvalidAttributeValue(kind))
}

/// Walks the attributes of a length-checked Accounting-Request and reads the ones the gateway
/// uses; unknown attributes (and other vendors' Vendor-Specific) are skipped after their bounds
/// are checked.
fn read_attributes<'a>(
    header: Header,
    packet: &'a [u8],
) -> Result<AccountingRequest<'a>, RadiusError> {
    let attributes = &packet[HEADER_LEN..];
    let mut status = None;
    let mut framed_ip = None;
    let mut framed_ipv6_prefix = None;
    let mut calling_station_id = None;
    let mut session_id = None;
    let mut imsi = None;
    let mut imeisv = None;

    let mut rest = attributes;
    while let Some(attribute) = next_attribute(&mut rest)? {
        let value = attribute.value;
        match attribute.typ {
            attr::ACCT_STATUS_TYPE => {
                let kind = AttributeKind::AcctStatusType;
                let raw = u32::from_be_bytes(four_octets(value, kind)?);
                set_once(&mut status, AcctStatusType::from_u32(raw), kind)?;
            }
            attr::FRAMED_IP_ADDRESS => {
                let kind = AttributeKind::FramedIpAddress;
                let ip = Ipv4Addr::from(four_octets(value, kind)?);
                set_once(&mut framed_ip, ip, kind)?;
            }
            attr::FRAMED_IPV6_PREFIX => {
                let prefix = Ipv6Prefix::parse(value).ok_or(RadiusError::InvalidAttributeValue(
                    AttributeKind::FramedIpv6Prefix,
                ))?;
                framed_ipv6_prefix.get_or_insert(prefix);
            }
            attr::CALLING_STATION_ID => {
                set_once(
                    &mut calling_station_id,
                    value,
                    AttributeKind::CallingStationId,
                )?;
            }
            attr::ACCT_SESSION_ID => {
                set_once(&mut session_id, value, AttributeKind::AcctSessionId)?;
            }
            attr::VENDOR_SPECIFIC => read_vendor_specific(value, &mut imsi, &mut imeisv)?,
            _ => {}
        }
    }
    let status_type = status.ok_or(RadiusError::MissingStatusType)?;
    Ok(AccountingRequest {
        identifier: header.identifier,
        authenticator: header.authenticator,
        status_type,
        framed_ip,
        framed_ipv6_prefix,
        calling_station_id,
        session_id,
        imsi,
        imeisv,
        attributes,
    })
}

/// Reads a Vendor-Specific value (RFC 2865 §5.26: Vendor-Id, 4 octets, then the String; the
/// attribute's Length is at least 7, so the value at least 5 octets). For vendor 10415 (3GPP) the
/// String is a run of sub-attributes in the layout RFC 2865 §5.26 suggests and TS 29.061 uses
/// (vendor-type, vendor-length counting both, value); each is bounds-checked, 3GPP-IMSI and
/// 3GPP-IMEISV are read, the rest skipped. Other vendors' data is not interpreted.
fn read_vendor_specific<'a>(
    value: &'a [u8],
    imsi: &mut Option<Imsi<'a>>,
    imeisv: &mut Option<Imeisv<'a>>,
) -> Result<(), RadiusError> {
    let invalid = RadiusError::InvalidAttributeValue(AttributeKind::VendorSpecific);
    let Some((vendor, data)) = value.split_first_chunk::<4>() else {
        return Err(invalid);
    };
    if data.is_empty() {
        return Err(invalid);
    }
    if u32::from_be_bytes(*vendor) != attr::VENDOR_3GPP {
        return Ok(());
    }
    let mut rest = data;
    while let Some(sub) = next_attribute(&mut rest).map_err(|_| invalid)? {
        match sub.typ {
            attr::VSA_3GPP_IMSI => {
                let kind = AttributeKind::Imsi;
                let parsed =
                    Imsi::parse(sub.value).ok_or(RadiusError::InvalidAttributeValue(kind))?;
                set_once(imsi, parsed, kind)?;
            }
            attr::VSA_3GPP_IMEISV => set_once(imeisv, Imeisv(sub.value), AttributeKind::Imeisv)?,
            _ => {}
        }
    }
    Ok(())
}
