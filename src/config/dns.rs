//! The system resolver used for destination endpoints, at config load and by the periodic
//! re-resolution on the control plane (`control::resolve`), with a test-only override.
//!
//! [`resolve_system`] calls the platform resolver (`getaddrinfo`, through
//! `ToSocketAddrs`). It blocks: call it from the control thread's blocking pool or at load,
//! never from a shard.
//!
//! **Test-only override:** when the environment variable [`TEST_HOSTS_FILE_ENV`]
//! (`SIMGATE_TEST_HOSTS_FILE`) names a file, names are looked up in that file *instead of* the
//! system resolver. The file has `/etc/hosts` syntax (`IP name [name...]`, `#` comments); it is
//! read again on every lookup, so a test can change what a name resolves to while simgate
//! runs. A name missing from the file is an error (no fallback to real DNS, so a test cannot
//! pass by accident through the network). It exists because `/etc/hosts` is not reliably
//! writable in CI. It is compiled into debug builds only (`debug_assertions`, which the test
//! suite's `simgate` binary is): a release build ignores the variable, so whoever controls a
//! production service's environment cannot redirect its endpoints with it. A debug build logs
//! a warning at start when it is set.
//!
//! What this does not do: cache, honour TTLs, or choose among addresses.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

/// Environment variable naming the test-only hosts file (see the module doc).
pub const TEST_HOSTS_FILE_ENV: &str = "SIMGATE_TEST_HOSTS_FILE";

/// Resolve `host` to socket addresses with `port`. The error is a human-readable reason that
/// names neither secrets nor file contents beyond the looked-up name.
pub fn resolve_system(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Some(file) = test_hosts_override() {
        return resolve_in_hosts_file(&file, host, port);
    }
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| e.to_string())
}

/// The test-only hosts file, when the override is in effect (debug builds only).
pub fn test_hosts_override() -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os(TEST_HOSTS_FILE_ENV)
        .filter(|f| !f.is_empty())
        .map(Into::into)
}

/// Every address the hosts file gives `host` (case-insensitive), in file order.
fn resolve_in_hosts_file(file: &Path, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "cannot read {TEST_HOSTS_FILE_ENV} file {}: {e}",
            file.display()
        )
    })?;
    let addrs = lookup_hosts_text(&text, host, port);
    if addrs.is_empty() {
        return Err(format!(
            "{host:?} is not in the {TEST_HOSTS_FILE_ENV} file {}",
            file.display()
        ));
    }
    Ok(addrs)
}

/// Parse `/etc/hosts` syntax and collect the addresses of `host`. Malformed lines are skipped.
fn lookup_hosts_text(text: &str, host: &str, port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if fields.any(|name| name.eq_ignore_ascii_case(host)) {
            let addr = SocketAddr::new(ip, port);
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::lookup_hosts_text;

    #[test]
    fn hosts_syntax_comments_aliases_and_case() {
        let text = "# test hosts\n127.0.0.2  a.test  alias.test # comment\n\
                    not-an-ip b.test\n::1 B.TEST\n127.0.0.3 a.test\n127.0.0.2 a.test\n#127.0.0.9 a.test\n";
        let a: Vec<String> = lookup_hosts_text(text, "a.test", 443)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(a, ["127.0.0.2:443", "127.0.0.3:443"]);
        let b = lookup_hosts_text(text, "b.test", 8883);
        assert_eq!(b, vec!["[::1]:8883".parse().unwrap()]);
        assert_eq!(lookup_hosts_text(text, "alias.test", 1).len(), 1);
        assert!(lookup_hosts_text(text, "missing.test", 1).is_empty());
    }
}
