//! A shard-local broadcast "drain started" signal: every idle connection waiting on it wakes
//! once when the shard begins shutting down, so keep-alive connections with no request in
//! flight close at once instead of holding the drain until its deadline.
//!
//! Single-threaded (shard-local): `Cell`/`RefCell`, no atomics. Each waiter holds a slot in a
//! slab for as long as its [`DrainSignal::wait`] future lives; dropping the future frees it, so
//! the slab never holds more entries than there are waiting connections.
//!
//! The signal also carries the drain's deadline ([`DrainSignal::fire_until`]), so a connection
//! that must finish something first (an MQTT session waiting for the broker's acknowledgements
//! before it says goodbye) knows how long it has. It does not enforce the deadline: the shard
//! stops waiting for connections then.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use slab::Slab;

/// The signal. Fire it once; waits started afterwards complete at once.
#[derive(Default)]
pub struct DrainSignal {
    fired: Cell<bool>,
    deadline: Cell<Option<Instant>>,
    waiters: RefCell<Slab<Waker>>,
}

impl DrainSignal {
    /// Start draining: wake every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.waiters.borrow_mut().drain().collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Start draining, to end by `deadline`: wake every waiter.
    pub fn fire_until(&self, deadline: Instant) {
        self.deadline.set(Some(deadline));
        self.fire();
    }

    /// When the drain ends, if it was started with [`DrainSignal::fire_until`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// True once fired.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Complete when the signal fires (at once if it already has). Cancel-safe.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            signal: self,
            key: None,
        }
    }
}

/// Future returned by [`DrainSignal::wait`].
pub struct DrainWait<'a> {
    signal: &'a DrainSignal,
    key: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            self.key = None;
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.key {
            Some(k) if waiters.contains(k) => waiters[k].clone_from(cx.waker()),
            _ => {
                let k = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let mut waiters = self.signal.waiters.borrow_mut();
            if waiters.contains(k) {
                waiters.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn fire_wakes_waiters_and_dropped_waits_free_their_slot() {
        let signal = DrainSignal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut a = Box::pin(signal.wait());
        let mut b = Box::pin(signal.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(
            a.as_mut().poll(&mut cx).is_pending(),
            "re-poll reuses the slot"
        );
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.waiters.borrow().len(), 2);
        drop(b);
        assert_eq!(signal.waiters.borrow().len(), 1);
        signal.fire();
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(signal.wait()).as_mut().poll(&mut cx).is_ready());
        assert_eq!(signal.waiters.borrow().len(), 0);
    }

    #[test]
    fn fire_until_records_the_deadline() {
        let signal = DrainSignal::default();
        assert_eq!(signal.deadline(), None);
        let at = Instant::now();
        signal.fire_until(at);
        assert!(signal.fired());
        assert_eq!(signal.deadline(), Some(at));
    }
}
