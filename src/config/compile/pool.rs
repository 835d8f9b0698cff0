//! Compiles `[destination.pool]` into [`PoolSettings`]: warm and idle connection counts,
//! timeouts, connect concurrency and reconnect backoff, with the rules between them.
//!
//! What this does not do: choose the per-adapter `warm` default (the caller passes it, see
//! `destinations`), or run a pool (see `upstream`).

use super::{defaults, Compiler};
use crate::config::schema::RawPool;
use crate::config::values::format_duration;
use crate::policy::PoolSettings;

impl Compiler<'_> {
    pub(super) fn pool(
        &mut self,
        p: &str,
        raw: &RawPool,
        default_warm: usize,
    ) -> Option<PoolSettings> {
        let warm = self.int(&format!("{p}.pool.warm"), raw.warm, default_warm, 0..=1024);
        let max_idle = self.int(
            &format!("{p}.pool.max_idle"),
            raw.max_idle,
            defaults::POOL_MAX_IDLE,
            0..=65536,
        );
        if let (Some(warm), Some(max_idle)) = (warm, max_idle) {
            if warm > max_idle {
                self.push(
                    format!("{p}.pool.warm"),
                    format!(
                        "{warm} exceeds pool.max_idle ({max_idle}); warm connections are idle ones"
                    ),
                );
            }
        }
        let idle_timeout = self.duration(
            &format!("{p}.pool.idle_timeout"),
            raw.idle_timeout.as_ref(),
            defaults::POOL_IDLE_TIMEOUT,
        );
        let max_connecting = self.int(
            &format!("{p}.pool.max_connecting"),
            raw.max_connecting,
            defaults::POOL_MAX_CONNECTING,
            0..=65535,
        );
        let max_age = self.duration(
            &format!("{p}.pool.max_age"),
            raw.max_age.as_ref(),
            defaults::POOL_MAX_AGE,
        );
        let connect_timeout = self.duration(
            &format!("{p}.pool.connect_timeout"),
            raw.connect_timeout.as_ref(),
            defaults::POOL_CONNECT_TIMEOUT,
        );
        let response_timeout = self.duration(
            &format!("{p}.pool.response_timeout"),
            raw.response_timeout.as_ref(),
            defaults::POOL_RESPONSE_TIMEOUT,
        );
        let backoff_initial = self.duration(
            &format!("{p}.pool.backoff_initial"),
            raw.backoff_initial.as_ref(),
            defaults::POOL_BACKOFF_INITIAL,
        );
        let backoff_max = self.duration(
            &format!("{p}.pool.backoff_max"),
            raw.backoff_max.as_ref(),
            defaults::POOL_BACKOFF_MAX,
        );
        if let (Some(initial), Some(max)) = (backoff_initial, backoff_max) {
            if initial > max {
                self.push(
                    format!("{p}.pool.backoff_initial"),
                    format!(
                        "{} exceeds pool.backoff_max ({})",
                        format_duration(initial),
                        format_duration(max)
                    ),
                );
            }
        }
        Some(PoolSettings {
            warm: warm?,
            max_idle: max_idle?,
            idle_timeout: idle_timeout?,
            max_age: max_age?,
            max_connecting: max_connecting?,
            connect_timeout: connect_timeout?,
            response_timeout: response_timeout?,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
        })
    }
}
