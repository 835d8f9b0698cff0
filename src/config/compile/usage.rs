//! Compiles `[usage]`: whether usage is metered at all (`enabled`), the usage file (relative to the config's directory), its interval, its
//! rotation by size and age, and how many closed intervals `/admin/usage?since=` can reach.
//!
//! What this module does not do: meter (`stats::usage`, the flows) or write the file
//! (`control::usage`).

use std::time::Duration;

use super::Compiler;
use crate::config::schema::RawUsage;
use crate::policy::UsageSettings;

/// Shortest `usage.interval`: each interval costs a round of shard commands and a file write.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `usage.interval`.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Smallest `usage.max_file_bytes`.
const MIN_FILE_BYTES: i64 = 4096;
/// Most intervals kept in memory.
const MAX_KEEP_INTERVALS: i64 = 100_000;

impl Compiler<'_> {
    pub(super) fn usage(&mut self, raw: Option<&RawUsage>) -> Option<UsageSettings> {
        let defaults = UsageSettings::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let interval = self
            .duration("usage.interval", raw.interval.as_ref(), defaults.interval)
            .and_then(|d| {
                if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                    Some(d)
                } else {
                    self.push(
                        "usage.interval",
                        format!("must be between 1s and 1h, got {}ms", d.as_millis()),
                    );
                    None
                }
            });
        let max_file_age = self.duration(
            "usage.max_file_age",
            raw.max_file_age.as_ref(),
            defaults.max_file_age,
        );
        if let (Some(i), Some(a)) = (interval, max_file_age) {
            if a < i {
                self.push(
                    "usage.max_file_age",
                    format!(
                        "must be at least usage.interval ({}s): a file holds whole intervals",
                        i.as_secs_f64()
                    ),
                );
            }
        }
        let max_file_bytes = self.int::<u64>(
            "usage.max_file_bytes",
            raw.max_file_bytes,
            defaults.max_file_bytes,
            MIN_FILE_BYTES..=i64::MAX,
        );
        let keep_intervals = self.int::<usize>(
            "usage.keep_intervals",
            raw.keep_intervals,
            defaults.keep_intervals,
            1..=MAX_KEEP_INTERVALS,
        );
        let file = raw.file.as_ref().map(|f| self.base_dir.join(f));
        let settings = UsageSettings {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            file,
            interval: interval?,
            max_file_bytes: max_file_bytes?,
            max_file_age: max_file_age.filter(|a| *a >= interval.unwrap_or_default())?,
            keep_intervals: keep_intervals?,
        };
        Some(settings)
    }
}
