//! Compiles `[[credential]]`: loads a client certificate chain and its private key (through
//! `tls_material`) and checks that they belong together.
//!
//! What this does not do: build rustls configs (see `destinations`), or put key material in an
//! error message: errors name the file, never its contents.

use super::Compiler;
use crate::config::schema::RawCredential;
use crate::config::tls_material::{self, ClientIdentity};

/// A validated credential.
pub(super) enum Credential {
    X509(ClientIdentity),
}

impl Compiler<'_> {
    pub(super) fn credential(&mut self, i: usize, raw: &RawCredential) -> Option<Credential> {
        let p = format!("credential[{i}]");
        let kind_ok = match raw.kind.as_str() {
            "x509" => true,
            other => {
                self.push(
                    format!("{p}.kind"),
                    format!("unsupported credential kind {other:?}; supported: \"x509\""),
                );
                false
            }
        };
        let cert_path = self.base_dir.join(&raw.cert);
        let chain = match tls_material::load_certificates(&cert_path) {
            Ok(chain) => Some(chain),
            Err(e) => {
                self.push(format!("{p}.cert"), format!("{e}: {}", cert_path.display()));
                None
            }
        };
        let key_path = self.base_dir.join(&raw.key);
        let key = match tls_material::load_private_key(&key_path) {
            Ok(key) => Some(key),
            Err(e) => {
                self.push(format!("{p}.key"), format!("{e}: {}", key_path.display()));
                None
            }
        };
        let (Some(chain), Some(key)) = (chain, key) else {
            return None;
        };
        if let Err(e) = tls_material::check_key_pair(&chain, &key) {
            self.push(format!("{p}.key"), format!("{e}: {}", key_path.display()));
            return None;
        }
        kind_ok.then_some(Credential::X509(ClientIdentity { chain, key }))
    }
}
