//! Who a device connection is: the SIM the SIM table binds its source address to, and the
//! group whose policy it follows — resolved once per connection, and again only when a reload
//! has replaced the plan (a SIM moved to another group follows it from its next HTTP request or
//! MQTT session; the indexes of a SIM in two plans' tables differ). An unknown source address
//! follows its listener's `unknown` setting: the gateway's `default_group`, or refused. A live
//! binding from the packet core (RADIUS accounting, [`LiveBindings`]) takes precedence over the
//! table's configured address.
//!
//! A [`DeviceIdentity`] is a few words a connection keeps across awaits; it borrows nothing, and
//! the SIM's fields are read through the plan it was resolved with ([`DeviceIdentity::sim`]).
//! It also carries the connection's [`UsageKey`] (IMSI and group-name key), which stays valid
//! across reloads, so usage is billed to the right SIM and group whatever plan is served.
//!
//! What this module does not do: answer a refused device (each flow answers in its protocol:
//! HTTP 403, MQTT CONNACK 0x87) or attach fields upstream ([`crate::policy::attach`]).

use std::net::IpAddr;

use bytes::Bytes;

use crate::identity::{LiveBindings, SimRef};
use std::sync::Arc;

use crate::policy::attach::Attach;
use crate::policy::signature::{SignInput, Signer, MQTT_METHOD};
use crate::policy::{GroupId, ListenerId, Plan, UnknownSource};
use crate::proto::mqtt::{Properties, UserProperty};
use crate::stats::usage::UsageKey;

/// A device connection's SIM (if known) and group, under the plan of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Index of the SIM in that plan's table; `u32::MAX` for an unknown source.
    sim: u32,
    group: GroupId,
    generation: u64,
    /// Whom the connection's traffic is billed to.
    usage: UsageKey,
}

impl DeviceIdentity {
    /// Identify a device at `peer` on `listener` under `plan` (of `generation`). `None`: an
    /// unknown source on a listener with `unknown = "reject"`.
    pub fn resolve(
        bindings: &LiveBindings,
        plan: &Plan,
        generation: u64,
        listener: ListenerId,
        peer: IpAddr,
    ) -> Option<DeviceIdentity> {
        // A live binding from the packet core first: it names the IMSI of the session that
        // holds the address now.
        if let Some(bound) = bindings.lookup(peer) {
            if let Some(sim) = plan.sims.by_imsi(bound.imsi) {
                return Some(DeviceIdentity::new(
                    plan,
                    sim.index(),
                    GroupId(sim.group_index()),
                    generation,
                    Some(sim.imsi()),
                ));
            }
            if bound.default_if_unknown {
                let group = plan.gateway.default_group;
                return Some(DeviceIdentity::new(plan, u32::MAX, group, generation, None));
            }
        }
        match plan.identify(peer) {
            Some((sim, group)) => Some(DeviceIdentity::new(
                plan,
                sim.index(),
                group,
                generation,
                Some(sim.imsi()),
            )),
            None => match plan.listener(listener).unknown {
                UnknownSource::Default => Some(DeviceIdentity::new(
                    plan,
                    u32::MAX,
                    plan.gateway.default_group,
                    generation,
                    None,
                )),
                UnknownSource::Reject => None,
            },
        }
    }

    /// A session's identity under a new `plan` (of `generation`): `Some` if the device still
    /// belongs to the group named as the one it connected under (`group_key`, see
    /// [`group_key`]), `None` if it moved to another group or is now refused — the session
    /// then ends, and the device reconnects into its new group.
    pub fn refresh(
        bindings: &LiveBindings,
        group_key: u64,
        plan: &Plan,
        generation: u64,
        listener: ListenerId,
        peer: IpAddr,
    ) -> Option<DeviceIdentity> {
        let new = DeviceIdentity::resolve(bindings, plan, generation, listener, peer)?;
        let same = plan
            .groups
            .get(usize::from(new.group.0))
            .is_some_and(|g| self::group_key(&g.name) == group_key);
        same.then_some(new)
    }

    fn new(
        plan: &Plan,
        sim: u32,
        group: GroupId,
        generation: u64,
        imsi: Option<crate::identity::Imsi>,
    ) -> DeviceIdentity {
        let name = plan
            .groups
            .get(usize::from(group.0))
            .map_or("", |g| &g.name);
        DeviceIdentity {
            sim,
            group,
            generation,
            usage: UsageKey {
                imsi,
                group: group_key(name),
            },
        }
    }

    /// Whom this device's traffic is billed to: valid under every plan (IMSI and group name).
    pub fn usage(&self) -> UsageKey {
        self.usage
    }

    /// True while the plan it was resolved under is the one served.
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
    }

    /// The group whose routes and policy apply.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The device's SIM, read through `plan` — which must be the plan it was resolved under
    /// (check [`DeviceIdentity::is_current`]). `None` for an unknown source.
    pub fn sim<'p>(&self, plan: &'p Plan) -> Option<SimRef<'p>> {
        if self.sim == u32::MAX {
            return None;
        }
        plan.sims.get(self.sim)
    }

    /// The identity fields a JSON envelope carries for this device (its group's attached
    /// fields the SIM has, as [`crate::policy::envelope::identity_fields`]), read through
    /// `plan` (the plan it was resolved under); empty for an unknown source.
    pub fn envelope_fields(&self, plan: &Plan) -> Box<[(String, String)]> {
        let attach = plan
            .groups
            .get(usize::from(self.group.0))
            .map_or(Attach::NONE, |g| g.attach);
        crate::policy::envelope::identity_fields(self.sim(plan).as_ref(), attach).into()
    }

    /// The fields the device's group attaches, as MQTT 5 user properties, read through `plan`
    /// (the plan it was resolved under), with the group's signer; empty for an unknown source,
    /// which still has its group's field names reserved.
    pub fn user_properties(&self, plan: &Plan) -> AttachedProperties {
        let group = plan.groups.get(usize::from(self.group.0));
        let attach = group.map_or(Attach::NONE, |g| g.attach);
        let properties = match self.sim(plan) {
            Some(sim) => attach
                .user_properties(&sim)
                .into_iter()
                .map(|(name, value)| UserProperty {
                    name: Bytes::from(name),
                    value: Bytes::from(value),
                })
                .collect(),
            None => Box::default(),
        };
        AttachedProperties {
            attach,
            properties,
            signer: group.and_then(|g| g.signer.clone()),
        }
    }
}

/// A device's identity as MQTT 5 user properties, with the set of names its group reserves and
/// the group's signer.
#[derive(Debug, Clone, Default)]
pub struct AttachedProperties {
    /// The group's attached fields: the device's own user properties of these names are
    /// removed whether or not there is a SIM to attach.
    pub attach: Attach,
    /// The SIM's values (empty for an unknown source).
    pub properties: Box<[UserProperty]>,
    /// Signs every uplink PUBLISH (`signing_secret`), if the group has one.
    pub signer: Option<Arc<Signer>>,
}

/// True for a user property name simgate itself sets (`x-simgate-…`, any case): a device's own
/// is never forwarded.
fn is_simgate_property(name: &[u8]) -> bool {
    name.len() >= 10 && name[..10].eq_ignore_ascii_case(b"x-simgate-")
}

impl AttachedProperties {
    /// Put the identity into MQTT 5 `props`: the device's own user properties of the reserved
    /// names (and any `x-simgate-…`) are removed first, then the SIM's are appended.
    pub fn apply(&self, props: &mut Properties) {
        if self.attach.is_empty() && self.signer.is_none() {
            return;
        }
        props.user_properties.retain(|u| {
            !self.attach.claims_user_property(&u.name) && !is_simgate_property(&u.name)
        });
        props
            .user_properties
            .extend(self.properties.iter().cloned());
    }

    /// [`apply`](Self::apply) for an uplink PUBLISH to upstream `topic`, then, if the group
    /// signs, `x-simgate-timestamp` and `x-simgate-signature` over it (docs/signature.md).
    pub fn apply_to_publish(&self, props: &mut Properties, topic: &[u8], payload: &[u8]) {
        self.apply(props);
        let Some(signer) = &self.signer else {
            return;
        };
        let fields: Vec<(&[u8], &[u8])> = self
            .properties
            .iter()
            .map(|u| (&u.name[..], &u.value[..]))
            .collect();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = signer.sign(&SignInput {
            method: MQTT_METHOD,
            target: topic,
            timestamp,
            fields: &fields,
            body: payload,
        });
        for (name, value) in signature.user_properties() {
            props.user_properties.push(UserProperty {
                name: Bytes::from_static(name.as_bytes()),
                value: Bytes::from(value),
            });
        }
    }
}

/// A stable 64-bit key of a group's name (FNV-1a), which a long-lived session keeps to tell
/// after a reload whether its device still belongs to the same group (group indexes may
/// change between plans; names do not).
pub fn group_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
