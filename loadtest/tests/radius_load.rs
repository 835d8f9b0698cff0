//! End to end: `simgate-load radius` (the binary, as an engineer runs it) against a real
//! `simgate run` with `[radius]`, briefly and at a modest rate. Every request must be answered
//! with a verified Accounting-Response (none lost, none bad), simgate's `/metrics` must count
//! exactly the Starts and Stops sent and hold the bindings the Start/Stop alternation leaves,
//! and the secret must appear in no output. No timing is asserted.
//!
//! The simgate binary is built by this test through cargo, as in `through_simgate.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use simgate_load::radius::expected_bindings;
use simgate_load::sut;

const SECRET: &str = "load-test-radius-secret-42";
const SESSIONS: u32 = 300;

/// Builds the simgate binary and returns its path.
fn simgate_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-p",
            "simgate",
            "--bin",
            "simgate",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running `{cargo} build -p simgate` failed: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p simgate --bin simgate` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "simgate")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no simgate executable")
}

fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics");
    text
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn radius_load_is_answered_in_full_and_simgate_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("radius.secret"), format!("{SECRET}\n")).expect("secret");
    // No destination is needed: the listener only has to exist for the config to be a gateway.
    let config = "[gateway]\nshards = 1\npin_shards = false\nadmin = \"127.0.0.1:0\"\n\
         [radius]\nbind = \"127.0.0.1:0\"\nsecret = { file = \"radius.secret\" }\n\
         unknown_imsi = \"default\"\n\
         [[listener]]\nname = \"http\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\n\
         [[group]]\nname = \"default\"\n";
    let path = dir.path().join("simgate.toml");
    std::fs::write(&path, config).expect("config");
    let simgate = sut::start_simgate(
        &simgate_binary(),
        &path,
        None,
        &dir.path().join("simgate.log"),
    )
    .expect("simgate starts");
    let target = simgate.radius.expect("simgate printed `radius ADDR`");
    let admin = simgate.admin.expect("simgate printed `admin ADDR`");

    let json = dir.path().join("radius.json");
    let output = Command::new(env!("CARGO_BIN_EXE_simgate-load"))
        .arg("radius")
        .arg("--target")
        .arg(target.to_string())
        .arg("--secret-file")
        .arg(dir.path().join("radius.secret"))
        .args(["--rate", "500", "--duration", "2"])
        .args(["--sessions", &SESSIONS.to_string(), "--sockets", "4"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("simgate-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret was printed"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let field = |name: &str| report[name].as_u64().unwrap_or_else(|| panic!("{name}"));
    let sent = field("sent");
    assert_eq!(sent, 1000, "{stdout}");
    assert_eq!(field("answered"), sent, "{stdout}");
    assert_eq!(field("lost"), 0, "{stdout}");
    assert_eq!(field("bad_responses"), 0, "{stdout}");
    assert_eq!(field("unexpected"), 0, "{stdout}");
    assert_eq!(field("send_errors"), 0, "{stdout}");
    assert_eq!(report["latency_us"]["count"].as_u64(), Some(sent));

    let text = metrics(admin);
    let starts = sample(&text, "simgate_radius_requests_total{status=\"start\"}");
    let stops = sample(&text, "simgate_radius_requests_total{status=\"stop\"}");
    assert_eq!((starts, stops), (field("starts"), field("stops")), "{text}");
    assert_eq!(starts + stops, sent);
    assert_eq!(
        sample(&text, "simgate_radius_duplicates_total"),
        0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "simgate_radius_bindings"),
        expected_bindings(sent, SESSIONS),
        "{text}"
    );
}
