//! `adapter = "aws-iot-core"` over HTTPS: the device's message becomes an AWS IoT Core HTTPS
//! publish, `POST /topics/{url-encoded topic}?qos=1` with the payload as the body.
//!
//! The topic is the destination's `topic` template rendered for the device (`{topic}` is the
//! device's request path without its leading `/`; SIM placeholders allowed). Authentication is
//! mutual TLS (the destination's `x509` credential in its TLS config: nothing to add here) or
//! SigV4 for the data plane's signing name `iotdata`. Payloads over 128 KB are refused with
//! 413 before anything is sent (AWS IoT's message size limit). The identity travels in the
//! topic (as the carrier's template puts it); HTTPS publish has no property bag.
//!
//! What this does not do: MQTT to AWS IoT Core (the `mqtts` path), or retries.

use std::borrow::Cow;

use bytes::Bytes;

use super::{
    percent_encode, render, sigv4_headers, AdapterError, CloudRequest, Context, DeviceMessage,
};
use crate::policy::cloud::{AwsIotAuth, AwsIotCoreHttps};

/// AWS IoT Core's largest message (128 KB).
pub const MAX_PAYLOAD: usize = 128 * 1024;

/// The SigV4 signing name of the AWS IoT data plane.
pub const SIGNING_NAME: &str = "iotdata";

/// The publish request for one device message.
pub fn request(
    settings: &AwsIotCoreHttps,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    let topic = render(&settings.topic, ctx, msg.path.as_bytes());
    if topic.is_empty() || topic.len() > 256 {
        return Err(AdapterError::BadMessage(format!(
            "the topic is {} bytes; AWS IoT takes 1 to 256",
            topic.len()
        )));
    }
    let mut path = String::with_capacity(16 + topic.len() * 3);
    path.push_str("/topics/");
    percent_encode(topic.as_bytes(), &mut path);
    path.push_str("?qos=1");
    let mut headers: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(4);
    if let Some(ct) = msg.content_type {
        headers.push(("content-type".into(), ct.to_owned()));
    }
    if let AwsIotAuth::SigV4 { region, credential } = &settings.auth {
        let signed = sigv4_headers(
            credential,
            region,
            SIGNING_NAME,
            &path,
            &headers,
            msg.body,
            ctx,
        )?;
        headers.extend(signed);
    }
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
    use crate::policy::template::{Placeholder, SIM_PLACEHOLDERS};
    use crate::policy::{Secret, Template};

    fn settings(topic: &str, auth: AwsIotAuth) -> AwsIotCoreHttps {
        let mut allowed = SIM_PLACEHOLDERS.to_vec();
        allowed.push(Placeholder::Topic);
        AwsIotCoreHttps {
            topic: Template::parse(topic, &allowed).expect("template"),
            auth,
        }
    }

    fn msg(body: &[u8]) -> DeviceMessage<'_> {
        DeviceMessage {
            path: "telemetry/temp",
            content_type: Some("application/json"),
            body,
        }
    }

    #[test]
    fn mutual_tls_publish_renders_and_encodes_the_topic() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "abc-ats.iot.eu-west-1.amazonaws.com", None);
        let s = settings("sims/{imsi}/{topic}", AwsIotAuth::MutualTls);
        let req = request(&s, &msg(b"{\"t\":21}"), &ctx).expect("request");
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.path_and_query,
            "/topics/sims%2F440101234567890%2Ftelemetry%2Ftemp?qos=1"
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("authorization"), None);
        assert_eq!(&req.body[..], b"{\"t\":21}");
    }

    #[test]
    fn sigv4_adds_authorization_for_iotdata() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "abc-ats.iot.eu-west-1.amazonaws.com", None);
        let cred = Arc::new(CloudCredential::AwsKeys {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        });
        let s = settings(
            "{topic}",
            AwsIotAuth::SigV4 {
                region: "eu-west-1".into(),
                credential: cred,
            },
        );
        let req = request(&s, &msg(b"x"), &ctx).expect("request");
        let auth = req.header("authorization").expect("signed");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/iotdata/aws4_request"
            ),
            "{auth}"
        );
        assert_eq!(req.header("x-amz-date"), Some("20261205T060000Z"));
        assert!(!format!("{req:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn payload_over_128_kb_is_refused_before_sending() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "h", None);
        let s = settings("{topic}", AwsIotAuth::MutualTls);
        let big = vec![b'x'; MAX_PAYLOAD + 1];
        assert_eq!(
            request(&s, &msg(&big), &ctx),
            Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD })
        );
        let max = vec![b'x'; MAX_PAYLOAD];
        assert!(request(&s, &msg(&max), &ctx).is_ok());
    }
}
