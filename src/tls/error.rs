//! Typed errors of the TLS client driver.
//!
//! [`TlsError`] is what the sans-IO [`TlsClientSession`](super::TlsClientSession) reports: it is
//! built from `rustls::Error` by keeping the distinctions the upstream pool acts on (certificate
//! rejected vs. peer alert vs. other handshake failure vs. truncation) and dropping the rest into a
//! short human-readable string. No variant ever carries key material or plaintext.
//!
//! [`TlsIoError`] is what the async [`TlsStream`](super::TlsStream) reports: a transport error
//! (kind + which stage), a TLS error, or an EOF that cut a handshake or a record in half.

use std::fmt;
use std::io;

use rustls::{AlertDescription, InvalidMessage};

/// Why the TLS session failed or refused an operation.
///
/// Variants that describe the peer or the network (everything except [`TlsError::Internal`],
/// [`TlsError::HandshakeNotComplete`] and [`TlsError::AlreadyClosed`]) are final: once the session
/// reported one of them, every later call reports it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The server's certificate chain was rejected by verification (unknown issuer, expired,
    /// wrong name, no certificate presented, ...). The text is the verifier's reason; it holds
    /// no secrets.
    CertificateRejected(String),
    /// The peer sent a fatal alert, e.g. `CertificateRequired` when the server wants a client
    /// certificate we did not present, or `HandshakeFailure` when nothing could be agreed.
    AlertReceived(AlertDescription),
    /// The handshake failed for another reason (no common version or cipher suite, a malformed
    /// or unexpected handshake message, ...). The text is rustls's description.
    HandshakeFailed(String),
    /// After the handshake the peer broke the protocol (bad record MAC, unexpected message,
    /// malformed record). The text is rustls's description.
    ProtocolViolation(String),
    /// The peer sent a record larger than TLS allows.
    RecordTooLarge,
    /// The transport reached EOF in the middle of the handshake or in the middle of a record.
    UnexpectedEof,
    /// The transport reached EOF after the handshake, on a record boundary, without a
    /// close_notify alert: the peer may have been cut off (truncation), so data received so far
    /// must not be taken as complete.
    ClosedWithoutCloseNotify,
    /// Application data was offered before the handshake completed. Not final: retry later.
    HandshakeNotComplete,
    /// Application data was offered after close_notify was sent. Not final, but nothing more can
    /// be written.
    AlreadyClosed,
    /// The traffic keys reached their usage limit and could not be refreshed (TLS 1.2); the
    /// connection must be replaced.
    KeysExhausted,
    /// rustls refused to create the connection with this configuration (for example, an
    /// unsupported server name for the configured options).
    InvalidConfig(String),
    /// A state the driver does not expect: a bug in this module or in its use of rustls, never
    /// a consequence of peer input alone.
    Internal(&'static str),
}

impl TlsError {
    /// Maps a rustls error, keeping the distinctions callers act on. `handshaking` says whether
    /// the failure happened before the handshake completed.
    pub(crate) fn from_rustls(error: &rustls::Error, handshaking: bool) -> Self {
        match error {
            rustls::Error::InvalidCertificate(reason) => {
                Self::CertificateRejected(reason.to_string())
            }
            rustls::Error::NoCertificatesPresented => {
                Self::CertificateRejected("the server presented no certificate".to_owned())
            }
            rustls::Error::InvalidCertRevocationList(reason) => {
                Self::CertificateRejected(format!("certificate revocation list: {reason:?}"))
            }
            rustls::Error::AlertReceived(alert) => Self::AlertReceived(*alert),
            rustls::Error::PeerSentOversizedRecord
            | rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge) => {
                Self::RecordTooLarge
            }
            rustls::Error::HandshakeNotComplete => Self::HandshakeNotComplete,
            other if handshaking => Self::HandshakeFailed(other.to_string()),
            other => Self::ProtocolViolation(other.to_string()),
        }
    }

    /// Whether this error ends the session (see the type documentation).
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::HandshakeNotComplete | Self::AlreadyClosed)
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CertificateRejected(reason) => write!(f, "server certificate rejected: {reason}"),
            Self::AlertReceived(alert) => write!(f, "peer sent fatal alert {alert:?}"),
            Self::HandshakeFailed(reason) => write!(f, "TLS handshake failed: {reason}"),
            Self::ProtocolViolation(reason) => write!(f, "TLS protocol violation: {reason}"),
            Self::RecordTooLarge => f.write_str("peer sent an oversized TLS record"),
            Self::UnexpectedEof => f.write_str("connection closed mid-handshake or mid-record"),
            Self::ClosedWithoutCloseNotify => {
                f.write_str("connection closed without close_notify (possible truncation)")
            }
            Self::HandshakeNotComplete => f.write_str("TLS handshake not complete"),
            Self::AlreadyClosed => f.write_str("close_notify already sent"),
            Self::KeysExhausted => f.write_str("TLS traffic keys exhausted"),
            Self::InvalidConfig(reason) => write!(f, "invalid TLS client configuration: {reason}"),
            Self::Internal(what) => write!(f, "internal TLS driver error: {what}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Which part of a [`TlsStream`](super::TlsStream)'s life a transport error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStage {
    /// During [`TlsStream::connect`](super::TlsStream::connect).
    Handshake,
    /// While sending application data.
    Write,
    /// While waiting for application data.
    Read,
    /// While sending close_notify.
    Close,
}

/// Why a [`TlsStream`](super::TlsStream) operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsIoError {
    /// The transport failed.
    Io {
        /// The transport's error kind.
        kind: io::ErrorKind,
        /// What the stream was doing.
        stage: IoStage,
    },
    /// TLS failed (see [`TlsError`]). A truncation at a record boundary after the handshake is
    /// `Tls(TlsError::ClosedWithoutCloseNotify)`.
    Tls(TlsError),
    /// The transport closed mid-handshake or mid-record.
    Eof,
}

impl TlsIoError {
    pub(crate) fn io(stage: IoStage) -> impl FnOnce(io::Error) -> Self {
        move |error| Self::Io {
            kind: error.kind(),
            stage,
        }
    }
}

impl From<TlsError> for TlsIoError {
    fn from(error: TlsError) -> Self {
        match error {
            TlsError::UnexpectedEof => Self::Eof,
            other => Self::Tls(other),
        }
    }
}

impl fmt::Display for TlsIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { kind, stage } => write!(f, "transport error during {stage:?}: {kind}"),
            Self::Tls(error) => error.fmt(f),
            Self::Eof => f.write_str("connection closed mid-handshake or mid-record"),
        }
    }
}

impl std::error::Error for TlsIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tls(error) => Some(error),
            Self::Io { .. } | Self::Eof => None,
        }
    }
}
