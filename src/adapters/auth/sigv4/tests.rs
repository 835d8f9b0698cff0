//! AWS's SigV4 test suite (the vectors `aws-sigv4` 1.6.6 ships, copied to
//! `src/adapters/auth/testdata/sigv4/`, see the README there for which and why), run through
//! [`sign`], plus the checks of the input validation and of the redaction.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/adapters/auth/testdata/sigv4")
}

/// 2015-08-30T12:36:00Z or 20150830T123600Z to a `SystemTime` (UTC).
fn parse_time(s: &str) -> SystemTime {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 14, "timestamp {s}");
    let n = |a: usize, b: usize| digits[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    // Days from civil (H. Hinnant), proleptic Gregorian.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(8, 10) * 3600 + n(10, 12) * 60 + n(12, 14);
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

struct Request {
    method: String,
    target: String,
    host: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Parses a suite `request.txt`: request line, `Name:value` lines, blank line, body. The
/// request-target is percent-encoded where it has bytes outside visible ASCII (one vector has a
/// raw UTF-8 query), which is how a client puts it on the wire and what [`sign`] takes.
fn parse_request(text: &str) -> Request {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], text.as_bytes()[i + 2..].to_vec()),
        None => (text.trim_end_matches('\n'), Vec::new()),
    };
    let mut lines = head.lines();
    let mut first = lines.next().unwrap().split(' ');
    let method = first.next().unwrap().to_owned();
    let raw_target = first.next().unwrap();
    let mut target = String::new();
    for b in raw_target.bytes() {
        if (0x21..0x7f).contains(&b) {
            target.push(char::from(b));
        } else {
            write!(target, "%{b:02X}").unwrap();
        }
    }
    let mut host = String::new();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        // As an HTTP parser hands them over: optional whitespace around the value removed.
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("host") {
            host = value.to_owned();
        } else if name.eq_ignore_ascii_case("x-amz-date") {
            // Two vectors carry the date as a header; `sign` takes it as `time` (the context).
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Request {
        method,
        target,
        host,
        headers,
        body,
    }
}

/// The header values of `header-signed-request.txt`, by lowercase name, last one wins.
fn signed_header(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .next_back()
}

#[test]
fn aws_signing_test_suite_v4_header_signed() {
    let mut names: Vec<_> = std::fs::read_dir(suite_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    assert!(names.len() >= 27, "vectors missing: {names:?}");
    for dir in &names {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap())
                .unwrap();
        // Only vectors with our settings were copied; make that visible if one slips in.
        assert_eq!(ctx["normalize"], true, "{name}");
        assert_eq!(ctx["sign_body"], false, "{name}");
        assert_ne!(ctx.get("omit_session_token"), Some(&true.into()), "{name}");
        let creds = &ctx["credentials"];
        let keys = AwsKeys {
            access_key_id: creds["access_key_id"].as_str().unwrap(),
            secret_access_key: creds["secret_access_key"].as_str().unwrap(),
            session_token: creds.get("token").and_then(|t| t.as_str()),
        };
        let req = parse_request(&std::fs::read_to_string(dir.join("request.txt")).unwrap());
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let signable = SignableRequest {
            method: &req.method,
            host: &req.host,
            path_and_query: &req.target,
            headers: &headers,
            body: &req.body,
        };
        let out = sign(
            &signable,
            &keys,
            ctx["region"].as_str().unwrap(),
            ctx["service"].as_str().unwrap(),
            parse_time(ctx["timestamp"].as_str().unwrap()),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));

        let expected = std::fs::read_to_string(dir.join("header-signed-request.txt")).unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get("authorization"),
            signed_header(&expected, "authorization"),
            "{name}: Authorization"
        );
        assert_eq!(
            get("x-amz-date"),
            signed_header(&expected, "x-amz-date"),
            "{name}: X-Amz-Date"
        );
        assert_eq!(
            get("x-amz-security-token"),
            signed_header(&expected, "x-amz-security-token"),
            "{name}: X-Amz-Security-Token"
        );
        assert!(
            out.iter().all(|(k, _)| matches!(
                *k,
                "authorization" | "x-amz-date" | "x-amz-security-token"
            )),
            "{name}: unexpected header in {out:?}"
        );
        if let Ok(sig) = std::fs::read_to_string(dir.join("header-signature.txt")) {
            let auth = get("authorization").unwrap();
            assert!(
                auth.ends_with(&format!("Signature={}", sig.trim())),
                "{name}"
            );
        }
    }
}

fn lambda_request<'a>(headers: &'a [(&'a str, &'a str)]) -> SignableRequest<'a> {
    SignableRequest {
        method: "POST",
        host: "lambda.us-east-2.amazonaws.com",
        path_and_query: "/2015-03-31/functions/my-fn/invocations",
        headers,
        body: b"{}",
    }
}

const KEYS: AwsKeys<'static> = AwsKeys {
    access_key_id: "AKIDEXAMPLE",
    secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    session_token: None,
};

#[test]
fn signs_with_a_port_and_an_extra_header() {
    let headers = [
        ("X-Amz-Invocation-Type", "Event"),
        ("Content-Type", "application/json"),
    ];
    let req = SignableRequest {
        host: "example.com:8443",
        ..lambda_request(&headers)
    };
    let out = sign(
        &req,
        &KEYS,
        "us-east-2",
        "lambda",
        parse_time("20210511T154045Z"),
    )
    .unwrap();
    let auth = &out.iter().find(|(k, _)| *k == "authorization").unwrap().1;
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-invocation-type,"),
        "{auth}"
    );
}

#[test]
fn rejects_bad_inputs_without_quoting_them() {
    let t = parse_time("20210511T154045Z");
    let ok = lambda_request(&[]);
    let cases: [(SignableRequest<'_>, SigV4Error); 7] = [
        (SignableRequest { host: "", ..ok }, SigV4Error::Host),
        (SignableRequest { host: "a/b", ..ok }, SigV4Error::Host),
        (
            SignableRequest {
                host: "user@h",
                ..ok
            },
            SigV4Error::Host,
        ),
        (
            SignableRequest {
                path_and_query: "x",
                ..ok
            },
            SigV4Error::PathAndQuery,
        ),
        (
            SignableRequest {
                path_and_query: "/a b",
                ..ok
            },
            SigV4Error::PathAndQuery,
        ),
        (
            SignableRequest {
                path_and_query: "/a#f",
                ..ok
            },
            SigV4Error::PathAndQuery,
        ),
        (
            SignableRequest {
                method: "PO ST",
                ..ok
            },
            SigV4Error::Method,
        ),
    ];
    for (req, want) in cases {
        assert_eq!(
            sign(&req, &KEYS, "us-east-2", "lambda", t),
            Err(want),
            "{req:?}"
        );
    }
    let reserved = [("Content-Type", "x"), ("X-Amz-Date", "20210511T154045Z")];
    assert_eq!(
        sign(&lambda_request(&reserved), &KEYS, "us-east-2", "lambda", t),
        Err(SigV4Error::ReservedHeader(1))
    );
    let bad_value = [("X-Thing", "a\nb")];
    assert_eq!(
        sign(&lambda_request(&bad_value), &KEYS, "us-east-2", "lambda", t),
        Err(SigV4Error::Header)
    );
    assert_eq!(
        sign(&ok, &KEYS, "us east", "lambda", t),
        Err(SigV4Error::Scope)
    );
    assert_eq!(sign(&ok, &KEYS, "us-east-2", "", t), Err(SigV4Error::Scope));
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    for keys in [
        AwsKeys {
            access_key_id: "",
            ..KEYS
        },
        AwsKeys {
            access_key_id: "AKID/1",
            ..KEYS
        },
        AwsKeys {
            secret_access_key: "",
            ..KEYS
        },
        AwsKeys {
            session_token: Some("tok\nen"),
            ..KEYS
        },
    ] {
        let err = sign(&ok, &keys, "us-east-2", "lambda", t).unwrap_err();
        assert_eq!(err, SigV4Error::Keys);
        assert!(!err.to_string().contains(secret));
    }
}

#[test]
fn debug_redacts_secrets() {
    let keys = AwsKeys {
        session_token: Some("SESSION-TOKEN-VALUE"),
        ..KEYS
    };
    let dbg = format!("{keys:?}");
    assert!(dbg.contains("AKIDEXAMPLE"), "{dbg}");
    assert!(!dbg.contains("wJalr"), "{dbg}");
    assert!(!dbg.contains("SESSION-TOKEN-VALUE"), "{dbg}");
}
