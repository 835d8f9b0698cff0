//! Integration: `GET /histograms/{name}/log` is an HdrHistogram interval log that the HdrHistogram
//! project's own Python reader (HdrHistogram_py, `pip install hdrhistogram`) decodes, whose
//! intervals hold every request simgate served, exactly, split by when they were served.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// The intervals' total count of a log, from its lines (comments skipped), decoded by Python.
struct PyRead {
    /// (start ms since epoch, count) per interval.
    intervals: Vec<(f64, u64)>,
    total: u64,
    start_time_sec: f64,
}

fn read_with_hdrhistogram_py(dir: &std::path::Path, log: &str) -> PyRead {
    let path = dir.join("request_duration.hlog");
    std::fs::write(&path, log).expect("write log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/read_interval_log.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 is required for this test (scripts/test.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "HdrHistogram_py could not read the log (pip install hdrhistogram; scripts/test.sh does \
         it):\n{stderr}\nlog:\n{log}"
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let mut read = PyRead {
        intervals: Vec::new(),
        total: 0,
        start_time_sec: 0.0,
    };
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        if let Some(total) = v.get("total") {
            read.total = total.as_u64().expect("total");
            read.start_time_sec = v["start_time_sec"].as_f64().expect("start time");
        } else {
            read.intervals.push((
                v["start"].as_f64().expect("start"),
                v["count"].as_u64().expect("count"),
            ));
        }
    }
    read
}

/// Interval lines of a log (not comments).
fn interval_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[test]
fn interval_log_holds_every_request_and_hdrhistogram_py_reads_it() {
    let world = World::new();
    let toml = format!(
        "{}\n[metrics]\ninterval_log_period = \"1s\"\ninterval_log_keep = 600\n",
        world.config("", "")
    );
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let gw = world.simgate(&toml);
    let path = "/histograms/request_duration/log?destination=sink";

    let burst = |n: u64| {
        for _ in 0..n {
            let mut d = Device::connect(gw.http);
            assert_eq!(d.request(&post("/m", b"x", "")).status, 200);
        }
    };
    // Poll the log until its intervals hold `want` requests (an interval closes every second).
    let wait_total = |want: u64| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, log) = gw.admin_get(path);
            assert_eq!(status, 200, "{log}");
            let read = read_with_hdrhistogram_py(world.dir.path(), &log);
            if read.total == want {
                return log;
            }
            assert!(read.total < want, "more samples than requests: {log}");
            assert!(
                Instant::now() < deadline,
                "the log holds {} of {want} requests after 30 s:\n{log}",
                read.total
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    burst(12);
    let first = wait_total(12);
    let lines_after_first = interval_lines(&first);
    burst(7);
    let log = wait_total(19);
    let read = read_with_hdrhistogram_py(world.dir.path(), &log);
    assert_eq!(read.intervals.len(), interval_lines(&log), "{log}");
    assert!(read.intervals.len() > lines_after_first, "{log}");
    // The second burst is in intervals after the one that completed the first.
    let counts: Vec<u64> = read.intervals.iter().map(|i| i.1).collect();
    let mut running = 0;
    let split = counts
        .iter()
        .position(|c| {
            running += c;
            running == 12
        })
        .unwrap_or_else(|| panic!("no interval boundary after the first burst: {counts:?}"));
    assert_eq!(counts[split + 1..].iter().sum::<u64>(), 7, "{counts:?}");
    // Intervals are in time order, from the log's StartTime on (this test's start, give or take).
    assert!(
        (read.start_time_sec - started).abs() < 60.0,
        "StartTime {} vs test start {started}",
        read.start_time_sec
    );
    for pair in read.intervals.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{:?}", read.intervals);
    }
    // Both protocols merged = HTTP only here; MQTT has no samples, each interval empty.
    let (status, mqtt) = gw.admin_get(&format!("{path}&protocol=mqtt"));
    assert_eq!(status, 200);
    assert_eq!(read_with_hdrhistogram_py(world.dir.path(), &mqtt).total, 0);

    // The same samples as the cumulative distribution.
    let (_, dist) = gw.admin_get("/histograms/request_duration?destination=sink");
    assert!(dist.contains("Total count    =           19]"), "{dist}");

    assert_eq!(
        gw.admin_get("/histograms/request_duration/log?destination=gone")
            .0,
        404
    );
    assert_eq!(gw.admin_get("/histograms/nope/log?destination=sink").0, 404);
    // An unknown admin path points at the endpoints, this one included.
    let (status, hint) = gw.admin_get("/histogram");
    assert_eq!(status, 404);
    assert!(
        hint.contains("/histograms/{name}/log?destination="),
        "{hint}"
    );
    assert_eq!(
        gw.admin_get("/histograms/request_duration/log?destination=sink&protocol=udp")
            .0,
        400
    );
}
