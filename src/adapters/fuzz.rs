//! The fuzz entry point of the cloud adapters ([`fuzz_message`]): whatever a device sends (path,
//! content type, body) and whatever a cloud answers, an adapter never panics and never builds a
//! request that is not valid HTTP/1.1 — header names are tokens, values single-line, the
//! request target an origin form — and a batch element is always a JSON object.
//!
//! What this does not do: check that a mapping is *right* (the unit tests and the contract sink
//! do), or exercise SIM variety (one fixed SIM).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;

use super::{Context, DeviceMessage};
use crate::identity::{SimRow, SimTable, SimTableBuilder, SimTags};
use crate::policy::cloud::{
    AwsIotAuth, AwsIotCoreHttps, AwsLambda, AzureEventHubs, AzureIotHubHttps, BatchSettings,
    CloudCredential, GcpPubsub, LambdaInvocation, ThingsCloud, ThingsCloudKind, Token,
};
use crate::policy::template::{Placeholder, SIM_PLACEHOLDERS};
use crate::policy::{Adapter, Secret, Template};
use crate::proto::http1::{is_valid_header_name, is_valid_header_value};

fn table() -> Option<SimTable> {
    let mut b = SimTableBuilder::new();
    let tags = [("c8y_id", "4711")];
    b.push(
        &SimRow {
            imsi: Some("440101234567890"),
            ip: Some("10.0.0.7"),
            imei: Some("490154203237518"),
            msisdn: None,
            sim_id: None,
            name: Some("meter 1"),
            group: Some("g"),
            tags: SimTags::Pairs(&tags),
        },
        0,
        0,
    )
    .ok()?;
    b.finish().ok()
}

fn template(text: &str) -> Option<Template> {
    let mut allowed = SIM_PLACEHOLDERS.to_vec();
    allowed.push(Placeholder::Topic);
    Template::parse(text, &allowed).ok()
}

/// Every cloud adapter, configured as a carrier would.
fn adapters() -> Option<Vec<Adapter>> {
    let keys = Arc::new(CloudCredential::AwsKeys {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        session_token: Some(Secret("session".into())),
    });
    let batch = Some(BatchSettings {
        max_messages: 100,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(5),
    });
    Some(vec![
        Adapter::AwsIotCore(AwsIotCoreHttps {
            topic: template("sims/{imsi}/{topic}")?,
            auth: AwsIotAuth::SigV4 {
                region: "eu-west-1".into(),
                credential: keys.clone(),
            },
        }),
        Adapter::AzureIotHub(AzureIotHubHttps {
            hub: "myhub".into(),
            device_id: template("{imsi}")?,
        }),
        Adapter::AzureEventHubs(AzureEventHubs {
            namespace: "ns".into(),
            hub: "telemetry".into(),
            partition_key: Some(template("{name}")?),
            batch,
        }),
        Adapter::GcpPubsub(GcpPubsub {
            project: "p".into(),
            topic: "t".into(),
            ordering_key: Some(template("{imsi}")?),
            batch,
        }),
        Adapter::AwsLambda(AwsLambda {
            region: "eu-west-1".into(),
            function: "ingest".into(),
            qualifier: Some("live".into()),
            invocation: LambdaInvocation::RequestResponse,
            credential: keys,
        }),
        Adapter::ThingsCloud(ThingsCloud {
            tenant: "t1".into(),
            kind: ThingsCloudKind::Measurement,
            source_id: template("{tag.c8y_id}")?,
            authorization: Secret("Basic dDEvdTpw".into()),
        }),
        Adapter::ThingsCloud(ThingsCloud {
            tenant: "t1".into(),
            kind: ThingsCloudKind::Event,
            source_id: template("{tag.c8y_id}")?,
            authorization: Secret("Basic dDEvdTpw".into()),
        }),
    ])
}

/// Fuzz entry point. `data` is `path \n content-type \n body` (missing parts are empty); the
/// whole of `data` is also fed to the cloud-answer parsers.
///
/// # Panics
/// When an adapter builds an invalid request or batch element (a bug).
pub fn fuzz_message(data: &[u8]) {
    let (Some(table), Some(adapters)) = (table(), adapters()) else {
        panic!("the fuzz fixture does not build");
    };
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = parts
        .next()
        .and_then(|c| std::str::from_utf8(c).ok())
        .filter(|c| is_valid_header_value(c.as_bytes()));
    let body = parts.next().unwrap_or_default();
    let fields = vec![
        ("imsi".to_owned(), "440101234567890".to_owned()),
        ("name".to_owned(), "meter 1".to_owned()),
    ];
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_450_400);
    let token = Token {
        authorization: "SharedAccessSignature sr=x&sig=y&se=1796454000".into(),
        expires_at: now + Duration::from_secs(60),
    };
    let ctx = Context {
        sim: table.iter().next(),
        fields: &fields,
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        shard: 0,
        host: "cloud.example.com",
        token: Some(&token),
        now,
    };
    let msg = DeviceMessage {
        path: &path,
        content_type,
        body,
    };
    for adapter in &adapters {
        if let Some(Ok(req)) = super::request(adapter, &msg, &ctx) {
            check_request(&req);
        }
        if let Some(Ok(item)) = super::batch_item(adapter, &msg, &ctx) {
            match serde_json::from_slice::<serde_json::Value>(&item) {
                Ok(serde_json::Value::Object(_)) => {}
                other => panic!("a batch element is not a JSON object: {other:?}"),
            }
            if let Some(Ok(call)) = super::batch_request(adapter, &[&item, &item], &ctx) {
                check_request(&call);
                if serde_json::from_slice::<serde_json::Value>(&call.body).is_err() {
                    panic!("a batch call's body is not JSON");
                }
            }
        }
        for status in [200, 429] {
            let _ = super::batch_answers(adapter, status, data, 3);
        }
    }
    let _ = super::auth::google::parse_token_response(data);
}

/// A request simgate would write: a valid origin-form target and valid header fields, and a
/// head that parses back with the same fields.
fn check_request(req: &super::CloudRequest) {
    let target = req.path_and_query.as_bytes();
    assert!(
        target.first() == Some(&b'/'),
        "target {:?}",
        req.path_and_query
    );
    assert!(
        target.iter().all(|b| b.is_ascii_graphic()),
        "target has spaces or control bytes: {:?}",
        req.path_and_query
    );
    for (name, value) in &req.headers {
        assert!(is_valid_header_name(name), "header name {name:?}");
        assert!(
            is_valid_header_value(value.as_bytes()),
            "header {name} value {value:?}"
        );
    }
    let mut head = BytesMut::new();
    req.write_head("cloud.example.com", &mut head);
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => panic!("the head does not parse back: {other:?}"),
    }
    assert_eq!(
        parsed.headers.len(),
        req.headers.len() + 2,
        "fields lost in the head"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_and_oddities_keep_the_properties() {
        for data in [
            &b""[..],
            b"telemetry/temp\napplication/json\n{\"type\":\"c8y_T\",\"c8y_T\":{\"T\":{\"value\":1}}}",
            b"a b\r\nX: y\n\xff\xfe\n\x00\x01",
            b"{\"messageIds\":[\"1\",\"2\",\"3\"]}",
            b"{\"access_token\":\"x\",\"expires_in\":-1}",
            b"%2e%2e/..//\ntext/plain\r\nX-Injected: 1\nbody",
        ] {
            super::fuzz_message(data);
        }
    }
}
