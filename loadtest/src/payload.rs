//! The stamped payload every simulated message carries: device id, per-device sequence number
//! and intended send time, padded to the scenario's size, so a sink can count loss, duplicates
//! and reordering and measure end-to-end latency.
//!
//! Layout (ASCII, fixed 56-byte header, then padding):
//!
//! ```text
//! sgl1:<device: 16 hex>:<seq: 16 hex>:<intended send time: 16 hex ns since the Unix epoch>;<padding>
//! sgl1:000000000000002a:0000000000000007:18795c1a3e0f4b20;0123456789abcdef0123...
//! ```
//!
//! The padding repeats `0123456789abcdef` up to the scenario's `body_bytes`; a `body_bytes`
//! below [`HEADER_LEN`] still sends the whole header (the message is then 56 bytes). The send
//! time is the message's INTENDED send time on the wall clock (`CLOCK_REALTIME`): sink and
//! devices run on one host, so `receive time - intended time` is a valid one-way latency (an NTP
//! step during a run would skew it; `chronyd`/`systemd-timesyncd` slew instead of stepping).
//!
//! What it does NOT do: authenticate or checksum the payload (a corrupted header shows up as
//! `malformed`, corrupted padding goes unnoticed).

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of the stamped header.
pub const HEADER_LEN: usize = 56;
/// First bytes of every stamped payload (format version 1).
pub const MAGIC: &[u8; 5] = b"sgl1:";
const PADDING: &[u8; 16] = b"0123456789abcdef";

/// What a stamped payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Global device number.
    pub device: u64,
    /// Per-device sequence number, from 0.
    pub seq: u64,
    /// Intended send time, nanoseconds since the Unix epoch.
    pub sent_unix_ns: u64,
}

/// A payload buffer of `size` bytes (at least [`HEADER_LEN`]) with padding in place and a
/// zeroed stamp; [`stamp`] fills the header in before each send.
pub fn template(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN];
    buf.extend(
        PADDING
            .iter()
            .copied()
            .cycle()
            .take(size.saturating_sub(HEADER_LEN)),
    );
    stamp(
        &mut buf,
        Stamp {
            device: 0,
            seq: 0,
            sent_unix_ns: 0,
        },
    );
    buf
}

/// Writes `s` into the first [`HEADER_LEN`] bytes of `buf` (which must be at least that long;
/// shorter buffers are left unchanged).
pub fn stamp(buf: &mut [u8], s: Stamp) {
    let Some(header) = buf.get_mut(..HEADER_LEN) else {
        return;
    };
    header[..5].copy_from_slice(MAGIC);
    write_hex(&mut header[5..21], s.device);
    header[21] = b':';
    write_hex(&mut header[22..38], s.seq);
    header[38] = b':';
    write_hex(&mut header[39..55], s.sent_unix_ns);
    header[55] = b';';
}

/// Reads the stamp at the start of `payload`; `None` when it is not a stamped payload.
pub fn parse(payload: &[u8]) -> Option<Stamp> {
    let header = payload.get(..HEADER_LEN)?;
    if &header[..5] != MAGIC || header[21] != b':' || header[38] != b':' || header[55] != b';' {
        return None;
    }
    Some(Stamp {
        device: read_hex(&header[5..21])?,
        seq: read_hex(&header[22..38])?,
        sent_unix_ns: read_hex(&header[39..55])?,
    })
}

/// Now on the wall clock, nanoseconds since the Unix epoch (0 before 1970).
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        let shift = 4 * (15 - i);
        *byte = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_keep_the_size() {
        let mut buf = template(100);
        assert_eq!(buf.len(), 100);
        let s = Stamp {
            device: 42,
            seq: u64::MAX,
            sent_unix_ns: 0x1879_5c1a_3e0f_4b20,
        };
        stamp(&mut buf, s);
        assert_eq!(parse(&buf), Some(s));
        assert_eq!(
            std::str::from_utf8(&buf[..60]).expect("ascii"),
            "sgl1:000000000000002a:ffffffffffffffff:18795c1a3e0f4b20;0123"
        );
    }

    #[test]
    fn small_sizes_still_carry_the_header() {
        let buf = template(8);
        assert_eq!(buf.len(), HEADER_LEN);
        assert!(parse(&buf).is_some());
    }

    #[test]
    fn anything_else_is_not_a_stamp() {
        let good = template(64);
        assert!(parse(&good[..HEADER_LEN - 1]).is_none());
        for i in [0, 5, 21, 30, 38, 55] {
            let mut bad = good.clone();
            bad[i] = b'X';
            assert!(parse(&bad).is_none(), "byte {i}");
        }
        assert!(parse(b"hello").is_none());
    }
}
