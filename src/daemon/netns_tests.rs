//! The daemon's watch over other namespaces without root: the per-namespace
//! rule, which namespaces take a census, the advice, the metrics and the
//! status headline from the daemon's view. Default policy: warning at
//! 40 %, critical at 50 %, `max_staleness` 5 minutes.

use std::time::Duration;

use super::*;
use crate::kernel::TwReuse;
use crate::netns::identity::{Identity, Runtime};
use crate::planner::{Blocked, Plan};
use crate::ports::{PortRange, PortSet, Ratio};

fn settings(low: u16, high: u16) -> KernelSettings {
    KernelSettings {
        port_range: PortRange::new(low, high).unwrap(),
        reserved_ports: PortSet::new(),
        unprivileged_port_start: 1024,
        tcp_tw_reuse: TwReuse::from_sysctl(2),
        tcp_timestamps: true,
    }
}

fn totals(tcp_inuse: u64, tcp_tw: u64, udp_inuse: u64) -> Totals {
    Totals {
        tcp_inuse,
        tcp_tw,
        udp_inuse,
    }
}

fn counters(settings: &KernelSettings, totals: Totals) -> fastpath::Counters<'_> {
    fastpath::Counters {
        settings,
        totals: Some(totals),
        active_opens: Some(100),
        pace: None,
    }
}

fn baseline(settings: &KernelSettings, worst: u64, age: Duration) -> Baseline<'_> {
    Baseline {
        settings,
        worst,
        capacity: 1000,
        udp_capacity: 1000,
        tcp_capacity: 1000,
        active_opens: Some(100),
        age,
    }
}

fn raised(level: Level) -> AlertState {
    AlertState {
        level,
        ..AlertState::default()
    }
}

#[test]
fn a_namespace_without_a_census_is_censused_only_when_its_counters_cannot_prove_it_quiet() {
    let p = Policy::default();
    let s = settings(40000, 40999);
    // 20 TCP sockets in 1000 ports: at most 20 of 980, quiet, no census.
    match step(
        None,
        &counters(&s, totals(10, 10, 0)),
        &p,
        &raised(Level::Ok),
    ) {
        Step::Quiet(q) => assert_eq!((q.bound, q.capacity), (20, 990)),
        other => panic!("{other:?}"),
    }
    // 600 sockets could all be towards one destination: a census.
    assert_eq!(
        step(
            None,
            &counters(&s, totals(300, 300, 0)),
            &p,
            &raised(Level::Ok)
        ),
        Step::Census(Due::FirstCensus)
    );
    // A tiny range (a container's own setting) with few sockets: a census.
    let tiny = settings(40000, 40019);
    assert_eq!(
        step(
            None,
            &counters(&tiny, totals(8, 7, 0)),
            &p,
            &raised(Level::Ok)
        ),
        Step::Census(Due::FirstCensus)
    );
    // A raised alert is followed by a census, whatever the counters.
    assert_eq!(
        step(
            None,
            &counters(&s, totals(1, 0, 0)),
            &p,
            &raised(Level::Warning)
        ),
        Step::Census(Due::AlertRaised)
    );
}

#[test]
fn with_a_census_the_fast_path_rule_of_portd_own_namespace_applies() {
    let p = Policy::default();
    let s = settings(40000, 40999);
    let fresh = baseline(&s, 50, Duration::from_secs(10));
    // The fast path's own bound: a skip.
    assert_eq!(
        step(
            Some(&fresh),
            &counters(&s, totals(100, 0, 0)),
            &p,
            &raised(Level::Ok)
        ),
        Step::Skip
    );
    // 450 connect()s since: the bound reaches the warning level, a census.
    let busy = fastpath::Counters {
        active_opens: Some(550),
        ..counters(&s, totals(500, 0, 0))
    };
    assert_eq!(
        step(Some(&fresh), &busy, &p, &raised(Level::Ok)),
        Step::Census(Due::BoundAtWarning)
    );
    // Stale: the counters alone prove it quiet, so no census (the old one
    // is dropped) ...
    let stale = baseline(&s, 50, Duration::from_secs(3600));
    assert!(matches!(
        step(
            Some(&stale),
            &counters(&s, totals(100, 0, 0)),
            &p,
            &raised(Level::Ok)
        ),
        Step::Quiet(_)
    ));
    // ... unless they cannot, or an alert is raised.
    assert_eq!(
        step(
            Some(&stale),
            &counters(&s, totals(300, 200, 0)),
            &p,
            &raised(Level::Ok)
        ),
        Step::Census(Due::Stale)
    );
    assert_eq!(
        step(
            Some(&stale),
            &counters(&s, totals(1, 0, 0)),
            &p,
            &raised(Level::Critical)
        ),
        Step::Census(Due::AlertRaised)
    );
}

#[test]
fn never_more_than_the_cap_and_raised_alerts_first() {
    let due = vec![
        (1, Due::Stale, Some(Duration::from_secs(900))),
        (2, Due::BoundAtWarning, Some(Duration::from_secs(5))),
        (3, Due::FirstCensus, None),
        (4, Due::AlertRaised, Some(Duration::from_secs(1))),
        (5, Due::Stale, Some(Duration::from_secs(1000))),
    ];
    assert_eq!(pick(due.clone(), 2), vec![4, 3]);
    assert_eq!(pick(due.clone(), 4), vec![4, 3, 2, 5]);
    assert_eq!(pick(due, CENSUSES_PER_POLL).len(), CENSUSES_PER_POLL);
    assert!(pick(Vec::new(), 2).is_empty());
}

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn namespace(identity: Identity, names: &[&str]) -> Namespace {
    Namespace {
        inode: 4026532999,
        pid: Some(812),
        comm: Some("envoy".into()),
        processes: 3,
        names: names.iter().map(|n| (*n).to_string()).collect(),
        own: false,
        identity,
        label: "x".into(),
        enter: "nsenter -t 812 -n COMMAND".into(),
    }
}

fn held(level: Level, newly_reserved: &[u16]) -> Decision {
    let mut reserved = PortSet::new();
    for p in newly_reserved {
        reserved.insert(*p);
    }
    Decision {
        raw_level: level,
        alert: raised(level),
        transition: None,
        remind: false,
        action: Action::Hold {
            plan: Some(Plan {
                from: PortRange::new(40000, 40019).unwrap(),
                to: PortRange::new(40000, 40059).unwrap(),
                reserved: reserved.clone(),
                newly_reserved: reserved,
                expected_usage: Ratio::from_percent(25.0).unwrap(),
                reaches_target: true,
            }),
            reason: Blocked::Advise,
        },
        urgent: None,
        overrode: None,
        unfit: None,
    }
}

#[test]
fn the_advice_names_the_setting_and_where_to_change_it() {
    let pod = Identity {
        pod: Some("shop/checkout-7d9f".into()),
        ..Identity::default()
    };
    let a = advice(&namespace(pod, &[]), &held(Level::Critical, &[])).unwrap();
    assert!(
        a.starts_with("set net.ipv4.ip_local_port_range to \"40000 40059\" (was 40000-40019)"),
        "{a}"
    );
    assert!(
        a.contains("securityContext.sysctls: [{name: net.ipv4.ip_local_port_range, value: \"40000 40059\"}]"),
        "{a}"
    );
    let docker = Identity {
        runtime: Some(Runtime::Docker),
        container_id: Some(ID.into()),
        ..Identity::default()
    };
    let a = advice(&namespace(docker, &[]), &held(Level::Warning, &[])).unwrap();
    assert!(
        a.contains("`docker run --sysctl net.ipv4.ip_local_port_range=\"40000 40059\" ...`"),
        "{a}"
    );
    let a = advice(
        &namespace(Identity::default(), &["blue"]),
        &held(Level::Warning, &[40030]),
    )
    .unwrap();
    assert!(
        a.contains("`ip netns exec blue sysctl -w net.ipv4.ip_local_port_range=\"40000 40059\"`"),
        "{a}"
    );
    assert!(a.contains("ip_local_reserved_ports=40030"), "{a}");
    let a = advice(
        &namespace(Identity::default(), &[]),
        &held(Level::Warning, &[]),
    )
    .unwrap();
    assert!(a.contains("`nsenter -t 812 -n sysctl -w "), "{a}");
    // Nothing to advise once it is back to ok.
    assert_eq!(
        advice(&namespace(Identity::default(), &[]), &held(Level::Ok, &[])),
        None
    );
}

fn watched(inode: u64, level: Level, usage: f64, identity: Identity) -> Watched {
    let mut w = Watched::new(Namespace {
        inode,
        ..namespace(identity, &[])
    });
    w.alert = raised(level);
    w.quiet = Some(Quiet {
        bound: 1,
        capacity: 100,
        usage: Ratio::from_percent(usage).unwrap(),
    });
    w
}

#[test]
fn metrics_are_labelled_netns_container_pod_worst_first_and_bounded() {
    let mut known = Known::new();
    let pod = Identity {
        pod: Some("shop/checkout".into()),
        runtime: Some(Runtime::Containerd),
        container_id: Some(ID.into()),
        ..Identity::default()
    };
    known.insert(7, watched(7, Level::Critical, 60.0, pod));
    for i in 100..130 {
        known.insert(i, watched(i, Level::Ok, 1.0, Identity::default()));
    }
    let p = publish(&known, None, 3);
    assert_eq!(p.namespaces.len(), 31);
    assert_eq!(p.namespaces[0].inode, 7, "worst first");
    let m = &p.metrics;
    assert!(
        m.contains(
            "portd_netns_alert_level{netns=\"net:[7]\",container=\"containerd:0123456789ab\",pod=\"shop/checkout\"} 2\n"
        ),
        "{m}"
    );
    assert!(m.contains("portd_netns_watched 31\n"));
    assert!(m.contains("portd_netns_censuses_total 3\n"));
    let series = m
        .lines()
        .filter(|l| l.starts_with("portd_netns_usage_ratio{"))
        .count();
    assert_eq!(series, TOP_NAMESPACES);
    assert!(!m.contains("namespace="), "never a `namespace` label");
    assert!(!m.contains("pid="), "never a pid label");
}
