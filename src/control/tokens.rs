//! Minting and renewal of the destinations' rotating cloud tokens (Azure SAS, Google OAuth2
//! bearer) on the control thread, pushed to the shards as data.
//!
//! ```text
//!  control thread (tokio)                                              shards
//!  run(): due ──► Sas: adapters::auth::sas::token (instant, inline)
//!             └─► GoogleOauth2: fetch_oauth2 (task: RS256 assertion, POST token_uri over
//!                 HTTPS, 10 s timeout) ──result──► Tokens::complete
//!         new tokens ──► Control::apply_tokens ──ShardCommand::SetTokens (acked)──► token store
//! ```
//!
//! [`Tokens`] is the pure part (no IO, no clock: time and jitter are passed in): one entry per
//! destination of the current plan that has a [`TokenSpec`], holding the current token, when
//! it is due for renewal, whether a mint is in flight and how many mints failed in a row.
//!
//! - **Renewal** is due at `issued_at + 80 %` of the token's lifetime (SAS: `token_ttl`;
//!   OAuth2: the `expires_in` the endpoint answered, capped by `token_ttl`), and never sooner
//!   than [`MIN_RENEWAL`] after issue (an endpoint answering `expires_in: 0` cannot make the
//!   loop spin).
//! - **Failure** keeps the last token (shards keep using it while it is valid), counts, and
//!   retries after a backoff: 1 s doubling per consecutive failure up to 60 s, scaled by a
//!   jitter factor in `[0.5, 1.0)`. While a token is still valid the retry is pulled in to no
//!   later than 1 s before it expires (so one last attempt happens in time), but never sooner
//!   than [`MIN_RETRY`] from now. After expiry the shards answer devices 503 with
//!   `Retry-After` (the shard side does that; this module only stops having a valid token).
//! - **Reload**: [`Tokens::rebuild`] keeps the token, schedule and failure streak of every
//!   destination whose name and `TokenSpec` are unchanged (no re-mint; a mint in flight for it
//!   still lands); new or changed ones are due at once. Carried tokens are pushed again for the
//!   new plan (the shards carry them across a reload too; this is belt and braces).
//!
//! [`run`] is the driver on the control runtime, rebuilt on every plan update like
//! [`super::resolve::run`]. It counts refreshes per destination
//! (`simgate_credential_refresh_total`) and records each token's expiry
//! (`simgate_credential_token_expiry_seconds`) in [`Control`].
//!
//! What this does not do: block a shard (shards only ever receive finished tokens), retry a
//! push forever in a tight loop (a failed push is retried after a second), refresh static
//! credentials (Basic, fixed bearer, SigV4 keys sign per request in the shard), or log
//! secrets: the token, the assertion and the keys never appear in logs or errors, which name the
//! destination, the token URI's host and the HTTP status or error kind only.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::adapters::auth::google::{self, ServiceAccount};
use crate::adapters::auth::sas::{self, SasKey, SasKeyEncoding};
use crate::policy::cloud::{Token, TokenSpec};
use crate::policy::{DestinationId, Plan};

use super::Control;

/// Renewal falls due at this fraction of a token's lifetime.
const RENEW_AT_PERCENT: u32 = 80;
/// Earliest renewal after a token was issued.
pub const MIN_RENEWAL: Duration = Duration::from_secs(1);
/// First retry delay after a failure (before jitter).
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest retry delay (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A retry while the token is still valid happens at least this long before it expires.
const RETRY_BEFORE_EXPIRY: Duration = Duration::from_secs(1);
/// Shortest retry delay, whatever the expiry.
pub const MIN_RETRY: Duration = Duration::from_millis(250);
/// Longest a token request may take, connect to last body byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest token endpoint answer read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Google's limit for a JWT assertion's lifetime.
const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a token could not be minted. Never contains a secret: errors name the token URI's host,
/// the HTTP status and OAuth2 error code, or the kind of failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintError {
    /// The credential is unusable (the text names the field or the step, never the value).
    Credential(String),
    /// The token URI is not an `https://host[:port]/path` URL.
    TokenUri,
    /// The token URI's host did not resolve.
    Resolve {
        /// The host.
        host: String,
        /// The resolver's reason.
        error: String,
    },
    /// No TCP connection to any address of the host.
    Connect {
        /// The host.
        host: String,
        /// The socket error's kind.
        kind: std::io::ErrorKind,
    },
    /// The TLS handshake failed (certificate not trusted, …).
    Tls {
        /// The host.
        host: String,
        /// rustls's reason.
        error: String,
    },
    /// The HTTP exchange failed (connection closed, malformed answer, answer too large).
    Http {
        /// The host.
        host: String,
        /// The reason.
        error: String,
    },
    /// No answer within [`FETCH_TIMEOUT`].
    Timeout {
        /// The host.
        host: String,
    },
    /// The endpoint answered a status other than 2xx.
    Status {
        /// The host.
        host: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth2 `error` code of the answer, if it had one.
        code: Option<String>,
    },
    /// A 2xx answer that is not a usable token response.
    Response {
        /// The host.
        host: String,
        /// What was wrong (names the field).
        error: String,
    },
}

impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MintError::Credential(why) => write!(f, "credential unusable: {why}"),
            MintError::TokenUri => f.write_str("token_uri is not an https:// URL with a host"),
            MintError::Resolve { host, error } => {
                write!(f, "token endpoint {host}: name resolution failed: {error}")
            }
            MintError::Connect { host, kind } => {
                write!(f, "token endpoint {host}: connect failed: {kind}")
            }
            MintError::Tls { host, error } => {
                write!(f, "token endpoint {host}: TLS failed: {error}")
            }
            MintError::Http { host, error } => {
                write!(f, "token endpoint {host}: HTTP failed: {error}")
            }
            MintError::Timeout { host } => write!(
                f,
                "token endpoint {host}: no answer within {} s",
                FETCH_TIMEOUT.as_secs()
            ),
            MintError::Status { host, status, code } => {
                write!(f, "token endpoint {host} answered {status}")?;
                if let Some(code) = code {
                    write!(f, " ({code})")?;
                }
                Ok(())
            }
            MintError::Response { host, error } => {
                write!(f, "token endpoint {host}: unusable answer: {error}")
            }
        }
    }
}

impl std::error::Error for MintError {}

/// A freshly minted token and what its renewal is scheduled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The token, as the shards get it.
    pub token: Token,
    /// When minting started (the token's lifetime counts from here, conservatively).
    pub issued_at: SystemTime,
    /// The lifetime renewal is scheduled on (80 % of it): `token_ttl` for SAS, the answered
    /// `expires_in` capped by `token_ttl` for OAuth2.
    pub lifetime: Duration,
}

/// A mint to run, as handed out by [`Tokens::start_due`].
#[derive(Debug, Clone)]
pub struct Mint {
    /// Identifies this attempt for [`Tokens::complete`].
    pub attempt: u64,
    /// The destination's name (for logs).
    pub name: String,
    /// How to mint.
    pub spec: TokenSpec,
    /// The destination's TLS config (roots for the token endpoint).
    pub tls: Arc<rustls::ClientConfig>,
}

/// What one completed mint means for its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A token was obtained.
    Obtained {
        /// The destination had no token before (first one, or the previous one expired).
        first: bool,
        /// Failures in a row that this success ended (0: none).
        recovered_after: u32,
        /// When the next renewal falls due.
        renew_at: SystemTime,
        /// When the new token expires.
        expires_at: SystemTime,
    },
    /// Minting failed; the last token (if any) stays.
    Failed {
        /// Failures in a row, this one included.
        failures: u32,
        /// When the next attempt falls due.
        retry_at: SystemTime,
        /// Whether the kept token is still valid at the time of failure.
        token_valid: bool,
        /// Whether this failure starts a streak or changes its nature (the kept token expired
        /// since the last failure): the moments worth a warning.
        streak_change: bool,
    },
}

#[derive(Debug)]
struct Entry {
    destination: DestinationId,
    name: String,
    spec: TokenSpec,
    tls: Arc<rustls::ClientConfig>,
    token: Option<Token>,
    due: SystemTime,
    in_flight: Option<u64>,
    failures: u32,
    last_failure_had_valid_token: bool,
    unpushed: bool,
}

/// The token-carrying destinations of one plan and the state of their tokens.
#[derive(Debug)]
pub struct Tokens {
    plan: Arc<Plan>,
    entries: Vec<Entry>,
    next_attempt: u64,
}

impl Tokens {
    /// One entry per destination of `plan` with a token, every one due at `now`.
    pub fn new(plan: Arc<Plan>, now: SystemTime) -> Tokens {
        Tokens::rebuild(
            Tokens {
                plan: plan.clone(),
                entries: Vec::new(),
                next_attempt: 0,
            },
            plan,
            now,
        )
    }

    /// Entries for `plan`, keeping the state of `old`'s entries whose destination name and
    /// `TokenSpec` are unchanged (their tokens are marked for pushing again, to the new plan);
    /// the others are due at `now`.
    pub fn rebuild(old: Tokens, plan: Arc<Plan>, now: SystemTime) -> Tokens {
        let mut old_entries = old.entries;
        let entries = plan
            .destinations
            .iter()
            .filter_map(|d| {
                let spec = d.token.clone()?;
                let kept = old_entries
                    .iter()
                    .position(|e| e.name == d.name && e.spec == spec)
                    .map(|i| old_entries.swap_remove(i));
                Some(match kept {
                    Some(e) => Entry {
                        destination: d.id,
                        tls: d.tls.clone(),
                        unpushed: e.token.is_some(),
                        ..e
                    },
                    None => Entry {
                        destination: d.id,
                        name: d.name.clone(),
                        spec,
                        tls: d.tls.clone(),
                        token: None,
                        due: now,
                        in_flight: None,
                        failures: 0,
                        last_failure_had_valid_token: false,
                        unpushed: false,
                    },
                })
            })
            .collect();
        Tokens {
            plan,
            entries,
            next_attempt: old.next_attempt,
        }
    }

    /// The plan these entries belong to.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Each destination's name and the expiry of its current token (`None`: no token yet).
    pub fn expiries(&self) -> impl Iterator<Item = (&str, Option<SystemTime>)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), e.token.as_ref().map(|t| t.expires_at)))
    }

    /// The current token of destination `name`, if any (valid or not).
    pub fn token(&self, name: &str) -> Option<&Token> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.token.as_ref())
    }

    /// Mints due at `now` that are not already running; each is marked running until its
    /// [`Tokens::complete`].
    pub fn start_due(&mut self, now: SystemTime) -> Vec<Mint> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if e.in_flight.is_none() && e.due <= now {
                let attempt = self.next_attempt;
                self.next_attempt += 1;
                e.in_flight = Some(attempt);
                out.push(Mint {
                    attempt,
                    name: e.name.clone(),
                    spec: e.spec.clone(),
                    tls: e.tls.clone(),
                });
            }
        }
        out
    }

    /// When the next mint that is not running falls due (`None`: nothing to mint, or every
    /// mint is running).
    pub fn next_due(&self) -> Option<SystemTime> {
        self.entries
            .iter()
            .filter(|e| e.in_flight.is_none())
            .map(|e| e.due)
            .min()
    }

    /// Record the result of mint `attempt`, finished at `now`; `jitter` in `[0, 1)` spreads the
    /// retry of a failure. `None`: nothing waits for this attempt any more (a reload dropped or
    /// changed its destination).
    pub fn complete(
        &mut self,
        attempt: u64,
        result: Result<Minted, MintError>,
        now: SystemTime,
        jitter: f64,
    ) -> Option<(String, Outcome)> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.in_flight == Some(attempt))?;
        e.in_flight = None;
        let outcome = match result {
            Ok(minted) => {
                let first = !e.token.as_ref().is_some_and(|t| t.valid_at(now));
                let recovered_after = std::mem::take(&mut e.failures);
                let renew_in = (minted.lifetime * RENEW_AT_PERCENT / 100).max(MIN_RENEWAL);
                e.due = minted.issued_at + renew_in;
                e.token = Some(minted.token);
                e.unpushed = true;
                Outcome::Obtained {
                    first,
                    recovered_after,
                    renew_at: e.due,
                    expires_at: e.token.as_ref().map_or(now, |t| t.expires_at),
                }
            }
            Err(_) => {
                e.failures = e.failures.saturating_add(1);
                let token_valid = e.token.as_ref().is_some_and(|t| t.valid_at(now));
                let streak_change =
                    e.failures == 1 || (e.last_failure_had_valid_token && !token_valid);
                e.last_failure_had_valid_token = token_valid;
                let mut retry_at = now + backoff(e.failures, jitter);
                if let Some(t) = e.token.as_ref().filter(|_| token_valid) {
                    let latest = t
                        .expires_at
                        .checked_sub(RETRY_BEFORE_EXPIRY)
                        .unwrap_or(t.expires_at);
                    retry_at = retry_at.min(latest).max(now + MIN_RETRY);
                }
                e.due = retry_at;
                Outcome::Failed {
                    failures: e.failures,
                    retry_at,
                    token_valid,
                    streak_change,
                }
            }
        };
        Some((e.name.clone(), outcome))
    }

    /// Tokens obtained (or carried over a reload) that the shards of this plan have not been
    /// sent yet, still valid at `now`; they count as sent from now on.
    pub fn take_unpushed(&mut self, now: SystemTime) -> Vec<(DestinationId, Token)> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if std::mem::take(&mut e.unpushed) {
                if let Some(t) = e.token.as_ref().filter(|t| t.valid_at(now)) {
                    out.push((e.destination, t.clone()));
                }
            }
        }
        out
    }

    /// The push of `destinations`' tokens failed: send them again next time.
    pub fn mark_unpushed(&mut self, destinations: &[DestinationId]) {
        for e in &mut self.entries {
            if destinations.contains(&e.destination) {
                e.unpushed = true;
            }
        }
    }
}

/// Retry delay after `failures` consecutive failures: 1 s doubling to 60 s, times
/// `0.5 + jitter / 2` (`jitter` in `[0, 1)`).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = BACKOFF_START
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// A jitter factor in `[0, 1)` from std's per-instance random hasher keys (no `rand` crate;
/// quality does not matter here, only that gateways do not retry in lockstep).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An Azure SAS token for `spec` (which must be [`TokenSpec::Sas`]), valid `ttl` from `now`
/// (to the whole second, as `se` carries it). Synchronous and instant.
pub fn mint_sas(spec: &TokenSpec, now: SystemTime) -> Result<Minted, MintError> {
    let TokenSpec::Sas {
        resource_uri,
        key,
        key_is_base64,
        key_name,
        ttl,
    } = spec
    else {
        return Err(MintError::Credential("not a SAS credential".into()));
    };
    let key_text = std::str::from_utf8(&key.0)
        .map_err(|_| MintError::Credential("SAS key is not UTF-8 text".into()))?;
    let encoding = if *key_is_base64 {
        SasKeyEncoding::Base64
    } else {
        SasKeyEncoding::Raw
    };
    let key = SasKey::new(key_text, encoding).map_err(|e| MintError::Credential(e.to_string()))?;
    let expiry = unix_seconds(now + *ttl);
    let authorization = sas::token(resource_uri, &key, key_name.as_deref(), expiry);
    Ok(Minted {
        token: Token {
            authorization: authorization.into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(expiry),
        },
        issued_at: now,
        lifetime: *ttl,
    })
}

/// A Google OAuth2 access token (JWT bearer grant): signs the RS256 assertion (`iat` = `now`,
/// lifetime `min(ttl, 1 h)`, audience = `token_uri`), POSTs it form-encoded to `token_uri` over
/// HTTPS (HTTP/1.1, the server verified with `tls`'s roots; the name resolved like the
/// destinations', test hosts file included) and reads the answer. The token expires `expires_in`
/// after `now`; renewal is scheduled on `min(expires_in, ttl)`. The whole exchange is bounded
/// by [`FETCH_TIMEOUT`].
pub async fn fetch_oauth2(
    tls: Arc<rustls::ClientConfig>,
    service_account: &[u8],
    token_uri: &str,
    scope: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Minted, MintError> {
    let account = ServiceAccount::from_json(service_account)
        .map_err(|e| MintError::Credential(format!("service account: {e}")))?;
    let uri: hyper::Uri = token_uri.parse().map_err(|_| MintError::TokenUri)?;
    if uri.scheme_str() != Some("https") {
        return Err(MintError::TokenUri);
    }
    let authority = uri.authority().ok_or(MintError::TokenUri)?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(MintError::TokenUri);
    }
    let port = authority.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let lifetime = ttl.min(MAX_ASSERTION_LIFETIME).as_secs().max(1);
    let assertion = account
        .assertion(scope, token_uri, unix_seconds(now), lifetime)
        .map_err(|e| MintError::Credential(format!("assertion: {e}")))?;
    let body = google::token_request_body(&assertion);
    drop(assertion);

    let exchange = post_form(tls, &host, port, authority.as_str(), &path, body);
    let (status, answer) = match tokio::time::timeout(FETCH_TIMEOUT, exchange).await {
        Ok(r) => r?,
        Err(_) => return Err(MintError::Timeout { host }),
    };
    if !(200..300).contains(&status) {
        let code = match google::parse_token_response(&answer) {
            Err(google::ServiceAccountError::Rejected(code)) => Some(code),
            _ => None,
        };
        return Err(MintError::Status { host, status, code });
    }
    let access = google::parse_token_response(&answer).map_err(|e| MintError::Response {
        host: host.clone(),
        error: e.to_string(),
    })?;
    let expires_in = Duration::from_secs(access.expires_in_s);
    Ok(Minted {
        token: Token {
            authorization: format!("Bearer {}", access.token).into(),
            expires_at: now + expires_in,
        },
        issued_at: now,
        lifetime: expires_in.min(ttl),
    })
}

/// POST `body` as a form to `https://{authority}{path}`; the status and the body (at most
/// [`MAX_RESPONSE_BYTES`]).
async fn post_form(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    authority: &str,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), MintError> {
    let host_owned = host.to_owned();
    let addrs =
        tokio::task::spawn_blocking(move || crate::config::resolve_system(&host_owned, port))
            .await
            .map_err(|_| MintError::Resolve {
                host: host.to_owned(),
                error: "lookup task failed".into(),
            })?
            .map_err(|error| MintError::Resolve {
                host: host.to_owned(),
                error,
            })?;
    let mut last = std::io::ErrorKind::NotFound;
    let mut stream = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.kind(),
        }
    }
    let Some(tcp) = stream else {
        return Err(MintError::Connect {
            host: host.to_owned(),
            kind: last,
        });
    };
    let _ = tcp.set_nodelay(true);
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| MintError::TokenUri)?;
    let tls_stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| MintError::Tls {
            host: host.to_owned(),
            error: e.to_string(),
        })?;
    let http_err = |e: &dyn std::fmt::Display| MintError::Http {
        host: host.to_owned(),
        error: e.to_string(),
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls_stream))
            .await
            .map_err(|e| http_err(&e))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("simgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http_err(&e))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_err(&e))?;
        let status = response.status().as_u16();
        let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        Ok((status, answer))
    }
    .await;
    driver.abort();
    result
}

/// Longest sleep when nothing is due (a plan update wakes the loop anyway).
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// Wait before pushing again tokens the shards did not acknowledge.
const PUSH_RETRY: Duration = Duration::from_secs(1);

/// The minting loop; runs on the control thread's runtime until the gateway stops publishing
/// plans. Everything due at start (every token) is minted at once, so SAS tokens reach the
/// shards within milliseconds.
pub async fn run(control: Arc<Control>) {
    let mut plans = control.plan_updates();
    let mut tokens = Tokens::new(plans.borrow_and_update().clone(), SystemTime::now());
    control.record_credentials(tokens.expiries());
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(u64, Result<Minted, MintError>)>();
    let mut push_failed = false;
    loop {
        let now = SystemTime::now();
        for mint in tokens.start_due(now) {
            match &mint.spec {
                TokenSpec::Sas { .. } => {
                    let result = mint_sas(&mint.spec, now);
                    finish(&control, &mut tokens, mint.attempt, result);
                }
                TokenSpec::GoogleOauth2 {
                    service_account,
                    token_uri,
                    scope,
                    ttl,
                } => {
                    let done = done_tx.clone();
                    let (sa, uri, scope, ttl) = (
                        service_account.0.clone(),
                        token_uri.clone(),
                        scope.clone(),
                        *ttl,
                    );
                    tracing::debug!(destination = %mint.name, "requesting a cloud token");
                    tokio::spawn(async move {
                        let result = fetch_oauth2(mint.tls, &sa, &uri, &scope, ttl, now).await;
                        let _ = done.send((mint.attempt, result));
                    });
                }
            }
        }
        let batch = tokens.take_unpushed(SystemTime::now());
        if !batch.is_empty() {
            let ids: Vec<DestinationId> = batch.iter().map(|(d, _)| *d).collect();
            let (c, plan) = (control.clone(), tokens.plan().clone());
            let pushed = tokio::task::spawn_blocking(move || c.apply_tokens(&plan, batch)).await;
            push_failed = false;
            match pushed {
                // Ok(false): a reload replaced the plan; the rebuild pushes again.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cloud tokens not applied on every shard; retrying");
                    tokens.mark_unpushed(&ids);
                    push_failed = true;
                }
                Err(_) => {
                    tracing::error!("cloud token push task failed; retrying");
                    tokens.mark_unpushed(&ids);
                    push_failed = true;
                }
            }
        }
        control.record_credentials(tokens.expiries());

        let mut wake_at = tokens.next_due().map_or(Instant::now() + IDLE_WAIT, |due| {
            Instant::now() + due.duration_since(SystemTime::now()).unwrap_or_default()
        });
        if push_failed {
            wake_at = wake_at.min(Instant::now() + PUSH_RETRY);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                let plan = plans.borrow_and_update().clone();
                tokens = Tokens::rebuild(tokens, plan, SystemTime::now());
                control.record_credentials(tokens.expiries());
            }
            Some((attempt, result)) = done_rx.recv() => {
                finish(&control, &mut tokens, attempt, result);
            }
        }
    }
}

/// Record, count and log one mint's result.
fn finish(control: &Control, tokens: &mut Tokens, attempt: u64, result: Result<Minted, MintError>) {
    let now = SystemTime::now();
    let error = result.as_ref().err().cloned();
    let Some((name, outcome)) = tokens.complete(attempt, result, now, jitter()) else {
        return; // A reload dropped or changed this destination meanwhile.
    };
    let in_s = |t: SystemTime| t.duration_since(now).unwrap_or_default().as_secs_f64();
    match outcome {
        Outcome::Obtained {
            first,
            recovered_after,
            renew_at,
            expires_at,
        } => {
            control.count_credential(&name, true);
            let expires_in_s = (in_s(expires_at) * 10.0).round() / 10.0;
            let renew_in_s = (in_s(renew_at) * 10.0).round() / 10.0;
            if first || recovered_after > 0 {
                tracing::info!(
                    destination = %name,
                    expires_in_s,
                    renew_in_s,
                    after_failures = recovered_after,
                    "cloud token obtained"
                );
            } else {
                tracing::debug!(destination = %name, expires_in_s, renew_in_s, "cloud token renewed");
            }
        }
        Outcome::Failed {
            failures,
            retry_at,
            token_valid,
            streak_change,
        } => {
            control.count_credential(&name, false);
            let error = error.map(|e| e.to_string()).unwrap_or_default();
            let retry_in_s = (in_s(retry_at) * 10.0).round() / 10.0;
            if streak_change && token_valid {
                tracing::warn!(
                    destination = %name,
                    %error,
                    failures,
                    retry_in_s,
                    "cloud token renewal failed; the current token stays in use until it expires"
                );
            } else if streak_change {
                tracing::warn!(
                    destination = %name,
                    %error,
                    failures,
                    retry_in_s,
                    "no valid cloud token; devices get 503 with Retry-After until one is obtained"
                );
            } else {
                tracing::debug!(destination = %name, %error, failures, retry_in_s, "cloud token still failing");
            }
        }
    }
}

#[cfg(test)]
mod tests;
