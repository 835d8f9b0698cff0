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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use simgate::control::tokens::{fetch_oauth2, MintError, Outcome, Tokens};
use simgate::policy::cloud::TokenSpec;
use simgate::testkit::TestPki;

const SINK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/cloud_sink.py");
const PIP: &str = "pip install google-auth cryptography botocore azure-iot-device azure-eventhub";

/// The contract sink, killed on drop.
struct CloudSink {
    child: Child,
    port: u16,
    ca: PathBuf,
}

impl Drop for CloudSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CloudSink {
    /// Start the sink in `dir` with a fresh CA, a Pub/Sub section (project `p`, topic `t`,
    /// tokens valid `token_ttl_s`) and a new service account written to `dir/sa.json`.
    fn start(dir: &Path, token_ttl_s: u64) -> CloudSink {
        let check = Command::new("python3")
            .args([
                "-c",
                "import google.auth, cryptography, botocore, azure.iot.device, azure.eventhub",
            ])
            .output()
            .expect("python3 is required for the cloud sink");
        assert!(
            check.status.success(),
            "the cloud sink needs the vendors' Python libraries: {PIP}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let pki = TestPki::new(dir).expect("pki");
        let cert = pki
            .server_cert("cloud-sink", &["localhost", "127.0.0.1"])
            .expect("sink cert");
        let sa = dir.join("sa.json");
        // The account's token_uri is not where the sink listens (its port is not known yet);
        // the sink also accepts the audience https://{Host}/token, which is what simgate signs
        // for when the destination's token_uri points at the sink.
        let made = Command::new("python3")
            .arg(SINK)
            .arg("--make-service-account")
            .arg(&sa)
            .args(["--token-uri", "https://oauth2.googleapis.com/token"])
            .output()
            .expect("run cloud_sink.py --make-service-account");
        assert!(
            made.status.success(),
            "making a service account failed (missing libraries? {PIP}):\n{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let config = serde_json::json!({
            "cert": cert.cert, "key": cert.key, "port": 0,
            "gcp": {"project": "p", "topic": "t", "service_account_file": sa,
                    "token_ttl_s": token_ttl_s},
        });
        let config_path = dir.join("sink.json");
        std::fs::write(&config_path, config.to_string()).expect("write sink.json");
        let mut child = Command::new("python3")
            .arg(SINK)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cloud_sink.py");
        let stdout = child.stdout.take().expect("sink stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sink output");
        let port = match line.trim().strip_prefix("LISTENING ") {
            Some(p) => p.parse().expect("sink port"),
            None => {
                let _ = child.kill();
                panic!("cloud sink did not start (missing libraries? {PIP}): {line:?}");
            }
        };
        CloudSink {
            child,
            port,
            ca: pki.ca_pem.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The sink's test-control endpoints, through curl (they are outside what is tested).
    fn control(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let ca = self.ca.display().to_string();
        let url = self.url(path);
        let mut args = vec!["-sS", "--fail", "--cacert", &ca, "-X", method];
        if let Some(b) = body {
            args.extend(["-H", "content-type: application/json", "--data", b]);
        }
        args.push(&url);
        let (ok, out) = common::curl(&args);
        assert!(ok, "sink control {method} {path} failed: {out}");
        serde_json::from_str(&out).expect("sink control answer is JSON")
    }

    /// Make the next `count` token requests fail with `status`.
    fn fail_tokens(&self, status: u16, count: u32) {
        let spec = format!(r#"{{"cloud":"token","status":{status},"count":{count}}}"#);
        self.control("POST", "/_sink/fail", Some(&spec));
    }

    fn tokens_issued(&self) -> u64 {
        self.control("GET", "/_sink/stats", None)["tokens_issued"]
            .as_u64()
            .expect("tokens_issued")
    }
}

/// A config with one HTTP listener and a `gcp-pubsub` destination at the sink.
fn config(sink: &CloudSink, dir: &Path, token_ttl: &str) -> String {
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
        sa = dir.join("sa.json").display(),
        port = sink.port,
        ca = sink.ca.display(),
        token_uri = sink.url("/token"),
    )
}

#[test]
fn oauth2_fetch_obtains_a_token_and_a_failure_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = CloudSink::start(dir.path(), 120);
    let plan = simgate::config::compile_str(&config(&sink, dir.path(), "60s"), dir.path())
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
    sink.fail_tokens(500, 1);
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
    let sink = CloudSink::start(dir.path(), 120);
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

/// `promtool check metrics` over `text` (with the credential series present), when promtool is
/// installed (tests/metrics.rs requires it; here it is a bonus).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let Ok(mut check) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not found: exposition not checked");
        return;
    };
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let sink = CloudSink::start(dir.path(), 120);
    let simgate = common::Simgate::start(dir.path(), &config(&sink, dir.path(), "2s"));
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
    let text = wait_for("the first token", &|t| {
        sample(t, ok_series).unwrap_or(0.0) >= 1.0
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
    sink.fail_tokens(500, 2);
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
