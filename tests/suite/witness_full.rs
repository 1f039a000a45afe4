//! The failure witness after a bad minute: thousands of short-lived
//! failing processes (cron jobs, curl loops, forking workers) do not blind
//! it. A new destination failing afterwards is still journaled, counted in
//! the metrics and forces a census; the metrics add up to every failed call
//! the clients saw, nothing dropped; and each failure family of the metrics
//! file stays within its documented number of series, the rest summed in
//! one `other` row.
//!
//! Runs tests/helpers/witness_full.py as PID 1 of a private PID, network and
//! mount namespace with tmpfs over /run and a journald of its own. Needs
//! root.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use super::util::{catalog_path, root_test, tests_dir};

/// Series of one failure family in the metrics file: the documented cap
/// (portd(8), FAILURE WITNESS) plus the `other` row.
const SERIES_CAP: usize = 20 + 1;

const FAMILIES: [&str; 3] = [
    "portd_connect_failures_total",
    "portd_bind_failures_total",
    "portd_udp_autobind_failures_total",
];

fn run_helper(dir: &Path) -> Value {
    let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("own ns");
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            "--mount",
            "python3",
            "-u",
        ])
        .arg(tests_dir().join("helpers/witness_full.py"))
        .arg(ns("net"))
        .arg(ns("mnt"))
        .arg(env!("CARGO_BIN_EXE_portd"))
        .arg(catalog_path())
        .arg(dir)
        .output()
        .expect("run unshare");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "helper output: {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && result.get("error").is_none(),
        "helper failed: {result:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result
}

fn sum(metrics: &Value, name: &str) -> f64 {
    metrics
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s[0] == name)
        .map(|s| s[2].as_f64().expect("value"))
        .sum()
}

fn series(metrics: &Value, name: &str) -> usize {
    metrics
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s[0] == name)
        .count()
}

/// The new destination of a phase: journaled, counted once, a census taken.
fn assert_new_destination_seen(phase: &Value, dest: &str, stderr: &str) {
    assert_eq!(phase["new"], 1, "the new process saw no EADDRNOTAVAIL");
    let after = &phase["after_new"];
    assert!(
        !after["journal"].as_array().expect("journal").is_empty(),
        "{dest} not journaled: {after:#}\nportd: {stderr}"
    );
    let rows = after["rows"].as_array().expect("rows");
    let counted: f64 = rows.iter().map(|r| r[2].as_f64().expect("value")).sum();
    assert_eq!(counted, 1.0, "{dest} in the metrics: {after:#}");
    assert!(
        after["censuses_after"].as_f64() > after["censuses_before"].as_f64(),
        "no census forced by the failure towards {dest}: {after:#}"
    );
}

#[test]
fn a_full_minute_of_short_lived_failing_processes_leaves_the_witness_seeing() {
    root_test!();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let r = run_helper(dir.path());
    let stderr = r["stderr"].as_str().unwrap_or_default();
    eprintln!(
        "witness_full: burst of 4200 in {:.1}s, helper {:.1}s, test {:?}",
        r["burst_seconds"].as_f64().unwrap_or_default(),
        r["seconds"].as_f64().unwrap_or_default(),
        started.elapsed()
    );
    assert_eq!(r["portd_running"], true, "portd: {stderr}");

    // 1. 4200 processes named alike towards one destination, then a new
    // destination.
    let p1 = &r["phase1"];
    assert_eq!(p1["burst"], 4200, "every process of the burst failed");
    assert_new_destination_seen(p1, "127.0.0.1:5202", stderr);
    let m1 = &p1["metrics"];
    assert_eq!(sum(m1, "portd_witness_dropped_total"), 0.0, "{m1}");
    assert_eq!(
        sum(m1, "portd_connect_failures_total"),
        4201.0,
        "the metrics add up to what the clients saw: {m1}"
    );

    // 2. 4200 processes with 4200 names within one poll, then a new
    // destination: still seen, still all counted, the series bounded.
    let p2 = &r["phase2"];
    assert_eq!(p2["burst"], 4200, "every process of the burst failed");
    assert_new_destination_seen(p2, "127.0.0.1:5204", stderr);
    let m2 = &p2["metrics"];
    assert_eq!(sum(m2, "portd_witness_dropped_total"), 0.0, "{m2}");
    assert_eq!(
        sum(m2, "portd_connect_failures_total"),
        2.0 * 4201.0,
        "the metrics add up to what the clients saw: {m2}"
    );
    // 4200 names in one poll do not fit the witness's per-process map: the
    // rest were counted per destination alone (an empty comm label).
    let per_destination_alone: f64 = m2
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| {
            s[0] == "portd_connect_failures_total"
                && s[1]["remote_port"] == "5203"
                && s[1]["comm"] == ""
        })
        .map(|s| s[2].as_f64().expect("value"))
        .sum();
    assert!(
        per_destination_alone >= 4200.0 - 4096.0,
        "the per-process map did not fill: {m2}"
    );
    for family in FAMILIES {
        assert!(
            series(m2, family) <= SERIES_CAP,
            "{family}: {} series, more than {SERIES_CAP}",
            series(m2, family)
        );
    }
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}
