//! `simgate top` against a real `simgate run` (2 shards, the HTTPS sink): after device traffic,
//! `simgate top --once` prints a report whose request total equals the
//! `simgate_http_requests_total` sum `/metrics` gives after it, whose readiness line matches
//! `/readyz` (ready, and not ready with the reason), and whose rate is positive while devices
//! send during its interval; with `gateway.admin_token` set it exits 2 naming the token when
//! given none, and works with the token from `--token-file` or `SIMGATE_ADMIN_TOKEN`; an
//! unreachable address exits 2, and so does the live view without a terminal. The live view
//! runs under tmux (a private tmux server): it draws the same figures, `q` quits with status 0
//! and the terminal is back on its normal screen.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{post, Device, Simgate, World};

const TOKEN: &str = "top-admin-token-0123456789";

/// `simgate top --admin ADDR ARGS…` with `SIMGATE_ADMIN_TOKEN` as given (removed when None).
fn top(admin: SocketAddr, args: &[&str], env_token: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simgate"));
    c.args(["top", "--admin", &admin.to_string()]).args(args);
    match env_token {
        Some(t) => c.env("SIMGATE_ADMIN_TOKEN", t),
        None => c.env_remove("SIMGATE_ADMIN_TOKEN"),
    };
    c.output().expect("run simgate top")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The sum of every `name` series in a Prometheus exposition, read independently of
/// `simgate::top::expo` (split at the last space).
fn metric_sum(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .expect("counter value")
        })
        .sum()
}

/// The report line starting with `prefix` (exactly one).
fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "one `{prefix}` line in:\n{report}");
    lines[0]
}

/// Poll `/readyz` (the signal itself) until it answers 200.
fn wait_ready(gw: &Simgate) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = gw.admin_get("/readyz");
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send_requests(gw: &Simgate, n: usize) {
    let mut device = Device::connect(gw.http);
    for i in 0..n {
        let r = device.request(&post("/t", format!("reading {i}").as_bytes(), ""));
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
}

#[test]
fn once_report_agrees_with_metrics_and_readyz() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let admin = gw.admin.expect("admin address");
    wait_ready(&gw);
    send_requests(&gw, 7);

    let out = top(admin, &["--once", "--interval", "500ms"], None);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    assert!(!report.contains('\x1b'), "escape codes in {report:?}");
    let (_, metrics) = gw.admin_get("/metrics");
    let requests = metric_sum(&metrics, "simgate_http_requests_total");
    assert_eq!(requests, 7, "{metrics}");
    // Quiet during top's interval: the total as /metrics has it, and no throughput.
    assert_eq!(
        line(&report, "requests "),
        format!("requests total={requests} per_s=0.00")
    );
    assert_eq!(
        line(&report, "ready "),
        "ready status=ready detail=ready",
        "{report}"
    );
    let (status, _) = gw.admin_get("/readyz");
    assert_eq!(status, 200);
    assert!(line(&report, "simgate-top ").starts_with(&format!("simgate-top admin={admin} ")));
    assert_eq!(line(&report, "http_errors "), "http_errors none");
    // The sink is an `https` destination, not a cloud adapter.
    assert_eq!(line(&report, "cloud_responses "), "cloud_responses none");
    let connections = line(&report, "connections ");
    assert!(
        connections.contains(&format!(
            "accepted_total={}",
            metric_sum(&metrics, "simgate_connections_accepted_total")
        )),
        "{connections}\n{metrics}"
    );
    let upstream = line(&report, "upstream ");
    assert!(
        upstream.contains(&format!(
            "reused_total={}",
            metric_sum(&metrics, "simgate_upstream_reused_total")
        )),
        "{upstream}\n{metrics}"
    );
    // One SIM row (unknown sources served by the default group), top by bytes, bytes as
    // /admin/usage has them.
    let (_, usage) = gw.admin_get("/admin/usage");
    let usage: serde_json::Value = serde_json::from_str(&usage).expect("usage JSON");
    let row = &usage["sims"][0];
    let bytes = row["up_bytes"].as_u64().unwrap() + row["down_bytes"].as_u64().unwrap();
    let sim = line(&report, "sim rank=1 ");
    assert!(
        sim.contains(&format!("imsi={} ", row["imsi"].as_str().unwrap()))
            && sim.contains(&format!(" bytes={bytes} "))
            && sim.contains(" up_msgs=7 "),
        "{sim}\n{usage}"
    );
}

#[test]
fn once_shows_throughput_while_devices_send() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let admin = gw.admin.expect("admin address");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let http = gw.http;
    let devices = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut device = Device::connect(http);
            while !stop.load(Ordering::Relaxed) {
                let r = device.request(&post("/t", b"x", ""));
                assert_eq!(r.status, 200);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Traffic is flowing before top takes its first sample.
    while sent.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let out = top(admin, &["--once", "--interval", "500ms"], None);
    stop.store(true, Ordering::Relaxed);
    devices.join().expect("device thread");
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    let requests = line(&report, "requests ");
    let field = |key: &str| -> f64 {
        requests
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {requests}"))
    };
    let (_, metrics) = gw.admin_get("/metrics");
    let after = metric_sum(&metrics, "simgate_http_requests_total") as f64;
    assert!(field("per_s=") > 0.0, "{requests}");
    assert!(field("total=") <= after, "{requests} vs {after} after");
}

#[test]
fn once_reports_not_ready_with_the_reason_readyz_gives() {
    let world = World::new();
    // Nothing listens at the destination: its warm pool can never fill, /readyz stays 503.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let toml = world
        .config("", "")
        .replace(&world.sink.addr().to_string(), &format!("127.0.0.1:{port}"));
    let gw = world.simgate(&toml);
    let admin = gw.admin.expect("admin address");

    let out = top(admin, &["--once", "--interval", "100ms"], None);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    let ready = line(&report, "ready ");
    assert!(
        ready.starts_with("ready status=not_ready detail=\"")
            && ready.contains("destination sink: warm pool not filled yet on shard"),
        "{ready}"
    );
    let (status, body) = gw.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
}

#[test]
fn admin_token_401_names_the_token_and_the_token_works() {
    let world = World::new();
    let token_file = world.dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let toml = world.config("", "").replace(
        "[gateway]\n",
        "[gateway]\nadmin_token = { file = \"admin.token\" }\n",
    );
    let gw = world.simgate(&toml);
    let admin = gw.admin.expect("admin address");

    let out = top(admin, &["--once", "--interval", "100ms"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("401") && err.contains("admin token is needed"),
        "{err}"
    );
    assert!(
        err.contains("--token-file") && err.contains("SIMGATE_ADMIN_TOKEN"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = top(
        admin,
        &["--once", "--interval", "100ms"],
        Some("wrong-token-0123"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not gateway.admin_token"));

    let file = token_file.to_str().unwrap();
    for (args, env) in [
        (
            vec!["--once", "--interval", "100ms", "--token-file", file],
            None,
        ),
        (vec!["--once", "--interval", "100ms"], Some(TOKEN)),
    ] {
        let out = top(admin, &args, env);
        let report = text(&out.stdout);
        assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
        assert!(report.contains("\nrequests total=0 "), "{report}");
        assert!(!report.contains(TOKEN));
    }
}

#[test]
fn unreachable_admin_or_no_terminal_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = top(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &["--once", "--interval", "100ms"],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
    // The live view wants a terminal; a pipe is told to use --once.
    let out = top(SocketAddr::from(([127, 0, 0, 1], port)), &[], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a terminal; use --once"), "{err}");
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect(
                "tmux is required for this test: apt-get install tmux (scripts/test.sh does it)",
            )
    }

    fn pane(&self) -> String {
        text(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout)
    }

    /// Capture the pane until `pred` holds (the screen is the signal), or fail showing it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pane = self.pane();
            if pred(&pane) {
                return pane;
            }
            assert!(Instant::now() < deadline, "never saw {what}; pane:\n{pane}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn live_view_under_tmux_draws_and_quits_on_q() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let admin = gw.admin.expect("admin address");
    wait_ready(&gw);
    send_requests(&gw, 3);

    let tmux = Tmux {
        socket: format!("simgate-top-test-{}", std::process::id()),
    };
    let command = format!(
        "'{}' top --admin {admin} --interval 200ms; echo \"top exited $?\"; read line",
        env!("CARGO_BIN_EXE_simgate")
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "45",
        "sh",
        "-c",
        &command,
    ]);
    assert!(out.status.success(), "tmux: {}", text(&out.stderr));

    let pane = tmux.wait_for("the second sample drawn", |p| {
        p.contains("top SIMs by bytes")
    });
    assert!(pane.contains("readiness ready"), "{pane}");
    assert!(pane.contains("requests 3 ("), "{pane}");
    assert!(pane.contains(&format!("admin {admin}")), "{pane}");

    let out = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success());
    let pane = tmux.wait_for("top exit", |p| p.contains("top exited"));
    assert!(pane.contains("top exited 0"), "{pane}");
    // Back on the normal screen: the view is gone.
    assert!(!pane.contains("top SIMs by bytes"), "{pane}");
    let alt = tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
    assert_eq!(text(&alt.stdout).trim(), "0");
}
