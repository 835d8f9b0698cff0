//! Test helpers for the adapters: a one-SIM table and a [`Context`] for it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use super::Context;
use crate::identity::{SimRow, SimTable, SimTableBuilder, SimTags};
use crate::policy::cloud::Token;

/// A table with one SIM: IMSI 440101234567890, IMEI 490154203237518, MSISDN 819012345678,
/// name `meter-1`, tag `c8y_id = 4711`, address 10.0.0.7.
pub fn one_sim() -> SimTable {
    let mut b = SimTableBuilder::new();
    let tags = [("c8y_id", "4711")];
    b.push(
        &SimRow {
            imsi: Some("440101234567890"),
            ip: Some("10.0.0.7"),
            imei: Some("490154203237518"),
            msisdn: Some("819012345678"),
            sim_id: None,
            name: Some("meter-1"),
            group: Some("g"),
            tags: SimTags::Pairs(&tags),
        },
        0,
        0,
    )
    .expect("a valid SIM");
    b.finish().expect("a table")
}

/// 2026-12-05T06:00:00Z.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_450_400)
}

/// A token valid for an hour from [`now`].
pub fn token(value: &str) -> Token {
    Token {
        authorization: value.into(),
        expires_at: now() + Duration::from_secs(3600),
    }
}

/// The context of the table's SIM with `fields`, Host `host` and `token`.
pub fn context<'a>(
    table: &'a SimTable,
    fields: &'a [(String, String)],
    host: &'a str,
    token: Option<&'a Token>,
) -> Context<'a> {
    Context {
        sim: table.iter().next(),
        fields,
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        shard: 0,
        host,
        token,
        now: now(),
    }
}

/// The identity fields of the table's SIM as a group attaching imsi and imei would give them.
pub fn fields() -> Vec<(String, String)> {
    vec![
        ("imsi".to_owned(), "440101234567890".to_owned()),
        ("imei".to_owned(), "490154203237518".to_owned()),
    ]
}
