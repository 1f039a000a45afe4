//! Opt-in widening inside other network namespaces (`[namespaces]`, mode
//! auto; docs/DESIGN.md, "Other network namespaces"), in the sandbox with a
//! PID namespace of its own (its own /proc, tmpfs over /run): two named
//! namespaces `sel` and `other`, each holding 15 connections in a 20-port
//! range of its own (critical), and a policy selecting `netns:sel` only.
//! The daemon widens `sel` (read back with `nsenter --net=/run/netns/sel
//! sysctl`), leaves `other` as it was, journals the change naming the
//! namespace and records its originals; `portd rollback` restores `sel`,
//! or says it is gone when it is (needs root).

use std::time::Duration;

use serde_json::Value;

use super::portd_child::{Portd, wait_for};
use super::sandbox::{STATE, Sandbox};
use super::util::{root_test, tests_dir};

/// Fast polls, no hold, the namespace `sel` selected for auto.
const POLICY: &str = r#"
[poll]
interval = "200ms"
max_staleness = "5m"

[thresholds]
hold = "0s"

[widen]
cooldown = "0s"
max_changes_per_hour = 100

[namespaces]
mode = "auto"
select = ["netns:sel"]
"#;

const FOUND: &str = "40000 40019";
const READY_DIR: &str = "/run/portd-test";

/// A namespace's range and reserved ports, read from inside it the way an
/// operator does.
fn values(ns: &Sandbox, name: &str) -> String {
    ns.sh(&format!(
        "nsenter --net=/run/netns/{name} sysctl -n net.ipv4.ip_local_port_range \
         net.ipv4.ip_local_reserved_ports | tr '\\t\\n' '  '"
    ))
    .trim()
    .to_string()
}

fn range(ns: &Sandbox, name: &str) -> String {
    values(ns, name)
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sandbox with `sel` and `other` loaded past critical, and the
/// inode of `sel`.
fn two_loaded_namespaces() -> (Sandbox, u64) {
    let ns = Sandbox::builder()
        .pid_namespace()
        .journald()
        .policy(POLICY)
        .start();
    ns.sh(&format!(
        "mkdir -p {READY_DIR} && ip netns add sel && ip netns add other"
    ));
    let hold = tests_dir().join("helpers/hold.py");
    for name in ["sel", "other"] {
        // In the background, ended with the sandbox's PID namespace.
        ns.sh(&format!(
            "ip netns exec {name} python3 {} 40000 40019 15 {READY_DIR}/{name}.ready \
             </dev/null >/dev/null 2>&1 &",
            hold.display()
        ));
    }
    wait_for("the holders", Duration::from_secs(10), || {
        ["sel", "other"]
            .iter()
            .all(|n| ns.read_file(&format!("{READY_DIR}/{n}.ready")).is_some())
            .then_some(())
    });
    assert_eq!(range(&ns, "sel"), FOUND);
    assert_eq!(range(&ns, "other"), FOUND);
    let inode: u64 = ns
        .sh("stat -L -c %i /run/netns/sel")
        .trim()
        .parse()
        .unwrap();
    (ns, inode)
}

/// Starts the daemon and waits until it widened `sel`.
fn widened(ns: &Sandbox) -> (Portd, String) {
    let daemon = ns.spawn_daemon(ns.portd(&["run", "--log-target", "journal"]));
    let now = wait_for("sel to be widened", Duration::from_secs(30), || {
        let r = range(ns, "sel");
        (r != FOUND).then_some(r)
    });
    (daemon, now)
}

/// Stops the daemon by its pid in the sandbox's PID namespace (the live
/// view names it; nsenter forked it), and waits until it has exited.
fn stop(ns: &Sandbox, mut daemon: Portd) {
    let live: Value = serde_json::from_str(&ns.read_file("/run/portd/live.json").unwrap()).unwrap();
    let pid = live["pid"].to_string();
    ns.sh(&format!("kill -TERM {pid}"));
    let status = daemon.wait(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} {}",
        daemon.stderr()
    );
}

fn entries<'a>(alerts: &'a [Value], event: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|e| e["PORTD_EVENT"] == event)
        .collect()
}

#[test]
fn a_selected_namespace_is_widened_the_other_left_alone_and_rollback_restores_it() {
    root_test!();
    let (ns, inode) = two_loaded_namespaces();
    let other_before = values(&ns, "other");
    let (daemon, now) = widened(&ns);
    assert!(now.starts_with("40000 "), "upward only: {now}");
    let high: u16 = now.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(high > 40019, "{now}");

    // The change in the journal, naming the namespace.
    let alerts = ns.wait_alerts("range-widened", 1, Duration::from_secs(10));
    let widened = entries(&alerts, "range-widened");
    assert_eq!(widened.len(), 1, "{alerts:#?}");
    let w = widened[0];
    assert_eq!(w["PORTD_NETNS"], format!("net:[{inode}]"), "{w:#}");
    assert_eq!(w["PORTD_RANGE_BEFORE"], "40000-40019", "{w:#}");
    assert_eq!(w["PORTD_RANGE_AFTER"], format!("40000-{high}"), "{w:#}");
    let message = w["MESSAGE"].as_str().unwrap();
    assert!(message.starts_with("in netns sel (net:["), "{message}");

    // A few more polls: the unselected one is still untouched, and only
    // advised.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(values(&ns, "other"), other_before);
    let alerts = ns.portd_alerts();
    assert_eq!(entries(&alerts, "range-widened").len(), 1, "{alerts:#?}");
    assert!(
        entries(&alerts, "usage-critical")
            .iter()
            .any(|e| e["MESSAGE"].as_str().unwrap().contains("in netns other")),
        "{alerts:#?}"
    );
    stop(&ns, daemon);

    // Its originals, keyed by inode and name; nothing of the host's.
    let state = ns.state();
    assert_eq!(state["format_version"], 4);
    assert!(state["original"].is_null(), "{state:#}");
    let records = state["namespaces"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{state:#}");
    assert_eq!(records[0]["key"]["inode"], inode);
    assert_eq!(records[0]["key"]["names"][0], "sel");
    assert_eq!(records[0]["original"]["range"]["high"], 40019);
    assert_eq!(records[0]["last_written"]["range"]["high"], high);

    let said = ns.rollback_ok(&[], &["netns sel", "restored ip_local_port_range"]);
    assert!(
        said.contains(&format!("40000-{high} -> 40000-40019")),
        "{said}"
    );
    assert_eq!(range(&ns, "sel"), FOUND);
    assert_eq!(values(&ns, "other"), other_before);
    let state = ns.read_file(STATE).unwrap();
    assert!(!state.contains("\"namespaces\""), "{state}");
}

#[test]
fn rollback_says_which_widened_namespace_is_gone() {
    root_test!();
    let (ns, inode) = two_loaded_namespaces();
    let (daemon, _) = widened(&ns);
    stop(&ns, daemon);
    // The namespace ends: its processes and its name.
    ns.sh("ip netns pids sel | xargs -r kill -9; ip netns del sel");
    let said = ns.rollback_ok(&[], &["is gone"]);
    assert!(
        said.contains(&format!("netns sel (net:[{inode}]) is gone")),
        "{said}"
    );
    assert!(!said.contains("restored"), "{said}");
    let state = ns.read_file(STATE).unwrap();
    assert!(!state.contains("\"namespaces\""), "forgotten: {state}");
}
