//! Compiles `[gateway]` into [`GatewaySettings`]: shard count (`"auto"` from the CPUs the
//! process may use), the admin address and its loopback rule, the default group, ring and
//! buffer sizes, and the connection caps derived from the open-file limit.
//!
//! What this does not do: check the admin address against the listeners' binds (see
//! `listeners`), or query the system itself: CPUs and the open-file limit come through
//! [`Environment`](super::Environment).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{defaults, Compiler};
use crate::config::schema::{RawGateway, RawShards};
use crate::policy::{GatewaySettings, GroupId};

/// The shortest `gateway.admin_token` taken: 16 bytes (128 bits if random).
const ADMIN_TOKEN_MIN_BYTES: usize = 16;

impl Compiler<'_> {
    pub(super) fn gateway(
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

        // A bearer token for the admin API: any address may have one; a non-loopback one
        // must (it can reload the config and, with the usage API, shows who sent what).
        let admin_token = raw
            .admin_token
            .as_ref()
            .and_then(|t| self.secret("gateway.admin_token", t, ADMIN_TOKEN_MIN_BYTES))
            .map(|bytes| crate::policy::Secret(bytes::Bytes::from(bytes)));
        if let Some(Some(addr)) = admin {
            if !addr.ip().is_loopback() && raw.admin_token.is_none() {
                self.push(
                    "gateway.admin_token",
                    format!(
                        "required when gateway.admin ({addr}) is not a loopback address: every \
                         admin request must then carry `Authorization: Bearer <token>`"
                    ),
                );
            }
        }
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
            admin_token,
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
}
