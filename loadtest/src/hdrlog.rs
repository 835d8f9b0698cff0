//! HdrHistogram interval logs (format version 1.3), readable by HdrHistogram's
//! `HistogramLogProcessor`, HdrHistogramVisualizer and hdr-plot.
//!
//! Each line after the header is `start,length,max,HISTF...`: seconds since the log's start
//! time, the interval length in seconds, the interval's largest value divided by
//! [`MAX_VALUE_DIVISOR`] (so milliseconds, as the recorded values are microseconds), and the
//! interval histogram in the V2 compressed encoding, base64.
//!
//! The encoding is written here because hdrhistogram's own serializer needs its `serialization`
//! feature, which pulls flate2 and nom into the workspace. The deflate stream uses stored
//! (uncompressed) blocks — valid zlib that every inflater reads, just larger; a few KiB per
//! interval is of no concern for a log.
//!
//! What it does NOT do: read logs, tags, or real compression.

use std::io::{self, Write};

use base64::Engine;
use hdrhistogram::Histogram;

/// Interval maxima are written divided by this (values are microseconds: the column is ms).
pub const MAX_VALUE_DIVISOR: f64 = 1000.0;

/// Cookie of an uncompressed V2 histogram.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
/// Cookie of a deflate-compressed V2 histogram.
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Largest payload of one stored deflate block.
const STORED_BLOCK_MAX: usize = 65_535;

/// Writes an interval log to `out`.
#[derive(Debug)]
pub struct IntervalLogWriter<W: Write> {
    out: W,
}

impl<W: Write> IntervalLogWriter<W> {
    /// Writes the header; `start_unix_secs` is the wall-clock time interval offsets count from.
    pub fn new(mut out: W, start_unix_secs: f64) -> io::Result<Self> {
        writeln!(out, "#[Histogram log format version 1.3]")?;
        writeln!(
            out,
            "#[StartTime: {start_unix_secs:.3} (seconds since epoch)]"
        )?;
        writeln!(out, "#[BaseTime: 0.000 (seconds since epoch)]")?;
        writeln!(
            out,
            "#[Values are microseconds; Interval_Max is in milliseconds]"
        )?;
        writeln!(
            out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        Ok(Self { out })
    }

    /// Appends one interval starting `start_secs` after the log's start time.
    pub fn write_interval(
        &mut self,
        start_secs: f64,
        length_secs: f64,
        histogram: &Histogram<u64>,
    ) -> io::Result<()> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(encode_compressed(histogram));
        writeln!(
            self.out,
            "{start_secs:.3},{length_secs:.3},{:.3},{encoded}",
            histogram.max() as f64 / MAX_VALUE_DIVISOR
        )?;
        self.out.flush()
    }
}

/// The V2 compressed encoding of `histogram`: cookie, zlib length, zlib stream of the V2 encoding.
pub fn encode_compressed(histogram: &Histogram<u64>) -> Vec<u8> {
    let plain = encode_v2(histogram);
    let zlib = zlib_stored(&plain);
    let mut out = Vec::with_capacity(8 + zlib.len());
    out.extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
    out.extend_from_slice(&(zlib.len() as u32).to_be_bytes());
    out.extend_from_slice(&zlib);
    out
}

/// The uncompressed V2 encoding: a 40-byte header, then the counts array up to the last
/// non-zero count, zig-zag LEB128 encoded, with runs of zeros written as negative run lengths.
pub fn encode_v2(histogram: &Histogram<u64>) -> Vec<u8> {
    // `iter_all` visits every counts-array index in order; its per-step count is that index's.
    let mut counts: Vec<u64> = histogram
        .iter_all()
        .map(|value| value.count_since_last_iteration())
        .collect();
    let used = counts
        .iter()
        .rposition(|c| *c != 0)
        .map_or(1, |last| last + 1);
    counts.truncate(used);
    let mut payload = Vec::with_capacity(counts.len());
    let mut index = 0;
    while index < counts.len() {
        let zeros = counts[index..].iter().take_while(|c| **c == 0).count();
        if zeros > 1 {
            write_varint(zig_zag(-(zeros as i64)), &mut payload);
            index += zeros;
        } else {
            write_varint(
                zig_zag(i64::try_from(counts[index]).unwrap_or(i64::MAX)),
                &mut payload,
            );
            index += 1;
        }
    }
    let mut out = Vec::with_capacity(40 + payload.len());
    out.extend_from_slice(&V2_COOKIE.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // normalizing index offset
    out.extend_from_slice(&u32::from(histogram.sigfig()).to_be_bytes());
    out.extend_from_slice(&histogram.low().to_be_bytes());
    out.extend_from_slice(&histogram.high().to_be_bytes());
    out.extend_from_slice(&1.0f64.to_be_bytes()); // integer-to-double conversion ratio
    out.extend_from_slice(&payload);
    out
}

fn zig_zag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// HdrHistogram's varint: LEB128 for up to 8 groups of 7 bits, then one whole 9th byte.
fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    for _ in 0..8 {
        if value < 0x80 {
            out.push(value as u8);
            return;
        }
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A zlib stream (RFC 1950) holding `data` in stored deflate blocks (RFC 1951 §3.2.4).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(STORED_BLOCK_MAX).max(1);
    let mut out = Vec::with_capacity(2 + blocks * 5 + data.len() + 4);
    // CMF: deflate, 32 KiB window; FLG: no dictionary, check bits so that CMF·256+FLG ≡ 0 (mod 31).
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(STORED_BLOCK_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last)); // BFINAL, BTYPE = 00 (stored)
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram")
    }

    /// Reads back what [`encode_v2`] wrote: (sigfig, low, high, counts).
    fn decode_v2(bytes: &[u8]) -> (u32, u64, u64, Vec<u64>) {
        let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8"));
        assert_eq!(be32(0), V2_COOKIE);
        let len = be32(4) as usize;
        assert_eq!(bytes.len(), 40 + len);
        let mut counts = Vec::new();
        let mut pos = 40;
        while pos < bytes.len() {
            let mut value = 0u64;
            for group in 0..9 {
                let byte = bytes[pos];
                pos += 1;
                if group == 8 {
                    value |= u64::from(byte) << 56;
                    break;
                }
                value |= u64::from(byte & 0x7f) << (7 * group);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let signed = ((value >> 1) as i64) ^ -((value & 1) as i64);
            if signed < 0 {
                counts.extend(std::iter::repeat_n(0, (-signed) as usize));
            } else {
                counts.push(signed as u64);
            }
        }
        (be32(12), be64(16), be64(24), counts)
    }

    #[test]
    fn v2_encoding_round_trips_the_counts() {
        let mut h = histogram();
        for value in [1, 1, 5, 900, 1_000_000, 1_000_001] {
            h.record(value).expect("record");
        }
        let (sigfig, low, high, counts) = decode_v2(&encode_v2(&h));
        assert_eq!((sigfig, low, high), (3, 1, 3_600_000_000));
        assert_eq!(counts.iter().sum::<u64>(), 6);
        // Rebuild the histogram from the decoded counts array and compare.
        let mut rebuilt = histogram();
        for (value, count) in h
            .iter_all()
            .zip(&counts)
            .map(|(v, c)| (v.value_iterated_to(), *c))
        {
            if count > 0 {
                rebuilt.record_n(value, count).expect("record");
            }
        }
        assert_eq!(rebuilt.len(), h.len());
        assert_eq!(rebuilt.max(), h.max());
        assert_eq!(rebuilt.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(*counts.last().expect("non-empty"), h.count_at(1_000_001));
    }

    #[test]
    fn varints_and_zig_zag_match_hdrhistogram() {
        assert_eq!(zig_zag(0), 0);
        assert_eq!(zig_zag(-1), 1);
        assert_eq!(zig_zag(1), 2);
        assert_eq!(zig_zag(-3), 5);
        let mut out = Vec::new();
        write_varint(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        write_varint(u64::MAX, &mut out);
        assert_eq!(out.len(), 9);
        assert_eq!(out[8], 0xff);
    }

    #[test]
    fn zlib_stream_is_well_formed() {
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let zlib = zlib_stored(&data);
        assert_eq!((u16::from(zlib[0]) << 8 | u16::from(zlib[1])) % 31, 0);
        // Two stored blocks: 65535 bytes (not final), then the rest (final).
        assert_eq!(zlib[2], 0x00);
        assert_eq!(&zlib[3..7], &[0xff, 0xff, 0x00, 0x00]);
        let second = 7 + STORED_BLOCK_MAX;
        assert_eq!(zlib[second], 0x01);
        let rest = (70_000 - STORED_BLOCK_MAX) as u16;
        assert_eq!(&zlib[second + 1..second + 3], &rest.to_le_bytes());
        assert_eq!(&zlib[second + 5..zlib.len() - 4], &data[STORED_BLOCK_MAX..]);
        assert_eq!(zlib.len(), 2 + 5 + 5 + 70_000 + 4);
        assert_eq!(
            zlib_stored(&[]),
            [0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1]
        );
    }

    #[test]
    fn log_lines_carry_offsets_max_and_a_histf_histogram() {
        let mut h = histogram();
        h.record(2_500).expect("record");
        let mut out = Vec::new();
        let mut log = IntervalLogWriter::new(&mut out, 1_700_000_000.25).expect("header");
        log.write_interval(1.0, 1.0, &h).expect("line");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("#[Histogram log format version 1.3]\n"));
        assert!(text.contains("#[StartTime: 1700000000.250 (seconds since epoch)]"));
        let line = text.lines().last().expect("line");
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(&fields[..3], ["1.000", "1.000", "2.501"]);
        // The V2 compressed cookie is why every HdrHistogram log line starts with "HISTF".
        assert!(fields[3].starts_with("HISTF"), "{}", fields[3]);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(fields[3])
            .expect("base64");
        assert_eq!(&raw[..4], &V2_COMPRESSED_COOKIE.to_be_bytes());
        assert_eq!(
            raw.len(),
            8 + u32::from_be_bytes(raw[4..8].try_into().expect("4")) as usize
        );
    }
}
