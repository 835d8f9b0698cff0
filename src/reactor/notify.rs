//! Cross-thread wake-up of a shard: an eventfd written by [`Notifier::notify`] (any thread) and
//! read by an io_uring read op in [`NotifyListener::wait`] (the reactor thread).
//!
//! Notifications coalesce: any number of `notify` calls between two waits resolve one wait. The
//! payload (commands, snapshots) travels through the caller's own channel; this only wakes.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::{opcode, types};

use super::core::{current_or_err, eventfd_write, new_eventfd, Keep, OpKind, Reactor};

/// The sending half: `Send + Sync + Clone`, usable from any thread.
#[derive(Debug, Clone)]
pub struct Notifier {
    fd: Arc<OwnedFd>,
}

impl Notifier {
    /// Wake the listener's shard (a single 8-byte `write` to the eventfd; never blocks in practice).
    ///
    /// # Errors
    /// The `write` error, which would mean the eventfd is broken.
    pub fn notify(&self) -> io::Result<()> {
        eventfd_write(self.fd.as_raw_fd())
    }
}

/// The receiving half, used on the reactor thread only. It keeps the eventfd alive as long as
/// notifiers exist.
pub struct NotifyListener {
    fd: Arc<OwnedFd>,
    /// The pending eventfd read, owned by the listener so a dropped `wait()` loses nothing.
    read_op: Option<(Rc<Reactor>, usize)>,
}

impl NotifyListener {
    /// Resolve after at least one [`Notifier::notify`] since the previous wait returned.
    /// The read op belongs to the listener: dropping this future (e.g. in a `timeout`) leaves it
    /// armed, and a notification it already consumed is reported by the next `wait`.
    ///
    /// # Errors
    /// No reactor on this thread, or the read failing.
    pub async fn wait(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_wait(cx)).await
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_op.is_none() {
            let reactor = current_or_err()?;
            let mut counter = Box::new(0u64);
            let entry = opcode::Read::new(
                types::Fd(self.fd.as_raw_fd()),
                (&mut *counter as *mut u64).cast::<u8>(),
                8,
            )
            .build();
            let key = reactor.submit(entry, OpKind::Single, Keep::Counter(counter))?;
            self.read_op = Some((reactor, key));
        }
        let Some((reactor, key)) = &self.read_op else {
            return Poll::Pending;
        };
        let (c, _) = match reactor.poll_single(*key, cx) {
            Poll::Ready(v) => v,
            Poll::Pending => return Poll::Pending,
        };
        self.read_op = None;
        if c.res < 0 {
            return Poll::Ready(Err(io::Error::from_raw_os_error(-c.res)));
        }
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for NotifyListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyListener")
            .field("fd", &self.fd.as_raw_fd())
            .field("armed", &self.read_op.is_some())
            .finish()
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        if let Some((reactor, key)) = self.read_op.take() {
            reactor.orphan(key);
        }
    }
}

/// Create a notifier pair. The listener must be awaited on a reactor thread.
///
/// # Errors
/// `eventfd` failing (fd limit).
pub fn notifier() -> io::Result<(Notifier, NotifyListener)> {
    let fd = Arc::new(new_eventfd()?);
    Ok((
        Notifier { fd: fd.clone() },
        NotifyListener { fd, read_op: None },
    ))
}
