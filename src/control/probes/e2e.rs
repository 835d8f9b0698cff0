//! The end-to-end probe's bookkeeping (`[probe.e2e]`), pure: no IO and no clock (time is
//! passed in), and the same for both transports. The control thread acts as a synthetic
//! device on one of simgate's own listeners and sends numbered messages
//! `{"seq":N,"sent_ns":T,"from":"<client id>"}` ([`message`]): on an MQTT listener it
//! publishes them (QoS 1) to the probe topic, which it also subscribes to, and each comes back
//! through a shard and the upstream broker; on an HTTP listener it `POST`s them to the probe
//! path, routed through a shard to an HTTPS server that echoes the body in its response.
//! [`E2eBoard`] numbers the messages ([`E2eBoard::send`]), matches what comes back
//! ([`E2eBoard::receive`], [`echoed_seq`]), counts one lost when its answer is not the echo
//! ([`E2eBoard::lose`]) or it is not back within the timeout ([`E2eBoard::expire`]), and keeps
//! the last `window` outcomes, from which the loss ratio and the p99 delay are computed. It
//! decides when the alarm is raised (loss ratio above `loss_alarm`, or p99 above `p99_alarm`)
//! and cleared: only those changes are logged.
//!
//! The IO is [`super::driver::run_e2e`] (the loop) with [`super::e2e_mqtt`] or
//! [`super::e2e_http`] (the device connection).
//!
//! What this does not do: talk to the network, keep an HDR histogram (the delay histogram uses
//! the `/metrics` bucket layout, like the internal probe's round trips), count a message that
//! comes back after it was declared lost (it stays lost; it is counted as `late`), or follow a
//! reload (the settings are those of the plan the probe started with).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::RoundTrips;
use crate::control::metrics::BUCKETS_SECONDS;
use crate::policy::E2eSettings;

/// The body of probe message `seq` sent by `client_id` at `sent_ns` (nanoseconds since the
/// Unix epoch): `{"seq":N,"sent_ns":T,"from":"<client id>"}`.
pub fn message(seq: u64, sent_ns: u64, client_id: &str) -> String {
    serde_json::json!({"seq": seq, "sent_ns": sent_ns, "from": client_id}).to_string()
}

/// The sequence number of a probe message sent by `client_id` (`None`: not one of ours, or
/// not a probe message at all).
pub fn echoed_seq(payload: &[u8], client_id: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    (v.get("from")?.as_str()? == client_id)
        .then(|| v.get("seq")?.as_u64())
        .flatten()
}

/// A change of the alarm, worth one log line.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    /// Loss or p99 crossed its bound; the text says which.
    Raised(String),
    /// Both are back within their bounds.
    Cleared(String),
}

/// The end-to-end probe's state: messages in flight, the window of outcomes, totals, alarm.
#[derive(Debug)]
pub struct E2eBoard {
    settings: E2eSettings,
    next_seq: u64,
    /// Sent and not back yet, oldest first: (seq, sent at).
    in_flight: VecDeque<(u64, Instant)>,
    /// The last `window` outcomes, oldest first: `Some(delay)` or `None` (lost).
    window: VecDeque<Option<Duration>>,
    sent_total: u64,
    received_total: u64,
    lost_total: u64,
    late_total: u64,
    delays: RoundTrips,
    alarm: Option<String>,
    connected: bool,
    last_error: Option<String>,
}

impl E2eBoard {
    /// An empty board for `settings`.
    pub fn new(settings: E2eSettings) -> E2eBoard {
        E2eBoard {
            settings,
            next_seq: 0,
            in_flight: VecDeque::new(),
            window: VecDeque::new(),
            sent_total: 0,
            received_total: 0,
            lost_total: 0,
            late_total: 0,
            delays: RoundTrips::default(),
            alarm: None,
            connected: false,
            last_error: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &E2eSettings {
        &self.settings
    }

    /// Number the next message, sent (or due, when the probe is not connected: it will be
    /// lost) at `now`.
    pub fn send(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent_total += 1;
        self.in_flight.push_back((seq, now));
        seq
    }

    /// Message `seq` came back at `now`. Returns an alarm change if the window's verdict
    /// changed.
    pub fn receive(&mut self, seq: u64, now: Instant) -> Option<AlarmChange> {
        match self.in_flight.iter().position(|(s, _)| *s == seq) {
            Some(i) => {
                let (_, sent) = self.in_flight.remove(i)?;
                let delay = now.saturating_duration_since(sent);
                self.received_total += 1;
                self.delays.record(delay);
                self.push(Some(delay));
                self.evaluate()
            }
            None => {
                // Already declared lost, a duplicate (QoS 1 may redeliver) or not ours.
                self.late_total += 1;
                None
            }
        }
    }

    /// Message `seq` will not come back (answered, but not with itself; or its request
    /// failed or timed out): it is lost, and `why` becomes `last_error`. A `seq` no longer in
    /// flight (already expired) is not counted twice; `why` is still kept.
    pub fn lose(&mut self, seq: u64, why: String) -> Option<AlarmChange> {
        self.last_error = Some(why);
        let i = self.in_flight.iter().position(|(s, _)| *s == seq)?;
        self.in_flight.remove(i);
        self.lost_total += 1;
        self.push(None);
        self.evaluate()
    }

    /// Declare lost every message sent more than the timeout before `now`.
    pub fn expire(&mut self, now: Instant) -> Option<AlarmChange> {
        let mut any = false;
        while let Some(&(_, sent)) = self.in_flight.front() {
            if now.saturating_duration_since(sent) < self.settings.timeout {
                break;
            }
            self.in_flight.pop_front();
            self.lost_total += 1;
            self.push(None);
            any = true;
        }
        if any {
            self.evaluate()
        } else {
            None
        }
    }

    /// When the oldest message in flight times out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.in_flight
            .front()
            .map(|(_, sent)| *sent + self.settings.timeout)
    }

    /// Record whether the probe's device connection is up (and why not).
    pub fn set_connection(&mut self, connected: bool, error: Option<String>) {
        self.connected = connected;
        if error.is_some() || connected {
            self.last_error = error;
        }
    }

    fn push(&mut self, outcome: Option<Duration>) {
        self.window.push_back(outcome);
        while self.window.len() > self.settings.window {
            self.window.pop_front();
        }
    }

    /// Lost messages over the window's messages (0 for an empty window).
    pub fn loss_ratio(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        let lost = self.window.iter().filter(|o| o.is_none()).count();
        lost as f64 / self.window.len() as f64
    }

    /// The 99th percentile delay of the window's received messages (nearest rank).
    pub fn p99(&self) -> Option<Duration> {
        let mut delays: Vec<Duration> = self.window.iter().flatten().copied().collect();
        if delays.is_empty() {
            return None;
        }
        delays.sort_unstable();
        let rank = (delays.len() as f64 * 0.99).ceil() as usize;
        delays.get(rank.saturating_sub(1)).copied()
    }

    /// Why the alarm is up (`None`: within bounds).
    pub fn alarm(&self) -> Option<&str> {
        self.alarm.as_deref()
    }

    /// Whether a raised alarm should make `/readyz` fail.
    pub fn affects_readiness(&self) -> bool {
        self.settings.alarm_affects_readiness && self.alarm.is_some()
    }

    fn verdict(&self) -> Option<String> {
        let loss = self.loss_ratio();
        let mut why = Vec::new();
        if loss > self.settings.loss_alarm {
            why.push(format!(
                "loss ratio {loss:.3} over the last {} messages is above {}",
                self.window.len(),
                self.settings.loss_alarm
            ));
        }
        if let (Some(p99), Some(bound)) = (self.p99(), self.settings.p99_alarm) {
            if p99 > bound {
                why.push(format!(
                    "p99 delay {:.1} ms is above {:.1} ms",
                    p99.as_secs_f64() * 1000.0,
                    bound.as_secs_f64() * 1000.0
                ));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn evaluate(&mut self) -> Option<AlarmChange> {
        let now = self.verdict();
        match (&self.alarm, now) {
            (None, Some(why)) => {
                self.alarm = Some(why.clone());
                Some(AlarmChange::Raised(why))
            }
            (Some(_), None) => {
                self.alarm = None;
                Some(AlarmChange::Cleared(format!(
                    "loss ratio {:.3}, p99 {}",
                    self.loss_ratio(),
                    self.p99().map_or("-".into(), |d| format!(
                        "{:.1} ms",
                        d.as_secs_f64() * 1000.0
                    ))
                )))
            }
            (Some(_), Some(why)) => {
                // Still raised; keep the latest reason for /admin/probes and /readyz.
                self.alarm = Some(why);
                None
            }
            (None, None) => None,
        }
    }

    /// Append the `simgate_probe_e2e_*` families to a Prometheus exposition (the listener
    /// name is [a-z0-9_-]: nothing to escape).
    pub fn render_metrics(&self, w: &mut String) {
        let d = &self.delays;
        let mut out = String::new();
        let l = &self.settings.listener;
        let _ = writeln!(out, "# HELP simgate_probe_e2e_delay_seconds Delay of end-to-end probe messages, numbered by the probe device until received back");
        let _ = writeln!(out, "# TYPE simgate_probe_e2e_delay_seconds histogram");
        for (count, le) in d.buckets.iter().zip(BUCKETS_SECONDS) {
            let _ = writeln!(
                out,
                "simgate_probe_e2e_delay_seconds_bucket{{listener=\"{l}\",le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "simgate_probe_e2e_delay_seconds_bucket{{listener=\"{l}\",le=\"+Inf\"}} {}",
            d.count
        );
        let _ = writeln!(
            out,
            "simgate_probe_e2e_delay_seconds_sum{{listener=\"{l}\"}} {}",
            d.sum_seconds
        );
        let _ = writeln!(
            out,
            "simgate_probe_e2e_delay_seconds_count{{listener=\"{l}\"}} {}",
            d.count
        );
        for (name, help, value) in [
            (
                "simgate_probe_e2e_sent_total",
                "End-to-end probe messages sent (or due while the probe device was disconnected)",
                self.sent_total,
            ),
            (
                "simgate_probe_e2e_received_total",
                "End-to-end probe messages received back within the timeout",
                self.received_total,
            ),
            (
                "simgate_probe_e2e_lost_total",
                "End-to-end probe messages not received back within probe.e2e.timeout, or (HTTP) answered with anything but their echo",
                self.lost_total,
            ),
            (
                "simgate_probe_e2e_late_total",
                "End-to-end probe messages received after being declared lost, or duplicates",
                self.late_total,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{listener=\"{l}\"}} {value}");
        }
        let _ = writeln!(out, "# HELP simgate_probe_e2e_loss_ratio Lost end-to-end probe messages over the last probe.e2e.window messages");
        let _ = writeln!(out, "# TYPE simgate_probe_e2e_loss_ratio gauge");
        let _ = writeln!(
            out,
            "simgate_probe_e2e_loss_ratio{{listener=\"{l}\"}} {}",
            self.loss_ratio()
        );
        let _ = writeln!(out, "# HELP simgate_probe_e2e_alarm Whether the end-to-end probe's loss ratio or p99 delay is above its bound (1) or not (0)");
        let _ = writeln!(out, "# TYPE simgate_probe_e2e_alarm gauge");
        let _ = writeln!(
            out,
            "simgate_probe_e2e_alarm{{listener=\"{l}\"}} {}",
            u8::from(self.alarm.is_some())
        );
        w.push_str(&out);
    }

    /// The `e2e` section of `/admin/probes`.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let s = &self.settings;
        serde_json::json!({
            "listener": s.listener,
            "topic": s.target.topic(),
            "path": s.target.path(),
            "interval_ms": s.interval.as_millis() as u64,
            "timeout_ms": s.timeout.as_millis() as u64,
            "window": s.window,
            "loss_alarm": s.loss_alarm,
            "p99_alarm_ms": s.p99_alarm.map(ms),
            "alarm_affects_readiness": s.alarm_affects_readiness,
            "connected": self.connected,
            "last_error": self.last_error,
            "sent_total": self.sent_total,
            "received_total": self.received_total,
            "lost_total": self.lost_total,
            "late_total": self.late_total,
            "in_flight": self.in_flight.len(),
            "window_messages": self.window.len(),
            "loss_ratio": self.loss_ratio(),
            "p99_ms": self.p99().map(ms),
            "alarm": self.alarm.is_some(),
            "alarm_reason": self.alarm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::E2eTarget;

    fn settings(window: usize, p99: Option<u64>) -> E2eSettings {
        E2eSettings {
            listener: "mqtt".into(),
            target: E2eTarget::MqttTopic("simgate/probe".into()),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(1000),
            window,
            loss_alarm: 0.2,
            p99_alarm: p99.map(Duration::from_millis),
            alarm_affects_readiness: false,
        }
    }

    #[test]
    fn delays_and_window_loss_ratio() {
        let t0 = Instant::now();
        let mut b = E2eBoard::new(settings(4, None));
        for i in 0..4u64 {
            let seq = b.send(t0 + Duration::from_millis(i * 100));
            assert_eq!(seq, i);
        }
        assert_eq!(b.receive(0, t0 + Duration::from_millis(10)), None);
        assert_eq!(b.receive(2, t0 + Duration::from_millis(230)), None);
        assert_eq!(b.loss_ratio(), 0.0);
        assert_eq!(b.p99(), Some(Duration::from_millis(30)));
        // 1 and 3 time out: 2 lost of 4 = 0.5 > 0.2.
        let change = b.expire(t0 + Duration::from_millis(1300));
        assert!(
            matches!(change, Some(AlarmChange::Raised(ref why)) if why.contains("loss ratio 0.500"))
        );
        assert_eq!(b.loss_ratio(), 0.5);
        assert_eq!(b.next_expiry(), None);
        // Seq 1 arrives late: counted late, still lost.
        assert_eq!(b.receive(1, t0 + Duration::from_millis(1400)), None);
        assert_eq!(b.json()["late_total"], 1);
        assert_eq!(b.json()["lost_total"], 2);
        // Four good ones push the losses out of the window: cleared once.
        let mut changes = Vec::new();
        for i in 0..4u64 {
            let at = t0 + Duration::from_millis(2000 + i * 100);
            let seq = b.send(at);
            changes.extend(b.receive(seq, at + Duration::from_millis(5)));
        }
        assert_eq!(changes.len(), 1);
        assert!(matches!(changes[0], AlarmChange::Cleared(_)));
        assert_eq!(b.loss_ratio(), 0.0);
        assert!(b.alarm().is_none());
    }

    #[test]
    fn alarm_on_p99_and_only_on_changes() {
        let t0 = Instant::now();
        let mut b = E2eBoard::new(settings(10, Some(50)));
        let s = b.send(t0);
        assert_eq!(b.receive(s, t0 + Duration::from_millis(20)), None);
        let s = b.send(t0);
        assert!(matches!(
            b.receive(s, t0 + Duration::from_millis(80)),
            Some(AlarmChange::Raised(ref why)) if why.contains("p99")
        ));
        // Still slow: no new change.
        let s = b.send(t0);
        assert_eq!(b.receive(s, t0 + Duration::from_millis(90)), None);
        assert!(b.alarm().is_some());
        assert!(!b.affects_readiness());
    }

    #[test]
    fn readiness_only_when_configured_and_raised() {
        let t0 = Instant::now();
        let mut s = settings(2, None);
        s.alarm_affects_readiness = true;
        let mut b = E2eBoard::new(s);
        assert!(!b.affects_readiness());
        b.send(t0);
        assert!(matches!(
            b.expire(t0 + Duration::from_secs(1)),
            Some(AlarmChange::Raised(_))
        ));
        assert!(b.affects_readiness());
        assert_eq!(b.json()["alarm"], true);
    }

    #[test]
    fn p99_nearest_rank() {
        let t0 = Instant::now();
        let mut b = E2eBoard::new(settings(200, None));
        for i in 1..=100u64 {
            let s = b.send(t0);
            b.receive(s, t0 + Duration::from_millis(i));
        }
        assert_eq!(b.p99(), Some(Duration::from_millis(99)));
        let mut m = String::new();
        b.render_metrics(&mut m);
        assert!(m.contains("simgate_probe_e2e_received_total{listener=\"mqtt\"} 100"));
        assert!(m.contains("simgate_probe_e2e_delay_seconds_count{listener=\"mqtt\"} 100"));
    }

    #[test]
    fn a_wrong_answer_is_lost_with_its_reason() {
        let t0 = Instant::now();
        let mut b = E2eBoard::new(settings(2, None));
        let first = b.send(t0);
        let second = b.send(t0);
        assert_eq!(b.receive(second, t0 + Duration::from_millis(5)), None);
        assert!(matches!(
            b.lose(first, "HTTP 502".into()),
            Some(AlarmChange::Raised(ref why)) if why.contains("loss ratio 0.500")
        ));
        let json = b.json();
        assert_eq!(json["lost_total"], 1);
        assert_eq!(json["in_flight"], 0);
        assert_eq!(json["last_error"], "HTTP 502");
        // Already lost: a second verdict and the expiry count nothing more.
        assert_eq!(b.lose(first, "again".into()), None);
        assert_eq!(b.expire(t0 + Duration::from_secs(5)), None);
        assert_eq!(b.json()["lost_total"], 1);
        assert_eq!(b.json()["last_error"], "again");
    }

    #[test]
    fn echoed_seq_needs_our_client_id() {
        let body = message(7, 123, "probe-e2e");
        assert_eq!(echoed_seq(body.as_bytes(), "probe-e2e"), Some(7));
        assert_eq!(echoed_seq(body.as_bytes(), "other-e2e"), None);
        assert_eq!(echoed_seq(b"ok", "probe-e2e"), None);
    }
}
