//! Cloud adapters: pure mappings from a device message, the SIM's identity, the destination's
//! settings, the credential state and the time to the cloud's request — method, path, headers
//! and body — and, for the batching clouds, from many messages to one call and from the
//! cloud's answer back to each device's. One file per cloud; the authentication primitives
//! (SigV4, SAS, OAuth2 JWT, Basic) live in [`auth`].
//!
//! ```text
//!  flows::http_forward ──DeviceMessage + Context──► adapters::request(dest) ──CloudRequest──► upstream
//!  flows::batch        ──DeviceMessage + Context──► adapters::batch_item   ──encoded item──┐
//!                      ◄──ItemAnswer per device──── adapters::batch_answers ◄── response ◄─┘ batch_request
//! ```
//!
//! What this module does not do: IO of any kind (no sockets, no clock: `now` is passed in, no
//! token minting: tokens arrive minted in [`Context::token`]), routing, or the generic
//! `https`/`mqtts` destinations (the flows forward those themselves). Errors are the device's
//! answers ([`AdapterError::status`]); none contains a secret.

pub mod auth;
pub mod aws_iot_core;
pub mod aws_iot_core_mqtt;
pub mod aws_lambda;
pub mod azure_event_hubs;
pub mod azure_iot_hub;
pub mod azure_iot_hub_mqtt;
pub mod fuzz;
pub mod gcp_pubsub;
pub mod things_cloud;

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use crate::identity::SimRef;
use crate::policy::cloud::Token;
use crate::policy::{Adapter, TemplateVars};

/// What a device sent, as an adapter sees it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMessage<'a> {
    /// The device's request path without its leading `/` and without the query (the `{topic}`
    /// of the adapters' templates).
    pub path: &'a str,
    /// The device's `Content-Type`, if it sent a valid one.
    pub content_type: Option<&'a str>,
    /// The body, de-chunked (or the `envelope`, when the destination has one).
    pub body: &'a [u8],
}

/// Who sent it, where it goes, and the credential state.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The device's SIM, if it has an entry.
    pub sim: Option<SimRef<'a>>,
    /// The identity fields the device's group attaches (`imsi`, `imei`, …, `tag.KEY`), in
    /// order.
    pub fields: &'a [(String, String)],
    /// The device's source address.
    pub ip: IpAddr,
    /// The shard (for templates).
    pub shard: usize,
    /// The Host header (and SigV4 host) of the destination.
    pub host: &'a str,
    /// The destination's current token, if it uses one (minted by the control thread).
    pub token: Option<&'a Token>,
    /// Wall-clock time.
    pub now: SystemTime,
}

impl Context<'_> {
    /// Template variables for this device (`{topic}` = `topic`).
    pub fn vars<'t>(&'t self, topic: &'t [u8]) -> TemplateVars<'t> {
        TemplateVars {
            client_id: b"",
            topic,
            ip: self.ip,
            shard: self.shard,
            conn: 0,
            sim: self.sim,
        }
    }

    /// The token's `Authorization` value, if there is a token and it is still valid.
    pub fn valid_token(&self) -> Result<&str, AdapterError> {
        match self.token {
            Some(t) if t.valid_at(self.now) => Ok(&t.authorization),
            _ => Err(AdapterError::CredentialUnavailable),
        }
    }
}

/// A request for the cloud. `Host` and `Content-Length` are added when it is written.
#[derive(Clone, PartialEq, Eq)]
pub struct CloudRequest {
    /// `POST`, mostly.
    pub method: &'static str,
    /// Path and query, already percent-encoded as sent.
    pub path_and_query: String,
    /// Header fields (name, value); values are checked single-line visible text.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// The body.
    pub body: Bytes,
}

impl std::fmt::Debug for CloudRequest {
    /// Header values are left out: `Authorization` is among them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_ref()).collect();
        f.debug_struct("CloudRequest")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl CloudRequest {
    /// The value of header `name` (case-insensitive), for tests.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request head, HTTP/1.1, with `Host` and `Content-Length`.
    pub fn write_head(&self, host: &str, out: &mut BytesMut) {
        out.reserve(128 + self.path_and_query.len() + self.headers.len() * 48);
        out.put_slice(self.method.as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.path_and_query.as_bytes());
        out.put_slice(b" HTTP/1.1\r\nhost: ");
        out.put_slice(host.as_bytes());
        out.put_slice(b"\r\ncontent-length: ");
        out.put_slice(self.body.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

/// Why an adapter could not make the cloud's request: the device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterError {
    /// The message is larger than the cloud takes (413, before anything is sent).
    PayloadTooLarge {
        /// The cloud's limit in bytes.
        limit: usize,
    },
    /// The device's message is not what this cloud takes (400), e.g. a body that is not a
    /// valid measurement.
    BadMessage(String),
    /// The destination's token is missing or expired (503 with `Retry-After`): the control
    /// thread has not (re)minted it.
    CredentialUnavailable,
    /// The message cannot be expressed for the cloud because of the SIM's data or the
    /// configuration (500), e.g. identity too large for Lambda's client context.
    Unrepresentable(String),
}

impl AdapterError {
    /// The HTTP status the device gets.
    pub fn status(&self) -> u16 {
        match self {
            AdapterError::PayloadTooLarge { .. } => 413,
            AdapterError::BadMessage(_) => 400,
            AdapterError::CredentialUnavailable => 503,
            AdapterError::Unrepresentable(_) => 500,
        }
    }
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::PayloadTooLarge { limit } => {
                write!(f, "message larger than the cloud takes ({limit} bytes)")
            }
            AdapterError::BadMessage(why) => f.write_str(why),
            AdapterError::CredentialUnavailable => {
                f.write_str("no valid cloud token yet; retry later")
            }
            AdapterError::Unrepresentable(why) => f.write_str(why),
        }
    }
}

/// The cloud request for one device message, for every adapter except `https` and `mqtts`
/// (`None`: the flows forward those themselves).
pub fn request(
    adapter: &Adapter,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Option<Result<CloudRequest, AdapterError>> {
    Some(match adapter {
        Adapter::Https(_)
        | Adapter::Mqtts(_)
        | Adapter::AzureIotHubMqtt(_)
        | Adapter::AwsIotCoreMqtt(_) => return None,
        Adapter::AwsIotCore(s) => aws_iot_core::request(s, msg, ctx),
        Adapter::AzureIotHub(s) => azure_iot_hub::request(s, msg, ctx),
        Adapter::AzureEventHubs(s) => azure_event_hubs::request(s, msg, ctx),
        Adapter::GcpPubsub(s) => gcp_pubsub::request(s, msg, ctx),
        Adapter::AwsLambda(s) => aws_lambda::request(s, msg, ctx),
        Adapter::ThingsCloud(s) => things_cloud::request(s, msg, ctx),
    })
}

/// One device message encoded as an element of a batch call (JSON), for the batching
/// adapters (`None` for the others).
pub fn batch_item(
    adapter: &Adapter,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Option<Result<Vec<u8>, AdapterError>> {
    Some(match adapter {
        Adapter::AzureEventHubs(s) => azure_event_hubs::batch_item(s, msg, ctx),
        Adapter::GcpPubsub(s) => gcp_pubsub::batch_item(s, msg, ctx),
        _ => return None,
    })
}

/// The cloud call carrying `items` (from [`batch_item`]).
pub fn batch_request(
    adapter: &Adapter,
    items: &[&[u8]],
    ctx: &Context<'_>,
) -> Option<Result<CloudRequest, AdapterError>> {
    Some(match adapter {
        Adapter::AzureEventHubs(s) => azure_event_hubs::batch_request(s, items, ctx),
        Adapter::GcpPubsub(s) => gcp_pubsub::batch_request(s, items, ctx),
        _ => return None,
    })
}

/// What one device of a batch is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemAnswer {
    /// The status.
    pub status: u16,
    /// `Content-Type` of `body`, if any.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Bytes,
    /// `Retry-After` (seconds) the cloud gave with a refusal of the batch (429, 503), passed
    /// on to each device of it.
    pub retry_after: Option<u32>,
}

/// Each device's answer from the cloud's answer to a batch call of `count` messages: a 2xx
/// maps to each message's success (Pub/Sub: its own message id); anything else gives every
/// device the cloud's status (no partial success is claimed). An answer that does not account
/// for every message is `Err` (502 for all).
pub fn batch_answers(
    adapter: &Adapter,
    status: u16,
    body: &[u8],
    count: usize,
) -> Result<Vec<ItemAnswer>, String> {
    if !(200..300).contains(&status) {
        return Ok(vec![
            ItemAnswer {
                status,
                content_type: Some("text/plain; charset=utf-8"),
                body: Bytes::from(format!(
                    "the cloud refused the batch this message was in ({status})\n"
                )),
                retry_after: None,
            };
            count
        ]);
    }
    match adapter {
        Adapter::GcpPubsub(_) => gcp_pubsub::batch_answers(body, count),
        _ => Ok(vec![
            ItemAnswer {
                status,
                content_type: None,
                body: Bytes::new(),
                retry_after: None,
            };
            count
        ]),
    }
}

/// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a POST of `body`
/// to `path` on `ctx.host`, signed with `credential` (an `aws-keys` one) for `region` and
/// `service`, over `headers` (which are signed too).
pub(crate) fn sigv4_headers(
    credential: &crate::policy::cloud::CloudCredential,
    region: &str,
    service: &str,
    path: &str,
    headers: &[(Cow<'static, str>, String)],
    body: &[u8],
    ctx: &Context<'_>,
) -> Result<Vec<(Cow<'static, str>, String)>, AdapterError> {
    use auth::sigv4::{sign, AwsKeys, SignableRequest};
    let crate::policy::cloud::CloudCredential::AwsKeys {
        access_key_id,
        secret_access_key,
        session_token,
    } = credential
    else {
        return Err(AdapterError::Unrepresentable(
            "SigV4 needs an aws-keys credential".into(),
        ));
    };
    let secret = String::from_utf8_lossy(&secret_access_key.0);
    let session = session_token
        .as_ref()
        .map(|t| String::from_utf8_lossy(&t.0).into_owned());
    let signed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_ref(), v.as_str()))
        .collect();
    let added = sign(
        &SignableRequest {
            method: "POST",
            host: ctx.host,
            path_and_query: path,
            headers: &signed,
            body,
        },
        &AwsKeys {
            access_key_id,
            secret_access_key: &secret,
            session_token: session.as_deref(),
        },
        region,
        service,
        ctx.now,
    )
    .map_err(|e| AdapterError::Unrepresentable(format!("SigV4: {e}")))?;
    Ok(added
        .into_iter()
        .map(|(n, v)| (Cow::Borrowed(n), v))
        .collect())
}

pub(crate) use crate::policy::template::percent_encode;

/// Renders a template for this device to text (SIM fields are ASCII; anything else is
/// replaced, never passed through raw).
pub(crate) fn render(
    template: &crate::policy::Template,
    ctx: &Context<'_>,
    topic: &[u8],
) -> String {
    let vars = ctx.vars(topic);
    String::from_utf8_lossy(&template.render(&vars)).into_owned()
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_host_length_and_headers_in_order() {
        let req = CloudRequest {
            method: "POST",
            path_and_query: "/a%2Fb?qos=1".into(),
            headers: vec![("x-one".into(), "1".into()), ("x-two".into(), "2".into())],
            body: Bytes::from_static(b"hello"),
        };
        let mut out = BytesMut::new();
        req.write_head("example.com", &mut out);
        assert_eq!(
            &out[..],
            b"POST /a%2Fb?qos=1 HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\nx-one: 1\r\nx-two: 2\r\n\r\n"
        );
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        let mut out = String::new();
        percent_encode(b"a/b c+d~e.f_g-h", &mut out);
        assert_eq!(out, "a%2Fb%20c%2Bd~e.f_g-h");
    }

    #[test]
    fn debug_of_a_request_shows_no_header_value() {
        let req = CloudRequest {
            method: "POST",
            path_and_query: "/".into(),
            headers: vec![(
                "authorization".into(),
                "SharedAccessSignature sig=SECRET".into(),
            )],
            body: Bytes::new(),
        };
        let text = format!("{req:?}");
        assert!(text.contains("authorization"));
        assert!(!text.contains("SECRET"), "{text}");
    }
}
