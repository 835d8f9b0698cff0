//! The shard's provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and [`RecvBuf`].
//!
//! INVARIANT: a buffer id is in exactly one place: in the ring (the kernel may write into it), in a
//! recv CQE not yet reaped, queued in a stream slot, or held by one [`RecvBuf`]. Only [`BufPool::recycle`]
//! puts an id back in the ring, and it is called exactly once per id taken out (by `RecvBuf::drop`
//! or by the reactor releasing an unwanted completion).
//!
//! Memory: the ring entries and the buffers are two zeroed, page-aligned heap allocations owned by
//! the pool. The pool is reference-counted (reactor + every live `RecvBuf`) and is freed only after
//! the reactor drained every op and unregistered the ring.

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Waker;

/// The kernel's `struct io_uring_buf` (ABI: 16 bytes; in entry 0, `resv` is the ring tail).
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const PAGE: usize = 4096;

/// A fixed pool of equal-size receive buffers, shared with the kernel through a buffer ring.
pub(crate) struct BufPool {
    ring: NonNull<RawBuf>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail (the kernel only reads the shared one).
    tail: Cell<u16>,
    in_use: Cell<u32>,
    registered: Cell<bool>,
    /// Streams parked after `ENOBUFS`, woken when a buffer comes back.
    waiters: RefCell<Vec<Waker>>,
}

/// Buffer group id of the shard's pool (one pool per ring).
pub(crate) const BUF_GROUP: u16 = 0;

impl BufPool {
    /// Allocate `entries` (power of two) buffers of `buf_size` bytes and fill the ring with them.
    pub(crate) fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "recv buffer pool too large");
        let ring_bytes = usize::from(entries) * std::mem::size_of::<RawBuf>();
        let ring_layout =
            Layout::from_size_align(ring_bytes.max(PAGE), PAGE).map_err(|_| too_big())?;
        let bufs_bytes = usize::from(entries)
            .checked_mul(buf_size as usize)
            .ok_or_else(too_big)?;
        let bufs_layout = Layout::from_size_align(bufs_bytes, PAGE).map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, buf_size >= 1, checked by the
        // caller; the ring is at least one page).
        let ring = NonNull::new(unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<RawBuf>());
        let Some(ring) = ring else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        // SAFETY: as above.
        let bufs = NonNull::new(unsafe { alloc::alloc_zeroed(bufs_layout) });
        let Some(bufs) = bufs else {
            // SAFETY: `ring` was allocated just above with `ring_layout`.
            unsafe { alloc::dealloc(ring.as_ptr().cast(), ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let pool = BufPool {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: Cell::new(0),
            in_use: Cell::new(entries.into()),
            registered: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        };
        for bid in 0..entries {
            pool.recycle(bid);
        }
        Ok(pool)
    }

    /// Register the ring with the kernel as buffer group [`BUF_GROUP`].
    pub(crate) fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is page-aligned, holds `entries` entries, and stays allocated
        // until the pool is dropped, which happens only after `unregister` (or never, if the
        // reactor had to leak it).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                BUF_GROUP,
                0,
            )?
        };
        self.registered.set(true);
        Ok(())
    }

    /// Stop the kernel from using the ring. Call only when no op can still select a buffer.
    pub(crate) fn unregister(&self, submitter: &io_uring::Submitter<'_>) {
        if self.registered.replace(false) {
            let _ = submitter.unregister_buf_ring(BUF_GROUP);
        }
    }

    pub(crate) fn total(&self) -> u32 {
        self.entries.into()
    }

    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.get()
    }

    /// Buffers believed to be in the ring (CQEs not yet reaped may have taken some).
    pub(crate) fn available(&self) -> u32 {
        self.total().saturating_sub(self.in_use())
    }

    /// A recv CQE carried a buffer: it left the ring.
    pub(crate) fn mark_taken(&self) {
        self.in_use.set(self.in_use.get().saturating_add(1));
    }

    /// Park a stream until a buffer comes back.
    pub(crate) fn wait_for_buffer(&self, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// Put buffer `bid` back in the ring and wake streams parked on `ENOBUFS`.
    pub(crate) fn recycle(&self, bid: u16) {
        if bid >= self.entries {
            return; // not ours: the kernel never hands out such an id
        }
        let tail = self.tail.get();
        let index = usize::from(tail & (self.entries - 1));
        // SAFETY: `index < entries`, so the entry lies inside the ring allocation. The kernel
        // reads entries only between its head and the published tail; this one is at the tail
        // and not yet published. Fields are written through raw pointers so no reference covers
        // `resv` of entry 0, which is the shared tail.
        unsafe {
            let entry = self.ring.as_ptr().add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(self.buf_ptr(bid) as u64);
            std::ptr::addr_of_mut!((*entry).len).write(self.buf_size);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: entry 0's `resv` is a 2-byte-aligned u16 inside the ring allocation, shared with
        // the kernel, which reads it with acquire semantics; the release store publishes the entry.
        unsafe {
            let shared = std::ptr::addr_of!((*self.ring.as_ptr()).resv) as *const AtomicU16;
            (*shared).store(tail, Ordering::Release);
        }
        self.in_use.set(self.in_use.get().saturating_sub(1));
        if !self.waiters.borrow().is_empty() {
            let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
            for w in waiters {
                w.wake();
            }
        }
    }

    /// Start of buffer `bid`; callers check `bid < entries` first.
    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.entries);
        // SAFETY: callers pass `bid < entries`, so the offset stays inside the buffer allocation
        // of `entries * buf_size` bytes.
        unsafe {
            self.bufs
                .as_ptr()
                .add(usize::from(bid) * self.buf_size as usize)
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: both allocations were made in `new` with these layouts; the pool is dropped only
        // when no RecvBuf exists and the reactor has unregistered the ring after draining every op.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

/// Received bytes in one of the shard's provided buffers. Dropping it gives the buffer back to the
/// ring, so hold it only as long as needed: held buffers are unavailable to every connection of
/// the shard. `!Send`.
pub struct RecvBuf {
    pool: Rc<BufPool>,
    bid: u16,
    len: u32,
}

impl RecvBuf {
    /// Take ownership of buffer `bid` holding `len` bytes (from a recv CQE).
    pub(crate) fn new(pool: Rc<BufPool>, bid: u16, len: u32) -> Self {
        let len = len.min(pool.buf_size);
        RecvBuf { pool, bid, len }
    }
}

impl Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.bid >= self.pool.entries {
            return &[];
        }
        // SAFETY: the buffer is out of the ring (see module INVARIANT), so the kernel does not
        // write it while this RecvBuf lives; `len <= buf_size` bytes were written by the kernel
        // (and the allocation is zero-initialised anyway); the pool outlives `self` via the Rc.
        unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(self.bid), self.len as usize) }
    }
}

impl AsRef<[u8]> for RecvBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool.recycle(self.bid);
    }
}
