//! simgate's log lines as a log shipper reads them: `--log-format json` gives one JSON object
//! per line (timestamp, level, target, fields), and the default text format written to a file
//! (not a terminal) carries no colour escape codes. Neither carries a payload.

mod common;

use common::{post, Device, Simgate, World};
use serde_json::Value;

/// A device request through the gateway, then a graceful stop; the log it wrote.
fn traffic_then_stop(world: &World, gw: Simgate) -> String {
    let mut device = Device::connect(gw.http);
    let resp = device.request(&post("/t", b"secret-payload-1", ""));
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    drop(device);
    assert_eq!(gw.stop(), Some(0), "clean exit");
    std::fs::read_to_string(world.dir.path().join("simgate.stderr")).expect("simgate's log")
}

#[test]
fn json_log_lines_are_one_object_each_with_level_target_and_fields() {
    let world = World::new();
    let toml = world.config("", "");
    let gw = Simgate::start_with_args(world.dir.path(), &toml, &["--log-format", "json"]);
    let log = traffic_then_stop(&world, gw);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "a start and a stop at least: {log}");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("simgate")),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"INFO\"")),
        "info lines: {log}"
    );
    assert!(!log.contains('\u{1b}'), "no escape codes: {log}");
    assert!(!log.contains("secret-payload"), "no payloads: {log}");
}

#[test]
fn text_log_lines_to_a_file_have_no_colour_codes() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let log = traffic_then_stop(&world, gw);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "no escape codes in a file: {log}");
    assert!(!log.contains("secret-payload"), "no payloads: {log}");
}
