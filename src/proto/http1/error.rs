//! The one error type of the HTTP/1.1 codec, and its mapping to HTTP status codes.
//!
//! Every variant is one distinct cause. [`HttpError::status`] gives the status a gateway answers
//! to a *device* whose request failed to decode; its `Display` text is short, contains no request
//! bytes, and is meant to be used verbatim as the body of that answer
//! (see [`super::write_error_response`]). This module does not decide what to do with the
//! connection: after any decode error the caller closes it (the framing can no longer be trusted).
//!
//! Errors raised while decoding an *upstream response* (from [`super::decode_response_head`] or
//! [`super::BodyDecoder`]) are the upstream's fault: the device is answered `502 Bad Gateway`
//! whatever [`HttpError::status`] says for the variant.

use std::fmt;

/// Why an HTTP/1.x message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpError {
    /// The head (start line and header fields) grew past `Limits::max_head_bytes` before it ended.
    HeadTooLarge,
    /// The head carries more header fields than `Limits::max_headers`.
    TooManyHeaders,
    /// A line of the head ends with a bare LF instead of CRLF (RFC 9112 §2.2: we do not accept
    /// bare LF, so that no two parsers can disagree on where a line ends).
    BareLineFeed,
    /// The request line is malformed (method, target or separators).
    MalformedRequestLine,
    /// The status line of a response is malformed, or its code is outside 100..=599.
    MalformedStatusLine,
    /// The HTTP version is syntactically valid but not HTTP/1.0 or HTTP/1.1.
    UnsupportedVersion,
    /// A header field name is empty, contains a non-token byte, or is followed by whitespace
    /// before the colon (RFC 9112 §5.1), or a line is an obsolete line folding (§5.2).
    InvalidHeaderName,
    /// A header field value contains a forbidden byte (a control character other than HTAB).
    InvalidHeaderValue,
    /// The request target is neither origin-form (`/path`), `*` for OPTIONS, nor absolute-form
    /// with the `http` scheme (RFC 9112 §3.2).
    InvalidRequestTarget,
    /// The request path is not in normal form: it has a dot segment, an empty segment, or an
    /// encoded dot, slash or backslash (see `check_request_path`). Refused so that no upstream
    /// can resolve it outside the destination's `base_path` (RFC 3986 §5.2.4).
    UnsafeRequestPath,
    /// An HTTP/1.1 request has no `Host` header field (RFC 9112 §3.2).
    MissingHost,
    /// A request has more than one `Host` header field (RFC 9112 §3.2).
    DuplicateHost,
    /// `Content-Length` is empty, not all digits, or does not fit in 64 bits (RFC 9112 §6.3).
    InvalidContentLength,
    /// More than one `Content-Length` field, or a comma-separated list, even of equal values.
    MultipleContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` are present: refused as a request
    /// smuggling attempt (RFC 9112 §6.3 item 3).
    ContentLengthWithTransferEncoding,
    /// `Transfer-Encoding` is present but `chunked` is missing, not the final coding, repeated,
    /// or the list is empty (RFC 9112 §6.3 item 4: the length cannot be determined).
    InvalidTransferEncoding,
    /// `chunked` is final but other transfer codings precede it; the gateway forwards bodies
    /// verbatim and does not implement them (RFC 9112 §6.1: 501 Not Implemented).
    UnsupportedTransferCoding,
    /// An HTTP/1.0 message carries `Transfer-Encoding`; RFC 9112 §6.1 says its framing must be
    /// treated as faulty.
    TransferEncodingInHttp10,
    /// The declared body length (or, for chunked bodies, its wire size) exceeds
    /// `Limits::max_body_bytes`.
    BodyTooLarge,
    /// A chunk-size line has no hex digits, a non-hex byte, or a size that overflows 64 bits.
    InvalidChunkSize,
    /// A chunk extension contains a forbidden byte, or whitespace is not followed by `;`.
    InvalidChunkExtension,
    /// A chunk-size line (size plus extensions) is longer than the codec's fixed bound.
    ChunkLineTooLong,
    /// A chunk-size line or chunk data is not terminated by CRLF (bare LF, bare CR, or missing).
    InvalidChunkLineEnding,
    /// A trailer field after the last chunk is malformed.
    InvalidTrailer,
    /// The trailer section is larger than its bound (`Limits::max_head_bytes`).
    TrailersTooLarge,
    /// The peer closed the connection before the message body was complete.
    UnexpectedEof,
}

impl HttpError {
    /// The status code to answer a device with when its request failed with this error.
    ///
    /// Malformed heads and bad framing are 400; an oversized head, too many fields or oversized
    /// trailers are 431 (RFC 6585 §5); an oversized body is 413; a version other than 1.0/1.1
    /// is 505. For a transfer coding we do not implement we follow RFC 9112 §6.1 ("SHOULD respond
    /// with 501"), but only when `chunked` is final; when `chunked` is absent or not final the
    /// length cannot be determined and §6.3 item 4 mandates 400. `MalformedStatusLine` only
    /// arises from upstream responses and maps to 502.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders | Self::TrailersTooLarge => 431,
            Self::BodyTooLarge => 413,
            Self::UnsupportedVersion => 505,
            Self::UnsupportedTransferCoding => 501,
            Self::MalformedStatusLine => 502,
            Self::BareLineFeed
            | Self::MalformedRequestLine
            | Self::InvalidHeaderName
            | Self::InvalidHeaderValue
            | Self::InvalidRequestTarget
            | Self::UnsafeRequestPath
            | Self::MissingHost
            | Self::DuplicateHost
            | Self::InvalidContentLength
            | Self::MultipleContentLength
            | Self::ContentLengthWithTransferEncoding
            | Self::InvalidTransferEncoding
            | Self::TransferEncodingInHttp10
            | Self::InvalidChunkSize
            | Self::InvalidChunkExtension
            | Self::ChunkLineTooLong
            | Self::InvalidChunkLineEnding
            | Self::InvalidTrailer
            | Self::UnexpectedEof => 400,
        }
    }

    /// A short, fixed, human-readable reason (no request bytes are ever included).
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::HeadTooLarge => "request head too large",
            Self::TooManyHeaders => "too many header fields",
            Self::BareLineFeed => "line not terminated by CRLF",
            Self::MalformedRequestLine => "malformed request line",
            Self::MalformedStatusLine => "malformed status line",
            Self::UnsupportedVersion => "HTTP version not supported",
            Self::InvalidHeaderName => "invalid header field name",
            Self::InvalidHeaderValue => "invalid header field value",
            Self::InvalidRequestTarget => "invalid request target",
            Self::UnsafeRequestPath => {
                "request path has dot or empty segments or encoded separators"
            }
            Self::MissingHost => "missing Host header field",
            Self::DuplicateHost => "duplicate Host header field",
            Self::InvalidContentLength => "invalid Content-Length",
            Self::MultipleContentLength => "multiple Content-Length values",
            Self::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding present"
            }
            Self::InvalidTransferEncoding => "Transfer-Encoding must end with chunked, once",
            Self::UnsupportedTransferCoding => "transfer coding not implemented",
            Self::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 message",
            Self::BodyTooLarge => "body too large",
            Self::InvalidChunkSize => "invalid chunk size",
            Self::InvalidChunkExtension => "invalid chunk extension",
            Self::ChunkLineTooLong => "chunk size line too long",
            Self::InvalidChunkLineEnding => "chunk line not terminated by CRLF",
            Self::InvalidTrailer => "invalid trailer field",
            Self::TrailersTooLarge => "trailer section too large",
            Self::UnexpectedEof => "connection closed before the body was complete",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests {
    use super::HttpError;

    #[test]
    fn status_mapping_follows_the_brief() {
        assert_eq!(HttpError::MalformedRequestLine.status(), 400);
        assert_eq!(HttpError::ContentLengthWithTransferEncoding.status(), 400);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
        assert_eq!(HttpError::UnsupportedTransferCoding.status(), 501);
        assert_eq!(HttpError::InvalidTransferEncoding.status(), 400);
    }

    #[test]
    fn display_is_the_fixed_reason() {
        assert_eq!(HttpError::BodyTooLarge.to_string(), "body too large");
    }
}
