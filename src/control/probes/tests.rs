//! The probe board on a virtual clock: schedule, overlap, state changes, reloads.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Board, Outcome, Report, Stage, StateChange};
use crate::policy::Plan;

const INTERVAL: Duration = Duration::from_secs(30);

fn plan(names: &[&str], interval: Option<Duration>) -> Arc<Plan> {
    let mut destinations = String::new();
    for n in names {
        destinations.push_str(&format!(
            "[[destination]]\nname = \"{n}\"\nadapter = \"https\"\nendpoint = \"127.0.0.1:443\"\n\
             server_name = \"localhost\"\nresolve_interval = \"off\"\n"
        ));
    }
    let probe = match interval {
        None => "interval = \"off\"".to_owned(),
        Some(d) => format!("interval = \"{}ms\"", d.as_millis()),
    };
    let first = names.first().copied().unwrap_or("x");
    let toml = format!(
        "[gateway]\nshards = 1\n[[listener]]\nname = \"http\"\nprotocol = \"http\"\n\
         bind = \"127.0.0.1:0\"\n{destinations}[[group]]\nname = \"default\"\n\
         routes = [ {{ listener = \"http\", path = \"/\", destination = \"{first}\" }} ]\n\
         [probe]\n{probe}\n"
    );
    Arc::new(
        crate::config::compile_str(&toml, std::path::Path::new(".")).expect("test config compiles"),
    )
}

fn ok() -> Report {
    Report {
        stage_times: [Some(Duration::from_millis(1)); 3],
        outcome: Outcome::Ok {
            detail: "HTTP 404".into(),
            http_status: Some(404),
        },
        started_at: SystemTime::UNIX_EPOCH,
    }
}

fn failed(stage: Stage) -> Report {
    Report {
        stage_times: [Some(Duration::from_millis(1)), None, None],
        outcome: Outcome::Failed {
            stage,
            error: "timed out".into(),
        },
        started_at: SystemTime::UNIX_EPOCH,
    }
}

#[test]
fn first_probe_one_interval_after_start_then_every_interval_after_completion() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a"], Some(INTERVAL)), t0);
    assert!(b.start_due(t0).is_empty());
    assert_eq!(b.next_due(), Some(t0 + INTERVAL));
    let due = b.start_due(t0 + INTERVAL);
    assert_eq!(due.len(), 1);
    // Running: not due again, however late, until it completes.
    assert!(b.start_due(t0 + INTERVAL * 5).is_empty());
    assert_eq!(b.next_due(), None);
    let done_at = t0 + INTERVAL + Duration::from_secs(2);
    b.complete(due[0], ok(), done_at);
    assert_eq!(b.next_due(), Some(done_at + INTERVAL));
}

#[test]
fn only_state_changes_are_reported() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a"], Some(INTERVAL)), t0);
    let mut now = t0;
    let mut step = |b: &mut Board, r: Report| {
        now += INTERVAL;
        let due = b.start_due(now);
        assert_eq!(due.len(), 1);
        b.complete(due[0], r, now)
    };
    assert_eq!(
        step(&mut b, ok()),
        Some(StateChange::Ok {
            name: "a".into(),
            after_failures: 0
        })
    );
    assert_eq!(step(&mut b, ok()), None);
    assert_eq!(
        step(&mut b, failed(Stage::Tls)),
        Some(StateChange::Failed {
            name: "a".into(),
            error: "tls: timed out".into()
        })
    );
    assert_eq!(step(&mut b, failed(Stage::Tls)), None);
    assert_eq!(step(&mut b, failed(Stage::Exchange)), None);
    assert_eq!(
        step(&mut b, ok()),
        Some(StateChange::Ok {
            name: "a".into(),
            after_failures: 3
        })
    );
    let json = b.json();
    let d = &json["destinations"][0];
    assert_eq!(d["ok_total"], 3);
    assert_eq!(d["failed_total"], 3);
    assert_eq!(d["consecutive_failures"], 0);
    assert_eq!(d["last"]["http_status_class"], "4xx");
}

#[test]
fn a_first_probe_that_fails_is_a_state_change() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a"], Some(INTERVAL)), t0);
    let due = b.start_due(t0 + INTERVAL);
    assert!(matches!(
        b.complete(due[0], failed(Stage::Connect), t0 + INTERVAL),
        Some(StateChange::Failed { .. })
    ));
}

#[test]
fn reload_keeps_history_by_name_and_drops_results_of_the_old_plan() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a", "b"], Some(INTERVAL)), t0);
    let due = b.start_due(t0 + INTERVAL);
    assert_eq!(due.len(), 2);
    b.complete(due[0], failed(Stage::Connect), t0 + INTERVAL);
    // "b" is still running when the reload lands.
    let t1 = t0 + INTERVAL + Duration::from_secs(1);
    b.rebuild(plan(&["a", "c"], Some(INTERVAL)), t1);
    assert_eq!(
        b.complete(due[1], ok(), t1),
        None,
        "old plan's result dropped"
    );
    let json = b.json();
    let names: Vec<&str> = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["destination"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(json["destinations"][0]["consecutive_failures"], 1);
    assert_eq!(json["destinations"][1]["result"], "pending");
    // "a" keeps its schedule; "c" is due one interval after the reload.
    let a_due = t0 + INTERVAL * 2;
    assert_eq!(b.next_due(), Some(a_due));
    assert_eq!(b.start_due(a_due).len(), 1);
    assert_eq!(b.start_due(t1 + INTERVAL).len(), 1);
}

#[test]
fn off_probes_nothing_and_renders_nothing() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a"], None), t0);
    assert!(b.start_due(t0 + Duration::from_secs(86400)).is_empty());
    assert_eq!(b.next_due(), None);
    let mut text = String::new();
    b.render_metrics(&mut text);
    assert!(text.is_empty());
}

#[test]
fn metrics_show_stage_success_and_times() {
    let t0 = Instant::now();
    let mut b = Board::new(plan(&["a"], Some(INTERVAL)), t0);
    let mut text = String::new();
    b.render_metrics(&mut text);
    assert!(text.contains("simgate_probe_total{destination=\"a\",result=\"ok\"} 0"));
    assert!(
        !text.contains("simgate_probe_success{"),
        "nothing before the first probe"
    );
    let due = b.start_due(t0 + INTERVAL);
    b.complete(due[0], failed(Stage::Tls), t0 + INTERVAL);
    let mut text = String::new();
    b.render_metrics(&mut text);
    for line in [
        "simgate_probe_success{destination=\"a\",stage=\"connect\"} 1",
        "simgate_probe_success{destination=\"a\",stage=\"tls\"} 0",
        "simgate_probe_success{destination=\"a\",stage=\"exchange\"} 0",
        "simgate_probe_duration_seconds{destination=\"a\",stage=\"connect\"} 0.001",
        "simgate_probe_total{destination=\"a\",result=\"failed\"} 1",
        "simgate_probe_consecutive_failures{destination=\"a\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains("stage=\"tls\"} 0.0"),
        "no time for a stage that failed"
    );
    assert!(text.contains("simgate_probe_round_trip_seconds_count{destination=\"a\"} 0"));
    // A passing probe of 3 ms in all lands in the 5 ms bucket, not the 2.5 ms one.
    let due = b.start_due(t0 + INTERVAL * 2);
    b.complete(due[0], ok(), t0 + INTERVAL * 2);
    let mut text = String::new();
    b.render_metrics(&mut text);
    for line in [
        "simgate_probe_round_trip_seconds_bucket{destination=\"a\",le=\"0.0025\"} 0",
        "simgate_probe_round_trip_seconds_bucket{destination=\"a\",le=\"0.005\"} 1",
        "simgate_probe_round_trip_seconds_bucket{destination=\"a\",le=\"+Inf\"} 1",
        "simgate_probe_round_trip_seconds_sum{destination=\"a\"} 0.003",
        "simgate_probe_round_trip_seconds_count{destination=\"a\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[test]
fn no_credential_fails_the_exchange_stage_only() {
    let o = Outcome::NoCredential;
    assert!(o.stage_ok(Stage::Connect) && o.stage_ok(Stage::Tls));
    assert!(!o.stage_ok(Stage::Exchange) && !o.is_ok());
    assert!(o.error().unwrap().contains("no credential"));
}
