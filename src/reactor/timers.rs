//! The timer heap of one reactor: a userspace min-heap of deadlines with their wakers. An entry
//! removed before it fires leaves a stale heap record, skipped when popped; the heap is rebuilt
//! when stale records outnumber live ones (bounded memory under many short-lived timeouts).
//!
//! It also counts what a metrics reader wants of it: timers armed now (inserted, neither fired
//! nor removed) and timers fired since the reactor started.
//!
//! What this module does not do: read the clock or wait (the event loop in `core` does), or
//! offer futures (`time`: `sleep`, `timeout`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::task::Waker;
use std::time::Instant;

use slab::Slab;

struct TimerEntry {
    seq: u64,
    waker: Option<Waker>,
    fired: bool,
}

/// The per-reactor timer heap.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    entries: Slab<TimerEntry>,
    next_seq: u64,
    stale: usize,
    armed: usize,
    fired_total: u64,
}

impl Timers {
    pub(super) fn insert(&mut self, deadline: Instant, waker: Waker) -> (usize, u64) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let key = self.entries.insert(TimerEntry {
            seq,
            waker: Some(waker),
            fired: false,
        });
        self.heap.push(Reverse((deadline, seq, key)));
        self.armed += 1;
        (key, seq)
    }

    pub(super) fn is_live(&self, key: usize, seq: u64) -> bool {
        self.entries.get(key).is_some_and(|e| e.seq == seq)
    }

    /// Returns true if the timer already fired; otherwise stores the waker (returning the old one).
    pub(super) fn update(&mut self, key: usize, seq: u64, waker: &Waker) -> (bool, Option<Waker>) {
        match self.entries.get_mut(key) {
            Some(e) if e.seq == seq => {
                if e.fired {
                    return (true, None);
                }
                match &e.waker {
                    Some(w) if w.will_wake(waker) => (false, None),
                    _ => (false, e.waker.replace(waker.clone())),
                }
            }
            _ => (true, None),
        }
    }

    pub(super) fn remove(&mut self, key: usize, seq: u64) -> Option<Waker> {
        if !self.is_live(key, seq) {
            return None;
        }
        let entry = self.entries.remove(key);
        if !entry.fired {
            self.armed -= 1;
            self.stale += 1;
            if self.stale > 1024 && self.stale > 2 * self.entries.len() {
                self.compact();
            }
        }
        entry.waker
    }

    fn compact(&mut self) {
        let entries = &self.entries;
        self.heap.retain(|Reverse((_, seq, key))| {
            entries.get(*key).is_some_and(|e| e.seq == *seq && !e.fired)
        });
        self.stale = 0;
    }

    /// Mark every timer due at `now` as fired and collect its waker.
    pub(crate) fn fire_due(&mut self, now: Instant, wakers: &mut Vec<Waker>) {
        while let Some(Reverse((deadline, seq, key))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            match self.entries.get_mut(key) {
                Some(e) if e.seq == seq => {
                    e.fired = true;
                    self.armed -= 1;
                    self.fired_total += 1;
                    wakers.extend(e.waker.take());
                }
                _ => self.stale = self.stale.saturating_sub(1),
            }
        }
    }

    /// Timers armed now: inserted, neither fired nor removed.
    pub(crate) fn armed(&self) -> u32 {
        u32::try_from(self.armed).unwrap_or(u32::MAX)
    }

    /// Timers fired since this heap was built.
    pub(crate) fn fired_total(&self) -> u64 {
        self.fired_total
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, seq, key))) = self.heap.peek().copied() {
            if self.is_live(key, seq) {
                return Some(deadline);
            }
            self.heap.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        None
    }
}

#[cfg(test)]
impl Timers {
    pub(crate) fn test_insert(&mut self, at: Instant, waker: Waker) -> (usize, u64) {
        self.insert(at, waker)
    }
    pub(crate) fn test_remove(&mut self, key: usize, seq: u64) {
        drop(self.remove(key, seq));
    }
    pub(crate) fn test_heap_len(&self) -> usize {
        self.heap.len()
    }
}
