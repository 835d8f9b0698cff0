//! `simgate demo`: the whole path on loopback with no setup.
//!
//! Mints a CA and a server certificate, starts the built-in HTTPS sink standing in for a cloud,
//! starts simgate in front of it (same [`Gateway`] as `simgate run`, with a generated config
//! compiled by the normal config path), and drives it with the built-in device simulator. Prints
//! once a second the requests per second and the latency simgate adds (p50/p99), and a summary on
//! Ctrl-C or when `--duration` ends.
//!
//! What it does not do: touch anything outside a temporary directory, or listen beyond loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config;
use crate::shard::{Gateway, ShardMetrics};
use crate::testkit::{DeviceSim, DeviceSimConfig, HttpsSink, SinkConfig, TestPki};

/// Demo options (from the command line).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated device connections.
    pub connections: usize,
    /// Request body size in bytes.
    pub body_size: usize,
    /// Target request rate (None: as fast as the devices can go).
    pub rate: Option<u64>,
    /// Stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Shards (None: one per core).
    pub shards: Option<usize>,
    /// The demo cloud and simgate offer `h2`: requests travel as HTTP/2 streams on one shared
    /// connection per shard (false: HTTP/1.1, a pooled connection per request in flight).
    pub http2: bool,
}

/// Run the demo; returns the final merged gateway metrics.
pub fn run(opts: &DemoOptions) -> Result<ShardMetrics, Box<dyn std::error::Error>> {
    // A private, unpredictable directory for the generated CA and keys, removed on return.
    let tmp = tempfile::Builder::new().prefix("simgate-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let pki = TestPki::new(&dir)?;
    let server = pki.server_cert("sink", &["localhost", "127.0.0.1"])?;
    let sink = HttpsSink::start(SinkConfig {
        record: false,
        http2: opts.http2,
        ..SinkConfig::new(server)
    })?;
    let alpn = if opts.http2 {
        r#"["h2", "http/1.1"]"#
    } else {
        r#"["http/1.1"]"#
    };
    let shards = opts
        .shards
        .map_or_else(|| "\"auto\"".to_string(), |n| n.to_string());
    let toml = format!(
        r#"
[gateway]
shards = {shards}
admin = "off"

[[listener]]
name = "devices"
protocol = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "demo-cloud"
adapter = "https"
endpoint = "{sink}"
server_name = "localhost"
ca = "{ca}"
alpn = {alpn}

[[group]]
name = "default"
routes = [{{ listener = "devices", path = "/", destination = "demo-cloud" }}]
"#,
        sink = sink.addr(),
        ca = pki.ca_pem.display(),
    );
    let plan = config::compile_str(&toml, &dir)?;
    let gateway = Gateway::start(Arc::new(plan))?;
    let target = gateway
        .listener_addrs()
        .first()
        .map(|(_, a)| *a)
        .ok_or("demo config has no listener")?;
    println!(
        "simgate demo: {} shard(s); devices -> http://{target}/telemetry -> simgate -> https://localhost:{} (demo cloud)",
        gateway.shard_count(),
        sink.addr().port()
    );
    println!(
        "{} device connections, {} B bodies, {}; Ctrl-C for the summary",
        opts.connections,
        opts.body_size,
        opts.rate.map_or_else(
            || "as fast as they can".to_string(),
            |r| format!("{r} req/s")
        ),
    );
    let sim = DeviceSim::start(DeviceSimConfig {
        connections: opts.connections,
        path: "/telemetry".into(),
        body_size: opts.body_size,
        rate_per_sec: opts.rate,
        ..DeviceSimConfig::new(target)
    })?;

    let stop = ctrl_c_flag()?;
    let started = Instant::now();
    let mut last_requests = 0u64;
    let mut last_tick = started;
    let mut last_added = ShardMetrics::default().gateway_added_us;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let m = gateway.metrics();
        let now = Instant::now();
        let done = m.responses_by_class[2];
        let rate =
            done.saturating_sub(last_requests) as f64 / now.duration_since(last_tick).as_secs_f64();
        last_requests = done;
        last_tick = now;
        // Percentiles of this second only: the cumulative histogram minus the previous one.
        let mut interval = m.gateway_added_us.clone();
        if interval.subtract(&last_added).is_err() {
            interval = m.gateway_added_us.clone();
        }
        last_added = m.gateway_added_us.clone();
        let errors: u64 = m.errors.iter().flatten().sum();
        println!(
            "{:>4}s  {:>9.0} req/s  added by simgate p50 {:>7.3} ms  p99 {:>7.3} ms  upstream conns {} (HTTP/2 {})  errors {}",
            now.duration_since(started).as_secs(),
            rate,
            ms(interval.value_at_quantile(0.5)),
            ms(interval.value_at_quantile(0.99)),
            m.upstream.connects,
            m.upstream.h2_connections,
            errors,
        );
        let out_of_time = opts.duration.is_some_and(|d| started.elapsed() >= d);
        if out_of_time || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    let device_view = sim.stop();
    let m = gateway.metrics();
    gateway.shutdown();
    let secs = started.elapsed().as_secs_f64();
    println!();
    println!("summary after {secs:.1}s");
    println!(
        "  requests relayed  {} ({:.0}/s), simgate errors {}, device-side errors {}",
        m.responses_by_class[2],
        m.responses_by_class[2] as f64 / secs,
        m.errors.iter().flatten().sum::<u64>(),
        device_view.errors
    );
    println!(
        "  added by simgate  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(m.gateway_added_us.value_at_quantile(0.5)),
        ms(m.gateway_added_us.value_at_quantile(0.9)),
        ms(m.gateway_added_us.value_at_quantile(0.99)),
        ms(m.gateway_added_us.max()),
    );
    println!(
        "  device round trip p50 {:.3} ms  p99 {:.3} ms (through simgate and the demo cloud)",
        ms(device_view.latency.value_at_quantile(0.5)),
        ms(device_view.latency.value_at_quantile(0.99)),
    );
    println!(
        "  upstream TLS connections {} (resumed {}), requests on reused connections {}",
        m.upstream.connects, m.upstream.tls_resumed, m.upstream_reused
    );
    println!("  demo cloud received {} requests", sink.stats().requests);
    drop(tmp);
    Ok(m)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A flag set by SIGINT, via a small tokio signal task on its own thread.
fn ctrl_c_flag() -> std::io::Result<Arc<std::sync::atomic::AtomicBool>> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let f = flag.clone();
    std::thread::Builder::new()
        .name("simgate-demo-signal".into())
        .spawn(move || {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    f.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })?;
    Ok(flag)
}
