//! `adapter = "aws-lambda"`: a device request invokes a Lambda function,
//! `POST /2015-03-31/functions/{function}/invocations[?Qualifier=…]` signed with SigV4 (service
//! `lambda`), the device's body as the payload. `invocation = "request-response"` (default):
//! the function's answer is relayed to the device as its response; `"event"`: the device gets
//! Lambda's 202 once the event is queued.
//!
//! The identity travels in `X-Amz-Client-Context` (base64 JSON `{"custom": {…fields}}`, which
//! the function reads as `context.client_context.custom`); Lambda takes at most 3,583 bytes
//! there, checked per message (a SIM whose fields do not fit gets 500 naming the limit). The
//! payload must be JSON (Lambda refuses anything else): a body that is not is the device's 400
//! — `envelope = "json"` wraps any body into JSON first.
//!
//! What this does not do: streaming responses, function URLs, or retries.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{percent_encode, sigv4_headers, AdapterError, CloudRequest, Context, DeviceMessage};
use crate::policy::cloud::{AwsLambda, LambdaInvocation};

/// Lambda's largest synchronous payload (6 MB).
pub const MAX_PAYLOAD_SYNC: usize = 6 * 1024 * 1024;
/// Lambda's largest asynchronous (event) payload, as CLOUD-CONTRACTS.md gives it (1 MB).
pub const MAX_PAYLOAD_EVENT: usize = 1024 * 1024;
/// Lambda's limit for `X-Amz-Client-Context`.
pub const MAX_CLIENT_CONTEXT: usize = 3583;

/// The invoke request for one device message.
pub fn request(
    settings: &AwsLambda,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    let limit = match settings.invocation {
        LambdaInvocation::RequestResponse => MAX_PAYLOAD_SYNC,
        LambdaInvocation::Event => MAX_PAYLOAD_EVENT,
    };
    if msg.body.len() > limit {
        return Err(AdapterError::PayloadTooLarge { limit });
    }
    if !msg.body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(msg.body).is_err() {
        return Err(AdapterError::BadMessage(
            "aws-lambda takes a JSON body (or set envelope = \"json\" on the destination)".into(),
        ));
    }
    let mut path = String::with_capacity(64 + settings.function.len());
    path.push_str("/2015-03-31/functions/");
    percent_encode(settings.function.as_bytes(), &mut path);
    path.push_str("/invocations");
    if let Some(q) = &settings.qualifier {
        path.push_str("?Qualifier=");
        percent_encode(q.as_bytes(), &mut path);
    }
    let mut headers: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(6);
    headers.push(("content-type".into(), "application/json".to_owned()));
    headers.push((
        "x-amz-invocation-type".into(),
        match settings.invocation {
            LambdaInvocation::RequestResponse => "RequestResponse",
            LambdaInvocation::Event => "Event",
        }
        .to_owned(),
    ));
    if !ctx.fields.is_empty() {
        let mut custom = Map::new();
        for (name, value) in ctx.fields {
            custom.insert(name.clone(), Value::String(value.clone()));
        }
        let mut context = Map::new();
        context.insert("custom".into(), Value::Object(custom));
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(Value::Object(context).to_string());
        if encoded.len() > MAX_CLIENT_CONTEXT {
            return Err(AdapterError::Unrepresentable(format!(
                "the SIM's identity is {} bytes in X-Amz-Client-Context; Lambda takes at most \
                 {MAX_CLIENT_CONTEXT}: attach fewer fields to this group",
                encoded.len()
            )));
        }
        headers.push(("x-amz-client-context".into(), encoded));
    }
    let signed = sigv4_headers(
        &settings.credential,
        &settings.region,
        "lambda",
        &path,
        &headers,
        msg.body,
        ctx,
    )?;
    headers.extend(signed);
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path,
        headers,
        body: Bytes::copy_from_slice(msg.body),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::adapters::test_support::{context, fields, one_sim};
    use crate::policy::cloud::CloudCredential;
    use crate::policy::Secret;

    fn settings(invocation: LambdaInvocation) -> AwsLambda {
        AwsLambda {
            region: "eu-west-1".into(),
            function: "ingest".into(),
            qualifier: Some("live".into()),
            invocation,
            credential: Arc::new(CloudCredential::AwsKeys {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Secret("secretsecret".into()),
                session_token: Some(Secret("SESSIONTOKEN".into())),
            }),
        }
    }

    #[test]
    fn invoke_is_signed_for_lambda_with_identity_in_the_client_context() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "lambda.eu-west-1.amazonaws.com", None);
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body: b"{\"t\":1}",
        };
        let req = request(&settings(LambdaInvocation::Event), &msg, &ctx).expect("request");
        assert_eq!(
            req.path_and_query,
            "/2015-03-31/functions/ingest/invocations?Qualifier=live"
        );
        assert_eq!(req.header("x-amz-invocation-type"), Some("Event"));
        let cc = base64::engine::general_purpose::STANDARD
            .decode(req.header("x-amz-client-context").expect("context"))
            .expect("base64");
        let v: Value = serde_json::from_slice(&cc).expect("json");
        assert_eq!(v["custom"]["imsi"], "440101234567890");
        assert!(req
            .header("authorization")
            .expect("signed")
            .contains("/eu-west-1/lambda/aws4_request"));
        assert_eq!(req.header("x-amz-security-token"), Some("SESSIONTOKEN"));
    }

    #[test]
    fn a_body_that_is_not_json_is_the_devices_400() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "h", None);
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body: b"21.5 C",
        };
        assert_eq!(
            request(&settings(LambdaInvocation::RequestResponse), &msg, &ctx)
                .map(|_| ())
                .map_err(|e| e.status()),
            Err(400)
        );
    }

    #[test]
    fn identity_too_large_for_the_client_context_is_refused() {
        let table = one_sim();
        let big: Vec<(String, String)> = (0..40)
            .map(|i| (format!("tag.k{i}"), "v".repeat(100)))
            .collect();
        let ctx = context(&table, &big, "h", None);
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body: b"{}",
        };
        let err =
            request(&settings(LambdaInvocation::RequestResponse), &msg, &ctx).expect_err("too big");
        assert_eq!(err.status(), 500);
        assert!(err.to_string().contains("3583"), "{err}");
    }
}
