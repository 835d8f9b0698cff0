//! An async TLS client stream: [`TlsClientSession`] driven over any [`Transport`].
//!
//! The transport is a two-method trait so the stream runs over the shard reactor's sockets, over
//! a tokio socket in tests, or over an in-memory pipe. The stream never spawns, never sleeps and
//! holds no timers: wrap calls in the caller's timeouts. It reads from the transport only inside
//! [`TlsStream::connect`] and [`TlsStream::fill`], so plaintext never piles up unasked.
//!
//! Not `Send`-bound and not split into read and write halves: a shard drives one request at a
//! time per upstream connection.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::error::{IoStage, TlsError, TlsIoError};
use super::session::TlsClientSession;

/// A byte transport (a connected socket, usually).
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Receives some bytes, appending them to `buf`; `Ok(0)` means the peer closed.
    async fn recv_append(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Sends every byte of `data`.
    async fn send_all(&mut self, data: Bytes) -> io::Result<()>;
}

/// A TLS client connection over a [`Transport`].
#[derive(Debug)]
pub struct TlsStream<T: Transport> {
    transport: T,
    session: TlsClientSession,
}

impl<T: Transport> TlsStream<T> {
    /// Performs the TLS handshake over `transport` and returns the ready stream.
    ///
    /// On a TLS failure the alert rustls produced is sent (best effort) before returning.
    /// With TLS 1.3, a server that rejects our client certificate only says so after our side
    /// of the handshake is complete: that rejection surfaces from the first [`fill`](Self::fill).
    pub async fn connect(
        transport: T,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Self, TlsIoError> {
        let session = TlsClientSession::new(config, server_name)?;
        let mut stream = Self { transport, session };
        loop {
            stream.flush(IoStage::Handshake).await?;
            if !stream.session.is_handshaking() {
                return Ok(stream);
            }
            stream.receive_once(IoStage::Handshake).await?;
        }
    }

    /// Encrypts all slices (coalesced into as few records as possible) and sends them in one
    /// transport send.
    pub async fn write_all(&mut self, data: &[&[u8]]) -> Result<(), TlsIoError> {
        self.session.send_plaintext(data)?;
        self.flush(IoStage::Write).await
    }

    /// Waits until more plaintext was appended to [`plaintext`](Self::plaintext) (`Ok(true)`) or
    /// the peer closed cleanly with close_notify (`Ok(false)`).
    ///
    /// Always waits for *new* data, so a parser that found an incomplete message in the buffer
    /// can call it again without consuming anything. A transport EOF without close_notify is
    /// `Err(Tls(ClosedWithoutCloseNotify))` (possible truncation), or [`TlsIoError::Eof`] when it
    /// cut a record in half.
    pub async fn fill(&mut self) -> Result<bool, TlsIoError> {
        let before = self.session.plaintext().len();
        loop {
            if self.session.plaintext().len() > before {
                return Ok(true);
            }
            if self.session.peer_closed() {
                return Ok(false);
            }
            self.receive_once(IoStage::Read).await?;
            // Post-handshake replies (a TLS 1.3 KeyUpdate) go out right away.
            self.flush(IoStage::Read).await?;
        }
    }

    /// For an idle pooled connection: take in whatever already arrived, without waiting and
    /// without sending. `false` if the connection can no longer carry a request: application
    /// data or a close arrived, TLS failed, or TLS now has something to send (a KeyUpdate
    /// reply) that an idle check must not send half-way.
    pub fn idle_check(&mut self) -> bool {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let polled = {
                let recv = self.transport.recv_append(self.session.receive_buffer());
                std::pin::pin!(recv).poll(&mut cx)
            };
            match polled {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(Ok(0) | Err(_)) => return false,
                std::task::Poll::Ready(Ok(_)) => {
                    if self.session.process_received().is_err() {
                        return false;
                    }
                }
            }
        }
        self.session.plaintext().is_empty()
            && !self.session.peer_closed()
            && !self.session.has_outgoing()
    }

    /// Decrypted bytes received so far; split off what you consume.
    pub fn plaintext(&mut self) -> &mut BytesMut {
        self.session.plaintext()
    }

    /// Sends close_notify and hands the transport back (to be shut down or dropped). Does not
    /// wait for the peer's close_notify.
    pub async fn close(mut self) -> Result<T, TlsIoError> {
        self.session.send_close_notify()?;
        self.flush(IoStage::Close).await?;
        Ok(self.transport)
    }

    /// The transport and the TLS session, for a caller that drives them itself (the poll-based
    /// HTTP/2 adapter in `upstream::http2`). Nothing is lost: unread plaintext stays in the
    /// session, and `TlsStream` never holds unsent ciphertext between calls.
    pub fn into_parts(self) -> (T, TlsClientSession) {
        (self.transport, self.session)
    }

    /// The underlying transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The TLS session (ALPN, version, state).
    pub fn session(&self) -> &TlsClientSession {
        &self.session
    }

    /// Whether the handshake resumed an earlier session.
    pub fn was_resumed(&self) -> bool {
        self.session.was_resumed()
    }

    /// Sends whatever ciphertext the session has queued.
    async fn flush(&mut self, stage: IoStage) -> Result<(), TlsIoError> {
        if let Some(bytes) = self.session.take_outgoing() {
            self.transport
                .send_all(bytes)
                .await
                .map_err(TlsIoError::io(stage))?;
        }
        Ok(())
    }

    /// Reads once from the transport straight into the session's receive buffer and processes
    /// what arrived. EOF is turned into the session's verdict (clean, truncated, unexpected).
    async fn receive_once(&mut self, stage: IoStage) -> Result<(), TlsIoError> {
        let received = self
            .transport
            .recv_append(self.session.receive_buffer())
            .await
            .map_err(TlsIoError::io(stage))?;
        let result = if received == 0 {
            self.session.receive_eof()
        } else {
            self.session.process_received()
        };
        if let Err(error) = result {
            self.send_alert_best_effort(&error).await;
            return Err(error.into());
        }
        Ok(())
    }

    /// Sends the alert rustls queued for `error`, if any. Transport errors are ignored: the
    /// connection is failing already and `error` is what the caller needs to see.
    async fn send_alert_best_effort(&mut self, error: &TlsError) {
        if matches!(
            error,
            TlsError::UnexpectedEof | TlsError::ClosedWithoutCloseNotify
        ) {
            return;
        }
        if let Some(alert) = self.session.take_outgoing() {
            let _ignored = self.transport.send_all(alert).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_support::{
        client_config_trusting, server_config, server_connection, MemoryTransport, TestPki,
    };
    use crate::tls::{client_config, with_session_store};
    use rustls::{AlertDescription, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;

    /// Lets tests talk to a real TLS server over a real socket.
    impl Transport for TcpStream {
        async fn recv_append(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
            buf.reserve(32 * 1024);
            self.read_buf(buf).await
        }

        async fn send_all(&mut self, data: Bytes) -> io::Result<()> {
            self.write_all(&data).await
        }
    }

    type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

    /// Serves exactly one TLS connection with `serve`; the handle yields the server's verdict.
    async fn serve_one<F, Fut>(
        config: Arc<rustls::ServerConfig>,
        serve: F,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<()>>,
    )
    where
        F: FnOnce(ServerStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = io::Result<()>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let tls = TlsAcceptor::from(config).accept(tcp).await?;
            serve(tls).await
        });
        (address, handle)
    }

    async fn echo_once(mut tls: ServerStream) -> io::Result<()> {
        let mut buf = vec![0u8; 1024];
        let n = tls.read(&mut buf).await?;
        tls.write_all(&buf[..n]).await?;
        tls.shutdown().await
    }

    async fn connect_tcp(
        address: std::net::SocketAddr,
        config: Arc<ClientConfig>,
        pki: &TestPki,
    ) -> Result<TlsStream<TcpStream>, TlsIoError> {
        let tcp = TcpStream::connect(address).await.unwrap();
        TlsStream::connect(tcp, config, pki.server_name()).await
    }

    /// Reads until clean EOF, returning everything received.
    async fn read_to_end(stream: &mut TlsStream<impl Transport>) -> Result<Vec<u8>, TlsIoError> {
        while stream.fill().await? {}
        Ok(stream.plaintext().split().to_vec())
    }

    #[tokio::test]
    async fn in_memory_handshake_and_echo() {
        let pki = TestPki::new();
        let transport = MemoryTransport::echo(server_connection(server_config(&pki, false, false)));
        let mut stream = TlsStream::connect(
            transport,
            client_config_trusting(&pki.ca_der, None),
            pki.server_name(),
        )
        .await
        .unwrap();
        stream.write_all(&[b"ping ", b"pong"]).await.unwrap();
        assert!(stream.fill().await.unwrap());
        assert_eq!(&stream.plaintext()[..], b"ping pong");
        let transport = stream.close().await.unwrap();
        assert!(transport.server_saw_close_notify());
    }

    #[tokio::test]
    async fn tcp_echo_over_tls13_and_tls12() {
        let pki = TestPki::new();
        for tls12_only in [false, true] {
            let (address, server) =
                serve_one(server_config(&pki, false, tls12_only), echo_once).await;
            let mut stream = connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki)
                .await
                .unwrap();
            let expected = if tls12_only {
                rustls::ProtocolVersion::TLSv1_2
            } else {
                rustls::ProtocolVersion::TLSv1_3
            };
            assert_eq!(stream.session().protocol_version(), Some(expected));
            stream.write_all(&[b"hello over ", b"tcp"]).await.unwrap();
            assert_eq!(read_to_end(&mut stream).await.unwrap(), b"hello over tcp");
            server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn tcp_wrong_ca_is_a_certificate_error() {
        let pki = TestPki::new();
        let other = TestPki::new();
        let (address, server) = serve_one(server_config(&pki, false, false), echo_once).await;
        let error = connect_tcp(address, client_config_trusting(&other.ca_der, None), &pki)
            .await
            .unwrap_err();
        assert!(
            matches!(error, TlsIoError::Tls(TlsError::CertificateRejected(_))),
            "{error:?}"
        );
        // The server saw our unknown_ca alert.
        let server_error = server.await.unwrap().unwrap_err();
        assert!(
            server_error.to_string().contains("UnknownCA"),
            "{server_error}"
        );
    }

    #[tokio::test]
    async fn tcp_client_certificate_required() {
        let pki = TestPki::new();
        let (address, server) = serve_one(server_config(&pki, true, false), echo_once).await;
        let config = client_config_trusting(&pki.ca_der, Some(pki.client_auth()));
        let mut stream = connect_tcp(address, config, &pki).await.unwrap();
        stream.write_all(&[b"with cert"]).await.unwrap();
        assert_eq!(read_to_end(&mut stream).await.unwrap(), b"with cert");
        server.await.unwrap().unwrap();

        // Without a certificate the TLS 1.3 server rejects us after our Finished: the alert
        // arrives with the first read (or already during connect, depending on timing).
        let (address, server) = serve_one(server_config(&pki, true, false), echo_once).await;
        let outcome =
            match connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki).await {
                Ok(mut stream) => stream.fill().await.map(|_| ()),
                Err(error) => Err(error),
            };
        assert_eq!(
            outcome,
            Err(TlsIoError::Tls(TlsError::AlertReceived(
                AlertDescription::CertificateRequired
            )))
        );
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn tcp_second_connect_with_the_shard_config_resumes() {
        let pki = TestPki::new();
        let server_cfg = server_config(&pki, false, false);
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let shard_config = with_session_store(&client_config(roots, None, Vec::new()).unwrap(), 16);

        let mut resumed = Vec::new();
        for _ in 0..2 {
            let (address, server) = serve_one(server_cfg.clone(), echo_once).await;
            let mut stream = connect_tcp(address, shard_config.clone(), &pki)
                .await
                .unwrap();
            stream.write_all(&[b"x"]).await.unwrap();
            // Reading processes the session tickets the server sent after its handshake.
            assert_eq!(read_to_end(&mut stream).await.unwrap(), b"x");
            resumed.push(stream.was_resumed());
            server.await.unwrap().unwrap();
        }
        assert_eq!(resumed, [false, true]);
    }

    #[tokio::test]
    async fn tcp_one_mebibyte_each_way_arrives_intact() {
        const SIZE: usize = 1024 * 1024;
        let pattern = |i: usize| (i % 251) as u8;
        let pki = TestPki::new();
        let (address, server) = serve_one(
            server_config(&pki, false, false),
            move |mut tls| async move {
                let mut received = vec![0u8; SIZE];
                tls.read_exact(&mut received).await?;
                let intact = received.iter().enumerate().all(|(i, &b)| b == pattern(i));
                let reply: Vec<u8> = (0..SIZE).map(|i| pattern(SIZE - i)).collect();
                tls.write_all(&[u8::from(intact)]).await?;
                tls.write_all(&reply).await?;
                tls.shutdown().await
            },
        )
        .await;
        let mut stream = connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki)
            .await
            .unwrap();
        let data: Vec<u8> = (0..SIZE).map(pattern).collect();
        // Uneven slices so records straddle slice boundaries.
        let (a, rest) = data.split_at(1000);
        let (b, c) = rest.split_at(500_000);
        stream.write_all(&[a, b, c]).await.unwrap();
        let reply = read_to_end(&mut stream).await.unwrap();
        assert_eq!(reply.len(), SIZE + 1);
        assert_eq!(reply[0], 1, "server saw the upload intact");
        assert!(reply[1..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(SIZE - i)));
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_close_notify_is_a_clean_eof() {
        let pki = TestPki::new();
        let (address, server) =
            serve_one(server_config(&pki, false, false), |mut tls| async move {
                tls.write_all(b"last words").await?;
                tls.shutdown().await
            })
            .await;
        let mut stream = connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki)
            .await
            .unwrap();
        assert_eq!(read_to_end(&mut stream).await.unwrap(), b"last words");
        assert!(!stream.fill().await.unwrap(), "EOF stays EOF");
        stream.close().await.unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_close_without_close_notify_is_truncation() {
        let pki = TestPki::new();
        let (address, server) =
            serve_one(server_config(&pki, false, false), |mut tls| async move {
                tls.write_all(b"cut").await?;
                tls.flush().await?;
                // Drop the TCP connection without close_notify.
                let (tcp, _connection) = tls.into_inner();
                drop(tcp);
                Ok(())
            })
            .await;
        let mut stream = connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki)
            .await
            .unwrap();
        let outcome = read_to_end(&mut stream).await;
        assert_eq!(
            outcome,
            Err(TlsIoError::Tls(TlsError::ClosedWithoutCloseNotify))
        );
        assert_eq!(
            &stream.plaintext()[..],
            b"cut",
            "data before the cut is still readable"
        );
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_close_during_handshake_is_eof() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            // Read the whole ClientHello record (so closing sends FIN, not RST), then close
            // without answering.
            let mut header = [0u8; 5];
            tcp.read_exact(&mut header).await.unwrap();
            let mut hello = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
            tcp.read_exact(&mut hello).await.unwrap();
        });
        let error = connect_tcp(address, client_config_trusting(&pki.ca_der, None), &pki)
            .await
            .unwrap_err();
        assert_eq!(error, TlsIoError::Eof);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn transport_errors_keep_their_kind_and_stage() {
        let pki = TestPki::new();
        let transport =
            MemoryTransport::silent(server_connection(server_config(&pki, false, false)));
        let error = TlsStream::connect(
            transport,
            client_config_trusting(&pki.ca_der, None),
            pki.server_name(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            error,
            TlsIoError::Io {
                kind: io::ErrorKind::WouldBlock,
                stage: IoStage::Handshake
            }
        );
    }
}
