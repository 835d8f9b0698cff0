//! Configuration: the TOML schema, validation with field paths, and compilation into the
//! immutable [`Plan`] that shards serve from.
//!
//! ```text
//!  file ──read──► text ──serde (schema, deny unknown keys)──► RawConfig
//!       ──compile (ranges, references, files, DNS, rustls configs)──► Plan
//! ```
//!
//! Two phases, two kinds of error, both reported as [`FieldError`]s whose `path` names the key
//! (`listener[0].bind`, `destination[2].pool.warm`, `group[0].routes[1].destination`):
//!
//! 1. **Structure** (serde): TOML syntax, unknown keys, missing required keys and wrong value
//!    types. Serde stops at the first such error, so this phase reports exactly one, with its
//!    line and column.
//! 2. **Meaning** (`compile`): ranges, formats (durations, addresses, names), duplicate names,
//!    references between sections, credential/CA/password files, DNS resolution and the
//!    rustls client configs. Every problem is collected; [`ConfigError`]'s `Display` prints one per line.
//!
//! Relative file paths in the config resolve against the config file's directory
//! ([`load_plan`]) or the given base directory ([`compile_str`]). Error messages quote file
//! paths and config values but never file contents: a private key cannot leak into a log.
//!
//! What this module does not do: watch files, handle `SIGHUP`/`POST /-/reload` (the control
//! thread calls [`load_plan`] and swaps the plan), open sockets, or keep state between calls.
//! The reference for users is `docs/configuration.md`.

mod compile;
mod dns;
pub mod fd_limit;
mod schema;
mod sims;
mod tls_material;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use crate::policy::Plan;

use compile::{Environment, SystemEnvironment};
pub use dns::{resolve_system, test_hosts_override, TEST_HOSTS_FILE_ENV};
use schema::RawConfig;

/// One problem in a config, located by the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with array indices, e.g. `destination[2].ca` or `gateway.shards`. Empty for
    /// problems with the file as a whole (unreadable, TOML syntax).
    pub path: String,
    /// What is wrong, for a human. Never contains secret values.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A config that cannot be served: every problem found. Order is stable (name checks first,
/// then gateway, listeners, credentials, destinations, groups) but not strictly file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems; never empty.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Read, parse, validate and compile the config file. Relative file paths in the config are
/// resolved against the config file's directory.
///
/// Blocking: reads files and resolves endpoint host names. Call it from the control thread
/// (or `spawn_blocking`), never from a shard.
pub fn load_plan(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    compile_str(&text, base_dir)
}

/// Parse, validate and compile config text. Relative file paths resolve against `base_dir`.
///
/// Blocking, like [`load_plan`].
pub fn compile_str(toml_text: &str, base_dir: &Path) -> Result<Plan, ConfigError> {
    compile_with(toml_text, base_dir, &SystemEnvironment)
}

/// The environment seam, for tests elsewhere in the crate that need a compiled plan without
/// real DNS.
#[cfg(test)]
pub(crate) use compile::Environment as TestEnvironment;

/// [`compile_str`] with an injected environment, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn compile_for_tests(
    toml_text: &str,
    base_dir: &Path,
    env: &dyn Environment,
) -> Result<Plan, ConfigError> {
    compile_with(toml_text, base_dir, env)
}

/// [`compile_str`] with an injected environment (DNS, system roots, CPU count).
fn compile_with(
    toml_text: &str,
    base_dir: &Path,
    env: &dyn Environment,
) -> Result<Plan, ConfigError> {
    let raw = parse_raw(toml_text)?;
    compile::compile(&raw, base_dir, env).map_err(|errors| ConfigError { errors })
}

/// The structural phase: TOML → [`RawConfig`], with the path of the first bad key.
fn parse_raw(toml_text: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(toml_text);
    serde_path_to_error::deserialize::<_, RawConfig>(deserializer).map_err(|error| {
        let path = path_string(error.path());
        let inner = error.inner();
        let location = inner.span().map(|span| line_column(toml_text, span.start));
        // One error per line in `ConfigError`'s Display: fold multi-line parser messages.
        let text = inner.message().trim().replace('\n', "; ");
        let message = match location {
            Some((line, column)) if path.is_empty() => {
                format!("line {line}, column {column}: {text}")
            }
            Some((line, column)) => format!("{text} (line {line}, column {column})"),
            None => text,
        };
        ConfigError::single(path, message)
    })
}

/// `serde_path_to_error`'s path in our notation: `a.b[0].c`, empty for the root.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
