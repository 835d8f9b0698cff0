//! The built, immutable SIM table and its borrowed view, [`SimRef`].
//!
//! Layout (see docs/decisions/0010-sim-table-layout.md for the measurements behind it):
//!
//! ```text
//!  imsis:  [Imsi; n]  sorted ──────────────┐ same index
//!  recs:   [Rec; n]   32 B each ◄──────────┘   imei, msisdn (packed u64), group (u16),
//!                                              sim_id + name (offset into arena, u8 lengths),
//!                                              tag set (u32), ip (v4 inline / v6 index)
//!  v4:     [(u32 addr, u32 rec)]   sorted by addr, binary search
//!  v6:     [u128 addr] sorted + [u32 rec] parallel
//!  arena:  one String: every sim_id, name and (interned) tag value
//!  tags:   keys [Box<str>] (few) · pairs [(value offset u32, key u16, len u16)] · sets [u32 start]
//! ```
//!
//! Nothing here allocates after the build, and a lookup touches no lock: shards share one
//! table through the plan's `Arc`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::digits::Packed;
use super::{Imei, Imsi, Msisdn};

/// Where a record's IP lives (two high bits of `Rec::tags_ip`).
pub(crate) const IP_NONE: u32 = 0;
pub(crate) const IP_V4: u32 = 1;
pub(crate) const IP_V6: u32 = 2;
const IP_SHIFT: u32 = 30;
pub(crate) const TAG_SET_MASK: u32 = (1 << IP_SHIFT) - 1;

/// One SIM, without its IMSI (kept in the parallel, sorted `imsis`). 32 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec {
    pub imei: Packed,
    pub msisdn: Packed,
    /// Arena offset of `sim_id`, followed directly by `name`.
    pub strings: u32,
    /// Bits 0–29: tag set index (0 = no tags); bits 30–31: IP kind.
    pub tags_ip: u32,
    /// IPv4 address, or index into `v6_addrs`; meaningless without an IP kind.
    pub ip: u32,
    /// Index of the SIM's group in the plan's groups.
    pub group: u16,
    pub sim_id_len: u8,
    pub name_len: u8,
}

impl Rec {
    pub(crate) fn ip_kind(&self) -> u32 {
        self.tags_ip >> IP_SHIFT
    }

    pub(crate) fn set_ip(&mut self, kind: u32, ip: u32) {
        self.tags_ip = (self.tags_ip & TAG_SET_MASK) | (kind << IP_SHIFT);
        self.ip = ip;
    }

    fn tag_set(&self) -> usize {
        (self.tags_ip & TAG_SET_MASK) as usize
    }
}

/// One tag of a tag set: value text in the arena, key by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TagPair {
    pub value: u32,
    pub key: u16,
    pub value_len: u16,
}

/// Every configured SIM, built once when the config is loaded, then read-only.
///
/// Lookups: [`SimTable::by_ip`] (the source address of a device connection) and
/// [`SimTable::by_imsi`]. Both are binary searches over sorted arrays; neither allocates.
#[derive(Default)]
pub struct SimTable {
    pub(crate) imsis: Vec<Imsi>,
    pub(crate) recs: Vec<Rec>,
    pub(crate) v4: Vec<(u32, u32)>,
    pub(crate) v6_addrs: Vec<u128>,
    pub(crate) v6_recs: Vec<u32>,
    pub(crate) arena: String,
    pub(crate) tag_keys: Vec<Box<str>>,
    pub(crate) tag_pairs: Vec<TagPair>,
    /// Start of set `i` in `tag_pairs`; set `i` ends where set `i + 1` starts. Set 0 is empty.
    pub(crate) tag_sets: Vec<u32>,
}

impl SimTable {
    /// A table without SIMs (every device is unknown).
    pub fn empty() -> Self {
        Self {
            tag_sets: vec![0, 0],
            ..Self::default()
        }
    }

    /// Number of SIMs.
    pub fn len(&self) -> usize {
        self.imsis.len()
    }

    /// True if the table has no SIMs.
    pub fn is_empty(&self) -> bool {
        self.imsis.is_empty()
    }

    /// The SIM bound to source address `ip`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is looked up as the IPv4 address it carries.
    pub fn by_ip(&self, ip: IpAddr) -> Option<SimRef<'_>> {
        let index = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let key = u32::from(v4);
                let at = self.v4.binary_search_by_key(&key, |&(a, _)| a).ok()?;
                self.v4[at].1
            }
            IpAddr::V6(v6) => {
                let at = self.v6_addrs.binary_search(&u128::from(v6)).ok()?;
                self.v6_recs[at]
            }
        };
        self.at(index as usize)
    }

    /// The SIM with this IMSI.
    pub fn by_imsi(&self, imsi: Imsi) -> Option<SimRef<'_>> {
        let at = self.imsis.binary_search(&imsi).ok()?;
        self.at(at)
    }

    /// Every SIM, in IMSI order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SimRef<'_>> + '_ {
        (0..self.len()).map(move |i| SimRef {
            table: self,
            index: i,
        })
    }

    fn at(&self, index: usize) -> Option<SimRef<'_>> {
        (index < self.len()).then_some(SimRef { table: self, index })
    }

    /// The SIM at position `index` (see [`SimRef::index`]): a connection keeps the index of its
    /// SIM instead of a borrow of the table, and reads the SIM's fields again through it.
    pub fn get(&self, index: u32) -> Option<SimRef<'_>> {
        self.at(index as usize)
    }

    /// Heap bytes the table holds (capacities of its arrays and strings), for measurements.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.imsis.capacity() * size_of::<Imsi>()
            + self.recs.capacity() * size_of::<Rec>()
            + self.v4.capacity() * size_of::<(u32, u32)>()
            + self.v6_addrs.capacity() * size_of::<u128>()
            + self.v6_recs.capacity() * size_of::<u32>()
            + self.arena.capacity()
            + self.tag_keys.capacity() * size_of::<Box<str>>()
            + self.tag_keys.iter().map(|k| k.len()).sum::<usize>()
            + self.tag_pairs.capacity() * size_of::<TagPair>()
            + self.tag_sets.capacity() * size_of::<u32>()
    }

    fn str_at(&self, start: u32, len: usize) -> &str {
        let start = start as usize;
        self.arena.get(start..start + len).unwrap_or("")
    }
}

impl fmt::Debug for SimTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTable")
            .field("sims", &self.len())
            .field("ipv4", &self.v4.len())
            .field("ipv6", &self.v6_addrs.len())
            .field("tag_keys", &self.tag_keys)
            .finish_non_exhaustive()
    }
}

/// A borrowed view of one SIM in a [`SimTable`]. `Copy`; costs two words.
#[derive(Clone, Copy)]
pub struct SimRef<'a> {
    table: &'a SimTable,
    index: usize,
}

impl<'a> SimRef<'a> {
    fn rec(&self) -> &'a Rec {
        &self.table.recs[self.index]
    }

    /// The SIM's position in its table (valid for that table only: a reload builds a new one).
    pub fn index(&self) -> u32 {
        u32::try_from(self.index).unwrap_or(u32::MAX)
    }

    /// The IMSI (always present).
    pub fn imsi(&self) -> Imsi {
        self.table.imsis[self.index]
    }

    /// The source IP the SIM is bound to in the table, if any.
    pub fn ip(&self) -> Option<IpAddr> {
        let rec = self.rec();
        match rec.ip_kind() {
            IP_V4 => Some(IpAddr::V4(Ipv4Addr::from(rec.ip))),
            IP_V6 => self
                .table
                .v6_addrs
                .get(rec.ip as usize)
                .map(|&a| IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        }
    }

    /// The IMEI, if configured.
    pub fn imei(&self) -> Option<Imei> {
        let p = self.rec().imei;
        (!p.is_none()).then_some(Imei(p))
    }

    /// The MSISDN, if configured.
    pub fn msisdn(&self) -> Option<Msisdn> {
        let p = self.rec().msisdn;
        (!p.is_none()).then_some(Msisdn(p))
    }

    /// The operator's own SIM id, if configured.
    pub fn sim_id(&self) -> Option<&'a str> {
        let rec = self.rec();
        let len = usize::from(rec.sim_id_len);
        (len > 0).then(|| self.table.str_at(rec.strings, len))
    }

    /// The SIM's name, if configured.
    pub fn name(&self) -> Option<&'a str> {
        let rec = self.rec();
        let len = usize::from(rec.name_len);
        let start = rec.strings + u32::from(rec.sim_id_len);
        (len > 0).then(|| self.table.str_at(start, len))
    }

    /// Index of the SIM's group among the plan's groups (`policy::GroupId` wraps it).
    pub fn group_index(&self) -> u16 {
        self.rec().group
    }

    /// The SIM's tags, in key order as first seen in the config.
    pub fn tags(&self) -> Tags<'a> {
        let table = self.table;
        let set = self.rec().tag_set();
        let start = table.tag_sets.get(set).copied().unwrap_or(0) as usize;
        let end = table.tag_sets.get(set + 1).copied().unwrap_or(0) as usize;
        Tags {
            table,
            pairs: table.tag_pairs.get(start..end).unwrap_or(&[]).iter(),
        }
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&'a str> {
        self.tags().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl fmt::Debug for SimRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRef")
            .field("imsi", &self.imsi())
            .field("ip", &self.ip())
            .field("imei", &self.imei())
            .field("msisdn", &self.msisdn())
            .field("sim_id", &self.sim_id())
            .field("name", &self.name())
            .field("group_index", &self.group_index())
            .field("tags", &self.tags().collect::<Vec<_>>())
            .finish()
    }
}

/// Iterator over a SIM's tags as `(key, value)`.
pub struct Tags<'a> {
    table: &'a SimTable,
    pairs: std::slice::Iter<'a, TagPair>,
}

impl<'a> Iterator for Tags<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let pair = self.pairs.next()?;
        let key = self
            .table
            .tag_keys
            .get(usize::from(pair.key))
            .map_or("", |k| &**k);
        Some((
            key,
            self.table.str_at(pair.value, usize::from(pair.value_len)),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pairs.size_hint()
    }
}

impl ExactSizeIterator for Tags<'_> {}
