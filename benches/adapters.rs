//! Criterion benches of the cloud adapters' per-message work (issue #12): building one cloud
//! request per device message for each adapter (SigV4 signing for AWS IoT Core and Lambda, the
//! SAS/bearer header for Azure and Pub/Sub, JSON for Cumulocity), encoding a message as a
//! batch element, and assembling a 100-message batch call. Run with
//! `cargo bench --bench adapters`; figures go to docs/benchmarks.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simgate::adapters::{self, Context, DeviceMessage};
use simgate::identity::{SimRow, SimTable, SimTableBuilder, SimTags};
use simgate::policy::cloud::{
    AwsIotAuth, AwsIotCoreHttps, AwsLambda, AzureEventHubs, AzureIotHubHttps, BatchSettings,
    CloudCredential, GcpPubsub, LambdaInvocation, ThingsCloud, ThingsCloudKind, Token,
};
use simgate::policy::template::{Placeholder, SIM_PLACEHOLDERS};
use simgate::policy::{Adapter, Secret, Template};

fn table() -> SimTable {
    let mut b = SimTableBuilder::new();
    let tags = [("c8y_id", "4711")];
    b.push(
        &SimRow {
            imsi: Some("440101234567890"),
            ip: Some("10.0.0.7"),
            imei: Some("490154203237518"),
            msisdn: Some("819012345678"),
            sim_id: None,
            name: Some("meter-1"),
            group: Some("g"),
            tags: SimTags::Pairs(&tags),
        },
        0,
        0,
    )
    .expect("a SIM");
    b.finish().expect("a table")
}

fn template(text: &str) -> Template {
    let mut allowed = SIM_PLACEHOLDERS.to_vec();
    allowed.push(Placeholder::Topic);
    Template::parse(text, &allowed).expect("template")
}

fn adapters_bench(c: &mut Criterion) {
    let table = table();
    let fields = vec![
        ("imsi".to_owned(), "440101234567890".to_owned()),
        ("imei".to_owned(), "490154203237518".to_owned()),
    ];
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_450_400);
    let token = Token {
        authorization:
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=abc%3D&se=1796454000&skn=p".into(),
        expires_at: now + Duration::from_secs(3600),
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
    let keys = Arc::new(CloudCredential::AwsKeys {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        session_token: None,
    });
    let batch = Some(BatchSettings {
        max_messages: 100,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(5),
    });
    let cases: Vec<(&str, Adapter)> = vec![
        (
            "aws_iot_core_sigv4",
            Adapter::AwsIotCore(AwsIotCoreHttps {
                topic: template("sims/{imsi}/{topic}"),
                auth: AwsIotAuth::SigV4 {
                    region: "eu-west-1".into(),
                    credential: keys.clone(),
                },
            }),
        ),
        (
            "aws_iot_core_mtls",
            Adapter::AwsIotCore(AwsIotCoreHttps {
                topic: template("sims/{imsi}/{topic}"),
                auth: AwsIotAuth::MutualTls,
            }),
        ),
        (
            "azure_iot_hub",
            Adapter::AzureIotHub(AzureIotHubHttps {
                hub: "myhub".into(),
                device_id: template("{imsi}"),
            }),
        ),
        (
            "azure_event_hubs",
            Adapter::AzureEventHubs(AzureEventHubs {
                namespace: "ns".into(),
                hub: "telemetry".into(),
                partition_key: Some(template("{imsi}")),
                batch,
            }),
        ),
        (
            "gcp_pubsub",
            Adapter::GcpPubsub(GcpPubsub {
                project: "p".into(),
                topic: "t".into(),
                ordering_key: Some(template("{imsi}")),
                batch,
            }),
        ),
        (
            "aws_lambda",
            Adapter::AwsLambda(AwsLambda {
                region: "eu-west-1".into(),
                function: "ingest".into(),
                qualifier: None,
                invocation: LambdaInvocation::Event,
                credential: keys,
            }),
        ),
        (
            "things_cloud",
            Adapter::ThingsCloud(ThingsCloud {
                tenant: "t123".into(),
                kind: ThingsCloudKind::Measurement,
                source_id: template("{tag.c8y_id}"),
                authorization: Secret("Basic dDEyMy91OnB3".into()),
            }),
        ),
    ];
    let body = br#"{"type":"c8y_Temperature","c8y_Temperature":{"T":{"value":21.5,"unit":"C"}}}"#;
    let msg = DeviceMessage {
        path: "telemetry",
        content_type: Some("application/json"),
        body,
    };
    let mut group = c.benchmark_group("adapter_request");
    group.throughput(Throughput::Elements(1));
    for (name, adapter) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let req = adapters::request(black_box(adapter), black_box(&msg), &ctx)
                    .expect("a cloud adapter")
                    .expect("a request");
                black_box(req.body.len())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("adapter_batch");
    for (name, adapter) in cases.iter().filter(|(_, a)| a.batch().is_some()) {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}_item"), |b| {
            b.iter(|| {
                let item = adapters::batch_item(black_box(adapter), black_box(&msg), &ctx)
                    .expect("batching")
                    .expect("an item");
                black_box(item.len())
            })
        });
        let items: Vec<Vec<u8>> = (0..100)
            .map(|_| {
                adapters::batch_item(adapter, &msg, &ctx)
                    .expect("batching")
                    .expect("an item")
            })
            .collect();
        let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("{name}_call_of_100"), |b| {
            b.iter(|| {
                let req = adapters::batch_request(black_box(adapter), black_box(&refs), &ctx)
                    .expect("batching")
                    .expect("a call");
                black_box(req.body.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, adapters_bench);
criterion_main!(benches);
