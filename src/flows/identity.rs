//! Who a device connection is: the SIM the SIM table binds its source address to, and the
//! group whose policy it follows — resolved once per connection, and again only when a reload
//! has replaced the plan (a SIM moved to another group follows it from its next HTTP request or
//! MQTT session; the indexes of a SIM in two plans' tables differ). An unknown source address
//! follows its listener's `unknown` setting: the gateway's `default_group`, or refused.
//!
//! A [`DeviceIdentity`] is two words a connection keeps across awaits; it borrows nothing, and
//! the SIM's fields are read through the plan it was resolved with ([`DeviceIdentity::sim`]).
//!
//! What this module does not do: answer a refused device (each flow answers in its protocol:
//! HTTP 403, MQTT CONNACK 0x87) or attach fields upstream ([`crate::policy::attach`]).

use std::net::IpAddr;

use crate::identity::SimRef;
use crate::policy::{GroupId, ListenerId, Plan, UnknownSource};

/// A device connection's SIM (if known) and group, under the plan of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Index of the SIM in that plan's table; `u32::MAX` for an unknown source.
    sim: u32,
    group: GroupId,
    generation: u64,
}

impl DeviceIdentity {
    /// Identify a device at `peer` on `listener` under `plan` (of `generation`). `None`: an
    /// unknown source on a listener with `unknown = "reject"`.
    pub fn resolve(
        plan: &Plan,
        generation: u64,
        listener: ListenerId,
        peer: IpAddr,
    ) -> Option<DeviceIdentity> {
        match plan.identify(peer) {
            Some((sim, group)) => Some(DeviceIdentity {
                sim: sim.index(),
                group,
                generation,
            }),
            None => match plan.listener(listener).unknown {
                UnknownSource::Default => Some(DeviceIdentity {
                    sim: u32::MAX,
                    group: plan.gateway.default_group,
                    generation,
                }),
                UnknownSource::Reject => None,
            },
        }
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
}
