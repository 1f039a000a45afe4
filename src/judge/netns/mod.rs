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
//! - their levels and advice: the planner's alert rule per namespace, with
//!   the same hold and hysteresis as portd's own, advice only (nothing is
//!   written in another namespace) ([`Watched::censused`], [`advice`]);
//! - which are worst ([`ordered`]), for the live view and the metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::judge::authority::{Authority, Why};
use crate::judge::budget::{CENSUS_SHARE, Spent};
use crate::judge::fastpath::{self, Baseline, Due, Next, Pace};
use crate::judge::level::Level;
use crate::judge::planner::{self, AlertState, Decision, History, Inputs, Observation};
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
    /// Its `connect()` rate between polls.
    pub pace: Pace,
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
            pace: Pace::default(),
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

    /// Whether the confirmed level is raised or a change of it pending.
    pub fn unsettled(&self) -> bool {
        self.alert.level > Level::Ok || self.alert.pending.is_some()
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
/// ([`quiet`]). Raised or pending alerts always take a census.
pub(crate) fn step(
    last: Option<&Baseline<'_>>,
    counters: &fastpath::Counters<'_>,
    policy: &Policy,
    alert: &AlertState,
) -> Step {
    let settled = alert.level == Level::Ok && alert.pending.is_none();
    let proven = || {
        counters
            .totals
            .as_ref()
            .and_then(|t| quiet(counters.settings, t, &policy.thresholds))
    };
    match (last, settled) {
        (None, true) => proven().map_or(Step::Census(Due::FirstCensus), Step::Quiet),
        (None, false) => Step::Census(Due::AlertRaised),
        (Some(b), _) => match fastpath::next(Some(b), counters, policy, alert) {
            Next::Skip(_) => Step::Skip,
            Next::Census(due @ (Due::Stale | Due::SettingsChanged)) if settled => {
                proven().map_or(Step::Census(due), Step::Quiet)
            }
            Next::Census(due) => Step::Census(due),
        },
    }
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
            SettingsRead::Kept if self.quiet.is_some() && counted == r.counters => {
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
            pace: self.pace.update(now, active_opens),
        };
        let age = |l: &Last| now.saturating_duration_since(l.started);
        let baseline = self
            .last
            .as_ref()
            .map(|l| Baseline::of(&l.usage, l.active_opens, age(l)));
        match step(baseline.as_ref(), &counters, policy, &self.alert) {
            Step::Census(why) if !self.waits(why, now) => {
                Ok(Some((why, self.last.as_ref().map(age))))
            }
            Step::Census(_) | Step::Skip => Ok(None),
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

/// What a census of a namespace tells.
pub(crate) enum Heard {
    /// Its decision (the alert and advice are kept); `recovered`: its
    /// census had failed before.
    Measured {
        decision: Box<Decision>,
        recovered: bool,
    },
    /// It failed; `new`: not the error reported last.
    Failed { new: bool },
}

impl Watched {
    /// A census that began at `started` and took `took` ended at `now`
    /// (the daemon's wall clock): the planner's alert rule (advise only:
    /// nothing is written in another namespace), the advice while raised.
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
        let decision = planner::plan(&Inputs {
            observation: &Observation::from_usage(&usage),
            policy,
            history: &History {
                alert: self.alert.clone(),
                ..History::default()
            },
            pin: None,
            now,
            // Advise only: nothing is written in another namespace.
            authority: &Authority::Advise(Why::Policy),
            // The witness's failures are portd's own namespace's decision;
            // here the usage alone.
            witnessed_failure: false,
            // No rates are kept for other namespaces yet: their alerts
            // follow the census and the hold alone.
            forecast: &[],
        });
        self.advice = advice(&self.ns, &decision);
        self.alert = decision.alert.clone();
        self.quiet = None;
        self.settings = Some(usage.settings.clone());
        let (started, took, active_opens) = census;
        self.last = Some(Last {
            usage,
            active_opens,
            started,
            took,
        });
        Heard::Measured {
            decision: Box::new(decision),
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
