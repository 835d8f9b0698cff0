//! IoT Hub token renewal, the IO half (the pure half is `super::super::renewal`): a session's
//! [`Renew`] state, and [`Pump::renew_if_due`], which opens the next upstream connection with
//! the shard's newer token, subscribes again and switches to it (resending what the old one
//! left unanswered). See docs/decisions/0015-azure-token-renewal.md.
//!
//! What this module does not do: decide when (that is `Schedule`), or what is resent (`Carry`).

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use super::super::bridge::SessionEnd;
use super::super::renewal::{Carry, Schedule};
use super::{c2d_subscription, open_upstream, subscribe_hub, OpenError, Pump};
use crate::flows::ShardState;
use crate::policy::cloud::Token;
use crate::policy::{DestinationId, DestinationPlan};
use crate::proto::mqtt::{
    self, Connect, Packet, ProtocolVersion, ReasonCode, Subscription, SubscriptionOptions,
};
use crate::reactor;
use crate::stats::{ErrorKind, Protocol};
use crate::upstream::UpstreamConn;

/// An IoT Hub session's token renewal (see `super::renewal`): what it needs to open the
/// next upstream connection, when, and what it carries across.
pub(super) struct Renew<'a> {
    /// The destination's index in the served plan (found again by name after a reload;
    /// `None`: the reload removed or changed it, and the session renews no more).
    pub(super) destination: Option<DestinationId>,
    /// The pools' generation `destination` was looked up for.
    pub(super) plan_seen: u64,
    pub(super) dest: &'a DestinationPlan,
    /// The pools' generation the session's connections are made for.
    pub(super) generation: u64,
    /// The upstream CONNECT as first sent; sent again with each newer token.
    pub(super) connect: Connect,
    pub(super) c2d_filter: Bytes,
    pub(super) schedule: Schedule,
    pub(super) carry: Carry,
    /// `tokens_changed` epoch when the shard's token was last looked at.
    pub(super) tokens_seen: u64,
}

/// A renewal's new connection, the packets the hub sent on it before its SUBACK, and the
/// expiry of the token it was opened with.
type Renewed = (UpstreamConn, Vec<Packet>, SystemTime);

/// A wall-clock moment (a token's expiry) on the reactor's clock.
pub(super) fn on_reactor_clock(at: SystemTime) -> Instant {
    reactor::now()
        + at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}

/// A session's fixed place in its destination's renewal window, in `[0, 1)`: a hash of its
/// device id, so sessions spread without a random source.
pub(super) fn jitter_of(device_id: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device_id.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Completes when the session should look at its renewal again: when one is due, or (none
/// scheduled) when the shard receives tokens; never for a session that does not renew.
pub(super) async fn renewal_wake(state: &ShardState, due: Option<(Option<Instant>, u64)>) {
    match due {
        None => std::future::pending().await,
        Some((Some(at), _)) => reactor::sleep_until(at).await,
        Some((None, seen)) => state.tokens_changed.changed_since(seen).await,
    }
}

impl Pump<'_> {
    /// IoT Hub: look at the shard's token and, when a renewal is due, replace the upstream
    /// connection. `Ok(true)`: an attempt was made (the device was not read meanwhile);
    /// `Err`: the session ends (the new connection failed after the hub accepted it, which
    /// closes the old one).
    pub(super) async fn renew_if_due(&mut self) -> Result<bool, SessionEnd> {
        let now = reactor::now();
        let Some(r) = self.renew.as_mut() else {
            return Ok(false);
        };
        // Looked at only when the shard received tokens or the plan changed (and on the first
        // turn).
        let epoch = self.state.tokens_changed.epoch();
        let generation = self.state.upstreams.generation();
        if r.tokens_seen != epoch || r.plan_seen != generation {
            if r.plan_seen != generation {
                // A reload: the token table is the new plan's, indexed by its destinations.
                let (plan, _) = self.state.current();
                r.destination = plan
                    .destinations
                    .iter()
                    .find(|d| d.name == r.dest.name && d.token == r.dest.token)
                    .map(|d| d.id);
                r.plan_seen = generation;
            }
            r.tokens_seen = epoch;
            let newest = r.destination.and_then(|id| {
                let tokens = self.state.tokens.borrow();
                tokens
                    .get(usize::from(id.0))?
                    .as_ref()
                    .map(|t| t.expires_at)
            });
            if let Some(expires_at) = newest {
                r.schedule.offered(expires_at, now);
            }
        }
        if !r.schedule.is_due(now) {
            return Ok(false);
        }
        let token = r
            .destination
            .and_then(|id| self.state.token(id))
            .filter(|t| t.valid_at(SystemTime::now()));
        let opened = match token {
            Some(token) => self.open_renewal(&token).await,
            None => Err(ErrorKind::CredentialUnavailable),
        };
        let Some(r) = self.renew.as_mut() else {
            return Ok(true);
        };
        let (mut conn, early, expires_at) = match opened {
            Ok(Ok(new)) => new,
            Ok(Err(end)) => {
                self.state.metrics.borrow_mut().mqtt_session_renewals_failed += 1;
                return Err(end);
            }
            Err(kind) => {
                // The old connection stays (its token is still valid); retried with backoff.
                r.schedule.failed(reactor::now());
                let mut metrics = self.state.metrics.borrow_mut();
                metrics.mqtt_session_renewals_failed += 1;
                let (index, name) = (self.latency_dest.0, &*self.latency_dest.1);
                metrics.destination_error(index, name, Protocol::Mqtt, kind);
                return Ok(true);
            }
        };
        // The switch: the hub closed the old connection when it accepted the new one.
        std::mem::swap(self.upstream, &mut conn);
        drop(conn);
        r.schedule.renewed(expires_at, on_reactor_clock(expires_at));
        let again = r.carry.switch();
        {
            let (index, name) = (self.latency_dest.0, &*self.latency_dest.1);
            let mut metrics = self.state.metrics.borrow_mut();
            metrics.mqtt_session_renewals_ok += 1;
            if let Some(d) = metrics.destination(index, name) {
                d.reconnects += 1;
            }
        }
        if !again.is_empty() {
            let parts: Vec<&[u8]> = again.iter().map(|b| &b[..]).collect();
            if self.upstream.stream.write_all(&parts).await.is_err() {
                return Err(SessionEnd::UpstreamClosed);
            }
        }
        match self.relay_stashed(early).await {
            Some(end) => Err(end),
            None => Ok(true),
        }
    }

    /// Open the next upstream connection with `token` (the shard's newer one): CONNECT with the
    /// session's client id and Clean Session / Clean Start 0 (what the hub holds for the
    /// device is kept), then subscribe again to the C2D topic and the device's hub filters.
    /// `Err(kind)`: no new session, for that reason (the old connection stays); `Ok(Err)`: the
    /// hub accepted the new CONNECT (so closed the old connection) but the new connection failed.
    async fn open_renewal(
        &mut self,
        token: &Token,
    ) -> Result<Result<Renewed, SessionEnd>, ErrorKind> {
        let Some(r) = self.renew.as_ref() else {
            return Err(ErrorKind::UpstreamProtocol);
        };
        let version = self.bridge.upstream_version();
        let mut connect = r.connect.clone();
        connect.password = Some(Bytes::copy_from_slice(token.authorization.as_bytes()));
        connect.clean_start = false;
        let expires_at = token.expires_at;
        let mut bytes = BytesMut::new();
        mqtt::encode(&Packet::Connect(Box::new(connect)), version, &mut bytes)
            .map_err(|_| ErrorKind::UpstreamProtocol)?;
        let timeout = r.dest.pool.connect_timeout;
        let opened = open_upstream(
            self.state,
            r.generation,
            r.dest,
            timeout,
            &bytes,
            version,
            &self.limits,
        )
        .await;
        let (mut conn, connack) = opened.map_err(|e| e.error_kind())?;
        let accepted = match version {
            ProtocolVersion::V5 => connack.reason_code == ReasonCode::SUCCESS,
            ProtocolVersion::V311 => connack.reason_code.0 == 0,
        };
        if !accepted {
            // A refused CONNECT does not take the old connection over.
            return Err(ErrorKind::UpstreamProtocol);
        }
        let mut subscriptions = vec![c2d_subscription(r.c2d_filter.clone())];
        subscriptions.extend(
            r.carry
                .subscriptions()
                .iter()
                .map(|(filter, qos)| Subscription {
                    filter: filter.clone(),
                    options: SubscriptionOptions::with_qos(*qos),
                }),
        );
        let deadline = reactor::now() + timeout;
        Ok(
            match subscribe_hub(&mut conn, subscriptions, deadline, version, &self.limits).await {
                Ok(early) => Ok((conn, early, expires_at)),
                Err(OpenError::Protocol) => Err(SessionEnd::UpstreamProtocol),
                Err(_) => Err(SessionEnd::UpstreamClosed),
            },
        )
    }
}
