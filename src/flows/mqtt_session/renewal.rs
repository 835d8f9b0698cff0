//! SAS token renewal of an `azure-iot-hub` session without loss, sans-IO: *when* the device's
//! upstream connection is replaced by one with the newer token ([`Schedule`]), and *what* the
//! session carries from the old connection to the new one ([`Carry`]).
//!
//! IoT Hub (like any MQTT broker) drops the older connection when a second one with the same
//! client id connects, so the old connection cannot be drained beside the new one. The driver
//! therefore: opens the new connection and CONNECTs with the new token (the old one still
//! works until the hub accepts the new CONNECT), re-subscribes the C2D topic and the hub
//! filters the device subscribed to ([`Carry::subscriptions`]), then switches: every device
//! request still unanswered on the old connection is sent again on the new one
//! ([`Carry::switch`]: QoS 1 PUBLISHes with the same packet id and DUP = 1, SUBSCRIBEs and
//! UNSUBSCRIBEs as they were), in the order the device sent them.
//!
//! Downlink: a C2D QoS 1 PUBLISH the old connection delivered and the device has not yet
//! acknowledged is not acknowledged to the new connection (its packet id means nothing
//! there): the device's PUBACK is dropped ([`Carry::uplink`] returns `false`) and the hub,
//! which never got it, delivers the message again (at least once).
//!
//! Bounds: the requests kept for resending are copies (encoded, DUP set), at most the
//! listener's Receive Maximum of them; at that bound ([`Carry::is_full`]) the device's next
//! packet that would be kept ([`kept_until_answered`]) waits in its socket until the hub
//! answers one, while PINGREQs and acknowledgements still pass.
//!
//! What this module does not do: sockets, the clock (time is passed in), choose the token
//! (the control thread mints it, the shard holds it), or count metrics.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::proto::mqtt::{self, Packet, ProtocolVersion, QoS};

/// First retry delay after a failed renewal (doubling per failure, up to [`RETRY_MAX`]).
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest retry delay after a failed renewal.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Shortest retry delay: closer to the expiry than this, the session stops trying.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// When the session's upstream connection is renewed.
///
/// A renewal is scheduled once the shard holds a token that expires later than the
/// session's (the control thread minted a newer one, at 80 % of `token_ttl`), at a moment
/// in the first half of the time the session's token has left, placed by the session's
/// `jitter` (a fraction in `[0, 1)` fixed per session): thousands of sessions of one
/// destination spread their reconnects over that half instead of all reconnecting at the
/// instant the token arrives, and the second half is left for retries. A failed renewal is
/// retried after 1 s, doubling, always within half the time left; once that is under
/// [`RETRY_MIN`] the session keeps its connection until the hub closes it at expiry.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `expires_at` of the token the current connection was opened with.
    token_expires_at: SystemTime,
    /// The same moment on the reactor's clock.
    expires: Instant,
    /// This session's place in the renewal window, in `[0, 1)`.
    jitter: f64,
    /// When the next renewal attempt is due; `None`: none is (no newer token yet, or too late).
    due: Option<Instant>,
    /// Failed attempts since the last success.
    failures: u32,
}

impl Schedule {
    /// A session connected with a token expiring at `token_expires_at` (`expires` on the
    /// reactor's clock); `jitter` is clamped into `[0, 1)`.
    pub fn new(token_expires_at: SystemTime, expires: Instant, jitter: f64) -> Schedule {
        Schedule {
            token_expires_at,
            expires,
            jitter: if jitter.is_finite() {
                jitter.clamp(0.0, 0.999)
            } else {
                0.0
            },
            due: None,
            failures: 0,
        }
    }

    /// The shard holds a token expiring at `newest`: schedule a renewal if it is newer than
    /// the session's and none is scheduled.
    pub fn offered(&mut self, newest: SystemTime, now: Instant) {
        if self.due.is_some() || self.failures > 0 || newest <= self.token_expires_at {
            return;
        }
        let left = self.expires.saturating_duration_since(now);
        if !left.is_zero() {
            self.due = Some(now + (left / 2).mul_f64(self.jitter));
        }
    }

    /// When the next attempt is due (`None`: wait for a newer token).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|at| at <= now)
    }

    /// The connection was replaced by one opened with a token expiring at `token_expires_at`.
    pub fn renewed(&mut self, token_expires_at: SystemTime, expires: Instant) {
        self.token_expires_at = token_expires_at;
        self.expires = expires;
        self.due = None;
        self.failures = 0;
    }

    /// An attempt failed at `now`: the next one is due after a backoff within half the time
    /// left, or never (too close to the expiry).
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let backoff = RETRY_START
            .saturating_mul(1 << (self.failures - 1).min(6))
            .min(RETRY_MAX);
        let half_left = self.expires.saturating_duration_since(now) / 2;
        let delay = backoff.min(half_left);
        self.due = (delay >= RETRY_MIN).then(|| now + delay);
    }

    /// Failed attempts since the last success.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What a session carries across a connection switch: the device's requests not yet
/// answered (to send again), the hub filters it subscribed to (to subscribe again), and
/// which C2D packet ids belong to a connection that is gone (whose PUBACKs are dropped).
#[derive(Debug)]
pub struct Carry {
    /// Device requests forwarded and not yet answered, by packet id: (order sent, the
    /// encoded packet to send again; a PUBLISH with DUP set).
    inflight: HashMap<u16, (u64, Bytes)>,
    next_seq: u64,
    /// At most this many requests are kept (the listener's Receive Maximum).
    capacity: usize,
    /// Hub filters the device subscribed to (its SUBSCRIBEs as forwarded), with the QoS asked.
    filters: Vec<(Bytes, QoS)>,
    /// Packet ids of the hub's QoS 1 PUBLISHes on the current connection the device has not
    /// acknowledged yet.
    downlink_unacked: HashSet<u16>,
    /// The same, for connections that are gone: the device's PUBACKs for them are dropped.
    stale: HashSet<u16>,
}

impl Carry {
    /// Keep at most `capacity` unanswered requests (at least one).
    pub fn new(capacity: u16) -> Carry {
        Carry {
            inflight: HashMap::new(),
            next_seq: 0,
            capacity: usize::from(capacity.max(1)),
            filters: Vec::new(),
            downlink_unacked: HashSet::new(),
            stale: HashSet::new(),
        }
    }

    /// Whether as many requests are unanswered as may be kept: the device is not read on.
    pub fn is_full(&self) -> bool {
        self.inflight.len() >= self.capacity
    }

    /// Device requests forwarded and not yet answered.
    #[cfg(test)]
    pub fn unanswered(&self) -> usize {
        self.inflight.len()
    }

    /// A device packet, as translated for the hub, about to be sent upstream as `version`.
    /// `false`: do not send it (a PUBACK for a C2D message of a connection that is gone).
    pub fn uplink(&mut self, packet: &Packet, version: ProtocolVersion) -> bool {
        let id = match packet {
            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                let Some(id) = p.packet_id else { return true };
                let mut again = p.clone();
                again.dup = true;
                self.keep(id.get(), &Packet::Publish(again), version);
                return true;
            }
            Packet::Subscribe(s) => {
                for sub in &s.subscriptions {
                    self.filters.retain(|(f, _)| f != &sub.filter);
                    self.filters.push((sub.filter.clone(), sub.options.qos));
                }
                s.packet_id
            }
            Packet::Unsubscribe(u) => {
                self.filters.retain(|(f, _)| !u.filters.contains(f));
                u.packet_id
            }
            Packet::PubAck(r) => {
                if self.stale.remove(&r.packet_id.get()) {
                    return false;
                }
                self.downlink_unacked.remove(&r.packet_id.get());
                return true;
            }
            _ => return true,
        };
        self.keep(id.get(), packet, version);
        true
    }

    fn keep(&mut self, id: u16, packet: &Packet, version: ProtocolVersion) {
        let mut bytes = BytesMut::new();
        // What does not encode is not sent either (the driver ends the session).
        if mqtt::encode(packet, version, &mut bytes).is_err() {
            return;
        }
        // A device's own resend of a packet id keeps its first place.
        let seq = match self.inflight.get(&id) {
            Some((seq, _)) => *seq,
            None => {
                self.next_seq += 1;
                self.next_seq
            }
        };
        self.inflight.insert(id, (seq, bytes.freeze()));
    }

    /// A packet from the hub on the current connection (before translation).
    pub fn downlink(&mut self, packet: &Packet) {
        match packet {
            Packet::PubAck(r) | Packet::PubRec(r) => {
                self.inflight.remove(&r.packet_id.get());
            }
            Packet::SubAck(s) => {
                self.inflight.remove(&s.packet_id.get());
            }
            Packet::UnsubAck(u) => {
                self.inflight.remove(&u.packet_id.get());
            }
            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                if let Some(id) = p.packet_id {
                    // The new connection reuses an id: the device's next PUBACK for it is
                    // this connection's.
                    self.stale.remove(&id.get());
                    self.downlink_unacked.insert(id.get());
                }
            }
            _ => {}
        }
    }

    /// The hub filters to subscribe again on a new connection, with the QoS the device asked.
    pub fn subscriptions(&self) -> &[(Bytes, QoS)] {
        &self.filters
    }

    /// Switch to a new connection: the C2D messages of the old one become stale, and the
    /// unanswered requests are returned, in the order the device sent them, to be sent again
    /// (they stay kept until the new connection answers them).
    pub fn switch(&mut self) -> Vec<Bytes> {
        self.stale.extend(self.downlink_unacked.drain());
        let mut again: Vec<(u64, Bytes)> = self.inflight.values().cloned().collect();
        again.sort_unstable_by_key(|(seq, _)| *seq);
        again.into_iter().map(|(_, bytes)| bytes).collect()
    }
}

/// Whether the device packet starting `buf` (its fixed header's first byte) is one a [`Carry`]
/// keeps until the hub answers it: a QoS 1/2 PUBLISH, a SUBSCRIBE or an UNSUBSCRIBE. At the
/// bound ([`Carry::is_full`]) such a packet waits; any other (PINGREQ, PUBACK, DISCONNECT)
/// still passes, so a device with the Receive Maximum in flight still gets its PINGRESP.
pub fn kept_until_answered(buf: &[u8]) -> bool {
    buf.first().is_some_and(|&b| match b >> 4 {
        3 => (b >> 1) & 0b11 != 0,
        8 | 10 => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mqtt::{
        DecodeLimits, Decoded, Properties, PubResponse, Publish, Sender, SubAck, Subscribe,
        Subscription, SubscriptionOptions, Unsubscribe,
    };
    use std::num::NonZeroU16;

    const V: ProtocolVersion = ProtocolVersion::V311;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    fn publish(n: u16, qos: QoS, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(b"devices/meter/messages/events/"),
            packet_id: (qos != QoS::AtMostOnce).then(|| id(n)),
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        })
    }

    fn decode(bytes: &Bytes) -> Packet {
        let mut buf = BytesMut::from(&bytes[..]);
        let limits = DecodeLimits {
            max_packet_size: 1 << 20,
        };
        match mqtt::decode_packet(&mut buf, V, Sender::Client, &limits) {
            Ok(Decoded::Complete(p)) => p,
            other => panic!("kept bytes do not decode: {other:?}"),
        }
    }

    fn subscribe(n: u16, filters: &[&'static [u8]]) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: id(n),
            properties: Properties::default(),
            subscriptions: filters
                .iter()
                .map(|f| Subscription {
                    filter: Bytes::from_static(f),
                    options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                })
                .collect(),
        })
    }

    #[test]
    fn unacknowledged_qos1_publishes_are_resent_in_order_with_dup_and_same_id() {
        let mut c = Carry::new(16);
        for (n, payload) in [(5, &b"a"[..]), (2, b"b"), (9, b"c")] {
            assert!(c.uplink(&publish(n, QoS::AtLeastOnce, payload), V));
        }
        assert!(
            c.uplink(&publish(0, QoS::AtMostOnce, b"q0"), V),
            "QoS 0 goes"
        );
        c.downlink(&Packet::PubAck(PubResponse::success(id(2))));
        assert_eq!(c.unanswered(), 2);
        let again: Vec<Packet> = c.switch().iter().map(decode).collect();
        let got: Vec<(u16, bool, Bytes)> = again
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.packet_id.map_or(0, |i| i.get()), p.dup, p.payload),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (5, true, Bytes::from_static(b"a")),
                (9, true, Bytes::from_static(b"c"))
            ]
        );
        // Still kept until the new connection answers them.
        assert_eq!(c.unanswered(), 2);
        c.downlink(&Packet::PubAck(PubResponse::success(id(5))));
        c.downlink(&Packet::PubAck(PubResponse::success(id(9))));
        assert!(c.switch().is_empty());
    }

    #[test]
    fn a_device_resend_keeps_its_first_place() {
        let mut c = Carry::new(16);
        c.uplink(&publish(1, QoS::AtLeastOnce, b"first"), V);
        c.uplink(&publish(2, QoS::AtLeastOnce, b"second"), V);
        c.uplink(&publish(1, QoS::AtLeastOnce, b"first"), V);
        let ids: Vec<u16> = c
            .switch()
            .iter()
            .map(|b| match decode(b) {
                Packet::Publish(p) => p.packet_id.map_or(0, |i| i.get()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn the_kept_set_is_bounded_by_the_receive_maximum() {
        let mut c = Carry::new(2);
        c.uplink(&publish(1, QoS::AtLeastOnce, b"x"), V);
        assert!(!c.is_full());
        c.uplink(&publish(2, QoS::AtLeastOnce, b"x"), V);
        assert!(c.is_full(), "the device is not read on");
        c.downlink(&Packet::PubAck(PubResponse::success(id(1))));
        assert!(!c.is_full());
    }

    #[test]
    fn at_the_bound_only_what_would_be_kept_waits() {
        let first = |p: &Packet| {
            let mut b = BytesMut::new();
            mqtt::encode(p, V, &mut b).expect("encode");
            b.freeze()
        };
        assert!(kept_until_answered(&first(&publish(
            1,
            QoS::AtLeastOnce,
            b"x"
        ))));
        assert!(kept_until_answered(&first(&publish(
            1,
            QoS::ExactlyOnce,
            b"x"
        ))));
        assert!(kept_until_answered(&first(&subscribe(2, &[b"a"]))));
        assert!(!kept_until_answered(&first(&publish(
            0,
            QoS::AtMostOnce,
            b"x"
        ))));
        assert!(!kept_until_answered(&first(&Packet::PingReq)));
        let puback = Packet::PubAck(PubResponse::success(id(3)));
        assert!(!kept_until_answered(&first(&puback)));
        assert!(!kept_until_answered(&[]));
    }

    #[test]
    fn subscriptions_are_kept_for_the_new_connection_and_pending_ones_resent() {
        let mut c = Carry::new(16);
        c.uplink(
            &subscribe(3, &[b"$iothub/twin/res/#", b"$iothub/methods/POST/#"]),
            V,
        );
        // Unanswered at the switch: sent again.
        let again = c.switch();
        assert_eq!(again.len(), 1);
        assert!(matches!(decode(&again[0]), Packet::Subscribe(s) if s.packet_id == id(3)));
        c.downlink(&Packet::SubAck(SubAck {
            packet_id: id(3),
            properties: Properties::default(),
            reason_codes: vec![],
        }));
        c.uplink(
            &Packet::Unsubscribe(Unsubscribe {
                packet_id: id(4),
                properties: Properties::default(),
                filters: vec![Bytes::from_static(b"$iothub/methods/POST/#")],
            }),
            V,
        );
        assert_eq!(
            c.subscriptions(),
            &[(Bytes::from_static(b"$iothub/twin/res/#"), QoS::AtLeastOnce)]
        );
    }

    #[test]
    fn a_puback_for_a_c2d_message_of_the_old_connection_is_dropped() {
        let mut c = Carry::new(16);
        let c2d = |n| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Bytes::from_static(b"devices/meter/messages/devicebound/"),
                packet_id: Some(id(n)),
                properties: Properties::default(),
                payload: Bytes::from_static(b"cmd"),
            })
        };
        let puback = |n| Packet::PubAck(PubResponse::success(id(n)));
        c.downlink(&c2d(7));
        c.downlink(&c2d(8));
        assert!(c.uplink(&puback(7), V), "acked on its own connection");
        c.switch();
        assert!(
            !c.uplink(&puback(8), V),
            "id 8 belonged to the old connection"
        );
        assert!(c.uplink(&puback(8), V), "only once");
        // The new connection delivers with an id the old one had left unacknowledged.
        c.downlink(&c2d(9));
        c.switch();
        c.downlink(&c2d(9));
        assert!(c.uplink(&puback(9), V), "9 is the new connection's now");
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn renewal_waits_for_a_newer_token_and_is_placed_by_the_jitter_in_the_first_half() {
        let base = Instant::now();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        // The token expires 10 s after `base`.
        let mut s = Schedule::new(t0, at(base, 10_000), 0.5);
        s.offered(t0, at(base, 8_000));
        assert_eq!(s.due(), None, "the same token: nothing to do");
        s.offered(t0 + Duration::from_secs(10), at(base, 8_000));
        // 2 s left: the window is the first 1 s of it, the jitter puts this one halfway.
        assert_eq!(s.due(), Some(at(base, 8_500)));
        assert!(!s.is_due(at(base, 8_499)));
        assert!(s.is_due(at(base, 8_500)));
        // A later token does not move a scheduled renewal.
        s.offered(t0 + Duration::from_secs(20), at(base, 8_100));
        assert_eq!(s.due(), Some(at(base, 8_500)));
        s.renewed(t0 + Duration::from_secs(10), at(base, 20_000));
        assert_eq!(s.due(), None);
        let mut zero = Schedule::new(t0, at(base, 10_000), 0.0);
        zero.offered(t0 + Duration::from_secs(1), at(base, 8_000));
        assert_eq!(zero.due(), Some(at(base, 8_000)), "jitter 0: at once");
        let mut late = Schedule::new(t0, at(base, 10_000), 0.9);
        late.offered(t0 + Duration::from_secs(1), at(base, 10_000));
        assert_eq!(late.due(), None, "expired: nothing to renew");
    }

    #[test]
    fn a_failed_renewal_is_retried_with_backoff_within_half_the_time_left_then_given_up() {
        let base = Instant::now();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut s = Schedule::new(t0, at(base, 60_000), 0.0);
        s.offered(t0 + Duration::from_secs(1), base);
        s.failed(base);
        assert_eq!(s.due(), Some(at(base, 1_000)));
        s.failed(at(base, 1_000));
        assert_eq!(s.due(), Some(at(base, 3_000)), "doubled");
        // A newer token while retrying does not reschedule.
        s.offered(t0 + Duration::from_secs(2), at(base, 3_000));
        assert_eq!(s.due(), Some(at(base, 3_000)));
        s.failed(at(base, 57_000));
        assert_eq!(s.due(), Some(at(base, 58_500)), "half of the 3 s left");
        s.failed(at(base, 59_900));
        assert_eq!(s.due(), None, "50 ms before expiry: given up");
        assert_eq!(s.failures(), 4);
    }
}
