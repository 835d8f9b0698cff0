//! What every flow of a shard shares: the shard's id, the plan it serves and its upstream
//! connections ([`ShardUpstreams`]), its metrics and usage meter, the drain signal, the aggregate-mode MQTT
//! state and the gateway-wide client-id table. One [`ShardState`] per shard thread, in an `Rc`;
//! the shard builds it and hands it to each connection's flow.
//!
//! Shard-local: `Cell`/`RefCell`, never sent across threads (the client-id table is the one
//! shared part, and it is `Sync`).
//!
//! What this module does not do: accept connections, enforce connection caps or run the
//! control thread's commands (`crate::shard` does).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::client_ids::ClientIds;
use super::drain::DrainSignal;
use super::mqtt_aggregate::AggregateShard;
use super::throttle::LogThrottle;
use crate::identity::LiveBindings;
use crate::policy::cloud::Token;
use crate::policy::{DestinationId, Plan};
use crate::reactor::Broadcast;
use crate::stats::usage::{ShardUsage, UsageKey};
use crate::stats::ShardMetrics;
use crate::upstream::driver::ShardUpstreams;
use crate::upstream::link_registry::LinkRegistry;

/// Index of a shard (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId(pub usize);

/// How often a fault that repeats per request or connection is logged at info/warn.
pub use super::throttle::LOG_THROTTLE;

/// Everything a shard's flows share. Lives in an `Rc` on the shard thread only.
pub struct ShardState {
    /// This shard.
    pub id: ShardId,
    /// The plan served and its upstream pools.
    pub upstreams: Rc<ShardUpstreams>,
    /// Aggregate-mode MQTT links, by destination (they connect through `upstreams`).
    pub links: LinkRegistry,
    /// Counters and histograms (borrow briefly, never across an await).
    pub metrics: RefCell<ShardMetrics>,
    /// Usage per SIM and group since the control thread last took it (borrow briefly).
    pub usage: RefCell<ShardUsage>,
    /// `usage.enabled` of the plan the shard started with (read at start): when false the
    /// `usage_*` methods return at their first branch, before reading the clock.
    pub usage_enabled: bool,
    /// Fired when shutdown begins; idle connections wait on it to close at once.
    pub drain: DrainSignal,
    /// Notified when a reload replaced the plan: long-lived sessions check whether their
    /// device still belongs to its group.
    pub plan_changed: Broadcast,
    /// Keeps "request answered with a gateway error" (HTTP) to one info line per interval.
    pub gateway_error_log: LogThrottle,
    /// Keeps "client id taken over" (MQTT aggregate mode) to one info line per interval: a
    /// device reconnecting in a loop with the same id must not fill the log.
    pub takeover_log: LogThrottle,
    /// Keeps each kind of device-triggered fault (malformed requests and packets, unknown
    /// sources) to one info line per interval.
    pub device_faults: super::device_log::DeviceFaultLog,
    /// Aggregate-mode MQTT client ids of every shard: a CONNECT with a connected client id
    /// takes the id over from the session holding it, on whichever shard that is.
    pub client_ids: Arc<ClientIds>,
    /// Live IP → SIM bindings from the packet core, shared by every shard (read once per
    /// device connection, lock-free).
    pub bindings: Arc<LiveBindings>,
    /// Aggregate-mode MQTT state of this shard (upstream links, downlink routing).
    pub mqtt_aggregate: AggregateShard,
    /// The cloud tokens (SAS, OAuth2 bearer) the control thread minted for the served plan's
    /// destinations, by destination index.
    pub tokens: RefCell<Vec<Option<Token>>>,
    /// Notified when the control thread installs new tokens (sessions that renew their
    /// upstream connection with a newer token wait on it).
    pub tokens_changed: Broadcast,
    /// Batch queues of the batching cloud adapters.
    pub batcher: super::batch::Batcher,
    /// Live device connections, for `/admin/sessions` (borrow briefly).
    pub sessions: RefCell<super::sessions::SessionTable>,
}

impl ShardState {
    /// The state of shard `id`, serving `plan`, sharing `client_ids` with the other shards.
    pub fn new(
        id: ShardId,
        plan: Arc<Plan>,
        client_ids: Arc<ClientIds>,
        bindings: Arc<LiveBindings>,
    ) -> ShardState {
        let mut usage = ShardUsage::default();
        name_groups(&mut usage, &plan);
        let mut metrics = ShardMetrics::default();
        if !plan.metrics.histograms {
            metrics.latency.switch_off();
        }
        name_destinations(&mut metrics, &plan);
        ShardState {
            id,
            usage: RefCell::new(usage),
            usage_enabled: plan.usage.enabled,
            upstreams: Rc::new(ShardUpstreams::new(id.0, plan)),
            links: LinkRegistry::default(),
            metrics: RefCell::new(metrics),
            drain: DrainSignal::default(),
            plan_changed: Broadcast::default(),
            gateway_error_log: LogThrottle::new(LOG_THROTTLE),
            takeover_log: LogThrottle::new(LOG_THROTTLE),
            device_faults: super::device_log::DeviceFaultLog::default(),
            client_ids,
            bindings,
            mqtt_aggregate: AggregateShard::default(),
            tokens: RefCell::new(Vec::new()),
            tokens_changed: Broadcast::default(),
            batcher: super::batch::Batcher::default(),
            sessions: RefCell::default(),
        }
    }

    /// The current token of destination `destination` of the served plan (a clone of two
    /// words' worth: an `Arc<str>` and a time).
    pub fn token(&self, destination: DestinationId) -> Option<Token> {
        self.tokens
            .borrow()
            .get(usize::from(destination.0))
            .cloned()
            .flatten()
    }

    /// Install tokens the control thread minted for `plan`; ignored unless `plan` is the
    /// served plan (a reload carried or will push the tokens of its own plan).
    pub fn set_tokens(&self, plan: &Arc<Plan>, tokens: Vec<(DestinationId, Token)>) -> bool {
        if !Arc::ptr_eq(plan, &self.plan()) {
            return false;
        }
        let mut table = self.tokens.borrow_mut();
        table.resize(plan.destinations.len(), None);
        for (destination, token) in tokens {
            if let Some(slot) = table.get_mut(usize::from(destination.0)) {
                *slot = Some(token);
            }
        }
        drop(table);
        self.tokens_changed.notify_all();
        true
    }

    /// On a reload from `old` to `new`: keep the token of every destination whose name and
    /// token recipe are unchanged, so no request waits for a re-mint; drop the others.
    pub fn carry_tokens(&self, old: &Plan, new: &Plan) {
        let mut table = self.tokens.borrow_mut();
        let mut carried = vec![None; new.destinations.len()];
        for (slot, dest) in carried.iter_mut().zip(&new.destinations) {
            let Some(spec) = &dest.token else { continue };
            let previous = old
                .destinations
                .iter()
                .find(|d| d.name == dest.name && d.token.as_ref() == Some(spec));
            if let Some(previous) = previous {
                *slot = table.get(usize::from(previous.id.0)).cloned().flatten();
            }
        }
        *table = carried;
    }

    /// The plan to serve the next request from.
    pub fn plan(&self) -> Arc<Plan> {
        self.upstreams.plan()
    }

    /// True once shutdown began: connections close after their current request.
    pub fn draining(&self) -> bool {
        self.drain.fired()
    }

    /// The plan to serve the next request from, with its generation (which tells pools apart
    /// across reloads).
    pub fn current(&self) -> (Arc<Plan>, u64) {
        self.upstreams.current()
    }

    /// Remember the group names of `plan` for usage records (call before serving it).
    pub fn name_usage_groups(&self, plan: &Plan) {
        name_groups(&mut self.usage.borrow_mut(), plan);
    }

    /// Index the per-destination latency histograms and counters by `plan`'s destinations
    /// (on reload; samples and counts of destinations that keep their name survive).
    pub fn name_destinations(&self, plan: &Plan) {
        name_destinations(&mut self.metrics.borrow_mut(), plan);
    }

    /// Count into `dest`'s counters with `count` (nothing if `dest` left the configuration
    /// since the message was routed).
    pub fn count_destination(
        &self,
        dest: &crate::policy::DestinationPlan,
        count: impl FnOnce(&mut crate::stats::DestinationCounts),
    ) {
        if let Some(d) = self
            .metrics
            .borrow_mut()
            .destination(usize::from(dest.id.0), &dest.name)
        {
            count(d);
        }
    }

    /// Record `elapsed` of `latency` for a device of `protocol` at `dest`.
    pub fn record_latency(
        &self,
        dest: &crate::policy::DestinationPlan,
        latency: crate::stats::Latency,
        protocol: crate::stats::Protocol,
        elapsed: std::time::Duration,
    ) {
        self.metrics.borrow_mut().record_destination(
            usize::from(dest.id.0),
            &dest.name,
            latency,
            protocol,
            elapsed.as_micros() as u64,
        );
    }

    /// Count usage from the device: `msgs` messages, `bytes` bytes (docs/metrics.md says what
    /// each protocol counts).
    pub fn usage_up(&self, key: UsageKey, msgs: u64, bytes: u64) {
        if !self.usage_enabled {
            return;
        }
        let now = crate::reactor::now();
        self.usage.borrow_mut().uplink(key, msgs, bytes, now);
    }

    /// Count usage to the device.
    pub fn usage_down(&self, key: UsageKey, msgs: u64, bytes: u64) {
        if !self.usage_enabled {
            return;
        }
        let now = crate::reactor::now();
        self.usage.borrow_mut().downlink(key, msgs, bytes, now);
    }

    /// Add a connection's pending usage counts at once.
    pub fn usage_add(&self, key: UsageKey, counts: &crate::stats::usage::UsageCounts) {
        if !self.usage_enabled {
            return;
        }
        let now = crate::reactor::now();
        self.usage.borrow_mut().add(key, counts, now);
    }

    /// Hand a connection's pending usage to the meter (and zero it), if there is any.
    pub fn usage_flush(&self, key: UsageKey, pending: &mut crate::stats::usage::UsageCounts) {
        if !pending.is_zero() {
            self.usage_add(key, &std::mem::take(pending));
        }
    }

    /// Count an error of the device's usage (one per error counted in `/metrics`).
    pub fn usage_error(&self, key: UsageKey) {
        if !self.usage_enabled {
            return;
        }
        let now = crate::reactor::now();
        self.usage.borrow_mut().error(key, now);
    }
}

fn name_groups(usage: &mut ShardUsage, plan: &Plan) {
    for g in &plan.groups {
        usage.name_group(super::identity::group_key(&g.name), &g.name);
    }
}

fn name_destinations(metrics: &mut ShardMetrics, plan: &Plan) {
    metrics
        .latency
        .set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
    metrics
        .destinations
        .set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
}
