//! Shard-local wake-ups between tasks of one reactor: the one primitive in two shapes.
//!
//! - [`Signal`]: one waiter, latched. A `notify` before the `wait` is remembered, so no wake-up
//!   is lost (a session's mailbox, the pool keeper's "a warm connection was taken").
//! - [`Broadcast`]: any number of waiters, by epoch. [`Broadcast::changed`] completes at the
//!   first `notify_all` after it was created (requests waiting for a pooled connection; the
//!   shard's drain, which is a broadcast notified once).
//!
//! Both are cancel-safe: dropping a wait loses nothing and frees what it registered. No atomics
//! and no locks: tasks of one shard only. Waking another shard goes through
//! [`super::Notifier`].
//!
//! What this module does not do: carry data (the caller keeps it beside the signal) or time out
//! (combine with [`super::timeout`]).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// A wake-up flag for one waiting task.
#[derive(Default)]
pub struct Signal {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Wake the waiter (or make its next `wait` return at once).
    pub fn notify(&self) {
        self.notified.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Wait until notified since the last `wait` returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A broadcast wake-up: every wait started before a [`Broadcast::notify_all`] completes.
#[derive(Default)]
pub struct Broadcast {
    epoch: Cell<u64>,
    waiters: RefCell<Slab<Waker>>,
}

impl Broadcast {
    /// Wake every waiter.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let wakers: Vec<Waker> = self.waiters.borrow_mut().drain().collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// How many times [`Broadcast::notify_all`] has been called (wrapping).
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Completes at the first notification after this call.
    pub fn changed(&self) -> Changed<'_> {
        self.changed_since(self.epoch.get())
    }

    /// Completes once the epoch differs from `epoch` (at once if it already does).
    pub fn changed_since(&self, epoch: u64) -> Changed<'_> {
        Changed {
            signal: self,
            since: epoch,
            key: None,
        }
    }

    /// Waits registered now.
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// Future returned by [`Broadcast::changed`].
#[must_use = "futures do nothing unless awaited"]
pub struct Changed<'a> {
    signal: &'a Broadcast,
    since: u64,
    /// This wait's slot in the waiter slab; valid only while the epoch is still `since` (a
    /// notification empties the slab).
    key: Option<usize>,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.epoch.get() != self.since {
            self.key = None;
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.key {
            Some(k) => waiters[k].clone_from(cx.waker()),
            None => {
                let k = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        // After a notification the slab was emptied and the key may name a newer waiter.
        if let (Some(k), true) = (self.key.take(), self.signal.epoch.get() == self.since) {
            self.signal.waiters.borrow_mut().try_remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(f: Pin<&mut impl Future<Output = ()>>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        f.poll(&mut cx).is_ready()
    }

    #[test]
    fn signal_remembers_a_notify_before_the_wait() {
        let s = Signal::default();
        s.notify();
        assert!(poll(std::pin::pin!(s.wait())));
        let mut w = Box::pin(s.wait());
        assert!(!poll(w.as_mut()));
        s.notify();
        assert!(poll(w.as_mut()));
    }

    #[test]
    fn broadcast_wakes_every_waiter_and_dropped_waits_free_their_slot() {
        let b = Broadcast::default();
        let mut one = Box::pin(b.changed());
        let mut two = Box::pin(b.changed());
        assert!(!poll(one.as_mut()));
        assert!(!poll(one.as_mut()), "a re-poll reuses the slot");
        assert!(!poll(two.as_mut()));
        assert_eq!(b.waiting(), 2);
        drop(two);
        assert_eq!(b.waiting(), 1);
        b.notify_all();
        assert!(poll(one.as_mut()));
        assert_eq!(b.waiting(), 0);
        // A wait started after the notification waits for the next one.
        let mut three = Box::pin(b.changed());
        assert!(!poll(three.as_mut()));
        // A stale wait dropped after a notification must not free a newer waiter's slot.
        let mut stale = Box::pin(b.changed_since(b.epoch()));
        assert!(!poll(stale.as_mut()));
        b.notify_all();
        let mut newer = Box::pin(b.changed());
        assert!(!poll(newer.as_mut()));
        drop(stale);
        assert_eq!(b.waiting(), 1);
        assert!(poll(three.as_mut()));
        assert!(poll(std::pin::pin!(b.changed_since(0))));
    }
}
