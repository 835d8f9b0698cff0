//! Stand-in clouds that account for what arrives: an HTTP(S) server sink, an MQTT(S) broker
//! sink, and a subscriber that does the same accounting behind a real broker (mosquitto).
//!
//! Every message body (HTTP) or PUBLISH payload (MQTT) is handed to a shared
//! [`DeliveryTracker`] the moment it has fully arrived (loss, duplicates, reordering,
//! end-to-end latency from the stamped intended send time; see [`crate::tracker`]).
//!
//! - [`Sink`] with [`SinkKind::Http`]: HTTP/1.1 keep-alive server; reads each request (head with
//!   `httparse`, `Content-Length` body), answers `200` with an empty body (`Connection: close`
//!   when the request asked for it). A request with `Content-Type:
//!   application/vnd.microsoft.servicebus.json` (an Event Hubs batch send: a JSON array of
//!   `{"Body", …}` objects) carries many messages: each top-level element's `Body` string is one
//!   message for the tracker; a body that is not such an array is answered `400` (and its
//!   messages are not counted). [`SinkCounters::requests`] counts the requests themselves (the
//!   cloud calls), so calls per message = requests ÷ messages. With [`SinkOptions::http2`] and TLS it offers `h2` first in ALPN and serves clients that
//!   select it with the `h2` crate's server: each stream's body is read whole, recorded as one
//!   message (batch bodies are not split over HTTP/2) and answered `200` with no body.
//! - [`Sink`] with [`SinkKind::Mqtt`]: a minimal MQTT 3.1.1/5.0 server on simgate's own sans-IO
//!   codec: CONNECT→CONNACK (success, no session), PUBLISH QoS 0; QoS 1→PUBACK; QoS 2→PUBREC,
//!   PUBREL→PUBCOMP (a QoS 2 packet id awaiting PUBREL is not counted twice), SUBSCRIBE→SUBACK
//!   (granting the requested QoS), UNSUBSCRIBE→UNSUBACK, PINGREQ→PINGRESP, DISCONNECT.
//! - Both listen with TLS ([`SinkOptions::tls`], rustls, generated certificates) — the cloud
//!   side of a gateway — or in plaintext, for the "direct" baseline where devices (which speak
//!   no TLS) talk to the sink without a gateway.
//! - [`Subscriber`]: an MQTT client (TCP or TLS) that subscribes to a filter on a real broker
//!   and feeds every PUBLISH it receives to the tracker (acknowledging QoS 1/2).
//!
//! Each runs on its own multi-threaded tokio runtime ([`SinkOptions::workers`] threads) and
//! stops when dropped. Loss injection ([`SinkOptions::drop_every`]) acknowledges but does not
//! count every N-th message of each device, so tests can check that loss is counted exactly.
//!
//! What it does NOT do: chunked HTTP/1.1 bodies (answered 411 and closed), h2c, MQTT retained
//! messages, routing PUBLISHes to subscribers, sessions, wills, topic aliases, AUTH, or
//! authentication of any kind. It is a test double for loopback benchmarks: never expose it.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use simgate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, Packet, Properties, ProtocolVersion,
    PubResponse, QoS, ReasonCode, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
};
use simgate::testkit::{load_certs, load_key, CertFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tracker::DeliveryTracker;

/// Longest time a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP request head the sink reads.
const MAX_HEAD: usize = 64 * 1024;

/// Which protocol a [`Sink`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// HTTP/1.1.
    Http,
    /// MQTT 3.1.1 / 5.0.
    Mqtt,
}

/// How to run a [`Sink`].
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Protocol.
    pub kind: SinkKind,
    /// Listen address; port 0 picks a free port ([`Sink::addr`]).
    pub bind: SocketAddr,
    /// Server certificate and key: listen with TLS. `None`: plaintext.
    pub tls: Option<CertFiles>,
    /// Loss injection: acknowledge but discard every N-th message of each device.
    pub drop_every: Option<u64>,
    /// tokio worker threads.
    pub workers: usize,
    /// HTTP with TLS: offer `h2` (before `http/1.1`) and serve HTTP/2 to clients selecting it.
    pub http2: bool,
}

impl SinkOptions {
    /// A plaintext sink of `kind` on a free loopback port, one worker, no loss injection.
    pub fn new(kind: SinkKind) -> Self {
        Self {
            kind,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            drop_every: None,
            workers: 1,
            http2: false,
        }
    }
}

/// Why a sink or subscriber could not start.
#[derive(Debug)]
pub enum SinkError {
    /// Binding, connecting or building the runtime failed.
    Io(io::Error),
    /// Certificates could not be loaded or the TLS configuration was refused.
    Tls(String),
    /// The tracker's histogram could not be created.
    Histogram,
    /// The broker refused or broke the subscription.
    Broker(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "sink: {e}"),
            Self::Tls(e) => write!(f, "sink TLS: {e}"),
            Self::Histogram => f.write_str("sink: latency histogram creation failed"),
            Self::Broker(e) => write!(f, "subscriber: {e}"),
        }
    }
}

impl std::error::Error for SinkError {}

impl From<io::Error> for SinkError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Counters of the sink itself (not of the messages).
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Connections closed because of unparseable input.
    pub protocol_errors: AtomicU64,
    /// HTTP requests read in full (cloud calls; a batch call is one request carrying many
    /// messages). Not counted for MQTT.
    pub requests: AtomicU64,
    /// HTTP batch requests whose body was not a JSON array of objects with a string `Body`
    /// (answered 400).
    pub bad_batches: AtomicU64,
    /// Connections served with HTTP/2.
    pub h2_connections: AtomicU64,
}

/// A running sink; stops when dropped.
pub struct Sink {
    addr: SocketAddr,
    tracker: Arc<DeliveryTracker>,
    counters: Arc<SinkCounters>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("addr", &self.addr).finish()
    }
}

impl Sink {
    /// Binds and starts serving; returns once the socket listens.
    pub fn start(options: SinkOptions) -> Result<Self, SinkError> {
        let tracker =
            Arc::new(DeliveryTracker::new(options.drop_every).map_err(|_| SinkError::Histogram)?);
        let acceptor = match &options.tls {
            Some(cert) => Some(TlsAcceptor::from(Arc::new(server_config(
                cert,
                options.kind,
                options.http2,
            )?))),
            None => None,
        };
        let runtime = runtime(options.workers, "simgate-sink")?;
        let std_listener = std::net::TcpListener::bind(options.bind)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let counters = Arc::new(SinkCounters::default());
        runtime.spawn(accept_loop(
            listener,
            acceptor,
            options.kind,
            Arc::clone(&tracker),
            Arc::clone(&counters),
        ));
        Ok(Self {
            addr,
            tracker,
            counters,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delivery accounting.
    pub fn tracker(&self) -> &Arc<DeliveryTracker> {
        &self.tracker
    }

    /// The sink's own counters.
    pub fn counters(&self) -> &Arc<SinkCounters> {
        &self.counters
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn runtime(workers: usize, name: &str) -> Result<tokio::runtime::Runtime, SinkError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .thread_name(name)
        .build()?)
}

fn server_config(cert: &CertFiles, kind: SinkKind, http2: bool) -> Result<ServerConfig, SinkError> {
    let certs = load_certs(&cert.cert).map_err(|e| SinkError::Tls(format!("{e}")))?;
    let key = load_key(&cert.key).map_err(|e| SinkError::Tls(format!("{e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| SinkError::Tls(e.to_string()))?;
    if kind == SinkKind::Http {
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
    }
    Ok(config)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    kind: SinkKind,
    tracker: Arc<DeliveryTracker>,
    counters: Arc<SinkCounters>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or similar: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let (tracker, counters, acceptor) = (
            Arc::clone(&tracker),
            Arc::clone(&counters),
            acceptor.clone(),
        );
        tokio::spawn(async move {
            let served = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            counters.h2_connections.fetch_add(1, Ordering::Relaxed);
                            serve_h2(tls, &tracker, &counters).await
                        }
                        Ok(Ok(tls)) => serve(tls, kind, &tracker, &counters).await,
                        _ => {
                            counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                None => serve(stream, kind, &tracker, &counters).await,
            };
            if served == Served::ProtocolError {
                counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// Closed by the peer, a DISCONNECT, an IO error or `Connection: close`.
    Closed,
    /// Unparseable or unsupported input.
    ProtocolError,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    kind: SinkKind,
    tracker: &DeliveryTracker,
    counters: &SinkCounters,
) -> Served {
    match kind {
        SinkKind::Http => serve_http(stream, tracker, counters).await,
        SinkKind::Mqtt => serve_mqtt(stream, tracker).await,
    }
}

/// HTTP/2: every stream's body is read whole (flow-control capacity handed back as it
/// arrives), recorded, and answered `200` without a body. Streams are served concurrently on
/// the connection's task set.
async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    tracker: &Arc<DeliveryTracker>,
    counters: &Arc<SinkCounters>,
) -> Served {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return Served::ProtocolError;
    };
    while let Some(accepted) = connection.accept().await {
        let Ok((request, mut respond)) = accepted else {
            return Served::Closed;
        };
        let tracker = Arc::clone(tracker);
        let counters = Arc::clone(counters);
        tokio::spawn(async move {
            let mut body = request.into_body();
            let mut data = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            counters.requests.fetch_add(1, Ordering::Relaxed);
            tracker.record(&data);
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(0));
            let _ = respond.send_response(response, true);
        });
    }
    Served::Closed
}

/// Reads more bytes into `buf`; false on EOF or error.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> bool {
    buf.reserve(16 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// The framing of one HTTP request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestHead {
    head_len: usize,
    body_len: usize,
    close: bool,
    /// `Content-Type: application/vnd.microsoft.servicebus.json`: an Event Hubs batch.
    batch: bool,
}

/// The media type of an Event Hubs batch send (a JSON array of events).
pub const EVENT_HUBS_BATCH_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// One element of an Event Hubs batch: only `Body` is read (the other members are skipped).
#[derive(serde::Deserialize)]
struct BatchEvent<'a> {
    #[serde(rename = "Body", borrow)]
    body: std::borrow::Cow<'a, str>,
}

/// Hands each event's `Body` of an Event Hubs batch body to `tracker`; the number of events, or
/// `None` (nothing recorded) when `body` is not a JSON array of objects with a string `Body`.
fn record_batch(body: &[u8], tracker: &DeliveryTracker) -> Option<usize> {
    let events: Vec<BatchEvent<'_>> = serde_json::from_slice(body).ok()?;
    for event in &events {
        tracker.record(event.body.as_bytes());
    }
    Some(events.len())
}

/// Parses the request head at the start of `buf`: `Ok(None)` when incomplete, `Err(())` when
/// malformed or framed in a way the sink does not read (chunked).
fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut body_len = 0usize;
    let mut close = request.version == Some(0);
    let mut batch = false;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        } else if h.name.eq_ignore_ascii_case("content-type") {
            // The media type without parameters (`; charset=utf-8`).
            let media = h.value.split(|&b| b == b';').next().unwrap_or_default();
            batch = media
                .trim_ascii()
                .eq_ignore_ascii_case(EVENT_HUBS_BATCH_TYPE.as_bytes());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    Ok(Some(RequestHead {
        head_len,
        body_len,
        close,
        batch,
    }))
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tracker: &DeliveryTracker,
    counters: &SinkCounters,
) -> Served {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let head = loop {
            match parse_request_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) if buf.len() < MAX_HEAD => {}
                _ => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return Served::ProtocolError;
                }
            }
            if !fill(&mut stream, &mut buf).await {
                return Served::Closed;
            }
        };
        let total = head.head_len + head.body_len;
        while buf.len() < total {
            if !fill(&mut stream, &mut buf).await {
                return Served::Closed;
            }
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let body = &buf[head.head_len..total];
        let bad_batch = head.batch && record_batch(body, tracker).is_none();
        if !head.batch {
            tracker.record(body);
        }
        buf.advance(total);
        let answer: &[u8] = if bad_batch {
            counters.bad_batches.fetch_add(1, Ordering::Relaxed);
            if head.close {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
            }
        } else if head.close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        };
        if stream.write_all(answer).await.is_err() || head.close {
            let _ = stream.shutdown().await;
            return Served::Closed;
        }
    }
}

/// Per-connection MQTT state shared by the server and the subscriber.
struct MqttSession {
    version: ProtocolVersion,
    /// QoS 2 packet ids received and not yet released.
    awaiting_rel: std::collections::HashSet<u16>,
    out: BytesMut,
}

/// What handling one packet asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

impl MqttSession {
    fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            awaiting_rel: std::collections::HashSet::new(),
            out: BytesMut::with_capacity(4096),
        }
    }

    fn send(&mut self, packet: &Packet) {
        // Only packets this module builds, all well-formed: encoding cannot fail.
        let _ = mqtt::encode(packet, self.version, &mut self.out);
    }

    /// Handles a packet either side may get (the PUBLISH flow, PINGREQ, DISCONNECT).
    fn handle(&mut self, packet: Packet, tracker: &DeliveryTracker) -> Next {
        match packet {
            Packet::Publish(publish) => match (publish.qos, publish.packet_id) {
                (QoS::AtMostOnce, _) => {
                    tracker.record(&publish.payload);
                }
                (QoS::AtLeastOnce, Some(id)) => {
                    tracker.record(&publish.payload);
                    self.send(&Packet::PubAck(PubResponse::success(id)));
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    if self.awaiting_rel.insert(id.get()) {
                        tracker.record(&publish.payload);
                    }
                    self.send(&Packet::PubRec(PubResponse::success(id)));
                }
                // The codec guarantees an id with QoS > 0.
                _ => return Next::Close,
            },
            Packet::PubRel(rel) => {
                self.awaiting_rel.remove(&rel.packet_id.get());
                self.send(&Packet::PubComp(PubResponse::success(rel.packet_id)));
            }
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(_) => return Next::Close,
            Packet::Subscribe(subscribe) => {
                let reason_codes = subscribe
                    .subscriptions
                    .iter()
                    .map(|s| ReasonCode(s.options.qos as u8))
                    .collect();
                self.send(&Packet::SubAck(SubAck {
                    packet_id: subscribe.packet_id,
                    properties: Properties::default(),
                    reason_codes,
                }));
            }
            Packet::Unsubscribe(unsubscribe) => {
                let reason_codes = if self.version == ProtocolVersion::V5 {
                    vec![ReasonCode::SUCCESS; unsubscribe.filters.len()]
                } else {
                    Vec::new()
                };
                self.send(&Packet::UnsubAck(UnsubAck {
                    packet_id: unsubscribe.packet_id,
                    properties: Properties::default(),
                    reason_codes,
                }));
            }
            // PUBACK/PUBREC/PUBCOMP/SUBACK/PINGRESP/CONNACK and the rest: nothing to answer.
            _ => {}
        }
        Next::Continue
    }
}

async fn serve_mqtt<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tracker: &DeliveryTracker,
) -> Served {
    let limits = DecodeLimits::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let version = loop {
        match mqtt::decode_connect(&mut buf, &limits) {
            Ok(Decoded::Complete(connect)) => break connect.protocol_version,
            Ok(Decoded::Incomplete { .. }) => {}
            Err(_) => return Served::ProtocolError,
        }
        if !fill(&mut stream, &mut buf).await {
            return Served::Closed;
        }
    };
    let mut session = MqttSession::new(version);
    session.send(&Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }));
    run_session(&mut stream, &mut buf, &mut session, tracker, &limits).await
}

/// Handles every complete packet, writes the answers in one go, reads more; until close.
async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    session: &mut MqttSession,
    tracker: &DeliveryTracker,
    limits: &DecodeLimits,
) -> Served {
    loop {
        let mut next = Next::Continue;
        loop {
            match mqtt::decode_packet(buf, session.version, mqtt::Sender::Client, limits) {
                Ok(Decoded::Complete(packet)) => {
                    next = session.handle(packet, tracker);
                    if next == Next::Close {
                        break;
                    }
                }
                Ok(Decoded::Incomplete { .. }) => break,
                Err(_) => return Served::ProtocolError,
            }
        }
        if !session.out.is_empty() {
            if stream.write_all(&session.out).await.is_err() {
                return Served::Closed;
            }
            session.out.clear();
        }
        if next == Next::Close || !fill(stream, buf).await {
            return Served::Closed;
        }
    }
}

/// How to run a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// The broker.
    pub broker: SocketAddr,
    /// CA file and server name: connect with TLS. `None`: plaintext.
    pub tls: Option<(PathBuf, String)>,
    /// Topic filter to subscribe to.
    pub filter: String,
    /// QoS of the subscription (0, 1 or 2).
    pub qos: u8,
    /// Client id.
    pub client_id: String,
    /// Loss injection, as for [`SinkOptions::drop_every`].
    pub drop_every: Option<u64>,
}

/// An MQTT subscriber on a real broker, feeding a tracker; stops when dropped.
pub struct Subscriber {
    tracker: Arc<DeliveryTracker>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish()
    }
}

impl Subscriber {
    /// Connects and subscribes; returns once the broker granted the subscription (SUBACK), so
    /// nothing published afterwards is missed.
    pub fn start(options: SubscriberOptions) -> Result<Self, SinkError> {
        let tracker =
            Arc::new(DeliveryTracker::new(options.drop_every).map_err(|_| SinkError::Histogram)?);
        let runtime = runtime(1, "simgate-subscriber")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let task_tracker = Arc::clone(&tracker);
        runtime.spawn(async move {
            let _served = match &options.tls {
                Some((ca, name)) => match tls_connect(options.broker, ca, name).await {
                    Ok(tls) => subscribe_and_serve(tls, &options, &task_tracker, ready_tx).await,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                },
                None => match TcpStream::connect(options.broker).await {
                    Ok(tcp) => subscribe_and_serve(tcp, &options, &task_tracker, ready_tx).await,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SinkError::Io(e)));
                        return;
                    }
                },
            };
        });
        match ready_rx.recv_timeout(HANDSHAKE_TIMEOUT) {
            Ok(Ok(())) => Ok(Self {
                tracker,
                runtime: Some(runtime),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SinkError::Broker(format!(
                "no SUBACK within {HANDSHAKE_TIMEOUT:?}"
            ))),
        }
    }

    /// The delivery accounting.
    pub fn tracker(&self) -> &Arc<DeliveryTracker> {
        &self.tracker
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn tls_connect(
    broker: SocketAddr,
    ca: &Path,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SinkError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca).map_err(|e| SinkError::Tls(format!("{}: {e}", ca.display())))? {
        roots
            .add(cert)
            .map_err(|e| SinkError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| SinkError::Tls(e.to_string()))?;
    let tcp = TcpStream::connect(broker).await?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| SinkError::Tls(e.to_string()))
}

async fn subscribe_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    options: &SubscriberOptions,
    tracker: &DeliveryTracker,
    ready: std::sync::mpsc::Sender<Result<(), SinkError>>,
) -> Served {
    let version = ProtocolVersion::V311;
    let limits = DecodeLimits::default();
    let mut session = MqttSession::new(version);
    let qos = match options.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    session.send(&Packet::Connect(Box::new(Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: Bytes::from(options.client_id.clone()),
        will: None,
        username: None,
        password: None,
    })));
    session.send(&Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::MIN,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: Bytes::from(options.filter.clone()),
            options: SubscriptionOptions::with_qos(qos),
        }],
    }));
    if let Err(e) = stream.write_all(&session.out).await {
        let _ = ready.send(Err(SinkError::Io(e)));
        return Served::Closed;
    }
    session.out.clear();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // CONNACK, then SUBACK (PUBLISHes may only follow the SUBACK).
    let mut connacked = false;
    loop {
        match mqtt::decode_packet(&mut buf, version, mqtt::Sender::Server, &limits) {
            Ok(Decoded::Complete(Packet::ConnAck(ack)))
                if ack.reason_code == ReasonCode::SUCCESS =>
            {
                connacked = true;
                continue;
            }
            Ok(Decoded::Complete(Packet::SubAck(ack))) if connacked => {
                if ack.reason_codes.iter().any(|c| c.0 >= 0x80) {
                    let _ = ready.send(Err(SinkError::Broker(format!(
                        "subscription to {:?} refused: {:?}",
                        options.filter, ack.reason_codes
                    ))));
                    return Served::Closed;
                }
                let _ = ready.send(Ok(()));
                break;
            }
            Ok(Decoded::Complete(other)) => {
                let _ = ready.send(Err(SinkError::Broker(format!(
                    "unexpected {:?} before SUBACK",
                    other.packet_type()
                ))));
                return Served::ProtocolError;
            }
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => {
                let _ = ready.send(Err(SinkError::Broker(format!("{e:?}"))));
                return Served::ProtocolError;
            }
        }
        if !fill(&mut stream, &mut buf).await {
            let _ = ready.send(Err(SinkError::Broker(
                "broker closed the connection before SUBACK".into(),
            )));
            return Served::Closed;
        }
    }
    run_session(&mut stream, &mut buf, &mut session, tracker, &limits).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_frame_by_content_length_and_honour_close() {
        let keep = b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_request_head(keep).expect("ok").expect("complete");
        assert_eq!(
            (head.head_len + head.body_len, head.close),
            (keep.len(), false)
        );
        assert_eq!(parse_request_head(&keep[..10]), Ok(None));
        let close = b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(
            parse_request_head(close)
                .expect("ok")
                .expect("complete")
                .close
        );
        let old = b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
        assert!(
            parse_request_head(old)
                .expect("ok")
                .expect("complete")
                .close
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request_head(chunked), Err(()));
        assert_eq!(parse_request_head(b"\x16\x03\x01garbage\r\n\r\n"), Err(()));
    }

    #[test]
    fn event_hubs_batches_are_recognised_by_media_type() {
        let batch = b"POST /h/messages HTTP/1.1\r\ncontent-type: Application/Vnd.Microsoft.ServiceBus.JSON; charset=utf-8\r\nContent-Length: 2\r\n\r\n[]";
        assert!(
            parse_request_head(batch)
                .expect("ok")
                .expect("complete")
                .batch
        );
        let single = b"POST /h/messages HTTP/1.1\r\ncontent-type: application/octet-stream\r\nContent-Length: 0\r\n\r\n";
        assert!(
            !parse_request_head(single)
                .expect("ok")
                .expect("complete")
                .batch
        );
    }

    #[test]
    fn a_batch_feeds_each_body_to_the_tracker() {
        let tracker = DeliveryTracker::new(None).expect("tracker");
        let payload = |device: u64, seq: u64| {
            let mut p = crate::payload::template(64);
            crate::payload::stamp(
                &mut p,
                crate::payload::Stamp {
                    device,
                    seq,
                    sent_unix_ns: crate::payload::now_unix_ns(),
                },
            );
            String::from_utf8(p).expect("ascii")
        };
        let body = serde_json::json!([
            {"Body": payload(1, 0), "BrokerProperties": {"PartitionKey": "k"}, "UserProperties": {"imsi": "1"}},
            {"Body": payload(2, 0), "UserProperties": {}},
            {"Body": payload(1, 1)},
        ])
        .to_string();
        assert_eq!(record_batch(body.as_bytes(), &tracker), Some(3));
        let summary = tracker.summary();
        assert_eq!((summary.unique, summary.malformed), (3, 0), "{summary:?}");
        assert_eq!(tracker.snapshot().highest_seq(1), Some(1));
        // Not an array of events: nothing is recorded.
        for bad in [&b"{}"[..], b"[{\"body\": \"x\"}]", b"[1]", b"not json"] {
            assert_eq!(record_batch(bad, &tracker), None, "{bad:?}");
        }
        assert_eq!(tracker.summary().unique, 3);
    }
}
