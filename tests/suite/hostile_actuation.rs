//! Actuation under hostile conditions, in private namespaces: a range
//! crowded by listeners, files in portd's way, an admin who changed the
//! range behind portd.

use std::time::Duration;

use rustix::process::Signal;

use super::actuation_util::{DROPIN, Ns, default_mounts, wait_for};
use super::util::have_root;

#[test]
fn listeners_in_the_range_do_not_stop_the_widening() {
    if !have_root("listeners_in_the_range_do_not_stop_the_widening") {
        return;
    }
    let mut ns = Ns::start(&default_mounts(), "40000 40099", "");
    for port in 40000..40090 {
        ns.listen(port);
    }
    // 8 of the 10 ports the listeners leave: 80 %.
    let (ports, err) = ns.connect(8);
    assert_eq!((ports.len(), err), (8, None));

    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["widened ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    let (more, err) = ns.connect(6);
    assert_eq!((more.len(), err), (6, None), "connections after widening");
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("fewer than"), "{stderr}");
}

#[test]
fn a_range_held_whole_by_listeners_gets_back_what_they_took() {
    if !have_root("a_range_held_whole_by_listeners_gets_back_what_they_took") {
        return;
    }
    let mut ns = Ns::start(&default_mounts(), "40000 40099", "");
    for port in 40000..=40099 {
        ns.listen(port);
    }
    let (ports, err) = ns.connect(1);
    assert_eq!((ports.len(), err.as_deref()), (0, Some("EADDRNOTAVAIL")));

    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["widened ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // As many ports for connect() as the range had before the listeners came.
    let (more, err) = ns.connect(100);
    assert_eq!((more.len(), err), (100, None), "range now {}", ns.range());
}

#[test]
fn a_foreign_dropin_holds_the_widening_until_it_is_moved_aside() {
    if !have_root("a_foreign_dropin_holds_the_widening_until_it_is_moved_aside") {
        return;
    }
    let mut ns = Ns::start(&default_mounts(), "40000 40099", "");
    ns.write_file(DROPIN, "# the admin's own\nnet.ipv4.tcp_fin_timeout = 30\n");
    ns.connect(45);
    let mut daemon = ns.start_daemon();
    daemon.wait_line(
        &["would widen ip_local_port_range", "is not portd's drop-in"],
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ns.range(), "40000 40099", "widened at runtime only");

    ns.sh(&format!("mv {DROPIN} /etc/sysctl.d/60-portd.conf.admin"));
    daemon.signal(Signal::HUP);
    daemon.wait_line(
        &["widened ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    wait_for(
        "the drop-in to be persisted",
        Duration::from_secs(10),
        || {
            ns.try_state()
                .filter(|s| s["last_written"]["persisted"] == true)
        },
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
