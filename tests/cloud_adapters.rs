//! Integration: devices (curl and raw sockets) → `simgate run` → the cloud adapters over HTTPS →
//! the Python contract sink (tests/python/cloud_sink.py), a real TLS server that verifies each
//! cloud's requests with the vendors' own libraries (botocore, azure-iot-device, azure-eventhub,
//! google-auth) and answers like the cloud. What a user would check: the message the cloud
//! accepted (topic/path with the SIM's IMSI, identity where the cloud carries it), the answer the
//! device got, cloud errors relayed and counted, refusals before sending, batching, and that no
//! secret leaks into logs, metrics, `simgate check` output or device answers.
//!
//! The token clouds (azure-iot-hub, azure-event-hubs, gcp-pubsub) need the control thread's
//! token refresher: those tests wait for `simgate_credential_token_expiry_seconds{destination}`
//! to turn positive (polling /metrics with a deadline) and fail naming it when it does not.
//!
//! Needs: python3 with `pip install botocore azure-iot-device azure-eventhub google-auth
//! cryptography` (scripts/test.sh installs them), and curl.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cloud_sink::CloudSink;
use common::*;
use serde_json::{json, Value};
use simgate::testkit::TestPki;

/// The SIM a curl device on 127.0.0.1 is.
const IMSI: &str = "440101234567890";
const IMEI: &str = "490154203237518";
const C8Y_ID: &str = "4711";

/// Planted secrets: recognisable, so a leak anywhere is found by a plain substring search.
const AWS_SECRET: &str = "SECRET-PLANTED-aws-wJalrXUtnFEMI/K7MDENG+bPxRfiCY";
/// Base64 text (IoT Hub keys are base64): 44 characters, 33 bytes, no padding.
const HUB_KEY: &str = "SECRETPLANTEDhubKey0123456789abcdefghijklmno";
/// Event Hubs keys are used as written.
const EH_KEY: &str = "SECRET-PLANTED-eh-key-0123456789=";
const C8Y_PASSWORD: &str = "SECRET-PLANTED-c8y-pw:with:colons";
const AWS_KEY_ID: &str = "AKIDPLANTEDEXAMPLE01";

/// How long a test waits for something simgate or the sink signals (token minted, message
/// accepted) before failing with what it saw.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The world: PKI, sink, credentials, simgate config.

struct Cloud {
    dir: tempfile::TempDir,
    sink: CloudSink,
}

/// SIMs for the batch tests: SIM `k` (1-based) is on 127.0.1.k with IMSI 44010000000000k.
fn batch_sim_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, k as u8))
}

fn batch_sim_imsi(k: usize) -> String {
    format!("4401000000{k:05}")
}

const BATCH_SIMS: usize = 50;

impl Cloud {
    fn new() -> Cloud {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path()).expect("pki");
        let sink = CloudSink::start(
            dir.path(),
            &pki,
            json!({
                "aws": {"access_key_id": AWS_KEY_ID, "secret_access_key": AWS_SECRET,
                        "session_token": null, "region": "eu-west-1"},
                "azure_iot_hub": {"hub": "myhub", "key": HUB_KEY, "key_name": "iothubowner"},
                "event_hubs": {"namespace": "ns", "hub": "telemetry", "key_name": "send",
                               "key": EH_KEY},
                "gcp": {"project": "p", "topic": "t", "token_ttl_s": 3600},
                "lambda": {"function": "fn", "region": "eu-west-1"},
                "things_cloud": {"tenant": "t123", "username": "device-gw",
                                 "password": C8Y_PASSWORD},
            }),
        );
        std::fs::write(dir.path().join("aws-secret.txt"), format!("{AWS_SECRET}\n"))
            .expect("aws secret");
        std::fs::write(dir.path().join("hub-key.txt"), HUB_KEY).expect("hub key");
        std::fs::write(dir.path().join("c8y-pw.txt"), C8Y_PASSWORD).expect("c8y pw");
        Cloud { dir, sink }
    }

    /// The config: every adapter, one route per destination (`/iot`, `/hub`, `/eh`, `/eh-batch`,
    /// `/ps`, `/ps-batch`, `/lambda`, `/lambda-event`, `/c8y`, `/c8y-event`), all pointed at the
    /// sink. `extra` is appended (TOML).
    fn config(&self, extra: &str) -> String {
        let sink = self.sink.addr();
        let ca = self.sink.ca.display();
        let sa = self.sink.service_account.display();
        let at_sink = format!("endpoint = \"{sink}\"\nca = \"{ca}\"\nserver_name = \"localhost\"");
        let mut sims = String::new();
        for k in 1..=BATCH_SIMS {
            sims.push_str(&format!(
                "[[sim]]\nimsi = \"{}\"\nip = \"{}\"\nimei = \"35000000000{k:04}\"\ngroup = \"default\"\ntags = {{ c8y_id = \"{}\" }}\n\n",
                batch_sim_imsi(k),
                batch_sim_ip(k),
                9000 + k
            ));
        }
        format!(
            r#"
[gateway]
shards = 2
admin = "127.0.0.1:0"

[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[credential]]
name = "aws"
kind = "aws-keys"
access_key_id = "{AWS_KEY_ID}"
secret_access_key = {{ file = "aws-secret.txt" }}

[[credential]]
name = "hub"
kind = "azure-sas"
key_name = "iothubowner"
key = {{ file = "hub-key.txt" }}

[[credential]]
name = "eh"
kind = "azure-sas"
key_name = "send"
key = {{ env = "EH_KEY" }}

[[credential]]
name = "gcp"
kind = "gcp-service-account"
file = "{sa}"

[[credential]]
name = "c8y"
kind = "basic"
username = "device-gw"
password = {{ file = "c8y-pw.txt" }}

[[destination]]
name = "iot"
adapter = "aws-iot-core"
{at_sink}
credential = "aws"
region = "eu-west-1"
topic = "sims/{{imsi}}/{{topic}}"
host_header = "abc-ats.iot.eu-west-1.amazonaws.com"

[[destination]]
name = "hub"
adapter = "azure-iot-hub"
{at_sink}
hub = "myhub"
device_id = "{{imsi}}"
credential = "hub"
token_ttl = "1h"

[[destination]]
name = "eh"
adapter = "azure-event-hubs"
{at_sink}
namespace = "ns"
hub = "telemetry"
partition_key = "{{imsi}}"
credential = "eh"

[[destination]]
name = "eh-batch"
adapter = "azure-event-hubs"
{at_sink}
namespace = "ns"
hub = "telemetry"
partition_key = "{{imsi}}"
credential = "eh"
batch = {{ max_messages = 100, max_bytes = "512KiB", linger = "1s" }}

[[destination]]
name = "ps"
adapter = "gcp-pubsub"
{at_sink}
project = "p"
topic = "t"
credential = "gcp"
token_uri = "https://{sink}/token"
ordering_key = "{{imsi}}"

[[destination]]
name = "ps-batch"
adapter = "gcp-pubsub"
{at_sink}
project = "p"
topic = "t"
credential = "gcp"
token_uri = "https://{sink}/token"
ordering_key = "{{imsi}}"
batch = {{ max_messages = 100, max_bytes = "512KiB", linger = "1s" }}

[[destination]]
name = "lambda"
adapter = "aws-lambda"
{at_sink}
region = "eu-west-1"
function = "fn"
qualifier = "live"
invocation = "request-response"
credential = "aws"

[[destination]]
name = "lambda-event"
adapter = "aws-lambda"
{at_sink}
region = "eu-west-1"
function = "fn"
invocation = "event"
credential = "aws"

[[destination]]
name = "c8y"
adapter = "things-cloud"
{at_sink}
tenant = "t123"
kind = "measurement"
source_id = "{{tag.c8y_id}}"
credential = "c8y"

[[destination]]
name = "c8y-event"
adapter = "things-cloud"
{at_sink}
tenant = "t123"
kind = "event"
credential = "c8y"

[[group]]
name = "default"
attach = ["imsi", "imei", "tags"]
routes = [
  {{ listener = "http", path = "/iot", destination = "iot" }},
  {{ listener = "http", path = "/hub", destination = "hub" }},
  {{ listener = "http", path = "/eh-batch", destination = "eh-batch" }},
  {{ listener = "http", path = "/eh", destination = "eh" }},
  {{ listener = "http", path = "/ps-batch", destination = "ps-batch" }},
  {{ listener = "http", path = "/ps", destination = "ps" }},
  {{ listener = "http", path = "/lambda-event", destination = "lambda-event" }},
  {{ listener = "http", path = "/lambda", destination = "lambda" }},
  {{ listener = "http", path = "/c8y-event", destination = "c8y-event" }},
  {{ listener = "http", path = "/c8y", destination = "c8y" }},
]

[[sim]]
imsi = "{IMSI}"
ip = "127.0.0.1"
imei = "{IMEI}"
msisdn = "819012345678"
name = "meter-1"
group = "default"
tags = {{ c8y_id = "{C8Y_ID}" }}

{sims}
{extra}
"#
        )
    }

    fn simgate(&self) -> Simgate {
        Simgate::start_with_env(
            self.dir.path(),
            &self.config(""),
            &[("EH_KEY", Path::new(EH_KEY))],
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Devices and metrics.

/// A curl device on 127.0.0.1 (the SIM `IMSI`) POSTs `body` to `path`; the response it got.
fn device_post(gw: &Simgate, dir: &Path, path: &str, body: &[u8], content_type: &str) -> Response {
    let file = tempfile::NamedTempFile::new_in(dir).expect("body file");
    std::fs::write(file.path(), body).expect("write body");
    let data = format!("@{}", file.path().display());
    let url = format!("http://{}{path}", gw.http);
    let ctype = format!("Content-Type: {content_type}");
    let out = Command::new("curl")
        .args(["-sS", "-i", "--data-binary", &data, "-H", &ctype, &url])
        .output()
        .expect("curl is required for these tests: apt-get install curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = parse_curl_response(&out.stdout);
    if resp.status >= 500 {
        // Shown only when the test fails: what simgate said about it.
        eprintln!(
            "{path} answered {}; simgate's log:\n{}",
            resp.status,
            tail(&gw.stderr(), 20)
        );
    }
    resp
}

/// `curl -i` output: skips interim (1xx) heads.
fn parse_curl_response(mut raw: &[u8]) -> Response {
    loop {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Response {
            status,
            headers,
            body: rest.to_vec(),
        };
    }
}

/// The value of the sample `series` (name with its labels, as exported) in /metrics.
fn metric(gw: &Simgate, series: &str) -> Option<f64> {
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    metric_in(&text, series)
}

fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn cloud_responses(gw: &Simgate, adapter: &str, status: &str) -> f64 {
    let series =
        format!("simgate_cloud_responses_total{{adapter=\"{adapter}\",status=\"{status}\"}}");
    metric(gw, &series)
        .unwrap_or_else(|| panic!("/metrics has no {series}:\n{}", gw.admin_get("/metrics").1))
}

/// Wait until the control thread has minted `destination`'s token: the signal is
/// `simgate_credential_token_expiry_seconds{destination}` > 0 on /metrics (polled).
fn wait_for_token(gw: &Simgate, sink: &CloudSink, destination: &str) {
    let series =
        format!("simgate_credential_token_expiry_seconds{{destination=\"{destination}\"}}");
    let deadline = Instant::now() + SIGNAL_DEADLINE;
    loop {
        if metric(gw, &series).is_some_and(|v| v > 0.0) {
            return;
        }
        if Instant::now() >= deadline {
            let (_, text) = gw.admin_get("/metrics");
            let tokens: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("credential_token"))
                .collect();
            panic!(
                "no token for destination {destination:?} within {SIGNAL_DEADLINE:?}: {series} \
                 never turned positive. The control-thread token refresher (branch `tokens`) \
                 mints it; token lines on /metrics: {tokens:?}\nsink stats: {}\nsink stderr:\n{}\n\
                 simgate stderr (tail):\n{}",
                sink.stats(),
                sink.stderr(),
                tail(&gw.stderr(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn body_of(entry: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(entry["body_b64"].as_str().expect("body_b64"))
        .expect("base64 body")
}

fn json_body(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("device body is not JSON ({e}): {}", resp.body_text()))
}

fn only_one(mut items: Vec<Value>, what: &str) -> Value {
    assert_eq!(
        items.len(),
        1,
        "{what}: expected exactly one accepted message: {items:?}"
    );
    items.remove(0)
}

// ---------------------------------------------------------------------------------------------
// 1. Each adapter end to end.

#[test]
fn aws_iot_core_publish_is_signed_and_goes_to_the_sims_topic() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/iot/temp",
        br#"{"t":21.5}"#,
        "application/json",
    );
    assert_eq!(resp.status, 200, "device got: {}", resp.body_text());
    let answer = json_body(&resp);
    assert_eq!(
        answer["message"], "OK",
        "AWS IoT's answer relayed: {answer}"
    );
    let got = only_one(cloud.sink.accepted("aws-iot-core"), "aws-iot-core");
    assert_eq!(got["properties"]["topic"], format!("sims/{IMSI}/iot/temp"));
    assert_eq!(got["properties"]["qos"], 1);
    assert_eq!(body_of(&got), br#"{"t":21.5}"#);
    assert_eq!(
        got["headers"]["host"],
        "abc-ats.iot.eu-west-1.amazonaws.com"
    );
    assert_eq!(got["headers"]["content-type"], "application/json");
    assert_eq!(cloud_responses(&gw, "aws-iot-core", "2xx"), 1.0);
}

#[test]
fn aws_lambda_request_response_relays_the_functions_answer_and_event_gets_202() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/lambda",
        br#"{"reading":7}"#,
        "application/json",
    );
    assert_eq!(resp.status, 200, "device got: {}", resp.body_text());
    let answer = json_body(&resp);
    assert_eq!(
        answer["echo"], r#"{"reading":7}"#,
        "the function's answer: {answer}"
    );
    assert_eq!(answer["client_context"]["custom"]["imsi"], IMSI);
    assert_eq!(resp.header("x-amz-executed-version"), Some("live"));

    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/lambda-event",
        br#"{"reading":8}"#,
        "application/json",
    );
    assert_eq!(resp.status, 202, "device got: {}", resp.body_text());

    let accepted = cloud.sink.accepted("aws-lambda");
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    let sync = &accepted[0]["properties"];
    assert_eq!(sync["function"], "fn");
    assert_eq!(sync["qualifier"], "live");
    assert_eq!(sync["invocation_type"], "RequestResponse");
    assert_eq!(sync["client_context"]["custom"]["imsi"], IMSI);
    assert_eq!(sync["client_context"]["custom"]["imei"], IMEI);
    assert_eq!(sync["client_context"]["custom"]["tag.c8y_id"], C8Y_ID);
    let event = &accepted[1]["properties"];
    assert_eq!(event["invocation_type"], "Event");
    assert_eq!(event["client_context"]["custom"]["imsi"], IMSI);
    assert_eq!(body_of(&accepted[1]), br#"{"reading":8}"#);
    assert_eq!(cloud_responses(&gw, "aws-lambda", "2xx"), 2.0);
}

#[test]
fn things_cloud_measurement_and_event_carry_the_sims_managed_object() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    // The device claims another object; the SIM's tag wins.
    let measurement = br#"{"type":"c8y_Temperature","c8y_Temperature":{"T":{"value":21.5,"unit":"C"}},"source":{"id":"999"}}"#;
    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/c8y",
        measurement,
        "application/json",
    );
    assert_eq!(resp.status, 201, "device got: {}", resp.body_text());
    let created = json_body(&resp);
    assert_eq!(created["source"]["id"], C8Y_ID, "{created}");
    assert!(created["id"].is_string(), "Cumulocity's object: {created}");

    let event = br#"{"type":"c8y_Boot","text":"booted"}"#;
    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/c8y-event",
        event,
        "application/json",
    );
    assert_eq!(resp.status, 201, "device got: {}", resp.body_text());

    let accepted = cloud.sink.accepted("things-cloud");
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert_eq!(accepted[0]["properties"]["kind"], "measurement");
    assert_eq!(accepted[0]["properties"]["source_id"], C8Y_ID);
    let sent: Value = serde_json::from_slice(&body_of(&accepted[0])).expect("json");
    assert_eq!(sent["c8y_Temperature"]["T"]["value"], 21.5);
    assert!(sent["time"].is_string(), "simgate adds the time: {sent}");
    assert_eq!(accepted[1]["properties"]["kind"], "event");
    assert_eq!(accepted[1]["properties"]["source_id"], C8Y_ID);
    assert_eq!(cloud_responses(&gw, "things-cloud", "2xx"), 2.0);
}

#[test]
fn azure_iot_hub_message_goes_to_the_sims_device_with_identity_properties() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    wait_for_token(&gw, &cloud.sink, "hub");
    let resp = device_post(
        &gw,
        cloud.dir.path(),
        "/hub/x",
        br#"{"t":1}"#,
        "application/json",
    );
    assert_eq!(resp.status, 204, "device got: {}", resp.body_text());
    let got = only_one(cloud.sink.accepted("azure-iot-hub"), "azure-iot-hub");
    assert_eq!(got["device_id"], IMSI);
    assert_eq!(got["properties"]["imsi"], IMSI, "iothub-app-imsi: {got}");
    assert_eq!(got["properties"]["imei"], IMEI);
    assert_eq!(got["properties"]["tag.c8y_id"], C8Y_ID);
    assert_eq!(body_of(&got), br#"{"t":1}"#);
    assert_eq!(cloud_responses(&gw, "azure-iot-hub", "2xx"), 1.0);
}

#[test]
fn azure_event_hubs_send_carries_the_partition_key_and_identity_properties() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    wait_for_token(&gw, &cloud.sink, "eh");
    let resp = device_post(&gw, cloud.dir.path(), "/eh", b"21.5", "text/plain");
    assert_eq!(resp.status, 201, "device got: {}", resp.body_text());
    let got = only_one(cloud.sink.accepted("azure-event-hubs"), "azure-event-hubs");
    assert_eq!(got["broker_properties"]["PartitionKey"], IMSI, "{got}");
    assert_eq!(got["properties"]["imsi"], IMSI, "custom properties: {got}");
    assert_eq!(got["properties"]["imei"], IMEI);
    assert_eq!(body_of(&got), b"21.5");
    assert_eq!(cloud_responses(&gw, "azure-event-hubs", "2xx"), 1.0);
}

#[test]
fn gcp_pubsub_publish_carries_attributes_and_ordering_key_and_answers_the_message_id() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    wait_for_token(&gw, &cloud.sink, "ps");
    let resp = device_post(&gw, cloud.dir.path(), "/ps", b"hello", "text/plain");
    assert_eq!(resp.status, 200, "device got: {}", resp.body_text());
    let answer = json_body(&resp);
    let got = only_one(cloud.sink.accepted("gcp-pubsub"), "gcp-pubsub");
    assert_eq!(answer["messageIds"], json!([got["message_id"]]), "{answer}");
    assert_eq!(got["attributes"]["imsi"], IMSI, "{got}");
    assert_eq!(got["attributes"]["imei"], IMEI);
    assert_eq!(got["attributes"]["content-type"], "text/plain");
    assert_eq!(got["ordering_key"], IMSI);
    assert_eq!(body_of(&got), b"hello");
    assert_eq!(cloud_responses(&gw, "gcp-pubsub", "2xx"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 2. Cloud errors reach the device, are counted, and nothing is reported delivered.

/// For each of 401, 403, 429 (with Retry-After), 500: the cloud answers it once; the device
/// sees it, the sink accepted nothing, /metrics counts it for `adapter`. Then one success.
fn cloud_errors_reach_the_device(
    cloud: &Cloud,
    gw: &Simgate,
    sink_cloud: &str,
    adapter: &str,
    path: &str,
    body: &[u8],
    ok_status: u16,
) {
    for (status, bucket, retry_after) in [
        (401, "401", None),
        (403, "403", None),
        (429, "429", Some(7)),
        (500, "5xx", None),
    ] {
        let before = cloud_responses(gw, adapter, bucket);
        cloud.sink.fail(sink_cloud, status, 1, retry_after);
        let resp = device_post(gw, cloud.dir.path(), path, body, "application/json");
        assert_eq!(
            resp.status,
            status,
            "{adapter}: the device sees the cloud's {status}: {}",
            resp.body_text()
        );
        if let Some(s) = retry_after {
            assert_eq!(
                resp.header("retry-after"),
                Some(s.to_string().as_str()),
                "{adapter}: Retry-After relayed: {:?}",
                resp.headers
            );
        }
        assert!(
            cloud.sink.accepted(sink_cloud).is_empty(),
            "{adapter}: nothing delivered after a {status}"
        );
        assert_eq!(
            cloud_responses(gw, adapter, bucket),
            before + 1.0,
            "{adapter}: simgate_cloud_responses_total{{status=\"{bucket}\"}} counts the {status}"
        );
    }
    assert_eq!(cloud_responses(gw, adapter, "2xx"), 0.0);
    let resp = device_post(gw, cloud.dir.path(), path, body, "application/json");
    assert_eq!(
        resp.status,
        ok_status,
        "{adapter} after the failures: {}",
        resp.body_text()
    );
    assert_eq!(cloud.sink.accepted(sink_cloud).len(), 1);
    assert_eq!(cloud_responses(gw, adapter, "2xx"), 1.0);
}

#[test]
fn cloud_errors_of_aws_and_things_cloud_reach_the_device_and_are_counted() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    cloud_errors_reach_the_device(
        &cloud,
        &gw,
        "aws-iot-core",
        "aws-iot-core",
        "/iot/t",
        b"{}",
        200,
    );
    cloud_errors_reach_the_device(
        &cloud,
        &gw,
        "aws-lambda",
        "aws-lambda",
        "/lambda",
        b"{}",
        200,
    );
    let m = br#"{"type":"t","f":{"s":{"value":1}}}"#;
    cloud_errors_reach_the_device(&cloud, &gw, "things-cloud", "things-cloud", "/c8y", m, 201);
    let (_, text) = gw.admin_get("/metrics");
    assert_eq!(
        metric_in(
            &text,
            "simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"2xx\"}"
        ),
        Some(0.0),
        "every cloud adapter's series is present from the start"
    );
}

#[test]
fn cloud_errors_of_the_token_clouds_reach_the_device_and_are_counted() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    for dest in ["hub", "eh", "ps"] {
        wait_for_token(&gw, &cloud.sink, dest);
    }
    cloud_errors_reach_the_device(
        &cloud,
        &gw,
        "azure-iot-hub",
        "azure-iot-hub",
        "/hub",
        b"{}",
        204,
    );
    cloud_errors_reach_the_device(
        &cloud,
        &gw,
        "azure-event-hubs",
        "azure-event-hubs",
        "/eh",
        b"{}",
        201,
    );
    cloud_errors_reach_the_device(&cloud, &gw, "gcp-pubsub", "gcp-pubsub", "/ps", b"{}", 200);
}

// ---------------------------------------------------------------------------------------------
// 3. Refusals before sending.

#[test]
fn messages_a_cloud_cannot_take_are_refused_before_sending() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    let dir = cloud.dir.path();

    let big = vec![b'x'; 128 * 1024 + 1];
    let resp = device_post(&gw, dir, "/iot/big", &big, "application/octet-stream");
    assert_eq!(resp.status, 413, "{}", resp.body_text());
    assert!(
        resp.body_text().contains("131072"),
        "names the limit: {}",
        resp.body_text()
    );

    let resp = device_post(
        &gw,
        dir,
        "/c8y",
        br#"{"type":"c8y_T","f":{"s":{"value":"high"}}}"#,
        "application/json",
    );
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    assert!(
        resp.body_text().contains("numeric \"value\""),
        "the device is told why: {}",
        resp.body_text()
    );
    let resp = device_post(&gw, dir, "/c8y", br#"{"type":"c8y_T"}"#, "application/json");
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    assert!(
        resp.body_text().contains("fragment"),
        "{}",
        resp.body_text()
    );
    let resp = device_post(
        &gw,
        dir,
        "/c8y-event",
        br#"{"type":"c8y_Boot"}"#,
        "application/json",
    );
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    assert!(resp.body_text().contains("text"), "{}", resp.body_text());

    let resp = device_post(&gw, dir, "/lambda", b"21.5 C", "text/plain");
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    assert!(resp.body_text().contains("JSON"), "{}", resp.body_text());

    let stats = cloud.sink.stats();
    for c in ["aws-iot-core", "things-cloud", "aws-lambda"] {
        assert_eq!(stats["calls"].get(c), None, "{c} was called: {stats}");
    }
    for adapter in ["aws-iot-core", "things-cloud", "aws-lambda"] {
        for bucket in ["2xx", "400", "413", "4xx", "5xx"] {
            assert_eq!(
                cloud_responses(&gw, adapter, bucket),
                0.0,
                "{adapter} {bucket}"
            );
        }
    }
    // The device's connection keeps working after a refusal.
    let resp = device_post(&gw, dir, "/iot/ok", b"{}", "application/json");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
}

// ---------------------------------------------------------------------------------------------
// 4. Batching.

/// `BATCH_SIMS` devices (one per SIM, each on its own source address) POST at once to `path`;
/// each device's (imsi, response). A barrier releases the requests together.
fn burst(gw: &Simgate, path: &str) -> Vec<(String, Response)> {
    let barrier = Arc::new(Barrier::new(BATCH_SIMS));
    let addr = gw.http;
    let handles: Vec<_> = (1..=BATCH_SIMS)
        .map(|k| {
            let barrier = barrier.clone();
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut device = Device::connect_from(addr, batch_sim_ip(k));
                let imsi = batch_sim_imsi(k);
                let body = format!("{{\"device\":\"{imsi}\"}}");
                barrier.wait();
                let resp = device.request(&post(
                    &path,
                    body.as_bytes(),
                    "Content-Type: application/json\r\n",
                ));
                (imsi, resp)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("device thread"))
        .collect()
}

fn imsi_of_body(entry: &Value) -> String {
    let v: Value = serde_json::from_slice(&body_of(entry)).expect("device JSON");
    v["device"].as_str().expect("device").to_owned()
}

#[test]
fn pubsub_batches_answer_each_device_with_its_own_message_id_and_a_failed_batch_fails_all_in_it() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    wait_for_token(&gw, &cloud.sink, "ps-batch");

    let answers = burst(&gw, "/ps-batch");
    for (imsi, resp) in &answers {
        assert_eq!(
            resp.status,
            200,
            "{imsi}: {}\nsimgate's log:\n{}",
            resp.body_text(),
            tail(&gw.stderr(), 30)
        );
    }
    let accepted = cloud.sink.accepted("gcp-pubsub");
    assert_eq!(accepted.len(), BATCH_SIMS, "every message delivered once");
    let by_imsi: HashMap<String, &Value> = accepted.iter().map(|a| (imsi_of_body(a), a)).collect();
    let mut ids = BTreeSet::new();
    for (imsi, resp) in &answers {
        assert_eq!(resp.status, 200, "{imsi}: {}", resp.body_text());
        let answer = json_body(resp);
        let id = answer["messageId"]
            .as_str()
            .unwrap_or_else(|| panic!("{imsi}: {answer}"));
        let got = by_imsi
            .get(imsi)
            .unwrap_or_else(|| panic!("{imsi} not delivered"));
        assert_eq!(
            got["message_id"], id,
            "{imsi} got the id the cloud gave its message"
        );
        assert_eq!(
            got["attributes"]["imsi"],
            imsi.as_str(),
            "identity per message"
        );
        assert_eq!(got["ordering_key"], imsi.as_str());
        ids.insert(id.to_owned());
    }
    assert_eq!(ids.len(), BATCH_SIMS, "distinct message ids");
    let calls = cloud.sink.calls("gcp-pubsub");
    assert!(
        calls < BATCH_SIMS as u64,
        "{calls} publish calls for {BATCH_SIMS} messages"
    );
    assert_eq!(
        metric(&gw, "simgate_cloud_batched_messages_total"),
        Some(BATCH_SIMS as f64)
    );
    assert_eq!(
        metric(&gw, "simgate_cloud_batches_total"),
        Some(calls as f64)
    );

    // A failed batch: every device in it gets the cloud's error, none of it is delivered. (No
    // sink reset here: it would forget the access token it issued to simgate.)
    let before = Baseline::of(&cloud.sink, "gcp-pubsub");
    cloud.sink.fail("gcp-pubsub", 500, 1, None);
    let answers = burst(&gw, "/ps-batch");
    assert_failed_batch(&cloud.sink, "gcp-pubsub", &before, &answers, 200, 500);
    throttled_batch_tells_the_device_when_to_retry(&cloud, &gw, "gcp-pubsub", "/ps-batch");
}

/// A batch the cloud refuses with 429 and `Retry-After`: the device gets both.
fn throttled_batch_tells_the_device_when_to_retry(
    cloud: &Cloud,
    gw: &Simgate,
    sink_cloud: &str,
    path: &str,
) {
    let before = cloud.sink.accepted(sink_cloud).len();
    cloud.sink.fail(sink_cloud, 429, 1, Some(9));
    let resp = device_post(gw, cloud.dir.path(), path, b"{}", "application/json");
    assert_eq!(resp.status, 429, "{}", resp.body_text());
    assert_eq!(resp.header("retry-after"), Some("9"), "{:?}", resp.headers);
    assert_eq!(
        cloud.sink.accepted(sink_cloud).len(),
        before,
        "nothing delivered"
    );
}

/// What the sink had accepted and been called for `cloud` before a burst.
struct Baseline {
    accepted: usize,
    calls: u64,
}

impl Baseline {
    fn of(sink: &CloudSink, cloud: &str) -> Baseline {
        Baseline {
            accepted: sink.accepted(cloud).len(),
            calls: sink.calls(cloud),
        }
    }
}

/// After a burst where the first cloud call answered `fail_status`: the devices that got it are
/// exactly those whose messages the sink did not accept, they were all in one call (the sink saw
/// one call more than the accepted messages span), and the rest got `ok_status`.
fn assert_failed_batch(
    sink: &CloudSink,
    cloud: &str,
    before: &Baseline,
    answers: &[(String, Response)],
    ok_status: u16,
    fail_status: u16,
) {
    let accepted: Vec<Value> = sink.accepted(cloud).split_off(before.accepted);
    let delivered: BTreeSet<String> = accepted.iter().map(imsi_of_body).collect();
    let failed: BTreeSet<String> = answers
        .iter()
        .filter(|(_, r)| r.status == fail_status)
        .map(|(i, _)| i.clone())
        .collect();
    for (imsi, resp) in answers {
        assert!(
            resp.status == ok_status || resp.status == fail_status,
            "{imsi}: {} {}",
            resp.status,
            resp.body_text()
        );
        assert_eq!(
            delivered.contains(imsi),
            resp.status == ok_status,
            "{imsi} answered {} but delivered = {}",
            resp.status,
            delivered.contains(imsi)
        );
    }
    assert!(!failed.is_empty(), "the failed batch reached some devices");
    let ok_calls: BTreeSet<u64> = accepted.iter().filter_map(|a| a["call"].as_u64()).collect();
    let calls = sink.calls(cloud) - before.calls;
    assert_eq!(
        calls,
        ok_calls.len() as u64 + 1,
        "one failed call, the rest accepted: {} devices failed together",
        failed.len()
    );
}

#[test]
fn event_hubs_batches_answer_every_device_and_a_failed_batch_fails_all_in_it() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    wait_for_token(&gw, &cloud.sink, "eh-batch");

    let answers = burst(&gw, "/eh-batch");
    let accepted = cloud.sink.accepted("azure-event-hubs");
    assert_eq!(accepted.len(), BATCH_SIMS, "every message delivered once");
    let by_imsi: HashMap<String, &Value> = accepted.iter().map(|a| (imsi_of_body(a), a)).collect();
    for (imsi, resp) in &answers {
        assert_eq!(resp.status, 201, "{imsi}: {}", resp.body_text());
        let got = by_imsi
            .get(imsi)
            .unwrap_or_else(|| panic!("{imsi} not delivered"));
        assert_eq!(got["broker_properties"]["PartitionKey"], imsi.as_str());
        assert_eq!(
            got["properties"]["imsi"],
            imsi.as_str(),
            "UserProperties: {got}"
        );
    }
    let calls = cloud.sink.calls("azure-event-hubs");
    assert!(
        calls < BATCH_SIMS as u64,
        "{calls} sends for {BATCH_SIMS} messages"
    );
    assert!(
        accepted.iter().any(|a| a["batch_size"].as_u64() > Some(1)),
        "some call carried a batch"
    );

    let before = Baseline::of(&cloud.sink, "azure-event-hubs");
    cloud.sink.fail("azure-event-hubs", 500, 1, None);
    let answers = burst(&gw, "/eh-batch");
    assert_failed_batch(&cloud.sink, "azure-event-hubs", &before, &answers, 201, 500);
    throttled_batch_tells_the_device_when_to_retry(&cloud, &gw, "azure-event-hubs", "/eh-batch");
}

// ---------------------------------------------------------------------------------------------
// 5. Secrets never leak.

/// Text that must never appear anywhere simgate writes or answers.
fn planted_secrets() -> Vec<String> {
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("t123/device-gw:{C8Y_PASSWORD}"));
    vec![
        "SECRET-PLANTED".into(),
        AWS_SECRET.into(),
        HUB_KEY.into(),
        EH_KEY.into(),
        C8Y_PASSWORD.into(),
        basic,
    ]
}

/// Lines of the service account's private key (its PEM body) and the tokens the sink issued.
fn service_account_secrets(sink: &CloudSink) -> Vec<String> {
    let sa: Value =
        serde_json::from_slice(&std::fs::read(&sink.service_account).expect("sa")).expect("json");
    let mut out: Vec<String> = sa["private_key"]
        .as_str()
        .expect("private_key")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect();
    out.push(sa["private_key_id"].as_str().expect("kid").to_owned());
    out.push("ya29.sink-".into());
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} contains the secret {s:?}:\n{text}"
        );
    }
    for marker in ["SharedAccessSignature sr=", "Bearer ya29", "Basic dDEyMy"] {
        assert!(
            !text.contains(marker),
            "{what} contains a credential ({marker}):\n{text}"
        );
    }
}

fn simgate_check(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simgate"))
        .args(["check", "--config"])
        .arg(config)
        .env("EH_KEY", EH_KEY)
        .output()
        .expect("run simgate check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Traffic to `paths` including failures (401, 403, 429, 500) and refusals; every body the
/// devices got, concatenated.
fn traffic_with_failures(cloud: &Cloud, gw: &Simgate, targets: &[(&str, &str, &[u8])]) -> String {
    let mut seen = String::new();
    for (sink_cloud, path, body) in targets {
        for status in [401, 403, 429, 500] {
            cloud.sink.fail(sink_cloud, status, 1, Some(1));
            let resp = device_post(gw, cloud.dir.path(), path, body, "application/json");
            assert_eq!(
                resp.status,
                status,
                "{path}: {}\nsimgate's log:\n{}",
                resp.body_text(),
                tail(&gw.stderr(), 30)
            );
            seen.push_str(&format!("{:?}\n{}\n", resp.headers, resp.body_text()));
        }
        let resp = device_post(gw, cloud.dir.path(), path, body, "application/json");
        assert!(
            resp.status < 300,
            "{path}: {} {}",
            resp.status,
            resp.body_text()
        );
        seen.push_str(&format!("{:?}\n{}\n", resp.headers, resp.body_text()));
        let resp = device_post(
            gw,
            cloud.dir.path(),
            path,
            b"not json {",
            "application/json",
        );
        seen.push_str(&format!("{:?}\n{}\n", resp.headers, resp.body_text()));
    }
    seen
}

#[test]
fn secrets_never_leak_into_logs_metrics_check_output_or_device_answers() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    let mut secrets = planted_secrets();
    secrets.extend(service_account_secrets(&cloud.sink));
    let c8y = br#"{"type":"t","f":{"s":{"value":1}}}"#;
    let answers = traffic_with_failures(
        &cloud,
        &gw,
        &[
            ("aws-iot-core", "/iot/t", b"{}"),
            ("aws-lambda", "/lambda", b"{}"),
            ("things-cloud", "/c8y", c8y),
        ],
    );
    // Token clouds too, whatever they answer now (503 while no token is minted).
    let mut token_answers = String::new();
    for path in ["/hub", "/eh", "/ps", "/ps-batch", "/eh-batch"] {
        let resp = device_post(&gw, cloud.dir.path(), path, b"{}", "application/json");
        token_answers.push_str(&format!(
            "{} {:?}\n{}\n",
            resp.status,
            resp.headers,
            resp.body_text()
        ));
    }
    assert_no_secret("device answers", &answers, &secrets);
    assert_no_secret(
        "device answers of the token clouds",
        &token_answers,
        &secrets,
    );
    let (_, metrics) = gw.admin_get("/metrics");
    assert_no_secret("/metrics", &metrics, &secrets);
    let log = gw.stderr();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the log is at debug: {}",
        tail(&log, 5)
    );
    assert_no_secret("simgate's log", &log, &secrets);

    // `simgate check` on the config, and on the config with an error elsewhere and an inline
    // secret.
    let (ok, stdout, stderr) = simgate_check(&gw.config_path);
    assert!(ok, "check: {stdout}{stderr}");
    assert_no_secret("check output", &format!("{stdout}{stderr}"), &secrets);
    let broken = cloud
        .config("")
        .replace(
            "secret_access_key = { file = \"aws-secret.txt\" }",
            &format!("secret_access_key = \"{AWS_SECRET}\""),
        )
        .replace(
            "password = { file = \"c8y-pw.txt\" }",
            &format!("password = \"{C8Y_PASSWORD}\""),
        )
        .replace("invocation = \"event\"", "invocation = \"sometimes\"");
    let broken_path = cloud.dir.path().join("broken.toml");
    std::fs::write(&broken_path, broken).expect("write broken config");
    let (ok, stdout, stderr) = simgate_check(&broken_path);
    assert!(
        !ok,
        "the config with a bad invocation is rejected: {stdout}{stderr}"
    );
    assert!(
        stderr.contains("destination[7].invocation"),
        "names the error: {stderr}"
    );
    assert_no_secret(
        "check output of a broken config",
        &format!("{stdout}{stderr}"),
        &secrets,
    );
    // A key file that is not there: the error names the file, not a secret.
    let missing = cloud.config("").replace("hub-key.txt", "no-such-key.txt");
    let missing_path = cloud.dir.path().join("missing.toml");
    std::fs::write(&missing_path, missing).expect("write config");
    let (ok, stdout, stderr) = simgate_check(&missing_path);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stderr.contains("no-such-key.txt"), "{stderr}");
    assert_no_secret(
        "check output of a missing key file",
        &format!("{stdout}{stderr}"),
        &secrets,
    );
    assert_no_secret("the sink's log", &cloud.sink.stderr(), &secrets);
}

#[test]
fn tokens_of_the_token_clouds_never_leak_into_logs_metrics_or_device_answers() {
    let cloud = Cloud::new();
    let gw = cloud.simgate();
    for dest in ["hub", "eh", "ps"] {
        wait_for_token(&gw, &cloud.sink, dest);
    }
    let mut secrets = planted_secrets();
    secrets.extend(service_account_secrets(&cloud.sink));
    let answers = traffic_with_failures(
        &cloud,
        &gw,
        &[
            ("azure-iot-hub", "/hub", b"{}"),
            ("azure-event-hubs", "/eh", b"{}"),
            ("gcp-pubsub", "/ps", b"{}"),
        ],
    );
    assert_no_secret("device answers", &answers, &secrets);
    let (_, metrics) = gw.admin_get("/metrics");
    assert_no_secret("/metrics", &metrics, &secrets);
    assert_no_secret("simgate's log", &gw.stderr(), &secrets);
}

// ---------------------------------------------------------------------------------------------
// 6. `simgate check`: warnings and the retired adapter.

#[test]
fn check_warns_for_an_inline_secret_and_still_accepts_the_config() {
    let cloud = Cloud::new();
    let config = cloud.config("").replace(
        "secret_access_key = { file = \"aws-secret.txt\" }",
        &format!("secret_access_key = \"{AWS_SECRET}\""),
    );
    let path = cloud.dir.path().join("inline.toml");
    std::fs::write(&path, config).expect("write config");
    let (ok, stdout, stderr) = simgate_check(&path);
    assert!(ok, "an inline secret is allowed: {stdout}{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: credential[0].secret_access_key: "))
        .unwrap_or_else(|| panic!("no warning for the inline secret on stderr:\n{stderr}"));
    assert!(
        warning.contains("file"),
        "says what to do instead: {warning}"
    );
    assert!(
        !stderr.contains(AWS_SECRET),
        "the warning shows no secret: {stderr}"
    );

    // `run` logs it at warn.
    let gw = Simgate::start_with_env(
        cloud.dir.path(),
        &std::fs::read_to_string(&path).expect("config"),
        &[("EH_KEY", Path::new(EH_KEY))],
    );
    let log = gw.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("credential[0].secret_access_key")),
        "run logs the warning:\n{}",
        tail(&log, 30)
    );
    assert!(!log.contains(AWS_SECRET));

    // Without inline secrets: no warning.
    let clean = cloud.dir.path().join("clean.toml");
    std::fs::write(&clean, cloud.config("")).expect("write config");
    let (ok, stdout, stderr) = simgate_check(&clean);
    assert!(ok, "{stdout}{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
}

#[test]
fn check_rejects_gcp_iot_core_pointing_to_gcp_pubsub() {
    let cloud = Cloud::new();
    let config = cloud
        .config("")
        .replace("adapter = \"gcp-pubsub\"", "adapter = \"gcp-iot-core\"");
    let path = cloud.dir.path().join("retired.toml");
    std::fs::write(&path, config).expect("write config");
    let (ok, stdout, stderr) = simgate_check(&path);
    assert!(!ok, "gcp-iot-core is rejected: {stdout}{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("destination[4].adapter: "))
        .unwrap_or_else(|| panic!("no error for destination[4].adapter:\n{stderr}"));
    assert!(line.contains("gcp-pubsub"), "points to gcp-pubsub: {line}");
    assert!(line.contains("retired"), "says why: {line}");
}
