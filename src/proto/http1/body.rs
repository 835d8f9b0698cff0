//! Streaming delimitation of upstream response bodies.
//!
//! [`BodyDecoder`] finds where a body ends and hands back its raw wire bytes (chunk framing and
//! trailers included) as zero-copy `Bytes` to forward verbatim. It does not decode chunks or
//! content codings and does not bound the body size (responses are streamed, not buffered).

use bytes::{Bytes, BytesMut};

use super::chunked::ChunkedScanner;
use super::{BodyLength, HttpError};

/// Bound on the trailer section of a chunked response body.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 8192;

/// What one [`BodyDecoder::decode`] call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "Data and Done carry bytes to forward"]
pub enum BodyChunk {
    /// Body bytes to forward; the body continues.
    Data(Bytes),
    /// No body bytes in the buffer yet.
    Incomplete,
    /// The body ended; these are its last wire bytes (possibly empty). Bytes after the body
    /// stay in the buffer.
    Done(Bytes),
}

#[derive(Debug, Clone)]
enum State {
    Length { remaining: u64 },
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

/// Delimits one message body as it streams in.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body delimited as `len` says.
    #[must_use]
    pub fn new(len: BodyLength) -> Self {
        let state = match len {
            BodyLength::None | BodyLength::Length(0) => State::Done,
            BodyLength::Length(remaining) => State::Length { remaining },
            BodyLength::Chunked => {
                State::Chunked(ChunkedScanner::new(u64::MAX, DEFAULT_MAX_TRAILER_BYTES))
            }
            BodyLength::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// Consumes as much of `buf` as belongs to the body and returns those raw wire bytes,
    /// split off the front of `buf` without copying.
    ///
    /// # Errors
    /// The chunked framing is invalid; the upstream connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<BodyChunk, HttpError> {
        let (take, done) = match &mut self.state {
            State::Done => return Ok(BodyChunk::Done(Bytes::new())),
            State::Length { remaining } => {
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                // `take` fits in u64: it is at most `remaining`.
                *remaining -= take as u64;
                (take, *remaining == 0)
            }
            State::Chunked(scanner) => {
                let take = scanner.advance(buf)?;
                (take, scanner.is_done())
            }
            State::UntilClose => (buf.len(), false),
        };
        let bytes = buf.split_to(take).freeze();
        if done {
            self.state = State::Done;
            Ok(BodyChunk::Done(bytes))
        } else if bytes.is_empty() {
            Ok(BodyChunk::Incomplete)
        } else {
            Ok(BodyChunk::Data(bytes))
        }
    }

    /// True once the whole body has been returned.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The peer closed the connection: fine for a body delimited by close (which is now done),
    /// or one already complete.
    ///
    /// # Errors
    /// [`HttpError::UnexpectedEof`] when the body was delimited otherwise and is incomplete.
    pub fn eof(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            State::Length { .. } | State::Chunked(_) => Err(HttpError::UnexpectedEof),
        }
    }
}

/// Strips chunked framing from wire bytes that a [`BodyDecoder`] has already validated, for
/// recipients that cannot parse chunked (HTTP/1.0 devices). Data comes out as slices of the
/// input, never copied; chunk extensions and trailers are dropped.
#[derive(Debug, Clone, Default)]
pub struct Dechunker {
    state: DechunkState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum DechunkState {
    /// In the chunk-size digits; the value so far.
    #[default]
    SizeStart,
    Size(u64),
    /// After the size (extensions), up to LF.
    SizeLine(u64),
    Data(u64),
    /// CRLF after chunk data: bytes left to skip.
    DataEnd(u8),
    /// In the trailer section; `at_line_start` tracks the empty line that ends it.
    Trailers {
        at_line_start: bool,
    },
    Done,
}

impl Dechunker {
    /// Feed the next validated wire bytes; pushes the chunk data they contain onto `out`.
    pub fn feed(&mut self, wire: &Bytes, out: &mut Vec<Bytes>) {
        let mut i = 0;
        while i < wire.len() {
            let b = wire[i];
            match self.state {
                DechunkState::SizeStart | DechunkState::Size(_) => {
                    let value = match self.state {
                        DechunkState::Size(v) => v,
                        _ => 0,
                    };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            self.state = DechunkState::Size(
                                value.saturating_mul(16).saturating_add(d.into()),
                            );
                        }
                        None => self.state = DechunkState::SizeLine(value),
                    }
                    // The LF case is handled below for SizeLine on the same byte.
                    if b == b'\n' {
                        continue;
                    }
                    i += 1;
                }
                DechunkState::SizeLine(value) => {
                    if b == b'\n' {
                        self.state = if value == 0 {
                            DechunkState::Trailers {
                                at_line_start: true,
                            }
                        } else {
                            DechunkState::Data(value)
                        };
                    }
                    i += 1;
                }
                DechunkState::Data(remaining) => {
                    let avail = wire.len() - i;
                    let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    out.push(wire.slice(i..i + take));
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        DechunkState::DataEnd(2)
                    } else {
                        DechunkState::Data(left)
                    };
                }
                DechunkState::DataEnd(n) => {
                    self.state = if n <= 1 {
                        DechunkState::SizeStart
                    } else {
                        DechunkState::DataEnd(n - 1)
                    };
                    i += 1;
                }
                DechunkState::Trailers { at_line_start } => {
                    self.state = match b {
                        b'\n' if at_line_start => DechunkState::Done,
                        b'\n' => DechunkState::Trailers {
                            at_line_start: true,
                        },
                        b'\r' => DechunkState::Trailers { at_line_start },
                        _ => DechunkState::Trailers {
                            at_line_start: false,
                        },
                    };
                    i += 1;
                }
                DechunkState::Done => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_body_streams_and_leaves_the_next_message() {
        let mut decoder = BodyDecoder::new(BodyLength::Length(5));
        let mut buf = BytesMut::from(&b"he"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(BodyChunk::Data(Bytes::from_static(b"he")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(BodyChunk::Incomplete));
        buf.extend_from_slice(b"lloHTTP/1.1");
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(BodyChunk::Done(Bytes::from_static(b"llo")))
        );
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
        assert_eq!(decoder.eof(), Ok(()));
    }

    #[test]
    fn chunked_body_is_forwarded_verbatim_and_zero_copy() {
        let wire = b"4\r\nWiki\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let mut decoder = BodyDecoder::new(BodyLength::Chunked);
        let mut buf = BytesMut::from(&wire[..]);
        let start = buf.as_ptr() as usize;
        let mut forwarded = Vec::new();
        let mut pieces = Vec::new();
        // Feed in two parts to exercise resumption.
        let mut rest = buf.split_off(6);
        match decoder.decode(&mut buf) {
            Ok(BodyChunk::Data(bytes)) => pieces.push(bytes),
            other => panic!("{other:?}"),
        }
        buf.unsplit(rest.split());
        match decoder.decode(&mut buf) {
            Ok(BodyChunk::Done(bytes)) => pieces.push(bytes),
            other => panic!("{other:?}"),
        }
        for piece in &pieces {
            forwarded.extend_from_slice(piece);
            let at = piece.as_ptr() as usize;
            assert!(
                at >= start && at + piece.len() <= start + wire.len(),
                "copied"
            );
        }
        assert_eq!(&forwarded[..], &wire[..wire.len() - 4]);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn eof_rules() {
        let mut until_close = BodyDecoder::new(BodyLength::UntilClose);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            until_close.decode(&mut buf),
            Ok(BodyChunk::Data(Bytes::from_static(b"abc")))
        );
        assert!(!until_close.is_done());
        assert_eq!(until_close.eof(), Ok(()));
        assert!(until_close.is_done());

        let mut short = BodyDecoder::new(BodyLength::Length(10));
        assert_eq!(
            short.decode(&mut BytesMut::from(&b"abc"[..])).map(|_| ()),
            Ok(())
        );
        assert_eq!(short.eof(), Err(HttpError::UnexpectedEof));
        assert_eq!(
            BodyDecoder::new(BodyLength::Chunked).eof(),
            Err(HttpError::UnexpectedEof)
        );
    }

    #[test]
    fn no_body_is_done_at_once() {
        let mut decoder = BodyDecoder::new(BodyLength::None);
        assert!(decoder.is_done());
        let mut buf = BytesMut::from(&b"next"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(BodyChunk::Done(Bytes::new())));
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        let mut decoder = BodyDecoder::new(BodyLength::Chunked);
        let mut buf = BytesMut::from(&b"4\r\nWikiX"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(HttpError::InvalidChunkLineEnding)
        );
    }

    #[test]
    fn dechunker_yields_data_slices_across_any_split() {
        let wire =
            Bytes::from_static(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
        for split in 0..=wire.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            d.feed(&wire.slice(..split), &mut out);
            d.feed(&wire.slice(split..), &mut out);
            let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(joined, b"hello world", "split at {split}");
        }
        // Zero copy: the data slices point into the wire buffer.
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        d.feed(&wire, &mut out);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(out.iter().all(|b| range.contains(&(b.as_ptr() as usize))));
    }
}
