//! Pieces shared by request and response heads: the incremental end-of-head scanner, the
//! `httparse` error mapping, and the summary of the framing and connection header fields.
//!
//! Nothing here allocates or copies: it reads borrowed slices and returns small summaries.

use super::HttpError;

/// Finds the end of a head (the empty line) incrementally, without rescanning bytes it has
/// already looked at, and enforces CRLF line endings and the head size limit while scanning.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeadScanner {
    /// Bytes of the buffer already scanned.
    pos: usize,
    /// Start of the line being scanned.
    line_start: usize,
}

impl HeadScanner {
    /// True before any byte has been scanned.
    pub(crate) fn is_fresh(&self) -> bool {
        self.pos == 0
    }

    /// Scans `buf` (the whole head so far, starting at the start line) from where the previous
    /// call stopped. Returns `Some(head_len)` (including the final CRLF) once the empty line is
    /// seen, `None` if more bytes are needed.
    ///
    /// Errors as soon as a bare LF is seen (RFC 9112 §2.2 lets a recipient accept one; we do not,
    /// so that no two parsers on the path can disagree on line boundaries), or as soon as
    /// `max_head` bytes are buffered without the head having ended.
    pub(crate) fn scan(&mut self, buf: &[u8], max_head: usize) -> Result<Option<usize>, HttpError> {
        let end = buf.len().min(max_head);
        while self.pos < end {
            let Some(offset) = buf[self.pos..end].iter().position(|&b| b == b'\n') else {
                self.pos = end;
                break;
            };
            let lf = self.pos + offset;
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(HttpError::BareLineFeed);
            }
            if lf - 1 == self.line_start {
                return Ok(Some(lf + 1));
            }
            self.line_start = lf + 1;
            self.pos = lf + 1;
        }
        if buf.len() >= max_head {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(None)
    }
}

/// Maps an `httparse` error on a complete head to our error.
pub(crate) fn map_httparse_error(
    error: httparse::Error,
    start_line: &[u8],
    is_request: bool,
) -> HttpError {
    match error {
        httparse::Error::HeaderName => HttpError::InvalidHeaderName,
        httparse::Error::HeaderValue => HttpError::InvalidHeaderValue,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version if names_other_http_version(start_line, is_request) => {
            HttpError::UnsupportedVersion
        }
        httparse::Error::Status if !is_request => HttpError::MalformedStatusLine,
        _ if is_request => HttpError::MalformedRequestLine,
        _ => HttpError::MalformedStatusLine,
    }
}

/// True when the start line carries a well-formed `HTTP/d.d` version that httparse refused,
/// i.e. a version we do not speak (505) rather than garbage (400).
fn names_other_http_version(start_line: &[u8], is_request: bool) -> bool {
    let line = start_line.strip_suffix(b"\r\n").unwrap_or(start_line);
    let token = if is_request {
        line.rsplit(|&b| b == b' ').next()
    } else {
        line.split(|&b| b == b' ').next()
    };
    matches!(token, Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// The first line of a head, CRLF included when present.
pub(crate) fn first_line(head: &[u8]) -> &[u8] {
    match head.iter().position(|&b| b == b'\n') {
        Some(lf) => &head[..=lf],
        None => head,
    }
}

/// Trims optional whitespace (SP / HTAB) on both ends.
pub(crate) fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The non-empty, trimmed elements of a comma-separated field value (RFC 9110 §5.6.1).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// What `Transfer-Encoding` says, over all its field lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEncoding {
    /// No `Transfer-Encoding` field.
    Absent,
    /// Exactly `chunked`, once.
    Chunked,
    /// `chunked` is final and once, but other codings precede it.
    ChunkedAfterOthers,
    /// `chunked` is not the final coding (or absent from a non-empty list).
    NotChunkedFinal,
    /// Empty list, or `chunked` more than once (RFC 9112 §6.1 forbids applying it twice).
    Invalid,
}

/// The header fields that decide framing and connection handling, read once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldSummary {
    /// `Content-Length`, validated (`Err` if present but invalid).
    pub(crate) content_length: Result<Option<u64>, HttpError>,
    /// `Transfer-Encoding`.
    pub(crate) transfer_encoding: TransferEncoding,
    /// Number of `Host` field lines.
    pub(crate) host_count: usize,
    /// `Connection` lists `close`.
    pub(crate) connection_close: bool,
    /// `Connection` lists `keep-alive`.
    pub(crate) connection_keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
}

/// Reads the framing and connection fields of a parsed head.
pub(crate) fn summarize(headers: &[httparse::Header<'_>]) -> FieldSummary {
    let mut content_length: Result<Option<u64>, HttpError> = Ok(None);
    let mut content_length_seen = false;
    let mut te_seen = false;
    let mut te_elements = 0usize;
    let mut chunked_count = 0usize;
    let mut last_is_chunked = false;
    let mut summary = FieldSummary {
        content_length: Ok(None),
        transfer_encoding: TransferEncoding::Absent,
        host_count: 0,
        connection_close: false,
        connection_keep_alive: false,
        expect_continue: false,
    };
    for header in headers {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 item 5 lets a recipient accept a list or repeated field of equal
            // values; we are stricter and refuse any repetition, as no honest client sends one.
            content_length = if content_length_seen {
                Err(HttpError::MultipleContentLength)
            } else {
                parse_content_length(header.value).map(Some)
            };
            content_length_seen = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            for coding in list_elements(header.value) {
                te_elements += 1;
                last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                if last_is_chunked {
                    chunked_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            summary.host_count += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in list_elements(header.value) {
                summary.connection_close |= option.eq_ignore_ascii_case(b"close");
                summary.connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            summary.expect_continue |= trim_ows(header.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    summary.content_length = content_length;
    summary.transfer_encoding = if !te_seen {
        TransferEncoding::Absent
    } else if te_elements == 0 || chunked_count > 1 {
        TransferEncoding::Invalid
    } else if !last_is_chunked {
        TransferEncoding::NotChunkedFinal
    } else if te_elements == 1 {
        TransferEncoding::Chunked
    } else {
        TransferEncoding::ChunkedAfterOthers
    };
    summary
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), no sign, no list, fits in `u64`.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let value = trim_ows(value);
    if value.contains(&b',') {
        return Err(HttpError::MultipleContentLength);
    }
    if value.is_empty() {
        return Err(HttpError::InvalidContentLength);
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(HttpError::InvalidContentLength);
        }
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u64::from(b - b'0')))
            .ok_or(HttpError::InvalidContentLength)
    })
}

/// True for a `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True for a byte allowed in a field value (VCHAR, SP, HTAB, obs-text).
pub(crate) fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], max: usize) -> Result<Option<usize>, HttpError> {
        HeadScanner::default().scan(input, max)
    }

    #[test]
    fn scanner_finds_the_empty_line() {
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", 100),
            Ok(Some(27))
        );
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n", 100), Ok(None));
    }

    #[test]
    fn scanner_resumes_byte_by_byte() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut scanner = HeadScanner::default();
        for end in 1..input.len() {
            assert_eq!(scanner.scan(&input[..end], 100), Ok(None), "at {end}");
        }
        assert_eq!(scanner.scan(input, 100), Ok(Some(input.len())));
    }

    #[test]
    fn scanner_refuses_bare_lf() {
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 100),
            Err(HttpError::BareLineFeed)
        );
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\r\n\n", 100),
            Err(HttpError::BareLineFeed)
        );
    }

    #[test]
    fn scanner_enforces_the_limit_exactly() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan_all(input, input.len()), Ok(Some(input.len())));
        assert_eq!(
            scan_all(input, input.len() - 1),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(scan_all(&input[..10], 10), Err(HttpError::HeadTooLarge));
        assert_eq!(scan_all(&input[..9], 10), Ok(None));
    }

    #[test]
    fn content_length_grammar() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(parse_content_length(b" 42 "), Ok(42));
        assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_content_length(b"18446744073709551616"),
            Err(HttpError::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"+1"),
            Err(HttpError::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"0x10"),
            Err(HttpError::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b""),
            Err(HttpError::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"1 2"),
            Err(HttpError::InvalidContentLength)
        );
        assert_eq!(
            parse_content_length(b"5, 5"),
            Err(HttpError::MultipleContentLength)
        );
    }

    fn te(values: &[&str]) -> TransferEncoding {
        let headers: Vec<_> = values
            .iter()
            .map(|v| httparse::Header {
                name: "Transfer-Encoding",
                value: v.as_bytes(),
            })
            .collect();
        summarize(&headers).transfer_encoding
    }

    #[test]
    fn transfer_encoding_classification() {
        assert_eq!(te(&[]), TransferEncoding::Absent);
        assert_eq!(te(&["chunked"]), TransferEncoding::Chunked);
        assert_eq!(te(&["CHUNKED"]), TransferEncoding::Chunked);
        assert_eq!(te(&["gzip, chunked"]), TransferEncoding::ChunkedAfterOthers);
        assert_eq!(
            te(&["gzip", "chunked"]),
            TransferEncoding::ChunkedAfterOthers
        );
        assert_eq!(te(&["chunked, gzip"]), TransferEncoding::NotChunkedFinal);
        assert_eq!(te(&["identity"]), TransferEncoding::NotChunkedFinal);
        assert_eq!(te(&["chunked", "chunked"]), TransferEncoding::Invalid);
        assert_eq!(te(&[""]), TransferEncoding::Invalid);
        assert_eq!(te(&["chunked;q=1"]), TransferEncoding::NotChunkedFinal);
    }

    #[test]
    fn version_classification() {
        assert!(names_other_http_version(b"GET / HTTP/2.0\r\n", true));
        assert!(!names_other_http_version(b"GET / HTTP/x\r\n", true));
        assert!(names_other_http_version(b"HTTP/1.2 200 OK\r\n", false));
    }
}
