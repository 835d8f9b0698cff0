//! MQTT device sessions, the part common to both bridging modes: read the device's CONNECT
//! (bounded by the listener's `connect_timeout` and `max_packet_size`), find the session's
//! destination, and hand the session to [`super::mqtt_session`] (1:1) or
//! [`super::mqtt_aggregate`] (N:1) according to the destination's mode.
//!
//! A CONNECT that is malformed, oversized or late closes the connection — with a CONNACK
//! carrying the reason code where the device's version is known (3.1.1 return codes are the
//! subset 0x01..0x05). A device without a route gets "not authorized" (v5 0x87, v3.1.1 0x05).
//!
//! Both modes give a device that sent an empty client id one of simgate's
//! ([`assign_client_id`](super::mqtt_common::assign_client_id)),
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
//! forwarded (relaying those acknowledgements) or until [`drain_ack_deadline`](super::mqtt_common::drain_ack_deadline), then send a v5
//! device DISCONNECT 0x8B "Server shutting down" (a 3.1.1 device has no server DISCONNECT: its
//! connection is just closed). Nothing unacknowledged is acknowledged.
//!
//! What this module does not do: anything after CONNECT; the mode modules own the session.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;

use super::device_log::{record_destination, record_sim, DeviceFault};
use super::identity::DeviceIdentity;
use super::mqtt_common::{send_connack, DeviceSession, SessionFuture};
use super::sessions::{RegistryKey, SessionProtocol};
use super::ShardState;
use crate::policy::{ListenerId, MqttMode};
use crate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, MqttError, ProtocolVersion, ReasonCode,
};
use crate::reactor::{self, TcpStream};

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
    session: RegistryKey,
) -> impl std::future::Future<Output = ()> {
    let connect = Box::pin(connect_phase(state, listener, stream, peer, session));
    async move {
        if let Some(session) = connect.await {
            session.await;
        }
    }
}

/// Read and route the CONNECT; answer it here if it is refused. Returns the session to run.
async fn connect_phase(
    state: Rc<ShardState>,
    listener: ListenerId,
    mut stream: TcpStream,
    peer: SocketAddr,
    session: RegistryKey,
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
                // The line names the device's SIM (looked up only for a line written).
                state.device_faults.log_with(
                    DeviceFault::BadMqttPacket,
                    &e,
                    reactor::now(),
                    || {
                        let (plan, generation) = state.current();
                        record_sim(
                            DeviceIdentity::resolve(
                                &state.bindings,
                                &plan,
                                generation,
                                listener,
                                peer.ip(),
                            )
                            .and_then(|i| i.usage().imsi),
                        );
                    },
                );
                refuse_connect(&mut stream, &buf, e).await;
                return None;
            }
        }
        match reactor::timeout_at(deadline, stream.recv_append(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                state.metrics.borrow_mut().device_bytes_in += n as u64;
                state.sessions.borrow_mut().add_in(session, n as u64);
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
        state.device_faults.log_with(
            DeviceFault::UnknownSource,
            &"no SIM has this source address (listener refuses unknown)",
            reactor::now(),
            || record_sim(None),
        );
        send_connack(
            &mut stream,
            connect.protocol_version,
            ReasonCode::NOT_AUTHORIZED,
        )
        .await;
        return None;
    };
    record_sim(identity.usage().imsi);
    let Some(destination) = plan.route_mqtt(identity.group(), listener) else {
        send_connack(
            &mut stream,
            connect.protocol_version,
            ReasonCode::NOT_AUTHORIZED,
        )
        .await;
        return None;
    };
    record_destination(&plan.destination(destination).name);
    let mode = plan.destination(destination).mqtt().map(|m| m.mode);
    {
        let mut sessions = state.sessions.borrow_mut();
        let protocol = match mode {
            Some(MqttMode::Aggregate) => SessionProtocol::MqttAggregate,
            _ => SessionProtocol::MqttSession,
        };
        sessions.set_protocol(session, protocol);
        if !connect.client_id.is_empty() {
            sessions.set_client_id(session, &String::from_utf8_lossy(&connect.client_id));
        }
        sessions.set_identity(session, identity.usage());
        sessions.set_destination(
            session,
            generation,
            destination,
            &plan.destination(destination).name,
        );
    }
    let session = DeviceSession {
        session,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::mqtt_common::*;
    use crate::policy::template::Placeholder;
    use crate::policy::Template;
    use crate::proto::mqtt::Properties;
    use bytes::Bytes;

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
        // Same shard, same address and port: still distinct.
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }
}
