//! Cloud token minting (`control::tokens`) against the contract sink
//! (`tests/python/cloud_sink.py`), whose `POST /token` verifies the RS256 assertion with Google's
//! own library (google-auth) and issues access tokens its Pub/Sub endpoint then accepts.
//!
//! - `oauth2_fetch_obtains_a_token_and_a_failure_keeps_it`: [`fetch_oauth2`] run directly with
//!   the TLS config of a compiled `gcp-pubsub` destination (the sink's certificate verified by
//!   the destination's `ca`), its result fed to the pure [`Tokens`] state: a token is obtained;
//!   a forced 500 is an error naming the status, the old token stays.
//! - `simgate_renews_the_token_and_counts_failures`: a real `simgate run` with a Pub/Sub
//!   destination and `token_ttl = "2s"`: devices are forwarded with the minted bearer token;
//!   two forced 500s show as `simgate_credential_refresh_total{result="error"}` while devices
//!   keep getting through with the old token, and renewal resumes.
//!
//! What this does not cover: the real Google endpoint (needs an account and the network), or a
//! token expiring for good under load (the shard's 503 is tested with the shard).
//!
//! Needs python3 with the vendors' libraries (`pip install google-auth cryptography botocore
//! azure-iot-device azure-eventhub`; scripts/test.sh installs them when missing) and curl.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::cloud_sink::CloudSink;
use common::promtool_check;
use simgate::control::tokens::{fetch_oauth2, MintError, Outcome, Tokens};
use simgate::policy::cloud::TokenSpec;
use simgate::testkit::TestPki;

/// The contract sink with a Pub/Sub section whose tokens live `token_ttl_s`.
fn start_sink(dir: &Path, token_ttl_s: u64) -> CloudSink {
    let pki = TestPki::new(dir).expect("pki");
    CloudSink::start(
        dir,
        &pki,
        serde_json::json!({"gcp": {"project": "p", "topic": "t", "token_ttl_s": token_ttl_s}}),
    )
}

/// A config with one HTTP listener and a `gcp-pubsub` destination at the sink.
fn config(sink: &CloudSink, token_ttl: &str) -> String {
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[credential]]
name = "gcp"
kind = "gcp-service-account"
file = "{sa}"

[[destination]]
name = "pubsub"
adapter = "gcp-pubsub"
endpoint = "127.0.0.1:{port}"
server_name = "localhost"
ca = "{ca}"
project = "p"
topic = "t"
credential = "gcp"
token_uri = "{token_uri}"
token_ttl = "{token_ttl}"

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "pubsub" }} ]
"#,
        sa = sink.service_account.display(),
        port = sink.port,
        ca = sink.ca.display(),
        token_uri = sink.url("/token"),
    )
}

#[test]
fn oauth2_fetch_obtains_a_token_and_a_failure_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = start_sink(dir.path(), 120);
    let plan = simgate::config::compile_str(&config(&sink, "60s"), dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = Arc::new(plan);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut tokens = Tokens::new(plan, SystemTime::now());

    // One round: start what is due, fetch it for real, record the result.
    let round = |tokens: &mut Tokens| -> (Result<(), MintError>, Outcome) {
        let now = SystemTime::now();
        let due = tokens.next_due().expect("something to mint");
        let mint = tokens.start_due(due.max(now)).pop().expect("a mint is due");
        let TokenSpec::GoogleOauth2 {
            service_account,
            token_uri,
            scope,
            ttl,
        } = &mint.spec
        else {
            panic!("not OAuth2: {:?}", mint.spec)
        };
        let result = runtime.block_on(fetch_oauth2(
            mint.tls.clone(),
            &service_account.0,
            token_uri,
            scope,
            *ttl,
            now,
        ));
        let status = result.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Ok(m) = &result {
            // Expiry is the sink's expires_in (120 s); renewal is scheduled on the ttl (60 s).
            assert_eq!(m.token.expires_at, now + Duration::from_secs(120));
            assert_eq!(m.lifetime, Duration::from_secs(60));
            assert!(m.token.authorization.starts_with("Bearer ya29.sink-"));
        }
        let (_, outcome) = tokens
            .complete(mint.attempt, result, SystemTime::now(), 0.0)
            .expect("the attempt is awaited");
        (status, outcome)
    };

    let (status, outcome) = round(&mut tokens);
    assert_eq!(status, Ok(()), "google-auth accepted the assertion");
    assert!(
        matches!(outcome, Outcome::Obtained { first: true, .. }),
        "{outcome:?}"
    );
    assert_eq!(sink.tokens_issued(), 1);
    let first = tokens.token("pubsub").cloned().expect("a token");

    // The renewal (due at 80 % of the 60 s ttl; the test passes that time in rather than
    // waiting) meets a failing endpoint: an error naming the host and the status, and the
    // token stays.
    sink.fail("token", 500, 1, None);
    let now = SystemTime::now();
    assert!(tokens.start_due(now + Duration::from_secs(47)).is_empty());
    let mint = tokens
        .start_due(now + Duration::from_secs(48))
        .pop()
        .expect("renewal due at 80 % of 60 s");
    let TokenSpec::GoogleOauth2 {
        service_account,
        token_uri,
        scope,
        ttl,
    } = &mint.spec
    else {
        unreachable!()
    };
    let result = runtime.block_on(fetch_oauth2(
        mint.tls.clone(),
        &service_account.0,
        token_uri,
        scope,
        *ttl,
        now,
    ));
    let error = result.clone().expect_err("the sink answered 500");
    assert_eq!(
        error,
        MintError::Status {
            host: "127.0.0.1".into(),
            status: 500,
            code: Some("internal_failure".into()),
        }
    );
    assert_eq!(
        error.to_string(),
        "token endpoint 127.0.0.1 answered 500 (internal_failure)"
    );
    let (_, outcome) = tokens
        .complete(mint.attempt, result, now, 0.0)
        .expect("awaited");
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                failures: 1,
                token_valid: true,
                streak_change: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(tokens.token("pubsub"), Some(&first), "the old token stays");
    assert_eq!(sink.tokens_issued(), 1);

    // The retry (1 s later at most) gets a new token.
    let (status, outcome) = round(&mut tokens);
    assert_eq!(status, Ok(()));
    assert!(
        matches!(
            outcome,
            Outcome::Obtained {
                first: false,
                recovered_after: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_ne!(tokens.token("pubsub"), Some(&first));
    assert_eq!(sink.tokens_issued(), 2);
}

#[test]
fn oauth2_fetch_refuses_an_untrusted_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = start_sink(dir.path(), 120);
    // Trust another CA than the sink's.
    let other = TestPki::new(&dir.path().join("other")).expect("other pki");
    let mut roots = rustls::RootCertStore::empty();
    for cert in simgate::testkit::load_certs(&other.ca_pem).expect("ca") {
        roots.add(cert).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sa = std::fs::read(dir.path().join("sa.json")).expect("sa.json");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(fetch_oauth2(
        Arc::new(tls),
        &sa,
        &sink.url("/token"),
        "https://www.googleapis.com/auth/pubsub",
        Duration::from_secs(3600),
        SystemTime::now(),
    ));
    match result {
        Err(MintError::Tls { host, error }) => {
            assert_eq!(host, "127.0.0.1");
            assert!(error.contains("certificate"), "{error}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(sink.tokens_issued(), 0);
}

/// The value of the sample `series` (name with labels) in a `/metrics` text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn simgate_renews_the_token_and_counts_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = start_sink(dir.path(), 120);
    let simgate = common::Simgate::start(dir.path(), &config(&sink, "2s"));
    let ok_series = r#"simgate_credential_refresh_total{destination="pubsub",result="ok"}"#;
    let err_series = r#"simgate_credential_refresh_total{destination="pubsub",result="error"}"#;
    let expiry_series = r#"simgate_credential_token_expiry_seconds{destination="pubsub"}"#;
    let metrics = || {
        let (status, text) = simgate.admin_get("/metrics");
        assert_eq!(status, 200);
        text
    };
    let wait_for = |what: &str, cond: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = metrics();
            if cond(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; metrics:\n{}\nstderr:\n{}",
                text.lines()
                    .filter(|l| l.contains("credential"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                simgate.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // The first token arrives right after start.
    // The expiry gauge turns positive once the token is on the shards (the refresh counter
    // counts it when minted, a moment before it is pushed).
    let text = wait_for("the first token on the shards", &|t| {
        sample(t, ok_series).unwrap_or(0.0) >= 1.0 && sample(t, expiry_series).unwrap_or(0.0) > 0.0
    });
    let expiry = sample(&text, expiry_series).expect("expiry gauge");
    assert!((100.0..=120.0).contains(&expiry), "expiry {expiry}");
    let publish = common::post("/telemetry", b"{\"t\":21}", "");
    let response = common::raw_exchange(simgate.http, &publish);
    assert_eq!(response.status, 200, "{}", response.body_text());

    // Renewed at 80 % of the 2 s ttl.
    wait_for("a renewal", &|t| sample(t, ok_series).unwrap_or(0.0) >= 2.0);

    // Two failures: counted, devices still forwarded with the token in hand, then renewal
    // resumes (backoff 0.5–1 s, then 1–2 s).
    sink.fail("token", 500, 2, None);
    let text = wait_for("two errors", &|t| {
        sample(t, err_series).unwrap_or(0.0) >= 2.0
    });
    let ok_before = sample(&text, ok_series).unwrap_or(0.0);
    let response = common::raw_exchange(simgate.http, &publish);
    assert_eq!(
        response.status,
        200,
        "the old token is still used: {}",
        response.body_text()
    );
    wait_for("renewal after the failures", &|t| {
        sample(t, ok_series).unwrap_or(0.0) > ok_before
    });
    promtool_check(&metrics());
    let stderr = simgate.stderr();
    assert!(
        stderr.contains("cloud token renewal failed"),
        "a warning for the failure streak:\n{stderr}"
    );
    assert!(
        !stderr.contains("ya29.sink-"),
        "a token leaked into the log:\n{stderr}"
    );
    assert!(!stderr.contains("assertion="), "the assertion leaked");
}

/// A token endpoint down past the token's expiry: devices get 503 with `Retry-After` (never a
/// request without a token, never a silent drop), and the first token minted after the outage
/// brings delivery back.
#[test]
fn an_expired_token_gives_devices_503_with_retry_after_until_a_new_one_is_minted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The sink's tokens live 3 s; simgate renews at 80 %.
    let sink = start_sink(dir.path(), 3);
    let simgate = common::Simgate::start(dir.path(), &config(&sink, "1h"));
    let ok_series = r#"simgate_credential_refresh_total{destination="pubsub",result="ok"}"#;
    let err_series = r#"simgate_credential_refresh_total{destination="pubsub",result="error"}"#;
    let expiry_series = r#"simgate_credential_token_expiry_seconds{destination="pubsub"}"#;
    let metrics = || {
        let (status, text) = simgate.admin_get("/metrics");
        assert_eq!(status, 200);
        text
    };
    let wait_for = |what: &str, within: Duration, cond: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = metrics();
            if cond(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                simgate.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The expiry gauge turns positive once the token is on the shards.
    wait_for(
        "the first token on the shards",
        Duration::from_secs(15),
        &|t| sample(t, expiry_series).unwrap_or(0.0) > 0.0,
    );
    let publish = common::post("/telemetry", b"{\"t\":1}", "");
    let response = common::raw_exchange(simgate.http, &publish);
    assert_eq!(response.status, 200, "{}", response.body_text());

    // The token endpoint fails from now on; the token in hand runs out.
    sink.fail("token", 503, 10_000, None);
    wait_for("the token to expire", Duration::from_secs(20), &|t| {
        sample(t, err_series).unwrap_or(0.0) >= 1.0 && sample(t, expiry_series) == Some(0.0)
    });
    // The gauge counts whole seconds: the token may still be valid for a fraction of one, during
    // which devices are served. Publish until the first 503.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (response, accepted_before) = loop {
        let accepted = sink.stats()["accepted"]["gcp-pubsub"].as_u64().unwrap_or(0);
        let response = common::raw_exchange(simgate.http, &publish);
        if response.status != 200 || Instant::now() > deadline {
            break (response, accepted);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(response.status, 503, "{}", response.body_text());
    assert_eq!(response.header("retry-after"), Some("5"));
    let stats = sink.stats();
    assert_eq!(
        stats["accepted"]["gcp-pubsub"].as_u64().unwrap_or(0),
        accepted_before,
        "nothing reached the cloud without a token: {stats}"
    );
    assert_eq!(
        stats["rejected"]["gcp-pubsub"].as_u64().unwrap_or(0),
        0,
        "no unauthenticated call was made: {stats}"
    );
    let text = metrics();
    assert!(
        sample(
            &text,
            r#"simgate_http_errors_total{kind="credential_unavailable"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "counted: {}",
        text.lines()
            .filter(|l| l.contains("credential"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The endpoint recovers: the next retry mints a token and devices are served again.
    let ok_before = sample(&text, ok_series).unwrap_or(0.0);
    sink.reset();
    wait_for(
        "a token on the shards after the outage",
        Duration::from_secs(90),
        &|t| {
            sample(t, ok_series).unwrap_or(0.0) > ok_before
                && sample(t, expiry_series).unwrap_or(0.0) > 0.0
        },
    );
    let response = common::raw_exchange(simgate.http, &publish);
    assert_eq!(response.status, 200, "{}", response.body_text());
}
