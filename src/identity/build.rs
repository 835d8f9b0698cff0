//! Building a [`SimTable`]: validating rows one by one, then sorting and checking uniqueness.
//!
//! The builder is fed [`SimRow`]s (text, from TOML or CSV) with the group already resolved to
//! an index by the caller (group names live in the layers above). Each row is validated on its
//! own ([`SimTableBuilder::push`] returns every problem of the row); uniqueness of IMSI and IP
//! is checked once, in [`SimTableBuilder::finish`], by sorting, which is what makes a million
//! rows cheap: no hash map of a million entries is ever built. Each row carries an `origin`
//! (a number chosen by the caller) so that a duplicate can name both places.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use super::digits::Packed;
use super::table::{Rec, SimTable, TagPair, IP_NONE, IP_V4, IP_V6, TAG_SET_MASK};
use super::{Imei, Imsi, Msisdn};

/// Longest `sim_id` and `name`, in bytes.
pub const MAX_TEXT_LEN: usize = 255;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 255;
/// Most distinct tag keys in one table.
pub const MAX_TAG_KEYS: usize = 1024;
/// Most tags on one SIM.
pub const MAX_TAGS_PER_SIM: usize = 64;

/// The tags of a row, in the form its source writes them.
#[derive(Debug, Clone, Copy)]
pub enum SimTags<'a> {
    /// None.
    None,
    /// The CSV form `k=v;k2=v2`.
    Csv(&'a str),
    /// Key/value pairs (a TOML table).
    Pairs(&'a [(&'a str, &'a str)]),
}

/// One SIM as written in the config. Absent values are `None`; an empty CSV cell is absent.
#[derive(Debug, Clone, Copy)]
pub struct SimRow<'a> {
    /// Required.
    pub imsi: Option<&'a str>,
    /// IPv4 or IPv6 address.
    pub ip: Option<&'a str>,
    /// IMEI.
    pub imei: Option<&'a str>,
    /// MSISDN.
    pub msisdn: Option<&'a str>,
    /// The operator's SIM id.
    pub sim_id: Option<&'a str>,
    /// Display name.
    pub name: Option<&'a str>,
    /// Group name; required. Resolved by the caller, not by the builder.
    pub group: Option<&'a str>,
    /// Tags.
    pub tags: SimTags<'a>,
}

/// A column of the SIM table, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimField {
    /// `imsi`.
    Imsi,
    /// `ip`.
    Ip,
    /// `imei`.
    Imei,
    /// `msisdn`.
    Msisdn,
    /// `sim_id`.
    SimId,
    /// `name`.
    Name,
    /// `group`.
    Group,
    /// `tags`.
    Tags,
}

impl SimField {
    /// The key / column name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Imsi => "imsi",
            Self::Ip => "ip",
            Self::Imei => "imei",
            Self::Msisdn => "msisdn",
            Self::SimId => "sim_id",
            Self::Name => "name",
            Self::Group => "group",
            Self::Tags => "tags",
        }
    }
}

/// A problem with one value of one row. `Display` is the message without the field name
/// (`"12ab" is not 14–15 digits`); the caller prefixes a path or the column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFieldError {
    /// Which value.
    pub field: SimField,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SimFieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Two rows with the same IMSI or the same IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// [`SimField::Imsi`] or [`SimField::Ip`].
    pub field: SimField,
    /// The shared value.
    pub value: String,
    /// Origin of the row pushed first.
    pub first: u32,
    /// Origin of the row pushed later.
    pub second: u32,
}

/// Why [`SimTableBuilder::finish`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// IMSIs or IPs that occur twice, in the order of the later row's origin.
    Duplicates(Vec<Duplicate>),
    /// The strings of all SIMs together exceed the 4 GiB the table addresses.
    TooLarge,
}

/// Quotes a config value for a message, cut to 64 characters.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// Accumulates validated rows; [`finish`](Self::finish) sorts them into a [`SimTable`].
pub struct SimTableBuilder {
    pending: Vec<(Imsi, u32, Rec)>,
    v6: Vec<u128>,
    arena: String,
    too_large: bool,
    tag_key_ids: HashMap<Box<str>, u16>,
    tag_keys: Vec<Box<str>>,
    tag_values: HashMap<Box<str>, u32>,
    tag_set_ids: HashMap<Box<[TagPair]>, u32>,
    tag_pairs: Vec<TagPair>,
    tag_sets: Vec<u32>,
    scratch: Vec<TagPair>,
}

impl Default for SimTableBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SimTableBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
            v6: Vec::new(),
            arena: String::new(),
            too_large: false,
            tag_key_ids: HashMap::new(),
            tag_keys: Vec::new(),
            tag_values: HashMap::new(),
            tag_set_ids: HashMap::new(),
            tag_pairs: Vec::new(),
            // Set 0 is the empty set: it starts and ends at 0.
            tag_sets: vec![0, 0],
            scratch: Vec::new(),
        }
    }

    /// Room for `additional` more rows.
    pub fn reserve(&mut self, additional: usize) {
        self.pending.reserve(additional);
    }

    /// Validates `row` and keeps it, in group `group` (resolved by the caller; `row.group` is
    /// not looked at). On error the row is not kept and every problem of the row is returned.
    pub fn push(
        &mut self,
        row: &SimRow<'_>,
        group: u16,
        origin: u32,
    ) -> Result<(), Vec<SimFieldError>> {
        let mut errors = Vec::new();
        let mut bad = |field: SimField, message: String| {
            errors.push(SimFieldError { field, message });
        };
        let imsi = match row.imsi {
            None => {
                bad(SimField::Imsi, "required".to_owned());
                None
            }
            Some(text) => {
                let imsi = Imsi::parse(text);
                if imsi.is_none() {
                    bad(
                        SimField::Imsi,
                        format!("{} is not 14–15 digits", quote(text)),
                    );
                }
                imsi
            }
        };
        let ip = row.ip.and_then(|text| match text.parse::<IpAddr>() {
            Err(_) => {
                bad(
                    SimField::Ip,
                    format!("{} is not an IPv4 or IPv6 address", quote(text)),
                );
                None
            }
            Ok(ip) => {
                let ip = ip.to_canonical();
                if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255; 4]) {
                    bad(
                        SimField::Ip,
                        format!("{ip} cannot be a device's source address"),
                    );
                    None
                } else {
                    Some(ip)
                }
            }
        });
        let imei = digits(
            row.imei,
            Imei::parse,
            |p| p.0,
            "is not 14–16 digits",
            SimField::Imei,
            &mut bad,
        );
        let msisdn = digits(
            row.msisdn,
            Msisdn::parse,
            |p| p.0,
            "is not 5–15 digits with an optional leading '+'",
            SimField::Msisdn,
            &mut bad,
        );
        let sim_id = text_value(row.sim_id, false, SimField::SimId, &mut bad);
        let name = text_value(row.name, true, SimField::Name, &mut bad);
        let tags_ok = self.collect_tags(row.tags, &mut bad);
        let (Some(imsi), Some(imei), Some(msisdn), Some(sim_id), Some(name), true) = (
            imsi,
            imei,
            msisdn,
            sim_id,
            name,
            tags_ok && errors.is_empty(),
        ) else {
            return Err(errors);
        };

        let tag_set = self.intern_tag_set();
        let strings = self.arena_push(&[sim_id, name]);
        let mut rec = Rec {
            imei,
            msisdn,
            strings,
            tags_ip: tag_set & TAG_SET_MASK,
            ip: 0,
            group,
            sim_id_len: sim_id.len() as u8,
            name_len: name.len() as u8,
        };
        match ip {
            None => rec.set_ip(IP_NONE, 0),
            Some(IpAddr::V4(v4)) => rec.set_ip(IP_V4, u32::from(v4)),
            Some(IpAddr::V6(v6)) => {
                rec.set_ip(IP_V6, self.v6.len() as u32);
                self.v6.push(u128::from(v6));
            }
        }
        self.pending.push((imsi, origin, rec));
        Ok(())
    }

    /// Parses and checks the row's tags into `self.scratch` (keys and values interned on the
    /// way: they repeat across SIMs, and a rejected row fails the whole table anyway).
    fn collect_tags(&mut self, tags: SimTags<'_>, bad: &mut impl FnMut(SimField, String)) -> bool {
        self.scratch.clear();
        let mut ok = true;
        let mut report = |result: Result<(), String>| {
            if let Err(message) = result {
                bad(SimField::Tags, message);
                ok = false;
            }
        };
        match tags {
            SimTags::None => {}
            SimTags::Pairs(pairs) => {
                for (key, value) in pairs {
                    report(self.add_tag(key, value));
                }
            }
            SimTags::Csv(text) => {
                for item in text.split(';') {
                    report(match item.split_once('=') {
                        Some((key, value)) => self.add_tag(key, value),
                        None if item.is_empty() => {
                            Err("empty tag (two ';' in a row, or one at an end)".to_owned())
                        }
                        None => Err(format!("tag {} is not key=value", quote(item))),
                    });
                }
            }
        }
        ok
    }

    /// Checks one tag and adds it to `self.scratch`.
    fn add_tag(&mut self, key: &str, value: &str) -> Result<(), String> {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_TAG_KEY_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !key_ok {
            return Err(format!(
                "tag key {}: use 1 to {MAX_TAG_KEY_LEN} characters from a-z, 0-9, '_' and '-'",
                quote(key)
            ));
        }
        if !is_header_safe(value, true) || value.contains(';') || value.len() > MAX_TAG_VALUE_LEN {
            return Err(format!(
                "tag {key:?} value {}: use 1 to {MAX_TAG_VALUE_LEN} printable ASCII characters \
                 without ';' (spaces inside only)",
                quote(value)
            ));
        }
        let key_id = match self.tag_key_ids.get(key) {
            Some(&id) => id,
            None if self.tag_keys.len() >= MAX_TAG_KEYS => {
                return Err(format!(
                    "tag key {key:?}: more than {MAX_TAG_KEYS} distinct tag keys in the SIM table"
                ))
            }
            None => {
                let id = self.tag_keys.len() as u16;
                self.tag_keys.push(key.into());
                self.tag_key_ids.insert(key.into(), id);
                id
            }
        };
        if self.scratch.iter().any(|p| p.key == key_id) {
            return Err(format!("duplicate tag key {key:?}"));
        }
        if self.scratch.len() >= MAX_TAGS_PER_SIM {
            return Err(format!("more than {MAX_TAGS_PER_SIM} tags"));
        }
        let value_at = self.intern_value(value);
        self.scratch.push(TagPair {
            value: value_at,
            key: key_id,
            value_len: value.len() as u16,
        });
        Ok(())
    }

    fn intern_value(&mut self, value: &str) -> u32 {
        if let Some(&at) = self.tag_values.get(value) {
            return at;
        }
        let at = self.arena_push(&[value]);
        self.tag_values.insert(value.into(), at);
        at
    }

    /// The id of the tag set in `self.scratch` (sorted by key id first), interning it.
    fn intern_tag_set(&mut self) -> u32 {
        if self.scratch.is_empty() {
            return 0;
        }
        self.scratch.sort_unstable_by_key(|p| p.key);
        if let Some(&id) = self.tag_set_ids.get(&self.scratch[..]) {
            return id;
        }
        let id = (self.tag_sets.len() - 1) as u32;
        if id > TAG_SET_MASK {
            self.too_large = true;
            return 0;
        }
        self.tag_pairs.extend_from_slice(&self.scratch);
        self.tag_sets.push(self.tag_pairs.len() as u32);
        self.tag_set_ids.insert(self.scratch[..].into(), id);
        id
    }

    /// Appends the strings to the arena; returns the offset of the first.
    fn arena_push(&mut self, parts: &[&str]) -> u32 {
        let at = self.arena.len();
        for part in parts {
            self.arena.push_str(part);
        }
        match u32::try_from(self.arena.len()) {
            Ok(_) => at as u32,
            Err(_) => {
                self.too_large = true;
                0
            }
        }
    }

    /// Sorts the rows by IMSI, indexes them by IP, and checks that IMSIs and IPs are unique.
    pub fn finish(self) -> Result<SimTable, BuildError> {
        let Self {
            mut pending,
            v6,
            mut arena,
            too_large,
            tag_keys,
            mut tag_pairs,
            mut tag_sets,
            ..
        } = self;
        if too_large {
            return Err(BuildError::TooLarge);
        }
        let mut duplicates = Vec::new();
        pending.sort_unstable_by_key(|&(imsi, origin, _)| (imsi, origin));
        for pair in pending.windows(2) {
            if pair[0].0 == pair[1].0 {
                duplicates.push(Duplicate {
                    field: SimField::Imsi,
                    value: pair[1].0.to_string(),
                    first: pair[0].1,
                    second: pair[1].1,
                });
            }
        }

        let mut v4_index: Vec<(u32, u32)> = Vec::new();
        let mut v6_index: Vec<(u128, u32)> = Vec::new();
        let mut imsis = Vec::with_capacity(pending.len());
        let mut recs = Vec::with_capacity(pending.len());
        for (index, &(imsi, _, rec)) in pending.iter().enumerate() {
            let index = index as u32;
            match rec.ip_kind() {
                IP_V4 => v4_index.push((rec.ip, index)),
                IP_V6 => v6_index.push((v6[rec.ip as usize], index)),
                _ => {}
            }
            imsis.push(imsi);
            recs.push(rec);
        }
        let origin = |index: u32| pending[index as usize].1;
        // Sort by address, then by origin so that `first` is the row pushed first.
        v4_index.sort_unstable_by_key(|&(addr, index)| (addr, origin(index)));
        for pair in v4_index.windows(2) {
            if pair[0].0 == pair[1].0 {
                duplicates.push(Duplicate {
                    field: SimField::Ip,
                    value: std::net::Ipv4Addr::from(pair[1].0).to_string(),
                    first: origin(pair[0].1),
                    second: origin(pair[1].1),
                });
            }
        }
        v6_index.sort_unstable_by_key(|&(addr, index)| (addr, origin(index)));
        for pair in v6_index.windows(2) {
            if pair[0].0 == pair[1].0 {
                duplicates.push(Duplicate {
                    field: SimField::Ip,
                    value: std::net::Ipv6Addr::from(pair[1].0).to_string(),
                    first: origin(pair[0].1),
                    second: origin(pair[1].1),
                });
            }
        }
        if !duplicates.is_empty() {
            duplicates.sort_by_key(|d| (d.second, d.field == SimField::Ip));
            return Err(BuildError::Duplicates(duplicates));
        }
        drop(pending);
        // A record's `ip` becomes the position of its address in the sorted IPv6 array.
        for (position, &(_, rec_index)) in v6_index.iter().enumerate() {
            recs[rec_index as usize].ip = position as u32;
        }
        let (v6_addrs, v6_recs): (Vec<u128>, Vec<u32>) = v6_index.into_iter().unzip();
        arena.shrink_to_fit();
        tag_pairs.shrink_to_fit();
        tag_sets.shrink_to_fit();
        v4_index.shrink_to_fit();
        Ok(SimTable {
            imsis,
            recs,
            v4: v4_index,
            v6_addrs,
            v6_recs,
            arena,
            tag_keys,
            tag_pairs,
            tag_sets,
        })
    }
}

/// Parses an optional digit string; `Some(NONE)` when absent, `None` (after reporting) when bad.
fn digits<T>(
    text: Option<&str>,
    parse: fn(&str) -> Option<T>,
    packed: fn(T) -> Packed,
    problem: &str,
    field: SimField,
    bad: &mut impl FnMut(SimField, String),
) -> Option<Packed> {
    let Some(text) = text else {
        return Some(Packed::NONE);
    };
    match parse(text) {
        Some(value) => Some(packed(value)),
        None => {
            bad(field, format!("{} {problem}", quote(text)));
            None
        }
    }
}

/// Checks `sim_id` (no spaces) or `name` (spaces inside): `Some("")` when absent.
fn text_value<'a>(
    text: Option<&'a str>,
    spaces: bool,
    field: SimField,
    bad: &mut impl FnMut(SimField, String),
) -> Option<&'a str> {
    let Some(text) = text else {
        return Some("");
    };
    if text.len() > MAX_TEXT_LEN || !is_header_safe(text, spaces) {
        let what = if spaces {
            "printable ASCII characters (spaces inside only)"
        } else {
            "printable ASCII characters without spaces"
        };
        bad(
            field,
            format!("{}: use 1 to {MAX_TEXT_LEN} {what}", quote(text)),
        );
        return None;
    }
    Some(text)
}

/// Non-empty visible ASCII (and inner spaces when `spaces`): fit for an HTTP header value or
/// an MQTT user property as it is.
fn is_header_safe(text: &str, spaces: bool) -> bool {
    !text.is_empty()
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() || (spaces && b == b' '))
}
