//! [`PublishPacer`]: the per-link PUBLISH rate limit of aggregate mode (`max_publish_rate`),
//! with no IO and no clock (time is passed in).
//!
//! The cloud (AWS IoT Core: 100 PUBLISH per second per connection) measures a sliding second, so
//! a token bucket refilling N per second with a burst of N would be wrong: it lets N go at the
//! end of one second and N more at the start of the next, 2N in one window. The pacer spaces
//! PUBLISHes instead: after a PUBLISH at `t`, the next may go at `t + interval`, with
//! `interval = floor((1 s + JITTER_GUARD) / N) + 1 ns`, so `N × interval > 1 s + JITTER_GUARD`.
//!
//! **Invariant** (proved in [`PublishPacer::interval`]'s doc, tested below): in any *closed*
//! window of one second plus `JITTER_GUARD` at most N PUBLISHes are allowed, so the cloud,
//! which sees them after network and scheduling jitter, counts at most N in its sliding second
//! as long as no PUBLISH reaches it more than `JITTER_GUARD` later, relative to the one N
//! before it, than that one did. Spacing by exactly `1 s / N` left a margin of N nanoseconds:
//! measured against the AWS contract front at its own limit, about one burst in ten was
//! throttled (docs/decisions/0018-publish-pacing-jitter-guard.md). The cost: the sustained rate
//! is `N / (1 + JITTER_GUARD / 1 s)` (about 5 % under N), and latency inside a burst (b
//! messages take `(b - 1) × interval` to go out).
//!
//! What this module does not do: queue anything, read a clock, or decide what happens to a
//! message that would wait (the link core queues, the device side decides: see
//! `flows::mqtt_aggregate`).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// How much later than the one N before it a PUBLISH may reach the cloud without the cloud
/// counting N + 1 in a sliding second (see the module doc).
pub const JITTER_GUARD: Duration = Duration::from_millis(50);

/// Spaces the PUBLISHes of one link so that no window of one second plus `JITTER_GUARD`
/// holds more than N.
#[derive(Debug, Clone, Copy)]
pub struct PublishPacer {
    interval: Duration,
    /// Earliest time the next PUBLISH may go (`None`: now).
    next: Option<Instant>,
}

impl PublishPacer {
    /// A pacer allowing `per_second` PUBLISHes in any window of one second plus
    /// `JITTER_GUARD`.
    pub fn new(per_second: NonZeroU32) -> Self {
        PublishPacer {
            interval: Self::interval(per_second),
            next: None,
        }
    }

    /// The spacing for `per_second`: `floor(W / N) + 1` nanoseconds, `W` = 1 s +
    /// `JITTER_GUARD` in nanoseconds.
    ///
    /// Proof of the invariant: let `k` PUBLISHes fall in a closed window `[a, a + W]`. Each
    /// follows the previous by at least `interval`, so the window spans at least
    /// `(k - 1) × interval`. Since `N × interval ≥ N × (W / N + ε) > W` (the floor loses
    /// less than 1 ns, the `+ 1` adds a whole one), `k ≥ N + 1` would need a span over W.
    /// Hence `k ≤ N`; and a fortiori in any one-second window.
    pub fn interval(per_second: NonZeroU32) -> Duration {
        let window = 1_000_000_000 + JITTER_GUARD.as_nanos() as u64;
        Duration::from_nanos(window / u64::from(per_second.get()) + 1)
    }

    /// Whether a PUBLISH may go at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Record a PUBLISH sent at `now` (the caller checked [`PublishPacer::ready`]).
    pub fn sent(&mut self, now: Instant) {
        self.next = Some(now + self.interval);
    }

    /// When the next PUBLISH may go, if that is later than `now`.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        self.next.filter(|&next| next > now)
    }

    /// How long a PUBLISH handed over at `now` waits for its turn when `ahead` PUBLISHes are
    /// already waiting for theirs (zero: it may go at once). A lower bound when the link has
    /// other reasons to hold it (in-flight window full, disconnected).
    pub fn delay(&self, now: Instant, ahead: usize) -> Duration {
        // The first waiting one goes when the pacer allows (or now), each further one an
        // interval later, and this one after them.
        let first = self
            .blocked_until(now)
            .map_or(Duration::ZERO, |next| next - now);
        first.saturating_add(
            self.interval
                .saturating_mul(u32::try_from(ahead).unwrap_or(u32::MAX)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    /// Largest count of `sends` (in time order) in any closed window `[t, t + 1 s]`; windows
    /// starting at a send are the worst ones. Two pointers: linear.
    fn max_in_any_second(sends: &[Instant]) -> usize {
        let mut max = 0;
        let mut end = 0;
        for (start, &t) in sends.iter().enumerate() {
            while end < sends.len() && sends[end] <= t + Duration::from_secs(1) {
                end += 1;
            }
            max = max.max(end - start);
        }
        max
    }

    /// Offer PUBLISHes at pseudo-random gaps averaging `step` (0 to 2 × `step`) for `span`
    /// (a device fleet wanting more, or less, than the link may send); the pacer lets through
    /// what it allows. Returns the send times.
    fn offer(
        pacer: &mut PublishPacer,
        t0: Instant,
        step: Duration,
        span: Duration,
    ) -> Vec<Instant> {
        let mut sends = Vec::new();
        let mut t = t0;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while t < t0 + span {
            if pacer.ready(t) {
                pacer.sent(t);
                sends.push(t);
            }
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let gap = (step.as_nanos() as u64).saturating_mul(2) * (x >> 33) / (1 << 31);
            t += Duration::from_nanos(gap);
        }
        sends
    }

    #[test]
    fn no_one_second_window_holds_more_than_the_rate() {
        let t0 = Instant::now();
        for rate in [1, 3, 7, 20, 100, 1000, 99_999] {
            for step_ns in [10_007, 1_000_000, 9_999_999, 50_000_000, 50_000_001] {
                let mut p = PublishPacer::new(nz(rate));
                let step = Duration::from_nanos(step_ns);
                // At most ~200 000 offers, over 3 to 30 seconds.
                let span = (step * 200_000).clamp(Duration::from_secs(3), Duration::from_secs(30));
                let sends = offer(&mut p, t0, step, span);
                let max = max_in_any_second(&sends);
                assert!(
                    max <= rate as usize,
                    "rate {rate}, offers every {step_ns} ns: {max} in one second"
                );
            }
        }
    }

    #[test]
    fn the_rate_is_reached_when_offered_enough() {
        // 20/s offered every millisecond for 3 s: 20 in a second (the limiter is not
        // stricter than asked, but for the jitter guard: 20 per 1.05 s sustained).
        let t0 = Instant::now();
        let mut p = PublishPacer::new(nz(20));
        let sends = offer(&mut p, t0, Duration::from_millis(1), Duration::from_secs(3));
        // 20 spaced 52.5 ms apart span 997.5 ms: a second holds 20 when the offers fall right,
        // 19 otherwise.
        let max = max_in_any_second(&sends);
        assert!((19..=20).contains(&max), "{max} in one second");
        assert!(sends.len() >= 57, "{} sends in 3 s", sends.len());
    }

    #[test]
    fn exactly_n_intervals_exceed_one_second_and_the_guard() {
        let window = Duration::from_secs(1) + JITTER_GUARD;
        for rate in [1, 3, 7, 20, 100, 1_000_000] {
            let i = PublishPacer::interval(nz(rate));
            assert!(i * rate > window, "rate {rate}");
            // And no longer than needed: one nanosecond less would not be safe.
            assert!(
                (i - Duration::from_nanos(1)) * rate <= window,
                "rate {rate}"
            );
        }
    }

    #[test]
    fn delay_counts_what_waits_ahead() {
        let t0 = Instant::now();
        let mut p = PublishPacer::new(nz(10)); // interval 105 ms + 1 ns
        let i = PublishPacer::interval(nz(10));
        assert_eq!(p.delay(t0, 0), Duration::ZERO);
        assert!(p.ready(t0));
        p.sent(t0);
        assert!(!p.ready(t0 + Duration::from_millis(50)));
        assert_eq!(p.delay(t0, 0), i);
        assert_eq!(
            p.delay(t0 + Duration::from_millis(40), 0),
            i - Duration::from_millis(40)
        );
        // Two already waiting: the third goes two intervals after the first.
        assert_eq!(p.delay(t0, 2), i * 3);
        assert_eq!(p.blocked_until(t0), Some(t0 + i));
        assert_eq!(p.blocked_until(t0 + i), None);
        assert!(p.ready(t0 + i));
        // Idle for long: the next goes at once, and two waiting (not yet paced) cost one
        // interval each.
        assert_eq!(p.delay(t0 + Duration::from_secs(5), 0), Duration::ZERO);
        assert_eq!(p.delay(t0 + Duration::from_secs(5), 2), i * 2);
    }
}
