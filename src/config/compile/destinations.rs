//! Compiles `[[destination]]` into [`DestinationPlan`]s: adapter, endpoint and its addresses
//! (resolved now, re-resolved later per `resolve_interval`), server name, CA roots, client
//! credential, Host header and base path (`https`), ALPN, the body `envelope`, and the rustls
//! client config.
//!
//! What this does not do: the `[destination.mqtt]` and `[destination.pool]` tables (see `mqtt`
//! and `pool`), or DNS and root-store IO itself (through [`Environment`](super::Environment)).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::RootCertStore;

use super::credentials::Credential;
use super::{defaults, Compiler};
use crate::config::schema::{RawDestination, RawDuration};
use crate::config::tls_material::{self, ClientIdentity};
use crate::config::values::{
    format_duration, is_valid_header_value, normalize_path_prefix, parse_duration, parse_endpoint,
    Endpoint, EndpointHost,
};
use crate::policy::cloud::CloudCredential;
use crate::policy::envelope::Envelope;
use crate::policy::template::SIM_PLACEHOLDERS;
use crate::policy::{
    default_max_publish_rate, Adapter, AdapterKind, DestinationId, DestinationPlan,
    HttpsDestination, MqttDestination, Reresolve, Secret, Template,
};

impl Compiler<'_> {
    pub(super) fn destination(
        &mut self,
        i: usize,
        raw: &RawDestination,
        credential_names: &HashMap<&str, usize>,
        credentials: &[Option<Credential>],
        shards: Option<usize>,
    ) -> Option<DestinationPlan> {
        let p = format!("destination[{i}]");
        let adapter = match AdapterKind::parse(&raw.adapter) {
            Some(kind) => Some(kind),
            None if raw.adapter == "gcp-iot-core" => {
                self.push(
                    format!("{p}.adapter"),
                    "Google Cloud IoT Core was retired on 2023-08-16; its devices' traffic goes \
                     to Pub/Sub now: use adapter = \"gcp-pubsub\" (keys project, topic)",
                );
                None
            }
            None => {
                let supported: Vec<String> = AdapterKind::ALL
                    .iter()
                    .map(|k| format!("{:?}", k.config_name()))
                    .collect();
                self.push(
                    format!("{p}.adapter"),
                    format!(
                        "unsupported adapter {:?}; supported: {}",
                        raw.adapter,
                        supported.join(", ")
                    ),
                );
                None
            }
        };
        let is_mqtts = adapter == Some(AdapterKind::Mqtts);

        // The endpoint as written, or the cloud's public endpoint derived from its keys.
        let endpoint_text = match (&raw.endpoint, adapter) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(kind)) => match super::adapters::derived_endpoint(kind, raw) {
                Ok(text) => Some(text),
                Err(why) => {
                    self.push(format!("{p}.endpoint"), why);
                    None
                }
            },
            (None, None) => None,
        };
        // The cloud's public host, when the adapter derives one: with `endpoint` overridden
        // (a private endpoint, a test sink) it stays the default Host and TLS server name, as
        // the service routes and certifies by it.
        let public_host: Option<String> = adapter
            .filter(|_| raw.endpoint.is_some())
            .and_then(|kind| super::adapters::derived_endpoint(kind, raw).ok())
            .and_then(|text| text.rsplit_once(':').map(|(host, _)| host.to_owned()));
        let endpoint = match endpoint_text.as_deref().map(parse_endpoint) {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                self.push(
                    format!("{p}.endpoint"),
                    format!(
                        "invalid endpoint {:?}: {e}",
                        endpoint_text.clone().unwrap_or_default()
                    ),
                );
                None
            }
            None => None,
        };
        let addrs = endpoint.as_ref().and_then(|e| self.resolve(&p, e));
        // Outer None: an error was reported. Inner None: never looked up again.
        let interval = self.resolve_interval(&p, raw.resolve_interval.as_ref());
        let resolve: Option<Option<Reresolve>> = match (&endpoint, interval) {
            (_, None) => None,
            (Some(e), Some(Some(interval))) => Some(match &e.host {
                EndpointHost::Dns(host) => Some(Reresolve {
                    host: host.clone(),
                    port: e.port,
                    interval,
                }),
                EndpointHost::Ip(_) => None,
            }),
            (_, Some(_)) => Some(None),
        };

        let server_name = match (&raw.server_name, &endpoint) {
            (Some(name), _) => match ServerName::try_from(name.clone()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.push(
                        format!("{p}.server_name"),
                        format!("invalid server name {name:?}: expected a DNS name or IP address"),
                    );
                    None
                }
            },
            (None, _) if public_host.is_some() => public_host
                .clone()
                .and_then(|host| ServerName::try_from(host).ok()),
            (None, Some(e)) => match &e.host {
                EndpointHost::Ip(ip) => Some(ServerName::IpAddress((*ip).into())),
                // `parse_endpoint` accepted it as a DNS name, so this conversion succeeds.
                EndpointHost::Dns(host) => ServerName::try_from(host.clone()).ok(),
            },
            (None, None) => None,
        };

        let roots = match &raw.ca {
            Some(ca) => {
                let path = self.base_dir.join(ca);
                match tls_material::load_roots(&path) {
                    Ok(roots) => Some(roots),
                    Err(e) => {
                        self.push(format!("{p}.ca"), format!("{e}: {}", path.display()));
                        None
                    }
                }
            }
            None => {
                let roots = self.system_roots();
                if roots.is_none() {
                    self.push(
                        format!("{p}.ca"),
                        "not set, and no system root certificates were found; set ca to a PEM \
                         bundle of the roots that sign this endpoint",
                    );
                }
                roots
            }
        };

        // Outer None: an error was reported. Inner None: no credential.
        let credential: Option<Option<&Credential>> = match &raw.credential {
            None => Some(None),
            Some(name) => match credential_names.get(name.as_str()) {
                None => {
                    self.push(
                        format!("{p}.credential"),
                        format!("unknown credential {name:?}"),
                    );
                    None
                }
                Some(&j) => match credentials.get(j) {
                    Some(Some(c)) => Some(Some(c)),
                    // The credential itself is broken and already reported.
                    _ => None,
                },
            },
        };
        // The credential kinds each adapter takes.
        if let (Some(kind), Some(Some(c))) = (adapter, credential) {
            let allowed: &[&str] = match kind {
                AdapterKind::GenericHttps => &["x509", "basic", "bearer"],
                AdapterKind::Mqtts => &["x509"],
                AdapterKind::AwsIotCore => &["x509", "aws-keys"],
                AdapterKind::AzureIotHub | AdapterKind::AzureEventHubs => &["azure-sas"],
                AdapterKind::GcpPubsub => &["gcp-service-account"],
                AdapterKind::AwsLambda => &["aws-keys"],
                AdapterKind::ThingsCloud => &["basic"],
            };
            if !allowed.contains(&c.kind_name()) {
                self.push(
                    format!("{p}.credential"),
                    format!(
                        "credential {:?} is of kind {:?}; adapter {:?} takes {}",
                        raw.credential.as_deref().unwrap_or_default(),
                        c.kind_name(),
                        kind.config_name(),
                        allowed
                            .iter()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                );
            }
        }
        let identity: Option<Option<&ClientIdentity>> = credential.map(|c| match c {
            Some(Credential::X509(identity)) => Some(identity),
            _ => None,
        });
        let cloud_credential: Option<std::sync::Arc<CloudCredential>> = match credential {
            Some(Some(Credential::Cloud(c))) => Some(c.clone()),
            _ => None,
        };
        self.check_cloud_keys(&p, adapter, raw);

        if is_mqtts {
            for (key, set) in [
                ("host_header", raw.host_header.is_some()),
                ("base_path", raw.base_path.is_some()),
            ] {
                if set {
                    self.push(format!("{p}.{key}"), "only for adapter \"https\"");
                }
            }
        }
        // An mqtts destination has no Host header and no base path: both stay empty.
        let host_header = match (&raw.host_header, &endpoint) {
            _ if is_mqtts => Some(String::new()),
            (Some(h), _) if is_valid_header_value(h) => Some(h.clone()),
            (Some(h), _) => {
                self.push(
                    format!("{p}.host_header"),
                    format!("invalid host_header {h:?}: must be visible ASCII without line breaks"),
                );
                None
            }
            (None, _) if public_host.is_some() => public_host.clone(),
            (None, Some(e)) if e.port == 443 => Some(e.host_as_written.clone()),
            (None, Some(_)) => endpoint_text.clone(),
            (None, None) => None,
        };

        if adapter.is_some_and(|k| k != AdapterKind::GenericHttps && k != AdapterKind::Mqtts)
            && raw.base_path.is_some()
        {
            self.push(format!("{p}.base_path"), "only for adapter \"https\"");
        }
        let base_path_text = match raw.base_path.as_deref() {
            _ if adapter != Some(AdapterKind::GenericHttps) => Some(String::new()),
            None => Some(String::new()),
            Some(text) => match normalize_path_prefix(text) {
                Ok(path) if path == "/" => Some(String::new()),
                Ok(path) => Some(path),
                Err(e) => {
                    self.push(
                        format!("{p}.base_path"),
                        format!("invalid base_path {text:?}: {e}"),
                    );
                    None
                }
            },
        };
        // The SIM placeholders are the only ones a path may name (one device, no topic).
        let base_path =
            base_path_text.and_then(|text| match Template::parse(&text, SIM_PLACEHOLDERS) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.push(
                        format!("{p}.base_path"),
                        format!("invalid base_path {text:?}: {e}"),
                    );
                    None
                }
            });

        // Outer None: an error was reported. Inner None: not an MQTT destination.
        let mqtt: Option<Option<MqttDestination>> = match (adapter, &raw.mqtt) {
            (Some(AdapterKind::Mqtts), Some(m)) => self
                .mqtt(&p, m, shards, default_max_publish_rate(adapter))
                .map(Some),
            (Some(AdapterKind::Mqtts), None) => {
                self.push(
                    format!("{p}.mqtt"),
                    "required for adapter \"mqtts\": add a [destination.mqtt] table with at \
                     least `mode` (\"session\" or \"aggregate\")",
                );
                None
            }
            // IoT Hub and AWS IoT Core over MQTT: compiled with the adapter's own settings
            // below.
            (Some(AdapterKind::AzureIotHub | AdapterKind::AwsIotCore), Some(_)) => Some(None),
            (Some(kind), Some(_)) => {
                self.push(
                    format!("{p}.mqtt"),
                    format!(
                        "only for adapter \"mqtts\", \"azure-iot-hub\" or \"aws-iot-core\" \
                         (adapter {:?} speaks HTTPS; its MQTT form is not built yet)",
                        kind.config_name()
                    ),
                );
                None
            }
            (Some(_), None) => Some(None),
            // Unknown adapter (already reported): still check the table's values.
            (None, Some(m)) => self.mqtt(&p, m, shards, None).map(Some),
            (None, None) => Some(None),
        };
        let token_ttl = self.token_ttl(&p, adapter, raw.token_ttl.as_ref());

        let envelope = match raw.envelope.as_deref() {
            None => Some(Envelope::None),
            Some(text) => Envelope::parse(text).or_else(|| {
                self.push(
                    format!("{p}.envelope"),
                    format!("unsupported envelope {text:?}; supported: \"none\", \"json\""),
                );
                None
            }),
        };

        let alpn = match adapter {
            Some(AdapterKind::Mqtts) => self.mqtts_alpn(&p, raw.alpn.as_deref()),
            Some(AdapterKind::AzureIotHub) if raw.mqtt.is_some() => {
                self.mqtts_alpn(&p, raw.alpn.as_deref())
            }
            Some(AdapterKind::AwsIotCore) if raw.mqtt.is_some() => {
                self.aws_iot_mqtt_alpn(&p, raw.alpn.as_deref(), endpoint.as_ref())
            }
            Some(AdapterKind::AwsIotCore) => self.aws_iot_alpn(
                &p,
                raw.alpn.as_deref(),
                endpoint.as_ref(),
                cloud_credential.is_none(),
            ),
            _ => self.alpn(&p, raw.alpn.as_deref()),
        };
        // Aggregate mode keeps its own upstream links: nothing to pre-handshake by default.
        let default_warm = match &raw.mqtt {
            Some(m)
                if m.mode == "aggregate"
                    && (is_mqtts || adapter == Some(AdapterKind::AwsIotCore)) =>
            {
                defaults::POOL_WARM_MQTT_AGGREGATE
            }
            _ => defaults::POOL_WARM,
        };
        let pool = self.pool(&p, &raw.pool, default_warm);

        let (
            Some(adapter),
            Some(addrs),
            Some(server_name),
            Some(roots),
            Some(identity),
            Some(host_header),
            Some(base_path),
            Some(alpn),
            Some(pool),
            Some(mqtt),
            Some(resolve),
            Some(envelope),
            Ok(id),
        ) = (
            adapter,
            addrs,
            server_name,
            roots,
            identity,
            host_header,
            base_path,
            alpn,
            pool,
            mqtt,
            resolve,
            envelope,
            u16::try_from(i),
        )
        else {
            return None;
        };
        let tls = match tls_material::build_client_config(roots, identity, &alpn) {
            Ok(config) => Arc::new(config),
            Err(e) => {
                self.push(p, e.to_string());
                return None;
            }
        };
        let authorization = match cloud_credential.as_deref() {
            Some(CloudCredential::Basic { username, password }) => Some(Secret(
                crate::adapters::auth::basic::basic_authorization(
                    username,
                    &String::from_utf8_lossy(&password.0),
                )
                .into(),
            )),
            Some(CloudCredential::Bearer { token }) => {
                let mut value = b"Bearer ".to_vec();
                value.extend_from_slice(&token.0);
                Some(Secret(value.into()))
            }
            _ => None,
        };
        let (adapter, token) = match (adapter, mqtt) {
            (AdapterKind::Mqtts, Some(mqtt)) => (Adapter::Mqtts(mqtt), None),
            (AdapterKind::GenericHttps, None) => (
                Adapter::Https(HttpsDestination {
                    host_header: host_header.clone(),
                    base_path,
                    authorization,
                }),
                None,
            ),
            // AWS IoT Core over MQTT: mutual TLS (the x509 credential is in `tls`), no token.
            (AdapterKind::AwsIotCore, None) if raw.mqtt.is_some() => {
                let m = raw.mqtt.as_ref()?;
                let x509 = identity.is_some();
                (self.aws_iot_core_mqtt(&p, raw, m, shards, x509)?, None)
            }
            (kind, None) => {
                let ttl = token_ttl?;
                let (adapter, token) =
                    self.cloud_adapter(&p, kind, raw, cloud_credential, &host_header, ttl)?;
                match (adapter, &raw.mqtt) {
                    (Adapter::AzureIotHub(https), Some(m)) => {
                        (self.azure_iot_hub_mqtt(&p, m, https)?, token)
                    }
                    (adapter, _) => (adapter, token),
                }
            }
            // `mqtt` is Some exactly for mqtts (checked above); unreachable in practice.
            (kind, _) => {
                self.push(
                    format!("{p}.adapter"),
                    format!("inconsistent settings for {kind:?}"),
                );
                return None;
            }
        };
        Some(DestinationPlan {
            id: DestinationId(id),
            name: raw.name.clone(),
            adapter,
            endpoint: endpoint_text.unwrap_or_default(),
            addrs,
            resolve,
            server_name,
            tls,
            pool,
            envelope,
            host_header,
            token,
        })
    }

    /// `destination.resolve_interval`: `Some(None)` when off (`"off"`, `"0"` or a zero
    /// duration), `None` after reporting an error.
    fn resolve_interval(
        &mut self,
        p: &str,
        value: Option<&RawDuration>,
    ) -> Option<Option<Duration>> {
        let path = format!("{p}.resolve_interval");
        let Some(RawDuration(text)) = value else {
            return Some(Some(defaults::RESOLVE_INTERVAL));
        };
        if text == "off" || text == "0" {
            return Some(None);
        }
        let min = defaults::MIN_RESOLVE_INTERVAL;
        let max = defaults::MAX_DURATION;
        match parse_duration(text) {
            Err(e) => {
                self.push(
                    path,
                    format!("invalid duration {text:?}: {e}, or \"off\" (or \"0\") to disable"),
                );
                None
            }
            Ok(d) if d.is_zero() => Some(None),
            Ok(d) if d < min || d > max => {
                self.push(
                    path,
                    format!(
                        "must be between {} and {}, or \"off\" (or \"0\") to disable, got {text:?}",
                        format_duration(min),
                        format_duration(max)
                    ),
                );
                None
            }
            Ok(d) => Some(Some(d)),
        }
    }

    fn resolve(&mut self, p: &str, endpoint: &Endpoint) -> Option<Vec<SocketAddr>> {
        let host = match &endpoint.host {
            EndpointHost::Ip(ip) => return Some(vec![SocketAddr::new(*ip, endpoint.port)]),
            EndpointHost::Dns(host) => host,
        };
        match self.env.resolve(host, endpoint.port) {
            Ok(addrs) if !addrs.is_empty() => Some(addrs),
            Ok(_) => {
                self.push(
                    format!("{p}.endpoint"),
                    format!("cannot resolve {host:?}: no addresses"),
                );
                None
            }
            Err(reason) => {
                self.push(
                    format!("{p}.endpoint"),
                    format!("cannot resolve {host:?}: {reason}"),
                );
                None
            }
        }
    }

    fn system_roots(&mut self) -> Option<RootCertStore> {
        if self.system_roots.is_none() {
            let certs = self.env.system_roots();
            self.system_roots = Some(tls_material::roots_from(certs));
        }
        self.system_roots.clone().flatten()
    }

    fn alpn(&mut self, p: &str, raw: Option<&[String]>) -> Option<Vec<String>> {
        let Some(list) = raw else {
            return Some(vec![defaults::ALPN.to_owned()]);
        };
        let mut ok = true;
        for (k, proto) in list.iter().enumerate() {
            if proto != defaults::ALPN && proto != "h2" {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!(
                        "unsupported ALPN protocol {proto:?}; supported: \"h2\", \"http/1.1\" \
                         (HTTP/2 when the server selects it, else HTTP/1.1)"
                    ),
                );
                ok = false;
            } else if list[..k].contains(proto) {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!("duplicate ALPN protocol {proto:?}"),
                );
                ok = false;
            }
        }
        ok.then(|| list.to_vec())
    }

    /// ALPN of an `mqtts` destination: any non-empty protocol names (AWS IoT Core on port 443
    /// wants `x-amzn-mqtt-ca`); none by default.
    fn mqtts_alpn(&mut self, p: &str, raw: Option<&[String]>) -> Option<Vec<String>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let mut ok = true;
        for (k, proto) in list.iter().enumerate() {
            let problem = if proto.is_empty() {
                Some("must not be empty".to_owned())
            } else if proto.len() > 255 {
                Some(format!(
                    "{} bytes long; an ALPN protocol name is at most 255 bytes",
                    proto.len()
                ))
            } else if list[..k].contains(proto) {
                Some(format!("duplicate ALPN protocol {proto:?}"))
            } else {
                None
            };
            if let Some(message) = problem {
                self.push(format!("{p}.alpn[{k}]"), message);
                ok = false;
            }
        }
        ok.then(|| list.to_vec())
    }
}
