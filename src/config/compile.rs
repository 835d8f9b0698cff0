//! Semantic validation and compilation of a [`RawConfig`] into a [`Plan`].
//!
//! Every check pushes a [`FieldError`] with the path of the offending key and carries on, so
//! one run reports every problem in the file. A plan is assembled only when no error was found.
//!
//! IO happens here on purpose (the plan must be ready to serve): credential and CA files are
//! read, endpoints resolved, system roots loaded. All of it goes through [`Environment`] for DNS,
//! system roots and CPU count, so tests run without a network. What this does not do: parse
//! TOML (see `schema`), or start anything.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;

use super::schema::{
    RawConfig, RawDestination, RawDuration, RawGateway, RawListener, RawPool, RawShards,
};
use super::tls_material::{self, ClientIdentity};
use super::values::{
    format_duration, is_valid_header_value, is_valid_name, normalize_path_prefix, parse_duration,
    parse_endpoint, Endpoint, EndpointHost, MAX_NAME_LEN,
};
use super::FieldError;
use crate::policy::{
    AdapterKind, DestinationId, DestinationPlan, GatewaySettings, GroupId, GroupPlan,
    HttpListenerLimits, HttpRoute, ListenerId, ListenerPlan, ListenerProtocol, Plan, PoolSettings,
};

/// Defaults and ranges, one place; `docs/configuration.md` repeats them.
pub(crate) mod defaults {
    use std::time::Duration;

    /// Most shards accepted (`gateway.shards`).
    pub const MAX_SHARDS: i64 = 1024;
    /// `gateway.admin`.
    pub const ADMIN: &str = "127.0.0.1:9180";
    /// `gateway.default_group`.
    pub const DEFAULT_GROUP: &str = "default";
    /// `gateway.ring_entries`.
    pub const RING_ENTRIES: u32 = 4096;
    /// `gateway.recv_buffers`.
    pub const RECV_BUFFERS: u16 = 4096;
    /// `gateway.recv_buffer_size`.
    pub const RECV_BUFFER_SIZE: u32 = 16384;
    /// `gateway.backlog`.
    pub const BACKLOG: i32 = 4096;
    /// `listener[].max_head_bytes`.
    pub const MAX_HEAD_BYTES: usize = 8192;
    /// `listener[].max_headers`.
    pub const MAX_HEADERS: usize = 100;
    /// `listener[].max_body_bytes`.
    pub const MAX_BODY_BYTES: u64 = 1_048_576;
    /// `listener[].header_timeout`.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `listener[].body_timeout`.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// `listener[].idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `destination[].alpn`.
    pub const ALPN: &str = "http/1.1";
    /// `destination[].pool.warm`.
    pub const POOL_WARM: usize = 2;
    /// `destination[].pool.max_idle`.
    pub const POOL_MAX_IDLE: usize = 64;
    /// `destination[].pool.idle_timeout`.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `destination[].pool.connect_timeout`.
    pub const POOL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `destination[].pool.response_timeout`.
    pub const POOL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `destination[].pool.backoff_initial`.
    pub const POOL_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    /// `destination[].pool.backoff_max`.
    pub const POOL_BACKOFF_MAX: Duration = Duration::from_secs(10);
    /// Shortest duration accepted anywhere.
    pub const MIN_DURATION: Duration = Duration::from_millis(1);
    /// Longest duration accepted anywhere.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
}

/// Most entries of one kind: ids are `u16`.
const MAX_ENTRIES: usize = 1 << 16;

/// What compilation needs from the outside world.
pub(crate) trait Environment {
    /// Resolves a DNS name; the error is a human-readable reason.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
    /// The platform's trusted roots (may be empty).
    fn system_roots(&self) -> Vec<CertificateDer<'static>>;
    /// CPUs this process may run on.
    fn available_cpus(&self) -> Option<usize>;
}

/// The real environment: system resolver, native root store, `available_parallelism`.
pub(crate) struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        (host, port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }

    fn system_roots(&self) -> Vec<CertificateDer<'static>> {
        rustls_native_certs::load_native_certs().certs
    }

    fn available_cpus(&self) -> Option<usize> {
        std::thread::available_parallelism()
            .ok()
            .map(std::num::NonZeroUsize::get)
    }
}

/// Validates and compiles. `base_dir` resolves relative file paths.
pub(crate) fn compile(
    raw: &RawConfig,
    base_dir: &Path,
    env: &dyn Environment,
) -> Result<Plan, Vec<FieldError>> {
    let mut compiler = Compiler {
        base_dir,
        env,
        errors: Vec::new(),
        system_roots: None,
    };
    let plan = compiler.compile(raw);
    match plan {
        Some(plan) if compiler.errors.is_empty() => Ok(plan),
        _ => {
            if compiler.errors.is_empty() {
                compiler.push(
                    "",
                    "internal error: plan incomplete without a reported cause",
                );
            }
            Err(compiler.errors)
        }
    }
}

struct Compiler<'a> {
    base_dir: &'a Path,
    env: &'a dyn Environment,
    errors: Vec<FieldError>,
    /// Loaded on first use; `Some(None)` = loaded, nothing usable.
    system_roots: Option<Option<RootCertStore>>,
}

/// A validated credential.
enum Credential {
    X509(ClientIdentity),
}

impl Compiler<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn compile(&mut self, raw: &RawConfig) -> Option<Plan> {
        for (section, len) in [
            ("listener", raw.listener.len()),
            ("credential", raw.credential.len()),
            ("destination", raw.destination.len()),
            ("group", raw.group.len()),
        ] {
            if len > MAX_ENTRIES {
                self.push(
                    section,
                    format!("too many entries: {len} (at most {MAX_ENTRIES})"),
                );
            }
        }
        if raw.listener.is_empty() {
            self.push("listener", "at least one [[listener]] is required");
        }

        let listener_names =
            self.register_names("listener", raw.listener.iter().map(|l| l.name.as_str()));
        let credential_names =
            self.register_names("credential", raw.credential.iter().map(|c| c.name.as_str()));
        let destination_names = self.register_names(
            "destination",
            raw.destination.iter().map(|d| d.name.as_str()),
        );
        let group_names = self.register_names("group", raw.group.iter().map(|g| g.name.as_str()));

        let gateway = self.gateway(&raw.gateway, &group_names);
        let listeners = self.listeners(&raw.listener);
        if let (Some(gateway), Some(listeners)) = (&gateway, &listeners) {
            self.check_admin_vs_listeners(gateway.admin, listeners);
        }

        let credentials: Vec<Option<Credential>> = raw
            .credential
            .iter()
            .enumerate()
            .map(|(i, c)| self.credential(i, c))
            .collect();

        let destinations: Vec<Option<DestinationPlan>> = raw
            .destination
            .iter()
            .enumerate()
            .map(|(i, d)| self.destination(i, d, &credential_names, &credentials))
            .collect();

        let groups = self.groups(raw, &listener_names, &destination_names);

        Some(Plan {
            gateway: gateway?,
            listeners: listeners?,
            destinations: destinations.into_iter().collect::<Option<Vec<_>>>()?,
            groups: groups?,
        })
    }

    /// Checks format and uniqueness of the names in one section; returns name → first index.
    fn register_names<'r>(
        &mut self,
        section: &str,
        names: impl Iterator<Item = &'r str>,
    ) -> HashMap<&'r str, usize> {
        let mut seen: HashMap<&'r str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let path = format!("{section}[{i}].name");
            if !is_valid_name(name) {
                self.push(
                    &path,
                    format!(
                        "invalid name {name:?}: use 1 to {MAX_NAME_LEN} characters from a-z, 0-9, '_' and '-'"
                    ),
                );
            }
            match seen.get(name) {
                Some(first) => self.push(
                    path,
                    format!("duplicate {section} name {name:?} (first defined at {section}[{first}].name)"),
                ),
                None => {
                    seen.insert(name, i);
                }
            }
        }
        seen
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: T,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        let Some(value) = value else {
            return Some(default);
        };
        if !range.contains(&value) {
            self.push(
                path,
                format!(
                    "must be in {}..={}, got {value}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        match T::try_from(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.push(path, format!("{value} does not fit this platform"));
                None
            }
        }
    }

    fn power_of_two<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: T,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        if let Some(v) = value {
            if range.contains(&v) && v.count_ones() != 1 {
                self.push(path, format!("must be a power of two, got {v}"));
                return None;
            }
        }
        self.int(path, value, default, range)
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&RawDuration>,
        default: Duration,
    ) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(default);
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if !(defaults::MIN_DURATION..=defaults::MAX_DURATION).contains(&d) => {
                self.push(
                    path,
                    format!(
                        "must be between {} and {}, got {text:?}",
                        format_duration(defaults::MIN_DURATION),
                        format_duration(defaults::MAX_DURATION)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn gateway(
        &mut self,
        raw: &RawGateway,
        group_names: &HashMap<&str, usize>,
    ) -> Option<GatewaySettings> {
        let shards = match &raw.shards {
            None => self.auto_shards(),
            Some(RawShards::Word(word)) if word == "auto" => self.auto_shards(),
            Some(RawShards::Word(word)) => {
                self.push(
                    "gateway.shards",
                    format!(
                        "expected \"auto\" or an integer in 1..={}, got {word:?}",
                        defaults::MAX_SHARDS
                    ),
                );
                None
            }
            Some(RawShards::Count(n)) => {
                self.int("gateway.shards", Some(*n), 1, 1..=defaults::MAX_SHARDS)
            }
        };

        let allow_non_loopback = raw.admin_allow_non_loopback.unwrap_or(false);
        let admin_text = raw.admin.as_deref().unwrap_or(defaults::ADMIN);
        let admin = if admin_text == "off" {
            Some(None)
        } else {
            match admin_text.parse::<SocketAddr>() {
                Err(_) => {
                    self.push(
                        "gateway.admin",
                        format!(
                            "invalid socket address {admin_text:?} (expected ip:port, IPv6 in brackets, or \"off\")"
                        ),
                    );
                    None
                }
                Ok(addr) if !addr.ip().is_loopback() && !allow_non_loopback => {
                    self.push(
                        "gateway.admin",
                        format!(
                            "{addr} is not a loopback address; the admin endpoint can reload the \
                             config, so set gateway.admin_allow_non_loopback = true to expose it"
                        ),
                    );
                    None
                }
                Ok(addr) => Some(Some(addr)),
            }
        };

        let group_name = raw
            .default_group
            .as_deref()
            .unwrap_or(defaults::DEFAULT_GROUP);
        let default_group = match group_names.get(group_name) {
            Some(&i) => u16::try_from(i).ok().map(GroupId),
            None => {
                let hint = if group_names.is_empty() {
                    " (no [[group]] is defined)"
                } else {
                    ""
                };
                self.push(
                    "gateway.default_group",
                    format!("unknown group {group_name:?}{hint}"),
                );
                None
            }
        };

        let ring_entries = self.power_of_two(
            "gateway.ring_entries",
            raw.ring_entries,
            defaults::RING_ENTRIES,
            64..=32768,
        );
        let recv_buffers = self.power_of_two(
            "gateway.recv_buffers",
            raw.recv_buffers,
            defaults::RECV_BUFFERS,
            16..=32768,
        );
        let recv_buffer_size = self.int(
            "gateway.recv_buffer_size",
            raw.recv_buffer_size,
            defaults::RECV_BUFFER_SIZE,
            1024..=1_048_576,
        );
        let backlog = self.int("gateway.backlog", raw.backlog, defaults::BACKLOG, 1..=65535);

        Some(GatewaySettings {
            shards: shards?,
            pin_shards: raw.pin_shards.unwrap_or(true),
            admin: admin?,
            default_group: default_group?,
            ring_entries: ring_entries?,
            recv_buffers: recv_buffers?,
            recv_buffer_size: recv_buffer_size?,
            backlog: backlog?,
        })
    }

    fn auto_shards(&mut self) -> Option<usize> {
        match self.env.available_cpus() {
            Some(n) => Some(n.clamp(1, defaults::MAX_SHARDS as usize)),
            None => {
                self.push(
                    "gateway.shards",
                    "\"auto\": cannot determine how many CPUs this process may use; set a number",
                );
                None
            }
        }
    }

    fn listeners(&mut self, raw: &[RawListener]) -> Option<Vec<ListenerPlan>> {
        let mut binds: Vec<(usize, SocketAddr)> = Vec::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, l) in raw.iter().enumerate() {
            let p = format!("listener[{i}]");
            let protocol = match l.protocol.as_str() {
                "http" => Some(ListenerProtocol::Http),
                other => {
                    self.push(
                        format!("{p}.protocol"),
                        format!("unsupported protocol {other:?}; supported: \"http\""),
                    );
                    None
                }
            };
            let bind = match l.bind.parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Some((j, other)) = binds.iter().find(|(_, b)| addrs_overlap(*b, addr)) {
                        self.push(
                            format!("{p}.bind"),
                            format!("{addr} is already used by listener[{j}].bind ({other})"),
                        );
                    }
                    binds.push((i, addr));
                    Some(addr)
                }
                Err(_) => {
                    self.push(
                        format!("{p}.bind"),
                        format!(
                            "invalid socket address {:?} (expected ip:port, IPv6 in brackets)",
                            l.bind
                        ),
                    );
                    None
                }
            };
            let http = self.http_limits(&p, l);
            let id = u16::try_from(i).ok().map(ListenerId);
            if let (Some(id), Some(protocol), Some(bind), Some(http)) = (id, protocol, bind, http) {
                out.push(ListenerPlan {
                    id,
                    name: l.name.clone(),
                    protocol,
                    bind,
                    http,
                    // MQTT listener settings: filled in by the MQTT config work.
                    mqtt: crate::policy::MqttListenerLimits {
                        max_packet_size: 256 * 1024,
                        connect_timeout: std::time::Duration::from_secs(10),
                        receive_maximum: 64,
                    },
                });
            }
        }
        (out.len() == raw.len()).then_some(out)
    }

    fn http_limits(&mut self, p: &str, l: &RawListener) -> Option<HttpListenerLimits> {
        let max_head_bytes = self.int(
            &format!("{p}.max_head_bytes"),
            l.max_head_bytes,
            defaults::MAX_HEAD_BYTES,
            256..=1_048_576,
        );
        let max_headers = self.int(
            &format!("{p}.max_headers"),
            l.max_headers,
            defaults::MAX_HEADERS,
            1..=1024,
        );
        let max_body_bytes = self.int(
            &format!("{p}.max_body_bytes"),
            l.max_body_bytes,
            defaults::MAX_BODY_BYTES,
            0..=(1 << 30),
        );
        let header_timeout = self.duration(
            &format!("{p}.header_timeout"),
            l.header_timeout.as_ref(),
            defaults::HEADER_TIMEOUT,
        );
        let body_timeout = self.duration(
            &format!("{p}.body_timeout"),
            l.body_timeout.as_ref(),
            defaults::BODY_TIMEOUT,
        );
        let idle_timeout = self.duration(
            &format!("{p}.idle_timeout"),
            l.idle_timeout.as_ref(),
            defaults::IDLE_TIMEOUT,
        );
        let max_requests_per_connection = self.int(
            &format!("{p}.max_requests_per_connection"),
            l.max_requests_per_connection,
            0u32,
            0..=i64::from(u32::MAX),
        );
        Some(HttpListenerLimits {
            max_head_bytes: max_head_bytes?,
            max_headers: max_headers?,
            max_body_bytes: max_body_bytes?,
            header_timeout: header_timeout?,
            body_timeout: body_timeout?,
            idle_timeout: idle_timeout?,
            max_requests_per_connection: max_requests_per_connection?,
        })
    }

    fn check_admin_vs_listeners(&mut self, admin: Option<SocketAddr>, listeners: &[ListenerPlan]) {
        let Some(admin) = admin else { return };
        if let Some(l) = listeners.iter().find(|l| addrs_overlap(l.bind, admin)) {
            self.push(
                "gateway.admin",
                format!(
                    "{admin} is already used by listener[{}].bind ({})",
                    l.id.0, l.bind
                ),
            );
        }
    }

    fn credential(&mut self, i: usize, raw: &super::schema::RawCredential) -> Option<Credential> {
        let p = format!("credential[{i}]");
        let kind_ok = match raw.kind.as_str() {
            "x509" => true,
            other => {
                self.push(
                    format!("{p}.kind"),
                    format!("unsupported credential kind {other:?}; supported: \"x509\""),
                );
                false
            }
        };
        let cert_path = self.base_dir.join(&raw.cert);
        let chain = match tls_material::load_certificates(&cert_path) {
            Ok(chain) => Some(chain),
            Err(e) => {
                self.push(format!("{p}.cert"), format!("{e}: {}", cert_path.display()));
                None
            }
        };
        let key_path = self.base_dir.join(&raw.key);
        let key = match tls_material::load_private_key(&key_path) {
            Ok(key) => Some(key),
            Err(e) => {
                self.push(format!("{p}.key"), format!("{e}: {}", key_path.display()));
                None
            }
        };
        let (Some(chain), Some(key)) = (chain, key) else {
            return None;
        };
        if let Err(e) = tls_material::check_key_pair(&chain, &key) {
            self.push(format!("{p}.key"), format!("{e}: {}", key_path.display()));
            return None;
        }
        kind_ok.then_some(Credential::X509(ClientIdentity { chain, key }))
    }

    fn destination(
        &mut self,
        i: usize,
        raw: &RawDestination,
        credential_names: &HashMap<&str, usize>,
        credentials: &[Option<Credential>],
    ) -> Option<DestinationPlan> {
        let p = format!("destination[{i}]");
        let adapter = match raw.adapter.as_str() {
            "https" => Some(AdapterKind::GenericHttps),
            other => {
                self.push(
                    format!("{p}.adapter"),
                    format!("unsupported adapter {other:?}; supported: \"https\""),
                );
                None
            }
        };

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

        let host_header = match (&raw.host_header, &endpoint) {
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

        let base_path = match raw.base_path.as_deref() {
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

        let alpn = self.alpn(&p, raw.alpn.as_deref());
        let pool = self.pool(&p, &raw.pool);

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
        Some(DestinationPlan {
            id: DestinationId(id),
            name: raw.name.clone(),
            adapter,
            endpoint: raw.endpoint.clone(),
            addrs,
            server_name,
            host_header,
            base_path,
            tls,
            pool,
            mqtt: None,
        })
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

    fn pool(&mut self, p: &str, raw: &RawPool) -> Option<PoolSettings> {
        let warm = self.int(
            &format!("{p}.pool.warm"),
            raw.warm,
            defaults::POOL_WARM,
            0..=1024,
        );
        let max_idle = self.int(
            &format!("{p}.pool.max_idle"),
            raw.max_idle,
            defaults::POOL_MAX_IDLE,
            0..=65536,
        );
        if let (Some(warm), Some(max_idle)) = (warm, max_idle) {
            if warm > max_idle {
                self.push(
                    format!("{p}.pool.warm"),
                    format!(
                        "{warm} exceeds pool.max_idle ({max_idle}); warm connections are idle ones"
                    ),
                );
            }
        }
        let idle_timeout = self.duration(
            &format!("{p}.pool.idle_timeout"),
            raw.idle_timeout.as_ref(),
            defaults::POOL_IDLE_TIMEOUT,
        );
        let connect_timeout = self.duration(
            &format!("{p}.pool.connect_timeout"),
            raw.connect_timeout.as_ref(),
            defaults::POOL_CONNECT_TIMEOUT,
        );
        let response_timeout = self.duration(
            &format!("{p}.pool.response_timeout"),
            raw.response_timeout.as_ref(),
            defaults::POOL_RESPONSE_TIMEOUT,
        );
        let backoff_initial = self.duration(
            &format!("{p}.pool.backoff_initial"),
            raw.backoff_initial.as_ref(),
            defaults::POOL_BACKOFF_INITIAL,
        );
        let backoff_max = self.duration(
            &format!("{p}.pool.backoff_max"),
            raw.backoff_max.as_ref(),
            defaults::POOL_BACKOFF_MAX,
        );
        if let (Some(initial), Some(max)) = (backoff_initial, backoff_max) {
            if initial > max {
                self.push(
                    format!("{p}.pool.backoff_initial"),
                    format!(
                        "{} exceeds pool.backoff_max ({})",
                        format_duration(initial),
                        format_duration(max)
                    ),
                );
            }
        }
        Some(PoolSettings {
            warm: warm?,
            max_idle: max_idle?,
            idle_timeout: idle_timeout?,
            connect_timeout: connect_timeout?,
            response_timeout: response_timeout?,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
        })
    }

    fn groups(
        &mut self,
        raw: &RawConfig,
        listener_names: &HashMap<&str, usize>,
        destination_names: &HashMap<&str, usize>,
    ) -> Option<Vec<GroupPlan>> {
        let mut out = Vec::with_capacity(raw.group.len());
        for (g, group) in raw.group.iter().enumerate() {
            let mut routes = Vec::with_capacity(group.routes.len());
            let mut seen: HashMap<(usize, String), usize> = HashMap::new();
            let mut ok = true;
            for (r, route) in group.routes.iter().enumerate() {
                let p = format!("group[{g}].routes[{r}]");
                let listener = listener_names.get(route.listener.as_str()).copied();
                if listener.is_none() {
                    self.push(
                        format!("{p}.listener"),
                        format!("unknown listener {:?}", route.listener),
                    );
                }
                let destination = destination_names.get(route.destination.as_str()).copied();
                if destination.is_none() {
                    self.push(
                        format!("{p}.destination"),
                        format!("unknown destination {:?}", route.destination),
                    );
                }
                let path = match normalize_path_prefix(&route.path) {
                    Ok(path) => Some(path),
                    Err(e) => {
                        self.push(
                            format!("{p}.path"),
                            format!("invalid path {:?}: {e}", route.path),
                        );
                        None
                    }
                };
                let (Some(listener), Some(destination), Some(path)) = (listener, destination, path)
                else {
                    ok = false;
                    continue;
                };
                if let Some(first) = seen.get(&(listener, path.clone())) {
                    self.push(
                        format!("{p}.path"),
                        format!(
                            "duplicate route: same listener and path {path:?} as group[{g}].routes[{first}]"
                        ),
                    );
                    ok = false;
                    continue;
                }
                seen.insert((listener, path.clone()), r);
                let (Ok(listener), Ok(destination)) =
                    (u16::try_from(listener), u16::try_from(destination))
                else {
                    ok = false;
                    continue;
                };
                routes.push(HttpRoute {
                    listener: ListenerId(listener),
                    path_prefix: path,
                    destination: DestinationId(destination),
                });
            }
            // Longest prefix first; the sort is stable, so equal lengths keep config order.
            routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
            match u16::try_from(g) {
                Ok(id) if ok => out.push(GroupPlan {
                    id: GroupId(id),
                    name: group.name.clone(),
                    http_routes: routes,
                    mqtt_routes: Vec::new(),
                }),
                _ => {}
            }
        }
        (out.len() == raw.group.len()).then_some(out)
    }
}

/// Two bind addresses collide when they share a non-zero port and family, and either the IPs
/// are equal or one of them is the unspecified address. IPv4 and IPv6 are never compared:
/// `[::]:80` beside `0.0.0.0:80` is the usual dual listener (shards bind IPv6 sockets
/// v6-only).
fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::addrs_overlap;

    #[test]
    fn bind_overlap_rules() {
        let a = |s: &str| s.parse().unwrap();
        assert!(addrs_overlap(a("0.0.0.0:80"), a("0.0.0.0:80")));
        assert!(addrs_overlap(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(addrs_overlap(a("[::1]:80"), a("[::]:80")));
        assert!(!addrs_overlap(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!addrs_overlap(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!addrs_overlap(a("0.0.0.0:0"), a("0.0.0.0:0")));
        assert!(!addrs_overlap(a("0.0.0.0:80"), a("[::]:80")));
    }
}
