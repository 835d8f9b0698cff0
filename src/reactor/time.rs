//! Time for tasks: the cached clock ([`now`]), [`sleep`] and [`timeout`]. Deadlines live in the
//! reactor's userspace timer heap (`timers`); the event loop sleeps in `io_uring_enter` with an
//! `EXT_ARG` timespec until the earliest one. No `IORING_OP_TIMEOUT` SQEs are used.
//!
//! Time is read once per loop turn ([`now`]); deadlines fire at the first turn that starts at or
//! after them. A dropped [`Sleep`] removes its entry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::core::{current, Reactor};
/// The time cached at the top of the current loop turn; `Instant::now()` outside a reactor.
pub fn now() -> Instant {
    current().map_or_else(Instant::now, |r| r.now())
}

/// A future that completes at a deadline. Create it with [`sleep`] or [`sleep_until`]; it must be
/// polled on the thread of the reactor that will drive it. `!Send`.
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    registration: Option<(Rc<Reactor>, usize, u64)>,
}

/// Sleep for `d` from [`now`].
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(now().checked_add(d).unwrap_or_else(far_future))
}

/// Sleep until `at`.
pub fn sleep_until(at: Instant) -> Sleep {
    Sleep {
        deadline: at,
        registration: None,
    }
}

fn far_future() -> Instant {
    // ~30 years; only reached by absurd durations.
    now() + Duration::from_secs(86400 * 365 * 30)
}

impl Sleep {
    /// When this sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Move the deadline (for example an idle timer pushed back on activity).
    pub fn reset(&mut self, at: Instant) {
        self.deregister();
        self.deadline = at;
    }

    fn deregister(&mut self) {
        if let Some((reactor, key, seq)) = self.registration.take() {
            let waker = reactor.timers.borrow_mut().remove(key, seq);
            drop(waker);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    /// # Panics
    /// If polled on a thread without a reactor while the deadline is in the future.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match &this.registration {
            Some((reactor, key, seq)) => {
                let (fired, old) = reactor.timers.borrow_mut().update(*key, *seq, cx.waker());
                drop(old);
                if fired || this.deadline <= reactor.now() {
                    this.deregister();
                    return Poll::Ready(());
                }
                Poll::Pending
            }
            None => {
                let Some(reactor) = current() else {
                    if this.deadline <= Instant::now() {
                        return Poll::Ready(());
                    }
                    panic!("reactor::Sleep polled outside reactor::block_on");
                };
                if this.deadline <= reactor.now() {
                    return Poll::Ready(());
                }
                let (key, seq) = reactor
                    .timers
                    .borrow_mut()
                    .insert(this.deadline, cx.waker().clone());
                this.registration = Some((reactor, key, seq));
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.deregister();
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, Elapsed)
    }
}

/// Run `f` for at most `d`. On expiry `f` is dropped (its in-flight ops are cancelled).
pub fn timeout<F: Future>(d: Duration, f: F) -> Timeout<F> {
    timeout_at(now().checked_add(d).unwrap_or_else(far_future), f)
}

/// Run `f` until `deadline`. `f` is polled first, so a ready future wins over an expired deadline.
pub fn timeout_at<F: Future>(deadline: Instant, f: F) -> Timeout<F> {
    Timeout {
        inner: f,
        timer: sleep_until(deadline),
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`timeout`] and [`timeout_at`]: `f` and its timer side by side
    /// (a named future, not an `async fn`, which would hold `f` twice — once as its argument,
    /// once pinned — in every connection task that awaits a timed operation).
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        inner: F,
        timer: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}
