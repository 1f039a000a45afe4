//! The watch over the other network namespaces as a pure machine
//! (docs/DESIGN.md, "Other network namespaces"): no I/O, the clock an
//! input. The daemon's actor (daemon/netns.rs) reads discovery, counters,
//! settings and censuses and feeds them in; the machine says
//! - which namespaces are watched: those discovery finds, kept by inode,
//!   a reused inode told from the namespace it was ([`refresh`]);
//! - the steps: whether a poll looks at them and sweeps their settings
//!   ([`Pacing`], within their share of a core, budget.rs), whose settings
//!   are read ([`Watched::wants_settings`]), the fast path's rule per
//!   namespace ([`step`], [`measure`]) and how many censuses a poll takes
//!   ([`order`], [`one_more`]);
//! - their judgement: the one assessment portd's own namespace has
//!   (judge/assess.rs) from each namespace's own censuses and counters:
//!   its forecast and time to exhaustion, revised every poll between
//!   censuses, the planner's alert rule with the same hold, hysteresis
//!   and early warning, the remedies and the exhaustion entry; advice only
//!   (nothing is written in another namespace) ([`Watched::censused`],
//!   [`advice`]);
//! - which are worst ([`ordered`]), for the live view and the metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::judge::assess::{self, Assessment, Evidence, Memory, Since};
use crate::judge::authority::{Authority, Why};
use crate::judge::budget::{CENSUS_SHARE, Spent};
use crate::judge::fastpath::{self, Baseline, Due, Next};
use crate::judge::forecast::horizon;
use crate::judge::level::Level;
use crate::judge::planner::{AlertState, History};
use crate::observe::census::KernelSettings;
use crate::observe::census::sockstat::Totals;
use crate::observe::netns::{Found, Namespace};
use crate::observe::usage::Usage;
use crate::policy::Policy;

mod advice;
mod pacing;

pub(crate) use advice::advice;
pub(crate) use pacing::Pacing;

/// At least this many other namespaces may take a census in one poll, and
/// no more of those that could wait (missing counters, a stale census).
pub(crate) const CENSUSES_PER_POLL: usize = 2;

/// Censuses that cannot wait go on in one poll until they have taken this
/// long: on a small host every one of them, on one with 300k sockets
/// (about 0.2 s a census) two or three.
pub(crate) const CENSUS_TIME_PER_POLL: Duration = Duration::from_millis(250);

/// Namespaces in the metrics, worst first: the series stay bounded.
pub(crate) const TOP_NAMESPACES: usize = 20;

pub(crate) use crate::judge::quiet::{Quiet, quiet};

/// The O(1) counters of a namespace: socket totals, `Tcp: ActiveOpens`.
pub(crate) type Read = Option<(Totals, Option<u64>)>;

/// The last census of a namespace.
pub(crate) struct Last {
    pub usage: Usage,
    pub active_opens: Option<u64>,
    pub started: Instant,
    pub took: Duration,
    /// Its assessment as the census judged it.
    pub judged: Assessment,
    /// The same brought up to the last poll from the counters
    /// (judge/assess.rs, `revise`): what every channel shows.
    pub assessment: Assessment,
}

/// One watched namespace, kept by inode while it lives.
pub(crate) struct Watched {
    /// Named once, when first found; pid, process count and names follow
    /// discovery.
    pub ns: Namespace,
    pub alert: AlertState,
    pub last: Option<Last>,
    /// The bound of the last poll whose counters proved it quiet.
    pub quiet: Option<Quiet>,
    /// Its settings as last read: a new namespace's on its first poll,
    /// on a poll whose counters changed, every namespace's on a sweep, and
    /// with each census.
    pub settings: Option<KernelSettings>,
    /// The counters of the poll that read them.
    pub read_with: Read,
    /// The counters of the last poll.
    pub counted: Read,
    /// What to change, and where, while it is raised.
    pub advice: Option<String>,
    /// The last census error of this namespace, reported once.
    pub error: Option<String>,
    /// What its judgement remembers between looks (judge/assess.rs): the
    /// rates of its censuses, the exhaustion reported, its `connect()`
    /// rate between polls, a failure the witness saw there.
    pub memory: Memory,
    /// The witness saw a program fail to get a port in it since its last
    /// census: the next poll takes one, and the level skips the hold.
    pub witnessed: bool,
    /// When the last discovery found it, in seconds since boot.
    pub seen: Option<f64>,
}

/// The watched namespaces, by inode.
pub(crate) type Known = HashMap<u64, Watched>;

impl Watched {
    pub fn new(ns: Namespace) -> Self {
        Watched {
            ns,
            alert: AlertState::default(),
            last: None,
            quiet: None,
            settings: None,
            read_with: None,
            counted: None,
            advice: None,
            error: None,
            memory: Memory::default(),
            witnessed: false,
            seen: None,
        }
    }

    /// Whether discovery found it through another process than the one it
    /// is entered through: then whether that one is still in it is worth
    /// reading ([`Sighting`]).
    pub fn moved(&self, f: &Found) -> bool {
        self.ns.pid != f.pid
    }

    /// Whether its settings are read on a poll whose counters are
    /// `counters` (still there): never read, counters changed since they
    /// were read (a namespace that sets its range as it starts is judged
    /// by that range), or every namespace's on a `sweep`.
    pub fn wants_settings(&self, counters: &Read, sweep: bool) -> bool {
        sweep || self.settings.is_none() || self.read_with != *counters
    }

    /// Whether the confirmed level is raised or a change of it pending,
    /// a failure was witnessed there, or its forecast reaches critical
    /// soon (the assessment's hurry): the next poll looks.
    pub fn unsettled(&self) -> bool {
        self.alert.level > Level::Ok
            || self.alert.pending.is_some()
            || self.witnessed
            || self.memory.hurry()
    }

    /// Its assessment as of the last poll (the census's, its forecast
    /// revised from the counters since), while it has a census.
    pub fn assessment(&self) -> Option<&Assessment> {
        self.last.as_ref().map(|l| &l.assessment)
    }

    /// Seconds until its first destination or pool runs out, at the
    /// growth its censuses saw; `None` when nothing grows towards it.
    pub fn time_to_exhaustion(&self) -> Option<f64> {
        self.assessment().and_then(|a| a.time_to_exhaustion)
    }

    /// The witness saw `failures` programs fail to get a port in it.
    pub fn witnessed(&mut self, failures: u64) {
        if failures > 0 {
            self.witnessed = true;
            self.memory.witnessed();
        }
    }
}

/// What a discovery found of a namespace that is not portd's own.
pub(crate) struct Sighting<'a> {
    pub found: &'a Found,
    /// The watched namespace at its inode [`moved`](Watched::moved), and
    /// the process it was entered through is no longer in it.
    pub left: bool,
    /// When the lowest process in it now started (seconds since boot),
    /// read only when it `left`.
    pub started: Option<f64>,
}

/// Discovery at `seen` (seconds since boot): a namespace found for the
/// first time is named (once, by `name`), the others follow their pid,
/// process count and names; one that is gone takes its state with it.
/// Returns those ended (gone, or another at their inode) with a raised
/// alert, by inode: their alert ends with them.
pub(crate) fn refresh(
    known: &mut Known,
    sightings: &[Sighting<'_>],
    seen: Option<f64>,
    mut name: impl FnMut(&Found) -> Namespace,
) -> Vec<Watched> {
    let mut found = std::collections::HashSet::new();
    let mut ended = Vec::new();
    for s in sightings {
        let f = s.found;
        found.insert(f.inode);
        let w = match known.remove(&f.inode) {
            Some(w) if another_at(&w, s) => {
                ended.push(w);
                Watched::new(name(f))
            }
            Some(mut w) => {
                w.ns.pid = f.pid;
                w.ns.processes = f.processes;
                w.ns.names.clone_from(&f.names);
                w
            }
            None => Watched::new(name(f)),
        };
        known.insert(f.inode, Watched { seen, ..w });
    }
    let vanished: Vec<u64> = known
        .keys()
        .filter(|inode| !found.contains(inode))
        .copied()
        .collect();
    ended.extend(
        vanished
            .into_iter()
            .filter_map(|inode| known.remove(&inode)),
    );
    ended.retain(|w| w.alert.level > Level::Ok);
    ended.sort_by_key(|w| w.ns.inode);
    ended
}

/// Whether discovery found another namespace at the inode of `w`: the
/// kernel hands a freed namespace's inode to the next one created, so a
/// busy node reuses them within a poll. It is another when the process
/// portd entered `w` through is no longer in it, and the lowest process
/// in it now started after the last discovery that saw `w` (every process
/// of a namespace that lived on was there then). A namespace whose only
/// process forked and exited within one poll is taken for a new one: its
/// alert is closed and raised again by its next census.
fn another_at(w: &Watched, s: &Sighting<'_>) -> bool {
    w.moved(s.found) && s.left && later(s.started, w.seen)
}

/// Started after it was last seen; `false` when either is unknown.
pub(crate) fn later(started: Option<f64>, seen: Option<f64>) -> bool {
    matches!((started, seen), (Some(started), Some(seen)) if started > seen)
}

/// Why a namespace takes a census on this poll, or what its counters show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Step {
    Census(Due),
    /// The fast path's bound from the last census keeps it below warning.
    Skip,
    /// The counters alone prove it below warning (no census needed, and
    /// none is kept: its last one, if any, is dropped as stale).
    Quiet(Quiet),
}

/// The fast path's rule (fastpath.rs) for one namespace: with a census to
/// bound from, its bound; without one, or with a stale one, whether the
/// counters alone prove every destination below the warning level
/// ([`quiet`]) and no destination heading for critical within the
/// horizon at the `connect()` rate now ([`heading_past`]). Raised or
/// pending alerts always take a census.
pub(crate) fn step(
    last: Option<&Baseline<'_>>,
    counters: &fastpath::Counters<'_>,
    policy: &Policy,
    alert: &AlertState,
) -> Step {
    let settled = alert.level == Level::Ok && alert.pending.is_none();
    let proven = |otherwise: Due| {
        let q = counters
            .totals
            .as_ref()
            .and_then(|t| quiet(counters.settings, t, &policy.thresholds));
        match q {
            Some(q) if heading_past(&q, counters.pace, policy) => Step::Census(Due::Growing),
            Some(q) => Step::Quiet(q),
            None => Step::Census(otherwise),
        }
    };
    match (last, settled) {
        (None, true) => proven(Due::FirstCensus),
        (None, false) => Step::Census(Due::AlertRaised),
        (Some(b), _) => match fastpath::next(Some(b), counters, policy, alert) {
            Next::Skip(_) => Step::Skip,
            Next::Census(due @ (Due::Stale | Due::SettingsChanged)) if settled => proven(due),
            Next::Census(due) => Step::Census(due),
        },
    }
}

/// Whether a namespace proven quiet still heads for critical within the
/// horizon (the hold plus a poll, forecast.rs) at its `connect()` rate
/// now: each `connect()` may take a port towards one destination, so its
/// bound grows by at most that rate. Such a namespace is censused at once,
/// as the fast path censuses portd's own (`Due::Growing`): a ramp is then
/// seen on successive censuses and forecast before it reaches warning.
pub(crate) fn heading_past(q: &Quiet, pace: Option<f64>, policy: &Policy) -> bool {
    let Some(rate) = pace.filter(|r| *r > 0.0) else {
        return false;
    };
    let ahead = q.bound as f64 + rate * horizon(policy).as_secs_f64();
    ahead >= policy.thresholds.critical().fraction() * q.capacity as f64
}

/// What a poll got of one namespace's settings.
#[derive(Debug)]
pub(crate) enum SettingsRead {
    /// Not read on this poll ([`Watched::wants_settings`]).
    Kept,
    Read(KernelSettings),
    /// Not read: its process exited since discovery (the next discovery
    /// tells whether it is gone).
    Gone,
    /// Not read; `refused`: setns said EPERM.
    Failed {
        refused: bool,
    },
}

/// One poll's reading of a namespace still there.
pub(crate) struct NetnsReading {
    pub counters: Read,
    pub settings: SettingsRead,
}

/// A namespace that needs a census.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CensusDue {
    pub inode: u64,
    pub why: Due,
    /// Age of its last census; `None`: never censused.
    pub age: Option<Duration>,
    /// `Tcp: ActiveOpens` read before the census.
    pub active_opens: Option<u64>,
}

/// What the settings and counters of every namespace showed.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub due: Vec<CensusDue>,
    /// Namespaces setns refused (EPERM).
    pub refused: usize,
}

/// The rule for each namespace read at `now` (in inode order); one not in
/// `readings` (its process exited since discovery) is skipped without a
/// word: the next discovery tells whether it is gone.
pub(crate) fn measure(
    known: &mut Known,
    mut readings: HashMap<u64, NetnsReading>,
    policy: &Policy,
    now: Instant,
) -> Measured {
    let mut m = Measured::default();
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    for inode in inodes {
        let (Some(w), Some(r)) = (known.get_mut(&inode), readings.remove(&inode)) else {
            continue;
        };
        match w.measure(r, policy, now) {
            Ok(Some((why, age))) => m.due.push(CensusDue {
                inode,
                why,
                age,
                active_opens: w.counted.and_then(|(_, o)| o),
            }),
            Ok(None) => {}
            Err(refused) => m.refused += usize::from(refused),
        }
    }
    m
}

impl Watched {
    /// One poll's reading: the census it needs and the age of its last
    /// (`Ok(None)`: none); `Err(refused)` when its settings could not be
    /// read (what could not be read is not shown as it was).
    fn measure(
        &mut self,
        r: NetnsReading,
        policy: &Policy,
        now: Instant,
    ) -> Result<Option<(Due, Option<Duration>)>, bool> {
        let counted = std::mem::replace(&mut self.counted, r.counters);
        match r.settings {
            SettingsRead::Read(s) => {
                self.settings = Some(s);
                self.read_with = r.counters;
            }
            // Proven quiet by the same settings and counters as on the
            // last poll: still quiet, nothing to work out again.
            SettingsRead::Kept
                if self.quiet.is_some() && counted == r.counters && !self.witnessed =>
            {
                return Ok(None);
            }
            SettingsRead::Kept => {}
            SettingsRead::Gone => return Ok(None),
            SettingsRead::Failed { refused } => {
                self.quiet = None;
                self.last = None;
                self.settings = None;
                return Err(refused);
            }
        }
        let Some(settings) = &self.settings else {
            return Ok(None);
        };
        let (totals, active_opens) = match r.counters {
            Some((t, o)) => (Some(t), o),
            None => (None, None),
        };
        let counters = fastpath::Counters {
            settings,
            totals,
            active_opens,
            pace: self.memory.pace(now, active_opens),
        };
        if self.witnessed {
            // A failure is a reason to census now, whatever the bounds say.
            return Ok(Some((
                Due::AlertRaised,
                self.last.as_ref().map(age_at(now)),
            )));
        }
        let age = age_at(now);
        let baseline = self
            .last
            .as_ref()
            .map(|l| Baseline::of(&l.usage, l.active_opens, age(l)));
        match step(baseline.as_ref(), &counters, policy, &self.alert) {
            Step::Census(why) if !self.waits(why, now) => {
                Ok(Some((why, self.last.as_ref().map(age))))
            }
            Step::Census(_) | Step::Skip => {
                revise(self.last.as_mut(), &counters, policy, now);
                Ok(None)
            }
            Step::Quiet(q) => {
                self.quiet = Some(q);
                self.last = None;
                Ok(None)
            }
        }
    }

    /// As in portd's own namespace, a census the counters only suggest
    /// waits for its share of a core: a census of a few hundred sockets
    /// never does.
    fn waits(&self, why: Due, now: Instant) -> bool {
        why.may_wait()
            && self.last.as_ref().is_some_and(|l| {
                let spent = Spent {
                    started: l.started,
                    took: l.took,
                };
                spent.wait(now, CENSUS_SHARE).is_some()
            })
    }
}

/// Which due namespaces come first: those that cannot wait (a raised or
/// pending alert, a bound at the warning level, a first census, changed
/// settings the counters cannot prove quiet under), then missing counters,
/// then stale.
fn rank(due: Due) -> u8 {
    match due {
        Due::AlertRaised
        | Due::AlertPending
        | Due::BoundAtWarning
        | Due::Growing
        | Due::FirstCensus
        | Due::SettingsChanged => 0,
        Due::NoCounters => 1,
        Due::Stale => 2,
    }
}

/// Whether a census due for `why` cannot wait for a sweep.
pub(crate) fn cannot_wait(why: Due) -> bool {
    rank(why) == 0
}

/// Orders `due` most urgent first, and within a rank the oldest census
/// first (never censused: oldest), so that alerts already raised take
/// turns and never keep a namespace that has just climbed from its first
/// census.
pub(crate) fn order(mut due: Vec<CensusDue>) -> Vec<CensusDue> {
    due.sort_by_key(|d| {
        (
            rank(d.why),
            std::cmp::Reverse(d.age.unwrap_or(Duration::MAX)),
            d.inode,
        )
    });
    due
}

/// Whether one more census is taken in this poll, after `taken` of them
/// that cost `spent`. One that cannot wait ([`cannot_wait`]):
/// [`CENSUSES_PER_POLL`] always, more while the poll's censuses cost less
/// than [`CENSUS_TIME_PER_POLL`]. One that can (missing counters, a stale
/// census): on a `sweep`, within [`CENSUSES_PER_POLL`].
pub(crate) fn one_more(why: Due, taken: usize, spent: Duration, sweep: bool) -> bool {
    if cannot_wait(why) {
        taken < CENSUSES_PER_POLL || spent < CENSUS_TIME_PER_POLL
    } else {
        sweep && taken < CENSUSES_PER_POLL
    }
}

/// A poll without a census: the last census's forecast brought up to
/// `now` from the counters, as portd's own is (judge/assess.rs, `revise`),
/// so no channel shows a forecast that stays fixed while time passes.
fn revise(
    last: Option<&mut Last>,
    counters: &fastpath::Counters<'_>,
    policy: &Policy,
    now: Instant,
) {
    let Some(last) = last else {
        return;
    };
    let since = Since {
        age: now.saturating_duration_since(last.started),
        opened: match (last.active_opens, counters.active_opens) {
            (Some(then), Some(now)) => now.checked_sub(then),
            _ => None,
        },
        pace: counters.pace,
        totals: counters.totals,
    };
    last.assessment = assess::revise(&last.judged, policy, &since);
}

/// The age of a census at `now`.
fn age_at(now: Instant) -> impl Fn(&Last) -> Duration {
    move |l| now.saturating_duration_since(l.started)
}

/// What a census of a namespace tells.
pub(crate) enum Heard {
    /// Its assessment (the alert and advice are kept; the census and its
    /// assessment are its [`Last`]); `recovered`: its census had failed
    /// before.
    Measured {
        assessment: Box<Assessment>,
        recovered: bool,
    },
    /// It failed; `new`: not the error reported last.
    Failed { new: bool },
}

impl Watched {
    /// A census that began at `started` and took `took` ended at `now`
    /// (the daemon's wall clock): the one assessment (judge/assess.rs) with
    /// this namespace's memory: its forecast, the planner's alert rule with
    /// the forecast's early warning and a witnessed failure (advise only:
    /// nothing is written in another namespace), the remedies, the
    /// exhaustion entry; the advice while raised.
    pub fn censused(
        &mut self,
        result: Result<Usage, String>,
        census: (Instant, Duration, Option<u64>),
        policy: &Policy,
        now: SystemTime,
    ) -> Heard {
        let usage = match result {
            Ok(u) => u,
            Err(e) => {
                let new = self.error.as_deref() != Some(e.as_str());
                self.error = Some(e);
                return Heard::Failed { new };
            }
        };
        let recovered = self.error.take().is_some();
        let assessment = assess::assess(
            &mut self.memory,
            &Evidence {
                usage: &usage,
                // Who holds its sockets is not looked up in another
                // namespace: the remedies name no process.
                processes: None,
                policy,
                history: &History {
                    alert: self.alert.clone(),
                    ..History::default()
                },
                // No sysctl.d applies inside another namespace.
                pin: None,
                foreign_dropin: None,
                now,
                // Advise only: nothing is written in another namespace.
                authority: &Authority::Advise(Why::Policy),
                single: false,
            },
        );
        self.witnessed = false;
        self.advice = advice(&self.ns, &assessment.decision);
        self.alert = assessment.decision.alert.clone();
        self.quiet = None;
        self.settings = Some(usage.settings.clone());
        let (started, took, active_opens) = census;
        self.last = Some(Last {
            usage,
            active_opens,
            started,
            took,
            judged: assessment.clone(),
            assessment: assessment.clone(),
        });
        Heard::Measured {
            assessment: Box::new(assessment),
            recovered,
        }
    }
}

/// Worst first: the confirmed level, then the usage.
pub(crate) fn ordered(known: &Known) -> Vec<&Watched> {
    let mut list: Vec<&Watched> = known.values().collect();
    list.sort_by(|a, b| {
        b.alert
            .level
            .cmp(&a.alert.level)
            .then(usage_of(b).total_cmp(&usage_of(a)))
            .then(a.ns.inode.cmp(&b.ns.inode))
    });
    list
}

/// The last census's headline usage, or the counters' bound.
pub(crate) fn usage_of(w: &Watched) -> f64 {
    match (&w.last, &w.quiet) {
        (Some(l), _) => l.usage.headline.usage.fraction(),
        (None, Some(q)) => q.usage.fraction(),
        (None, None) => 0.0,
    }
}

/// Its last census or its counters' bound is known.
pub(crate) fn measured(w: &Watched) -> bool {
    w.last.is_some() || w.quiet.is_some()
}

#[cfg(test)]
pub(crate) mod tests;
