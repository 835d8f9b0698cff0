//! Origin signature (issue #11 §4) checked by an independent implementation: simgate's
//! `policy::signature` signs, and `tests/python/verify_signature.py` — written from
//! docs/signature.md with Python's `hmac` and `hashlib`, no simgate code — verifies.
//!
//! What it checks: for several inputs (a SIM with every attached field and tags, an empty body
//! and no fields, a binary body, a UTF-8 topic, a topic with a newline and a non-UTF-8 byte, a
//! percent-encoded query) Python rebuilds the canonical string and accepts the signature, from
//! the raw inputs, from the HTTP headers simgate attaches (`Attach::headers` and
//! `Signature::headers`, also with lowercased names) and from the MQTT 5 user properties
//! (`Attach::user_properties` and `Signature::user_properties`). A changed body, topic, method,
//! timestamp, field value, a removed or added field, another secret, a replay within the window
//! and a stale timestamp are all rejected; a verifier holding two secrets (a rotation) accepts
//! either. What it does not check: the flows attaching these
//! (the flows' own tests do, once wired), or Python's verdict on timing (`compare_digest`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use simgate::identity::{SimRow, SimTable, SimTableBuilder, SimTags};
use simgate::policy::attach::{Attach, AttachField};
use simgate::policy::signature::{SignInput, Signature, Signer, MQTT_METHOD};

const SECRET: &[u8] = b"group-a signing secret, 32+ bytes long";
const OTHER_SECRET: &[u8] = b"group-b signing secret, 32+ bytes long";
/// The timestamp of most cases, and the verifier's "now" (100 s later: inside the window).
const TS: u64 = 1_700_000_000;
const NOW: u64 = TS + 100;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sim_table() -> SimTable {
    let tags = [("site", "kyoto"), ("tier", "gold"), ("fw_version", "1.2.3")];
    let row = SimRow {
        imsi: Some("001010123456789"),
        ip: Some("10.0.0.7"),
        imei: Some("356938035643809"),
        msisdn: Some("+819012345678"),
        sim_id: Some("sim-7"),
        name: Some("meter 7"),
        group: Some("g"),
        tags: SimTags::Pairs(&tags),
    };
    let mut b = SimTableBuilder::new();
    b.push(&row, 0, 1).expect("valid row");
    b.finish().expect("table")
}

fn attach_all() -> Attach {
    AttachField::ALL
        .into_iter()
        .fold(Attach::NONE, Attach::with)
}

#[derive(Debug)]
enum Expect {
    Valid,
    /// Rejected, with this text in the reason.
    Invalid(&'static str),
}

#[derive(Default)]
struct Cases {
    lines: Vec<Value>,
    expect: Vec<(String, Expect)>,
}

impl Cases {
    fn push(&mut self, mut case: Value, expect: Expect) {
        let id = format!("case-{}", self.lines.len());
        case["id"] = json!(id);
        if case.get("secret_hex").is_none() {
            case["secret_hex"] = json!(hex(SECRET));
        }
        self.lines.push(case);
        self.expect.push((id, expect));
    }

    /// A case given as the raw signed parts (the verifier's `verify`).
    fn raw(&mut self, input: &SignInput<'_, String, String>, sig: &Signature, expect: Expect) {
        let fields: Vec<Value> = input
            .fields
            .iter()
            .map(|(n, v)| json!([hex(n.as_bytes()), hex(v.as_bytes())]))
            .collect();
        self.push(
            json!({
                "kind": "raw",
                "method_hex": hex(input.method),
                "target_hex": hex(input.target),
                "timestamp": sig.timestamp.to_string(),
                "signature": sig.value,
                "fields": fields,
                "body_hex": hex(input.body),
            }),
            expect,
        );
    }

    /// A case given as HTTP headers (the verifier's `verify_http`).
    fn http(
        &mut self,
        method: &[u8],
        target: &[u8],
        headers: &[(String, String)],
        body: &[u8],
        expect: Expect,
    ) {
        let headers: Vec<Value> = headers
            .iter()
            .map(|(n, v)| json!([n, hex(v.as_bytes())]))
            .collect();
        self.push(
            json!({
                "kind": "http",
                "method_hex": hex(method),
                "target_hex": hex(target),
                "headers": headers,
                "body_hex": hex(body),
            }),
            expect,
        );
    }

    /// A case given as MQTT 5 user properties (the verifier's `verify_mqtt`).
    fn mqtt(&mut self, topic: &[u8], props: &[(String, String)], payload: &[u8], expect: Expect) {
        let props: Vec<Value> = props
            .iter()
            .map(|(n, v)| json!([n, hex(v.as_bytes())]))
            .collect();
        self.push(
            json!({
                "kind": "mqtt",
                "target_hex": hex(topic),
                "user_properties": props,
                "body_hex": hex(payload),
            }),
            expect,
        );
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn with_sig(
    fields: &[(String, String)],
    sig: [(&'static str, String); 2],
) -> Vec<(String, String)> {
    let mut out = fields.to_vec();
    out.extend(sig.into_iter().map(|(n, v)| (n.to_owned(), v)));
    out
}

fn build_cases() -> Cases {
    let signer = Signer::new(SECRET);
    let table = sim_table();
    let sim = table.get(0).expect("sim");
    let props = attach_all().user_properties(&sim);
    let imsi_only = Attach::default().user_properties(&sim);
    let mut c = Cases::default();

    // A: an MQTT PUBLISH with every field and tags, then every kind of tampering.
    let topic: &[u8] = b"devices/001010123456789/up";
    let body: &[u8] = br#"{"temp":21.5,"unit":"C"}"#;
    let a = SignInput {
        method: MQTT_METHOD,
        target: topic,
        timestamp: TS,
        fields: &props,
        body,
    };
    let sig_a = signer.sign(&a);
    c.raw(&a, &sig_a, Expect::Valid);
    let mismatch = || Expect::Invalid("does not match");
    let tampered_body = br#"{"temp":31.5,"unit":"C"}"#;
    c.raw(
        &SignInput {
            body: tampered_body,
            ..a
        },
        &sig_a,
        mismatch(),
    );
    c.raw(
        &SignInput {
            target: b"devices/001010123456780/up",
            ..a
        },
        &sig_a,
        mismatch(),
    );
    c.raw(
        &SignInput {
            method: b"POST",
            ..a
        },
        &sig_a,
        mismatch(),
    );
    let later = Signature {
        timestamp: TS + 1,
        value: sig_a.value.clone(),
    };
    c.raw(&a, &later, mismatch());
    let mut changed = props.clone();
    for (n, v) in &mut changed {
        if n == "tag.site" {
            *v = "osaka".to_owned();
        }
    }
    c.raw(
        &SignInput {
            fields: &changed,
            ..a
        },
        &sig_a,
        mismatch(),
    );
    let removed: Vec<_> = props
        .iter()
        .filter(|(n, _)| n != "tag.tier")
        .cloned()
        .collect();
    c.raw(
        &SignInput {
            fields: &removed,
            ..a
        },
        &sig_a,
        mismatch(),
    );
    let mut added = props.clone();
    added.push(("tag.extra".to_owned(), "1".to_owned()));
    c.raw(
        &SignInput {
            fields: &added,
            ..a
        },
        &sig_a,
        mismatch(),
    );
    let other = Signer::new(OTHER_SECRET).sign(&a);
    c.raw(&a, &other, mismatch());
    // The same message again, inside the window: a replay.
    c.raw(&a, &sig_a, Expect::Invalid("replayed"));
    // During a key rotation the verifier holds both secrets: the other one's signature passes.
    c.raw(&a, &other, Expect::Valid);
    let last = c.lines.len() - 1;
    c.lines[last]["secret_hex"] = json!([hex(SECRET), hex(OTHER_SECRET)]);

    // B: HTTP GET, no fields, empty body.
    let no_fields: Vec<(String, String)> = Vec::new();
    let b = SignInput {
        method: b"GET",
        target: b"/status",
        timestamp: TS,
        fields: &no_fields,
        body: b"",
    };
    c.raw(&b, &signer.sign(&b), Expect::Valid);

    // C: binary payload (every byte value, twice), the default attach (IMSI only).
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let cc = SignInput {
        method: MQTT_METHOD,
        target: b"bin/raw",
        timestamp: TS,
        fields: &imsi_only,
        body: &binary,
    };
    let sig_c = signer.sign(&cc);
    c.raw(&cc, &sig_c, Expect::Valid);
    let mut flipped = binary.clone();
    *flipped.last_mut().expect("non-empty") ^= 1;
    c.raw(
        &SignInput {
            body: &flipped,
            ..cc
        },
        &sig_c,
        mismatch(),
    );

    // D: a UTF-8 topic outside ASCII.
    let d = SignInput {
        method: MQTT_METHOD,
        target: "センサ/温度".as_bytes(),
        timestamp: TS,
        fields: &imsi_only,
        body: b"21.5",
    };
    c.raw(&d, &signer.sign(&d), Expect::Valid);

    // E: what the SIM table and the codecs never give, still well defined: a topic with a
    // newline, a byte that is not UTF-8 and a '%'; a value with a newline; '=' in a name.
    let odd_fields = owned(&[("name", "x\ny"), ("odd=name", "v"), ("imsi", "1")]);
    let e = SignInput {
        method: MQTT_METHOD,
        target: b"a\nb\xff%",
        timestamp: TS,
        fields: &odd_fields,
        body: b"\n",
    };
    c.raw(&e, &signer.sign(&e), Expect::Valid);

    // F: correctly signed, but 1000 s old: outside the ±300 s window.
    let f = SignInput {
        timestamp: TS - 1000,
        ..b
    };
    c.raw(&f, &signer.sign(&f), Expect::Invalid("outside"));

    // G: HTTP POST with a percent-encoded query, from the headers simgate attaches.
    let headers = attach_all().headers(&sim);
    let target: &[u8] = b"/v1/ingest?device=7&q=a%20b";
    let json_body: &[u8] = br#"{"kwh":12.25}"#;
    let g = SignInput {
        method: b"POST",
        target,
        timestamp: TS + 1,
        fields: &props,
        body: json_body,
    };
    let sig_g = signer.sign(&g);
    let mut sent = with_sig(&headers, sig_g.headers());
    sent.push(("Content-Type".to_owned(), "application/json".to_owned()));
    c.http(b"POST", target, &sent, json_body, Expect::Valid);
    // Header names are case-insensitive: the same request, lowercased, another second.
    let g2 = SignInput {
        timestamp: TS + 2,
        ..g
    };
    let lower: Vec<_> = with_sig(&headers, signer.sign(&g2).headers())
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    c.http(b"POST", target, &lower, json_body, Expect::Valid);
    let edit = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
        sent.iter()
            .filter_map(|(n, v)| match (n == name, value) {
                (true, Some(new)) => Some((n.clone(), new.to_owned())),
                (true, None) => None,
                (false, _) => Some((n.clone(), v.clone())),
            })
            .collect()
    };
    let tag = edit("X-Simgate-Tag-site", Some("osaka"));
    c.http(b"POST", target, &tag, json_body, mismatch());
    let ts = edit("X-Simgate-Timestamp", Some(&(TS + 3).to_string()));
    c.http(b"POST", target, &ts, json_body, mismatch());
    let name_gone = edit("X-Simgate-Name", None);
    c.http(b"POST", target, &name_gone, json_body, mismatch());
    let unsigned = edit("X-Simgate-Signature", None);
    c.http(
        b"POST",
        target,
        &unsigned,
        json_body,
        Expect::Invalid("signature missing"),
    );
    c.http(
        b"POST",
        b"/v1/ingest?device=8&q=a%20b",
        &sent,
        json_body,
        mismatch(),
    );

    // H: an MQTT 5 PUBLISH from its user properties (a device's own unrelated one ignored).
    let h = SignInput {
        timestamp: TS + 1,
        ..a
    };
    let mut user_props = with_sig(&props, signer.sign(&h).user_properties());
    user_props.push(("content-kind".to_owned(), "reading".to_owned()));
    c.mqtt(topic, &user_props, body, Expect::Valid);
    let mut smuggled = user_props.clone();
    smuggled.push(("tag.owner".to_owned(), "someone-else".to_owned()));
    c.mqtt(topic, &smuggled, body, mismatch());
    let shifted: Vec<_> = user_props
        .iter()
        .map(|(n, v)| match n.as_str() {
            "x-simgate-timestamp" => (n.clone(), (TS + 5).to_string()),
            _ => (n.clone(), v.clone()),
        })
        .collect();
    c.mqtt(topic, &shifted, body, mismatch());
    c.mqtt(topic, &user_props, tampered_body, mismatch());
    c.mqtt(b"devices/other/up", &user_props, body, mismatch());
    c
}

fn python3() -> &'static str {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "python3 is required for this test (it runs the independent verifier \
         tests/python/verify_signature.py): apt-get install python3 (scripts/test.sh does it)"
    );
    "python3"
}

#[test]
fn python_verifier_agrees_and_rejects_tampering() {
    let python = python3();
    let cases = build_cases();
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in &cases.lines {
        writeln!(file, "{line}").expect("write case");
    }
    file.flush().expect("flush");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/verify_signature.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(file.path())
        .arg("--now")
        .arg(NOW.to_string())
        .arg("--explain")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "verifier failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let verdicts: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        verdicts.len(),
        cases.expect.len(),
        "one verdict per case:\n{stdout}\n{stderr}"
    );
    let mut wrong = Vec::new();
    for ((id, expect), line) in cases.expect.iter().zip(&verdicts) {
        let (got_id, verdict) = line.split_once(' ').unwrap_or((line, ""));
        let ok = got_id == id
            && match expect {
                Expect::Valid => verdict == "valid",
                Expect::Invalid(why) => verdict.starts_with("invalid") && verdict.contains(why),
            };
        if !ok {
            wrong.push(format!("{id}: expected {expect:?}, Python said {line:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "Python's verifier disagrees:\n  {}\n\ncases:\n{}\n\ncanonical strings (Python):\n{stderr}",
        wrong.join("\n  "),
        cases
            .lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let valid = verdicts.iter().filter(|l| l.ends_with(" valid")).count();
    eprintln!(
        "{} cases: {valid} valid, {} rejected as expected",
        verdicts.len(),
        verdicts.len() - valid
    );
}
