use super::*;
use crate::base::ports::Port;
use crate::observe::usage::Cause;
use crate::policy::Thresholds;
use proptest::prelude::*;
use std::num::NonZeroU32;

/// 10 000 cases by default (the bar); `PROPTEST_CASES` overrides.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Ports clustered where bugs live: the range's edges, 1024, 65535.
fn port_near(anchors: Vec<u16>) -> impl Strategy<Value = u16> {
    let anchors2 = anchors.clone();
    prop_oneof![
        3 => (0..anchors.len(), -3i32..=3).prop_map(move |(i, d)| (i32::from(anchors[i]) + d).clamp(1, 65535) as u16),
        1 => (0..anchors2.len(), 0u16..200).prop_map(move |(i, d)| anchors2[i].saturating_add(d)),
        1 => 1u16..=65535,
    ]
}

#[derive(Clone, Debug)]
struct Case {
    obs: Observation,
    policy: Policy,
    history: History,
    now: SystemTime,
}

fn capacity_of(range: PortRange, reserved: &PortSet, listening: &PortSet) -> u64 {
    (range.low()..=range.high())
        .filter(|p| !reserved.contains(*p) && !listening.contains(*p))
        .count() as u64
}

// Test code: one generator for every field of a planner case, read top to
// bottom as the space the laws range over.
#[allow(clippy::too_many_lines)]
fn case() -> impl Strategy<Value = Case> {
    let bounds = prop_oneof![
        Just((32768u16, 60999u16)),
        Just((1024, 65535)),
        Just((1024, 1025)),
        Just((65534, 65535)),
        Just((40000, 40099)),
        Just((40000, 40000)),
        (1u16..=65535, 0u16..3000).prop_map(|(l, w)| (l, l.saturating_add(w))),
    ];
    bounds
        .prop_flat_map(|(low, high)| {
            let anchors = vec![low, high, 1024, 65535];
            (
                Just((low, high)),
                prop_oneof![Just(0u16), Just(1024u16), 0..=low].prop_map(move |u| u.min(low)),
                proptest::collection::vec(port_near(anchors.clone()), 0..12),
                proptest::collection::vec((port_near(anchors.clone()), 0u16..4), 0..4),
                proptest::collection::vec(port_near(anchors.clone()), 0..8),
                proptest::collection::vec((port_near(anchors.clone()), 0u16..6), 0..3),
                prop_oneof![Just(None), port_near(anchors.clone()).prop_map(Some)],
                prop_oneof![Just(65535u16), Just(high), port_near(anchors)],
                (1u32..=60, 1u32..=100, 0u32..=100, 0u32..=100),
                (0u64..4000, 0u8..4),
            )
        })
        .prop_map(
            |(
                (low, high),
                unpriv,
                res,
                res_runs,
                listen,
                prot,
                floor,
                ceiling,
                pct,
                (used_seed, exact),
            )| {
                let range = PortRange::new(low, high).unwrap();
                let mut reserved = PortSet::new();
                for p in res {
                    reserved.insert(p);
                }
                for (p, w) in res_runs {
                    reserved.insert_range(PortRange::new(p, p.saturating_add(w)).unwrap());
                }
                let mut listening = PortSet::new();
                for p in listen {
                    listening.insert(p);
                }
                let protected: Vec<PortRange> = prot
                    .into_iter()
                    .map(|(p, w)| PortRange::new(p, p.saturating_add(w)).unwrap())
                    .collect();
                let capacity = capacity_of(range, &reserved, &listening);
                let used = if capacity == 0 {
                    used_seed % 3
                } else {
                    used_seed % (capacity * 2 + 1)
                };
                let usage = Ratio::of(used, capacity);
                // Thresholds as percentages, ordered target < clear < warning <= critical,
                // sometimes exactly at the observed usage.
                let (tg, c, w, k) = pct;
                let mut warning = 0.05 + f64::from(w % 90) / 100.0;
                let mut critical = (warning + f64::from(k % 10) / 100.0).min(1.0);
                match exact {
                    1 if usage.fraction() > 0.02 && usage.fraction() <= 1.0 => {
                        warning = usage.fraction();
                        critical = critical.max(warning);
                    }
                    2 if usage.fraction() > 0.02 && usage.fraction() <= 1.0 => {
                        critical = usage.fraction();
                        warning = warning.min(critical);
                    }
                    _ => {}
                }
                // Above 0, as the policy's Thresholds require.
                let clear = warning * f64::from((c % 100).max(1)) / 100.0;
                let target = (warning * f64::from(tg % 60).max(1.0) / 100.0).min(clear.max(0.001));
                let policy = Policy {
                    thresholds: Thresholds::new(
                        Ratio::from_fraction(warning).unwrap(),
                        Ratio::from_fraction(critical).unwrap(),
                        Ratio::from_fraction(clear).unwrap(),
                    )
                    .unwrap(),
                    target: Ratio::from_fraction(target.max(0.001)).unwrap(),
                    hold: Duration::ZERO,
                    floor: floor.map_or(Floor::Initial, Floor::Port),
                    ceiling: Port::new(ceiling).unwrap(),
                    protected,
                    ..Policy::default()
                };
                let obs = Observation {
                    range,
                    reserved,
                    unprivileged_port_start: unpriv,
                    listening,
                    headline: Headline {
                        usage,
                        used,
                        capacity,
                        cause: Cause::Idle,
                    },
                    foreign_dropin: None,
                };
                Case {
                    obs,
                    policy,
                    history: History::default(),
                    now: t(1_000_000),
                }
            },
        )
}

fn decide(c: &Case) -> Decision {
    decide_with(c, &Authority::of(c.policy.mode, false, None, None))
}

fn decide_with(c: &Case, authority: &Authority) -> Decision {
    plan(&Inputs {
        observation: &c.obs,
        policy: &c.policy,
        history: &c.history,
        pin: None,
        now: c.now,
        authority,
        witnessed_failure: false,
        forecast: &[],
    })
}

fn any_reason_to_advise() -> impl Strategy<Value = Why> {
    prop_oneof![
        Just(Why::Policy),
        Just(Why::DryRun),
        Just(Why::Yielded("admin wrote 40000 40199".into())),
        Just(Why::StateUnreadable("not a portd state file".into())),
    ]
}

fn emitted(d: &Decision) -> Option<&Plan> {
    match &d.action {
        Action::Apply { plan } => Some(plan),
        Action::Hold { plan, .. } => plan.as_ref(),
        Action::Nothing => None,
    }
}

fn kernel_accepts(range: PortRange, unprivileged_port_start: u16) -> bool {
    // ipv4_local_port_range(): 1..=65535 each, low <= high, low >= ip_unprivileged_port_start.
    range.low() >= 1 && range.low() <= range.high() && range.low() >= unprivileged_port_start
}

/// What the host looks like after the plan is applied.
fn applied(c: &Case, p: &Plan) -> Case {
    let mut next = c.clone();
    next.obs.range = p.to;
    next.obs.reserved = p.reserved.clone();
    let capacity = capacity_of(p.to, &p.reserved, &c.obs.listening);
    next.obs.headline.capacity = capacity;
    next.obs.headline.usage = Ratio::of(c.obs.headline.used, capacity);
    next.history.initial_range = Some(c.obs.range);
    next
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn emitted_range_is_accepted_by_the_kernel_with_different_parity(c in case()) {
        if let Some(p) = emitted(&decide(&c)) {
            prop_assert!(kernel_accepts(p.to, c.obs.unprivileged_port_start), "{:?}", p.to);
            prop_assert!(!p.to.has_same_parity(), "{:?}", p.to);
        }
    }

    #[test]
    fn emitted_range_stays_within_floor_and_ceiling(c in case()) {
        if let Some(p) = emitted(&decide(&c)) {
            let floor = match c.policy.floor { Floor::Port(f) => f, Floor::Initial => c.obs.range.low() };
            prop_assert!(p.to.low() >= floor, "{:?} below floor {floor}", p.to);
            prop_assert!(p.to.low() >= c.obs.unprivileged_port_start);
            prop_assert!(p.to.high() <= c.policy.ceiling.get(), "{:?} above ceiling {}", p.to, c.policy.ceiling);
        }
    }

    #[test]
    fn widening_never_leaves_a_listening_or_protected_port_unreserved(c in case()) {
        if let Some(p) = emitted(&decide(&c)) {
            for port in p.to.low()..=p.to.high() {
                let protected = c.policy.protected.iter().any(|r| r.contains(port));
                if c.obs.listening.contains(port) || protected {
                    prop_assert!(p.reserved.contains(port), "port {port} left unreserved in {:?}", p.to);
                }
            }
            prop_assert!(c.obs.reserved.is_subset(&p.reserved), "an existing reservation was dropped");
        }
    }

    #[test]
    fn widening_never_shrinks_the_range(c in case()) {
        if let Some(p) = emitted(&decide(&c)) {
            prop_assert!(p.to.contains_range(c.obs.range), "{:?} does not contain {:?}", p.to, c.obs.range);
            prop_assert!(p.to != c.obs.range);
        }
    }

    #[test]
    fn planning_again_after_applying_changes_nothing(c in case()) {
        if let Action::Apply { plan: p } = decide(&c).action {
            let after = applied(&c, &p);
            let again = decide(&after);
            prop_assert!(!matches!(again.action, Action::Apply { .. }), "second plan: {:?}", again.action);
        }
    }

    #[test]
    fn cooldown_and_change_cap_are_honoured(c in case(), ago in 0u64..7200, n in 0usize..8) {
        let mut c = c;
        c.policy.max_changes_per_hour = NonZeroU32::new(3).unwrap();
        // Oldest first, as State::record_change appends: the newest change,
        // `ago` seconds before now, is the last.
        c.history.changes = (0..n).rev().map(|i| t(1_000_000 - ago - i as u64)).collect();
        let d = decide(&c);
        if let Action::Apply { .. } = d.action {
            prop_assert!(n == 0 || Duration::from_secs(ago) >= c.policy.cooldown, "applied {ago}s after a change");
            let recent = c.history.changes.iter().filter(|x| elapsed(**x, c.now) < Duration::from_secs(3600)).count();
            prop_assert!(recent < 3, "applied with {recent} changes in the last hour");
        }
    }

    /// A state written while the clock was ahead (a bad RTC, a VM restored
    /// from a snapshot) holds an alert no longer than the policy's hold, and
    /// a reminder no longer than the reminder interval.
    #[test]
    fn an_alert_from_the_future_waits_no_longer_than_hold_and_reminder(
        c in case(),
        ahead in 1u64..10_000_000,
        hold in 0u64..600,
    ) {
        let mut c = c;
        c.policy.hold = Duration::from_secs(hold);
        let raw = Level::of(c.obs.headline.usage, c.policy.thresholds.warning(), c.policy.thresholds.critical());
        if raw == Level::Ok {
            return Ok(());
        }
        let future = c.now + Duration::from_secs(ahead);
        c.history.alert = AlertState { level: Level::Ok, pending: Some((raw, future)), announced: Some(future) };
        let first = decide(&c);
        c.history.alert = first.alert.clone();
        c.now += c.policy.hold;
        let held = decide(&c);
        prop_assert_eq!(held.alert.level, raw, "not confirmed {}s after a pending level from {}s ahead", hold, ahead);
        prop_assert!(held.alert.announced.is_some_and(|t| t <= c.now));

        c.history.alert = AlertState { level: raw, pending: None, announced: Some(future) };
        let quiet = decide(&c);
        c.history.alert = quiet.alert.clone();
        c.now += c.policy.reminder;
        prop_assert!(decide(&c).remind, "no reminder {:?} after an announcement from {}s ahead", c.policy.reminder, ahead);
    }

    /// Changes stamped in the future, clamped as the daemon loads the state,
    /// block a widening for no longer than the cooldown (the hourly cap's
    /// own hour when they reach it).
    #[test]
    fn changes_from_the_future_block_no_longer_than_cooldown_or_the_cap(
        c in case(),
        ahead in 1u64..10_000_000,
        n in 1usize..6,
    ) {
        use crate::act::state::{Change, State};
        let mut c = c;
        c.policy.max_changes_per_hour = NonZeroU32::new(3).unwrap();
        c.history.alert.level = Level::of(c.obs.headline.usage, c.policy.thresholds.warning(), c.policy.thresholds.critical());
        let mut state = State {
            changes: (0..n as u64)
                .map(|i| Change {
                    at: c.now + Duration::from_secs(ahead + i),
                    from: c.obs.range,
                    to: c.obs.range,
                    reserved_added: PortSet::new(),
                    reason: "written while the clock was ahead".into(),
                })
                .collect(),
            ..State::default()
        };
        state.clamp_future(c.now);
        c.history.changes = state.history().changes;
        let at = |secs: Duration| {
            let mut later = c.clone();
            later.now = c.now + secs;
            later
        };
        let mut fresh = at(c.policy.cooldown);
        fresh.history.changes.clear();
        if !matches!(decide(&fresh).action, Action::Apply { .. }) {
            return Ok(());
        }
        let after_cooldown = decide(&at(c.policy.cooldown)).action;
        if n < 3 {
            prop_assert!(matches!(after_cooldown, Action::Apply { .. }), "{} changes from {}s ahead still block after the cooldown: {:?}", n, ahead, after_cooldown);
        }
        let after_hour = decide(&at(c.policy.cooldown.max(Duration::from_secs(3600)))).action;
        prop_assert!(matches!(after_hour, Action::Apply { .. }), "{} changes from {}s ahead still block after an hour: {:?}", n, ahead, after_hour);
    }

    #[test]
    fn no_applied_plan_leaves_fewer_usable_ports(
        c in case(),
        wide in proptest::option::of((1u16..=65535, any::<u16>())),
    ) {
        // Besides the generator's narrow entries, sometimes one that covers
        // much or all of the range and the span (["40000-65535"], ["1-65535"]).
        let mut c = c;
        if let Some((low, width)) = wide {
            c.policy.protected.push(PortRange::new(low, low.saturating_add(width)).unwrap());
        }
        if let Action::Apply { plan: p } = decide(&c).action {
            let before = usable_ports(c.obs.range, &c.obs.reserved, &c.obs.listening);
            let after = usable_ports(p.to, &p.reserved, &c.obs.listening);
            prop_assert!(after >= before, "{p}: {after} usable ports after, {before} before");
        }
    }

    #[test]
    fn advise_mode_and_yield_never_apply(c in case(), why in any_reason_to_advise()) {
        let d = decide_with(&c, &Authority::Advise(why.clone()));
        prop_assert!(!matches!(d.action, Action::Apply { .. }), "applied although advising ({:?})", why);
    }
}

/// The generator must reach the cases the properties are about; this
/// fails if a change to it stops producing them.
#[test]
fn generators_reach_the_hard_cases() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = case();
    let (mut apply, mut at_bound, mut to_ceiling, mut listener_edge, mut same_parity, mut exact) =
        (0, 0, 0, 0, 0, 0);
    for _ in 0..4000 {
        let c = strategy.new_tree(&mut runner).unwrap().current();
        if c.obs.range.has_same_parity() {
            same_parity += 1;
        }
        let u = c.obs.headline.usage;
        if u == c.policy.thresholds.warning() || u == c.policy.thresholds.critical() {
            exact += 1;
        }
        match decide(&c).action {
            Action::Apply { plan } => {
                apply += 1;
                if plan.to.high() == c.policy.ceiling.get() {
                    to_ceiling += 1;
                }
                let (lo, hi) = (plan.to.low(), plan.to.high());
                if [lo, hi, c.obs.range.high().saturating_add(1)]
                    .iter()
                    .any(|p| c.obs.listening.contains(*p))
                {
                    listener_edge += 1;
                }
            }
            Action::Hold {
                reason: Blocked::AtBound,
                ..
            } => at_bound += 1,
            _ => {}
        }
    }
    for (name, n) in [
        ("apply", apply),
        ("at bound", at_bound),
        ("to ceiling", to_ceiling),
        ("listener at an edge", listener_edge),
        ("same parity", same_parity),
        ("usage exactly at a threshold", exact),
    ] {
        assert!(n >= 20, "only {n} of 4000 generated cases reach {name}");
    }
}

fn simple(used: u64) -> Case {
    let range = PortRange::new(40000, 40099).unwrap();
    Case {
        obs: Observation {
            range,
            reserved: PortSet::new(),
            unprivileged_port_start: 1024,
            listening: PortSet::new(),
            headline: Headline {
                usage: Ratio::of(used, 100),
                used,
                capacity: 100,
                cause: Cause::Idle,
            },
            foreign_dropin: None,
        },
        policy: Policy {
            hold: Duration::ZERO,
            ..Policy::default()
        },
        history: History::default(),
        now: t(1_000_000),
    }
}

#[test]
fn grows_upward_to_the_target_and_reserves_listeners_in_the_new_span() {
    let mut c = simple(45);
    c.obs.listening.insert(40150);
    let d = decide(&c);
    let Action::Apply { plan: p } = d.action else {
        panic!("{:?}", d.action)
    };
    // 45 used / 25% target = 180 usable ports, plus one reserved listener, odd span.
    assert_eq!(p.to.low(), 40000);
    assert_eq!(p.to.high(), 40181);
    assert!(p.reserved.contains(40150));
    assert_eq!(p.newly_reserved.to_string(), "40150");
    assert!(p.reaches_target);
}

#[test]
fn below_warning_does_nothing() {
    assert_eq!(decide(&simple(39)).action, Action::Nothing);
}

#[test]
fn hold_delays_the_alert_and_the_change() {
    let mut c = simple(60);
    c.policy.hold = Duration::from_secs(30);
    let first = decide(&c);
    assert_eq!(first.alert.level, Level::Ok);
    assert_eq!(first.action, Action::Nothing);
    c.history.alert = first.alert;
    c.now = t(1_000_030);
    let second = decide(&c);
    assert_eq!(second.transition, Some((Level::Ok, Level::Critical)));
    assert!(matches!(second.action, Action::Apply { .. }));
}

#[test]
fn the_cooldown_counts_from_the_newest_change_the_last_of_the_history() {
    let mut c = simple(60);
    // History::changes is oldest first: a change 300 s ago, then one 299 s ago.
    c.history.changes = vec![t(1_000_000 - 300), t(1_000_000 - 299)];
    assert_eq!(c.policy.cooldown, Duration::from_secs(300));
    assert!(
        matches!(
            decide(&c).action,
            Action::Hold {
                reason: Blocked::Cooldown { remaining_secs: 1 },
                ..
            }
        ),
        "{:?}",
        decide(&c).action
    );
    c.now = t(1_000_001);
    assert!(matches!(decide(&c).action, Action::Apply { .. }));
}

#[test]
fn a_witnessed_failure_skips_the_hold_but_never_acts_below_warning() {
    let witnessed = |c: &Case| {
        plan(&Inputs {
            observation: &c.obs,
            policy: &c.policy,
            history: &c.history,
            pin: None,
            now: c.now,
            authority: &Authority::Write,
            witnessed_failure: true,
            forecast: &[],
        })
    };
    let mut c = simple(60);
    c.policy.hold = Duration::from_secs(30);
    assert_eq!(decide(&c).action, Action::Nothing, "held without a failure");
    let d = witnessed(&c);
    assert!(matches!(d.action, Action::Apply { .. }), "{:?}", d.action);
    assert_eq!(d.alert.level, Level::Ok, "the alert keeps its hold");
    let c = simple(10);
    assert_eq!(witnessed(&c).action, Action::Nothing, "below warning");
}

#[test]
fn alert_clears_only_below_the_clear_level() {
    let mut c = simple(35);
    c.history.alert.level = Level::Warning;
    assert_eq!(
        decide(&c).alert.level,
        Level::Warning,
        "35% is above clear (30%)"
    );
    let mut c = simple(29);
    c.history.alert.level = Level::Warning;
    let d = decide(&c);
    assert_eq!(d.transition, Some((Level::Warning, Level::Ok)));
}

#[test]
fn a_pin_holds_the_plan_and_names_the_file() {
    let c = simple(60);
    let pin = Pin {
        file: "/etc/sysctl.d/99-local.conf".into(),
        value: "40000 40099".into(),
    };
    let d = plan(&Inputs {
        observation: &c.obs,
        policy: &c.policy,
        history: &c.history,
        pin: Some(&pin),
        now: c.now,
        authority: &Authority::Write,
        witnessed_failure: false,
        forecast: &[],
    });
    assert!(matches!(
        d.action,
        Action::Hold {
            reason: Blocked::PinnedBy { .. },
            plan: Some(_)
        }
    ));
}

#[test]
fn a_protected_list_covering_the_range_is_held_with_the_reason() {
    for protected in ["40000-65535", "1-65535"] {
        let (low, high) = protected.split_once('-').unwrap();
        let mut c = simple(60);
        c.policy.protected =
            vec![PortRange::new(low.parse().unwrap(), high.parse().unwrap()).unwrap()];
        let d = decide(&c);
        let Action::Hold {
            plan: Some(p),
            reason,
        } = &d.action
        else {
            panic!("{protected}: {:?}", d.action)
        };
        assert_eq!(
            *reason,
            Blocked::FewerUsablePorts {
                before: 100,
                after: 0
            },
            "{protected}: {p}"
        );
        let text = reason.to_string();
        assert!(
            text.contains("leave 0 usable ephemeral port(s)")
                && text.contains("fewer than the 100 now")
                && text.contains("widen.protected"),
            "{text}"
        );
    }
}

#[test]
fn a_yield_is_named_before_a_pin_and_a_pin_before_advise_mode() {
    let c = simple(60);
    let pin = Pin {
        file: "/etc/sysctl.d/99-local.conf".into(),
        value: "40000 40099".into(),
    };
    let reason = |authority: Authority| match plan(&Inputs {
        observation: &c.obs,
        policy: &c.policy,
        history: &c.history,
        pin: Some(&pin),
        now: c.now,
        authority: &authority,
        witnessed_failure: false,
        forecast: &[],
    })
    .action
    {
        Action::Hold { reason, .. } => reason,
        other => panic!("not held: {other:?}"),
    };
    assert!(matches!(
        reason(Authority::Advise(Why::Yielded("admin".into()))),
        Blocked::Yielded { .. }
    ));
    assert!(matches!(
        reason(Authority::Advise(Why::Policy)),
        Blocked::PinnedBy { .. }
    ));
}

#[test]
fn an_unreadable_state_holds_the_plan_and_says_why() {
    let c = simple(60);
    let d = decide_with(
        &c,
        &Authority::Advise(Why::StateUnreadable("not a portd state file".into())),
    );
    assert!(
        matches!(
            &d.action,
            Action::Hold {
                reason: Blocked::StateUnreadable { reason },
                plan: Some(_)
            } if reason == "not a portd state file"
        ),
        "{:?}",
        d.action
    );
    assert!(matches!(
        decide_with(&c, &Authority::Advise(Why::DryRun)).action,
        Action::Hold {
            reason: Blocked::Advise,
            plan: Some(_)
        }
    ));
}

fn range(low: u16, high: u16) -> PortRange {
    PortRange::new(low, high).unwrap()
}

fn bounds_for(floor: Floor, ceiling: u16, initial: Option<PortRange>) -> Bounds {
    let policy = Policy {
        floor,
        ceiling: Port::new(ceiling).unwrap(),
        ..Policy::default()
    };
    Bounds::of(&policy, initial, range(40000, 40099), 1024)
}

#[test]
fn bounds_floor_is_the_policys_port_or_the_range_as_first_found() {
    assert_eq!(bounds_for(Floor::Port(30000), 60999, None).floor, 30000);
    assert_eq!(bounds_for(Floor::Initial, 60999, None).floor, 40000);
    let first = Some(range(35000, 45000));
    assert_eq!(bounds_for(Floor::Initial, 60999, first).floor, 35000);
}

#[test]
fn bounds_floor_never_goes_below_the_unprivileged_port_start() {
    let b = bounds_for(Floor::Port(80), 60999, None);
    assert_eq!((b.floor, b.ceiling), (1024, 60999));
}

#[test]
fn a_range_past_either_bound_is_outside_and_may_open_nothing() {
    let b = Bounds {
        floor: 40000,
        ceiling: 50000,
    };
    for r in [
        range(39999, 45000),
        range(41000, 50001),
        range(30000, 60000),
    ] {
        assert!(b.outside(r), "{r}");
        assert!(b.may_open(r).is_empty(), "{r}");
    }
    assert!(!b.outside(range(40000, 50000)));
}

#[test]
fn bounds_may_open_the_ports_below_and_above_the_range() {
    let b = Bounds {
        floor: 30000,
        ceiling: 60999,
    };
    assert_eq!(
        b.may_open(range(40000, 40099)),
        [range(30000, 39999), range(40100, 60999)]
    );
    // Only upward when the floor is the range's own low end.
    let up = Bounds {
        floor: 40000,
        ceiling: 60999,
    };
    assert_eq!(up.may_open(range(40000, 40099)), [range(40100, 60999)]);
    // Nothing when the range already spans the bounds.
    assert!(up.may_open(range(40000, 60999)).is_empty());
}

#[test]
fn the_widest_range_keeps_a_range_end_that_lies_beyond_the_bounds() {
    let b = Bounds {
        floor: 40000,
        ceiling: 50000,
    };
    assert_eq!(b.widest(range(41000, 42000)), Some(range(40000, 50000)));
    assert_eq!(b.widest(range(30000, 60000)), Some(range(30000, 60000)));
}

proptest! {
    // A tenth of the cases: each is a series of up to 40 polls (40 plans).
    #![proptest_config(ProptestConfig::with_cases(cases().div_ceil(10)))]

    /// The hold law: for any non-decreasing usage series, the
    /// level is confirmed at the first poll at or after (first time at
    /// warning + hold), and from then on it is the poll's level: climbing
    /// to critical never restarts the hold. In advise mode the same polls
    /// alert (any alert, warning or critical, is the warning).
    #[test]
    fn a_rising_load_is_confirmed_hold_after_it_first_reached_warning(
        steps in proptest::collection::vec((1u64..30, 0u64..12), 1..40),
        start in 0u64..45,
        hold in 0u64..120,
        advise in any::<bool>(),
    ) {
        let mut c = simple(start);
        c.policy.hold = Duration::from_secs(hold);
        if advise {
            c.policy.mode = crate::policy::Mode::Advise;
        }
        let mut used = start;
        let mut first_warning: Option<SystemTime> = None;
        let mut series = vec![(0u64, start)];
        for (gap, rise) in &steps {
            used = (used + rise).min(100);
            series.push((*gap, used));
        }
        for (gap, used) in series {
            c.now += Duration::from_secs(gap);
            c.obs.headline.used = used;
            c.obs.headline.usage = Ratio::of(used, 100);
            let raw = Level::of(c.obs.headline.usage, c.policy.thresholds.warning(), c.policy.thresholds.critical());
            if raw >= Level::Warning && first_warning.is_none() {
                first_warning = Some(c.now);
            }
            let d = decide(&c);
            let held = first_warning.is_some_and(|t| elapsed(t, c.now) >= c.policy.hold);
            let expected = if held { raw } else { Level::Ok };
            prop_assert_eq!(d.alert.level, expected, "at {}% ({:?} since the first warning, hold {}s)", used,
                first_warning.map(|t| elapsed(t, c.now)), hold);
            c.history.alert = d.alert;
        }
    }
}

#[test]
fn a_dip_above_clear_does_not_restart_the_hold_and_a_fall_below_clear_does() {
    let mut c = simple(45);
    c.policy.hold = Duration::from_secs(30);
    let at = |c: &mut Case, secs: u64, used: u64| {
        c.now = t(1_000_000 + secs);
        c.obs.headline.used = used;
        c.obs.headline.usage = Ratio::of(used, 100);
        let d = decide(c);
        c.history.alert = d.alert.clone();
        d.alert.level
    };
    assert_eq!(at(&mut c, 0, 45), Level::Ok);
    assert_eq!(at(&mut c, 10, 35), Level::Ok, "between clear and warning");
    assert_eq!(at(&mut c, 20, 55), Level::Ok);
    assert_eq!(
        at(&mut c, 30, 55),
        Level::Critical,
        "30s since the first warning"
    );
    let mut c = simple(45);
    c.policy.hold = Duration::from_secs(30);
    assert_eq!(at(&mut c, 0, 45), Level::Ok);
    assert_eq!(
        at(&mut c, 10, 20),
        Level::Ok,
        "below clear: the episode ends"
    );
    assert_eq!(at(&mut c, 20, 45), Level::Ok);
    assert_eq!(at(&mut c, 30, 45), Level::Ok, "10s into a new episode");
    assert_eq!(at(&mut c, 50, 45), Level::Warning);
}

#[test]
fn a_confirmed_warning_escalates_at_once_and_goes_down_only_after_the_hold() {
    let mut c = simple(55);
    c.policy.hold = Duration::from_secs(30);
    c.history.alert.level = Level::Warning;
    let d = decide(&c);
    assert_eq!(d.transition, Some((Level::Warning, Level::Critical)));
    c.history.alert = d.alert;
    c.obs.headline.used = 45;
    c.obs.headline.usage = Ratio::of(45, 100);
    c.now = t(1_000_010);
    assert_eq!(
        decide(&c).alert.level,
        Level::Critical,
        "down waits for the hold"
    );
}

fn forecast(used: u64, growth: f64, steady: Option<u64>, sustained: bool) -> Forecast {
    let mut f = Forecast {
        target: Target::Destination {
            destination: crate::observe::usage::DestKey {
                local: "10.0.0.1".parse().unwrap(),
                remote: "10.0.0.2".parse().unwrap(),
                remote_port: 80,
            },
        },
        used,
        capacity: 100,
        usage: Ratio::of(used, 100),
        growth_per_second: growth,
        connection_rate: growth,
        time_wait: used,
        steady_state: steady,
        time_to_exhaustion: None,
        sustained,
    };
    f.time_to_exhaustion = f.time_to(Ratio::FULL);
    f
}

fn decide_forecast(c: &Case, f: &[Forecast]) -> Decision {
    plan(&Inputs {
        observation: &c.obs,
        policy: &c.policy,
        history: &c.history,
        pin: None,
        now: c.now,
        authority: &Authority::Write,
        witnessed_failure: false,
        forecast: f,
    })
}

#[test]
fn a_forecast_of_critical_within_the_hold_confirms_now_and_widens_to_the_steady_state() {
    let mut c = simple(20);
    c.policy.hold = Duration::from_secs(30);
    // 20 in use, +2/s: critical (50) in 15 s, steady state 140.
    let f = [forecast(20, 2.0, Some(140), true)];
    let d = decide_forecast(&c, &f);
    assert_eq!(d.transition, Some((Level::Ok, Level::Warning)));
    assert!(d.urgent.is_some());
    let Action::Apply { plan } = d.action else {
        panic!("{:?}", d.action)
    };
    // 140 / 25% target = 560 ports, not 20 / 25% = 80.
    assert!(plan.to.len() >= 560, "{plan}");

    let burst = [forecast(20, 2.0, Some(140), false)];
    let d = decide_forecast(&c, &burst);
    assert_eq!(d.alert.level, Level::Ok, "a burst that may have ended");
    assert_eq!(d.action, Action::Nothing);

    c.policy.hold = Duration::ZERO;
    let levels_off = [forecast(20, 2.0, Some(40), true)];
    let d = decide_forecast(&c, &levels_off);
    assert_eq!(d.alert.level, Level::Ok, "levels off below critical");
}

#[test]
fn a_forecast_of_exhaustion_within_the_cooldown_overrides_it_and_says_so() {
    let mut c = simple(45);
    c.history.alert.level = Level::Warning;
    c.history.changes = vec![c.now - Duration::from_secs(60)];
    let slow = [forecast(45, 0.01, None, true)];
    assert!(matches!(
        decide_forecast(&c, &slow).action,
        Action::Hold {
            reason: Blocked::Cooldown { .. },
            ..
        }
    ));
    let fast = [forecast(45, 1.0, None, true)];
    let d = decide_forecast(&c, &fast);
    assert!(matches!(d.action, Action::Apply { .. }), "{:?}", d.action);
    let why = d.overrode.unwrap();
    assert!(
        why.contains("cooldown") && why.contains("run out in 55s"),
        "{why}"
    );
    c.history.changes = (0..4)
        .map(|i| c.now - Duration::from_secs(600 + i))
        .collect();
    let d = decide_forecast(&c, &fast);
    assert!(d.overrode.unwrap().contains("change cap"));
}

#[test]
fn a_load_beyond_the_bounds_is_confirmed_now_at_low_usage_and_named() {
    // 10 of 100 in use, the ceiling at the range's end: a steady state of
    // 140 cannot fit, whatever widening does.
    let mut c = simple(10);
    c.policy.hold = Duration::from_secs(30);
    c.policy.ceiling = Port::new(40099).unwrap();
    let f = [forecast(10, 0.5, Some(140), true)];
    let d = decide_forecast(&c, &f);
    let u = d.unfit.expect("unfit");
    assert_eq!((u.demand, u.capacity_at_bounds, u.room), (140, 100, 50));
    assert_eq!(d.transition, Some((Level::Ok, Level::Warning)));
    assert!(d.urgent.is_none(), "critical is 80 s away");
    // 90 ports would fit the range but sit past the critical level (50 %)
    // for good: widening cannot keep its connects fast, so it is named too.
    let slow = [forecast(10, 0.5, Some(90), true)];
    let u = decide_forecast(&c, &slow)
        .unfit
        .expect("past the critical level");
    assert_eq!(u.demand, 90);
    let fits = [forecast(10, 0.5, Some(45), true)];
    let d = decide_forecast(&c, &fits);
    assert!(d.unfit.is_none());
    assert_eq!(d.alert.level, Level::Ok);
}

/// 90 of the 100 ports of 40000-40099 listened on, `used` of the other 10
/// in use towards one destination.
fn crowded(listeners: u16, used: u64) -> Case {
    let mut c = simple(used);
    c.obs
        .listening
        .insert_range(PortRange::new(40000, 40000 + listeners - 1).unwrap());
    let capacity = 100 - u64::from(listeners);
    c.obs.headline = Headline {
        usage: if capacity == 0 {
            Ratio::FULL
        } else {
            Ratio::of(used, capacity)
        },
        used,
        capacity,
        cause: Cause::Idle,
    };
    c
}

#[test]
fn listeners_crowding_the_range_do_not_stop_the_widening() {
    let c = crowded(90, 8);
    let d = decide(&c);
    let Action::Apply { plan: p } = &d.action else {
        panic!("{:?}", d.action)
    };
    // 8 used / 25 % target = 32 ports connect() can use, the 90 listeners
    // reserved (they were never usable).
    let after = usable_ports(p.to, &p.reserved, &c.obs.listening);
    assert!(after >= 32, "{p}: {after} usable after");
    assert!(p.reserved.count_in(p.to) >= 90, "{p}");
    assert!(p.reaches_target, "{p}");
}

#[test]
fn a_range_every_free_port_of_which_is_listened_on_gets_back_what_the_listeners_took() {
    let c = crowded(100, 0);
    let d = decide(&c);
    let Action::Apply { plan: p } = &d.action else {
        panic!("{:?}", d.action)
    };
    let after = usable_ports(p.to, &p.reserved, &c.obs.listening);
    assert!(after >= 100, "{p}: {after} usable after, the range had 100");
}

#[test]
fn usable_ports_leave_out_listeners_whether_reserved_or_not() {
    let range = PortRange::new(40000, 40099).unwrap();
    let mut reserved = PortSet::new();
    reserved.insert_range(PortRange::new(40000, 40009).unwrap());
    let mut listening = PortSet::new();
    listening.insert_range(PortRange::new(40005, 40019).unwrap());
    listening.insert(50000);
    assert_eq!(usable_ports(range, &reserved, &listening), 80);
}

#[test]
fn a_foreign_file_at_the_dropin_name_holds_the_widening_with_the_reason() {
    let mut c = simple(60);
    let dropin = ForeignDropin {
        path: "/etc/sysctl.d/60-portd.conf".into(),
        why: "it does not start with portd's header".into(),
    };
    c.obs.foreign_dropin = Some(dropin.clone());
    let d = decide(&c);
    let Action::Hold {
        plan: Some(_),
        reason,
    } = &d.action
    else {
        panic!("{:?}", d.action)
    };
    assert_eq!(*reason, Blocked::ForeignDropin { dropin });
    let text = reason.to_string();
    assert!(
        text.contains("/etc/sysctl.d/60-portd.conf is not portd's drop-in")
            && text.contains("would not survive a reboot")
            && text.contains("persist.file"),
        "{text}"
    );
}
