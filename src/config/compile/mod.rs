//! Semantic validation and compilation of a [`RawConfig`] into a [`Plan`].
//!
//! Every check pushes a [`FieldError`] with the path of the offending key and carries on, so
//! one run reports every problem in the file. A plan is assembled only when no error was found.
//!
//! IO happens during compilation on purpose (the plan must be ready to serve): credential, CA
//! and MQTT password files are read, endpoints resolved, system roots loaded. DNS, system roots
//! and CPU count go through [`Environment`], so tests run without a network. What this does not
//! do: parse TOML (see `schema`), or start anything.
//!
//! This file holds the [`Compiler`] itself: the [`compile`] entry, error collection, name
//! registration, the generic value helpers (`int`, `power_of_two`, `duration`) and the
//! [`defaults`]. Each config table is compiled by an `impl Compiler` block of its own file:
//!
//! - `environment`: [`Environment`] and [`SystemEnvironment`], the outside world (DNS, root
//!   store, CPUs, open-file limit);
//! - `gateway`: `[gateway]`, with the CPU- and open-file-limit-derived defaults;
//! - `listeners`: `[[listener]]`, which keys belong to which protocol, bind overlaps;
//! - `credentials`: `[[credential]]` (client certificate and key files);
//! - `destinations`: `[[destination]]`: endpoint, DNS, server name, CA, ALPN, rustls config;
//! - `mqtt`: `[destination.mqtt]`, the per-mode defaults and placeholder sets of its templates;
//! - `pool`: `[destination.pool]`;
//! - `groups`: `[[group]]`, routes (HTTP listeners route to `https` destinations by path, MQTT
//!   listeners to one `mqtts` destination) and `attach`.
//!
//! SIMs (`[[sim]]`, `gateway.sims_file`) are compiled in `sims`, after the group names are
//! known.

mod adapters;
mod aws_mqtt;
mod credentials;
mod destinations;
mod environment;
mod gateway;
mod groups;
mod listeners;
mod metrics;
mod mqtt;
mod pool;
mod probe;
mod radius;
mod sim_templates;
mod usage;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use rustls::RootCertStore;

use super::schema::{RawConfig, RawDuration, RawSecret, RawSecretSource};
use super::values::{format_duration, is_valid_name, parse_duration, MAX_NAME_LEN};
use super::FieldError;
use crate::policy::{DestinationPlan, Plan};
use credentials::Credential;
pub(crate) use environment::{Environment, SystemEnvironment};

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
        warnings: Vec::new(),
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
    /// What is allowed but worth a word (`path: message`), carried into the plan.
    warnings: Vec<String>,
    /// Loaded on first use; `Some(None)` = loaded, nothing usable.
    system_roots: Option<Option<RootCertStore>>,
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

        let radius = match &raw.radius {
            None => Some(None),
            Some(r) => self.radius(r).map(Some),
        };
        let usage = self.usage(raw.usage.as_ref());
        let probe = self.probe(raw.probe.as_ref(), listeners.as_deref());
        let metrics = self.metrics(raw.metrics.as_ref());
        let plan = Plan {
            usage: usage?,
            probe: probe?,
            metrics: metrics?,
            gateway: gateway?,
            listeners: listeners?,
            destinations: destinations.into_iter().collect::<Option<Vec<_>>>()?,
            groups: groups?,
            sims: sims?,
            radius: radius?,
            warnings: std::mem::take(&mut self.warnings),
        };
        self.check_sim_templates(&plan);
        Some(plan)
    }

    /// The bytes of secret `raw` at `path`: inline, from a file (one trailing newline removed),
    /// or from an environment variable; at least `min_len` bytes. Errors name the field, the
    /// file or the variable, never the secret.
    fn secret(&mut self, path: &str, raw: &RawSecret, min_len: usize) -> Option<Vec<u8>> {
        let bytes = match raw {
            RawSecret::Inline(text) => {
                self.warnings.push(format!(
                    "{path}: the secret is written in the config file; prefer {{ file = \"…\" }} \
                     or {{ env = \"VAR\" }} so the file can be shared without it"
                ));
                text.clone().into_bytes()
            }
            RawSecret::Source(RawSecretSource {
                file: Some(file),
                env: None,
            }) => {
                let full = self.base_dir.join(file);
                match crate::config::tls_material::read(&full) {
                    Ok(mut bytes) => {
                        if bytes.last() == Some(&b'\n') {
                            bytes.pop();
                            if bytes.last() == Some(&b'\r') {
                                bytes.pop();
                            }
                        }
                        bytes
                    }
                    Err(e) => {
                        self.push(path, format!("{e}: {}", full.display()));
                        return None;
                    }
                }
            }
            RawSecret::Source(RawSecretSource {
                file: None,
                env: Some(var),
            }) => match self.env.env_var(var) {
                Some(value) => value.into_bytes(),
                None => {
                    self.push(path, format!("environment variable {var:?} is not set"));
                    return None;
                }
            },
            RawSecret::Source(_) => {
                self.push(
                    path,
                    "give the secret as a string, { file = \"path\" } or { env = \"VAR\" } (exactly one)",
                );
                return None;
            }
        };
        if bytes.len() < min_len {
            self.push(
                path,
                format!(
                    "too short: {} byte(s); at least {min_len} are needed",
                    bytes.len()
                ),
            );
            return None;
        }
        Some(bytes)
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
}
