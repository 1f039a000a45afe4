//! The admin always wins: a range written by someone else between two polls
//! is detected and reported, and portd stops changing it, even under
//! pressure and across a restart, until a policy reload (SIGHUP).

use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::portd_child::wait_for;
use super::sandbox::{RANGE_KEY, RESERVED_KEY, Sandbox};
use super::util::root_test;

const ADMIN_RANGE: &str = "40000 40119";
/// Polls that must pass without portd touching the admin's range (200 ms each).
const SEVERAL_POLLS: Duration = Duration::from_millis(1500);

#[test]
fn an_admin_write_is_detected_and_portd_yields_until_reload() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    let widened = daemon.wait_line(
        &["widened ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    let portd_range = ns.range();
    assert!(
        widened.contains(&portd_range.replace(' ', "-")),
        "{widened}"
    );

    // The admin sets a range of their own between two polls.
    ns.set_sysctl(RANGE_KEY, ADMIN_RANGE);
    let line = daemon.wait_line(
        &["ip_local_port_range changed from", "by someone else"],
        Duration::from_secs(5),
    );
    assert!(
        line.contains(&format!(
            "from {} (written by portd) to 40000-40119",
            portd_range.replace(' ', "-")
        )),
        "the line must name the old and the new value: {line}"
    );
    // The event is logged just before the state is saved.
    let reason = wait_for("the yield in state.json", Duration::from_secs(5), || {
        ns.try_state()?["yielded"]["reason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(reason.contains("40000-40119"), "{reason}");

    // Pressure: 75 of 120 ports, far above the warning level. portd advises only.
    let (more, err) = ns.connect(30);
    assert_eq!((more.len(), err), (30, None));
    daemon.wait_line(
        &["would widen ip_local_port_range 40000-40119 ->"],
        Duration::from_secs(5),
    );
    std::thread::sleep(SEVERAL_POLLS);
    assert_eq!(ns.range(), ADMIN_RANGE, "portd changed the admin's range");
    assert!(daemon.is_running());

    // A restart (a watchdog restart too) keeps the yield: it is in the state.
    daemon.stop_ok();
    let mut daemon = ns.start_daemon();
    daemon.wait_lines(
        &[
            "starting: mode advise (yielded to the admin)",
            "would widen ip_local_port_range 40000-40119 ->",
        ],
        Duration::from_secs(5),
    );
    std::thread::sleep(SEVERAL_POLLS);
    assert_eq!(
        ns.range(),
        ADMIN_RANGE,
        "portd changed the admin's range after a restart"
    );
    assert!(!daemon.stderr().contains("widened"), "{}", daemon.stderr());
    daemon.stop_ok();

    // Rollback would undo the admin's range too: it refuses unless forced.
    let out = ns.portd(&["rollback"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "rollback after a yield: {err}");
    assert!(
        err.contains("refusing to roll back") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(ns.range(), ADMIN_RANGE);

    // A policy reload clears the yield: portd widens again, from the admin's range.
    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["would widen ip_local_port_range 40000-40119 ->"],
        Duration::from_secs(5),
    );
    daemon.signal(Signal::HUP);
    daemon.wait_lines(
        &[
            "the yield to the admin is cleared",
            "widened ip_local_port_range 40000-40119 ->",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(ns.state()["yielded"], serde_json::Value::Null);
    assert_ne!(ns.range(), ADMIN_RANGE);
    daemon.stop_ok();
}

/// Between censuses a poll reads the range alone and the other settings
/// every 5 s (docs/DESIGN.md, "Reading the settings"): a port portd
/// reserved and someone else removed, the range unchanged, is still seen
/// within that, and portd yields.
#[test]
fn reserved_ports_removed_by_someone_else_are_seen_within_five_seconds() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    // A service inside the span the widening opens: portd reserves its port.
    ns.listen(40120);
    ns.connect(45);
    let mut daemon = ns.start_daemon_until_persisted("40000-40099");
    assert_eq!(ns.reserved(), "40120");
    let range = ns.range();

    ns.set_sysctl(RESERVED_KEY, "\n");
    let removed = Instant::now();
    daemon.wait_line(
        &["ports portd reserved (40120) were removed from ip_local_reserved_ports by someone else"],
        Duration::from_secs(8),
    );
    let seen = removed.elapsed();
    assert!(seen < Duration::from_millis(6500), "seen after {seen:?}");
    wait_for("the yield in state.json", Duration::from_secs(5), || {
        ns.try_state()?["yielded"]["reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(ns.range(), range, "the range is left as it was");
    daemon.stop_ok();
}
