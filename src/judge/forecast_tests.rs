//! The forecast without root: censuses built from synthetic sockets on a
//! range of 1000 ports (40000-40999).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use super::*;
use crate::base::kernel::{TcpState, TwReuse};
use crate::base::ports::{PortRange, PortSet};
use crate::observe::census::{KernelSettings, Proto, Socket};
use crate::observe::usage::{Aggregator, UsageOptions};

pub(crate) fn settings() -> KernelSettings {
    KernelSettings {
        port_range: PortRange::new(40000, 40999).unwrap(),
        reserved_ports: PortSet::new(),
        unprivileged_port_start: 1024,
        tcp_tw_reuse: TwReuse::from_sysctl(0),
        tcp_timestamps: true,
    }
}

pub(crate) const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// A census with, per destination `10.0.0.<n>:80`, `(n, time_wait, live)` sockets.
pub(crate) fn census(dests: &[(u8, u16, u16)]) -> Usage {
    let mut agg = Aggregator::new(settings(), PortSet::new());
    for &(n, tw, live) in dests {
        let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, n));
        for i in 0..tw + live {
            agg.visit(&Socket {
                proto: Proto::Tcp,
                local: LOCAL,
                local_port: 40000 + i,
                remote,
                remote_port: 80,
                state: if i < tw {
                    TcpState::TimeWait
                } else {
                    TcpState::Established
                },
                uid: 0,
                inode: 0,
            });
        }
    }
    agg.finish("test", true, UsageOptions::default())
}

fn t(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_secs_f64(secs)
}

fn of(forecasts: &[Forecast], n: u8) -> Forecast {
    *forecasts
        .iter()
        .find(|f| {
            matches!(f.target, Target::Destination { destination } if destination.remote == IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
        })
        .unwrap_or_else(|| panic!("no forecast for 10.0.0.{n}: {forecasts:?}"))
}

#[test]
fn one_census_gives_no_rate_and_no_exhaustion() {
    let mut tr = Tracker::default();
    let u = census(&[(1, 300, 0)]);
    tr.update(&u, t(0.0));
    let f = of(&tr.forecast(&u), 1);
    assert_eq!(f.growth_per_second, 0.0);
    assert_eq!(f.time_to_exhaustion, None);
}

#[test]
fn censuses_less_than_a_second_apart_give_no_rate() {
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 100, 0)]), t(0.0));
    let u = census(&[(1, 300, 0)]);
    tr.update(&u, t(0.5));
    assert_eq!(of(&tr.forecast(&u), 1).growth_per_second, 0.0);
}

#[test]
fn a_time_wait_ramp_forecasts_rate_times_60s_and_the_time_to_exhaustion() {
    // 10 closes/s: 600 ports at steady state of 1000; 20/s: 1200, runs out.
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 100, 5), (2, 100, 5)]), t(0.0));
    let u = census(&[(1, 120, 5), (2, 140, 5)]);
    tr.update(&u, t(2.0));
    let fs = tr.forecast(&u);
    let slow = of(&fs, 1);
    assert_eq!(slow.connection_rate, 10.0);
    assert_eq!(slow.steady_state, Some(605));
    assert_eq!(slow.time_to_exhaustion, None, "levels off at 60.5%");
    assert!(
        slow.time_to(Ratio::whole_percent(50))
            .is_some_and(|s| (s - 37.5).abs() < 1e-9)
    );
    let fast = of(&fs, 2);
    assert_eq!(fast.steady_state, Some(1205));
    let tte = fast.time_to_exhaustion.unwrap();
    assert!((tte - 855.0 / 20.0).abs() < 1e-9, "{tte}");
}

#[test]
fn the_rate_decays_when_growth_stops() {
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 100, 0)]), t(0.0));
    tr.update(&census(&[(1, 200, 0)]), t(2.0));
    let u = census(&[(1, 200, 0)]);
    tr.update(&u, t(22.0));
    let f = of(&tr.forecast(&u), 1);
    assert!(
        f.growth_per_second < 50.0 * 0.4 && f.growth_per_second > 0.0,
        "{}",
        f.growth_per_second
    );
    assert!(!f.sustained);
    tr.update(&u, t(200.0));
    let f = of(&tr.forecast(&u), 1);
    assert!(f.growth_per_second < 0.01, "{}", f.growth_per_second);
    assert_eq!(f.time_to_exhaustion, None);
}

#[test]
fn a_fast_grower_at_20_percent_is_forecast_beside_flat_busier_ones() {
    let mut tr = Tracker::default();
    let flat: Vec<(u8, u16, u16)> = (10..16).map(|n| (n, 0, 450)).collect();
    let mut before = flat.clone();
    before.push((1, 100, 0));
    let mut after = flat;
    after.push((1, 200, 0));
    tr.update(&census(&before), t(0.0));
    let u = census(&after);
    tr.update(&u, t(1.0));
    let fs = tr.forecast(&u);
    let fast = of(&fs, 1);
    assert_eq!(fast.growth_per_second, 100.0);
    assert!(fast.time_to_exhaustion.is_some());
    assert!(fs.iter().any(|f| f.target == Target::UdpPool));
}

#[test]
fn growth_is_sustained_only_after_two_growing_intervals() {
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 0, 0)]), t(0.0));
    let u = census(&[(1, 300, 0)]);
    tr.update(&u, t(1.0));
    assert!(!of(&tr.forecast(&u), 1).sustained, "a burst");
    let u = census(&[(1, 400, 0)]);
    tr.update(&u, t(2.0));
    assert!(of(&tr.forecast(&u), 1).sustained);
}

#[test]
fn concurrency_follows_the_trend() {
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 0, 100)]), t(0.0));
    let u = census(&[(1, 0, 150)]);
    tr.update(&u, t(5.0));
    let f = of(&tr.forecast(&u), 1);
    assert_eq!(f.steady_state, None);
    assert_eq!(f.growth_per_second, 10.0);
    assert_eq!(f.expected(Duration::from_secs(10)), 250);
    assert!((f.time_to_exhaustion.unwrap() - 85.0).abs() < 1e-9);
}

#[test]
fn counting_forecasts_reach_critical_only_when_growth_gets_there_in_time() {
    let policy = Policy::default();
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 100, 0), (2, 300, 0)]), t(0.0));
    let u = census(&[(1, 110, 0), (2, 300, 0)]);
    tr.update(&u, t(1.0));
    let fs = tr.forecast(&u);
    // 10/s from 110: critical (500) in 39 s, steady state 600.
    let half = Ratio::whole_percent(50);
    let counting = Counted::of(&fs, &policy);
    assert!(counting.reaches(half, Duration::from_secs(40)));
    assert!(!counting.reaches(half, Duration::from_secs(30)));
    assert!(
        (counting.soonest_exhaustion().is_none()),
        "levels off at 60%"
    );
    let flat = census(&[(1, 110, 0), (2, 300, 0)]);
    let mut tr2 = Tracker::default();
    tr2.update(&flat, t(0.0));
    tr2.update(&flat, t(5.0));
    assert!(!Counted::of(&tr2.forecast(&flat), &policy).reaches(half, Duration::from_secs(3600)));
}

#[test]
fn the_tcp_pool_counts_only_when_the_policy_alerts_on_it() {
    let tcp = Forecast {
        growth_per_second: 10.0,
        time_to_exhaustion: Some(5.0),
        sustained: true,
        ..Forecast::flat(Target::TcpPool, 50, 0, 100)
    };
    let all = [tcp];
    let mut policy = Policy {
        tcp_pool_alerts: false,
        ..Policy::default()
    };
    let counting = Counted::of(&all, &policy);
    assert_eq!(counting.iter().count(), 0);
    assert_eq!(counting.soonest_exhaustion(), None);
    assert!(!counting.reaches(Ratio::whole_percent(60), Duration::from_secs(60)));
    policy.tcp_pool_alerts = true;
    let counting = Counted::of(&all, &policy);
    assert_eq!(counting.soonest_exhaustion(), Some(5.0));
    assert!(counting.reaches(Ratio::whole_percent(60), Duration::from_secs(60)));
}

#[test]
fn one_census_of_growth_gives_no_time_to_exhaustion_two_in_a_row_do() {
    // A pool of 30 opened at once between two censuses, then held: the
    // census after it sees 30 a second once, which may be a burst that
    // already ended.
    let policy = Policy::default();
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 0, 0)]), t(0.0));
    let burst = census(&[(1, 0, 30)]);
    tr.update(&burst, t(1.0));
    let once = tr.forecast(&burst);
    assert!(once.iter().any(|f| f.time_to_exhaustion.is_some()));
    assert_eq!(Counted::of(&once, &policy).soonest_exhaustion(), None);
    // Growing again on the next census: a ramp, counted.
    let ramp = census(&[(1, 0, 60)]);
    tr.update(&ramp, t(2.0));
    let twice = tr.forecast(&ramp);
    assert!(Counted::of(&twice, &policy).soonest_exhaustion().is_some());
}

#[test]
fn a_pool_that_churns_after_a_burst_is_not_forecast_at_the_bursts_rate() {
    // As measured (benches/ramp.py churn-30): a pool opened at once, then
    // 100 connections a second replaced; the censuses see it move by a
    // port or two. Two such censuses in a row must not count the burst's rate,
    // which the smoothed rate still remembers, as sustained growth.
    let policy = Policy::default();
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 0, 0)]), t(0.0));
    tr.update(&census(&[(1, 0, 300)]), t(2.0));
    for (i, n) in [301u16, 303, 304, 306].into_iter().enumerate() {
        let u = census(&[(1, 0, n)]);
        tr.update(&u, t(3.0 + i as f64));
        let f = of(&tr.forecast(&u), 1);
        assert!(f.growth_per_second <= 2.0 || !f.sustained, "{f:?}");
        let tte = Counted::of(&tr.forecast(&u), &policy).soonest_exhaustion();
        assert!(tte.is_none_or(|t| t > 300.0), "census {i}: {tte:?}");
    }
}

#[test]
fn a_load_that_slows_is_forecast_at_its_slower_rate() {
    // A client that connects 100 a second, then 30 once the range is
    // half full (connect() slows there): two censuses at 30 a second
    // forecast 30, not the smoothed rate still near 100.
    let mut tr = Tracker::default();
    for (i, n) in [300u16, 400, 500, 600, 630, 660].into_iter().enumerate() {
        let u = census(&[(1, n, 0)]);
        tr.update(&u, t(i as f64));
        let rate = || of(&tr.forecast(&u), 1).growth_per_second;
        match i {
            2 | 3 => assert_eq!(rate(), 100.0, "census {i}"),
            5 => {
                assert_eq!(rate(), 30.0);
                assert!(of(&tr.forecast(&u), 1).sustained);
            }
            _ => {}
        }
    }
}

#[test]
fn a_load_that_has_just_begun_is_forecast_at_its_rate_not_its_first_spans() {
    // The step came halfway through the span before: that span saw half
    // the rate; the forecast takes the last span's.
    let mut tr = Tracker::default();
    tr.update(&census(&[(1, 300, 0)]), t(0.0));
    tr.update(&census(&[(1, 350, 0)]), t(1.0));
    let u = census(&[(1, 450, 0)]);
    tr.update(&u, t(2.0));
    let f = of(&tr.forecast(&u), 1);
    assert!(f.sustained);
    assert_eq!(f.growth_per_second, 100.0);
}
