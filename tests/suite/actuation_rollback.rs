//! `portd rollback` and the one-writer lock, against real sysctls in a
//! private namespace.

use super::sandbox::{DROPIN, RANGE_KEY, RESERVED_KEY, Sandbox};
use super::util::{root_test, state_range, text};

const ADMIN_FILE: &str = "/etc/sysctl.d/50-admin.conf";

/// A namespace where portd widened 40000-40099 (reserving its listener
/// 40120 next to the admin's 40500) and persisted it, then stopped.
fn widened_by_portd() -> Sandbox {
    let ns = Sandbox::actuation("40000 40099", "40500");
    ns.write_file(ADMIN_FILE, "net.ipv4.ip_local_reserved_ports = 40500\n");
    ns.listen(40120);
    ns.connect(45);

    ns.rollback_ok(
        &[],
        &["has not changed this host's port range; nothing to roll back"],
    );

    let daemon = ns.start_daemon_until_persisted("40000-40099");

    // One writer: while this portd runs, neither a rollback nor a second
    // run may act.
    for args in [&["rollback"][..], &["run", "--log-target", "stderr"][..]] {
        let out = ns.portd(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "portd {args:?} beside a running portd: {err}"
        );
        assert!(
            err.contains("another portd (run or rollback) holds /var/lib/portd/lock"),
            "{err}"
        );
    }
    assert_eq!(ns.range(), "40000 40181");
    assert!(ns.read_file(DROPIN).is_some());

    daemon.stop_ok();
    assert_eq!(ns.reserved(), "40120,40500");
    ns
}

#[test]
fn rollback_restores_the_original_values_and_keeps_the_admins_reservations() {
    root_test!();
    let ns = widened_by_portd();
    // The admin reserves one more port after portd's change.
    ns.set_sysctl(RESERVED_KEY, "40120,40130,40500\n");

    ns.rollback_ok(
        &[],
        &[
            "restored ip_local_port_range 40000-40181 -> 40000-40099",
            "removed portd's reserved ports 40120",
            &format!("removed {DROPIN}"),
        ],
    );
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(
        ns.reserved(),
        "40130,40500",
        "only portd's reservation goes"
    );
    assert_eq!(ns.read_file(DROPIN), None);
    assert!(
        ns.read_file(ADMIN_FILE).is_some(),
        "the admin's file must stay"
    );
    let state = ns.state();
    assert_eq!(state["original"], serde_json::Value::Null, "{state}");
    assert_eq!(state["last_written"], serde_json::Value::Null, "{state}");

    // Nothing left to roll back: a clear no-op.
    ns.rollback_ok(&[], &["nothing to roll back"]);
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40130,40500");
}

#[test]
fn rollback_refuses_when_the_live_values_changed_unless_forced() {
    root_test!();
    let ns = widened_by_portd();
    ns.set_sysctl(RANGE_KEY, "40000 40299");
    let state_before = ns.state();

    let out = ns.rollback(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing to roll back: ip_local_port_range changed from 40000-40181 (written by portd) to 40000-40299"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        ns.range(),
        "40000 40299",
        "a refused rollback changed the range"
    );
    assert_eq!(ns.reserved(), "40120,40500");
    assert!(ns.read_file(DROPIN).is_some());
    assert_eq!(ns.state(), state_before);

    ns.rollback_ok(
        &["--force"],
        &["restored ip_local_port_range 40000-40299 -> 40000-40099"],
    );
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40500");
    assert_eq!(ns.read_file(DROPIN), None);
}

#[test]
fn a_rollback_stopped_part_way_says_so_and_a_second_one_finishes() {
    root_test!();
    let ns = widened_by_portd();
    // The range can be written, the reserved ports cannot.
    let reserved_file = format!("/proc/sys/{}", RESERVED_KEY.replace('.', "/"));
    ns.sh(&format!(
        "mount --bind {reserved_file} {reserved_file} && mount -o remount,bind,ro {reserved_file}"
    ));

    let out = ns.rollback(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for said in [
        reserved_file.as_str(),
        "Read-only file system",
        "done before it: restored ip_local_port_range 40000-40181 -> 40000-40099",
        "run `portd rollback` again",
    ] {
        assert!(err.contains(said), "rollback must say {said:?}:\n{err}");
    }
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40120,40500");
    // The state records the restored range as portd's own value.
    let state = ns.state();
    assert_eq!(
        state_range(&state["last_written"]["range"]),
        "40000 40099",
        "{state}"
    );
    assert!(ns.read_file(DROPIN).is_some());

    // Once the file is writable, a plain rollback (no --force) finishes.
    ns.sh(&format!("umount {reserved_file}"));
    ns.rollback_ok(&[], &["removed portd's reserved ports 40120"]);
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(ns.reserved(), "40500");
    assert_eq!(ns.read_file(DROPIN), None);
    assert_eq!(ns.state()["original"], serde_json::Value::Null);
}
