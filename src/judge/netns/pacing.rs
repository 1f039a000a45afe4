//! When the watch over the other namespaces looks at them, and when a look
//! sweeps their settings: each within its share of a core (budget.rs).

use std::time::{Duration, Instant};

use crate::judge::budget::{NETNS_LOOK_SHARE, NETNS_SHARE, Spent};

/// Sweeps come at most this often, however little they cost: a namespace
/// whose counters change has its settings read on that poll anyway; a
/// sweep finds a range changed while nothing else did, and the censuses
/// that can wait (stale, missing counters).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// When the watch looks at the other namespaces (discovery and their
/// counters), and when a look sweeps every namespace's settings with the
/// censuses that can wait: each within its share of a core (budget.rs).
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    /// When the running look began and whether it sweeps (until it ends,
    /// then until its output is read).
    running_since: Option<(Instant, bool)>,
    ended_look: Option<(Instant, bool)>,
    /// What the last sweep cost.
    spent: Option<Spent>,
    /// What the last look cost, and whether it left an alert raised or
    /// pending, or a census that cannot wait untaken.
    looked: Option<Spent>,
    urgent: bool,
}

impl Pacing {
    /// Whether a poll at `now` looks, and if so whether it sweeps: every
    /// poll while an alert is raised or pending or a census that cannot
    /// wait is left over, else within the looks' share of a core; a sweep
    /// when the last is within its own share.
    pub fn start(&mut self, now: Instant) -> Option<bool> {
        let sweep = self.spent.is_none_or(|s| {
            s.wait(now, NETNS_SHARE).is_none()
                && now.saturating_duration_since(s.started) >= SWEEP_EVERY
        });
        if !looks(self.urgent, sweep, self.looked, now) {
            return None;
        }
        self.running_since = Some((now, sweep));
        Some(sweep)
    }

    /// The next poll looks whatever the budget (a failure was witnessed in
    /// a namespace).
    pub fn hurry(&mut self) {
        self.urgent = true;
    }

    /// The look that was running ended.
    pub fn finished(&mut self) {
        self.ended_look = self.running_since.take();
    }

    /// The ended look's output is read: it cost `paced` (but the censuses
    /// that could not wait); `urgent`: it left an alert raised or pending,
    /// or a census that cannot wait untaken. `None` when its task failed.
    pub fn ended(&mut self, out: Option<(Duration, bool)>) {
        let look = self.ended_look.take();
        let Some((paced, urgent)) = out else {
            return;
        };
        if let Some((started, sweep)) = look {
            let spent = Spent {
                started,
                took: paced,
            };
            self.looked = Some(spent);
            if sweep {
                self.spent = Some(spent);
            }
        }
        self.urgent = urgent;
    }
}

/// Whether a poll looks at the other namespaces: always while `urgent` (an
/// alert raised or pending, a census that cannot wait left over) or on a
/// `sweep`, else once the last look is within its share of a core.
pub(super) fn looks(urgent: bool, sweep: bool, looked: Option<Spent>, now: Instant) -> bool {
    urgent || sweep || looked.is_none_or(|s| s.wait(now, NETNS_LOOK_SHARE).is_none())
}
