//! Parsers for the small value languages inside the config: durations, names, `host:port`
//! endpoints, URL path prefixes and header values.
//!
//! Every parser is pure (no IO, no DNS) and returns a typed error whose `Display` is the message
//! shown after the field path. Nothing here knows about field paths or the `Plan`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Longest accepted name (`listener[].name`, `destination[].name`, ...), in bytes.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Why a duration string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// Not `<digits><unit>`.
    Syntax,
    /// Digits followed by something other than `ms`, `s`, `m`, `h`.
    UnknownUnit,
    /// The number does not fit.
    Overflow,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "expected a whole number followed by a unit",
            Self::UnknownUnit => "unknown unit (use ms, s, m or h)",
            Self::Overflow => "number too large",
        })?;
        f.write_str(", e.g. \"250ms\", \"10s\", \"2m\", \"1h\"")
    }
}

/// Parses `"<digits><unit>"` with unit `ms`, `s`, `m` or `h` (no spaces, no fractions, no
/// compound forms). `"0s"` parses; range checks are the caller's.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() || unit.is_empty() {
        return Err(DurationError::Syntax);
    }
    let value: u64 = digits.parse().map_err(|_| DurationError::Overflow)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
            return Err(DurationError::UnknownUnit)
        }
        _ => return Err(DurationError::Syntax),
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .ok_or(DurationError::Overflow)?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration in the largest unit that represents it exactly (for messages and docs).
pub(crate) fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis != 0 && millis % 3_600_000 == 0 {
        format!("{}h", millis / 3_600_000)
    } else if millis != 0 && millis % 60_000 == 0 {
        format!("{}m", millis / 60_000)
    } else if millis % 1_000 == 0 {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

/// True if `name` is 1..=[`MAX_NAME_LEN`] bytes of `[a-z0-9_-]`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointHost {
    /// An IP literal (IPv6 was written in brackets).
    Ip(IpAddr),
    /// A syntactically valid DNS name.
    Dns(String),
}

/// A parsed `host:port` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host as parsed.
    pub host: EndpointHost,
    /// The host exactly as written (IPv6 keeps its brackets), for the default Host header.
    pub host_as_written: String,
    /// Port, never 0.
    pub port: u16,
}

/// Why an endpoint was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndpointError {
    /// Empty string.
    Empty,
    /// Looks like a URL (`https://...` or contains a path).
    HasSchemeOrPath,
    /// No `:port`.
    MissingPort,
    /// Port not a number in 1..=65535.
    BadPort,
    /// Unbracketed IPv6 address or stray brackets.
    BadBrackets,
    /// Host is neither an IP literal nor a valid DNS name.
    BadHost,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "must not be empty; expected host:port",
            Self::HasSchemeOrPath => "expected host:port, without a scheme or path",
            Self::MissingPort => "port required; expected host:port",
            Self::BadPort => "port must be a number in 1..=65535",
            Self::BadBrackets => "IPv6 addresses must be written in brackets, e.g. [::1]:443",
            Self::BadHost => "host is neither an IP address nor a valid DNS name",
        })
    }
}

/// Parses `host:port`, `a.b.c.d:port` or `[v6]:port`.
pub(crate) fn parse_endpoint(text: &str) -> Result<Endpoint, EndpointError> {
    if text.is_empty() {
        return Err(EndpointError::Empty);
    }
    if text.contains("://") || text.contains('/') {
        return Err(EndpointError::HasSchemeOrPath);
    }
    let (host_as_written, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest.find(']').ok_or(EndpointError::BadBrackets)?;
        let after = &rest[close + 1..];
        let port_text = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(EndpointError::MissingPort),
            None => return Err(EndpointError::BadBrackets),
        };
        (&text[..close + 2], port_text)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or(EndpointError::MissingPort)?;
        if host.contains(':') || host.contains('[') || host.contains(']') {
            return Err(EndpointError::BadBrackets);
        }
        (host, port)
    };
    if port_text.is_empty() || !port_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError::BadPort);
    }
    let port: u16 = port_text.parse().map_err(|_| EndpointError::BadPort)?;
    if port == 0 {
        return Err(EndpointError::BadPort);
    }
    let host = if let Some(inner) = host_as_written
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
    {
        match inner.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => EndpointHost::Ip(IpAddr::V6(v6)),
            Err(_) => return Err(EndpointError::BadHost),
        }
    } else if let Ok(v4) = host_as_written.parse::<std::net::Ipv4Addr>() {
        EndpointHost::Ip(IpAddr::V4(v4))
    } else if rustls::pki_types::DnsName::try_from(host_as_written).is_ok() {
        EndpointHost::Dns(host_as_written.to_owned())
    } else {
        return Err(EndpointError::BadHost);
    };
    Ok(Endpoint {
        host,
        host_as_written: host_as_written.to_owned(),
        port,
    })
}

/// Why a URL path prefix (`routes[].path`, `base_path`) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathPrefixError {
    /// Does not start with '/'.
    NoLeadingSlash,
    /// Contains a space, control character, '?', '#' or a non-ASCII byte.
    BadCharacter,
}

impl fmt::Display for PathPrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoLeadingSlash => "must start with '/'",
            Self::BadCharacter => {
                "must be printable ASCII without spaces, '?' or '#' (percent-encode other bytes)"
            }
        })
    }
}

/// Validates a path prefix and trims trailing slashes. `"/"` (or `"//"`) becomes `"/"`.
pub(crate) fn normalize_path_prefix(text: &str) -> Result<String, PathPrefixError> {
    if !text.starts_with('/') {
        return Err(PathPrefixError::NoLeadingSlash);
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err(PathPrefixError::BadCharacter);
    }
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// True if `value` can be sent as an HTTP header value without escaping: non-empty visible
/// ASCII (spaces allowed inside), so no CR/LF can smuggle a header.
pub(crate) fn is_valid_header_value(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_reject_bad_forms() {
        assert_eq!(parse_duration(""), Err(DurationError::Syntax));
        assert_eq!(parse_duration("10"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("s"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("10 s"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("1.5s"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("10sec"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("3d"), Err(DurationError::UnknownUnit));
        assert_eq!(
            parse_duration("99999999999999999999ms"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("9999999999999999h"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn durations_format_in_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn names_are_lowercase_identifiers() {
        assert!(is_valid_name("aws-prod_1"));
        assert!(is_valid_name(&"a".repeat(MAX_NAME_LEN)));
        assert!(!is_valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Http"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a.b"));
    }

    #[test]
    fn endpoints_parse_dns_v4_and_bracketed_v6() {
        let e = parse_endpoint("example.com:443").unwrap();
        assert_eq!(e.host, EndpointHost::Dns("example.com".into()));
        assert_eq!((e.host_as_written.as_str(), e.port), ("example.com", 443));
        let e = parse_endpoint("127.0.0.1:8443").unwrap();
        assert_eq!(e.host, EndpointHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let e = parse_endpoint("[::1]:8443").unwrap();
        assert_eq!(e.host, EndpointHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(e.host_as_written, "[::1]");
        assert_eq!(e.port, 8443);
    }

    #[test]
    fn endpoints_reject_bad_forms() {
        use EndpointError::*;
        let cases = [
            ("", Empty),
            ("https://example.com:443", HasSchemeOrPath),
            ("example.com:443/x", HasSchemeOrPath),
            ("example.com", MissingPort),
            ("[::1]", MissingPort),
            ("example.com:", BadPort),
            ("example.com:0", BadPort),
            ("example.com:65536", BadPort),
            ("example.com:+1", BadPort),
            ("::1:443", BadBrackets),
            ("[::1:443", BadBrackets),
            ("[::1]x:443", BadBrackets),
            ("[example.com]:443", BadHost),
            ("exa mple.com:443", BadHost),
            (":443", BadHost),
        ];
        for (text, want) in cases {
            assert_eq!(parse_endpoint(text), Err(want), "{text}");
        }
    }

    #[test]
    fn path_prefixes_are_trimmed_and_checked() {
        assert_eq!(normalize_path_prefix("/").as_deref(), Ok("/"));
        assert_eq!(normalize_path_prefix("//").as_deref(), Ok("/"));
        assert_eq!(normalize_path_prefix("/a/b/").as_deref(), Ok("/a/b"));
        assert_eq!(
            normalize_path_prefix("a"),
            Err(PathPrefixError::NoLeadingSlash)
        );
        assert_eq!(
            normalize_path_prefix(""),
            Err(PathPrefixError::NoLeadingSlash)
        );
        for bad in ["/a b", "/a?x", "/a#x", "/a\r\n", "/é"] {
            assert_eq!(
                normalize_path_prefix(bad),
                Err(PathPrefixError::BadCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_values_cannot_carry_line_breaks() {
        assert!(is_valid_header_value("example.com"));
        assert!(is_valid_header_value("example.com:8443"));
        assert!(!is_valid_header_value(""));
        assert!(!is_valid_header_value("a\r\nX-Evil: 1"));
        assert!(!is_valid_header_value(" a"));
    }
}
