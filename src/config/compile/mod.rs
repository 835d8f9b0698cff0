//! Semantic validation and compilation of a [`RawConfig`] into a [`Plan`].
//!
//! Every check pushes a [`FieldError`] with the path of the offending key and carries on, so
//! one run reports every problem in the file. A plan is assembled only when no error was found.
//!
//! IO happens here on purpose (the plan must be ready to serve): credential, CA and MQTT
//! password files are read, endpoints resolved, system roots loaded. DNS, system roots and CPU
//! count go through [`Environment`], so tests run without a network. What this does not do:
//! parse TOML (see `schema`), or start anything.
//!
//! SIMs (`[[sim]]`, `gateway.sims_file`) are compiled in `sims`, after the group names are
//! known. MQTT rules live here too: which listener keys belong to which protocol, the per-mode
//! defaults and placeholder sets of `[destination.mqtt]` templates, and that HTTP listeners
//! route to `https` destinations by path while MQTT listeners route to one `mqtts` destination.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;

use super::schema::{
    RawConfig, RawDestination, RawDuration, RawGateway, RawListener, RawMqtt, RawPool, RawShards,
};
use super::tls_material::{self, ClientIdentity};
use super::values::{
    format_duration, is_valid_header_value, is_valid_name, normalize_path_prefix, parse_duration,
    parse_endpoint, Endpoint, EndpointHost, MAX_NAME_LEN,
};
use super::FieldError;
use crate::policy::attach::{Attach, AttachField};
use crate::policy::template::Placeholder;
use crate::policy::{
    Adapter, AdapterKind, DestinationId, DestinationPlan, ErrorDetail, GatewaySettings, GroupId,
    GroupPlan, HttpListenerLimits, HttpRoute, HttpsDestination, ListenerId, ListenerKind,
    ListenerPlan, ListenerProtocol, MqttDestination, MqttListenerLimits, MqttMode, MqttRoute,
    MqttUpstreamVersion, Plan, PoolSettings, Reresolve, Secret, Template, TemplateError,
    UnknownSource, WhileDown, MQTT_DOWN_AFTER, MQTT_DOWN_AFTER_MIN, MQTT_LINGER_MAX,
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
    /// `gateway.reserved_fds` default: this share of the open-file limit, ...
    pub const RESERVED_FDS_DIVISOR: u64 = 16;
    /// ... but at least this many ...
    pub const RESERVED_FDS_MIN: u64 = 32;
    /// ... and at most this many.
    pub const RESERVED_FDS_MAX: u64 = 1024;
    /// `gateway.max_connections` when the open-file limit is unknown or unlimited.
    pub const MAX_CONNECTIONS_UNKNOWN_LIMIT: usize = 65_536;
    /// Highest `max_connections` accepted (gateway or listener).
    pub const MAX_CONNECTIONS_CAP: i64 = 100_000_000;
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
    /// `destination[].pool.max_connecting` (0: no limit).
    pub const POOL_MAX_CONNECTING: usize = 0;
    /// `destination[].pool.max_age`.
    pub const POOL_MAX_AGE: Duration = Duration::from_secs(300);
    /// `destination[].pool.connect_timeout`.
    pub const POOL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `destination[].pool.response_timeout`.
    pub const POOL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `destination[].pool.backoff_initial`.
    pub const POOL_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    /// `destination[].pool.backoff_max`.
    pub const POOL_BACKOFF_MAX: Duration = Duration::from_secs(10);
    /// `listener[].max_packet_size` (MQTT).
    pub const MQTT_MAX_PACKET_SIZE: u32 = 256 * 1024;
    /// `listener[].connect_timeout` (MQTT).
    pub const MQTT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `listener[].receive_maximum` (MQTT).
    pub const MQTT_RECEIVE_MAXIMUM: u16 = 64;
    /// `destination[].pool.warm` of an `mqtts` destination in aggregate mode.
    pub const POOL_WARM_MQTT_AGGREGATE: usize = 0;
    /// `destination[].mqtt.client_id` in session mode.
    pub const MQTT_SESSION_CLIENT_ID: &str = "{client_id}";
    /// `destination[].mqtt.client_id` in aggregate mode.
    pub const MQTT_AGGREGATE_CLIENT_ID: &str = "simgate-{shard}-{conn}";
    /// `destination[].mqtt.topic` in session mode.
    pub const MQTT_SESSION_TOPIC: &str = "{topic}";
    /// `destination[].mqtt.topic` in aggregate mode.
    pub const MQTT_AGGREGATE_TOPIC: &str = "devices/{client_id}/{topic}";
    /// `destination[].mqtt.keep_alive`.
    pub const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(60);
    /// Longest `destination[].mqtt.keep_alive`: the MQTT field is a `u16` of seconds.
    pub const MQTT_MAX_KEEP_ALIVE: Duration = Duration::from_secs(u16::MAX as u64);
    /// `destination[].mqtt.connections_per_shard`.
    pub const MQTT_CONNECTIONS_PER_SHARD: usize = 1;
    /// `destination[].mqtt.max_inflight`.
    pub const MQTT_MAX_INFLIGHT: u16 = 256;
    /// `destination[].resolve_interval`.
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
    /// Shortest non-zero `destination[].resolve_interval`: lookups more often than this only
    /// load the resolver.
    pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
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
    /// The process's open-file limit (soft `RLIMIT_NOFILE`), if known.
    fn open_files_limit(&self) -> Option<u64>;
}

/// The real environment: system resolver (see `dns`), native root store,
/// `available_parallelism`.
pub(crate) struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        super::dns::resolve_system(host, port)
    }

    fn system_roots(&self) -> Vec<CertificateDer<'static>> {
        rustls_native_certs::load_native_certs().certs
    }

    fn available_cpus(&self) -> Option<usize> {
        std::thread::available_parallelism()
            .ok()
            .map(std::num::NonZeroUsize::get)
    }

    fn open_files_limit(&self) -> Option<u64> {
        super::fd_limit::soft_limit()
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
            .map(|(i, d)| {
                let shards = gateway.as_ref().map(|g| g.shards);
                self.destination(i, d, &credential_names, &credentials, shards)
            })
            .collect();

        let groups = self.groups(raw, &listener_names, &destination_names);
        let sims = match super::sims::compile_sims(raw, self.base_dir, &group_names) {
            Ok(sims) => Some(sims),
            Err(errors) => {
                self.errors.extend(errors);
                None
            }
        };

        Some(Plan {
            gateway: gateway?,
            listeners: listeners?,
            destinations: destinations.into_iter().collect::<Option<Vec<_>>>()?,
            groups: groups?,
            sims: sims?,
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
        let (max_connections, reserved_fds) = self.connection_caps(raw);

        Some(GatewaySettings {
            shards: shards?,
            pin_shards: raw.pin_shards.unwrap_or(true),
            admin: admin?,
            default_group: default_group?,
            ring_entries: ring_entries?,
            recv_buffers: recv_buffers?,
            recv_buffer_size: recv_buffer_size?,
            backlog: backlog?,
            max_connections: max_connections?,
            reserved_fds: reserved_fds?,
            open_files_limit: self.env.open_files_limit(),
        })
    }

    /// `gateway.max_connections` and `gateway.reserved_fds`. Defaults come from the open-file
    /// limit: a reserve of 1/16 of it (32..=1024 descriptors) for upstream headroom, admin,
    /// listeners, rings and files, and half of the rest for device connections, because each
    /// device connection may hold an upstream connection too (session-mode MQTT always does,
    /// HTTP while a request is in flight). An explicit `max_connections` may use all of the
    /// rest (aggregate MQTT devices need one descriptor each) but not more.
    fn connection_caps(&mut self, raw: &RawGateway) -> (Option<usize>, Option<usize>) {
        let limit = self
            .env
            .open_files_limit()
            .filter(|&l| l < u64::from(u32::MAX));
        let default_reserve = limit.map_or(defaults::RESERVED_FDS_MIN, |l| {
            (l / defaults::RESERVED_FDS_DIVISOR)
                .clamp(defaults::RESERVED_FDS_MIN, defaults::RESERVED_FDS_MAX)
        });
        let reserved = self.int(
            "gateway.reserved_fds",
            raw.reserved_fds,
            default_reserve as usize,
            0..=1_000_000,
        );
        let Some(reserved_n) = reserved else {
            return (None, None);
        };
        let usable = limit.map(|l| l.saturating_sub(reserved_n as u64) as usize);
        if let (Some(l), Some(0)) = (limit, usable) {
            self.push(
                "gateway.reserved_fds",
                format!(
                    "{reserved_n} leaves no descriptor for devices under the open-file limit \
                     of {l}; raise the limit (ulimit -n, systemd LimitNOFILE=) or lower it"
                ),
            );
            return (None, reserved);
        }
        let derived = usable.map_or(defaults::MAX_CONNECTIONS_UNKNOWN_LIMIT, |u| (u / 2).max(1));
        let max = self.int(
            "gateway.max_connections",
            raw.max_connections,
            derived,
            1..=defaults::MAX_CONNECTIONS_CAP,
        );
        if let (Some(m), Some(l), Some(u)) = (max, limit, usable) {
            if m > u {
                self.push(
                    "gateway.max_connections",
                    format!(
                        "{m} device connections cannot be served under the open-file limit of \
                         {l} with {reserved_n} reserved (at most {u}); raise the limit \
                         (ulimit -n, systemd LimitNOFILE=) or lower max_connections"
                    ),
                );
                return (None, reserved);
            }
        }
        (max, reserved)
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
                "mqtt" => Some(ListenerProtocol::Mqtt),
                other => {
                    self.push(
                        format!("{p}.protocol"),
                        format!("unsupported protocol {other:?}; supported: \"http\", \"mqtt\""),
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
            let kind = match protocol {
                Some(ListenerProtocol::Http) => {
                    self.reject_keys(&p, "http", &mqtt_keys_set(l));
                    self.http_limits(&p, l).map(ListenerKind::Http)
                }
                Some(ListenerProtocol::Mqtt) => {
                    self.reject_keys(&p, "mqtt", &http_keys_set(l));
                    self.mqtt_limits(&p, l).map(ListenerKind::Mqtt)
                }
                // Unknown protocol (already reported): still check every value given.
                None => {
                    let _ = (self.http_limits(&p, l), self.mqtt_limits(&p, l));
                    None
                }
            };
            let max_connections = match l.max_connections {
                None => Some(None),
                Some(_) => self
                    .int(
                        &format!("{p}.max_connections"),
                        l.max_connections,
                        0usize,
                        1..=defaults::MAX_CONNECTIONS_CAP,
                    )
                    .map(Some),
            };
            let unknown = match l.unknown.as_deref() {
                None | Some("default") => Some(UnknownSource::Default),
                Some("reject") => Some(UnknownSource::Reject),
                Some(other) => {
                    self.push(
                        format!("{p}.unknown"),
                        format!("unknown value {other:?}; expected \"reject\" or \"default\""),
                    );
                    None
                }
            };
            let id = u16::try_from(i).ok().map(ListenerId);
            if let (Some(id), Some(kind), Some(bind), Some(max_connections), Some(unknown)) =
                (id, kind, bind, max_connections, unknown)
            {
                out.push(ListenerPlan {
                    id,
                    name: l.name.clone(),
                    bind,
                    max_connections,
                    kind,
                    unknown,
                });
            }
        }
        (out.len() == raw.len()).then_some(out)
    }

    /// Reports each key in `present` as belonging to the other protocol than `protocol`.
    fn reject_keys(&mut self, p: &str, protocol: &str, present: &[(&str, bool)]) {
        let other = if protocol == "http" { "mqtt" } else { "http" };
        for (key, _) in present.iter().filter(|(_, set)| *set) {
            self.push(
                format!("{p}.{key}"),
                format!("only for protocol {other:?} (this listener is {protocol:?})"),
            );
        }
    }

    fn mqtt_limits(&mut self, p: &str, l: &RawListener) -> Option<MqttListenerLimits> {
        let max_packet_size = self.int(
            &format!("{p}.max_packet_size"),
            l.max_packet_size,
            defaults::MQTT_MAX_PACKET_SIZE,
            // 64 bytes fit any CONNECT worth accepting; 268435455 is the MQTT maximum.
            64..=268_435_455,
        );
        let connect_timeout = self.duration(
            &format!("{p}.connect_timeout"),
            l.connect_timeout.as_ref(),
            defaults::MQTT_CONNECT_TIMEOUT,
        );
        let receive_maximum = self.int(
            &format!("{p}.receive_maximum"),
            l.receive_maximum,
            defaults::MQTT_RECEIVE_MAXIMUM,
            1..=65535,
        );
        Some(MqttListenerLimits {
            max_packet_size: max_packet_size?,
            connect_timeout: connect_timeout?,
            receive_maximum: receive_maximum?,
        })
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
        let error_detail = match l.error_detail.as_deref() {
            None | Some("generic") => Some(ErrorDetail::Generic),
            Some("full") => Some(ErrorDetail::Full),
            Some(other) => {
                self.push(
                    format!("{p}.error_detail"),
                    format!("unknown value {other:?}; expected \"generic\" or \"full\""),
                );
                None
            }
        };
        Some(HttpListenerLimits {
            max_head_bytes: max_head_bytes?,
            max_headers: max_headers?,
            max_body_bytes: max_body_bytes?,
            header_timeout: header_timeout?,
            body_timeout: body_timeout?,
            idle_timeout: idle_timeout?,
            max_requests_per_connection: max_requests_per_connection?,
            error_detail: error_detail?,
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

        let base_path = match raw.base_path.as_deref() {
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
        })
    }

    /// `[destination.mqtt]`; `p` is the destination's path.
    fn mqtt(&mut self, p: &str, raw: &RawMqtt, shards: Option<usize>) -> Option<MqttDestination> {
        let p = format!("{p}.mqtt");
        let mode = match raw.mode.as_str() {
            "session" => Some(MqttMode::Session),
            "aggregate" => Some(MqttMode::Aggregate),
            other => {
                self.push(
                    format!("{p}.mode"),
                    format!("unknown mode {other:?}; expected \"session\" or \"aggregate\""),
                );
                None
            }
        };
        let keep_alive = self.keep_alive(&format!("{p}.keep_alive"), raw.keep_alive.as_ref());
        let connections_per_shard = self.int(
            &format!("{p}.connections_per_shard"),
            raw.connections_per_shard,
            defaults::MQTT_CONNECTIONS_PER_SHARD,
            1..=64,
        );
        let max_inflight = self.int(
            &format!("{p}.max_inflight"),
            raw.max_inflight,
            defaults::MQTT_MAX_INFLIGHT,
            1..=65535,
        );
        let linger = self.linger(&format!("{p}.linger"), raw.linger.as_ref());
        let down_after = self.down_after(&format!("{p}.down_after"), raw.down_after.as_ref());
        // Everything below depends on the mode.
        let mode = mode?;
        // False once a rule between keys fails (each value may have parsed on its own).
        let mut ok = true;

        let version = match (raw.version.as_deref(), mode) {
            (None, MqttMode::Session) => Some(MqttUpstreamVersion::SameAsDevice),
            (None, MqttMode::Aggregate) => Some(MqttUpstreamVersion::V311),
            (Some("device"), MqttMode::Session) => Some(MqttUpstreamVersion::SameAsDevice),
            (Some("device"), MqttMode::Aggregate) => {
                self.push(
                    format!("{p}.version"),
                    "\"device\" is only for mode \"session\": an aggregate connection carries \
                     devices of every version; use \"3.1.1\" or \"5\"",
                );
                None
            }
            (Some("3.1.1"), _) => Some(MqttUpstreamVersion::V311),
            (Some("5"), _) => Some(MqttUpstreamVersion::V5),
            (Some(other), MqttMode::Session) => {
                self.push(
                    format!("{p}.version"),
                    format!("unknown version {other:?}; expected \"device\", \"3.1.1\" or \"5\""),
                );
                None
            }
            (Some(other), MqttMode::Aggregate) => {
                self.push(
                    format!("{p}.version"),
                    format!("unknown version {other:?}; expected \"3.1.1\" or \"5\""),
                );
                None
            }
        };

        let (default_client_id, default_topic) = match mode {
            MqttMode::Session => (
                defaults::MQTT_SESSION_CLIENT_ID,
                defaults::MQTT_SESSION_TOPIC,
            ),
            MqttMode::Aggregate => (
                defaults::MQTT_AGGREGATE_CLIENT_ID,
                defaults::MQTT_AGGREGATE_TOPIC,
            ),
        };
        let client_id_path = format!("{p}.client_id");
        let client_id = self.template(
            &client_id_path,
            raw.client_id.as_deref().unwrap_or(default_client_id),
            IDENTITY_PLACEHOLDERS,
            excluded_in_mode(mode),
            mode,
        );
        if let Some(template) = &client_id {
            ok &= self.check_client_id_unique(
                &client_id_path,
                template,
                mode,
                shards,
                connections_per_shard,
            );
        }

        let username = match raw.username.as_deref() {
            None => Some(None),
            Some("") => {
                self.push(
                    format!("{p}.username"),
                    "must not be empty (leave the key out to send no username)",
                );
                None
            }
            Some(text) => self
                .template(
                    &format!("{p}.username"),
                    text,
                    IDENTITY_PLACEHOLDERS,
                    excluded_in_mode(mode),
                    mode,
                )
                .map(Some),
        };

        let password = match &raw.password_file {
            None => Some(None),
            Some(file) => self
                .password_file(&format!("{p}.password_file"), file)
                .map(Some),
        };
        if raw.password_file.is_some()
            && raw.username.is_none()
            && version.is_some_and(|v| v != MqttUpstreamVersion::V5)
        {
            self.push(
                format!("{p}.password_file"),
                "MQTT 3.1.1 sends a password only together with a username: set username \
                 too, or version = \"5\"",
            );
            ok = false;
        }

        if mode == MqttMode::Session && linger.is_some_and(|l| !l.is_zero()) {
            self.push(
                format!("{p}.linger"),
                "only for mode \"aggregate\": a session connection carries one device, whose \
                 messages are written as they arrive",
            );
            ok = false;
        }
        let accept_while_down = raw.accept_while_down.unwrap_or(true);
        if mode == MqttMode::Session {
            let why = "only for mode \"aggregate\": in session mode a device's CONNECT is \
                       answered after the broker's, so it is refused (0x88, 3.1.1: 3) whenever \
                       the broker cannot be reached";
            if raw.accept_while_down.is_some() {
                self.push(format!("{p}.accept_while_down"), why);
                ok = false;
            }
            if raw.down_after.is_some() && down_after.is_some() {
                self.push(format!("{p}.down_after"), why);
                ok = false;
            }
        } else if accept_while_down && raw.down_after.is_some() && down_after.is_some() {
            self.push(
                format!("{p}.down_after"),
                "only with accept_while_down = false: with true (the default) new devices are \
                 accepted however long the broker is unreachable",
            );
            ok = false;
        }
        let pass_through_credentials = raw.pass_through_credentials.unwrap_or(false);
        if pass_through_credentials {
            let path = format!("{p}.pass_through_credentials");
            if mode == MqttMode::Aggregate {
                self.push(
                    &path,
                    "only for mode \"session\": an aggregate connection is shared by many \
                     devices and cannot carry one device's credentials",
                );
                ok = false;
            } else if raw.username.is_some() || raw.password_file.is_some() {
                self.push(
                    &path,
                    "cannot be combined with username or password_file: either the device's \
                     credentials are forwarded or the configured ones are sent",
                );
                ok = false;
            }
        }

        let topic_path = format!("{p}.topic");
        let topic_text = raw.topic.as_deref().unwrap_or(default_topic);
        // Rendered per device message in both modes, so no mode excludes a placeholder.
        let topic = self.template(&topic_path, topic_text, TOPIC_PLACEHOLDERS, &[], mode);
        if let Some(template) = &topic {
            if !template.uses(Placeholder::Topic) {
                self.push(
                    &topic_path,
                    "must contain {topic} (the device's topic), so that every device topic maps \
                     to its own upstream topic and downlink messages can be mapped back",
                );
                ok = false;
            } else if topic_text.contains(['+', '#', '\0']) {
                self.push(
                    &topic_path,
                    "must not contain the wildcards '+' and '#' or a NUL character: the result \
                     is a topic name that PUBLISHes are sent to",
                );
                ok = false;
            }
        }

        if !ok {
            return None;
        }
        Some(MqttDestination {
            mode,
            version: version?,
            client_id: client_id?,
            username: username?,
            password: password?,
            pass_through_credentials,
            topic: Arc::new(topic?),
            keep_alive: keep_alive?,
            connections_per_shard: connections_per_shard?,
            max_inflight: max_inflight?,
            linger: linger?,
            while_down: if accept_while_down {
                WhileDown::Accept
            } else {
                WhileDown::RefuseAfter(down_after?)
            },
        })
    }

    /// Parses a template for an MQTT field. `field_allows` is what the field accepts in some
    /// mode; placeholders in `excluded` (those `mode` cannot fill) get an error saying why.
    fn template(
        &mut self,
        path: &str,
        text: &str,
        field_allows: &[Placeholder],
        excluded: &[Placeholder],
        mode: MqttMode,
    ) -> Option<Template> {
        let allowed_here: Vec<Placeholder> = field_allows
            .iter()
            .copied()
            .filter(|p| !excluded.contains(p))
            .collect();
        let listed = placeholder_list(&allowed_here);
        let template = match Template::parse(text, field_allows) {
            Ok(template) => template,
            Err(TemplateError::UnknownPlaceholder(name)) => {
                self.push(
                    path,
                    format!("unknown placeholder {{{name}}}; known: {listed}"),
                );
                return None;
            }
            Err(TemplateError::NotAllowedHere(name)) => {
                self.push(
                    path,
                    format!("placeholder {{{name}}} is not allowed here; allowed: {listed}"),
                );
                return None;
            }
            Err(e @ (TemplateError::UnbalancedBrace | TemplateError::RepeatedTopic)) => {
                self.push(path, format!("invalid template {text:?}: {e}"));
                return None;
            }
        };
        let mut ok = true;
        for placeholder in excluded.iter().filter(|p| template.uses(**p)) {
            let why = match mode {
                MqttMode::Session => {
                    "mode \"session\": {shard} and {conn} number aggregate connections, and a \
                     session connection belongs to one device"
                }
                MqttMode::Aggregate => {
                    "mode \"aggregate\": one upstream connection carries many devices, so it has \
                     no single device {client_id} or {ip}"
                }
            };
            self.push(
                path,
                format!(
                    "placeholder {{{}}} is not allowed in {why}; allowed: {listed}",
                    placeholder.name()
                ),
            );
            ok = false;
        }
        ok.then_some(template)
    }

    /// Brokers disconnect the older of two connections with the same client id, so every
    /// upstream connection needs its own: per device in session mode, per shard and per
    /// connection in aggregate mode. Returns false if an error was reported.
    fn check_client_id_unique(
        &mut self,
        path: &str,
        template: &Template,
        mode: MqttMode,
        shards: Option<usize>,
        connections_per_shard: Option<usize>,
    ) -> bool {
        let errors_before = self.errors.len();
        match mode {
            MqttMode::Session => {
                if !template.uses(Placeholder::ClientId) && !template.uses(Placeholder::Ip) {
                    self.push(
                        path,
                        "must contain {client_id} or {ip}: with a fixed client id, every device \
                         session would take over the previous one at the broker",
                    );
                }
            }
            MqttMode::Aggregate => {
                if shards.is_some_and(|n| n > 1) && !template.uses(Placeholder::Shard) {
                    self.push(
                        path,
                        format!(
                            "must contain {{shard}}: with {} shards, each opens its own upstream \
                             connections, and the broker disconnects a connection whose client \
                             id is reused",
                            shards.unwrap_or_default()
                        ),
                    );
                }
                if connections_per_shard.is_some_and(|n| n > 1) && !template.uses(Placeholder::Conn)
                {
                    self.push(
                        path,
                        "must contain {conn} when connections_per_shard is more than 1: the \
                         broker disconnects a connection whose client id is reused",
                    );
                }
            }
        }
        self.errors.len() == errors_before
    }

    /// `mqtt.linger`: 0 (the default) up to [`MQTT_LINGER_MAX`].
    fn linger(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(Duration::ZERO);
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if d > MQTT_LINGER_MAX => {
                self.push(
                    path,
                    format!(
                        "must be between 0s and {} (it delays every uplink message), got {text:?}",
                        format_duration(MQTT_LINGER_MAX)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// `mqtt.down_after`: [`MQTT_DOWN_AFTER_MIN`] up to the longest duration accepted anywhere.
    fn down_after(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(MQTT_DOWN_AFTER);
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if !(MQTT_DOWN_AFTER_MIN..=defaults::MAX_DURATION).contains(&d) => {
                self.push(
                    path,
                    format!(
                        "must be between {} and {}, got {text:?}",
                        format_duration(MQTT_DOWN_AFTER_MIN),
                        format_duration(defaults::MAX_DURATION)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// `mqtt.keep_alive`: whole seconds in 1s..=65535s (the MQTT field is a `u16`).
    fn keep_alive(&mut self, path: &str, value: Option<&RawDuration>) -> Option<Duration> {
        let Some(RawDuration(text)) = value else {
            return Some(defaults::MQTT_KEEP_ALIVE);
        };
        let max = defaults::MQTT_MAX_KEEP_ALIVE;
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}"));
                None
            }
            Ok(d) if d < Duration::from_secs(1) || d > max => {
                self.push(
                    path,
                    format!(
                        "must be between 1s and {}s (18h12m15s; MQTT keep-alive is a 16-bit \
                         number of seconds), got {text:?}",
                        max.as_secs()
                    ),
                );
                None
            }
            Ok(d) if d.subsec_nanos() != 0 => {
                self.push(
                    path,
                    format!("must be a whole number of seconds, got {text:?}"),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// Reads an MQTT password file: trailing line breaks trimmed, 1..=65535 bytes left. Errors
    /// name the file, never its contents.
    fn password_file(&mut self, path: &str, file: &Path) -> Option<Secret> {
        let full = self.base_dir.join(file);
        let mut bytes = match tls_material::read(&full) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.push(path, format!("{e}: {}", full.display()));
                return None;
            }
        };
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            self.push(path, format!("password file is empty: {}", full.display()));
            return None;
        }
        if bytes.len() > usize::from(u16::MAX) {
            self.push(
                path,
                format!(
                    "password longer than 65535 bytes (the MQTT limit): {}",
                    full.display()
                ),
            );
            return None;
        }
        Some(Secret(bytes::Bytes::from(bytes)))
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

    fn pool(&mut self, p: &str, raw: &RawPool, default_warm: usize) -> Option<PoolSettings> {
        let warm = self.int(&format!("{p}.pool.warm"), raw.warm, default_warm, 0..=1024);
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
        let max_connecting = self.int(
            &format!("{p}.pool.max_connecting"),
            raw.max_connecting,
            defaults::POOL_MAX_CONNECTING,
            0..=65535,
        );
        let max_age = self.duration(
            &format!("{p}.pool.max_age"),
            raw.max_age.as_ref(),
            defaults::POOL_MAX_AGE,
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
            max_age: max_age?,
            max_connecting: max_connecting?,
            connect_timeout: connect_timeout?,
            response_timeout: response_timeout?,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
        })
    }

    /// `group[g].attach`: identity fields by name, each at most once (default `["imsi"]`).
    fn attach(&mut self, g: usize, raw: Option<&[String]>) -> Option<Attach> {
        let Some(names) = raw else {
            return Some(Attach::default());
        };
        let mut set = Attach::NONE;
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            match AttachField::parse(name) {
                Some(field) if set.contains(field) => {
                    self.push(
                        format!("group[{g}].attach[{i}]"),
                        format!("{name:?} given twice"),
                    );
                    ok = false;
                }
                Some(field) => set = set.with(field),
                None => {
                    let known: Vec<&str> =
                        AttachField::ALL.iter().map(|f| f.config_name()).collect();
                    self.push(
                        format!("group[{g}].attach[{i}]"),
                        format!("unknown field {name:?}; known: {}", known.join(", ")),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(set)
    }

    fn groups(
        &mut self,
        raw: &RawConfig,
        listener_names: &HashMap<&str, usize>,
        destination_names: &HashMap<&str, usize>,
    ) -> Option<Vec<GroupPlan>> {
        let mut out = Vec::with_capacity(raw.group.len());
        for (g, group) in raw.group.iter().enumerate() {
            let mut http_routes = Vec::with_capacity(group.routes.len());
            let mut mqtt_routes = Vec::new();
            let mut seen_http: HashMap<(usize, String), usize> = HashMap::new();
            let mut seen_mqtt: HashMap<usize, usize> = HashMap::new();
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
                // Protocol and adapter as written; an unsupported value is reported at its own
                // path, and the route is then not checked against it.
                let protocol = listener
                    .and_then(|i| raw.listener.get(i))
                    .map(|l| l.protocol.as_str());
                let adapter = destination
                    .and_then(|i| raw.destination.get(i))
                    .map(|d| d.adapter.as_str());
                let is_mqtt = match protocol {
                    Some("http") => Some(false),
                    Some("mqtt") => Some(true),
                    _ => None,
                };
                let path = match (is_mqtt, route.path.as_deref()) {
                    (Some(true), Some(_)) => {
                        self.push(
                            format!("{p}.path"),
                            format!(
                                "not allowed: listener {:?} is MQTT, and MQTT routes have no path",
                                route.listener
                            ),
                        );
                        None
                    }
                    (Some(true), None) => Some(None),
                    (Some(false), None) => {
                        self.push(
                            format!("{p}.path"),
                            format!(
                                "required: listener {:?} is HTTP, and HTTP routes match a path prefix",
                                route.listener
                            ),
                        );
                        None
                    }
                    (_, Some(text)) => match normalize_path_prefix(text) {
                        Ok(path) => Some(Some(path)),
                        Err(e) => {
                            self.push(format!("{p}.path"), format!("invalid path {text:?}: {e}"));
                            None
                        }
                    },
                    (None, None) => None,
                };
                let adapter_matches = match (is_mqtt, adapter) {
                    (Some(true), Some("https")) | (Some(false), Some("mqtts")) => {
                        let (kind, other) = if is_mqtt == Some(true) {
                            ("MQTT", "https")
                        } else {
                            ("HTTP", "mqtts")
                        };
                        self.push(
                            format!("{p}.destination"),
                            format!(
                                "listener {:?} is {kind}; destination {:?} is {other}",
                                route.listener, route.destination
                            ),
                        );
                        false
                    }
                    (Some(_), Some("https" | "mqtts")) => true,
                    _ => false,
                };
                let (Some(listener), Some(destination), Some(path), true) =
                    (listener, destination, path, adapter_matches)
                else {
                    ok = false;
                    continue;
                };
                let (Ok(listener_id), Ok(destination_id)) =
                    (u16::try_from(listener), u16::try_from(destination))
                else {
                    ok = false;
                    continue;
                };
                let Some(path) = path else {
                    // An MQTT route: one per listener and group.
                    if let Some(first) = seen_mqtt.get(&listener) {
                        self.push(
                            format!("{p}.listener"),
                            format!(
                                "duplicate MQTT route for listener {:?} (first at \
                                 group[{g}].routes[{first}]); a listener has at most one MQTT \
                                 route per group",
                                route.listener
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    seen_mqtt.insert(listener, r);
                    mqtt_routes.push(MqttRoute {
                        listener: ListenerId(listener_id),
                        destination: DestinationId(destination_id),
                    });
                    continue;
                };
                if let Some(first) = seen_http.get(&(listener, path.clone())) {
                    self.push(
                        format!("{p}.path"),
                        format!(
                            "duplicate route: same listener and path {path:?} as group[{g}].routes[{first}]"
                        ),
                    );
                    ok = false;
                    continue;
                }
                seen_http.insert((listener, path.clone()), r);
                http_routes.push(HttpRoute {
                    listener: ListenerId(listener_id),
                    path_prefix: path,
                    destination: DestinationId(destination_id),
                });
            }
            // Longest prefix first; the sort is stable, so equal lengths keep config order.
            http_routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
            let attach = self.attach(g, group.attach.as_deref());
            match (u16::try_from(g), attach) {
                (Ok(id), Some(attach)) if ok => out.push(GroupPlan {
                    id: GroupId(id),
                    name: group.name.clone(),
                    http_routes,
                    mqtt_routes,
                    attach,
                }),
                _ => {}
            }
        }
        (out.len() == raw.group.len()).then_some(out)
    }
}

/// Placeholders of `mqtt.client_id` and `mqtt.username` (before the per-mode exclusions).
const IDENTITY_PLACEHOLDERS: &[Placeholder] = &[
    Placeholder::ClientId,
    Placeholder::Ip,
    Placeholder::Shard,
    Placeholder::Conn,
];

/// Placeholders of `mqtt.topic`.
const TOPIC_PLACEHOLDERS: &[Placeholder] =
    &[Placeholder::ClientId, Placeholder::Ip, Placeholder::Topic];

/// Placeholders a mode cannot fill: session connections have no shard-wide numbering,
/// aggregate connections no single device.
fn excluded_in_mode(mode: MqttMode) -> &'static [Placeholder] {
    match mode {
        MqttMode::Session => &[Placeholder::Shard, Placeholder::Conn],
        MqttMode::Aggregate => &[Placeholder::ClientId, Placeholder::Ip],
    }
}

/// `{a}, {b}, {c}` for messages.
fn placeholder_list(placeholders: &[Placeholder]) -> String {
    placeholders
        .iter()
        .map(|p| format!("{{{}}}", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The HTTP-only listener keys and whether each is set.
fn http_keys_set(l: &RawListener) -> [(&'static str, bool); 8] {
    [
        ("max_head_bytes", l.max_head_bytes.is_some()),
        ("max_headers", l.max_headers.is_some()),
        ("max_body_bytes", l.max_body_bytes.is_some()),
        ("header_timeout", l.header_timeout.is_some()),
        ("body_timeout", l.body_timeout.is_some()),
        ("idle_timeout", l.idle_timeout.is_some()),
        (
            "max_requests_per_connection",
            l.max_requests_per_connection.is_some(),
        ),
        ("error_detail", l.error_detail.is_some()),
    ]
}

/// The MQTT-only listener keys and whether each is set.
fn mqtt_keys_set(l: &RawListener) -> [(&'static str, bool); 3] {
    [
        ("max_packet_size", l.max_packet_size.is_some()),
        ("connect_timeout", l.connect_timeout.is_some()),
        ("receive_maximum", l.receive_maximum.is_some()),
    ]
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
