//! The IO driver of one link: [`Link`] (the core shared by the driver task and the device
//! sessions, plus the link's status and retirement flags) and [`run_link`], which drives it over a
//! TLS connection from the shard's upstreams.
//!
//! [`run_link`] connects (with the pool's jittered backoff plus its own for MQTT-level
//! refusals), exchanges CONNECT/CONNACK, then writes everything queued in one event-loop turn
//! with one TLS write (or, with `linger`, everything queued within that time or until one TLS
//! record's worth is queued), sends PINGREQ every half keep-alive, and declares the link dead
//! when a PINGRESP does not come back within the other half. Its deadlines (linger flush, next
//! ping, PINGRESP) are on the reactor's clock ([`reactor::now`], cached once per loop turn), the
//! clock its timers fire on.
//!
//! What this module does not do: protocol decisions (which PUBLISH goes when, what an ack
//! releases, subscriptions) — those are [`LinkCore`]'s.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::events::{bump, AggregateCounters, GaugeHold, LinkProtocolError};
use super::settings::{destination_fingerprint, LinkSettings};
use super::status::LinkStatus;
use super::LinkCore;
use crate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Disconnect, Packet, Properties, Sender,
};
use crate::reactor;
use crate::reactor::{select2, Either, Signal};
use crate::upstream::driver::ShardUpstreams;
use crate::upstream::UpstreamStream;

/// Largest packet accepted from the broker (downlink messages included).
const UPSTREAM_MAX_PACKET: u32 = 1024 * 1024;

/// Queued uplink bytes at which a lingering link writes without waiting out `linger`: one full
/// TLS record (2^14 bytes of plaintext).
const LINGER_FLUSH_BYTES: usize = 16 * 1024;

/// A link shared by its driver task and the device sessions that use it.
pub struct Link {
    /// The state machine (borrow briefly, never across an await).
    pub core: RefCell<LinkCore>,
    /// Wakes the driver when the core has something to write.
    pub wake: Signal,
    retired: Cell<bool>,
    ended: Cell<bool>,
    status: Cell<LinkStatus>,
    /// The name of the destination the link serves (empty until set), for the sessions'
    /// latency histograms and per-destination counters.
    destination: std::cell::OnceCell<Box<str>>,
    /// The destination's index in the plan the link was made under (`usize::MAX` until set):
    /// where the per-destination counters look first, before searching by name (a reload
    /// that moved the destination).
    destination_index: Cell<usize>,
}

impl Link {
    /// Name the destination the link serves, and its index in the plan the link is made
    /// under (once; later calls are ignored).
    pub fn set_destination(&self, name: &str, index: usize) {
        if self.destination.set(name.into()).is_ok() {
            self.destination_index.set(index);
        }
    }

    /// The index given with [`Link::set_destination`] (`usize::MAX` if none).
    pub fn destination_index(&self) -> usize {
        self.destination_index.get()
    }

    /// The name given with [`Link::set_destination`] (empty if none).
    pub fn destination(&self) -> &str {
        self.destination.get().map_or("", |n| n)
    }

    /// A new, disconnected link: down since now (the reactor's clock), until its first CONNACK.
    pub fn new(core: LinkCore) -> Rc<Link> {
        Rc::new(Link {
            core: RefCell::new(core),
            wake: Signal::default(),
            retired: Cell::new(false),
            ended: Cell::new(false),
            status: Cell::new(LinkStatus::Down {
                since: reactor::now(),
            }),
            destination: std::cell::OnceCell::new(),
            destination_index: Cell::new(usize::MAX),
        })
    }

    /// Whether the link is up, and if not since when.
    pub fn status(&self) -> LinkStatus {
        self.status.get()
    }

    /// The driver's account of a lost connection or a failed attempt at `now`.
    fn failed(&self, now: Instant) {
        self.status.set(self.status.get().after_failure(now));
    }

    /// Run `f` on the core, then wake the driver if the outbox just became non-empty or just
    /// reached [`LINGER_FLUSH_BYTES`], or if a PUBLISH just started waiting for the rate limit.
    /// The driver never sleeps on a non-empty outbox except while lingering (until its flush
    /// time or that size), nor past a pace deadline it has seen, so other additions need no
    /// wake-up: one wake per batch, not per message.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut LinkCore) -> R) -> R {
        let (r, wake) = {
            let mut core = self.core.borrow_mut();
            let now = reactor::now();
            let before = core.outbox_len();
            let paced_before = core.pace_deadline(now).is_some();
            let r = f(&mut core);
            let after = core.outbox_len();
            let wake = (before == 0 && after > 0)
                || (before < LINGER_FLUSH_BYTES && after >= LINGER_FLUSH_BYTES)
                || (!paced_before && core.pace_deadline(now).is_some());
            (r, wake)
        };
        if wake {
            self.wake.notify();
        }
        r
    }

    /// A reload replaced this link's destination settings: finish what it carries, take no
    /// new sessions, and stop once idle.
    pub fn retire(&self) {
        self.retired.set(true);
        self.wake.notify();
    }

    /// True once the driver has stopped for good.
    pub fn has_ended(&self) -> bool {
        self.ended.get()
    }

    /// True if retired (or ended): new sessions must not use it.
    pub fn is_retired(&self) -> bool {
        self.retired.get() || self.ended.get()
    }

    fn idle_and_retired(&self) -> bool {
        let core = self.core.borrow();
        self.retired.get()
            && core.session_count() == 0
            && core.inflight_len() == 0
            && core.waiting_len() == 0
    }
}

/// Why one upstream connection ended.
#[derive(Debug)]
enum ConnectionEnd {
    /// The link is retired and idle: leave for good.
    Retired,
    /// Lost (IO error, close, ping timeout, protocol error); reconnect.
    Lost(String),
}

/// Drive `link` for destination `dest_name` until it is retired and idle (or its destination
/// leaves the plan). `fingerprint` identifies the destination settings the link was built for;
/// a reconnect under a plan whose destination differs ends the link (its sessions close, and
/// the devices' unacknowledged messages are resent by the devices through a new link).
pub async fn run_link(
    upstreams: Rc<ShardUpstreams>,
    link: Rc<Link>,
    dest_name: String,
    fingerprint: u64,
    settings: LinkSettings,
    counters: Rc<AggregateCounters>,
) {
    let mut delay = settings.backoff_initial;
    let mut salt = upstreams.shard() as u64 ^ fingerprint;
    let _running = GaugeHold::new(&counters.links_running);
    // Once the link has had an upstream session, every further one is a reconnect.
    let mut was_up = false;
    loop {
        if link.idle_and_retired() {
            break;
        }
        let (plan, generation) = upstreams.current();
        let Some(dest) = plan
            .destinations
            .iter()
            .find(|d| d.name == dest_name && destination_fingerprint(d) == Some(fingerprint))
        else {
            // The plan no longer has this destination with these settings.
            break;
        };
        match upstreams.connect_new(generation, dest).await {
            Ok(conn) => {
                let mut tls = conn.stream;
                match handshake(&mut tls, &settings).await {
                    Ok(receive_maximum) => {
                        bump(&counters.link_connects);
                        if std::mem::replace(&mut was_up, true) {
                            upstreams.count_reconnect(dest);
                        }
                        let up = GaugeHold::new(&counters.links_up);
                        link.status.set(LinkStatus::Up);
                        delay = settings.backoff_initial;
                        let resent =
                            link.with_core(|c| c.on_connected(reactor::now(), receive_maximum));
                        tracing::info!(shard = upstreams.shard(), dest = %dest_name, resent, "mqtt link up");
                        let end = serve_connection(&mut tls, &link, &settings).await;
                        drop(up);
                        link.failed(reactor::now());
                        link.core.borrow_mut().on_disconnected();
                        match end {
                            ConnectionEnd::Retired => {
                                let _ = reactor::timeout(Duration::from_secs(1), tls.close()).await;
                                break;
                            }
                            ConnectionEnd::Lost(why) => {
                                bump(&counters.link_failures);
                                tracing::info!(shard = upstreams.shard(), dest = %dest_name, reason = %why, "mqtt link lost");
                            }
                        }
                    }
                    Err(why) => {
                        link.failed(reactor::now());
                        bump(&counters.link_failures);
                        tracing::info!(shard = upstreams.shard(), dest = %dest_name, reason = %why, "mqtt link refused");
                    }
                }
            }
            Err(e) => {
                link.failed(reactor::now());
                bump(&counters.link_failures);
                tracing::debug!(shard = upstreams.shard(), dest = %dest_name, error = %e, "mqtt link connect failed");
            }
        }
        if link.idle_and_retired() {
            break;
        }
        // Full jitter between half and all of the current delay.
        salt = salt
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let frac = 0.5 + 0.5 * ((salt >> 11) as f64 / (1u64 << 53) as f64);
        let wait = delay.mul_f64(frac);
        let _ = select2(reactor::sleep(wait), async {
            // A retired, idle link need not wait out its backoff.
            while !link.idle_and_retired() {
                link.wake.wait().await;
            }
        })
        .await;
        delay = delay.saturating_mul(2).min(settings.backoff_max);
    }
    link.ended.set(true);
    link.core.borrow_mut().close_sessions();
}

/// CONNECT and wait for CONNACK; the broker's Receive Maximum on success.
async fn handshake(
    tls: &mut UpstreamStream,
    settings: &LinkSettings,
) -> Result<Option<NonZeroU16>, String> {
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: settings.version,
        clean_start: true,
        keep_alive: u16::try_from(settings.keep_alive.as_secs()).unwrap_or(u16::MAX),
        properties: Properties::default(),
        client_id: settings.client_id.clone(),
        will: None,
        username: settings.username.clone(),
        password: settings.password.clone(),
    }));
    let mut out = BytesMut::new();
    mqtt::encode(&connect, settings.version, &mut out).map_err(|e| format!("CONNECT: {e:?}"))?;
    let limits = DecodeLimits {
        max_packet_size: UPSTREAM_MAX_PACKET,
    };
    let exchange = async {
        tls.write_all(&[&out]).await.map_err(|e| e.to_string())?;
        loop {
            match mqtt::decode_packet(tls.plaintext(), settings.version, Sender::Server, &limits) {
                Ok(Decoded::Complete(Packet::ConnAck(ack))) => {
                    if ack.reason_code != mqtt::ReasonCode::SUCCESS {
                        return Err(format!("CONNACK {}", ack.reason_code));
                    }
                    return Ok(ack.properties.receive_maximum);
                }
                Ok(Decoded::Complete(other)) => {
                    return Err(format!("expected CONNACK, got {:?}", other.packet_type()))
                }
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(format!("malformed CONNACK: {e:?}")),
            }
            match tls.fill().await {
                Ok(true) => {}
                Ok(false) => return Err("closed before CONNACK".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match reactor::timeout(settings.connack_timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err("no CONNACK in time".into()),
    }
}

/// Pump one established connection until it ends.
async fn serve_connection(
    tls: &mut UpstreamStream,
    link: &Rc<Link>,
    settings: &LinkSettings,
) -> ConnectionEnd {
    let limits = DecodeLimits {
        max_packet_size: UPSTREAM_MAX_PACKET,
    };
    let half = (settings.keep_alive / 2).max(Duration::from_millis(500));
    let write_timeout = settings.keep_alive.max(Duration::from_secs(5));
    let mut next_ping = reactor::now() + half;
    let mut ping_deadline: Option<Instant> = None;
    // While lingering: when the queued bytes are written even if no more arrive.
    let mut flush_at: Option<Instant> = None;
    loop {
        let out = {
            let mut core = link.core.borrow_mut();
            // PUBLISHes whose turn under `max_publish_rate` has come.
            core.poll(reactor::now());
            let queued = core.outbox_len();
            let write_now = queued > 0
                && (settings.linger.is_zero()
                    || queued >= LINGER_FLUSH_BYTES
                    || link.retired.get()
                    || reactor::now()
                        >= *flush_at.get_or_insert_with(|| reactor::now() + settings.linger));
            if write_now {
                flush_at = None;
                core.take_outbox()
            } else {
                None
            }
        };
        if let Some(out) = out {
            match reactor::timeout(write_timeout, tls.write_all(&[&out])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return ConnectionEnd::Lost(e.to_string()),
                Err(_) => return ConnectionEnd::Lost("write timed out".into()),
            }
            // More may have been queued while writing: go round before sleeping.
            continue;
        }
        if flush_at.is_none() && link.idle_and_retired() {
            let mut bye = BytesMut::new();
            let disconnect = Packet::Disconnect(Disconnect {
                reason_code: mqtt::ReasonCode::SUCCESS,
                properties: Properties::default(),
            });
            if mqtt::encode(&disconnect, settings.version, &mut bye).is_ok() {
                let _ = reactor::timeout(Duration::from_secs(1), tls.write_all(&[&bye])).await;
            }
            return ConnectionEnd::Retired;
        }
        let ping_at = ping_deadline.unwrap_or(next_ping);
        let mut deadline = flush_at.map_or(ping_at, |f| f.min(ping_at));
        if let Some(pace) = link.core.borrow().pace_deadline(reactor::now()) {
            deadline = deadline.min(pace);
        }
        match select2(
            tls.fill(),
            select2(link.wake.wait(), reactor::sleep_until(deadline)),
        )
        .await
        {
            Either::Left(Ok(true)) => loop {
                let decoded =
                    mqtt::decode_packet(tls.plaintext(), settings.version, Sender::Server, &limits);
                match decoded {
                    Ok(Decoded::Complete(Packet::PingResp)) => {
                        ping_deadline = None;
                    }
                    Ok(Decoded::Complete(packet)) => {
                        if let Err(e) = link.with_core(|c| c.handle(reactor::now(), packet)) {
                            return ConnectionEnd::Lost(e.to_string());
                        }
                    }
                    Ok(Decoded::Incomplete { .. }) => break,
                    Err(e) => {
                        return ConnectionEnd::Lost(LinkProtocolError::Malformed(e).to_string())
                    }
                }
            },
            Either::Left(Ok(false)) => return ConnectionEnd::Lost("broker closed".into()),
            Either::Left(Err(e)) => return ConnectionEnd::Lost(e.to_string()),
            Either::Right(Either::Left(())) => {}
            Either::Right(Either::Right(())) if reactor::now() < ping_at => {
                // The linger time is up, or a paced PUBLISH's turn came: written at the top of
                // the loop.
            }
            Either::Right(Either::Right(())) => {
                if ping_deadline.is_some() {
                    return ConnectionEnd::Lost("no PINGRESP within keep-alive".into());
                }
                link.core.borrow_mut().queue_ping();
                let now = reactor::now();
                ping_deadline = Some(now + half);
                next_ping = now + half;
            }
        }
        if ping_deadline.is_none() && reactor::now() >= next_ping {
            link.core.borrow_mut().queue_ping();
            let now = reactor::now();
            ping_deadline = Some(now + half);
            next_ping = now + half;
        }
    }
}
