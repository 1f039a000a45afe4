//! Widening at work, with real connections in a private namespace: it ends
//! EADDRNOTAVAIL, and it never takes a service's port away.

use std::time::Duration;

use super::sandbox::Sandbox;
use super::util::{root_test, state_range};

#[test]
fn widening_a_tiny_range_lets_failed_connections_succeed() {
    root_test!();
    let ns = Sandbox::actuation("40000 40009", "");
    let (ports, err) = ns.connect(11);
    assert_eq!(ports.len(), 10, "the range holds 10 connections");
    assert_eq!(err.as_deref(), Some("EADDRNOTAVAIL"), "the 11th must fail");

    let mut daemon = ns.start_daemon();
    daemon.wait_widened("40000-40009");
    let (more, err) = ns.connect(20);
    assert_eq!((more.len(), err), (20, None), "connections after widening");
    assert!(more.iter().all(|p| (40000..=65535).contains(p)), "{more:?}");
    assert!(more.iter().any(|&p| p > 40009), "{more:?}");
    assert!(daemon.is_running());
    // 30 of 40 ports: portd may widen again before it stops.
    daemon.stop_ok();
    assert_eq!(
        state_range(&ns.state()["last_written"]["range"]),
        ns.range()
    );
}

#[test]
fn a_service_port_in_the_new_span_is_reserved_and_can_be_bound_again() {
    const SERVICE: u16 = 40120;
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    ns.listen(SERVICE);
    let (ports, err) = ns.connect(45);
    assert_eq!((ports.len(), err), (45, None));

    let mut daemon = ns.start_daemon();
    let line = daemon.wait_line(
        &["widened ip_local_port_range 40000-40099 ->"],
        Duration::from_secs(10),
    );
    assert!(
        line.contains(&format!("reserved {SERVICE} first")),
        "{line}"
    );
    daemon.stop_ok();
    let range = ns.range();
    let high: u16 = range.split_once(' ').unwrap().1.parse().unwrap();
    assert!(
        high > SERVICE,
        "the range {range} must have grown over {SERVICE}"
    );
    assert_eq!(ns.reserved(), SERVICE.to_string());

    // The service stops; outgoing connections take every port they can.
    ns.unlisten(SERVICE);
    let (more, err) = ns.connect(1000);
    assert_eq!(
        err.as_deref(),
        Some("EADDRNOTAVAIL"),
        "the range must fill up"
    );
    let usable = usize::from(high - 40000 + 1) - 1;
    assert_eq!(
        ports.len() + more.len(),
        usable,
        "every port but the reserved one"
    );
    assert!(
        !more.contains(&SERVICE),
        "connect() handed out the reserved port"
    );

    // The service comes back: its port is still free. A port that no one
    // reserved is not (the control: reservation is what made the difference).
    assert_eq!(
        ns.try_listen(SERVICE),
        Ok(()),
        "the service cannot bind {SERVICE}"
    );
    assert_eq!(ns.try_listen(more[0]), Err("EADDRINUSE".to_string()));
}
