//! The shard's registry of live device connections, for `GET /admin/sessions`: one small
//! [`SessionEntry`] per open device connection (peer, SIM, group, protocol, destination, start
//! time, device-side bytes, MQTT client id), in a slab keyed by [`RegistryKey`].
//!
//! The shard registers a connection at accept and removes it when the connection's guard drops
//! (every exit path, including a task dropped at shutdown). Flows fill in what they learn with
//! plain writes through the shard's `RefCell` (borrowed briefly, never across an await): no
//! atomics, no locks, no allocation per message. The only allocations are a destination's
//! name, once per shard (names are interned), and the MQTT client id, once per session.
//!
//! Memory: an entry is 72 bytes (a test pins it), plus the client id of an MQTT session; the
//! slab's capacity doubles as it grows, so up to twice that per connection.
//!
//! The control thread gets a page of entries through a shard command: [`SessionTable::page`]
//! copies at most `offset + limit` matching entries, so a shard with many connections never
//! copies its whole table for one request.
//!
//! What this module does not do: count bytes for metrics or usage (`stats` does), decide what a
//! device's identity is (`identity`), or merge pages of several shards (`control` does).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::identity::Imsi;
use crate::policy::DestinationId;

/// Handle of one entry of a [`SessionTable`] (valid while its connection is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryKey(u32);

/// What kind of device session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionProtocol {
    /// An HTTP/1.x device connection (keep-alive or not).
    Http,
    /// An MQTT connection whose CONNECT has not been routed yet.
    Mqtt,
    /// An MQTT device session bridged 1:1 to its own upstream connection.
    MqttSession,
    /// An MQTT device session multiplexed onto a shared upstream link.
    MqttAggregate,
}

impl SessionProtocol {
    /// The name `/admin/sessions` shows and filters on.
    pub fn name(self) -> &'static str {
        match self {
            SessionProtocol::Http => "http",
            SessionProtocol::Mqtt => "mqtt",
            SessionProtocol::MqttSession => "mqtt-session",
            SessionProtocol::MqttAggregate => "mqtt-aggregate",
        }
    }
}

/// One live device connection, as the shard keeps it. Kept small (it is paid per connection,
/// idle or not, and twice over while the slab's capacity doubles): names are indexes into the
/// table's interned names, the start time is seconds since the table's epoch.
#[derive(Debug)]
pub struct SessionEntry {
    /// Bytes received from the device (wire bytes).
    bytes_in: u64,
    /// Bytes sent to the device (wire bytes).
    bytes_out: u64,
    /// The SIM; `None` for an unknown source (or before identification).
    imsi: Option<Imsi>,
    /// The MQTT client id, once the CONNECT was read (a thin pointer: HTTP entries pay 8
    /// bytes for it, not 16).
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    client_id: Option<Box<Box<str>>>,
    /// The device's address and port.
    ip: IpAddr,
    port: u16,
    /// Seconds from the table's epoch to the accept.
    started: u32,
    /// The destination last routed to: an index into the table's names, or [`NO_NAME`].
    destination: u16,
    /// The group: an index into the table's group keys, or [`NO_NAME`] before identification.
    group: u16,
    /// The kind of session.
    protocol: SessionProtocol,
}

/// No destination yet.
const NO_NAME: u16 = u16::MAX;

/// A page request: filters, then `offset` and `limit` over the entries that match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only sessions of this protocol name (`http`, `mqtt-session`, ...).
    pub protocol: Option<String>,
    /// Only sessions last routed to this destination.
    pub destination: Option<String>,
    /// Only sessions of this IMSI.
    pub imsi: Option<String>,
    /// Matching entries to skip.
    pub offset: usize,
    /// Matching entries to return at most.
    pub limit: usize,
}

/// One session as copied out of a shard (owned, `Send`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The shard serving it.
    pub shard: usize,
    /// The device's address.
    pub peer: SocketAddr,
    /// The SIM's IMSI; `None` for an unknown source or before identification.
    pub imsi: Option<String>,
    /// The group's name, once identified.
    pub group: Option<String>,
    /// `http`, `mqtt`, `mqtt-session` or `mqtt-aggregate`.
    pub protocol: &'static str,
    /// The destination last routed to.
    pub destination: Option<String>,
    /// Seconds since accept.
    pub age_secs: u64,
    /// Bytes from the device.
    pub bytes_in: u64,
    /// Bytes to the device.
    pub bytes_out: u64,
    /// The MQTT client id.
    pub client_id: Option<String>,
}

/// What a shard answers: the total number of matching entries and the rows of
/// `0..offset + limit` of them (in table order), for the caller to merge and page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPage {
    /// Entries matching the filters on this shard.
    pub total: usize,
    /// At most `offset + limit` matching rows.
    pub rows: Vec<SessionRow>,
}

/// The live sessions of one shard.
#[derive(Debug, Default)]
pub struct SessionTable {
    entries: slab::Slab<SessionEntry>,
    /// What `SessionEntry::started` counts from (the first accept).
    epoch: Option<Instant>,
    /// Destination names ever routed to on this shard (few; never removed, so an entry routed
    /// under an old plan keeps its name).
    names: Vec<Box<str>>,
    /// For the plan of generation `.0`: name index by destination id (`NO_NAME`: not yet
    /// interned), so routing a request costs an index, not a string compare.
    by_destination: (u64, Vec<u16>),
    /// Group-name keys (`identity::group_key`) ever identified on this shard (few; never
    /// removed); the shard's usage meter names them.
    group_keys: Vec<u64>,
}

impl SessionTable {
    /// Register a connection accepted at `now` from `peer`.
    pub fn open(
        &mut self,
        peer: SocketAddr,
        protocol: SessionProtocol,
        now: Instant,
    ) -> RegistryKey {
        let epoch = *self.epoch.get_or_insert(now);
        let started =
            u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX);
        let key = self.entries.insert(SessionEntry {
            bytes_in: 0,
            bytes_out: 0,
            imsi: None,
            client_id: None,
            ip: peer.ip(),
            port: peer.port(),
            started,
            destination: NO_NAME,
            group: NO_NAME,
            protocol,
        });
        // A shard holds far fewer than 2^32 connections (file descriptors run out first).
        RegistryKey(u32::try_from(key).unwrap_or(u32::MAX))
    }

    /// Remove a connection's entry (its guard calls this once).
    pub fn close(&mut self, key: RegistryKey) {
        self.entries.try_remove(key.0 as usize);
    }

    fn get_mut(&mut self, key: RegistryKey) -> Option<&mut SessionEntry> {
        self.entries.get_mut(key.0 as usize)
    }

    /// Record what kind of session the connection turned out to be.
    pub fn set_protocol(&mut self, key: RegistryKey, protocol: SessionProtocol) {
        if let Some(e) = self.get_mut(key) {
            e.protocol = protocol;
        }
    }

    /// Record the MQTT client id (once per session).
    pub fn set_client_id(&mut self, key: RegistryKey, client_id: &str) {
        if let Some(e) = self.get_mut(key) {
            e.client_id = Some(Box::new(client_id.into()));
        }
    }

    /// Number of open entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add device-side bytes received.
    pub fn add_in(&mut self, key: RegistryKey, n: u64) {
        if let Some(e) = self.get_mut(key) {
            e.bytes_in += n;
        }
    }

    /// Add device-side bytes sent.
    pub fn add_out(&mut self, key: RegistryKey, n: u64) {
        if let Some(e) = self.get_mut(key) {
            e.bytes_out += n;
        }
    }

    /// Record whom the connection is billed to (its SIM, if known, and group).
    pub fn set_identity(&mut self, key: RegistryKey, usage: crate::stats::usage::UsageKey) {
        if !self.entries.contains(key.0 as usize) {
            return;
        }
        let group = match self.group_keys.iter().position(|k| *k == usage.group) {
            Some(i) => i,
            None => {
                self.group_keys.push(usage.group);
                self.group_keys.len() - 1
            }
        };
        let group = u16::try_from(group).unwrap_or(NO_NAME);
        if let Some(e) = self.get_mut(key) {
            e.imsi = usage.imsi;
            e.group = group;
        }
    }

    /// Record the destination routed to: `id` in the plan of `generation`, named `name`.
    /// Costs an index lookup unless the plan changed or the name was never seen on this shard.
    pub fn set_destination(
        &mut self,
        key: RegistryKey,
        generation: u64,
        id: DestinationId,
        name: &str,
    ) {
        if !self.entries.contains(key.0 as usize) {
            return;
        }
        let index = usize::from(id.0);
        if self.by_destination.0 != generation {
            self.by_destination = (generation, Vec::new());
        }
        let cache = &mut self.by_destination.1;
        if cache.len() <= index {
            cache.resize(index + 1, NO_NAME);
        }
        if cache[index] == NO_NAME {
            let interned = match self.names.iter().position(|n| &**n == name) {
                Some(i) => i,
                None => {
                    self.names.push(name.into());
                    self.names.len() - 1
                }
            };
            // Names past u16::MAX - 1 (never, in practice) are shown as none.
            cache[index] = u16::try_from(interned).unwrap_or(NO_NAME);
        }
        let name = cache[index];
        if let Some(e) = self.get_mut(key) {
            e.destination = name;
        }
    }

    /// Copy out the page `query` asks for: every matching entry is counted, at most
    /// `offset + limit` are copied. `group_name` names a group key; `now` ages the entries.
    pub fn page(
        &self,
        shard: usize,
        query: &SessionQuery,
        now: Instant,
        group_name: impl Fn(u64) -> Option<String>,
    ) -> SessionPage {
        let want = query.offset.saturating_add(query.limit);
        let mut page = SessionPage::default();
        let since_epoch = self
            .epoch
            .map_or(0, |epoch| now.saturating_duration_since(epoch).as_secs());
        let wanted_destination = match query.destination.as_deref() {
            Some(d) => match self.names.iter().position(|n| &**n == d) {
                Some(i) => Some(i),
                None => return page,
            },
            None => None,
        };
        for (_, e) in &self.entries {
            if !matches(e, query, wanted_destination) {
                continue;
            }
            page.total += 1;
            if page.rows.len() < want {
                page.rows.push(SessionRow {
                    shard,
                    peer: SocketAddr::new(e.ip, e.port),
                    imsi: e.imsi.map(|i| i.to_string()),
                    group: self
                        .group_keys
                        .get(usize::from(e.group))
                        .and_then(|k| group_name(*k)),
                    protocol: e.protocol.name(),
                    destination: self
                        .names
                        .get(usize::from(e.destination))
                        .map(|n| n.to_string()),
                    age_secs: since_epoch.saturating_sub(u64::from(e.started)),
                    bytes_in: e.bytes_in,
                    bytes_out: e.bytes_out,
                    client_id: e.client_id.as_deref().map(|c| c.to_string()),
                });
            }
        }
        page
    }
}

/// Whether `e` passes the filters of `q`; `destination` is the interned index of the
/// destination asked for.
fn matches(e: &SessionEntry, q: &SessionQuery, destination: Option<usize>) -> bool {
    if q.protocol
        .as_deref()
        .is_some_and(|p| p != e.protocol.name())
    {
        return false;
    }
    if destination.is_some_and(|d| d != usize::from(e.destination)) {
        return false;
    }
    if let Some(want) = q.imsi.as_deref() {
        if e.imsi.is_none_or(|i| i.to_string() != want) {
            return false;
        }
    }
    true
}

/// Merge shard pages (in shard order) into the page `offset..offset + limit` of all of them,
/// with the total across shards.
pub fn merge_pages(pages: Vec<SessionPage>, offset: usize, limit: usize) -> SessionPage {
    let total = pages.iter().map(|p| p.total).sum();
    let rows = pages
        .into_iter()
        .flat_map(|p| p.rows)
        .skip(offset)
        .take(limit)
        .collect();
    SessionPage { total, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 40000))
    }

    fn table(n: u8, now: Instant) -> SessionTable {
        let mut t = SessionTable::default();
        for i in 0..n {
            let protocol = if i % 2 == 0 {
                SessionProtocol::Http
            } else {
                SessionProtocol::MqttSession
            };
            t.open(peer(i), protocol, now);
        }
        t
    }

    fn query(offset: usize, limit: usize) -> SessionQuery {
        SessionQuery {
            offset,
            limit,
            ..SessionQuery::default()
        }
    }

    #[test]
    fn a_page_copies_at_most_offset_plus_limit_and_counts_all() {
        let now = Instant::now();
        let t = table(10, now);
        let p = t.page(0, &query(2, 3), now, |_| None);
        assert_eq!(p.total, 10);
        assert_eq!(p.rows.len(), 5, "offset + limit rows, not the whole table");
        let p = t.page(0, &query(0, 1000), now, |_| None);
        assert_eq!(p.rows.len(), 10);
    }

    #[test]
    fn merged_pages_skip_offset_and_keep_the_total() {
        let now = Instant::now();
        let (a, b) = (table(4, now), table(3, now));
        let q = query(3, 2);
        let pages = vec![a.page(0, &q, now, |_| None), b.page(1, &q, now, |_| None)];
        let merged = merge_pages(pages, q.offset, q.limit);
        assert_eq!(merged.total, 7);
        let at: Vec<_> = merged.rows.iter().map(|r| (r.shard, r.peer)).collect();
        assert_eq!(at, vec![(0, peer(3)), (1, peer(0))]);
        // Past the end: empty rows, same total.
        let merged = merge_pages(vec![a.page(0, &query(7, 5), now, |_| None)], 7, 5);
        assert_eq!((merged.total, merged.rows.len()), (4, 0));
    }

    #[test]
    fn filters_apply_before_paging() {
        let now = Instant::now();
        let mut t = table(6, now);
        let key = t.open(peer(9), SessionProtocol::Http, now);
        t.set_destination(key, 0, DestinationId(1), "sink");
        let imsi = Imsi::parse("440101234567890").expect("imsi");
        t.set_identity(
            key,
            crate::stats::usage::UsageKey {
                imsi: Some(imsi),
                group: 7,
            },
        );
        let q = SessionQuery {
            protocol: Some("mqtt-session".into()),
            ..query(0, 100)
        };
        assert_eq!(t.page(0, &q, now, |_| None).total, 3);
        let q = SessionQuery {
            destination: Some("sink".into()),
            imsi: Some("440101234567890".into()),
            ..query(0, 100)
        };
        let p = t.page(0, &q, now, |k| (k == 7).then(|| "fleet".to_string()));
        assert_eq!(p.total, 1);
        assert_eq!(p.rows[0].imsi.as_deref(), Some("440101234567890"));
        assert_eq!(p.rows[0].group.as_deref(), Some("fleet"));
        assert_eq!(p.rows[0].destination.as_deref(), Some("sink"));
    }

    #[test]
    fn closed_entries_leave_and_bytes_add_up() {
        let now = Instant::now();
        let mut t = SessionTable::default();
        let a = t.open(peer(1), SessionProtocol::Http, now);
        let b = t.open(peer(2), SessionProtocol::Http, now);
        t.add_in(a, 10);
        t.add_out(a, 20);
        t.add_in(a, 5);
        t.close(b);
        t.close(b);
        assert_eq!(t.len(), 1);
        let p = t.page(0, &query(0, 10), now, |_| None);
        assert_eq!((p.rows[0].bytes_in, p.rows[0].bytes_out), (15, 20));
        t.close(a);
        assert!(t.is_empty());
        // A stale key is harmless.
        t.add_in(a, 1);
        t.set_destination(a, 0, DestinationId(0), "x");
    }

    fn destination_of(t: &SessionTable, now: Instant) -> Vec<Option<String>> {
        t.page(0, &query(0, 100), now, |_| None)
            .rows
            .into_iter()
            .map(|r| r.destination)
            .collect()
    }

    #[test]
    fn destination_names_are_interned_once_and_survive_a_renumbering_reload() {
        let now = Instant::now();
        let mut t = SessionTable::default();
        let a = t.open(peer(1), SessionProtocol::Http, now);
        let b = t.open(peer(2), SessionProtocol::Http, now);
        assert_eq!(destination_of(&t, now), vec![None, None]);
        t.set_destination(a, 0, DestinationId(0), "first");
        t.set_destination(b, 0, DestinationId(0), "first");
        // A reload renumbered the destinations: "first" is now id 1, id 0 is "second".
        t.set_destination(b, 1, DestinationId(1), "first");
        t.set_destination(a, 1, DestinationId(0), "second");
        assert_eq!(t.names.len(), 2, "{:?}", t.names);
        assert_eq!(
            destination_of(&t, now),
            vec![Some("second".into()), Some("first".into())]
        );
        let q = SessionQuery {
            destination: Some("first".into()),
            ..query(0, 100)
        };
        assert_eq!(t.page(0, &q, now, |_| None).rows[0].peer, peer(2));
        let q = SessionQuery {
            destination: Some("never-routed".into()),
            ..query(0, 100)
        };
        assert_eq!(t.page(0, &q, now, |_| None).total, 0);
    }

    #[test]
    fn an_entry_stays_small() {
        // What every connection pays (twice over while the slab doubles): see the module doc
        // and tests/idle_memory.rs.
        assert!(
            std::mem::size_of::<slab::Slab<SessionEntry>>() > 0
                && std::mem::size_of::<SessionEntry>() <= 72,
            "{} B",
            std::mem::size_of::<SessionEntry>()
        );
    }

    #[test]
    fn age_counts_from_accept() {
        let t0 = Instant::now();
        let mut t = SessionTable::default();
        t.open(peer(1), SessionProtocol::Http, t0);
        t.open(
            peer(2),
            SessionProtocol::Http,
            t0 + std::time::Duration::from_secs(5),
        );
        let later = t0 + std::time::Duration::from_secs(65);
        let ages: Vec<u64> = t
            .page(0, &query(0, 10), later, |_| None)
            .rows
            .iter()
            .map(|r| r.age_secs)
            .collect();
        assert_eq!(ages, vec![65, 60]);
    }
}
