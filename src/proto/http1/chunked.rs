//! Incremental scanner for the chunked transfer coding (RFC 9112 §7.1), used to find where a
//! chunked body ends while leaving its bytes untouched: the gateway forwards chunked bodies
//! verbatim, framing and trailers included, so this module validates and measures, it never
//! decodes data into another buffer.
//!
//! It is strict where leniency enables request smuggling: every line ends with CRLF (bare LF or
//! bare CR are errors), chunk data must be followed by CRLF, whitespace after the size is only
//! accepted before a `;` extension (the `BWS` of §7.1.1), sizes overflow-check, size lines are
//! bounded, and trailer fields are checked to be `token ":" field-value` lines (no obs-fold, no
//! whitespace before the colon) within a byte bound. It does not interpret extensions or
//! trailers beyond that.

use super::head::{is_field_value_byte, is_tchar};
use super::HttpError;

/// Longest accepted chunk-size line (size digits plus extensions, CRLF excluded).
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size hex digits; `digits` seen so far.
    Size { digits: u32, value: u64 },
    /// Whitespace after the size, which must lead to `;`.
    SizeWhitespace { value: u64 },
    /// Inside chunk extensions, up to CR.
    Extension { value: u64 },
    /// CR of the size line seen, LF expected.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data, CR expected.
    DataCr,
    /// After chunk data and CR, LF expected.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerLineStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// CR of a trailer line seen, LF expected.
    TrailerLf,
    /// CR of the final empty line seen, LF expected.
    FinalLf,
    /// The body ended.
    Done,
}

/// Scans a chunked body incrementally; it keeps its position so no byte is looked at twice.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedScanner {
    state: State,
    /// Length of the current size line, or of the trailer section once in trailers.
    line_len: usize,
    /// Sum of the chunk sizes declared so far.
    declared: u64,
    /// Wire bytes consumed so far, framing included.
    wire: u64,
    /// Wire offset where the trailer section starts, once the last chunk is seen.
    trailer_start: Option<u64>,
    /// Bound on declared data and on wire bytes before the trailer section.
    max_body: u64,
    /// Bound on the trailer section, final CRLF included.
    max_trailers: usize,
}

impl ChunkedScanner {
    /// A scanner at the start of a chunked body.
    pub(crate) fn new(max_body: u64, max_trailers: usize) -> Self {
        Self {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            line_len: 0,
            declared: 0,
            wire: 0,
            trailer_start: None,
            max_body,
            max_trailers,
        }
    }

    /// True once the final CRLF after the trailers has been consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Offset, in the body's wire bytes, where the trailer section starts (right after the
    /// last-chunk line), once the last chunk has been seen.
    pub(crate) fn trailer_start(&self) -> Option<u64> {
        self.trailer_start
    }

    /// Consumes bytes of `input` (the bytes following those consumed by earlier calls).
    /// Returns how many belong to the body: all of `input`, or fewer when the body ended.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                let available = (input.len() - i) as u64;
                let take = remaining.min(available);
                // `take <= available`, which came from a `usize`.
                i += take as usize;
                self.wire += take;
                self.state = if take == remaining {
                    State::DataCr
                } else {
                    State::Data {
                        remaining: remaining - take,
                    }
                };
            } else {
                self.wire += 1;
                self.step(input[i])?;
                i += 1;
            }
            // The wire size before the trailers is bounded too, so that tiny chunks with long
            // extensions cannot make the buffered body much larger than the declared data.
            if self.trailer_start.unwrap_or(self.wire) > self.max_body {
                return Err(HttpError::BodyTooLarge);
            }
        }
        Ok(i)
    }

    /// Handles one framing byte (anything but chunk data).
    fn step(&mut self, byte: u8) -> Result<(), HttpError> {
        self.state = match self.state {
            State::Size { digits, value } => match hex_value(byte) {
                Some(digit) => {
                    self.count_size_line_byte()?;
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(digit)))
                        .ok_or(HttpError::InvalidChunkSize)?;
                    // Refuse as soon as the declared sizes exceed the limit, before any data.
                    if self.declared.saturating_add(value) > self.max_body {
                        return Err(HttpError::BodyTooLarge);
                    }
                    State::Size {
                        digits: digits + 1,
                        value,
                    }
                }
                None if digits == 0 => return Err(HttpError::InvalidChunkSize),
                None => match byte {
                    b'\r' => State::SizeLf { value },
                    b';' => {
                        self.count_size_line_byte()?;
                        State::Extension { value }
                    }
                    b' ' | b'\t' => {
                        self.count_size_line_byte()?;
                        State::SizeWhitespace { value }
                    }
                    b'\n' => return Err(HttpError::InvalidChunkLineEnding),
                    _ => return Err(HttpError::InvalidChunkSize),
                },
            },
            State::SizeWhitespace { value } => {
                self.count_size_line_byte()?;
                match byte {
                    b' ' | b'\t' => State::SizeWhitespace { value },
                    b';' => State::Extension { value },
                    _ => return Err(HttpError::InvalidChunkExtension),
                }
            }
            State::Extension { value } => match byte {
                b'\r' => State::SizeLf { value },
                b'\n' => return Err(HttpError::InvalidChunkLineEnding),
                b if is_field_value_byte(b) => {
                    self.count_size_line_byte()?;
                    State::Extension { value }
                }
                _ => return Err(HttpError::InvalidChunkExtension),
            },
            State::SizeLf { value } => {
                if byte != b'\n' {
                    return Err(HttpError::InvalidChunkLineEnding);
                }
                self.line_len = 0;
                if value == 0 {
                    // `wire` already counts this LF: the trailer section starts after it.
                    self.trailer_start = Some(self.wire);
                    State::TrailerLineStart
                } else {
                    self.declared += value;
                    State::Data { remaining: value }
                }
            }
            // Never reached: `advance` skips data in bulk.
            State::Data { remaining } => State::Data { remaining },
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size {
                digits: 0,
                value: 0,
            },
            State::DataCr | State::DataLf => return Err(HttpError::InvalidChunkLineEnding),
            State::TrailerLineStart => {
                self.count_trailer_byte()?;
                match byte {
                    b'\r' => State::FinalLf,
                    b if is_tchar(b) => State::TrailerName,
                    b'\n' => return Err(HttpError::InvalidChunkLineEnding),
                    _ => return Err(HttpError::InvalidTrailer),
                }
            }
            State::TrailerName => {
                self.count_trailer_byte()?;
                match byte {
                    b':' => State::TrailerValue,
                    b if is_tchar(b) => State::TrailerName,
                    _ => return Err(HttpError::InvalidTrailer),
                }
            }
            State::TrailerValue => {
                self.count_trailer_byte()?;
                match byte {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(HttpError::InvalidChunkLineEnding),
                    b if is_field_value_byte(b) => State::TrailerValue,
                    _ => return Err(HttpError::InvalidTrailer),
                }
            }
            State::TrailerLf | State::FinalLf if byte != b'\n' => {
                return Err(HttpError::InvalidChunkLineEnding)
            }
            State::TrailerLf => {
                self.count_trailer_byte()?;
                State::TrailerLineStart
            }
            State::FinalLf => {
                self.count_trailer_byte()?;
                State::Done
            }
            State::Done => State::Done,
        };
        Ok(())
    }

    fn count_size_line_byte(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE_BYTES {
            return Err(HttpError::ChunkLineTooLong);
        }
        Ok(())
    }

    fn count_trailer_byte(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > self.max_trailers {
            return Err(HttpError::TrailersTooLarge);
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}
