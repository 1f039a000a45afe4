//! Record before writing: the state with the original and the planned
//! values is saved before the first kernel write. A state that cannot be
//! saved means nothing is written; a kill between the record and the write
//! leaves a state that rollback and a restarted daemon read correctly; a
//! version 1 state (today's released format) still rolls back.

use std::time::Duration;

use serde_json::json;

use super::portd_child::wait_for;
use super::sandbox::{DROPIN, STATE, Sandbox};
use super::util::{parse_dropin, root_test, tests_dir};

/// Polls that must pass with the daemon still running (200 ms each).
const SEVERAL_POLLS: Duration = Duration::from_millis(1500);

fn range_json(low: u16, high: u16) -> serde_json::Value {
    json!({"low": low, "high": high})
}

fn time_json() -> serde_json::Value {
    json!({"secs_since_epoch": 1_767_225_600u64, "nanos_since_epoch": 0})
}

/// The state a portd killed after recording a widening of 40000-40099 to
/// 40000-40181 (reserving its listener 40120 next to the admin's 40500),
/// before confirming it, leaves behind.
fn recorded_not_confirmed() -> String {
    json!({
        "format_version": 2,
        "initial_range": range_json(40000, 40099),
        "original": {"range": range_json(40000, 40099), "reserved": "40500"},
        "last_written": null,
        "pending": {
            "range": range_json(40000, 40181),
            "reserved": "40120,40500",
            "newly_reserved": "40120",
            "at": time_json(),
        },
        "dropin": null,
        "added_reserved": "40120",
        "changes": [{
            "at": time_json(),
            "from": range_json(40000, 40099),
            "to": range_json(40000, 40181),
            "reserved_added": "40120",
            "reason": "destination 127.0.0.1 -> 127.0.0.1:8080 at 45.5% (45/99)",
        }],
        "yielded": null,
        "alert": {"level": "warning", "pending": null, "announced": time_json()},
    })
    .to_string()
}

#[test]
fn a_state_that_cannot_be_saved_means_nothing_is_written() {
    root_test!();
    let ns = Sandbox::builder()
        .actuation("40000 40099", "")
        .tmpfs("/var/lib", "size=12k")
        .start();
    // The policy file takes one page; a filler takes the rest, so the
    // state's temp file is created but cannot be written. (Three pages: once
    // the filler is gone, the state and its next temp file need one each.)
    ns.sh("mkdir -p /var/lib/portd; dd if=/dev/zero of=/var/lib/filler bs=4096 count=4 2>/dev/null; true");
    ns.listen(40120);
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &[
            "could not widen 40000-40099 ->",
            "cannot record the original and planned values before writing",
        ],
        Duration::from_secs(10),
    );
    for said in [
        "/var/lib/portd/state.json",
        "No space left on device",
        "nothing was written",
    ] {
        assert!(line.contains(said), "must say {said:?}: {line}");
    }
    std::thread::sleep(SEVERAL_POLLS);
    assert!(daemon.is_running(), "portd exited:\n{}", daemon.stderr());
    assert_eq!(ns.range(), "40000 40099", "written without a record");
    assert_eq!(ns.reserved(), "");
    assert_eq!(ns.read_file(DROPIN), None);
    assert_eq!(ns.read_file(STATE), None);
    let stderr = daemon.stderr();
    assert_eq!(
        stderr.matches("cannot record the original").count(),
        1,
        "reported once, not every poll:\n{stderr}"
    );

    // Space again: the record is saved, then the range widened.
    ns.sh("rm /var/lib/filler");
    daemon.wait_widened("40000-40099");
    // Confirmed (saved just after the event is logged).
    let state = wait_for("the write to be confirmed", Duration::from_secs(5), || {
        ns.try_state()
            .filter(|s| s["pending"].is_null() && !s["last_written"].is_null())
    });
    assert_eq!(
        state["original"],
        json!({"range": range_json(40000, 40099), "reserved": ""}),
        "{state}"
    );
    daemon.stop_ok();
}

#[test]
fn rollback_restores_the_originals_after_a_kill_between_record_and_confirmation() {
    root_test!();
    // The kernel has the planned values; the state only the record.
    let ns = Sandbox::actuation("40000 40181", "40120,40500");
    ns.write_file(STATE, &recorded_not_confirmed());
    ns.rollback_ok(
        &[],
        &[
            "restored ip_local_port_range 40000-40181 -> 40000-40099",
            "removed portd's reserved ports 40120",
        ],
    );
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40500");
    let state = ns.state();
    assert_eq!(state["original"], serde_json::Value::Null, "{state}");
    assert_eq!(state["pending"], serde_json::Value::Null, "{state}");
}

#[test]
fn a_restart_after_a_kill_between_record_and_confirmation_does_not_yield() {
    root_test!();
    let ns = Sandbox::actuation("40000 40181", "40120,40500");
    ns.write_file(STATE, &recorded_not_confirmed());
    ns.listen(40120);
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["the write of 40000-40181 recorded before portd stopped was completed"],
        Duration::from_secs(10),
    );
    let state = wait_for(
        "the drop-in to be persisted",
        Duration::from_secs(10),
        || {
            ns.try_state()
                .filter(|s| s["last_written"]["persisted"] == true)
        },
    );
    assert_eq!(state["yielded"], serde_json::Value::Null, "{state}");
    assert_eq!(state["dropin"], "60-portd.conf", "{state}");
    let dropin = ns.read_file(DROPIN).expect("no drop-in");
    assert!(
        parse_dropin(&dropin).contains(&(
            "net.ipv4.ip_local_port_range".to_string(),
            "40000 40181".to_string()
        )),
        "{dropin}"
    );
    let stderr = daemon.stop_ok();
    assert!(!stderr.contains("by someone else"), "{stderr}");

    ns.rollback_ok(&[], &[]);
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40500");
    assert_eq!(ns.read_file(DROPIN), None);
}

#[test]
fn a_version_1_state_still_rolls_back_to_its_originals() {
    root_test!();
    let v1 = std::fs::read_to_string(tests_dir().join("fixtures/state/v1.json")).unwrap();
    assert!(v1.contains("\"format_version\": 1"));
    let ns = Sandbox::actuation("40000 40181", "40120,40500");
    ns.write_file(STATE, &v1);
    // The drop-in a version 1 portd wrote (its state did not record the name).
    ns.write_file(
        DROPIN,
        "# Managed by portd. Do not edit: portd rewrites this file and `portd rollback` removes it.\n\
         net.ipv4.ip_local_reserved_ports = 40120,40500\n\
         net.ipv4.ip_local_port_range = 40000 40181\n",
    );
    ns.rollback_ok(
        &[],
        &[
            "restored ip_local_port_range 40000-40181 -> 40000-40099",
            "removed portd's reserved ports 40120",
            &format!("removed {DROPIN}"),
        ],
    );
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40500");
    assert_eq!(ns.read_file(DROPIN), None);
    assert_eq!(ns.state()["format_version"], 4);
}

#[test]
fn an_unreadable_state_is_reported_as_such_not_as_a_yield() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.write_file(STATE, "not json\n");
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &["would widen ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("the state file cannot be read")
            && line.contains("/var/lib/portd/state.json")
            && !line.contains("yielded to the admin"),
        "{line}"
    );
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.read_file(STATE).as_deref(), Some("not json\n"));
    daemon.stop_ok();
}
