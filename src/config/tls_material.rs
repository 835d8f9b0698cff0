//! Loading TLS material named by the config (PEM certificate chains, private keys, CA bundles)
//! and building a destination's `rustls::ClientConfig`.
//!
//! Errors are small `Copy` enums that never carry file contents: a private key, or a line of
//! it, must not end up in an error message or a log. The caller adds the file path.
//!
//! What this does not do: pick files (paths arrive resolved), look at system roots (the caller
//! passes them in), or cache anything. `build_client_config` is the one function the
//! integrator may swap for `crate::tls` helpers.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS file could not be used. `Display` is a short phrase; the caller appends the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFileError {
    /// The file does not exist.
    NotFound,
    /// The process may not read it.
    PermissionDenied,
    /// Any other read failure (a directory, an IO error).
    Unreadable(io::ErrorKind),
    /// A PEM section is malformed (bad base64, missing END line).
    MalformedPem,
    /// No `CERTIFICATE` section.
    NoCertificate,
    /// No `PRIVATE KEY` / `RSA PRIVATE KEY` / `EC PRIVATE KEY` section.
    NoPrivateKey,
    /// The key is of a type or curve the crypto provider cannot use.
    UnsupportedKey,
    /// The private key does not belong to the first certificate of the chain.
    KeyMismatch,
    /// Certificates were found, but none parses as a trust anchor.
    NoUsableRoot,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("file not found"),
            Self::PermissionDenied => f.write_str("permission denied reading file"),
            Self::Unreadable(kind) => write!(f, "cannot read file ({kind})"),
            Self::MalformedPem => f.write_str("malformed PEM in file"),
            Self::NoCertificate => f.write_str("no PEM certificate (BEGIN CERTIFICATE) in file"),
            Self::NoPrivateKey => f.write_str(
                "no PEM private key (PKCS#8, PKCS#1 or SEC1: BEGIN PRIVATE KEY, \
                 BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY) in file",
            ),
            Self::UnsupportedKey => f.write_str(
                "private key type not supported (use RSA, ECDSA P-256/P-384 or Ed25519)",
            ),
            Self::KeyMismatch => f.write_str("private key does not match the certificate"),
            Self::NoUsableRoot => f.write_str("no usable CA certificate in file"),
        }
    }
}

/// The crypto provider every destination uses (aws-lc-rs).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a file the config names (TLS material, MQTT password files), mapping IO errors to
/// [`TlsFileError`] so that messages stay free of file contents.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TlsFileError::NotFound,
        io::ErrorKind::PermissionDenied => TlsFileError::PermissionDenied,
        kind => TlsFileError::Unreadable(kind),
    })
}

/// Every certificate in a PEM file, in order (other section kinds are skipped).
pub(crate) fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsFileError::MalformedPem)?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path)?;
    // The pem error type can quote a line of the file: never let it through.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsFileError::NoPrivateKey,
        _ => TlsFileError::MalformedPem,
    })
}

/// Checks that `key` is usable by the provider and belongs to `chain[0]`.
pub(crate) fn check_key_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsFileError> {
    match CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsFileError::KeyMismatch),
        Err(_) => Err(TlsFileError::UnsupportedKey),
    }
}

/// A root store from a PEM bundle.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let certs = load_certificates(path)?;
    roots_from(certs).ok_or(TlsFileError::NoUsableRoot)
}

/// A root store from DER certificates; `None` if none of them is a usable trust anchor.
pub(crate) fn roots_from(certs: Vec<CertificateDer<'static>>) -> Option<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    (added > 0).then_some(roots)
}

/// A client certificate chain and its key, checked to match.
pub(crate) struct ClientIdentity {
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

/// Why a `ClientConfig` could not be built (should not happen once inputs are validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientConfigError {
    /// The provider rejected the protocol versions.
    Protocols,
    /// The client certificate or key was rejected.
    ClientCertificate,
}

impl fmt::Display for ClientConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Protocols => "TLS provider rejected the default protocol versions",
            Self::ClientCertificate => "client certificate or key rejected by TLS",
        })
    }
}

/// Builds a destination's client config: aws-lc-rs, safe default protocol versions,
/// certificate verification against `roots` (never disabled), optional client certificate,
/// and `alpn` protocols in preference order.
pub(crate) fn build_client_config(
    roots: RootCertStore,
    identity: Option<&ClientIdentity>,
    alpn: &[String],
) -> Result<ClientConfig, ClientConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| ClientConfigError::Protocols)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|_| ClientConfigError::ClientCertificate)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}
