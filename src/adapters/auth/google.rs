//! Google service-account OAuth2 (JWT bearer grant): placeholder until the full module lands.

/// A parsed service account.
pub struct ServiceAccount {
    /// `client_email`.
    pub client_email: String,
    /// `token_uri`.
    pub token_uri: String,
}

/// Why a service-account JSON is unusable.
#[derive(Debug)]
pub struct ServiceAccountError(pub &'static str);

impl std::fmt::Display for ServiceAccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl ServiceAccount {
    /// Parse the JSON Google issues.
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, ServiceAccountError> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|_| ServiceAccountError("not JSON"))?;
        let field = |k: &'static str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or(ServiceAccountError(k))
        };
        Ok(ServiceAccount {
            client_email: field("client_email")?,
            token_uri: field("token_uri")?,
        })
    }
}
