//! `simgate top`: a live terminal view of a running simgate, read from its admin API —
//! throughput (requests/s, MQTT publishes/s), errors by kind, device and upstream connections,
//! cloud responses by status class, probe state per destination, readiness and the top SIMs by
//! traffic.
//!
//! ```text
//!  /metrics ──► expo (parser) ─┐
//!  /readyz, /admin/probes,     ├─► client::Sample ×2 ──► view::View ──► report (--once, text)
//!  /admin/usage (JSON) ────────┘                                    └─► tui (ratatui, live)
//! ```
//!
//! What it does: polls the admin API every interval over plain HTTP/1.1 (one blocking request
//! at a time, `Authorization: Bearer` when a token is given), computes rates from the counter
//! deltas between two polls, and either prints one plain-text report (`--once`) or redraws a
//! terminal screen until `q`.
//!
//! What it does not do: write anything to simgate (no reload, no admin action), keep history
//! (one previous sample, no charts), talk TLS to the admin endpoint, or read anything but the
//! admin API — it is a client like curl, and imports nothing from the gateway's own modules.

pub mod client;
pub mod expo;
mod tui;
pub mod view;

use std::fmt;
use std::time::Duration;

pub use client::Admin;

/// `simgate top`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The admin API: address and token.
    pub admin: Admin,
    /// Time between polls (and between the two samples of `--once`).
    pub interval: Duration,
    /// Print one report and exit instead of the live view.
    pub once: bool,
}

/// Why `simgate top` stopped.
#[derive(Debug)]
pub enum TopError {
    /// The admin API could not be reached (connect, send or read failed).
    Unreachable {
        /// The address tried.
        addr: String,
        /// The IO error.
        error: String,
    },
    /// The admin API answered 401: a token is needed, or the one given is wrong.
    Unauthorized {
        /// The address asked.
        addr: String,
        /// Whether a token was sent.
        token_given: bool,
    },
    /// An answer `simgate top` cannot use (wrong status, unparsable body).
    BadAnswer {
        /// The admin path.
        path: String,
        /// What was wrong.
        error: String,
    },
    /// The terminal could not be set up or drawn on.
    Terminal(std::io::Error),
}

impl fmt::Display for TopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopError::Unreachable { addr, error } => write!(
                f,
                "cannot reach the admin API at {addr}: {error} (is simgate running, and is \
                 `gateway.admin` this address?)"
            ),
            TopError::Unauthorized {
                addr,
                token_given: false,
            } => write!(
                f,
                "the admin API at {addr} answered 401: an admin token is needed \
                 (gateway.admin_token); pass it with --token-file FILE or SIMGATE_ADMIN_TOKEN"
            ),
            TopError::Unauthorized {
                addr,
                token_given: true,
            } => write!(
                f,
                "the admin API at {addr} answered 401: the admin token given is not \
                 gateway.admin_token"
            ),
            TopError::BadAnswer { path, error } => {
                write!(f, "unexpected answer to {path}: {error}")
            }
            TopError::Terminal(e) => write!(f, "terminal: {e}"),
        }
    }
}

impl std::error::Error for TopError {}

/// Run `simgate top` until done: `--once` returns after one report (printed to stdout), the
/// live view when the user quits.
pub fn run(opts: &Options) -> Result<(), TopError> {
    if opts.once {
        let report = once(&opts.admin, opts.interval)?;
        print!("{report}");
        Ok(())
    } else {
        tui::run(opts)
    }
}

/// Two samples `interval` apart, as one plain-text report.
pub fn once(admin: &Admin, interval: Duration) -> Result<String, TopError> {
    let first = admin.sample()?;
    std::thread::sleep(interval);
    let second = admin.sample()?;
    Ok(view::View::new(&admin.addr, &first, &second).report())
}

/// `--interval`: a number with a unit `ms`, `s` or `m` (`500ms`, `1s`, `1.5s`, `2m`); a bare
/// number is seconds. Must be more than zero and at most an hour.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a number with ms, s or m, e.g. 500ms or 1s"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (ms, s or m)")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("`{s}`: must be more than 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The token from `--token-file` (first line, trimmed) or else `env` (`SIMGATE_ADMIN_TOKEN`'s
/// value); an empty one counts as none.
pub fn load_token(
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Option<String>, String> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => env.map(|t| t.trim().to_owned()),
    };
    Ok(token.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0s", "fast", "1h", "-1s", "2 hours"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_from_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  secret-token\n").unwrap();
        assert_eq!(
            load_token(Some(&f), Some("env".into())),
            Ok(Some("secret-token".into()))
        );
        assert_eq!(
            load_token(None, Some("env\n".into())),
            Ok(Some("env".into()))
        );
        assert_eq!(load_token(None, Some(String::new())), Ok(None));
        assert_eq!(load_token(None, None), Ok(None));
        assert!(load_token(Some(&dir.path().join("missing")), None).is_err());
    }

    #[test]
    fn the_401_message_names_the_token() {
        let e = TopError::Unauthorized {
            addr: "127.0.0.1:1".into(),
            token_given: false,
        };
        let text = e.to_string();
        assert!(
            text.contains("token") && text.contains("SIMGATE_ADMIN_TOKEN"),
            "{text}"
        );
    }
}
