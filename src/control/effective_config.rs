//! `GET /admin/config`: the effective configuration, rendered as JSON from the [`Plan`] being
//! served (not by re-reading the file, which may have changed since the last reload):
//! gateway settings, listeners, destinations with their adapter kind and non-secret settings,
//! groups with their routes, the number of SIMs (not the table), RADIUS, usage, the
//! measurement switches and probe settings.
//!
//! Secrets are never rendered: every field that holds one (a [`crate::policy::Secret`], a
//! signing key, a credential's key material, a token recipe's key) is written as
//! `"<redacted>"` when set, `null` when not. The renderer is an allowlist — it names each field
//! it shows — so a secret added to the plan later stays out until someone renders it on
//! purpose. Client certificates' keys are baked into the destinations' TLS configs and have no
//! field here at all.
//!
//! What this module does not do: render durations other than as seconds (floating point), or
//! show the SIM table, the live bindings or minted tokens.

use std::time::Duration;

use serde_json::{json, Value};

use crate::policy::cloud::{AwsIotAuth, CloudCredential, LambdaInvocation, ThingsCloudKind};
use crate::policy::cloud::{BatchSettings, TokenSpec};
use crate::policy::envelope::Envelope;
use crate::policy::{
    attach::AttachField, Adapter, DestinationPlan, ErrorDetail, ListenerKind, MqttDestination,
    MqttMode, MqttUpstreamVersion, Plan, Secret, UnknownImsi, UnknownSource, WhileDown,
};

/// What a set secret is shown as.
pub const REDACTED: &str = "<redacted>";

fn secret(s: Option<&Secret>) -> Value {
    s.map_or(Value::Null, |_| Value::from(REDACTED))
}

fn secs(d: Duration) -> Value {
    json!(d.as_secs_f64())
}

/// The effective configuration of `plan`, secrets redacted.
pub fn render(plan: &Plan) -> Value {
    let g = &plan.gateway;
    let group_name =
        |id: crate::policy::GroupId| plan.groups.get(usize::from(id.0)).map(|g| g.name.clone());
    let destination_name = |id: crate::policy::DestinationId| {
        plan.destinations
            .get(usize::from(id.0))
            .map(|d| d.name.clone())
    };
    let listener_name = |id: crate::policy::ListenerId| {
        plan.listeners
            .get(usize::from(id.0))
            .map(|l| l.name.clone())
    };
    json!({
        "gateway": {
            "shards": g.shards,
            "pin_shards": g.pin_shards,
            "admin": g.admin.map(|a| a.to_string()),
            "admin_token": secret(g.admin_token.as_ref()),
            "default_group": group_name(g.default_group),
            "ring_entries": g.ring_entries,
            "recv_buffers": g.recv_buffers,
            "recv_buffer_size": g.recv_buffer_size,
            "backlog": g.backlog,
            "max_connections": g.max_connections,
            "reserved_fds": g.reserved_fds,
            "open_files_limit": g.open_files_limit,
        },
        "listeners": plan.listeners.iter().map(|l| {
            let mut v = json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "max_connections": l.max_connections,
                "unknown": match l.unknown {
                    UnknownSource::Default => "default",
                    UnknownSource::Reject => "reject",
                },
            });
            match &l.kind {
                ListenerKind::Http(h) => {
                    v["protocol"] = json!("http");
                    v["max_head_bytes"] = json!(h.max_head_bytes);
                    v["max_headers"] = json!(h.max_headers);
                    v["max_body_bytes"] = json!(h.max_body_bytes);
                    v["header_timeout_s"] = secs(h.header_timeout);
                    v["body_timeout_s"] = secs(h.body_timeout);
                    v["idle_timeout_s"] = secs(h.idle_timeout);
                    v["max_requests_per_connection"] = json!(h.max_requests_per_connection);
                    v["error_detail"] = json!(match h.error_detail {
                        ErrorDetail::Generic => "generic",
                        ErrorDetail::Full => "full",
                    });
                }
                ListenerKind::Mqtt(m) => {
                    v["protocol"] = json!("mqtt");
                    v["max_packet_size"] = json!(m.max_packet_size);
                    v["connect_timeout_s"] = secs(m.connect_timeout);
                    v["receive_maximum"] = json!(m.receive_maximum);
                }
            }
            v
        }).collect::<Vec<_>>(),
        "destinations": plan.destinations.iter().map(destination).collect::<Vec<_>>(),
        "groups": plan.groups.iter().map(|grp| json!({
            "name": grp.name,
            "http_routes": grp.http_routes.iter().map(|r| json!({
                "listener": listener_name(r.listener),
                "path": r.path_prefix,
                "destination": destination_name(r.destination),
            })).collect::<Vec<_>>(),
            "mqtt_routes": grp.mqtt_routes.iter().map(|r| json!({
                "listener": listener_name(r.listener),
                "destination": destination_name(r.destination),
            })).collect::<Vec<_>>(),
            "attach": AttachField::ALL
                .into_iter()
                .filter(|f| grp.attach.contains(*f))
                .map(AttachField::config_name)
                .collect::<Vec<_>>(),
            "signing_secret": grp.signer.as_ref().map(|_| REDACTED),
        })).collect::<Vec<_>>(),
        "sims": plan.sims.len(),
        "radius": plan.radius.as_ref().map(|r| json!({
            "bind": r.bind.to_string(),
            "secret": REDACTED,
            "unknown_imsi": match r.unknown_imsi {
                UnknownImsi::Ignore => "ignore",
                UnknownImsi::Default => "default",
            },
        })),
        "usage": {
            "enabled": plan.usage.enabled,
            "file": plan.usage.file.as_ref().map(|f| f.display().to_string()),
            "interval_s": secs(plan.usage.interval),
            "max_file_bytes": plan.usage.max_file_bytes,
            "max_file_age_s": secs(plan.usage.max_file_age),
            "keep_intervals": plan.usage.keep_intervals,
        },
        "metrics": {
            "histograms": plan.metrics.histograms,
        },
        "probe": {
            "interval_s": plan.probe.interval.map(secs),
            "timeout_s": secs(plan.probe.timeout),
            "client_id": plan.probe.client_id,
            "e2e": plan.probe.e2e.as_ref().map(|e| json!({
                "listener": e.listener,
                "topic": e.target.topic(),
                "path": e.target.path(),
                "interval_s": secs(e.interval),
                "timeout_s": secs(e.timeout),
                "window": e.window,
                "loss_alarm": e.loss_alarm,
                "p99_alarm_s": e.p99_alarm.map(secs),
                "alarm_affects_readiness": e.alarm_affects_readiness,
            })),
        },
        "warnings": plan.warnings,
    })
}

fn destination(d: &DestinationPlan) -> Value {
    let mut v = json!({
        "name": d.name,
        "adapter": d.adapter.kind().config_name(),
        "endpoint": d.endpoint,
        "addrs": d.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "reresolve_s": d.resolve.as_ref().map(|r| secs(r.interval)),
        "host_header": d.host_header,
        "envelope": match d.envelope {
            Envelope::None => "none",
            Envelope::Json => "json",
        },
        "pool": {
            "warm": d.pool.warm,
            "max_idle": d.pool.max_idle,
            "idle_timeout_s": secs(d.pool.idle_timeout),
            "max_age_s": secs(d.pool.max_age),
            "max_connecting": d.pool.max_connecting,
            "connect_timeout_s": secs(d.pool.connect_timeout),
            "response_timeout_s": secs(d.pool.response_timeout),
            "backoff_initial_s": secs(d.pool.backoff_initial),
            "backoff_max_s": secs(d.pool.backoff_max),
        },
        "token": d.token.as_ref().map(token),
    });
    let settings = match &d.adapter {
        Adapter::Https(h) => json!({
            "base_path": h.base_path.as_str(),
            "authorization": secret(h.authorization.as_ref()),
        }),
        Adapter::Mqtts(m) => json!({ "mqtt": mqtt(m) }),
        Adapter::AwsIotCore(a) => json!({
            "topic": a.topic.as_str(),
            "auth": match &a.auth {
                AwsIotAuth::MutualTls => json!({ "kind": "x509" }),
                AwsIotAuth::SigV4 { region, credential } => json!({
                    "kind": "sigv4",
                    "region": region,
                    "credential": cloud_credential(credential),
                }),
            },
        }),
        Adapter::AwsIotCoreMqtt(a) => json!({
            "thing_name": a.thing_name.as_str(),
            "thing_topics": a.thing_topics,
            "mqtt": mqtt(&a.mqtt),
        }),
        Adapter::AzureIotHub(a) => json!({
            "hub": a.hub,
            "device_id": a.device_id.as_str(),
        }),
        Adapter::AzureIotHubMqtt(a) => json!({
            "hub": a.hub,
            "device_id": a.device_id.as_str(),
            "c2d_topic": String::from_utf8_lossy(&a.c2d_topic),
            "twin_topic": String::from_utf8_lossy(&a.twin_topic),
            "methods_topic": String::from_utf8_lossy(&a.methods_topic),
            "mqtt": mqtt(&a.session),
        }),
        Adapter::AzureEventHubs(e) => json!({
            "namespace": e.namespace,
            "hub": e.hub,
            "partition_key": e.partition_key.as_ref().map(|t| t.as_str()),
            "batch": e.batch.map(batch),
        }),
        Adapter::GcpPubsub(p) => json!({
            "project": p.project,
            "topic": p.topic,
            "ordering_key": p.ordering_key.as_ref().map(|t| t.as_str()),
            "batch": p.batch.map(batch),
        }),
        Adapter::AwsLambda(l) => json!({
            "region": l.region,
            "function": l.function,
            "qualifier": l.qualifier,
            "invocation": match l.invocation {
                LambdaInvocation::Event => "event",
                LambdaInvocation::RequestResponse => "request-response",
            },
            "credential": cloud_credential(&l.credential),
        }),
        Adapter::ThingsCloud(t) => json!({
            "tenant": t.tenant,
            "kind": match t.kind {
                ThingsCloudKind::Measurement => "measurement",
                ThingsCloudKind::Event => "event",
            },
            "source_id": t.source_id.as_str(),
            "authorization": REDACTED,
        }),
    };
    v["settings"] = settings;
    v
}

fn mqtt(m: &MqttDestination) -> Value {
    json!({
        "mode": match m.mode {
            MqttMode::Session => "session",
            MqttMode::Aggregate => "aggregate",
        },
        "version": match m.version {
            MqttUpstreamVersion::V311 => "3.1.1",
            MqttUpstreamVersion::V5 => "5",
            MqttUpstreamVersion::SameAsDevice => "device",
        },
        "client_id": m.client_id.as_str(),
        "username": m.username.as_ref().map(|t| t.as_str()),
        "password": secret(m.password.as_ref()),
        "pass_through_credentials": m.pass_through_credentials,
        "topic": m.topic.as_str(),
        "keep_alive_s": secs(m.keep_alive),
        "connections_per_shard": m.connections_per_shard,
        "max_inflight": m.max_inflight,
        "linger_s": secs(m.linger),
        "max_publish_rate": m.max_publish_rate.map(|r| r.get()),
        "while_down": match m.while_down {
            WhileDown::Accept => json!("accept"),
            WhileDown::RefuseAfter(d) => json!({ "refuse_after_s": d.as_secs_f64() }),
        },
    })
}

fn cloud_credential(c: &CloudCredential) -> Value {
    match c {
        CloudCredential::AwsKeys {
            access_key_id,
            secret_access_key: _,
            session_token,
        } => json!({
            "kind": "aws-keys",
            "access_key_id": access_key_id,
            "secret_access_key": REDACTED,
            "session_token": secret(session_token.as_ref()),
        }),
        CloudCredential::AzureSas { key_name, key: _ } => json!({
            "kind": "azure-sas",
            "key_name": key_name,
            "key": REDACTED,
        }),
        CloudCredential::GcpServiceAccount {
            json: _,
            client_email,
            token_uri,
        } => json!({
            "kind": "gcp-service-account",
            "client_email": client_email,
            "token_uri": token_uri,
            "json": REDACTED,
        }),
        CloudCredential::Basic {
            username,
            password: _,
        } => json!({ "kind": "basic", "username": username, "password": REDACTED }),
        CloudCredential::Bearer { token: _ } => json!({ "kind": "bearer", "token": REDACTED }),
    }
}

fn token(t: &TokenSpec) -> Value {
    match t {
        TokenSpec::Sas {
            resource_uri,
            key: _,
            key_is_base64,
            key_name,
            ttl,
        } => json!({
            "kind": "azure-sas",
            "resource_uri": resource_uri,
            "key": REDACTED,
            "key_is_base64": key_is_base64,
            "key_name": key_name,
            "ttl_s": secs(*ttl),
        }),
        TokenSpec::GoogleOauth2 {
            service_account: _,
            token_uri,
            scope,
            ttl,
        } => json!({
            "kind": "gcp-oauth2",
            "service_account": REDACTED,
            "token_uri": token_uri,
            "scope": scope,
            "ttl_s": secs(*ttl),
        }),
    }
}

fn batch(b: BatchSettings) -> Value {
    json!({
        "max_messages": b.max_messages,
        "max_bytes": b.max_bytes,
        "linger_s": secs(b.linger),
    })
}
