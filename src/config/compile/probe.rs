//! Compiles `[probe]`: how often the control thread probes every destination, how long one
//! probe may take, and the client id of its MQTT CONNECT (`{hostname}` replaced here, once);
//! and `[probe.e2e]`, the end-to-end probe through one MQTT listener (`topic`) or one HTTP
//! listener (`path`): its bounds checked here, its listener looked up in the compiled
//! listeners, and the key of the other protocol refused.
//!
//! What this module does not do: probe (`control::probes`).

use std::time::Duration;

use super::Compiler;
use crate::config::schema::{RawProbe, RawProbeE2e};
use crate::config::values::{format_duration, parse_duration};
use crate::policy::{E2eSettings, E2eTarget, ListenerKind, ListenerPlan, ProbeSettings};

/// Default `probe.e2e.topic` (MQTT listeners).
const DEFAULT_E2E_TOPIC: &str = "simgate/probe";
/// Default `probe.e2e.path` (HTTP listeners).
const DEFAULT_E2E_PATH: &str = "/simgate/probe";
/// Longest `probe.e2e.topic` and `probe.e2e.path`.
const MAX_E2E_TARGET: usize = 256;
/// Default `probe.e2e.interval`.
const DEFAULT_E2E_INTERVAL: Duration = Duration::from_secs(5);
/// Default `probe.e2e.timeout`.
const DEFAULT_E2E_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `probe.e2e.window`.
const DEFAULT_E2E_WINDOW: usize = 100;
/// Default `probe.e2e.loss_alarm`.
const DEFAULT_E2E_LOSS_ALARM: f64 = 0.05;
/// Largest `probe.e2e.window`.
const MAX_E2E_WINDOW: i64 = 10_000;

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
    /// `[probe]`; `listeners` are the compiled listeners (`None`: they failed, with their own
    /// errors, and `[probe.e2e]`'s listener is not judged).
    pub(super) fn probe(
        &mut self,
        raw: Option<&RawProbe>,
        listeners: Option<&[ListenerPlan]>,
    ) -> Option<ProbeSettings> {
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
        let e2e = match raw.and_then(|r| r.e2e.as_ref()) {
            None => Some(None),
            Some(e) => self.probe_e2e(e, listeners).map(Some),
        };
        Some(ProbeSettings {
            interval: interval?,
            timeout: timeout?,
            client_id: client_id?,
            e2e: e2e?,
        })
    }

    fn probe_e2e(
        &mut self,
        raw: &RawProbeE2e,
        listeners: Option<&[ListenerPlan]>,
    ) -> Option<E2eSettings> {
        let interval = match &raw.interval {
            None => Some(DEFAULT_E2E_INTERVAL),
            Some(d) => self
                .bounded(
                    "probe.e2e.interval",
                    &d.0,
                    MIN_INTERVAL..=MAX_INTERVAL,
                    false,
                )
                .flatten(),
        };
        let timeout = match &raw.timeout {
            None => Some(DEFAULT_E2E_TIMEOUT),
            Some(d) => self
                .bounded("probe.e2e.timeout", &d.0, MIN_TIMEOUT..=MAX_TIMEOUT, false)
                .flatten(),
        };
        let p99_alarm = match &raw.p99_alarm {
            None => Some(None),
            Some(d) => self.bounded(
                "probe.e2e.p99_alarm",
                &d.0,
                Duration::from_millis(1)..=MAX_TIMEOUT,
                false,
            ),
        };
        let window = match raw.window {
            None => Some(DEFAULT_E2E_WINDOW),
            Some(n) if (1..=MAX_E2E_WINDOW).contains(&n) => Some(n as usize),
            Some(n) => {
                self.push(
                    "probe.e2e.window",
                    format!("must be between 1 and {MAX_E2E_WINDOW}, got {n}"),
                );
                None
            }
        };
        let loss_alarm = match raw.loss_alarm {
            None => Some(DEFAULT_E2E_LOSS_ALARM),
            Some(r) if (0.0..=1.0).contains(&r) => Some(r),
            Some(r) => {
                self.push(
                    "probe.e2e.loss_alarm",
                    format!("must be a ratio between 0 and 1, got {r}"),
                );
                None
            }
        };
        let target = self.e2e_target(raw, listeners);
        Some(E2eSettings {
            listener: raw.listener.clone(),
            target: target?,
            interval: interval?,
            timeout: timeout?,
            window: window?,
            loss_alarm: loss_alarm?,
            p99_alarm: p99_alarm?,
            alarm_affects_readiness: raw.alarm_affects_readiness.unwrap_or(false),
        })
    }

    /// `probe.e2e.listener` must name an MQTT listener (then `topic` applies) or an HTTP
    /// listener (then `path` applies); the other protocol's key is an error.
    fn e2e_target(
        &mut self,
        raw: &RawProbeE2e,
        listeners: Option<&[ListenerPlan]>,
    ) -> Option<E2eTarget> {
        let listeners = listeners?;
        let Some(listener) = listeners.iter().find(|l| l.name == raw.listener) else {
            self.push(
                "probe.e2e.listener",
                format!("no listener named {:?}", raw.listener),
            );
            return None;
        };
        match listener.kind {
            ListenerKind::Mqtt(_) => {
                if raw.path.is_some() {
                    self.push(
                        "probe.e2e.path",
                        format!(
                            "applies to an HTTP listener only; listener {:?} is MQTT (use topic)",
                            raw.listener
                        ),
                    );
                    return None;
                }
                let topic = raw.topic.as_deref().unwrap_or(DEFAULT_E2E_TOPIC);
                if topic.is_empty()
                    || topic.len() > MAX_E2E_TARGET
                    || topic.contains(['+', '#', '\0'])
                {
                    self.push(
                        "probe.e2e.topic",
                        format!(
                            "must be 1 to {MAX_E2E_TARGET} bytes without wildcards, got {topic:?}"
                        ),
                    );
                    return None;
                }
                Some(E2eTarget::MqttTopic(topic.to_owned()))
            }
            ListenerKind::Http(_) => {
                if raw.topic.is_some() {
                    self.push(
                        "probe.e2e.topic",
                        format!(
                            "applies to an MQTT listener only; listener {:?} is HTTP (use path)",
                            raw.listener
                        ),
                    );
                    return None;
                }
                let path = raw.path.as_deref().unwrap_or(DEFAULT_E2E_PATH);
                let printable = path
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
                if !path.starts_with('/')
                    || path.len() > MAX_E2E_TARGET
                    || !printable
                    || crate::proto::http1::check_request_path(path.as_bytes()).is_err()
                {
                    self.push(
                        "probe.e2e.path",
                        format!(
                            "must start with '/', be at most {MAX_E2E_TARGET} bytes of printable \
                             ASCII without spaces, '?' or '#', and have no dot segments, empty \
                             segments or encoded '.', '/' or '\\', got {path:?}"
                        ),
                    );
                    return None;
                }
                Some(E2eTarget::HttpPath(path.to_owned()))
            }
        }
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
