//! Compiles `[[credential]]`: `x509` (a client certificate chain and its private key, checked
//! to belong together) and the cloud kinds — `aws-keys`, `azure-sas`, `gcp-service-account`,
//! `basic`, `bearer` — whose secret values may be inline (`check` warns), `{ file = … }` or
//! `{ env = … }`.
//!
//! What this does not do: build rustls configs (see `destinations`), mint tokens (the control
//! thread does), or put key material in an error message: errors name the field, the file or
//! the variable, never a value.

use std::sync::Arc;

use super::Compiler;
use crate::config::schema::{RawCredential, RawSecret, RawSecretSource};
use crate::config::tls_material::{self, ClientIdentity};
use crate::policy::cloud::CloudCredential;
use crate::policy::Secret;

/// A validated credential.
pub(super) enum Credential {
    /// A client certificate for mutual TLS.
    X509(ClientIdentity),
    /// A cloud credential an adapter signs or authenticates with.
    Cloud(Arc<CloudCredential>),
}

impl Credential {
    /// The kind as written in `kind = …`.
    pub(super) fn kind_name(&self) -> &'static str {
        match self {
            Credential::X509(_) => "x509",
            Credential::Cloud(c) => match **c {
                CloudCredential::AwsKeys { .. } => "aws-keys",
                CloudCredential::AzureSas { .. } => "azure-sas",
                CloudCredential::GcpServiceAccount { .. } => "gcp-service-account",
                CloudCredential::Basic { .. } => "basic",
                CloudCredential::Bearer { .. } => "bearer",
            },
        }
    }
}

/// The kinds, as `check` lists them.
const KINDS: &str =
    "\"x509\", \"aws-keys\", \"azure-sas\", \"gcp-service-account\", \"basic\", \"bearer\"";

impl Compiler<'_> {
    pub(super) fn credential(&mut self, i: usize, raw: &RawCredential) -> Option<Credential> {
        let p = format!("credential[{i}]");
        let kind = raw.kind.as_str();
        // Which keys each kind takes; any other key set is an error with its path.
        let allowed: &[&str] = match kind {
            "x509" => &["cert", "key"],
            "aws-keys" => &["access_key_id", "secret_access_key", "session_token"],
            "azure-sas" => &["key_name", "key"],
            "gcp-service-account" => &["file"],
            "basic" => &["username", "password"],
            "bearer" => &["token"],
            other => {
                self.push(
                    format!("{p}.kind"),
                    format!("unsupported credential kind {other:?}; supported: {KINDS}"),
                );
                return None;
            }
        };
        let present = [
            ("cert", raw.cert.is_some()),
            ("key", raw.key.is_some()),
            ("access_key_id", raw.access_key_id.is_some()),
            ("secret_access_key", raw.secret_access_key.is_some()),
            ("session_token", raw.session_token.is_some()),
            ("key_name", raw.key_name.is_some()),
            ("file", raw.file.is_some()),
            ("username", raw.username.is_some()),
            ("password", raw.password.is_some()),
            ("token", raw.token.is_some()),
        ];
        let mut ok = true;
        for (key, set) in present {
            if set && !allowed.contains(&key) {
                self.push(
                    format!("{p}.{key}"),
                    format!(
                        "not a key of kind {kind:?}; it takes: {}",
                        allowed.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let credential = match kind {
            "x509" => self.x509(&p, raw).map(Credential::X509),
            "aws-keys" => self.aws_keys(&p, raw),
            "azure-sas" => self.azure_sas(&p, raw),
            "gcp-service-account" => self.gcp_service_account(&p, raw),
            "basic" => self.basic(&p, raw),
            _ => self.bearer(&p, raw),
        };
        credential.filter(|_| ok)
    }

    /// A required secret key of a credential: its bytes, or an error naming the key.
    fn required_secret(
        &mut self,
        p: &str,
        key: &str,
        raw: Option<&RawSecret>,
        kind: &str,
    ) -> Option<Secret> {
        let path = format!("{p}.{key}");
        let Some(raw) = raw else {
            self.push(path, format!("required for kind {kind:?}"));
            return None;
        };
        self.secret(&path, raw, 1)
            .map(|bytes| Secret(bytes::Bytes::from(bytes)))
    }

    fn required_text(
        &mut self,
        p: &str,
        key: &str,
        value: Option<&String>,
        kind: &str,
    ) -> Option<String> {
        match value {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => Some(v.clone()),
            Some(_) => {
                self.push(
                    format!("{p}.{key}"),
                    "must be non-empty visible ASCII without spaces",
                );
                None
            }
            None => {
                self.push(format!("{p}.{key}"), format!("required for kind {kind:?}"));
                None
            }
        }
    }

    fn x509(&mut self, p: &str, raw: &RawCredential) -> Option<ClientIdentity> {
        let Some(cert) = &raw.cert else {
            self.push(format!("{p}.cert"), "required for kind \"x509\"");
            return None;
        };
        let key = match &raw.key {
            Some(RawSecret::Inline(path)) => Some(std::path::PathBuf::from(path)),
            Some(RawSecret::Source(RawSecretSource {
                file: Some(path),
                env: None,
            })) => Some(path.clone()),
            Some(RawSecret::Source(_)) => {
                self.push(
                    format!("{p}.key"),
                    "kind \"x509\" takes the private key's file path (key = \"client.key\")",
                );
                return None;
            }
            None => {
                self.push(format!("{p}.key"), "required for kind \"x509\"");
                return None;
            }
        };
        let cert_path = self.base_dir.join(cert);
        let chain = match tls_material::load_certificates(&cert_path) {
            Ok(chain) => Some(chain),
            Err(e) => {
                self.push(format!("{p}.cert"), format!("{e}: {}", cert_path.display()));
                None
            }
        };
        let key_path = self.base_dir.join(key?);
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
        Some(ClientIdentity { chain, key })
    }

    fn aws_keys(&mut self, p: &str, raw: &RawCredential) -> Option<Credential> {
        let kind = "aws-keys";
        let access_key_id =
            self.required_text(p, "access_key_id", raw.access_key_id.as_ref(), kind);
        let secret_access_key =
            self.required_secret(p, "secret_access_key", raw.secret_access_key.as_ref(), kind);
        let session_token = match &raw.session_token {
            None => Some(None),
            Some(t) => self
                .secret(&format!("{p}.session_token"), t, 1)
                .map(|b| Some(Secret(b.into()))),
        };
        Some(Credential::Cloud(Arc::new(CloudCredential::AwsKeys {
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            session_token: session_token?,
        })))
    }

    fn azure_sas(&mut self, p: &str, raw: &RawCredential) -> Option<Credential> {
        let key_name = match &raw.key_name {
            None => Some(None),
            Some(name) => self
                .required_text(p, "key_name", Some(name), "azure-sas")
                .map(Some),
        };
        let key = self.required_secret(p, "key", raw.key.as_ref(), "azure-sas");
        Some(Credential::Cloud(Arc::new(CloudCredential::AzureSas {
            key_name: key_name?,
            key: key?,
        })))
    }

    fn gcp_service_account(&mut self, p: &str, raw: &RawCredential) -> Option<Credential> {
        let Some(file) = &raw.file else {
            self.push(
                format!("{p}.file"),
                "required for kind \"gcp-service-account\": the service-account JSON file",
            );
            return None;
        };
        let path = self.base_dir.join(file);
        let bytes = match tls_material::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.push(format!("{p}.file"), format!("{e}: {}", path.display()));
                return None;
            }
        };
        match crate::adapters::auth::google::ServiceAccount::from_json(&bytes) {
            Ok(account) => Some(Credential::Cloud(Arc::new(
                CloudCredential::GcpServiceAccount {
                    client_email: account.client_email.clone(),
                    token_uri: account.token_uri.clone(),
                    json: Secret(bytes.into()),
                },
            ))),
            Err(e) => {
                self.push(
                    format!("{p}.file"),
                    format!(
                        "not a usable service-account JSON ({e}): {}",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    fn basic(&mut self, p: &str, raw: &RawCredential) -> Option<Credential> {
        let username = match &raw.username {
            Some(u) if !u.is_empty() && !u.contains(':') && !u.chars().any(char::is_control) => {
                Some(u.clone())
            }
            Some(_) => {
                self.push(
                    format!("{p}.username"),
                    "must be non-empty, without ':' or control characters (RFC 7617)",
                );
                None
            }
            None => {
                self.push(format!("{p}.username"), "required for kind \"basic\"");
                None
            }
        };
        let password = self.required_secret(p, "password", raw.password.as_ref(), "basic");
        Some(Credential::Cloud(Arc::new(CloudCredential::Basic {
            username: username?,
            password: password?,
        })))
    }

    fn bearer(&mut self, p: &str, raw: &RawCredential) -> Option<Credential> {
        let token = self.required_secret(p, "token", raw.token.as_ref(), "bearer")?;
        if !token.0.iter().all(|b| b.is_ascii_graphic()) {
            self.push(
                format!("{p}.token"),
                "must be visible ASCII without spaces (it is sent in a header)",
            );
            return None;
        }
        Some(Credential::Cloud(Arc::new(CloudCredential::Bearer {
            token,
        })))
    }
}
