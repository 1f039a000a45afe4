//! The planner: a pure function from what portd observed, the policy and the
//! history of earlier changes and alerts to a [`Decision`]. No I/O, no clock:
//! `now` is an input. Property-tested in `tests` below.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::base::ports::{PortRange, PortSet, Ratio};
use crate::judge::authority::{Authority, Why};
use crate::judge::forecast::{Counted, Forecast, Target, horizon};
use crate::judge::level::Level;
use crate::observe::usage::{Headline, Usage};
use crate::policy::{Floor, Policy};

#[path = "planner_blocked.rs"]
mod blocked;
pub use blocked::{Blocked, ForeignDropin, Pin};

/// What the planner needs from a census.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub range: PortRange,
    pub reserved: PortSet,
    pub unprivileged_port_start: u16,
    /// Every listening TCP port.
    pub listening: PortSet,
    pub headline: Headline,
    /// A file portd did not write at the drop-in's name (with persistence
    /// on): a change would not survive a reboot. Set by the caller that
    /// persists (the daemon in its own namespace, `check`).
    pub foreign_dropin: Option<ForeignDropin>,
}

impl Observation {
    pub fn from_usage(usage: &Usage) -> Self {
        Observation {
            range: usage.settings.port_range,
            reserved: usage.settings.reserved_ports.clone(),
            unprivileged_port_start: usage.settings.unprivileged_port_start,
            listening: usage.listening_ports.clone(),
            headline: usage.headline.clone(),
            foreign_dropin: None,
        }
    }
}

/// The alert level as confirmed over time (hysteresis and hold).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AlertState {
    pub level: Level,
    /// A different level seen since this time, not yet held long enough.
    pub pending: Option<(Level, SystemTime)>,
    /// When the confirmed level was last announced (for reminders).
    pub announced: Option<SystemTime>,
}

impl AlertState {
    /// The same state with no time after `now` (see [`not_after`]).
    pub fn not_after(&self, now: SystemTime) -> AlertState {
        AlertState {
            level: self.level,
            pending: self
                .pending
                .map(|(level, since)| (level, not_after(since, now))),
            announced: self.announced.map(|t| not_after(t, now)),
        }
    }
}

/// A stored time later than `now` counts as `now`. Such a time comes from a
/// clock that was ahead (a bad RTC, a VM restored from a snapshot); kept as
/// it is, it would hold alerts and changes until the clock caught up.
pub fn not_after(t: SystemTime, now: SystemTime) -> SystemTime {
    t.min(now)
}

impl Default for AlertState {
    fn default() -> Self {
        AlertState {
            level: Level::Ok,
            pending: None,
            announced: None,
        }
    }
}

/// What portd remembers between polls (kept in the state file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The range as portd first found it, before any change of its own.
    pub initial_range: Option<PortRange>,
    /// When portd changed the range (most recent last).
    pub changes: Vec<SystemTime>,
    pub alert: AlertState,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub from: PortRange,
    pub to: PortRange,
    /// The complete reserved set to write (existing entries kept).
    pub reserved: PortSet,
    /// Ports this plan adds to the reserved set.
    pub newly_reserved: PortSet,
    /// Headline usage expected after the change.
    pub expected_usage: Ratio,
    /// False when the bounds stop growth short of the target.
    pub reaches_target: bool,
}

impl std::fmt::Display for Plan {
    /// `40000-40099 -> 40000-40181 (reserving 40150 first)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)?;
        if !self.newly_reserved.is_empty() {
            write!(f, " (reserving {} first)", self.newly_reserved)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Usage is below the level where growing is called for.
    Nothing,
    Apply {
        plan: Plan,
    },
    /// Growing is called for but may not happen now; `plan` is what would be
    /// done, when there is one.
    Hold {
        plan: Option<Plan>,
        reason: Blocked,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Level of the current headline, before hold and hysteresis.
    pub raw_level: Level,
    /// The alert state after this poll.
    pub alert: AlertState,
    /// `Some((from, to))` when the confirmed level changed on this poll.
    pub transition: Option<(Level, Level)>,
    /// True when the unchanged level is due for a reminder.
    pub remind: bool,
    pub action: Action,
    /// The forecast that reaches critical sooner than the hold plus one
    /// poll: the level was confirmed without waiting for the hold.
    pub urgent: Option<Forecast>,
    /// Set when a forecast of exhaustion overrode the cooldown or the
    /// hourly cap: what it overrode and why (for the journal).
    pub overrode: Option<String>,
    /// A load the widest range the policy allows cannot hold below the
    /// critical level.
    pub unfit: Option<Unfit>,
}

/// A forecast load beyond the policy's bounds (remedy.rs says what helps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Unfit {
    pub forecast: Forecast,
    /// Ports it is forecast to hold.
    pub demand: u64,
    /// Ports the widest range within floor and ceiling gives it.
    pub capacity_at_bounds: u64,
    /// The share of those it can hold below the critical level, where
    /// every further `connect()` slows down (docs/DESIGN.md): what it must fit.
    pub room: u64,
}

pub struct Inputs<'a> {
    pub observation: &'a Observation,
    pub policy: &'a Policy,
    pub history: &'a History,
    pub pin: Option<&'a Pin>,
    pub now: SystemTime,
    /// Whether portd may write now, and if not, why (authority.rs).
    pub authority: &'a Authority,
    /// The failure witness saw a program fail to get a port since the last
    /// decision: a reason to act at once, without waiting for the hold.
    pub witnessed_failure: bool,
    /// Where the busiest and the fastest-growing destinations and the pools
    /// are heading (forecast.rs); empty without a rate yet.
    pub forecast: &'a [Forecast],
}

impl Inputs<'_> {
    /// Forecasts of what counts towards alerts (the TCP pool only when
    /// the policy says so), with growth seen on two censuses in a row.
    fn sustained(&self) -> impl Iterator<Item = &Forecast> {
        Counted::of(self.forecast, self.policy).sustained()
    }

    /// The first forecast to reach critical, when it does so sooner than
    /// the hold plus one poll.
    fn urgent(&self) -> Option<Forecast> {
        let within = horizon(self.policy).as_secs_f64();
        let critical = self.policy.thresholds.critical();
        self.sustained()
            .filter_map(|f| f.time_to(critical).map(|t| (t, f)))
            .filter(|(t, _)| *t < within)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, f)| *f)
    }

    /// Ports one destination can have with the widest range the policy
    /// allows (reserved, protected and listening ports left out).
    pub fn capacity_at_bounds(&self) -> u64 {
        let obs = self.observation;
        let bounds = Bounds::of(
            self.policy,
            self.history.initial_range,
            obs.range,
            obs.unprivileged_port_start,
        );
        let Some(widest) = bounds.widest(obs.range) else {
            return obs.headline.capacity;
        };
        let blocked = obs
            .reserved
            .union(&keep_out(&obs.listening, &self.policy.protected));
        u64::from(widest.len() - blocked.count_in(widest))
    }

    /// Ports one destination can hold within the bounds below the
    /// critical level: a load heading past it is past the slowdown mark
    /// however far the range is widened.
    pub fn room_at_bounds(&self) -> u64 {
        let capacity = self.capacity_at_bounds();
        (self.policy.thresholds.critical().fraction() * capacity as f64).floor() as u64
    }

    /// A destination whose forecast load does not fit below the critical
    /// level of even the widest range the policy allows: widening cannot
    /// keep its connects fast (and may not keep them working), so a remedy
    /// is named now.
    fn unfit(&self) -> Option<Unfit> {
        let capacity_at_bounds = self.capacity_at_bounds();
        let room = self.room_at_bounds();
        self.sustained()
            .filter(|f| matches!(f.target, Target::Destination { .. }))
            .map(|f| (self.heading(f), f))
            .filter(|(demand, _)| *demand > room)
            .max_by_key(|(demand, _)| *demand)
            .map(|(demand, f)| Unfit {
                forecast: *f,
                demand,
                capacity_at_bounds,
                room,
            })
    }

    /// The soonest forecast exhaustion, in seconds.
    fn exhaustion(&self) -> Option<(f64, Forecast)> {
        self.sustained()
            .filter_map(|f| f.time_to_exhaustion.map(|t| (t, *f)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Ports the busiest destination is heading for.
    fn demand(&self) -> u64 {
        self.sustained()
            .filter(|f| matches!(f.target, Target::Destination { .. }))
            .map(|f| self.heading(f))
            .max()
            .unwrap_or(0)
    }

    /// Where a target is heading: a TIME_WAIT-dominated load levels off
    /// within the 60 s a TIME_WAIT lasts (its steady state); a trend of
    /// live connections is followed only as far as the next confirmation
    /// (hold plus one poll), since it is re-estimated every census.
    fn heading(&self, f: &Forecast) -> u64 {
        match f.steady_state {
            Some(steady) => steady.max(f.used),
            None => f.expected(horizon(self.policy)),
        }
    }
}

pub fn plan(inputs: &Inputs<'_>) -> Decision {
    let obs = inputs.observation;
    let policy = inputs.policy;
    let usage = obs.headline.usage;
    let raw_level = Level::of(
        usage,
        policy.thresholds.warning(),
        policy.thresholds.critical(),
    );
    let urgent = inputs.urgent();
    let unfit = inputs.unfit();
    let forecast = urgent.is_some() || unfit.is_some();
    let (alert, transition, remind) =
        next_alert(&inputs.history.alert, usage, policy, inputs.now, forecast);
    // A witnessed failure skips the hold: the level is already past it
    // for the program that failed. It never acts below the warning level
    // unless the forecast says the load is heading past it.
    let confirmed = alert.level >= Level::Warning || inputs.witnessed_failure;
    let mut overrode = None;
    let action = if confirmed && (raw_level >= Level::Warning || forecast) {
        widen_or_hold(inputs, &mut overrode)
    } else {
        Action::Nothing
    };
    Decision {
        raw_level,
        alert,
        transition,
        remind,
        action,
        urgent,
        overrode,
        unfit,
    }
}

/// Hysteresis and hold (docs/DESIGN.md, "Acting in time"). Time at or above the warning level
/// counts continuously from the first poll that saw it: a climb from
/// warning to critical never restarts the hold, and only falling below
/// `clear` ends it. Once held (or at once when the forecast reaches
/// critical sooner than the hold: `urgent`), the confirmed level is the
/// level of the poll; a confirmed warning escalates to critical at once.
/// Going down (critical to warning, or below `clear` to OK) must persist
/// for `hold`.
fn next_alert(
    prev: &AlertState,
    usage: Ratio,
    policy: &Policy,
    now: SystemTime,
    urgent: bool,
) -> (AlertState, Option<(Level, Level)>, bool) {
    let prev = &prev.not_after(now);
    let raw = Level::of(
        usage,
        policy.thresholds.warning(),
        policy.thresholds.critical(),
    );
    let above_clear = usage >= policy.thresholds.clear();
    let mut next = prev.clone();
    let mut transition = None;
    let mut confirm = |next: &mut AlertState, level: Level| {
        transition = Some((prev.level, level));
        next.level = level;
        next.pending = None;
        next.announced = Some(now);
    };
    if prev.level == Level::Ok {
        // The episode at or above warning: its start is the pending time,
        // kept through escalation and through dips that stay above clear.
        let episode = match prev.pending {
            Some((_, since)) if above_clear => Some(since),
            _ if raw >= Level::Warning || urgent => Some(now),
            _ => None,
        };
        let observed = if urgent { raw.max(Level::Warning) } else { raw };
        match episode {
            None => next.pending = None,
            Some(since)
                if observed >= Level::Warning && (urgent || elapsed(since, now) >= policy.hold) =>
            {
                confirm(&mut next, observed)
            }
            Some(since) => next.pending = Some((observed.max(Level::Warning), since)),
        }
    } else {
        let observed = if raw == Level::Ok && above_clear {
            Level::Warning
        } else {
            raw
        };
        if observed > prev.level {
            // The hold was served when the lower alert was confirmed.
            confirm(&mut next, observed);
        } else if observed == prev.level {
            next.pending = None;
        } else {
            let since = match prev.pending {
                Some((level, since)) if level == observed => since,
                _ => now,
            };
            if elapsed(since, now) >= policy.hold {
                confirm(&mut next, observed);
            } else {
                next.pending = Some((observed, since));
            }
        }
    }
    let remind = transition.is_none()
        && next.level >= Level::Warning
        && next
            .announced
            .is_some_and(|t| elapsed(t, now) >= policy.reminder);
    if remind {
        next.announced = Some(now);
    }
    (next, transition, remind)
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

fn widen_or_hold(inputs: &Inputs<'_>, overrode: &mut Option<String>) -> Action {
    let obs = inputs.observation;
    let policy = inputs.policy;
    let bounds = Bounds::of(
        policy,
        inputs.history.initial_range,
        obs.range,
        obs.unprivileged_port_start,
    );
    if bounds.outside(obs.range) {
        return Action::Hold {
            plan: None,
            reason: Blocked::OutsideBounds,
        };
    }
    let Some(plan) = widen(obs, policy, bounds, inputs.demand()) else {
        return Action::Hold {
            plan: None,
            reason: Blocked::AtBound,
        };
    };
    let hold = |reason| Action::Hold {
        plan: Some(plan.clone()),
        reason,
    };
    // A wider range that hands out fewer ports causes the exhaustion it is
    // meant to prevent (every port reserved: every connect() fails).
    let before = usable_ports(obs.range, &obs.reserved, &obs.listening);
    let after = usable_ports(plan.to, &plan.reserved, &obs.listening);
    if after < before {
        return hold(Blocked::FewerUsablePorts { before, after });
    }
    // A yield is named before a pin, a pin before the other reasons to advise.
    if let Authority::Advise(Why::Yielded(reason)) = inputs.authority {
        return hold(Blocked::Yielded {
            reason: reason.clone(),
        });
    }
    if let Some(pin) = inputs.pin {
        return hold(Blocked::PinnedBy { pin: pin.clone() });
    }
    if let Some(dropin) = &obs.foreign_dropin {
        return hold(Blocked::ForeignDropin {
            dropin: dropin.clone(),
        });
    }
    match inputs.authority {
        Authority::Advise(Why::Policy | Why::DryRun) => return hold(Blocked::Advise),
        Authority::Advise(Why::StateUnreadable(reason)) => {
            return hold(Blocked::StateUnreadable {
                reason: reason.clone(),
            });
        }
        Authority::Advise(Why::Yielded(_)) | Authority::Write => {}
    }
    // A forecast of exhaustion before the cooldown or the cap lets go
    // overrides them: waiting would let the range run out.
    if let Some((remaining, reason)) = waiting(inputs) {
        match inputs.exhaustion() {
            Some((secs, f)) if secs < remaining.as_secs_f64() => {
                *overrode = Some(format!(
                    "{reason}; overridden: {} is forecast to run out in {secs:.0}s \
                     ({:.0} new ports/s, {} of {} in use)",
                    f.target, f.growth_per_second, f.used, f.capacity
                ));
            }
            _ => return hold(reason),
        }
    }
    Action::Apply { plan }
}

/// The cooldown or the hourly cap, when one holds a change now: how long
/// it still holds, and the reason.
fn waiting(inputs: &Inputs<'_>) -> Option<(Duration, Blocked)> {
    let mut wait: Option<(Duration, Blocked)> = None;
    if let Some(last) = inputs.history.changes.last() {
        let since = elapsed(*last, inputs.now);
        if since < inputs.policy.cooldown {
            let remaining = inputs.policy.cooldown - since;
            wait = Some((
                remaining,
                Blocked::Cooldown {
                    remaining_secs: remaining.as_secs().max(1),
                },
            ));
        }
    }
    let hour = Duration::from_secs(3600);
    let recent: Vec<Duration> = inputs
        .history
        .changes
        .iter()
        .map(|t| elapsed(*t, inputs.now))
        .filter(|e| *e < hour)
        .collect();
    if wait.is_none() && recent.len() >= inputs.policy.max_changes_per_hour.get() as usize {
        let oldest = recent.iter().max().copied().unwrap_or_default();
        wait = Some((
            hour.saturating_sub(oldest),
            Blocked::ChangeCap {
                per_hour: inputs.policy.max_changes_per_hour.get(),
            },
        ));
    }
    wait
}

/// Ports of `range` that `connect()` can be handed: the range minus the
/// reserved ports minus the ports held by listening (or bound) sockets
/// (docs/kernel.md §2), whether or not they are reserved yet.
pub fn usable_ports(range: PortRange, reserved: &PortSet, listening: &PortSet) -> u32 {
    range.len() - reserved.union(listening).count_in(range)
}

/// Where the policy lets the range go: `floor..=ceiling`. The floor is the
/// policy's (or the range as first found), never below
/// `ip_unprivileged_port_start` (the kernel rejects that: docs/kernel.md §1.3)
/// and never below 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub floor: u16,
    pub ceiling: u16,
}

impl Bounds {
    pub fn of(
        policy: &Policy,
        initial_range: Option<PortRange>,
        range: PortRange,
        unprivileged_port_start: u16,
    ) -> Bounds {
        let floor = match policy.floor {
            Floor::Port(p) => p,
            Floor::Initial => initial_range.map_or(range.low(), PortRange::low),
        };
        Bounds {
            floor: floor.max(unprivileged_port_start).max(1),
            ceiling: policy.ceiling.get(),
        }
    }

    /// The range reaches past the bounds: the admin's choice, which portd
    /// leaves alone ([`Blocked::OutsideBounds`]).
    pub fn outside(&self, range: PortRange) -> bool {
        range.low() < self.floor || range.high() > self.ceiling
    }

    /// The ports portd may add to `range`: below it down to the floor and
    /// above it up to the ceiling, low first. None when the range is
    /// [`outside`](Bounds::outside) the bounds.
    pub fn may_open(&self, range: PortRange) -> Vec<PortRange> {
        if self.outside(range) {
            return Vec::new();
        }
        let below = (self.floor < range.low())
            .then(|| PortRange::new(self.floor, range.low() - 1).ok())
            .flatten();
        let above = (range.high() < self.ceiling)
            .then(|| PortRange::new(range.high() + 1, self.ceiling).ok())
            .flatten();
        below.into_iter().chain(above).collect()
    }

    /// The widest range portd could make of `range`: from the floor to the
    /// ceiling, or the range's own end where it lies beyond.
    pub fn widest(&self, range: PortRange) -> Option<PortRange> {
        PortRange::new(self.floor.min(range.low()), self.ceiling.max(range.high())).ok()
    }
}

/// Ports that may never be handed out once inside the range: a plan
/// reserves those inside its new range.
pub fn keep_out(listening: &PortSet, protected: &[PortRange]) -> PortSet {
    let mut keep_out = listening.clone();
    for r in protected {
        keep_out.insert_range(*r);
    }
    keep_out
}

/// Finds the smallest widening (upward first, then downward to the floor)
/// that brings the headline to the policy's target, or as close as the
/// bounds allow. Returns `None` when the range cannot grow at all.
///
/// `demand` is the forecast's steady state (forecast.rs): the range grows
/// to fit it too, not only the ports in use now.
fn widen(obs: &Observation, policy: &Policy, bounds: Bounds, demand: u64) -> Option<Plan> {
    let Bounds { floor, ceiling } = bounds;
    let keep_out = keep_out(&obs.listening, &policy.protected);
    let blocked = obs.reserved.union(&keep_out);
    let free = |p: u16| u64::from(!blocked.contains(p));

    let used = obs.headline.used.max(demand).max(1);
    let mut needed = (used as f64 / policy.target.fraction()).ceil() as u64;
    if obs.headline.capacity == 0 {
        // Listeners hold every port the range leaves free, so nothing is in
        // use to size the plan from: give back what they took (the range
        // minus the reserved ports, as the admin set it).
        let nominal = u64::from(obs.range.len() - obs.reserved.count_in(obs.range));
        needed = needed.max(nominal);
    }
    let (mut low, mut high) = (obs.range.low(), obs.range.high());
    let mut capacity: u64 = (low..=high).map(free).sum();
    while capacity < needed && high < ceiling {
        high += 1;
        capacity += free(high);
    }
    while capacity < needed && low > floor {
        low -= 1;
        capacity += free(low);
    }
    // Ends of different parity (docs/kernel.md §1.5): grow by one more port where
    // the bounds allow, else give one back without undoing the growth.
    if low % 2 == high % 2 {
        if high < ceiling {
            high += 1;
        } else if low > floor {
            low -= 1;
        } else if high > obs.range.high() {
            high -= 1;
        } else if low < obs.range.low() {
            low += 1;
        }
    }
    let to = PortRange::new(low, high).ok()?;
    if to == obs.range || to.has_same_parity() {
        return None;
    }
    let mut in_new = PortSet::new();
    in_new.insert_range(to);
    let reserve_now = keep_out.intersection_of(&in_new);
    let reserved = obs.reserved.union(&reserve_now);
    let newly_reserved = reserved.difference(&obs.reserved);
    let new_capacity = u64::from(in_new.difference(&reserved).len());
    let expected_usage = Ratio::of(obs.headline.used, new_capacity);
    Some(Plan {
        from: obs.range,
        to,
        reserved,
        newly_reserved,
        expected_usage,
        reaches_target: expected_usage <= policy.target,
    })
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
