//! `[[sim]]` entries, `gateway.sims_file` and `listener.unknown`: every error at its TOML path
//! or CSV line.

use std::net::IpAddr;

use super::{assert_single, edit, paths, Fixture, MINIMAL};
use crate::identity::{Imsi, CSV_HEADER};
use crate::policy::{GroupId, UnknownSource};

/// MINIMAL with a second group `farm`, a CSV file and `extra` appended.
fn with_sims(fx: &Fixture, csv: Option<&str>, extra: &str) -> String {
    let mut text = String::new();
    if let Some(csv) = csv {
        std::fs::write(fx.path().join("sims.csv"), csv).unwrap();
        text.push_str("[gateway]\nsims_file = \"sims.csv\"\n");
    }
    text.push_str(MINIMAL);
    text.push_str("\n[[group]]\nname = \"farm\"\n");
    text.push_str(extra);
    text
}

/// One line per error, as `ConfigError` prints them.
fn lines(fx: &Fixture, text: &str) -> Vec<String> {
    fx.errors(text)
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}

const TOML_SIMS: &str = r#"
[[sim]]
imsi = "440101234567890"
ip = "10.0.0.7"
imei = "356938035643809"
msisdn = "+818012345678"
sim_id = "sim-7"
name = "Tokyo plant 3"
group = "farm"
tags = { site = "tokyo", model = "x2" }

[[sim]]
imsi = "001010000000001"
ip = "2001:db8::7"
group = "default"
"#;

#[test]
fn toml_and_csv_sims_compile_into_one_table() {
    let fx = Fixture::new();
    let csv = format!(
        "{CSV_HEADER}\n\
         440100000000001,10.0.0.8,,09012345678,,\"Osaka, line 2\",farm,site=osaka\n\
         440100000000002,,,,,,default,\n"
    );
    let plan = fx
        .compile(&with_sims(&fx, Some(&csv), TOML_SIMS))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.sims.len(), 4);
    let (sim, group) = plan.identify("10.0.0.7".parse().unwrap()).unwrap();
    assert_eq!(group, GroupId(1));
    assert_eq!(plan.groups[1].name, "farm");
    assert_eq!(sim.imsi().to_string(), "440101234567890");
    assert_eq!(sim.name(), Some("Tokyo plant 3"));
    assert_eq!(sim.tag("model"), Some("x2"));
    let (sim, group) = plan.identify("10.0.0.8".parse().unwrap()).unwrap();
    assert_eq!((sim.name(), group), (Some("Osaka, line 2"), GroupId(1)));
    assert_eq!(sim.msisdn().unwrap().to_string(), "09012345678");
    let (sim, group) = plan.identify("2001:db8::7".parse().unwrap()).unwrap();
    assert_eq!(
        (sim.imsi().to_string().as_str(), group),
        ("001010000000001", GroupId(0))
    );
    assert!(plan.identify(IpAddr::from([10, 0, 0, 9])).is_none());
    let bare = plan
        .sims
        .by_imsi(Imsi::parse("440100000000002").unwrap())
        .unwrap();
    assert_eq!((bare.ip(), bare.group_index()), (None, 0));
    // Listeners default to serving unknown sources in the default group.
    assert_eq!(plan.listeners[0].unknown, UnknownSource::Default);
}

#[test]
fn a_config_without_sims_has_an_empty_table() {
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.sims.is_empty());
    assert!(plan.identify(IpAddr::from([10, 0, 0, 1])).is_none());
}

#[test]
fn each_sim_error_is_reported_at_its_path_or_line() {
    let fx = Fixture::new();
    let csv = format!(
        "{CSV_HEADER}\n\
         12ab,10.0.0.1,,,,,farm,\n\
         440100000000003,10.0.0.300,1234,+81-80,a b,,farm,site\n\
         440100000000004,,,,,,,\n\
         440100000000005,,,,,,nowhere,x=1;;y=2\n\
         440100000000006,,,\n\
         440100000000007,,,,,\"unterminated,farm,\n"
    );
    let toml = r#"
[[sim]]
imsi = "44010000000000x"
ip = "::"
group = "farm"
tags = { Site = "a" }

[[sim]]
imsi = "440100000000010"
group = "farms"
name = ""
"#;
    let got = lines(&fx, &with_sims(&fx, Some(&csv), toml));
    let want = [
        "sim[0].imsi: \"44010000000000x\" is not 14–15 digits",
        "sim[0].ip: :: cannot be a device's source address",
        "sim[0].tags: tag key \"Site\": use 1 to 64 characters from a-z, 0-9, '_' and '-'",
        "sim[1].group: \"farms\" names no [[group]]",
        "sim[1].name: \"\": use 1 to 255 printable ASCII characters (spaces inside only)",
        "sims.csv:2: imsi \"12ab\" is not 14–15 digits",
        "sims.csv:3: ip \"10.0.0.300\" is not an IPv4 or IPv6 address",
        "sims.csv:3: imei \"1234\" is not 14–16 digits",
        "sims.csv:3: msisdn \"+81-80\" is not 5–15 digits with an optional leading '+'",
        "sims.csv:3: sim_id \"a b\": use 1 to 255 printable ASCII characters without spaces",
        "sims.csv:3: tags tag \"site\" is not key=value",
        "sims.csv:4: group missing (required)",
        "sims.csv:5: group \"nowhere\" names no [[group]]",
        "sims.csv:5: tags empty tag (two ';' in a row, or one at an end)",
        "sims.csv:6: 4 fields; every row has 8 (imsi,ip,imei,msisdn,sim_id,name,group,tags)",
        "sims.csv:7: a quoted field has no closing quote (fields cannot span lines)",
    ];
    assert_eq!(got, want);
}

#[test]
fn duplicates_within_and_across_sources_name_both_places() {
    let fx = Fixture::new();
    let csv = format!(
        "{CSV_HEADER}\n\
         440101234567890,10.0.0.9,,,,,farm,\n\
         440100000000001,10.0.0.7,,,,,farm,\n\
         440100000000002,2001:db8::1,,,,,farm,\n\
         440100000000002,2001:db8:0:0::1,,,,,farm,\n"
    );
    let got = lines(&fx, &with_sims(&fx, Some(&csv), TOML_SIMS));
    let want = [
        "sims.csv:2: duplicate imsi \"440101234567890\" (first at sim[0].imsi)",
        "sims.csv:3: duplicate ip \"10.0.0.7\" (first at sim[0].ip)",
        "sims.csv:5: duplicate imsi \"440100000000002\" (first at sims.csv:4)",
        "sims.csv:5: duplicate ip \"2001:db8::1\" (first at sims.csv:4)",
    ];
    assert_eq!(got, want);
    // Within TOML.
    let toml = format!("{TOML_SIMS}\n[[sim]]\nimsi = \"001010000000001\"\ngroup = \"farm\"\n");
    let error = fx.errors(&with_sims(&fx, None, &toml));
    assert_single(
        &error,
        "sim[2].imsi",
        "duplicate imsi \"001010000000001\" (first at sim[1].imsi)",
    );
}

#[test]
fn a_huge_bad_file_reports_the_first_20_and_a_count() {
    let fx = Fixture::new();
    let mut csv = format!("{CSV_HEADER}\n");
    for i in 0..1000 {
        csv.push_str(&format!("bad{i},,,,,,farm,\n"));
    }
    let got = lines(&fx, &with_sims(&fx, Some(&csv), ""));
    assert_eq!(got.len(), 21, "{got:?}");
    assert_eq!(got[0], "sims.csv:2: imsi \"bad0\" is not 14–15 digits");
    assert_eq!(got[19], "sims.csv:21: imsi \"bad19\" is not 14–15 digits");
    assert_eq!(
        got[20],
        "sims.csv: and 980 more SIM errors (only the first 20 are shown)"
    );
}

#[test]
fn sims_file_problems_name_the_file() {
    let fx = Fixture::new();
    let error = fx.errors(&edit(
        &with_sims(&fx, Some(""), ""),
        "sims_file = \"sims.csv\"",
        "sims_file = \"missing.csv\"",
    ));
    assert_single(&error, "gateway.sims_file", "file not found: ");
    assert!(error.to_string().contains("missing.csv"), "{error}");

    let error = fx.errors(&with_sims(&fx, Some("imsi,ip,group\n"), ""));
    assert_single(
        &error,
        "sims.csv:1",
        "the header row must be exactly \"imsi,ip,imei,msisdn,sim_id,name,group,tags\", got \"imsi,ip,group\"",
    );

    std::fs::write(
        fx.path().join("latin1.csv"),
        [
            format!("{CSV_HEADER}\n440100000000001,,,,,").as_bytes(),
            b"M\xfcnchen",
            b",farm,\n",
        ]
        .concat(),
    )
    .unwrap();
    let error = fx.errors(&edit(
        &with_sims(&fx, Some(""), ""),
        "\"sims.csv\"",
        "\"latin1.csv\"",
    ));
    assert_single(&error, "gateway.sims_file", "latin1.csv:2: not UTF-8 text");
}

#[test]
fn sim_entries_deny_unknown_keys_and_need_imsi_and_group() {
    let fx = Fixture::new();
    let error = fx.errors(&with_sims(
        &fx,
        None,
        "[[sim]]\nimsi = \"440101234567890\"\ngroup = \"farm\"\nimsii = \"1\"\n",
    ));
    assert_eq!(paths(&error), ["sim[0].imsii"], "{error}");
    let error = fx.errors(&with_sims(&fx, None, "[[sim]]\ngroup = \"farm\"\n"));
    assert_eq!(paths(&error), ["sim[0]"], "{error}");
    assert!(
        error.to_string().contains("missing field `imsi`"),
        "{error}"
    );
    // An IMSI written as a TOML integer would lose leading zeros: it must be a string.
    let error = fx.errors(&with_sims(
        &fx,
        None,
        "[[sim]]\nimsi = 440101234567890\ngroup = \"farm\"\n",
    ));
    assert_eq!(paths(&error), ["sim[0].imsi"], "{error}");
}

#[test]
fn listener_unknown_is_reject_or_default_on_both_protocols() {
    let fx = Fixture::new();
    let text = edit(
        MINIMAL,
        "bind = \"0.0.0.0:8080\"",
        "bind = \"0.0.0.0:8080\"\nunknown = \"reject\"",
    );
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.listeners[0].unknown, UnknownSource::Reject);
    let text = edit(
        MINIMAL,
        "bind = \"0.0.0.0:8080\"",
        "bind = \"0.0.0.0:8080\"\nunknown = \"default\"",
    );
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.listeners[0].unknown, UnknownSource::Default);
    let text = edit(
        MINIMAL,
        "bind = \"0.0.0.0:8080\"",
        "bind = \"0.0.0.0:8080\"\nunknown = \"drop\"",
    );
    assert_single(
        &fx.errors(&text),
        "listener[0].unknown",
        "unknown value \"drop\"; expected \"reject\" or \"default\"",
    );
    let mqtt = edit(
        super::MQTT_MINIMAL_SESSION,
        "protocol = \"mqtt\"",
        "protocol = \"mqtt\"\nunknown = \"reject\"",
    );
    let plan = fx.compile(&mqtt).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.listeners[0].unknown, UnknownSource::Reject);
}
