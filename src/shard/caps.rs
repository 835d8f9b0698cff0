//! Connection caps: how many device connections may be open at once, gateway-wide
//! (`gateway.max_connections`) and per listener (`listener[].max_connections`), counted across
//! every shard. A connection over a cap is closed at accept, before it costs more than its
//! descriptor for a moment, so simgate keeps descriptors for upstream connections and its admin
//! endpoint when a flood (or a fleet reconnecting at once) arrives.
//!
//! The counts are atomics shared by the shards: touched once when a connection is accepted
//! and once when it closes, never per message. A shard-local split of the cap would need no
//! atomics, but the kernel's SO_REUSEPORT spread is uneven and one shard could refuse while
//! another has room.
//!
//! What this module does not do: pick the caps (`config` derives them from the open-file
//! limit) or close anything itself (the accept loop does).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::policy::ListenerId;
use crate::stats::CapReason;

/// Open device connections, in total and per listener, of every shard together.
#[derive(Debug)]
pub struct ConnectionCounts {
    total: AtomicUsize,
    per_listener: Box<[AtomicUsize]>,
}

impl ConnectionCounts {
    /// Counts for `listeners` listeners, all zero.
    pub fn new(listeners: usize) -> ConnectionCounts {
        ConnectionCounts {
            total: AtomicUsize::new(0),
            per_listener: (0..listeners).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Count one more connection on `listener` if neither cap is reached; otherwise count
    /// nothing and say which cap refused it. Every `Ok` must be matched by one
    /// [`ConnectionCounts::release`].
    pub fn admit(
        &self,
        listener: ListenerId,
        gateway_cap: usize,
        listener_cap: Option<usize>,
    ) -> Result<(), CapReason> {
        let Some(on_listener) = self.per_listener.get(usize::from(listener.0)) else {
            return Err(CapReason::Listener);
        };
        // Relaxed is enough: the counts order nothing else, they only bound a number.
        if self.total.fetch_add(1, Ordering::Relaxed) >= gateway_cap {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(CapReason::Gateway);
        }
        let before = on_listener.fetch_add(1, Ordering::Relaxed);
        if listener_cap.is_some_and(|cap| before >= cap) {
            on_listener.fetch_sub(1, Ordering::Relaxed);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(CapReason::Listener);
        }
        Ok(())
    }

    /// A connection admitted on `listener` closed.
    pub fn release(&self, listener: ListenerId) {
        if let Some(on_listener) = self.per_listener.get(usize::from(listener.0)) {
            on_listener.fetch_sub(1, Ordering::Relaxed);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections open now, all listeners.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_listener_caps_refuse_and_release_restores_room() {
        let counts = ConnectionCounts::new(2);
        let (a, b) = (ListenerId(0), ListenerId(1));
        assert_eq!(counts.admit(a, 3, Some(2)), Ok(()));
        assert_eq!(counts.admit(a, 3, Some(2)), Ok(()));
        assert_eq!(counts.admit(a, 3, Some(2)), Err(CapReason::Listener));
        assert_eq!(counts.admit(b, 3, None), Ok(()));
        assert_eq!(counts.admit(b, 3, None), Err(CapReason::Gateway));
        assert_eq!(counts.total(), 3);
        counts.release(a);
        assert_eq!(counts.admit(b, 3, None), Ok(()));
        assert_eq!(counts.admit(a, 3, Some(2)), Err(CapReason::Gateway));
        // A lowered cap (a reload) refuses new connections until enough close.
        assert_eq!(counts.admit(b, 2, None), Err(CapReason::Gateway));
        assert_eq!(counts.total(), 3);
        assert_eq!(
            counts.admit(ListenerId(9), 10, None),
            Err(CapReason::Listener)
        );
    }
}
