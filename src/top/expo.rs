//! A parser for the subset of the Prometheus text exposition format (version 0.0.4) that
//! `simgate top` reads from `/metrics`: sample lines `name{label="value",…} value [timestamp]`.
//!
//! What it does: skips blank lines and every `#` line (`# HELP`, `# TYPE`, comments), reads the
//! metric name, the labels (with the format's three escapes `\\`, `\"`, `\n` in values), the value
//! (`+Inf`, `-Inf` and `NaN` included) and ignores an optional timestamp. Lookups sum over series,
//! filter on one label or group by one.
//!
//! What it does not do: check the `# TYPE` lines or that a family's samples are contiguous (that
//! is `promtool check metrics`, which the test suite runs on simgate's output); the OpenMetrics
//! format (`# EOF`, exemplars); histograms as such (their `_bucket`/`_sum`/`_count` lines come
//! out as plain series). Sans-IO: it takes a `&str`.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name, e.g. `simgate_http_requests_total`.
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The sample value.
    pub value: f64,
}

impl Series {
    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not a sample the parser understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Every sample of one `/metrics` answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    series: Vec<Series>,
}

impl Exposition {
    /// Parse a whole exposition; the first bad line is an error.
    pub fn parse(text: &str) -> Result<Exposition, ParseError> {
        let mut series = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            series.push(parse_line(line).map_err(|reason| ParseError {
                line: n + 1,
                reason,
            })?);
        }
        Ok(Exposition { series })
    }

    /// All samples, in the order read.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Whether any sample of metric `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.series.iter().any(|s| s.name == name)
    }

    /// The sum of every series of metric `name` (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// The sum of the series of `name` whose label `label` equals `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.series
            .iter()
            .filter(|s| s.name == name && s.label(label) == Some(value))
            .map(|s| s.value)
            .sum()
    }

    /// The series of `name` summed by the values of `labels` (series lacking one of them count
    /// under an empty value), sorted by those values.
    pub fn group_by(&self, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for s in self.series.iter().filter(|s| s.name == name) {
            let key = labels
                .iter()
                .map(|l| s.label(l).unwrap_or_default().to_owned())
                .collect();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }
}

fn parse_line(line: &str) -> Result<Series, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value");
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Series {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels after the `{`; returns what follows the closing `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("bad label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label");
        }
    }
}

fn parse_value(s: &str) -> Result<f64, &'static str> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            Err("bad value")
        }
        _ => s.parse().map_err(|_| "bad value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP simgate_http_requests_total Device requests received
# TYPE simgate_http_requests_total counter
simgate_http_requests_total 12
simgate_http_errors_total{kind=\"no_route\"} 2
simgate_http_errors_total{kind=\"upstream_connect\"} 1
simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"2xx\"} 5
simgate_cloud_responses_total{adapter=\"gcp-pubsub\",status=\"429\",} 1

simgate_http_request_duration_seconds_bucket{le=\"+Inf\"} 12
simgate_probe_success{destination=\"a \\\"b\\\" \\\\ c\\n\",stage=\"tls\"} 1 1700000000000
simgate_upstream_idle_connections 0.5e1
";

    #[test]
    fn reads_names_labels_values_and_skips_comments() {
        let e = Exposition::parse(SAMPLE).unwrap();
        assert_eq!(e.series().len(), 8);
        assert_eq!(e.sum("simgate_http_requests_total"), 12.0);
        assert_eq!(e.sum("simgate_http_errors_total"), 3.0);
        assert_eq!(
            e.sum_where("simgate_http_errors_total", "kind", "no_route"),
            2.0
        );
        assert_eq!(e.sum("simgate_upstream_idle_connections"), 5.0);
        assert_eq!(e.sum("absent"), 0.0);
        assert!(!e.has("absent"));
        let probe = &e.series()[6];
        assert_eq!(probe.label("destination"), Some("a \"b\" \\ c\n"));
        assert_eq!(probe.label("stage"), Some("tls"));
        let bucket = &e.series()[5];
        assert_eq!(bucket.label("le"), Some("+Inf"));
    }

    #[test]
    fn groups_by_labels() {
        let e = Exposition::parse(SAMPLE).unwrap();
        let g = e.group_by("simgate_cloud_responses_total", &["adapter", "status"]);
        let keys: Vec<_> = g.iter().map(|(k, v)| (k.join("/"), *v)).collect();
        assert_eq!(
            keys,
            [
                ("gcp-pubsub/2xx".to_owned(), 5.0),
                ("gcp-pubsub/429".to_owned(), 1.0)
            ]
        );
        let g = e.group_by("simgate_http_requests_total", &["kind"]);
        assert_eq!(g.get(&vec![String::new()]), Some(&12.0));
    }

    #[test]
    fn special_values() {
        let e = Exposition::parse("a +Inf\nb -Inf\nc NaN\n").unwrap();
        assert_eq!(e.sum("a"), f64::INFINITY);
        assert_eq!(e.sum("b"), f64::NEG_INFINITY);
        assert!(e.sum("c").is_nan());
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, reason) in [
            ("ok 1\n{a=\"b\"} 1", "no metric name"),
            ("ok 1\nm{a=b} 1", "label value not quoted"),
            ("ok 1\nm{a=\"b} 1", "unterminated label value"),
            (
                "ok 1\nm{a=\"b\" c=\"d\"} 1",
                "expected `,` or `}` after a label",
            ),
            ("ok 1\nm{a=\"\\x\"} 1", "bad escape in label value"),
            ("ok 1\nm", "no space before the value"),
            ("ok 1\nm one", "bad value"),
            ("ok 1\nm 1 2 3", "text after the timestamp"),
            ("ok 1\nm 1 soon", "bad timestamp"),
        ] {
            assert_eq!(
                Exposition::parse(text),
                Err(ParseError { line: 2, reason }),
                "{text:?}"
            );
        }
    }
}
