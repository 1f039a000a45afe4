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
