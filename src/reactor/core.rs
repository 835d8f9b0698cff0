//! The ring, the op slots, the executor and the event loop.
//!
//! INVARIANT (op memory): every pointer placed in an SQE points into heap memory owned by the op's
//! slot ([`Keep`]) or by the reactor itself (the provided-buffer pool). A slot is removed from the
//! slab only after the kernel posted its final CQE (or it never reached the kernel), so the kernel
//! never sees freed memory.
//!
//! INVARIANT (re-entrancy): no `RefCell` of the reactor is borrowed while user code runs (task
//! polls, wakers, drops of user values). Wakers are taken out of slots and invoked after the borrow
//! ends; values dropped by the reactor (slots, queued completions) are moved out first.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_task::Runnable;
use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::bufring::BufPool;
use super::timers::Timers;
use super::{ReactorConfig, ReactorStats};

/// `user_data` of SQEs whose completion is ignored (cancels).
const IGNORED_USER_DATA: u64 = u64::MAX;
/// How long teardown waits for the kernel to finish cancelled ops before leaking their memory.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Which io_uring setup flags the kernel accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetupMode {
    /// No reactor (stats of a thread without one).
    #[default]
    None,
    /// `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`: completions are posted only when the loop
    /// enters the kernel, no inter-processor interrupts.
    DeferTaskrun,
    /// `COOP_TASKRUN` only.
    CoopTaskrun,
    /// Plain ring (older kernels).
    Plain,
}

/// One CQE as seen by an op's owner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    /// `res`: a count or fd if >= 0, `-errno` otherwise.
    pub res: i32,
    /// CQE flags (buffer id, MORE).
    pub flags: u32,
}

impl Completion {
    const CANCELLED: Completion = Completion {
        res: -libc::ECANCELED,
        flags: 0,
    };
}

/// What an op produces besides its result; decides how orphaned completions are cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// One CQE (send, connect, read, ...).
    Single,
    /// Multishot accept: each CQE may carry a new fd.
    Accept,
    /// Multishot recv with buffer selection: each CQE may carry a provided buffer.
    Recv,
}

impl OpKind {
    fn is_multishot(self) -> bool {
        !matches!(self, OpKind::Single)
    }
}

/// A vectored send: the `msghdr` and iovec array the kernel reads, and the bytes they point into.
pub(crate) struct VectoredSend {
    msg: libc::msghdr,
    iov: Vec<libc::iovec>,
    data: VecDeque<Bytes>,
}

impl VectoredSend {
    /// At most this many iovecs per sendmsg (Linux `UIO_MAXIOV`).
    const MAX_IOV: usize = 1024;

    pub(crate) fn new(data: Vec<Bytes>) -> Box<Self> {
        Box::new(VectoredSend {
            // SAFETY: msghdr is a plain C struct of integers and raw pointers; all-zero is its
            // documented "empty" value (null name, no iovecs, no control data).
            msg: unsafe { std::mem::zeroed() },
            iov: Vec::new(),
            data: data.into_iter().filter(|b| !b.is_empty()).collect(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Point the msghdr at the first `MAX_IOV` slices. Call only while no op uses this value.
    pub(crate) fn prepare(&mut self) -> *const libc::msghdr {
        self.iov.clear();
        for chunk in self.data.iter().take(Self::MAX_IOV) {
            self.iov.push(libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            });
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        &self.msg
    }

    /// Drop the first `sent` bytes.
    pub(crate) fn advance(&mut self, mut sent: usize) {
        while sent > 0 {
            let Some(front) = self.data.front_mut() else {
                return;
            };
            if front.len() <= sent {
                sent -= front.len();
                self.data.pop_front();
            } else {
                bytes::Buf::advance(front, sent);
                sent = 0;
            }
        }
    }
}

/// Memory an op's SQE points into, owned by the slot until the final CQE.
pub(crate) enum Keep {
    /// Nothing (accept, recv with provided buffers, shutdown).
    Nothing,
    /// Bytes being sent.
    Bytes(Bytes),
    /// A vectored send.
    Vectored(Box<VectoredSend>),
    /// A socket address for connect (held, never read: the kernel reads it).
    Addr(#[allow(dead_code)] Box<socket2::SockAddr>),
    /// An eventfd counter being read into (held, never read: only the wake-up matters).
    Counter(#[allow(dead_code)] Box<u64>),
}

struct OpSlot {
    generation: u32,
    kind: OpKind,
    /// The kernel still owns the op (its final CQE has not arrived).
    in_flight: bool,
    /// The owner is gone: clean up completions and free the slot at the final CQE.
    orphaned: bool,
    waker: Option<Waker>,
    completions: VecDeque<Completion>,
    keep: Keep,
    /// A multishot recv whose owner fell behind was asked to stop (see
    /// [`RECV_QUEUE_CAP`]); its final completion is `-ECANCELED`, after which the owner re-arms.
    pausing: bool,
}

/// Most received buffers queued for one socket whose owner is not reading. Past it the
/// multishot recv is cancelled (queued data is kept) and re-armed when the owner reads again,
/// so the kernel's TCP window pushes back on that one peer instead of it draining the shard's
/// shared buffer ring and starving every other connection.
pub(crate) const RECV_QUEUE_CAP: usize = 16;

/// Passes over the run queue per loop turn (see `Reactor::run`).
const RUN_PASSES: usize = 4;

/// The slow path for wakers invoked off the reactor thread.
pub(crate) struct Remote {
    id: u64,
    owner: std::thread::ThreadId,
    pending: AtomicBool,
    closed: AtomicBool,
    queue: Mutex<Vec<Runnable>>,
    wake_fd: OwnedFd,
}

impl Remote {
    fn new() -> io::Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Remote {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            owner: std::thread::current().id(),
            pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
            wake_fd: new_eventfd()?,
        })
    }

    /// Wake the ring from another thread.
    fn kick(&self) {
        let _ = eventfd_write(self.wake_fd.as_raw_fd());
    }

    fn push(&self, runnable: Runnable) {
        if self.closed.load(Ordering::Acquire) {
            if std::thread::current().id() == self.owner {
                drop(runnable); // drops the future on its own thread
            } else {
                // Dropping a local task off its thread would panic; leaking is the safe choice.
                std::mem::forget(runnable);
            }
            return;
        }
        match self.queue.lock() {
            Ok(mut q) => q.push(runnable),
            Err(poisoned) => poisoned.into_inner().push(runnable),
        }
        self.pending.store(true, Ordering::Release);
        self.kick();
    }

    fn take(&self) -> Vec<Runnable> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        match self.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Create a blocking, close-on-exec eventfd (blocking so io_uring polls it instead of failing with
/// `EAGAIN`).
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; the returned fd is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd counter.
pub(crate) fn eventfd_write(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if n == 8 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // EAGAIN means the counter is saturated: a wake-up is already pending.
    if err.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(err)
    }
}

struct MainWake {
    woken: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for MainWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if std::thread::current().id() != self.remote.owner {
            self.remote.kick();
        }
    }
}

#[derive(Default)]
struct Counters {
    ops_submitted: Cell<u64>,
    /// Kernel entries that handed at least one queued SQE over.
    submissions: Cell<u64>,
    completions: Cell<u64>,
    loop_turns: Cell<u64>,
    enobufs_rearms: Cell<u64>,
    recv_pauses: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

type RunQueue = RefCell<Option<(u64, VecDeque<Runnable>)>>;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
    /// Whether the last teardown on this thread had to leak op memory.
    static LAST_TEARDOWN_LEAKED: Cell<bool> = const { Cell::new(false) };
    /// The local run queue, tagged with the id of the reactor that owns it.
    static RUN_QUEUE: RunQueue = const { RefCell::new(None) };
}

/// The reactor of this thread, if one runs.
pub(crate) fn current() -> Option<Rc<Reactor>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The reactor of this thread or an error for socket APIs used outside [`super::block_on`].
pub(crate) fn current_or_err() -> io::Result<Rc<Reactor>> {
    current().ok_or_else(no_reactor)
}

pub(crate) fn no_reactor() -> io::Error {
    io::Error::other("no io_uring reactor running on this thread")
}

pub(crate) fn install(reactor: &Rc<Reactor>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(reactor.clone()));
    RUN_QUEUE.with(|q| *q.borrow_mut() = Some((reactor.remote.id, VecDeque::new())));
}

pub(crate) fn uninstall() {
    let reactor = CURRENT.with(|c| c.borrow_mut().take());
    let queue = RUN_QUEUE.with(|q| q.borrow_mut().take());
    drop(queue);
    drop(reactor);
}

/// See [`super::last_teardown_leaked`].
pub(crate) fn last_teardown_leaked() -> bool {
    LAST_TEARDOWN_LEAKED.with(|l| l.get())
}

fn pop_runnable() -> Option<Runnable> {
    RUN_QUEUE.with(|q| q.borrow_mut().as_mut().and_then(|(_, q)| q.pop_front()))
}

fn run_queue_len() -> usize {
    RUN_QUEUE.with(|q| q.borrow().as_ref().map_or(0, |(_, q)| q.len()))
}

fn schedule(remote: &Arc<Remote>, runnable: Runnable) {
    // Keep the runnable outside the closure: if the thread-local is already destroyed it must
    // not be dropped here (possibly on a foreign thread) but go through the remote path.
    let mut pending = Some(runnable);
    let _ = RUN_QUEUE.try_with(|q| {
        if let Some((id, queue)) = q.borrow_mut().as_mut() {
            if *id == remote.id {
                queue.extend(pending.take());
            }
        }
    });
    if let Some(runnable) = pending {
        remote.push(runnable);
    }
}

/// Removes a finished or dropped task from the registry used at teardown.
struct TaskGuard {
    reactor: Rc<Reactor>,
    key: usize,
    generation: u32,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut tasks = self.reactor.tasks.borrow_mut();
        if tasks
            .get(self.key)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            let removed = tasks.remove(self.key);
            drop(tasks);
            drop(removed);
        }
    }
}

/// One shard's reactor. Lives in a thread-local `Rc`; handles (streams, timers) keep an `Rc` too.
pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<OpSlot>>,
    generation: Cell<u32>,
    pub(crate) bufs: Rc<BufPool>,
    pub(crate) timers: RefCell<Timers>,
    tasks: RefCell<Slab<(u32, Waker)>>,
    remote: Arc<Remote>,
    remote_op: Cell<Option<usize>>,
    now: Cell<Instant>,
    counters: Counters,
    /// `ops_submitted` when SQEs were last handed to the kernel: pushes numbered above it are
    /// still only in the submission queue.
    submitted_upto: Cell<u64>,
    closed: Cell<bool>,
    setup_mode: SetupMode,
}

fn build_ring(entries: u32) -> io::Result<(IoUring, SetupMode)> {
    let cq = entries.saturating_mul(4);
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(cq)
        .build(entries)
    {
        return Ok((ring, SetupMode::DeferTaskrun));
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_cqsize(cq)
        .build(entries)
    {
        return Ok((ring, SetupMode::CoopTaskrun));
    }
    Ok((IoUring::new(entries)?, SetupMode::Plain))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Reactor {
    pub(crate) fn new(cfg: &ReactorConfig) -> io::Result<Rc<Self>> {
        if cfg.ring_entries == 0 || cfg.ring_entries > 32768 {
            return Err(invalid("ring_entries must be in 1..=32768"));
        }
        if !cfg.recv_buffers.is_power_of_two() || cfg.recv_buffers > 32768 {
            return Err(invalid("recv_buffers must be a power of two <= 32768"));
        }
        if cfg.recv_buffer_size == 0 || cfg.recv_buffer_size > i32::MAX as u32 {
            return Err(invalid("recv_buffer_size must be > 0"));
        }
        let (ring, setup_mode) = build_ring(cfg.ring_entries)?;
        let bufs = Rc::new(BufPool::new(cfg.recv_buffers, cfg.recv_buffer_size)?);
        bufs.register(&ring.submitter())?;
        let reactor = Rc::new(Reactor {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::with_capacity(1024)),
            generation: Cell::new(0),
            bufs,
            timers: RefCell::new(Timers::default()),
            tasks: RefCell::new(Slab::new()),
            remote: Arc::new(Remote::new()?),
            remote_op: Cell::new(None),
            now: Cell::new(Instant::now()),
            counters: Counters::default(),
            submitted_upto: Cell::new(0),
            closed: Cell::new(false),
            setup_mode,
        });
        reactor.arm_remote_wake()?;
        Ok(reactor)
    }

    /// Time cached at the top of the current loop turn.
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    pub(crate) fn stats(&self) -> ReactorStats {
        ReactorStats {
            ops_submitted: self.counters.ops_submitted.get(),
            submissions: self.counters.submissions.get(),
            completions: self.counters.completions.get(),
            loop_turns: self.counters.loop_turns.get(),
            recv_buffers_in_use: self.bufs.in_use(),
            recv_buffers_total: self.bufs.total(),
            enobufs_rearms: self.counters.enobufs_rearms.get(),
            recv_pauses: self.counters.recv_pauses.get(),
            ops_in_flight: self.ops.borrow().len() as u32,
            tasks_alive: self.tasks.borrow().len() as u32,
            timers_armed: self.timers.borrow().armed(),
            timers_fired: self.timers.borrow().fired_total(),
            setup_mode: self.setup_mode,
        }
    }

    pub(crate) fn count_enobufs_rearm(&self) {
        bump(&self.counters.enobufs_rearms);
    }

    // ----- executor -------------------------------------------------------------------------

    pub(crate) fn spawn<F>(self: &Rc<Self>, fut: F) -> async_task::Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let generation = self.next_generation();
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let guard = TaskGuard {
            reactor: self.clone(),
            key: entry.key(),
            generation,
        };
        // Not `async move { let _guard = guard; fut.await }`: that stores `fut` twice.
        let wrapped = super::guarded::Guarded::new(fut, guard);
        let remote = self.remote.clone();
        let (runnable, task) =
            async_task::spawn_local(wrapped, move |r: Runnable| schedule(&remote, r));
        entry.insert((generation, runnable.waker()));
        drop(tasks);
        runnable.schedule();
        task
    }

    fn next_generation(&self) -> u32 {
        let g = self.generation.get().wrapping_add(1);
        self.generation.set(g);
        g
    }

    /// Run the main future to completion.
    pub(crate) fn run<F: Future>(self: &Rc<Self>, mut fut: Pin<&mut F>) -> io::Result<F::Output> {
        let main = Arc::new(MainWake {
            woken: AtomicBool::new(true),
            remote: self.remote.clone(),
        });
        let waker = Waker::from(main.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wakers = Vec::new();
        loop {
            self.now.set(Instant::now());
            bump(&self.counters.loop_turns);
            self.timers
                .borrow_mut()
                .fire_due(self.now.get(), &mut wakers);
            for w in wakers.drain(..) {
                w.wake();
            }
            self.poll_remote_wake()?;
            if main.woken.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                    return Ok(out);
                }
            }
            // Run what was queued at the start, then, for up to RUN_PASSES passes in all, what
            // those runs woke: a task handing work to another (a request to an HTTP/2
            // connection's driver task, and the response back) goes on in the same turn instead
            // of costing a kernel entry per hop. Each pass runs only what was queued when it
            // began, so a task that keeps waking itself runs at most RUN_PASSES times a turn and
            // cannot starve io.
            for _ in 0..RUN_PASSES {
                let queued = run_queue_len();
                if queued == 0 {
                    break;
                }
                for _ in 0..queued {
                    match pop_runnable() {
                        Some(r) => {
                            r.run();
                        }
                        None => break,
                    }
                }
            }
            let busy = main.woken.load(Ordering::Acquire) || run_queue_len() > 0;
            self.enter(busy)?;
            self.reap();
        }
    }

    fn arm_remote_wake(self: &Rc<Self>) -> io::Result<()> {
        let mut counter = Box::new(0u64);
        let entry = opcode::Read::new(
            types::Fd(self.remote.wake_fd.as_raw_fd()),
            (&mut *counter as *mut u64).cast(),
            8,
        )
        .build();
        let key = self.submit(entry, OpKind::Single, Keep::Counter(counter))?;
        self.remote_op.set(Some(key));
        Ok(())
    }

    /// Move runnables queued by foreign threads to the local queue; re-arm the eventfd read.
    fn poll_remote_wake(self: &Rc<Self>) -> io::Result<()> {
        if let Some(key) = self.remote_op.get() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready((c, _)) = self.poll_single(key, &mut cx) {
                self.remote_op.set(None);
                if c.res < 0 && c.res != -libc::EINTR {
                    return Err(io::Error::from_raw_os_error(-c.res));
                }
                self.arm_remote_wake()?;
            }
        }
        for r in self.remote.take() {
            r.schedule();
        }
        Ok(())
    }

    // ----- ring -----------------------------------------------------------------------------

    /// Push one SQE; if the submission queue is full, submit what is queued and retry.
    fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every pointer in `entry` points into memory owned by its op slot or the buffer
        // pool, which outlive the op (see the module INVARIANT).
        if unsafe { ring.submission().push(entry) }.is_err() {
            ring.submit()?;
            self.mark_submitted();
            // SAFETY: as above.
            unsafe { ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        bump(&self.counters.ops_submitted);
        Ok(())
    }

    /// Hand every queued SQE to the kernel now, without waiting for completions. Called before a
    /// socket whose ops were just cancelled closes its fd: the kernel resolves an SQE's fd when
    /// it is submitted, so an op pushed this turn must reach the kernel while the fd number
    /// still names its socket (a later socket could otherwise reuse the number).
    ///
    /// `since` is [`Reactor::push_seq`] read right after the caller's last push: nothing is
    /// done (no syscall) if that push already reached the kernel, the usual case.
    pub(crate) fn submit_pending(&self, since: u64) {
        if since <= self.submitted_upto.get() {
            return;
        }
        let ring = self.ring.borrow();
        self.mark_submitted();
        // An error here leaves the SQEs queued; the next loop turn submits them.
        let _ = ring.submit();
    }

    /// Note that every SQE pushed so far is about to be handed to the kernel (call right before
    /// a submitting `io_uring_enter`): counts a submission batch if any was still queued.
    fn mark_submitted(&self) {
        let pushed = self.counters.ops_submitted.get();
        if pushed > self.submitted_upto.get() {
            bump(&self.counters.submissions);
        }
        self.submitted_upto.set(pushed);
    }

    /// The sequence number of the latest push (see [`Reactor::submit_pending`]).
    pub(crate) fn push_seq(&self) -> u64 {
        self.counters.ops_submitted.get()
    }

    /// Submit queued SQEs and wait for completions: not at all if `busy`, else until the next timer.
    fn enter(&self, busy: bool) -> io::Result<()> {
        let wait = if busy {
            Some(Duration::ZERO)
        } else {
            self.timers
                .borrow_mut()
                .next_deadline()
                .map(|at| at.saturating_duration_since(Instant::now()))
        };
        self.enter_with(wait)
    }

    fn enter_with(&self, wait: Option<Duration>) -> io::Result<()> {
        let ring = self.ring.borrow();
        self.mark_submitted();
        let result = match wait {
            None => ring.submit_and_wait(1),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reap every available CQE and dispatch it to its slot.
    fn reap(&self) {
        let mut batch: Vec<(u64, i32, u32)> = Vec::new();
        loop {
            {
                let mut ring = self.ring.borrow_mut();
                batch.extend(
                    ring.completion()
                        .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
                );
            }
            if batch.is_empty() {
                return;
            }
            for (user_data, res, flags) in batch.drain(..) {
                self.dispatch(user_data, Completion { res, flags });
            }
        }
    }

    fn dispatch(&self, user_data: u64, c: Completion) {
        bump(&self.counters.completions);
        if user_data == IGNORED_USER_DATA {
            return;
        }
        let key = (user_data & 0xffff_ffff) as usize;
        let generation = (user_data >> 32) as u32;
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key).filter(|s| s.generation == generation) else {
            return;
        };
        if slot.kind == OpKind::Recv && cqueue::buffer_select(c.flags).is_some() {
            self.bufs.mark_taken();
        }
        let final_cqe = !(slot.kind.is_multishot() && cqueue::more(c.flags));
        if final_cqe {
            slot.in_flight = false;
        }
        if slot.orphaned {
            let kind = slot.kind;
            let removed = final_cqe.then(|| ops.remove(key));
            drop(ops);
            self.release(kind, c);
            drop(removed);
        } else {
            slot.completions.push_back(c);
            let pause = slot.kind == OpKind::Recv
                && slot.in_flight
                && !slot.pausing
                && slot.completions.len() >= RECV_QUEUE_CAP;
            if pause {
                slot.pausing = true;
            }
            let waker = slot.waker.take();
            drop(ops);
            if pause {
                bump(&self.counters.recv_pauses);
                let cancel = opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(IGNORED_USER_DATA);
                // If the push fails the recv simply keeps running (no worse than no cap).
                let _ = self.push(&cancel);
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Give back what an unwanted completion carries: a provided buffer or an accepted socket.
    fn release(&self, kind: OpKind, c: Completion) {
        match kind {
            OpKind::Recv => {
                if let Some(bid) = cqueue::buffer_select(c.flags) {
                    self.bufs.recycle(bid);
                }
            }
            OpKind::Accept => {
                if c.res >= 0 {
                    // SAFETY: a non-negative accept result is a new fd that nobody else owns.
                    drop(unsafe { OwnedFd::from_raw_fd(c.res) });
                }
            }
            OpKind::Single => {}
        }
    }

    // ----- ops ------------------------------------------------------------------------------

    /// Put `entry` in a new slot owning `keep` and push it. Returns the slot key.
    ///
    /// The pointers in `entry` must point into `keep`'s heap memory (or the buffer pool).
    pub(crate) fn submit(
        &self,
        entry: squeue::Entry,
        kind: OpKind,
        keep: Keep,
    ) -> io::Result<usize> {
        if self.closed.get() {
            return Err(no_reactor());
        }
        let generation = self.next_generation();
        let key = self.ops.borrow_mut().insert(OpSlot {
            generation,
            kind,
            in_flight: true,
            orphaned: false,
            waker: None,
            completions: VecDeque::new(),
            keep,
            pausing: false,
        });
        if key > u32::MAX as usize {
            let slot = self.ops.borrow_mut().remove(key);
            drop(slot);
            return Err(io::Error::other("too many io_uring ops in flight"));
        }
        let user_data = (u64::from(generation) << 32) | key as u64;
        if let Err(e) = self.push(&entry.user_data(user_data)) {
            let slot = self.ops.borrow_mut().remove(key);
            drop(slot);
            return Err(e);
        }
        Ok(key)
    }

    /// Poll a single-shot op: its completion and the memory it kept, freeing the slot.
    pub(crate) fn poll_single(&self, key: usize, cx: &mut Context<'_>) -> Poll<(Completion, Keep)> {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            return Poll::Ready((Completion::CANCELLED, Keep::Nothing));
        };
        if let Some(c) = slot.completions.pop_front() {
            let slot = ops.remove(key);
            drop(ops);
            return Poll::Ready((c, slot.keep));
        }
        let old = register_waker(&mut slot.waker, cx);
        drop(ops);
        drop(old);
        Poll::Pending
    }

    /// Poll a multishot op for its next completion. The flag is true when the op has ended
    /// (no more completions will come; the slot is freed and the key must be forgotten).
    pub(crate) fn poll_multi(&self, key: usize, cx: &mut Context<'_>) -> Poll<(Completion, bool)> {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            return Poll::Ready((Completion::CANCELLED, true));
        };
        if let Some(c) = slot.completions.pop_front() {
            let ended = !slot.in_flight && slot.completions.is_empty();
            let removed = ended.then(|| ops.remove(key));
            drop(ops);
            drop(removed);
            return Poll::Ready((c, ended));
        }
        let old = register_waker(&mut slot.waker, cx);
        drop(ops);
        drop(old);
        Poll::Pending
    }

    /// The owner of op `key` is gone: clean up what it queued, cancel it if the kernel still has
    /// it, and let the final completion free the slot.
    pub(crate) fn orphan(&self, key: usize) {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            return;
        };
        let kind = slot.kind;
        let queued = std::mem::take(&mut slot.completions);
        let waker = slot.waker.take();
        let mut removed = None;
        if slot.in_flight {
            slot.orphaned = true;
            let user_data = (u64::from(slot.generation) << 32) | key as u64;
            drop(ops);
            let cancel = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(IGNORED_USER_DATA);
            // If the push fails the op stays orphaned; teardown cancels everything anyway.
            let _ = self.push(&cancel);
        } else {
            removed = Some(ops.remove(key));
            drop(ops);
        }
        for c in queued {
            self.release(kind, c);
        }
        drop(waker);
        drop(removed);
    }

    // ----- teardown -------------------------------------------------------------------------

    /// Drop remaining tasks, cancel and drain every in-flight op, unregister the buffer ring.
    pub(crate) fn shutdown(self: &Rc<Self>) {
        LAST_TEARDOWN_LEAKED.with(|l| l.set(false));
        self.drop_tasks();
        let dropped_timers = std::mem::take(&mut *self.timers.borrow_mut());
        drop(dropped_timers);
        self.remote_op.set(None);

        // Every remaining slot becomes orphaned: queued completions are released now, late ones
        // as they arrive. Owners that outlive the reactor find their slot gone.
        let keys: Vec<usize> = self.ops.borrow().iter().map(|(k, _)| k).collect();
        for key in keys {
            self.orphan(key);
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        while !self.ops.borrow().is_empty() {
            if Instant::now() >= deadline {
                self.leak_kernel_memory();
                break;
            }
            let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(IGNORED_USER_DATA);
            if self.push(&cancel_all).is_err()
                || self.enter_with(Some(Duration::from_millis(100))).is_err()
            {
                self.leak_kernel_memory();
                break;
            }
            self.reap();
        }
        self.closed.set(true);
        self.bufs.unregister(&self.ring.borrow().submitter());
        self.remote.closed.store(true, Ordering::Release);
        let stranded = self.remote.take();
        drop(stranded);
    }

    fn drop_tasks(&self) {
        loop {
            let wakers: Vec<(u32, Waker)> = self.tasks.borrow_mut().drain().collect();
            let stranded = self.remote.take();
            for r in stranded {
                r.schedule();
            }
            if wakers.is_empty() && run_queue_len() == 0 {
                return;
            }
            for (_, w) in wakers {
                w.wake();
            }
            // Dropping a Runnable drops its future here, on the owning thread; that may wake or
            // spawn more tasks, which the next round handles.
            while let Some(r) = pop_runnable() {
                drop(r);
            }
        }
    }

    /// The kernel did not give ops back in time: never free what it may still write.
    fn leak_kernel_memory(&self) {
        LAST_TEARDOWN_LEAKED.with(|l| l.set(true));
        let ops = std::mem::take(&mut *self.ops.borrow_mut());
        std::mem::forget(ops);
        std::mem::forget(self.bufs.clone());
    }
}

/// Store `cx`'s waker in `slot`, returning the one it replaces (drop it outside any borrow).
fn register_waker(slot: &mut Option<Waker>, cx: &Context<'_>) -> Option<Waker> {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => None,
        _ => slot.replace(cx.waker().clone()),
    }
}

/// A single-shot op awaited by its submitter. Dropping it before completion orphans the op.
pub(crate) struct Op {
    reactor: Rc<Reactor>,
    key: Option<usize>,
}

impl Op {
    pub(crate) fn new(reactor: Rc<Reactor>, key: usize) -> Self {
        Op {
            reactor,
            key: Some(key),
        }
    }
}

impl Future for Op {
    type Output = (Completion, Keep);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(key) = self.key else {
            return Poll::Ready((Completion::CANCELLED, Keep::Nothing));
        };
        let out = self.reactor.poll_single(key, cx);
        if out.is_ready() {
            self.key = None;
        }
        out
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.reactor.orphan(key);
        }
    }
}
