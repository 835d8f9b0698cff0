//! `adapter = "gcp-pubsub"`: device messages become Pub/Sub messages,
//! `POST /v1/projects/{project}/topics/{topic}:publish` with
//! `{"messages":[{"data": base64, "attributes": {…}, "orderingKey": …}]}`, authorized by the
//! OAuth2 bearer token the control thread obtained for the service account. With `batch`,
//! many devices' messages go in one call and each device is answered with its own message id
//! from the `messageIds` of the response (same order); without, the cloud's answer is relayed.
//!
//! Identity fields are attributes (`imsi`, `imei`, …, `tag.KEY`), plus `content-type` when the
//! device sent one; `ordering_key` (a template, e.g. `{imsi}`) sets `orderingKey` (the topic's
//! subscription must enable ordering for it to matter).
//!
//! What this does not do: obtain the token, create topics, or the Pub/Sub gRPC API.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{
    percent_encode, render, AdapterError, CloudRequest, Context, DeviceMessage, ItemAnswer,
};
use crate::policy::cloud::GcpPubsub;

/// Pub/Sub's largest message (10 MB, data and attributes).
pub const MAX_PAYLOAD: usize = 10_000_000;

/// Pub/Sub's largest publish request.
pub const MAX_REQUEST: usize = 10_000_000;

fn path(settings: &GcpPubsub) -> String {
    let mut path = String::with_capacity(64);
    path.push_str("/v1/projects/");
    percent_encode(settings.project.as_bytes(), &mut path);
    path.push_str("/topics/");
    percent_encode(settings.topic.as_bytes(), &mut path);
    path.push_str(":publish");
    path
}

/// One message as an element of `messages`.
pub fn batch_item(
    settings: &GcpPubsub,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<Vec<u8>, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD * 3 / 4 {
        return Err(AdapterError::PayloadTooLarge {
            limit: MAX_PAYLOAD * 3 / 4,
        });
    }
    let mut attributes = Map::new();
    for (name, value) in ctx.fields {
        attributes.insert(name.clone(), Value::String(value.clone()));
    }
    if let Some(ct) = msg.content_type {
        attributes.insert("content-type".into(), Value::String(ct.to_owned()));
    }
    let mut item = Map::new();
    item.insert(
        "data".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(msg.body)),
    );
    if !attributes.is_empty() {
        item.insert("attributes".into(), Value::Object(attributes));
    }
    if let Some(key) = settings.ordering_key.as_ref().map(|t| render(t, ctx, b"")) {
        if !key.is_empty() {
            item.insert("orderingKey".into(), Value::String(key));
        }
    }
    Ok(Value::Object(item).to_string().into_bytes())
}

/// The publish call carrying `items`.
pub fn batch_request(
    settings: &GcpPubsub,
    items: &[&[u8]],
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    let authorization = ctx.valid_token()?;
    let len = items.iter().map(|i| i.len() + 1).sum::<usize>() + 16;
    if len > MAX_REQUEST {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_REQUEST });
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"{\"messages\":[");
    for (k, item) in items.iter().enumerate() {
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    let headers: Vec<(Cow<'static, str>, String)> = vec![
        ("authorization".into(), authorization.to_owned()),
        ("content-type".into(), "application/json".to_owned()),
    ];
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path(settings),
        headers,
        body: body.into(),
    })
}

/// One message, one call (the cloud's answer, `{"messageIds":[…]}`, is relayed).
pub fn request(
    settings: &GcpPubsub,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    ctx.valid_token()?;
    let item = batch_item(settings, msg, ctx)?;
    batch_request(settings, &[&item], ctx)
}

/// Each device's answer from a 2xx publish response: `{"messageId": …}` in message order.
pub fn batch_answers(body: &[u8], count: usize) -> Result<Vec<ItemAnswer>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("publish response is not JSON: {e}"))?;
    let ids = value
        .get("messageIds")
        .and_then(Value::as_array)
        .ok_or("publish response has no messageIds")?;
    if ids.len() != count {
        return Err(format!(
            "publish response has {} message ids for {count} messages",
            ids.len()
        ));
    }
    ids.iter()
        .map(|id| {
            let id = id.as_str().ok_or("a message id is not a string")?;
            let mut m = Map::new();
            m.insert("messageId".into(), Value::String(id.to_owned()));
            Ok(ItemAnswer {
                status: 200,
                content_type: Some("application/json"),
                body: Bytes::from(Value::Object(m).to_string()),
                retry_after: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{context, fields, one_sim, token};
    use crate::policy::template::SIM_PLACEHOLDERS;
    use crate::policy::Template;

    fn settings() -> GcpPubsub {
        GcpPubsub {
            project: "my-project".into(),
            topic: "telemetry".into(),
            ordering_key: Some(Template::parse("{imsi}", SIM_PLACEHOLDERS).expect("t")),
            batch: None,
        }
    }

    #[test]
    fn publish_has_base64_data_identity_attributes_and_ordering_key() {
        let table = one_sim();
        let f = fields();
        let t = token("Bearer ya29.test");
        let ctx = context(&table, &f, "pubsub.googleapis.com", Some(&t));
        let msg = DeviceMessage {
            path: "",
            content_type: Some("text/plain"),
            body: b"hello",
        };
        let req = request(&settings(), &msg, &ctx).expect("request");
        assert_eq!(
            req.path_and_query,
            "/v1/projects/my-project/topics/telemetry:publish"
        );
        assert_eq!(req.header("authorization"), Some("Bearer ya29.test"));
        let v: Value = serde_json::from_slice(&req.body).expect("json");
        let m = &v["messages"][0];
        assert_eq!(m["data"], "aGVsbG8=");
        assert_eq!(m["attributes"]["imsi"], "440101234567890");
        assert_eq!(m["attributes"]["content-type"], "text/plain");
        assert_eq!(m["orderingKey"], "440101234567890");
    }

    #[test]
    fn answers_map_message_ids_in_order_and_refuse_a_short_list() {
        let answers = batch_answers(br#"{"messageIds":["1","2"]}"#, 2).expect("answers");
        assert_eq!(&answers[1].body[..], br#"{"messageId":"2"}"#);
        assert!(batch_answers(br#"{"messageIds":["1"]}"#, 2).is_err());
        assert!(batch_answers(b"nope", 1).is_err());
    }
}
