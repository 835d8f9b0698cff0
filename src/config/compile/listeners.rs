//! Compiles `[[listener]]` into [`ListenerPlan`]s: protocol, bind address (no two listeners,
//! nor the admin endpoint, on overlapping addresses), connection cap, unknown-source policy, and
//! the protocol's limits; keys of the other protocol are reported, not ignored.
//!
//! What this does not do: open sockets, or check routes (see `groups`).

use std::net::SocketAddr;

use super::{defaults, Compiler};
use crate::config::schema::RawListener;
use crate::policy::{
    ErrorDetail, HttpListenerLimits, ListenerId, ListenerKind, ListenerPlan, ListenerProtocol,
    MqttListenerLimits, UnknownSource,
};

impl Compiler<'_> {
    pub(super) fn listeners(&mut self, raw: &[RawListener]) -> Option<Vec<ListenerPlan>> {
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

    pub(super) fn check_admin_vs_listeners(
        &mut self,
        admin: Option<SocketAddr>,
        listeners: &[ListenerPlan],
    ) {
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
