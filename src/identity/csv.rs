//! The `sims_file` CSV format: a header row, then one SIM per line.
//!
//! ```text
//! imsi,ip,imei,msisdn,sim_id,name,group,tags
//! 440101234567890,10.0.0.7,356938035643809,+818012345678,sim-7,"Tokyo, plant 3",farm,site=tokyo;model=x2
//! ```
//!
//! Rules: the header is exactly [`CSV_HEADER`]; every line has eight fields; an empty field
//! is an absent value; a field may be quoted with `"` (RFC 4180: a quoted field may contain
//! commas, and `""` inside it is one `"`), but no field may span lines; `\r\n` and `\n` both
//! end a line; a UTF-8 byte-order mark before the header is skipped; blank lines are skipped.
//! Pure text in, rows out: no IO, no knowledge of groups.

use std::borrow::Cow;
use std::fmt;

use super::build::{SimRow, SimTags};

/// The header row a `sims_file` must start with.
pub const CSV_HEADER: &str = "imsi,ip,imei,msisdn,sim_id,name,group,tags";

const FIELDS: usize = 8;

/// A line that is not a well-formed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    /// 1-based line number.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Reads `text` row by row, calling `row` with each line's number and its fields (or why the
/// line is malformed). Fails without calling `row` if the header is wrong.
pub fn read_csv(
    text: &str,
    mut row: impl FnMut(u32, Result<SimRow<'_>, String>),
) -> Result<(), CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split('\n').enumerate();
    let header = lines.next().map_or("", |(_, l)| l);
    let header = header.strip_suffix('\r').unwrap_or(header);
    if header != CSV_HEADER {
        return Err(CsvError {
            line: 1,
            message: format!(
                "the header row must be exactly {CSV_HEADER:?}, got {}",
                super::build::quote(header)
            ),
        });
    }
    for (index, line) in lines {
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match split_line(line) {
            Err(message) => row(number, Err(message)),
            Ok(fields) => {
                let get = |i: usize| Some(fields[i].as_ref()).filter(|f| !f.is_empty());
                let tags = get(7).map_or(SimTags::None, SimTags::Csv);
                row(
                    number,
                    Ok(SimRow {
                        imsi: get(0),
                        ip: get(1),
                        imei: get(2),
                        msisdn: get(3),
                        sim_id: get(4),
                        name: get(5),
                        group: get(6),
                        tags,
                    }),
                );
            }
        }
    }
    Ok(())
}

/// Splits one line into exactly [`FIELDS`] fields, unquoting quoted ones.
fn split_line(line: &str) -> Result<[Cow<'_, str>; FIELDS], String> {
    let mut fields: [Cow<'_, str>; FIELDS] = Default::default();
    let mut count = 0;
    let mut rest = line;
    loop {
        let (field, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let (field, after) = quoted_field(quoted)?;
            match after.chars().next() {
                None | Some(',') => {}
                Some(_) => {
                    return Err(format!(
                        "field {}: text after the closing quote (write \"\" for a quote inside a quoted field)",
                        count + 1
                    ))
                }
            }
            (field, after)
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let field = &rest[..end];
            if field.contains('"') {
                return Err(format!(
                    "field {}: a '\"' inside an unquoted field (quote the whole field and write \"\")",
                    count + 1
                ));
            }
            (Cow::Borrowed(field), &rest[end..])
        };
        if count < FIELDS {
            fields[count] = field;
        }
        count += 1;
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => break,
        }
    }
    if count != FIELDS {
        return Err(format!(
            "{count} fields; every row has {FIELDS} ({CSV_HEADER})"
        ));
    }
    Ok(fields)
}

/// The body of a quoted field (after its opening quote) and what follows its closing quote.
fn quoted_field(text: &str) -> Result<(Cow<'_, str>, &str), String> {
    let mut owned: Option<String> = None;
    let mut start = 0;
    let mut search = 0;
    loop {
        let Some(at) = text[search..].find('"').map(|i| search + i) else {
            return Err(
                "a quoted field has no closing quote (fields cannot span lines)".to_owned(),
            );
        };
        if text[at + 1..].starts_with('"') {
            // `""`: one quote; keep the text up to and including the first.
            owned
                .get_or_insert_with(String::new)
                .push_str(&text[start..=at]);
            start = at + 2;
            search = at + 2;
            continue;
        }
        let field = match owned {
            None => Cow::Borrowed(&text[..at]),
            Some(mut s) => {
                s.push_str(&text[start..at]);
                Cow::Owned(s)
            }
        };
        return Ok((field, &text[at + 1..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<(u32, Result<Vec<String>, String>)> {
        let mut out = Vec::new();
        read_csv(text, |line, row| {
            out.push((
                line,
                row.map(|r| {
                    [r.imsi, r.ip, r.imei, r.msisdn, r.sim_id, r.name, r.group]
                        .iter()
                        .map(|f| f.unwrap_or("-").to_owned())
                        .chain(std::iter::once(match r.tags {
                            SimTags::Csv(t) => t.to_owned(),
                            _ => "-".to_owned(),
                        }))
                        .collect()
                }),
            ))
        })
        .unwrap();
        out
    }

    #[test]
    fn plain_quoted_and_empty_fields() {
        let text = "\u{feff}imsi,ip,imei,msisdn,sim_id,name,group,tags\r\n\
                    440101234567890,10.0.0.7,,,,\"Tokyo, plant \"\"3\"\"\",farm,a=1;b=2\r\n\
                    \n\
                    440101234567891,,,,,,farm,\n";
        let got = rows(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 2);
        assert_eq!(
            got[0].1.as_ref().unwrap(),
            &[
                "440101234567890",
                "10.0.0.7",
                "-",
                "-",
                "-",
                "Tokyo, plant \"3\"",
                "farm",
                "a=1;b=2"
            ]
        );
        assert_eq!(got[1].0, 4);
        assert_eq!(got[1].1.as_ref().unwrap()[7], "-");
        // A quoted empty field is absent too.
        let got = rows(&format!(
            "{CSV_HEADER}\n\"440101234567890\",\"\",,,,,farm,\n"
        ));
        assert_eq!(got[0].1.as_ref().unwrap()[1], "-");
    }

    #[test]
    fn malformed_lines_say_why() {
        let text = format!(
            "{CSV_HEADER}\n1,2,3\n1,2,3,4,5,6,7,8,9\n1,,,,,\"open,,farm,\n1,,,,,\"x\"y,farm,\n1,,,,,a\"b,farm,\n"
        );
        let got = rows(&text);
        let errors: Vec<(u32, String)> =
            got.into_iter().map(|(l, r)| (l, r.unwrap_err())).collect();
        assert_eq!(errors[0].0, 2);
        assert!(
            errors[0].1.contains("3 fields; every row has 8"),
            "{errors:?}"
        );
        assert!(errors[1].1.contains("9 fields"), "{errors:?}");
        assert!(errors[2].1.contains("no closing quote"), "{errors:?}");
        assert!(
            errors[3].1.contains("after the closing quote"),
            "{errors:?}"
        );
        assert!(
            errors[4].1.contains("inside an unquoted field"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_wrong_header_is_one_error_on_line_1() {
        let error = read_csv("imsi,ip\n1,2\n", |_, _| panic!("no rows")).unwrap_err();
        assert_eq!(error.line, 1);
        assert!(error.message.contains("must be exactly"), "{error}");
        assert!(read_csv("", |_, _| panic!("no rows")).is_err());
        // Header only: no rows, no error.
        read_csv(&format!("{CSV_HEADER}\n"), |_, _| panic!("no rows")).unwrap();
    }
}
