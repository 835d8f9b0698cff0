//! Live IP → SIM bindings from the packet core (RADIUS accounting: Start and Interim-Update
//! bind a session's address to its IMSI, Stop removes it), overlaid on the SIM table's
//! configured addresses. One [`LiveBindings`] per gateway process; it outlives reloads (a
//! binding names an IMSI, which is looked up in whichever SIM table is current).
//!
//! Readers (every shard, once per device connection) take a lock-free snapshot: an
//! `arc_swap::ArcSwap` load, then a lookup in an immutable persistent map (`imbl::HashMap`).
//! The single writer (the control thread's RADIUS listener) changes a private copy — O(log n)
//! with structural sharing, not a copy of the whole map — and publishes it with one store, so a
//! fleet of a million sessions costs one map, not one per shard.
//!
//! What this module does not do: decode RADIUS (`proto::radius`), decide a device's group (the
//! plan does, with the SIM table), or persist bindings across restarts (the packet core resends
//! Interim-Updates; a restart starts empty).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Imsi;

/// What an address is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The session's IMSI.
    pub imsi: Imsi,
    /// The IMSI was not in the SIM table when it was bound and `radius.unknown_imsi =
    /// "default"`: serve the device as the gateway's default group if the table still lacks it.
    pub default_if_unknown: bool,
}

/// The current bindings, readable from any thread.
#[derive(Default)]
pub struct LiveBindings {
    map: ArcSwap<imbl::HashMap<IpAddr, Bound>>,
}

impl LiveBindings {
    /// What `ip` is bound to now (an IPv4-mapped IPv6 address is looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<Bound> {
        self.map.load().get(&ip.to_canonical()).copied()
    }

    /// Addresses bound now.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// True when nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The writer's side: keeps the reverse index (IMSI → address) and publishes every change.
/// Owned by one task.
pub struct BindingsWriter {
    live: Arc<LiveBindings>,
    map: imbl::HashMap<IpAddr, Bound>,
    by_imsi: HashMap<Imsi, IpAddr>,
}

impl BindingsWriter {
    /// The writer of `live` (which should be empty: the writer starts from nothing).
    pub fn new(live: Arc<LiveBindings>) -> BindingsWriter {
        BindingsWriter {
            live,
            map: imbl::HashMap::new(),
            by_imsi: HashMap::new(),
        }
    }

    /// Bind `ip` to `bound`: the address moves from any IMSI that held it, and the IMSI from
    /// any address it held (a SIM has one session address at a time).
    pub fn bind(&mut self, ip: IpAddr, bound: Bound) {
        let ip = ip.to_canonical();
        if let Some(old_ip) = self.by_imsi.insert(bound.imsi, ip) {
            if old_ip != ip {
                self.map.remove(&old_ip);
            }
        }
        if let Some(previous) = self.map.insert(ip, bound) {
            if previous.imsi != bound.imsi {
                self.by_imsi.remove(&previous.imsi);
            }
        }
        self.publish();
    }

    /// The session of `imsi` at `ip` ended: remove the binding if it is still that one.
    pub fn unbind(&mut self, ip: IpAddr, imsi: Option<Imsi>) {
        let ip = ip.to_canonical();
        let Some(current) = self.map.get(&ip).copied() else {
            return;
        };
        if imsi.is_some_and(|i| i != current.imsi) {
            return; // a newer session holds the address now
        }
        self.map.remove(&ip);
        self.by_imsi.remove(&current.imsi);
        self.publish();
    }

    fn publish(&self) {
        self.live.map.store(Arc::new(self.map.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imsi(text: &str) -> Imsi {
        Imsi::parse(text).expect("imsi")
    }

    fn bound(text: &str) -> Bound {
        Bound {
            imsi: imsi(text),
            default_if_unknown: false,
        }
    }

    #[test]
    fn bind_moves_addresses_and_imsis_and_stop_removes_only_its_own_binding() {
        let live = Arc::new(LiveBindings::default());
        let mut w = BindingsWriter::new(live.clone());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        w.bind(a, bound("001010000000001"));
        assert_eq!(live.lookup(a), Some(bound("001010000000001")));
        // The SIM gets a new address: the old one is free.
        w.bind(b, bound("001010000000001"));
        assert_eq!(live.lookup(a), None);
        assert_eq!(live.lookup(b), Some(bound("001010000000001")));
        // Another SIM takes the address: the first SIM has none.
        w.bind(b, bound("001010000000002"));
        assert_eq!(live.len(), 1);
        // A late Stop of the first SIM's session leaves the second's binding alone.
        w.unbind(b, Some(imsi("001010000000001")));
        assert_eq!(live.lookup(b), Some(bound("001010000000002")));
        w.unbind(b, Some(imsi("001010000000002")));
        assert!(live.is_empty());
        // IPv4-mapped IPv6 is the IPv4 address.
        w.bind(a, bound("001010000000003"));
        assert!(live.lookup("::ffff:10.0.0.1".parse().unwrap()).is_some());
    }
}
