//! TCP listener and stream over the reactor: multishot accept, multishot recv with provided
//! buffers, send / sendmsg, connect.
//!
//! Ownership: the multishot ops belong to the listener / stream (not to the future awaiting them),
//! so dropping an `accept()` or `recv()` future loses nothing — completions stay queued in the
//! slot until the next call. Dropping the listener / stream orphans and cancels its multishot op
//! and closes the fd; late completions are cleaned up by the reactor.
//!
//! Sockets are kept in blocking mode: io_uring then arms its internal poll instead of failing with
//! `EAGAIN`. Sends use `MSG_NOSIGNAL` (no `SIGPIPE`).

use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::bufring::{RecvBuf, BUF_GROUP};
use super::core::{current_or_err, Keep, Op, OpKind, Reactor, VectoredSend};

fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(res.saturating_neg())
}

/// A listening TCP socket driven by the reactor of the thread that created it. `!Send`.
pub struct TcpListener {
    fd: OwnedFd,
    reactor: Rc<Reactor>,
    accept_op: Option<usize>,
    /// The armed accept is a multishot one.
    armed_multishot: bool,
    /// Accept with single-shot operations (see [`TcpListener::set_one_at_a_time`]).
    one_at_a_time: bool,
}

impl TcpListener {
    /// Adopt a socket that is already bound and listening (options such as `SO_REUSEPORT` are
    /// the caller's). The socket is switched to blocking mode (io_uring polls it).
    ///
    /// # Errors
    /// No reactor on this thread, or `fcntl` failing.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        let reactor = current_or_err()?;
        listener.set_nonblocking(false)?;
        Ok(TcpListener {
            fd: listener.into(),
            reactor,
            accept_op: None,
            armed_multishot: false,
            one_at_a_time: false,
        })
    }

    /// Accept one connection per operation (`true`) instead of with a multishot accept (the
    /// default). A multishot accept lets the kernel open a descriptor for every queued
    /// connection before the caller sees the first, so a burst can run the process out of
    /// descriptors while the caller closes them one by one; one at a time, at most one is open
    /// ahead. Meant for while a connection cap is reached. Takes effect at the next `accept`:
    /// connections already queued for an armed multishot accept are returned first; a
    /// connection the kernel completes for it in the instant it is cancelled is closed.
    pub fn set_one_at_a_time(&mut self, on: bool) {
        self.one_at_a_time = on;
    }

    /// The next accepted connection (with `TCP_NODELAY` set) and its peer address.
    ///
    /// A multishot accept is armed on the first call and re-armed whenever the kernel ends it;
    /// connections accepted meanwhile wait in the listener's slot. A connection whose peer address
    /// can no longer be read (already reset) is closed and skipped.
    ///
    /// # Errors
    /// The accept error reported by the kernel (for example `EMFILE`); the listener stays usable.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            let key = match self.accept_op {
                Some(key) => key,
                None => {
                    let fd = types::Fd(self.fd.as_raw_fd());
                    let entry = if self.one_at_a_time {
                        // Null address and length: accept(2) then writes no peer address (it
                        // is read with getpeername below, as for the multishot accept).
                        opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                            .flags(libc::SOCK_CLOEXEC)
                            .build()
                    } else {
                        opcode::AcceptMulti::new(fd)
                            .flags(libc::SOCK_CLOEXEC)
                            .build()
                    };
                    let key = self.reactor.submit(entry, OpKind::Accept, Keep::Nothing)?;
                    self.accept_op = Some(key);
                    self.armed_multishot = !self.one_at_a_time;
                    key
                }
            };
            let (c, ended) = match self.reactor.poll_multi(key, cx) {
                Poll::Ready(v) => v,
                Poll::Pending if self.one_at_a_time && self.armed_multishot => {
                    // Nothing queued: replace the multishot accept with a single-shot one.
                    self.reactor.orphan(key);
                    self.accept_op = None;
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            };
            if ended {
                self.accept_op = None;
            }
            if c.res < 0 {
                return Poll::Ready(Err(os_error(c.res)));
            }
            // SAFETY: a non-negative accept result is a new fd that nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(c.res) };
            let sock = SockRef::from(&fd);
            let _ = sock.set_tcp_nodelay(true);
            let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) else {
                continue; // peer already gone: drop (close) and take the next one
            };
            let stream = TcpStream::from_owned(fd, self.reactor.clone());
            return Poll::Ready(Ok((stream, peer)));
        }
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// `getsockname` failing, or a non-IP socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&self.fd).local_addr()?)
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        if let Some(key) = self.accept_op.take() {
            self.reactor.orphan(key);
        }
        // the fd closes when `self.fd` drops; the cancelled op holds its own file reference
    }
}

fn socket_addr(addr: SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// A connected TCP socket driven by the reactor of the thread that created it. `!Send`.
pub struct TcpStream {
    fd: OwnedFd,
    reactor: Rc<Reactor>,
    recv_op: Option<usize>,
    /// The send started with [`TcpStream::start_send`], until [`TcpStream::poll_send`] reaps it.
    send_op: Option<usize>,
    /// `Reactor::push_seq` after this stream's latest submission (see `Drop`).
    last_push: u64,
    /// The last multishot recv ended with `ENOBUFS`: re-arm once a buffer is back.
    starved: bool,
    eof: bool,
}

impl TcpStream {
    fn from_owned(fd: OwnedFd, reactor: Rc<Reactor>) -> Self {
        TcpStream {
            fd,
            reactor,
            recv_op: None,
            send_op: None,
            last_push: 0,
            starved: false,
            eof: false,
        }
    }

    /// Connect to `addr` with a fresh socket (`TCP_NODELAY` on) and `IORING_OP_CONNECT`.
    ///
    /// # Errors
    /// `ConnectionRefused`, `TimedOut`, ... as reported by the kernel; no reactor on this thread.
    /// Dropping the future cancels the attempt.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let reactor = current_or_err()?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        let sockaddr = Box::new(SockAddr::from(addr));
        let entry = opcode::Connect::new(
            types::Fd(socket.as_raw_fd()),
            sockaddr.as_ptr().cast::<libc::sockaddr>(),
            sockaddr.len(),
        )
        .build();
        let key = reactor.submit(entry, OpKind::Single, Keep::Addr(sockaddr))?;
        let (c, _) = Op::new(reactor.clone(), key).await;
        if c.res < 0 {
            return Err(os_error(c.res));
        }
        Ok(TcpStream::from_owned(socket.into(), reactor))
    }

    /// Adopt a connected socket (switched to blocking mode; io_uring polls it).
    ///
    /// # Errors
    /// No reactor on this thread, or `fcntl` failing.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        let reactor = current_or_err()?;
        stream.set_nonblocking(false)?;
        Ok(TcpStream::from_owned(stream.into(), reactor))
    }

    /// The next received bytes, or `Ok(None)` once the peer closed its write side (EOF; repeated
    /// calls keep returning `Ok(None)`).
    ///
    /// Underneath is a multishot recv selecting buffers from the shard's ring, armed on the first
    /// call, so an idle connection holds no buffer. Data arriving while nobody awaits is queued in
    /// the stream's slot (bounded by the ring). If the ring runs dry the kernel ends the multishot
    /// with `ENOBUFS`; this call then waits for a buffer to be returned and re-arms, without error.
    /// Dropping the future loses nothing.
    ///
    /// # Errors
    /// The socket error reported by the kernel (`ECONNRESET`, ...).
    pub async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`TcpStream::recv`] as a poll function, for poll-based adapters (`AsyncRead`). Same
    /// contract: `Pending` registers `cx`'s waker and loses nothing (the multishot recv belongs
    /// to the stream), so a caller may stop polling at any point.
    ///
    /// # Errors
    /// As [`TcpStream::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf>>> {
        loop {
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            let key = match self.recv_op {
                Some(key) => key,
                None => {
                    if self.starved {
                        if self.reactor.bufs.available() == 0 {
                            self.reactor.bufs.wait_for_buffer(cx.waker());
                            return Poll::Pending;
                        }
                        self.starved = false;
                        self.reactor.count_enobufs_rearm();
                    }
                    let entry =
                        opcode::RecvMulti::new(types::Fd(self.fd.as_raw_fd()), BUF_GROUP).build();
                    let key = self.reactor.submit(entry, OpKind::Recv, Keep::Nothing)?;
                    self.last_push = self.reactor.push_seq();
                    self.recv_op = Some(key);
                    key
                }
            };
            let (c, ended) = match self.reactor.poll_multi(key, cx) {
                Poll::Ready(v) => v,
                Poll::Pending => return Poll::Pending,
            };
            if ended {
                self.recv_op = None;
            }
            let buf = cqueue::buffer_select(c.flags)
                .map(|bid| RecvBuf::new(self.reactor.bufs.clone(), bid, c.res.max(0) as u32));
            if c.res > 0 {
                return match buf {
                    Some(buf) => Poll::Ready(Ok(Some(buf))),
                    None => Poll::Ready(Err(io::Error::other("recv completion without a buffer"))),
                };
            }
            drop(buf); // an empty buffer, if the kernel attached one, goes straight back
            if c.res == -libc::ENOBUFS {
                self.starved = true;
                self.stop_recv();
                continue;
            }
            if c.res == -libc::ECANCELED && ended {
                // Paused because this owner fell behind (see RECV_QUEUE_CAP); everything queued
                // before the pause has been handed out: re-arm and carry on.
                continue;
            }
            if c.res == 0 {
                self.eof = true;
                self.stop_recv();
                return Poll::Ready(Ok(None));
            }
            self.stop_recv();
            return Poll::Ready(Err(os_error(c.res)));
        }
    }

    /// Forget the multishot recv (cancelling it if the kernel still runs it).
    fn stop_recv(&mut self) {
        if let Some(key) = self.recv_op.take() {
            self.reactor.orphan(key);
        }
    }

    /// Receive once and append the bytes to `buf`; the ring buffer goes straight back.
    /// Returns the number of bytes appended, 0 at EOF.
    ///
    /// # Errors
    /// As [`TcpStream::recv`].
    pub async fn recv_append(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self.recv().await? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                Ok(chunk.len())
            }
            None => Ok(0),
        }
    }

    /// Send every byte of `data`, looping on short sends. The bytes are owned by the op slot until
    /// the kernel is done with them, so dropping this future is safe (the send is cancelled; how
    /// much was sent is then unknown).
    ///
    /// Not an `async fn`, which would hold `data` twice (argument and local) in every
    /// connection task that awaits a send.
    ///
    /// # Errors
    /// `BrokenPipe`, `ConnectionReset`, ... from the kernel; `WriteZero` if the kernel sends nothing.
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    pub fn send_all(&mut self, mut data: Bytes) -> impl Future<Output = io::Result<()>> + '_ {
        async move {
            while !data.is_empty() {
                let len = data.len().min(i32::MAX as usize) as u32;
                let entry = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), data.as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build();
                let key = self
                    .reactor
                    .submit(entry, OpKind::Single, Keep::Bytes(data))?;
                self.last_push = self.reactor.push_seq();
                let (c, keep) = Op::new(self.reactor.clone(), key).await;
                data = match keep {
                    Keep::Bytes(b) => b,
                    _ => return Err(os_error(c.res.min(-libc::ECANCELED))),
                };
                check_sent(c.res)?;
                data.advance(c.res as usize);
            }
            Ok(())
        }
    }

    /// Start one send of `data` that the stream owns until [`TcpStream::poll_send`] reaps it: the
    /// poll-based counterpart of [`TcpStream::send_all`] for adapters that cannot hold a future
    /// borrowing the stream (`AsyncWrite`). At most one such send is in flight per stream.
    ///
    /// The bytes live in the op slot until the kernel is done with them; dropping the stream
    /// cancels the send (how much of it went out is then unknown, as for a dropped `send_all`).
    ///
    /// # Errors
    /// `WouldBlock` if a send started here is still in flight; no reactor; submission failure.
    pub fn start_send(&mut self, data: Bytes) -> io::Result<()> {
        if self.send_op.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a send is already in flight on this stream",
            ));
        }
        let len = data.len().min(i32::MAX as usize) as u32;
        let entry = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), data.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        let key = self
            .reactor
            .submit(entry, OpKind::Single, Keep::Bytes(data))?;
        self.last_push = self.reactor.push_seq();
        self.send_op = Some(key);
        Ok(())
    }

    /// True while a send started with [`TcpStream::start_send`] has not been reaped.
    pub fn send_in_flight(&self) -> bool {
        self.send_op.is_some()
    }

    /// The outcome of the send started with [`TcpStream::start_send`]: the bytes the kernel did
    /// not take (empty when all went out; a short send leaves the rest for the caller to start
    /// again). `Ready(Ok(empty))` when no send is in flight.
    ///
    /// # Errors
    /// As [`TcpStream::send_all`].
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        let Some(key) = self.send_op else {
            return Poll::Ready(Ok(Bytes::new()));
        };
        let (c, keep) = match self.reactor.poll_single(key, cx) {
            Poll::Ready(v) => v,
            Poll::Pending => return Poll::Pending,
        };
        self.send_op = None;
        let Keep::Bytes(mut data) = keep else {
            return Poll::Ready(Err(os_error(c.res.min(-libc::ECANCELED))));
        };
        check_sent(c.res)?;
        data.advance(c.res as usize);
        Poll::Ready(Ok(data))
    }

    /// Send all slices with `sendmsg` (up to 1024 iovecs per op), handling short sends.
    ///
    /// # Errors
    /// As [`TcpStream::send_all`].
    pub async fn send_all_vectored(&mut self, data: Vec<Bytes>) -> io::Result<()> {
        let mut pending = VectoredSend::new(data);
        while !pending.is_empty() {
            let msg = pending.prepare();
            let entry = opcode::SendMsg::new(types::Fd(self.fd.as_raw_fd()), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            let key = self
                .reactor
                .submit(entry, OpKind::Single, Keep::Vectored(pending))?;
            self.last_push = self.reactor.push_seq();
            let (c, keep) = Op::new(self.reactor.clone(), key).await;
            pending = match keep {
                Keep::Vectored(v) => v,
                _ => return Err(os_error(c.res.min(-libc::ECANCELED))),
            };
            check_sent(c.res)?;
            pending.advance(c.res as usize);
        }
        Ok(())
    }

    /// The peer's address.
    ///
    /// # Errors
    /// `getpeername` failing (for example `NotConnected`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&self.fd).peer_addr()?)
    }

    /// The local address.
    ///
    /// # Errors
    /// `getsockname` failing.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&self.fd).local_addr()?)
    }

    /// Half-close the write side (`shutdown(SHUT_WR)`, a synchronous syscall); the peer sees EOF
    /// after the bytes already sent.
    ///
    /// # Errors
    /// `NotConnected` and other `shutdown` errors.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        SockRef::from(&self.fd).shutdown(Shutdown::Write)
    }
}

fn check_sent(res: i32) -> io::Result<()> {
    match res {
        r if r < 0 => Err(os_error(r)),
        0 => Err(io::ErrorKind::WriteZero.into()),
        _ => Ok(()),
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.fd.as_raw_fd())
            .field("eof", &self.eof)
            .finish()
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        self.stop_recv();
        if let Some(key) = self.send_op.take() {
            self.reactor.orphan(key);
        }
        // An op of this stream pushed this turn and not yet submitted must reach the kernel
        // before the fd number is freed (and perhaps reused by the next socket): the kernel
        // resolves the fd at submission. No syscall when it was submitted in an earlier turn.
        self.reactor.submit_pending(self.last_push);
        // the fd closes when `self.fd` drops; cancelled ops hold their own file reference
    }
}
