//! SIGTERM while portd writes: it finishes the write in progress and starts
//! no other. The writes are made slow with strace's syscall delay injection,
//! on the two /proc/sys files only.

use std::time::{Duration, Instant};

use super::portd_child::wait_for;
use super::sandbox::{FAST_POLICY, POLICY, RESERVED_KEY, Sandbox};
use super::util::{have_strace, root_test, test_name};

/// How long each write to the range or the reserved ports takes.
const SLOW: Duration = Duration::from_secs(3);

#[test]
fn sigterm_during_a_slow_write_starts_no_further_write() {
    const LISTENER: u16 = 40010;
    root_test!();
    if !have_strace(test_name!()) {
        return;
    }
    let ns = Sandbox::actuation("40000 40009", "");
    // A service in the span the range will grow over: its port is reserved
    // first, so a widening is two kernel writes.
    ns.listen(LISTENER);
    // The hold leaves time to attach strace before the widening.
    ns.write_file(
        POLICY,
        &FAST_POLICY.replace("hold = \"0s\"", "hold = \"2s\""),
    );
    let mut daemon = ns.start_daemon();
    daemon.wait_line(&["ready:"], Duration::from_secs(5));
    let mut strace = daemon.attach_strace(
        ns.command("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=write"])
            .arg(format!("-einject=write:delay_enter={}s", SLOW.as_secs()))
            .args(["-P", "/proc/sys/net/ipv4/ip_local_port_range"])
            .args(["-P", "/proc/sys/net/ipv4/ip_local_reserved_ports"]),
    );

    let (ports, _) = ns.connect(10);
    assert_eq!(ports.len(), 10);
    // portd records the planned values, then writes the reserved ports.
    wait_for(
        "the planned write in state.json",
        Duration::from_secs(10),
        || ns.try_state().filter(|s| !s["pending"].is_null()),
    );
    let sent = Instant::now();
    daemon.signal(rustix::process::Signal::TERM);
    let exited = wait_for("portd to exit", Duration::from_secs(15), || {
        (!daemon.is_running()).then(Instant::now)
    });
    let took = exited - sent;
    let _ = strace.wait();
    let stderr = daemon.stderr();
    assert!(
        took < SLOW + Duration::from_millis(1500),
        "portd took {took:?} to stop after SIGTERM, more than the write in progress ({SLOW:?}); stderr:\n{stderr}"
    );
    assert_eq!(ns.range(), "40000 40009", "the range write was started");
    assert!(!stderr.contains("widened"), "{stderr}");

    // The next start settles what was recorded, then widens as usual.
    let mut again = ns.start_daemon();
    again.wait_widened("40000-40009");
    // The confirmation is saved after the "widened" line; a SIGTERM in
    // between would (rightly) start no save, so wait for it first.
    wait_for(
        "the confirmed widening in state.json",
        Duration::from_secs(10),
        || ns.try_state().filter(|s| s["pending"].is_null()),
    );
    again.stop_ok();
    assert!(ns.sysctl(RESERVED_KEY).contains(&LISTENER.to_string()));
}
