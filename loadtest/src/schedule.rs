//! Open-loop send schedules: when each message of one device is INTENDED to leave.
//!
//! A [`Schedule`] turns a per-device rate into a sequence of intended send offsets (from the
//! device's start), either evenly spaced ([`Arrival::Constant`]) or with exponentially distributed
//! gaps ([`Arrival::Poisson`]). The device loop sends each message at its intended time or, when
//! it is behind (a stalled answer), at once; latency is always measured from the intended time
//! ([`latency_from_intended`]), so a stall is charged to every message it delayed — the
//! coordinated-omission correction wrk2 made popular.
//!
//! Everything here is pure: no clock, no IO; randomness comes from a seeded [`SplitMix64`], so
//! runs and tests are reproducible.
//!
//! What it does NOT do: bursts, diurnal curves or rate changes during a run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the gaps between one device's messages are distributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Every gap is exactly `1 / rate`.
    Constant,
    /// Gaps are exponentially distributed with mean `1 / rate` (a Poisson process).
    Poisson,
}

/// A small, fast, seedable pseudo-random generator (SplitMix64); not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in the open interval (0, 1).
    pub fn next_open_unit(&mut self) -> f64 {
        // 53 random mantissa bits, shifted by half a step so that 0 is never returned.
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// The intended send times of one device.
#[derive(Debug, Clone)]
pub struct Schedule {
    arrival: Arrival,
    mean_gap_secs: f64,
    /// Offset of the next intended send from the device's start, in seconds.
    next_offset_secs: f64,
    rng: SplitMix64,
}

impl Schedule {
    /// A schedule of `rate_per_sec` messages per second (must be positive and finite; callers
    /// validate). `phase` in `[0, 1)` delays a constant schedule's first send by that fraction of
    /// a gap, so that devices started together interleave; a Poisson schedule draws its first gap
    /// at random instead.
    pub fn new(arrival: Arrival, rate_per_sec: f64, phase: f64, seed: u64) -> Self {
        let mean_gap_secs = 1.0 / rate_per_sec;
        let mut schedule = Self {
            arrival,
            mean_gap_secs,
            next_offset_secs: 0.0,
            rng: SplitMix64::new(seed),
        };
        schedule.next_offset_secs = match arrival {
            Arrival::Constant => mean_gap_secs * phase.clamp(0.0, 1.0),
            Arrival::Poisson => schedule.gap_secs(),
        };
        schedule
    }

    fn gap_secs(&mut self) -> f64 {
        match self.arrival {
            Arrival::Constant => self.mean_gap_secs,
            // Inverse transform sampling of the exponential distribution.
            Arrival::Poisson => -self.rng.next_open_unit().ln() * self.mean_gap_secs,
        }
    }

    /// The offset (from the device's start) at which the next message is intended to leave;
    /// advances the schedule by one message.
    pub fn next_intended(&mut self) -> Duration {
        let offset = self.next_offset_secs;
        self.next_offset_secs += self.gap_secs();
        Duration::from_secs_f64(offset)
    }
}

/// Latency of a message answered at `answered`, charged from its `intended` send time (both
/// offsets from one origin), in whole microseconds; 0 when `answered` is not later.
pub fn latency_from_intended(intended: Duration, answered: Duration) -> u64 {
    u64::try_from(answered.saturating_sub(intended).as_micros()).unwrap_or(u64::MAX)
}

/// When the message intended for `intended` actually leaves, given that the device is free
/// (its previous answer arrived) at `free_at`: on time, or at once when behind.
pub fn actual_send(intended: Duration, free_at: Duration) -> Duration {
    intended.max(free_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_gap(arrival: Arrival, rate: f64, samples: usize) -> f64 {
        let mut schedule = Schedule::new(arrival, rate, 0.0, 42);
        let first = schedule.next_intended();
        let mut last = first;
        for _ in 0..samples {
            last = schedule.next_intended();
        }
        (last - first).as_secs_f64() / samples as f64
    }

    #[test]
    fn constant_gaps_are_exact_and_phase_staggers_the_start() {
        let mut schedule = Schedule::new(Arrival::Constant, 50.0, 0.5, 1);
        assert_eq!(schedule.next_intended(), Duration::from_millis(10));
        assert_eq!(schedule.next_intended(), Duration::from_millis(30));
        assert_eq!(schedule.next_intended(), Duration::from_millis(50));
        let gap = mean_gap(Arrival::Constant, 200.0, 1000);
        assert!((gap - 0.005).abs() < 1e-9, "{gap}");
    }

    #[test]
    fn poisson_gaps_average_to_the_rate_and_vary() {
        let gap = mean_gap(Arrival::Poisson, 100.0, 100_000);
        // Standard error of the mean is 1% of the mean over 10^4 samples; 100k gives 0.3%.
        assert!((gap - 0.01).abs() < 0.0003, "mean gap {gap}");
        let mut schedule = Schedule::new(Arrival::Poisson, 100.0, 0.0, 7);
        let offsets: Vec<Duration> = (0..100).map(|_| schedule.next_intended()).collect();
        let gaps: Vec<Duration> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let short = gaps
            .iter()
            .filter(|g| **g < Duration::from_millis(5))
            .count();
        let long = gaps
            .iter()
            .filter(|g| **g > Duration::from_millis(20))
            .count();
        // P(gap < mean/2) = 39%, P(gap > 2 mean) = 13.5%: a constant schedule has neither.
        assert!(short > 15 && long > 3, "short {short} long {long}");
    }

    #[test]
    fn different_seeds_give_different_poisson_schedules() {
        let mut a = Schedule::new(Arrival::Poisson, 10.0, 0.0, 1);
        let mut b = Schedule::new(Arrival::Poisson, 10.0, 0.0, 2);
        assert_ne!(a.next_intended(), b.next_intended());
    }

    #[test]
    fn a_stalled_answer_charges_later_messages_from_their_intended_times() {
        // 100 msg/s; the first answer takes 300 ms, every later one 1 ms. Replay the device loop
        // on a virtual clock: send at max(intended, free), answer after the service time.
        let mut schedule = Schedule::new(Arrival::Constant, 100.0, 0.0, 0);
        let mut free_at = Duration::ZERO;
        let mut corrected = Vec::new();
        let mut naive = Vec::new();
        for n in 0..60 {
            let intended = schedule.next_intended();
            let sent = actual_send(intended, free_at);
            let service = if n == 0 {
                Duration::from_millis(300)
            } else {
                Duration::from_millis(1)
            };
            let answered = sent + service;
            free_at = answered;
            corrected.push(latency_from_intended(intended, answered));
            naive.push(latency_from_intended(sent, answered));
        }
        // Naively only the stalled message is slow.
        assert_eq!(naive.iter().filter(|l| **l > 100_000).count(), 1);
        // Corrected: the messages due at 10, 20, ... 290 ms waited for the stall too, the one due
        // at 10 ms for 291 ms; the backlog drains at 1 ms per message.
        assert_eq!(corrected[0], 300_000);
        assert_eq!(corrected[1], 291_000);
        assert!(corrected.iter().filter(|l| **l > 100_000).count() >= 20);
        // Once caught up, latency is back to the service time.
        assert_eq!(corrected[59], 1_000);
    }

    #[test]
    fn latency_never_goes_negative() {
        assert_eq!(
            latency_from_intended(Duration::from_secs(2), Duration::from_secs(1)),
            0
        );
    }
}
