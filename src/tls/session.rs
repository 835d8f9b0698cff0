//! Sans-IO TLS client session over rustls's unbuffered API.
//!
//! [`TlsClientSession`] owns an [`UnbufferedClientConnection`] and three buffers:
//!
//! ```text
//!  transport ──ciphertext──► incoming ──(rustls decrypts in place)──► plaintext ──► caller
//!  caller ──&[&[u8]]──► (rustls encrypts) ──► outgoing ──take_outgoing()──► transport
//! ```
//!
//! Call order: [`TlsClientSession::new`] queues the ClientHello; after every
//! [`receive`](TlsClientSession::receive) (or [`process_received`](TlsClientSession::process_received))
//! and every [`send_plaintext`](TlsClientSession::send_plaintext) /
//! [`send_close_notify`](TlsClientSession::send_close_notify), send whatever
//! [`take_outgoing`](TlsClientSession::take_outgoing) returns, in order, before waiting for more
//! input. When the transport reports EOF, call [`receive_eof`](TlsClientSession::receive_eof) to
//! tell a clean close from a truncation.
//!
//! Copies: incoming records are decrypted in place by rustls (which then hands each record's
//! payload over in its own `Vec`, a copy we cannot avoid in rustls 0.23); we copy each payload once
//! into the plaintext buffer. Outgoing data is encrypted straight from the caller's slices; only
//! a record that straddles two slices is first gathered into a reused 16 KiB staging buffer.
//!
//! This module does no IO, no waiting and no time keeping: timeouts, reconnects and
//! back-pressure (how much plaintext may pile up) are the caller's business. It does not
//! support early data (0-RTT) or caller-side certificate verification.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use rustls::{ClientConfig, HandshakeKind};

use super::error::TlsError;

/// Largest plaintext payload of one TLS record (RFC 8446 §5.1).
pub const MAX_RECORD_PAYLOAD: usize = 16 * 1024;

/// Upper bound of the bytes one record adds around its payload with the AEAD suites we allow:
/// 5 header + 8 explicit nonce (TLS 1.2 GCM) or 1 content type (TLS 1.3) + 16 tag, rounded up.
const RECORD_OVERHEAD_ESTIMATE: usize = 32;

/// Slack for messages rustls may emit ahead of application data (a TLS 1.3 KeyUpdate).
const QUEUED_MESSAGES_ESTIMATE: usize = 64;

/// What to do when the connection reaches its `WriteTraffic` state.
#[derive(Clone, Copy)]
enum WriteJob<'a> {
    Nothing,
    Encrypt(&'a [&'a [u8]]),
    CloseNotify,
}

/// A TLS client connection as a sans-IO state machine over owned buffers.
///
/// See the module documentation for the call order.
pub struct TlsClientSession {
    connection: UnbufferedClientConnection,
    /// Received ciphertext not yet consumed by rustls (partial records, split handshake messages).
    incoming: BytesMut,
    /// Ciphertext ready to send.
    outgoing: BytesMut,
    /// Decrypted application data not yet taken by the caller.
    plaintext: BytesMut,
    /// Reused gathering buffer for a record whose payload spans several caller slices.
    staging: Vec<u8>,
    peer_closed: bool,
    sent_close_notify: bool,
    /// The final error, once one happened; every later call reports it again.
    failed: Option<TlsError>,
}

impl std::fmt::Debug for TlsClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClientSession")
            .field("handshaking", &self.is_handshaking())
            .field("incoming_len", &self.incoming.len())
            .field("outgoing_len", &self.outgoing.len())
            .field("plaintext_len", &self.plaintext.len())
            .field("peer_closed", &self.peer_closed)
            .field("sent_close_notify", &self.sent_close_notify)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsClientSession {
    /// Starts a client handshake towards `server_name`; the ClientHello is ready in
    /// [`take_outgoing`](Self::take_outgoing) when this returns.
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let connection = UnbufferedClientConnection::new(config, server_name)
            .map_err(|error| TlsError::InvalidConfig(error.to_string()))?;
        let mut session = Self {
            connection,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            plaintext: BytesMut::new(),
            staging: Vec::new(),
            peer_closed: false,
            sent_close_notify: false,
            failed: None,
        };
        session.drive(WriteJob::Nothing)?;
        Ok(session)
    }

    /// Appends received ciphertext and processes every complete record: advances the handshake,
    /// queues handshake bytes to send and appends decrypted application data to
    /// [`plaintext`](Self::plaintext). Partial records stay buffered. Bytes received after the
    /// peer's close_notify are ignored.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<(), TlsError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.peer_closed {
            return Ok(());
        }
        self.incoming.extend_from_slice(ciphertext);
        self.drive(WriteJob::Nothing)
    }

    /// The buffer received ciphertext is appended to, for transports that can read straight into
    /// it; call [`process_received`](Self::process_received) after appending. Only append: the
    /// bytes already in it belong to records rustls has not finished with.
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        &mut self.incoming
    }

    /// Processes ciphertext appended through [`receive_buffer`](Self::receive_buffer), like
    /// [`receive`](Self::receive) does.
    pub fn process_received(&mut self) -> Result<(), TlsError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.peer_closed {
            self.incoming.clear();
            return Ok(());
        }
        self.drive(WriteJob::Nothing)
    }

    /// Tells the session the transport reached EOF. `Ok` when the peer had sent close_notify
    /// (a clean end); otherwise [`TlsError::UnexpectedEof`] (mid-handshake or mid-record) or
    /// [`TlsError::ClosedWithoutCloseNotify`] (possible truncation), which becomes final.
    pub fn receive_eof(&mut self) -> Result<(), TlsError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.peer_closed {
            return Ok(());
        }
        let error = if self.is_handshaking() || !self.incoming.is_empty() {
            TlsError::UnexpectedEof
        } else {
            TlsError::ClosedWithoutCloseNotify
        };
        self.failed = Some(error.clone());
        Err(error)
    }

    /// Ciphertext waiting to be sent (handshake messages, encrypted application data, alerts),
    /// or `None`. Empties the outgoing buffer; send the bytes in the order they were taken.
    #[must_use = "the returned ciphertext must be sent to the peer"]
    pub fn take_outgoing(&mut self) -> Option<Bytes> {
        if self.outgoing.is_empty() {
            None
        } else {
            Some(self.outgoing.split().freeze())
        }
    }

    /// Bytes of ciphertext waiting to be sent.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether ciphertext is waiting to be sent.
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// Encrypts application data into the outgoing buffer. The slices are treated as one byte
    /// stream and cut into as few records as possible (at most 16 KiB of payload each; fewer if
    /// the config sets a smaller `max_fragment_size`).
    ///
    /// Fails with [`TlsError::HandshakeNotComplete`] before the handshake completed and with
    /// [`TlsError::AlreadyClosed`] after [`send_close_notify`](Self::send_close_notify); neither
    /// is final, and nothing is queued in either case.
    pub fn send_plaintext(&mut self, data: &[&[u8]]) -> Result<(), TlsError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.sent_close_notify {
            return Err(TlsError::AlreadyClosed);
        }
        if data.iter().all(|slice| slice.is_empty()) {
            return Ok(());
        }
        if self.is_handshaking() {
            return Err(TlsError::HandshakeNotComplete);
        }
        self.drive(WriteJob::Encrypt(data))
    }

    /// Decrypted bytes received so far; split off what you consume (`split_to`, `advance`).
    pub fn plaintext(&mut self) -> &mut BytesMut {
        &mut self.plaintext
    }

    /// Whether the peer sent close_notify: no more application data will arrive.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Queues a close_notify alert in the outgoing buffer. Calling it again does nothing.
    /// Fails with [`TlsError::HandshakeNotComplete`] before the handshake completed (drop the
    /// connection instead).
    pub fn send_close_notify(&mut self) -> Result<(), TlsError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.sent_close_notify {
            return Ok(());
        }
        if self.is_handshaking() {
            return Err(TlsError::HandshakeNotComplete);
        }
        self.drive(WriteJob::CloseNotify)
    }

    /// Whether the handshake resumed an earlier session (TLS 1.3 ticket or TLS 1.2 session).
    pub fn was_resumed(&self) -> bool {
        self.connection.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The ALPN protocol the server selected, once known.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.connection.alpn_protocol()
    }

    /// The negotiated TLS version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.connection.protocol_version()
    }

    /// Runs the rustls state machine until it needs more input (or is closed), performing `job`
    /// when it allows application data to be written.
    fn drive(&mut self, job: WriteJob<'_>) -> Result<(), TlsError> {
        let mut job = job;
        loop {
            let Self {
                connection,
                incoming,
                outgoing,
                plaintext,
                staging,
                peer_closed,
                sent_close_notify,
                ..
            } = self;
            let status = connection.process_tls_records(&mut incoming[..]);
            let mut discard = status.discard;
            let step = match status.state {
                Err(error) => Err(TlsError::from_rustls(&error, connection.is_handshaking())),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(Step::Continue);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                plaintext.extend_from_slice(record.payload);
                                discard += record.discard;
                            }
                            Err(error) => {
                                result = Err(TlsError::from_rustls(&error, false));
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                    encode_queued_record(&mut encoder, outgoing).map(|()| Step::Continue)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The encoded bytes sit in `outgoing`, which the caller drains in order before
                    // waiting for input, so for rustls they count as transmitted.
                    transmit.done();
                    Ok(Step::Continue)
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(Step::Continue)
                }
                Ok(ConnectionState::Closed) => {
                    *peer_closed = true;
                    Ok(Step::Stop)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Step::Stop),
                Ok(ConnectionState::WriteTraffic(mut writer)) => match job {
                    WriteJob::Nothing => Ok(Step::Stop),
                    WriteJob::Encrypt(data) => {
                        job = WriteJob::Nothing;
                        encrypt_slices(&mut writer, data, outgoing, staging)
                            .map(|()| Step::Continue)
                    }
                    WriteJob::CloseNotify => {
                        job = WriteJob::Nothing;
                        *sent_close_notify = true;
                        write_growing(outgoing, QUEUED_MESSAGES_ESTIMATE, |buffer| {
                            writer.queue_close_notify(buffer).map_err(Attempt::from)
                        })
                        .map(|()| Step::Continue)
                    }
                },
                Ok(ConnectionState::ReadEarlyData(_)) => Err(TlsError::Internal(
                    "early data state on a client connection",
                )),
                Ok(_) => Err(TlsError::Internal("unknown rustls connection state")),
            };

            if discard > incoming.len() {
                return Err(self.fail(TlsError::Internal(
                    "rustls discarded more than was received",
                )));
            }
            incoming.advance(discard);

            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Stop) => break,
                Err(error) => return Err(self.fail(error)),
            }
        }

        if self.peer_closed {
            // "Any data received after a closure alert has been received MUST be ignored."
            self.incoming.clear();
        }
        match job {
            WriteJob::Nothing => Ok(()),
            // Closed: both sides sent close_notify; our own close_notify was already checked.
            WriteJob::Encrypt(_) if !self.is_handshaking() => Err(TlsError::AlreadyClosed),
            WriteJob::CloseNotify if !self.is_handshaking() => Ok(()),
            WriteJob::Encrypt(_) | WriteJob::CloseNotify => Err(TlsError::HandshakeNotComplete),
        }
    }

    /// Records a final error and flushes the alert rustls queued for it, so the caller can
    /// send it before dropping the connection. Returns the error.
    fn fail(&mut self, error: TlsError) -> TlsError {
        self.failed = Some(error.clone());
        // rustls queued the alert for this error (if any). While records are queued,
        // process_tls_records hands them out as EncodeTlsData before it touches the input; once
        // the queue is empty we stop, because another call would re-read the input that failed
        // and raise the error (and its alert) a second time. Bounded: an alert is one record.
        for _ in 0..4 {
            if !self.connection.wants_write() {
                break;
            }
            let status = self.connection.process_tls_records(&mut self.incoming[..]);
            let discard = status.discard;
            let encoded = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                    encode_queued_record(&mut encoder, &mut self.outgoing).is_ok()
                }
                _ => false,
            };
            if discard <= self.incoming.len() {
                self.incoming.advance(discard);
            }
            if !encoded {
                break;
            }
        }
        error
    }
}

/// Copies a record rustls queued (handshake message or alert) into `out`.
fn encode_queued_record(
    encoder: &mut EncodeTlsData<'_, rustls::client::ClientConnectionData>,
    out: &mut BytesMut,
) -> Result<(), TlsError> {
    // A zero-sized first attempt asks rustls for the exact size, at no cost.
    write_growing(out, 0, |buffer| {
        encoder.encode(buffer).map_err(|error| match error {
            EncodeError::InsufficientSize(size) => Attempt::NeedsAtLeast(size.required_size),
            EncodeError::AlreadyEncoded => {
                Attempt::Failed(TlsError::Internal("queued record encoded twice"))
            }
        })
    })
}

/// Whether [`TlsClientSession::drive`] goes round again.
enum Step {
    Continue,
    Stop,
}

/// Why one attempt of [`write_growing`] did not write.
#[derive(Debug)]
enum Attempt {
    /// The buffer was too small; this many bytes are needed.
    NeedsAtLeast(usize),
    /// A real failure.
    Failed(TlsError),
}

impl From<EncryptError> for Attempt {
    fn from(error: EncryptError) -> Self {
        match error {
            EncryptError::InsufficientSize(size) => Self::NeedsAtLeast(size.required_size),
            EncryptError::EncryptExhausted => Self::Failed(TlsError::KeysExhausted),
        }
    }
}

/// Appends to `out` what `write` produces, offering it `first_guess` zeroed bytes and growing
/// to the size rustls asks for when that is too small. `out` is unchanged on failure.
fn write_growing(
    out: &mut BytesMut,
    first_guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Attempt>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut size = first_guess;
    // Two attempts suffice (guess, then the exact size); the third guards a racing estimate.
    for _ in 0..3 {
        out.resize(start + size, 0);
        match write(&mut out[start..]) {
            Ok(written) if written <= size => {
                out.truncate(start + written);
                return Ok(());
            }
            Ok(_) => {
                out.truncate(start);
                return Err(TlsError::Internal(
                    "rustls wrote past the buffer it was given",
                ));
            }
            Err(Attempt::NeedsAtLeast(required)) if required > size => size = required,
            Err(Attempt::NeedsAtLeast(_)) => {
                out.truncate(start);
                return Err(TlsError::Internal(
                    "rustls refused a buffer of the size it asked for",
                ));
            }
            Err(Attempt::Failed(error)) => {
                out.truncate(start);
                return Err(error);
            }
        }
    }
    out.truncate(start);
    Err(TlsError::Internal("rustls kept asking for a larger buffer"))
}

/// Upper-bound estimate of the ciphertext size for `payload` plaintext bytes.
fn ciphertext_estimate(payload: usize) -> usize {
    let records = payload.div_ceil(MAX_RECORD_PAYLOAD).max(1);
    payload + records * RECORD_OVERHEAD_ESTIMATE + QUEUED_MESSAGES_ESTIMATE
}

/// Encrypts `data` (one logical byte stream) into `out` in as few records as possible.
///
/// Walks the slices with a cursor; each step encrypts either a run of whole records lying inside
/// one slice (no copy) or one record gathered from several slices into `staging`.
fn encrypt_slices(
    writer: &mut WriteTraffic<'_, rustls::client::ClientConnectionData>,
    data: &[&[u8]],
    out: &mut BytesMut,
    staging: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let mut remaining: usize = data.iter().map(|slice| slice.len()).sum();
    let mut slice_index = 0;
    let mut offset = 0;
    let mut encrypt = |payload: &[u8], out: &mut BytesMut| {
        write_growing(out, ciphertext_estimate(payload.len()), |buffer| {
            writer.encrypt(payload, buffer).map_err(Attempt::from)
        })
    };

    while remaining > 0 {
        // Skip exhausted and empty slices.
        while slice_index < data.len() && offset >= data[slice_index].len() {
            slice_index += 1;
            offset = 0;
        }
        let Some(current) = data.get(slice_index) else {
            return Err(TlsError::Internal("slice cursor ran past the data"));
        };
        let available = current.len() - offset;
        let next_record = remaining.min(MAX_RECORD_PAYLOAD);

        if available >= remaining {
            // The rest of the stream lies in this slice.
            encrypt(&current[offset..offset + remaining], out)?;
            remaining = 0;
        } else if available >= next_record {
            // Whole records lie in this slice; leave the tail to be gathered with the next one.
            let run = available - available % MAX_RECORD_PAYLOAD;
            encrypt(&current[offset..offset + run], out)?;
            offset += run;
            remaining -= run;
        } else {
            // One record straddles slices: gather it.
            staging.clear();
            while staging.len() < next_record {
                let Some(slice) = data.get(slice_index) else {
                    return Err(TlsError::Internal("slice cursor ran past the data"));
                };
                let take = (slice.len() - offset).min(next_record - staging.len());
                staging.extend_from_slice(&slice[offset..offset + take]);
                offset += take;
                if offset == slice.len() {
                    slice_index += 1;
                    offset = 0;
                }
            }
            encrypt(staging, out)?;
            remaining -= next_record;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_support::{
        client_config_trusting, count_records, pump, server_config, server_connection, TestPki,
    };
    use std::io::{Read, Write};

    fn connected_pair(pki: &TestPki) -> (TlsClientSession, rustls::ServerConnection) {
        let mut client =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        let mut server = server_connection(server_config(pki, false, false));
        pump(&mut client, &mut server).unwrap();
        assert!(!client.is_handshaking());
        (client, server)
    }

    #[test]
    fn new_session_queues_a_client_hello() {
        let pki = TestPki::new();
        let mut client =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        let hello = client.take_outgoing().unwrap();
        assert_eq!(hello[0], 0x16, "handshake record");
        assert!(
            client.take_outgoing().is_none(),
            "take_outgoing empties the buffer"
        );
        assert!(client.is_handshaking());
    }

    #[test]
    fn handshake_and_data_in_both_directions() {
        let pki = TestPki::new();
        let (mut client, mut server) = connected_pair(&pki);
        assert!(!client.was_resumed());

        client.send_plaintext(&[b"hello ", b"server"]).unwrap();
        pump(&mut client, &mut server).unwrap();
        let mut received = Vec::new();
        let _ = server.reader().read_to_end(&mut received);
        assert_eq!(received, b"hello server");

        server.writer().write_all(b"hello client").unwrap();
        pump(&mut client, &mut server).unwrap();
        assert_eq!(&client.plaintext()[..], b"hello client");
        client.plaintext().clear();
    }

    #[test]
    fn ciphertext_delivered_one_byte_at_a_time_is_reassembled() {
        let pki = TestPki::new();
        let mut client =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        let mut server = server_connection(server_config(&pki, false, false));
        // Handshake with the server's flights trickled byte by byte.
        for _ in 0..10 {
            if let Some(bytes) = client.take_outgoing() {
                server.read_tls(&mut &bytes[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut flight = Vec::new();
            server.write_tls(&mut flight).unwrap();
            for byte in flight {
                client.receive(&[byte]).unwrap();
            }
        }
        assert!(!client.is_handshaking());
        server.writer().write_all(&[7u8; 40_000]).unwrap();
        let mut flight = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut flight).unwrap();
        }
        for byte in flight {
            client.receive(&[byte]).unwrap();
        }
        assert_eq!(client.plaintext().len(), 40_000);
        assert!(client.plaintext().iter().all(|&b| b == 7));
        assert!(
            client.receive_buffer().is_empty(),
            "no partial record left behind"
        );
    }

    #[test]
    fn slices_are_coalesced_into_the_fewest_records() {
        let pki = TestPki::new();
        let (mut client, mut server) = connected_pair(&pki);
        let _ = client.take_outgoing();

        // Small slices: one record.
        client
            .send_plaintext(&[b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"])
            .unwrap();
        let small = client.take_outgoing().unwrap();
        assert_eq!(count_records(&small), 1);

        // Mixed sizes whose total is 3 records plus a tail: 4 records, whatever the boundaries.
        let a = vec![1u8; 100];
        let b = vec![2u8; 2 * MAX_RECORD_PAYLOAD + 7];
        let c = vec![3u8; 5];
        let d = vec![4u8; MAX_RECORD_PAYLOAD - 50];
        let total = a.len() + b.len() + c.len() + d.len();
        client.send_plaintext(&[&a, &[], &b, &c, &d]).unwrap();
        let big = client.take_outgoing().unwrap();
        assert_eq!(count_records(&big), total.div_ceil(MAX_RECORD_PAYLOAD));

        server.read_tls(&mut &small[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut reader = &big[..];
        let mut received = Vec::new();
        while !reader.is_empty() {
            server.read_tls(&mut reader).unwrap();
            server.process_new_packets().unwrap();
            let _ = server.reader().read_to_end(&mut received);
        }
        let expected: Vec<u8> =
            [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &a, &b, &c, &d].concat();
        assert_eq!(received, expected);
    }

    #[test]
    fn sending_before_the_handshake_is_refused_without_failing_the_session() {
        let pki = TestPki::new();
        let mut client =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        let hello = client.take_outgoing();
        assert_eq!(
            client.send_plaintext(&[b"early"]),
            Err(TlsError::HandshakeNotComplete)
        );
        assert_eq!(
            client.send_close_notify(),
            Err(TlsError::HandshakeNotComplete)
        );
        assert!(
            client.take_outgoing().is_none(),
            "nothing queued by a refused send"
        );

        let mut server = server_connection(server_config(&pki, false, false));
        server.read_tls(&mut &hello.unwrap()[..]).unwrap();
        server.process_new_packets().unwrap();
        pump(&mut client, &mut server).unwrap();
        assert!(!client.is_handshaking());
        client.send_plaintext(&[b"now"]).unwrap();
    }

    #[test]
    fn write_growing_grows_from_a_too_small_guess() {
        let mut out = BytesMut::from(&b"ab"[..]);
        let mut calls = 0;
        write_growing(&mut out, 0, |buffer| {
            calls += 1;
            if buffer.len() < 3 {
                return Err(Attempt::NeedsAtLeast(3));
            }
            buffer[..3].copy_from_slice(b"xyz");
            Ok(3)
        })
        .unwrap();
        assert_eq!(&out[..], b"abxyz");
        assert_eq!(calls, 2);

        let failed = write_growing(&mut out, 10, |_| {
            Err(Attempt::Failed(TlsError::KeysExhausted))
        });
        assert_eq!(failed, Err(TlsError::KeysExhausted));
        assert_eq!(&out[..], b"abxyz", "unchanged on failure");

        let stuck = write_growing(&mut out, 4, |_| Err(Attempt::NeedsAtLeast(4)));
        assert!(matches!(stuck, Err(TlsError::Internal(_))));
    }

    #[test]
    fn server_key_update_is_answered_and_traffic_continues() {
        let pki = TestPki::new();
        let (mut client, mut server) = connected_pair(&pki);
        server.refresh_traffic_keys().unwrap();
        server.writer().write_all(b"after update").unwrap();
        pump(&mut client, &mut server).unwrap();
        assert_eq!(&client.plaintext()[..], b"after update");

        client.send_plaintext(&[b"client after update"]).unwrap();
        pump(&mut client, &mut server).unwrap();
        let mut received = Vec::new();
        let _ = server.reader().read_to_end(&mut received);
        assert_eq!(received, b"client after update");
    }

    #[test]
    fn wrong_ca_is_a_certificate_error_and_final() {
        let pki = TestPki::new();
        let other = TestPki::new();
        let mut client = TlsClientSession::new(
            client_config_trusting(&other.ca_der, None),
            pki.server_name(),
        )
        .unwrap();
        let mut server = server_connection(server_config(&pki, false, false));
        let error = pump(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(error, TlsError::CertificateRejected(_)),
            "{error:?}"
        );
        assert_eq!(client.receive(b""), Err(error), "the failure is final");
        // The alert rustls queued is handed out for sending, and the server understands it.
        let alert = client.take_outgoing().unwrap();
        server.read_tls(&mut &alert[..]).unwrap();
        assert_eq!(
            server.process_new_packets().unwrap_err(),
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
        );
    }

    #[test]
    fn peer_close_notify_then_eof_is_clean() {
        let pki = TestPki::new();
        let (mut client, mut server) = connected_pair(&pki);
        server.writer().write_all(b"bye").unwrap();
        server.send_close_notify();
        pump(&mut client, &mut server).unwrap();
        assert_eq!(&client.plaintext()[..], b"bye");
        assert!(client.peer_closed());
        client.receive(b"ignored after close_notify").unwrap();
        assert!(client.receive_buffer().is_empty());
        assert_eq!(client.receive_eof(), Ok(()));

        client.send_close_notify().unwrap();
        client.send_close_notify().unwrap();
        let alert = client.take_outgoing().unwrap();
        assert_eq!(count_records(&alert), 1);
        assert_eq!(
            client.send_plaintext(&[b"late"]),
            Err(TlsError::AlreadyClosed)
        );
        server.read_tls(&mut &alert[..]).unwrap();
        let state = server.process_new_packets().unwrap();
        assert!(state.peer_has_closed());
    }

    #[test]
    fn eof_without_close_notify_is_truncation() {
        let pki = TestPki::new();
        let (mut client, _server) = connected_pair(&pki);
        assert_eq!(
            client.receive_eof(),
            Err(TlsError::ClosedWithoutCloseNotify)
        );
        assert_eq!(
            client.receive(b"x"),
            Err(TlsError::ClosedWithoutCloseNotify)
        );
    }

    #[test]
    fn eof_mid_record_or_mid_handshake_is_unexpected() {
        let pki = TestPki::new();
        let (mut client, mut server) = connected_pair(&pki);
        server.writer().write_all(b"partial").unwrap();
        let mut record = Vec::new();
        server.write_tls(&mut record).unwrap();
        client.receive(&record[..record.len() - 1]).unwrap();
        assert!(client.plaintext().is_empty());
        assert_eq!(client.receive_eof(), Err(TlsError::UnexpectedEof));

        let mut fresh =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        assert_eq!(fresh.receive_eof(), Err(TlsError::UnexpectedEof));
    }

    #[test]
    fn oversized_record_header_is_record_too_large() {
        let pki = TestPki::new();
        let (mut client, _server) = connected_pair(&pki);
        let error = client.receive(&[0x17, 0x03, 0x03, 0xff, 0xff]).unwrap_err();
        assert_eq!(error, TlsError::RecordTooLarge);
    }

    #[test]
    fn garbage_during_handshake_is_a_handshake_failure() {
        let pki = TestPki::new();
        let mut client =
            TlsClientSession::new(client_config_trusting(&pki.ca_der, None), pki.server_name())
                .unwrap();
        let error = client
            .receive(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .unwrap_err();
        assert!(matches!(error, TlsError::HandshakeFailed(_)), "{error:?}");
    }
}
