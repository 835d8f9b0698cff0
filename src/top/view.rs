//! What `simgate top` shows, computed from two readings of the admin API, and its plain-text
//! report (`--once`).
//!
//! What it does: counter deltas and per-second rates between two samples (a counter that went
//! down was reset — simgate restarted — and counts from zero: the delta is its new value),
//! gauges as read in the later sample, the top SIMs by bytes. Pure: no IO, no clock (the time
//! between the samples is passed in).
//!
//! What it does not do: drawing (`tui.rs` lays the same [`View`] out on a terminal); history
//! beyond the previous sample; percentiles (the histograms stay in `/metrics` and Prometheus).

use std::fmt::Write as _;
use std::time::Duration;

use super::client::{Probe, Readiness, Sample, SimUsage};
use super::expo::Exposition;

/// How many SIMs "top by traffic" lists.
pub const TOP_SIMS: usize = 10;

/// The increase of a counter from `prev` to `cur`. A counter only goes up; a lower value means
/// it was reset (the process restarted) and counted `cur` since, so the increase is `cur`.
pub fn counter_delta(prev: f64, cur: f64) -> f64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Per second over `elapsed` (0 when no time passed).
pub fn per_second(delta: f64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        delta / s
    } else {
        0.0
    }
}

/// A counter: its value in the later sample and its rate between the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    /// Value in the later sample.
    pub total: f64,
    /// Increase per second between the samples.
    pub per_s: f64,
}

/// One labelled counter series (or several summed by the labels shown).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The label values, in the order of the family's label names.
    pub labels: Vec<String>,
    /// Its counts.
    pub counter: Counter,
}

/// Device connections open, split as far as `/metrics` allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connections {
    /// `simgate_connections_open`: every device connection.
    pub open: f64,
    /// MQTT device sessions open in session mode.
    pub mqtt_session: f64,
    /// MQTT device sessions open in aggregate mode.
    pub mqtt_aggregate: f64,
    /// `open` less the MQTT sessions: HTTP connections, and MQTT connections not past CONNECT.
    pub other: f64,
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections refused at a cap.
    pub rejected: Counter,
}

/// Upstream connections and pool state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Upstream {
    /// TLS connections established.
    pub connects: Counter,
    /// Connects that failed.
    pub connect_failures: Counter,
    /// Requests sent on a pooled connection.
    pub reused: Counter,
    /// Requests re-sent after a dead pooled connection.
    pub retries: Counter,
    /// Idle pooled connections now.
    pub idle: f64,
    /// Aggregate-mode MQTT links up now.
    pub links_up: f64,
    /// Aggregate-mode MQTT links down now.
    pub links_down: f64,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The admin address read.
    pub admin: String,
    /// Time between the two samples.
    pub elapsed: Duration,
    /// `/readyz`.
    pub ready: Readiness,
    /// `simgate_http_requests_total`.
    pub requests: Counter,
    /// `simgate_mqtt_publishes_total`, both directions.
    pub publishes: Counter,
    /// Uplink part of `publishes`.
    pub publishes_up: Counter,
    /// Downlink part of `publishes`.
    pub publishes_down: Counter,
    /// `simgate_http_errors_total` by `kind` (kinds at 0 left out, as in the rows below).
    pub http_errors: Vec<Row>,
    /// `simgate_mqtt_errors_total` by `kind`.
    pub mqtt_errors: Vec<Row>,
    /// Device connections.
    pub connections: Connections,
    /// Upstream connections.
    pub upstream: Upstream,
    /// `simgate_cloud_responses_total` by `adapter`, `status`.
    pub cloud: Vec<Row>,
    /// `/admin/probes`.
    pub probes: Vec<Probe>,
    /// `/admin/usage`, the [`TOP_SIMS`] SIMs with the most bytes.
    pub top_sims: Vec<SimUsage>,
    /// SIM rows in `/admin/usage` altogether.
    pub sims: usize,
}

impl View {
    /// The view between `prev` and `cur` (two samples of the same admin API, `prev` first).
    pub fn new(admin: &str, prev: &Sample, cur: &Sample) -> View {
        let elapsed = cur.at.saturating_duration_since(prev.at);
        let (p, c) = (&prev.metrics, &cur.metrics);
        let counter = |name: &str| {
            let total = c.sum(name);
            Counter {
                total,
                per_s: per_second(counter_delta(p.sum(name), total), elapsed),
            }
        };
        let counter_where = |name: &str, label: &str, value: &str| {
            let total = c.sum_where(name, label, value);
            Counter {
                total,
                per_s: per_second(
                    counter_delta(p.sum_where(name, label, value), total),
                    elapsed,
                ),
            }
        };
        let rows = |name: &str, labels: &[&str]| rows(p, c, name, labels, elapsed);
        let open = c.sum("simgate_connections_open");
        let mqtt_session = c.sum_where("simgate_mqtt_sessions_open", "mode", "session");
        let mqtt_aggregate = c.sum_where("simgate_mqtt_sessions_open", "mode", "aggregate");
        let mut top_sims = cur.usage.clone();
        top_sims.sort_by(|a, b| {
            b.bytes()
                .cmp(&a.bytes())
                .then_with(|| (&a.imsi, &a.group).cmp(&(&b.imsi, &b.group)))
        });
        top_sims.truncate(TOP_SIMS);
        View {
            admin: admin.to_owned(),
            elapsed,
            ready: cur.ready.clone(),
            requests: counter("simgate_http_requests_total"),
            publishes: counter("simgate_mqtt_publishes_total"),
            publishes_up: counter_where("simgate_mqtt_publishes_total", "direction", "uplink"),
            publishes_down: counter_where("simgate_mqtt_publishes_total", "direction", "downlink"),
            http_errors: rows("simgate_http_errors_total", &["kind"]),
            mqtt_errors: rows("simgate_mqtt_errors_total", &["kind"]),
            connections: Connections {
                open,
                mqtt_session,
                mqtt_aggregate,
                other: (open - mqtt_session - mqtt_aggregate).max(0.0),
                accepted: counter("simgate_connections_accepted_total"),
                rejected: counter("simgate_connections_rejected_total"),
            },
            upstream: Upstream {
                connects: counter("simgate_upstream_connects_total"),
                connect_failures: counter("simgate_upstream_connect_failures_total"),
                reused: counter("simgate_upstream_reused_total"),
                retries: counter("simgate_upstream_retries_total"),
                idle: c.sum("simgate_upstream_idle_connections"),
                links_up: c.sum_where("simgate_mqtt_links", "state", "up"),
                links_down: c.sum_where("simgate_mqtt_links", "state", "down"),
            },
            cloud: rows("simgate_cloud_responses_total", &["adapter", "status"]),
            probes: cur.probes.clone(),
            top_sims,
            sims: cur.usage.len(),
        }
    }

    /// The `--once` report: one line per fact, `SECTION key=value …`, no escape codes, in a
    /// fixed order (sections and keys never move; rows are sorted by their labels, SIMs by
    /// bytes). Numbers: counters and gauges as integers, rates with two decimals.
    pub fn report(&self) -> String {
        let mut w = String::new();
        let _ = writeln!(
            w,
            "simgate-top admin={} interval_s={:.3}",
            self.admin,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "ready status={} detail={}",
            if self.ready.ready {
                "ready"
            } else {
                "not_ready"
            },
            quote(&self.ready.detail.replace('\n', "; "))
        );
        let _ = writeln!(w, "requests {}", counter(&self.requests));
        let _ = writeln!(
            w,
            "mqtt_publishes {} uplink_total={} downlink_total={}",
            counter(&self.publishes),
            num(self.publishes_up.total),
            num(self.publishes_down.total)
        );
        labelled(&mut w, "http_errors", &["kind"], &self.http_errors);
        labelled(&mut w, "mqtt_errors", &["kind"], &self.mqtt_errors);
        let c = &self.connections;
        let _ = writeln!(
            w,
            "connections open={} mqtt_session={} mqtt_aggregate={} other={} accepted_total={} \
             accepted_per_s={:.2} rejected_total={}",
            num(c.open),
            num(c.mqtt_session),
            num(c.mqtt_aggregate),
            num(c.other),
            num(c.accepted.total),
            c.accepted.per_s,
            num(c.rejected.total)
        );
        let u = &self.upstream;
        let _ = writeln!(
            w,
            "upstream connects_total={} connects_per_s={:.2} connect_failures_total={} \
             reused_total={} retries_total={} idle={} mqtt_links_up={} mqtt_links_down={}",
            num(u.connects.total),
            u.connects.per_s,
            num(u.connect_failures.total),
            num(u.reused.total),
            num(u.retries.total),
            num(u.idle),
            num(u.links_up),
            num(u.links_down)
        );
        labelled(
            &mut w,
            "cloud_responses",
            &["adapter", "status"],
            &self.cloud,
        );
        if self.probes.is_empty() {
            let _ = writeln!(w, "probe none");
        }
        for p in &self.probes {
            let _ = writeln!(
                w,
                "probe destination={} result={} consecutive_failures={} round_trip_ms={} note={}",
                quote(&p.destination),
                p.result,
                p.consecutive_failures,
                p.round_trip_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
                quote(p.note.as_deref().unwrap_or("-"))
            );
        }
        let _ = writeln!(
            w,
            "sims with_usage={} shown={}",
            self.sims,
            self.top_sims.len()
        );
        for (rank, s) in self.top_sims.iter().enumerate() {
            let _ = writeln!(
                w,
                "sim rank={} imsi={} group={} bytes={} up_bytes={} down_bytes={} up_msgs={} \
                 down_msgs={} errors={}",
                rank + 1,
                s.imsi,
                quote(&s.group),
                s.bytes(),
                s.up_bytes,
                s.down_bytes,
                s.up_msgs,
                s.down_msgs,
                s.errors
            );
        }
        w
    }
}

/// The series of `name` grouped by `labels`, those still at 0 left out (simgate exports many
/// label sets at 0 from the start: every error kind, every adapter and status class).
fn rows(
    p: &Exposition,
    c: &Exposition,
    name: &str,
    labels: &[&str],
    elapsed: Duration,
) -> Vec<Row> {
    let before = p.group_by(name, labels);
    c.group_by(name, labels)
        .into_iter()
        .filter(|(_, total)| *total != 0.0)
        .map(|(labels, total)| {
            let prev = before.get(&labels).copied().unwrap_or(0.0);
            Row {
                labels,
                counter: Counter {
                    total,
                    per_s: per_second(counter_delta(prev, total), elapsed),
                },
            }
        })
        .collect()
}

/// `total=N per_s=R`.
fn counter(c: &Counter) -> String {
    format!("total={} per_s={:.2}", num(c.total), c.per_s)
}

fn labelled(w: &mut String, section: &str, names: &[&str], rows: &[Row]) {
    if rows.is_empty() {
        let _ = writeln!(w, "{section} none");
    }
    for r in rows {
        let labels: Vec<String> = names
            .iter()
            .zip(&r.labels)
            .map(|(n, v)| format!("{n}={}", quote(v)))
            .collect();
        let _ = writeln!(w, "{section} {} {}", labels.join(" "), counter(&r.counter));
    }
}

/// A count as an integer when it is one, else with three decimals.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// A value as is when it is one plain word, else in double quotes (with `"` and `\` escaped).
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sample(at: Instant, metrics: &str, usage: Vec<SimUsage>) -> Sample {
        Sample {
            at,
            metrics: Exposition::parse(metrics).unwrap(),
            ready: Readiness {
                ready: true,
                detail: "ready".into(),
            },
            probes: vec![Probe {
                destination: "sink".into(),
                result: "ok".into(),
                consecutive_failures: 0,
                round_trip_ms: Some(2.25),
                note: Some("HTTP 200".into()),
            }],
            usage,
        }
    }

    fn sim(imsi: &str, up: u64, down: u64) -> SimUsage {
        SimUsage {
            imsi: imsi.into(),
            group: "default".into(),
            up_msgs: 1,
            up_bytes: up,
            down_msgs: 1,
            down_bytes: down,
            errors: 0,
        }
    }

    #[test]
    fn counter_deltas_survive_a_reset() {
        assert_eq!(counter_delta(10.0, 15.0), 5.0);
        assert_eq!(counter_delta(10.0, 10.0), 0.0);
        // simgate restarted between the samples: it counted 3 since.
        assert_eq!(counter_delta(10.0, 3.0), 3.0);
        assert_eq!(per_second(5.0, Duration::from_millis(500)), 10.0);
        assert_eq!(per_second(5.0, Duration::ZERO), 0.0);
    }

    #[test]
    fn rates_per_family_and_label() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let a = sample(
            t0,
            "simgate_http_requests_total 10\n\
             simgate_http_errors_total{kind=\"no_route\"} 4\n\
             simgate_mqtt_publishes_total{mode=\"session\",direction=\"uplink\"} 100\n",
            vec![],
        );
        let b = sample(
            t1,
            "simgate_http_requests_total 30\n\
             simgate_http_errors_total{kind=\"no_route\"} 1\n\
             simgate_http_errors_total{kind=\"upstream_tls\"} 2\n\
             simgate_mqtt_publishes_total{mode=\"session\",direction=\"uplink\"} 104\n\
             simgate_mqtt_publishes_total{mode=\"aggregate\",direction=\"downlink\"} 2\n\
             simgate_connections_open 5\n\
             simgate_mqtt_sessions_open{mode=\"session\"} 1\n\
             simgate_mqtt_sessions_open{mode=\"aggregate\"} 2\n",
            vec![],
        );
        let v = View::new("x", &a, &b);
        assert_eq!(v.elapsed, Duration::from_secs(2));
        assert_eq!(
            v.requests,
            Counter {
                total: 30.0,
                per_s: 10.0
            }
        );
        assert_eq!(
            v.publishes,
            Counter {
                total: 106.0,
                per_s: 3.0
            }
        );
        assert_eq!(v.publishes_down.total, 2.0);
        // no_route went down (a reset): counts 1 since; upstream_tls is new: 2.
        assert_eq!(
            v.http_errors,
            [
                Row {
                    labels: vec!["no_route".into()],
                    counter: Counter {
                        total: 1.0,
                        per_s: 0.5
                    }
                },
                Row {
                    labels: vec!["upstream_tls".into()],
                    counter: Counter {
                        total: 2.0,
                        per_s: 1.0
                    }
                }
            ]
        );
        assert_eq!(v.connections.other, 2.0);
    }

    #[test]
    fn report_is_stable_plain_text() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        let metrics = |n: u32| {
            format!(
                "simgate_http_requests_total {n}\n\
                 simgate_http_errors_total{{kind=\"no_route\"}} 1\n\
                 simgate_cloud_responses_total{{adapter=\"gcp-pubsub\",status=\"2xx\"}} {n}\n\
                 simgate_cloud_responses_total{{adapter=\"gcp-pubsub\",status=\"5xx\"}} 0\n\
                 simgate_connections_open 2\n\
                 simgate_connections_accepted_total 7\n\
                 simgate_upstream_connects_total 2\n\
                 simgate_upstream_reused_total 5\n\
                 simgate_upstream_idle_connections 2\n"
            )
        };
        let a = sample(t0, &metrics(6), vec![]);
        let mut b = sample(
            t1,
            &metrics(8),
            vec![
                sim("440100000000001", 10, 10),
                sim("440100000000002", 300, 5),
            ],
        );
        b.ready = Readiness {
            ready: false,
            detail: "destination sink: warm pool not filled yet on shard 0\nshard(s) [1] stopped"
                .into(),
        };
        let report = View::new("127.0.0.1:9180", &a, &b).report();
        let expected = "\
simgate-top admin=127.0.0.1:9180 interval_s=0.500
ready status=not_ready detail=\"destination sink: warm pool not filled yet on shard 0; shard(s) [1] stopped\"
requests total=8 per_s=4.00
mqtt_publishes total=0 per_s=0.00 uplink_total=0 downlink_total=0
http_errors kind=no_route total=1 per_s=0.00
mqtt_errors none
connections open=2 mqtt_session=0 mqtt_aggregate=0 other=2 accepted_total=7 accepted_per_s=0.00 rejected_total=0
upstream connects_total=2 connects_per_s=0.00 connect_failures_total=0 reused_total=5 retries_total=0 idle=2 mqtt_links_up=0 mqtt_links_down=0
cloud_responses adapter=gcp-pubsub status=2xx total=8 per_s=4.00
probe destination=sink result=ok consecutive_failures=0 round_trip_ms=2.2 note=\"HTTP 200\"
sims with_usage=2 shown=2
sim rank=1 imsi=440100000000002 group=default bytes=305 up_bytes=300 down_bytes=5 up_msgs=1 down_msgs=1 errors=0
sim rank=2 imsi=440100000000001 group=default bytes=20 up_bytes=10 down_bytes=10 up_msgs=1 down_msgs=1 errors=0
";
        assert_eq!(report, expected);
        assert!(!report.contains('\x1b'));
    }

    #[test]
    fn numbers_and_quoting() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.25), "0.250");
        assert_eq!(quote("sink-1"), "sink-1");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(quote(""), "\"\"");
    }
}
