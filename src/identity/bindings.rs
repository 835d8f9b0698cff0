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
use std::net::{IpAddr, Ipv6Addr};
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

/// What a session is bound by: one address (IPv4 `Framed-IP-Address`) or an IPv6 prefix
/// (`Framed-IPv6-Prefix`: the device picks its addresses inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingKey {
    /// One address (IPv4-mapped IPv6 is stored as IPv4).
    Addr(IpAddr),
    /// An IPv6 prefix: the address with every bit past `len` zero, and `len`.
    V6Prefix(u128, u8),
}

impl BindingKey {
    /// The key of IPv6 prefix `addr`/`len` (bits past `len` cleared; `len` capped at 128).
    pub fn v6_prefix(addr: Ipv6Addr, len: u8) -> BindingKey {
        let len = len.min(128);
        BindingKey::V6Prefix(u128::from(addr) & mask(len), len)
    }
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        128.. => u128::MAX,
        n => u128::MAX << (128 - u32::from(n)),
    }
}

#[derive(Clone, Default)]
struct Snapshot {
    map: imbl::HashMap<BindingKey, Bound>,
    /// The IPv6 prefix lengths bound now, longest first (a lookup tries each).
    v6_lengths: Vec<u8>,
}

/// The current bindings, readable from any thread.
#[derive(Default)]
pub struct LiveBindings {
    current: ArcSwap<Snapshot>,
}

impl LiveBindings {
    /// What `ip` is bound to now: its own binding, else (IPv6) the longest bound prefix that
    /// contains it. An IPv4-mapped IPv6 address is looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<Bound> {
        let snapshot = self.current.load();
        let ip = ip.to_canonical();
        if let Some(bound) = snapshot.map.get(&BindingKey::Addr(ip)) {
            return Some(*bound);
        }
        let IpAddr::V6(v6) = ip else {
            return None;
        };
        snapshot
            .v6_lengths
            .iter()
            .find_map(|&len| snapshot.map.get(&BindingKey::v6_prefix(v6, len)).copied())
    }

    /// Bindings now (addresses and prefixes).
    pub fn len(&self) -> usize {
        self.current.load().map.len()
    }

    /// True when nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The writer's side: keeps the reverse index (IMSI → its keys) and publishes every change.
/// Owned by one task.
pub struct BindingsWriter {
    live: Arc<LiveBindings>,
    snapshot: Snapshot,
    by_imsi: HashMap<Imsi, Vec<BindingKey>>,
    /// Which accounting client (packet-core node) reported each binding, so that its
    /// Accounting-On/Off can end all of its sessions at once.
    client_of: HashMap<BindingKey, IpAddr>,
    /// How many bindings use each IPv6 prefix length.
    v6_length_uses: HashMap<u8, usize>,
}

impl BindingsWriter {
    /// The writer of `live` (which should be empty: the writer starts from nothing).
    pub fn new(live: Arc<LiveBindings>) -> BindingsWriter {
        BindingsWriter {
            live,
            snapshot: Snapshot::default(),
            by_imsi: HashMap::new(),
            client_of: HashMap::new(),
            v6_length_uses: HashMap::new(),
        }
    }

    /// Bind the session `keys` (its address and/or prefix) to `bound`: each key moves from any
    /// IMSI that held it, and the IMSI's other keys are released (a SIM has one session's
    /// addresses at a time).
    pub fn bind(&mut self, keys: &[BindingKey], bound: Bound, client: IpAddr) {
        let keys: Vec<BindingKey> = keys.iter().map(|k| canonical(*k)).collect();
        if let Some(old) = self.by_imsi.remove(&bound.imsi) {
            for key in old.into_iter().filter(|k| !keys.contains(k)) {
                self.remove_key(key);
            }
        }
        for &key in &keys {
            if let Some(previous) = self.snapshot.map.get(&key).copied() {
                if previous.imsi != bound.imsi {
                    if let Some(list) = self.by_imsi.get_mut(&previous.imsi) {
                        list.retain(|k| *k != key);
                    }
                }
            } else {
                self.count_length(key, 1);
            }
            self.snapshot.map.insert(key, bound);
            self.client_of.insert(key, client);
        }
        self.by_imsi.insert(bound.imsi, keys);
        self.publish();
    }

    /// The session at `keys` of `imsi` ended: remove each binding that is still that one.
    pub fn unbind(&mut self, keys: &[BindingKey], imsi: Option<Imsi>) {
        let mut changed = false;
        for key in keys.iter().map(|k| canonical(*k)) {
            let Some(current) = self.snapshot.map.get(&key).copied() else {
                continue;
            };
            if imsi.is_some_and(|i| i != current.imsi) {
                continue; // a newer session holds it now
            }
            self.remove_key(key);
            if let Some(list) = self.by_imsi.get_mut(&current.imsi) {
                list.retain(|k| *k != key);
                if list.is_empty() {
                    self.by_imsi.remove(&current.imsi);
                }
            }
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    /// Accounting-On/Off from `client`: the node (re)started or stops, so none of the
    /// sessions it reported exists any more. Returns how many bindings were removed.
    pub fn forget_client(&mut self, client: IpAddr) -> usize {
        let keys: Vec<BindingKey> = self
            .client_of
            .iter()
            .filter(|(_, c)| **c == client)
            .map(|(k, _)| *k)
            .collect();
        for &key in &keys {
            if let Some(bound) = self.snapshot.map.get(&key).copied() {
                if let Some(list) = self.by_imsi.get_mut(&bound.imsi) {
                    list.retain(|k| *k != key);
                    if list.is_empty() {
                        self.by_imsi.remove(&bound.imsi);
                    }
                }
            }
            self.remove_key(key);
        }
        if !keys.is_empty() {
            self.publish();
        }
        keys.len()
    }

    fn remove_key(&mut self, key: BindingKey) {
        self.client_of.remove(&key);
        if self.snapshot.map.remove(&key).is_some() {
            self.count_length(key, -1);
        }
    }

    fn count_length(&mut self, key: BindingKey, delta: isize) {
        let BindingKey::V6Prefix(_, len) = key else {
            return;
        };
        let uses = self.v6_length_uses.entry(len).or_default();
        *uses = uses.saturating_add_signed(delta);
        if *uses == 0 {
            self.v6_length_uses.remove(&len);
        }
        let mut lengths: Vec<u8> = self.v6_length_uses.keys().copied().collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        self.snapshot.v6_lengths = lengths;
    }

    fn publish(&self) {
        self.live.current.store(Arc::new(self.snapshot.clone()));
    }
}

fn canonical(key: BindingKey) -> BindingKey {
    match key {
        BindingKey::Addr(ip) => BindingKey::Addr(ip.to_canonical()),
        BindingKey::V6Prefix(bits, len) => BindingKey::v6_prefix(Ipv6Addr::from(bits), len),
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

    fn client() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    fn addr(text: &str) -> BindingKey {
        BindingKey::Addr(text.parse().unwrap())
    }

    #[test]
    fn bind_moves_addresses_and_imsis_and_stop_removes_only_its_own_binding() {
        let live = Arc::new(LiveBindings::default());
        let mut w = BindingsWriter::new(live.clone());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        w.bind(&[addr("10.0.0.1")], bound("001010000000001"), client());
        assert_eq!(live.lookup(a), Some(bound("001010000000001")));
        // The SIM gets a new address: the old one is free.
        w.bind(&[addr("10.0.0.2")], bound("001010000000001"), client());
        assert_eq!(live.lookup(a), None);
        assert_eq!(live.lookup(b), Some(bound("001010000000001")));
        // Another SIM takes the address: the first SIM has none.
        w.bind(&[addr("10.0.0.2")], bound("001010000000002"), client());
        assert_eq!(live.len(), 1);
        // A late Stop of the first SIM's session leaves the second's binding alone.
        w.unbind(&[addr("10.0.0.2")], Some(imsi("001010000000001")));
        assert_eq!(live.lookup(b), Some(bound("001010000000002")));
        w.unbind(&[addr("10.0.0.2")], Some(imsi("001010000000002")));
        assert!(live.is_empty());
        // IPv4-mapped IPv6 is the IPv4 address.
        w.bind(
            &[addr("::ffff:10.0.0.1")],
            bound("001010000000003"),
            client(),
        );
        assert!(live.lookup(a).is_some());
    }

    #[test]
    fn ipv6_prefixes_bind_every_address_inside_them_longest_first() {
        let live = Arc::new(LiveBindings::default());
        let mut w = BindingsWriter::new(live.clone());
        let p64 = BindingKey::v6_prefix("2001:db8:1:2::".parse().unwrap(), 64);
        let p56 = BindingKey::v6_prefix("2001:db8:1::".parse().unwrap(), 56);
        // A dual-stack session: an IPv4 address and an IPv6 prefix.
        w.bind(&[addr("10.0.0.9"), p64], bound("001010000000009"), client());
        w.bind(&[p56], bound("001010000000008"), client());
        let inside: IpAddr = "2001:db8:1:2::abcd".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            live.lookup(inside),
            Some(bound("001010000000009")),
            "the /64 wins"
        );
        assert_eq!(
            live.lookup(other),
            Some(bound("001010000000008")),
            "the /56 covers it"
        );
        assert_eq!(live.lookup("2001:db8:2::1".parse().unwrap()), None);
        // The session ends: both of its keys go, the other SIM's prefix stays.
        w.unbind(&[addr("10.0.0.9"), p64], Some(imsi("001010000000009")));
        assert_eq!(live.lookup(inside), Some(bound("001010000000008")));
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn accounting_on_off_forgets_only_that_clients_sessions() {
        let live = Arc::new(LiveBindings::default());
        let mut w = BindingsWriter::new(live.clone());
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        w.bind(&[addr("10.0.0.1")], bound("001010000000001"), client());
        w.bind(&[addr("10.0.0.2")], bound("001010000000002"), other);
        assert_eq!(w.forget_client(client()), 1);
        assert_eq!(live.lookup("10.0.0.1".parse().unwrap()), None);
        assert!(live.lookup("10.0.0.2".parse().unwrap()).is_some());
        // The IMSI is free to bind again.
        w.bind(&[addr("10.0.0.3")], bound("001010000000001"), other);
        assert_eq!(live.len(), 2);
    }
}
