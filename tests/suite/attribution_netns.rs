//! `portd status --processes` names the processes that hold a destination's
//! sockets, including those of other users (needs root).
//!
//! The `attribution` scenario of tests/helpers/netns_sockets.py, range
//! 40000-40099, tcp_tw_reuse=0:
//!   127.0.0.1:5001  7 sockets of `portd-exec-nb` (nobody, after exec) + 3 TIME_WAIT
//!   127.0.0.1:5002  4 sockets of `portd-fork-nb` (nobody, forked without exec)
//!   127.0.0.1:5003  2 sockets of `portd-nsroot` (root, the helper itself)

use serde_json::{Value, json};

use super::util::{Netns, require_root, stdout_json};

fn attribution_of(report: &Value, remote_port: u16) -> Value {
    let d = report["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["remote"] == "127.0.0.1" && d["remote_port"] == remote_port)
        .unwrap_or_else(|| panic!("no destination 127.0.0.1:{remote_port}: {report:#}"));
    assert_eq!(d["local"], "127.0.0.1");
    d["attribution"].clone()
}

fn status_with_processes(ns: &Netns) -> Value {
    let out = ns.portd(&["status", "--json", "--top", "0", "--processes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stdout_json(&out)
}

#[test]
fn attribution_names_process_of_other_user() {
    require_root!();
    let ns = Netns::start("attribution", &[]);
    let holder = &ns.ready["exec_holder"];
    assert_eq!(holder["uid"], 65534);
    let report = status_with_processes(&ns);

    assert_eq!(
        attribution_of(&report, 5001),
        json!({
            "processes": [{"pid": holder["pid"], "command": "portd-exec-nb", "uid": 65534, "sockets": 7}],
            "without_inode": 3,
            "not_found": 0,
        }),
        "7 sockets of nobody's process, 3 TIME_WAIT without a process"
    );
    assert_eq!(
        attribution_of(&report, 5003),
        json!({
            "processes": [{"pid": ns.ready["root_pid"], "command": "portd-nsroot", "uid": 0, "sockets": 2}],
            "without_inode": 0,
            "not_found": 0,
        })
    );
    let note = report["attribution_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("inode 0"),
        "the report should say why some sockets have no process: {note:?}"
    );
}

#[test]
fn attribution_reports_uid_of_process_that_dropped_privileges_without_exec() {
    // Daemon workers (nginx, sshd) setuid() without exec: they are not
    // dumpable, so /proc/PID is owned by root, yet they run as another user.
    require_root!();
    let ns = Netns::start("attribution", &[]);
    let holder = &ns.ready["fork_holder"];
    assert_eq!(holder["uid"], 65534);
    let report = status_with_processes(&ns);
    assert_eq!(
        attribution_of(&report, 5002),
        json!({
            "processes": [{"pid": holder["pid"], "command": "portd-fork-nb", "uid": 65534, "sockets": 4}],
            "without_inode": 0,
            "not_found": 0,
        })
    );
}
