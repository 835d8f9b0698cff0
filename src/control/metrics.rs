//! Prometheus text exposition (format 0.0.4) of merged shard metrics.
//!
//! Renders what [`crate::shard::ShardMetrics`] holds; it does not collect anything itself.
//! Histograms are exported as classic Prometheus histograms with fixed buckets derived from the
//! HDR histograms; `_sum` is the HDR mean times the count (HDR keeps no exact sum), which is
//! within the histogram's 3-significant-digit precision.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;

use super::radius::RadiusStats;
use crate::policy::AdapterKind;
use crate::shard::{CapReason, ErrorKind, Protocol, ShardMetrics};
use crate::stats::{
    CloudRule, DestinationCounters, DestinationLatencies, Direction, Latency, ReactorCounters,
    RejectReason, CLOUD_STATUSES,
};

/// Reload counters kept by the control thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadCounters {
    /// Reloads applied.
    pub ok: u64,
    /// Reloads rejected (bad config, listener change).
    pub failed: u64,
}

/// Re-resolution counters of one destination, kept by the control thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Lookups that changed the destination's addresses (applied on every shard).
    pub changes: u64,
    /// Lookups that failed or returned no address (the last good addresses stayed).
    pub failures: u64,
}

/// Cloud token refreshes of one destination and its current token's expiry, kept by the
/// control thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialCounters {
    /// Refreshes that obtained a token.
    pub ok: u64,
    /// Refreshes that failed (the last token stayed in use while valid).
    pub errors: u64,
    /// When the current token expires (`None`: no token yet, or the destination left the
    /// configuration).
    pub expires_at: Option<std::time::SystemTime>,
}

/// Upper bounds of the latency histogram buckets, in seconds.
pub(super) const BUCKETS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The plan generation the gateway serves and the one each shard serves (shard order). Equal
/// unless a shard did not apply a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanGenerations {
    /// The gateway's: 0 at start, one more per reload.
    pub expected: u64,
    /// Each shard's.
    pub served: Vec<u64>,
}

/// Render the exposition text.
pub fn render(
    m: &ShardMetrics,
    listeners: &[&str],
    plans: &PlanGenerations,
    reloads: ReloadCounters,
    dns: &BTreeMap<String, DnsCounters>,
    radius: Option<&RadiusStats>,
) -> String {
    let shards = plans.served.len();
    let mut out = String::with_capacity(8 * 1024);
    let w = &mut out;
    gauge(
        w,
        "simgate_build_info",
        "simgate version, as a label",
        &[(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)],
    );
    gauge(
        w,
        "simgate_shards",
        "Data-plane shards running",
        &[("", shards as u64)],
    );
    gauge(
        w,
        "simgate_plan_generation",
        "Generation of the configuration the gateway serves (0 at start, +1 per reload)",
        &[("", plans.expected)],
    );
    let served: Vec<(String, u64)> = plans
        .served
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("shard=\"{i}\""), *g))
        .collect();
    let served_refs: Vec<(&str, u64)> = served.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        w,
        "simgate_shard_plan_generation",
        "Generation of the configuration each shard serves (behind simgate_plan_generation: \
         that shard did not apply a reload)",
        &served_refs,
    );
    counter(
        w,
        "simgate_connections_accepted_total",
        "Device connections accepted",
        &[("", m.connections_accepted)],
    );
    gauge(
        w,
        "simgate_connections_open",
        "Device connections open",
        &[("", m.connections_open)],
    );
    let caps: Vec<(String, u64)> = CapReason::ALL
        .iter()
        .map(|r| {
            (
                format!("reason=\"{}\"", r.label()),
                m.connections_rejected[r.index()],
            )
        })
        .collect();
    let cap_refs: Vec<(&str, u64)> = caps.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_connections_rejected_total",
        "Device connections closed at accept because a connection cap was reached",
        &cap_refs,
    );
    let rejects: Vec<(String, u64)> = listeners
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                format!("listener=\"{name}\",reason=\"unknown_source\""),
                m.unknown_source_rejects.get(i).copied().unwrap_or(0),
            )
        })
        .collect();
    let reject_refs: Vec<(&str, u64)> = rejects.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_device_rejects_total",
        "Devices refused by identity, by listener and reason (unknown_source: no SIM for the \
         source address on a listener with unknown = \"reject\")",
        &reject_refs,
    );
    counter(
        w,
        "simgate_http_identity_headers_dropped_total",
        "X-Simgate-* headers sent by devices and left out of what was forwarded",
        &[("", m.http_identity_headers_dropped)],
    );
    counter(
        w,
        "simgate_accept_errors_total",
        "Accepts that failed in the kernel (EMFILE, ENFILE, ENOBUFS); accepting goes on",
        &[("", m.accept_errors)],
    );
    counter(
        w,
        "simgate_http_requests_total",
        "Device HTTP requests received (including rejected ones)",
        &[("", m.requests)],
    );
    let classes: Vec<(String, u64)> = (1..=5)
        .map(|c| (format!("class=\"{c}xx\""), m.responses_by_class[c]))
        .collect();
    let class_refs: Vec<(&str, u64)> = classes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_http_responses_total",
        "HTTP responses sent to devices, by status class",
        &class_refs,
    );
    for (protocol, help) in [
        (
            Protocol::Http,
            "HTTP requests answered with an error generated by simgate, by cause",
        ),
        (
            Protocol::Mqtt,
            "MQTT device sessions refused or ended by an error simgate met, by cause",
        ),
    ] {
        let kinds: Vec<(String, u64)> = ErrorKind::ALL
            .iter()
            .map(|k| (format!("kind=\"{}\"", k.label()), m.errors_of(protocol, *k)))
            .collect();
        let kind_refs: Vec<(&str, u64)> = kinds.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        let name = format!("simgate_{}_errors_total", protocol.label());
        counter(w, &name, help, &kind_refs);
    }
    // Cloud adapters' calls: the clouds' answers by adapter and status bucket, and batching.
    let mut cloud: Vec<(String, u64)> = Vec::new();
    for (index, kind) in AdapterKind::ALL.iter().enumerate() {
        if matches!(kind, AdapterKind::GenericHttps | AdapterKind::Mqtts) {
            continue;
        }
        let row = m.cloud_responses.get(index);
        for (bucket, status) in CLOUD_STATUSES.iter().enumerate() {
            cloud.push((
                format!("adapter=\"{}\",status=\"{status}\"", kind.config_name()),
                row.map_or(0, |r| r[bucket]),
            ));
        }
    }
    let cloud_refs: Vec<(&str, u64)> = cloud.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_cloud_responses_total",
        "Answers of the clouds to the cloud adapters' calls, by adapter and status (2xx, the \
         statuses with a meaning of their own, then 4xx and 5xx for the rest)",
        &cloud_refs,
    );
    // Device MQTT traffic refused by a cloud's rule before it went upstream, for the adapters
    // with an MQTT form.
    let mut refusals: Vec<(String, u64)> = Vec::new();
    for kind in [AdapterKind::AwsIotCore, AdapterKind::AzureIotHub] {
        let row = m.cloud_refusals.get(kind.index());
        for rule in CloudRule::ALL {
            refusals.push((
                format!(
                    "adapter=\"{}\",rule=\"{}\"",
                    kind.config_name(),
                    rule.label()
                ),
                row.map_or(0, |r| r[rule.index()]),
            ));
        }
    }
    let refusal_refs: Vec<(&str, u64)> = refusals.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_mqtt_cloud_refusals_total",
        "Device MQTT messages and CONNECTs refused by a cloud's rule that simgate enforces \
         before the cloud would have (never sent upstream), by adapter and rule",
        &refusal_refs,
    );
    counter(
        w,
        "simgate_cloud_batches_total",
        "Batched cloud calls made (gcp-pubsub, azure-event-hubs with batch)",
        &[("", m.cloud_batches)],
    );
    counter(
        w,
        "simgate_cloud_batched_messages_total",
        "Device messages carried by batched cloud calls",
        &[("", m.cloud_batched_messages)],
    );
    counter(
        w,
        "simgate_http_trailer_fields_dropped_total",
        "Trailer fields of chunked device requests dropped before forwarding (RFC 9110 6.5.1)",
        &[("", m.http_trailer_fields_dropped)],
    );
    counter(
        w,
        "simgate_device_received_bytes_total",
        "Bytes received from devices",
        &[("", m.device_bytes_in)],
    );
    counter(
        w,
        "simgate_device_sent_bytes_total",
        "Bytes sent to devices",
        &[("", m.device_bytes_out)],
    );
    counter(
        w,
        "simgate_upstream_connects_total",
        "Upstream TLS connections established",
        &[("", m.upstream.connects)],
    );
    counter(
        w,
        "simgate_upstream_connect_failures_total",
        "Upstream connects (TCP or TLS) that failed",
        &[("", m.upstream.connect_failures)],
    );
    counter(
        w,
        "simgate_upstream_connects_local_failures_total",
        "Upstream connects not started: simgate out of file descriptors or socket memory",
        &[("", m.upstream.connects_local_failures)],
    );
    counter(
        w,
        "simgate_upstream_tls_resumed_total",
        "Upstream TLS handshakes that resumed a session",
        &[("", m.upstream.tls_resumed)],
    );
    counter(
        w,
        "simgate_upstream_connects_overtaken_total",
        "Upstream connects overtaken by a returned pooled connection (they finish into the pool)",
        &[("", m.upstream.connects_overtaken)],
    );
    counter(
        w,
        "simgate_upstream_h2_connections_total",
        "Upstream connections whose server selected HTTP/2 (each shared by many requests)",
        &[("", m.upstream.h2_connections)],
    );
    counter(
        w,
        "simgate_upstream_reused_total",
        "Requests sent on a pooled upstream connection",
        &[("", m.upstream_reused)],
    );
    counter(
        w,
        "simgate_upstream_retries_total",
        "Requests re-sent after a pooled connection was found dead",
        &[("", m.upstream_retries)],
    );
    gauge(
        w,
        "simgate_upstream_idle_connections",
        "Idle upstream connections in the pools",
        &[("", m.upstream_idle)],
    );
    counter(
        w,
        "simgate_config_reloads_total",
        "Configuration reloads applied",
        &[("", reloads.ok)],
    );
    counter(
        w,
        "simgate_config_reload_failures_total",
        "Configuration reloads rejected",
        &[("", reloads.failed)],
    );
    // Destination names are [a-z0-9_-]: nothing to escape in the label value.
    let dns_labels: Vec<(String, DnsCounters)> = dns
        .iter()
        .map(|(name, c)| (format!("destination=\"{name}\""), *c))
        .collect();
    let changes: Vec<(&str, u64)> = dns_labels
        .iter()
        .map(|(l, c)| (l.as_str(), c.changes))
        .collect();
    let failures: Vec<(&str, u64)> = dns_labels
        .iter()
        .map(|(l, c)| (l.as_str(), c.failures))
        .collect();
    counter(
        w,
        "simgate_upstream_dns_changes_total",
        "Periodic re-resolutions of a destination's endpoint that changed its addresses",
        &changes,
    );
    counter(
        w,
        "simgate_upstream_dns_failures_total",
        "Periodic re-resolutions of a destination's endpoint that failed or found no address",
        &failures,
    );
    let a = &m.mqtt_aggregate;
    counter(
        w,
        "simgate_mqtt_sessions_started_total",
        "Session-mode MQTT device sessions bridged (upstream CONNACK accepted)",
        &[("", m.mqtt_sessions_started)],
    );
    gauge(
        w,
        "simgate_mqtt_sessions_open",
        "MQTT device sessions open, by mode",
        &[
            ("mode=\"session\"", m.mqtt_sessions_open),
            ("mode=\"aggregate\"", a.sessions_open),
        ],
    );
    counter(
        w,
        "simgate_mqtt_connects_refused_total",
        "Device CONNECTs refused, by reason: the broker refused it (session mode), or the \
         upstream link had been down for down_after (aggregate mode, accept_while_down = false)",
        &[
            ("reason=\"broker\"", m.mqtt_connects_refused),
            ("reason=\"upstream_down\"", a.connects_refused_down),
        ],
    );
    counter(
        w,
        "simgate_mqtt_session_renewals_total",
        "Session-mode upstream connections replaced before their token expired (azure-iot-hub), \
         by result: ok (switched to the new connection) or failed (the old one was kept)",
        &[
            ("result=\"ok\"", m.mqtt_session_renewals_ok),
            ("result=\"failed\"", m.mqtt_session_renewals_failed),
        ],
    );
    counter(
        w,
        "simgate_mqtt_publishes_total",
        "MQTT PUBLISHes forwarded, by mode and direction",
        &[
            (
                "mode=\"session\",direction=\"uplink\"",
                m.mqtt_publishes_uplink,
            ),
            (
                "mode=\"session\",direction=\"downlink\"",
                m.mqtt_publishes_downlink,
            ),
            (
                "mode=\"aggregate\",direction=\"uplink\"",
                a.uplink_publishes,
            ),
            (
                "mode=\"aggregate\",direction=\"downlink\"",
                a.downlink_messages,
            ),
        ],
    );
    counter(
        w,
        "simgate_mqtt_upstream_acks_total",
        "Broker PUBACKs for aggregate-mode QoS 1 PUBLISHes",
        &[("", a.upstream_acks)],
    );
    counter(
        w,
        "simgate_mqtt_qos0_dropped_total",
        "Aggregate-mode QoS 0 PUBLISHes dropped while the link was down or behind",
        &[("", a.qos0_dropped)],
    );
    counter(
        w,
        "simgate_mqtt_resent_after_reconnect_total",
        "Unacknowledged QoS 1 PUBLISHes resent in order after an upstream reconnect",
        &[("", a.resent_after_reconnect)],
    );
    counter(
        w,
        "simgate_mqtt_link_connects_total",
        "Aggregate-mode upstream MQTT sessions established",
        &[("", a.link_connects)],
    );
    gauge(
        w,
        "simgate_mqtt_links",
        "Aggregate-mode upstream links (one per shard and destination with devices), by state",
        &[
            ("state=\"up\"", a.links_up),
            ("state=\"down\"", a.links_running.saturating_sub(a.links_up)),
        ],
    );
    counter(
        w,
        "simgate_mqtt_link_failures_total",
        "Aggregate-mode upstream MQTT connections lost or refused",
        &[("", a.link_failures)],
    );
    counter(
        w,
        "simgate_mqtt_topics_refused_total",
        "Device PUBLISHes refused because the rewritten topic is invalid",
        &[("", a.topics_refused)],
    );
    // Destination names are [a-z0-9_-]: nothing to escape in the label value.
    let rate_labels: Vec<(String, u64)> = m
        .mqtt_rate_limited
        .iter()
        .flat_map(|(name, t)| {
            [
                ("waited", t.waited),
                ("spilled", t.spilled),
                ("refused", t.refused),
            ]
            .map(|(outcome, n)| (format!("destination=\"{name}\",outcome=\"{outcome}\""), n))
        })
        .collect();
    let rate_rows: Vec<(&str, u64)> = rate_labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    counter(
        w,
        "simgate_mqtt_publish_rate_limited_total",
        "Aggregate-mode device PUBLISHes whose upstream link had no turn free under \
         max_publish_rate, by destination and outcome: waited for it, spilled to another link, \
         or refused",
        &rate_rows,
    );
    counter(
        w,
        "simgate_mqtt_sessions_taken_over_total",
        "Aggregate-mode device sessions ended because a newer connection took their client id",
        &[("", a.sessions_taken_over)],
    );
    if let Some(r) = radius {
        let statuses = [
            "start",
            "stop",
            "interim_update",
            "accounting_on",
            "accounting_off",
            "other",
        ];
        let requests: Vec<(String, u64)> = statuses
            .iter()
            .map(|s| {
                (
                    format!("status=\"{s}\""),
                    r.requests.get(s).copied().unwrap_or(0),
                )
            })
            .collect();
        let refs: Vec<(&str, u64)> = requests.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            w,
            "simgate_radius_requests_total",
            "Accounting-Requests that verified (each answered), by Acct-Status-Type",
            &refs,
        );
        let dropped: Vec<(String, u64)> = r
            .dropped
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        let refs: Vec<(&str, u64)> = dropped.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            w,
            "simgate_radius_dropped_total",
            "RADIUS datagrams dropped unanswered (bad authenticator, malformed), by reason",
            &refs,
        );
        counter(
            w,
            "simgate_radius_duplicates_total",
            "Retransmitted Accounting-Requests answered again and not applied twice",
            &[("", r.duplicates)],
        );
        let not_bound: Vec<(String, u64)> = r
            .not_bound
            .iter()
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        let refs: Vec<(&str, u64)> = not_bound.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            w,
            "simgate_radius_not_bound_total",
            "Start/Interim-Update requests that bound nothing, by reason",
            &refs,
        );
        gauge(
            w,
            "simgate_radius_bindings",
            "Session addresses bound to SIMs by RADIUS accounting now",
            &[("", r.bindings)],
        );
    }
    render_reactor(w, &m.reactor);
    histogram(
        w,
        "simgate_http_request_duration_seconds",
        "Time from a device request fully received to its response fully sent",
        &m.request_total_us,
    );
    histogram(w, "simgate_http_gateway_added_seconds", "Request duration minus time waiting for the upstream response head: the latency simgate adds", &m.gateway_added_us);
    render_latency(w, &m.latency);
    render_destination_counters(w, &m.destinations);
    out
}

/// Samples of one family: rendered label sets and their values.
type LabelledValues = Vec<(String, u64)>;

/// Append the per-destination counter families: every destination of the served plan, every
/// bounded label combination, from 0 (so `rate()` works from the first sample).
fn render_destination_counters(w: &mut String, c: &DestinationCounters) {
    // Destination names are [a-z0-9_-]: nothing to escape in the label value.
    let mut messages = Vec::new();
    let mut bytes = Vec::new();
    let mut errors = Vec::new();
    let mut rejects = Vec::new();
    let mut checkouts = Vec::new();
    let mut connects = Vec::new();
    let mut reconnects = Vec::new();
    for d in &c.destinations {
        let dest = &d.name;
        for p in Protocol::ALL {
            for dir in Direction::ALL {
                messages.push((
                    format!(
                        "destination=\"{dest}\",protocol=\"{}\",direction=\"{}\"",
                        p.label(),
                        dir.label()
                    ),
                    d.messages_of(p, dir),
                ));
            }
        }
        bytes.push((
            format!("destination=\"{dest}\",direction=\"sent\""),
            d.bytes_sent,
        ));
        bytes.push((
            format!("destination=\"{dest}\",direction=\"received\""),
            d.bytes_received,
        ));
        for p in Protocol::ALL {
            // No route: no destination was chosen, so never counted here.
            for kind in ErrorKind::ALL
                .into_iter()
                .filter(|k| *k != ErrorKind::NoRoute)
            {
                errors.push((
                    format!(
                        "destination=\"{dest}\",protocol=\"{}\",kind=\"{}\"",
                        p.label(),
                        kind.label()
                    ),
                    d.errors_of(p, kind),
                ));
            }
        }
        for reason in RejectReason::ALL {
            rejects.push((
                format!("destination=\"{dest}\",reason=\"{}\"", reason.label()),
                d.rejects[reason.index()],
            ));
        }
        checkouts.push((
            format!("destination=\"{dest}\",result=\"hit\""),
            d.pool_hits,
        ));
        checkouts.push((
            format!("destination=\"{dest}\",result=\"miss\""),
            d.pool_misses,
        ));
        connects.push((
            format!("destination=\"{dest}\",result=\"ok\""),
            d.connects_ok,
        ));
        connects.push((
            format!("destination=\"{dest}\",result=\"failed\""),
            d.connects_failed,
        ));
        reconnects.push((format!("destination=\"{dest}\""), d.reconnects));
    }
    let families: [(&str, &str, &LabelledValues); 7] = [
        (
            "simgate_destination_messages_total",
            "Messages by destination, device protocol and direction: HTTP requests forwarded \
             (uplink) and responses relayed (downlink); MQTT PUBLISHes forwarded each way",
            &messages,
        ),
        (
            "simgate_destination_bytes_total",
            "Bytes sent to and received from each destination: HTTP/1.1 plaintext request and \
             response bytes on its upstream connections; MQTT PUBLISH payload bytes",
            &bytes,
        ),
        (
            "simgate_destination_errors_total",
            "Errors of devices routed to each destination, by device protocol and kind",
            &errors,
        ),
        (
            "simgate_destination_rejects_total",
            "Device messages (or CONNECTs) simgate refused for each destination without \
             sending them upstream, by reason",
            &rejects,
        ),
        (
            "simgate_destination_pool_checkouts_total",
            "Upstream pool checkouts by destination: hit (an idle connection at once) or miss",
            &checkouts,
        ),
        (
            "simgate_destination_connects_total",
            "Upstream connects (TCP and TLS) by destination and result",
            &connects,
        ),
        (
            "simgate_destination_reconnects_total",
            "Upstream MQTT sessions re-established by destination: aggregate-mode links after a \
             loss, session-mode renewals",
            &reconnects,
        ),
    ];
    for (name, help, values) in families {
        let refs: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(w, name, help, &refs);
    }
}

/// Append the io_uring reactor families: one series per shard (label `shard`), so bounded by
/// the shard count.
fn render_reactor(w: &mut String, shards: &[ReactorCounters]) {
    type Field = fn(&ReactorCounters) -> u64;
    let per_shard = |f: Field| -> Vec<(String, u64)> {
        shards
            .iter()
            .map(|r| (format!("shard=\"{}\"", r.shard), f(r)))
            .collect()
    };
    let families: [(&str, &str, &str, Field); 10] = [
        (
            "simgate_reactor_submissions_total",
            "counter",
            "io_uring submission batches: kernel entries that handed at least one SQE over \
             (simgate_reactor_sqes_total / this = mean batch size)",
            |r| r.submissions,
        ),
        (
            "simgate_reactor_sqes_total",
            "counter",
            "io_uring submission queue entries pushed, cancels included",
            |r| r.sqes,
        ),
        (
            "simgate_reactor_completions_total",
            "counter",
            "io_uring completion queue entries reaped",
            |r| r.completions,
        ),
        (
            "simgate_reactor_loop_turns_total",
            "counter",
            "Event-loop turns of the shard's reactor",
            |r| r.loop_turns,
        ),
        (
            "simgate_reactor_enobufs_rearms_total",
            "counter",
            "Multishot receives re-armed after the provided-buffer ring ran dry (ENOBUFS)",
            |r| r.enobufs_rearms,
        ),
        (
            "simgate_reactor_recv_pauses_total",
            "counter",
            "Multishot receives paused because one peer had too many buffers queued unread",
            |r| r.recv_pauses,
        ),
        (
            "simgate_reactor_ops_in_flight",
            "gauge",
            "io_uring operations waiting for their final completion",
            |r| r.ops_in_flight,
        ),
        (
            "simgate_reactor_tasks",
            "gauge",
            "Tasks alive on the shard's executor",
            |r| r.tasks,
        ),
        (
            "simgate_reactor_timers",
            "gauge",
            "Timers armed (neither fired nor dropped)",
            |r| r.timers_armed,
        ),
        (
            "simgate_reactor_timers_fired_total",
            "counter",
            "Timers fired",
            |r| r.timers_fired,
        ),
    ];
    for (name, kind, help, field) in families {
        let values = per_shard(field);
        let refs: Vec<(&str, u64)> = values.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        header(w, name, help, kind);
        samples(w, name, &refs);
    }
    let mut buffers: Vec<(String, u64)> = Vec::with_capacity(shards.len() * 2);
    for r in shards {
        let shard = r.shard;
        buffers.push((
            format!("shard=\"{shard}\",state=\"in_use\""),
            r.recv_buffers_in_use,
        ));
        buffers.push((
            format!("shard=\"{shard}\",state=\"total\""),
            r.recv_buffers_total,
        ));
    }
    let refs: Vec<(&str, u64)> = buffers.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        w,
        "simgate_reactor_recv_buffers",
        "Provided receive buffers of the shard's ring: in_use (held by connections or queued \
         unread) and total",
        &refs,
    );
}

/// Append the per-destination latency families: one series per destination and device
/// protocol (or connect stage) that has samples, so bounded by the configuration.
fn render_latency(w: &mut String, l: &DestinationLatencies) {
    if l.is_switched_off() {
        return;
    }
    let families: [(&str, &str, &[Latency]); 6] = [
        (
            "simgate_request_duration_seconds",
            "Device-observed time in simgate by destination and device protocol: HTTP request \
             fully received to response fully sent; MQTT QoS 1 PUBLISH received to its PUBACK \
             sent to the device",
            &[Latency::RequestDuration],
        ),
        (
            "simgate_upstream_rtt_seconds",
            "Upstream round trip by destination and device protocol: request (QoS 1 PUBLISH) \
             written upstream to response head (PUBACK) received",
            &[Latency::UpstreamRtt],
        ),
        (
            "simgate_upstream_connect_seconds",
            "Upstream connection set-up by destination and stage: TCP connect, then the TLS \
             handshake (full or resumed)",
            &[
                Latency::ConnectTcp,
                Latency::ConnectTlsFull,
                Latency::ConnectTlsResumed,
            ],
        ),
        (
            "simgate_upstream_pool_wait_seconds",
            "Time a request or MQTT session waited for an upstream connection when the pool \
             had no idle one (to its own connect or a returned connection; HTTP/2: to a stream \
             handle, or to its stream opening on a connection at its stream limit), by destination",
            &[Latency::PoolWait],
        ),
        (
            "simgate_gateway_added_seconds",
            "Latency simgate adds by destination and device protocol: device-observed duration \
             minus the upstream round trip of the same request or QoS 1 PUBLISH",
            &[Latency::GatewayAdded],
        ),
        (
            "simgate_upstream_link_wait_seconds",
            "Aggregate mode: time a device PUBLISH (QoS 0 or 1) waited for the shared upstream \
             link (down, in-flight window full, publish-rate pacing) before it was written, by \
             destination",
            &[Latency::LinkWait],
        ),
    ];
    for (name, help, kinds) in families {
        header(w, name, help, "histogram");
        for d in &l.destinations {
            // Destination names are [a-z0-9_-]: nothing to escape in the label value.
            let dest = &d.name;
            for &kind in kinds {
                match kind {
                    Latency::RequestDuration | Latency::UpstreamRtt | Latency::GatewayAdded => {
                        for p in Protocol::ALL {
                            if let Some(h) = d.get(kind, p) {
                                let labels =
                                    format!("destination=\"{dest}\",protocol=\"{}\"", p.label());
                                histogram_series(w, name, &labels, h);
                            }
                        }
                    }
                    Latency::ConnectTcp | Latency::ConnectTlsFull | Latency::ConnectTlsResumed => {
                        if let Some(h) = d.all_protocols(kind) {
                            let (stage, resumed) = match kind {
                                Latency::ConnectTcp => ("tcp", "false"),
                                Latency::ConnectTlsFull => ("tls", "false"),
                                _ => ("tls", "true"),
                            };
                            let labels = format!(
                                "destination=\"{dest}\",stage=\"{stage}\",resumed=\"{resumed}\""
                            );
                            histogram_series(w, name, &labels, &h);
                        }
                    }
                    Latency::PoolWait | Latency::LinkWait => {
                        if let Some(h) = d.all_protocols(kind) {
                            let labels = format!("destination=\"{dest}\"");
                            histogram_series(w, name, &labels, &h);
                        }
                    }
                }
            }
        }
    }
}

/// Append the cloud token families (one series per token-carrying destination, so bounded by
/// the configuration): refreshes by result, and seconds until each current token expires at
/// `now` (0 when there is none or it has expired).
pub fn render_credentials(
    w: &mut String,
    credentials: &BTreeMap<String, CredentialCounters>,
    now: std::time::SystemTime,
) {
    // Destination names are [a-z0-9_-]: nothing to escape in the label value.
    let mut refreshes: Vec<(String, u64)> = Vec::with_capacity(credentials.len() * 2);
    let mut expiry: Vec<(String, u64)> = Vec::with_capacity(credentials.len());
    for (name, c) in credentials {
        refreshes.push((format!("destination=\"{name}\",result=\"ok\""), c.ok));
        refreshes.push((format!("destination=\"{name}\",result=\"error\""), c.errors));
        let left = c
            .expires_at
            .and_then(|t| t.duration_since(now).ok())
            .map_or(0, |d| d.as_secs());
        expiry.push((format!("destination=\"{name}\""), left));
    }
    let refresh_refs: Vec<(&str, u64)> = refreshes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    let expiry_refs: Vec<(&str, u64)> = expiry.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    counter(
        w,
        "simgate_credential_refresh_total",
        "Cloud token mints and renewals by the control thread, by destination and result",
        &refresh_refs,
    );
    gauge(
        w,
        "simgate_credential_token_expiry_seconds",
        "Seconds until the destination's current cloud token expires (0: no valid token)",
        &expiry_refs,
    );
}

fn header(w: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

fn samples(w: &mut String, name: &str, values: &[(&str, u64)]) {
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(w, "{name} {v}");
        } else {
            let _ = writeln!(w, "{name}{{{labels}}} {v}");
        }
    }
}

/// What the usage metering's control side did (no labels: usage per SIM is at
/// `/admin/usage`, never in `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounters {
    /// Intervals closed.
    pub intervals: u64,
    /// Writes to the usage file that failed (the block is retried with the next interval).
    pub file_write_errors: u64,
    /// Usage files rotated.
    pub file_rotations: u64,
    /// (SIM, group) pairs with usage since start.
    pub sims: u64,
}

/// Append the usage metering's own counters.
pub fn render_usage(w: &mut String, c: &UsageCounters) {
    counter(
        w,
        "simgate_usage_intervals_total",
        "Usage intervals closed (each written once to the usage file, if configured)",
        &[("", c.intervals)],
    );
    counter(
        w,
        "simgate_usage_file_write_errors_total",
        "Writes to the usage file that failed; the interval is retried with the next one",
        &[("", c.file_write_errors)],
    );
    counter(
        w,
        "simgate_usage_file_rotations_total",
        "Usage files rotated by size or age",
        &[("", c.file_rotations)],
    );
    gauge(
        w,
        "simgate_usage_sims",
        "SIM and group pairs with usage since start (rows of /admin/usage)",
        &[("", c.sims)],
    );
}

fn counter(w: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(w, name, help, "counter");
    samples(w, name, values);
}

fn gauge(w: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(w, name, help, "gauge");
    samples(w, name, values);
}

fn histogram(w: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    header(w, name, help, "histogram");
    histogram_series(w, name, "", h);
}

/// One histogram's `_bucket`, `_sum` and `_count` samples, with `labels` (may be empty).
fn histogram_series(w: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    let sep = if labels.is_empty() { "" } else { "," };
    for le in BUCKETS_SECONDS {
        let bound_us = (le * 1e6) as u64;
        let count = if h.is_empty() {
            0
        } else {
            h.count_between(0, bound_us)
        };
        let _ = writeln!(w, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(w, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.len());
    let sum = if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e6
    };
    if labels.is_empty() {
        let _ = writeln!(w, "{name}_sum {sum}");
        let _ = writeln!(w, "{name}_count {}", h.len());
    } else {
        let _ = writeln!(w, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(w, "{name}_count{{{labels}}} {}", h.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_counter_families_list_every_destination_from_zero() {
        let mut m = ShardMetrics::default();
        m.destinations.set_destinations(["a", "b"]);
        m.destination_error(1, "b", Protocol::Mqtt, ErrorKind::UpstreamTls);
        m.destination_messages(0, "a", Protocol::Http, Direction::Uplink, 3);
        m.destination_reject(1, "b", RejectReason::PublishRate, 2);
        let text = render(
            &m,
            &[],
            &PlanGenerations::default(),
            ReloadCounters::default(),
            &BTreeMap::new(),
            None,
        );
        for line in [
            "simgate_destination_messages_total{destination=\"a\",protocol=\"http\",direction=\"uplink\"} 3\n",
            "simgate_destination_messages_total{destination=\"b\",protocol=\"mqtt\",direction=\"downlink\"} 0\n",
            "simgate_destination_errors_total{destination=\"b\",protocol=\"mqtt\",kind=\"upstream_tls\"} 1\n",
            "simgate_destination_errors_total{destination=\"a\",protocol=\"mqtt\",kind=\"upstream_tls\"} 0\n",
            "simgate_destination_rejects_total{destination=\"b\",reason=\"publish_rate\"} 2\n",
            "simgate_destination_pool_checkouts_total{destination=\"a\",result=\"miss\"} 0\n",
            "simgate_destination_connects_total{destination=\"b\",result=\"failed\"} 0\n",
            "simgate_destination_reconnects_total{destination=\"a\"} 0\n",
            "simgate_destination_bytes_total{destination=\"b\",direction=\"received\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        // The global family counted the error too; no_route has no per-destination series.
        assert!(text.contains("simgate_mqtt_errors_total{kind=\"upstream_tls\"} 1\n"));
        assert!(!text.contains("destination=\"a\",protocol=\"http\",kind=\"no_route\""));
    }

    #[test]
    fn latency_families_have_a_series_per_destination_and_protocol_with_samples() {
        let mut m = ShardMetrics::default();
        m.latency.set_destinations(["a", "b"]);
        m.record_destination(0, "a", Latency::RequestDuration, Protocol::Http, 80);
        m.record_destination(0, "a", Latency::RequestDuration, Protocol::Http, 3_000);
        m.record_destination(1, "b", Latency::UpstreamRtt, Protocol::Mqtt, 70);
        m.record_destination(1, "b", Latency::ConnectTlsResumed, Protocol::Mqtt, 900);
        m.record_destination(1, "b", Latency::PoolWait, Protocol::Http, 1_500);
        m.record_destination(0, "a", Latency::GatewayAdded, Protocol::Mqtt, 40);
        m.record_destination(1, "b", Latency::LinkWait, Protocol::Mqtt, 5);
        m.record_destination(1, "b", Latency::LinkWait, Protocol::Mqtt, 250_000);
        let text = render(
            &m,
            &[],
            &PlanGenerations::default(),
            ReloadCounters::default(),
            &BTreeMap::new(),
            None,
        );
        let a = "destination=\"a\",protocol=\"http\"";
        assert!(text.contains(&format!(
            "simgate_request_duration_seconds_bucket{{{a},le=\"0.0001\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "simgate_request_duration_seconds_bucket{{{a},le=\"+Inf\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "simgate_request_duration_seconds_count{{{a}}} 2\n"
        )));
        assert!(!text.contains("simgate_request_duration_seconds_count{destination=\"b\""));
        assert!(text.contains(
            "simgate_upstream_rtt_seconds_count{destination=\"b\",protocol=\"mqtt\"} 1\n"
        ));
        assert!(text.contains(
            "simgate_upstream_connect_seconds_count{destination=\"b\",stage=\"tls\",resumed=\"true\"} 1\n"
        ));
        assert!(text.contains(
            "simgate_gateway_added_seconds_count{destination=\"a\",protocol=\"mqtt\"} 1\n"
        ));
        assert!(!text.contains("simgate_gateway_added_seconds_count{destination=\"b\""));
        assert!(text.contains(
            "simgate_upstream_link_wait_seconds_bucket{destination=\"b\",le=\"0.1\"} 1\n"
        ));
        assert!(text.contains("simgate_upstream_link_wait_seconds_count{destination=\"b\"} 2\n"));
        assert_eq!(
            text.matches("# TYPE simgate_upstream_rtt_seconds histogram")
                .count(),
            1
        );
    }

    fn render_plain(m: &ShardMetrics) -> String {
        render(
            m,
            &[],
            &PlanGenerations::default(),
            ReloadCounters::default(),
            &BTreeMap::new(),
            None,
        )
    }

    #[test]
    fn reactor_families_have_one_series_per_shard() {
        let shard = |shard, in_use| ShardMetrics {
            reactor: vec![ReactorCounters {
                shard,
                submissions: 4,
                sqes: 10,
                recv_buffers_in_use: in_use,
                recv_buffers_total: 4096,
                timers_armed: 2,
                ..ReactorCounters::default()
            }],
            ..ShardMetrics::default()
        };
        let mut m = ShardMetrics::default();
        m.merge(&shard(1, 3));
        m.merge(&shard(0, 1));
        let text = render_plain(&m);
        for line in [
            "# TYPE simgate_reactor_submissions_total counter\n",
            "simgate_reactor_submissions_total{shard=\"0\"} 4\n",
            "simgate_reactor_sqes_total{shard=\"1\"} 10\n",
            "# TYPE simgate_reactor_timers gauge\n",
            "simgate_reactor_timers{shard=\"1\"} 2\n",
            "# TYPE simgate_reactor_recv_buffers gauge\n",
            "simgate_reactor_recv_buffers{shard=\"0\",state=\"in_use\"} 1\n",
            "simgate_reactor_recv_buffers{shard=\"1\",state=\"in_use\"} 3\n",
            "simgate_reactor_recv_buffers{shard=\"1\",state=\"total\"} 4096\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("simgate_reactor_loop_turns_total{").count(), 2);
    }

    #[test]
    fn switched_off_latency_histograms_have_no_families() {
        let mut shard = ShardMetrics::default();
        shard.latency.switch_off();
        shard.record_destination(0, "a", Latency::RequestDuration, Protocol::Http, 80);
        let mut m = ShardMetrics::default();
        m.merge(&shard);
        let text = render_plain(&m);
        for family in [
            "simgate_request_duration_seconds",
            "simgate_upstream_rtt_seconds",
            "simgate_upstream_connect_seconds",
            "simgate_upstream_pool_wait_seconds",
        ] {
            assert!(!text.contains(family), "{family} present:\n{text}");
        }
        // The unlabelled request histograms are not per destination: still there.
        assert!(text.contains("# TYPE simgate_http_request_duration_seconds histogram"));
    }

    #[test]
    fn exposition_has_cumulative_buckets_and_counts() {
        let mut m = ShardMetrics {
            requests: 3,
            ..ShardMetrics::default()
        };
        m.response(200);
        m.mqtt_connects_refused = 2;
        m.mqtt_session_renewals_ok = 3;
        m.mqtt_session_renewals_failed = 1;
        m.mqtt_aggregate.connects_refused_down = 5;
        let mut other = ShardMetrics::default();
        let rl = |waited, spilled, refused| crate::stats::RateLimitedTotals {
            waited,
            spilled,
            refused,
        };
        m.mqtt_rate_limited = vec![("aws".to_owned(), rl(3, 2, 1))];
        other.mqtt_rate_limited = vec![
            ("aws".to_owned(), rl(1, 0, 4)),
            ("b".to_owned(), rl(7, 0, 0)),
        ];
        m.merge(&other);
        m.record_latency(80, 20);
        m.record_latency(3_000, 40);
        let mut dns = BTreeMap::new();
        dns.insert(
            "aws-iot".to_owned(),
            DnsCounters {
                changes: 2,
                failures: 1,
            },
        );
        let text = render(
            &m,
            &["http"],
            &PlanGenerations {
                expected: 1,
                served: vec![1, 0],
            },
            ReloadCounters::default(),
            &dns,
            None,
        );
        assert!(text.contains("simgate_plan_generation 1\n"));
        assert!(text.contains("simgate_shard_plan_generation{shard=\"1\"} 0\n"));
        assert!(text.contains("simgate_upstream_dns_changes_total{destination=\"aws-iot\"} 2\n"));
        assert!(text.contains("simgate_upstream_dns_failures_total{destination=\"aws-iot\"} 1\n"));
        assert!(text.contains("simgate_http_requests_total 3\n"));
        assert!(text.contains("simgate_http_responses_total{class=\"2xx\"} 1\n"));
        assert!(text.contains("simgate_http_request_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("simgate_http_request_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("simgate_http_request_duration_seconds_count 2\n"));
        assert!(text.contains("simgate_shards 2\n"));
        assert!(text.contains("simgate_mqtt_connects_refused_total{reason=\"broker\"} 2\n"));
        assert!(text.contains("simgate_mqtt_session_renewals_total{result=\"ok\"} 3\n"));
        assert!(text.contains("simgate_mqtt_session_renewals_total{result=\"failed\"} 1\n"));
        assert!(text.contains("simgate_mqtt_connects_refused_total{reason=\"upstream_down\"} 5\n"));
        for line in [
            "simgate_mqtt_publish_rate_limited_total{destination=\"aws\",outcome=\"waited\"} 4\n",
            "simgate_mqtt_publish_rate_limited_total{destination=\"aws\",outcome=\"spilled\"} 2\n",
            "simgate_mqtt_publish_rate_limited_total{destination=\"aws\",outcome=\"refused\"} 5\n",
            "simgate_mqtt_publish_rate_limited_total{destination=\"b\",outcome=\"waited\"} 7\n",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn credential_families_have_one_series_per_destination() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut credentials = BTreeMap::new();
        credentials.insert(
            "eh".to_owned(),
            CredentialCounters {
                ok: 3,
                errors: 1,
                expires_at: Some(now + Duration::from_millis(2_500_700)),
            },
        );
        credentials.insert(
            "ps".to_owned(),
            CredentialCounters {
                ok: 0,
                errors: 2,
                expires_at: Some(now - Duration::from_secs(1)),
            },
        );
        credentials.insert("new".to_owned(), CredentialCounters::default());
        let mut text = String::new();
        render_credentials(&mut text, &credentials, now);
        for line in [
            "# TYPE simgate_credential_refresh_total counter\n",
            "simgate_credential_refresh_total{destination=\"eh\",result=\"ok\"} 3\n",
            "simgate_credential_refresh_total{destination=\"eh\",result=\"error\"} 1\n",
            "simgate_credential_refresh_total{destination=\"ps\",result=\"error\"} 2\n",
            "# TYPE simgate_credential_token_expiry_seconds gauge\n",
            "simgate_credential_token_expiry_seconds{destination=\"eh\"} 2500\n",
            "simgate_credential_token_expiry_seconds{destination=\"ps\"} 0\n",
            "simgate_credential_token_expiry_seconds{destination=\"new\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn cloud_responses_are_exported_by_adapter_and_status() {
        let mut m = ShardMetrics::default();
        let pubsub = AdapterKind::GcpPubsub.index();
        m.cloud_response(pubsub, 200);
        m.cloud_response(pubsub, 429);
        m.cloud_response(pubsub, 503);
        m.cloud_batches = 2;
        m.cloud_batched_messages = 7;
        m.cloud_refusal(AdapterKind::AwsIotCore.index(), CloudRule::TopicSlashes, 3);
        let text = render(
            &m,
            &["http"],
            &PlanGenerations::default(),
            ReloadCounters::default(),
            &BTreeMap::new(),
            None,
        );
        for line in [
            "simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"2xx\"} 1\n",
            "simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"429\"} 1\n",
            "simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"5xx\"} 1\n",
            "simgate_cloud_responses_total{adapter=\"aws-iot-core\",status=\"401\"} 0\n",
            "simgate_cloud_batches_total 2\n",
            "simgate_cloud_batched_messages_total 7\n",
            "simgate_mqtt_cloud_refusals_total{adapter=\"aws-iot-core\",rule=\"topic_slashes\"} 3\n",
            "simgate_mqtt_cloud_refusals_total{adapter=\"azure-iot-hub\",rule=\"retain\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?}");
        }
        assert!(!text.contains("adapter=\"https\""));
        assert!(!text.contains("adapter=\"mqtts\""));
    }
}
