//! What compilation needs from the outside world, and the real implementation of it.
//!
//! [`Environment`] is the seam: DNS resolution, the platform's trusted roots, the CPU count and
//! the open-file limit. [`SystemEnvironment`] asks the system resolver (see `config::dns`), the
//! native root store, `available_parallelism` and `RLIMIT_NOFILE`; tests pass a fake.
//!
//! What this does not do: decide anything. The compiler turns these answers into values and
//! errors; files named in the config (credentials, CAs, password files) are read through
//! `tls_material`, not here.

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;

/// What compilation needs from the outside world.
pub(crate) trait Environment {
    /// Resolves a DNS name; the error is a human-readable reason.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
    /// The platform's trusted roots (may be empty).
    fn system_roots(&self) -> Vec<CertificateDer<'static>>;
    /// CPUs this process may run on.
    fn available_cpus(&self) -> Option<usize>;
    /// The process's open-file limit (soft `RLIMIT_NOFILE`), if known.
    fn open_files_limit(&self) -> Option<u64>;
    /// An environment variable of the process (for `{ env = "VAR" }` secrets); `None` when unset
    /// or not UTF-8.
    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// The real environment: system resolver (see `dns`), native root store,
/// `available_parallelism`.
pub(crate) struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        crate::config::dns::resolve_system(host, port)
    }

    fn system_roots(&self) -> Vec<CertificateDer<'static>> {
        rustls_native_certs::load_native_certs().certs
    }

    fn available_cpus(&self) -> Option<usize> {
        std::thread::available_parallelism()
            .ok()
            .map(std::num::NonZeroUsize::get)
    }

    fn open_files_limit(&self) -> Option<u64> {
        crate::config::fd_limit::soft_limit()
    }
}
