//! `GET /admin/config` (issue #14): the effective configuration, rendered from the served plan,
//! with every secret redacted. A real `simgate run` whose config plants a distinct marker in
//! every secret-bearing key — credentials of every kind (x509 key file, aws-keys secret and
//! session token, azure-sas key, gcp-service-account JSON, basic password, bearer token written
//! inline so that a load warning names it too), an
//! mqtts `password_file`, a group's `signing_secret`, `radius.secret` and `gateway.admin_token`
//! — answers with none of them (nor the client key's PEM body), while the non-secret fields are
//! there; a reload shows the new plan; the admin token is required.

mod common;

use common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "SECRETMARK-admin-token-0123456789";
const AWS_SECRET: &str = "SECRETMARK-aws-secret-access-key";
const AWS_SESSION: &str = "SECRETMARK-aws-session-token";
const SAS_KEY: &str = "SECRETMARK-eventhubs-sas-key=";
const GCP_KEY_ID: &str = "SECRETMARK-gcp-private-key-id";
const BASIC_PASSWORD: &str = "SECRETMARK-basic-password";
const BEARER_TOKEN: &str = "SECRETMARK-bearer-token";
const MQTT_PASSWORD: &str = "SECRETMARK-mqtt-password";
const SIGNING_SECRET: &str = "SECRETMARK-group-signing-secret-0123456789";
const RADIUS_SECRET: &str = "SECRETMARK-radius-secret";

const SERVICE_ACCOUNT: &str =
    include_str!("../src/adapters/auth/testdata/google/test-service-account.json");

fn admin_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let resp = raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    (resp.status, resp.body_text())
}

fn config(world: &World, extra_group: &str) -> String {
    let sink = world.sink.addr();
    let ca = world.pki.ca_pem.display();
    let at_sink = format!("endpoint = \"{sink}\"\nca = \"{ca}\"\nserver_name = \"localhost\"");
    format!(
        r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"
admin_token = {{ file = "admin.token" }}

[radius]
bind = "127.0.0.1:0"
secret = {{ file = "radius.secret" }}

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "127.0.0.1:0"

[[credential]]
name = "client-cert"
kind = "x509"
cert = "client.crt"
key = "client.key"

[[credential]]
name = "aws"
kind = "aws-keys"
access_key_id = "AKIDPUBLICEXAMPLE01"
secret_access_key = {{ file = "aws.secret" }}
session_token = {{ file = "aws.session" }}

[[credential]]
name = "eh"
kind = "azure-sas"
key_name = "send-policy"
key = {{ file = "sas.key" }}

[[credential]]
name = "gcp"
kind = "gcp-service-account"
file = "sa.json"

[[credential]]
name = "c8y"
kind = "basic"
username = "device-gw"
password = {{ file = "basic.password" }}

[[credential]]
name = "bearer"
kind = "bearer"
token = "{BEARER_TOKEN}"

[[destination]]
name = "sink"
adapter = "https"
{at_sink}
credential = "bearer"

[[destination]]
name = "mtls-sink"
adapter = "https"
{at_sink}
credential = "client-cert"

[[destination]]
name = "lambda"
adapter = "aws-lambda"
{at_sink}
region = "eu-west-1"
function = "public-function-name"
invocation = "event"
credential = "aws"

[[destination]]
name = "eh"
adapter = "azure-event-hubs"
{at_sink}
namespace = "public-namespace"
hub = "public-hub"
credential = "eh"

[[destination]]
name = "ps"
adapter = "gcp-pubsub"
{at_sink}
project = "public-project"
topic = "public-topic"
credential = "gcp"
token_uri = "https://{sink}/token"

[[destination]]
name = "c8y"
adapter = "things-cloud"
{at_sink}
tenant = "public-tenant"
kind = "measurement"
credential = "c8y"

[[destination]]
name = "broker"
adapter = "mqtts"
{at_sink}
credential = "client-cert"
[destination.mqtt]
mode = "aggregate"
version = "5"
username = "public-mqtt-user"
password_file = "mqtt.password"
topic = "fleet/{{client_id}}/{{topic}}"

[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }}, {{ listener = "mqtt", destination = "broker" }} ]

[[group]]
name = "signed"
signing_secret = {{ file = "signing.secret" }}
routes = [
  {{ listener = "http", path = "/lambda", destination = "lambda" }},
  {{ listener = "http", path = "/eh", destination = "eh" }},
  {{ listener = "http", path = "/ps", destination = "ps" }},
  {{ listener = "http", path = "/c8y", destination = "c8y" }},
  {{ listener = "http", path = "/", destination = "mtls-sink" }},
]
{extra_group}

[[sim]]
imsi = "001010000000002"
ip = "127.0.0.2"
group = "signed"

[[sim]]
imsi = "001010000000003"
ip = "127.0.0.3"
group = "default"
"#
    )
}

#[test]
fn admin_config_shows_the_effective_config_with_every_secret_redacted() {
    let world = World::new();
    let dir = world.dir.path();
    let client = world
        .pki
        .client_cert("gateway-client")
        .expect("client cert");
    std::fs::copy(&client.cert, dir.join("client.crt")).expect("cert");
    std::fs::copy(&client.key, dir.join("client.key")).expect("key");
    let key_pem = std::fs::read_to_string(dir.join("client.key")).expect("key text");
    for (file, value) in [
        ("admin.token", ADMIN_TOKEN),
        ("radius.secret", RADIUS_SECRET),
        ("aws.secret", AWS_SECRET),
        ("aws.session", AWS_SESSION),
        ("sas.key", SAS_KEY),
        ("basic.password", BASIC_PASSWORD),
        ("mqtt.password", MQTT_PASSWORD),
        ("signing.secret", SIGNING_SECRET),
    ] {
        std::fs::write(dir.join(file), format!("{value}\n")).expect("secret file");
    }
    let sa = SERVICE_ACCOUNT.replace(
        "\"private_key_id\": \"0123456789abcdef0123456789abcdef01234567\"",
        &format!("\"private_key_id\": \"{GCP_KEY_ID}\""),
    );
    assert!(
        sa.contains(GCP_KEY_ID),
        "marker planted in the service-account JSON"
    );
    std::fs::write(dir.join("sa.json"), &sa).expect("sa.json");
    let sa_json: Value = serde_json::from_str(&sa).expect("service account JSON");
    let sa_key = sa_json["private_key"]
        .as_str()
        .expect("private_key")
        .to_owned();

    let gw = world.simgate(&config(&world, ""));
    let admin = gw.admin.expect("admin address");

    let (status, _) = admin_get(admin, "/admin/config", None);
    assert_eq!(status, 401);
    let (status, body) = admin_get(admin, "/admin/config", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");

    // No secret, in any form.
    for marker in [
        ADMIN_TOKEN,
        RADIUS_SECRET,
        AWS_SECRET,
        AWS_SESSION,
        SAS_KEY,
        GCP_KEY_ID,
        BASIC_PASSWORD,
        BEARER_TOKEN,
        MQTT_PASSWORD,
        SIGNING_SECRET,
        "SECRETMARK",
    ] {
        assert!(!body.contains(marker), "{marker} leaked: {body}");
    }
    for line in key_pem.lines().chain(sa_key.lines()) {
        if !line.starts_with("-----") && line.len() > 16 {
            assert!(!body.contains(line), "private key material leaked: {body}");
        }
    }
    // Things Cloud's Basic value and the bearer header are derived from secrets: neither is
    // shown, nor their base64.
    assert!(!body.contains("Bearer "), "{body}");
    assert!(!body.contains("Basic "), "{body}");

    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["gateway"]["admin_token"], "<redacted>");
    assert_eq!(v["gateway"]["shards"], 2);
    assert_eq!(v["gateway"]["default_group"], "default");
    assert_eq!(v["radius"]["secret"], "<redacted>");
    assert_eq!(v["sims"], 2, "a count, not the table");
    assert!(!body.contains("001010000000002"), "no SIM table: {body}");
    let listeners: Vec<&str> = v["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(listeners, ["http", "mqtt"]);
    let dest = |name: &str| -> Value {
        v["destinations"]
            .as_array()
            .expect("destinations")
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("destination {name}: {v:#}"))
    };
    let sink = dest("sink");
    assert_eq!(sink["adapter"], "https");
    assert_eq!(sink["settings"]["authorization"], "<redacted>");
    assert_eq!(sink["endpoint"], world.sink.addr().to_string());
    let lambda = dest("lambda");
    assert_eq!(lambda["adapter"], "aws-lambda");
    assert_eq!(lambda["settings"]["function"], "public-function-name");
    assert_eq!(
        lambda["settings"]["credential"]["access_key_id"],
        "AKIDPUBLICEXAMPLE01"
    );
    assert_eq!(
        lambda["settings"]["credential"]["secret_access_key"],
        "<redacted>"
    );
    assert_eq!(
        lambda["settings"]["credential"]["session_token"],
        "<redacted>"
    );
    let eh = dest("eh");
    assert_eq!(eh["settings"]["namespace"], "public-namespace");
    assert_eq!(eh["token"]["key"], "<redacted>");
    assert_eq!(eh["token"]["key_name"], "send-policy");
    let ps = dest("ps");
    assert_eq!(ps["settings"]["project"], "public-project");
    assert_eq!(ps["token"]["service_account"], "<redacted>");
    let c8y = dest("c8y");
    assert_eq!(c8y["settings"]["tenant"], "public-tenant");
    assert_eq!(c8y["settings"]["authorization"], "<redacted>");
    let broker = dest("broker");
    assert_eq!(broker["adapter"], "mqtts");
    assert_eq!(broker["settings"]["mqtt"]["mode"], "aggregate");
    assert_eq!(broker["settings"]["mqtt"]["username"], "public-mqtt-user");
    assert_eq!(broker["settings"]["mqtt"]["password"], "<redacted>");
    assert_eq!(
        broker["settings"]["mqtt"]["topic"],
        "fleet/{client_id}/{topic}"
    );
    let groups = v["groups"].as_array().expect("groups");
    let signed = groups
        .iter()
        .find(|g| g["name"] == "signed")
        .expect("group signed");
    assert_eq!(signed["signing_secret"], "<redacted>");
    assert_eq!(signed["http_routes"][0]["path"], "/lambda");
    assert_eq!(signed["http_routes"][0]["destination"], "lambda");
    assert_eq!(signed["http_routes"][0]["listener"], "http");
    let default = groups
        .iter()
        .find(|g| g["name"] == "default")
        .expect("group default");
    assert_eq!(default["signing_secret"], Value::Null);
    assert_eq!(default["mqtt_routes"][0]["destination"], "broker");
    // The bearer token is written inline: the load warning names its path, not its value.
    assert!(
        v["warnings"].as_array().expect("warnings").iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("credential[5].token"))),
        "{v:#}"
    );
    assert!(v["usage"]["interval_s"].is_number(), "{v:#}");
    assert!(v["probe"]["timeout_s"].is_number(), "{v:#}");

    // The answer follows the served plan: after a reload, the new group is there.
    std::fs::write(
        dir.join("simgate.toml"),
        config(
            &world,
            "[[group]]\nname = \"added\"\nroutes = [ { listener = \"http\", path = \"/\", destination = \"sink\" } ]\n",
        ),
    )
    .expect("new config");
    let resp = raw_exchange(
        admin,
        format!(
            "POST /-/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let (status, body) = admin_get(admin, "/admin/config", Some(ADMIN_TOKEN));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "added"),
        "{v:#}"
    );
    assert!(!body.contains("SECRETMARK"), "{body}");
}
