//! The daemon's watch over other namespaces without root: the per-namespace
//! rule, which namespaces take a census, the advice, the metrics and the
//! status headline from the daemon's view. Default policy: warning at
//! 40 %, critical at 50 %, `max_staleness` 5 minutes.

use std::time::{Duration, Instant};

use super::refresh::later;
use super::*;
use crate::base::kernel::TwReuse;
use crate::base::ports::{PortRange, PortSet, Ratio};
use crate::judge::planner::{Action, Blocked, Decision, Plan};
use crate::observe::netns::identity::{Identity, Runtime};

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
fn a_namespace_is_another_at_the_same_inode_only_when_its_process_started_after_the_last_look() {
    // Seen at 100 s after boot; the process found in it now started...
    assert!(later(Some(100.5), Some(100.0)), "...after: another one");
    assert!(!later(Some(99.0), Some(100.0)), "...before: it lived on");
    assert!(!later(Some(100.0), Some(100.0)));
    assert!(!later(None, Some(100.0)), "gone too: nothing to tell");
    assert!(!later(Some(100.5), None));
}

#[test]
fn with_an_alert_raised_every_poll_looks_else_within_its_share() {
    let t0 = Instant::now();
    let costly = Some(Spent {
        started: t0,
        took: Duration::from_millis(100),
    });
    let at = |ms| t0 + Duration::from_millis(ms);
    // 100 ms at 5 %: 2 s from its start, unless something cannot wait.
    assert!(!looks(false, false, costly, at(500)));
    assert!(looks(true, false, costly, at(500)));
    assert!(looks(false, true, costly, at(500)));
    assert!(looks(false, false, costly, at(2000)));
    assert!(looks(false, false, None, t0));
}

#[test]
fn what_cannot_wait_comes_first_the_oldest_census_first() {
    let due = vec![
        (1, Due::Stale, Some(Duration::from_secs(900))),
        (2, Due::BoundAtWarning, Some(Duration::from_secs(5))),
        (3, Due::FirstCensus, None),
        (4, Due::AlertRaised, Some(Duration::from_secs(1))),
        (5, Due::Stale, Some(Duration::from_secs(1000))),
    ];
    let inodes: Vec<u64> = order(due).into_iter().map(|(i, _)| i).collect();
    // A first census before alerts raised a poll ago: they take turns.
    assert_eq!(inodes, vec![3, 2, 4, 5, 1]);
    assert!(order(Vec::new()).is_empty());
}

#[test]
fn what_cannot_wait_is_censused_beyond_the_cap_within_the_time_of_a_poll() {
    let ms = Duration::from_millis;
    // What can wait: on a sweep of the settings only, two at most.
    assert!(one_more(Due::Stale, 0, ms(0), true));
    assert!(one_more(
        Due::NoCounters,
        CENSUSES_PER_POLL - 1,
        ms(900),
        true
    ));
    assert!(!one_more(Due::Stale, 0, ms(0), false));
    assert!(!one_more(Due::Stale, CENSUSES_PER_POLL, ms(1), true));
    assert!(!one_more(Due::NoCounters, CENSUSES_PER_POLL, ms(1), true));
    // Five namespaces critical at once are all censused on any poll,
    // unless their censuses already took the poll's time.
    for why in [
        Due::AlertRaised,
        Due::AlertPending,
        Due::BoundAtWarning,
        Due::Growing,
        Due::FirstCensus,
        Due::SettingsChanged,
    ] {
        for sweep in [false, true] {
            assert!(one_more(why, 4, ms(5), sweep), "{why:?}");
            assert!(one_more(why, 1, ms(900), sweep), "{why:?}");
            assert!(!one_more(why, 4, CENSUS_TIME_PER_POLL, sweep), "{why:?}");
        }
    }
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
    // The labels and the text are publish/metrics.rs's (tested there).
    let m = p.metrics.as_ref().expect("rows after a poll");
    assert_eq!(
        (m.top[0].inode, m.top[0].level, m.top[0].used),
        (7, Level::Critical, 0)
    );
    assert_eq!(m.top[0].container, "containerd:0123456789ab");
    assert_eq!(m.top[0].pod, "shop/checkout");
    assert_eq!((m.watched, m.censuses), (31, 3));
    assert_eq!(m.top.len(), TOP_NAMESPACES);
}

/// A fixture `/proc` at 100 s after boot: portd in `net:[1]`, and each
/// `(pid, inode, started)` a process in `net:[inode]` since `started` s.
fn proc_at_100s(processes: &[(u32, u64, u64)]) -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let tps = procfs::ticks_per_second();
    for (pid, inode, started) in [(1, 1, 0)].iter().chain(processes) {
        std::fs::create_dir_all(proc.join(format!("{pid}/ns"))).unwrap();
        symlink(format!("net:[{inode}]"), proc.join(format!("{pid}/ns/net"))).unwrap();
        std::fs::write(
            proc.join(format!("{pid}/stat")),
            format!(
                "{pid} (sleep) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
                started * tps
            ),
        )
        .unwrap();
    }
    std::fs::create_dir_all(proc.join("self/ns")).unwrap();
    symlink("net:[1]", proc.join("self/ns/net")).unwrap();
    std::fs::write(proc.join("uptime"), "100.00 50.00\n").unwrap();
    dir
}

fn watched_at(inode: u64, pid: u32, level: Level, seen: f64) -> Watched {
    let mut w = watched(inode, level, 1.0, Identity::default());
    w.ns.pid = Some(pid);
    w.seen = Some(seen);
    w
}

#[test]
fn a_namespace_that_vanishes_with_a_raised_alert_ends_it_and_a_reused_inode_starts_afresh() {
    let dir = proc_at_100s(&[(20, 200, 50), (30, 300, 95), (40, 400, 10)]);
    let mut known = Known::new();
    // Still there, through the same process.
    known.insert(200, watched_at(200, 20, Level::Critical, 90.0));
    // Its process (31) is gone; the one now at its inode started after the
    // last look (95 s > 90 s): another namespace.
    known.insert(300, watched_at(300, 31, Level::Critical, 90.0));
    // Its process (39) is gone, but 40 was in it before the last look: it
    // lives on.
    known.insert(400, watched_at(400, 39, Level::Critical, 90.0));
    // Gone, raised and quiet.
    known.insert(500, watched_at(500, 50, Level::Warning, 90.0));
    known.insert(600, watched_at(600, 60, Level::Ok, 90.0));

    let (unreadable, gone) = refresh(&Host::new(dir.path()), &mut known);
    assert_eq!(unreadable, 0);
    let ended: Vec<(u64, Level)> = gone.iter().map(|g| (g.ns.inode, g.level)).collect();
    assert_eq!(ended, vec![(300, Level::Critical), (500, Level::Warning)]);
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    assert_eq!(inodes, vec![200, 300, 400]);
    assert_eq!(known[&200].alert.level, Level::Critical);
    assert_eq!(known[&300].alert.level, Level::Ok, "a new one, not alerted");
    assert_eq!(known[&300].ns.label, "pid 30");
    assert_eq!(known[&400].alert.level, Level::Critical);
    assert_eq!(known[&400].ns.pid, Some(40));
    assert!(known.values().all(|w| w.seen == Some(100.0)));
}
