//! Identity: which SIM a device connection comes from.
//!
//! A [`SimTable`] holds every configured SIM (IMSI, IP, IMEI, MSISDN, SIM id, name, group,
//! tags). It is built once when the config is loaded ([`SimTableBuilder`], fed from `[[sim]]`
//! entries and the `sims_file` CSV through [`read_csv`]), is immutable afterwards, and is
//! shared by every shard through the plan's `Arc`: one copy per process, never one per shard.
//! Lookups ([`SimTable::by_ip`], [`SimTable::by_imsi`]) are binary searches over sorted arrays
//! and return a borrowed [`SimRef`]; they take no lock and allocate nothing.
//!
//! ```text
//!  [[sim]] (TOML) ─┐                      ┌─► by_ip(source IP) ─► SimRef { imsi, imei, …, tags }
//!                  ├─► SimTableBuilder ───┤
//!  sims.csv ───────┘   (validate rows,    └─► by_imsi(Imsi)
//!                       sort, uniqueness)
//! ```
//!
//! Designed for a million SIMs: numbers are packed `u64`s ([`Imsi`], [`Imei`], [`Msisdn`]),
//! strings live in one arena, tag keys and values and whole tag sets are interned, and the
//! IP index is a sorted array rather than a hash map (docs/decisions/0010-sim-table-layout.md).
//!
//! What this module does not do: read files or know the TOML schema (`config` does, and maps
//! errors to paths and lines); know what a group is (a SIM's group is an index into the plan's
//! groups, resolved by the caller; `policy` wraps it as a `GroupId`); decide what an unknown
//! source gets (the listener's `unknown` setting, applied by the flows); live bindings from
//! RADIUS (a later layer on top of this table). It imports nothing else of the crate: it is the
//! bottom layer (tests/layering.rs).

mod bindings;
mod build;
mod csv;
mod digits;
mod table;

#[cfg(test)]
mod tests;

pub use bindings::{BindingKey, BindingsWriter, Bound, LiveBindings};
pub use build::{
    BuildError, Duplicate, SimField, SimFieldError, SimRow, SimTableBuilder, SimTags,
    MAX_TAGS_PER_SIM, MAX_TAG_KEYS, MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN, MAX_TEXT_LEN,
};
pub use csv::{read_csv, CsvError, CSV_HEADER};
pub use digits::{DigitString, Imei, Imsi, Msisdn};
pub use table::{SimRef, SimTable, Tags};
