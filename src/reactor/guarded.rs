//! [`Guarded`]: a future that keeps a value alive for exactly as long as an inner future.
//!
//! The obvious way to write this, `async move { let _guard = guard; fut.await }`, costs memory:
//! the generator stores the captured `fut` *and*, separately, the pinned copy being awaited, so
//! every such wrapper doubles the inner future's size. Connection tasks were wrapped twice (the
//! open-connection gauge, then the reactor's task-slot guard), which made an idle MQTT device
//! task 11 KiB instead of 3. This combinator stores the future once.
//!
//! It does not poll the guard, change the output, or add wake-ups; it only drops `guard` after
//! `fut` (field order), whether `fut` finished or the task was cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `fut`, with `guard` dropped right after it.
pub struct Guarded<F, G> {
    fut: F,
    guard: G,
}

impl<F, G> Guarded<F, G> {
    /// Wrap `fut`; `guard` lives until the wrapper is dropped.
    pub fn new(fut: F, guard: G) -> Self {
        Guarded { fut, guard }
    }

    /// The guard value.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<F: Future, G> Future for Guarded<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: structural pinning of `fut`: `Guarded` never moves `fut` out of a pinned
        // `self` (no method hands out `&mut F` or takes `F` by value from `Pin<&mut Self>`),
        // implements neither `Drop` nor a manual `Unpin` (the auto `Unpin` requires `F: Unpin`),
        // so once `self` is pinned `fut` stays at its address until it is dropped in place.
        let fut = unsafe { self.map_unchecked_mut(|s| &mut s.fut) };
        fut.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    struct Flag(Rc<Cell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn stores_the_future_once() {
        let inner = async {
            let buf = [0u8; 1000];
            std::future::ready(()).await;
            buf.len()
        };
        let inner_size = std::mem::size_of_val(&inner);
        let guarded = Guarded::new(inner, 0u64);
        // Alignment padding for the guard at most, never a second copy of the future.
        assert!(std::mem::size_of_val(&guarded) < inner_size + 64);
    }

    #[test]
    fn guard_is_dropped_with_the_future_and_output_passes_through() {
        let dropped = Rc::new(Cell::new(false));
        let g = Guarded::new(async { 7 }, Flag(dropped.clone()));
        assert!(!g.guard().0.get());
        let out = crate::reactor::block_on(&crate::reactor::ReactorConfig::default(), g)
            .expect("reactor");
        assert_eq!(out, 7);
        assert!(dropped.get());

        let dropped = Rc::new(Cell::new(false));
        let pending = Guarded::new(std::future::pending::<()>(), Flag(dropped.clone()));
        drop(pending);
        assert!(dropped.get());
    }
}
