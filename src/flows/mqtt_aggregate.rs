//! Aggregate mode (N:1) MQTT bridging: many device sessions of a shard share a few upstream
//! MQTTS links per destination ([`crate::upstream::mqtt_link`]); topics carry the device identity
//! through the destination's `topic` template (e.g. `devices/{client_id}/{topic}`).
//!
//! For the device, simgate is the broker: it answers CONNECT with CONNACK (5.0: Receive Maximum =
//! the listener's `receive_maximum`, Maximum Packet Size = its `max_packet_size`, Topic Alias
//! Maximum 0, no shared subscriptions, no subscription identifiers), PINGREQ, SUBSCRIBE,
//! UNSUBSCRIBE and DISCONNECT, and closes a device silent for 1.5x its keep-alive.
//!
//! Uplink: each PUBLISH gets its topic rewritten and goes to the link picked by a hash of the
//! device's client id (so one device's messages keep their order). QoS 0 is fire-and-forget.
//! QoS 1 is answered with PUBACK only after the broker's PUBACK. **QoS 2** is carried upstream as
//! QoS 1: the device gets PUBREC after the broker's PUBACK, and PUBCOMP as soon as it sends PUBREL;
//! a re-sent QoS 2 PUBLISH whose PUBREC was already given is not forwarded again (exactly once
//! from the device to simgate, at least once from simgate to the broker). A device with
//! `receive_maximum` messages unacknowledged is not read from until one is acknowledged
//! (backpressure instead of dropping; its keep-alive clock stops meanwhile).
//!
//! Downlink: a device SUBSCRIBE to filter F becomes an upstream subscription to the template
//! applied to F (once per distinct upstream filter per link, reference counted); the device's
//! SUBACK waits for the broker's. Messages are mapped back by stripping the template's text around
//! `{topic}` and delivered **at QoS 0** (the SUBACK grants QoS 0 accordingly; upstream
//! subscriptions are QoS 1 and acknowledged by the link on receipt).
//!
//! Drain (SIGTERM): the device is no longer read; acknowledgements for what is already upstream
//! are relayed until none is outstanding (or the drain window is nearly over); then a 5.0
//! device gets DISCONNECT 0x8B and a 3.1.1 device is closed. That is a server-side close without
//! the device's DISCONNECT, so its Will is published (below); the shard keeps serving the links
//! until they have delivered what they carry or the window ends.
//!
//! Client ids: a device owns its client id on its listener across every shard
//! ([`super::client_ids`]); a newer connection with the same id takes it over and the older
//! session ends as a broker would end it (5.0: DISCONNECT 0x8E; the Will goes out).
//!
//! Will: on an abnormal end (no DISCONNECT, keep-alive expiry, protocol error, drain, or 5.0
//! DISCONNECT 0x04) the device's Will is published upstream with its topic rewritten (QoS 2 as QoS 1; Will
//! Delay Interval is not honoured: it goes out at once).
//!
//! Upstream down: a device is admitted to the one link its client id hashes to. While that link
//! has no upstream session (never connected since it was created, or lost and not back), a new
//! CONNECT gets CONNACK 0 and its QoS 1/2 messages wait unacknowledged (`accept_while_down =
//! true`, the default), or, with `accept_while_down = false` once the link has been down for
//! `down_after`, CONNACK "server unavailable" (0x88; 3.1.1 return code 3), counted. Devices
//! already connected stay either way; nothing is acknowledged before the broker has it.
//!
//! Reloads: [`AggregateShard`] notices a new plan on the next session and keeps the links of
//! destinations whose link settings did not change; links of changed or removed destinations
//! are retired (they finish serving their sessions, then disconnect), and new sessions get new
//! links.
//!
//! What this module does not do: persistent device sessions (CONNACK Session Present is always 0
//! and nothing survives a device reconnect), QoS 1/2 downlink, Topic Aliases, enhanced auth (a
//! CONNECT with an Authentication Method gets CONNACK 0x8C from `mqtt_bridge`, an AUTH is a
//! Protocol Error 0x82 — the same as in session mode),
//! shared subscriptions, retained-message policy beyond passing the RETAIN flag through, or
//! rewriting 5.0 Response Topic.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::client_ids::Claim;
use super::identity::{group_key, AttachedProperties, DeviceIdentity};
use super::mqtt_bridge::{
    assign_client_id, drain_ack_deadline, goodbye_deadline, send_connack, DeviceSession,
    SessionFuture,
};
use super::ShardState;
use crate::policy::envelope::{self, Envelope};
use crate::policy::{DestinationId, ListenerId, Plan, TemplateVars, TopicMap, WhileDown};
use crate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, Disconnect, Packet, Properties, ProtocolVersion,
    PubResponse, Publish, QoS, ReasonCode, Sender, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::reactor::{self, TcpStream};
use crate::reactor::{select2, Either};
use crate::upstream::mqtt_link::{
    Enqueued, Link, LinkEvent, PublishOwner, SessionKey, SessionMailbox,
};

/// A device that does not read what simgate sends for this long is closed.
const DEVICE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-shard state of aggregate mode on the device side: sessions open, and each session's
/// mailbox by its client-id claim (the links themselves are the upstream handle's, see
/// [`crate::upstream::link_registry`]). Interior mutability: it lives in the shard's
/// `ShardState` and is only touched from the shard thread.
#[derive(Default)]
pub struct AggregateShard {
    sessions_open: Cell<u64>,
    /// Mailbox of each running session by its client-id claim token, so that a takeover
    /// (which may come from another shard) can end it.
    by_claim: RefCell<HashMap<u64, Rc<SessionMailbox>>>,
    /// Sessions ended because a newer connection took their client id over.
    taken_over: Cell<u64>,
}

impl AggregateShard {
    /// Device sessions currently served in aggregate mode on this shard.
    pub fn sessions_open(&self) -> u64 {
        self.sessions_open.get()
    }

    /// A reload replaced the plan: wake every session, so that one whose SIM moved to another
    /// group leaves.
    pub fn plan_changed(&self) {
        for mailbox in self.by_claim.borrow().values() {
            mailbox.signal.notify();
        }
    }

    /// Sessions of this shard ended because a newer connection took their client id over.
    pub fn sessions_taken_over(&self) -> u64 {
        self.taken_over.get()
    }

    /// End the session holding client-id claim `token` with `code` (it sends a 5.0 device
    /// DISCONNECT with that code, publishes the Will, and closes). A token whose session has
    /// already ended is ignored.
    pub fn evict(&self, token: u64, code: ReasonCode) {
        let mailbox = self.by_claim.borrow_mut().remove(&token);
        if let Some(mailbox) = mailbox {
            if code == ReasonCode::SESSION_TAKEN_OVER {
                self.taken_over.set(self.taken_over.get() + 1);
            }
            mailbox.push(LinkEvent::Evicted(code));
        }
    }
}

/// Unregisters a session from its link, and gives up its client id, however the session task
/// ends.
struct Registration {
    link: Rc<Link>,
    key: SessionKey,
    state: Rc<ShardState>,
    listener: ListenerId,
    client_id: Bytes,
    claim: Claim,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let key = self.key;
        self.link.with_core(|c| c.unregister(key));
        let agg = &self.state.mqtt_aggregate;
        agg.sessions_open
            .set(agg.sessions_open.get().saturating_sub(1));
        agg.by_claim.borrow_mut().remove(&self.claim.token);
        self.state
            .client_ids
            .release(self.listener, &self.client_id, self.claim);
    }
}

/// Why a device session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The device sent DISCONNECT (no Will).
    Normal,
    /// Abnormal: publish the Will. For 5.0 devices, send DISCONNECT with the code first (if any).
    Abnormal(Option<ReasonCode>),
}

/// Per-session state of the device side.
struct Device {
    version: ProtocolVersion,
    /// Set when a reload moved the device's SIM to another group: the session stops taking
    /// packets and ends (0x98) once the broker acknowledged what is in flight, or at this time.
    leaving: Option<Instant>,
    /// The SIM identity attached to every uplink PUBLISH (MQTT 5 user properties; empty when
    /// the link speaks 3.1.1, the source is unknown or the group attaches nothing).
    identity_properties: AttachedProperties,
    /// `envelope = "json"`: the identity fields every uplink payload is wrapped with (empty
    /// for an unknown source); `None`: payloads go as sent.
    envelope: Option<Box<[(String, String)]>>,
    /// The destination's `topic` template resolved for this device.
    topics: TopicMap,
    receive_maximum: usize,
    /// Largest packet the device accepts (5.0 CONNECT Maximum Packet Size).
    device_max_packet: Option<NonZeroU32>,
    decode_limits: DecodeLimits,
    /// Acknowledgement and subscription state; allocated the first time the device needs it.
    tracking: Option<Box<Tracking>>,
    /// Boxed: most devices have none, and this struct is what every idle device costs.
    will: Option<Box<Will>>,
    out: BytesMut,
}

/// What a device has in flight and subscribed. Boxed in [`Device`] and allocated on first use:
/// a device that only publishes at QoS 0 never needs it, and four empty hash tables inline would
/// add ~190 bytes to every idle device's session.
#[derive(Default)]
struct Tracking {
    /// Device packet ids of QoS 1/2 PUBLISHes waiting for the broker's PUBACK.
    outstanding: HashSet<u16>,
    /// QoS 2 ids answered with PUBREC, waiting for the device's PUBREL.
    awaiting_pubrel: HashSet<u16>,
    /// Device filter -> upstream filter, for granted or pending subscriptions.
    subs: HashMap<Bytes, Bytes>,
    /// Device SUBSCRIBE id -> (codes so far, device filters).
    pending_subacks: HashMap<u16, (Vec<Option<ReasonCode>>, Vec<Bytes>)>,
}

/// The [`Tracking`] of a device that has none yet.
static NO_TRACKING: std::sync::LazyLock<Tracking> = std::sync::LazyLock::new(Tracking::default);

/// A device session admitted to an upstream link: everything the running session needs, and
/// nothing of the CONNECT it came from.
struct Admitted {
    device: Device,
    link: Rc<Link>,
    key: SessionKey,
    mailbox: Rc<SessionMailbox>,
    /// Unregisters the session from its link when the session ends.
    _registration: Registration,
    keep_alive: Option<Duration>,
    /// The device's SIM and group, for the plan of its generation; checked again after a
    /// reload (a SIM moved to another group leaves, see [`run_session`]).
    identity: DeviceIdentity,
    /// [`group_key`] of the group the device connected as.
    group_key: u64,
    peer_ip: IpAddr,
    listener: ListenerId,
}

/// Admit one device session to the shard's shared upstream links and return the future that
/// serves it (or answers its refusal).
///
/// Memory: the returned future lives as long as the device is connected, idle or not, so
/// admission (checking the client id, picking a link, building the device state and the
/// CONNACK) happens here, synchronously: the CONNECT, the plan and the CONNACK's properties
/// are never stored in the session's future, which is boxed at the size of a running session.
pub fn start(session: DeviceSession) -> SessionFuture {
    let DeviceSession {
        state,
        plan,
        listener,
        destination,
        stream,
        peer,
        connect,
        buf,
        identity,
    } = session;
    match admit(
        &state,
        &plan,
        listener,
        destination,
        &connect,
        peer,
        identity,
    ) {
        Ok(admitted) => Box::pin(serve(Session {
            state,
            stream,
            buf,
            admitted,
        })),
        Err(code) => Box::pin(refuse(stream, connect.protocol_version, code)),
    }
}

async fn refuse(mut stream: TcpStream, version: ProtocolVersion, code: ReasonCode) {
    send_connack(&mut stream, version, code).await;
}

/// Check the device's client id, pick its link, register it there, and build its state with
/// the CONNACK queued in its output. `Err` is the CONNACK reason code of a refusal.
fn admit(
    state: &Rc<ShardState>,
    plan: &Plan,
    listener: ListenerId,
    destination: DestinationId,
    connect: &Connect,
    peer: SocketAddr,
    identity: DeviceIdentity,
) -> Result<Admitted, ReasonCode> {
    let version = connect.protocol_version;
    let dest = plan.destination(destination);
    let mqtt_dest = dest.mqtt().ok_or(ReasonCode::SERVER_UNAVAILABLE)?;
    let limits = plan
        .listener(listener)
        .mqtt()
        .ok_or(ReasonCode::SERVER_UNAVAILABLE)?;
    let assigned = assign_client_id(connect, &mqtt_dest.topic, state.id.0, peer)?;
    // A copy, not a slice of the receive buffer: the slice would keep the whole CONNECT (and
    // its shared-buffer header) alive for the session's life.
    let client_id = assigned
        .clone()
        .unwrap_or_else(|| Bytes::copy_from_slice(&connect.client_id));

    // No link set: the destination left the plan (or changed mode) since routing; the device
    // reconnects.
    let set = state
        .upstreams
        .links()
        .link_set(&state.upstreams, &dest.name)
        .ok_or(ReasonCode::SERVER_UNAVAILABLE)?;
    let link = set
        .pick(&client_id)
        .cloned()
        .ok_or(ReasonCode::SERVER_UNAVAILABLE)?;
    refuse_while_down(state, mqtt_dest.while_down, &link, &client_id)?;
    let mailbox = Rc::new(SessionMailbox::default());
    let key = link.with_core(|c| {
        let key = c.register(mailbox.clone());
        tracing::debug!(
            client_id = %String::from_utf8_lossy(&client_id),
            link = c.name(),
            session = key.0,
            "aggregate session registered"
        );
        key
    });
    {
        let open = &state.mqtt_aggregate.sessions_open;
        open.set(open.get() + 1);
    }
    // This device owns its client id on this listener from now on; a session holding it (on
    // any shard) is told to end with DISCONNECT 0x8E "session taken over".
    let (claim, previous) = state.client_ids.claim(listener, &client_id, state.id.0);
    if previous.is_some() {
        tracing::info!(
            client_id = %String::from_utf8_lossy(&client_id),
            %peer,
            "client id taken over: the session that held it is disconnected"
        );
    }
    state
        .mqtt_aggregate
        .by_claim
        .borrow_mut()
        .insert(claim.token, mailbox.clone());
    let registration = Registration {
        link: link.clone(),
        key,
        state: state.clone(),
        listener,
        client_id: client_id.clone(),
        claim,
    };

    let vars = TemplateVars {
        client_id: &client_id,
        topic: b"",
        ip: peer.ip(),
        shard: state.id.0,
        conn: 0,
        sim: identity.sim(plan),
    };
    // The SIM's identity as user properties on every uplink PUBLISH, when the link speaks 5.0.
    let identity_properties = match link.core.borrow().version() {
        ProtocolVersion::V5 => identity.user_properties(plan),
        ProtocolVersion::V311 => AttachedProperties::default(),
    };
    let mut device = Device {
        version,
        leaving: None,
        identity_properties,
        envelope: (dest.envelope == Envelope::Json).then(|| identity.envelope_fields(plan)),
        topics: TopicMap::new(&mqtt_dest.topic, &vars),
        receive_maximum: usize::from(limits.receive_maximum.max(1)),
        device_max_packet: connect.properties.maximum_packet_size,
        decode_limits: DecodeLimits {
            max_packet_size: limits.max_packet_size,
        },
        tracking: None,
        will: connect.will.clone().map(Box::new),
        out: BytesMut::new(),
    };
    let keep_alive = match connect.keep_alive {
        0 => None,
        secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
    };

    let mut props = Properties::default();
    if version == ProtocolVersion::V5 {
        props.receive_maximum = NonZeroU16::new(limits.receive_maximum.max(1));
        props.maximum_packet_size = NonZeroU32::new(limits.max_packet_size);
        props.topic_alias_maximum = Some(0);
        props.shared_subscription_available = Some(false);
        props.subscription_identifier_available = Some(false);
        props.assigned_client_identifier = assigned;
    }
    device.write(&Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: props,
    }));
    let group_key = plan
        .groups
        .get(usize::from(identity.group().0))
        .map_or(0, |g| group_key(&g.name));
    Ok(Admitted {
        device,
        link,
        key,
        mailbox,
        _registration: registration,
        keep_alive,
        identity,
        group_key,
        peer_ip: peer.ip(),
        listener,
    })
}

/// `Err(SERVER_UNAVAILABLE)` (counted) if `while_down` says a new session is refused while
/// `link` — the one the device's messages would travel over — is down, as it is now.
fn refuse_while_down(
    state: &ShardState,
    while_down: WhileDown,
    link: &Link,
    client_id: &[u8],
) -> Result<(), ReasonCode> {
    let down_for = link.status().down_for(reactor::now());
    if !while_down.refuses(down_for) {
        return Ok(());
    }
    let c = &state.upstreams.links().counters().connects_refused_down;
    c.set(c.get() + 1);
    tracing::debug!(
        client_id = %String::from_utf8_lossy(client_id),
        down_ms = down_for.map_or(0, |d| d.as_millis() as u64),
        "aggregate CONNECT refused: upstream link down"
    );
    Err(ReasonCode::SERVER_UNAVAILABLE)
}

/// Everything a running session owns, as one value: the session future holds it once (an
/// `async fn` that destructured its arguments into locals would hold them twice, and this
/// future lives as long as the device is connected).
struct Session {
    state: Rc<ShardState>,
    stream: TcpStream,
    buf: BytesMut,
    admitted: Admitted,
}

/// Serve an admitted device session until it ends.
///
/// Not an `async fn`: that would move `s` from its argument slot into a local, and the future
/// would hold both copies; an `async move` block that only borrows `s` holds it once.
#[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
fn serve(mut s: Session) -> impl std::future::Future<Output = ()> {
    async move {
        let end = run_session(&mut s).await;
        let Session {
            state,
            stream,
            admitted: Admitted { device, link, .. },
            ..
        } = &mut s;
        if let End::Abnormal(code) = end {
            // The will first: it is queued on the link at once, so a device that does not read its
            // DISCONNECT cannot hold it back past the shard's drain window.
            if let Some(will) = device.will.take() {
                publish_will(device, link, *will);
            }
            if let (Some(code), ProtocolVersion::V5) = (code, device.version) {
                device.write(&Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: Properties::default(),
                }));
                let until = goodbye_deadline(state, DEVICE_WRITE_TIMEOUT);
                let _ = reactor::timeout_at(until, flush(state, stream, &mut device.out)).await;
            }
        }
    }
}

async fn run_session(s: &mut Session) -> End {
    let Session {
        state,
        stream,
        buf,
        admitted:
            Admitted {
                device,
                link,
                key,
                mailbox,
                keep_alive,
                identity,
                group_key,
                peer_ip,
                listener,
                ..
            },
    } = s;
    let key = *key;
    let far = Duration::from_secs(365 * 24 * 3600);
    let keep_alive = keep_alive.unwrap_or(far);
    // Received bytes only move `last_heard`; the timer is re-armed when it fires early, so a
    // busy device costs no timer-heap work per message.
    let mut last_heard = reactor::now();
    let mut keep_alive_timer = reactor::sleep_until(last_heard + keep_alive);
    let mut was_paused = false;
    loop {
        for event in mailbox.drain() {
            if let Some(end) = device.on_link_event(event) {
                let _ = flush(state, stream, &mut device.out).await;
                return end;
            }
        }
        // A reload replaced the plan: a device whose SIM moved to another group (or is now
        // refused) leaves like a drained one, with 0x98 "administrative action", and
        // reconnects into its new group.
        if !identity.is_current(state.upstreams.generation()) && device.leaving.is_none() {
            let (plan, generation) = state.current();
            match DeviceIdentity::refresh(
                &state.bindings,
                *group_key,
                &plan,
                generation,
                *listener,
                *peer_ip,
            ) {
                Some(new) => *identity = new,
                None => device.leaving = Some(reactor::now() + DEVICE_WRITE_TIMEOUT),
            }
        }
        // Draining or leaving: no new device packets (what the device sent and we did not take
        // in, it sends again elsewhere; it was not acknowledged).
        let draining = state.draining() || device.leaving.is_some();
        while !draining && !device.paused() {
            // The decoded packet is consumed before any await: kept in the match scrutinee, it
            // would be stored in the session future for the device's whole life.
            let end = match mqtt::decode_packet(
                buf,
                device.version,
                Sender::Client,
                &device.decode_limits,
            ) {
                Ok(Decoded::Complete(packet)) => device.on_packet(packet, link, key, state),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => Some(End::Abnormal(Some(e.reason_code()))),
            };
            if let Some(end) = end {
                let _ = flush(state, stream, &mut device.out).await;
                return end;
            }
        }
        if !flush(state, stream, &mut device.out).await {
            return End::Abnormal(None);
        }
        if draining {
            // Relay the broker's acknowledgements of what is already upstream, then say goodbye
            // (the rest stays unacknowledged if the drain window closes first).
            let (until, code) = match device.leaving {
                Some(deadline) if !state.draining() => {
                    (deadline, ReasonCode::ADMINISTRATIVE_ACTION)
                }
                _ => (drain_ack_deadline(state), ReasonCode::SERVER_SHUTTING_DOWN),
            };
            if device.tracked().outstanding.is_empty() || Instant::now() >= until {
                return End::Abnormal(Some(code));
            }
            let _ = select2(mailbox.signal.wait(), reactor::sleep_until(until)).await;
            continue;
        }
        let paused = device.paused();
        if paused {
            was_paused = true;
            // Not reading: the device is waiting for our acknowledgements.
            let _ = select2(mailbox.signal.wait(), state.drain.wait()).await;
            continue;
        }
        if was_paused {
            was_paused = false;
            last_heard = reactor::now();
        }
        if buf.is_empty() {
            // Idle until the device's next packet: hold no receive buffer meanwhile.
            *buf = BytesMut::new();
        }
        match select2(
            select2(stream.recv_append(buf), state.drain.wait()),
            select2(mailbox.signal.wait(), &mut keep_alive_timer),
        )
        .await
        {
            Either::Left(Either::Left(Ok(n))) if n > 0 => {
                state.metrics.borrow_mut().device_bytes_in += n as u64;
                last_heard = reactor::now();
            }
            // EOF or socket error without DISCONNECT: abnormal.
            Either::Left(Either::Left(_)) => return End::Abnormal(None),
            // The shard started draining: handled at the top of the loop.
            Either::Left(Either::Right(())) => {}
            Either::Right(Either::Left(())) => {}
            Either::Right(Either::Right(())) => {
                let expiry = last_heard + keep_alive;
                if reactor::now() >= expiry {
                    return End::Abnormal(Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
                }
                keep_alive_timer.reset(expiry);
            }
        }
    }
}

/// Send what the device has queued; false if the device is gone or stuck.
async fn flush(state: &Rc<ShardState>, stream: &mut TcpStream, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let n = out.len() as u64;
    // Take the whole buffer rather than `split` it: a split turns it into a shared buffer whose
    // header and spare capacity an idle device would then hold; the next write allocates anew.
    let bytes = std::mem::take(out).freeze();
    match reactor::timeout(DEVICE_WRITE_TIMEOUT, stream.send_all(bytes)).await {
        Ok(Ok(())) => {
            state.metrics.borrow_mut().device_bytes_out += n;
            true
        }
        _ => false,
    }
}

fn publish_will(device: &Device, link: &Rc<Link>, will: Will) {
    let Some(topic) = device.upstream_topic(&will.topic) else {
        return;
    };
    let publish = Publish {
        dup: false,
        qos: will.qos.min(QoS::AtLeastOnce),
        retain: will.retain,
        topic,
        packet_id: None,
        properties: Properties::default(),
        payload: will.payload,
    };
    link.with_core(|c| c.publish(publish, None));
}

impl Device {
    /// The device's tracking state (empty if it has none yet).
    fn tracked(&self) -> &Tracking {
        self.tracking.as_deref().unwrap_or(&NO_TRACKING)
    }

    /// The device's tracking state, allocated if it has none yet.
    fn tracking_mut(&mut self) -> &mut Tracking {
        self.tracking.get_or_insert_with(Box::default)
    }

    fn paused(&self) -> bool {
        self.tracked().outstanding.len() >= self.receive_maximum
    }

    fn write(&mut self, packet: &Packet) {
        if let Err(e) = mqtt::encode(packet, self.version, &mut self.out) {
            tracing::debug!(error = ?e, "cannot encode packet for device");
        }
    }

    /// The upstream topic for device topic `topic` (None: it has no valid upstream form).
    fn upstream_topic(&self, topic: &Bytes) -> Option<Bytes> {
        self.topics.uplink_topic(topic).ok()
    }

    /// The upstream filter for device filter `filter`, or the SUBACK failure code. Upstream
    /// subscriptions are shared by every device on the link, so a template without `{topic}`
    /// (whose filters would pass unchanged) and shared subscriptions are refused.
    fn upstream_filter(&self, filter: &Bytes) -> Result<Bytes, ReasonCode> {
        if self.version == ProtocolVersion::V5 && filter.starts_with(b"$share/") {
            return Err(ReasonCode(0x9E)); // Shared Subscriptions not supported
        }
        if !self.topics.has_topic() {
            return Err(ReasonCode::UNSPECIFIED_ERROR);
        }
        self.topics
            .uplink_filter(filter, ProtocolVersion::V311)
            .map_err(|_| ReasonCode::TOPIC_FILTER_INVALID)
    }

    /// The device topic for an upstream topic (template text around `{topic}` stripped); None
    /// when it is not this device's.
    fn device_topic(&self, upstream: &Bytes) -> Option<Bytes> {
        self.topics.downlink_topic(upstream)
    }

    fn failure_code(&self, code: ReasonCode) -> ReasonCode {
        match self.version {
            ProtocolVersion::V311 => ReasonCode::UNSPECIFIED_ERROR,
            ProtocolVersion::V5 => code,
        }
    }

    /// Apply one device packet. `Some(end)` closes the session.
    fn on_packet(
        &mut self,
        packet: Packet,
        link: &Rc<Link>,
        key: SessionKey,
        state: &Rc<ShardState>,
    ) -> Option<End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, link, key, state),
            Packet::PubRel(rel) => {
                let known = self
                    .tracking_mut()
                    .awaiting_pubrel
                    .remove(&rel.packet_id.get());
                let mut comp = PubResponse::success(rel.packet_id);
                if !known && self.version == ProtocolVersion::V5 {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.write(&Packet::PubComp(comp));
                None
            }
            Packet::Subscribe(sub) => {
                self.on_subscribe(sub, link, key);
                None
            }
            Packet::Unsubscribe(unsub) => {
                self.on_unsubscribe(unsub, link, key);
                None
            }
            Packet::PingReq => {
                self.write(&Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => {
                if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL {
                    Some(End::Abnormal(None))
                } else {
                    Some(End::Normal)
                }
            }
            // Downlink is QoS 0: the device has nothing to acknowledge.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => None,
            // A second CONNECT, or packets only a server sends.
            _ => Some(End::Abnormal(Some(ReasonCode::PROTOCOL_ERROR))),
        }
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        link: &Rc<Link>,
        key: SessionKey,
        state: &Rc<ShardState>,
    ) -> Option<End> {
        if publish.properties.topic_alias.is_some() || publish.topic.is_empty() {
            // We advertised Topic Alias Maximum 0 ([MQTT-3.3.2-9]).
            return Some(End::Abnormal(Some(ReasonCode(0x94))));
        }
        if let Some(id) = publish.packet_id {
            if self.tracked().outstanding.contains(&id.get()) {
                return None; // a duplicate of one still in flight upstream
            }
            if publish.qos == QoS::ExactlyOnce && self.tracked().awaiting_pubrel.contains(&id.get())
            {
                // Already forwarded and PUBREC'd: answer again, do not forward twice.
                self.write(&Packet::PubRec(PubResponse::success(id)));
                return None;
            }
        }
        let Some(topic) = self.upstream_topic(&publish.topic) else {
            let c = &state.upstreams.links().counters().topics_refused;
            c.set(c.get() + 1);
            return match (self.version, publish.packet_id) {
                (ProtocolVersion::V5, Some(id)) => {
                    let mut r = PubResponse::success(id);
                    r.reason_code = ReasonCode::TOPIC_NAME_INVALID;
                    self.write(&match publish.qos {
                        QoS::ExactlyOnce => Packet::PubRec(r),
                        _ => Packet::PubAck(r),
                    });
                    None
                }
                (ProtocolVersion::V5, None) => None,
                (ProtocolVersion::V311, _) => Some(End::Abnormal(None)),
            };
        };
        // Wrapped before signing: the signature covers the payload as sent.
        let payload = match &self.envelope {
            Some(fields) => {
                Bytes::from(envelope::wrap(fields, envelope::now_ms(), &publish.payload))
            }
            None => publish.payload,
        };
        let properties = if link.core.borrow().version() == ProtocolVersion::V5 {
            let mut p = publish.properties;
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            self.identity_properties
                .apply_to_publish(&mut p, &topic, &payload);
            p
        } else {
            Properties::default()
        };
        let owner = publish.packet_id.map(|id| PublishOwner {
            session: key,
            device_packet_id: id,
            device_qos: publish.qos,
        });
        if let Some(id) = publish.packet_id {
            self.tracking_mut().outstanding.insert(id.get());
        }
        let upstream = Publish {
            dup: false,
            qos: publish.qos,
            retain: publish.retain,
            topic,
            packet_id: None,
            properties,
            payload,
        };
        if link.with_core(|c| c.publish(upstream, owner)) == Enqueued::Dropped {
            tracing::trace!("qos 0 publish dropped: link down");
        }
        None
    }

    fn on_subscribe(&mut self, sub: Subscribe, link: &Rc<Link>, key: SessionKey) {
        let n = sub.subscriptions.len();
        let mut codes = vec![None; n];
        let mut filters = Vec::with_capacity(n);
        let mut requests = Vec::new();
        for (index, s) in sub.subscriptions.into_iter().enumerate() {
            filters.push(s.filter.clone());
            match self.upstream_filter(&s.filter) {
                Err(code) => codes[index] = Some(self.failure_code(code)),
                Ok(upstream) => {
                    self.tracking_mut()
                        .subs
                        .insert(s.filter.clone(), upstream.clone());
                    requests.push((upstream, index));
                }
            }
        }
        let id = sub.packet_id;
        self.tracking_mut()
            .pending_subacks
            .insert(id.get(), (codes, filters));
        if requests.is_empty() {
            self.complete_suback(id);
            return;
        }
        link.with_core(|c| {
            for (upstream, index) in requests {
                c.subscribe(key, upstream, id, index);
            }
        });
    }

    fn complete_suback(&mut self, id: NonZeroU16) {
        let done = self
            .tracked()
            .pending_subacks
            .get(&id.get())
            .is_some_and(|(codes, _)| codes.iter().all(Option::is_some));
        if !done {
            return;
        }
        let Some((codes, _)) = self.tracking_mut().pending_subacks.remove(&id.get()) else {
            return;
        };
        let reason_codes = codes
            .into_iter()
            .map(|c| c.unwrap_or(ReasonCode::UNSPECIFIED_ERROR))
            .collect();
        self.write(&Packet::SubAck(SubAck {
            packet_id: id,
            properties: Properties::default(),
            reason_codes,
        }));
    }

    fn on_unsubscribe(&mut self, unsub: Unsubscribe, link: &Rc<Link>, key: SessionKey) {
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            match self.tracking_mut().subs.remove(filter) {
                Some(upstream) => {
                    link.with_core(|c| c.unsubscribe(key, &upstream));
                    codes.push(ReasonCode::SUCCESS);
                }
                None => codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if self.version == ProtocolVersion::V311 {
            codes.clear();
        }
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id: unsub.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
    }

    /// Apply one event from the link. `Some(end)` closes the session.
    fn on_link_event(&mut self, event: LinkEvent) -> Option<End> {
        match event {
            LinkEvent::Acked {
                device_packet_id,
                device_qos,
                reason,
            } => {
                self.tracking_mut()
                    .outstanding
                    .remove(&device_packet_id.get());
                let refused = reason.0 >= 0x80;
                if refused && self.version == ProtocolVersion::V311 {
                    // 3.1.1 cannot say "refused": close rather than acknowledge.
                    return Some(End::Abnormal(None));
                }
                let mut response = PubResponse::success(device_packet_id);
                if self.version == ProtocolVersion::V5 {
                    response.reason_code = reason;
                }
                if device_qos == QoS::ExactlyOnce {
                    if !refused {
                        self.tracking_mut()
                            .awaiting_pubrel
                            .insert(device_packet_id.get());
                    }
                    self.write(&Packet::PubRec(response));
                } else {
                    self.write(&Packet::PubAck(response));
                }
                None
            }
            LinkEvent::SubscribeResult {
                device_packet_id,
                index,
                code,
            } => {
                let failed = code.0 >= 0x80;
                let device_code = if failed {
                    self.failure_code(code)
                } else {
                    ReasonCode::SUCCESS // granted QoS 0: downlink is delivered at QoS 0
                };
                let mut failed_filter = None;
                if let Some((codes, filters)) = self
                    .tracking_mut()
                    .pending_subacks
                    .get_mut(&device_packet_id.get())
                {
                    if let Some(slot) = codes.get_mut(index) {
                        *slot = Some(device_code);
                    }
                    if failed {
                        failed_filter = filters.get(index).cloned();
                    }
                }
                if let Some(f) = failed_filter {
                    self.tracking_mut().subs.remove(&f);
                }
                self.complete_suback(device_packet_id);
                None
            }
            LinkEvent::Message(publish) => {
                self.deliver(*publish);
                None
            }
            // The link was retired (its destination changed or left the plan). 0x88 "Server
            // unavailable" is a CONNACK code only; DISCONNECT says 0x80, and the device
            // reconnects to the current plan.
            LinkEvent::Closed => Some(End::Abnormal(Some(ReasonCode::UNSPECIFIED_ERROR))),
            // Taken over by a newer connection with this client id (or ended by the gateway for
            // another reason): as a broker would, DISCONNECT (5.0) and close; the Will goes out.
            LinkEvent::Evicted(code) => Some(End::Abnormal(Some(code))),
        }
    }

    fn deliver(&mut self, publish: Publish) {
        let Some(topic) = self.device_topic(&publish.topic) else {
            return;
        };
        if !self
            .tracked()
            .subs
            .keys()
            .any(|f| crate::upstream::mqtt_link::topic_matches(f, &topic))
        {
            return;
        }
        let properties = if self.version == ProtocolVersion::V5 {
            let mut p = publish.properties;
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            p
        } else {
            Properties::default()
        };
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: publish.retain,
            topic,
            packet_id: None,
            properties,
            payload: publish.payload,
        });
        if let Some(max) = self.device_max_packet {
            match mqtt::encoded_len(&packet, self.version) {
                Ok(len) if len as u64 <= u64::from(max.get()) => {}
                // [MQTT-3.1.2-24]: never send a packet over the client's maximum.
                _ => return,
            }
        }
        self.write(&packet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Placeholder;
    use crate::policy::Template;

    fn device(template: &str, version: ProtocolVersion) -> Device {
        let topic = Template::parse(
            template,
            &[Placeholder::ClientId, Placeholder::Topic, Placeholder::Ip],
        )
        .expect("template");
        let client_id = Bytes::from_static(b"dev1");
        let vars = TemplateVars {
            client_id: &client_id,
            topic: b"",
            ip: "10.0.0.1".parse().expect("ip"),
            shard: 0,
            conn: 0,
            sim: None,
        };
        Device {
            version,
            leaving: None,
            identity_properties: AttachedProperties::default(),
            envelope: None,
            topics: TopicMap::new(&topic, &vars),
            receive_maximum: 2,
            device_max_packet: None,
            decode_limits: DecodeLimits::default(),
            tracking: None,
            will: None,
            out: BytesMut::new(),
        }
    }

    fn written(d: &mut Device) -> Vec<Packet> {
        let mut buf = d.out.split();
        let mut out = Vec::new();
        while let Ok(Decoded::Complete(p)) = mqtt::decode_packet(
            &mut buf,
            d.version,
            Sender::Server,
            &DecodeLimits::default(),
        ) {
            out.push(p);
        }
        out
    }

    fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    #[test]
    fn topics_are_rewritten_and_mapped_back() {
        let d = device("devices/{client_id}/{topic}", ProtocolVersion::V311);
        assert_eq!(
            d.upstream_topic(&Bytes::from_static(b"temp/1")).as_deref(),
            Some(&b"devices/dev1/temp/1"[..])
        );
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"cmd/#")).as_deref(),
            Ok(&b"devices/dev1/cmd/#"[..])
        );
        assert_eq!(
            d.device_topic(&Bytes::from_static(b"devices/dev1/cmd/reboot"))
                .as_deref(),
            Some(&b"cmd/reboot"[..])
        );
        assert_eq!(
            d.device_topic(&Bytes::from_static(b"devices/dev2/cmd/reboot")),
            None
        );
    }

    #[test]
    fn filters_that_cannot_map_are_refused() {
        let d = device("devices/{client_id}/{topic}/up", ProtocolVersion::V5);
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"cmd/#")),
            Err(ReasonCode::TOPIC_FILTER_INVALID)
        );
        assert_eq!(
            d.upstream_filter(&Bytes::from_static(b"$share/g/x")),
            Err(ReasonCode(0x9E))
        );
        let fixed = device("all/devices", ProtocolVersion::V311);
        assert!(fixed.upstream_filter(&Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn acks_map_to_puback_pubrec_and_pubrel_completes_qos2() {
        let mut d = device("{topic}", ProtocolVersion::V311);
        d.tracking_mut().outstanding.insert(3);
        d.tracking_mut().outstanding.insert(4);
        assert!(d
            .on_link_event(LinkEvent::Acked {
                device_packet_id: nz(3),
                device_qos: QoS::AtLeastOnce,
                reason: ReasonCode::SUCCESS
            })
            .is_none());
        assert!(d
            .on_link_event(LinkEvent::Acked {
                device_packet_id: nz(4),
                device_qos: QoS::ExactlyOnce,
                reason: ReasonCode::SUCCESS
            })
            .is_none());
        assert_eq!(
            written(&mut d),
            vec![
                Packet::PubAck(PubResponse::success(nz(3))),
                Packet::PubRec(PubResponse::success(nz(4)))
            ]
        );
        assert!(d.tracked().outstanding.is_empty());
        assert!(d.tracked().awaiting_pubrel.contains(&4));
    }

    #[test]
    fn v311_device_is_closed_not_acked_when_the_broker_refuses() {
        let mut d = device("{topic}", ProtocolVersion::V311);
        d.tracking_mut().outstanding.insert(1);
        assert_eq!(
            d.on_link_event(LinkEvent::Acked {
                device_packet_id: nz(1),
                device_qos: QoS::AtLeastOnce,
                reason: ReasonCode::NOT_AUTHORIZED
            }),
            Some(End::Abnormal(None))
        );
        assert!(written(&mut d).is_empty());
    }

    #[test]
    fn suback_waits_for_every_filter() {
        let mut d = device("devices/{client_id}/{topic}", ProtocolVersion::V5);
        d.tracking_mut().pending_subacks.insert(
            7,
            (
                vec![None, Some(ReasonCode::TOPIC_FILTER_INVALID)],
                vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            ),
        );
        d.tracking_mut().subs.insert(
            Bytes::from_static(b"a"),
            Bytes::from_static(b"devices/dev1/a"),
        );
        d.complete_suback(nz(7));
        assert!(written(&mut d).is_empty());
        d.on_link_event(LinkEvent::SubscribeResult {
            device_packet_id: nz(7),
            index: 0,
            code: ReasonCode::GRANTED_QOS_1,
        });
        assert_eq!(
            written(&mut d),
            vec![Packet::SubAck(SubAck {
                packet_id: nz(7),
                properties: Properties::default(),
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::TOPIC_FILTER_INVALID],
            })]
        );
    }

    #[test]
    fn downlink_goes_only_to_matching_subscriptions_at_qos0() {
        let mut d = device("devices/{client_id}/{topic}", ProtocolVersion::V311);
        d.tracking_mut().subs.insert(
            Bytes::from_static(b"cmd/+"),
            Bytes::from_static(b"devices/dev1/cmd/+"),
        );
        let msg = |topic: &'static str| Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(topic.as_bytes()),
            packet_id: Some(nz(1)),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        };
        d.on_link_event(LinkEvent::Message(Box::new(msg("devices/dev1/cmd/reboot"))));
        d.on_link_event(LinkEvent::Message(Box::new(msg(
            "devices/dev1/other/reboot",
        ))));
        d.on_link_event(LinkEvent::Message(Box::new(msg("devices/dev2/cmd/reboot"))));
        let out = written(&mut d);
        assert_eq!(out.len(), 1);
        let Packet::Publish(p) = &out[0] else {
            panic!("expected PUBLISH, got {out:?}");
        };
        assert_eq!(&p.topic[..], b"cmd/reboot");
        assert_eq!(p.qos, QoS::AtMostOnce);
    }
}
