//! The daemon's watch over the other network namespaces (docs/DESIGN.md,
//! "Other network namespaces"). Each poll while an alert is raised or
//! pending there (else within its share of a core, budget.rs), off the
//! event loop on the blocking pool: discovery (identity read once per namespace, kept by
//! inode), the O(1) counters of every namespace (`/proc/<pid>/net/sockstat`,
//! `snmp`), the settings of those never read or whose counters changed (one
//! thread entering them in turn; every namespace's again on a sweep, paced
//! to its share of a core, budget.rs), the fast path's rule per namespace
//! (fastpath.rs), and a census only of the namespaces whose bound could
//! reach the warning level, whose alert is raised or pending, whose
//! settings changed, or whose last census is stale while the counters
//! cannot prove them quiet. Each census walks the kernel's global socket
//! hash: those that cannot wait (all but stale ones and missing counters)
//! take turns while the poll's censuses have cost less than
//! [`CENSUS_TIME_PER_POLL`], the others wait for a sweep, at most
//! [`CENSUSES_PER_POLL`] a poll. Back on the loop: the planner's alert rule
//! per namespace (the same hold and hysteresis as portd's own), alerts with
//! the namespace's identity, advice only (nothing is written in another
//! namespace), the end of the alert of a namespace that is gone, the live
//! view and the metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinError, JoinHandle};

use super::budget::{NETNS_LOOK_SHARE, NETNS_SHARE, Spent};
use super::journal::Once;
use crate::base::host::Host;
use crate::judge::authority::{Authority, Why};
use crate::judge::fastpath::{self, Baseline, Due, Next, Pace};
use crate::judge::level::Level;
use crate::judge::planner::{self, AlertState, History, Inputs, Observation};
use crate::judge::quiet::{Quiet, quiet};
use crate::observe::census::KernelSettings;
use crate::observe::census::sockstat::Totals;
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::policy::Policy;
use crate::publish::live;

#[path = "netns_events.rs"]
mod events;
#[path = "netns_poll.rs"]
mod poll;
#[path = "netns_publish.rs"]
mod publish;
#[path = "netns_refresh.rs"]
mod refresh;

use events::{Gone, advice, alert};
use poll::poll;
use publish::publish;
use refresh::{Scope, refresh, scope};

/// At least this many other namespaces may take a census in one poll, and
/// no more of those that could wait (missing counters, a stale census).
pub(super) const CENSUSES_PER_POLL: usize = 2;

/// Censuses that cannot wait go on in one poll until they have taken this
/// long: on a small host every one of them, on one with 300k sockets
/// (about 0.2 s a census) two or three.
pub(super) const CENSUS_TIME_PER_POLL: Duration = Duration::from_millis(250);

/// Namespaces in the metrics, worst first: the series stay bounded.
pub(super) const TOP_NAMESPACES: usize = 20;

/// The last census of a namespace.
struct Last {
    usage: Usage,
    active_opens: Option<u64>,
    started: Instant,
    took: Duration,
}

/// One watched namespace, kept by inode while it lives.
struct Watched {
    /// Named once, when first found; pid, process count and names follow
    /// discovery.
    ns: Namespace,
    alert: AlertState,
    last: Option<Last>,
    /// The bound of the last poll whose counters proved it quiet.
    quiet: Option<Quiet>,
    /// Its settings as last read: a new namespace's on its first poll,
    /// on a poll whose counters changed, every namespace's on a sweep, and
    /// with each census.
    settings: Option<KernelSettings>,
    /// The counters of the poll that read them.
    read_with: Read,
    /// The counters of the last poll.
    counted: Read,
    /// What to change, and where, while it is raised.
    advice: Option<String>,
    /// The last census error of this namespace, reported once.
    error: Once,
    /// Its `connect()` rate between polls.
    pace: Pace,
    /// When the last discovery found it, in seconds since boot.
    seen: Option<f64>,
}

impl Watched {
    fn new(ns: Namespace) -> Self {
        Watched {
            ns,
            alert: AlertState::default(),
            last: None,
            quiet: None,
            settings: None,
            read_with: None,
            counted: None,
            advice: None,
            error: Once::default(),
            pace: Pace::default(),
            seen: None,
        }
    }
}

type Known = HashMap<u64, Watched>;

/// What the live view and the metrics file show of the other namespaces.
#[derive(Default)]
pub(super) struct Published {
    pub namespaces: Vec<live::NamespaceView>,
    pub note: Option<String>,
    /// The rows of the `portd_netns_*` families; none before the first poll.
    pub metrics: Option<crate::publish::metrics::NetnsRows>,
}

/// The daemon's side of the watch.
#[derive(Default)]
pub(super) struct Watch {
    /// `None` while a poll's task holds it.
    known: Option<Known>,
    pub published: Published,
    /// What portd cannot see, reported once.
    note: Once,
    censuses: u64,
    /// Unreadable processes on the last poll.
    unreadable: u32,
    /// When the running look began and whether it sweeps (until it ends,
    /// then until its output is read); what the last sweep cost
    /// (budget.rs).
    running_since: Option<(Instant, bool)>,
    ended_look: Option<(Instant, bool)>,
    spent: Option<Spent>,
    /// What the last look cost, and whether it left an alert raised or
    /// pending, or a census that cannot wait untaken.
    looked: Option<Spent>,
    urgent: bool,
}

/// A poll of the other namespaces on the blocking pool.
pub(super) struct InFlight {
    handle: JoinHandle<Output>,
}

/// Waits for the poll in `slot`; forever when there is none (a `select!` arm).
pub(super) async fn join(slot: &mut Option<InFlight>) -> Result<Output, JoinError> {
    match slot {
        Some(p) => (&mut p.handle).await,
        None => std::future::pending().await,
    }
}

/// What one poll's task hands back.
pub(super) struct Output {
    known: Known,
    censused: Vec<Censused>,
    /// What portd could not see on this poll.
    note: Option<String>,
    /// Processes whose namespace could not be read.
    unreadable: u32,
    /// The host's namespace cannot be told at all ([`Scope::Hidden`]).
    hidden: bool,
    /// Namespaces with a raised alert that are gone.
    gone: Vec<Gone>,
    /// What the poll cost but the censuses that could not wait: the share
    /// of a core a sweep is paced to (budget.rs).
    paced: Duration,
    /// A census that cannot wait was left for the next poll.
    left: bool,
}

struct Censused {
    inode: u64,
    started: Instant,
    took: Duration,
    active_opens: Option<u64>,
    result: Result<Usage, String>,
}

/// The O(1) counters of a namespace: socket totals, `Tcp: ActiveOpens`.
type Read = Option<(Totals, Option<u64>)>;

/// Why a namespace takes a census on this poll, or what its counters show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
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
/// (netns/status.rs). Raised or pending alerts always take a census.
fn step(
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

/// Orders `due` (inode, why, age of the last census; `None`: never
/// censused): most urgent first, and within a rank the oldest census
/// first, so that alerts already raised take turns and never keep a
/// namespace that has just climbed from its first census.
fn order(mut due: Vec<(u64, Due, Option<Duration>)>) -> Vec<(u64, Due)> {
    due.sort_by_key(|&(inode, why, age)| {
        (
            rank(why),
            std::cmp::Reverse(age.unwrap_or(Duration::MAX)),
            inode,
        )
    });
    due.into_iter()
        .map(|(inode, why, _)| (inode, why))
        .collect()
}

/// Whether one more census is taken in this poll, after `taken` of them
/// that cost `spent`. One that cannot wait ([`rank`] 0):
/// [`CENSUSES_PER_POLL`] always, more while the poll's censuses cost less
/// than [`CENSUS_TIME_PER_POLL`]. One that can (missing counters, a stale
/// census): on a `sweep`, within [`CENSUSES_PER_POLL`].
fn one_more(why: Due, taken: usize, spent: Duration, sweep: bool) -> bool {
    if rank(why) == 0 {
        taken < CENSUSES_PER_POLL || spent < CENSUS_TIME_PER_POLL
    } else {
        sweep && taken < CENSUSES_PER_POLL
    }
}

/// Whether a poll looks at the other namespaces: always while `urgent` (an
/// alert raised or pending, a census that cannot wait left over) or on a
/// `sweep`, else once the last look is within its share of a core.
fn looks(urgent: bool, sweep: bool, looked: Option<Spent>, now: Instant) -> bool {
    urgent || sweep || looked.is_none_or(|s| s.wait(now, NETNS_LOOK_SHARE).is_none())
}

impl Watch {
    /// Starts a poll of the other namespaces (none under a fixture root):
    /// discovery and counters, every poll while an alert is raised or
    /// pending or a census that cannot wait is left over, else within
    /// their share of a core; with a sweep of every namespace's settings
    /// when the last sweep is within its own share (budget.rs).
    pub fn start(&mut self, host: &Host, policy: &Policy) -> Option<InFlight> {
        if host.root() != std::path::Path::new("/") {
            return None;
        }
        let now = Instant::now();
        let sweep = self
            .spent
            .is_none_or(|s| s.wait(now, NETNS_SHARE).is_none());
        if !looks(self.urgent, sweep, self.looked, now) {
            return None;
        }
        self.running_since = Some((now, sweep));
        let known = self.known.take().unwrap_or_default();
        let host = host.clone();
        let policy = policy.clone();
        Some(InFlight {
            handle: tokio::task::spawn_blocking(move || poll(&host, known, &policy, sweep)),
        })
    }

    /// The look that was running ended now.
    pub fn finished(&mut self) {
        self.ended_look = self.running_since.take();
    }

    /// A namespace's census ended: its alert rule, journal and advice.
    fn censused(&mut self, w: &mut Watched, c: Censused, policy: &Policy, now: SystemTime) {
        match c.result {
            Ok(usage) => {
                self.censuses += 1;
                if w.error.clear() {
                    tracing::info!("the census of {} works again", w.ns.label);
                }
                let decision = planner::plan(&Inputs {
                    observation: &Observation::from_usage(&usage),
                    policy,
                    history: &History {
                        alert: w.alert.clone(),
                        ..History::default()
                    },
                    pin: None,
                    now,
                    // Advise only: nothing is written in another namespace.
                    authority: &Authority::Advise(Why::Policy),
                    // The witness's failures are portd's own
                    // namespace's decision; here the usage alone.
                    witnessed_failure: false,
                    // No rates are kept for other namespaces yet: their
                    // alerts follow the census and the hold alone.
                    forecast: &[],
                });
                w.advice = advice(&w.ns, &decision);
                alert(&w.ns, &usage, &decision, w.advice.as_deref());
                w.alert = decision.alert;
                w.quiet = None;
                w.settings = Some(usage.settings.clone());
                w.last = Some(Last {
                    usage,
                    active_opens: c.active_opens,
                    started: c.started,
                    took: c.took,
                });
            }
            Err(e) => {
                if w.error.is_new(&e) {
                    tracing::warn!(
                        "census of {} (net:[{}]) failed, will retry: {e}",
                        w.ns.label,
                        w.ns.inode
                    );
                }
            }
        }
    }

    /// The poll ended: alert state, journal, what is published. True when
    /// the live view and the metrics should be written again.
    pub fn ended(
        &mut self,
        out: Result<Output, JoinError>,
        policy: &Policy,
        now: SystemTime,
    ) -> bool {
        let look = self.ended_look.take();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The namespaces' state went with the task: found again
                // on the next poll, with no alert held.
                tracing::error!("the poll of the other network namespaces failed: {e}");
                self.known = Some(Known::new());
                return false;
            }
        };
        if let Some((started, sweep)) = look {
            let spent = Spent {
                started,
                took: out.paced,
            };
            self.looked = Some(spent);
            if sweep {
                self.spent = Some(spent);
            }
        }

        let shown_before = !self.published.namespaces.is_empty() || self.published.note.is_some();
        for g in &out.gone {
            events::gone(g);
        }
        let mut known = out.known;
        for c in out.censused {
            if let Some(w) = known.get_mut(&c.inode) {
                self.censused(w, c, policy, now);
            }
        }
        // The next poll looks whatever the budget while an alert is raised
        // or pending, or a census that cannot wait is left over.
        self.urgent = out.left
            || known
                .values()
                .any(|w| w.alert.level > Level::Ok || w.alert.pending.is_some());
        // A process that exits while discovery reads it can fail once:
        // only processes unreadable on two polls in a row are reported.
        let unreadable = out.unreadable.min(self.unreadable);
        self.unreadable = out.unreadable;
        let note = out.note.or_else(|| {
            (unreadable > 0).then(|| {
                format!(
                    "{unreadable} processes' network namespaces are not readable (CAP_SYS_PTRACE, or /proc without ProtectProc=invisible or hidepid: /usr/share/doc/portd/examples/containers.conf)"
                )
            })
        });
        match &note {
            Some(note) => {
                // Under the default unit that is by design: a notice. Lost
                // sight with the drop-in in place is a warning.
                if self.note.is_new(note) {
                    if out.hidden {
                        tracing::info!("{note}; portd watches its own namespace");
                    } else {
                        tracing::warn!("{note}; portd watches its own namespace");
                    }
                }
            }
            None => {
                self.note.clear();
            }
        }
        self.published = publish(&known, note, self.censuses);
        self.known = Some(known);
        shown_before || !self.published.namespaces.is_empty() || self.published.note.is_some()
    }
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
