//! Sans-IO HTTP/1.1 codec for the device-facing side of the gateway.
//!
//! What it does:
//! - [`RequestDecoder`] decodes device requests incrementally and returns each one *complete*
//!   (head plus body), because the gateway buffers a device request before forwarding it. Limits
//!   ([`Limits`]) are checked before bytes pile up: an unfinished head is refused as soon as it
//!   passes `max_head_bytes`, a `Content-Length` above `max_body_bytes` right after the head, a
//!   chunked body as soon as its declared sizes pass the limit.
//! - [`decode_response_head`] and [`BodyDecoder`] decode upstream responses, which are streamed
//!   back to the device piece by piece.
//! - [`write_upstream_request_head`], [`write_device_response_head`] and
//!   [`write_error_response`] write heads into a caller-owned `BytesMut`.
//!
//! Data flow and ownership:
//!
//! ```text
//!  recv buffer (BytesMut) ──RequestDecoder──► head: Bytes (split off when the head ends)
//!                                             body: Bytes (split off when the body ends)
//!  RequestHead ──write_upstream_request_head──► out: BytesMut ─┐
//!  Request.body ──forward_body (trailer fields filtered)────────┴─► upstream send queue
//! ```
//!
//! Bodies are never decoded or copied: a chunked body is forwarded as its wire bytes, framing
//! and extensions included, with its `Transfer-Encoding: chunked` header kept. Its trailer
//! section is forwarded minus the fields RFC 9110 §6.5.1 keeps out of trailers (framing,
//! routing, authentication, request modifiers, content format, hop-by-hop; see
//! [`Request::forward_body`]); the kept lines are still slices of the receive buffer. Response
//! trailers are relayed as received (to HTTP/1.1 devices; HTTP/1.0 devices get the body
//! de-chunked, without trailers). Every
//! field (`method`, `target`, header names and values, the body) is a [`Bytes`] slice of the
//! receive buffer.
//!
//! Strictness (RFC 9112; each rule cites its section where it is enforced): heads must use CRLF;
//! obs-fold and whitespace before a colon are refused (by `httparse`); `Content-Length` with
//! `Transfer-Encoding`, repeated `Content-Length`, any coding list other than exactly `chunked`,
//! and `Transfer-Encoding` in HTTP/1.0 are refused; chunk lines must end with CRLF. The request
//! target must be origin-form, `*` for `OPTIONS`, or absolute-form with the `http` scheme (a
//! device that was told the gateway is its proxy); for absolute-form only the path and query are
//! forwarded. Authority-form (`CONNECT`) and `https://` targets are refused. Paths that are not in
//! normal form (dot segments, empty segments, encoded `.`, `/` or `\`) are refused with 400, so
//! the path routed on is the path any upstream resolves (see [`check_request_path`]).
//!
//! What it does not do: no sockets, no clock, no timeouts (the caller times requests out); no
//! content codings (gzip bodies are opaque bytes); no de-chunking, so a chunked upstream response
//! is forwarded chunked even to an HTTP/1.0 device; no HTTP/2, no upgrades, no `CONNECT`; no
//! `417` for unknown expectations (they are ignored and `Expect` is dropped upstream).
//!
//! After any decode error the framing of the connection is lost: answer (requests) or drop
//! (responses) and close. The decoder stays failed until [`RequestDecoder::reset`].

use bytes::Bytes;

mod body;
mod chunked;
mod error;
mod fuzz;
mod head;
mod path;
mod request;
mod response;
mod trailers;
mod write;

pub use body::{BodyChunk, BodyDecoder, Dechunker, DEFAULT_MAX_TRAILER_BYTES};
pub use chunked::MAX_CHUNK_LINE_BYTES;
pub use error::HttpError;
pub use fuzz::fuzz_decode;
pub use path::check_request_path;
pub use request::{Request, RequestDecoder, RequestHead};
pub use response::{decode_response_head, ResponseHead};
pub use trailers::is_forbidden_trailer_field;
pub use write::{
    is_valid_base_path, is_valid_header_name, is_valid_header_value, is_valid_host, write_answer,
    write_device_response_head, write_error_response, write_upstream_request_head,
    write_upstream_request_head_replacing_body, ReplacedBody, CONTINUE_100,
};

/// Bounds on what a device may make the gateway buffer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (request line, header fields, final CRLF), in bytes. Also bounds the
    /// trailer section of a chunked request body. Default 8192.
    pub max_head_bytes: usize,
    /// Most header fields in one head. Default 100.
    pub max_headers: usize,
    /// Largest request body, in bytes: the declared `Content-Length`, or for a chunked body both
    /// the sum of its chunk sizes and its wire size before the trailers. Default 1 MiB.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The result of a decode call that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "Incomplete means: read more bytes and call again"]
pub enum Parsed<T> {
    /// A whole item was decoded and split off the buffer.
    Complete(T),
    /// More bytes are needed; incomplete input is never an error.
    Incomplete,
}

/// One header field line, as received: both are slices of the receive buffer. Values have
/// leading and trailing whitespace removed (by `httparse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name, with its original case (compare with `eq_ignore_ascii_case`).
    pub name: Bytes,
    /// Field value.
    pub value: Bytes,
}

impl Header {
    /// True when this field's name is `name`, compared case-insensitively.
    #[must_use]
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// Chunked transfer coding; the body ends with the last chunk and the trailer section.
    Chunked,
    /// Responses only: the body runs until the upstream closes the connection.
    UntilClose,
}

/// Turns `httparse` fields borrowed from `head` into owned slices of it.
fn owned_headers(head: &Bytes, parsed: &[httparse::Header<'_>]) -> Vec<Header> {
    parsed
        .iter()
        .map(|h| Header {
            name: head.slice_ref(h.name.as_bytes()),
            value: head.slice_ref(h.value),
        })
        .collect()
}
