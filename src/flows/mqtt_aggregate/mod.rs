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
//! Publish rate (`max_publish_rate`, docs/decisions/0017-aggregate-publish-rate.md): each link
//! spaces its PUBLISHes so no second holds more than N. A device message whose link has no turn
//! free goes on another link of the destination that has one if the device has nothing
//! unacknowledged (order kept), else waits for its turn with the device not read meanwhile (its
//! keep-alive clock restarts after), unless the wait exceeds half the device's keep-alive (at
//! most 5 s): then it is refused (5.0: 0x97; QoS 0: dropped; 3.1.1 QoS 1/2: connection closed
//! unacknowledged). See [`rate`].
//!
//! AWS IoT Core (`adapter = "aws-iot-core"`, aggregate mode): every mapped uplink topic and
//! filter is checked against AWS's rules (256 bytes, 7 slashes, `$aws/` only where the template
//! writes it) and every payload against 128 KB, through `crate::adapters::aws_iot_core_mqtt`;
//! a refused topic is answered as any topic without an upstream form (5.0 QoS 1/2: 0x90), a
//! refused payload ends the session (5.0: DISCONNECT 0x95), a refused Will is not published;
//! each is counted in `simgate_mqtt_cloud_refusals_total{adapter="aws-iot-core",rule}` and never
//! reaches the cloud, which would disconnect the shared link. See `device`.
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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::client_ids::Claim;
use super::device_log::DeviceFault;
use super::identity::{group_key, AttachedProperties, DeviceIdentity};
use super::mqtt_common::{
    assign_client_id, drain_ack_deadline, goodbye_deadline, send_connack, DeviceSession,
    SessionFuture,
};
use super::sessions::RegistryKey;
use super::ShardState;
use crate::adapters::aws_iot_core_mqtt::TopicRefusal;
use crate::policy::envelope::Envelope;
use crate::policy::{DestinationId, ListenerId, Plan, TemplateVars, TopicMap, WhileDown};
use crate::proto::mqtt::{
    self, ConnAck, Connect, DecodeLimits, Decoded, Disconnect, Packet, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, Sender, Will,
};
use crate::reactor::{self, TcpStream};
use crate::reactor::{select2, Either};
use crate::stats::{Direction, ErrorKind, Latency, Protocol, RejectReason};
use crate::upstream::mqtt_link::{Link, LinkEvent, SessionKey, SessionMailbox};

mod device;
mod rate;

use device::{Device, End};

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
    /// The destination's index in the plan of admission, for the latency histograms (its
    /// name is the link's).
    latency_index: u16,
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
        session,
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
        Ok((admitted, assigned)) => {
            if let Some(id) = assigned {
                // The device sent none: `/admin/sessions` shows the one simgate gave it.
                state
                    .sessions
                    .borrow_mut()
                    .set_client_id(session, &String::from_utf8_lossy(&id));
            }
            Box::pin(serve(Session {
                state,
                stream,
                buf,
                session,
                admitted,
            }))
        }
        Err(code) => Box::pin(refuse(stream, connect.protocol_version, code)),
    }
}

async fn refuse(mut stream: TcpStream, version: ProtocolVersion, code: ReasonCode) {
    send_connack(&mut stream, version, code).await;
}

/// Check the device's client id, pick its link, register it there, and build its state with
/// the CONNACK queued in its output; with it, the client id simgate assigned (the device sent
/// none). `Err` is the CONNACK reason code of a refusal.
fn admit(
    state: &Rc<ShardState>,
    plan: &Plan,
    listener: ListenerId,
    destination: DestinationId,
    connect: &Connect,
    peer: SocketAddr,
    identity: DeviceIdentity,
) -> Result<(Admitted, Option<Bytes>), ReasonCode> {
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
        .links
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
        // Counted in simgate_mqtt_sessions_taken_over_total every time; logged once per
        // interval.
        if let Some(held_back) = state.takeover_log.allow(crate::reactor::now()) {
            tracing::info!(
                client_id = %String::from_utf8_lossy(&client_id),
                %peer,
                taken_over_since_last_line = held_back,
                "client id taken over: the session that held it is disconnected"
            );
        }
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
        aws: dest.aws_iot_core_mqtt().is_some(),
        receive_maximum: usize::from(limits.receive_maximum.max(1)),
        device_max_packet: connect.properties.maximum_packet_size,
        decode_limits: DecodeLimits {
            max_packet_size: limits.max_packet_size,
        },
        tracking: None,
        will: connect.will.clone().map(Box::new),
        rate: link.core.borrow().is_rate_limited().then(|| {
            Box::new(rate::DeviceRate::new(
                set.clone(),
                mailbox.clone(),
                connect.keep_alive,
                state.links.counters().rate_outcomes(&dest.name),
            ))
        }),
        out: BytesMut::new(),
        usage: Default::default(),
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
        props.assigned_client_identifier = assigned.clone();
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
    let admitted = Admitted {
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
        latency_index: destination.0,
    };
    Ok((admitted, assigned))
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
    let c = &state.links.counters().connects_refused_down;
    c.set(c.get() + 1);
    state.metrics.borrow_mut().destination_reject(
        link.destination_index(),
        link.destination(),
        RejectReason::LinkDown,
        1,
    );
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
    /// The connection's entry in the shard's session registry.
    session: RegistryKey,
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
            admitted:
                Admitted {
                    device,
                    link,
                    identity,
                    ..
                },
            session,
            ..
        } = &mut s;
        let session = *session;
        state.usage_flush(identity.usage(), &mut device.usage);
        if let End::Abnormal(code) = end {
            // The will first: it is queued on the link at once, so a device that does not read its
            // DISCONNECT cannot hold it back past the shard's drain window.
            if let Some(will) = device.will.take() {
                publish_will(state, device, link, *will);
            }
            if let (Some(code), ProtocolVersion::V5) = (code, device.version) {
                device.write(&Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: Properties::default(),
                }));
                let until = goodbye_deadline(state, DEVICE_WRITE_TIMEOUT);
                let _ = reactor::timeout_at(until, flush(state, session, stream, &mut device.out))
                    .await;
            }
        }
    }
}

async fn run_session(s: &mut Session) -> End {
    let Session {
        state,
        stream,
        buf,
        session,
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
                latency_index,
                ..
            },
    } = s;
    let key = *key;
    let session = *session;
    let far = Duration::from_secs(365 * 24 * 3600);
    let keep_alive = keep_alive.unwrap_or(far);
    // Received bytes only move `last_heard`; the timer is re-armed when it fires early, so a
    // busy device costs no timer-heap work per message.
    let mut last_heard = reactor::now();
    let mut keep_alive_timer = reactor::sleep_until(last_heard + keep_alive);
    let mut was_paused = false;
    loop {
        state.usage_flush(identity.usage(), &mut device.usage);
        // The session's end, if an event ends it; the flush is awaited after the loop so the
        // drained queue and the event are not held across it (that would grow every idle
        // device's task by their size).
        let mut ended = None;
        for event in mailbox.drain() {
            if let LinkEvent::Message(publish) = &event {
                // Counted as the link counts it (queued for this session), with its payload.
                let bytes = publish.payload.len() as u64;
                if let Some(d) = state
                    .metrics
                    .borrow_mut()
                    .destination(usize::from(*latency_index), link.destination())
                {
                    d.message(Protocol::Mqtt, Direction::Downlink, 1);
                    d.bytes_received += bytes;
                }
            }
            if let Some(end) = device.on_link_event(event) {
                ended = Some(end);
                break;
            }
        }
        if let Some(end) = ended {
            let _ = flush(state, session, stream, &mut device.out).await;
            return end;
        }
        record_acked(
            state,
            (*latency_index, link.destination()),
            device.drain_acked(),
        );
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
                Some(new) => {
                    // Same group: the session stays, with the SIM's fields as they are now.
                    if link.core.borrow().version() == ProtocolVersion::V5 {
                        device.identity_properties = new.user_properties(&plan);
                    }
                    *identity = new;
                }
                None => device.leaving = Some(reactor::now() + DEVICE_WRITE_TIMEOUT),
            }
        }
        // Draining or leaving: no new device packets (what the device sent and we did not take
        // in, it sends again elsewhere; it was not acknowledged).
        let draining = state.draining() || device.leaving.is_some();
        while !draining && !device.paused() && device.held(reactor::now()).is_none() {
            // The decoded packet is consumed before any await: kept in the match scrutinee, it
            // would be stored in the session future for the device's whole life.
            let end = match mqtt::decode_packet(
                buf,
                device.version,
                Sender::Client,
                &device.decode_limits,
            ) {
                Ok(Decoded::Complete(packet)) => {
                    device.on_packet(packet, link, key, state, reactor::now())
                }
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    state.metrics.borrow_mut().destination_error(
                        usize::from(*latency_index),
                        link.destination(),
                        Protocol::Mqtt,
                        ErrorKind::DeviceBadRequest,
                    );
                    state
                        .device_faults
                        .log(DeviceFault::BadMqttPacket, &e, reactor::now());
                    device.usage.errors += 1;
                    Some(End::Abnormal(Some(e.reason_code())))
                }
            };
            if let Some(end) = end {
                let _ = flush(state, session, stream, &mut device.out).await;
                return end;
            }
        }
        if !flush(state, session, stream, &mut device.out).await {
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
            if device.tracked().outstanding.is_empty() || reactor::now() >= until {
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
        if let Some(until) = device.held(reactor::now()) {
            was_paused = true;
            // Not reading: the device's last message waits for its link's turn under
            // `max_publish_rate`; its keep-alive clock restarts when we read again.
            let _ = select2(
                select2(mailbox.signal.wait(), state.drain.wait()),
                reactor::sleep_until(until),
            )
            .await;
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
                state.sessions.borrow_mut().add_in(session, n as u64);
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
async fn flush(
    state: &Rc<ShardState>,
    session: RegistryKey,
    stream: &mut TcpStream,
    out: &mut BytesMut,
) -> bool {
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
            state.sessions.borrow_mut().add_out(session, n);
            true
        }
        _ => false,
    }
}

/// Queue the device's Will on its link, its topic mapped as any uplink message's (a Will
/// whose topic or payload AWS IoT Core would refuse is not sent, and counted).
fn publish_will(state: &ShardState, device: &Device, link: &Rc<Link>, will: Will) {
    let topic = match device.upstream_topic(&will.topic) {
        Ok(topic) => topic,
        Err(TopicRefusal::Cloud(rule)) => {
            device::count_cloud_refusal(state, link, rule);
            return;
        }
        Err(TopicRefusal::Invalid) => return,
    };
    if device.aws {
        if let Err(rule) = crate::adapters::aws_iot_core_mqtt::check_payload(will.payload.len()) {
            device::count_cloud_refusal(state, link, rule);
            return;
        }
    }
    let publish = Publish {
        dup: false,
        qos: will.qos.min(QoS::AtLeastOnce),
        retain: will.retain,
        topic,
        packet_id: None,
        properties: Properties::default(),
        payload: will.payload,
    };
    let payload_bytes = publish.payload.len() as u64;
    let enqueued = link.with_core(|c| c.publish(reactor::now(), publish, None));
    if let Some(d) = state
        .metrics
        .borrow_mut()
        .destination(link.destination_index(), link.destination())
    {
        d.message(Protocol::Mqtt, Direction::Uplink, 1);
        if enqueued != crate::upstream::mqtt_link::Enqueued::Dropped {
            d.bytes_sent += payload_bytes;
        }
    }
}

/// Record the device-observed latency (device PUBLISH received → PUBACK queued for the
/// device, in the same turn as the link's PUBACK from the broker) of acknowledged QoS 1
/// PUBLISHes received at `received`, and what simgate added to it (that minus the PUBLISH's
/// upstream round trip, which the link recorded itself).
fn record_acked(
    state: &ShardState,
    (index, name): (u16, &str),
    received: impl Iterator<Item = (Instant, Duration)>,
) {
    let mut received = received.peekable();
    if received.peek().is_none() {
        return;
    }
    let now = reactor::now();
    let mut m = state.metrics.borrow_mut();
    for (r, upstream_rtt) in received {
        let observed = now.saturating_duration_since(r);
        m.record_destination(
            usize::from(index),
            name,
            Latency::RequestDuration,
            Protocol::Mqtt,
            observed.as_micros() as u64,
        );
        m.record_destination(
            usize::from(index),
            name,
            Latency::GatewayAdded,
            Protocol::Mqtt,
            observed.saturating_sub(upstream_rtt).as_micros() as u64,
        );
    }
}
