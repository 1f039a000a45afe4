//! The alert rules and the dashboard are generated from one source,
//! `packaging/mixin/` (plain jsonnet): the shipped files are the mixin
//! rendered by `packaging/mixin/render.sh`, byte for byte, and every alert
//! carries a summary, a description and a `runbook_url` whose anchor is a
//! section of `docs/runbook.md`, the runbook the packages install.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use super::fleet::{all_rules, repo, rule_files};
use super::util::all_output;

/// Where the packages install the runbook, and so the default base of
/// every `runbook_url` (packaging/mixin/config.libsonnet).
const RUNBOOK_URL: &str = "file:///usr/share/doc/portd/runbook.md";

/// `jsonnet`, or `None` after saying SKIP when it is not installed; when
/// `CI` is set its absence fails the test instead (.ci/run installs it).
fn jsonnet(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("jsonnet"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs jsonnet (Debian package jsonnet), and CI is set: refusing to skip it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIP (needs jsonnet, Debian package jsonnet): {test}"
        );
    }
    found
}

const RENDERED: [&str; 2] = [
    "packaging/prometheus/portd-alerts.yml",
    "packaging/grafana/portd.json",
];

#[test]
fn the_shipped_rules_and_dashboard_are_the_mixin_rendered() {
    let Some(_) = jsonnet("the_shipped_rules_and_dashboard_are_the_mixin_rendered") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("packaging/mixin/render.sh"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "render.sh: {}", all_output(&out));
    for file in RENDERED {
        let rendered = std::fs::read(dir.path().join(file)).unwrap();
        let shipped = std::fs::read(repo().join(file)).unwrap();
        assert!(
            rendered == shipped,
            "{file} is not what packaging/mixin/ renders: run packaging/mixin/render.sh and commit \
             (rendered {} bytes, committed {})",
            rendered.len(),
            shipped.len()
        );
    }
    // Nothing else is written.
    let written: Vec<_> = walk(dir.path());
    assert_eq!(written.len(), RENDERED.len(), "{written:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The anchors of a Markdown page's headings, as GitHub and most renderers
/// make them: lower case, spaces to `-`, other punctuation dropped.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The annotations of each alert of a rendered rule file: (alert, key,
/// value), read line by line (every annotation is one quoted line).
fn annotations(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alert = name.trim().trim_matches('"').to_string();
        }
        for key in ["summary", "description", "runbook_url"] {
            if let Some(value) = t.strip_prefix(&format!("{key}:")) {
                out.push((
                    alert.clone(),
                    key.to_string(),
                    value.trim().trim_matches('"').to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let sections = anchors(&runbook);
    let mut problems = Vec::new();
    let mut annotated = Vec::new();
    for file in rule_files() {
        annotated.extend(annotations(&std::fs::read_to_string(&file).unwrap()));
    }
    for rule in all_rules().iter().filter(|r| r.kind == "alert") {
        let value = |key: &str| {
            annotated
                .iter()
                .find(|(a, k, _)| *a == rule.name && k == key)
                .map(|(_, _, v)| v.as_str())
        };
        for key in ["summary", "description"] {
            if value(key).is_none_or(|v| v.len() < 20) {
                problems.push(format!("{}: no {key}", rule.name));
            }
        }
        let want = format!("{RUNBOOK_URL}#{}", rule.name.to_lowercase());
        match value("runbook_url") {
            Some(url) if url == want => {}
            other => problems.push(format!("{}: runbook_url {other:?}, not {want}", rule.name)),
        }
        if !sections.contains(&rule.name.to_lowercase()) {
            problems.push(format!(
                "{}: docs/runbook.md has no section `## {}`",
                rule.name, rule.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every runbook section of an alert names one that exists.
    let names: BTreeSet<String> = all_rules().iter().map(|r| r.name.to_lowercase()).collect();
    for section in sections
        .iter()
        .filter(|s| s.starts_with("portd") && !s.contains('-'))
    {
        assert!(
            names.contains(section),
            "docs/runbook.md: section {section} names no alert"
        );
    }
}

#[test]
fn the_runbook_checks_see_a_missing_section_and_a_missing_annotation() {
    assert!(anchors("# Title\n## PortdSomething\n").contains("portdsomething"));
    assert!(anchors("## Counting ports with ss\n").contains("counting-ports-with-ss"));
    let text = "      - alert: \"PortdX\"\n        annotations:\n          summary: \"s\"\n";
    let found = annotations(text);
    assert_eq!(found, [("PortdX".into(), "summary".into(), "s".into())]);
    assert!(!found.iter().any(|(_, k, _)| k == "runbook_url"));
}

/// The packages install the runbook where the rules' links point.
#[test]
fn both_packages_install_the_runbook_the_rules_link_to() {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let deb = "[\"docs/runbook.md\", \"usr/share/doc/portd/runbook.md\", \"644\"]";
    let rpm = "{ source = \"docs/runbook.md\", dest = \"/usr/share/doc/portd/runbook.md\"";
    assert!(cargo.contains(deb), "the .deb's assets lack {deb}");
    assert!(cargo.contains(rpm), "the .rpm's assets lack {rpm}");
    assert!(RUNBOOK_URL.ends_with("/usr/share/doc/portd/runbook.md"));
}
