//! Mixed scenarios: several scenarios run side by side against one gateway, e.g. HTTP and MQTT
//! devices at once (`loadtest/scenarios/mixed.toml`).
//!
//! A mix file names its parts — ordinary scenario files, paths relative to the mix file — and
//! one run length for all of them:
//!
//! ```toml
//! name = "mixed"
//! duration_s = 30
//! parts = ["http-1k-keepalive.toml", "mqtt-qos0-aggregate.toml"]
//! ```
//!
//! Each part keeps its own target, fleet, traffic and protocol settings and gets its own report
//! (rates, errors, latency and delivery accounting are per protocol: one histogram of HTTP
//! response times and MQTT acknowledgements together would mean nothing). The parts start
//! together and run on their own tokio runtimes in their own threads; the gateway's CPU and RSS,
//! sampled by every part, are the whole gateway's.
//!
//! What it does NOT do: nest mixes, or run a mix under `compare` (a mix needs a gateway with
//! several listeners, which `compare` does not configure).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fleet::{self, RunError, RunOptions};
use crate::scenario::{deserialize_with_path, Scenario, ScenarioError};
use crate::stats::Report;

/// A parsed mix file: its parts not yet loaded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Short name, echoed in reports.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Run length of every part, in seconds (their own `duration_s` is ignored).
    pub duration_s: f64,
    /// Scenario files, relative to the mix file's directory.
    pub parts: Vec<PathBuf>,
}

/// Most parts in one mix (each runs its own runtime threads).
pub const MAX_PARTS: usize = 8;

impl Mix {
    /// Whether `text` is a mix file (it has a top-level `parts` key) rather than a scenario.
    pub fn is_mix(text: &str) -> bool {
        text.parse::<toml::Table>()
            .is_ok_and(|table| table.contains_key("parts"))
    }

    /// Parses and validates a mix file.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let mix: Mix = deserialize_with_path(text)?;
        let error = |path: &str, message: &str| ScenarioError {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        if mix.name.is_empty() {
            return Err(error("name", "must not be empty"));
        }
        if !(mix.duration_s.is_finite() && mix.duration_s > 0.0) {
            return Err(error("duration_s", "must be a positive number of seconds"));
        }
        if mix.parts.len() < 2 {
            return Err(error("parts", "a mix needs at least two scenario files"));
        }
        if mix.parts.len() > MAX_PARTS {
            return Err(error(
                "parts",
                &format!("at most {MAX_PARTS} scenario files"),
            ));
        }
        Ok(mix)
    }

    /// Reads and validates every part, resolving paths against `base` (the mix file's
    /// directory). Each part must name its own `target`.
    pub fn load_parts(&self, base: &Path) -> Result<Vec<(PathBuf, Scenario)>, String> {
        let mut parts = Vec::with_capacity(self.parts.len());
        for (index, part) in self.parts.iter().enumerate() {
            let path = base.join(part);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("parts[{index}]: read {}: {e}", path.display()))?;
            if Mix::is_mix(&text) {
                return Err(format!(
                    "parts[{index}]: {} is itself a mix; mixes do not nest",
                    path.display()
                ));
            }
            let scenario = Scenario::parse(&text)
                .map_err(|e| format!("parts[{index}]: scenario {}: {e}", path.display()))?;
            if scenario.target.is_none() {
                return Err(format!(
                    "parts[{index}]: scenario {} has no `target`; each part of a mix names its \
                     own gateway listener",
                    path.display()
                ));
            }
            parts.push((path, scenario));
        }
        Ok(parts)
    }
}

/// Runs `parts` side by side, each with its options, and returns their reports in order. All
/// parts are run to their end even if one fails; the first failure is returned.
pub fn run(parts: &[(Scenario, RunOptions)]) -> Result<Vec<Report>, RunError> {
    let results: Vec<Result<Report, RunError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|(scenario, options)| scope.spawn(move || fleet::run(scenario, options, None)))
            .collect();
        handles
            .into_iter()
            // A part that panicked is a bug in the runner: surface it, not a made-up error.
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_is_told_from_a_scenario_by_its_parts_key() {
        assert!(Mix::is_mix(
            "name = \"m\"\nduration_s = 5\nparts = [\"a.toml\", \"b.toml\"]\n"
        ));
        assert!(!Mix::is_mix("name = \"s\"\n[fleet]\ndevices = 1\n"));
        assert!(!Mix::is_mix("not toml ["));
    }

    #[test]
    fn bad_mixes_are_refused_with_the_field() {
        let cases = [
            (
                "name = \"\"\nduration_s = 5\nparts = [\"a\", \"b\"]",
                "name",
            ),
            (
                "name = \"m\"\nduration_s = 0\nparts = [\"a\", \"b\"]",
                "duration_s",
            ),
            ("name = \"m\"\nduration_s = 5\nparts = [\"a\"]", "parts"),
            (
                "name = \"m\"\nduration_s = 5\nparts = [\"a\", \"b\"]\nfleet = 1",
                "fleet",
            ),
        ];
        for (text, path) in cases {
            let err = Mix::parse(text).expect_err(text);
            assert_eq!(err.path, path, "{text}: {err}");
        }
    }

    #[test]
    fn the_shipped_mixed_scenario_loads_with_both_protocols() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let text = std::fs::read_to_string(dir.join("mixed.toml")).expect("mixed.toml");
        assert!(Mix::is_mix(&text));
        let mix = Mix::parse(&text).expect("parses");
        let parts = mix.load_parts(&dir).expect("parts load");
        let protocols: Vec<_> = parts.iter().map(|(_, s)| s.fleet.protocol).collect();
        assert!(protocols.contains(&crate::scenario::Protocol::Http));
        assert!(protocols.contains(&crate::scenario::Protocol::Mqtt));
    }

    #[test]
    fn parts_must_exist_name_a_target_and_not_nest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scenario = |target: &str| {
            format!("name = \"p\"\n{target}[fleet]\ndevices = 1\nprotocol = \"http\"\n")
        };
        std::fs::write(
            dir.path().join("ok.toml"),
            scenario("target = \"127.0.0.1:8080\"\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("untargeted.toml"), scenario("")).unwrap();
        std::fs::write(
            dir.path().join("nested.toml"),
            "name = \"n\"\nduration_s = 1\nparts = [\"ok.toml\", \"ok.toml\"]\n",
        )
        .unwrap();
        let mix = |parts: &str| {
            Mix::parse(&format!(
                "name = \"m\"\nduration_s = 1\nparts = [{parts}]\n"
            ))
            .expect("mix")
        };
        assert!(mix("\"ok.toml\", \"ok.toml\"")
            .load_parts(dir.path())
            .is_ok());
        for (parts, needle) in [
            ("\"ok.toml\", \"missing.toml\"", "parts[1]: read"),
            ("\"untargeted.toml\", \"ok.toml\"", "has no `target`"),
            ("\"ok.toml\", \"nested.toml\"", "mixes do not nest"),
        ] {
            let err = mix(parts).load_parts(dir.path()).expect_err(parts);
            assert!(err.contains(needle), "{parts}: {err}");
        }
    }
}
