//! Decoding of upstream response heads (the body is streamed by [`super::BodyDecoder`]).
//!
//! The function is stateless: each call rescans the buffered head from its start, which is at
//! most `Limits::max_head_bytes` per call. Upstreams send a head in one or two reads, so a scanner
//! kept between calls would not pay for itself here. It does not follow redirects, decode content
//! codings or interpret caching fields.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use super::head::{first_line, map_httparse_error, summarize, HeadScanner, TransferEncoding};
use super::{owned_headers, BodyLength, Header, HttpError, Limits, Parsed};

/// A parsed upstream response head. All byte fields are slices of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code, 100..=599.
    pub status: u16,
    /// Reason phrase as received (may be empty).
    pub reason: Bytes,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// All header fields, in order, duplicates kept.
    pub headers: Vec<Header>,
    /// How the body is delimited (RFC 9112 §6.3).
    pub body: BodyLength,
    /// Whether the upstream connection may be reused after this response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`, never when the body
    /// runs until close.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// True for informational (1xx) responses, which precede the final response.
    #[must_use]
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Decodes an upstream response head from the front of `buf` and splits it off.
///
/// `request_method_is_head` must say whether the request was `HEAD`: such responses have no body
/// whatever their headers say. 1xx, 204 and 304 responses have no body either; a response with
/// neither `Content-Length` nor `Transfer-Encoding` is delimited by the connection closing.
/// 1xx responses are returned like any other; the caller skips them and decodes again.
///
/// Response heads are bounded by `limits.max_head_bytes` and `limits.max_headers`;
/// `max_body_bytes` does not apply (response bodies are streamed, not buffered).
///
/// # Errors
/// The head is malformed or too large, or its framing is ambiguous (both `Content-Length` and
/// `Transfer-Encoding`, repeated or invalid `Content-Length`). Every such error is the
/// upstream's fault: answer the device 502 and close the upstream connection.
pub fn decode_response_head(
    buf: &mut BytesMut,
    limits: &Limits,
    request_method_is_head: bool,
) -> Result<Parsed<ResponseHead>, HttpError> {
    let Some(head_len) = HeadScanner::default().scan(buf, limits.max_head_bytes)? else {
        return Ok(Parsed::Incomplete);
    };
    let head_bytes = buf.split_to(head_len).freeze();
    parse_response_head(head_bytes, limits, request_method_is_head).map(Parsed::Complete)
}

fn parse_response_head(
    head_bytes: Bytes,
    limits: &Limits,
    request_method_is_head: bool,
) -> Result<ResponseHead, HttpError> {
    let mut slots = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); limits.max_headers];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, &head_bytes, &mut slots)
        .map_err(|e| map_httparse_error(e, first_line(&head_bytes), false))?;
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(HttpError::MalformedStatusLine);
    };
    if parsed != httparse::Status::Complete(head_bytes.len()) || !(100..=599).contains(&status) {
        return Err(HttpError::MalformedStatusLine);
    }
    let summary = summarize(response.headers);
    let body =
        if request_method_is_head || (100..200).contains(&status) || status == 204 || status == 304
        {
            // RFC 9112 §6.3 item 1.
            BodyLength::None
        } else {
            response_framing(version, summary.transfer_encoding, summary.content_length)?
        };
    let keep_alive = body != BodyLength::UntilClose
        && if version == 1 {
            !summary.connection_close
        } else {
            summary.connection_keep_alive && !summary.connection_close
        };
    Ok(ResponseHead {
        status,
        reason: response
            .reason
            .map_or_else(Bytes::new, |r| head_bytes.slice_ref(r.as_bytes())),
        minor_version: version,
        headers: owned_headers(&head_bytes, response.headers),
        body,
        keep_alive,
    })
}

/// RFC 9112 §6.1 and §6.3 items 3-8 for responses.
fn response_framing(
    version: u8,
    transfer_encoding: TransferEncoding,
    content_length: Result<Option<u64>, HttpError>,
) -> Result<BodyLength, HttpError> {
    if transfer_encoding == TransferEncoding::Absent {
        // Item 5: an invalid Content-Length is unrecoverable (a proxy answers 502). Item 8:
        // neither field -> the body runs until the connection closes.
        return Ok(content_length?.map_or(BodyLength::UntilClose, BodyLength::Length));
    }
    if version == 0 {
        // §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        return Err(HttpError::TransferEncodingInHttp10);
    }
    if !matches!(content_length, Ok(None)) {
        // Item 3: "ought to be handled as an error"; we do, rather than strip Content-Length.
        return Err(HttpError::ContentLengthWithTransferEncoding);
    }
    match transfer_encoding {
        // The device decodes any content coding before chunked; we only need the framing.
        TransferEncoding::Chunked | TransferEncoding::ChunkedAfterOthers => Ok(BodyLength::Chunked),
        // Item 4: for a response, chunked not final -> read until the connection closes.
        TransferEncoding::NotChunkedFinal => Ok(BodyLength::UntilClose),
        TransferEncoding::Invalid | TransferEncoding::Absent => {
            Err(HttpError::InvalidTransferEncoding)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(input: &[u8], is_head: bool) -> Result<Parsed<ResponseHead>, HttpError> {
        decode_response_head(&mut BytesMut::from(input), &Limits::default(), is_head)
    }

    fn complete(input: &[u8], is_head: bool) -> ResponseHead {
        match head_of(input, is_head) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn content_length_response_leaves_the_body_in_the_buffer() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"[..]);
        let Ok(Parsed::Complete(head)) = decode_response_head(&mut buf, &Limits::default(), false)
        else {
            panic!("head must decode");
        };
        assert_eq!(
            (head.status, &head.reason[..], head.minor_version),
            (201, &b"Created"[..], 1)
        );
        assert_eq!(head.body, BodyLength::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn bodiless_statuses_and_head_requests() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(complete(cl, true).body, BodyLength::None);
        assert_eq!(
            complete(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                false
            )
            .body,
            BodyLength::None
        );
        assert_eq!(
            complete(b"HTTP/1.1 304 Not Modified\r\n\r\n", false).body,
            BodyLength::None
        );
        let informational = complete(b"HTTP/1.1 100 Continue\r\n\r\n", false);
        assert!(informational.is_informational());
        assert_eq!(informational.body, BodyLength::None);
    }

    #[test]
    fn framing_choices() {
        let chunked = complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.body, BodyLength::Chunked);
        let until_close = complete(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(until_close.body, BodyLength::UntilClose);
        assert!(!until_close.keep_alive);
        let not_final = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(not_final.body, BodyLength::UntilClose);
        let old = complete(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            false,
        );
        assert!(old.keep_alive);
        let close = complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(!close.keep_alive);
    }

    #[test]
    fn ambiguous_or_malformed_responses_are_errors() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                MultipleContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                TransferEncodingInHttp10,
            ),
            (b"HTTP/1.1 600 Weird\r\n\r\n", MalformedStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", MalformedStatusLine),
            (b"HTTP/2.0 200 OK\r\n\r\n", UnsupportedVersion),
            (b"HTTP/1.1 200 OK\nA: b\r\n\r\n", BareLineFeed),
        ];
        for (input, expected) in cases {
            assert_eq!(
                head_of(input, false),
                Err(*expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(MalformedStatusLine.status(), 502);
    }

    #[test]
    fn incomplete_and_oversized_heads() {
        assert_eq!(
            head_of(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(Parsed::Incomplete)
        );
        let limits = Limits {
            max_head_bytes: 16,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX"[..]);
        assert_eq!(
            decode_response_head(&mut buf, &limits, false),
            Err(HttpError::HeadTooLarge)
        );
    }
}
