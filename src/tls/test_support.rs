//! Test helpers: a throw-away PKI minted with rcgen, rustls server configs, a synchronous pump
//! between a [`TlsClientSession`] and an in-memory rustls `ServerConnection`, and an in-memory
//! [`Transport`]. Test-only code: panics on setup failures are intended.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use super::config::{client_config, provider};
use super::error::TlsError;
use super::session::TlsClientSession;
use super::stream::Transport;

/// A CA with one server certificate (for `localhost`) and one client certificate.
pub(crate) struct TestPki {
    pub(crate) ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: Vec<u8>,
}

impl TestPki {
    pub(crate) fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A distinct name per PKI, so a foreign CA is an unknown issuer rather than a namesake
        // whose signature fails.
        static NEXT_CA: AtomicUsize = AtomicUsize::new(0);
        let ca_name = format!(
            "simgate test CA {}",
            NEXT_CA.fetch_add(1, Ordering::Relaxed)
        );
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let leaf = |purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (
                vec![cert.der().clone(), ca.der().clone()],
                key.serialize_der(),
            )
        };
        let (server_chain, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth);
        let (client_chain, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca_der: ca.der().clone(),
            server_chain,
            server_key,
            client_chain,
            client_key,
        }
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    pub(crate) fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            self.client_chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key.clone())),
        )
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

/// A client config trusting only `ca`, built with the production builder.
pub(crate) fn client_config_trusting(
    ca: &CertificateDer<'static>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(client_config(roots, client_auth, Vec::new()).unwrap())
}

/// A server config for `pki`'s server certificate, optionally requiring client certificates
/// from `pki`'s CA, optionally limited to TLS 1.2.
pub(crate) fn server_config(
    pki: &TestPki,
    require_client_cert: bool,
    tls12_only: bool,
) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = if require_client_cert {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
    Arc::new(
        builder
            .with_single_cert(pki.server_chain.clone(), key)
            .unwrap(),
    )
}

pub(crate) fn server_connection(config: Arc<ServerConfig>) -> ServerConnection {
    ServerConnection::new(config).unwrap()
}

/// Feeds all of `bytes` to `server`, returning the plaintext it decrypted.
fn feed_server(server: &mut ServerConnection, bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut reader = bytes;
    let mut plaintext = Vec::new();
    while !reader.is_empty() {
        server
            .read_tls(&mut reader)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        server.process_new_packets()?;
        // Drain so the server's plaintext limit is never hit; WouldBlock just means "no more".
        let _ = server.reader().read_to_end(&mut plaintext);
    }
    Ok(plaintext)
}

fn drain_server(server: &mut ServerConnection) -> Vec<u8> {
    let mut flight = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut flight).unwrap();
    }
    flight
}

/// Moves bytes between `client` and `server` until neither has anything to send. The client's
/// error wins; a server-only error becomes `HandshakeFailed("server: ...")`. Plaintext the
/// server decrypts stays readable from `server.reader()`.
pub(crate) fn pump(
    client: &mut TlsClientSession,
    server: &mut ServerConnection,
) -> Result<(), TlsError> {
    let mut server_error = None;
    loop {
        let mut progressed = false;
        if let Some(bytes) = client.take_outgoing() {
            progressed = true;
            let mut reader = &bytes[..];
            while !reader.is_empty() && server_error.is_none() {
                server.read_tls(&mut reader).unwrap();
                if let Err(error) = server.process_new_packets() {
                    server_error = Some(error);
                }
            }
        }
        let flight = drain_server(server);
        if !flight.is_empty() {
            progressed = true;
            client.receive(&flight)?;
        }
        if !progressed {
            break;
        }
    }
    match server_error {
        Some(error) => Err(TlsError::HandshakeFailed(format!("server: {error}"))),
        None => Ok(()),
    }
}

/// Counts the TLS records in `ciphertext` (which must hold whole records).
pub(crate) fn count_records(ciphertext: &[u8]) -> usize {
    let mut rest = ciphertext;
    let mut records = 0;
    while rest.len() >= 5 {
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!(rest.len() >= 5 + length, "partial record");
        rest = &rest[5 + length..];
        records += 1;
    }
    assert!(rest.is_empty(), "trailing bytes");
    records
}

/// An in-memory transport to a rustls `ServerConnection`, driven synchronously: every send is
/// processed at once, every receive returns what the server has queued. When the server has
/// nothing to send, a receive fails with `WouldBlock` instead of hanging the test.
#[derive(Debug)]
pub(crate) struct MemoryTransport {
    server: ServerConnection,
    /// Echo decrypted plaintext back.
    echo: bool,
    /// Ignore everything sent (a server that never answers).
    silent: bool,
    saw_close_notify: bool,
}

impl MemoryTransport {
    pub(crate) fn echo(server: ServerConnection) -> Self {
        Self {
            server,
            echo: true,
            silent: false,
            saw_close_notify: false,
        }
    }

    pub(crate) fn silent(server: ServerConnection) -> Self {
        Self {
            server,
            echo: false,
            silent: true,
            saw_close_notify: false,
        }
    }

    pub(crate) fn server_saw_close_notify(&self) -> bool {
        self.saw_close_notify
    }
}

impl Transport for MemoryTransport {
    async fn recv_append(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let flight = drain_server(&mut self.server);
        if flight.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "in-memory server has nothing to send",
            ));
        }
        buf.extend_from_slice(&flight);
        Ok(flight.len())
    }

    async fn send_all(&mut self, data: Bytes) -> io::Result<()> {
        if self.silent {
            return Ok(());
        }
        let plaintext = feed_server(&mut self.server, &data).map_err(io::Error::other)?;
        if self
            .server
            .process_new_packets()
            .map_err(io::Error::other)?
            .peer_has_closed()
        {
            self.saw_close_notify = true;
        }
        if self.echo && !plaintext.is_empty() {
            self.server.writer().write_all(&plaintext)?;
        }
        Ok(())
    }
}
