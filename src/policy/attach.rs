//! Which SIM identity fields a group attaches to what its devices send upstream
//! (`[[group]] attach = ["imsi", "imei", "msisdn", "sim_id", "name", "tags"]`, default
//! `["imsi"]`), and their names in each upstream form: HTTP headers `X-Simgate-Imsi`,
//! `X-Simgate-Imei`, `X-Simgate-Msisdn`, `X-Simgate-Sim-Id`, `X-Simgate-Name`,
//! `X-Simgate-Tag-{key}`; MQTT 5 user properties `imsi`, `imei`, `msisdn`, `sim_id`, `name`,
//! `tag.{key}`.
//!
//! Pure: a SIM and a set in, `(name, value)` pairs out. What this module does not do: remove
//! what a device sent under those names (`proto::http1` drops every `X-Simgate-*` header a
//! device sends) or decide which destination gets them (the flows do).

use crate::identity::SimRef;

/// A set of identity fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach(u8);

/// One identity field a group may attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachField {
    /// The IMSI.
    Imsi,
    /// The IMEI.
    Imei,
    /// The MSISDN.
    Msisdn,
    /// The operator's SIM id.
    SimId,
    /// The SIM's name.
    Name,
    /// Every tag, one field each.
    Tags,
}

impl AttachField {
    /// Every field, in the order they are attached.
    pub const ALL: [AttachField; 6] = [
        AttachField::Imsi,
        AttachField::Imei,
        AttachField::Msisdn,
        AttachField::SimId,
        AttachField::Name,
        AttachField::Tags,
    ];

    /// The name in `attach = [...]`.
    pub fn config_name(self) -> &'static str {
        match self {
            AttachField::Imsi => "imsi",
            AttachField::Imei => "imei",
            AttachField::Msisdn => "msisdn",
            AttachField::SimId => "sim_id",
            AttachField::Name => "name",
            AttachField::Tags => "tags",
        }
    }

    /// The field named `name` in `attach = [...]`.
    pub fn parse(name: &str) -> Option<AttachField> {
        AttachField::ALL
            .into_iter()
            .find(|f| f.config_name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl Default for Attach {
    /// `["imsi"]`.
    fn default() -> Self {
        Attach::NONE.with(AttachField::Imsi)
    }
}

impl Attach {
    /// No field.
    pub const NONE: Attach = Attach(0);

    /// This set and `field`.
    #[must_use]
    pub fn with(self, field: AttachField) -> Attach {
        Attach(self.0 | field.bit())
    }

    /// True if `field` is in the set.
    pub fn contains(self, field: AttachField) -> bool {
        self.0 & field.bit() != 0
    }

    /// True if no field is attached.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Call `f(field, tag key, value)` for every attached field the SIM has (`tag key` is
    /// `Some` for tags), in [`AttachField::ALL`] order. Absent fields are skipped.
    pub fn for_each(self, sim: &SimRef<'_>, mut f: impl FnMut(AttachField, Option<&str>, &str)) {
        for field in AttachField::ALL {
            if !self.contains(field) {
                continue;
            }
            match field {
                AttachField::Imsi => f(field, None, sim.imsi().digits().as_str()),
                AttachField::Imei => {
                    if let Some(imei) = sim.imei() {
                        f(field, None, imei.digits().as_str());
                    }
                }
                AttachField::Msisdn => {
                    if let Some(msisdn) = sim.msisdn() {
                        f(field, None, msisdn.digits().as_str());
                    }
                }
                AttachField::SimId => {
                    if let Some(v) = sim.sim_id() {
                        f(field, None, v);
                    }
                }
                AttachField::Name => {
                    if let Some(v) = sim.name() {
                        f(field, None, v);
                    }
                }
                AttachField::Tags => {
                    for (key, value) in sim.tags() {
                        f(field, Some(key), value);
                    }
                }
            }
        }
    }

    /// The attached fields as HTTP headers (`X-Simgate-…`), for `sim`.
    pub fn headers(self, sim: &SimRef<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.for_each(sim, |field, tag, value| {
            let name = match (field, tag) {
                (AttachField::Tags, Some(key)) => format!("X-Simgate-Tag-{key}"),
                (AttachField::Imsi, _) => "X-Simgate-Imsi".to_owned(),
                (AttachField::Imei, _) => "X-Simgate-Imei".to_owned(),
                (AttachField::Msisdn, _) => "X-Simgate-Msisdn".to_owned(),
                (AttachField::SimId, _) => "X-Simgate-Sim-Id".to_owned(),
                (AttachField::Name, _) => "X-Simgate-Name".to_owned(),
                (AttachField::Tags, None) => return,
            };
            out.push((name, value.to_owned()));
        });
        out
    }

    /// True if `name` is a user property this set attaches (`imsi`, …; any `tag.…` when tags
    /// are attached): a device's own property of that name must not reach the upstream, or it
    /// could claim an identity — also when the device has no SIM to attach.
    pub fn claims_user_property(self, name: &[u8]) -> bool {
        AttachField::ALL.into_iter().any(|field| {
            self.contains(field)
                && match field {
                    AttachField::Tags => name.starts_with(b"tag."),
                    other => name == other.config_name().as_bytes(),
                }
        })
    }

    /// The attached fields as MQTT 5 user properties (`imsi`, …, `tag.{key}`), for `sim`.
    pub fn user_properties(self, sim: &SimRef<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.for_each(sim, |field, tag, value| {
            let name = match (field, tag) {
                (AttachField::Tags, Some(key)) => format!("tag.{key}"),
                (AttachField::Tags, None) => return,
                (other, _) => other.config_name().to_owned(),
            };
            out.push((name, value.to_owned()));
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_set_operations() {
        assert_eq!(AttachField::parse("sim_id"), Some(AttachField::SimId));
        assert_eq!(AttachField::parse("iccid"), None);
        let set = Attach::NONE.with(AttachField::Name).with(AttachField::Tags);
        assert!(set.contains(AttachField::Tags) && !set.contains(AttachField::Imsi));
        assert!(Attach::default().contains(AttachField::Imsi));
        assert!(Attach::NONE.is_empty());
        assert!(set.claims_user_property(b"name") && set.claims_user_property(b"tag.site"));
        assert!(!set.claims_user_property(b"imsi") && !set.claims_user_property(b"tags"));
    }

    #[test]
    fn headers_and_user_properties_carry_what_the_sim_has() {
        use crate::identity::{SimRow, SimTableBuilder, SimTags};
        let mut b = SimTableBuilder::new();
        let tags = [("site", "kyoto"), ("tier", "gold")];
        let row = SimRow {
            imsi: Some("001010123456789"),
            ip: Some("10.0.0.7"),
            imei: None,
            msisdn: Some("+819012345678"),
            sim_id: Some("sim-7"),
            name: Some("meter 7"),
            group: Some("g"),
            tags: SimTags::Pairs(&tags),
        };
        b.push(&row, 0, 1).expect("valid row");
        let table = b.finish().expect("table");
        let sim = table.get(0).expect("sim");
        let all = AttachField::ALL
            .into_iter()
            .fold(Attach::NONE, Attach::with);
        let h = all.headers(&sim);
        let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        // No IMEI on this SIM: no header for it.
        assert_eq!(
            pairs,
            [
                ("X-Simgate-Imsi", "001010123456789"),
                ("X-Simgate-Msisdn", "+819012345678"),
                ("X-Simgate-Sim-Id", "sim-7"),
                ("X-Simgate-Name", "meter 7"),
                ("X-Simgate-Tag-site", "kyoto"),
                ("X-Simgate-Tag-tier", "gold"),
            ]
        );
        let p = Attach::default().user_properties(&sim);
        assert_eq!(p, [("imsi".to_owned(), "001010123456789".to_owned())]);
        let t = Attach::NONE.with(AttachField::Tags).user_properties(&sim);
        assert_eq!(t[0], ("tag.site".to_owned(), "kyoto".to_owned()));
    }
}
