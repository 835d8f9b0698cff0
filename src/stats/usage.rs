//! Usage metering (what a carrier bills): messages and bytes each way, errors, and first/last
//! seen, per SIM and group. Plain data at the bottom of the crate, like the rest of `stats`.
//!
//! A shard owns one [`ShardUsage`] and adds into it with plain arithmetic on the message path
//! (one hash-map lookup keyed by a [`UsageKey`]: the IMSI and a key of the group's name — no
//! atomics, no locks). The control thread asks each shard to [`ShardUsage::take`] what it has
//! counted since the last take: the map is swapped for an empty one, so every count leaves the
//! shard exactly once, as [`UsageRecord`]s. The control thread adds records into a
//! [`UsageTable`] ([`UsageTable::add`]), which sums them per (group, IMSI).
//!
//! Keys survive reloads: the IMSI and the group's name do not change meaning when a reload
//! renumbers SIMs and groups, so a connection that resolved its key under an old plan still
//! counts under the right SIM and group. Traffic of unknown sources (served under a listener's
//! default group) counts under IMSI `None` of that group: one entry per group.
//!
//! Memory: one entry per (SIM, group) with traffic since the last take on a shard, and the same
//! per SIM ever seen in a [`UsageTable`].
//!
//! What this module does not do: decide what a message or a byte is for a protocol (the flows
//! do; docs/metrics.md says), keep intervals, or write files (`control::usage`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Instant, SystemTime};

use crate::identity::Imsi;

/// Who traffic is billed to: the SIM's IMSI (`None` for an unknown source) and a stable key of
/// its group's name (`flows::identity::group_key`), both independent of plan generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// The SIM, `None` for traffic of an unknown source.
    pub imsi: Option<Imsi>,
    /// Key of the group's name.
    pub group: u64,
}

/// Counters of one (SIM, group) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Messages from the device forwarded upstream (HTTP requests, MQTT PUBLISH packets).
    pub up_msgs: u64,
    /// Bytes from the device (HTTP: wire bytes; MQTT: PUBLISH payload bytes).
    pub up_bytes: u64,
    /// Messages delivered to the device (HTTP responses, MQTT PUBLISH packets).
    pub down_msgs: u64,
    /// Bytes to the device (HTTP: wire bytes; MQTT: PUBLISH payload bytes).
    pub down_bytes: u64,
    /// Requests or sessions that ended in an error simgate counted in `/metrics`.
    pub errors: u64,
}

impl UsageCounts {
    /// Add `other` into `self`.
    pub fn add(&mut self, other: &UsageCounts) {
        self.up_msgs += other.up_msgs;
        self.up_bytes += other.up_bytes;
        self.down_msgs += other.down_msgs;
        self.down_bytes += other.down_bytes;
        self.errors += other.errors;
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == UsageCounts::default()
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    counts: UsageCounts,
    first_seen: Instant,
    last_seen: Instant,
}

/// A multiply-shift hasher for [`UsageKey`] (two words): the shard's map is hashed per message,
/// and its keys come from the SIM table, not from devices, so no DoS-resistant hash is needed.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// What one shard counted since its last take. Shard-local; updated with plain adds.
#[derive(Debug, Default)]
pub struct ShardUsage {
    slots: HashMap<UsageKey, Slot, BuildHasherDefault<KeyHasher>>,
    /// Group names by key, for every plan this shard served (names are few and never removed,
    /// so a key resolved under an old plan still has its name).
    names: HashMap<u64, Box<str>>,
}

/// One (SIM, group)'s counts from one take, with wall-clock first/last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The SIM, `None` for an unknown source.
    pub imsi: Option<Imsi>,
    /// The group's name.
    pub group: String,
    /// What was counted.
    pub counts: UsageCounts,
    /// First message or error counted.
    pub first_seen: SystemTime,
    /// Last message or error counted.
    pub last_seen: SystemTime,
}

impl ShardUsage {
    /// Remember the name of group key `key` (call for every group of every plan served).
    pub fn name_group(&mut self, key: u64, name: &str) {
        if self.names.get(&key).is_none_or(|n| &**n != name) {
            self.names.insert(key, name.into());
        }
    }

    /// The name of group key `key`, if a plan this shard served had it.
    pub fn group_name(&self, key: u64) -> Option<&str> {
        self.names.get(&key).map(|n| &**n)
    }

    fn slot(&mut self, key: UsageKey, now: Instant) -> &mut Slot {
        let slot = self.slots.entry(key).or_insert(Slot {
            counts: UsageCounts::default(),
            first_seen: now,
            last_seen: now,
        });
        slot.last_seen = now;
        slot
    }

    /// Count `msgs` messages and `bytes` bytes from the device.
    pub fn uplink(&mut self, key: UsageKey, msgs: u64, bytes: u64, now: Instant) {
        let c = &mut self.slot(key, now).counts;
        c.up_msgs += msgs;
        c.up_bytes += bytes;
    }

    /// Count `msgs` messages and `bytes` bytes to the device.
    pub fn downlink(&mut self, key: UsageKey, msgs: u64, bytes: u64, now: Instant) {
        let c = &mut self.slot(key, now).counts;
        c.down_msgs += msgs;
        c.down_bytes += bytes;
    }

    /// Add `counts` (a connection's pending usage) at once.
    pub fn add(&mut self, key: UsageKey, counts: &UsageCounts, now: Instant) {
        self.slot(key, now).counts.add(counts);
    }

    /// Count an error.
    pub fn error(&mut self, key: UsageKey, now: Instant) {
        self.slot(key, now).counts.errors += 1;
    }

    /// Number of (SIM, group) entries counted since the last take.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing was counted since the last take.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Everything counted since the last take, which empties the shard's map (each count is
    /// handed out exactly once). `now` and `wall` are the same moment on the monotonic clock the
    /// counts were stamped with and on the wall clock.
    pub fn take(&mut self, now: Instant, wall: SystemTime) -> Vec<UsageRecord> {
        let slots = std::mem::take(&mut self.slots);
        let to_wall = |t: Instant| wall - now.saturating_duration_since(t);
        slots
            .into_iter()
            .map(|(key, slot)| UsageRecord {
                imsi: key.imsi,
                group: self
                    .names
                    .get(&key.group)
                    .map_or_else(|| format!("#{:016x}", key.group), |n| n.to_string()),
                counts: slot.counts,
                first_seen: to_wall(slot.first_seen),
                last_seen: to_wall(slot.last_seen),
            })
            .collect()
    }
}

/// Totals per (group, IMSI), with the earliest first seen and latest last seen: what the
/// control thread merges shards' records into. Ordered by group name, then IMSI (unknown
/// sources first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTable {
    rows: BTreeMap<(String, Option<Imsi>), UsageRow>,
}

/// One row of a [`UsageTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRow {
    /// Summed counts.
    pub counts: UsageCounts,
    /// Earliest first seen.
    pub first_seen: SystemTime,
    /// Latest last seen.
    pub last_seen: SystemTime,
}

impl UsageTable {
    /// Add one record.
    pub fn add(&mut self, r: &UsageRecord) {
        self.add_row(
            &r.group,
            r.imsi,
            &UsageRow {
                counts: r.counts,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
            },
        );
    }

    fn add_row(&mut self, group: &str, imsi: Option<Imsi>, row: &UsageRow) {
        match self.rows.get_mut(&(group.to_owned(), imsi)) {
            Some(mine) => {
                mine.counts.add(&row.counts);
                mine.first_seen = mine.first_seen.min(row.first_seen);
                mine.last_seen = mine.last_seen.max(row.last_seen);
            }
            None => {
                self.rows.insert((group.to_owned(), imsi), *row);
            }
        }
    }

    /// Add every row of `other`.
    pub fn merge(&mut self, other: &UsageTable) {
        for ((group, imsi), row) in &other.rows {
            self.add_row(group, *imsi, row);
        }
    }

    /// Rows as `(group, imsi, row)`, ordered by group then IMSI.
    pub fn rows(&self) -> impl Iterator<Item = (&str, Option<Imsi>, &UsageRow)> {
        self.rows.iter().map(|((g, i), r)| (g.as_str(), *i, r))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if there is a row of `group` and `imsi`.
    pub fn contains(&self, group: &str, imsi: Option<Imsi>) -> bool {
        self.rows.contains_key(&(group.to_owned(), imsi))
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The sum of every row's counts.
    pub fn total(&self) -> UsageCounts {
        let mut t = UsageCounts::default();
        for r in self.rows.values() {
            t.add(&r.counts);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(imsi: &str, group: u64) -> UsageKey {
        UsageKey {
            imsi: Imsi::parse(imsi),
            group,
        }
    }

    #[test]
    fn counts_accumulate_per_key_and_take_empties_the_shard() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = ShardUsage::default();
        s.name_group(1, "meters");
        let a = key("001010000000001", 1);
        let b = key("001010000000002", 1);
        s.uplink(a, 1, 10, t0);
        s.downlink(a, 1, 20, t0 + Duration::from_secs(1));
        s.uplink(b, 2, 5, t0 + Duration::from_secs(2));
        s.error(b, t0 + Duration::from_secs(3));
        assert_eq!(s.len(), 2);
        let now = t0 + Duration::from_secs(4);
        let mut records = s.take(now, wall);
        records.sort_by_key(|r| r.imsi);
        assert!(s.is_empty());
        assert_eq!(records[0].group, "meters");
        assert_eq!(
            records[0].counts,
            UsageCounts {
                up_msgs: 1,
                up_bytes: 10,
                down_msgs: 1,
                down_bytes: 20,
                errors: 0
            }
        );
        assert_eq!(records[0].first_seen, wall - Duration::from_secs(4));
        assert_eq!(records[0].last_seen, wall - Duration::from_secs(3));
        assert_eq!(records[1].counts.errors, 1);
        assert_eq!(records[1].counts.up_msgs, 2);
        // Nothing is handed out twice.
        assert!(s.take(now, wall).is_empty());
    }

    #[test]
    fn takes_interleaved_with_traffic_sum_to_the_traffic_exactly() {
        // Whatever the moments of the takes, the merged records equal what was counted: a
        // count is in exactly one take.
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let keys = [
            key("001010000000001", 1),
            key("001010000000002", 2),
            UsageKey {
                imsi: None,
                group: 2,
            },
        ];
        for take_every in [1usize, 3, 7, 1000] {
            let mut shards = [ShardUsage::default(), ShardUsage::default()];
            for s in &mut shards {
                s.name_group(1, "a");
                s.name_group(2, "b");
            }
            let mut merged = UsageTable::default();
            let mut expected = UsageCounts::default();
            for i in 0..500u64 {
                let s = &mut shards[(i % 2) as usize];
                let k = keys[(i % 3) as usize];
                let now = t0 + Duration::from_millis(i);
                s.uplink(k, 1, i, now);
                s.downlink(k, 1, 2 * i, now);
                expected.up_msgs += 1;
                expected.up_bytes += i;
                expected.down_msgs += 1;
                expected.down_bytes += 2 * i;
                if i % 11 == 0 {
                    s.error(k, now);
                    expected.errors += 1;
                }
                if i as usize % take_every == 0 {
                    for r in s.take(now, wall) {
                        merged.add(&r);
                    }
                }
            }
            for s in &mut shards {
                for r in s.take(t0 + Duration::from_secs(1), wall) {
                    merged.add(&r);
                }
            }
            assert_eq!(merged.total(), expected, "take every {take_every}");
            assert_eq!(merged.len(), 3);
        }
    }

    #[test]
    fn a_key_resolved_under_an_old_plan_keeps_its_group_name() {
        let mut s = ShardUsage::default();
        s.name_group(7, "old-name-kept");
        s.name_group(8, "new");
        s.uplink(key("001010000000001", 7), 1, 1, Instant::now());
        let r = s.take(Instant::now(), SystemTime::now());
        assert_eq!(r[0].group, "old-name-kept");
    }

    #[test]
    fn table_merge_keeps_earliest_first_and_latest_last_seen() {
        let w = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let rec = |first: u64, last: u64| UsageRecord {
            imsi: Imsi::parse("001010000000001"),
            group: "g".into(),
            counts: UsageCounts {
                up_msgs: 1,
                ..UsageCounts::default()
            },
            first_seen: w + Duration::from_secs(first),
            last_seen: w + Duration::from_secs(last),
        };
        let mut a = UsageTable::default();
        a.add(&rec(5, 6));
        let mut b = UsageTable::default();
        b.add(&rec(1, 2));
        b.add(&rec(8, 9));
        a.merge(&b);
        let (_, _, row) = a.rows().next().unwrap();
        assert_eq!(row.counts.up_msgs, 3);
        assert_eq!(row.first_seen, w + Duration::from_secs(1));
        assert_eq!(row.last_seen, w + Duration::from_secs(9));
    }
}
