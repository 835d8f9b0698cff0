//! Integration: `/metrics` is valid Prometheus exposition (checked by `promtool`) and a real
//! Prometheus scrapes it and can query simgate's counters.

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
