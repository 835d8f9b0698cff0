//! The pure part of token minting: schedule, carry-over on reload, backoff, expiry; and SAS
//! minting. Plans are compiled through the real config code with a fake environment.

use super::*;

use std::net::SocketAddr;
use std::path::Path;

/// Config environment: every name resolves to one documentation address.
struct Env;

impl crate::config::TestEnvironment for Env {
    fn resolve(&self, _host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))])
    }
    fn system_roots(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        Vec::new()
    }
    fn available_cpus(&self) -> Option<usize> {
        Some(1)
    }
    fn open_files_limit(&self) -> Option<u64> {
        Some(1024)
    }
}

/// An Event Hubs destination "eh" (SAS, ttl `eh_ttl`), a Pub/Sub destination "ps" (OAuth2,
/// ttl 1 h) and a plain HTTPS one (no token).
fn plan_with(dir: &Path, eh_ttl: &str) -> Arc<Plan> {
    let ca = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/adapters/auth/testdata/google/test-service-account.json"),
        dir.join("sa.json"),
    )
    .unwrap();
    std::fs::write(dir.join("eh.key"), "not-base64-raw-key").unwrap();
    let text = format!(
        r#"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[credential]]
name = "eh-key"
kind = "azure-sas"
key_name = "send"
key = {{ file = "eh.key" }}

[[credential]]
name = "gcp"
kind = "gcp-service-account"
file = "sa.json"

[[destination]]
name = "plain"
adapter = "https"
endpoint = "a.test:443"
ca = "ca.pem"

[[destination]]
name = "eh"
adapter = "azure-event-hubs"
endpoint = "ns.servicebus.windows.net:443"
ca = "ca.pem"
namespace = "ns"
hub = "hub"
credential = "eh-key"
token_ttl = "{eh_ttl}"

[[destination]]
name = "ps"
adapter = "gcp-pubsub"
endpoint = "pubsub.googleapis.com:443"
ca = "ca.pem"
project = "p"
topic = "t"
credential = "gcp"

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "plain" }} ]
"#
    );
    let plan = crate::config::compile_for_tests(&text, dir, &Env);
    Arc::new(plan.unwrap_or_else(|e| panic!("{e}")))
}

fn id_of(plan: &Plan, name: &str) -> DestinationId {
    plan.destinations
        .iter()
        .find(|d| d.name == name)
        .unwrap()
        .id
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Start everything due at `now` and complete it: SAS really minted, OAuth2 with `oauth`.
fn round(
    tokens: &mut Tokens,
    now: SystemTime,
    oauth: impl Fn(SystemTime) -> Result<Minted, MintError>,
) -> Vec<(String, Outcome)> {
    tokens
        .start_due(now)
        .into_iter()
        .filter_map(|m| {
            let result = match &m.spec {
                TokenSpec::Sas { .. } => mint_sas(&m.spec, now),
                TokenSpec::GoogleOauth2 { .. } => oauth(now),
            };
            tokens.complete(m.attempt, result, now, 0.0)
        })
        .collect()
}

/// A fake OAuth2 endpoint answering `expires_in`.
fn bearer(expires_in: u64) -> impl Fn(SystemTime) -> Result<Minted, MintError> {
    move |now| {
        Ok(Minted {
            token: Token {
                authorization: "Bearer fake".into(),
                expires_at: now + secs(expires_in),
            },
            issued_at: now,
            lifetime: secs(expires_in).min(secs(3600)),
        })
    }
}

fn failing(now: SystemTime) -> Result<Minted, MintError> {
    let _ = now;
    Err(MintError::Status {
        host: "oauth2.test".into(),
        status: 500,
        code: None,
    })
}

#[test]
fn every_token_destination_is_due_at_start_and_renewal_is_at_80_percent() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "100s"), t0());
    assert_eq!(
        tokens.expiries().collect::<Vec<_>>(),
        [("eh", None), ("ps", None)]
    );
    assert_eq!(tokens.next_due(), Some(t0()));
    let out = round(&mut tokens, t0(), bearer(3600));
    assert_eq!(
        out,
        [
            (
                "eh".to_owned(),
                Outcome::Obtained {
                    first: true,
                    recovered_after: 0,
                    renew_at: t0() + secs(80),
                    expires_at: t0() + secs(100),
                }
            ),
            (
                "ps".to_owned(),
                Outcome::Obtained {
                    first: true,
                    recovered_after: 0,
                    renew_at: t0() + secs(2880),
                    expires_at: t0() + secs(3600),
                }
            ),
        ]
    );
    assert!(
        tokens.start_due(t0() + secs(79)).is_empty(),
        "nothing is due before 80 %"
    );
    assert_eq!(tokens.next_due(), Some(t0() + secs(80)));
    let due = tokens.start_due(t0() + secs(80));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].name, "eh");
    assert!(
        tokens.start_due(t0() + secs(80)).is_empty(),
        "a running mint is not started twice"
    );
    assert_eq!(tokens.next_due(), Some(t0() + secs(2880)), "only ps idles");
}

#[test]
fn an_oauth2_lifetime_shorter_than_the_ttl_schedules_the_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "1h"), t0());
    let out = round(&mut tokens, t0(), bearer(600));
    assert_eq!(
        out[1].1,
        Outcome::Obtained {
            first: true,
            recovered_after: 0,
            renew_at: t0() + secs(480),
            expires_at: t0() + secs(600),
        }
    );
    // A zero lifetime cannot make the loop spin.
    let later = t0() + secs(480);
    let out = round(&mut tokens, later, bearer(0));
    let Outcome::Obtained { renew_at, .. } = out[0].1 else {
        panic!("{out:?}")
    };
    assert_eq!(renew_at, later + MIN_RENEWAL);
}

#[test]
fn sas_tokens_are_minted_with_the_ttl_as_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_with(dir.path(), "100s");
    let spec = plan
        .destinations
        .iter()
        .find(|d| d.name == "eh")
        .and_then(|d| d.token.clone())
        .unwrap();
    let now = t0() + Duration::from_millis(700);
    let minted = mint_sas(&spec, now).unwrap();
    assert!(minted.token.authorization.starts_with(
        "SharedAccessSignature sr=https%3A%2F%2Fns.servicebus.windows.net%2Fhub&sig="
    ));
    let se = format!("&se={}&skn=send", 1_700_000_100);
    assert!(minted.token.authorization.ends_with(&se));
    assert_eq!(minted.token.expires_at, t0() + secs(100));
    assert_eq!((minted.issued_at, minted.lifetime), (now, secs(100)));
    // Same inputs, same token (the HMAC is deterministic).
    assert_eq!(mint_sas(&spec, now).unwrap(), minted);
    // An IoT Hub key must be base64.
    let TokenSpec::Sas {
        resource_uri,
        key_name,
        ttl,
        ..
    } = spec
    else {
        unreachable!()
    };
    let bad = TokenSpec::Sas {
        resource_uri,
        key: crate::policy::Secret(Bytes::from_static(b"not base64!")),
        key_is_base64: true,
        key_name,
        ttl,
    };
    assert_eq!(
        mint_sas(&bad, now),
        Err(MintError::Credential("SAS key is not valid base64".into()))
    );
}

#[test]
fn a_reload_keeps_unchanged_tokens_and_mints_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "100s"), t0());
    round(&mut tokens, t0(), bearer(3600));
    assert_eq!(tokens.take_unpushed(t0()).len(), 2);
    assert!(tokens.take_unpushed(t0()).is_empty(), "pushed once");
    let eh = tokens.token("eh").cloned().unwrap();
    let ps = tokens.token("ps").cloned().unwrap();

    // The same config compiled again: a new plan, equal specs. Nothing is due, the tokens stay
    // and are pushed again for the new plan.
    let t = t0() + secs(10);
    let plan = plan_with(dir.path(), "100s");
    tokens = Tokens::rebuild(tokens, plan.clone(), t);
    assert!(Arc::ptr_eq(tokens.plan(), &plan));
    assert!(tokens.start_due(t).is_empty());
    assert_eq!(tokens.next_due(), Some(t0() + secs(80)));
    assert_eq!(tokens.token("eh"), Some(&eh));
    let pushed = tokens.take_unpushed(t);
    assert_eq!(pushed.len(), 2);
    assert!(pushed.contains(&(id_of(&plan, "eh"), eh.clone())));

    // Event Hubs' ttl changes: its token is minted again at once; Pub/Sub's stays.
    let plan = plan_with(dir.path(), "200s");
    tokens = Tokens::rebuild(tokens, plan, t);
    assert_eq!(tokens.token("eh"), None);
    assert_eq!(tokens.token("ps"), Some(&ps));
    let due = tokens.start_due(t);
    assert_eq!(
        due.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["eh"]
    );
}

#[test]
fn a_mint_in_flight_lands_after_a_reload_unless_its_spec_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "100s"), t0());
    let due = tokens.start_due(t0());
    let (eh, ps) = (&due[0], &due[1]);
    tokens = Tokens::rebuild(tokens, plan_with(dir.path(), "200s"), t0());
    // ps is unchanged: its answer is still awaited.
    assert!(tokens
        .complete(ps.attempt, bearer(3600)(t0()), t0(), 0.0)
        .is_some());
    // eh changed: the old answer is dropped, and a new mint is due.
    assert!(tokens
        .complete(eh.attempt, mint_sas(&eh.spec, t0()), t0(), 0.0)
        .is_none());
    assert_eq!(tokens.token("eh"), None);
    assert_eq!(tokens.start_due(t0()).len(), 1);
}

#[test]
fn failures_keep_the_last_token_and_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "1h"), t0());
    round(&mut tokens, t0(), bearer(3600));
    tokens.take_unpushed(t0());
    let token = tokens.token("ps").cloned().unwrap();

    // Renewal at 80 % fails: 1 s, 2 s, 4 s … (jitter 0 halves them), the token stays.
    let mut t = t0() + secs(2880);
    let mut delays = Vec::new();
    for n in 1..=8u32 {
        let m = tokens
            .start_due(t)
            .into_iter()
            .find(|m| m.name == "ps")
            .unwrap();
        let (_, outcome) = tokens.complete(m.attempt, failing(t), t, 0.0).unwrap();
        let Outcome::Failed {
            failures,
            retry_at,
            token_valid,
            streak_change,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(failures, n);
        assert!(token_valid);
        assert_eq!(streak_change, n == 1, "one warning per streak");
        assert_eq!(tokens.token("ps"), Some(&token), "the last token stays");
        delays.push(retry_at.duration_since(t).unwrap().as_millis());
        t = retry_at;
    }
    assert_eq!(
        delays,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
        "1 s doubling to 60 s, times 0.5 at jitter 0"
    );
    assert!(tokens.take_unpushed(t).is_empty(), "nothing new to push");

    // A success ends the streak.
    let m = tokens.start_due(t).pop().unwrap();
    let (_, outcome) = tokens.complete(m.attempt, bearer(3600)(t), t, 0.0).unwrap();
    assert!(matches!(
        outcome,
        Outcome::Obtained {
            first: false,
            recovered_after: 8,
            ..
        }
    ));
    assert_eq!(tokens.take_unpushed(t).len(), 1);
}

#[test]
fn backoff_is_jittered_between_half_and_full() {
    assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
    assert_eq!(
        backoff(1, 0.999_999),
        Duration::from_micros(999_999) + Duration::from_nanos(500)
    );
    assert_eq!(backoff(3, 0.5), Duration::from_secs(3));
    assert_eq!(backoff(7, 1.0), secs(60));
    assert_eq!(backoff(u32::MAX, 1.0), secs(60));
    for _ in 0..100 {
        let j = jitter();
        assert!((0.0..1.0).contains(&j), "{j}");
    }
}

#[test]
fn retries_come_before_the_token_expires_and_not_in_a_tight_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "1h"), t0());
    round(&mut tokens, t0(), bearer(3600));
    let expiry = t0() + secs(3600);
    // Both renew at 2880 s; eh succeeds (and is out of the way until long after), ps fails.
    let due = tokens.start_due(t0() + secs(2880));
    let (eh, ps) = (&due[0], &due[1]);
    tokens.complete(eh.attempt, mint_sas(&eh.spec, expiry), expiry, 0.0);
    // 20 s before expiry, the 6th failure's backoff (~32 s) would retry after expiry: it is
    // pulled in to 1 s before.
    let t = expiry - secs(20);
    let mut attempt = ps.attempt;
    let mut last = None;
    for _ in 0..6 {
        let (_, o) = tokens.complete(attempt, failing(t), t, 0.99).unwrap();
        last = Some(o);
        attempt = tokens.start_due(expiry - secs(1)).pop().unwrap().attempt;
    }
    let Some(Outcome::Failed {
        failures, retry_at, ..
    }) = last
    else {
        panic!("{last:?}")
    };
    assert_eq!(failures, 6);
    assert_eq!(retry_at, expiry - secs(1));
    // Half a second before expiry: not sooner than MIN_RETRY.
    let t = expiry - Duration::from_millis(500);
    let (_, o) = tokens.complete(attempt, failing(t), t, 0.0).unwrap();
    let Outcome::Failed {
        retry_at,
        token_valid,
        streak_change,
        ..
    } = o
    else {
        panic!()
    };
    assert!(token_valid);
    assert!(!streak_change);
    assert_eq!(retry_at, t + MIN_RETRY);
}

#[test]
fn after_expiry_the_token_is_not_pushed_and_the_streak_warns_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens = Tokens::new(plan_with(dir.path(), "1h"), t0());
    round(&mut tokens, t0(), bearer(60));
    tokens.take_unpushed(t0());
    let t = t0() + secs(48);
    let m = tokens.start_due(t).into_iter().find(|m| m.name == "ps");
    let (_, o) = tokens
        .complete(m.unwrap().attempt, failing(t), t, 0.0)
        .unwrap();
    assert!(matches!(
        o,
        Outcome::Failed {
            token_valid: true,
            streak_change: true,
            ..
        }
    ));
    // The token expired meanwhile: the next failure is a streak change (devices now get 503).
    let t = t0() + secs(61);
    let m = tokens.start_due(t).into_iter().find(|m| m.name == "ps");
    let (_, o) = tokens
        .complete(m.unwrap().attempt, failing(t), t, 0.0)
        .unwrap();
    let Outcome::Failed {
        failures,
        retry_at,
        token_valid,
        streak_change,
    } = o
    else {
        panic!()
    };
    assert_eq!((failures, token_valid, streak_change), (2, false, true));
    assert_eq!(retry_at, t + secs(1), "plain backoff once expired");
    assert_eq!(
        tokens.expiries().find(|(n, _)| *n == "ps").unwrap().1,
        Some(t0() + secs(60)),
        "the expired token's expiry is still reported (the gauge reads 0)"
    );
    // A push after expiry leaves the expired token out.
    tokens.mark_unpushed(&[id_of(tokens.plan(), "ps")]);
    assert!(tokens.take_unpushed(t).is_empty());
    // The next success is a first token again.
    let m = tokens
        .start_due(retry_at)
        .into_iter()
        .find(|m| m.name == "ps");
    let (_, o) = tokens
        .complete(m.unwrap().attempt, bearer(60)(retry_at), retry_at, 0.0)
        .unwrap();
    assert!(matches!(
        o,
        Outcome::Obtained {
            first: true,
            recovered_after: 2,
            ..
        }
    ));
}

#[test]
fn errors_name_the_host_and_status_only() {
    let e = MintError::Status {
        host: "oauth2.googleapis.com".into(),
        status: 400,
        code: Some("invalid_grant".into()),
    };
    assert_eq!(
        e.to_string(),
        "token endpoint oauth2.googleapis.com answered 400 (invalid_grant)"
    );
}
