//! Client-id ownership across the whole gateway process, for aggregate-mode MQTT: simgate is
//! the devices' broker there, so it must do what a broker does when a second connection
//! presents a client id that is already connected — close the existing one (MQTT 5 DISCONNECT
//! 0x8E "session taken over"; MQTT 3.1.1 §3.1.4-2: disconnect it). Without this, a second
//! device could read and publish as the first while both stayed connected.
//!
//! A client id is owned per listener (devices of one listener see one broker); a device may
//! land on any shard, so ownership is one table for every shard: a `parking_lot` mutex taken
//! once at CONNECT and once when the session ends — never per message. An eviction crosses
//! shards as data: the owner's token goes into its shard's inbox and that shard's eventfd is
//! notified; the shard then ends the session through the session's mailbox
//! (`AggregateShard::evict`). Tokens tell a session apart from a later one with the same id, so
//! a late release or a late eviction never touches the new owner.
//!
//! What this module does not do: anything across gateway nodes (each process has its own table;
//! docs/operations.md says what that means), session mode (there the upstream broker sees the
//! device's client id and takes over itself), or ending a session (the shard does).

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::policy::ListenerId;
use crate::reactor::Notifier;

/// The session that owns a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    token: u64,
    shard: usize,
}

/// One shard's evictions to carry out, and how to wake it.
#[derive(Debug, Default)]
struct Inbox {
    evicted: Mutex<Vec<u64>>,
    notifier: OnceLock<Notifier>,
}

/// Who holds each client id, gateway-wide. `Send + Sync`; one per running gateway (the shard layer creates it).
#[derive(Debug)]
pub struct ClientIds {
    owners: Mutex<Table>,
    inboxes: Box<[Inbox]>,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<(ListenerId, Bytes), Owner>,
    next_token: u64,
}

/// A session's claim on its client id: pass it back to [`ClientIds::release`] when the session
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Identifies the session for eviction (unique for the life of the process).
    pub token: u64,
}

impl ClientIds {
    /// An empty table for `shards` shards.
    pub fn new(shards: usize) -> ClientIds {
        ClientIds {
            owners: Mutex::new(Table::default()),
            inboxes: (0..shards).map(|_| Inbox::default()).collect(),
        }
    }

    /// Tell the table how to wake `shard` (set once, when the shard has started).
    pub fn set_notifier(&self, shard: usize, notifier: Notifier) {
        if let Some(inbox) = self.inboxes.get(shard) {
            let _ = inbox.notifier.set(notifier);
        }
    }

    /// Make the session on `shard` the owner of `client_id` on `listener`. A previous owner is
    /// queued for eviction on its shard (which is woken) and its token returned.
    pub fn claim(
        &self,
        listener: ListenerId,
        client_id: &Bytes,
        shard: usize,
    ) -> (Claim, Option<u64>) {
        let (claim, previous) = {
            let mut table = self.owners.lock();
            table.next_token += 1;
            let token = table.next_token;
            let previous = table
                .by_id
                .insert((listener, client_id.clone()), Owner { token, shard });
            (Claim { token }, previous)
        };
        if let Some(previous) = previous {
            if let Some(inbox) = self.inboxes.get(previous.shard) {
                inbox.evicted.lock().push(previous.token);
                if let Some(notifier) = inbox.notifier.get() {
                    // A broken eventfd would also stall the shard's commands; the shard falls
                    // back to polling then and still finds the eviction.
                    let _ = notifier.notify();
                }
            }
        }
        (claim, previous.map(|p| p.token))
    }

    /// The session of `claim` ended: forget it, unless a later session owns the id by now.
    pub fn release(&self, listener: ListenerId, client_id: &Bytes, claim: Claim) {
        let mut table = self.owners.lock();
        let key = (listener, client_id.clone());
        if table
            .by_id
            .get(&key)
            .is_some_and(|o| o.token == claim.token)
        {
            table.by_id.remove(&key);
        }
    }

    /// Take the tokens of `shard`'s sessions that were taken over since the last call.
    pub fn take_evicted(&self, shard: usize) -> Vec<u64> {
        match self.inboxes.get(shard) {
            Some(inbox) => std::mem::take(&mut *inbox.evicted.lock()),
            None => Vec::new(),
        }
    }

    /// Client ids owned now (all listeners).
    pub fn len(&self) -> usize {
        self.owners.lock().by_id.len()
    }

    /// True when no client id is owned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_evicts_the_first_on_its_shard_and_late_releases_are_ignored() {
        let ids = ClientIds::new(2);
        let twin = Bytes::from_static(b"twin");
        let (first, evicted) = ids.claim(ListenerId(0), &twin, 1);
        assert_eq!(evicted, None);
        // Same id on another listener: another broker as far as devices can tell.
        let (_, evicted) = ids.claim(ListenerId(1), &twin, 0);
        assert_eq!(evicted, None);
        let (second, evicted) = ids.claim(ListenerId(0), &twin, 0);
        assert_eq!(evicted, Some(first.token));
        assert_eq!(ids.take_evicted(1), vec![first.token]);
        assert!(ids.take_evicted(1).is_empty());
        assert!(ids.take_evicted(0).is_empty());
        // The evicted session's release must not free the id the second one holds.
        ids.release(ListenerId(0), &twin, first);
        let (_, evicted) = ids.claim(ListenerId(0), &twin, 1);
        assert_eq!(evicted, Some(second.token));
        assert_eq!(ids.take_evicted(0), vec![second.token]);
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn release_frees_the_id() {
        let ids = ClientIds::new(1);
        let id = Bytes::from_static(b"dev-1");
        let (claim, _) = ids.claim(ListenerId(0), &id, 0);
        ids.release(ListenerId(0), &id, claim);
        assert!(ids.is_empty());
        assert_eq!(ids.claim(ListenerId(0), &id, 0).1, None);
    }
}
