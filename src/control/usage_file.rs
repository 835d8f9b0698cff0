//! The append-only JSON-lines usage file: one block of lines per closed interval, appended with
//! one write and synced, rotated by size and age between intervals (so an interval is never
//! split across files). A rotated file is renamed `<file>.<YYYYMMDDTHHMMSSZ>` (`.1`, `.2`, …
//! appended if that name exists) and never written again; the live file is never truncated,
//! except to cut off the torn tail of a write that failed (which is then retried whole with the
//! next interval's block, so each interval is in the files exactly once).
//!
//! What this module does not do: decide what goes into a block ([`super::usage`]) or delete
//! old files (the billing job or logrotate's `maxage` does).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::usage::file_stamp;

/// The usage file and its rotation state.
#[derive(Debug)]
pub struct UsageFile {
    path: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    /// Open file, its size, and when it was started.
    open: Option<(File, u64, SystemTime)>,
    /// Blocks not yet written (a write failed): written before the next block.
    pending: Vec<u8>,
    /// Files rotated so far.
    rotations: u64,
}

impl UsageFile {
    /// A usage file at `path`, rotated before a write would take it past `max_bytes` or once it
    /// is `max_age` old. Nothing is opened until the first write.
    pub fn new(path: PathBuf, max_bytes: u64, max_age: Duration) -> UsageFile {
        UsageFile {
            path,
            max_bytes,
            max_age,
            open: None,
            pending: Vec::new(),
            rotations: 0,
        }
    }

    /// Files rotated by this writer.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// Where the live file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `block` (whole lines) at `now`, rotating first if due. On error the block is
    /// kept and written before the next one.
    pub fn append(&mut self, block: &[u8], now: SystemTime) -> std::io::Result<()> {
        self.pending.extend_from_slice(block);
        if self.pending.is_empty() {
            return Ok(());
        }
        let len = self.pending.len() as u64;
        let due = match &self.open {
            Some((_, size, started)) => {
                *size > 0
                    && (size + len > self.max_bytes
                        || now.duration_since(*started).unwrap_or_default() >= self.max_age)
            }
            None => false,
        };
        if due {
            self.rotate(now)?;
        }
        if self.open.is_none() {
            self.open = Some(open_append(&self.path, now)?);
            // A file left by a previous run may be due already.
            if let Some((_, size, started)) = &self.open {
                let old = now.duration_since(*started).unwrap_or_default() >= self.max_age;
                if *size > 0 && (size + len > self.max_bytes || old) {
                    self.rotate(now)?;
                    self.open = Some(open_append(&self.path, now)?);
                }
            }
        }
        let Some((file, size, _)) = self.open.as_mut() else {
            return Ok(());
        };
        let written = file
            .write_all(&self.pending)
            .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                *size += len;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Cut a torn tail so the retry does not glue half a line to a whole one.
                let _ = file.set_len(*size);
                self.open = None;
                Err(e)
            }
        }
    }

    fn rotate(&mut self, now: SystemTime) -> std::io::Result<()> {
        self.open = None;
        let stamp = file_stamp(now);
        let base = self.path.as_os_str().to_owned();
        let mut target = PathBuf::from({
            let mut n = base.clone();
            n.push(format!(".{stamp}"));
            n
        });
        let mut k = 1;
        while target.exists() {
            let mut n = base.clone();
            n.push(format!(".{stamp}.{k}"));
            target = PathBuf::from(n);
            k += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.rotations += 1;
        Ok(())
    }
}

/// Open `path` for appending: its size, and its start (its creation time, else `now`).
fn open_append(path: &Path, now: SystemTime) -> std::io::Result<(File, u64, SystemTime)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    let started = if meta.len() == 0 {
        now
    } else {
        meta.created().or_else(|_| meta.modified()).unwrap_or(now)
    };
    Ok((file, meta.len(), started))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_by_size_between_blocks_and_never_splits_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let mut f = UsageFile::new(path.clone(), 25, Duration::from_secs(3600));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        f.append(b"0123456789\n", t).unwrap();
        f.append(b"0123456789\n", t + Duration::from_secs(1))
            .unwrap();
        // 22 + 11 > 25: rotated before this block.
        f.append(b"abcdefghij\n", t + Duration::from_secs(2))
            .unwrap();
        f.append(b"klmnopqrst\n", t + Duration::from_secs(3))
            .unwrap();
        f.append(b"uvwxyz0123\n", t + Duration::from_secs(3))
            .unwrap();
        let names = files(dir.path());
        assert_eq!(
            names,
            [
                "usage.jsonl",
                "usage.jsonl.20270115T080002Z",
                "usage.jsonl.20270115T080003Z"
            ]
        );
        let all: String = names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        assert_eq!(all.lines().count(), 5);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "uvwxyz0123\n");
    }

    #[test]
    fn rotates_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.jsonl");
        let mut f = UsageFile::new(path.clone(), 1 << 20, Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        f.append(b"a\n", t).unwrap();
        f.append(b"b\n", t + Duration::from_secs(59)).unwrap();
        f.append(b"c\n", t + Duration::from_secs(60)).unwrap();
        assert_eq!(files(dir.path()).len(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c\n");
    }
}
