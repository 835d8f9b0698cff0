//! `GET /histograms/{name}?destination=NAME[&protocol=http|mqtt]`: one merged latency
//! histogram as HdrHistogram's percentile distribution text (what HdrHistogram's plotter and
//! HistogramLogAnalyzer read; values in milliseconds). Names are those of
//! [`crate::stats::Latency::name`]; without `protocol` both device protocols are merged.
//!
//! `GET /histograms/{name}/log?…` (same parameters) is the histogram's interval log, kept by
//! [`super::interval_log`]; this module parses its query too ([`parse`]).
//!
//! It answers from a merged [`ShardMetrics`] handed in; it does not collect, route or check the
//! admin token (the admin service does, before it gets here).

use crate::shard::{Protocol, ShardMetrics};
use crate::stats::latency::{new_latency_histogram, percentile_distribution};
use crate::stats::Latency;

/// Why a `/histograms` request has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistogramError {
    /// Unknown histogram name or destination (404).
    NotFound(String),
    /// A malformed query (400).
    BadQuery(String),
    /// The answer could not be rendered (500; not expected).
    Internal(String),
}

/// The path prefix this module answers.
pub const PREFIX: &str = "/histograms/";

/// The path suffix (after the name) of a histogram's interval log.
pub const LOG_SUFFIX: &str = "/log";

/// The distribution text for `name` (the path after [`PREFIX`]) and `query` (the raw query
/// string) from the merged metrics `m`.
pub fn answer(m: &ShardMetrics, name: &str, query: &str) -> Result<String, HistogramError> {
    let (latency, destination, protocol) = parse(
        m.latency.is_switched_off(),
        &|d| m.latency.get(d).is_some(),
        name,
        query,
    )?;
    let d = m
        .latency
        .get(&destination)
        .ok_or_else(|| HistogramError::NotFound(format!("no destination {destination:?}")))?;
    let h = match protocol {
        Some(p) => d.get(latency, p).cloned(),
        None => d.all_protocols(latency),
    };
    Ok(percentile_distribution(
        &h.unwrap_or_else(new_latency_histogram),
    ))
}

/// The histogram kind, destination and protocol (`None`: both) `name` and `query` ask for;
/// `NotFound` when the histograms are `switched_off`, for an unknown name, or for a destination
/// `known` denies (one not in the served configuration).
pub fn parse(
    switched_off: bool,
    known: &dyn Fn(&str) -> bool,
    name: &str,
    query: &str,
) -> Result<(Latency, String, Option<Protocol>), HistogramError> {
    if switched_off {
        return Err(HistogramError::NotFound(
            "latency histograms are off (metrics.histograms = false)".to_string(),
        ));
    }
    let names = || {
        Latency::ALL
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let latency = Latency::from_name(name).ok_or_else(|| {
        HistogramError::NotFound(format!("no histogram {name:?}; try one of {}", names()))
    })?;
    let (mut destination, mut protocol) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = super::percent_decode(value)
            .ok_or_else(|| HistogramError::BadQuery(format!("{key}: bad percent-encoding")))?;
        match key {
            "destination" => destination = Some(value),
            "protocol" => {
                protocol = Some(
                    Protocol::ALL
                        .into_iter()
                        .find(|p| p.label() == value)
                        .ok_or_else(|| {
                            HistogramError::BadQuery(format!(
                                "protocol: {value:?}; expected http or mqtt"
                            ))
                        })?,
                )
            }
            other => {
                return Err(HistogramError::BadQuery(format!(
                    "unknown parameter {other:?}; expected destination, protocol"
                )))
            }
        }
    }
    let destination = destination
        .ok_or_else(|| HistogramError::BadQuery("destination=NAME is required".to_string()))?;
    if !known(&destination) {
        return Err(HistogramError::NotFound(format!(
            "no destination {destination:?}"
        )));
    }
    Ok((latency, destination, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ShardMetrics {
        let mut m = ShardMetrics::default();
        m.latency.set_destinations(["sink", "other"]);
        for us in [100, 200, 300] {
            m.record_destination(0, "sink", Latency::RequestDuration, Protocol::Http, us);
        }
        m.record_destination(0, "sink", Latency::RequestDuration, Protocol::Mqtt, 5_000);
        m
    }

    fn total(text: &str) -> &str {
        text.lines()
            .find_map(|l| l.split("Total count    =").nth(1))
            .unwrap()
            .trim()
            .trim_end_matches(']')
            .trim()
    }

    #[test]
    fn answers_by_destination_and_protocol() {
        let m = metrics();
        let all = answer(&m, "request_duration", "destination=sink").unwrap();
        assert_eq!(total(&all), "4");
        let http = answer(&m, "request_duration", "destination=sink&protocol=http").unwrap();
        assert_eq!(total(&http), "3");
        let empty = answer(&m, "upstream_rtt", "destination=other").unwrap();
        assert_eq!(total(&empty), "0");
    }

    #[test]
    fn switched_off_histograms_answer_not_found_saying_why() {
        let mut off = ShardMetrics::default();
        off.latency.switch_off();
        off.latency.set_destinations(["sink"]);
        off.record_destination(0, "sink", Latency::RequestDuration, Protocol::Http, 100);
        // What the control thread does: merge shard snapshots into a default set.
        let mut merged = ShardMetrics::default();
        merged.merge(&off);
        match answer(&merged, "request_duration", "destination=sink") {
            Err(HistogramError::NotFound(e)) => {
                assert!(e.contains("metrics.histograms = false"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_name_or_destination_is_not_found_and_bad_queries_are_refused() {
        let m = metrics();
        assert!(matches!(
            answer(&m, "nope", "destination=sink"),
            Err(HistogramError::NotFound(_))
        ));
        assert!(matches!(
            answer(&m, "request_duration", "destination=gone"),
            Err(HistogramError::NotFound(_))
        ));
        assert!(matches!(
            answer(&m, "request_duration", ""),
            Err(HistogramError::BadQuery(_))
        ));
        assert!(matches!(
            answer(&m, "request_duration", "destination=sink&protocol=udp"),
            Err(HistogramError::BadQuery(_))
        ));
    }
}
