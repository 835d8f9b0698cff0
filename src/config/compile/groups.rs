//! Compiles `[[group]]` into [`GroupPlan`]s: routes checked against the listeners and
//! destinations by name (HTTP listeners route to `https` destinations by path prefix, longest
//! first; an MQTT listener routes to one `mqtts` destination per group), and `attach`.
//!
//! What this does not do: compile SIMs into groups (see `config::sims`), or check the
//! referenced listeners and destinations themselves (their own files report those).

use std::sync::Arc;

use crate::policy::signature::{Signer, RECOMMENDED_SECRET_LEN};
use std::collections::HashMap;

use super::Compiler;
use crate::config::schema::RawConfig;
use crate::config::values::normalize_path_prefix;
use crate::policy::attach::{Attach, AttachField};
use crate::policy::AdapterKind;
use crate::policy::{DestinationId, GroupId, GroupPlan, HttpRoute, ListenerId, MqttRoute};

impl Compiler<'_> {
    /// `group[g].attach`: identity fields by name, each at most once (default `["imsi"]`).
    fn attach(&mut self, g: usize, raw: Option<&[String]>) -> Option<Attach> {
        let Some(names) = raw else {
            return Some(Attach::default());
        };
        let mut set = Attach::NONE;
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            match AttachField::parse(name) {
                Some(field) if set.contains(field) => {
                    self.push(
                        format!("group[{g}].attach[{i}]"),
                        format!("{name:?} given twice"),
                    );
                    ok = false;
                }
                Some(field) => set = set.with(field),
                None => {
                    let known: Vec<&str> =
                        AttachField::ALL.iter().map(|f| f.config_name()).collect();
                    self.push(
                        format!("group[{g}].attach[{i}]"),
                        format!("unknown field {name:?}; known: {}", known.join(", ")),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(set)
    }

    pub(super) fn groups(
        &mut self,
        raw: &RawConfig,
        listener_names: &HashMap<&str, usize>,
        destination_names: &HashMap<&str, usize>,
    ) -> Option<Vec<GroupPlan>> {
        let mut out = Vec::with_capacity(raw.group.len());
        for (g, group) in raw.group.iter().enumerate() {
            let mut http_routes = Vec::with_capacity(group.routes.len());
            let mut mqtt_routes = Vec::new();
            let mut seen_http: HashMap<(usize, String), usize> = HashMap::new();
            let mut seen_mqtt: HashMap<usize, usize> = HashMap::new();
            let mut ok = true;
            for (r, route) in group.routes.iter().enumerate() {
                let p = format!("group[{g}].routes[{r}]");
                let listener = listener_names.get(route.listener.as_str()).copied();
                if listener.is_none() {
                    self.push(
                        format!("{p}.listener"),
                        format!("unknown listener {:?}", route.listener),
                    );
                }
                let destination = destination_names.get(route.destination.as_str()).copied();
                if destination.is_none() {
                    self.push(
                        format!("{p}.destination"),
                        format!("unknown destination {:?}", route.destination),
                    );
                }
                // Protocol and adapter as written; an unsupported value is reported at its own
                // path, and the route is then not checked against it.
                let protocol = listener
                    .and_then(|i| raw.listener.get(i))
                    .map(|l| l.protocol.as_str());
                let adapter = destination
                    .and_then(|i| raw.destination.get(i))
                    .map(|d| d.adapter.as_str());
                let is_mqtt = match protocol {
                    Some("http") => Some(false),
                    Some("mqtt") => Some(true),
                    _ => None,
                };
                let path = match (is_mqtt, route.path.as_deref()) {
                    (Some(true), Some(_)) => {
                        self.push(
                            format!("{p}.path"),
                            format!(
                                "not allowed: listener {:?} is MQTT, and MQTT routes have no path",
                                route.listener
                            ),
                        );
                        None
                    }
                    (Some(true), None) => Some(None),
                    (Some(false), None) => {
                        self.push(
                            format!("{p}.path"),
                            format!(
                                "required: listener {:?} is HTTP, and HTTP routes match a path prefix",
                                route.listener
                            ),
                        );
                        None
                    }
                    (_, Some(text)) => match normalize_path_prefix(text) {
                        Ok(path) => Some(Some(path)),
                        Err(e) => {
                            self.push(format!("{p}.path"), format!("invalid path {text:?}: {e}"));
                            None
                        }
                    },
                    (None, None) => None,
                };
                let adapter_kind = adapter.and_then(AdapterKind::parse);
                // `azure-iot-hub` and `aws-iot-core` speak MQTT when their destination has a
                // `[destination.mqtt]`.
                let speaks_http = |kind: AdapterKind| {
                    kind.is_http()
                        && !(matches!(kind, AdapterKind::AzureIotHub | AdapterKind::AwsIotCore)
                            && destination
                                .and_then(|i| raw.destination.get(i))
                                .is_some_and(|d| d.mqtt.is_some()))
                };
                let adapter_matches = match (is_mqtt, adapter_kind) {
                    (Some(is_mqtt), Some(kind)) if is_mqtt == speaks_http(kind) => {
                        let (listener_kind, other) = if is_mqtt {
                            ("MQTT", kind.config_name().to_owned())
                        } else {
                            let other = match kind {
                                AdapterKind::Mqtts => "mqtts".to_owned(),
                                k => format!("{} over MQTT", k.config_name()),
                            };
                            ("HTTP", other)
                        };
                        self.push(
                            format!("{p}.destination"),
                            format!(
                                "listener {:?} is {listener_kind}; destination {:?} is {other}",
                                route.listener, route.destination
                            ),
                        );
                        false
                    }
                    (Some(_), Some(_)) => true,
                    _ => false,
                };
                let (Some(listener), Some(destination), Some(path), true) =
                    (listener, destination, path, adapter_matches)
                else {
                    ok = false;
                    continue;
                };
                let (Ok(listener_id), Ok(destination_id)) =
                    (u16::try_from(listener), u16::try_from(destination))
                else {
                    ok = false;
                    continue;
                };
                let Some(path) = path else {
                    // An MQTT route: one per listener and group.
                    if let Some(first) = seen_mqtt.get(&listener) {
                        self.push(
                            format!("{p}.listener"),
                            format!(
                                "duplicate MQTT route for listener {:?} (first at \
                                 group[{g}].routes[{first}]); a listener has at most one MQTT \
                                 route per group",
                                route.listener
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    seen_mqtt.insert(listener, r);
                    mqtt_routes.push(MqttRoute {
                        listener: ListenerId(listener_id),
                        destination: DestinationId(destination_id),
                    });
                    continue;
                };
                if let Some(first) = seen_http.get(&(listener, path.clone())) {
                    self.push(
                        format!("{p}.path"),
                        format!(
                            "duplicate route: same listener and path {path:?} as group[{g}].routes[{first}]"
                        ),
                    );
                    ok = false;
                    continue;
                }
                seen_http.insert((listener, path.clone()), r);
                http_routes.push(HttpRoute {
                    listener: ListenerId(listener_id),
                    path_prefix: path,
                    destination: DestinationId(destination_id),
                });
            }
            // Longest prefix first; the sort is stable, so equal lengths keep config order.
            http_routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
            let attach = self.attach(g, group.attach.as_deref());
            let signer = match &group.signing_secret {
                None => Some(None),
                Some(raw) => self
                    .secret(
                        &format!("group[{g}].signing_secret"),
                        raw,
                        RECOMMENDED_SECRET_LEN,
                    )
                    .map(|secret| Some(Arc::new(Signer::new(&secret)))),
            };
            match (u16::try_from(g), attach, signer) {
                (Ok(id), Some(attach), Some(signer)) if ok => out.push(GroupPlan {
                    id: GroupId(id),
                    name: group.name.clone(),
                    http_routes,
                    mqtt_routes,
                    attach,
                    signer,
                }),
                _ => {}
            }
        }
        (out.len() == raw.group.len()).then_some(out)
    }
}
