//! Which trailer fields of a chunked request body may travel upstream, and the zero-copy filter
//! that leaves the others out.
//!
//! RFC 9110 §6.5.1: many fields cannot be processed outside the header section — those that
//! describe message framing, routing, authentication, request modifiers, response controls or
//! content format — and a recipient that merges trailers into the header section (as some
//! servers and frameworks do) would let a device override what the gateway wrote in the head
//! (`Host`, `Content-Length`, `X-Forwarded-For`, identity headers). Those fields are dropped;
//! other fields (`Server-Timing`, `Content-Digest`, application checksums) are forwarded as
//! received.
//!
//! What this does not do: validate the trailer syntax (the chunked scanner already did), look
//! at response trailers (the gateway relays upstream responses as they stream), or rewrite a
//! kept field.

/// Field names refused in a trailer section, lowercase: framing, routing, authentication,
/// request modifiers, response controls and hop-by-hop fields.
const FORBIDDEN: [&str; 25] = [
    // Framing and hop-by-hop (RFC 9110 §7.6.1, RFC 9112 §6).
    "transfer-encoding",
    "trailer",
    "te",
    "connection",
    "keep-alive",
    "upgrade",
    // Routing and the gateway's own forwarding fields.
    "host",
    "forwarded",
    "via",
    "x-real-ip",
    "max-forwards",
    // Authentication.
    "authorization",
    "cookie",
    "set-cookie",
    "www-authenticate",
    // Request modifiers.
    "expect",
    "range",
    "prefer",
    // Response controls and caching.
    "cache-control",
    "pragma",
    "age",
    "expires",
    "vary",
    "location",
    "retry-after",
];

/// Name prefixes refused in a trailer section: content format and framing (`Content-Length`,
/// `Content-Type`, `Content-Encoding`, `Content-Range`, ...), conditionals (`If-*`), proxy
/// fields (`Proxy-Authorization`, `Proxy-Connection`, ...), content negotiation (`Accept*`) and
/// forwarding fields (`X-Forwarded-*`).
const FORBIDDEN_PREFIXES: [&str; 5] = ["content-", "if-", "proxy-", "accept", "x-forwarded-"];

/// `Content-*` fields defined to be sent as trailers (RFC 9530 integrity digests).
const ALLOWED_CONTENT: [&str; 1] = ["content-digest"];

/// True when a field named `name` must not be forwarded from a trailer section, or its name is
/// one of `extra_denied` (compared case-insensitively).
#[must_use]
pub fn is_forbidden_trailer_field(name: &[u8], extra_denied: &[&str]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let starts =
        |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if ALLOWED_CONTENT.iter().any(|n| is(n)) {
        return false;
    }
    FORBIDDEN.iter().any(|n| is(n))
        || FORBIDDEN_PREFIXES.iter().any(|p| starts(p))
        || extra_denied.iter().any(|n| is(n))
}

/// Appends the lines of `section` (a validated trailer section: field lines then the final
/// CRLF) to keep, as slices of it, and returns how many field lines were dropped. Adjacent
/// kept lines stay one slice.
pub(crate) fn filter_trailer_section<'a>(
    section: &'a [u8],
    extra_denied: &[&str],
    out: &mut Vec<&'a [u8]>,
) -> usize {
    let mut dropped = 0;
    let mut kept_from = 0;
    let mut pos = 0;
    while let Some(lf) = section[pos..].iter().position(|&b| b == b'\n') {
        let end = pos + lf + 1;
        let line = &section[pos..end];
        if line == b"\r\n" {
            break;
        }
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if is_forbidden_trailer_field(name, extra_denied) {
            if kept_from < pos {
                out.push(&section[kept_from..pos]);
            }
            kept_from = end;
            dropped += 1;
        }
        pos = end;
    }
    if kept_from < section.len() {
        out.push(&section[kept_from..]);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(section: &[u8], extra: &[&str]) -> (Vec<u8>, usize, usize) {
        let mut out = Vec::new();
        let dropped = filter_trailer_section(section, extra, &mut out);
        (out.concat(), dropped, out.len())
    }

    #[test]
    fn forbidden_fields_by_category() {
        for name in [
            "Content-Length",
            "content-type",
            "CONTENT-ENCODING",
            "Transfer-Encoding",
            "Trailer",
            "TE",
            "Host",
            "Connection",
            "Keep-Alive",
            "Upgrade",
            "Authorization",
            "Proxy-Authorization",
            "Proxy-Connection",
            "Cookie",
            "Expect",
            "Range",
            "If-None-Match",
            "Cache-Control",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
            "Accept-Encoding",
        ] {
            assert!(is_forbidden_trailer_field(name.as_bytes(), &[]), "{name}");
        }
        for name in [
            "X-Checksum",
            "Server-Timing",
            "Content-Digest",
            "Digest",
            "ETag-ish",
            "Tex",
        ] {
            assert!(!is_forbidden_trailer_field(name.as_bytes(), &[]), "{name}");
        }
        assert!(is_forbidden_trailer_field(b"x-imsi", &["X-Imsi"]));
    }

    #[test]
    fn filter_keeps_allowed_lines_zero_copy_and_in_order() {
        let section = b"X-A: 1\r\nX-B: 2\r\nHost: evil\r\nX-C: 3\r\nContent-Length: 9\r\n\r\n";
        let (bytes, dropped, parts) = filtered(section, &[]);
        assert_eq!(bytes, b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n");
        assert_eq!(dropped, 2);
        assert_eq!(parts, 3, "X-A+X-B, X-C, final CRLF");
        let (bytes, dropped, parts) = filtered(b"X-A: 1\r\n\r\n", &[]);
        assert_eq!(
            (bytes.as_slice(), dropped, parts),
            (&b"X-A: 1\r\n\r\n"[..], 0, 1)
        );
        let (bytes, dropped, _) = filtered(b"Host: a\r\nTE: b\r\n\r\n", &[]);
        assert_eq!((bytes.as_slice(), dropped), (&b"\r\n"[..], 2));
    }
}
