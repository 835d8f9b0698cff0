//! Digit strings packed into one `u64`: IMSI, IMEI and MSISDN.
//!
//! A SIM table of a million entries keeps three such numbers per SIM; as text they would cost
//! 15 bytes each plus an offset, as `u64`s they cost 8 and compare in one instruction. Leading
//! zeros matter (test networks use MCC `001`, national MSISDNs start with `0`), so the number of
//! digits is kept beside the value, and so is a leading `+` (MSISDN only).
//!
//! Layout of the `u64`: bits 0–55 the value (16 digits < 2^54), bits 56–60 the number of
//! digits (0 means absent), bit 63 a leading `+`. Pure; no IO.

use std::fmt;

const VALUE_BITS: u32 = 56;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const LEN_MASK: u64 = 0x1f;
const PLUS: u64 = 1 << 63;
/// Most digits a packed number holds (10^16 − 1 < 2^56).
const MAX_DIGITS: usize = 16;

/// A digit string of 1..=16 digits with an optional leading `+`, or absent (`NONE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct Packed(u64);

impl Packed {
    /// The absent number.
    pub(crate) const NONE: Packed = Packed(0);

    /// Packs `text` if it is `min..=max` ASCII digits (after a `+` when `allow_plus`).
    fn parse(text: &str, min: usize, max: usize, allow_plus: bool) -> Option<Packed> {
        debug_assert!(min >= 1 && max <= MAX_DIGITS);
        let (plus, digits) = match text.strip_prefix('+') {
            Some(rest) if allow_plus => (true, rest),
            _ => (false, text),
        };
        if !(min..=max).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value = digits
            .bytes()
            .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
        let mut packed = value | ((digits.len() as u64) << VALUE_BITS);
        if plus {
            packed |= PLUS;
        }
        Some(Packed(packed))
    }

    pub(crate) fn is_none(self) -> bool {
        self.len() == 0
    }

    fn len(self) -> usize {
        ((self.0 >> VALUE_BITS) & LEN_MASK) as usize
    }

    /// The text form, on the stack.
    fn text(self) -> DigitString {
        let mut out = DigitString {
            buf: [0; MAX_DIGITS + 1],
            len: 0,
        };
        let len = self.len();
        let start = usize::from(self.0 & PLUS != 0);
        if start == 1 {
            out.buf[0] = b'+';
        }
        let mut value = self.0 & VALUE_MASK;
        for i in (start..start + len).rev() {
            out.buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        out.len = (start + len) as u8;
        out
    }
}

/// The text of an [`Imsi`], [`Imei`] or [`Msisdn`], held on the stack (no allocation).
#[derive(Clone, Copy)]
pub struct DigitString {
    buf: [u8; MAX_DIGITS + 1],
    len: u8,
}

impl DigitString {
    /// The digits (with a leading `+` for an MSISDN written with one).
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        // Only ASCII digits and '+' are ever written into `buf`.
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

impl std::ops::Deref for DigitString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for DigitString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DigitString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

macro_rules! digits_newtype {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $plus:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) Packed);

        impl $name {
            /// Fewest digits accepted.
            pub const MIN_DIGITS: usize = $min;
            /// Most digits accepted.
            pub const MAX_DIGITS: usize = $max;

            /// Parses the text form; `None` if it is not a valid value.
            pub fn parse(text: &str) -> Option<Self> {
                Packed::parse(text, $min, $max, $plus).map(Self)
            }

            /// The text form, exactly as configured (leading zeros kept).
            pub fn digits(self) -> DigitString {
                self.0.text()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.digits().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.digits().as_str())
            }
        }
    };
}

digits_newtype!(
    /// International Mobile Subscriber Identity: 14 or 15 decimal digits (MCC, MNC, MSIN),
    /// leading zeros significant. The key of the SIM table.
    Imsi, 14, 15, false
);

digits_newtype!(
    /// International Mobile Equipment Identity: 14 digits (without check digit), 15 (with it)
    /// or 16 (IMEISV).
    Imei, 14, 16, false
);

digits_newtype!(
    /// The SIM's phone number: 5 to 15 digits (15 is E.164's maximum), optionally after a
    /// leading `+` (international form); national forms keep their leading zeros.
    Msisdn, 5, 15, true
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_round_trip_with_leading_zeros_and_plus() {
        for text in ["001010123456789", "44010123456789", "999999999999999"] {
            assert_eq!(
                Imsi::parse(text).map(|i| i.to_string()).as_deref(),
                Some(text)
            );
        }
        assert_eq!(
            Imei::parse("0123456789012345")
                .map(|i| i.to_string())
                .as_deref(),
            Some("0123456789012345")
        );
        for text in ["+818012345678", "09012345678", "12345", "+999999999999999"] {
            assert_eq!(
                Msisdn::parse(text).map(|i| i.to_string()).as_deref(),
                Some(text)
            );
        }
    }

    #[test]
    fn lengths_and_characters_are_checked() {
        for bad in [
            "",
            "1234567890123",
            "1234567890123456",
            "12345678901234a",
            "+44010123456789",
            " 44010123456789",
        ] {
            assert!(Imsi::parse(bad).is_none(), "{bad:?}");
        }
        for bad in ["1234567890123", "12345678901234567", "+12345678901234"] {
            assert!(Imei::parse(bad).is_none(), "{bad:?}");
        }
        for bad in [
            "1234",
            "+1234",
            "1234567890123456",
            "++12345",
            "12-345",
            "+",
        ] {
            assert!(Msisdn::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn different_texts_pack_differently() {
        // Same value, different number of digits: two IMSIs.
        let a = Imsi::parse("001010123456789").unwrap();
        let b = Imsi::parse("01010123456789").unwrap();
        assert_ne!(a, b);
        assert_ne!(Msisdn::parse("+12345"), Msisdn::parse("12345"));
        assert!(Packed::NONE.is_none());
    }
}
