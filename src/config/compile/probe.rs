//! Compiles `[probe]`: how often the control thread probes every destination, how long one
//! probe may take, and the client id of its MQTT CONNECT (`{hostname}` replaced here, once).
//!
//! What this module does not do: probe (`control::probes`).

use std::time::Duration;

use super::Compiler;
use crate::config::schema::RawProbe;
use crate::config::values::{format_duration, parse_duration};
use crate::policy::ProbeSettings;

/// Shortest `probe.interval`: short enough for tests to see a failure quickly, long enough
/// that a probe every interval to every destination stays cheap.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `probe.interval`.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest `probe.timeout`.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest `probe.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `probe.client_id`: unique per node, so two gateways probing one broker do not
/// take over each other's session.
const DEFAULT_CLIENT_ID: &str = "simgate-probe-{hostname}";
/// Longest client id after `{hostname}` is replaced (MQTT 3.1.1 servers must accept 23
/// bytes; most accept far more).
const MAX_CLIENT_ID: usize = 128;

impl Compiler<'_> {
    pub(super) fn probe(&mut self, raw: Option<&RawProbe>) -> Option<ProbeSettings> {
        let defaults = ProbeSettings::default();
        let interval = match raw.and_then(|r| r.interval.as_ref()) {
            None => Some(defaults.interval),
            Some(d) if d.0 == "off" || d.0 == "0" => Some(None),
            Some(d) => self.bounded("probe.interval", &d.0, MIN_INTERVAL..=MAX_INTERVAL, true),
        };
        let timeout = match raw.and_then(|r| r.timeout.as_ref()) {
            None => Some(defaults.timeout),
            Some(d) => self
                .bounded("probe.timeout", &d.0, MIN_TIMEOUT..=MAX_TIMEOUT, false)
                .flatten(),
        };
        let template = raw
            .and_then(|r| r.client_id.as_deref())
            .unwrap_or(DEFAULT_CLIENT_ID);
        let client_id = self.probe_client_id(template, &local_hostname());
        Some(ProbeSettings {
            interval: interval?,
            timeout: timeout?,
            client_id: client_id?,
        })
    }

    /// A duration at `path` within `range` (`Some(Some(d))`), or an error (`None`).
    fn bounded(
        &mut self,
        path: &str,
        text: &str,
        range: std::ops::RangeInclusive<Duration>,
        off_allowed: bool,
    ) -> Option<Option<Duration>> {
        let off = if off_allowed {
            ", or \"off\" to disable"
        } else {
            ""
        };
        match parse_duration(text) {
            Err(e) => {
                self.push(path, format!("invalid duration {text:?}: {e}{off}"));
                None
            }
            Ok(d) if !range.contains(&d) => {
                self.push(
                    path,
                    format!(
                        "must be between {} and {}{off}, got {text:?}",
                        format_duration(*range.start()),
                        format_duration(*range.end())
                    ),
                );
                None
            }
            Ok(d) => Some(Some(d)),
        }
    }

    fn probe_client_id(&mut self, template: &str, hostname: &str) -> Option<String> {
        let id = template.replace("{hostname}", hostname);
        let problem = if id.contains('{') || id.contains('}') {
            Some("the only placeholder is {hostname}".to_owned())
        } else if id.is_empty() || id.len() > MAX_CLIENT_ID {
            Some(format!("must be 1 to {MAX_CLIENT_ID} bytes"))
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            Some("letters, digits and - _ . : only".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.push("probe.client_id", format!("{p}, got {template:?}"));
                None
            }
            None => Some(id),
        }
    }
}

/// This node's host name, cut to the characters a client id may hold (`localhost` when it
/// has none).
fn local_hostname() -> String {
    // std has no gethostname; the kernel's file needs no unsafe (Linux only, like the
    // reactor).
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}
