//! Templates for upstream client ids, usernames and topics: literal text with `{placeholder}`s
//! filled per device (e.g. `devices/{client_id}/{topic}`).
//!
//! Placeholders are checked when the config is compiled ([`Template::parse`] with the set a
//! field allows), so rendering cannot fail. Rendering writes into a caller-owned buffer. For
//! downlink, [`Template::topic_affixes`] gives the literal text around `{topic}` for one
//! device, so an upstream topic can be mapped back by stripping it.
//!
//! Placeholders today: `{client_id}` (the device's MQTT client id), `{topic}` (the device's
//! topic), `{ip}` (the device's source address), `{shard}` and `{conn}` (simgate's shard and
//! upstream-connection index, for aggregate client ids). SIM identity fields (`{imsi}`, …)
//! arrive with the identity issue. `{{` and `}}` are a literal brace.

use std::net::IpAddr;

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
}

impl Placeholder {
    fn from_name(name: &str) -> Option<Placeholder> {
        Some(match name {
            "client_id" => Placeholder::ClientId,
            "topic" => Placeholder::Topic,
            "ip" => Placeholder::Ip,
            "shard" => Placeholder::Shard,
            "conn" => Placeholder::Conn,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Placeholder),
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
                "unknown placeholder {{{n}}}; known: {{client_id}}, {{topic}}, {{ip}}, {{shard}}, {{conn}}"
            ),
            TemplateError::NotAllowedHere(n) => write!(f, "placeholder {{{n}}} is not allowed here"),
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
                    let p = Placeholder::from_name(&name)
                        .ok_or(TemplateError::UnknownPlaceholder(name))?;
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
                    segments.push(Segment::Var(p));
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
        self.segments.contains(&Segment::Var(p))
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
            Template::parse("{imsi}", ALL),
            Err(TemplateError::UnknownPlaceholder("imsi".into()))
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
}
