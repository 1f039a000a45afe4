//! The actuator against a fixture root: regular files stand in for
//! /proc/sys, so nothing here needs root or writes a real sysctl.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::act::state::Pending;
use crate::base::ports::Ratio;

const DROPIN: &str = "60-portd.conf";

fn range(low: u16, high: u16) -> PortRange {
    PortRange::new(low, high).unwrap()
}

fn ports(list: &str) -> PortSet {
    PortSet::parse(list).unwrap()
}

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A fixture root with the two /proc/sys files and an empty sysctl.d.
fn fixture(live_range: &str, live_reserved: &str) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    for (key, value) in [
        (kernel::KEY_PORT_RANGE, live_range),
        (kernel::KEY_RESERVED_PORTS, live_reserved),
    ] {
        let path = host.proc_sys(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{value}\n")).unwrap();
    }
    std::fs::create_dir_all(host.path(sysctld::DROPIN_DIR)).unwrap();
    (dir, host)
}

fn settings(range: PortRange, reserved: &str) -> KernelSettings {
    KernelSettings {
        reserved_ports: ports(reserved),
        ..crate::observe::census::settings::for_tests(range.low(), range.high(), &[])
    }
}

fn sysctl_d(host: &Host, name: &str) -> std::path::PathBuf {
    host.path(sysctld::DROPIN_DIR).join(name)
}

/// portd widened 40000-40099 to 40000-40181 and reserved `added`.
fn widened(added: &str) -> State {
    State {
        original: Some(Values {
            range: range(40000, 40099),
            reserved: PortSet::new(),
        }),
        last_written: Some(Written {
            values: Values {
                range: range(40000, 40181),
                reserved: ports(added),
            },
            at: at(),
            persisted: false,
        }),
        added_reserved: ports(added),
        ..State::default()
    }
}

#[test]
fn nothing_is_written_when_the_state_cannot_be_recorded() {
    let (_dir, host) = fixture("40000\t40099", "");
    // The state directory is a file: the state cannot be saved.
    std::fs::create_dir_all(host.path("/var/lib")).unwrap();
    std::fs::write(host.state_dir(), "not a directory").unwrap();
    let mut state = State::default();
    let plan = Plan {
        from: range(40000, 40099),
        to: range(40000, 40181),
        reserved: ports("40120"),
        newly_reserved: ports("40120"),
        expected_usage: Ratio::of(45, 181),
        reaches_target: true,
    };
    let current = settings(range(40000, 40099), "");
    let err = apply_plan(&host, &mut state, &current, &plan, at(), "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot record the original and planned values before writing")
            && err.contains("var/lib/portd")
            && err.contains("nothing was written"),
        "{err}"
    );
    let read = |key| std::fs::read_to_string(host.proc_sys(key)).unwrap();
    assert_eq!(read(kernel::KEY_PORT_RANGE), "40000\t40099\n");
    assert_eq!(read(kernel::KEY_RESERVED_PORTS), "\n");
    assert_eq!(state, State::default(), "the in-memory state is unchanged");
}

#[test]
fn a_failed_write_withdraws_its_record() {
    let (_dir, host) = fixture("40000\t40099", "");
    let mut state = State::default();
    let plan = Plan {
        from: range(40000, 40099),
        to: range(40000, 40181),
        reserved: ports("40120"),
        newly_reserved: ports("40120"),
        expected_usage: Ratio::of(45, 181),
        reaches_target: true,
    };
    // The kernel refuses the write (the range file is a directory), after
    // the record was saved: what is on disk is the record.
    let range_file = host.proc_sys(kernel::KEY_PORT_RANGE);
    std::fs::remove_file(&range_file).unwrap();
    std::fs::create_dir(&range_file).unwrap();
    let current = settings(range(40000, 40099), "");
    assert!(apply_plan(&host, &mut state, &current, &plan, at(), "test").is_err());
    assert_eq!(state, State::default(), "a failed write leaves no change");
    // The record was withdrawn on disk too.
    assert_eq!(State::load(&host).unwrap().pending, None);
}

#[test]
fn a_write_recorded_before_a_crash_settles_against_the_live_values() {
    let recorded = || State {
        original: Some(Values {
            range: range(40000, 40099),
            reserved: ports("40500"),
        }),
        added_reserved: ports("40120"),
        pending: Some(Pending {
            values: Values {
                range: range(40000, 40181),
                reserved: ports("40120,40500"),
            },
            newly_reserved: ports("40120"),
            at: at(),
        }),
        ..State::default()
    };
    // Killed after the write: the planned values are portd's.
    let mut s = recorded();
    let live = settings(range(40000, 40181), "40120,40500");
    assert!(settle_pending(&mut s, &live).unwrap().contains("completed"));
    assert_eq!(s.pending, None);
    assert_eq!(
        s.last_written.as_ref().unwrap().values.range,
        range(40000, 40181)
    );
    assert_eq!(external_change(None, &s, &live), None);

    // Killed before any write: portd changed nothing.
    let mut s = recorded();
    let live = settings(range(40000, 40099), "40500");
    assert!(
        settle_pending(&mut s, &live)
            .unwrap()
            .contains("did not happen")
    );
    assert_eq!(
        (s.original, s.last_written, s.added_reserved.is_empty()),
        (None, None, true)
    );

    // Killed between the reserved ports and the range: the reservation is
    // portd's, for rollback to remove.
    let mut s = recorded();
    let live = settings(range(40000, 40099), "40120,40500");
    settle_pending(&mut s, &live).unwrap();
    assert_eq!(s.added_reserved, ports("40120"));
    assert_eq!(
        s.last_written.as_ref().unwrap().values,
        Values {
            range: range(40000, 40099),
            reserved: ports("40120,40500"),
        }
    );
    assert!(s.original.is_some());
}

#[test]
fn a_file_portd_did_not_write_is_never_overwritten() {
    let (_dir, host) = fixture("40000\t40181", "");
    let admin = "net.ipv4.ip_local_reserved_ports = 40500\n";
    std::fs::write(sysctl_d(&host, DROPIN), admin).unwrap();
    let err = persist(
        &host,
        &sysctld::scan(&host).unwrap(),
        DROPIN,
        &widened(""),
        at(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("refusing to overwrite") && err.contains("60-portd.conf"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(sysctl_d(&host, DROPIN)).unwrap(),
        admin
    );

    // Debian's 99-sysctl.conf is a symlink: neither it nor its target change.
    std::fs::write(sysctl_d(&host, ".sysctl.conf"), "# admin\n").unwrap();
    std::os::unix::fs::symlink(".sysctl.conf", sysctl_d(&host, "99-sysctl.conf")).unwrap();
    let err = persist(
        &host,
        &sysctld::scan(&host).unwrap(),
        "99-sysctl.conf",
        &widened(""),
        at(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("symbolic link to .sysctl.conf"), "{err}");
    let link = std::fs::read_link(sysctl_d(&host, "99-sysctl.conf")).unwrap();
    assert_eq!(link, Path::new(".sysctl.conf"));
    assert_eq!(
        std::fs::read_to_string(sysctl_d(&host, ".sysctl.conf")).unwrap(),
        "# admin\n"
    );
}

#[test]
fn the_dropin_sets_reserved_ports_only_when_portd_reserved_some() {
    let (_dir, host) = fixture("40000\t40181", "");
    std::fs::write(
        sysctl_d(&host, "50-admin.conf"),
        "net.ipv4.ip_local_reserved_ports = 40500\n",
    )
    .unwrap();
    let text = |host: &Host| std::fs::read_to_string(sysctl_d(host, DROPIN)).unwrap();
    assert_eq!(
        persist(
            &host,
            &sysctld::scan(&host).unwrap(),
            DROPIN,
            &widened(""),
            at()
        )
        .unwrap(),
        Persisted::Written { removed: None }
    );
    assert!(
        !text(&host).contains("ip_local_reserved_ports"),
        "{}",
        text(&host)
    );
    assert!(text(&host).contains("net.ipv4.ip_local_port_range = 40000 40181\n"));

    // With a port of portd's: the union with the other files, kept current.
    let state = widened("40120");
    persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap();
    assert!(text(&host).contains("net.ipv4.ip_local_reserved_ports = 40120,40500\n"));
    assert_eq!(
        persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap(),
        Persisted::Unchanged
    );
    std::fs::write(
        sysctl_d(&host, "50-admin.conf"),
        "net.ipv4.ip_local_reserved_ports = 40500,40600\n",
    )
    .unwrap();
    assert_eq!(
        persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap(),
        Persisted::Written { removed: None }
    );
    assert!(
        text(&host).contains("net.ipv4.ip_local_reserved_ports = 40120,40500,40600\n"),
        "{}",
        text(&host)
    );
}

#[test]
fn a_new_persist_file_replaces_portds_old_dropin_but_no_one_elses() {
    let (_dir, host) = fixture("40000\t40181", "");
    let mut state = widened("");
    persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap();
    state.dropin = Some(DROPIN.into());
    assert_eq!(
        persist(
            &host,
            &sysctld::scan(&host).unwrap(),
            "70-portd.conf",
            &state,
            at()
        )
        .unwrap(),
        Persisted::Written {
            removed: Some(sysctl_d(&host, DROPIN))
        }
    );
    assert!(!sysctl_d(&host, DROPIN).exists());
    assert!(sysctl_d(&host, "70-portd.conf").exists());

    // The recorded name now holds someone else's file: it stays.
    std::fs::write(sysctl_d(&host, DROPIN), "# the admin's now\n").unwrap();
    std::fs::remove_file(sysctl_d(&host, "70-portd.conf")).unwrap();
    assert_eq!(
        persist(
            &host,
            &sysctld::scan(&host).unwrap(),
            "70-portd.conf",
            &state,
            at()
        )
        .unwrap(),
        Persisted::Written { removed: None }
    );
    assert_eq!(
        std::fs::read_to_string(sysctl_d(&host, DROPIN)).unwrap(),
        "# the admin's now\n"
    );
}

#[test]
fn a_later_file_pinning_the_reserved_ports_is_named_by_its_key() {
    let (_dir, host) = fixture("40000\t40099", "");
    std::fs::write(
        sysctl_d(&host, "70-later.conf"),
        "net.ipv4.ip_local_reserved_ports = 40010\n",
    )
    .unwrap();
    let pin = pin(&sysctld::scan(&host).unwrap(), DROPIN).unwrap();
    let text = crate::judge::planner::Blocked::PinnedBy { pin }.to_string();
    assert!(
        text.contains("70-later.conf:1 sets net.ipv4.ip_local_reserved_ports = 40010 after"),
        "{text}"
    );
    assert!(!text.contains("the range"), "{text}");
}

#[test]
fn an_admins_range_taken_as_baseline_is_not_written_into_portds_dropin() {
    let (_dir, host) = fixture("40000\t40181", "");
    let mut state = widened("");
    persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap();
    let before = std::fs::read_to_string(sysctl_d(&host, DROPIN)).unwrap();
    // A yield (cleared since by a reload) made the admin's range the baseline.
    let written = state.last_written.as_mut().unwrap();
    written.persisted = true;
    written.values.range = range(40000, 40119);
    assert_eq!(
        persist(&host, &sysctld::scan(&host).unwrap(), DROPIN, &state, at()).unwrap(),
        Persisted::Unchanged
    );
    assert_eq!(
        std::fs::read_to_string(sysctl_d(&host, DROPIN)).unwrap(),
        before
    );
}

#[test]
fn rollback_never_removes_a_symlink_at_the_dropin_name_even_to_portds_text() {
    let (dir, host) = fixture("40000\t40181", "");
    // A file with portd's header elsewhere in the fixture, linked in.
    let elsewhere = dir.path().join("copy-of-portds-dropin.conf");
    std::fs::write(&elsewhere, format!("{DROPIN_HEADER}\n")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sysctl_d(&host, DROPIN)).unwrap();
    let mut state = widened("");
    let live = settings(range(40000, 40181), "");
    let done = rollback(&host, DROPIN, &mut state, &live, false).unwrap();
    assert!(
        std::fs::symlink_metadata(sysctl_d(&host, DROPIN)).is_ok(),
        "the link was removed: {done:?}"
    );
    assert!(elsewhere.exists());
    assert!(
        done.iter()
            .any(|d| d.contains("left") && d.contains("symbolic link")),
        "{done:?}"
    );
}
