//! A churning node: 250 network namespaces created and destroyed over 8 s
//! beside `portd run` (tests/helpers/hostile_churn.py), in a private PID
//! namespace with its own /proc, a private network and mount namespace, a
//! tmpfs over /run and a systemd-journald of its own. Five of them reach
//! critical together for 6 s; the rest hold a quiet tiny range for a
//! fraction of a second, many exiting between the daemon's discovery and
//! its measurement. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

use super::util::{read, root_test, tests_dir};

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

#[test]
fn every_namespace_that_reaches_critical_is_alerted_and_closed_when_it_vanishes() {
    root_test!();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let run = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--net", "--mount"])
        .arg("python3")
        .arg(tests_dir().join("helpers/hostile_churn.py"))
        .arg(env!("CARGO_BIN_EXE_portd"))
        .arg(dir)
        .output()
        .unwrap();
    let daemon_err = std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\ndaemon: {daemon_err}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The churn as the helper saw it: 250 namespaces, 5 held critical.
    let spans: BTreeMap<String, Value> =
        serde_json::from_str(&read(dir, "namespaces.json")).unwrap();
    assert_eq!(spans.len(), 250, "every child held its sockets");
    let critical: BTreeSet<&str> = spans
        .values()
        .filter(|s| s["connections"] == 15)
        .map(|s| s["netns"].as_str().unwrap())
        .collect();
    assert_eq!(critical.len(), 5, "{spans:?}");

    let journal: Vec<Value> = read(dir, "journal.json")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let portd: Vec<&Value> = journal
        .iter()
        .filter(|e| field(e, "SYSLOG_IDENTIFIER") == "portd" || !field(e, "PORTD_EVENT").is_empty())
        .collect();
    assert!(
        !portd.is_empty(),
        "nothing of portd in the journal: {daemon_err}"
    );
    let summary = || {
        portd
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    field(e, "PRIORITY"),
                    field(e, "PORTD_EVENT"),
                    field(e, "PORTD_NETNS"),
                    field(e, "MESSAGE")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every critical namespace alerted, then its alert closed in the
    // journal once it was gone, with its identity.
    for netns in &critical {
        let of_it: Vec<&&Value> = portd
            .iter()
            .filter(|e| field(e, "PORTD_NETNS") == *netns)
            .collect();
        let raised = of_it
            .iter()
            .position(|e| field(e, "PORTD_EVENT") == "usage-critical");
        let Some(raised) = raised else {
            panic!(
                "{netns} reached critical but was not alerted:\n{}",
                summary()
            );
        };
        let closed = of_it[raised..]
            .iter()
            .find(|e| field(e, "PORTD_EVENT") == "netns-gone")
            .unwrap_or_else(|| {
                panic!(
                    "{netns}'s alert was not closed when it vanished:\n{}",
                    summary()
                )
            });
        // Alerted while it held 15 of its 20 ports (for 6 s; polls of
        // 500 ms, on a machine the suite keeps busy); closed within a few
        // polls of its end.
        let span = spans
            .values()
            .find(|s| s["netns"] == *netns && s["connections"] == 15)
            .unwrap();
        let (ready, ended) = (
            span["ready"].as_f64().unwrap(),
            span["gone"].as_f64().unwrap(),
        );
        let at = |e: &Value| field(e, "__MONOTONIC_TIMESTAMP").parse::<f64>().unwrap() / 1e6;
        let alerted = at(of_it[raised]) - ready;
        assert!(
            // (A census may see the ports a moment before the helper
            // notes the time.)
            (-0.1..ended - ready).contains(&alerted),
            "{netns} alerted {alerted:.2}s after it held its ports:\n{}",
            summary()
        );
        let closed_after = at(closed) - ended;
        assert!(
            (0.0..5.0).contains(&closed_after),
            "{netns}'s alert closed {closed_after:.2}s after it ended:\n{}",
            summary()
        );
        assert_eq!(
            field(closed, "MESSAGE_ID"),
            portd::publish::events::Kind::NetnsGone.message_id()
        );
        assert_eq!(field(closed, "PRIORITY"), "5", "{closed:#}");
        assert!(
            field(closed, "MESSAGE").contains(&format!("({netns}")),
            "{closed:#}"
        );
    }
    // No other namespace alerted: the quiet ones hold 2 of 20 ports.
    for e in &portd {
        if field(e, "PORTD_EVENT").starts_with("usage-") {
            assert!(
                critical.contains(field(e, "PORTD_NETNS")),
                "{e:#}\n{}",
                summary()
            );
        }
    }

    // No error or warning for a namespace that vanished: every entry at
    // warning or above is a usage alert.
    let loud: Vec<&&Value> = portd
        .iter()
        .filter(|e| field(e, "PRIORITY").parse::<u8>().unwrap_or(7) <= 4)
        .filter(|e| !field(e, "PORTD_EVENT").starts_with("usage-"))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}\n{}", summary());

    // The daemon kept running, and stops cleanly.
    assert_eq!(read(dir, "daemon.alive").trim(), "yes", "{daemon_err}");
    assert_eq!(read(dir, "daemon.rc").trim(), "0", "{daemon_err}");

    // Gone from the live view and the metrics.
    let live: Value = serde_json::from_str(&read(dir, "live.json")).unwrap();
    assert_eq!(
        live["namespaces"].as_array().map_or(0, Vec::len),
        0,
        "{live:#}"
    );
    let metrics = read(dir, "metrics.txt");
    assert!(metrics.contains("portd_netns_watched 0\n"), "{metrics}");
    assert!(!metrics.contains("portd_netns_alert_level{"), "{metrics}");
}
