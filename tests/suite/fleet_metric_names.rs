//! Every metric an alert rule or a dashboard panel uses is one that portd
//! writes: declared (`# TYPE`) in the metrics file of a real `portd run` in a
//! private network namespace under load, so the per-destination series and
//! a range change exist. Names that are not portd's are allowed by a short
//! list (fleet.rs NOT_PORTD); names of changes not landed yet are reported as
//! pending (fleet.rs PENDING).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::daemon_metrics::parse_textfile;
use super::fleet::{
    all_rules, check_names, check_names_with, dashboard, declared, used_metric_names,
};
use super::portd_child::start_ready;
use super::sandbox::Sandbox;
use super::util::{root_test, write_policy};

/// `portd run` in auto mode in the sandbox, 100 connections held towards
/// 127.0.0.1:5001 in a range of 200 (critical: portd widens), the failure
/// witness on. Returns the metrics file once it shows the destination, the
/// range change and the witness.
fn metrics_under_load() -> String {
    let mut sandbox = Sandbox::with_range("40000 40199", false);
    // The failure witness needs tracefs: the sandbox's own mount (as in
    // witness_daemon.rs), so that its families are declared too.
    sandbox.mount_tracefs();
    sandbox.ramp(100, 500);
    assert_eq!(sandbox.wait_ramp(), (100, None));
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("portd.prom");
    let policy = dir.path().join("policy.toml");
    write_policy(
        &policy,
        &format!(
            "[poll]\ninterval = \"100ms\"\n\n[thresholds]\nhold = \"0s\"\n\n\
             [widen]\nmode = \"auto\"\n\n[metrics]\nfile = {:?}\n",
            prom.display().to_string()
        ),
    );
    let cmd = sandbox.portd(&[
        "--config",
        policy.to_str().unwrap(),
        "run",
        "--log-target",
        "stderr",
    ]);
    let (mut portd, _notify) = start_ready(cmd, dir.path(), false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        if !text.is_empty() {
            let samples = parse_textfile(&text);
            let changed = samples
                .iter()
                .any(|s| s.name == "portd_range_changes_total" && s.value >= 1.0);
            let towards = samples.iter().any(|s| {
                s.name == "portd_destination_used_ports"
                    && s.labels.get("remote").map(String::as_str) == Some("127.0.0.1")
                    && s.labels.get("remote_port").map(String::as_str) == Some("5001")
                    && s.value >= 100.0
            });
            let witness = samples
                .iter()
                .any(|s| s.name == "portd_witness_active" && s.value == 1.0);
            if changed && towards && witness && text.contains("portd_last_change_timestamp_seconds")
            {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no metrics file with the destination, a range change and the witness on within 10 s:\n{text}\nstderr:\n{}",
            portd.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(portd.stop().0.success(), "{}", portd.stderr());
    sandbox.release();
    text
}

fn report_pending(pending: &[String]) {
    if !pending.is_empty() {
        // Straight to stderr: visible in `cargo test` output even on success.
        let _ = writeln!(
            std::io::stderr(),
            "PENDING (metrics of issues not landed yet, used by the dashboard, not checked):\n  {}",
            pending.join("\n  ")
        );
    }
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_declared_by_portd_run() {
    root_test!();
    let text = metrics_under_load();
    let declared = declared(&text);
    assert!(declared.len() >= 25, "{declared:?}");
    let used = used_metric_names(&all_rules(), &dashboard());
    assert!(used.len() >= 25, "{used:#?}");
    let check = check_names(&used, &declared);
    report_pending(&check.pending_used);
    assert!(
        check.passed(),
        "metric names:\n  {}",
        [&check.undeclared[..], &check.pending_declared[..]]
            .concat()
            .join("\n  ")
    );

    // The same check fails on a renamed metric, in the rules or in portd.
    let renamed_rule = all_rules()
        .into_iter()
        .map(|mut r| {
            r.expr = r.expr.replace("portd_alert_level", "portd_alert_lvl");
            r
        })
        .collect::<Vec<_>>();
    let check = check_names(&used_metric_names(&renamed_rule, &dashboard()), &declared);
    assert!(!check.passed());
    assert!(
        check
            .undeclared
            .iter()
            .any(|u| u.starts_with("portd_alert_lvl ")
                && u.contains("rule PortdEphemeralPortsWarning")),
        "{check:?}"
    );
    let renamed_metric = text.replace(
        "portd_destination_usage_ratio",
        "portd_destination_usage_fraction",
    );
    let check = check_names(&used, &super::fleet::declared(&renamed_metric));
    assert!(!check.passed());
    assert!(
        check
            .undeclared
            .iter()
            .any(|u| u.starts_with("portd_destination_usage_ratio ")
                && u.contains("Usage per top destination")),
        "{check:?}"
    );
}

fn used(names: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    names
        .iter()
        .map(|(n, at)| (n.to_string(), vec![at.to_string()]))
        .collect()
}

#[test]
fn the_name_check_fails_on_a_renamed_metric_and_reports_pending_ones() {
    let declared: BTreeSet<String> = ["portd_alert_level", "portd_headline_usage_ratio"]
        .map(String::from)
        .into();
    let ok = check_names(
        &used(&[
            ("portd_alert_level", "rule A"),
            ("ALERTS", "panel 4"),
            ("node_textfile_scrape_error", "panel 9"),
        ]),
        &declared,
    );
    assert!(ok.passed() && ok.pending_used.is_empty(), "{ok:?}");

    let renamed = check_names(&used(&[("portd_alert_levels", "rule A")]), &declared);
    assert!(!renamed.passed());
    assert_eq!(
        renamed.undeclared,
        ["portd_alert_levels is not declared by `portd run`'s metrics file, used by rule A"]
    );

    let pending = [("portd_next_metric_seconds", "the next release")];
    let uses_it = used(&[("portd_next_metric_seconds", "panel 3")]);
    let waiting = check_names_with(&uses_it, &declared, &pending);
    assert!(waiting.passed());
    assert_eq!(
        waiting.pending_used,
        ["portd_next_metric_seconds (the next release), used by panel 3"]
    );
    // Not pending: the same use fails.
    assert!(!check_names_with(&uses_it, &declared, &[]).passed());
    // Once portd declares it, the pending entry must go.
    let mut landed = declared.clone();
    landed.insert("portd_next_metric_seconds".to_string());
    let stale = check_names_with(&uses_it, &landed, &pending);
    assert!(!stale.passed(), "{stale:?}");
    assert!(
        stale.pending_declared[0].contains("remove it from PENDING"),
        "{stale:?}"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| {
        super::fleet::metric_names(e)
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            "portd_widening_blocked{reason!=\"advise\"} == 1 and ignoring(reason) portd_alert_level >= 1"
        ),
        ["portd_alert_level", "portd_widening_blocked"]
    );
    assert_eq!(
        names("sort_desc(max by (instance) (portd_headline_usage_ratio)) or vector(0)"),
        ["portd_headline_usage_ratio"]
    );
    assert_eq!(
        names(
            "sum without (comm) (rate(a_total{x=\"b_c{}\"}[5m] offset 1h)) / on (instance) group_left (mode) portd_info < +Inf"
        ),
        ["a_total", "portd_info"]
    );
    assert_eq!(
        names("count(ALERTS{alertstate=\"firing\", alertname=~\"Portd.*\"}) + time() - 1e3"),
        ["ALERTS"]
    );
}
