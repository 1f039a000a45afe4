//! Actuation under hostile conditions, in private namespaces: a range
//! crowded by listeners, files in portd's way, an admin who changed the
//! range behind portd.

use std::time::Duration;

use rustix::process::Signal;

use super::portd_child::wait_for;
use super::sandbox::{DROPIN, FAST_POLICY, POLICY, RANGE_KEY, Sandbox};
use super::util::{all_output, have_strace, root_test, test_name};

#[test]
fn listeners_in_the_range_do_not_stop_the_widening() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    for port in 40000..40090 {
        ns.listen(port);
    }
    // 8 of the 10 ports the listeners leave: 80 %.
    let (ports, err) = ns.connect(8);
    assert_eq!((ports.len(), err), (8, None));
    // check --plan judges as the daemon does.
    let out = ns.portd(&["check", "--plan", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["plan"]["action"]["kind"], "apply", "{report:#}");
    assert!(!report.to_string().contains("fewer than"), "{report:#}");

    let mut daemon = ns.start_daemon();
    daemon.wait_widened("40000-40099");
    let (more, err) = ns.connect(6);
    assert_eq!((more.len(), err), (6, None), "connections after widening");
    let stderr = daemon.stop_ok();
    assert!(!stderr.contains("fewer than"), "{stderr}");
}

#[test]
fn a_range_held_whole_by_listeners_gets_back_what_they_took() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    for port in 40000..=40099 {
        ns.listen(port);
    }
    let (ports, err) = ns.connect(1);
    assert_eq!((ports.len(), err.as_deref()), (0, Some("EADDRNOTAVAIL")));

    let mut daemon = ns.start_daemon();
    daemon.wait_widened("40000-40099");
    daemon.stop_ok();
    // As many ports for connect() as the range had before the listeners came.
    let (more, err) = ns.connect(100);
    assert_eq!((more.len(), err), (100, None), "range now {}", ns.range());
}

#[test]
fn a_foreign_dropin_holds_the_widening_until_it_is_moved_aside() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.write_file(DROPIN, "# the admin's own\nnet.ipv4.tcp_fin_timeout = 30\n");
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["would widen ip_local_port_range", "is not portd's drop-in"],
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ns.range(), "40000 40099", "widened at runtime only");
    let status = ns.portd(&["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("mode auto (widening held: foreign-dropin)"),
        "{status}"
    );

    ns.sh(&format!("mv {DROPIN} /etc/sysctl.d/60-portd.conf.admin"));
    daemon.signal(Signal::HUP);
    daemon.wait_widened("40000-40099");
    ns.wait_persisted();
    daemon.stop_ok();
}

/// portd widens 40000-40099 and persists it; the admin sets 40000-40499
/// (portd yields), reloads when busier still, and portd widens the admin's
/// range; then portd stops.
fn widened_after_an_admins_range() -> Sandbox {
    let ns = Sandbox::actuation("40000 40099", "");
    ns.connect(45);
    let mut daemon = ns.start_daemon_until_persisted("40000-40099");
    // The admin sets a range of their own: portd yields.
    ns.set_sysctl(RANGE_KEY, "40000 40499");
    daemon.wait_line(&["until `systemctl reload portd`"], Duration::from_secs(10));
    // Busier still; the admin reloads and portd widens the admin's range.
    let (more, err) = ns.connect(200);
    assert_eq!((more.len(), err), (200, None));
    daemon.signal(Signal::HUP);
    daemon.wait_widened("40000-40499");
    daemon.stop_ok();
    ns
}

#[test]
fn rollback_keeps_the_range_an_admin_set_before_portds_last_widening_unless_forced() {
    root_test!();
    let ns = widened_after_an_admins_range();
    let stdout = ns.rollback_ok(&[], &[]);
    assert_eq!(
        ns.range(),
        "40000 40499",
        "the admin's range is kept:\n{stdout}"
    );
    assert!(
        stdout.contains("keeping 40000-40499, the range an administrator set")
            && stdout.contains("40000-40099, the range portd first found (--force restores that)"),
        "{stdout}"
    );
}

#[test]
fn forced_rollback_restores_the_first_range_and_says_the_admins_is_dropped() {
    root_test!();
    let ns = widened_after_an_admins_range();
    let stdout = ns.rollback_ok(&["--force"], &[]);
    assert_eq!(ns.range(), "40000 40099");
    assert!(
        stdout.contains(
            "40000-40499, the range an administrator set after portd's first change, is dropped"
        ),
        "{stdout}"
    );
}

#[test]
fn check_refuses_the_live_view_as_the_metrics_file() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.write_file(
        POLICY,
        &format!("{FAST_POLICY}\n[metrics]\nfile = \"/run/portd/live.json\"\n"),
    );
    let out = ns.portd(&["check"]).output().unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("metrics.file: \"/run/portd/live.json\" is portd's live view"),
        "{text}"
    );
}

#[test]
fn a_symlink_at_the_runtime_directory_is_never_followed() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    // /run is the test's own tmpfs: the link points inside it.
    ns.sh("mkdir /run/elsewhere && ln -s /run/elsewhere /run/portd");
    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &["cannot write the live view /run/portd/live.json"],
        Duration::from_secs(10),
    );
    assert!(line.contains("symbolic link"), "{line}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        ns.sh("ls -A /run/elsewhere"),
        "",
        "written through the link"
    );
    daemon.stop_ok();
}

#[test]
fn a_missing_root_is_a_usage_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let missing_text = missing.display().to_string();
    for (command, code) in [("rollback", 2), ("run", 2), ("status", 3), ("check", 3)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portd"))
            .arg("--root")
            .arg(&missing)
            .arg(command)
            .env_remove("PORTD_ROOT")
            .output()
            .unwrap();
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(code), "{command}: {text}");
        assert!(
            text.contains(&format!("--root {missing_text}: No such file or directory")),
            "{command}: {text}"
        );
        assert!(!text.contains("nothing to roll back"), "{command}: {text}");
    }
    assert!(
        !missing.exists(),
        "nothing was created under the missing root"
    );
}

/// How long each rename of portd's atomic writes takes in
/// [`sigterm_during_a_stalled_write_adds_little_to_the_stall`].
const STALL: Duration = Duration::from_secs(3);

#[test]
fn sigterm_during_a_stalled_write_adds_little_to_the_stall() {
    const TRACE: &str = "/run/strace.txt";
    root_test!();
    if !have_strace(test_name!()) {
        return;
    }
    let ns = Sandbox::actuation("40000 40099", "");
    let mut daemon = ns.start_daemon();
    daemon.wait_line(&["ready:"], Duration::from_secs(5));
    // Every rename portd makes (the live view's each poll, the state's, the
    // drop-in's) takes STALL, as on a stalled disk.
    let mut strace = daemon.attach_strace(
        ns.command("strace")
            .args(["-f", "-o", TRACE, "-e", "trace=rename,renameat,renameat2"])
            .arg(format!(
                "-einject=rename,renameat,renameat2:delay_enter={}s",
                STALL.as_secs()
            )),
    );
    // The live view is renamed every poll (200 ms), so one is stalled a second later.
    std::thread::sleep(Duration::from_secs(1));
    let sent = std::time::Instant::now();
    daemon.signal(Signal::TERM);
    let exited = wait_for("portd to exit", Duration::from_secs(20), || {
        (!daemon.is_running()).then(std::time::Instant::now)
    });
    let took = exited - sent;
    let _ = strace.wait();
    let stderr = daemon.stderr();
    let trace = ns.read_file(TRACE).unwrap_or_default();
    eprintln!("portd stopped {took:?} after SIGTERM");
    assert!(
        took < STALL + Duration::from_millis(500),
        "portd took {took:?} to stop after SIGTERM, more than the stalled rename in progress \
         ({STALL:?}) and half a second; renames:\n{trace}\nstderr:\n{stderr}"
    );
}
