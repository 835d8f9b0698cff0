//! One simulated device: its connection life and its open-loop message loop, for HTTP/1.1 and
//! MQTT (3.1.1 and 5.0).
//!
//! Each device is one tokio task. It connects from its own source address (see
//! [`crate::source`]), then sends each message at the intended time its [`Schedule`] gives —
//! or at once when it is behind — and records the answer's latency from that intended time.
//! One message is in flight per device (a SIM-connected sensor does not pipeline), so a slow
//! gateway makes the device fall behind, and the lateness is charged to the gateway.
//!
//! - HTTP keep-alive: `POST` on one connection, reconnecting after errors.
//! - HTTP one-shot (`keepalive = false`): every message opens a connection, sends with
//!   `Connection: close`, reads the answer and closes; latency includes the connect.
//! - MQTT: CONNECT, CONNACK, then PUBLISH; QoS 1 waits for the PUBACK (latency to the PUBACK),
//!   QoS 0 has no answer, so its "latency" is until the PUBLISH is written to the socket. PINGREQ
//!   keeps an idle session alive (every ¾ of Keep Alive).
//! - Idle (rate 0): connect, then hold the connection; a close by the gateway counts as
//!   [`ErrorKind::Closed`] and the device reconnects.
//!
//! After a failure the device waits a jittered exponential backoff (10 ms doubling to 1 s) before
//! reconnecting; its schedule keeps running meanwhile, so messages due during the outage are sent
//! late and charged for it. The task never ends by itself: the fleet drops it at the deadline.
//!
//! Every message carries a stamped payload ([`crate::payload`]): the device number, its own
//! sequence number (from 0, one per scheduled message, kept across reconnects; a message whose
//! send failed still uses its number) and the intended send time, so a sink can count loss,
//! duplicates and reordering and measure end-to-end latency.
//!
//! What it does NOT do: TLS, HTTP pipelining, chunked answers, MQTT QoS 2, subscriptions,
//! retained messages or session resumption checks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use simgate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::payload;
use crate::scenario::{MqttSettings, MqttVersion, Scenario};
use crate::schedule::{Arrival, Schedule, SplitMix64};
use crate::source::device_source;
use crate::stats::{ErrorKind, Recorder};

/// First reconnect delay.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Everything the devices of one run share, derived once from the scenario.
#[derive(Debug)]
pub struct FleetPlan {
    target: SocketAddr,
    source_addresses: bool,
    first_device: u64,
    devices: u64,
    per_device_rate: Option<f64>,
    arrival: Arrival,
    seed: u64,
    timeout: Duration,
    kind: DeviceKind,
    /// The same moment on the monotonic and the wall clock: maps intended send times to the
    /// wall-clock stamps in payloads.
    anchor: (Instant, u64),
}

#[derive(Debug)]
enum DeviceKind {
    Http {
        /// Head and body template; the stamp goes at `body_offset`.
        request: Bytes,
        body_offset: usize,
        keepalive: bool,
    },
    Mqtt {
        settings: MqttSettings,
        version: ProtocolVersion,
        /// Payload template (padding in place).
        payload: Bytes,
    },
}

impl FleetPlan {
    /// The plan for `scenario` against `target` (already validated by [`Scenario::parse`]).
    pub fn new(scenario: &Scenario, target: SocketAddr) -> Self {
        let traffic = &scenario.traffic;
        let devices = scenario.fleet.devices;
        let per_device_rate =
            (traffic.rate_per_s > 0.0).then(|| traffic.rate_per_s / devices as f64);
        let kind = match scenario.fleet.protocol {
            crate::scenario::Protocol::Http => {
                let (request, body_offset) = format_request(
                    &scenario.http.path,
                    target,
                    traffic.body_bytes,
                    scenario.http.keepalive,
                );
                DeviceKind::Http {
                    request,
                    body_offset,
                    keepalive: scenario.http.keepalive,
                }
            }
            crate::scenario::Protocol::Mqtt => {
                let settings = scenario.mqtt_settings();
                let version = match settings.version {
                    MqttVersion::V311 => ProtocolVersion::V311,
                    MqttVersion::V5 => ProtocolVersion::V5,
                };
                DeviceKind::Mqtt {
                    settings,
                    version,
                    payload: Bytes::from(payload::template(traffic.body_bytes)),
                }
            }
        };
        Self {
            target,
            source_addresses: scenario.fleet.source_addresses,
            first_device: scenario.fleet.first_device,
            devices,
            per_device_rate,
            arrival: traffic.arrival,
            seed: traffic.seed,
            timeout: Duration::from_millis(traffic.timeout_ms),
            kind,
            anchor: (Instant::now(), payload::now_unix_ns()),
        }
    }

    /// `intended` on the wall clock, nanoseconds since the Unix epoch.
    fn wall_ns(&self, intended: Instant) -> u64 {
        let since = intended.saturating_duration_since(self.anchor.0);
        self.anchor
            .1
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The schedule of device `index` (0-based within the fleet), `None` when idle.
    fn schedule(&self, index: u64) -> Option<Schedule> {
        let rate = self.per_device_rate?;
        let phase = index as f64 / self.devices as f64;
        let seed = self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Some(Schedule::new(self.arrival, rate, phase, seed))
    }

    /// The global device number of fleet member `index`.
    fn device_number(&self, index: u64) -> u64 {
        self.first_device + index
    }
}

/// `POST {path} HTTP/1.1` with Host, Content-Type, Content-Length (and `Connection: close` when
/// not keeping the connection) and a payload template of `body_size` bytes (at least the stamp's
/// header); returns the request and the offset of its body.
fn format_request(
    path: &str,
    target: SocketAddr,
    body_size: usize,
    keepalive: bool,
) -> (Bytes, usize) {
    let connection = if keepalive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let body = payload::template(body_size);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/octet-stream\r\n\
         {connection}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(&body);
    (Bytes::from(request), head.len())
}

/// Reconnect delays: exponential, each drawn between half and the whole step.
struct Backoff {
    step: Duration,
    rng: SplitMix64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Self {
            step: BACKOFF_START,
            rng: SplitMix64::new(seed),
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_START;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.step.mul_f64(0.5 + self.rng.next_open_unit() / 2.0);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Runs fleet member `index` forever (the caller drops the task at the deadline). `origin` is
/// the device's start: its schedule's offsets count from there.
pub async fn run_device(
    plan: Arc<FleetPlan>,
    recorder: Arc<Recorder>,
    index: u64,
    origin: Instant,
) {
    let source = if plan.source_addresses {
        match device_source(plan.device_number(index)) {
            Some(addr) => Some(addr),
            None => {
                recorder.error(ErrorKind::Bind);
                return;
            }
        }
    } else {
        None
    };
    let device = Device {
        plan: &plan,
        recorder: &recorder,
        source,
        number: plan.device_number(index),
        schedule: plan.schedule(index),
        origin,
        backoff: Backoff::new(plan.seed.wrapping_add(index) | 1),
        seq: 0,
    };
    match &plan.kind {
        DeviceKind::Http {
            request,
            body_offset,
            keepalive: true,
        } => device.http_keepalive(request.to_vec(), *body_offset).await,
        DeviceKind::Http {
            request,
            body_offset,
            keepalive: false,
        } => device.http_one_shot(request.to_vec(), *body_offset).await,
        DeviceKind::Mqtt {
            settings,
            version,
            payload,
        } => device.mqtt(settings, *version, payload).await,
    }
}

struct Device<'a> {
    plan: &'a FleetPlan,
    recorder: &'a Recorder,
    source: Option<Ipv4Addr>,
    number: u64,
    schedule: Option<Schedule>,
    origin: Instant,
    backoff: Backoff,
    /// Sequence number of the next message.
    seq: u64,
}

impl Device<'_> {
    /// Stamps the next message into `buf` (the payload, padding in place) and uses up its
    /// sequence number.
    fn stamp(&mut self, buf: &mut [u8], intended: Instant) {
        payload::stamp(
            buf,
            payload::Stamp {
                device: self.number,
                seq: self.seq,
                sent_unix_ns: self.plan.wall_ns(intended),
            },
        );
        self.seq += 1;
    }

    /// Opens a connection from the device's source address.
    async fn connect(&self) -> Result<TcpStream, ErrorKind> {
        let target = self.plan.target;
        let socket = match target.ip() {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|_| ErrorKind::Io)?;
        if let Some(source) = self.source {
            if target.is_ipv6() {
                return Err(ErrorKind::Bind);
            }
            // Reconnects from the same address must not trip over our own TIME_WAIT sockets.
            socket.set_reuseaddr(true).map_err(|_| ErrorKind::Bind)?;
            socket
                .bind(SocketAddr::new(IpAddr::V4(source), 0))
                .map_err(|_| ErrorKind::Bind)?;
        }
        let stream = match tokio::time::timeout(self.plan.timeout, socket.connect(target)).await {
            Err(_) => return Err(ErrorKind::ConnectTimeout),
            Ok(Err(_)) => return Err(ErrorKind::Connect),
            Ok(Ok(stream)) => stream,
        };
        // Small messages: do not let Nagle hold them back. Failure is harmless.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Records `kind` (against a sent message when `message` is set) and waits out the backoff.
    async fn fail(&mut self, kind: ErrorKind, message: bool) {
        if message {
            self.recorder.message_failed(kind);
        } else {
            self.recorder.error(kind);
        }
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    /// The next intended send time, or `None` for an idle device.
    fn next_intended(&mut self) -> Option<Instant> {
        let offset = self.schedule.as_mut()?.next_intended();
        Some(self.origin + offset)
    }

    fn latency_since(intended: Instant) -> u64 {
        u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn http_keepalive(mut self, mut request: Vec<u8>, body_offset: usize) {
        let mut buffer = BytesMut::with_capacity(4096);
        // A message whose send failed is not retried; its slot is simply used up.
        loop {
            let mut stream = match self.connect().await {
                Ok(stream) => stream,
                Err(kind) => {
                    self.fail(kind, false).await;
                    continue;
                }
            };
            let _open = self.recorder.connected();
            buffer.clear();
            let failure = loop {
                let Some(intended) = self.next_intended() else {
                    break hold_idle(&mut stream).await.map(|kind| (kind, false));
                };
                tokio::time::sleep_until(intended).await;
                self.stamp(&mut request[body_offset..], intended);
                self.recorder.sent();
                let exchange = http_exchange(&mut stream, &mut buffer, &request);
                match tokio::time::timeout(self.plan.timeout, exchange).await {
                    Ok(Ok(answer)) => {
                        let ok = (200..300).contains(&answer.status);
                        self.recorder.answered(
                            Self::latency_since(intended),
                            ok,
                            Some(answer.status),
                        );
                        self.backoff.reset();
                        if answer.close {
                            break None;
                        }
                    }
                    Ok(Err(kind)) => break Some((kind, true)),
                    Err(_) => break Some((ErrorKind::Timeout, true)),
                }
            };
            drop(_open);
            if let Some((kind, message)) = failure {
                self.fail(kind, message).await;
            }
        }
    }

    async fn http_one_shot(mut self, mut request: Vec<u8>, body_offset: usize) {
        let mut buffer = BytesMut::with_capacity(4096);
        loop {
            let Some(intended) = self.next_intended() else {
                // Idle one-shot devices: hold one connection, like keep-alive ones.
                return self.http_keepalive(request, body_offset).await;
            };
            tokio::time::sleep_until(intended).await;
            self.stamp(&mut request[body_offset..], intended);
            self.recorder.sent();
            buffer.clear();
            let attempt = async {
                let mut stream = self.connect().await?;
                let _open = self.recorder.connected();
                http_exchange(&mut stream, &mut buffer, &request).await
            };
            match tokio::time::timeout(self.plan.timeout, attempt).await {
                Ok(Ok(answer)) => {
                    let ok = (200..300).contains(&answer.status);
                    self.recorder
                        .answered(Self::latency_since(intended), ok, Some(answer.status));
                }
                Ok(Err(kind)) => self.recorder.message_failed(kind),
                Err(_) => self.recorder.message_failed(ErrorKind::Timeout),
            }
        }
    }

    async fn mqtt(mut self, settings: &MqttSettings, version: ProtocolVersion, payload: &Bytes) {
        let topic = Bytes::from(settings.topic.replace("{device}", &self.number.to_string()));
        let qos = if settings.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let ping_every = (settings.keep_alive_s > 0)
            .then(|| Duration::from_secs(u64::from(settings.keep_alive_s)).mul_f64(0.75));
        let mut buffer = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(256 + payload.len());
        let mut stamped = payload.to_vec();
        let mut packet_id: u16 = 0;
        // The intended time of the next message, drawn once and kept across pings and reconnects.
        let mut pending = self.next_intended();
        loop {
            let mut stream = match self.connect().await {
                Ok(stream) => stream,
                Err(kind) => {
                    self.fail(kind, false).await;
                    continue;
                }
            };
            buffer.clear();
            let handshake =
                mqtt_handshake(&mut stream, &mut buffer, settings, version, self.number);
            match tokio::time::timeout(self.plan.timeout, handshake).await {
                Ok(Ok(())) => {}
                Ok(Err(kind)) => {
                    self.fail(kind, false).await;
                    continue;
                }
                Err(_) => {
                    self.fail(ErrorKind::ConnectTimeout, false).await;
                    continue;
                }
            }
            let _open = self.recorder.connected();
            self.backoff.reset();
            let mut next_ping = ping_every.map(|every| Instant::now() + every);
            let failure = loop {
                let wake = match (pending, next_ping) {
                    (Some(send), Some(ping)) => Some(send.min(ping)),
                    (Some(send), None) => Some(send),
                    (None, ping) => ping,
                };
                // Wait for the next send or ping while watching for the gateway closing on us.
                let waited = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = waited => {}
                    read = read_some(&mut stream, &mut buffer) => match read {
                        // Stray PINGRESPs and the like: drop them, keep waiting.
                        Ok(()) => match drain_packets(&mut buffer, version) {
                            Ok(_) => continue,
                            Err(kind) => break (kind, false),
                        },
                        Err(kind) => break (kind, false),
                    },
                }
                let now = Instant::now();
                match pending {
                    Some(intended) if intended <= now => {
                        pending = self.next_intended();
                        self.stamp(&mut stamped, intended);
                        packet_id = packet_id.wrapping_add(1).max(1);
                        let publish = Packet::Publish(Publish {
                            dup: false,
                            qos,
                            retain: false,
                            topic: topic.clone(),
                            packet_id: (qos == QoS::AtLeastOnce)
                                .then_some(NonZeroU16::new(packet_id))
                                .flatten(),
                            properties: Properties::default(),
                            payload: Bytes::copy_from_slice(&stamped),
                        });
                        out.clear();
                        if mqtt::encode(&publish, version, &mut out).is_err() {
                            break (ErrorKind::Malformed, false);
                        }
                        self.recorder.sent();
                        let exchange =
                            mqtt_publish(&mut stream, &mut buffer, &out, version, qos, packet_id);
                        match tokio::time::timeout(self.plan.timeout, exchange).await {
                            Ok(Ok(ok)) => {
                                self.recorder
                                    .answered(Self::latency_since(intended), ok, None)
                            }
                            Ok(Err(kind)) => break (kind, true),
                            Err(_) => break (ErrorKind::Timeout, true),
                        }
                        next_ping = ping_every.map(|every| Instant::now() + every);
                    }
                    _ => {
                        // Keep-alive ping; the PINGRESP is drained by the read above.
                        out.clear();
                        if mqtt::encode(&Packet::PingReq, version, &mut out).is_err() {
                            break (ErrorKind::Malformed, false);
                        }
                        if stream.write_all(&out).await.is_err() {
                            break (ErrorKind::Io, false);
                        }
                        next_ping = ping_every.map(|every| Instant::now() + every);
                    }
                }
            };
            drop(_open);
            let (kind, message) = failure;
            self.fail(kind, message).await;
        }
    }
}

/// Holds an idle connection until the peer closes it or it fails; returns why it ended.
async fn hold_idle(stream: &mut TcpStream) -> Option<ErrorKind> {
    let mut scratch = [0u8; 256];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) => return Some(ErrorKind::Closed),
            // Unsolicited bytes on an idle connection: ignore them.
            Ok(_) => {}
            Err(_) => return Some(ErrorKind::Io),
        }
    }
}

async fn read_some(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<(), ErrorKind> {
    buffer.reserve(4096);
    match stream.read_buf(buffer).await {
        Ok(0) => Err(ErrorKind::Closed),
        Ok(_) => Ok(()),
        Err(_) => Err(ErrorKind::Io),
    }
}

/// What the device keeps of an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HttpAnswer {
    status: u16,
    /// The server will close the connection (`Connection: close` or HTTP/1.0).
    close: bool,
}

/// Writes `request` and reads one answer, leaving bytes after it in `buffer`.
async fn http_exchange(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: &[u8],
) -> Result<HttpAnswer, ErrorKind> {
    stream.write_all(request).await.map_err(|_| ErrorKind::Io)?;
    loop {
        if let Some((answer, total)) = parse_http_answer(buffer)? {
            while buffer.len() < total {
                read_some(stream, buffer).await?;
            }
            buffer.advance(total);
            return Ok(answer);
        }
        read_some(stream, buffer).await?;
    }
}

/// Parses the answer head at the start of `buf`: the answer and its total length (head and
/// body), or `None` when more bytes are needed. Same minimal parser as simgate's demo devices.
fn parse_http_answer(buf: &[u8]) -> Result<Option<(HttpAnswer, usize)>, ErrorKind> {
    match simgate::testkit::device_sim::parse_answer_head(buf) {
        Ok(None) => Ok(None),
        Ok(Some(h)) => Ok(Some((
            HttpAnswer {
                status: h.answer.status,
                close: h.answer.close,
            },
            h.head_len + h.body_len,
        ))),
        Err(_) => Err(ErrorKind::Malformed),
    }
}

/// Sends CONNECT and waits for a successful CONNACK.
async fn mqtt_handshake(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    settings: &MqttSettings,
    version: ProtocolVersion,
    device: u64,
) -> Result<(), ErrorKind> {
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: version,
        clean_start: settings.clean_start,
        keep_alive: settings.keep_alive_s,
        properties: Properties::default(),
        client_id: Bytes::from(format!("{}{device}", settings.client_id_prefix)),
        will: None,
        username: None,
        password: None,
    }));
    let mut out = BytesMut::new();
    mqtt::encode(&connect, version, &mut out).map_err(|_| ErrorKind::Malformed)?;
    stream.write_all(&out).await.map_err(|_| ErrorKind::Io)?;
    loop {
        match next_packet(buffer, version)? {
            Some(Packet::ConnAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => return Ok(()),
            Some(Packet::ConnAck(_)) => return Err(ErrorKind::Rejected),
            Some(_) => return Err(ErrorKind::Malformed),
            None => read_some(stream, buffer).await?,
        }
    }
}

/// Writes an encoded PUBLISH; for QoS 1 waits for its PUBACK. Returns whether it succeeded.
async fn mqtt_publish(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    encoded: &[u8],
    version: ProtocolVersion,
    qos: QoS,
    packet_id: u16,
) -> Result<bool, ErrorKind> {
    stream.write_all(encoded).await.map_err(|_| ErrorKind::Io)?;
    if qos == QoS::AtMostOnce {
        return Ok(true);
    }
    loop {
        match next_packet(buffer, version)? {
            Some(Packet::PubAck(ack)) if ack.packet_id.get() == packet_id => {
                // 0x10 "No matching subscribers" is still a successful delivery to the broker.
                return Ok(ack.reason_code.0 < 0x80);
            }
            // A late PUBACK of an earlier (timed-out) message, or a PINGRESP: skip.
            Some(Packet::PubAck(_) | Packet::PingResp) => {}
            Some(Packet::Disconnect(_)) => return Err(ErrorKind::Closed),
            Some(_) => return Err(ErrorKind::Malformed),
            None => read_some(stream, buffer).await?,
        }
    }
}

/// Decodes one packet from the front of `buffer`, `None` when incomplete.
fn next_packet(
    buffer: &mut BytesMut,
    version: ProtocolVersion,
) -> Result<Option<Packet>, ErrorKind> {
    match mqtt::decode_packet(
        buffer,
        version,
        mqtt::Sender::Server,
        &DecodeLimits::default(),
    ) {
        Ok(Decoded::Complete(packet)) => Ok(Some(packet)),
        Ok(Decoded::Incomplete { .. }) => Ok(None),
        Err(_) => Err(ErrorKind::Malformed),
    }
}

/// Discards every complete packet in `buffer` that an idle device may receive; a DISCONNECT
/// means the gateway is closing the session.
fn drain_packets(buffer: &mut BytesMut, version: ProtocolVersion) -> Result<usize, ErrorKind> {
    let mut drained = 0;
    while let Some(packet) = next_packet(buffer, version)? {
        if matches!(packet, Packet::Disconnect(_)) {
            return Err(ErrorKind::Closed);
        }
        drained += 1;
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_host_length_stamped_body_and_close_when_one_shot() {
        let target = SocketAddr::from(([127, 0, 0, 1], 8080));
        let (keepalive, offset) = format_request("/t", target, 60, true);
        let head = "POST /t HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: 60\r\n\r\n";
        assert_eq!(offset, head.len());
        assert_eq!(&keepalive[..offset], head.as_bytes());
        assert_eq!(keepalive.len(), offset + 60);
        assert!(payload::parse(&keepalive[offset..]).is_some());
        assert_eq!(&keepalive[offset + payload::HEADER_LEN..], b"0123");
        // A body smaller than the stamp grows to the stamp, and says so.
        let (one_shot, offset) = format_request("/t", target, 0, false);
        assert!(std::str::from_utf8(&one_shot[..offset])
            .expect("ascii")
            .ends_with("\r\nConnection: close\r\nContent-Length: 56\r\n\r\n"));
    }

    #[test]
    fn intended_times_map_to_the_wall_clock_anchor() {
        let s = crate::scenario::Scenario::parse("name = \"x\"\n[fleet]\ndevices = 1\n")
            .expect("scenario");
        let plan = FleetPlan::new(&s, SocketAddr::from(([127, 0, 0, 1], 1)));
        let later = plan.anchor.0 + Duration::from_millis(1500);
        assert_eq!(plan.wall_ns(later), plan.anchor.1 + 1_500_000_000);
        assert_eq!(plan.wall_ns(plan.anchor.0), plan.anchor.1);
    }

    #[test]
    fn http_answers_parse_incrementally_and_bad_framing_is_malformed() {
        let full = b"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..full.len() - 3 {
            assert_eq!(parse_http_answer(&full[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            parse_http_answer(full),
            Ok(Some((
                HttpAnswer {
                    status: 202,
                    close: false
                },
                full.len()
            )))
        );
        let close =
            parse_http_answer(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(close, Ok(Some((answer, _))) if answer.close && answer.status == 503));
        for bad in [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(parse_http_answer(bad), Err(ErrorKind::Malformed));
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(3);
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
