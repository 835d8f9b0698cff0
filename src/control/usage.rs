//! Usage on the control thread: the [`Ledger`] that merges the shards' usage deltas into
//! intervals and totals, the JSON-lines records of the usage file, and the `/admin/usage`
//! answers (JSON and CSV). Pure: time is passed in; the file itself is [`super::usage_file`].
//!
//! How an interval is made: every `usage.interval` (and on SIGTERM after the shards drained)
//! the control thread takes each shard's deltas ([`crate::shard::Gateway::take_usage`]), adds
//! them to the open interval ([`Ledger::absorb`]) and closes it ([`Ledger::close`]): the
//! interval `[from, to)` holds exactly what the shards handed over between its opening and its
//! closing, and the next one opens at `to`. A count leaves a shard once and lands in exactly one
//! interval, so summing the records of every interval never counts anything twice. A read of
//! `/admin/usage` also takes the shards' deltas, into the still-open interval, so its totals are
//! current to the read.
//!
//! Memory: the totals hold one row per (SIM, group) ever seen; the last `usage.keep_intervals`
//! closed intervals are kept for `?since=` (each one row per SIM active in it). A `since` older
//! than the oldest interval kept is refused (the usage files have it).
//!
//! What this module does not do: count on the message path (`stats::usage`, the flows), talk to
//! shards, or open files.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::identity::Imsi;
use crate::stats::usage::{UsageCounts, UsageRecord, UsageRow, UsageTable};

/// One closed interval: what the shards handed over during `[from, to)`.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start (the previous interval's end, or the start of metering).
    pub from: SystemTime,
    /// End.
    pub to: SystemTime,
    /// Per (group, SIM).
    pub table: UsageTable,
}

/// The intervals and totals merged from every shard.
#[derive(Debug)]
pub struct Ledger {
    keep: usize,
    /// Start of metering.
    started: SystemTime,
    open_from: SystemTime,
    open: UsageTable,
    /// Every closed interval summed.
    closed: UsageTable,
    intervals: VecDeque<Interval>,
    /// True once an interval was dropped from `intervals` for the `keep` bound.
    evicted: bool,
    /// Intervals closed so far.
    closed_count: u64,
}

/// An `/admin/usage` answer: totals per (group, SIM) over `[from, to)`.
#[derive(Debug, Clone)]
pub struct UsageAnswer {
    /// Start of the first interval included.
    pub from: SystemTime,
    /// The moment of the read.
    pub to: SystemTime,
    /// The group asked for, if any.
    pub group: Option<String>,
    /// Rows.
    pub table: UsageTable,
}

impl Ledger {
    /// A ledger whose first interval opens at `start`, keeping `keep` closed intervals.
    pub fn new(start: SystemTime, keep: usize) -> Ledger {
        Ledger {
            keep: keep.max(1),
            started: start,
            open_from: start,
            open: UsageTable::default(),
            closed: UsageTable::default(),
            intervals: VecDeque::new(),
            evicted: false,
            closed_count: 0,
        }
    }

    /// Intervals closed so far.
    pub fn intervals_closed(&self) -> u64 {
        self.closed_count
    }

    /// (SIM, group) pairs with usage since start, closed or open.
    pub fn sims(&self) -> u64 {
        let open_only = self
            .open
            .rows()
            .filter(|(g, i, _)| !self.closed.contains(g, *i))
            .count();
        (self.closed.len() + open_only) as u64
    }

    /// Add shards' records to the open interval.
    pub fn absorb(&mut self, records: &[UsageRecord]) {
        for r in records {
            self.open.add(r);
        }
    }

    /// Close the open interval at `to` (no earlier than its start) and open the next there.
    pub fn close(&mut self, to: SystemTime) -> &Interval {
        let to = to.max(self.open_from);
        let interval = Interval {
            from: self.open_from,
            to,
            table: std::mem::take(&mut self.open),
        };
        self.closed.merge(&interval.table);
        self.closed_count += 1;
        self.open_from = to;
        if self.intervals.len() == self.keep {
            self.intervals.pop_front();
            self.evicted = true;
        }
        self.intervals.push_back(interval);
        self.intervals.back().expect("just pushed")
    }

    /// Totals of `group` (or all) over the intervals that end after `since` (all since the
    /// start when `None`) plus the open one, read at `now`. Intervals are whole: one that
    /// started before `since` and ends after it is included (`from` says where the answer
    /// starts). Err when `since` reaches before the oldest interval kept in memory.
    pub fn query(
        &self,
        group: Option<&str>,
        since: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<UsageAnswer, String> {
        let mut table = UsageTable::default();
        let from = match since {
            None => {
                table.merge(&self.closed);
                self.started
            }
            Some(since) => {
                if self.evicted {
                    if let Some(oldest) = self.intervals.front() {
                        if since < oldest.from {
                            return Err(format!(
                                "since {} is before the oldest interval kept in memory ({}, \
                                 usage.keep_intervals = {}): sum the usage files instead",
                                rfc3339(since),
                                rfc3339(oldest.from),
                                self.keep
                            ));
                        }
                    }
                }
                let mut from = self.open_from;
                for i in self.intervals.iter().filter(|i| i.to > since) {
                    from = from.min(i.from);
                    table.merge(&i.table);
                }
                from
            }
        };
        table.merge(&self.open);
        let table = match group {
            None => table,
            Some(g) => {
                let mut only = UsageTable::default();
                for (name, imsi, row) in table.rows().filter(|(name, _, _)| *name == g) {
                    only.add(&record_of(name, imsi, row));
                }
                only
            }
        };
        Ok(UsageAnswer {
            from,
            to: now,
            group: group.map(str::to_owned),
            table,
        })
    }
}

fn record_of(group: &str, imsi: Option<Imsi>, row: &UsageRow) -> UsageRecord {
    UsageRecord {
        imsi,
        group: group.to_owned(),
        counts: row.counts,
        first_seen: row.first_seen,
        last_seen: row.last_seen,
    }
}

/// The IMSI as records write it: its digits, or `unknown` for unknown sources.
fn imsi_text(imsi: Option<Imsi>) -> String {
    imsi.map_or_else(|| "unknown".to_owned(), |i| i.to_string())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn counts_json(out: &mut String, c: &UsageCounts) {
    let _ = write!(
        out,
        "\"up_msgs\":{},\"up_bytes\":{},\"down_msgs\":{},\"down_bytes\":{},\"errors\":{}",
        c.up_msgs, c.up_bytes, c.down_msgs, c.down_bytes, c.errors
    );
}

/// The usage-file lines of `interval`: one JSON object per (SIM, group) with activity, each
/// ending in `\n`. Empty for an interval without activity.
pub fn interval_lines(interval: &Interval) -> String {
    let mut out = String::new();
    let (from, to) = (rfc3339(interval.from), rfc3339(interval.to));
    for (group, imsi, row) in interval.table.rows() {
        let _ = write!(
            out,
            "{{\"from\":\"{from}\",\"to\":\"{to}\",\"imsi\":\"{}\",\"group\":{},",
            imsi_text(imsi),
            json_str(group)
        );
        counts_json(&mut out, &row.counts);
        let _ = writeln!(
            out,
            ",\"first_seen\":\"{}\",\"last_seen\":\"{}\"}}",
            rfc3339(row.first_seen),
            rfc3339(row.last_seen)
        );
    }
    out
}

/// `/admin/usage` as JSON: the window, the totals, and one object per (SIM, group).
pub fn answer_json(a: &UsageAnswer) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"from\":\"{}\",\"to\":\"{}\",\"group\":{},\"totals\":{{",
        rfc3339(a.from),
        rfc3339(a.to),
        a.group
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_str)
    );
    counts_json(&mut out, &a.table.total());
    out.push_str("},\"sims\":[");
    for (n, (group, imsi, row)) in a.table.rows().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "\n{{\"imsi\":\"{}\",\"group\":{},",
            imsi_text(imsi),
            json_str(group)
        );
        counts_json(&mut out, &row.counts);
        let _ = write!(
            out,
            ",\"first_seen\":\"{}\",\"last_seen\":\"{}\"}}",
            rfc3339(row.first_seen),
            rfc3339(row.last_seen)
        );
    }
    out.push_str("\n]}\n");
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `/admin/usage` as CSV (RFC 4180): a header line, then one line per (SIM, group).
pub fn answer_csv(a: &UsageAnswer) -> String {
    let mut out = String::from(
        "from,to,imsi,group,up_msgs,up_bytes,down_msgs,down_bytes,errors,first_seen,last_seen\r\n",
    );
    let (from, to) = (rfc3339(a.from), rfc3339(a.to));
    for (group, imsi, row) in a.table.rows() {
        let c = &row.counts;
        let _ = write!(
            out,
            "{from},{to},{},{},{},{},{},{},{},{},{}\r\n",
            imsi_text(imsi),
            csv_field(group),
            c.up_msgs,
            c.up_bytes,
            c.down_msgs,
            c.down_bytes,
            c.errors,
            rfc3339(row.first_seen),
            rfc3339(row.last_seen)
        );
    }
    out
}

/// `t` as RFC 3339 UTC with milliseconds: `2026-12-05T09:10:00.000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Compact UTC stamp for rotated file names: `20261205T091000Z`.
pub fn file_stamp(t: SystemTime) -> String {
    let s = rfc3339(t);
    // "YYYY-MM-DDTHH:MM:SS.mmmZ" → "YYYYMMDDTHHMMSSZ"
    let mut out: String = s[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    out.push('Z');
    out
}

// Howard Hinnant's algorithms, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse an RFC 3339 time (`2026-12-05T09:10:00Z`, fractional seconds and `±hh:mm` offsets
/// accepted; `t` or a space for the `T`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if rest.as_bytes()[3] != b':' || oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if rest.as_bytes()[0] == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h * 3600 + mi * 60 + se.min(59))
        - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn record(imsi: &str, group: &str, up: u64, t: u64) -> UsageRecord {
        UsageRecord {
            imsi: Imsi::parse(imsi),
            group: group.into(),
            counts: UsageCounts {
                up_msgs: 1,
                up_bytes: up,
                ..UsageCounts::default()
            },
            first_seen: at(t),
            last_seen: at(t),
        }
    }

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_462_400_123);
        let s = rfc3339(t);
        assert_eq!(s, "2026-12-05T09:20:00.123Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(
            parse_rfc3339("2026-12-05T10:20:00.123+01:00"),
            Some(t),
            "offsets"
        );
        assert_eq!(
            parse_rfc3339("2026-12-05T09:20:00Z"),
            Some(t - Duration::from_millis(123))
        );
        assert_eq!(file_stamp(t), "20261205T092000Z");
        for bad in [
            "",
            "2026-12-05",
            "2026-13-05T09:20:00Z",
            "2026-12-05T09:20:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn intervals_partition_the_deltas_and_totals_include_the_open_one() {
        let mut l = Ledger::new(at(0), 10);
        l.absorb(&[record("001010000000001", "g", 10, 1)]);
        let first = l.close(at(60)).clone();
        assert_eq!((first.from, first.to), (at(0), at(60)));
        l.absorb(&[
            record("001010000000001", "g", 5, 61),
            record("001010000000002", "h", 7, 62),
        ]);
        let second = l.close(at(120)).clone();
        assert_eq!(second.from, at(60));
        l.absorb(&[record("001010000000002", "h", 1, 121)]);
        let all = l.query(None, None, at(130)).unwrap();
        assert_eq!(all.table.total().up_bytes, 23);
        assert_eq!(all.from, at(0));
        // The file's lines sum to the closed totals: nothing twice.
        let lines = interval_lines(&first) + &interval_lines(&second);
        assert_eq!(lines.lines().count(), 3);
        let sum: u64 = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["up_bytes"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(sum, 22);
        let only_h = l.query(Some("h"), None, at(130)).unwrap();
        assert_eq!(only_h.table.total().up_bytes, 8);
        let since = l.query(None, Some(at(90)), at(130)).unwrap();
        assert_eq!(since.from, at(60));
        assert_eq!(since.table.total().up_bytes, 13);
    }

    #[test]
    fn since_before_the_kept_intervals_is_refused() {
        let mut l = Ledger::new(at(0), 2);
        for n in 1..=3 {
            l.absorb(&[record("001010000000001", "g", 1, n * 60 - 1)]);
            l.close(at(n * 60));
        }
        assert!(l.query(None, Some(at(10)), at(200)).is_err());
        assert_eq!(
            l.query(None, Some(at(60)), at(200))
                .unwrap()
                .table
                .total()
                .up_bytes,
            2
        );
        // The totals since start are kept whatever the bound.
        assert_eq!(
            l.query(None, None, at(200)).unwrap().table.total().up_bytes,
            3
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut l = Ledger::new(at(0), 2);
        l.absorb(&[record("001010000000001", "a,\"b\"", 3, 1)]);
        let csv = answer_csv(&l.query(None, None, at(2)).unwrap());
        let line = csv.lines().nth(1).unwrap();
        assert!(
            line.contains(",001010000000001,\"a,\"\"b\"\"\",1,3,0,0,0,"),
            "{line}"
        );
    }
}
