//! The watch over other namespaces as a machine, without root: which
//! namespaces are watched through discovery, the fast path's rule per
//! namespace, which take a census and in what order, the pacing of looks,
//! the levels and advice, and which are worst. Default policy: warning at
//! 40 %, critical at 50 %, hold 30 s, `max_staleness` 5 minutes.

use std::time::{Duration, Instant, SystemTime};

use super::pacing::looks;
use super::*;
use crate::base::ports::{PortRange, PortSet, Ratio};
use crate::judge::forecast::tests::census;
use crate::judge::planner::{Action, Blocked, Decision, Plan};
use crate::observe::netns::identity::{Identity, Runtime};

pub(crate) fn settings(low: u16, high: u16) -> KernelSettings {
    crate::observe::census::settings::for_tests(low, high, &[])
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
    Baseline::for_tests(settings, worst, Some(100), age)
}

pub(crate) fn raised(level: Level) -> AlertState {
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
fn a_look_sweeps_within_its_one_percent_and_looks_within_five_unless_urgent() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut p = Pacing::default();
    // The first look sweeps; it costs 100 ms.
    assert_eq!(p.start(t0), Some(true));
    p.finished();
    p.ended(Some((Duration::from_millis(100), false)));
    // 100 ms at 5 %: no look before 2 s; at 1 %: no sweep before 10 s.
    assert_eq!(p.start(at(1000)), None);
    assert_eq!(p.start(at(2000)), Some(false));
    p.finished();
    p.ended(Some((Duration::from_millis(10), true)));
    // An alert raised there: every poll looks, whatever it cost.
    assert_eq!(p.start(at(2100)), Some(false));
    p.finished();
    p.ended(Some((Duration::from_millis(10), false)));
    assert_eq!(p.start(at(2150)), None);
    assert_eq!(p.start(at(10_000)), Some(true));
    // A look whose task failed leaves the pacing as it was.
    p.finished();
    p.ended(None);
    assert_eq!(p.start(at(10_001)), Some(true));
}

fn due(inode: u64, why: Due, age: Option<u64>) -> CensusDue {
    CensusDue {
        inode,
        why,
        age: age.map(Duration::from_secs),
        active_opens: None,
    }
}

#[test]
fn what_cannot_wait_comes_first_the_oldest_census_first() {
    let list = vec![
        due(1, Due::Stale, Some(900)),
        due(2, Due::BoundAtWarning, Some(5)),
        due(3, Due::FirstCensus, None),
        due(4, Due::AlertRaised, Some(1)),
        due(5, Due::Stale, Some(1000)),
        due(6, Due::NoCounters, Some(1)),
    ];
    let inodes: Vec<u64> = order(list).into_iter().map(|d| d.inode).collect();
    // A first census before alerts raised a poll ago: they take turns.
    assert_eq!(inodes, vec![3, 2, 4, 6, 5, 1]);
    assert!(order(Vec::new()).is_empty());
    assert!(cannot_wait(Due::SettingsChanged));
    assert!(!cannot_wait(Due::NoCounters));
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

pub(crate) fn namespace(identity: Identity, names: &[&str]) -> Namespace {
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

fn found(inode: u64, pid: u32) -> Found {
    Found {
        inode,
        pid: Some(pid),
        processes: 1,
        names: Vec::new(),
        own: false,
    }
}

fn watched_at(inode: u64, pid: u32, level: Level, seen: f64) -> Watched {
    let mut w = Watched::new(Namespace {
        inode,
        pid: Some(pid),
        ..namespace(Identity::default(), &[])
    });
    w.alert = raised(level);
    w.seen = Some(seen);
    w
}

#[test]
fn discovery_keeps_follows_and_ends_namespaces_and_tells_a_reused_inode() {
    let mut known = Known::new();
    known.insert(200, watched_at(200, 20, Level::Critical, 90.0));
    known.insert(300, watched_at(300, 31, Level::Critical, 90.0));
    known.insert(400, watched_at(400, 39, Level::Critical, 90.0));
    known.insert(500, watched_at(500, 50, Level::Warning, 90.0));
    known.insert(600, watched_at(600, 60, Level::Ok, 90.0));
    let (f200, f300, f400, f700) = (
        found(200, 20),
        found(300, 30),
        found(400, 40),
        found(700, 70),
    );
    let sightings = [
        // Through the same process: nothing read.
        Sighting {
            found: &f200,
            left: false,
            started: None,
        },
        // Its process left, the one there now started after the last look
        // (95 s > 90 s): another namespace.
        Sighting {
            found: &f300,
            left: true,
            started: Some(95.0),
        },
        // Its process left, but 40 was in it before the last look.
        Sighting {
            found: &f400,
            left: true,
            started: Some(10.0),
        },
        Sighting {
            found: &f700,
            left: false,
            started: None,
        },
    ];
    let mut named = Vec::new();
    let ended = refresh(&mut known, &sightings, Some(100.0), |f| {
        named.push(f.inode);
        Namespace {
            inode: f.inode,
            pid: f.pid,
            ..namespace(Identity::default(), &[])
        }
    });
    assert_eq!(named, vec![300, 700], "named once, when first found");
    let ended: Vec<(u64, Level)> = ended.iter().map(|w| (w.ns.inode, w.alert.level)).collect();
    // The reused inode and the vanished raised one end; the quiet one goes
    // without a word.
    assert_eq!(ended, vec![(300, Level::Critical), (500, Level::Warning)]);
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    assert_eq!(inodes, vec![200, 300, 400, 700]);
    assert_eq!(known[&300].alert.level, Level::Ok, "a new one, not alerted");
    assert_eq!(known[&400].alert.level, Level::Critical);
    assert_eq!(known[&400].ns.pid, Some(40), "follows discovery's pid");
    assert!(known.values().all(|w| w.seen == Some(100.0)));
}

fn reading(tcp_inuse: u64, settings: SettingsRead) -> NetnsReading {
    NetnsReading {
        counters: Some((totals(tcp_inuse, 0, 0), Some(100))),
        settings,
    }
}

#[test]
fn each_poll_a_namespace_is_proven_quiet_censused_or_dropped_as_its_reading_says() {
    let p = Policy::default();
    let now = Instant::now();
    let s = settings(40000, 40999);
    let mut known = Known::new();
    for inode in 1..=5 {
        known.insert(inode, watched_at(inode, 10, Level::Ok, 1.0));
    }
    let readings = HashMap::from([
        // Few sockets in a wide range: quiet, no census.
        (1, reading(10, SettingsRead::Read(s.clone()))),
        // 600 sockets could all be towards one destination.
        (2, reading(600, SettingsRead::Read(s.clone()))),
        // Never read and not read now: nothing to judge it by.
        (3, reading(600, SettingsRead::Kept)),
        // setns refused: counted, nothing kept.
        (4, reading(600, SettingsRead::Failed { refused: true })),
        // Its process exited since discovery.
        (5, reading(600, SettingsRead::Gone)),
    ]);
    let m = measure(&mut known, readings, &p, now);
    assert_eq!(
        m.due,
        vec![CensusDue {
            inode: 2,
            why: Due::FirstCensus,
            age: None,
            active_opens: Some(100),
        }]
    );
    assert_eq!(m.refused, 1);
    assert_eq!(known[&1].quiet.map(|q| q.bound), Some(10));
    assert!(
        known[&1].wants_settings(&known[&1].counted, true),
        "a sweep reads all"
    );
    assert!(!known[&1].wants_settings(&known[&1].counted, false));
    assert!(known[&4].settings.is_none());
    // The same counters on the next poll: still quiet, nothing worked out.
    let again = HashMap::from([(1, reading(10, SettingsRead::Kept))]);
    let m = measure(&mut known, again, &p, now + Duration::from_secs(2));
    assert!(m.due.is_empty() && m.refused == 0);
    assert!(known[&1].quiet.is_some());
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

#[test]
fn a_namespace_is_raised_after_the_hold_with_advice_and_its_errors_are_told_once() {
    let p = Policy::default();
    let mut w = watched_at(7, 812, Level::Ok, 1.0);
    let at = Instant::now();
    let census_at = (at, Duration::from_millis(3), Some(100));
    // 600 of 1000 ports towards one destination: critical, held 30 s.
    let busy = || census(&[(1, 0, 600)]);
    let Heard::Measured { assessment, .. } = w.censused(Ok(busy()), census_at, &p, t(0)) else {
        panic!("measured");
    };
    assert_eq!(assessment.decision.alert.level, Level::Ok);
    assert!(w.advice.is_none() && w.last.is_some() && w.settings.is_some());
    assert!(w.unsettled(), "pending");
    // Failures: the first told, the same one not again.
    assert!(matches!(
        w.censused(Err("EIO".into()), census_at, &p, t(2)),
        Heard::Failed { new: true }
    ));
    assert!(matches!(
        w.censused(Err("EIO".into()), census_at, &p, t(4)),
        Heard::Failed { new: false }
    ));
    let Heard::Measured {
        assessment,
        recovered,
    } = w.censused(Ok(busy()), census_at, &p, t(31))
    else {
        panic!("measured");
    };
    assert!(recovered, "works again");
    assert_eq!(assessment.decision.alert.level, Level::Critical);
    assert_eq!(w.alert.level, Level::Critical);
    let advice = w.advice.as_deref().unwrap_or_default();
    assert!(
        advice.contains("`nsenter -t 812 -n sysctl -w net.ipv4.ip_local_port_range="),
        "{advice}"
    );
}

#[test]
fn the_worst_come_first_by_level_then_usage() {
    let mut known = Known::new();
    let quiet_at = |inode, level, percent| {
        let mut w = watched_at(inode, 1, level, 1.0);
        w.quiet = Some(Quiet {
            bound: 1,
            capacity: 100,
            usage: Ratio::from_percent(percent).unwrap(),
        });
        w
    };
    known.insert(1, quiet_at(1, Level::Ok, 30.0));
    known.insert(2, quiet_at(2, Level::Warning, 10.0));
    known.insert(3, quiet_at(3, Level::Ok, 35.0));
    known.insert(4, watched_at(4, 1, Level::Ok, 1.0));
    let inodes: Vec<u64> = ordered(&known).iter().map(|w| w.ns.inode).collect();
    assert_eq!(inodes, vec![2, 3, 1, 4]);
    assert!(measured(&known[&1]) && !measured(&known[&4]));
    assert_eq!(usage_of(&known[&4]), 0.0);
}

#[test]
fn a_ramp_is_forecast_and_raised_before_the_hold_with_its_time_to_exhaustion() {
    let p = Policy::default();
    let mut w = watched_at(7, 812, Level::Ok, 1.0);
    let at = Instant::now();
    // 15 ports a second towards one destination of a 1000-port range:
    // 60, 90, 120 ports on three censuses 2 s apart.
    let mut last = None;
    for (i, used) in [60u16, 90, 120].into_iter().enumerate() {
        let secs = 2 * i as u64;
        let census_at = (
            at + Duration::from_secs(secs),
            Duration::from_millis(1),
            None,
        );
        let Heard::Measured { assessment, .. } =
            w.censused(Ok(census(&[(1, 0, used)])), census_at, &p, t(secs))
        else {
            panic!("measured");
        };
        last = Some(assessment);
    }
    let a = last.expect("three censuses");
    // 12 % of the range, far below warning: the forecast confirms it.
    assert_eq!(a.decision.alert.level, Level::Warning, "{:?}", a.decision);
    assert!(a.decision.urgent.is_some());
    let tte = a.time_to_exhaustion.expect("a time to exhaustion");
    assert!((50.0..70.0).contains(&tte), "{tte}");
    assert_eq!(w.time_to_exhaustion(), Some(tte));
    assert!(w.unsettled());
}

#[test]
fn a_quiet_namespace_whose_connect_rate_heads_for_critical_is_censused() {
    let p = Policy::default();
    let s = settings(40000, 40999);
    let mut c = counters(&s, totals(30, 0, 0));
    assert!(matches!(
        step(None, &c, &p, &raised(Level::Ok)),
        Step::Quiet(_)
    ));
    // 15 connect()s a second: 30 + 15 x 32 s reaches 500 of ~970.
    c.pace = Some(15.0);
    assert_eq!(
        step(None, &c, &p, &raised(Level::Ok)),
        Step::Census(Due::Growing)
    );
    c.pace = Some(1.0);
    assert!(matches!(
        step(None, &c, &p, &raised(Level::Ok)),
        Step::Quiet(_)
    ));
}
