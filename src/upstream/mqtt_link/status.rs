//! [`LinkStatus`]: whether a link is up, and if not since when. Pure: the time is passed in
//! (the driver passes the reactor's clock).
//!
//! What this module does not do: read a clock or decide to refuse devices (aggregate mode asks
//! `policy::WhileDown` with [`LinkStatus::down_for`]).

use std::time::{Duration, Instant};

/// Whether a link has an upstream MQTT session, and if not, since when (reactor clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// The broker accepted the link's CONNECT and the connection has not been lost since.
    Up,
    /// No upstream session since `since`: when the link was created (it never connected) or
    /// when its last connection was lost; every connection attempt since then has failed.
    Down {
        /// Start of the outage.
        since: Instant,
    },
}

impl LinkStatus {
    /// The status after a connection was lost or an attempt failed at `now`: an outage starts
    /// if the link was up; a failed reconnect during an outage does not restart its clock.
    pub fn after_failure(self, now: Instant) -> LinkStatus {
        match self {
            LinkStatus::Up => LinkStatus::Down { since: now },
            down => down,
        }
    }

    /// How long the link has been down at `now` (`None` while up).
    pub fn down_for(self, now: Instant) -> Option<Duration> {
        match self {
            LinkStatus::Up => None,
            LinkStatus::Down { since } => Some(now.saturating_duration_since(since)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_runs_from_creation_or_loss_and_failed_retries_do_not_restart_it() {
        use crate::policy::WhileDown;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        let refuse = WhileDown::RefuseAfter(ms(1000));
        // Created, never connected: down since creation, and failed attempts keep that start.
        let created = LinkStatus::Down { since: t0 };
        let retried = created.after_failure(at(600));
        assert_eq!(retried, created);
        assert_eq!(retried.down_for(at(999)), Some(ms(999)));
        assert!(!refuse.refuses(retried.down_for(at(999))));
        assert!(refuse.refuses(retried.down_for(at(1000))));
        // Up: no outage, whatever the time.
        assert_eq!(LinkStatus::Up.down_for(at(60_000)), None);
        assert!(!refuse.refuses(LinkStatus::Up.down_for(at(60_000))));
        // Lost at 5 s: the outage starts then; reconnects failing at 5.5 s and 5.9 s do not
        // move it.
        let lost = LinkStatus::Up.after_failure(at(5000));
        let lost = lost.after_failure(at(5500)).after_failure(at(5900));
        assert_eq!(lost, LinkStatus::Down { since: at(5000) });
        assert!(!refuse.refuses(lost.down_for(at(5999))));
        assert!(refuse.refuses(lost.down_for(at(6000))));
        // A clock read before the outage started (cannot happen with one clock) is no outage.
        assert_eq!(lost.down_for(at(4000)), Some(Duration::ZERO));
    }
}
