//! Compiles `[metrics]`: whether the shards keep the per-destination latency histograms
//! (`histograms`, a switch read at start), and the period and depth of their interval logs.
//!
//! What this module does not do: keep or render the logs (`control::interval_log`).

use std::time::Duration;

use super::Compiler;
use crate::config::schema::RawMetrics;
use crate::policy::MetricsSettings;

/// Shortest `metrics.interval_log_period`: each interval costs a snapshot of every shard's
/// histograms.
const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Longest `metrics.interval_log_period`.
const MAX_PERIOD: Duration = Duration::from_secs(3600);
/// Most intervals kept.
const MAX_KEEP: i64 = 100_000;

impl Compiler<'_> {
    pub(super) fn metrics(&mut self, raw: Option<&RawMetrics>) -> Option<MetricsSettings> {
        let defaults = MetricsSettings::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let period = self
            .duration(
                "metrics.interval_log_period",
                raw.interval_log_period.as_ref(),
                defaults.interval_log_period,
            )
            .and_then(|d| {
                if (MIN_PERIOD..=MAX_PERIOD).contains(&d) {
                    Some(d)
                } else {
                    self.push(
                        "metrics.interval_log_period",
                        format!("must be between 1s and 1h, got {}ms", d.as_millis()),
                    );
                    None
                }
            });
        let keep = self.int::<usize>(
            "metrics.interval_log_keep",
            raw.interval_log_keep,
            defaults.interval_log_keep,
            1..=MAX_KEEP,
        );
        Some(MetricsSettings {
            histograms: raw.histograms.unwrap_or(defaults.histograms),
            interval_log_period: period?,
            interval_log_keep: keep?,
        })
    }
}
