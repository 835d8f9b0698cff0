//! AWS Signature Version 4 for requests signed in headers (AWS IoT Core HTTPS publish with SigV4,
//! Lambda Invoke), on the `aws-sigv4` crate.
//!
//! What this module does: given a request as it will be sent (method, host, request-target,
//! the headers to sign, body), keys, region, service and a time, it returns the headers to add
//! (`authorization`, `x-amz-date`, and `x-amz-security-token` when a session token is set). It
//! is pure: no IO, no clock. What it does not do: presigned URLs (query-string signing), SigV4a,
//! S3's rules (single path encoding, no path normalisation, `x-amz-content-sha256`), chunked
//! payload signing, or caching the derived signing key (it is derived per call: four HMACs).
//!
//! # Settings, and why
//!
//! The crate is called with: signature in headers; **double** percent-encoding of the path
//! (`PercentEncodingMode::Double`); path **normalisation on** (`UriPathNormalizationMode::Enabled`,
//! RFC 3986 dot-segment removal and `//` collapsing); the session token **signed**
//! (`SessionTokenMode::Include`); no `x-amz-content-sha256` (`PayloadChecksumKind::NoHeader`).
//! These are the crate's defaults, which are what AWS documents for every service but S3:
//!
//! - `path_and_query` is taken as sent on the wire, already percent-encoded once. AWS's
//!   "Create a canonical request" says each path segment is URI-encoded **twice** in the canonical
//!   request for every service except S3; the crate re-encodes the sent path once more (`%` →
//!   `%25`, and any byte outside `A–Z a–z 0–9 - . _ ~ /` → `%XX`). So an AWS IoT topic sent as
//!   `/topics/a%2Fb?qos=1` is signed as `/topics/a%252Fb`, and a Lambda function ARN sent as
//!   `/2015-03-31/functions/arn%3Aaws%3Alambda…/invocations` as `arn%253Aaws%253Alambda…`: that is
//!   the crate's `double-url-encode` vector (a Lambda Invoke), run in the tests below, and it is
//!   what botocore does for non-S3 services (`quote(path, safe='/~')` over the already-encoded
//!   path). No encoding is lost or doubled on the wire: the request line carries
//!   `path_and_query` unchanged; only the canonical form is re-encoded, as the service expects.
//! - Normalisation removes `.`/`..` segments and empty segments (`a//b` → `a/b`) from the
//!   canonical path, as the service does before checking. An adapter should therefore encode an
//!   MQTT topic as **one** path segment (every `/` as `%2F`, as the SDKs do for the non-greedy
//!   `{topic}` label of `POST /topics/{topic}`): then a topic with empty levels (`a//b`) or `.`
//!   levels survives. (A topic that is exactly `.` or `..` would still be a dot segment; AWS IoT
//!   topics are not expected to be that.)
//! - The query string is canonicalised by the crate (decoded, re-encoded, sorted by name).
//! - The session token is part of the canonical request (it is signed), as botocore does for
//!   AWS IoT and Lambda. The `post-sts-header-after` vector (token added after signing) is the
//!   other mode, which these services do not use.
//!
//! The output header names are lowercase, as the crate gives them (HTTP/1.1 names are
//! case-insensitive; HTTP/2 requires lowercase).

use std::fmt;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    self, PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// AWS credentials: an access key pair and, for temporary credentials, a session token.
///
/// `Debug` shows the access key id (an identifier, sent in clear in every `Authorization`
/// header) and redacts the secret key and the session token.
#[derive(Clone, Copy)]
pub struct AwsKeys<'a> {
    /// The access key id (`AKIA…` / `ASIA…`).
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
    /// The session token of temporary credentials (STS), if any.
    pub session_token: Option<&'a str>,
}

impl fmt::Debug for AwsKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.map(|_| "<redacted>"))
            .finish()
    }
}

/// A request to sign, as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct SignableRequest<'a> {
    /// The method (`POST`).
    pub method: &'a str,
    /// The `Host` header value: a host name or address, with `:port` if not 443.
    pub host: &'a str,
    /// The request-target in origin form, exactly as on the request line: starts with `/`,
    /// already percent-encoded (visible ASCII only; no `#`).
    pub path_and_query: &'a str,
    /// The headers to sign besides `host` and `x-amz-date` (for example `content-type`,
    /// `x-amz-invocation-type`). Not `host`, `authorization`, `x-amz-date`,
    /// `x-amz-security-token` or `x-amz-content-sha256`: the signer owns those. `user-agent`,
    /// `x-amzn-trace-id` and `transfer-encoding` are accepted but left unsigned (proxies change
    /// them).
    pub headers: &'a [(&'a str, &'a str)],
    /// The body as sent.
    pub body: &'a [u8],
}

/// Why a request could not be signed. The text never contains key material nor header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigV4Error {
    /// `host` is empty or has a character that cannot be in a URI authority.
    Host,
    /// `path_and_query` does not start with `/`, or has a byte outside visible ASCII, or `#`, or
    /// is not a valid URI path and query.
    PathAndQuery,
    /// `method` is empty or not an HTTP token.
    Method,
    /// `region` or `service` is empty or has a character outside `A–Z a–z 0–9 - _ .`.
    Scope,
    /// The access key id is empty or not alphanumeric, the secret key is empty, or the session
    /// token has a character not allowed in a header value.
    Keys,
    /// The header at this index of [`SignableRequest::headers`] is one the signer sets itself.
    ReservedHeader(usize),
    /// A header name or value could not be canonicalised (a name that is not an HTTP token, a
    /// value with control characters).
    Header,
    /// The signer failed for another reason.
    Signer,
}

impl fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host => f.write_str("SigV4: invalid host"),
            Self::PathAndQuery => f.write_str("SigV4: invalid path and query"),
            Self::Method => f.write_str("SigV4: invalid method"),
            Self::Scope => f.write_str("SigV4: invalid region or service name"),
            Self::Keys => f.write_str("SigV4: malformed credentials"),
            Self::ReservedHeader(i) => {
                write!(f, "SigV4: header #{i} is one the signer sets itself")
            }
            Self::Header => f.write_str("SigV4: a header name or value cannot be signed"),
            Self::Signer => f.write_str("SigV4: signing failed"),
        }
    }
}

impl std::error::Error for SigV4Error {}

/// Header names the signer sets itself; a request must not carry them already.
const RESERVED: [&str; 5] = [
    "host",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// The headers to add to the request: `authorization`, `x-amz-date`, and `x-amz-security-token`
/// when a session token is set (no `x-amz-content-sha256`: AWS IoT's data plane and Lambda do
/// not need it). See the module doc for the encoding rules applied to `path_and_query`.
pub fn sign(
    req: &SignableRequest<'_>,
    keys: &AwsKeys<'_>,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, SigV4Error> {
    check_request(req)?;
    if !is_scope_name(region) || !is_scope_name(service) {
        return Err(SigV4Error::Scope);
    }
    check_keys(keys)?;

    let identity: Identity = Credentials::new(
        keys.access_key_id,
        keys.secret_access_key,
        keys.session_token.map(str::to_owned),
        None,
        "simgate",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    settings.session_token_mode = SessionTokenMode::Include;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.signature_location = SignatureLocation::Headers;
    let params: http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| SigV4Error::Signer)?
        .into();

    let uri = format!("https://{}{}", req.host, req.path_and_query);
    let signable = http_request::SignableRequest::new(
        req.method,
        uri,
        req.headers.iter().copied(),
        SignableBody::Bytes(req.body),
    )
    .map_err(|_| SigV4Error::PathAndQuery)?;
    // The crate's error text is not passed on: it may quote a header value.
    let (instructions, _signature) = http_request::sign(signable, &params)
        .map_err(|_| SigV4Error::Header)?
        .into_parts();
    let (headers, _query) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

fn check_request(req: &SignableRequest<'_>) -> Result<(), SigV4Error> {
    if req.method.is_empty() || !req.method.bytes().all(is_tchar) {
        return Err(SigV4Error::Method);
    }
    // A URI authority: reg-name / IPv4 / `[IPv6]`, optional `:port`. No userinfo (`@`), and
    // nothing that would end the authority early (`/`, `?`, `#`) and shift the path.
    let host = req.host.as_bytes();
    let host_ok = match host.first() {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'[' => host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(b)),
        _ => false,
    };
    if !host_ok {
        return Err(SigV4Error::Host);
    }
    let target = req.path_and_query.as_bytes();
    if target.first() != Some(&b'/')
        || !target
            .iter()
            .all(|b| (0x21..0x7f).contains(b) && *b != b'#')
    {
        return Err(SigV4Error::PathAndQuery);
    }
    if let Some(i) = req
        .headers
        .iter()
        .position(|(name, _)| RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)))
    {
        return Err(SigV4Error::ReservedHeader(i));
    }
    Ok(())
}

fn check_keys(keys: &AwsKeys<'_>) -> Result<(), SigV4Error> {
    let id_ok = !keys.access_key_id.is_empty()
        && keys
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric());
    // The token goes into a header value: visible ASCII only (STS tokens are base64).
    let token_ok = keys
        .session_token
        .is_none_or(|t| !t.is_empty() && t.bytes().all(|b| (0x21..0x7f).contains(&b)));
    if id_ok && !keys.secret_access_key.is_empty() && token_ok {
        Ok(())
    } else {
        Err(SigV4Error::Keys)
    }
}

fn is_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
