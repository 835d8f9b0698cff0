//! Integration: `/metrics` is valid Prometheus exposition (checked by `promtool`) and a real
//! Prometheus scrapes it and can query simgate's counters and, with `histogram_quantile`, its
//! per-destination latency histograms; `/histograms/{name}` answers the same samples.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn need(binary: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{binary}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!(
        "{binary} is required for this test: apt-get install prometheus (scripts/test.sh does it)"
    );
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_pass_promtool_and_are_scraped_by_prometheus() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let mut d = Device::connect(gw.http);
    for _ in 0..5 {
        assert_eq!(d.request(&post("/m", b"x", "")).status, 200);
    }
    let mut bad = Device::connect(gw.http);
    assert_eq!(bad.request(b"BROKEN\r\n\r\n").status, 400);

    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new(need("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping the admin endpoint.
    let admin = gw.admin.expect("admin endpoint");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = world.dir.path();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: simgate\n    \
             static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prom = Prometheus(
        Command::new(need("prometheus"))
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // Prometheus has no push signal for "first scrape done": query until the series appears
    // (bounded).
    let query = "GET /api/v1/query?query=simgate_http_responses_total%7Bclass%3D%222xx%22%7D HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            let resp = raw_exchange(([127, 0, 0, 1], port).into(), query.as_bytes());
            let body = resp.body_text();
            if resp.status == 200 && body.contains("\"5\"]") {
                assert!(body.contains("\"job\":\"simgate\""), "{body}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned simgate_http_responses_total{{class=\"2xx\"}} = 5"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `Total count` of an HdrHistogram percentile distribution text.
fn distribution_total(text: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains("Total count"))
        .unwrap_or_else(|| panic!("no footer in:\n{text}"));
    line.split('=')
        .nth(2)
        .and_then(|v| v.trim().trim_end_matches(']').trim().parse().ok())
        .unwrap_or_else(|| panic!("bad footer {line:?}"))
}

#[test]
fn per_destination_histograms_count_every_request_and_prometheus_answers_quantiles() {
    let world = World::new();
    let toml = format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "alpha"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

[[destination]]
name = "beta"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"

[[group]]
name = "default"
routes = [
  {{ listener = "http", path = "/a", destination = "alpha" }},
  {{ listener = "http", path = "/b", destination = "beta" }},
]
"#,
        sink = world.sink.addr(),
        ca = world.pki.ca_pem.display()
    );
    let gw = world.simgate(&toml);
    // Many connections, so the kernel spreads them over both shards.
    let (per_alpha, per_beta) = (3u64, 2u64);
    let connections = 8u64;
    for _ in 0..connections {
        let mut d = Device::connect(gw.http);
        for _ in 0..per_alpha {
            assert_eq!(d.request(&post("/a/m", b"x", "")).status, 200);
        }
        for _ in 0..per_beta {
            assert_eq!(d.request(&post("/b/m", b"y", "")).status, 200);
        }
    }
    let (alpha, beta) = (connections * per_alpha, connections * per_beta);

    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    for (dest, n) in [("alpha", alpha), ("beta", beta)] {
        let labels = format!("destination=\"{dest}\",protocol=\"http\"");
        for family in [
            "simgate_request_duration_seconds",
            "simgate_upstream_rtt_seconds",
            "simgate_gateway_added_seconds",
        ] {
            assert_eq!(
                sample(&text, &format!("{family}_count{{{labels}}}")),
                Some(n as f64),
                "{family} of {dest}:\n{text}"
            );
            assert_eq!(
                sample(&text, &format!("{family}_bucket{{{labels},le=\"+Inf\"}}")),
                Some(n as f64)
            );
        }
        // Every connect's TCP stage, and its TLS stage (full or resumed) once each.
        let stage = |s: &str, r: &str| {
            sample(
                &text,
                &format!(
                    "simgate_upstream_connect_seconds_count{{destination=\"{dest}\",stage=\"{s}\",resumed=\"{r}\"}}"
                ),
            )
            .unwrap_or(0.0)
        };
        let tcp = stage("tcp", "false");
        assert!(tcp >= 1.0, "no connect timed for {dest}:\n{text}");
        assert_eq!(tcp, stage("tls", "false") + stage("tls", "true"));

        let (status, dist) =
            gw.admin_get(&format!("/histograms/request_duration?destination={dest}"));
        assert_eq!(status, 200, "{dist}");
        assert!(dist.trim_start().starts_with("Value"), "{dist}");
        assert_eq!(distribution_total(&dist), n, "{dist}");
    }
    // The connect counters and the connect histograms agree.
    let connects = sample(&text, "simgate_upstream_connects_total").expect("connects counter");
    let timed: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("simgate_upstream_connect_seconds_count{") && l.contains("stage=\"tcp\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(timed, connects, "{text}");
    // Pool waits: at most one per request (most were served by a pooled connection at once).
    let waits: f64 = text
        .lines()
        .filter(|l| l.starts_with("simgate_upstream_pool_wait_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(waits <= (alpha + beta) as f64, "{text}");
    assert_eq!(gw.admin_get("/histograms/nope?destination=alpha").0, 404);

    assert_eq!(
        gw.admin_get("/histograms/request_duration?destination=gone")
            .0,
        404
    );

    // A real Prometheus: histogram_quantile over the new series answers for each destination.
    let admin = gw.admin.expect("admin endpoint");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = world.dir.path();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: simgate\n    \
             static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prom = Prometheus(
        Command::new(need("prometheus"))
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // histogram_quantile(0.99, sum by (destination, le) (simgate_request_duration_seconds_bucket))
    let query = "GET /api/v1/query?query=histogram_quantile%280.99%2C%20sum%20by%20%28destination%2C%20le%29%20%28simgate_request_duration_seconds_bucket%29%29 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            let resp = raw_exchange(([127, 0, 0, 1], port).into(), query.as_bytes());
            let body = resp.body_text();
            if resp.status == 200
                && body.contains("\"destination\":\"alpha\"")
                && body.contains("\"destination\":\"beta\"")
            {
                // A number of seconds, not NaN (which an empty histogram would give).
                assert!(!body.contains("NaN"), "{body}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered histogram_quantile over simgate_request_duration_seconds"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // After the scrape: a reload that keeps alpha, drops beta and adds gamma (listed first, so alpha moves to
    // another index): alpha's samples survive, beta's series go, gamma has none yet.
    let reloaded = toml
        .replace("name = \"beta\"", "name = \"gamma\"")
        .replace("destination = \"beta\"", "destination = \"gamma\"");
    let (alpha_start, rest) = reloaded.split_at(reloaded.find("[[destination]]").expect("dest"));
    let second = rest[15..]
        .find("[[destination]]")
        .expect("second destination")
        + 15;
    let reordered = format!("{alpha_start}{}\n{}", &rest[second..], &rest[..second]);
    std::fs::write(&gw.config_path, &reordered).expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "reload: {body}\n{reordered}");
    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        sample(
            &text,
            "simgate_request_duration_seconds_count{destination=\"alpha\",protocol=\"http\"}"
        ),
        Some(alpha as f64),
        "{text}"
    );
    assert!(!text.contains("destination=\"beta\""), "{text}");
    assert_eq!(
        gw.admin_get("/histograms/request_duration?destination=beta")
            .0,
        404
    );
    let (status, dist) = gw.admin_get("/histograms/request_duration?destination=gamma");
    assert_eq!((status, distribution_total(&dist)), (200, 0));
    let mut d = Device::connect(gw.http);
    assert_eq!(d.request(&post("/a/m", b"x", "")).status, 200);
    let (_, dist) = gw.admin_get("/histograms/request_duration?destination=alpha");
    assert_eq!(distribution_total(&dist), alpha + 1);
}

/// The value of every `family{shard="N",...}` sample in `text`, by shard, for `extra` labels
/// (empty or `,state="in_use"`).
fn per_shard(text: &str, family: &str, extra: &str, shards: usize) -> Vec<f64> {
    (0..shards)
        .map(|s| {
            sample(text, &format!("{family}{{shard=\"{s}\"{extra}}}"))
                .unwrap_or_else(|| panic!("no {family} for shard {s}{extra}:\n{text}"))
        })
        .collect()
}

#[test]
fn reactor_counters_are_exported_per_shard_and_consistent() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    // Several connections, so the kernel spreads them over both shards.
    for _ in 0..8 {
        let mut d = Device::connect(gw.http);
        for _ in 0..3 {
            assert_eq!(d.request(&post("/m", b"x", "")).status, 200);
        }
    }
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    let shards = 2;
    let submissions = per_shard(&text, "simgate_reactor_submissions_total", "", shards);
    let sqes = per_shard(&text, "simgate_reactor_sqes_total", "", shards);
    let completions = per_shard(&text, "simgate_reactor_completions_total", "", shards);
    let turns = per_shard(&text, "simgate_reactor_loop_turns_total", "", shards);
    let in_use = per_shard(
        &text,
        "simgate_reactor_recv_buffers",
        ",state=\"in_use\"",
        shards,
    );
    let total = per_shard(
        &text,
        "simgate_reactor_recv_buffers",
        ",state=\"total\"",
        shards,
    );
    for s in 0..shards {
        assert!(completions[s] > 0.0, "shard {s}:\n{text}");
        assert!(submissions[s] > 0.0, "shard {s}:\n{text}");
        assert!(
            sqes[s] >= submissions[s],
            "shard {s}: every batch carries an SQE\n{text}"
        );
        assert!(turns[s] > 0.0, "shard {s}:\n{text}");
        assert!(in_use[s] <= total[s], "shard {s}:\n{text}");
        // gateway.recv_buffers defaults to 4096 per shard.
        assert_eq!(total[s], 4096.0, "shard {s}");
        // Each shard runs its accept loop and pool maintenance as tasks, and arms timers.
        assert!(per_shard(&text, "simgate_reactor_tasks", "", shards)[s] >= 1.0);
        assert!(per_shard(&text, "simgate_reactor_ops_in_flight", "", shards)[s] >= 1.0);
        per_shard(&text, "simgate_reactor_timers", "", shards);
        per_shard(&text, "simgate_reactor_timers_fired_total", "", shards);
        per_shard(&text, "simgate_reactor_enobufs_rearms_total", "", shards);
        per_shard(&text, "simgate_reactor_recv_pauses_total", "", shards);
    }
    // Bounded label set: a third shard does not exist.
    assert!(!text.contains("shard=\"2\""), "{text}");
    // Counters only grow: a later scrape sees at least as many completions on each shard.
    let (_, later) = gw.admin_get("/metrics");
    let again = per_shard(&later, "simgate_reactor_completions_total", "", shards);
    for s in 0..shards {
        assert!(again[s] >= completions[s], "shard {s}");
    }
}

#[test]
fn with_measurement_off_there_are_no_destination_histograms_and_usage_refuses() {
    let world = World::new();
    let toml = format!(
        "{}\n[metrics]\nhistograms = false\n\n[usage]\nenabled = false\nfile = \"usage.jsonl\"\n",
        world.config("", "")
    );
    let gw = world.simgate(&toml);
    for _ in 0..4 {
        let mut d = Device::connect(gw.http);
        for _ in 0..3 {
            assert_eq!(d.request(&post("/m", b"x", "")).status, 200);
        }
    }
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    // Traffic was counted...
    assert_eq!(sample(&text, "simgate_http_requests_total"), Some(12.0));
    // ...but no per-destination histogram family is exported at all.
    for family in [
        "simgate_request_duration_seconds",
        "simgate_upstream_rtt_seconds",
        "simgate_upstream_connect_seconds",
        "simgate_upstream_pool_wait_seconds",
    ] {
        assert!(!text.contains(family), "{family} exported:\n{text}");
    }
    let (status, body) = gw.admin_get("/histograms/request_duration?destination=sink");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("metrics.histograms = false"), "{body}");
    let (status, body) = gw.admin_get("/admin/usage");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body.trim(), "usage metering is off (usage.enabled = false)");
    // A clean stop closes the partial usage interval; with metering off there is no file.
    assert_eq!(gw.stop(), Some(0));
    assert!(!world.dir.path().join("usage.jsonl").exists());
}
