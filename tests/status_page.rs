//! The status page (`GET /`) in a real browser: real `simgate run` (2 shards, the HTTPS sink,
//! three SIMs, probes every 200 ms), HTTP device traffic, and Debian's headless Chromium loading
//! the page. One load runs while devices send, takes a screenshot (a PNG of non-trivial size) and
//! shows a positive request rate;
//! after the traffic stopped, a second load dumps the DOM once the page polled at least twice and
//! drew its charts, and every figure it shows is checked against what `/metrics`,
//! `/admin/probes` and `/admin/usage` answer afterwards: the HTTP request total, MQTT publishes,
//! open connections, shards, readiness, the per-destination request count and p50/p99/p99.9
//! (recomputed here from the histogram buckets), the probe result, the shard table and the top
//! SIMs by bytes. With `gateway.admin_token` set, the page itself loads without the token, its
//! fetches use the token from the `#token=` fragment, and without the fragment it shows the 401.
//!
//! Chromium runs with `--virtual-time-budget`: it dumps the DOM when the page's timers have
//! advanced that far in virtual time (network waits do not count), so the test waits for the
//! page's own polls, not for wall-clock time. A missing `chromium` fails the test naming the
//! package to install.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{post, Device, Simgate, World};

const TOKEN: &str = "status-page-token-0123456789";

/// The SIMs (source address, IMSI) and how many requests each sends, most bytes first.
const SIMS: [(&str, &str, usize); 3] = [
    ("127.0.0.2", "001010000000002", 9),
    ("127.0.0.3", "001010000000003", 5),
    ("127.0.0.4", "001010000000004", 2),
];

fn config(world: &World, token: bool) -> String {
    let mut toml = world.config("", "");
    if token {
        let token_file = world.dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        toml = toml.replace(
            "[gateway]\n",
            "[gateway]\nadmin_token = { file = \"admin.token\" }\n",
        );
    }
    toml.push_str("\n[probe]\ninterval = \"200ms\"\n");
    for (ip, imsi, _) in SIMS {
        toml.push_str(&format!(
            "\n[[sim]]\nimsi = \"{imsi}\"\nip = \"{ip}\"\ngroup = \"default\"\n"
        ));
    }
    toml
}

/// Debian's chromium, or a failure saying how to get it.
fn chromium() -> &'static str {
    let found = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "chromium is not installed: the status page test runs Debian's headless Chromium; \
         install it with `apt-get install chromium` (scripts/test.sh does)"
    );
    "chromium"
}

/// Run headless chromium on `url` with `extra` arguments; returns its stdout.
fn run_chromium(url: &str, extra: &[&str], profile: &Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET `path` from the admin endpoint with the token (if any): (status, headers, body).
fn admin(addr: SocketAddr, path: &str, token: Option<&str>) -> common::Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    common::raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
}

fn admin_ok(addr: SocketAddr, path: &str, token: Option<&str>) -> String {
    let r = admin(addr, path, token);
    assert_eq!(r.status, 200, "{path}: {}", r.body_text());
    r.body_text()
}

/// Every sample of `name` in a Prometheus exposition: (labels text, value), read here
/// independently of the page's parser.
fn samples<'a>(exposition: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').expect("sample");
            let labels = series[name.len()..]
                .trim_start_matches('{')
                .trim_end_matches('}');
            let value = if v == "+Inf" {
                f64::INFINITY
            } else {
                v.parse().expect("value")
            };
            (labels, value)
        })
        .collect()
}

fn metric_sum(exposition: &str, name: &str) -> f64 {
    samples(exposition, name).iter().map(|(_, v)| v).sum()
}

/// The value of label `key` in a labels text.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')?;
    Some(&labels[start..start + end])
}

/// histogram_quantile over `destination`'s `simgate_request_duration_seconds` buckets (summed
/// over protocols), in ms: the same definition as the page's.
fn quantile_ms(exposition: &str, destination: &str, q: f64) -> f64 {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (labels, v) in samples(exposition, "simgate_request_duration_seconds_bucket") {
        if label(labels, "destination") != Some(destination) {
            continue;
        }
        let le = match label(labels, "le").expect("le") {
            "+Inf" => f64::INFINITY,
            s => s.parse().expect("le"),
        };
        buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last().expect("buckets").1;
    assert!(total > 0.0, "no samples for {destination}");
    let rank = q * total;
    let (mut prev_le, mut prev_c) = (0.0, 0.0);
    for (le, c) in sorted {
        if c >= rank {
            if le.is_infinite() {
                return prev_le * 1000.0;
            }
            let frac = if c - prev_c > 0.0 {
                (rank - prev_c) / (c - prev_c)
            } else {
                0.0
            };
            return (prev_le + (le - prev_le) * frac) * 1000.0;
        }
        (prev_le, prev_c) = (le, c);
    }
    prev_le * 1000.0
}

/// The text of the element whose opening tag carries `attr` (e.g. `id="requests-total"`),
/// searched from `from`.
fn element_text<'a>(dom: &'a str, from: usize, attr: &str) -> &'a str {
    let at = dom[from..]
        .find(attr)
        .unwrap_or_else(|| panic!("no element with {attr} in the page:\n{dom}"))
        + from;
    let open_end = dom[at..].find('>').expect("tag end") + at + 1;
    let close = dom[open_end..].find('<').expect("text end") + open_end;
    &dom[open_end..close]
}

fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    element_text(dom, 0, &format!("id=\"{id}\""))
}

/// The `data-field` cell of the table row whose opening tag carries `row_attr`.
fn cell<'a>(dom: &'a str, row_attr: &str, field: &str) -> &'a str {
    let row = dom
        .find(row_attr)
        .unwrap_or_else(|| panic!("no row {row_attr} in the page:\n{dom}"));
    let row_end = dom[row..].find("</tr>").expect("row end") + row;
    element_text(&dom[..row_end], row, &format!("data-field=\"{field}\""))
}

fn number(s: &str) -> f64 {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

/// Poll `path` (the signal itself) until `done` says so.
fn wait_for(addr: SocketAddr, path: &str, token: Option<&str>, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = admin(addr, path, token);
        if r.status == 200 && done(&r.body_text()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never got there: {} {}",
            r.status,
            r.body_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ready, the sink's probe passed, and no device connection left open.
fn wait_settled(gw: &Simgate, token: Option<&str>) {
    let addr = gw.admin.expect("admin");
    wait_for(addr, "/readyz", token, |_| true);
    wait_for(addr, "/admin/probes", token, |b| {
        let j: serde_json::Value = serde_json::from_str(b).expect("probes json");
        j["destinations"][0]["result"] == "ok"
    });
    wait_for(addr, "/metrics", token, |b| {
        metric_sum(b, "simgate_connections_open") == 0.0
    });
}

/// Each SIM sends its requests (bodies of different sizes), and one unknown device too.
fn send_traffic(gw: &Simgate) {
    for (ip, _, n) in SIMS {
        let mut d = Device::connect_from(gw.http, ip.parse().expect("ip"));
        for i in 0..n {
            let body = vec![b'x'; 100 + 10 * i];
            let r = d.request(&post("/meter", &body, ""));
            assert_eq!(r.status, 200, "{}", r.body_text());
        }
    }
    let mut d = Device::connect(gw.http);
    let r = d.request(&post("/meter", b"anonymous", ""));
    assert_eq!(r.status, 200, "{}", r.body_text());
}

/// Check every figure of `dom` against the admin API as it answers now.
/// `background`: requests the unknown device sent besides [`send_traffic`].
fn check_figures(dom: &str, addr: SocketAddr, token: Option<&str>, background: u64) {
    // The markup only (the dump also holds the script's text).
    let dom = &dom[..dom.find("<script>").expect("the page's script")];
    let metrics = admin_ok(addr, "/metrics", token);
    let polls = number(by_id(dom, "polls"));
    assert!(polls >= 2.0, "the page polled {polls} times:\n{dom}");
    assert_eq!(by_id(dom, "error"), "", "the page reported an error");

    let requests = metric_sum(&metrics, "simgate_http_requests_total");
    let sent = SIMS.iter().map(|s| s.2 as u64).sum::<u64>() + 1 + background;
    assert_eq!(requests, sent as f64, "{metrics}");
    assert_eq!(number(by_id(dom, "requests-total")), requests);
    assert_eq!(
        number(by_id(dom, "mqtt-publishes-total")),
        metric_sum(&metrics, "simgate_mqtt_publishes_total")
    );
    assert_eq!(
        number(by_id(dom, "connections-open")),
        metric_sum(&metrics, "simgate_connections_open")
    );
    assert_eq!(
        number(by_id(dom, "shards")),
        metric_sum(&metrics, "simgate_shards")
    );
    assert_eq!(number(by_id(dom, "shards")), 2.0);
    // Quiet while the page polled: no throughput in its last interval.
    assert_eq!(number(by_id(dom, "requests-rate")), 0.0);
    let readyz = admin(addr, "/readyz", token);
    assert_eq!(readyz.status, 200);
    assert_eq!(by_id(dom, "readiness"), "ready");

    // The charts were drawn: the throughput chart and the sink's latency chart have points.
    let points = |attr: &str| {
        let at = dom
            .find(attr)
            .unwrap_or_else(|| panic!("no {attr}:\n{dom}"));
        let tag_end = dom[at..].find('>').expect("tag") + at;
        let tag = &dom[..tag_end];
        let p = tag.rfind("data-points=\"").expect("data-points") + "data-points=\"".len();
        number(&tag[p..p + tag[p..].find('"').expect("quote")])
    };
    assert!(points("id=\"chart-throughput\"") >= 2.0, "{dom}");
    assert!(points("id=\"chart-latency-sink\"") >= 1.0, "{dom}");
    assert!(dom.contains("<path d=\"M"), "no line drawn:\n{dom}");

    // Per destination: request count and whole-run percentiles from the histogram buckets.
    let row = "<tr data-destination=\"sink\"";
    let count: f64 = samples(&metrics, "simgate_request_duration_seconds_count")
        .iter()
        .filter(|(l, _)| label(l, "destination") == Some("sink"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(count, sent as f64, "{metrics}");
    assert_eq!(number(cell(dom, row, "requests")), count);
    for (field, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let shown = number(cell(dom, row, field));
        let expected = quantile_ms(&metrics, "sink", q);
        // The page prints 2 decimals.
        assert!(
            (shown - expected).abs() <= 0.005 + 1e-9,
            "{field}: page {shown}, /metrics {expected}"
        );
    }

    // The probe: as /admin/probes has it.
    let probes: serde_json::Value =
        serde_json::from_str(&admin_ok(addr, "/admin/probes", token)).expect("probes json");
    let sink = &probes["destinations"][0];
    assert_eq!(sink["destination"], "sink");
    assert_eq!(
        cell(dom, row, "probe"),
        sink["result"].as_str().expect("result")
    );
    assert_eq!(cell(dom, row, "probe"), "ok");
    assert_eq!(
        number(cell(dom, row, "probe-failures")),
        sink["consecutive_failures"].as_f64().expect("failures")
    );

    // Shard load: every shard listed; no connection open now.
    for shard in 0..2 {
        assert_eq!(
            number(cell(
                dom,
                &format!("<tr data-shard=\"{shard}\""),
                "connections"
            )),
            0.0
        );
    }

    // Top SIMs: the heaviest first, each row as /admin/usage has it.
    let usage: serde_json::Value =
        serde_json::from_str(&admin_ok(addr, "/admin/usage?format=json", token))
            .expect("usage json");
    let rows = usage["sims"].as_array().expect("sims");
    let bytes =
        |r: &serde_json::Value| r["up_bytes"].as_u64().unwrap() + r["down_bytes"].as_u64().unwrap();
    let mut top: Vec<&serde_json::Value> = rows.iter().collect();
    top.sort_by_key(|r| std::cmp::Reverse(bytes(r)));
    top.truncate(10);
    let expected: Vec<String> = top
        .iter()
        .map(|r| r["imsi"].as_str().expect("imsi").to_owned())
        .collect();
    let shown: Vec<String> = dom
        .match_indices("<tr data-imsi=\"")
        .map(|(at, m)| {
            let rest = &dom[at + m.len()..];
            rest[..rest.find('"').expect("quote")].to_owned()
        })
        .collect();
    assert_eq!(shown, expected, "top SIMs by bytes, in order");
    for (_, imsi, n) in SIMS {
        let u = rows
            .iter()
            .find(|r| r["imsi"] == imsi)
            .unwrap_or_else(|| panic!("{imsi} in {usage}"));
        assert_eq!(u["up_msgs"], n as u64);
        let row = format!("<tr data-imsi=\"{imsi}\"");
        for field in ["up_bytes", "down_bytes", "up_msgs", "down_msgs", "errors"] {
            assert_eq!(
                number(cell(dom, &row, field)),
                u[field].as_f64().expect("count"),
                "{imsi} {field}"
            );
        }
    }
}

#[test]
fn status_page_in_chromium_shows_what_metrics_say() {
    chromium();
    let world = World::new();
    let gw = world.simgate(&config(&world, false));
    let addr = gw.admin.expect("admin address");
    wait_settled(&gw, None);

    // The page as served: HTML, no-store, a CSP allowing only itself and same-origin fetches.
    for path in ["/", "/status"] {
        let r = admin(addr, path, None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(r.body_text().contains("id=\"requests-total\""));
    }

    // Under traffic: load the page and take a screenshot while devices send.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, http) = (stop.clone(), gw.http);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut d = Device::connect(http);
            while !stop.load(Ordering::Relaxed) {
                let r = d.request(&post("/meter", b"background", ""));
                assert_eq!(r.status, 200, "{}", r.body_text());
                sent += 1;
            }
            sent
        })
    };
    let shot = world.dir.path().join("status.png");
    let profile = world.dir.path().join("chromium-profile");
    let busy = run_chromium(
        &format!("http://{addr}/"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            "--dump-dom",
        ],
        &profile,
    );
    stop.store(true, Ordering::Relaxed);
    let background = traffic.join().expect("traffic thread");
    assert!(background > 0);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 20_000, "screenshot only {} bytes", png.len());
    // What it showed under traffic: requests flowing, drawn in both charts.
    let busy = &busy[..busy.find("<script>").expect("the page's script")];
    assert!(number(by_id(busy, "polls")) >= 2.0, "{busy}");
    assert!(number(by_id(busy, "requests-rate")) > 0.0, "{busy}");
    assert!(number(by_id(busy, "requests-total")) > 0.0, "{busy}");
    assert!(busy.contains("id=\"chart-latency-sink\""), "{busy}");
    if let Ok(dir) = std::env::var("SIMGATE_STATUS_SCREENSHOT") {
        let _ = std::fs::copy(&shot, Path::new(&dir).join("status.png"));
    }

    // Traffic from known SIMs, then quiet: the page's figures equal the admin API's.
    send_traffic(&gw);
    wait_settled(&gw, None);
    let dom = run_chromium(&format!("http://{addr}/"), &["--dump-dom"], &profile);
    check_figures(&dom, addr, None, background);
}

#[test]
fn status_page_sends_the_token_from_the_fragment() {
    chromium();
    let world = World::new();
    let gw = world.simgate(&config(&world, true));
    let addr = gw.admin.expect("admin address");
    // The page needs no token; the API still does.
    assert_eq!(admin(addr, "/", None).status, 200);
    assert_eq!(admin(addr, "/metrics", None).status, 401);
    wait_settled(&gw, Some(TOKEN));
    send_traffic(&gw);
    wait_settled(&gw, Some(TOKEN));
    let profile = world.dir.path().join("chromium-profile");

    let dom = run_chromium(
        &format!("http://{addr}/#token={TOKEN}"),
        &["--dump-dom"],
        &profile,
    );
    check_figures(&dom, addr, Some(TOKEN), 0);

    let dom = run_chromium(&format!("http://{addr}/"), &["--dump-dom"], &profile);
    assert!(
        by_id(&dom, "error").contains("401"),
        "without the fragment the page says its fetches got 401:\n{dom}"
    );
    assert_eq!(by_id(&dom, "polls"), "0");
}
