//! An HTTPS server standing in for a cloud endpoint: hyper HTTP/1.1 (keep-alive) over
//! tokio-rustls, optionally requiring client certificates (mTLS), and HTTP/2 when
//! [`SinkConfig::http2`] offers `h2` in ALPN and the client selects it.
//!
//! The sink runs on threads of its own, so sync tests and the demo can use it alike:
//! [`SinkConfig::workers`] threads, each with a tokio current-thread runtime, accept from one
//! shared listening socket (the kernel hands each connection to one of them). Every request body
//! is read in full (chunked too) before the answer, which is [`SinkConfig::status`] with
//! [`SinkConfig::response_body`] plus two headers:
//!
//! - `x-sink-seq: <n>` — 1-based order in which the sink finished reading requests;
//! - `x-sink-body-bytes: <n>` — the number of body bytes received.
//!
//! With [`SinkConfig::record`], requests are kept for [`HttpsSink::requests`];
//! [`HttpsSink::wait_for_requests`] blocks on a condition variable (no polling).
//!
//! What it does NOT do: h2c (cleartext HTTP/2), request routing, per-request status scripting, limits on body
//! size, or closing idle keep-alive connections (it is a test double; do not expose it to
//! untrusted networks). Header order in
//! [`RecordedRequest::headers`] is the arrival order of distinct names, with repeated names
//! grouped at their first occurrence (hyper's `HeaderMap` keeps no finer order).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::{Condvar, Mutex};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::pki::{load_certs, load_key, CertFiles, PkiError};

/// Longest time a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Response header carrying the sink's request sequence number.
const SEQ_HEADER: &str = "x-sink-seq";
/// Response header carrying the number of request body bytes received.
const BODY_BYTES_HEADER: &str = "x-sink-body-bytes";

/// How to run an [`HttpsSink`].
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Address to listen on; port 0 picks a free port (see [`HttpsSink::addr`]).
    pub bind: SocketAddr,
    /// Server certificate and key.
    pub cert: CertFiles,
    /// `Some(ca)` requires every client to present a certificate signed by `ca` (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Keep every received request for [`HttpsSink::requests`].
    pub record: bool,
    /// Status code of every answer.
    pub status: u16,
    /// Body of every answer.
    pub response_body: Bytes,
    /// Worker threads (each with its own current-thread runtime); 0 is treated as 1.
    pub workers: usize,
    /// Wait this long after reading a request before answering (to provoke upstream timeouts).
    pub response_delay: Option<Duration>,
    /// Send the answer body with `Transfer-Encoding: chunked` (in two chunks) instead of a
    /// `Content-Length` (over HTTP/2: two DATA frames and no `content-length`).
    pub chunked_response: bool,
    /// Offer `h2` before `http/1.1` in ALPN and serve HTTP/2 to clients that select it.
    pub http2: bool,
    /// HTTP/2 only: after this many requests on one connection, shut it down gracefully
    /// (GOAWAY; streams in flight finish), so clients must move to a new connection.
    pub goaway_after: Option<u64>,
    /// HTTP/2 only: drop the connection (no GOAWAY, streams in flight lost) as soon as this
    /// many requests on it have been read, before the last of them is answered.
    pub close_after: Option<u64>,
    /// HTTP/2 only: the SETTINGS_MAX_CONCURRENT_STREAMS the sink announces (hyper's default
    /// otherwise).
    pub max_concurrent_streams: Option<u32>,
}

impl SinkConfig {
    /// Defaults: `127.0.0.1:0`, no client auth, recording on, status 200, empty body, one
    /// worker, no delay.
    pub fn new(cert: CertFiles) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert,
            client_ca: None,
            record: true,
            status: 200,
            response_body: Bytes::new(),
            workers: 1,
            response_delay: None,
            chunked_response: false,
            http2: false,
            goaway_after: None,
            close_after: None,
            max_concurrent_streams: None,
        }
    }
}

/// Why an [`HttpsSink`] could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkError {
    /// Loading the server certificate, its key or the client CA failed.
    Pki(PkiError),
    /// rustls rejected the certificate, key or client CA.
    Tls,
    /// [`SinkConfig::status`] is not a valid HTTP status code (100..=999).
    InvalidStatus(u16),
    /// Binding or configuring the listening socket failed.
    Bind(io::ErrorKind),
    /// Creating a runtime or a worker thread failed.
    Spawn(io::ErrorKind),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pki(err) => write!(f, "sink certificates: {err}"),
            Self::Tls => f.write_str("sink TLS configuration rejected"),
            Self::InvalidStatus(code) => write!(f, "invalid sink status code {code}"),
            Self::Bind(kind) => write!(f, "sink bind failed: {kind}"),
            Self::Spawn(kind) => write!(f, "sink worker start failed: {kind}"),
        }
    }
}

impl std::error::Error for SinkError {}

impl From<PkiError> for SinkError {
    fn from(err: PkiError) -> Self {
        Self::Pki(err)
    }
}

/// One request as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Path and query, e.g. `/telemetry?x=1`.
    pub path: String,
    /// Headers with lowercased names (see the module doc about order).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The complete body (de-chunked).
    pub body: Bytes,
    /// Trailer fields of a chunked body, lowercased names, in arrival order of distinct names
    /// (as for `headers`); empty when there were none.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Common name of the client certificate, when the client presented one.
    pub client_cert_cn: Option<String>,
    /// Identifier of the TLS connection; equal for requests sent on one connection.
    pub connection_id: u64,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
}

impl RecordedRequest {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Counters of an [`HttpsSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStats {
    /// Requests read in full (recorded or not).
    pub requests: u64,
    /// Request body bytes read in total.
    pub body_bytes: u64,
    /// Completed TLS handshakes, i.e. new connections.
    pub tls_handshakes: u64,
    /// Completed handshakes that resumed an earlier session.
    pub resumed_handshakes: u64,
    /// Connections whose TLS handshake failed or timed out (e.g. missing client certificate).
    pub failed_handshakes: u64,
    /// Connections served with HTTP/2 (the client selected `h2`).
    pub h2_connections: u64,
    /// HTTP/2 connections the sink shut down with GOAWAY ([`SinkConfig::goaway_after`]).
    pub goaways: u64,
    /// HTTP/2 connections the sink dropped ([`SinkConfig::close_after`]).
    pub abrupt_closes: u64,
}

/// State shared by the workers and the [`HttpsSink`] handle. Counters sit under the same lock
/// as the recorded requests so that waiters can be woken on any change (this is a test double;
/// one lock per request is cheap next to a TLS record).
struct Shared {
    state: Mutex<SinkState>,
    changed: Condvar,
    next_connection_id: AtomicU64,
}

struct SinkState {
    /// `stats.requests` is also the last `x-sink-seq` handed out.
    stats: SinkStats,
    recorded: Vec<RecordedRequest>,
}

impl Shared {
    /// Applies `update` under the lock, then wakes every waiter.
    fn update<R>(&self, update: impl FnOnce(&mut SinkState) -> R) -> R {
        let result = update(&mut self.state.lock());
        self.changed.notify_all();
        result
    }
}

/// The fixed answer, shared by every connection.
struct Answer {
    record: bool,
    status: StatusCode,
    body: Bytes,
    delay: Option<Duration>,
    chunked: bool,
    goaway_after: Option<u64>,
    close_after: Option<u64>,
    max_concurrent_streams: Option<u32>,
}

/// A response body of unknown length (so hyper sends it chunked), yielded as separate frames.
struct ChunkedBody(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type SinkBody = http_body_util::Either<Full<Bytes>, ChunkedBody>;

/// A running HTTPS sink; shut down by [`HttpsSink::shutdown`] or on drop.
pub struct HttpsSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsSink")
            .field("addr", &self.addr)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl HttpsSink {
    /// Loads the certificates, binds the listener and starts the workers. Returns once the
    /// socket is listening, so [`HttpsSink::addr`] can be connected to at once.
    pub fn start(cfg: SinkConfig) -> Result<Self, SinkError> {
        let status =
            StatusCode::from_u16(cfg.status).map_err(|_| SinkError::InvalidStatus(cfg.status))?;
        let acceptor = TlsAcceptor::from(Arc::new(server_tls_config(&cfg)?));
        let listener =
            std::net::TcpListener::bind(cfg.bind).map_err(|e| SinkError::Bind(e.kind()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SinkError::Bind(e.kind()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SinkError::Bind(e.kind()))?;

        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState {
                stats: SinkStats::default(),
                recorded: Vec::new(),
            }),
            changed: Condvar::new(),
            next_connection_id: AtomicU64::new(1),
        });
        let answer = Arc::new(Answer {
            record: cfg.record,
            status,
            body: cfg.response_body.clone(),
            chunked: cfg.chunked_response,
            delay: cfg.response_delay,
            goaway_after: cfg.goaway_after,
            close_after: cfg.close_after,
            max_concurrent_streams: cfg.max_concurrent_streams,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut sink = Self {
            addr,
            shared,
            stop,
            workers: Vec::new(),
        };
        // On any error below, dropping `sink` stops the workers already started.
        for index in 0..cfg.workers.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SinkError::Spawn(e.kind()))?;
            let worker_listener = {
                let std_listener = listener
                    .try_clone()
                    .map_err(|e| SinkError::Bind(e.kind()))?;
                // Registers the socket with this worker's reactor.
                let _runtime_context = runtime.enter();
                TcpListener::from_std(std_listener).map_err(|e| SinkError::Bind(e.kind()))?
            };
            let worker = Worker {
                listener: worker_listener,
                acceptor: acceptor.clone(),
                shared: Arc::clone(&sink.shared),
                answer: Arc::clone(&answer),
                stop: stop_rx.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("https-sink-{index}"))
                .spawn(move || runtime.block_on(worker.run()))
                .map_err(|e| SinkError::Spawn(e.kind()))?;
            sink.workers.push(handle);
        }
        Ok(sink)
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the requests recorded so far, in `x-sink-seq` order (empty unless
    /// [`SinkConfig::record`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().recorded.clone()
    }

    /// Blocks until at least `n` requests have been read in full or `timeout` passes; returns
    /// the number reached. Woken by each request, not by polling.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> usize {
        let wanted = u64::try_from(n).unwrap_or(u64::MAX);
        let stats = self.wait_for_stats(timeout, |stats| stats.requests >= wanted);
        usize::try_from(stats.requests).unwrap_or(usize::MAX)
    }

    /// Blocks until `done` holds for the counters or `timeout` passes; returns the counters
    /// at that point. Woken by every counter change (e.g. a failed handshake), not by polling.
    pub fn wait_for_stats(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&SinkStats) -> bool,
    ) -> SinkStats {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        while !done(&state.stats) {
            if self
                .shared
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                break;
            }
        }
        state.stats
    }

    /// Current counters.
    pub fn stats(&self) -> SinkStats {
        self.shared.state.lock().stats
    }

    /// Stops accepting, drops open connections and joins the worker threads (also done on drop).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for HttpsSink {
    fn drop(&mut self) {
        // Receivers only disappear when workers have exited already; nothing to do then.
        let _ = self.stop.send(true);
        for worker in self.workers.drain(..) {
            // A panicked worker has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

fn server_tls_config(cfg: &SinkConfig) -> Result<ServerConfig, SinkError> {
    let certs = load_certs(&cfg.cert.cert)?;
    let key = load_key(&cfg.cert.key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|_| SinkError::Tls)?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs(ca_path)? {
                roots.add(ca).map_err(|_| SinkError::Tls)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|_| SinkError::Tls)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|_| SinkError::Tls)?;
    config.alpn_protocols = if cfg.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// One worker thread's accept loop.
struct Worker {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    answer: Arc<Answer>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            tokio::select! {
                // Either a stop request or the handle is gone: both mean stop.
                _ = self.stop.changed() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, _peer)) => {
                        // Latency matters more than packet count for a test endpoint;
                        // failing to set it changes nothing functionally.
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(serve_connection(
                            tcp,
                            self.acceptor.clone(),
                            Arc::clone(&self.shared),
                            Arc::clone(&self.answer),
                        ));
                    }
                    Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
                },
            }
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    answer: Arc<Answer>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) | Err(_) => {
            shared.update(|state| state.stats.failed_handshakes += 1);
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
    let is_h2 = session.alpn_protocol() == Some(b"h2");
    shared.update(|state| {
        state.stats.tls_handshakes += 1;
        state.stats.resumed_handshakes += u64::from(resumed);
        state.stats.h2_connections += u64::from(is_h2);
    });
    let client_cert_cn: Option<Arc<str>> = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| common_name(leaf.as_ref()))
        .map(Arc::from);
    let goaway = Arc::new(tokio::sync::Notify::new());
    let max_streams = answer.max_concurrent_streams;
    let abrupt = answer.close_after.is_some();
    let connection = ConnectionContext {
        id: shared.next_connection_id.fetch_add(1, Ordering::Relaxed),
        client_cert_cn,
        shared: Arc::clone(&shared),
        answer,
        served: AtomicU64::new(0),
        goaway: Arc::clone(&goaway),
    };
    let connection = Arc::new(connection);
    let service = service_fn(move |request| Arc::clone(&connection).handle(request));
    // Client resets and malformed requests end the connection; the sink has nothing to report.
    if is_h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if let Some(n) = max_streams {
            builder.max_concurrent_streams(n);
        }
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = goaway.notified() => {}
        }
        if abrupt {
            // Dropping the connection closes the socket: no GOAWAY, no answer.
            shared.update(|state| state.stats.abrupt_closes += 1);
            return;
        }
        shared.update(|state| state.stats.goaways += 1);
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
        return;
    }
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// What every request on one TLS connection shares.
struct ConnectionContext {
    id: u64,
    client_cert_cn: Option<Arc<str>>,
    shared: Arc<Shared>,
    answer: Arc<Answer>,
    /// Requests read on this connection.
    served: AtomicU64,
    /// Told when [`Answer::goaway_after`] requests were read (HTTP/2 only).
    goaway: Arc<tokio::sync::Notify>,
}

impl ConnectionContext {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<SinkBody>, hyper::Error> {
        let (parts, body) = request.into_parts();
        // An error here (client gone, bad chunk) makes hyper close the connection.
        let collected = body.collect().await?;
        let trailers: Vec<(String, Vec<u8>)> = collected.trailers().map_or_else(Vec::new, |t| {
            t.iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect()
        });
        let body = collected.to_bytes();
        let body_len = body.len();
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.answer.goaway_after == Some(served) {
            self.goaway.notify_one();
        }

        let seq = self.shared.update(|state| {
            state.stats.requests += 1;
            state.stats.body_bytes += body_len as u64;
            let seq = state.stats.requests;
            if self.answer.record {
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
                let headers = parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect();
                state.recorded.push(RecordedRequest {
                    method: parts.method.as_str().to_owned(),
                    path,
                    headers,
                    body,
                    trailers,
                    client_cert_cn: self.client_cert_cn.as_deref().map(str::to_owned),
                    connection_id: self.id,
                    version: format!("{:?}", parts.version),
                });
            }
            seq
        });

        if self.answer.close_after == Some(served) {
            // Recorded, never answered: the connection is dropped under it.
            self.goaway.notify_one();
            std::future::pending::<()>().await;
        }
        if let Some(delay) = self.answer.delay {
            tokio::time::sleep(delay).await;
        }
        let body = if self.answer.chunked {
            let b = &self.answer.body;
            let mid = b.len() / 2;
            http_body_util::Either::Right(ChunkedBody(
                [b.slice(..mid), b.slice(mid..)]
                    .into_iter()
                    .filter(|c| !c.is_empty())
                    .collect(),
            ))
        } else {
            http_body_util::Either::Left(Full::new(self.answer.body.clone()))
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.answer.status;
        let headers = response.headers_mut();
        headers.insert(HeaderName::from_static(SEQ_HEADER), HeaderValue::from(seq));
        headers.insert(
            HeaderName::from_static(BODY_BYTES_HEADER),
            HeaderValue::from(body_len),
        );
        Ok(response)
    }
}

/// The subject common name (OID 2.5.4.3) of a DER certificate, if it is a UTF8String,
/// PrintableString or IA5String. Malformed input yields `None`.
fn common_name(cert_der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

    let (certificate, _) = der_expect(cert_der, SEQUENCE)?;
    let (tbs, _) = der_expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = der_read(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = der_read(rest)?.2;
    }
    let (mut names, _) = der_expect(rest, SEQUENCE)?;
    while !names.is_empty() {
        let (mut rdn, after_rdn) = der_expect(names, SET)?;
        names = after_rdn;
        while !rdn.is_empty() {
            let (attribute, after_attribute) = der_expect(rdn, SEQUENCE)?;
            rdn = after_attribute;
            let (oid, value) = der_expect(attribute, OID)?;
            if oid == COMMON_NAME_OID {
                let (tag, text, _) = der_read(value)?;
                // UTF8String, PrintableString, IA5String.
                return match tag {
                    0x0c | 0x13 | 0x16 => String::from_utf8(text.to_vec()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// Reads one DER TLV with the given tag: `(contents, rest)`.
fn der_expect(input: &[u8], want_tag: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = der_read(input)?;
    (tag == want_tag).then_some((contents, rest))
}

/// Reads one DER TLV (single-byte tags, definite lengths up to 4 bytes): `(tag, contents, rest)`.
fn der_read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, after_tag) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tag numbers never occur in the fields we walk
    }
    let (&first, mut after_len) = after_tag.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || after_len.len() < count {
            return None;
        }
        let (len_bytes, rest) = after_len.split_at(count);
        after_len = rest;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if after_len.len() < len {
        return None;
    }
    let (contents, rest) = after_len.split_at(len);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::pki::TestPki;
    use rustls::pki_types::ServerName;
    use rustls::ClientConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    const WAIT: Duration = Duration::from_secs(10);

    fn client_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime")
    }

    fn client_config(pki: &TestPki, client_cert: Option<&CertFiles>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&pki.ca_pem).expect("ca") {
            roots.add(ca).expect("root");
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => builder
                .with_client_auth_cert(
                    load_certs(&files.cert).expect("client cert"),
                    load_key(&files.key).expect("client key"),
                )
                .expect("client auth"),
        };
        Arc::new(config)
    }

    async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// A parsed response: status, headers (lowercased names), body.
    type ParsedResponse = (u16, Vec<(String, String)>, Vec<u8>);

    /// Reads one Content-Length-delimited response off `stream`.
    async fn read_response<S: tokio::io::AsyncRead + Unpin>(
        stream: &mut S,
    ) -> io::Result<ParsedResponse> {
        let mut buf = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = response.parse(&buf) {
                let status = response.code.unwrap_or(0);
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let body_len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_len + body_len {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, headers, buf[head_len..head_len + body_len].to_vec()));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn new_pki() -> (tempfile::TempDir, TestPki, CertFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let server = pki
            .server_cert("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        (dir, pki, server)
    }

    #[test]
    fn records_an_https_request_sent_with_hyper_client() {
        let (_dir, pki, server) = new_pki();
        let mut cfg = SinkConfig::new(server);
        cfg.status = 202;
        cfg.response_body = Bytes::from_static(b"accepted");
        let sink = HttpsSink::start(cfg).expect("sink");
        let config = client_config(&pki, None);

        let (status, seq, echoed, body) = client_runtime().block_on(async {
            let tls = connect(sink.addr(), config).await.expect("tls");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let request = Request::post("/telemetry?device=7")
                .header("host", "localhost")
                .header("X-Device", "sensor-17")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"t\":21.5}")))
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            let status = response.status().as_u16();
            let seq = response.headers().get(SEQ_HEADER).cloned();
            let echoed = response.headers().get(BODY_BYTES_HEADER).cloned();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, seq, echoed, body)
        });
        assert_eq!(status, 202);
        assert_eq!(seq, Some(HeaderValue::from_static("1")));
        assert_eq!(echoed, Some(HeaderValue::from_static("10")));
        assert_eq!(&body[..], b"accepted");

        let requests = sink.requests();
        assert_eq!(requests.len(), 1);
        let recorded = &requests[0];
        assert_eq!(recorded.method, "POST");
        assert_eq!(recorded.path, "/telemetry?device=7");
        assert_eq!(recorded.header("x-device"), Some(&b"sensor-17"[..]));
        let names: Vec<&str> = recorded.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["host", "x-device", "content-type", "content-length"],
            "names lowercased, in arrival order"
        );
        assert_eq!(&recorded.body[..], b"{\"t\":21.5}");
        assert_eq!(recorded.client_cert_cn, None);
        let stats = sink.stats();
        assert_eq!(stats.requests, 1);
        assert_eq!(stats.body_bytes, 10);
        assert_eq!(stats.tls_handshakes, 1);
        assert_eq!(stats.failed_handshakes, 0);
        sink.shutdown();
    }

    #[test]
    fn chunked_bodies_are_read_in_full_and_keep_alive_shares_a_connection_id() {
        let (_dir, pki, server) = new_pki();
        let sink = HttpsSink::start(SinkConfig::new(server)).expect("sink");
        let config = client_config(&pki, None);

        let (first, second) = client_runtime().block_on(async {
            let mut tls = connect(sink.addr(), config).await.expect("tls");
            let chunked = b"POST /chunked HTTP/1.1\r\nHost: localhost\r\n\
                Transfer-Encoding: chunked\r\n\r\n\
                5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
            tls.write_all(chunked).await.expect("write");
            let first = read_response(&mut tls).await.expect("first response");
            tls.write_all(b"GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("write");
            let second = read_response(&mut tls).await.expect("second response");
            (first, second)
        });
        assert_eq!(first.0, 200);
        assert_eq!(header(&first.1, BODY_BYTES_HEADER), Some("12"));
        assert_eq!(header(&first.1, SEQ_HEADER), Some("1"));
        assert_eq!(header(&second.1, SEQ_HEADER), Some("2"));
        assert_eq!(header(&second.1, BODY_BYTES_HEADER), Some("0"));

        let requests = sink.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(&requests[0].body[..], b"hello, world");
        assert_eq!(requests[1].method, "GET");
        assert_eq!(requests[1].path, "/second");
        assert_eq!(requests[0].connection_id, requests[1].connection_id);
        assert_eq!(sink.stats().tls_handshakes, 1);
    }

    #[test]
    fn mtls_sink_rejects_anonymous_clients_and_records_the_client_cn() {
        let (_dir, pki, server) = new_pki();
        let device = pki.client_cert("device-42").expect("client cert");
        let mut cfg = SinkConfig::new(server);
        cfg.client_ca = Some(pki.ca_pem.clone());
        let sink = HttpsSink::start(cfg).expect("sink");
        let anonymous = client_config(&pki, None);
        let with_cert = client_config(&pki, Some(&device));
        let request = b"POST /m HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi";

        let runtime = client_runtime();
        let anonymous_result: io::Result<ParsedResponse> = runtime.block_on(async {
            // TLS 1.3: the client may finish its side before the server rejects it, so the
            // refusal can surface on connect, write or read.
            let mut tls = connect(sink.addr(), anonymous).await?;
            tls.write_all(request).await?;
            read_response(&mut tls).await
        });
        assert!(anonymous_result.is_err(), "anonymous client was answered");
        // The server counts the failure after sending its alert, so wait for it.
        let stats = sink.wait_for_stats(WAIT, |stats| stats.failed_handshakes >= 1);
        assert_eq!(stats.failed_handshakes, 1);
        assert_eq!(stats.requests, 0);

        let response = runtime.block_on(async {
            let mut tls = connect(sink.addr(), with_cert).await.expect("mtls");
            tls.write_all(request).await.expect("write");
            read_response(&mut tls).await.expect("response")
        });
        assert_eq!(response.0, 200);
        let requests = sink.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].client_cert_cn.as_deref(), Some("device-42"));
        assert_eq!(&requests[0].body[..], b"hi");
    }

    #[test]
    fn wait_for_requests_wakes_on_arrival_and_reports_shortfall_on_timeout() {
        let (_dir, pki, server) = new_pki();
        let mut cfg = SinkConfig::new(server);
        cfg.workers = 2;
        cfg.record = false;
        let sink = HttpsSink::start(cfg).expect("sink");
        let config = client_config(&pki, None);
        let addr = sink.addr();

        // Nothing sent yet: a short wait times out at zero.
        assert_eq!(sink.wait_for_requests(1, Duration::from_millis(20)), 0);

        let client = std::thread::spawn(move || {
            client_runtime().block_on(async {
                for _ in 0..3 {
                    let mut tls = connect(addr, Arc::clone(&config)).await.expect("tls");
                    tls.write_all(
                        b"PUT /w HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await
                    .expect("write");
                    read_response(&mut tls).await.expect("response");
                }
            });
        });
        let started = Instant::now();
        assert_eq!(sink.wait_for_requests(3, Duration::from_secs(60)), 3);
        assert!(started.elapsed() < Duration::from_secs(60));
        client.join().expect("client thread");
        assert!(sink.requests().is_empty(), "record = false keeps nothing");
        let stats = sink.stats();
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.tls_handshakes, 3);
        // One client config, so connections after the first resume its TLS 1.3 session.
        assert_eq!(stats.resumed_handshakes, 2);
        // More than will ever arrive: returns the count reached when the timeout passes.
        assert_eq!(sink.wait_for_requests(4, Duration::from_millis(20)), 3);
    }

    #[test]
    fn delayed_answers_still_count_the_request_first() {
        let (_dir, pki, server) = new_pki();
        let mut cfg = SinkConfig::new(server);
        cfg.response_delay = Some(Duration::from_secs(3600));
        let sink = HttpsSink::start(cfg).expect("sink");
        let config = client_config(&pki, None);
        let addr = sink.addr();
        let client = std::thread::spawn(move || {
            client_runtime().block_on(async {
                let mut tls = connect(addr, config).await.expect("tls");
                tls.write_all(
                    b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx",
                )
                .await
                .expect("write");
                // The sink never answers before shutdown; shutdown closes the connection.
                read_response(&mut tls).await
            })
        });
        assert_eq!(sink.wait_for_requests(1, WAIT), 1);
        sink.shutdown();
        assert!(client.join().expect("client thread").is_err());
    }

    #[test]
    fn invalid_status_and_missing_files_are_reported_at_start() {
        let (dir, _pki, server) = new_pki();
        let mut cfg = SinkConfig::new(server.clone());
        cfg.status = 42;
        assert_eq!(
            HttpsSink::start(cfg).err(),
            Some(SinkError::InvalidStatus(42))
        );
        let mut cfg = SinkConfig::new(server);
        cfg.client_ca = Some(dir.path().join("nope.pem"));
        assert_eq!(
            HttpsSink::start(cfg).err(),
            Some(SinkError::Pki(PkiError::Read(io::ErrorKind::NotFound)))
        );
    }

    #[test]
    fn common_name_is_read_from_minted_certificates_and_garbage_is_none() {
        let (_dir, pki, server) = new_pki();
        let client = pki.client_cert("sim-440103").expect("client");
        let der = load_certs(&client.cert).expect("cert").remove(0);
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("sim-440103"));
        let server_der = load_certs(&server.cert).expect("cert").remove(0);
        assert_eq!(
            common_name(server_der.as_ref()).as_deref(),
            Some("localhost")
        );
        let ca_der = load_certs(&pki.ca_pem).expect("ca").remove(0);
        assert_eq!(
            common_name(ca_der.as_ref()).as_deref(),
            Some("simgate test CA")
        );
        for cut in 0..der.as_ref().len() {
            assert_eq!(
                common_name(&der.as_ref()[..cut]),
                None,
                "truncated at {cut}"
            );
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
