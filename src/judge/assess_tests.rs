//! The assessment without root: series of censuses of synthetic sockets on
//! the 1000-port range of the forecast's tests (40000-40999), judged with
//! the default policy (warning 40 %, critical 50 %, hold 30 s, interval
//! 2 s: a horizon of 32 s) in advise mode.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use super::*;
use crate::base::kernel::TcpState;
use crate::base::ports::PortSet;
use crate::judge::fastpath::Due;
use crate::judge::forecast::Target;
use crate::judge::forecast::tests::{LOCAL, settings};
use crate::observe::census::{Proto, Socket};
use crate::observe::usage::{Aggregator, UsageOptions};
use crate::policy::Mode;

/// `live` connections to 10.0.0.1:80 and `bound` TCP sockets taken with
/// `bind(0)` and never connected (the TCP pool's alone), on other ports.
pub(crate) fn census(live: u16, bound: u16, policy: &Policy) -> Usage {
    let mut agg = Aggregator::new(settings(), PortSet::new());
    let socket = |local_port, remote, remote_port, state| Socket {
        proto: Proto::Tcp,
        local: LOCAL,
        local_port,
        remote,
        remote_port,
        state,
        uid: 0,
        inode: 0,
    };
    let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    for i in 0..live {
        agg.visit(&socket(40000 + i, remote, 80, TcpState::Established));
    }
    let nowhere = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for i in 0..bound {
        agg.visit(&socket(40999 - i, nowhere, 0, TcpState::BoundInactive));
    }
    let options = UsageOptions {
        tcp_pool_in_headline: policy.tcp_pool_alerts,
    };
    agg.finish("test", true, options)
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

/// The daemon's censuses of one namespace, one a second: its memory and
/// the alert state it records.
pub(crate) struct CensusSeries {
    pub memory: Memory,
    pub policy: Policy,
    pub history: History,
    pub authority: Authority,
}

impl CensusSeries {
    pub fn new(policy: Policy) -> Self {
        let authority = Authority::of(Mode::Advise, false, None, None);
        CensusSeries {
            memory: Memory::default(),
            policy: Policy {
                mode: Mode::Advise,
                ..policy
            },
            history: History::default(),
            authority,
        }
    }

    /// Judges the census taken `secs` into the series, as the daemon does.
    pub fn census(&mut self, secs: u64, usage: &Usage) -> Assessment {
        let a = assess(
            &mut self.memory,
            &Evidence {
                usage,
                processes: None,
                policy: &self.policy,
                history: &self.history,
                pin: None,
                foreign_dropin: None,
                now: t(secs),
                authority: &self.authority,
                single: false,
            },
        );
        self.history.alert = a.decision.alert.clone();
        a
    }

    /// Live connections to one destination growing by `per_second` from
    /// 100, one census a second: the assessment of the last.
    pub fn ramp(&mut self, per_second: u16, censuses: u16) -> (Usage, Assessment) {
        let mut last = None;
        for i in 0..censuses {
            let usage = census(100 + per_second * i, 0, &self.policy);
            let a = self.census(u64::from(i), &usage);
            last = Some((usage, a));
        }
        last.expect("at least one census")
    }
}

#[test]
fn the_time_to_exhaustion_is_the_soonest_of_the_counting_forecasts() {
    // 100, 170, 240 of 1000 ports: 70 a second, 760 left, 10.9 s.
    let (_, a) = CensusSeries::new(Policy::default()).ramp(70, 3);
    let soonest = a
        .forecast
        .iter()
        .filter_map(|f| f.time_to_exhaustion)
        .reduce(f64::min)
        .unwrap();
    assert!((soonest - 760.0 / 70.0).abs() < 1e-9, "{soonest}");
    assert_eq!(a.time_to_exhaustion, Some(soonest));
    // Critical (500) in 3.7 s, sooner than the horizon: the level is
    // confirmed before the hold, and the polls hurry.
    assert!(a.hurry);
    assert!(a.decision.urgent.is_some());
    assert_eq!(a.level(), Level::Warning);
    assert_eq!(a.decision.transition, Some((Level::Ok, Level::Warning)));
}

/// A TCP `bind(0)` pool running out in 4.9 s beside a destination that
/// holds 10 ports and does not grow.
fn pool_ramp(tcp_pool_alerts: bool) -> Assessment {
    let mut series = CensusSeries::new(Policy {
        tcp_pool_alerts,
        ..Policy::default()
    });
    let mut last = None;
    for i in 0..3 {
        let usage = census(10, 300 + 100 * i, &series.policy);
        last = Some(series.census(u64::from(i), &usage));
    }
    last.unwrap()
}

#[test]
fn a_forecast_that_does_not_count_contributes_to_none() {
    let a = pool_ramp(false);
    // The pool is forecast (and shown) ...
    let pool = a.forecast.iter().find(|f| f.target == Target::TcpPool);
    assert!(
        pool.is_some_and(|f| f.time_to_exhaustion.is_some()),
        "{a:?}"
    );
    // ... but counts towards nothing: not the time to exhaustion, not the
    // hurry, not the decision, not the remedies.
    assert_eq!(a.time_to_exhaustion, None);
    assert!(!a.hurry);
    assert_eq!(a.decision.urgent, None);
    assert_eq!(a.decision.unfit, None);
    assert!(a.remedies.is_empty());
    assert_eq!(a.level(), Level::Ok);
    // With the policy's alerts on the pool, the same censuses count.
    let a = pool_ramp(true);
    let t = a.time_to_exhaustion.unwrap();
    assert!((t - 490.0 / 100.0).abs() < 1e-9, "{t}");
    assert!(a.hurry);
    assert_eq!(a.decision.urgent.map(|f| f.target), Some(Target::TcpPool));
}

#[test]
fn polls_hurry_exactly_while_a_counting_forecast_reaches_critical_within_four_horizons() {
    let policy = Policy::default();
    let window = (horizon(&policy) * HURRY_HORIZONS).as_secs_f64();
    assert_eq!(window, 128.0);
    for per_second in 1..=12u16 {
        let mut series = CensusSeries::new(policy.clone());
        let (_, a) = series.ramp(per_second, 2);
        // From 100 + g at g a second: critical (500) in (400 - g) / g.
        let g = f64::from(per_second);
        let reaches = (400.0 - g) / g < window;
        assert_eq!(a.hurry, reaches, "{per_second}/s");
        assert_eq!(series.memory.hurry(), reaches, "{per_second}/s");
        let critical = policy.thresholds.critical();
        assert_eq!(
            Counted::of(&a.forecast, &policy).reaches(critical, horizon(&policy) * 4),
            reaches
        );
    }
    // 4 a second: critical in 99 s. A flat series never hurries.
    assert!(CensusSeries::new(policy.clone()).ramp(4, 2).1.hurry);
    assert!(!CensusSeries::new(policy.clone()).ramp(3, 2).1.hurry);
    assert!(!CensusSeries::new(policy).ramp(0, 5).1.hurry);
}

#[test]
fn a_skip_ends_the_hurry_and_a_witnessed_failure_is_never_skipped_nor_put_off() {
    let mut series = CensusSeries::new(Policy::default());
    series.ramp(70, 3);
    assert!(series.memory.hurry());
    let skip = Skip {
        bound: 10,
        capacity: 1000,
    };
    assert_eq!(series.memory.look(Next::Skip(skip)), Look::Skip(skip));
    assert!(!series.memory.hurry());
    assert_eq!(
        series.memory.look(Next::Census(Due::Growing)),
        Look::MayWait
    );
    assert_eq!(
        series.memory.look(Next::Census(Due::AlertRaised)),
        Look::MayWait
    );
    assert_eq!(
        series.memory.look(Next::Census(Due::AlertPending)),
        Look::Census
    );
    series.memory.witnessed();
    assert_eq!(series.memory.look(Next::Skip(skip)), Look::Census);
    assert_eq!(series.memory.look(Next::Census(Due::Growing)), Look::Census);
    // The next census decides on it (the planner acts at once); then the
    // fast path's skips stand again.
    let usage = census(100, 0, &series.policy);
    series.census(10, &usage);
    assert_eq!(series.memory.look(Next::Skip(skip)), Look::Skip(skip));
}

#[test]
fn a_single_look_holds_the_level_it_sees_and_remembers_nothing() {
    let policy = Policy::default();
    // 450 of 1000: at the warning level.
    let usage = census(450, 0, &policy);
    let authority = Authority::of(Mode::Advise, false, None, None);
    let mut memory = Memory::default();
    let a = assess(
        &mut memory,
        &Evidence {
            usage: &usage,
            processes: None,
            policy: &policy,
            history: &History::default(),
            pin: None,
            foreign_dropin: None,
            now: t(0),
            authority: &authority,
            single: true,
        },
    );
    assert_eq!(a.level(), Level::Warning);
    assert!(a.forecast.is_empty() && a.time_to_exhaustion.is_none() && !a.hurry);
    assert!(!a.remedies.is_empty(), "{a:?}");
    assert_eq!(a.exhausted, None);
    // The same census in the daemon's series: its first census holds
    // nothing yet (the hold runs) and names no remedy without a rate.
    let d = CensusSeries::new(policy).census(0, &usage);
    assert_eq!(d.level(), Level::Ok);
    assert!(d.remedies.is_empty());
}

/// The counters `secs` after the census of a ramp of 70 a second that
/// began at 100 (ActiveOpens counted `opened` since, the pace now `pace`).
fn since(secs: f64, opened: u64, pace: f64) -> Since {
    Since {
        age: Duration::from_secs_f64(secs),
        opened: Some(opened),
        pace: Some(pace),
        totals: None,
    }
}

#[test]
fn a_burst_then_held_runs_out_never_once_the_connects_stop() {
    // 100, 170, 240 of 1000 ports: the census says 10.9 s.
    let mut series = CensusSeries::new(Policy::default());
    let (_, a) = series.ramp(70, 3);
    assert!(a.time_to_exhaustion.is_some_and(|t| t < 11.0));
    // A poll later, no connect() since the census: not growing.
    let held = revise(&a, &series.policy, &since(1.0, 0, 0.0));
    assert_eq!(held.time_to_exhaustion, None, "{held:?}");
    // Destinations gain ports only by connect(); the pools, which bind()
    // feeds too, count only when the policy says so.
    assert!(
        held.forecast
            .iter()
            .filter(|f| matches!(f.target, Target::Destination { .. }))
            .all(|f| f.growth_per_second == 0.0 && !f.sustained)
    );
    assert!(!held.hurry);
    // What the census decided stands; nothing is reported again.
    assert_eq!(held.decision, a.decision);
    assert_eq!(held.level(), a.level());
    assert_eq!(held.exhausted, None);
    // The ports of the burst are held: the census's count stays.
    assert_eq!(held.forecast[0].used, a.forecast[0].used);
}

#[test]
fn slower_growth_runs_out_later_and_the_same_growth_sooner_as_time_passes() {
    let mut series = CensusSeries::new(Policy::default());
    let (_, a) = series.ramp(70, 3);
    let t0 = a.time_to_exhaustion.unwrap();
    // Two seconds on at 10 connect()s a second: 20 gained, 740 left at 10/s.
    let slower = revise(&a, &series.policy, &since(2.0, 20, 10.0));
    let t = slower.time_to_exhaustion.unwrap();
    assert!((t - 74.0).abs() < 1e-9, "{t}");
    assert!(t > t0);
    // At the census's own rate the time counts down with the clock.
    let same = revise(&a, &series.policy, &since(2.0, 140, 70.0));
    let t = same.time_to_exhaustion.unwrap();
    assert!((t - (t0 - 2.0)).abs() < 0.1, "{t} vs {t0}");
    // Faster connects never raise the census's rate: growth the counters
    // see again is measured by a census.
    let faster = revise(&a, &series.policy, &since(1.0, 200, 200.0));
    assert!(
        faster
            .forecast
            .iter()
            .all(|f| f.growth_per_second <= 70.0 + 1e-9)
    );
    // Fewer sockets in the namespace than the census counted plus the
    // rate: the totals bound the ports gained.
    let bounded = Since {
        totals: Some(crate::observe::census::sockstat::Totals {
            tcp_inuse: 250,
            tcp_tw: 0,
            udp_inuse: 0,
        }),
        ..since(2.0, 140, 70.0)
    };
    let t = revise(&a, &series.policy, &bounded)
        .time_to_exhaustion
        .unwrap();
    assert!((t - 750.0 / 70.0).abs() < 1e-9, "{t}");
}

#[test]
fn renewed_growth_after_a_revised_hold_still_takes_a_census() {
    // The revision publishes; the fast path still schedules the census
    // that measures growth again.
    let mut series = CensusSeries::new(Policy::default());
    let (usage, a) = series.ramp(70, 3);
    let held = revise(&a, &series.policy, &since(1.0, 0, 0.0));
    assert_eq!(held.time_to_exhaustion, None);
    let settings = usage.settings.clone();
    let baseline = crate::judge::fastpath::Baseline::of(&usage, Some(1000), Duration::from_secs(3));
    let counters = crate::judge::fastpath::Counters {
        settings: &settings,
        totals: Some(crate::observe::census::sockstat::Totals {
            tcp_inuse: 400,
            tcp_tw: 0,
            udp_inuse: 0,
        }),
        active_opens: Some(1160),
        pace: Some(80.0),
    };
    let alert = crate::judge::planner::AlertState::default();
    let next = crate::judge::fastpath::next(Some(&baseline), &counters, &series.policy, &alert);
    assert!(
        matches!(next, Next::Census(Due::Growing | Due::BoundAtWarning)),
        "{next:?}"
    );
}
