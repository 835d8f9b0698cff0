//! Tests of the SIM table: building, validation messages, uniqueness, lookups, and a 10,000-row
//! table's size.

use std::net::IpAddr;

use super::*;

fn row<'a>(imsi: &'a str) -> SimRow<'a> {
    SimRow {
        imsi: Some(imsi),
        ip: None,
        imei: None,
        msisdn: None,
        sim_id: None,
        name: None,
        group: Some("g"),
        tags: SimTags::None,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn imsi(text: &str) -> Imsi {
    Imsi::parse(text).unwrap()
}

fn small_table() -> SimTable {
    let mut b = SimTableBuilder::new();
    let pairs = [("site", "tokyo"), ("model", "x2")];
    b.push(
        &SimRow {
            ip: Some("10.0.0.7"),
            imei: Some("356938035643809"),
            msisdn: Some("+818012345678"),
            sim_id: Some("sim-7"),
            name: Some("Tokyo, plant 3"),
            tags: SimTags::Pairs(&pairs),
            ..row("440101234567890")
        },
        2,
        0,
    )
    .unwrap();
    b.push(
        &SimRow {
            ip: Some("2001:db8::7"),
            tags: SimTags::Csv("model=x2;site=osaka"),
            ..row("001010000000001")
        },
        1,
        1,
    )
    .unwrap();
    b.push(&row("44010000000002"), 0, 2).unwrap();
    b.finish().unwrap()
}

#[test]
fn lookups_by_v4_v6_mapped_v4_and_imsi() {
    let t = small_table();
    assert_eq!(t.len(), 3);
    let sim = t.by_ip(ip("10.0.0.7")).unwrap();
    assert_eq!(sim.imsi().to_string(), "440101234567890");
    assert_eq!(sim.ip(), Some(ip("10.0.0.7")));
    assert_eq!(sim.imei().unwrap().digits().as_str(), "356938035643809");
    assert_eq!(sim.msisdn().unwrap().to_string(), "+818012345678");
    assert_eq!(sim.sim_id(), Some("sim-7"));
    assert_eq!(sim.name(), Some("Tokyo, plant 3"));
    assert_eq!(sim.group_index(), 2);
    assert_eq!(
        sim.tags().collect::<Vec<_>>(),
        [("site", "tokyo"), ("model", "x2")]
    );
    assert_eq!(sim.tag("model"), Some("x2"));
    assert_eq!(sim.tag("nope"), None);
    // The same SIM through an IPv4-mapped IPv6 source address.
    let mapped = t.by_ip(ip("::ffff:10.0.0.7")).unwrap();
    assert_eq!(mapped.imsi(), sim.imsi());

    let v6 = t.by_ip(ip("2001:db8::7")).unwrap();
    assert_eq!(v6.imsi().to_string(), "001010000000001");
    assert_eq!(v6.ip(), Some(ip("2001:db8::7")));
    assert_eq!(v6.group_index(), 1);
    assert_eq!(v6.tag("site"), Some("osaka"));
    assert_eq!(v6.imei(), None);
    assert_eq!(v6.name(), None);

    assert!(t.by_ip(ip("10.0.0.8")).is_none());
    assert!(t.by_ip(ip("2001:db8::8")).is_none());

    let bare = t.by_imsi(imsi("44010000000002")).unwrap();
    assert_eq!(bare.ip(), None);
    assert_eq!(bare.tags().count(), 0);
    assert_eq!(bare.sim_id(), None);
    assert!(t.by_imsi(imsi("440100000000020")).is_none());
    assert_eq!(
        t.by_imsi(imsi("440101234567890")).map(|s| s.ip()),
        Some(Some(ip("10.0.0.7")))
    );
    assert_eq!(t.iter().count(), 3);
}

#[test]
fn an_empty_table_finds_nothing() {
    let t = SimTable::empty();
    assert!(t.is_empty());
    assert!(t.by_ip(ip("10.0.0.1")).is_none());
    assert!(t.by_imsi(imsi("440101234567890")).is_none());
    let t = SimTableBuilder::new().finish().unwrap();
    assert!(t.by_ip(ip("::1")).is_none());
}

fn errors_of(r: SimRow<'_>) -> Vec<(SimField, String)> {
    let mut b = SimTableBuilder::new();
    b.push(&r, 0, 0)
        .unwrap_err()
        .into_iter()
        .map(|e| (e.field, e.to_string()))
        .collect()
}

#[test]
fn every_field_is_validated_with_a_message() {
    let cases: Vec<(SimRow<'_>, SimField, &str)> = vec![
        (
            SimRow {
                imsi: None,
                ..row("")
            },
            SimField::Imsi,
            "required",
        ),
        (row("12ab"), SimField::Imsi, "\"12ab\" is not 14–15 digits"),
        (
            row("4401012345678901"),
            SimField::Imsi,
            "is not 14–15 digits",
        ),
        (
            SimRow {
                ip: Some("10.0.0.256"),
                ..row("440101234567890")
            },
            SimField::Ip,
            "\"10.0.0.256\" is not an IPv4 or IPv6 address",
        ),
        (
            SimRow {
                ip: Some("0.0.0.0"),
                ..row("440101234567890")
            },
            SimField::Ip,
            "0.0.0.0 cannot be a device's source address",
        ),
        (
            SimRow {
                ip: Some("ff02::1"),
                ..row("440101234567890")
            },
            SimField::Ip,
            "cannot be a device's source address",
        ),
        (
            SimRow {
                ip: Some("fe80::1%eth0"),
                ..row("440101234567890")
            },
            SimField::Ip,
            "is not an IPv4 or IPv6 address",
        ),
        (
            SimRow {
                imei: Some("1234"),
                ..row("440101234567890")
            },
            SimField::Imei,
            "\"1234\" is not 14–16 digits",
        ),
        (
            SimRow {
                msisdn: Some("+81-80"),
                ..row("440101234567890")
            },
            SimField::Msisdn,
            "is not 5–15 digits with an optional leading '+'",
        ),
        (
            SimRow {
                sim_id: Some("a b"),
                ..row("440101234567890")
            },
            SimField::SimId,
            "without spaces",
        ),
        (
            SimRow {
                name: Some(" lead"),
                ..row("440101234567890")
            },
            SimField::Name,
            "spaces inside only",
        ),
        (
            SimRow {
                name: Some("東京"),
                ..row("440101234567890")
            },
            SimField::Name,
            "printable ASCII",
        ),
        (
            SimRow {
                tags: SimTags::Csv("a=1;;b=2"),
                ..row("440101234567890")
            },
            SimField::Tags,
            "empty tag",
        ),
        (
            SimRow {
                tags: SimTags::Csv("a"),
                ..row("440101234567890")
            },
            SimField::Tags,
            "tag \"a\" is not key=value",
        ),
        (
            SimRow {
                tags: SimTags::Csv("A=1"),
                ..row("440101234567890")
            },
            SimField::Tags,
            "tag key \"A\"",
        ),
        (
            SimRow {
                tags: SimTags::Csv("a="),
                ..row("440101234567890")
            },
            SimField::Tags,
            "tag \"a\" value \"\"",
        ),
        (
            SimRow {
                tags: SimTags::Csv("a=1;a=2"),
                ..row("440101234567890")
            },
            SimField::Tags,
            "duplicate tag key \"a\"",
        ),
        (
            SimRow {
                tags: SimTags::Pairs(&[("a", "x;y")]),
                ..row("440101234567890")
            },
            SimField::Tags,
            "without ';'",
        ),
    ];
    for (r, field, needle) in cases {
        let errors = errors_of(r);
        assert_eq!(errors.len(), 1, "{r:?}: {errors:?}");
        assert_eq!(errors[0].0, field, "{r:?}");
        assert!(
            errors[0].1.contains(needle),
            "{r:?}: {:?} lacks {needle:?}",
            errors[0].1
        );
    }
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    let errors = errors_of(SimRow {
        name: Some(&long),
        ..row("440101234567890")
    });
    assert!(errors[0].1.contains("… (256 bytes)"), "{errors:?}");
    // Every problem of a row at once.
    let errors = errors_of(SimRow {
        ip: Some("x"),
        imei: Some("y"),
        tags: SimTags::Csv("z"),
        ..row("bad")
    });
    let fields: Vec<_> = errors.iter().map(|e| e.0).collect();
    assert_eq!(
        fields,
        [SimField::Imsi, SimField::Ip, SimField::Imei, SimField::Tags]
    );
}

#[test]
fn duplicate_imsis_and_ips_name_both_origins() {
    let mut b = SimTableBuilder::new();
    b.push(
        &SimRow {
            ip: Some("10.0.0.1"),
            ..row("440101234567890")
        },
        0,
        10,
    )
    .unwrap();
    b.push(
        &SimRow {
            ip: Some("2001:db8::1"),
            ..row("440101234567891")
        },
        0,
        11,
    )
    .unwrap();
    b.push(
        &SimRow {
            ip: Some("::ffff:10.0.0.1"),
            ..row("440101234567892")
        },
        0,
        12,
    )
    .unwrap();
    b.push(&row("440101234567890"), 0, 13).unwrap();
    b.push(
        &SimRow {
            ip: Some("2001:db8:0::1"),
            ..row("440101234567893")
        },
        0,
        14,
    )
    .unwrap();
    let Err(BuildError::Duplicates(d)) = b.finish() else {
        panic!("duplicates not found");
    };
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.field, d.value.as_str(), d.first, d.second))
        .collect();
    assert_eq!(
        got,
        [
            (SimField::Ip, "10.0.0.1", 10, 12),
            (SimField::Imsi, "440101234567890", 10, 13),
            (SimField::Ip, "2001:db8::1", 11, 14),
        ]
    );
}

/// The CSV text of `n` generated SIMs: every one with an IPv4 address, IMEI, MSISDN, SIM id and
/// name, and two tags drawn from a few values.
pub(crate) fn generated_csv(n: u32) -> String {
    let mut text = format!("{CSV_HEADER}\n");
    for i in 0..n {
        let [_, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        text.push_str(&format!(
            "4401{i:011},10.{b}.{c}.{d},35{i:013},+8180{i:08},sim-{i},device {i},farm,site=s{}\n",
            i % 50
        ));
        if i % 7 == 0 {
            text.pop();
            text.push_str(";model=m1\n");
        }
    }
    text
}

#[test]
fn ten_thousand_csv_rows_build_and_are_all_found() {
    let n = 10_000;
    let text = generated_csv(n);
    let mut b = SimTableBuilder::new();
    let mut bad = 0;
    read_csv(&text, |_, r| match r {
        Ok(r) => {
            if b.push(&r, 0, 0).is_err() {
                bad += 1;
            }
        }
        Err(_) => bad += 1,
    })
    .unwrap();
    assert_eq!(bad, 0);
    let t = b.finish().unwrap();
    assert_eq!(t.len(), n as usize);
    for i in (0..n).step_by(97) {
        let [_, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        let sim = t.by_ip(IpAddr::from([10, b, c, d])).unwrap();
        assert_eq!(sim.imsi().to_string(), format!("4401{i:011}"));
        assert_eq!(sim.name(), Some(format!("device {i}").as_str()));
        assert_eq!(sim.tag("site"), Some(format!("s{}", i % 50).as_str()));
        assert_eq!(sim.tag("model"), (i % 7 == 0).then_some("m1"));
    }
    let per_sim = t.heap_bytes() as f64 / f64::from(n);
    eprintln!(
        "SIM table: {n} SIMs, {} heap bytes, {per_sim:.1} bytes per SIM",
        t.heap_bytes()
    );
    // Tag sets are interned: 50 sites × with/without model (and the empty set), not one per
    // SIM; `tag_sets` holds one start per set and one end.
    assert_eq!(t.tag_sets.len() - 1, 101);
}
