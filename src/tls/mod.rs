//! Upstream TLS client: rustls's unbuffered API driven over our own buffers.
//!
//! The data plane owns its sockets through the shard reactor, so TLS here is a sans-IO state
//! machine, in two layers:
//!
//! - [`TlsClientSession`] (no IO, no async, no clock): ciphertext in with
//!   [`receive`](TlsClientSession::receive), ciphertext out with
//!   [`take_outgoing`](TlsClientSession::take_outgoing), plaintext in with
//!   [`send_plaintext`](TlsClientSession::send_plaintext) and out through
//!   [`plaintext`](TlsClientSession::plaintext).
//! - [`TlsStream`]: the session driven over any [`Transport`] (two async methods), so it runs over
//!   reactor sockets, tokio sockets in tests, or memory.
//!
//! [`config`] builds the rustls client configurations (aws-lc-rs, TLS 1.3 + 1.2, verification
//! always on) and the per-shard copies with their own session-resumption store.
//!
//! What this module does not do: server-side TLS, 0-RTT early data, certificate loading from
//! files, connection pooling or timeouts (see `upstream`).

pub mod config;
mod error;
mod session;
mod stream;
#[cfg(test)]
mod test_support;

pub use config::{client_config, provider, with_session_store};
pub use error::{IoStage, TlsError, TlsIoError};
pub use session::{TlsClientSession, MAX_RECORD_PAYLOAD};
pub use stream::{TlsStream, Transport};
