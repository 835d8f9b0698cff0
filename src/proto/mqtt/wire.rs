//! Wire primitives (§1.5): a bounds-checked reader over one frozen packet body that hands out
//! zero-copy `Bytes` slices, and a byte sink used twice by the encoder (once to count, once to write).
//!
//! Nothing here knows about packet types; the reader never panics and never reads past its bound.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, MqttError};

/// Largest value a four-byte Variable Byte Integer can hold (§1.5.5).
pub const MAX_VARINT: u32 = 268_435_455;

/// Decodes a Variable Byte Integer from the front of `bytes`.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some((value, length)))` otherwise. Refuses a fifth
/// byte and non-minimal encodings ([MQTT-1.5.5-1]).
pub fn decode_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, MqttError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            // A multi-byte encoding whose last byte is 0 could have been shorter.
            if index > 0 && byte == 0 {
                return Err(MqttError::MalformedVarint);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(MqttError::MalformedVarint)
    } else {
        Ok(None)
    }
}

/// The number of bytes `value` takes as a Variable Byte Integer (`value` <= [`MAX_VARINT`]).
#[must_use]
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over one packet body (or a sub-range of it, such as a property block).
pub struct Reader<'a> {
    body: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over all of `body`.
    pub fn new(body: &'a Bytes) -> Self {
        Self {
            body,
            pos: 0,
            end: body.len(),
        }
    }

    /// Bytes left before this reader's bound.
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// Whether the reader has reached its bound.
    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    /// Splits off a sub-reader over the next `len` bytes and advances past them.
    pub fn sub_reader(&mut self, len: usize) -> Result<Reader<'a>, MqttError> {
        if len > self.remaining() {
            return Err(MqttError::Truncated);
        }
        let sub = Reader {
            body: self.body,
            pos: self.pos,
            end: self.pos + len,
        };
        self.pos += len;
        Ok(sub)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], MqttError> {
        if len > self.remaining() {
            return Err(MqttError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.body[start..self.pos])
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, MqttError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian two-byte integer.
    pub fn u16(&mut self) -> Result<u16, MqttError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian four-byte integer.
    pub fn u32(&mut self) -> Result<u32, MqttError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer; running out of bytes mid-integer is [`MqttError::Truncated`].
    pub fn varint(&mut self) -> Result<u32, MqttError> {
        match decode_varint(&self.body[self.pos..self.end])? {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None => Err(MqttError::Truncated),
        }
    }

    /// The next `len` bytes as a zero-copy slice of the packet.
    pub fn bytes(&mut self, len: usize) -> Result<Bytes, MqttError> {
        if len > self.remaining() {
            return Err(MqttError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.body.slice(start..self.pos))
    }

    /// Everything up to the bound, as a zero-copy slice.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.body.slice(start..self.end)
    }

    /// Binary Data: a two-byte length then that many bytes (§1.5.6).
    pub fn binary(&mut self) -> Result<Bytes, MqttError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// A UTF-8 Encoded String (§1.5.4), validated: well-formed UTF-8 without surrogates
    /// ([MQTT-1.5.4-1]) and without U+0000 ([MQTT-1.5.4-2]).
    pub fn utf8(&mut self) -> Result<Bytes, MqttError> {
        let bytes = self.binary()?;
        validate_utf8(&bytes)?;
        Ok(bytes)
    }
}

/// Checks the MQTT UTF-8 string rules: `core::str::from_utf8` rejects ill-formed sequences,
/// overlong forms and surrogates ([MQTT-1.5.4-1]); U+0000 is refused separately ([MQTT-1.5.4-2]).
pub fn validate_utf8(bytes: &[u8]) -> Result<(), MqttError> {
    if core::str::from_utf8(bytes).is_err() {
        return Err(MqttError::InvalidUtf8);
    }
    if bytes.contains(&0) {
        return Err(MqttError::NullCharInString);
    }
    Ok(())
}

/// Where the encoder writes: a counter (first pass) or the output buffer (second pass).
pub trait Sink {
    /// Appends one byte.
    fn put_u8(&mut self, byte: u8);
    /// Appends a slice.
    fn put_slice(&mut self, bytes: &[u8]);

    /// Appends a big-endian two-byte integer.
    fn put_u16(&mut self, value: u16) {
        self.put_slice(&value.to_be_bytes());
    }

    /// Appends a big-endian four-byte integer.
    fn put_u32(&mut self, value: u32) {
        self.put_slice(&value.to_be_bytes());
    }

    /// Appends a Variable Byte Integer (minimal encoding).
    fn put_varint(&mut self, value: usize) -> Result<(), EncodeError> {
        if value > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge);
        }
        let mut rest = value;
        loop {
            // Truncation is intended: the low seven bits.
            let mut byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if rest == 0 {
                return Ok(());
            }
        }
    }

    /// Appends Binary Data or a UTF-8 string: two-byte length then the bytes.
    fn put_binary(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong)?;
        self.put_u16(len);
        self.put_slice(bytes);
        Ok(())
    }
}

/// The counting sink: how many bytes a write pass would produce.
#[derive(Default)]
pub struct Counter(pub usize);

impl Sink for Counter {
    fn put_u8(&mut self, _byte: u8) {
        self.0 += 1;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, byte: u8) {
        BufMut::put_u8(self, byte);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for value in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VARINT as usize,
        ] {
            let mut out = BytesMut::new();
            out.put_varint(value).unwrap();
            assert_eq!(out.len(), varint_len(value));
            assert_eq!(
                decode_varint(&out).unwrap(),
                Some((value as u32, out.len()))
            );
        }
    }

    #[test]
    fn varint_spec_examples() {
        // §1.5.5 Table 1-1 boundary encodings.
        assert_eq!(decode_varint(&[0x7F]).unwrap(), Some((127, 1)));
        assert_eq!(decode_varint(&[0x80, 0x01]).unwrap(), Some((128, 2)));
        assert_eq!(
            decode_varint(&[0xFF, 0xFF, 0xFF, 0x7F]).unwrap(),
            Some((MAX_VARINT, 4))
        );
        assert_eq!(decode_varint(&[0x80, 0x80]).unwrap(), None);
    }

    #[test]
    fn varint_fifth_byte_and_overlong_refused() {
        assert_eq!(
            decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(MqttError::MalformedVarint)
        );
        assert_eq!(
            decode_varint(&[0x80, 0x00]),
            Err(MqttError::MalformedVarint)
        );
        assert_eq!(
            decode_varint(&[0xFF, 0x80, 0x00]),
            Err(MqttError::MalformedVarint)
        );
    }

    #[test]
    fn varint_too_large_refused_on_encode() {
        let mut out = BytesMut::new();
        assert_eq!(
            out.put_varint(MAX_VARINT as usize + 1),
            Err(EncodeError::PacketTooLarge)
        );
    }

    #[test]
    fn utf8_rules() {
        assert_eq!(validate_utf8("a/b/ü".as_bytes()), Ok(()));
        assert_eq!(
            validate_utf8(&[0x61, 0x00]),
            Err(MqttError::NullCharInString)
        );
        // Encoded surrogate U+D800.
        assert_eq!(
            validate_utf8(&[0xED, 0xA0, 0x80]),
            Err(MqttError::InvalidUtf8)
        );
        // Overlong '/'.
        assert_eq!(validate_utf8(&[0xC0, 0xAF]), Err(MqttError::InvalidUtf8));
        // U+FEFF BOM is kept and accepted ([MQTT-1.5.4-3]).
        assert_eq!(validate_utf8(&[0xEF, 0xBB, 0xBF]), Ok(()));
    }

    #[test]
    fn reader_refuses_reads_past_bound() {
        let body = Bytes::from_static(&[0x00, 0x05, b'a', b'b']);
        let mut reader = Reader::new(&body);
        assert_eq!(reader.binary(), Err(MqttError::Truncated));
        let mut reader = Reader::new(&body);
        let mut sub = reader.sub_reader(1).unwrap();
        assert_eq!(sub.u16(), Err(MqttError::Truncated));
        assert_eq!(reader.remaining(), 3);
    }
}
