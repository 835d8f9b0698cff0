//! `adapter = "azure-event-hubs"`: device messages become events sent with the Event Hubs REST
//! API, `POST /{hub}/messages?timeout=60&api-version=2014-01`, authorized by the policy SAS
//! token the control thread minted (`skn` = the policy). One message per call, or — with
//! `batch` — many devices' messages per call as `application/vnd.microsoft.servicebus.json`,
//! a JSON array of `{"Body", "BrokerProperties", "UserProperties"}`.
//!
//! The partition key (`partition_key`, default `{imsi}`) goes in `BrokerProperties`; the
//! identity fields are custom properties (headers for a single send, `UserProperties` in a
//! batch). A body that is not UTF-8 travels base64-encoded in a batch, marked by the user
//! property `simgate-body-encoding: base64` (the batch format carries strings only).
//!
//! What this does not do: mint the token, choose partitions itself, or AMQP.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{render, AdapterError, CloudRequest, Context, DeviceMessage};
use crate::policy::cloud::AzureEventHubs;
use crate::proto::http1::is_valid_header_value;

/// The REST API version spoken.
pub const API_VERSION: &str = "2014-01";

/// The batch media type.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// Event Hubs' largest event / send (Standard tier: 1 MB, 1,048,576 bytes).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

fn path(settings: &AzureEventHubs) -> String {
    let mut path = String::with_capacity(64);
    path.push('/');
    super::percent_encode(settings.hub.as_bytes(), &mut path);
    path.push_str("/messages?timeout=60&api-version=");
    path.push_str(API_VERSION);
    path
}

fn partition_key(settings: &AzureEventHubs, ctx: &Context<'_>) -> Option<String> {
    settings
        .partition_key
        .as_ref()
        .map(|t| render(t, ctx, b""))
        .filter(|k| !k.is_empty())
}

/// One message, one call.
pub fn request(
    settings: &AzureEventHubs,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    let authorization = ctx.valid_token()?;
    let mut headers: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(4 + ctx.fields.len());
    headers.push(("authorization".into(), authorization.to_owned()));
    headers.push((
        "content-type".into(),
        msg.content_type
            .unwrap_or("application/octet-stream")
            .to_owned(),
    ));
    if let Some(key) = partition_key(settings, ctx) {
        let mut props = Map::new();
        props.insert("PartitionKey".into(), Value::String(key));
        headers.push(("brokerproperties".into(), Value::Object(props).to_string()));
    }
    for (name, value) in ctx.fields {
        if is_valid_header_value(value.as_bytes())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            headers.push((name.clone().into(), value.clone()));
        }
    }
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path(settings),
        headers,
        body: Bytes::copy_from_slice(msg.body),
    })
}

/// One message as an element of a batch.
pub fn batch_item(
    settings: &AzureEventHubs,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<Vec<u8>, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    let mut user = Map::new();
    for (name, value) in ctx.fields {
        user.insert(name.clone(), Value::String(value.clone()));
    }
    let body = match std::str::from_utf8(msg.body) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            user.insert(
                "simgate-body-encoding".into(),
                Value::String("base64".into()),
            );
            base64::engine::general_purpose::STANDARD.encode(msg.body)
        }
    };
    let mut item = Map::new();
    item.insert("Body".into(), Value::String(body));
    if let Some(key) = partition_key(settings, ctx) {
        let mut props = Map::new();
        props.insert("PartitionKey".into(), Value::String(key));
        item.insert("BrokerProperties".into(), Value::Object(props));
    }
    item.insert("UserProperties".into(), Value::Object(user));
    let encoded = Value::Object(item).to_string().into_bytes();
    // Alone in a batch it still needs its two brackets.
    if encoded.len() + 2 > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    Ok(encoded)
}

/// The call carrying `items`.
pub fn batch_request(
    settings: &AzureEventHubs,
    items: &[&[u8]],
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    let authorization = ctx.valid_token()?;
    let len = items.iter().map(|i| i.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (k, item) in items.iter().enumerate() {
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path(settings),
        headers: vec![
            ("authorization".into(), authorization.to_owned()),
            ("content-type".into(), BATCH_CONTENT_TYPE.to_owned()),
        ],
        body: body.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{context, fields, one_sim, token};
    use crate::policy::template::SIM_PLACEHOLDERS;
    use crate::policy::Template;

    fn settings() -> AzureEventHubs {
        AzureEventHubs {
            namespace: "ns".into(),
            hub: "telemetry".into(),
            partition_key: Some(Template::parse("{imsi}", SIM_PLACEHOLDERS).expect("t")),
            batch: None,
        }
    }

    #[test]
    fn single_send_has_partition_key_and_identity_properties() {
        let table = one_sim();
        let f = fields();
        let t = token("SharedAccessSignature sr=x&sig=y&se=1&skn=send");
        let ctx = context(&table, &f, "ns.servicebus.windows.net", Some(&t));
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body: b"21.5",
        };
        let req = request(&settings(), &msg, &ctx).expect("request");
        assert_eq!(
            req.path_and_query,
            "/telemetry/messages?timeout=60&api-version=2014-01"
        );
        assert_eq!(
            req.header("brokerproperties"),
            Some(r#"{"PartitionKey":"440101234567890"}"#)
        );
        assert_eq!(req.header("imsi"), Some("440101234567890"));
        assert_eq!(req.header("content-type"), Some("application/octet-stream"));
    }

    #[test]
    fn batch_is_a_json_array_with_one_element_per_device() {
        let table = one_sim();
        let f = fields();
        let t = token("SharedAccessSignature sr=x&sig=y&se=1&skn=send");
        let ctx = context(&table, &f, "h", Some(&t));
        let a = batch_item(
            &settings(),
            &DeviceMessage {
                path: "",
                content_type: None,
                body: b"{\"t\":1}",
            },
            &ctx,
        )
        .expect("a");
        let b = batch_item(
            &settings(),
            &DeviceMessage {
                path: "",
                content_type: None,
                body: &[0xff, 0x00],
            },
            &ctx,
        )
        .expect("b");
        let req = batch_request(&settings(), &[&a, &b], &ctx).expect("batch");
        assert_eq!(req.header("content-type"), Some(BATCH_CONTENT_TYPE));
        let v: Value = serde_json::from_slice(&req.body).expect("json");
        let arr = v.as_array().expect("array");
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["Body"], "{\"t\":1}");
        assert_eq!(
            arr[0]["BrokerProperties"]["PartitionKey"],
            "440101234567890"
        );
        assert_eq!(arr[0]["UserProperties"]["imei"], "490154203237518");
        assert_eq!(arr[1]["Body"], "/wA=");
        assert_eq!(arr[1]["UserProperties"]["simgate-body-encoding"], "base64");
    }
}
