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
use crate::policy::envelope::Envelope;
use crate::policy::template::SIM_PLACEHOLDERS;
use crate::policy::{
    Adapter, AdapterKind, DestinationId, DestinationPlan, HttpsDestination, MqttDestination,
    Reresolve, Template,
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
        let adapter = match raw.adapter.as_str() {
            "https" => Some(AdapterKind::GenericHttps),
            "mqtts" => Some(AdapterKind::Mqtts),
            other => {
                self.push(
                    format!("{p}.adapter"),
                    format!("unsupported adapter {other:?}; supported: \"https\", \"mqtts\""),
                );
                None
            }
        };
        let is_mqtts = adapter == Some(AdapterKind::Mqtts);

        let endpoint = match parse_endpoint(&raw.endpoint) {
            Ok(e) => Some(e),
            Err(e) => {
                self.push(
                    format!("{p}.endpoint"),
                    format!("invalid endpoint {:?}: {e}", raw.endpoint),
                );
                None
            }
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

        // Outer None: an error was reported. Inner None: no client certificate.
        let identity: Option<Option<&ClientIdentity>> = match &raw.credential {
            None => Some(None),
            Some(name) => match credential_names.get(name.as_str()) {
                None => {
                    self.push(
                        format!("{p}.credential"),
                        format!("unknown credential {name:?}"),
                    );
                    None
                }
                // Only x509 exists today; later kinds (sas, sigv4, ...) are not client
                // certificates and must be rejected here with "must be kind x509".
                Some(&j) => match credentials.get(j) {
                    Some(Some(Credential::X509(identity))) => Some(Some(identity)),
                    // The credential itself is broken and already reported.
                    _ => None,
                },
            },
        };

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
            (None, Some(e)) if e.port == 443 => Some(e.host_as_written.clone()),
            (None, Some(_)) => Some(raw.endpoint.clone()),
            (None, None) => None,
        };

        let base_path_text = match raw.base_path.as_deref() {
            _ if is_mqtts => Some(String::new()),
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
            (Some(AdapterKind::Mqtts), Some(m)) => self.mqtt(&p, m, shards).map(Some),
            (Some(AdapterKind::Mqtts), None) => {
                self.push(
                    format!("{p}.mqtt"),
                    "required for adapter \"mqtts\": add a [destination.mqtt] table with at \
                     least `mode` (\"session\" or \"aggregate\")",
                );
                None
            }
            (Some(AdapterKind::GenericHttps), Some(_)) => {
                self.push(format!("{p}.mqtt"), "only for adapter \"mqtts\"");
                None
            }
            (Some(AdapterKind::GenericHttps), None) => Some(None),
            // Unknown adapter (already reported): still check the table's values.
            (None, Some(m)) => self.mqtt(&p, m, shards).map(Some),
            (None, None) => Some(None),
        };

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

        let alpn = if is_mqtts {
            self.mqtts_alpn(&p, raw.alpn.as_deref())
        } else {
            self.alpn(&p, raw.alpn.as_deref())
        };
        // Aggregate mode keeps its own upstream links: nothing to pre-handshake by default.
        let default_warm = match &raw.mqtt {
            Some(m) if is_mqtts && m.mode == "aggregate" => defaults::POOL_WARM_MQTT_AGGREGATE,
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
        let adapter = match (adapter, mqtt) {
            (AdapterKind::Mqtts, Some(mqtt)) => Adapter::Mqtts(mqtt),
            (AdapterKind::GenericHttps, None) => Adapter::Https(HttpsDestination {
                host_header,
                base_path,
            }),
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
            endpoint: raw.endpoint.clone(),
            addrs,
            resolve,
            server_name,
            tls,
            pool,
            envelope,
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
            if proto != defaults::ALPN {
                self.push(
                    format!("{p}.alpn[{k}]"),
                    format!(
                        "unsupported ALPN protocol {proto:?}; supported: \"http/1.1\" \
                         (the https adapter speaks HTTP/1.1 only)"
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
