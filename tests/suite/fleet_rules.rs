//! The alert rules of `packaging/prometheus/` are valid, and proven by
//! `promtool test rules` (tests/prometheus/*.test.yml): every alert has a
//! case where it fires, with its labels and annotations, and one where it
//! stays quiet. A rule added later without such cases fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;

use super::fleet::{Rule, all_rules, promtool, rule_files, rule_test_files, rules, run_promtool};

/// What the unit tests of the rules cover: per alert name, the text of each
/// firing case (its expected labels and annotations), and whether a case
/// expects it quiet.
#[derive(Debug, Default)]
struct Coverage {
    firing: BTreeMap<String, Vec<String>>,
    quiet: BTreeSet<String>,
}

/// Reads the `alert_rule_test` items of the test files line by line: an
/// `alertname:`, then `exp_alerts: []` (quiet) or `exp_alerts:` followed by
/// the expected alerts (firing).
fn coverage(files: &[std::path::PathBuf]) -> Coverage {
    let mut cov = Coverage::default();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut alertname: Option<String> = None;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            if t.starts_with("eval_time:") {
                alertname = None;
            } else if let Some(name) = t.strip_prefix("alertname:") {
                alertname = Some(name.trim().to_string());
            } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
                let name = alertname.clone().unwrap_or_else(|| {
                    panic!("{}:{}: exp_alerts without alertname", file.display(), i + 1)
                });
                if rest.trim() == "[]" {
                    cov.quiet.insert(name);
                } else {
                    let own = line.len() - line.trim_start().len();
                    let block: Vec<&str> = lines[i + 1..]
                        .iter()
                        .take_while(|l| l.len() - l.trim_start().len() > own || l.trim().is_empty())
                        .copied()
                        .collect();
                    assert!(
                        block.iter().any(|l| l.contains("exp_labels:")),
                        "{}:{}: a firing case of {name} without exp_labels",
                        file.display(),
                        i + 1
                    );
                    cov.firing.entry(name).or_default().push(block.join("\n"));
                }
            }
        }
    }
    cov
}

/// What is missing from the coverage of `rules`, one line per gap.
fn gaps(rules: &[Rule], cov: &Coverage) -> Vec<String> {
    let mut gaps = Vec::new();
    for r in rules.iter().filter(|r| r.kind == "alert") {
        let firing = cov.firing.get(&r.name);
        if firing.is_none() {
            gaps.push(format!("{} ({}): no case where it fires", r.name, r.at));
        }
        if !cov.quiet.contains(&r.name) {
            gaps.push(format!(
                "{} ({}): no case where it stays quiet",
                r.name, r.at
            ));
        }
        if let Some(cases) = firing {
            if !cases.iter().any(|c| c.contains("exp_annotations:")) {
                gaps.push(format!(
                    "{} ({}): no firing case checks its annotations",
                    r.name, r.at
                ));
            }
            // A rule over per-namespace series must name the namespace.
            if r.expr.contains("portd_netns_") && !cases.iter().any(|c| c.contains("netns:")) {
                gaps.push(format!(
                    "{} ({}): no firing case expects its netns label",
                    r.name, r.at
                ));
            }
        }
    }
    gaps
}

#[test]
fn every_alert_rule_has_a_case_where_it_fires_and_one_where_it_stays_quiet() {
    let rules = all_rules();
    let alerts: Vec<_> = rules.iter().filter(|r| r.kind == "alert").collect();
    assert!(alerts.len() >= 8, "{alerts:#?}");
    let tests = rule_test_files();
    assert!(!tests.is_empty(), "no tests/prometheus/*.test.yml");
    let cov = coverage(&tests);
    let gaps = gaps(&rules, &cov);
    assert!(
        gaps.is_empty(),
        "alert rules without unit tests in tests/prometheus/:\n  {}",
        gaps.join("\n  ")
    );
    // Every case names an alert that exists (no test of a renamed rule).
    let names: BTreeSet<&str> = alerts.iter().map(|r| r.name.as_str()).collect();
    for tested in cov.firing.keys().chain(&cov.quiet) {
        assert!(
            names.contains(tested.as_str()),
            "tests name {tested}, no rule has that name"
        );
    }
}

#[test]
fn the_coverage_check_reports_an_untested_rule() {
    let rule = Rule {
        kind: "alert".into(),
        name: "PortdSomethingNew".into(),
        expr: "portd_netns_alert_level == 2".into(),
        at: "new.yml:1".into(),
    };
    let mut cov = Coverage::default();
    assert_eq!(gaps(std::slice::from_ref(&rule), &cov).len(), 2);
    cov.quiet.insert(rule.name.clone());
    cov.firing.insert(
        rule.name.clone(),
        vec!["exp_labels:\n  instance: a\nexp_annotations:\n  summary: x".into()],
    );
    let left = gaps(std::slice::from_ref(&rule), &cov);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("netns label"), "{left:?}");
}

#[test]
fn the_rule_files_pass_promtool_check_rules() {
    let Some(promtool) = promtool("the_rule_files_pass_promtool_check_rules") else {
        return;
    };
    for file in rule_files() {
        let (ok, out) = run_promtool(
            &promtool,
            &[OsStr::new("check"), OsStr::new("rules"), file.as_os_str()],
            Path::new("."),
        );
        assert!(ok, "promtool check rules {}:\n{out}", file.display());
        // The line reader of fleet.rs finds the rules promtool finds.
        let n = rules(&file).len();
        assert!(
            out.contains(&format!("SUCCESS: {n} rules found")),
            "{}: the test's reader found {n} rules, promtool says:\n{out}",
            file.display()
        );
    }
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let Some(promtool) = promtool("the_alert_rules_pass_their_unit_tests") else {
        return;
    };
    let tests = rule_test_files();
    let mut args = vec![OsStr::new("test"), OsStr::new("rules")];
    args.extend(tests.iter().map(|t| t.as_os_str()));
    let (ok, out) = run_promtool(&promtool, &args, Path::new("."));
    assert!(ok, "promtool test rules:\n{out}");
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(
        out.matches("SUCCESS").count(),
        tests.len(),
        "one SUCCESS per test file:\n{out}"
    );
}

/// The unit tests can fail: a rule whose threshold moved (a stale alert
/// after 50 minutes instead of 5) fails its case, and promtool names it.
#[test]
fn a_changed_rule_fails_its_unit_test() {
    let Some(promtool) = promtool("a_changed_rule_fails_its_unit_test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("packaging/prometheus");
    let tests_dir = dir.path().join("tests/prometheus");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::create_dir_all(&tests_dir).unwrap();
    let original = super::fleet::repo().join("packaging/prometheus/portd-alerts.yml");
    let text = std::fs::read_to_string(original).unwrap();
    let changed = text.replace(
        "time() - portd_poll_timestamp_seconds{job=\"node\"} > 300",
        "time() - portd_poll_timestamp_seconds{job=\"node\"} > 3000",
    );
    assert_ne!(
        changed, text,
        "the stale rule's expression moved: update this test"
    );
    std::fs::write(rules_dir.join("portd-alerts.yml"), changed).unwrap();
    let test = super::fleet::repo().join("tests/prometheus/portd-alerts.test.yml");
    let test_copy = tests_dir.join("portd-alerts.test.yml");
    std::fs::copy(test, &test_copy).unwrap();
    let (ok, out) = run_promtool(
        &promtool,
        &[
            OsStr::new("test"),
            OsStr::new("rules"),
            test_copy.as_os_str(),
        ],
        Path::new("."),
    );
    assert!(!ok, "promtool passed a changed rule:\n{out}");
    assert!(out.contains("alertname: PortdMetricsStale"), "{out}");
}
