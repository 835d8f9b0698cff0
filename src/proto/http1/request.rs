//! Incremental decoding of device requests into complete [`Request`]s (head plus verbatim body).
//!
//! The decoder keeps its progress between calls: the end-of-head scan position while the head is
//! incomplete, then the parsed head and the body scan position. No byte is scanned twice. It does
//! not decide routing or answer anything; it only reports what arrived or why it is refused.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};

use super::chunked::ChunkedScanner;
use super::head::{first_line, map_httparse_error, summarize, HeadScanner, TransferEncoding};
use super::path::check_request_path;
use super::trailers::filter_trailer_section;
use super::{owned_headers, BodyLength, Header, HttpError, Limits, Parsed};

/// Header slots kept on the stack; a larger `Limits::max_headers` uses a heap buffer.
const STACK_HEADER_SLOTS: usize = 128;

/// A parsed request head. All byte fields are slices of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, case preserved (methods are case-sensitive).
    pub method: Bytes,
    /// Request target as received: origin-form, `*`, or `http://` absolute-form.
    pub target: Bytes,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// All header fields, in order, duplicates kept.
    pub headers: Vec<Header>,
    /// How the body is delimited: `None`, `Length` or `Chunked` (never `UntilClose`).
    pub body: BodyLength,
    /// Whether the device wants the connection kept open after this request (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// HTTP/1.1 request with `Expect: 100-continue` (ignored for HTTP/1.0, RFC 9110 §10.1.1).
    pub expect_continue: bool,
}

impl RequestHead {
    /// The first value of the header field `name` (case-insensitive), if any.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.is(name)).map(|h| &h.value)
    }

    /// The path component of the target, without the query: what routes match on, and what is
    /// forwarded after `base_path` (followed by the query). `/` for an absolute-form target
    /// without a path, `*` for asterisk-form. The decoder has checked it with
    /// [`check_request_path`](super::check_request_path).
    #[must_use]
    pub fn path(&self) -> &[u8] {
        let (prefix, rest) = self.origin_form_parts();
        if !prefix.is_empty() {
            return prefix;
        }
        match rest.iter().position(|&b| b == b'?') {
            Some(query) => &rest[..query],
            None => rest,
        }
    }

    /// The target to forward: origin-form as received, or the path and query of an absolute-form
    /// target. Returns `(prefix, rest)` where `prefix` is `"/"` when the absolute-form target has
    /// no path (`http://host` or `http://host?q`), else empty.
    pub(crate) fn origin_form_parts(&self) -> (&'static [u8], &[u8]) {
        let target = &self.target[..];
        if !is_http_absolute_form(target) {
            return ("".as_bytes(), target);
        }
        let after_scheme = &target[HTTP_SCHEME.len()..];
        match after_scheme.iter().position(|&b| b == b'/' || b == b'?') {
            Some(start) if after_scheme[start] == b'/' => (b"", &after_scheme[start..]),
            Some(start) => (b"/", &after_scheme[start..]),
            None => (b"/", b""),
        }
    }
}

/// A complete device request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The parsed head.
    pub head: RequestHead,
    /// The body's raw wire bytes, verbatim (for chunked bodies: chunk framing, extensions and
    /// trailers included). Empty when there is no body. Forward it with
    /// [`forward_body`](Self::forward_body), which drops forbidden trailer fields.
    pub body: Bytes,
    /// Offset in `body` where the trailer section of a chunked body starts (its field lines and
    /// the final CRLF); `body.len()` when the body is not chunked.
    trailer_start: usize,
}

impl Request {
    /// The trailer section of a chunked body: its field lines and the final CRLF, as received
    /// (`"\r\n"` alone when there are no trailer fields). Empty for other bodies.
    #[must_use]
    pub fn trailer_section(&self) -> &[u8] {
        &self.body[self.trailer_start..]
    }

    /// Appends the body to send upstream to `out`, as slices of [`body`](Self::body), and
    /// returns how many trailer fields were dropped.
    ///
    /// The body goes verbatim, except that trailer fields which must not appear in a trailer
    /// section (RFC 9110 §6.5.1; see [`is_forbidden_trailer_field`](super::is_forbidden_trailer_field))
    /// or whose name is in `extra_denied` (the header names the gateway sets itself) are left
    /// out. The chunk framing and data are never touched. Without trailer fields this is one
    /// slice, the whole body.
    pub fn forward_body<'a>(&'a self, extra_denied: &[&str], out: &mut Vec<&'a [u8]>) -> usize {
        let section = self.trailer_section();
        if section.len() <= 2 {
            if !self.body.is_empty() {
                out.push(&self.body);
            }
            return 0;
        }
        out.push(&self.body[..self.trailer_start]);
        filter_trailer_section(section, extra_denied, out)
    }
}

#[derive(Debug)]
enum State {
    /// Looking for the end of the head.
    Head(HeadScanner),
    /// Head parsed, waiting for the body.
    Body {
        head: RequestHead,
        progress: BodyProgress,
    },
    /// A previous call failed; the connection's framing is lost.
    Failed(HttpError),
}

#[derive(Debug)]
enum BodyProgress {
    /// Waiting for this many bytes.
    Length(u64),
    /// Scanning a chunked body; `scanned` bytes of the buffer belong to it so far.
    Chunked {
        scanner: ChunkedScanner,
        scanned: usize,
    },
}

/// Incremental, stateful request decoder.
///
/// Call [`decode`](Self::decode) each time bytes are appended to the buffer. The head is split
/// off the front of the buffer (`split_to(..).freeze()`) as soon as it is complete, so that
/// [`head`](Self::head) can lend it out (for `100 Continue`) while the body is still arriving;
/// the body is split off when it is complete. Bytes after the request (a pipelined request) stay
/// in the buffer for the next call. After an error the buffer's contents are unspecified and
/// every call returns the same error until [`reset`](Self::reset).
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
}

impl RequestDecoder {
    /// A decoder waiting for the first request.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Head(HeadScanner::default()),
        }
    }

    /// Decodes the next request from the front of `buf`.
    ///
    /// # Errors
    /// The request is malformed, smuggles framing, or exceeds a limit; see [`HttpError`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Parsed<Request>, HttpError> {
        let result = self.decode_inner(buf);
        if let Err(error) = result {
            self.state = State::Failed(error);
        }
        result
    }

    /// The parsed head while its body is still arriving, so the caller can send
    /// [`CONTINUE_100`](super::CONTINUE_100); `None` otherwise.
    #[must_use]
    pub fn head(&self) -> Option<&RequestHead> {
        match &self.state {
            State::Body { head, .. } => Some(head),
            State::Head(_) | State::Failed(_) => None,
        }
    }

    /// Forgets any partial request and any error; the next call starts a new request at the
    /// front of the buffer it is given.
    pub fn reset(&mut self) {
        self.state = State::Head(HeadScanner::default());
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Parsed<Request>, HttpError> {
        if let State::Failed(error) = self.state {
            return Err(error);
        }
        if let State::Head(scanner) = &mut self.state {
            if scanner.is_fresh() {
                // RFC 9112 §2.2: a server SHOULD ignore empty lines received before the
                // request line. Consuming them does not buffer anything.
                while buf.starts_with(b"\r\n") {
                    buf.advance(2);
                }
                if buf.is_empty() || buf[..] == b"\r"[..] {
                    return Ok(Parsed::Incomplete);
                }
            }
            let Some(head_len) = scanner.scan(buf, self.limits.max_head_bytes)? else {
                return Ok(Parsed::Incomplete);
            };
            let head = parse_request_head(buf.split_to(head_len).freeze(), &self.limits)?;
            let progress = match head.body {
                BodyLength::Length(len) if len > self.limits.max_body_bytes => {
                    // Refused right after the head: the caller answers 413 without reading it.
                    return Err(HttpError::BodyTooLarge);
                }
                BodyLength::Length(len) => BodyProgress::Length(len),
                BodyLength::Chunked => BodyProgress::Chunked {
                    scanner: ChunkedScanner::new(
                        self.limits.max_body_bytes,
                        self.limits.max_head_bytes,
                    ),
                    scanned: 0,
                },
                BodyLength::None | BodyLength::UntilClose => BodyProgress::Length(0),
            };
            self.state = State::Body { head, progress };
        }
        let State::Body { progress, .. } = &mut self.state else {
            return Ok(Parsed::Incomplete);
        };
        let (body_len, trailer_start) = match progress {
            BodyProgress::Length(len) => match usize::try_from(*len) {
                Ok(len) if len <= buf.len() => (len, len),
                _ => return Ok(Parsed::Incomplete),
            },
            BodyProgress::Chunked { scanner, scanned } => {
                *scanned += scanner.advance(&buf[*scanned..])?;
                if !scanner.is_done() {
                    return Ok(Parsed::Incomplete);
                }
                // A finished chunked body has seen its last chunk; the section starts inside it.
                let start = scanner
                    .trailer_start()
                    .and_then(|s| usize::try_from(s).ok())
                    .map_or(*scanned, |s| s.min(*scanned));
                (*scanned, start)
            }
        };
        let body = buf.split_to(body_len).freeze();
        match std::mem::replace(&mut self.state, State::Head(HeadScanner::default())) {
            State::Body { head, .. } => Ok(Parsed::Complete(Request {
                head,
                body,
                trailer_start,
            })),
            State::Head(_) | State::Failed(_) => Ok(Parsed::Incomplete),
        }
    }
}

/// Parses a complete head (ending with the empty line) and checks its framing.
fn parse_request_head(head_bytes: Bytes, limits: &Limits) -> Result<RequestHead, HttpError> {
    let mut stack_slots =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADER_SLOTS];
    let mut heap_slots;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] =
        if limits.max_headers <= STACK_HEADER_SLOTS {
            &mut stack_slots[..limits.max_headers]
        } else {
            heap_slots = vec![MaybeUninit::uninit(); limits.max_headers];
            &mut heap_slots
        };
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut request, &head_bytes, slots)
        .map_err(|e| map_httparse_error(e, first_line(&head_bytes), true))?;
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::MalformedRequestLine);
    };
    if parsed != httparse::Status::Complete(head_bytes.len()) {
        return Err(HttpError::MalformedRequestLine);
    }
    check_target(method.as_bytes(), target.as_bytes())?;
    let summary = summarize(request.headers);
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, or with more than one.
    if summary.host_count > 1 {
        return Err(HttpError::DuplicateHost);
    }
    if summary.host_count == 0 && version == 1 {
        return Err(HttpError::MissingHost);
    }
    let body = request_framing(version, summary.transfer_encoding, summary.content_length)?;
    let keep_alive = if version == 1 {
        !summary.connection_close
    } else {
        summary.connection_keep_alive && !summary.connection_close
    };
    let head = RequestHead {
        method: head_bytes.slice_ref(method.as_bytes()),
        target: head_bytes.slice_ref(target.as_bytes()),
        minor_version: version,
        headers: owned_headers(&head_bytes, request.headers),
        body,
        keep_alive,
        expect_continue: version == 1 && summary.expect_continue,
    };
    // After the framing checks, so that a request both smuggling and traversing reports the
    // framing error.
    check_request_path(head.path())?;
    Ok(head)
}

/// RFC 9112 §6.1 and §6.3 for requests.
fn request_framing(
    version: u8,
    transfer_encoding: TransferEncoding,
    content_length: Result<Option<u64>, HttpError>,
) -> Result<BodyLength, HttpError> {
    if transfer_encoding == TransferEncoding::Absent {
        // §6.3 items 5-7: a valid Content-Length, else no body.
        return Ok(content_length?.map_or(BodyLength::None, BodyLength::Length));
    }
    // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    if version == 0 {
        return Err(HttpError::TransferEncodingInHttp10);
    }
    // §6.3 item 3: both fields is a smuggling attempt; we refuse rather than let TE win.
    if !matches!(content_length, Ok(None)) {
        return Err(HttpError::ContentLengthWithTransferEncoding);
    }
    match transfer_encoding {
        TransferEncoding::Chunked => Ok(BodyLength::Chunked),
        // §6.1: codings we do not implement -> 501.
        TransferEncoding::ChunkedAfterOthers => Err(HttpError::UnsupportedTransferCoding),
        // §6.3 item 4: chunked not final -> the length cannot be determined -> 400.
        TransferEncoding::NotChunkedFinal
        | TransferEncoding::Invalid
        | TransferEncoding::Absent => Err(HttpError::InvalidTransferEncoding),
    }
}

const HTTP_SCHEME: &[u8] = b"http://";

fn is_http_absolute_form(target: &[u8]) -> bool {
    target.len() > HTTP_SCHEME.len()
        && target[..HTTP_SCHEME.len()].eq_ignore_ascii_case(HTTP_SCHEME)
        && !matches!(target[HTTP_SCHEME.len()], b'/' | b'?' | b'#')
}

/// RFC 9112 §3.2: origin-form, asterisk-form (OPTIONS only), or absolute-form (`http` only).
fn check_target(method: &[u8], target: &[u8]) -> Result<(), HttpError> {
    let valid = match target {
        [b'/', ..] => true,
        b"*" => method == b"OPTIONS",
        _ => is_http_absolute_form(target),
    };
    if valid && !target.contains(&b'#') {
        Ok(())
    } else {
        Err(HttpError::InvalidRequestTarget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    /// Decodes every request in `input` fed at once; returns them and how decoding stopped.
    fn decode_all(input: &[u8], limits: Limits) -> (Vec<Request>, Result<(), HttpError>, usize) {
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut requests = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Parsed::Complete(r)) => requests.push(r),
                Ok(Parsed::Incomplete) => return (requests, Ok(()), buf.len()),
                Err(e) => return (requests, Err(e), buf.len()),
            }
        }
    }

    /// Same, feeding one byte at a time.
    fn decode_bytewise(input: &[u8], limits: Limits) -> (Vec<Request>, Result<(), HttpError>) {
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        for &byte in input {
            buf.extend_from_slice(&[byte]);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Parsed::Complete(r)) => requests.push(r),
                    Ok(Parsed::Incomplete) => break,
                    Err(e) => return (requests, Err(e)),
                }
            }
        }
        (requests, Ok(()))
    }

    fn one(input: &[u8]) -> Result<Request, HttpError> {
        let (mut requests, outcome, _) = decode_all(input, limits());
        outcome?;
        assert_eq!(requests.len(), 1, "expected exactly one request");
        Ok(requests.remove(0))
    }

    fn error_of(input: &[u8]) -> HttpError {
        let (_, outcome, _) = decode_all(input, limits());
        let error = outcome.expect_err("input must be refused");
        // The same error byte by byte.
        assert_eq!(decode_bytewise(input, limits()).1, Err(error));
        error
    }

    const GET: &[u8] = b"GET /status?x=1 HTTP/1.1\r\nHost: gw\r\nUser-Agent: dev/1\r\n\r\n";
    const POST: &[u8] = b"POST /telemetry HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc\r\nX-T: 1\r\n\r\n";

    #[test]
    fn get_without_body() {
        let request = one(GET).unwrap();
        assert_eq!(&request.head.method[..], b"GET");
        assert_eq!(&request.head.target[..], b"/status?x=1");
        assert_eq!(request.head.minor_version, 1);
        assert_eq!(request.head.body, BodyLength::None);
        assert!(request.head.keep_alive);
        assert!(!request.head.expect_continue);
        assert_eq!(request.head.headers.len(), 2);
        assert_eq!(
            request.head.header("user-agent").map(|v| &v[..]),
            Some(&b"dev/1"[..])
        );
        assert!(request.body.is_empty());
    }

    #[test]
    fn post_with_content_length_is_zero_copy() {
        let mut buf = BytesMut::from(POST);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut decoder = RequestDecoder::new(limits());
        let Ok(Parsed::Complete(request)) = decoder.decode(&mut buf) else {
            panic!("POST must decode");
        };
        assert_eq!(&request.body[..], b"hello");
        assert_eq!(request.head.body, BodyLength::Length(5));
        for bytes in [
            &request.body,
            &request.head.target,
            &request.head.headers[1].value,
        ] {
            let start = bytes.as_ptr() as usize;
            assert!(
                range.contains(&start) && start + bytes.len() <= range.end,
                "copied"
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn chunked_body_is_kept_verbatim_with_trailers() {
        let request = one(CHUNKED).unwrap();
        assert_eq!(request.head.body, BodyLength::Chunked);
        let head_len = CHUNKED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&request.body[..], &CHUNKED[head_len..]);
    }

    #[test]
    fn forward_body_drops_forbidden_trailer_fields_only() {
        let request = one(CHUNKED).unwrap();
        assert_eq!(
            request.trailer_section(),
            b"Checksum: abc\r\nX-T: 1\r\n\r\n"
        );
        let mut parts = Vec::new();
        assert_eq!(request.forward_body(&[], &mut parts), 0);
        assert_eq!(parts.concat(), &request.body[..]);
        // Denied by name: the kept lines and the final CRLF follow the chunks.
        let mut parts = Vec::new();
        assert_eq!(request.forward_body(&["x-t"], &mut parts), 1);
        assert_eq!(
            parts.concat(),
            b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc\r\n\r\n"
        );

        let smuggler = one(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              1\r\nx\r\n0\r\nContent-Length: 9\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\nX-Ok: 1\r\n\r\n",
        )
        .unwrap();
        let mut parts = Vec::new();
        assert_eq!(smuggler.forward_body(&[], &mut parts), 4);
        assert_eq!(parts.concat(), b"1\r\nx\r\n0\r\nX-Ok: 1\r\n\r\n");
        // Zero copy: every part is a slice of the received body.
        let range = smuggler.body.as_ptr_range();
        assert!(parts.iter().all(|p| range.contains(&p.as_ptr())));

        // Without trailer fields, or without a chunked body: the body, whole, once.
        for input in [
            POST,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let request = one(input).unwrap();
            let mut parts = Vec::new();
            assert_eq!(request.forward_body(&[], &mut parts), 0);
            assert_eq!(parts, vec![&request.body[..]]);
        }
        let get = one(GET).unwrap();
        let mut parts = Vec::new();
        assert_eq!(get.forward_body(&[], &mut parts), 0);
        assert!(parts.is_empty());
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let mut input = Vec::new();
        for part in [GET, POST, CHUNKED, GET] {
            input.extend_from_slice(part);
        }
        input.extend_from_slice(b"GET /partial HTTP/1.1\r\nHo");
        let (requests, outcome, left) = decode_all(&input, limits());
        assert_eq!(outcome, Ok(()));
        assert_eq!(requests.len(), 4);
        assert_eq!(&requests[1].body[..], b"hello");
        assert_eq!(&requests[3].head.target[..], b"/status?x=1");
        assert_eq!(left, b"GET /partial HTTP/1.1\r\nHo".len());
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut pipelined = Vec::new();
        for part in [POST, CHUNKED, GET] {
            pipelined.extend_from_slice(part);
        }
        let inputs: Vec<&[u8]> = vec![
            GET,
            POST,
            CHUNKED,
            &pipelined,
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        ];
        for input in inputs {
            let (whole, whole_outcome, _) = decode_all(input, limits());
            let (pieces, pieces_outcome) = decode_bytewise(input, limits());
            assert_eq!(whole, pieces, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(whole_outcome, pieces_outcome);
        }
    }

    #[test]
    fn leading_empty_lines_are_ignored() {
        let request = one(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(&request.head.target[..], b"/");
    }

    #[test]
    fn framing_smuggling_cases_are_refused() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", MultipleContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", MultipleContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", InvalidTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferCoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", InvalidChunkLineEnding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", InvalidChunkLineEnding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", InvalidChunkLineEnding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n", InvalidChunkLineEnding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", InvalidChunkSize),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", InvalidChunkExtension),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00\r\nhello\r\n0\r\n\r\n", InvalidChunkExtension),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", BodyTooLarge),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer: x\r\n\r\n", InvalidTrailer),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: x\r\n folded\r\n\r\n", InvalidTrailer),
        ];
        for (input, expected) in cases {
            assert_eq!(
                error_of(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn head_syntax_cases_are_refused() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
                InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
                InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
                InvalidHeaderValue,
            ),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", BareLineFeed),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", BareLineFeed),
            (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                DuplicateHost,
            ),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", UnsupportedVersion),
            (b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", MalformedRequestLine),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", MalformedRequestLine),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", MalformedRequestLine),
            (
                b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                InvalidRequestTarget,
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
                InvalidRequestTarget,
            ),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", InvalidRequestTarget),
            (
                b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
                InvalidRequestTarget,
            ),
            (
                b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n",
                InvalidRequestTarget,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                error_of(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn accepted_target_forms() {
        let options = one(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(&options.head.target[..], b"*");
        let absolute = one(b"GET HTTP://gw:8080/p?q HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        assert_eq!(absolute.head.origin_form_parts(), (&b""[..], &b"/p?q"[..]));
        let bare = one(b"GET http://gw HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        assert_eq!(bare.head.origin_form_parts(), (&b"/"[..], &b""[..]));
        let query = one(b"GET http://gw?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        assert_eq!(query.head.origin_form_parts(), (&b"/"[..], &b"?q=1"[..]));
    }

    #[test]
    fn paths_not_in_normal_form_are_refused() {
        for target in [
            &b"/../b"[..],
            b"/a/%2e%2E/b",
            b"/a//b",
            b"/a/..;/b",
            b"/a%2f..",
            b"http://gw/a/../b?q",
            b"http://gw//b",
        ] {
            let mut input = b"GET ".to_vec();
            input.extend_from_slice(target);
            input.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                error_of(&input),
                HttpError::UnsafeRequestPath,
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
        assert_eq!(HttpError::UnsafeRequestPath.status(), 400);
        // Only the path is checked: the query may hold anything.
        let query = one(b"GET /a?next=/../b//c HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(query.head.path(), b"/a");
    }

    #[test]
    fn path_is_the_target_path_without_the_query() {
        let path = |input: &[u8]| one(input).unwrap().head.path().to_vec();
        assert_eq!(path(b"GET /a/b/?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"), b"/a/b/");
        assert_eq!(path(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"), b"/a");
        assert_eq!(
            path(b"GET http://gw/a?q HTTP/1.1\r\nHost: a\r\n\r\n"),
            b"/a"
        );
        assert_eq!(path(b"GET http://gw?q HTTP/1.1\r\nHost: a\r\n\r\n"), b"/");
        assert_eq!(path(b"GET http://gw HTTP/1.1\r\nHost: a\r\n\r\n"), b"/");
        assert_eq!(path(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), b"*");
    }

    #[test]
    fn transfer_encoding_is_case_insensitive() {
        let request =
            one(b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  ChUnKeD \r\n\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(request.head.body, BodyLength::Chunked);
        assert_eq!(&request.body[..], b"0\r\n\r\n");
    }

    #[test]
    fn chunk_extensions_with_whitespace_before_semicolon() {
        let request = one(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            3 ;a=\"b c\"\r\nabc\r\n0;last\r\n\r\n",
        )
        .unwrap();
        assert!(request.body.ends_with(b"0;last\r\n\r\n"));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |input: &[u8]| one(input).unwrap().head.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn expect_continue_exposes_the_head_before_the_body() {
        let head =
            b"POST /t HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        let mut decoder = RequestDecoder::new(limits());
        let mut buf = BytesMut::from(&head[..head.len() - 1]);
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
        assert!(decoder.head().is_none());
        buf.extend_from_slice(b"\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
        assert!(decoder.head().is_some_and(|h| h.expect_continue));
        buf.extend_from_slice(b"abc");
        let Ok(Parsed::Complete(request)) = decoder.decode(&mut buf) else {
            panic!("body must complete");
        };
        assert_eq!(&request.body[..], b"abc");
        assert!(decoder.head().is_none());
        // Ignored for HTTP/1.0 (RFC 9110 §10.1.1).
        let old =
            one(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!old.head.expect_continue);
    }

    #[test]
    fn unfinished_head_is_refused_at_the_limit() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: "[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
        buf.extend_from_slice(&[b'a'; 30]);
        // 63 bytes: a 64-byte head could still end here.
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
        buf.extend_from_slice(b"a");
        assert_eq!(decoder.decode(&mut buf), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        // Sticky until reset.
        assert_eq!(
            decoder.decode(&mut BytesMut::from(GET)),
            Err(HttpError::HeadTooLarge)
        );
        decoder.reset();
        assert!(matches!(
            decoder.decode(&mut BytesMut::from(GET)),
            Ok(Parsed::Complete(_))
        ));
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let (_, outcome, _) =
            decode_all(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", limits);
        assert_eq!(outcome, Err(HttpError::TooManyHeaders));
        let heap = Limits {
            max_headers: STACK_HEADER_SLOTS + 10,
            ..Limits::default()
        };
        let (requests, outcome, _) = decode_all(GET, heap);
        assert_eq!((requests.len(), outcome), (1, Ok(())));
    }

    #[test]
    fn content_length_over_the_limit_is_refused_right_after_the_head() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let mut decoder = RequestDecoder::new(limits);
        let mut buf =
            BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(HttpError::BodyTooLarge));
        let mut buf =
            BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"[..]);
        let mut decoder = RequestDecoder::new(limits);
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
    }

    #[test]
    fn chunk_sizes_over_the_limit_are_refused_before_the_data() {
        let limits = Limits {
            max_body_bytes: 100,
            ..Limits::default()
        };
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(&head[..]);
        buf.extend_from_slice(b"32\r\n");
        buf.extend_from_slice(&[b'x'; 50]);
        buf.extend_from_slice(b"\r\n3");
        assert_eq!(decoder.decode(&mut buf), Ok(Parsed::Incomplete));
        // 50 + 0x33 = 101 > 100, known from the size digits alone.
        buf.extend_from_slice(b"3");
        assert_eq!(decoder.decode(&mut buf), Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn chunked_wire_size_is_bounded_too() {
        let limits = Limits {
            max_body_bytes: 64,
            ..Limits::default()
        };
        let mut input =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            input.extend_from_slice(b"1;padding-padding\r\nx\r\n");
        }
        assert_eq!(decode_all(&input, limits).1, Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn chunk_size_overflow_is_refused_even_without_a_body_limit() {
        let limits = Limits {
            max_body_bytes: u64::MAX,
            ..Limits::default()
        };
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n";
        assert_eq!(
            decode_all(input, limits).1,
            Err(HttpError::InvalidChunkSize)
        );
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000000001\r\n";
        assert_eq!(decode_all(input, limits).1, Ok(()));
    }

    #[test]
    fn chunk_line_and_trailers_are_bounded() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut long_ext = head.to_vec();
        long_ext.extend_from_slice(b"1;");
        long_ext.extend(std::iter::repeat_n(
            b'a',
            super::super::MAX_CHUNK_LINE_BYTES,
        ));
        assert_eq!(
            decode_all(&long_ext, limits()).1,
            Err(HttpError::ChunkLineTooLong)
        );

        let small = Limits {
            max_head_bytes: 80,
            ..Limits::default()
        };
        let mut trailers = head.to_vec();
        trailers.extend_from_slice(b"0\r\n");
        trailers.extend_from_slice(b"X-Trailer: ");
        trailers.extend_from_slice(&[b'v'; 80]);
        assert_eq!(
            decode_all(&trailers, small).1,
            Err(HttpError::TrailersTooLarge)
        );
    }
}
