//! What both MQTT bridging modes share once a device's CONNECT is routed: the routed session
//! handed to a mode ([`DeviceSession`]), CONNACK refusals (with the 3.1.1 return-code mapping),
//! client ids simgate assigns to devices that sent none, and the drain and goodbye deadlines
//! both modes end sessions by.
//!
//! What this module does not do: read the CONNECT or pick the mode (`super::mqtt_bridge`), or run
//! a session (`super::mqtt_session`, `super::mqtt_aggregate`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::identity::DeviceIdentity;
use super::ShardState;
use crate::policy::template::Placeholder;
use crate::policy::{DestinationId, ListenerId, Plan, Template};
use crate::proto::mqtt::{self, ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
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
    /// The connection's entry in the shard's session registry.
    pub session: super::sessions::RegistryKey,
}

impl DeviceSession {
    /// The device's protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.connect.protocol_version
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

/// A routed device session, boxed at the size of its bridging mode.
pub(crate) type SessionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36 * 36), "100");
    }
}
