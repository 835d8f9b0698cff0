//! A small plaintext HTTP/1.1 device load generator for the demo and quick load runs.
//!
//! [`DeviceSim::start`] opens [`DeviceSimConfig::connections`] keep-alive TCP connections to
//! the target, on a thread of its own with a tokio current-thread runtime. Each connection sends
//! a hand-formatted `POST {path} HTTP/1.1` with `Host`, `Content-Length` and a body of
//! [`DeviceSimConfig::body_size`] bytes, waits for the answer (one request in flight per
//! connection), and repeats:
//!
//! - closed loop (`rate_per_sec: None`): the next request leaves as soon as the answer is in;
//!   latency is measured from the moment the request was written.
//! - open loop (`rate_per_sec: Some(r)`): the total rate `r` is split evenly over the
//!   connections, whose send times are staggered. Latency is measured from the INTENDED send
//!   time, so a stalled server is charged for every request it delayed (coordinated-omission
//!   correction, as wrk2 does). A connection that falls behind sends back to back until it has
//!   caught up with its schedule.
//!
//! After a transport or protocol error the connection is dropped and re-opened after a jittered
//! exponential backoff (10 ms doubling to 1 s, reset by the next answer).
//!
//! Counting: `sent` counts requests written; every parsed answer lands in `status_counts` and the
//! latency histogram (microseconds); `ok` counts 2xx answers; `errors` counts failed connects,
//! IO errors, timeouts and unparseable answers. Requests still in flight when the simulator stops
//! are counted in `sent` only.
//!
//! What it does NOT do: TLS, MQTT, pipelining, chunked or close-delimited response bodies (it
//! only talks to simgate, which always sends `Content-Length`), per-device source addresses, or
//! scenario scripting — that is the load tester's job.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
/// Most response headers parsed.
const MAX_RESPONSE_HEADERS: usize = 64;
/// Highest latency the histogram resolves (one hour, in microseconds); larger values saturate.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;
/// First reconnect delay after an error.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What load to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSimConfig {
    /// Plaintext HTTP endpoint (simgate's HTTP listener).
    pub target: SocketAddr,
    /// Concurrent keep-alive connections; at least 1.
    pub connections: usize,
    /// Request target, e.g. `/telemetry`; must start with `/` and hold no spaces or controls.
    pub path: String,
    /// Request body size in bytes.
    pub body_size: usize,
    /// Total requests per second over all connections; `None` = closed loop, as fast as answers
    /// come back. `Some(0)` is rejected.
    pub rate_per_sec: Option<u64>,
    /// Stop by itself after this long; `None` = run until [`DeviceSim::stop`].
    pub duration: Option<Duration>,
    /// Longest wait for a connect or for one answer before counting an error and reconnecting.
    pub request_timeout: Duration,
}

impl DeviceSimConfig {
    /// Defaults: one connection, `POST /`, 1 KiB body, closed loop, no time limit, 10 s timeout.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            connections: 1,
            path: "/".to_owned(),
            body_size: 1024,
            rate_per_sec: None,
            duration: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a [`DeviceSim`] could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// [`DeviceSimConfig::connections`] is 0.
    NoConnections,
    /// [`DeviceSimConfig::rate_per_sec`] is `Some(0)`.
    ZeroRate,
    /// [`DeviceSimConfig::path`] does not start with `/` or holds a space or control byte.
    InvalidPath,
    /// The latency histogram could not be created.
    Histogram,
    /// Creating the runtime or the thread failed.
    Spawn(io::ErrorKind),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoConnections => f.write_str("device simulator needs at least one connection"),
            Self::ZeroRate => f.write_str("device simulator rate must be positive"),
            Self::InvalidPath => f.write_str("device simulator path is not a request target"),
            Self::Histogram => f.write_str("latency histogram creation failed"),
            Self::Spawn(kind) => write!(f, "device simulator start failed: {kind}"),
        }
    }
}

impl std::error::Error for SimError {}

/// Counters and latencies of a [`DeviceSim`] at one moment.
#[derive(Debug, Clone)]
pub struct SimSnapshot {
    /// Requests written.
    pub sent: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Failed connects, IO errors, timeouts and unparseable answers.
    pub errors: u64,
    /// Answers per status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Latency of every answer in microseconds (from the intended send time when rate-limited).
    pub latency: Histogram<u64>,
}

struct SimState {
    snapshot: SimSnapshot,
    finished: bool,
}

/// State shared by the simulator thread and the [`DeviceSim`] handle.
struct SimShared {
    state: Mutex<SimState>,
    changed: Condvar,
}

impl SimShared {
    /// Applies `update` under the lock, then wakes every waiter.
    fn update(&self, update: impl FnOnce(&mut SimState)) {
        update(&mut self.state.lock());
        self.changed.notify_all();
    }
}

/// A running device simulator; stopped by [`DeviceSim::stop`] or on drop.
pub struct DeviceSim {
    shared: Arc<SimShared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DeviceSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSim").finish_non_exhaustive()
    }
}

impl DeviceSim {
    /// Validates `cfg` and starts generating load on a thread of its own.
    pub fn start(cfg: DeviceSimConfig) -> Result<Self, SimError> {
        let plan = Arc::new(Plan::new(&cfg)?);
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
            .map_err(|_| SimError::Histogram)?;
        let shared = Arc::new(SimShared {
            state: Mutex::new(SimState {
                snapshot: SimSnapshot {
                    sent: 0,
                    ok: 0,
                    errors: 0,
                    status_counts: BTreeMap::new(),
                    latency,
                },
                finished: false,
            }),
            changed: Condvar::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SimError::Spawn(e.kind()))?;
        let (stop, stop_rx) = watch::channel(false);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("device-sim".to_owned())
            .spawn(move || runtime.block_on(drive(plan, thread_shared, stop_rx)))
            .map_err(|e| SimError::Spawn(e.kind()))?;
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// A copy of the counters and histogram so far.
    pub fn snapshot(&self) -> SimSnapshot {
        self.shared.state.lock().snapshot.clone()
    }

    /// True once every connection has stopped (duration over, or stopped).
    pub fn is_finished(&self) -> bool {
        self.shared.state.lock().finished
    }

    /// Blocks until `done` holds for the current snapshot, the simulator finishes, or `timeout`
    /// passes; returns whether `done` held. Woken by every counter change, not by polling.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&SimSnapshot) -> bool,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        loop {
            if done(&state.snapshot) {
                return true;
            }
            if state.finished
                || self
                    .shared
                    .changed
                    .wait_until(&mut state, deadline)
                    .timed_out()
            {
                return done(&state.snapshot);
            }
        }
    }

    /// Blocks until the simulator finishes by itself (see [`DeviceSimConfig::duration`]) or
    /// `timeout` passes; returns whether it finished.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        while !state.finished {
            if self
                .shared
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                break;
            }
        }
        state.finished
    }

    /// Stops every connection (abandoning requests in flight), joins the thread and returns the
    /// final snapshot.
    pub fn stop(mut self) -> SimSnapshot {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        // The receiver is gone only when the simulator thread has ended already.
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            // A panicked simulator thread leaves its last counters behind; nothing else to do.
            let _ = thread.join();
        }
    }
}

impl Drop for DeviceSim {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Everything the connections need, derived once from the config.
struct Plan {
    target: SocketAddr,
    connections: usize,
    /// The complete request, head and body, written as is for every send.
    request: Bytes,
    /// Gap between two sends on one connection, when rate-limited.
    per_connection_interval: Option<Duration>,
    duration: Option<Duration>,
    request_timeout: Duration,
}

impl Plan {
    fn new(cfg: &DeviceSimConfig) -> Result<Self, SimError> {
        if cfg.connections == 0 {
            return Err(SimError::NoConnections);
        }
        if !cfg.path.starts_with('/') || cfg.path.bytes().any(|b| b == b' ' || b.is_ascii_control())
        {
            return Err(SimError::InvalidPath);
        }
        let per_connection_interval = match cfg.rate_per_sec {
            None => None,
            Some(0) => return Err(SimError::ZeroRate),
            Some(rate) => Some(Duration::from_secs_f64(
                cfg.connections as f64 / rate as f64,
            )),
        };
        Ok(Self {
            target: cfg.target,
            connections: cfg.connections,
            request: format_request(&cfg.path, cfg.target, cfg.body_size),
            per_connection_interval,
            duration: cfg.duration,
            request_timeout: cfg.request_timeout,
        })
    }
}

/// `POST {path} HTTP/1.1` with Host, Content-Type, Content-Length and a `body_size` body of
/// repeating printable bytes.
fn format_request(path: &str, target: SocketAddr, body_size: usize) -> Bytes {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {body_size}\r\n\r\n"
    );
    let mut request = Vec::with_capacity(head.len() + body_size);
    request.extend_from_slice(head.as_bytes());
    request.extend(b"0123456789abcdef".iter().copied().cycle().take(body_size));
    Bytes::from(request)
}

/// Send times of one rate-limited connection: `first`, `first + interval`, ...
#[derive(Debug, Clone, Copy)]
struct Pacer {
    next_send: Instant,
    interval: Duration,
}

impl Pacer {
    /// Connection `index` of `connections` starts `index / connections` of an interval late, so
    /// the connections' sends interleave evenly.
    fn new(start: Instant, interval: Duration, index: usize, connections: usize) -> Self {
        let offset = interval.mul_f64(index as f64 / connections as f64);
        Self {
            next_send: start + offset,
            interval,
        }
    }

    /// The intended time of the next send; advances the schedule by one interval.
    fn next_intended(&mut self) -> Instant {
        let intended = self.next_send;
        self.next_send += self.interval;
        intended
    }
}

/// Reconnect delays: exponential with full jitter between half and the whole step.
struct Backoff {
    step: Duration,
    jitter_state: u64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Self {
            step: BACKOFF_START,
            // Any odd seed works for the xorshift below; mix in the connection index.
            jitter_state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_START;
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift64: enough to keep reconnecting connections from moving in lockstep.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        let fraction = 0.5 + (x % 1000) as f64 / 2000.0;
        let delay = self.step.mul_f64(fraction);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Runs every connection until the external stop, the duration, whichever comes first.
async fn drive(plan: Arc<Plan>, shared: Arc<SimShared>, mut stop: watch::Receiver<bool>) {
    let start = Instant::now();
    let (halt, halt_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    for index in 0..plan.connections {
        connections.spawn(run_connection(
            index,
            start,
            Arc::clone(&plan),
            Arc::clone(&shared),
            halt_rx.clone(),
        ));
    }
    let deadline = async {
        match plan.duration {
            Some(duration) => tokio::time::sleep_until(start + duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // A closed channel means the handle is gone: stop as well.
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = deadline => {}
    }
    // Every connection watches `halt_rx`; a send error would mean none is left to tell.
    let _ = halt.send(true);
    while connections.join_next().await.is_some() {}
    shared.update(|state| state.finished = true);
}

/// Awaits `future` unless `halt` fires first (`None`).
async fn unless_halted<F: Future>(
    halt: &mut watch::Receiver<bool>,
    future: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = halt.wait_for(|halted| *halted) => None,
        output = future => Some(output),
    }
}

/// One keep-alive connection's life: connect, send/receive until error or halt, back off, again.
async fn run_connection(
    index: usize,
    start: Instant,
    plan: Arc<Plan>,
    shared: Arc<SimShared>,
    mut halt: watch::Receiver<bool>,
) {
    let mut pacer = plan
        .per_connection_interval
        .map(|interval| Pacer::new(start, interval, index, plan.connections));
    let mut backoff = Backoff::new(index as u64 + 1);
    let mut receive_buffer = BytesMut::with_capacity(4096);
    loop {
        let connect = tokio::time::timeout(plan.request_timeout, TcpStream::connect(plan.target));
        let mut stream = match unless_halted(&mut halt, connect).await {
            None => return,
            Some(Ok(Ok(stream))) => stream,
            Some(Ok(Err(_)) | Err(_)) => {
                shared.update(|state| state.snapshot.errors += 1);
                if unless_halted(&mut halt, tokio::time::sleep(backoff.next_delay()))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        // Small requests and answers: do not let Nagle hold them back. Failure is harmless.
        let _ = stream.set_nodelay(true);
        receive_buffer.clear();
        loop {
            let measured_from = match pacer.as_mut() {
                None => Instant::now(),
                Some(pacer) => {
                    let intended = pacer.next_intended();
                    if unless_halted(&mut halt, tokio::time::sleep_until(intended))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    intended
                }
            };
            shared.update(|state| state.snapshot.sent += 1);
            let exchange = tokio::time::timeout(
                plan.request_timeout,
                exchange(&mut stream, &mut receive_buffer, &plan.request),
            );
            match unless_halted(&mut halt, exchange).await {
                None => return,
                Some(Ok(Ok(answer))) => {
                    let micros =
                        u64::try_from(measured_from.elapsed().as_micros()).unwrap_or(u64::MAX);
                    shared.update(|state| {
                        let snapshot = &mut state.snapshot;
                        snapshot.latency.saturating_record(micros);
                        *snapshot.status_counts.entry(answer.status).or_insert(0) += 1;
                        if (200..300).contains(&answer.status) {
                            snapshot.ok += 1;
                        }
                    });
                    backoff.reset();
                    if answer.close {
                        break;
                    }
                }
                Some(Ok(Err(_)) | Err(_)) => {
                    shared.update(|state| state.snapshot.errors += 1);
                    if unless_halted(&mut halt, tokio::time::sleep(backoff.next_delay()))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Why one request/answer exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExchangeError {
    /// Reading or writing the socket failed.
    Io(io::ErrorKind),
    /// The peer closed the connection before a complete answer.
    Closed,
    /// The answer is not HTTP/1.x or its framing is unsupported or too large.
    Malformed(AnswerError),
}

/// Writes `request` and reads one answer, leaving any bytes after it in `buffer`.
async fn exchange(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: &[u8],
) -> Result<Answer, ExchangeError> {
    stream
        .write_all(request)
        .await
        .map_err(|e| ExchangeError::Io(e.kind()))?;
    loop {
        if let Some(head) = parse_answer_head(buffer).map_err(ExchangeError::Malformed)? {
            let total = head.head_len + head.body_len;
            while buffer.len() < total {
                read_more(stream, buffer).await?;
            }
            buffer.advance(total);
            return Ok(head.answer);
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<(), ExchangeError> {
    buffer.reserve(4096);
    match stream.read_buf(buffer).await {
        Ok(0) => Err(ExchangeError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(ExchangeError::Io(e.kind())),
    }
}

/// What a simulated device keeps of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The server asked to close the connection (`Connection: close` or HTTP/1.0).
    pub close: bool,
}

/// A parsed answer head and how much of the buffer the whole answer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerHead {
    /// Status and connection handling.
    pub answer: Answer,
    /// Bytes of the head.
    pub head_len: usize,
    /// Bytes of the body that follows (from `Content-Length`).
    pub body_len: usize,
}

/// Why an answer head is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// Not a valid HTTP/1.x response head.
    Syntax,
    /// Head longer than [`MAX_RESPONSE_HEAD`].
    HeadTooLarge,
    /// Body longer than [`MAX_RESPONSE_BODY`].
    BodyTooLarge,
    /// Chunked, close-delimited, or conflicting `Content-Length` framing.
    UnsupportedFraming,
}

/// Parses the response head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Deliberately minimal (simulated devices only talk to simgate or a sink): `Content-Length`
/// framing only; chunked or close-delimited answers are `UnsupportedFraming`.
pub fn parse_answer_head(buf: &[u8]) -> Result<Option<AnswerHead>, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(AnswerError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(AnswerError::HeadTooLarge),
        Err(_) => return Err(AnswerError::Syntax),
    };
    if head_len > MAX_RESPONSE_HEAD {
        return Err(AnswerError::HeadTooLarge);
    }
    let status = response.code.ok_or(AnswerError::Syntax)?;
    let mut close = response.version == Some(0);
    let mut content_length: Option<usize> = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or(AnswerError::Syntax)?;
            if content_length.is_some_and(|seen| seen != value) {
                return Err(AnswerError::UnsupportedFraming);
            }
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AnswerError::UnsupportedFraming);
        } else if header.name.eq_ignore_ascii_case("connection") {
            close |= header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let body_len = match content_length {
        Some(len) if len > MAX_RESPONSE_BODY => return Err(AnswerError::BodyTooLarge),
        Some(len) => len,
        // These statuses never carry a body.
        None if (100..200).contains(&status) || status == 204 || status == 304 => 0,
        None => return Err(AnswerError::UnsupportedFraming),
    };
    Ok(Some(AnswerHead {
        answer: Answer { status, close },
        head_len,
        body_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const WAIT: Duration = Duration::from_secs(20);

    /// How the test responder answers the n-th request (1-based) it reads.
    type Script = fn(u64) -> ResponderAction;

    #[derive(Clone, Copy)]
    struct ResponderAction {
        status: u16,
        close: bool,
        delay: Option<Duration>,
    }

    struct Responder {
        addr: SocketAddr,
        requests: Arc<AtomicU64>,
        bad_requests: Arc<AtomicU64>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// A tiny HTTP/1.1 responder: checks each request is `POST <path>` with a body of
    /// `body_size` bytes (counting violations), answers per `script`.
    fn start_responder(path: &'static str, body_size: usize, script: Script) -> Responder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let bad_requests = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let counters = (Arc::clone(&requests), Arc::clone(&bad_requests));
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
                            let (stream, _) = accepted.expect("accept");
                            let (requests, bad) = (Arc::clone(&counters.0), Arc::clone(&counters.1));
                            tokio::spawn(respond(stream, path, body_size, script, requests, bad));
                        }
                    }
                }
            });
        });
        Responder {
            addr,
            requests,
            bad_requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn respond(
        mut stream: TcpStream,
        path: &'static str,
        body_size: usize,
        script: Script,
        requests: Arc<AtomicU64>,
        bad_requests: Arc<AtomicU64>,
    ) {
        let mut buf = BytesMut::new();
        loop {
            let (head_len, body_len, good) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut request = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(head_len)) = request.parse(&buf) {
                    let body_len: usize = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                        .unwrap_or(0);
                    let has_host = request.headers.iter().any(|h| h.name == "Host");
                    let good = request.method == Some("POST")
                        && request.path == Some(path)
                        && has_host
                        && body_len == body_size;
                    break (head_len, body_len, good);
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            while buf.len() < head_len + body_len {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            buf.advance(head_len + body_len);
            if !good {
                bad_requests.fetch_add(1, Ordering::Relaxed);
            }
            let seq = requests.fetch_add(1, Ordering::Relaxed) + 1;
            let action = script(seq);
            if let Some(delay) = action.delay {
                tokio::time::sleep(delay).await;
            }
            let connection = if action.close { "close" } else { "keep-alive" };
            let answer = format!(
                "HTTP/1.1 {} X\r\nContent-Length: 2\r\nConnection: {connection}\r\n\r\nok",
                action.status
            );
            if stream.write_all(answer.as_bytes()).await.is_err() || action.close {
                return;
            }
        }
    }

    fn always_ok(_: u64) -> ResponderAction {
        ResponderAction {
            status: 200,
            close: false,
            delay: None,
        }
    }

    #[test]
    fn closed_loop_counts_answers_and_fills_the_histogram() {
        let responder = start_responder("/telemetry", 100, always_ok);
        let mut cfg = DeviceSimConfig::new(responder.addr);
        cfg.connections = 3;
        cfg.path = "/telemetry".to_owned();
        cfg.body_size = 100;
        let sim = DeviceSim::start(cfg).expect("sim");
        assert!(sim.wait_until(WAIT, |s| s.ok >= 60), "too few answers");
        let snapshot = sim.stop();

        assert!(snapshot.ok >= 60);
        assert_eq!(snapshot.errors, 0);
        assert_eq!(snapshot.status_counts.get(&200), Some(&snapshot.ok));
        assert_eq!(snapshot.latency.len(), snapshot.ok);
        // At most one request per connection can be in flight when stopped.
        assert!(snapshot.sent >= snapshot.ok && snapshot.sent <= snapshot.ok + 3);
        let served = responder.requests.load(Ordering::Relaxed);
        assert!(served >= snapshot.ok && served <= snapshot.sent);
        assert_eq!(responder.bad_requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn statuses_are_counted_apart_and_closed_connections_are_reopened() {
        fn script(seq: u64) -> ResponderAction {
            ResponderAction {
                status: if seq % 4 == 0 { 503 } else { 201 },
                close: seq % 5 == 0,
                delay: None,
            }
        }
        let responder = start_responder("/", 1024, script);
        let sim = DeviceSim::start(DeviceSimConfig::new(responder.addr)).expect("sim");
        assert!(sim.wait_until(WAIT, |s| s.ok + s.errors >= 40));
        let snapshot = sim.stop();
        assert_eq!(
            snapshot.errors, 0,
            "a Connection: close answer is not an error"
        );
        assert_eq!(snapshot.status_counts.get(&201), Some(&snapshot.ok));
        let unavailable = snapshot.status_counts.get(&503).copied().unwrap_or(0);
        assert!(unavailable >= 8, "503s: {unavailable}");
        assert_eq!(snapshot.latency.len(), snapshot.ok + unavailable);
        assert_eq!(responder.bad_requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn open_loop_latency_is_charged_from_the_intended_send_time() {
        // The first answer stalls 300 ms; at 100 req/s about 30 requests were due meanwhile.
        fn stall_first(seq: u64) -> ResponderAction {
            ResponderAction {
                status: 200,
                close: false,
                delay: (seq == 1).then_some(Duration::from_millis(300)),
            }
        }
        let responder = start_responder("/", 16, stall_first);
        let mut cfg = DeviceSimConfig::new(responder.addr);
        cfg.body_size = 16;
        cfg.rate_per_sec = Some(100);
        let sim = DeviceSim::start(cfg).expect("sim");
        assert!(sim.wait_until(WAIT, |s| s.ok >= 40));
        let snapshot = sim.stop();
        // Without correction only the stalled request would be slow; with it, every request
        // scheduled during the first 150 ms waited at least 150 ms.
        let slow = snapshot.latency.count_between(150_000, MAX_LATENCY_MICROS);
        assert!(slow >= 10, "only {slow} slow samples");
    }

    #[test]
    fn duration_ends_the_run_and_rate_bounds_the_sends() {
        let responder = start_responder("/", 1024, always_ok);
        let mut cfg = DeviceSimConfig::new(responder.addr);
        cfg.connections = 2;
        cfg.rate_per_sec = Some(50);
        cfg.duration = Some(Duration::from_millis(200));
        let sim = DeviceSim::start(cfg).expect("sim");
        assert!(sim.wait_finished(WAIT));
        assert!(sim.is_finished());
        let snapshot = sim.snapshot();
        // 50/s for 0.2 s is 10 sends (+1 per connection for a send due exactly at the end, plus
        // slack for timers that fire together after a stall); closed loop would send thousands.
        assert!(snapshot.sent <= 20, "sent {}", snapshot.sent);
        assert!(snapshot.sent >= 1);
    }

    #[test]
    fn unreachable_target_counts_errors_and_keeps_retrying() {
        // Bind and drop to find a port with nothing listening.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let sim = DeviceSim::start(DeviceSimConfig::new(addr)).expect("sim");
        assert!(sim.wait_until(WAIT, |s| s.errors >= 3));
        let snapshot = sim.stop();
        assert_eq!(snapshot.sent, 0);
        assert_eq!(snapshot.ok, 0);
        assert!(snapshot.latency.is_empty());
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let target = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut cfg = DeviceSimConfig::new(target);
        cfg.connections = 0;
        assert_eq!(DeviceSim::start(cfg).err(), Some(SimError::NoConnections));
        let mut cfg = DeviceSimConfig::new(target);
        cfg.rate_per_sec = Some(0);
        assert_eq!(DeviceSim::start(cfg).err(), Some(SimError::ZeroRate));
        for path in ["telemetry", "/a b", "/a\r\nX: y"] {
            let mut cfg = DeviceSimConfig::new(target);
            cfg.path = path.to_owned();
            assert_eq!(
                DeviceSim::start(cfg).err(),
                Some(SimError::InvalidPath),
                "{path:?}"
            );
        }
    }

    #[test]
    fn request_is_formatted_with_host_length_and_body() {
        let target = SocketAddr::from(([10, 0, 0, 1], 8080));
        let request = format_request("/t?x=1", target, 20);
        let text = std::str::from_utf8(&request).expect("ascii");
        assert_eq!(
            text,
            "POST /t?x=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 20\r\n\r\n\
             0123456789abcdef0123"
        );
    }

    #[test]
    fn answer_heads_parse_incrementally_and_reject_bad_framing() {
        let full = b"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1";
        for cut in 0..44 {
            assert_eq!(parse_answer_head(&full[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            parse_answer_head(full),
            Ok(Some(AnswerHead {
                answer: Answer {
                    status: 202,
                    close: false
                },
                head_len: 44,
                body_len: 3,
            }))
        );
        let close = parse_answer_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(matches!(close, Ok(Some(head)) if head.answer.close));
        let http10 = parse_answer_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(http10, Ok(Some(head)) if head.answer.close));
        let no_content = parse_answer_head(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(no_content, Ok(Some(head)) if head.body_len == 0));

        let cases: [(&[u8], AnswerError); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                AnswerError::UnsupportedFraming,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", AnswerError::UnsupportedFraming),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                AnswerError::UnsupportedFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                AnswerError::Syntax,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                AnswerError::BodyTooLarge,
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", AnswerError::Syntax),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_answer_head(input),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &[b'a'; MAX_RESPONSE_HEAD],
        ]
        .concat();
        assert_eq!(parse_answer_head(&endless), Err(AnswerError::HeadTooLarge));
    }

    #[test]
    fn pacer_staggers_connections_and_keeps_its_schedule() {
        let start = Instant::now();
        let interval = Duration::from_millis(40);
        let mut first = Pacer::new(start, interval, 0, 4);
        let mut third = Pacer::new(start, interval, 2, 4);
        assert_eq!(first.next_intended(), start);
        assert_eq!(first.next_intended(), start + interval);
        assert_eq!(third.next_intended(), start + Duration::from_millis(20));
        assert_eq!(third.next_intended(), start + Duration::from_millis(60));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(7);
        let first = backoff.next_delay();
        assert!(first >= BACKOFF_START / 2 && first <= BACKOFF_START);
        let mut last = first;
        for _ in 0..20 {
            last = backoff.next_delay();
        }
        assert!(last >= BACKOFF_MAX / 2 && last <= BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_START);
    }
}
