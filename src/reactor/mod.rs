//! The per-shard io_uring reactor and executor — the only module of simgate allowed `unsafe`.
//!
//! One reactor lives on one shard thread and is never shared: every type here is `!Send` except
//! [`Notifier`]. [`block_on`] builds the ring on the calling thread, runs a future to completion
//! while driving tasks started with [`spawn`], socket operations and timers, then tears everything
//! down safely.
//!
//! ```text
//!  loop turn:  now = Instant::now() ─► fire due timers ─► poll main future (if woken)
//!              ─► run the queued tasks, then what they woke (up to 4 passes; async-task Runnables)
//!              ─► ONE io_uring_enter: submit every SQE pushed this turn, wait for >= 1 CQE
//!                 (bounded by the next timer deadline; zero wait if work is already queued)
//!              ─► reap CQEs into op slots, wake their owners
//! ```
//!
//! What it does:
//! - **Operations** live in a [`slab`] of op slots keyed by the SQE `user_data` (key + generation).
//!   A slot owns every piece of memory the kernel may touch for that op (send bytes, `msghdr` and
//!   iovecs, socket address, eventfd counter). Memory is released only when the op's final CQE
//!   arrives.
//! - **Cancellation is explicit.** A future dropped before its completion (for example one that lost
//!   a [`timeout`]) marks its slot *orphaned* and pushes an `IORING_OP_ASYNC_CANCEL`; the slot is
//!   freed by the final CQE. Late completions of orphaned ops are cleaned up: provided buffers go
//!   back to the ring, sockets accepted for a dropped listener are closed.
//! - **Multishot accept and multishot recv** with a provided-buffer ring (`IORING_REGISTER_PBUF_RING`),
//!   so an idle connection holds no read buffer. Completions that arrive while nobody awaits are
//!   queued in the owner's slot. When the ring runs dry the kernel ends a multishot recv with
//!   `ENOBUFS`; the stream parks until a [`RecvBuf`] is returned and then re-arms (no busy loop, no
//!   error for the caller).
//! - **Timers** are a userspace binary heap; the loop waits with `io_uring_enter` + `EXT_ARG`
//!   timespec until the earliest deadline (no `IORING_OP_TIMEOUT` SQEs). Time is cached once per
//!   turn ([`now`]).
//! - **Executor**: `async_task::spawn_local` tasks on a local run queue. Wakers may be invoked on
//!   any thread: on the reactor thread they push to the local queue (no lock, no atomic); from a
//!   foreign thread they take a slow path (mutex-protected queue + eventfd write that wakes the ring).
//!   Cross-thread signalling meant by design goes through [`Notifier`].
//! - **Teardown** ([`block_on`] returning): remaining tasks are dropped, then every in-flight op is
//!   cancelled and its completion drained *before* the buffer ring is unregistered and any memory the
//!   kernel could write is freed. If the kernel does not finish within a bound, the memory is leaked
//!   on purpose rather than freed under the kernel.
//!
//! What it does NOT do: files, UDP, registered files/buffers, zero-copy send, SQPOLL, linked
//! timeouts, work stealing or any sharing between shards. The surface is kept narrow (listener,
//! stream, timers, spawn, notifier) so an epoll backend can stand beside it later.
//!
//! Ring setup tries `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN` first, then `COOP_TASKRUN`,
//! then plain; [`stats`] reports which one ([`SetupMode`]).

mod bufring;
mod core;
mod guarded;
mod net;
mod notify;
mod select;
mod signal;
mod time;
mod timers;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::rc::Rc;

pub use self::bufring::RecvBuf;
pub use self::core::SetupMode;
pub use self::guarded::Guarded;
pub use self::net::{TcpListener, TcpStream};
pub use self::notify::{notifier, Notifier, NotifyListener};
pub use self::select::{select2, Either, Select2};
pub use self::signal::{Broadcast, Signal};
pub use self::time::{now, sleep, sleep_until, timeout, timeout_at, Elapsed, Sleep, Timeout};

use self::core::Reactor;

/// Sizes of one shard's ring and provided-buffer pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactorConfig {
    /// Submission queue entries (the completion queue gets four times as many). 1..=32768.
    pub ring_entries: u32,
    /// Number of provided receive buffers shared by every stream of the shard. Power of two,
    /// at most 32768.
    pub recv_buffers: u16,
    /// Size in bytes of each receive buffer (> 0). One recv completion carries at most this much.
    pub recv_buffer_size: u32,
}

impl Default for ReactorConfig {
    /// 4096 ring entries, 4096 receive buffers of 16 KiB (64 MiB of receive memory per shard).
    fn default() -> Self {
        ReactorConfig {
            ring_entries: 4096,
            recv_buffers: 4096,
            recv_buffer_size: 16 * 1024,
        }
    }
}

/// Counters of the current thread's reactor, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// SQEs pushed to the submission queue (including cancels).
    pub ops_submitted: u64,
    /// Submission batches: `io_uring_enter` calls (or submits) that handed at least one queued
    /// SQE to the kernel. `ops_submitted / submissions` is the mean batch size.
    pub submissions: u64,
    /// CQEs reaped.
    pub completions: u64,
    /// Event-loop turns.
    pub loop_turns: u64,
    /// Provided receive buffers currently held by user code or queued in stream slots.
    pub recv_buffers_in_use: u32,
    /// Total provided receive buffers.
    pub recv_buffers_total: u32,
    /// Multishot recvs re-armed after the kernel ended them with `ENOBUFS`.
    pub enobufs_rearms: u64,
    /// Multishot recvs paused because their owner had `RECV_QUEUE_CAP` buffers queued unread
    /// (back-pressure on that one peer).
    pub recv_pauses: u64,
    /// Op slots still waiting for a final completion (including orphaned ones and the reactor's
    /// own eventfd read used for cross-thread wake-ups).
    pub ops_in_flight: u32,
    /// Tasks started with [`spawn`] and not yet finished or dropped.
    pub tasks_alive: u32,
    /// Timers ([`sleep`], [`timeout`]) armed now: neither fired nor dropped.
    pub timers_armed: u32,
    /// Timers fired since the reactor started.
    pub timers_fired: u64,
    /// Which ring setup flags the kernel accepted.
    pub setup_mode: SetupMode,
}

/// Build a reactor on this thread and run `fut` to completion while driving spawned tasks, socket
/// operations and timers.
///
/// On return, remaining tasks are dropped, every in-flight op is cancelled and its completion
/// drained before the ring and buffer memory are released (buffers are never freed while the kernel
/// may still write into them).
///
/// # Errors
/// `InvalidInput` for a bad [`ReactorConfig`]; the ring setup error (for example `EPERM` where
/// io_uring is forbidden); `AlreadyExists` if a reactor already runs on this thread; any
/// unexpected `io_uring_enter` error.
pub fn block_on<F: Future>(cfg: &ReactorConfig, fut: F) -> io::Result<F::Output> {
    if core::current().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a reactor already runs on this thread",
        ));
    }
    let reactor = Reactor::new(cfg)?;
    core::install(&reactor);
    let result = {
        let fut = std::pin::pin!(fut);
        reactor.run(fut)
        // the main future is dropped here, while the reactor is still alive
    };
    reactor.shutdown();
    core::uninstall();
    result
}

/// Spawn a task on the current thread's reactor. The task runs on this thread only; the returned
/// handle may be awaited, dropped (cancels the task) or `.detach()`ed.
///
/// # Panics
/// If no reactor runs on this thread (call it inside [`block_on`]). This is a programming error,
/// never something a peer controls.
pub fn spawn<F>(fut: F) -> async_task::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let reactor: Rc<Reactor> = match core::current() {
        Some(r) => r,
        None => panic!("reactor::spawn called outside reactor::block_on"),
    };
    reactor.spawn(fut)
}

/// Counters of the reactor running on this thread; all zero if there is none.
pub fn stats() -> ReactorStats {
    core::current().map(|r| r.stats()).unwrap_or_default()
}

/// True if the last [`block_on`] on this thread could not drain every cancelled op within its
/// bound (5 s) and therefore leaked the op memory and buffer pool instead of freeing memory the
/// kernel might still write. Worth a log line at shard shutdown; expected to stay false.
pub fn last_teardown_leaked() -> bool {
    core::last_teardown_leaked()
}
