//! Templates for upstream client ids, usernames and topics: literal text with `{placeholder}`s
//! filled per device (e.g. `devices/{client_id}/{topic}`).
//!
//! Placeholders are checked when the config is compiled ([`Template::parse`] with the set a
//! field allows), so rendering cannot fail. Rendering writes into a caller-owned buffer. For
//! downlink, [`Template::topic_affixes`] gives the literal text around `{topic}` for one
//! device, so an upstream topic can be mapped back by stripping it; [`TopicMap`] is that
//! mapping for one device session, the one set of topic rules both MQTT modes use (checked
//! renderings up, affixes stripped down).
//!
//! Placeholders today: `{client_id}` (the device's MQTT client id), `{topic}` (the device's
//! topic), `{ip}` (the device's source address), `{shard}` and `{conn}` (simgate's shard and
//! upstream-connection index, for aggregate client ids). SIM identity fields (`{imsi}`, …)
//! arrive with the identity issue. `{{` and `}}` are a literal brace.

use std::net::IpAddr;

use bytes::Bytes;

use crate::identity::SimRef;
use crate::proto::mqtt::{self, ProtocolVersion};

/// A placeholder a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `{client_id}`
    ClientId,
    /// `{topic}`
    Topic,
    /// `{ip}`
    Ip,
    /// `{shard}`
    Shard,
    /// `{conn}`
    Conn,
    /// `{imsi}`: the device's SIM (every SIM has one).
    Imsi,
    /// `{imei}`
    Imei,
    /// `{msisdn}`
    Msisdn,
    /// `{sim_id}`
    SimId,
    /// `{name}`: the SIM's name.
    Name,
    /// `{tag.KEY}`: one of the SIM's tags (the key is part of the template).
    Tag,
}

/// The placeholders filled from the device's SIM.
pub const SIM_PLACEHOLDERS: &[Placeholder] = &[
    Placeholder::Imsi,
    Placeholder::Imei,
    Placeholder::Msisdn,
    Placeholder::SimId,
    Placeholder::Name,
    Placeholder::Tag,
];

impl Placeholder {
    fn from_name(name: &str) -> Option<Placeholder> {
        Some(match name {
            "client_id" => Placeholder::ClientId,
            "topic" => Placeholder::Topic,
            "ip" => Placeholder::Ip,
            "shard" => Placeholder::Shard,
            "conn" => Placeholder::Conn,
            "imsi" => Placeholder::Imsi,
            "imei" => Placeholder::Imei,
            "msisdn" => Placeholder::Msisdn,
            "sim_id" => Placeholder::SimId,
            "name" => Placeholder::Name,
            _ if name.starts_with("tag.") => Placeholder::Tag,
            _ => return None,
        })
    }

    /// Name as written in a template, without braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::ClientId => "client_id",
            Placeholder::Topic => "topic",
            Placeholder::Ip => "ip",
            Placeholder::Shard => "shard",
            Placeholder::Conn => "conn",
            Placeholder::Imsi => "imsi",
            Placeholder::Imei => "imei",
            Placeholder::Msisdn => "msisdn",
            Placeholder::SimId => "sim_id",
            Placeholder::Name => "name",
            Placeholder::Tag => "tag.KEY",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Placeholder),
    /// `{tag.KEY}`, with its key.
    Tag(String),
}

/// Appends `text` percent-encoded: every byte but the RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) as `%XX` (upper-case hex), so the result is one URL path segment or
/// query value.
pub fn percent_encode(text: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

/// Why a template was rejected (reported by config validation with the field's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `{name}` is not a known placeholder.
    UnknownPlaceholder(String),
    /// The placeholder exists but this field does not allow it.
    NotAllowedHere(&'static str),
    /// `{` without a matching `}`, or a lone `}`.
    UnbalancedBrace,
    /// `{topic}` appears more than once (downlink mapping needs it once).
    RepeatedTopic,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::UnknownPlaceholder(n) => write!(
                f,
                "unknown placeholder {{{n}}}; known: {{client_id}}, {{topic}}, {{ip}}, {{shard}}, \
                 {{conn}}, {{imsi}}, {{imei}}, {{msisdn}}, {{sim_id}}, {{name}}, {{tag.KEY}}"
            ),
            TemplateError::NotAllowedHere(n) => {
                write!(f, "placeholder {{{n}}} is not allowed here")
            }
            TemplateError::UnbalancedBrace => {
                f.write_str("unbalanced brace (write {{ or }} for a literal brace)")
            }
            TemplateError::RepeatedTopic => f.write_str("{topic} may appear at most once"),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Values for one rendering.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// The device's MQTT client id.
    pub client_id: &'a [u8],
    /// The device's topic (empty where no topic applies).
    pub topic: &'a [u8],
    /// The device's source address.
    pub ip: IpAddr,
    /// Shard index.
    pub shard: usize,
    /// Upstream connection index within the shard.
    pub conn: usize,
    /// The device's SIM (`None` for a device without a SIM entry, and where no single device
    /// applies); SIM placeholders render empty without it.
    pub sim: Option<SimRef<'a>>,
}

impl Template {
    /// Parse `text`, allowing only the placeholders in `allowed`.
    pub fn parse(text: &str, allowed: &[Placeholder]) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        let mut topics = 0;
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::UnbalancedBrace),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(TemplateError::UnbalancedBrace),
                            Some(ch) => name.push(ch),
                        }
                    }
                    let Some(p) = Placeholder::from_name(&name) else {
                        return Err(TemplateError::UnknownPlaceholder(name));
                    };
                    if !allowed.contains(&p) {
                        return Err(TemplateError::NotAllowedHere(p.name()));
                    }
                    if p == Placeholder::Topic {
                        topics += 1;
                        if topics > 1 {
                            return Err(TemplateError::RepeatedTopic);
                        }
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    match (p, name.strip_prefix("tag.")) {
                        (Placeholder::Tag, Some(key)) => {
                            let valid = !key.is_empty()
                                && key.len() <= 64
                                && key.bytes().all(|b| {
                                    b.is_ascii_lowercase()
                                        || b.is_ascii_digit()
                                        || b == b'_'
                                        || b == b'-'
                                });
                            if !valid {
                                return Err(TemplateError::UnknownPlaceholder(name));
                            }
                            segments.push(Segment::Tag(key.to_owned()));
                        }
                        _ => segments.push(Segment::Var(p)),
                    }
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            text: text.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if the template uses `p`.
    pub fn uses(&self, p: Placeholder) -> bool {
        match p {
            Placeholder::Tag => self.segments.iter().any(|s| matches!(s, Segment::Tag(_))),
            p => self.segments.contains(&Segment::Var(p)),
        }
    }

    /// True if the template uses any SIM placeholder.
    pub fn uses_sim(&self) -> bool {
        SIM_PLACEHOLDERS.iter().any(|p| self.uses(*p))
    }

    /// The first SIM field this template uses that `sim` has no value for, as written in the
    /// template (`imei`, `tag.site`, …); `None` if `sim` has them all.
    pub fn missing_sim_field(&self, sim: &SimRef<'_>) -> Option<String> {
        self.segments.iter().find_map(|s| match s {
            Segment::Var(Placeholder::Imei) if sim.imei().is_none() => Some("imei".to_owned()),
            Segment::Var(Placeholder::Msisdn) if sim.msisdn().is_none() => {
                Some("msisdn".to_owned())
            }
            Segment::Var(Placeholder::SimId) if sim.sim_id().is_none() => Some("sim_id".to_owned()),
            Segment::Var(Placeholder::Name) if sim.name().is_none() => Some("name".to_owned()),
            Segment::Tag(key) if sim.tag(key).is_none() => Some(format!("tag.{key}")),
            _ => None,
        })
    }

    /// Append the rendering to `out`.
    pub fn render_into(&self, vars: &TemplateVars<'_>, out: &mut Vec<u8>) {
        use std::io::Write;
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.extend_from_slice(l.as_bytes()),
                Segment::Var(Placeholder::ClientId) => out.extend_from_slice(vars.client_id),
                Segment::Var(Placeholder::Topic) => out.extend_from_slice(vars.topic),
                Segment::Var(Placeholder::Ip) => {
                    let _ = write!(out, "{}", vars.ip);
                }
                Segment::Var(Placeholder::Shard) => {
                    let _ = write!(out, "{}", vars.shard);
                }
                Segment::Var(Placeholder::Conn) => {
                    let _ = write!(out, "{}", vars.conn);
                }
                Segment::Var(Placeholder::Imsi) => {
                    if let Some(sim) = &vars.sim {
                        out.extend_from_slice(sim.imsi().digits().as_str().as_bytes());
                    }
                }
                Segment::Var(Placeholder::Imei) => {
                    if let Some(imei) = vars.sim.as_ref().and_then(|s| s.imei()) {
                        out.extend_from_slice(imei.digits().as_str().as_bytes());
                    }
                }
                Segment::Var(Placeholder::Msisdn) => {
                    if let Some(m) = vars.sim.as_ref().and_then(|s| s.msisdn()) {
                        out.extend_from_slice(m.digits().as_str().as_bytes());
                    }
                }
                Segment::Var(Placeholder::SimId) => {
                    if let Some(v) = vars.sim.as_ref().and_then(|s| s.sim_id()) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Segment::Var(Placeholder::Name) => {
                    if let Some(v) = vars.sim.as_ref().and_then(|s| s.name()) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Segment::Var(Placeholder::Tag) => {}
                Segment::Tag(key) => {
                    if let Some(v) = vars.sim.as_ref().and_then(|s| s.tag(key)) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
    }

    /// The text of a template without placeholders (`{{`/`}}` unescaped), to use without
    /// rendering; `None` if it has placeholders.
    pub fn fixed_text(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// Append the rendering for use inside a URL path: the literal text as written, every
    /// placeholder's value percent-encoded except the RFC 3986 unreserved characters
    /// (`A-Z a-z 0-9 - . _ ~`), so a SIM's name with a space or a slash stays one path segment.
    pub fn render_path_into(&self, vars: &TemplateVars<'_>, out: &mut String) {
        let mut value = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                other => {
                    value.clear();
                    Template {
                        text: String::new(),
                        segments: vec![other.clone()],
                    }
                    .render_into(vars, &mut value);
                    percent_encode(&value, out);
                }
            }
        }
    }

    /// The rendering as bytes.
    pub fn render(&self, vars: &TemplateVars<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + vars.topic.len() + 16);
        self.render_into(vars, &mut out);
        out
    }

    /// For a template containing `{topic}`: the rendered text before and after it for this
    /// device (`vars.topic` is ignored). `None` if the template has no `{topic}`.
    pub fn topic_affixes(&self, vars: &TemplateVars<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
        let at = self
            .segments
            .iter()
            .position(|s| *s == Segment::Var(Placeholder::Topic))?;
        let render = |segs: &[Segment]| {
            let t = Template {
                text: String::new(),
                segments: segs.to_vec(),
            };
            t.render(vars)
        };
        Some((
            render(&self.segments[..at]),
            render(&self.segments[at + 1..]),
        ))
    }
}

/// Why a device topic or filter has no valid upstream form under its [`TopicMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMapError {
    /// The rendered topic name is not a valid MQTT topic name (empty, a wildcard from the
    /// template's other parts, or longer than 65,535 bytes): MQTT 5 reason 0x90.
    TopicNameInvalid,
    /// The rendered filter is not a valid MQTT topic filter (e.g. a device filter ending in `#`
    /// with template text after `{topic}`, which would put `#` mid-filter): MQTT 5 reason 0x8F.
    TopicFilterInvalid,
}

/// The `topic` template of a destination resolved for one device: how the device's topics,
/// filters and response topics map to upstream ones and back. One set of rules for both MQTT
/// modes: every rendered topic and filter is checked before it may go upstream.
///
/// A template with `{topic}` wraps the device's topic in the rendered text around it
/// (`devices/{client_id}/{topic}` with client `d1`: `t` ↔ `devices/d1/t`). A template without
/// `{topic}` is *fixed*: every uplink topic becomes its rendering, filters pass unchanged (what a
/// flow may subscribe with them is the flow's decision), and downlink topics cannot be mapped
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    /// The rendered text around `{topic}`, prefix then suffix; or the whole rendering of a
    /// fixed template. One buffer: a map lives as long as its device session.
    text: Bytes,
    /// Length of the prefix in `text`.
    split: u32,
    /// The template has no `{topic}`.
    fixed: bool,
}

impl TopicMap {
    /// Resolve `template` for the device described by `vars` (`vars.topic` is ignored).
    pub fn new(template: &Template, vars: &TemplateVars<'_>) -> TopicMap {
        match template.topic_affixes(vars) {
            Some((mut prefix, suffix)) => {
                let split = u32::try_from(prefix.len()).unwrap_or(u32::MAX);
                prefix.extend_from_slice(&suffix);
                TopicMap {
                    text: Bytes::from(prefix),
                    split,
                    fixed: false,
                }
            }
            None => TopicMap {
                text: Bytes::from(template.render(&TemplateVars {
                    topic: b"",
                    ..*vars
                })),
                split: 0,
                fixed: true,
            },
        }
    }

    /// True when the template has `{topic}` (topics and filters map both ways).
    pub fn has_topic(&self) -> bool {
        !self.fixed
    }

    /// The rendered text before and after `{topic}` (both empty for a fixed template).
    pub fn affixes(&self) -> (&[u8], &[u8]) {
        if self.fixed {
            return (&[], &[]);
        }
        let split = (self.split as usize).min(self.text.len());
        self.text.split_at(split)
    }

    fn is_identity(&self) -> bool {
        !self.fixed && self.text.is_empty()
    }

    fn wrap(&self, head: &[u8], inner: &[u8]) -> Bytes {
        let (prefix, suffix) = self.affixes();
        let mut out = Vec::with_capacity(head.len() + self.text.len() + inner.len());
        out.extend_from_slice(head);
        out.extend_from_slice(prefix);
        out.extend_from_slice(inner);
        out.extend_from_slice(suffix);
        Bytes::from(out)
    }

    /// The upstream topic name for a device topic name, checked.
    pub fn uplink_topic(&self, topic: &Bytes) -> Result<Bytes, TopicMapError> {
        let out = if self.fixed {
            self.text.clone()
        } else if self.is_identity() {
            topic.clone()
        } else {
            self.wrap(b"", topic)
        };
        if out.len() > usize::from(u16::MAX) || mqtt::validate_topic_name(&out, false).is_err() {
            return Err(TopicMapError::TopicNameInvalid);
        }
        Ok(out)
    }

    /// The upstream topic filter for a device topic filter, checked as `version` (the upstream
    /// protocol) reads it. A 5.0 shared subscription keeps its `$share/{group}/` in front and has
    /// the filter after it rewritten.
    pub fn uplink_filter(
        &self,
        filter: &Bytes,
        version: ProtocolVersion,
    ) -> Result<Bytes, TopicMapError> {
        let out = if self.fixed || self.is_identity() {
            filter.clone()
        } else {
            let head_len = match filter.strip_prefix(b"$share/") {
                Some(rest) if version == ProtocolVersion::V5 => rest
                    .iter()
                    .position(|&b| b == b'/')
                    .map_or(0, |slash| b"$share/".len() + slash + 1),
                _ => 0,
            };
            self.wrap(&filter[..head_len], &filter[head_len..])
        };
        if out.len() > usize::from(u16::MAX) || mqtt::validate_topic_filter(&out, version).is_err()
        {
            return Err(TopicMapError::TopicFilterInvalid);
        }
        Ok(out)
    }

    /// The device topic for an upstream topic: the text around `{topic}` stripped (a zero-copy
    /// slice). `None` when the topic does not carry this device's affixes, when nothing would
    /// be left, or for a fixed template — the flow decides what that means (session mode: the
    /// broker addresses this device only, so the topic passes as it is; aggregate mode: not
    /// this device's message).
    pub fn downlink_topic(&self, topic: &Bytes) -> Option<Bytes> {
        if self.fixed {
            return None;
        }
        let (prefix, suffix) = self.affixes();
        let (pre, suf) = (prefix.len(), suffix.len());
        if topic.len() > pre + suf && topic.starts_with(prefix) && topic.ends_with(suffix) {
            return Some(topic.slice(pre..topic.len() - suf));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Placeholder] = &[
        Placeholder::ClientId,
        Placeholder::Topic,
        Placeholder::Ip,
        Placeholder::Shard,
        Placeholder::Conn,
    ];

    fn vars<'a>(client_id: &'a [u8], topic: &'a [u8]) -> TemplateVars<'a> {
        TemplateVars {
            client_id,
            topic,
            ip: "10.0.0.17".parse().expect("ip"),
            shard: 1,
            conn: 0,
            sim: None,
        }
    }

    #[test]
    fn renders_placeholders_and_escaped_braces() {
        let t = Template::parse("devices/{client_id}/{topic}@{ip}#{shard}-{conn}{{x}}", ALL)
            .expect("valid");
        assert_eq!(
            t.render(&vars(b"s17", b"temp/1")),
            b"devices/s17/temp/1@10.0.0.17#1-0{x}".to_vec()
        );
    }

    #[test]
    fn rejects_unknown_disallowed_unbalanced_and_repeated() {
        assert_eq!(
            Template::parse("{iccid}", ALL),
            Err(TemplateError::UnknownPlaceholder("iccid".into()))
        );
        assert_eq!(
            Template::parse("{topic}", &[Placeholder::ClientId]),
            Err(TemplateError::NotAllowedHere("topic"))
        );
        assert_eq!(
            Template::parse("a{b", ALL),
            Err(TemplateError::UnbalancedBrace)
        );
        assert_eq!(
            Template::parse("a}b", ALL),
            Err(TemplateError::UnbalancedBrace)
        );
        assert_eq!(
            Template::parse("{topic}/{topic}", ALL),
            Err(TemplateError::RepeatedTopic)
        );
    }

    #[test]
    fn topic_affixes_map_downlink_topics_back() {
        let t = Template::parse("devices/{client_id}/{topic}/up", ALL).expect("valid");
        let (pre, post) = t.topic_affixes(&vars(b"s17", b"")).expect("has topic");
        assert_eq!(pre, b"devices/s17/".to_vec());
        assert_eq!(post, b"/up".to_vec());
        assert!(Template::parse("fixed", ALL)
            .expect("valid")
            .topic_affixes(&vars(b"a", b""))
            .is_none());
    }

    fn topics(template: &str) -> TopicMap {
        let t = Template::parse(template, ALL).expect("template");
        TopicMap::new(&t, &vars(b"d1", b""))
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn topic_map_rewrites_topics_filters_and_maps_back() {
        let map = topics("devices/{client_id}/{topic}");
        assert!(map.has_topic());
        let up = map.uplink_topic(&b(b"temp")).expect("valid");
        assert_eq!(&up[..], b"devices/d1/temp");
        assert_eq!(map.downlink_topic(&up).as_deref(), Some(&b"temp"[..]));
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            map.uplink_filter(&b(b"cmd/#"), v5).as_deref(),
            Ok(&b"devices/d1/cmd/#"[..])
        );
        assert_eq!(
            map.uplink_filter(&b(b"$share/g/cmd/+"), v5).as_deref(),
            Ok(&b"$share/g/devices/d1/cmd/+"[..])
        );
        // Not this device's, or only the prefix itself: no device topic.
        assert_eq!(map.downlink_topic(&b(b"other/x")), None);
        assert_eq!(map.downlink_topic(&b(b"devices/d1/")), None);
    }

    #[test]
    fn topic_map_identity_and_fixed_templates() {
        let identity = topics("{topic}");
        let t = b(b"a/b");
        assert_eq!(identity.uplink_topic(&t), Ok(t.clone()));
        assert_eq!(identity.downlink_topic(&t), Some(t.clone()));
        let fixed = topics("telemetry/{client_id}");
        assert!(!fixed.has_topic());
        assert_eq!(fixed.affixes(), (&b""[..], &b""[..]));
        assert_eq!(fixed.uplink_topic(&t).as_deref(), Ok(&b"telemetry/d1"[..]));
        assert_eq!(
            fixed.uplink_filter(&t, ProtocolVersion::V311),
            Ok(t.clone())
        );
        assert_eq!(fixed.downlink_topic(&t), None);
    }

    #[test]
    fn rendered_topics_and_filters_are_checked() {
        let map = topics("devices/{client_id}/{topic}/up");
        let v3 = ProtocolVersion::V311;
        assert_eq!(map.affixes(), (&b"devices/d1/"[..], &b"/up"[..]));
        assert_eq!(
            map.uplink_topic(&b(b"a/+")),
            Err(TopicMapError::TopicNameInvalid)
        );
        // `#` would end up mid-filter.
        assert_eq!(
            map.uplink_filter(&b(b"cmd/#"), v3),
            Err(TopicMapError::TopicFilterInvalid)
        );
        assert_eq!(
            map.uplink_filter(&b(b"cmd/+"), v3).as_deref(),
            Ok(&b"devices/d1/cmd/+/up"[..])
        );
        let long = Bytes::from(vec![b'x'; 65_530]);
        assert_eq!(
            map.uplink_topic(&long),
            Err(TopicMapError::TopicNameInvalid)
        );
        // A wildcard from the template's own text makes every rendering invalid.
        let wild = topics("a/{client_id}+/{topic}");
        assert_eq!(
            wild.uplink_topic(&b(b"t")),
            Err(TopicMapError::TopicNameInvalid)
        );
    }

    #[test]
    fn paths_percent_encode_placeholder_values_and_fixed_templates_need_no_rendering() {
        use crate::identity::{SimRow, SimTableBuilder, SimTags};
        let mut b = SimTableBuilder::new();
        let row = SimRow {
            imsi: Some("001010123456789"),
            ip: None,
            imei: None,
            msisdn: None,
            sim_id: None,
            name: Some("meter 7/a"),
            group: Some("g"),
            tags: SimTags::None,
        };
        b.push(&row, 0, 1).expect("row");
        let table = b.finish().expect("table");
        let t = Template::parse("/d/{imsi}/{name}", SIM_PLACEHOLDERS).expect("template");
        assert_eq!(t.fixed_text(), None);
        let mut out = String::new();
        let vars = TemplateVars {
            sim: table.get(0),
            ..vars(b"", b"")
        };
        t.render_path_into(&vars, &mut out);
        assert_eq!(out, "/d/001010123456789/meter%207%2Fa");
        let fixed = Template::parse("/v1/{{x}}", SIM_PLACEHOLDERS).expect("template");
        assert_eq!(fixed.fixed_text(), Some("/v1/{x}"));
        assert_eq!(
            Template::parse("", SIM_PLACEHOLDERS).unwrap().fixed_text(),
            Some("")
        );
    }
}
