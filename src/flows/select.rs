//! Waiting on two things at once inside one connection task (e.g. device bytes or upstream
//! bytes), without a runtime-specific macro.
//!
//! The loser is dropped, so only pass futures that are cancel-safe: the reactor's `recv` /
//! `recv_append` and `TlsStream::fill` are (received bytes stay queued in the socket's slot
//! until a later call takes them); sends are not.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

/// Which of two futures finished first.
#[derive(Debug)]
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

/// Run `a` and `b` concurrently and return the first output; `a` wins a tie.
pub async fn select2<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
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
