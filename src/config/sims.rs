//! Compiling `[[sim]]` entries and `gateway.sims_file` into the plan's [`SimTable`].
//!
//! Both sources feed one [`SimTableBuilder`], TOML entries first, then the CSV file's rows, so
//! a duplicate IMSI or IP across them names both places (`sims.csv:17: duplicate imsi
//! "440101234567890" (first at sim[0].imsi)`). Problems are reported at `sim[3].imsi` for TOML
//! and at `sims.csv:1234` (the file as written in the config, and the line) for CSV; a huge bad
//! file reports the first [`MAX_SIM_ERRORS`] and how many more there were. Groups are resolved
//! by name here, since `identity` knows no groups.
//!
//! IO: reads the CSV file (whole, as UTF-8). What this does not do: anything with RADIUS
//! bindings or with how the flows use the table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::schema::RawConfig;
use super::FieldError;
use crate::identity::{read_csv, BuildError, SimField, SimRow, SimTable, SimTableBuilder, SimTags};

/// Most SIM problems reported one by one; the rest are counted.
pub(crate) const MAX_SIM_ERRORS: usize = 20;

/// Collects SIM errors up to the cap, counting the rest.
struct Errors {
    shown: Vec<FieldError>,
    more: usize,
}

impl Errors {
    fn push(&mut self, path: String, message: String) {
        if self.shown.len() < MAX_SIM_ERRORS {
            self.shown.push(FieldError { path, message });
        } else {
            self.more += 1;
        }
    }
}

/// Where a row came from: `origin < toml_count` is `sim[origin]`, the rest are CSV lines.
struct Places<'a> {
    toml_count: u32,
    file: Option<&'a Path>,
}

impl Places<'_> {
    fn csv_origin(&self, line: u32) -> u32 {
        self.toml_count.saturating_add(line)
    }

    /// `sim[3].imsi` or `sims.csv:17`.
    fn label(&self, origin: u32, field: SimField) -> String {
        if origin < self.toml_count {
            format!("sim[{origin}].{}", field.name())
        } else {
            let file = self
                .file
                .map_or_else(String::new, |f| f.display().to_string());
            format!("{file}:{}", origin - self.toml_count)
        }
    }

    /// The message for a field problem: CSV lines name the column, TOML paths already do.
    fn message(&self, origin: u32, field: SimField, message: &str) -> String {
        if origin < self.toml_count {
            message.to_owned()
        } else {
            format!("{} {message}", field.name())
        }
    }
}

/// Builds the SIM table; `Err` with every problem (capped) otherwise.
pub(crate) fn compile_sims(
    raw: &RawConfig,
    base_dir: &Path,
    group_names: &HashMap<&str, usize>,
) -> Result<Arc<SimTable>, Vec<FieldError>> {
    let mut errors = Errors {
        shown: Vec::new(),
        more: 0,
    };
    let file = raw.gateway.sims_file.as_deref();
    let places = Places {
        toml_count: u32::try_from(raw.sim.len()).unwrap_or(u32::MAX),
        file,
    };
    let mut builder = SimTableBuilder::new();
    let add =
        |builder: &mut SimTableBuilder, errors: &mut Errors, row: &SimRow<'_>, origin: u32| {
            let group = match row.group {
                None => {
                    let message = places.message(origin, SimField::Group, "missing (required)");
                    errors.push(places.label(origin, SimField::Group), message);
                    None
                }
                Some(name) => match group_names.get(name).and_then(|&i| u16::try_from(i).ok()) {
                    Some(index) => Some(index),
                    None => {
                        let message = places.message(
                            origin,
                            SimField::Group,
                            &format!("{name:?} names no [[group]]"),
                        );
                        errors.push(places.label(origin, SimField::Group), message);
                        None
                    }
                },
            };
            // Validate the other fields even when the group is bad, so every problem shows.
            if let Err(problems) = builder.push(row, group.unwrap_or(0), origin) {
                for problem in problems {
                    let message = places.message(origin, problem.field, &problem.message);
                    errors.push(places.label(origin, problem.field), message);
                }
            }
        };

    for (i, sim) in raw.sim.iter().enumerate() {
        let pairs: Vec<(&str, &str)> = sim
            .tags
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let row = SimRow {
            imsi: Some(&sim.imsi),
            ip: sim.ip.as_deref(),
            imei: sim.imei.as_deref(),
            msisdn: sim.msisdn.as_deref(),
            sim_id: sim.sim_id.as_deref(),
            name: sim.name.as_deref(),
            group: Some(&sim.group),
            tags: if pairs.is_empty() && sim.tags.is_none() {
                SimTags::None
            } else {
                SimTags::Pairs(&pairs)
            },
        };
        add(&mut builder, &mut errors, &row, i as u32);
    }

    if let Some(file) = file {
        match read_text(&base_dir.join(file)) {
            Err(message) => errors.push("gateway.sims_file".to_owned(), message),
            Ok(text) => {
                builder.reserve(text.bytes().filter(|&b| b == b'\n').count());
                let result = read_csv(&text, |line, row| {
                    let origin = places.csv_origin(line);
                    match row {
                        Ok(row) => add(&mut builder, &mut errors, &row, origin),
                        Err(message) => errors.push(places.label(origin, SimField::Imsi), message),
                    }
                });
                if let Err(e) = result {
                    errors.push(
                        places.label(places.csv_origin(e.line), SimField::Imsi),
                        e.message,
                    );
                }
            }
        }
    }

    match builder.finish() {
        Ok(table) if errors.shown.is_empty() => return Ok(Arc::new(table)),
        Ok(_) => {}
        Err(BuildError::TooLarge) => errors.push(
            "gateway.sims_file".to_owned(),
            "the SIM table's text (SIM ids, names, tag values) exceeds 4 GiB".to_owned(),
        ),
        Err(BuildError::Duplicates(duplicates)) => {
            for d in duplicates {
                let message = format!(
                    "duplicate {} {:?} (first at {})",
                    d.field.name(),
                    d.value,
                    places.label(d.first, d.field)
                );
                errors.push(places.label(d.second, d.field), message);
            }
        }
    }
    let mut shown = errors.shown;
    if errors.more > 0 {
        let path = match file {
            Some(f) => f.display().to_string(),
            None => "sim".to_owned(),
        };
        shown.push(FieldError {
            path,
            message: format!(
                "and {} more SIM errors (only the first {MAX_SIM_ERRORS} are shown)",
                errors.more
            ),
        });
    }
    Err(shown)
}

/// The file's text; the error names the resolved path and, for bad UTF-8, the line.
fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file not found: {}", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        format!("{}:{line}: not UTF-8 text", path.display())
    })
}
