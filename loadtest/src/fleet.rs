//! Runs a scenario: starts the devices on a small multi-threaded tokio runtime (ramped), ticks
//! once a second (progress line, HdrHistogram log interval, `/proc` sample of the gateway) and
//! builds the [`Report`] at the deadline.
//!
//! The ramp starts device `i` at `i / ramp_per_s` seconds (all at once when the ramp is 0); each
//! device's schedule counts from its own start, so the ramp itself is not charged as latency.
//! At the deadline every device task is dropped, abandoning messages in flight (reported as
//! `in_flight_at_end`).
//!
//! [`RunOptions::mark_after`] takes a mark at the start or at a tick: the report then also holds
//! the device-side counts and latency after it ([`crate::stats::AfterMark`]), a warm-up cut for
//! runs with no sink.
//!
//! What it does NOT do: warm-up exclusion in the main counters (run a short scenario first, or
//! use the mark), coordinated stop with the gateway, or raising the file-descriptor limit
//! (`ulimit -n` before large fleets).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::device::{run_device, FleetPlan};
use crate::hdrlog::IntervalLogWriter;
use crate::procstat::{self, ProcSample};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{
    AfterMark, GatewayUsage, HistogramError, LatencySummary, ProgressLine, Recorder, Report, Totals,
};
use crate::tracker::DeliveryTracker;

/// How to run a scenario (the command-line overrides).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The gateway's device listener (overrides the scenario's `target`).
    pub target: SocketAddr,
    /// Run length (overrides the scenario's `duration_s`).
    pub duration: Duration,
    /// Gateway process to sample CPU and RSS of.
    pub gateway_pid: Option<u32>,
    /// tokio worker threads.
    pub threads: usize,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Prefix of the progress lines (`[label] t= ...`), telling apart the parts of a mixed
    /// scenario running side by side; None for a lone run.
    pub label: Option<String>,
    /// The sink's delivery accounting (built-in sink or subscriber): reset when the run
    /// starts, summarized into [`Report::delivery`] when it ends.
    pub delivery: Option<Arc<DeliveryTracker>>,
    /// Take a mark at the start (zero) or at the first once-a-second tick at or after this
    /// time: [`Report::after_mark`] then holds the device-side counts and latency from the mark
    /// on, and the sampled gateway's CPU ticks at the mark. None: no mark.
    pub mark_after: Option<Duration>,
}

/// Why a run could not start or finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// A latency histogram could not be created.
    Histogram,
    /// The tokio runtime could not be built.
    Runtime(std::io::ErrorKind),
    /// `--pid` names a process that cannot be sampled.
    Gateway(procstat::ProcError),
    /// Writing the HdrHistogram log failed.
    HdrLog(std::io::ErrorKind),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Histogram => f.write_str("latency histogram creation failed"),
            Self::Runtime(kind) => write!(f, "tokio runtime start failed: {kind}"),
            Self::Gateway(err) => write!(f, "sampling the gateway process: {err}"),
            Self::HdrLog(kind) => write!(f, "writing the HdrHistogram log: {kind}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<HistogramError> for RunError {
    fn from(_: HistogramError) -> Self {
        Self::Histogram
    }
}

/// Runs `scenario` and returns its report. `hdr_log`, when given, receives an interval log;
/// progress lines go to stderr when [`RunOptions::progress`] is set.
pub fn run(
    scenario: &Scenario,
    options: &RunOptions,
    hdr_log: Option<Box<dyn Write + Send>>,
) -> Result<Report, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .thread_name("simgate-load")
        .build()
        .map_err(|e| RunError::Runtime(e.kind()))?;
    runtime.block_on(run_async(scenario, options, hdr_log))
}

async fn run_async(
    scenario: &Scenario,
    options: &RunOptions,
    hdr_log: Option<Box<dyn Write + Send>>,
) -> Result<Report, RunError> {
    let recorder = Arc::new(Recorder::new()?);
    let plan = Arc::new(FleetPlan::new(scenario, options.target));
    let gateway_start = match options.gateway_pid {
        Some(pid) => Some(procstat::sample(pid).map_err(RunError::Gateway)?),
        None => None,
    };
    let wall_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut log = match hdr_log {
        Some(out) => {
            Some(IntervalLogWriter::new(out, wall_start).map_err(|e| RunError::HdrLog(e.kind()))?)
        }
        None => None,
    };

    if let Some(tracker) = &options.delivery {
        tracker.reset();
    }
    let start = Instant::now();
    let deadline = start + options.duration;
    let devices = scenario.fleet.devices;
    let ramp = scenario.fleet.ramp_per_s;
    // The tick loop below flips `stop` after its last reading; every device task ends then.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // One spawner task walks the ramp so that a million devices do not become a million timers
    // up front.
    let spawner = {
        let (plan, recorder) = (Arc::clone(&plan), Arc::clone(&recorder));
        let mut spawner_stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for index in 0..devices {
                let device_start = if ramp > 0.0 {
                    start + Duration::from_secs_f64(index as f64 / ramp)
                } else {
                    start
                };
                if device_start >= deadline {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(device_start) => {}
                    // Stopped (or the run loop is gone): start no more devices.
                    _ = spawner_stop.wait_for(|stopped| *stopped) => break,
                }
                let device = run_device(
                    Arc::clone(&plan),
                    Arc::clone(&recorder),
                    index,
                    device_start,
                );
                let mut device_stop = stop_rx.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        () = device => {}
                        _ = device_stop.wait_for(|stopped| *stopped) => {}
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    let mut totals = Totals::new()?;
    // The mark: when, the totals then, and the gateway's CPU ticks then.
    let mut mark: Option<(f64, Totals, Option<u64>)> = None;
    if options.mark_after == Some(Duration::ZERO) {
        mark = Some((0.0, totals.clone(), gateway_start.map(|s| s.cpu_ticks)));
    }
    let mut intervals = Vec::new();
    let mut gateway_peak_rss = gateway_start.map_or(0, |s| s.rss_kib);
    let mut gateway_last = gateway_start;
    let mut interval_start = start;
    let mut tick = start;
    let mut open_at_deadline = 0;
    loop {
        tick = (tick + Duration::from_secs(1)).min(deadline);
        tokio::time::sleep_until(tick).await;
        if tick >= deadline {
            // Read the gauge before the device tasks are stopped and drop their connections.
            open_at_deadline = recorder.open_connections();
        }
        let interval = recorder.take_interval();
        let now = Instant::now();
        let length = now.duration_since(interval_start).as_secs_f64();
        let mut line = ProgressLine {
            t: now.duration_since(start).as_secs_f64(),
            sent: interval.counts.sent,
            answered_per_s: if length > 0.0 {
                interval.counts.answered as f64 / length
            } else {
                0.0
            },
            errors: interval.counts.error_total(),
            p50_us: interval.latency.value_at_quantile(0.5),
            p99_us: interval.latency.value_at_quantile(0.99),
            open: recorder.open_connections(),
            gateway_cpu_percent: None,
            gateway_rss_kib: None,
        };
        if let (Some(pid), Some(previous)) = (options.gateway_pid, gateway_last) {
            // A gateway that exited mid-run leaves the last good sample in place.
            if let Ok(sample) = procstat::sample(pid) {
                line.gateway_cpu_percent = Some(procstat::cpu_percent(&previous, &sample, length));
                line.gateway_rss_kib = Some(sample.rss_kib);
                gateway_peak_rss = gateway_peak_rss.max(sample.rss_kib);
                gateway_last = Some(sample);
            }
        }
        if let Some(log) = log.as_mut() {
            log.write_interval(
                interval_start.duration_since(start).as_secs_f64(),
                length,
                &interval.latency,
            )
            .map_err(|e| RunError::HdrLog(e.kind()))?;
        }
        if options.progress {
            match &options.label {
                Some(label) => eprintln!("[{label}] {line}"),
                None => eprintln!("{line}"),
            }
        }
        totals.add(&interval);
        if mark.is_none()
            && options
                .mark_after
                .is_some_and(|after| tick.duration_since(start) >= after)
        {
            // A fresh sample, so the CPU ticks and the totals are read at the same moment.
            let ticks = options
                .gateway_pid
                .and_then(|pid| procstat::sample(pid).ok())
                .map(|s| s.cpu_ticks);
            mark = Some((line.t, totals.clone(), ticks));
        }
        intervals.push(line);
        interval_start = now;
        if tick >= deadline {
            break;
        }
    }
    // Every task watches `stop`; a send error would mean none is left to tell.
    let _ = stop.send(true);
    // Wait for the devices to let go of their sockets.
    let _ = spawner.await;
    // Anything recorded between the last tick and the tasks' end belongs to the run too.
    totals.add(&recorder.take_interval());
    let elapsed = Instant::now().duration_since(start).as_secs_f64().max(1e-9);
    let counts = totals.counts.clone();
    let in_flight_at_end = counts
        .sent
        .saturating_sub(counts.answered)
        .saturating_sub(counts.failed);
    let peak_open = recorder.peak_open_connections();
    let gateway = match (options.gateway_pid, gateway_start, gateway_last) {
        (Some(pid), Some(first), Some(last)) => Some(gateway_usage(
            pid,
            &first,
            &last,
            gateway_peak_rss,
            peak_open,
            elapsed,
        )),
        _ => None,
    };
    Ok(Report {
        scenario: scenario.name.clone(),
        target: options.target.to_string(),
        protocol: match scenario.fleet.protocol {
            Protocol::Http => "http".to_owned(),
            Protocol::Mqtt => "mqtt".to_owned(),
        },
        devices,
        duration_s: elapsed,
        target_rate_per_s: scenario.traffic.rate_per_s,
        achieved_rate_per_s: counts.answered as f64 / elapsed,
        latency_us: LatencySummary::of(&totals.latency),
        counts,
        in_flight_at_end,
        open_at_end: open_at_deadline,
        peak_open,
        gateway,
        intervals,
        delivery: options.delivery.as_ref().map(|t| t.summary()),
        after_mark: mark.map(|(at_s, then, gateway_cpu_ticks)| {
            let mut latency = totals.latency.clone();
            // `then` is an earlier state of the same histogram: subtraction cannot fail.
            let _ = latency.subtract(&then.latency);
            AfterMark {
                at_s,
                ok: totals.counts.ok.saturating_sub(then.counts.ok),
                answered: totals.counts.answered.saturating_sub(then.counts.answered),
                gateway_cpu_ticks,
                latency,
            }
        }),
    })
}

fn gateway_usage(
    pid: u32,
    first: &ProcSample,
    last: &ProcSample,
    peak_rss_kib: u64,
    peak_open: u64,
    elapsed_secs: f64,
) -> GatewayUsage {
    let cpu_ticks = last.cpu_ticks.saturating_sub(first.cpu_ticks);
    GatewayUsage {
        pid,
        cpu_seconds: cpu_ticks as f64 / procstat::CLOCK_TICKS_PER_SEC as f64,
        cpu_percent: procstat::cpu_percent(first, last, elapsed_secs),
        rss_kib_start: first.rss_kib,
        rss_kib_end: last.rss_kib,
        rss_kib_peak: peak_rss_kib,
        rss_bytes_per_connection: (peak_open > 0)
            .then(|| peak_rss_kib.saturating_sub(first.rss_kib) * 1024 / peak_open),
    }
}

#[cfg(test)]
mod tests {
    //! End-to-end runs of tiny scenarios against in-test HTTP and MQTT responders.
    use super::*;
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use bytes::{Buf, BytesMut};
    use parking_lot::Mutex;
    use simgate::proto::mqtt::{
        self, ConnAck, DecodeLimits, Decoded, Packet, Properties, ProtocolVersion, PubResponse,
        ReasonCode,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::stats::ErrorKind;

    /// What an in-test server saw.
    #[derive(Default)]
    struct Seen {
        peers: BTreeSet<IpAddr>,
        accepted: u64,
        messages: u64,
        topics: BTreeSet<String>,
    }

    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Seen>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    type Handler = fn(TcpStream, Arc<Mutex<Seen>>) -> futures_lite::BoxFuture;

    mod futures_lite {
        pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    }

    fn start_server(handler: Handler) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_seen = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => {
                            let (stream, peer) = accepted.expect("accept");
                            {
                                let mut seen = thread_seen.lock();
                                seen.peers.insert(peer.ip());
                                seen.accepted += 1;
                            }
                            tokio::spawn(handler(stream, Arc::clone(&thread_seen)));
                        }
                    }
                }
            });
        });
        Server {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// HTTP/1.1: answers every request 200 (honouring `Connection: close`); the very first
    /// request of the server's life is answered after 300 ms.
    fn http_handler(stalls_first: bool) -> Handler {
        fn plain(stream: TcpStream, seen: Arc<Mutex<Seen>>) -> futures_lite::BoxFuture {
            Box::pin(serve_http(stream, seen, false))
        }
        fn stalling(stream: TcpStream, seen: Arc<Mutex<Seen>>) -> futures_lite::BoxFuture {
            Box::pin(serve_http(stream, seen, true))
        }
        if stalls_first {
            stalling
        } else {
            plain
        }
    }

    async fn serve_http(mut stream: TcpStream, seen: Arc<Mutex<Seen>>, stall_first: bool) {
        let mut buf = BytesMut::new();
        loop {
            let (total, close) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut request = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                    let mut length = 0;
                    let mut close = false;
                    for h in request.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                        }
                        close |= h.name.eq_ignore_ascii_case("connection") && h.value == b"close";
                    }
                    break (head + length, close);
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            while buf.len() < total {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            buf.advance(total);
            let first = {
                let mut seen = seen.lock();
                seen.messages += 1;
                seen.messages == 1
            };
            if stall_first && first {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let connection = if close { "close" } else { "keep-alive" };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: {connection}\r\n\r\nok"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                return;
            }
        }
    }

    /// MQTT: CONNACK every CONNECT, PUBACK every QoS 1 PUBLISH, PINGRESP every PINGREQ.
    fn mqtt_handler(stream: TcpStream, seen: Arc<Mutex<Seen>>) -> futures_lite::BoxFuture {
        Box::pin(serve_mqtt(stream, seen))
    }

    async fn serve_mqtt(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
        let limits = DecodeLimits::default();
        let mut buf = BytesMut::new();
        let version = loop {
            match mqtt::decode_connect(&mut buf, &limits) {
                Ok(Decoded::Complete(connect)) => break connect.protocol_version,
                Ok(Decoded::Incomplete { .. }) => {}
                Err(_) => return,
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let mut out = BytesMut::new();
        let ack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        });
        mqtt::encode(&ack, version, &mut out).expect("encode");
        loop {
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            match mqtt::decode_packet(&mut buf, version, mqtt::Sender::Client, &limits) {
                Ok(Decoded::Complete(Packet::Publish(publish))) => {
                    {
                        let mut seen = seen.lock();
                        seen.messages += 1;
                        seen.topics
                            .insert(String::from_utf8_lossy(&publish.topic).into_owned());
                    }
                    if let Some(id) = publish.packet_id {
                        mqtt::encode(&Packet::PubAck(PubResponse::success(id)), version, &mut out)
                            .expect("encode");
                    }
                    continue;
                }
                Ok(Decoded::Complete(Packet::PingReq)) => {
                    mqtt::encode(&Packet::PingResp, version, &mut out).expect("encode");
                    continue;
                }
                Ok(Decoded::Complete(_)) => continue,
                Ok(Decoded::Incomplete { .. }) => {}
                Err(_) => return,
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn options(target: SocketAddr, millis: u64) -> RunOptions {
        RunOptions {
            target,
            duration: Duration::from_millis(millis),
            gateway_pid: None,
            threads: 2,
            progress: false,
            label: None,
            delivery: None,
            mark_after: None,
        }
    }

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text).expect("scenario")
    }

    /// A shared in-memory sink for the HdrHistogram log.
    #[derive(Clone, Default)]
    struct SharedLog(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedLog {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn http_keepalive_devices_send_from_their_own_addresses_at_the_rate() {
        let server = start_server(http_handler(false));
        let s = scenario(
            "name = \"e2e\"\n[fleet]\ndevices = 4\n[traffic]\nrate_per_s = 200\nbody_bytes = 64\n",
        );
        let log = SharedLog::default();
        let report =
            run(&s, &options(server.addr, 1500), Some(Box::new(log.clone()))).expect("run");
        let c = &report.counts;
        // 200/s for 1.5 s is 300 messages; allow for timer slack, not for a closed loop.
        assert!((240..=310).contains(&c.answered), "answered {}", c.answered);
        assert_eq!(c.ok, c.answered);
        assert_eq!(c.error_total(), 0, "{:?}", c.errors);
        assert_eq!(c.statuses.get(&200), Some(&c.answered));
        assert_eq!(c.connects, 4);
        assert_eq!(report.open_at_end, 4);
        assert_eq!(report.latency_us.count, c.answered);
        assert!(report.in_flight_at_end <= 4);
        let expected: BTreeSet<IpAddr> = (0..4)
            .map(|i| IpAddr::V4(crate::source::device_source(i).expect("addr")))
            .collect();
        assert_eq!(server.seen.lock().peers, expected);
        // Two progress intervals (1 s and the last 0.5 s), one log line each.
        assert_eq!(report.intervals.len(), 2);
        let log = String::from_utf8(log.0.lock().clone()).expect("utf8");
        assert_eq!(log.lines().filter(|l| l.contains(",HISTF")).count(), 2);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["counts"]["answered"], c.answered);
        assert!(json["latency_us"]["p999"].is_u64());
    }

    #[test]
    fn a_stall_is_charged_to_every_message_it_delayed() {
        let server = start_server(http_handler(true));
        let s = scenario(
            "name = \"co\"\n[fleet]\ndevices = 1\n[traffic]\nrate_per_s = 100\nbody_bytes = 8\n",
        );
        let report = run(&s, &options(server.addr, 800), None).expect("run");
        let l = &report.latency_us;
        // One device, one message in flight: the 300 ms stall delays ~30 scheduled messages.
        // Measured from the send time only one sample would be slow and p90 would be tiny.
        assert!(l.max >= 290_000, "max {}", l.max);
        assert!(l.p90 >= 100_000, "p90 {} of {}", l.p90, l.count);
        assert!(l.count >= 60, "{} answers", l.count);
    }

    #[test]
    fn one_shot_devices_open_a_connection_per_message() {
        let server = start_server(http_handler(false));
        let s = scenario(
            "name = \"storm\"\n[fleet]\ndevices = 3\n[traffic]\nrate_per_s = 60\n\
             [http]\nkeepalive = false\n",
        );
        let report = run(&s, &options(server.addr, 600), None).expect("run");
        let c = &report.counts;
        assert!(c.answered >= 20, "answered {}", c.answered);
        assert_eq!(c.error_total(), 0, "{:?}", c.errors);
        assert!(c.connects >= c.answered);
        // A connect the server accepted may not have been seen by a device stopped at the end.
        let accepted = server.seen.lock().accepted;
        assert!(
            (c.connects..=c.connects + 3).contains(&accepted),
            "accepted {accepted}, connects {}",
            c.connects
        );
    }

    #[test]
    fn idle_fleet_holds_connections_and_samples_the_gateway_process() {
        let server = start_server(http_handler(false));
        let s = scenario("name = \"idle\"\n[fleet]\ndevices = 20\nramp_per_s = 200\n");
        let mut opts = options(server.addr, 400);
        opts.gateway_pid = Some(std::process::id());
        let report = run(&s, &opts, None).expect("run");
        assert_eq!(report.counts.sent, 0);
        assert_eq!(report.counts.error_total(), 0);
        assert_eq!(report.open_at_end, 20);
        assert_eq!(report.peak_open, 20);
        assert_eq!(server.seen.lock().peers.len(), 20);
        let gateway = report.gateway.expect("sampled");
        assert!(gateway.rss_kib_start > 0 && gateway.rss_kib_peak >= gateway.rss_kib_start);
        assert!(gateway.rss_bytes_per_connection.is_some());
    }

    #[test]
    fn a_mark_splits_the_device_side_counts_and_latency_at_a_tick() {
        let server = start_server(http_handler(false));
        let s = scenario("name = \"mark\"\n[fleet]\ndevices = 4\n[traffic]\nrate_per_s = 200\n");
        let mut opts = options(server.addr, 2500);
        opts.gateway_pid = Some(std::process::id());
        opts.mark_after = Some(Duration::from_millis(1500));
        let report = run(&s, &opts, None).expect("run");
        let mark = report.after_mark.expect("marked");
        assert!(
            (mark.at_s - 2.0).abs() < 0.2,
            "first tick at or after 1.5 s: {}",
            mark.at_s
        );
        assert!(mark.gateway_cpu_ticks.is_some());
        let c = &report.counts;
        assert!(mark.ok > 0 && mark.ok < c.ok, "{} of {}", mark.ok, c.ok);
        assert_eq!(mark.latency.len(), mark.answered);

        opts.mark_after = Some(Duration::ZERO);
        opts.duration = Duration::from_millis(600);
        let report = run(&s, &opts, None).expect("run");
        let mark = report.after_mark.expect("marked at the start");
        assert_eq!(mark.at_s, 0.0);
        assert_eq!(mark.ok, report.counts.ok);
        assert_eq!(mark.latency.len(), report.counts.answered);
    }

    #[test]
    fn unreachable_gateway_counts_connect_errors() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let s = scenario("name = \"down\"\n[fleet]\ndevices = 2\n[traffic]\nrate_per_s = 10\n");
        let report = run(&s, &options(addr, 300), None).expect("run");
        assert!(
            report
                .counts
                .errors
                .get(&ErrorKind::Connect)
                .copied()
                .unwrap_or(0)
                >= 2
        );
        assert_eq!(report.counts.answered, 0);
        assert_eq!(report.open_at_end, 0);
    }

    #[test]
    fn mqtt_qos1_devices_publish_and_wait_for_pubacks() {
        for version in ["3.1.1", "5"] {
            let server = start_server(mqtt_handler);
            let s = scenario(&format!(
                "name = \"mqtt\"\n[fleet]\ndevices = 3\nprotocol = \"mqtt\"\n\
                 [traffic]\nrate_per_s = 60\n[mqtt]\nversion = \"{version}\"\nqos = 1\n\
                 topic = \"t/{{device}}\"\n"
            ));
            let report = run(&s, &options(server.addr, 600), None).expect("run");
            let c = &report.counts;
            assert!(c.answered >= 25, "{version}: answered {}", c.answered);
            assert_eq!(c.ok, c.answered, "{version}");
            assert_eq!(c.error_total(), 0, "{version}: {:?}", c.errors);
            let seen = server.seen.lock();
            assert!(seen.messages >= c.answered);
            let topics: Vec<&str> = seen.topics.iter().map(String::as_str).collect();
            assert_eq!(topics, ["t/0", "t/1", "t/2"], "{version}");
            drop(seen);
        }
    }

    #[test]
    fn mqtt_qos0_publishes_count_when_written() {
        let server = start_server(mqtt_handler);
        let s = scenario(
            "name = \"q0\"\n[fleet]\ndevices = 2\nprotocol = \"mqtt\"\n\
             [traffic]\nrate_per_s = 40\n[mqtt]\nqos = 0\n",
        );
        let report = run(&s, &options(server.addr, 500), None).expect("run");
        assert!(report.counts.ok >= 15, "ok {}", report.counts.ok);
        assert_eq!(report.counts.error_total(), 0);
        let _ = ProtocolVersion::V311;
    }

    fn with_sink(target: SocketAddr, millis: u64, sink: &crate::sink::Sink) -> RunOptions {
        let mut o = options(target, millis);
        o.delivery = Some(Arc::clone(sink.tracker()));
        o
    }

    #[test]
    fn devices_to_the_built_in_sinks_lose_nothing_and_stamp_every_message() {
        use crate::sink::{Sink, SinkKind, SinkOptions};
        for (protocol, extra) in [
            ("http", ""),
            ("mqtt", "[mqtt]\nqos = 1\nversion = \"5\"\n"),
            ("mqtt", "[mqtt]\nqos = 1\n"),
        ] {
            let kind = if protocol == "http" {
                SinkKind::Http
            } else {
                SinkKind::Mqtt
            };
            let sink = Sink::start(SinkOptions::new(kind)).expect("sink");
            let s = scenario(&format!(
                "name = \"d\"\n[fleet]\ndevices = 3\nprotocol = \"{protocol}\"\n\
                 [traffic]\nrate_per_s = 90\nbody_bytes = 100\n{extra}"
            ));
            let report = run(&s, &with_sink(sink.addr(), 700, &sink), None).expect("run");
            let d = report.delivery.expect("delivery");
            let c = &report.counts;
            assert_eq!(c.error_total(), 0, "{protocol}: {:?}", c.errors);
            assert!(c.ok >= 30, "{protocol}: ok {}", c.ok);
            // Every answered message reached the sink first; unanswered ones may have too.
            assert!(
                (c.ok..=c.sent).contains(&d.unique),
                "{protocol}: unique {} ok {} sent {}",
                d.unique,
                c.ok,
                c.sent
            );
            assert_eq!((d.lost, d.duplicates, d.reordered), (0, 0, 0), "{protocol}");
            assert_eq!((d.malformed, d.devices), (0, 3), "{protocol}");
            assert_eq!(d.e2e_latency_us.count, d.unique);
            assert_eq!(
                sink.counters()
                    .protocol_errors
                    .load(std::sync::atomic::Ordering::Relaxed),
                0
            );
        }
    }

    #[test]
    fn loss_injected_at_the_sink_is_counted_exactly() {
        use crate::sink::{Sink, SinkKind, SinkOptions};
        let sink = Sink::start(SinkOptions {
            drop_every: Some(4),
            ..SinkOptions::new(SinkKind::Http)
        })
        .expect("sink");
        let s = scenario("name = \"loss\"\n[fleet]\ndevices = 2\n[traffic]\nrate_per_s = 80\n");
        let report = run(&s, &with_sink(sink.addr(), 700, &sink), None).expect("run");
        let tracker = sink.tracker().snapshot();
        let d = report.delivery.expect("delivery");
        // Seq 3, 7, 11, ... of each device are discarded; those below the device's highest
        // received seq are gaps.
        let expected: u64 = (0..2)
            .map(|device| tracker.highest_seq(device).map_or(0, |h| (h + 1) / 4))
            .sum();
        assert!(expected >= 4, "too few messages: {d:?}");
        // The tracker's own summary is of the same state as `expected`; the report's was taken
        // when the run ended, before any message still in flight then arrived.
        let now = tracker.summary();
        assert_eq!(now.lost, expected);
        assert!(now.dropped_by_sink >= now.lost && now.dropped_by_sink <= now.lost + 2);
        assert!(
            d.lost <= now.lost && d.lost + 2 >= now.lost,
            "{d:?} then {now:?}"
        );
        assert_eq!((d.duplicates, d.reordered), (0, 0));
    }
}
