//! The cloud adapters' keys and the cloud credential kinds: what each compiles to, the
//! endpoints derived from the keys, and every refused combination at its path.

use super::{assert_single, Fixture};
use crate::policy::cloud::{AwsIotAuth, LambdaInvocation, ThingsCloudKind, TokenSpec};
use crate::policy::{Adapter, AdapterKind};

const SERVICE_ACCOUNT: &str =
    include_str!("../../adapters/auth/testdata/google/test-service-account.json");

/// A listener, the credentials of every kind, and `destination` routed from `/`.
fn config(destination: &str) -> String {
    format!(
        r#"
[[listener]]
name = "http"
protocol = "http"
bind = "0.0.0.0:8080"

[[credential]]
name = "aws"
kind = "aws-keys"
access_key_id = "AKIDEXAMPLE"
secret_access_key = {{ file = "secrets/broker.pass" }}

[[credential]]
name = "hub-policy"
kind = "azure-sas"
key_name = "iothubowner"
key = {{ file = "secrets/broker.pass" }}

[[credential]]
name = "hub-device"
kind = "azure-sas"
key = {{ file = "secrets/broker.pass" }}

[[credential]]
name = "gcp"
kind = "gcp-service-account"
file = "sa.json"

[[credential]]
name = "c8y"
kind = "basic"
username = "gw"
password = {{ file = "secrets/broker.pass" }}

[[credential]]
name = "client-cert"
kind = "x509"
cert = "certs/client.crt"
key = "certs/client.key"

[[destination]]
name = "cloud"
{destination}

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "cloud" }} ]
"#
    )
}

fn fixture() -> Fixture {
    let mut fx = Fixture::new();
    std::fs::write(fx.path().join("sa.json"), SERVICE_ACCOUNT).unwrap();
    for host in [
        "myhub.azure-devices.net",
        "ns.servicebus.windows.net",
        "pubsub.googleapis.com",
        "lambda.eu-west-1.amazonaws.com",
    ] {
        fx.env
            .hosts
            .insert(host.to_owned(), vec!["127.0.0.1:0".parse().unwrap()]);
    }
    fx
}

#[test]
fn each_cloud_adapter_compiles_with_its_derived_endpoint() {
    let fx = fixture();
    let cases = [
        (
            "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"",
            AdapterKind::AzureIotHub,
            "myhub.azure-devices.net:443",
        ),
        (
            "adapter = \"azure-event-hubs\"\nnamespace = \"ns\"\nhub = \"telemetry\"\ncredential = \"hub-policy\"",
            AdapterKind::AzureEventHubs,
            "ns.servicebus.windows.net:443",
        ),
        (
            "adapter = \"gcp-pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredential = \"gcp\"",
            AdapterKind::GcpPubsub,
            "pubsub.googleapis.com:443",
        ),
        (
            "adapter = \"aws-lambda\"\nregion = \"eu-west-1\"\nfunction = \"ingest\"\ncredential = \"aws\"",
            AdapterKind::AwsLambda,
            "lambda.eu-west-1.amazonaws.com:443",
        ),
        (
            "adapter = \"aws-iot-core\"\nendpoint = \"sink.test:8443\"\ncredential = \"client-cert\"",
            AdapterKind::AwsIotCore,
            "sink.test:8443",
        ),
        (
            "adapter = \"things-cloud\"\nendpoint = \"sink.test:443\"\ntenant = \"t1\"\ncredential = \"c8y\"",
            AdapterKind::ThingsCloud,
            "sink.test:443",
        ),
    ];
    for (destination, kind, endpoint) in cases {
        let plan = fx
            .compile(&config(destination))
            .unwrap_or_else(|e| panic!("{destination}:\n{e}"));
        let d = &plan.destinations[0];
        assert_eq!(d.adapter.kind(), kind);
        assert_eq!(d.endpoint, endpoint);
        // Host: the endpoint without :443.
        assert_eq!(d.host_header, endpoint.trim_end_matches(":443"));
    }
}

#[test]
fn an_overridden_endpoint_keeps_the_clouds_host_and_server_name() {
    let fx = fixture();
    let plan = fx
        .compile(&config(
            "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"\nendpoint = \"sink.test:8443\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.endpoint, "sink.test:8443");
    assert_eq!(d.host_header, "myhub.azure-devices.net");
    assert_eq!(
        d.server_name,
        rustls::pki_types::ServerName::try_from("myhub.azure-devices.net").unwrap()
    );
    let plan = fx
        .compile(&config(
            "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"\nendpoint = \"sink.test:8443\"\nhost_header = \"h.example\"\nserver_name = \"sink.test\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.destinations[0].host_header, "h.example");
}

#[test]
fn token_recipes_follow_each_service() {
    let fx = fixture();
    let plan = fx
        .compile(&config(
            "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"\ntoken_ttl = \"10m\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    match &plan.destinations[0].token {
        Some(TokenSpec::Sas {
            resource_uri,
            key_is_base64,
            key_name,
            ttl,
            ..
        }) => {
            assert_eq!(
                resource_uri, "myhub.azure-devices.net",
                "a policy key signs for the hub"
            );
            assert!(key_is_base64);
            assert_eq!(key_name.as_deref(), Some("iothubowner"));
            assert_eq!(ttl.as_secs(), 600);
        }
        other => panic!("{other:?}"),
    }
    let plan = fx
        .compile(&config(
            "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ndevice_id = \"meter-7\"\ncredential = \"hub-device\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    match &plan.destinations[0].token {
        Some(TokenSpec::Sas {
            resource_uri,
            key_name,
            ..
        }) => {
            assert_eq!(resource_uri, "myhub.azure-devices.net/devices/meter-7");
            assert_eq!(key_name, &None);
        }
        other => panic!("{other:?}"),
    }
    let plan = fx
        .compile(&config(
            "adapter = \"azure-event-hubs\"\nnamespace = \"ns\"\nhub = \"telemetry\"\ncredential = \"hub-policy\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    match &plan.destinations[0].token {
        Some(TokenSpec::Sas {
            resource_uri,
            key_is_base64,
            ..
        }) => {
            assert_eq!(resource_uri, "https://ns.servicebus.windows.net/telemetry");
            assert!(!key_is_base64, "Event Hubs keys are used as their text");
        }
        other => panic!("{other:?}"),
    }
    let plan = fx
        .compile(&config(
            "adapter = \"gcp-pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredential = \"gcp\"\ntoken_uri = \"https://sink.test/token\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    match &plan.destinations[0].token {
        Some(TokenSpec::GoogleOauth2 {
            token_uri, scope, ..
        }) => {
            assert_eq!(token_uri, "https://sink.test/token");
            assert_eq!(scope, "https://www.googleapis.com/auth/pubsub");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn adapter_settings_and_defaults() {
    let fx = fixture();
    let plan = fx
        .compile(&config(
            "adapter = \"aws-lambda\"\nregion = \"eu-west-1\"\nfunction = \"ingest\"\nqualifier = \"live\"\ninvocation = \"event\"\ncredential = \"aws\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let Adapter::AwsLambda(l) = &plan.destinations[0].adapter else {
        panic!()
    };
    assert_eq!(l.invocation, LambdaInvocation::Event);
    assert_eq!(l.qualifier.as_deref(), Some("live"));
    let plan = fx
        .compile(&config(
            "adapter = \"aws-iot-core\"\nendpoint = \"sink.test:443\"\ncredential = \"aws\"\nregion = \"eu-west-1\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let Adapter::AwsIotCore(a) = &plan.destinations[0].adapter else {
        panic!()
    };
    assert!(matches!(a.auth, AwsIotAuth::SigV4 { .. }));
    assert_eq!(a.topic.as_str(), "{topic}");
    let plan = fx
        .compile(&config(
            "adapter = \"things-cloud\"\nendpoint = \"sink.test:443\"\ntenant = \"t1\"\ncredential = \"c8y\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let Adapter::ThingsCloud(t) = &plan.destinations[0].adapter else {
        panic!()
    };
    assert_eq!(t.kind, ThingsCloudKind::Measurement);
    assert_eq!(t.source_id.as_str(), "{tag.c8y_id}");
    // `{tenant}/{user}:{password}` = "t1/gw:s3cret-pass".
    assert_eq!(&t.authorization.0[..], b"Basic dDEvZ3c6czNjcmV0LXBhc3M=");
    let plan = fx
        .compile(&config(
            "adapter = \"gcp-pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredential = \"gcp\"\nbatch = { max_messages = 500, max_bytes = \"2MiB\", linger = \"20ms\" }",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = plan.destinations[0].adapter.batch().expect("batch");
    assert_eq!(
        (
            batch.max_messages,
            batch.max_bytes,
            batch.linger.as_millis()
        ),
        (500, 2 << 20, 20)
    );
}

#[test]
fn each_refused_combination_is_reported_at_its_path() {
    let fx = fixture();
    let cases = [
        ("adapter = \"gcp-iot-core\"\nendpoint = \"sink.test:443\"", "destination[0].adapter", "gcp-pubsub"),
        ("adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"aws\"", "destination[0].credential", "takes \"azure-sas\""),
        ("adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-device\"", "destination[0].device_id", "device key"),
        ("adapter = \"azure-iot-hub\"\ncredential = \"hub-policy\"", "destination[0].endpoint", "hub"),
        ("adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"\nregion = \"eu-west-1\"", "destination[0].region", "not a key of adapter \"azure-iot-hub\""),
        ("adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"\ntoken_ttl = \"1s\"", "destination[0].token_ttl", "between"),
        ("adapter = \"azure-event-hubs\"\nnamespace = \"ns\"\nhub = \"h\"\ncredential = \"hub-device\"", "destination[0].credential", "key_name"),
        ("adapter = \"azure-event-hubs\"\nnamespace = \"ns\"\nhub = \"h\"\ncredential = \"hub-policy\"\nbatch = { max_messages = 20000 }", "destination[0].batch.max_messages", "between 1 and 10000"),
        ("adapter = \"gcp-pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredential = \"gcp\"\ntoken_ttl = \"2h\"", "destination[0].token_ttl", "1h"),
        ("adapter = \"gcp-pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredential = \"gcp\"\nbatch = { linger = \"2s\" }", "destination[0].batch.linger", "at most"),
        ("adapter = \"gcp-pubsub\"\nproject = \"p\"\ncredential = \"gcp\"", "destination[0].topic", "required"),
        ("adapter = \"aws-lambda\"\nregion = \"eu-west-1\"\nfunction = \"f\"\ncredential = \"aws\"\ninvocation = \"sync\"", "destination[0].invocation", "request-response"),
        ("adapter = \"aws-lambda\"\nregion = \"eu-west-1\"\nfunction = \"f\"", "destination[0].credential", "aws-keys"),
        ("adapter = \"aws-iot-core\"\nendpoint = \"sink.test:443\"\ncredential = \"aws\"", "destination[0].region", "SigV4"),
        ("adapter = \"aws-iot-core\"\ncredential = \"client-cert\"", "destination[0].endpoint", "describe-endpoint"),
        ("adapter = \"things-cloud\"\nendpoint = \"sink.test:443\"\ntenant = \"t1\"\ncredential = \"c8y\"\nkind = \"alarm\"", "destination[0].kind", "measurement"),
        ("adapter = \"things-cloud\"\nendpoint = \"sink.test:443\"\ntenant = \"t1\"\ncredential = \"c8y\"\nbase_path = \"/x\"", "destination[0].base_path", "only for adapter \"https\""),
        ("adapter = \"https\"\nendpoint = \"sink.test:443\"\ncredential = \"aws\"", "destination[0].credential", "\"x509\" or \"basic\" or \"bearer\""),
    ];
    for (destination, path, needle) in cases {
        let error = fx.errors(&config(destination));
        assert_single(&error, path, needle);
    }
}

#[test]
fn credential_kinds_check_their_own_keys() {
    let fx = fixture();
    let base = config("adapter = \"https\"\nendpoint = \"sink.test:443\"");
    let cases = [
        ("kind = \"aws-keys\"\naccess_key_id = \"AKIDEXAMPLE\"", "kind = \"aws-keys\"\naccess_key_id = \"AKIDEXAMPLE\"\nusername = \"x\"", "credential[0].username", "not a key of kind \"aws-keys\""),
        ("access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = { file = \"secrets/broker.pass\" }", "access_key_id = \"AKIDEXAMPLE\"", "credential[0].secret_access_key", "required"),
        ("access_key_id = \"AKIDEXAMPLE\"", "access_key_id = \"AKID EXAMPLE\"", "credential[0].access_key_id", "visible ASCII"),
        ("file = \"sa.json\"", "file = \"certs/notes.txt\"", "credential[3].file", "service-account JSON"),
        ("username = \"gw\"", "username = \"g:w\"", "credential[4].username", "':'"),
        ("kind = \"aws-keys\"", "kind = \"sigv4\"", "credential[0].kind", "\"gcp-service-account\""),
    ];
    for (from, to, path, needle) in cases {
        let error = fx.errors(&super::edit(&base, from, to));
        assert_single(&error, path, needle);
    }
}

#[test]
fn an_inline_secret_is_accepted_with_a_warning_naming_its_key_not_its_value() {
    let fx = fixture();
    let text = super::edit(
        &config("adapter = \"https\"\nendpoint = \"sink.test:443\""),
        "secret_access_key = { file = \"secrets/broker.pass\" }",
        "secret_access_key = \"inline-SECRET-value-9\"",
    );
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].starts_with("credential[0].secret_access_key: "),
        "{:?}",
        plan.warnings
    );
    assert!(!plan.warnings[0].contains("inline-SECRET-value-9"));
    assert!(
        !format!("{plan:?}").contains("inline-SECRET-value-9"),
        "Debug of the plan shows no secret"
    );
}

/// `config(destination)` with the listener speaking MQTT and the route an MQTT route.
fn mqtt_config(destination: &str) -> String {
    config(destination)
        .replace(
            "protocol = \"http\"",
            "protocol = \"mqtt\"\nunknown = \"reject\"",
        )
        .replace("path = \"/\", ", "")
}

const HUB_MQTT: &str = "adapter = \"azure-iot-hub\"\nhub = \"myhub\"\ncredential = \"hub-policy\"";

#[test]
fn azure_iot_hub_with_an_mqtt_table_speaks_mqtt_on_8883_in_session_mode() {
    let fx = fixture();
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{HUB_MQTT}\n[destination.mqtt]\nmode = \"session\""
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.endpoint, "myhub.azure-devices.net:8883");
    assert_eq!(d.adapter.kind(), AdapterKind::AzureIotHub);
    let Adapter::AzureIotHubMqtt(a) = &d.adapter else {
        panic!("{:?}", d.adapter)
    };
    assert_eq!(&a.c2d_topic[..], b"devicebound");
    assert_eq!(
        &a.twin_topic[..],
        b"$iothub/twin",
        "IoT Hub's own topics by default"
    );
    assert_eq!(&a.methods_topic[..], b"$iothub/methods");
    let m = d.mqtt().expect("session settings");
    assert_eq!(m.mode, crate::policy::MqttMode::Session);
    assert_eq!(m.version, crate::policy::MqttUpstreamVersion::V311);
    assert_eq!(m.client_id.as_str(), "{imsi}");
    assert_eq!(
        m.username.as_ref().map(|u| u.as_str()),
        Some("myhub.azure-devices.net/{imsi}/?api-version=2021-04-12")
    );
    assert!(m.password.is_none(), "the SAS token is the password");
    assert!(matches!(d.token, Some(TokenSpec::Sas { .. })));
    assert!(d.tls.alpn_protocols.is_empty(), "no ALPN on 8883");

    // An overridden endpoint keeps the hub's name for TLS; c2d_topic is taken.
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{HUB_MQTT}\nendpoint = \"sink.test:8443\"\n[destination.mqtt]\nmode = \"session\"\nc2d_topic = \"c2d/in\"\ntwin_topic = \"twin\"\nmethods_topic = \"c2d/methods\""
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(
        d.server_name,
        rustls::pki_types::ServerName::try_from("myhub.azure-devices.net").unwrap()
    );
    let Adapter::AzureIotHubMqtt(a) = &d.adapter else {
        panic!("{:?}", d.adapter)
    };
    assert_eq!(&a.c2d_topic[..], b"c2d/in");
    assert_eq!(&a.twin_topic[..], b"twin");
    assert_eq!(&a.methods_topic[..], b"c2d/methods");
}

#[test]
fn azure_iot_hub_over_mqtt_refuses_aggregate_mode_and_the_keys_it_sets() {
    let fx = fixture();
    let cases = [
        (
            "mode = \"aggregate\"",
            "destination[0].mqtt.mode",
            "an IoT Hub MQTT connection is one device: use session mode",
        ),
        (
            "mode = \"session\"\nusername = \"u\"",
            "destination[0].mqtt.username",
            "set by adapter \"azure-iot-hub\"",
        ),
        (
            "mode = \"session\"\npassword_file = \"secrets/broker.pass\"",
            "destination[0].mqtt.password_file",
            "set by adapter \"azure-iot-hub\"",
        ),
        (
            "mode = \"session\"\ntopic = \"x/{topic}\"",
            "destination[0].mqtt.topic",
            "set by adapter \"azure-iot-hub\"",
        ),
        (
            "mode = \"session\"\npass_through_credentials = true",
            "destination[0].mqtt.pass_through_credentials",
            "set by adapter \"azure-iot-hub\"",
        ),
        (
            "mode = \"session\"\nc2d_topic = \"c2d/#\"",
            "destination[0].mqtt.c2d_topic",
            "wildcards",
        ),
        (
            "mode = \"session\"\ntwin_topic = \"twin/\"",
            "destination[0].mqtt.twin_topic",
            "trailing '/'",
        ),
        (
            "mode = \"session\"\nmethods_topic = \"m/+\"",
            "destination[0].mqtt.methods_topic",
            "wildcards",
        ),
        (
            "mode = \"session\"\ntwin_topic = \"hub\"\nmethods_topic = \"hub/methods\"",
            "destination[0].mqtt.methods_topic",
            "overlaps twin_topic \"hub\"",
        ),
        (
            "mode = \"session\"\ntwin_topic = \"devicebound\"",
            "destination[0].mqtt.twin_topic",
            "overlaps c2d_topic \"devicebound\"",
        ),
        (
            "mode = \"session\"\nc2d_topic = \"dev/c2d\"\nmethods_topic = \"dev\"",
            "destination[0].mqtt.methods_topic",
            "overlaps c2d_topic",
        ),
    ];
    for (table, path, needle) in cases {
        let err = fx
            .compile(&mqtt_config(&format!(
                "{HUB_MQTT}\n[destination.mqtt]\n{table}"
            )))
            .expect_err(table);
        assert_single(&err, path, needle);
    }
    // An HTTP listener cannot route to the MQTT form, nor an mqtts destination take c2d_topic.
    let err = fx
        .compile(&config(&format!(
            "{HUB_MQTT}\n[destination.mqtt]\nmode = \"session\""
        )))
        .expect_err("http route");
    assert_single(
        &err,
        "group[0].routes[0].destination",
        "is azure-iot-hub over MQTT",
    );
}

const AWS_MQTT: &str =
    "adapter = \"aws-iot-core\"\nendpoint = \"127.0.0.1:8883\"\ncredential = \"client-cert\"";

#[test]
fn aws_iot_core_with_an_mqtt_table_speaks_mqtt_with_mutual_tls() {
    let fx = fixture();
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{AWS_MQTT}\n[destination.mqtt]\nmode = \"session\""
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.adapter.kind(), AdapterKind::AwsIotCore);
    assert!(d.adapter.is_mqtt());
    let Adapter::AwsIotCoreMqtt(a) = &d.adapter else {
        panic!("{:?}", d.adapter)
    };
    assert_eq!(a.thing_name.as_str(), "{imsi}", "thing name = client id");
    assert!(a.thing_topics);
    let m = d.mqtt().expect("session settings");
    assert_eq!(m.mode, crate::policy::MqttMode::Session);
    assert_eq!(m.version, crate::policy::MqttUpstreamVersion::SameAsDevice);
    assert_eq!(m.client_id.as_str(), "{imsi}");
    assert_eq!(m.topic.as_str(), "{topic}");
    assert!(m.username.is_none() && m.password.is_none());
    assert!(d.token.is_none(), "the certificate authenticates");
    assert!(d.tls.alpn_protocols.is_empty(), "no ALPN on 8883");

    // Port 443: ALPN x-amzn-mqtt-ca offered; templates and version taken.
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{}\n[destination.mqtt]\nmode = \"session\"\nversion = \"5\"\n\
             client_id = \"sim-{{imsi}}\"\nthing_name = \"meter-{{imsi}}\"\n\
             topic = \"dt/{{imsi}}/{{topic}}\"",
            AWS_MQTT.replace(":8883", ":443")
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.tls.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
    let Adapter::AwsIotCoreMqtt(a) = &d.adapter else {
        panic!("{:?}", d.adapter)
    };
    assert_eq!(a.thing_name.as_str(), "meter-{imsi}");
    assert_eq!(a.mqtt.client_id.as_str(), "sim-{imsi}");
    assert_eq!(a.mqtt.topic.as_str(), "dt/{imsi}/{topic}");
    assert_eq!(a.mqtt.version, crate::policy::MqttUpstreamVersion::V5);

    // Another port (a private endpoint, a test front) takes the ALPN as written.
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{}\nalpn = [\"x-amzn-mqtt-ca\"]\n[destination.mqtt]\nmode = \"session\"",
            AWS_MQTT.replace(":8883", ":9443")
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.destinations[0].tls.alpn_protocols,
        vec![b"x-amzn-mqtt-ca".to_vec()]
    );
}

#[test]
fn aws_iot_core_over_mqtt_explains_every_refused_combination() {
    let fx = fixture();
    let session = "[destination.mqtt]\nmode = \"session\"";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("adapter = \"aws-iot-core\"\nendpoint = \"127.0.0.1:8883\"\n{session}"),
            "destination[0].credential",
            "required for adapter \"aws-iot-core\" over MQTT: the name of an \"x509\"",
        ),
        (
            format!(
                "adapter = \"aws-iot-core\"\nendpoint = \"127.0.0.1:8883\"\ncredential = \"aws\"\n\
                 {session}"
            ),
            "destination[0].credential",
            "is not of kind \"x509\"",
        ),
        (
            format!("{AWS_MQTT}\ntopic = \"t/{{topic}}\"\n{session}"),
            "destination[0].topic",
            "the topic template is mqtt.topic",
        ),
        (
            format!("{AWS_MQTT}\n[destination.mqtt]\nmode = \"shared\""),
            "destination[0].mqtt.mode",
            "takes \"session\" (every SIM its own thing) or \"aggregate\"",
        ),
        (
            format!("{AWS_MQTT}\n{session}\nmax_publish_rate = 10"),
            "destination[0].mqtt.max_publish_rate",
            "only for mode \"aggregate\": in session mode every SIM has its own connection",
        ),
        (
            format!("{AWS_MQTT}\n{session}\nconnections_per_shard = 2"),
            "destination[0].mqtt.connections_per_shard",
            "only for mode \"aggregate\"",
        ),
        (
            format!("{AWS_MQTT}\n{session}\nusername = \"u\""),
            "destination[0].mqtt.username",
            "the gateway's certificate (credential) authenticates",
        ),
        (
            format!("{AWS_MQTT}\n{session}\ntopic = \"$aws/things/{{imsi}}/{{topic}}\""),
            "destination[0].mqtt.topic",
            "writes into AWS's reserved topics",
        ),
        (
            format!("{AWS_MQTT}\n{session}\ntopic = \"a/b/c/d/e/f/g/h/{{topic}}\""),
            "destination[0].mqtt.topic",
            "its own text has 8 slashes; AWS IoT Core takes at most 7",
        ),
        (
            format!(
                "{AWS_MQTT}\n{session}\nclient_id = \"{}{{imsi}}\"",
                "x".repeat(129)
            ),
            "destination[0].mqtt.client_id",
            "AWS IoT Core takes client ids up to 128 bytes",
        ),
        (
            format!("{AWS_MQTT}\n{session}\nthing_name = \"a/{{imsi}}\""),
            "destination[0].mqtt.thing_name",
            "cannot be a thing name",
        ),
        (
            format!("{AWS_MQTT}\n{session}\nthing_name = \"t-{{imsi}}\"\nthing_topics = false"),
            "destination[0].mqtt.thing_name",
            "only with thing_topics = true",
        ),
        (
            format!(
                "{}\nalpn = []\n{session}",
                AWS_MQTT.replace(":8883", ":443")
            ),
            "destination[0].alpn",
            "port 443 takes MQTT with mutual TLS only with ALPN \"x-amzn-mqtt-ca\"",
        ),
        (
            format!("{AWS_MQTT}\nalpn = [\"x-amzn-mqtt-ca\"]\n{session}"),
            "destination[0].alpn",
            "port 8883 takes MQTT without ALPN",
        ),
        (
            format!("{AWS_MQTT}\nalpn = [\"x-amzn-http-ca\"]\n{session}"),
            "destination[0].alpn[0]",
            "\"x-amzn-http-ca\" is its HTTPS",
        ),
    ];
    for (destination, path, needle) in cases {
        let err = fx
            .compile(&mqtt_config(&destination))
            .expect_err(&destination);
        assert_single(&err, path, needle);
    }
    // thing_name and thing_topics belong to aws-iot-core.
    let err = fx
        .compile(&mqtt_config(
            "adapter = \"mqtts\"\nendpoint = \"127.0.0.1:8883\"\n[destination.mqtt]\n\
             mode = \"session\"\nthing_topics = true",
        ))
        .expect_err("mqtts");
    assert_single(
        &err,
        "destination[0].mqtt.thing_topics",
        "only for adapter \"aws-iot-core\"",
    );
}

#[test]
fn an_aws_thing_name_naming_a_field_some_sim_lacks_is_refused_at_its_path() {
    let fx = fixture();
    let text = format!(
        "{}\n[[sim]]\nimsi = \"001010000000002\"\ngroup = \"default\"\n",
        mqtt_config(&format!(
            "{AWS_MQTT}\n[destination.mqtt]\nmode = \"session\"\nthing_name = \"t-{{imei}}\""
        ))
    );
    let err = fx.compile(&text).expect_err("a SIM without an IMEI");
    assert_single(
        &err,
        "destination[0].mqtt.thing_name",
        "uses {imei}, which 1 SIM(s) of group \"default\" lack",
    );
}

const AWS_AGGREGATE: &str = "[destination.mqtt]\nmode = \"aggregate\"";

#[test]
fn aws_iot_core_over_mqtt_in_aggregate_mode_shares_links_paced_at_awss_limit() {
    let fx = fixture();
    let plan = fx
        .compile(&mqtt_config(&format!("{AWS_MQTT}\n{AWS_AGGREGATE}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.adapter.kind(), AdapterKind::AwsIotCore);
    let Adapter::AwsIotCoreMqtt(a) = &d.adapter else {
        panic!("{:?}", d.adapter)
    };
    assert!(!a.thing_topics, "no thing of its own in aggregate mode");
    let m = d.mqtt().expect("mqtt settings");
    assert_eq!(m.mode, crate::policy::MqttMode::Aggregate);
    assert_eq!(m.client_id.as_str(), "simgate-{shard}-{conn}");
    assert_eq!(m.topic.as_str(), "devices/{client_id}/{topic}");
    assert_eq!(m.version, crate::policy::MqttUpstreamVersion::V311);
    assert_eq!(
        m.max_publish_rate,
        Some(crate::policy::AWS_IOT_CORE_MAX_PUBLISH_RATE),
        "AWS's 100 per second per connection by default"
    );
    assert_eq!(m.max_publish_rate.map(|r| r.get()), Some(100));
    assert_eq!(d.pool.warm, 0, "the links are the connections");
    assert!(d.tls.alpn_protocols.is_empty(), "no ALPN on 8883");

    // The aggregate keys as for mqtts; a rate below AWS's; AWS's keep-alive bounds included.
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{}\n{AWS_AGGREGATE}\nconnections_per_shard = 2\nmax_inflight = 50\n\
             linger = \"5ms\"\naccept_while_down = false\ndown_after = \"10s\"\n\
             max_publish_rate = 20\nkeep_alive = \"30s\"\nthing_topics = false\n\
             client_id = \"gw1-{{shard}}-{{conn}}\"\ntopic = \"$aws/rules/ingest/{{imsi}}/{{topic}}\"",
            AWS_MQTT.replace(":8883", ":443")
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.tls.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
    let m = d.mqtt().expect("mqtt settings");
    assert_eq!(m.connections_per_shard, 2);
    assert_eq!(m.max_inflight, 50);
    assert_eq!(m.max_publish_rate.map(|r| r.get()), Some(20));
    assert_eq!(m.keep_alive, std::time::Duration::from_secs(30));
    assert_eq!(m.client_id.as_str(), "gw1-{shard}-{conn}");
    let plan = fx
        .compile(&mqtt_config(&format!(
            "{AWS_MQTT}\n{AWS_AGGREGATE}\nkeep_alive = \"1200s\"\nmax_publish_rate = 100"
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.destinations[0].mqtt().map(|m| m.keep_alive.as_secs()),
        Some(1200)
    );
}

#[test]
fn aws_iot_core_over_mqtt_in_aggregate_mode_explains_every_refused_combination() {
    let fx = fixture();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nmax_publish_rate = 101"),
            "destination[0].mqtt.max_publish_rate",
            "101 is over AWS IoT Core's limit of 100 PUBLISH requests per second per connection",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nkeep_alive = \"29s\""),
            "destination[0].mqtt.keep_alive",
            "29s is outside AWS IoT Core's keep-alive range of 30s to 1200s",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nkeep_alive = \"1201s\""),
            "destination[0].mqtt.keep_alive",
            "1201s is outside AWS IoT Core's keep-alive range",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nthing_topics = true"),
            "destination[0].mqtt.thing_topics",
            "Device Shadow and Jobs need session mode",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nthing_name = \"t\""),
            "destination[0].mqtt.thing_name",
            "only for mode \"session\"",
        ),
        (
            format!(
                "{AWS_MQTT}\n{AWS_AGGREGATE}\nclient_id = \"{}-{{shard}}-{{conn}}\"",
                "x".repeat(125)
            ),
            "destination[0].mqtt.client_id",
            "the last link's client id is",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nclient_id = \"{{imsi}}-{{shard}}\""),
            "destination[0].mqtt.client_id",
            "placeholder {imsi} is not allowed in mode \"aggregate\"",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nversion = \"device\""),
            "destination[0].mqtt.version",
            "\"device\" is only for mode \"session\"",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\nusername = \"u\""),
            "destination[0].mqtt.username",
            "the gateway's certificate (credential) authenticates",
        ),
        (
            format!("{AWS_MQTT}\n{AWS_AGGREGATE}\ntopic = \"$aws/things/x/{{topic}}\""),
            "destination[0].mqtt.topic",
            "writes into AWS's reserved topics",
        ),
        (
            format!(
                "{AWS_MQTT}\n{AWS_AGGREGATE}\ntopic = \"a/b/c/d/e/f/g/{{client_id}}/{{topic}}\""
            ),
            "destination[0].mqtt.topic",
            "its own text has 8 slashes; AWS IoT Core takes at most 7",
        ),
        (
            format!(
                "adapter = \"aws-iot-core\"\nendpoint = \"127.0.0.1:8883\"\ncredential = \"aws\"\n\
                 {AWS_AGGREGATE}"
            ),
            "destination[0].credential",
            "is not of kind \"x509\"",
        ),
        (
            format!("{AWS_MQTT}\nalpn = [\"x-amzn-mqtt-ca\"]\n{AWS_AGGREGATE}"),
            "destination[0].alpn",
            "port 8883 takes MQTT without ALPN",
        ),
    ];
    for (destination, path, needle) in cases {
        let err = fx
            .compile(&mqtt_config(&destination))
            .expect_err(&destination);
        assert_single(&err, path, needle);
    }
}
