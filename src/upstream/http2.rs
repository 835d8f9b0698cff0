//! HTTP/2 upstream connections: the `h2` crate's client codec over the shard reactor's TLS.
//!
//! When a destination offers `h2` in its ALPN list and the server selects it, the pool keeps
//! one shared connection per destination per shard (see [`super::Pools`]) and every device
//! request becomes a stream on it. This module owns the connection machinery; `flows` maps
//! requests and responses.
//!
//! ```text
//!  request tasks ──SendRequest/SendStream──►  h2 state (shared, in h2)  ◄── H2 driver task
//!                                                                          polls Connection
//!                                                                          │ AsyncRead/Write
//!                                                                          ▼
//!                                     H2Io: TlsClientSession (sans-IO) + reactor TcpStream
//! ```
//!
//! [`H2Io`] is a poll-based `AsyncRead + AsyncWrite` over the reactor socket and the rustls
//! session, built so that no future is ever created and dropped half-way (see
//! docs/decisions/0012-http2-upstream.md):
//! - **read**: hands out decrypted plaintext first; otherwise polls the stream's multishot
//!   recv ([`TcpStream::poll_recv`]), which loses nothing when it returns `Pending` (the
//!   completion queues in the stream's slot), feeds the ciphertext to the session and loops;
//! - **write**: encrypts into the session's outgoing buffer and returns at once; the ciphertext
//!   goes out through one owned send op at a time ([`TcpStream::start_send`] /
//!   [`TcpStream::poll_send`]) whose bytes the reactor keeps until the kernel is done; a short
//!   send's remainder is sent next, so every byte is either in the session's buffer or in the
//!   op slot, never in a dropped future. Writes wait (`Pending`) only once more than
//!   [`WRITE_HIGH_WATER`] bytes are queued.
//!
//! Only the connection's driver task (spawned by [`start`]) polls the IO; request tasks talk
//! to the `h2` state and wake it. What this module does not do: HTTP/1.1 ↔ HTTP/2 mapping,
//! retries or error answers (`flows`), pool bookkeeping ([`super::Pools`]).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{UpstreamConn, UpstreamError};
use crate::policy::DestinationId;
use crate::reactor::{self, TcpStream};
use crate::tls::TlsClientSession;

/// Ciphertext queued (in the session and in flight) beyond which `poll_write` waits.
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// The ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Stream-level receive window we advertise: a whole typical cloud answer fits without a
/// WINDOW_UPDATE round trip.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Streams simgate's pool assumes a connection takes before its server's SETTINGS announced a
/// limit, when no earlier connection of the destination told it (RFC 9113 §6.5.2 asks servers
/// to allow at least 100). Only the pool's accounting: `h2` itself opens at most
/// [`UNANNOUNCED_OPEN_STREAMS`] until the SETTINGS arrive.
pub const ASSUMED_MAX_STREAMS: usize = 100;
/// Streams `h2` opens on a new connection before its server's SETTINGS arrive, when no earlier
/// connection of the destination announced a limit: the rest wait inside `h2` (about one round
/// trip) rather than being sent and refused (`REFUSED_STREAM`) by a server whose limit is low.
pub const UNANNOUNCED_OPEN_STREAMS: usize = 1;
/// Connection-level receive window.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// `AsyncRead + AsyncWrite` over a reactor socket and a TLS session (see the module doc).
pub struct H2Io {
    tcp: TcpStream,
    tls: TlsClientSession,
    /// A send failed: every later write reports it.
    send_failed: Option<io::ErrorKind>,
    /// Bytes of the send in flight (for the high-water mark).
    in_flight: usize,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl H2Io {
    /// Wrap a connected socket and its established TLS session.
    pub fn new(tcp: TcpStream, tls: TlsClientSession) -> H2Io {
        H2Io {
            tcp,
            tls,
            send_failed: None,
            in_flight: 0,
        }
    }

    /// Push queued ciphertext out: reap the send in flight (restarting a short send's rest),
    /// then start the next one with whatever the session queued meanwhile. `Ready(Ok)` once
    /// nothing is queued or in flight; `Pending` with the waker registered on the send op.
    fn drive_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.send_failed {
            return Poll::Ready(Err(kind.into()));
        }
        loop {
            if self.tcp.send_in_flight() {
                match self.tcp.poll_send(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        self.send_failed = Some(e.kind());
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(rest)) => {
                        self.in_flight = rest.len();
                        if !rest.is_empty() {
                            self.start(rest)?;
                            continue;
                        }
                    }
                }
            }
            match self.tls.take_outgoing() {
                Some(bytes) => self.start(bytes)?,
                None => return Poll::Ready(Ok(())),
            }
        }
    }

    fn start(&mut self, bytes: Bytes) -> io::Result<()> {
        self.in_flight = bytes.len();
        self.tcp.start_send(bytes).inspect_err(|e| {
            self.send_failed = Some(e.kind());
        })
    }

    /// Ciphertext not yet taken by the kernel: in the session and in the send in flight.
    fn queued(&self) -> usize {
        self.in_flight + self.tls.outgoing_len()
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let plain = this.tls.plaintext();
            if !plain.is_empty() {
                let n = plain.len().min(buf.remaining());
                buf.put_slice(&plain[..n]);
                plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.tls.peer_closed() {
                return Poll::Ready(Ok(())); // clean EOF (close_notify)
            }
            match this.tcp.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(None)) => {
                    // EOF: rustls tells a clean close from a truncation.
                    this.tls.receive_eof().map_err(tls_error)?;
                    if !this.tls.peer_closed() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(Some(chunk))) => {
                    this.tls.receive_buffer().extend_from_slice(&chunk);
                    drop(chunk); // the ring buffer goes straight back
                    this.tls.process_received().map_err(tls_error)?;
                    if this.tls.has_outgoing() {
                        // A post-handshake reply (TLS 1.3 KeyUpdate) goes out with the next
                        // send; a failure shows on the next write.
                        let _ = this.drive_send(cx);
                    }
                }
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued() >= WRITE_HIGH_WATER {
            match this.drive_send(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.queued() >= WRITE_HIGH_WATER => return Poll::Pending,
                _ => {}
            }
        }
        if let Some(kind) = this.send_failed {
            return Poll::Ready(Err(kind.into()));
        }
        this.tls.send_plaintext(&[data]).map_err(tls_error)?;
        // Start sending now; h2 flushes after a batch of frames anyway.
        if let Poll::Ready(Err(e)) = this.drive_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued() >= WRITE_HIGH_WATER {
            match this.drive_send(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.queued() >= WRITE_HIGH_WATER => return Poll::Pending,
                _ => {}
            }
        }
        if let Some(kind) = this.send_failed {
            return Poll::Ready(Err(kind.into()));
        }
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        this.tls.send_plaintext(&slices).map_err(tls_error)?;
        if let Poll::Ready(Err(e)) = this.drive_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(slices.iter().map(|s| s.len()).sum()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().drive_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // close_notify once (a second call fails harmlessly with AlreadyClosed), then flush.
        let _ = this.tls.send_close_notify();
        this.drive_send(cx)
    }
}

/// What the pool and the request tasks share about one HTTP/2 connection.
#[derive(Debug)]
pub struct H2State {
    /// The connection ended (driver finished), or a request saw it refuse new streams (GOAWAY,
    /// connection error): no new request may be sent on it.
    dead: Cell<bool>,
    /// Streams opened by requests and not yet finished.
    in_flight: Cell<usize>,
    /// When the last stream finished (idle retirement).
    last_used: Cell<Instant>,
    connected_at: Instant,
}

impl H2State {
    /// No new request may use the connection.
    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// Mark the connection unusable for new requests (GOAWAY seen, connection error).
    pub fn mark_dead(&self) {
        self.dead.set(true);
    }

    /// Streams in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// When the last stream ended (or the connection was made).
    pub fn last_used(&self) -> Instant {
        self.last_used.get()
    }

    /// When the connection was made.
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }
}

/// A pooled HTTP/2 connection: the request handle and the shared state.
#[derive(Clone)]
pub struct H2Conn {
    /// `h2`'s request handle (clone per request).
    pub send: h2::client::SendRequest<Bytes>,
    /// Shared liveness and load.
    pub state: Rc<H2State>,
    /// Destination it belongs to.
    pub destination: DestinationId,
    /// Plan generation it was made for.
    pub generation: u64,
    /// The stream limit `h2` was started with (before the server's SETTINGS).
    initial_streams: usize,
}

impl H2Conn {
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS once its SETTINGS told it (`usize::MAX`
    /// for no limit); `None` while `h2` still runs on the limit it was started with (a server
    /// announcing exactly that value is indistinguishable, and is served by it anyway).
    pub fn announced_max_streams(&self) -> Option<usize> {
        let now = self.max_streams();
        (now != self.initial_streams).then_some(now)
    }

    /// The server's current SETTINGS_MAX_CONCURRENT_STREAMS (h2 assumes no limit until the
    /// server's SETTINGS arrive).
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// A handle for one request, counted in flight until it drops.
    pub fn stream_handle(&self) -> H2Handle {
        let reused =
            self.state.in_flight.get() > 0 || self.state.last_used.get() > self.state.connected_at;
        self.state.in_flight.set(self.state.in_flight.get() + 1);
        H2Handle {
            send: self.send.clone(),
            state: self.state.clone(),
            reused,
            waiting_since: None,
        }
    }
}

/// One request's use of a shared HTTP/2 connection. Dropping it ends the request's count.
pub struct H2Handle {
    /// `h2`'s request handle.
    pub send: h2::client::SendRequest<Bytes>,
    /// The connection's shared state (mark it dead on GOAWAY or connection errors).
    pub state: Rc<H2State>,
    /// The connection carried other requests before or alongside this one.
    pub reused: bool,
    /// Set when the request got this handle only by queueing for a stream slot (every pooled
    /// connection was at its server's stream limit): since when it has been waiting, for
    /// `pool_wait`, which ends when its stream opens.
    pub waiting_since: Option<Instant>,
}

impl Drop for H2Handle {
    fn drop(&mut self) {
        self.state
            .in_flight
            .set(self.state.in_flight.get().saturating_sub(1));
        self.state.last_used.set(Instant::now());
    }
}

/// True when the TLS session of `conn` selected HTTP/2.
pub fn negotiated_h2(conn: &UpstreamConn) -> bool {
    conn.stream.session().alpn_protocol() == Some(ALPN_H2)
}

/// Turn a fresh TLS connection that negotiated `h2` into an HTTP/2 connection: send the
/// client preface and SETTINGS, and spawn the task that drives the connection until it ends.
/// `initial_streams`: how many streams `h2` may open before the server's SETTINGS arrive (the
/// limit an earlier connection of the destination announced, else
/// [`UNANNOUNCED_OPEN_STREAMS`]). `on_end` runs in that task when the connection is gone (to
/// tell the pool's waiters).
pub async fn start(
    conn: UpstreamConn,
    initial_streams: usize,
    on_end: impl FnOnce() + 'static,
) -> Result<H2Conn, UpstreamError> {
    let UpstreamConn {
        stream,
        destination,
        generation,
        connected_at,
        ..
    } = conn;
    let (tcp, tls) = stream.into_parts();
    let io = H2Io::new(tcp, tls);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        // Until the server's SETTINGS arrive, open at most this many streams (h2's default is
        // unlimited, and a server with a lower limit refuses the excess); more wait inside h2.
        .initial_max_send_streams(initial_streams.max(1))
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| UpstreamError::Tls(format!("HTTP/2 handshake failed: {e}")))?;
    let state = Rc::new(H2State {
        dead: Cell::new(false),
        in_flight: Cell::new(0),
        last_used: Cell::new(connected_at),
        connected_at,
    });
    let driver_state = state.clone();
    reactor::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 upstream connection ended with an error");
        }
        driver_state.mark_dead();
        on_end();
    })
    .detach();
    Ok(H2Conn {
        send,
        state,
        destination,
        generation,
        initial_streams: initial_streams.max(1),
    })
}
