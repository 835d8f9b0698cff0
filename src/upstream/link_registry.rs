//! The aggregate-mode link registry of one shard: for every aggregate MQTT destination, the
//! set of upstream links device sessions share ([`LinkSet`], created when the first device
//! session needs it), kept across reloads while the destination's link settings stay the same
//! and retired when they change. Kept in the shard's state beside its upstream handle
//! ([`super::driver::ShardUpstreams`], through which the links connect); the links themselves
//! are driven by [`run_link`].
//!
//! Shard-local (`RefCell`, no locks). What this module does not do: anything on the device side
//! (sessions, topics, acknowledgements to devices: `crate::flows::mqtt_aggregate`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use tracing::Instrument;

use super::driver::ShardUpstreams;
use super::mqtt_link::{
    destination_fingerprint, run_link, AggregateCounters, Link, LinkCore, LinkSettings,
};
use crate::policy::Plan;
use crate::reactor;

/// The links of one destination on one shard.
pub struct LinkSet {
    links: Vec<Rc<Link>>,
}

impl LinkSet {
    /// A set of these links (the registry builds them with their drivers; tests build them
    /// bare).
    pub fn new(links: Vec<Rc<Link>>) -> LinkSet {
        LinkSet { links }
    }

    /// The link for a device: a stable hash of its client id, so one device always uses the same
    /// link (per-device order).
    pub fn pick(&self, client_id: &[u8]) -> Option<&Rc<Link>> {
        if self.links.is_empty() {
            return None;
        }
        // FNV-1a: stable across runs and shards.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in client_id {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.links.get((h % self.links.len() as u64) as usize)
    }

    /// Every link of the set, in connection order.
    pub fn links(&self) -> &[Rc<Link>] {
        &self.links
    }

    fn retire(&self) {
        for link in &self.links {
            link.retire();
        }
    }

    fn usable(&self) -> bool {
        self.links.iter().all(|l| !l.is_retired())
    }
}

#[derive(Default)]
struct Inner {
    /// The plan the link sets were last checked against.
    plan: Option<Arc<Plan>>,
    /// Link sets by destination name, with the fingerprint they were built for.
    sets: HashMap<String, (u64, Rc<LinkSet>)>,
}

/// The link sets of one shard, by destination, and their counters.
#[derive(Default)]
pub struct LinkRegistry {
    inner: RefCell<Inner>,
    counters: Rc<AggregateCounters>,
}

impl LinkRegistry {
    /// This shard's aggregate-mode counters.
    pub fn counters(&self) -> &AggregateCounters {
        &self.counters
    }

    /// True while a live link of this shard still has PUBLISHes unacknowledged or waiting (the
    /// shard's drain waits for them, within its window).
    pub fn links_busy(&self) -> bool {
        self.inner.borrow().sets.values().any(|(_, set)| {
            set.links.iter().any(|l| {
                !l.has_ended() && {
                    let core = l.core.borrow();
                    core.inflight_len() > 0 || core.waiting_len() > 0
                }
            })
        })
    }

    /// The link set of destination `dest_name` under the shard's current plan, starting its link
    /// tasks if needed; `None` if the current plan has no aggregate destination of that name.
    pub fn link_set(&self, upstreams: &Rc<ShardUpstreams>, dest_name: &str) -> Option<Rc<LinkSet>> {
        let plan = upstreams.plan();
        let mut inner = self.inner.borrow_mut();
        if !inner.plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan)) {
            // New plan generation: keep link sets whose destination is unchanged, retire others.
            inner.sets.retain(|name, (fingerprint, set)| {
                let same = plan
                    .destinations
                    .iter()
                    .find(|d| &d.name == name)
                    .and_then(destination_fingerprint)
                    == Some(*fingerprint);
                if !same {
                    set.retire();
                }
                same
            });
            inner.plan = Some(plan.clone());
        }
        if let Some((_, set)) = inner.sets.get(dest_name) {
            if set.usable() {
                return Some(set.clone());
            }
            set.retire();
        }
        let dest = plan.destinations.iter().find(|d| d.name == dest_name)?;
        let fingerprint = destination_fingerprint(dest)?;
        let count = dest.mqtt().map_or(1, |m| m.connections_per_shard.max(1));
        let mut links = Vec::with_capacity(count);
        let mut tasks = Vec::with_capacity(count);
        for conn in 0..count {
            let settings = LinkSettings::for_destination(dest, upstreams.shard(), conn)?;
            let mut core = LinkCore::new(
                settings.version,
                settings.max_inflight,
                self.counters.clone(),
            );
            core.set_name(&settings.client_id);
            core.set_publish_rate(settings.max_publish_rate);
            core.set_latency_histograms(
                upstreams.latency_histograms(),
                usize::from(dest.id.0),
                &dest.name,
            );
            let link = Link::new(core);
            link.set_destination(&dest.name, usize::from(dest.id.0));
            // Shared by many devices, so not in the span of the device whose session created it
            // (hence no parent): a span of its own.
            let span = tracing::info_span!(
                parent: None,
                "upstream_link",
                shard = upstreams.shard(),
                destination = %dest.name,
                link = conn,
            );
            tasks.push(
                run_link(
                    upstreams.clone(),
                    link.clone(),
                    dest.name.clone(),
                    fingerprint,
                    settings,
                    self.counters.clone(),
                )
                .instrument(span),
            );
            links.push(link);
        }
        let set = Rc::new(LinkSet { links });
        inner
            .sets
            .insert(dest_name.to_string(), (fingerprint, set.clone()));
        drop(inner);
        for task in tasks {
            reactor::spawn(task).detach();
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::proto::mqtt::ProtocolVersion;

    #[test]
    fn link_pick_is_stable() {
        let counters = Rc::new(AggregateCounters::default());
        let set = LinkSet {
            links: (0..4)
                .map(|_| Link::new(LinkCore::new(ProtocolVersion::V311, 4, counters.clone())))
                .collect(),
        };
        let a = set.pick(b"device-a").map(Rc::as_ptr);
        assert_eq!(a, set.pick(b"device-a").map(Rc::as_ptr));
        let distinct: HashSet<_> = (0..64)
            .filter_map(|i| set.pick(format!("d{i}").as_bytes()).map(Rc::as_ptr))
            .collect();
        assert!(distinct.len() > 1, "devices spread over links");
    }
}
