//! The device side of `max_publish_rate`: what becomes of a device PUBLISH whose pinned link
//! has no turn free under its rate limit — sent at once, **spilled** to another link of the same
//! destination on the shard, **waited** for (the device is not read meanwhile), or **refused**
//! (5.0: PUBACK/PUBREC 0x97 Quota exceeded; QoS 0: dropped; 3.1.1 QoS 1/2: the connection is
//! closed unacknowledged, as for any upstream refusal) — and the per-device state that carries
//! it out (extra link registrations for spilled messages, the time the device is held until).
//!
//! The rules (docs/decisions/0017-aggregate-publish-rate.md):
//! - a message whose link may send it now goes now (not counted);
//! - else, if the device has nothing unacknowledged (so no earlier QoS 1/2 message of its own
//!   can be overtaken) and another up link of the destination may send now, it goes there;
//! - else, if its wait is within the device's bound (half its keep-alive, at most
//!   [`MAX_RATE_WAIT`]), it waits in its link's queue and the device is not read until its turn
//!   (backpressure: at most one rate-waiting message per device, no unbounded buffer);
//! - else it is refused.
//!
//! What this module does not do: pace anything (the link's `PublishPacer` does), read a clock
//! (time is passed in), or write to the device (the caller answers a refusal).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::upstream::link_registry::LinkSet;
use crate::upstream::mqtt_link::{Link, RateOutcomes, SessionKey, SessionMailbox};

/// Longest a device message waits for its link's rate limit, whatever the device's keep-alive.
pub(super) const MAX_RATE_WAIT: Duration = Duration::from_secs(5);

/// The longest a device with CONNECT keep-alive `keep_alive_secs` is held for the rate limit:
/// half its keep-alive (it expects our PINGRESP within its keep-alive, and we do not read its
/// PINGREQ while holding it), at most [`MAX_RATE_WAIT`]; a device without keep-alive gets the
/// cap.
pub(super) fn wait_bound(keep_alive_secs: u16) -> Duration {
    match keep_alive_secs {
        0 => MAX_RATE_WAIT,
        secs => (Duration::from_secs(u64::from(secs)) / 2).min(MAX_RATE_WAIT),
    }
}

/// What to do with one device PUBLISH under the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RateDecision {
    /// The pinned link may send it now.
    Send,
    /// Send it on the spill candidate with this index (in the order given to [`decide`]).
    Spill(usize),
    /// Queue it on the pinned link; it goes after this long (hold the device until then).
    Wait(Duration),
    /// Its wait would exceed the device's bound.
    Refuse,
}

/// Decide for one PUBLISH. `pinned_delay`: how long it would wait on the device's own link;
/// `may_spill`: the device has nothing unacknowledged; `spill_delays`: the wait on each other
/// up link of the destination; `bound`: the device's [`wait_bound`]. Pure.
pub(super) fn decide(
    pinned_delay: Duration,
    may_spill: bool,
    spill_delays: impl IntoIterator<Item = Duration>,
    bound: Duration,
) -> RateDecision {
    if pinned_delay.is_zero() {
        return RateDecision::Send;
    }
    if may_spill {
        if let Some(i) = spill_delays.into_iter().position(|d| d.is_zero()) {
            return RateDecision::Spill(i);
        }
    }
    if pinned_delay <= bound {
        RateDecision::Wait(pinned_delay)
    } else {
        RateDecision::Refuse
    }
}

/// Rate-limit state of one device session whose destination has `max_publish_rate`. Boxed in
/// the device (most destinations have no limit).
pub(super) struct DeviceRate {
    /// The destination's links on this shard (the pinned one among them).
    set: Rc<LinkSet>,
    /// Where this device's acknowledgements arrive, for registrations on spill links.
    mailbox: Rc<SessionMailbox>,
    bound: Duration,
    outcomes: Rc<RateOutcomes>,
    /// The device is not read before this: its last message waits for its link's turn.
    pub(super) held_until: Option<Instant>,
    /// Registrations of this session on links other than its pinned one (made on the first
    /// spill there; undone when the session ends).
    spill_keys: Vec<(Rc<Link>, SessionKey)>,
}

impl DeviceRate {
    pub(super) fn new(
        set: Rc<LinkSet>,
        mailbox: Rc<SessionMailbox>,
        keep_alive_secs: u16,
        outcomes: Rc<RateOutcomes>,
    ) -> Self {
        DeviceRate {
            set,
            mailbox,
            bound: wait_bound(keep_alive_secs),
            outcomes,
            held_until: None,
            spill_keys: Vec::new(),
        }
    }

    /// Whether the device is held (not read) at `now`.
    pub(super) fn holds(&self, now: Instant) -> Option<Instant> {
        self.held_until.filter(|&t| now < t)
    }

    /// Route one PUBLISH handed over at `now` from a device pinned to `pinned` (registered
    /// there as `key`), with nothing unacknowledged if `idle`. `Some((link, key))`: hand it
    /// to that link under that session key (counted as waited or spilled when it is not the
    /// plain case); `None`: refused (counted), the caller answers the device.
    pub(super) fn route(
        &mut self,
        now: Instant,
        pinned: &Rc<Link>,
        key: SessionKey,
        idle: bool,
    ) -> Option<(Rc<Link>, SessionKey)> {
        let pinned_delay = pinned.core.borrow().publish_delay(now);
        let candidates: Vec<&Rc<Link>> = if idle && !pinned_delay.is_zero() {
            self.set
                .links()
                .iter()
                .filter(|l| !Rc::ptr_eq(l, pinned) && !l.is_retired())
                .filter(|l| l.core.borrow().is_connected())
                .collect()
        } else {
            Vec::new()
        };
        let delays = candidates
            .iter()
            .map(|l| l.core.borrow().publish_delay(now));
        match decide(pinned_delay, idle, delays, self.bound) {
            RateDecision::Send => Some((pinned.clone(), key)),
            RateDecision::Wait(d) => {
                bump(&self.outcomes.waited);
                self.held_until = Some(now + d);
                Some((pinned.clone(), key))
            }
            RateDecision::Spill(i) => {
                let link = candidates.get(i).map(|l| Rc::clone(l))?;
                bump(&self.outcomes.spilled);
                let key = self.key_on(&link);
                Some((link, key))
            }
            RateDecision::Refuse => {
                bump(&self.outcomes.refused);
                None
            }
        }
    }

    /// This session's key on spill link `link`, registering it there the first time.
    fn key_on(&mut self, link: &Rc<Link>) -> SessionKey {
        if let Some((_, key)) = self.spill_keys.iter().find(|(l, _)| Rc::ptr_eq(l, link)) {
            return *key;
        }
        let key = link.with_core(|c| c.register(self.mailbox.clone()));
        self.spill_keys.push((link.clone(), key));
        key
    }
}

impl Drop for DeviceRate {
    fn drop(&mut self) {
        for (link, key) in &self.spill_keys {
            link.with_core(|c| c.unregister(*key));
        }
    }
}

fn bump(c: &std::cell::Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn free_link_sends_at_once_whatever_else() {
        assert_eq!(decide(Duration::ZERO, false, [], MS), RateDecision::Send);
        assert_eq!(
            decide(Duration::ZERO, true, [Duration::ZERO], MS),
            RateDecision::Send
        );
    }

    #[test]
    fn spills_only_when_idle_and_another_link_is_free() {
        let bound = 500 * MS;
        // Idle device, second candidate free: spilled there.
        assert_eq!(
            decide(50 * MS, true, [10 * MS, Duration::ZERO], bound),
            RateDecision::Spill(1)
        );
        // Something unacknowledged: it would overtake it; waits instead.
        assert_eq!(
            decide(50 * MS, false, [Duration::ZERO], bound),
            RateDecision::Wait(50 * MS)
        );
        // No free link: waits on its own.
        assert_eq!(
            decide(50 * MS, true, [10 * MS], bound),
            RateDecision::Wait(50 * MS)
        );
    }

    #[test]
    fn a_wait_over_the_bound_is_refused() {
        assert_eq!(
            decide(500 * MS, false, [], 500 * MS),
            RateDecision::Wait(500 * MS)
        );
        assert_eq!(decide(501 * MS, false, [], 500 * MS), RateDecision::Refuse);
        assert_eq!(decide(501 * MS, true, [MS], 500 * MS), RateDecision::Refuse);
    }

    #[test]
    fn the_bound_is_half_the_keep_alive_capped() {
        assert_eq!(wait_bound(0), MAX_RATE_WAIT);
        assert_eq!(wait_bound(1), 500 * MS);
        assert_eq!(wait_bound(4), Duration::from_secs(2));
        assert_eq!(wait_bound(60), MAX_RATE_WAIT);
        assert_eq!(wait_bound(u16::MAX), MAX_RATE_WAIT);
    }
}

/// [`DeviceRate::route`] over real link cores on a virtual clock (no reactor, no sockets).
#[cfg(test)]
mod route_tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::proto::mqtt::ProtocolVersion;
    use crate::upstream::mqtt_link::{AggregateCounters, LinkCore, PublishPacer};

    fn links(n: usize, rate: u32) -> Vec<Rc<Link>> {
        let counters = Rc::new(AggregateCounters::default());
        (0..n)
            .map(|_| {
                let mut core = LinkCore::new(ProtocolVersion::V311, 16, counters.clone());
                core.set_publish_rate(NonZeroU32::new(rate));
                Link::new(core)
            })
            .collect()
    }

    fn qos0() -> crate::proto::mqtt::Publish {
        crate::proto::mqtt::Publish {
            dup: false,
            qos: crate::proto::mqtt::QoS::AtMostOnce,
            retain: false,
            topic: bytes::Bytes::from_static(b"t"),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"p"),
        }
    }

    /// Route one QoS 0 message at `now` and hand it to the link chosen, as the device does.
    fn send(
        rate: &mut DeviceRate,
        now: Instant,
        pinned: &Rc<Link>,
        key: SessionKey,
        idle: bool,
    ) -> Option<Rc<Link>> {
        let (link, _) = rate.route(now, pinned, key, idle)?;
        link.with_core(|c| c.publish(now, qos0(), None));
        Some(link)
    }

    #[test]
    fn send_then_spill_then_wait_then_refuse() {
        let t0 = Instant::now();
        let all = links(2, 10);
        for l in &all {
            l.with_core(|c| c.on_connected(t0, None));
        }
        let (pinned, other) = (&all[0], &all[1]);
        let mailbox = Rc::new(SessionMailbox::default());
        let key = pinned.with_core(|c| c.register(mailbox.clone()));
        let outcomes = Rc::new(RateOutcomes::default());
        let set = Rc::new(LinkSet::new(all.clone()));
        // Keep-alive 1 s: bound 500 ms.
        let mut rate = DeviceRate::new(set, mailbox, 1, outcomes.clone());

        // Free: the pinned link.
        let to = send(&mut rate, t0, pinned, key, true).expect("sent");
        assert!(Rc::ptr_eq(&to, pinned));
        // Pinned has no turn; idle device, other link free: spilled (registered there once).
        let to = send(&mut rate, t0, pinned, key, true).expect("spilled");
        assert!(Rc::ptr_eq(&to, other));
        assert_eq!(other.core.borrow().session_count(), 1);
        assert_eq!(outcomes.spilled.get(), 1);
        // Both busy: waits one interval on its own link, and is held until then.
        let to = send(&mut rate, t0, pinned, key, true).expect("waits");
        assert!(Rc::ptr_eq(&to, pinned));
        let interval = PublishPacer::interval(NonZeroU32::new(10).expect("nz"));
        assert_eq!(rate.holds(t0), Some(t0 + interval));
        assert_eq!(rate.holds(t0 + interval), None);
        assert_eq!(outcomes.waited.get(), 1);
        // Not idle (something unacknowledged): never spilled, waits behind what is queued.
        assert!(send(&mut rate, t0, pinned, key, false).is_some());
        assert_eq!(outcomes.waited.get(), 2);
        // Two wait now (waits of 1 and 2 intervals); each further one waits an interval more.
        let mut refused_at = None;
        for n in 0..10 {
            if send(&mut rate, t0, pinned, key, false).is_none() {
                refused_at = Some(n);
                break;
            }
        }
        // Waits of 3 and 4 intervals pass; 5 intervals (500 ms + 5 ns) is over the bound.
        assert_eq!(refused_at, Some(2));
        assert_eq!(outcomes.refused.get(), 1);
        drop(rate);
        assert_eq!(
            other.core.borrow().session_count(),
            0,
            "spill registration undone"
        );
    }
}
