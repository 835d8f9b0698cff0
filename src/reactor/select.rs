//! Waiting on two things at once inside one connection task (e.g. device bytes or upstream
//! bytes), without a runtime-specific macro.
//!
//! The loser is dropped, so only pass futures that are cancel-safe: the reactor's `recv` /
//! `recv_append` and `TlsStream::fill` are (received bytes stay queued in the socket's slot
//! until a later call takes them); sends are not.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Which of two futures finished first.
#[derive(Debug)]
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

/// Run `a` and `b` concurrently and return the first output; `a` wins a tie.
///
/// A named future rather than an `async fn`: an `async fn` stores its arguments and, once
/// pinned, a second copy of them, so nested selects doubled at every level. Idle connection
/// tasks sit in a select for their whole life, so its size is paid per idle device.
pub fn select2<A: Future, B: Future>(a: A, b: B) -> Select2<A, B> {
    Select2 { a, b }
}

pin_project_lite::pin_project! {
    /// The future returned by [`select2`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Select2<A, B> {
        #[pin]
        a: A,
        #[pin]
        b: B,
    }
}

impl<A: Future, B: Future> Future for Select2<A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.a.poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = this.b.poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_ready_wins() {
        let cfg = crate::reactor::ReactorConfig {
            ring_entries: 64,
            recv_buffers: 16,
            recv_buffer_size: 1024,
        };
        let out = crate::reactor::block_on(&cfg, async {
            let slow = crate::reactor::sleep(Duration::from_millis(200));
            let fast = async { 7 };
            select2(slow, fast).await
        })
        .expect("reactor");
        assert!(matches!(out, Either::Right(7)));
    }
}
