//! Writing heads: the request head sent upstream, the response head sent to the device, and the
//! gateway's own small error responses.
//!
//! Everything is written straight into a caller-owned `BytesMut`; nothing else is allocated.
//! Bodies are not written here: the caller queues the body `Bytes` after the head.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) are dropped in both directions: `Connection`,
//! `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//! `Trailer`, `Upgrade`, and every field named in `Connection` — except `Content-Length` and
//! `Transfer-Encoding`: naming a framing field in `Connection` must not make the gateway strip
//! it, or the next hop would see a different body length (a smuggling vector).
//!
//! `host`, `base_path` and extra header names and values come from configuration and identity
//! data; validate them when the configuration is loaded with [`is_valid_host`],
//! [`is_valid_base_path`], [`is_valid_header_name`] and [`is_valid_header_value`]. As a last line
//! of defence the writers never let such a value split the head: bytes that could end a line or
//! the request line are dropped from `host`/`base_path`, and invalid extra headers are skipped.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::head::{is_field_value_byte, is_tchar, list_elements};
use super::{BodyLength, Header, RequestHead, ResponseHead};

/// The interim response the gateway sends itself when a device asked for `100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Writes the request head to send upstream.
///
/// - request line: the device's method, `base_path` followed by the target's path and query
///   (a trailing `/` of `base_path` is merged with the target's leading `/`; an absolute-form
///   target contributes only its path and query; `*` becomes `base_path`, or stays `*` when
///   `base_path` is empty), and `HTTP/1.1`;
/// - `Host: host` first, replacing the device's `Host`;
/// - the device's fields in order, minus hop-by-hop ones, `Expect` (the gateway answers
///   `100-continue` itself), `X-Forwarded-For` (merged below), any field whose name is also in
///   `extra_headers`, and every `X-Simgate-*` field (`IDENTITY_HEADER_PREFIX`: the names
///   simgate attaches SIM identity under, so a device can claim no SIM's identity, whichever
///   fields its group attaches); `Content-Length` and `Transfer-Encoding: chunked` are kept, as
///   the body is forwarded verbatim;
/// - `X-Forwarded-For`: the device's values joined with `", "`, then `client_ip`;
/// - `extra_headers` in order (those with an invalid name or value are skipped).
///
/// Returns how many `X-Simgate-*` fields of the device were left out.
pub fn write_upstream_request_head(
    out: &mut BytesMut,
    head: &RequestHead,
    host: &str,
    base_path: &str,
    client_ip: IpAddr,
    extra_headers: &[(&str, &[u8])],
) -> usize {
    write_head(out, head, host, base_path, client_ip, extra_headers, None)
}

/// The body simgate sends upstream in place of the device's (an envelope), for
/// [`write_upstream_request_head_replacing_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacedBody<'a> {
    /// The new body's `Content-Type`.
    pub content_type: &'a str,
    /// The new body's length in bytes (sent as `Content-Length`).
    pub length: u64,
}

/// [`write_upstream_request_head`] for a request whose body simgate replaces (sent whole, with
/// `Content-Length`): the device's framing and representation fields — `Content-Length`,
/// `Transfer-Encoding` (a chunked body is sent de-chunked), `Content-Type`, `Content-Encoding`
/// — are left out, and `Content-Type: body.content_type` and `Content-Length: body.length`
/// are written after `X-Forwarded-For`, before `extra_headers`.
pub fn write_upstream_request_head_replacing_body(
    out: &mut BytesMut,
    head: &RequestHead,
    host: &str,
    base_path: &str,
    client_ip: IpAddr,
    extra_headers: &[(&str, &[u8])],
    body: ReplacedBody<'_>,
) -> usize {
    write_head(
        out,
        head,
        host,
        base_path,
        client_ip,
        extra_headers,
        Some(body),
    )
}

fn write_head(
    out: &mut BytesMut,
    head: &RequestHead,
    host: &str,
    base_path: &str,
    client_ip: IpAddr,
    extra_headers: &[(&str, &[u8])],
    replaced: Option<ReplacedBody<'_>>,
) -> usize {
    let mut identity_dropped = 0;
    out.put_slice(&head.method);
    out.put_u8(b' ');
    let (prefix, rest) = head.origin_form_parts();
    if &head.target[..] == b"*" {
        if base_path.is_empty() {
            out.put_u8(b'*');
        } else {
            put_config_token(out, base_path.as_bytes());
        }
    } else {
        let starts_with_slash = prefix.first().or(rest.first()) == Some(&b'/');
        let base = base_path.as_bytes();
        let base = match base.strip_suffix(b"/") {
            Some(trimmed) if starts_with_slash => trimmed,
            _ => base,
        };
        put_config_token(out, base);
        out.put_slice(prefix);
        out.put_slice(rest);
    }
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    put_config_token(out, host.as_bytes());
    out.put_slice(b"\r\n");

    let mut forwarded_for_seen = false;
    for header in &head.headers {
        if header.is("x-forwarded-for") {
            forwarded_for_seen = true;
            continue;
        }
        if is_identity_header(&header.name) {
            identity_dropped += 1;
            continue;
        }
        let replaced_field = replaced.is_some()
            && (header.is("content-length")
                || header.is("transfer-encoding")
                || header.is("content-type")
                || header.is("content-encoding"));
        let drop = replaced_field
            || header.is("host")
            || header.is("expect")
            || (header.is("transfer-encoding") && head.body != BodyLength::Chunked)
            || extra_headers.iter().any(|(name, _)| header.is(name))
            || is_hop_by_hop(header, &head.headers);
        if !drop {
            put_header(out, &header.name, &header.value);
        }
    }

    out.put_slice(b"X-Forwarded-For: ");
    if forwarded_for_seen {
        for header in head.headers.iter().filter(|h| h.is("x-forwarded-for")) {
            for element in list_elements(&header.value) {
                out.put_slice(element);
                out.put_slice(b", ");
            }
        }
    }
    // Writing into a BytesMut cannot fail: it grows as needed.
    let _ = write!(out, "{client_ip}");
    out.put_slice(b"\r\n");

    if let Some(body) = replaced {
        out.put_slice(b"Content-Type: ");
        put_config_token(out, body.content_type.as_bytes());
        let _ = write!(out, "\r\nContent-Length: {}\r\n", body.length);
    }

    for (name, value) in extra_headers {
        if is_valid_header_name(name) && is_valid_header_value(value) {
            put_header(out, name.as_bytes(), value);
        }
    }
    out.put_slice(b"\r\n");
    identity_dropped
}

/// The prefix of the header names simgate attaches SIM identity under (`X-Simgate-Imsi`, …),
/// matched case-insensitively. A device's own fields with it are never forwarded.
pub const IDENTITY_HEADER_PREFIX: &str = "x-simgate-";

/// True for a field name starting with [`IDENTITY_HEADER_PREFIX`], in any case.
pub fn is_identity_header(name: &[u8]) -> bool {
    let prefix = IDENTITY_HEADER_PREFIX.as_bytes();
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Writes the response head for the device: an `HTTP/1.1` status line with the upstream's status
/// and reason, the upstream's fields minus hop-by-hop ones, then `Connection: close` when
/// `keep_alive` is false, or `Connection: keep-alive` for an HTTP/1.0 device when it is true.
///
/// A body delimited by the upstream closing ([`BodyLength::UntilClose`]) can only be delimited
/// the same way towards the device, so it always gets `Connection: close`; the caller must close
/// the device connection after it.
pub fn write_device_response_head(
    out: &mut BytesMut,
    head: &ResponseHead,
    device_minor_version: u8,
    keep_alive: bool,
) {
    // An HTTP/1.0 device cannot parse chunked framing (RFC 9112 §6.1): the body is relayed
    // de-chunked (see `Dechunker`) and delimited by closing the connection.
    let dechunk = device_minor_version == 0 && head.body == BodyLength::Chunked;
    let keep_alive = keep_alive && head.body != BodyLength::UntilClose && !dechunk;
    out.put_slice(b"HTTP/1.1 ");
    put_status(out, head.status);
    out.put_u8(b' ');
    out.put_slice(&head.reason);
    out.put_slice(b"\r\n");
    for header in &head.headers {
        if dechunk && header.is("transfer-encoding") {
            continue;
        }
        if !is_hop_by_hop(header, &head.headers) {
            put_header(out, &header.name, &header.value);
        }
    }
    if !keep_alive {
        out.put_slice(b"Connection: close\r\n");
    } else if device_minor_version == 0 {
        out.put_slice(b"Connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Writes a complete error response generated by the gateway: status line, `Content-Type:
/// text/plain; charset=utf-8`, `Content-Length`, `Connection: close` when `keep_alive` is false,
/// and the body `reason` followed by `\n`. Request bytes are never echoed: pass a fixed text such
/// as [`HttpError::reason`](super::HttpError::reason). A status outside 100..=599 is written as
/// 500.
pub fn write_error_response(out: &mut BytesMut, status: u16, reason: &str, keep_alive: bool) {
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    out.put_slice(b"HTTP/1.1 ");
    put_status(out, status);
    out.put_u8(b' ');
    out.put_slice(canonical_reason(status).as_bytes());
    out.put_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    let _ = write!(out, "{}", reason.len() + 1);
    out.put_slice(b"\r\n");
    if !keep_alive {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(reason.as_bytes());
    out.put_u8(b'\n');
}

/// A whole response generated by simgate with `body` of `content_type` (e.g. a batched cloud
/// call's answer for one device) and `extra` header fields (`Retry-After`, `Allow`; fields
/// that are not valid are left out).
pub fn write_answer(
    out: &mut BytesMut,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) {
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    out.reserve(160 + body.len());
    out.put_slice(b"HTTP/1.1 ");
    put_status(out, status);
    out.put_u8(b' ');
    out.put_slice(canonical_reason(status).as_bytes());
    out.put_slice(b"\r\n");
    if let Some(ct) = content_type.filter(|ct| is_valid_header_value(ct.as_bytes())) {
        out.put_slice(b"Content-Type: ");
        out.put_slice(ct.as_bytes());
        out.put_slice(b"\r\n");
    }
    for (name, value) in extra {
        if is_valid_header_name(name) && is_valid_header_value(value.as_bytes()) {
            put_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if !keep_alive {
        out.put_slice(b"Connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

/// True for a non-empty `token` (RFC 9110 §5.6.2), the grammar of a field name.
#[must_use]
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// True for a field value with no control bytes but HTAB and no leading or trailing whitespace.
#[must_use]
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value.iter().copied().all(is_field_value_byte)
        && !matches!(value.first(), Some(b' ' | b'\t'))
        && !matches!(value.last(), Some(b' ' | b'\t'))
}

/// True for a non-empty `host[:port]` made of URI authority characters (no user info, path,
/// whitespace or control bytes).
#[must_use]
pub fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// True for an empty path or an absolute path (`/...`) without query, fragment, whitespace or
/// control bytes.
#[must_use]
pub fn is_valid_base_path(path: &str) -> bool {
    path.is_empty()
        || (path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)))
}

/// Hop-by-hop: a fixed name, or a name listed in a `Connection` field (framing fields excepted).
fn is_hop_by_hop(header: &Header, all: &[Header]) -> bool {
    if HOP_BY_HOP.iter().any(|name| header.is(name)) {
        return true;
    }
    if header.is("content-length") || header.is("transfer-encoding") {
        return false;
    }
    all.iter()
        .filter(|h| h.is("connection"))
        .flat_map(|h| list_elements(&h.value))
        .any(|option| option.eq_ignore_ascii_case(&header.name))
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes a configuration value, dropping any byte that could end the line or the request-line
/// token (controls, space, DEL, non-ASCII).
fn put_config_token(out: &mut BytesMut, value: &[u8]) {
    if value.iter().all(|b| (0x21..0x7f).contains(b)) {
        out.put_slice(value);
    } else {
        for &b in value.iter().filter(|b| (0x21..0x7f).contains(*b)) {
            out.put_u8(b);
        }
    }
}

fn put_status(out: &mut BytesMut, status: u16) {
    let status = status.min(999);
    out.put_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
}

/// Reason phrases from RFC 9110 §15 for the statuses the gateway generates.
fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use bytes::BytesMut;

    use super::*;

    #[test]
    fn answer_has_its_type_extra_fields_length_and_body() {
        let mut out = BytesMut::new();
        write_answer(
            &mut out,
            405,
            Some("text/plain"),
            b"no\n",
            &[
                ("Allow", "POST, PUT"),
                ("Bad Name", "x"),
                ("X-Ok", "a\r\nb"),
            ],
            false,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nAllow: POST, PUT\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n"[..]
        );
    }
    use crate::proto::http1::{decode_response_head, Limits, Parsed, RequestDecoder};

    fn request(input: &[u8]) -> RequestHead {
        match RequestDecoder::new(Limits::default()).decode(&mut BytesMut::from(input)) {
            Ok(Parsed::Complete(request)) => request.head,
            other => panic!("test request must decode: {other:?}"),
        }
    }

    fn response(input: &[u8]) -> ResponseHead {
        match decode_response_head(&mut BytesMut::from(input), &Limits::default(), false) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("test response must decode: {other:?}"),
        }
    }

    fn upstream(head: &RequestHead, base: &str, extra: &[(&str, &[u8])]) -> String {
        let mut out = BytesMut::new();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
        write_upstream_request_head(&mut out, head, "api.example.com", base, ip, extra);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replacing_the_body_replaces_the_framing_and_representation_fields() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
        let body = ReplacedBody {
            content_type: "application/json",
            length: 87,
        };
        for input in [
            &b"POST /m HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\
               Content-Encoding: gzip\r\nX-A: 1\r\n\r\n21.5"[..],
            b"POST /m HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\
              X-A: 1\r\nTrailer: X-T\r\n\r\n4\r\n21.5\r\n0\r\nX-T: 1\r\n\r\n",
        ] {
            let head = request(input);
            let mut out = BytesMut::new();
            let extra: &[(&str, &[u8])] = &[("X-Simgate-Imsi", b"001010000000002")];
            write_upstream_request_head_replacing_body(
                &mut out, &head, "api", "", ip, extra, body,
            );
            assert_eq!(
                String::from_utf8(out.to_vec()).unwrap(),
                "POST /m HTTP/1.1\r\nHost: api\r\nX-A: 1\r\nX-Forwarded-For: 10.0.0.17\r\n\
                 Content-Type: application/json\r\nContent-Length: 87\r\n\
                 X-Simgate-Imsi: 001010000000002\r\n\r\n"
            );
        }
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_rewrites_host() {
        let head = request(
            b"POST /telemetry?v=2 HTTP/1.1\r\nHost: gw.local\r\nConnection: keep-alive, X-Secret\r\n\
              Keep-Alive: timeout=5\r\nX-Secret: s\r\nProxy-Authorization: Basic x\r\nTE: trailers\r\n\
              Trailer: X\r\nUpgrade: h2c\r\nProxy-Connection: close\r\nExpect: 100-continue\r\n\
              Content-Type: application/json\r\nContent-Length: 2\r\nX-Imsi: spoofed\r\n\r\n{}",
        );
        assert_eq!(
            upstream(
                &head,
                "/v1/",
                &[
                    ("X-Imsi", b"440103123456789"),
                    ("Bad Name", b"x"),
                    ("X-Bad", b"a\r\nb")
                ]
            ),
            "POST /v1/telemetry?v=2 HTTP/1.1\r\nHost: api.example.com\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\
             X-Forwarded-For: 10.0.0.17\r\nX-Imsi: 440103123456789\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_drops_every_identity_header_a_device_sends_and_counts_them() {
        let head = request(
            b"GET /m HTTP/1.1\r\nHost: gw\r\nX-Simgate-Imsi: 001019999999999\r\n\
              x-simgate-tag-site: fake\r\nX-SIMGATE-NAME: other\r\nX-Simgate: kept\r\n\r\n",
        );
        let mut out = BytesMut::new();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
        let extra: &[(&str, &[u8])] = &[("X-Simgate-Imsi", b"440103123456789")];
        let dropped = write_upstream_request_head(&mut out, &head, "h", "", ip, extra);
        assert_eq!(dropped, 3);
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "GET /m HTTP/1.1\r\nHost: h\r\nX-Simgate: kept\r\nX-Forwarded-For: 10.0.0.17\r\n\
             X-Simgate-Imsi: 440103123456789\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_keeps_chunked_and_framing_named_in_connection() {
        let head = request(
            b"PUT /d HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\
              Connection: transfer-encoding\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(
            upstream(&head, "", &[]),
            "PUT /d HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\
             X-Forwarded-For: 10.0.0.17\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_appends_to_forwarded_for() {
        let head = request(
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: gw\r\nx-forwarded-for: 5.6.7.8, 9.9.9.9\r\n\r\n",
        );
        let mut out = BytesMut::new();
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        write_upstream_request_head(&mut out, &head, "h", "/base", ip, &[]);
        assert_eq!(
            &out[..],
            b"GET /base/ HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 9.9.9.9, ::1\r\n\r\n"
        );
    }

    #[test]
    fn upstream_target_forms() {
        let absolute = request(b"GET http://gw:80?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert!(upstream(&absolute, "/api", &[]).starts_with("GET /api/?q=1 HTTP/1.1\r\n"));
        let options = request(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert!(upstream(&options, "/api", &[]).starts_with("OPTIONS /api HTTP/1.1\r\n"));
        assert!(upstream(&options, "", &[]).starts_with("OPTIONS * HTTP/1.1\r\n"));
        let http10 = request(b"GET /x HTTP/1.0\r\n\r\n");
        assert!(
            upstream(&http10, "", &[]).starts_with("GET /x HTTP/1.1\r\nHost: api.example.com\r\n")
        );
    }

    #[test]
    fn config_values_cannot_split_the_head() {
        let head = request(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
        let mut out = BytesMut::new();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        write_upstream_request_head(&mut out, &head, "evil\r\nX: 1", "/a b", ip, &[]);
        assert_eq!(
            &out[..],
            b"GET /ab/ HTTP/1.1\r\nHost: evilX:1\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
        assert!(
            !is_valid_host("evil\r\n")
                && is_valid_host("a.example:8443")
                && is_valid_host("[::1]:443")
        );
        assert!(is_valid_base_path("") && is_valid_base_path("/v1/x") && !is_valid_base_path("v1"));
        assert!(!is_valid_base_path("/a?b"));
        assert!(
            is_valid_header_name("X-Sim-Imsi")
                && !is_valid_header_name("X Sim")
                && !is_valid_header_name("")
        );
        assert!(
            is_valid_header_value(b"a b")
                && !is_valid_header_value(b"a\nb")
                && !is_valid_header_value(b" a")
        );
    }

    #[test]
    fn device_response_head() {
        let head = response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: x-hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let mut out = BytesMut::new();
        write_device_response_head(&mut out, &head, 1, true);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        out.clear();
        write_device_response_head(&mut out, &head, 1, false);
        assert!(out.ends_with(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"));
        let fixed = response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        out.clear();
        write_device_response_head(&mut out, &fixed, 0, true);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        let until_close = response(b"HTTP/1.0 200 OK\r\n\r\n");
        out.clear();
        write_device_response_head(&mut out, &until_close, 1, true);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        // HTTP/1.0 device, chunked upstream body: framing header dropped, close-delimited.
        out.clear();
        write_device_response_head(&mut out, &head, 0, true);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn error_response() {
        let mut out = BytesMut::new();
        write_error_response(&mut out, 413, "body too large", false);
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\
               Content-Length: 15\r\nConnection: close\r\n\r\nbody too large\n"[..]
        );
        out.clear();
        write_error_response(&mut out, 42, "x", true);
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n\
               Content-Length: 2\r\n\r\nx\n"[..]
        );
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
