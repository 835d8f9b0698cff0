//! Recognising retransmitted Accounting-Requests, so each is applied once and answered every time.
//!
//! A NAS that hears no Accounting-Response in time sends the same request again: same
//! Identifier, same Request Authenticator (the packet is unchanged). RFC 2865 §3, Identifier:
//! "The RADIUS server can detect a duplicate request if it has the same client source IP address
//! and source UDP port and Identifier within a short span of time"; the key here adds the Request
//! Authenticator, so a reused Identifier with new content is not mistaken for a duplicate (RFC
//! 5080 recommends the same, section number not checked here). Issue #11: "duplicates (same
//! Identifier and authenticator from the same client) are answered and applied once". The
//! response to a duplicate is the same bytes as the first one
//! ([`super::encode_accounting_response`] is a pure function of the request), so nothing but the
//! key needs remembering.
//!
//! [`DuplicateDetector`] is pure: time is passed in, nothing is sent. It remembers each key for
//! `window` from the moment it was first seen and never more than `capacity` keys; when full, the
//! oldest key is forgotten early (counted in [`DuplicateDetector::evicted_early`]): a very late
//! retransmission of it would be applied a second time, which for Start/Interim/Stop of the same
//! session re-applies the same binding.
//!
//! Feed it only requests whose authenticator verified: otherwise anyone who can send datagrams
//! could push real keys out.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::AUTHENTICATOR_LEN;

/// What identifies a request and its retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    client: SocketAddr,
    identifier: u8,
    authenticator: [u8; AUTHENTICATOR_LEN],
}

/// Whether a request was seen within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a duplicate must be answered but not applied again"]
pub enum Seen {
    /// First sighting (or the earlier one is forgotten): apply it, then answer.
    New,
    /// A retransmission of a request seen within the window: answer it, do not apply it again.
    Duplicate,
}

/// A bounded memory of recent (client, Identifier, Request Authenticator) keys with expiry on a
/// clock the caller passes in.
#[derive(Debug)]
pub struct DuplicateDetector {
    window: Duration,
    capacity: usize,
    /// The keys remembered; exactly the keys in `order`.
    keys: HashSet<Key>,
    /// The same keys, oldest first, with the time each was first seen.
    order: VecDeque<(Instant, Key)>,
    /// The latest `now` passed in: a clock that steps back is treated as standing still.
    latest: Option<Instant>,
    evicted_early: u64,
}

impl DuplicateDetector {
    /// A window of 30 s: longer than the retry schedules NASes are commonly configured with
    /// (a few retries a few seconds apart). A longer window costs memory only: an Identifier
    /// reused for a new request comes with a new authenticator, so it is never taken for a
    /// duplicate.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
    /// At 10,000 requests per second over 30 s the table would need 300,000 keys; the default
    /// bound keeps ~6 s of that rate (about 6 MB), enough for retransmissions, which come
    /// within a few seconds.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    /// A detector that remembers keys for `window`, at most `capacity` of them (at least one).
    #[must_use]
    pub fn new(window: Duration, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DuplicateDetector {
            window,
            capacity,
            keys: HashSet::new(),
            order: VecDeque::new(),
            latest: None,
            evicted_early: 0,
        }
    }

    /// Records a verified request from `client` with `identifier` and `authenticator`, received
    /// at `now`, and says whether it is new.
    pub fn observe(
        &mut self,
        client: SocketAddr,
        identifier: u8,
        authenticator: &[u8; AUTHENTICATOR_LEN],
        now: Instant,
    ) -> Seen {
        let now = match self.latest {
            Some(latest) if latest > now => latest,
            _ => now,
        };
        self.latest = Some(now);
        self.expire(now);
        let key = Key {
            client,
            identifier,
            authenticator: *authenticator,
        };
        if self.keys.contains(&key) {
            return Seen::Duplicate;
        }
        if self.order.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.keys.remove(&oldest);
                self.evicted_early += 1;
            }
        }
        self.keys.insert(key);
        self.order.push_back((now, key));
        Seen::New
    }

    /// Forgets the keys first seen `window` or longer before `now`. [`Self::observe`] does this
    /// itself; call it from a timer to give the memory back when traffic stops.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(seen, key)) = self.order.front() {
            if now.saturating_duration_since(seen) < self.window {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&key);
        }
    }

    /// Number of keys remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no key is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Keys forgotten before their window ended because the detector was full (for /metrics:
    /// non-zero means `capacity` is too small for the request rate).
    #[must_use]
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

impl Default for DuplicateDetector {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW, Self::DEFAULT_CAPACITY)
    }
}
