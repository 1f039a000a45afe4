//! Faults while actuating: a read-only or full /etc/sysctl.d, and /proc/sys
//! writes refused. portd reports each (file and errno), leaves the runtime
//! values and its state consistent, and keeps running.

use std::time::Duration;

use super::portd_child::{Portd, wait_for};
use super::sandbox::{DROPIN, POLICY, RANGE_KEY, STATE, Sandbox};
use super::util::{root_test, state_range};

/// Polls that must pass with the daemon still running (200 ms each).
const SEVERAL_POLLS: Duration = Duration::from_millis(1500);

/// Starts portd, which widens 40000-40099 but fails to write the drop-in
/// with `error`; then [`assert_widened_but_not_persisted`].
fn widened_but_not_persisted(ns: &mut Sandbox, error: &str) -> Portd {
    let mut daemon = ns.start_daemon();
    daemon.wait_widened("40000-40099");
    daemon.wait_line(&[DROPIN, error], Duration::from_secs(10));
    assert_widened_but_not_persisted(ns, &mut daemon);
    daemon
}

/// Runtime widened, drop-in not written: state.json says what is live and
/// that it is not persisted; the daemon still runs after several polls.
fn assert_widened_but_not_persisted(ns: &mut Sandbox, daemon: &mut Portd) {
    std::thread::sleep(SEVERAL_POLLS);
    assert!(daemon.is_running(), "portd exited:\n{}", daemon.stderr());
    let state = ns.state();
    let written = &state["last_written"];
    assert_eq!(state_range(&written["range"]), ns.range(), "{state}");
    assert_eq!(written["reserved"], ns.reserved(), "{state}");
    assert_eq!(written["persisted"], false, "{state}");
    assert_eq!(ns.read_file(DROPIN), None);
}

/// Once the fault is gone, the drop-in is written at a later poll.
fn assert_persisted_later(ns: &mut Sandbox) {
    wait_for("the drop-in to be written", Duration::from_secs(10), || {
        ns.try_state()
            .filter(|s| s["last_written"]["persisted"] == true)
    });
    let text = ns.read_file(DROPIN).expect("no drop-in");
    let range = ns.range();
    assert!(
        text.contains(&format!("net.ipv4.ip_local_port_range = {range}\n")),
        "{text}"
    );
}

#[test]
fn read_only_sysctl_d_is_reported_and_retried() {
    root_test!();
    let mut ns = Sandbox::builder()
        .actuation("40000 40099", "")
        .tmpfs("/etc/sysctl.d", "ro")
        .start();
    ns.connect(45);
    let mut daemon = widened_but_not_persisted(&mut ns, "Read-only file system (os error 30)");

    ns.sh("mount -o remount,rw /etc/sysctl.d");
    assert_persisted_later(&mut ns);
    // The recovery is logged, as the failure was.
    daemon.wait_line(
        &["the drop-in", DROPIN, "is written again"],
        Duration::from_secs(5),
    );
    assert!(daemon.is_running());
}

#[test]
fn full_sysctl_d_is_reported_and_leaves_no_partial_file() {
    root_test!();
    let mut ns = Sandbox::builder()
        .actuation("40000 40099", "")
        .tmpfs("/etc/sysctl.d", "size=4k")
        .start();
    // One page, all of it taken: creating the temp file works, writing fails.
    ns.sh("head -c 4096 /dev/zero > /etc/sysctl.d/filler");
    assert_eq!(ns.sh("stat -c %s /etc/sysctl.d/filler"), "4096\n");
    ns.connect(45);
    let mut daemon = widened_but_not_persisted(&mut ns, "No space left on device (os error 28)");
    assert_eq!(
        ns.sh("ls -A /etc/sysctl.d"),
        "filler\n",
        "a temp file was left behind"
    );

    ns.sh("rm /etc/sysctl.d/filler");
    assert_persisted_later(&mut ns);
    assert!(daemon.is_running());
}

/// Nothing was changed: the live values are the original ones and the
/// state records no change. The daemon retries the widening every poll,
/// recording it before each write and withdrawing the record when the write
/// fails: a read between the two saves sees the record, so the state is
/// read until it is between two attempts (or the record was never withdrawn).
fn assert_nothing_changed(ns: &mut Sandbox, range: &str, reserved: &str) {
    assert_eq!(ns.range(), range);
    assert_eq!(ns.reserved(), reserved);
    let mut state = ns.state();
    for _ in 0..20 {
        if state["original"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
        state = ns.state();
    }
    assert_eq!(state["last_written"], serde_json::Value::Null, "{state}");
    assert_eq!(state["original"], serde_json::Value::Null, "{state}");
    assert_eq!(state["changes"], serde_json::json!([]), "{state}");
    assert_eq!(ns.read_file(DROPIN), None);
}

#[test]
fn proc_sys_write_refused_eacces_changes_nothing() {
    root_test!();
    let mut ns = Sandbox::actuation("40000 40099", "");
    // portd as nobody: its state directory is writable, /proc/sys is not.
    ns.sh("mkdir -p /var/lib/portd && chown 65534:65534 /var/lib/portd");
    ns.listen(40120);
    ns.connect(45);
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_portd"))
    .args(["--config", POLICY, "run", "--log-target", "stderr"]);
    let mut daemon = ns.spawn_daemon(cmd);
    let line = daemon.wait_line(
        &[
            "could not widen 40000-40099 ->",
            "/proc/sys/net/ipv4/ip_local_reserved_ports",
            "Permission denied (os error 13)",
        ],
        Duration::from_secs(10),
    );
    std::thread::sleep(SEVERAL_POLLS);
    assert!(daemon.is_running(), "portd exited:\n{}", daemon.stderr());
    assert!(ns.read_file(STATE).is_some(), "{line}");
    assert_nothing_changed(&mut ns, "40000 40099", "");
}

#[test]
fn proc_sys_range_read_only_erofs_restores_the_reserved_ports() {
    root_test!();
    let mut ns = Sandbox::actuation("40000 40099", "40500");
    // Only the range is read-only: the reserved ports are written first and
    // must be put back when the range write fails.
    let range_file = format!("/proc/sys/{}", RANGE_KEY.replace('.', "/"));
    ns.sh(&format!(
        "mount --bind {range_file} {range_file} && mount -o remount,bind,ro {range_file}"
    ));
    ns.listen(40120);
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &[
            "could not widen 40000-40099 ->",
            &range_file,
            "Read-only file system (os error 30)",
        ],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("the reserved ports were restored to \"40500\""),
        "{line}"
    );
    std::thread::sleep(SEVERAL_POLLS);
    assert!(daemon.is_running(), "portd exited:\n{}", daemon.stderr());
    assert_nothing_changed(&mut ns, "40000 40099", "40500");
}
