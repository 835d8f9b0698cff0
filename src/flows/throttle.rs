//! [`LogThrottle`]: keeps a fault that repeats per connection or per request (accept errors,
//! refusals at a connection cap, gateway errors during an outage) to one log line per interval,
//! with a count of what it held back. Shard-local (`Cell`s, no locks); time is passed in.
//!
//! What this module does not do: decide the level or the text of the line (the caller logs).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a fault that repeats per request or connection is logged at info/warn (the
/// interval of the flows' and the accept loop's throttles).
pub const LOG_THROTTLE: Duration = Duration::from_secs(10);

/// One log line per `interval` for a fault that repeats: [`LogThrottle::allow`] says whether
/// to log now and how many occurrences were held back since the last line.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    next: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval`.
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            next: Cell::new(None),
            held_back: Cell::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may be logged at `now`; `None` (and
    /// the occurrence counted) otherwise.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        if self.next.get().is_some_and(|next| now < next) {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.next.set(Some(now + self.interval));
        Some(self.held_back.replace(0))
    }

    /// The occurrences held back since the last line, reset to zero (for a closing summary
    /// line, e.g. at shutdown).
    pub fn take_held_back(&self) -> u64 {
        self.held_back.replace(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow(start), Some(0));
        assert_eq!(t.allow(start + Duration::from_secs(1)), None);
        assert_eq!(t.allow(start + Duration::from_secs(9)), None);
        assert_eq!(t.allow(start + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(start + Duration::from_secs(11)), None);
        assert_eq!(t.take_held_back(), 1);
        assert_eq!(t.take_held_back(), 0);
        assert_eq!(t.allow(start + Duration::from_secs(20)), Some(0));
    }
}
