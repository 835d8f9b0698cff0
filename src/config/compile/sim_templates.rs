//! The load-time check that every SIM placeholder a template uses can be filled: for each
//! group, the destinations its routes reach (MQTT templates, an HTTP `base_path`); for each of the group's SIMs, the fields
//! those destinations' templates name (`{imei}`, `{tag.site}`, …). A field some SIMs lack is an
//! error at the template's path saying how many SIMs of which group lack it (and the first
//! one's IMSI), rather than devices whose topics or client ids silently render with a hole.
//! Devices without a SIM entry reach the default group on listeners with `unknown =
//! "default"`; a template with any SIM placeholder on such a route is an error too.
//!
//! Pure, over the compiled plan. What this module does not do: parse templates (`mqtt.rs`) or
//! read the SIM table (`config::sims`).

use super::Compiler;
use crate::policy::{GroupId, Plan, UnknownSource};

/// The SIM-placeholder templates of a destination, with their field paths.
fn sim_templates(plan: &Plan, destination: usize) -> Vec<(String, &crate::policy::Template)> {
    let Some(dest) = plan.destinations.get(destination) else {
        return Vec::new();
    };
    if let Some(https) = dest.https() {
        return if https.base_path.uses_sim() {
            vec![(
                format!("destination[{destination}].base_path"),
                &https.base_path,
            )]
        } else {
            Vec::new()
        };
    }
    let Some(mqtt) = dest.mqtt() else {
        return Vec::new();
    };
    let p = format!("destination[{destination}].mqtt");
    let mut out = Vec::new();
    if mqtt.client_id.uses_sim() {
        out.push((format!("{p}.client_id"), &mqtt.client_id));
    }
    if let Some(username) = mqtt.username.as_ref().filter(|t| t.uses_sim()) {
        out.push((format!("{p}.username"), username));
    }
    if mqtt.topic.uses_sim() {
        out.push((format!("{p}.topic"), &*mqtt.topic));
    }
    if let Some(aws) = dest
        .aws_iot_core_mqtt()
        .filter(|a| a.thing_topics && a.thing_name.uses_sim())
        .filter(|a| a.thing_name.as_str() != mqtt.client_id.as_str())
    {
        out.push((format!("{p}.thing_name"), &aws.thing_name));
    }
    out
}

impl Compiler<'_> {
    /// Report every SIM placeholder that some device routed to its template could not fill.
    pub(super) fn check_sim_templates(&mut self, plan: &Plan) {
        // Templates with SIM placeholders reachable from each group, by field path.
        let mut by_group: Vec<Vec<(String, &crate::policy::Template)>> =
            vec![Vec::new(); plan.groups.len()];
        for (g, group) in plan.groups.iter().enumerate() {
            let routes = group
                .mqtt_routes
                .iter()
                .map(|r| (r.listener, r.destination))
                .chain(
                    group
                        .http_routes
                        .iter()
                        .map(|r| (r.listener, r.destination)),
                );
            for (route_listener, route_destination) in routes {
                let destination = usize::from(route_destination.0);
                for (path, template) in sim_templates(plan, destination) {
                    if !by_group[g].iter().any(|(p, _)| *p == path) {
                        by_group[g].push((path.clone(), template));
                    }
                    // Devices without a SIM reach the default group's routes on listeners
                    // that serve unknown sources.
                    let listener = plan.listener(route_listener);
                    if group.id == plan.gateway.default_group
                        && listener.unknown == UnknownSource::Default
                    {
                        self.push(
                            &path,
                            format!(
                                "uses a SIM placeholder, but devices without a SIM entry reach \
                                 this destination as group {:?} on listener {:?} (unknown = \
                                 \"default\"); set unknown = \"reject\" on that listener or \
                                 route the default group elsewhere",
                                group.name, listener.name
                            ),
                        );
                    }
                }
            }
        }
        if by_group.iter().all(Vec::is_empty) {
            return;
        }
        // (group, path, field) -> (SIMs lacking it, first IMSI)
        let mut missing: Vec<(usize, String, String, usize, String)> = Vec::new();
        for sim in plan.sims.iter() {
            let g = usize::from(GroupId(sim.group_index()).0);
            for (path, template) in by_group.get(g).into_iter().flatten() {
                if let Some(field) = template.missing_sim_field(&sim) {
                    match missing
                        .iter_mut()
                        .find(|m| m.0 == g && m.1 == *path && m.2 == field)
                    {
                        Some(entry) => entry.3 += 1,
                        None => missing.push((
                            g,
                            path.clone(),
                            field,
                            1,
                            sim.imsi().digits().as_str().to_owned(),
                        )),
                    }
                }
            }
        }
        for (g, path, field, count, first) in missing {
            let group = plan.groups.get(g).map_or("?", |g| g.name.as_str());
            self.push(
                &path,
                format!(
                    "uses {{{field}}}, which {count} SIM(s) of group {group:?} lack \
                     (the first: IMSI {first})"
                ),
            );
        }
    }
}
