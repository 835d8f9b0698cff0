//! MQTT device sessions, the part common to both bridging modes: read the device's CONNECT
//! (bounded by the listener's `connect_timeout` and `max_packet_size`), find the session's
//! destination, and hand the session to [`super::mqtt_session`] (1:1) or
//! [`super::mqtt_aggregate`] (N:1) according to the destination's mode.
//!
//! A CONNECT that is malformed, oversized or late closes the connection — with a CONNACK
//! carrying the reason code where the device's version is known (3.1.1 return codes are the
//! subset 0x01..0x05). A device without a route gets "not authorized" (v5 0x87, v3.1.1 0x05).
//!
//! Both modes give a device that sent an empty client id one of simgate's ([`assign_client_id`]),
//! so its templates and topics never carry an empty identity.
//!
//! Neither mode does enhanced authentication (5.0 §4.12): a CONNECT carrying an Authentication
//! Method is refused here with CONNACK 0x8C "Bad authentication method", before any upstream
//! work ([`refuse_enhanced_auth`]). A session that got past CONNECT therefore never has an
//! Authentication Method, so an AUTH from its device is a Protocol Error ([MQTT-4.12.0-7]) in
//! both modes: DISCONNECT 0x82, nothing forwarded.
//!
//! Both modes end a session the same way when the shard drains (SIGTERM): stop reading the
//! device, wait until the broker has acknowledged the device's QoS 1/2 PUBLISHes already
//! forwarded (relaying those acknowledgements) or until [`drain_ack_deadline`], then send a v5
//! device DISCONNECT 0x8B "Server shutting down" (a 3.1.1 device has no server DISCONNECT: its
//! connection is just closed). Nothing unacknowledged is acknowledged.
//!
//! What this module does not do: anything after CONNECT; the mode modules own the session.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::identity::DeviceIdentity;
use super::ShardState;
use crate::policy::template::Placeholder;
use crate::policy::{DestinationId, ListenerId, MqttMode, Plan, Template};
use crate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, MqttError, Packet, Properties, ProtocolVersion,
    ReasonCode,
};
use crate::reactor::{self, TcpStream};

/// Time left at the end of the shard's drain window for the goodbyes (DISCONNECT to the device,
/// DISCONNECT or close upstream) after a draining session stops waiting for acknowledgements.
const DRAIN_GOODBYE_MARGIN: Duration = Duration::from_secs(1);

/// Until when a draining MQTT session waits for the broker's acknowledgements of what it already
/// forwarded: shortly before the shard's drain deadline (at once if the drain has none).
pub fn drain_ack_deadline(state: &ShardState) -> Instant {
    let now = reactor::now();
    state
        .drain
        .deadline()
        .and_then(|d| d.checked_sub(DRAIN_GOODBYE_MARGIN))
        .map_or(now, |d| d.max(now))
}

/// Until when a goodbye (a DISCONNECT, a TLS close) may take: `limit` from now, and never past
/// the shard's drain deadline while draining, so goodbyes end before the shard drops its tasks.
pub fn goodbye_deadline(state: &ShardState, limit: std::time::Duration) -> Instant {
    let by_limit = reactor::now() + limit;
    match state.drain.deadline() {
        Some(drain) if state.draining() => by_limit.min(drain),
        _ => by_limit,
    }
}

/// A device session whose CONNECT has been read and routed, handed to a bridging mode.
pub struct DeviceSession {
    /// The shard.
    pub state: Rc<ShardState>,
    /// The plan the session was routed with (a reload applies to new sessions).
    pub plan: Arc<Plan>,
    /// Listener the device connected to.
    pub listener: ListenerId,
    /// The session's `mqtts` destination.
    pub destination: DestinationId,
    /// The device socket.
    pub stream: TcpStream,
    /// The device's address.
    pub peer: SocketAddr,
    /// The device's CONNECT, decoded (fields are slices of the receive buffer).
    pub connect: Connect,
    /// Bytes the device sent after its CONNECT (pipelined packets), not yet decoded.
    pub buf: BytesMut,
    /// The device's SIM and group, resolved under `plan`.
    pub identity: DeviceIdentity,
}

impl DeviceSession {
    /// The device's protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.connect.protocol_version
    }
}

/// Serve one device MQTT connection.
///
/// Memory: this future is what an idle device costs, so it holds only a pointer. The CONNECT
/// phase runs in its own allocation, freed once the session is routed, and the session then
/// runs in one allocation sized for its mode.
/// Not an `async fn`: that would keep its arguments (~80 bytes) beside the pointer for the
/// device's whole life; here they go straight into the CONNECT phase's box.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    state: Rc<ShardState>,
    listener: ListenerId,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    let connect = Box::pin(connect_phase(state, listener, stream, peer));
    async move {
        if let Some(session) = connect.await {
            session.await;
        }
    }
}

/// A routed device session, boxed at the size of its bridging mode.
pub(crate) type SessionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Read and route the CONNECT; answer it here if it is refused. Returns the session to run.
async fn connect_phase(
    state: Rc<ShardState>,
    listener: ListenerId,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<SessionFuture> {
    let (plan, generation) = state.current();
    // Only MQTT listeners dispatch to this flow, and reloads keep listeners as they are.
    let limits = plan.listener(listener).mqtt()?.clone();
    let mut buf = BytesMut::new();
    let deadline = reactor::now() + limits.connect_timeout;
    let decode_limits = DecodeLimits {
        max_packet_size: limits.max_packet_size,
    };
    let connect = loop {
        match mqtt::decode_connect(&mut buf, &decode_limits) {
            Ok(Decoded::Complete(c)) => break c,
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => {
                refuse_connect(&mut stream, &buf, e).await;
                return None;
            }
        }
        match reactor::timeout_at(deadline, stream.recv_append(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                state.metrics.borrow_mut().device_bytes_in += n as u64;
            }
            // EOF, socket error, or no CONNECT in time: nothing to answer.
            _ => return None,
        }
    };
    if let Some(code) = refuse_enhanced_auth(&connect) {
        send_connack(&mut stream, connect.protocol_version, code).await;
        return None;
    }
    // One identity lookup per session: an unknown source on a listener with
    // `unknown = "reject"` is not authorized (3.1.1: return code 5).
    let Some(identity) =
        DeviceIdentity::resolve(&state.bindings, &plan, generation, listener, peer.ip())
    else {
        state
            .metrics
            .borrow_mut()
            .unknown_source_rejected(usize::from(listener.0));
        send_connack(
            &mut stream,
            connect.protocol_version,
            ReasonCode::NOT_AUTHORIZED,
        )
        .await;
        return None;
    };
    let Some(destination) = plan.route_mqtt(identity.group(), listener) else {
        send_connack(
            &mut stream,
            connect.protocol_version,
            ReasonCode::NOT_AUTHORIZED,
        )
        .await;
        return None;
    };
    let mode = plan.destination(destination).mqtt().map(|m| m.mode);
    let session = DeviceSession {
        state,
        plan,
        listener,
        destination,
        stream,
        peer,
        connect,
        buf,
        identity,
    };
    match mode {
        Some(MqttMode::Session) => Some(Box::pin(super::mqtt_session::serve(session))),
        Some(MqttMode::Aggregate) => Some(super::mqtt_aggregate::start(session)),
        None => {
            // Config validation routes MQTT listeners only to mqtts destinations.
            let mut s = session;
            send_connack(
                &mut s.stream,
                s.connect.protocol_version,
                ReasonCode::SERVER_UNAVAILABLE,
            )
            .await;
            None
        }
    }
}

/// The CONNACK code refusing a CONNECT that asks for enhanced authentication (a 5.0 CONNECT with
/// an Authentication Method), which simgate does not do in either mode: 0x8C "Bad
/// authentication method" ([MQTT-4.12.0-1]: a server that does not support the method may answer
/// 0x8C and must close the connection). `None` for any other CONNECT (3.1.1 has no properties).
pub fn refuse_enhanced_auth(connect: &Connect) -> Option<ReasonCode> {
    connect
        .properties
        .authentication_method
        .is_some()
        .then_some(ReasonCode::BAD_AUTHENTICATION_METHOD)
}

/// Answer a bad CONNECT with a CONNACK carrying its reason code when the version is readable
/// from the bytes, then let the caller close.
async fn refuse_connect(stream: &mut TcpStream, buf: &[u8], e: MqttError) {
    let Some(version) = sniff_version(buf) else {
        return;
    };
    let code = match version {
        ProtocolVersion::V5 => e.reason_code(),
        ProtocolVersion::V311 => match e.connack_return_code_v311() {
            Some(code) => code,
            None => return,
        },
    };
    send_connack(stream, version, code).await;
}

/// The protocol level byte of a CONNECT at the front of `buf`, if it can be read.
fn sniff_version(buf: &[u8]) -> Option<ProtocolVersion> {
    let (_, _, header_len) = mqtt::peek_remaining_length(buf).ok()??;
    // Variable header: protocol name (2-byte length + "MQTT"), then the level byte.
    let level = *buf.get(header_len + 6)?;
    match level {
        4 => Some(ProtocolVersion::V311),
        5 => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Send a CONNACK with `code` (for 3.1.1, `code` must be a 3.1.1 return code or a v5 code that
/// maps onto one) and ignore send errors: the connection closes next anyway.
pub async fn send_connack(stream: &mut TcpStream, version: ProtocolVersion, code: ReasonCode) {
    let code = match version {
        ProtocolVersion::V5 => code,
        ProtocolVersion::V311 => v311_return_code(code),
    };
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: Properties::default(),
    });
    let mut out = BytesMut::with_capacity(16);
    if mqtt::encode(&packet, version, &mut out).is_ok() {
        let _ = stream.send_all(Bytes::from(out)).await;
    }
}

/// Map a v5 CONNACK reason code onto the closest 3.1.1 return code (§3.2.2.3).
pub fn v311_return_code(code: ReasonCode) -> ReasonCode {
    match code.0 {
        0x00..=0x05 => code,
        0x84 => ReasonCode(0x01), // unacceptable protocol version
        0x85 => ReasonCode(0x02), // identifier rejected
        0x88 | 0x89 | 0x8B => ReasonCode(0x03), // server unavailable
        0x86 => ReasonCode(0x04), // bad user name or password
        _ => ReasonCode(0x05),    // not authorized
    }
}

/// The client id simgate assigns to a device whose CONNECT carried an empty one, or why the
/// CONNECT is refused.
///
/// - A non-empty id is the device's own: `Ok(None)`, unless it could break out of its topic
///   space: `+` or `#` anywhere (the rewritten topics and filters would become wildcards
///   matching other devices' topics), or `/` when the destination's `topic` template uses
///   `{client_id}` (an id `a/b` would publish under device `a`'s topics), or a leading `$`
///   there (`$SYS`, `$share`). Those are refused with 0x85 "Client Identifier not valid".
///   This keeps a device inside the topic space of the id it claims; it does not stop a device
///   from claiming another's id — binding ids to the SIM's identity is the identity issue's job.
/// - Empty, from a 3.1.1 device asking for a persistent session (Clean Session = 0): refused
///   with 0x85 "Client Identifier not valid" (3.1.1 return code 0x02) [MQTT-3.1.3-8].
/// - Empty otherwise: `Ok(Some(id))` with a fresh [`generated_client_id`]. It is what the
///   destination's templates are filled with, and a v5 device is told it in the CONNACK's
///   Assigned Client Identifier [MQTT-3.2.2-16].
pub fn assign_client_id(
    connect: &Connect,
    topic: &Template,
    shard: usize,
    peer: SocketAddr,
) -> Result<Option<Bytes>, ReasonCode> {
    if !connect.client_id.is_empty() {
        let id_in_topics = topic.uses(Placeholder::ClientId);
        let escapes = |&b: &u8| b == b'+' || b == b'#' || (id_in_topics && b == b'/');
        // A leading `$` would make a rewritten topic or filter start with `$` (`$SYS/#`,
        // `$share/...`): broker-internal topics or shared subscriptions, not device topics.
        let system = id_in_topics && connect.client_id.first() == Some(&b'$');
        if system || connect.client_id.iter().any(escapes) {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        return Ok(None);
    }
    if connect.protocol_version == ProtocolVersion::V311 && !connect.clean_start {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    Ok(Some(Bytes::from(generated_client_id(shard, peer))))
}

thread_local! {
    /// This thread's stamp (µs since the Unix epoch when it assigned its first id) and the
    /// number of ids it has assigned. Shards are threads, so this needs no atomics.
    static ASSIGNED: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// A client id for a device that sent none: `simgate-{shard}-{stamp}-{n}`, made only of ASCII
/// letters, digits and `-` (safe inside topics and broker client ids), and short: 23 bytes or
/// fewer for shards below 10 and the first 1,296 ids of a shard's run, the length every MQTT
/// 3.1.1 server must accept [MQTT-3.1.3-5].
///
/// Unique enough not to collide with another assigned id, which matters in session mode where
/// the broker may keep a session under it: `{shard}` separates the shards of one process,
/// `{n}` (a per-shard count, base 36) the devices of one shard, even one reconnecting from the
/// same address and port, and `{stamp}` (when the shard assigned its first id, µs since the
/// epoch, base 36) separates one run of simgate from the next. The device's address is not in
/// the id (it would double its length); the assignment is logged at debug level with it.
pub fn generated_client_id(shard: usize, peer: SocketAddr) -> String {
    let (stamp, n) = ASSIGNED.with(|cell| {
        let (stamp, n) = cell.get().unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            (now, 0)
        });
        cell.set(Some((stamp, n.wrapping_add(1))));
        (stamp, n)
    });
    let id = format!("simgate-{shard}-{}-{}", base36(stamp), base36(n));
    tracing::debug!(%peer, client_id = %id, "client id assigned to a device that sent none");
    id
}

/// `v` in base 36 (digits and lower-case letters).
fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(version: ProtocolVersion, client_id: &'static [u8], clean_start: bool) -> Connect {
        Connect {
            protocol_version: version,
            clean_start,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: Bytes::from_static(client_id),
            will: None,
            username: None,
            password: None,
        }
    }

    fn topic(text: &str) -> Template {
        Template::parse(text, &[Placeholder::ClientId, Placeholder::Topic]).expect("template")
    }

    #[test]
    fn a_connect_asking_for_enhanced_authentication_is_refused_with_0x8c() {
        let plain = connect(ProtocolVersion::V5, b"dev1", true);
        assert_eq!(refuse_enhanced_auth(&plain), None);
        let mut enhanced = plain.clone();
        enhanced.properties.authentication_method = Some(Bytes::from_static(b"SCRAM-SHA-1"));
        enhanced.properties.authentication_data = Some(Bytes::from_static(b"\x01"));
        assert_eq!(
            refuse_enhanced_auth(&enhanced),
            Some(ReasonCode::BAD_AUTHENTICATION_METHOD)
        );
        // A 3.1.1 device has no properties: never refused for this.
        assert_eq!(
            refuse_enhanced_auth(&connect(ProtocolVersion::V311, b"dev1", true)),
            None
        );
    }

    #[test]
    fn a_devices_own_client_id_is_kept() {
        let peer: SocketAddr = "10.0.0.17:40000".parse().expect("addr");
        let c = connect(ProtocolVersion::V311, b"dev1", false);
        assert_eq!(
            assign_client_id(&c, &topic("devices/{client_id}/{topic}"), 0, peer),
            Ok(None)
        );
    }

    #[test]
    fn a_client_id_that_would_escape_its_topic_space_is_refused() {
        let peer: SocketAddr = "10.0.0.17:40000".parse().expect("addr");
        let per_device = topic("devices/{client_id}/{topic}");
        let shared = topic("plant/{topic}");
        for id in [&b"+"[..], b"#", b"dev+1", b"dev/#"] {
            let c = Connect {
                client_id: Bytes::copy_from_slice(id),
                ..connect(ProtocolVersion::V5, b"", true)
            };
            for t in [&per_device, &shared] {
                assert_eq!(
                    assign_client_id(&c, t, 0, peer),
                    Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
                    "{id:?} with {}",
                    t.as_str()
                );
            }
        }
        let dollar = connect(ProtocolVersion::V5, b"$SYS", true);
        assert_eq!(
            assign_client_id(&dollar, &per_device, 0, peer),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        );
        // `/` only matters where the id is part of the topic.
        let slashed = connect(ProtocolVersion::V5, b"line1/dev7", true);
        assert_eq!(
            assign_client_id(&slashed, &per_device, 0, peer),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        );
        assert_eq!(assign_client_id(&slashed, &shared, 0, peer), Ok(None));
    }

    #[test]
    fn an_empty_client_id_gets_a_unique_topic_safe_one_unless_311_wants_a_session() {
        let peer: SocketAddr = "[::1]:40000".parse().expect("addr");
        let refused = connect(ProtocolVersion::V311, b"", false);
        assert_eq!(
            assign_client_id(&refused, &topic("{topic}"), 0, peer),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        );
        assert_eq!(
            v311_return_code(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).0,
            0x02
        );
        let mut ids = Vec::new();
        for (version, clean) in [
            (ProtocolVersion::V311, true),
            (ProtocolVersion::V5, true),
            // v5 allows a persistent session under an assigned id.
            (ProtocolVersion::V5, false),
        ] {
            let id = assign_client_id(&connect(version, b"", clean), &topic("{topic}"), 3, peer)
                .expect("accepted")
                .expect("assigned");
            assert!(id.starts_with(b"simgate-3-"), "{id:?}");
            assert!(
                id.len() <= 23,
                "fits MQTT 3.1.1's guaranteed length: {id:?}"
            );
            assert!(
                id.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-'),
                "{id:?}"
            );
            ids.push(id);
        }
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36 * 36), "100");
        // Same shard, same address and port: still distinct.
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }
}
