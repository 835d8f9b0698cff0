//! Integration: README's first command, `simgate demo`, runs the whole path with no setup and
//! reports relayed requests without errors.

#[test]
fn demo_runs_the_whole_path_and_prints_a_summary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simgate"))
        .args([
            "demo",
            "--duration",
            "2",
            "--connections",
            "4",
            "--shards",
            "2",
        ])
        .output()
        .expect("run simgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("req/s"), "no per-second line:\n{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("requests relayed"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    // "requests relayed  N (R/s), simgate errors E, device-side errors D"
    let relayed: u64 = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable summary line: {summary}"));
    assert!(relayed > 0, "{summary}");
    assert!(summary.contains("simgate errors 0"), "{summary}");
    assert!(summary.contains("device-side errors 0"), "{summary}");
}
