//! The IO driver of session mode: [`serve`] takes a device session whose CONNECT was read,
//! opens its upstream MQTTS connection (pool checkout, CONNECT, CONNACK within the
//! destination's `connect_timeout`, one retry on a dead pooled connection), relays the CONNACK,
//! then pumps both sockets through a [`Bridge`] until either side ends the session, and says
//! goodbye to each side as the [`SessionEnd`] decides. For `azure-iot-hub` it also replaces the
//! upstream connection when a newer SAS token is due (`Pump::renew_if_due`, driven by the pure
//! `super::renewal`). It keeps the open-sessions gauge and the per-shard counters.
//!
//! What this module does not do: translate packets or map CONNECT/CONNACK fields (that is
//! [`Bridge`] and `super::connect`, both pure), or read the device's CONNECT (`flows::mqtt_bridge`).

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::bridge::{encode_device_disconnect, Action, Bridge, SessionEnd};
use super::connect::{
    aws_connack, aws_connect, aws_session, build_upstream_connect, device_connack, session_vars,
    upstream_version, BuildError,
};
use super::renewal::{kept_until_answered, Carry, Schedule};

mod renew;
use self::renew::{jitter_of, on_reactor_clock, renewal_wake, Renew};
use crate::adapters::azure_iot_hub_mqtt as azure_mqtt;
use crate::flows::ack_timing::AckTimes;
use crate::flows::device_log::DeviceFault;
use crate::flows::identity::AttachedProperties;
use crate::flows::identity::{group_key, DeviceIdentity};
use crate::flows::mqtt_common::{
    assign_client_id, drain_ack_deadline, goodbye_deadline, send_connack, DeviceSession,
};
use crate::flows::sessions::RegistryKey;
use crate::flows::ShardState;
use crate::policy::envelope::Envelope;
use crate::policy::{DestinationPlan, ListenerId, TemplateVars, TopicMap};
use crate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, Disconnect, MqttError, Packet, Properties,
    ProtocolVersion, QoS, ReasonCode, Sender, Subscribe, Subscription, SubscriptionOptions,
};
use crate::reactor::{self, TcpStream};
use crate::reactor::{select2, Either};
use crate::stats::{CloudRule, Direction, ErrorKind, Latency, Protocol, RejectReason};
use crate::tls::{TlsError, TlsIoError};
use crate::upstream::{UpstreamConn, UpstreamError};

/// How long a best-effort goodbye (a DISCONNECT or CONNACK before closing) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no upstream session could be opened (before any CONNACK was relayed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenError {
    /// No connection could be made.
    Connect(UpstreamError),
    /// The TLS session failed after the handshake (e.g. a TLS 1.3 client-certificate rejection,
    /// which arrives with the first read).
    Tls,
    /// The connection closed or failed before a CONNACK arrived.
    Closed,
    /// No CONNACK within `connect_timeout`.
    Timeout,
    /// The broker answered with something other than a CONNACK, or with bytes that do not decode.
    Protocol,
    /// The broker started an enhanced-authentication exchange (AUTH before CONNACK).
    AuthUnsupported,
}

impl OpenError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            OpenError::Connect(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout) => {
                ErrorKind::UpstreamConnect
            }
            OpenError::Connect(UpstreamError::Tls(_)) | OpenError::Tls => ErrorKind::UpstreamTls,
            OpenError::Connect(UpstreamError::BackingOff { .. }) => ErrorKind::UpstreamBackoff,
            OpenError::Connect(UpstreamError::LocalResources(_)) => ErrorKind::LocalResources,
            OpenError::Closed => ErrorKind::UpstreamClosed,
            OpenError::Timeout => ErrorKind::UpstreamTimeout,
            OpenError::Protocol | OpenError::AuthUnsupported => ErrorKind::UpstreamProtocol,
        }
    }

    fn connack_code(&self) -> ReasonCode {
        match self {
            OpenError::AuthUnsupported => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            _ => ReasonCode::SERVER_UNAVAILABLE,
        }
    }
}

/// Keeps the open-sessions gauge right however the session task ends (it may be dropped).
struct OpenSession(Rc<ShardState>);

impl OpenSession {
    fn start(state: &Rc<ShardState>) -> OpenSession {
        {
            let mut m = state.metrics.borrow_mut();
            m.mqtt_sessions_started += 1;
            m.mqtt_sessions_open += 1;
        }
        OpenSession(state.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let mut m = self.0.metrics.borrow_mut();
        m.mqtt_sessions_open = m.mqtt_sessions_open.saturating_sub(1);
    }
}

/// Bridge one device session to its own upstream MQTTS connection, until either side ends it.
pub async fn serve(session: DeviceSession) {
    let DeviceSession {
        state,
        plan,
        listener,
        destination,
        mut stream,
        peer,
        connect,
        buf,
        identity,
        session,
    } = session;
    let device_version = connect.protocol_version;
    let dest = plan.destination(destination);
    let Some(mqtt) = dest.mqtt() else {
        // Config validation gives every mqtts destination MQTT settings.
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    };
    let Some(limits) = plan.listener(listener).mqtt().cloned() else {
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    };
    let up_version = upstream_version(mqtt.version, device_version);
    let assigned = match assign_client_id(&connect, &mqtt.topic, state.id.0, peer) {
        Ok(assigned) => assigned,
        Err(code) => {
            send_connack(&mut stream, device_version, code).await;
            return;
        }
    };
    if let Some(id) = &assigned {
        // The device sent none: `/admin/sessions` shows the one simgate gave it.
        state
            .sessions
            .borrow_mut()
            .set_client_id(session, &String::from_utf8_lossy(id));
    }
    let vars = TemplateVars {
        sim: identity.sim(&plan),
        ..session_vars(&connect, assigned.as_ref(), peer.ip(), state.id.0)
    };
    let topics = TopicMap::new(&mqtt.topic, &vars);
    // `azure-iot-hub` over MQTT: the device's IoT Hub identity and the SAS token it connects
    // with (no valid token: refused, never an unauthenticated CONNECT).
    let azure = match dest.azure_iot_hub_mqtt() {
        None => None,
        Some(settings) => {
            let device_id = String::from_utf8_lossy(&mqtt.client_id.render(&vars)).into_owned();
            if !azure_mqtt::device_id_valid(&device_id) {
                state.metrics.borrow_mut().destination_error(
                    usize::from(destination.0),
                    &dest.name,
                    Protocol::Mqtt,
                    ErrorKind::AdapterRejected,
                );
                send_connack(
                    &mut stream,
                    device_version,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                )
                .await;
                return;
            }
            let token = state
                .token(destination)
                .filter(|t| t.valid_at(std::time::SystemTime::now()));
            let Some(token) = token else {
                state.metrics.borrow_mut().destination_error(
                    usize::from(destination.0),
                    &dest.name,
                    Protocol::Mqtt,
                    ErrorKind::CredentialUnavailable,
                );
                send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
                return;
            };
            let session = azure_mqtt::Session {
                device_id,
                fields: identity.envelope_fields(&plan),
                c2d_topic: settings.c2d_topic.clone(),
                twin_topic: settings.twin_topic.clone(),
                methods_topic: settings.methods_topic.clone(),
            };
            Some((
                session,
                Bytes::copy_from_slice(token.authorization.as_bytes()),
                token.expires_at,
            ))
        }
    };
    // `aws-iot-core` over MQTT: the device's AWS session (client id and thing name checked).
    let adapter_index = dest.adapter.kind().index();
    let aws = match dest.aws_iot_core_mqtt() {
        None => None,
        Some(settings) => match aws_session(settings, &vars, &topics) {
            Ok(session) => Some(session),
            Err(rule) => {
                {
                    let mut m = state.metrics.borrow_mut();
                    match rule {
                        Some(rule) => {
                            m.cloud_refusal(adapter_index, rule, 1);
                            m.destination_reject(
                                usize::from(destination.0),
                                &dest.name,
                                RejectReason::Cloud(rule),
                                1,
                            );
                        }
                        None => m.destination_error(
                            usize::from(destination.0),
                            &dest.name,
                            Protocol::Mqtt,
                            ErrorKind::AdapterRejected,
                        ),
                    }
                }
                send_connack(
                    &mut stream,
                    device_version,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                )
                .await;
                return;
            }
        },
    };
    let mut connect_bytes = BytesMut::new();
    // The SIM's identity as user properties on the upstream CONNECT and every uplink PUBLISH,
    // when the broker speaks 5.0.
    let identity_properties = match up_version {
        ProtocolVersion::V5 => identity.user_properties(&plan),
        ProtocolVersion::V311 => AttachedProperties::default(),
    };
    let built = build_upstream_connect(
        &connect,
        mqtt,
        &vars,
        up_version,
        &topics,
        limits.max_packet_size,
    )
    .and_then(|mut c| {
        if let Some(session) = &aws {
            aws_connect(&mut c, &connect, session, &topics)?;
        }
        Ok(c)
    })
    .map(|mut c| {
        identity_properties.apply(&mut c.properties);
        if let Some((session, password, _)) = &azure {
            c.password = Some(password.clone());
            // The will is a device-to-cloud message too: the events topic, never retained.
            if let Some(will) = c.will.as_mut() {
                will.retain = false;
                if let Ok(topic) = session.events_topic(&will.topic, &[]) {
                    will.topic = topic;
                }
            }
        }
        c
    });
    if let Err(BuildError::WillTopicInvalid) = built {
        state.metrics.borrow_mut().destination_error(
            usize::from(destination.0),
            &dest.name,
            Protocol::Mqtt,
            ErrorKind::DeviceBadRequest,
        );
        send_connack(&mut stream, device_version, ReasonCode::TOPIC_NAME_INVALID).await;
        return;
    }
    // IoT Hub: the CONNECT is sent again, with a newer token, when the session renews.
    let mut renewal_connect: Option<Connect> = None;
    let encoded = built.map(|c| {
        if azure.is_some() {
            renewal_connect = Some(c.clone());
        }
        mqtt::encode(
            &Packet::Connect(Box::new(c)),
            up_version,
            &mut connect_bytes,
        )
    });
    if !matches!(encoded, Ok(Ok(()))) {
        state.metrics.borrow_mut().destination_error(
            usize::from(destination.0),
            &dest.name,
            Protocol::Mqtt,
            ErrorKind::UpstreamProtocol,
        );
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    }
    let decode_limits = DecodeLimits {
        max_packet_size: limits.max_packet_size,
    };
    // The pools' generation of the session's plan. `mqtt_bridge` routes and calls `serve`
    // without an await in between, so a differing plan means a reload raced in: then the
    // connection is made for the session's plan and never pooled.
    let (current_plan, current_generation) = state.current();
    let generation = if Arc::ptr_eq(&current_plan, &plan) {
        current_generation
    } else {
        u64::MAX
    };
    drop(current_plan);
    let opened = open_upstream(
        &state,
        generation,
        dest,
        dest.pool.connect_timeout,
        &connect_bytes,
        up_version,
        &decode_limits,
    )
    .await;
    let (mut upstream, upstream_connack) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            state.metrics.borrow_mut().destination_error(
                usize::from(destination.0),
                &dest.name,
                Protocol::Mqtt,
                e.error_kind(),
            );
            send_connack(&mut stream, device_version, e.connack_code()).await;
            return;
        }
    };
    let server_keep_alive = upstream_connack.properties.server_keep_alive;
    let upstream_accepted = match up_version {
        ProtocolVersion::V5 => upstream_connack.reason_code == ReasonCode::SUCCESS,
        ProtocolVersion::V311 => upstream_connack.reason_code.0 == 0,
    };
    // IoT Hub: subscribe to the device's cloud-to-device messages before the device hears its
    // CONNACK, so no packet id of simgate's is ever in flight beside the device's.
    let mut stashed = Vec::new();
    if let (Some((session, _, _)), true) = (&azure, upstream_accepted) {
        let deadline = reactor::now() + dest.pool.connect_timeout;
        let c2d = vec![c2d_subscription(session.c2d_filter())];
        match subscribe_hub(&mut upstream, c2d, deadline, up_version, &decode_limits).await {
            Ok(early) => stashed = early,
            Err(e) => {
                state.metrics.borrow_mut().destination_error(
                    usize::from(destination.0),
                    &dest.name,
                    Protocol::Mqtt,
                    e.error_kind(),
                );
                send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
                let _ = reactor::timeout_at(
                    goodbye_deadline(&state, GOODBYE_TIMEOUT),
                    upstream.stream.close(),
                )
                .await;
                return;
            }
        }
    }
    let mut connack = device_connack(
        upstream_connack,
        up_version,
        device_version,
        &limits,
        assigned,
    );
    let accepted = connack.reason_code == ReasonCode::SUCCESS;
    if azure.is_some() && accepted && device_version == ProtocolVersion::V5 {
        // IoT Hub takes no retained messages: a v5 device is told. (QoS 2 is carried as 1.)
        connack.properties.retain_available = Some(false);
    }
    // AWS IoT Core clamps keep-alive to 30..=1200 s: a v5 device is told the value in force.
    let aws_keep_alive = aws.as_ref().map(|_| aws_connack(&mut connack, &connect));
    let mut out = BytesMut::new();
    if mqtt::encode(&Packet::ConnAck(connack), device_version, &mut out).is_err() {
        state.metrics.borrow_mut().destination_error(
            usize::from(destination.0),
            &dest.name,
            Protocol::Mqtt,
            ErrorKind::UpstreamProtocol,
        );
        send_connack(&mut stream, device_version, ReasonCode::SERVER_UNAVAILABLE).await;
        return;
    }
    if !accepted {
        state.metrics.borrow_mut().mqtt_connects_refused += 1;
        let _ = send_device(&state, session, &mut stream, out.freeze()).await;
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
        return;
    }
    let _open = OpenSession::start(&state);
    if send_device(&state, session, &mut stream, out.freeze())
        .await
        .is_err()
    {
        // The device left before its CONNACK: drop the link abruptly (will published).
        return;
    }
    let keep_alive = aws_keep_alive.unwrap_or(server_keep_alive.unwrap_or(connect.keep_alive));
    // AWS IoT Core drops a client silent for 1.5x the clamped keep-alive: when the device's own
    // interval is longer (or off), simgate pings upstream itself after that long without
    // writing anything there.
    let upstream_ping = aws.as_ref().and_then(|_| {
        let upstream = crate::adapters::aws_iot_core_mqtt::upstream_keep_alive(connect.keep_alive);
        (keep_alive == 0 || keep_alive > upstream).then(|| Duration::from_secs(u64::from(upstream)))
    });
    let group_key = plan
        .groups
        .get(usize::from(identity.group().0))
        .map_or(0, |g| group_key(&g.name));
    let envelope = (dest.envelope == Envelope::Json).then(|| identity.envelope_fields(&plan));
    let renew = match (&azure, renewal_connect) {
        (Some((session, _, expires_at)), Some(connect)) => Some(Renew {
            destination: Some(destination),
            plan_seen: state.upstreams.generation(),
            dest,
            generation,
            connect,
            c2d_filter: session.c2d_filter(),
            schedule: Schedule::new(
                *expires_at,
                on_reactor_clock(*expires_at),
                jitter_of(&session.device_id),
            ),
            carry: Carry::new(limits.receive_maximum),
            // Not the current epoch: the first pump turn looks at the shard's token, in case a
            // newer one arrived while the session was opening.
            tokens_seen: state.tokens_changed.epoch().wrapping_sub(1),
        }),
        _ => None,
    };
    let mut pump = Pump {
        state: &state,
        session,
        device: &mut stream,
        device_buf: buf,
        upstream: &mut upstream,
        bridge: Bridge::new(device_version, up_version, topics)
            .with_identity(identity_properties)
            .with_envelope(envelope)
            .with_azure(azure.map(|(session, _, _)| session))
            .with_aws(aws),
        limits: decode_limits,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        identity,
        group_key,
        listener,
        peer_ip: peer.ip(),
        leaving: None,
        adapter_index,
        upstream_ping,
        last_upstream_write: reactor::now(),
        renew,
        latency_dest: (usize::from(destination.0), dest.name.as_str().into()),
        acks: AckTimes::default(),
    };
    let end = match pump.relay_stashed(stashed).await {
        Some(end) => end,
        None => pump.run().await,
    };
    if let Some(kind) = end.error_kind() {
        state.metrics.borrow_mut().destination_error(
            usize::from(destination.0),
            &dest.name,
            Protocol::Mqtt,
            kind,
        );
        state.usage_error(identity.usage());
    }
    if device_version == ProtocolVersion::V5 {
        if let Some(reason_code) = end.device_reason() {
            let bye = encode_device_disconnect(reason_code);
            let _ = reactor::timeout_at(
                goodbye_deadline(&state, GOODBYE_TIMEOUT),
                send_device(&state, session, &mut stream, bye),
            )
            .await;
        }
    }
    if end.upstream_clean() {
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
    } else if matches!(end, SessionEnd::ServerShuttingDown | SessionEnd::Moved) {
        // The gateway leaves, not the device: the broker keeps the will (v5: it is told so with
        // 0x04; 3.1.1: no DISCONNECT at all), and the TLS connection is closed properly.
        if let Some(code) = end.upstream_goodbye(up_version) {
            let mut bye = BytesMut::new();
            let packet = Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: Properties::default(),
            });
            if mqtt::encode(&packet, up_version, &mut bye).is_ok() {
                let _ = reactor::timeout_at(
                    goodbye_deadline(&state, GOODBYE_TIMEOUT),
                    upstream.stream.write_all(&[&bye]),
                )
                .await;
            }
        }
        let _ = reactor::timeout_at(
            goodbye_deadline(&state, GOODBYE_TIMEOUT),
            upstream.stream.close(),
        )
        .await;
    }
    // Otherwise `upstream` drops here: the TCP connection closes without DISCONNECT (nor
    // close_notify), and the broker publishes the device's will.
}

async fn send_device(
    state: &ShardState,
    session: RegistryKey,
    stream: &mut TcpStream,
    bytes: Bytes,
) -> std::io::Result<()> {
    let n = bytes.len() as u64;
    stream.send_all(bytes).await?;
    state.metrics.borrow_mut().device_bytes_out += n;
    state.sessions.borrow_mut().add_out(session, n);
    Ok(())
}

/// Take a connection (warm if possible), send CONNECT and wait for the CONNACK. A pooled
/// connection that turns out dead before any reply is replaced once by a fresh one.
async fn open_upstream(
    state: &ShardState,
    generation: u64,
    destination: &DestinationPlan,
    connect_timeout: Duration,
    connect_bytes: &[u8],
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<(UpstreamConn, ConnAck), OpenError> {
    let mut conn = state
        .upstreams
        .checkout(generation, destination)
        .await
        .map_err(OpenError::Connect)?;
    loop {
        let deadline = reactor::now() + connect_timeout;
        match exchange_connect(&mut conn, connect_bytes, deadline, version, limits).await {
            Ok(connack) => return Ok((conn, connack)),
            Err(OpenError::Closed) if conn.reused => {
                state.metrics.borrow_mut().upstream_retries += 1;
                conn = state
                    .upstreams
                    .connect_new(generation, destination)
                    .await
                    .map_err(OpenError::Connect)?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn exchange_connect(
    conn: &mut UpstreamConn,
    connect_bytes: &[u8],
    deadline: Instant,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<ConnAck, OpenError> {
    let stream = &mut conn.stream;
    match reactor::timeout_at(deadline, stream.write_all(&[connect_bytes])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(open_error_of(&e)),
        Err(_) => return Err(OpenError::Timeout),
    }
    loop {
        match mqtt::decode_packet(stream.plaintext(), version, Sender::Server, limits) {
            Ok(Decoded::Complete(Packet::ConnAck(connack))) => return Ok(connack),
            Ok(Decoded::Complete(Packet::Auth(_))) => return Err(OpenError::AuthUnsupported),
            Ok(Decoded::Complete(_)) | Err(_) => return Err(OpenError::Protocol),
            Ok(Decoded::Incomplete { .. }) => {}
        }
        match reactor::timeout_at(deadline, stream.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(OpenError::Closed),
            Ok(Err(e)) => return Err(open_error_of(&e)),
            Err(_) => return Err(OpenError::Timeout),
        }
    }
}

/// The device's IoT Hub cloud-to-device subscription (QoS 1).
fn c2d_subscription(filter: Bytes) -> Subscription {
    Subscription {
        filter,
        options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
    }
}

/// Subscribe (packet id 1) to `subscriptions` on an IoT Hub connection no device packet was
/// sent on yet (the device's cloud-to-device topic first) and wait for the SUBACK; the first
/// filter must be granted. Packets the hub sends before it (C2D messages of a persistent
/// session) are returned, to be relayed to the device.
async fn subscribe_hub(
    conn: &mut UpstreamConn,
    subscriptions: Vec<Subscription>,
    deadline: Instant,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Vec<Packet>, OpenError> {
    const ID: std::num::NonZeroU16 = std::num::NonZeroU16::MIN;
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: ID,
        properties: Properties::default(),
        subscriptions,
    });
    let mut bytes = BytesMut::new();
    mqtt::encode(&subscribe, version, &mut bytes).map_err(|_| OpenError::Protocol)?;
    let stream = &mut conn.stream;
    match reactor::timeout_at(deadline, stream.write_all(&[&bytes])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(open_error_of(&e)),
        Err(_) => return Err(OpenError::Timeout),
    }
    let mut early = Vec::new();
    loop {
        loop {
            match mqtt::decode_packet(stream.plaintext(), version, Sender::Server, limits) {
                Ok(Decoded::Complete(Packet::SubAck(ack))) if ack.packet_id == ID => {
                    return match ack.reason_codes.first() {
                        Some(code) if code.0 < 0x80 => Ok(early),
                        _ => Err(OpenError::Protocol),
                    };
                }
                Ok(Decoded::Complete(p @ Packet::Publish(_))) if early.len() < 64 => early.push(p),
                Ok(Decoded::Complete(_)) | Err(_) => return Err(OpenError::Protocol),
                Ok(Decoded::Incomplete { .. }) => break,
            }
        }
        match reactor::timeout_at(deadline, stream.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(OpenError::Closed),
            Ok(Err(e)) => return Err(open_error_of(&e)),
            Err(_) => return Err(OpenError::Timeout),
        }
    }
}

fn open_error_of(e: &TlsIoError) -> OpenError {
    match e {
        TlsIoError::Io { .. }
        | TlsIoError::Eof
        | TlsIoError::Tls(TlsError::ClosedWithoutCloseNotify | TlsError::UnexpectedEof) => {
            OpenError::Closed
        }
        TlsIoError::Tls(_) => OpenError::Tls,
    }
}

/// How one read from the device ended.
enum DeviceRead {
    Bytes(usize),
    Closed,
    KeepAliveExpired,
}

async fn read_device(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> DeviceRead {
    let result = match deadline {
        Some(at) => match reactor::timeout_at(at, stream.recv_append(buf)).await {
            Ok(r) => r,
            Err(_) => return DeviceRead::KeepAliveExpired,
        },
        None => stream.recv_append(buf).await,
    };
    match result {
        Ok(n) if n > 0 => DeviceRead::Bytes(n),
        _ => DeviceRead::Closed,
    }
}

/// The running session: both sockets, the device's receive buffer and the bridge.
/// How long a session whose SIM moved to another group waits for the broker to answer what it
/// has in flight before it ends anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

struct Pump<'a> {
    state: &'a ShardState,
    /// The connection's entry in the shard's session registry.
    session: RegistryKey,
    device: &'a mut TcpStream,
    device_buf: BytesMut,
    upstream: &'a mut UpstreamConn,
    bridge: Bridge,
    limits: DecodeLimits,
    /// 1.5× the keep-alive in force, `None` when keep-alive is off.
    keep_alive: Option<Duration>,
    /// The device's SIM and group; checked again after a reload.
    identity: DeviceIdentity,
    /// [`group_key`] of the group the device connected as.
    group_key: u64,
    listener: ListenerId,
    peer_ip: IpAddr,
    /// Set when a reload moved the device's SIM to another group: the device is no longer
    /// read, and the session ends (0x98) once the broker answered what is in flight, or then.
    leaving: Option<Instant>,
    /// The destination's adapter ([`crate::policy::AdapterKind::index`]), for the cloud
    /// refusals counted.
    adapter_index: usize,
    /// How long the upstream may go without a packet from simgate before simgate sends a
    /// PINGREQ of its own (AWS IoT Core, for a device whose keep-alive is longer than the
    /// cloud's); `None`: the device's own PINGREQs keep it alive.
    upstream_ping: Option<Duration>,
    /// When simgate last wrote to the upstream.
    last_upstream_write: Instant,
    /// `azure-iot-hub`: renewal of the upstream connection with newer SAS tokens.
    renew: Option<Renew<'a>>,
    /// The destination's index in the plan the session opened under and its name, for the
    /// latency histograms and the destination's counters.
    latency_dest: (usize, Box<str>),
    /// Device QoS 1 PUBLISHes forwarded upstream and not yet acknowledged, for the latency
    /// histograms.
    acks: AckTimes,
}

impl Pump<'_> {
    /// Relay broker packets that arrived before the session started pumping (IoT Hub C2D
    /// messages received while simgate subscribed).
    async fn relay_stashed(&mut self, packets: Vec<Packet>) -> Option<SessionEnd> {
        if packets.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        let mut end = None;
        let (mut publishes, mut bytes) = (0u64, 0u64);
        for packet in packets {
            if let Some(r) = self.renew.as_mut() {
                r.carry.downlink(&packet);
            }
            let payload = publish_payload_len(&packet);
            let (packet, ending) = match self.bridge.downlink(packet) {
                Action::Forward(p) | Action::Reply(p) => (Some(p), None),
                Action::ForwardAndEnd(p, e) => (Some(p), Some(e)),
                Action::End(e) => (None, Some(e)),
                Action::Absorb => (None, None),
            };
            if let Some(p) = packet {
                if mqtt::encode(&p, self.bridge.device_version(), &mut out).is_err() {
                    end = Some(SessionEnd::UpstreamProtocol);
                    break;
                }
                publishes += 1;
                bytes += payload;
            }
            if ending.is_some() {
                end = ending;
                break;
            }
        }
        if !out.is_empty() {
            if send_device(self.state, self.session, self.device, out.freeze())
                .await
                .is_err()
            {
                return Some(end.unwrap_or(SessionEnd::DeviceClosed));
            }
            self.state.metrics.borrow_mut().mqtt_publishes_downlink += publishes;
            self.count_destination(Direction::Downlink, publishes, bytes);
            self.state
                .usage_down(self.identity.usage(), publishes, bytes);
        }
        end
    }

    async fn run(&mut self) -> SessionEnd {
        let mut deadline = self.keep_alive.map(|k| reactor::now() + k);
        let mut out = BytesMut::new();
        loop {
            // A reload replaced the plan: a device whose SIM moved to another group (or is now
            // refused) leaves like a drained one, and reconnects into its new group.
            if self.leaving.is_none()
                && !self.identity.is_current(self.state.upstreams.generation())
            {
                let (plan, generation) = self.state.current();
                match DeviceIdentity::refresh(
                    &self.state.bindings,
                    self.group_key,
                    &plan,
                    generation,
                    self.listener,
                    self.peer_ip,
                ) {
                    Some(new) => {
                        // Same group: the session stays, with the SIM's fields as they are now.
                        if self.bridge.upstream_version() == ProtocolVersion::V5 {
                            self.bridge.set_identity(new.user_properties(&plan));
                        }
                        self.identity = new;
                    }
                    None => self.leaving = Some(reactor::now() + LEAVE_TIMEOUT),
                }
            }
            // Draining or leaving: the device is no longer read (what it sent and we did not
            // forward was not acknowledged; it sends it again elsewhere).
            let draining = self.state.draining() || self.leaving.is_some();
            // Bytes already buffered first: pipelined after CONNECT, or after the CONNACK.
            if !draining {
                match self.renew_if_due().await {
                    Ok(false) => {}
                    // The device was not read meanwhile: its keep-alive starts again.
                    Ok(true) => deadline = self.keep_alive.map(|k| reactor::now() + k),
                    Err(end) => return end,
                }
                if let Some(end) = self.drain_device(&mut out).await {
                    return end;
                }
            }
            if let Some(end) = self.drain_upstream(&mut out).await {
                return end;
            }
            if draining {
                // Relay the broker's answers to what is already upstream, then leave.
                // `until` and the comparison are on the reactor's cached clock (as every
                // deadline of the data path), so "at once" is now, not a moment ahead of it.
                let (until, end) = match self.leaving {
                    Some(deadline) if !self.state.draining() => (deadline, SessionEnd::Moved),
                    _ => (
                        drain_ack_deadline(self.state),
                        SessionEnd::ServerShuttingDown,
                    ),
                };
                if self.bridge.uplink_unacknowledged() == 0 || reactor::now() >= until {
                    return end;
                }
                match select2(self.upstream.stream.fill(), reactor::sleep_until(until)).await {
                    Either::Left(Ok(true)) | Either::Right(()) => continue,
                    Either::Left(Ok(false) | Err(_)) => return SessionEnd::UpstreamClosed,
                }
            }
            if self.device_buf.is_empty() {
                // Release the buffer's memory between bursts: an idle session holds none.
                self.device_buf = BytesMut::new();
            }
            // IoT Hub: the requests kept for a renewal are at their bound and the next device
            // packet is one more: the device is not read on until the hub answers one.
            let paused = self.renew.as_ref().is_some_and(|r| r.carry.is_full())
                && kept_until_answered(&self.device_buf);
            let (device, device_buf) = (&mut *self.device, &mut self.device_buf);
            let device_read = async move {
                if paused {
                    std::future::pending().await
                } else {
                    read_device(device, device_buf, deadline).await
                }
            };
            let renewal = self
                .renew
                .as_ref()
                .map(|r| (r.schedule.due(), r.tokens_seen));
            let drain_or_reload = select2(
                select2(self.state.drain.wait(), self.state.plan_changed.changed()),
                renewal_wake(self.state, renewal),
            );
            let device_or_drain = select2(device_read, drain_or_reload);
            let ping_at = self.upstream_ping.map(|p| self.last_upstream_write + p);
            let ping_due = async move {
                match ping_at {
                    Some(at) => reactor::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let local = select2(device_or_drain, ping_due);
            match select2(local, self.upstream.stream.fill()).await {
                Either::Left(Either::Left(Either::Left(DeviceRead::Bytes(n)))) => {
                    self.state.metrics.borrow_mut().device_bytes_in += n as u64;
                    self.state
                        .sessions
                        .borrow_mut()
                        .add_in(self.session, n as u64);
                    deadline = self.keep_alive.map(|k| reactor::now() + k);
                }
                Either::Left(Either::Left(Either::Left(DeviceRead::Closed))) => {
                    return SessionEnd::DeviceClosed
                }
                Either::Left(Either::Left(Either::Left(DeviceRead::KeepAliveExpired))) => {
                    return SessionEnd::DeviceKeepAliveTimeout
                }
                // The shard started draining, or a reload: handled at the top of the loop.
                Either::Left(Either::Left(Either::Right(_))) => {}
                Either::Left(Either::Right(())) => {
                    if let Some(end) = self.ping_upstream().await {
                        return end;
                    }
                }
                Either::Right(Ok(true)) => {}
                Either::Right(Ok(false) | Err(_)) => return SessionEnd::UpstreamClosed,
            }
            if paused {
                // The device was not read: its silence is not counted against its keep-alive.
                deadline = self.keep_alive.map(|k| reactor::now() + k);
            }
        }
    }

    /// Send the broker a PINGREQ of simgate's own (its PINGRESP is absorbed by the bridge).
    async fn ping_upstream(&mut self) -> Option<SessionEnd> {
        let mut bytes = BytesMut::with_capacity(2);
        if mqtt::encode(&Packet::PingReq, self.bridge.upstream_version(), &mut bytes).is_err() {
            return Some(SessionEnd::UpstreamProtocol);
        }
        if self.upstream.stream.write_all(&[&bytes]).await.is_err() {
            return Some(SessionEnd::UpstreamClosed);
        }
        self.bridge.note_own_ping();
        self.last_upstream_write = reactor::now();
        None
    }

    /// Count `publishes` PUBLISHes of `bytes` payload bytes going `direction` at the session's
    /// destination.
    fn count_destination(&self, direction: Direction, publishes: u64, bytes: u64) {
        let (index, name) = (self.latency_dest.0, &*self.latency_dest.1);
        let mut m = self.state.metrics.borrow_mut();
        if let Some(d) = m.destination(index, name) {
            d.message(Protocol::Mqtt, direction, publishes);
            match direction {
                Direction::Uplink => d.bytes_sent += bytes,
                Direction::Downlink => d.bytes_received += bytes,
            }
        }
    }

    /// Count the device messages the bridge refused by a cloud rule.
    fn count_refusals(&mut self) {
        let counts = self.bridge.take_refusals();
        if counts.iter().any(|n| *n > 0) {
            let (index, name) = (self.latency_dest.0, &*self.latency_dest.1);
            let mut m = self.state.metrics.borrow_mut();
            for rule in CloudRule::ALL {
                let n = counts[rule.index()];
                m.cloud_refusal(self.adapter_index, rule, n);
                if n > 0 {
                    m.destination_reject(index, name, RejectReason::Cloud(rule), n);
                }
            }
        }
    }

    /// Decode every complete device packet, forward the translations upstream in one write.
    async fn drain_device(&mut self, out: &mut BytesMut) -> Option<SessionEnd> {
        let version = self.bridge.device_version();
        let mut end = None;
        let (mut publishes, mut bytes) = (0u64, 0u64);
        let mut replies = BytesMut::new();
        while end.is_none() {
            // IoT Hub: as many requests unanswered as are kept for a renewal, and the next one
            // would be kept too: it waits (PINGREQ, PUBACK, DISCONNECT still pass).
            if self.renew.as_ref().is_some_and(|r| r.carry.is_full())
                && kept_until_answered(&self.device_buf)
            {
                break;
            }
            let packet = match mqtt::decode_packet(
                &mut self.device_buf,
                version,
                Sender::Client,
                &self.limits,
            ) {
                Ok(Decoded::Complete(p)) => p,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    self.state
                        .device_faults
                        .log(DeviceFault::BadMqttPacket, &e, reactor::now());
                    end = Some(SessionEnd::DeviceProtocol(device_error_code(e)));
                    break;
                }
            };
            let is_publish = matches!(packet, Packet::Publish(_));
            let qos1_id = match &packet {
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce => p.packet_id,
                _ => None,
            };
            let payload = publish_payload_len(&packet);
            let (packet, ending) = match self.bridge.uplink(packet) {
                Action::Forward(p) => (Some(p), None),
                Action::ForwardAndEnd(p, e) => (Some(p), Some(e)),
                Action::End(e) => (None, Some(e)),
                Action::Absorb => (None, None),
                Action::Reply(p) => {
                    // Answered here (a SUBSCRIBE whose every filter was refused, a PUBLISH
                    // refused by a cloud rule): the reply goes to the device after this
                    // batch's uplink write.
                    if mqtt::encode(&p, version, &mut replies).is_err() {
                        end = Some(SessionEnd::DeviceProtocol(
                            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                        ));
                        break;
                    }
                    (None, None)
                }
            };
            // IoT Hub: kept until answered, for a renewal (a PUBACK for a C2D message of a
            // replaced connection is dropped).
            let packet = packet.filter(|p| match self.renew.as_mut() {
                Some(r) => r.carry.uplink(p, self.bridge.upstream_version()),
                None => true,
            });
            if let Some(p) = packet {
                if mqtt::encode(&p, self.bridge.upstream_version(), out).is_err() {
                    // Not representable upstream (e.g. too long once the template is applied).
                    end = Some(SessionEnd::DeviceProtocol(
                        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    ));
                    break;
                }
                publishes += u64::from(is_publish);
                bytes += payload;
                if let Some(id) = qos1_id {
                    self.acks.received(id.get(), reactor::now());
                }
            }
            end = ending;
        }
        self.count_refusals();
        // A malformed or refused packet ends the session: what came before it is still sent (the
        // device sent it first), unless the session ends abruptly on the upstream side anyway.
        if !out.is_empty() {
            let sent = self.upstream.stream.write_all(&[out]).await;
            out.clear();
            if sent.is_err() {
                return Some(end.unwrap_or(SessionEnd::UpstreamClosed));
            }
            self.last_upstream_write = reactor::now();
            self.acks.sent_upstream(self.last_upstream_write);
            self.state.metrics.borrow_mut().mqtt_publishes_uplink += publishes;
            self.count_destination(Direction::Uplink, publishes, bytes);
            self.state.usage_up(self.identity.usage(), publishes, bytes);
        }
        if !replies.is_empty()
            && send_device(self.state, self.session, self.device, replies.freeze())
                .await
                .is_err()
        {
            return Some(end.unwrap_or(SessionEnd::DeviceClosed));
        }
        end
    }

    /// Record the device-observed latency, upstream round trip and what simgate added (the
    /// first minus the second) of the QoS 1 PUBLISHes whose PUBACK was just sent to the
    /// device.
    fn record_acks(&mut self) {
        let now = reactor::now();
        let (index, name) = (&self.latency_dest.0, &*self.latency_dest.1);
        let mut m = self.state.metrics.borrow_mut();
        for t in self.acks.take_acked() {
            let device = now.saturating_duration_since(t.received).as_micros() as u64;
            m.record_destination(
                *index,
                name,
                Latency::RequestDuration,
                Protocol::Mqtt,
                device,
            );
            if let Some(rtt) = t.upstream_rtt() {
                let rtt = rtt.as_micros() as u64;
                m.record_destination(*index, name, Latency::UpstreamRtt, Protocol::Mqtt, rtt);
                let added = device.saturating_sub(rtt);
                m.record_destination(*index, name, Latency::GatewayAdded, Protocol::Mqtt, added);
            }
        }
    }

    /// Decode every complete broker packet, forward the translations to the device in one send.
    async fn drain_upstream(&mut self, out: &mut BytesMut) -> Option<SessionEnd> {
        let version = self.bridge.upstream_version();
        let mut end = None;
        let (mut publishes, mut bytes) = (0u64, 0u64);
        while end.is_none() {
            let decoded = mqtt::decode_packet(
                self.upstream.stream.plaintext(),
                version,
                Sender::Server,
                &self.limits,
            );
            let packet = match decoded {
                Ok(Decoded::Complete(p)) => p,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(_) => {
                    end = Some(SessionEnd::UpstreamProtocol);
                    break;
                }
            };
            let is_publish = matches!(packet, Packet::Publish(_));
            if let Some(r) = self.renew.as_mut() {
                r.carry.downlink(&packet);
            }
            let payload = publish_payload_len(&packet);
            let (packet, ending) = match self.bridge.downlink(packet) {
                Action::Forward(p) | Action::Reply(p) => (Some(p), None),
                Action::ForwardAndEnd(p, e) => (Some(p), Some(e)),
                Action::End(e) => (None, Some(e)),
                Action::Absorb => (None, None),
            };
            if let Some(p) = packet {
                if mqtt::encode(&p, self.bridge.device_version(), out).is_err() {
                    end = Some(SessionEnd::UpstreamProtocol);
                    break;
                }
                publishes += u64::from(is_publish);
                bytes += payload;
                if let Packet::PubAck(r) = &p {
                    self.acks.acked(r.packet_id.get(), reactor::now());
                }
            }
            end = ending;
        }
        if !out.is_empty() {
            if send_device(self.state, self.session, self.device, out.split().freeze())
                .await
                .is_err()
            {
                return Some(end.unwrap_or(SessionEnd::DeviceClosed));
            }
            self.record_acks();
            self.state.metrics.borrow_mut().mqtt_publishes_downlink += publishes;
            self.count_destination(Direction::Downlink, publishes, bytes);
            self.state
                .usage_down(self.identity.usage(), publishes, bytes);
        }
        end
    }
}
/// The DISCONNECT reason code for a device packet that failed to decode.
fn device_error_code(e: MqttError) -> ReasonCode {
    e.reason_code()
}

/// Usage counts a PUBLISH's payload bytes as the device sent or receives them (0 for others).
fn publish_payload_len(packet: &Packet) -> u64 {
    match packet {
        Packet::Publish(p) => p.payload.len() as u64,
        _ => 0,
    }
}
