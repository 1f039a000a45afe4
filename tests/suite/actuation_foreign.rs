//! portd writes and removes only a drop-in it wrote itself: an admin's file
//! or Debian's `99-sysctl.conf` link at the drop-in's name is kept, portd
//! holds (advises) with the reason logged once and `check` reports it; an old drop-in is removed
//! when `persist.file` changes; the reserved ports are written only when
//! portd reserved some, as the union with the other files, kept current.

use std::time::Duration;

use rustix::process::Signal;

use super::portd_child::wait_for;
use super::sandbox::{DROPIN, FAST_POLICY, POLICY, RANGE_KEY, RESERVED_KEY, Sandbox};
use super::util::{parse_dropin, root_test, text};

/// Polls that must pass with the daemon still running (200 ms each).
const SEVERAL_POLLS: Duration = Duration::from_millis(1500);

/// Usage calls for a wider range with `sysctl.d/<name>` taken by a file
/// that is not portd's: portd holds (a runtime change would not survive a
/// reboot), says why once, and leaves the file exactly as `listing` shows
/// it (`ls -l` of the name and `cat` through it), before and after a
/// rollback.
fn a_foreign_file_is_kept(ns: &mut Sandbox, name: &str) {
    let path = format!("/etc/sysctl.d/{name}");
    let listing = |ns: &mut Sandbox| ns.sh(&format!("ls -l {path} | cut -d' ' -f1,9-; cat {path}"));
    let before = listing(ns);
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &[
            "would widen ip_local_port_range 40000-40099 ->",
            &format!("{path} is not portd's drop-in"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("would not survive a reboot") && line.contains("only advises"),
        "{line}"
    );
    std::thread::sleep(SEVERAL_POLLS);
    assert_eq!(ns.range(), "40000 40099", "widened at runtime only");
    assert_eq!(listing(ns), before, "portd changed {path}");
    let stderr = daemon.stderr();
    assert_eq!(
        stderr.matches("is not portd's drop-in").count(),
        1,
        "said once, not every poll:\n{stderr}"
    );
    assert!(!stderr.contains("widened"), "{stderr}");

    let check = ns.portd(&["check"]).output().unwrap();
    let report = text(&check.stdout);
    assert_eq!(check.status.code(), Some(2), "{report}");
    assert!(
        report.contains(&format!(
            "ERROR: persist.file names {path}, which portd did not write"
        )),
        "{report}"
    );
    daemon.stop_ok();

    ns.rollback_ok(&[], &[]);
    assert_eq!(ns.range(), "40000 40099");
    assert_eq!(listing(ns), before, "rollback changed {path}");
}

#[test]
fn an_admins_file_at_the_dropin_name_is_never_overwritten() {
    root_test!();
    let mut ns = Sandbox::actuation("40000 40099", "");
    ns.write_file(DROPIN, "# the admin's own\nnet.ipv4.tcp_fin_timeout = 30\n");
    a_foreign_file_is_kept(&mut ns, "60-portd.conf");
}

#[test]
fn debians_sysctl_conf_link_as_persist_file_is_never_replaced() {
    root_test!();
    let mut ns = Sandbox::actuation("40000 40099", "");
    ns.write_file(
        POLICY,
        &format!("{FAST_POLICY}\n[persist]\nfile = \"99-sysctl.conf\"\n"),
    );
    // As Debian links /etc/sysctl.conf in, with the target inside the test's
    // tmpfs (a hidden name, which systemd-sysctl does not read itself).
    ns.write_file("/etc/sysctl.d/.sysctl.conf", "# the admin's sysctl.conf\n");
    ns.sh("ln -s .sysctl.conf /etc/sysctl.d/99-sysctl.conf");
    a_foreign_file_is_kept(&mut ns, "99-sysctl.conf");
}

#[test]
fn a_new_persist_file_replaces_the_old_dropin_after_a_reload() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.connect(45);
    let mut daemon = ns.start_daemon_until_persisted("40000-40099");
    assert_eq!(ns.state()["dropin"], "60-portd.conf");
    let new = "/etc/sysctl.d/70-portd.conf";
    ns.write_file(
        POLICY,
        &format!("{FAST_POLICY}\n[persist]\nfile = \"70-portd.conf\"\n"),
    );
    daemon.signal(Signal::HUP);
    daemon.wait_line(
        &["removed portd's previous drop-in", DROPIN, new],
        Duration::from_secs(10),
    );
    wait_for("the new name in state.json", Duration::from_secs(5), || {
        (ns.state()["dropin"] == "70-portd.conf").then_some(())
    });
    assert_eq!(ns.read_file(DROPIN), None, "the old drop-in stayed");
    let range = ns.range();
    assert!(
        parse_dropin(&ns.read_file(new).expect("no new drop-in"))
            .contains(&(RANGE_KEY.to_string(), range)),
    );
    daemon.stop_ok();
    ns.rollback_ok(&[], &[&format!("removed {new}")]);
    assert_eq!(ns.read_file(new), None);
}

#[test]
fn a_dropin_without_reservations_leaves_runtime_reservations_alone() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.connect(45);
    let daemon = ns.start_daemon_until_persisted("40000-40099");
    daemon.stop_ok();
    let dropin = ns.read_file(DROPIN).unwrap();
    let range = ns.range();
    assert_eq!(
        parse_dropin(&dropin),
        [(RANGE_KEY.to_string(), range.clone())],
        "portd reserved nothing, so no reserved-ports line:\n{dropin}"
    );
    let check = text(&ns.portd(&["check"]).output().unwrap().stdout);
    assert!(
        check.contains(&format!(
            "portd's drop-in {DROPIN} does not set {RESERVED_KEY}"
        )),
        "{check}"
    );

    // Other software (a CNI's NodePorts) reserves at runtime; a package
    // upgrade then applies sysctl.d again.
    ns.set_sysctl(RESERVED_KEY, "40700,40800-40810\n");
    for apply in ["/usr/lib/systemd/systemd-sysctl", "sysctl -q -p"] {
        ns.sh(&format!("{apply} {DROPIN}"));
        assert_eq!(ns.reserved(), "40700,40800-40810", "{apply} cleared them");
        assert_eq!(ns.range(), range);
    }
}

#[test]
fn the_dropins_reserved_ports_follow_another_files_reservations() {
    root_test!();
    let admin = "/etc/sysctl.d/50-admin.conf";
    let ns = Sandbox::actuation("40000 40099", "40500");
    ns.write_file(admin, "net.ipv4.ip_local_reserved_ports = 40500\n");
    ns.listen(40120);
    ns.connect(45);
    let daemon = ns.start_daemon_until_persisted("40000-40099");
    let reserved_line = |ns: &Sandbox| {
        parse_dropin(&ns.read_file(DROPIN).unwrap_or_default())
            .into_iter()
            .find(|(k, _)| k == RESERVED_KEY)
            .map(|(_, v)| v)
    };
    assert_eq!(reserved_line(&ns).as_deref(), Some("40120,40500"));

    ns.write_file(admin, "net.ipv4.ip_local_reserved_ports = 40500,40600\n");
    wait_for(
        "the drop-in to take the admin's new reservation",
        Duration::from_secs(5),
        || (reserved_line(&ns).as_deref() == Some("40120,40500,40600")).then_some(()),
    );
    let check = text(&ns.portd(&["check"]).output().unwrap().stdout);
    assert!(
        check.contains(&format!(
            "portd's drop-in {DROPIN} sets {RESERVED_KEY} = 40120,40500,40600"
        )),
        "{check}"
    );
    daemon.stop_ok();
}
