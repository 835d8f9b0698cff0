//! Google service-account assertion (`adapters::auth::google`) checked by an independent
//! implementation: simgate signs the RS256 JWT, Google's own Python library **google-auth**
//! (`google.auth.jwt.decode`, with `cryptography` for RSA) verifies it.
//!
//! What it checks: an assertion signed with the committed TEST service account
//! (`src/adapters/auth/testdata/google/test-service-account.json`) verifies against that account's
//! public key, looked up by the header's `kid`, with the expected audience, and google-auth reads
//! back the header (`alg` RS256, `typ` JWT, `kid`) and the claims (`iss`, `scope`, `aud`, `iat`,
//! `exp`); the same assertion with one claim byte changed, with another signature, or checked
//! against another audience is rejected. What it does not check: that Google's token endpoint
//! accepts it (that needs a real account and the network), or the token request body and the
//! response parsing (unit tests in the module do).
//!
//! Needs python3 with `google-auth` and `cryptography` (`pip install google-auth cryptography`;
//! scripts/test.sh installs them when missing).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use simgate::adapters::auth::google::ServiceAccount;

const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// Reads a JSON file of cases `[{"token", "audience"}]`, prints one JSON line per case:
/// `{"ok": true, "header": …, "claims": …}` or `{"ok": false, "error": …}`. Exit code 3 when
/// google-auth cannot be imported.
const VERIFY_PY: &str = r#"
import json, sys
try:
    from google.auth import jwt
    import cryptography  # google-auth's RSA verifier of choice
except ImportError as e:
    print("import failed: %s" % e, file=sys.stderr)
    sys.exit(3)
cases = json.load(open(sys.argv[1]))
certs = {sys.argv[3]: open(sys.argv[2]).read()}
for case in cases:
    try:
        claims = jwt.decode(case["token"], certs=certs, audience=case["audience"])
        print(json.dumps({"ok": True, "header": jwt.decode_header(case["token"]), "claims": claims}))
    except Exception as e:
        print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}))
"#;

fn testdata(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/adapters/auth/testdata/google")
        .join(name)
}

/// `jwt` with the claims part replaced by `claims` (the signature kept).
fn with_claims(jwt: &str, claims: &Value) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[test]
fn google_auth_verifies_the_assertion() {
    let json = std::fs::read(testdata("test-service-account.json")).expect("test account");
    let sa = ServiceAccount::from_json(&json).expect("test account parses");
    let kid = sa
        .private_key_id
        .clone()
        .expect("test account has a key id");
    // google-auth checks iat/exp against its clock with no skew: sign "now", a little in the past.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let iat = now - 5;
    let jwt = sa
        .assertion(SCOPE, &sa.token_uri, iat, 3600)
        .expect("assertion");
    let claims_seen: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).expect("claims part"))
            .expect("base64url"),
    )
    .expect("claims JSON");
    let mut tampered_claims = claims_seen.clone();
    tampered_claims["scope"] = json!("https://www.googleapis.com/auth/cloud-platform");
    let other_sig = sa
        .assertion(SCOPE, &sa.token_uri, iat + 1, 3600)
        .expect("assertion");
    let other_sig = format!(
        "{}.{}",
        jwt.rsplit_once('.').expect("3 parts").0,
        other_sig.rsplit_once('.').expect("3 parts").1
    );
    let cases = json!([
        {"token": jwt, "audience": sa.token_uri},
        {"token": with_claims(&jwt, &tampered_claims), "audience": sa.token_uri},
        {"token": other_sig, "audience": sa.token_uri},
        {"token": jwt, "audience": "https://pubsub.googleapis.com/"},
    ]);
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(cases.to_string().as_bytes())
        .expect("write cases");
    file.flush().expect("flush");

    let out = Command::new("python3")
        .arg("-c")
        .arg(VERIFY_PY)
        .arg(file.path())
        .arg(testdata("test-service-account.pub.pem"))
        .arg(&kid)
        .output()
        .expect("python3 is required for this test: apt-get install python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "google-auth is required for this test: pip install google-auth cryptography\n{stderr}"
    );
    assert!(out.status.success(), "python3 failed:\n{stdout}\n{stderr}");
    let verdicts: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON line per case"))
        .collect();
    assert_eq!(verdicts.len(), 4, "{stdout}\n{stderr}");

    let good = &verdicts[0];
    assert_eq!(
        good["ok"], true,
        "google-auth rejected the assertion: {good}"
    );
    assert_eq!(
        good["header"],
        json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        "{good}"
    );
    assert_eq!(
        good["claims"],
        json!({
            "iss": sa.client_email,
            "scope": SCOPE,
            "aud": sa.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        }),
        "{good}"
    );
    for (i, why) in [
        (1, "a changed claim"),
        (2, "another signature"),
        (3, "another audience"),
    ] {
        assert_eq!(
            verdicts[i]["ok"], false,
            "google-auth accepted {why}: {}",
            verdicts[i]
        );
    }
}
