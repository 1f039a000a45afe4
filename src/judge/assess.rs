//! The whole judgement of one look at portd's own namespace, in one pure
//! function: after a census, [`assess`] returns the [`Assessment`] (the
//! forecasts and the time to exhaustion, the planner's decision with its
//! levels, the remedies, the exhaustion entry and whether to poll faster);
//! after a fast-path look, [`Memory::look`] says whether the census is
//! skipped, and [`revise`] brings the last assessment's forecast up to the
//! time of the look from the O(1) counters. The forecasts that count are [`Counted`]'s, the horizon is
//! [`horizon`]'s. No I/O, the time is an input: every channel (journal,
//! STATUS, live view, metrics, `status`, `check --plan`) renders the same
//! assessment, so none can differ from another for one census.
//!
//! [`Counted`]: crate::judge::forecast::Counted
//! [`horizon`]: crate::judge::forecast::horizon

use std::time::{Duration, Instant, SystemTime};

use crate::base::ports::Ratio;
use crate::judge::authority::Authority;
use crate::judge::exhausted::{self, Exhausted, Exhaustion};
use crate::judge::fastpath::{Due, Next, Pace, Skip};
use crate::judge::forecast::{Counted, Forecast, Target, Tracker, horizon};
use crate::judge::level::Level;
use crate::judge::planner::{self, Decision, ForeignDropin, History, Observation, Pin};
use crate::judge::remedy::{self, Remedy};
use crate::observe::census::sockstat::Totals;
use crate::observe::usage::Usage;
use crate::policy::Policy;

/// Polls hurry while a counting forecast reaches critical within this many
/// horizons: the censuses then come about every second, so a rate is seen
/// on two censuses in a row (and can confirm the level) before the hold
/// would have passed.
pub const HURRY_HORIZONS: u32 = 4;

/// What the judgement remembers between looks (all of it pure state).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Growth rates from successive censuses (forecast.rs).
    tracker: Tracker,
    /// What exhaustion was reported last (exhausted.rs).
    exhaustion: Exhaustion,
    /// The `connect()` rate between polls (fastpath.rs).
    pace: Pace,
    /// The failure witness saw a failure no decision has taken into
    /// account yet: the next look takes a census, and it acts at once.
    witnessed: bool,
    /// A counting forecast reaches critical soon: poll faster.
    hurry: bool,
}

/// What a fast-path look decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// No census: the counters prove no destination can be at the warning
    /// level, nor reach critical soon.
    Skip(Skip),
    /// A census the counters merely suggest: it may wait for its share of
    /// the CPU (budget.rs).
    MayWait,
    /// A census now.
    Census,
}

impl Memory {
    /// Takes this poll's `ActiveOpens`, read at `now`: the `connect()` rate
    /// since an earlier poll (fastpath.rs).
    pub fn pace(&mut self, now: Instant, active_opens: Option<u64>) -> Option<f64> {
        self.pace.update(now, active_opens)
    }

    /// The failure witness saw a program fail to get a port.
    pub fn witnessed(&mut self) {
        self.witnessed = true;
    }

    /// Whether polls come faster than the policy's interval.
    pub fn hurry(&self) -> bool {
        self.hurry
    }

    /// The fast path's answer, judged with what the witness saw: a failure
    /// is a reason to census (and act) now, whatever the bounds say. A
    /// skip proves nothing reaches critical soon: the hurry ends.
    pub fn look(&mut self, next: Next) -> Look {
        match next {
            _ if self.witnessed => Look::Census,
            Next::Skip(skip) => {
                self.hurry = false;
                Look::Skip(skip)
            }
            // A raised alert is followed as often as the census budget
            // allows (budget.rs): at 300k sockets a census every poll would
            // cost a core's tenth for as long as the alert lasts.
            Next::Census(due) if due.may_wait() || due == Due::AlertRaised => Look::MayWait,
            Next::Census(_) => Look::Census,
        }
    }
}

/// What a census is judged with.
pub struct Evidence<'a> {
    pub usage: &'a Usage,
    /// Who holds the headline's sockets, when the census looked (for the
    /// remedies' advice).
    pub processes: Option<&'a str>,
    pub policy: &'a Policy,
    pub history: &'a History,
    /// A sysctl.d file that sets the range over portd's drop-in.
    pub pin: Option<&'a Pin>,
    pub foreign_dropin: Option<ForeignDropin>,
    pub now: SystemTime,
    pub authority: &'a Authority,
    /// A single look with no series of censuses behind it (`check
    /// --plan`): no rate, the level as it stands counts as held, and the
    /// remedies name what helps the headline at the warning level or above.
    pub single: bool,
}

/// The whole judgement of one census.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// Where the busiest and the fastest-growing destinations and the
    /// pools are heading.
    pub forecast: Vec<Forecast>,
    /// Seconds until the first counting target runs out: the one number
    /// the journal, STATUS, the metrics and the live view give.
    pub time_to_exhaustion: Option<f64>,
    /// The planner's decision: the raw and the confirmed level, the alert
    /// state, the action.
    pub decision: Decision,
    /// What else closes the gap when the bounds cannot hold the load.
    pub remedies: Vec<Remedy>,
    /// The exhaustion entry this census calls for (exhausted.rs).
    pub exhausted: Option<exhausted::Event>,
    /// Poll faster: a counting forecast reaches critical within
    /// [`HURRY_HORIZONS`] horizons.
    pub hurry: bool,
}

impl Assessment {
    /// The confirmed alert level after this census.
    pub fn level(&self) -> Level {
        self.decision.alert.level
    }
}

/// Judges one census: the memory takes it in (rates, the exhaustion
/// reported, a witnessed failure now accounted for).
pub fn assess(memory: &mut Memory, evidence: &Evidence<'_>) -> Assessment {
    let (usage, policy) = (evidence.usage, evidence.policy);
    let forecast = if evidence.single {
        Vec::new()
    } else {
        memory.tracker.update(usage, evidence.now);
        memory.tracker.forecast(usage)
    };
    let counted = Counted::of(&forecast, policy);
    let hurry = counted.reaches(
        policy.thresholds.critical(),
        horizon(policy) * HURRY_HORIZONS,
    );
    let time_to_exhaustion = counted.soonest_exhaustion();
    let mut history = evidence.history.clone();
    if evidence.single {
        history.alert.level = Level::of(
            usage.headline.usage,
            policy.thresholds.warning(),
            policy.thresholds.critical(),
        );
    }
    let observation = Observation {
        foreign_dropin: evidence.foreign_dropin.clone(),
        ..Observation::from_usage(usage)
    };
    let planned = planner::Inputs {
        observation: &observation,
        policy,
        history: &history,
        pin: evidence.pin,
        now: evidence.now,
        authority: evidence.authority,
        witnessed_failure: std::mem::take(&mut memory.witnessed),
        forecast: &forecast,
    };
    let decision = planner::plan(&planned);
    let remedies = match &decision.unfit {
        Some(u) => remedy::remedies(&remedy::situation(
            &u.forecast,
            u.demand,
            u.room,
            usage,
            evidence.processes,
        )),
        None if evidence.single && history.alert.level >= Level::Warning => {
            remedy::for_headline(usage, planned.room_at_bounds())
        }
        None => Vec::new(),
    };
    let exhausted = Exhausted::of(usage, policy.tcp_pool_alerts);
    let exhausted = if evidence.single {
        None
    } else {
        memory.exhaustion.next(&exhausted, evidence.now)
    };
    memory.hurry = hurry;
    Assessment {
        forecast,
        time_to_exhaustion,
        decision,
        remedies,
        exhausted,
        hurry,
    }
}

/// What the O(1) counters say at a poll that takes no census, measured
/// from the census an assessment judged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Since {
    /// Time since that census began.
    pub age: Duration,
    /// `connect()`s since it began (`ActiveOpens`).
    pub opened: Option<u64>,
    /// The `connect()` rate now, between the last two polls (fastpath.rs).
    pub pace: Option<f64>,
    /// The socket totals now (sockstat).
    pub totals: Option<Totals>,
}

/// The census's assessment as it stands `since.age` later: the forecast
/// lives in time between censuses. A destination gains a port only by a
/// `connect()`, so its growth is at most the `connect()` rate now: no
/// `connect()` since the last poll, no growth (no time to exhaustion);
/// slower, a later time. The ports gained since the census are its rate
/// over the time passed, at most the `connect()`s since and the sockets
/// there are. The revision only lowers a rate: growth the counters see
/// again is measured by a census (the fast path's `Due::Growing`). The
/// decision, the remedies and the level stay the census's, and no
/// exhaustion entry is called for again.
pub fn revise(census: &Assessment, policy: &Policy, since: &Since) -> Assessment {
    let forecast: Vec<Forecast> = census
        .forecast
        .iter()
        .map(|f| revise_one(f, since))
        .collect();
    let counted = Counted::of(&forecast, policy);
    Assessment {
        time_to_exhaustion: counted.soonest_exhaustion(),
        hurry: counted.reaches(
            policy.thresholds.critical(),
            horizon(policy) * HURRY_HORIZONS,
        ),
        forecast,
        exhausted: None,
        ..census.clone()
    }
}

/// One target's forecast revised; `used` stays what the census counted.
fn revise_one(f: &Forecast, since: &Since) -> Forecast {
    let age = since.age.as_secs_f64();
    let connects = matches!(f.target, Target::Destination { .. });
    // The connect() rate bounds a destination's growth; the pools take
    // ports by bind() too, which no O(1) counter counts.
    let rate_now = since
        .pace
        .or_else(|| since.opened.map(|n| n as f64 / age.max(1.0)))
        .filter(|_| connects);
    let mut gained = f.growth_per_second * age;
    if let (true, Some(n)) = (connects, since.opened) {
        gained = gained.min(n as f64);
    }
    let bound = since.totals.map(|t| match f.target {
        Target::UdpPool => t.udp_inuse,
        _ => t.tcp_bound(),
    });
    let mut now_used = f.used as f64 + gained;
    if let Some(b) = bound {
        now_used = now_used.min(b as f64);
    }
    let growth = rate_now.map_or(f.growth_per_second, |r| f.growth_per_second.min(r));
    let at_now = Forecast {
        used: now_used.floor() as u64,
        growth_per_second: growth,
        ..*f
    };
    Forecast {
        growth_per_second: growth,
        time_to_exhaustion: at_now.time_to(Ratio::FULL),
        sustained: f.sustained && growth > 0.0,
        ..*f
    }
}

#[cfg(test)]
#[path = "assess_tests.rs"]
pub(crate) mod tests;
