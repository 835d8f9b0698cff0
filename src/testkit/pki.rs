//! A throw-away certificate authority minted at runtime with `rcgen`, for tests and the demo.
//!
//! [`TestPki::new`] creates a fresh CA (ECDSA P-256) and writes its certificate to `dir/ca.pem`;
//! the CA private key stays in memory unless [`TestPki::write_ca_key`] is called. Leaf certificates
//! for servers ([`TestPki::server_cert`]) and mTLS clients ([`TestPki::client_cert`]) are signed by
//! that CA and written as `<name>.pem` / `<name>.key` (PKCS#8, mode 0600 on Unix). [`load_certs`]
//! and [`load_key`] read PEM files back into rustls types using rustls-pki-types' PEM support.
//!
//! What it does NOT do: revocation (no CRL/OCSP), intermediate CAs, RSA keys, or any protection
//! of the keys beyond file permissions. It is not meant for anything but tests and demos.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Common name of every minted CA.
const CA_COMMON_NAME: &str = "simgate test CA";

/// Errors from minting, writing or loading test certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiError {
    /// rcgen failed to generate a key or to sign a certificate.
    Generate,
    /// A subject alternative name is neither a valid DNS name nor an IP address.
    InvalidSubjectAltName,
    /// A certificate name is unusable as a file stem (empty, a path separator, `..`, NUL).
    InvalidName,
    /// Creating the directory or writing a file failed.
    Write(io::ErrorKind),
    /// Opening or reading a PEM file failed.
    Read(io::ErrorKind),
    /// A PEM file is malformed (bad base64, missing END line, oversized section).
    MalformedPem,
    /// A PEM file holds no item of the wanted kind (no certificate, no private key).
    NothingFound,
}

impl std::fmt::Display for PkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Generate => f.write_str("certificate or key generation failed"),
            Self::InvalidSubjectAltName => f.write_str("invalid subject alternative name"),
            Self::InvalidName => f.write_str("certificate name is not a plain file stem"),
            Self::Write(kind) => write!(f, "writing PKI file failed: {kind}"),
            Self::Read(kind) => write!(f, "reading PEM file failed: {kind}"),
            Self::MalformedPem => f.write_str("malformed PEM file"),
            Self::NothingFound => f.write_str("PEM file holds no item of the wanted kind"),
        }
    }
}

impl std::error::Error for PkiError {}

impl From<pem::Error> for PkiError {
    fn from(err: pem::Error) -> Self {
        match err {
            pem::Error::Io(io_err) => Self::Read(io_err.kind()),
            pem::Error::NoItemsFound => Self::NothingFound,
            _ => Self::MalformedPem,
        }
    }
}

/// Paths of a certificate and its private key written by [`TestPki`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate (the leaf only; the CA is at [`TestPki::ca_pem`]).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
}

/// A certificate authority created for one test run, able to sign server and client certificates.
pub struct TestPki {
    /// Directory every file is written to.
    pub dir: PathBuf,
    /// Path of the CA certificate (`dir/ca.pem`), the trust anchor for clients and mTLS servers.
    pub ca_pem: PathBuf,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The CA key is deliberately left out.
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// Creates a new CA, creating `dir` if needed and writing the CA certificate to `dir/ca.pem`.
    /// The CA private key is not written (see [`TestPki::write_ca_key`]).
    pub fn new(dir: &Path) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|e| PkiError::Write(e.kind()))?;
        let ca_key = KeyPair::generate().map_err(|_| PkiError::Generate)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(|_| PkiError::Generate)?;
        let ca_pem = dir.join("ca.pem");
        write_file(&ca_pem, ca_cert.pem().as_bytes(), false)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_cert,
            ca_key,
        })
    }

    /// Writes the CA private key to `dir/ca.key` (mode 0600 on Unix) and returns its path.
    pub fn write_ca_key(&self) -> Result<PathBuf, PkiError> {
        let path = self.dir.join("ca.key");
        write_file(&path, self.ca_key.serialize_pem().as_bytes(), true)?;
        Ok(path)
    }

    /// Mints a server certificate for `sans` (DNS names or IP literals, e.g.
    /// `["localhost", "127.0.0.1"]`), CN = `name`, signed by the CA; writes `<name>.pem` and
    /// `<name>.key` into [`TestPki::dir`].
    pub fn server_cert(&self, name: &str, sans: &[&str]) -> Result<CertFiles, PkiError> {
        let sans: Vec<String> = sans.iter().map(|san| (*san).to_owned()).collect();
        let mut params =
            CertificateParams::new(sans).map_err(|_| PkiError::InvalidSubjectAltName)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(name, params)
    }

    /// Mints a client certificate for mTLS with CN = `name`, signed by the CA; writes
    /// `<name>.pem` and `<name>.key` into [`TestPki::dir`].
    pub fn client_cert(&self, name: &str) -> Result<CertFiles, PkiError> {
        let mut params = CertificateParams::default();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_leaf(name, params)
    }

    fn sign_leaf(&self, name: &str, mut params: CertificateParams) -> Result<CertFiles, PkiError> {
        if !is_plain_file_stem(name) {
            return Err(PkiError::InvalidName);
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|_| PkiError::Generate)?;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .map_err(|_| PkiError::Generate)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        write_file(&files.cert, cert.pem().as_bytes(), false)?;
        write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
        Ok(files)
    }
}

/// Loads every certificate of a PEM file, in file order. An empty result is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PkiError::NothingFound);
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    Ok(PrivateKeyDer::from_pem_file(path)?)
}

/// True when `name` can be used as `<name>.pem` inside the PKI directory without escaping it.
fn is_plain_file_stem(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| PkiError::Write(e.kind()))?;
    file.write_all(contents)
        .map_err(|e| PkiError::Write(e.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    #[test]
    fn minted_files_load_back_and_ca_key_is_private_until_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        assert_eq!(load_certs(&pki.ca_pem).expect("ca").len(), 1);
        assert!(!dir.path().join("ca.key").exists());

        let server = pki
            .server_cert("sink", &["localhost", "127.0.0.1"])
            .expect("server cert");
        assert_eq!(server.cert, dir.path().join("sink.pem"));
        assert_eq!(load_certs(&server.cert).expect("cert").len(), 1);
        assert!(matches!(
            load_key(&server.key).expect("key"),
            PrivateKeyDer::Pkcs8(_)
        ));

        let ca_key = pki.write_ca_key().expect("ca key");
        assert!(load_key(&ca_key).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&server.key)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
    }

    #[test]
    fn server_cert_verifies_for_its_names_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let files = pki
            .server_cert("srv", &["localhost", "127.0.0.1"])
            .expect("server cert");
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs(&pki.ca_pem).expect("ca") {
            roots.add(ca).expect("add root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        let leaf = load_certs(&files.cert).expect("leaf").remove(0);
        let now = UnixTime::now();
        for good in ["localhost", "127.0.0.1"] {
            let name = ServerName::try_from(good).expect("name");
            assert!(verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .is_ok());
        }
        let wrong = ServerName::try_from("example.com").expect("name");
        assert!(verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], now)
            .is_err());
    }

    #[test]
    fn bad_names_and_files_are_typed_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        assert_eq!(pki.client_cert("../evil"), Err(PkiError::InvalidName));
        assert_eq!(pki.client_cert(""), Err(PkiError::InvalidName));
        assert_eq!(
            load_certs(&dir.path().join("missing.pem")),
            Err(PkiError::Read(io::ErrorKind::NotFound))
        );
        let client = pki.client_cert("dev").expect("client");
        // A key file holds no certificate, and a certificate file no key.
        assert_eq!(load_certs(&client.key), Err(PkiError::NothingFound));
        assert_eq!(load_key(&client.cert), Err(PkiError::NothingFound));
        let garbled = dir.path().join("garbled.pem");
        fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n!!!!\n").expect("write");
        assert_eq!(load_certs(&garbled), Err(PkiError::MalformedPem));
    }
}
