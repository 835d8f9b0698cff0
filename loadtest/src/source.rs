//! Per-device source addresses across 127.0.0.0/8.
//!
//! Device `i` connects from its own loopback address, so one box can hold far more than 64k
//! connections to one gateway port (the 4-tuple differs by source address, not only by port) and
//! the gateway's identity table can map each device to a SIM by source IP, as on a carrier
//! network. The mapping is dense and stable:
//!
//! ```text
//! device 0 -> 127.1.0.1, 1 -> 127.1.0.2, ... 253 -> 127.1.0.254, 254 -> 127.1.1.1, ...
//! ```
//!
//! The last octet skips .0 and .255 (network/broadcast look-alikes that some tools and ACLs treat
//! specially) and the second octet starts at 1, so 127.0.0.0/16 — where the gateway and the sink
//! usually listen — holds no device. That leaves 255 × 256 × 254 = 16,581,120 devices.
//!
//! What it does NOT do: IPv6, non-loopback ranges (a device range on a real interface needs
//! those addresses configured; use `source_addresses = false` there), or writing the SIM table.

use std::net::Ipv4Addr;

/// Usable last-octet values per /24 (1..=254).
const HOSTS_PER_24: u64 = 254;
/// Number of devices [`device_source`] can place.
pub const MAX_DEVICES: u64 = 255 * 256 * HOSTS_PER_24;

/// The source address of device `index`, or `None` when `index >= MAX_DEVICES`.
pub fn device_source(index: u64) -> Option<Ipv4Addr> {
    if index >= MAX_DEVICES {
        return None;
    }
    let host = (index % HOSTS_PER_24) as u8 + 1;
    let subnet = index / HOSTS_PER_24;
    let third = (subnet % 256) as u8;
    let second = (subnet / 256) as u8 + 1;
    Some(Ipv4Addr::new(127, second, third, host))
}

/// The device index using `addr` as its source address (inverse of [`device_source`]).
pub fn device_index(addr: Ipv4Addr) -> Option<u64> {
    let [first, second, third, host] = addr.octets();
    if first != 127 || second == 0 || host == 0 || host == 255 {
        return None;
    }
    let subnet = u64::from(second - 1) * 256 + u64::from(third);
    Some(subnet * HOSTS_PER_24 + u64::from(host) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_map_densely_and_skip_reserved_octets() {
        assert_eq!(device_source(0), Some(Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(device_source(253), Some(Ipv4Addr::new(127, 1, 0, 254)));
        assert_eq!(device_source(254), Some(Ipv4Addr::new(127, 1, 1, 1)));
        assert_eq!(device_source(254 * 256), Some(Ipv4Addr::new(127, 2, 0, 1)));
        assert_eq!(
            device_source(MAX_DEVICES - 1),
            Some(Ipv4Addr::new(127, 255, 255, 254))
        );
        assert_eq!(device_source(MAX_DEVICES), None);
    }

    #[test]
    fn addresses_are_unique_and_invert() {
        let mut seen = std::collections::HashSet::new();
        for index in (0..200_000).chain(MAX_DEVICES - 1000..MAX_DEVICES) {
            let addr = device_source(index).expect("in range");
            let [a, b, _, d] = addr.octets();
            assert_eq!(a, 127);
            assert_ne!(b, 0, "{addr} is in 127.0.0.0/16");
            assert!(d != 0 && d != 255, "{addr}");
            assert!(seen.insert(addr), "{addr} given twice");
            assert_eq!(device_index(addr), Some(index));
        }
    }

    #[test]
    fn foreign_addresses_have_no_device() {
        for addr in [
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(127, 1, 0, 0),
            Ipv4Addr::new(127, 1, 0, 255),
            Ipv4Addr::new(10, 1, 0, 1),
        ] {
            assert_eq!(device_index(addr), None, "{addr}");
        }
    }
}
