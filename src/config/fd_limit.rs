//! The process's open-file limit (`RLIMIT_NOFILE`), which bounds how many device and upstream
//! connections simgate can hold: read here so that `compile` derives `gateway.max_connections`
//! from it, and raised from the soft to the hard limit once at start (as nginx's
//! `worker_rlimit_nofile` and haproxy do), so that a distribution's default soft limit of 1024
//! does not silently cap a gateway the administrator gave a high hard limit.
//!
//! What this module does not do: enforce anything (the shards count connections against the
//! derived cap) or raise the hard limit (that needs privileges and is the service manager's
//! job: systemd `LimitNOFILE=`, Kubernetes' container runtime).

/// The soft open-file limit, if the platform reports one (`None` for "unlimited" too).
pub fn soft_limit() -> Option<u64> {
    rlimit::Resource::NOFILE
        .get()
        .ok()
        .map(|(soft, _)| soft)
        .filter(|&soft| soft != rlimit::INFINITY)
}

/// Raise the soft open-file limit to the hard one. Returns `(before, after)` when it changed.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub fn raise_soft_to_hard() -> std::io::Result<Option<(u64, u64)>> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft >= hard {
        return Ok(None);
    }
    let after = rlimit::increase_nofile_limit(hard)?;
    Ok((after != soft).then_some((soft, after)))
}
