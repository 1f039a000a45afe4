//! The fast path without root: the last census, the counters and the
//! policy in, a census or a skip out. Default policy with a 10 s interval
//! (`policy()`): warning at 40 %, `max_staleness` 5 minutes; every
//! capacity below is 1000 ports.

use std::time::{Duration, SystemTime};

use super::*;

fn settings(low: u16, high: u16) -> KernelSettings {
    crate::observe::census::settings::for_tests(low, high, &[])
}

fn baseline(settings: &KernelSettings, worst: u64, active_opens: Option<u64>) -> Baseline<'_> {
    Baseline::for_tests(settings, worst, active_opens, Duration::from_secs(10))
}

fn totals(tcp_inuse: u64, tcp_tw: u64, udp_inuse: u64) -> Totals {
    Totals {
        tcp_inuse,
        tcp_tw,
        udp_inuse,
    }
}

fn counters(settings: &KernelSettings, totals: Totals, active_opens: Option<u64>) -> Counters<'_> {
    Counters {
        settings,
        totals: Some(totals),
        active_opens,
        pace: None,
    }
}

/// The default policy with a 10 s interval: the arithmetic below counts
/// hold (30 s) + interval = 40 s.
fn policy() -> Policy {
    Policy {
        interval: Duration::from_secs(10),
        ..Policy::default()
    }
}

fn quiet() -> AlertState {
    AlertState::default()
}

fn skip(bound: u64) -> Next {
    Next::Skip(Skip {
        bound,
        capacity: 1000,
    })
}

#[test]
fn the_first_poll_takes_a_census() {
    let s = settings(40000, 40999);
    let now = counters(&s, totals(0, 0, 0), None);
    assert_eq!(
        next(None, &now, &policy(), &quiet()),
        Next::Census(Due::FirstCensus)
    );
}

#[test]
fn sockets_below_the_warning_level_skip_the_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, None);
    let now = counters(&s, totals(300, 99, 50), None);
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(399));
}

#[test]
fn sockets_at_the_warning_level_take_a_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, None);
    let now = counters(&s, totals(300, 100, 50), None);
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::BoundAtWarning)
    );
}

#[test]
fn the_skip_message_names_the_bound() {
    assert_eq!(
        Skip {
            bound: 399,
            capacity: 1000
        }
        .to_string(),
        "census skipped: at most 399 of 1000 ports towards any destination"
    );
}

#[test]
fn few_connects_since_the_last_census_bound_below_the_socket_total() {
    // 5000 sockets would reach the warning level, but the busiest
    // destination had 100 ports and only 50 connect()s happened since.
    let s = settings(40000, 40999);
    let last = baseline(&s, 100, Some(7000));
    let now = counters(&s, totals(5000, 0, 0), Some(7050));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(150));
}

#[test]
fn many_connects_since_the_last_census_take_a_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 100, Some(7000));
    let now = counters(&s, totals(5000, 0, 0), Some(7300));
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::BoundAtWarning)
    );
}

#[test]
fn the_socket_total_bounds_when_it_is_below_the_connects_bound() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 100, Some(7000));
    let now = counters(&s, totals(20, 5, 0), Some(9000));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(25));
}

#[test]
fn an_active_opens_counter_that_went_back_falls_back_to_the_socket_total() {
    // A counter lower than at the last census (wrapped, or another
    // namespace): the connects bound is unknown, sockstat still bounds.
    let s = settings(40000, 40999);
    let last = baseline(&s, 100, Some(7000));
    let now = counters(&s, totals(450, 0, 0), Some(10));
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::BoundAtWarning)
    );
    let now = counters(&s, totals(350, 0, 0), Some(10));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(350));
}

#[test]
fn a_busy_udp_pool_takes_a_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, None);
    let now = counters(&s, totals(10, 0, 400), None);
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::BoundAtWarning)
    );
}

#[test]
fn the_tcp_pool_counts_only_when_the_policy_alerts_on_it() {
    // The connects bound keeps destinations low, but bind(0) takes ports
    // without connect(): only the socket total bounds the TCP pool.
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, Some(100));
    let now = counters(&s, totals(600, 0, 0), Some(110));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(20));
    let policy = Policy {
        tcp_pool_alerts: true,
        ..Policy::default()
    };
    assert_eq!(
        next(Some(&last), &now, &policy, &quiet()),
        Next::Census(Due::BoundAtWarning)
    );
}

#[test]
fn changed_settings_take_a_census() {
    let (then, now_settings) = (settings(40000, 40999), settings(40000, 41999));
    let last = baseline(&then, 10, None);
    let now = counters(&now_settings, totals(0, 0, 0), None);
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::SettingsChanged)
    );
}

#[test]
fn a_raised_or_pending_alert_takes_a_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, None);
    let now = counters(&s, totals(0, 0, 0), None);
    let raised = AlertState {
        level: Level::Warning,
        ..AlertState::default()
    };
    assert_eq!(
        next(Some(&last), &now, &policy(), &raised),
        Next::Census(Due::AlertRaised)
    );
    let pending = AlertState {
        pending: Some((Level::Warning, SystemTime::UNIX_EPOCH)),
        ..AlertState::default()
    };
    assert_eq!(
        next(Some(&last), &now, &policy(), &pending),
        Next::Census(Due::AlertPending)
    );
}

#[test]
fn a_census_older_than_max_staleness_is_taken_again() {
    let s = settings(40000, 40999);
    let mut last = baseline(&s, 10, None);
    last.age = Policy::default().max_staleness;
    let now = counters(&s, totals(0, 0, 0), None);
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::Stale)
    );
}

#[test]
fn unreadable_counters_take_a_census() {
    let s = settings(40000, 40999);
    let last = baseline(&s, 10, None);
    let now = Counters {
        settings: &s,
        totals: None,
        active_opens: Some(5),
        pace: None,
    };
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::NoCounters)
    );
}

#[test]
fn connects_at_a_rate_that_reaches_critical_within_hold_and_a_poll_take_a_census() {
    // 100 held, 150 connect()s in 10 s with as many sockets now: 15/s over
    // the hold (30 s) and a poll (10 s) bring one destination to 700 of 1000.
    let s = settings(40000, 40999);
    let last = baseline(&s, 100, Some(7000));
    let now = counters(&s, totals(100, 150, 0), Some(7150));
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::Growing)
    );
    // The same connect()s leaving few sockets behind: no destination grew.
    let now = counters(&s, totals(20, 0, 0), Some(7150));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(20));
}

#[test]
fn the_projection_runs_from_now_not_from_the_last_census() {
    // Nothing held at the last census, 10 s ago; 100 connect()s since, all
    // still holding a port: 10/s for the hold and a poll (40 s) from now
    // is 100 + 400 = 500 of 1000, critical. Counted from the last census
    // (400) it would have waited until the bound itself reached warning.
    let s = settings(40000, 40999);
    let last = baseline(&s, 0, Some(1000));
    let now = counters(&s, totals(100, 0, 0), Some(1100));
    assert_eq!(
        next(Some(&last), &now, &policy(), &quiet()),
        Next::Census(Due::Growing)
    );
    // Half the rate stays short of critical: no census.
    let now = counters(&s, totals(50, 0, 0), Some(1050));
    assert_eq!(next(Some(&last), &now, &policy(), &quiet()), skip(50));
}

#[test]
fn a_rising_rate_is_projected_at_its_pace_not_its_mean() {
    // The suite's rising ramp, seen 30 s after a census of 50 ports: 350
    // connect()s since (a mean of 11.7/s, 50 + 350 + 467 = 867 of 2000:
    // no census), but 17/s over the last poll: 50 + 350 + 680 = 1080,
    // critical within the hold and a poll.
    let s = settings(40000, 41999);
    let last = Baseline {
        capacity: 2000,
        age: Duration::from_secs(30),
        ..baseline(&s, 50, Some(1000))
    };
    let mean_only = counters(&s, totals(400, 0, 0), Some(1350));
    assert_eq!(
        next(Some(&last), &mean_only, &policy(), &quiet()),
        Next::Skip(Skip {
            bound: 400,
            capacity: 2000
        })
    );
    let paced = Counters {
        pace: Some(17.0),
        ..mean_only
    };
    assert_eq!(
        next(Some(&last), &paced, &policy(), &quiet()),
        Next::Census(Due::Growing)
    );
}

#[test]
fn the_pace_is_the_rate_since_the_previous_poll() {
    let t0 = std::time::Instant::now();
    let mut pace = Pace::default();
    assert_eq!(pace.update(t0, Some(1000)), None, "one reading: no rate");
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(pace.update(t1, Some(1040)), Some(20.0));
    // A poll soon after is measured against the last one a span away, and
    // does not replace it.
    let t2 = t1 + Duration::from_millis(100);
    assert_eq!(pace.update(t2, Some(1045)), Some(10.0));
    let t3 = t1 + Duration::from_secs(1);
    assert_eq!(pace.update(t3, Some(1070)), Some(30.0));
    // A counter that went back (a new namespace) or could not be read
    // starts over.
    assert_eq!(pace.update(t3 + Duration::from_secs(1), Some(5)), None);
    assert_eq!(pace.update(t3 + Duration::from_secs(2), None), None);
    assert_eq!(pace.update(t3 + Duration::from_secs(3), Some(10)), None);
}
