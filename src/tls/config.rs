//! Builders for rustls client configurations.
//!
//! One [`ClientConfig`] per destination is built once by config compilation with
//! [`client_config`]; each shard then takes its own copy with [`with_session_store`], so session
//! tickets live per shard and no lock is shared on the data path.
//!
//! What this does not do: load PEM files (config compilation owns files and names), pick system
//! roots, or offer any way to turn certificate verification off.

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The crypto provider every simgate TLS configuration uses: aws-lc-rs with its default suites
/// and key-exchange groups. Built once per process.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Builds a client configuration that speaks TLS 1.3 and 1.2 and always verifies the server
/// against `roots`. `client_auth` is the certificate chain (leaf first) and key for mutual TLS;
/// `alpn` lists protocols in preference order (empty: no ALPN).
///
/// Fails when `roots` is empty (nothing could ever verify), or when rustls rejects the key or
/// the chain (for example, a key that does not match the leaf certificate).
///
/// The result carries rustls's default process-wide session cache; give each shard its own
/// with [`with_session_store`].
pub fn client_config(
    roots: RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, rustls::Error> {
    if roots.is_empty() {
        return Err(rustls::Error::General(
            "no trust anchors: the root certificate store is empty".to_owned(),
        ));
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(config)
}

/// A copy of `config` with its own in-memory session store holding up to `capacity` sessions
/// (TLS 1.3 tickets and TLS 1.2 sessions), for one shard. A `capacity` of 0 disables resumption.
pub fn with_session_store(config: &ClientConfig, capacity: usize) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.resumption = if capacity == 0 {
        Resumption::disabled()
    } else {
        Resumption::in_memory_sessions(capacity)
    };
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_support::{pump, server_config, server_connection, TestPki};
    use crate::tls::TlsClientSession;

    fn roots(pki: &TestPki) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        roots
    }

    #[test]
    fn empty_roots_are_refused() {
        assert!(client_config(RootCertStore::empty(), None, Vec::new()).is_err());
    }

    #[test]
    fn alpn_and_client_auth_are_applied() {
        let pki = TestPki::new();
        let config =
            client_config(roots(&pki), Some(pki.client_auth()), vec![b"h2".to_vec()]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn mismatched_client_key_is_refused() {
        let pki = TestPki::new();
        let other = TestPki::new();
        let (chain, _) = pki.client_auth();
        let (_, wrong_key) = other.client_auth();
        assert!(client_config(roots(&pki), Some((chain, wrong_key)), Vec::new()).is_err());
    }

    #[test]
    fn each_shard_copy_resumes_only_its_own_sessions() {
        let pki = TestPki::new();
        let base = client_config(roots(&pki), None, Vec::new()).unwrap();
        let shard_a = with_session_store(&base, 8);
        let shard_b = with_session_store(&base, 8);
        let server = server_config(&pki, false, false);

        let connect = |config: &Arc<ClientConfig>| {
            let mut client = TlsClientSession::new(config.clone(), pki.server_name()).unwrap();
            let mut server = server_connection(server.clone());
            // Pumping to quiescence also delivers the server's TLS 1.3 session tickets.
            pump(&mut client, &mut server).unwrap();
            assert!(!client.is_handshaking());
            client.was_resumed()
        };
        assert!(!connect(&shard_a), "first connection is a full handshake");
        assert!(connect(&shard_a), "same shard resumes");
        assert!(!connect(&shard_b), "another shard has no ticket");
        assert!(
            !connect(&with_session_store(&base, 0)),
            "capacity 0 disables resumption"
        );
    }
}
