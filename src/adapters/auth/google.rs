//! Google service-account OAuth2: the JWT bearer grant (RFC 7523) Pub/Sub's access tokens come
//! from.
//!
//! What this module does: reads the service-account JSON Google issues, signs the RS256
//! assertion (header `{"alg":"RS256","typ":"JWT","kid":…}`, claims `iss`, `scope`, `aud`, `iat`,
//! `exp`), builds the form body to POST to the account's `token_uri`, and parses the token
//! endpoint's answer. Pure: the time is passed in, nothing is sent. What it does not do: the
//! HTTPS request to the token endpoint, caching the access token or deciding when to refresh it
//! (the control plane does; Google's tokens last `expires_in` seconds, usually 3600), the
//! self-signed-JWT shortcut (a JWT used directly as the bearer token, without the exchange),
//! workload identity federation, or user credentials (`authorized_user` JSON).
//!
//! Secrets: the private key is kept as an `aws-lc-rs` `RsaKeyPair`, never printed; the access
//! token is printed as `<redacted>`; errors name the field that is wrong, never its value.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};

/// The longest assertion lifetime Google accepts (`exp - iat`), in seconds.
pub const MAX_ASSERTION_LIFETIME_S: u64 = 3600;

/// The OAuth2 grant type of the JWT bearer flow (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A Google service account: its identity and its RSA signing key.
///
/// `Debug` shows the identity fields and `<redacted>` for the key.
pub struct ServiceAccount {
    /// The account's email: the assertion's `iss`.
    pub client_email: String,
    /// The id of the key (the assertion header's `kid`), if the JSON has one.
    pub private_key_id: Option<String>,
    /// Where to exchange the assertion for an access token (normally
    /// `https://oauth2.googleapis.com/token`), and the usual `aud`.
    pub token_uri: String,
    /// The project the account belongs to, if the JSON names it.
    pub project_id: Option<String>,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// What went wrong with a service account, an assertion or a token response. The text names the
/// field or the step, never a value from the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAccountError {
    /// The service-account JSON is not valid JSON (or not an object of strings where strings are
    /// expected), at this line and column.
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// `type` is present and is not `service_account` (for example `authorized_user`).
    NotServiceAccount,
    /// A required field is absent or empty.
    MissingField(&'static str),
    /// A field has a value that cannot be used (the private key is not a PKCS#8 PEM RSA key, a
    /// name has control characters).
    InvalidField(&'static str),
    /// The requested lifetime is 0 or longer than [`MAX_ASSERTION_LIFETIME_S`], or `iat +
    /// lifetime` overflows.
    Lifetime,
    /// The signature could not be computed.
    Signing,
    /// The token endpoint's answer is not the expected JSON, at this line and column.
    TokenResponseJson {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The token endpoint refused the grant: its OAuth2 `error` code (`invalid_grant`, …),
    /// printable ASCII only and at most 64 characters.
    Rejected(String),
}

impl fmt::Display for ServiceAccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json { line, column } => write!(
                f,
                "service-account JSON: malformed at line {line}, column {column}"
            ),
            Self::NotServiceAccount => {
                f.write_str("service-account JSON: `type` is not `service_account`")
            }
            Self::MissingField(name) => {
                write!(f, "service-account JSON: `{name}` is missing or empty")
            }
            Self::InvalidField(name) => write!(f, "service account: `{name}` is not usable"),
            Self::Lifetime => write!(
                f,
                "JWT assertion: lifetime must be 1..={MAX_ASSERTION_LIFETIME_S} s"
            ),
            Self::Signing => f.write_str("JWT assertion: RS256 signing failed"),
            Self::TokenResponseJson { line, column } => write!(
                f,
                "token response: malformed at line {line}, column {column}"
            ),
            Self::Rejected(code) => write!(f, "token endpoint refused the grant: {code}"),
        }
    }
}

impl std::error::Error for ServiceAccountError {}

/// The fields of Google's service-account JSON this module reads; the others are ignored. All
/// optional here so that a missing one is reported by name.
#[derive(Deserialize)]
struct Json {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

impl ServiceAccount {
    /// Reads the JSON Google issues for a service-account key (`private_key` a PKCS#8 PEM RSA
    /// key). Errors name the field, never its value.
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, ServiceAccountError> {
        let raw: Json = serde_json::from_slice(json).map_err(|e| ServiceAccountError::Json {
            line: e.line(),
            column: e.column(),
        })?;
        if raw.kind.as_deref().is_some_and(|t| t != "service_account") {
            return Err(ServiceAccountError::NotServiceAccount);
        }
        let required = |v: Option<String>, name: &'static str| match v {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ServiceAccountError::MissingField(name)),
        };
        let client_email = required(raw.client_email, "client_email")?;
        let token_uri = required(raw.token_uri, "token_uri")?;
        let pem = required(raw.private_key, "private_key")?;
        let private_key_id = raw.private_key_id.filter(|s| !s.is_empty());
        // They go into the JWT as JSON strings (escaped by serde_json); refuse control
        // characters anyway, as no real value has them.
        for (value, name) in [
            (Some(&client_email), "client_email"),
            (Some(&token_uri), "token_uri"),
            (private_key_id.as_ref(), "private_key_id"),
        ] {
            if value.is_some_and(|v| v.chars().any(char::is_control)) {
                return Err(ServiceAccountError::InvalidField(name));
            }
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| ServiceAccountError::InvalidField("private_key"))?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| ServiceAccountError::InvalidField("private_key"))?;
        Ok(ServiceAccount {
            client_email,
            private_key_id,
            token_uri,
            project_id: raw.project_id.filter(|s| !s.is_empty()),
            key,
        })
    }

    /// RS256 JWT: header `{"alg":"RS256","typ":"JWT","kid":private_key_id}` (no `kid` without a
    /// key id), claims `iss` (the account email), `scope`, `aud` (= the `audience` given,
    /// normally [`ServiceAccount::token_uri`]), `iat`, `exp = iat + lifetime` (1 to 3600 s).
    /// `scope` is one scope or several separated by spaces.
    pub fn assertion(
        &self,
        scope: &str,
        audience: &str,
        iat_unix_s: u64,
        lifetime_s: u64,
    ) -> Result<String, ServiceAccountError> {
        if lifetime_s == 0 || lifetime_s > MAX_ASSERTION_LIFETIME_S {
            return Err(ServiceAccountError::Lifetime);
        }
        let exp = iat_unix_s
            .checked_add(lifetime_s)
            .ok_or(ServiceAccountError::Lifetime)?;
        if scope.is_empty() {
            return Err(ServiceAccountError::MissingField("scope"));
        }
        if audience.is_empty() {
            return Err(ServiceAccountError::MissingField("audience"));
        }
        let header = Header {
            alg: "RS256",
            typ: "JWT",
            kid: self.private_key_id.as_deref(),
        };
        let claims = Claims {
            iss: &self.client_email,
            scope,
            aud: audience,
            iat: iat_unix_s,
            exp,
        };
        let mut jwt = String::new();
        // Serialising these structs of strings and integers cannot fail.
        let header = serde_json::to_vec(&header).map_err(|_| ServiceAccountError::Signing)?;
        let claims = serde_json::to_vec(&claims).map_err(|_| ServiceAccountError::Signing)?;
        URL_SAFE_NO_PAD.encode_string(header, &mut jwt);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut jwt);
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| ServiceAccountError::Signing)?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut jwt);
        Ok(jwt)
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The `application/x-www-form-urlencoded` body to POST to the token URI:
/// `grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=…`. The grant
/// type is form-encoded (`:` → `%3A`) as google-auth's `urlencode` writes it; a JWT is made of
/// URL-safe characters only, so the assertion goes as it is (it is encoded all the same).
pub fn token_request_body(assertion: &str) -> String {
    let mut body = String::with_capacity(assertion.len() + 80);
    body.push_str("grant_type=");
    form_encode_into(JWT_BEARER_GRANT_TYPE, &mut body);
    body.push_str("&assertion=");
    form_encode_into(assertion, &mut body);
    body
}

/// `application/x-www-form-urlencoded` byte serialisation (WHATWG URL, as Python's
/// `quote_plus`): `A–Z a–z 0–9 * - . _` as themselves, space as `+`, the rest `%XX`.
fn form_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// An OAuth2 access token from the token endpoint. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The bearer token (`Authorization: Bearer {token}`).
    pub token: String,
    /// Its lifetime from the moment it was issued, in seconds (`expires_in`).
    pub expires_in_s: u64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_in_s", &self.expires_in_s)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
}

/// Parses the token endpoint's JSON answer: `{"access_token":…,"expires_in":…,"token_type":
/// "Bearer"}`, or an OAuth2 error object (`{"error":"invalid_grant",…}`, reported as
/// [`ServiceAccountError::Rejected`] with the code only, whatever the HTTP status).
pub fn parse_token_response(body: &[u8]) -> Result<AccessToken, ServiceAccountError> {
    let raw: TokenResponse =
        serde_json::from_slice(body).map_err(|e| ServiceAccountError::TokenResponseJson {
            line: e.line(),
            column: e.column(),
        })?;
    if let Some(code) = raw.error {
        let code: String = code
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return Err(ServiceAccountError::Rejected(code));
    }
    let token = match raw.access_token {
        Some(t) if !t.is_empty() => t,
        _ => return Err(ServiceAccountError::MissingField("access_token")),
    };
    // It goes into a header value: visible ASCII only (Google's are `ya29.` + base64url).
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceAccountError::InvalidField("access_token"));
    }
    if raw
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(ServiceAccountError::InvalidField("token_type"));
    }
    let expires_in_s = raw
        .expires_in
        .ok_or(ServiceAccountError::MissingField("expires_in"))?;
    Ok(AccessToken {
        token,
        expires_in_s,
    })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use serde_json::{json, Value};

    use super::*;

    /// A TEST key generated for these tests (`openssl genpkey -algorithm RSA -pkeyopt
    /// rsa_keygen_bits:2048`); not a Google credential.
    const TEST_ACCOUNT: &[u8] = include_bytes!("testdata/google/test-service-account.json");
    const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
    const AUD: &str = "https://oauth2.googleapis.com/token";

    fn account() -> ServiceAccount {
        ServiceAccount::from_json(TEST_ACCOUNT).unwrap()
    }

    fn b64json(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn reads_the_service_account_json() {
        let sa = account();
        assert_eq!(
            sa.client_email,
            "simgate-test@simgate-test.iam.gserviceaccount.com"
        );
        assert_eq!(
            sa.private_key_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(sa.token_uri, AUD);
        assert_eq!(sa.project_id.as_deref(), Some("simgate-test"));
        let dbg = format!("{sa:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(
            !dbg.contains("PRIVATE KEY") && !dbg.contains("public_key"),
            "{dbg}"
        );
    }

    #[test]
    fn assertion_is_an_rs256_jwt_with_the_expected_header_and_claims() {
        let sa = account();
        let jwt = sa.assertion(SCOPE, AUD, 1_700_000_000, 3600).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            b64json(parts[0]),
            json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef0123456789abcdef01234567"})
        );
        assert_eq!(
            b64json(parts[1]),
            json!({
                "iss": "simgate-test@simgate-test.iam.gserviceaccount.com",
                "scope": SCOPE,
                "aud": AUD,
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 256);
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, sa.key.public_key());
        let signed = &jwt[..parts[0].len() + 1 + parts[1].len()];
        public.verify(signed.as_bytes(), &sig).unwrap();
        // Another message, or another signature, does not verify.
        assert!(public.verify(b"x", &sig).is_err());
        // RSASSA-PKCS1-v1_5 is deterministic: the same inputs give the same JWT.
        assert_eq!(sa.assertion(SCOPE, AUD, 1_700_000_000, 3600).unwrap(), jwt);
    }

    #[test]
    fn no_kid_without_a_key_id() {
        let mut v: Value = serde_json::from_slice(TEST_ACCOUNT).unwrap();
        v.as_object_mut().unwrap().remove("private_key_id");
        let sa = ServiceAccount::from_json(v.to_string().as_bytes()).unwrap();
        let jwt = sa.assertion(SCOPE, AUD, 1, 60).unwrap();
        assert_eq!(
            b64json(jwt.split('.').next().unwrap()),
            json!({"alg": "RS256", "typ": "JWT"})
        );
    }

    #[test]
    fn lifetime_is_bounded() {
        let sa = account();
        assert_eq!(
            sa.assertion(SCOPE, AUD, 1, 0),
            Err(ServiceAccountError::Lifetime)
        );
        assert_eq!(
            sa.assertion(SCOPE, AUD, 1, 3601),
            Err(ServiceAccountError::Lifetime)
        );
        assert_eq!(
            sa.assertion(SCOPE, AUD, u64::MAX - 10, 60),
            Err(ServiceAccountError::Lifetime)
        );
        assert!(sa.assertion(SCOPE, AUD, 1, 3600).is_ok());
    }

    #[test]
    fn bad_json_is_reported_by_field_never_by_value() {
        let base: Value = serde_json::from_slice(TEST_ACCOUNT).unwrap();
        let key = base["private_key"].as_str().unwrap().to_owned();
        let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut v = base.clone();
            f(v.as_object_mut().unwrap());
            ServiceAccount::from_json(v.to_string().as_bytes()).unwrap_err()
        };
        assert_eq!(
            with(&|m| {
                m.remove("client_email");
            }),
            ServiceAccountError::MissingField("client_email")
        );
        assert_eq!(
            with(&|m| {
                m.insert("token_uri".into(), json!(""));
            }),
            ServiceAccountError::MissingField("token_uri")
        );
        assert_eq!(
            with(&|m| {
                m.insert("type".into(), json!("authorized_user"));
            }),
            ServiceAccountError::NotServiceAccount
        );
        // A truncated key is refused, by name only.
        let truncated = key[..key.len() / 2].to_owned();
        let err = with(&|m| {
            m.insert("private_key".into(), json!(truncated));
        });
        assert_eq!(err, ServiceAccountError::InvalidField("private_key"));
        let msg = err.to_string();
        assert!(
            msg.contains("private_key") && !msg.contains("BEGIN"),
            "{msg}"
        );
        // A number where a string is expected: serde would quote it; we give a position only.
        let err = with(&|m| {
            m.insert("private_key".into(), json!(123_456_789));
        });
        assert!(matches!(err, ServiceAccountError::Json { .. }), "{err:?}");
        assert!(!err.to_string().contains("123456789"));
        assert!(matches!(
            ServiceAccount::from_json(b"{\"private_key\": "),
            Err(ServiceAccountError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn token_request_body_is_form_encoded() {
        assert_eq!(
            token_request_body("aGVhZA.Y2xhaW1z.c2ln-_"),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer\
             &assertion=aGVhZA.Y2xhaW1z.c2ln-_"
        );
        let mut s = String::new();
        form_encode_into("a b+c/d=é~", &mut s);
        assert_eq!(s, "a+b%2Bc%2Fd%3D%C3%A9%7E");
    }

    #[test]
    fn token_responses() {
        let ok =
            br#"{"access_token":"ya29.c.b0Aaek-secret","expires_in":3599,"token_type":"Bearer"}"#;
        let t = parse_token_response(ok).unwrap();
        assert_eq!(t.token, "ya29.c.b0Aaek-secret");
        assert_eq!(t.expires_in_s, 3599);
        assert!(!format!("{t:?}").contains("ya29"));

        let refused = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            parse_token_response(refused),
            Err(ServiceAccountError::Rejected("invalid_grant".into()))
        );
        assert_eq!(
            parse_token_response(br#"{"expires_in":3599,"token_type":"Bearer"}"#),
            Err(ServiceAccountError::MissingField("access_token"))
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"a","expires_in":1,"token_type":"MAC"}"#),
            Err(ServiceAccountError::InvalidField("token_type"))
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"a b","expires_in":1}"#),
            Err(ServiceAccountError::InvalidField("access_token"))
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"a"}"#),
            Err(ServiceAccountError::MissingField("expires_in"))
        );
        assert!(matches!(
            parse_token_response(b"<html>"),
            Err(ServiceAccountError::TokenResponseJson { .. })
        ));
    }
}
